"""Frozen, validated stage configs. Every default is the paper-faithful value, with the place it comes from.

References: `shared/research/minillm-reference.md` (cited as "ref §N") describes microsoft/LMOps `minillm/`
(Gu et al., ICLR 2024), whose scripts the paper ran; the paper (Yim et al.) §4 "Hyper-parameters" fixes
temperature 1.0, lr 5e-6, distillation-loss weight 0.5 and 5000 steps.

    resolve("minillm", "small", {"generation": {"temperature": 0.9}})   # what plan, runner and `train` run

Scales override only what they must (`benchmark.scales.Scale.sft/minillm/evaluation`); `resolve` is the one merge
of the defaults, a scale's values, a model's own and a run's overrides. The DeepSpeed JSON is derived from these
configs by `deepspeed_config`, never kept by hand.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from benchmark import BenchmarkError, scales

Precision = Literal["fp32", "fp16", "bf16"]


class ConfigError(BenchmarkError, ValueError):
    pass


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# --------------------------------------------------------------------------------------------------------------
# Validation: every field's type (from the annotations) and range (given in each class's __post_init__), checked
# when a config is made, so a bad `--set`/scale value fails before any stage runs, naming the class and the field.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """What a numeric field (or each element of a numeric tuple) may be: `text` is read by people, `ok` decides."""

    text: str
    ok: Callable[[Any], bool]


POSITIVE = Range("> 0", lambda x: x > 0)
NON_NEGATIVE = Range(">= 0", lambda x: x >= 0)
UNIT_INTERVAL = Range("in [0, 1]", lambda x: 0 <= x <= 1)
UNIT_INTERVAL_OPEN_RIGHT = Range("in [0, 1)", lambda x: 0 <= x < 1)
UNIT_INTERVAL_OPEN_LEFT = Range("in (0, 1]", lambda x: 0 < x <= 1)
ZERO_STAGE = Range("0, 1, 2 or 3 (the ZeRO stage)", lambda x: x in (0, 1, 2, 3))
VERSION = Range(">= 1", lambda x: x >= 1)


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _numeric(tp) -> bool:
    """Whether a field of annotation `tp` holds numbers (and so needs a Range)."""
    if tp in (int, float):
        return True
    args = [a for a in typing.get_args(tp) if a not in (type(None), Ellipsis)]
    return typing.get_origin(tp) in (tuple, types.UnionType, typing.Union) and any(map(_numeric, args))


def _conform(value, tp) -> tuple[bool, Any]:
    """(whether `value` has type `tp`, the value normalised: lists -> tuples, integral floats -> int)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:  # bools are ints to Python, never to a config; 32.0 (JSON) is 32
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            return True, int(value)
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:  # ints are numbers too (kept as given: a stage hash reads them as written)
        if isinstance(value, float):
            return math.isfinite(value), value
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is str:
        return isinstance(value, str), value
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in args), value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return True, None
        (inner,) = [a for a in args if a is not type(None)]
        return _conform(value, inner)
    if origin is tuple:
        if not isinstance(value, tuple | list):
            return False, value
        if len(args) == 2 and args[1] is Ellipsis:
            elems = [args[0]] * len(value)
        elif len(args) != len(value):
            return False, value
        else:
            elems = list(args)
        out = [_conform(v, t) for v, t in zip(value, elems)]
        return all(ok for ok, _ in out), tuple(v for _, v in out)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, tp), value
    raise TypeError(f"config fields of type {tp!r} are not validated; add it to config._conform")


_NOUNS = {int: ("an integer", "integers"), float: ("a finite number", "finite numbers"), str: ("a string", "strings")}


