"""Prepared data: Dolly prompts/responses and the PT corpus, tokenized per family exactly as MiniLLM does.

    python -m benchmark data dolly --family gpt2 --tokenizer openai-community/gpt2 --source hub
    # -> data/prepared/dolly-gpt2/: ~14k train, 1000 valid, 500 test (train/valid prompts > 256 tokens dropped)
    python -m benchmark data pt --family gpt2 --source hub --out data/prepared/dolly-gpt2 --max-chunks 100000
    # -> adds pt.npy: int32 [100000, 512] chunks of OpenWebText, documents + EOS concatenated
    python -m benchmark data synthetic --scale small --family opt
    # -> data/prepared/small-opt/ in a few seconds (benchmark.synthetic)

A prepared directory holds one family's tokenization:

    manifest.json        family, source, tokenizer, counts, dropped/truncated counts, max_prompt_length,
                         sha256 of every input and output file, format_version
    tokenizer/           save_pretrained copy: AutoTokenizer.from_pretrained(dir / "tokenizer") works offline
    train.jsonl          one object per line: instruction, input, output, category, prompt, prompt_ids, response_ids
    valid.jsonl, test.jsonl
    pt.npy               optional: int32 [n_chunks, seq_len]
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

from benchmark import BenchmarkError

FORMAT_VERSION = 1
MAX_PROMPT_LENGTH = 256  # ref §4.1: --max-prompt-length 256
DEV_NUM = 1000  # ref §4.1: validation = the first 1000 raw records
PT_SEQ_LEN = 512  # ref §4.2: 512-token chunks
NEWLINE_MARKER = "<@x(x!>"  # ref §4.2: get_openwebtext.py writes runs of newlines as this marker
DEFAULT_ROOT = Path("data/prepared")
HUB_DOLLY = "MiniLLM/dolly"  # ref §4.1: raw.jsonl (train + validation) and valid.jsonl (the 500-record test set)
HUB_PT = {"gpt2": "Skylion007/openwebtext", "opt": None}  # ref §4.2; OPT's "RoBERTa corpus" has no hub copy
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
        "tokenizer": {
            "name": tokenizer_name or str(tokenizer),
            "vocab_size": len(tok),
            "eos_token_id": tok.eos_token_id,
            "bos_token_id": tok.bos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
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
# PT corpus (ref §4.2)
# --------------------------------------------------------------------------------------------------------------


def _check_pt_file(path: Path) -> Path:
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DataError(
            f"PT source {path} {what}: pass --source FILE (a text file, one document per line, newlines written as "
            f"{NEWLINE_MARKER}) or --source hub / hub:DATASET"
        )
    return path


def iter_text_documents(path) -> Iterator[str]:
    """Documents of a local text file in MiniLLM's layout: one per line, newlines as `<@x(x!>` (ref §4.2)."""
    path = _check_pt_file(Path(path))
    for _, line in _text_lines(path):
        doc = line.rstrip("\r\n").replace(NEWLINE_MARKER, "\n")
        if doc.strip():
            yield doc


def iter_hub_documents(family: str, source: str) -> Iterator[str]:
    """Documents streamed from the hub: OpenWebText for GPT-2 (ref §4.2), or `hub:DATASET` with a `text` column."""
    repo = source.partition(":")[2] or HUB_PT[family]
    if repo is None:
        raise DataError(
            "MiniLLM's OPT PT corpus (data/roberta/data.txt) has no hub copy and its composition is "
            "undocumented (ref §4.2): pass --source hub:DATASET (a dataset with a 'text' column) or "
            "--source FILE (one document per line)"
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
    family: str | None = None,
) -> dict:
    """Write stage/pt.npy with the stage's own tokenizer and record it in its manifest (callers stage it)."""
    manifest = json.loads((stage / "manifest.json").read_text(encoding="utf-8"))
    family = family or manifest["family"]
    tok = _load_tokenizer(stage / "tokenizer")
    if isinstance(source, Path) or not (source == "hub" or str(source).startswith("hub:")):
        documents = iter_text_documents(source)
        inputs = {"name": Path(source).name, "sha256": sha256_file(_check_pt_file(Path(source)))}
    else:
        documents = iter_hub_documents(family, source)
        inputs = {"name": source, "sha256": None}
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
    """Add pt.npy to a prepared dir (its own tokenizer) or create a PT-only dir with `tokenizer`."""
    _check_family(family)
    if not (source == "hub" or source.startswith("hub:")):
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
                    "tokenizer": {
                        "name": str(tokenizer),
                        "vocab_size": len(tok),
                        "eos_token_id": tok.eos_token_id,
                        "bos_token_id": tok.bos_token_id,
                        "pad_token_id": tok.pad_token_id,
                    },
                },
            )
        src = source if source == "hub" or source.startswith("hub:") else Path(source)
        write_pt(stage, src, seq_len=seq_len, max_chunks=max_chunks, family=family)
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

    def pt_chunks(self) -> np.ndarray | None:
        path = self.path / "pt.npy"
        return np.load(path) if path.is_file() else None

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
