"""The paper's loss ablation (Table 1), in miniature on the demo corpus or in full on UIT-OpenViIC.

    python reproduce.py                                  # demo study: every loss x teacher x seed, resumable
    python reproduce.py --report-only                    # only rebuild the table and figure from the finished runs
    python reproduce.py --study full --jobs 2            # full-length study: 8 rows x 10 paired seeds, resumable
    python reproduce.py --suite paper --data-root DIR    # UIT-OpenViIC: dedupe, teacher, seven configs, zero-shot

Demo study: every row of Table 1 that needs no external model (CLIP, SigLIP, CLIP+UOT, SigLIP+UOT, SIGROT,
ViCLIP-OT, ViSigLIP-OT) plus the SIGROT variants of `viclip_ot.losses`, trained with `configs/demo.yaml`'s towers
and optimiser for `--epochs` epochs (the same for every row), on the demo's test split, for three teachers: the
shipped MiniLM file, a perfect teacher (each image's one-hot scene factors: count, shape, colour, position,
background; its captions carry its row) and that teacher with Gaussian noise. Each finished run is one JSON file in
`--runs`; a rerun skips them. The table (mean and 95 % t-interval over seeds of avg R@K, alignment, modality gap and
the last training interval's plan row mass) goes to `benchmarks/results/ablation.md`, the figure beside it.

Full-length study (`--study full`): `configs/demo.yaml` as it is (all training images, its 16 epochs) for CLIP,
SigLIP, the paper's ViCLIP-OT and the demo default (normalised plan, prior temperature 0.02) with five teachers: the
three above, an identity graph (one-hot rows per image: "same image" only) and a random graph (random unit rows: no
information). Seeds are paired: a seed gives every row the same initial weights and training batches, which each
result file's fingerprints let the report check. The report (`benchmarks/results/full.md` and `.png`) gives each
row's paired difference to CLIP with its 95 % t-interval, the paired t-test and the Wilcoxon signed-rank test, and
the teachers' paired contrasts. Every result file records the torch threads and how the run was launched.
"""

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from transformers import TrainerCallback

from viclip_ot.cli import run
from viclip_ot.files import atomic_write

REPO = Path(__file__).resolve().parent
RESULTS = REPO / "benchmarks" / "results"

# name -> train.py options; the paper's Table 1 rows, then the variants of this repository
ROWS = {
    "CLIP": {"loss_type": "clip"},
    "SigLIP": {"loss_type": "siglip", "logit_scale_init_value": math.log(10), "logit_bias_init_value": -10.0},
    "CLIP+UOT": {"loss_type": "clip_uot"},
    "SigLIP+UOT": {"loss_type": "siglip_uot", "logit_scale_init_value": math.log(10), "logit_bias_init_value": -10.0},
    "SIGROT": {"loss_type": "sigrot", "contrastive_weight": 0.0},
    "ViCLIP-OT": {"loss_type": "clip_sigrot"},
    "ViSigLIP-OT": {
        "loss_type": "siglip_sigrot",
        "logit_scale_init_value": math.log(1 / 0.06),
        "logit_bias_init_value": -9.0,
    },
    "ViCLIP-OT, normalised plan, prior T 0.02": {
        "loss_type": "clip_sigrot",
        "normalise_plan": True,
        "prior_temperature": 0.02,
    },
    "ViCLIP-OT, normalised plan": {"loss_type": "clip_sigrot", "normalise_plan": True},
}
# every run starts from the paper's loss settings (the demo config's own choices do not leak into the rows)
PAPER_LOSS = {
    "contrastive_weight": 0.1,
    "normalise_plan": False,
    "prior_temperature": None,
    "detach_prior_scale": False,
    "ot_reg": 0.05,
    "ot_reg_m": 0.5,
}
TEACHERS = ("MiniLM (shipped)", "perfect", "perfect + noise")
TEACHER_NOISE = 0.15  # standard deviation per dimension of the noisy perfect teacher (rows have norm 1)
CONTROLS = ("identity", "random")  # the full study's control graphs: "same image" only, and no information
RANDOM_TEACHER_DIMENSION = 384  # the shipped MiniLM teacher's
METRICS = ("avg_R", "alignment", "modality_gap", "plan_row_mass")
# every run of both studies: no gradient caching (the same gradient as the demo's chunks of 32, one forward fewer), no
# validation or checkpoints during training (the demo config's per-epoch validation only picks which checkpoint to
# keep; the training steps are the same), the final model evaluated on the test split
FULL_COMMON = {
    "gradcache_chunk_size": 0,
    "eval_strategy": "no",
    "save_strategy": "no",
    "load_best_model_at_end": False,
    "disable_tqdm": True,
}
DEMO_DEFAULT = "ViCLIP-OT, normalised plan, prior T 0.02"  # configs/demo.yaml's loss
# --study full: (row, teacher) at the demo config's full length (all 1,000 training images, its 16 epochs)
FULL_STUDY = (
    ("CLIP", None),
    ("SigLIP", None),
    ("ViCLIP-OT", TEACHERS[0]),
    *((DEMO_DEFAULT, teacher) for teacher in (*TEACHERS, *CONTROLS)),
)
# paired contrasts between the demo default's teachers: does what the graph knows matter?
TEACHER_CONTRASTS = (("perfect", "identity"), ("perfect", "random"), ("identity", "random"), (TEACHERS[0], "identity"))

