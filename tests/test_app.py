"""The web app in a real headless browser (Debian's Chromium through Playwright): the page loads, a Vietnamese query
fills the gallery with the images the model ranks first, with their scores; zero-shot classification shows the
pipeline's scores."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from search_fixtures import REPO, save_demo_model, write_demo_images
from transformers import AutoModel

from viclip_ot.search import ImageIndex

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
QUERY = "hai hình tròn màu đỏ ở bên trái, nền trắng"
TOP_K = 4

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Chromium (apt-get install chromium)")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url, process, seconds=240):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}:\n{process.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """app.py serving an index of 12 demo images, and the model that built it."""
    folder = tmp_path_factory.mktemp("app")
    model_dir = save_demo_model(folder, folder / "cache")
    write_demo_images(folder / "photos", folder / "cache", 12)
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    ImageIndex.build(model, folder / "photos", show_progress_bar=False).save(folder / "index")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "app.py", "--model", str(model_dir), "--index", str(folder / "index"), "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url, process)
        yield url, model, folder
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def page(served):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(served[0], wait_until="domcontentloaded")
        yield page
        browser.close()


def test_text_query_shows_the_best_images(served, page):
    _, model, folder = served
    page.wait_for_selector("#text-query textarea", timeout=60_000)
    assert "ViCLIP-OT" in page.title() and "12 images" in page.inner_text("body")

    page.locator("#text-results").scroll_into_view_if_needed()
    page.fill("#text-query textarea", QUERY)
    page.locator("input[aria-label='number input for Số ảnh (top-k)']").first.fill(str(TOP_K))
    page.locator("input[aria-label='number input for Số ảnh (top-k)']").first.press("Enter")
    page.click("#text-search")
    page.wait_for_function(f"document.querySelectorAll('#text-results img').length >= {TOP_K}", timeout=60_000)
    page.screenshot(path=str(folder / "text-search.png"), full_page=True)
    shown = page.locator("#text-results img")
    assert shown.count() == TOP_K
    for position in range(TOP_K):  # each image has loaded in the browser
        assert shown.nth(position).evaluate("img => img.complete && img.naturalWidth > 0")
    captions = page.locator("#text-results .caption-label").all_inner_texts()

    files = sorted((folder / "photos").rglob("*.png"))
    similarities = (model.encode_text(QUERY) @ model.encode_image(files).T)[0]
    top = similarities.topk(TOP_K)
    expected = [f"{score:.3f} · {files[i].name}" for score, i in zip(top.values.tolist(), top.indices.tolist())]
    assert captions == expected


def test_uploaded_image_is_classified_and_searched(served, page):
    _, model, folder = served
    files = sorted((folder / "photos").rglob("*.png"))
    page.get_by_role("tab", name="Phân loại (zero-shot)").click()
    page.set_input_files("#classify-image input[type=file]", str(files[0]))
    page.fill("#classify-labels textarea", "hình tròn, hình vuông, tam giác")
    page.click("#classify")
    page.wait_for_selector("#classify-scores .output-class", timeout=60_000)
    page.screenshot(path=str(folder / "classify.png"), full_page=True)
    from transformers import pipeline

    classifier = pipeline(
        "zero-shot-image-classification",
        model=model,
        tokenizer=model.processor.tokenizer,
        image_processor=model.processor.image_processor,
    )
    expected = classifier(
        str(files[0]), candidate_labels=["hình tròn", "hình vuông", "tam giác"], hypothesis_template="một bức ảnh về {}"
    )
    assert page.inner_text("#classify-scores .output-class").strip() == expected[0]["label"]
    shown = page.locator("#classify-scores").inner_text()
    for result in expected:
        assert f"{round(100 * result['score'])}%" in shown and result["label"] in shown

    page.get_by_role("tab", name="Tìm bằng ảnh (image)").click()
    page.set_input_files("#image-query input[type=file]", str(files[5]))
    page.click("#image-search")
    page.wait_for_function("document.querySelectorAll('#image-results img').length > 0", timeout=60_000)
    first = page.locator("#image-results .caption-label").first.inner_text()
    assert first.endswith(files[5].name) and first.startswith("1.000")  # the image finds itself first
