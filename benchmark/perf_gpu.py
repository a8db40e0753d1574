"""Item 5 of the performance issue: the GPU numbers, as ONE prepared run on a GPU machine (one H200, minutes).

    python benchmark/perf_gpu.py             # writes $OUT/gpu-<gpu>-<date>.json (or --out DIR), prints a summary
    python benchmark/perf_gpu.py --dry-run   # tiny configs on CPU in seconds: what tests/test_perf.py runs

Needs only torch and transformers (no DeepSpeed, no TRL, no network) plus this repository (it imports
benchmark.sampling.sample, the trainer's teacher-mixed decode loop, and benchmark.losses). Models are the real
architectures with random weights, built from GPT2Config/OPTConfig: GPT-2 120M/340M/760M students with the 1.5B
teacher; OPT 1.3B/2.7B students with the 6.7B teacher. A pair that does not fit is recorded as "out of memory".
Budget: it stops starting new pairs after --budget-s seconds (default 360) and marks the rest "skipped (time budget)",
so the whole run ends well inside 8 minutes on an H200.

Measured, in bf16 (teacher weights bf16; student weights bf16 with an fp32 master copy + fp32 AdamW states, the
memory layout of DeepSpeed's bf16 optimizer, 16 bytes per student parameter):
  peak        the GPU's bf16 matmul TFLOPS: the best of large square matmuls (4096, 8192, 16384), CUDA-event timed
  decode      our teacher-mixed loop: sample(student, mix_model=teacher, mix_alpha=0.2, return_logprobs=True),
              64 rollouts of 256 random prompt tokens x 256 new tokens (EOS suppressed): generated tok/s
  step        one MiniLLM optimizer step of 64 sequences (256 prompt + 256 response) as micro-batches: student fwd+bwd
              with token log-probs -> PPO clip loss + single-step KL against a teacher forward (benchmark.losses), plus
              the PT term (student fwd+bwd and teacher fwd on 512-token chunks, losses.pt_loss), then the fp32 AdamW
              step; timed per micro-batch and scaled to 64 sequences: tok/s and MFU
  MFU         model FLOPs / time / measured peak. Model FLOPs per token: 6N + 12 L d S (student, fwd+bwd) and
              2N + 4 L d S (teacher, fwd), N = parameters without the position embeddings, S = sequence length
              (PaLM appendix B convention, causal masking not discounted)
  memory      torch.cuda.max_memory_allocated per pair (reset before building the pair)
  projection  one paper stage (MiniLLMConfig defaults: 5000 steps; phases of 256 rollouts of up to 256 tokens and
              16 optimizer steps of 64) on this ONE GPU = 5000/16 x (4 decode batches + 16 steps); validation
              (every 100 steps), checkpoints and the optimizer-free teacher-scoring already inside the step are
              stated; next to the paper's report (GPT-2 120M from the 1.5B teacher: under 10 h on four V100s; OPT
              2.7B from the 6.7B TA: about 40 h on four V100s). Rollouts are assumed to run all 256 tokens: an upper
              bound for a trained student that stops at EOS.
  scoring     (first pair of each family) bf16 correctness of the stored rollout log-probs: the decode loop's
              incremental log q / log p against train.rescore_rollouts' full forward (what the trainer stores by
              default, as the reference does) and against fp32; the share of tokens whose first-epoch PPO ratio
              would leave [0.8, 1.2] from precision alone if decode-time log q were stored
  static      (first pair) the student decoding alone: HF generate with its DynamicCache, with a static cache
              (eager, and compiled as generate does on CUDA), and our decode loop: the headroom of static shapes
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmark import losses
from benchmark.config import GenerationSettings
from benchmark.perf import EOSLogit
from benchmark.sampling import example_generators, sample

SCHEMA = "mskd-bench.perf-gpu/1"
MIX_ALPHA = 0.2
PAPER_STAGE = dict(total_steps=5000, rollouts_per_phase=256, batch_size=64, ppo_epochs=4, prompt=256, response=256)

# Real architecture shapes (gpt2, gpt2-medium, gpt2-large, gpt2-xl; facebook/opt-1.3b, -2.7b, -6.7b configs).
ARCH = {
    "gpt2-120M": ("gpt2", dict(n_layer=12, n_embd=768, n_head=12)),
    "gpt2-340M": ("gpt2", dict(n_layer=24, n_embd=1024, n_head=16)),
    "gpt2-760M": ("gpt2", dict(n_layer=36, n_embd=1280, n_head=20)),
    "gpt2-1.5B": ("gpt2", dict(n_layer=48, n_embd=1600, n_head=25)),
    "opt-1.3B": ("opt", dict(num_hidden_layers=24, hidden_size=2048, num_attention_heads=32, ffn_dim=8192)),
    "opt-2.7B": ("opt", dict(num_hidden_layers=32, hidden_size=2560, num_attention_heads=32, ffn_dim=10240)),
    "opt-6.7B": ("opt", dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, ffn_dim=16384)),
}
# In priority order: the two pairs the paper reports a wall time for come first. `micro`: sequences per micro-batch.
PAIRS = [
    dict(
        name="gpt2 1.5B>120M",
        teacher="gpt2-1.5B",
        student="gpt2-120M",
        micro=16,
        paper="under 10 h on 4x V100",
        paper_h=10.0,
        checks=("scoring", "static_cache"),
    ),
    dict(
        name="opt 6.7B>2.7B",
        teacher="opt-6.7B",
        student="opt-2.7B",
        micro=8,
        paper="about 40 h on 4x V100",
        paper_h=40.0,
        checks=("scoring",),
    ),
    dict(name="opt 6.7B>1.3B", teacher="opt-6.7B", student="opt-1.3B", micro=8, paper=None, paper_h=None),
    dict(name="gpt2 1.5B>340M", teacher="gpt2-1.5B", student="gpt2-340M", micro=16, paper=None, paper_h=None),
    dict(name="gpt2 1.5B>760M", teacher="gpt2-1.5B", student="gpt2-760M", micro=16, paper=None, paper_h=None),
]
DRY = {  # --dry-run: the same code path with tiny shapes, on CPU
    "gpt2-student": dict(n_layer=1, n_embd=32, n_head=2),
    "gpt2-teacher": dict(n_layer=2, n_embd=48, n_head=2),
    "opt-student": dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, ffn_dim=128),
    "opt-teacher": dict(num_hidden_layers=2, hidden_size=48, num_attention_heads=2, ffn_dim=192),
}


def build(name: str, device, dtype, dry: bool):
    from transformers import AutoModelForCausalLM, GPT2Config, OPTConfig

    family, dims = ARCH[name]
    if dry:
        dims = DRY[f"{family}-{'teacher' if name in ('gpt2-1.5B', 'opt-6.7B') else 'student'}"]
    if family == "gpt2":
        vocab = 512 if dry else 50257
        ids = dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id"), vocab - 1)  # <|endoftext|>
        cfg = GPT2Config(vocab_size=vocab, n_positions=64 if dry else 1024, **ids, **dims)
    else:
        ids = dict(bos_token_id=2, eos_token_id=2, pad_token_id=1)  # </s>, <pad> as facebook/opt-*
        cfg = OPTConfig(
            vocab_size=512 if dry else 50272,
            max_position_embeddings=64 if dry else 2048,
            word_embed_proj_dim=dims["hidden_size"],
            do_layer_norm_before=True,
            **ids,
            **dims,
        )
    for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout", "attention_dropout"):
        if hasattr(cfg, k):
            setattr(cfg, k, 0.0)  # MiniLLM runs the policy without dropout
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model


def _shape(model) -> tuple[int, int, int]:
    """(N without position embeddings, layers, width)."""
    c = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if "wpe" not in name and "embed_positions" not in name)
    layers = getattr(c, "n_layer", None) or c.num_hidden_layers
    width = getattr(c, "n_embd", None) or c.hidden_size
    return n, layers, width


def train_flops(model, tokens: int, seq: int) -> float:
    n, L, d = _shape(model)
    return tokens * (6 * n + 12 * L * d * seq)


def fwd_flops(model, tokens: int, seq: int) -> float:
    n, L, d = _shape(model)
    return tokens * (2 * n + 4 * L * d * seq)


class _Timer:
    def __init__(self, device):
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


def matmul_peak(device, dtype, sizes, iters: int) -> dict:
    best, per = 0.0, {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        with _Timer(device) as t:
            for _ in range(iters):
                a @ b
        tflops = 2 * n**3 * iters / t.seconds / 1e12
        per[str(n)] = tflops
        best = max(best, tflops)
        del a, b
    return {"tflops": best, "per_size": per, "iters": iters, "dtype": str(dtype)}


def measure_decode(student, teacher, device, batch: int, prompt: int, new: int) -> dict:
    eos = student.config.eos_token_id
    s, t = EOSLogit(student, eos, float("-inf")), EOSLogit(teacher, eos, float("-inf"))  # all max_new_tokens
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, student.config.vocab_size - 1, (batch, prompt), generator=g).to(device)
    mask = torch.ones_like(ids)

    def run(n):
        return sample(
            s,
            ids,
            mask,
            GenerationSettings(max_new_tokens=n),
            eos_token_id=eos,
            generators=example_generators(10, list(range(batch))),
            mix_model=t,
            mix_alpha=MIX_ALPHA,
            return_logprobs=True,
        )

    # Warm-up at full length: the first call of a process grows the CUDA allocator's pool for both KV caches and
    # measured 3.2x slower than the next (H200, 2026-11-28: 14.0 s then 4.3 s for the same 128-token call), and
    # a training stage decodes hundreds of times. The 2026-11-28 result files warmed up with 8 tokens only.
    run(new)
    with _Timer(device) as tm:
        out = run(new)
    tokens = int(out.lengths.sum())
    flops = fwd_flops(student, tokens, prompt + new // 2) + fwd_flops(teacher, tokens, prompt + new // 2)
    rollouts = (ids, mask, out)
    return {"seconds": tm.seconds, "tokens": tokens, "tok_per_s": tokens / tm.seconds, "model_flops": flops}, rollouts


def _scores(model, rollouts, rows: int) -> torch.Tensor:
    """The rollouts' log-probs under the model's current dtype (train.rescore_rollouts), `rows` sequences at a time."""
    from benchmark.config import GenerationSettings as G
    from benchmark.minillm import rescore_rollouts

    ids, mask, out = rollouts
    parts = []
    for i in range(0, ids.shape[0], rows):
        sl = slice(i, i + rows)
        parts.append(
            rescore_rollouts(model, None, ids[sl], mask[sl], out.response_ids[sl], out.response_mask[sl], G())[0]
        )
    return torch.cat(parts)


@torch.no_grad()
def measure_scoring(student, teacher, rollouts, rows: int = 8) -> dict:
    """bf16 correctness of the stored rollout log-probs (MiniLLMConfig.rollout_logprobs): the decode loop's
    incremental log q / log p against the trainer's full-forward rescoring (train.rescore_rollouts, the reference's
    way) in bf16 and against an fp32 forward of the same weights. `clipped_at_epoch1` is the share of tokens whose
    first-epoch ratio q_new / q_old would leave PPO's [0.8, 1.2] from precision alone if the decode-time log q
    were stored. Random weights give near-uniform distributions, so this is a floor, not a trained model's value."""
    out = rollouts[2]
    m = out.response_mask.bool()
    res = {}
    for name, model, dec in (("student", student, out.student_logprobs), ("teacher", teacher, out.teacher_logprobs)):
        fwd = _scores(model, rollouts, rows)
        model.float()  # the same weights in fp32, converted once per model
        ref = _scores(model, rollouts, rows)
        model.to(torch.bfloat16)
        d_dec_fwd, d_fwd_ref, d_dec_ref = (dec - fwd)[m].abs(), (fwd - ref)[m].abs(), (dec - ref)[m].abs()
        res[name] = {
            "tokens": int(m.sum()),
            "mean_logprob": float(ref[m].mean()),
            "decode_vs_forward_bf16": {"mean": float(d_dec_fwd.mean()), "max": float(d_dec_fwd.max())},
            "forward_bf16_vs_fp32": {"mean": float(d_fwd_ref.mean()), "max": float(d_fwd_ref.max())},
            "decode_bf16_vs_fp32": {"mean": float(d_dec_ref.mean()), "max": float(d_dec_ref.max())},
            "clipped_at_epoch1": float(((dec - fwd)[m].exp() - 1).abs().gt(0.2).float().mean()),
        }
    return res


