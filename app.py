"""Web app (Gradio): search a photo index by a Vietnamese description, an uploaded image or both (weighted), filtered
by folder and date taken, and classify an uploaded image zero-shot against Vietnamese labels.

    pip install 'viclip-ot[app]'
    python app.py --model MODEL --index INDEX     # an index made by `python -m viclip_ot.search index`
    python app.py                                 # the demo model (`make demo`) on the demo corpus's test images

With no arguments the first start writes the demo corpus's test images to `outputs/demo/test-images` and indexes them
in `outputs/demo/index`.
"""

import argparse
import ipaddress
import os
import warnings
from datetime import date, timedelta
from pathlib import Path

import gradio as gr
import pyarrow.compute as pc
from transformers import AutoModelForZeroShotImageClassification, pipeline

from modeling_viclip_ot import ENCODE_BACKENDS
from processing_viclip_ot import ViCLIPOTZeroShotImageClassificationPipeline, load_rgb_image
from viclip_ot.cli import run
from viclip_ot.loading import load_model
from viclip_ot.search import METADATA_FILE, UNREADABLE, ImageIndex, ModelMismatchError

DEMO_MODEL = Path("outputs/demo/final")
DEMO_IMAGES = Path("outputs/demo/test-images")
DEMO_INDEX = Path("outputs/demo/index")
DEFAULT_TEMPLATE = "một bức ảnh về {}"
EXAMPLE_QUERIES = ["hai hình tròn màu đỏ ở bên trái", "một hình vuông màu xanh lá ở giữa, nền đen", "ba tam giác vàng"]
THUMBNAIL_SIZE = 512  # longest side of the images the gallery shows
DELETE_CACHE = (3600, 3600)  # every hour, delete the uploads and thumbnails older than an hour


def gallery(hits, root):
    """Gallery items: a thumbnail of each image (the app serves these, never the indexed files themselves) with its
    score and file name as the caption. A hit outside `root` (an edited index naming `../` paths) is an error."""
    items = []
    for hit in hits:
        if not Path(os.path.normpath(hit["path"])).is_relative_to(root):
            raise gr.Error(f"the index names a file outside {root}: {hit['path']}")
        image = load_rgb_image(hit["path"])
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        items.append((image, f"{hit['score']:.3f} · {Path(hit['path']).name}"))
    return items


def read_upload(upload, image_processor):
    """The uploaded image of an event that skips Gradio's preprocessing (`preprocess=False`: Gradio's own gives no
    reason for a file that is no image), read by the model's image loader (`image_processor.load`, as the index and
    `encode_image` read files: EXIF orientation, PIL's decompression-bomb limit); otherwise a `gr.Error` that says
    what is wrong."""
    if upload is None:
        raise gr.Error("Tải một ảnh lên (upload an image)")
    try:
        return image_processor.load(upload["path"])
    except UNREADABLE as error:
        name = upload.get("orig_name") or "the upload"
        raise gr.Error(f"{name} không phải là ảnh (is not an image: {error})") from None


def folders(index: ImageIndex) -> list[str]:
    """The folders holding indexed images and every folder above them (relative to the indexed one, as the index
    stores paths), sorted: the choices of the folder filter."""
    parents = pc.replace_substring_regex(index.dataset.with_format("arrow")["path"], r"(^|/)[^/]*$", "")
    found = set()
    for folder in pc.unique(parents).to_pylist():
        while folder:
            found.add(folder)
            folder = folder.rpartition("/")[0]
    return sorted(found)


def parse_date(text, label) -> date | None:
    """The date `text` (YYYY-MM-DD) of the date input `label`; `None` when empty; otherwise a `gr.Error`."""
    if text is None or not str(text).strip():
        return None
    try:
        return date.fromisoformat(str(text).strip())
    except ValueError:
        raise gr.Error(f"{label}: ngày không hợp lệ (not a date, expected YYYY-MM-DD): {text!r}") from None


