"""benchmark.perf and benchmark/perf_gpu.py: structure and sanity of the reports, never timings.

OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_perf.py -q     # ~30 s on one core

Speed targets are measured by `python -m benchmark perf` on an idle machine, not asserted here: these tests only
check that every section runs end to end on `tiny` settings and that every figure is well formed (positive rates,
ratios computed from the measured numbers, GPU rows "not measured" without a GPU).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark import perf, perf_gpu

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One quick tiny run of every section, workers in-process (the subprocess path is tested separately)."""
    out, work = tmp_path_factory.mktemp("perf-out"), tmp_path_factory.mktemp("perf-work")
    jpath, mpath = perf.run_perf(
        scale="tiny", out=out, repeats=1, quick=True, work=work, isolate=False, log=lambda *a: None
    )
    return json.loads(jpath.read_text()), mpath.read_text(), jpath, work


def _positive(s: dict) -> bool:
    return s["n"] >= 1 and all(math.isfinite(v) and v > 0 for v in s["values"]) and s["min"] <= s["median"] <= s["max"]


def test_report_files_and_header(report):
    r, md, jpath, _ = report
    assert r["schema"] == perf.SCHEMA
    assert jpath.name == f"{r['machine']['slug']}.json"
    assert r["protocol"] | {"scale": "tiny", "repeats": 1, "quick": True, "threads": 1} == r["protocol"]
    assert _positive(r["calibration"]["matmul_512_fp32_1thread_ms"])
    for key in ("rollouts", "training", "trl", "evaluation", "gpu"):
        assert "status" in r[key]
    assert md.startswith(f"# Performance: {r['machine']['slug']}")
    for section in ("rollouts", "training", "vs TRL", "evaluation", "gpu"):
        assert f"| {section} |" in md


def test_rollouts_ratio_from_measured_times(report):
    ro = report[0]["rollouts"]
    assert ro["status"] == "measured"
    v = ro["variants"]
    assert set(v) == {"mixed", "student_ours", "teacher_ours", "student_hf_generate"}
    for name, x in v.items():
        assert _positive(x["tok_per_s"]) and _positive(x["seconds"]), name
        # EOS suppressed: every variant generates all rows x max_new_tokens
        assert x["tokens"] == ro["settings"]["batch"] * ro["settings"]["max_new_tokens"]
    ratio = v["mixed"]["seconds"]["values"][0] / (
        v["student_ours"]["seconds"]["values"][0] + v["teacher_ours"]["seconds"]["values"][0]
    )
    assert ro["ratio_mixed_over_student_plus_teacher"]["values"][0] == pytest.approx(ratio)


def test_training_split_adds_up(report):
    tr = report[0]["training"]
    assert tr["status"] == "measured"
    ph = tr["phase"]
    for k in ("seconds", "rollout_s", "teacher_scoring_s", "optimisation_s", "generated_tok_per_s"):
        assert _positive(ph[k]), k
    parts = ph["rollout_s"]["median"] + ph["teacher_scoring_s"]["median"] + ph["optimisation_s"]["median"]
    assert parts <= ph["seconds"]["median"] * 1.0001  # the rest is the loop's own bookkeeping
    assert _positive(tr["step"]["response_tok_per_s"]) and _positive(tr["memory"]["peak_rss_mb"])
    assert tr["settings"]["steps_per_phase"] == tr["settings"]["ppo_epochs"] * (
        tr["settings"]["rollouts_per_phase"] // tr["settings"]["batch_size"]
    )


def test_teacher_logits_cache_before_after(report):
    """The cache's before/after comes from the same round; the teacher forwards each rollout once per phase
    instead of once per PPO epoch (a count, not a timing)."""
    r = report[0]
    c, cfg = r["speedups"]["teacher_logits_cache"], r["training"]["settings"]
    assert _positive(c["before_phase_s"]) and _positive(c["after_phase_s"]) and _positive(c["phase_speedup"])
    assert c["phase_speedup"]["values"][0] == pytest.approx(
        c["before_phase_s"]["values"][0] / c["after_phase_s"]["values"][0]
    )
    pt_rows = cfg["steps_per_phase"] * cfg["batch_size"] if cfg["pt_coef"] > 0 else 0
    assert c["after_teacher_rows"] == cfg["rollouts_per_phase"] + pt_rows
    assert c["before_teacher_rows"] == cfg["ppo_epochs"] * cfg["rollouts_per_phase"] + pt_rows
    assert "teacher-logits cache: phase speed-up" in report[1]


def test_finished_row_compaction_before_after(report):
    """Compaction on/off decode the same tokens (rows really stopped at different lengths); the speed-up is the
    paired ratio of the two measured times."""
    r = report[0]
    c, ro = r["speedups"]["finished_row_compaction"], r["rollouts"]["settings"]
    assert c["same_tokens"] is True
    assert ro["batch"] < c["generated_tokens"] < ro["batch"] * ro["max_new_tokens"]
    assert _positive(c["before_s"]) and _positive(c["after_s"])
    assert c["speedup"]["values"][0] == pytest.approx(c["before_s"]["values"][0] / c["after_s"]["values"][0])
    assert "finished-row compaction: speed-up" in report[1]


