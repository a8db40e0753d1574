"""Dress rehearsal of the paper path: Tables 1-4 at scale `paper`, offline, on a local fake Hugging Face hub.

    nox -s rehearsal                                  # CI: builds the hub, runs, writes paper_tables/rehearsal/
    python -m benchmark rehearsal --out runs/rehearsal --tables paper_tables/rehearsal [--targets table1 ...]

It builds `<out>/hf_home/hub` in the hub cache's own layout (`models--ORG--NAME/{blobs,refs/main,snapshots/<sha>}`,
`datasets--ORG--NAME/...`) holding, under every repo id paper scale names (registry.FAMILIES: bases, the SFT
teachers, the inits and the one-step MiniLLM students), tiny random GPT-2 and OPT models with GPT-2- and OPT-style
tokenizers; `MiniLLM/dolly` (raw.jsonl + valid.jsonl, MiniLLM's field names) from synthetic records; and MiniLLM's
processed PT corpora in their binary indexed format at the paths `data.HUB_PT` names. Then it runs `run` and
`notebooks` for the targets at scale `paper` with HF_HOME pointing there and HF_HUB_OFFLINE=1, so that hub
resolution, dataset files, tokenizers, PT loading, every trained hop, selection and every perplexity take their
paper-scale code paths; only step counts, lengths and evaluation sizes are made small, through `--set`
(REHEARSAL_OVERRIDES). What it cannot see: memory, time, numerical behaviour of the real weights, multi-GPU ranks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

from benchmark import BenchmarkError, data, indexed, registry, scales, synthetic

# `runner.preflight` lets paper scale run without a GPU and offline only while this names the HF_HOME in the
# environment and that directory holds MARKER, i.e. only inside a rehearsal on a hub this module built.
REHEARSAL_VAR = "BENCHMARK_REHEARSAL_HF_HOME"
MARKER = "rehearsal.json"
TARGETS = ("table1", "table2", "table3", "table4")
# Small where the paper is big, nothing else: the default `authors` preset (scales.PAPER_PRESETS) shrunk to 8
# rollouts x 4 PPO epochs / batch 4 = 8 steps, one phase per hop, whitened in 2 groups of 2 rollouts, validated at
# steps 0, 4 and 8 with only step 8 a selection candidate (4 is recorded as the best of the validations), a PT batch
# each step, the before/after reverse-KL measures on 8 validation prompts; one seed of 4 test prompts per
# evaluation, perplexity_text under the family's text scorer. fp32 because the paper's fp16 (ZeRO-1 fp16) is a GPU
# path; prompt (256) and PT (512) lengths stay the paper's.
REHEARSAL_OVERRIDES = {
    "minillm": {
        "total_steps": 8,
        "rollouts_per_phase": 8,
        "batch_size": 4,
        "whiten_group_size": 2,
        "warmup_steps": 2,
        "eval_interval": 4,
        "select_interval": 8,
        "val_examples": 4,
        "kl_examples": 8,
        "checkpoint_interval": 8,
        "generation": {"max_new_tokens": 16},
        "precision": "fp32",
    },
    "evaluation": {
        "seeds": [10],
        "num_examples": 4,
        "batch_size": 4,
        "generation": {"max_new_tokens": 16},
        "precision": "fp32",
    },
}
DOLLY_COUNTS = {"train": data.DEV_NUM + 100, "test": 40}  # raw.jsonl: validation = its first DEV_NUM records
PT_WINDOWS = 64
TOKENIZER_VOCAB = 1024
# Positions of the real configs: GPT-2 n_positions 1024, OPT max_position_embeddings 2048.
N_POSITIONS = {"gpt2": 1024, "opt": 2048}


class RehearsalError(BenchmarkError):
    pass


def active() -> bool:
    """True inside a rehearsal: REHEARSAL_VAR names HF_HOME, offline mode is on and HF_HOME holds MARKER."""
    home = os.environ.get(REHEARSAL_VAR)
    return bool(
        home
        and os.environ.get("HF_HOME") == home
        and os.environ.get("HF_HUB_OFFLINE") == "1"
        and (Path(home) / MARKER).is_file()
    )


# --------------------------------------------------------------------------------------------------------------
# The hub cache layout (huggingface_hub file_download: blobs by content hash, snapshots/<commit>/<path> symlinks
# to them, refs/main naming the commit)
# --------------------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def put_repo(hub: Path, repo_type: str, repo_id: str, src: Path) -> Path:
    """Copy the files under `src` into the hub cache `hub` as repo `repo_id` (`model` or `dataset`) at one commit;
    returns the snapshot directory. The commit id is derived from the files, so a rebuild gives the same ids."""
    files = sorted(p for p in Path(src).rglob("*") if p.is_file())
    digests = {p.relative_to(src).as_posix(): _sha256(p) for p in files}
    commit = hashlib.sha1(json.dumps(digests, sort_keys=True).encode()).hexdigest()
    repo = hub / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for p in files:
        rel = p.relative_to(src).as_posix()
        blob = repo / "blobs" / digests[rel]
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(p, blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


# --------------------------------------------------------------------------------------------------------------
# What goes into it
# --------------------------------------------------------------------------------------------------------------


def build_tokenizer(family: str, texts: list[str], out_dir: Path):
    """A byte-level BPE with the real tokenizer's special tokens and padding side: GPT-2 `<|endoftext|>` as
    bos/eos/unk and no pad token (openai-community/gpt2), OPT `<s>`, `<pad>`, `</s>`, `<unk>` with bos = eos =
    `</s>` (facebook/opt-*); both pad on the right."""
    from transformers import AutoTokenizer

    synthetic.train_tokenizer(texts, family, out_dir, vocab_size=TOKENIZER_VOCAB, model_max_length=N_POSITIONS[family])
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    tok.padding_side = "right"
    if family == "gpt2":
        tok.pad_token = None
    tok.save_pretrained(str(out_dir))
    return AutoTokenizer.from_pretrained(str(out_dir))


def repo_models(family: str) -> dict[str, str]:
    """{repo id: size} of every model repo paper scale names for `family`."""
    fam = registry.FAMILIES[family]
    out = {fam.base[s]: s for s in fam.sizes} | {fam.teacher_sft: fam.teacher}
    out |= {r: s for s, r in fam.init.items()} | {r: s for s, r in fam.minillm.items()}
    return out


def save_bin_shards(model, out_dir: Path, n_shards: int = 2) -> None:
    """Save `model` as the MiniLLM checkpoints are stored (transformers 4.x, e.g. MiniLLM/teacher-gpt2-1.5B and
    MiniLLM/MiniLLM-OPT-1.3B): pickled `pytorch_model-0000i-of-0000n.bin` shards, `pytorch_model.bin.index.json`,
    config.json with torch_dtype float32, generation_config.json; no safetensors (transformers 5 writes only those)."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    names = list(state)
    cut = [names[i * len(names) // n_shards : (i + 1) * len(names) // n_shards] for i in range(n_shards)]
    weight_map = {}
    for i, keys in enumerate(cut, 1):
        name = f"pytorch_model-{i:05d}-of-{n_shards:05d}.bin"
        torch.save({k: state[k].clone() for k in keys}, out_dir / name)
        weight_map |= dict.fromkeys(keys, name)
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    model.config.save_pretrained(str(out_dir))
    model.generation_config.save_pretrained(str(out_dir))


def save_model(family: str, size: str, repo_id: str, tok, out_dir: Path) -> None:
    """A random model of `size`'s tiny-scale shape (seeded by the repo id), saved with the family tokenizer in the
    hub checkpoints' format (`save_bin_shards`). OPT checkpoints carry 7 rows beyond the tokenizer, as
    facebook/opt-* and MiniLLM's OPT checkpoints do (vocab_size 50272 against 50265 tokens)."""
    spec = scales.scale("tiny").model(family, size)
    model = scales.build_model(spec, tok, N_POSITIONS[family], seed=zlib.crc32(repo_id.encode()))
    if family == "opt":
        model.resize_token_embeddings(len(tok) + 7, mean_resizing=False)
    save_bin_shards(model, out_dir)
    tok.save_pretrained(str(out_dir))


def write_dolly(out_dir: Path, seed: int = 0) -> None:
    """MiniLLM/dolly's two files from synthetic records, in its field names (instruction, input, output)."""
    recs = synthetic.generate_records(seed, DOLLY_COUNTS, answers="sentences")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, split in (("raw.jsonl", "train"), ("valid.jsonl", "test")):
        rows = [
            {"instruction": r["instruction"], "input": r["context"], "output": r["response"], "category": r["category"]}
            for r in recs[split]
        ]
        (out_dir / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_pt(family: str, tok, out_dir: Path, seed: int = 0) -> None:
    """The family's processed corpus at HUB_PT's folder: train_0/valid_0 of PT_WINDOWS uint16 windows of the
    paper's 512 tokens (process_data_pretrain.py; ref §4.2), ids < len(tok)."""
    folder = out_dir / data.HUB_PT[family][1]
    width = data.PT_SEQ_LEN
    rng = np.random.default_rng(seed)
    for split in ("train", "valid"):
        windows = rng.integers(0, len(tok), size=(PT_WINDOWS, width))
        indexed.write_indexed(folder / f"{split}_0", windows, dtype=np.uint16)


def build_hub(hf_home, seed: int = 0) -> dict:
    """Build the fake hub under `hf_home` (replacing an earlier one); returns what was written, also saved as
    `hf_home/MARKER`: {"models": {family: [repo ids]}, "datasets": [repo ids]}."""
    hf_home = Path(hf_home).absolute()
    shutil.rmtree(hf_home, ignore_errors=True)
    hf_home.mkdir(parents=True)
    hub = hf_home / "hub"
    made: dict = {"models": {}, "datasets": []}
    recs = synthetic.generate_records(seed, DOLLY_COUNTS | {"pt": 200}, answers="sentences")
    texts = [f"{r['instruction']}\n{r['context']}\n{r['response']}" for r in recs["train"]] + recs["pt"]
    with tempfile.TemporaryDirectory(dir=hf_home) as tmp:
        tmp = Path(tmp)
        write_dolly(tmp / "dolly", seed)
        put_repo(hub, "dataset", data.HUB_DOLLY, tmp / "dolly")
        made["datasets"].append(data.HUB_DOLLY)
        for family in registry.FAMILIES:
            tok = build_tokenizer(family, texts, tmp / f"tok-{family}")
            made["models"][family] = []
            for repo_id, size in repo_models(family).items():
                d = tmp / "models" / repo_id
                save_model(family, size, repo_id, tok, d)
                put_repo(hub, "model", repo_id, d)
                made["models"][family].append(repo_id)
            pt_repo = data.HUB_PT[family][0]
            write_pt(family, tok, tmp / "pt" / pt_repo, seed)
            put_repo(hub, "dataset", pt_repo, tmp / "pt" / pt_repo)
            made["datasets"].append(pt_repo)
    (hf_home / MARKER).write_text(json.dumps(made, indent=1))
    return made


def environment(hf_home) -> dict[str, str]:
    """The environment of a rehearsal's processes: the fake hub as HF_HOME, offline, no other cache variable."""
    other_caches = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE")
    env = {k: v for k, v in os.environ.items() if k not in other_caches}
    home = str(Path(hf_home).absolute())
    return env | {
        "HF_HOME": home,
        REHEARSAL_VAR: home,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def run(out, tables, targets=TARGETS, *, jobs: int | None = None) -> Path:
    """Build the fake hub in `<out>/hf_home`, run `targets` at paper scale into `<out>` and regenerate their
    tables into `tables`; returns `tables`. Both steps run as `python -m benchmark` subprocesses with
    `environment()`, as a user's command would (huggingface_hub reads HF_HOME when it is imported)."""
    out, tables = Path(out).absolute(), Path(tables).absolute()
    hf_home = out / "hf_home"
    out.mkdir(parents=True, exist_ok=True)
    build_hub(hf_home)
    env = environment(hf_home)
    sets = [f"--set={kind}={json.dumps(v)}" for kind, v in REHEARSAL_OVERRIDES.items()]
    cmd = [sys.executable, "-m", "benchmark", "run", *targets, "--scale", "paper", "--out", str(out), *sets]
    cmd += ["--jobs", str(jobs)] if jobs else []
    steps = [cmd]
    steps.append(
        [sys.executable, "-m", "benchmark", "notebooks", "--results", str(out), "--scale", "paper"]
        + ["--out", str(tables), "--overrides", json.dumps(REHEARSAL_OVERRIDES)]
        + ["--only", ",".join(t for t in targets if t in registry.ARTEFACTS)]
    )
    for step in steps:
        if subprocess.run(step, env=env).returncode:
            raise RehearsalError(f"rehearsal step failed: {' '.join(step)} (see its output above and {out})")
    return tables
