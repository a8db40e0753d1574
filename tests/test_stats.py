"""benchmark.stats: exact cases, input errors, coverage and p-value calibration, Holm, claim verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark import stats


def scores(seed: int, shape=(5, 200), quantum: float | None = None) -> np.ndarray:
    """Per-example scores; with `quantum`, multiples of it (exactly representable sums for the exact-shift cases)."""
    rng = np.random.default_rng(seed)
    if quantum is None:
        return rng.normal(20.0, 5.0, size=shape)
    return rng.integers(0, 100, size=shape) * quantum


def shifted(effect: float, seed: int, n_examples: int = 200, n_seeds: int = 5, spread: float = 1.0):
    """(a, b) with E[a - b] = effect: a shared per-example difficulty, a per-example effect and per-seed noise."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(20.0, 5.0, size=n_examples)
    per_example_effect = effect + rng.normal(0.0, spread, size=n_examples)
    b = difficulty + rng.normal(0.0, 1.0, size=(n_seeds, n_examples))
    a = difficulty + per_example_effect + rng.normal(0.0, 1.0, size=(n_seeds, n_examples))
    return a, b


# --------------------------------------------------------------------------------------------------------------
# Exact cases
# --------------------------------------------------------------------------------------------------------------


def test_identical_inputs_give_exactly_zero_and_p_one():
    a = scores(0)
    d = stats.paired_difference(a, a.copy())
    assert (d.mean, d.low, d.high, d.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert not d.excludes_zero and d.sign == 0
    assert (d.n_seeds, d.n_examples, d.n_resamples) == (5, 200, 10000)


@pytest.mark.parametrize("c", [0.37, -2.0])
def test_constant_shift_gives_exactly_c_and_minimal_p(c):
    # b on a 1/1024 grid in [0, 0.1): b + c is exact, so a - b == c everywhere (checked, not assumed).
    b = scores(1, quantum=1 / 1024)
    a = b + c
    assert np.all(a - b == c)
    d = stats.paired_difference(a, b, n_resamples=2000)
    assert (d.mean, d.low, d.high) == (c, c, c)
    assert d.p_value == 2 / 2001  # the smallest p the +1-corrected bootstrap can give
    assert d.sign == d.direction == (1 if c > 0 else -1)
    # a constant that np.mean would not reproduce: np.mean([0.1] * 3) != 0.1
    d = stats.paired_difference(np.full((3, 10), 0.1), np.zeros((3, 10)), n_resamples=100)
    assert (d.mean, d.low, d.high) == (0.1, 0.1, 0.1)


def test_resampling_unit_is_the_example_averaged_over_seeds():
    # Seeds disagree within every example (+t, -t around 0.5), but each example's seed-mean difference is 0.5:
    # resampling examples gives a zero-width interval; resampling (seed, example) cells would not.
    b = scores(2, shape=(2, 300), quantum=1 / 64)
    t = np.random.default_rng(3).integers(1, 8, size=300) / 4
    a = b + 0.5 + np.stack([t, -t])
    assert np.all((a - b).mean(axis=0) == 0.5) and np.ptp(a - b) > 1
    d = stats.paired_difference(a, b, n_resamples=1000)
    assert (d.mean, d.low, d.high) == (0.5, 0.5, 0.5)
    assert d.p_value == 2 / 1001
    # the same differences as 600 one-seed examples do vary
    wide = stats.paired_difference((a - b).ravel(), np.zeros(600), n_resamples=1000)
    assert wide.high - wide.low > 0.1


def test_bootstrap_mean_interval_for_table_cells():
    m = stats.bootstrap_mean_interval(np.full((5, 100), 0.3), n_resamples=500)
    assert (m.mean, m.low, m.high) == (0.3, 0.3, 0.3)
    x = scores(4)
    m = stats.bootstrap_mean_interval(x, n_resamples=2000)
    assert m.low < m.mean < m.high
    assert m.mean == pytest.approx(x.mean(), abs=1e-12)
    # the same resampling as paired_difference: x against zeros gives the same interval
    d = stats.paired_difference(x, np.zeros_like(x), n_resamples=2000)
    assert (d.low, d.high) == pytest.approx((m.low, m.high), abs=1e-12)
    assert str(m) == f"{m.mean:.2f} [{m.low:.2f}, {m.high:.2f}]"
    assert m.to_dict()["n_examples"] == 200


def test_one_dimensional_input_is_one_seed():
    a, b = scores(5, shape=(50,)), scores(6, shape=(50,))
    d1 = stats.paired_difference(a, b, n_resamples=500)
    d2 = stats.paired_difference(a[None], b[None], n_resamples=500)
    assert d1 == d2 and d1.n_seeds == 1 and d1.n_examples == 50


def test_log_perplexity():
    assert stats.log_perplexity([6.0, 3.0], [3, 2]).tolist() == [2.0, 1.5]
    with pytest.raises(ValueError, match="no scored tokens"):
        stats.log_perplexity([[1.0, 2.0]], [[3, 0]])
    with pytest.raises(ValueError, match="same shape"):
        stats.log_perplexity([1.0, 2.0], [3])


# --------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match=r"same \[seeds, examples\].*\(5, 200\) and \(5, 199\)"):
        stats.paired_difference(scores(0), scores(0, shape=(5, 199)))
    with pytest.raises(ValueError, match="same"):
        stats.paired_difference(scores(0), scores(0, shape=(4, 200)))
    with pytest.raises(ValueError, match=r"\[seeds, examples\]"):
        stats.paired_difference(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)))


