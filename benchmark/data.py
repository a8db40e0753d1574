"""Prepared data: Dolly prompts/responses and the PT corpus, tokenized per family exactly as MiniLLM does.

    python -m benchmark data dolly --family gpt2 --tokenizer openai-community/gpt2 --source hub
    # -> data/prepared/dolly-gpt2/: ~14k train, 1000 valid, 500 test (train/valid prompts > 256 tokens dropped)
    python -m benchmark data pt --family opt --source hub --out data/prepared/dolly-opt
    # -> records where MiniLLM's processed corpus (MiniLLM/roberta-corpus-processed, opt/512/20M/train_0.*) lies;
    #    the corpus stays there (Hugging Face cache) and is read memory-mapped (benchmark.indexed)
    python -m benchmark data pt --family gpt2 --source FILE --out DIR --max-chunks 100000
    # -> adds pt.npy: int32 [100000, 512] chunks of a text file, documents + EOS concatenated
    python -m benchmark data synthetic --scale small --family opt
    # -> data/prepared/small-opt/ in a few seconds (benchmark.synthetic)

A prepared directory holds one family's tokenization:

    manifest.json        family, source, tokenizer, counts, dropped/truncated counts, max_prompt_length,
                         sha256 of every input and output file, format_version
    tokenizer/           save_pretrained copy: AutoTokenizer.from_pretrained(dir / "tokenizer") works offline
    train.jsonl          one object per line: instruction, input, output, category, prompt, prompt_ids, response_ids
    valid.jsonl, test.jsonl
    pt.npy               optional, text PT sources: int32 [n_chunks, seq_len]; an indexed PT corpus is not
                         copied: manifest["pt"]["corpus"] says where its files are (and their sizes, .idx sha256)
    source/              synthetic data only: the generated raw files the rest was prepared from

Readers use `load_prepared(path, family)`, which checks that the directory was prepared for that family.
Every MiniLLM rule mirrored here cites `shared/research/minillm-reference.md` ("ref §N").
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark import BenchmarkError, indexed

FORMAT_VERSION = 1
MAX_PROMPT_LENGTH = 256  # ref §4.1: --max-prompt-length 256
DEV_NUM = 1000  # ref §4.1: validation = the first 1000 raw records
PT_SEQ_LEN = 512  # ref §4.2: 512-token chunks
NEWLINE_MARKER = "<@x(x!>"  # ref §4.2: get_openwebtext.py writes runs of newlines as this marker
DEFAULT_ROOT = Path("data/prepared")
HUB_DOLLY = "MiniLLM/dolly"  # ref §4.1: raw.jsonl (train + validation) and valid.jsonl (the 500-record test set)
# MiniLLM's processed PT corpora (ref §3.2, §4.2): (hub dataset, folder of train_0.bin/.idx in it). GPT-2's files lie
# at the repo root. OPT's folder is where the reference's OPT scripts read them, LMOps minillm/scripts/opt/minillm/
# train_*_13B.sh:24 processed_data/roberta/opt/512/20M/ (its README:58 downloads the repo somewhere else).
HUB_PT = {
    "gpt2": ("MiniLLM/openwebtext-processed", ""),
    "opt": ("MiniLLM/roberta-corpus-processed", "opt/512/20M"),
}
SPLITS = ("train", "valid", "test")

# Field conventions: MiniLLM/dolly (instruction, input, output) and databricks-dolly-15k (instruction, context,
# response, category). Each of our names maps to the names accepted for it, in order of preference.
FIELDS = {"instruction": ("instruction",), "input": ("input", "context"), "output": ("output", "response")}


class DataError(BenchmarkError, ValueError):
    """Bad or missing data: the message names the file (and line) and what to do."""


# --------------------------------------------------------------------------------------------------------------
# The template (ref §4.1, process_data_dolly.py lines 23-50, non-Qwen models)
# --------------------------------------------------------------------------------------------------------------


def dolly_prompt(instruction: str, input: str) -> str:
    """MiniLLM's Alpaca-style prompt, with the `### Input:` block only when `input` is non-empty (ref §4.1)."""
    if not input:
        return (
            "Below is an instruction that describes a task. Write a response that appropriately completes "
            f"the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
        )
    return (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        f"### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    )


# --------------------------------------------------------------------------------------------------------------
# Reading raw records
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawRecord:
    instruction: str
    input: str
    output: str
    category: str | None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_manifest(root: Path, skip=lambda rel: False) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} of every file under `root` whose relative path `skip` does not reject:
    what a finished stage (DONE.json), a checkpoint (MANIFEST.json) and a selected model record of their files."""
    return {
        rel.as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and not skip(rel := p.relative_to(root))
    }


def manifest_problems(root: Path, files: dict[str, dict]) -> list[str]:
    """How the files under `root` differ from their manifest `files` (missing, resized, altered); [] when intact.
    Sizes are compared first, so a truncated file is reported without hashing it."""
    problems = []
    for rel, want in files.items():
        f = root / rel
        if not f.is_file():
            problems.append(f"{rel} is missing")
        elif f.stat().st_size != want["size"]:
            problems.append(f"{rel} has {f.stat().st_size} bytes, {want['size']} when written")
        elif sha256_file(f) != want["sha256"]:
            problems.append(f"{rel} differs from what was written (sha256)")
    return problems


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, decoded line by line so that a bad byte is reported with its line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) or fix that line, and run the command "
                    "again"
                ) from None


def read_records(path) -> list[RawRecord]:
    """Dolly records from a JSONL file in either field convention; DataError names the file and line if bad."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no such file; pass a MiniLLM/dolly-style directory (raw.jsonl + valid.jsonl) or --source hub"
        )
    records = []
    for lineno, line in _text_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno}); fix or delete "
                "that line and run the command again"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object per line, got {type(obj).__name__}")
        values = {}
        for ours, accepted in FIELDS.items():
            name = next((n for n in accepted if n in obj), None)
            if name is None or not isinstance(obj[name], str):
                what = "missing" if name is None else f"not a string in field {name!r}"
                raise DataError(
                    f"{path}:{lineno}: {what}: need one of {' / '.join(map(repr, accepted))} "
                    "(MiniLLM/dolly or databricks-dolly-15k field names); fix the record and rerun"
                )
            values[ours] = obj[name]
        category = obj.get("category")
        records.append(RawRecord(**values, category=category if isinstance(category, str) else None))
    if not records:
        raise DataError(f"{path}: empty file (no records); re-download or regenerate it")
    return records


