"""SIGROT cost: plan + loss + backward with our solver and with POT's torch backend, side by side.

    python benchmarks/sigrot.py [--sizes 128 640 2048] [--device cpu|cuda] [--repeats 5] [--threads 2 1] [--output F]

For each N caption rows (5 captions per image, random L2-normalised 768-d student and teacher embeddings, the paper's
settings reg 0.05, reg_m 0.5, tol 1e-6, at most 200 iterations, float32) it runs SIGROT as training does (the plan
T = N P* of the cosine cost, `sigrot_divergence`) + backward with P* from `unbalanced_sinkhorn` and from
`ot.unbalanced.sinkhorn_unbalanced(..., reg_type="kl")`, and prints a
Markdown table (also written to benchmarks/results/sigrot.md or `--output`). On a GPU the two differ in how often
they wait for it: ours tests convergence (a host synchronisation) every 10 iterations, POT every iteration.

Time: the best of `--repeats` runs after a warm-up (timeit's convention: the least disturbed run), the two solvers
alternating so that both see the same machine load. Peak memory: one more run each, the most memory its tensors held
at once above what existed before it (CPU: the profiler's memory timeline; CUDA: `max_memory_allocated`).
"""

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import ot
import torch
import torch.nn.functional as F
from _measure import write_results
from torch.profiler import ProfilerActivity, profile

from modeling_viclip_ot import caption_row_logits
from viclip_ot.losses import ContrastiveOTLoss, sigrot_divergence, similarity_graph, unbalanced_sinkhorn

SETTINGS = ContrastiveOTLoss().ot_options  # the paper's
CAPTIONS_PER_IMAGE, DIM, SCALE = 5, 768, 1 / 0.07
RESULTS = Path(__file__).parent / "results" / "sigrot.md"


def pot_sinkhorn(cost, reg, reg_m, max_iter, tol, **_):
    """POT's plan on the same torch tensors; autograd differentiates through its iterations."""
    return ot.unbalanced.sinkhorn_unbalanced(
        torch.tensor([]), torch.tensor([]), cost, reg, reg_m, reg_type="kl", numItermax=max_iter, stopThr=tol
    )


SOLVERS = {"ours": unbalanced_sinkhorn, "pot": pot_sinkhorn}


def make_batch(num_captions, device):
    """(image, text, caption_image_index, graph, scale); embeddings and scale are leaves."""
    generator = torch.Generator().manual_seed(num_captions)
    num_images = -(-num_captions // CAPTIONS_PER_IMAGE)

    def embeddings(rows):
        return F.normalize(torch.randn(rows, DIM, generator=generator), dim=-1).to(device)

    index = (torch.arange(num_captions) // CAPTIONS_PER_IMAGE).to(device)
    image, text = embeddings(num_images).requires_grad_(), embeddings(num_captions).requires_grad_()
    graph = similarity_graph(embeddings(num_images), embeddings(num_captions), index)
    scale = torch.tensor(SCALE, device=device, requires_grad=True)
    return image, text, index, graph, scale


def timed_step(name, batch):
    """Seconds of one plan (with solver `name`) + SIGROT + backward."""
    for leaf in (batch[0], batch[1], batch[4]):
        leaf.grad = None
    sync = torch.cuda.synchronize if batch[0].is_cuda else lambda: None
    sync()
    start = time.perf_counter()
    image, text, index, graph, scale = batch
    cost = 1 - caption_row_logits(image, text, index, 1.0)
    plan = len(cost) * SOLVERS[name](cost, **SETTINGS)
    sigrot_divergence(plan, graph, scale).backward()
    sync()
    return time.perf_counter() - start


def peak_memory_mb(name, batch):
    """Peak memory of one step above what existed before it: on CUDA `max_memory_allocated`, on CPU the largest sum
    of live tensor bytes in the profiler's memory timeline (`export_memory_timeline`: times, then bytes per
    category at each time)."""
    if batch[0].is_cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        timed_step(name, batch)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    options = {"profile_memory": True, "record_shapes": True, "with_stack": True}  # what the timeline needs
    with profile(activities=[ProfilerActivity.CPU], **options) as run:
        timed_step(name, batch)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated for CUDA's memory snapshots, which have no CPU
        run.export_memory_timeline(f"{folder}/timeline.json", device="cpu")
        _, sizes = json.loads(Path(folder, "timeline.json").read_text())
    return max(map(sum, sizes), default=0) / 2**20


def plan_difference(num_captions, device):
    """max |P_ours - P_POT| on the batch's cost."""
    image, text, index, _, _ = make_batch(num_captions, device)
    with torch.no_grad():
        cost = 1 - image[index] @ text.T
        return (SOLVERS["ours"](cost, **SETTINGS) - SOLVERS["pot"](cost, **SETTINGS)).abs().max().item()


def table_row(num_captions, device, repeats):
    batch = make_batch(num_captions, device)
    times = {name: [] for name in SOLVERS}
    for repeat in range(repeats + 1):
        for name in SOLVERS:
            seconds = timed_step(name, batch)
            if repeat:  # the first round is the warm-up
                times[name].append(seconds)
    ms = {name: 1000 * min(values) for name, values in times.items()}
    memory = {name: peak_memory_mb(name, batch) for name in SOLVERS}
    return (
        f"| {num_captions} | {ms['ours']:.0f} ms / {memory['ours']:.0f} MB | {ms['pot']:.0f} ms / "
        f"{memory['pot']:.0f} MB | {ms['pot'] / ms['ours']:.1f}x | {plan_difference(num_captions, device):.1e} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 640, 2048])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[torch.get_num_threads()],
        help="CPU thread counts, one table each (default: torch's)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    tables = []
    for threads in args.threads if args.device == "cpu" else [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        device = (
            torch.cuda.get_device_name()
            if args.device == "cuda"
            else f"CPU ({platform.machine()}, {threads} thread{'s' if threads > 1 else ''})"
        )
        lines = [
            (
                f"SIGROT plan + loss + backward on {device}, float32, reg 0.05, reg_m 0.5, tol 1e-6, at most 200 "
                f"iterations; torch {torch.__version__}, POT {ot.__version__}; best of {args.repeats} runs."
            ),
            "",
            (
                "| N captions | ours: time / peak memory | POT torch backend: time / peak memory | speed-up "
                "| max abs plan difference |"
            ),
            "|---|---|---|---|---|",
        ]
        print("\n".join(lines), flush=True)
        for num_captions in args.sizes:
            lines.append(table_row(num_captions, args.device, args.repeats))
            print(lines[-1], flush=True)
        tables.append("\n".join(lines))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_results(args.output, "\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
