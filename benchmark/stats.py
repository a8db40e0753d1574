"""Paired bootstrap statistics for comparing entries on the same evaluation examples, and claim verdicts.

    from benchmark import stats
    d = stats.paired_difference(a, b)              # a, b: [seeds, examples] per-example scores of two entries
    d.mean, d.low, d.high, d.p_value               # mean of a - b, its 95 % interval, two-sided p
    stats.bootstrap_mean_interval(a)               # one entry's mean and 95 % interval (for tables: mean [low, high])
    stats.holm([0.01, 0.04, 0.03])                 # -> [0.03, 0.06, 0.06] (Holm-adjusted, same order)
    stats.verdict([d1, d2], [+1, -1])              # "holds" | "contradicted" | "inconclusive"
    stats.assess_claim([d1, d2], [+1, -1])         # the same, with adjusted p-values and Holm-level intervals
    stats.relative_gain_difference(a1, a0, b1, b0, shared_examples=False)  # gain(a1 over a0) - gain(b1 over b0)

Method. The resampling unit is the evaluation example, the thing two entries are paired on: each example's
difference a - b is first averaged over the seeds (seeds are repeated measurements of the same example, not
independent units), then the examples are resampled with replacement (`n_resamples` times, numpy's
`default_rng(seed)`) and the percentile bootstrap interval of the mean is read off the resampled means (Efron, B. &
Tibshirani, R. J. (1993), *An Introduction to the Bootstrap*, Chapman & Hall, ch. 13). The interval's end points are
the order statistics T*_(k) and T*_(B+1-k), k = floor((B+1) * (1 - level) / 2), of the B resampled means (if k < 1,
too few resamples for that level, the interval is (-inf, inf)).

p-value. Two-sided, obtained by inverting that same percentile interval (a bootstrap achieved significance level,
cf. Efron & Tibshirani 1993, ch. 16; not a null-centred resampling and not a sign-flip permutation test):

    p = min(1, 2 * min(#{T* <= 0} + 1, #{T* >= 0} + 1) / (B + 1))

i.e. twice the bootstrap mass on the far side of zero, with the +1 correction that counts the observed sample as one
of the resamples (so p >= 2 / (B + 1), never 0). It is chosen over a null-centred bootstrap or a sign-flip test
because it makes the interval and the test one statement: for every gamma, the (1 - gamma) interval excludes 0
exactly when p <= gamma. That is what lets `assess_claim` report intervals that agree with its Holm decisions.

Exact cases. Identical inputs give mean 0, interval [0, 0] and p = 1.0; a constant difference c (a - b == c at every
seed and example) gives mean c, interval [c, c] and the minimal p = 2 / (B + 1). Averages are taken as
ref + mean(x - ref) with ref an element of x, so a constant array averages to itself in float64 (np.mean([0.1] * 3)
is 0.10000000000000002; this is 0.1).

Perplexity. Compare per-example log-perplexities (the per-example mean token NLL, `log_perplexity(nll_sum,
n_tokens)`), never per-example perplexities: exp() of a few degenerate samples (repetition loops, empty outputs)
reaches the thousands and would decide the mean on its own, while the log stays on the scale of the other examples.
The difference of mean log-perplexities is the log of the ratio of geometric-mean perplexities.

Multiple relations. A claim is several relations between entries (A beats B and C beats D ...); `assess_claim` and
`verdict` test them together with Holm's step-down correction (Holm, S. (1979), "A simple sequentially rejective
multiple test procedure", Scandinavian Journal of Statistics 6(2), 65-70), which keeps the chance of calling any
true-null relation significant below alpha.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = [
    "MeanInterval",
    "PairedDifference",
    "ClaimAssessment",
    "VERDICTS",
    "assess_claim",
    "bootstrap_mean_interval",
    "holm",
    "holm_intervals",
    "log_perplexity",
    "paired_difference",
    "relative_gain_difference",
    "verdict",
]

VERDICTS = ("holds", "contradicted", "inconclusive")

# Resamples are drawn in chunks of at most this many [resample, example] cells (an int64 index and a float64 value
# each: 64 MiB at 2**22). Chunked draws from one Generator give the same indices as one big draw, so the result does
# not depend on the chunk size (tested).
_MAX_CHUNK_CELLS = 2**22

# Relative slack on "p <= gamma" and on the order-statistic rank, applied identically to both so that a p-value
# exactly on a level (2c/(B+1) == gamma, e.g. B = 9999, gamma = 0.05) is decided the same way by the test and by the
# interval, whatever the float rounding of the two computations.
_SLACK = 1e-12


# --------------------------------------------------------------------------------------------------------------
# Input checks and exact averaging
# --------------------------------------------------------------------------------------------------------------


def _as_2d(x, name: str) -> np.ndarray:
    """`x` as float64 [seeds, examples]; 1-D input is one seed."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [seeds, examples] (or [examples] for one seed); got shape {arr.shape}")
    return arr


