"""Every bundled example runs on the real default model (SmolLM2-135M-Instruct), through the
app's own request path: the example picker, the sidebar form, the cached run.

Slow: loads the real default model (converted once, then cached).
"""

from __future__ import annotations

import pytest
from conftest import REPO_ROOT
from streamlit.testing.v1 import AppTest

from lenskit.text import target_token_id
from lenskit.ui.examples import EXAMPLES
from lenskit.ui.state import STATE_KEY

pytestmark = pytest.mark.slow

APP = str(REPO_ROOT / "app.py")


@pytest.mark.parametrize("label", list(EXAMPLES))
def test_example_target_is_one_token(default_model, label: str) -> None:
    _, tokenizer = default_model
    target_token_id(tokenizer, EXAMPLES[label].target)  # TargetError unless one token


def test_every_example_runs_in_the_app(monkeypatch) -> None:
    monkeypatch.delenv("LENSKIT_DEFAULT_MODEL", raising=False)  # the real default model
    monkeypatch.setenv("LENSKIT_DEVICE", "cpu")
    at = AppTest.from_file(APP, default_timeout=600)
    at.run()
    for label, example in EXAMPLES.items():
        at.selectbox(key="example").set_value(label).run()
        assert not at.exception, at.exception
        assert not at.error, (label, [e.value for e in at.error])
        result = at.session_state[STATE_KEY].lens.result
        assert (result.prompt, result.chat, result.target) == (
            example.prompt,
            example.chat,
            example.target,
        ), label
        assert result.target_prob is not None and result.n_rows == 31
