"""One training stage on DeepSpeed: SFT (MiniLLM phase 1) or one MiniLLM reverse-KL hop.

    python -m benchmark train minillm --student S_DIR --teacher T_DIR --data DATA_DIR --out OUT [--scale small]
    python -m benchmark train sft --model gpt2:120M --data DATA_DIR --out OUT --scale small
    deepspeed --num_gpus 4 -m benchmark train minillm ...          # multi-GPU; torchrun works too

A stage writes OUT/model (the selected checkpoint, Hugging Face format: the next hop's teacher), OUT/metrics.jsonl
(one line per optimizer step and per validation), OUT/summary.json (written last: the stage is done) and
resumable checkpoints under OUT/checkpoints. Killed and restarted with the same arguments it resumes from the
last checkpoint and, on CPU with fixed seeds, ends with the same weights as an uninterrupted run.

What a MiniLLM hop does (minillm-reference.md §1.3; config fields in benchmark.config.MiniLLMConfig):
  per phase   sample `rollouts_per_phase` prompts; roll out with teacher-mixed sampling (0.8 q + 0.2 p), storing
              log q, log p, importance weight w = q / (0.8 q + 0.2 p), reward (log p - log q)/0.5 clipped to +-100
  4 epochs    shuffle the on-policy buffer into global mini-batches of 64; per mini-batch: length-normalised
              discounted advantages, whitened; loss = PPO clip(rho = q_new/q_old * w) + single-step KL(q||p)
              + 1.0 x PT(0.5 CE + 0.5 soft-CE against the teacher on pre-training chunks)
  every 100   validation ROUGE-L (sampling, one seed) + reverse KL; the best checkpoint becomes OUT/model
The global batch, rollouts per phase and epochs are invariants; per-GPU batch and gradient accumulation follow
from the world size (config.deepspeed_config), and every loss is a token mean over the whole global mini-batch,
so results do not depend on how many GPUs or micro-batches run it (a deliberate deviation from the reference's
per-micro-batch means, which made its results depend on the GPU count: LMOps issues #118, #163).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from benchmark import BenchmarkError, losses, registry
from benchmark.config import MiniLLMConfig, SFTConfig, deepspeed_config, for_scale, to_dict
from benchmark.data import file_manifest, manifest_problems


class TrainError(BenchmarkError):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Distributed setup and model loading (the only place that knows about DeepSpeed)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Single process without a launcher, or one rank of `deepspeed`/`torchrun`. CPU uses gloo."""
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


def _dtype(precision: str, device: torch.device) -> torch.dtype:
    if device.type == "cpu":
        return torch.float32  # fp16 matmuls are not a CPU thing; the tiny scales run fp32
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def _disable_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _check_model_path(path: str) -> None:
    """A missing or empty local model directory, said as such (not as from_pretrained's "Repo id must be ...")."""
    from benchmark.evaluate import model_path_problem

    problem = model_path_problem(path)
    if problem:
        raise TrainError(f"cannot load model: {problem}")


def load_model(path: str, device: torch.device, dtype: torch.dtype, *, dropout: bool):
    from transformers import AutoModelForCausalLM

    _check_model_path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(Path(path).expanduser()), dtype=dtype)
    except OSError as exc:
        raise TrainError(
            f"cannot load model {path!r}: {exc}. Give a directory written by a previous stage or a "
            "hub id (paper scale needs hub access or a local copy)"
        ) from None
    if not dropout:
        _disable_dropout(model)  # ref minillm/model.py: the policy is put in eval(), no dropout during RL
    model.train(dropout)
    return model.to(device)


def build_model(spec: registry.ModelSpec, tokenizer, n_positions: int, seed: int):
    """A freshly initialised model of a small/tiny size (the analogue of a pretrained base for SFT)."""
    from transformers import AutoModelForCausalLM

    ids = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    config = spec.model_config(vocab_size=len(tokenizer), n_positions=n_positions, tokenizer_ids=ids)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def _engine(model, optimizer, scheduler, ds_config: dict):
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine


def _frozen_teacher(path: str, dist: Dist, precision: str, zero_stage: int):
    """The teacher: eval mode, no gradients, half precision on GPU; sharded (ZeRO-3 inference engine) when the
    student runs ZeRO-3, so it is never replicated on every GPU at that stage."""
    teacher = load_model(path, dist.device, _dtype(precision, dist.device), dropout=False)
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


