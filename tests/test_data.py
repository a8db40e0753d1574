"""benchmark.data: MiniLLM's Dolly preparation (ref §4.1), the PT chunks (ref §4.2: text tokenized here, or the
processed indexed corpora read in place, the hub download stubbed), the reader API and its errors.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/pytest tests/test_data.py -q     # ~10 s, no network

Tokenizers are trained here on a few hundred strings (benchmark.synthetic.train_tokenizer), so every id is local.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import run_data_cli as _cli

from benchmark import BenchmarkError, data, indexed
from benchmark.synthetic import generate_records, train_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


GOLDEN_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nName three birds.\n\n### Response:\n"
)
GOLDEN_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nWho leads Vicapen?\n\n### Input:\nSobin leads Vicapen.\n\n### Response:\n"
)


def test_dolly_prompt_matches_minillm_template():
    assert data.dolly_prompt("Name three birds.", "") == GOLDEN_NO_INPUT
    assert data.dolly_prompt("Who leads Vicapen?", "Sobin leads Vicapen.") == GOLDEN_WITH_INPUT


# --------------------------------------------------------------------------------------------------------------
# Fixtures: two locally trained tokenizers and a small MiniLLM/dolly-style source directory
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    recs = generate_records(3, {"train": 300, "pt": 50})
    texts = [data.dolly_prompt(r["instruction"], r["context"]) + r["response"] for r in recs["train"]] + recs["pt"]
    out = {}
    for family in ("gpt2", "opt"):
        out[family] = tmp_path_factory.mktemp(f"tok-{family}")
        train_tokenizer(texts, family, out[family], vocab_size=600)
    return out


def _long(n_words: int) -> str:
    return " ".join(["word"] * n_words)  # far more than 256 tokens once n_words > 256


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def dolly_dir(tmp_path) -> Path:
    """raw.jsonl: 10 records (both field conventions); records 1 (valid) and 6 (train) have >256-token prompts.
    valid.jsonl (the test set): 3 records, one with a >256-token prompt."""
    d = tmp_path / "dolly"
    d.mkdir()
    raw = []
    for i in range(10):
        instruction = _long(400) if i in (1, 6) else f"Question number {i}?"
        if i % 2:  # databricks-dolly-15k field names
            raw.append(
                {
                    "instruction": instruction,
                    "context": "" if i % 3 else f"ctx {i}",
                    "response": f"ans {i}",
                    "category": "open_qa",
                }
            )
        else:  # MiniLLM/dolly field names
            raw.append({"instruction": instruction, "input": "", "output": f"ans {i}"})
    _write(d / "raw.jsonl", raw)
    _write(
        d / "valid.jsonl",
        [
            {"instruction": "Test one?", "input": "", "output": "one"},
            {"instruction": "Test two?", "input": _long(400), "output": "two"},
            {"instruction": "Test three?", "input": "some input", "output": "three"},
        ],
    )
    return d


def _prepare(dolly_dir, tokenizers, tmp_path, family="gpt2", name="prep"):
    return data.prepare_dolly(str(dolly_dir), family, str(tokenizers[family]), tmp_path / name, dev_num=3)


# --------------------------------------------------------------------------------------------------------------
# Splits and the 256-token rules (ref §4.1)
# --------------------------------------------------------------------------------------------------------------


def test_splits_and_prompt_length_rules(dolly_dir, tokenizers, tmp_path):
    prepared = _prepare(dolly_dir, tokenizers, tmp_path)
    m = prepared.manifest
    # validation = the first 3 raw records BEFORE the filter (record 1 is dropped from it), train = the rest.
    assert m["counts"] == {"train": 6, "valid": 2, "test": 3}
    assert m["dropped"] == {"train": 1, "valid": 1} and m["truncated"] == {"test": 1}
    assert m["max_prompt_length"] == 256 and m["dev_num"] == 3
    assert [e.output for e in prepared.split("valid")] == ["ans 0", "ans 2"]
    assert [e.output for e in prepared.split("train")] == ["ans 3", "ans 4", "ans 5", "ans 7", "ans 8", "ans 9"]
    assert all(len(e.prompt_ids) <= 256 for s in data.SPLITS for e in prepared.split(s))

    tok = prepared.tokenizer
    long_test = prepared.split("test")[1]
    full_prompt_ids = tok.encode(long_test.prompt, add_special_tokens=False)
    assert len(full_prompt_ids) > 256
    assert long_test.prompt_ids == full_prompt_ids[:256]  # the FIRST 256 tokens survive
    assert long_test.prompt.endswith("### Response:\n")  # the text is kept whole; only the ids are cut
    joint = tok.encode(long_test.prompt + "two", add_special_tokens=False)
    assert long_test.response_ids == joint[len(full_prompt_ids) :] + [tok.eos_token_id]


def test_fields_and_both_conventions(dolly_dir, tokenizers, tmp_path):
    prepared = _prepare(dolly_dir, tokenizers, tmp_path)
    rows = [json.loads(line) for line in (prepared.path / "train.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"instruction", "input", "output", "category", "prompt", "prompt_ids", "response_ids"}
    by_output = {r["output"]: r for r in rows}
    assert by_output["ans 3"]["input"] == "ctx 3" and by_output["ans 3"]["category"] == "open_qa"  # context -> input
    assert by_output["ans 4"]["category"] is None
    assert by_output["ans 3"]["prompt"] == data.dolly_prompt("Question number 3?", "ctx 3")


def test_manifest_hashes_every_file(dolly_dir, tokenizers, tmp_path):
    prepared = _prepare(dolly_dir, tokenizers, tmp_path)
    files = prepared.manifest["files"]
    assert {"train.jsonl", "valid.jsonl", "test.jsonl", "tokenizer/tokenizer.json"} <= set(files)
    for rel, digest in files.items():
        assert data.sha256_file(prepared.path / rel) == digest
    assert prepared.manifest["inputs"]["raw"]["sha256"] == data.sha256_file(dolly_dir / "raw.jsonl")
    assert prepared.manifest["format_version"] == data.FORMAT_VERSION


# --------------------------------------------------------------------------------------------------------------
# Per-family tokenization: ids differ, no BOS even for OPT, EOS appended (ref §4.1, checklist §8)
# --------------------------------------------------------------------------------------------------------------


def test_per_family_tokenization(dolly_dir, tokenizers, tmp_path):
    gpt2 = _prepare(dolly_dir, tokenizers, tmp_path, "gpt2", "g")
    opt = _prepare(dolly_dir, tokenizers, tmp_path, "opt", "o")
    g, o = gpt2.split("train")[0], opt.split("train")[0]
    assert g.prompt == o.prompt and g.prompt_ids != o.prompt_ids

    otok = opt.tokenizer
    assert otok.bos_token == otok.eos_token == "</s>" and otok.pad_token == "<pad>"
    assert otok.encode(o.prompt)[0] == otok.bos_token_id  # the OPT tokenizer WOULD prepend </s> ...
    for prepared in (gpt2, opt):
        tok = prepared.tokenizer
        for e in prepared.split("train") + prepared.split("test"):
            assert tok.bos_token_id not in e.prompt_ids  # ... but MiniLLM never asks for it
            assert e.response_ids[-1] == tok.eos_token_id == prepared.eos_token_id
            assert tok.eos_token_id not in e.response_ids[:-1]
            # the test tokenizers are the synthetic ones, which put a space before every line (synthetic.py:
            # one spelling per word); evaluation's postprocess strips it
            assert tok.decode(e.response_ids, skip_special_tokens=True).strip() == e.output


def test_saved_tokenizer_loads_offline(dolly_dir, tokenizers, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prepared = _prepare(dolly_dir, tokenizers, tmp_path, "opt")
    tok = AutoTokenizer.from_pretrained(prepared.path / "tokenizer")
    assert tok.padding_side == "left" and tok.pad_token_id != tok.eos_token_id
    assert tok.get_vocab() == prepared.tokenizer.get_vocab()


# --------------------------------------------------------------------------------------------------------------
# Bad input: file + line in the message, and the target directory untouched
# --------------------------------------------------------------------------------------------------------------


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "raw_text, expected",
    [
        (
            '{"instruction": "a", "input": "", "output": "b"}\n\n{"instruction": "c", "input": "",\n',
            ["raw.jsonl:3", "malformed JSON"],
        ),
        (
            '{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "c", "input": ""}\n',
            ["raw.jsonl:2", "missing", "'output' / 'response'"],
        ),
        ("", ["raw.jsonl", "empty file"]),
    ],
    ids=["malformed-json", "missing-field", "empty-file"],
)
def test_bad_input_names_file_and_line_and_leaves_target_untouched(dolly_dir, tokenizers, tmp_path, raw_text, expected):
    good = _prepare(dolly_dir, tokenizers, tmp_path, name="target")
    before = _snapshot(good.path)
    (dolly_dir / "raw.jsonl").write_text(raw_text, encoding="utf-8")
    with pytest.raises(data.DataError) as err:
        data.prepare_dolly(str(dolly_dir), "gpt2", str(tokenizers["gpt2"]), good.path, dev_num=1)
    assert isinstance(err.value, BenchmarkError)
    for part in expected:
        assert part in str(err.value)
    assert _snapshot(good.path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dolly", "target"]  # no staging dir left behind


def test_failed_first_run_creates_nothing(dolly_dir, tokenizers, tmp_path):
    (dolly_dir / "valid.jsonl").write_text("not json\n", encoding="utf-8")
    with pytest.raises(data.DataError, match=r"valid.jsonl:1"):
        _prepare(dolly_dir, tokenizers, tmp_path, name="new")
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dolly"]


def test_source_dir_without_test_file(dolly_dir, tokenizers, tmp_path):
    (dolly_dir / "valid.jsonl").unlink()
    with pytest.raises(data.DataError, match="valid.jsonl"):
        _prepare(dolly_dir, tokenizers, tmp_path)


# --------------------------------------------------------------------------------------------------------------
# load_prepared
# --------------------------------------------------------------------------------------------------------------


def test_load_prepared_errors(dolly_dir, tokenizers, tmp_path):
    with pytest.raises(data.DataError, match="does not exist.*python -m benchmark data"):
        data.load_prepared(tmp_path / "nowhere", "gpt2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="not a prepared data dir"):
        data.load_prepared(tmp_path / "empty")
    opt = _prepare(dolly_dir, tokenizers, tmp_path, "opt", "o")
    with pytest.raises(data.DataError) as err:
        data.load_prepared(opt.path, "gpt2")
    msg = str(err.value)
    assert "was prepared for opt, this stage needs gpt2" in msg and "python -m benchmark data dolly" in msg
    assert "--family gpt2" in msg
    assert data.load_prepared(opt.path, "opt").family == "opt"


# --------------------------------------------------------------------------------------------------------------
# PT chunks (ref §4.2)
# --------------------------------------------------------------------------------------------------------------


def test_pt_chunks_concatenate_documents_with_eos(tokenizers):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizers["opt"])
    docs = ["The capital of Vicapen is Fatur.", "A pear is a kind of fruit.\nSome birds: owl, swan.", "On Monday."]
    stream = [i for d in docs for i in tok.encode(d, add_special_tokens=False) + [tok.eos_token_id]]
    chunks, n_docs = data.pt_chunks(tok, iter(docs), seq_len=8)
    assert n_docs == 3 and chunks.dtype == np.int32
    assert chunks.shape == (len(stream) // 8, 8)
    assert chunks.reshape(-1).tolist() == stream[: chunks.size]  # the tail shorter than a chunk is dropped
    assert tok.bos_token_id not in tok.encode(docs[0], add_special_tokens=False)
    bounded, _ = data.pt_chunks(tok, iter(docs * 50), seq_len=8, max_chunks=5)
    assert bounded.shape == (5, 8)


def test_prepare_pt_into_prepared_dir_and_new_dir(dolly_dir, tokenizers, tmp_path):
    prepared = _prepare(dolly_dir, tokenizers, tmp_path)
    assert prepared.pt_chunks() is None
    text = tmp_path / "corpus.txt"
    # MiniLLM's layout: one document per line, newlines written as <@x(x!> (ref §4.2); blank lines are skipped
    text.write_text("First line<@x(x!>second line of doc one.\n\nDoc two is here.\n" * 20, encoding="utf-8")
    updated = data.prepare_pt(str(text), "gpt2", prepared.path, seq_len=16, max_chunks=7)
    chunks = updated.pt_chunks()
    assert chunks.shape == (7, 16) and chunks.dtype == np.int32
    assert isinstance(chunks, np.memmap) and Path(chunks.filename) == (updated.path / "pt.npy").resolve()
    tok = updated.tokenizer
    first = tok.encode("First line\nsecond line of doc one.", add_special_tokens=False) + [tok.eos_token_id]
    assert chunks.reshape(-1)[: len(first)].tolist() == first
    pt = updated.manifest["pt"]
    assert pt["seq_len"] == 16 and pt["n_chunks"] == 7 and pt["max_chunks"] == 7
    assert updated.manifest["files"]["pt.npy"] == data.sha256_file(updated.path / "pt.npy")
    assert updated.manifest["counts"] == prepared.manifest["counts"]  # the Dolly splits are kept

    fresh = data.prepare_pt(str(text), "opt", tmp_path / "pt-only", tokenizer=str(tokenizers["opt"]), seq_len=16)
    assert fresh.pt_chunks().shape[1] == 16 and fresh.family == "opt"
    with pytest.raises(data.DataError, match="differs from the tokenizer"):
        data.prepare_pt(str(text), "gpt2", prepared.path, tokenizer=str(tokenizers["opt"]), seq_len=16)


# --------------------------------------------------------------------------------------------------------------
# MiniLLM's processed PT corpora: indexed files read where they lie (benchmark.indexed)
# --------------------------------------------------------------------------------------------------------------


def _corpus(d: Path, shards=(10,), width: int = 16, vocab: int = 600) -> list[np.ndarray]:
    """Indexed train shards of `width`-token windows in `d` (ids below the test tokenizers' vocabulary)."""
    rng = np.random.default_rng(len(shards))
    parts = [rng.integers(0, vocab, (n, width)) for n in shards]
    for k, part in enumerate(parts):
        indexed.write_indexed(d / f"train_{k}", part, np.uint16)
    indexed.write_indexed(d / "valid_0", parts[0][:2], np.uint16)  # present on the hub, not read
    return parts


def test_indexed_corpus_is_recorded_and_read_in_place(dolly_dir, tokenizers, tmp_path):
    prepared = _prepare(dolly_dir, tokenizers, tmp_path)
    corpus = tmp_path / "openwebtext" / "gpt2" / "512" / "10M"
    (first,) = _corpus(corpus)
    updated = data.prepare_pt(str(corpus), "gpt2", prepared.path, seq_len=8, max_chunks=6)

    chunks = updated.pt_chunks()
    assert isinstance(chunks, np.memmap) and Path(chunks.filename) == (corpus / "train_0.bin").resolve()
    assert chunks.shape == (6, 8) and chunks.dtype == np.uint16  # capped, cut to seq_len, the file's dtype
    assert np.array_equal(chunks, first[:6, :8])
    assert sorted(p.name for p in updated.path.iterdir()) == [  # the corpus is not copied into the data dir
        "manifest.json",
        "test.jsonl",
        "tokenizer",
        "train.jsonl",
        "valid.jsonl",
    ]
    pt = updated.manifest["pt"]
    assert pt["format"] == "indexed" and pt["dtype"] == "uint16" and pt["seq_len"] == 8
    assert pt["n_chunks"] == 6 and pt["max_chunks"] == 6 and pt["source"]["location"] == str(corpus)
    assert pt["corpus"]["dir"] == str(corpus) and pt["corpus"]["split"] == "train"
    assert pt["corpus"]["shards"] == [
        {
            "name": "train_0",
            "bin_bytes": 10 * 16 * 2,
            "idx_bytes": 34 + 12 * 10 + 8,
            "idx_sha256": data.sha256_file(corpus / "train_0.idx"),
        }
    ]
    assert "pt 6 x 8 read in place from" in updated.summary()

    indexed.write_indexed(corpus / "train_0", first[:9], np.uint16)  # the corpus changes after preparation
    with pytest.raises(data.DataError, match=r"train_0\.bin: 288 bytes, 320 bytes when recorded.*prepare it again"):
        data.load_prepared(updated.path, "gpt2").pt_chunks()


def test_indexed_shards_concatenate_and_replace_a_text_corpus(dolly_dir, tokenizers, tmp_path):
    prepared = _prepare(dolly_dir, tokenizers, tmp_path)
    text = tmp_path / "corpus.txt"
    text.write_text("Doc one is here.\n" * 40, encoding="utf-8")
    assert (data.prepare_pt(str(text), "gpt2", prepared.path, seq_len=8).path / "pt.npy").is_file()
    corpus = tmp_path / "corpus"
    parts = _corpus(corpus, shards=(4, 3))
    updated = data.prepare_pt(str(corpus), "gpt2", prepared.path, seq_len=16)
    assert not (updated.path / "pt.npy").exists()  # the text chunks it replaces are gone
    chunks = updated.pt_chunks()
    assert isinstance(chunks, indexed.ConcatRows) and all(isinstance(p, np.memmap) for p in chunks.parts)
    assert chunks.shape == (7, 16) and np.array_equal(chunks[np.arange(7)], np.concatenate(parts))
    assert [s["name"] for s in updated.manifest["pt"]["corpus"]["shards"]] == ["train_0", "train_1"]


def test_indexed_corpus_of_another_vocabulary_is_refused(dolly_dir, tokenizers, tmp_path):
    prepared = _prepare(dolly_dir, tokenizers, tmp_path)
    before = _snapshot(prepared.path)
    corpus = tmp_path / "corpus"
    indexed.write_indexed(corpus / "train_0", np.full((3, 8), 50_256), np.uint16)  # GPT-2's EOS: vocab 600 here
    with pytest.raises(data.DataError, match="token id 50256 in its first windows, beyond the 600 ids"):
        data.prepare_pt(str(corpus), "gpt2", prepared.path, seq_len=8)
    assert _snapshot(prepared.path) == before


@pytest.mark.parametrize(
    "family, repo, folder",
    [("gpt2", "MiniLLM/openwebtext-processed", ""), ("opt", "MiniLLM/roberta-corpus-processed", "opt/512/20M")],
)
def test_hub_source_downloads_the_processed_corpus(tokenizers, tmp_path, monkeypatch, family, repo, folder):
    import huggingface_hub

    snapshot = tmp_path / "hub" / "snapshots" / ("ab" * 20)
    (first,) = _corpus(snapshot / folder)
    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    out = data.prepare_pt("hub", family, tmp_path / "pt-only", tokenizer=str(tokenizers[family]), seq_len=16)
    pattern = f"{folder}/train_*" if folder else "train_*"  # the train split only, never valid_*
    assert calls == [{"repo_id": repo, "repo_type": "dataset", "allow_patterns": [pattern]}]
    source = out.manifest["pt"]["source"]
    assert source == {"kind": "pt", "location": f"hub:{repo}", "folder": folder, "revision": "ab" * 20}
    assert out.manifest["pt"]["corpus"]["dir"] == str(snapshot / folder)
    assert np.array_equal(out.pt_chunks(), first)


def test_opt_corpus_missing_where_the_scripts_read_it_lists_where_it_looked(tokenizers, tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = tmp_path / "snapshot"
    _corpus(snapshot / "opt" / "512" / "10M")  # not the folder MiniLLM's OPT scripts read
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kwargs: str(snapshot))
    with pytest.raises(data.DataError) as err:
        data.prepare_pt("hub", "opt", tmp_path / "out", tokenizer=str(tokenizers["opt"]))
    msg = str(err.value)
    assert f"looked for train_0.bin and train_0.idx in {snapshot}/, {snapshot}/opt/512/20M/." in msg
    assert "the hub dataset MiniLLM/roberta-corpus-processed" in msg and "processed_data/roberta/opt/512/20M/" in msg
    assert not (tmp_path / "out").exists()

    # a local copy of the whole hub repo: DIR/opt/512/20M is found from DIR
    (first,) = _corpus(tmp_path / "repo" / "opt" / "512" / "20M")
    out = data.prepare_pt(str(tmp_path / "repo"), "opt", tmp_path / "out", tokenizer=str(tokenizers["opt"]), seq_len=16)
    assert np.array_equal(out.pt_chunks(), first)


def test_hub_download_failure_is_one_sentence(tokenizers, tmp_path, monkeypatch):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("offline mode is enabled")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(data.DataError, match=r"could not fetch train_\* from the hub dataset MiniLLM/openwebtext"):
        data.prepare_pt("hub", "gpt2", tmp_path / "out", tokenizer=str(tokenizers["gpt2"]))


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------


def test_cli_dolly_and_pt(dolly_dir, tokenizers, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = _cli(
        [
            "data",
            "dolly",
            "--family",
            "gpt2",
            "--tokenizer",
            str(tokenizers["gpt2"]),
            "--source",
            str(dolly_dir),
            "--out",
            str(out),
            "--dev-num",
            "3",
        ]
    )
    assert rc == 0 and "train 6" in capsys.readouterr().out
    (tmp_path / "c.txt").write_text("hello world, this is a document.\n" * 30, encoding="utf-8")
    assert (
        _cli(
            [
                "data",
                "pt",
                "--family",
                "gpt2",
                "--source",
                str(tmp_path / "c.txt"),
                "--out",
                str(out),
                "--seq-len",
                "32",
            ]
        )
        == 0
    )
    assert data.load_prepared(out, "gpt2").pt_chunks().shape[1] == 32
    assert _cli(["data", "pt", "--family", "opt", "--source", str(tmp_path / "c.txt"), "--out", str(out)]) == 2
    assert "prepared for gpt2" in capsys.readouterr().err
    _corpus(tmp_path / "corpus")
    argv = ["data", "pt", "--family", "gpt2", "--source", str(tmp_path / "corpus"), "--out", str(out)]
    assert _cli(argv + ["--seq-len", "12", "--max-chunks", "5"]) == 0
    assert "pt 5 x 12 read in place from" in capsys.readouterr().out
    assert isinstance(data.load_prepared(out, "gpt2").pt_chunks(), np.memmap)


# --------------------------------------------------------------------------------------------------------------
# Errors that used to be tracebacks (issue #20, item 7)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["raw.jsonl", "valid.jsonl"])
def test_non_utf8_bytes_name_file_and_line(dolly_dir, tokenizers, tmp_path, capsys, name):
    path = dolly_dir / name
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(1, b'{"instruction": "caf\xe9", "input": "", "output": "x"}\n')  # Latin-1 e-acute: line 2
    path.write_bytes(b"".join(lines))
    out = tmp_path / "out"
    argv = ["data", "dolly", "--family", "gpt2", "--tokenizer", str(tokenizers["gpt2"])]
    assert _cli(argv + ["--source", str(dolly_dir), "--out", str(out), "--dev-num", "3"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {path}:2: not UTF-8 text (byte 0xe9 at column 21); re-save the file as UTF-8 (e.g. iconv -f "
        "latin1 -t utf-8) or fix that line, and run the command again\n"
    )
    assert not out.exists()


def test_non_utf8_pt_text_names_line(dolly_dir, tokenizers, tmp_path):
    prepared = _prepare(dolly_dir, tokenizers, tmp_path)
    before = _snapshot(prepared.path)
    text = tmp_path / "corpus.txt"
    text.write_bytes(b"a fine document.\n" * 3 + b"caf\xe9 au lait\n")
    with pytest.raises(data.DataError, match=r"corpus.txt:4: not UTF-8 text \(byte 0xe9 at column 4\)"):
        data.prepare_pt(str(text), "gpt2", prepared.path, seq_len=8)
    assert _snapshot(prepared.path) == before


def test_missing_pt_source_is_one_sentence(dolly_dir, tokenizers, tmp_path, capsys):
    prepared = _prepare(dolly_dir, tokenizers, tmp_path)
    before = _snapshot(prepared.path)
    missing = tmp_path / "no-such-corpus.txt"
    assert _cli(["data", "pt", "--family", "gpt2", "--source", str(missing), "--out", str(prepared.path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: PT source {missing} does not exist: pass --source hub (MiniLLM's processed corpus), DIR (a folder "
        "with train_0.bin + train_0.idx), hub:DATASET (a hub dataset with a 'text' column) or FILE (text, one "
        "document per line, newlines written as <@x(x!>)\n"
    )
    assert _snapshot(prepared.path) == before
    empty = tmp_path / "empty"  # a directory is an indexed corpus: one without its files says where it looked
    empty.mkdir()
    with pytest.raises(data.DataError, match=rf"no indexed PT corpus in {empty}: looked for train_0\.bin and"):
        data.prepare_pt(str(empty), "gpt2", tmp_path / "new", tokenizer=str(tokenizers["gpt2"]))
    assert not (tmp_path / "new").exists()
    with pytest.raises(data.DataError, match="is a directory, not a text file"):  # write_pt reads text only
        data.write_pt(prepared.path, empty)
    with pytest.raises(data.DataError, match="does not exist"):  # write_pt, as the synthetic data calls it
        data.write_pt(prepared.path, missing)
    with pytest.raises(data.DataError, match="names no dataset: pass hub:DATASET"):
        data.prepare_pt("hub:", "gpt2", prepared.path)