def search_photos(index, text=None, upload=None, image_weight=0.5, k=12, folder="", taken_from=None, taken_to=None):
    """The `k` best hits (`[{"path", "score"}]`, as `ImageIndex.search_embeddings` gives them: `k` whenever `k`
    images match) for a text, an uploaded image or both, weighted by `image_weight` through
    `ImageIndex.query_embedding` as `python -m viclip_ot.search query` does; among the images under `folder` (one of
    [`folders`], "" for all) taken from the date `taken_from` to the date `taken_to`, both included (YYYY-MM-DD;
    empty: unbounded). Inputs come as Gradio sends them (`preprocess=False`); a bad one is a `gr.Error`."""
    text = text.strip() if text and text.strip() else None
    if text is None and upload is None:
        raise gr.Error("Nhập một mô tả, tải một ảnh lên, hoặc cả hai (type a description, upload an image, or both)")
    if not 0 <= float(image_weight) <= 1:
        raise gr.Error(f"Trọng số ảnh phải trong [0, 1] (the image weight must be in [0, 1]): {image_weight}")
    folder = (folder or "").strip("/")
    if folder and folder not in folders(index):
        raise gr.Error(f"Không có thư mục này trong chỉ mục (no such folder in the index): {folder!r}")
    start, end = parse_date(taken_from, "Chụp từ ngày (taken from)"), parse_date(taken_to, "đến ngày (taken to)")
    if start and end and start > end:
        raise gr.Error(f"Ngày bắt đầu sau ngày kết thúc (the range starts after it ends): {start} > {end}")
    image = None if upload is None else read_upload(upload, index.model.processor.image_processor)
    embedding = index.query_embedding(text, image, float(image_weight))
    before = end + timedelta(days=1) if end else None
    return index.search_embeddings(embedding, int(k), folder or None, start, before)[0]


def check_template(template):
    """A `gr.Error` unless `template` has exactly one `{}` (where the label goes) and no other braces."""
    try:
        valid = template.count("{}") == 1 and template.format("") is not None
    except (IndexError, KeyError, ValueError):
        valid = False
    if not valid:
        raise gr.Error(f"Mẫu câu cần đúng một {{}} cho nhãn (the template needs exactly one {{}}): {template!r}")


def build_app(index: ImageIndex) -> gr.Blocks:
    """The app's page for an index loaded with its model."""
    model = index.model
    # The pipeline accepts any model registered for its auto class.
    AutoModelForZeroShotImageClassification.register(type(model.config), type(model), exist_ok=True)
    classifier = pipeline(
        "zero-shot-image-classification",
        model=model,
        tokenizer=model.processor.tokenizer,
        image_processor=model.processor.image_processor,
        pipeline_class=ViCLIPOTZeroShotImageClassificationPipeline,  # texts and images handled as the processor does
    )

    def search(text, upload, image_weight, k, folder, taken_from, taken_to):
        hits = search_photos(index, text, upload, image_weight, k, folder, taken_from, taken_to)
        if not hits:
            gr.Warning("Không có ảnh nào khớp bộ lọc (no image matches the filters)")
        return gallery(hits, index.root)

    def classify(upload, labels, template):
        labels = [label.strip() for label in labels.replace("\n", ",").split(",") if label.strip()]
        if not labels:
            raise gr.Error("Nhập các nhãn, cách nhau bởi dấu phẩy (comma-separated labels)")
        check_template(template)
        results = classifier(
            read_upload(upload, model.processor.image_processor), candidate_labels=labels, hypothesis_template=template
        )
        return {result["label"]: result["score"] for result in results}

    with gr.Blocks(title="ViCLIP-OT: tìm ảnh", delete_cache=DELETE_CACHE) as app:
        gr.Markdown(
            f"# ViCLIP-OT: tìm ảnh bằng tiếng Việt\n{len(index)} images in `{index.root}`, "
            f"model `{index.model_name or 'unnamed'}`."
        )
        with gr.Tab("Tìm ảnh (search)"):
            with gr.Row():
                query = gr.Textbox(label="Mô tả", placeholder=EXAMPLE_QUERIES[0], elem_id="text-query", scale=3)
                upload = gr.Image(type="filepath", label="Ảnh (không bắt buộc)", elem_id="image-query", scale=1)
            with gr.Row():
                image_weight = gr.Slider(
                    0, 1, value=0.5, step=0.05, label="Trọng số ảnh (khi có cả mô tả và ảnh)", elem_id="image-weight"
                )
                k = gr.Slider(1, 48, value=12, step=1, label="Số ảnh (top-k)", elem_id="top-k")
            with gr.Row():
                folder = gr.Dropdown(
                    [("Tất cả", ""), *((name, name) for name in folders(index))],
                    value="",
                    label="Thư mục",
                    elem_id="folder",
                )
                taken_from = gr.DateTime(include_time=False, type="string", label="Chụp từ ngày", elem_id="taken-from")
                taken_to = gr.DateTime(include_time=False, type="string", label="đến ngày", elem_id="taken-to")
            button = gr.Button("Tìm", variant="primary", elem_id="search")
            results = gr.Gallery(label="Kết quả", columns=6, elem_id="results")
            gr.Examples(EXAMPLE_QUERIES, inputs=query)
            inputs = [query, upload, image_weight, k, folder, taken_from, taken_to]
            button.click(search, inputs, results, preprocess=False)
            query.submit(search, inputs, results, preprocess=False)
        with gr.Tab("Phân loại (zero-shot)"):
            with gr.Row():
                to_classify = gr.Image(type="filepath", label="Ảnh", elem_id="classify-image")
                with gr.Column():
                    labels = gr.Textbox(
                        label="Nhãn, cách nhau bởi dấu phẩy",
                        elem_id="classify-labels",
                        value="hình tròn, hình vuông, tam giác",
                    )
                    template = gr.Textbox(label="Mẫu câu", value=DEFAULT_TEMPLATE, elem_id="classify-template")
                    classify_button = gr.Button("Phân loại", variant="primary", elem_id="classify")
            scores = gr.Label(label="Xác suất", elem_id="classify-scores")
            classify_button.click(classify, [to_classify, labels, template], scores, preprocess=False)
    return app


