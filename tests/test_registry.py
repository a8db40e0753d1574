"""The registry: 16 paper entries, 32 published numbers, 6 SFT-only baselines, key parsing, CLI."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import registry, scales
from benchmark.registry import RegistryError

# A copy of shared/paper/published_numbers.csv (the numbers as transcribed from the paper's Tables 1-4): an
# independent source to check the literal registry against.
CSV = Path(__file__).parent / "data" / "published_numbers.csv"


def _csv_rows():
    with CSV.open() as f:
        return list(csv.DictReader(f))


def test_sixteen_paths_eight_per_family_and_a_baseline_per_student():
    paths = {k: e for k, e in registry.ENTRIES.items() if e.label != "sft"}
    assert len(paths) == 16 and len(registry.ENTRIES) == 22
    for fam in ("gpt2", "opt"):
        keys = [k for k, e in paths.items() if e.family == fam]
        assert len(keys) == 8
        baselines = [k for k, e in registry.ENTRIES.items() if e.family == fam and e.label == "sft"]
        assert baselines == [f"{fam}/{size}" for size in registry.FAMILIES[fam].sizes[1:]]
    expected = {
        "gpt2/1.5B",
        "gpt2/1.5B>760M",
        "gpt2/1.5B>340M",
        "gpt2/1.5B>120M",
        "gpt2/1.5B>760M>340M",
        "gpt2/1.5B>760M>120M",
        "gpt2/1.5B>340M>120M",
        "gpt2/1.5B>760M>340M>120M",
    }
    assert {k for k in paths if k.startswith("gpt2/")} == expected


def test_all_32_published_numbers_attached_to_the_right_entries():
    rows = _csv_rows()
    assert len(rows) == 32
    seen = set()
    for row in rows:
        path = [row["teacher"], row["ta1"], row["ta2"], row["student"]]
        key = registry.path_key(row["family"], tuple(s for s in path if s))
        entry = registry.get(key)
        metric = row["metric"]
        assert getattr(entry.published, metric) == pytest.approx(float(row["value"]), abs=1e-9), (key, metric)
        assert int(row["table"]) in entry.tables
        assert getattr(entry.published, f"{metric}_source") == f"Table {row['table']}"
        assert entry.label == row["label"]
        seen.add((key, metric))
    assert len(seen) == 32


def test_tables_and_figure_membership():
    for e in registry.ENTRIES.values():
        assert e.tables == ((1, 3) if e.family == "gpt2" else (2, 4))
        assert e.figures == (() if e.family == "gpt2" else (2,))
    assert [e.key for e in registry.select(["figure2"])] == [k for k in registry.ENTRIES if k.startswith("opt/")]
    assert len(registry.select(["all"])) == 22
    assert [e.key for e in registry.select(["table3", "gpt2/1.5B"])] == [k for k in registry.ENTRIES if "gpt2" in k]


def test_paper_row_order_and_labels():
    keys = [k for k in registry.ENTRIES if k.startswith("opt/")]
    assert keys[0] == "opt/13B" and registry.ENTRIES[keys[0]].label == "teacher"
    # each student's SFT-only baseline first, then its one-step row and its multi-step rows
    assert [registry.ENTRIES[k].label for k in keys] == [
        "teacher",
        "sft",
        "minillm",
        "sft",
        "minillm",
        "ours",
        "sft",
        "minillm",
        "ours",
        "ours",
        "ours",
    ]
    e = registry.get("opt/13B>6.7B>2.7B>1.3B")
    assert e.tas == ("6.7B", "2.7B") and e.student == "1.3B" and e.hops == 3 and e.prefix() == "opt/13B>6.7B>2.7B"
    assert e.roles == (("teacher", "13B"), ("TA", "6.7B"), ("TA", "2.7B"), ("student", "1.3B"))
    assert registry.get("opt/13B").roles == (("teacher", "13B"),)


def test_a_size_alone_is_the_students_sft_only_baseline():
    e = registry.get("gpt2/120M")
    assert (e.label, e.path, e.student, e.hops, e.tas, e.prefix()) == ("sft", ("120M",), "120M", 0, (), None)
    assert e.roles == (("student", "120M"),) and e.tables == (1, 3) and e.figures == ()
    assert registry.get("opt/2.7B").figures == (2,)
    # no seed-paper number: MiniLLM's own SFT w/o KD value beside it, never a published number
    assert e.published.rouge_l is None and e.published.perplexity is None
    refs = {k: (x.reference.rouge_l if x.reference else "-") for k, x in registry.ENTRIES.items() if x.hops == 0}
    assert refs == {
        "gpt2/1.5B": "-",
        "gpt2/760M": 25.4,
        "gpt2/340M": None,  # not located
        "gpt2/120M": 23.3,
        "opt/13B": "-",
        "opt/6.7B": 27.6,
        "opt/2.7B": None,  # not located
        "opt/1.3B": 26.0,
    }
    assert "not located" in registry.get("opt/2.7B").reference.source
    assert "Gu et al. 2024" in e.reference.source and "23.2" in e.reference.source
    assert registry.parse_key("opt/1.3B") == ("opt", ("1.3B",))
    assert [x.key for x in registry.select(["gpt2/340M", "gpt2/1.5B>340M"])] == ["gpt2/340M", "gpt2/1.5B>340M"]


@pytest.mark.parametrize(
    "key,fragment",
    [
        ("gpt2/1.5B>700M", "did you mean 760M"),
        ("gpt2/1.5B>1.3B", "mixes families"),
        ("gpt2/1.5B>120M>340M", "decreasing"),
        ("gpt2/1.5B>760M>760M", "decreasing"),
        ("gpt2/760M>120M", "does not start at the gpt2 teacher"),
        ("gpt2/760M>120M", "a size alone, 'gpt2/120M', is its SFT-only baseline"),
        ("gpt2/76M", "did you mean 760M"),
        ("opt/120M", "mixes families"),
        ("gtp2/1.5B>120M", "did you mean 'gpt2'"),
        ("1.5B>120M", "expected 'family/"),
    ],
)
def test_invalid_keys_fail_clearly(key, fragment):
    with pytest.raises(RegistryError, match=fragment.replace("(", r"\(").replace("'", "'")):
        registry.get(key)


def test_unknown_table_suggests():
    with pytest.raises(RegistryError, match="did you mean 'table2'"):
        registry.select(["tabel2"])


def test_cli_ls_json_and_validate():
    out = subprocess.run(
        [sys.executable, "-m", "benchmark", "ls", "--format", "json"], capture_output=True, text=True, check=True
    ).stdout
    rows = json.loads(out)
    assert len(rows) == 22
    row = next(r for r in rows if r["key"] == "gpt2/1.5B>760M>120M")
    assert row["family"] == "gpt2" and row["path"] == ["1.5B", "760M", "120M"] and row["tables"] == [1, 3]
    assert row["published"] == {"rouge_l": 27.2, "perplexity": 21.56}
    baseline = next(r for r in rows if r["key"] == "gpt2/120M")
    assert baseline["label"] == "sft" and baseline["path"] == ["120M"] and baseline["tables"] == [1, 3]
    assert baseline["published"] == {"rouge_l": None, "perplexity": None}
    ok = subprocess.run([sys.executable, "-m", "benchmark", "validate"], capture_output=True, text=True, check=True)
    assert "22 entries x 3 scales" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "benchmark", "show", "gpt2/1.5B>700M"], capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 760M" in bad.stderr


def test_cli_show_json_is_the_plan_of_the_entry_with_resolved_configs(capsys):
    from benchmark.__main__ import main
    from benchmark.config import resolve, to_dict
    from benchmark.plan import build_plan

    key = "gpt2/1.5B>760M>120M"
    assert main(["show", key, "--scale", "small", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["key"] == key and [m["role"] for m in shown["models"]] == ["teacher", "TA", "student"]
    plan = build_plan([key], "small")
    assert [s["dirname"] for s in shown["stages"]] == [s.dirname for s in plan.stages.values()]  # run order, ids
    hop = next(s for s in shown["stages"] if s["name"] == "distill-gpt2-1.5B_760M_120M")
    student = scales.scale("small").model("gpt2", "120M")
    assert hop["config"]["minillm"] == to_dict(resolve("minillm", "small", model=student))
    assert hop["inputs"]["teacher"].startswith("distill-gpt2-1.5B_760M-") and hop["cost"]["unit"] == "s CPU"
    # --set shows the run's config, and paper scale the public checkpoints a stage comes from
    assert main(["show", key, "--scale", "small", "--format", "json", "--set", 'minillm={"batch_size": 32}']) == 0
    changed = json.loads(capsys.readouterr().out)
    hop = next(s for s in changed["stages"] if s["name"] == "distill-gpt2-1.5B_760M_120M")
    assert hop["config"]["minillm"]["batch_size"] == 32 and hop["overrides"] == {"minillm": {"batch_size": 32}}
    assert main(["show", key, "--format", "json"]) == 0
    paper = {s["name"]: s for s in json.loads(capsys.readouterr().out)["stages"]}
    assert paper["distill-gpt2-1.5B_760M"]["source"] == "MiniLLM/MiniLLM-gpt2-760M"
    assert paper["distill-gpt2-1.5B_760M_120M"]["source"] is None
