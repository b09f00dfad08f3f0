"""The studies' Markdown tables, written atomically beside their figures: the ablation (mean and interval per
row and teacher), the full study (paired differences to CLIP and between teachers, the pairing check) and the
paper's suite (Avg R@K beside the published numbers)."""

import math
from pathlib import Path

import numpy as np

from viclip_ot.files import write_text
from viclip_ot.losses import LOSS_TYPES

from .design import DEMO_DEFAULT, FULL_STUDY, PAPER_AVG_R, ROWS, STUDY_METRICS, TEACHER_CONTRASTS
from .figures import plot_full_study, plot_study
from .runs import collect
from .statistics import by_seed, interval, paired_difference, pairing_problems
from .teachers import TEACHERS


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
        for metric in STUDY_METRICS:
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
        cells = [f"{np.mean(list(by_seed(records, m).values())):.{d}f}" for m, d in zip(STUDY_METRICS, (1, 2, 2, 2))]
        if LOSS_TYPES[ROWS[row]["loss_type"]].transport is None:
            cells[3] = "-"  # the plan's row mass: a diagnostic of the transport losses only
        if row == "CLIP":
            deltas = ["-", "-", "-", "-"]
        else:
            difference = {m: paired_difference(by_seed(records, m), by_seed(clip, m)) for m in STUDY_METRICS[:3]}
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
