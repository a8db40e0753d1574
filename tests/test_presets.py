"""The paper-scale hop presets (`scales.PAPER_PRESETS`, `--preset`) and the selection rule of the `authors` one
(`MiniLLMConfig.select_interval`): the CLI shows and plans them, and a hop selects only among its saved steps."""

from __future__ import annotations

import json

import pytest

from benchmark import config, minillm
from benchmark.__main__ import main
from benchmark.config import MiniLLMConfig


def _show(capsys, *extra) -> dict:
    assert main(["show", "opt/13B>6.7B>1.3B", "--scale", "paper", "--format", "json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _hops(entry: dict) -> list[dict]:
    return [s["config"]["minillm"] for s in entry["stages"] if s["kind"] == "distill" and not s["source"]]


def test_show_paper_names_the_authors_preset_on_the_trained_hops(capsys):
    entry = _show(capsys)
    assert entry["preset"] == "authors"
    hops = _hops(entry)
    assert len(hops) == 1  # 13B>6.7B is MiniLLM's public checkpoint, 6.7B>1.3B is trained here
    for hop in hops:
        cfg = MiniLLMConfig(**{k: tuple(v) if k == "betas" else v for k, v in hop.items() if k != "generation"})
        assert (cfg.batch_size, cfg.steps_per_phase, cfg.whiten_group_size) == (16, 64, 8)
        assert (cfg.select_interval, cfg.eval_interval, cfg.checkpoint_interval) == (500, 100, 500)
    evaluations = [s for s in entry["stages"] if s["kind"] == "evaluate"]
    assert {s["config"]["text_scorer"] for s in evaluations} == {"facebook/opt-1.3b"}
    minillm_entry = _show(capsys, "--preset", "minillm")
    assert minillm_entry["preset"] == "minillm"
    assert [(h["batch_size"], "whiten_group_size" in h) for h in _hops(minillm_entry)] == [(64, False)]
    ids = {s["name"]: s["id"] for s in entry["stages"]}
    other = {s["name"]: s["id"] for s in minillm_entry["stages"]}
    changed = {name for name in ids if ids[name] != other[name]}
    assert changed == {"distill-opt-13B_6.7B_1.3B", "evaluate-opt-13B_6.7B_1.3B"}  # the hop and what reads it


def test_plan_header_names_the_preset_and_small_scale_refuses_one(capsys, tmp_path):
    assert main(["plan", "table1", "--scale", "paper", "--preset", "minillm", "--out", str(tmp_path)]) == 0
    assert "at scale paper, hop preset minillm" in capsys.readouterr().out.splitlines()[0]
    assert main(["plan", "table1", "--scale", "small", "--preset", "authors", "--out", str(tmp_path)]) != 0
    assert "scale 'small' has no preset 'authors'" in capsys.readouterr().err


@pytest.mark.parametrize("select_interval", [None, 4])
def test_selection_only_among_saved_steps_records_the_best_of_validations(monkeypatch, select_interval):
    """Validations every 2 steps with ROUGE-L peaking at step 2: with select_interval 4 only steps 4 and 8 (the
    saves and the last step) are candidates, and step 2 is recorded as what the best of every validation would
    have picked; without it step 2 is selected."""
    cfg = config.for_scale(
        MiniLLMConfig,
        {
            "total_steps": 8,
            "rollouts_per_phase": 8,
            "batch_size": 4,
            "eval_interval": 2,
            "select_interval": select_interval,
        },
    )
    rouge = {2: 30.0, 4: 20.0, 6: 25.0, 8: 22.0}
    saved = []
    monkeypatch.setattr(minillm._Hop, "validate", lambda self, state: {"val_rouge_l": rouge[state["step"]]})

    def select_model(engine, tokenizer, state, values, **kw):
        if state["best"] is None or values["val_rouge_l"] > state["best"]["val_rouge_l"]:
            state["best"] = {"step": state["step"], **values}
            saved.append(state["step"])

    monkeypatch.setattr(minillm, "select_model", select_model)
    data = type("Data", (), {"tokenizer": None})()
    hop = minillm._Hop(None, None, data, cfg, None, None, None)
    state = {"step": 0, "best": None, "history": []}
    for step in (2, 4, 6, 8):
        state["step"] = step
        hop.select(state)
    if select_interval is None:
        assert saved == [2] and state["best"]["step"] == 2 and "best_of_validations" not in state
    else:
        assert saved == [4, 8] and state["best"] == {"step": 8, "val_rouge_l": 22.0}  # step 6's 25 was not saved
        assert state["best_of_validations"] == {"step": 2, "val_rouge_l": 30.0}


def test_kl_examples_caps_the_hops_before_after_measures(monkeypatch):
    """MiniLLMConfig.kl_examples: the hop's reverse-KL measures read the first kl_examples validation prompts (None:
    all of them); measurement only."""
    seen = []
    monkeypatch.setattr(minillm, "heldout_reverse_kl", lambda m, t, ex, *a: seen.append(len(ex)) or 0.5)
    monkeypatch.setattr(minillm, "sequence_reverse_kl", lambda m, t, ex, *a: seen.append(len(ex)) or {})
    engine = type("Engine", (), {"train_micro_batch_size_per_gpu": lambda self: 2})()
    data = type("Data", (), {"eos_token_id": 0, "split": lambda self, name: list(range(10))})()
    for cap, want in ((3, 3), (None, 10)):
        cfg = config.for_scale(MiniLLMConfig, {"kl_examples": cap})
        state = {}
        minillm._Hop(engine, None, data, cfg, None, None, None).measure_reverse_kl(state, None, "init")
        assert seen[-2:] == [want, want] and state["heldout_rev_kl"] == {"examples": want, "init": 0.5}
