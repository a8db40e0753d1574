"""The GPU numbers, as ONE prepared run on a GPU machine (one H200, minutes): the trainer's own rollouts and optimizer
step at the paper's model shapes.

    python -m benchmark perf-gpu             # writes $OUT/gpu-<gpu>-<date>.json and .md (or --out DIR), a summary
    python -m benchmark perf-gpu --dry-run   # the tiny scale's models in seconds, CPU or GPU: what the tests run

Needs this repository and its dependencies (torch, transformers, DeepSpeed; no TRL, no network). Models are the real
architectures with random weights (`common.hub_shaped_model`: the `paper` scale's shapes, the hub vocabularies):
GPT-2 120M/340M/760M students with the 1.5B teacher; OPT 1.3B/2.7B students with the 6.7B teacher. The config is
MiniLLM's paper's (`config.resolve` at paper scale under the `minillm` preset: its lr, betas, clip, kd_ratio,
lengths and global batch 64, the batch of the 2026-11-28 measurement and of issue #18's goal) in bf16
with the pair's micro-batch (no result depends on it; the trainer decodes rollouts in chunks of it). The student is
trained by the engine of `minillm.minillm_engine` (DeepSpeed ZeRO-1 bf16: bf16 weights, fp32 master weights and
AdamW states, as the trainer runs on a GPU); the teacher is frozen in the same precision. A dry run uses the tiny
scale's models and short lengths: the same code; on a CPU, DeepSpeed's bf16 student beside an fp32 teacher
(`engine.compute_dtype`). A pair that does not fit is recorded as "out of memory". Budget: it stops starting new
pairs after --budget-s seconds (default 360) and marks the rest "skipped (time budget)". The JSON and its markdown
(`gpu_report.render_markdown`: the date, the GPU, every planned row, "not measured" where a figure is missing) are
written after every section, so a killed run keeps both.

Rollouts decode with the trainer's default path (`sampling.decode_cache`): static caches and CUDA graphs on a GPU,
the dynamic loop on a CPU (the dry run's); the JSON records which.

Measured per pair:
  peak        the GPU's bf16 matmul TFLOPS: the best of large square matmuls (4096, 8192, 16384), timed synchronously
  rollouts    `minillm.collect_rollouts` of one global mini-batch (64 prompts of 256 random tokens, 256 new tokens,
              EOS suppressed) in the trainer's rollout chunks (its micro-batch): teacher-mixed `sampling.sample`, the
              pure-student sample the trainer logs (log_student_sample), and (rollout_logprobs="forward") one full
              forward of each model over the rollouts: generated tok/s
  step        `minillm.minillm_step` on those 64 rollouts with the PT term (random pt_seq_length-token chunks):
              a first-epoch step (the teacher's response logits computed into a fresh TeacherLogitsCache) and a
              later-epoch step (read from it), each after a warm-up step: tok/s and MFU
  MFU         model FLOPs / time / measured peak. Model FLOPs per token: 6N + 12 L d S (student, fwd+bwd) and
              2N + 4 L d S (forward), N = parameters without the position embeddings, S = sequence length
              (PaLM appendix B convention, causal masking not discounted)
  memory      torch.cuda.max_memory_allocated per pair (reset before the student is built)
  projection  one paper stage on this ONE GPU: total_steps / steps_per_phase phases, each rollouts_per_phase /
              batch_size rollout batches, rollouts_per_phase / batch_size first-epoch steps and the rest
              later-epoch steps; validation, checkpoints and data loading excluded. The paper's report stands beside
              it (GPT-2 120M from the 1.5B teacher: under 10 h on four V100s; OPT 2.7B from the 6.7B TA: about 40 h
              on four V100s). Rollouts run all 256 tokens: an upper bound for a trained student that stops at EOS.
  scoring     (first pair of each family) bf16 correctness of the stored rollout log-probs: the decode loop's
              incremental log q / log p against `minillm.rescore_rollouts`' full forward (what the trainer stores by
              default, as the reference does) and against an fp32 copy of the same weights; the share of tokens
              whose first-epoch PPO ratio would leave [0.8, 1.2] from precision alone if decode-time log q were stored
  phase       (first pair, after the steps) one phase of the trainer, `minillm.run_phase` itself on 256 random prompts
              (EOS suppressed during its rollouts): rollouts (teacher-mixed decode and the logged pure-student
              sample, decoders built and graphs captured as every phase does), scoring (time inside
              `minillm.rescore_rollouts`), optimisation (its 16 steps): the measured phase split and stage hours

Before the pairs, when the first pair is selected (`perf.decode`, issue #18; no new measurement after
min(240 s, --budget-s - 120 s), leaving the pairs their time):
  decode      GPT-2 1.5B > 120M at the rollout batch (64 rows x 256 + 256 tokens, bf16), steady state: teacher-mixed
              with the dynamic loop and with the static-cache path (`static_decode`, a CUDA graph per step; also
              eager), each model alone over static caches, HF generate with the compiled static cache; finished rows
              (EOS made likely): compaction, masking, buckets; token agreement (bf16, and fp32 copies); tok/s as a
              share of the HBM bandwidth floor; Table 1's trained hops (340M>120M, 760M>120M, 760M>340M) both ways
  phases      projected from the steady-state figures: rollouts / scoring / optimisation per phase and the stage's
              hours on this GPU, with the static and the dynamic decode, for that pair and the hops (a hop's
              optimisation is the measured 1.5B pair's with the same student: an upper bound for its smaller teacher)

The issue's run on one H200 (about 6 minutes, an estimate: nothing of this version has run on a GPU yet; give it a
timeout of 480 s):
    python -m benchmark perf-gpu --pairs "gpt2 1.5B>120M,gpt2 1.5B>340M" --budget-s 330
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmark import minillm
from benchmark.config import MiniLLMConfig, preset_overrides, resolve, to_dict
from benchmark.engine import Dist, compute_dtype, init_distributed
from benchmark.perf import decode
from benchmark.perf.common import EOSLogit, PerfError, hub_shaped_model, package_versions
from benchmark.perf.decode import Timer, fp32_copy, random_prompts
from benchmark.perf.gpu_report import render_markdown, summary
from benchmark.sampling import decode_cache, example_generators, sample

# 4: the measured phase (run_phase), no static_cache check, rollouts on the default (static) path, a markdown beside;
# 3: the decode section (static caches, CUDA graphs); 2: the trainer's own code
SCHEMA = "mskd-bench.perf-gpu/4"
# In priority order: the two pairs the paper reports a wall time for come first. `micro`: sequences per micro-batch.
PAIRS = [
    dict(
        name="gpt2 1.5B>120M",
        family="gpt2",
        teacher="1.5B",
        student="120M",
        micro=16,
        paper="under 10 h on 4x V100",
        paper_h=10.0,
        checks=("scoring", "phase"),
    ),
    dict(
        name="opt 6.7B>2.7B",
        family="opt",
        teacher="6.7B",
        student="2.7B",
        micro=8,
        paper="about 40 h on 4x V100",
        paper_h=40.0,
        checks=("scoring",),
    ),
    dict(name="opt 6.7B>1.3B", family="opt", teacher="6.7B", student="1.3B", micro=8, paper=None, paper_h=None),
    dict(name="gpt2 1.5B>340M", family="gpt2", teacher="1.5B", student="340M", micro=16, paper=None, paper_h=None),
    dict(name="gpt2 1.5B>760M", family="gpt2", teacher="1.5B", student="760M", micro=16, paper=None, paper_h=None),
]
# --dry-run: the paper's config at lengths and batches a CPU runs in seconds (still 16 steps a phase, 4 per epoch;
# whitening over the batch of 4: the `authors` preset's groups of 8, in Table 1's hops, do not divide it)
DRY_RUN = dict(
    batch_size=4,
    rollouts_per_phase=16,
    max_prompt_length=8,
    generation={"max_new_tokens": 8},
    pt_seq_length=16,
    whiten_group_size=None,
)
DRY_RUN_MICRO = 2
# The decode section starts no new measurement after DECODE_BUDGET_S seconds of the run, nor after --budget-s less
# PAIRS_RESERVE_S (dry run: no limit): its pair and Table 1's hops at full length take ~3.5 minutes of an H200 and the
# first two pairs with the measured phase ~2 (estimates from the 2026-11-28 rates).
DECODE_BUDGET_S = 240.0
PAIRS_RESERVE_S = 120.0


def stage_config(micro: int, dry: bool) -> MiniLLMConfig:
    """The paper's MiniLLM config under the `minillm` preset (batch 64) in bf16 with a micro-batch of `micro`
    sequences (memory only: the step's result does not depend on it); `dry`: the short lengths and batch of
    DRY_RUN."""
    overrides = {"precision": "bf16", "micro_batch_size": micro} | (DRY_RUN if dry else {})
    return resolve("minillm", "paper", preset_overrides("paper", "minillm") | overrides)


def model_shape(model) -> tuple[int, int, int]:
    """(N without position embeddings, layers, width)."""
    c = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if "wpe" not in name and "embed_positions" not in name)
    layers = getattr(c, "n_layer", None) or c.num_hidden_layers
    width = getattr(c, "n_embd", None) or c.hidden_size
    return n, layers, width


def train_flops(model, tokens: int, seq: int) -> float:
    """Forward and backward FLOPs of `tokens` tokens in sequences of `seq`: tokens x (6N + 12 L d S)."""
    n, L, d = model_shape(model)
    return tokens * (6 * n + 12 * L * d * seq)


def fwd_flops(model, tokens: int, seq: int) -> float:
    """Forward FLOPs of `tokens` tokens in sequences of `seq`: tokens x (2N + 4 L d S)."""
    n, L, d = model_shape(model)
    return tokens * (2 * n + 4 * L * d * seq)


def matmul_peak(device, dtype, sizes, iters: int) -> dict:
    """The best TFLOPS of `iters` square matmuls of each size (after one untimed)."""
    best, per = 0.0, {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        with Timer(device) as t:
            for _ in range(iters):
                a @ b
        tflops = 2 * n**3 * iters / t.seconds / 1e12
        per[str(n)] = tflops
        best = max(best, tflops)
        del a, b
    return {"tflops": best, "per_size": per, "iters": iters, "dtype": str(dtype)}


def measure_rollouts(policy, teacher, cfg: MiniLLMConfig, dist: Dist) -> tuple[dict, minillm.Buffer]:
    """The trainer's `collect_rollouts` on one global mini-batch of random prompts, EOS suppressed, in its rollout
    chunks (the engine's micro-batch), after one chunk as warm-up: the first call of a process grows the CUDA
    allocator's pool for both KV caches (3.2x slower on the H200). Returns the figures and the gathered buffer."""
    eos = policy.config.eos_token_id
    s, t = EOSLogit(policy, eos, float("-inf")), EOSLogit(teacher, eos, float("-inf"))
    prompts = random_prompts(policy, cfg.batch_size, cfg.max_prompt_length, seed=0).tolist()
    chunk = cfg.micro_batch_size or cfg.batch_size

    def run(n: int):
        return minillm.collect_rollouts(s, t, prompts[:n], list(range(n)), cfg, eos, dist, chunk)

    run(chunk)
    with Timer(dist.device) as tm:
        local, _ = run(len(prompts))
    buf = minillm.gather_buffer(local, dist)
    rows, tokens = len(buf), int(buf.response_mask.sum())
    P, T = cfg.max_prompt_length, cfg.generation.max_new_tokens
    # every decode runs both models (the logged pure-student sample scores its tokens under the teacher too)
    decodes = 1 + int(cfg.log_student_sample)
    flops = decodes * (fwd_flops(policy, tokens, P + T // 2) + fwd_flops(teacher, tokens, P + T // 2))
    if cfg.rollout_logprobs == "forward":
        flops += fwd_flops(policy, rows * (P + T), P + T) + fwd_flops(teacher, rows * (P + T), P + T)
    figures = {
        "rows": rows,
        "chunk": chunk,
        "seconds": tm.seconds,
        "tokens": tokens,
        "tok_per_s": tokens / tm.seconds,
        "model_flops": flops,
        "decodes": decodes,
        "rollout_logprobs": cfg.rollout_logprobs,
        "decode_cache": decode_cache(None, dist.device, (s, t)),
    }
    return figures, buf


@torch.no_grad()
def measure_scoring(policy, teacher, cfg: MiniLLMConfig, device) -> dict:
    """Half-precision correctness of the stored rollout log-probs (MiniLLMConfig.rollout_logprobs) on one rollout
    chunk: the decode loop's incremental log q / log p against the trainer's full-forward rescoring
    (`minillm.rescore_rollouts`, the reference's way) and against an fp32 copy of the same weights.
    `clipped_at_epoch1` is the share of tokens whose first-epoch ratio q_new / q_old would leave PPO's [0.8, 1.2]
    from precision alone if the decode-time log q were stored. Random weights give near-uniform distributions, so
    this is a floor, not a trained model's value."""
    eos = policy.config.eos_token_id
    rows = cfg.micro_batch_size or cfg.batch_size
    ids = random_prompts(policy, rows, cfg.max_prompt_length, seed=3).to(device)
    mask = torch.ones_like(ids)

    def wrapped(model):
        return EOSLogit(model, eos, float("-inf"))

    out = sample(
        wrapped(policy),
        ids,
        mask,
        cfg.generation,
        eos_token_id=eos,
        generators=example_generators(cfg.seed, list(range(rows))),
        mix_model=wrapped(teacher),
        mix_alpha=cfg.teacher_mixed_alpha,
        return_logprobs=True,
    )
    args = (ids, mask, out.response_ids, out.response_mask, cfg.generation)
    forward = minillm.rescore_rollouts(wrapped(policy), wrapped(teacher), *args)
    s32, t32 = fp32_copy(policy), fp32_copy(teacher)
    fp32 = minillm.rescore_rollouts(wrapped(s32), wrapped(t32), *args)
    del s32, t32
    m = out.response_mask.bool()
    res = {}
    decoded = (out.student_logprobs, out.teacher_logprobs)
    for i, name in enumerate(("student", "teacher")):
        dec, fwd, ref = decoded[i], forward[i], fp32[i]
        d_dec_fwd, d_fwd_ref, d_dec_ref = (dec - fwd)[m].abs(), (fwd - ref)[m].abs(), (dec - ref)[m].abs()
        res[name] = {
            "dtype": str(next((policy, teacher)[i].parameters()).dtype),
            "tokens": int(m.sum()),
            "mean_logprob": float(ref[m].mean()),
            "decode_vs_forward": {"mean": float(d_dec_fwd.mean()), "max": float(d_dec_fwd.max())},
            "forward_vs_fp32": {"mean": float(d_fwd_ref.mean()), "max": float(d_fwd_ref.max())},
            "decode_vs_fp32": {"mean": float(d_dec_ref.mean()), "max": float(d_dec_ref.max())},
            "clipped_at_epoch1": float(((dec - fwd)[m].exp() - 1).abs().gt(0.2).float().mean()),
            "decode_cache": decode_cache(None, device, (policy, teacher)),
        }
    return res


def measure_step(engine, teacher, buf: minillm.Buffer, cfg: MiniLLMConfig, dist: Dist, out: Path, iters: int):
    """The trainer's `minillm_step` on the global mini-batch `buf` with a PT batch of random chunks: after one
    warm-up step, `iters` pairs of (a first-epoch step with a fresh TeacherLogitsCache, which computes the
    teacher's response logits; a later-epoch step reading them from it). Medians of each, tok/s and model FLOPs."""
    policy = engine.module
    g = torch.Generator().manual_seed(1)
    pt_chunks = None
    if cfg.pt_coef > 0:
        pt_chunks = torch.randint(3, policy.config.vocab_size - 1, (cfg.batch_size, cfg.pt_seq_length), generator=g)

    def new_cache():
        return minillm.TeacherLogitsCache() if cfg.cache_teacher_logits else None

    def step(k: int, cache) -> float:
        with Timer(dist.device) as t:
            minillm.minillm_step(engine, teacher, buf, cfg, k, pt_chunks, dist, out, cache)
        return t.seconds

    step(0, new_cache())
    first, later = [], []
    for i in range(iters):
        cache = new_cache()
        first.append(step(1 + 2 * i, cache))
        later.append(step(2 + 2 * i, cache))
    B, L = len(buf), buf.prompt_ids.shape[1] + buf.response_ids.shape[1]
    pt_tokens = B * (cfg.pt_seq_length - 1) if pt_chunks is not None else 0
    teacher_scoring = fwd_flops(teacher, B * L, L)
    flops = train_flops(policy, B * L, L) + teacher_scoring
    if pt_chunks is not None:
        S = cfg.pt_seq_length - 1
        flops += train_flops(policy, pt_tokens, S) + fwd_flops(teacher, pt_tokens, S)
    step_s, cached_s = statistics.median(first), statistics.median(later)
    response = int(buf.response_mask.sum())
    return {
        "micro_batch": engine.train_micro_batch_size_per_gpu(),
        "gradient_accumulation_steps": engine.gradient_accumulation_steps(),
        "step_sequences": B,
        "step_s": step_s,
        "cached_step_s": cached_s,
        "step_s_values": first,
        "cached_step_s_values": later,
        "response_tok_per_s": response / step_s,
        "processed_tok_per_s": (B * L + pt_tokens) / step_s,
        "model_flops_per_step": flops,
        "model_flops_per_cached_step": flops - teacher_scoring if cfg.cache_teacher_logits else flops,
        "pt_loss": pt_chunks is not None,
    }


def measure_phase(engine, teacher, cfg: MiniLLMConfig, dist: Dist, out: Path) -> dict:
    """One phase of the trainer, `minillm.run_phase` itself, on rollouts_per_phase random prompts with a PT batch of
    random chunks, split as it runs: rollouts = run_phase's rollout_s less scoring (the teacher-mixed decode and the
    logged pure-student sample on the trainer's default decode path, its decoders built and graphs captured as in
    every phase); scoring = the seconds inside `minillm.rescore_rollouts` (the device synchronised around each
    call); optimisation = the rest of the phase (its steps). EOS is suppressed during the rollouts only (forward
    hooks removed before the first step), so every rollout runs max_new_tokens, as in `measure_rollouts`."""
    policy = engine.module
    eos = policy.config.eos_token_id
    prompts = random_prompts(policy, cfg.rollouts_per_phase, cfg.max_prompt_length, seed=6).tolist()
    g = torch.Generator().manual_seed(2)
    pt_chunks = None
    if cfg.pt_coef > 0:
        pt_chunks = torch.randint(3, policy.config.vocab_size - 1, (cfg.batch_size, cfg.pt_seq_length), generator=g)

    def no_eos(module, args, kwargs, output):
        output.logits[..., eos] = float("-inf")
        return output

    hooks = [m.register_forward_hook(no_eos, with_kwargs=True) for m in (policy, teacher)]
    rescore, scoring = minillm.rescore_rollouts, []

    def timed_rescore(*args, **kwargs):
        with Timer(dist.device) as t:
            result = rescore(*args, **kwargs)
        scoring.append(t.seconds)
        return result

    def rollouts_done(_buffer) -> None:
        for h in hooks:
            h.remove()

    minillm.rescore_rollouts = timed_rescore  # collect_rollouts looks it up in its module at each call
    try:
        ran = minillm.run_phase(
            engine, teacher, prompts, 0, cfg, dist, eos_token_id=eos, out=out, pt_chunks=pt_chunks,
            on_rollouts=rollouts_done,
        )  # fmt: skip
    finally:
        minillm.rescore_rollouts = rescore
        rollouts_done(None)
    phase_s, scoring_s = ran["phase_s"], sum(scoring)
    return {
        "decode_cache": decode_cache(None, dist.device, (policy, teacher)),
        "rollout_chunk": engine.train_micro_batch_size_per_gpu(),
        "rollouts_per_phase": cfg.rollouts_per_phase,
        "generated_tokens": ran["generated_tokens"],
        "steps": len(ran["steps"]),
        "rollouts_s": ran["rollout_s"] - scoring_s,
        "scoring_s": scoring_s,
        "optimisation_s": phase_s - ran["rollout_s"],
        "phase_s": phase_s,
        "rollout_share": (ran["rollout_s"] - scoring_s) / phase_s,
        "hours_1gpu": cfg.total_steps / cfg.steps_per_phase * phase_s / 3600,
    }


def project(rollouts: dict, step: dict, cfg: MiniLLMConfig) -> dict:
    """Hours of one stage of `cfg` on this one GPU from the measured rollouts and steps: every phase rolls out
    rollouts_per_phase prompts, runs its first PPO epoch's steps at step_s (teacher logits computed) and the other
    epochs' at cached_step_s."""
    phases = cfg.total_steps / cfg.steps_per_phase
    rollout_s = cfg.rollouts_per_phase / rollouts["rows"] * rollouts["seconds"]
    first = cfg.rollouts_per_phase // cfg.batch_size
    train_s = first * step["step_s"] + (cfg.steps_per_phase - first) * step["cached_step_s"]
    return {
        "phases": phases,
        "rollout_s_per_phase": rollout_s,
        "train_s_per_phase": train_s,
        "phase_s": rollout_s + train_s,
        "hours_1gpu": phases * (rollout_s + train_s) / 3600,
        "excluded": f"validation every {cfg.eval_interval} steps ({cfg.val_examples} prompts sampled), "
        "checkpointing, data loading",
    }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def _measure_pair(pair: dict, teacher, cfg: MiniLLMConfig, dist: Dist, dry: bool, peak: float, out: Path) -> dict:
    """Every figure of one pair; the student and its engine are built here and released before returning."""
    cuda = dist.device.type == "cuda"
    student = hub_shaped_model(pair["family"], pair["student"], dry=dry, device=dist.device, dtype=torch.float32)
    engine = minillm.minillm_engine(student, cfg, dist.world_size)
    policy = engine.module
    policy.eval()  # as run_phase: rollouts and steps run without dropout
    row: dict = {"params": {"student": model_shape(policy)[0], "teacher": model_shape(teacher)[0]}}
    try:
        rollouts, buf = measure_rollouts(policy, teacher, cfg, dist)
        rollouts["mfu"] = rollouts["model_flops"] / rollouts["seconds"] / peak
        peak_rollouts = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        checks = pair.get("checks", ())
        if "scoring" in checks:  # before measure_step updates the student that sampled the rollouts
            row["rollout_scoring"] = measure_scoring(policy, teacher, cfg, dist.device)
            if cuda:  # its fp32 copies are not part of a training stage's memory
                torch.cuda.reset_peak_memory_stats()
        step = measure_step(engine, teacher, buf, cfg, dist, out, iters=1 if dry else 2)
        step["mfu"] = step["model_flops_per_step"] / step["step_s"] / peak
        step["cached_mfu"] = step["model_flops_per_cached_step"] / step["cached_step_s"] / peak
        row.update(
            status="measured",
            rollouts=rollouts,
            step=step,
            peak_memory_gib=max(peak_rollouts, torch.cuda.max_memory_allocated() / 2**30) if cuda else None,
            projection=project(rollouts, step, cfg),
        )
        if pair["paper_h"] is not None:
            row["projection"]["paper_hours_4x_v100"] = pair["paper_h"]
        if "phase" in checks:  # last: its steps change the student
            try:
                row["phase"] = measure_phase(engine, teacher, cfg, dist, out)
            except Exception as exc:  # the pair's other figures stand
                row["phase"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    finally:
        engine.destroy()
        del engine, policy, student
        gc.collect()
    return row


def run(out_dir: Path, dry: bool, budget_s: float, only: tuple[str, ...] = ()) -> Path:
    """Measure every pair of PAIRS (or those named in `only`), starting none after `budget_s` seconds; write the JSON
    (`out_dir`/gpu-<gpu>-<date>.json, gpu-dry-run.json for `dry`) and its markdown beside it (.md), and return the
    JSON's path."""
    t_start = time.perf_counter()
    if not dry and not torch.cuda.is_available():
        raise PerfError("no GPU: run with --dry-run to test the script on CPU")
    unknown = sorted(set(only) - {p["name"] for p in PAIRS})
    if unknown:
        raise PerfError(f"unknown pair(s) {unknown}; pairs: {', '.join(p['name'] for p in PAIRS)}")
    dist = init_distributed()
    device = dist.device
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(1)  # a dry run on a CPU shares the machine with the tests
    gpu = torch.cuda.get_device_name(0) if cuda else f"none (dry run on {platform.processor() or 'cpu'})"
    pairs = [p for p in PAIRS if not only or p["name"] in only]
    configs = {p["name"]: stage_config(DRY_RUN_MICRO if dry else p["micro"], dry) for p in pairs}
    first_cfg = next(iter(configs.values()))
    report = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmark " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["perf-gpu"] else None,
        "dry_run": dry,
        "gpu": {
            "name": gpu,
            "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
            "count_visible": torch.cuda.device_count() if cuda else 0,
        },
        "versions": package_versions(("transformers", "deepspeed")) | {"cuda": torch.version.cuda},
        "settings": {
            "config": to_dict(first_cfg) | {"micro_batch_size": {n: c.micro_batch_size for n, c in configs.items()}},
            "precision": "DeepSpeed bf16 student (bf16 weights, fp32 master weights and AdamW states); teacher in "
            f"engine.compute_dtype({first_cfg.precision!r}, {device.type})",
            "rollouts": "minillm.collect_rollouts of batch_size random prompts of max_prompt_length tokens in chunks "
            "of the micro-batch, EOS suppressed (all max_new_tokens), after one chunk as warm-up",
            "step": "minillm.minillm_step on those rollouts with the PT term on random chunks: first-epoch step "
            "(fresh TeacherLogitsCache) and later-epoch step (cached), after one warm-up step",
            "mfu": "model FLOPs (6N + 12LdS train, 2N + 4LdS forward) / seconds / measured bf16 matmul peak",
            "budget_s": budget_s,
            "pairs": list(only) or "all",
            "planned_pairs": [p["name"] for p in PAIRS],
            "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        },
        "peak": None,
        "pairs": [],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M")
    path = out_dir / ("gpu-dry-run.json" if dry else f"gpu-{_slug(gpu)}-{stamp}.json")
    report["peak"] = matmul_peak(device, torch.bfloat16, [64, 128] if dry else [4096, 8192, 16384], 2 if dry else 20)
    peak = report["peak"]["tflops"] * 1e12
    decode_pair = decode.PAIR_NAME
    hops = []
    if decode_pair in configs:  # the decode section comes first: it is bounded by its own deadline
        cfg = configs[decode_pair]
        hop_overrides = {"precision": "bf16", "micro_batch_size": cfg.micro_batch_size} | (DRY_RUN if dry else {})
        hops = decode.table1_trained_hops(hop_overrides)
        try:
            report["decode"] = decode.run_section(
                cfg,
                device,
                compute_dtype(cfg.precision, device),
                gpu,
                dry=dry,
                overrides=hop_overrides,
                deadline=t_start + (float("inf") if dry else min(DECODE_BUDGET_S, budget_s - PAIRS_RESERVE_S)),
            )
        except Exception as exc:  # keep the run going: the pairs still measure the trainer
            report["decode"] = {"status": f"failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"}
        if cuda:
            torch.cuda.empty_cache()
        _write(report, path, t_start)
        print(f"[{report['wall_s']:.0f} s] decode section done", flush=True)
    teachers: dict[tuple[str, str], torch.nn.Module] = {}
    for pair in pairs:
        row = {"pair": pair["name"], "paper_report": pair["paper"]}
        report["pairs"].append(row)
        if time.perf_counter() - t_start > budget_s:
            row["status"] = "skipped (time budget)"
            continue
        cfg = configs[pair["name"]]
        try:
            key = (pair["family"], pair["teacher"])
            if key not in teachers:  # one teacher at a time on the GPU, as engine.frozen_teacher loads it
                teachers.clear()
                if cuda:
                    torch.cuda.empty_cache()
                dtype = compute_dtype(cfg.precision, device)
                t = hub_shaped_model(*key, dry=dry, device=device, dtype=dtype)
                teachers[key] = t.requires_grad_(False).eval()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            row.update(_measure_pair(pair, teachers[key], cfg, dist, dry, peak, out_dir))
        except torch.cuda.OutOfMemoryError as exc:
            row["status"] = f"out of memory ({str(exc).splitlines()[0][:120]})"
        except Exception as exc:  # keep what the other pairs measured
            row["status"] = f"failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
        if cuda:
            torch.cuda.empty_cache()
        _write(report, path, t_start)  # after every pair: a killed run keeps its results
        print(f"[{report['wall_s']:.0f} s] {row['pair']}: {row['status']}", flush=True)
    if "variants" in report.get("decode", {}):
        report["phases"] = project_phases(report, configs[decode_pair], hops)
        goals = report["decode"]["goals"]
        measured = next((p["phase"] for p in report["pairs"] if p["pair"] == decode_pair and "phase" in p), {})
        share = measured.get("rollout_share")
        goals["rollouts_below_half_of_phase"] = share < 0.5 if share is not None else None
        projected = report["phases"][decode_pair]["static_mixed"]
        goals["projected_rollouts_below_half_of_phase"] = (
            projected["rollout_share"] < 0.5 if "rollout_share" in projected else None
        )
    _write(report, path, t_start)
    print(summary(report))
    print(f"wrote {path} and {path.with_suffix('.md').name}")
    return path


def _write(report: dict, path: Path, t_start: float) -> None:
    """The JSON at `path` and its markdown beside it, with the wall time so far."""
    report["wall_s"] = time.perf_counter() - t_start
    path.write_text(json.dumps(report, indent=2) + "\n")
    path.with_suffix(".md").write_text(render_markdown(report, path.name))


def project_phases(report: dict, cfg: MiniLLMConfig, hops: list[dict]) -> dict:
    """The phase split and stage hours (`decode.phase`) of the decode section's pair (`cfg`) and of each trained hop
    of Table 1, with the static path's steady-state decode and with the dynamic loop's. Optimisation is the step of
    the measured pair with the same student: its 1.5B teacher's forwards (first-epoch response logits, PT term)
    make it an upper bound for a hop with a smaller teacher."""
    steps = {p["pair"]: p["step"] for p in report["pairs"] if p.get("status") == "measured"}
    section = report["decode"]
    targets = [(section["pair"], cfg, section)]
    targets += [(h["name"], h["config"], section["hops"].get(h["name"], {})) for h in hops]
    out = {}
    for name, c, figures in targets:
        step_pair = f"gpt2 1.5B>{name.split('>')[-1]}"
        step = steps.get(step_pair)
        row: dict = {"step_from": step_pair if step else f"not measured (pair {step_pair} not measured in this run)"}
        for loop in ("static_mixed", "dynamic_mixed"):
            v = figures.get("variants", {}).get(loop, {})
            if "seconds" in v:
                row[loop] = decode.phase(c, figures["rows"], v["seconds"], figures.get("rescore_s"), step)
            else:
                row[loop] = {"status": v.get("error") or v.get("status") or "not measured"}
        out[name] = row
    return out
