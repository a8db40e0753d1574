"""The DeepSpeed edge of training: distributed init, model loading, the frozen teacher, the engine, seeding,
atomic checkpoints, the selected model and the metrics log. The only module that imports DeepSpeed.

A stage directory OUT, as `benchmark.sft` and `benchmark.minillm` write it:

    OUT/checkpoints/step-NNNNNN   full resumable state (DeepSpeed's model, optimizer, scheduler; RNG; trainer.json)
                                  with MANIFEST.json (size, sha256 of every file); the newest CHECKPOINTS_KEPT kept
    OUT/model                     the selected checkpoint in Hugging Face format, tokenizer beside it, and
                                  selection.json (the step it was selected at, the manifest of model/'s files)
    OUT/metrics.jsonl             one line per optimizer step and per validation (and TensorBoard events)
    OUT/summary.json              written last: the stage is done

Every file is written to a temporary name and renamed, so a killed stage never leaves a half-written one; a
restarted stage verifies a checkpoint against its manifest before loading it.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmark import BenchmarkError
from benchmark.config import to_dict
from benchmark.data import file_manifest, manifest_problems


class TrainError(BenchmarkError):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Distributed setup
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: its rank, the number of ranks and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Single process without a launcher, or one rank of `deepspeed`/`torchrun`, or one task of a job spanning nodes
    (cluster.StageJob exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from the allocation: the same
    env:// rendezvous). CPU uses gloo."""
    lone = int(os.environ.get("WORLD_SIZE", "1")) == 1  # no launcher, or a launcher with one process
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0").items():
        os.environ.setdefault(k, v)
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # DeepSpeed JIT-compiles a shared-memory all-reduce op (~27 s) on every CPU init; gloo is enough for the
        # CPU runs this suite does (env-feasibility.md §3). importlib, not `import deepspeed.comm.torch`, which
        # would bind the real torch module.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    import deepspeed

    backend = "nccl" if cuda else "gloo"
    if lone and not torch.distributed.is_initialized():
        # A lone process rendezvouses with itself through an in-memory store: no TCP port, so concurrent stages
        # cannot collide on one, whatever MASTER_PORT they inherited.
        torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend=backend, verbose=False)  # adopts the group above; no-op when set up
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Dist(rank, world, device)


def all_reduce_sum(x: float, dist: Dist) -> float:
    """`x` summed over the ranks (in float64)."""
    if dist.world_size == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=dist.device)
    torch.distributed.all_reduce(t)
    return t.item()


def check_finite(loss: torch.Tensor, step: int, parts: dict, out: Path) -> None:
    """A clear error for a non-finite loss at optimizer step `step` (0-based) of the stage in `out`."""
    if not torch.isfinite(loss):
        raise TrainError(
            f"non-finite loss at step {step + 1} ({parts or 'lm loss'}) in {out}: lower the learning "
            "rate or use bf16/fp32 instead of fp16; the stage resumes from its last checkpoint"
        )


