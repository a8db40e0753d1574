"""Test-time evaluation exactly as MiniLLM's `evaluate_main.py` does it (ref §5.1), plus three perplexities (ref §5.2).

    python -m benchmark evaluate runs/small/gpt2-120M-minillm --data data/prepared/gpt2 --scale small \\
        --scorer runs/small/gpt2-1.5B-sft --results runs/small --samples runs/small/gpt2-120M-samples.jsonl

prints one row per metric (mean, std over seeds, per-seed values) and appends the records to
`runs/small/results.jsonl` (schema: `benchmark.results`):

    metric                   mean     std  per seed
    rouge_l                 24.61    0.32  24.20 24.55 ...
    exact_match              0.00    0.00  ...
    perplexity_gold         ...

ROUGE-L protocol (ref §5.1, checklist §8): the test prompt is left-padded with EOS to 256 tokens (longer prompts keep
their first 256), up to 256 new tokens are sampled with temperature 1.0, top-k 0, top-p 1.0 and
`no_repeat_ngram_size=6` (the reference's eval default, easy to miss), eos = pad = EOS, explicit position ids. Seeds
10, 20, 30, 40, 50; per-seed scores, mean and std. Responses are decoded skipping special tokens, cut at the EOS text,
stripped, and scored with rouge-score `rougeL` F-measure (Porter stemmer), max over references, x 100.

Seeds and batches. The reference seeds the global torch RNG once per process (seed + rank) and draws every step with
`torch.multinomial` over the whole batch. So an example's sample depends on the seed, on the batch it lands in (its
neighbours consume draws from the same stream), on its position in the batch, and on how many steps earlier batches
ran. Changing `--eval-batch-size`, the number of GPUs or the test-set order changes every text. Here each example owns a
`torch.Generator` seeded from (seed, example index) (`benchmark.sampling.example_generators`) and draws by inverse CDF
on its own cumulative probabilities: an example's text depends only on the seed, its index and the model. Results do
not depend on the batch size (tested: batch 1 == batch 4). They are not the reference's exact draws (no
implementation can replay those without its batch layout); they are draws from the same distribution.

Perplexity, three definitions, all recorded:

- `perplexity_gold` = exp(mean over examples of the per-example mean NLL of the gold response given the prompt), final
  EOS not scored. This is MiniLLM's logged `lm_loss` exponentiated (ref §5.2 item 1).
- `perplexity_gold_token` = exp(sum NLL / sum tokens) over the same tokens: the token-weighted variant, so labelled.
- `perplexity_samples` = mean over examples of exp(mean NLL) of the model's OWN sampled responses (their EOS
  excluded), scored by a fixed scorer model (the family's SFT teacher) conditioned on the prompt; one value per seed.

The notebooks compare `perplexity_samples` against the paper's Tables 3-4. The authors' repository added a script
that scores *generated* responses with an external model (published-verification.md §4.2, "Quantity B"), and the
paper's teacher having a higher perplexity than its students is what that quantity gives (mode-seeking reverse-KL
students write blander, more predictable text), never what gold-response perplexity gives (a teacher fits the gold
responses better than its students). The gold definitions are reported beside it. Deviation from the authors'
script, on purpose: the scorer is named and fixed, sees the prompt, and scores the token ids (no re-tokenization, no
BOS); every seed is scored, not seed 10 only.

Per-example samples (lm-evaluation-harness's `--log_samples`): with `samples_path`, `evaluate_model` also writes one
JSON line per (seed, example) holding the text and every per-example quantity the records are built from, so each
recorded value can be recomputed from them (tested): per seed, rouge_l and exact_match are the means of the examples'
values, perplexity_samples the mean of exp(sample_nll / sample_tokens) over the examples with sample_tokens > 0;
perplexity_gold = exp(mean of gold_nll / gold_tokens over the examples with gold_tokens > 0) and
perplexity_gold_token = exp(sum gold_nll / sum gold_tokens) (the gold fields repeat at every seed). The chain
runner writes them to each evaluate stage's `samples.jsonl`; `benchmark.results.read_samples` reads them back.

During training (`benchmark.sft`, `benchmark.minillm`): `validate` is the reference's training-time validation
(sampled ROUGE-L of one seed, no n-gram ban) with the per-response reverse KL to the teacher; a hop measures its
student's reverse KL before and after two ways, `heldout_reverse_kl` (teacher-forced on the gold responses) and
`sequence_reverse_kl` (MiniLLM's objective on the student's own samples).
"""