def _parameters(model) -> int:
    """Parameter count, also of a ZeRO-3-partitioned model (whose parameters hold ds_numel, not their elements)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def _check_pair(
    student,
    teacher,
    student_path: str,
    teacher_path: str,
    data,
    cfg: MiniLLMConfig | None = None,
    *,
    allow_larger_student: bool = False,
) -> None:
    """Clear errors before any compute: a chain must share one vocabulary and one tokenizer (ref §3.3), each model
    must hold every token id of the data's tokenizer and have positions for the hop's sequences (`cfg`), and the
    student must not be larger than its teacher."""
    from transformers import AutoTokenizer

    sv, tv = student.config.vocab_size, teacher.config.vocab_size
    if sv != tv:
        raise TrainError(
            f"student {student_path} has vocabulary {sv}, teacher {teacher_path} has {tv}: a MiniLLM "
            "hop needs one shared vocabulary (rewards and the single-step KL are per token)"
        )
    sp, tp = _parameters(student), _parameters(teacher)
    if sp > tp and not allow_larger_student:
        raise TrainError(
            f"student {student_path} has {sp:,} parameters, more than its teacher {teacher_path} ({tp:,}): "
            "distillation goes from a larger teacher to a smaller student, so --student and --teacher are probably "
            "swapped; pass --allow-larger-student (train_minillm(..., allow_larger_student=True)) if this is meant"
        )
    for path, model in ((student_path, student), (teacher_path, teacher)):
        if model.config.model_type != data.family:
            raise TrainError(
                f"{path} is of family {model.config.model_type} but {data.path} was prepared for "
                f"{data.family}: prepare data with --family {model.config.model_type}"
            )
        if model.config.vocab_size < len(data.tokenizer):
            raise TrainError(
                f"{path} has a vocabulary of {model.config.vocab_size} tokens but the tokenizer of {data.path} has "
                f"{len(data.tokenizer)}: the data was prepared with another tokenizer than the model's"
            )
        positions = getattr(model.config, "max_position_embeddings", None)
        if cfg is not None and positions is not None:
            need = {"max_prompt_length + max_new_tokens": cfg.max_prompt_length + cfg.generation.max_new_tokens}
            if cfg.pt_coef > 0:
                need["pt_seq_length"] = cfg.pt_seq_length
            for what, n in need.items():
                if positions < n:
                    raise TrainError(
                        f"{path} has {positions} positions but this hop needs {n} ({what}): use the lengths of the "
                        "models' scale (--scale) or lower them with --set"
                    )
        tok_dir = Path(path)
        if (tok_dir / "tokenizer.json").exists():
            if AutoTokenizer.from_pretrained(tok_dir).get_vocab() != data.tokenizer.get_vocab():
                raise TrainError(
                    f"the tokenizer saved with {path} differs from the data's tokenizer "
                    f"({data.path}/tokenizer): the data was prepared with another tokenizer"
                )


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: atomic, resumable, the selected model
# ----------------------------------------------------------------------------------------------------------------


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


def _seed_everything(seed: int, rank: int) -> None:
    # ref utils.py::set_random_seed: seed + rank for torch/numpy/random
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


CHECKPOINTS_KEPT = 2  # the newest two: a damaged newest one falls back to the one before


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
        _write_atomic(tmp / "trainer.json", json.dumps(client_state))  # readable without loading the weights
        _write_atomic(tmp / MANIFEST, json.dumps(_manifest(tmp)))
        final = ckpt_root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(ckpt_root / "latest", name)
        older = sorted(p for p in ckpt_root.glob("step-*") if p.name != name)
        for old in older[: max(0, len(older) - (CHECKPOINTS_KEPT - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    torch.distributed.barrier()


MANIFEST = "MANIFEST.json"


def _manifest(root: Path) -> dict[str, dict]:
    """The manifest of a checkpoint or a selected model: every file under `root` but the records themselves."""
    return file_manifest(root, skip=lambda rel: rel.name in (MANIFEST, SELECTION))


def _damage(root: Path, files: dict[str, dict]) -> str | None:
    """How `root` differs from its manifest `files`, or None when every file is intact."""
    return "; ".join(manifest_problems(root, files)) or None


def _warn(dist: Dist, msg: str) -> None:
    if dist.is_main:
        print(f"warning: {msg}", flush=True)


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
        problem, state = None, None
        if (path / MANIFEST).exists():
            try:
                problem = _damage(path, json.loads((path / MANIFEST).read_text()))
                if not problem:
                    state = json.loads((path / "trainer.json").read_text())
                    problem = _selected_model_problem(out, state)
            except ValueError as exc:  # an unreadable manifest or state: as damaged as a truncated file
                problem = f"unreadable JSON ({exc})"
        if problem:
            _warn(dist, f"checkpoint {path} cannot be resumed: {problem}")
            bad.append(path)
            continue
        chosen = path
        break
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
            _write_atomic(root / "latest", chosen.name)
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
    if state is not None:
        trainer["best"] = state["best"]  # possibly the newer selected model adopted by _selected_model_problem
    return trainer


SELECTION = "selection.json"  # inside OUT/model: the step it was selected at and the manifest of its files


def _selected_model_problem(out: Path, state: dict) -> str | None:
    """Why OUT/model cannot go with the checkpoint `state` (None when it can; adopts a newer selected model)."""
    best = state.get("best")
    if best is None:
        return None  # nothing selected yet: a later selection writes model/
    record = out / "model" / SELECTION
    if not record.exists():
        if (out / "model").is_dir():
            return None  # selected before records existed: trusted as it is
        return f"the selected model {out / 'model'} is missing"
    meta = json.loads(record.read_text())
    problem = _damage(out / "model", meta["files"])
    if problem:
        return f"the selected model {out / 'model'} is damaged ({problem})"
    if meta["best"]["step"] > best["step"]:  # selected after the checkpoint: keep it, the rerun reaches it again
        state["best"] = meta["best"]
    elif meta["best"]["step"] < best["step"]:
        return f"the selected model {out / 'model'} is from step {meta['best']['step']}, not {best['step']}"
    return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
        _write_atomic(tmp / SELECTION, json.dumps({"best": best, "files": _manifest(tmp)}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    torch.distributed.barrier()


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
            _write_atomic(path, "".join(ln + "\n" for ln in rows if json.loads(ln).get("step", 0) <= keep))
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


# ----------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------


def _gen(*seed_parts: int) -> torch.Generator:
    """A CPU generator from a tuple of ints: derived, not stateful, so resume needs no generator state."""
    seed = 0
    for p in seed_parts:
        seed = (seed * 1_000_003 + int(p)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _response_batch(prompt_ids, prompt_mask, response_ids, response_mask):
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], dim=1)
    return ids, mask


def _response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask):
    """Logits at the positions that predict each response token: [B, T, V]."""
    from benchmark.sampling import forward_logits, trim_left_padding

    prompt_ids, prompt_mask = trim_left_padding(prompt_ids, prompt_mask)
    ids, mask = _response_batch(prompt_ids, prompt_mask, response_ids, response_mask)
    T = response_ids.shape[1]
    logits = forward_logits(model, ids, mask, logits_to_keep=T + 1)
    return logits[:, :-1]


# ----------------------------------------------------------------------------------------------------------------
# Validation: sampled ROUGE-L + reverse KL on the validation split
# ----------------------------------------------------------------------------------------------------------------


def _sequence_reverse_kls(student, teacher, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """Per response, the closed-form KL(q || p) summed over its masked positions: [batch] (losses upcasts the
    logits). The validation log, the held-out measure and the sequence-level measure all go through it."""
    from benchmark.sampling import response_width

    width = response_width(response_mask)
    response_ids, response_mask = response_ids[:, :width], response_mask[:, :width]
    args = (prompt_ids, prompt_mask, response_ids, response_mask)
    return losses.sequence_reverse_kl(_response_logits(student, *args), _response_logits(teacher, *args), response_mask)


@torch.no_grad()
def validate(
    model,
    teacher,
    examples,
    *,
    tokenizer,
    eos_token_id: int,
    max_prompt_length: int,
    settings,
    batch_size: int,
    seed: int,
    dist: Dist,
) -> dict:
    """Validation ROUGE-L of the student's samples (one seed, no n-gram blocking: the reference's training-time
    validation, ref §1.5 and LMOps #329) and, with a teacher, the student's sequence-level reverse KL: the exact
    per-position KL(q||p) summed over each sampled response, averaged over prompts. Examples are sharded over
    ranks and gathered."""
    from benchmark.evaluate import postprocess, rouge_l
    from benchmark.sampling import example_generators, left_pad, sample, trim_left_padding

    was_training = model.training
    model.eval()
    idx = list(range(dist.rank, len(examples), dist.world_size))
    preds, kls = {}, {}
    for start in range(0, len(idx), batch_size):
        chunk = idx[start : start + batch_size]
        p_ids, p_mask = left_pad([examples[i].prompt_ids for i in chunk], eos_token_id, max_prompt_length)
        p_ids, p_mask = p_ids.to(dist.device), p_mask.to(dist.device)
        out = sample(
            model,
            *trim_left_padding(p_ids, p_mask),
            settings,
            eos_token_id=eos_token_id,
            generators=example_generators(seed, chunk),
        )
        texts = tokenizer.batch_decode(out.response_ids.cpu(), skip_special_tokens=True)
        for i, text in zip(chunk, texts):
            preds[i] = postprocess(text, tokenizer.eos_token)
        if teacher is not None:
            seq_kl = _sequence_reverse_kls(model, teacher, p_ids, p_mask, out.response_ids, out.response_mask)
            kls.update(zip(chunk, seq_kl.cpu().tolist()))
    gathered: list = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, (preds, kls))
    preds = {k: v for p, _ in gathered for k, v in p.items()}
    kls = {k: v for _, k_ in gathered for k, v in k_.items()}
    order = sorted(preds)
    result = {"val_rouge_l": rouge_l([preds[i] for i in order], [examples[i].output for i in order])}
    if kls:
        result["val_rev_kl"] = float(np.mean([kls[i] for i in order]))
    model.train(was_training)
    return result


# ----------------------------------------------------------------------------------------------------------------
# MiniLLM
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Buffer:
    """The on-policy rollout store of one phase (ref storages.py: cleared every phase, no replay). Every rank
    holds the whole global buffer (gathered after the rollouts), so mini-batch composition is independent of
    the world size."""

    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor  # [N, T]
    response_mask: torch.Tensor  # [N, T] float, EOS inside
    old_logprobs: torch.Tensor  # log q at sampling time
    weights: torch.Tensor  # importance weights w
    rewards: torch.Tensor  # scaled, clipped per-token rewards
    row: torch.Tensor  # [N] position in the gathered phase buffer (the key of TeacherLogitsCache)

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def take(self, idx) -> Buffer:
        return Buffer(*(getattr(self, f.name)[idx] for f in dataclasses.fields(self)))

    def trimmed(self) -> Buffer:
        """The response columns up to this batch's longest response (`sampling.response_width`): what a micro-batch
        is scored on. Positions cut are padding in every row, masked out of every loss."""
        from benchmark.sampling import response_width

        w = response_width(self.response_mask)
        cut = {
            f: getattr(self, f)[:, :w] for f in ("response_ids", "response_mask", "old_logprobs", "weights", "rewards")
        }
        return dataclasses.replace(self, **cut)

    def to(self, device) -> Buffer:
        return Buffer(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def gather_buffer(local: Buffer, dist: Dist) -> Buffer:
    """The phase's global buffer on every rank, in phase order, its rows numbered 0..N-1."""
    if dist.world_size == 1:
        buf = local
    else:
        parts: list = [None] * dist.world_size
        torch.distributed.all_gather_object(parts, local.to("cpu"))
        # Rank r rolled out prompts r, r+W, r+2W, ... of the phase: interleave back into phase order.
        n = sum(len(p) for p in parts)
        order = torch.empty(n, dtype=torch.long)
        for r in range(dist.world_size):
            order[torch.arange(r, n, dist.world_size)] = torch.arange(
                sum(len(p) for p in parts[:r]), sum(len(p) for p in parts[: r + 1])
            )
        cat = Buffer(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Buffer)))
        buf = cat.take(order).to(dist.device)
    return dataclasses.replace(buf, row=torch.arange(len(buf), device=buf.row.device))