def _hub_file(repo: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, repo_type="dataset"))
    except Exception as exc:  # network, offline mode, missing file: all reported the same way
        raise DataError(
            f"could not fetch {filename} from the hub dataset {repo} ({type(exc).__name__}: {exc}); "
            "check the network/HF_HUB_OFFLINE, or download the files and pass --source DIR"
        ) from None


def resolve_dolly_source(source: str) -> tuple[Path, Path, str]:
    """(raw file, test file, description) for `hub`, `hub:REPO` or a local directory in MiniLLM/dolly's layout.

    The test set is MiniLLM's separate `valid.jsonl` (ref §4.1: the code never derives it), so a directory must
    hold a raw file (raw.jsonl, or databricks-dolly-15k.jsonl / train.jsonl) and a test file (valid.jsonl or
    test.jsonl).
    """
    if source == "hub" or source.startswith("hub:"):
        repo = source.partition(":")[2] or HUB_DOLLY
        return _hub_file(repo, "raw.jsonl"), _hub_file(repo, "valid.jsonl"), f"hub:{repo}"
    d = Path(source)
    if not d.is_dir():
        raise DataError(
            f"--source {source}: not a directory; pass a directory with raw.jsonl and valid.jsonl "
            "(MiniLLM/dolly's layout) or --source hub"
        )
    raw = next((d / n for n in ("raw.jsonl", "databricks-dolly-15k.jsonl", "train.jsonl") if (d / n).is_file()), None)
    test = next((d / n for n in ("valid.jsonl", "test.jsonl") if (d / n).is_file()), None)
    if raw is None or test is None:
        missing = "raw.jsonl (train + validation)" if raw is None else "valid.jsonl (the 500-record test set)"
        raise DataError(
            f"{d}: missing {missing}; MiniLLM's test set is a separate file (ref §4.1), download "
            f"both from the hub dataset {HUB_DOLLY}"
        )
    return raw, test, str(d)


