"""The web app in a real headless browser (Debian's Chromium through Playwright), over plain HTTP and through its
functions: the page loads, a Vietnamese query fills the gallery with the images the model ranks first, with their
scores; the folder and date filters give only matching images, k of them; a text and an image together are weighted as
the command line weighs them; zero-shot classification shows the pipeline's scores; nothing under the photo folder is
served (only thumbnails from Gradio's cache); a bad upload, date or template is a clear message."""

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
from datetime import datetime

import httpx
import numpy as np
import pytest
from PIL import ExifTags, Image
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


def taken_on(position):
    """The date each photo was taken: EXIF `DateTimeOriginal` 2019-05-01 and -02 on the first two, the file's
    modification time 2021-01-02 ... 2021-01-11 (noon) on the others."""
    return datetime(2019, 5, position + 1, 10) if position < 2 else datetime(2021, 1, position, 12)


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
    taken = {}
    for position, path in enumerate(photos):
        when = taken_on(position)
        if position < 2:
            exif = Image.Exif()
            exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = when.strftime("%Y:%m:%d %H:%M:%S")
            # as bytes: Pillow writes no PNG eXIf chunk for an `Exif` whose main IFD is empty
            Image.open(path).copy().save(path, exif=exif.tobytes())
        else:
            os.utime(path, (when.timestamp(), when.timestamp()))
        taken[path] = when
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
        yield url, model, folder, taken
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


def top_captions(model, query, files, k):
    """The gallery captions of the `k` files most similar to `query` (an embedding), best first."""
    similarities = np.asarray(model.encode_image(files)) @ np.asarray(query).reshape(-1)
    order = np.argsort(-similarities, kind="stable")[:k]
    return [f"{similarities[i]:.3f} · {files[i].name}" for i in order]


def shown_captions(page, expected, timeout=60_000):
    """The captions of the results gallery once they read `expected` (they come asynchronously), else as they are."""
    from playwright.sync_api import TimeoutError

    try:
        page.wait_for_function(
            "expected => JSON.stringify([...document.querySelectorAll('#results .caption-label')]"
            ".map(label => label.innerText)) === JSON.stringify(expected)",
            arg=expected,
            timeout=timeout,
        )
    except TimeoutError:  # the assertion that follows shows what the page holds
        pass
    return page.locator("#results .caption-label").all_inner_texts()


def set_number(page, label, value):
    page.locator(f"input[aria-label='number input for {label}']").first.fill(str(value))
    page.locator(f"input[aria-label='number input for {label}']").first.press("Enter")


@pytest.mark.slow
def test_text_query_shows_the_best_images(served, page):
    _, model, folder, _ = served
    page.wait_for_selector("#text-query textarea", timeout=60_000)
    assert "ViCLIP-OT" in page.title() and "12 images" in page.inner_text("body")

    page.locator("#results").scroll_into_view_if_needed()
    page.fill("#text-query textarea", QUERY)
    set_number(page, "Số ảnh (top-k)", TOP_K)
    page.click("#search")
    page.wait_for_function(f"document.querySelectorAll('#results img').length >= {TOP_K}", timeout=60_000)
    page.screenshot(path=str(folder / "text-search.png"), full_page=True)
    shown = page.locator("#results img")
    assert shown.count() == TOP_K
    for position in range(TOP_K):  # each image has loaded in the browser
        assert shown.nth(position).evaluate("img => img.complete && img.naturalWidth > 0")
    # the browser gets thumbnails from Gradio's cache; neither the indexed files nor others under their folder
    sources = [shown.nth(position).get_attribute("src") for position in range(TOP_K)]
    assert not any(str(folder / "photos") in source for source in sources)
    captions = page.locator("#results .caption-label").all_inner_texts()

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
    _, model, folder, _ = served
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

    page.get_by_role("tab", name="Tìm ảnh (search)").click()
    page.fill("#text-query textarea", "")  # an image alone
    page.set_input_files("#image-query input[type=file]", str(files[5]))
    page.click("#search")
    captions = shown_captions(page, top_captions(model, model.encode_image([files[5]]), files, TOP_K))
    assert captions == top_captions(model, model.encode_image([files[5]]), files, TOP_K)
    assert captions[0] == f"1.000 · {files[5].name}"  # the image finds itself first


