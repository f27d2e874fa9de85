"""Text: prompts (chat templates, template positions), token display, targets."""

from lenskit.text.prompts import EncodedPrompt, check_text, encode_prompt, special_token_ids
from lenskit.text.targets import target_token_id
from lenskit.text.tokens import (
    byte_level_vocabulary,
    format_token,
    position_labels,
    token_strings,
    vocab_strings,
)

__all__ = [
    "EncodedPrompt",
    "byte_level_vocabulary",
    "check_text",
    "encode_prompt",
    "format_token",
    "position_labels",
    "special_token_ids",
    "target_token_id",
    "token_strings",
    "vocab_strings",
]