# --------------------------------------------------------------------------------------------------------------
# Atomic output: everything is written to a staging dir next to the target and swapped in at the end.
# --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def staging_dir(target, copy_existing: bool = False) -> Iterator[Path]:
    """A temporary directory beside `target` that replaces it only if the block succeeds.

    A failed run removes the staging directory and leaves `target` exactly as it was (absent or old contents).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes it 0700; the prepared dir should read like any other
    try:
        if copy_existing and target.is_dir():
            shutil.copytree(target, stage, dirs_exist_ok=True)
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(stage, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# Dolly preparation (ref §4.1)
# --------------------------------------------------------------------------------------------------------------


def _load_tokenizer(name_or_path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(name_or_path))
    except Exception as exc:
        raise DataError(
            f"could not load the tokenizer {name_or_path} ({type(exc).__name__}: {exc}); pass a hub id "
            "(needs the network) or a local directory saved with save_pretrained"
        ) from None


def _tokenizer_record(tok, name: str) -> dict:
    ids = {k: getattr(tok, k) for k in ("eos_token_id", "bos_token_id", "pad_token_id")}
    return {"name": name, "vocab_size": len(tok), **ids}


def _encode(tok, texts: list[str]) -> list[list[int]]:
    # No special tokens (ref §4.1): the OPT tokenizer would otherwise prepend </s> as BOS.
    return tok(texts, add_special_tokens=False)["input_ids"] if texts else []


def _tokenize_split(tok, records: list[RawRecord], max_prompt_length: int, truncate: bool, eos: int):
    """Rows for one split, and how many were dropped (train/valid) or truncated (test)."""
    prompts = [dolly_prompt(r.instruction, r.input) for r in records]
    prompt_ids = _encode(tok, prompts)
    # ref §4.1: prompt + output are tokenized jointly, EOS appended, and the response is what follows the prompt's
    # own token count (a merge across the boundary is kept as MiniLLM keeps it).
    full_ids = _encode(tok, [p + r.output for p, r in zip(prompts, records)])
    rows, affected = [], 0
    for rec, prompt, p_ids, f_ids in zip(records, prompts, prompt_ids, full_ids):
        response_ids = f_ids[len(p_ids) :] + [eos]  # split at the full prompt length, then EOS (ref §4.1)
        if len(p_ids) > max_prompt_length:
            affected += 1
            if not truncate:
                continue  # ref §4.1: train/validation prompts longer than 256 tokens are dropped
            p_ids = p_ids[:max_prompt_length]  # ref §4.1 (prompt_datasets.py): test prompts keep their FIRST 256
        rows.append(
            dict(
                instruction=rec.instruction,
                input=rec.input,
                output=rec.output,
                category=rec.category,
                prompt=prompt,
                prompt_ids=p_ids,
                response_ids=response_ids,
            )
        )
    return rows, affected


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")


def _write_manifest(stage: Path, manifest: dict) -> None:
    # Hashes of every output file (the manifest itself excluded), sorted so the file is byte-stable.
    manifest["files"] = {
        p.relative_to(stage).as_posix(): sha256_file(p)
        for p in sorted(stage.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_dolly(
    stage: Path,
    family: str,
    tokenizer,
    raw_file: Path,
    test_file: Path,
    source,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
    dev_num: int = DEV_NUM,
    tokenizer_name: str | None = None,
) -> dict:
    """Tokenize raw + test records into `stage` (no atomicity here; callers wrap it in `staging_dir`).

    `tokenizer` is a hub id or a directory; a copy is saved to stage/tokenizer unless it already lives there.
    Returns the manifest written.
    """
    raw, test = read_records(raw_file), read_records(test_file)
    tok = _load_tokenizer(tokenizer)
    if tok.eos_token_id is None:
        raise DataError(f"tokenizer {tokenizer} has no EOS token; MiniLLM appends EOS to every response (ref §4.1)")
    tok_dir = stage / "tokenizer"
    if Path(tokenizer).resolve() != tok_dir.resolve():
        tok.save_pretrained(str(tok_dir))
    # ref §4.1: validation = the first dev_num raw lines, BEFORE the prompt-length filter; train = the rest.
    splits = {"train": (raw[dev_num:], False), "valid": (raw[:dev_num], False), "test": (test, True)}
    counts, dropped, truncated = {}, {}, {}
    for name, (records, truncate) in splits.items():
        rows, affected = _tokenize_split(tok, records, max_prompt_length, truncate, tok.eos_token_id)
        _write_jsonl(stage / f"{name}.jsonl", rows)
        counts[name] = len(rows)
        (truncated if truncate else dropped)[name] = affected
    if counts["train"] == 0:
        raise DataError(
            f"{raw_file}: no training records left after the first {dev_num} (validation) and the "
            f"{max_prompt_length}-token prompt filter; lower --dev-num or check the file"
        )
    manifest = {
        "format_version": FORMAT_VERSION,
        "family": family,
        "source": source if isinstance(source, dict) else {"kind": "dolly", "location": str(source)},
        "inputs": {
            "raw": {"name": raw_file.name, "sha256": sha256_file(raw_file)},
            "test": {"name": test_file.name, "sha256": sha256_file(test_file)},
        },
        "tokenizer": _tokenizer_record(tok, tokenizer_name or str(tokenizer)),
        "max_prompt_length": max_prompt_length,
        "dev_num": dev_num,
        "counts": counts,
        "dropped": dropped,
        "truncated": truncated,
        "pt": None,
    }
    _write_manifest(stage, manifest)
    return manifest


def prepare_dolly(
    source: str,
    family: str,
    tokenizer: str,
    out_dir,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
    dev_num: int = DEV_NUM,
) -> PreparedData:
    """Prepare Dolly for one family into `out_dir` (replaced atomically; a failure leaves it untouched)."""
    _check_family(family)
    raw, test, where = resolve_dolly_source(source)
    with staging_dir(out_dir) as stage:
        write_dolly(
            stage,
            family,
            tokenizer,
            raw,
            test,
            {"kind": "dolly", "location": where},
            max_prompt_length=max_prompt_length,
            dev_num=dev_num,
        )
    return load_prepared(out_dir, family)


# --------------------------------------------------------------------------------------------------------------
# PT corpus (ref §4.2): MiniLLM's processed corpora, read where they lie, or text tokenized here into pt.npy
# --------------------------------------------------------------------------------------------------------------

PT_SOURCES = (
    "--source hub (MiniLLM's processed corpus), DIR (a folder with train_0.bin + train_0.idx), hub:DATASET (a "
    f"hub dataset with a 'text' column) or FILE (text, one document per line, newlines written as {NEWLINE_MARKER})"
)
PT_SOURCE_HELP = (  # `data pt --help`
    "hub (default): MiniLLM's processed corpus (gpt2: MiniLLM/openwebtext-processed, opt: MiniLLM/roberta-corpus-"
    "processed opt/512/20M), downloaded to the Hugging Face cache and read there, memory-mapped; DIR: a folder with "
    "train_0.bin + train_0.idx (MiniLLM's indexed format), read there; hub:DATASET (a 'text' column, e.g. "
    "hub:Skylion007/openwebtext) or FILE (one document per line): tokenized into pt.npy"
)


def _check_pt_file(path: Path) -> Path:
    if not path.is_file():
        what = "is a directory, not a text file" if path.is_dir() else "does not exist"
        raise DataError(f"PT source {path} {what}: pass {PT_SOURCES}")
    return path


def _pt_source_kind(source) -> str:
    """hub (processed corpus), hub-text (hub:DATASET), dir (indexed files) or file (text) for a --source value."""
    if isinstance(source, str) and (source == "hub" or source.startswith("hub:")):
        return "hub" if source == "hub" else "hub-text"
    return "dir" if Path(source).is_dir() else "file"


def find_pt_corpus(directory, family: str, origin: str | None = None) -> Path:
    """The folder holding the indexed PT files train_0.bin/.idx: `directory` itself or, for a copy of the whole hub
    repo, the family's folder in it (HUB_PT); DataError listing where it looked. `origin` names the directory in
    that message (e.g. the hub dataset it was downloaded from)."""
    directory = Path(directory)
    folder = HUB_PT[family][1]
    looked = [directory] + ([directory / folder] if folder else [])
    for d in looked:
        if (d / "train_0.idx").is_file() or (d / "train_0.bin").is_file():
            return d
    hint = (
        " MiniLLM's OPT scripts read the corpus from processed_data/roberta/opt/512/20M/, while its README "
        "downloads MiniLLM/roberta-corpus-processed into processed_data/openwebtext/: pass the folder that holds "
        "train_0.bin, wherever it landed."
        if family == "opt"
        else ""
    )
    raise DataError(
        f"no indexed PT corpus in {origin or directory}: looked for train_0.bin and train_0.idx in "
        + ", ".join(f"{d}/" for d in looked)
        + f".{hint} Or pass --source hub:DATASET / FILE to tokenize text instead."
    )


def download_pt_corpus(family: str) -> tuple[Path, dict]:
    """(folder of the train_*.bin/.idx files, source description) of the family's processed corpus (HUB_PT),
    downloaded into the Hugging Face cache, the train split only: GPT-2's is 17.8 GB + 208 MB."""
    from huggingface_hub import snapshot_download

    repo, folder = HUB_PT[family]
    pattern = f"{folder}/train_*" if folder else "train_*"
    try:
        snapshot = Path(snapshot_download(repo_id=repo, repo_type="dataset", allow_patterns=[pattern]))
    except Exception as exc:  # network, offline mode without a cached copy: all reported the same way
        raise DataError(
            f"could not fetch {pattern} from the hub dataset {repo} ({type(exc).__name__}: {exc}); check the "
            "network/HF_HUB_OFFLINE, or download the files and pass --source DIR"
        ) from None
    corpus = find_pt_corpus(snapshot, family, origin=f"the hub dataset {repo} (snapshot {snapshot})")
    revision = snapshot.name if snapshot.parent.name == "snapshots" else None  # the HF cache names it by commit
    return corpus, {"kind": "pt", "location": f"hub:{repo}", "folder": folder, "revision": revision}


