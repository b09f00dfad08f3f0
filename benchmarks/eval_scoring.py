"""Time and memory of `retrieval_metrics`: chunked scoring against the full similarity matrix.

Each configuration runs in its own subprocess on random L2-normalised float32 embeddings.
Memory is the process's peak resident set size (Linux VmHWM, which counts torch's
allocations, unlike tracemalloc): the peak is reset through /proc/self/clear_refs once the
embeddings exist, so "peak extra" is the memory scoring needed on top of its inputs.

    python benchmarks/eval_scoring.py            # 100,000 captions x 20,000 images, 768-d
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from viclip_ot.metrics import retrieval_metrics

RESULTS = Path(__file__).parent / "results" / "eval_scoring.md"
# name -> (image_chunk_size, text_chunk_size); None means the whole gallery in one chunk.
CONFIGS = {
    "chunked (defaults)": (256, 1024),
    "chunked (4x larger chunks)": (1024, 4096),
    "full matrix (one chunk per direction)": (None, None),
}


def _memory_kib(field):
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


def worker(args):
    """Scores one configuration; prints a JSON line."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, args.dim, generator=generator)
    captions = torch.randn(args.captions, args.dim, generator=generator)
    for embeds in (images, captions):
        embeds.div_(torch.linalg.vector_norm(embeds, dim=1, keepdim=True))
    caption_image_index = torch.arange(args.captions) % args.images
    image_chunk, text_chunk = CONFIGS[args.worker]

    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident set size
    rss_before = _memory_kib("VmRSS")
    start, cpu_start = time.perf_counter(), time.process_time()
    metrics = retrieval_metrics(
        images,
        captions,
        caption_image_index,
        image_chunk_size=image_chunk or args.images,
        text_chunk_size=text_chunk or args.captions,
    )
    result = {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "peak_extra_gib": (_memory_kib("VmHWM") - rss_before) / 2**20,
        "metrics": metrics,
    }
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    rows, results, load_before = [], {}, os.getloadavg()[0]
    for name, (image_chunk, text_chunk) in CONFIGS.items():
        command = [sys.executable, __file__, "--worker", name]
        command += ["--captions", str(args.captions), "--images", str(args.images), "--dim", str(args.dim)]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        results[name] = result
        chunks = f"{image_chunk or args.images:,} / {text_chunk or args.captions:,}"
        rows.append(
            f"| {name} | {chunks} | {result['seconds']:.1f} | {result['cpu_seconds']:.1f} "
            f"| {result['peak_extra_gib']:.2f} |"
        )
        print(rows[-1], flush=True)

    full = results["full matrix (one chunk per direction)"]["metrics"]
    same = all(result["metrics"] == full for result in results.values())
    table = "\n".join(
        [
            f"Scoring {args.captions:,} captions against {args.images:,} images "
            f"({args.dim}-d float32, random, L2-normalised) on {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}.",
            "",
            f"One-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after "
            "the runs: with a load above the core count, wall-clock seconds include waiting "
            "for a core; CPU seconds (summed over threads) do not.",
            "",
            "| method | chunk size: images (i2t) / captions (t2i) | wall seconds | CPU seconds "
            "| peak extra memory (GiB) |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"All configurations return identical metric dicts: {'yes' if same else 'NO'}. "
            f"avg_R = {full['avg_R']:.4f}, i2t_mean_rank = {full['i2t_mean_rank']:.2f}, "
            f"t2i_mean_rank = {full['t2i_mean_rank']:.2f}.",
        ]
    )
    print("\n" + table)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(table + "\n")


if __name__ == "__main__":
    main()
