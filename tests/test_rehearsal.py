"""The dress rehearsal's fake hub resolves offline as the real repos would; preflight lets only a rehearsal pass.

The whole rehearsal (Tables 1-4 at paper scale, minutes) is `nox -s rehearsal`, not a unit test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import data, indexed, registry, rehearsal, runner

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("rehearsal") / "hf_home"
    rehearsal.build_hub(home)
    return home


def _offline(hf_home: Path, code: str) -> dict:
    """Run `code` in a fresh interpreter with the rehearsal's environment (huggingface_hub reads HF_HOME at import)
    and return the JSON it prints last."""
    env = rehearsal.environment(hf_home) | {"PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_paper_repo_id_is_in_the_hub_layout(hf_home):
    hub = hf_home / "hub"
    for fam in registry.FAMILIES.values():
        ids = set(fam.base.values()) | {fam.teacher_sft} | set(fam.init.values()) | set(fam.minillm.values())
        for repo_id in ids:
            repo = hub / f"models--{repo_id.replace('/', '--')}"
            commit = (repo / "refs" / "main").read_text()
            snap = repo / "snapshots" / commit
            assert (snap / "config.json").is_symlink() and (snap / "config.json").resolve().parent == repo / "blobs"
            # the hub checkpoints' format: pickled .bin shards with an index, no safetensors
            assert json.loads((snap / "pytorch_model.bin.index.json").read_text())["weight_map"]
            assert (snap / "pytorch_model-00002-of-00002.bin").is_file() and (snap / "tokenizer.json").is_file()
            assert not list(snap.glob("*.safetensors"))
    for repo_id in (data.HUB_DOLLY, *(r for r, _ in data.HUB_PT.values())):
        assert (hub / f"datasets--{repo_id.replace('/', '--')}" / "refs" / "main").is_file()


def test_from_pretrained_and_snapshot_download_resolve_offline(hf_home):
    code = """
import json
from huggingface_hub import hf_hub_download, snapshot_download
from transformers import AutoModelForCausalLM, AutoTokenizer
m = AutoModelForCausalLM.from_pretrained("MiniLLM/init-OPT-1.3B")
t = AutoTokenizer.from_pretrained("MiniLLM/init-OPT-1.3B")
g = AutoTokenizer.from_pretrained("MiniLLM/teacher-gpt2-1.5B")
pt = snapshot_download("MiniLLM/roberta-corpus-processed", repo_type="dataset", allow_patterns=["opt/512/20M/train_*"])
raw = hf_hub_download("MiniLLM/dolly", "raw.jsonl", repo_type="dataset")
print(json.dumps({"type": m.config.model_type, "vocab": m.config.vocab_size, "tok": len(t), "eos": t.eos_token,
                  "gpt2_pad": g.pad_token, "gpt2_eos": g.eos_token, "pt": pt, "raw": raw}))
"""
    got = _offline(hf_home, code)
    assert got["type"] == "opt" and got["eos"] == "</s>"
    assert got["vocab"] == got["tok"] + 7  # as facebook/opt-*: 50272 rows for 50265 tokens
    assert got["gpt2_eos"] == "<|endoftext|>" and got["gpt2_pad"] is None  # openai-community/gpt2 has no pad
    assert got["pt"].startswith(str(hf_home / "hub" / "datasets--MiniLLM--roberta-corpus-processed" / "snapshots"))
    windows = indexed.open_split(Path(got["pt"]) / "opt" / "512" / "20M", "train")
    assert windows.shape == (rehearsal.PT_WINDOWS, data.PT_SEQ_LEN) and int(windows.max()) < got["tok"]
    assert len(data.read_records(got["raw"])) == rehearsal.DOLLY_COUNTS["train"]


def test_paper_data_stage_reads_the_fake_hub(hf_home, tmp_path):
    """The paper-scale data stage's own calls (prepare_dolly + prepare_pt from `hub`) for OPT."""
    code = f"""
import json
from benchmark import data
tok = "MiniLLM/teacher-OPT-13B"
data.prepare_dolly("hub", "opt", tok, {str(tmp_path / "d")!r})
p = data.prepare_pt("hub", "opt", {str(tmp_path / "d")!r}, tokenizer=tok, seq_len=512)
got = {{"pt": list(p.pt_chunks().shape), "train": len(p.split("train")), "src": p.manifest["pt"]["source"]}}
print(json.dumps(got))
"""
    got = _offline(hf_home, code)
    assert got["pt"] == [rehearsal.PT_WINDOWS, data.PT_SEQ_LEN]
    assert got["train"] > 0 and got["src"]["location"] == "hub:MiniLLM/roberta-corpus-processed"


def test_preflight_passes_paper_scale_only_inside_a_rehearsal(hf_home, monkeypatch):
    monkeypatch.setattr(runner, "_gpus", lambda: 0)
    for k, v in rehearsal.environment(hf_home).items():
        if k.startswith(("HF_", "BENCHMARK_")):
            monkeypatch.setenv(k, v)
    runner.preflight("paper")  # a rehearsal: passes without a GPU, offline
    monkeypatch.setenv("HF_HOME", str(hf_home.parent))  # the variable alone, on another cache: refused
    with pytest.raises(runner.RunError, match="no CUDA GPU"):
        runner.preflight("paper")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    (hf_home / rehearsal.MARKER).rename(hf_home / "moved.json")  # a cache this module did not build: refused
    try:
        with pytest.raises(runner.RunError, match="HF_HUB_OFFLINE"):
            runner.preflight("paper")
    finally:
        (hf_home / "moved.json").rename(hf_home / rehearsal.MARKER)
    monkeypatch.delenv(rehearsal.REHEARSAL_VAR)
    with pytest.raises(runner.RunError):
        runner.preflight("paper")
    assert os.environ.get("HF_HOME") == str(hf_home)