def write_pt_indexed(stage: Path, corpus: Path, seq_len: int, max_chunks: int | None, source: dict) -> dict:
    """Record in the stage's manifest where an indexed PT corpus lies, with a cheap identity (file sizes, the .idx
    files' sha256), after opening it as `PreparedData.pt_chunks()` will. Nothing of the corpus is copied."""
    manifest = json.loads((stage / "manifest.json").read_text(encoding="utf-8"))
    rows = indexed.open_split(corpus, "train", max_rows=max_chunks, width=seq_len)
    vocab = manifest["tokenizer"]["vocab_size"]
    top = int(np.asarray(rows[: min(len(rows), 1024)]).max())
    if top >= vocab:
        raise DataError(
            f"{corpus}: token id {top} in its first windows, beyond the {vocab} ids of the {manifest['family']} "
            "tokenizer: the corpus was tokenized for another model; pass the family's own corpus"
        )
    (stage / "pt.npy").unlink(missing_ok=True)  # a text corpus prepared into this dir before
    manifest["pt"] = {
        "format": "indexed",
        "source": source,
        "corpus": indexed.split_record(corpus, "train", len(getattr(rows, "parts", [rows]))),
        "dtype": rows.dtype.name,
        "seq_len": int(rows.shape[1]),
        "max_chunks": max_chunks,
        "n_chunks": len(rows),
    }
    _write_manifest(stage, manifest)
    return manifest


