"""The paper's loss ablation (Table 1), in miniature on the demo corpus or in full on UIT-OpenViIC.

    python reproduce.py                                  # demo study: every loss x teacher x seed, resumable
    python reproduce.py --report-only                    # only rebuild the table and figure from the finished runs
    python reproduce.py --suite paper --data-root DIR    # UIT-OpenViIC: dedupe, teacher, seven configs, zero-shot

Demo study: every row of Table 1 that needs no external model (CLIP, SigLIP, CLIP+UOT, SigLIP+UOT, SIGROT,
ViCLIP-OT, ViSigLIP-OT) plus the SIGROT variants of `viclip_ot.losses`, trained with `configs/demo.yaml`'s towers
and optimiser for `--epochs` epochs (the same for every row), on the demo's test split, for three teachers: the
shipped MiniLM file, a perfect teacher (each image's one-hot scene factors: count, shape, colour, position,
background; its captions carry its row) and that teacher with Gaussian noise. Each finished run is one JSON file in
`--runs`; a rerun skips them. The table (mean and 95 % t-interval over seeds of avg R@K, alignment, modality gap and
the last training interval's plan row mass) goes to `benchmarks/results/ablation.md`, the figure beside it.
"""

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from dataset_scripts._common import atomic_write
from viclip_ot.cli import run

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
METRICS = ("avg_R", "alignment", "modality_gap", "plan_row_mass")

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


def scene_factor_teacher(noise=0.0, seed=0):
    """A teacher file for the demo's train split whose rows are each image's scene factors, one-hot and normalised
    (`noise` > 0: plus N(0, noise^2) per dimension, drawn independently for the image and for each caption, then
    normalised again); every caption carries its image's row."""
    from dataset_scripts.demo import BACKGROUNDS, COLOURS, COUNTS, POSITIONS, SHAPES, DemoConfig, make_scene
    from dataset_scripts.teacher_embeddings import TeacherEmbeddings, corpus_fingerprint

    config = DemoConfig(name="default")
    factors = {
        "count": list(COUNTS),
        "shape": list(SHAPES),
        "colour": list(COLOURS),
        "position": list(POSITIONS),
        "background": list(BACKGROUNDS),
    }
    offsets = np.cumsum([0] + [len(values) for values in factors.values()])
    rng = np.random.default_rng([config.seed, 0])  # the demo builder's generator of the train split
    codes, image_ids, captions = [], [], []
    for row in range(config.train_size):
        _, scene_captions, scene = make_scene(rng, config.image_size)
        code = np.zeros(offsets[-1])
        for offset, (name, values) in zip(offsets, factors.items()):
            code[offset + values.index(scene[name])] = 1
        codes.append(code / np.linalg.norm(code))
        image_ids.append(f"train-{row:05d}")
        captions.append(scene_captions)
    counts = [len(texts) for texts in captions]
    image_rows = torch.tensor(np.array(codes), dtype=torch.float32)
    text_rows = image_rows.repeat_interleave(torch.tensor(counts), dim=0)
    if noise:
        generator = torch.Generator().manual_seed(seed)
        image_rows = image_rows + noise * torch.randn(image_rows.shape, generator=generator)
        text_rows = text_rows + noise * torch.randn(text_rows.shape, generator=generator)
    metadata = {
        "teacher": f"scene factors, noise {noise}",
        "corpus": "demo",
        "split": "train",
        "corpus_fingerprint": corpus_fingerprint(image_ids, captions),
    }
    return TeacherEmbeddings(
        torch.nn.functional.normalize(image_rows, dim=-1),
        torch.nn.functional.normalize(text_rows, dim=-1),
        image_ids,
        torch.tensor(counts),
        metadata,
    )


def teacher_files(folder):
    """The three teachers' files (the shipped one in place, the others written to `folder` once)."""
    folder = Path(folder)
    files = {TEACHERS[0]: REPO / "assets" / "demo-teacher-train.safetensors"}
    for name, noise in ((TEACHERS[1], 0.0), (TEACHERS[2], TEACHER_NOISE)):
        path = folder / f"teacher-{name.replace(' + ', '-').replace(' ', '-')}.safetensors"
        if not path.is_file():
            scene_factor_teacher(noise).save(path)
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


def run_path(runs_folder, row, teacher, seed):
    slug = "".join(c if c.isalnum() else "-" for c in f"{row}--{teacher or 'none'}").lower()
    return Path(runs_folder) / f"{slug}--seed{seed}.json"


def train_run(config, options, output_dir):
    """Train `config` with `options` (field -> value, None included) through `train.main`, from a config file in
    `output_dir` based on `config`; the test metrics after training and the last training diagnostics, one dict."""
    import yaml

    import train

    run_config = Path(output_dir) / "run.yaml"
    run_config.write_text(yaml.safe_dump({"base": str(Path(config).resolve()), **options}))
    results = train.main([str(run_config), "--output_dir", str(output_dir)])
    after = {key.removeprefix("test_"): value for key, value in results["after training"].items()}
    return {**after, **results["last training diagnostics"]}


def run_study(args):
    from tqdm.auto import tqdm

    torch.set_num_threads(args.threads)
    runs_folder, work = Path(args.runs), Path(args.work_dir)
    runs_folder.mkdir(parents=True, exist_ok=True)
    teachers = teacher_files(work)
    common = {
        "num_train_epochs": args.epochs,
        "max_train_images": args.train_images,
        "gradcache_chunk_size": 0,
        "eval_strategy": "no",
        "save_strategy": "no",
        "load_best_model_at_end": False,
        "logging_steps": args.logging_steps,
        "disable_tqdm": True,
    }
    todo = [
        run for run in study_runs(args.rows, args.teachers, args.seeds) if not run_path(runs_folder, *run).is_file()
    ]
    for row, teacher, seed in tqdm(todo, desc="ablation runs"):
        options = {**common, **PAPER_LOSS, **ROWS[row], "seed": seed}
        if teacher is not None:
            options["teacher_embeddings"] = str(teachers[teacher])
        output_dir = Path(tempfile.mkdtemp(dir=work))
        start = time.perf_counter()
        metrics = train_run(args.config, options, output_dir)
        record = {
            "row": row,
            "teacher": teacher,
            "seed": seed,
            "epochs": args.epochs,
            "train_images": args.train_images,
            "options": ROWS[row],
            "seconds": round(time.perf_counter() - start, 1),
            "metrics": metrics,
        }
        shutil.rmtree(output_dir)
        write_json(run_path(runs_folder, row, teacher, seed), record)
    write_report(runs_folder, args.output, study_runs(args.rows, args.teachers, args.seeds))


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
    import eval as evaluate
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
            evaluate.main(
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
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=6, help="demo: training epochs of every run")
    parser.add_argument("--train-images", type=int, default=512, help="demo: the first N training images")
    parser.add_argument("--logging-steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    parser.add_argument("--runs", default=RESULTS / "ablation" / "runs", help="one JSON per finished run")
    parser.add_argument("--work-dir", default=REPO / "outputs" / "ablation", help="teacher files, run folders")
    parser.add_argument("--output", default=RESULTS / "ablation.md", help="the Markdown table (figure: .png)")
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
    if args.suite == "paper" and args.output == parser.get_default("output"):
        args.output = RESULTS / "ablation-paper.md"
    return args


def main(argv=None):
    args = parse_args(argv)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    if args.suite == "paper":
        return run_paper_suite(args)
    if args.report_only:
        return write_report(args.runs, args.output, study_runs(args.rows, args.teachers, args.seeds))
    return run_study(args)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    run(main, prog="reproduce.py")
