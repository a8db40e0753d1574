"""benchmark.synthetic: deterministic records, per-family tokenizers, and the prepared `tiny` directory.

OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/pytest tests/test_synthetic.py -q     # ~10 s, no network
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from conftest import run_data_cli as _cli

from benchmark import data, scales, synthetic

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY = scales.scale("tiny").synthetic_records
SMALL = scales.scale("small").synthetic_records


def test_records_are_deterministic_and_cover_every_category():
    a = synthetic.generate_records(0, SMALL)
    assert a == synthetic.generate_records(0, SMALL)
    assert a != synthetic.generate_records(1, SMALL)
    assert {k: len(v) for k, v in a.items()} == SMALL
    for split in ("train", "valid", "test"):
        cats = Counter(r["category"] for r in a[split])
        assert set(cats) == set(synthetic.CATEGORIES)
        for r in a[split]:
            assert set(r) == {"instruction", "context", "response", "category"}
            assert r["instruction"] and r["response"] and r["response"] == r["response"].strip()
    assert all(isinstance(d, str) and d for d in a["pt"])


def test_train_covers_every_fact_that_valid_and_test_ask():
    recs = synthetic.generate_records(0, SMALL)
    train = {(r["instruction"], r["response"]) for r in recs["train"] if r["category"] == "open_qa"}
    train_answers = {}
    for ins, resp in train:
        train_answers.setdefault(resp, set()).add(ins.rstrip("?.").split()[-1])  # answer -> countries asked
    world = synthetic.World.build(0, synthetic.n_countries(SMALL["train"]))
    n_facts = len(world.countries) * len(synthetic.RELATIONS)
    assert len({(i.rstrip("?.").split()[-1], r) for i, r in train}) == n_facts  # every fact asked in train
    for split in ("valid", "test"):
        for r in recs[split]:
            if r["category"] == "open_qa":
                assert r["instruction"].rstrip("?.").split()[-1] in train_answers[r["response"]]


def test_responses_are_content_not_boilerplate():
    recs = synthetic.generate_records(0, SMALL)
    for r in recs["test"]:
        if r["category"] in ("open_qa", "closed_qa"):
            assert len(r["response"].split()) <= 2  # the answer itself (a name, a number, a job)
        if r["category"] == "classification" and r["context"]:
            assert r["response"] != r["context"]  # the members, not the input echoed back


def test_sentence_answers_wrap_the_short_answer_in_the_facts_around_it():
    short = synthetic.generate_records(0, SMALL)
    long = synthetic.generate_records(0, SMALL, answers="sentences")
    assert long == synthetic.generate_records(0, SMALL, answers="sentences") and long["pt"] == short["pt"]
    lengths = []
    for a, b in zip(short["test"], long["test"]):
        # the same record but for its answer, which names every item of the short one (a name, a list, a number)
        assert {k: v for k, v in a.items() if k != "response"} == {k: v for k, v in b.items() if k != "response"}
        assert all(item in b["response"] for item in a["response"].split(", "))
        assert len(b["response"].split()) > len(a["response"].split())
        lengths.append(len(b["response"].split()))
    assert 12 <= sum(lengths) / len(lengths) <= 25  # words: Dolly-like tens of tokens, not ~5
    by_question = {b["instruction"]: b["response"] for b in long["test"]}
    assert by_question["Which language is spoken in Lolzo?"] == (
        "People in Lolzo speak Nirian. The currency of Lolzo is the gram. Other cities of Lolzo are Gredrisres and "
        "Greze."
    )
    for b in long["test"]:  # the class is named whatever the question's wording ("Pick out the fruits from ...")
        if b["category"] == "classification" and b["context"]:
            assert b["response"].startswith("The ") and " list in the list " not in b["response"]
    with pytest.raises(ValueError, match="answer style"):
        synthetic.generate_records(0, TINY, answers="long")


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_tokenizer_specials(tmp_path, family):
    from transformers import AutoTokenizer

    texts = [
        data.dolly_prompt(r["instruction"], r["context"]) + r["response"]
        for r in synthetic.generate_records(0, {"train": 200})["train"]
    ]
    synthetic.train_tokenizer(texts, family, tmp_path, vocab_size=500)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tok) <= 500 and tok.padding_side == "left"
    if family == "gpt2":
        assert tok.bos_token == tok.eos_token == tok.pad_token == tok.unk_token == "<|endoftext|>"
        assert tok.eos_token_id == 0 and tok.encode("Name three birds.") == tok.encode(
            "Name three birds.", add_special_tokens=False
        )
    else:
        assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("</s>", "</s>", "<pad>", "<unk>")
        assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
        plain = tok.encode("Name three birds.", add_special_tokens=False)
        assert tok.encode("Name three birds.") == [tok.eos_token_id, *plain]  # like facebook/opt-*
    # Every line gets a leading space before byte-level BPE, so a word is spelled the same at the start of a
    # response (after "### Response:\n") and inside the context; decoding shows that space, postprocess strips it.
    assert tok.decode(tok.encode("Name three birds.", add_special_tokens=False)) == " Name three birds."
    after_newline = tok.encode("Response:\nName", add_special_tokens=False)
    after_space = tok.encode("Response: Name", add_special_tokens=False)
    assert after_newline[-1] == after_space[-1] and after_newline != after_space


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return {
        (family, seed): synthetic.prepare_synthetic("tiny", family, root / f"{family}-{seed}", seed=seed)
        for family, seed in (("gpt2", 0), ("opt", 0))
    }


def test_prepare_synthetic_tiny(tiny):
    for (family, _), prepared in tiny.items():
        m = prepared.manifest
        assert m["family"] == family and m["source"]["kind"] == "synthetic"
        assert m["counts"] == {"train": TINY["train"], "valid": TINY["valid"], "test": TINY["test"]}
        assert m["dropped"] == {"train": 0, "valid": 0} and m["truncated"] == {"test": 0}
        chunks = prepared.pt_chunks()
        pt_len = scales.scale("tiny").minillm.get("pt_seq_length", synthetic.PT_SEQ_LEN)  # what the trainer reads
        assert chunks.shape[1] == pt_len and m["pt"]["n_documents"] == TINY["pt"]
        assert m["max_prompt_length"] == scales.scale("tiny").sft.get("max_prompt_length", 256)
        tok = prepared.tokenizer
        assert len(tok) <= synthetic.VOCAB_SIZE
        for split in data.SPLITS:
            for e in prepared.split(split):
                assert len(e.prompt_ids) <= 120 and len(e.response_ids) < 32
                assert e.response_ids[-1] == tok.eos_token_id and tok.bos_token_id not in e.prompt_ids
        # validation = the first `valid` raw records (ref §4.1 path, shared with Dolly)
        raw_first = json.loads((prepared.path / "source" / "raw.jsonl").read_text().splitlines()[0])
        assert prepared.split("valid")[0].output == raw_first["response"]
    g, o = tiny[("gpt2", 0)].split("train")[0], tiny[("opt", 0)].split("train")[0]
    assert g.prompt == o.prompt and g.prompt_ids != o.prompt_ids


def test_prepare_synthetic_is_byte_deterministic(tiny, tmp_path):
    again = synthetic.prepare_synthetic("tiny", "gpt2", tmp_path / "again", seed=0)
    assert again.manifest["files"] == tiny[("gpt2", 0)].manifest["files"]
    assert (again.path / "manifest.json").read_bytes() == (tiny[("gpt2", 0)].path / "manifest.json").read_bytes()
    other = synthetic.prepare_synthetic("tiny", "gpt2", tmp_path / "other", seed=1)
    assert other.manifest["files"]["train.jsonl"] != again.manifest["files"]["train.jsonl"]


def test_cli_synthetic(tmp_path, capsys):
    assert _cli(["data", "synthetic", "--scale", "tiny", "--family", "opt", "--out", str(tmp_path / "t")]) == 0
    assert "train 400" in capsys.readouterr().out
    assert data.load_prepared(tmp_path / "t", "opt").manifest["source"]["scale"] == "tiny"
    with pytest.raises(data.DataError, match="does not use synthetic data"):
        synthetic.prepare_synthetic("paper", "gpt2", tmp_path / "p")