def iter_text_documents(path) -> Iterator[str]:
    """Documents of a local text file in MiniLLM's layout: one per line, newlines as `<@x(x!>` (ref §4.2)."""
    path = _check_pt_file(Path(path))
    for _, line in _text_lines(path):
        doc = line.rstrip("\r\n").replace(NEWLINE_MARKER, "\n")
        if doc.strip():
            yield doc


def iter_hub_documents(source: str) -> Iterator[str]:
    """Documents streamed from `hub:DATASET`, a hub dataset with a `text` column (e.g. hub:Skylion007/openwebtext,
    the text MiniLLM cut its GPT-2 corpus from, ref §4.2)."""
    repo = source.partition(":")[2]
    if not repo:
        raise DataError(
            "--source hub: names no dataset: pass hub:DATASET (e.g. hub:Skylion007/openwebtext) to tokenize a "
            "text dataset, or plain --source hub for MiniLLM's processed corpus"
        )
    from datasets import load_dataset

    for row in load_dataset(repo, split="train", streaming=True):
        yield row["text"]


def pt_chunks(tok, documents, seq_len: int, max_chunks: int | None = None) -> tuple[np.ndarray, int]:
    """(int32 [n_chunks, seq_len], documents read): each document encoded without special tokens + EOS,
    concatenated into one stream and cut into seq_len-token chunks; the incomplete tail is dropped (ref §4.2)."""
    eos = tok.eos_token_id
    chunks: list[np.ndarray] = []
    buf: list[int] = []
    n_docs = 0
    batch: list[str] = []

    def flush() -> bool:
        nonlocal buf
        for ids in _encode(tok, batch):
            buf.extend(ids)
            buf.append(eos)
        batch.clear()
        while len(buf) >= seq_len:
            chunks.append(np.asarray(buf[:seq_len], dtype=np.int32))
            buf = buf[seq_len:]
            if max_chunks is not None and len(chunks) >= max_chunks:
                return True
        return False

    for doc in documents:
        batch.append(doc)
        n_docs += 1
        if len(batch) == 256 and flush():
            break
    else:
        flush()
    array = np.stack(chunks) if chunks else np.zeros((0, seq_len), dtype=np.int32)
    return array, n_docs