# ----------------------------------------------------------------------------------------------------------------
# Models: loading, the frozen teacher, the engine
# ----------------------------------------------------------------------------------------------------------------


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype a stage's `precision` means on `device`: fp16/bf16/fp32 on a GPU, float32 on a CPU."""
    if device.type == "cpu":
        return torch.float32  # fp16 matmuls are not a CPU thing; the tiny scales run fp32
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def disable_dropout(model: torch.nn.Module) -> None:
    """Every dropout probability of `model` set to 0 (ref minillm/model.py: no dropout during RL)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


MODEL_DIR_HINT = (
    "a model directory is written by `python -m benchmark train ... --out OUT` (OUT/model) or by a run's stage "
    "(RUN/stages/<stage>/model, see `python -m benchmark status --out RUN`); train it first or correct the path "
    "(a Hugging Face Hub id has the form org/name)"
)


def _looks_local(text: str) -> bool:
    """Whether `text` names a local path rather than a hub id ("name" or "org/name")."""
    if text.startswith(("/", ".", "~")) or (os.altsep and os.altsep in text):
        return True
    parts = text.split(os.sep)
    # org/name/more is never a hub id; org/name is a path when org/ exists here (runs/model, data/x)
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).expanduser().is_dir())


def model_path_problem(path_or_id) -> str | None:
    """Why `path_or_id` cannot be loaded as a local model directory, when it names one (None: a model directory, or
    a hub id left to `from_pretrained`). Training and evaluation both say it this way, not as from_pretrained's
    "Repo id must be ..."."""
    text = str(path_or_id)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return f"model directory {text} holds no config.json, so it is not a saved model; {MODEL_DIR_HINT}"
        return None
    if path.exists():
        return f"model path {text} is a file, not a model directory; {MODEL_DIR_HINT}"
    if _looks_local(text):
        return f"model directory {text} does not exist; {MODEL_DIR_HINT}"
    return None


def check_model_path(path: str) -> None:
    """A missing or empty local model directory as a TrainError, before anything is created."""
    problem = model_path_problem(path)
    if problem:
        raise TrainError(f"cannot load model: {problem}")


def load_model(path: str, device: torch.device, dtype: torch.dtype, *, dropout: bool):
    """A saved model (directory or hub id) on `device` in `dtype`, in train mode with dropout, else in eval mode
    with every dropout off."""
    from transformers import AutoModelForCausalLM

    check_model_path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(Path(path).expanduser()), dtype=dtype)
    except OSError as exc:
        raise TrainError(
            f"cannot load model {path!r}: {exc}. Give a directory written by a previous stage or a "
            "hub id (paper scale needs hub access or a local copy)"
        ) from None
    if not dropout:
        disable_dropout(model)  # ref minillm/model.py: the policy is put in eval(), no dropout during RL
    model.train(dropout)
    return model.to(device)


def frozen_teacher(path: str, dist: Dist, precision: str, zero_stage: int):
    """The teacher: eval mode, no gradients, half precision on GPU; sharded (ZeRO-3 inference engine) when the
    student runs ZeRO-3, so it is never replicated on every GPU at that stage."""
    teacher = load_model(path, dist.device, compute_dtype(precision, dist.device), dropout=False)
    teacher.requires_grad_(False)
    teacher.eval()
    if zero_stage == 3 and dist.world_size > 1:
        import deepspeed

        cfg = {
            "train_micro_batch_size_per_gpu": 1,
            "zero_optimization": {"stage": 3},
            "fp16": {"enabled": precision == "fp16"},
            "bf16": {"enabled": precision == "bf16"},
        }
        teacher = deepspeed.initialize(model=teacher, config=cfg)[0].module
        teacher.eval()
    return teacher


def parameter_count(model) -> int:
    """Parameter count, also of a ZeRO-3-partitioned model (whose parameters hold ds_numel, not their elements)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def build_engine(model, optimizer, scheduler, ds_config: dict):
    """The DeepSpeed engine training `model` with this optimizer and scheduler (`config.deepspeed_config`)."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine


# ----------------------------------------------------------------------------------------------------------------
# Seeds: derived from integers, so resuming needs no generator state
# ----------------------------------------------------------------------------------------------------------------


def seed_everything(seed: int, rank: int) -> None:
    """The global python, numpy and torch RNGs seeded with seed + rank (ref utils.py::set_random_seed)."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


