"""The studies' figures: the ablation's means with their intervals per loss and teacher, the full study's paired
differences to CLIP."""

import numpy as np

from viclip_ot.files import atomic_write

from .design import FULL_STUDY, ROWS, STUDY_METRICS
from .statistics import by_seed, interval, paired_difference
from .teachers import TEACHERS


def _three_panels():
    """A figure of three panels side by side sharing their y axis (matplotlib, the `plots` extra, imported here so
    that the tables need it only when they draw)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 4.5))
    return figure, figure.subplots(1, 3, sharey=True)


def _save(figure, path):
    with atomic_write(path) as temporary:
        figure.savefig(temporary, dpi=110, format="png")


def plot_study(groups, path):
    """Avg R@K, alignment and modality gap per loss, one colour per teacher, with 95 % intervals."""
    rows = [row for row in ROWS if any(key[0] == row for key in groups)]
    teachers = [None, *TEACHERS]
    figure, axes = _three_panels()
    for axis, metric, label in zip(axes, STUDY_METRICS, ("avg R@K (%)", "alignment", "modality gap")):
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
    _save(figure, path)


def plot_full_study(groups, path):
    """Paired differences to CLIP of avg R@K, alignment and modality gap per row: every seed's difference (dots)
    and the mean with its 95 % t-interval."""
    clip = groups.get(("CLIP", None), [])
    keys = [key for key in FULL_STUDY if key != ("CLIP", None) and key in groups]
    figure, axes = _three_panels()
    for axis, metric, label in zip(
        axes, STUDY_METRICS, ("Δ avg R@K vs CLIP (points)", "Δ alignment", "Δ modality gap")
    ):
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
    _save(figure, path)
