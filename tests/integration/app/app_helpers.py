"""Helpers of the app's AppTest tests: the app's path, the session's typed state, the sidebar
form, the messages on screen, and tiny models saved on disk."""

from __future__ import annotations

from pathlib import Path

from conftest import REPO_ROOT, make_chatml_tokenizer, make_tiny_model
from streamlit.testing.v1 import AppTest

from lenskit.ui.state import STATE_KEY, AppState

APP = str(REPO_ROOT / "app.py")
TIMEOUT = 120


def state(at: AppTest) -> AppState:
    """The session's typed state."""
    return at.session_state[STATE_KEY]


def lens_result(at: AppTest):
    """The last good logit-lens result (None before the first)."""
    return state(at).lens.result


def submit(at: AppTest, **fields) -> AppTest:
    """Fill the sidebar form (by widget key) and press its submit button."""
    for key, value in fields.items():
        at.session_state[key] = value
    at.button(key="lens_submit").click()
    at.run()
    return at


def messages(at: AppTest) -> str:
    return " | ".join(e.value for e in [*at.error, *at.warning])


def plain(text: str) -> str:
    """Shown markdown as the text it reads as (user text is escaped with backslashes)."""
    return text.replace("\\", "")


def save_tiny(path: Path, n_blocks: int = 3) -> Path:
    """A tiny random Llama with ``n_blocks`` blocks (at most 3) and the ChatML tokenizer,
    saved at ``path``."""
    tok = make_chatml_tokenizer()
    model = make_tiny_model("llama", len(tok), seed=1)
    if n_blocks != model.config.num_hidden_layers:
        model.model.layers = model.model.layers[:n_blocks]
        model.config.num_hidden_layers = n_blocks
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
