"""benchmark.static_decode: the static-cache decode step, run eagerly on CPU (the arithmetic a GPU replays as a CUDA
graph), against `sampling.sample`'s dynamic-cache loop on tiny random GPT-2 and OPT models.

    OMP_NUM_THREADS=1 .nox/tests/bin/python -m pytest tests/test_static_decode.py -q     # ~30 s on one core
"""

from __future__ import annotations

import pytest
import torch

from benchmark import sampling
from benchmark.config import GenerationSettings
from benchmark.sampling import decode_cache, example_generators, left_pad, sample, sample_prompts
from benchmark.static_decode import StaticDecoder, buckets, repeated_ngram_mask

PROMPTS = [
    "Below is an instruction.\n\n### Instruction:\nwhat is the cat?\n\n### Response:\n",
    "list a dog",
    "Explain knowledge distillation step by step to a small student model, with an answer.",
    "why",
    "give a river",
    "the teacher and the student answer a question about the paper table",
]
TOL = dict(atol=1e-5, rtol=1e-5)  # fp32: the two paths differ by float summation order only


def _eos_likely(model, eos: int, bonus: float = 3.0):
    """Random tiny models rarely stop: raise the EOS logit so rows finish at different steps."""

    def hook(module, args, kwargs, out):
        out.logits[..., eos] += bonus
        return out

    return model.register_forward_hook(hook, with_kwargs=True)


def _batch_sizes(model) -> tuple[list[int], object]:
    seen: list[int] = []
    return seen, model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["input_ids"].shape[0]), with_kwargs=True
    )


def _assert_same(dynamic, static, rows=None):
    rows = range(dynamic.response_ids.shape[0]) if rows is None else rows
    for i, j in enumerate(rows):
        assert static.response_ids[i].tolist() == dynamic.response_ids[j].tolist(), (i, j)
        assert torch.equal(static.response_mask[i], dynamic.response_mask[j])
        for a, b in (
            (static.student_logprobs, dynamic.student_logprobs),
            (static.teacher_logprobs, dynamic.teacher_logprobs),
        ):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a[i], b[j], **TOL)
    assert static.lengths.tolist() == [int(dynamic.lengths[j]) for j in rows]


def test_buckets():
    assert buckets(64, "bucket") == [1, 2, 4, 8, 16, 32, 64]
    assert buckets(12, "bucket") == [1, 2, 4, 8, 12]
    assert buckets(1, "bucket") == [1]
    assert buckets(64, "mask") == [64]


@pytest.mark.parametrize("finished", ["mask", "bucket"])
@pytest.mark.parametrize("mixed", [True, False], ids=["mixed", "student"])
@pytest.mark.parametrize("family", ["tiny_gpt2", "tiny_opt"])
def test_same_tokens_and_logprobs_as_the_dynamic_loop(family, mixed, finished, request, tiny_tokenizer):
    """The static path (eager, as on CPU) gives the dynamic loop's tokens, mask, lengths and stored log-probs for the
    same per-example generators: teacher-mixed (ref §1.3 step 1, alpha 0.2) or the student alone, with rows that
    finish at different steps. "mask" keeps every row in the batch; "bucket" moves the live rows into smaller
    batches, caches included."""
    other = "tiny_opt" if family == "tiny_gpt2" else "tiny_gpt2"
    model, eos = request.getfixturevalue(family), tiny_tokenizer.eos_token_id
    teacher = request.getfixturevalue(other) if mixed else None
    ids, mask = left_pad([tiny_tokenizer.encode(p) for p in PROMPTS], eos)
    settings = GenerationSettings(max_new_tokens=24)
    kw = dict(eos_token_id=eos, mix_model=teacher, mix_alpha=0.2, return_logprobs=True)
    hook = _eos_likely(model, eos, bonus=4.0)
    try:
        dynamic = sample(model, ids, mask, settings, generators=example_generators(5, range(6)), **kw)
        seen, counter = _batch_sizes(model)
        dec = StaticDecoder(model, settings, rows=6, prompt_length=ids.shape[1], finished=finished, **kw)
        static = dec.decode(ids, mask, example_generators(5, range(6)))
        counter.remove()
    finally:
        hook.remove()
    _assert_same(dynamic, static)
    lengths = dynamic.lengths.tolist()
    assert len(set(lengths)) > 2 and min(lengths) < 24, lengths  # rows really finished, at different steps
    assert seen[0] == 6  # the prefill
    assert set(seen) == {6} if finished == "mask" else min(seen) < 6, seen
    # the prefill, then one step (draw + forward) per token up to the step that drew the last row's EOS; the last
    # token of max_new_tokens needs no forward
    assert len(seen) == min(1 + max(lengths), 24), (seen, lengths)


