"""Rollout decoding on one GPU (issue #18), the `decode` section of `python -m benchmark perf-gpu`: the static-cache
path (`static_decode.StaticDecoder`, one CUDA graph per decode step) against the dynamic-cache loop
(`sampling.sample`), against each model decoded alone over the same kind of caches and against Hugging Face's
compiled static-cache `generate`; token agreement; the share of a memory-bandwidth floor; the steady-state decode of
Table 1's trained hops; and the phase split and stage hours those rates project.

Steady state: every timed figure is one untimed call of the same variant at full length (graph capture, the CUDA
allocator's growth, compilation), then `reps` timed calls (median; one for the dynamic loop, the slowest). EOS is
suppressed (`EOSLogit(-inf)`: every row decodes max_new_tokens) except under `stopping`, where EOS is made likely (a
mean length of max_new_tokens / STOP_MEAN_FRACTION, i.e. p(EOS) ~ 1 / that per step, capped at max_new_tokens) to
time the finished-row policies side by side: the dynamic loop's compaction, the static path's masking
(`finished="mask"`: one graph, finished rows decode on) and its buckets (`finished="bucket"`).

Bandwidth floor (the fastest a step can be, so `fraction_of_floor` <= 1 up to the floor's simplifications):

    floor tok/s = rows x HBM bandwidth / (weight bytes + KV bytes per step)
    weight bytes = every parameter of both models, once (bf16: 2 bytes each)
    KV bytes per step = sum over the models of 2 (keys, values) x layers x width x rows x context x element bytes
    context = max_prompt_length + max_new_tokens / 2 (the mean context of a full-length decode)

at the GPU's HBM bandwidth (HBM_BYTES_PER_S: the H200's 4.8 TB/s). Left out: compute, the per-step passes over the
vocabulary (softmax, cumulative sum) and the cache positions a static cache reads before they are written.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time

import torch

from benchmark import minillm
from benchmark.config import MiniLLMConfig, for_scale
from benchmark.perf.common import EOSLogit, hf_sampling, hub_shaped_model, stop_bonus
from benchmark.sampling import example_generators, sample
from benchmark.static_decode import StaticDecoder

# NVIDIA H200 (SXM and NVL): 4.8 TB/s of HBM3e, NVIDIA H200 Tensor Core GPU product page and datasheet,
# https://www.nvidia.com/en-us/data-center/h200/
H200_HBM_BYTES_PER_S = 4.8e12
HBM_BYTES_PER_S = {"H200": (H200_HBM_BYTES_PER_S, "NVIDIA H200 datasheet: 4.8 TB/s, nvidia.com/en-us/data-center/h200")}
# Today's steady state, teacher-mixed at batch 64 (paper_tables/perf/gpu-nvidia-h200-2026-11-28.md, probe, second
# call), and issue #18's goal: at least 3x that.
BASELINE_MIXED_TOK_PER_S = 1892.0
GOAL_MIXED_TOK_PER_S = 3 * BASELINE_MIXED_TOK_PER_S
PAIR = ("gpt2", "1.5B", "120M")  # the pair of the figures: GPT-2 120M from the 1.5B teacher
PAIR_NAME = f"{PAIR[0]} {PAIR[1]}>{PAIR[2]}"  # as benchmark.perf.gpu.PAIRS names it
STOP_MEAN_FRACTION = 4  # `stopping`: mean length max_new_tokens / 4 (64 of 256)
FP32_ROWS, FP32_NEW_TOKENS = 16, 32  # the fp32 agreement check: a short decode of fp32 copies


class Timer:
    """Wall seconds of a block, the device synchronised at both ends (CUDA work is asynchronous)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t


