"""Stages as cluster jobs through submitit: the same DAG, cache and resume semantics as the local runner.

    pip install -e .[cluster]
    python -m benchmark plan table2 --scale paper --executor submitit --cluster slurm --slurm partition=gpu   # jobs
    python -m benchmark run table2 --scale paper --executor submitit --cluster slurm --slurm partition=gpu \\
        --slurm account=myproj --out runs/paper
    python -m benchmark status table2 --scale paper --out runs/paper        # each stage's job id and state

Each stage is one job that runs exactly what a local stage runs (`runner.run_stage` inside the job: the same
`python -m benchmark _stage STAGE_DIR`, under the `deepspeed` launcher on the job's GPUs), so stage.json, the
stage's .lock, DONE.json with its manifest, FAILED.json and resume from the last checkpoint are unchanged. The job
id is recorded in STAGE_DIR/job.json and submitit's own logs go to STAGE_DIR/submitit/ (neither is an output).
On a time limit or preemption submitit calls `StageJob.checkpoint`, which resubmits the same stage: it resumes
from its own last checkpoint, as a rerun does locally. A runner killed while jobs are queued or running leaves
them running; rerunning waits for a job recorded in job.json that is still active instead of submitting the stage
twice.

Submission: a stage is submitted when its inputs are done (the local runner's loop, with `--jobs` capping the jobs
in flight, default every stage), not all at once with `afterok` dependencies. Why: the plan is at most six stages
deep (data -> SFT teacher -> SFT init -> hop -> hop -> evaluation), so per-stage submission adds at most six queue
waits to a pipeline whose stages take hours; in exchange the runner verifies each finished stage, merges its
records into results.jsonl and reports a failure (blocking only the stages that need it) as it happens, exactly as
locally. With `afterok`, a failed stage leaves its dependents pending forever (DependencyNeverSatisfied) until
cancelled, and submitit's `local` and `debug` stand-ins have no dependencies, so the tests could not exercise it.

Resources (`job_resources`): training stages (sft, distill) at paper scale get one node of 8 GPUs (the reference
ran on one node of 16 V100s, ref §2.3; our global-batch invariants keep the results independent of the GPU count),
an evaluation one GPU, data preparation none; 8 CPUs and 64 GB per GPU; a time limit of twice the stage's cost
estimate (`plan.stage_cost_value`) on those GPUs, between one and 48 hours. At tiny and small scale every job is one
CPU-only task with a limit of ten times the measured seconds plus ten minutes. `--slurm KEY=VALUE` adds
`slurm_KEY` parameters (partition, account, qos, constraint, ...) to every job.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from pathlib import Path

from tqdm.auto import tqdm

from benchmark import BenchmarkError, runner
from benchmark.plan import DONE_FILE, Plan, Stage, stage_cost_value, stage_status
from benchmark.plan import describe as describe_plan

JOB_FILE = "job.json"  # {"job_id", "cluster", "folder", "submitted", "state"}
LOG_DIR = "submitit"
CLUSTERS = ("slurm", "local", "debug")
PAPER_TRAIN_GPUS = 8
_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING"}

# argparse options of `plan`, `run` and `reproduce` (the CLI adds them: library modules build no parser)
OPTIONS = (
    (
        ("--executor",),
        dict(
            choices=("local", "submitit"),
            default="local",
            help="local: stages as subprocesses here (default); submitit: each stage a cluster job (pip install "
            "-e .[cluster])",
        ),
    ),
    (
        ("--cluster",),
        dict(
            choices=CLUSTERS,
            help="submitit's cluster: slurm, or its local/debug stand-ins on this machine (default: slurm where "
            "sbatch exists, else local)",
        ),
    ),
    (
        ("--slurm",),
        dict(
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a SLURM job parameter for every stage, e.g. partition=gpu, account=X, qos=Y, constraint=a100 "
            "(repeatable)",
        ),
    ),
    (
        ("--dry-run",),
        dict(action="store_true", help="print the job each stage would be, with its resources; submit nothing"),
    ),
)


class ClusterError(BenchmarkError):
    pass


def slurm_parameters(pairs: list[str]) -> dict:
    """`--slurm KEY=VALUE` pairs -> submitit's `slurm_KEY` parameters (numbers and JSON values parsed)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ClusterError(f"--slurm {pair!r}: expected KEY=VALUE, e.g. --slurm partition=gpu")
        try:
            out[f"slurm_{key.strip()}"] = json.loads(value)
        except ValueError:
            out[f"slurm_{key.strip()}"] = value
    return out