def write_pt(
    stage: Path,
    source,
    seq_len: int = PT_SEQ_LEN,
    max_chunks: int | None = None,
    description: dict | None = None,
) -> dict:
    """Tokenize a text PT source (a file, or `hub:DATASET`) into stage/pt.npy with the stage's own tokenizer and
    record it in its manifest (callers stage it)."""
    manifest = json.loads((stage / "manifest.json").read_text(encoding="utf-8"))
    tok = _load_tokenizer(stage / "tokenizer")
    if _pt_source_kind(source) == "hub-text":
        documents = iter_hub_documents(source)
        inputs = {"name": source, "sha256": None}
    else:
        documents = iter_text_documents(source)
        inputs = {"name": Path(source).name, "sha256": sha256_file(_check_pt_file(Path(source)))}
    array, n_docs = pt_chunks(tok, documents, seq_len, max_chunks)
    if len(array) == 0:
        raise DataError(f"PT source {source}: fewer than {seq_len} tokens in total; nothing to write")
    np.save(stage / "pt.npy", array)
    manifest["pt"] = {
        "source": description or {"kind": "pt", "location": str(source)},
        "input": inputs,
        "seq_len": seq_len,
        "max_chunks": max_chunks,
        "n_chunks": int(array.shape[0]),
        "n_documents": n_docs,
    }
    _write_manifest(stage, manifest)
    return manifest