class TeacherLogitsCache:
    """The teacher's response logits of one phase's rollouts, computed on first use and reused by later PPO epochs.

    The single-step term needs the teacher's full distribution at every response position. The reference runs one
    teacher forward per micro-step in every PPO epoch (ref §1.3 "Single-step term": no caching), i.e. ppo_epochs
    forwards of the same frozen, dropout-free teacher on the same rollout. Here a row's logits are computed the
    first time a micro-batch needs them (in a full forward, exactly as without the cache) and kept until the phase
    ends; only the batch a row is computed in differs, so results equal the uncached run up to float summation
    order (tests/test_train.py::test_teacher_logits_cache_matches_recompute). Memory: at most rows x T x V in the
    teacher's dtype per rank (GPT-2 at paper scale: 256 x 256 x 50257 x 2 B = 6.6 GB); set
    `cache_teacher_logits=False` where that does not fit.

    `lockstep`: the teacher is a ZeRO-3 engine sharded over the ranks, whose forward is collective; a rank then
    runs the teacher whenever any rank does (recomputing its own rows if it needs none), never alone.
    """

    def __init__(self, lockstep: bool = False):
        self.rows: dict[int, torch.Tensor] = {}
        self.lockstep = lockstep

    @torch.no_grad()
    def logits(self, teacher, mb: Buffer) -> torch.Tensor:
        keys = mb.row.tolist()
        missing = [i for i, k in enumerate(keys) if k not in self.rows]
        if self.lockstep:
            flag = torch.tensor([float(bool(missing))], device=mb.row.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if flag.item() > 0 and not missing:
                missing = list(range(len(keys)))
        if missing:
            sub = mb.take(torch.tensor(missing, device=mb.row.device))
            fresh = _response_logits(teacher, sub.prompt_ids, sub.prompt_mask, sub.response_ids, sub.response_mask)
            for i, lg in zip(missing, fresh):
                self.rows[keys[i]] = lg
        # A row computed in a micro-batch of another width (`Buffer.trimmed`) is cut or zero-padded to this one's:
        # both widths hold all of the row's own response, and the positions beyond it are masked out.
        width = mb.response_ids.shape[1]
        return torch.stack([F.pad(self.rows[k][:width], (0, 0, 0, max(0, width - len(self.rows[k])))) for k in keys])


@torch.no_grad()
def rescore_rollouts(student, teacher, prompt_ids, prompt_mask, response_ids, response_mask, generation):
    """log q (student, logits / temperature) and log p (teacher, raw logits; None without a teacher) of the sampled
    tokens from one full teacher-forced forward of each model, 0 where the mask is 0: how the reference scores its
    rollouts (ref §1.3 step 3 `rollout_logprobs`, step 2 `reward.py`, step 5 `raw_logprobs`/`t_rollout_logprobs`,
    "the re-computation only absorbs fp16 noise"). These are the same forwards the PPO epochs run, so under half
    precision the stored log q equals the first epoch's log q_new and the clip sees ratio = w, not decode noise."""
    from benchmark.sampling import response_width

    full, width = response_ids.shape[1], response_width(response_mask)
    response_ids, response_mask = response_ids[:, :width], response_mask[:, :width]
    args = (prompt_ids, prompt_mask, response_ids, response_mask)

    def padded(x):  # back to the stored width (0 beyond every response, as at masked positions)
        return F.pad(x * response_mask, (0, full - width))

    lq = losses.token_logprobs(_response_logits(student, *args), response_ids, generation.temperature)
    if teacher is None:
        return padded(lq), None
    lp = losses.token_logprobs(_response_logits(teacher, *args), response_ids)
    return padded(lq), padded(lp)


@torch.no_grad()
def collect_rollouts(
    student,
    teacher,
    prompts: list[list[int]],
    draw_ids: list[int],
    cfg: MiniLLMConfig,
    eos_token_id: int,
    dist: Dist,
    chunk_size: int,
) -> tuple[Buffer, dict]:
    """Teacher-mixed rollouts for this rank's prompts (ref sampler.py::run_sample, §1.3 steps 1-7)."""
    from benchmark.sampling import example_generators, left_pad, sample, trim_left_padding

    parts, stats = [], {"mixed_lens": [], "stu_lens": [], "rev_kl": []}
    for start in range(0, len(prompts), chunk_size):
        batch, ids = prompts[start : start + chunk_size], draw_ids[start : start + chunk_size]
        p_ids, p_mask = left_pad(batch, eos_token_id, cfg.max_prompt_length)
        p_ids, p_mask = p_ids.to(dist.device), p_mask.to(dist.device)
        # Each rollout's randomness comes from (seed, global draw index): independent of ranks and chunking.
        # log p is needed for w and the rewards (mixing or the PG term). With "forward" scoring the log-probs come
        # from rescore_rollouts, so the teacher decodes beside the student only to mix; with "decode" scoring it
        # decodes whenever its log-probs are used. The single-step-only ablation without mixing samples the
        # student alone either way.
        forward = cfg.rollout_logprobs == "forward"
        uses_log_p = cfg.teacher_mixed_alpha > 0 or cfg.policy_gradient
        decodes_teacher = cfg.teacher_mixed_alpha > 0 if forward else uses_log_p or cfg.log_student_sample
        out = sample(
            student,
            *trim_left_padding(p_ids, p_mask),
            cfg.generation,
            eos_token_id=eos_token_id,
            generators=example_generators(cfg.seed, ids),
            mix_model=teacher if decodes_teacher else None,
            mix_alpha=cfg.teacher_mixed_alpha,
            return_logprobs=not forward,
        )
        mask = out.response_mask
        lq, lp = out.student_logprobs, out.teacher_logprobs
        if forward:
            lq, lp = rescore_rollouts(
                student, teacher if uses_log_p else None, p_ids, p_mask, out.response_ids, mask, cfg.generation
            )
        if lp is None:  # unused by the losses in this configuration; keeps the buffer uniform
            lp = lq
        w = losses.importance_weights(lq, lp, cfg.teacher_mixed_alpha)
        r = losses.rewards(lp, lq, mask, reward_scaling=cfg.reward_scaling, cliprange_reward=cfg.cliprange_reward)
        row = torch.zeros(len(batch), dtype=torch.long, device=dist.device)  # numbered after the gather
        parts.append(Buffer(p_ids, p_mask, out.response_ids, mask, lq, w * mask + (1 - mask), r, row))
        stats["mixed_lens"].append(out.lengths.float())
        if cfg.log_student_sample:
            # ref sampler.py lines 83-94: a pure-student sample of the same prompts, used only for logging
            stu = sample(
                student,
                *trim_left_padding(p_ids, p_mask),
                cfg.generation,
                eos_token_id=eos_token_id,
                generators=example_generators(cfg.seed + 1, ids),
                mix_model=teacher,
                mix_alpha=0.0,
                return_logprobs=True,
            )
            stats["stu_lens"].append(stu.lengths.float())
            stats["rev_kl"].append(((stu.student_logprobs - stu.teacher_logprobs) * stu.response_mask).sum(-1))
    local = Buffer(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Buffer)))
    return local, {k: torch.cat(v).mean().item() for k, v in stats.items() if v}


