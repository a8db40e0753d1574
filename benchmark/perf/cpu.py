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
  rollouts    generated tok/s of our teacher-mixed loop (`sample(..., mix_model=teacher, return_logprobs=True)`, the
              trainer's call, on one rollout chunk) vs the student alone with HF `generate` (KV cache) and vs our
              loop student-alone + teacher-alone; ratio mixed / (student + teacher).
  training    one MiniLLM phase at the scale's config, run by the trainer itself (`minillm.run_phase` on the engine
              of `minillm.minillm_engine`); split rollout / teacher scoring / optimisation.
  trl         trl.DistillationTrainer (on-policy reverse KL) vs `train_minillm` configured to the same objective.
  evaluation  `evaluate_model` over the test split and seeds, batched (the scale's EvalConfig batch) vs batch 1.
  gpu         always reported: "not measured (no GPU in this run)" here; `python -m benchmark perf-gpu` measures it.

JSON (`schema: "mskd-bench.perf/1"`): {schema, created, command, machine{slug, platform, cpu, logical_cores, versions},
protocol{scale, repeats, quick, threads, memory_method, ...}, calibration{matmul_512_fp32_1thread_ms: STAT},
rollouts, training, speedups, trl, evaluation, gpu}. STAT = {median, min, max, n, values}. A section not run holds
{"status": "not run (...)"}; a measured one {"status": "measured", "settings": {...}, ...}.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmark import minillm
from benchmark.config import EvalConfig, MiniLLMConfig, deepspeed_config, resolve
from benchmark.engine import Dist
from benchmark.perf import report
from benchmark.perf.common import (
    MEMORY_METHOD,
    STOP_MEAN_LENGTH,
    EOSLogit,
    PerfError,
    calibrate_matmul,
    hf_sampling,
    machine_info,
    memory,
    rss_now_mb,
    stat,
    stop_bonus,
)
from benchmark.perf.gpu import PAIRS
from benchmark.runner import LAUNCHER_VARS

SCHEMA = "mskd-bench.perf/1"
SECTIONS = ("rollouts", "training", "trl", "evaluation")
NOT_MEASURED_GPU = "not measured (no GPU in this run)"
WORKER_VERB = "_perf-worker"  # python -m benchmark _perf-worker NAME --setup FILE --round R [--quick]
RESULT_MARK = "PERF_RESULT "  # the line of a worker's stdout that carries its JSON result
TEACHER_SIZE, STUDENT_SIZE = "1.5B", "120M"  # GPT-2's one-step hop, the paper's fastest reported stage
CPU = torch.device("cpu")

# ----------------------------------------------------------------------------------------------------------------
# Setup: synthetic data, random-weight teacher and student of the scale's sizes (driver, once per run)
# ----------------------------------------------------------------------------------------------------------------


def prepare(scale: str, work: Path) -> dict:
    """Data (benchmark.synthetic, the scale's record counts) and random GPT-2 teacher/student saved with the data's
    tokenizer under `work`. Idempotent: an existing `work/setup.json` is reused."""
    from benchmark import scales
    from benchmark.synthetic import prepare_synthetic

    done = work / "setup.json"
    if done.is_file():
        return json.loads(done.read_text())
    mcfg, ecfg = hop_config(scale), resolve("evaluation", scale)
    data = prepare_synthetic(scale, "gpt2", work / "data")
    n_positions = max(
        mcfg.max_prompt_length + mcfg.generation.max_new_tokens,
        ecfg.max_prompt_length + ecfg.generation.max_new_tokens,
    )
    models = {}
    for role, size, seed in (("teacher", TEACHER_SIZE, 1), ("student", STUDENT_SIZE, 2)):
        spec = scales.scale(scale).model("gpt2", size)
        model = scales.build_model(spec, data.tokenizer, n_positions=n_positions, seed=seed)
        path = work / role
        model.save_pretrained(path)
        data.tokenizer.save_pretrained(path)
        models[role] = {
            "path": str(path),
            "size": size,
            "describe": spec.describe(),
            "params": sum(p.numel() for p in model.parameters()),
        }
    setup = {"scale": scale, "data": str(work / "data"), "n_positions": n_positions, **models}
    done.write_text(json.dumps(setup, indent=2))
    return setup


def _load(setup: dict, role: str):
    """The setup's random `role` model, fp32 on the CPU, dropout off, in eval mode."""
    from benchmark.engine import load_model

    return load_model(setup[role]["path"], CPU, torch.float32, dropout=False)


def hop_config(scale: str, overrides: dict | None = None) -> MiniLLMConfig:
    """The MiniLLM config the plan gives a hop into the benchmark's GPT-2 student at `scale` (its lr included)."""
    from benchmark import scales

    return resolve("minillm", scale, overrides, model=scales.scale(scale).model("gpt2", STUDENT_SIZE))


class TimedTeacher:
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
# Workers: one measurement round of one section, run in a fresh subprocess (`python -m benchmark _perf-worker`)
# ----------------------------------------------------------------------------------------------------------------


def worker_rollouts(setup: dict, rnd: int, quick: bool) -> dict:
    """The decoders on one rollout chunk of the scale's MiniLLM config (the micro-batch `run_phase` decodes at)."""
    from benchmark.data import load_prepared
    from benchmark.sampling import example_generators, left_pad, sample

    cfg = hop_config(setup["scale"])
    data = load_prepared(setup["data"], "gpt2")
    eos = data.eos_token_id
    student, teacher = _load(setup, "student"), _load(setup, "teacher")
    s_ne, t_ne = EOSLogit(student, eos, float("-inf")), EOSLogit(teacher, eos, float("-inf"))
    B, T = deepspeed_config(cfg, 1)["train_micro_batch_size_per_gpu"], cfg.generation.max_new_tokens
    ex = data.split("train")[:B]
    ids, mask = left_pad([e.prompt_ids for e in ex], eos, cfg.max_prompt_length)
    alpha = cfg.teacher_mixed_alpha

    def ours(model, mix=None, logprobs=False, compact=True):
        out = sample(
            model,
            ids,
            mask,
            cfg.generation,
            eos_token_id=eos,
            generators=example_generators(cfg.seed, list(range(B))),
            mix_model=mix,
            mix_alpha=alpha if mix is not None else 0.0,
            return_logprobs=logprobs,
            compact=compact,
        )
        return int(out.lengths.sum())

    stop = stop_bonus(student.config.vocab_size, STOP_MEAN_LENGTH)
    s_stop, t_stop = EOSLogit(student, eos, stop), EOSLogit(teacher, eos, stop)

    @torch.no_grad()
    def hf_generate():
        out = student.generate(input_ids=ids, attention_mask=mask, use_cache=True, **hf_sampling(eos, T))
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
    return {
        "variants": res,
        "order": names,
        "batch": B,
        "max_new_tokens": T,
        "prompt_length": ids.shape[1],
        "mix_alpha": alpha,
    }


def training_config(scale: str, cache: bool) -> MiniLLMConfig:
    """The scale's MiniLLM config with `cache_teacher_logits=cache`, its total_steps covering the warm-up phase and
    the measured one (a phase ends early at total_steps; the schedule is constant after the warm-up steps)."""
    per_phase = hop_config(scale).steps_per_phase
    return hop_config(scale, {"cache_teacher_logits": cache, "total_steps": 2 * per_phase})


def worker_training(setup: dict, rnd: int, quick: bool, cache: bool = True) -> dict:
    """One MiniLLM phase (phase 1, after a warm-up phase 0 unless `quick`), run by the trainer's own
    `minillm.run_phase` on the engine of `minillm.minillm_engine` and the teacher of `engine.frozen_teacher`, as
    `train_minillm` sets them up, minus validation, logging and checkpoints. The teacher is timed from the end of
    the rollouts (`on_rollouts`), so its forwards inside each step (`on_step`) are that step's teacher scoring.
    `cache=False` recomputes the teacher's logits every PPO epoch (the reference's way, the "before" of the
    TeacherLogitsCache speed-up)."""
    from benchmark.data import load_prepared
    from benchmark.engine import frozen_teacher, init_distributed, load_model, seed_everything

    cfg = training_config(setup["scale"], cache)
    dist = init_distributed()
    seed_everything(cfg.seed, dist.rank)
    student = load_model(setup["student"]["path"], dist.device, torch.float32, dropout=False)
    teacher = TimedTeacher(frozen_teacher(setup["teacher"]["path"], dist, cfg.precision, cfg.zero_stage))
    data = load_prepared(setup["data"], "gpt2")
    prompts = [ex.prompt_ids for ex in data.split("train")]
    pt_chunks = None
    if cfg.pt_coef > 0:  # cut to pt_seq_length, as train_minillm does
        pt_chunks = torch.from_numpy(data.pt_chunks()[:, : cfg.pt_seq_length].astype(np.int64))
    n_pt = cfg.batch_size * (cfg.pt_seq_length - 1) if pt_chunks is not None else 0
    engine = minillm.minillm_engine(student, cfg, dist.world_size)
    steps: list[dict] = []
    scored = 0.0  # teacher seconds up to the previous step

    def rollouts_done(_buffer) -> None:
        nonlocal scored
        teacher.on, teacher.seconds, teacher.rows, scored = True, 0.0, 0, 0.0
        steps.clear()

    def step_done(record: dict) -> None:
        nonlocal scored
        teacher_s, scored = teacher.seconds - scored, teacher.seconds
        steps.append(
            {
                "seconds": record["step_s"],
                "teacher_scoring_s": teacher_s,
                "optimisation_s": record["step_s"] - teacher_s,
                "response_tokens": round(record["tokens_per_s"] * record["step_s"]),
                "pt_tokens": n_pt,
            }
        )

    def phase(number: int) -> dict:
        teacher.on = False
        return minillm.run_phase(
            engine,
            teacher,
            prompts,
            number,
            cfg,
            dist,
            eos_token_id=data.eos_token_id,
            out=Path(setup["data"]).parent,
            first_step=number * cfg.steps_per_phase,
            pt_chunks=pt_chunks,
            on_rollouts=rollouts_done,
            on_step=step_done,
        )

    if not quick:
        phase(0)  # warm-up phase, not reported
    baseline = rss_now_mb()
    ran = phase(1)
    teacher.on = False
    return {
        "phase_s": ran["phase_s"],
        "rollout_s": ran["rollout_s"],
        "teacher_scoring_s": sum(s["teacher_scoring_s"] for s in steps),
        "teacher_rows": teacher.rows,
        "optimisation_s": sum(s["optimisation_s"] for s in steps),
        "generated_tokens": ran["generated_tokens"],
        "steps": steps,
        "memory": memory(baseline),
        "config": {
            "rollouts_per_phase": cfg.rollouts_per_phase,
            "batch_size": cfg.batch_size,
            "micro_batch_size": engine.train_micro_batch_size_per_gpu(),
            "ppo_epochs": cfg.ppo_epochs,
            "steps_per_phase": cfg.steps_per_phase,
            "max_prompt_length": cfg.max_prompt_length,
            "max_new_tokens": cfg.generation.max_new_tokens,
            "teacher_mixed_alpha": cfg.teacher_mixed_alpha,
            "policy_gradient": cfg.policy_gradient,
            "single_step": cfg.single_step,
            "pt_coef": cfg.pt_coef,
            "pt_seq_length": cfg.pt_seq_length if pt_chunks is not None else None,
            "rollout_logprobs": cfg.rollout_logprobs,
            "cache_teacher_logits": cfg.cache_teacher_logits,
            "precision": "fp32 (CPU)",
        },
    }


def rkl_config(scale: str, quick: bool) -> MiniLLMConfig:
    """Our side of the TRL comparison, the like-for-like objective: one optimizer step per generation of
    `batch_size` prompts, fully on-policy, loss = token mean of the exact reverse KL(q||p) over the vocabulary (our
    single-step term = TRL beta=1); no mixing, no PG or PT term, constant LR, no validation or checkpoint inside."""
    batch = hop_config(scale).batch_size
    overrides = dict(
        teacher_mixed_alpha=0.0,
        policy_gradient=False,
        single_step=True,
        pt_coef=0.0,
        ppo_epochs=1,
        rollouts_per_phase=batch,
        total_steps=4 if quick else 12,
        warmup_steps=0,
        eval_interval=10**6,
        checkpoint_interval=10**6,
        val_examples=batch,
        log_student_sample=False,
    )
    return hop_config(scale, overrides)


def rkl_settings(scale: str, quick: bool) -> dict:
    """What both sides of the TRL comparison are given (from `rkl_config`)."""
    cfg = rkl_config(scale, quick)
    return {
        "batch_size": cfg.batch_size,
        "max_new_tokens": cfg.generation.max_new_tokens,
        "lr": cfg.lr,
        "betas": list(cfg.betas),
        "eps": cfg.eps,
        "weight_decay": cfg.weight_decay,
        "grad_clip": cfg.grad_clip,
        "steps": cfg.total_steps,
        "dropped_steps": "the first (warm-up) and the last (ours: final validation/model save)",
        "seed": cfg.seed,
        "lr_schedule": "constant, no warm-up",
        "dropout": "off (both)",
        "precision": "fp32, gradient checkpointing off",
    }


def _rkl_examples(setup: dict, quick: bool) -> list:
    """The examples `train_minillm` draws in the comparison's phases (its own sampler, `minillm.phase_prompts`, over
    the train split's indices), so both trainers see the same multiset of prompts."""
    from benchmark.data import load_prepared

    cfg = rkl_config(setup["scale"], quick)
    train = load_prepared(setup["data"], "gpt2").split("train")
    indices, lone = list(range(len(train))), Dist(0, 1, CPU)
    return [train[i] for k in range(cfg.total_steps) for i in minillm.phase_prompts(indices, k, cfg, lone)[0]]


def kept(xs: list) -> list:
    """A trainer's per-step figures without the first (warm-up) and the last step (ours validates and saves in it)."""
    return xs[1:-1] if len(xs) > 2 else xs[-1:]


def worker_ours_rkl(setup: dict, rnd: int, quick: bool) -> dict:
    """`train_minillm` at `rkl_config`, timed by its own metrics.jsonl (phase_s, rollout_s per phase)."""
    cfg = rkl_config(setup["scale"], quick)
    import deepspeed  # noqa: F401  (imported before the baseline, as trl is on the other side)

    from benchmark.engine import init_distributed

    init_distributed()
    out = Path(tempfile.mkdtemp(prefix="perf-ours-"))
    try:
        baseline = rss_now_mb()  # after imports, before the models: same point as the TRL side
        minillm.train_minillm(
            setup["student"]["path"], setup["teacher"]["path"], setup["data"], out, cfg, progress=False
        )
        mem = memory(baseline)
        recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    phases = kept([r for r in recs if r["kind"] == "phase"])
    return {
        "s_per_step": [p["phase_s"] for p in phases],
        "generate_s": [p["rollout_s"] for p in phases],
        "generated_tokens": [p["response_tokens"] for p in phases],
        "memory": mem,
        "note": "phase_s of train_minillm's metrics.jsonl: 1 phase = 1 rollout batch + 1 optimizer step",
    }


def worker_trl(setup: dict, rnd: int, quick: bool) -> dict:
    """trl.DistillationTrainer on the same models, prompts and optimizer settings as `worker_ours_rkl`."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import DistillationConfig, DistillationTrainer

    from benchmark.data import load_prepared

    s = rkl_settings(setup["scale"], quick)
    examples = _rkl_examples(setup, quick)
    tok = load_prepared(setup["data"], "gpt2").tokenizer
    same_ids = sum(tok(text=e.prompt)["input_ids"] == list(e.prompt_ids) for e in examples) / len(examples)
    baseline = rss_now_mb()  # after imports, before the models: same point as our side
    student, teacher = _load(setup, "student"), _load(setup, "teacher")
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
        mem = memory(baseline)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "s_per_step": kept(clock.steps),
        "generate_s": kept(gen_times),
        "generated_tokens": kept(clock.lengths),
        "memory": mem,
        "prompt_tokenization_matches": same_ids,
        "note": "s/step = time between on_step_end callbacks (data, generation, scoring, backward, optimizer)",
    }


def eval_config(scale: str, quick: bool, batch_size: int | None = None) -> EvalConfig:
    """The scale's EvalConfig; `quick`: its first seed and at most 50 test examples; `batch_size` when given."""
    full = resolve("evaluation", scale)
    overrides: dict = {"batch_size": batch_size} if batch_size is not None else {}
    if quick:
        overrides |= {"seeds": full.seeds[:1], "num_examples": min(full.num_examples or 50, 50)}
    return resolve("evaluation", scale, overrides)


def worker_evaluation(setup: dict, rnd: int, quick: bool, mode: str) -> dict:
    """`evaluate_model` of the student at the scale's EvalConfig, batched or (`mode="single"`) batch 1."""
    from benchmark.evaluate import evaluate_model

    ecfg = eval_config(setup["scale"], quick, batch_size=1 if mode == "single" else None)
    baseline = rss_now_mb()
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
        "memory": memory(baseline),
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


def measure(name: str, setup_path: Path, rnd: int, quick: bool) -> dict:
    """One round of the worker `name` in this process, at one intra-op thread (what a worker subprocess runs)."""
    torch.set_num_threads(1)
    return WORKERS[name](json.loads(Path(setup_path).read_text()), rnd, quick)


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
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for k in LAUNCHER_VARS:
        env.pop(k, None)  # each worker is a lone single-process run
    return env


def run_worker(name: str, setup_path: Path, rnd: int, quick: bool, isolate: bool = True) -> dict:
    """One round of one section: in a fresh subprocess (`isolate`, what the benchmark does) or in this process
    (tests: saves the imports; timings then share the process and memory figures mean nothing)."""
    if not isolate:
        return json.loads(json.dumps(WORKERS[name](json.loads(setup_path.read_text()), rnd, quick)))
    cmd = [sys.executable, "-m", "benchmark", WORKER_VERB, name, "--setup", str(setup_path), "--round", str(rnd)]
    cmd += ["--quick"] if quick else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise PerfError(f"perf worker {name!r} (round {rnd}) failed with exit code {proc.returncode}:\n{tail}")
    return json.loads(lines[-1][len(RESULT_MARK) :])


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


def gpu_section(out: Path) -> dict:
    """Always the planned rows; 'not measured' unless a `perf-gpu` result file (a separate, dated run) is found."""
    rows = [{"pair": p["name"], "status": NOT_MEASURED_GPU} for p in PAIRS]
    sec = {
        "status": "not measured (run python -m benchmark perf-gpu)" if torch.cuda.is_available() else NOT_MEASURED_GPU,
        "rows": rows,
        "how": "python -m benchmark perf-gpu --out paper_tables/perf  (one prepared run on the GPU machine)",
        "result_files": [],
    }
    for f in sorted(out.glob("gpu-*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            d = json.loads(f.read_text())
            if not d.get("dry_run"):
                sec["result_files"].append({"file": f.name, "date": d["created"], "gpu": d["gpu"]["name"]})
    return sec


def run_perf(
    scale: str = "small",
    out: str | Path = "paper_tables/perf",
    repeats: int = 3,
    only: tuple[str, ...] = SECTIONS,
    quick: bool = False,
    work: str | Path | None = None,
    log=print,
    isolate: bool = True,
    command: str | None = None,
) -> tuple[Path, Path]:
    """Measure the sections in `only` over `repeats` interleaved rounds; write and return (json, md) paths.

    `command`: the command line recorded in the JSON. `isolate=False` runs every worker in this process (tests
    only: memory figures are then not per measurement)."""
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
        have_trl = importlib.util.find_spec("trl") is not None and importlib.util.find_spec("accelerate") is not None
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
        result = {
            "schema": SCHEMA,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "command": command,
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
        not_run = {"status": "not run (--only)"}
        result["rollouts"] = report.aggregate_rollouts(raw["rollouts"], setup) if raw["rollouts"] else not_run
        result["training"] = report.aggregate_training(raw["training"]) if raw["training"] else not_run
        result["speedups"] = report.aggregate_speedups(raw)
        if raw["trl"]:
            settings = rkl_settings(scale, quick)
            result["trl"] = report.aggregate_trl(raw["trl"], raw["ours_rkl"], setup, settings)
        elif "trl" in only:
            result["trl"] = {"status": "not measured (trl/accelerate not installed: pip install -e '.[perf]')"}
        else:
            result["trl"] = not_run
        result["evaluation"] = (
            report.aggregate_evaluation(raw["evaluation_batched"], raw["evaluation_single"], setup, quick)
            if raw["evaluation_batched"]
            else not_run
        )
        result["gpu"] = gpu_section(out)
        result["protocol"]["wall_s"] = time.perf_counter() - t_start
    finally:
        torch.set_num_threads(threads)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    slug = result["machine"]["slug"]
    jpath, mpath = out / f"{slug}.json", out / f"{slug}.md"
    jpath.write_text(json.dumps(result, indent=2) + "\n")
    mpath.write_text(report.render_markdown(result))
    log(f"perf: wrote {jpath} and {mpath} ({result['protocol']['wall_s']:.0f} s)")
    return jpath, mpath
