"""Resumable checkpoints that are verified before they are loaded (tiny SFT stage, CPU, one process).

A stage keeps its newest two checkpoints, each with a manifest (size, sha256 of every file); the selected model
OUT/model has its own record (OUT/model/selection.json). A damaged newest checkpoint falls back to the one before; a
damaged selected model cannot be rebuilt from any checkpoint, so the stage starts over. Either way the stage ends with
the weights of an uninterrupted run, and metrics.jsonl / the TensorBoard events hold every step exactly once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from benchmark import scales
from benchmark.config import SFTConfig, for_scale
from benchmark.sft import train_sft

pytestmark = pytest.mark.slow
TINY = scales.scale("tiny")
CFG = for_scale(SFTConfig, TINY.sft, total_steps=12, eval_interval=4, checkpoint_interval=4, lr=1e-2)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny SFT stage trained to the end without interruption (the reference), and its data."""
    from benchmark.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("ckpt")
    prepare_synthetic("tiny", "gpt2", root / "data")
    train_sft(TINY.model("gpt2", "120M"), root / "data", root / "straight", CFG, progress=False)
    return root


def _rerun(root: Path, out: Path) -> None:
    """The same stage again, as the runner does after DONE.json is lost: it resumes from its checkpoints."""
    train_sft(TINY.model("gpt2", "120M"), root / "data", out, CFG, progress=False)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model" / "model.safetensors")


def _rows(out: Path) -> list[tuple]:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["step"]) for r in rows]


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((a / "summary.json").read_text())["best"] == json.loads((b / "summary.json").read_text())["best"]
    assert _rows(a) == _rows(b)  # every step once, in order
    assert len(set(_rows(b))) == len(_rows(b))


def test_the_newest_two_checkpoints_are_kept_with_manifests(finished):
    ckpts = sorted(p.name for p in (finished / "straight" / "checkpoints").glob("step-*"))
    assert ckpts == ["step-000008", "step-000012"]
    for name in ckpts:
        manifest = json.loads((finished / "straight" / "checkpoints" / name / "MANIFEST.json").read_text())
        assert "state/mp_rank_00_model_states.pt" in manifest and "trainer.json" in manifest
    record = json.loads((finished / "straight" / "model" / "selection.json").read_text())
    summary = json.loads((finished / "straight" / "summary.json").read_text())
    assert record["best"] == summary["best"] and "model.safetensors" in record["files"]


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(finished, tmp_path, capsys):
    out = tmp_path / "fallback"
    shutil.copytree(finished / "straight", out)
    (out / "summary.json").unlink()
    # the newest checkpoint's weights file cut short (as by a full disk or a copy interrupted)
    weights = out / "checkpoints" / "step-000012" / "state" / "mp_rank_00_model_states.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    _rerun(finished, out)
    said = capsys.readouterr().out
    assert "checkpoint" in said and "step-000012" in said and "cannot be resumed" in said
    assert "starts over" not in said
    assert list(out.glob("checkpoints.damaged-*/step-000012"))  # moved aside, never deleted
    _assert_same_run(finished / "straight", out)


def test_a_damaged_selected_model_makes_the_stage_start_over(finished, tmp_path, capsys):
    out = tmp_path / "restart"
    shutil.copytree(finished / "straight", out)
    (out / "summary.json").unlink()
    st = out / "model" / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    _rerun(finished, out)
    said = capsys.readouterr().out
    assert "damaged" in said and "starts over" in said
    _assert_same_run(finished / "straight", out)


def test_tensorboard_has_every_step_once_after_a_resume(finished, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    shutil.copytree(finished / "straight", out)
    (out / "summary.json").unlink()
    shutil.rmtree(out / "checkpoints" / "step-000012")
    (out / "checkpoints" / "latest").write_text("step-000008")
    _rerun(finished, out)  # resumes at step 8: steps 9-12 are logged again, the first time's are purged
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"] and "validation/val_loss" in acc.Tags()["scalars"]
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(1, 13))
    rows = {r[1]: r for r in _rows(out) if r[0] == "train"}
    losses = {json.loads(ln)["step"]: json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(ln)["kind"] == "train"}  # fmt: skip
    assert set(rows) == set(steps)
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([losses[s] for s in steps], rel=1e-6)
