"""The SFT-only baselines ("SFT w/o KD"): each student's SFT init evaluated without distillation, registered for
every scale, and one evaluated end to end at `tiny` scale."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmark import registry, results, scales
from benchmark.plan import build_plan

BASELINES = ("gpt2/760M", "gpt2/340M", "gpt2/120M", "opt/6.7B", "opt/2.7B", "opt/1.3B")


@pytest.mark.parametrize("scale", list(scales.SCALES))
def test_every_student_has_a_baseline_that_resolves_at_every_scale(scale):
    assert [k for k, e in registry.ENTRIES.items() if e.label == "sft"] == list(BASELINES)
    sc = scales.scale(scale)
    plan = build_plan(list(BASELINES), scale)
    assert list(plan.entries) == list(BASELINES)
    for key in BASELINES:
        e = registry.get(key)
        spec = sc.model(e.family, e.student)
        if not spec.from_hub:  # built here: the student's own architecture, as its hops use it
            spec.model_config(vocab_size=100, n_positions=64, tokenizer_ids={"bos": 0, "eos": 0, "pad": 0})
        init = plan.stages[plan.stages[plan.entries[key]].inputs["model"]]
        assert (init.kind, init.config["role"], init.config["size"]) == ("sft", "init", e.student)
        # at paper scale the public MiniLLM init checkpoint, as the chains use it
        assert init.source == (registry.FAMILIES[e.family].init[e.student] if scale == "paper" else None)
    # one evaluation per baseline, no hop anywhere
    assert {s.kind for s in plan.stages.values()} == {"data", "sft", "evaluate"}
    assert len(plan.by_kind("evaluate")) == 6


@pytest.mark.slow
def test_a_baseline_run_evaluates_the_init_at_tiny_scale(tmp_path):
    """`run gpt2/120M --scale tiny`: the data, the teacher (the scorer), the 120M init and its evaluation, whose
    records and per-example samples belong to the baseline entry (about 30 s)."""
    out = tmp_path / "tiny"
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark", "run", "gpt2/120M", "--scale", "tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = sorted(p.name.rsplit("-", 1)[0] for p in (out / "stages").iterdir())
    assert stages == ["data-gpt2-tiny", "evaluate-gpt2-120M", "sft-gpt2-1.5B-teacher", "sft-gpt2-120M-init"]
    df = results.read(out)
    assert set(df["entry"]) == {"gpt2/120M"} and set(df["scale"]) == {"tiny"}
    rouge = df[df["metric"] == "rouge_l"].iloc[0]
    init = next((out / "stages").glob("sft-gpt2-120M-init-*"))
    assert rouge["model.path"] == str(init / "model")
    samples = results.read_samples(out, scale="tiny")
    assert set(samples["entry"]) == {"gpt2/120M"} and samples["rouge_l"].notna().all()
    assert samples.groupby("seed")["rouge_l"].mean().tolist() == pytest.approx(list(rouge["values"]))