def _describe(tp, rng: Range | None) -> str:
    """What a field accepts, in words: "a finite number > 0", "a list of 2 finite numbers in [0, 1)"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    suffix = f" {rng.text}" if rng else ""
    if tp is bool:
        return "true or false"
    if tp in _NOUNS:
        return _NOUNS[tp][0] + suffix
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in args if a is not type(None)]
        return f"{_describe(inner, rng)}, or null"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_NOUNS[args[0]][1]}{suffix}"
        return f"a list of {len(args)} {_NOUNS[args[0]][1]}{suffix}"
    return f"a {tp.__name__} (a JSON object of its fields)"


def _validate(cfg, **ranges: Range) -> None:
    """Check every field of the dataclass `cfg` against its annotation and, for numbers, its `ranges` entry (every
    numeric field must have one); lists become tuples and integral floats ints. ConfigError names the class, the
    field, the value and what is allowed: `MiniLLMConfig.lr must be a finite number > 0, got 'fast'`."""
    cls = type(cfg)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp, rng, value = hints[f.name], ranges.get(f.name), getattr(cfg, f.name)
        if _numeric(tp) and rng is None:
            raise TypeError(f"{cls.__name__}.{f.name} has no range: add one to {cls.__name__}.__post_init__")
        ok, value = _conform(value, tp)
        if ok and rng is not None and value is not None:
            ok = all(rng.ok(v) for v in value) if isinstance(value, tuple) else rng.ok(value)
        if not ok:
            raise ConfigError(f"{cls.__name__}.{f.name} must be {_describe(tp, rng)}, got {getattr(cfg, f.name)!r}")
        if value is not getattr(cfg, f.name):
            object.__setattr__(cfg, f.name, value)
    unknown = sorted(set(ranges) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise TypeError(f"{cls.__name__}: ranges given for no field: {unknown}")


def _require(cfg, cond: bool, field_name: str, allowed: str) -> None:
    """A check between fields (after `_validate`): `SFTConfig.lr_min must be <= lr (0.001), got 0.01`."""
    if not cond:
        raise ConfigError(f"{type(cfg).__name__}.{field_name} must be {allowed}, got {getattr(cfg, field_name)!r}")


# A field added after stages were first recorded: `to_dict` leaves it out while it holds its default, so a stage
# config that predates the field keeps its id (and its cached result) until the field is set.
ADDED_FIELD = MappingProxyType({"omit_at_default": True})


def _require_micro_batch(cfg) -> None:
    """The per-GPU micro-batch must split the global batch (`deepspeed_config` caps it at the per-GPU batch)."""
    m, b = cfg.micro_batch_size, cfg.batch_size
    _require(cfg, m is None or m >= b or b % m == 0, "micro_batch_size", f"a divisor of batch_size ({b}), or null")


@dataclass(frozen=True)
class GenerationSettings:
    """What reaches the sampler. Defaults: MiniLLM rollouts (ref §1.3 step 1: do_sample, top_k 0, top_p 1.0,
    temperature 1.0, no n-gram blocking)."""

    max_new_tokens: int = 256  # ref §1.3: max_length 512 - max_prompt_length 256
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    no_repeat_ngram_size: int = 0  # 0 = off; the test-time evaluation uses 6 (ref §5.1)
    do_sample: bool = True  # False = greedy

    def __post_init__(self):
        _validate(
            self,
            max_new_tokens=POSITIVE,
            temperature=Range("> 0 (greedy decoding is do_sample=false)", POSITIVE.ok),
            top_k=Range(">= 0 (0 = off)", NON_NEGATIVE.ok),
            top_p=Range("in (0, 1] (1 = off)", UNIT_INTERVAL_OPEN_LEFT.ok),
            no_repeat_ngram_size=Range(">= 0 (0 = off)", NON_NEGATIVE.ok),
        )


@dataclass(frozen=True)
class SFTConfig:
    """MiniLLM phase 1 (ref §2.4 `finetune.py`): the SFT teacher and the student inits.

    Response-only cross-entropy including the appended EOS; cosine decay to `lr_min` without warmup; AdamW with
    weight decay 0.01 except MiniLLM's no-decay names; dropout on; gradient clipping 1.0; global batch 32.
    """

    lr: float = 5e-5  # per size in the scripts (ref §2.4): Scale.sft_by_size at paper scale, ModelSpec.sft_lr below
    lr_min: float = 1e-7  # ref §2.4: CosineAnnealingLR down to lr_min
    warmup_steps: int = 0  # ref §2.4: no warmup
    epochs: int = 10  # ref §2.4 (teacher/large); total_steps overrides when set
    total_steps: int | None = None
    # Models built from scratch (small/tiny scales) first learn the language: this many LM steps (all tokens) on
    # the prepared PT chunks, the stand-in for the pretraining GPT-2/OPT had before MiniLLM fine-tuned them. The LR
    # schedule spans both parts; validation and selection start with SFT. 0 at paper scale (pretrained models).
    pretrain_steps: int = 0
    batch_size: int = 32  # global: per-GPU batch x DP x grad-acc (ref §2.4)
    micro_batch_size: int | None = None  # per GPU; None = batch_size / world size (no gradient accumulation)
    weight_decay: float = 0.01
    # ref §2.4: parameters whose name contains one of these are not decayed (GPT-2 names; OPT LayerNorms ARE
    # decayed in the reference, mirrored on purpose).
    no_decay: tuple[str, ...] = ("bias", "ln_f.weight", "ln_1.weight", "ln_2.weight", "ln_cross_attn")
    betas: tuple[float, float] = (0.9, 0.999)  # torch AdamW defaults, as in finetune.py
    grad_clip: float = 1.0
    dropout: bool = True  # model.train() in finetune.py
    max_length: int = 512  # prompt + response, truncated
    max_prompt_length: int = 256
    select_by: Literal["val_loss", "rouge_l"] = "val_loss"  # inits: val loss; teacher: ROUGE-L (ref §3.1)
    eval_interval: int | None = None  # steps; None = once per epoch (ref §2.4)
    val_examples: int | None = None  # None = the whole validation split (1000 records)
    seed: int = 10
    precision: Precision = "fp16"  # ref: ZeRO-1 fp16
    zero_stage: int = 1
    checkpoint_interval: int = 500  # steps between resumable checkpoints
    version: int = 1  # bump when the meaning of a field changes (stage hashes include it)

    def __post_init__(self):
        _validate(
            self,
            lr=POSITIVE,
            lr_min=NON_NEGATIVE,
            warmup_steps=NON_NEGATIVE,
            epochs=POSITIVE,
            total_steps=POSITIVE,
            pretrain_steps=NON_NEGATIVE,
            batch_size=POSITIVE,
            micro_batch_size=POSITIVE,
            weight_decay=NON_NEGATIVE,
            betas=UNIT_INTERVAL_OPEN_RIGHT,
            grad_clip=POSITIVE,
            max_length=POSITIVE,
            max_prompt_length=POSITIVE,
            eval_interval=POSITIVE,
            val_examples=POSITIVE,
            seed=NON_NEGATIVE,
            zero_stage=ZERO_STAGE,
            checkpoint_interval=POSITIVE,
            version=VERSION,
        )
        _require(self, self.lr_min <= self.lr, "lr_min", f"<= lr ({self.lr})")
        _require(
            self, self.max_prompt_length < self.max_length, "max_prompt_length", f"< max_length ({self.max_length})"
        )
        _require_micro_batch(self)


@dataclass(frozen=True)
class MiniLLMConfig:
    """One MiniLLM hop (ref §1.3, §1.4, §1.5, §2.1, checklist §8). Field names are the project's words; the
    reference flag each one mirrors is given beside it."""

    # --- optimisation (ref §1.5; paper §4 "Hyper-parameters")
    lr: float = 5e-6  # --lr
    betas: tuple[float, float] = (0.9, 0.95)  # hard-coded in trainer.py::setup_optimizer
    eps: float = 1e-8
    weight_decay: float = 1e-6  # hard-coded; --weight-decay is ignored by the RL trainer
    warmup_steps: int = 100  # --warmup-iters; constant LR afterwards (constant_trm)
    total_steps: int = 5000  # --total-iters, optimizer steps
    grad_clip: float = 1.0  # --clip-grad
    # --- invariants of a phase (ref §2.3: pinned globally, never per GPU)
    rollouts_per_phase: int = 256  # --num-rollouts (paper-time semantics: global)
    batch_size: int = 64  # global mini-batch = per-GPU batch x DP x grad-acc
    micro_batch_size: int | None = None  # per GPU (memory only: results do not depend on it); None = no grad-acc
    ppo_epochs: int = 4  # --ppo-epochs; 4 x 256 / 64 = 16 optimizer steps per phase
    # --- rollouts (ref §1.3 steps 1-7)
    teacher_mixed_alpha: float = 0.2  # --teacher-mixed-alpha: sample from (1-a) q + a p; 0 disables mixing
    max_prompt_length: int = 256  # --max-prompt-length; prompts left-padded to this with EOS
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    log_student_sample: bool = True  # ref §1.3 step 4: a pure-student sample used only for rev_kl/stu_lens logs
    # Where the stored log q / log p of the sampled tokens come from (ref §1.3 steps 2, 3 and 5): the reference
    # scores the finished rollouts with one full (teacher-forced) forward of each model, so under fp16/bf16 the first
    # PPO epoch's ratio q_new / q_old is exactly 1 (times w) instead of carrying the difference between incremental
    # KV-cached decoding and a full forward. "decode" keeps the decode loop's log-probs: equal up to float32
    # summation order in fp32 and one student + one teacher forward per rollout cheaper (minillm.rescore_rollouts).
    rollout_logprobs: Literal["forward", "decode"] = "forward"
    # --- reward and advantage (ref §1.3 "Reward per token", "Advantage")
    reward_scaling: float = 0.5  # --reward-scaling: r = (log p - log q) / 0.5
    cliprange_reward: float = 100.0  # --cliprange-reward (script value; the argparse default 1 is a trap)
    gamma: float = 0.95  # --gamma (argparse default, no script overrides it)
    length_normalization: bool = True  # A_t / n_t; the reference applies it unconditionally
    whiten_include_padding: bool = True  # ref utils.py whiten over the padded B x 256 tensor; False = valid only
    # Whitening statistics over groups of this many consecutive rollouts of the mini-batch instead of all of it: the
    # reference all-reduces them over the ranks once per micro-step (ref utils.py::whiten, `get_global_statistics`),
    # so a group is per-GPU batch x data-parallel ranks (the authors' 2 x 4 GPUs = 8: scales.PAPER_PRESETS["authors"]).
    # Defined in rollouts, not ranks, so results do not depend on the GPU count. None = the whole global mini-batch.
    whiten_group_size: int | None = field(default=None, metadata=ADDED_FIELD)
    # --- losses (ref §1.3 "RL loss", "PT loss")
    policy_gradient: bool = True  # PPO clipped surrogate; False = single-step term only (ablation)
    cliprange: float = 0.2  # --cliprange
    single_step: bool = True  # --single-step-reg: closed-form per-position KL(q||p), no importance weight
    # Speed only (results equal up to float summation order): the single-step term's teacher logits of a rollout
    # are computed on its first PPO epoch and reused by the others; the reference recomputes them every epoch
    # (ref §1.3 "Single-step term": one teacher forward per micro-step per PPO epoch, no caching). Memory per rank:
    # up to rollouts x max_new_tokens x vocab in the teacher's dtype (minillm.TeacherLogitsCache).
    cache_teacher_logits: bool = True
    # Memory only (same value and gradient): the single-step term over chunks of this many response positions, each
    # under activation checkpointing, so one chunk's float32 [batch, chunk, vocab] intermediates are alive at a time
    # instead of the whole response's (GPT-2 at paper scale: 8 x 256 x 50257 x 4 B = 0.4 GB each). None = no chunks.
    kl_chunk_size: int | None = None
    pt_coef: float = 1.0  # --lm-coef; 0 disables the PT batch (ablation)
    kd_ratio: float = 0.5  # --kd-ratio, the paper's "weight of the distillation loss": PT = 0.5 CE + 0.5 soft-CE
    pt_seq_length: int = 512  # PT chunks (ref §4.2)
    # --- selection and bookkeeping
    eval_interval: int = 100  # --eval-interval: validation ROUGE-L, best checkpoint kept (ref §1.5)
    # Selection only among the models a run saves: the validations at multiples of this many steps and at the last
    # step (the reference saves every --save-interval steps, ref trainer.py::train, and its user picks a saved step by
    # validation ROUGE-L). What the best of every validation would have picked is recorded beside it (summary.json
    # "best_of_validations"). None = every validation is a candidate (the MiniLLM paper's rule, ref §1.5).
    select_interval: int | None = field(default=None, metadata=ADDED_FIELD)
    val_examples: int | None = 1000  # --dev-num
    # The hop's own before/after reverse-KL measures (`minillm._Hop.measure_reverse_kl`, not in the reference) on the
    # first this many validation prompts; None = the whole validation split (at paper scale 1000 prompts x 2 sampled
    # seeds, before and after: ~4000 teacher-scored samples per hop). Measurement only: training is unchanged.
    kl_examples: int | None = field(default=None, metadata=ADDED_FIELD)
    checkpoint_interval: int = 500  # --save-interval, in optimizer steps; rounded up to a phase boundary
    seed: int = 10  # --seed (torch/np/random = seed + rank)
    seed_ppo: int = 42  # --seed-ppo (buffer shuffling)
    precision: Precision = "fp16"  # ds_config_zero1_fp16.json
    zero_stage: int = 1
    version: int = 1

    def __post_init__(self):
        _validate(
            self,
            lr=POSITIVE,
            betas=UNIT_INTERVAL_OPEN_RIGHT,
            eps=POSITIVE,
            weight_decay=NON_NEGATIVE,
            warmup_steps=NON_NEGATIVE,
            total_steps=POSITIVE,
            grad_clip=POSITIVE,
            rollouts_per_phase=POSITIVE,
            batch_size=POSITIVE,
            micro_batch_size=POSITIVE,
            ppo_epochs=POSITIVE,
            teacher_mixed_alpha=Range("in [0, 1) (0 = no mixing)", UNIT_INTERVAL_OPEN_RIGHT.ok),
            max_prompt_length=POSITIVE,
            reward_scaling=POSITIVE,
            cliprange_reward=POSITIVE,
            gamma=UNIT_INTERVAL_OPEN_LEFT,
            cliprange=POSITIVE,
            kl_chunk_size=POSITIVE,
            whiten_group_size=POSITIVE,
            select_interval=POSITIVE,
            pt_coef=Range(">= 0 (0 = no PT loss)", NON_NEGATIVE.ok),
            kd_ratio=UNIT_INTERVAL,
            pt_seq_length=POSITIVE,
            eval_interval=POSITIVE,
            val_examples=POSITIVE,
            kl_examples=POSITIVE,
            checkpoint_interval=POSITIVE,
            seed=NON_NEGATIVE,
            seed_ppo=NON_NEGATIVE,
            zero_stage=ZERO_STAGE,
            version=VERSION,
        )
        _require(
            self,
            self.rollouts_per_phase % self.batch_size == 0,
            "rollouts_per_phase",
            f"a multiple of batch_size ({self.batch_size})",
        )
        _require_micro_batch(self)
        g = self.whiten_group_size
        _require(
            self,
            g is None or self.batch_size % g == 0,
            "whiten_group_size",
            f"a divisor of batch_size ({self.batch_size}), or null",
        )
        k = self.select_interval
        _require(
            self,
            k is None or k % self.eval_interval == 0,
            "select_interval",
            f"a multiple of eval_interval ({self.eval_interval}), or null",
        )
        _require(
            self,
            self.policy_gradient or self.single_step,
            "single_step",
            "true when policy_gradient is false (at least one loss term must be on)",
        )

    @property
    def steps_per_phase(self) -> int:
        return self.ppo_epochs * self.rollouts_per_phase // self.batch_size


@dataclass(frozen=True)
class EvalConfig:
    """The test-time protocol of MiniLLM's `evaluate_main.py` (ref §5.1) plus perplexity (ref §5.2)."""

    seeds: tuple[int, ...] = (10, 20, 30, 40, 50)  # run_eval.sh
    max_prompt_length: int = 256  # left-padded with EOS; longer test prompts keep their first 256 tokens
    generation: GenerationSettings = field(
        default_factory=lambda: GenerationSettings(max_new_tokens=256, no_repeat_ngram_size=6)
    )
    batch_size: int = 8  # --eval-batch-size 8; results do not depend on it (per-example generators)
    num_examples: int | None = None  # None = the whole test split (500)
    precision: Precision = "fp16"
    version: int = 2  # 2: evaluations also write samples.jsonl (per-example samples), so finished ones rerun

    def __post_init__(self):
        _validate(
            self,
            seeds=NON_NEGATIVE,
            max_prompt_length=POSITIVE,
            batch_size=POSITIVE,
            num_examples=POSITIVE,
            version=VERSION,
        )
        _require(self, len(self.seeds) > 0, "seeds", "a non-empty list of integers >= 0")


