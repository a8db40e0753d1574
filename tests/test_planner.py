"""benchmark.planner: ranking the paths by a law, Kendall's tau, costs, measurements, the `suggest` CLI and the
planner notebook (the one slow test). The laws' own scores: tests/test_laws.py."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from benchmark import laws, plan, planner, registry
from benchmark.__main__ import main
from benchmark.notebooks import NOTEBOOKS, run_planner_report

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "results" / "published"
PYTHIA = "12B,6.9B,2.8B,1.4B,410M,160M"


def keys(suggestions):
    return [s["key"] for s in suggestions]


# ----------------------------------------------------------------------------------------------------------------
# ranking
# ----------------------------------------------------------------------------------------------------------------


def test_capacity_gap_ranks_the_three_step_paths_first():
    for family, student in (("gpt2", "120M"), ("opt", "1.3B")):
        best = planner.suggest(family=family, student=student)[0]
        assert best["hops"] == 3 and best["predicted"]["capacity-gap"]["optimal_hops"] == 3


def test_ranking_of_a_constructed_ladder():
    # 100B > 40B > 16B > 6.4B: every hop of the full path is exactly 2.5x (score 0)
    out = planner.suggest(sizes="100B,40B,16B,6.4B", student="6.4B")
    ln = math.log
    expected = {
        "100B>40B>16B>6.4B": 0.0,
        "100B>16B>6.4B": abs(ln(100 / 16) - ln(2.5)),  # 6.25x then 2.5x
        "100B>40B>6.4B": abs(ln(40 / 6.4) - ln(2.5)),  # 2.5x then 6.25x: ties with the one above
        "100B>6.4B": abs(ln(100 / 6.4) - ln(2.5)),
    }
    assert keys(out) == ["100B>40B>16B>6.4B", "100B>40B>6.4B", "100B>16B>6.4B", "100B>6.4B"]  # tie: ladder order
    for s in out:
        assert s["predicted"]["capacity-gap"]["score"] == pytest.approx(expected[s["key"]], abs=1e-6)
    assert [s["rank"] for s in out] == [1, 2, 3, 4]
    # error accumulation: fewest TAs first; the two one-TA paths tie and keep the ladder order
    assert keys(planner.suggest(sizes="100B,40B,16B,6.4B", student="6.4B", by="error-accumulation")) == [
        "100B>6.4B",
        "100B>40B>6.4B",
        "100B>16B>6.4B",
        "100B>40B>16B>6.4B",
    ]
    # geometric midpoint of 100B and 6.4B: 25.3B, equally far (in log) from 40B and 16B since 40 * 16 = 100 * 6.4
    geo = {s["key"]: s["predicted"]["geometric-midpoint"]["score"] for s in out}
    mid = (ln(100) + ln(6.4)) / 2
    assert geo["100B>6.4B"] == pytest.approx(ln(100 / 6.4) / 2, abs=1e-6)
    assert geo["100B>40B>16B>6.4B"] == pytest.approx(min(abs(ln(40) - mid), abs(ln(16) - mid)), abs=1e-6)


def test_suggest_gives_every_laws_score_and_ranks_by_the_chosen_one():
    out = {s["key"]: s for s in planner.suggest(family="gpt2", student="120M")}
    ladder, published = laws.family_ladder("gpt2", "120M"), laws.Quality.published()
    for s in out.values():
        for law_id, law in laws.LAWS.items():
            score, note = law.score(laws.PathView(ladder, tuple(s["path"]), published))
            assert s["predicted"][law_id]["score"] == pytest.approx(score, abs=1e-6)
            assert s["predicted"][law_id]["note"] == note
    cg = {k: s["predicted"]["capacity-gap"]["score"] for k, s in out.items()}
    assert min(cg, key=cg.get) == "gpt2/1.5B>760M>340M>120M"
    assert max(cg, key=cg.get) == "gpt2/1.5B>120M"
    # the TA with the lowest perplexity (760M, 15.40 in Table 3) ranks its student first
    assert keys(planner.suggest(family="gpt2", student="120M", by="ta-quality"))[0] == "gpt2/1.5B>760M>120M"


def test_quality_laws_without_quality_say_so():
    out = planner.suggest(sizes=PYTHIA, student="160M")
    for s in out:
        for law in ("takd-quality", "ta-quality"):
            assert s["predicted"][law]["score"] is None
            assert s["predicted"][law]["note"].startswith("needs quality")
        assert s["published"] is None and s["measured"] is None and not s["registered"]
    # --by a quality law without quality: every score null, so the order is hops then ladder order
    assert [s["hops"] for s in planner.suggest(sizes=PYTHIA, student="160M", by="ta-quality")][:2] == [1, 2]


# ----------------------------------------------------------------------------------------------------------------
# Kendall's tau
# ----------------------------------------------------------------------------------------------------------------


def test_kendall_tau_hand_computed():
    # 6 pairs, only (2, 3) discordant: (5 - 1) / 6
    assert planner.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
    assert planner.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties (tau-b): pairs (1,2) tied in x, (2,3) tied in y; 4 concordant, 0 discordant: 4 / sqrt((6-1)(6-1)) = 0.8
    assert planner.kendall_tau([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    assert math.isnan(planner.kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        planner.kendall_tau([1, 2], [1, 2, 3])


def test_law_agreement_on_the_paper_numbers():
    out = planner.suggest(family="gpt2", student="120M")
    rouge = {k: e.published.rouge_l for k, e in registry.ENTRIES.items()}
    # capacity gap ranks 3-step > 340M > 760M > 1-step; the paper measured 760M > 340M > 1-step > 3-step: 2 C, 4 D
    assert planner.law_agreement(out, "capacity-gap", rouge) == pytest.approx(-1 / 3)
    # perplexity, lower is better (results.METRICS): ta-quality orders the TAs 760M (15.40) < 3-step (17.55) <
    # 1-step (21.94) < 340M (24.77); the students measured 760M (21.56) < 340M (21.76) < 3-step (22.31) < 1-step
    # (23.93): 4 C, 2 D. Read as higher-is-better, the same numbers give the opposite sign.
    ppl = {k: e.published.perplexity for k, e in registry.ENTRIES.items()}
    assert planner.law_agreement(out, "ta-quality", ppl, metric="perplexity_samples") == pytest.approx(1 / 3)
    assert planner.law_agreement(out, "ta-quality", ppl, metric="rouge_l") == pytest.approx(-1 / 3)


# ----------------------------------------------------------------------------------------------------------------
# cost and measurements
# ----------------------------------------------------------------------------------------------------------------


def test_cost_follows_the_plan_cost_model():
    out = {s["key"]: s["cost"] for s in planner.suggest(family="gpt2", student="120M")}
    assert out["gpt2/1.5B>120M"]["amount"] == 0 and out["gpt2/1.5B>120M"]["hops"][0]["status"] == "sourced"
    two = out["gpt2/1.5B>760M>120M"]
    assert [h["status"] for h in two["hops"]] == ["sourced", "run"]
    assert two["amount"] == pytest.approx(20 * (0.77 + 0.12)) and two["unit"] == "V100-GPU-h"
    # the ladder estimate uses plan.py's rule
    stage = next(s for s in plan.build_plan(["gpt2/1.5B>760M>120M"], "paper").by_kind("distill") if not s.source)
    assert plan.stage_cost_value(stage, "paper")[0] == pytest.approx(planner.V100_HOURS_PER_B * (0.77 + 0.12))
    pythia = {s["key"]: s["cost"] for s in planner.suggest(sizes=PYTHIA, student="160M")}
    assert pythia["12B>160M"]["amount"] == pytest.approx(20 * 12.16)
    # a teacher other than the family's: not registered, the plan's cost model on a stand-in stage
    other = planner.suggest(family="gpt2", teacher="760M", student="120M")
    assert len(other) == 2 and not any(s["registered"] for s in other)
    assert {s["cost"]["hops"][0]["status"] for s in other} == {"estimated"}


def test_cost_counts_only_hops_not_done_in_the_run(tmp_path):
    built = plan.build_plan(["gpt2/1.5B>760M>120M"], "small")
    first = next(s for s in built.by_kind("distill") if s.config["path"] == ["1.5B", "760M"])
    (tmp_path / "stages" / first.dirname).mkdir(parents=True)
    (tmp_path / "stages" / first.dirname / plan.DONE_FILE).write_text("{}")
    (tmp_path / "results.jsonl").write_text("")
    out = {s["key"]: s["cost"] for s in planner.suggest(family="gpt2", student="120M", scale="small", results=tmp_path)}
    assert [h["status"] for h in out["gpt2/1.5B>760M>120M"]["hops"]] == ["done", "run"]
    assert out["gpt2/1.5B>760M>120M"]["hops_to_train"] == 1
    assert out["gpt2/1.5B>120M"]["hops_to_train"] == 1 and out["gpt2/1.5B>120M"]["unit"] == "s CPU"
    assert out["gpt2/1.5B>760M>120M"]["amount"] == pytest.approx(out["gpt2/1.5B>120M"]["amount"])


def test_measured_interval_over_seeds_from_the_fixture_store():
    out = {s["key"]: s for s in planner.suggest(family="gpt2", student="120M", results=FIXTURE)}
    m = out["gpt2/1.5B>760M>120M"]["measured"]
    half = 1.96 * 0.15811388300841897 / math.sqrt(5)
    assert m["mean"] == pytest.approx(27.2) and m["interval"].startswith("interval over seeds")
    assert (m["low"], m["high"]) == pytest.approx((27.2 - half, 27.2 + half))
    assert out["gpt2/1.5B>760M>120M"]["quality_source"].startswith("measured")
    assert keys(planner.suggest(family="gpt2", student="120M", results=FIXTURE, by="measured"))[0] == (
        "gpt2/1.5B>760M>120M"
    )


def test_measured_bootstrap_interval_from_samples(tmp_path):
    from benchmark import results

    if not hasattr(results, "read_samples"):
        pytest.skip("results.read_samples not available")
    rec = json.loads((FIXTURE / "results.jsonl").read_text().splitlines()[0]) | {"stage": "abc123def456"}
    assert rec["entry"] == "gpt2/1.5B" and rec["metric"] == "rouge_l"
    (tmp_path / "results.jsonl").write_text(json.dumps(rec) + "\n")
    stage_dir = tmp_path / "stages" / "evaluate-gpt2-1.5B-abc123def456"
    stage_dir.mkdir(parents=True)
    rows = [{"seed": s, "example": i, "rouge_l": float(10 + i + s / 10)} for s in (10, 20) for i in range(20)]
    (stage_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    measured, quality = planner.measured(tmp_path, "paper")
    m = measured["gpt2/1.5B"]
    assert m["interval"].startswith("percentile bootstrap") and (m["n_seeds"], m["n_examples"]) == (2, 20)
    assert m["mean"] == pytest.approx(sum(r["rouge_l"] for r in rows) / len(rows))
    assert m["low"] < m["mean"] < m["high"]
    assert quality.rouge_l["gpt2/1.5B"] == pytest.approx(m["mean"])


# ----------------------------------------------------------------------------------------------------------------
# the CLI
# ----------------------------------------------------------------------------------------------------------------


def test_suggest_json_fields(capsys):
    assert main(["suggest", "--family", "gpt2", "--student", "120M", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, list) and len(out) == 4
    for s in out:
        assert {"key", "hops", "ratios", "predicted", "cost", "measured", "rationale"} <= set(s)
        assert set(s["predicted"]) == set(laws.LAWS)
        assert all("name" in p and "score" in p for p in s["predicted"].values())
        assert s["measured"] is None and len(s["ratios"]) == s["hops"]
        assert s["rationale"].endswith(".") and "\n" not in s["rationale"] and s["rationale"].count(". ") == 0
    scores = [s["predicted"]["capacity-gap"]["score"] for s in out]
    assert scores == sorted(scores) and [s["rank"] for s in out] == [1, 2, 3, 4]
    assert out[0]["ratios"] == pytest.approx([1.56 / 0.77, 0.77 / 0.36, 3.0], abs=1e-4)


def test_suggest_table_for_a_ladder(capsys):
    assert main(["suggest", "--sizes", PYTHIA, "--student", "160M"]) == 0
    text = capsys.readouterr().out
    assert "16 paths" in text and "12B>6.9B>2.8B>1.4B>410M>160M" in text and "ceil(ln 75.0 / ln 2.5) = 5" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--family", "gpt3", "--student", "120M"], "unknown family 'gpt3' (did you mean 'gpt2'?)"),
        (["--family", "gpt2", "--student", "700M"], "did you mean 760M?"),
        (["--family", "gpt2", "--teacher", "340M", "--student", "760M"], "not smaller than the teacher 340M"),
        (["--sizes", "12B", "--student", "12B"], "at least 2 sizes"),
        (["--sizes", "12B,6.9B", "--student", "7B"], "did you mean 6.9B?"),
        (["--family", "gpt2", "--student", "120M", "--by", "measured"], "give --results"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    assert main(["suggest", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_python_m_benchmark_suggest_exits_2():
    run = subprocess.run(
        [sys.executable, "-m", "benchmark", "suggest", "--family", "gpt2", "--student", "1.5B"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        "error: the student 1.5B is not smaller than the teacher 1.5B: a chain distils into smaller models"
    ]


# ----------------------------------------------------------------------------------------------------------------
# the notebook
# ----------------------------------------------------------------------------------------------------------------


def test_committed_notebook_is_parameterised_and_clean():
    nb = nbformat.read(NOTEBOOKS / "planner.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and all(name in params[0].source for name in ("results_dir", "scale", "out_dir"))
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
def test_notebook_writes_planner_md_with_the_paper_numbers(tmp_path):
    # one execution: a store at `paper` scale (the fixture: published values) so both columns are filled
    store = tmp_path / "results"
    shutil.copytree(FIXTURE, store)
    md = run_planner_report(store, "paper", tmp_path / "tables").read_text()
    assert "## Which law predicts which" in md and "Kendall's tau-b" in md
    assert "for gpt2 → 120M it ranks `1.5B>760M>340M>120M` first, which the paper measured last of 4" in md
    assert "| capacity-gap | 1.5B>760M>340M>120M > 1.5B>340M>120M > 1.5B>760M>120M > 1.5B>120M | -0.33 |" in md
    assert "not available in this run" not in md and "16 entries with `rouge_l`" in md