def seeded_generator(*seed_parts: int) -> torch.Generator:
    """A CPU generator from a tuple of ints, for the data orders: the prompt order (seed, epoch), the PPO shuffling
    (seed_ppo, phase, epoch), the SFT order. Sampled tokens use `sampling.example_generators` instead, one
    generator per example; the two hashes stay apart because every trained weight depends on this one."""
    seed = 0
    for p in seed_parts:
        seed = (seed * 1_000_003 + int(p)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: atomic, verified, resumable
# ----------------------------------------------------------------------------------------------------------------

CHECKPOINTS_KEPT = 2  # the newest two: a damaged newest one falls back to the one before
MANIFEST = "MANIFEST.json"  # inside a checkpoint: every file's size and sha256
SELECTION = "selection.json"  # inside OUT/model: the step it was selected at and the manifest of its files


def write_atomic(path: Path, text: str) -> None:
    """`text` written to a temporary file beside `path`, then renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _manifest(root: Path) -> dict[str, dict]:
    """The manifest of a checkpoint or a selected model: every file under `root` but the records themselves."""
    return file_manifest(root, skip=lambda rel: rel.name in (MANIFEST, SELECTION))


def _damage(root: Path, files: dict[str, dict]) -> str | None:
    """How `root` differs from its manifest `files`, or None when every file is intact."""
    return "; ".join(manifest_problems(root, files)) or None


def _warn(dist: Dist, msg: str) -> None:
    if dist.is_main:
        print(f"warning: {msg}", flush=True)


def save_checkpoint(engine, ckpt_root: Path, step: int, client_state: dict, dist: Dist) -> None:
    """Full state (model, optimizer, scheduler, loss scaler via DeepSpeed; RNG, sampler position, step and
    best-so-far in client_state), written to a temporary directory with a manifest of its files (size, sha256)
    and renamed: never half-written, and verified before it is loaded. The newest CHECKPOINTS_KEPT are kept."""
    name = f"step-{step:06d}"
    tmp = ckpt_root / f".tmp-{name}"
    if dist.is_main and tmp.exists():
        shutil.rmtree(tmp)
    torch.distributed.barrier()
    engine.save_checkpoint(
        str(tmp), tag="state", client_state={"trainer": client_state, "rng": _rng_state()}, save_latest=False
    )
    torch.distributed.barrier()
    if dist.is_main:
        write_atomic(tmp / "trainer.json", json.dumps(client_state))  # readable without loading the weights
        write_atomic(tmp / MANIFEST, json.dumps(_manifest(tmp)))
        final = ckpt_root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_atomic(ckpt_root / "latest", name)
        older = sorted(p for p in ckpt_root.glob("step-*") if p.name != name)
        for old in older[: max(0, len(older) - (CHECKPOINTS_KEPT - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    torch.distributed.barrier()


def _checkpoint_problem(path: Path, out: Path) -> tuple[str | None, dict | None]:
    """(why the checkpoint `path` cannot be resumed or None, its trainer state when it can)."""
    if not (path / MANIFEST).exists():
        return f"no {MANIFEST}", None
    try:
        problem = _damage(path, json.loads((path / MANIFEST).read_text()))
        if problem:
            return problem, None
        state = json.loads((path / "trainer.json").read_text())
        problem = _selected_model_problem(out, state)
    except ValueError as exc:  # an unreadable manifest or state: as damaged as a truncated file
        return f"unreadable JSON ({exc})", None
    return problem, None if problem else state


def load_checkpoint(engine, out: Path, dist: Dist) -> dict | None:
    """The trainer state of the newest usable checkpoint under OUT/checkpoints (its model, optimizer, scheduler and
    RNG restored into `engine`), or None for a fresh start.

    A checkpoint is usable when every file matches its manifest and the selected model OUT/model agrees with its
    state (OUT/model/selection.json says which step it was selected at): a newer intact model/ (selected after that
    checkpoint) is kept as the best so far; a damaged or older one cannot be rebuilt from that checkpoint. Unusable
    checkpoints are skipped with a warning for the one before them and moved to OUT/checkpoints.damaged-*, never
    deleted; with none left the stage starts over. The engine is touched only by the checkpoint finally loaded."""
    root = out / "checkpoints"
    candidates = sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)
    bad: list[Path] = []
    chosen, state = None, None
    for path in candidates:
        problem, state = _checkpoint_problem(path, out)
        if problem is None:
            chosen = path
            break
        _warn(dist, f"checkpoint {path} cannot be resumed: {problem}")
        bad.append(path)
    if chosen is None and candidates:
        _warn(dist, f"no usable checkpoint in {root}: this stage starts over")
    torch.distributed.barrier()
    if bad and dist.is_main:
        aside = out / f"checkpoints.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir(exist_ok=True)
        for path in bad:
            os.replace(path, aside / path.name)
        if chosen is None:
            (root / "latest").unlink(missing_ok=True)
        else:
            write_atomic(root / "latest", chosen.name)
    torch.distributed.barrier()
    if chosen is None:
        return None
    _, client = engine.load_checkpoint(
        str(chosen), tag="state", load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if client is None:
        raise TrainError(f"checkpoint {chosen} could not be loaded; delete {root} to restart this stage")
    _set_rng_state(client["rng"])
    trainer = client["trainer"]
    trainer["best"] = state["best"]  # possibly the newer selected model adopted by _selected_model_problem
    return trainer


def _selected_model_problem(out: Path, state: dict) -> str | None:
    """Why OUT/model cannot go with the checkpoint `state` (None when it can; adopts a newer selected model)."""
    best = state.get("best")
    if best is None:
        return None  # nothing selected yet: a later selection writes model/
    record = out / "model" / SELECTION
    if not record.exists():
        return f"the selected model {out / 'model'} is missing (no {SELECTION})"
    meta = json.loads(record.read_text())
    problem = _damage(out / "model", meta["files"])
    if problem:
        return f"the selected model {out / 'model'} is damaged ({problem})"
    if meta["best"]["step"] > best["step"]:  # selected after the checkpoint: keep it, the rerun reaches it again
        state["best"] = meta["best"]
    elif meta["best"]["step"] < best["step"]:
        return f"the selected model {out / 'model'} is from step {meta['best']['step']}, not {best['step']}"
    return None


# ----------------------------------------------------------------------------------------------------------------
# The selected model, the metrics log, the summary
# ----------------------------------------------------------------------------------------------------------------


def save_model(engine, tokenizer, out: Path, dist: Dist, zero_stage: int, best: dict) -> None:
    """The selected model in Hugging Face format (atomically replaced), with the tokenizer beside it, and
    OUT/model/selection.json: the selection record `best` and the manifest of model/'s files (checked on resume)."""
    state = engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else None
    if dist.is_main:
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        engine.module.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        # the record travels inside the directory, so model/ and its record are replaced in one rename
        write_atomic(tmp / SELECTION, json.dumps({"best": best, "files": _manifest(tmp)}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    torch.distributed.barrier()


def select_model(
    engine, tokenizer, state: dict, values: dict, *, metric: str, out: Path, dist: Dist, zero_stage: int
) -> None:
    """Best-checkpoint selection: when this validation's `values[metric]` beats state["best"] (val_loss: lower
    is better; val_rouge_l: higher), `values` at state["step"] become the best and the model becomes OUT/model."""
    best = state["best"]
    if metric == "val_loss":
        improved = best is None or values[metric] < best[metric]
    else:
        improved = best is None or values[metric] > best[metric]
    if improved:
        state["best"] = {"step": state["step"], **values}
        save_model(engine, tokenizer, out / "model", dist, zero_stage, state["best"])


class MetricsLog:
    """metrics.jsonl, one JSON object per line, and the same numbers as TensorBoard scalars (OUT/tensorboard,
    tag KIND/NAME, e.g. train/pg_loss, validation/val_rouge_l). Resuming from a checkpoint at step S keeps the rows
    and events up to S and drops the rest (they are recomputed); a fresh start drops everything, so no row is ever
    written twice."""

    def __init__(self, path: Path, enabled: bool, *, resumed_step: int | None):
        self.path, self.enabled = path, enabled
        self.tb = None
        if not enabled:
            return
        keep = -1 if resumed_step is None else resumed_step
        if path.exists():
            rows = [ln for ln in path.read_text().splitlines() if ln.strip()]
            write_atomic(path, "".join(ln + "\n" for ln in rows if json.loads(ln).get("step", 0) <= keep))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency; a stripped install still trains and logs JSON
            return
        self.tb = SummaryWriter(log_dir=str(path.parent / "tensorboard"), purge_step=keep + 1)

    def write(self, **record) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key not in ("step", "kind") and isinstance(value, int | float) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{record.get('kind', 'metrics')}/{key}", value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def write_summary(out: Path, state: dict, dist: Dist, *, kind: str, cfg, wall: float, inputs: dict) -> Path:
    """OUT/summary.json (the stage is done: kind, best, history, steps, config, inputs, wall time, and the
    stage's own measures: SFT's selected-model checks, a hop's reverse KL before/after); returns OUT/model."""
    if dist.is_main:
        summary = {
            "kind": kind,
            "best": state["best"],
            "history": state["history"],
            "steps": state["step"],
            "config": to_dict(cfg),
            "inputs": inputs,
            "world_size": dist.world_size,
            "wall_time_s": wall,
        }
        for key in ("selected", "best_of_validations", "heldout_rev_kl", "sequence_rev_kl"):
            if key in state:
                summary[key] = state[key]
        write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    torch.distributed.barrier()
    return out / "model"


def quiet_logs() -> None:
    """For `train --quiet`: no progress bars and no info logging from transformers or DeepSpeed (warnings that
    matter still reach stderr at ERROR level). DeepSpeed sets its logger's level when first imported, so it is
    imported here."""
    import logging

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # as init_distributed: no "Setting accelerator to CPU" warning
    from deepspeed.utils import logger as ds_logger
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    ds_logger.setLevel(logging.ERROR)
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)


def summary_report(model_dir: Path) -> str:
    """Where the stage's model went and the validation that selected it (from OUT/summary.json)."""
    summary = json.loads((model_dir.parent / "summary.json").read_text())
    kind = summary["kind"]
    best = summary.get("best") or {}
    metric = "val_rouge_l" if kind == "minillm" or summary["config"].get("select_by") == "rouge_l" else "val_loss"
    direction = "higher" if metric == "val_rouge_l" else "lower"
    values = ", ".join(f"{k} {v:.4g}" for k, v in best.items() if k != "step" and isinstance(v, int | float))
    lines = [
        f"model: {model_dir}",
        f"selected: step {best.get('step')} of {summary['steps']} by {metric} ({direction} is better): {values}",
    ]
    sel = summary.get("selected") or {}
    if "val_ppl" in sel:
        ppl, rouge = sel["val_ppl"], sel["val_rouge_l_greedy"]
        lines.append(f"selected model: validation perplexity {ppl:.4g}, greedy ROUGE-L {rouge:.4g}")
    kl = summary.get("sequence_rev_kl") or {}
    if isinstance(kl.get("init"), dict) and isinstance(kl.get("selected"), dict):
        before, after = kl["init"]["per_response"], kl["selected"]["per_response"]
        lines.append(f"reverse KL to the teacher per sampled response: {before:.4g} (init) -> {after:.4g} (selected)")
    lines.append(f"summary: {model_dir.parent / 'summary.json'}")
    return "\n".join(lines)
