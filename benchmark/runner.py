"""Execute a plan: each stage once, resumable, concurrent where possible, one lock per run directory.

    python -m benchmark run table1 --scale small --out runs/small [--jobs 2] [--prune-checkpoints]
    python -m benchmark reproduce all --scale small --out runs/small   # run, then regenerate paper_tables/small

Every stage runs in its own process (`python -m benchmark _stage STAGE_DIR`; under the `deepspeed` launcher when
GPUs exist) with its log at `STAGE_DIR/log.txt`. A stage is finished when `DONE.json` exists, written atomically
after its outputs; an interrupted stage has no DONE.json and resumes from its last checkpoint. Evaluation records
live in each evaluate stage's `records.jsonl` and are merged into `RUN/results.jsonl` (atomically) after every
evaluation, so the results store never holds a half-finished stage.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from tqdm.auto import tqdm

from benchmark import BenchmarkError, registry
from benchmark.plan import DONE_FILE, Plan, Stage, build_plan, describe, stage_status, write_stage_spec


class RunError(BenchmarkError):
    pass


class RunLock:
    """An exclusive lock on a run directory: two runs on one directory would corrupt each other's stages."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.fh = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = self.path.open("a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            raise RunError(
                f"{self.path.parent} is in use by {holder}; wait for it to finish, or use another --out "
                "directory (finished stages can be shared by copying their stage directories)"
            ) from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


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


def _command(stage: Stage, stage_dir: Path, gpu_group: list[str]) -> list[str]:
    if gpu_group and stage.kind in ("sft", "distill"):
        # The launcher takes its GPUs from CUDA_VISIBLE_DEVICES (see _stage_env); a port of its own per stage, so
        # stages running side by side on one node do not meet at the launcher's default port.
        return ["deepspeed", "--master_port", str(free_port()), "--module", "benchmark", "_stage", str(stage_dir)]
    return [sys.executable, "-m", "benchmark", "_stage", str(stage_dir)]


