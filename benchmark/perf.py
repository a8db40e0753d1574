"""Throughput and memory of rollouts, training and evaluation, side by side with TRL, in one run on one machine.

    nox -s perf                                             # = python -m benchmark perf --scale small
    OMP_NUM_THREADS=1 python -m benchmark perf --scale small --repeats 3 --out paper_tables/perf
    python -m benchmark perf --scale tiny --quick --repeats 1 --out /tmp/perf      # seconds; what the tests run

writes `<out>/<machine>.json` (schema below and in paper_tables/perf/README.md) and `<out>/<machine>.md`, one row per
figure with its settings. Run it on an idle machine, one benchmark process at a time: the numbers are only as good as
the machine is quiet, which is why every round records a calibration matmul.

Protocol. One intra-op thread everywhere (`torch.set_num_threads(1)`, OMP_NUM_THREADS=1 in every worker:
shared/research/trl-baseline.md §2, two threads stall on the 2-vCPU development VMs). Every section runs in its own
subprocess per round (fresh process, so peak RSS belongs to that measurement alone), rounds are interleaved
(round r runs every section, the pairs in alternating order) and each figure is the median over rounds with the
range. Before each round the driver times a 512x512 fp32 matmul at 1 thread (median of 50): compare it across runs
before comparing anything else. Models have random weights built from the scale's registry sizes (`ModelSpec`) on
the synthetic tokenizer: throughput does not depend on what the weights learned, except where a trained model stops
earlier (EOS), which is why rollouts suppress EOS and every rate counts the tokens actually generated.

Sections (`--only`):
  rollouts    generated tok/s of our teacher-mixed loop (`sample(..., mix_model=teacher, mix_alpha=0.2,
              return_logprobs=True)`, the trainer's call) vs the student alone with HF `generate` (KV cache) and vs
              our loop student-alone + teacher-alone; ratio mixed / (student + teacher).
  training    one MiniLLM phase at the scale's config (rollouts + 4 PPO epochs of optimizer steps, PG + single-step
              + PT), driven through the trainer's own functions; split rollout / teacher scoring / optimisation.
  trl         trl.DistillationTrainer (on-policy reverse KL) vs `train_minillm` configured to the same objective.
  evaluation  `evaluate_model` over the test split and seeds, batched (the scale's EvalConfig batch) vs batch 1.
  gpu         always reported: "not measured (no GPU in this run)" here; benchmark/perf_gpu.py measures it.

JSON (`schema: "mskd-bench.perf/1"`): {schema, created, command, machine{slug, platform, cpu, logical_cores, versions},
protocol{scale, repeats, quick, threads, memory_method, ...}, calibration{matmul_512_fp32_1thread_ms: STAT},
rollouts, training, trl, evaluation, gpu}. STAT = {median, min, max, n, values}. A section not run holds
{"status": "not run (...)"}; a measured one {"status": "measured", "settings": {...}, ...}.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmark import BenchmarkError
from benchmark.runner import LAUNCHER_VARS

SCHEMA = "mskd-bench.perf/1"
SECTIONS = ("rollouts", "training", "trl", "evaluation")
NOT_MEASURED_GPU = "not measured (no GPU in this run)"
_RESULT_MARK = "PERF_RESULT "
MIX_ALPHA = 0.2  # MiniLLMConfig.teacher_mixed_alpha default (ref §1.3 step 1)
STOP_MEAN_LENGTH = 12.0  # rollouts that stop: mean length of the EOS-biased random models (compaction speed-up)
TEACHER_SIZE, STUDENT_SIZE = "1.5B", "120M"  # GPT-2's one-step hop, the paper's fastest reported stage


class PerfError(BenchmarkError):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Measurement primitives
# ----------------------------------------------------------------------------------------------------------------


def stat(values) -> dict:
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals), "values": vals}


def calibrate_matmul(n: int = 512, reps: int = 50) -> float:
    """Median milliseconds of an n x n fp32 matmul at 1 thread (trl-baseline.md §2: 1.3-1.8 ms under load, 1.46
    idle on the development VMs)."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    cpu = _cpu_model()
    cores = os.cpu_count() or 1
    words = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$|processor|\d+(st|nd|rd|th) gen", " ", cpu.lower())
    words = [w for w in re.split(r"[^a-z0-9]+", words) if w and w not in ("intel", "amd", "core")][:3]
    slug = "-".join([platform.system().lower(), *words, f"{cores}c"])
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("transformers", "deepspeed", "trl", "accelerate"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 (a missing optional package is a fact to record, not an error)
            versions[mod] = None
    return {
        "slug": slug,
        "platform": platform.platform(),
        "cpu": cpu,
        "logical_cores": cores,
        "versions": versions,
    }


def _rss_now_mb() -> float:
    """Current resident set size (MB) from /proc/self/statm (Linux); falls back to the peak."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    return _peak_rss_mb()


def _peak_rss_mb() -> float:
    """Peak resident set size of this process (MB): ru_maxrss, KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


MEMORY_METHOD = (
    "peak_rss_mb = ru_maxrss of the worker process at the end of the measurement (kernel-tracked peak, imports and "
    "models included); baseline_rss_mb = /proc/self/statm RSS just before the measured work; peak_delta_mb = "
    "peak - baseline (the memory the measured work added on top of the loaded process)"
)


def _memory(baseline_mb: float) -> dict:
    peak = _peak_rss_mb()
    return {"baseline_rss_mb": baseline_mb, "peak_rss_mb": peak, "peak_delta_mb": peak - baseline_mb}


# ----------------------------------------------------------------------------------------------------------------
# Setup: synthetic data, random-weight teacher and student of the scale's sizes (driver, once per run)
# ----------------------------------------------------------------------------------------------------------------


def _configs(scale_name: str):
    from benchmark import scales
    from benchmark.config import EvalConfig, MiniLLMConfig, for_scale

    sc = scales.scale(scale_name)
    return sc, for_scale(MiniLLMConfig, sc.minillm), for_scale(EvalConfig, sc.evaluation)


def prepare(scale_name: str, work: Path) -> dict:
    """Data (benchmark.synthetic, the scale's record counts) and random GPT-2 teacher/student saved with the data's
    tokenizer under `work`. Idempotent: an existing `work/setup.json` is reused."""
    from benchmark.scales import build_model
    from benchmark.synthetic import prepare_synthetic

    done = work / "setup.json"
    if done.is_file():
        return json.loads(done.read_text())
    sc, mcfg, ecfg = _configs(scale_name)
    data = prepare_synthetic(scale_name, "gpt2", work / "data")
    n_positions = max(
        mcfg.max_prompt_length + mcfg.generation.max_new_tokens,
        ecfg.max_prompt_length + ecfg.generation.max_new_tokens,
    )
    models = {}
    for role, size, seed in (("teacher", TEACHER_SIZE, 1), ("student", STUDENT_SIZE, 2)):
        spec = sc.model("gpt2", size)
        model = build_model(spec, data.tokenizer, n_positions=n_positions, seed=seed)
        path = work / role
        model.save_pretrained(path)
        data.tokenizer.save_pretrained(path)
        models[role] = {
            "path": str(path),
            "size": size,
            "describe": spec.describe(),
            "params": sum(p.numel() for p in model.parameters()),
        }
    setup = {"scale": scale_name, "data": str(work / "data"), "n_positions": n_positions, **models}
    done.write_text(json.dumps(setup, indent=2))
    return setup


def _load(path: str):
    from transformers import AutoModelForCausalLM

    from benchmark.engine import disable_dropout as _disable_dropout

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    _disable_dropout(model)
    return model.eval()


class EOSLogit(torch.nn.Module):
    """Wraps a model so that EOS gets a fixed logit bonus at every step. `bonus=-inf` suppresses EOS: random models
    then decode exactly max_new_tokens tokens, so every decoder compared generates the same number of tokens.
    `bonus=_stop_bonus(...)` makes a random model stop after a geometric number of tokens, as trained models do at
    different lengths, so the decode loop's dropping of finished rows has something to drop. Costs one indexed
    write per step."""

    def __init__(self, model, eos: int, bonus: float):
        super().__init__()
        self.model, self.eos, self.bonus, self.config = model, eos, bonus, model.config

    def forward(self, **kwargs):
        out = self.model(**kwargs)
        out.logits[..., self.eos] += self.bonus
        return out


def _stop_bonus(vocab_size: int, mean_length: float) -> float:
    """The EOS bonus giving p(EOS) ~ 1/mean_length per step on flat logits (mean length capped by max_new_tokens)."""
    return math.log(vocab_size / (mean_length - 1))


class _TimedTeacher:
    """The teacher seen through a stopwatch: while `on` (CPU: synchronous), `seconds` accumulates forward time and
    `rows` the sequences forwarded."""

    def __init__(self, model):
        self.model, self.config = model, model.config
        self.on, self.seconds, self.rows = False, 0.0, 0

    def __call__(self, *args, **kwargs):
        if not self.on:
            return self.model(*args, **kwargs)
        t = time.perf_counter()
        out = self.model(*args, **kwargs)
        self.seconds += time.perf_counter() - t
        self.rows += int(kwargs["input_ids"].shape[0])
        return out


# ----------------------------------------------------------------------------------------------------------------
# Workers: one measurement round of one section, run in a fresh subprocess (`python -m benchmark.perf --worker`)
# ----------------------------------------------------------------------------------------------------------------


def worker_rollouts(setup: dict, rnd: int, quick: bool) -> dict:
    from benchmark.data import load_prepared
    from benchmark.sampling import example_generators, left_pad, sample

    _, cfg, _ = _configs(setup["scale"])
    data = load_prepared(setup["data"], "gpt2")
    eos = data.eos_token_id
    student, teacher = _load(setup["student"]["path"]), _load(setup["teacher"]["path"])
    s_ne, t_ne = EOSLogit(student, eos, float("-inf")), EOSLogit(teacher, eos, float("-inf"))
    B, T = cfg.batch_size, cfg.generation.max_new_tokens  # collect_rollouts decodes micro-batches (world 1: batch)
    ex = data.split("train")[:B]
    ids, mask = left_pad([e.prompt_ids for e in ex], eos, cfg.max_prompt_length)
    settings = cfg.generation
    gens = lambda: example_generators(cfg.seed, list(range(B)))  # noqa: E731

    def ours(model, mix=None, logprobs=False, compact=True):
        out = sample(
            model,
            ids,
            mask,
            settings,
            eos_token_id=eos,
            generators=gens(),
            mix_model=mix,
            mix_alpha=MIX_ALPHA if mix is not None else 0.0,
            return_logprobs=logprobs,
            compact=compact,
        )
        return int(out.lengths.sum())

    stop = _stop_bonus(student.config.vocab_size, STOP_MEAN_LENGTH)
    s_stop, t_stop = EOSLogit(student, eos, stop), EOSLogit(teacher, eos, stop)

    @torch.no_grad()
    def hf_generate():
        out = student.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            use_cache=True,
            max_new_tokens=T,
            min_new_tokens=T,  # HF's way to suppress EOS (MinNewTokensLengthLogitsProcessor)
            eos_token_id=eos,
            pad_token_id=eos,
        )
        return int(out.shape[1] - ids.shape[1]) * B

    variants = {
        "mixed": lambda: ours(s_ne, mix=t_ne, logprobs=True),
        "student_ours": lambda: ours(s_ne),
        "teacher_ours": lambda: ours(t_ne),
        "student_hf_generate": hf_generate,
        # the speed-up pair: the trainer's rollout call on rows that stop at different lengths
        "mixed_stopping": lambda: ours(s_stop, mix=t_stop, logprobs=True),
        "mixed_stopping_no_compaction": lambda: ours(s_stop, mix=t_stop, logprobs=True, compact=False),
    }
    names = list(variants)
    names = names[rnd % len(names) :] + names[: rnd % len(names)]  # rotate the order over rounds
    torch.manual_seed(rnd)
    for name in names:  # warm-up: allocator, kernels, lazy imports
        variants[name]()
    res = {}
    for name in names:
        t = time.perf_counter()
        tokens = variants[name]()
        sec = time.perf_counter() - t
        res[name] = {"seconds": sec, "tokens": tokens, "tok_per_s": tokens / sec}
    return {"variants": res, "order": names, "batch": B, "max_new_tokens": T, "prompt_length": ids.shape[1]}


