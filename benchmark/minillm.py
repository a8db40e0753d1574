"""One MiniLLM hop: distil a teacher into a student (its SFT init) by reverse KL. The plan's "distill" stage kind
runs this trainer (the kind's name is hashed into every stage id, so it stays).

What a hop does (minillm-reference.md §1.3; config fields in benchmark.config.MiniLLMConfig):
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

    train_minillm   setup (`minillm_engine`), then `run_phase` until total_steps, validating and keeping the best
    run_phase       one phase: prompts, rollouts (`collect_rollouts`), gather, ppo_epochs x `minillm_step`
    minillm_step    one optimizer step on a global mini-batch: advantages, whitening, the losses, DeepSpeed
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from benchmark import losses
from benchmark.config import MiniLLMConfig, deepspeed_config
from benchmark.data import PreparedData, load_prepared
from benchmark.engine import (
    Dist,
    MetricsLog,
    TrainError,
    all_reduce_sum,
    build_engine,
    check_finite,
    check_model_path,
    compute_dtype,
    frozen_teacher,
    init_distributed,
    load_checkpoint,
    load_model,
    parameter_count,
    save_checkpoint,
    seed_everything,
    seeded_generator,
    select_model,
    write_summary,
)
from benchmark.evaluate import SEQUENCE_KL_SEEDS, heldout_reverse_kl, sequence_reverse_kl, validate
from benchmark.sampling import forward_logits, response_logits, response_width, sample_prompts

# ----------------------------------------------------------------------------------------------------------------
# Rollouts
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
        w = response_width(self.response_mask)
        cut = {
            f: getattr(self, f)[:, :w] for f in ("response_ids", "response_mask", "old_logprobs", "weights", "rewards")
        }
        return dataclasses.replace(self, **cut)

    def to(self, device) -> Buffer:
        return Buffer(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def _concat(parts: list[Buffer]) -> Buffer:
    return Buffer(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Buffer)))


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
        buf = _concat(parts).take(order).to(dist.device)
    return dataclasses.replace(buf, row=torch.arange(len(buf), device=buf.row.device))


@torch.no_grad()
def rescore_rollouts(student, teacher, prompt_ids, prompt_mask, response_ids, response_mask, generation):
    """log q (student, logits / temperature) and log p (teacher, raw logits; None without a teacher) of the sampled
    tokens from one full teacher-forced forward of each model, 0 where the mask is 0: how the reference scores its
    rollouts (ref §1.3 step 3 `rollout_logprobs`, step 2 `reward.py`, step 5 `raw_logprobs`/`t_rollout_logprobs`,
    "the re-computation only absorbs fp16 noise"). These are the same forwards the PPO epochs run, so under half
    precision the stored log q equals the first epoch's log q_new and the clip sees ratio = w, not decode noise."""
    full, width = response_ids.shape[1], response_width(response_mask)
    response_ids, response_mask = response_ids[:, :width], response_mask[:, :width]
    args = (prompt_ids, prompt_mask, response_ids, response_mask)

    def padded(x):  # back to the stored width (0 beyond every response, as at masked positions)
        return F.pad(x * response_mask, (0, full - width))

    lq = losses.token_logprobs(response_logits(student, *args), response_ids, generation.temperature)
    if teacher is None:
        return padded(lq), None
    lp = losses.token_logprobs(response_logits(teacher, *args), response_ids)
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
    """Teacher-mixed rollouts for this rank's prompts (ref sampler.py::run_sample, §1.3 steps 1-7), each drawn
    with the generator of (seed, global draw index): independent of ranks and chunking. Returns this rank's
    buffer and the phase's length / reverse-KL logs."""
    # log p is needed for w and the rewards (mixing or the PG term). With "forward" scoring the log-probs come from
    # rescore_rollouts, so the teacher decodes beside the student only to mix; with "decode" scoring it decodes
    # whenever its log-probs are used. The single-step-only ablation without mixing samples the student alone.
    forward = cfg.rollout_logprobs == "forward"
    uses_log_p = cfg.teacher_mixed_alpha > 0 or cfg.policy_gradient
    decodes_teacher = cfg.teacher_mixed_alpha > 0 if forward else uses_log_p or cfg.log_student_sample
    parts, stats = [], {"mixed_lens": [], "stu_lens": [], "rev_kl": []}
    # the student decodes this rank's prompts in chunks, one generator per (seed, draw id)
    decode = functools.partial(
        sample_prompts,
        student,
        prompts,
        draw_ids,
        cfg.generation,
        eos_token_id=eos_token_id,
        max_prompt_length=cfg.max_prompt_length,
        batch_size=chunk_size,
        device=dist.device,
    )
    batches = decode(
        seed=cfg.seed,
        mix_model=teacher if decodes_teacher else None,
        mix_alpha=cfg.teacher_mixed_alpha,  # ref §1.3 step 1: teacher-mixed sampling
        return_logprobs=not forward,
    )
    for ids, p_ids, p_mask, out in batches:
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
        row = torch.zeros(len(ids), dtype=torch.long, device=dist.device)  # numbered after the gather
        parts.append(Buffer(p_ids, p_mask, out.response_ids, mask, lq, w * mask + (1 - mask), r, row))
        stats["mixed_lens"].append(out.lengths.float())
    if cfg.log_student_sample:
        # ref sampler.py lines 83-94: a pure-student sample of the same prompts, used only for logging. Decoded after
        # the rollouts, by its own sample_prompts call: on a GPU each call holds one static decoder (caches for
        # chunk_size x (max_prompt_length + max_new_tokens) of both models, its CUDA graphs) and frees it at its end,
        # so a phase never holds two. Generators (seed + 1, draw id), chunks as the rollouts'.
        for _, _, _, stu in decode(seed=cfg.seed + 1, mix_model=teacher, mix_alpha=0.0, return_logprobs=True):
            stats["stu_lens"].append(stu.lengths.float())
            stats["rev_kl"].append(((stu.student_logprobs - stu.teacher_logprobs) * stu.response_mask).sum(-1))
    return _concat(parts), {k: torch.cat(v).mean().item() for k, v in stats.items() if v}


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
            fresh = response_logits(teacher, sub.prompt_ids, sub.prompt_mask, sub.response_ids, sub.response_mask)
            for i, lg in zip(missing, fresh):
                self.rows[keys[i]] = lg
        # A row computed in a micro-batch of another width (`Buffer.trimmed`) is cut or zero-padded to this one's:
        # both widths hold all of the row's own response, and the positions beyond it are masked out.
        width = mb.response_ids.shape[1]
        return torch.stack([F.pad(self.rows[k][:width], (0, 0, 0, max(0, width - len(self.rows[k])))) for k in keys])


