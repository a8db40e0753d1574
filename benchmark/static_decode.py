"""Teacher-mixed decoding over static KV caches, one decode step captured as a CUDA graph on a GPU.

`sampling.sample` decodes with Hugging Face's DynamicCache: the caches grow every step and the batch shrinks as rows
finish, so shapes and addresses change and every kernel of a step is launched from Python. At the paper's batch of
64 that is launch-bound on a GPU (48 + 12 layers a token for GPT-2 1.5B > 120M). Here both models write into
preallocated `transformers.StaticCache`s of prompt + max_new_tokens - 1 positions, and every tensor a step reads or
writes is a buffer with a fixed address, so one whole step is recorded once as a CUDA graph and replayed:

    the step (MiniLLM's forked sampling loop, ref §1.3 step 1; the same maths as `sampling.sample`):
        probs = (1 - alpha) softmax(procs(student logits)) + alpha softmax(procs(teacher logits))
        token = inverse CDF of probs at this row's uniform for step t        (EOS once the row has finished)
        store token, mask, log q(token) and log p(token)                     (ref §1.3 steps 2-3)
        student and teacher forward the token into their static caches -> the next step's logits

    >>> dec = StaticDecoder(student, GenerationSettings(max_new_tokens=256), rows=64, prompt_length=256,
    ...                     eos_token_id=eos, mix_model=teacher, mix_alpha=0.2)
    >>> out = dec.decode(prompt_ids, prompt_mask, example_generators(seed, example_ids))   # a sampling.SampleOutput
    >>> out = dec.decode(...)          # the next batch replays the graphs captured by the first

Same tokens as `sampling.sample` for the same generators: a graph cannot call per-example `torch.Generator`s, so a
decode draws every row's uniforms up front, outside the graph, exactly as `sample` does
(`decode_step.row_uniforms`, [B, T] per call), and the step reads column t of that buffer. The step's maths is the
functions `sample` calls (`decode_step`: `mixed_probs`, `inverse_cdf`, `chosen_logprobs`). The logits differ from
the dynamic loop's by float summation order only (attention runs over the static length with the future masked;
prompts may carry more left padding).

Why an explicit `torch.cuda.CUDAGraph` rather than `torch.compile(mode="reduce-overhead")`: no compilation (Hugging
Face's compiled static-cache generate took 6-15 s on its first call for GPT-2 120M alone on the H200,
paper_tables/perf/gpu-nvidia-h200-2026-11-28.md; a capture costs one step), no recompilation per batch size (one
graph per bucket is a plain capture), and the graph replays the eager kernels, so the eager path the CPU tests check
is the arithmetic the GPU runs. What compile would add, kernel fusion, matters little when a step is bound by launches
and by reading weights and caches.

Finished rows (`finished`): "mask" keeps every row in the batch to the end (one graph; a finished row keeps drawing
EOS and its outputs stay as they were). "bucket" moves the live rows to the front whenever they fit a smaller bucket
(the powers of two below `rows`) and replays that bucket's graph, captured when first used, on the leading rows of
the same buffers and caches: fewer rows read the caches, which are most of a step's bytes at long lengths.
Either way the loop stops once every row has finished, as `sample` does. `benchmark.perf.decode` times both side by
side (its `stopping` figures).

The n-gram ban of test-time sampling (`no_repeat_ngram_size`, ref §5.1) is Hugging Face's NoRepeatNGramLogitsProcessor
computed on the device (`repeated_ngram_mask`) over a token buffer of the padded prompt and the tokens drawn so far.
It bans what the dynamic loop's processor bans whenever a prompt's real tokens hold no EOS (pad = EOS): the extra
left padding of a static prompt only adds n-grams that begin with EOS, and a live row's last n - 1 tokens begin with
EOS only when they reach back into its padding, whose one occurrence is the row's own (EOS run, first real token).

Memory: the caches hold rows x (prompt_length + max_new_tokens - 1) positions of both models for as long as the
decoder lives, in the models' dtype: 2 (keys, values) x layers x width x rows x positions x bytes. At paper scale
(GPT-2 1.5B teacher, 48 layers x 1600, and 120M student, 12 x 768; 256 + 256 tokens; bf16) that is 10.05 GB +
1.21 GB = 11.25 GB at 64 rows (2.8 GB at 16), the size the dynamic loop's caches reach by the last token; OPT 6.7B >
2.7B: 27.9 GB at 64 rows. Besides: two [rows, vocab] float32 logits buffers (26 MB at 64 rows of GPT-2's 50257) and
each captured bucket's private pool of step intermediates (a few [rows, vocab] tensors each). Callers hold one
decoder of a shape at a time: `sampling.sample_prompts` builds one per call and releases it when its batches end.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from transformers import StaticCache

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

__all__ = ["FINISHED", "StaticDecoder", "buckets", "repeated_ngram_mask"]

FINISHED = ("bucket", "mask")


def buckets(rows: int, finished: str) -> list[int]:
    """The batch sizes a decode of `rows` rows runs at: [rows] for "mask"; for "bucket" the powers of two below
    `rows` and `rows` itself, ascending (64 -> [1, 2, 4, 8, 16, 32, 64]; 12 -> [1, 2, 4, 8, 12])."""
    if finished == "mask":
        return [rows]
    return [1 << k for k in range(rows.bit_length()) if 1 << k < rows] + [rows]


def repeated_ngram_mask(seq: torch.Tensor, length: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """The tokens Hugging Face's NoRepeatNGramLogitsProcessor(n) bans, as a bool mask [rows, vocab_size]: per row, every
    token that follows an earlier occurrence of the row's last n - 1 tokens, among its first `length` tokens of `seq`
    [rows, width] (the n-grams wholly inside them). `length` is a one-element long tensor, read on the device only, so
    a captured step can run this at every length."""
    rows, width = seq.shape
    mask = torch.zeros((rows, vocab_size), dtype=torch.bool, device=seq.device)
    if width < n:
        return mask
    grams = seq.unfold(1, n, 1)  # [rows, width - n + 1, n]: every n-gram of the buffer, by start
    inside = torch.arange(width - n + 1, device=seq.device) <= length - n
    # the last n - 1 tokens (clamped indices when length < n - 1, where no n-gram is inside anyway)
    last = seq.index_select(1, (length - (n - 1)).clamp(min=0) + torch.arange(n - 1, device=seq.device))
    hit = (grams[..., :-1] == last[:, None, :]).all(-1) & inside
    counts = torch.zeros((rows, vocab_size), dtype=torch.float32, device=seq.device)
    counts.scatter_add_(1, grams[..., -1], hit.float())  # sums of 0/1: exact in any order
    return counts > 0


def _leading_rows(cache: StaticCache, n: int) -> StaticCache:
    """The same cache restricted to its first `n` rows: every layer's keys and values sliced (the same storage, so
    writes through either land in both) and its length counter shared."""
    view = copy.copy(cache)
    view.layers = []
    for layer in cache.layers:
        part = copy.copy(layer)  # shares cumulative_length, the tensor the layer advances in place
        part.keys, part.values, part.batch_size = layer.keys[:n], layer.values[:n], n
        view.layers.append(part)
    return view


class StaticDecoder:
    """Decodes batches of up to `rows` left-padded prompts of up to `prompt_length` columns, `settings.max_new_tokens`
    tokens each, over static caches; `decode` returns what `sampling.sample` returns for the same arguments.

    `graphs`: capture each bucket's step as a CUDA graph (default: on a CUDA device); False runs the same step
    eagerly (CPU, tests). The buffers, caches and graphs live as long as the decoder: reuse it across batches.
    """

    def __init__(
        self,
        model,
        settings: GenerationSettings,
        *,
        rows: int,
        prompt_length: int,
        eos_token_id: int,
        mix_model=None,
        mix_alpha: float = 0.0,
        return_logprobs: bool = False,
        finished: str = "bucket",
        graphs: bool | None = None,
    ):
        if finished not in FINISHED:
            raise ValueError(f"finished={finished!r}; use one of {FINISHED}")
        if rows < 1 or prompt_length < 1:
            raise ValueError(f"rows={rows}, prompt_length={prompt_length}: both must be >= 1")
        self.device = next(model.parameters()).device
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        if self.graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the model is on {self.device}; pass graphs=False")
        self.models = [model] + ([mix_model] if mix_model is not None else [])
        self.settings, self.eos, self.mix_alpha = settings, eos_token_id, mix_alpha
        self.return_logprobs = return_logprobs
        self.rows, self.prompt_length, self.steps = rows, prompt_length, settings.max_new_tokens
        self.buckets = buckets(rows, finished)
        # the n-gram ban runs on the device (`repeated_ngram_mask`); the warpers never read the sequence
        self.ngram = settings.no_repeat_ngram_size
        self.procs = logits_processors(dataclasses.replace(settings, no_repeat_ngram_size=0))
        R, P, T, dev = rows, prompt_length, self.steps, self.device
        # The step's inputs and outputs, one row per slot (a slot holds a batch row, `slot_row`; -1 = none).
        # Updated in place only: a captured graph reads and writes these addresses.
        self.mask = torch.ones((R, P + T - 1), dtype=torch.long, device=dev)  # prompt mask, then the new tokens
        self.first_position = torch.zeros(R, dtype=torch.long, device=dev)  # real prompt tokens = position of y_0
        self.step = torch.zeros(1, dtype=torch.long, device=dev)  # t, advanced by the step itself
        self.uniforms = torch.zeros((R, T), dtype=torch.float64, device=dev)
        self.done = torch.ones(R, dtype=torch.bool, device=dev)
        self.token = torch.full((R,), eos_token_id, dtype=torch.long, device=dev)  # y_t, the forward's input
        self.slot_row = torch.full((R,), -1, dtype=torch.long, device=dev)
        self.out_tokens = torch.full((R, T), eos_token_id, dtype=torch.long, device=dev)
        self.out_mask = torch.zeros((R, T), dtype=torch.float32, device=dev)
        self.out_lq = torch.zeros((R, T), dtype=torch.float32, device=dev)
        self.out_lp = torch.zeros((R, T), dtype=torch.float32, device=dev)
        # the padded prompts and the tokens drawn so far: what the n-gram ban reads
        self.seq = torch.full((R, P + T), eos_token_id, dtype=torch.long, device=dev) if self.ngram else None
        self.logits: list[torch.Tensor] = []  # per model [R, V] float32, allocated by the first prefill
        self.caches = [StaticCache(config=m.config, max_cache_len=P + T - 1) for m in self.models]
        self._views: dict[int, list[StaticCache]] = {}
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}

    # ------------------------------------------------------------------------------------------------------------
    # The step: everything in it reads and writes the buffers above, the first n slots (a bucket)
    # ------------------------------------------------------------------------------------------------------------

    def _draw(self, n: int) -> None:
        """Token t of the first n slots from the current logits, stored with its mask and log-probs."""
        s_logits = self.logits[0][:n]
        t_logits = self.logits[1][:n] if len(self.logits) > 1 else None
        s_in, t_in = s_logits, t_logits
        if self.ngram:  # HF applies the ban first, to both models' logits, then the warpers
            banned = repeated_ngram_mask(self.seq[:n], self.prompt_length + self.step, self.ngram, s_logits.shape[-1])
            s_in = s_logits.masked_fill(banned, float("-inf"))
            t_in = t_logits.masked_fill(banned, float("-inf")) if t_logits is not None else None
        probs = mixed_probs(self.procs, self.token[:n, None], s_in, t_in, self.mix_alpha)
        if self.settings.do_sample:
            tok = inverse_cdf(probs, self.uniforms[:n].index_select(1, self.step).squeeze(1))
        else:
            tok = probs.argmax(-1)
        done = self.done[:n]
        tok = torch.where(done, torch.full_like(tok, self.eos), tok)
        live = ~done
        self.out_tokens[:n].index_copy_(1, self.step, tok[:, None])
        self.out_mask[:n].index_copy_(1, self.step, live.float()[:, None])
        if self.return_logprobs:
            lq = torch.where(live, chosen_logprobs(s_logits, tok, self.settings.temperature), 0.0)
            self.out_lq[:n].index_copy_(1, self.step, lq[:, None])
            if t_logits is not None:
                self.out_lp[:n].index_copy_(
                    1, self.step, torch.where(live, chosen_logprobs(t_logits, tok), 0.0)[:, None]
                )
        done |= tok == self.eos
        self.token[:n] = tok
        if self.seq is not None:
            self.seq[:n].index_copy_(1, self.step + self.prompt_length, tok[:, None])

    def _forward(self, n: int) -> None:
        """Both models forward token t of the first n slots (position = real prompt tokens + t) into their caches."""
        pos = (self.first_position[:n] + self.step)[:, None]
        for model, cache, logits in zip(self.models, self._views[n], self.logits, strict=True):
            out = model(
                input_ids=self.token[:n, None],
                attention_mask=self.mask[:n],
                position_ids=pos,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits[:n] = out.logits[:, -1, :]
        self.step += 1

    def _run_step(self, n: int) -> None:
        if not self.graphs:
            self._draw(n)
            self._forward(n)
            return
        graph = self._graphs.get(n)
        if graph is not None:
            graph.replay()
            return
        # A bucket's first step runs eagerly on a side stream (CUDA's warm-up before a capture), then is recorded:
        # capturing runs nothing, so that step counts once.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._draw(n)
            self._forward(n)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._draw(n)
            self._forward(n)
        self._graphs[n] = graph

    # ------------------------------------------------------------------------------------------------------------
    # A decode: fill the buffers, prefill both caches, step, move finished rows out
    # ------------------------------------------------------------------------------------------------------------

    def _prefill(self, ids: torch.Tensor) -> None:
        """Both models read the prompts into their caches (from position 0); their last logits start the decode."""
        P = self.prompt_length
        pos = position_ids(self.mask[:, :P])
        for i, (model, cache) in enumerate(zip(self.models, self.caches, strict=True)):
            for layer in cache.layers:  # start over: the next write goes to position 0
                if layer.is_initialized:
                    layer.cumulative_length.zero_()
            out = model(
                input_ids=ids,
                attention_mask=self.mask,
                position_ids=pos,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            last = out.logits[:, -1, :].float()
            if len(self.logits) <= i:
                self.logits.append(torch.empty_like(last))
            self.logits[i].copy_(last)
        if not self._views:  # the caches allocate their tensors in the first prefill
            self._views = {n: [c if n == self.rows else _leading_rows(c, n) for c in self.caches] for n in self.buckets}

    def _flush(self, slots: torch.Tensor, out: SampleOutput) -> None:
        """Copy the outputs of `slots` into their batch rows of `out` (slots without a row are skipped)."""
        slots = slots[self.slot_row[slots] >= 0]
        rows = self.slot_row[slots]
        out.response_ids[rows] = self.out_tokens[slots]
        out.response_mask[rows] = self.out_mask[slots]
        if out.student_logprobs is not None:
            out.student_logprobs[rows] = self.out_lq[slots]
        if out.teacher_logprobs is not None:
            out.teacher_logprobs[rows] = self.out_lp[slots]

    def _compact(self, n: int, live: int, out: SampleOutput) -> int:
        """Flush the finished slots among the first n and move the live ones to the front when they fit a smaller
        bucket; returns the bucket to run next."""
        target = min(b for b in self.buckets if b >= live)
        if target >= n:
            return n
        done = self.done[:n]
        keep = (~done).nonzero().squeeze(-1)
        self._flush(done.nonzero().squeeze(-1), out)
        slot_buffers = [
            self.mask,
            self.first_position,
            self.uniforms,
            self.done,
            self.token,
            self.slot_row,
            self.out_tokens,
            self.out_mask,
            self.out_lq,
            self.out_lp,
            *self.logits,
            *([self.seq] if self.seq is not None else []),
        ]
        for buf in slot_buffers:
            buf[:live] = buf[keep]
        for cache in self.caches:
            for layer in cache.layers:
                layer.keys[:live] = layer.keys[keep]
                layer.values[:live] = layer.values[keep]
        self.done[live:target] = True  # the bucket's spare slots hold no row
        self.slot_row[live:target] = -1
        return target

    @torch.no_grad()
    def decode(self, prompt_ids, prompt_mask, generators: list[torch.Generator] | None = None) -> SampleOutput:
        """Decode left-padded prompts [B, W] (B <= rows, W <= prompt_length; pad = EOS) as `sampling.sample` does:
        `generators` one per row (`example_generators`) or None for the global torch RNG."""
        B, W = prompt_ids.shape
        R, P, T, dev = self.rows, self.prompt_length, self.steps, self.device
        if B > R or W > P:
            raise ValueError(f"prompts [{B}, {W}] exceed this decoder's {R} rows x {P} prompt columns")
        if generators is not None and len(generators) != B:
            raise ValueError(f"{len(generators)} generators for {B} rows")
        # Prompts right-aligned in P columns; spare slots get one EOS token (never an all-padding row) and are done.
        ids = torch.full((R, P), self.eos, dtype=torch.long, device=dev)
        ids[:B, P - W :] = prompt_ids
        self.mask[:, :P] = 0
        self.mask[:B, P - W : P] = prompt_mask
        self.mask[B:, P - 1] = 1
        self.mask[:, P:] = 1
        if self.seq is not None:
            self.seq[:, :P] = ids
        self.first_position.copy_(self.mask[:, :P].sum(-1))
        self.uniforms.zero_()
        if self.settings.do_sample:
            self.uniforms[:B] = row_uniforms(generators, B, T, dev)
        self.done.fill_(True)
        self.done[:B] = False
        self.slot_row.fill_(-1)
        self.slot_row[:B] = torch.arange(B, device=dev)
        self.step.zero_()
        self.out_tokens.fill_(self.eos)
        for buf in (self.out_mask, self.out_lq, self.out_lp):
            buf.zero_()
        out = SampleOutput(
            response_ids=torch.full((B, T), self.eos, dtype=torch.long, device=dev),
            response_mask=torch.zeros((B, T), dtype=torch.float32, device=dev),
            lengths=torch.zeros(B, dtype=torch.long, device=dev),
            student_logprobs=torch.zeros((B, T), device=dev) if self.return_logprobs else None,
            teacher_logprobs=torch.zeros((B, T), device=dev) if self.return_logprobs and len(self.models) > 1 else None,
        )

        self._prefill(ids)
        n = R
        for _ in range(T - 1):
            self._run_step(n)
            live = int((~self.done[:n]).sum())  # the host waits for the step here, as `sample` does
            if live == 0:
                break
            if len(self.buckets) > 1:
                n = self._compact(n, live, out)
        else:
            self._draw(n)  # the last token needs no forward
        self._flush(torch.arange(n, device=dev), out)
        out.lengths = out.response_mask.sum(-1).long()
        return out
