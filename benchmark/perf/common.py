"""What the CPU and GPU measurements share: random-weight models of the registry's sizes, the EOS wrapper that fixes
how long a random model decodes, machine and package facts, peak memory, and the median/range summary.

Throughput does not depend on what the weights learned, so every measurement uses random weights built from the
scales' `ModelSpec`s (`scales.random_model`): no downloads, the real shapes at `paper` scale.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmark import BenchmarkError, scales


class PerfError(BenchmarkError):
    pass


STOP_MEAN_LENGTH = 12.0  # rollouts that stop: mean length of the EOS-biased random models (compaction speed-up)


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------

# The hub tokenizers' vocabulary, special ids and positions (openai-community/gpt2: <|endoftext|> is bos, eos and
# pad; facebook/opt-*: </s> = 2 is bos and eos, <pad> = 1), so random models have the real embedding shapes.
HUB_VOCAB = {
    "gpt2": (50257, {"bos": 50256, "eos": 50256, "pad": 50256}, 1024),
    "opt": (50272, {"bos": 2, "eos": 2, "pad": 1}, 2048),
}


def hub_shaped_model(family: str, size: str, *, dry: bool, device, dtype):
    """A random-weight model of `family`/`size` on the hub tokenizer's vocabulary: the real architecture
    (`paper` scale), or the `tiny` scale's for a dry run; seed 0, dropout off (MiniLLM's policy runs without)."""
    vocab, ids, positions = HUB_VOCAB[family]
    spec = scales.scale("tiny" if dry else "paper").model(family, size)
    return scales.random_model(spec, vocab, ids, positions, seed=0, device=device, dtype=dtype, dropout=False)


class EOSLogit(torch.nn.Module):
    """Wraps a model so that EOS gets a fixed logit bonus at every step. `bonus=-inf` suppresses EOS: random models
    then decode exactly max_new_tokens tokens, so every decoder compared generates the same number of tokens.
    `bonus=stop_bonus(...)` makes a random model stop after a geometric number of tokens, as trained models do at
    different lengths, so the decode loop's dropping of finished rows has something to drop. Costs one indexed
    write per step."""

    def __init__(self, model, eos: int, bonus: float):
        super().__init__()
        self.model, self.eos, self.bonus, self.config = model, eos, bonus, model.config

    def forward(self, **kwargs):
        out = self.model(**kwargs)
        out.logits[..., self.eos] += self.bonus
        return out


def stop_bonus(vocab_size: int, mean_length: float) -> float:
    """The EOS bonus giving p(EOS) ~ 1/mean_length per step on flat logits (mean length capped by max_new_tokens)."""
    return math.log(vocab_size / (mean_length - 1))


def hf_sampling(eos_token_id: int, new_tokens: int) -> dict:
    """`generate` arguments that sample as the rollouts do (temperature 1, top-k 0, top-p 1) exactly `new_tokens`
    tokens: `min_new_tokens` is HF's way to suppress EOS (MinNewTokensLengthLogitsProcessor)."""
    return dict(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )


# ----------------------------------------------------------------------------------------------------------------
# The machine
# ----------------------------------------------------------------------------------------------------------------


def package_versions(names=("transformers", "deepspeed", "trl", "accelerate")) -> dict:
    """Python, torch and each package's version (None where it is not installed)."""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in names:
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 (a missing optional package is a fact to record, not an error)
            versions[mod] = None
    return versions


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """The machine's slug (OS, CPU words, logical cores: the result files' name), platform, CPU and versions."""
    cpu = _cpu_model()
    cores = os.cpu_count() or 1
    words = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$|processor|\d+(st|nd|rd|th) gen", " ", cpu.lower())
    words = [w for w in re.split(r"[^a-z0-9]+", words) if w and w not in ("intel", "amd", "core")][:3]
    slug = "-".join([platform.system().lower(), *words, f"{cores}c"])
    return {
        "slug": slug,
        "platform": platform.platform(),
        "cpu": cpu,
        "logical_cores": cores,
        "versions": package_versions(),
    }


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


# ----------------------------------------------------------------------------------------------------------------
# Memory and summaries
# ----------------------------------------------------------------------------------------------------------------

MEMORY_METHOD = (
    "peak_rss_mb = ru_maxrss of the worker process at the end of the measurement (kernel-tracked peak, imports and "
    "models included); baseline_rss_mb = /proc/self/statm RSS just before the measured work; peak_delta_mb = "
    "peak - baseline (the memory the measured work added on top of the loaded process)"
)


def peak_rss_mb() -> float:
    """Peak resident set size of this process (MB): ru_maxrss, KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def rss_now_mb() -> float:
    """Current resident set size (MB) from /proc/self/statm (Linux); falls back to the peak."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    return peak_rss_mb()


def memory(baseline_mb: float) -> dict:
    """The process's peak RSS and its rise over `baseline_mb` (MEMORY_METHOD)."""
    peak = peak_rss_mb()
    return {"baseline_rss_mb": baseline_mb, "peak_rss_mb": peak, "peak_delta_mb": peak - baseline_mb}


def stat(values) -> dict:
    """STAT: median, min, max, n and the values themselves (a figure over rounds)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals), "values": vals}
