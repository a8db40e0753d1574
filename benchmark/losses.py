"""MiniLLM losses and advantage maths as pure tensor functions: no model, no I/O, no config objects.

Each function names the place of microsoft/LMOps `minillm/` it mirrors (described in
`shared/research/minillm-reference.md`, cited "ref §N") and every quirk kept on purpose. The trainer is thin glue:

    r = rewards(log_p, log_q, mask, reward_scaling=cfg.reward_scaling, cliprange_reward=cfg.cliprange_reward)
    w = importance_weights(log_q, log_p, cfg.teacher_mixed_alpha)                      # r and w: stored per rollout
    A = minillm_advantages(r, mask, cfg.gamma, cfg.length_normalization)
    A = whiten(A, mask, include_padding=cfg.whiten_include_padding)
    loss = ppo_clip_loss(token_logprobs(logits, response), log_q, w, A, mask, clip=cfg.cliprange, num_tokens=n_global)
    loss += single_step_kl(logits, teacher_logits, mask, n_global)
    loss += cfg.pt_coef * pt_loss(pt_logits, pt_teacher_logits, pt_labels, cfg.kd_ratio, n_pt_global)

Conventions shared by every function:
- Response tensors are `[batch, response_len]`, logits `[batch, len, vocab]`, already aligned: position t of the
  logits predicts token t (the caller slices `query_len-1 : query_len+response_len-1`, ref `losses.py::ppo_loss`).
- `mask` (bool, int or float) is 1 on response tokens inside the loss. Ref §1.3 "Mask convention": it is the attention
  mask of the input position predicting token t, so the EOS token is inside and everything after it is outside.
- Arithmetic runs in at least float32 (float64 inputs stay float64, which the gradient checks use); the reference
  runs several of these in the fp16 model dtype, and we upcast on purpose.
- `num_tokens` (losses): the denominator of the token mean. None = the valid tokens of the tensors given, which is
  the reference's per-micro-batch mean. The trainer passes the valid-token count of the whole global mini-batch
  (all micro-batches, all ranks), so that summing the micro-batch losses (gradient accumulation, DDP averaging
  scaled by the world size) gives the true token mean of the mini-batch whatever the micro-batch split.
- Every setting that has a reference value (reward scaling and clip, whitening, PPO clip) is a required keyword
  argument with no default: a caller states the value it uses (the trainer passes its `MiniLLMConfig` fields), so a
  wrong default cannot silently reach training.
- Logits are assumed finite. The reference masks `-inf` vocabulary entries (`inf_mask`, produced only by top-k/top-p
  warpers during sampling); every MiniLLM script samples with top_k 0 and top_p 1.0, so no entry is ever `-inf` and
  that masking is not mirrored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100  # label value excluded from the PT losses (torch.nn.CrossEntropyLoss default)
WHITEN_EPS = 1e-8  # ref utils.py::whiten: (x - mean) * rsqrt(var + 1e-8)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32, or float64 when the input already is (fp16/bf16 are upcast)."""
    return torch.promote_types(t.dtype, torch.float32)


def _token_mean(per_token: torch.Tensor, mask: torch.Tensor, num_tokens) -> torch.Tensor:
    """sum(per_token * mask) / num_tokens, num_tokens defaulting to mask.sum() (ref: `sum(x * mask) / mask.sum()`)."""
    mask = mask.to(per_token.dtype)
    if num_tokens is None:
        num_tokens = mask.sum()
    return (per_token * mask).sum() / num_tokens


# --------------------------------------------------------------------------- rollout quantities (stored per token)


def rewards(
    teacher_logprobs: torch.Tensor,
    student_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    reward_scaling: float,
    cliprange_reward: float,
) -> torch.Tensor:
    """Per-token reward r_t = clip((log p(y_t) - log q(y_t)) / reward_scaling, -cliprange_reward, +cliprange_reward).

    Mirrors ref `sampler.py::run_sample` lines 122-131 (ref §1.3 step 7): `rewards = t_rewards + ent_rewards` with
    `ent_rewards = -logprobs`, then `/= reward_scaling`, then clamp. The reference gets 0 at padded positions
    because both log-probs are zeroed there (`reward.py`, `utils.py::get_log_probs`); here positions with mask 0
    are set to exactly 0 whatever the log-probs hold.
    Quirk kept: the script value `cliprange_reward = 100` (effectively no clip); the argparse default 1 would clip
    every reward to [-1, 1] (`MiniLLMConfig.cliprange_reward`).
    """
    dtype = _compute_dtype(teacher_logprobs)
    r = (teacher_logprobs.to(dtype) - student_logprobs.to(dtype)) / reward_scaling
    r = r.clamp(-cliprange_reward, cliprange_reward)
    return torch.where(mask.bool(), r, torch.zeros_like(r))