# --suite paper: the seven configs (Table 1's rows) and the Avg R@K the paper publishes for four of them.
PAPER_CONFIGS = {
    "CLIP": "clip",
    "SigLIP": "siglip",
    "CLIP+UOT": "clip_uot",
    "SigLIP+UOT": "siglip_uot",
    "SIGROT": "sigrot",
    "ViCLIP-OT": "viclip_ot",
    "ViSigLIP-OT": "visiglip_ot",
}
PAPER_AVG_R = {
    "UIT-OpenViIC test": {"CLIP": 61.59, "SigLIP": 64.77, "ViCLIP-OT": 67.34, "ViSigLIP-OT": 68.96},
    "KTVIC test (dedup)": {"CLIP": 79.32, "SigLIP": 81.38, "ViCLIP-OT": 82.68, "ViSigLIP-OT": 82.78},
    "Crossmodal-3600 vi": {"CLIP": 45.13, "SigLIP": 49.59, "ViCLIP-OT": 56.85, "ViSigLIP-OT": 56.17},
}


# --------------------------------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------------------------------


def demo_train_split():
    """The demo's train split as its builder draws it: image ids, captions and each image's scene factors."""
    from dataset_scripts.demo import DemoConfig, make_scene

    config = DemoConfig(name="default")
    rng = np.random.default_rng([config.seed, 0])  # the demo builder's generator of the train split
    image_ids, captions, scenes = [], [], []
    for row in range(config.train_size):
        _, scene_captions, scene = make_scene(rng, config.image_size)
        image_ids.append(f"train-{row:05d}")
        captions.append(scene_captions)
        scenes.append(scene)
    return image_ids, captions, scenes


def _demo_teacher(image_rows, text_rows, image_ids, captions, name):
    """A teacher file of the demo's train split from its rows (normalised here), with the corpus fingerprint and the
    per-image caption fingerprints that `TeacherEmbeddings.check_corpus` checks."""
    from dataset_scripts.teacher_embeddings import TeacherEmbeddings, caption_fingerprints, corpus_fingerprint

    metadata = {
        "teacher": name,
        "corpus": "demo",
        "split": "train",
        "corpus_fingerprint": corpus_fingerprint(image_ids, captions),
        "caption_fingerprints": json.dumps(caption_fingerprints(captions)),
    }
    return TeacherEmbeddings(
        torch.nn.functional.normalize(image_rows, dim=-1),
        torch.nn.functional.normalize(text_rows, dim=-1),
        image_ids,
        torch.tensor([len(texts) for texts in captions]),
        metadata,
    )


def scene_factor_teacher(noise=0.0, seed=0):
    """A teacher file for the demo's train split whose rows are each image's scene factors, one-hot and normalised
    (`noise` > 0: plus N(0, noise^2) per dimension, drawn independently for the image and for each caption, then
    normalised again); every caption carries its image's row."""
    from dataset_scripts.demo import BACKGROUNDS, COLOURS, COUNTS, POSITIONS, SHAPES

    image_ids, captions, scenes = demo_train_split()
    factors = {
        "count": list(COUNTS),
        "shape": list(SHAPES),
        "colour": list(COLOURS),
        "position": list(POSITIONS),
        "background": list(BACKGROUNDS),
    }
    offsets = np.cumsum([0] + [len(values) for values in factors.values()])
    codes = np.zeros((len(scenes), offsets[-1]))
    for row, scene in enumerate(scenes):
        for offset, (name, values) in zip(offsets, factors.items()):
            codes[row, offset + values.index(scene[name])] = 1
    image_rows = torch.nn.functional.normalize(torch.tensor(codes, dtype=torch.float32), dim=-1)
    text_rows = image_rows.repeat_interleave(torch.tensor([len(texts) for texts in captions]), dim=0)
    if noise:
        generator = torch.Generator().manual_seed(seed)
        image_rows = image_rows + noise * torch.randn(image_rows.shape, generator=generator)
        text_rows = text_rows + noise * torch.randn(text_rows.shape, generator=generator)
    return _demo_teacher(image_rows, text_rows, image_ids, captions, f"scene factors, noise {noise}")