def random_prompts(model, rows: int, length: int, seed: int) -> torch.Tensor:
    """Random token ids (no special ids) as prompts, [rows, length] on the CPU."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size - 1, (rows, length), generator=g)


def fp32_copy(model):
    """The same weights in float32, in a new model on the same device (the original stays as it is held)."""
    from transformers import AutoModelForCausalLM

    with torch.device(next(model.parameters()).device):
        copy = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    copy.load_state_dict(model.state_dict())
    return copy.requires_grad_(False).eval()


def hbm_bandwidth(gpu_name: str) -> tuple[float | None, str]:
    """(bytes/s, source) of the GPU named `gpu_name`, or (None, why) when HBM_BYTES_PER_S has no entry for it."""
    for key, (bandwidth, source) in HBM_BYTES_PER_S.items():
        if key in gpu_name:
            return bandwidth, source
    return None, f"no HBM bandwidth on record for {gpu_name!r} (perf.decode.HBM_BYTES_PER_S)"


def step_bytes(models, rows: int, context: int) -> tuple[int, int]:
    """(weight bytes, KV bytes) one decode step of `rows` rows at `context` positions reads (module docstring)."""
    weights = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
    kv = 0
    for m in models:
        c = m.config
        layers = getattr(c, "n_layer", None) or c.num_hidden_layers
        width = getattr(c, "n_embd", None) or c.hidden_size
        kv += 2 * layers * width * rows * context * next(m.parameters()).element_size()
    return weights, kv


def floor_tok_per_s(weight_bytes: float, kv_bytes: float, rows: int, bandwidth: float) -> float:
    """rows x bandwidth / (weight bytes + KV bytes): tok/s if a step only read what it must, once."""
    return rows * bandwidth / (weight_bytes + kv_bytes)


def agreement(a, b) -> dict:
    """How far two decodes of the same prompts and generators agree: the share of rows with identical tokens, the
    mean first differing position of the others, and the largest stored log-prob gap on the identical rows."""
    same = (a.response_ids == b.response_ids) & (a.response_mask == b.response_mask)
    rows = same.all(-1)
    first = (~same).float().argmax(-1)[~rows]
    res = {
        "rows": len(rows),
        "identical_rows": float(rows.float().mean()),
        "mean_first_difference": float(first.float().mean()) if len(first) else None,
    }
    for name in ("student_logprobs", "teacher_logprobs"):
        x, y = getattr(a, name), getattr(b, name)
        if x is not None and y is not None and bool(rows.any()):
            res[f"max_abs_diff_{name}"] = float((x[rows] - y[rows]).abs().max())
    return res


def agreements(outs: dict, **pairs: tuple[str, str]) -> dict:
    """`agreement` of each named pair of decodes (name=(variant a, variant b)) whose variants both ran."""
    return {name: agreement(outs[a], outs[b]) for name, (a, b) in pairs.items() if a in outs and b in outs}


def _failure(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _measure(variants: dict, device, reps: int, deadline: float, keep: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """Time every variant (name -> (make, reps or None)): `make()` builds the call (a decoder is allocated here and
    released after), one untimed call, then the timed ones. Past `deadline` a variant is "skipped (time budget)";
    an exception is its result. Returns the figures and the last outputs of the variants named in `keep`."""
    res, outs = {}, {}
    for name, (make, n) in variants.items():
        if time.perf_counter() > deadline:
            res[name] = {"status": "skipped (time budget)"}
            continue
        try:
            fn = make()
            with Timer(device) as first:
                out = fn()
            seconds = []
            for _ in range(n or reps):
                with Timer(device) as t:
                    out = fn()
                seconds.append(t.seconds)
            tokens = int(out.response_mask.sum())
            med = statistics.median(seconds)
            res[name] = {
                "first_call_s": first.seconds,
                "seconds": med,
                "seconds_values": seconds,
                "tokens": tokens,
                "tok_per_s": tokens / med,
            }
            if name in keep:
                outs[name] = out
            del fn, out
        except Exception as exc:  # a capture or compile failure is a result too
            res[name] = {"error": _failure(exc)}
        _free(device)
        print(
            f"  decode {name}: {res[name].get('tok_per_s', res[name].get('error', res[name].get('status')))}",
            flush=True,
        )
    return res, outs


def decoders(student, teacher, cfg: MiniLLMConfig, ids, mask, *, logprobs: bool):
    """Factories of the decode calls compared: (student, teacher) may be EOS wrappers; `teacher=None` decodes the
    student alone. Each factory returns a no-argument call that decodes `ids` with fresh per-example generators."""
    eos, rows = student.config.eos_token_id, ids.shape[0]
    kw = dict(eos_token_id=eos, mix_model=teacher, mix_alpha=cfg.teacher_mixed_alpha, return_logprobs=logprobs)

    def gens():
        return example_generators(cfg.seed, list(range(rows)))

    def dynamic(compact: bool = True):  # explicitly: the default on a GPU is the static path
        return lambda: sample(
            student, ids, mask, cfg.generation, generators=gens(), compact=compact, cache="dynamic", **kw
        )

    def static(finished: str = "bucket", graphs: bool | None = None):
        dec = StaticDecoder(
            student, cfg.generation, rows=rows, prompt_length=ids.shape[1], finished=finished, graphs=graphs, **kw
        )
        return lambda: dec.decode(ids, mask, gens())

    return dynamic, static


class _Generated:
    """HF generate's new tokens, with the `response_mask` the timing counts."""

    def __init__(self, new_tokens):
        self.response_mask = torch.ones_like(new_tokens)