def _phase(engine, teacher: _TimedTeacher, prompts, draw_ids, cfg, eos, dist, phase: int, pt_chunks, step0: int):
    """One MiniLLM phase exactly as `train_minillm`'s loop body (rollouts, then ppo_epochs x mini-batches with
    advantages, whitening, `_ppo_micro_loss`, DeepSpeed backward/step), minus logging, validation and checkpoints,
    with a stopwatch around each part; the optimizer step is the trainer's own `minillm_step`."""
    from benchmark.engine import seeded_generator as _gen
    from benchmark.minillm import TeacherLogitsCache, collect_rollouts, gather_buffer, minillm_step

    micro = engine.train_micro_batch_size_per_gpu()
    t0 = time.perf_counter()
    engine.module.eval()
    local, _ = collect_rollouts(engine.module, teacher, prompts, draw_ids, cfg, eos, dist, micro)
    buf = gather_buffer(local, dist)
    t_roll = time.perf_counter() - t0
    cache = TeacherLogitsCache() if cfg.cache_teacher_logits else None
    teacher.rows = 0
    steps, step = [], step0
    for ppo_epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(len(buf), generator=_gen(cfg.seed_ppo, phase, ppo_epoch))
        for mb_start in range(0, len(buf) - cfg.batch_size + 1, cfg.batch_size):
            t_step = time.perf_counter()
            teacher.seconds, teacher.on = 0.0, True
            mb = buf.take(perm[mb_start : mb_start + cfg.batch_size])
            n_tokens = mb.response_mask.sum().item()
            n_pt = cfg.batch_size * (pt_chunks.shape[1] - 1) if pt_chunks is not None else 0
            minillm_step(engine, teacher, mb, cfg, step, pt_chunks, dist, Path("perf"), cache)
            teacher.on = False
            sec = time.perf_counter() - t_step
            step += 1
            steps.append(
                {
                    "seconds": sec,
                    "teacher_scoring_s": teacher.seconds,
                    "optimisation_s": sec - teacher.seconds,
                    "response_tokens": int(n_tokens),
                    "pt_tokens": int(n_pt),
                }
            )
    phase_s = time.perf_counter() - t0
    return {
        "phase_s": phase_s,
        "rollout_s": t_roll,
        "teacher_scoring_s": sum(s["teacher_scoring_s"] for s in steps),
        "teacher_rows": teacher.rows,
        "optimisation_s": sum(s["optimisation_s"] for s in steps),
        "generated_tokens": int(buf.response_mask.sum()),
        "steps": steps,
    }