KINDS = {"sft": SFTConfig, "minillm": MiniLLMConfig, "evaluation": EvalConfig}  # the `--set KIND=...` kinds
Role = Literal["teacher", "init"]


def resolve(
    kind: str,
    scale: str,
    overrides: dict[str, Any] | None = None,
    *,
    model: scales.ModelSpec | None = None,
    role: Role | None = None,
):
    """The frozen config of `kind` ("sft", "minillm" or "evaluation") at `scale`: the paper-faithful defaults, then
    the scale's values, then the model's own learning rate, then `overrides`:
    - sft: the scale's settings of that size (`Scale.sft_by_size`: paper scale's per-size scripts), the model's
      `sft_lr` and the selection metric of its `role` (the teacher by ROUGE-L, inits by validation loss, ref §3.1);
    - minillm (`model` = the hop's student): `sft_lr x Scale.minillm_lr_per_sft_lr` where the scale sets that ratio
      (small: a tenth), rounded so that the config reads 3e-4, not 3.0000000000000003e-4.
    Nested values merge field by field: overriding `generation.temperature` keeps the scale's
    `generation.max_new_tokens`."""
    cls = KINDS[kind]
    _check(kind in ("sft", "minillm") or model is None, f"only sft and minillm configs take a model, not {kind}")
    _check(kind == "sft" or role is None, f"only sft configs take a role, not {kind}")
    sc = scales.scale(scale)
    own: dict[str, Any] = {}
    if kind == "sft" and model is not None:
        own.update(sc.sft_by_size.get(model.arch, {}).get(model.size, {}))
    ratio = 1.0 if kind == "sft" else sc.minillm_lr_per_sft_lr
    if model is not None and model.sft_lr is not None and ratio:
        own["lr"] = round(model.sft_lr * ratio, 12)
    if role is not None:
        own["select_by"] = "rouge_l" if role == "teacher" else "val_loss"
    return for_scale(cls, _merge(_merge(getattr(sc, kind), own), overrides or {}))