@pytest.mark.slow
def test_filters_and_a_weighted_query_in_the_page(served, page):
    url, model, folder, taken = served
    files = sorted((folder / "photos").rglob("*.png"))
    page = page.context.browser.new_page(viewport={"width": 1280, "height": 1000})  # none of the other tests' inputs
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#text-query textarea", timeout=60_000)
    page.fill("#text-query textarea", QUERY)
    set_number(page, "Số ảnh (top-k)", 3)
    page.click("#folder input")
    page.get_by_role("option", name="sub").click()
    page.click("#search")
    in_sub = [path for path in files if path.parent.name == "sub"]
    expected = top_captions(model, model.encode_text([QUERY]), in_sub, 3)
    assert shown_captions(page, expected) == expected
    page.screenshot(path=str(folder / "folder-filter.png"), full_page=True)

    page.click("#folder input")
    page.get_by_role("option", name="Tất cả").click()
    set_number(page, "Số ảnh (top-k)", 12)
    page.fill("#taken-from input", "2021-01-03")
    page.fill("#taken-to input", "2021-01-06")
    page.click("#search")
    in_range = [path for path in files if datetime(2021, 1, 3) <= taken[path] < datetime(2021, 1, 7)]
    expected = top_captions(model, model.encode_text([QUERY]), in_range, 12)
    assert len(expected) == 4 and shown_captions(page, expected) == expected

    page.fill("#taken-from input", "")
    page.fill("#taken-to input", "")
    page.set_input_files("#image-query input[type=file]", str(files[5]))
    set_number(page, "Trọng số ảnh (khi có cả mô tả và ảnh)", 0.3)
    set_number(page, "Số ảnh (top-k)", 6)
    page.click("#search")
    combined = 0.7 * model.encode_text([QUERY]).numpy()[0] + 0.3 * model.encode_image([files[5]]).numpy()[0]
    expected = top_captions(model, combined / np.linalg.norm(combined), files, 6)
    assert shown_captions(page, expected) == expected

    page.fill("#taken-from input", "2021-02-30")
    page.click("#search")
    message = page.get_by_text("not a date, expected YYYY-MM-DD): '2021-02-30'")
    message.wait_for(timeout=60_000)
    assert message.count() == 1 and "Traceback" not in page.inner_text("body")
    page.screenshot(path=str(folder / "bad-date.png"), full_page=True)
    page.close()


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


def search_call(url, text=None, image=None, image_weight=0.5, k=TOP_K, folder="", taken_from=None, taken_to=None):
    return call(url, "search", text, image, image_weight, k, folder, taken_from, taken_to)


@pytest.mark.slow
def test_only_thumbnails_of_results_are_served(served):
    url, _, folder, _ = served
    event, (items,) = search_call(url, QUERY)
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
def test_bad_upload_date_folder_and_template_are_clear_messages(served):
    url, _, folder, _ = served
    image = upload(url, sorted((folder / "photos").glob("*.png"))[0])
    event, message = call(url, "classify", image, "hình tròn, hình vuông", "{} và {}")
    assert event == "error" and "exactly one {}" in message["error"]
    event, message = search_call(url, image=upload(url, folder / "photos" / "secret.txt"))
    assert event == "error" and "secret.txt" in message["error"] and "not an image" in message["error"]
    event, message = search_call(url, QUERY, taken_to="2021-13-01")
    assert event == "error" and message["error"].endswith("(not a date, expected YYYY-MM-DD): '2021-13-01'")
    event, message = search_call(url, QUERY, taken_from="2021-02-01", taken_to="2021-01-01")
    assert event == "error" and "starts after it ends" in message["error"]
    for folder_name in ("nowhere", "../photos", "su"):
        event, message = search_call(url, QUERY, folder=folder_name)
        assert event == "error" and f"no such folder in the index): {folder_name!r}" in message["error"]
    event, message = search_call(url, "  ")
    assert event == "error" and "type a description, upload an image, or both" in message["error"]
    event, (scores,) = call(url, "classify", image, "hình tròn, hình vuông", "ảnh {}")
    assert event == "complete" and {entry["label"] for entry in scores["confidences"]} == {"hình tròn", "hình vuông"}


@pytest.mark.slow
def test_auth_and_a_warning_beyond_loopback(served, monkeypatch):
    import app

    _, _, folder, _ = served
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


