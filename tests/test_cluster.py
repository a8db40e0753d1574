"""Stages as submitit jobs: the paper-scale dry run, job resources, and tiny runs on submitit's local stand-in that
end with the local executor's results, also after the runner was killed mid-way. Hops across nodes: the jobs
`--nodes` asks for, the `--hostfile` given to the deepspeed launcher, and a trained stage run as two ranks of one
job (the multi-node launch path, on CPU with gloo) that ends as it does in one process."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchmark import results
from benchmark.cluster import (
    ClusterError,
    StageJob,
    SubmititExecutor,
    check_options,
    job_resources,
    job_state,
    read_hostfile,
    read_job,
    slurm_parameters,
)
from benchmark.plan import build_plan, stage_cost_value
from benchmark.runner import RunError, _command, run_plan, status_table

ENTRY = "gpt2/1.5B>760M"
ENV = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _cli(*args: str, timeout: float = 900, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args], capture_output=True, text=True, env=env, timeout=timeout
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


def test_nodes_spread_paper_trained_stages_over_nodes_one_task_per_gpu(tmp_path):
    proc = _cli(
        "plan", "table2", "--scale", "paper", "--out", str(tmp_path / "paper"), "--executor", "submitit",
        "--cluster", "slurm", "--dry-run", "--nodes", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    header, *jobs = proc.stdout.split("jobs (submitit, cluster slurm)")[1].splitlines()
    assert header.endswith("trained stages span 2 nodes, one task per GPU")
    plan = build_plan(["table2"], "paper")
    trained = [s for s in plan.stages.values() if s.kind in ("sft", "distill") and not s.source]
    assert trained  # table2 trains the hops without a public checkpoint
    for s in plan.stages.values():
        if s.source:
            continue
        (line,) = [ln for ln in jobs if ln.split()[0] == s.dirname]
        one_node = job_resources(s, "paper")
        if s in trained:  # the same 8 GPUs, hence the same time limit, as 2 nodes x 4 tasks of one GPU each
            assert "nodes=2 tasks_per_node=4 gpus_per_node=4 cpus_per_task=8 mem_gb=256 " in line
        else:  # evaluations and data preparation: one task on one node, as without --nodes
            assert f"nodes=1 tasks_per_node=1 gpus_per_node={one_node['gpus_per_node']} " in line
        assert line.endswith(f" timeout_min={one_node['timeout_min']}")


def test_options_that_cannot_run_are_refused_before_anything_starts(tmp_path):
    for args, match in [
        (("submitit", "slurm", [], "paper", 3), "use 1, 2, 4 or 8"),
        (("submitit", "local", [], "paper", 2), "--cluster slurm"),
        (("local", None, [], "paper", 2), "--hostfile spreads"),
        (("submitit", "slurm", [], "small", 2), "at small scale every stage is one CPU task"),
        (("submitit", "slurm", [], "paper", 0), "positive"),
        (("local", "slurm", [], "paper"), "need --executor submitit"),
    ]:
        with pytest.raises(ClusterError, match=match):
            check_options(*args)
    check_options("submitit", "slurm", [], "paper", 4)
    hosts = tmp_path / "hosts"
    hosts.write_text("# the GPU nodes\nnode-a slots=4\nnode-b slots=4  # the second\n\n")
    assert read_hostfile(hosts) == {"node-a": 4, "node-b": 4}
    with pytest.raises(ClusterError, match="for the local executor"):
        check_options("submitit", "slurm", [], "paper", hostfile=hosts)
    bad = [
        ("node-a\n", "line 1: 'node-a' is not `HOST slots=GPUS`"),
        ("a slots=2\na slots=2\n", "listed twice"),
        ("# none\n", "lists no host"),
    ]
    for text, match in bad:
        hosts.write_text(text)
        with pytest.raises(ClusterError, match=match):
            read_hostfile(hosts)
    with pytest.raises(ClusterError, match="cannot read it"):
        read_hostfile(tmp_path)  # a directory
    out = tmp_path / "run"
    proc = _cli("run", ENTRY, "--scale", "tiny", "--out", str(out), "--hostfile", str(tmp_path / "missing"))
    assert proc.returncode == 2 and f"--hostfile {tmp_path / 'missing'}: no such file" in proc.stderr
    assert not out.exists()  # refused before the run directory, let alone a stage


def test_a_hostfile_goes_to_the_deepspeed_launcher_of_trained_stages(tmp_path):
    plan = build_plan([ENTRY], "tiny")
    hosts = tmp_path / "hosts"
    hosts.write_text("node-a slots=4\nnode-b slots=4\n")
    cmd = _command(plan.by_kind("distill")[0], tmp_path, [], hosts)  # the hosts' GPUs, none needed here
    assert cmd[:7] == [sys.executable, "-m", "benchmark", "_guard", "deepspeed", "--hostfile", str(hosts)]
    assert cmd[7] == "--master_port" and cmd[9:] == ["--module", "benchmark", "_stage", str(tmp_path)]
    for s in plan.by_kind("evaluate") + plan.by_kind("data"):  # on this machine, without the launcher
        assert _command(s, tmp_path, ["0"], hosts) == [sys.executable, "-m", "benchmark", "_stage", str(tmp_path)]
    with pytest.raises(RunError, match="every GPU .* lists: use --jobs 1"):
        run_plan(plan, tmp_path / "run", jobs=2, progress=False, hostfile=hosts)


@pytest.mark.slow
def test_run_with_a_hostfile_starts_each_trained_stage_under_the_launcher_with_it(tmp_path):
    """Through the CLI: a stand-in `deepspeed` on PATH records how the runner started it, and fails."""
    hosts = tmp_path / "hosts"
    hosts.write_text("node-a slots=4\nnode-b slots=4\n")
    bin_dir, record = tmp_path / "bin", tmp_path / "argv"
    bin_dir.mkdir()
    (bin_dir / "deepspeed").write_text(f'#!/bin/sh\necho "$@" >> {record}\nexit 3\n')
    (bin_dir / "deepspeed").chmod(0o755)
    env = ENV | {"PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}"}
    out = tmp_path / "run"
    proc = _cli("run", ENTRY, "--scale", "tiny", "--out", str(out), "--hostfile", str(hosts), env=env)
    assert proc.returncode == 2 and "exited with code 3" in proc.stderr
    assert "trained stages: deepspeed --hostfile" in proc.stdout and "(2 hosts, 8 GPUs)" in proc.stdout
    launched = record.read_text().splitlines()  # both SFT stages (one at a time); the hop waits for them
    assert len(launched) == 2
    for line in launched:
        assert (
            line.startswith(f"--hostfile {hosts} --master_port ")
            and f"--module benchmark _stage {out}/stages/sft-" in line
        )
    assert len(list((out / "stages").glob("data-*/DONE.json"))) == 1  # the data stage ran here


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


def _final_weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    """The weights of the stage's last step (its DeepSpeed checkpoint: the uninterrupted state, as test_train.py)."""
    latest = (stage_dir / "checkpoints" / "latest").read_text().strip()
    path = stage_dir / "checkpoints" / latest / "state" / "mp_rank_00_model_states.pt"
    return {k: v.float() for k, v in torch.load(path, map_location="cpu", weights_only=False)["module"].items()}