def importance_weights(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_mixed_alpha: float
) -> torch.Tensor:
    """w_t = q(y_t) / ((1 - a) q(y_t) + a p(y_t)), a = teacher_mixed_alpha; exactly 1 when a == 0.

    Mirrors ref `sampler.py::run_sample` lines 111-115 (ref §1.3 step 6): `mix = (1-a) exp(log q) + a exp(log p)`,
    `w = exp(log q - log mix)`. Computed in log space instead,
        log w = log q - logaddexp(log(1-a) + log q, log(a) + log p),
    which is the same number but cannot underflow to 0/0 for very unlikely tokens.
    Only the current step's weight is used (the paper's product over steps is approximated by it, ref §1.2).
    Masking: none is applied. At padded positions the reference's log-probs are 0, which gives w = 1; other values
    give some finite weight. Either way the PG loss multiplies those positions by mask 0.
    """
    dtype = _compute_dtype(student_logprobs)
    log_q = student_logprobs.to(dtype)
    if teacher_mixed_alpha == 0:
        return torch.ones_like(log_q)  # ref: "Without alpha, w = 1"
    log_p = teacher_logprobs.to(dtype)
    a = teacher_mixed_alpha
    log_mix = torch.logaddexp(log_q + math.log1p(-a), log_p + math.log(a))
    return torch.exp(log_q - log_mix)


# --------------------------------------------------------------------------- advantage


def minillm_advantages(
    rewards: torch.Tensor, mask: torch.Tensor, gamma: float, length_normalization: bool = True
) -> torch.Tensor:
    """A_t = (sum_{t' >= t} gamma^(t'-t) r_t') / n_t, before whitening.

    n_t = max(number of mask=1 positions in [t, end), 1): the valid tokens from t to the end INCLUDING t. Positions
    after EOS (mask 0, nothing valid after them) therefore get n = 1, and their reward is taken as 0, so their
    advantage is 0 (it still enters the whitening statistics when `include_padding=True`).
    With `length_normalization=False` there is no division (an ablation; the reference always divides).

    Mirrors ref `losses.py::_get_advantages_and_returns` (ref §1.3 "Advantage"); quirks kept on purpose:
    - the sum includes r_t itself (paper: the long-term term starts at t+1);
    - it is discounted by gamma = 0.95 (paper: undiscounted);
    - n_t counts t itself (paper: T - t - 1), undiscounted (TRL divides by sum gamma^i, ref §7.3);
    - the normalisation is unconditional in the reference (`--length-norm` only affects logging).
    Decisions: rewards at mask-0 positions are replaced by 0 (a no-op on the reference's stored rewards, which are 0
    there). For a mask with holes (never produced by the sampler), a mask-0 position with valid tokens after it gets
    n = that count, exactly as the reference's `lens = mask - cumsum(mask) + total; lens[lens == 0] = 1`.
    The result carries no gradient (rewards are stored constants; the reference `.detach()`es it).
    """
    valid = mask.bool()
    r = torch.where(valid, rewards.detach().to(_compute_dtype(rewards)), 0.0)
    running = torch.zeros_like(r[:, 0])
    returns = torch.empty_like(r)
    for t in range(r.shape[1] - 1, -1, -1):  # same accumulation order as the reference loop
        running = r[:, t] + gamma * running
        returns[:, t] = running
    if not length_normalization:
        return returns
    remaining = valid.to(r.dtype).flip(-1).cumsum(-1).flip(-1)  # valid tokens in [t, end)
    return returns / remaining.clamp_min(1.0)


