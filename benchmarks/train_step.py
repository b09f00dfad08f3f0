"""Training-step cost of ViCLIP-OT with the paper's towers (random weights): time, memory and the loss's share.

Every step of this project is `ViCLIPOTTrainer.training_step` (transformers' step: `compute_loss`, gradient caching
when the batch is larger than `gradcache_chunk_size`, `accelerator.backward`), then the trainer's optimizer
(`create_optimizer`: fused AdamW, backbones at 5e-5, heads at 2e-4), `zero_grad(set_to_none=True)` and the
logit-scale clamp. Loss: `ContrastiveOTLoss("clip_sigrot")` with the paper's options (lambda 0.1, eps 0.05, tau 0.5,
<= 200 Sinkhorn iterations, tol 1e-6); teacher rows random L2-normalised 2048-d (Qwen3-VL-Embedding-2B's width);
captions random PhoBERT token ids, 15-30 tokens, padded to the longest of the batch.

(a) Each image encoded once (this project: B images through the image tower, the loss expands them to caption rows
    through `caption_image_index`) against once per caption (the authors' code: the pixel rows repeated per caption,
    5x the image-tower work). The authors' loss (`per_row_loss`) takes the per-row image embeddings as rows of the
    CLIP logits and the SIGROT cost, with the positives and the teacher graph of the true images: it costs the same
    as ours and equals it when the rows are the expanded image embeddings (`check_per_row_loss`, at start-up). The
    two layouts run interleaved after a 2-image warm-up step and the memory step of (b). Each tower is also timed
    alone (forward + backward, CPU time): if the towers' time grew in proportion to their batch, the authors' layout
    would cost (5 x image + text) / (image + text) of the towers' time; a CPU adds the larger batch's memory traffic
    (compare the system time and page faults).
(b) Peak memory of a 128-image step (5 captions each) with gradient caching in chunks of 16 images against a plain
    16-image step, each once, in fresh processes, after the warm-up step allocated the AdamW state; the gradients
    are freed before each step, so both allocate them. On the CPU memory is the process's resident set size: the peak
    (VmHWM, reset through /proc/self/clear_refs just before the step) and the "extra" over the size just before it
    (activations, gradients, optimizer temporaries, memory the allocator kept); on CUDA
    `torch.cuda.max_memory_allocated` likewise. The peak of the authors' layout in (a) is the highest over its runs,
    which reuse the memory this project's steps freed in the same process.
(c) The loss's share of that 128-image step: the step's phases (timestamps from hooks on the model and the loss),
    and CLIP + SIGROT forward + backward timed again (1 warm-up, median) on the very arguments the step fed its loss,
    backward to the embeddings and the scale. On a GPU the towers run far faster while the Sinkhorn loop stays a
    chain of small kernels, so this share must be measured there too.

Every step also records the process's user and system CPU time and minor page faults: on a shared machine CPU time
is less disturbed by other processes than wall-clock time. The workers `small` ((a), the plain step) and `large` (the
cached step, (c)) run in fresh processes; their raw results go to a .json beside the Markdown; `--only small|large`
measures one part again and keeps the other, `--report-only` rewrites the Markdown from the .json.

    python benchmarks/train_step.py                 # CPU fp32, writes benchmarks/results/train_step.{md,json}
    python benchmarks/train_step.py --quick         # smoke run: 2-block towers, tiny batches, no file
    python benchmarks/train_step.py --only small    # (a) and the plain step again
    python benchmarks/train_step.py --device cuda --dtype bf16 --output gpu.md   # bf16 autocast on a GPU
"""

import argparse
import functools
import gc
import json
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _measure import (
    cpu_usage,
    environment,
    gib,
    load_average,
    markdown_table,
    median,
    memory_kib,
    random_captions,
    repeat_timing,
    reset_peak_rss,
    run_worker,
    spread,
    synchronize,
    time_call,
    write_results,
)

from configuration_viclip_ot import VIETNAMESE_SBERT_CONFIG, ViCLIPOTConfig
from modeling_viclip_ot import ViCLIPOTModel, same_image_mask
from viclip_ot.arguments import ViCLIPOTTrainingArguments
from viclip_ot.losses import ContrastiveOTLoss, LossSettings, sigrot_divergence, similarity_graph, transport_plan
from viclip_ot.trainer import ViCLIPOTTrainer

RESULTS = Path(__file__).parent / "results" / "train_step.md"
TEACHER_DIM = 2048