def job_resources(stage: Stage, scale_name: str) -> dict:
    """submitit's generic parameters for a stage's job: nodes, tasks_per_node, gpus_per_node, cpus_per_task,
    mem_gb, timeout_min (see the module docstring for the rules)."""
    cost = stage_cost_value(stage, scale_name)
    if scale_name != "paper":
        seconds = cost[0] if cost else 60.0
        return dict(
            nodes=1,
            tasks_per_node=1,
            gpus_per_node=0,
            cpus_per_task=1,
            mem_gb=8,
            timeout_min=10 + math.ceil(seconds / 6),
        )
    gpus = {"sft": PAPER_TRAIN_GPUS, "distill": PAPER_TRAIN_GPUS, "evaluate": 1}.get(stage.kind, 0)
    if cost is not None:
        hours = 2 * cost[0] / max(gpus, 1)
    else:  # SFT (no estimate) and data preparation (downloads)
        hours = 24.0 if stage.kind == "sft" else 2.0
    return dict(
        nodes=1,
        tasks_per_node=1,  # the deepspeed launcher inside the job starts one rank per GPU
        gpus_per_node=gpus,
        cpus_per_task=8 * max(gpus, 1),
        mem_gb=64 * max(gpus, 1),
        # at most 48 h, the usual partition limit: a longer stage requeues through `StageJob.checkpoint` and resumes
        timeout_min=min(48 * 60, max(60, math.ceil(hours * 60))),
    )


def describe(plan: Plan, run_dir: Path, executor: str, cluster: str | None, slurm: list[str]) -> str:
    """The plan table, and with the submitit executor the job each stage still to run would be."""
    text = describe_plan(plan, run_dir)
    if executor != "submitit":
        return text
    extra = slurm_parameters(slurm)
    lines = [
        f"\njobs (submitit, cluster {cluster or 'auto'}): one per stage to run, submitted when its inputs are done"
    ]
    for s in plan.stages.values():
        status = stage_status(s, run_dir)
        if status in ("sourced", "done"):
            lines.append(f"  {s.dirname:<48} no job ({status})")
            continue
        res = job_resources(s, plan.scale) | extra
        params = " ".join(f"{k}={v}" for k, v in res.items())
        lines.append(f"  {s.dirname:<48} {params}")
    return text + "\n" + "\n".join(lines)


def executor(kind: str, cluster: str | None, slurm: list[str], scale_name: str) -> SubmititExecutor | None:
    """The stage executor `runner.run_plan` uses: None for local subprocesses, else a `SubmititExecutor`."""
    if kind == "local":
        if slurm or cluster:
            raise ClusterError("--cluster and --slurm need --executor submitit")
        return None
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ClusterError(
            "--executor submitit needs submitit: `pip install -e .[cluster]` (or `pip install submitit==1.5.4`)"
        ) from None
    return SubmititExecutor(cluster, slurm_parameters(slurm), scale_name)


