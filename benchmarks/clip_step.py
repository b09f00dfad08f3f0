"""The plain CLIP training step before and after it stopped solving a transport problem for its diagnostics.

Before: `ContrastiveOTLoss("clip")` also ran the unbalanced Sinkhorn solver (no gradient, the paper's options: up to
200 iterations, a convergence check every 10) only to report the plan's row mass, and turned every diagnostic into a
Python float (a host synchronisation each) every step. After: the loss of this branch (cosine diagnostics kept as
tensors, read once per logging interval). `before_loss` re-creates the old work from the same functions.

Timed, interleaved (before, after, before, ...), the median of `--repeats` each:
- the loss alone, forward and backward to the embeddings and the logit scale, at 16 and 128 images (5 captions each,
  768-d random L2-normalised embeddings);
- a whole step (forward of both towers, loss, backward, AdamW) at 16 images with 2-block towers of the paper's widths
  (random weights; the full towers would only dilute the difference on a CPU).

    python benchmarks/clip_step.py            # writes benchmarks/results/clip_step.md
    python benchmarks/clip_step.py --quick    # one repeat, no file
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from _measure import environment, load_average, markdown_table, median, repeat_timing, write_results
from train_step import make_batch

from configuration_viclip_ot import VIETNAMESE_SBERT_CONFIG, ViCLIPOTConfig
from modeling_viclip_ot import ViCLIPOTModel
from viclip_ot.losses import ContrastiveOTLoss, LossSettings, plan_diagnostics, transport_plan

RESULTS = Path(__file__).parent / "results" / "clip_step.md"


def before_loss(loss_fn, *batch, scale):
    """The old `clip` step's loss work: the loss, a plan solved for the diagnostics, every diagnostic a float."""
    output = loss_fn(*batch, scale)
    with torch.no_grad():
        plan, converged = transport_plan(*batch, **loss_fn.ot_options, return_converged=True)
    diagnostics = {name: float(value) for name, value in plan_diagnostics(*batch, plan).items()}
    diagnostics["sinkhorn_unconverged"] = float(not converged)
    return output.loss


def after_loss(loss_fn, *batch, scale):
    return loss_fn(*batch, scale).loss


def loss_timings(loss_fn, images, args):
    generator = torch.Generator().manual_seed(images)
    index = torch.arange(images).repeat_interleave(5)
    image_embeds = F.normalize(torch.randn(images, 768, generator=generator), dim=-1).requires_grad_()
    text_embeds = F.normalize(torch.randn(len(index), 768, generator=generator), dim=-1).requires_grad_()
    logit_scale = torch.tensor(2.6593, requires_grad=True)

    def step(loss):
        return lambda: loss(loss_fn, image_embeds, text_embeds, index, scale=logit_scale.exp()).backward()

    return interleaved(step(before_loss), step(after_loss), args)


def step_timings(loss_fn, args):
    torch.manual_seed(0)
    config = ViCLIPOTConfig(
        vision_model_kwargs={"depth": 2}, text_config={**VIETNAMESE_SBERT_CONFIG, "num_hidden_layers": 2}
    )
    model = ViCLIPOTModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = make_batch(16, 5, "cpu")

    def step(loss):
        def run():
            outputs = model(
                pixel_values=batch["pixel_values"],
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                return_logits=False,
            )
            loss(
                loss_fn, outputs.image_embeds, outputs.text_embeds, batch["caption_image_index"], scale=outputs.scale
            ).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    return interleaved(step(before_loss), step(after_loss), args)


def interleaved(before, after, args):
    """Median seconds of `before` and `after`, timed alternately after one warm-up call each."""
    times = {"before": [], "after": []}
    for function in (before, after):
        function()
    for _ in range(args.repeats):
        for name, function in (("before", before), ("after", after)):
            times[name] += repeat_timing(function, warmup=0, repeats=1)
    return median(times["before"]), median(times["after"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one repeat, no file")
    parser.add_argument("--output", type=Path, help=f"Markdown file (default {RESULTS}; none with --quick)")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    output = args.output or (None if args.quick else RESULTS)
    load_before = load_average()
    loss_fn = ContrastiveOTLoss(LossSettings("clip"))
    rows = []
    for label, (before, after) in (
        ("loss fwd+bwd, 16 images x 5 captions", loss_timings(loss_fn, 16, args)),
        ("loss fwd+bwd, 128 images x 5 captions", loss_timings(loss_fn, 128, args)),
        ("whole step, 16 images x 5 captions, 2-block towers", step_timings(loss_fn, args)),
    ):
        rows.append([label, f"{before * 1e3:.1f}", f"{after * 1e3:.1f}", f"{before / after:.2f}x"])
        print(markdown_table(["case", "before ms", "after ms", "speed-up"], rows[-1:]).splitlines()[-1], flush=True)
    text = "\n".join(
        [
            "# The CLIP training step without the diagnostic transport solve",
            "",
            f"{environment()}; load average (1/5/15 min) {load_before} at the start, {load_average()} at the end.",
            "",
            f"Median of {args.repeats} interleaved timings each (`benchmarks/clip_step.py`).",
            "",
            markdown_table(["case", "before ms", "after ms", "speed-up"], rows),
        ]
    )
    print("\n" + text)
    if output:
        write_results(output, text + "\n")


if __name__ == "__main__":
    main()