def parse_set(items: list[str], verb_kind: str | None = None) -> dict[str, dict]:
    """`--set` options -> {kind: {field: value}}; later options update earlier ones.

    Each option is KIND=JSON: KIND a stage config (`KINDS`: sft -> SFTConfig, minillm -> MiniLLMConfig,
    evaluation -> EvalConfig), JSON an object of its fields, applied on top of the scale's values; changed fields
    change the stage hashes, so only the stages that depend on them rerun. `train sft|minillm` passes its kind as
    `verb_kind`: a bare JSON object is that kind's, and another KIND is an error. Example (1024-rollout hops at small
    scale, half the default budget):
        --set minillm='{"rollouts_per_phase": 512, "batch_size": 128}'
    """
    out: dict[str, dict] = {}
    for item in items:
        named = re.fullmatch(r"(\w+)=(.*)", item, flags=re.DOTALL)
        kind, text = (named[1], named[2]) if named else (verb_kind, item)
        if kind not in KINDS:
            raise ConfigError(f"--set {item!r}: expected KIND=JSON with KIND one of {', '.join(KINDS)}")
        if verb_kind and kind != verb_kind:
            raise ConfigError(f"--set {kind}=...: `train {verb_kind}` takes {verb_kind} fields, not {kind}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"--set {kind}=...: not valid JSON ({e}); quote it, e.g. --set {kind}='{{\"lr\": 1e-4}}'"
            ) from None
        if not isinstance(value, dict):
            raise ConfigError(f"--set {kind}=...: expected a JSON object of config fields, got {type(value).__name__}")
        out.setdefault(kind, {}).update(value)
    return out