from __future__ import annotations

import math
import string
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark import BenchmarkError, losses, text_perplexity
from benchmark.config import EvalConfig
from benchmark.engine import Dist, model_path_problem
from benchmark.sampling import forward_logits, left_pad, response_logits, response_width, sample_prompts

__all__ = [
    "EvaluationError",
    "evaluate_model",
    "exact_match",
    "format_table",
    "generate_responses",
    "heldout_reverse_kl",
    "perplexity_gold",
    "perplexity_gold_token",
    "perplexity_samples",
    "postprocess",
    "rouge_l",
    "sequence_reverse_kl",
    "validate",
]


class EvaluationError(BenchmarkError, ValueError):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    # ref §5.1 `rouge_metric.py`: rougeL (whole-text LCS), not rougeLsum; default tokenizer + Porter stemmer.
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _check_pairs(predictions, references) -> None:
    if len(predictions) == 0:
        raise EvaluationError("no predictions to score: the test set is empty")
    if len(predictions) != len(references):
        # The reference truncates both lists to the shorter one without a word (ref §5.1); a silent truncation would
        # score the wrong examples against each other, so we refuse.
        raise EvaluationError(f"{len(predictions)} predictions for {len(references)} references; counts must match")


def _as_list(ref) -> list[str]:
    return [ref] if isinstance(ref, str) else list(ref)


def _rouge_l_each(predictions: list[str], references: list[str] | list[list[str]]) -> list[float]:
    """Each example's rougeL F-measure x 100, max over its references; 0 for an empty prediction."""
    _check_pairs(predictions, references)
    scorer = _rouge_scorer()
    out = []
    for pred, ref in zip(predictions, references):
        if not pred.strip():
            out.append(0.0)  # ref §5.1: an empty prediction scores 0
            continue
        out.append(100.0 * max(scorer.score(target=r, prediction=pred)["rougeL"].fmeasure for r in _as_list(ref)))
    return out


def _mean(values: list[float]) -> float:
    """The corpus score from the per-example scores (what a record holds and what `samples.jsonl` averages to)."""
    return sum(values) / len(values)


def rouge_l(predictions: list[str], references: list[str] | list[list[str]]) -> float:
    """Corpus ROUGE-L x 100: mean over examples of the rougeL F-measure x 100, max over an example's references.

    `rouge_l(["the cats are running"], ["the cat runs"])` -> 85.71 (stemming: cats -> cat, running/runs -> run).
    An empty prediction (or one without [a-z0-9]) scores 0, as in rouge-score. Not rounded (the reference rounds the
    corpus score to 4 decimals).
    """
    return _mean(_rouge_l_each(predictions, references))