# Set by a launcher for its ranks. A stage must never inherit them from the process that runs the plan (e.g. a
# notebook or test that trained in-process): every stage would then rendezvous at the same address.
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _stage_env(threads: int, gpu_group: list[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    if gpu_group:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_group)
    return env


def _tail(path: Path, n: int = 15) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def merge_results(plan: Plan, run_dir: Path) -> Path:
    """RUN/results.jsonl = the records of every finished evaluate stage (rewritten atomically)."""
    lines = []
    for s in plan.by_kind("evaluate"):
        d = run_dir / "stages" / s.dirname
        if (d / DONE_FILE).exists():
            lines += [ln for ln in (d / "records.jsonl").read_text().splitlines() if ln.strip()]
    # Keep the records of entries outside this plan (e.g. Table 1 run after Table 2); an entry of this plan is
    # represented only by its current evaluate stage, never by a stage whose config has since changed.
    store = run_dir / "results.jsonl"
    mine = {s.entry for s in plan.by_kind("evaluate")}
    if store.exists():
        lines = [
            ln for ln in store.read_text().splitlines() if ln.strip() and json.loads(ln).get("entry") not in mine
        ] + lines
    tmp = store.with_name(".results.jsonl.tmp")
    tmp.write_text("".join(ln + "\n" for ln in lines))
    os.replace(tmp, store)
    return store


def run_plan(
    plan: Plan, run_dir: Path, *, jobs: int | None = None, prune_checkpoints: bool = False, progress: bool = True
) -> dict[str, str]:
    """Run every stage not yet done; returns stage id -> final status. Raises RunError listing failed stages
    (with their logs) after every runnable stage has finished; finished stages are kept."""
    run_dir = Path(run_dir)
    gpus = _gpus()
    cores = os.cpu_count() or 1
    jobs = jobs or (1 if gpus else cores)
    free_groups = _gpu_groups(gpus, jobs) if gpus else [[] for _ in range(jobs)]
    status = {sid: stage_status(s, run_dir) for sid, s in plan.stages.items()}
    priority = _critical_path(plan)
    failed: dict[str, str] = {}
    with RunLock(run_dir):
        todo = [sid for sid, st in status.items() if st in ("run", "resume")]
        bar = tqdm(total=len(todo), desc=f"stages ({plan.scale})", disable=not progress, dynamic_ncols=True)
        running: dict[Future, tuple[str, list[str]]] = {}  # -> (stage id, its GPU group)
        threads = max(1, cores // jobs)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            while todo or running:
                blocked = {
                    sid
                    for sid in todo
                    if any(status[d] == "failed" or d in failed for d in plan.stages[sid].inputs.values())
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
                    stage_dir = write_stage_spec(stage, plan, run_dir)
                    status[sid] = "running"
                    group = free_groups.pop()
                    running[pool.submit(_run_stage, stage, stage_dir, group, threads)] = (sid, group)
                if not running:
                    break
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
            f"{len(failed)} stage(s) failed; every other finished stage is kept and a rerun continues "
            "from here:\n" + "\n\n".join(failed.values())
        )
    return status


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


def _run_stage(stage: Stage, stage_dir: Path, gpu_group: list[str], threads: int) -> str | None:
    """Run one stage in a subprocess; returns None on success or an actionable error message."""
    log = stage_dir / "log.txt"
    cmd, env = _command(stage, stage_dir, gpu_group), _stage_env(threads, gpu_group)
    with log.open("a") as fh:
        gpus = f" (CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']})" if gpu_group else ""
        fh.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}{gpus}\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode == 0 and (stage_dir / DONE_FILE).exists():
        return None
    hint = (
        "out of memory: lower the micro-batch (--set '{\"batch_size\": ...}' keeps the global batch; use more "
        "GPUs or ZeRO-3)"
        if "out of memory" in _tail(log, 50).lower()
        else "fix the cause shown above and rerun the same command: finished stages are not recomputed and this "
        "stage resumes from its last checkpoint"
    )
    return (
        f"stage {stage.dirname} ({stage.kind}) exited with code {proc.returncode}; log: {log}\n"
        f"--- last lines ---\n{_tail(log)}\n--- what to do: {hint}"
    )


# ----------------------------------------------------------------------------------------------------------------
# The stage executor (runs inside the stage's process)
# ----------------------------------------------------------------------------------------------------------------


def execute_stage(stage_dir: Path) -> None:
    spec = json.loads((stage_dir / "stage.json").read_text())
    kind, inputs, cfg = spec["kind"], spec["inputs"], spec["config"]
    t0 = time.time()
    if kind == "data":
        _execute_data(spec, stage_dir)
    elif kind == "sft":
        from benchmark.config import SFTConfig
        from benchmark.train import train_sft

        model_spec = registry.ModelSpec(**cfg["model"])
        train_sft(model_spec, inputs["data"], stage_dir, _config(SFTConfig, cfg["sft"]), progress=False)
    elif kind == "distill":
        from benchmark.config import MiniLLMConfig
        from benchmark.train import train_minillm

        train_minillm(
            inputs["student"],
            inputs["teacher"],
            inputs["data"],
            stage_dir,
            _config(MiniLLMConfig, cfg["minillm"]),
            progress=False,
        )
    elif kind == "evaluate":
        from benchmark.config import EvalConfig
        from benchmark.data import load_prepared
        from benchmark.evaluate import evaluate_model

        tmp = stage_dir / ".records.jsonl.tmp"
        tmp.unlink(missing_ok=True)
        evaluate_model(
            inputs["model"],
            load_prepared(inputs["data"]),
            _config(EvalConfig, cfg["evaluation"]),
            scorer=inputs["scorer"],
            entry=spec["entry"],
            scale=spec["scale"],
            stage=spec["id"],
            results_path=tmp,
            progress=False,
        )
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
        }
        tmp = stage_dir / f".{DONE_FILE}.tmp"
        tmp.write_text(json.dumps(done, indent=2))
        os.replace(tmp, stage_dir / DONE_FILE)