def _ppo_micro_loss(
    engine,
    teacher,
    mb: Buffer,
    advantages,
    cfg: MiniLLMConfig,
    n_tokens: float,
    pt_batch: torch.Tensor | None,
    n_pt_tokens: float,
    teacher_cache: TeacherLogitsCache | None = None,
) -> tuple[torch.Tensor, dict]:
    """Loss of one micro-batch, scaled so that the sum over micro-batches and ranks is the global token mean."""
    s_logits = _response_logits(engine, mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask)
    s_logits = s_logits.float() / cfg.generation.temperature
    stats, loss = {}, s_logits.new_zeros(())
    if cfg.policy_gradient:
        logprobs = losses.token_logprobs(s_logits, mb.response_ids)
        pg = losses.ppo_clip_loss(
            logprobs, mb.old_logprobs, mb.weights, advantages, mb.response_mask, clip=cfg.cliprange, num_tokens=n_tokens
        )
        loss, stats["pg_loss"] = loss + pg, pg.item()
    if teacher_cache is not None:
        t_logits = teacher_cache.logits(teacher, mb)
    else:
        with torch.no_grad():
            t_logits = _response_logits(teacher, mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask)
    # the teacher's logits stay in their dtype here: single_step_kl upcasts them chunk by chunk
    reg = losses.single_step_kl(s_logits, t_logits, mb.response_mask, num_tokens=n_tokens, chunk_size=cfg.kl_chunk_size)
    stats["reg_loss"] = reg.item()
    if cfg.single_step:
        loss = loss + reg
    if pt_batch is not None:
        from benchmark.sampling import forward_logits

        inp, labels = pt_batch[:, :-1], pt_batch[:, 1:]
        ones = torch.ones_like(inp)
        s_pt = forward_logits(engine, inp, ones).float()
        with torch.no_grad():
            t_pt = forward_logits(teacher, inp, ones).float()
        pt = losses.pt_loss(s_pt, t_pt, labels, cfg.kd_ratio, num_tokens=n_pt_tokens)
        loss, stats["pt_loss"] = loss + cfg.pt_coef * pt, pt.item()
    return loss, stats


def minillm_step(
    engine,
    teacher,
    mb: Buffer,
    cfg: MiniLLMConfig,
    step: int,
    pt_chunks,
    dist: Dist,
    out: Path,
    teacher_cache: TeacherLogitsCache | None = None,
) -> dict:
    """One optimizer step on a global mini-batch `mb` (every rank holds all of it): advantages, whitening, then
    this rank's micro-batches through `_ppo_micro_loss` and DeepSpeed. Returns the step's losses (global sums of
    the micro-batch token-mean shares, i.e. the global token means). `teacher_cache`: the phase's
    TeacherLogitsCache (None recomputes the teacher's logits, as the reference does)."""
    micro, gas = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
    # Advantages of the whole global mini-batch: every rank holds it, so whitening statistics are the reference's
    # all-rank statistics (ref utils.py) without depending on the world size.
    adv = losses.minillm_advantages(mb.rewards, mb.response_mask, cfg.gamma, cfg.length_normalization)
    adv = losses.whiten(
        adv, mb.response_mask, include_padding=cfg.whiten_include_padding, shift_mean=True, distributed=False
    )
    n_tokens = mb.response_mask.sum().item()
    pt_rows, n_pt = None, 1.0
    if pt_chunks is not None:  # the PT batch of this step: as many 512-token chunks as rollouts (ref §1.3)
        g = step * cfg.batch_size
        pt_rows = pt_chunks[torch.arange(g, g + cfg.batch_size) % len(pt_chunks)].to(dist.device)
        n_pt = cfg.batch_size * (pt_chunks.shape[1] - 1)
    first = dist.rank * micro * gas
    stats: dict[str, float] = {}
    for k in range(gas):
        rows = torch.arange(first + k * micro, first + (k + 1) * micro)
        micro_batch = mb.take(rows).trimmed()  # scored up to its longest response only
        loss, st = _ppo_micro_loss(
            engine,
            teacher,
            micro_batch,
            adv[rows][:, : micro_batch.response_ids.shape[1]],
            cfg,
            n_tokens,
            pt_rows[rows] if pt_rows is not None else None,
            n_pt,
            teacher_cache,
        )
        _check_finite(loss, step, st, out)
        # DeepSpeed averages gradients over ranks; the loss is already the rank's share of the global token mean,
        # so undo the averaging and skip DeepSpeed's 1/GA scaling.
        engine.backward(loss * dist.world_size, scale_wrt_gas=False)
        engine.step()
        for key, value in st.items():
            stats[key] = stats.get(key, 0.0) + value
    return {k: _all_reduce_sum(v, dist) for k, v in stats.items()}


