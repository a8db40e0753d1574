"""`perplexity_text` (benchmark/text_perplexity.py): Hugging Face evaluate's perplexity of decoded text, against a
naive one-text-at-a-time computation and the closed form of a uniform scorer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmark import text_perplexity

TEXTS = ["Paris is the capital.", "", "A longer answer with several more words in it, to pad the short ones.", "ok"]


def _naive(model, tokenizer, text: str) -> tuple[float, int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        return 0.0, 0
    full = torch.tensor([[tokenizer.bos_token_id, *ids]])
    with torch.no_grad():
        logits = model(input_ids=full).logits[0, :-1].double()
    return float(F.cross_entropy(logits, full[0, 1:], reduction="sum")), len(ids)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_text_nll_is_bos_plus_text_scored_one_text_at_a_time(tiny_gpt2, tiny_tokenizer, batch_size):
    got = text_perplexity.text_nll(tiny_gpt2, tiny_tokenizer, TEXTS, batch_size=batch_size)
    want = [_naive(tiny_gpt2, tiny_tokenizer, t) for t in TEXTS]
    assert [n for _, n in got] == [n for _, n in want] and got[1] == (0.0, 0)
    assert [v for v, _ in got] == pytest.approx([v for v, _ in want], rel=1e-5, abs=1e-6)
    per_text = [math.exp(v / n) for v, n in want if n]
    assert text_perplexity.mean_perplexity(got) == pytest.approx(sum(per_text) / len(per_text), rel=1e-5)


def test_a_uniform_scorer_has_the_vocabulary_size_as_perplexity(tiny_gpt2, tiny_tokenizer):
    with torch.no_grad():
        for p in tiny_gpt2.parameters():
            p.zero_()  # every logit 0: each token costs ln V
    scored = text_perplexity.text_nll(tiny_gpt2, tiny_tokenizer, TEXTS)
    assert text_perplexity.mean_perplexity(scored) == pytest.approx(tiny_gpt2.config.vocab_size, rel=1e-5)
    assert math.isnan(text_perplexity.mean_perplexity([(0.0, 0)]))
