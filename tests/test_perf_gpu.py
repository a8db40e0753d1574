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
import torch

from benchmark import minillm
from benchmark.config import preset_overrides, resolve
from benchmark.perf import cpu, decode, gpu, gpu_report
from benchmark.sampling import SampleOutput

ROOT = Path(__file__).resolve().parent.parent
FIRST = gpu.PAIRS[0]["name"]


# The pairs are measured at MiniLLM's batch 64 (the `minillm` preset; paper scale's default is the authors' 16)
MINILLM = resolve("minillm", "paper", preset_overrides("paper", "minillm"))


def test_projection_is_the_stages_arithmetic():
    """Paper stage: 5000 / 16 = 312.5 phases; 256 rollouts at 10 s per 64 = 40 s; the first PPO epoch's 4 steps at
    2 s (teacher logits computed), the other 12 at 1 s (cached): 60 s a phase, 312.5 x 60 s = 5.21 h."""
    cfg = MINILLM
    p = gpu.project({"rows": 64, "seconds": 10.0}, {"step_s": 2.0, "cached_step_s": 1.0}, cfg)
    assert p["phases"] == 312.5 and p["rollout_s_per_phase"] == 40.0 and p["train_s_per_phase"] == 20.0
    assert p["hours_1gpu"] == pytest.approx(312.5 * 60 / 3600)


def test_stage_config_is_the_papers():
    """The measured config is the paper's under the minillm preset but for precision and the micro-batch (memory
    only)."""
    paper, cfg = MINILLM, gpu.stage_config(16, dry=False)
    assert (cfg.precision, cfg.micro_batch_size) == ("bf16", 16)
    for field in ("lr", "betas", "eps", "weight_decay", "grad_clip", "cliprange", "kd_ratio", "pt_coef", "batch_size"):
        assert getattr(cfg, field) == getattr(paper, field), field
    dry = gpu.stage_config(gpu.DRY_RUN_MICRO, dry=True)
    assert (dry.lr, dry.kd_ratio, dry.steps_per_phase) == (paper.lr, paper.kd_ratio, paper.steps_per_phase)


def test_phase_split_is_the_stages_arithmetic():
    """Paper stage, 256 rollouts a phase decoded 64 at a time: 4 batches, each decoded twice (the teacher-mixed
    rollouts and the logged pure-student sample, log_student_sample) at 3 s = 24 s of rollouts, rescored at 0.5 s =
    2 s of scoring; 4 first-epoch steps at 2 s and 12 later ones at 1 s = 20 s of optimisation: 46 s a phase,
    312.5 phases = 3.99 h. Without a measured step the phase has rollouts and scoring only."""
    cfg = MINILLM
    assert cfg.log_student_sample and cfg.rollout_logprobs == "forward"
    p = decode.phase(cfg, 64, 3.0, 0.5, {"step_s": 2.0, "cached_step_s": 1.0})
    assert (p["rollouts_s"], p["scoring_s"], p["optimisation_s"], p["phase_s"]) == (24.0, 2.0, 20.0, 46.0)
    assert p["rollout_share"] == pytest.approx(24 / 46) and p["hours_1gpu"] == pytest.approx(312.5 * 46 / 3600)
    bare = decode.phase(cfg, 64, 3.0, 0.5, None)
    assert bare == {"rollouts_s": 24.0, "scoring_s": 2.0, "optimisation_s": None, "phase_s": None, "hours_1gpu": None}


def test_bandwidth_floor(tiny_gpt2, tiny_opt):
    """The floor reads every weight once and both models' keys and values of every row at the mean context: with
    the issue's round numbers (3.4 GB of bf16 weights, 6 GB of KV cache a step, 64 rows, the H200's 4.8 TB/s) about
    32,700 tok/s ("about 30,000" in the issue). The byte counts follow from the shapes."""
    assert decode.floor_tok_per_s(3.4e9, 6e9, 64, decode.H200_HBM_BYTES_PER_S) == pytest.approx(32_681, rel=1e-4)
    assert decode.hbm_bandwidth("NVIDIA H200")[0] == 4.8e12
    assert decode.hbm_bandwidth("NVIDIA A100-SXM4-80GB")[0] is None
    weights, kv = decode.step_bytes([tiny_gpt2, tiny_opt], rows=3, context=10)
    assert weights == 4 * sum(p.numel() for m in (tiny_gpt2, tiny_opt) for p in m.parameters())  # fp32
    assert kv == 2 * (2 * 2 * 32 * 3 * 10 * 4)  # two models x (keys, values) x 2 layers x 32 wide x 3 rows x 10 x fp32


