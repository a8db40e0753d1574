"""The maths of one decode step, shared by both decode loops: `sampling.sample` (Hugging Face dynamic caches) and
`static_decode.StaticDecoder` (static caches, a CUDA graph per step on a GPU). Both draw from the same floats with
the same functions, so for the same per-example generators they draw the same tokens (ref §1.3 step 1: MiniLLM's
forked sampling step; `sampling`'s docstring has the loop and the one deliberate difference, the inverse-CDF draw).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.generation.logits_process import (
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from benchmark.config import GenerationSettings

__all__ = [
    "SampleOutput",
    "chosen_logprobs",
    "inverse_cdf",
    "logits_processors",
    "mixed_probs",
    "position_ids",
    "row_uniforms",
]


def position_ids(attention_mask: torch.Tensor) -> torch.LongTensor:
    """cumsum(mask) - 1, clamped at 0: the position of every real token counted from the row's first real token.

    GPT-2's learned positions otherwise start counting at the left padding (ref §1.3 step 2, `reward.py` lines
    31-34). OPT adds its own offset of 2 to whatever it is given, so the same ids serve both families.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class SampleOutput:
    """What `sample` returns; every tensor has exactly `max_new_tokens` columns.

    The mask follows ref §1.3 "Mask convention": 1 up to AND INCLUDING the first EOS, 0 after it, so the EOS the
    model chose is inside the loss and the EOS filling is not.
    """

    response_ids: torch.LongTensor  # [B, T]; after the first EOS filled with EOS (pad = EOS)
    response_mask: torch.Tensor  # [B, T] float 0/1
    lengths: torch.LongTensor  # [B] valid response tokens (EOS included when produced)
    student_logprobs: torch.Tensor | None = None  # [B, T] log_softmax(student / temperature)[y_t]; 0 where mask 0
    teacher_logprobs: torch.Tensor | None = None  # [B, T] log_softmax(raw teacher)[y_t]; 0 where mask 0


def logits_processors(settings: GenerationSettings) -> LogitsProcessorList:
    """The processors and warpers of the reference fork, in HF generate's order: processors (n-gram ban) first,
    then warpers temperature -> top-k -> top-p (ref §1.3 step 1; test time adds no_repeat_ngram_size=6, ref §5.1)."""
    procs = LogitsProcessorList()
    if settings.no_repeat_ngram_size > 0:
        # Applied over the FULL sequence, left-padded prompt included, exactly as HF generate does.
        procs.append(NoRepeatNGramLogitsProcessor(settings.no_repeat_ngram_size))
    if settings.do_sample:
        if settings.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k > 0:
            procs.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            procs.append(TopPLogitsWarper(settings.top_p))
    return procs


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.LongTensor:
    """Per row, the first token whose cumulative probability exceeds u * total (never a zero-probability token)."""
    cdf = probs.double().cumsum(-1)
    x = (uniforms.to(cdf.device, torch.float64) * cdf[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, x, right=True).squeeze(-1)
    # u * total can round up to total: fall back to the row's last token with non-zero probability.
    last_nonzero = (probs > 0).long().cumsum(-1).argmax(-1)
    return torch.minimum(idx, last_nonzero)


def row_uniforms(generators: list[torch.Generator] | None, rows: int, steps: int, device) -> torch.Tensor:
    """The uniforms of a decode, [rows, steps] float64 on `device`: row i's from generators[i], or with None from
    the global torch RNG. All of a row's uniforms are drawn up front: its generator advances by exactly `steps` per
    call, early stop or not."""
    if generators is None:
        return torch.rand((rows, steps), dtype=torch.float64, device=device)
    return torch.stack([torch.rand(steps, generator=g, dtype=torch.float64) for g in generators]).to(device)


def mixed_probs(procs, seq, student_logits, teacher_logits, mix_alpha: float) -> torch.Tensor:
    """The distribution a step draws from: softmax(procs(student)), or with teacher logits and mix_alpha > 0,
    (1 - mix_alpha) softmax(procs(student)) + mix_alpha softmax(procs(teacher)) (ref §1.3 step 1). Both decode
    paths (`sample`, `static_decode.StaticDecoder`) call this, so they draw from the same floats."""
    probs = F.softmax(procs(seq, student_logits.clone()), dim=-1)
    if teacher_logits is not None and mix_alpha > 0:
        probs = (1 - mix_alpha) * probs + mix_alpha * F.softmax(procs(seq, teacher_logits.clone()), dim=-1)
    return probs


def chosen_logprobs(logits, tokens, temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / temperature)[token] per row, [B]: the stored log q (student, its temperature, ref §1.3
    step 3) and log p (teacher, temperature 1: dividing by 1.0 is exact, ref §1.3 step 2)."""
    return F.log_softmax(logits / temperature, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