def hf_static_compiled(model, ids, mask, new_tokens: int):
    """Hugging Face generate with cache_implementation="static" (compiled on CUDA, generate's default there):
    sampling as the rollouts sample (top-k 0, top-p 1), exactly `new_tokens` new tokens."""
    eos = model.config.eos_token_id

    def call():
        out = model.generate(
            input_ids=ids, attention_mask=mask, cache_implementation="static", **hf_sampling(eos, new_tokens)
        )
        return _Generated(out[:, ids.shape[1] :])

    return call


@torch.no_grad()
def rescore_seconds(student, teacher, cfg: MiniLLMConfig, ids, mask, out, device) -> float:
    """Seconds of the trainer's rollout scoring (`minillm.rescore_rollouts`, rollout_logprobs="forward") of these
    rollouts in its rollout chunks (the micro-batch), after one untimed pass."""
    chunk = cfg.micro_batch_size or cfg.batch_size

    def run():
        for i in range(0, ids.shape[0], chunk):
            sl = slice(i, i + chunk)
            minillm.rescore_rollouts(
                student, teacher, ids[sl], mask[sl], out.response_ids[sl], out.response_mask[sl], cfg.generation
            )

    run()
    with Timer(device) as t:
        run()
    return t.seconds


def measure_pair_decode(student, teacher, cfg: MiniLLMConfig, device, gpu_name: str, *, reps: int, deadline: float):
    """Every decode figure of one (teacher, student) pair at the rollout batch (cfg.batch_size rows of
    max_prompt_length random tokens, max_new_tokens new): the variants, `stopping`, `agreement`, the floor."""
    eos = student.config.eos_token_id
    rows, P, T = cfg.batch_size, cfg.max_prompt_length, cfg.generation.max_new_tokens
    ids = random_prompts(student, rows, P, seed=4).to(device)
    mask = torch.ones_like(ids)
    logprobs = cfg.rollout_logprobs == "decode"  # what collect_rollouts asks of the decode
    s, t = EOSLogit(student, eos, float("-inf")), EOSLogit(teacher, eos, float("-inf"))
    mixed_dyn, mixed_static = decoders(s, t, cfg, ids, mask, logprobs=logprobs)
    _, student_static = decoders(s, None, cfg, ids, mask, logprobs=False)
    _, teacher_static = decoders(t, None, cfg, ids, mask, logprobs=False)
    # the dynamic loop, the slowest variant and the known baseline (1892 tok/s, 2026-11-28), is timed once
    variants = {
        "dynamic_mixed": (mixed_dyn, 1),
        "static_mixed": (mixed_static, None),
        "static_mixed_eager": (lambda: mixed_static(graphs=False), 1),
        "static_student": (student_static, None),
        "static_teacher": (teacher_static, None),
    }
    res: dict = {
        "rows": rows,
        "prompt_length": P,
        "max_new_tokens": T,
        "return_logprobs": logprobs,
        "dtype": str(next(student.parameters()).dtype),
    }
    res["variants"], outs = _measure(variants, device, reps, deadline, keep=tuple(variants)[:3])
    res["rescore_s"] = None
    if "static_mixed" in outs and cfg.rollout_logprobs == "forward":
        res["rescore_s"] = rescore_seconds(student, teacher, cfg, ids, mask, outs["static_mixed"], device)
    agree = agreements(
        outs, graph_vs_eager=("static_mixed", "static_mixed_eager"), static_vs_dynamic=("static_mixed", "dynamic_mixed")
    )
    del outs
    _free(device)

    # stopping rows: the finished-row policies
    mean_length = max(T / STOP_MEAN_FRACTION, 2.0)
    bonus = stop_bonus(student.config.vocab_size, mean_length)
    dyn, stat = decoders(
        EOSLogit(student, eos, bonus), EOSLogit(teacher, eos, bonus), cfg, ids, mask, logprobs=logprobs
    )
    stopping = {
        "dynamic_compact": (dyn, 1),
        "static_mask": (lambda: stat("mask"), None),
        "static_bucket": (lambda: stat("bucket"), None),
    }
    figures, outs = _measure(stopping, device, reps, deadline, keep=tuple(stopping))
    res["stopping"] = {"mean_length_target": mean_length, "eos_bonus": bonus, "variants": figures}
    if outs:
        lengths = next(iter(outs.values())).lengths.float()
        res["stopping"]["lengths"] = {"mean": float(lengths.mean()), "max": float(lengths.max())}
    agree |= agreements(
        outs,
        stopping_mask_vs_bucket=("static_mask", "static_bucket"),
        stopping_static_vs_dynamic=("static_bucket", "dynamic_compact"),
    )
    del outs
    _free(device)

    res["agreement"] = agree

    bandwidth, source = hbm_bandwidth(gpu_name)
    context = P + T // 2
    weights, kv = step_bytes([student, teacher], rows, context)
    floor = floor_tok_per_s(weights, kv, rows, bandwidth) if bandwidth else None
    res["bandwidth_floor"] = {
        "bandwidth_bytes_per_s": bandwidth,
        "source": source,
        "weight_bytes": weights,
        "kv_bytes_per_step": kv,
        "context": context,
        "tok_per_s": floor,
        "formula": "rows x bandwidth / (weight bytes + KV bytes per step)",
    }
    _summarise(res)
    return res


