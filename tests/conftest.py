"""Shared fixtures: a locally trained GPT-2-style tokenizer and tiny random GPT-2 / OPT models on it.

    tiny_tokenizer_dir  session-scoped directory (save_pretrained) of a byte-level BPE trained on synthetic lines;
                        `<|endoftext|>` is bos = eos = pad, padding_side="left"
    tiny_tokenizer      that tokenizer loaded with AutoTokenizer (its `name_or_path` is the directory)
    tiny_gpt2           GPT2LMHeadModel, 2 layers, 32 dims, n_positions 512, random weights (seed 0), eval mode
    tiny_opt            OPTForCausalLM, same sizes (FFN 4 x 32, as every OPT), random weights (seed 1), eval mode

No network: everything is built from configs. Models are function-scoped (cheap) so a test may modify its copy.
"""

from __future__ import annotations

import os

import pytest
import torch

from benchmark.scales import ModelSpec, build_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EOS = "<|endoftext|>"
N_POSITIONS = 512  # covers the paper protocol: 256 prompt + 256 new tokens


def _synthetic_lines(n: int = 400) -> list[str]:
    """Dolly-like instruction text from a fixed word list (deterministic, no data files)."""
    import random

    rng = random.Random(0)
    words = (
        "the a an what why how is are write explain list give summarize describe running runs ran cat dog "
        "river bank model student teacher answer question data paper table number of to in on for with and "
        "below instruction response input small large language knowledge distillation step"
    ).split()
    lines = []
    for i in range(n):
        body = " ".join(rng.choice(words) for _ in range(rng.randint(4, 20)))
        lines.append(f"Below is an instruction.\n\n### Instruction:\n{body}?\n\n### Response:\n{body.title()} {i}.")
    return lines


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_synthetic_lines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, padding_side="left"
    )
    path = tmp_path_factory.mktemp("tiny_tokenizer")
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


# The fixtures' sizes, built by the one model builder (benchmark.scales) as the small/tiny scales' models are.
TINY_GPT2 = ModelSpec(arch="gpt2", size="test", n_layer=2, n_embd=32, n_head=2)
TINY_OPT = ModelSpec(arch="opt", size="test", n_layer=2, n_embd=32, n_head=2)


def tiny_model(spec: ModelSpec, tokenizer, seed: int):
    """`spec` on the tokenizer with N_POSITIONS positions, random weights (`seed`), eval mode; the global RNG is left
    as it was."""
    with torch.random.fork_rng(devices=[]):
        return build_model(spec, tokenizer, n_positions=N_POSITIONS, seed=seed).eval()


@pytest.fixture
def tiny_gpt2(tiny_tokenizer):
    return tiny_model(TINY_GPT2, tiny_tokenizer, seed=0)


@pytest.fixture
def tiny_opt(tiny_tokenizer):
    return tiny_model(TINY_OPT, tiny_tokenizer, seed=1)


def run_data_cli(argv: list[str]) -> int:
    """`python -m benchmark data ...` in this process: its exit status, errors printed as `error: ...`."""
    from benchmark.__main__ import main

    return main(argv)
