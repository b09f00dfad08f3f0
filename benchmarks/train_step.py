"""Training-step cost of ViCLIP-OT with the paper's towers (random weights): three questions of the issue.

(a) Encoding each image once (this project: B images through the image tower, the loss expands them to caption rows
    through `caption_image_index`) against encoding each image once per caption (the authors' code: the pixel rows
    are repeated per caption, 5x the image-tower work). Same captions, same CLIP + SIGROT loss; the baseline's loss
    is computed on its per-row image embeddings with the positives and the teacher graph of the true images (see
    `per_row_loss`), which is the authors' formulation and costs the same as ours.
(b) Peak memory of a 128-image step (5 captions each) with gradient caching in chunks of 16 images
    (`viclip_ot.gradcache.cached_backward` over `viclip_ot.data.gradcache_chunks`, as `ViCLIPOTTrainer` does)
    against a plain 16-image step.
(c) The loss's share of that 128-image step: CLIP + SIGROT (graph, Sinkhorn plan, KL) forward and backward to
    the embeddings and the logit scale.

A step = forward of both towers (`model(...)`, as the trainer's `compute_loss`), the loss, backward,
`AdamW.step()`, `zero_grad(set_to_none=True)` and the logit-scale clamp. Loss: `ContrastiveOTLoss("clip_sigrot")`
with the paper's options, teacher embeddings random L2-normalised 2048-d (Qwen3-VL-Embedding-2B's width).
Captions: random PhoBERT token ids, 15-30 tokens, padded to the longest of the batch.

Each of the two workers runs in a fresh process: `small` (16 images: its memory, then the (a) timings, the two
cases interleaved) and `large` (the 128-image cached step, then the loss timings on the embeddings that step fed
its loss). Memory on the CPU is the process's resident set size: the peak (VmHWM) is reset through
/proc/self/clear_refs just before a step, and a step's "extra" is its peak minus the resident size before it
(parameters and AdamW state are already allocated then: a 2-image warm-up step ran first; gradients are not, they
were set to None). On CUDA it is `torch.cuda.max_memory_allocated` likewise. Every step also records the
process's user and system CPU time and minor page faults: on a shared machine CPU time is less disturbed by other
processes than wall-clock time.

The raw results go to a .json beside the Markdown; `--only small|large` measures one part again and keeps the other,
`--report-only` rewrites the Markdown from the .json.

    python benchmarks/train_step.py                 # CPU fp32, writes benchmarks/results/train_step.{md,json}
    python benchmarks/train_step.py --quick         # smoke run: 2-block towers, tiny batches, no file
    python benchmarks/train_step.py --only small    # (a) and the plain step again
    python benchmarks/train_step.py --device cuda --dtype bf16 --output gpu.md   # bf16 autocast on a GPU
"""

import argparse
import functools
import gc
import json
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
)

from configuration_viclip_ot import VIETNAMESE_SBERT_CONFIG, ViCLIPOTConfig
from modeling_viclip_ot import ViCLIPOTModel, same_image_mask
from viclip_ot.data import gradcache_chunks
from viclip_ot.gradcache import cached_backward
from viclip_ot.losses import ContrastiveOTLoss, LossSettings, sigrot_divergence, similarity_graph, transport_plan

RESULTS = Path(__file__).parent / "results" / "train_step.md"
TEACHER_DIM = 2048


# ---- model, batch, loss ----------------------------------------------------------------------------------------


def build(args):
    torch.manual_seed(0)
    if args.quick:  # same widths, 2 blocks per tower
        config = ViCLIPOTConfig(
            vision_model_kwargs={"depth": 2}, text_config={**VIETNAMESE_SBERT_CONFIG, "num_hidden_layers": 2}
        )
    else:
        config = ViCLIPOTConfig()
    model = ViCLIPOTModel(config).to(args.device).train()
    head_names = ("vision_head.", "text_projection.", "logit_")
    heads = [p for n, p in model.named_parameters() if n.startswith(head_names)]
    backbones = [p for n, p in model.named_parameters() if not n.startswith(head_names)]
    optimizer = torch.optim.AdamW(
        [{"params": backbones, "lr": 5e-5}, {"params": heads, "lr": 2e-4}],
        eps=1e-10,
        weight_decay=1e-4,
        fused=True,  # the Trainer's default optimizer ("adamw_torch_fused" for torch >= 2.8)
    )
    return model, optimizer


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


