"""The notebooks, executed with papermill on fixture results stores (about 4 s per notebook).

The committed store `tests/fixtures/results/published` holds the published numbers at scale `paper`; the variants
are derived from it here: one perturbed cell, and the same values at scale `small` with per-example samples and the
stage summaries a finished run leaves (for stages.md).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest

from benchmark import checks, registry
from benchmark.notebooks import NOTEBOOKS, NotebookError, run_notebooks
from benchmark.plan import build_plan

FIXTURE = Path(__file__).parent / "fixtures" / "results" / "published" / "results.jsonl"
PERTURBED = "gpt2/1.5B>760M>120M"  # Table 1: 27.20 -> 24.00


def derive_store(
    directory: Path, scale: str = "paper", rouge_l: dict[str, float] | None = None, samples: int = 0
) -> Path:
    """A copy of the fixture store at `scale`, with some ROUGE-L means (and their seed values) replaced; with
    `samples`, each entry's records get a stage of their own whose `samples.jsonl` holds that many examples per seed
    around the recorded values (an example difficulty shared by the family plus a little noise). The paper has no
    SFT-only baselines: each gets its one-step student's records, one ROUGE-L point lower and perplexities 10 %
    higher (MiniLLM's Table 1 puts SFT w/o KD 0.7-1.4 points below its one-step students)."""
    directory.mkdir(parents=True)
    lines, by_entry = [], {}
    fixture = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    for e in (e for e in registry.ENTRIES.values() if e.label == "sft"):
        one_step = registry.path_key(e.family, (registry.FAMILIES[e.family].teacher, e.student))
        for rec in [r for r in fixture if r["entry"] == one_step]:
            shift = {"rouge_l": lambda v: v - 1.0, "exact_match": lambda v: v}.get(rec["metric"], lambda v: 1.1 * v)
            values = [round(shift(v), 4) for v in rec["values"]]
            fixture.append(rec | {"entry": e.key, "mean": shift(rec["mean"]), "values": values})
    for rec in fixture:
        rec = rec | {"scale": scale}
        new = (rouge_l or {}).get(rec["entry"]) if rec["metric"] == "rouge_l" else None
        if new is not None:
            rec["values"] = [round(v - rec["mean"] + new, 2) for v in rec["values"]]
            rec["mean"] = new
        if samples:
            rec["stage"] = f"{list(registry.ENTRIES).index(rec['entry']):012x}"  # a stage id of 12 hex digits
            by_entry.setdefault(rec["entry"], {})[rec["metric"]] = rec
        lines.append(json.dumps(rec))
    (directory / "results.jsonl").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    difficulty = {f: rng.normal(0.0, 1.0, size=samples) for f in ("gpt2", "opt")}
    for entry, recs in by_entry.items():
        family, stage = entry.split("/")[0], recs["rouge_l"]["stage"]
        gold = math.log(recs["perplexity_gold"]["values"][0])
        rows = []
        for k, seed in enumerate(recs["rouge_l"]["seeds"]):
            log_ppl = math.log(recs["perplexity_samples"]["values"][k])
            for i in range(samples):
                noise = rng.normal(0.0, 0.01, size=2)
                rows.append({
                    "entry": entry, "stage": stage, "seed": seed, "example": i, "prompt": f"{family} prompt {i}",
                    "prediction": "p", "reference": f"reference {i}",
                    "rouge_l": recs["rouge_l"]["values"][k] + difficulty[family][i] + noise[0], "exact_match": 0.0,
                    "sample_nll": 10 * (log_ppl + 0.1 * difficulty[family][i] + noise[1]), "sample_tokens": 10,
                    "gold_nll": 8 * gold, "gold_tokens": 8,
                })  # fmt: skip
        stage_dir = directory / "stages" / f"evaluate-{family}-fixture-{stage}"
        stage_dir.mkdir(parents=True)
        (stage_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def write_stage_summaries(store: Path, scale: str) -> list:
    """A `summary.json` for every SFT and MiniLLM stage of the scale's plan, with made-up numbers, as a finished run
    leaves them, plus one of a stage no longer in the plan (another config's hash); returns the plan's stages."""
    stages = [s for s in build_plan(["all"], scale).stages.values() if s.kind in ("sft", "distill") and not s.source]
    for i, s in enumerate(stages):
        if s.kind == "sft":
            selected = {"parameters": 1000 * (i + 1), "val_ppl": 2.0 + i / 8, "val_rouge_l_greedy": 60.0 - i}
            summary = {"selected": selected}
        else:
            summary = {
                "best": {"step": 32, "val_rouge_l": 40.0 - i},
                "heldout_rev_kl": {"init": 0.5, "selected": 0.45},
                "sequence_rev_kl": {
                    "init": {"per_response": 4.0, "mean_length": 5.0, "per_seed": [3.9, 4.1]},
                    "selected": {"per_response": 3.0, "mean_length": 4.5, "per_seed": [3.0, 3.0]},
                },
            }
        (store / "stages" / s.dirname).mkdir(parents=True)
        (store / "stages" / s.dirname / "summary.json").write_text(json.dumps(summary))
    stale = store / "stages" / f"{stages[0].name}-000000000000"
    stale.mkdir()
    (stale / "summary.json").write_text(json.dumps({"selected": {"parameters": 1, "val_ppl": 9.0}}))
    return stages


def load_checks(out: Path) -> list[dict]:
    return json.loads((out / "checks.json").read_text())


def outputs(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.is_file()}


ALL_FILES = {f"table{i}.{ext}" for i in range(1, 5) for ext in ("md", "csv", "tex")} | {
    "figure2.png",
    "figure2.csv",
    "figure2.md",
    "checks.json",
    "differences_gpt2.png",
    "differences_gpt2.csv",
    "differences_opt.png",
    "differences_opt.csv",
}
# checks.json's fields (paper_tables/README.md): the intervals and differences of the tables never change them
PUBLISHED_FIELDS = {
    "kind", "artefact", "scale", "entry", "metric", "published", "measured", "std", "n_seeds", "tolerance", "status",
    "note",
}  # fmt: skip
CLAIM_FIELDS = {
    "kind", "artefact", "scale", "id", "section", "quote", "metric", "relation", "measured", "published", "status",
    "verdict", "verdict_note", "score", "comparisons", "claimed_signs", "diff", "ci", "ci_level", "p_value",
    "p_value_raw", "n_examples", "holds_on_published", "note",
}  # fmt: skip


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("paper")
    return run_notebooks(derive_store(tmp / "results"), "paper", tmp / "tables")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("small")
    store = derive_store(tmp / "results", scale="small", samples=30)
    write_stage_summaries(store, "small")
    return run_notebooks(store, "small", tmp / "tables")


def test_published_values_pass_every_published_check(paper_run):
    assert ALL_FILES <= outputs(paper_run)
    records = load_checks(paper_run)
    published = [r for r in records if r["kind"] == "published"]
    assert len(published) == 32  # Tables 1-4; Figure 2 draws Table 4's values and is not re-checked
    assert {r["status"] for r in published} == {"pass"}
    # claims come out as the paper's own numbers make them: the contradicted ones fail
    claims = [r for r in records if r["kind"] == "claim"]
    assert [r["id"] for r in claims] == [c.id for c in checks.CLAIMS]
    # (MiniLLM's claims whose SFT w/o KD row was not located, holds_on_published None, pass on the derived values)
    assert all(r["status"] == ("fail" if r["holds_on_published"] is False else "pass") for r in claims)
    # a store without its stages has no per-example samples: no verdicts, and the tables say why
    assert {r["verdict"] for r in claims} == {"not-comparable"}
    assert "— verdict **not-comparable** (no per-example samples for " in (paper_run / "table1.md").read_text()
    assert all(set(r) == (PUBLISHED_FIELDS if r["kind"] == "published" else CLAIM_FIELDS) for r in records)
    # one executed copy per artefact (table.ipynb once per table) and the stages notebook's, beside the outputs; a
    # store without its run's stages has no stage summaries, so no stages.md
    executed = {p.name for p in (paper_run / "executed").iterdir()}
    assert executed == {f"{a}.ipynb" for a in registry.ARTEFACTS} | {"stages.ipynb"}
    assert "stages.md" not in outputs(paper_run)
    # the committed notebooks stay clean
    committed = {p.name for p in NOTEBOOKS.glob("*.ipynb")}
    assert committed == {"table.ipynb", "figure2.ipynb", "stages.ipynb", "planner.ipynb"}
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
        assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1


def test_tables_are_laid_out_like_the_paper(paper_run):
    md = (paper_run / "table1.md").read_text()
    # a store without samples: the checked columns as before, the interval and Δ columns "—", the paper's Δ shown
    assert (
        "|  | Teacher | TA 1 | TA 2 | Student | ROUGE-L ↑ | mean [95 % CI] | seed 10 | Δ vs one-step [95 % CI] | "
        "paper Δ vs one-step | Paper | Δ | Check |"
    ) in md
    assert "| Ours | 1.5B | 760M | 340M | 120M | 24.10 ± 0.16 | — | — | — | -0.50 | 24.10 | +0.00 | ✓ |" in md
    assert "| MiniLLM | 1.5B | - | - | 120M | 24.60 ± 0.16 | — | — |  |  | 24.60 | +0.00 | ✓ |" in md
    # each student's SFT-only baseline first, its paper cell MiniLLM's value as a reference, never checked
    assert "| SFT w/o KD | - | - | - | 120M | 23.60 ± 0.16 | — | — |  |  | 23.3 (MiniLLM, ref.) |  |  |" in md
    assert "| SFT w/o KD | - | - | - | 340M | 24.40 ± 0.16 | — | — |  |  | — (MiniLLM: not located) |  |  |" in md
    assert md.index("| SFT w/o KD | - | - | - | 120M |") < md.index("| MiniLLM | 1.5B | - | - | 120M |")
    assert "## One-step MiniLLM vs SFT w/o KD" in md and "| 120M | — | — | — | — | +1.3 (MiniLLM, ref.) |" in md
    assert "\nsmallest detectable difference in this run: — (no per-example samples" in md
    assert "## Provenance" in md and "- machine: " in md
    import pandas as pd

    t3 = pd.read_csv(paper_run / "table3.csv")
    assert list(t3["entry"]) == [e.key for e in registry.select(["table3"])]
    assert {"perplexity_samples", "perplexity_gold", "perplexity_gold_token", "status"} <= set(t3.columns)
    assert t3["geomean_ppl"].isna().all() and t3["published_diff"].notna().sum() == 4
    tex = (paper_run / "table4.tex").read_text()
    assert "\\begin{tabular}" in tex and "geometric mean [95 \\% CI]" in tex
    diffs = pd.read_csv(paper_run / "differences_opt.csv")
    assert len(diffs) == 8 and diffs["diff"].isna().all() and diffs["published_diff"].notna().all()
    figure2 = pd.read_csv(paper_run / "figure2.csv")
    assert figure2["geomean_ppl"].isna().all() and figure2["perplexity_samples"].notna().all()


def test_one_perturbed_cell_fails_alone_and_flips_its_claims(paper_run, tmp_path):
    out = tmp_path / "tables"
    shutil.copytree(paper_run, out)  # rerunning one notebook must replace only its own checks
    before = load_checks(out)
    run_notebooks(derive_store(tmp_path / "results", rouge_l={PERTURBED: 24.00}), "paper", out, ["table1"])
    after = load_checks(out)
    assert len(after) == len(before)
    assert [r for r in after if r["artefact"] != "table1"] == [r for r in before if r["artefact"] != "table1"]

    failed = [r["entry"] for r in after if r["kind"] == "published" and r["status"] != "pass"]
    assert failed == [PERTURBED]
    # 24.00 is below the one-step 24.60 and the three-step 24.10; the best 120M student is now 1.5B>340M>120M
    claims = {r["id"]: r["status"] for r in after if r["kind"] == "claim" and r["artefact"] == "table1"}
    assert claims == {
        "gpt2-rouge-one-step-beats-sft-760m": "pass",
        "gpt2-rouge-one-step-beats-sft-340m": "pass",
        "gpt2-rouge-one-step-beats-sft-120m": "pass",
        "gpt2-rouge-multi-step-always-beats-one-step": "fail",
        "gpt2-rouge-one-ta-consistently-improves": "fail",
        "gpt2-rouge-760m-ta-340m-student": "pass",
        "gpt2-rouge-760m-ta-120m-student": "fail",
        "gpt2-rouge-760m-ta-beats-340m-ta": "fail",
        "gpt2-rouge-three-step-below-two-step": "fail",
        "gpt2-rouge-three-step-below-one-step": "pass",
        "gpt2-rouge-gradual-not-excessive": "pass",
        "gpt2-rouge-peaks-with-large-ta": "fail",
    }
    row = "| Ours | 1.5B | 760M | - | 120M | 24.00 ± 0.16 | — | — | — | +2.60 | 27.20 | -3.20 | ✗ |"
    assert row in (out / "table1.md").read_text()


def test_small_scale_is_never_compared_with_the_paper(small_run):
    assert ALL_FILES <= outputs(small_run)
    records = load_checks(small_run)
    assert {r["status"] for r in records if r["kind"] == "published"} == {"not-comparable"}
    # claims are meaningful at every scale; with the per-example samples each gets a verdict with its intervals
    claims = [r for r in records if r["kind"] == "claim"]
    assert all(r["status"] == ("fail" if r["holds_on_published"] is False else "pass") for r in claims)
    assert all(r["verdict"] == ("contradicted" if r["holds_on_published"] is False else "holds") for r in claims)
    md = (small_run / "table1.md").read_text()
    assert "— verdict **holds** (gpt2/1.5B>760M>340M - gpt2/1.5B>340M: Δ +0.9" in md
    assert "scale `small`" in (small_run / "figure2.md").read_text()
    assert all(set(r) == (PUBLISHED_FIELDS if r["kind"] == "published" else CLAIM_FIELDS) for r in records)


def test_small_tables_show_intervals_differences_and_power(small_run):
    import pandas as pd

    md = (small_run / "table1.md").read_text()
    # the fixture's samples sit around the recorded values: 1.5B>760M>120M is 2.60 points above 1.5B>120M
    row = next(line for line in md.splitlines() if line.startswith("| Ours | 1.5B | 760M | - | 120M |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == "27.20 ± 0.16" and cells[9:] == ["+2.60", "27.20", "+0.00", "–"]
    assert re.fullmatch(r"\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]", cells[6]) and re.fullmatch(r"\d+\.\d\d", cells[7])
    assert re.fullmatch(r"\+2\.6\d \[\+2\.\d\d, \+2\.\d\d\]", cells[8])
    power = re.search(
        r"\nsmallest detectable difference in this run: ±([\d.]+) ROUGE-L points \(median half-width of the 4 paired "
        r"95 % intervals, 30 examples × 5 seeds; a single-seed evaluation of the same 30 examples: ±([\d.]+); of 500 "
        r"prompts: ±([\d.]+)\)",
        md,
    )
    assert power, md
    this_run, single_seed, at_500 = map(float, power.groups())
    assert 0 < this_run < single_seed and at_500 < single_seed

    t3 = pd.read_csv(small_run / "table3.csv")
    measured = ["geomean_ppl", "ci_low", "ci_high", "seed10", "corpus_ppl", "n_examples"]
    assert t3[measured].notna().all().all() and (t3["ci_low"] <= t3["geomean_ppl"]).all()
    assert (t3["geomean_ppl"] <= t3["ci_high"]).all() and (t3["n_examples"] == 30).all()
    multi = t3[t3["baseline"].notna()]
    assert list(multi["entry"]) == [k for k in t3["entry"] if registry.get(k).hops >= 2]
    assert ((multi["diff_low"] <= multi["diff"]) & (multi["diff"] <= multi["diff_high"])).all()
    md3 = (small_run / "table3.md").read_text()
    assert "| perplexity_samples ↓ | geometric mean [95 % CI] | seed 10 | corpus (token-level) |" in md3
    assert "| Δ log-PPL vs one-step [95 % CI] | paper Δ log-PPL |" in md3
    assert "smallest detectable difference in this run: ±" in md3 and "nats of log-perplexity, ≈ ±" in md3

    for family, table in (("gpt2", "table1"), ("opt", "table2")):
        diffs = pd.read_csv(small_run / f"differences_{family}.csv")
        keys = [k for k in (e.key for e in registry.select([table])) if registry.get(k).hops >= 2]
        assert list(diffs["entry"]) == keys * 2 and list(diffs["metric"]) == ["rouge_l"] * 4 + ["perplexity"] * 4
        assert diffs[["diff", "low", "high", "half_width", "single_seed_half_width"]].notna().all().all()
        assert (diffs["single_seed_half_width"] > diffs["half_width"]).all()
        # the fixture's differences are the published ones (plus a little noise)
        assert np.allclose(diffs["diff"], diffs["published_diff"], atol=0.01)
        assert (small_run / f"differences_{family}.png").stat().st_size > 10_000

    figure2 = pd.read_csv(small_run / "figure2.csv")
    assert (figure2[["geomean_low", "corpus_min", "perplexity_samples"]] > 0).all().all()
    assert (figure2["geomean_low"] <= figure2["geomean_ppl"]).all()
    assert "Log-scale perplexity axis" in (small_run / "figure2.md").read_text()


def test_failures_name_the_notebook_and_cell(tmp_path):
    with pytest.raises(NotebookError, match="does not exist"):
        run_notebooks(tmp_path / "nowhere", "small", tmp_path / "out")
    with pytest.raises(NotebookError, match="no notebook for"):
        run_notebooks(tmp_path, "small", tmp_path / "out", ["table9"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.jsonl").write_text("not json\n")
    with pytest.raises(NotebookError, match=r"notebooks/table\.ipynb failed in cell \d+ .*ResultsError.*table2\.ipynb"):
        run_notebooks(tmp_path / "bad", "small", tmp_path / "out", ["table2"])


def test_stages_md_shows_the_trained_stages_of_the_plan(small_run):
    """stages.md: every SFT model and MiniLLM hop of the scale's plan that has a summary in the run, in the plan's
    order, with the before -> after reverse KL and its change; a stage of another config is not shown."""
    stages = [s for s in build_plan(["all"], "small").stages.values() if s.kind in ("sft", "distill") and not s.source]
    md = (small_run / "stages.md").read_text()
    assert md.startswith("# Stages of ") and md.splitlines()[0].endswith("results (scale small)")
    sft = [line for line in md.splitlines() if line.startswith(("| gpt2 |", "| opt |"))]
    assert [tuple(c.strip() for c in line.split("|")[1:4]) for line in sft] == [
        (s.family, s.config["size"], s.config["role"]) for s in stages if s.kind == "sft"
    ]
    assert sft[0] == "| gpt2 | 1.5B | teacher | 1,000 | 2.000 | 60.00 |" and "| 1 | 9.000 |" not in md
    hops = [line for line in md.splitlines() if line.startswith("| 1") and "(" in line.split("|")[1]]
    assert [line.split("|")[1].strip() for line in hops] == [
        f"{'>'.join(s.config['path'])} ({s.family})" for s in stages if s.kind == "distill"
    ]
    # sequence 4.000 -> 3.000 (-25 %), per seed 3.9 -> 3.0 and 4.1 -> 3.0; held-out 0.5 -> 0.45 (-10 %)
    # and the selected step's validation ROUGE-L, 40 - the stage's index in write_stage_summaries
    first = next(i for i, s in enumerate(stages) if s.kind == "distill")
    cells = [c.strip() for c in hops[0].split("|")[2:-1]]
    assert cells == ["4.000", "3.000", "-25.0 %", "-23.1 %, -26.8 %", "5.00 -> 4.50", "0.5000", "0.4500", "-10.0 %",
                     "32", f"{40.0 - first:.2f}"]  # fmt: skip