def _normalize_answer(s: str) -> str:
    """SQuAD normalisation as in the reference: lowercase, drop punctuation, collapse whitespace (articles kept)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    return " ".join(s.split())


def _exact_match_each(predictions: list[str], references: list[str] | list[list[str]]) -> list[float]:
    """100.0 for each prediction equal to one of its references after `_normalize_answer`, else 0.0."""
    _check_pairs(predictions, references)
    return [
        100.0 if any(_normalize_answer(p) == _normalize_answer(r) for r in _as_list(ref)) else 0.0
        for p, ref in zip(predictions, references)
    ]


def exact_match(predictions: list[str], references: list[str] | list[list[str]]) -> float:
    """Percentage of predictions equal to one of their references after `_normalize_answer` (ref §5.1)."""
    return _mean(_exact_match_each(predictions, references))


def postprocess(text: str, eos_text: str | None) -> str:
    """ref §5.1 lines 143-168: (text decoded with skip_special_tokens) cut at the EOS text if still present, strip."""
    if eos_text and eos_text in text:
        text = text[: text.index(eos_text)]
    return text.strip()


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield list(range(start, min(n, start + size)))


def _sample_ids(
    model, examples: Sequence, cfg: EvalConfig, seed: int, *, eos_token_id: int, progress: bool = True
) -> list[list[int]]:
    """Every example's sampled response ids, cut before the first EOS.

    ref §5.1: prompts left-padded with EOS to max_prompt_length (256); longer ones keep their first tokens. The
    columns that are padding in every row are dropped (`sample_prompts`): the logits do not depend on the amount of
    padding (explicit position ids), and neither does the n-gram ban, which sees the padded prompt as HF generate
    does: a banned n-gram would have to consist of generated tokens and pads, and a row stops at its first EOS."""
    from tqdm.auto import tqdm

    if len(examples) == 0:
        raise EvaluationError("the test set is empty: nothing to generate")
    batches = sample_prompts(
        model,
        [ex.prompt_ids for ex in examples],
        range(len(examples)),
        cfg.generation,
        seed=seed,
        eos_token_id=eos_token_id,
        max_prompt_length=cfg.max_prompt_length,
        batch_size=cfg.batch_size,
        device=_device_of(model),
    )
    out: list[list[int]] = []
    n_batches = -(-len(examples) // cfg.batch_size)
    for _, _, _, res in tqdm(
        batches, total=n_batches, desc=f"seed {seed}", unit="batch", leave=False, disable=not progress
    ):
        for row, n in zip(res.response_ids.tolist(), res.lengths.tolist()):
            out.append([t for t in row[:n] if t != eos_token_id])
    return out


def generate_responses(
    model, tokenizer, examples: Sequence, cfg: EvalConfig, seed: int, *, eos_token_id: int, progress: bool = True
) -> list[str]:
    """Sampled, post-processed responses for `examples` (objects with `.prompt_ids`), in order.

    `cfg.generation` reaches `sample` unchanged (test defaults: do_sample, temperature 1, top_k 0, top_p 1,
    no_repeat_ngram_size 6, 256 new tokens); example i draws from `example_generators(seed, [i])`.
    """
    ids = _sample_ids(model, examples, cfg, seed, eos_token_id=eos_token_id, progress=progress)
    return [postprocess(tokenizer.decode(r, skip_special_tokens=True), tokenizer.eos_token) for r in ids]


# ----------------------------------------------------------------------------------------------------------------
# Perplexity
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _response_nll(
    model,
    prompts: list[list[int]],
    responses: list[list[int]],
    *,
    eos_token_id: int,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "nll",
) -> list[tuple[float, int]]:
    """(sum NLL, scored tokens) of each response given its prompt, teacher-forced, natural log.

    Sequences prompt + response are left-padded batch-wise with explicit position ids, which equals an unpadded
    forward per example (tested). Response tokens equal to EOS stay in the context but are not scored (ref §5.2
    item 1: the reference masks every label equal to EOS/pad).
    """
    from tqdm.auto import tqdm

    device = _device_of(model)
    out: list[tuple[float, int]] = []
    for idx in tqdm(
        list(_batches(len(prompts), batch_size)), desc=desc, unit="batch", leave=False, disable=not progress
    ):
        seqs = [list(prompts[i]) + list(responses[i]) for i in idx]
        ids, mask = left_pad(seqs, eos_token_id)
        ids, mask = ids.to(device), mask.to(device)
        logp = F.log_softmax(forward_logits(model, ids, mask).float(), dim=-1)
        nll = -logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)  # nll[:, j] scores token j + 1
        L = ids.shape[1]
        for row, i in enumerate(idx):
            n = len(responses[i])
            if not prompts[i]:
                raise EvaluationError(f"example {i} has an empty prompt: its first response token has no context")
            if n == 0:
                out.append((0.0, 0))
                continue
            targets = ids[row, L - n :]
            scored = targets != eos_token_id
            out.append((float(nll[row, L - n - 1 :][scored].sum()), int(scored.sum())))
    return out


def _gold_pairs(
    examples: Sequence, eos_token_id: int, max_prompt_length: int, max_response_length: int
) -> tuple[list[list[int]], list[list[int]]]:
    prompts, responses = [], []
    for ex in examples:
        resp = list(ex.response_ids)
        if resp and resp[-1] == eos_token_id:
            resp = resp[:-1]  # ref §5.2 item 1: the final EOS is never scored (it is not even in output_ids)
        prompts.append(list(ex.prompt_ids)[:max_prompt_length])
        responses.append(resp[:max_response_length])  # the reference truncates encode(output) to 256 tokens
    return prompts, responses


def _gold_nll(model, examples, *, eos_token_id, max_prompt_length, max_response_length, batch_size, progress=False):
    if len(examples) == 0:
        raise EvaluationError("the test set is empty: no gold responses to score")
    prompts, responses = _gold_pairs(examples, eos_token_id, max_prompt_length, max_response_length)
    return _response_nll(
        model, prompts, responses, eos_token_id=eos_token_id, batch_size=batch_size, progress=progress, desc="gold nll"
    )


def _ppl_example_mean(pairs: list[tuple[float, int]]) -> float:
    """exp(mean over examples of the per-example mean NLL); examples without a scored token are skipped."""
    means = [s / n for s, n in pairs if n > 0]
    return math.exp(sum(means) / len(means)) if means else float("nan")


def _ppl_token(pairs: list[tuple[float, int]]) -> float:
    n = sum(n for _, n in pairs)
    return math.exp(sum(s for s, _ in pairs) / n) if n else float("nan")


def _ppl_mean_of_exp(pairs: list[tuple[float, int]]) -> float:
    vals = [math.exp(s / n) for s, n in pairs if n > 0]
    return sum(vals) / len(vals) if vals else float("nan")


def perplexity_gold(
    model,
    examples: Sequence,
    *,
    eos_token_id: int,
    max_prompt_length: int = 256,
    max_response_length: int = 256,
    batch_size: int = 8,
) -> float:
    """exp(mean over examples of the per-example mean NLL of the gold response, final EOS not scored): MiniLLM's
    `lm_loss` (ref §5.2 item 1). Examples need `.prompt_ids` and `.response_ids` (EOS appended)."""
    return _ppl_example_mean(
        _gold_nll(
            model,
            examples,
            eos_token_id=eos_token_id,
            max_prompt_length=max_prompt_length,
            max_response_length=max_response_length,
            batch_size=batch_size,
        )
    )


def perplexity_gold_token(
    model,
    examples: Sequence,
    *,
    eos_token_id: int,
    max_prompt_length: int = 256,
    max_response_length: int = 256,
    batch_size: int = 8,
) -> float:
    """Token-weighted gold perplexity exp(sum NLL / sum tokens) over the same tokens as `perplexity_gold`."""
    return _ppl_token(
        _gold_nll(
            model,
            examples,
            eos_token_id=eos_token_id,
            max_prompt_length=max_prompt_length,
            max_response_length=max_response_length,
            batch_size=batch_size,
        )
    )


def perplexity_samples(
    scorer,
    examples: Sequence,
    responses: list[list[int]],
    *,
    eos_token_id: int,
    max_prompt_length: int = 256,
    batch_size: int = 8,
) -> float:
    """Mean over examples of exp(mean NLL) of sampled `responses` (token ids, EOS excluded) under `scorer`, given
    each example's prompt. Empty responses have no token to score and are skipped (nan if all are empty)."""
    return _ppl_mean_of_exp(
        _sample_nll(
            scorer,
            examples,
            responses,
            eos_token_id=eos_token_id,
            max_prompt_length=max_prompt_length,
            batch_size=batch_size,
        )
    )