def measure_pair_extras(student, teacher, cfg: MiniLLMConfig, device, res: dict, *, reps: int, deadline: float):
    """Adds to `measure_pair_decode`'s `res`: the agreement of fp32 copies (a short decode of FP32_ROWS rows: the
    two paths then differ by float summation order only) and Hugging Face's compiled static-cache generate of each
    model alone (its compilation is the first call)."""
    eos, T = student.config.eos_token_id, res["max_new_tokens"]
    ids = random_prompts(student, res["rows"], res["prompt_length"], seed=4).to(device)
    mask = torch.ones_like(ids)
    if time.perf_counter() < deadline:
        try:
            s32, t32 = fp32_copy(student), fp32_copy(teacher)
            new = dataclasses.replace(cfg.generation, max_new_tokens=min(FP32_NEW_TOKENS, T))
            n = min(FP32_ROWS, res["rows"])
            dyn, stat = decoders(
                EOSLogit(s32, eos, float("-inf")),
                EOSLogit(t32, eos, float("-inf")),
                dataclasses.replace(cfg, generation=new),
                ids[:n],
                mask[:n],
                logprobs=True,
            )
            res["agreement"]["fp32_static_vs_dynamic"] = agreement(stat()(), dyn()())
        except Exception as exc:  # a capture failure is a result too
            res["agreement"]["fp32_static_vs_dynamic"] = {"status": _failure(exc)}
        _free(device)
    hf = {
        "hf_static_compiled_student": (lambda: hf_static_compiled(student, ids, mask, T), None),
        "hf_static_compiled_teacher": (lambda: hf_static_compiled(teacher, ids, mask, T), None),
    }
    res["variants"].update(_measure(hf, device, reps, deadline)[0])
    _summarise(res)