# ---------------------------------------------------------------- the app's functions (no server)


@pytest.fixture(scope="module")
def index(served):
    _, model, folder, _ = served
    return ImageIndex.load(folder / "index", model)


def exact_hits(model, query, files, k):
    """The `k` files most similar to `query` (an embedding) as `{"path", "score"}` hits, best first."""
    similarities = np.asarray(model.encode_image(files)) @ np.asarray(query).reshape(-1)
    order = np.argsort(-similarities, kind="stable")[:k]
    return [{"path": str(files[i]), "score": pytest.approx(float(similarities[i]), abs=1e-5)} for i in order]


@pytest.mark.slow
def test_folder_filter_gives_k_images_of_that_folder(served, index):
    import app

    _, model, folder, _ = served
    files = sorted((folder / "photos").rglob("*.png"))
    in_sub = [path for path in files if path.parent.name == "sub"]
    assert app.folders(index) == ["sub"] and len(in_sub) == 4
    query = model.encode_text([QUERY])
    for k in (1, 3, 4, 10):
        for name in ("sub", "sub/", "/sub"):
            assert app.search_photos(index, QUERY, k=k, folder=name) == exact_hits(model, query, in_sub, k)
    assert app.search_photos(index, QUERY, k=12, folder="") == exact_hits(model, query, files, 12)
    with pytest.raises(app.gr.Error, match="no such folder"):
        app.search_photos(index, QUERY, folder="su")


@pytest.mark.parametrize(
    "taken_from, taken_to",
    [("2021-01-03", "2021-01-06"), ("2019-05-01", "2019-05-01"), ("", "2020-12-31"), ("2021-01-10", None)],
)
@pytest.mark.slow
def test_date_range_gives_the_images_taken_in_it(served, index, taken_from, taken_to):
    """Both ends included, EXIF `DateTimeOriginal` first (the first two photos' files are from today), else mtime."""
    import app

    _, model, folder, taken = served
    start = datetime.fromisoformat(taken_from) if taken_from else datetime.min
    end = datetime.fromisoformat(f"{taken_to}T23:59:59.999999") if taken_to else datetime.max
    matching = sorted(path for path, when in taken.items() if start <= when <= end)
    assert 0 < len(matching) < 12
    hits = app.search_photos(index, QUERY, k=12, taken_from=taken_from, taken_to=taken_to)
    assert hits == exact_hits(model, model.encode_text([QUERY]), matching, 12)


def test_bad_dates_are_one_clear_message(index):
    import app

    for bad in ("2021-02-30", "01/02/2021", "yesterday", "now"):
        with pytest.raises(app.gr.Error, match=f"not a date, expected YYYY-MM-DD\\): '{bad}'"):
            app.search_photos(index, QUERY, taken_from=bad)


@pytest.mark.slow
def test_text_and_image_weighted_as_the_command_line_does(served, index, capsys):
    import app
    from viclip_ot.search import main as search_main

    _, model, folder, _ = served
    files = sorted((folder / "photos").rglob("*.png"))
    image = {"path": str(files[5]), "orig_name": files[5].name}
    text_only = app.search_photos(index, QUERY, k=12)
    image_only = app.search_photos(index, upload=image, k=12)
    assert text_only == exact_hits(model, model.encode_text([QUERY]), files, 12)
    assert image_only == exact_hits(model, model.encode_image([files[5]]), files, 12)
    assert app.search_photos(index, QUERY, image, image_weight=0.0, k=12) == text_only
    assert app.search_photos(index, QUERY, image, image_weight=1.0, k=12) == image_only

    weighted = app.search_photos(index, QUERY, image, image_weight=0.3, k=12)
    by_hand = 0.7 * model.encode_text([QUERY]).numpy()[0] + 0.3 * model.encode_image([files[5]]).numpy()[0]
    assert weighted == exact_hits(model, by_hand / np.linalg.norm(by_hand), files, 12)
    assert weighted != text_only and weighted != image_only
    arguments = ["query", "--index", str(folder / "index"), "--text", QUERY, "--image", str(files[5])]
    search_main([*arguments, "--image-weight", "0.3", "--top-k", "12", "--backend", "torch", "--json"])
    assert weighted == json.loads(capsys.readouterr().out)
