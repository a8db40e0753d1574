"""MiniLLM's binary indexed token files, read memory-mapped: the processed PT corpora on the hub.

    MiniLLM/openwebtext-processed      train_0.bin  train_0.idx  valid_0.bin  valid_0.idx   (GPT-2, 512-token windows)
    MiniLLM/roberta-corpus-processed   opt/512/...  the same files for OPT

The format is the `mmap` one of the reference's `data_utils/indexed_dataset.py` (LMOps `minillm/`), written by
`tools/process_data_pretrain.py` and read by `data_utils/distributed_indexed.py`:

    <prefix>.bin   every item's tokens, item after item, little-endian, no header
    <prefix>.idx   offset 0   9 B   magic b"MMIDIDX\\x00\\x00"
                   offset 9   8 B   version, <Q, always 1
                   offset 17  1 B   dtype code, <B (DTYPES; 8 = uint16 for GPT-2, OPT and LLaMA vocabularies)
                   offset 18  8 B   N = number of items, <Q
                   offset 26  8 B   D = length of doc_idx, <Q
                   offset 34        sizes, int32 [N] (tokens per item)
                   then             pointers, int64 [N], byte offsets of the items in .bin
                   then             doc_idx, int64 [D] ([0] for the PT tools: they never end a document)

A split is the shards `<dir>/<split>_0`, `<split>_1`, ... read as one dataset in that order, as the reference's
DistributedMMapIndexedDataset does (distributed_indexed.py:136-142). Nothing is ever read whole: `read_index`
maps the index, `open_windows` maps the tokens as a 2-D array of fixed-length windows.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark import BenchmarkError

MAGIC = b"MMIDIDX\x00\x00"  # indexed_dataset.py:359 (_HDR_MAGIC)
VERSION = 1
# indexed_dataset.py:113-123 (identical in distributed_indexed.py:26-36)
DTYPES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float32,
    7: np.float64,
    8: np.uint16,
    9: np.uint32,
}
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, N, D: 34 bytes


class IndexedFileError(BenchmarkError, ValueError):
    """A missing, truncated or foreign indexed file: the message names the file, what was expected and found."""


def _code(dtype) -> int:
    dtype = np.dtype(dtype)
    for code, known in DTYPES.items():
        if np.dtype(known) == dtype:
            return code
    raise ValueError(f"dtype {dtype} has no code in MiniLLM's indexed format; use one of {_names()}")


def _names() -> str:
    return ", ".join(f"{c}={np.dtype(t).name}" for c, t in DTYPES.items())


def write_indexed(prefix, items: Iterable, dtype=np.uint16) -> tuple[Path, Path]:
    """Write `items` (1-D integer sequences) as `<prefix>.bin` and `<prefix>.idx`, byte for byte as the reference's
    MMapIndexedDatasetBuilder + Index.writer do (indexed_dataset.py:362-405, 562-593), with doc_idx [0] as
    process_data_pretrain.py leaves it. Values that do not fit `dtype` are refused, not wrapped."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(dtype).newbyteorder("<")
    code = _code(dtype)
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    sizes = []
    with open(prefix.with_name(prefix.name + ".bin"), "wb") as f:
        for k, item in enumerate(items):
            a = np.asarray(item)
            if a.ndim != 1:
                raise ValueError(f"item {k}: expected a 1-D sequence of token ids, got shape {a.shape}")
            if info is not None and a.size and (a.min() < info.min or a.max() > info.max):
                raise ValueError(f"item {k}: values {a.min()}..{a.max()} do not fit {dtype.name}")
            f.write(a.astype(dtype).tobytes(order="C"))
            sizes.append(a.size)
    sizes_arr = np.asarray(sizes, dtype="<i4")
    pointers = np.zeros(len(sizes), dtype="<i8")
    if len(sizes) > 1:
        pointers[1:] = np.cumsum(sizes_arr[:-1], dtype=np.int64) * dtype.itemsize
    doc_idx = np.zeros(1, dtype="<i8")
    with open(prefix.with_name(prefix.name + ".idx"), "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, code, len(sizes), len(doc_idx)))
        f.write(sizes_arr.tobytes() + pointers.tobytes() + doc_idx.tobytes())
    return prefix.with_name(prefix.name + ".bin"), prefix.with_name(prefix.name + ".idx")


@dataclass(frozen=True)
class Index:
    """One `.idx` file, its arrays read-only views of a memory map of the file."""

    path: Path
    dtype: np.dtype  # of the tokens in the matching .bin (little-endian)
    sizes: np.ndarray  # int32 [N]: tokens per item
    pointers: np.ndarray  # int64 [N]: byte offset of each item in .bin
    doc_idx: np.ndarray  # int64 [D]

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def bin_bytes(self) -> int:
        """The size the matching .bin must have: the end of its last item."""
        return int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize if len(self) else 0


def _map(path: Path):
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""


def read_index(path) -> Index:
    """Open an `.idx` file memory-mapped; IndexedFileError says what is wrong with a bad one (expected vs found)."""
    path = Path(path)
    if not path.is_file():
        raise IndexedFileError(f"{path}: no such index file")
    size = path.stat().st_size
    if size < HEADER.size:
        raise IndexedFileError(
            f"{path}: {size} bytes, shorter than the {HEADER.size}-byte header of MiniLLM's indexed format: truncated; "
            "download or write it again"
        )
    buf = _map(path)
    magic, version, code, n, d = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        legacy = (
            " (the legacy fairseq format, which the PT tools do not write)"
            if magic.startswith(b"TNTIDX\x00\x00")
            else ""
        )
        raise IndexedFileError(
            f"{path}: not a MiniLLM mmap index: starts with {magic!r}{legacy}, expected {MAGIC!r} "
            "(data_utils/indexed_dataset.py); pass the .idx written by tools/process_data_pretrain.py"
        )
    if version != VERSION:
        raise IndexedFileError(f"{path}: index version {version}, expected {VERSION} (the only version MiniLLM writes)")
    if code not in DTYPES:
        raise IndexedFileError(f"{path}: unknown dtype code {code} at byte 17; the codes are {_names()}")
    want = HEADER.size + 12 * n + 8 * d
    if size != want:
        raise IndexedFileError(
            f"{path}: {size} bytes, expected {want} for its header's {n} items and {d} document indices "
            f"({HEADER.size} + 12 x {n} + 8 x {d}): {'truncated' if size < want else 'trailing bytes'}; "
            "download or write it again"
        )
    return Index(
        path=path,
        dtype=np.dtype(DTYPES[code]).newbyteorder("<"),
        sizes=np.frombuffer(buf, dtype="<i4", count=n, offset=HEADER.size),
        pointers=np.frombuffer(buf, dtype="<i8", count=n, offset=HEADER.size + 4 * n),
        doc_idx=np.frombuffer(buf, dtype="<i8", count=d, offset=HEADER.size + 12 * n),
    )


def read_items(prefix) -> tuple[Index, np.ndarray]:
    """(index, .bin tokens as one flat memory-mapped array): item i is `tokens[p : p + sizes[i]]` with
    p = pointers[i] // itemsize. Checks that the .bin ends where the index says its last item ends."""
    prefix = Path(prefix)
    index = read_index(prefix.with_name(prefix.name + ".idx"))
    bin_path = prefix.with_name(prefix.name + ".bin")
    if not bin_path.is_file():
        raise IndexedFileError(f"{bin_path}: missing beside {index.path.name}; download or write it again")
    found = bin_path.stat().st_size
    if found != index.bin_bytes:
        raise IndexedFileError(
            f"{bin_path}: {found} bytes, expected {index.bin_bytes} (the end of the last of the {len(index)} items "
            f"in {index.path.name}): {'truncated' if found < index.bin_bytes else 'trailing bytes'}; "
            "download or write it again"
        )
    if found == 0:
        return index, np.zeros(0, dtype=index.dtype)
    return index, np.memmap(bin_path, dtype=index.dtype, mode="r")


def shard_prefixes(directory, split: str) -> list[Path]:
    """`<directory>/<split>_0`, `<split>_1`, ... up to the first shard absent (distributed_indexed.py:136-142); a
    shard with only one of its .bin/.idx is an error, not the end (the reference would stop there silently)."""
    directory, found = Path(directory), []
    while True:
        prefix = directory / f"{split}_{len(found)}"
        have = [prefix.with_name(prefix.name + s).is_file() for s in (".bin", ".idx")]
        if not any(have):
            return found
        if not all(have):
            missing = prefix.with_name(prefix.name + (".idx" if have[0] else ".bin"))
            raise IndexedFileError(f"{missing}: missing beside its pair; download or write shard {prefix.name} again")
        found.append(prefix)


def open_windows(prefix) -> np.memmap:
    """A shard of fixed-length windows (the PT tools cut the token stream into `max_length` windows) as a
    memory-mapped [N, L] array; IndexedFileError if its items differ in length or are not laid end to end."""
    index, tokens = read_items(prefix)
    if len(index) == 0:
        raise IndexedFileError(f"{index.path}: no items; a PT corpus needs at least one window")
    width = int(index.sizes[0])
    if int(index.sizes.min()) != width or int(index.sizes.max()) != width or width == 0:
        raise IndexedFileError(
            f"{index.path}: items of {index.sizes.min()}..{index.sizes.max()} tokens; PT windows all have the "
            "same length (process_data_pretrain.py cuts 512-token windows): is this a Dolly file?"
        )
    if int(index.pointers[0]) != 0 or int(index.pointers[-1]) != (len(index) - 1) * width * index.dtype.itemsize:
        raise IndexedFileError(f"{index.path}: pointers do not lay the windows end to end in the .bin")
    return tokens.reshape(len(index), width)


class ConcatRows:
    """Rows of several [N_k, L] arrays (memory-mapped shards) as one [sum N_k, L] array-like. Indexing with rows
    (an int, a slice or an integer array) and optionally columns reads only those rows; nothing is concatenated."""

    def __init__(self, parts: list):
        widths = {p.shape[1] for p in parts}
        if not parts or len(widths) != 1:
            raise IndexedFileError(f"shards of different window lengths {sorted(widths)} cannot be read as one")
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.dtype = parts[0].dtype
        self.shape = (int(self.offsets[-1]), widths.pop())

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ConcatRows({len(self.parts)} shards, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key):
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        if isinstance(rows, (int, np.integer)):
            i = int(rows) + (len(self) if rows < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"row {rows} out of range for {len(self)} rows")
            k = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return np.asarray(self.parts[k][i - self.offsets[k]])[cols]
        idx = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        idx = np.where(idx < 0, idx + len(self), idx)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"rows out of range for {len(self)} rows")
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((idx.size, self.shape[1]), dtype=self.dtype)
        for k in np.unique(shard):
            sel = shard == k
            out[sel] = self.parts[k][idx[sel] - self.offsets[k]]
        return out.reshape(np.shape(idx) + (self.shape[1],))[..., cols]

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate([np.asarray(p) for p in self.parts])
        return out if dtype is None else out.astype(dtype)