# ---- trainer, batch, the authors' loss -------------------------------------------------------------------------


def build_trainer(args, output_dir):
    """A `ViCLIPOTTrainer` of the paper-size model (2-block towers with `--quick`) in the mixed precision of
    `--dtype`, gradient caching in chunks of `--chunk-size`."""
    torch.manual_seed(0)
    config = (
        ViCLIPOTConfig(
            vision_model_kwargs={"depth": 2}, text_config={**VIETNAMESE_SBERT_CONFIG, "num_hidden_layers": 2}
        )
        if args.quick
        else ViCLIPOTConfig()
    )
    training_args = ViCLIPOTTrainingArguments(
        output_dir=output_dir,
        use_cpu=args.device == "cpu",
        bf16=args.dtype == "bf16",
        fp16=args.dtype == "fp16",
        learning_rate=5e-5,
        head_learning_rate=2e-4,
        weight_decay=1e-4,
        adam_epsilon=1e-10,
        gradcache_chunk_size=args.chunk_size,
        report_to="none",
    )
    trainer = ViCLIPOTTrainer(
        model=ViCLIPOTModel(config), args=training_args, loss_fn=ContrastiveOTLoss(LossSettings("clip_sigrot"))
    )
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop of `train()`
    return trainer


def make_batch(images, captions_per_image, device, seed=0):
    """`images` random 224x224 images with `captions_per_image` captions each (grouped by image), and their
    random L2-normalised teacher rows."""
    generator = torch.Generator().manual_seed(seed)
    count = images * captions_per_image
    input_ids, attention_mask = random_captions(count, generator)
    batch = {
        "pixel_values": torch.randn(images, 3, 224, 224, generator=generator),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "caption_image_index": torch.arange(images).repeat_interleave(captions_per_image),
        "teacher_image_embeds": F.normalize(torch.randn(images, TEACHER_DIM, generator=generator), dim=-1),
        "teacher_text_embeds": F.normalize(torch.randn(count, TEACHER_DIM, generator=generator), dim=-1),
    }
    return {name: value.to(device) for name, value in batch.items()}


def per_row_loss(loss_fn, row_image_embeds, text_embeds, batch, scale):
    """`loss_fn`'s loss when the image tower produced one embedding per caption row (the authors' layout).

    Rows stay rows: the CLIP logits are s * x_i . y_j over the row embeddings and the SIGROT cost 1 - x_i . y_j
    likewise (`transport_plan` with the identity row index), while the positives of the CLIP targets and the teacher
    graph come from the true image of each row."""
    index = batch["caption_image_index"]
    rows = torch.arange(index.shape[0], device=index.device)
    scale = scale.float()
    row_image_embeds, text_embeds = row_image_embeds.float(), text_embeds.float()
    logits = scale * row_image_embeds @ text_embeds.T
    positives = same_image_mask(index).float()
    targets = positives / positives.sum(dim=1, keepdim=True)
    contrastive = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    settings = loss_fn.settings
    graph = similarity_graph(
        batch["teacher_image_embeds"], batch["teacher_text_embeds"], index, settings.graph_strategy
    )
    plan = transport_plan(row_image_embeds, text_embeds, rows, **loss_fn.ot_options)
    return sigrot_divergence(plan, graph, scale) + settings.contrastive_weight * contrastive


def check_per_row_loss(loss_fn):
    """The authors' loss equals `loss_fn` when the row embeddings are the expanded image embeddings."""
    generator = torch.Generator().manual_seed(1)
    batch = make_batch(3, 2, "cpu")
    images = F.normalize(torch.randn(3, 768, generator=generator), dim=-1)
    texts = F.normalize(images.repeat_interleave(2, 0) + torch.randn(6, 768, generator=generator), dim=-1)
    scale, index = torch.tensor(2.0).exp(), batch["caption_image_index"]
    teacher = {name: batch[name] for name in ("teacher_image_embeds", "teacher_text_embeds")}
    ours = loss_fn(images, texts, index, scale, **teacher).loss
    torch.testing.assert_close(per_row_loss(loss_fn, images[index], texts, batch, scale), ours, rtol=1e-5, atol=1e-6)


# ---- steps -----------------------------------------------------------------------------------------------------


