"""The playground page at GET /, driven in headless Chromium (Debian's chromium) with playwright."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from tests.service.conftest import CLASS_NAMES, LiveServer, make_generator
from training.checkpoint import save_model

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python package) is not installed")

CHROMIUM = os.environ.get("ONESTEP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The committed screenshot is refreshed only on request: ONESTEP_UPDATE_SCREENSHOTS=1 pytest tests/e2e
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "playground.png"

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None and not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM}"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("models")
    save_model(make_generator(16, 1, 10), root / "tiny-cond", class_names=CLASS_NAMES)
    save_model(make_generator(8, 3, 0, seed=1), root / "tiny-uncond")
    settings = Settings(
        models_dir=root,
        default_model="tiny-cond",
        backend="torch",
        max_batch_size=8,
        max_wait_ms=2,
        max_images_per_request=8,
        warmup=False,
        torch_threads=1,
    )
    live = LiveServer(settings).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def page(server: LiveServer) -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_page(viewport={"width": 960, "height": 560})
            yield context
        finally:
            browser.close()


def test_playground_generates_and_shows_timings(server: LiveServer, page, tmp_path: Path) -> None:
    page.goto(server.url + "/")
    assert page.title() == "onestep playground"
    model = page.get_by_label("Model")
    page.wait_for_function("document.querySelectorAll('#model option').length === 2")
    assert model.input_value() == "tiny-cond"
    classes = page.get_by_label("Class")
    assert classes.locator("option").all_inner_texts() == ["random", *(f"{i}: {n}" for i, n in enumerate(CLASS_NAMES))]

    # An unconditional model has no classes to choose.
    model.select_option("tiny-uncond")
    assert classes.is_disabled()
    model.select_option("tiny-cond")
    assert classes.is_enabled()

    # Errors from the JSON error body are shown.
    page.get_by_label("Count").fill("9")
    page.get_by_role("button", name="Generate").click()
    status = page.locator("#status")
    page.wait_for_function("document.getElementById('status').classList.contains('error')")
    assert "413" in status.inner_text() and "too_large" in status.inner_text() and "num_images" in status.inner_text()

    classes.select_option("3")
    page.get_by_label("Seed").fill("7")
    page.get_by_label("Count").fill("4")
    page.get_by_label("Format").select_option("png")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(
        "document.querySelectorAll('#images img').length === 4 && "
        "[...document.querySelectorAll('#images img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert not page.locator("#status").evaluate("e => e.classList.contains('error')")
    widths = page.locator("#images img").evaluate_all("imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
    assert widths == [[16, 16]] * 4
    captions = page.locator("#images figcaption").all_inner_texts()
    assert captions == [f"seed {7 + i} · {CLASS_NAMES[3]}" for i in range(4)]
    assert page.locator("#images img").first.get_attribute("alt").startswith("Generated image, seed 7")

    assert page.locator("#timings").is_visible()
    for cell in ("#t-queue", "#t-inference", "#t-encode", "#t-server", "#t-roundtrip"):
        text = page.locator(cell).inner_text()
        assert text.endswith(" ms") and float(text.split()[0]) >= 0, (cell, text)
    assert 1 <= int(page.locator("#t-batch").inner_text()) <= 4

    # The page shows exactly the bytes the API returns for the same seed and class.
    src = page.locator("#images img").first.get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    api = httpx.post(server.url + "/generate", json={"class_labels": 3, "seed": 7}, timeout=30).json()
    assert base64.b64decode(src.split(",", 1)[1]) == base64.b64decode(api["images"][0]["data"])

    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 1000
    if os.environ.get("ONESTEP_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_playground_webp_and_random_seed(server: LiveServer, page) -> None:
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length === 2")
    page.get_by_label("Seed").fill("")
    page.get_by_label("Count").fill("2")
    page.get_by_label("Format").select_option("webp")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(
        "document.querySelectorAll('#images img').length === 2 && "
        "[...document.querySelectorAll('#images img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert page.locator("#images img").first.get_attribute("src").startswith("data:image/webp;base64,")
    assert "2 images from tiny-cond" in page.locator("#status").inner_text()
