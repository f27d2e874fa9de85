"""The app's pages, one module each; :data:`PAGES` lists them for ``st.navigation``.

Each page module defines ``render()`` and calls it when Streamlit runs the file as a page
(``__name__ == "__main__"``); importing it runs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["PAGES", "Page"]

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Page:
    """A page: its file (in this folder), title, URL path and icon."""

    file: str
    title: str
    url_path: str
    icon: str

    @property
    def path(self) -> Path:
        return _HERE / self.file


#: The pages in the order the navigation lists them; the first opens by default. Add a view
#: by adding a module here and an entry to this list.
PAGES: list[Page] = [
    Page("lens.py", "Logit lens", "lens", ":material/grid_on:"),
    Page("sweep.py", "Generation & interventions", "sweep", ":material/tune:"),
    Page("dataset.py", "Dataset", "dataset", ":material/dataset:"),
]
