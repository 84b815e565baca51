"""Statistics across seeds: mean, sample std, t-based 95 % CI; Welch / Mann-Whitney tests between two rows; Holm's
step-down correction for a family of tests."""
from __future__ import annotations

import math
import statistics
import warnings

TESTS = ("welch", "mannwhitney")


def mean(values):
    return statistics.fmean(values) if values else None


def summarize(values: list[float]) -> dict:
    """mean, sample std (ddof=1) and the 95 % confidence interval of the mean (Student t, n-1 dof).
    std and CI are None below two values."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "ci95": None}
    m = statistics.fmean(values)
    if n < 2:
        return {"mean": m, "std": None, "ci95": None}
    from scipy import stats
    s = statistics.stdev(values)
    half = float(stats.t.ppf(0.975, n - 1)) * s / math.sqrt(n)
    return {"mean": m, "std": s, "ci95": [m - half, m + half]}


def pvalue(a: list[float], b: list[float], test: str = "welch") -> float | None:
    """Two-sided p-value that a and b come from the same distribution; None when a side has < 2 values."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats
    if test == "welch":
        if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:  # t undefined: decide exactly
            return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
        fn = lambda: stats.ttest_ind(a, b, equal_var=False)  # noqa: E731
    elif test == "mannwhitney":
        fn = lambda: stats.mannwhitneyu(a, b, alternative="two-sided")  # noqa: E731
    else:
        raise ValueError(f"unknown test {test!r}")
    with warnings.catch_warnings():  # "nearly identical data" precision warnings: the p-value is still usable
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(fn().pvalue)
    return 1.0 if math.isnan(p) else p


def min_pvalue(n_a: int, n_b: int, test: str) -> float:
    """Smallest p a test can give for these sample sizes (exact Mann-Whitney: 2 / C(n_a+n_b, n_a))."""
    if test == "mannwhitney" and n_a >= 1 and n_b >= 1:
        return min(1.0, 2 / math.comb(n_a + n_b, n_a))
    return 0.0


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): the i-th smallest p times (m - i), made monotone.
    Rejecting where the adjusted p < alpha controls the family-wise error rate at alpha."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