def test_agreement_counts_rows_and_first_differences():
    def out(tokens, lq):
        t = torch.tensor(tokens)
        mask = torch.ones_like(t, dtype=torch.float32)
        return SampleOutput(t, mask, mask.sum(-1).long(), torch.tensor(lq), None)

    a = out([[1, 2, 3], [4, 5, 6], [7, 8, 9]], [[-1.0, -2.0, -3.0]] * 3)
    b = out([[1, 2, 3], [4, 0, 6], [0, 8, 9]], [[-1.0, -2.5, -3.0]] + [[-1.0, -2.0, -3.0]] * 2)
    got = decode.agreement(a, b)
    assert got == {
        "rows": 3,
        "identical_rows": pytest.approx(1 / 3),
        "mean_first_difference": 0.5,
        "max_abs_diff_student_logprobs": 0.5,
    }


def test_table1_trained_hops_come_from_the_plan():
    """Table 1's hops that a paper run trains (the one-step 1.5B hops are MiniLLM's released students): 340M -> 120M
    (two entries), 760M -> 120M, 760M -> 340M, each with its stage config; overrides merge field by field."""
    hops = decode.table1_trained_hops({"batch_size": 4, "whiten_group_size": 2, "generation": {"max_new_tokens": 8}})
    assert [(h["name"], len(h["stages"])) for h in hops] == [
        ("gpt2 340M>120M", 2),
        ("gpt2 760M>120M", 1),
        ("gpt2 760M>340M", 1),
    ]
    assert "distill-gpt2-1.5B_760M_340M_120M" in hops[0]["stages"]
    cfg, paper = hops[0]["config"], resolve("minillm", "paper")
    assert (cfg.batch_size, cfg.whiten_group_size, cfg.generation.max_new_tokens) == (4, 2, 8)
    assert cfg.select_interval == paper.select_interval == 500  # the default authors preset's, kept
    assert (cfg.total_steps, cfg.generation.temperature, cfg.teacher_mixed_alpha) == (5000, 1.0, 0.2)
    assert cfg.rollouts_per_phase == paper.rollouts_per_phase


def _report(**parts) -> dict:
    """A perf-gpu JSON with nothing measured but what `parts` adds."""
    return {
        "created": "2026-12-01T10:00:00+00:00",
        "command": None,
        "dry_run": False,
        "gpu": {"name": "NVIDIA H200", "memory_gib": 139.8},
        "versions": {"torch": "2.11", "cuda": "13.0", "transformers": "5.24.0", "deepspeed": "0.18"},
        "settings": {"planned_pairs": [p["name"] for p in gpu.PAIRS]},
        "peak": None,
        "pairs": [],
        "wall_s": 12.0,
    } | parts


def test_markdown_says_not_measured_for_every_missing_row():
    """A run killed early, or with pairs skipped: every planned GPU row is in the markdown, each without a figure
    reads "not measured (why)", and no figure appears that the JSON does not hold."""
    skipped = [{"pair": FIRST, "paper_report": "under 10 h on 4x V100", "status": "skipped (time budget)"}]
    md = gpu_report.render_markdown(_report(pairs=skipped), "gpu-x.json")
    assert md.startswith("# GPU run: NVIDIA H200, 2026-12-01")
    lines = md.splitlines()
    rows = [  # table rows, headers (the line above a |---| line) left out
        line
        for line, after in zip(lines, lines[1:] + [""])
        if line.startswith("| ") and not line.startswith("|---") and not after.startswith("|---")
    ]
    assert rows and all("not measured" in r for r in rows), [r for r in rows if "not measured" not in r]
    for key, label in gpu_report.DECODE_VARIANTS + gpu_report.STOPPING_VARIANTS + gpu_report.AGREEMENTS:
        assert any(label in r and "not measured" in r for r in rows), key
    for p in gpu.PAIRS:
        assert any(r.startswith(f"| {p['name']} |") and "not measured" in r for r in rows), p["name"]
    assert "not measured (skipped (time budget))" in md and "not selected with --pairs" in md
    # a decode section that failed says why in its rows
    failed = gpu_report.render_markdown(_report(decode={"status": "failed (RuntimeError: capture)"}), "gpu-x.json")
    assert "not measured (failed (RuntimeError: capture))" in failed