def _summarise(res: dict) -> None:
    floor = res["bandwidth_floor"]["tok_per_s"]
    res["fraction_of_floor"] = {
        k: v["tok_per_s"] / floor for k, v in res["variants"].items() if floor and "tok_per_s" in v and "mixed" in k
    }
    res["goals"] = goals(res)


def goals(res: dict) -> dict:
    """Issue #18's decode goals, read off the measured figures (None where a figure is missing)."""
    v = res["variants"]

    def sec(name):
        return v.get(name, {}).get("seconds")

    mixed, alone = v.get("static_mixed", {}).get("tok_per_s"), (sec("static_student"), sec("static_teacher"))
    return {
        "baseline_mixed_tok_per_s": BASELINE_MIXED_TOK_PER_S,
        "goal_mixed_tok_per_s": GOAL_MIXED_TOK_PER_S,
        "static_mixed_tok_per_s": mixed,
        "static_mixed_at_least_3x_baseline": None if mixed is None else mixed >= GOAL_MIXED_TOK_PER_S,
        "static_mixed_over_student_plus_teacher_s": (
            sec("static_mixed") / (alone[0] + alone[1]) if sec("static_mixed") and all(alone) else None
        ),
        "static_over_dynamic_mixed_tok_per_s": (
            mixed / v["dynamic_mixed"]["tok_per_s"] if mixed and "tok_per_s" in v.get("dynamic_mixed", {}) else None
        ),
    }


def measure_hop_decode(student, teacher, cfg: MiniLLMConfig, device, *, reps: int, deadline: float) -> dict:
    """A trained hop's steady-state teacher-mixed decode at the rollout batch, static and dynamic, and its rollout
    scoring: what `phase` needs."""
    eos = student.config.eos_token_id
    ids = random_prompts(student, cfg.batch_size, cfg.max_prompt_length, seed=5).to(device)
    mask = torch.ones_like(ids)
    logprobs = cfg.rollout_logprobs == "decode"
    dyn, stat = decoders(
        EOSLogit(student, eos, float("-inf")), EOSLogit(teacher, eos, float("-inf")), cfg, ids, mask, logprobs=logprobs
    )
    variants, outs = _measure(
        {"static_mixed": (stat, None), "dynamic_mixed": (dyn, 1)}, device, reps, deadline, keep=("static_mixed",)
    )
    rescore = None
    if "static_mixed" in outs and cfg.rollout_logprobs == "forward":
        rescore = rescore_seconds(student, teacher, cfg, ids, mask, outs["static_mixed"], device)
    return {"rows": cfg.batch_size, "variants": variants, "rescore_s": rescore}


def table1_trained_hops(overrides: dict) -> list[dict]:
    """The hops Table 1's entries train at paper scale (the plan's distill stages without a public checkpoint: the
    one-step 1.5B hops are MiniLLM's released students; paper scale's default `authors` preset, what
    `reproduce_table1` runs): teacher and student sizes, the stages, and the stage config (its plan config, then
    `overrides`)."""
    from benchmark.plan import build_plan

    hops: dict[tuple[str, str], dict] = {}
    for stage in build_plan(["table1"], "paper").by_kind("distill"):
        if stage.source is not None:
            continue
        path = stage.name.split("-", 2)[2].split("_")
        hop = hops.setdefault((path[-2], path[-1]), {"teacher": path[-2], "student": path[-1], "stages": []})
        hop["stages"].append(stage.name)
        values = dict(stage.config["minillm"])
        for k, v in overrides.items():  # nested values field by field, as `resolve` merges them
            values[k] = values[k] | v if isinstance(v, dict) and isinstance(values.get(k), dict) else v
        hop["config"] = for_scale(MiniLLMConfig, values)  # the stage's whole config, as the runner builds it
    return [hops[k] | {"name": f"gpt2 {k[0]}>{k[1]}"} for k in sorted(hops)]


