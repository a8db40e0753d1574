"""`train`'s refusals and messages: each a sentence before any compute, with no stage
directory left behind; the CLI's flags and final report.

Tiny untrained models (built from the tiny scale's specs, never trained): the checks run before the engine is built,
and `build_engine` is replaced by a sentinel so a test that gets past them stops there. About 10 s in all.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from benchmark import engine, minillm, scales, sft
from benchmark.config import ConfigError, MiniLLMConfig, for_scale
from benchmark.engine import TrainError
from benchmark.minillm import train_minillm

TINY = scales.scale("tiny")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Prepared tiny GPT-2 data and two untrained tiny models: "small" (the 120M size) and "large" (the 1.5B)."""
    from benchmark.data import load_prepared
    from benchmark.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("tiny")
    prepare_synthetic("tiny", "gpt2", root / "data")
    tok = load_prepared(root / "data").tokenizer
    for name, size in (("small", "120M"), ("large", "1.5B")):
        model = scales.build_model(TINY.model("gpt2", size), tok, n_positions=160, seed=0)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root


class _Built(Exception):
    pass


@pytest.fixture
def stop_at_engine(monkeypatch):
    def built(*args, **kwargs):
        raise _Built

    monkeypatch.setattr(minillm, "build_engine", built)


def _cfg(**kw) -> MiniLLMConfig:
    return for_scale(MiniLLMConfig, TINY.minillm, **kw)


def test_student_larger_than_teacher_is_refused_unless_allowed(tiny, tmp_path, stop_at_engine):
    large, small = str(tiny / "large"), str(tiny / "small")
    with pytest.raises(TrainError) as err:
        train_minillm(large, small, tiny / "data", tmp_path / "swapped", _cfg(), progress=False)
    assert str(err.value).startswith(f"student {large} has 138,048 parameters, more than its teacher {small} (30,448)")
    assert "pass --allow-larger-student" in str(err.value)
    assert not (tmp_path / "swapped").exists()
    with pytest.raises(_Built):  # allowed: past every check, up to the engine
        train_minillm(
            large, small, tiny / "data", tmp_path / "meant", _cfg(), progress=False, allow_larger_student=True
        )
    with pytest.raises(_Built):  # the usual direction needs no flag
        train_minillm(small, large, tiny / "data", tmp_path / "usual", _cfg(), progress=False)