def identity_teacher():
    """The identity graph: image i's row is the one-hot vector e_i and its captions carry it, so the teacher
    similarity is 1 between an image and its own captions (and between those captions) and 0 otherwise: the prior
    says only "same image", as the contrastive target does."""
    image_ids, captions, _ = demo_train_split()
    image_rows = torch.eye(len(image_ids))
    text_rows = image_rows.repeat_interleave(torch.tensor([len(texts) for texts in captions]), dim=0)
    return _demo_teacher(image_rows, text_rows, image_ids, captions, "identity graph")


def random_teacher(seed=0, dimension=RANDOM_TEACHER_DIMENSION):
    """The random graph: every image and every caption its own random unit vector (independent Gaussian rows of
    `dimension`, normalised; the same for the same `seed`), so the graph holds no information, not even which
    captions belong to which image."""
    image_ids, captions, _ = demo_train_split()
    generator = torch.Generator().manual_seed(seed)
    image_rows = torch.randn(len(image_ids), dimension, generator=generator)
    text_rows = torch.randn(sum(len(texts) for texts in captions), dimension, generator=generator)
    return _demo_teacher(image_rows, text_rows, image_ids, captions, f"random unit vectors, seed {seed}")


def teacher_files(folder, names=TEACHERS):
    """The files of the teachers `names` (the shipped one in place, the others written to `folder` once)."""
    builders = {
        TEACHERS[1]: scene_factor_teacher,
        TEACHERS[2]: lambda: scene_factor_teacher(TEACHER_NOISE),
        CONTROLS[0]: identity_teacher,
        CONTROLS[1]: random_teacher,
    }
    files = {}
    for name in names:
        if name == TEACHERS[0]:
            files[name] = REPO / "assets" / "demo-teacher-train.safetensors"
            continue
        path = Path(folder) / f"teacher-{name.replace(' + ', '-').replace(' ', '-')}.safetensors"
        if not path.is_file():
            builders[name]().save(path)
        files[name] = path
    return files


# --------------------------------------------------------------------------------------------------------------
# Demo study
# --------------------------------------------------------------------------------------------------------------


def study_runs(rows, teachers, seeds):
    """(row, teacher or None, seed) of the study, in the order of `rows`: rows without a teacher run once per seed."""
    from viclip_ot.losses import LOSS_TYPES

    runs = []
    for row in rows:
        needs_teacher = LOSS_TYPES[ROWS[row]["loss_type"]].needs_teacher
        runs += [(row, teacher, seed) for seed in seeds for teacher in (teachers if needs_teacher else [None])]
    return runs


def full_study_runs(seeds):
    """(row, teacher, seed) of the full-length study, seed by seed: every row of a seed before the next seed."""
    return [(row, teacher, seed) for seed in seeds for row, teacher in FULL_STUDY]


def run_path(runs_folder, row, teacher, seed):
    slug = "".join(c if c.isalnum() else "-" for c in f"{row}--{teacher or 'none'}").lower()
    return Path(runs_folder) / f"{slug}--seed{seed}.json"


class PairingFingerprint(TrainerCallback):
    """What pairing by seed keeps equal across rows, as short hashes: the initial weights (all but the logit scale
    and bias, which SigLIP initialises differently) and the training batches in order (pixels and token ids of every
    training forward)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        weights = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            if not name.startswith(("logit_scale", "logit_bias")):
                weights.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
        self.initial_weights = weights.hexdigest()[:16]
        self._batches = hashlib.sha256()
        self._hook = model.register_forward_pre_hook(self._hash_batch, with_kwargs=True)

    def _hash_batch(self, module, args, kwargs):
        if module.training:
            for name in ("pixel_values", "input_ids"):
                self._batches.update(kwargs[name].detach().cpu().numpy().tobytes())

    def on_train_end(self, args, state, control, **kwargs):
        self._hook.remove()
        self.training_batches = self._batches.hexdigest()[:16]
        self.steps = state.global_step


def train_run(config, options, output_dir):
    """Train `config` with `options` (field -> value, None included) through `train.main`, from a config file in
    `output_dir` based on `config`; the test metrics after training and the last training diagnostics, one dict,
    with the run's `PairingFingerprint` under `pairing`."""
    import yaml

    import train

    run_config = Path(output_dir) / "run.yaml"
    run_config.write_text(yaml.safe_dump({"base": str(Path(config).resolve()), **options}))
    fingerprint = PairingFingerprint()
    results = train.main([str(run_config), "--output_dir", str(output_dir)], callbacks=[fingerprint])
    after = {key.removeprefix("test_"): value for key, value in results["after training"].items()}
    pairing = {"initial_weights": fingerprint.initial_weights, "training_batches": fingerprint.training_batches}
    return {**after, **results["last training diagnostics"], "steps": fingerprint.steps, "pairing": pairing}


