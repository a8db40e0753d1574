"""benchmark.checks: tolerance maths, published-number checks, every claim on the paper's own numbers, summaries."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark import checks, registry


def store(values: dict[str, float], metric: str = "rouge_l", scale: str = "paper", std: float = 0.0) -> pd.DataFrame:
    """A minimal results-store frame: one record per entry for `metric`."""
    return pd.DataFrame(
        [
            {
                "entry": k,
                "scale": scale,
                "metric": metric,
                "mean": v,
                "std": std,
                "values": [v] * 5,
                "created": "2026-01-01T00:00:00+00:00",
            }
            for k, v in values.items()
        ]
    )


def published_store(scale: str = "paper", std: float = 0.0) -> pd.DataFrame:
    return pd.concat(
        [
            store(checks.published("rouge_l"), "rouge_l", scale, std),
            store(checks.published("perplexity"), "perplexity_samples", scale, std),
        ],
        ignore_index=True,
    )


# ---------------------------------------------------------------------------------------------- tolerances


def test_band_is_floor_or_two_std():
    t = checks.Tolerances()
    assert t.band("rouge_l", 27.6, std=0.1) == 0.5  # floor
    assert t.band("rouge_l", 27.6, std=0.4) == pytest.approx(0.8)  # 2 std
    assert t.band("perplexity", 20.0, std=0.1) == pytest.approx(1.0)  # 5% of 20
    assert t.band("perplexity", 20.0, std=0.75) == pytest.approx(1.5)
    assert checks.Tolerances(rouge_min=0.2, std_multiplier=3).band("rouge_l", 27.6, std=0.1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        checks.Tolerances(ppl_rel=-0.1)


@pytest.mark.parametrize(
    "delta, status", [(0.0, "pass"), (0.5, "pass"), (-0.5, "pass"), (0.51, "fail"), (-0.8, "fail")]
)
def test_rouge_cell_pass_fail_at_band_edge(delta, status):
    values = checks.published("rouge_l") | {"gpt2/1.5B>760M>120M": 27.20 + delta}
    out = {c["entry"]: c for c in checks.published_checks(store(values), "table1", "paper")}
    cell = out["gpt2/1.5B>760M>120M"]
    assert cell["status"] == status and cell["tolerance"] == 0.5
    assert all(c["status"] == "pass" for k, c in out.items() if k != "gpt2/1.5B>760M>120M")


def test_perplexity_band_uses_seed_std_when_wider():
    values = checks.published("perplexity") | {"opt/13B>1.3B": 13.79 + 1.5}  # 11% off: outside 5%
    narrow = {c["entry"]: c for c in checks.published_checks(store(values, "perplexity_samples"), "table4", "paper")}
    wide = {
        c["entry"]: c for c in checks.published_checks(store(values, "perplexity_samples", std=0.8), "table4", "paper")
    }
    assert narrow["opt/13B>1.3B"]["status"] == "fail"
    assert narrow["opt/13B>1.3B"]["tolerance"] == pytest.approx(0.05 * 13.79)
    assert wide["opt/13B>1.3B"]["status"] == "pass" and wide["opt/13B>1.3B"]["tolerance"] == pytest.approx(1.6)


def test_published_checks_use_perplexity_samples_and_latest_record():
    df = published_store()
    stale = store({"gpt2/1.5B": 99.0}, "perplexity_samples").assign(created="2025-01-01T00:00:00+00:00")
    gold = store({k: 99.0 for k in checks.published("perplexity")}, "perplexity_gold")
    out = checks.published_checks(pd.concat([stale, df, gold]), "table3", "paper")
    assert {c["metric"] for c in out} == {"perplexity_samples"}
    assert all(c["status"] == "pass" for c in out)


# ---------------------------------------------------------------------------------------------- published checks


def test_every_cell_passes_on_published_numbers():
    df = published_store()
    for artefact in registry.ARTEFACTS:
        out = checks.published_checks(df, artefact, "paper")
        # every row of the paper; the SFT-only baselines have no published number and are never checked
        assert [c["entry"] for c in out] == [e.key for e in registry.select([artefact]) if e.label != "sft"]
        assert {c["status"] for c in out} == {"pass"}, artefact
    assert "gpt2/120M" not in checks.published("rouge_l") and len(checks.published("perplexity")) == 16
    # a measured baseline adds no check either, whatever its value
    measured = pd.concat([df, store({"gpt2/120M": 23.3, "gpt2/340M": 1.0}, "rouge_l")], ignore_index=True)
    assert checks.published_checks(measured, "table1", "paper") == checks.published_checks(df, "table1", "paper")


@pytest.mark.parametrize("scale", ["small", "tiny"])
def test_other_scales_are_never_compared(scale):
    out = checks.published_checks(published_store(scale), "table2", scale)
    assert {c["status"] for c in out} == {"not-comparable"}
    assert all(c["measured"] is not None and c["tolerance"] is None and scale in c["note"] for c in out)


def test_missing_measurement_is_not_comparable_with_a_note():
    values = dict(checks.published("rouge_l"))
    del values["opt/13B>2.7B>1.3B"]
    out = {c["entry"]: c for c in checks.published_checks(store(values), "table2", "paper")}
    missing = out["opt/13B>2.7B>1.3B"]
    assert (
        missing["status"] == "not-comparable" and missing["measured"] is None and "no rouge_l record" in missing["note"]
    )
    # records of another scale do not stand in for the asked one
    assert {c["status"] for c in checks.published_checks(published_store("small"), "table2", "paper")} == {
        "not-comparable"
    }


def test_null_mean_is_not_comparable():
    df = store(checks.published("perplexity") | {"gpt2/1.5B>120M": float("nan")}, "perplexity_samples")
    out = {c["entry"]: c for c in checks.published_checks(df, "table3", "paper")}
    assert out["gpt2/1.5B>120M"]["status"] == "not-comparable" and out["gpt2/1.5B>120M"]["measured"] is None


# ---------------------------------------------------------------------------------------------- claims


ON_PUBLISHED = {True: "pass", False: "fail", None: "not-comparable"}  # holds_on_published -> status on those numbers


def test_every_claim_on_published_numbers_matches_the_paper():
    """Evaluated on Tables 1-4 themselves (and MiniLLM's Table 1 for its claims), a claim passes exactly when its
    source's numbers support it; where MiniLLM's SFT w/o KD row was not located, nothing can be said."""
    records = checks.claims_on_published()
    assert len(records) == len(checks.CLAIMS)
    for r in records:
        assert r["status"] == ON_PUBLISHED[r["holds_on_published"]], (r["id"], r["relation"])


def test_claims_the_paper_contradicts_are_kept_and_explained():
    contradicted = {c.id for c in checks.CLAIMS if c.holds_on_published is False}
    assert contradicted == {
        "gpt2-rouge-multi-step-always-beats-one-step",  # abstract "always": 24.10 < 24.60 in Table 1
        "larger-family-smaller-rouge-gain",
        "larger-family-smaller-ppl-gain",
        "gpt2-ppl-ta-predicts-student",
        "opt-ppl-three-step-lowest-overall",
    }
    assert all(c.note for c in checks.CLAIMS if not c.holds_on_published)


def test_one_step_beats_sft_without_kd_is_minillms_claim_per_student():
    minillm = [c for c in checks.CLAIMS if c.section == checks.MINILLM_TABLE1]
    assert [(c.id, c.artefact, c.metric, c.entries, c.holds_on_published) for c in minillm] == [
        ("gpt2-rouge-one-step-beats-sft-760m", "table1", "rouge_l", ("gpt2/1.5B>760M", "gpt2/760M"), True),
        ("gpt2-rouge-one-step-beats-sft-340m", "table1", "rouge_l", ("gpt2/1.5B>340M", "gpt2/340M"), None),
        ("gpt2-rouge-one-step-beats-sft-120m", "table1", "rouge_l", ("gpt2/1.5B>120M", "gpt2/120M"), True),
        ("opt-rouge-one-step-beats-sft-6.7b", "table2", "rouge_l", ("opt/13B>6.7B", "opt/6.7B"), True),
        ("opt-rouge-one-step-beats-sft-2.7b", "table2", "rouge_l", ("opt/13B>2.7B", "opt/2.7B"), None),
        ("opt-rouge-one-step-beats-sft-1.3b", "table2", "rouge_l", ("opt/13B>1.3B", "opt/1.3B"), True),
    ]
    # sourced to MiniLLM, with its numbers in the note; the record's `published` stays the seed paper's (none)
    assert "Gu et al. 2024" in minillm[0].quote + minillm[0].section and "the baselines" in minillm[0].quote
    assert "one-step 24.6 vs SFT w/o KD 23.3" in minillm[2].note and "not located" in minillm[1].note
    on_published = {r["id"]: r for r in checks.claims_on_published()}
    record = on_published["gpt2-rouge-one-step-beats-sft-120m"]
    assert record["measured"] == {"gpt2/1.5B>120M": 24.6, "gpt2/120M": 23.3}
    assert record["published"] == {"gpt2/1.5B>120M": 24.6, "gpt2/120M": None}


def test_one_step_beats_sft_without_kd_verdicts_on_samples():
    one, sft = "opt/13B>1.3B", "opt/1.3B"

    def verdict(samples):
        out = checks.claim_checks(store_of(samples), "table2", "small", samples, n_resamples=2000)
        return next(r for r in out if r["id"] == "opt-rouge-one-step-beats-sft-1.3b")

    better = verdict(sample_frame({one: 27.0, sft: 25.0}, {}, n_examples=60, seed=8))
    assert (better["status"], better["verdict"], better["comparisons"]) == ("pass", "holds", [f"{one} - {sft}"])
    assert better["diff"][0] == pytest.approx(2.0, abs=0.01) and better["ci"][0][0] > 0
    # the same model twice (the hop changed nothing): identical per-example scores, a difference of exactly 0
    same = sample_frame({one: 25.0, sft: 25.0}, {}, n_examples=60, seed=8)
    same.loc[same["entry"] == one, "rouge_l"] = same.loc[same["entry"] == sft, "rouge_l"].to_numpy()
    identical = verdict(same)
    assert (identical["status"], identical["verdict"]) == ("fail", "inconclusive")
    assert identical["diff"] == [0.0] and identical["ci"][0][0] <= 0 <= identical["ci"][0][1]
    worse = verdict(sample_frame({one: 24.0, sft: 25.0}, {}, n_examples=60, seed=8))
    assert worse["verdict"] == "contradicted"
    # a baseline that was not evaluated: not comparable, saying which entry has no samples
    missing = verdict(sample_frame({one: 27.0}, {}, n_examples=60, seed=8))
    assert missing["verdict"] == "not-comparable" and sft in missing["verdict_note"]


PAPER = Path(__file__).resolve().parents[2] / "shared" / "paper" / "mskd-paper.txt"  # shared/ sits beside the repo


def test_claims_cover_every_artefact_and_cite_a_section():
    assert len({c.id for c in checks.CLAIMS}) == len(checks.CLAIMS)
    assert {c.artefact for c in checks.CLAIMS} == set(registry.ARTEFACTS)
    assert {c.section for c in checks.CLAIMS} == {"Abstract", "§4.1", "§4.2", "§5", checks.MINILLM_TABLE1}


@pytest.mark.skipif(not PAPER.exists(), reason="shared/paper is not beside this checkout")
def test_claims_quote_the_paper_verbatim():
    def norm(text):  # the text extraction writes some arrows as LaTeX and wraps lines
        return re.sub(r"\s+", " ", text.replace("$\\rightarrow$", "→"))

    paper = norm(PAPER.read_text(encoding="utf-8"))
    for c in (c for c in checks.CLAIMS if c.section != checks.MINILLM_TABLE1):  # MiniLLM's claims quote MiniLLM
        quote = norm(c.quote)
        words = quote.split(" ")
        # a sentence cut in two by a page break (footnote and Table 2 in between) matches as its two halves
        split = any(" ".join(words[:i]) in paper and " ".join(words[i:]) in paper for i in range(1, len(words)))
        assert quote in paper or split, c.id


def test_named_claims_from_the_paper_are_present():
    ids = {c.id for c in checks.CLAIMS}
    for expected in [
        "gpt2-rouge-760m-ta-120m-student",
        "gpt2-rouge-760m-ta-340m-student",
        "gpt2-rouge-760m-ta-beats-340m-ta",
        "gpt2-rouge-three-step-below-two-step",
        "gpt2-rouge-three-step-below-one-step",
        "opt-rouge-6.7b-ta-2.7b-student",
        "opt-rouge-two-step-gains-both-students",
        "opt-rouge-three-step-beats-one-step",
        "opt-rouge-best-two-step-has-largest-ta",
        "gpt2-ppl-three-step-between",
        "opt-ppl-three-step-lowest-for-1.3b",
        "gpt2-ppl-better-ta-better-student",
        "opt-ppl-multi-step-always-beats-one-step",
        "opt-ppl-gains-grow-with-depth-and-ta-size",
    ]:
        assert expected in ids


def test_claim_flips_when_its_relation_flips():
    pub = checks.published("rouge_l")
    claim = next(c for c in checks.CLAIMS if c.id == "gpt2-rouge-760m-ta-120m-student")
    assert claim.evaluate(pub) == "pass"
    assert claim.evaluate(pub | {"gpt2/1.5B>760M>120M": 24.0}) == "fail"
    assert claim.evaluate(pub | {"gpt2/1.5B>760M>120M": 24.60}) == "fail"  # a tie is not an improvement
    assert claim.evaluate({k: v for k, v in pub.items() if k != "gpt2/1.5B>120M"}) == "not-comparable"


def test_perplexity_claims_prefer_lower():
    pub = checks.published("perplexity")
    claim = next(c for c in checks.CLAIMS if c.id == "opt-ppl-three-step-lowest-for-1.3b")
    assert claim.evaluate(pub) == "pass"
    assert claim.evaluate(pub | {"opt/13B>6.7B>1.3B": 11.0}) == "fail"


def test_which_side_is_better_comes_from_results_metrics(monkeypatch):
    from benchmark import results

    assert (checks.higher_is_better("rouge_l"), checks.higher_is_better("perplexity")) == (True, False)
    claim = next(c for c in checks.CLAIMS if c.id == "opt-ppl-three-step-lowest-for-1.3b")
    monkeypatch.setitem(results.METRICS["perplexity_samples"], "higher_is_better", True)
    assert claim.evaluate(checks.published("perplexity")) == "fail"  # the lowest perplexity is no longer the best


def test_relations():
    v = {"a": 1.0, "b": 2.0, "c": 3.0, "ta": 1.0, "tb": 2.0, "sa": 5.0, "sb": 6.0}
    assert checks.Beats((("c", "a"), ("b", "a"))).holds(v, higher=True)
    assert not checks.Beats((("c", "a"), ("a", "b"))).holds(v, higher=True)
    assert checks.BestOf(("a",), ("a", "b", "c")).holds(v, higher=False)
    assert not checks.BestOf(("a",), ("a", "b", "c")).holds(v | {"b": 1.0}, higher=False)  # tie with a non-winner
    assert checks.BestOf(("a", "b"), ("a", "b", "c")).holds(v | {"b": 0.5}, higher=False)
    same = checks.SameOrder((("ta", "sa"), ("tb", "sb")))
    assert same.holds(v, higher=False) and not same.holds(v | {"sa": 7.0}, higher=False)
    # OPT 1.3B (-13.9%) vs GPT-2 120M (-9.9%): the bigger family's perplexity gain is not smaller
    gain = checks.RelativeGainBelow(big=("x1", "x0"), small=("y1", "y0"))
    assert gain.holds({"x1": 9.5, "x0": 10.0, "y1": 9.0, "y0": 10.0}, higher=False)
    assert not gain.holds({"x1": 11.88, "x0": 13.79, "y1": 21.56, "y0": 23.93}, higher=False)


def test_claim_checks_on_a_store_and_missing_entries():
    df = published_store("small")
    out = checks.claim_checks(df, "table4", "small")
    assert [r["id"] for r in out] == [c.id for c in checks.claims("table4")]
    assert all(r["status"] == ("pass" if r["holds_on_published"] else "fail") for r in out)
    # the cross-family claim needs GPT-2 entries too
    only_opt = df[df["entry"].str.startswith("opt/")]
    statuses = {r["id"]: r["status"] for r in checks.claim_checks(only_opt, "table4", "small")}
    assert statuses["larger-family-smaller-ppl-gain"] == "not-comparable"
    assert statuses["opt-ppl-ta-predicts-student"] == "pass"
    # claims at a scale with no records at all
    assert {r["status"] for r in checks.claim_checks(df, None, "paper")} == {"not-comparable"}


# ---------------------------------------------------------------------------------------------- verdicts on samples


def sample_frame(rouge, ppl, n_examples=40, seeds=(10, 20, 30, 40, 50), seed=0, prompts=None) -> pd.DataFrame:
    """Per-example samples (`results.read_samples` columns) of every entry of `rouge` / `ppl` (entry -> value):
    each example's ROUGE-L is the entry's value plus a difficulty shared by the family's entries and a little
    (seed, example) noise; its log-perplexity likewise around log(value). `prompts(family, i)` names the examples
    (default: one test set per family)."""
    rng = np.random.default_rng(seed)
    prompts = prompts or (lambda family, i: f"{family} prompt {i}")
    difficulty = {f: rng.normal(0.0, 1.0, size=n_examples) for f in ("gpt2", "opt")}
    rows = []
    for entry in dict.fromkeys([*rouge, *ppl]):
        family = entry.split("/")[0]
        for s in seeds:
            noise = rng.normal(0.0, 0.01, size=(2, n_examples))
            for i in range(n_examples):
                log_ppl = math.log(ppl[entry]) + 0.1 * difficulty[family][i] + noise[1, i] if entry in ppl else None
                rows.append(
                    {
                        "entry": entry,
                        "stage": f"stage-{entry}",
                        "seed": s,
                        "example": i,
                        "prompt": prompts(family, i),
                        "reference": f"reference {i}",
                        "rouge_l": rouge[entry] + difficulty[family][i] + noise[0, i] if entry in rouge else None,
                        "sample_nll": None if log_ppl is None else 10 * log_ppl,
                        "sample_tokens": 10,
                        "log_ppl_samples": np.nan if log_ppl is None else log_ppl,
                    }
                )
    return pd.DataFrame(rows)


def store_of(samples: pd.DataFrame, scale: str = "small") -> pd.DataFrame:
    """The records those samples average to: rouge_l and perplexity_samples means, as evaluate_model makes them."""
    frames = []
    for metric, value in (("rouge_l", samples["rouge_l"]), ("perplexity_samples", np.exp(samples["log_ppl_samples"]))):
        means = samples.assign(v=value).dropna(subset=["v"]).groupby("entry")["v"].mean()
        frames.append(store(means.to_dict(), metric, scale).assign(stage=[f"stage-{k}" for k in means.index]))
    return pd.concat(frames, ignore_index=True)


def test_every_claim_gets_the_verdict_the_papers_numbers_give():
    """Samples around the published numbers: a claim the paper's tables support holds, one they do not is
    contradicted (its relation is significant the other way); each comparison carries its difference, interval and
    Holm-adjusted p-value."""
    # the SFT-only baselines at MiniLLM's values, the two rows not located one point below their one-step student
    rouge = checks.published("rouge_l") | {"gpt2/760M": 25.4, "gpt2/340M": 24.4, "gpt2/120M": 23.3}
    rouge |= {"opt/6.7B": 27.6, "opt/2.7B": 26.4, "opt/1.3B": 26.0}
    samples = sample_frame(rouge, checks.published("perplexity"))
    out = checks.claim_checks(store_of(samples), None, "small", samples, n_resamples=2000)
    assert [r["id"] for r in out] == [c.id for c in checks.CLAIMS]
    for r in out:
        holds = r["holds_on_published"] is not False
        assert r["verdict"] == ("holds" if holds else "contradicted"), (r["id"], r)
        assert r["status"] == ("pass" if holds else "fail")
        n = len(r["comparisons"])
        assert n >= 1 and all(len(r[k]) == n for k in ("claimed_signs", "diff", "ci", "ci_level", "p_value"))
        assert all(adj >= raw for adj, raw in zip(r["p_value"], r["p_value_raw"]))
        assert r["score"] == ("rouge_l" if r["metric"] == "rouge_l" else "log_ppl_samples")
        for d, (low, high), sign in zip(r["diff"], r["ci"], r["claimed_signs"]):
            assert low <= d <= high
            if r["verdict"] == "holds":
                assert (low > 0) if sign > 0 else (high < 0)
    json.dumps(out, allow_nan=False)  # checks.json stays strict JSON
    by_id = {r["id"]: r for r in out}
    # BestOf: the best winner by mean against every non-winner
    best = by_id["gpt2-rouge-gradual-not-excessive"]
    assert best["comparisons"] == [
        "gpt2/1.5B>760M>120M - gpt2/1.5B>120M",
        "gpt2/1.5B>760M>120M - gpt2/1.5B>760M>340M>120M",
    ]
    assert best["claimed_signs"] == [1, 1]
    # SameOrder: the students in the order of their TAs (lower perplexity first), claimed below 0
    order = by_id["opt-ppl-ta-predicts-student"]
    pub = checks.published("perplexity")
    links = [("opt/13B>6.7B", "opt/13B>6.7B>1.3B"), ("opt/13B>2.7B", "opt/13B>2.7B>1.3B"),
             ("opt/13B>6.7B>2.7B", "opt/13B>6.7B>2.7B>1.3B")]  # fmt: skip
    expect = [
        f"{sa} - {sb}" if pub[ta] < pub[tb] else f"{sb} - {sa}"
        for i, (ta, sa) in enumerate(links)
        for tb, sb in links[i + 1 :]
    ]
    assert order["comparisons"] == expect and order["claimed_signs"] == [-1, -1, -1]
    # relative gains across families: two test sets, resampled independently (both sets' examples count)
    gain = by_id["larger-family-smaller-rouge-gain"]
    assert gain["comparisons"] == [
        "gain(opt/13B>6.7B>1.3B over opt/13B>1.3B) - gain(gpt2/1.5B>760M>120M over gpt2/1.5B>120M)"
    ]
    assert gain["n_examples"] == [80] and gain["claimed_signs"] == [-1]
    rouge = checks.published("rouge_l")
    rel = lambda new, base: (rouge[new] - rouge[base]) / rouge[base]
    expect = rel("opt/13B>6.7B>1.3B", "opt/13B>1.3B") - rel("gpt2/1.5B>760M>120M", "gpt2/1.5B>120M")  # +14.5% - 10.6%
    assert gain["diff"][0] == pytest.approx(expect, abs=0.005)


def test_verdict_holds_contradicted_inconclusive():
    a, b = "gpt2/1.5B>760M>120M", "gpt2/1.5B>120M"  # gpt2-rouge-760m-ta-120m-student: a beats b

    def verdict(samples):
        out = checks.claim_checks(store_of(samples), "table1", "small", samples)
        return next(r for r in out if r["id"] == "gpt2-rouge-760m-ta-120m-student")

    holds = verdict(sample_frame({a: 25.5, b: 25.0}, {}, n_examples=60, seed=3))
    contradicted = verdict(sample_frame({a: 24.5, b: 25.0}, {}, n_examples=60, seed=3))
    # a differs from b by +1 on half of the examples and -1 on the other half: a difference of exactly 0
    tie = sample_frame({a: 25.0, b: 25.0}, {}, n_examples=60, seed=3)
    mine, theirs = tie["entry"] == a, tie["entry"] == b
    tie.loc[mine, "rouge_l"] = tie.loc[theirs, "rouge_l"].to_numpy() + np.where(tie.loc[theirs, "example"] % 2, 1, -1)
    inconclusive = verdict(tie)
    assert (holds["verdict"], contradicted["verdict"], inconclusive["verdict"]) == (
        "holds",
        "contradicted",
        "inconclusive",
    )
    assert holds["comparisons"] == [f"{a} - {b}"] and holds["diff"][0] == pytest.approx(0.5, abs=0.01)
    assert holds["ci"][0][0] > 0 and contradicted["ci"][0][1] < 0
    low, high = inconclusive["ci"][0]
    assert low < 0 < high and inconclusive["p_value"][0] > 0.5 and inconclusive["diff"][0] == pytest.approx(0.0)
    assert holds["ci_level"] == [0.95] and holds["p_value"] == holds["p_value_raw"]  # one comparison: no correction


def test_perplexity_verdict_uses_log_perplexity_so_one_degenerate_sample_cannot_decide():
    """gpt2-ppl-better-ta-better-student: 1.5B>760M beats 1.5B>760M>340M and 1.5B>760M>120M beats the three-step
    chain. One gibberish sample of 1.5B>760M>120M (22026 perplexity at one seed of one example of 200) lifts its
    mean perplexity above the three-step chain's, so the mean-based status fails; the per-example log-perplexities
    still show the claim holding."""
    pub = checks.published("perplexity")
    four = ["gpt2/1.5B>760M", "gpt2/1.5B>760M>340M", "gpt2/1.5B>760M>120M", "gpt2/1.5B>760M>340M>120M"]
    samples = sample_frame({}, {k: pub[k] for k in four}, n_examples=200, seed=4)
    clean = checks.claim_checks(store_of(samples), "table3", "small", samples)
    degenerate = (samples["entry"] == "gpt2/1.5B>760M>120M") & (samples["seed"] == 10) & (samples["example"] == 0)
    samples.loc[degenerate, ["sample_nll", "log_ppl_samples"]] = [100.0, 10.0]
    dirty = checks.claim_checks(store_of(samples), "table3", "small", samples)
    before = {r["id"]: r for r in clean}["gpt2-ppl-better-ta-better-student"]
    after = {r["id"]: r for r in dirty}["gpt2-ppl-better-ta-better-student"]
    assert (before["status"], before["verdict"]) == ("pass", "holds")
    assert after["measured"]["gpt2/1.5B>760M>120M"] > after["measured"]["gpt2/1.5B>760M>340M>120M"]
    assert (after["status"], after["verdict"]) == ("fail", "holds")
    assert after["diff"][1] < 0 and after["ci"][1][1] < 0


def test_empty_responses_leave_the_seed_average_of_their_example_unchanged():
    """An empty response has no log-perplexity: that seed takes the example's mean over the other seeds, and an example
    without a scored response at any seed leaves the comparison."""
    a, b = "gpt2/1.5B>760M>120M", "gpt2/1.5B>120M"  # gpt2-ppl-two-steps-optimal needs all four 120M students
    samples = sample_frame({}, {k: 20.0 + i for i, k in enumerate(checks._GPT2_120M)}, n_examples=30, seed=5)
    empty = (samples["entry"] == a) & (
        ((samples["example"] == 3) & (samples["seed"] == 20)) | (samples["example"] == 7)
    )
    samples.loc[empty, ["sample_nll", "sample_tokens", "log_ppl_samples"]] = [0.0, 0, np.nan]
    (rec,) = [
        r
        for r in checks.claim_checks(store_of(samples), "table3", "small", samples, n_resamples=500)
        if r["id"] == "gpt2-ppl-two-steps-optimal"
    ]
    assert rec["comparisons"][0] == f"{a} - {b}" and rec["n_examples"][0] == 29
    lp = samples.pivot_table(index=["entry", "example"], columns="seed", values="log_ppl_samples")
    per_example = lp.mean(axis=1)  # the mean over the seeds that have a score
    expect = (per_example[a] - per_example[b]).drop(7).mean()
    assert rec["diff"][0] == pytest.approx(expect, rel=1e-9)


def test_verdict_not_comparable_without_samples():
    samples = sample_frame(checks.published("rouge_l"), {}, n_examples=10)
    df = store_of(samples)
    no_samples = checks.claim_checks(df, "table1", "small")
    assert {r["verdict"] for r in no_samples} == {"not-comparable"}
    assert all(r["diff"] is None and r["ci"] is None and r["verdict_note"] for r in no_samples)
    assert [r["status"] for r in no_samples] == [
        r["status"] for r in checks.claim_checks(df, "table1", "small", samples)
    ]
    # an entry evaluated before samples.jsonl existed: its claims are not comparable, the others get verdicts
    old = samples[samples["entry"] != "gpt2/1.5B>340M>120M"]
    out = {r["id"]: r for r in checks.claim_checks(df, "table1", "small", old)}
    assert out["gpt2-rouge-760m-ta-beats-340m-ta"]["verdict"] == "not-comparable"
    assert "gpt2/1.5B>340M>120M" in out["gpt2-rouge-760m-ta-beats-340m-ta"]["verdict_note"]
    assert out["gpt2-rouge-760m-ta-120m-student"]["verdict"] == "holds"
    # samples of another stage than the record's are not this evaluation's
    other = samples.assign(stage="another evaluation")
    assert {r["verdict"] for r in checks.claim_checks(df, "table1", "small", other)} == {"not-comparable"}
    assert {r["verdict"] for r in checks.claims_on_published()} == {"not-comparable"}


def test_relative_gain_of_one_test_set_is_resampled_together():
    same = lambda family, i: f"prompt {i}"  # both families on the same examples (the paper scale's Dolly test set)
    samples = sample_frame(checks.published("rouge_l"), {}, prompts=same)
    (gain,) = [
        r
        for r in checks.claim_checks(store_of(samples), "table2", "small", samples)
        if r["id"] == "larger-family-smaller-rouge-gain"
    ]
    assert gain["n_examples"] == [40] and gain["verdict"] == "contradicted"


# ---------------------------------------------------------------------------------------------- checks.json, summary


def test_update_checks_file_replaces_only_its_artefact(tmp_path):
    path = tmp_path / "checks.json"
    df = published_store()
    t3 = checks.published_checks(df, "table3", "paper")
    t1 = checks.published_checks(df, "table1", "paper") + checks.claim_checks(df, "table1", "paper")
    checks.update_checks_file(path, "table3", t3)
    checks.update_checks_file(path, "table1", t1)
    checks.update_checks_file(path, "table3", t3[:2])  # a rerun replaces, never appends
    saved = json.loads(path.read_text())
    assert [r["artefact"] for r in saved] == ["table1"] * len(t1) + ["table3"] * 2
    with pytest.raises(ValueError):
        checks.update_checks_file(path, "table2", t3)


def test_summarize_counts_per_artefact_and_kind():
    df = published_store("paper")
    records = (
        checks.published_checks(df.assign(mean=df["mean"] + 10.0), "table1", "paper")  # 8 fails
        + checks.published_checks(published_store("small"), "table2", "small")  # 8 not comparable
        + checks.claims_on_published()
    )
    summary = checks.summarize(records)
    assert list(summary.columns) == ["pass", "fail", "not-comparable", "total"]
    assert summary.loc[("table1", "published")].tolist() == [0, 8, 0, 8]
    assert summary.loc[("table2", "published")].tolist() == [0, 0, 8, 8]
    # the MiniLLM claims: 2 pass per table on MiniLLM's numbers, 1 not comparable (its SFT w/o KD row not located)
    assert summary.loc[("table1", "claim")].tolist() == [10, 1, 1, 12]
    assert summary.loc[("all", "")].tolist() == [31, 13, 10, 54]
    assert list(summary.index.get_level_values(0).unique()) == [
        "table1",
        "table2",
        "table3",
        "table4",
        "figure2",
        "all",
    ]
