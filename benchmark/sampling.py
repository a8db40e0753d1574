"""One decode loop for everything: MiniLLM rollouts (teacher-mixed), validation and test-time generation.

Stock `generate` cannot draw from a mixture of two models, so this module re-implements the step of MiniLLM's
forked sampling loop (ref §1.3 step 1, `minillm/transformers/.../generation/utils.py` lines ~2891-2998):

    every step: run the student (and the teacher) incrementally, each with its own KV cache
                apply the same processors to both: no_repeat_ngram, temperature, top-k, top-p
                probs = (1 - alpha) * softmax(student) + alpha * softmax(teacher)
                draw the next token

The one deliberate difference is the draw. The reference calls `torch.multinomial` on the global RNG, so a row's
token depends on every other row in the batch (ref §5.1: "sampling depends on the global torch seed *and* the batch
composition"). Here each row owns a `torch.Generator` (`example_generators`) that gives one uniform per step, and the
token is found by inverse CDF on that row's cumulative probabilities. A row's draws then depend only on its own
generator and logits: batch size and batch neighbours change nothing. `sample_prompts` is the batching around it
that rollouts, validation and evaluation share: pad, drop the all-padding columns, one generator per example.

    >>> out = sample(model, ids, mask, GenerationSettings(max_new_tokens=64), eos_token_id=eos,
    ...              generators=example_generators(10, [0, 1]), mix_model=teacher, mix_alpha=0.2,
    ...              return_logprobs=True)
    >>> out.response_ids.shape, out.response_mask.shape      # always [B, 64], pad = EOS after the first EOS
    (torch.Size([2, 64]), torch.Size([2, 64]))

The step's maths (the mixture, the draw, the stored log-probs) is `decode_step`'s, shared by two loops: the
dynamic-cache loop below and `static_decode.StaticDecoder` (static KV caches, one decode step replayed as a CUDA
graph). `cache=None`, the default of `sample` and `sample_prompts` and so of rollouts, validation and evaluation,
picks the static path on a CUDA device and this loop elsewhere (`decode_cache`); both draw the same tokens for the
same generators (up to float summation order in the logits), so the choice needs no config field.

Cache API (transformers 5.24): `DynamicCache(config=model.config)` passed as `cache=` with `use_cache=True`; the
output's `.cache` is the updated cache (`past_key_values` is the deprecated name).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from transformers import DynamicCache

from benchmark.config import GenerationSettings
from benchmark.decode_step import (
    SampleOutput,
    chosen_logprobs,
    inverse_cdf,
    logits_processors,
    mixed_probs,
    position_ids,
    row_uniforms,
)
from benchmark.static_decode import StaticDecoder

CACHES = ("dynamic", "static")  # sample(cache=...): HF DynamicCache loop, or static_decode.StaticDecoder

__all__ = [
    "CACHES",
    "SampleOutput",
    "decode_cache",
    "example_generators",
    "forward_logits",
    "labelled_logits",
    "left_pad",
    "position_ids",
    "response_logits",
    "response_width",
    "sample",
    "sample_prompts",
    "trim_left_padding",
]


def left_pad(
    seqs: list[list[int]], pad_id: int, length: int | None = None
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Left-pad token lists to `length` (default: the longest) -> (ids, mask), both [B, length] long.

    A sequence longer than `length` keeps its FIRST `length` tokens (ref §5.1: the reference truncates test prompts
    that way before padding them to 256 with EOS).
    """
    if length is None:
        length = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        s = list(s)[:length]
        if s:
            ids[i, length - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, length - len(s) :] = 1
    return ids, mask


