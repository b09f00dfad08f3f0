"""Encoding throughput (images/s, texts/s) of the paper-size ViCLIP-OT model with random weights.

The model is `ViCLIPOTModel(ViCLIPOTConfig())`: DINOv3 ViT-B/16 + PhoBERT-base (vietnamese-sbert's config), ~221 M
parameters, built offline with random weights (speed does not depend on the weights). Inputs are random tensors
fed straight to `get_image_features` / `get_text_features` and L2-normalised (the preprocessing is not timed):
224x224 pixel batches, and captions of 15-30 PhoBERT tokens (uniform, <s> and </s> included) padded to the longest
of their batch. Each case runs `--warmup` untimed batches, then `--repeats` timed ones, under
`torch.inference_mode()` in eval mode; the median is reported.

Cases: the CPU in float32; a CUDA GPU, when one is present, in bf16 autocast (skipped, and said so, otherwise).

`--backends` compares, in the same run and on the same inputs, the CPU backends of `encode_image` / `encode_text`
(fp32, bf16 autocast, int8 ONNX Runtime towers): throughput on real sample photos (scikit-image's, resized and
centre-cropped to 224, ImageNet-normalised) and on captions of the demo corpus's lengths, the embeddings' cosine to
fp32 (min, mean), and, with `--demo-model` (a trained `make demo` model), the top-10 overlap of text-to-image search
on the demo test split and the change of its avg R@K.

    python benchmarks/encode.py                         # writes benchmarks/results/encode.md
    python benchmarks/encode.py --quick                 # smoke run: small batches, one repeat, no file
    python benchmarks/encode.py --device cuda --dtype bf16
    python benchmarks/encode.py --backends --demo-model outputs/demo/final   # writes benchmarks/results/backends.md
"""

import argparse
import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from _measure import (
    CAPTION_TOKENS,
    environment,
    load_average,
    markdown_table,
    median,
    random_captions,
    repeat_timing,
    spread,
    write_results,
)

from configuration_viclip_ot import ViCLIPOTConfig
from modeling_viclip_ot import ViCLIPOTModel, autocast_dtype, cpu_has_native_bf16, int8_session

RESULTS = Path(__file__).parent / "results" / "encode.md"
BACKENDS_RESULTS = Path(__file__).parent / "results" / "backends.md"
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cases(args):
    """(device, dtype) pairs to run."""
    if args.device:
        return [(args.device, args.dtype or ("fp32" if args.device == "cpu" else "bf16"))]
    found = [("cpu", args.dtype or "fp32")]
    if torch.cuda.is_available():
        found.append(("cuda", args.dtype or "bf16"))
    return found


