"""Stages beyond one local process: cluster jobs through submitit, hops across nodes (SLURM, or a hostfile), and
the guard of the deepspeed launcher. The same DAG, cache and resume semantics as the local runner.

    pip install -e .[cluster]
    python -m benchmark plan table2 --scale paper --executor submitit --cluster slurm --slurm partition=gpu   # jobs
    python -m benchmark run table2 --scale paper --executor submitit --cluster slurm --slurm partition=gpu \\
        --slurm account=myproj --out runs/paper
    python -m benchmark status table2 --scale paper --out runs/paper        # each stage's job id and state
    python -m benchmark run table2 --scale paper --executor submitit --cluster slurm --nodes 2 --out runs/paper
    python -m benchmark run table2 --scale paper --hostfile hosts.txt --out runs/paper    # no SLURM: deepspeed's ssh

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

Resources (`job_resources`): training stages (sft, distill) at paper scale get 8 GPUs, one node of 8 by default
(the reference ran on one node of 16 V100s, ref §2.3; our global-batch invariants keep the results independent of
the GPU count), an evaluation one GPU, data preparation none; 8 CPUs and 64 GB per GPU; a time limit of twice the
stage's cost estimate (`plan.stage_cost_value`) on those GPUs, between one and 48 hours. At tiny and small scale
every job is one CPU-only task with a limit of ten times the measured seconds plus ten minutes. `--slurm KEY=VALUE`
adds `slurm_KEY` parameters (partition, account, qos, constraint, ...) to every job.

Hops across nodes, under SLURM (`--nodes N`, paper scale): a trained stage's 8 GPUs are spread over N nodes
(`--nodes 2`: 2 nodes x 4 GPUs, e.g. an OPT hop whose 13B teacher is sharded under ZeRO-3 on nodes of 4 GPUs). Such
a job has one task per GPU, started by submitit's srun; each task exports the torch distributed environment of the
allocation (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR = the first node, MASTER_PORT from the job
id) and runs the stage's own process, `python -m benchmark _stage STAGE_DIR`, as one rank, with no launcher. Global
rank 0 holds the stage's lock and writes log.txt, the outputs and DONE.json, as rank 0 does under the deepspeed
launcher; the other ranks' output goes to their submitit task logs. Every task sees its node's GPUs and LOCAL_RANK
picks its own, as under the launcher. Evaluations and data preparation stay one task on one node, and with
`--nodes 1` (the default) a trained stage is one task running the deepspeed launcher on its node's GPUs.

Outside SLURM (`--hostfile PATH`, the local executor): trained stages run as `deepspeed --hostfile PATH ...` on
every GPU the hostfile lists (DeepSpeed's format, one `HOST slots=GPUS` line per host), one stage at a time;
evaluations and data preparation run on this machine. DeepSpeed's multi-node launcher needs passwordless ssh to
every host, the run directory on a filesystem every host shares, and the same Python environment on each; it
passes on only the variables named in a `.deepspeed_env` file (and NCCL_*/PYTHON* ones). The launcher, on one node
or many, runs under `guard` (`python -m benchmark _guard deepspeed ...`), which dies with the runner and takes the
launcher's process group with it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
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
        ("--nodes",),
        dict(
            type=int,
            default=1,
            metavar="N",
            help="--cluster slurm at paper scale: spread each trained stage's 8 GPUs over N nodes (1, 2, 4 or 8), "
            "one task per GPU; evaluations stay on one GPU (default 1)",
        ),
    ),
    (
        ("--hostfile",),
        dict(
            type=Path,
            metavar="PATH",
            help="local executor: run each trained stage as `deepspeed --hostfile PATH` on every GPU of the hosts "
            "it lists (one `HOST slots=GPUS` line per host; passwordless ssh and a shared filesystem), one stage at "
            "a time",
        ),
    ),
    (
        ("--dry-run",),
        dict(action="store_true", help="print the job each stage would be, with its resources; submit nothing"),
    ),
)
TRAINED = ("sft", "distill")


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


def read_hostfile(path: Path) -> dict[str, int]:
    """{host: GPUs} from a DeepSpeed hostfile (`HOST slots=GPUS` lines, `#` comments); a clear error when the file is
    missing, unreadable or not in that format (DeepSpeed itself would quietly train on this machine alone)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ClusterError(
            f"--hostfile {path}: no such file; give DeepSpeed's hostfile, one `HOST slots=GPUS` line per host"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClusterError(f"--hostfile {path}: cannot read it ({exc}); check the path and its permissions") from None
    hosts: dict[str, int] = {}
    for i, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"(\S+)\s+slots=(\d+)", line)
        if not m or m[1] in hosts or int(m[2]) < 1:
            why = f"{m[1]} is listed twice" if m and m[1] in hosts else f"{line!r} is not `HOST slots=GPUS`"
            raise ClusterError(f"--hostfile {path}, line {i}: {why} (DeepSpeed's hostfile format)")
        hosts[m[1]] = int(m[2])
    if not hosts:
        raise ClusterError(f"--hostfile {path} lists no host: write one `HOST slots=GPUS` line per host")
    return hosts