def project_loss(loss_fn, image_embeds, text_embeds, batch, logit_scale):
    """The project's loss on B unique images (what `ViCLIPOTTrainer._batch_loss` calls); `logit_scale` = log s."""
    return loss_fn(
        image_embeds,
        text_embeds,
        batch["caption_image_index"],
        logit_scale.float().exp(),
        teacher_image_embeds=batch["teacher_image_embeds"],
        teacher_text_embeds=batch["teacher_text_embeds"],
    ).loss


def per_row_loss(loss_fn, row_image_embeds, text_embeds, batch, logit_scale):
    """The same loss when the image tower produced one embedding per caption row (the authors' layout).

    Rows stay rows: the CLIP logits are s * x_i . y_j over the row embeddings and the SIGROT cost 1 - x_i . y_j
    likewise (`transport_plan` with the identity row index), while the positives of the CLIP targets and the teacher
    graph come from the true image of each row. With x_i = image_embeds[caption_image_index[i]] this is exactly
    `project_loss` (checked by `check_per_row_loss`)."""
    index = batch["caption_image_index"]
    rows = torch.arange(index.shape[0], device=index.device)
    scale = logit_scale.float().exp()
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
    """The baseline's loss equals the project's when the row embeddings are the expanded image embeddings."""
    generator = torch.Generator().manual_seed(1)
    batch = make_batch(3, 2, "cpu")
    images = F.normalize(torch.randn(3, 768, generator=generator), dim=-1)
    texts = F.normalize(images.repeat_interleave(2, 0) + torch.randn(6, 768, generator=generator), dim=-1)
    scale = torch.tensor(2.0)
    ours = project_loss(loss_fn, images, texts, batch, scale)
    theirs = per_row_loss(loss_fn, images[batch["caption_image_index"]], texts, batch, scale)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


# ---- steps -----------------------------------------------------------------------------------------------------


class Step:
    """One optimizer step of some kind; `phases` holds the seconds of its parts once it ran."""

    def __init__(self, model, optimizer, loss_fn, args):
        self.model, self.optimizer, self.loss_fn, self.args = model, optimizer, loss_fn, args
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
        self.phases = {}

    def autocast(self):
        return torch.autocast(torch.device(self.args.device).type, dtype=self.dtype, enabled=self.dtype is not None)

    def mark(self, name, start):
        synchronize(self.args.device)
        now = time.perf_counter()
        self.phases[name] = now - start
        return now

    def finish(self, start):
        """The optimizer's part of the step."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.clamp_logit_scale()
        self.mark("optimizer", start)

    def forward(self, pixel_values, batch):
        with self.autocast():
            return self.model(
                pixel_values=pixel_values, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            )

    def plain(self, batch):
        """This project: each image once, the whole batch at once."""
        self.phases = {}
        start = time.perf_counter()
        outputs = self.forward(batch["pixel_values"], batch)
        start = self.mark("forward", start)
        loss = project_loss(self.loss_fn, outputs.image_embeds, outputs.text_embeds, batch, self.model.logit_scale)
        start = self.mark("loss", start)
        loss.backward()
        self.finish(self.mark("backward", start))

    def per_caption(self, batch):
        """The authors' layout: the image rows repeated per caption, every row through the image tower."""
        self.phases = {}
        start = time.perf_counter()
        outputs = self.forward(batch["pixel_values"].index_select(0, batch["caption_image_index"]), batch)
        start = self.mark("forward", start)
        loss = per_row_loss(self.loss_fn, outputs.image_embeds, outputs.text_embeds, batch, self.model.logit_scale)
        start = self.mark("loss", start)
        loss.backward()
        self.finish(self.mark("backward", start))

    def cached(self, batch, chunk_size, capture=None):
        """Gradient caching as `ViCLIPOTTrainer.training_step` does it. Phases: encoding without gradient, the loss
        and its backward to the cached embeddings (up to the first re-encoding), re-encoding with backward."""
        self.phases, marks = {}, {}
        start = time.perf_counter()

        def encode(chunk):
            if "loss" in marks and "replay" not in marks:
                synchronize(self.args.device)
                marks["replay"] = time.perf_counter()
            outputs = self.forward(chunk["pixel_values"], chunk)
            return outputs.image_embeds, outputs.text_embeds, self.model.logit_scale

        def loss_function(cached):
            synchronize(self.args.device)
            marks["loss"] = time.perf_counter()
            image_embeds = torch.cat([outputs[0] for outputs in cached])
            text_embeds = torch.cat([outputs[1] for outputs in cached])[caption_order.argsort()]
            logit_scale = cached[-1][2]
            if capture is not None:
                capture.update(
                    image_embeds=image_embeds.detach().clone(),
                    text_embeds=text_embeds.detach().clone(),
                    logit_scale=logit_scale.detach().clone(),
                )
            return project_loss(self.loss_fn, image_embeds, text_embeds, batch, logit_scale), None

        chunks, caption_order = gradcache_chunks(batch, chunk_size)
        cached_backward(encode, chunks, loss_function)
        synchronize(self.args.device)
        end = time.perf_counter()
        self.phases = {
            "encode without gradient": marks["loss"] - start,
            "loss forward+backward": marks["replay"] - marks["loss"],
            "re-encode forward+backward": end - marks["replay"],
        }
        self.finish(end)


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