class Step:
    """Optimizer steps of `trainer`'s model; `phases` holds the seconds of the last one's parts, from timestamps
    that hooks on the model and the loss take, and `loss_arguments` what the last loss call was given (detached)."""

    def __init__(self, trainer, device, chunk_size):
        self.trainer, self.device, self.chunk_size = trainer, device, chunk_size
        self.model = trainer.accelerator.prepare_model(trainer.model).train()  # mixed precision as in `train()`
        self.optimizer = trainer.accelerator.prepare_optimizer(trainer.create_optimizer())
        self.marks, self.phases, self.loss_arguments = {}, {}, None
        self.model.register_forward_pre_hook(self._forward_begins)
        trainer.loss_fn.register_forward_pre_hook(self._loss_begins, with_kwargs=True)
        trainer.loss_fn.register_forward_hook(lambda *_: self.mark("loss end"))

    def mark(self, name):
        synchronize(self.device)
        self.marks[name] = time.perf_counter()

    def _forward_begins(self, module, inputs):
        if "loss end" in self.marks and "replay" not in self.marks:  # a cached step's first re-encoding
            self.mark("replay")

    def _loss_begins(self, module, args, kwargs):
        self.mark("loss")
        self.loss_arguments = tuple(a.detach() if torch.is_tensor(a) else a for a in args), kwargs

    def _run(self, step_function, phases):
        self.marks = {}
        self.mark("start")
        step_function()
        self.mark("backward end")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.trainer.model.clamp_logit_scale()  # the trainer's `LogitScaleClamp`
        self.mark("end")
        self.phases = {name: self.marks[end] - self.marks[begin] for name, (begin, end) in phases.items()}
        self.phases["optimizer"] = self.marks["end"] - self.marks["backward end"]

    def plain(self, batch):
        """This project's step without gradient caching: each image once, the whole batch at once."""
        self.trainer.args.gradcache_chunk_size = None
        phases = {"forward": ("start", "loss"), "loss": ("loss", "loss end"), "backward": ("loss end", "backward end")}
        self._run(functools.partial(self.trainer.training_step, self.model, batch), phases)

    def cached(self, batch):
        """This project's step with gradient caching in chunks of `--chunk-size` images."""
        self.trainer.args.gradcache_chunk_size = self.chunk_size
        phases = {
            "encode without gradient": ("start", "loss"),
            "loss forward+backward": ("loss", "replay"),
            "re-encode forward+backward": ("replay", "backward end"),
        }
        self._run(functools.partial(self.trainer.training_step, self.model, batch), phases)

    def per_caption(self, batch):
        """The authors' layout: the image rows repeated per caption, every row through the image tower."""

        def step():
            outputs = self.model(
                pixel_values=batch["pixel_values"].index_select(0, batch["caption_image_index"]),
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                return_logits=False,
            )
            self.mark("loss")
            loss = per_row_loss(self.trainer.loss_fn, outputs.image_embeds, outputs.text_embeds, batch, outputs.scale)
            self.mark("per-row loss end")
            self.trainer.accelerator.backward(loss)

        phases = {
            "forward": ("start", "loss"),
            "loss": ("loss", "per-row loss end"),
            "backward": ("per-row loss end", "backward end"),
        }
        self._run(step, phases)


def measured(step, step_function, args):
    """Run one step: its seconds, peak memory (GiB) during it, extra memory over the memory just before it, the
    process's user and system CPU seconds and minor page faults during it, and the step's phases."""
    gc.collect()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**30
    else:
        before = gib(reset_peak_rss())
    usage = cpu_usage()
    start = time.perf_counter()
    step_function()
    synchronize(args.device)
    seconds = time.perf_counter() - start
    user, system, faults = (after - before_ for after, before_ in zip(cpu_usage(), usage))
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else gib(memory_kib("VmHWM"))
    return {
        "seconds": seconds,
        "peak_gib": peak,
        "extra_gib": peak - before,
        "user_s": user,
        "system_s": system,
        "minor_faults": faults,
        "phases": dict(step.phases),
    }


def describe(run):
    return (
        f"{run['seconds']:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in run['phases'].items())}), "
        f"peak {run['peak_gib']:.2f} GiB, extra {run['extra_gib']:.2f} GiB, CPU user {run['user_s']:.1f} s, "
        f"system {run['system_s']:.1f} s, {run['minor_faults'] / 1e6:.2f} M minor faults"
    )


def new_step(args, output_dir):
    """A `Step` on a fresh trainer, after a 2-image plain step that allocates the AdamW state and warms the kernels."""
    step = Step(build_trainer(args, output_dir), args.device, args.chunk_size)
    print(f"[{args.worker}] warm-up step (2 images), load average {load_average()}", flush=True)
    step.plain(make_batch(2, args.captions_per_image, args.device, seed=99))
    return step


