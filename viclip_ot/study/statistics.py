"""Statistics over seeds: the 95 % t-interval of a mean, paired differences with the paired t-test and the Wilcoxon
signed-rank test (scipy's), and the check that a seed's runs were paired."""

import numpy as np
from scipy import stats


def interval(values):
    """Mean and the half-width of its 95 % t-interval (nan with one value)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(stats.t.ppf(0.975, len(values) - 1) * stats.sem(values))


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
    """{seed: the metric} of the result records of one (row, teacher)."""
    return {record["seed"]: record["metrics"].get(metric, float("nan")) for record in records}


def pairing_problems(groups):
    """Seeds whose runs do not share initial weights and training batches (`runs.PairingFingerprint`)."""
    seeds = {}
    for records in groups.values():
        for record in records:
            seeds.setdefault(record["seed"], set()).add(tuple(record["pairing"].values()))
    return sorted(seed for seed, fingerprints in seeds.items() if len(fingerprints) > 1)