def _run_record(config, options, work, threads, launcher):
    """Train one run in its own folder under `work` (removed after) with `threads` torch threads; its JSON record
    less row, teacher and seed: metrics, seconds, the threads it used and how it was launched."""
    torch.set_num_threads(threads)
    output_dir = Path(tempfile.mkdtemp(dir=work))
    start = time.perf_counter()
    metrics = train_run(config, options, output_dir)
    shutil.rmtree(output_dir)
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "launcher": f"{launcher}, nice {os.nice(0)}, {os.cpu_count()} CPUs",
        "steps": metrics.pop("steps"),
        "pairing": metrics.pop("pairing"),
        "metrics": metrics,
    }


def run_study(args):
    """Train every run of the study that has no result file yet (`--jobs` at a time, each in a fresh process when
    more than one), write each result atomically as it finishes, then the report."""
    from tqdm.auto import tqdm

    runs_folder, work = Path(args.runs), Path(args.work_dir)
    runs_folder.mkdir(parents=True, exist_ok=True)
    if args.study == "full":
        expected = full_study_runs(args.seeds)
        common = dict(FULL_COMMON)
    else:
        expected = study_runs(args.rows, args.teachers, args.seeds)
        common = {
            **FULL_COMMON,
            "num_train_epochs": args.epochs,
            "max_train_images": args.train_images,
            "logging_steps": args.logging_steps,
        }
    todo = [run for run in expected if not run_path(runs_folder, *run).is_file()]
    teachers = teacher_files(work, sorted({teacher for _, teacher, _ in todo if teacher}))
    launcher = f"python reproduce.py --study {args.study} --jobs {args.jobs} (train.main in " + (
        "the same process)" if args.jobs == 1 else "a fresh worker process per run)"
    )

    def task(row, teacher, seed):
        options = {**common, **PAPER_LOSS, **ROWS[row], "seed": seed}
        if teacher is not None:
            options["teacher_embeddings"] = str(teachers[teacher])
        return args.config, options, work, args.threads, launcher

    def finish(run, record):
        row, teacher, seed = run
        header = {"row": row, "teacher": teacher, "seed": seed, "study": args.study, "options": ROWS[row]}
        if args.study == "ablation":
            header.update(epochs=args.epochs, train_images=args.train_images)
        write_json(run_path(runs_folder, *run), {**header, **record})

    failed = []
    if args.jobs == 1:
        for run in tqdm(todo, desc=f"{args.study} runs"):
            finish(run, _run_record(*task(*run)))
    elif todo:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context, max_tasks_per_child=1) as pool:
            futures = {pool.submit(_run_record, *task(*run)): run for run in todo}
            for future in tqdm(as_completed(futures), total=len(futures), desc=f"{args.study} runs"):
                if future.exception() is None:
                    finish(futures[future], future.result())
                else:  # the other runs go on; the failed ones are listed at the end (and missing in the report)
                    print(f"run {futures[future]} failed: {future.exception()!r}", file=sys.stderr)
                    failed.append(futures[future])
    report(args, expected)
    if failed:
        raise SystemExit(f"error: {len(failed)} runs failed: {failed}")


def report(args, expected):
    """The study's table and figure of the finished runs, listing the `expected` runs still missing."""
    if args.study == "full":
        return write_full_report(args.runs, args.output, expected)
    return write_report(args.runs, args.output, expected)


def write_json(path, value):
    """Write atomically: a finished run is either complete on disk or absent."""
    write_text(path, json.dumps(value, indent=2))


