"""Execute a plan: each stage once, verified, resumable, concurrent where possible, one lock per run directory.

    python -m benchmark run table1 --scale small --out runs/small [--jobs 2] [--prune-checkpoints]
    python -m benchmark reproduce all --scale small --out runs/small   # run, then regenerate paper_tables/small
    python -m benchmark status --out runs/small                        # every stage: done / running / failed / ...
    python -m benchmark run table1 --scale small --out runs/small --redo distill-gpt2-1.5B_760M
    python -m benchmark run table2 --scale paper --executor submitit --slurm partition=gpu   # jobs: cluster.py

Every stage runs in its own process (`python -m benchmark _stage STAGE_DIR`; under the `deepspeed` launcher when
GPUs exist) with its log at `STAGE_DIR/log.txt`; it holds STAGE_DIR/.lock while it runs and dies with the runner
(a parent-death signal), so a killed run leaves no stage behind. A stage is finished when `DONE.json` exists,
written atomically after its outputs, with the size and sha256 of every output file: each run verifies the
finished stages it reuses and moves a damaged one to RUN/attic before running it again. An interrupted stage
resumes from its last checkpoint. A stage that raises writes FAILED.json (the error and what to do about its
cause), which the failure report quotes. Evaluation records live in each evaluate stage's `records.jsonl` and are
merged into `RUN/results.jsonl` (atomically) after every evaluation; merging only adds records or replaces a
stage's own, so the results store never shrinks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm

from benchmark import BenchmarkError, registry, rehearsal, results, scales
from benchmark.config import KINDS, for_scale
from benchmark.data import file_manifest, manifest_problems
from benchmark.plan import CONFIG_KIND, DONE_FILE, Plan, Stage, stage_status, write_stage_spec

FAILED_FILE = "FAILED.json"  # written by a stage that raised: what failed and what to do


class RunError(BenchmarkError):
    pass


def _holder(fh) -> str:
    fh.seek(0)
    return fh.read().strip() or "another process"


def _try_lock(path: Path):
    """An open file holding an exclusive flock on `path` (created if needed), or the holder's description (str) when
    another process holds it. A lock dies with its process: a killed run never leaves a stale one."""
    try:
        fh = path.open("a+")
    except PermissionError as exc:
        raise RunError(f"cannot write {path} ({exc.strerror}): choose a writable --out directory") from None
    except OSError as exc:
        raise RunError(f"cannot create {path}: {exc.strerror}; choose another --out directory") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fh)
        fh.close()
        return holder
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    fh.flush()
    return fh


class RunLock:
    """An exclusive lock on a run directory: two runs on one directory would corrupt each other's stages."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.fh = None

    def __enter__(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot create the run directory {self.path.parent}: {exc.strerror}") from None
        got = _try_lock(self.path)
        if isinstance(got, str):
            raise RunError(
                f"{self.path.parent} is in use by {got}; wait for it to finish, or use another --out "
                "directory (finished stages can be shared by copying their stage directories)"
            )
        self.fh = got
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def stage_holder(stage_dir: Path) -> str | None:
    """Who is running the stage in `stage_dir` now (its process holds `.lock` there), or None."""
    lock = stage_dir / ".lock"
    if not lock.exists():
        return None
    with lock.open() as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fh)
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


# ----------------------------------------------------------------------------------------------------------------
# Finished stages: DONE.json lists every output file with its size and sha256; reused stages are verified
# ----------------------------------------------------------------------------------------------------------------

# Not outputs: the runner's and the stage's own bookkeeping, resumable checkpoints, logs and temporaries (dot files).
_NOT_OUTPUTS = {DONE_FILE, FAILED_FILE, "stage.json", "log.txt", "tensorboard", "job.json", "submitit"}


def output_files(stage_dir: Path) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} of a stage's outputs (model/, data/, summary.json, records.jsonl, ...)."""
    return file_manifest(stage_dir, skip=_not_output)


