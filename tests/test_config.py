"""The paper-faithful defaults of the stage configs, pinned against the reference, and their effect on the maths.

Every default of `MiniLLMConfig`, `SFTConfig`, `EvalConfig` and `GenerationSettings` is written out below as a
literal with the place it comes from ("ref §N" = `shared/research/minillm-reference.md`; "paper" = Gu et al.
§4 / appendix B.1 as the reference quotes it; "project" = a setting of this re-implementation with no reference
counterpart, pinned so that a change is deliberate). A field added to a config fails
`test_every_default_is_pinned` until its value and source are added here. The effect tests then run the loss
functions with the default config's values against naive formulas written with the reference's literal numbers,
so a wrong default fails twice: in the table and in the maths it feeds. The optimizer and LR schedule the trainer
builds from these defaults are read back in tests/test_train.py.

Then `resolve`, the one merge of a scale's values and a run's overrides: what the plan, the runner and
`python -m benchmark train` get.

Fast: no models.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import numpy as np
import pytest
import torch

from benchmark import config, scales
from benchmark import losses as L
from benchmark.config import EvalConfig, GenerationSettings, MiniLLMConfig, SFTConfig, deepspeed_config

GENERATION = {
    "max_new_tokens": 256,  # ref §1.3 step 1: max_length 512 - max_prompt_length 256
    "temperature": 1.0,  # ref §1.3 step 1 / §2.1 generation: --temperature 1.0
    "top_k": 0,  # ref §2.1: --top-k 0 (off)
    "top_p": 1.0,  # ref §2.1: --top-p 1.0 (off)
    "no_repeat_ngram_size": 0,  # ref §5.1: training-time generation does not ban n-grams (only the test-time eval)
    "do_sample": True,  # ref §2.1: --do-sample
}

MINILLM = {
    "lr": 5e-6,  # ref §2.1 --lr 5e-6; paper §4 "Hyper-parameters"
    "betas": (0.9, 0.95),  # ref §1.5: hard-coded in trainer.py::setup_optimizer
    "eps": 1e-8,  # ref §1.5: AdamW eps 1e-8
    "weight_decay": 1e-6,  # ref §1.5: hard-coded 1e-6 (--weight-decay is ignored by the RL trainer)
    "warmup_steps": 100,  # ref §2.1 --warmup-iters 100 (constant_trm, ref §1.5)
    "total_steps": 5000,  # ref §2.1 --total-iters 5000; paper: 5000 steps
    "grad_clip": 1.0,  # ref §1.5: --clip-grad default 1.0
    "rollouts_per_phase": 256,  # ref §1.4 / §2.3: 256 rollouts per phase, global
    "batch_size": 64,  # ref §2.3: global mini-batch 64 ("mini-batch 64 in all cases", paper B.1)
    "micro_batch_size": None,  # project: per-GPU split of the global batch (memory only); None = no accumulation
    "ppo_epochs": 4,  # ref §2.1 --ppo-epochs 4
    "teacher_mixed_alpha": 0.2,  # ref §2.1 --teacher-mixed-alpha 0.2
    "max_prompt_length": 256,  # ref §2.1 --max-prompt-length 256
    "generation": GenerationSettings(**GENERATION),  # ref §1.3 step 1 (rows above)
    "log_student_sample": True,  # ref §1.3 step 4: a pure-student sample, for the rev_kl / stu_lens logs only
    "rollout_logprobs": "forward",  # ref §1.3 steps 2, 3, 5: rollouts scored by one full forward of each model
    "reward_scaling": 0.5,  # ref §1.3 step 7 / §2.1 --reward-scaling 0.5
    "cliprange_reward": 100.0,  # ref §1.3 step 7 / §2.1 --cliprange-reward 100 (the argparse default 1 is a trap)
    "gamma": 0.95,  # ref §1.3 "Advantage": argparse default 0.95, no script sets --gamma
    "length_normalization": True,  # ref §1.3 "Advantage": applied unconditionally
    "whiten_include_padding": True,  # ref §1.3 "Advantage": whitening over every element of B x 256, padding too
    "whiten_group_size": None,  # MiniLLM paper: the mini-batch of 64 (the authors' preset: 8, scales.PAPER_PRESETS)
    "policy_gradient": True,  # ref §1.3 "RL loss": rl_loss = pg_loss + reg_loss
    "cliprange": 0.2,  # ref §1.3 `_pg_loss` / §2.1 defaults in force: cliprange 0.2; paper B.1 clip 0.2
    "single_step": True,  # ref §2.1 --single-step-reg on
    "cache_teacher_logits": True,  # project: speed only (README "Training: MiniLLM, faithfully")
    "kl_chunk_size": None,  # project: memory only
    "pt_coef": 1.0,  # ref §1.3: loss = rl_loss + lm_coef * pt_loss, lm_coef 1 (§2.1 defaults in force)
    "kd_ratio": 0.5,  # ref §1.3 "PT loss" / §2.1 --kd-ratio 0.5; paper §4 "weight of the distillation loss"
    "pt_seq_length": 512,  # ref §4.2: 512-token PT chunks
    "eval_interval": 100,  # ref §2.1 --eval-interval 100
    "select_interval": None,  # MiniLLM paper: best of every validation (the authors' preset: their 500-step saves)
    "val_examples": 1000,  # ref §2.1 --dev-num 1000
    "kl_examples": None,  # project: the hop's before/after KL measures on the whole validation split
    "checkpoint_interval": 500,  # ref §2.1 --save-interval 500
    "seed": 10,  # ref §2.1 --seed 10
    "seed_ppo": 42,  # ref §2.1 --seed-ppo 42
    "precision": "fp16",  # ref §1.5: ds_config_zero1_fp16.json
    "zero_stage": 1,  # ref §1.5: ZeRO stage 1
    "version": 1,  # project: bumped when a field changes meaning
}

SFT = {
    "lr": 5e-5,  # ref §2.4: the teachers' and OPT-1.3B/2.7B LR (scales set it per model, ModelSpec.sft_lr)
    "lr_min": 1e-7,  # ref §2.4: CosineAnnealingLR down to lr_min 1e-7
    "warmup_steps": 0,  # ref §2.4: no warmup
    "epochs": 10,  # ref §2.4: 10 epochs (teachers, large models)
    "total_steps": None,  # project: None = epochs x steps per epoch
    "pretrain_steps": 0,  # project: 0 at paper scale (pretrained models)
    "batch_size": 32,  # ref §2.4: per-GPU batch x DP x GA = 32
    "micro_batch_size": None,  # project: per-GPU split (memory only)
    "weight_decay": 0.01,  # ref §2.4: weight decay 0.01
    "no_decay": ("bias", "ln_f.weight", "ln_1.weight", "ln_2.weight", "ln_cross_attn"),  # ref §2.4: no-decay names
    "betas": (0.9, 0.999),  # ref §2.4: AdamW default betas
    "grad_clip": 1.0,  # ref §2.4: gradient clipping 1.0
    "dropout": True,  # ref §2.4: dropout on (model.train())
    "max_length": 512,  # ref §2.4: max length 512
    "max_prompt_length": 256,  # ref §2.4: prompts <= 256
    "select_by": "val_loss",  # ref §3.1: inits are selected by validation loss (the teacher by ROUGE-L, per stage)
    "eval_interval": None,  # ref §2.4: evaluation once per epoch
    "val_examples": None,  # project: the whole validation split
    "seed": 10,  # ref §2.4: seed 10
    "precision": "fp16",  # ref §2.4: fp16 ZeRO-1
    "zero_stage": 1,  # ref §2.4: fp16 ZeRO-1
    "checkpoint_interval": 500,  # project: resumable checkpoints
    "version": 1,  # project
}

EVAL = {
    "seeds": (10, 20, 30, 40, 50),  # ref §5.1: run_eval.sh --seed 10, 20, 30, 40, 50
    "max_prompt_length": 256,  # ref §5.1: left-padded with EOS to exactly 256
    # ref §5.1: do_sample, top_k 0, top_p 1.0, temperature 1.0, no_repeat_ngram_size 6, 512 - 256 new tokens
    "generation": GenerationSettings(**(GENERATION | {"no_repeat_ngram_size": 6})),
    "batch_size": 8,  # ref §5.1: --eval-batch-size 8
    "num_examples": None,  # ref §5.1: the whole test split
    "precision": "fp16",  # ref §5.1: model loaded in fp16
    "version": 2,  # project: 2 since evaluations write samples.jsonl
}

TABLES = [(GenerationSettings, GENERATION), (MiniLLMConfig, MINILLM), (SFTConfig, SFT), (EvalConfig, EVAL)]


@pytest.mark.parametrize(("cls", "table"), TABLES, ids=[c.__name__ for c, _ in TABLES])
def test_every_default_is_pinned(cls, table):
    cfg = cls()
    assert [f.name for f in dataclasses.fields(cls)] == list(table), "add the new field, its value and its source"
    for name, expected in table.items():
        got = getattr(cfg, name)
        assert got == expected and type(got) is type(expected), (cls.__name__, name, got, expected)


def test_phase_invariants_of_the_default():
    cfg = MiniLLMConfig()
    assert cfg.steps_per_phase == 16  # ref §1.4: 4 epochs x 256 / 64
    ds = deepspeed_config(cfg, world_size=16)  # ref §1.5 ds_config_zero1_fp16.json; §2.3 global batch 64
    assert ds["train_batch_size"] == 64 and ds["train_micro_batch_size_per_gpu"] * 16 == 64
    assert ds["gradient_clipping"] == 1.0 and ds["zero_optimization"] == {"stage": 1}
    assert ds["fp16"] == {
        "enabled": True,
        "loss_scale": 0,
        "initial_scale_power": 11,
        "loss_scale_window": 2000,
        "hysteresis": 4,
        "min_loss_scale": 1,
    }


# --------------------------------------------------------------------------- the defaults' effect on the maths
# Each test feeds the default config's value to the loss function the trainer calls with it and compares with a
# naive formula holding the reference's literal number.


def test_default_rewards_scale_by_2_and_clip_at_100():
    cfg = MiniLLMConfig()
    log_p = torch.tensor([[-1.0, -90.0, -0.5, -3.0]], dtype=torch.float64)
    log_q = torch.tensor([[-1.3, -1.0, -30.5, -0.1]], dtype=torch.float64)
    mask = torch.ones(1, 4)
    r = L.rewards(log_p, log_q, mask, reward_scaling=cfg.reward_scaling, cliprange_reward=cfg.cliprange_reward)
    # (log p - log q) / 0.5, clipped to +-100: 0.6, -178 -> -100, 60 (inside the clip), -5.8
    expected = [[(log_p - log_q)[0, 0].item() / 0.5, -100.0, 60.0, -2.9 / 0.5]]
    torch.testing.assert_close(r, torch.tensor(expected, dtype=torch.float64))


def test_default_importance_weight_mixes_one_fifth_teacher():
    cfg = MiniLLMConfig()
    log_q = torch.tensor([-0.2, -3.0, -7.0], dtype=torch.float64)
    log_p = torch.tensor([-2.0, -0.1, -7.0], dtype=torch.float64)
    q, p = log_q.exp(), log_p.exp()
    torch.testing.assert_close(L.importance_weights(log_q, log_p, cfg.teacher_mixed_alpha), q / (0.8 * q + 0.2 * p))


def _naive_advantages(r: list[list[float]], m: list[list[int]]) -> np.ndarray:
    """ref §1.3 "Advantage": sum_{t' >= t} 0.95^(t'-t) r_t' over valid positions, divided by the valid count from
    t to the end (t included, at least 1)."""
    out = np.zeros((len(r), len(r[0])))
    for b, (rb, mb) in enumerate(zip(r, m)):
        for t in range(len(rb)):
            out[b, t] = sum(0.95 ** (k - t) * rb[k] * mb[k] for k in range(t, len(rb)))
            out[b, t] /= max(sum(mb[t:]), 1)
    return out


def test_default_advantages_discount_by_0_95_normalise_by_length_and_whiten_over_padding():
    cfg = MiniLLMConfig()
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1] * 8, [1] * 3 + [0] * 5, [1] * 6 + [0] * 2])
    r = (torch.randn(3, 8, generator=g, dtype=torch.float64) * 2) * mask  # a long row, so gamma matters
    adv = L.minillm_advantages(r, mask, cfg.gamma, cfg.length_normalization)
    naive = _naive_advantages(r.tolist(), mask.tolist())
    np.testing.assert_allclose(adv.numpy(), naive, rtol=1e-10, atol=1e-12)
    white = L.whiten(adv, mask, include_padding=cfg.whiten_include_padding)
    # ref utils.py::whiten over the padded tensor: every element (the padding's zeros too) in the statistics
    np.testing.assert_allclose(white.numpy(), (naive - naive.mean()) / math.sqrt(naive.var() + 1e-8), rtol=1e-8)


def test_default_ppo_clip_band_is_0_8_to_1_2():
    cfg = MiniLLMConfig()
    ratio = torch.tensor([[1.3, 0.7, 1.1]], dtype=torch.float64)  # outside above, outside below, inside
    adv = torch.tensor([[1.0, -1.0, 2.0]], dtype=torch.float64)
    old = torch.full_like(ratio, -1.0)
    loss = L.ppo_clip_loss(old + ratio.log(), old, torch.ones_like(ratio), adv, torch.ones(1, 3), clip=cfg.cliprange)
    # max(-A rho, -A clamp(rho, 0.8, 1.2)): -1.2, 0.8, -2.2
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3, rel=1e-12)


def test_default_pt_loss_is_half_cross_entropy_half_soft_cross_entropy():
    cfg = MiniLLMConfig()
    g = torch.Generator().manual_seed(1)
    s, t = (
        torch.randn(2, 3, 5, generator=g, dtype=torch.float64),
        torch.randn(2, 3, 5, generator=g, dtype=torch.float64),
    )
    labels = torch.tensor([[4, -100, 0], [1, 2, 3]])
    ce, soft = L.lm_cross_entropy(s, labels), L.soft_cross_entropy(s, t, labels)
    assert abs(ce.item() - soft.item()) > 0.1  # the mix is visible
    got = cfg.pt_coef * L.pt_loss(s, t, labels, cfg.kd_ratio)
    assert got.item() == pytest.approx(0.5 * ce.item() + 0.5 * soft.item(), rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Validation: every field's type and range, checked when a config is made (issue #20, item 6)
# ----------------------------------------------------------------------------------------------------------------

CLASSES = [GenerationSettings, SFTConfig, MiniLLMConfig, EvalConfig]

# The `--set` values of the issue, as JSON gives them: each failed inside a stage with a traceback or was accepted.
ISSUE_VALUES = {
    "lr-string": ('{"lr": "fast"}', "lr must be a finite number > 0, got 'fast'"),
    "lr-negative": ('{"lr": -1e-4}', "lr must be a finite number > 0, got -0.0001"),
    "lr-infinite": ('{"lr": Infinity}', "lr must be a finite number > 0, got inf"),
    "lr-zero": ('{"lr": 0}', "lr must be a finite number > 0, got 0"),
    "steps-fraction": ('{"total_steps": 2.5}', "total_steps must be an integer > 0, got 2.5"),
    "steps-bool": ('{"total_steps": true}', "total_steps must be an integer > 0, got True"),
    "batch-zero": ('{"batch_size": 0}', "batch_size must be an integer > 0, got 0"),
    "top-k-string": ('{"generation": {"top_k": "x"}}', "generation.top_k must be an integer >= 0 (0 = off), got 'x'"),
    "precision-fp8": ('{"precision": "fp8"}', "precision must be one of 'fp32', 'fp16', 'bf16', got 'fp8'"),
}
ISSUE_CASES = [
    pytest.param(cls, name, id=f"{cls.__name__}-{name}")
    for cls in (SFTConfig, MiniLLMConfig, EvalConfig)
    for name, (text, _) in ISSUE_VALUES.items()
    if set(json.loads(text)) <= {f.name for f in dataclasses.fields(cls)}
]


@pytest.mark.parametrize(("cls", "name"), ISSUE_CASES)
def test_issue_values_are_refused_naming_class_field_value_and_what_is_allowed(cls, name):
    text, message = ISSUE_VALUES[name]
    (field,) = json.loads(text)
    if type(None) in typing.get_args(typing.get_type_hints(cls)[field]):
        message = message.replace(", got", ", or null, got")  # SFTConfig.total_steps: None = epochs decide
    with pytest.raises(config.ConfigError) as err:
        config.for_scale(cls, json.loads(text))
    assert str(err.value) == f"{cls.__name__}.{message}"


def test_issue_values_cover_all_three_stage_configs():
    assert {c.values[0] for c in ISSUE_CASES} == {SFTConfig, MiniLLMConfig, EvalConfig}
    assert {c.values[1] for c in ISSUE_CASES if c.values[0] is MiniLLMConfig} == set(ISSUE_VALUES)


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_every_field_checks_its_type(cls):
    for f in dataclasses.fields(cls):
        with pytest.raises(config.ConfigError, match=rf"^{cls.__name__}\.{f.name} must be .*, got \[None\]$"):
            dataclasses.replace(cls(), **{f.name: [None]})
        if f.type not in ("str", "bool"):  # a string is no number, literal, tuple or nested config either
            with pytest.raises(config.ConfigError, match=rf"^{cls.__name__}\.{f.name} must be "):
                dataclasses.replace(cls(), **{f.name: "x"})


# (class, field, values outside the range, values at its edges that are accepted)
RANGES = [
    (GenerationSettings, "max_new_tokens", [0, -1], [1]),
    (GenerationSettings, "temperature", [0, -0.5, math.nan], [1e-6, 2]),
    (GenerationSettings, "top_k", [-1], [0, 50]),
    (GenerationSettings, "top_p", [0, 1.01], [1e-6, 1]),
    (GenerationSettings, "no_repeat_ngram_size", [-1], [0, 6]),
    (SFTConfig, "lr", [0, -1e-5], [1e-7]),
    (SFTConfig, "lr_min", [-1e-9], [0]),
    (SFTConfig, "warmup_steps", [-1], [0]),
    (SFTConfig, "epochs", [0], [1]),
    (SFTConfig, "total_steps", [0], [1, None]),
    (SFTConfig, "pretrain_steps", [-1], [0]),
    (SFTConfig, "batch_size", [0], [1]),
    (SFTConfig, "micro_batch_size", [0], [1, None]),
    (SFTConfig, "weight_decay", [-0.01], [0]),
    (SFTConfig, "betas", [[0.9, 1.0], [-0.1, 0.9], [0.9], [0.9, 0.99, 0.9]], [[0, 0.999999]]),
    (SFTConfig, "grad_clip", [0, math.inf], [0.01]),
    (SFTConfig, "max_length", [0], [257]),
    (SFTConfig, "max_prompt_length", [0], [1, 511]),
    (SFTConfig, "eval_interval", [0], [1, None]),
    (SFTConfig, "val_examples", [0], [1, None]),
    (SFTConfig, "seed", [-1], [0]),
    (SFTConfig, "zero_stage", [-1, 4], [0, 3]),
    (SFTConfig, "checkpoint_interval", [0], [1]),
    (SFTConfig, "version", [0], [1]),
    (MiniLLMConfig, "lr", [0, -1e-6, math.inf], [1e-9]),
    (MiniLLMConfig, "betas", [[1.0, 0.95], [0.9, -0.01]], [[0, 0]]),
    (MiniLLMConfig, "eps", [0, -1e-8], [1e-12]),
    (MiniLLMConfig, "weight_decay", [-1e-6], [0]),
    (MiniLLMConfig, "warmup_steps", [-1], [0]),
    (MiniLLMConfig, "total_steps", [0], [1]),
    (MiniLLMConfig, "grad_clip", [0], [1e-3]),
    (MiniLLMConfig, "rollouts_per_phase", [0, -64], [64]),
    (MiniLLMConfig, "batch_size", [0], [1, 256]),
    (MiniLLMConfig, "micro_batch_size", [0], [1, None]),
    (MiniLLMConfig, "ppo_epochs", [0], [1]),
    (MiniLLMConfig, "teacher_mixed_alpha", [1.0, -0.1], [0, 0.999]),
    (MiniLLMConfig, "max_prompt_length", [0], [1]),
    (MiniLLMConfig, "reward_scaling", [0], [1e-3]),
    (MiniLLMConfig, "cliprange_reward", [0], [1e-3]),
    (MiniLLMConfig, "gamma", [0, 1.01], [1e-3, 1]),
    (MiniLLMConfig, "cliprange", [0, -0.2], [1e-3]),
    (MiniLLMConfig, "kl_chunk_size", [0], [1, None]),
    (MiniLLMConfig, "whiten_group_size", [0], [1, None]),
    (MiniLLMConfig, "select_interval", [0], [100, None]),
    (MiniLLMConfig, "pt_coef", [-0.1], [0]),
    (MiniLLMConfig, "kd_ratio", [-0.1, 1.01], [0, 1]),
    (MiniLLMConfig, "pt_seq_length", [0], [1]),
    (MiniLLMConfig, "eval_interval", [0], [1]),
    (MiniLLMConfig, "val_examples", [0], [1, None]),
    (MiniLLMConfig, "kl_examples", [0], [1, None]),
    (MiniLLMConfig, "checkpoint_interval", [0], [1]),
    (MiniLLMConfig, "seed", [-1], [0]),
    (MiniLLMConfig, "seed_ppo", [-1], [0]),
    (MiniLLMConfig, "zero_stage", [4], [0, 3]),
    (MiniLLMConfig, "version", [0], [1]),
    (EvalConfig, "seeds", [[], [10, -1], [1.5]], [[0]]),
    (EvalConfig, "max_prompt_length", [0], [1]),
    (EvalConfig, "batch_size", [0], [1]),
    (EvalConfig, "num_examples", [0], [1, None]),
    (EvalConfig, "version", [0], [1]),
]


@pytest.mark.parametrize(("cls", "name", "bad", "good"), RANGES, ids=[f"{c.__name__}.{n}" for c, n, _, _ in RANGES])
def test_every_numeric_field_checks_its_range(cls, name, bad, good):
    for value in bad:
        with pytest.raises(config.ConfigError, match=rf"^{cls.__name__}\.{name} must be .*, got "):
            dataclasses.replace(cls(), **{name: value})
    for value in good:
        got = getattr(dataclasses.replace(cls(), **{name: value}), name)
        assert got == (tuple(value) if isinstance(value, list) else value)


def test_the_range_table_covers_every_numeric_field():
    numeric = {
        (cls, f.name)
        for cls in CLASSES
        for f in dataclasses.fields(cls)
        if config._numeric(typing.get_type_hints(cls)[f.name])
    }
    assert numeric == {(cls, name) for cls, name, _, _ in RANGES}


def test_checks_between_fields():
    cases = [
        (SFTConfig, {"lr": 1e-4, "lr_min": 1e-3}, "SFTConfig.lr_min must be <= lr (0.0001), got 0.001"),
        (SFTConfig, {"max_length": 256}, "SFTConfig.max_prompt_length must be < max_length (256), got 256"),
        (
            SFTConfig,
            {"micro_batch_size": 5},
            "SFTConfig.micro_batch_size must be a divisor of batch_size (32), or null, got 5",
        ),
        (
            MiniLLMConfig,
            {"rollouts_per_phase": 100},
            "MiniLLMConfig.rollouts_per_phase must be a multiple of batch_size (64), got 100",
        ),
        (
            MiniLLMConfig,
            {"policy_gradient": False, "single_step": False},
            "MiniLLMConfig.single_step must be true when policy_gradient is false (at least one loss term must be on), "
            "got False",
        ),
        (
            MiniLLMConfig,
            {"whiten_group_size": 5},
            "MiniLLMConfig.whiten_group_size must be a divisor of batch_size (64), or null, got 5",
        ),
        (
            MiniLLMConfig,
            {"select_interval": 150},
            "MiniLLMConfig.select_interval must be a multiple of eval_interval (100), or null, got 150",
        ),
        (EvalConfig, {"seeds": []}, "EvalConfig.seeds must be a non-empty list of integers >= 0, got ()"),
    ]
    for cls, overrides, message in cases:
        with pytest.raises(config.ConfigError) as err:
            config.for_scale(cls, overrides)
        assert str(err.value) == message
    assert config.for_scale(MiniLLMConfig, {"micro_batch_size": 128}).micro_batch_size == 128  # capped, not split


def test_json_values_are_normalised_without_changing_hashes():
    cfg = config.for_scale(EvalConfig, json.loads('{"seeds": [10, 20], "batch_size": 4.0}'))
    assert cfg.seeds == (10, 20) and type(cfg.batch_size) is int and cfg.batch_size == 4
    assert config.config_hash(cfg) == config.config_hash(EvalConfig(seeds=(10, 20), batch_size=4))
    lr = config.for_scale(MiniLLMConfig, {"lr": 1, "betas": [0, 0.5]})
    assert lr.lr == 1 and type(lr.lr) is int and lr.betas == (0, 0.5)  # kept as written: hashes read them so
    hash(lr)  # frozen configs stay hashable (no lists inside)


def test_fields_added_later_are_left_out_of_stage_configs_at_their_default():
    """config.ADDED_FIELD: whiten_group_size and select_interval appear in a config's dict (and so in its stage's
    id) only when set, so the tiny and small hops, which leave them at None, keep the ids of before the fields."""
    cfg = MiniLLMConfig()
    assert {"whiten_group_size", "select_interval", "kl_examples"}.isdisjoint(config.to_dict(cfg))
    assert config.for_scale(MiniLLMConfig, config.to_dict(cfg)) == cfg
    grouped = MiniLLMConfig(batch_size=16, whiten_group_size=8, select_interval=500)
    assert config.to_dict(grouped)["whiten_group_size"] == 8 and config.to_dict(grouped)["select_interval"] == 500
    assert config.for_scale(MiniLLMConfig, config.to_dict(grouped)) == grouped
    assert config.config_hash(grouped) != config.config_hash(dataclasses.replace(grouped, whiten_group_size=None))
    for scale in ("tiny", "small"):
        added = {"whiten_group_size", "select_interval", "kl_examples"}
        assert added.isdisjoint(config.to_dict(config.resolve("minillm", scale)))


def test_paper_hops_take_the_authors_preset_and_minillm_is_one_option_away():
    """scales.PAPER_PRESETS: paper scale's hops default to the authors' scripts (global batch 16 = 64 steps per
    phase, whitening over 8 rollouts, selection among the 500-step saves); `--preset minillm` restores MiniLLM's
    (batch 64, 16 steps per phase); `--set` wins over a preset; other scales have no presets."""
    authors = config.resolve("minillm", "paper", config.run_overrides("paper", None, None).get("minillm"))
    assert (authors.batch_size, authors.steps_per_phase, authors.whiten_group_size) == (16, 64, 8)
    assert (authors.select_interval, authors.eval_interval, authors.rollouts_per_phase) == (500, 100, 256)
    assert config.run_overrides("paper", "authors", None) == {}
    minillm = config.resolve("minillm", "paper", config.run_overrides("paper", "minillm", None)["minillm"])
    assert minillm == MiniLLMConfig() and minillm.steps_per_phase == 16
    mixed = config.run_overrides("paper", "minillm", ['minillm={"batch_size": 32}', 'evaluation={"batch_size": 4}'])
    assert mixed["minillm"]["batch_size"] == 32 and mixed["minillm"]["select_interval"] is None
    assert mixed["evaluation"] == {"batch_size": 4}
    minillm_values = config.preset_overrides("paper", "minillm")
    assert config.preset_of("paper", {}) == "authors" and config.preset_of("paper", minillm_values) == "minillm"
    assert config.preset_of("paper", {"lr": 1e-5}) == "authors"  # the default preset, overridden
    assert config.preset_of("paper", minillm_values | {"lr": 1e-5}) == "minillm"
    assert config.preset_of("small", {}) is None
    with pytest.raises(config.ConfigError, match="scale 'small' has no preset 'authors'.*paper scale's"):
        config.run_overrides("small", "authors", None)


def test_scales_and_defaults_validate():
    for cls in CLASSES:
        cls()
    for sc in scales.SCALES.values():
        for kind in config.KINDS:
            cfg = config.resolve(kind, sc.name)
            assert dataclasses.replace(cfg) == cfg  # validation is idempotent
        for family, sizes in sc.models.items():
            for size in sizes:
                config.resolve("sft", sc.name, model=sc.model(family, size), role="teacher")


def test_a_numeric_field_without_a_range_is_a_programming_error():
    @dataclasses.dataclass(frozen=True)
    class Unchecked:
        steps: int = 1

        def __post_init__(self):
            config._validate(self)

    with pytest.raises(TypeError, match=r"Unchecked.steps has no range"):
        Unchecked()


# ----------------------------------------------------------------------------------------------------------------
# resolve(): the one merge of defaults, scale values, a model's own values and a run's overrides
# ----------------------------------------------------------------------------------------------------------------


def test_resolve_merges_nested_overrides_into_the_scales_nested_values():
    cfg = config.resolve("minillm", "small", {"generation": {"temperature": 0.9}})
    assert cfg.generation == GenerationSettings(max_new_tokens=48, temperature=0.9)  # the scale's 48, not 256
    assert cfg.total_steps == 128 and cfg.warmup_steps == 8  # the scale's other values stay
    ev = config.resolve("evaluation", "small", {"generation": {"top_k": 5}})
    assert ev.generation == GenerationSettings(max_new_tokens=48, no_repeat_ngram_size=6, top_k=5)  # ref §5.1 stays
    # paper scale overrides nothing but what its default preset sets (the authors' batch, groups and selection)
    assert config.resolve("minillm", "paper") == MiniLLMConfig(**scales.PAPER_PRESETS["authors"])


def test_resolve_sft_takes_the_models_lr_and_the_roles_selection():
    spec = scales.scale("small").model("opt", "2.7B")
    teacher = config.resolve("sft", "small", model=spec, role="teacher")
    init = config.resolve("sft", "small", model=spec, role="init")
    assert teacher.lr == init.lr == spec.sft_lr == 4.4e-3
    assert (teacher.select_by, init.select_by) == ("rouge_l", "val_loss")  # ref §3.1
    assert teacher.pretrain_steps == 200  # the scale's values stay
    assert config.resolve("sft", "small", {"lr": 1e-3}, model=spec).lr == 1e-3  # a run's override comes last
    with pytest.raises(config.ConfigError, match="only sft configs take a role"):
        config.resolve("minillm", "small", role="teacher")


def _plan_config(plan, stage_kind: str, **match):
    (stage,) = [s for s in plan.by_kind(stage_kind) if all(s.config.get(k) == v for k, v in match.items())]
    return stage.config


def test_every_stage_of_the_plan_carries_resolves_config():
    from benchmark.plan import build_plan

    overrides = {"minillm": {"generation": {"temperature": 0.9}}, "evaluation": {"batch_size": 4}}
    for scale in ("tiny", "small"):
        plan = build_plan(["all"], scale, overrides=overrides)
        for s in plan.stages.values():
            if s.kind == "sft":
                spec = scales.scale(scale).model(s.family, s.config["size"])
                want = config.resolve("sft", scale, model=spec, role=s.config["role"])
                assert s.config["sft"] == config.to_dict(want)
            elif s.kind == "distill":
                spec = scales.scale(scale).model(s.family, s.config["path"][-1])  # the hop's student
                want = config.resolve("minillm", scale, overrides["minillm"], model=spec)
                assert s.config["minillm"] == config.to_dict(want)
            elif s.kind == "evaluate":
                want = config.resolve("evaluation", scale, overrides["evaluation"])
                assert s.config["evaluation"] == config.to_dict(want)


class _Stop(Exception):
    """Raised by a stand-in trainer once it has the config it was handed."""


def _train_cli(monkeypatch, argv: list[str], tmp_path) -> object:
    """The config `python -m benchmark train ARGV` hands to its trainer (which is not run)."""
    from benchmark import minillm, sft
    from benchmark.__main__ import main

    got = []

    def trainer(*args, **kwargs):
        got.append(next(a for a in args if isinstance(a, SFTConfig | MiniLLMConfig)))
        raise _Stop

    monkeypatch.setattr(sft, "train_sft", trainer)
    monkeypatch.setattr(minillm, "train_minillm", trainer)
    with pytest.raises(_Stop):
        main(["train", *argv, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    return got[0]


def test_train_cli_minillm_keeps_the_scales_nested_values_as_the_plan_does(monkeypatch, tmp_path, capsys):
    from benchmark.plan import build_plan

    text = '{"generation": {"temperature": 0.9}}'
    argv = ["minillm", "--scale", "small", "--student", "s", "--teacher", "t", "--set", text]
    cfg = _train_cli(monkeypatch, [*argv, "--student-size", "gpt2:760M"], tmp_path)
    assert cfg.generation.max_new_tokens == 48 and cfg.generation.temperature == 0.9
    plan = build_plan(["gpt2/1.5B>760M"], "small", overrides={"minillm": json.loads(text)})
    assert config.to_dict(cfg) == _plan_config(plan, "distill", path=["1.5B", "760M"])["minillm"]
    # small takes the hop's lr from the student's: without the student's size the command says what to pass
    from benchmark.__main__ import main

    assert main(["train", *argv, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")]) == 2
    assert "--student-size FAMILY:SIZE" in capsys.readouterr().err
    assert _train_cli(monkeypatch, [*argv, "--set", '{"lr": 2e-4}'], tmp_path).lr == 2e-4


def test_resolve_minillm_takes_a_tenth_of_the_students_sft_lr_at_small_scale():
    small = scales.scale("small")
    for family, size, lr in [("gpt2", "760M", 3e-4), ("gpt2", "120M", 1e-3), ("opt", "2.7B", 4.4e-4)]:
        assert config.resolve("minillm", "small", model=small.model(family, size)).lr == lr  # exact: rounded
    spec = small.model("gpt2", "120M")
    assert config.resolve("minillm", "small", {"lr": 2e-4}, model=spec).lr == 2e-4  # a run's lr comes last
    # the other scales keep one hop lr for every student
    for name in ("tiny", "paper"):
        sc = scales.scale(name)
        assert config.resolve("minillm", name, model=sc.model("gpt2", "120M")) == config.resolve("minillm", name)
    with pytest.raises(config.ConfigError, match="only sft and minillm"):
        config.resolve("evaluation", "small", model=spec)


@pytest.mark.parametrize(("size", "role", "select_by"), [("1.5B", "teacher", "rouge_l"), ("760M", "init", "val_loss")])
def test_train_cli_sft_selects_as_the_plan_does(monkeypatch, tmp_path, size, role, select_by):
    from benchmark.plan import build_plan

    cfg = _train_cli(monkeypatch, ["sft", "--scale", "small", "--model", f"gpt2:{size}"], tmp_path)
    assert cfg.select_by == select_by
    plan = build_plan(["gpt2/1.5B>760M"], "small")
    assert config.to_dict(cfg) == _plan_config(plan, "sft", size=size, role=role)["sft"]


def test_train_cli_sft_role_option(monkeypatch, tmp_path):
    model = tmp_path / "base"  # a local base model: its role is not known from a FAMILY:SIZE
    model.mkdir()
    (model / "config.json").write_text("{}")
    argv = ["sft", "--scale", "small", "--model", str(model)]
    assert _train_cli(monkeypatch, argv, tmp_path).select_by == "val_loss"
    assert _train_cli(monkeypatch, [*argv, "--role", "teacher"], tmp_path).select_by == "rouge_l"
    assert _train_cli(monkeypatch, ["sft", "--model", "gpt2:1.5B", "--role", "init"], tmp_path).select_by == "val_loss"


def test_the_runner_executes_the_config_of_the_stage_in_the_plan(monkeypatch, tmp_path):
    from benchmark import runner
    from benchmark.plan import build_plan, write_stage_spec

    plan = build_plan(["gpt2/1.5B>760M"], "tiny", overrides={"minillm": {"generation": {"temperature": 0.9}}})
    got = []

    def for_scale(*args, **kwargs):
        got.append(config.for_scale(*args, **kwargs))
        raise _Stop

    monkeypatch.setattr(runner, "for_scale", for_scale)
    # at paper scale under the minillm preset too: fields at their class default are left out of stage.json and
    # must come back as that default, not as the scale's (authors') value
    paper = build_plan(["gpt2/1.5B>760M>120M"], "paper", overrides=config.run_overrides("paper", "minillm", None))
    hops = [s for s in paper.stages.values() if s.kind == "distill" and not s.source]
    assert hops and all("whiten_group_size" not in s.config["minillm"] for s in hops)
    stages = [(s, plan) for s in plan.stages.values() if s.kind != "data"] + [(s, paper) for s in hops]
    for stage, of in stages:
        with pytest.raises(_Stop):
            runner.execute_stage(write_stage_spec(stage, of, tmp_path))
        key = {"sft": "sft", "distill": "minillm", "evaluate": "evaluation"}[stage.kind]
        assert config.to_dict(got.pop()) == stage.config[key]
    assert got == [] and config.for_scale(MiniLLMConfig, hops[0].config["minillm"]).whiten_group_size is None


@pytest.mark.parametrize(
    ("family", "size", "lr", "epochs"),
    # microsoft/LMOps minillm/scripts/{gpt2,opt}/sft/*.sh: LR= and --epochs (ref §2.4)
    [
        ("gpt2", "120M", 5e-4, 20),
        ("gpt2", "340M", 1e-4, 20),
        ("gpt2", "760M", 1e-4, 10),
        ("gpt2", "1.5B", 5e-5, 10),
        ("opt", "1.3B", 5e-5, 10),
        ("opt", "2.7B", 5e-5, 10),
        ("opt", "6.7B", 1e-5, 10),
        ("opt", "13B", 1e-5, 10),
    ],
)
def test_paper_sft_takes_the_reference_scripts_settings_of_each_size(family, size, lr, epochs):
    spec = scales.scale("paper").model(family, size)
    cfg = config.resolve("sft", "paper", model=spec, role="init")
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.warmup_steps, cfg.lr_min) == (lr, epochs, 32, 0, 1e-7)
    assert config.resolve("sft", "paper", {"epochs": 3}, model=spec).epochs == 3  # a run's override comes last
    assert config.resolve("sft", "paper") == SFTConfig()  # no model: the defaults


def test_train_cli_sft_at_paper_scale_uses_the_sizes_settings(monkeypatch, tmp_path):
    cfg = _train_cli(monkeypatch, ["sft", "--scale", "paper", "--model", "gpt2:120M"], tmp_path)
    assert (cfg.lr, cfg.epochs, cfg.select_by) == (5e-4, 20, "val_loss")
    cfg = _train_cli(monkeypatch, ["sft", "--scale", "paper", "--model", "opt:13B"], tmp_path)
    assert (cfg.lr, cfg.epochs, cfg.select_by) == (1e-5, 10, "rouge_l")  # the teacher: by ROUGE-L (ref §3.1)
