"""`perplexity_text`: the perplexity of decoded responses as the seed paper's authors computed it.

Their evaluation (GAEUNYIM/LMOps-TA-Distillation, `MiniLLM/minillm/perplexity_metric.py`, published-verification.md
§4) passes the decoded response strings to Hugging Face `evaluate`'s perplexity metric (`evaluate.load("perplexity")`,
`compute(predictions=..., model_id=...)`), which for each text:

1. tokenizes it with the scorer's tokenizer, `add_special_tokens=False`, no truncation;
2. prepends the scorer's BOS token (`add_start_token=True`, its default): no prompt, the text alone;
3. scores every token after BOS, exp(mean NLL) per text;
4. reports `mean_perplexity`, the mean of the per-text perplexities.

`perplexity_text` is that definition, computed here rather than through `evaluate` (whose metric script is fetched
from the hub at run time) and with an empty text skipped and counted (`evaluate` refuses the whole batch). The
scorer is loaded like `evaluate` loads it (`AutoModelForCausalLM.from_pretrained(model_id)`, float32). The authors'
`model_id='opt'` names a local directory that is not in their repository, so which scorer produced the paper's
numbers is unknown: at paper scale we use each family's smallest pretrained model (`scales.PAPER_TEXT_SCORER`) and
record it. `benchmark.evaluate.evaluate_model(..., text_scorer=ID)` computes it per seed (`seed 10` is what the
authors ran).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def text_nll(model, tokenizer, texts: list[str], *, batch_size: int = 16) -> list[tuple[float, int]]:
    """(summed NLL in nats, scored tokens) of each text under `model`: BOS + the text's tokens (no special tokens,
    no truncation), every token after BOS scored; (0.0, 0) for a text with no token. Right-padded batches: padding
    comes after every scored token, so it changes no score."""
    device = next(model.parameters()).device
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError(f"the scorer's tokenizer ({tokenizer.name_or_path}) has no BOS token to prepend")
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    out: list[tuple[float, int]] = [(0.0, 0)] * len(texts)
    todo = [i for i, x in enumerate(ids) if x]
    for start in range(0, len(todo), batch_size):
        rows = todo[start : start + batch_size]
        width = 1 + max(len(ids[i]) for i in rows)
        batch = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, i in enumerate(rows):
            batch[r, : 1 + len(ids[i])] = torch.tensor([bos, *ids[i]])
            mask[r, : 1 + len(ids[i])] = 1
        batch, mask = batch.to(device), mask.to(device)
        with torch.no_grad():
            logits = model(input_ids=batch, attention_mask=mask).logits.float()
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch[:, 1:], reduction="none") * mask[:, 1:]
        for r, i in enumerate(rows):
            out[i] = (float(nll[r].sum()), len(ids[i]))
    return out


def mean_perplexity(scored: list[tuple[float, int]]) -> float:
    """`evaluate`'s `mean_perplexity`: the mean over texts of exp(NLL / tokens), texts without a token left out
    (NaN when none has one)."""
    values = [torch.tensor(nll / n, dtype=torch.float64).exp().item() for nll, n in scored if n > 0]
    return sum(values) / len(values) if values else float("nan")


def load_scorer(model_id: str, device: torch.device):
    """The scorer and its own tokenizer, as `evaluate` loads them (float32, eval mode)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_id)
    model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32).to(device).eval()
    return model, tokenizer
