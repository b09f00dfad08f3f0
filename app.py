"""Web app (Gradio): search a photo index by a Vietnamese description or by an uploaded image, and classify an
uploaded image zero-shot against Vietnamese labels.

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
from pathlib import Path

import gradio as gr
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


def read_upload(upload):
    """The uploaded image of an event that skips Gradio's preprocessing (`preprocess=False`: Gradio's own gives no
    reason for a file that is no image), as RGB; otherwise a `gr.Error` that says what is wrong."""
    if upload is None:
        raise gr.Error("Tải một ảnh lên (upload an image)")
    try:
        return load_rgb_image(upload["path"])
    except UNREADABLE as error:
        name = upload.get("orig_name") or "the upload"
        raise gr.Error(f"{name} không phải là ảnh (is not an image: {error})") from None


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

    def search_text(query, k):
        if not query or not query.strip():
            raise gr.Error("Nhập một mô tả (type a description)")
        return gallery(index.search(query.strip(), k=int(k)), index.root)

    def search_image(upload, k):
        return gallery(index.search(read_upload(upload), k=int(k)), index.root)

    def classify(upload, labels, template):
        labels = [label.strip() for label in labels.replace("\n", ",").split(",") if label.strip()]
        if not labels:
            raise gr.Error("Nhập các nhãn, cách nhau bởi dấu phẩy (comma-separated labels)")
        check_template(template)
        results = classifier(read_upload(upload), candidate_labels=labels, hypothesis_template=template)
        return {result["label"]: result["score"] for result in results}

    with gr.Blocks(title="ViCLIP-OT: tìm ảnh", delete_cache=DELETE_CACHE) as app:
        gr.Markdown(
            f"# ViCLIP-OT: tìm ảnh bằng tiếng Việt\n{len(index)} images in `{index.root}`, "
            f"model `{index.model_name or 'unnamed'}`."
        )
        with gr.Tab("Tìm bằng mô tả (text)"):
            with gr.Row():
                query = gr.Textbox(label="Mô tả", placeholder=EXAMPLE_QUERIES[0], elem_id="text-query", scale=4)
                text_k = gr.Slider(1, 48, value=12, step=1, label="Số ảnh (top-k)", scale=1)
            text_button = gr.Button("Tìm", variant="primary", elem_id="text-search")
            text_results = gr.Gallery(label="Kết quả", columns=6, elem_id="text-results")
            gr.Examples(EXAMPLE_QUERIES, inputs=query)
            text_button.click(search_text, [query, text_k], text_results)
            query.submit(search_text, [query, text_k], text_results)
        with gr.Tab("Tìm bằng ảnh (image)"):
            with gr.Row():
                upload = gr.Image(type="filepath", label="Ảnh", elem_id="image-query")
                image_k = gr.Slider(1, 48, value=12, step=1, label="Số ảnh (top-k)")
            image_button = gr.Button("Tìm ảnh giống", variant="primary", elem_id="image-search")
            image_results = gr.Gallery(label="Kết quả", columns=6, elem_id="image-results")
            image_button.click(search_image, [upload, image_k], image_results, preprocess=False)
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
