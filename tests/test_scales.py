"""The scales (paper / small / tiny) and the one GPT-2 / OPT model builder.

Fast: the paper-size models are built on the meta device (shapes only, no memory).
"""

import pytest
import torch

from benchmark import registry, scales
from benchmark.registry import RegistryError

# Parameter counts of the hub models (tied embeddings counted once): openai-community/gpt2{,-medium,-large,-xl},
# facebook/opt-{1.3b,2.7b,6.7b,13b}.
REAL_PARAMETERS = {
    ("gpt2", "120M"): 124_439_808,
    ("gpt2", "340M"): 354_823_168,
    ("gpt2", "760M"): 774_030_080,
    ("gpt2", "1.5B"): 1_557_611_200,
    ("opt", "1.3B"): 1_315_758_080,
    ("opt", "2.7B"): 2_651_596_800,
    ("opt", "6.7B"): 6_658_473_984,
    ("opt", "13B"): 12_853_473_280,
}
# The hub tokenizers' vocabulary, special tokens and positions
HUB_VOCAB = {
    "gpt2": (50257, {"bos": 50256, "eos": 50256, "pad": 50256}, 1024),
    "opt": (50272, {"bos": 2, "eos": 2, "pad": 1}, 2048),
}
IDS = {"bos": 0, "eos": 0, "pad": 0}


def test_unknown_scale_suggests():
    with pytest.raises(RegistryError, match="did you mean 'small'"):
        scales.scale("smal")


def test_scales_map_every_size_with_size_ordered_models():
    for sc in scales.SCALES.values():
        for fam in registry.FAMILIES.values():
            specs = [sc.model(fam.name, s) for s in fam.sizes]
            assert [s.size for s in specs] == list(fam.sizes)
            if sc.name == "paper":
                assert all(s.from_hub for s in specs)
                assert specs[0].init == fam.teacher_sft and specs[0].minillm is None
                assert all(
                    s.init.startswith("MiniLLM/init-") and s.minillm.startswith("MiniLLM/MiniLLM-") for s in specs[1:]
                )
                continue
            params = [scales.random_model(s, 1000, IDS, 64, seed=0).num_parameters() for s in specs]
            # teacher > TA > TA > student, as in the paper's families
            assert params == sorted(params, reverse=True) and len(set(params)) == 4, (sc.name, fam.name, params)


@pytest.mark.parametrize(("family", "size"), list(REAL_PARAMETERS), ids=[f"{f}-{s}" for f, s in REAL_PARAMETERS])
def test_paper_specs_build_the_real_architectures(family, size):
    vocab, ids, positions = HUB_VOCAB[family]
    spec = scales.scale("paper").model(family, size)
    model = scales.random_model(spec, vocab, ids, positions, seed=0, device="meta", dtype=torch.bfloat16)
    assert model.num_parameters() == REAL_PARAMETERS[family, size]
    assert next(model.parameters()).dtype == torch.bfloat16 and next(model.parameters()).is_meta


def test_random_model_is_seeded_and_can_drop_dropout():
    spec = scales.scale("tiny").model("opt", "1.3B")
    a, b = (scales.random_model(spec, 100, IDS, 32, seed=3) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    other = scales.random_model(spec, 100, IDS, 32, seed=4)
    assert not torch.equal(a.lm_head.weight, other.lm_head.weight)
    assert a.config.dropout > 0 and a.config.attention_dropout == 0.0  # the transformers defaults
    quiet = scales.random_model(spec, 100, IDS, 32, seed=3, dropout=False)
    assert quiet.config.dropout == 0.0
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), quiet.state_dict().values()))


def test_build_model_uses_the_tokenizers_vocabulary_and_ids(tiny_tokenizer):
    spec = scales.scale("tiny").model("gpt2", "120M")
    model = scales.build_model(spec, tiny_tokenizer, n_positions=160, seed=0)
    eos = tiny_tokenizer.eos_token_id
    assert model.config.vocab_size == len(tiny_tokenizer) and model.config.n_positions == 160
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (eos, eos, eos)
    same = scales.random_model(spec, len(tiny_tokenizer), {"bos": eos, "eos": eos, "pad": eos}, 160, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), same.state_dict().values()))


def test_a_spec_without_an_architecture_is_not_built():
    spec = scales.ModelSpec(arch="gpt2", size="1.5B", base="openai-community/gpt2-xl")
    with pytest.raises(RegistryError, match="no architecture to build"):
        spec.model_config(vocab_size=10, n_positions=8, tokenizer_ids=IDS)