# ---- workers -----------------------------------------------------------------------------------------------------


def worker_small(args, output_dir):
    step = new_step(args, output_dir)
    batch = make_batch(args.images, args.captions_per_image, args.device)
    result = {"captions": int(batch["input_ids"].shape[0]), "padded_length": int(batch["input_ids"].shape[1])}

    print(f"[small] memory: plain {args.images}-image step, load average {load_average()}", flush=True)
    result["memory_step"] = measured(step, lambda: step.plain(batch), args)
    print(f"[small]   {describe(result['memory_step'])}", flush=True)

    runs = {"design": [], "per_caption": []}
    for index in range(max(args.repeats, args.baseline_repeats)):  # interleaved, so that load changes hit both
        for name, function, count in (
            ("design", step.plain, args.repeats),
            ("per_caption", step.per_caption, args.baseline_repeats),
        ):
            if index >= count:
                continue
            runs[name].append(measured(step, functools.partial(function, batch), args))
            print(
                f"[small] {name} run {index + 1}/{count}: {describe(runs[name][-1])}, load average {load_average()}",
                flush=True,
            )
    result["runs"] = runs

    # Where this project's step goes: each tower alone, forward + backward (sum of its embeddings).
    model = step.trainer.model

    def tower(kind):
        with step.trainer.accelerator.autocast():
            if kind == "image":
                embeds = model.get_image_features(batch["pixel_values"]).pooler_output
            else:
                embeds = model.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output
        embeds.float().sum().backward()
        model.zero_grad(set_to_none=True)

    result["towers_cpu"] = {"image": [], "text": []}
    for index in range(args.repeats):
        for kind in ("image", "text"):
            usage = cpu_usage()
            seconds, _ = time_call(functools.partial(tower, kind), args.device)
            cpu_seconds = sum(cpu_usage()[:2]) - sum(usage[:2])
            result["towers_cpu"][kind].append(cpu_seconds)
            print(
                f"[small] {kind} tower alone, forward + backward, run {index + 1}/{args.repeats}: {seconds:.1f} s "
                f"(CPU {cpu_seconds:.1f} s)",
                flush=True,
            )
    return result


def worker_large(args, output_dir):
    step = new_step(args, output_dir)
    loss_fn = step.trainer.loss_fn
    batch = make_batch(args.large_images, args.captions_per_image, args.device, seed=1)
    chunks = math.ceil(args.large_images / args.chunk_size)
    print(
        f"[large] {args.large_images}-image step, {chunks} chunks of {args.chunk_size}, load average {load_average()}",
        flush=True,
    )
    result = {
        "captions": int(batch["input_ids"].shape[0]),
        "chunks": chunks,
        "step": measured(step, functools.partial(step.cached, batch), args),
    }
    print(f"[large]   {describe(result['step'])}", flush=True)
    loss_args, loss_kwargs = step.loss_arguments
    del step
    gc.collect()

    # (c) the loss alone, on the arguments the step gave it, forward + backward to the embeddings and the scale.
    inputs = [a.clone().requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a for a in loss_args]
    leaves = [a for a in inputs if torch.is_tensor(a) and a.requires_grad]
    image_embeds, text_embeds, index, scale = inputs[:4]

    def full_loss(options=None):
        loss = ContrastiveOTLoss(LossSettings("clip_sigrot", **(options or {})))
        torch.autograd.backward(loss(*inputs, **loss_kwargs).loss, inputs=leaves)

    def sigrot_only():
        teacher = loss_kwargs["teacher_image_embeds"], loss_kwargs["teacher_text_embeds"]
        graph = similarity_graph(*teacher, index, loss_fn.settings.graph_strategy)
        plan = transport_plan(image_embeds, text_embeds, index, **loss_fn.ot_options)
        torch.autograd.backward(sigrot_divergence(plan, graph, scale), inputs=leaves)

    cases = {
        "loss": full_loss,
        "sigrot": sigrot_only,
        "loss_200_iterations": lambda: full_loss({"ot_tol": 0.0}),  # tol 0 never stops early: 200 iterations
    }
    result["loss"] = {
        name: repeat_timing(function, 1, args.loss_repeats, args.device, label=f"[large] {name}")
        for name, function in cases.items()
    }
    return result


