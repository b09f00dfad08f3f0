"""Sinkhorn iterations to convergence (POT's criterion, tol 1e-6, checked every 10) of `unbalanced_sinkhorn` on
cosine costs of one training batch, for a grid of `ot_reg` (eps) and `ot_reg_m` (tau): which settings the default
`ot_max_iter=200` serves.

    python benchmarks/sinkhorn_iterations.py [--captions 320] [--output benchmarks/results/ablation-sinkhorn.md]

Two batches of N caption rows (5 per image): untrained (random unit vectors, all cosines near 0) and trained-like
(each caption at cosine about 0.8 to its image, 0.1 to the others).
"""

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from _measure import write_results

from viclip_ot.losses import unbalanced_sinkhorn

REGS, REG_MS = (0.01, 0.02, 0.05, 0.1), (0.1, 0.5, 1.0, math.inf)


def costs(captions, dim=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(captions // 5, dim, generator=generator), dim=-1)
    index = torch.arange(captions // 5).repeat_interleave(5)
    random_texts = F.normalize(torch.randn(captions, dim, generator=generator), dim=-1)
    shared = F.normalize(torch.randn(dim, generator=generator), dim=0)
    trained_images = F.normalize(images + 0.35 * shared, dim=-1)
    trained_texts = F.normalize(trained_images[index] + 0.5 * random_texts, dim=-1)
    return {
        "untrained": 1 - images[index] @ random_texts.T,
        "trained-like": 1 - trained_images[index] @ trained_texts.T,
    }


def iterations_to_converge(cost, reg, reg_m, limit=5000):
    """The smallest multiple of 10 iterations after which the criterion holds (None beyond `limit`)."""
    if not unbalanced_sinkhorn(cost, reg, reg_m, max_iter=limit, return_converged=True)[1]:
        return None
    low, high = 0, limit // 10  # in checks
    while high - low > 1:
        middle = (low + high) // 2
        converged = unbalanced_sinkhorn(cost, reg, reg_m, max_iter=10 * middle, return_converged=True)[1]
        low, high = (low, middle) if converged else (middle, high)
    return 10 * high


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=320, help="caption rows of the batch (demo: 64 images x 5)")
    parser.add_argument("--output", default=Path(__file__).parent / "results" / "ablation-sinkhorn.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = [
        (
            f"Iterations to convergence, N = {args.captions} caption rows (> 5000: not within 5000; the default "
            "`ot_max_iter` is 200)."
        ),
        "",
        "| batch | eps \\ tau | " + " | ".join(f"{reg_m:g}" for reg_m in REG_MS) + " |",
        "|---|---|" + "---:|" * len(REG_MS),
    ]
    for name, cost in costs(args.captions).items():
        for reg in REGS:
            cells = [iterations_to_converge(cost, reg, reg_m) for reg_m in REG_MS]
            lines.append(
                f"| {name} | {reg:g} | "
                + " | ".join("> 5000" if c is None else (f"**{c}**" if c > 200 else str(c)) for c in cells)
                + " |"
            )
    table = "\n".join(lines) + "\n"
    write_results(args.output, table)
    print(table)


if __name__ == "__main__":
    main()
