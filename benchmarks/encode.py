"""Encoding throughput (images/s, texts/s) of the paper-size ViCLIP-OT model with random weights.

The model is `ViCLIPOTModel(ViCLIPOTConfig())`: DINOv3 ViT-B/16 + PhoBERT-base (vietnamese-sbert's config), ~221 M
parameters, built offline with random weights (speed does not depend on the weights). Inputs are random tensors
fed straight to `get_image_features` / `get_text_features` and L2-normalised (the preprocessing is not timed):
224x224 pixel batches, and captions of 15-30 PhoBERT tokens (uniform, <s> and </s> included) padded to the longest
of their batch. Each case runs `--warmup` untimed batches, then `--repeats` timed ones, under
`torch.inference_mode()` in eval mode; the median is reported.

Cases: the CPU in float32; a CUDA GPU, when one is present, in bf16 autocast (skipped, and said so, otherwise).

    python benchmarks/encode.py                         # writes benchmarks/results/encode.md
    python benchmarks/encode.py --quick                 # smoke run: small batches, one repeat, no file
    python benchmarks/encode.py --device cuda --dtype bf16
"""

import argparse
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
)

from configuration_viclip_ot import ViCLIPOTConfig
from modeling_viclip_ot import ViCLIPOTModel

RESULTS = Path(__file__).parent / "results" / "encode.md"
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
    args = parser.parse_args()
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
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
        print(f"wrote {output}")


if __name__ == "__main__":
    main()