@torch.no_grad()
def heldout_reverse_kl(student, teacher, examples, eos_token_id: int, max_prompt_length: int, batch: int) -> float:
    """Token mean of the closed-form KL(q || p) at every position of the held-out gold responses (EOS included):
    the reverse KL of the student to its teacher on fixed contexts. Deterministic and paired (every checkpoint is
    scored on the same contexts), so a hop's change is measurable where the sampled per-response estimate
    (`val_rev_kl`, one sampled response per prompt) has a standard error several times the change at small scale.
    Every rank computes the whole split, so a sharded ZeRO-3 teacher forwards in lockstep."""
    from benchmark.sampling import left_pad

    device = next(student.parameters()).device
    total, count = 0.0, 0.0
    for start in range(0, len(examples), batch):
        chunk = examples[start : start + batch]
        p_ids, p_mask = left_pad([e.prompt_ids for e in chunk], eos_token_id, max_prompt_length)
        r_ids = torch.full((len(chunk), max(len(e.response_ids) for e in chunk)), eos_token_id, dtype=torch.long)
        r_mask = torch.zeros(r_ids.shape)
        for i, e in enumerate(chunk):  # right-padded, EOS inside the mask (ref §1.3 mask convention)
            r_ids[i, : len(e.response_ids)] = torch.tensor(e.response_ids)
            r_mask[i, : len(e.response_ids)] = 1.0
        r_mask = r_mask.to(device)
        kl = _sequence_reverse_kls(student, teacher, p_ids.to(device), p_mask.to(device), r_ids.to(device), r_mask)
        total, count = total + kl.sum().item(), count + r_mask.sum().item()
    return total / max(count, 1.0)


# The sampling seeds of the hop's sequence-level reverse KL before/after (two samples per held-out prompt).
SEQUENCE_KL_SEEDS = (10, 11)


@torch.no_grad()
def sequence_reverse_kl(
    student, teacher, examples, eos_token_id: int, max_prompt_length: int, generation, seeds, batch: int
) -> dict:
    """MiniLLM's objective itself: the sequence-level reverse KL KL(q || p) = E_x E_{y~q}[log q(y|x) - log p(y|x)]
    (MiniLLM paper Eq. 1, ref §1.2), estimated on every held-out prompt with one student sample per seed and the
    Rao-Blackwellised per-response value sum_t KL(q(.|y_<t, x) || p(.|y_<t, x)) (exact over the vocabulary at each
    sampled context; same expectation as the sampled log-ratio, far lower variance). Samples come from the student
    alone with the run's generation settings and per-example generators, so the value does not depend on batching.
    Returns per-response and per-token means, the mean response length (EOS included) and the per-seed values."""
    from benchmark.sampling import example_generators, left_pad, sample, trim_left_padding

    device = next(student.parameters()).device
    per_seed, total, tokens, responses = [], 0.0, 0.0, 0
    for seed in seeds:
        seed_total = 0.0
        for start in range(0, len(examples), batch):
            chunk = examples[start : start + batch]
            p_ids, p_mask = left_pad([e.prompt_ids for e in chunk], eos_token_id, max_prompt_length)
            p_ids, p_mask = p_ids.to(device), p_mask.to(device)
            out = sample(
                student,
                *trim_left_padding(p_ids, p_mask),
                generation,
                eos_token_id=eos_token_id,
                generators=example_generators(seed, list(range(start, start + len(chunk)))),
            )
            kl = _sequence_reverse_kls(student, teacher, p_ids, p_mask, out.response_ids, out.response_mask)
            seed_total, tokens = seed_total + kl.sum().item(), tokens + out.response_mask.sum().item()
        per_seed.append(seed_total / len(examples))
        total, responses = total + seed_total, responses + len(examples)
    return {
        "per_response": total / responses,
        "per_token": total / max(tokens, 1.0),
        "mean_length": tokens / responses,
        "per_seed": per_seed,
    }