def worker_training(setup: dict, rnd: int, quick: bool, cache: bool = True) -> dict:
    """A MiniLLM phase of the scale's config; `cache=False` recomputes the teacher's logits every PPO epoch (the
    reference's way, the "before" of the TeacherLogitsCache speed-up)."""
    import numpy as np

    from benchmark.config import deepspeed_config
    from benchmark.data import load_prepared
    from benchmark.engine import build_engine as _engine
    from benchmark.engine import init_distributed, load_model
    from benchmark.engine import seeded_generator as _gen

    _, cfg, _ = _configs(setup["scale"])
    cfg = dataclasses.replace(cfg, cache_teacher_logits=cache)
    dist = init_distributed()
    torch.manual_seed(cfg.seed)
    student = load_model(setup["student"]["path"], dist.device, torch.float32, dropout=False)
    teacher = load_model(setup["teacher"]["path"], dist.device, torch.float32, dropout=False)
    teacher.requires_grad_(False).eval()
    timed = _TimedTeacher(teacher)
    data = load_prepared(setup["data"], "gpt2")
    eos = data.eos_token_id
    prompts = [ex.prompt_ids for ex in data.split("train")]
    pt_chunks = data.pt_chunks() if cfg.pt_coef > 0 else None
    if pt_chunks is not None:
        pt_chunks = torch.from_numpy(pt_chunks[:, : cfg.pt_seq_length].astype(np.int64))
    ds = deepspeed_config(cfg, dist.world_size)
    opt = torch.optim.AdamW(
        student.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / cfg.warmup_steps if s < cfg.warmup_steps else 1.0)
    engine = _engine(student, opt, sched, ds)
    order = torch.randperm(len(prompts), generator=_gen(cfg.seed, 0))

    def run(phase: int, step0: int):
        draws = list(range(phase * cfg.rollouts_per_phase, (phase + 1) * cfg.rollouts_per_phase))
        batch = [prompts[order[d % len(prompts)]] for d in draws]
        return _phase(engine, timed, batch, draws, cfg, eos, dist, phase, pt_chunks, step0)

    if not quick:
        run(0, 0)  # warm-up phase, not reported
    baseline = _rss_now_mb()
    res = run(1, cfg.steps_per_phase)
    res["memory"] = _memory(baseline)
    res["config"] = {
        "rollouts_per_phase": cfg.rollouts_per_phase,
        "batch_size": cfg.batch_size,
        "micro_batch_size": ds["train_micro_batch_size_per_gpu"],
        "ppo_epochs": cfg.ppo_epochs,
        "steps_per_phase": cfg.steps_per_phase,
        "max_prompt_length": cfg.max_prompt_length,
        "max_new_tokens": cfg.generation.max_new_tokens,
        "teacher_mixed_alpha": cfg.teacher_mixed_alpha,
        "policy_gradient": cfg.policy_gradient,
        "single_step": cfg.single_step,
        "pt_coef": cfg.pt_coef,
        "pt_seq_length": cfg.pt_seq_length if pt_chunks is not None else None,
        "cache_teacher_logits": cfg.cache_teacher_logits,
        "precision": "fp32 (CPU)",
    }
    return res


def _rkl_settings(setup: dict, quick: bool) -> dict:
    """The like-for-like objective: one optimizer step per generation of `batch_size` prompts, fully on-policy,
    loss = token mean of the exact reverse KL(q||p) over the vocabulary (our single-step term = TRL beta=1)."""
    _, cfg, _ = _configs(setup["scale"])
    steps = 4 if quick else 12
    return {
        "batch_size": cfg.batch_size,
        "max_new_tokens": cfg.generation.max_new_tokens,
        "lr": cfg.lr,
        "betas": list(cfg.betas),
        "eps": cfg.eps,
        "weight_decay": cfg.weight_decay,
        "grad_clip": cfg.grad_clip,
        "steps": steps,
        "dropped_steps": "the first (warm-up) and the last (ours: final validation/model save)",
        "seed": cfg.seed,
        "lr_schedule": "constant, no warm-up",
        "dropout": "off (both)",
        "precision": "fp32, gradient checkpointing off",
    }


def _rkl_prompts(setup: dict, s: dict):
    """The prompts `train_minillm` draws in its first `steps` phases (its sampler: a seeded permutation of the train
    split), so both trainers see the same multiset of prompts."""
    from benchmark.data import load_prepared
    from benchmark.engine import seeded_generator as _gen

    train = load_prepared(setup["data"], "gpt2").split("train")
    order = torch.randperm(len(train), generator=_gen(s["seed"], 0))
    return [train[int(i)] for i in order[: s["steps"] * s["batch_size"]]]