# ---- tables ----------------------------------------------------------------------------------------------------


def part_line(meta):
    minutes = "" if meta.get("minutes") is None else f", {meta['minutes']:.1f} min"
    return f"{meta['environment']}{minutes}, load average {meta['load_before']} before, {meta['load_after']} after"


def report(args, raw):
    """The Markdown: one line on the runs, then the tables."""
    small, large = raw["small"], raw["large"]
    design, baseline = small["runs"]["design"], small["runs"]["per_caption"]
    captions = small["captions"]

    def seconds(runs, *names):
        return median([sum(r["phases"][n] for n in names) if names else r["seconds"] for r in runs])

    def encoding(runs):
        return seconds(runs, "forward", "loss", "backward")

    def cpu(runs):
        return median([r["user_s"] + r["system_s"] for r in runs])

    def layout_row(label, images, runs, peak):
        return [
            label,
            images,
            f"{seconds(runs):.1f}",
            spread([r["seconds"] for r in runs]),
            f"{encoding(runs):.1f}",
            f"{seconds(runs, 'optimizer'):.1f}",
            f"{median([r['user_s'] for r in runs]):.0f} / {median([r['system_s'] for r in runs]):.1f}",
            f"{median([r['minor_faults'] for r in runs]) / 1e6:.2f}",
            f"{peak:.2f}",
        ]

    table_a = markdown_table(
        [
            "layout",
            "images through the image tower",
            f"median step (s, of {len(design)} / {len(baseline)})",
            "range (s)",
            "forward + loss + backward (s)",
            "optimizer (s)",
            "CPU time user / system (s)",
            "minor page faults (M)",
            "peak RSS (GiB)",
        ],
        [
            layout_row("this project: each image once", args.images, design, small["memory_step"]["peak_gib"]),
            layout_row(
                "authors' layout: each image once per caption",
                captions,
                baseline,
                max(r["peak_gib"] for r in baseline),
            ),
            [
                "ratio (authors' / this project)",
                "",
                f"**{seconds(baseline) / seconds(design):.2f}x**",
                "",
                f"{encoding(baseline) / encoding(design):.2f}x",
                "",
                f"{cpu(baseline) / cpu(design):.2f}x (user + system)",
                "",
                "",
            ],
        ],
    )
    towers = small["towers_cpu"]
    image_s, text_s = median(towers["image"]), median(towers["text"])
    per_image = args.captions_per_image
    table_towers = markdown_table(
        ["tower alone, forward + backward", "batch", f"CPU time (s, median of {len(towers['image'])})"],
        [
            ["image tower", f"{args.images} images", f"{image_s:.1f}"],
            ["text tower", f"{captions} captions of {small['padded_length']} tokens", f"{text_s:.1f}"],
            [
                f"authors' layout if time grew with the batch: ({per_image} x image + text) / (image + text)",
                "",
                f"{(per_image * image_s + text_s) / (image_s + text_s):.2f}x",
            ],
        ],
    )

    plain, cached = small["memory_step"], large["step"]
    table_b = markdown_table(
        ["step", "images", "captions", "step time (s)", "peak memory (GiB)", "extra over the memory before (GiB)"],
        [
            [
                "plain",
                args.images,
                captions,
                f"{plain['seconds']:.1f}",
                f"{plain['peak_gib']:.2f}",
                f"{plain['extra_gib']:.2f}",
            ],
            [
                f"gradient cache, {large['chunks']} chunks of {args.chunk_size} images",
                args.large_images,
                large["captions"],
                f"{cached['seconds']:.1f}",
                f"{cached['peak_gib']:.2f}",
                f"{cached['extra_gib']:.2f}",
            ],
            [
                "ratio (cached / plain)",
                "",
                "",
                "",
                f"**{cached['peak_gib'] / plain['peak_gib']:.2f}x**",
                f"**{cached['extra_gib'] / plain['extra_gib']:.2f}x**",
            ],
        ],
    )

    step_s = cached["seconds"]
    labels = {
        "loss": "CLIP + SIGROT loss, forward + backward (median)",
        "sigrot": "SIGROT alone: graph + plan + KL, forward + backward (median)",
        "loss_200_iterations": "CLIP + SIGROT with all 200 Sinkhorn iterations (worst case, median)",
    }
    table_c = markdown_table(
        ["part", "seconds", f"share of the {args.large_images}-image step"],
        [
            [f"whole {args.large_images}-image step (from b)", f"{step_s:.2f}", "100 %"],
            *[
                [f"  {name}", f"{value:.2f}", f"{100 * value / step_s:.1f} %"]
                for name, value in cached["phases"].items()
            ],
            *[
                [labels[name], f"{median(times):.3f}", f"{100 * median(times) / step_s:.3f} %"]
                for name, times in large["loss"].items()
            ],
        ],
    )

    model = "2-block towers of the paper's widths (--quick)" if args.quick else "DINOv3 ViT-B/16 + PhoBERT-base"
    precision = args.dtype + (" autocast" if args.dtype != "fp32" else "")
    return "\n".join(
        [
            "# Training-step benchmarks (`benchmarks/train_step.py`)",
            "",
            f"{model}, random weights, {args.device} {precision}. (a) and the plain step: {part_line(small['meta'])}. "
            f"The cached step and (c): {part_line(large['meta'])}.",
            "",
            f"## (a) Each image encoded once vs once per caption ({args.images} images x {per_image} captions)",
            "",
            table_a,
            "",
            table_towers,
            "",
            f"## (b) Peak memory: {args.large_images}-image cached step vs a plain {args.images}-image step",
            "",
            table_b,
            "",
            f"## (c) The loss's share of the {args.large_images}-image step ({large['captions']} captions)",
            "",
            table_c,
        ]
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--dtype",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="fp32, or the trainer's bf16/fp16 mixed precision (the loss stays fp32)",
    )
    parser.add_argument("--images", type=int, default=16, help="images of the plain step and of (a)")
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--large-images", type=int, default=128, help="images of the gradient-cached step")
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps of this project's layout in (a)")
    parser.add_argument("--baseline-repeats", type=int, default=3, help="timed steps of the authors' layout in (a)")
    parser.add_argument("--loss-repeats", type=int, default=5)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2-block towers, 4/8 images, chunks of 2, one repeat, no file"
    )
    parser.add_argument("--output", type=Path, help=f"Markdown file (default {RESULTS}; none with --quick)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the Markdown from the raw results (the .json beside it) without measuring",
    )
    parser.add_argument(
        "--only",
        choices=["small", "large"],
        help="measure one part again (small: (a) and the "
        "plain step; large: the cached step and (c)) and keep the other from the earlier raw results",
    )
    parser.add_argument("--worker", choices=["small", "large"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    output = args.output or (None if args.quick else RESULTS)
    if args.quick:
        args.images, args.large_images, args.chunk_size = 4, 8, 2
        args.repeats = args.baseline_repeats = 1
        args.loss_repeats = 2
    if args.worker:
        with tempfile.TemporaryDirectory() as output_dir:  # the trainer's output_dir: nothing is saved
            result = {"small": worker_small, "large": worker_large}[args.worker](args, output_dir)
        print(json.dumps(result))
        return

    shared = ("device", "dtype", "images", "captions_per_image", "large_images", "chunk_size", "quick")
    json_path = None if output is None else output.with_suffix(".json")
    if (args.report_only or args.only) and (json_path is None or not json_path.is_file()):
        parser.error("--report-only and --only need the raw results of an earlier run (the .json beside --output)")
    raw = json.loads(json_path.read_text()) if args.report_only or args.only else {}
    if args.only and raw["settings"] != {name: getattr(args, name) for name in shared}:
        parser.error(f"--only: the settings differ from those of {json_path}: {raw['settings']}")
    if not args.report_only:
        check_per_row_loss(ContrastiveOTLoss(LossSettings("clip_sigrot")))
        raw["settings"] = {name: getattr(args, name) for name in shared}
        forwarded = [
            f"--{name.replace('_', '-')}={getattr(args, name)}"
            for name in (
                "device",
                "dtype",
                "images",
                "captions_per_image",
                "large_images",
                "chunk_size",
                "repeats",
                "baseline_repeats",
                "loss_repeats",
            )
        ] + (["--quick"] if args.quick else [])
        for part in [args.only] if args.only else ["small", "large"]:
            meta = {"environment": environment(args.device), "load_before": load_average()}
            start = time.perf_counter()
            raw[part] = run_worker(__file__, [*forwarded, "--worker", part])
            raw[part]["meta"] = {**meta, "load_after": load_average(), "minutes": (time.perf_counter() - start) / 60}
    text = report(argparse.Namespace(**raw["settings"]), raw) + "\n"
    print("\n" + text)
    if output:
        write_results(output, text)
        write_results(json_path, json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
