"""benchmark.indexed: MiniLLM's binary indexed token files (the processed PT corpora), written and read back.

    OMP_NUM_THREADS=1 .venv/bin/pytest tests/test_indexed.py -q     # about a second, no network

The layout checked byte by byte is the reference's (LMOps minillm/data_utils/indexed_dataset.py:362-405, 562-593).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from benchmark import indexed


def _windows(n: int, width: int, start: int = 0) -> np.ndarray:
    return (np.arange(n * width).reshape(n, width) + start) % 50_000


@pytest.mark.parametrize("dtype, code", [(np.uint16, 8), (np.int32, 4)])
def test_written_bytes_follow_the_reference_layout(tmp_path, dtype, code):
    items = [np.array([5, 6, 7]), np.array([40_000]), np.array([], dtype=np.int64), np.array([1, 2, 3, 4, 9])]
    bin_path, idx_path = indexed.write_indexed(tmp_path / "train_0", items, dtype)
    raw, itemsize = idx_path.read_bytes(), np.dtype(dtype).itemsize
    n = len(items)
    assert raw[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack_from("<Q", raw, 9) == (1,)  # version
    assert raw[17] == code  # dtype code (8 = uint16, 4 = int32)
    assert struct.unpack_from("<QQ", raw, 18) == (n, 1)  # N items, D = len(doc_idx)
    sizes = struct.unpack_from(f"<{n}i", raw, 34)
    pointers = struct.unpack_from(f"<{n}q", raw, 34 + 4 * n)
    assert sizes == (3, 1, 0, 5)
    assert pointers == (0, 3 * itemsize, 4 * itemsize, 4 * itemsize)  # byte offsets, not token offsets
    assert struct.unpack_from("<q", raw, 34 + 12 * n) == (0,)  # doc_idx [0], as process_data_pretrain.py leaves it
    assert len(raw) == 34 + 12 * n + 8
    little = np.dtype(dtype).newbyteorder("<")
    assert bin_path.read_bytes() == np.concatenate(items).astype(little).tobytes()

    index, tokens = indexed.read_items(tmp_path / "train_0")
    assert index.dtype == little and len(index) == n and index.doc_idx.tolist() == [0]
    got = [tokens[p // itemsize : p // itemsize + s].tolist() for p, s in zip(index.pointers, index.sizes)]
    assert got == [list(i) for i in items]


def test_shards_read_as_one_split_memory_mapped(tmp_path):
    parts = [_windows(5, 6), _windows(3, 6, 1000), _windows(4, 6, 2000)]
    for k, part in enumerate(parts):
        indexed.write_indexed(tmp_path / f"train_{k}", part)
    whole = np.concatenate(parts)

    rows = indexed.open_split(tmp_path, "train")
    assert isinstance(rows, indexed.ConcatRows) and rows.shape == (12, 6) and len(rows) == 12
    assert all(isinstance(p, np.memmap) for p in rows.parts)  # mapped, not loaded
    pick = np.array([11, 0, 5, 7, 4, 8, 3])  # across every shard boundary, out of order
    assert np.array_equal(rows[pick], whole[pick])
    assert np.array_equal(rows[3:9, :2], whole[3:9, :2])
    assert np.array_equal(rows[-1], whole[-1]) and np.array_equal(np.asarray(rows), whole)
    with pytest.raises(IndexError):
        rows[np.array([12])]

    capped = indexed.open_split(tmp_path, "train", max_rows=7, width=4)  # the cap reaches into shard 1 only
    assert capped.shape == (7, 4) and len(capped.parts) == 2
    assert np.array_equal(capped[np.arange(7)], whole[:7, :4])

    one = indexed.open_split(tmp_path, "train", max_rows=4)  # inside shard 0: the memmap itself
    assert isinstance(one, np.memmap) and Path(one.filename) == (tmp_path / "train_0.bin").resolve()
    assert np.array_equal(one, whole[:4])
    with pytest.raises(indexed.IndexedFileError, match="shorter than the 8 asked for"):
        indexed.open_split(tmp_path, "train", width=8)


def test_shards_stop_at_the_first_gap_and_a_half_shard_is_an_error(tmp_path):
    indexed.write_indexed(tmp_path / "train_0", _windows(2, 4))
    indexed.write_indexed(tmp_path / "train_2", _windows(2, 4))  # no train_1: the reference stops before it
    assert [p.name for p in indexed.shard_prefixes(tmp_path, "train")] == ["train_0"]
    indexed.write_indexed(tmp_path / "train_1", _windows(2, 4))
    (tmp_path / "train_1.bin").unlink()
    with pytest.raises(indexed.IndexedFileError, match=r"train_1\.bin: missing beside its pair"):
        indexed.shard_prefixes(tmp_path, "train")
    with pytest.raises(indexed.IndexedFileError, match=r"valid_0\.bin/\.idx: no such files"):
        indexed.open_split(tmp_path, "valid")


def _corrupt(path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda d: _corrupt(d / "train_0.idx", 0, b"NOTANIDX\x00"),
            r"starts with b'NOTANIDX\\x00', expected b'MMIDIDX",
        ),
        (lambda d: _corrupt(d / "train_0.idx", 0, b"TNTIDX\x00\x00"), r"legacy fairseq format"),
        (lambda d: _corrupt(d / "train_0.idx", 9, struct.pack("<Q", 2)), r"index version 2, expected 1"),
        (lambda d: _corrupt(d / "train_0.idx", 17, bytes([10])), r"unknown dtype code 10 at byte 17"),
        (
            lambda d: (d / "train_0.idx").write_bytes((d / "train_0.idx").read_bytes()[:-8]),
            r"train_0\.idx: 94 bytes, expected 102 for its header's 5 items and 1 document indices .*truncated",
        ),
        (
            lambda d: (d / "train_0.idx").write_bytes(b"MMIDIDX"),
            r"train_0\.idx: 7 bytes, shorter than the 34-byte header",
        ),
        (
            lambda d: (d / "train_0.bin").write_bytes((d / "train_0.bin").read_bytes()[:-2]),
            r"train_0\.bin: 38 bytes, expected 40 \(the end of the last of the 5 items in train_0\.idx\): truncated",
        ),
    ],
    ids=["magic", "legacy-magic", "version", "dtype-code", "truncated-idx", "header-only", "truncated-bin"],
)
def test_a_bad_file_says_which_and_what_was_expected(tmp_path, damage, message):
    indexed.write_indexed(tmp_path / "train_0", _windows(5, 4))
    damage(tmp_path)
    with pytest.raises(indexed.IndexedFileError, match=message):
        indexed.open_split(tmp_path, "train")


def test_windows_must_share_one_length_and_values_must_fit(tmp_path):
    indexed.write_indexed(tmp_path / "train_0", [np.arange(4), np.arange(3)])
    with pytest.raises(indexed.IndexedFileError, match="items of 3..4 tokens"):
        indexed.open_windows(tmp_path / "train_0")
    with pytest.raises(ValueError, match="values 0..70000 do not fit uint16"):
        indexed.write_indexed(tmp_path / "x", [np.array([0, 70_000])], np.uint16)


def test_recorded_split_refuses_files_changed_since(tmp_path):
    indexed.write_indexed(tmp_path / "train_0", _windows(5, 4))
    record = indexed.split_record(tmp_path, "train", 1)
    assert record["shards"][0]["bin_bytes"] == 40 and record["shards"][0]["idx_bytes"] == 34 + 12 * 5 + 8
    assert np.array_equal(indexed.open_recorded(record, max_rows=3, width=2), _windows(5, 4)[:3, :2])
    indexed.write_indexed(tmp_path / "train_0", _windows(6, 4))  # replaced by another corpus
    with pytest.raises(indexed.IndexedFileError, match=r"train_0\.bin: 48 bytes, 40 bytes when recorded"):
        indexed.open_recorded(record)
