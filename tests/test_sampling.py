"""benchmark.sampling: the one decode loop (ref §1.3 step 1) on tiny random models and fixed-logit stubs.

OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_sampling.py -q     # ~10 s on one core
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config

from benchmark.config import GenerationSettings
from benchmark.sampling import example_generators, forward_logits, labelled_logits, left_pad, position_ids, sample

PROMPTS = [
    "Below is an instruction.\n\n### Instruction:\nwhat is the cat?\n\n### Response:\n",
    "list a dog",
    "Explain knowledge distillation step by step to a small student model, with an answer.",
    "why",
]


def _prompt_ids(tok) -> list[list[int]]:
    return [tok.encode(p) for p in PROMPTS]


# ----------------------------------------------------------------------------------------------------------------
# Stub models: fixed logits, no network, vocabulary <= 16.
# ----------------------------------------------------------------------------------------------------------------


class Stub:
    """A causal-LM stand-in for `sample`: `fn(last_tokens [B], step)` -> logits [B, V]. `steps` counts forwards
    (the prompt forward is step 0), so use a fresh stub per `sample` call when `fn` depends on the step."""

    def __init__(self, vocab: int, fn):
        self.config = GPT2Config(vocab_size=vocab, n_layer=1, n_embd=8, n_head=1, bos_token_id=0, eos_token_id=0)
        self.fn, self.steps = fn, 0

    def __call__(self, input_ids, attention_mask, position_ids, cache, use_cache, logits_to_keep):
        assert use_cache and logits_to_keep == 1 and position_ids.shape == input_ids.shape
        logits = self.fn(input_ids[:, -1], self.steps).float()
        self.steps += 1
        return SimpleNamespace(logits=logits[:, None, :], cache=cache)


def _fixed(logits: torch.Tensor) -> Stub:
    return Stub(logits.numel(), lambda last, step: logits.expand(last.shape[0], -1))


# ----------------------------------------------------------------------------------------------------------------
# Padding and positions
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["tiny_gpt2", "tiny_opt"])
def test_labelled_logits_equal_the_full_forward_at_labelled_positions(family, request):
    """SFT's loss needs the logits where a label is (the response); computing the LM head only there gives the full
    forward's values and the same gradients (right padding and unlabelled prompts as in train._sft_batch)."""
    model = request.getfixturevalue(family)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, model.config.vocab_size, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = mask[2, 5:] = 0  # right padding
    labels = ids[:, 1:].clone()
    labels[:, :3] = -100  # prompt
    labels[mask[:, 1:] == 0] = -100
    labels[1, 5] = -100  # a hole (an ignored token) in between
    full = forward_logits(model, ids, mask)[:, :-1]
    kept = labelled_logits(model, ids, mask, labels)
    assert kept.shape == ((labels != -100).sum().item(), model.config.vocab_size)
    torch.testing.assert_close(kept, full[labels != -100], rtol=1e-5, atol=1e-5)
    loss_full = F.cross_entropy(full.transpose(1, 2), labels, ignore_index=-100)
    loss_kept = F.cross_entropy(kept, labels[labels != -100])
    grads = [torch.autograd.grad(loss, list(model.parameters())) for loss in (loss_full, loss_kept)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_left_pad_and_positions():
    ids, mask = left_pad([[5, 6, 7], [8], [1, 2, 3, 4, 9]], pad_id=0, length=4)
    assert ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8], [1, 2, 3, 4]]  # longer keeps its FIRST tokens
    assert mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]]
    assert position_ids(mask).tolist() == [[0, 0, 1, 2], [0, 0, 0, 0], [0, 1, 2, 3]]
    assert left_pad([[1, 2], [3]], pad_id=9)[0].tolist() == [[1, 2], [9, 3]]