def _config(cls, values: dict):
    import dataclasses

    from benchmark.config import GenerationSettings

    kw = dict(values)
    for f in dataclasses.fields(cls):
        if f.name == "generation" and isinstance(kw.get(f.name), dict):
            kw[f.name] = GenerationSettings(**kw[f.name])
        elif isinstance(kw.get(f.name), list):
            kw[f.name] = tuple(kw[f.name])
    return cls(**kw)


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
# CLI
# ----------------------------------------------------------------------------------------------------------------


def _preflight(scale_name: str) -> None:
    """Paper scale needs GPUs and the Hugging Face Hub: say so before any work."""
    if scale_name != "paper":
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


OVERRIDE_KINDS = ("sft", "minillm", "evaluation")


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """`--set KIND=JSON` options -> {kind: {field: value}}; later options update earlier ones.

    KIND is a stage config (sft -> config.SFTConfig, minillm -> MiniLLMConfig, evaluation -> EvalConfig), JSON an
    object of its fields, applied on top of the scale's values; changed fields change the stage hashes, so only the
    stages that depend on them rerun. Example (1024-rollout hops at small scale, half the default budget; README
    "Small scale" gives the previous 256-rollout one):
        --set minillm='{"rollouts_per_phase": 512, "batch_size": 128}'
    """
    out: dict[str, dict] = {}
    for item in items:
        kind, sep, text = item.partition("=")
        if not sep or kind not in OVERRIDE_KINDS:
            raise RunError(f"--set {item!r}: expected KIND=JSON with KIND one of {', '.join(OVERRIDE_KINDS)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise RunError(
                f"--set {kind}=...: not valid JSON ({e}); quote it, e.g. --set {kind}='{{\"lr\": 1e-4}}'"
            ) from None
        if not isinstance(value, dict):
            raise RunError(f"--set {kind}=...: expected a JSON object of config fields, got {type(value).__name__}")
        out.setdefault(kind, {}).update(value)
    return out


def _plan_from_args(args) -> Plan:
    overrides = parse_overrides(getattr(args, "overrides", None) or [])
    return build_plan(args.targets, args.scale, retrain_one_step=args.retrain_one_step, overrides=overrides)


def cmd_plan(args) -> int:
    print(describe(_plan_from_args(args), Path(args.out or f"runs/{args.scale}")))
    return 0


def cmd_run(args) -> int:
    _preflight(args.scale)
    plan = _plan_from_args(args)
    run_dir = Path(args.out or f"runs/{args.scale}")
    print(describe(plan, run_dir))
    run_plan(plan, run_dir, jobs=args.jobs, prune_checkpoints=args.prune_checkpoints)
    print(f"results: {run_dir / 'results.jsonl'}")
    return 0