def _sample_nll(
    scorer,
    examples: Sequence,
    responses: list[list[int]],
    *,
    eos_token_id: int,
    max_prompt_length: int,
    batch_size: int,
) -> list[tuple[float, int]]:
    """(sum NLL, scored tokens) of each sampled response under `scorer` given its prompt: (0.0, 0) when empty."""
    if len(examples) != len(responses):
        raise EvaluationError(f"{len(responses)} responses for {len(examples)} examples")
    if len(examples) == 0:
        raise EvaluationError("the test set is empty: no samples to score")
    prompts = [list(ex.prompt_ids)[:max_prompt_length] for ex in examples]
    responses = [[t for t in r if t != eos_token_id] for r in responses]
    return _response_nll(scorer, prompts, responses, eos_token_id=eos_token_id, batch_size=batch_size)


# ----------------------------------------------------------------------------------------------------------------
# During training: validation and the reverse KL to the teacher
# ----------------------------------------------------------------------------------------------------------------


def _sequence_reverse_kls(student, teacher, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """Per response, the closed-form KL(q || p) summed over its masked positions: [batch] (losses upcasts the
    logits). The validation log, the held-out measure and the sequence-level measure all go through it."""
    width = response_width(response_mask)
    args = (prompt_ids, prompt_mask, response_ids[:, :width], response_mask[:, :width])
    return losses.sequence_reverse_kl(response_logits(student, *args), response_logits(teacher, *args), args[3])


@torch.no_grad()
def validate(
    model,
    teacher,
    examples,
    *,
    tokenizer,
    eos_token_id: int,
    max_prompt_length: int,
    settings,
    batch_size: int,
    seed: int,
    dist: Dist,
) -> dict:
    """Validation ROUGE-L of the student's samples (one seed, no n-gram blocking: the reference's training-time
    validation, ref §1.5 and LMOps #329) and, with a teacher, the student's sequence-level reverse KL: the exact
    per-position KL(q||p) summed over each sampled response, averaged over prompts. Examples are sharded over
    ranks and gathered."""
    was_training = model.training
    model.eval()
    idx = list(range(dist.rank, len(examples), dist.world_size))
    preds, kls = {}, {}
    batches = sample_prompts(
        model,
        [examples[i].prompt_ids for i in idx],
        idx,
        settings,
        seed=seed,
        eos_token_id=eos_token_id,
        max_prompt_length=max_prompt_length,
        batch_size=batch_size,
        device=dist.device,
    )
    for chunk, p_ids, p_mask, out in batches:
        texts = tokenizer.batch_decode(out.response_ids.cpu(), skip_special_tokens=True)
        for i, text in zip(chunk, texts):
            preds[i] = postprocess(text, tokenizer.eos_token)
        if teacher is not None:
            seq_kl = _sequence_reverse_kls(model, teacher, p_ids, p_mask, out.response_ids, out.response_mask)
            kls.update(zip(chunk, seq_kl.cpu().tolist()))
    gathered: list = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, (preds, kls))
    preds = {k: v for p, _ in gathered for k, v in p.items()}
    kls = {k: v for _, k_ in gathered for k, v in k_.items()}
    order = sorted(preds)
    result = {"val_rouge_l": rouge_l([preds[i] for i in order], [examples[i].output for i in order])}
    if kls:
        result["val_rev_kl"] = float(np.mean([kls[i] for i in order]))
    model.train(was_training)
    return result


