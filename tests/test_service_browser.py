"""The service's page in a real browser: Debian's chromium, driven by playwright (no browser download).

The service runs in uvicorn on a loopback port; the browser uploads an image and must show the
diagnosis, the probability bars, the rotation check, the heat map and the gallery (with the
legend of its colours), without a JavaScript error; a bad upload must be explained once, in words,
leaving no stale heat map and no broken image; a service with a key must ask for it once and send
it with every request, images included; an uncertain diagnosis of an image unlike the training
images must read as such.

Skipped only when /usr/bin/chromium is missing (CI installs it: .ci/run). Environment:
  RMNET_SERVICE_DEMO=runs/demo      serve this demo folder (its runs and index/) instead of the tiny
                                    test model, and upload one of its own test images
  RMNET_SERVICE_SCREENSHOT=PATH     also save the page's screenshot there (docs/images/service.png)
  RMNET_WARNINGS_SCREENSHOT=PATH    save the screenshot of an uncertain, unfamiliar image there
                                    (docs/images/service-warnings.png)
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
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

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
)


KEY = "browser-key-0123456789"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """(folder of runs, its index, an image to upload): the demo's when RMNET_SERVICE_DEMO is set."""
    from test_service import copy_index, make_example

    root = tmp_path_factory.mktemp("browser")
    demo = os.environ.get("RMNET_SERVICE_DEMO")
    if demo:
        return Path(demo), copy_index(Path(demo) / "index", root / "index"), _a_test_image(Path(demo))
    folder, index = make_example(root)
    return folder, index, sorted((folder / "data").rglob("*.png"))[0]


def _serve(folder: Path, index: Path, api_key: str):
    """The service in uvicorn on a free loopback port: (base URL, a function that stops it)."""
    import uvicorn
    from test_service import free_port

    from rmnet.service.app import build_service, create_app
    from rmnet.service.config import ServiceConfig

    service = build_service(ServiceConfig(run=folder, index=index, api_key=api_key, device="cpu"))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=15)
        service.close()

    return f"http://127.0.0.1:{port}", stop


@pytest.fixture(scope="module")
def served(example):
    """(base URL, an image to upload) of the service without a key."""
    folder, index, image = example
    url, stop = _serve(folder, index, "")
    yield url, image
    stop()


@pytest.fixture(scope="module")
def served_with_key(example):
    """(base URL, an image to upload) of the service with the key ``KEY``."""
    folder, index, image = example
    url, stop = _serve(folder, index, KEY)
    yield url, image
    stop()


