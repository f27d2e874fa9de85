"""The app in a real browser: `streamlit run app.py` (as `make app` does) + Debian Chromium.

Skips when Chromium or Playwright is missing, except under CI=true, where it fails. The app
runs on the tiny random model (LENSKIT_DEFAULT_MODEL) so the test is quick.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
CHART = "[data-testid='stVegaLiteChart']"


# The drill-down table's scroller: how much wider / taller its content is than its box.
TABLE_OVERFLOW_JS = """() => {
  const grid = document.querySelector("[data-testid='stDataFrame'] .dvn-scroller");
  if (!grid) return null;
  return {x: grid.scrollWidth - grid.clientWidth, y: grid.scrollHeight - grid.clientHeight};
}"""

# How far (px) the drill-down chart's drawing sticks out to the right of its st.column.
DRILL_OVERFLOW_JS = """() => {
  for (const col of document.querySelectorAll("[data-testid='stColumn']")) {
    const marks = col.querySelector("[data-testid='stVegaLiteChart'] canvas, "
      + "[data-testid='stVegaLiteChart'] svg.marks");
    if (marks) return marks.getBoundingClientRect().right - col.getBoundingClientRect().right;
  }
  return null;
}"""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser test cannot run under CI: {reason}")
    pytest.skip(reason)


def find_chromium() -> str | None:
    for candidate in (os.environ.get("LENSKIT_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def streamlit_exe() -> str:
    exe = Path(sys.executable).parent / "streamlit"
    return str(exe) if exe.is_file() else "streamlit"


@pytest.fixture
def app_url(tiny_model_dir: Path, tmp_path: Path) -> Iterator[str]:
    """Start the app as `make app` does, on a free port; kill it afterwards."""
    port = free_port()
    env = {
        **os.environ,
        "LENSKIT_DEFAULT_MODEL": str(tiny_model_dir),
        "LENSKIT_CACHE_DIR": str(tmp_path / "cache"),
        "LENSKIT_DEVICE": "cpu",
    }
    log = open(tmp_path / "streamlit.log", "wb")  # noqa: SIM115 - closed below
    cmd = [streamlit_exe(), "run", "app.py", "--server.port", str(port)]
    cmd += ["--server.headless", "true", "--server.address", "127.0.0.1"]
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(
                    "streamlit did not start:\n"
                    + (tmp_path / "streamlit.log").read_text(errors="replace")[-3000:]
                )
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)
        log.close()


def wait_idle(page, timeout: float = 90_000) -> None:
    page.wait_for_selector(IDLE, timeout=timeout)


def wait_changed(page, read: Callable[[], str], before: str, timeout: float = 60) -> None:
    """Poll ``read()`` until it differs from ``before`` (or ``timeout`` s), then wait idle."""
    deadline = time.monotonic() + timeout
    while read() == before and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    wait_idle(page)


@contextmanager
def app_page(chromium: str, url: str, chart: str) -> Iterator:
    """A Chromium page on the app after its first run (``chart``'s marks drawn, idle)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(url)
            page.wait_for_selector(f"{chart} canvas, {chart} svg.marks", timeout=120_000)
            wait_idle(page)
            yield page
        finally:
            browser.close()


@pytest.fixture
def chromium() -> str:
    """Path of the Chromium binary; skips (fails under CI=true) when there is none."""
    path = find_chromium()
    if path is None:
        _unavailable("no Chromium found (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("playwright (Python) is not installed")
    return str(path)


def test_app_in_chromium(chromium: str, app_url: str, tmp_path: Path) -> None:
    with app_page(chromium, app_url, CHART) as page:
        # first open: the example prompt ran by itself and the heatmaps appeared
        assert page.locator("[data-testid='stException']").count() == 0

        # type a prompt and submit the sidebar form
        prompt = "What is the capital of France?"
        page.get_by_role("textbox", name="Prompt", exact=True).fill(prompt)
        page.get_by_role("textbox", name="Target token (optional)").fill(" Paris")
        page.get_by_role("button", name="Run logit lens").click()
        page.locator("[data-testid='stCode']").filter(has_text=prompt).first.wait_for(
            timeout=90_000
        )
        wait_idle(page)
        charts = page.locator(CHART)
        assert charts.count() >= 3
        assert page.locator(f"{CHART} canvas, {CHART} svg.marks").count() >= 3
        assert page.locator("[data-testid='stException']").count() == 0
        page.screenshot(path=str(tmp_path / "after_submit.png"), full_page=True)

        # brush across the left part of the overview: the detail range follows
        slider = page.locator("[data-testid='stSlider']").first
        before = slider.inner_text()
        overview = charts.first.locator("canvas, svg.marks").first
        box = overview.bounding_box()
        assert box is not None
        y = box["y"] + box["height"] * 0.45
        page.mouse.move(box["x"] + box["width"] * 0.12, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.25, y, steps=8)
        page.mouse.up()
        wait_changed(page, slider.inner_text, before)
        assert slider.inner_text() != before, "brushing the overview did not move the range"
        assert page.locator("[data-testid='stException']").count() == 0
        page.screenshot(path=str(tmp_path / "after_brush.png"), full_page=True)

        # click a cell of the detail view: the drill-down moves to that position
        drill = page.get_by_role("combobox", name="Position", exact=True)
        before = drill.input_value()
        detail = charts.nth(1).locator("canvas, svg.marks").first
        box = detail.bounding_box()
        assert box is not None
        # the plot starts after the y-axis labels: aim at the middle of the plot area
        page.mouse.click(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.5)
        wait_changed(page, drill.input_value, before)
        assert drill.input_value() != before, "clicking a detail cell did not drill down"
        assert page.locator("[data-testid='stException']").count() == 0

        # move the Position box elsewhere, then click the same cell again: the drill-down
        # follows the click again (the chart is remounted, so its selection changes again)
        clicked = drill.input_value()
        drill.click()
        page.keyboard.type("0:")
        page.keyboard.press("Enter")
        wait_changed(page, drill.input_value, clicked)
        moved = drill.input_value()
        assert moved.startswith("0:"), moved
        page.wait_for_timeout(1000)  # the detail chart is remounted (no selection)
        box = charts.nth(1).locator("canvas, svg.marks").first.bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.5)
        wait_changed(page, drill.input_value, moved)
        assert drill.input_value() == clicked, "a second click on the same cell did nothing"

        # at a 1280 px window the drill-down chart (two stacked panels) fits its narrow
        # column: nothing is cut off (side by side, the rank panel was)
        page.set_viewport_size({"width": 1280, "height": 1000})
        page.wait_for_timeout(1500)
        overflow = page.evaluate(DRILL_OVERFLOW_JS)
        assert overflow is not None, "no drill-down chart in a column"
        assert overflow <= 1, f"the drill-down chart sticks out of its column by {overflow}px"
        page.screenshot(path=str(tmp_path / "drill_1280.png"), full_page=True)

        # at 1600 px the drill-down table shows every row and every column (top-5 tokens and
        # p1..p5) without an inner scroll
        page.set_viewport_size({"width": 1600, "height": 1000})
        page.wait_for_timeout(1500)
        overflow = page.evaluate(TABLE_OVERFLOW_JS)
        assert overflow is not None, "no drill-down table"
        assert overflow["x"] <= 1 and overflow["y"] <= 1, f"the table scrolls: {overflow}"
        page.screenshot(path=str(tmp_path / "table_1600.png"), full_page=True)

        # an out-of-range number is explained (the library's message), not silently refused
        page.get_by_role("spinbutton", name="Top-k tokens per cell").fill("100")
        page.get_by_role("button", name="Run logit lens").click()
        page.get_by_text("top_k must be an integer in 1..50").first.wait_for(timeout=30_000)
        wait_idle(page)


def test_run_is_never_lost_on_a_page_switch(
    chromium: str, app_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Switching page while a run is going: the run finishes and its result shows, or the
    page says it was interrupted and "Run again" runs it; never the old result in silence."""
    other = tmp_path / "other_model"  # not loaded yet: the run first loads it
    shutil.copytree(tiny_model_dir, other)
    prompt = "What is the capital of Japan?"
    with app_page(chromium, app_url, CHART) as page:
        page.get_by_text("Other: hub id, local dir or .gguf").click()
        page.get_by_role("textbox", name="Hub id, local directory or .gguf path").fill(str(other))
        page.get_by_role("textbox", name="Prompt", exact=True).fill(prompt)
        page.get_by_role("textbox", name="Target token (optional)").fill("")
        page.get_by_role("button", name="Run logit lens").click()
        page.get_by_role("link", name="Generation & interventions").click()
        page.wait_for_timeout(500)
        wait_idle(page)
        again = page.get_by_role("button", name="Run again")
        interrupted = again.count() > 0
        if interrupted:
            assert page.get_by_text("was interrupted before it finished").count() > 0
            page.screenshot(path=str(tmp_path / "interrupted.png"), full_page=True)
            again.click()
            page.wait_for_timeout(500)
            wait_idle(page)
        assert page.locator("[data-testid='stException']").count() == 0
        page.get_by_role("link", name="Logit lens").click()
        page.locator("[data-testid='stCode']").filter(has_text=prompt).first.wait_for(
            timeout=60_000
        )
        wait_idle(page)
        assert page.get_by_role("button", name="Run again").count() == 0
        caption = page.get_by_text("Model:").first.inner_text()
        assert "other_model" in caption, (interrupted, caption)


# lenskit.ui.widgets.chart_key adds "_N" to the key after a selection reset.
DETAIL = "[class*='st-key-detail_chart'] [data-testid='stVegaLiteChart']"


def plot_run_width(png: bytes) -> int:
    """Widest horizontal run of non-background pixels in a chart screenshot: the heatmap's
    row of cells (the white 0.5 px cell borders are bridged; text, with its letter gaps,
    is not)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    ink = (pixels.min(axis=2) < 250).astype(np.int8)  # the background is white
    best = 0
    for row in ink:
        run = gap = 0
        for value in row:
            if value:
                run, gap = run + 1 + gap, 0
            elif run and gap < 2:
                gap += 1
            else:
                run = gap = 0
            best = max(best, run)
    return best


def set_detail_range_width(page, n: int) -> None:
    """Narrow the detail slider to its last ``n`` positions with the keyboard: the lower thumb
    steps towards the upper one, one key (and one rerun) at a time."""
    thumbs = page.locator("[data-testid='stSlider'] input[type='range']")
    thumbs.nth(1).wait_for(state="attached", timeout=60_000)
    start, end = thumbs.nth(0), thumbs.nth(1)
    for _ in range(60):
        want = int(end.input_value()) - (n - 1)
        have = int(start.input_value())
        if have == want:
            break
        start.focus()
        start.press("ArrowRight" if have < want else "ArrowLeft")
        page.wait_for_timeout(300)  # the slider sends its value after a short debounce
        wait_idle(page)
    else:
        raise AssertionError(f"could not set the detail range to {n} positions")
    page.wait_for_timeout(500)
    wait_idle(page)


def test_detail_narrow_range_in_chromium(chromium: str, app_url: str, tmp_path: Path) -> None:
    """A detail range of <= 6 positions (the chat-template tokens) keeps its 62 px cells
    instead of collapsing to a strip a few pixels wide."""
    with app_page(chromium, app_url, DETAIL) as page:
        for n in (2, 6):
            set_detail_range_width(page, n)
            title = page.locator(DETAIL).first
            title.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            marks = page.locator(f"{DETAIL} canvas, {DETAIL} svg.marks").first
            png = marks.screenshot(path=str(tmp_path / f"detail_{n}.png"))
            width = plot_run_width(png)
            assert width >= 62 * n - 4, f"{n} positions: cells {width}px wide in all"
            assert page.locator("[data-testid='stException']").count() == 0


@pytest.mark.slow
def test_readme_screenshot(tmp_path: Path) -> None:
    """Regenerate docs/app.png on the real default model (opt-in: LENSKIT_README_SCREENSHOT=1).

    ``LENSKIT_README_SCREENSHOT=1 .venv/bin/python -m pytest tests/acceptance/test_browser.py -k readme``
    """
    if not os.environ.get("LENSKIT_README_SCREENSHOT"):
        pytest.skip("set LENSKIT_README_SCREENSHOT=1 to regenerate docs/app.png")
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium found (apt-get install chromium)")
    from PIL import Image
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LENSKIT_DEFAULT_MODEL"}
    cmd = [streamlit_exe(), "run", "app.py", "--server.port", str(port)]
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1800})
            deadline = time.monotonic() + 60
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}")
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
            page.wait_for_selector(f"{CHART} canvas, {CHART} svg.marks", timeout=300_000)
            wait_idle(page, timeout=300_000)
            page.wait_for_timeout(2000)
            raw = tmp_path / "full.png"
            page.screenshot(path=str(raw))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=15)
    image = Image.open(raw).convert("RGB").crop((0, 40, 1440, 1680))
    image = image.resize((1100, round(image.height * 1100 / image.width)), Image.LANCZOS)
    out = ROOT / "docs" / "app.png"
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
        out, optimize=True
    )
    assert out.stat().st_size < 300_000