def _kept(xs: list) -> list:
    return xs[1:-1] if len(xs) > 2 else xs[-1:]


def worker_ours_rkl(setup: dict, rnd: int, quick: bool) -> dict:
    from benchmark.config import MiniLLMConfig, for_scale
    from benchmark.minillm import train_minillm

    sc, _, _ = _configs(setup["scale"])
    s = _rkl_settings(setup, quick)
    cfg = for_scale(
        MiniLLMConfig,
        sc.minillm
        | dict(
            teacher_mixed_alpha=0.0,
            policy_gradient=False,
            single_step=True,
            pt_coef=0.0,
            ppo_epochs=1,
            rollouts_per_phase=s["batch_size"],
            total_steps=s["steps"],
            warmup_steps=0,
            eval_interval=10**6,
            checkpoint_interval=10**6,
            val_examples=s["batch_size"],
            log_student_sample=False,
        ),
    )
    import deepspeed  # noqa: F401  (imported before the baseline, as trl is on the other side)

    from benchmark.engine import init_distributed

    init_distributed()
    out = Path(tempfile.mkdtemp(prefix="perf-ours-"))
    try:
        baseline = _rss_now_mb()  # after imports, before the models: same point as the TRL side
        train_minillm(setup["student"]["path"], setup["teacher"]["path"], setup["data"], out, cfg, progress=False)
        mem = _memory(baseline)
        recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    phases = _kept([r for r in recs if r["kind"] == "phase"])
    return {
        "s_per_step": [p["phase_s"] for p in phases],
        "generate_s": [p["rollout_s"] for p in phases],
        "generated_tokens": [p["response_tokens"] for p in phases],
        "memory": mem,
        "note": "phase_s of train_minillm's metrics.jsonl: 1 phase = 1 rollout batch + 1 optimizer step",
    }


def worker_trl(setup: dict, rnd: int, quick: bool) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import DistillationConfig, DistillationTrainer

    from benchmark.data import load_prepared

    s = _rkl_settings(setup, quick)
    examples = _rkl_prompts(setup, s)
    tok = load_prepared(setup["data"], "gpt2").tokenizer
    same_ids = sum(tok(text=e.prompt)["input_ids"] == list(e.prompt_ids) for e in examples) / len(examples)
    baseline = _rss_now_mb()  # after imports, before the models: same point as our side
    student, teacher = _load(setup["student"]["path"]), _load(setup["teacher"]["path"])
    out = Path(tempfile.mkdtemp(prefix="perf-trl-"))
    args = DistillationConfig(
        output_dir=str(out),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        beta=1.0,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_completion_length=s["max_new_tokens"],
        per_device_train_batch_size=s["batch_size"],
        gradient_accumulation_steps=1,
        max_steps=s["steps"],
        learning_rate=s["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta1=s["betas"][0],
        adam_beta2=s["betas"][1],
        adam_epsilon=s["eps"],
        weight_decay=s["weight_decay"],
        max_grad_norm=s["grad_clip"],
        disable_dropout=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=s["seed"],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )

    class Clock(TrainerCallback):
        def __init__(self):
            self.t, self.steps, self.lengths = None, [], []

        def on_step_begin(self, *a, **k):
            if self.t is None:
                self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            now = time.perf_counter()
            self.steps.append(now - self.t)
            self.t = now

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"] * s["batch_size"])

    clock = Clock()
    ds = Dataset.from_dict({"prompt": [e.prompt for e in examples]})
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=ds, processing_class=tok, callbacks=[clock]
    )
    trainer.remove_callback(PrinterCallback)  # console logging of every step is not part of the comparison
    gen_times = []
    original = trainer._generate

    def timed_generate(*a, **k):  # instrumentation only: the generation part of each step
        t = time.perf_counter()
        r = original(*a, **k)
        gen_times.append(time.perf_counter() - t)
        return r

    trainer._generate = timed_generate
    try:
        trainer.train()
        mem = _memory(baseline)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "s_per_step": _kept(clock.steps),
        "generate_s": _kept(gen_times),
        "generated_tokens": _kept(clock.lengths),
        "memory": mem,
        "prompt_tokenization_matches": same_ids,
        "note": "s/step = time between on_step_end callbacks (data, generation, scoring, backward, optimizer)",
    }


def _eval_settings(setup: dict, quick: bool):
    import dataclasses

    _, _, ecfg = _configs(setup["scale"])
    if quick:
        ecfg = dataclasses.replace(ecfg, seeds=ecfg.seeds[:1], num_examples=min(ecfg.num_examples or 50, 50))
    return ecfg


def worker_evaluation(setup: dict, rnd: int, quick: bool, mode: str) -> dict:
    import dataclasses

    from benchmark.evaluate import evaluate_model

    ecfg = _eval_settings(setup, quick)
    if mode == "single":
        ecfg = dataclasses.replace(ecfg, batch_size=1)
    baseline = _rss_now_mb()
    t = time.perf_counter()
    records = evaluate_model(setup["student"]["path"], setup["data"], ecfg, device="cpu", progress=False)
    sec = time.perf_counter() - t
    rouge = next(r for r in records if r["metric"] == "rouge_l")
    return {
        "seconds": sec,
        "batch_size": ecfg.batch_size,
        "n_examples": rouge["n_examples"],
        "seeds": list(ecfg.seeds),
        "rouge_l_per_seed": rouge["values"],
        "memory": _memory(baseline),
    }


WORKERS = {
    "rollouts": worker_rollouts,
    "training": worker_training,
    "training_recompute": lambda s, r, q: worker_training(s, r, q, cache=False),
    "trl": worker_trl,
    "ours_rkl": worker_ours_rkl,
    "evaluation_batched": lambda s, r, q: worker_evaluation(s, r, q, "batched"),
    "evaluation_single": lambda s, r, q: worker_evaluation(s, r, q, "single"),
}


def _worker_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.perf", description="one measurement round (internal)")
    p.add_argument("--worker", required=True, choices=list(WORKERS), help="the measurement to make")
    p.add_argument("--setup", required=True, help="JSON file written by run_perf: data and model paths")
    p.add_argument("--round", type=int, default=0, help="which interleaved round this is (0-based)")
    p.add_argument("--quick", action="store_true", help="the shorter --quick measurement")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    res = WORKERS[a.worker](json.loads(Path(a.setup).read_text()), a.round, a.quick)
    print(_RESULT_MARK + json.dumps(res), flush=True)
    return 0