# ----------------------------------------------------------------------------------------------------------------
# One optimizer step
# ----------------------------------------------------------------------------------------------------------------


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
    s_logits = response_logits(engine, mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask)
    s_logits = s_logits.float() / cfg.generation.temperature
    stats, loss = {}, s_logits.new_zeros(())
    if cfg.policy_gradient:  # ref §1.3 "Policy-gradient term": PPO clip of the importance-weighted ratio
        logprobs = losses.token_logprobs(s_logits, mb.response_ids)
        pg = losses.ppo_clip_loss(
            logprobs, mb.old_logprobs, mb.weights, advantages, mb.response_mask, clip=cfg.cliprange, num_tokens=n_tokens
        )
        loss, stats["pg_loss"] = loss + pg, pg.item()
    if teacher_cache is not None:
        t_logits = teacher_cache.logits(teacher, mb)
    else:
        with torch.no_grad():
            t_logits = response_logits(teacher, mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask)
    # ref §1.3 "Single-step term". The teacher's logits stay in their dtype: single_step_kl upcasts them by chunk.
    reg = losses.single_step_kl(s_logits, t_logits, mb.response_mask, num_tokens=n_tokens, chunk_size=cfg.kl_chunk_size)
    stats["reg_loss"] = reg.item()
    if cfg.single_step:
        loss = loss + reg
    if pt_batch is not None:  # ref §1.3 "PT loss": (1 - kd_ratio) CE + kd_ratio soft-CE against the teacher
        inp, labels = pt_batch[:, :-1], pt_batch[:, 1:]
        ones = torch.ones_like(inp)
        s_pt = forward_logits(engine, inp, ones).float()
        with torch.no_grad():
            t_pt = forward_logits(teacher, inp, ones).float()
        pt = losses.pt_loss(s_pt, t_pt, labels, cfg.kd_ratio, num_tokens=n_pt_tokens)
        loss, stats["pt_loss"] = loss + cfg.pt_coef * pt, pt.item()
    return loss, stats