def demo_index(model_dir: Path = DEMO_MODEL, images: Path = DEMO_IMAGES, index_dir: Path = DEMO_INDEX) -> ImageIndex:
    """The demo model with an index of the demo corpus's test images (written and indexed on first use)."""
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"no demo model in {model_dir}: train it with `make demo` (a few minutes on a CPU), or pass "
            "--model MODEL --index INDEX"
        )
    model = load_model(str(model_dir))
    if (index_dir / METADATA_FILE).is_file():
        try:
            return ImageIndex.load(index_dir, model)
        except ModelMismatchError:  # the demo model was trained again since: index again
            pass
    if not images.is_dir():
        from dataset_scripts import load_corpus

        temporary = images.with_name(images.name + ".tmp")
        temporary.mkdir(parents=True, exist_ok=True)
        for row in load_corpus("demo", split="test"):
            row["image"].save(temporary / f"{row['image_id']}.png")
        temporary.rename(images)
    index = ImageIndex.build(model, images)
    index.save(index_dir)
    return index


def credentials(text):
    """argparse type of `--auth USER:PASSWORD`."""
    user, colon, password = text.partition(":")
    if not (user and colon and password):
        raise argparse.ArgumentTypeError("expected USER:PASSWORD")
    return user, password


def is_loopback(host):
    """Whether `host` (a name or an address) is this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="app.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="saved ViCLIP-OT model (default: the demo model, outputs/demo/final)")
    parser.add_argument("--index", help="index folder from `python -m viclip_ot.search index` (default: the demo's)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines (with --auth)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--backend", choices=ENCODE_BACKENDS, default="auto", help="query encoding (see `viclip_ot.search --help`)"
    )
    parser.add_argument("--auth", type=credentials, metavar="USER:PASSWORD", help="ask for this login")
    parser.add_argument("--max-file-size", default="20mb", help="largest upload (default: 20mb)")
    args = parser.parse_args(argv)
    if (args.model is None) != (args.index is None):
        parser.error("give both --model and --index, or neither (the demo)")
    if not is_loopback(args.host) and args.auth is None:
        warnings.warn(
            f"--host {args.host} serves other machines without a login: anyone who reaches port {args.port} can "
            "search the photos; pass --auth USER:PASSWORD",
            stacklevel=1,
        )
    index = demo_index() if args.index is None else ImageIndex.load(args.index, load_model(args.model))
    index.model.encode_backend = args.backend
    # No folder is added to Gradio's allowed paths: the gallery's thumbnails go through Gradio's cache.
    build_app(index).launch(
        server_name=args.host, server_port=args.port, auth=args.auth, max_file_size=args.max_file_size
    )


if __name__ == "__main__":
    run(main, prog="app.py")
