"""Cost of `retrieval_metrics` against one chunked pass over the captions x images score matrix.

`retrieval_metrics` reads every metric (both directions' ranks, recalls, mean and median ranks, alignment, modality
gap) off one pass over the score matrix, `chunk_size` captions at a time. Its floor is one such pass that only
scores: per chunk, the matrix product, each caption's correct-image score, and the count of images scoring at least
it (the text->image ranks alone). Both run in one process on random L2-normalised float32 embeddings, interleaved
(floor, metrics, floor, metrics, ...), after a warm-up of each; the table gives medians of CPU seconds (user +
system, less disturbed by other processes on a shared machine than wall seconds) and the ratio.

Peak extra memory is measured in a fresh process per configuration (Linux VmHWM, reset through
/proc/self/clear_refs once the embeddings exist; on CUDA `torch.cuda.max_memory_allocated` over the allocation
before), for the default chunk and for the whole matrix in one chunk, whose metrics must be identical.

    python benchmarks/eval_scoring.py                 # 6,000 images x 30,000 captions, 768-d, on the CPU
    python benchmarks/eval_scoring.py --device cuda   # on a GPU (wall seconds, synchronised)
    python benchmarks/eval_scoring.py --smoke         # tiny sizes, one repetition: checks that it runs
"""

import argparse
import json
from pathlib import Path

import torch
from _measure import (
    environment,
    gib,
    load_average,
    markdown_table,
    median,
    memory_kib,
    repeat_timing,
    reset_peak_rss,
    run_worker,
    spread,
    write_results,
)

from viclip_ot.retrieval import CHUNK_SIZE, retrieval_metrics


def gallery(args):
    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(args.images, args.dim, generator=generator), dim=1)
    captions = torch.nn.functional.normalize(torch.randn(args.captions, args.dim, generator=generator), dim=1)
    # Captions grouped by image, as `encode_corpus` lays them out; 5 captions an image by default.
    caption_image_index = torch.arange(args.captions) * args.images // args.captions
    return images.to(args.device), captions.to(args.device), caption_image_index.to(args.device)


def shuffled(captions, caption_image_index):
    """The same gallery with the captions in random order."""
    order = torch.randperm(len(captions), generator=torch.Generator().manual_seed(1)).to(captions.device)
    return captions[order], caption_image_index[order]


def scoring_pass(images, captions, caption_image_index, chunk_size=CHUNK_SIZE):
    """The floor: one chunked pass that scores and counts, per caption, the images at or above its correct one."""
    buffer = captions.new_empty(min(chunk_size, len(captions)), len(images))
    counts = []
    for start in range(0, len(captions), chunk_size):
        stop = min(start + chunk_size, len(captions))
        scores = torch.matmul(captions[start:stop], images.T, out=buffer[: stop - start])
        counts.append(scores.ge_(scores.gather(1, caption_image_index[start:stop, None])).sum(1))
    return torch.cat(counts)