def interval(values):
    """Mean and the half-width of its 95 % t-interval (nan with one value)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))


def collect(runs_folder):
    """{(row, teacher): [metrics of each seed]} of the finished runs."""
    groups = {}
    for path in sorted(Path(runs_folder).glob("*.json")):
        record = json.loads(path.read_text())
        groups.setdefault((record["row"], record["teacher"]), []).append(record)
    return groups


def write_report(runs_folder, output, expected=()):
    """The Markdown table and the figure of the finished runs; the `expected` runs (row, teacher, seed) that have
    not finished are listed under the table."""
    groups = collect(runs_folder)
    if not groups:
        raise SystemExit(f"no finished runs in {runs_folder}")
    finished = [record for records in groups.values() for record in records]
    sizes = sorted({(record["train_images"], record["epochs"]) for record in finished})
    size = ", ".join(f"{images} training images x {epochs:g} epochs" for images, epochs in sizes)
    lines = [
        (
            f"Demo corpus, test split (200 images); `configs/demo.yaml` towers and optimiser, {size} (batch 64), no "
            "gradient caching; mean over seeds ± the 95 % t-interval half-width. `plan mass`: mean row mass of "
            "T = N P* on the training batches of the last logging interval (the loss's own plan, or one of the same "
            "Sinkhorn settings for the rows without). Teacher `-`: the row uses none."
        ),
        "",
        "| loss | teacher | seeds | avg R@K | alignment | modality gap | plan mass |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    order = {row: i for i, row in enumerate(ROWS)}
    for (row, teacher), records in sorted(
        groups.items(), key=lambda item: (TEACHERS.index(item[0][1]) if item[0][1] else -1, order.get(item[0][0], 99))
    ):
        cells = []
        for metric in METRICS:
            mean, half = interval([record["metrics"].get(metric, float("nan")) for record in records])
            digits = 1 if metric == "avg_R" else 2
            cells.append(f"{mean:.{digits}f} ± {half:.{digits}f}")
        lines.append(f"| {row} | {teacher or '-'} | {len(records)} | " + " | ".join(cells) + " |")
    done = {(record["row"], record["teacher"], record["seed"]) for record in finished}
    missing = [run for run in expected if run not in done]
    if missing:
        lines += [
            "",
            f"**Partial: {len(missing)} of {len(expected)} runs missing:** "
            + "; ".join(f"{row} / {teacher or '-'} / seed {seed}" for row, teacher, seed in missing),
        ]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    table = "\n".join(lines) + "\n"
    write_text(output, table)
    plot_study(groups, output.with_suffix(".png"))
    print(table)


def paired_difference(values, baseline):
    """Paired statistics of `values` - `baseline` ({seed: value} each, over their common seeds): n, the mean
    difference, its 95 % t-interval (low, high), the paired t-test's and Wilcoxon signed-rank test's two-sided p
    (nan where undefined: fewer than two pairs, or all differences zero)."""
    seeds = sorted(set(values) & set(baseline))
    a = np.array([values[seed] for seed in seeds], dtype=float)
    b = np.array([baseline[seed] for seed in seeds], dtype=float)
    mean, half = interval(a - b) if seeds else (float("nan"), float("nan"))
    t_p = wilcoxon_p = float("nan")
    if len(seeds) >= 2 and np.any(a != b):
        t_p = float(stats.ttest_rel(a, b).pvalue)
        wilcoxon_p = float(stats.wilcoxon(a, b).pvalue)
    return {
        "n": len(seeds),
        "mean": mean,
        "low": mean - half,
        "high": mean + half,
        "t_p": t_p,
        "wilcoxon_p": wilcoxon_p,
    }


def by_seed(records, metric):
    return {record["seed"]: record["metrics"].get(metric, float("nan")) for record in records}


def pairing_problems(groups):
    """Seeds whose runs do not share initial weights and training batches (`PairingFingerprint`)."""
    seeds = {}
    for records in groups.values():
        for record in records:
            seeds.setdefault(record["seed"], set()).add(tuple(record["pairing"].values()))
    return sorted(seed for seed, fingerprints in seeds.items() if len(fingerprints) > 1)


def _difference_cell(difference, digits):
    if not difference["n"]:
        return "-"
    if difference["n"] == 1:
        return f"{difference['mean']:+.{digits}f} (one seed)"
    return f"{difference['mean']:+.{digits}f} [{difference['low']:+.{digits}f}, {difference['high']:+.{digits}f}]"


def _p_cell(difference):
    return " / ".join("-" if math.isnan(difference[key]) else f"{difference[key]:.3f}" for key in ("t_p", "wilcoxon_p"))


def write_full_report(runs_folder, output, expected=()):
    """The full-length study's Markdown table (each row: its mean over seeds, and its paired difference to CLIP
    with the 95 % t-interval and the paired tests), the teachers' paired contrasts, the pairing check and the runs
    still missing; the figure beside it."""
    groups = collect(runs_folder)
    if not groups:
        raise SystemExit(f"no finished runs in {runs_folder}")
    finished = [record for records in groups.values() for record in records]
    launchers = sorted({f"{record['threads']} thread(s), {record['launcher']}" for record in finished})
    steps = ", ".join(str(steps) for steps in sorted({record["steps"] for record in finished}))
    clip = groups.get(("CLIP", None), [])
    lines = [
        (
            "Demo corpus, test split (200 images); `configs/demo.yaml` at full length (all 1,000 training images, "
            f"its 16 epochs: {steps} steps of 64 images), no gradient caching, no validation during training, the "
            "final model; "
            "seeds paired (same seed: same initial weights and training batches in every row). Mean over seeds; "
            "Δ: paired difference to CLIP with its 95 % t-interval; p: paired t-test / Wilcoxon signed-rank, "
            f"two-sided. Runs: {'; '.join(launchers)}."
        ),
        "",
        "| loss | teacher | seeds | avg R@K | Δ avg R@K vs CLIP [95 % CI] | p (t / W) | alignment | Δ alignment | "
        "modality gap | Δ gap | plan mass |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row, teacher in FULL_STUDY:
        records = groups.get((row, teacher))
        if not records:
            continue
        cells = [f"{np.mean(list(by_seed(records, m).values())):.{d}f}" for m, d in zip(METRICS, (1, 2, 2, 2))]
        if row == "CLIP":
            deltas = ["-", "-", "-", "-"]
        else:
            difference = {m: paired_difference(by_seed(records, m), by_seed(clip, m)) for m in METRICS[:3]}
            deltas = [
                _difference_cell(difference["avg_R"], 1),
                _p_cell(difference["avg_R"]),
                _difference_cell(difference["alignment"], 2),
                _difference_cell(difference["modality_gap"], 2),
            ]
        lines.append(
            f"| {row} | {teacher or '-'} | {len(records)} | {cells[0]} | {deltas[0]} | {deltas[1]} | {cells[1]} | "
            f"{deltas[2]} | {cells[2]} | {deltas[3]} | {cells[3]} |"
        )
    contrasts = [
        (first, second, paired_difference(by_seed(a, "avg_R"), by_seed(b, "avg_R")))
        for first, second in TEACHER_CONTRASTS
        if (a := groups.get((DEMO_DEFAULT, first))) and (b := groups.get((DEMO_DEFAULT, second)))
    ]
    if contrasts:
        lines += [
            "",
            f"Teachers of the demo default ({DEMO_DEFAULT}), paired by seed:",
            "",
            "| avg R@K of | minus | seeds | Δ [95 % CI] | p (t / W) |",
            "|---|---|---:|---:|---:|",
        ]
        lines += [f"| {a} | {b} | {d['n']} | {_difference_cell(d, 1)} | {_p_cell(d)} |" for a, b, d in contrasts]
    problems = pairing_problems(groups)
    seeds = sorted({record["seed"] for record in finished})
    lines += [
        "",
        (
            f"**Pairing broken for seeds {problems}:** their runs differ in initial weights or training batches."
            if problems
            else f"Pairing checked: the runs of each seed ({len(seeds)} so far) share initial weights and batches."
        ),
    ]
    done = {(record["row"], record["teacher"], record["seed"]) for record in finished}
    missing = [run for run in expected if run not in done]
    if missing:
        by_row = {}
        for row, teacher, seed in missing:
            by_row.setdefault((row, teacher), []).append(str(seed))
        lines += [
            "",
            f"**Partial: {len(finished)} of {len(expected)} runs finished; missing:** "
            + "; ".join(
                f"{row} / {teacher or '-'}: seeds {' '.join(seeds)}" for (row, teacher), seeds in by_row.items()
            ),
        ]
    output = Path(output)
    table = "\n".join(lines) + "\n"
    write_text(output, table)
    plot_full_study(groups, output.with_suffix(".png"))
    print(table)


def plot_full_study(groups, path):
    """Paired differences to CLIP of avg R@K, alignment and modality gap per row: every seed's difference (dots)
    and the mean with its 95 % t-interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clip = groups.get(("CLIP", None), [])
    keys = [key for key in FULL_STUDY if key != ("CLIP", None) and key in groups]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for axis, metric, label in zip(axes, METRICS, ("Δ avg R@K vs CLIP (points)", "Δ alignment", "Δ modality gap")):
        baseline = by_seed(clip, metric)
        for index, key in enumerate(keys):
            values = by_seed(groups[key], metric)
            seeds = sorted(set(values) & set(baseline))
            axis.plot([values[s] - baseline[s] for s in seeds], [index + 0.2] * len(seeds), ".", color="0.6")
            difference = paired_difference(values, baseline)
            if difference["n"]:
                half = np.nan_to_num(difference["high"] - difference["mean"])
                axis.errorbar(difference["mean"], index, xerr=half, fmt="o", color="C0", capsize=3)
        axis.axvline(0, color="k", lw=0.8)
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_yticks(range(len(keys)), [f"{row}\n{teacher or 'no teacher'}" for row, teacher in keys], fontsize=8)
    axes[0].invert_yaxis()
    figure.suptitle("Full-length demo study: paired difference to CLIP (dots: seeds; bars: mean, 95 % t-interval)")
    figure.tight_layout()
    with atomic_write(path) as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)