def trim_left_padding(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the columns that are padding in every row. Prompts are stored left-padded to max_prompt_length, as the
    reference pads them; with explicit position ids and the attention mask the logits do not depend on how much
    padding there is (up to float summation order), so models never spend compute on all-padding columns."""
    if not bool(mask.any()):
        return ids, mask
    first = int(mask.any(0).long().argmax())  # first column holding a real token in some row
    return ids[:, first:], mask[:, first:]


def response_width(response_mask: torch.Tensor) -> int:
    """Columns up to the batch's longest response. Responses are stored right-padded to max_new_tokens (the padded
    width is what the reference whitens over); scoring them needs only this many columns, since a causal model's
    logits at a position do not depend on the padding after it."""
    live = response_mask.any(0)
    return int(live.nonzero().max()) + 1 if bool(live.any()) else 1


def labelled_logits(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """The logits at the positions that carry a label, [N, V] in row-major order: `forward_logits(...)[:, :-1]` at
    `labels != -100` (labels aligned, position t predicts labels[:, t]), with the LM head and the loss spared the
    prompt and padding positions (at the small scale's vocabulary the head is most of a narrow model's compute).
    Same values up to float summation order. `model` may be a DeepSpeed engine (its module's submodules are called)."""
    lm = getattr(model, "module", model)
    hidden = lm.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=False,
    ).last_hidden_state
    return lm.get_output_embeddings()(hidden[:, :-1][labels != -100])