@functools.lru_cache(maxsize=2)  # a step spans two epochs at most (unless the corpus is shorter than a batch)
def _pt_epoch_order(n_rows: int, epoch: int) -> torch.Tensor:
    # The reference's PT loader: DistributedSampler(shuffle=True, drop_last=True) built without `seed=`, so epoch e
    # is randperm(n) under a generator seeded 0 + e (LMOps minillm/minillm/pipelines.py:214, set_epoch at
    # trainer.py:252). `--seed-lm` never reaches it, so the order is the same for every training seed, as there.
    return torch.randperm(n_rows, generator=torch.Generator().manual_seed(epoch)).to(torch.int32)


def pt_step_rows(n_rows: int, step: int, batch_size: int) -> torch.Tensor:
    """The global PT row indices of optimizer step `step` (int64 [batch_size]): positions step*B .. step*B+B-1 of
    the epoch permutations laid end to end, epoch e being randperm(n_rows) seeded 0 + e (the reference's sampler).

    The reference's global batch at a step is the same block of its permutation, split over ranks; every rank here
    computes all of it, so the rows do not depend on the world size. Unlike the reference, whose loader drops each
    epoch's last incomplete micro-batches (a count that depends on the world size), a batch may straddle two
    epochs; at paper scale no run finishes an epoch (17M+ windows, under 400k drawn)."""
    draws = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs, positions = draws // n_rows, draws % n_rows
    rows = torch.empty_like(draws)
    for e in epochs.unique().tolist():
        sel = epochs == e
        rows[sel] = _pt_epoch_order(n_rows, e)[positions[sel]].long()
    return rows


