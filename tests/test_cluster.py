"""Stages as submitit jobs: the paper-scale dry run, job resources, and tiny runs on submitit's local stand-in that
end with the local executor's results, also after the runner was killed mid-way."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark import results
from benchmark.cluster import (
    ClusterError,
    StageJob,
    SubmititExecutor,
    job_resources,
    job_state,
    read_job,
    slurm_parameters,
)
from benchmark.plan import build_plan, stage_cost_value
from benchmark.runner import status_table

ENTRY = "gpt2/1.5B>760M"
ENV = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args], capture_output=True, text=True, env=ENV, timeout=timeout
    )


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = _cli("run", ENTRY, "--scale", "tiny", "--out", str(out), *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_paper_table2_dry_run_prints_one_job_per_stage_with_its_resources(tmp_path):
    out = tmp_path / "paper"
    proc = _cli(
        "plan", "table2", "--scale", "paper", "--out", str(out), "--executor", "submitit", "--cluster", "slurm",
        "--slurm", "partition=gpu", "--slurm", "account=proj", "--dry-run",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    jobs = proc.stdout.split("jobs (submitit, cluster slurm)")[1].splitlines()[1:]
    plan = build_plan(["table2"], "paper")
    assert len(jobs) == len(plan.stages)  # one line per stage: a job, or why there is none
    for s in plan.stages.values():
        (line,) = [ln for ln in jobs if ln.split()[0] == s.dirname]
        if s.source:
            assert "no job (sourced)" in line
            continue
        res = job_resources(s, "paper")
        assert f"gpus_per_node={res['gpus_per_node']} " in line and f"timeout_min={res['timeout_min']} " in line
        assert line.endswith("slurm_partition=gpu slurm_account=proj")
    assert not out.exists()  # nothing submitted, nothing written


def test_importing_the_cli_does_not_import_submitit():
    code = "import sys, benchmark.__main__, benchmark.cluster; print('submitit' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    assert proc.stdout.strip() == "False"


def test_job_resources_follow_the_stage_kind_and_cost():
    plan = build_plan(["table2"], "paper", retrain_one_step=True)
    hop = next(s for s in plan.by_kind("distill") if not s.source)
    res = job_resources(hop, "paper")
    assert res["gpus_per_node"] == 8 and res["cpus_per_task"] == 64 and res["nodes"] == 1
    hours = stage_cost_value(hop, "paper")[0]  # V100-GPU-hours: twice that, spread over the node's 8 GPUs
    assert res["timeout_min"] == min(48 * 60, max(60, math.ceil(2 * hours / 8 * 60)))
    ev = plan.by_kind("evaluate")[0]
    assert job_resources(ev, "paper")["gpus_per_node"] == 1 and job_resources(ev, "paper")["timeout_min"] == 120
    tiny = build_plan([ENTRY], "tiny")
    for s in tiny.stages.values():
        r = job_resources(s, "tiny")
        assert r["gpus_per_node"] == 0 and r["timeout_min"] > stage_cost_value(s, "tiny")[0] / 60


def test_slurm_pairs_become_submitit_parameters_and_bad_ones_are_sentences(tmp_path):
    assert slurm_parameters(["partition=gpu", "qos=high", "signal_delay_s=120"]) == {
        "slurm_partition": "gpu",
        "slurm_qos": "high",
        "slurm_signal_delay_s": 120,
    }
    with pytest.raises(ClusterError, match="KEY=VALUE"):
        slurm_parameters(["partition"])
    stage = build_plan([ENTRY], "tiny").by_kind("data")[0]
    with pytest.raises(ClusterError, match="partitionn"):  # submitit validates names even for its local stand-ins
        SubmititExecutor("debug", {"slurm_partitionn": "gpu"}, "tiny").run_stage(stage, tmp_path, [], 1)
    proc = _cli("run", ENTRY, "--scale", "tiny", "--out", str(tmp_path / "x"), "--slurm", "partition=gpu")
    assert proc.returncode != 0 and "--executor submitit" in proc.stderr


def test_a_preempted_job_resubmits_the_same_stage(tmp_path):
    stage = build_plan([ENTRY], "tiny").by_kind("sft")[0]
    again = StageJob(stage, tmp_path, 3).checkpoint()
    assert isinstance(again.function, StageJob) and again.function.stage == stage
    assert again.function.stage_dir == tmp_path and again.function.threads == 3 and again.args == ()


def test_a_failed_job_is_reported_like_a_failed_local_stage(tmp_path):
    stage = build_plan([ENTRY], "tiny").by_kind("data")[0]
    d = tmp_path / "stages" / stage.dirname
    d.mkdir(parents=True)
    (d / "stage.json").write_text("{not json")  # the stage process raises reading it, and writes FAILED.json
    err = SubmititExecutor("debug", {}, "tiny").run_stage(stage, d, [], 1)
    job = read_job(d)
    assert f"({stage.kind}) failed: JSONDecodeError" in err and "--- what to do: a file this stage" in err
    assert err.endswith(f"job {job['job_id']}: its submitit logs are in {d / 'submitit'}")
    assert job["state"] == "FAILED" and list((d / "submitit").glob("*_log.out"))
    table = status_table(tmp_path, job_state=job_state)
    assert f"failed       data      {stage.dirname}" in table and f"job {job['job_id']} (FAILED)" in table


def _metrics(run_dir: Path) -> dict[tuple[str, str], list]:
    df = results.read(run_dir)
    return {(r.entry, r.metric): list(r["values"]) for _, r in df.iterrows()}


def _models(run_dir: Path) -> dict[str, str]:
    """Stage name -> sha256 of its model weights, from DONE.json manifests."""
    out = {}
    for done in (run_dir / "stages").glob("*/DONE.json"):
        files = json.loads(done.read_text())["files"]
        out[done.parent.name] = {k: v["sha256"] for k, v in files.items() if k.startswith("model/")}
    return out


def _same_results(a: Path, b: Path) -> None:
    ma, mb = _metrics(a), _metrics(b)
    assert ma.keys() == mb.keys() and ma
    for key in ma:
        assert mb[key] == pytest.approx(ma[key], rel=1e-9, nan_ok=True), key
    assert _models(a) == _models(b)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "tiny"
    _run(out)
    return out


@pytest.mark.slow
def test_submitit_local_cluster_ends_with_the_local_executors_results(local_run, tmp_path):
    out = tmp_path / "submitit"
    _run(out, "--executor", "submitit", "--cluster", "local")
    _same_results(local_run, out)
    for d in (out / "stages").iterdir():
        job = read_job(d)
        assert job["cluster"] == "local" and job["state"] == "COMPLETED"
        assert list((d / "submitit").glob(f"{job['job_id']}_*_log.out"))  # the job's logs beside the stage
    status = _cli("status", "--out", str(out)).stdout
    assert status.count("(COMPLETED)") == 5 and "totals: 5 done" in status
    again = _run(out, "--executor", "submitit", "--cluster", "local")
    assert "totals: 5 done" in again.stdout  # nothing resubmitted


@pytest.mark.slow
def test_killing_the_runner_mid_way_then_rerunning_under_submitit_gives_the_same_results(local_run, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "benchmark", "run", ENTRY, "--scale", "tiny", "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--executor", "submitit", "--cluster", "local"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # kill the runner alone while a training job runs: its jobs outlive it, as SLURM jobs would
    deadline, mid = time.time() + 600, None
    while mid is None and proc.poll() is None and time.time() < deadline:
        for d in (out / "stages").glob("sft-*"):
            if (d / "job.json").exists() and not (d / "DONE.json").exists():
                mid = d
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert mid is not None
    job_id = read_job(mid)["job_id"]
    rerun = _run(out, "--executor", "submitit", "--cluster", "local")
    _same_results(local_run, out)
    # the job the killed runner left was waited for (or had finished), never submitted a second time
    assert read_job(mid)["job_id"] == job_id
    planned = next(ln for ln in rerun.stdout.splitlines() if mid.name in ln)  # the plan table's row of the stage
    assert f"waiting for its job {job_id}" in rerun.stdout or planned.startswith("done")
