"""benchmark.perf.gpu: its dry run (the tiny scale's models, the same code as on the GPU) measures the trainer's own
rollouts and step at the paper's config, and its projection is the stage's arithmetic. Never timings.

    OMP_NUM_THREADS=1 .nox/tests/bin/python -m pytest tests/test_perf_gpu.py -q     # about a minute on one core
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import minillm
from benchmark.config import resolve
from benchmark.perf import cpu, gpu

ROOT = Path(__file__).resolve().parent.parent
FIRST = gpu.PAIRS[0]["name"]


def test_projection_is_the_stages_arithmetic():
    """Paper stage: 5000 / 16 = 312.5 phases; 256 rollouts at 10 s per 64 = 40 s; the first PPO epoch's 4 steps at
    2 s (teacher logits computed), the other 12 at 1 s (cached): 60 s a phase, 312.5 x 60 s = 5.21 h."""
    cfg = resolve("minillm", "paper")
    p = gpu.project({"rows": 64, "seconds": 10.0}, {"step_s": 2.0, "cached_step_s": 1.0}, cfg)
    assert p["phases"] == 312.5 and p["rollout_s_per_phase"] == 40.0 and p["train_s_per_phase"] == 20.0
    assert p["hours_1gpu"] == pytest.approx(312.5 * 60 / 3600)


def test_stage_config_is_the_papers():
    """The measured config is resolve("minillm", "paper") but for precision and the micro-batch (memory only)."""
    paper, cfg = resolve("minillm", "paper"), gpu.stage_config(16, dry=False)
    assert (cfg.precision, cfg.micro_batch_size) == ("bf16", 16)
    for field in ("lr", "betas", "eps", "weight_decay", "grad_clip", "cliprange", "kd_ratio", "pt_coef", "batch_size"):
        assert getattr(cfg, field) == getattr(paper, field), field
    dry = gpu.stage_config(gpu.DRY_RUN_MICRO, dry=True)
    assert (dry.lr, dry.kd_ratio, dry.steps_per_phase) == (paper.lr, paper.kd_ratio, paper.steps_per_phase)


@pytest.mark.slow
def test_dry_run_times_the_trainers_rollouts_and_step(tmp_path, monkeypatch):
    """In-process dry run of the first pair: counting wrappers see the engine of `minillm_engine` built from the
    stage config, `collect_rollouts` (a warm-up chunk, then the mini-batch) and `minillm_step` on that engine (a
    warm-up, then a first-epoch and a later-epoch step) really called."""
    engines, rollouts, steps = [], [], []
    real_engine, real_rollouts, real_step = minillm.minillm_engine, minillm.collect_rollouts, minillm.minillm_step

    def counting_engine(student, cfg, world_size):
        engines.append((cfg, real_engine(student, cfg, world_size)))
        return engines[-1][1]

    def counting_rollouts(student, teacher, prompts, *rest):
        rollouts.append(len(prompts))
        return real_rollouts(student, teacher, prompts, *rest)

    def counting_step(engine, teacher, mb, cfg, step, pt_chunks, dist, out, cache):
        steps.append((engine, len(mb), step, cache is not None and bool(cache.rows)))
        return real_step(engine, teacher, mb, cfg, step, pt_chunks, dist, out, cache)

    monkeypatch.setattr(minillm, "minillm_engine", counting_engine)
    monkeypatch.setattr(minillm, "collect_rollouts", counting_rollouts)
    monkeypatch.setattr(minillm, "minillm_step", counting_step)
    path = gpu.run(tmp_path, dry=True, budget_s=1e9, only=(FIRST,))
    cfg = gpu.stage_config(gpu.DRY_RUN_MICRO, dry=True)
    ((built_cfg, engine),) = engines
    assert built_cfg == cfg
    assert rollouts == [cfg.micro_batch_size, cfg.batch_size]
    # (engine, rows, step index, teacher logits already cached when the step starts)
    b = cfg.batch_size
    assert steps == [(engine, b, 0, False), (engine, b, 1, False), (engine, b, 2, True)]
    (row,) = json.loads(path.read_text())["pairs"]
    assert row["status"] == "measured"
    assert row["step"]["gradient_accumulation_steps"] == cfg.batch_size // cfg.micro_batch_size


@pytest.mark.slow
def test_dry_run_command(tmp_path):
    """`python -m benchmark perf-gpu --dry-run`, the GPU machine's command, on the CPU: every pair measured."""
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark", "perf-gpu", "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DRY RUN" in proc.stdout
    r = json.loads((tmp_path / "gpu-dry-run.json").read_text())
    assert r["schema"] == gpu.SCHEMA and r["dry_run"] is True and r["created"]
    assert r["peak"]["tflops"] > 0
    assert r["settings"]["config"]["lr"] == resolve("minillm", "paper").lr
    cfg = gpu.stage_config(gpu.DRY_RUN_MICRO, dry=True)
    new = cfg.generation.max_new_tokens
    assert [p["pair"] for p in r["pairs"]] == [p["name"] for p in gpu.PAIRS]
    for p in r["pairs"]:
        assert p["status"] == "measured", p
        ro, s = p["rollouts"], p["step"]
        # EOS suppressed: every rollout runs max_new_tokens; the step trains on the whole global mini-batch
        assert (ro["rows"], ro["chunk"], ro["tokens"]) == (cfg.batch_size, cfg.micro_batch_size, cfg.batch_size * new)
        assert s["step_sequences"] == cfg.batch_size and s["pt_loss"] is True
        assert s["model_flops_per_cached_step"] < s["model_flops_per_step"]  # no teacher response forward
        assert p["projection"]["phases"] == cfg.total_steps / cfg.steps_per_phase
    first = {p["pair"]: p for p in r["pairs"]}
    for name in ("gpt2 1.5B>120M", "opt 6.7B>2.7B"):
        sc = first[name]["rollout_scoring"]
        for who in ("student", "teacher"):
            assert sc[who]["tokens"] == cfg.micro_batch_size * new and sc[who]["mean_logprob"] < 0
            assert 0 <= sc[who]["clipped_at_epoch1"] <= 1
        # DeepSpeed holds the student in bf16 (its fp32 copy differs by rounding only); on a CPU the teacher is fp32
        # (engine.compute_dtype), so its fp32 copy, the same weights, scores it identically
        assert sc["student"]["dtype"] == "torch.bfloat16" and 0 < sc["student"]["forward_vs_fp32"]["mean"] < 0.05
        assert sc["teacher"]["dtype"] == "torch.float32" and sc["teacher"]["forward_vs_fp32"]["max"] == 0
    static = first[FIRST]["static_cache"]
    for v in ("hf_dynamic", "hf_static_eager", "hf_static_compiled", "ours", "ours_teacher_alone"):
        assert static[v]["seconds"] > 0, v
    assert "static_cache" not in first["opt 6.7B>1.3B"] and "rollout_scoring" not in first["opt 6.7B>1.3B"]
    # the CPU report never lists a dry run as a GPU measurement
    assert cpu.gpu_section(tmp_path)["result_files"] == []