def test_missing_model_directory_is_named_and_nothing_is_created(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for missing in ("runs/tiny/stages/sft-x/model", str(tmp_path / "nowhere"), "./model"):
        with pytest.raises(TrainError) as err:
            train_minillm(missing, str(tiny / "large"), tiny / "data", tmp_path / "out", _cfg(), progress=False)
        msg = str(err.value)
        assert msg.startswith(f"cannot load model: model directory {missing} does not exist; a model directory is ")
        assert "`python -m benchmark train ... --out OUT` (OUT/model)" in msg and "Repo id" not in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    with pytest.raises(TrainError, match="holds no config.json"):
        engine.load_model(str(tmp_path / "runs"), engine.torch.device("cpu"), engine.torch.float32, dropout=False)


def test_positions_too_few_for_the_hop_are_refused(tiny, tmp_path, stop_at_engine):
    cfg = _cfg(max_prompt_length=140)  # 140 + 32 new tokens > the models' 160 positions
    with pytest.raises(TrainError, match=r"small has 160 positions but this hop needs 172 \(max_prompt_length \+"):
        train_minillm(str(tiny / "small"), str(tiny / "large"), tiny / "data", tmp_path / "o", cfg, progress=False)
    assert not (tmp_path / "o").exists()


# The CLI


def _cli(argv: list[str]) -> int:
    """`python -m benchmark train ARGV`, its errors raised (not printed)."""
    from benchmark.__main__ import build_parser

    args = build_parser().parse_args(["train", *argv])
    return args.func(args)


def _fake_stage(out: Path, kind: str) -> Path:
    """What a finished stage leaves: OUT/model and OUT/summary.json."""
    (out / "model").mkdir(parents=True)
    best = {"step": 4, "val_rouge_l": 23.456, "val_rev_kl": 1.25}
    summary = {"kind": kind, "best": best, "steps": 8, "config": {"select_by": "val_loss"}}
    summary["sequence_rev_kl"] = {"init": {"per_response": 14.16}, "selected": {"per_response": 13.48}}
    (out / "summary.json").write_text(json.dumps(summary))
    return out / "model"


def test_cli_passes_the_flag_and_reports_where_the_model_went(tiny, tmp_path, monkeypatch, capsys):
    seen = {}

    def fake(student, teacher, data, out, cfg, *, progress, allow_larger_student):
        seen.update(cfg=cfg, progress=progress, allow=allow_larger_student)
        return _fake_stage(Path(out), "minillm")

    monkeypatch.setattr(minillm, "train_minillm", fake)
    from transformers.utils import logging as hf_logging

    loggers = [logging.getLogger(name) for name in ("DeepSpeed", "transformers", "torch.distributed")]
    ds, hf = loggers[:2]
    levels, bars = [lg.level for lg in loggers], hf_logging.is_progress_bar_enabled()
    base = ["minillm", "--student", "s", "--teacher", "t", "--data", "d", "--scale", "tiny"]
    try:
        argv = base + ["--out", str(tmp_path / "a"), "--allow-larger-student", "--quiet"]
        assert _cli(argv + ["--set", '{"generation": {"temperature": 0.5}}']) == 0
        assert ds.level == logging.ERROR and hf.getEffectiveLevel() == logging.ERROR  # --quiet: no info logging
    finally:  # the loggers are process-wide: give the other tests theirs back
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()
    assert seen["allow"] is True and seen["progress"] is False
    # a nested override updates the scale's generation settings field by field, as `run --set` does
    assert seen["cfg"].generation.temperature == 0.5 and seen["cfg"].generation.max_new_tokens == 32
    assert capsys.readouterr().out == (
        f"model: {tmp_path / 'a' / 'model'}\n"
        "selected: step 4 of 8 by val_rouge_l (higher is better): val_rouge_l 23.46, val_rev_kl 1.25\n"
        "reverse KL to the teacher per sampled response: 14.16 (init) -> 13.48 (selected)\n"
        f"summary: {tmp_path / 'a' / 'summary.json'}\n"
    )
    assert _cli(base + ["--out", str(tmp_path / "b")]) == 0
    assert seen["allow"] is False and seen["progress"] is True


def test_cli_set_errors_come_before_training(monkeypatch, tmp_path):
    monkeypatch.setattr(minillm, "train_minillm", lambda *a, **k: pytest.fail("trained despite a bad --set"))
    base = ["minillm", "--student", "s", "--teacher", "t", "--data", "d", "--out", str(tmp_path / "o")]
    with pytest.raises(ConfigError, match=r"^--set minillm=\.\.\.: not valid JSON \(Expecting property name"):
        _cli(base + ["--set", "{lr: 1}"])
    with pytest.raises(ConfigError, match=r"^--set minillm=\.\.\.: expected a JSON object of config fields, got list"):
        _cli(base + ["--set", "[1]"])
    with pytest.raises(ConfigError, match=r"^MiniLLMConfig.lr must be a finite number > 0, got 0$"):
        _cli(base + ["--set", '{"lr": 0}'])
    with pytest.raises(ConfigError, match=r"^MiniLLMConfig.lr must be a finite number > 0, got 0$"):
        _cli(base + ["--set", 'minillm={"lr": 0}'])  # the KIND=JSON of run/plan names the same config
    with pytest.raises(ConfigError, match=r"^--set sft=\.\.\.: `train minillm` takes minillm fields, not sft$"):
        _cli(base + ["--set", 'sft={"lr": 1e-4}'])
    monkeypatch.setattr(sft, "train_sft", lambda *a, **k: pytest.fail("trained a missing model"))
    with pytest.raises(TrainError, match="model directory ./nowhere/model does not exist"):
        _cli(["sft", "--model", "./nowhere/model", "--data", "d", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