def pt_batch(pt_chunks, step: int, batch_size: int, seq_len: int) -> torch.Tensor:
    """Step `step`'s PT rows (`pt_step_rows`) of `pt_chunks` (a tensor, or `PreparedData.pt_chunks()`'s memory-
    mapped array-like), cut to `seq_len` tokens, int64 [batch_size, <= seq_len]: only these rows are read."""
    rows = pt_step_rows(len(pt_chunks), step, batch_size)
    if isinstance(pt_chunks, torch.Tensor):
        return pt_chunks[rows, :seq_len].long()
    return torch.from_numpy(np.asarray(pt_chunks[rows.numpy()])[:, :seq_len].astype(np.int64))


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
    the micro-batch token-mean shares, i.e. the global token means). `step`: the 0-based optimizer step (it picks
    the PT rows); `out`: the stage directory a non-finite loss is reported in; `teacher_cache`: the phase's
    TeacherLogitsCache (None recomputes the teacher's logits, as the reference does)."""
    micro, gas = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
    # Advantages of the whole global mini-batch (ref §1.3 "Advantage": length-normalised, discounted, whitened):
    # every rank holds it, so whitening statistics are the reference's all-rank statistics (ref utils.py), over the
    # mini-batch or over its groups of whiten_group_size rollouts, without depending on the world size.
    adv = losses.minillm_advantages(mb.rewards, mb.response_mask, cfg.gamma, cfg.length_normalization)
    adv = losses.whiten(
        adv, mb.response_mask, include_padding=cfg.whiten_include_padding, group_size=cfg.whiten_group_size
    )
    n_tokens = mb.response_mask.sum().item()
    pt_rows, n_pt = None, 1.0
    if pt_chunks is not None:  # the PT batch of this step: as many 512-token chunks as rollouts (ref §1.3)
        pt_rows = pt_batch(pt_chunks, step, cfg.batch_size, cfg.pt_seq_length).to(dist.device)
        n_pt = cfg.batch_size * (pt_rows.shape[1] - 1)
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
        check_finite(loss, step, st, out)
        # DeepSpeed averages gradients over ranks; the loss is already the rank's share of the global token mean,
        # so undo the averaging and skip DeepSpeed's 1/GA scaling.
        engine.backward(loss * dist.world_size, scale_wrt_gas=False)
        engine.step()
        for key, value in st.items():
            stats[key] = stats.get(key, 0.0) + value
    return {k: all_reduce_sum(v, dist) for k, v in stats.items()}


# ----------------------------------------------------------------------------------------------------------------
# One phase
# ----------------------------------------------------------------------------------------------------------------


def phase_prompts(prompts: list[list[int]], phase: int, cfg: MiniLLMConfig, dist: Dist):
    """This rank's prompts of `phase` and their global draw indices. The prompt sampler takes a fresh seeded
    permutation per pass over the data; phase k takes draws k*R .. (k+1)*R - 1, rank r every W-th from r."""
    n = len(prompts)
    draws = list(range(phase * cfg.rollouts_per_phase, (phase + 1) * cfg.rollouts_per_phase))
    mine = draws[dist.rank :: dist.world_size][: cfg.rollouts_per_phase // dist.world_size]
    order = {}
    for d in mine:
        if d // n not in order:
            order[d // n] = torch.randperm(n, generator=seeded_generator(cfg.seed, d // n))
    return [prompts[order[d // n][d % n]] for d in mine], mine


def run_phase(
    engine,
    teacher,
    prompts: list[list[int]],
    phase: int,
    cfg: MiniLLMConfig,
    dist: Dist,
    *,
    eos_token_id: int,
    out: Path,
    first_step: int = 0,
    pt_chunks=None,  # a tensor or PreparedData.pt_chunks()'s memory-mapped rows (`pt_batch`)
    on_rollouts: Callable[[Buffer], None] | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """One MiniLLM phase: this phase's prompts (`phase_prompts`), teacher-mixed rollouts (`collect_rollouts`), the
    global buffer (`gather_buffer`), then `ppo_epochs` passes over it in shuffled global mini-batches of
    `batch_size` (drop_last, ref storages.py), one `minillm_step` each. Steps are numbered on from `first_step`;
    the phase ends early at `cfg.total_steps`. `teacher` is any module taking the model's forward arguments;
    `out` is the stage directory a non-finite loss is reported in.

    `on_rollouts(buffer)` is called once the buffer is gathered, `on_step(record)` after each optimizer step, with
    the record the trainer logs: step (1-based), phase, the losses, reward, lr, the rollout stats, step_s (the
    step's wall time) and tokens_per_s. Nothing else is logged, validated or saved here. Returns rollout_s,
    phase_s, generated_tokens (rolled out), response_tokens (trained on) and the step records."""
    t0 = time.perf_counter()
    mine, draw_ids = phase_prompts(prompts, phase, cfg, dist)
    engine.module.eval()
    micro = engine.train_micro_batch_size_per_gpu()
    local, roll_stats = collect_rollouts(engine.module, teacher, mine, draw_ids, cfg, eos_token_id, dist, micro)
    buf = gather_buffer(local, dist)
    rollout_s = time.perf_counter() - t0
    if on_rollouts is not None:
        on_rollouts(buf)
    cache = (
        TeacherLogitsCache(lockstep=cfg.zero_stage == 3 and dist.world_size > 1) if cfg.cache_teacher_logits else None
    )
    step, records, response_tokens = first_step, [], 0
    for ppo_epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(len(buf), generator=seeded_generator(cfg.seed_ppo, phase, ppo_epoch))
        for start in range(0, len(buf) - cfg.batch_size + 1, cfg.batch_size):
            if step >= cfg.total_steps:
                break
            t_step = time.perf_counter()
            mb = buf.take(perm[start : start + cfg.batch_size])
            lr = engine.lr_scheduler.get_last_lr()[0]  # the rate this optimizer step uses
            step_losses = minillm_step(engine, teacher, mb, cfg, step, pt_chunks, dist, out, cache)
            step_s = time.perf_counter() - t_step
            step += 1
            tokens, valid = mb.response_mask.sum().item(), mb.response_mask.bool()
            response_tokens += int(tokens)
            record = {
                "step": step,
                "kind": "train",
                "phase": phase,
                **step_losses,
                "reward": mb.rewards[valid].mean().item() if valid.any() else 0.0,
                "lr": lr,
                **roll_stats,
                "step_s": step_s,
                "tokens_per_s": tokens / max(step_s, 1e-9),
            }
            records.append(record)
            if on_step is not None:
                on_step(record)
    return {
        "rollout_s": rollout_s,
        "phase_s": time.perf_counter() - t0,
        "generated_tokens": int(buf.response_mask.sum().item()),
        "response_tokens": response_tokens,
        "steps": records,
    }


# ----------------------------------------------------------------------------------------------------------------
# The hop: setup, phases, selection
# ----------------------------------------------------------------------------------------------------------------


def _check_pair(
    student,
    teacher,
    student_path: str,
    teacher_path: str,
    data: PreparedData,
    cfg: MiniLLMConfig,
    *,
    allow_larger_student: bool,
) -> None:
    """Clear errors before any compute: a chain must share one vocabulary and one tokenizer (ref §3.3), each model
    must hold every token id of the data's tokenizer and have positions for the hop's sequences, and the student
    must not be larger than its teacher."""
    from transformers import AutoTokenizer

    sv, tv = student.config.vocab_size, teacher.config.vocab_size
    if sv != tv:
        raise TrainError(
            f"student {student_path} has vocabulary {sv}, teacher {teacher_path} has {tv}: a MiniLLM "
            "hop needs one shared vocabulary (rewards and the single-step KL are per token)"
        )
    sp, tp = parameter_count(student), parameter_count(teacher)
    if sp > tp and not allow_larger_student:
        raise TrainError(
            f"student {student_path} has {sp:,} parameters, more than its teacher {teacher_path} ({tp:,}): "
            "distillation goes from a larger teacher to a smaller student, so --student and --teacher are probably "
            "swapped; pass --allow-larger-student (train_minillm(..., allow_larger_student=True)) if this is meant"
        )
    need = {"max_prompt_length + max_new_tokens": cfg.max_prompt_length + cfg.generation.max_new_tokens}
    if cfg.pt_coef > 0:
        need["pt_seq_length"] = cfg.pt_seq_length
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
        for what, n in need.items():
            if positions is not None and positions < n:
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


def _pt_chunks(data: PreparedData, cfg: MiniLLMConfig):
    """The pre-training chunks of the PT loss, memory-mapped (None when pt_coef is 0); `pt_batch` reads a step's
    rows and cuts them to pt_seq_length."""
    if cfg.pt_coef == 0:
        return None
    chunks = data.pt_chunks()
    if chunks is None:
        raise TrainError(
            f"{data.path} has no pre-training chunks (no pt.npy, no indexed corpus) but pt_coef={cfg.pt_coef}: "
            "prepare them with `python -m benchmark data pt ...` or set pt_coef=0 (the 'no PT loss' ablation)"
        )
    return chunks


def minillm_engine(student, cfg: MiniLLMConfig, world_size: int):
    """The student's DeepSpeed engine with the reference's optimizer and schedule: AdamW over every parameter (ref
    trainer.py::setup_optimizer) and `constant_trm`, i.e. transformers' get_constant_schedule_with_warmup, lr x
    s / warmup_steps, then constant. Its first optimizer step therefore runs at lr 0; mirrored on purpose."""
    opt = torch.optim.AdamW(
        student.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / cfg.warmup_steps if s < cfg.warmup_steps else 1.0)
    return build_engine(student, opt, sched, deepspeed_config(cfg, world_size))


@dataclass(frozen=True)
class _Hop:
    """What every validation and measure of a hop needs, fixed once its engine is built."""

    engine: object
    teacher: object
    data: PreparedData
    cfg: MiniLLMConfig
    dist: Dist
    out: Path
    log: MetricsLog

    def validate(self, state: dict) -> dict:
        """Validation ROUGE-L and reverse KL of the current student (ref §1.5), added to the history and the log."""
        v = validate(
            self.engine.module,
            self.teacher,
            self.data.split("valid")[: self.cfg.val_examples],
            tokenizer=self.data.tokenizer,
            eos_token_id=self.data.eos_token_id,
            max_prompt_length=self.cfg.max_prompt_length,
            settings=self.cfg.generation,
            batch_size=self.engine.train_micro_batch_size_per_gpu(),
            seed=self.cfg.seed,
            dist=self.dist,
        )
        state["history"].append({"step": state["step"], **v})
        self.log.write(step=state["step"], kind="validation", **v)
        return v

    def select(self, state: dict) -> None:
        """Validation and best-checkpoint selection by validation ROUGE-L (ref §1.5, paper B.1). With
        `select_interval`, only the validations at its multiples and at the last step are candidates (the models a
        reference run saves); the best of every validation is then recorded as state["best_of_validations"]."""
        v = self.validate(state)
        step, k = state["step"], self.cfg.select_interval
        if k is not None:
            seen = state.get("best_of_validations")
            if seen is None or v["val_rouge_l"] > seen["val_rouge_l"]:
                state["best_of_validations"] = {"step": step, **v}
            if step % k and step != self.cfg.total_steps:
                return
        select_model(
            self.engine,
            self.data.tokenizer,
            state,
            v,
            metric="val_rouge_l",
            out=self.out,
            dist=self.dist,
            zero_stage=self.cfg.zero_stage,
        )

    def measure_reverse_kl(self, state: dict, model, into: str) -> None:
        """The student's reverse KL to the teacher on the validation split (its first `kl_examples` prompts),
        teacher-forced on the gold responses and on its own samples, as state["heldout_rev_kl"][into] and
        state["sequence_rev_kl"][into] ("init": before the hop, "selected": after)."""
        heldout = self.data.split("valid")[: self.cfg.kl_examples]
        eos, batch = self.data.eos_token_id, self.engine.train_micro_batch_size_per_gpu()
        teacher_forced = state.setdefault("heldout_rev_kl", {"examples": len(heldout)})
        sampled = state.setdefault("sequence_rev_kl", {"examples": len(heldout), "seeds": list(SEQUENCE_KL_SEEDS)})
        teacher_forced[into] = heldout_reverse_kl(model, self.teacher, heldout, eos, self.cfg.max_prompt_length, batch)
        sampled[into] = sequence_reverse_kl(
            model, self.teacher, heldout, eos, self.cfg.max_prompt_length, self.cfg.generation, SEQUENCE_KL_SEEDS, batch
        )


def _after_step(hop: _Hop, state: dict, pbar, record: dict) -> None:
    """The trainer's `on_step`: log the step, and validate and select every eval_interval steps and at the end."""
    state["step"] = record["step"]
    hop.log.write(**record)
    pbar.update(1)
    pbar.set_postfix(reg=f"{record.get('reg_loss', 0):.3f}", refresh=False)
    if state["step"] % hop.cfg.eval_interval == 0 or state["step"] == hop.cfg.total_steps:
        hop.select(state)


def _checkpoint_due(step: int, cfg: MiniLLMConfig) -> bool:
    """At the end of the phase that crosses a multiple of checkpoint_interval, and at the end."""
    crossed = step // cfg.checkpoint_interval != (step - cfg.steps_per_phase) // cfg.checkpoint_interval
    return crossed or step >= cfg.total_steps


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
    for path in (student_path, teacher_path):
        check_model_path(path)
    out, dist = Path(out_dir), init_distributed()
    seed_everything(cfg.seed, dist.rank)
    student = load_model(student_path, dist.device, torch.float32, dropout=False)
    teacher = frozen_teacher(teacher_path, dist, cfg.precision, cfg.zero_stage)
    data = load_prepared(data_dir, family=student.config.model_type)
    _check_pair(student, teacher, student_path, teacher_path, data, cfg, allow_larger_student=allow_larger_student)
    pt_chunks = _pt_chunks(data, cfg)
    if dist.is_main:  # only once the inputs are known to fit: a refused hop leaves no OUT behind
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    engine = minillm_engine(student, cfg, dist.world_size)
    resumed = load_checkpoint(engine, out, dist)
    log = MetricsLog(out / "metrics.jsonl", dist.is_main, resumed_step=resumed and resumed["step"])
    hop = _Hop(engine, teacher, data, cfg, dist, out, log)
    state = resumed or {"step": 0, "phase": 0, "best": None, "history": []}
    if state["step"] == 0 and not state["history"]:  # the init's validation and reverse KL: the "before" of the hop
        hop.validate(state)
        hop.measure_reverse_kl(state, engine.module, "init")

    prompts = [ex.prompt_ids for ex in data.split("train")]
    bar = dict(desc="minillm steps", disable=not (progress and dist.is_main), dynamic_ncols=True)
    pbar = tqdm(total=cfg.total_steps, initial=state["step"], **bar)
    t_start = time.time()
    while state["step"] < cfg.total_steps:
        phase = run_phase(
            engine,
            teacher,
            prompts,
            state["phase"],
            cfg,
            dist,
            eos_token_id=data.eos_token_id,
            out=out,
            first_step=state["step"],
            pt_chunks=pt_chunks,
            on_step=functools.partial(_after_step, hop, state, pbar),
        )
        times = {k: phase[k] for k in ("rollout_s", "phase_s", "response_tokens")}
        log.write(step=state["step"], kind="phase", phase=state["phase"], **times)
        state["phase"] += 1
        if _checkpoint_due(state["step"], cfg):
            save_checkpoint(engine, out / "checkpoints", state["step"], state, dist)
    pbar.close()
    log.close()
    # The hop's "after": the selected model, in the stage's compute dtype (half on GPU, beside the engine).
    selected = load_model(str(out / "model"), dist.device, compute_dtype(cfg.precision, dist.device), dropout=False)
    hop.measure_reverse_kl(state, selected, "selected")
    inputs = {"student": student_path, "teacher": teacher_path, "data": str(data_dir)}
    return write_summary(out, state, dist, kind="minillm", cfg=cfg, wall=time.time() - t_start, inputs=inputs)