def phase(cfg: MiniLLMConfig, rows: int, decode_s: float, rescore_s: float | None, step: dict | None) -> dict:
    """One phase of `cfg` on this GPU from steady-state figures, split into
    rollouts     rollouts_per_phase / rows decode batches of `rows`, each decoded 1 + log_student_sample times (the
                 logged pure-student sample runs both models too) at `decode_s` a batch
    scoring      the same batches rescored at `rescore_s` (rollout_logprobs="forward"; 0 for "decode")
    optimisation the first PPO epoch's steps at step_s (teacher logits computed) and the rest at cached_step_s;
                 None without a measured step
    and the stage's hours: total_steps / steps_per_phase phases (validation, checkpoints, data loading excluded)."""
    batches = cfg.rollouts_per_phase / rows
    rollouts = batches * (1 + int(cfg.log_student_sample)) * decode_s
    scoring = batches * (rescore_s or 0.0) if cfg.rollout_logprobs == "forward" else 0.0
    res = {"rollouts_s": rollouts, "scoring_s": scoring, "optimisation_s": None, "phase_s": None, "hours_1gpu": None}
    if step is not None:
        first = cfg.rollouts_per_phase // cfg.batch_size
        optimisation = first * step["step_s"] + (cfg.steps_per_phase - first) * step["cached_step_s"]
        total = rollouts + scoring + optimisation
        res.update(
            optimisation_s=optimisation,
            phase_s=total,
            rollout_share=rollouts / total,
            hours_1gpu=cfg.total_steps / cfg.steps_per_phase * total / 3600,
        )
    return res


def run_section(cfg: MiniLLMConfig, device, dtype, gpu_name: str, *, dry: bool, overrides: dict, deadline: float):
    """The decode section: the issue's pair in full, then each trained hop of Table 1 (static and dynamic
    teacher-mixed decode and scoring). Models are the real architectures with random weights in `dtype` (the tiny
    scale's for a dry run), each size built once."""
    family, teacher_size, student_size = PAIR
    reps = 1 if dry else 2
    models: dict[str, torch.nn.Module] = {}

    def model(size):
        if size not in models:
            m = hub_shaped_model(family, size, dry=dry, device=device, dtype=dtype)
            models[size] = m.requires_grad_(False).eval()
        return models[size]

    section = {"pair": PAIR_NAME, "reps": reps}
    print(f"decode: {section['pair']} at {cfg.batch_size} rows", flush=True)
    section.update(
        measure_pair_decode(
            model(student_size), model(teacher_size), cfg, device, gpu_name, reps=reps, deadline=deadline
        )
    )
    section["hops"] = {}
    for hop in table1_trained_hops(overrides):
        print(f"decode: hop {hop['name']}", flush=True)
        about = {"teacher": hop["teacher"], "student": hop["student"], "stages": hop["stages"]}
        try:
            figures = measure_hop_decode(
                model(hop["student"]), model(hop["teacher"]), hop["config"], device, reps=reps, deadline=deadline
            )
        except Exception as exc:  # the other hops still measure
            figures = {"status": _failure(exc)}
        section["hops"][hop["name"]] = figures | about
    print("decode: fp32 agreement, Hugging Face compiled static cache", flush=True)
    measure_pair_extras(model(student_size), model(teacher_size), cfg, device, section, reps=reps, deadline=deadline)
    models.clear()
    _free(device)
    return section