# lenskit.ui.widgets.chart_key adds "_N" to the key once a run replaced the last.
DATASET_CHART = "[class*='st-key-dataset_chart'] [data-testid='stVegaLiteChart']"


def test_dataset_page_in_chromium(chromium: str, app_url: str, tmp_path: Path) -> None:
    """The Dataset page: a run of the first 4 bundled prompts goes on in the background (its
    progress polled) until the heatmap appears; clicking a cell lists its prompts, and one of
    them opens in the logit-lens page."""
    with app_page(chromium, app_url, CHART) as page:
        page.get_by_role("link", name="Dataset").click()
        page.get_by_role("button", name="Run on the prompt set").wait_for(timeout=60_000)
        wait_idle(page)
        page.get_by_role("spinbutton", name="First N prompts").fill("4")
        page.get_by_role("spinbutton", name="Tokens to generate (1\u201364)").fill("4")
        page.get_by_role("button", name="Run on the prompt set").click()
        marks = f"{DATASET_CHART} canvas, {DATASET_CHART} svg.marks"
        page.wait_for_selector(marks, timeout=120_000)
        wait_idle(page)
        page.wait_for_timeout(1000)
        assert page.locator("[data-testid='stException']").count() == 0
        assert page.get_by_text("4 prompts (the first 4 prompts of").count() > 0
        page.screenshot(path=str(tmp_path / "dataset.png"), full_page=True)
        page.locator(DATASET_CHART).first.screenshot(path=str(tmp_path / "dataset_heatmap.png"))

        # click a cell of the heatmap: its layer and column are picked, its prompts listed
        layer = page.get_by_role("combobox", name="Layer", exact=True)
        before = layer.input_value()
        box = page.locator(marks).first.bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
        wait_changed(page, layer.input_value, before)
        assert layer.input_value() != before, "clicking a heatmap cell picked nothing"
        page.get_by_role("button", name="Open in the lens page").wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "dataset_cell.png"), full_page=True)

        # the chosen prompt opens (and runs) in the logit-lens page
        prompt = page.get_by_role("combobox", name="Prompt", exact=True).input_value()
        text = prompt.split(": ", 1)[1]
        page.get_by_role("button", name="Open in the lens page").click()
        page.get_by_role("heading", name="Overview").wait_for(timeout=60_000)
        page.locator("[data-testid='stCode']").filter(has_text=text).first.wait_for(timeout=60_000)
        wait_idle(page)
        assert page.locator("[data-testid='stException']").count() == 0
        page.screenshot(path=str(tmp_path / "dataset_to_lens.png"), full_page=True)