def check_options(
    kind: str, cluster: str | None, slurm: list[str], scale_name: str, nodes: int = 1, hostfile: Path | None = None
) -> None:
    """Refuse a combination of `--executor`, `--cluster`, `--slurm`, `--nodes` and `--hostfile` that cannot run,
    before anything is submitted or started."""
    if kind == "local" and (slurm or cluster):
        raise ClusterError("--cluster and --slurm need --executor submitit")
    if nodes < 1:
        raise ClusterError(f"--nodes {nodes}: give a positive number of nodes")
    if nodes > 1 and (kind != "submitit" or cluster != "slurm"):
        raise ClusterError(
            f"--nodes {nodes} needs --executor submitit --cluster slurm (submitit's local and debug stand-ins run on "
            "this one machine); outside SLURM, --hostfile spreads a trained stage over the hosts it lists"
        )
    if nodes > 1 and scale_name != "paper":
        raise ClusterError(f"--nodes {nodes}: at {scale_name} scale every stage is one CPU task; --nodes is for paper")
    if PAPER_TRAIN_GPUS % nodes:
        *most, last = [str(n) for n in range(1, PAPER_TRAIN_GPUS + 1) if PAPER_TRAIN_GPUS % n == 0]
        raise ClusterError(
            f"--nodes {nodes}: a trained stage's {PAPER_TRAIN_GPUS} GPUs must split evenly over the nodes: use "
            f"{', '.join(most)} or {last}"
        )
    if hostfile is not None:
        if kind != "local":
            raise ClusterError("--hostfile is for the local executor; under SLURM, --nodes N spreads a stage")
        read_hostfile(hostfile)


def job_resources(stage: Stage, scale_name: str, nodes: int = 1) -> dict:
    """submitit's generic parameters for a stage's job: nodes, tasks_per_node, gpus_per_node, cpus_per_task,
    mem_gb, timeout_min (see the module docstring for the rules; `nodes` spreads a paper-scale trained stage)."""
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
    nodes = nodes if stage.kind in TRAINED else 1
    per_node = gpus // nodes
    return dict(
        nodes=nodes,
        # one node: the deepspeed launcher inside the job starts one rank per GPU; several: srun starts one task each
        tasks_per_node=per_node if nodes > 1 else 1,
        gpus_per_node=per_node,
        cpus_per_task=8 if nodes > 1 else 8 * max(gpus, 1),
        mem_gb=64 * max(per_node, 1),
        # at most 48 h, the usual partition limit: a longer stage requeues through `StageJob.checkpoint` and resumes
        timeout_min=min(48 * 60, max(60, math.ceil(hours * 60))),
    )


def describe(
    plan: Plan,
    run_dir: Path,
    executor: str,
    cluster: str | None,
    slurm: list[str],
    nodes: int = 1,
    hostfile: Path | None = None,
) -> str:
    """The plan table, and with the submitit executor the job each stage still to run would be (with a hostfile, the
    hosts trained stages run on)."""
    check_options(executor, cluster, slurm, plan.scale, nodes, hostfile)
    text = describe_plan(plan, run_dir)
    if hostfile is not None:
        hosts = read_hostfile(hostfile)
        return text + (
            f"\ntrained stages: deepspeed --hostfile {hostfile} ({len(hosts)} hosts, {sum(hosts.values())} GPUs), one "
            "stage at a time; evaluations and data preparation on this machine"
        )
    if executor != "submitit":
        return text
    extra = slurm_parameters(slurm)
    spread = f"; trained stages span {nodes} nodes, one task per GPU" if nodes > 1 else ""
    lines = [
        f"\njobs (submitit, cluster {cluster or 'auto'}): one per stage to run, submitted when its inputs are done"
        + spread
    ]
    for s in plan.stages.values():
        status = stage_status(s, run_dir)
        if status in ("sourced", "done"):
            lines.append(f"  {s.dirname:<48} no job ({status})")
            continue
        res = job_resources(s, plan.scale, nodes) | extra
        params = " ".join(f"{k}={v}" for k, v in res.items())
        lines.append(f"  {s.dirname:<48} {params}")
    return text + "\n" + "\n".join(lines)


def executor(
    kind: str, cluster: str | None, slurm: list[str], scale_name: str, nodes: int = 1, hostfile: Path | None = None
) -> SubmititExecutor | None:
    """The stage executor `runner.run_plan` uses: None for local subprocesses (a hostfile goes to `run_plan`), else a
    `SubmititExecutor`. Refuses options that cannot run (`check_options`)."""
    check_options(kind, cluster, slurm, scale_name, nodes, hostfile)
    if kind == "local":
        return None
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ClusterError(
            "--executor submitit needs submitit: `pip install -e .[cluster]` (or `pip install submitit==1.5.4`)"
        ) from None
    return SubmititExecutor(cluster, slurm_parameters(slurm), scale_name, nodes)