def warm_up(step, args):
    """A 2-image plain step: allocates the AdamW state and warms the kernels."""
    print(f"[{args.worker}] warm-up step (2 images), load average {load_average()}", flush=True)
    step.plain(make_batch(2, args.captions_per_image, args.device, seed=99))


# ---- workers -----------------------------------------------------------------------------------------------------


def worker_small(args):
    model, optimizer = build(args)
    step = Step(model, optimizer, ContrastiveOTLoss(LossSettings("clip_sigrot")), args)
    batch = make_batch(args.images, args.captions_per_image, args.device)
    warm_up(step, args)
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
    def tower(kind):
        with step.autocast():
            if kind == "image":
                embeds = model.get_image_features(batch["pixel_values"]).pooler_output
            else:
                embeds = model.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output
        embeds.float().sum().backward()
        model.zero_grad(set_to_none=True)

    result["towers"], result["towers_cpu"] = {"image": [], "text": []}, {"image": [], "text": []}
    for index in range(args.repeats):
        for kind in ("image", "text"):
            usage = cpu_usage()
            seconds, _ = time_call(functools.partial(tower, kind), args.device)
            cpu_seconds = sum(cpu_usage()[:2]) - sum(usage[:2])
            result["towers"][kind].append(seconds)
            result["towers_cpu"][kind].append(cpu_seconds)
            print(
                f"[small] {kind} tower alone, forward + backward, run {index + 1}/{args.repeats}: {seconds:.1f} s "
                f"(CPU {cpu_seconds:.1f} s)",
                flush=True,
            )
    return result