@torch.no_grad()
def heldout_reverse_kl(student, teacher, examples, eos_token_id: int, max_prompt_length: int, batch: int) -> float:
    """Token mean of the closed-form KL(q || p) at every position of the held-out gold responses (EOS included):
    the reverse KL of the student to its teacher on fixed contexts. Deterministic and paired (every checkpoint is
    scored on the same contexts), so a hop's change is measurable where the sampled per-response estimate
    (`val_rev_kl`, one sampled response per prompt) has a standard error several times the change at small scale.
    Every rank computes the whole split, so a sharded ZeRO-3 teacher forwards in lockstep."""
    device = _device_of(student)
    total, count = 0.0, 0.0
    for start in range(0, len(examples), batch):
        chunk = examples[start : start + batch]
        p_ids, p_mask = left_pad([e.prompt_ids for e in chunk], eos_token_id, max_prompt_length)
        r_ids = torch.full((len(chunk), max(len(e.response_ids) for e in chunk)), eos_token_id, dtype=torch.long)
        r_mask = torch.zeros(r_ids.shape)
        for i, e in enumerate(chunk):  # right-padded, EOS inside the mask (ref §1.3 mask convention)
            r_ids[i, : len(e.response_ids)] = torch.tensor(e.response_ids)
            r_mask[i, : len(e.response_ids)] = 1.0
        r_mask = r_mask.to(device)
        kl = _sequence_reverse_kls(student, teacher, p_ids.to(device), p_mask.to(device), r_ids.to(device), r_mask)
        total, count = total + kl.sum().item(), count + r_mask.sum().item()
    return total / max(count, 1.0)