def _worker_env() -> dict:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        DS_ACCELERATOR=env.get("DS_ACCELERATOR", "cpu"),
        TRANSFORMERS_VERBOSITY="error",
    )
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for k in LAUNCHER_VARS:
        env.pop(k, None)  # each worker is a lone single-process run
    return env


def run_worker(name: str, setup_path: Path, rnd: int, quick: bool, isolate: bool = True) -> dict:
    """One round of one section: in a fresh subprocess (`isolate`, what the benchmark does) or in this process
    (tests: saves the imports; timings then share the process and memory figures mean nothing)."""
    if not isolate:
        return json.loads(json.dumps(WORKERS[name](json.loads(setup_path.read_text()), rnd, quick)))
    cmd = [sys.executable, "-m", "benchmark.perf", "--worker", name, "--setup", str(setup_path), "--round", str(rnd)]
    cmd += ["--quick"] if quick else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise PerfError(f"perf worker {name!r} (round {rnd}) failed with exit code {proc.returncode}:\n{tail}")
    return json.loads(lines[-1][len(_RESULT_MARK) :])


# ----------------------------------------------------------------------------------------------------------------
# Aggregation over rounds
# ----------------------------------------------------------------------------------------------------------------


def _agg_rollouts(rounds: list[dict], setup: dict) -> dict:
    first = rounds[0]
    names = [n for n in first["variants"] if "stopping" not in n]  # the stopping pair is reported in speedups
    variants = {
        n: {
            "tok_per_s": stat(r["variants"][n]["tok_per_s"] for r in rounds),
            "seconds": stat(r["variants"][n]["seconds"] for r in rounds),
            "tokens": first["variants"][n]["tokens"],
        }
        for n in names
    }
    ratio = [
        r["variants"]["mixed"]["seconds"]
        / (r["variants"]["student_ours"]["seconds"] + r["variants"]["teacher_ours"]["seconds"])
        for r in rounds
    ]
    ours_vs_hf = [
        r["variants"]["student_ours"]["tok_per_s"] / r["variants"]["student_hf_generate"]["tok_per_s"] for r in rounds
    ]
    return {
        "status": "measured",
        "settings": {
            "teacher": setup["teacher"]["describe"] + f" ({setup['teacher']['params']:,} params, random weights)",
            "student": setup["student"]["describe"] + f" ({setup['student']['params']:,} params, random weights)",
            "batch": first["batch"],
            "prompt_length": f"{first['prompt_length']} (left-padded with EOS, real synthetic train prompts)",
            "max_new_tokens": first["max_new_tokens"],
            "sampling": "temperature 1, top-k 0, top-p 1; EOS suppressed (logit -inf in ours, min_new_tokens in HF)",
            "mixed": f"sample(student, mix_model=teacher, mix_alpha={MIX_ALPHA}, return_logprobs=True, per-row "
            "generators): the trainer's rollout call",
            "alone": "sample(model) without mixing or log-probs (per-row generators); HF generate(do_sample=True, "
            "top_k=0, top_p=1.0, use_cache=True) on the same padded prompts",
            "tokens": "generated tokens counted from the outputs (all rows x max_new_tokens)",
        },
        "variants": variants,
        "ratio_mixed_over_student_plus_teacher": stat(ratio),
        "ratio_ours_student_over_hf_generate_tok_per_s": stat(ours_vs_hf),
    }


def _agg_training(rounds: list[dict]) -> dict:
    cfg = rounds[0]["config"]
    step_s = [statistics.median(s["seconds"] for s in _kept_steps(r)) for r in rounds]
    step_tok = [statistics.median(s["response_tokens"] / s["seconds"] for s in _kept_steps(r)) for r in rounds]
    step_all_tok = [
        statistics.median(
            (s["response_tokens"] + cfg["batch_size"] * cfg["max_prompt_length"] + s["pt_tokens"]) / s["seconds"]
            for s in _kept_steps(r)
        )
        for r in rounds
    ]
    return {
        "status": "measured",
        "settings": cfg
        | {
            "driver": "trainer functions (collect_rollouts, _ppo_micro_loss, DeepSpeed engine from _engine) in "
            "train_minillm's loop order; no validation/checkpoint/logging",
            "teacher_scoring": "wall time inside teacher forwards during the optimizer steps (response + PT batch)",
            "optimisation": "step time minus teacher scoring: advantages, student fwd+bwd, losses, DeepSpeed step",
            "step_figure": "median over the phase's steps, the first step dropped",
        },
        "step": {
            "seconds": stat(step_s),
            "response_tok_per_s": stat(step_tok),
            "processed_tok_per_s": stat(step_all_tok),
        },
        "phase": {
            "seconds": stat(r["phase_s"] for r in rounds),
            "rollout_s": stat(r["rollout_s"] for r in rounds),
            "teacher_scoring_s": stat(r["teacher_scoring_s"] for r in rounds),
            "optimisation_s": stat(r["optimisation_s"] for r in rounds),
            "generated_tokens": stat(r["generated_tokens"] for r in rounds),
            "generated_tok_per_s": stat(r["generated_tokens"] / r["phase_s"] for r in rounds),
        },
        "memory": {
            "peak_rss_mb": stat(r["memory"]["peak_rss_mb"] for r in rounds),
            "peak_delta_mb": stat(r["memory"]["peak_delta_mb"] for r in rounds),
        },
    }


