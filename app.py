"""Web app (Gradio): search a photo index by a Vietnamese description or by an uploaded image, and classify an
uploaded image zero-shot against Vietnamese labels.

    pip install 'viclip-ot[app]'
    python app.py --model MODEL --index INDEX     # an index made by `python -m viclip_ot.search index`
    python app.py                                 # the demo model (`make demo`) on the demo corpus's test images

With no arguments the first start writes the demo corpus's test images to `outputs/demo/test-images` and indexes them
in `outputs/demo/index`.
"""

import argparse
import sys
from pathlib import Path

import gradio as gr
from transformers import AutoModelForZeroShotImageClassification, pipeline

from modeling_viclip_ot import ENCODE_BACKENDS
from processing_viclip_ot import ViCLIPOTZeroShotImageClassificationPipeline
from viclip_ot.search import METADATA_FILE, ImageIndex, load_model

DEMO_MODEL = Path("outputs/demo/final")
DEMO_IMAGES = Path("outputs/demo/test-images")
DEMO_INDEX = Path("outputs/demo/index")
DEFAULT_TEMPLATE = "một bức ảnh về {}"
EXAMPLE_QUERIES = ["hai hình tròn màu đỏ ở bên trái", "một hình vuông màu xanh lá ở giữa, nền đen", "ba tam giác vàng"]


def gallery(hits):
    """Gallery items: each image with its score and file name as the caption."""
    return [(hit["path"], f"{hit['score']:.3f} · {Path(hit['path']).name}") for hit in hits]


def build_app(index: ImageIndex) -> gr.Blocks:
    """The app's page for an index loaded with its model."""
    model = index.model
    # The pipeline accepts any model registered for its auto class (loading with trust_remote_code registers it too).
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
        return gallery(index.search(query.strip(), k=int(k)))

    def search_image(image, k):
        if image is None:
            raise gr.Error("Tải một ảnh lên (upload an image)")
        return gallery(index.search(image, k=int(k)))

    def classify(image, labels, template):
        labels = [label.strip() for label in labels.replace("\n", ",").split(",") if label.strip()]
        if image is None or not labels:
            raise gr.Error(
                "Tải một ảnh lên và nhập các nhãn, cách nhau bởi dấu phẩy (an image and comma-separated labels)"
            )
        if "{}" not in template:
            raise gr.Error("The template needs a {} where the label goes")
        results = classifier(image, candidate_labels=labels, hypothesis_template=template)
        return {result["label"]: result["score"] for result in results}

    with gr.Blocks(title="ViCLIP-OT: tìm ảnh") as app:
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
                upload = gr.Image(type="pil", label="Ảnh", elem_id="image-query")
                image_k = gr.Slider(1, 48, value=12, step=1, label="Số ảnh (top-k)")
            image_button = gr.Button("Tìm ảnh giống", variant="primary", elem_id="image-search")
            image_results = gr.Gallery(label="Kết quả", columns=6, elem_id="image-results")
            image_button.click(search_image, [upload, image_k], image_results)
        with gr.Tab("Phân loại (zero-shot)"):
            with gr.Row():
                to_classify = gr.Image(type="pil", label="Ảnh", elem_id="classify-image")
                with gr.Column():
                    labels = gr.Textbox(
                        label="Nhãn, cách nhau bởi dấu phẩy",
                        elem_id="classify-labels",
                        value="hình tròn, hình vuông, tam giác",
                    )
                    template = gr.Textbox(label="Mẫu câu", value=DEFAULT_TEMPLATE)
                    classify_button = gr.Button("Phân loại", variant="primary", elem_id="classify")
            scores = gr.Label(label="Xác suất", elem_id="classify-scores")
            classify_button.click(classify, [to_classify, labels, template], scores)
    return app


def demo_index(model_dir: Path = DEMO_MODEL, images: Path = DEMO_IMAGES, index_dir: Path = DEMO_INDEX) -> ImageIndex:
    """The demo model with an index of the demo corpus's test images (written and indexed on first use)."""
    if not (model_dir / "config.json").is_file():
        sys.exit(
            f"error: no demo model in {model_dir}: train it with `make demo` (a few minutes on a CPU), or pass "
            "--model MODEL --index INDEX"
        )
    model = load_model(str(model_dir))
    if (index_dir / METADATA_FILE).is_file():
        try:
            return ImageIndex.load(index_dir, model)
        except ValueError:  # the demo model was trained again since: index again
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="saved ViCLIP-OT model (default: the demo model, outputs/demo/final)")
    parser.add_argument("--index", help="index folder from `python -m viclip_ot.search index` (default: the demo's)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--backend", choices=ENCODE_BACKENDS, default="auto", help="query encoding (see `viclip_ot.search --help`)"
    )
    args = parser.parse_args(argv)
    if (args.model is None) != (args.index is None):
        parser.error("give both --model and --index, or neither (the demo)")
    if args.index is None:
        index = demo_index()
    else:
        try:
            index = ImageIndex.load(args.index, load_model(args.model))
        except (ValueError, FileNotFoundError) as error:
            sys.exit(f"error: {error}")
    index.model.encode_backend = args.backend
    build_app(index).launch(server_name=args.host, server_port=args.port, allowed_paths=[str(index.root)])


if __name__ == "__main__":
    main()