def worker_large(args):
    model, optimizer = build(args)
    loss_fn = ContrastiveOTLoss(LossSettings("clip_sigrot"))
    step = Step(model, optimizer, loss_fn, args)
    batch = make_batch(args.large_images, args.captions_per_image, args.device, seed=1)
    warm_up(step, args)
    captured = {}
    chunks = len(gradcache_chunks(batch, args.chunk_size)[0])
    print(
        f"[large] {args.large_images}-image step, {chunks} chunks of {args.chunk_size}, load average {load_average()}",
        flush=True,
    )
    result = {
        "captions": int(batch["input_ids"].shape[0]),
        "chunks": chunks,
        "step": measured(step, functools.partial(step.cached, batch, args.chunk_size, captured), args),
    }
    print(f"[large]   {describe(result['step'])}", flush=True)
    del model, optimizer, step
    gc.collect()

    # (c) the loss alone, on the embeddings the step fed it, forward + backward to embeddings and scale.
    embeds = {name: value.requires_grad_() for name, value in captured.items()}

    def full_loss(options=None):
        loss = ContrastiveOTLoss(LossSettings("clip_sigrot", **(options or {})))
        value = project_loss(loss, embeds["image_embeds"], embeds["text_embeds"], batch, embeds["logit_scale"])
        torch.autograd.backward(value, inputs=list(embeds.values()))

    def sigrot_only():
        index, scale = batch["caption_image_index"], embeds["logit_scale"].float().exp()
        graph = similarity_graph(
            batch["teacher_image_embeds"], batch["teacher_text_embeds"], index, loss_fn.settings.graph_strategy
        )
        plan = transport_plan(embeds["image_embeds"], embeds["text_embeds"], index, **loss_fn.ot_options)
        value = sigrot_divergence(plan, graph, scale)
        torch.autograd.backward(value, inputs=list(embeds.values()))

    cases = {
        "loss": full_loss,
        "sigrot": sigrot_only,
        "loss_200_iterations": lambda: full_loss({"ot_tol": 0.0}),  # tol 0 never stops early: 200 iterations
    }
    result["loss"] = {}
    for name, function in cases.items():
        times = repeat_timing(function, 1, args.loss_repeats, args.device, label=f"[large] {name}")
        result["loss"][name] = times
    return result


# ---- tables ----------------------------------------------------------------------------------------------------


def part_line(meta):
    minutes = "" if meta.get("minutes") is None else f", {meta['minutes']:.1f} min"
    return f"{meta['environment']}{minutes}; load average {meta['load_before']} before, {meta['load_after']} after"


