"""benchmark.tables: cell intervals, paired differences to the one-step row and to SFT w/o KD, the paper column,
power, corpus perplexity, figures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchmark import registry, stats, tables

SEEDS = [10, 20, 30, 40, 50]


def frame(values, seeds=SEEDS) -> pd.DataFrame:
    """A [seed x example] score frame as `checks.sample_scores` returns it."""
    arr = np.asarray(values, dtype=float)
    return pd.DataFrame(arr, index=pd.Index(seeds[: arr.shape[0]], name="seed"), columns=range(arr.shape[1]))


def quantised(seed: int, shape=(5, 40), quantum: float = 0.25) -> np.ndarray:
    """Scores on a grid of exactly representable values, so that shifted copies differ exactly."""
    return np.random.default_rng(seed).integers(0, 100, size=shape) * quantum


ONE_STEP = {
    "gpt2/1.5B": None,
    "gpt2/760M": None,
    "gpt2/1.5B>760M": None,
    "gpt2/340M": None,
    "gpt2/1.5B>340M": None,
    "gpt2/1.5B>760M>340M": "gpt2/1.5B>340M",
    "gpt2/120M": None,
    "gpt2/1.5B>120M": None,
    "gpt2/1.5B>760M>120M": "gpt2/1.5B>120M",
    "gpt2/1.5B>340M>120M": "gpt2/1.5B>120M",
    "gpt2/1.5B>760M>340M>120M": "gpt2/1.5B>120M",
    "opt/13B": None,
    "opt/6.7B": None,
    "opt/13B>6.7B": None,
    "opt/2.7B": None,
    "opt/13B>2.7B": None,
    "opt/13B>6.7B>2.7B": "opt/13B>2.7B",
    "opt/1.3B": None,
    "opt/13B>1.3B": None,
    "opt/13B>6.7B>1.3B": "opt/13B>1.3B",
    "opt/13B>2.7B>1.3B": "opt/13B>1.3B",
    "opt/13B>6.7B>2.7B>1.3B": "opt/13B>1.3B",
}


# --------------------------------------------------------------------------------------------------------------
# The one-step baseline and the published differences
# --------------------------------------------------------------------------------------------------------------


def test_one_step_baseline_for_every_entry():
    assert set(ONE_STEP) == set(registry.ENTRIES)
    assert {k: tables.one_step_baseline(k) for k in registry.ENTRIES} == ONE_STEP


def test_sft_baseline_of_every_one_step_entry():
    got = {k: b for k in registry.ENTRIES if (b := tables.sft_baseline(k)) is not None}
    assert got == {
        "gpt2/1.5B>760M": "gpt2/760M",
        "gpt2/1.5B>340M": "gpt2/340M",
        "gpt2/1.5B>120M": "gpt2/120M",
        "opt/13B>6.7B": "opt/6.7B",
        "opt/13B>2.7B": "opt/2.7B",
        "opt/13B>1.3B": "opt/1.3B",
    }
    # MiniLLM's own difference (its Table 1), where its SFT w/o KD row was located; never a perplexity
    assert tables.published_difference("gpt2/1.5B>120M", "rouge_l", "sft") == pytest.approx(24.6 - 23.3)
    assert tables.published_difference("opt/13B>1.3B", "rouge_l", "sft") == pytest.approx(26.7 - 26.0)
    assert math.isnan(tables.published_difference("gpt2/1.5B>340M", "rouge_l", "sft"))  # not located
    assert math.isnan(tables.published_difference("gpt2/1.5B>120M", "perplexity", "sft"))
    assert math.isnan(tables.published_difference("gpt2/1.5B>760M>120M", "rouge_l", "sft"))


def test_paper_column_marks_minillm_references_as_references():
    assert tables.paper_value("gpt2/1.5B>760M>120M", "rouge_l") == "27.20"
    assert tables.paper_value("gpt2/1.5B>760M>120M", "perplexity") == "21.56"
    assert tables.paper_value("gpt2/120M", "rouge_l") == "23.3 (MiniLLM, ref.)"
    assert tables.paper_value("opt/6.7B", "rouge_l") == "27.6 (MiniLLM, ref.)"
    assert tables.paper_value("opt/2.7B", "rouge_l") == "— (MiniLLM: not located)"
    assert tables.paper_value("gpt2/120M", "perplexity") == "—"
    # each student's rows start with its SFT w/o KD row, labelled as MiniLLM's tables do
    labels = [tables.ROW_LABEL[e.label] for e in registry.select(["table1"])]
    sft, one, ours = "SFT w/o KD", "MiniLLM", "Ours"
    assert labels == ["", sft, one, sft, one, ours, sft, one, ours, ours, ours]


def test_published_differences_are_on_the_scale_of_the_measured_ones():
    assert tables.published_difference("gpt2/1.5B>760M>120M", "rouge_l") == pytest.approx(27.20 - 24.60)
    assert tables.published_difference("gpt2/1.5B>760M>120M", "rouge_l") == pytest.approx(2.60)
    assert tables.published_difference("gpt2/1.5B>760M>120M", "perplexity") == pytest.approx(math.log(21.56 / 23.93))
    # the paper's three-step GPT-2 chain is below its one-step row in ROUGE-L (24.10 < 24.60)
    assert tables.published_difference("gpt2/1.5B>760M>340M>120M", "rouge_l") == pytest.approx(-0.50)
    assert tables.published_difference("opt/13B>6.7B>2.7B", "perplexity") == pytest.approx(math.log(11.27 / 13.44))
    assert math.isnan(tables.published_difference("gpt2/1.5B>120M", "rouge_l"))


# --------------------------------------------------------------------------------------------------------------
# Paired differences
# --------------------------------------------------------------------------------------------------------------


def test_identical_entries_differ_by_exactly_zero():
    x = frame(quantised(0))
    d = tables.differences({"gpt2/1.5B>760M>120M": x, "gpt2/1.5B>120M": x.copy()}, ["gpt2/1.5B>760M>120M"], "rouge_l")
    row = d.iloc[0]
    assert (row["diff"], row["low"], row["high"], row["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    assert (row["half_width"], row["single_seed_diff"], row["single_seed_half_width"]) == (0.0, 0.0, 0.0)
    assert (row["n_examples"], row["n_seeds"]) == (40, 5)


def test_a_constant_shift_is_exactly_that_shift():
    base = quantised(1)
    scores = {"opt/13B>6.7B>1.3B": frame(base - 0.5), "opt/13B>1.3B": frame(base)}
    row = tables.differences(scores, ["opt/13B>6.7B>1.3B"], "perplexity", n_resamples=999).iloc[0]
    assert (row["diff"], row["low"], row["high"]) == (-0.5, -0.5, -0.5)
    assert row["p_value"] == 2 / 1000
    assert row["single_seed_diff"] == -0.5 and row["half_width"] == row["single_seed_half_width"] == 0.0
    assert row["baseline"] == "opt/13B>1.3B"
    assert row["published_diff"] == pytest.approx(math.log(12.52 / 13.79))


def test_differences_match_stats_and_use_seed_10_alone_for_the_single_seed_columns():
    rng = np.random.default_rng(2)
    a, b = rng.normal(25, 8, size=(5, 60)), rng.normal(24, 8, size=(5, 60))
    scores = {"gpt2/1.5B>760M>340M": frame(a), "gpt2/1.5B>340M": frame(b)}
    row = tables.differences(scores, ["gpt2/1.5B>760M>340M"], "rouge_l").iloc[0]
    d = stats.paired_difference(a, b)
    assert (row["diff"], row["low"], row["high"], row["p_value"]) == (d.mean, d.low, d.high, d.p_value)
    assert row["half_width"] == pytest.approx((d.high - d.low) / 2)
    one = stats.paired_difference(a[0], b[0])  # seed 10 is the first row
    assert row["single_seed_diff"] == one.mean
    assert row["single_seed_half_width"] == pytest.approx((one.high - one.low) / 2)
    # a single seed sees the per-seed noise the five-seed average removes
    assert row["single_seed_half_width"] > row["half_width"]


def test_differences_keep_rows_without_samples_and_skip_teachers_and_one_step_rows():
    x = frame(quantised(3))
    keys = [e.key for e in registry.select(["table1"])]
    d = tables.differences({"gpt2/1.5B>760M>340M": x, "gpt2/1.5B>340M": x}, keys, "rouge_l")
    assert list(d.columns) == list(tables.DIFF_COLUMNS)
    assert list(d["entry"]) == [k for k in keys if ONE_STEP[k]]
    assert d["diff"].notna().tolist() == [True, False, False, False]
    assert d["published_diff"].tolist() == pytest.approx([0.90, 2.60, 2.40, -0.50])
    with pytest.raises(ValueError, match="metric"):
        tables.differences({}, keys, "perplexity_samples")
    with pytest.raises(ValueError, match="against"):
        tables.differences({}, keys, "rouge_l", against="teacher")


def test_one_step_minus_sft_without_kd_is_paired_like_every_difference():
    rng = np.random.default_rng(7)
    sft = rng.normal(24, 8, size=(5, 50))
    one = sft + 1.0 + rng.normal(0, 0.5, size=sft.shape)  # the distilled student: +1 point on every example
    keys = [e.key for e in registry.select(["table1"])]
    d = tables.differences({"gpt2/1.5B>120M": frame(one), "gpt2/120M": frame(sft)}, keys, "rouge_l", against="sft")
    assert list(d["entry"]) == ["gpt2/1.5B>760M", "gpt2/1.5B>340M", "gpt2/1.5B>120M"]
    assert list(d["baseline"]) == ["gpt2/760M", "gpt2/340M", "gpt2/120M"]
    row = d.set_index("entry").loc["gpt2/1.5B>120M"]
    ref = stats.paired_difference(one, sft, n_resamples=tables.N_RESAMPLES)
    assert (row["diff"], row["low"], row["high"], row["p_value"]) == (ref.mean, ref.low, ref.high, ref.p_value)
    assert 0.8 < row["low"] < row["diff"] < row["high"] < 1.2 and row["diff"] == pytest.approx(1.0, abs=0.1)
    assert row["published_diff"] == pytest.approx(24.6 - 23.3)  # MiniLLM's own, a reference
    assert d["diff"].notna().tolist() == [False, False, True]  # without samples the row stays, unmeasured
    assert math.isnan(d.set_index("entry").loc["gpt2/1.5B>340M", "published_diff"])  # not located


def test_differences_compare_common_seeds_and_examples_only():
    a = frame(quantised(4, shape=(2, 6)), seeds=[20, 30])
    b = frame(quantised(4, shape=(3, 8)) - 1.0, seeds=[10, 20, 30])
    row = tables.differences({"opt/13B>2.7B>1.3B": a, "opt/13B>1.3B": b}, ["opt/13B>2.7B>1.3B"], "rouge_l").iloc[0]
    assert (row["n_examples"], row["n_seeds"]) == (6, 2)
    # seed 10 is not common: the single-seed columns fall back to the first common seed (20)
    assert row["single_seed_diff"] == stats.paired_difference(a.loc[20], b.loc[20, :5]).mean


# --------------------------------------------------------------------------------------------------------------
# Cells, power, corpus perplexity
# --------------------------------------------------------------------------------------------------------------


def test_cell_intervals_rouge_and_geometric_mean_perplexity():
    x = quantised(5)
    cis = tables.cell_intervals({"gpt2/1.5B": frame(x), "gpt2/1.5B>760M": frame(np.full((5, 10), 2.0))})
    m = stats.bootstrap_mean_interval(x, n_resamples=2000)
    assert cis["gpt2/1.5B"] == {
        "mean": m.mean,
        "low": m.low,
        "high": m.high,
        "seed10": pytest.approx(x[0].mean()),
        "n_seeds": 5,
        "n_examples": 40,
    }
    assert cis["gpt2/1.5B>760M"]["low"] == cis["gpt2/1.5B>760M"]["high"] == 2.0
    logs = {"opt/13B": frame(np.log(np.full((5, 10), 12.0)))}
    geo = tables.cell_intervals(logs, exp=True)["opt/13B"]
    assert (
        geo["mean"] == pytest.approx(12.0) and geo["low"] == pytest.approx(12.0) and geo["seed10"] == pytest.approx(12)
    )
    # a geometric mean: exp(mean(log)), not the mean of the perplexities
    two = {"opt/13B": frame(np.log([[1.0, 100.0]] * 5))}
    assert tables.cell_intervals(two, exp=True)["opt/13B"]["mean"] == pytest.approx(10.0)
    no_seed_10 = tables.cell_intervals({"opt/13B": frame(x[:2], seeds=[20, 30])})["opt/13B"]
    assert math.isnan(no_seed_10["seed10"]) and no_seed_10["n_seeds"] == 2


def test_detectable_takes_medians_and_scales_one_seed_to_500_prompts():
    diffs = pd.DataFrame(
        {
            "half_width": [0.1, 0.3, 0.2, np.nan],
            "single_seed_half_width": [0.4, 0.8, 0.6, np.nan],
            "n_examples": [125, 125, 125, np.nan],
            "n_seeds": [5, 5, 5, np.nan],
        }
    )
    power = tables.detectable(diffs)
    assert power == {
        "this_run": pytest.approx(0.2),
        "single_seed": pytest.approx(0.6),
        "single_seed_500": pytest.approx(0.3),  # sqrt(125 / 500) = 1/2
        "n_examples": 125,
        "n_seeds": 5,
        "n_comparisons": 3,
    }
    line = tables.detectable_line(power, "ROUGE-L points")
    assert line == (
        "smallest detectable difference in this run: ±0.20 ROUGE-L points (median half-width of the 3 paired 95 % "
        "intervals, 125 examples × 5 seeds; a single-seed evaluation of the same 125 examples: ±0.60; of 500 "
        "prompts: ±0.30)"
    )
    log_line = tables.detectable_line(power | {"this_run": 0.05, "n_examples": 500}, "nats", log_scale=True)
    assert "±0.05 nats, ≈ ±5.1 % in geometric-mean perplexity" in log_line and "of 500 prompts" not in log_line
    empty = tables.detectable(diffs.iloc[3:])
    assert empty["n_comparisons"] == 0 and math.isnan(empty["this_run"])
    assert tables.detectable_line(empty, "points").startswith("smallest detectable difference in this run: — (")


def test_corpus_perplexity_is_token_weighted_per_seed():
    samples = pd.DataFrame(
        {
            "seed": [10, 10, 10, 20, 20, 20],
            "example": [0, 1, 2, 0, 1, 1],
            "sample_nll": [6.0, 1.0, 0.0, 2.0, 9.0, 4.0],
            "sample_tokens": [3, 2, 0, 4, 5, 1],  # an empty response (0 tokens); (20, 1) twice: the last counts
        }
    )
    got = tables.corpus_perplexity(samples)
    assert list(got.index) == [10, 20]
    assert got[10] == pytest.approx(math.exp((6.0 + 1.0) / (3 + 2)))
    assert got[20] == pytest.approx(math.exp((2.0 + 4.0) / (4 + 1)))
    # not the mean of per-example perplexities, which one long poor sample would dominate
    assert got[10] != pytest.approx((math.exp(2.0) + math.exp(0.5)) / 2)
    assert tables.corpus_perplexity(samples.iloc[:0]).empty


# --------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------


def test_forest_plot_draws_both_panels_with_and_without_samples(tmp_path):
    rng = np.random.default_rng(6)
    keys = [e.key for e in registry.select(["table2"])]
    scores = {k: frame(rng.normal(25, 5, size=(5, 30))) for k in keys}
    measured = tables.differences(scores, keys, "rouge_l", n_resamples=500)
    missing = tables.differences({}, keys, "perplexity")
    fig = tables.forest_plot({"ROUGE-L": measured, "log-perplexity": missing}, "opt", tmp_path / "d.png", scale="small")
    assert (tmp_path / "d.png").stat().st_size > 10_000
    rouge, ppl = fig.axes
    assert [t.get_text() for t in rouge.get_yticklabels()][0] == "13B → 6.7B → 2.7B\nvs 13B → 2.7B"
    assert rouge.get_title(loc="left") == "ROUGE-L (30 examples × 5 seeds)"
    assert ppl.get_title(loc="left") == "log-perplexity (no samples)"


def test_figure2_uses_a_log_axis_and_a_panel_of_its_own_for_the_paper_below_paper_scale(tmp_path):
    entries = registry.select(["figure2"])
    data = pd.DataFrame(
        {
            "path": [" → ".join(e.path) for e in entries],
            "student": [e.student for e in entries],
            "kind": [{"teacher": "teacher", "sft": "SFT w/o KD", "minillm": "one-step (MiniLLM)",
                      "ours": "multi-step (ours)"}[e.label] for e in entries],
            "perplexity_samples": np.linspace(500, 30000, len(entries)),  # a mean of exp() that degenerate samples
            "geomean_ppl": np.linspace(20, 60, len(entries)),  # decide, beside the geometric mean
            "geomean_low": np.linspace(18, 55, len(entries)),
            "geomean_high": np.linspace(22, 66, len(entries)),
            "corpus_ppl": np.linspace(25, 70, len(entries)),
            "corpus_min": np.linspace(24, 68, len(entries)),
            "corpus_max": np.linspace(26, 72, len(entries)),
            "published": [e.published.perplexity for e in entries],
        }
    )  # fmt: skip
    small = tables.figure2_plot(data, tmp_path / "small.png", scale="small")
    assert len(small.axes) == 2 and all(ax.get_xscale() == "log" and ax.get_xlim()[0] > 0 for ax in small.axes)
    paper = tables.figure2_plot(data.drop(columns=["geomean_ppl", "corpus_ppl"]), tmp_path / "paper.png", scale="paper")
    assert len(paper.axes) == 1 and paper.axes[0].get_xscale() == "log"
    lo, hi = paper.axes[0].get_xlim()
    assert 0 < lo < data["published"].min() and hi > max(data["perplexity_samples"])
    # one row per path, each SFT w/o KD row drawn in its own colour and named in the legend
    assert [t.get_text() for t in small.axes[0].get_yticklabels()] == list(data["path"])
    assert "geometric mean, 95 % CI: SFT w/o KD" in [t.get_text() for t in small.legends[0].get_texts()]
    assert (tmp_path / "small.png").exists() and (tmp_path / "paper.png").exists()


# --------------------------------------------------------------------------------------------------------------
# Figure 1
# --------------------------------------------------------------------------------------------------------------


def test_figure1_is_drawn_from_the_registry(tmp_path):
    import struct

    out = tables.draw_figure1(tmp_path / "figure1.png")
    data = out.read_bytes()
    assert out == tmp_path / "figure1.png" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    # 15 in wide at 110 dpi; one box row per registered path, 4 rows per family (the most paths on one side)
    rows = sum(
        max(sum(e.hops == 1 for e in es), sum(e.hops >= 2 for e in es))
        for es in ([e for e in registry.ENTRIES.values() if e.family == f] for f in registry.FAMILIES)
    )
    assert rows == 8 and struct.unpack(">II", data[16:24]) == (1650, round((1.0 + 1.05 * rows) * 110))