@torch.no_grad()
def measure_static_cache(student, teacher, device, batch: int, prompt: int, new: int) -> dict:
    """Headroom of static-shape KV caches for decoding (the student alone): Hugging Face generate with its
    DynamicCache, with cache_implementation="static" (which generate compiles on CUDA), and our decode loop."""
    eos = student.config.eos_token_id
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, student.config.vocab_size - 1, (batch, prompt), generator=g).to(device)
    mask = torch.ones_like(ids)
    common = dict(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=new,
                  min_new_tokens=new, eos_token_id=eos, pad_token_id=eos)  # fmt: skip
    s = EOSLogit(student, eos, float("-inf"))
    variants = {
        "hf_dynamic": lambda: student.generate(**common),
        "hf_static_eager": lambda: student.generate(**common, cache_implementation="static", disable_compile=True),
        "hf_static_compiled": lambda: student.generate(**common, cache_implementation="static"),
        "ours": lambda: sample(s, ids, mask, GenerationSettings(max_new_tokens=new), eos_token_id=eos,
                               generators=example_generators(10, list(range(batch)))),
        "ours_teacher_alone": lambda: sample(EOSLogit(teacher, eos, float("-inf")), ids, mask,
                                             GenerationSettings(max_new_tokens=new), eos_token_id=eos,
                                             generators=example_generators(10, list(range(batch)))),
    }  # fmt: skip
    res = {}
    for name, fn in variants.items():
        try:
            with _Timer(device) as first:
                fn()  # warm-up (and compilation)
            with _Timer(device) as t:
                fn()
            res[name] = {"first_call_s": first.seconds, "seconds": t.seconds, "tok_per_s": batch * new / t.seconds}
        except Exception as exc:  # a compile failure is a result too
            res[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    if "seconds" in res.get("hf_static_compiled", {}) and "seconds" in res.get("hf_dynamic", {}):
        res["static_speedup_vs_dynamic"] = res["hf_dynamic"]["seconds"] / res["hf_static_compiled"]["seconds"]
    return res


class MasterAdam:
    """bf16 model weights, fp32 master weights and fp32 AdamW states (DeepSpeed bf16 optimizer's memory layout)."""

    def __init__(self, model, lr=5e-6):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.master = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        self.opt = torch.optim.AdamW(self.master, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=1e-6)

    def step(self):
        for p, m in zip(self.params, self.master):
            m.grad = p.grad.float() if p.grad is not None else None
        torch.nn.utils.clip_grad_norm_(self.master, 1.0)
        self.opt.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.master):
                p.copy_(m)
                p.grad = None