def _worst(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
def test_a_trained_stage_as_two_ranks_of_one_job_ends_as_in_one_process(local_run, tmp_path):
    """The launch path of a stage spanning nodes (one task per rank, the torch distributed environment exported from
    the allocation, the stage's own process per rank, no launcher) on submitit's local stand-in with two CPU tasks
    (gloo): the hop ends as the local run's did in one process, within test_train.py's world-size tolerances."""
    stage = build_plan([ENTRY], "tiny").by_kind("distill")[0]
    one = local_run / "stages" / stage.dirname
    two = tmp_path / "stages" / stage.dirname
    two.mkdir(parents=True)
    shutil.copy(one / "stage.json", two / "stage.json")  # its inputs: the local run's data, teacher and student
    # tasks_per_node=2 over the tiny job's resources: what --nodes asks SLURM for, one task per rank
    assert SubmititExecutor("local", {"tasks_per_node": 2}, "tiny").run_stage(stage, two, [], 1) is None
    job = read_job(two)
    assert job["state"] == "COMPLETED"
    assert {p.name for p in (two / "submitit").glob(f"{job['job_id']}_*_log.out")} == {
        f"{job['job_id']}_{rank}_log.out" for rank in (0, 1)
    }
    assert "(rank 0 of 2, master " in (two / "log.txt").read_text()  # rank 0 writes the stage's log
    summary_one, summary_two = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert (summary_one["world_size"], summary_two["world_size"]) == (1, 2)
    rows_one, rows_two = (
        [r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
        for d in (one, two)
    )
    assert [r["step"] for r in rows_two] == list(range(1, 9))  # written once, by rank 0
    for a, b in zip(rows_one, rows_two, strict=True):
        for key in ("pg_loss", "reg_loss", "pt_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (a["step"], key)
    assert _worst(_final_weights(one), _final_weights(two)) <= 1e-4
    assert summary_two["best"]["step"] == summary_one["best"]["step"]  # the same step selected, the same model
    selected = [load_file(d / "model" / "model.safetensors") for d in (one, two)]
    assert _worst(*selected) <= 1e-4
    done_one, done_two = (json.loads((d / "DONE.json").read_text())["files"] for d in (one, two))
    assert done_one.keys() == done_two.keys()
