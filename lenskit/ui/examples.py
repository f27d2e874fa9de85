"""The bundled example prompts of the sidebar.

Each runs on the default model (SmolLM2-135M-Instruct) as it is: its target is one token of that
model's vocabulary (tests/integration/app/test_examples.py runs every example through the
app's request path on the real model).
"""

from __future__ import annotations

from dataclasses import dataclass

from lenskit.requests import LensRequest

__all__ = ["EXAMPLES", "Example"]


@dataclass(frozen=True)
class Example:
    """A prompt, whether it is wrapped in the chat template, and a single-token target."""

    prompt: str
    chat: bool
    target: str

    def request(self) -> LensRequest:
        """The lens request the sidebar's form makes for this example (default top-k)."""
        return LensRequest(self.prompt, chat=self.chat, target=self.target)


#: Label -> example; the first one is the form's default and runs when the app opens.
EXAMPLES: dict[str, Example] = {
    "Capital of Australia (chat)": Example("What is the capital of Australia?", True, " Canberra"),
    "Capital of France (chat)": Example("What is the capital of France?", True, " Paris"),
    "Counting (raw text)": Example("one, two, three, four, five,", False, " six"),
    "Eiffel Tower (raw text)": Example(
        "The Eiffel Tower is located in the city of", False, " Paris"
    ),
    "Translation (chat)": Example("Translate to French: wine", True, " vin"),
}