def write_text(path, text):
    with atomic_write(path) as temporary:
        temporary.write_text(text)


def plot_study(groups, path):
    """Avg R@K, alignment and modality gap per loss, one colour per teacher, with 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in ROWS if any(key[0] == row for key in groups)]
    teachers = [None, *TEACHERS]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for axis, metric, label in zip(axes, METRICS, ("avg R@K (%)", "alignment", "modality gap")):
        for offset, teacher in enumerate(teachers):
            points = [
                (index, *interval([r["metrics"][metric] for r in groups[(row, teacher)]]))
                for index, row in enumerate(rows)
                if (row, teacher) in groups
            ]
            if points:
                index, mean, half = np.array(points).T
                axis.errorbar(
                    mean,
                    index + (offset - 1.5) * 0.15,
                    xerr=np.nan_to_num(half),
                    fmt="o",
                    capsize=3,
                    label=teacher or "no teacher",
                )
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_yticks(range(len(rows)), rows)
    axes[0].invert_yaxis()
    axes[-1].legend(loc="best", fontsize=8)
    figure.suptitle("Demo ablation: mean and 95 % interval over seeds")
    figure.tight_layout()
    with atomic_write(path) as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)


# --------------------------------------------------------------------------------------------------------------
# The paper's suite on UIT-OpenViIC
# --------------------------------------------------------------------------------------------------------------


def run_paper_suite(args):
    """Dedupe reports of KTVIC train and test against UIT-OpenViIC train, the teacher embeddings of UIT-OpenViIC
    train, the seven configs trained on it, each evaluated on `eval.py --suite paper`; every step is skipped when its
    output exists. Writes and prints Avg R@K per evaluation set beside the paper's."""
    import eval as eval_cli
    import train
    from dataset_scripts import dedupe, teacher_embeddings
    from viclip_ot.arguments import read_config
    from viclip_ot.losses import LOSS_TYPES

    root, work = Path(args.data_root), Path(args.work_dir)
    for split in ("train", "test"):
        report = root / "dedup" / f"ktvic-{split}.json"
        if not report.is_file():
            dedupe.main(
                [
                    "--reference-dir",
                    str(root / "uit-openviic"),
                    "--target-corpus",
                    "ktvic",
                    "--target-dir",
                    str(root / "ktvic"),
                    "--target-split",
                    split,
                    "--output",
                    str(report),
                    "--model",
                    str(args.sscd),
                    "--num-workers",
                    "0",
                    "--cache-dir",
                    str(work / "cache"),
                ]
            )
    teacher = work / "teachers" / "uit-openviic-train.safetensors"
    if not teacher.is_file():
        teacher_embeddings.main(
            [
                "--corpus",
                "uit-openviic",
                "--data-dir",
                str(root / "uit-openviic"),
                "--split",
                "train",
                "--teacher",
                args.teacher,
                "--output",
                str(teacher),
            ]
        )
    overrides = [item for pair in args.train_option for item in ("--" + pair[0], pair[1])]
    results = {}
    for row in args.paper_rows:
        folder = work / PAPER_CONFIGS[row]
        config = REPO / "configs" / f"{PAPER_CONFIGS[row]}.yaml"
        evaluation = folder / "evaluation.json"
        if not evaluation.is_file():
            if not (folder / "final" / "config.json").is_file():
                options = ["--data_dir", str(root / "uit-openviic"), "--output_dir", str(folder)]
                if LOSS_TYPES[read_config(config)["loss_type"]].needs_teacher:
                    options += ["--teacher_embeddings", str(teacher)]
                train.main([str(config), *options, *overrides])
            eval_cli.main(
                [
                    "--model",
                    str(folder / "final"),
                    "--suite",
                    "paper",
                    "--data-root",
                    str(root),
                    "--cache-dir",
                    str(work / "cache"),
                    "--output",
                    str(evaluation),
                ]
            )
        results[row] = json.loads(evaluation.read_text())["evaluations"]
    table = paper_table(results)
    write_text(Path(args.output), table)
    print(table)
    return results