def _check_scores(arr: np.ndarray, name: str) -> None:
    """Raise ValueError on an empty array, NaN or infinite values (with a location), or fewer than two examples."""
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}): need at least one seed and two examples")
    for bad, what in ((np.isnan(arr), "NaN"), (np.isinf(arr), "infinite")):
        count = int(bad.sum())
        if count:
            seed, example = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name} has {count} {what} value{'s' if count > 1 else ''} (e.g. seed {seed}, example {example}): "
                "drop or impute them before comparing"
            )
    if arr.shape[1] < 2:
        raise ValueError(f"{name} has {arr.shape[1]} example (shape {arr.shape}): resampling needs at least two")


def _as_scores(x, name: str) -> np.ndarray:
    """`x` as float64 [seeds, examples], checked (`_check_scores`)."""
    arr = _as_2d(x, name)
    _check_scores(arr, name)
    return arr


def _exact_mean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean along `axis` computed as ref + mean(x - ref), ref the first element along `axis`: equal to np.mean up to
    rounding, and exactly c for a constant array c (np.mean([0.1] * 3) == 0.10000000000000002)."""
    ref = np.take(x, [0], axis=axis)
    return np.squeeze(ref, axis=axis) + np.mean(x - ref, axis=axis)


def _check_bootstrap_args(n_resamples: int, level: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level!r}")


# --------------------------------------------------------------------------------------------------------------
# The shared bootstrap
# --------------------------------------------------------------------------------------------------------------


def _resampled_means(per_example: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Sorted means of `n_resamples` resamples (with replacement) of the 1-D `per_example`, read-only.

    One [n_resamples, n_examples] index matrix from default_rng(seed), drawn in chunks of at most _MAX_CHUNK_CELLS
    cells. Each resample's mean is ref + mean(x[idx] - ref): a constant `per_example` gives exactly that constant.
    """
    n = per_example.shape[0]
    ref = per_example[0]
    centred = per_example - ref
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CHUNK_CELLS // n)
    out = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = ref + centred[idx].mean(axis=1)
    out.sort()
    out.setflags(write=False)
    return out


def _rank(n_resamples: int, gamma: float) -> int:
    """k = floor((B + 1) * gamma / 2), the 1-based rank of the lower end of the (1 - gamma) percentile interval."""
    return math.floor((n_resamples + 1) * gamma / 2 * (1 + _SLACK))


def _interval(sorted_means: np.ndarray, level: float) -> tuple[float, float]:
    """The (level) percentile interval [T*_(k), T*_(B+1-k)] from sorted resampled means; (-inf, inf) if k < 1."""
    b = sorted_means.shape[0]
    k = _rank(b, 1.0 - level)
    if k < 1:
        return -math.inf, math.inf
    return float(sorted_means[k - 1]), float(sorted_means[b - k])