def forward_logits(model, input_ids, attention_mask, logits_to_keep: int | None = None) -> torch.Tensor:
    """One full forward (no cache) with explicit position ids -> logits [B, L or logits_to_keep, V].

    `logits_to_keep=k` keeps the logits of the last k positions only (transformers' `logits_to_keep`; 0/None = all).
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=False,
        logits_to_keep=logits_to_keep or 0,
    )
    return out.logits


def response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """The logits at the positions that predict each response token, [B, T, V]: one full forward of the prompts
    (their all-padding columns dropped) followed by the responses, keeping the last T + 1 positions. How rollouts
    are rescored, the PPO epochs score them and the KL measures read both models (ref §1.3 steps 2-3)."""
    prompt_ids, prompt_mask = trim_left_padding(prompt_ids, prompt_mask)
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], dim=1)
    logits = forward_logits(model, ids, mask, logits_to_keep=response_ids.shape[1] + 1)
    return logits[:, :-1]


def example_generators(seed: int, example_ids: list[int]) -> list[torch.Generator]:
    """One CPU generator per example, seeded from (seed, example id): batching never changes an example's draws.

    The pair is mixed into one 63-bit integer (a splitmix-style hash) so that nearby seeds and ids do not give
    overlapping streams, e.g. (10, 1) and (11, 0).
    """
    gens = []
    for ex in example_ids:
        x = (int(seed) * 0x9E3779B97F4A7C15 + int(ex) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 64)
        x ^= x >> 31
        x = (x * 0xD6E8FEB86659FD93) % (1 << 64)
        x ^= x >> 29
        gens.append(torch.Generator(device="cpu").manual_seed(x & ((1 << 63) - 1)))
    return gens


def decode_cache(cache: str | None, device, models) -> str:
    """The decode loop a call runs: `cache` itself when given; None picks "static" when the prompts are on a CUDA
    device (there the step is replayed as one CUDA graph, where the dynamic loop is launch-bound at the rollout
    batch: issue #18) and no model in `models` is a ZeRO-3 shard (its forward gathers parameters from the other
    ranks, which a graph cannot record), and "dynamic" otherwise (on a CPU the static step runs eagerly and gains
    nothing)."""
    if cache is None:
        on_cuda = torch.device(device).type == "cuda"
        sharded = on_cuda and any(hasattr(p, "ds_numel") for m in models if m is not None for p in m.parameters())
        return "static" if on_cuda and not sharded else "dynamic"
    if cache not in CACHES:
        raise ValueError(f"cache={cache!r}; use one of {CACHES} or None (static on a CUDA device)")
    return cache


class _Incremental:
    """A model decoding step by step with its own KV cache, attention mask and explicit position ids."""

    def __init__(self, model, prompt_ids, prompt_mask):
        self.model = model
        self.mask = prompt_mask.long()
        self.cache = DynamicCache(config=model.config)
        self.logits = self._step(prompt_ids)

    def _step(self, ids):
        pos = position_ids(self.mask)[:, -ids.shape[1] :]
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=pos,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = out.cache
        return out.logits[:, -1, :].float()

    def advance(self, tokens):
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        self.logits = self._step(tokens[:, None])

    def keep(self, rows: torch.Tensor) -> None:
        """Drop every row not in `rows` (KV cache, mask, last logits): finished sequences stop costing compute."""
        self.cache.batch_select_indices(rows)
        self.mask, self.logits = self.mask[rows], self.logits[rows]


@torch.no_grad()
def sample(
    model,
    prompt_ids,
    prompt_mask,
    settings: GenerationSettings,
    *,
    eos_token_id: int,
    generators: list[torch.Generator] | None = None,
    mix_model=None,
    mix_alpha: float = 0.0,
    return_logprobs: bool = False,
    compact: bool = True,
    cache: str | None = None,
) -> SampleOutput:
    """Decode up to `settings.max_new_tokens` tokens from left-padded prompts (pad = EOS).

    With `mix_model` (the teacher), draws from (1 - mix_alpha) q + mix_alpha p after the same processors on both
    (ref §1.3 step 1). `generators`: one per row (`example_generators`); None draws from the global torch RNG.
    `return_logprobs`: the student's log q(y_t) = log_softmax(logits / temperature) (ref §1.3 step 3) and, with a
    `mix_model`, the teacher's log p(y_t) over the full vocabulary, no temperature, no processors (ref §1.3 step 2),
    both read from the step logits (no extra forward).
    `compact=False` keeps finished rows in the decoding batch to the end (the benchmark's "before"; same outputs).
    `cache`: "dynamic" is the loop below; "static" decodes with a new `static_decode.StaticDecoder` of these shapes
    (static KV caches, one CUDA graph per step on a GPU; finished rows in bucketed batch sizes, or masked with
    `compact=False`), the same tokens for the same generators; None (default) picks by device (`decode_cache`).
    A static decoder captures its graphs on first use: decode many batches through `sample_prompts`, which keeps one.
    """
    B, T = prompt_ids.shape[0], settings.max_new_tokens
    if generators is not None and len(generators) != B:
        raise ValueError(f"{len(generators)} generators for {B} rows")
    if decode_cache(cache, prompt_ids.device, (model, mix_model)) == "static":
        decoder = StaticDecoder(
            model,
            settings,
            rows=B,
            prompt_length=prompt_ids.shape[1],
            eos_token_id=eos_token_id,
            mix_model=mix_model,
            mix_alpha=mix_alpha,
            return_logprobs=return_logprobs,
            finished="bucket" if compact else "mask",
        )
        return decoder.decode(prompt_ids, prompt_mask, generators)
    device = prompt_ids.device
    procs = logits_processors(settings)
    if settings.do_sample:
        uniforms = row_uniforms(generators, B, T, device)

    student = _Incremental(model, prompt_ids, prompt_mask)
    teacher = _Incremental(mix_model, prompt_ids, prompt_mask) if mix_model is not None else None
    seq = prompt_ids
    tokens_out = torch.full((B, T), eos_token_id, dtype=torch.long, device=device)
    mask_out = torch.zeros((B, T), dtype=torch.float32, device=device)
    s_lp = torch.zeros((B, T), dtype=torch.float32, device=device) if return_logprobs else None
    t_lp = torch.zeros((B, T), dtype=torch.float32, device=device) if return_logprobs and teacher else None
    # The models decode only the live rows: `rows[i]` is the batch row of decoding row i. Finished rows are dropped
    # (KV caches included) once they are a quarter of the decoding batch, so a long straggler does not keep the
    # whole batch running; their outputs are already final (EOS filling, mask 0). Each row's logits do not depend on
    # its companions (explicit masks and position ids), so this changes nothing beyond float summation order.
    rows = torch.arange(B, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)  # finished, per decoding row

    for t in range(T):
        s_logits = student.logits
        probs = mixed_probs(procs, seq, s_logits, teacher.logits if teacher is not None else None, mix_alpha)
        if settings.do_sample:
            tok = inverse_cdf(probs, uniforms[rows, t])
        else:
            tok = probs.argmax(-1)
        tok = torch.where(done, torch.full_like(tok, eos_token_id), tok)
        live = ~done
        tokens_out[rows, t] = tok
        mask_out[rows, t] = live.float()
        if return_logprobs:
            s_lp[rows, t] = torch.where(live, chosen_logprobs(s_logits, tok, settings.temperature), 0.0)
            if t_lp is not None:
                t_lp[rows, t] = torch.where(live, chosen_logprobs(teacher.logits, tok), 0.0)
        done = done | (tok == eos_token_id)
        n_done = int(done.sum())
        if n_done == len(rows) or t == T - 1:
            break
        seq = torch.cat([seq, tok[:, None]], dim=1)
        if compact and 4 * n_done >= len(rows):
            keep = (~done).nonzero().squeeze(-1)
            rows, done, seq, tok = rows[keep], done[keep], seq[keep], tok[keep]
            student.keep(keep)
            if teacher is not None:
                teacher.keep(keep)
        student.advance(tok)
        if teacher is not None:
            teacher.advance(tok)

    return SampleOutput(
        response_ids=tokens_out,
        response_mask=mask_out,
        lengths=mask_out.sum(-1).long(),
        student_logprobs=s_lp,
        teacher_logprobs=t_lp,
    )


def sample_prompts(
    model,
    prompts: Sequence[Sequence[int]],
    example_ids: Sequence[int],
    settings: GenerationSettings,
    *,
    seed: int,
    eos_token_id: int,
    max_prompt_length: int,
    batch_size: int,
    device,
    mix_model=None,
    mix_alpha: float = 0.0,
    return_logprobs: bool = False,
    cache: str | None = None,
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, SampleOutput]]:
    """The one generation loop (rollouts, validation, the KL measures, test-time evaluation): `prompts` in batches
    of `batch_size`, each left-padded with EOS to `max_prompt_length` (longer prompts keep their first tokens, ref
    §5.1) on `device`, decoded by `sample` without the columns that are padding in every row, prompt i drawing from
    the generator of (seed, example_ids[i]). An example's tokens therefore depend on the seed, its id and the
    model only, never on the batch. Yields (the batch's example ids, its prompt ids, prompt mask, SampleOutput)
    with the prompts padded to max_prompt_length, as rollouts store them.
    `cache` as in `sample` (None: static on a CUDA device). The static path decodes every batch with one
    `static_decode.StaticDecoder` of min(batch_size, len(prompts)) rows and max_prompt_length prompt columns (static
    shapes: no trimming), built here and released when the batches end: its caches and CUDA graphs serve the whole
    call, and a caller that finishes one call before the next never holds two."""
    if len(prompts) != len(example_ids):
        raise ValueError(f"{len(example_ids)} example ids for {len(prompts)} prompts")
    decoder = None
    if decode_cache(cache, device, (model, mix_model)) == "static" and len(prompts) > 0:
        decoder = StaticDecoder(
            model,
            settings,
            rows=min(batch_size, len(prompts)),
            prompt_length=max_prompt_length,
            eos_token_id=eos_token_id,
            mix_model=mix_model,
            mix_alpha=mix_alpha,
            return_logprobs=return_logprobs,
        )
    for start in range(0, len(prompts), batch_size):
        ids = list(example_ids[start : start + batch_size])
        p_ids, p_mask = left_pad(prompts[start : start + batch_size], eos_token_id, max_prompt_length)
        p_ids, p_mask = p_ids.to(device), p_mask.to(device)
        if decoder is not None:
            yield ids, p_ids, p_mask, decoder.decode(p_ids, p_mask, example_generators(seed, ids))
            continue
        out = sample(
            model,
            *trim_left_padding(p_ids, p_mask),
            settings,
            eos_token_id=eos_token_id,
            generators=example_generators(seed, ids),
            mix_model=mix_model,
            mix_alpha=mix_alpha,
            return_logprobs=return_logprobs,
            cache="dynamic",
        )
        yield ids, p_ids, p_mask, out