def test_trl_side_by_side(report):
    t = report[0]["trl"]
    if not perf._has("trl"):
        assert t["status"].startswith("not measured")
        return
    assert t["status"] == "measured"
    for side in ("trl", "ours"):
        assert _positive(t[side]["s_per_step"]) and _positive(t[side]["generated_tok_per_s"])
        assert _positive(t[side]["peak_rss_mb"])
    assert t["ratio_of_medians"] == pytest.approx(t["ours"]["s_per_step"]["median"] / t["trl"]["s_per_step"]["median"])
    assert t["settings"]["prompt_tokenization_matches"] == 1.0  # both trainers see the same token ids


def test_evaluation_batched_vs_single(report):
    e = report[0]["evaluation"]
    assert e["status"] == "measured"
    assert _positive(e["batched_s"]) and _positive(e["single_s"])
    assert e["ratio_single_over_batched"]["values"][0] == pytest.approx(
        e["single_s"]["values"][0] / e["batched_s"]["values"][0]
    )
    assert e["same_rouge_l"] is True  # per-example generators: the batch size changes no text


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU rows")
def test_gpu_rows_not_measured_without_gpu(report):
    r, md, _, _ = report
    g = r["gpu"]
    assert g["status"] == perf.NOT_MEASURED_GPU
    assert [row["pair"] for row in g["rows"]] == [p["name"] for p in perf_gpu.PAIRS]
    assert all(row["status"] == perf.NOT_MEASURED_GPU for row in g["rows"])
    assert md.count(perf.NOT_MEASURED_GPU) == len(perf_gpu.PAIRS)


def test_worker_runs_in_its_own_process(report):
    """The benchmark's default path: a fresh subprocess with 1 thread, result read back from its stdout."""
    work = report[3]
    res = perf.run_worker("evaluation_batched", work / "setup.json", 0, quick=True, isolate=True)
    assert res["seconds"] > 0 and res["memory"]["peak_rss_mb"] > 0


def test_cli_options():
    from benchmark.__main__ import build_parser

    args = build_parser().parse_args(["perf", "--scale", "tiny", "--only", "rollouts,trl", "--quick"])
    assert args.func is perf.cmd_perf and perf._parse_only(args.only) == ("rollouts", "trl")
    with pytest.raises(perf.PerfError):
        perf._parse_only("rollouts,gpu")


def test_perf_gpu_dry_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmark" / "perf_gpu.py"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((tmp_path / "gpu-dry-run.json").read_text())
    assert r["schema"] == perf_gpu.SCHEMA and r["dry_run"] is True and r["created"]
    assert r["peak"]["tflops"] > 0
    assert [p["pair"] for p in r["pairs"]] == [p["name"] for p in perf_gpu.PAIRS]
    for p in r["pairs"]:
        assert p["status"] == "measured", p
        d, s, pr = p["decode"], p["step"], p["projection"]
        assert d["tok_per_s"] == pytest.approx(d["tokens"] / d["seconds"])
        assert s["mfu"] == pytest.approx(s["model_flops_per_step"] / s["step_s"] / (r["peak"]["tflops"] * 1e12))
        assert pr["phases"] == 5000 / 16 and pr["hours_1gpu"] == pytest.approx(pr["phases"] * pr["phase_s"] / 3600)
    # the checks of the first pair of each family: rollout log-probs scored three ways, static-cache decoding
    first = {p["pair"]: p for p in r["pairs"]}
    for name in ("gpt2 1.5B>120M", "opt 6.7B>2.7B"):
        for who in ("student", "teacher"):
            sc = first[name]["rollout_scoring"][who]
            assert sc["tokens"] == 4 * 8 and sc["mean_logprob"] < 0 and 0 <= sc["clipped_at_epoch1"] <= 1
            # bf16 decoding and bf16 forward both differ from fp32, by bf16 rounding only
            assert 0 < sc["forward_bf16_vs_fp32"]["mean"] < 0.05 and sc["decode_bf16_vs_fp32"]["max"] < 0.1
    static = first["gpt2 1.5B>120M"]["static_cache"]
    for v in ("hf_dynamic", "hf_static_eager", "hf_static_compiled", "ours", "ours_teacher_alone"):
        assert static[v]["tok_per_s"] == pytest.approx(4 * 8 / static[v]["seconds"]), v
    assert "static_cache" not in first["opt 6.7B>1.3B"] and "rollout_scoring" not in first["opt 6.7B>1.3B"]
    assert "DRY RUN" in proc.stdout
    # perf.py never lists a dry run as a GPU measurement
    assert perf._gpu_section(tmp_path)["result_files"] == []