def measure_step(student, teacher, device, micro: int, prompt: int, new: int, pt: bool, iters: int) -> dict:
    V = student.config.vocab_size
    L = prompt + new
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V - 1, (micro, L), generator=g).to(device)
    mask = torch.ones_like(ids)
    pos = torch.arange(L, device=device).expand(micro, L)
    resp = ids[:, prompt:]
    resp_mask = torch.ones(micro, new, device=device)
    old_lp = -torch.rand(micro, new, generator=g).to(device) * 5
    weights = torch.ones(micro, new, device=device)
    adv = torch.randn(micro, new, generator=g).to(device)
    pt_ids = torch.randint(3, V - 1, (micro, L), generator=g).to(device)
    opt = MasterAdam(student)
    student.train()

    def micro_step():
        out = student(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=new + 1)
        s_logits = out.logits[:, :-1].float()
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=new + 1).logits
        n_tok = resp_mask.sum()
        lp = losses.token_logprobs(s_logits, resp)
        loss = losses.ppo_clip_loss(lp, old_lp, weights, adv, resp_mask, clip=0.2, num_tokens=n_tok)
        loss = loss + losses.single_step_kl(s_logits, t_logits[:, :-1].float(), resp_mask, num_tokens=n_tok)
        if pt:
            inp, labels = pt_ids[:, :-1], pt_ids[:, 1:]
            s_pt = student(input_ids=inp).logits.float()
            with torch.no_grad():
                t_pt = teacher(input_ids=inp).logits.float()
            loss = loss + losses.pt_loss(s_pt, t_pt, labels, 0.5)
        loss.backward()

    micro_step()  # warm-up
    opt.step()
    with _Timer(device) as tm:
        for _ in range(iters):
            micro_step()
    micro_s = tm.seconds / iters
    with _Timer(device) as to:
        opt.step()
    seqs = PAPER_STAGE["batch_size"]
    step_s = seqs / micro * micro_s + to.seconds
    flops_micro = train_flops(student, micro * L, L) + fwd_flops(teacher, micro * L, L)
    if pt:
        flops_micro += train_flops(student, micro * (L - 1), L - 1) + fwd_flops(teacher, micro * (L - 1), L - 1)
    student.eval()
    return {
        "micro_batch": micro,
        "micro_s": micro_s,
        "optimizer_s": to.seconds,
        "step_s": step_s,
        "step_sequences": seqs,
        "response_tok_per_s": seqs * new / step_s,
        "processed_tok_per_s": seqs * (L + (L - 1 if pt else 0)) / step_s,
        "model_flops_per_step": flops_micro * seqs / micro,
        "pt_loss": pt,
    }