def train_minillm(
    student_path: str,
    teacher_path: str,
    data_dir: str | Path,
    out_dir: str | Path,
    cfg: MiniLLMConfig,
    *,
    progress: bool = True,
    allow_larger_student: bool = False,
) -> Path:
    """Distil `teacher_path` into `student_path` (its SFT init) with MiniLLM; returns OUT/model.

    A student with more parameters than its teacher is refused (swapped arguments) unless `allow_larger_student`;
    that is a check, not a setting: it is no MiniLLMConfig field and changes no stage hash."""
    from benchmark.data import load_prepared

    for path in (student_path, teacher_path):
        _check_model_path(path)
    out = Path(out_dir)
    dist = init_distributed()
    _seed_everything(cfg.seed, dist.rank)
    student = load_model(student_path, dist.device, torch.float32, dropout=False)
    teacher = _frozen_teacher(teacher_path, dist, cfg.precision, cfg.zero_stage)
    data = load_prepared(data_dir, family=student.config.model_type)
    _check_pair(student, teacher, student_path, teacher_path, data, cfg, allow_larger_student=allow_larger_student)
    if dist.is_main:  # only once the inputs are known to fit: a refused hop leaves no OUT behind
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(exist_ok=True)
    torch.distributed.barrier()
    tok, eos = data.tokenizer, data.eos_token_id
    prompts = [ex.prompt_ids for ex in data.split("train")]
    val = data.split("valid")[: cfg.val_examples]
    pt_chunks = data.pt_chunks() if cfg.pt_coef > 0 else None
    if cfg.pt_coef > 0 and pt_chunks is None:
        raise TrainError(
            f"{data.path} has no pre-training chunks (pt.npy) but pt_coef={cfg.pt_coef}: prepare them "
            "with `python -m benchmark data pt ...` or set pt_coef=0 (the 'no PT loss' ablation)"
        )
    if pt_chunks is not None:
        pt_chunks = torch.from_numpy(pt_chunks[:, : cfg.pt_seq_length].astype(np.int64))

    ds = deepspeed_config(cfg, dist.world_size)
    micro = ds["train_micro_batch_size_per_gpu"]
    opt = torch.optim.AdamW(
        student.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
    )  # ref trainer.py::setup_optimizer
    # ref `constant_trm` = transformers' get_constant_schedule_with_warmup: lr x s/warmup, then constant. Its
    # first optimizer step therefore runs at lr 0; mirrored on purpose.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / cfg.warmup_steps if s < cfg.warmup_steps else 1.0)
    engine = _engine(student, opt, sched, ds)

    resumed = load_checkpoint(engine, out, dist)
    log = MetricsLog(out / "metrics.jsonl", dist.is_main, resumed_step=resumed and resumed["step"])
    state = resumed or {"step": 0, "phase": 0, "best": None, "history": []}
    # The hop's reverse KL before ("init") and after ("selected") on the whole validation split, two ways.
    heldout = data.split("valid")
    h = state.setdefault("heldout_rev_kl", {"examples": len(heldout)})
    q = state.setdefault("sequence_rev_kl", {"examples": len(heldout), "seeds": list(SEQUENCE_KL_SEEDS)})

    def measures(model, into: str) -> None:
        h[into] = heldout_reverse_kl(model, teacher, heldout, eos, cfg.max_prompt_length, micro)
        q[into] = sequence_reverse_kl(model, teacher, heldout, eos, cfg.max_prompt_length, cfg.generation,
                                      SEQUENCE_KL_SEEDS, micro)  # fmt: skip

    if state["step"] == 0 and not state["history"]:  # the init's validation: the "before" of the hop
        _record_validation(engine, teacher, val, tok, eos, cfg, micro, dist, state, log)
        measures(engine.module, "init")

    n_prompts = len(prompts)
    per_rank = cfg.rollouts_per_phase // dist.world_size
    pbar = tqdm(
        total=cfg.total_steps,
        initial=state["step"],
        desc="minillm steps",
        disable=not (progress and dist.is_main),
        dynamic_ncols=True,
    )
    t_start = time.time()
    while state["step"] < cfg.total_steps:
        phase = state["phase"]
        t0 = time.time()
        # Prompt sampler: a fresh permutation per pass over the data; phase k takes draws k*R .. (k+1)*R - 1.
        draws = list(range(phase * cfg.rollouts_per_phase, (phase + 1) * cfg.rollouts_per_phase))
        mine = draws[dist.rank :: dist.world_size][:per_rank]
        order = {}
        for d in mine:
            epoch = d // n_prompts
            if epoch not in order:
                order[epoch] = torch.randperm(n_prompts, generator=_gen(cfg.seed, epoch))
        prompt_batch = [prompts[order[d // n_prompts][d % n_prompts]] for d in mine]
        engine.module.eval()
        local, roll_stats = collect_rollouts(engine.module, teacher, prompt_batch, mine, cfg, eos, dist, micro)
        buf = gather_buffer(local, dist)
        t_roll = time.time() - t0
        cache = (
            TeacherLogitsCache(lockstep=cfg.zero_stage == 3 and dist.world_size > 1)
            if cfg.cache_teacher_logits
            else None
        )

        phase_tokens = 0
        for ppo_epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(len(buf), generator=_gen(cfg.seed_ppo, phase, ppo_epoch))
            for mb_start in range(0, len(buf) - cfg.batch_size + 1, cfg.batch_size):  # drop_last, ref storages.py
                if state["step"] >= cfg.total_steps:
                    break
                t_step = time.time()
                mb = buf.take(perm[mb_start : mb_start + cfg.batch_size])
                lr = sched.get_last_lr()[0]  # the rate this optimizer step uses
                step_stats = minillm_step(engine, teacher, mb, cfg, state["step"], pt_chunks, dist, out, cache)
                state["step"] += 1
                phase_tokens += int(mb.response_mask.sum().item())
                valid = mb.response_mask.bool()
                record = {
                    "step": state["step"],
                    "kind": "train",
                    "phase": phase,
                    **step_stats,
                    "reward": mb.rewards[valid].mean().item() if valid.any() else 0.0,
                    "lr": lr,
                    **roll_stats,
                    "tokens_per_s": mb.response_mask.sum().item() / max(time.time() - t_step, 1e-9),
                }
                log.write(**record)
                pbar.update(1)
                pbar.set_postfix(reg=f"{step_stats.get('reg_loss', 0):.3f}", refresh=False)
                if state["step"] % cfg.eval_interval == 0 or state["step"] == cfg.total_steps:
                    _select(engine, teacher, val, tok, eos, cfg, micro, dist, state, log, out)
        state["phase"] = phase + 1
        log.write(
            step=state["step"],
            kind="phase",
            phase=phase,
            rollout_s=t_roll,
            phase_s=time.time() - t0,
            response_tokens=phase_tokens,
        )
        steps_done = state["step"]
        due = steps_done // cfg.checkpoint_interval != (steps_done - cfg.steps_per_phase) // cfg.checkpoint_interval
        if due or steps_done >= cfg.total_steps:
            save_checkpoint(engine, out / "checkpoints", steps_done, state, dist)
    pbar.close()
    log.close()
    # The hop's "after": the selected model, in the stage's compute dtype (half on GPU, beside the engine).
    dtype = _dtype(cfg.precision, dist.device)
    if "init" not in h or "init" not in q:  # resumed from a checkpoint older than these measures: score the init
        measures(load_model(student_path, dist.device, dtype, dropout=False), "init")
    measures(load_model(str(out / "model"), dist.device, dtype, dropout=False), "selected")
    return _finish(
        out,
        state,
        dist,
        kind="minillm",
        cfg=cfg,
        wall=time.time() - t_start,
        inputs={"student": student_path, "teacher": teacher_path, "data": str(data_dir)},
    )


def _check_finite(loss: torch.Tensor, step: int, parts: dict, out: Path) -> None:
    if not torch.isfinite(loss):
        raise TrainError(
            f"non-finite loss at step {step + 1} ({parts or 'lm loss'}) in {out}: lower the learning "
            "rate or use bf16/fp32 instead of fp16; the stage resumes from its last checkpoint"
        )


def _all_reduce_sum(x: float, dist: Dist) -> float:
    if dist.world_size == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=dist.device)
    torch.distributed.all_reduce(t)
    return t.item()


def _record_validation(engine, teacher, val, tok, eos, cfg, micro, dist, state, log) -> dict:
    v = validate(
        engine.module,
        teacher,
        val,
        tokenizer=tok,
        eos_token_id=eos,
        max_prompt_length=cfg.max_prompt_length,
        settings=cfg.generation,
        batch_size=micro,
        seed=cfg.seed,
        dist=dist,
    )
    state["history"].append({"step": state["step"], **v})
    log.write(step=state["step"], kind="validation", **v)
    return v


def _select(engine, teacher, val, tok, eos, cfg, micro, dist, state, log, out) -> None:
    """Validation and best-checkpoint selection by validation ROUGE-L (ref §1.5, paper B.1)."""
    v = _record_validation(engine, teacher, val, tok, eos, cfg, micro, dist, state, log)
    if state["best"] is None or v["val_rouge_l"] > state["best"]["val_rouge_l"]:
        state["best"] = {"step": state["step"], **v}
        save_model(engine, tok, out / "model", dist, cfg.zero_stage, state["best"])


def _finish(out: Path, state: dict, dist: Dist, *, kind: str, cfg, wall: float, inputs: dict) -> Path:
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
        # SFT: the selected model's checks; MiniLLM: the hop's reverse KL before/after
        for key in ("selected", "heldout_rev_kl", "sequence_rev_kl"):
            if key in state:
                summary[key] = state[key]
        _write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    torch.distributed.barrier()
    return out / "model"


# ----------------------------------------------------------------------------------------------------------------
# SFT (MiniLLM phase 1)
# ----------------------------------------------------------------------------------------------------------------


def _sft_batch(examples, max_length: int, pad_id: int, device):
    """Right-padded prompt+response, labels only on the response (its EOS included; ref finetune.py)."""
    seqs, labels = [], []
    for ex in examples:
        ids = (list(ex.prompt_ids) + list(ex.response_ids))[:max_length]
        lab = ([-100] * len(ex.prompt_ids) + list(ex.response_ids))[:max_length]
        seqs.append(ids)
        labels.append(lab)
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    lab = torch.full((len(seqs), L), -100, dtype=torch.long)
    for i, (s, y) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)], mask[i, : len(s)], lab[i, : len(y)] = torch.tensor(s), 1, torch.tensor(y)
    # position t predicts token t+1
    return ids.to(device), mask.to(device), lab[:, 1:].to(device)