def _two_sided_p(sorted_means: np.ndarray) -> tuple[float, int]:
    """(p, direction): p = min(1, 2 * min(#{T* <= 0} + 1, #{T* >= 0} + 1) / (B + 1)); direction +1 when fewer
    resampled means are <= 0 than >= 0 (the distribution lies above zero), -1 for the reverse, 0 on a tie."""
    b = sorted_means.shape[0]
    at_or_below = int(np.searchsorted(sorted_means, 0.0, side="right"))
    at_or_above = b - int(np.searchsorted(sorted_means, 0.0, side="left"))
    c = min(at_or_below, at_or_above) + 1
    direction = (at_or_below < at_or_above) - (at_or_above < at_or_below)
    return min(1.0, 2.0 * c / (b + 1)), direction


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedDifference:
    """The paired comparison of two entries on the same examples (`paired_difference(a, b)`).

    mean: mean of a - b over seeds and examples. low, high: the `level` (95 %) percentile bootstrap interval of that
    mean, examples resampled. p_value: two-sided, the smallest gamma at which the (1 - gamma) interval excludes 0.
    direction: +1 if the bootstrap distribution lies mostly above 0, -1 if below, 0 on a tie; whenever an interval
    of any level excludes 0, it lies on this side. resampled: the sorted resampled means (read-only, not part of
    repr, equality or `to_dict`); `interval(level)` reads other levels from it.
    """

    mean: float
    low: float
    high: float
    p_value: float
    n_examples: int
    n_seeds: int
    n_resamples: int
    level: float = 0.95
    direction: int = 0
    resampled: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def excludes_zero(self) -> bool:
        """True when the interval [low, high] lies strictly on one side of 0 (equivalently p_value <= 1 - level)."""
        return self.low > 0 or self.high < 0

    @property
    def sign(self) -> int:
        """+1 if the interval lies above 0 (a > b), -1 if below (a < b), 0 if it contains 0."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    def interval(self, level: float) -> tuple[float, float]:
        """The percentile interval at another `level` from the stored resamples, e.g. d.interval(0.99)."""
        if self.resampled is None:
            raise ValueError("this PairedDifference carries no resamples (built by hand?): rerun paired_difference")
        _check_bootstrap_args(self.n_resamples, level)
        return _interval(self.resampled, level)

    def to_dict(self) -> dict:
        """Plain JSON-able fields (no resamples): mean, low, high, p_value, n_examples, n_seeds, n_resamples, level,
        direction."""
        out = asdict(self)
        del out["resampled"]
        return out


@dataclass(frozen=True)
class MeanInterval:
    """One entry's mean over seeds and examples and its `level` percentile bootstrap interval, examples resampled
    (`bootstrap_mean_interval(x)`). `str(m)` is "mean [low, high]" to two decimals; `m.format(1)` to one."""

    mean: float
    low: float
    high: float
    n_examples: int
    n_seeds: int
    n_resamples: int
    level: float = 0.95

    def format(self, digits: int = 2) -> str:
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def __str__(self) -> str:
        return self.format()

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------------------


def log_perplexity(nll_sum, n_tokens) -> np.ndarray:
    """Per-example log-perplexity = summed token NLL (nats) / number of scored tokens, elementwise, float64.

    What perplexity comparisons pass to `paired_difference`: `log_perplexity(nll, tokens)` with both of shape
    [seeds, examples] (or [examples]). exp() of it is the example's perplexity; exp() of a mean difference is the
    ratio of geometric-mean perplexities. log_perplexity([6.0, 3.0], [3, 2]) -> array([2. , 1.5]).
    Raises ValueError if shapes differ or any token count is not positive.
    """
    nll = np.asarray(nll_sum, dtype=np.float64)
    tokens = np.asarray(n_tokens, dtype=np.float64)
    if nll.shape != tokens.shape:
        raise ValueError(f"nll_sum and n_tokens must have the same shape; got {nll.shape} and {tokens.shape}")
    bad = ~(tokens > 0)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.ndim else ()
        raise ValueError(
            f"n_tokens has {int(bad.sum())} non-positive or NaN count(s) (e.g. at index {where}): an example with no "
            "scored tokens has no perplexity; drop it from both entries"
        )
    return nll / tokens


def paired_difference(a, b, *, n_resamples: int = 10000, seed: int = 0, level: float = 0.95) -> PairedDifference:
    """Paired bootstrap comparison of entry `a` against entry `b` on the same examples.

    a, b: per-example scores, shape [seeds, examples] (or [examples] for one seed), the same examples in the same
    order (ROUGE-L per example; for perplexity, `log_perplexity` per example). Each example's difference a - b is
    averaged over the seeds, then the examples are resampled `n_resamples` times with default_rng(seed).

    Returns PairedDifference(mean, low, high, p_value, n_examples, n_seeds, n_resamples, level, direction):

        paired_difference(x, x)            -> mean 0.0, low = high = 0.0, p_value 1.0
        paired_difference(b + c, b)        -> mean c, low = high = c, p_value 2 / (n_resamples + 1)  (a - b == c)
        paired_difference(a, b).low > 0    -> a scores higher than b at the 95 % level (p_value <= 0.05)

    Raises ValueError on shapes that differ, empty input, fewer than two examples, NaN or infinite values (naming a
    location), or a bad n_resamples / level. Same inputs and seed give the same result, bit for bit.
    """
    _check_bootstrap_args(n_resamples, level)
    x, y = _as_2d(a, "a"), _as_2d(b, "b")
    if x.shape != y.shape:
        raise ValueError(
            f"a and b must hold the same [seeds, examples]; got {np.shape(a)} and {np.shape(b)} (as [seeds, examples]:"
            f" {x.shape} and {y.shape})"
        )
    _check_scores(x, "a")
    _check_scores(y, "b")
    per_example = _exact_mean(x - y, axis=0)
    means = _resampled_means(per_example, n_resamples, seed)
    low, high = _interval(means, level)
    p, direction = _two_sided_p(means)
    return PairedDifference(
        mean=float(_exact_mean(per_example, axis=0)),
        low=low,
        high=high,
        p_value=p,
        n_examples=x.shape[1],
        n_seeds=x.shape[0],
        n_resamples=n_resamples,
        level=level,
        direction=direction,
        resampled=means,
    )


def bootstrap_mean_interval(x, *, n_resamples: int = 10000, seed: int = 0, level: float = 0.95) -> MeanInterval:
    """One entry's mean over seeds and examples with its `level` percentile bootstrap interval (examples resampled,
    each example averaged over seeds first; the same resampling as `paired_difference`).

    x: [seeds, examples] or [examples]. bootstrap_mean_interval(np.full((5, 100), 0.3)) -> mean 0.3, [0.3, 0.3];
    str(bootstrap_mean_interval(x)) -> e.g. "24.10 [23.62, 24.57]" for a table cell. Raises as `paired_difference`.
    """
    _check_bootstrap_args(n_resamples, level)
    arr = _as_scores(x, "x")
    per_example = _exact_mean(arr, axis=0)
    means = _resampled_means(per_example, n_resamples, seed)
    low, high = _interval(means, level)
    return MeanInterval(
        mean=float(_exact_mean(per_example, axis=0)),
        low=low,
        high=high,
        n_examples=arr.shape[1],
        n_seeds=arr.shape[0],
        n_resamples=n_resamples,
        level=level,
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm (1979) step-down adjusted p-values, in the input order.

    With p sorted ascending p_(1) <= ... <= p_(m): adj_(i) = min(1, max_{j <= i} (m - j + 1) * p_(j)) (monotone in
    the sorted order, capped at 1). Rejecting every hypothesis whose adjusted p is <= alpha is Holm's procedure at
    family-wise level alpha. holm([0.01, 0.04, 0.03]) -> [0.03, 0.06, 0.06]; holm([]) -> [].
    Raises ValueError on a value outside [0, 1] or NaN.
    """
    p = [float(v) for v in p_values]
    bad = [v for v in p if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"p-values must lie in [0, 1]; got {bad}")
    m = len(p)
    order = sorted(range(m), key=p.__getitem__)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class ClaimAssessment:
    """A claim's relations tested together (`assess_claim`).

    verdict: "holds" | "contradicted" | "inconclusive". p_values / adjusted: raw and Holm-adjusted p per relation.
    significant: adjusted p <= alpha. levels / intervals: each relation's Holm interval (see `holm_intervals`); a
    relation is significant exactly when its interval excludes 0, and then lies on the side given by its direction.
    """

    verdict: str
    alpha: float
    claimed_signs: tuple[int, ...]
    p_values: tuple[float, ...]
    adjusted: tuple[float, ...]
    significant: tuple[bool, ...]
    directions: tuple[int, ...]
    levels: tuple[float, ...]
    intervals: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["intervals"] = [list(iv) for iv in self.intervals]
        for k in ("claimed_signs", "p_values", "adjusted", "significant", "directions", "levels"):
            out[k] = list(out[k])
        return out


