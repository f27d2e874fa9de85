"""The sidebar's lens choice in a real browser (the app and Chromium as in test_browser.py):
a tuned lens directory is read, a bad one says why. Skips like test_browser.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_browser import CHART, app_page, app_url, chromium, wait_idle  # noqa: F401 - fixtures

import lenskit
from lenskit.lens import TunedLens

pytestmark = pytest.mark.browser


def test_lens_choice_in_chromium(
    chromium: str,  # noqa: F811 - the fixture
    app_url: str,  # noqa: F811 - the fixture
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    model, _ = lenskit.load_model(str(tiny_model_dir))
    lens = TunedLens.from_model(model)
    with torch.no_grad():
        for linear in lens.translators:
            linear.weight.normal_(0.0, 0.3)
    directory = lens.save(tmp_path / "my_lens")
    with app_page(chromium, app_url, CHART) as page:
        assert page.get_by_text("logit lens", exact=False).count() > 0
        page.get_by_role("textbox", name="Tuned lens directory").fill(str(directory))
        page.get_by_role("textbox", name="Tuned lens directory").press("Enter")
        wait_idle(page)
        page.get_by_text("Tuned lens from a directory").click()
        page.get_by_text("Loaded: a tuned lens").wait_for(timeout=60_000)
        wait_idle(page)
        assert page.get_by_text("tuned lens from", exact=False).count() > 0
        assert page.locator("[data-testid='stException']").count() == 0
        page.screenshot(path=str(tmp_path / "tuned_lens.png"), full_page=True)

        page.get_by_role("textbox", name="Tuned lens directory").fill(str(tmp_path / "nope"))
        page.get_by_role("textbox", name="Tuned lens directory").press("Enter")
        page.get_by_text("no such directory").first.wait_for(timeout=60_000)
        wait_idle(page)
        assert page.locator("[data-testid='stException']").count() == 0