def test_batch_composition_does_not_change_an_examples_tokens(tiny_gpt2, tiny_opt, tiny_tokenizer):
    """An example decodes to the same tokens and log-probs alone, in another batch, in a decoder with more rows and
    prompt columns than it uses, and after the decoder has decoded other batches (no state carried over)."""
    eos = tiny_tokenizer.eos_token_id
    seqs = [tiny_tokenizer.encode(p) for p in PROMPTS]
    settings = GenerationSettings(max_new_tokens=16, temperature=0.8, top_k=40, top_p=0.95)
    kw = dict(eos_token_id=eos, mix_model=tiny_opt, mix_alpha=0.2, return_logprobs=True)
    hook = _eos_likely(tiny_gpt2, eos, bonus=2.0)
    try:
        full = StaticDecoder(tiny_gpt2, settings, rows=6, prompt_length=40, **kw)
        everything = full.decode(*left_pad(seqs, eos), example_generators(9, range(6)))
        first_three = full.decode(*left_pad(seqs[:3], eos), example_generators(9, range(3)))
        last_three = full.decode(*left_pad(seqs[3:], eos), example_generators(9, range(3, 6)))
        one = StaticDecoder(tiny_gpt2, settings, rows=1, prompt_length=max(map(len, seqs)), **kw)
        alone = [
            one.decode(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long), example_generators(9, [i]))
            for i, s in enumerate(seqs)
        ]
        dynamic = sample(tiny_gpt2, *left_pad(seqs, eos), settings, generators=example_generators(9, range(6)), **kw)
    finally:
        hook.remove()
    _assert_same(dynamic, everything)
    _assert_same(dynamic, first_three, rows=[0, 1, 2])
    _assert_same(dynamic, last_three, rows=[3, 4, 5])
    for i, out in enumerate(alone):
        _assert_same(dynamic, out, rows=[i])
    lengths = dynamic.lengths.tolist()
    assert len(set(lengths)) > 2 and min(lengths) < 16, lengths  # decodes alone stop early