def preset_overrides(scale: str, name: str | None) -> dict:
    """The `--set minillm=...` values that turn `scale`'s hops into its preset `name`'s (`scales.Scale.presets`;
    {} for the default preset or None): each field a preset sets takes that preset's value, or MiniLLMConfig's
    default."""
    sc = scales.scale(scale)
    if name is not None and name not in sc.presets:
        have = f"presets: {', '.join(sc.presets)}" if sc.presets else "it has none (presets are paper scale's)"
        raise ConfigError(f"scale {sc.name!r} has no preset {name!r}; {have}")
    if name is None or name == sc.default_preset:
        return {}
    default = MiniLLMConfig()
    fields = set(sc.presets[name]) | set(sc.minillm)
    return {f: sc.presets[name].get(f, getattr(default, f)) for f in sorted(fields)}


def preset_of(scale: str, minillm_overrides: dict | None) -> str | None:
    """The preset a run's `--set minillm=...` values (`minillm_overrides`) start from: the most specific one whose
    `preset_overrides` they all hold (the default preset holds none, so it is the fallback); None at a scale
    without presets. What a plan and a table's provenance name."""
    given, found = minillm_overrides or {}, None
    for name in scales.scale(scale).presets:
        want = preset_overrides(scale, name)
        if all(k in given and given[k] == v for k, v in want.items()):
            if found is None or len(want) > len(preset_overrides(scale, found)):
                found = name
    return found