def report(args, raw):
    """The Markdown tables from the workers' raw results."""
    small, large = raw["small"], raw["large"]
    design, baseline = small["runs"]["design"], small["runs"]["per_caption"]
    design_s, baseline_s = median([r["seconds"] for r in design]), median([r["seconds"] for r in baseline])

    def phase(runs, *names):
        return median([sum(r["phases"][n] for n in names) for r in runs])

    def usage(runs):
        return (
            f"{median([r['user_s'] for r in runs]):.0f} / {median([r['system_s'] for r in runs]):.1f}",
            f"{median([r['minor_faults'] for r in runs]) / 1e6:.2f}",
        )

    captions = small["captions"]
    table_a = markdown_table(
        [
            "layout",
            "images through the image tower",
            "captions",
            "median step (s)",
            "range (s)",
            "forward + loss + backward (s)",
            "optimizer (s)",
            "CPU time user / system (s)",
            "minor page faults (M)",
            "peak RSS (GiB)",
        ],
        [
            [
                "this project: each image once",
                args.images,
                captions,
                f"{design_s:.1f}",
                spread([r["seconds"] for r in design]),
                f"{phase(design, 'forward', 'loss', 'backward'):.1f}",
                f"{phase(design, 'optimizer'):.1f}",
                *usage(design),
                f"{small['memory_step']['peak_gib']:.2f}",
            ],
            [
                "authors' layout: each image once per caption",
                captions,
                captions,
                f"{baseline_s:.1f}",
                spread([r["seconds"] for r in baseline]),
                f"{phase(baseline, 'forward', 'loss', 'backward'):.1f}",
                f"{phase(baseline, 'optimizer'):.1f}",
                *usage(baseline),
                f"{max(r['peak_gib'] for r in baseline):.2f}",
            ],
        ],
    )
    # Each tower alone: CPU time (user + system) where recorded, as the other processes disturb it less.
    towers_kind = "CPU" if "towers_cpu" in small else "wall-clock"
    towers = small.get("towers_cpu", small["towers"])
    image_s, text_s = median(towers["image"]), median(towers["text"])
    per_image = args.captions_per_image
    expected = (per_image * image_s + text_s) / (image_s + text_s)
    towers_line = (
        f"Each tower alone, forward + backward on this project's batch, {towers_kind} time (median of "
        f"{len(towers['image'])}, interleaved): image tower on {args.images} images {image_s:.1f} s, text tower on "
        f"{captions} captions (padded to {small['padded_length']} tokens) {text_s:.1f} s. The text tower costs "
        f"{100 * text_s / (image_s + text_s):.0f} % of the two: if the towers' time grew in proportion to their "
        f"batch, encoding each image once per caption would cost ({per_image} x image + text) / (image + text) = "
        f"**{expected:.2f}x** the towers' time. Beyond that the larger batch costs more per image on this CPU: "
        "compare the system CPU time and page faults above (the large activations are fresh memory from the kernel "
        "at every step)."
    )
    speedup = baseline_s / design_s
    cpu_speedup = median([r["user_s"] + r["system_s"] for r in baseline]) / median(
        [r["user_s"] + r["system_s"] for r in design]
    )
    user_speedup = median([r["user_s"] for r in baseline]) / median([r["user_s"] for r in design])
    encode_speedup = phase(baseline, "forward", "loss", "backward") / phase(design, "forward", "loss", "backward")

    plain, cached = small["memory_step"], large["step"]
    table_b = markdown_table(
        [
            "step",
            "images",
            "captions",
            "step time (s)",
            "peak RSS of the process (GiB)",
            "peak extra over the RSS before the step (GiB)",
        ],
        [
            [
                "plain, no caching",
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
                f"{cached['peak_gib'] / plain['peak_gib']:.2f}x",
                f"{cached['extra_gib'] / plain['extra_gib']:.2f}x",
            ],
        ],
    )

    step_s = cached["seconds"]
    loss_times = large["loss"]
    rows_c = [
        [f"whole {args.large_images}-image step (from b)", f"{step_s:.2f}", "100 %"],
        *[[f"  {name}", f"{value:.2f}", f"{100 * value / step_s:.1f} %"] for name, value in cached["phases"].items()],
        [
            "loss forward+backward inside the step (timestamps, once)",
            f"{cached['phases']['loss forward+backward']:.3f}",
            f"{100 * cached['phases']['loss forward+backward'] / step_s:.3f} %",
        ],
    ]
    labels = {
        "loss": "CLIP + SIGROT loss, forward + backward (median)",
        "sigrot": "SIGROT alone: graph + plan + KL, forward + backward (median)",
        "loss_200_iterations": "CLIP + SIGROT with all 200 Sinkhorn iterations (worst case, median)",
    }
    for name, times in loss_times.items():
        rows_c.append([labels[name], f"{median(times):.3f}", f"{100 * median(times) / step_s:.3f} %"])
    table_c = markdown_table(["part", "seconds", f"share of the {args.large_images}-image step"], rows_c)
    loss_share = 100 * median(loss_times["loss"]) / step_s
    worst_share = 100 * median(loss_times["loss_200_iterations"]) / step_s
    memory_ratio = cached["peak_gib"] / plain["peak_gib"]
    extra_ratio = cached["extra_gib"] / plain["extra_gib"]

    def verdict(ok):
        return "met" if ok else "NOT met"

    device = f"{args.device} {args.dtype}" + (" autocast" if args.dtype != "fp32" else "")
    return "\n".join(
        [
            "# Training-step benchmarks",
            "",
            f"Device: {device}. Each part ran in its own process (load average over 1/5/15 min):",
            "",
            *[
                f"- {label}: {part_line(raw[part]['meta'])}"
                for part, label in (
                    ("small", "(a) and the plain step of (b)"),
                    ("large", "the cached step of (b), and (c)"),
                )
            ],
            "",
            (
                "Smoke run (--quick): 2-block towers of the paper's widths, "
                if args.quick
                else "Paper-size model (DINOv3 ViT-B/16 + PhoBERT-base, random weights), "
            )
            + "fused AdamW (2 groups, the Trainer's "
            "default), `ContrastiveOTLoss('clip_sigrot')` with the paper's options (lambda 0.1, eps 0.05, tau 0.5, "
            "<= 200 Sinkhorn iterations, tol 1e-6), random L2-normalised 2048-d teacher embeddings, "
            f"{args.captions_per_image} captions per image of 15-30 random PhoBERT tokens (padded to the longest). "
            "A step = forward of both towers, loss, backward, AdamW step, zero_grad, scale clamp. Generated by "
            "`benchmarks/train_step.py`."
            + (
                ""
                if args.device == "cuda"
                else " Only CPU figures: no GPU on this machine; `--device cuda --dtype bf16` "
                "measures bf16 autocast on one."
            ),
            "",
            (
                f"## (a) Each image encoded once vs once per caption ({args.images} images x {args.captions_per_image} "
                "captions)"
            ),
            "",
            table_a,
            "",
            (
                f"Speed-up of the whole step: **{speedup:.2f}x** (goal >= 3x: {verdict(speedup >= 3)}); "
                f"forward + loss + backward alone: {encode_speedup:.2f}x. Less disturbed by the other processes on "
                f"this "
                f"machine, the ratio of the process's CPU time (user + system): {cpu_speedup:.2f}x; user time alone: "
                f"{user_speedup:.2f}x. Medians of {len(design)} (this project) and "
                f"{len(baseline)} (authors' layout) steps, run interleaved after a 2-image warm-up step and the "
                f"memory step "
                "of (b). The authors' layout repeats the pixel rows per caption (the image tower encodes "
                f"{captions} images); its loss uses those {captions} row embeddings directly (CLIP logits and SIGROT "
                "cost over rows) with positives and teacher graph from the true image ids: the same loss, same cost, "
                "as ours, which is equal to it when the rows are the expanded image embeddings (checked at start-up). "
                f"Peak RSS (whole process): this project's is the first {args.images}-image step of the fresh process, "
                "as in (b); the "
                "authors' layout's, the highest over its runs (they followed this project's steps in the same "
                "process, whose "
                "freed memory they reuse)."
            ),
            "",
            towers_line,
            "",
            (
                f"## (b) Peak memory: {args.large_images}-image step with gradient caching vs a plain "
                f"{args.images}-image step"
            ),
            "",
            table_b,
            "",
            f"Peak process memory ratio **{memory_ratio:.2f}x**, extra-over-baseline ratio **{extra_ratio:.2f}x** "
            f"(goal <= 1.5x: {verdict(memory_ratio <= 1.5 and extra_ratio <= 1.5)}). Each step ran once in a fresh "
            "process after a 2-image warm-up step that allocated the AdamW state; the gradients were freed "
            "(`zero_grad(set_to_none=True)`) so both steps allocate them. "
            + (
                "Memory: the process's resident set size (Linux VmHWM, reset through /proc/self/clear_refs just before "
                "the step; 'extra' = that peak minus the resident size just before the step: activations, gradients, "
                "optimizer temporaries and freed-but-kept allocator memory)."
                if args.device != "cuda"
                else "Memory: `torch.cuda.max_memory_allocated`, reset just before the step."
            )
            + " The cached step is `viclip_ot.gradcache.cached_backward` over `viclip_ot.data.gradcache_chunks`, "
            "with the same encode/loss functions as `ViCLIPOTTrainer.training_step`; one run only (it is long on a "
            "CPU).",
            "",
            f"## (c) The loss's share of the {args.large_images}-image step ({large['captions']} captions)",
            "",
            table_c,
            "",
            f"CLIP + SIGROT forward + backward: **{loss_share:.3f} %** of the step "
            f"({worst_share:.3f} % with all 200 Sinkhorn iterations) (goal < 5 %: {verdict(worst_share < 5)}, judged "
            "on the worst case). "
            f"The loss was timed on the {large['captions']} + {args.large_images} embeddings the step fed its loss "
            f"(random-weight towers), backward to the embeddings and the logit scale; 1 warm-up + "
            f"{len(loss_times['loss'])} runs, median. The step's phases come from timestamps inside that one step."
            + (
                ""
                if args.device == "cuda"
                else " On a CPU the towers dominate; on a GPU they run far faster while the "
                "Sinkhorn loop stays a chain of small kernels, so this share must be measured there too."
            ),
        ]
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--dtype",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="fp32, or autocast of the towers to bf16/fp16 (the loss stays fp32)",
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
        result = {"small": worker_small, "large": worker_large}[args.worker](args)
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
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        json_path.write_text(json.dumps(raw, indent=1) + "\n")
        print(f"wrote {output} and its raw results {json_path}")


if __name__ == "__main__":
    main()