def test_sample_and_sample_prompts_select_the_static_path(tiny_gpt2, tiny_opt, tiny_tokenizer, monkeypatch):
    """`sample(cache="static")` and `sample_prompts(cache="static")` (one decoder of batch_size rows for every batch,
    the last one smaller) give the dynamic loop's outputs (the default on a CPU); greedy decoding too."""
    eos, seqs = tiny_tokenizer.eos_token_id, [tiny_tokenizer.encode(p) for p in PROMPTS]
    ids, mask = left_pad(seqs, eos)
    kw = dict(eos_token_id=eos, mix_model=tiny_opt, mix_alpha=0.2, return_logprobs=True)
    for settings in (GenerationSettings(max_new_tokens=8), GenerationSettings(max_new_tokens=8, do_sample=False)):
        for compact in (True, False):
            runs = [
                sample(
                    tiny_gpt2,
                    ids,
                    mask,
                    settings,
                    generators=example_generators(3, range(6)),
                    compact=compact,
                    cache=cache,
                    **kw,
                )
                for cache in ("dynamic", "static")
            ]
            _assert_same(*runs)
    settings = GenerationSettings(max_new_tokens=8)
    pk = dict(
        seed=10,
        eos_token_id=eos,
        max_prompt_length=32,
        batch_size=4,
        device="cpu",
        mix_model=tiny_opt,
        mix_alpha=0.2,
        return_logprobs=True,
    )
    example_ids = [7, 3, 40, 2, 11, 5]
    dynamic = list(sample_prompts(tiny_gpt2, seqs, example_ids, settings, **pk))
    built = []

    class Counted(StaticDecoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(sampling, "StaticDecoder", Counted)
    static = list(sample_prompts(tiny_gpt2, seqs, example_ids, settings, cache="static", **pk))
    assert [(d.rows, d.prompt_length) for d in built] == [(4, 32)]  # one decoder served both batches
    list(sample_prompts(tiny_gpt2, seqs[:3], example_ids[:3], settings, cache="static", **pk))
    assert built[-1].rows == 3  # never more rows than prompts
    assert [b[0] for b in static] == [b[0] for b in dynamic] == [[7, 3, 40, 2], [11, 5]]
    for (_, d_ids, d_mask, d_out), (_, s_ids, s_mask, s_out) in zip(dynamic, static, strict=True):
        assert torch.equal(d_ids, s_ids) and torch.equal(d_mask, s_mask) and s_ids.shape[1] == 32
        _assert_same(d_out, s_out)


def test_global_rng_draws_match(tiny_gpt2, tiny_tokenizer):
    """Without generators both paths take one [B, T] draw from the global RNG, so the same seed gives the same
    tokens."""
    eos = tiny_tokenizer.eos_token_id
    ids, mask = left_pad([tiny_tokenizer.encode(p) for p in PROMPTS[:3]], eos)
    settings = GenerationSettings(max_new_tokens=6)
    outs = []
    for cache in ("dynamic", "static"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(4)
            outs.append(sample(tiny_gpt2, ids, mask, settings, eos_token_id=eos, cache=cache))
    _assert_same(*outs)


def test_decode_cache_picks_static_on_cuda_only(tiny_gpt2, tiny_opt):
    """None: static on a CUDA device unless a model is a ZeRO-3 shard (DeepSpeed marks its parameters with
    ds_numel), dynamic elsewhere; an explicit choice is kept."""
    assert decode_cache(None, "cpu", (tiny_gpt2, tiny_opt)) == "dynamic"
    assert decode_cache(None, torch.device("cuda", 0), (tiny_gpt2, None)) == "static"
    assert decode_cache("static", "cpu", (tiny_gpt2,)) == "static"
    assert decode_cache("dynamic", "cuda", (tiny_gpt2,)) == "dynamic"
    next(tiny_opt.parameters()).ds_numel = 7
    assert decode_cache(None, "cuda", (tiny_gpt2, tiny_opt)) == "dynamic"
    with pytest.raises(ValueError, match="cache='x'"):
        decode_cache("x", "cpu", (tiny_gpt2,))


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_repeated_ngram_mask_is_hf_no_repeat_ngram(n):
    """The device-side ban equals Hugging Face's NoRepeatNGramLogitsProcessor on the first `length` tokens, at every
    length (shorter than n included), whatever the buffer holds beyond them."""
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    V, g = 3, torch.Generator().manual_seed(n)
    seq = torch.randint(0, V, (6, 40), generator=g)  # 3 tokens: n-grams repeat often
    proc = NoRepeatNGramLogitsProcessor(n)
    banned_somewhere = False
    for length in range(0, 41):
        got = repeated_ngram_mask(seq, torch.tensor([length]), n, V)
        want = proc(seq[:, :length], torch.zeros(6, V)) == float("-inf")
        assert torch.equal(got, want), length
        banned_somewhere |= bool(want.any())
    assert banned_somewhere


@pytest.mark.parametrize("finished", ["mask", "bucket"])
@pytest.mark.parametrize("do_sample", [True, False], ids=["sampled", "greedy"])
def test_ngram_ban_same_tokens_as_the_dynamic_loop(finished, do_sample, tiny_gpt2, tiny_opt, tiny_tokenizer):
    """Test-time sampling's n-gram ban (ref §5.1, here 2-grams so that the tiny models hit it) on the static path:
    the dynamic loop's tokens and log-probs, teacher-mixed, and the ban really changes the tokens."""
    eos = tiny_tokenizer.eos_token_id
    ids, mask = left_pad([tiny_tokenizer.encode(p) for p in PROMPTS], eos)
    banned = GenerationSettings(max_new_tokens=24, no_repeat_ngram_size=2, temperature=0.5, do_sample=do_sample)
    kw = dict(eos_token_id=eos, mix_model=tiny_opt, mix_alpha=0.2, return_logprobs=True)
    free = GenerationSettings(max_new_tokens=24, temperature=0.5, do_sample=do_sample)
    hook = _eos_likely(tiny_gpt2, eos, bonus=1.5) if do_sample else None  # greedy: EOS would win at once
    try:
        dynamic = sample(tiny_gpt2, ids, mask, banned, generators=example_generators(2, range(6)), **kw)
        dec = StaticDecoder(tiny_gpt2, banned, rows=6, prompt_length=ids.shape[1] + 3, finished=finished, **kw)
        static = dec.decode(ids, mask, example_generators(2, range(6)))
        unbanned = sample(tiny_gpt2, ids, mask, free, generators=example_generators(2, range(6)), **kw)
    finally:
        if hook is not None:
            hook.remove()
    _assert_same(dynamic, static)
    assert not torch.equal(unbanned.response_ids, dynamic.response_ids)
    if do_sample:  # rows finish at different steps: "bucket" moves the token buffer with the caches
        assert min(dynamic.lengths.tolist()) < 24


def test_refusals(tiny_gpt2, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    settings = GenerationSettings(max_new_tokens=4)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        StaticDecoder(tiny_gpt2, settings, rows=2, prompt_length=4, eos_token_id=eos, graphs=True)
    with pytest.raises(ValueError, match="finished="):
        StaticDecoder(tiny_gpt2, settings, rows=2, prompt_length=4, eos_token_id=eos, finished="compact")
    dec = StaticDecoder(tiny_gpt2, settings, rows=2, prompt_length=4, eos_token_id=eos, graphs=False)
    with pytest.raises(ValueError, match="exceed this decoder's 2 rows x 4 prompt columns"):
        dec.decode(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="generators for 2 rows"):
        dec.decode(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long), example_generators(0, [0]))
    with pytest.raises(ValueError, match="cache="):
        sample(tiny_gpt2, torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2), settings, eos_token_id=eos, cache="x")


# ops that make the host wait for a tensor's value: none may run inside a step that a CUDA graph records
HOST_READS = {
    "aten._local_scalar_dense",
    "aten.is_nonzero",
    "aten.nonzero",
    "aten.equal",
    "aten.masked_select",
    "aten._unique2",
    "aten.unique_consecutive",
    "aten.item",
}


@pytest.mark.parametrize("family", ["tiny_gpt2", "tiny_opt"])
def test_a_step_never_reads_a_tensor_on_the_host(family, request, tiny_tokenizer):
    """What a CUDA graph can record: every aten op the step dispatches (both forwards over the static caches, the
    mixture, the draw, the stored log-probs, processors and the n-gram ban included) runs without reading a value
    back, so the step has no data-dependent host control. Checked on CPU by recording the ops of every step of a
    decode."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    model = request.getfixturevalue(family)
    teacher = request.getfixturevalue("tiny_opt" if family == "tiny_gpt2" else "tiny_gpt2")
    eos = tiny_tokenizer.eos_token_id
    settings = GenerationSettings(max_new_tokens=6, temperature=0.7, top_k=20, top_p=0.9, no_repeat_ngram_size=3)
    dec = StaticDecoder(
        model,
        settings,
        rows=4,
        prompt_length=32,
        eos_token_id=eos,
        mix_model=teacher,
        mix_alpha=0.2,
        return_logprobs=True,
    )
    record, run_step = Record(), dec._run_step

    def recorded(n):
        with record:
            run_step(n)

    dec._run_step = recorded
    dec.decode(*left_pad([tiny_tokenizer.encode(p) for p in PROMPTS[:3]], eos), example_generators(0, range(3)))
    # the draw, the cache write, a layer, the n-gram ban
    assert {"aten.searchsorted", "aten.index_copy_", "aten.addmm", "aten.scatter_add_"} <= record.ops
    assert not record.ops & HOST_READS, record.ops & HOST_READS