@pytest.mark.parametrize("family", ["tiny_gpt2", "tiny_opt"])
def test_left_padded_logprobs_equal_unpadded(family, request, tiny_tokenizer):
    model = request.getfixturevalue(family)
    seqs = _prompt_ids(tiny_tokenizer)
    ids, mask = left_pad(seqs, tiny_tokenizer.eos_token_id, length=max(map(len, seqs)) + 3)
    batched = F.log_softmax(forward_logits(model, ids, mask), -1)
    for i, s in enumerate(seqs):
        alone = F.log_softmax(forward_logits(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)), -1)
        torch.testing.assert_close(batched[i, -len(s) :], alone[0], atol=1e-5, rtol=1e-5)
    last = forward_logits(model, ids, mask, logits_to_keep=1)
    torch.testing.assert_close(last[:, 0], forward_logits(model, ids, mask)[:, -1], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Stored log-probs, batching, seeds
# ----------------------------------------------------------------------------------------------------------------


def test_stored_logprobs_equal_full_forward(tiny_gpt2, tiny_opt, tiny_tokenizer):
    """Incremental decoding with two KV caches gives the log-probs of one full forward on the sampled sequence:
    student log_softmax(logits / T) (ref §1.3 step 3), teacher raw log_softmax (step 2), top-k not applied."""
    eos = tiny_tokenizer.eos_token_id
    ids, mask = left_pad(_prompt_ids(tiny_tokenizer), eos)
    settings = GenerationSettings(max_new_tokens=12, temperature=0.7, top_k=50)
    out = sample(
        tiny_gpt2,
        ids,
        mask,
        settings,
        eos_token_id=eos,
        generators=example_generators(3, range(4)),
        mix_model=tiny_opt,
        mix_alpha=0.2,
        return_logprobs=True,
    )
    full = torch.cat([ids, out.response_ids], 1)
    full_mask = torch.cat([mask, torch.ones_like(out.response_ids)], 1)
    P, T = ids.shape[1], settings.max_new_tokens
    tgt = out.response_ids[..., None]
    s = F.log_softmax(forward_logits(tiny_gpt2, full, full_mask)[:, P - 1 : P - 1 + T] / 0.7, -1).gather(-1, tgt)
    t = F.log_softmax(forward_logits(tiny_opt, full, full_mask)[:, P - 1 : P - 1 + T], -1).gather(-1, tgt)
    m = out.response_mask
    assert out.student_logprobs.dtype == torch.float32
    torch.testing.assert_close(out.student_logprobs, s[..., 0] * m, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.teacher_logprobs, t[..., 0] * m, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["tiny_gpt2", "tiny_opt"])
def test_batched_equals_unbatched(family, request, tiny_tokenizer):
    model, eos = request.getfixturevalue(family), tiny_tokenizer.eos_token_id
    seqs = _prompt_ids(tiny_tokenizer)
    settings = GenerationSettings(max_new_tokens=16, no_repeat_ngram_size=6)
    ids, mask = left_pad(seqs, eos)
    batch = sample(
        model, ids, mask, settings, eos_token_id=eos, generators=example_generators(10, range(4)), return_logprobs=True
    )
    for i, s in enumerate(seqs):  # unpadded, alone
        one = sample(
            model,
            torch.tensor([s]),
            torch.ones(1, len(s), dtype=torch.long),
            settings,
            eos_token_id=eos,
            generators=example_generators(10, [i]),
            return_logprobs=True,
        )
        assert one.response_ids[0].tolist() == batch.response_ids[i].tolist()
        torch.testing.assert_close(one.student_logprobs[0], batch.student_logprobs[i], atol=1e-5, rtol=1e-5)


def test_sample_prompts_batches_do_not_change_an_examples_tokens(tiny_gpt2, tiny_opt, tiny_tokenizer):
    """The one generation loop: prompts in batches, each left-padded to max_prompt_length (the yielded prompt
    tensors keep that width, as rollouts store them), example i drawn from the generator of (seed, example_ids[i]);
    batch size 1 and 3 give the same tokens and log-probs, equal to `sample` on each prompt alone."""
    from benchmark.sampling import sample_prompts

    eos, seqs = tiny_tokenizer.eos_token_id, _prompt_ids(tiny_tokenizer)
    ids = [7, 3, 40, 2]
    kw = dict(seed=10, eos_token_id=eos, max_prompt_length=32, device="cpu", mix_model=tiny_opt, mix_alpha=0.2,
              return_logprobs=True)  # fmt: skip
    settings = GenerationSettings(max_new_tokens=8)
    runs = {b: list(sample_prompts(tiny_gpt2, seqs, ids, settings, batch_size=b, **kw)) for b in (1, 3)}
    assert [len(r) for r in runs.values()] == [4, 2]
    assert [chunk for chunk, *_ in runs[3]] == [[7, 3, 40], [2]]
    for batches in runs.values():
        assert all(p_ids.shape[1] == 32 and p_mask.shape == p_ids.shape for _, p_ids, p_mask, _ in batches)
        tokens = torch.cat([out.response_ids for *_, out in batches])
        logprobs = torch.cat([out.student_logprobs for *_, out in batches])
        for i, s in enumerate(seqs):
            one = sample(tiny_gpt2, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long), settings,
                         eos_token_id=eos, generators=example_generators(10, [ids[i]]), mix_model=tiny_opt,
                         mix_alpha=0.2, return_logprobs=True)  # fmt: skip
            assert one.response_ids[0].tolist() == tokens[i].tolist(), i
            torch.testing.assert_close(one.student_logprobs[0], logprobs[i], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="example ids"):
        next(sample_prompts(tiny_gpt2, seqs, ids[:2], settings, batch_size=2, **kw))