@torch.no_grad()
def _val_loss(model, examples, cfg: SFTConfig, pad_id: int, dist: Dist, batch: int) -> float:
    """Token-mean response CE (EOS included) on the validation split: selects the student inits (ref §2.4)."""
    from benchmark.sampling import labelled_logits

    was = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(dist.rank * batch, len(examples), batch * dist.world_size):
        ids, mask, labels = _sft_batch(examples[start : start + batch], cfg.max_length, pad_id, dist.device)
        targets = labels[labels != -100]
        logits = labelled_logits(model, ids, mask, labels).float()  # [len(targets), V]
        nll = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        total, count = total + nll.item(), count + len(targets)
    model.train(was)
    return _all_reduce_sum(total, dist) / max(1.0, _all_reduce_sum(count, dist))


def train_sft(
    model: str | registry.ModelSpec, data_dir: str | Path, out_dir: str | Path, cfg: SFTConfig, *, progress: bool = True
) -> Path:
    """Fine-tune a base model (hub id, directory, or a small/tiny ModelSpec built here) on the prepared Dolly
    train split; returns OUT/model, the checkpoint with the best validation loss (or ROUGE-L for a teacher).
    A model built here from scratch first takes `cfg.pretrain_steps` LM steps on the prepared PT chunks."""
    from benchmark.data import load_prepared
    from benchmark.sampling import labelled_logits

    out = Path(out_dir)
    dist = init_distributed()
    if dist.is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    _seed_everything(cfg.seed, dist.rank)
    if isinstance(model, registry.ModelSpec):
        data = load_prepared(data_dir, family=model.arch)
        net = build_model(model, data.tokenizer, n_positions=cfg.max_length, seed=cfg.seed).to(dist.device)
        source = dataclasses.asdict(model)
    else:
        net = load_model(model, dist.device, torch.float32, dropout=cfg.dropout)
        data = load_prepared(data_dir, family=net.config.model_type)
        source = model
    if not cfg.dropout:
        _disable_dropout(net)
    net.train()
    tok, pad = data.tokenizer, data.eos_token_id
    train = data.split("train")
    val = data.split("valid")[: cfg.val_examples]
    steps_per_epoch = len(train) // cfg.batch_size
    n_pre = cfg.pretrain_steps
    total = n_pre + (cfg.total_steps or cfg.epochs * steps_per_epoch)
    eval_interval = cfg.eval_interval or steps_per_epoch
    pt = None
    if n_pre:
        chunks = data.pt_chunks()
        if chunks is None or len(chunks) < cfg.batch_size:
            raise TrainError(
                f"pretrain_steps={n_pre} needs PT chunks (at least one batch of {cfg.batch_size}) in {data.path}: "
                "prepare them (`python -m benchmark data synthetic ...` writes pt.npy) or set pretrain_steps=0"
            )
        pt = torch.from_numpy(chunks[:, : cfg.max_length].astype(np.int64))

    # ref §2.4: AdamW, weight decay 0.01 except the no-decay names; cosine to lr_min, no warmup
    decay = [p for n, p in net.named_parameters() if not any(nd in n for nd in cfg.no_decay)]
    no_decay = [p for n, p in net.named_parameters() if any(nd in n for nd in cfg.no_decay)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )

    def lr_lambda(s: int) -> float:
        if s < cfg.warmup_steps:
            return (s + 1) / cfg.warmup_steps
        frac = min(1.0, (s - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return (cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * frac))) / cfg.lr

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    ds = deepspeed_config(cfg, dist.world_size)
    micro, gas = ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]
    engine = _engine(net, opt, sched, ds)
    resumed = load_checkpoint(engine, out, dist)
    log = MetricsLog(out / "metrics.jsonl", dist.is_main, resumed_step=resumed and resumed["step"])
    state = resumed or {"step": 0, "best": None, "history": []}

    pbar = tqdm(
        total=total,
        initial=state["step"],
        desc="sft steps",
        disable=not (progress and dist.is_main),
        dynamic_ncols=True,
    )
    t_start = time.time()
    while state["step"] < total:
        step = state["step"]
        if step < n_pre:  # language-model steps on PT chunks: every token is a target
            epoch, k = divmod(step, len(pt) // cfg.batch_size)
            perm = torch.randperm(len(pt), generator=_gen(cfg.seed, 1_000_000 + epoch))
            ids = pt[perm[k * cfg.batch_size : (k + 1) * cfg.batch_size]].to(dist.device)
            mask, labels = torch.ones_like(ids), ids[:, 1:]
        else:
            epoch, k = divmod(step - n_pre, steps_per_epoch)
            perm = torch.randperm(len(train), generator=_gen(cfg.seed, epoch))
            rows = perm[k * cfg.batch_size : (k + 1) * cfg.batch_size].tolist()
            ids, mask, labels = _sft_batch([train[i] for i in rows], cfg.max_length, pad, dist.device)
        n_tokens = int((labels != -100).sum())
        t0 = time.time()
        loss_sum, lr = 0.0, sched.get_last_lr()[0]
        for m in range(gas):
            lo = (dist.rank * gas + m) * micro
            sl = slice(lo, lo + micro)
            logits = labelled_logits(engine, ids[sl], mask[sl], labels[sl]).float()  # [tokens, V]
            loss = losses.lm_cross_entropy(logits, labels[sl][labels[sl] != -100], num_tokens=n_tokens)
            _check_finite(loss, step, {}, out)
            engine.backward(loss * dist.world_size, scale_wrt_gas=False)
            engine.step()
            loss_sum += loss.item()
        state["step"] += 1
        log.write(
            step=state["step"],
            kind="train" if step >= n_pre else "pretrain",
            loss=_all_reduce_sum(loss_sum, dist),
            lr=lr,
            tokens_per_s=float(mask.sum()) / max(time.time() - t0, 1e-9),
        )
        pbar.update(1)
        sft_steps = state["step"] - n_pre
        if sft_steps > 0 and (sft_steps % eval_interval == 0 or state["step"] == total):
            v = {"val_loss": _val_loss(engine.module, val, cfg, pad, dist, micro)}
            if cfg.select_by == "rouge_l":
                from benchmark.config import GenerationSettings

                v |= validate(
                    engine.module,
                    None,
                    val,
                    tokenizer=tok,
                    eos_token_id=pad,
                    max_prompt_length=cfg.max_prompt_length,
                    settings=GenerationSettings(max_new_tokens=cfg.max_length - cfg.max_prompt_length),
                    batch_size=micro,
                    seed=cfg.seed,
                    dist=dist,
                )
            state["history"].append({"step": state["step"], **v})
            log.write(step=state["step"], kind="validation", **v)
            pbar.set_postfix(val_loss=f"{v['val_loss']:.3f}", refresh=False)
            best = state["best"]
            improved = best is None or (
                v["val_rouge_l"] > best["val_rouge_l"]
                if cfg.select_by == "rouge_l"
                else v["val_loss"] < best["val_loss"]
            )
            if improved:
                state["best"] = {"step": state["step"], **v}
                save_model(engine, tok, out / "model", dist, cfg.zero_stage, state["best"])
        if state["step"] % cfg.checkpoint_interval == 0 or state["step"] == total:
            save_checkpoint(engine, out / "checkpoints", state["step"], state, dist)
    pbar.close()
    log.close()
    # The selected model's validation perplexity and greedy ROUGE-L: the small scale is checked to order the four
    # sizes of a family by both (README "Small scale").
    from benchmark.config import GenerationSettings

    selected = load_model(str(out / "model"), dist.device, torch.float32, dropout=False)
    greedy = GenerationSettings(max_new_tokens=cfg.max_length - cfg.max_prompt_length, do_sample=False)
    v = validate(
        selected,
        None,
        val,
        tokenizer=tok,
        eos_token_id=pad,
        max_prompt_length=cfg.max_prompt_length,
        settings=greedy,
        batch_size=max(micro, 32),
        seed=cfg.seed,
        dist=dist,
    )
    state["selected"] = {
        "val_loss": state["best"]["val_loss"],
        "val_ppl": math.exp(state["best"]["val_loss"]),
        "val_rouge_l_greedy": v["val_rouge_l"],
        "parameters": selected.num_parameters(),
    }
    return _finish(
        out,
        state,
        dist,
        kind="sft",
        cfg=cfg,
        wall=time.time() - t_start,
        inputs={"model": source, "data": str(data_dir)},
    )


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def _json_overrides(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrainError(f"--set: not valid JSON ({exc}); quote it, e.g. --set '{{\"total_steps\": 100}}'") from None
    if not isinstance(value, dict):
        raise TrainError(f"--set: expected a JSON object of config fields, got {type(value).__name__}")
    return value


def _merged(scale_values: dict, override: dict) -> dict:
    """As plan._merged: a nested `generation` override updates the scale's one field by field."""
    out = scale_values | override
    if isinstance(scale_values.get("generation"), dict) and isinstance(override.get("generation"), dict):
        out["generation"] = scale_values["generation"] | override["generation"]
    return out


def _quiet_logs() -> None:
    """`--quiet`: no progress bars and no info logging from transformers or DeepSpeed (warnings that matter still
    reach stderr at ERROR level). DeepSpeed sets its logger's level when first imported, so it is imported here."""
    import logging

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # as init_distributed: no "Setting accelerator to CPU" warning
    from deepspeed.utils import logger as ds_logger
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    ds_logger.setLevel(logging.ERROR)
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)


def _final_report(model_dir: Path, kind: str) -> str:
    """Where the stage's model went and the validation that selected it (from OUT/summary.json)."""
    summary = json.loads((model_dir.parent / "summary.json").read_text())
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


def cmd_train(args: argparse.Namespace) -> int:
    sc = registry.scale(args.scale)
    if args.quiet:
        _quiet_logs()
    if args.kind == "minillm":
        cfg = for_scale(MiniLLMConfig, _merged(sc.minillm, _json_overrides(args.set)))
        model_dir = train_minillm(
            args.student,
            args.teacher,
            args.data,
            args.out,
            cfg,
            progress=not args.quiet,
            allow_larger_student=args.allow_larger_student,
        )
    else:
        extra = _json_overrides(args.set)
        if ":" in args.model and not Path(args.model).exists():
            family, size = args.model.split(":", 1)
            spec = sc.model(family, size)
            model = spec if not spec.from_hub else spec.base
            if spec.sft_lr is not None:
                extra = {"lr": spec.sft_lr} | extra
        else:
            model = args.model
            _check_model_path(model)  # before OUT is created
        cfg = for_scale(SFTConfig, sc.sft | extra)
        model_dir = train_sft(model, args.data, args.out, cfg, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(_final_report(Path(model_dir), args.kind))
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser(
        "train",
        help="run one training stage (SFT or a MiniLLM hop) on DeepSpeed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=["sft", "minillm"], help="sft: fine-tune one model; minillm: one distillation hop")
    p.add_argument("--data", required=True, help="prepared data directory (python -m benchmark data ...)")
    p.add_argument("--out", required=True, help="stage output directory (resumes if it holds a checkpoint)")
    p.add_argument("--student", help="minillm: the student's SFT init (directory or hub id)")
    p.add_argument("--teacher", help="minillm: the teacher (directory or hub id)")
    p.add_argument("--model", help="sft: a base model (directory, hub id) or FAMILY:SIZE of the scale, e.g. gpt2:120M")
    p.add_argument(
        "--scale",
        default="paper",
        choices=list(registry.SCALES),
        help="apply this scale's config overrides (default: paper-faithful values)",
    )
    p.add_argument(
        "--set",
        metavar="JSON",
        help="config overrides on top of the scale's (fields of config.SFTConfig or config.MiniLLMConfig), "
        "e.g. '{\"total_steps\": 100}'",
    )
    p.add_argument(
        "--allow-larger-student",
        action="store_true",
        help="minillm: accept a student with more parameters than its teacher (refused by default: usually swapped "
        "--student and --teacher)",
    )
    p.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # appended by the deepspeed launcher
    p.add_argument("--quiet", action="store_true", help="no progress bars and no DeepSpeed/transformers info logs")
    p.set_defaults(func=_checked_train)


def _checked_train(args: argparse.Namespace) -> int:
    if args.kind == "minillm" and not (args.student and args.teacher):
        raise TrainError("train minillm needs --student (the SFT init) and --teacher")
    if args.kind == "sft" and not args.model:
        raise TrainError("train sft needs --model (directory, hub id or FAMILY:SIZE)")
    return cmd_train(args)