# The sampling seeds of a hop's sequence-level reverse KL before/after (two samples per held-out prompt).
SEQUENCE_KL_SEEDS = (10, 11)


@torch.no_grad()
def sequence_reverse_kl(
    student, teacher, examples, eos_token_id: int, max_prompt_length: int, generation, seeds, batch: int
) -> dict:
    """MiniLLM's objective itself: the sequence-level reverse KL KL(q || p) = E_x E_{y~q}[log q(y|x) - log p(y|x)]
    (MiniLLM paper Eq. 1, ref §1.2), estimated on every held-out prompt with one student sample per seed and the
    Rao-Blackwellised per-response value sum_t KL(q(.|y_<t, x) || p(.|y_<t, x)) (exact over the vocabulary at each
    sampled context; same expectation as the sampled log-ratio, far lower variance). Samples come from the student
    alone with the run's generation settings and per-example generators, so the value does not depend on batching.
    Returns per-response and per-token means, the mean response length (EOS included) and the per-seed values."""
    per_seed, total, tokens, responses = [], 0.0, 0.0, 0
    for seed in seeds:
        seed_total = 0.0
        batches = sample_prompts(
            student,
            [e.prompt_ids for e in examples],
            range(len(examples)),
            generation,
            seed=seed,
            eos_token_id=eos_token_id,
            max_prompt_length=max_prompt_length,
            batch_size=batch,
            device=_device_of(student),
        )
        for _, p_ids, p_mask, out in batches:
            kl = _sequence_reverse_kls(student, teacher, p_ids, p_mask, out.response_ids, out.response_mask)
            seed_total, tokens = seed_total + kl.sum().item(), tokens + out.response_mask.sum().item()
        per_seed.append(seed_total / len(examples))
        total, responses = total + seed_total, responses + len(examples)
    return {
        "per_response": total / responses,
        "per_token": total / max(tokens, 1.0),
        "mean_length": tokens / responses,
        "per_seed": per_seed,
    }


# ----------------------------------------------------------------------------------------------------------------
# One model, every metric
# ----------------------------------------------------------------------------------------------------------------


_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _load_model(path_or_id, cfg: EvalConfig, device: torch.device):
    from transformers import AutoModelForCausalLM

    problem = model_path_problem(path_or_id)
    if problem:
        raise EvaluationError(f"cannot load model: {problem}")
    # ref §5.1: the reference evaluates in fp16; on a CPU we stay in float32.
    dtype = _TORCH_DTYPES[cfg.precision] if device.type == "cuda" else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(str(Path(str(path_or_id)).expanduser()), dtype=dtype)
    except OSError as exc:  # a hub id that is unknown, private, or not cached offline
        raise EvaluationError(
            f"cannot load model {str(path_or_id)!r} ({exc}); give a model directory or a hub id (with network "
            "access, or cached when HF_HUB_OFFLINE=1)"
        ) from None
    return model.to(device).eval()