@pytest.mark.slow
def test_dry_run_times_the_trainers_rollouts_and_step(tmp_path, monkeypatch):
    """In-process dry run of the first pair: counting wrappers see the engine of `minillm_engine` built from the
    stage config, `collect_rollouts` (a warm-up chunk, then the mini-batch) and `minillm_step` on that engine (a
    warm-up, then a first-epoch and a later-epoch step) really called; then one phase of `run_phase` (its rollouts
    and steps_per_phase steps) split into rollouts, scoring and optimisation, EOS suppressed in its rollouts only."""
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
    assert rollouts == [cfg.micro_batch_size, cfg.batch_size, cfg.rollouts_per_phase]
    # (engine, rows, step index, teacher logits already cached when the step starts)
    b = cfg.batch_size
    assert steps[:3] == [(engine, b, 0, False), (engine, b, 1, False), (engine, b, 2, True)]
    # run_phase: its steps from 0, with a TeacherLogitsCache of its own, empty at the first step
    assert [s[2] for s in steps[3:]] == list(range(cfg.steps_per_phase))
    assert [s[3] for s in steps[3:]] == [False] + [True] * (cfg.steps_per_phase - 1)
    (row,) = json.loads(path.read_text())["pairs"]
    assert row["status"] == "measured"
    assert row["step"]["gradient_accumulation_steps"] == cfg.batch_size // cfg.micro_batch_size
    ph = row["phase"]
    assert (ph["decode_cache"], ph["rollout_chunk"], ph["steps"]) == ("dynamic", cfg.micro_batch_size, 16)
    assert ph["generated_tokens"] == cfg.rollouts_per_phase * cfg.generation.max_new_tokens  # EOS suppressed
    assert ph["scoring_s"] > 0 and ph["rollouts_s"] > 0 and ph["optimisation_s"] > 0
    assert ph["phase_s"] == pytest.approx(ph["rollouts_s"] + ph["scoring_s"] + ph["optimisation_s"])
    assert minillm.rescore_rollouts.__name__ == "rescore_rollouts"  # the timing wrapper is gone again


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
    assert first[FIRST]["phase"]["steps"] == cfg.steps_per_phase
    assert "phase" not in first["opt 6.7B>1.3B"] and "rollout_scoring" not in first["opt 6.7B>1.3B"]
    # the decode section: every variant timed; on a CPU both paths are fp32 and decode the same tokens
    d = r["decode"]
    assert (d["pair"], d["rows"], d["max_new_tokens"]) == (FIRST, cfg.batch_size, new)
    for v in (*d["variants"].values(), *d["stopping"]["variants"].values()):
        assert v["seconds"] > 0 and v["tokens"] > 0, v
    assert d["variants"]["static_mixed"]["tokens"] == cfg.batch_size * new  # EOS suppressed
    assert d["stopping"]["lengths"]["mean"] < new  # EOS likely: rows stop
    pairs_compared = {"graph_vs_eager", "static_vs_dynamic", "stopping_mask_vs_bucket", "stopping_static_vs_dynamic"}
    assert set(d["agreement"]) == pairs_compared | {"fp32_static_vs_dynamic"}
    assert all(a["identical_rows"] == 1.0 for a in d["agreement"].values()), d["agreement"]
    assert d["bandwidth_floor"]["tok_per_s"] is None and "no HBM bandwidth" in d["bandwidth_floor"]["source"]
    assert set(d["hops"]) == {"gpt2 340M>120M", "gpt2 760M>120M", "gpt2 760M>340M"}
    assert d["goals"]["static_mixed_at_least_3x_baseline"] is False  # a CPU never gets there: not a claim
    for name in (FIRST, "gpt2 340M>120M", "gpt2 760M>340M"):  # every pair measured: every phase has its steps
        for loop in ("static_mixed", "dynamic_mixed"):
            ph = r["phases"][name][loop]
            assert ph["phase_s"] == pytest.approx(ph["rollouts_s"] + ph["scoring_s"] + ph["optimisation_s"])
    assert d["goals"]["rollouts_below_half_of_phase"] is not None  # read off the measured phase
    # the markdown beside the JSON: date, the dry-run banner, every planned row measured here
    md = (tmp_path / "gpu-dry-run.md").read_text()
    assert md.startswith(f"# GPU run: {r['gpu']['name']}, {r['created'][:10]}") and "Dry run" in md
    assert "not measured" not in md
    # the CPU report never lists a dry run as a GPU measurement
    assert cpu.gpu_section(tmp_path)["result_files"] == []