def test_finished_rows_leave_the_batch(tiny_gpt2, tiny_opt, tiny_tokenizer):
    """Rows that stop early are dropped from the decoding batch, KV caches included; every row's tokens and both
    log-probs equal that row decoded alone (teacher-mixed, so the teacher's cache is compacted too)."""
    eos = tiny_tokenizer.eos_token_id

    def likelier_eos(module, args, kwargs, out):  # random tiny models rarely stop; make EOS common
        out.logits[..., eos] += 3.0
        return out

    rows_seen = []

    def count_rows(module, args, kwargs):
        rows_seen.append(kwargs["input_ids"].shape[0])

    hooks = [
        tiny_gpt2.register_forward_hook(likelier_eos, with_kwargs=True),
        tiny_gpt2.register_forward_pre_hook(count_rows, with_kwargs=True),
    ]
    seqs = _prompt_ids(tiny_tokenizer) * 2
    settings = GenerationSettings(max_new_tokens=24)
    kw = dict(settings=settings, eos_token_id=eos, mix_model=tiny_opt, mix_alpha=0.2, return_logprobs=True)
    try:
        batch = sample(tiny_gpt2, *left_pad(seqs, eos), generators=example_generators(5, range(8)), **kw)
        decoding_rows = list(rows_seen)
        rows_seen.clear()
        kept = sample(tiny_gpt2, *left_pad(seqs, eos), generators=example_generators(5, range(8)), compact=False, **kw)
        assert set(rows_seen) == {8} and kept.response_ids.tolist() == batch.response_ids.tolist()  # the "before"
        for i, s in enumerate(seqs):
            one = sample(
                tiny_gpt2, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long),
                generators=example_generators(5, [i]), **kw,
            )  # fmt: skip
            assert one.response_ids[0].tolist() == batch.response_ids[i].tolist(), i
            torch.testing.assert_close(one.student_logprobs[0], batch.student_logprobs[i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(one.teacher_logprobs[0], batch.teacher_logprobs[i], atol=1e-5, rtol=1e-5)
    finally:
        for h in hooks:
            h.remove()
    lengths = batch.lengths.tolist()
    assert len(set(lengths)) > 2 and max(lengths) > min(lengths), lengths  # rows really finished at different times
    assert decoding_rows[0] == 8 and min(decoding_rows) < 8, decoding_rows  # ... and left the decoding batch


def test_seeds(tiny_gpt2, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    ids, mask = left_pad(_prompt_ids(tiny_tokenizer), eos)
    settings = GenerationSettings(max_new_tokens=10)
    run = lambda seed: (
        sample(
            tiny_gpt2, ids, mask, settings, eos_token_id=eos, generators=example_generators(seed, range(4))
        ).response_ids
    )
    assert torch.equal(run(10), run(10))
    assert not torch.equal(run(10), run(20))
    # Streams differ per example id and per (seed, id) pair, not only per seed + id.
    a, b = example_generators(10, [1])[0], example_generators(11, [0])[0]
    assert torch.rand(4, generator=a).tolist() != torch.rand(4, generator=b).tolist()
    with pytest.raises(ValueError, match="generators"):
        sample(tiny_gpt2, ids, mask, settings, eos_token_id=eos, generators=example_generators(1, [0]))


def test_greedy_matches_argmax_of_full_forward(tiny_gpt2, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    ids, mask = left_pad(_prompt_ids(tiny_tokenizer), eos)
    out = sample(tiny_gpt2, ids, mask, GenerationSettings(max_new_tokens=8, do_sample=False), eos_token_id=eos)
    full = torch.cat([ids, out.response_ids], 1)
    logits = forward_logits(tiny_gpt2, full, torch.cat([mask, torch.ones_like(out.response_ids)], 1))
    P = ids.shape[1]
    expect = logits[:, P - 1 : P - 1 + 8].argmax(-1)
    assert torch.equal(out.response_ids * out.response_mask.long(), expect * out.response_mask.long())


# ----------------------------------------------------------------------------------------------------------------
# Teacher-mixed distribution (ref §1.3 step 1): probs = 0.8 q + 0.2 p
# ----------------------------------------------------------------------------------------------------------------

CHI2_CRIT_DF15_P001 = 37.697  # chi-square critical value, 15 degrees of freedom, p = 0.001


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_teacher_mixed_distribution():
    V, N = 16, 20000
    gen = torch.Generator().manual_seed(0)
    q_logits, p_logits = torch.randn(V, generator=gen), 2.0 * torch.randn(V, generator=gen)
    q, p = q_logits.softmax(-1), p_logits.softmax(-1)
    student, teacher = _fixed(q_logits), _fixed(p_logits)
    prompt = torch.zeros(N, 1, dtype=torch.long)
    out = sample(
        student,
        prompt,
        torch.ones_like(prompt),
        GenerationSettings(max_new_tokens=1),
        eos_token_id=V - 1,
        generators=example_generators(123, range(N)),
        mix_model=teacher,
        mix_alpha=0.2,
    )
    counts = torch.bincount(out.response_ids[:, 0], minlength=V).double()
    mixed = (0.8 * q + 0.2 * p).double()
    assert _chi2(counts, mixed) < CHI2_CRIT_DF15_P001
    assert _chi2(counts, q.double()) > CHI2_CRIT_DF15_P001  # the test can tell the mixture from pure q
    # alpha = 0: pure student, even with a teacher attached
    out0 = sample(
        student,
        prompt,
        torch.ones_like(prompt),
        GenerationSettings(max_new_tokens=1),
        eos_token_id=V - 1,
        generators=example_generators(123, range(N)),
        mix_model=teacher,
        mix_alpha=0.0,
    )
    assert _chi2(torch.bincount(out0.response_ids[:, 0], minlength=V).double(), q.double()) < CHI2_CRIT_DF15_P001


def test_zero_probability_tokens_never_drawn():
    logits = torch.full((16,), -float("inf"))
    logits[[3, 7]] = 0.0
    prompt = torch.zeros(4000, 1, dtype=torch.long)
    out = sample(
        _fixed(logits),
        prompt,
        torch.ones_like(prompt),
        GenerationSettings(max_new_tokens=1),
        eos_token_id=15,
        generators=example_generators(0, range(4000)),
    )
    assert set(out.response_ids[:, 0].tolist()) == {3, 7}


# ----------------------------------------------------------------------------------------------------------------
# Mask convention, early stop, n-gram ban
# ----------------------------------------------------------------------------------------------------------------

EOS_STUB = 0


def _scripted(next_token: dict[int, int], vocab: int = 16) -> Stub:
    """Emits next_token[last token] (EOS for any other token) with probability ~1: a row's script follows from its
    own tokens, so it survives `sample` dropping finished rows from the batch."""

    def fn(last, step):
        logits = torch.full((len(last), vocab), -30.0)
        for r, tok in enumerate(last.tolist()):
            logits[r, next_token.get(tok, EOS_STUB)] = 30.0
        return logits

    return Stub(vocab, fn)


def test_mask_convention_and_early_stop():
    # rows: 3 -> 5 6 EOS | 8 -> 7 EOS | 9 -> 1 2 4 10 EOS (the middle row finishes first and leaves the batch)
    stub = _scripted({3: 5, 5: 6, 8: 7, 9: 1, 1: 2, 2: 4, 4: 10})
    prompt = torch.tensor([[EOS_STUB, 3], [4, 8], [6, 9]])
    out = sample(
        stub,
        prompt,
        (prompt != EOS_STUB).long(),
        GenerationSettings(max_new_tokens=10),
        eos_token_id=EOS_STUB,
        generators=example_generators(0, range(3)),
        return_logprobs=True,
    )
    assert out.response_ids.shape == (3, 10)  # always max_new_tokens columns, even after the early stop
    assert out.response_ids.tolist() == [[5, 6, 0] + [0] * 7, [7, 0] + [0] * 8, [1, 2, 4, 10, 0] + [0] * 5]
    # ref §1.3 mask convention: the first EOS is inside, everything after it outside.
    assert out.response_mask.tolist() == [[1.0] * 3 + [0.0] * 7, [1.0] * 2 + [0.0] * 8, [1.0] * 5 + [0.0] * 5]
    assert out.response_mask.dtype == torch.float32 and out.lengths.tolist() == [3, 2, 5]
    assert (out.student_logprobs[out.response_mask == 0] == 0).all()
    assert (out.student_logprobs[out.response_mask == 1] > -1e-6).all()
    assert stub.steps == 5  # stopped once every row had finished


def _ngrams(seq: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


@pytest.mark.parametrize("do_sample", [True, False])
def test_no_repeat_ngram_ban_is_effective(do_sample):
    """A model rigged to loop 1 -> 2 -> 3 -> 1 never repeats a 6-gram of the full sequence (padded prompt included)
    with no_repeat_ngram_size=6 (ref §5.1), and does without it."""
    V = 16

    def loop(last, step):
        logits = torch.randn(last.shape[0], V, generator=torch.Generator().manual_seed(step))
        logits[torch.arange(last.shape[0]), last % 3 + 1] = 12.0
        return logits

    prompt = torch.tensor([[EOS_STUB, EOS_STUB, 1, 2, 3], [4, 1, 2, 3, 1]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    banned = GenerationSettings(max_new_tokens=40, no_repeat_ngram_size=6, do_sample=do_sample)
    out = sample(Stub(V, loop), prompt, mask, banned, eos_token_id=EOS_STUB, generators=example_generators(0, [0, 1]))
    for row in range(2):
        n = int(out.lengths[row])
        full = prompt[row].tolist() + out.response_ids[row, :n].tolist()
        grams = _ngrams(full, 6)
        assert len(grams) == len(set(grams)), full
    free = GenerationSettings(max_new_tokens=40, do_sample=do_sample)
    out = sample(Stub(V, loop), prompt, mask, free, eos_token_id=EOS_STUB, generators=example_generators(0, [0, 1]))
    grams = _ngrams(out.response_ids[0].tolist(), 6)
    assert len(grams) > len(set(grams))


# ----------------------------------------------------------------------------------------------------------------
# Pinned draws: the random streams are part of the results (MiniLLM rollouts, evaluation samples, prompt order and
# PPO shuffling), so a shifted seed, a changed seed hash or another token search must fail here. Literal values
# from torch's CPU generator (Mersenne Twister), identical on every machine.
# ----------------------------------------------------------------------------------------------------------------


def test_example_generators_first_draws_are_pinned():
    assert [g.initial_seed() for g in example_generators(10, [0, 1, 7])] == [
        4493576912233863394,
        4871320325604744622,
        7232157519183886829,
    ]
    draws = [torch.rand(3, generator=g, dtype=torch.float64).tolist() for g in example_generators(10, [0, 1])]
    assert draws == [
        [0.8929815969595505, 0.544933668233618, 0.16629010012228818],
        [0.39194207993996977, 0.6624871247759867, 0.7826491864214689],
    ]


def test_trainer_derived_generators_first_draws_are_pinned():
    """engine.seeded_generator: the prompt order (seed, epoch), the PPO shuffling (seed_ppo, phase, epoch), the SFT
    order."""
    from benchmark.engine import seeded_generator as _gen

    assert [_gen(10, 0).initial_seed(), _gen(42, 3, 1).initial_seed(), _gen(10, 1_000_000).initial_seed()] == [
        10000030,
        42000255000388,
        11000030,
    ]
    assert torch.rand(3, generator=_gen(42, 3, 1), dtype=torch.float64).tolist() == [
        0.6185544074172615,
        0.16987505203477304,
        0.707260711489729,
    ]
    assert torch.randperm(10, generator=_gen(10, 0)).tolist() == [8, 9, 4, 0, 2, 6, 1, 5, 7, 3]
    assert torch.randperm(10, generator=_gen(42, 0, 0)).tolist() == [6, 1, 9, 0, 3, 7, 5, 2, 4, 8]


def test_sampled_tokens_of_a_fixed_tiny_model_are_pinned():
    """`sample` on a 1-layer GPT-2 built from a config under torch.manual_seed(0), per-example generators (10, 0)
    and (10, 1): the tokens are pinned. Robust to float kernels: every draw is far (> 1e-4) from a boundary of the
    cumulative distribution it searches, checked against a full forward below."""
    from transformers import GPT2LMHeadModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cfg = GPT2Config(
            vocab_size=16, n_positions=32, n_layer=1, n_embd=16, n_head=2, bos_token_id=15, eos_token_id=15
        )
        model = GPT2LMHeadModel(cfg).eval()
    ids, mask = left_pad([[1, 2, 3], [4]], 15)
    gen = GenerationSettings(max_new_tokens=8)
    out = sample(model, ids, mask, gen, eos_token_id=15, generators=example_generators(10, [0, 1]))
    assert out.response_ids.tolist() == [[14, 8, 2, 12, 6, 13, 1, 6], [6, 10, 12, 0, 10, 4, 2, 7]]
    full = torch.cat([ids, out.response_ids], 1)
    with torch.no_grad():
        logits = forward_logits(model, full, torch.cat([mask, torch.ones_like(out.response_ids)], 1))
    cdf = logits[:, ids.shape[1] - 1 : -1].double().softmax(-1).cumsum(-1)
    u = torch.stack([torch.rand(8, generator=g, dtype=torch.float64) for g in example_generators(10, [0, 1])])
    assert (cdf - u[..., None]).abs().min() > 1e-4  # measured: 3e-3