def check_model_fits(model, name: str, data, cfg: EvalConfig, *, scorer: bool = False) -> None:
    """Clear errors before any generation, as `train` checks a hop's models: the model must be of the data's family
    (GPT-2 and OPT token ids differ), hold every token id of its tokenizer, and have positions for the longest
    sequence evaluation makes (max_prompt_length + max_new_tokens)."""
    where = getattr(data, "path", "the data")
    family = model.config.model_type
    if family != data.family:
        fix = (
            f"score with a {data.family} model (the family's SFT teacher)"
            if scorer
            else f"evaluate it on data prepared with --family {family}"
        )
        raise EvaluationError(
            f"{name} is of family {family} but {where} was prepared for {data.family} (their token ids differ): {fix}"
        )
    vocab, n_tokens = model.get_input_embeddings().num_embeddings, len(data.tokenizer)
    if vocab < n_tokens:
        raise EvaluationError(
            f"{name} has a vocabulary of {vocab} tokens but the tokenizer of {where} has {n_tokens}: the data was "
            "prepared with another tokenizer than the model was trained on; prepare it with the model's tokenizer"
        )
    positions = getattr(model.config, "max_position_embeddings", None)
    need = cfg.max_prompt_length + cfg.generation.max_new_tokens
    if positions is not None and positions < need:
        raise EvaluationError(
            f"{name} has {positions} positions but evaluation needs {need} (max_prompt_length "
            f"{cfg.max_prompt_length} + max_new_tokens {cfg.generation.max_new_tokens}): use the lengths of the "
            "model's scale (--scale) or a model built for longer sequences"
        )


def _load_data(data):
    if isinstance(data, (str, Path)):
        from benchmark.data import load_prepared

        return load_prepared(data)
    return data


