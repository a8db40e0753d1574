"""benchmark.checks: tolerance maths, published-number checks, every claim on the paper's own numbers, summaries."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
        assert [c["entry"] for c in out] == [e.key for e in registry.select([artefact])]
        assert {c["status"] for c in out} == {"pass"}, artefact


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


def test_every_claim_on_published_numbers_matches_the_paper():
    """Evaluated on Tables 1-4 themselves, a claim passes exactly when the paper's numbers support it."""
    records = checks.claims_on_published()
    assert len(records) == len(checks.CLAIMS)
    for r in records:
        assert r["status"] == ("pass" if r["holds_on_published"] else "fail"), (r["id"], r["relation"])


def test_claims_the_paper_contradicts_are_kept_and_explained():
    contradicted = {c.id for c in checks.CLAIMS if not c.holds_on_published}
    assert contradicted == {
        "gpt2-rouge-multi-step-always-beats-one-step",  # abstract "always": 24.10 < 24.60 in Table 1
        "larger-family-smaller-rouge-gain",
        "larger-family-smaller-ppl-gain",
        "gpt2-ppl-ta-predicts-student",
        "opt-ppl-three-step-lowest-overall",
    }
    assert all(c.note for c in checks.CLAIMS if not c.holds_on_published)


PAPER = Path(__file__).resolve().parents[2] / "shared" / "paper" / "mskd-paper.txt"  # shared/ sits beside the repo


def test_claims_cover_every_artefact_and_cite_a_section():
    assert len({c.id for c in checks.CLAIMS}) == len(checks.CLAIMS)
    assert {c.artefact for c in checks.CLAIMS} == set(registry.ARTEFACTS)
    assert {c.section for c in checks.CLAIMS} == {"Abstract", "§4.1", "§4.2", "§5"}


@pytest.mark.skipif(not PAPER.exists(), reason="shared/paper is not beside this checkout")
def test_claims_quote_the_paper_verbatim():
    def norm(text):  # the text extraction writes some arrows as LaTeX and wraps lines
        return re.sub(r"\s+", " ", text.replace("$\\rightarrow$", "→"))

    paper = norm(PAPER.read_text(encoding="utf-8"))
    for c in checks.CLAIMS:
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
    assert summary.loc[("table1", "claim")].tolist() == [8, 1, 0, 9]
    assert summary.loc[("all", "")].tolist() == [27, 13, 8, 48]
    assert list(summary.index.get_level_values(0).unique()) == [
        "table1",
        "table2",
        "table3",
        "table4",
        "figure2",
        "all",
    ]