def prepare_pt(
    source: str,
    family: str,
    out_dir,
    tokenizer: str | None = None,
    seq_len: int = PT_SEQ_LEN,
    max_chunks: int | None = None,
) -> PreparedData:
    """Add PT chunks to a prepared dir (its own tokenizer) or create a PT-only dir with `tokenizer`.

    `source`: `hub` (the family's processed corpus, HUB_PT, downloaded into the Hugging Face cache) or a folder of
    indexed files: recorded where they lie and read memory-mapped, the first `max_chunks` windows when given (the
    reference reads them all). `hub:DATASET` or a text file: tokenized into pt.npy (ref §4.2)."""
    _check_family(family)
    kind = _pt_source_kind(source)
    if kind == "file":
        _check_pt_file(Path(source))  # before any tokenizer is loaded or directory staged
    out_dir = Path(out_dir)
    existing = (out_dir / "manifest.json").is_file()
    if existing:
        prepared = load_prepared(out_dir, family)
        if tokenizer is not None and _load_tokenizer(tokenizer).get_vocab() != prepared.tokenizer.get_vocab():
            raise DataError(
                f"--tokenizer {tokenizer} differs from the tokenizer {out_dir} was prepared with; "
                "omit --tokenizer to use the directory's own, or choose another --out"
            )
    elif tokenizer is None:
        raise DataError(f"{out_dir} is not a prepared data dir; pass --tokenizer to create a PT-only dir there")
    corpus = None  # the checks above come first: `hub` downloads many GB
    if kind == "dir":
        corpus, where = find_pt_corpus(source, family), {"kind": "pt", "location": str(Path(source).absolute())}
    elif kind == "hub":
        corpus, where = download_pt_corpus(family)
    with staging_dir(out_dir, copy_existing=existing) as stage:
        if not existing:
            tok = _load_tokenizer(tokenizer)
            tok.save_pretrained(str(stage / "tokenizer"))
            _write_manifest(
                stage,
                {
                    "format_version": FORMAT_VERSION,
                    "family": family,
                    "source": {"kind": "pt-only"},
                    "counts": {},
                    "pt": None,
                    "tokenizer": _tokenizer_record(tok, str(tokenizer)),
                },
            )
        if corpus is not None:
            write_pt_indexed(stage, corpus, seq_len, max_chunks, where)
        else:
            write_pt(stage, source if kind == "hub-text" else Path(source), seq_len, max_chunks)
    return load_prepared(out_dir, family)


# --------------------------------------------------------------------------------------------------------------
# Reader API (trainer / evaluator)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    prompt: str
    output: str
    prompt_ids: list[int]
    response_ids: list[int]  # ends with EOS (ref §4.1)
    category: str | None


