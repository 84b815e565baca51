"""Statistics across seeds.

- One row: mean, sample std, and the Student-t 95 % CI of the mean, cut to [0, 100] (a top-1 mean lies there, so
  the cut interval covers it exactly as often as the uncut one).
- Two rows (``zsqbench compare``): Welch's t or Mann-Whitney U, Holm's step-down correction over a family.
- A table (``leaderboard build|show``, the page, the validator): every pair of rows by the Games-Howell test, a
  compact letter display, and each row's rank interval from a bootstrap over its seeds. docs/statistics.md says why
  these and not others.
"""
from __future__ import annotations

import math
import statistics
import warnings
from itertools import combinations

TESTS = ("welch", "mannwhitney")
TOP1_RANGE = (0.0, 100.0)


def mean(values):
    return statistics.fmean(values) if values else None


def ci_half_width(values: list[float], level: float = 0.95) -> float | None:
    """Half-width of the Student-t interval of the mean (n-1 dof); None below two values."""
    n = len(values)
    if n < 2:
        return None
    from scipy import stats
    return float(stats.t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)


def summarize(values: list[float]) -> dict:
    """mean, sample std (ddof=1) and the 95 % confidence interval of the mean (Student t, n-1 dof, cut to the
    range a top-1 can take). std and CI are None below two values."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "ci95": None}
    m = statistics.fmean(values)
    if n < 2:
        return {"mean": m, "std": None, "ci95": None}
    half = ci_half_width(values)
    lo, hi = TOP1_RANGE
    return {"mean": m, "std": statistics.stdev(values), "ci95": [max(lo, m - half), min(hi, m + half)]}


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


# --- a table: all pairs, letters, rank intervals -------------------------------------------------------------

def games_howell(a: list[float], b: list[float], k: int) -> float:
    """Games-Howell p-value for rows a and b in a family of k rows (each with >= 2 values): Welch's standard error
    and Welch-Satterthwaite dof, referred to the studentized range of k means, so that all k(k-1)/2 pairs together
    keep the family-wise error rate at alpha without assuming equal variances or equal n."""
    from scipy import stats
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = abs(statistics.fmean(a) - statistics.fmean(b))
    if va + vb == 0:  # two constant rows (e.g. the FP teacher against itself): decide exactly
        return 1.0 if diff == 0 else 0.0
    dof = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1) if va else 0.0) + (vb ** 2 / (len(b) - 1) if vb else 0.0))
    q = diff / math.sqrt(va + vb) * math.sqrt(2)
    with warnings.catch_warnings():  # integration accuracy warnings at extreme q: the p-value is still usable
        warnings.simplefilter("ignore")
        p = float(stats.studentized_range.sf(q, max(k, 2), dof))
    return min(1.0, max(0.0, 1.0 if math.isnan(p) else p))


def compact_letters(names: list[str], separated: set[frozenset]) -> dict[str, str]:
    """A compact letter display (Piepho's insert-and-absorb): rows that share a letter are not separated, and every
    two rows that are not separated share one. ``names`` best first; 'a' goes to the group of the best row."""
    columns = [set(names)]
    for pair in separated:
        i, j = tuple(pair)
        split = []
        for col in columns:
            if i in col and j in col:
                split += [col - {i}, col - {j}]
            else:
                split.append(col)
        # absorb: a column inside another says nothing more
        columns = [c for n, c in enumerate(split)
                   if c and not any(c < d or (c == d and m < n) for m, d in enumerate(split))]
    order = {name: n for n, name in enumerate(names)}
    columns.sort(key=lambda c: sorted(order[x] for x in c))
    letters = {name: "" for name in names}
    for n, col in enumerate(columns):
        for name in col:
            letters[name] += _letter(n)
    return letters


def _letter(n: int) -> str:
    """a … z, then (aa), (ab), …: one token per group, so a row's letters read unambiguously."""
    out = ""
    n += 1
    while n:
        n, rest = divmod(n - 1, 26)
        out = chr(ord("a") + rest) + out
    return out if len(out) == 1 else f"({out})"


def bootstrap_means(samples: dict[str, list[float]], resamples: int, seed: int):
    """(resamples x rows) means: every resample draws each row's values with replacement. Seeded."""
    import numpy as np
    rng = np.random.default_rng(seed)
    means = np.empty((resamples, len(samples)))
    for j, values in enumerate(samples.values()):
        values = np.asarray(values, dtype=float)
        draws = rng.integers(0, len(values), size=(resamples, len(values)))
        means[:, j] = values[draws].mean(axis=1)
    return means


def rank_intervals(samples: dict[str, list[float]], resamples: int, seed: int,
                   level: float = 0.95) -> dict[str, list[int]]:
    """Each row's rank (1 = best mean) in a bootstrap over its own seeds: every resample ranks the rows' means
    (ties take the better rank), and the row's interval is the central ``level`` of its ranks. Seeded, so the
    validator gets the same intervals."""
    import numpy as np
    from scipy.stats import rankdata
    if not samples:
        return {}
    ranks = rankdata(-bootstrap_means(samples, resamples, seed), method="min", axis=1)
    tail = (1 - level) / 2
    lo = np.quantile(ranks, tail, axis=0, method="lower")
    hi = np.quantile(ranks, 1 - tail, axis=0, method="higher")
    return {name: [int(lo[j]), int(hi[j])] for j, name in enumerate(samples)}


def rank_stability(samples: dict[str, list[float]], resamples: int, seed: int) -> float | None:
    """Mean Kendall tau between the rows' ranking in each bootstrap resample and their observed ranking (1: every
    resample ranks them alike; near 0: the order is seed noise). None below three rows."""
    import numpy as np
    from scipy.stats import kendalltau
    if len(samples) < 3:
        return None
    observed = [statistics.fmean(v) for v in samples.values()]
    taus = [kendalltau(observed, row).statistic for row in bootstrap_means(samples, resamples, seed)]
    taus = [t for t in taus if not math.isnan(t)]
    return float(np.mean(taus)) if taus else None


def kendall_tau(ours: list[float], theirs: list[float]) -> dict | None:
    """Kendall tau (and its two-sided p) between two orderings of the same rows; None below three rows."""
    from scipy.stats import kendalltau
    if len(ours) < 3:
        return None
    result = kendalltau(ours, theirs)
    if math.isnan(result.statistic):
        return None
    return {"tau": float(result.statistic), "p": float(result.pvalue), "n": len(ours)}


def table_statistics(rows: dict[str, list[float]], alpha: float, resamples: int, seed: int) -> dict:
    """All pairs of a table's rows with >= 2 values (Games-Howell), their letters and rank intervals. ``rows`` maps a
    row's name to its values, best mean first. Rows with fewer than two values are left out (no test can place
    them)."""
    family = {name: v for name, v in rows.items() if len(v) >= 2}
    names = list(family)
    k = len(names)
    pairs = []
    for a, b in combinations(names, 2):
        p = games_howell(family[a], family[b], k)
        pairs.append({"a": a, "b": b, "delta": statistics.fmean(family[a]) - statistics.fmean(family[b]),
                      "p": p, "differs": p < alpha})
    separated = {frozenset((q["a"], q["b"])) for q in pairs if q["differs"]}
    return {"rows": names, "pairs": pairs, "letters": compact_letters(names, separated),
            "rank_intervals": rank_intervals(family, resamples, seed),
            "rank_stability": rank_stability(family, resamples, seed)}