class StageJob:
    """A job's callable: run the stage in the job's allocation exactly as the local runner does. submitit calls
    `checkpoint` on a time limit or preemption (it looks for the method, as on `submitit.helpers.Checkpointable`)."""

    def __init__(self, stage: Stage, stage_dir: Path, threads: int):
        # threads: the CPUs the job requested (not those it can see: submitit's local stand-in confines nothing), so
        # that a job computes with the same thread count, hence the same floating-point sums, wherever it runs
        self.stage, self.stage_dir, self.threads = stage, Path(stage_dir), threads

    def __call__(self) -> str | None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            import torch

            visible = ",".join(str(i) for i in range(torch.cuda.device_count()))
        gpus = [g for g in visible.split(",") if g]
        return runner.run_stage(self.stage, self.stage_dir, gpus, self.threads)

    def checkpoint(self):
        """Resubmit the same stage: it resumes from its own last checkpoint (the stage's process was stopped)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(StageJob(self.stage, self.stage_dir, self.threads))


def read_job(stage_dir: Path) -> dict | None:
    """STAGE_DIR/job.json (the stage's latest job), or None."""
    try:
        return json.loads((Path(stage_dir) / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_job(stage_dir: Path, record: dict) -> None:
    tmp = stage_dir / f".{JOB_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, stage_dir / JOB_FILE)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child of a live process is a zombie until reaped: not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def live_state(record: dict) -> str:
    """The scheduler's state of a recorded job: RUNNING / PENDING / COMPLETED / ... (UNKNOWN when it cannot say)."""
    if record.get("state"):
        return record["state"]
    if record["cluster"] == "local":  # submitit's local job id is its controller's pid
        return "RUNNING" if _pid_alive(int(record["job_id"])) else "ENDED"
    if record["cluster"] == "slurm":
        try:
            import submitit

            return submitit.SlurmJob(record["folder"], record["job_id"]).state
        except Exception:  # submitit missing or sacct unavailable here: the record is all we know
            return "UNKNOWN"
    return "ENDED"  # debug jobs run inside the runner: gone with it


def _active(record: dict | None) -> bool:
    """Whether a recorded job is queued or running (a job whose end this runner recorded is not)."""
    return record is not None and not record.get("state") and live_state(record) in _ACTIVE


def job_state(stage_dir: Path) -> str | None:
    """`status`: "job ID (STATE)" for a stage run as a cluster job, else None."""
    record = read_job(stage_dir)
    return None if record is None else f"job {record['job_id']} ({live_state(record)})"


class SubmititExecutor:
    """Runs each stage as one submitit job and waits for it (from one of the runner's threads)."""

    def __init__(self, cluster: str | None, slurm: dict, scale_name: str, poll_s: float = 2.0):
        self.cluster, self.slurm, self.scale_name, self.poll_s = cluster, slurm, scale_name, poll_s
        # submitit's debug stand-in runs a job inside this process, swapping os.environ meanwhile: one at a time
        self.serial = threading.Lock() if cluster == "debug" else contextlib.nullcontext()

    def holder(self, stage_dir: Path) -> str | None:
        """Who else runs the stage: its lock's holder, unless that is the stage's own recorded job (a runner killed
        earlier left it running), which `run_stage` waits for."""
        return None if _active(read_job(stage_dir)) else runner.stage_holder(stage_dir)

    def _submit(self, stage: Stage, stage_dir: Path):
        import submitit

        ex = submitit.AutoExecutor(folder=stage_dir / LOG_DIR, cluster=self.cluster)
        res = job_resources(stage, self.scale_name)
        try:
            ex.update_parameters(name=stage.dirname, **res, **self.slurm)
        except NameError as exc:  # submitit's message lists the valid parameters
            raise ClusterError(f"--slurm: {exc}") from None
        return ex.submit(StageJob(stage, stage_dir, res["cpus_per_task"])), ex.cluster

    def run_stage(self, stage: Stage, stage_dir: Path, gpu_group: list[str], threads: int) -> str | None:
        """`runner.run_stage` as a job: None on success or the actionable error message."""
        record = read_job(stage_dir)
        if _active(record):
            tqdm.write(f"{stage.dirname}: waiting for its job {record['job_id']}, submitted by an earlier run")
            while _active(record):  # an earlier run's job (that run was killed): never run a stage twice
                time.sleep(self.poll_s)
            err = None if (stage_dir / DONE_FILE).exists() else self._failure(stage, stage_dir, record, "ended")
        else:
            job, cluster = self._submit(stage, stage_dir)
            record = {"job_id": str(job.job_id), "cluster": cluster, "folder": str(stage_dir / LOG_DIR)}
            _write_job(stage_dir, record | {"submitted": time.strftime("%Y-%m-%d %H:%M:%S")})
            try:
                with self.serial:
                    err = job.result()  # the stage's own report (runner.run_stage ran inside the job)
                if err:
                    err += f"\njob {record['job_id']}: its submitit logs are in {record['folder']}"
            except Exception as exc:  # the job itself failed (killed, out of requeues, node failure)
                err = self._failure(stage, stage_dir, record, str(exc).strip().splitlines()[-1][:300])
            if err is None and not (stage_dir / DONE_FILE).exists():
                err = self._failure(stage, stage_dir, record, "ended without DONE.json")
        _write_job(stage_dir, (read_job(stage_dir) or record) | {"state": "FAILED" if err else "COMPLETED"})
        return err

    def _failure(self, stage: Stage, stage_dir: Path, record: dict, what: str) -> str:
        try:
            info = json.loads((stage_dir / runner.FAILED_FILE).read_text())
            what, advice = f"{info['error']}: {info['message']}", info["advice"]
        except (OSError, ValueError, KeyError, TypeError):
            advice = runner.RESUME_ADVICE
        log = stage_dir / "log.txt"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else "(no log)"
        return (
            f"stage {stage.dirname} ({stage.kind}) failed in job {record['job_id']}: {what}\nlog: {log} (job logs: "
            f"{record['folder']})\n--- last lines ---\n{tail}\n--- what to do: {advice}"
        )