def run_overrides(scale: str, preset: str | None, items: list[str] | None) -> dict[str, dict]:
    """A run's overrides from `--preset NAME` (`preset_overrides`: {} for the scale's default preset) and then its
    `--set` options (`parse_set`), which win field by field."""
    out = parse_set(items or [])
    values = preset_overrides(scale, preset)
    if values:
        out["minillm"] = values | out.get("minillm", {})
    return out


def _merge(base: dict, override: dict) -> dict:
    """`base` updated by `override`, nested dicts field by field."""
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def for_scale(cls, overrides: dict[str, Any], **extra):
    """`cls()` with field values applied (the building block of `resolve`, which merges a scale's values and a
    run's overrides first); nested `generation` dicts update the nested settings."""
    kw = dict(overrides) | extra
    _known_fields(cls, kw)
    if "generation" in kw and isinstance(kw["generation"], dict):
        _known_fields(GenerationSettings, kw["generation"], f"{cls.__name__}.generation")
        try:
            kw["generation"] = dataclasses.replace(cls().generation, **kw["generation"])
        except ConfigError as exc:  # name the field as it was given: MiniLLMConfig.generation.top_k
            prefix = f"{GenerationSettings.__name__}."
            raise ConfigError(str(exc).replace(prefix, f"{cls.__name__}.generation.", 1)) from None
    return dataclasses.replace(cls(), **kw)