def memory_worker(args):
    """Peak extra memory of `retrieval_metrics` with chunk size `args.chunk`; prints a JSON line."""
    images, captions, caption_image_index = gallery(args)
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = reset_peak_rss()
    metrics = retrieval_metrics(images, captions, caption_image_index, chunk_size=args.chunk)
    if cuda:
        extra = (torch.cuda.max_memory_allocated() - before) / 2**30
    else:
        extra = gib(memory_kib("VmHWM") - before)
    print(json.dumps({"peak_extra_gib": extra, "metrics": metrics}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6_000)
    parser.add_argument("--captions", type=int, default=30_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="600 images x 3,000 captions, 64-d, one repetition")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "eval_scoring.md")
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)  # memory worker
    args = parser.parse_args()
    if args.smoke:
        args.images, args.captions, args.dim, args.repeats = 600, 3_000, 64, 1
    if args.chunk:
        return memory_worker(args)

    cuda = torch.device(args.device).type == "cuda"
    load_before = load_average()
    images, captions, caption_image_index = gallery(args)
    shuffled_captions, shuffled_index = shuffled(captions, caption_image_index)
    functions = {
        "one scoring pass (the floor)": lambda: scoring_pass(images, captions, caption_image_index),
        "retrieval_metrics": lambda: retrieval_metrics(images, captions, caption_image_index),
        "retrieval_metrics, captions in random order": lambda: retrieval_metrics(
            images, shuffled_captions, shuffled_index
        ),
    }
    times = {name: [] for name in functions}
    cpu_times = {name: [] for name in functions}
    for function in functions.values():  # warm-up
        repeat_timing(function, warmup=1, repeats=0, device=args.device)
    for index in range(args.repeats):
        for name, function in functions.items():
            times[name] += repeat_timing(function, 0, 1, args.device, cpu_times=cpu_times[name])
            print(
                f"  {name}: run {index + 1}/{args.repeats} {times[name][-1]:.2f} s (CPU {cpu_times[name][-1]:.2f} s)",
                flush=True,
            )
    measure = times if cuda else cpu_times  # on a GPU the host's CPU time says nothing
    floor, full, full_shuffled = (median(measure[name]) for name in functions)

    memory = {}
    for label, chunk in (
        (f"chunk of {CHUNK_SIZE:,} captions (default)", CHUNK_SIZE),
        (f"whole matrix (chunk of {args.captions:,})", args.captions),
    ):
        worker_args = [
            "--chunk",
            chunk,
            "--images",
            args.images,
            "--captions",
            args.captions,
            "--dim",
            args.dim,
            "--device",
            args.device,
        ]
        memory[label] = run_worker(__file__, worker_args)
    same = len({json.dumps(result["metrics"], sort_keys=True) for result in memory.values()}) == 1
    metrics = next(iter(memory.values()))["metrics"]

    unit = "wall seconds (synchronised)" if cuda else "CPU seconds"
    rows = [
        [
            name,
            f"{median(measure[name]):.2f}",
            spread(measure[name]),
            f"{median(times[name]):.2f}",
            f"{median(measure[name]) / floor:.2f}x",
        ]
        for name in functions
    ]
    table = "\n".join(
        [
            (
                f"Scoring {args.captions:,} captions against {args.images:,} images ({args.dim}-d float32, random, "
                f"L2-normalised, {args.captions / args.images:g} captions an image, grouped by image unless said), "
                f"chunks of {CHUNK_SIZE:,} captions, on {args.device}. "
                f"{environment(args.device)}. Load average {load_before} before, {load_average()} after. "
                f"Medians of {args.repeats} interleaved runs. Generated by `benchmarks/eval_scoring.py`."
            ),
            "",
            markdown_table(
                ["computation", f"median {unit}", "range", "median wall seconds", "ratio to the floor"], rows
            ),
            "",
            (
                f"**retrieval_metrics costs {full / floor:.2f}x one scoring pass** (goal <= 1.15x: "
                f"{'met' if full / floor <= 1.15 else 'NOT met'}); with the captions in random order (one more copy of "
                f"the caption embeddings, to group them by image for the best-caption scores) "
                f"{full_shuffled / floor:.2f}x."
            ),
            "",
            markdown_table(
                ["retrieval_metrics", "peak extra memory (GiB)"],
                [[label, f"{result['peak_extra_gib']:.2f}"] for label, result in memory.items()],
            ),
            "",
            (
                f"Both chunkings return identical metric dicts: {'yes' if same else 'NO'} "
                f"(avg_R = {metrics['avg_R']:.4f}, i2t_mean_rank = {metrics['i2t_mean_rank']:.2f}, "
                f"t2i_mean_rank = {metrics['t2i_mean_rank']:.2f})."
            ),
        ]
    )
    print("\n" + table)
    if not args.smoke or args.output != parser.get_default("output"):
        write_results(args.output, table + "\n")


if __name__ == "__main__":
    main()