def whiten(
    values: torch.Tensor, mask: torch.Tensor, *, include_padding: bool, group_size: int | None = None
) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8), with mean and variance over the whole batch given (ref `utils.py::whiten` with
    `shift_mean=True`, ref §1.3 "Advantage").

    - `include_padding=True` (faithful, `MiniLLMConfig.whiten_include_padding`): statistics over EVERY element of
      `values`, padded positions included (ref `utils.py::whiten` over the padded B x 256 advantage tensor, whose
      padding holds zeros). `mask` is then unused.
    - `include_padding=False`: statistics over mask == 1 elements only.
    - Variance is the biased one, mean of squared deviations (divide by the count). This is what the reference
      computes in every run: DeepSpeed always initialises torch.distributed, so `whiten` takes the
      `get_global_statistics` branch (`sum((x - global_mean)^2) / count`); its `torch.var_mean` (unbiased) fallback
      is never reached.
    - The reference all-reduces the statistics over the ranks. Here every rank holds the whole global mini-batch
      (the trainer gathers it), so local statistics are the global ones, for any world size. Statistics are
      accumulated in float64.
    - `group_size` (`MiniLLMConfig.whiten_group_size`): separate statistics for each group of that many
      consecutive rows (the reference's per-micro-step all-reduce over per-GPU batch x ranks rollouts); None = one
      group of every row.
    Every element is transformed, masked ones too; the losses multiply them by mask 0. Statistics carry no
    gradient. At least one counted element per group is required (else 0/0 gives NaN).
    """
    rows = values.shape[0]
    g = rows if group_size is None else group_size
    if rows % g:
        raise ValueError(f"whiten: {rows} rows do not split into groups of {g}")
    x = values.to(torch.float64).reshape(rows // g, -1)  # one row per group
    counted = (torch.ones_like(values, dtype=torch.bool) if include_padding else mask.bool()).reshape(rows // g, -1)
    with torch.no_grad():
        xd = torch.where(counted, x.detach(), 0.0)
        count = counted.sum(1, keepdim=True).to(torch.float64)
        mean = xd.sum(1, keepdim=True) / count
        var = torch.where(counted, (xd - mean) ** 2, 0.0).sum(1, keepdim=True) / count
    return ((x - mean) * torch.rsqrt(var + WHITEN_EPS)).reshape(values.shape).to(values.dtype)


# --------------------------------------------------------------------------- policy-gradient term


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    weights: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float,
    num_tokens=None,
) -> torch.Tensor:
    """Token mean of max(-A rho, -A clamp(rho, 1 - clip, 1 + clip)), rho = exp((log q_new - log q_old) mask) w.

    Mirrors ref `losses.py::_pg_loss` (ref §1.3 "Policy-gradient term"). Since w = q_old / p_mix (teacher-mixed
    sampling), rho = q_new / p_mix is the paper's rho_t, and the pessimistic PPO clip is applied to this
    importance-weighted ratio; with w != 1 the band can bind even at rho_new/old = 1 (kept on purpose).
    The log-ratio is multiplied by the mask before exp (so rho = w at padded positions), as the reference.
    Reduction sum(loss * mask) / num_tokens; num_tokens None = mask.sum() (the reference's micro-batch mean).
    `old_logprobs`, `weights` and `advantages` are constants of the surrogate and are detached; the gradient flows
    through `logprobs` only, and is exactly 0 where the clipped branch is selected.
    """
    dtype = _compute_dtype(logprobs)
    log_ratio = (logprobs.to(dtype) - old_logprobs.detach().to(dtype)) * mask.to(dtype)
    ratio = torch.exp(log_ratio) * weights.detach().to(dtype)
    a = advantages.detach().to(dtype)
    per_token = torch.max(-a * ratio, -a * ratio.clamp(1.0 - clip, 1.0 + clip))
    return _token_mean(per_token, mask, num_tokens)


# --------------------------------------------------------------------------- single-step term and KL diagnostics


def _reverse_kl_per_position(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(q || p) = sum_v q(v) (log q(v) - log p(v)) at every position: [..., vocab] -> [...]; teacher detached."""
    dtype = _compute_dtype(student_logits)
    log_q = F.log_softmax(student_logits.to(dtype), dim=-1)
    log_p = F.log_softmax(teacher_logits.detach().to(dtype), dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def single_step_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    num_tokens=None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Token mean over the mask of the closed-form KL(q_theta(.|ctx) || p(.|ctx)) = sum_v q(v) (log q(v) - log p(v)).

    Mirrors ref `losses.py::_reg_loss` with `utils.py::get_x_entropy - get_entropy` (ref §1.3 "Single-step term"):
    cross-entropy(q, p) - entropy(q) per position, `sum(kl * mask) / mask.sum()`. Logits [batch, len, vocab],
    mask [batch, len]. Log-softmax in float32 (or float64); the teacher is detached, so the gradient flows through
    the student only (the reference runs the teacher under no_grad).
    Quirk kept on purpose: NO importance weight w_t, although the paper's formula has one (LMOps issue #255: the
    author says dropping it was deliberate). Logits are the temperature-divided ones the PG term uses.
    `chunk_size`: process the sequence dimension in chunks of this many positions, each under activation
    checkpointing when a gradient is needed, so only one chunk's float32 [batch, chunk, vocab] intermediates are
    alive at a time (they are recomputed in backward). Same value and gradient as without chunks.
    """
    if chunk_size is None:
        kl = _reverse_kl_per_position(student_logits, teacher_logits)
    else:
        parts = []
        for start in range(0, student_logits.shape[1], chunk_size):
            s = student_logits[:, start : start + chunk_size]
            t = teacher_logits[:, start : start + chunk_size]
            if torch.is_grad_enabled() and s.requires_grad:
                parts.append(checkpoint(_reverse_kl_per_position, s, t, use_reentrant=False))
            else:
                parts.append(_reverse_kl_per_position(s, t))
        kl = torch.cat(parts, dim=1)
    return _token_mean(kl, mask, num_tokens)


def sequence_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence sum over valid positions of the exact per-position KL(q || p): [batch].

    A diagnostic (the trainer's reverse-KL logs; the small-scale check "each hop lowers its student's reverse KL").
    Not a reference mirror: the reference's `rev_kl` log (`utils.py::get_rev_kl`) is the sampled-token estimator
    exp(l) - 1 - l with l = log p - log q; this is the closed form over the vocabulary, so it has no sampling noise.
    Divide by mask.sum(-1) for the per-token value. Teacher detached.
    """
    kl = _reverse_kl_per_position(student_logits, teacher_logits)
    return (kl * mask.to(kl.dtype)).sum(-1)


# --------------------------------------------------------------------------- PT loss (pre-training corpus batch)


def lm_cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor, num_tokens=None) -> torch.Tensor:
    """sum over labels != -100 of -log q(label) / num_tokens (default: the number of such labels).

    Mirrors the `lm_loss` of ref `losses.py::pt_loss` (`nn.CrossEntropyLoss(ignore_index=-100)`, a token mean), in
    float32. Logits [batch, len, vocab] and labels [batch, len] are already aligned: position i predicts labels[i];
    no shift is done here.
    """
    logits = student_logits.to(_compute_dtype(student_logits))
    total = F.cross_entropy(logits.flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    if num_tokens is None:
        num_tokens = (labels != IGNORE_INDEX).sum()
    return total / num_tokens


def soft_cross_entropy(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, num_tokens=None
) -> torch.Tensor:
    """Token mean over labels != -100 of -sum_v p_teacher(v) log q(v) (forward KL up to the teacher's entropy).

    Mirrors the `distil_loss` of ref `losses.py::pt_loss` (softmax/log_softmax in float32, masked by
    `labels != -100`). Labels only select positions; logits aligned as in `lm_cross_entropy`. Teacher detached.
    """
    dtype = _compute_dtype(student_logits)
    p = F.softmax(teacher_logits.detach().to(dtype), dim=-1)
    log_q = F.log_softmax(student_logits.to(dtype), dim=-1)
    per_token = -(p * log_q).sum(-1)
    return _token_mean(per_token, labels != IGNORE_INDEX, num_tokens)


def pt_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    kd_ratio: float = 0.5,
    num_tokens=None,
) -> torch.Tensor:
    """(1 - kd_ratio) lm_cross_entropy + kd_ratio soft_cross_entropy, both token means over labels != -100.

    Mirrors ref `losses.py::pt_loss` (ref §1.3 "PT loss"). Quirk kept: the paper calls L_PT plain LM loss, but the
    code mixes in word-level KD from the teacher on the PT corpus; kd_ratio 0.5 is the paper's "weight of the
    distillation loss" (`MiniLLMConfig.kd_ratio`). Both parts share the same `num_tokens` denominator.
    """
    ce = lm_cross_entropy(student_logits, labels, num_tokens)
    soft = soft_cross_entropy(student_logits, teacher_logits, labels, num_tokens)
    return (1.0 - kd_ratio) * ce + kd_ratio * soft


# --------------------------------------------------------------------------- log-probs of given tokens


def _gather_minus_logsumexp(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[token] at each position: logits [batch, len, vocab], tokens [batch, len].

    Computed as logits[token] - logsumexp(logits), so no [batch, len, vocab] log-softmax tensor is built. fp16/bf16
    logits are upcast to float32 one sequence at a time (the float32 copy is [len, vocab], not the whole batch);
    float32/float64 logits are used as they are. Output float32 (float64 for float64 input), differentiable.
    Mirrors ref `utils.py::get_log_probs` (student: `logits / temperature`, `trainer.py` lines 186-224) and
    `reward.py` (teacher: no temperature; its mean-centring of the logits does not change log-softmax and is not
    mirrored). Unlike the reference, nothing is zeroed at padded positions: callers mask (`rewards` does).
    """
    if logits.dtype in (torch.float32, torch.float64):
        scaled = logits if temperature == 1.0 else logits / temperature
        return _gather_minus_logsumexp(scaled, tokens)
    rows = [_gather_minus_logsumexp(row.float() / temperature, tok) for row, tok in zip(logits, tokens)]
    return torch.stack(rows)