def test_empty_and_single_example_raise():
    with pytest.raises(ValueError, match="empty"):
        stats.paired_difference([], [])
    with pytest.raises(ValueError, match="empty"):
        stats.bootstrap_mean_interval(np.zeros((0, 10)))
    with pytest.raises(ValueError, match="at least two"):
        stats.paired_difference([1.0], [2.0])


def test_nan_raises_with_count_and_location():
    a, b = scores(0), scores(1)
    a[0, 17] = a[2, 5] = a[4, 199] = np.nan
    with pytest.raises(ValueError) as err:
        stats.paired_difference(a, b)
    assert str(err.value) == ("a has 3 NaN values (e.g. seed 0, example 17): drop or impute them before comparing")
    b[1, 3] = np.inf
    with pytest.raises(ValueError, match=r"b has 1 infinite value \(e.g. seed 1, example 3\)"):
        stats.paired_difference(scores(0), b)


def test_bad_arguments_raise():
    a, b = scores(0), scores(1)
    for n in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="n_resamples"):
            stats.paired_difference(a, b, n_resamples=n)
    with pytest.raises(ValueError, match="level"):
        stats.paired_difference(a, b, level=1.0)
    d = stats.paired_difference(a, b, n_resamples=100)
    with pytest.raises(ValueError, match="at least one relation"):
        stats.verdict([], [])
    with pytest.raises(ValueError, match="claimed signs"):
        stats.verdict([d], [1, -1])
    with pytest.raises(ValueError, match=r"\+1"):
        stats.verdict([d], [0])
    with pytest.raises(ValueError, match="alpha"):
        stats.verdict([d], [1], alpha=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.holm([0.5, float("nan")])


# --------------------------------------------------------------------------------------------------------------
# Determinism, chunking, intervals at other levels
# --------------------------------------------------------------------------------------------------------------


def test_same_seed_same_result_other_seed_other_interval():
    a, b = shifted(0.3, seed=7)
    d1 = stats.paired_difference(a, b, n_resamples=2000, seed=11)
    d2 = stats.paired_difference(a, b, n_resamples=2000, seed=11)
    d3 = stats.paired_difference(a, b, n_resamples=2000, seed=12)
    assert d1 == d2 and np.array_equal(d1.resampled, d2.resampled)
    assert (d1.low, d1.high) != (d3.low, d3.high)
    assert d1.mean == d3.mean


def test_chunked_resampling_equals_one_draw(monkeypatch):
    a, b = shifted(0.1, seed=8, n_examples=37)
    whole = stats.paired_difference(a, b, n_resamples=1001)
    monkeypatch.setattr(stats, "_MAX_CHUNK_CELLS", 37 * 7 + 5)  # chunks of 7 resamples, last one short
    chunked = stats.paired_difference(a, b, n_resamples=1001)
    assert chunked == whole and np.array_equal(chunked.resampled, whole.resampled)


def test_interval_and_p_value_are_one_statement():
    # for every level, the (level) interval excludes 0 exactly when p <= 1 - level
    for seed in range(20):
        a, b = shifted(0.12, seed=seed, n_examples=60)
        d = stats.paired_difference(a, b, n_resamples=999, seed=seed)
        for level in (0.5, 0.8, 0.9, 0.95, 0.99, 0.995):
            low, high = d.interval(level)
            assert low <= high
            assert (low > 0 or high < 0) == (d.p_value <= 1 - level + 1e-12), (seed, level, d)
            if low > 0 or high < 0:
                assert d.direction == (1 if low > 0 else -1)
    assert d.interval(0.95) == (d.low, d.high)
    assert stats.paired_difference(a, b, n_resamples=20).interval(0.95) == (-math.inf, math.inf)  # k < 1


# --------------------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------------------


def test_interval_coverage_on_simulated_data():
    truth = 0.25
    covered = 0
    for rep in range(200):
        a, b = shifted(truth, seed=1000 + rep)
        d = stats.paired_difference(a, b, n_resamples=1000, seed=rep)
        covered += d.low <= truth <= d.high
    assert 0.90 <= covered / 200 <= 0.99, covered


def test_p_value_small_for_large_effect_uniform_without_effect():
    a, b = shifted(1.0, seed=1)
    assert stats.paired_difference(a, b, n_resamples=2000).p_value < 0.01
    p = np.array(
        [stats.paired_difference(*shifted(0.0, seed=2000 + r), n_resamples=500, seed=r).p_value for r in range(200)]
    )
    assert 0.0 <= (p <= 0.05).mean() <= 0.12
    assert 0.4 <= p.mean() <= 0.6
    assert 0.15 <= (p <= 0.25).mean() <= 0.35


# --------------------------------------------------------------------------------------------------------------
# Holm and verdicts
# --------------------------------------------------------------------------------------------------------------


def test_holm_hand_computed():
    # sorted: 0.01 (x4) = 0.04; 0.02 (x3) = 0.06; 0.03 (x2) = 0.06 -> max(0.06, 0.06); 0.2 (x1) = 0.2
    assert stats.holm([0.03, 0.2, 0.01, 0.02]) == pytest.approx([0.06, 0.2, 0.04, 0.06])
    # monotone: the second-ranked 0.04 * 1 is raised to the first-ranked 0.03 * 2; 0.045 * 2 = 0.09 to 0.04 * 3
    assert stats.holm([0.03, 0.04]) == pytest.approx([0.06, 0.06])
    assert stats.holm([0.045, 0.04, 0.9]) == pytest.approx([0.12, 0.12, 0.9])
    assert stats.holm([0.5, 0.6, 0.7]) == [1.0, 1.0, 1.0]
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([]) == []


def test_verdicts_on_constructed_claims():
    up = stats.paired_difference(*shifted(1.0, seed=1), n_resamples=2000)
    down = stats.paired_difference(*shifted(-1.0, seed=2), n_resamples=2000)
    null = stats.paired_difference(*shifted(0.0, seed=3), n_resamples=2000)
    assert up.sign == 1 and down.sign == -1 and null.sign == 0
    assert stats.verdict([up], [+1]) == "holds"
    assert stats.verdict([up], [-1]) == "contradicted"
    assert stats.verdict([null], [+1]) == "inconclusive"
    assert stats.verdict([up, down], [+1, -1]) == "holds"
    assert stats.verdict([up, null], [+1, +1]) == "inconclusive"  # one relation cannot be told from 0
    assert stats.verdict([up, down], [+1, +1]) == "contradicted"  # one relation significantly the other way
    assert stats.verdict([null, down], [+1, +1]) == "contradicted"


def test_holm_correction_changes_the_verdict_and_intervals_agree():
    # a difference significant alone (p <= 0.05) but not after Holm over two relations
    for seed in range(200):
        a, b = shifted(0.12, seed=seed, n_examples=100)
        borderline = stats.paired_difference(a, b, n_resamples=2000, seed=seed)
        if 0.03 < borderline.p_value <= 0.05:
            break
    else:
        pytest.fail("no borderline case found")
    strong = stats.paired_difference(*shifted(1.0, seed=1), n_resamples=2000)
    assert stats.verdict([borderline], [+1]) == "holds"
    # beside a strong relation (rank 1, tested at 0.025) the borderline one is tested at 0.05: still holds
    assert stats.verdict([strong, borderline], [+1, +1]) == "holds"
    # twice the borderline relation: rank 1 is tested at 0.025 and fails, so Holm stops and rejects neither
    res = stats.assess_claim([borderline, borderline], [+1, +1])
    assert res.verdict == "inconclusive" and res.significant == (False, False)
    assert res.levels == pytest.approx((0.975, 0.975))  # Holm stops at rank 1: both at its level
    assert all(low <= 0 <= high for low, high in res.intervals)
    # the intervals agree with the decisions, relation by relation
    for diffs in ([strong, borderline], [borderline, strong, borderline], [strong, strong]):
        res = stats.assess_claim(diffs, [+1] * len(diffs))
        for sig, (low, high) in zip(res.significant, res.intervals):
            assert sig == (low > 0 or high < 0)
        assert [lv for lv, *_ in stats.holm_intervals(diffs)] == pytest.approx(list(res.levels))
    assert res.to_dict()["verdict"] == "holds"


def test_verdict_on_hand_built_differences():
    # without resamples: p-values and the sign of the mean decide; the intervals are left NaN
    def hand(mean, p):
        return stats.PairedDifference(mean, mean, mean, p, 100, 5, 10000)

    assert stats.verdict([hand(0.5, 0.001), hand(-0.2, 0.01)], [+1, -1]) == "holds"
    assert stats.verdict([hand(0.5, 0.001), hand(-0.2, 0.04)], [+1, -1]) == "holds"  # 0.002, then 0.04 * 1
    assert stats.verdict([hand(0.5, 0.03), hand(-0.2, 0.04)], [+1, -1]) == "inconclusive"  # 0.06, 0.06
    assert stats.verdict([hand(0.5, 0.001), hand(0.2, 0.01)], [+1, -1]) == "contradicted"
    assert hand(0.5, 0.001).to_dict()["p_value"] == 0.001
    with pytest.raises(ValueError, match="no resamples"):
        hand(0.5, 0.001).interval(0.9)


# --------------------------------------------------------------------------------------------------------------
# Relative gains (ratios of means)
# --------------------------------------------------------------------------------------------------------------


def test_relative_gain_difference_exact_cases_and_hand_values():
    base = scores(20)
    new = base + 2.0 + np.random.default_rng(21).normal(0.0, 0.5, size=base.shape)
    d = stats.relative_gain_difference(new, base, new, base, shared_examples=True, n_resamples=500)
    assert (d.mean, d.low, d.high, d.p_value) == (0.0, 0.0, 0.0, 1.0)
    other_base = scores(22, shape=(5, 150))
    other_new = other_base * 1.02
    d = stats.relative_gain_difference(new, base, other_new, other_base, shared_examples=False, n_resamples=500)
    hand = (new.mean() - base.mean()) / base.mean() - (other_new.mean() - other_base.mean()) / other_base.mean()
    assert d.mean == pytest.approx(hand, rel=1e-12) and d.low < d.mean < d.high
    assert (d.n_examples, d.n_seeds, d.n_resamples) == (350, 5, 500)
    # lower is better: the gain is a reduction; log scores: ratios of geometric means (exp of mean log)
    lower = stats.relative_gain_difference(
        np.log(base),
        np.log(new),
        np.log(other_base),
        np.log(other_new),
        shared_examples=False,
        log_scores=True,
        higher_is_better=False,
        n_resamples=500,
    )
    gm = lambda x: math.exp(np.log(x).mean())
    hand = -(gm(base) / gm(new) - 1) + (gm(other_base) / gm(other_new) - 1)
    assert lower.mean == pytest.approx(hand, rel=1e-9) and lower.direction == 1 and lower.low > 0


def test_relative_gain_difference_shared_examples_cancel_what_they_share():
    # the same examples, shifted by 2 and by 1: gain(a) - gain(b) = 1 / mean(base) in every resample drawn together,
    # while independent resamples of the two pairs add their variances
    base = scores(23, shape=(5, 200))
    shared = stats.relative_gain_difference(base + 2, base, base + 1, base, shared_examples=True, n_resamples=2000)
    apart = stats.relative_gain_difference(base + 2, base, base + 1, base, shared_examples=False, n_resamples=2000)
    assert shared.mean == apart.mean == pytest.approx(1 / base.mean(), rel=1e-9)
    assert 0 < shared.high - shared.low < (apart.high - apart.low) / 2
    assert shared.low > 0 and stats.verdict([shared], [+1]) == "holds"  # assess_claim takes the result
    lo, hi = shared.interval(0.5)
    assert shared.low <= lo <= hi <= shared.high


def test_relative_gain_difference_errors_and_chunking(monkeypatch):
    base = scores(24, shape=(5, 37))
    with pytest.raises(ValueError, match="same examples"):
        stats.relative_gain_difference(base, base, base[:, :30], base[:, :30], shared_examples=True)
    with pytest.raises(ValueError, match="new_a and base_a must hold the same"):
        stats.relative_gain_difference(base[:, :30], base, base, base, shared_examples=False)
    zeros = np.zeros_like(base)
    with pytest.raises(ValueError, match="base_b average to 0"):
        stats.relative_gain_difference(base, base + 1, base, zeros, shared_examples=False)
    with pytest.raises(ValueError, match="NaN"):
        stats.relative_gain_difference(base, np.full_like(base, np.nan), base, base + 1, shared_examples=False)
    whole = stats.relative_gain_difference(base + 1, base, base * 1.1, base, shared_examples=False, n_resamples=1001)
    monkeypatch.setattr(stats, "_MAX_CHUNK_CELLS", 37 * 7 + 5)
    chunked = stats.relative_gain_difference(base + 1, base, base * 1.1, base, shared_examples=False, n_resamples=1001)
    assert chunked == whole and np.array_equal(chunked.resampled, whole.resampled)