def _not_output(rel: Path) -> bool:
    top = rel.parts[0]  # checkpoints/ and checkpoints.damaged-*/ are resumable state, not outputs
    return top in _NOT_OUTPUTS or top.startswith("checkpoints") or any(p.startswith(".") for p in rel.parts)


def verify_stage(stage_dir: Path) -> list[str]:
    """What is wrong with a finished stage's outputs (missing, truncated or altered files), [] when intact.

    A DONE.json written before manifests existed is trusted once: its manifest is recorded now."""
    done_path = stage_dir / DONE_FILE
    try:
        done = json.loads(done_path.read_text())
    except (OSError, ValueError) as exc:
        return [f"{DONE_FILE} is unreadable ({exc})"]
    if not isinstance(done, dict):
        return [f"{DONE_FILE} is not a JSON object"]
    if "files" not in done:
        done["files"] = output_files(stage_dir)
        _write_json_atomic(done_path, done)
        return []
    return manifest_problems(stage_dir, done["files"])


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def move_aside(run_dir: Path, stage: Stage, reason: str) -> Path:
    """Move a stage directory to RUN/attic/<stage>.<reason>-<time> (never deleted: delete it yourself when sure)."""
    src = run_dir / "stages" / stage.dirname
    dst = run_dir / "attic" / f"{stage.dirname}.{reason}-{time.strftime('%Y%m%d-%H%M%S')}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while dst.exists():
        dst, n = dst.with_name(f"{dst.name}-{n}"), n + 1
    os.replace(src, dst)
    return dst


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gpu_groups(gpus: int, jobs: int) -> list[list[str]]:
    """One group of GPUs per concurrent stage: 8 GPUs with --jobs 2 -> [0-3], [4-7]. Ids are the ones this run
    sees (a CUDA_VISIBLE_DEVICES set by the user is honoured)."""
    if jobs > gpus:
        raise RunError(f"--jobs {jobs} needs a GPU per concurrent stage; this machine has {gpus}: use --jobs {gpus}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",")[:gpus] if visible else [str(i) for i in range(gpus)]
    k = gpus // jobs
    return [ids[i * k : (i + 1) * k] for i in range(jobs)]


def _command(stage: Stage, stage_dir: Path, gpu_group: list[str], hostfile: Path | None = None) -> list[str]:
    if stage.kind in ("sft", "distill") and (gpu_group or hostfile):
        # The launcher takes its GPUs from CUDA_VISIBLE_DEVICES (see _stage_env), or from the hostfile's hosts; a port
        # of its own per stage, so stages running side by side on one node do not meet at the launcher's default port.
        hosts = ["--hostfile", str(hostfile)] if hostfile else []
        launcher = ["deepspeed", *hosts, "--master_port", str(free_port()), "--module", "benchmark"]
        # the launcher is not ours: a guard that dies with the runner takes the launcher and its ranks with it
        return [sys.executable, "-m", "benchmark", "_guard", *launcher, "_stage", str(stage_dir)]
    return [sys.executable, "-m", "benchmark", "_stage", str(stage_dir)]


# Set by a launcher for its ranks. A stage must never inherit them from the process that runs the plan (e.g. a
# notebook or test that trained in-process): every stage would then rendezvous at the same address.
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _stage_env(threads: int, gpu_group: list[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    env[PARENT_VAR] = str(os.getpid())  # the stage (or its guard) exits if this process is gone: no orphans
    if gpu_group:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_group)
    return env


def _tail(path: Path, n: int = 15) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def merge_results(plan: Plan, run_dir: Path) -> Path:
    """Merge the records of every finished evaluate stage of `plan` into RUN/results.jsonl (`results.merge`: a
    stage's records replace its own earlier ones, every other record is kept)."""
    finished = {}
    for s in plan.by_kind("evaluate"):
        d = run_dir / "stages" / s.dirname
        if (d / DONE_FILE).exists() and (d / "records.jsonl").exists():
            finished[s.id] = d / "records.jsonl"
    return results.merge(run_dir / "results.jsonl", finished)


def _reusable(plan: Plan, run_dir: Path, status: dict[str, str], redo: set[str], progress: bool) -> None:
    """Verify every finished stage the plan reuses; move damaged stages and those in `redo` aside (RUN/attic) so
    that they run again. Updates `status` in place."""
    done = [sid for sid, st in status.items() if st == "done"]
    for sid in tqdm(done, desc="verifying finished stages", disable=not progress or not done, leave=False):
        stage = plan.stages[sid]
        if sid in redo:
            where = move_aside(run_dir, stage, "redo")
            tqdm.write(f"redo {stage.dirname}: moved to {where}")
            status[sid] = "run"
            continue
        problems = verify_stage(run_dir / "stages" / stage.dirname)
        if problems:
            where = move_aside(run_dir, stage, "damaged")
            tqdm.write(f"damaged {stage.dirname}: {'; '.join(problems)}; moved to {where} and run again")
            status[sid] = "run"
    if redo:
        _move_stale_dependents(run_dir, redo)
    for sid in redo - set(done):  # interrupted or failed stages asked to start over
        d = run_dir / "stages" / plan.stages[sid].dirname
        if d.exists() and status[sid] != "sourced":
            where = move_aside(run_dir, plan.stages[sid], "redo")
            tqdm.write(f"redo {plan.stages[sid].dirname}: moved to {where}")
            status[sid] = "run"


def _move_stale_dependents(run_dir: Path, redone: set[str]) -> None:
    """Stage directories of this run outside the plan (other tables' stages) built on a redone stage: their ids do
    not change, so a later run would reuse them though their inputs are new. Moved to the attic too, transitively."""
    specs = {}
    for f in (run_dir / "stages").glob("*/stage.json"):
        with contextlib.suppress(OSError, ValueError):
            specs[f.parent] = json.loads(f.read_text())
    stale, changed = set(redone), True
    while changed:
        changed = False
        for d, spec in list(specs.items()):
            if spec.get("id") not in stale and stale & set((spec.get("input_ids") or {}).values()):
                stale.add(spec["id"])
                dst = run_dir / "attic" / f"{d.name}.redo-{time.strftime('%Y%m%d-%H%M%S')}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                if d.exists() and not dst.exists():
                    os.replace(d, dst)
                    tqdm.write(f"redo {d.name} (built on a redone stage): moved to {dst}")
                del specs[d]
                changed = True


def resolve_redo(plan: Plan, names: list[str]) -> set[str]:
    """Stage ids to redo for `--redo NAME`: NAME is a stage directory name, its readable name, its id, or an entry
    key (the stage that trains the entry's final model). Every stage of the plan downstream of it is redone too."""
    out: set[str] = set()
    for name in names:
        hits = [s.id for s in plan.stages.values() if name in (s.dirname, s.name, s.id)]
        if not hits and name in plan.entries:
            model = plan.stages[plan.entries[name]].inputs["model"]
            hits = [model]
        if not hits:
            raise RunError(
                f"--redo {name!r}: no such stage or entry in this plan; give a stage directory name from "
                "`python -m benchmark plan ...` (e.g. distill-gpt2-1.5B_760M) or an entry key of the plan"
            )
        for sid in hits:
            if plan.stages[sid].source:
                raise RunError(f"--redo {name!r}: {plan.stages[sid].dirname} is a public checkpoint, nothing to redo")
            out |= {sid} | plan.dependents(sid)
    return out


def run_plan(
    plan: Plan,
    run_dir: Path,
    *,
    jobs: int | None = None,
    prune_checkpoints: bool = False,
    progress: bool = True,
    redo: set[str] = frozenset(),
    executor=None,
    hostfile: Path | None = None,
) -> dict[str, str]:
    """Run every stage not yet done; returns stage id -> final status. Raises RunError listing failed stages
    (with their logs and what to do) after every runnable stage has finished; finished stages are kept.

    Finished stages are verified against their DONE.json manifests first: a damaged one is moved to RUN/attic and
    run again, as are the stages in `redo` (see `resolve_redo`). `executor` (cluster.py) runs stages as jobs;
    `hostfile` (local stages, cluster.read_hostfile) runs trained stages across its hosts, one stage at a time."""
    run_dir = Path(run_dir)
    gpus = 0 if executor else _gpus()  # a job gets its GPUs from its allocation
    cores = os.cpu_count() or 1
    jobs = jobs or (len(plan.stages) if executor else 1 if gpus or hostfile else cores)
    if hostfile and jobs > 1:  # every trained stage takes every GPU of the hostfile
        raise RunError(f"--hostfile runs each trained stage on every GPU {hostfile} lists: use --jobs 1")
    free_groups = _gpu_groups(gpus, jobs) if gpus else [[] for _ in range(jobs)]
    priority = _critical_path(plan)
    failed: dict[str, str] = {}
    with RunLock(run_dir):
        status = {sid: stage_status(s, run_dir) for sid, s in plan.stages.items()}
        _reusable(plan, run_dir, status, set(redo), progress)
        todo = [sid for sid, st in status.items() if st in ("run", "resume")]
        bar = tqdm(total=len(todo), desc=f"stages ({plan.scale})", disable=not progress, dynamic_ncols=True)
        running: dict[Future, tuple[str, list[str]]] = {}  # -> (stage id, its GPU group)
        threads = max(1, cores // jobs)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            while todo or running:
                blocked = {
                    sid
                    for sid in todo
                    if any(status[d] in ("failed", "blocked") or d in failed for d in plan.stages[sid].inputs.values())
                }
                for sid in blocked:
                    todo.remove(sid)
                    status[sid] = "blocked"
                    bar.update(1)
                ready = [
                    sid
                    for sid in todo
                    if all(status[d] in ("done", "sourced") for d in plan.stages[sid].inputs.values())
                ]
                ready.sort(key=lambda sid: -priority[sid])  # longest remaining chain first
                for sid in ready[: jobs - len(running)]:
                    todo.remove(sid)
                    stage = plan.stages[sid]
                    holder = (executor.holder if executor else stage_holder)(run_dir / "stages" / stage.dirname)
                    if holder:  # e.g. a stage left running by a run killed on a system without parent-death signals
                        status[sid] = "failed"
                        failed[sid] = (
                            f"stage {stage.dirname} is still being run by {holder} (not by this run): wait for it "
                            "to finish or stop that process, then rerun"
                        )
                        bar.update(1)
                        continue
                    stage_dir = _write_spec(stage, plan, run_dir)
                    status[sid] = "running"
                    group = free_groups.pop()
                    run = executor.run_stage if executor else partial(run_stage, hostfile=hostfile)
                    running[pool.submit(run, stage, stage_dir, group, threads)] = (sid, group)
                if not running:
                    continue
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    sid, group = running.pop(fut)
                    free_groups.append(group)
                    stage = plan.stages[sid]
                    err = fut.result()
                    if err:
                        status[sid] = "failed"
                        failed[sid] = err
                        bar.write(f"FAILED {stage.dirname}\n{err}")
                    else:
                        status[sid] = "done"
                        if stage.kind == "evaluate":
                            merge_results(plan, run_dir)
                        if prune_checkpoints:
                            shutil.rmtree(run_dir / "stages" / stage.dirname / "checkpoints", ignore_errors=True)
                    bar.set_postfix_str(stage.name, refresh=False)
                    bar.update(1)
        bar.close()
        merge_results(plan, run_dir)
    if failed:
        raise RunError(
            f"{len(failed)} stage(s) failed; every other finished stage is kept:\n" + "\n\n".join(failed.values())
        )
    return status


def _write_spec(stage: Stage, plan: Plan, run_dir: Path) -> Path:
    try:
        return write_stage_spec(stage, plan, run_dir)
    except OSError as exc:
        raise RunError(os_error_sentence(exc, run_dir)) from None


def os_error_sentence(exc: OSError, where: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return (
            f"no space left on the device that holds {where}: free some space (`--prune-checkpoints` drops the "
            f"resumable checkpoints of finished stages; {where}/attic holds moved-aside stages) and rerun: finished "
            "stages are kept"
        )
    if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return f"cannot write to {where} ({exc.strerror}): choose a writable --out directory"
    return f"cannot write to {where}: {exc}"


# Relative cost of a stage kind for scheduling (an SFT teacher trains the largest model of its family).
_WEIGHT = {"data": 1.0, "sft": 2.0, "distill": 1.0, "evaluate": 1.0}


def _critical_path(plan: Plan) -> dict[str, float]:
    """Each stage's weight plus the heaviest chain of stages that depend on it: running the stages with the
    longest remaining chain first keeps every worker busy to the end (e.g. both families' teachers start first)."""
    children: dict[str, list[str]] = {sid: [] for sid in plan.stages}
    for s in plan.stages.values():
        for dep in s.inputs.values():
            children[dep].append(s.id)
    height: dict[str, float] = {}
    for sid in reversed(list(plan.stages)):  # reverse topological order
        s = plan.stages[sid]
        own = _WEIGHT[s.kind] * (2.0 if s.kind == "sft" and s.config.get("role") == "teacher" else 1.0)
        height[sid] = own + max((height[c] for c in children[sid]), default=0.0)
    return height


def run_stage(
    stage: Stage, stage_dir: Path, gpu_group: list[str], threads: int, hostfile: Path | None = None
) -> str | None:
    """Run one stage in a subprocess; returns None on success or an actionable error message."""
    log = stage_dir / "log.txt"
    (stage_dir / FAILED_FILE).unlink(missing_ok=True)
    cmd, env = _command(stage, stage_dir, gpu_group, hostfile), _stage_env(threads, gpu_group)
    with log.open("a") as fh:
        gpus = f" (CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']})" if gpu_group else ""
        fh.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}{gpus}\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode == 0 and (stage_dir / DONE_FILE).exists():
        return None
    what, advice = _failure(stage_dir, proc.returncode, log)
    return (
        f"stage {stage.dirname} ({stage.kind}) failed: {what}\nlog: {log}\n"
        f"--- last lines ---\n{_tail(log)}\n--- what to do: {advice}"
    )


RESUME_ADVICE = (
    "rerun the same command: finished stages are not recomputed and this stage resumes from its last checkpoint"
)


def _failure(stage_dir: Path, returncode: int, log: Path) -> tuple[str, str]:
    """(what happened, what to do) for a failed stage: from the FAILED.json the stage wrote when it raised, else from
    how its process ended."""
    try:
        info = json.loads((stage_dir / FAILED_FILE).read_text())
        return f"{info['error']}: {info['message']}", info["advice"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if returncode < 0:
        sig = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        hint = " (the kernel's out-of-memory killer sends SIGKILL: see `dmesg`)" if sig == "SIGKILL" else ""
        return f"killed by {sig}{hint}", RESUME_ADVICE
    if "out of memory" in _tail(log, 50).lower():
        return f"exited with code {returncode} (out of memory)", OOM_ADVICE
    return f"exited with code {returncode}", RESUME_ADVICE


OOM_ADVICE = (
    "out of memory: lower the micro-batch (--set minillm='{\"micro_batch_size\": N}' keeps the global batch and the "
    "results), use more GPUs or ZeRO-3 (--set minillm='{\"zero_stage\": 3}'); then rerun"
)


def failure_advice(exc: BaseException, stage_dir: Path) -> str:
    """What to do about an exception raised inside a stage, by cause (recorded in FAILED.json)."""
    from benchmark.config import ConfigError

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ConfigError):
        return (
            "the stage's configuration is invalid: change the --set value the message names (or the scale in "
            "benchmark/registry.py) and rerun; rerunning unchanged fails the same way"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return os_error_sentence(exc, stage_dir)
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return OOM_ADVICE
    if any(m in text for m in _DAMAGED) or (isinstance(exc, OSError) and exc.errno == errno.EINVAL):
        own = stage_dir.name
        others = sorted({m for m in _STAGE_PATH.findall(traceback.format_exc() + text) if m != own})
        where = (
            f"it comes from stage(s) {', '.join(others)}: redo them with `python -m benchmark run ... --redo "
            f"{others[0].rsplit('-', 1)[0]}`"
            if others
            else "if it is one of this stage's own checkpoints, delete that checkpoint directory (the one before is "
            "used) or rerun with `--redo " + own.rsplit("-", 1)[0] + "` to start the stage over"
        )
        return f"a file this stage reads is damaged ({text[:300]}); {where}"
    if isinstance(exc, BenchmarkError):
        return "fix what the message says, then rerun the same command; rerunning without that fix fails the same way"
    if isinstance(exc, KeyboardInterrupt):
        return RESUME_ADVICE
    return (
        "an unexpected error (its traceback is in the log): if the cause was passing (a killed process, a full disk) "
        + RESUME_ADVICE
        + "; otherwise report it with the log"
    )


# What damaged files look like when they are read (safetensors, torch.load, json, transformers' config reader).
_DAMAGED = (
    "SafetensorError",
    "UnpicklingError",
    "JSONDecodeError",
    "EOFError",
    "invalid header",
    "PytorchStreamReader",
    "not a valid JSON",
    "incomplete metadata",
)
_STAGE_PATH = re.compile(r"/stages/([A-Za-z0-9_.>-]+-[0-9a-f]{12})(?:/|\b)")


# ----------------------------------------------------------------------------------------------------------------
# The stage executor (runs inside the stage's process)
# ----------------------------------------------------------------------------------------------------------------


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def execute_stage(stage_dir: Path) -> None:
    """Run the stage described by STAGE_DIR/stage.json; DONE.json (with the manifest of its outputs) is written last.

    The stage holds STAGE_DIR/.lock while it runs (a second process on the same stage stops at once), and when it
    raises, FAILED.json records the error and what to do about it (the runner reports that)."""
    stage_dir = Path(stage_dir)
    lock = _try_lock(stage_dir / ".lock") if _is_rank0() else None
    if isinstance(lock, str):
        raise RunError(f"stage {stage_dir} is already being run by {lock}: wait for it or stop that process")
    try:
        _execute(stage_dir)
    except BaseException as exc:
        if _is_rank0() and not isinstance(exc, SystemExit):
            info = {"error": type(exc).__name__, "message": str(exc)[:4000], "advice": failure_advice(exc, stage_dir)}
            try:
                _write_json_atomic(stage_dir / FAILED_FILE, info)
            except OSError:  # e.g. the disk is full: the runner falls back to the exit status and the log
                pass
        raise
    finally:
        if lock is not None:
            lock.close()


def _execute(stage_dir: Path) -> None:
    spec = json.loads((stage_dir / "stage.json").read_text())
    kind, inputs, cfg = spec["kind"], spec["inputs"], spec["config"]
    # stage.json holds the stage's whole config (config.to_dict: a field it leaves out holds its class default)
    settings = for_scale(KINDS[CONFIG_KIND[kind]], cfg[CONFIG_KIND[kind]]) if kind in CONFIG_KIND else None
    t0 = time.time()
    if kind == "data":
        _execute_data(spec, stage_dir)
    elif kind == "sft":
        from benchmark.sft import train_sft

        model_spec = scales.ModelSpec(**cfg["model"])
        train_sft(model_spec, inputs["data"], stage_dir, settings, progress=False)
    elif kind == "distill":
        from benchmark.minillm import train_minillm

        train_minillm(
            inputs["student"],
            inputs["teacher"],
            inputs["data"],
            stage_dir,
            settings,
            progress=False,
        )
    elif kind == "evaluate":
        from benchmark.data import load_prepared
        from benchmark.evaluate import evaluate_model

        tmp, samples_tmp = stage_dir / ".records.jsonl.tmp", stage_dir / ".samples.jsonl.tmp"
        tmp.unlink(missing_ok=True)
        samples_tmp.unlink(missing_ok=True)
        records = evaluate_model(
            inputs["model"],
            load_prepared(inputs["data"]),
            settings,
            scorer=inputs["scorer"],
            text_scorer=cfg.get("text_scorer"),
            entry=spec["entry"],
            scale=spec["scale"],
            stage=spec["id"],
            samples_path=samples_tmp,
            progress=False,
        )
        # every record names the `--set` overrides that produced it ({} for the scale's defaults)
        results.append(tmp, [r | {"overrides": spec.get("overrides") or {}} for r in records])
        # the per-example samples (results.read_samples) before the records, both before DONE.json's manifest
        os.replace(samples_tmp, stage_dir / results.SAMPLES_NAME)
        os.replace(tmp, stage_dir / "records.jsonl")
    else:  # pragma: no cover - the planner makes only these kinds
        raise RunError(f"unknown stage kind {kind!r} in {stage_dir}/stage.json")
    import torch.distributed as tdist

    if not tdist.is_initialized() or tdist.get_rank() == 0:
        done = {
            "id": spec["id"],
            "kind": kind,
            "wall_time_s": time.time() - t0,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": output_files(stage_dir),
        }
        _write_json_atomic(stage_dir / DONE_FILE, done)


def _execute_data(spec: dict, stage_dir: Path) -> None:
    cfg = spec["config"]
    out = stage_dir / "data"
    if cfg["data"] == "synthetic":
        from benchmark.synthetic import prepare_synthetic

        prepare_synthetic(
            cfg["scale"],
            spec["family"],
            out,
            seed=cfg["seed"],
            pt_seq_len=cfg["pt_seq_length"],
            max_prompt_length=cfg["max_prompt_length"],
        )
    else:
        from benchmark.data import prepare_dolly, prepare_pt

        # the family's SFT teacher carries the family tokenizer (GPT-2 and OPT ids differ)
        tokenizer = registry.FAMILIES[spec["family"]].teacher_sft
        prepare_dolly("hub", spec["family"], tokenizer, out, max_prompt_length=cfg["max_prompt_length"])
        prepare_pt("hub", spec["family"], out, tokenizer=tokenizer, seq_len=cfg["pt_seq_length"])


# ----------------------------------------------------------------------------------------------------------------
# Before and after a run: what `run` checks first and prints last
# ----------------------------------------------------------------------------------------------------------------


def preflight(scale_name: str) -> None:
    """Paper scale needs GPUs and the Hub: say so before any work (not in a dress rehearsal, `rehearsal.active()`)."""
    if scale_name != "paper" or rehearsal.active():
        return
    missing = []
    if not _gpus():
        missing.append("no CUDA GPU is visible (MiniLLM hops at paper scale take tens of GPU-hours each)")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        missing.append("HF_HUB_OFFLINE=1: the MiniLLM checkpoints and dolly-15k come from the Hugging Face Hub")
    if missing:
        raise RunError(
            "paper scale cannot run here: " + "; ".join(missing) + ". Run a smaller scale instead: "
            "`nox -s smoke` (whole paper on a CPU) or add `-- --scale small` to a reproduce session; "
            "`python -m benchmark plan ... --scale paper` shows what paper scale would do."
        )


def entry_summary(plan: Plan, run_dir: Path) -> str:
    """The run's entries with their headline metrics, from the records of the plan's own evaluate stages."""
    rows = {}
    for key, sid in plan.entries.items():
        f = run_dir / "stages" / plan.stages[sid].dirname / "records.jsonl"
        recs = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()] if f.exists() else []
        rows[key] = {r["metric"]: r for r in recs}

    def cell(recs: dict, metric: str) -> str:
        r = recs.get(metric)
        if r is None or r.get("mean") is None:
            return "-"
        return f"{r['mean']:.2f} ± {r['std']:.2f}" if r.get("seeds") and len(r["seeds"]) > 1 else f"{r['mean']:.2f}"

    lines = [f"{'entry':<28} {'ROUGE-L':>14} {'PPL (samples)':>18} {'PPL (gold)':>12}"]
    for key, recs in rows.items():
        lines.append(
            f"{key:<28} {cell(recs, 'rouge_l'):>14} {cell(recs, 'perplexity_samples'):>18} "
            f"{cell(recs, 'perplexity_gold'):>12}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Status of a run directory
# ----------------------------------------------------------------------------------------------------------------


def stage_state(stage_dir: Path, *, verify: bool = True) -> str:
    """done / running / failed / damaged / interrupted (resumes from a checkpoint) / pending."""
    if stage_holder(stage_dir):
        return "running"
    if (stage_dir / DONE_FILE).exists():
        return "damaged" if verify and verify_stage(stage_dir) else "done"
    if (stage_dir / FAILED_FILE).exists():
        return "failed"
    if (stage_dir / "checkpoints" / "latest").exists():
        return "interrupted"
    return "pending"


def status_table(run_dir: Path, plan: Plan | None = None, job_state=None) -> str:
    """Every stage of `plan` (or, without a plan, every stage directory of the run): state, log, job (`job_state`)."""
    stages_dir = run_dir / "stages"
    if plan is not None:
        rows = [(s.kind, s.dirname, "sourced" if s.source else None) for s in plan.stages.values()]
    else:
        dirs = sorted(p for p in stages_dir.iterdir() if p.is_dir()) if stages_dir.exists() else []
        rows = [(d.name.split("-", 1)[0], d.name, None) for d in dirs]
    lines = [f"{'state':<12} {'kind':<9} {'stage':<48} log / detail"]
    counts: dict[str, int] = {}
    for kind, dirname, fixed in rows:
        d = stages_dir / dirname
        state = fixed or stage_state(d)
        counts[state] = counts.get(state, 0) + 1
        detail = str(d / "log.txt") if (d / "log.txt").exists() else ""
        if state == "running":
            detail = f"{stage_holder(d)}; {detail}"
        elif state == "failed":
            try:
                info = json.loads((d / FAILED_FILE).read_text())
                detail = f"{info['error']}: {info['message'][:100]}; {detail}"
            except (OSError, ValueError, KeyError):
                pass
        elif state == "damaged":
            detail = "; ".join(verify_stage(d)) + f"; rerun `run` to redo it (moved to {run_dir}/attic)"
        detail = f"{job_state(d)}; {detail}" if job_state and (d / "job.json").exists() else detail
        lines.append(f"{state:<12} {kind:<9} {dirname:<48} {detail}")
    lines.append("totals: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Stage processes die with the runner
# ----------------------------------------------------------------------------------------------------------------

PARENT_VAR = "MSKD_RUNNER_PID"


def die_with_parent() -> None:
    """Ask the kernel to send SIGTERM to this process when its parent dies (Linux), and exit now if the parent that
    started it is already gone: a killed runner leaves no stage running behind it."""
    expected = os.environ.get(PARENT_VAR)
    launched = "LOCAL_RANK" in os.environ  # a rank under a launcher: its parent is the launcher, not the runner
    if not expected and not launched:
        return  # started by hand (nohup, a job script): its lifetime is the caller's business
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if expected and not launched and os.getppid() != int(expected):
        sys.exit(f"the run (pid {expected}) that started this stage is gone; not starting")