class StageJob:
    """A job's callable: run the stage in the job's allocation exactly as the local runner does, or in a job of
    several tasks (a stage spanning nodes) as one rank of it. submitit calls `checkpoint` on a time limit or
    preemption (it looks for the method, as on `submitit.helpers.Checkpointable`; in a job of several tasks, on
    rank 0 alone)."""

    def __init__(self, stage: Stage, stage_dir: Path, threads: int):
        # threads: the CPUs the job requested (not those it can see: submitit's local stand-in confines nothing), so
        # that a job computes with the same thread count, hence the same floating-point sums, wherever it runs
        self.stage, self.stage_dir, self.threads = stage, Path(stage_dir), threads

    def __call__(self) -> str | None:
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            return self._rank()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            import torch

            visible = ",".join(str(i) for i in range(torch.cuda.device_count()))
        gpus = [g for g in visible.split(",") if g]
        return runner.run_stage(self.stage, self.stage_dir, gpus, self.threads)

    def _rank(self) -> None:
        """This task's rank of the stage: the stage's own process, in the torch distributed environment of the
        allocation (raises when that process fails: the job fails and `SubmititExecutor` reports FAILED.json)."""
        from submitit.helpers import TorchDistributedEnvironment

        # CUDA_VISIBLE_DEVICES stays as SLURM set it, every GPU of the node: LOCAL_RANK picks this rank's GPU
        # (engine.init_distributed, DeepSpeed), as under the deepspeed launcher. overwrite: a requeued or nested job
        # may inherit the variables.
        dist = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        cmd = [sys.executable, "-m", "benchmark", "_stage", str(self.stage_dir)]
        n = str(self.threads)
        env = os.environ | {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "TOKENIZERS_PARALLELISM": "false"}
        where = f"rank {dist.rank} of {dist.world_size}, master {dist.master_addr}:{dist.master_port}"
        with contextlib.ExitStack() as stack:
            out = None
            if dist.rank == 0:  # the stage's log, as locally; the other ranks write to their submitit task logs
                (self.stage_dir / runner.FAILED_FILE).unlink(missing_ok=True)
                out = stack.enter_context((self.stage_dir / "log.txt").open("a"))
                out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)} ({where})\n")
                out.flush()
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, env=env).returncode
        if code:
            raise ClusterError(f"the stage's process ({where}) exited with code {code}")

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

    def __init__(self, cluster: str | None, parameters: dict, scale_name: str, nodes: int = 1, poll_s: float = 2.0):
        """`parameters`: submitit parameters set over each job's `job_resources` (the `--slurm` pairs as slurm_KEY;
        the tests pass tasks_per_node=2 to run a CPU stage as two ranks on submitit's local stand-in)."""
        self.cluster, self.parameters, self.scale_name, self.nodes = cluster, parameters, scale_name, nodes
        self.poll_s = poll_s
        # submitit's debug stand-in runs a job inside this process, swapping os.environ meanwhile: one at a time
        self.serial = threading.Lock() if cluster == "debug" else contextlib.nullcontext()

    def holder(self, stage_dir: Path) -> str | None:
        """Who else runs the stage: its lock's holder, unless that is the stage's own recorded job (a runner killed
        earlier left it running), which `run_stage` waits for."""
        return None if _active(read_job(stage_dir)) else runner.stage_holder(stage_dir)

    def _submit(self, stage: Stage, stage_dir: Path):
        import submitit

        ex = submitit.AutoExecutor(folder=stage_dir / LOG_DIR, cluster=self.cluster)
        res = job_resources(stage, self.scale_name, self.nodes) | self.parameters
        try:
            ex.update_parameters(name=stage.dirname, **res)
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
                    # the stage's own report (runner.run_stage ran inside the job); a job of several tasks
                    # returns one result per rank, and a rank whose process failed raises here
                    err = job.results()[0]
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


# ----------------------------------------------------------------------------------------------------------------
# The guard of the deepspeed launcher (a trained stage on this node's GPUs, or on a hostfile's hosts)
# ----------------------------------------------------------------------------------------------------------------


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def guard(command: list[str]) -> int:
    """Run a command (a launcher) in its own process group; when this guard is told to stop, or its parent dies,
    stop the whole group (SIGTERM, SIGKILL 30 s later): `python -m benchmark _guard deepspeed ...`. The guard ends
    as its command did: with its exit code, or killed by the same signal (so the runner's report can say so)."""
    proc = None

    def stop(signum, _frame):
        if proc is None:  # the command has not started: nothing to stop
            sys.exit(128 + signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        timer = threading.Timer(30, _kill_group, (proc.pid,))
        timer.daemon = True
        timer.start()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    runner.die_with_parent()
    os.environ.pop(runner.PARENT_VAR, None)  # the launched ranks' parent is the launcher, not the runner
    proc = subprocess.Popen(command, start_new_session=True)
    code = proc.wait()
    if code < 0:  # killed by a signal: die of the same one
        with contextlib.suppress(OSError, ValueError):  # SIGKILL/SIGSTOP have no handler to reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code