def _holm_levels(p_values: Sequence[float], alpha: float) -> list[float]:
    """Each relation's Holm step-down test level gamma_i: alpha / (m - r + 1) at its rank r (ascending p), except that
    from the first non-rejected rank s on, every relation keeps s's level alpha / (m - s + 1) (the procedure stops
    there). Relation i is rejected by Holm (adjusted p <= alpha) exactly when p_i <= gamma_i."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    levels = [0.0] * m
    stopped: float | None = None
    for rank, i in enumerate(order):
        gamma = alpha / (m - rank) if stopped is None else stopped
        if stopped is None and p_values[i] > gamma * (1 + _SLACK):
            stopped = gamma
        levels[i] = gamma
    return levels


def holm_intervals(diffs: Sequence[PairedDifference], alpha: float = 0.05) -> list[tuple[float, float, float]]:
    """(level, low, high) per relation: each difference's percentile interval at Holm's step-down confidence level
    1 - gamma_i (gamma_i = alpha / (m - r + 1) at p-rank r, frozen at the first rank Holm does not reject).

    Because the p-value is the inverse of the percentile interval (the (1 - gamma) interval excludes 0 iff p <=
    gamma), each of these intervals excludes 0 exactly when Holm rejects that relation (adjusted p <= alpha). With one
    relation this is the plain (1 - alpha) interval. Needs the resamples (objects from `paired_difference`).
    """
    _check_alpha(alpha)
    levels = _holm_levels([d.p_value for d in diffs], alpha)
    return [(1.0 - g, *d.interval(1.0 - g)) for d, g in zip(diffs, levels)]


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha!r}")


def _side(d: PairedDifference) -> int:
    """The side of 0 a difference lies on: its bootstrap `direction`; for a hand-built object without one (direction
    0), the sign of its mean."""
    if d.direction:
        return int(d.direction)
    return (d.mean > 0) - (d.mean < 0)


def assess_claim(
    diffs: Sequence[PairedDifference], claimed_signs: Sequence[int], alpha: float = 0.05
) -> ClaimAssessment:
    """Test a claim made of several relations, each a paired difference a - b with a claimed sign (+1: a > b is
    claimed, -1: a < b), with Holm's correction over the claim's relations at family-wise level alpha.

    Decision rule (the p-value form): relation i is significant when its Holm-adjusted p is <= alpha; its side is its
    `direction`. The verdict is
      - "holds": every relation is significant on its claimed side;
      - "contradicted": some relation is significant on the opposite side;
      - "inconclusive": otherwise (some relation's difference cannot be told from 0).
    The interval form gives the same answer, not just approximately: the p-value inverts the percentile interval, so
    relation i is significant exactly when its interval at Holm's step-down level (`holm_intervals`; for "holds",
    simply 1 - alpha / (m - r + 1) at rank r) excludes 0, and it then lies on the `direction` side. The p-value form
    is the one computed because Holm is defined on p-values and it needs no resamples; the intervals are reported so
    a table can show what was decided. "holds" and "contradicted" exclude each other.

    assess_claim([paired_difference(a, b)], [+1]).verdict == "holds" when a's scores are clearly above b's.
    Raises ValueError on no relations, a length mismatch, a sign other than +1/-1, or alpha outside (0, 1).
    """
    _check_alpha(alpha)
    diffs = list(diffs)
    signs = [int(s) for s in claimed_signs]
    if not diffs:
        raise ValueError("a claim needs at least one relation")
    if len(signs) != len(diffs):
        raise ValueError(f"{len(diffs)} differences but {len(signs)} claimed signs")
    if any(s not in (1, -1) for s in signs):
        raise ValueError(f"claimed signs must be +1 (a > b) or -1 (a < b); got {list(claimed_signs)}")
    p = [d.p_value for d in diffs]
    adjusted = holm(p)
    significant = [q <= alpha * (1 + _SLACK) for q in adjusted]
    directions = [_side(d) for d in diffs]
    if all(sig and dr == s for sig, dr, s in zip(significant, directions, signs)):
        result = "holds"
    elif any(sig and dr == -s for sig, dr, s in zip(significant, directions, signs)):
        result = "contradicted"
    else:
        result = "inconclusive"
    levels = [1.0 - g for g in _holm_levels(p, alpha)]
    intervals = [d.interval(lv) if d.resampled is not None else (math.nan, math.nan) for d, lv in zip(diffs, levels)]
    return ClaimAssessment(
        verdict=result,
        alpha=alpha,
        claimed_signs=tuple(signs),
        p_values=tuple(p),
        adjusted=tuple(adjusted),
        significant=tuple(significant),
        directions=tuple(directions),
        levels=tuple(levels),
        intervals=tuple(intervals),
    )


def verdict(diffs: Sequence[PairedDifference], claimed_signs: Sequence[int], alpha: float = 0.05) -> str:
    """ "holds" | "contradicted" | "inconclusive" for a claim's relations (see `assess_claim` for the rule).

    verdict([paired_difference(a, b), paired_difference(c, d)], [+1, -1]) -> "holds" when a > b and c < d both
    survive Holm's correction at alpha.
    """
    return assess_claim(diffs, claimed_signs, alpha).verdict


# --------------------------------------------------------------------------------------------------------------
# Relative gains (ratios of means)
# --------------------------------------------------------------------------------------------------------------


def _per_example(x, name: str) -> np.ndarray:
    """`x` ([seeds, examples] or [examples]) checked and averaged over its seeds: one value per example."""
    return _exact_mean(_as_scores(x, name), axis=0)


def _resampled_row_means(rows: Sequence[np.ndarray], n_resamples: int, seed) -> np.ndarray:
    """[len(rows), n_resamples] means of the 1-D `rows` (same length) over resamples of their common examples: one
    index matrix from default_rng(seed), shared by every row and drawn in chunks as `_resampled_means` does (the same
    indices, so a single row gets exactly `_resampled_means`'s values, unsorted)."""
    n = rows[0].shape[0]
    refs = [r[0] for r in rows]
    centred = [r - ref for r, ref in zip(rows, refs)]
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CHUNK_CELLS // n)
    out = np.empty((len(rows), n_resamples), dtype=np.float64)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        for i, (ref, c) in enumerate(zip(refs, centred)):
            out[i, start:stop] = ref + c[idx].mean(axis=1)
    return out


def _relative_change(new, base, log_scores: bool):
    """(M(new) - M(base)) / M(base) elementwise: expm1(new - base) for log-scale means; 0/0 reads as 0 (no change)
    and x/0 as +-inf."""
    new, base = np.asarray(new, dtype=np.float64), np.asarray(base, dtype=np.float64)
    if log_scores:
        return np.expm1(new - base)
    with np.errstate(divide="ignore", invalid="ignore"):
        change = (new - base) / base
    return np.where((new == base) & (base == 0), 0.0, change)


def relative_gain_difference(
    new_a,
    base_a,
    new_b,
    base_b,
    *,
    shared_examples: bool,
    log_scores: bool = False,
    higher_is_better: bool = True,
    n_resamples: int = 10000,
    seed: int = 0,
    level: float = 0.95,
) -> PairedDifference:
    """gain(new_a over base_a) - gain(new_b over base_b), with its percentile bootstrap interval and p-value.

    gain(new, base) = s * (M(new) - M(base)) / M(base), s = +1 if `higher_is_better` else -1, M the mean over seeds
    and examples; with `log_scores` (per-example log-perplexities) M is exp of that mean, the geometric-mean
    perplexity, so gain = s * expm1(mean(new) - mean(base)). A gain is a ratio of means, not a mean of per-example
    values, so `paired_difference` does not apply; the resampling is the same: the examples, each averaged over its
    seeds first. new_a and base_a are paired on the same examples ([seeds, examples] or [examples], same shape), as
    are new_b and base_b. With `shared_examples` the two pairs are on the same examples too (one family's test set):
    one index matrix from default_rng(seed) resamples all four, so what the pairs share cancels. Otherwise (two test
    sets, e.g. two families at small scale) pair a is resampled with default_rng(seed) and pair b independently with
    default_rng([seed, 1]). Interval and p-value are read off the resampled statistics exactly as in
    `paired_difference` (`interval(level)`, `assess_claim` and `holm_intervals` accept the result). In a resample
    whose base mean is 0 the relative change is taken as 0 when the new mean is 0 too, else +-inf (and the
    difference of two infinite changes as 0).

    Returns a PairedDifference whose `mean` is the observed statistic, n_examples the examples of pair a (with
    `shared_examples`) or of both pairs together, n_seeds the seeds of new_a.
    relative_gain_difference(x1, x0, x1, x0, shared_examples=True) -> mean 0, interval [0, 0], p_value 1.0.
    Raises ValueError as `paired_difference` does (shapes, NaN, fewer than two examples, arguments), on pairs of
    different example counts with `shared_examples`, or when an observed base mean is 0 (no relative gain).
    """
    _check_bootstrap_args(n_resamples, level)
    arrays = {}
    for name, x in (("new_a", new_a), ("base_a", base_a), ("new_b", new_b), ("base_b", base_b)):
        arrays[name] = _as_2d(x, name)
    for new, base in (("new_a", "base_a"), ("new_b", "base_b")):
        if arrays[new].shape != arrays[base].shape:
            raise ValueError(
                f"{new} and {base} must hold the same [seeds, examples]; got {arrays[new].shape} and "
                f"{arrays[base].shape}"
            )
    for name, arr in arrays.items():
        _check_scores(arr, name)
    if shared_examples and arrays["new_a"].shape[1] != arrays["new_b"].shape[1]:
        raise ValueError(
            f"shared_examples: both pairs must hold the same examples; got {arrays['new_a'].shape[1]} and "
            f"{arrays['new_b'].shape[1]} examples"
        )
    rows = {name: _exact_mean(arr, axis=0) for name, arr in arrays.items()}
    observed = {name: float(_exact_mean(r, axis=0)) for name, r in rows.items()}
    if not log_scores:
        zero = [name for name in ("base_a", "base_b") if observed[name] == 0]
        if zero:
            raise ValueError(f"{' and '.join(zero)} average to 0: a relative gain over it is undefined")
    s = 1.0 if higher_is_better else -1.0

    def statistic(m):
        change_a = _relative_change(m["new_a"], m["base_a"], log_scores)
        change_b = _relative_change(m["new_b"], m["base_b"], log_scores)
        diff = change_a - change_b
        return s * np.where(np.isnan(diff), 0.0, diff)  # inf - inf (both bases 0 in a resample): no difference

    names = ("new_a", "base_a", "new_b", "base_b")
    if shared_examples:
        resampled = dict(zip(names, _resampled_row_means([rows[k] for k in names], n_resamples, seed)))
        n_examples = arrays["new_a"].shape[1]
    else:
        resampled = dict(zip(names[:2], _resampled_row_means([rows[k] for k in names[:2]], n_resamples, seed)))
        resampled |= dict(zip(names[2:], _resampled_row_means([rows[k] for k in names[2:]], n_resamples, [seed, 1])))
        n_examples = arrays["new_a"].shape[1] + arrays["new_b"].shape[1]
    means = np.sort(statistic(resampled))
    means.setflags(write=False)
    low, high = _interval(means, level)
    p, direction = _two_sided_p(means)
    return PairedDifference(
        mean=float(statistic(observed)),
        low=low,
        high=high,
        p_value=p,
        n_examples=n_examples,
        n_seeds=arrays["new_a"].shape[0],
        n_resamples=n_resamples,
        level=level,
        direction=direction,
        resampled=means,
    )