def stage_report(plan: Plan, run_dir: Path) -> str:
    """Markdown: each SFT model's validation perplexity and greedy ROUGE-L (the sizes of a family should be ordered,
    teacher best) and each hop's reverse KL to its teacher before -> after (it should fall): MiniLLM's sequence-level
    objective on student samples of the validation prompts, and teacher-forced on the gold responses."""
    lines = [
        "## SFT models (validation split; selected checkpoint)",
        "",
        "| family | size | role | parameters | val perplexity | greedy ROUGE-L |",
        "|---|---|---|---|---|---|",
    ]

    def summaries(kind: str):  # (stage, summary.json) of the kind's stages trained in this run
        for s in plan.by_kind(kind):
            f = run_dir / "stages" / s.dirname / "summary.json"
            if not s.source and f.exists():
                yield s, json.loads(f.read_text())

    for s, summ in summaries("sft"):
        sel = summ.get("selected", {})
        lines.append(
            f"| {s.family} | {s.config['size']} | {s.config['role']} | {sel.get('parameters', 0):,} | "
            f"{sel.get('val_ppl', float('nan')):.3f} | {sel.get('val_rouge_l_greedy', float('nan')):.2f} |"
        )
    lines += [
        "",
        "## MiniLLM hops (reverse KL of the student to its teacher, before -> after the hop)",
        "",
        "Sequence: MiniLLM's objective KL(q||p) over responses, per response: on every validation prompt, one student",
        "sample per seed, each scored by sum_t KL(q||p) at its sampled contexts (exact over the vocabulary); mean over",
        "prompts and seeds, with the change per seed. Held-out: KL(q||p) per token at every position of the",
        "validation split's gold responses (teacher-forced, deterministic, paired).",
        "",
        "| hop | sequence before | sequence after | change | change per seed | length before -> after "
        "| held-out before | held-out after | change | selected step | val ROUGE-L |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    nan = {"per_response": float("nan"), "mean_length": float("nan"), "per_seed": []}
    for s, summ in summaries("distill"):
        best = summ["best"]
        h, q = summ.get("heldout_rev_kl") or {}, summ.get("sequence_rev_kl") or {}
        a, b = h.get("init", float("nan")), h.get("selected", float("nan"))
        qa, qb = q.get("init", nan), q.get("selected", nan)
        seeds = ", ".join(f"{100 * (y - x) / x:+.1f} %" for x, y in zip(qa["per_seed"], qb["per_seed"]))
        lines.append(
            f"| {'>'.join(s.config['path'])} ({s.family}) | {qa['per_response']:.3f} | {qb['per_response']:.3f} | "
            f"{100 * (qb['per_response'] - qa['per_response']) / qa['per_response']:+.1f} % | {seeds} | "
            f"{qa['mean_length']:.2f} -> {qb['mean_length']:.2f} | {a:.4f} | {b:.4f} | {100 * (b - a) / a:+.1f} % | "
            f"{best['step']} | {best['val_rouge_l']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def cmd_reproduce(args) -> int:
    cmd_run(args)
    from benchmark.notebooks import run_notebooks

    run_dir = Path(args.out or f"runs/{args.scale}")
    artefacts = [a for a in registry.ARTEFACTS if a in args.targets] or list(registry.ARTEFACTS)
    out = run_notebooks(run_dir, args.scale, artefacts=tuple(artefacts))
    (out / "stages.md").write_text(
        f"# Stages of {run_dir} (scale {args.scale})\n\n" + stage_report(_plan_from_args(args), run_dir)
    )
    print(f"tables and figure: {out}")
    return 0


def cmd_stage(args) -> int:
    execute_stage(Path(args.stage_dir))
    return 0


def add_cli(sub) -> None:
    for verb, func, help_ in (
        ("plan", cmd_plan, "print the stage DAG for tables/entries"),
        ("run", cmd_run, "run the stages for tables/entries"),
        ("reproduce", cmd_reproduce, "run, then regenerate the tables/figure"),
    ):
        p = sub.add_parser(verb, help=help_, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("targets", nargs="+", help="table1..table4, figure2, all, a family, or entry keys")
        p.add_argument("--scale", default="paper", choices=list(registry.SCALES))
        p.add_argument("--out", help="run directory (default runs/<scale>)")
        p.add_argument(
            "--retrain-one-step",
            action="store_true",
            help="paper scale: train the one-step hops here instead of using MiniLLM's checkpoints",
        )
        p.add_argument(
            "--jobs",
            type=int,
            help="concurrent stages (default: 1 per CPU core; on GPUs 1, and N splits the GPUs into N groups)",
        )
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            metavar="KIND=JSON",
            help="override stage configs on top of the scale's: KIND is sft, minillm or evaluation, JSON an object of "
            "its fields (repeatable); only the stages that depend on a changed field rerun",
        )
        p.add_argument(
            "--prune-checkpoints",
            action="store_true",
            help="delete each finished stage's resumable checkpoints (its selected model stays)",
        )
        p.set_defaults(func=func)
    p = sub.add_parser("_stage", help=argparse.SUPPRESS)
    p.add_argument("stage_dir")
    p.add_argument("--local_rank", type=int, default=0)
    p.set_defaults(func=cmd_stage)