def evaluate_model(
    model_path_or_id,
    data,
    cfg: EvalConfig,
    *,
    scorer=None,
    text_scorer: str | None = None,
    entry: str | None = None,
    scale: str | None = None,
    stage: str | None = None,
    results_path=None,
    samples_path=None,
    device=None,
    progress: bool = True,
) -> list[dict]:
    """Evaluate one model on `data`'s test split: ROUGE-L and exact match per seed, the two gold perplexities, and
    (with a `scorer`: path, hub id or loaded model) `perplexity_samples` per seed, and (with a `text_scorer`: path
    or hub id) `perplexity_text` per seed (`benchmark.text_perplexity`). Returns the result records
    (`benchmark.results` schema) and appends them to `results_path` (a file or a run directory) if given.

    `data`: a PreparedData (`benchmark.data.load_prepared`) or a directory to load one from; it provides
    `.split("test")`, `.tokenizer`, `.eos_token_id`.

    `samples_path`: a JSONL file to (over)write with one line per (seed, example), seeds in order, examples in
    test-split order, fields `benchmark.results.SAMPLE_FIELDS`:
    entry, stage (as given), seed, example (the index in the test split), prompt (text), prediction (the
    post-processed sampled response), reference (the gold output), rouge_l and exact_match (that example's score
    x 100), sample_nll and sample_tokens (summed NLL in nats and scored tokens of the sampled response under the
    scorer; 0.0 and 0 for an empty response; null without a scorer), gold_nll and gold_tokens (the same for the gold
    response under the evaluated model, seed-independent; 0.0 and 0 for an empty gold response), text_nll and
    text_tokens (the decoded prediction under the text scorer, `text_perplexity.text_nll`; null without). The module
    docstring says how each record is recomputed from them.
    """
    from tqdm.auto import tqdm

    from benchmark import results

    t0 = time.time()
    data = _load_data(data)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    examples = list(data.split("test"))
    if cfg.num_examples is not None:
        examples = examples[: cfg.num_examples]
    if not examples:
        raise EvaluationError("the test split is empty: nothing to evaluate")
    tokenizer, eos = data.tokenizer, data.eos_token_id
    model = _load_model(model_path_or_id, cfg, device)
    check_model_fits(model, f"model {model_path_or_id}", data, cfg)
    scorer_model, scorer_id = None, None
    if scorer is not None:
        if isinstance(scorer, torch.nn.Module):
            scorer_model, scorer_id = (
                scorer,
                {"path": getattr(scorer, "name_or_path", None), "hub_id": None, "sha256": None},
            )
        else:
            scorer_model, scorer_id = _load_model(scorer, cfg, device), results.model_identity(scorer)
        scorer_name = f"scorer {scorer_id['path'] or scorer_id['hub_id'] or ''}".strip()
        check_model_fits(scorer_model, scorer_name, data, cfg, scorer=True)
    references = [ex.output for ex in examples]
    if text_scorer is not None:
        text_model, text_tokenizer = text_perplexity.load_scorer(text_scorer, device)

    per_seed: dict[str, list[float]] = {
        m: [] for m in ("rouge_l", "exact_match", "perplexity_samples", "perplexity_text")
    }
    samples: list[dict] = []  # one per (seed, example); the gold fields are added once they are known
    for seed in tqdm(cfg.seeds, desc="seeds", unit="seed", disable=not progress):
        ids = _sample_ids(model, examples, cfg, seed, eos_token_id=eos, progress=progress)
        texts = [postprocess(tokenizer.decode(r, skip_special_tokens=True), tokenizer.eos_token) for r in ids]
        rouge_each, em_each = _rouge_l_each(texts, references), _exact_match_each(texts, references)
        per_seed["rouge_l"].append(_mean(rouge_each))
        per_seed["exact_match"].append(_mean(em_each))
        scored: list[tuple[float | None, int | None]] = [(None, None)] * len(examples)
        if scorer_model is not None:
            scored = _sample_nll(
                scorer_model,
                examples,
                ids,
                eos_token_id=eos,
                max_prompt_length=cfg.max_prompt_length,
                batch_size=cfg.batch_size,
            )
            per_seed["perplexity_samples"].append(_ppl_mean_of_exp(scored))
        text_scored: list[tuple[float | None, int | None]] = [(None, None)] * len(examples)
        if text_scorer is not None:
            text_scored = text_perplexity.text_nll(text_model, text_tokenizer, texts, batch_size=cfg.batch_size)
            per_seed["perplexity_text"].append(text_perplexity.mean_perplexity(text_scored))
        for i, ex in enumerate(examples):
            samples.append(
                {
                    "entry": entry,
                    "stage": stage,
                    "seed": int(seed),
                    "example": i,
                    "prompt": ex.prompt,
                    "prediction": texts[i],
                    "reference": ex.output,
                    "rouge_l": rouge_each[i],
                    "exact_match": em_each[i],
                    "sample_nll": scored[i][0],
                    "sample_tokens": scored[i][1],
                    "text_nll": text_scored[i][0],
                    "text_tokens": text_scored[i][1],
                }
            )

    gold = _gold_nll(
        model,
        examples,
        eos_token_id=eos,
        max_prompt_length=cfg.max_prompt_length,
        max_response_length=cfg.generation.max_new_tokens,
        batch_size=cfg.batch_size,
        progress=progress,
    )
    wall = time.time() - t0
    common = dict(
        entry=entry,
        scale=scale,
        stage=stage,
        model=results.model_identity(model_path_or_id),
        n_examples=len(examples),
        settings=cfg,
        wall_time_s=wall,
    )
    records = [
        results.make_record(metric="rouge_l", values=per_seed["rouge_l"], seeds=list(cfg.seeds), **common),
        results.make_record(metric="exact_match", values=per_seed["exact_match"], seeds=list(cfg.seeds), **common),
        results.make_record(metric="perplexity_gold", values=[_ppl_example_mean(gold)], seeds=None, **common),
        results.make_record(metric="perplexity_gold_token", values=[_ppl_token(gold)], seeds=None, **common),
    ]
    scorers = {"perplexity_samples": scorer_id} if scorer_model is not None else {}
    if text_scorer is not None:
        scorers["perplexity_text"] = results.model_identity(text_scorer)
    for metric, who in scorers.items():  # the per-seed perplexities under a scorer, which each record names
        records.append(
            results.make_record(metric=metric, values=per_seed[metric], seeds=list(cfg.seeds), scorer=who, **common)
        )
    if results_path is not None:
        results.append(results_path, records)
    if samples_path is not None:
        for row in samples:
            row["gold_nll"], row["gold_tokens"] = gold[row["example"]]
        results.write_samples(samples_path, samples)
    return records


def format_table(records: list[dict]) -> str:
    """The records of one evaluation as a text table: metric, mean, std and the per-seed values."""
    lines = [f"{'metric':<24}{'mean':>10}{'std':>9}  per seed"]
    for r in records:
        per = " ".join(f"{v:.2f}" for v in r["values"])
        lines.append(f"{r['metric']:<24}{r['mean']:>10.2f}{r['std']:>9.2f}  {per}")
    return "\n".join(lines)