def _a_test_image(demo: Path) -> Path:
    """An image of the demo's test split (not in the index: the gallery shows its neighbours)."""
    from rmnet.runs import Run

    with open(demo / "index" / "manifest.json") as handle:
        run = Run(json.load(handle)["model"]["run"])
    table, test = run.table, run.split.test
    return Path(table.paths[test[3]])


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def wait_until(condition, timeout: float = 30.0) -> None:
    """Poll ``condition`` (the page's Content-Security-Policy forbids wait_for_function's eval)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
        yield page, problems
        browser.close()


def test_upload_shows_diagnosis_heat_map_and_gallery_without_errors(served, browser_page, tmp_path):
    base, image = served
    page, problems = browser_page
    page.goto(base + "/")
    expect(page.locator("#service-meta")).to_contain_text("indexed cases")
    page.set_input_files("#file", str(image))

    expect(page.locator("#gallery .case")).to_have_count(10, timeout=60_000)
    expect(page.locator("#status")).to_have_text("Done.", timeout=60_000)
    classes = page.evaluate("fetch('/healthz').then(r => r.json()).then(h => h.model.classes)")
    assert page.inner_text("#diagnosis") in [*classes, "Uncertain diagnosis"]
    assert page.locator("#bars .bar").count() == len(classes)
    rotation = page.inner_text("#consistency")  # RM over the whole network: quarter turns not checked
    assert "when turned" in rotation and "Checked at " in rotation and "45°" in rotation
    assert "Not checked: 90°, 180°, 270°" in rotation and "by construction" in rotation
    assert page.evaluate("document.getElementById('heatmap').naturalWidth") >= 256
    assert page.locator("#heatmap").is_visible() and not page.locator("#heatmap-placeholder").is_visible()
    assert page.evaluate("document.getElementById('query').naturalWidth") > 0
    thumbnails = page.locator("#gallery .case img")
    wait_until(
        lambda: page.evaluate(
            "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)"
        )
    )
    assert thumbnails.count() == 10
    assert "distance" in page.inner_text("#gallery .case >> nth=0")
    assert not page.locator("#error").is_visible()
    # The colours of the similar cases are explained, and said in words on each case.
    legend = page.inner_text("#legend")
    assert page.locator("#legend").is_visible() and "confirmed diagnosis" in legend and "model" in legend
    uncertain = page.inner_text("#diagnosis") == "Uncertain diagnosis"
    what = "the model's most likely class" if uncertain else "the model's diagnosis"
    most_likely = page.locator("#bars .bar").first.get_attribute("title")  # bars: most probable first
    for card in page.locator("#gallery .case").all():
        label, agree = card.locator(".label"), card.inner_text().split("\n")
        same = label.get_attribute("data-label") == most_likely
        assert (f"= {what}" in agree) == same, agree
        assert "same" in label.get_attribute("class") if same else "other" in label.get_attribute("class")

    shot = tmp_path / "service.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("RMNET_SERVICE_SCREENSHOT"):
        target = Path(os.environ["RMNET_SERVICE_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)

    page.click("#gallery .case >> nth=0")  # the full image of a case
    wait_until(lambda: page.evaluate("document.getElementById('lightbox-img').naturalWidth > 0"))
    assert page.locator("#lightbox").is_visible()
    page.keyboard.press("Escape")
    assert not page.locator("#lightbox").is_visible()
    assert problems == []


def test_a_failed_upload_after_a_good_one_leaves_one_message_and_nothing_stale(
    served, browser_page, tmp_path
):
    base, image = served
    page, problems = browser_page
    page.goto(base + "/")
    page.set_input_files("#file", str(image))
    expect(page.locator("#status")).to_have_text("Done.", timeout=60_000)
    assert page.locator("#heatmap").is_visible() and "looked for" in page.inner_text("#heatmap-caption")

    text = tmp_path / "notes.png"
    text.write_text("not really an image")
    page.set_input_files("#file", str(text))
    expect(page.locator("#error")).to_contain_text("not an image", timeout=60_000)
    expect(page.locator("#results")).to_be_hidden(timeout=60_000)
    message = page.inner_text("#error")
    assert message.count("not an image") == 1 and len(message.strip().splitlines()) == 1, message
    assert message.startswith("The image was not analysed")
    # The previous upload's heat map, caption and gallery are gone; no broken-image icon anywhere.
    assert not page.locator("#heatmap").is_visible() and page.get_attribute("#heatmap", "src") is None
    assert "looked for" not in page.inner_text("#heatmap-caption")
    assert page.locator("#gallery .case").count() == 0
    broken = (
        "[...document.images].filter(i => i.checkVisibility() && i.complete && i.naturalWidth === 0).length"
    )
    assert page.evaluate(broken) == 0
    # The browser logs each refused request (415) as a console error; nothing else may go wrong.
    assert [p for p in problems if "status of 415" not in p] == []


def unfamiliar_candidates(folder: Path) -> list[tuple[str, bytes]]:
    """Images a lesion classifier should not be sure about: colour negatives of lesions, lesions
    faded into grey, and crops of scikit-learn's sample photographs (PNG bytes)."""
    import io

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    def png(array) -> bytes:
        out = io.BytesIO()
        Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(out, "PNG")
        return out.getvalue()

    found = []
    for path in sorted((folder / "data").rglob("*.png"))[::7][:20]:
        lesion = np.asarray(Image.open(path).convert("RGB"), np.float32)
        found += [
            (f"negative-{path.name}", png(255 - lesion)),
            (f"faded-{path.name}", png(0.3 * lesion + 90)),
        ]
    rng = np.random.default_rng(0)
    for i, photo in enumerate(load_sample_images().images):
        for j in range(5):
            side = int(rng.integers(64, 300))
            top, left = (
                int(rng.integers(0, photo.shape[0] - side)),
                int(rng.integers(0, photo.shape[1] - side)),
            )
            found.append((f"photo-{i}-{j}.png", png(photo[top : top + side, left : left + side])))
    return found


