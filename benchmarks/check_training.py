"""Check a short `train.py` run: were all logged losses finite, and which attention and precision did it use?

    python benchmarks/check_training.py LOG MODEL_FOLDER [--output train_small.md] [--settings TEXT]

LOG is train.py's output (the Trainer prints one dict per logging step); MODEL_FOLDER its `final` model. Exits 1
when a logged loss is not finite or none was logged.
"""

import argparse
import ast
import math
import re
import sys
from pathlib import Path

import torch
from _measure import environment, write_results

from viclip_ot.loading import load_model


def logged_losses(log_text):
    """(step index, loss) of every Trainer log dict with a `loss`."""
    losses = []
    for line in log_text.splitlines():
        match = re.search(r"\{'loss'.*\}", line)
        if match:
            losses.append(float(ast.literal_eval(match.group(0))["loss"]))
    return losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--settings", default="", help="how the run was made, for the report")
    args = parser.parse_args()
    losses = logged_losses(args.log.read_text())
    model = load_model(args.model)
    vision_attention = {
        type(block.attn).__name__: getattr(block.attn, "fused_attn", None) for block in model.vision_model.blocks
    }
    finite = bool(losses) and all(math.isfinite(loss) for loss in losses)
    lines = [
        f"train.py with --small_towers ({environment('cuda' if torch.cuda.is_available() else 'cpu')}):",
        "",
        f"- {len(losses)} logged losses, first {losses[0]:.4f}, last {losses[-1]:.4f}, all finite: "
        f"{'yes' if finite else 'NO'}"
        if losses
        else "- no loss was logged",
        f"- text tower attention: `{model.text_model.config._attn_implementation}`; image tower blocks: "
        + ", ".join(f"{name} (fused scaled_dot_product_attention: {on})" for name, on in vision_attention.items()),
        f"- run with: {args.settings}",
    ]
    text = "\n".join(lines)
    print(text)
    if args.output:
        write_results(args.output, text + "\n")
    sys.exit(0 if finite else 1)


if __name__ == "__main__":
    main()