def open_split(directory, split: str = "train", max_rows: int | None = None, width: int | None = None):
    """The windows of `<directory>/<split>_*` as one memory-mapped [rows, width] array-like: an np.memmap for one
    shard, a ConcatRows for several; the first `max_rows` rows when given, the first `width` tokens of each window
    when given (IndexedFileError if the windows are shorter)."""
    prefixes = shard_prefixes(directory, split)
    if not prefixes:
        raise IndexedFileError(f"{Path(directory) / f'{split}_0'}.bin/.idx: no such files")
    parts, left = [], max_rows
    for prefix in prefixes:
        if left is not None and left <= 0:
            break
        windows = open_windows(prefix)
        if width is not None and windows.shape[1] < width:
            raise IndexedFileError(
                f"{prefix}.idx: windows of {windows.shape[1]} tokens, shorter than the {width} asked for (--seq-len)"
            )
        windows = windows[:left, :width]
        parts.append(windows)
        left = None if left is None else left - len(windows)
    return parts[0] if len(parts) == 1 else ConcatRows(parts)


def split_record(directory, split: str, n_shards: int) -> dict:
    """A cheap identity of the first `n_shards` shards of a split: where they lie, their file sizes and the sha256
    of their .idx files (never of the multi-GB .bin). `open_recorded` checks the sizes before reading."""
    directory = Path(directory)
    shards = []
    for prefix in shard_prefixes(directory, split)[:n_shards]:
        idx, bin_ = prefix.with_name(prefix.name + ".idx"), prefix.with_name(prefix.name + ".bin")
        with open(idx, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        shards.append(
            {
                "name": prefix.name,
                "bin_bytes": bin_.stat().st_size,
                "idx_bytes": idx.stat().st_size,
                "idx_sha256": digest,
            }
        )
    return {"dir": str(directory.absolute()), "split": split, "shards": shards}


def open_recorded(record: dict, max_rows: int | None = None, width: int | None = None):
    """`open_split` on the shards of a `split_record`, after checking that each file still has its recorded size
    (IndexedFileError naming the file otherwise: the corpus moved, was replaced or was cut short)."""
    directory = Path(record["dir"])
    for shard in record["shards"]:
        for ext in (".bin", ".idx"):
            f, want = directory / (shard["name"] + ext), shard[ext[1:] + "_bytes"]
            found = f.stat().st_size if f.is_file() else None
            if found != want:
                raise IndexedFileError(
                    f"{f}: {'missing' if found is None else f'{found} bytes'}, {want} bytes when recorded: the corpus "
                    "moved, was replaced or was cut short since"
                )
    return open_split(directory, record["split"], max_rows=max_rows, width=width)
