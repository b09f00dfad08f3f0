"""The web app in a real headless browser (Debian's Chromium through Playwright) and over plain HTTP: the page loads, a
Vietnamese query fills the gallery with the images the model ranks first, with their scores; zero-shot classification
shows the pipeline's scores; nothing under the photo folder is served (only thumbnails from Gradio's cache); a bad
upload or template is a clear message."""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings

import httpx
import pytest
from PIL import Image
from search_fixtures import REPO, save_demo_model, write_demo_images

from viclip_ot.loading import load_model
from viclip_ot.search import ImageIndex

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
QUERY = "hai hình tròn màu đỏ ở bên trái, nền trắng"
TOP_K = 4
# Files under the photo folder that are no indexed image: none may be served.
PRIVATE_FILES = {
    "secret.txt": b"password",
    ".ssh/id_rsa": b"-----BEGIN OPENSSH PRIVATE KEY-----",
    ".hidden/x.jpg": None,
}


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
    photos = write_demo_images(folder / "photos", folder / "cache", 12)
    for name, content in PRIVATE_FILES.items():
        (folder / "photos" / name).parent.mkdir(exist_ok=True)
        (folder / "photos" / name).write_bytes(content if content is not None else photos[0].read_bytes())
    model = load_model(model_dir)
    index = ImageIndex.build(model, folder / "photos", show_progress_bar=False)
    assert len(index) == 12
    index.save(folder / "index")
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
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Chromium (apt-get install chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(served[0], wait_until="domcontentloaded")
        yield page
        browser.close()


@pytest.mark.slow
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
    # the browser gets thumbnails from Gradio's cache; neither the indexed files nor others under their folder
    sources = [shown.nth(position).get_attribute("src") for position in range(TOP_K)]
    assert not any(str(folder / "photos") in source for source in sources)
    captions = page.locator("#text-results .caption-label").all_inner_texts()

    files = sorted((folder / "photos").rglob("*.png"))
    for path in [*(folder / "photos" / name for name in PRIVATE_FILES), files[0]]:
        other = page.context.browser.new_page()
        assert other.goto(f"{served[0]}gradio_api/file={path}").status in (403, 404), path
        other.close()

    similarities = (model.encode_text(QUERY) @ model.encode_image(files).T)[0]
    top = similarities.topk(TOP_K)
    expected = [f"{score:.3f} · {files[i].name}" for score, i in zip(top.values.tolist(), top.indices.tolist())]
    assert captions == expected


@pytest.mark.slow
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


# ---------------------------------------------------------------- plain HTTP (no browser)


def call(url, api_name, *data):
    """Run an event through Gradio's HTTP API: `(event, data)` of its last message (`complete` or `error`)."""
    with httpx.Client(base_url=url, timeout=60) as client:
        event_id = client.post(f"gradio_api/call/{api_name}", json={"data": list(data)}).json()["event_id"]
        lines = client.get(f"gradio_api/call/{api_name}/{event_id}").text.splitlines()
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    payloads = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    return events[-1], json.loads(payloads[-1])


def upload(url, path):
    with httpx.Client(base_url=url, timeout=60) as client, open(path, "rb") as file:
        (uploaded,) = client.post("gradio_api/upload", files={"files": (path.name, file)}).json()
    return {"path": uploaded, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


@pytest.mark.slow
def test_only_thumbnails_of_results_are_served(served):
    url, _, folder = served
    event, (items,) = call(url, "search_text", QUERY, TOP_K)
    assert event == "complete" and len(items) == TOP_K
    indexed = {path.name: path for path in (folder / "photos").rglob("*.png")}
    with httpx.Client(timeout=60) as client:
        for item in items:
            response = client.get(item["image"]["url"])
            assert response.status_code == 200
            thumbnail = Image.open(io.BytesIO(response.content))
            original = Image.open(indexed[item["caption"].split(" · ")[1]])
            assert thumbnail.size == original.size  # the demo's images are smaller than a thumbnail
        for path in [*(folder / "photos" / name for name in PRIVATE_FILES), *indexed.values(), folder / "index"]:
            assert client.get(f"{url}gradio_api/file={path}").status_code in (403, 404), path


@pytest.mark.slow
def test_bad_upload_and_template_are_clear_messages(served):
    url, _, folder = served
    image = upload(url, sorted((folder / "photos").glob("*.png"))[0])
    event, message = call(url, "classify", image, "hình tròn, hình vuông", "{} và {}")
    assert event == "error" and "exactly one {}" in message["error"]
    event, message = call(url, "search_image", upload(url, folder / "photos" / "secret.txt"), 3)
    assert event == "error" and "secret.txt" in message["error"] and "not an image" in message["error"]
    event, (scores,) = call(url, "classify", image, "hình tròn, hình vuông", "ảnh {}")
    assert event == "complete" and {entry["label"] for entry in scores["confidences"]} == {"hình tròn", "hình vuông"}


@pytest.mark.slow
def test_auth_and_a_warning_beyond_loopback(served, monkeypatch):
    import app

    _, _, folder = served
    launched = []
    monkeypatch.setattr(app.gr.Blocks, "launch", lambda self, **options: launched.append(options))
    arguments = ["--model", str(folder / "model"), "--index", str(folder / "index"), "--host", "0.0.0.0"]
    with pytest.warns(UserWarning, match="--host 0.0.0.0 serves other machines without a login.*--auth"):
        app.main(arguments)
    assert launched[-1]["auth"] is None and "allowed_paths" not in launched[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app.main([*arguments, "--auth", "anh:mật-khẩu:1"])
    assert launched[-1]["auth"] == ("anh", "mật-khẩu:1") and launched[-1]["max_file_size"] == "20mb"


def test_a_hit_outside_the_indexed_folder_is_refused(tmp_path):
    import app

    with pytest.raises(app.gr.Error, match="outside"):
        app.gallery([{"path": str(tmp_path / "photos" / ".." / "private.png"), "score": 1.0}], tmp_path / "photos")