def paper_table(results):
    """Avg R@K (ours / the paper's) per evaluation set, alignment and gap on UIT-OpenViIC test."""
    sets = list(next(iter(results.values())))
    lines = [
        "| loss | " + " | ".join(f"{name} Avg R@K (paper)" for name in sets) + " | alignment | modality gap |",
        "|---|" + "---:|" * (len(sets) + 2),
    ]
    for row, evaluations in results.items():
        cells = []
        for name in sets:
            published = PAPER_AVG_R.get(name, {}).get(row)
            cells.append(f"{evaluations[name]['metrics']['avg_R']:.2f}" + (f" ({published:.2f})" if published else ""))
        uit = evaluations[sets[0]]["metrics"]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {uit['alignment']:.3f} | {uit['modality_gap']:.3f} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=["demo", "paper"], default="demo")
    parser.add_argument("--config", default=REPO / "configs" / "demo.yaml", help="demo: the base config")
    parser.add_argument(
        "--rows",
        nargs="+",
        default=list(ROWS)[:-1],
        choices=list(ROWS),
        metavar="ROW",
        help="run in this order (default: all but the last, normalisation alone, left out to fit the study in an hour)",
    )
    parser.add_argument("--teachers", nargs="+", default=list(TEACHERS), choices=list(TEACHERS), metavar="TEACHER")
    parser.add_argument(
        "--study",
        choices=["ablation", "full"],
        default="ablation",
        help="demo: the short ablation (--rows x --teachers) or the full-length paired study (its own rows)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2 (ablation), 0 to 9 (full)")
    parser.add_argument("--epochs", type=float, default=6, help="ablation: training epochs of every run")
    parser.add_argument("--train-images", type=int, default=512, help="ablation: the first N training images")
    parser.add_argument("--logging-steps", type=int, default=8, help="ablation (full: the config's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process when > 1")
    parser.add_argument("--runs", help="one JSON per finished run (default: benchmarks/results/<study>/runs)")
    parser.add_argument("--work-dir", help="teacher files, run folders (default: outputs/<study>)")
    parser.add_argument("--output", help="the Markdown table, the figure beside it (default: results/<study>.md)")
    parser.add_argument("--report-only", action="store_true", help="only write the table and figure")
    paper = parser.add_argument_group("--suite paper")
    paper.add_argument("--data-root", help="holds uit-openviic/, ktvic/, crossmodal3600/ (dedup/ is written there)")
    paper.add_argument(
        "--paper-rows", nargs="+", default=list(PAPER_CONFIGS), choices=list(PAPER_CONFIGS), metavar="ROW"
    )
    paper.add_argument("--teacher", default="Qwen/Qwen3-VL-Embedding-2B", help="teacher model of the graph")
    paper.add_argument("--sscd", default="sscd_disc_mixup.torchscript.pt", help="near-duplicate descriptor")
    paper.add_argument(
        "--train-option",
        nargs=2,
        action="append",
        default=[],
        metavar=("FIELD", "VALUE"),
        help="a train.py option for every config (e.g. num_train_epochs 1)",
    )
    args = parser.parse_args(argv)
    if args.suite == "paper" and not args.data_root:
        parser.error("--suite paper needs --data-root")
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be at least 1")
    name = "ablation-paper" if args.suite == "paper" else args.study
    args.seeds = args.seeds if args.seeds is not None else list(range(10) if args.study == "full" else range(3))
    args.runs = args.runs or RESULTS / args.study / "runs"
    args.work_dir = args.work_dir or REPO / "outputs" / (args.study if args.suite == "demo" else "ablation")
    args.output = args.output or RESULTS / f"{name}.md"
    return args


def main(argv=None):
    args = parse_args(argv)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    if args.suite == "paper":
        return run_paper_suite(args)
    if args.report_only:
        expected = (
            full_study_runs(args.seeds) if args.study == "full" else study_runs(args.rows, args.teachers, args.seeds)
        )
        return report(args, expected)
    return run_study(args)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    run(main, prog="reproduce.py")