def _known_fields(cls, values: dict, name: str = "") -> None:
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(fields))
    _check(
        not unknown, f"{name or cls.__name__} has no field {', '.join(map(repr, unknown))}; fields: {', '.join(fields)}"
    )


def to_dict(cfg) -> dict:
    """The config as JSON-able values; ADDED_FIELD fields at their default are left out (see ADDED_FIELD)."""
    out = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for f in dataclasses.fields(cfg):
        if f.metadata.get("omit_at_default") and getattr(cfg, f.name) == f.default:
            del out[f.name]
    return out


def config_hash(obj) -> str:
    """A stable short hash of a config (or any JSON-able value): identity of a stage's settings."""
    if dataclasses.is_dataclass(obj):
        obj = {"type": type(obj).__name__, **to_dict(obj)}
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def deepspeed_config(cfg: SFTConfig | MiniLLMConfig, world_size: int) -> dict:
    """The DeepSpeed JSON for a stage, derived from its config and the world size.

    The global batch is an invariant of the config (ref §2.3); the per-GPU micro-batch and the gradient
    accumulation are derived: micro x world x grad_acc == batch_size. fp16 mirrors
    `ds_config_zero1_fp16.json` (dynamic loss scaling, initial scale 2^11, window 2000, hysteresis 4).
    """
    batch = cfg.batch_size
    _check(batch % world_size == 0, f"global batch {batch} is not divisible by the world size {world_size}")
    per_rank = batch // world_size
    micro = min(cfg.micro_batch_size or per_rank, per_rank)
    _check(per_rank % micro == 0, f"per-rank batch {per_rank} is not divisible by micro-batch {micro}")
    ds: dict[str, Any] = {
        "train_batch_size": batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": per_rank // micro,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.precision == "fp16":
        ds["fp16"] = {
            "enabled": True,
            "loss_scale": 0,
            "initial_scale_power": 11,
            "loss_scale_window": 2000,
            "hysteresis": 4,
            "min_loss_scale": 1,
        }
    elif cfg.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    return ds