def benchmark(model, device, dtype, args, generator):
    """Rows of the table for one (device, dtype)."""
    model.to(device)
    autocast_dtype = DTYPES[dtype]
    pixel_values = torch.randn(args.image_batch, 3, 224, 224, generator=generator).to(device)
    input_ids, attention_mask = (t.to(device) for t in random_captions(args.text_batch, generator))

    def autocast():
        return torch.autocast(torch.device(device).type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    def encode_images():
        with torch.inference_mode(), autocast():
            return F.normalize(model.get_image_features(pixel_values).pooler_output.float(), dim=-1)

    def encode_texts():
        with torch.inference_mode(), autocast():
            return F.normalize(model.get_text_features(input_ids, attention_mask).pooler_output.float(), dim=-1)

    rows = []
    for kind, function, batch, shape in (
        ("images", encode_images, args.image_batch, "224x224"),
        (
            "texts",
            encode_texts,
            args.text_batch,
            (
                f"{CAPTION_TOKENS[0]}-{CAPTION_TOKENS[1]} tokens (mean {attention_mask.sum(1).float().mean():.1f}), "
                f"padded to {input_ids.shape[1]}"
            ),
        ),
    ):
        print(f"{device} {dtype} {kind}: batch {batch} (load average {load_average()})", flush=True)
        cpu_times = []
        times = repeat_timing(
            function, args.warmup, args.repeats, device, label=f"{device} {kind}", cpu_times=cpu_times
        )
        seconds = median(times)
        rows.append(
            [
                device,
                dtype,
                kind,
                shape,
                batch,
                f"{seconds:.2f}",
                f"{batch / seconds:.1f}",
                spread(times),
                f"{median(cpu_times):.1f}",
            ]
        )
        print(markdown_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    model.to("cpu")
    return rows


def sample_photos(count):
    """`count` 224x224 ImageNet-normalised crops of scikit-image's sample photographs (cycled, flipped variants)."""
    from skimage import data
    from torchvision.transforms import v2

    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "motorcycle_left"]
    arrays = [getattr(data, name)() for name in names if hasattr(data, name)]
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Resize(256),
            v2.CenterCrop(224),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    photos = [transform(torch.from_numpy(array[..., :3].copy()).permute(2, 0, 1)) for array in arrays]
    return torch.stack(
        [photos[i % len(photos)].flip(-1) if i // len(photos) % 2 else photos[i % len(photos)] for i in range(count)]
    )


def backend_encoders(model, cache):
    """name -> (image function, text function) on tensors, each returning L2-normalised float32 rows."""

    def torch_encoders(dtype):
        def run(method, *inputs):
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                return F.normalize(method(*inputs).pooler_output.float(), dim=-1)

        return (lambda x: run(model.get_image_features, x), lambda ids, mask: run(model.get_text_features, ids, mask))

    sessions = {kind: int8_session(model, kind, cache) for kind in ("image", "text")}

    def int8_image(x):
        return F.normalize(torch.from_numpy(sessions["image"].run(None, {"pixel_values": x.numpy()})[0]), dim=-1)

    def int8_text(ids, mask):
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        return F.normalize(torch.from_numpy(sessions["text"].run(None, feed)[0]), dim=-1)

    return {
        "fp32": torch_encoders(None),
        "bf16": torch_encoders(autocast_dtype("auto", "cpu") or torch.bfloat16),
        "onnx-int8": (int8_image, int8_text),
    }


def compare_backends(args):
    """The backends' table on the paper-size model (random weights) and, with --demo-model, on the demo model."""
    import tempfile

    torch.manual_seed(0)
    model = ViCLIPOTModel(ViCLIPOTConfig()).eval()
    generator = torch.Generator().manual_seed(0)
    pixel_values = sample_photos(args.image_batch)
    input_ids, attention_mask = random_captions(args.text_batch, generator)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        encoders = backend_encoders(model, cache)
        reference = {}
        for name, (image_fn, text_fn) in encoders.items():
            row = [name]
            for kind, function, inputs, batch in (
                ("images", image_fn, (pixel_values,), args.image_batch),
                ("texts", text_fn, (input_ids, attention_mask), args.text_batch),
            ):
                print(f"{name} {kind} (load average {load_average()})", flush=True)
                call = functools.partial(function, *inputs)
                times = repeat_timing(call, args.warmup, args.repeats, label=f"{name} {kind}")
                embeds = function(*inputs)
                reference.setdefault(kind, embeds)
                cosine = F.cosine_similarity(embeds, reference[kind], dim=-1)
                row += [f"{batch / median(times):.2f}", f"{cosine.min():.4f} / {cosine.mean():.4f}"]
            rows.append(row)
    fp32_rate = float(rows[0][1])
    for row in rows:
        row.insert(2, f"{float(row[1]) / fp32_rate:.2f}x")
    demo_rows = demo_comparison(args.demo_model) if args.demo_model else []
    return rows, demo_rows


def demo_comparison(folder):
    """Per backend: the demo test split's avg R@K, its change from fp32, the top-10 text-to-image overlap with fp32."""
    from dataset_scripts import load_corpus
    from viclip_ot.loading import load_model
    from viclip_ot.retrieval import retrieval_metrics

    model = load_model(folder)
    split = load_corpus("demo", split="test")
    captions = [caption for row in split for caption in row["captions"]]
    index = torch.tensor([i for i, row in enumerate(split) for _ in row["captions"]])
    images = [row["image"] for row in split]
    results, rows = {}, []
    for backend in ("torch", "bf16", "onnx-int8"):
        image_embeds, text_embeds = (
            model.encode_image(images, backend=backend),
            model.encode_text(captions, backend=backend),
        )
        top = (text_embeds @ image_embeds.T).topk(10, dim=1).indices
        results[backend] = (retrieval_metrics(image_embeds, text_embeds, index)["avg_R"], top)
        avg, fp32_avg = results[backend][0], results["torch"][0]
        overlap = torch.tensor([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(top, results["torch"][1])])
        rows.append(
            [backend, f"{avg:.2f}", f"{avg - fp32_avg:+.2f}", f"{overlap.mean():.3f} (min {overlap.min():.1f})"]
        )
    return rows


HEADERS = [
    "device",
    "precision",
    "input",
    "shape",
    "batch",
    "median s / batch",
    "items / s",
    "range (s)",
    "median CPU s / batch",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], help="run one device only (default: CPU, and CUDA when present)"
    )
    parser.add_argument(
        "--dtype", choices=list(DTYPES), help="fp32, or autocast to bf16/fp16 (default: fp32 on the CPU, bf16 on CUDA)"
    )
    parser.add_argument("--image-batch", type=int, default=32)
    parser.add_argument("--text-batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke run: batches of 2 and 4, one repeat, no file")
    parser.add_argument("--output", type=Path, help=f"Markdown file to write (default {RESULTS}, none with --quick)")
    parser.add_argument("--backends", action="store_true", help="compare the CPU backends fp32 / bf16 / onnx-int8")
    parser.add_argument("--demo-model", type=Path, help="with --backends: a trained demo model for R@K and overlap")
    args = parser.parse_args()
    if args.backends:
        return write_backends(args)
    if args.quick:
        args.image_batch, args.text_batch, args.warmup, args.repeats = 2, 4, 0, 1
    output = args.output or (None if args.quick else RESULTS)

    load_before = load_average()
    torch.manual_seed(0)
    model = ViCLIPOTModel(ViCLIPOTConfig()).eval()
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {parameters / 1e6:.1f} M parameters (random weights)", flush=True)
    generator = torch.Generator().manual_seed(0)
    rows, notes = [], []
    for device, dtype in cases(args):
        rows += benchmark(model, device, dtype, args, generator)
    if not torch.cuda.is_available():
        notes.append(
            "No CUDA GPU on this machine: the GPU (bf16 autocast) case was skipped; "
            "`python benchmarks/encode.py --device cuda --dtype bf16` runs it where there is one."
        )

    text = "\n".join(
        [
            "# Encoding throughput",
            "",
            (
                f"{environment('cuda' if any(d == 'cuda' for d, _ in cases(args)) else 'cpu')}; "
                f"load average (1/5/15 min) {load_before} at the start, {load_average()} at the end."
            ),
            "",
            (
                f"Paper-size model (DINOv3 ViT-B/16 + PhoBERT-base, {parameters / 1e6:.1f} M parameters, random "
                f"weights), "
                "eval mode, `torch.inference_mode()`, `get_image_features` / `get_text_features` + L2 normalisation on "
                "random inputs (preprocessing not timed). Texts: random token ids, lengths drawn uniformly from "
                f"{CAPTION_TOKENS[0]}-{CAPTION_TOKENS[1]} PhoBERT tokens (<s> and </s> included), padded to the "
                f"longest "
                f"caption of the batch. {args.warmup} warm-up batch(es), then the median of {args.repeats} timed "
                f"batches; "
                "range = fastest-slowest timed batch. CPU s = the process's user + system CPU time per batch (all "
                "threads): "
                f"about {torch.get_num_threads()} x the wall-clock time when no other process competed for the cores."
            ),
            "",
            markdown_table(HEADERS, rows),
            "",
            *notes,
        ]
    )
    print("\n" + text)
    if output:
        write_results(output, text + "\n")


def write_backends(args):
    if args.quick:
        args.image_batch, args.text_batch, args.warmup, args.repeats = 2, 4, 0, 1
    load_before = load_average()
    rows, demo_rows = compare_backends(args)
    text = "\n".join(
        [
            "# Encoding backends on the CPU",
            "",
            f"{environment()}; native bf16: {cpu_has_native_bf16()}; load average (1/5/15 min) {load_before} at the "
            f"start, {load_average()} at the end.",
            "",
            "Paper-size model (random weights), the same inputs for every backend: "
            f"{args.image_batch} sample photos (224x224) and {args.text_batch} captions of 15-30 PhoBERT tokens per "
            f"batch; median of {args.repeats} batches after {args.warmup} warm-up(s). Cosine: to the fp32 embeddings.",
            "",
            markdown_table(
                ["backend", "images / s", "vs fp32", "image cosine min / mean", "texts / s", "text cosine min / mean"],
                rows,
            ),
            *(
                [
                    "",
                    f"Demo model ({args.demo_model}), demo test split (200 images, 1,000 captions), "
                    "`encode_image` / `encode_text` with each backend:",
                    "",
                    markdown_table(["backend", "avg R@K", "change", "top-10 overlap with fp32"], demo_rows),
                ]
                if demo_rows
                else []
            ),
        ]
    )
    print("\n" + text)
    output = args.output or (None if args.quick else BACKENDS_RESULTS)
    if output:
        write_results(output, text + "\n")


if __name__ == "__main__":
    main()
