"""The trainer end to end on tiny models (CPU, DeepSpeed in one process, gloo for two).

Each test trains for seconds. Weights are compared through the DeepSpeed checkpoint of the final step (the
uninterrupted state), not the selected model, so a comparison never depends on a validation tie.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmark import scales
from benchmark.config import GenerationSettings, MiniLLMConfig, SFTConfig, for_scale
from benchmark.engine import TrainError
from benchmark.minillm import train_minillm
from benchmark.runner import free_port
from benchmark.sft import train_sft

pytestmark = pytest.mark.slow
TINY = scales.scale("tiny")
ENV = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def tiny_chain(tmp_path_factory):
    """Prepared tiny GPT-2 data, an SFT teacher (the tiny 1.5B size) and an SFT student init (the tiny 120M)."""
    from benchmark.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("chain")
    prepare_synthetic("tiny", "gpt2", root / "data")
    sft = for_scale(SFTConfig, TINY.sft, total_steps=100, eval_interval=50, lr=1e-2)
    train_sft(TINY.model("gpt2", "1.5B"), root / "data", root / "teacher", sft, progress=False)
    student_sft = dataclasses.replace(sft, total_steps=20, eval_interval=20)
    train_sft(TINY.model("gpt2", "120M"), root / "data", root / "student", student_sft, progress=False)
    return root


def _minillm(**kw) -> MiniLLMConfig:
    return for_scale(MiniLLMConfig, TINY.minillm, **kw)


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    latest = (out / "checkpoints" / "latest").read_text().strip()
    state = torch.load(
        out / "checkpoints" / latest / "state" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
    )
    return {k: v.float() for k, v in state["module"].items()}


def _train_metrics(out: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def _assert_same(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"max weight difference {worst:.3g} > {atol:g}"


def test_sft_selects_by_validation_loss_and_learns(tiny_chain):
    summary = json.loads((tiny_chain / "teacher" / "summary.json").read_text())
    assert summary["kind"] == "sft" and summary["steps"] == 100
    losses = [h["val_loss"] for h in summary["history"]]
    assert summary["best"]["val_loss"] == min(losses)
    vocab = json.loads((tiny_chain / "teacher" / "model" / "config.json").read_text())["vocab_size"]
    # far below the uniform-distribution loss log(V): the teacher learned the data
    assert summary["best"]["val_loss"] < 0.75 * float(torch.log(torch.tensor(vocab)))
    assert (tiny_chain / "teacher" / "model" / "tokenizer.json").exists()


def test_sft_pretrain_steps_come_first_and_learn_the_pt_text(tiny_chain, tmp_path):
    """pretrain_steps: LM steps on the PT chunks before SFT (models built from scratch get the pretraining real
    GPT-2/OPT had); validation and selection start with SFT; the step count spans both parts."""
    sft = for_scale(SFTConfig, TINY.sft, total_steps=20, eval_interval=10, lr=1e-2, pretrain_steps=30)
    train_sft(TINY.model("gpt2", "120M"), tiny_chain / "data", tmp_path / "pre", sft, progress=False)
    rows = [json.loads(ln) for ln in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()]
    pre = [r for r in rows if r["kind"] == "pretrain"]
    assert [r["step"] for r in pre] == list(range(1, 31))
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(31, 51))
    assert [r["step"] for r in rows if r["kind"] == "validation"] == [40, 50]
    first, last = sum(r["loss"] for r in pre[:5]) / 5, sum(r["loss"] for r in pre[-5:]) / 5
    assert last < 0.7 * first, f"PT loss {first:.2f} -> {last:.2f}"
    summary = json.loads((tmp_path / "pre" / "summary.json").read_text())
    assert summary["steps"] == 50 and summary["best"]["step"] in (40, 50)
    # without PT chunks: a clear error before any step
    bare = tmp_path / "no-pt"
    shutil.copytree(tiny_chain / "data", bare)
    (bare / "pt.npy").unlink()
    with pytest.raises(TrainError, match="needs PT chunks"):
        train_sft(TINY.model("gpt2", "120M"), bare, tmp_path / "x", sft, progress=False)
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


def test_minillm_lowers_reverse_kl_to_the_teacher(tiny_chain, tmp_path):
    cfg = _minillm(total_steps=16, eval_interval=8, lr=2e-3, checkpoint_interval=8)
    train_minillm(
        str(tiny_chain / "student" / "model"),
        str(tiny_chain / "teacher" / "model"),
        tiny_chain / "data",
        tmp_path / "hop",
        cfg,
        progress=False,
    )
    summary = json.loads((tmp_path / "hop" / "summary.json").read_text())
    history = summary["history"]
    assert [h["step"] for h in history] == [0, 8, 16]
    start, end = history[0]["val_rev_kl"], history[-1]["val_rev_kl"]
    assert end < 0.8 * start, f"reverse KL on held-out prompts {start:.3f} -> {end:.3f}"
    heldout = summary["heldout_rev_kl"]  # teacher-forced on the whole validation split, init vs selected model
    assert heldout["examples"] == 40 and heldout["selected"] < heldout["init"], heldout
    seq = summary["sequence_rev_kl"]  # MiniLLM's own objective on student samples, init vs selected model
    assert seq["examples"] == 40 and seq["seeds"] == [10, 11] and len(seq["selected"]["per_seed"]) == 2
    assert seq["selected"]["per_response"] < seq["init"]["per_response"], seq
    metrics = [json.loads(ln) for ln in (tmp_path / "hop" / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["kind"] == "train"]
    assert len(train) == 16
    for key in ("pg_loss", "reg_loss", "pt_loss", "reward", "mixed_lens", "lr", "step_s", "tokens_per_s"):
        assert all(key in m for m in train), key
    assert train[0]["lr"] == 0.0  # constant_trm warmup: the first step runs at lr 0, as the reference
    assert (tmp_path / "hop" / "model" / "model.safetensors").exists()


def test_gradient_accumulation_invariance(tiny_chain, tmp_path):
    """One micro-batch of 8 vs four of 2: the same global token-mean loss, so the same update."""
    args = (str(tiny_chain / "student" / "model"), str(tiny_chain / "teacher" / "model"), tiny_chain / "data")
    cfg = _minillm(total_steps=8, eval_interval=8, lr=2e-3)
    train_minillm(*args, tmp_path / "one", cfg, progress=False)
    train_minillm(*args, tmp_path / "four", dataclasses.replace(cfg, micro_batch_size=2), progress=False)
    # The logged loss of a step is the sum of its micro-batch losses: equal only if each micro-batch is reduced
    # by the token count of the whole mini-batch (a per-micro-batch mean or a missing 1/GA would show here).
    one, four = _train_metrics(tmp_path / "one"), _train_metrics(tmp_path / "four")
    for a, b in zip(one, four, strict=True):
        for key in ("pg_loss", "reg_loss", "pt_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), (a["step"], key)
    # ... and the updates agree up to float summation order (Adam steps are ~lr = 2e-3 per weight)
    _assert_same(_final_weights(tmp_path / "one"), _final_weights(tmp_path / "four"), atol=1e-4)


def test_heldout_reverse_kl_equals_a_per_example_loop(tiny_gpt2, tiny_opt, tiny_tokenizer):
    """Batched, padded, token-weighted KL(q||p) over gold responses == one unpadded example at a time; 0 for q = p."""
    import torch.nn.functional as F

    from benchmark.data import Example
    from benchmark.evaluate import heldout_reverse_kl

    eos, enc = tiny_tokenizer.eos_token_id, tiny_tokenizer.encode
    pairs = [("Name a fruit.", " apple"), ("List two colors please", " red, blue and green"), ("Hi", " hello")]
    examples = [Example(p, r, enc(p), enc(r) + [eos], None) for p, r in pairs]
    total, count = 0.0, 0
    for e in examples:
        ids = torch.tensor([e.prompt_ids + e.response_ids])
        P, T = len(e.prompt_ids), len(e.response_ids)
        with torch.no_grad():
            lq = F.log_softmax(tiny_gpt2(ids).logits[0, P - 1 : P - 1 + T].double(), -1)
            lp = F.log_softmax(tiny_opt(ids).logits[0, P - 1 : P - 1 + T].double(), -1)
        total, count = total + (lq.exp() * (lq - lp)).sum().item(), count + T
    got = heldout_reverse_kl(tiny_gpt2, tiny_opt, examples, eos, max_prompt_length=16, batch=2)
    assert got == pytest.approx(total / count, rel=1e-5)
    assert heldout_reverse_kl(tiny_gpt2, tiny_gpt2, examples, eos, 16, 2) == pytest.approx(0.0, abs=1e-6)


def test_sequence_reverse_kl_equals_a_per_example_loop(tiny_gpt2, tiny_opt, tiny_tokenizer):
    """Batched: one student sample per prompt and seed, sum_t KL(q||p) at its contexts == the same sample drawn
    and scored one unpadded example at a time; 0 for q = p."""
    import torch.nn.functional as F

    from benchmark.config import GenerationSettings
    from benchmark.data import Example
    from benchmark.evaluate import sequence_reverse_kl
    from benchmark.sampling import example_generators, sample

    eos, enc = tiny_tokenizer.eos_token_id, tiny_tokenizer.encode
    prompts = ["Name a fruit.", "List two colors please", "Hi"]
    examples = [Example(p, "", enc(p), [eos], None) for p in prompts]
    gen = GenerationSettings(max_new_tokens=5)
    got = sequence_reverse_kl(tiny_gpt2, tiny_opt, examples, eos, 16, gen, seeds=(3, 4), batch=2)
    per_seed, lengths = [], []
    for seed in (3, 4):
        total = 0.0
        for i, e in enumerate(examples):
            ids = torch.tensor([e.prompt_ids])
            out = sample(tiny_gpt2, ids, torch.ones_like(ids), gen, eos_token_id=eos,
                         generators=example_generators(seed, [i]))  # fmt: skip
            n = int(out.lengths[0])
            full = torch.cat([ids, out.response_ids[:, :n]], dim=1)
            P = ids.shape[1]
            with torch.no_grad():
                lq = F.log_softmax(tiny_gpt2(full).logits[0, P - 1 : P - 1 + n].double(), -1)
                lp = F.log_softmax(tiny_opt(full).logits[0, P - 1 : P - 1 + n].double(), -1)
            total += (lq.exp() * (lq - lp)).sum().item()
            lengths.append(n)
        per_seed.append(total / len(examples))
    assert got["per_seed"] == pytest.approx(per_seed, rel=1e-5)
    assert got["per_response"] == pytest.approx(sum(per_seed) / 2, rel=1e-5)
    assert got["mean_length"] == pytest.approx(sum(lengths) / len(lengths))
    assert got["per_token"] == pytest.approx(sum(per_seed) * len(examples) / sum(lengths), rel=1e-5)
    same = sequence_reverse_kl(tiny_gpt2, tiny_gpt2, examples, eos, 16, gen, seeds=(3,), batch=2)
    assert same["per_response"] == pytest.approx(0.0, abs=1e-6)


def test_teacher_logits_cache_computes_each_rollout_once(tiny_gpt2):
    """Two mini-batches sharing rows: the teacher sees each rollout once and the cache returns exactly the logits
    a fresh forward gives (rows computed in another batch: equal up to float order)."""
    from benchmark.minillm import Buffer, TeacherLogitsCache
    from benchmark.sampling import response_logits

    g = torch.Generator().manual_seed(0)
    V, N = tiny_gpt2.config.vocab_size, 6
    p_mask = torch.ones(N, 5, dtype=torch.long)
    p_mask[0, :3] = p_mask[3, :2] = 0  # left padding of different widths
    r_mask = torch.ones(N, 4)
    r_mask[1, 2:] = 0
    z = torch.zeros(N, 4)
    buf = Buffer(torch.randint(1, V, (N, 5), generator=g), p_mask, torch.randint(1, V, (N, 4), generator=g),
                 r_mask, z, z, z, torch.arange(N))  # fmt: skip
    seen = []
    hook = tiny_gpt2.register_forward_pre_hook(
        lambda m, args, kw: seen.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    cache = TeacherLogitsCache()
    first = cache.logits(tiny_gpt2, buf.take(torch.tensor([0, 1, 2, 3])))
    second = cache.logits(tiny_gpt2, buf.take(torch.tensor([4, 2, 5, 0])))
    hook.remove()
    assert seen == [4, 2]  # rows 2 and 0 come from the cache
    with torch.no_grad():
        fresh = response_logits(tiny_gpt2, buf.prompt_ids, buf.prompt_mask, buf.response_ids, buf.response_mask)
    torch.testing.assert_close(first, fresh[[0, 1, 2, 3]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, fresh[[4, 2, 5, 0]], rtol=1e-5, atol=1e-5)


def test_micro_batches_are_scored_up_to_their_longest_response(tiny_gpt2):
    """Responses are stored padded to max_new_tokens; a micro-batch is scored only up to its longest response
    (`Buffer.trimmed`). Its losses equal the full-width ones, and the teacher-logits cache serves a row computed in
    a micro-batch of another width (cut or zero-padded; the valid positions are the full-width logits)."""
    from benchmark import losses
    from benchmark.minillm import Buffer, TeacherLogitsCache
    from benchmark.sampling import response_logits

    g = torch.Generator().manual_seed(1)
    V, N, T = tiny_gpt2.config.vocab_size, 4, 6
    r_mask = torch.zeros(N, T)
    for i, n in enumerate([2, 6, 1, 3]):
        r_mask[i, :n] = 1.0
    r = torch.randn(N, T, generator=g) * r_mask
    buf = Buffer(torch.randint(1, V, (N, 5), generator=g), torch.ones(N, 5, dtype=torch.long),
                 torch.randint(1, V, (N, T), generator=g), r_mask, r, r.exp(), r, torch.arange(N))  # fmt: skip
    short, wide = buf.take(torch.tensor([0, 2])).trimmed(), buf.take(torch.tensor([1, 0])).trimmed()
    assert short.response_ids.shape == (2, 2) and wide.response_ids.shape == (2, 6)
    assert torch.equal(short.rewards, buf.rewards[[0, 2], :2]) and torch.equal(short.prompt_ids, buf.prompt_ids[[0, 2]])

    with torch.no_grad():
        full = response_logits(tiny_gpt2, buf.prompt_ids, buf.prompt_mask, buf.response_ids, buf.response_mask)
        cut = response_logits(tiny_gpt2, short.prompt_ids, short.prompt_mask, short.response_ids, short.response_mask)
    torch.testing.assert_close(cut, full[[0, 2], :2], rtol=1e-5, atol=1e-5)  # causal: padding after changes nothing
    t_full = full.flip(-1)  # any other distribution will do as the "teacher"
    kl_full = losses.single_step_kl(full[[0, 2]], t_full[[0, 2]], r_mask[[0, 2]], num_tokens=3.0)
    kl_cut = losses.single_step_kl(cut, t_full[[0, 2], :2], short.response_mask, num_tokens=3.0)
    torch.testing.assert_close(kl_cut, kl_full, rtol=1e-5, atol=1e-6)

    cache = TeacherLogitsCache()
    cache.logits(tiny_gpt2, short)  # rows 0 and 2 computed at width 2
    served = cache.logits(tiny_gpt2, wide)  # row 0 from the cache, zero-padded to width 6; row 1 fresh
    assert served.shape == (2, 6, V)
    torch.testing.assert_close(served[1, :2], full[0, :2], rtol=1e-5, atol=1e-5)
    assert torch.equal(served[1, 2:], torch.zeros(4, V))  # beyond row 0's response: masked out of every loss
    torch.testing.assert_close(served[0], full[1], rtol=1e-5, atol=1e-5)
    one = cache.logits(tiny_gpt2, buf.take(torch.tensor([2])).trimmed())  # width 1: row 2 cut from width 2
    torch.testing.assert_close(one[0], full[2, :1], rtol=1e-5, atol=1e-5)


def test_teacher_logits_cache_matches_recompute(tiny_chain, tmp_path):
    """Caching the single-step term's teacher logits across PPO epochs changes nothing but float summation order:
    the same per-step losses and the same weights as the reference's recomputation every epoch. Same for the
    chunked single-step term."""
    args = (str(tiny_chain / "student" / "model"), str(tiny_chain / "teacher" / "model"), tiny_chain / "data")
    cfg = _minillm(total_steps=8, eval_interval=8, lr=2e-3, micro_batch_size=2)
    assert cfg.ppo_epochs > 1 and cfg.cache_teacher_logits
    train_minillm(*args, tmp_path / "cached", cfg, progress=False)
    train_minillm(*args, tmp_path / "recomputed", dataclasses.replace(cfg, cache_teacher_logits=False), progress=False)
    cached, recomputed = _train_metrics(tmp_path / "cached"), _train_metrics(tmp_path / "recomputed")
    for a, b in zip(cached, recomputed, strict=True):
        for key in ("pg_loss", "reg_loss", "pt_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), (a["step"], key)
    _assert_same(_final_weights(tmp_path / "cached"), _final_weights(tmp_path / "recomputed"), atol=1e-4)
    # ... and so does computing the single-step term in chunks of 3 positions (memory only)
    train_minillm(*args, tmp_path / "chunked", dataclasses.replace(cfg, kl_chunk_size=3), progress=False)
    for a, b in zip(cached, _train_metrics(tmp_path / "chunked"), strict=True):
        assert a["reg_loss"] == pytest.approx(b["reg_loss"], rel=1e-4, abs=1e-7), a["step"]
    _assert_same(_final_weights(tmp_path / "cached"), _final_weights(tmp_path / "chunked"), atol=1e-4)


def _train_cmd(tiny_chain: Path, out: Path, overrides: dict) -> list[str]:
    return [
        "-m",
        "benchmark",
        "train",
        "minillm",
        "--student",
        str(tiny_chain / "student" / "model"),
        "--teacher",
        str(tiny_chain / "teacher" / "model"),
        "--data",
        str(tiny_chain / "data"),
        "--out",
        str(out),
        "--scale",
        "tiny",
        "--quiet",
        "--set",
        json.dumps(overrides),
    ]


def test_world_size_invariance_two_gloo_processes(tiny_chain, tmp_path):
    """torchrun with 2 CPU ranks (per-rank batch 4, rollouts split over ranks) == one process."""
    overrides = {"total_steps": 8, "eval_interval": 8, "lr": 2e-3}
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            *_train_cmd(tiny_chain, tmp_path / "two", overrides),
        ],
        check=True,
        env=ENV,
        timeout=300,
    )
    subprocess.run(
        [sys.executable, *_train_cmd(tiny_chain, tmp_path / "one", overrides)], check=True, env=ENV, timeout=300
    )
    for a, b in zip(_train_metrics(tmp_path / "one"), _train_metrics(tmp_path / "two"), strict=True):
        for key in ("pg_loss", "reg_loss", "pt_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), (a["step"], key)
    _assert_same(_final_weights(tmp_path / "one"), _final_weights(tmp_path / "two"), atol=1e-4)


def test_a_lone_process_needs_no_port_even_when_it_inherits_a_taken_one():
    """One process (no launcher, or a launcher's WORLD_SIZE=1) rendezvouses in memory: stages started side by side
    cannot collide on a port, whatever MASTER_PORT they inherit."""
    code = "from benchmark.engine import init_distributed; d = init_distributed(); print(d.rank, d.world_size)"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = ENV | dict(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(taken.getsockname()[1]))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["0", "1"]


def test_resume_after_kill_gives_the_same_weights(tiny_chain, tmp_path):
    overrides = {"total_steps": 24, "eval_interval": 8, "lr": 2e-3, "checkpoint_interval": 8}
    subprocess.run(
        [sys.executable, *_train_cmd(tiny_chain, tmp_path / "straight", overrides)], check=True, env=ENV, timeout=300
    )
    cmd = [sys.executable, *_train_cmd(tiny_chain, tmp_path / "killed", overrides)]
    proc = subprocess.Popen(cmd, env=ENV, start_new_session=True)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-run: after the first checkpoint, before the end
    proc.wait()
    assert latest.exists() and not (tmp_path / "killed" / "summary.json").exists()
    subprocess.run(cmd, check=True, env=ENV, timeout=300)
    _assert_same(_final_weights(tmp_path / "straight"), _final_weights(tmp_path / "killed"), atol=0.0)
    steps = [
        json.loads(ln)["step"]
        for ln in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
        if json.loads(ln)["kind"] == "train"
    ]
    assert steps == list(range(1, 25))  # metrics past the checkpoint were rewritten, not duplicated


def test_errors_before_any_compute(tiny_chain, tmp_path):
    from benchmark.synthetic import prepare_synthetic

    # a data directory prepared for the other family
    prepare_synthetic("tiny", "opt", tmp_path / "opt-data")
    with pytest.raises(Exception, match="prepared for opt"):
        train_minillm(
            str(tiny_chain / "student" / "model"),
            str(tiny_chain / "teacher" / "model"),
            tmp_path / "opt-data",
            tmp_path / "x",
            _minillm(),
            progress=False,
        )
    # teacher and student with different vocabularies
    other = tmp_path / "other-vocab"
    shutil.copytree(tiny_chain / "teacher" / "model", other)
    config = json.loads((other / "config.json").read_text())
    from transformers import AutoModelForCausalLM, GPT2Config

    AutoModelForCausalLM.from_config(GPT2Config(**(config | {"vocab_size": config["vocab_size"] + 7}))).save_pretrained(
        other
    )
    with pytest.raises(TrainError, match="vocabulary"):
        train_minillm(
            str(tiny_chain / "student" / "model"),
            str(other),
            tiny_chain / "data",
            tmp_path / "y",
            _minillm(),
            progress=False,
        )
    with pytest.raises(TrainError, match="cannot load model"):
        train_minillm(
            str(tmp_path / "missing"), str(other), tiny_chain / "data", tmp_path / "z", _minillm(), progress=False
        )
    assert not (tmp_path / "y" / "summary.json").exists()


ROLLOUT_PROMPTS = [[5, 17, 40, 3], [9, 2], [60, 61, 62, 63, 64, 7], [11]]


def _rollouts(student, teacher, cfg, draw_ids=(0, 1, 2, 3)):
    """collect_rollouts on ROLLOUT_PROMPTS in chunks of 2 (one process)."""
    from benchmark.engine import Dist
    from benchmark.minillm import collect_rollouts

    eos = student.config.eos_token_id
    dist = Dist(0, 1, torch.device("cpu"))
    return collect_rollouts(student, teacher, ROLLOUT_PROMPTS, list(draw_ids), cfg, eos, dist, chunk_size=2)[0]


def _first_epoch_logprobs(model, buf, temperature=1.0):
    """log q (or log p) of the stored tokens as the first PPO epoch computes them for a micro-batch holding one
    rollout chunk (`Buffer.trimmed`, `response_logits`, `token_logprobs`): the same shapes and operations, so the
    same floats on any CPU. Padded back to the stored width, 0 where the mask is 0."""
    import torch.nn.functional as F

    from benchmark import losses
    from benchmark.sampling import response_logits

    out = []
    for i in range(0, len(buf), 2):
        mb = buf.take(slice(i, i + 2)).trimmed()
        with torch.no_grad():
            logits = response_logits(model, mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask)
        lp = losses.token_logprobs(logits, mb.response_ids, temperature) * mb.response_mask
        out.append(F.pad(lp, (0, buf.response_ids.shape[1] - lp.shape[1])))
    return torch.cat(out)


def test_rollouts_are_scored_by_a_full_forward_as_the_reference_does(tiny_gpt2, tiny_opt, monkeypatch):
    """ref §1.3 steps 2, 3, 5: the stored log q, w and rewards come from one teacher-forced forward of each model
    (`rescore_rollouts`), which in half precision is exactly the log q the first PPO epoch computes (ratio = w).

    Shown without needing the decode loop's float noise (native-bf16 CPUs agree with the forward to 5e-7): in the
    "forward" run every log-prob the decode loop returns is poisoned by -3, and the stored values must still be
    what rescore_rollouts returned and equal the first epoch's log-probs; the decode-time log-probs ("decode") are
    only bounded against the forward. w and the rewards are checked against the reference's literal numbers
    (alpha 0.2, scaling 0.5, clip 100) for the default config."""
    from benchmark import minillm, sampling

    real_sample, real_rescore = sampling.sample, minillm.rescore_rollouts
    rescored = []

    def poisoned_sample(*args, **kwargs):
        out = real_sample(*args, **kwargs)
        if out.student_logprobs is not None:
            out.student_logprobs = out.student_logprobs - 3.0 * out.response_mask
        if out.teacher_logprobs is not None:
            out.teacher_logprobs = out.teacher_logprobs - 3.0 * out.response_mask
        return out

    def spy_rescore(*args, **kwargs):
        rescored.append(real_rescore(*args, **kwargs))
        return rescored[-1]

    monkeypatch.setattr(minillm, "rescore_rollouts", spy_rescore)
    for dtype in (torch.bfloat16, torch.float32):
        s, t = tiny_gpt2.to(dtype).eval(), tiny_opt.to(dtype).eval()
        cfg = MiniLLMConfig(max_prompt_length=8, generation=GenerationSettings(max_new_tokens=6))
        rescored.clear()
        dec = _rollouts(s, t, dataclasses.replace(cfg, rollout_logprobs="decode"))
        assert rescored == []  # "decode" keeps the decode loop's log-probs
        with monkeypatch.context() as m:
            m.setattr(sampling, "sample", poisoned_sample)
            fwd = _rollouts(s, t, cfg)
        assert torch.equal(fwd.response_ids, dec.response_ids)  # same draws: only the scoring differs
        mask = fwd.response_mask
        assert len(rescored) == 2  # one rescoring forward per rollout chunk ...
        assert torch.equal(fwd.old_logprobs, torch.cat([lq for lq, _ in rescored]))  # ... whose log q is stored
        lq, lp = _first_epoch_logprobs(s, fwd), _first_epoch_logprobs(t, fwd)
        torch.testing.assert_close(fwd.old_logprobs, lq, rtol=0, atol=1e-6)  # ratio = w in the first epoch
        torch.testing.assert_close(torch.cat([p for _, p in rescored]), lp, rtol=0, atol=1e-6)
        q, p = lq.double().exp(), lp.double().exp()
        w = torch.where(mask.bool(), q / (0.8 * q + 0.2 * p), 1.0)  # ref §1.3 step 6, alpha 0.2
        torch.testing.assert_close(fwd.weights.double(), w, rtol=0, atol=1e-6)
        r = ((lp - lq).double() / 0.5).clamp(-100, 100) * mask  # ref §1.3 step 7: scaling 0.5, clip 100
        torch.testing.assert_close(fwd.rewards.double(), r, rtol=0, atol=1e-5)
        # the decode loop's own log-probs: bounded only (equal up to float order in fp32; bf16 rounding otherwise,
        # measured 4.8e-4 on one CPU, 5e-7 on another, 0.005-0.014 nats per token on average on an H200)
        gap = ((dec.old_logprobs - fwd.old_logprobs) * mask).abs().max().item()
        assert gap < (1e-5 if dtype == torch.float32 else 0.1), (dtype, gap)


def test_rollouts_sample_and_weight_with_the_configured_alpha_and_reward_settings(tiny_gpt2, tiny_opt, monkeypatch):
    """Non-default alpha 0.5, reward scaling 0.25 and a reward clip that binds: the tokens are drawn from
    0.5 q + 0.5 p with the generator of (seed, global draw index), and the stored w and rewards use the same
    alpha, scaling and clip: w = q / ((1 - a) q + a p), r = clip((log p - log q) / 0.25, +-c)."""
    from benchmark import sampling
    from benchmark.sampling import example_generators, left_pad, trim_left_padding

    real_sample, calls = sampling.sample, []

    def spy_sample(*args, **kwargs):
        calls.append(kwargs)
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(sampling, "sample", spy_sample)
    s, t = tiny_gpt2, tiny_opt
    eos, draws = s.config.eos_token_id, (40, 41, 7, 8)
    cfg = MiniLLMConfig(
        max_prompt_length=8,
        generation=GenerationSettings(max_new_tokens=6),
        teacher_mixed_alpha=0.5,
        reward_scaling=0.25,
    )
    buf = _rollouts(s, t, cfg, draws)
    mixed = [c for c in calls if c["mix_alpha"] > 0]
    assert len(mixed) == 2 and all(c["mix_alpha"] == 0.5 and c["mix_model"] is t for c in mixed)
    for i in (0, 2):  # the draws: a direct teacher-mixed sample with alpha 0.5 and the (seed, draw) generators
        ids, mask = trim_left_padding(*left_pad(ROLLOUT_PROMPTS[i : i + 2], eos, 8))
        direct = real_sample(s, ids, mask, cfg.generation, eos_token_id=eos, mix_model=t, mix_alpha=0.5,
                             generators=example_generators(cfg.seed, list(draws[i : i + 2])))  # fmt: skip
        assert torch.equal(buf.response_ids[i : i + 2], direct.response_ids)
    m = buf.response_mask
    lq, lp = _first_epoch_logprobs(s, buf), _first_epoch_logprobs(t, buf)
    q, p = lq.double().exp(), lp.double().exp()
    torch.testing.assert_close(
        buf.weights.double(), torch.where(m.bool(), q / (0.5 * q + 0.5 * p), 1.0), atol=1e-5, rtol=0
    )
    x = (lp - lq).double() / 0.25 * m
    torch.testing.assert_close(buf.rewards.double(), x, atol=1e-5, rtol=0)  # |x| < 100 here: no clip
    # a clip at the median |reward| binds on half the tokens; it does not change the draws
    c = x[m.bool()].abs().median().item()
    clipped = _rollouts(s, t, dataclasses.replace(cfg, cliprange_reward=c), draws)
    assert torch.equal(clipped.response_ids, buf.response_ids)
    torch.testing.assert_close(clipped.rewards.double(), x.clamp(-c, c), atol=1e-5, rtol=0)
    assert (x.abs() > c + 0.1).sum() >= 3 and 0 < c < 100


class _Built(Exception):
    """Raised by a stand-in for engine.build_engine: the optimizer and scheduler are built, nothing runs."""


def _capture_engine(monkeypatch) -> dict:
    from benchmark import minillm, sft

    seen = {}

    def capture(model, optimizer, scheduler, ds_config):
        seen.update(model=model, optimizer=optimizer, scheduler=scheduler, ds_config=ds_config)
        raise _Built

    monkeypatch.setattr(minillm, "build_engine", capture)
    monkeypatch.setattr(sft, "build_engine", capture)
    return seen


def test_minillm_builds_the_references_optimizer_and_schedule(tiny_chain, tmp_path, monkeypatch):
    """Read back from what train_minillm builds with the default config (ref §1.5): AdamW over every parameter
    with lr 5e-6, betas (0.9, 0.95), eps 1e-8, weight decay 1e-6; constant_trm, i.e. lr x s / 100 at optimizer step
    s < 100 (the first step at 0) and constant from step 100 on."""
    seen = _capture_engine(monkeypatch)
    args = (str(tiny_chain / "student" / "model"), str(tiny_chain / "teacher" / "model"), tiny_chain / "data")
    tiny = _minillm()  # only the lengths of the tiny scale, which its models' positions must cover
    lengths = dict(
        max_prompt_length=tiny.max_prompt_length, generation=tiny.generation, pt_seq_length=tiny.pt_seq_length
    )
    with pytest.raises(_Built):
        train_minillm(*args, tmp_path / "hop", dataclasses.replace(MiniLLMConfig(), **lengths), progress=False)
    opt, sched = seen["optimizer"], seen["scheduler"]
    assert type(opt) is torch.optim.AdamW
    (group,) = opt.param_groups
    assert group["betas"] == (0.9, 0.95) and group["eps"] == 1e-8 and group["weight_decay"] == 1e-6
    assert group["initial_lr"] == 5e-6 and len(group["params"]) == len(list(seen["model"].parameters()))
    assert sched.get_last_lr() == [0.0]
    got = [5e-6 * sched.lr_lambdas[0](s) for s in range(250)]
    assert got == pytest.approx([5e-6 * min(s / 100, 1.0) for s in range(250)], rel=1e-12, abs=0)
    assert seen["ds_config"]["gradient_clipping"] == 1.0 and seen["ds_config"]["train_batch_size"] == 64


def test_sft_builds_the_references_optimizer_and_schedule(tiny_chain, tmp_path, monkeypatch):
    """Read back from what train_sft builds with the default config (ref §2.4): AdamW with default betas, lr 5e-5,
    weight decay 0.01 except GPT-2's no-decay names; cosine from lr to 1e-7 over the run, no warmup."""
    from benchmark.data import load_prepared

    seen = _capture_engine(monkeypatch)
    with pytest.raises(_Built):
        train_sft(TINY.model("gpt2", "120M"), tiny_chain / "data", tmp_path / "sft", SFTConfig(), progress=False)
    opt, sched, model = seen["optimizer"], seen["scheduler"], seen["model"]
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    for g in (decay, no_decay):
        assert g["betas"] == (0.9, 0.999) and g["initial_lr"] == 5e-5
    names = ("bias", "ln_f.weight", "ln_1.weight", "ln_2.weight", "ln_cross_attn")
    expected = {id(p) for n, p in model.named_parameters() if any(k in n for k in names)}
    assert {id(p) for p in no_decay["params"]} == expected and expected
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    total = 10 * (len(load_prepared(tiny_chain / "data").split("train")) // 32)  # 10 epochs of batch 32
    cosine = lambda s: 1e-7 + 0.5 * (5e-5 - 1e-7) * (1 + math.cos(math.pi * s / total))
    for s in (0, 1, total // 3, total // 2, total - 1, total):
        assert 5e-5 * sched.lr_lambdas[0](s) == pytest.approx(cosine(s), rel=1e-9), s
    assert sched.get_last_lr() == [5e-5, 5e-5]  # no warmup: the first step at the full rate


class _RecordingEngine:
    """What minillm_step uses of a DeepSpeed engine, around a plain model; records every micro-batch loss."""

    def __init__(self, model, micro: int, gas: int):
        self.module, self.micro, self.gas, self.losses = model, micro, gas, []

    def __call__(self, **kwargs):
        return self.module(**kwargs)

    def train_micro_batch_size_per_gpu(self) -> int:
        return self.micro

    def gradient_accumulation_steps(self) -> int:
        return self.gas

    def backward(self, loss, scale_wrt_gas):
        self.losses.append(loss.detach().double())

    def step(self):
        pass


def test_minillm_step_feeds_the_configs_settings_to_the_losses(tiny_gpt2, tiny_opt, monkeypatch, tmp_path):
    """The glue from MiniLLMConfig to the losses, with non-default values (gamma 0.5, valid-only whitening, PPO
    clip 0.1, kd_ratio 0.3, pt_coef 0.7, temperature 0.8): the advantages reaching each micro-batch and each
    micro-batch loss equal naive float64 formulas holding those literal numbers."""
    import numpy as np
    import torch.nn.functional as F

    from benchmark import minillm
    from benchmark.engine import Dist
    from benchmark.minillm import Buffer, minillm_step
    from benchmark.sampling import response_logits

    g = torch.Generator().manual_seed(3)
    V, N, P, T = tiny_gpt2.config.vocab_size, 4, 5, 6
    m = torch.zeros(N, T)
    for i, n in enumerate([6, 2, 4, 1]):
        m[i, :n] = 1.0
    p_ids, p_mask = torch.randint(1, V, (N, P), generator=g), torch.ones(N, P, dtype=torch.long)
    p_mask[1, :2] = 0
    r_ids = torch.randint(1, V, (N, T), generator=g)
    rewards = torch.randn(N, T, generator=g) * 2 * m
    w = (0.75 + 0.5 * torch.rand(N, T, generator=g)) * m + (1 - m)  # rho = w: inside and outside both clip bands
    with torch.no_grad():
        logits = response_logits(tiny_gpt2, p_ids, p_mask, r_ids, m).double() / 0.8
    old = F.log_softmax(logits, -1).gather(-1, r_ids[..., None])[..., 0].float() * m
    buf = Buffer(p_ids, p_mask, r_ids, m, old, w, rewards, torch.arange(N))
    pt_chunks = torch.randint(1, V, (8, 7), generator=g)
    gen = GenerationSettings(max_new_tokens=T, temperature=0.8)
    cfg = MiniLLMConfig(rollouts_per_phase=4, batch_size=4, gamma=0.5, whiten_include_padding=False, cliprange=0.1,
                        kd_ratio=0.3, pt_coef=0.7, generation=gen, cache_teacher_logits=False)  # fmt: skip
    seen, real = [], minillm._ppo_micro_loss
    monkeypatch.setattr(minillm, "_ppo_micro_loss", lambda *a, **k: (seen.append(a[3].double()), real(*a, **k))[1])
    engine = _RecordingEngine(tiny_gpt2, micro=2, gas=2)
    minillm_step(engine, tiny_opt, buf, cfg, 1, pt_chunks, Dist(0, 1, torch.device("cpu")), tmp_path)

    # advantages: sum_{k >= t} 0.5^(k-t) r_k / (valid tokens from t), whitened over the valid tokens only
    r, mk = rewards.double().numpy(), m.numpy()
    adv = np.array([[sum(0.5 ** (k - t) * r[b, k] for k in range(t, T)) / max(mk[b, t:].sum(), 1) for t in range(T)]
                    for b in range(N)])  # fmt: skip
    valid = adv[mk == 1]
    adv = torch.from_numpy((adv - valid.mean()) / np.sqrt(valid.var() + 1e-8))
    epoch0 = torch.randperm(8, generator=torch.Generator().manual_seed(0))  # the reference sampler's epoch 0
    n_tok, pt_rows = m.sum().item(), pt_chunks[epoch0[4:8]]  # step 1: draws 4..7 of that order
    for k, rows in enumerate(([0, 1], [2, 3])):
        mb = buf.take(torch.tensor(rows)).trimmed()
        mm, width = mb.response_mask.double(), mb.response_ids.shape[1]
        torch.testing.assert_close(seen[k], adv[rows, :width], rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            s = response_logits(tiny_gpt2, mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask)
            t = response_logits(tiny_opt, mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask)
            inp = pt_rows[rows, :-1]
            s_pt, t_pt = tiny_gpt2(input_ids=inp).logits.double(), tiny_opt(input_ids=inp).logits.double()
        log_q, log_p = F.log_softmax(s.double() / 0.8, -1), F.log_softmax(t.double(), -1)
        new = log_q.gather(-1, mb.response_ids[..., None])[..., 0]
        rho = torch.exp((new - mb.old_logprobs.double()) * mm) * mb.weights.double()
        a = adv[rows, :width]
        pg = {eps: (torch.max(-a * rho, -a * rho.clamp(1 - eps, 1 + eps)) * mm).sum() / n_tok for eps in (0.1, 0.2)}
        kl = ((log_q.exp() * (log_q - log_p)).sum(-1) * mm).sum() / n_tok
        log_q_pt, labels = F.log_softmax(s_pt, -1), pt_rows[rows, 1:]
        ce = -log_q_pt.gather(-1, labels[..., None]).sum() / (4 * 6)  # global PT tokens: 4 rows x 6 labels
        soft = -(F.softmax(t_pt, -1) * log_q_pt).sum() / (4 * 6)
        expected = pg[0.1] + kl + 0.7 * (0.7 * ce + 0.3 * soft)
        assert engine.losses[k].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6), k
        # the data tell the settings apart (measured 2e-3 and 5e-3, against a tolerance of 3e-5 on the loss)
        assert abs(pg[0.1] - pg[0.2]) > 1e-3 and abs(ce - soft) > 1e-3
    assert len(engine.losses) == 2


def test_pt_rows_walk_the_references_seeded_epoch_permutations():
    """pt_step_rows: step s takes draws s*B .. s*B+B-1 of the epoch orders laid end to end, epoch e being
    randperm(n) seeded 0 + e (DistributedSampler's default seed with set_epoch): every row once per epoch."""
    from benchmark.minillm import pt_step_rows

    n, B = 10, 4
    draws = torch.cat([pt_step_rows(n, s, B) for s in range(10)])  # 40 draws: 4 epochs, steps 2 and 7 straddle two
    assert draws.dtype == torch.int64
    for e in range(4):
        epoch = draws[e * n : (e + 1) * n]
        assert torch.equal(epoch, torch.randperm(n, generator=torch.Generator().manual_seed(e)))
        assert sorted(epoch.tolist()) == list(range(n))
    assert not torch.equal(draws[:n], draws[n : 2 * n])  # a fresh order each epoch
    big = torch.randperm(100_000, generator=torch.Generator().manual_seed(3))  # a step deep into epoch 3
    assert torch.equal(pt_step_rows(100_000, 4700, 64), big[800:864])  # draws 300800.. = epoch 3 from 800


def test_pt_rows_of_a_step_do_not_depend_on_the_world_size(tiny_gpt2, monkeypatch, tmp_path):
    """minillm_step on memory-mapped PT windows: in a world of 2 the ranks' micro-batches hold exactly the rows one
    process takes, read from the file, converted to int64 and cut to pt_seq_length (ranks run one after the other
    here, the all-reduce stubbed)."""
    import numpy as np

    from benchmark import indexed, minillm
    from benchmark.engine import Dist
    from benchmark.minillm import Buffer, minillm_step

    windows = np.arange(13 * 6).reshape(13, 6) + 50_000  # uint16 ids past int16, to see the conversion
    indexed.write_indexed(tmp_path / "train_0", windows, np.uint16)
    chunks = indexed.open_split(tmp_path)
    N, T = 8, 3
    zeros, ones = torch.zeros(N, T), torch.ones(N, T)
    ids = torch.ones(N, T, dtype=torch.long)
    buf = Buffer(ids, ids, ids, ones, zeros, ones, zeros, torch.arange(N))
    seen = []
    monkeypatch.setattr(minillm, "_ppo_micro_loss", lambda *a, **k: (seen.append(a[6]), (torch.zeros(()), {}))[1])
    monkeypatch.setattr(minillm, "all_reduce_sum", lambda x, dist: x)
    cfg = MiniLLMConfig(rollouts_per_phase=8, batch_size=8, pt_seq_length=4, pt_coef=1.0)

    def rows_seen(world: int, micro: int, gas: int) -> torch.Tensor:
        seen.clear()
        for rank in range(world):
            engine = _RecordingEngine(tiny_gpt2, micro=micro, gas=gas)
            minillm_step(engine, None, buf, cfg, 3, chunks, Dist(rank, world, torch.device("cpu")), tmp_path)
        return torch.cat(seen)

    one, two = rows_seen(1, 4, 2), rows_seen(2, 2, 2)
    perm = lambda e: torch.randperm(13, generator=torch.Generator().manual_seed(e))  # noqa: E731
    rows = torch.cat([perm(1)[11:], perm(2)[:6]])  # step 3 = draws 24..31: the end of epoch 1, then epoch 2
    assert torch.equal(one, torch.from_numpy(windows[rows.numpy(), :4])) and one.dtype == torch.int64
    assert torch.equal(two, one)


def test_run_phase_is_one_phase_reported_through_its_callbacks(tiny_gpt2, tiny_opt, tmp_path):
    """run_phase: the phase's own prompts (draws phase*R .. (phase+1)*R - 1 of the seeded order) rolled out once,
    then ppo_epochs x R / batch_size optimizer steps numbered on from `first_step`, stopping at total_steps. The
    buffer goes to on_rollouts, each step's record to on_step and into the result; nothing is written anywhere."""
    from types import SimpleNamespace

    from benchmark.engine import Dist, seeded_generator
    from benchmark.minillm import run_phase
    from benchmark.sampling import left_pad

    cfg = MiniLLMConfig(max_prompt_length=8, generation=GenerationSettings(max_new_tokens=4), rollouts_per_phase=4,
                        batch_size=2, ppo_epochs=2, total_steps=7, pt_coef=0.0)  # fmt: skip
    engine = _RecordingEngine(tiny_gpt2, micro=2, gas=1)
    engine.lr_scheduler = SimpleNamespace(get_last_lr=lambda: [0.25])
    prompts, eos = ROLLOUT_PROMPTS * 3, tiny_gpt2.config.eos_token_id
    buffers, steps = [], []
    res = run_phase(engine, tiny_opt, prompts, 1, cfg, Dist(0, 1, torch.device("cpu")), eos_token_id=eos,
                    out=tmp_path, first_step=4, on_rollouts=buffers.append, on_step=steps.append)  # fmt: skip
    (buf,) = buffers
    order = torch.randperm(len(prompts), generator=seeded_generator(cfg.seed, 0))
    assert torch.equal(buf.prompt_ids, left_pad([prompts[order[d]] for d in (4, 5, 6, 7)], eos, 8)[0])
    assert [r["step"] for r in steps] == [5, 6, 7]  # 4 steps a phase from step 4, the last one past total_steps
    assert res["steps"] == steps and len(engine.losses) == 3
    assert all(r["kind"] == "train" and r["phase"] == 1 and r["lr"] == 0.25 and r["step_s"] > 0 for r in steps)
    assert res["generated_tokens"] == int(buf.response_mask.sum()) and 0 < res["rollout_s"] < res["phase_s"]
    assert list(tmp_path.iterdir()) == []
