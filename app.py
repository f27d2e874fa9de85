"""lenskit's Streamlit app: ``streamlit run app.py`` (``make app``; server settings in
``.streamlit/config.toml``).

Every page shares the sidebar (the logit-lens form) and the session's state; each page is a
module of :mod:`lenskit.ui.pages`. The maths is in :mod:`lenskit`, the charts in
:mod:`lenskit.charts`, the app itself in :mod:`lenskit.ui`.
"""

from __future__ import annotations

import streamlit as st

from lenskit.ui import shell
from lenskit.ui.pages import PAGES

st.set_page_config(page_title="lenskit \u00b7 logit lens", page_icon="\U0001f50e", layout="wide")

page = st.navigation(
    [
        st.Page(p.path, title=p.title, url_path=p.url_path, icon=p.icon, default=i == 0)
        for i, p in enumerate(PAGES)
    ],
    position="top",
)
with shell.guard():
    shell.frame()
    page.run()