def _agg_speedups(raw: dict) -> dict:
    """Before/after of each speed-up, both sides measured in the same rounds (paired, alternating order)."""
    out: dict = {}
    if raw["training"]:
        after, before = raw["training"], raw["training_recompute"]
        out["teacher_logits_cache"] = {
            "what": "train.TeacherLogitsCache: the single-step term's teacher logits computed on a rollout's first "
            "PPO epoch and reused by the others (before: recomputed every epoch, as the reference does)",
            "before_phase_s": stat(r["phase_s"] for r in before),
            "after_phase_s": stat(r["phase_s"] for r in after),
            "before_teacher_scoring_s": stat(r["teacher_scoring_s"] for r in before),
            "after_teacher_scoring_s": stat(r["teacher_scoring_s"] for r in after),
            "phase_speedup": stat(b["phase_s"] / a["phase_s"] for a, b in zip(after, before, strict=True)),
            "before_teacher_rows": before[0]["teacher_rows"],
            "after_teacher_rows": after[0]["teacher_rows"],
            "after_peak_delta_mb": stat(r["memory"]["peak_delta_mb"] for r in after),
            "before_peak_delta_mb": stat(r["memory"]["peak_delta_mb"] for r in before),
        }
    if raw["rollouts"]:
        v = [r["variants"] for r in raw["rollouts"]]
        out["finished_row_compaction"] = {
            "what": "sampling.sample drops finished rows (KV caches included) once they are a quarter of the batch; "
            f"measured on the teacher-mixed rollout call with EOS made likely (mean length ~{STOP_MEAN_LENGTH:g} "
            "tokens, random weights); before: compact=False",
            "generated_tokens": v[0]["mixed_stopping"]["tokens"],
            "same_tokens": all(x["mixed_stopping"]["tokens"] == x["mixed_stopping_no_compaction"]["tokens"] for x in v),
            "before_s": stat(x["mixed_stopping_no_compaction"]["seconds"] for x in v),
            "after_s": stat(x["mixed_stopping"]["seconds"] for x in v),
            "speedup": stat(x["mixed_stopping_no_compaction"]["seconds"] / x["mixed_stopping"]["seconds"] for x in v),
        }
    return out or {"status": "not run (--only)"}


def _kept_steps(r: dict) -> list:
    return r["steps"][1:] if len(r["steps"]) > 1 else r["steps"]


def _agg_side(rounds: list[dict]) -> dict:
    per_round_s = [statistics.median(r["s_per_step"]) for r in rounds]
    tok = [sum(r["generated_tokens"]) / sum(r["s_per_step"]) for r in rounds]
    gen = [statistics.median(r["generate_s"]) for r in rounds]
    return {
        "s_per_step": stat(per_round_s),
        "generate_s_per_step": stat(gen),
        "generated_tok_per_s": stat(tok),
        "generated_tokens_per_step": stat(statistics.mean(r["generated_tokens"]) for r in rounds),
        "peak_rss_mb": stat(r["memory"]["peak_rss_mb"] for r in rounds),
        "peak_delta_mb": stat(r["memory"]["peak_delta_mb"] for r in rounds),
        "memory_baseline": "RSS after imports (torch, transformers, deepspeed or trl), before loading the models: "
        "the delta is models + optimizer + framework setup + activations",
        "note": rounds[0]["note"],
    }


def _agg_trl(trl_rounds: list[dict], ours_rounds: list[dict], setup: dict, quick: bool) -> dict:
    t, o = _agg_side(trl_rounds), _agg_side(ours_rounds)
    paired = [
        statistics.median(ou["s_per_step"]) / statistics.median(tr["s_per_step"])
        for tr, ou in zip(trl_rounds, ours_rounds)
    ]
    s = _rkl_settings(setup, quick)
    return {
        "status": "measured",
        "settings": s
        | {
            "student": setup["student"]["describe"],
            "teacher": setup["teacher"]["describe"],
            "trl": "DistillationTrainer(beta=1.0 reverse KL, temperature 1, top_k 0, top_p 1, use_cpu=True, "
            "bf16=False, gradient_checkpointing=False, disable_dropout=True, gradient_accumulation_steps=1)",
            "ours": "train_minillm with teacher_mixed_alpha=0, policy_gradient=False (single-step reverse KL only), "
            "pt_coef=0, ppo_epochs=1, rollouts_per_phase=batch_size",
            "prompts": "the same multiset: the prompts train_minillm draws in its first `steps` phases",
            "prompt_padding": "ours left-pads every prompt to max_prompt_length (reference protocol); TRL pads to "
            "the longest prompt of the batch",
            "teacher_in_rollouts": "ours still decodes the teacher beside the student at alpha=0 (rollouts store "
            "log p for rewards); TRL generates with the student alone",
            "prompt_tokenization_matches": statistics.mean(r["prompt_tokenization_matches"] for r in trl_rounds),
        },
        "trl": t,
        "ours": o,
        "ratio_ours_over_trl_s_per_step": stat(paired),
        "ratio_of_medians": o["s_per_step"]["median"] / t["s_per_step"]["median"],
    }


def _agg_eval(batched: list[dict], single: list[dict], setup: dict, quick: bool) -> dict:
    b0 = batched[0]
    paired = [s["seconds"] / b["seconds"] for b, s in zip(batched, single)]
    return {
        "status": "measured",
        "settings": {
            "model": setup["student"]["describe"] + " (random weights: decodes to max_new_tokens, an upper bound "
            "for a trained model that stops at EOS)",
            "call": "evaluate_model(student, data, EvalConfig of the scale): sampling over seeds, ROUGE-L, exact "
            "match and gold perplexity, model loading included",
            "n_examples": b0["n_examples"],
            "seeds": b0["seeds"],
            "subset": "yes (--quick: first seed, at most 50 test examples)" if quick else "no: the whole test split",
            "batched_batch_size": b0["batch_size"],
        },
        "batched_s": stat(b["seconds"] for b in batched),
        "single_s": stat(s["seconds"] for s in single),
        "ratio_single_over_batched": stat(paired),
        "same_rouge_l": all(b["rouge_l_per_seed"] == s["rouge_l_per_seed"] for b, s in zip(batched, single)),
        "peak_rss_mb": {
            "batched": stat(b["memory"]["peak_rss_mb"] for b in batched),
            "single": stat(s["memory"]["peak_rss_mb"] for s in single),
        },
    }