def project(decode: dict, step: dict, decode_batch: int) -> dict:
    s = PAPER_STAGE
    phases = s["total_steps"] / (s["ppo_epochs"] * s["rollouts_per_phase"] / s["batch_size"])
    rollout_s = s["rollouts_per_phase"] / decode_batch * decode["seconds"]
    steps_per_phase = s["ppo_epochs"] * s["rollouts_per_phase"] // s["batch_size"]
    phase_s = rollout_s + steps_per_phase * step["step_s"]
    return {
        "phases": phases,
        "rollout_s_per_phase": rollout_s,
        "train_s_per_phase": steps_per_phase * step["step_s"],
        "phase_s": phase_s,
        "hours_1gpu": phases * phase_s / 3600,
        "excluded": "validation every 100 steps (1000 prompts sampled), checkpointing, data loading",
    }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def run(out_dir: Path, dry: bool, budget_s: float, only: tuple[str, ...] = ()) -> Path:
    t_start = time.perf_counter()
    cuda = torch.cuda.is_available() and not dry
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16
    if not cuda and not dry:
        raise SystemExit("no GPU: run with --dry-run to test the script on CPU")
    gpu = torch.cuda.get_device_name(0) if cuda else f"none (dry run on {platform.processor() or 'cpu'})"
    shape = dict(batch=4, prompt=8, new=8) if dry else dict(batch=64, prompt=256, new=256)
    report = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "dry_run": dry,
        "gpu": {
            "name": gpu,
            "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
            "count_visible": torch.cuda.device_count() if cuda else 0,
        },
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": _version("transformers")},
        "settings": {
            "dtype": "bf16 (student bf16 weights + fp32 master/AdamW; teacher bf16)",
            "decode": f"sample(student, mix_model=teacher, mix_alpha={MIX_ALPHA}, return_logprobs=True), "
            f"{shape['batch']} rollouts x {shape['prompt']} prompt + {shape['new']} new tokens, EOS suppressed",
            "step": "micro-batches of (prompt + response) sequences scaled to 64 per optimizer step; PPO clip + "
            "single-step KL + PT (0.5 CE + 0.5 soft CE), fp32 AdamW on master weights, grad clip 1.0",
            "mfu": "model FLOPs (6N + 12LdS train, 2N + 4LdS forward) / seconds / measured bf16 matmul peak",
            "paper_stage": PAPER_STAGE,
            "budget_s": budget_s,
            "pairs": list(only) or "all",
            "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        },
        "peak": None,
        "pairs": [],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M")
    path = out_dir / ("gpu-dry-run.json" if dry else f"gpu-{_slug(gpu)}-{stamp}.json")
    report["peak"] = matmul_peak(device, dtype, [64, 128] if dry else [4096, 8192, 16384], 2 if dry else 20)
    peak = report["peak"]["tflops"] * 1e12
    teachers: dict[str, torch.nn.Module] = {}
    for pair in [p for p in PAIRS if not only or p["name"] in only]:
        row = {"pair": pair["name"], "paper_report": pair["paper"]}
        report["pairs"].append(row)
        if time.perf_counter() - t_start > budget_s:
            row["status"] = "skipped (time budget)"
            continue
        try:
            if pair["teacher"] not in teachers:
                teachers.clear()
                if cuda:
                    torch.cuda.empty_cache()
                t = build(pair["teacher"], device, dtype, dry).eval()
                t.requires_grad_(False)
                teachers[pair["teacher"]] = t
            teacher = teachers[pair["teacher"]]
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            student = build(pair["student"], device, dtype, dry).eval()
            row["params"] = {"student": _shape(student)[0], "teacher": _shape(teacher)[0]}
            with torch.no_grad():
                dec, rollouts = measure_decode(student, teacher, device, shape["batch"], shape["prompt"], shape["new"])
            dec["mfu"] = dec["model_flops"] / dec["seconds"] / peak
            checks = pair.get("checks", ())
            peak_decode = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            if "scoring" in checks:  # before measure_step updates the student that sampled the rollouts
                row["rollout_scoring"] = measure_scoring(student, teacher, rollouts)
                if cuda:  # its fp32 copies are not part of a training stage's memory
                    torch.cuda.reset_peak_memory_stats()
            micro = 2 if dry else pair["micro"]
            step = measure_step(student, teacher, device, micro, shape["prompt"], shape["new"], True, 1 if dry else 3)
            step["mfu"] = step["model_flops_per_step"] / step["step_s"] / peak
            row.update(
                status="measured",
                decode=dec,
                step=step,
                peak_memory_gib=max(peak_decode, torch.cuda.max_memory_allocated() / 2**30) if cuda else None,
                projection=project(dec, step, shape["batch"]),
            )
            if pair["paper_h"] is not None:
                row["projection"]["paper_hours_4x_v100"] = pair["paper_h"]
            if "static_cache" in checks and time.perf_counter() - t_start < budget_s:
                row["static_cache"] = measure_static_cache(
                    student, teacher, device, shape["batch"], shape["prompt"], shape["new"]
                )
            del student, rollouts
        except torch.cuda.OutOfMemoryError as exc:
            row["status"] = f"out of memory ({str(exc).splitlines()[0][:120]})"
        except Exception as exc:  # keep what the other pairs measured
            row["status"] = f"failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
        if cuda:
            torch.cuda.empty_cache()
        report["wall_s"] = time.perf_counter() - t_start
        path.write_text(json.dumps(report, indent=2) + "\n")  # after every pair: a killed run keeps its results
        print(f"[{report['wall_s']:.0f} s] {row['pair']}: {row['status']}", flush=True)
    print(summary(report))
    print(f"wrote {path}")
    return path


def _version(mod: str):
    try:
        return __import__(mod).__version__
    except ImportError:
        return None


def summary(r: dict) -> str:
    lines = [
        f"GPU {r['gpu']['name']}  {r['created']}{'  (DRY RUN: not a measurement)' if r['dry_run'] else ''}",
        f"bf16 matmul peak {r['peak']['tflops']:.1f} TFLOPS",
        f"{'pair':<16}{'decode tok/s':>13}{'dec MFU':>9}{'step s':>9}{'train tok/s':>12}{'MFU':>7}{'mem GiB':>9}"
        f"{'stage h (1 GPU)':>17}  paper",
    ]
    for p in r["pairs"]:
        if p.get("status") != "measured":
            lines.append(f"{p['pair']:<16}{p.get('status')}")
            continue
        d, s, pr = p["decode"], p["step"], p["projection"]
        mem = p["peak_memory_gib"]
        lines.append(
            f"{p['pair']:<16}{d['tok_per_s']:>13.0f}{d['mfu']:>9.3f}{s['step_s']:>9.2f}{s['response_tok_per_s']:>12.0f}"
            f"{s['mfu']:>7.2f}{(f'{mem:.1f}' if mem is not None else '-'):>9}{pr['hours_1gpu']:>17.1f}  "
            f"{p['paper_report'] or '-'}"
        )
    for p in r["pairs"]:
        for who, sc in (p.get("rollout_scoring") or {}).items():
            dec, fwd = sc["decode_vs_forward_bf16"], sc["forward_bf16_vs_fp32"]
            lines.append(
                f"{p['pair']} {who} log-probs (bf16): |decode - forward| mean {dec['mean']:.2e} max {dec['max']:.2e}; "
                f"|forward - fp32| mean {fwd['mean']:.2e}; ratio outside [0.8, 1.2] {sc['clipped_at_epoch1']:.2%}"
            )
        for name, v in (p.get("static_cache") or {}).items():
            if isinstance(v, dict):
                got = v.get("error") or f"{v['tok_per_s']:.0f} tok/s (first call {v['first_call_s']:.1f} s)"
                lines.append(f"{p['pair']} student decode {name}: {got}")
    lines.append(f"wall {r['wall_s']:.0f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "paper_tables/perf", help="directory (default $OUT)")
    p.add_argument("--dry-run", action="store_true", help="tiny configs on CPU: tests the script, measures nothing")
    p.add_argument("--budget-s", type=float, default=360.0, help="start no new pair after this many seconds")
    p.add_argument("--pairs", default="", help="comma-separated pair names to run (default: all, in order)")
    a = p.parse_args(argv)
    if a.dry_run:
        torch.set_num_threads(1)
    run(Path(a.out), a.dry_run, a.budget_s, tuple(n for n in a.pairs.split(",") if n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