def test_an_uncertain_diagnosis_of_an_unfamiliar_image_reads_as_such(served, browser_page, tmp_path):
    import httpx

    base, image = served
    page, problems = browser_page
    folder = Path(os.environ.get("RMNET_SERVICE_DEMO") or image.parents[2])
    chosen = None
    for name, data in unfamiliar_candidates(folder):  # the first the service calls uncertain and unfamiliar
        body = httpx.post(
            base + "/api/predict", files={"image": (name, data, "image/png")}, timeout=60
        ).json()
        codes = [w["code"] for w in body["warnings"]]
        if body["uncertain"] and "out_of_distribution" in codes:
            chosen = (name, data, body)
            break
    assert chosen is not None, "no candidate image was both uncertain and out of distribution"
    name, data, body = chosen
    upload = tmp_path / name
    upload.write_bytes(data)
    page.goto(base + "/")
    expect(page.locator("#service-meta")).to_contain_text("indexed cases")
    page.set_input_files("#file", str(upload))
    expect(page.locator("#status")).to_have_text("Done.", timeout=60_000)

    # No headline: the state, then the most likely classes with their calibrated probabilities.
    assert page.inner_text("#diagnosis") == "Uncertain diagnosis"
    likely = page.inner_text("#diagnosis-p")
    top = sorted(body["classes"], key=lambda c: -c["probability"])
    assert likely.startswith("Most likely: " + top[0]["name"]) and top[1]["name"] in likely
    assert "(calibrated)" in likely and page.locator("#bars .bar.top").count() == 0
    # Every warning of the response, in plain words, the unfamiliar image among them.
    items = page.locator("#warnings li")
    assert items.count() == len(body["warnings"])
    unfamiliar = page.inner_text("#warnings li[data-code=out_of_distribution]")
    assert (
        unfamiliar.startswith("Unlike the training images: ") and "unlike the images the model" in unfamiliar
    )
    assert page.inner_text("#warnings li[data-code=low_confidence]").startswith("Uncertain: ")
    assert "Checked at " in page.inner_text("#consistency")
    assert not page.locator("#error").is_visible()

    shot = tmp_path / "service-warnings.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("RMNET_WARNINGS_SCREENSHOT"):
        target = Path(os.environ["RMNET_WARNINGS_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    assert problems == []


def test_a_service_with_a_key_asks_for_it_once_and_sends_it_everywhere(served_with_key, browser_page):
    base, image = served_with_key
    page, problems = browser_page
    page.goto(base + "/")
    expect(page.locator("#key-panel")).to_be_visible(timeout=30_000)
    page.fill("#key-input", "not-the-key-0123456789")
    page.click("#key-form button")
    expect(page.locator("#key-message")).to_contain_text("refused", timeout=30_000)
    page.fill("#key-input", f"  {KEY} ")
    page.click("#key-form button")
    expect(page.locator("#service-meta")).to_contain_text("indexed cases", timeout=30_000)
    assert not page.locator("#key-panel").is_visible()

    page.set_input_files("#file", str(image))
    expect(page.locator("#status")).to_have_text("Done.", timeout=60_000)
    wait_until(
        lambda: page.evaluate(
            "[...document.querySelectorAll('#gallery img')].length === 10 && "
            "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)"
        )
    )  # the thumbnails came with the key
    assert page.evaluate("document.getElementById('heatmap').naturalWidth") >= 256
    page.reload()  # kept for the tab: not asked again
    expect(page.locator("#service-meta")).to_contain_text("indexed cases", timeout=30_000)
    assert not page.locator("#key-panel").is_visible()
    assert page.evaluate("sessionStorage.getItem('rmnet-api-key')") == KEY
    # The wrong key's 403 is logged by the browser as a console error; nothing else may go wrong.
    assert [p for p in problems if "status of 403" not in p] == []