def _gpu_section(out: Path) -> dict:
    """Always the planned rows; 'not measured' unless a perf_gpu.py result file (a separate, dated run) is found."""
    from benchmark import perf_gpu

    rows = [{"pair": p["name"], "status": NOT_MEASURED_GPU} for p in perf_gpu.PAIRS]
    sec = {
        "status": NOT_MEASURED_GPU if not torch.cuda.is_available() else "not measured (run benchmark/perf_gpu.py)",
        "rows": rows,
        "how": "python benchmark/perf_gpu.py --out paper_tables/perf  (one prepared run on the GPU machine)",
        "result_files": [],
    }
    for f in sorted(out.glob("gpu-*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            d = json.loads(f.read_text())
            if not d.get("dry_run"):
                sec["result_files"].append({"file": f.name, "date": d["created"], "gpu": d["gpu"]["name"]})
    return sec


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


def run_perf(
    scale: str = "small",
    out: str | Path = "paper_tables/perf",
    repeats: int = 3,
    only: tuple[str, ...] = SECTIONS,
    quick: bool = False,
    work: str | Path | None = None,
    log=print,
    isolate: bool = True,
) -> tuple[Path, Path]:
    """Measure the sections in `only` over `repeats` interleaved rounds; write and return (json, md) paths.

    `isolate=False` runs every worker in this process (tests only: memory figures are then not per measurement)."""
    unknown = set(only) - set(SECTIONS)
    if unknown:
        raise PerfError(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if repeats < 1:
        raise PerfError("--repeats must be at least 1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = None
    if work is None:
        tmp = tempfile.mkdtemp(prefix="mskd-perf-")
        work = tmp
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    try:
        log(f"perf: preparing {scale} data and random models in {work}")
        setup = prepare(scale, work)
        setup_path = work / "setup.json"
        have_trl = _has("trl") and _has("accelerate")
        raw: dict[str, list] = {k: [] for k in WORKERS}
        calib = []
        for rnd in range(repeats):
            calib.append(calibrate_matmul())
            log(f"perf: round {rnd + 1}/{repeats}, calibration matmul {calib[-1]:.3f} ms")
            jobs = []
            if "rollouts" in only:
                jobs.append(["rollouts"])
            if "training" in only:
                pair = ["training", "training_recompute"]
                jobs.append(pair if rnd % 2 == 0 else pair[::-1])
            if "trl" in only and have_trl:
                jobs.append(["trl", "ours_rkl"] if rnd % 2 == 0 else ["ours_rkl", "trl"])
            if "evaluation" in only:
                pair = ["evaluation_batched", "evaluation_single"]
                jobs.append(pair if rnd % 2 == 0 else pair[::-1])
            jobs = jobs[rnd % len(jobs) :] + jobs[: rnd % len(jobs)] if jobs else jobs
            for group in jobs:
                for name in group:
                    t = time.perf_counter()
                    raw[name].append(run_worker(name, setup_path, rnd, quick, isolate))
                    log(f"perf:   {name} done in {time.perf_counter() - t:.1f} s")
        report = {
            "schema": SCHEMA,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "command": "python -m benchmark perf " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["perf"] else None,
            "machine": machine_info(),
            "protocol": {
                "scale": scale,
                "repeats": repeats,
                "quick": quick,
                "threads": 1,
                "isolated_workers": isolate,
                "interleaved": "every round runs every section in a fresh subprocess; paired runs alternate order",
                "figures": "median over rounds, with min-max range",
                "memory_method": MEMORY_METHOD,
                "wall_s": None,
            },
            "calibration": {"matmul_512_fp32_1thread_ms": stat(calib)},
        }
        not_run = "not run (--only)"
        report["rollouts"] = _agg_rollouts(raw["rollouts"], setup) if raw["rollouts"] else {"status": not_run}
        report["training"] = _agg_training(raw["training"]) if raw["training"] else {"status": not_run}
        report["speedups"] = _agg_speedups(raw)
        if raw["trl"]:
            report["trl"] = _agg_trl(raw["trl"], raw["ours_rkl"], setup, quick)
        elif "trl" in only:
            report["trl"] = {"status": "not measured (trl/accelerate not installed: pip install -e '.[perf]')"}
        else:
            report["trl"] = {"status": not_run}
        report["evaluation"] = (
            _agg_eval(raw["evaluation_batched"], raw["evaluation_single"], setup, quick)
            if raw["evaluation_batched"]
            else {"status": not_run}
        )
        report["gpu"] = _gpu_section(out)
        report["protocol"]["wall_s"] = time.perf_counter() - t_start
    finally:
        torch.set_num_threads(threads)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    slug = report["machine"]["slug"]
    jpath, mpath = out / f"{slug}.json", out / f"{slug}.md"
    jpath.write_text(json.dumps(report, indent=2) + "\n")
    mpath.write_text(render_markdown(report))
    log(f"perf: wrote {jpath} and {mpath} ({report['protocol']['wall_s']:.0f} s)")
    return jpath, mpath


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------------------


def _f(s: dict, fmt: str = "{:.3g}") -> str:
    if s["median"] is None:
        return "-"
    if s["n"] == 1:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def render_markdown(r: dict) -> str:
    m, p = r["machine"], r["protocol"]
    cal = r["calibration"]["matmul_512_fp32_1thread_ms"]
    lines = [
        f"# Performance: {m['slug']}",
        "",
        f"Measured {r['created']} by `python -m benchmark perf` (scale `{p['scale']}`, {p['repeats']} interleaved "
        f"round(s){', --quick' if p['quick'] else ''}, {p['threads']} thread). CPU: {m['cpu']}, "
        f"{m['logical_cores']} logical cores; torch {m['versions']['torch']}, transformers "
        f"{m['versions']['transformers']}, deepspeed {m['versions']['deepspeed']}, trl {m['versions']['trl']}.",
        f"Calibration (512x512 fp32 matmul, 1 thread): {_f(cal)} ms. Figures: median over rounds (min-max).",
        f"Memory: {p['memory_method']}.",
        "",
        "| section | figure | value | settings |",
        "|---|---|---|---|",
    ]

    def row(section, figure, value, settings=""):
        lines.append(f"| {section} | {figure} | {value} | {settings} |")

    ro = r["rollouts"]
    if ro["status"] == "measured":
        st = ro["settings"]
        common = f"batch {st['batch']}, prompt {st['prompt_length'].split()[0]}, {st['max_new_tokens']} new tokens"
        labels = {
            "mixed": f"teacher-mixed loop (alpha {MIX_ALPHA}, log-probs)",
            "student_ours": "our loop, student alone",
            "teacher_ours": "our loop, teacher alone",
            "student_hf_generate": "HF generate, student alone (KV cache)",
        }
        for n, v in ro["variants"].items():
            row("rollouts", f"{labels[n]}: generated tok/s", _f(v["tok_per_s"], "{:.0f}"), common)
        row(
            "rollouts",
            "mixed time / (student + teacher time)",
            _f(ro["ratio_mixed_over_student_plus_teacher"], "{:.2f}"),
            "<= 1 means mixing costs no more than decoding both models separately",
        )
        row(
            "rollouts",
            "our student loop / HF generate (tok/s)",
            _f(ro["ratio_ours_student_over_hf_generate_tok_per_s"], "{:.2f}"),
            "> 1: our loop is faster",
        )
    else:
        row("rollouts", "-", ro["status"])
    tr = r["training"]
    if tr["status"] == "measured":
        st = tr["settings"]
        common = (
            f"{st['rollouts_per_phase']} rollouts, batch {st['batch_size']}, {st['ppo_epochs']} PPO epochs = "
            f"{st['steps_per_phase']} steps; alpha {st['teacher_mixed_alpha']}, PG {st['policy_gradient']}, "
            f"PT coef {st['pt_coef']}"
        )
        row("training", "one optimizer step: seconds", _f(tr["step"]["seconds"]), "median step of the phase")
        row(
            "training",
            "one step: response tok/s",
            _f(tr["step"]["response_tok_per_s"], "{:.0f}"),
            "valid response tokens / step time (the trainer's tokens_per_s)",
        )
        row(
            "training",
            "one step: processed tok/s",
            _f(tr["step"]["processed_tok_per_s"], "{:.0f}"),
            "(padded prompt + response + PT tokens) / step time",
        )
        for k, label in (
            ("seconds", "whole phase: seconds"),
            ("rollout_s", "phase: rollout seconds"),
            ("teacher_scoring_s", "phase: teacher scoring seconds"),
            ("optimisation_s", "phase: optimisation seconds"),
        ):
            row("training", label, _f(tr["phase"][k]), common)
        row(
            "training",
            "phase: generated tok/s",
            _f(tr["phase"]["generated_tok_per_s"], "{:.0f}"),
            "generated tokens / phase seconds",
        )
        row(
            "training",
            "peak RSS MB (delta)",
            f"{_f(tr['memory']['peak_rss_mb'], '{:.0f}')} (+{_f(tr['memory']['peak_delta_mb'], '{:.0f}')})",
            "whole worker process; delta over the loaded process",
        )
    else:
        row("training", "-", tr["status"])
    sp = r["speedups"]
    if "teacher_logits_cache" in sp:
        c = sp["teacher_logits_cache"]
        row(
            "speed-up",
            "teacher-logits cache: phase s before / after",
            f"{_f(c['before_phase_s'])} / {_f(c['after_phase_s'])}",
            "same rounds, alternating order; before = recompute every PPO epoch (the reference)",
        )
        row(
            "speed-up",
            "teacher-logits cache: teacher scoring s before / after",
            f"{_f(c['before_teacher_scoring_s'])} / {_f(c['after_teacher_scoring_s'])}",
            "",
        )
        row("speed-up", "teacher-logits cache: phase speed-up", _f(c["phase_speedup"], "{:.2f}x"), "paired per round")
        row(
            "speed-up",
            "teacher-logits cache: peak delta MB before / after",
            f"{_f(c['before_peak_delta_mb'], '{:.0f}')} / {_f(c['after_peak_delta_mb'], '{:.0f}')}",
            "",
        )
    if "finished_row_compaction" in sp:
        c = sp["finished_row_compaction"]
        row(
            "speed-up",
            "finished-row compaction: rollout s before / after",
            f"{_f(c['before_s'])} / {_f(c['after_s'])}",
            f"teacher-mixed, EOS made likely (mean ~{STOP_MEAN_LENGTH:g} tokens); same tokens: {c['same_tokens']}",
        )
        row("speed-up", "finished-row compaction: speed-up", _f(c["speedup"], "{:.2f}x"), "paired per round")
    if "status" in sp:
        row("speed-up", "-", sp["status"])
    t = r["trl"]
    if t["status"] == "measured":
        st = t["settings"]
        common = (
            f"batch {st['batch_size']}, {st['max_new_tokens']} new tokens, lr {st['lr']:g}, fp32, {st['steps']} steps"
        )
        for side, name in (("trl", "TRL DistillationTrainer"), ("ours", "ours (same objective)")):
            v = t[side]
            row("vs TRL", f"{name}: s/step", _f(v["s_per_step"]), common)
            row("vs TRL", f"{name}: generation s/step", _f(v["generate_s_per_step"]), "")
            row("vs TRL", f"{name}: generated tok/s", _f(v["generated_tok_per_s"], "{:.0f}"), "end to end")
            row(
                "vs TRL",
                f"{name}: peak RSS MB (delta)",
                f"{_f(v['peak_rss_mb'], '{:.0f}')} (+{_f(v['peak_delta_mb'], '{:.0f}')})",
                "own subprocess",
            )
        row(
            "vs TRL",
            "ours / TRL s/step",
            _f(t["ratio_ours_over_trl_s_per_step"], "{:.2f}"),
            "paired per round; < 1: ours faster",
        )
    else:
        row("vs TRL", "-", t["status"])
    e = r["evaluation"]
    if e["status"] == "measured":
        st = e["settings"]
        common = f"{st['n_examples']} examples x {len(st['seeds'])} seed(s); subset: {st['subset']}"
        row("evaluation", f"batched (batch {st['batched_batch_size']}): seconds", _f(e["batched_s"]), common)
        row("evaluation", "one example at a time: seconds", _f(e["single_s"]), common)
        row(
            "evaluation",
            "one-at-a-time / batched",
            _f(e["ratio_single_over_batched"], "{:.2f}"),
            f"same ROUGE-L: {e['same_rouge_l']}",
        )
    else:
        row("evaluation", "-", e["status"])
    g = r["gpu"]
    for gr in g["rows"]:
        row("gpu", gr["pair"], gr["status"], "bf16, random weights (benchmark/perf_gpu.py)")
    for f in g["result_files"]:
        row("gpu", "separate perf_gpu.py run", f"{f['file']}", f"{f['gpu']}, {f['date']}")
    lines += ["", "Settings of every section in full: the JSON file beside this one.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def _parse_only(text: str) -> tuple[str, ...]:
    parts = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in parts if s not in SECTIONS]
    if bad or not parts:
        raise PerfError(f"--only takes a comma-separated subset of {','.join(SECTIONS)}, got {text!r}")
    return parts


def cmd_perf(args: argparse.Namespace) -> int:
    run_perf(
        scale=args.scale,
        out=args.out,
        repeats=args.repeats,
        only=_parse_only(args.only),
        quick=args.quick,
        work=args.work,
    )
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser(
        "perf",
        help="throughput / memory benchmark of rollouts, training and evaluation, side by side with TRL",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scale", default="small", choices=["small", "tiny"], help="model sizes to measure (default small)")
    p.add_argument("--out", default="paper_tables/perf", help="directory for <machine>.json and <machine>.md")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians and ranges over them)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="shorter runs: no warm-up phase, 4 TRL steps, eval subset")
    p.add_argument("--work", default=None, help="keep data/models here (default: a temporary directory)")
    p.set_defaults(func=cmd_perf)


if __name__ == "__main__":
    sys.exit(_worker_main())