class PreparedData:
    """A prepared data directory for one family. `split("train")` -> list[Example]; `pt_chunks()` -> array."""

    def __init__(self, path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self.family: str = manifest["family"]
        self._splits: dict[str, list[Example]] = {}

    def __repr__(self) -> str:
        return f"PreparedData({str(self.path)!r}, family={self.family!r}, counts={self.manifest.get('counts')})"

    def split(self, name: str) -> list[Example]:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; splits are {', '.join(SPLITS)}")
        if name not in self._splits:
            path = self.path / f"{name}.jsonl"
            if not path.is_file():
                raise DataError(f"{path}: missing; this dir holds no {name} split ({self._rerun_hint()})")
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            self._splits[name] = [
                Example(
                    prompt=r["prompt"],
                    output=r["output"],
                    prompt_ids=r["prompt_ids"],
                    response_ids=r["response_ids"],
                    category=r["category"],
                )
                for r in rows
            ]
        return self._splits[name]

    def pt_chunks(self):
        """The PT chunks as a memory-mapped [n_chunks, seq_len] array-like, never read whole (None without PT data):
        pt.npy (int32) for a text source, the recorded indexed corpus in its own dtype (np.memmap, or
        indexed.ConcatRows over several shards) read in place."""
        pt = self.manifest.get("pt")
        if pt and pt.get("format") == "indexed":
            try:
                return indexed.open_recorded(pt["corpus"], max_rows=pt["n_chunks"], width=pt["seq_len"])
            except indexed.IndexedFileError as exc:
                raise DataError(
                    f"{self.path}: its PT corpus: {exc}; prepare it again: python -m benchmark data pt --family "
                    f"{self.family} --source SOURCE --out {self.path}"
                ) from None
        path = self.path / "pt.npy"
        return np.load(path, mmap_mode="r") if path.is_file() else None

    @functools.cached_property
    def tokenizer(self):
        return _load_tokenizer(self.path / "tokenizer")

    @property
    def eos_token_id(self) -> int:
        return self.manifest["tokenizer"]["eos_token_id"]

    def summary(self) -> str:
        """One line: family, split counts, dropped/truncated counts, PT chunks, vocabulary (what `data` prints)."""
        m = self.manifest
        pt = m.get("pt")
        counts = ", ".join(f"{k} {v}" for k, v in m.get("counts", {}).items())
        dropped = ", ".join(f"{k} {v}" for k, v in {**m.get("dropped", {}), **m.get("truncated", {})}.items())
        return (
            f"{self.path}: {self.family}, {counts or 'no splits'}"
            + (f" (dropped/truncated: {dropped})" if dropped else "")
            + (f", pt {pt['n_chunks']} x {pt['seq_len']}" if pt else "")
            + (f" read in place from {pt['corpus']['dir']}" if pt and pt.get("format") == "indexed" else "")
            + f", vocab {m['tokenizer']['vocab_size']}"
        )

    def _rerun_hint(self, family: str | None = None) -> str:
        family = family or self.family
        src = self.manifest.get("source", {})
        if src.get("kind") == "synthetic":
            return f"run python -m benchmark data synthetic --scale {src.get('scale')} --family {family} --out DIR"
        return f"run python -m benchmark data dolly --family {family} --tokenizer ID_OR_DIR --source hub --out DIR"


def _check_family(family: str) -> None:
    if family not in ("gpt2", "opt"):
        raise DataError(f"unknown family {family!r}; families are gpt2, opt")


def load_prepared(path, family: str | None = None) -> PreparedData:
    """Open a prepared dir; DataError if it is missing, unprepared, of another format, or of another family."""
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.is_file():
        what = "does not exist" if not path.exists() else "is not a prepared data dir (no manifest.json)"
        raise DataError(
            f"data dir {path} {what}: run python -m benchmark data synthetic --scale small --family "
            f"{family or 'gpt2'} --out {path} (or `data dolly ...` at paper scale)"
        )
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{mpath}:{exc.lineno}: malformed manifest ({exc.msg}); prepare the dir again") from None
    data = PreparedData(path, manifest)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"data dir {path} has format version {manifest.get('format_version')}, this code reads "
            f"{FORMAT_VERSION}: {data._rerun_hint()}"
        )
    if family is not None and data.family != family:
        raise DataError(
            f"data dir {path} was prepared for {data.family}, this stage needs {family}: {data._rerun_hint(family)}"
        )
    return data


def default_dir(name: str, family: str) -> Path:
    """Where the CLI writes by default: data/prepared/<name>-<family> (git-ignored)."""
    return DEFAULT_ROOT / f"{name}-{family}"
