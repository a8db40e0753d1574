"""`python -m benchmark`: the verbs' shared behaviour (benchmark/__main__.py) and the CLI-level errors of issue #20.

Fast: no model is built; one subprocess (the closed pipe).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.__main__ import build_parser, main, parse_set
from benchmark.config import ConfigError

REPO = Path(__file__).resolve().parent.parent


# --set values are validated before anything runs (item 6): one `error:` line, exit 2, no directory created


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "gpt2/1.5B>120M", "--scale", "tiny"],
        ["run", "gpt2/1.5B>120M", "--scale", "tiny", "--out", "runs/x"],
        ["reproduce", "table1", "--scale", "tiny", "--out", "runs/y"],
    ],
    ids=["plan", "run", "reproduce"],
)
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('minillm={"lr": "fast"}', "MiniLLMConfig.lr must be a finite number > 0, got 'fast'"),
        ('minillm={"total_steps": true}', "MiniLLMConfig.total_steps must be an integer > 0, got True"),
        ('evaluation={"precision": "fp8"}', "EvalConfig.precision must be one of 'fp32', 'fp16', 'bf16', got 'fp8'"),
        ('sft={"batch_size": 0}', "SFTConfig.batch_size must be an integer > 0, got 0"),
    ],
    ids=["lr", "steps", "precision", "sft-batch"],
)
def test_bad_set_value_is_one_error_before_anything_runs(argv, override, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--set", override]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {message}\n"
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []  # no run directory, no lock, no stage directory


def test_generation_override_is_named_by_its_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "gpt2/1.5B>120M", "--scale", "tiny", "--set", 'minillm={"generation": {"top_p": 0}}']) == 2
    message = "MiniLLMConfig.generation.top_p must be a finite number in (0, 1] (1 = off), got 0"
    assert capsys.readouterr().err == f"error: {message}\n"


# One --set grammar (issue #13): KIND=JSON on every verb; `train` also takes a bare object of its own kind


def test_set_grammar_is_one_for_every_verb():
    items = ['minillm={"lr": 1e-4}', 'minillm={"lr": 2e-4, "batch_size": 8}', "evaluation={}"]
    assert parse_set(items) == {"minillm": {"lr": 2e-4, "batch_size": 8}, "evaluation": {}}  # later ones update
    assert parse_set(['{"lr": 1e-4}', 'sft={"batch_size": 4}'], "sft") == {"sft": {"lr": 1e-4, "batch_size": 4}}
    assert parse_set(['{"note": "a=b"}'], "minillm") == {"minillm": {"note": "a=b"}}  # an '=' inside the JSON
    with pytest.raises(ConfigError, match=r"^--set minillm=\.\.\.: `train sft` takes sft fields, not minillm$"):
        parse_set(["minillm={}"], "sft")
    with pytest.raises(ConfigError, match="^--set '{}': expected KIND=JSON with KIND one of sft, minillm, evaluation$"):
        parse_set(["{}"])  # outside train a bare object has no kind


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "gpt2/1.5B>120M", "--scale", "tiny", "--set", "minillm={lr: 1}"],
        ["train", "minillm", "--student", "s", "--teacher", "t", "--data", "d", "--out", "o", "--set", "{lr: 1}"],
        [
            "train",
            "minillm",
            "--student",
            "s",
            "--teacher",
            "t",
            "--data",
            "d",
            "--out",
            "o",
            "--set",
            "minillm={lr: 1}",
        ],
    ],
    ids=["plan", "train-bare", "train-kind"],
)
def test_bad_set_json_is_one_sentence_on_every_verb(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    json_error = "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    expected = (
        f"error: --set minillm=...: not valid JSON ({json_error}); quote it, e.g. --set minillm='{{\"lr\": 1e-4}}'\n"
    )
    assert capsys.readouterr().err == expected
    assert list(tmp_path.iterdir()) == []


def test_reproduce_regenerates_the_tables_and_figures_of_its_targets():
    from benchmark.__main__ import _artefacts

    assert _artefacts(["table2", "gpt2/1.5B>120M"]) == ("table2",)  # named artefacts only
    assert _artefacts(["gpt2/1.5B>760M>120M"]) == ("table1", "table3")
    assert _artefacts(["opt"]) == ("table2", "table4", "figure2")
    assert _artefacts(["all"]) == ("table1", "table2", "table3", "table4", "figure2")


# A closed pipe (item 7): `python -m benchmark ls --format json | head` stops quietly


def test_closed_pipe_exits_quietly():
    env = dict(os.environ, HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmark", "ls", "--format", "json"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before the first write, as `| head` is after its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err


# Help (item 9)


def _options(parser: argparse.ArgumentParser, verb: tuple[str, ...] = ()):
    """(verb path, option) of every argument of every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, verb + (name,))
        elif not isinstance(action, argparse._HelpAction):
            yield verb, action


def test_every_option_of_every_public_verb_has_help():
    missing = [
        f"{' '.join(verb)} {'/'.join(action.option_strings) or action.dest}"
        for verb, action in _options(build_parser())
        if not verb[0].startswith("_") and not action.help
    ]
    assert missing == []


def test_internal_verbs_are_not_offered(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["-h"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    verbs = "{ls,show,validate,data,train,evaluate,plan,run,reproduce,status,notebooks,perf,"
    verbs += "perf-gpu,suggest,figure1,planner-report,rehearsal}"
    assert verbs in out
    assert "_stage" not in out and "_guard" not in out and "_perf-worker" not in out
    args = build_parser().parse_args(["_stage", "some/stage/dir"])  # still there for the runner's subprocesses
    assert args.stage_dir == "some/stage/dir"


# Notebooks (item 9): the kernel connection is encrypted, so ipykernel has no plain-TCP warning to print


def test_notebook_kernel_runs_without_the_plain_tcp_warning(tmp_path, capfd):
    from benchmark.notebooks import run_notebooks

    store = tmp_path / "results"
    store.mkdir()
    (store / "results.jsonl").write_text((REPO / "tests/fixtures/results/published/results.jsonl").read_text())
    run_notebooks(store, "paper", tmp_path / "tables", artefacts=("table1",))
    err = capfd.readouterr().err  # the kernel process writes its log to the stderr it inherits
    assert "without encryption" not in err and "WARNING" not in err
    assert (tmp_path / "tables" / "table1.md").exists()
