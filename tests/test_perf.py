"""benchmark.perf on the CPU: the workers time the trainer's own code, the aggregation computes the right figures from
known rounds, the markdown shows every measured figure. Never timings.

    OMP_NUM_THREADS=1 .nox/tests/bin/python -m pytest tests/test_perf.py -q     # about a minute on one core

Speed targets are measured by `python -m benchmark perf` on an idle machine, not asserted here. The GPU script:
tests/test_perf_gpu.py.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import re

import pytest
import torch

from benchmark import __main__ as cli
from benchmark import minillm
from benchmark.config import resolve
from benchmark.perf import cpu, gpu, report
from benchmark.perf.common import PerfError, stat

slow = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One quick tiny run of every section, workers in-process (the subprocess path is tested separately)."""
    out, work = tmp_path_factory.mktemp("perf-out"), tmp_path_factory.mktemp("perf-work")
    jpath, mpath = cpu.run_perf(
        scale="tiny", out=out, repeats=1, quick=True, work=work, isolate=False, log=lambda *a: None
    )
    return json.loads(jpath.read_text()), mpath.read_text(), jpath, work


def _positive(s: dict) -> bool:
    return s["n"] >= 1 and all(math.isfinite(v) and v > 0 for v in s["values"])


# ----------------------------------------------------------------------------------------------------------------
# The run end to end
# ----------------------------------------------------------------------------------------------------------------


@slow
def test_report_files_and_header(run):
    r, md, jpath, _ = run
    assert r["schema"] == cpu.SCHEMA
    assert jpath.name == f"{r['machine']['slug']}.json"
    assert r["protocol"] | {"scale": "tiny", "repeats": 1, "quick": True, "threads": 1} == r["protocol"]
    assert _positive(r["calibration"]["matmul_512_fp32_1thread_ms"])
    for key in ("rollouts", "training", "trl", "evaluation", "gpu"):
        assert "status" in r[key]
    assert md.startswith(f"# Performance: {r['machine']['slug']}")
    for section in ("rollouts", "training", "vs TRL", "evaluation", "gpu"):
        assert f"| {section} |" in md


@slow
def test_rollouts_decode_one_rollout_chunk_to_full_length(run):
    """The decoders get the trainer's rollout chunk (tiny: no micro-batch, so the whole mini-batch) and, with EOS
    suppressed, every one of them generates all rows x max_new_tokens."""
    ro = run[0]["rollouts"]
    cfg = resolve("minillm", "tiny")
    assert ro["status"] == "measured"
    assert ro["settings"]["batch"] == cfg.batch_size and ro["settings"]["max_new_tokens"] == 32
    assert ro["settings"]["mix_alpha"] == cfg.teacher_mixed_alpha
    assert set(ro["variants"]) == {"mixed", "student_ours", "teacher_ours", "student_hf_generate"}
    for name, v in ro["variants"].items():
        assert v["tokens"] == cfg.batch_size * cfg.generation.max_new_tokens, name
        assert _positive(v["tok_per_s"]) and _positive(v["seconds"]), name


@slow
def test_training_phase_is_the_trainers_run_phase(run, monkeypatch):
    """The timed phase is `minillm.run_phase` itself (counting wrappers see it and its `minillm_step`s called), its
    per-step times are the trainer's own step records, and they add up to the phase within its bookkeeping."""
    setup = json.loads((run[3] / "setup.json").read_text())
    phases, steps = [], []
    real_phase, real_step = minillm.run_phase, minillm.minillm_step

    def counting_phase(*args, **kwargs):
        out = real_phase(*args, **kwargs)
        phases.append((args, kwargs, out))
        return out

    def counting_step(engine, teacher, mb, cfg, step, *rest):
        steps.append(step)
        return real_step(engine, teacher, mb, cfg, step, *rest)

    monkeypatch.setattr(minillm, "run_phase", counting_phase)
    monkeypatch.setattr(minillm, "minillm_step", counting_step)
    res = cpu.worker_training(setup, 0, quick=True)
    cfg = cpu.training_config("tiny", cache=True)
    ((args, kwargs, ran),) = phases  # --quick: the measured phase only
    assert args[3] == 1 and kwargs["first_step"] == cfg.steps_per_phase
    assert steps == list(range(cfg.steps_per_phase, 2 * cfg.steps_per_phase))
    assert [s["seconds"] for s in res["steps"]] == [rec["step_s"] for rec in ran["steps"]]
    assert (res["phase_s"], res["rollout_s"]) == (ran["phase_s"], ran["rollout_s"])
    assert sum(s["response_tokens"] for s in res["steps"]) == ran["response_tokens"]
    # the rollouts and the steps are inside the phase; the rest is the loop's bookkeeping (shuffles, records)
    parts = res["rollout_s"] + sum(s["seconds"] for s in res["steps"])
    assert 0.9 * res["phase_s"] <= parts <= res["phase_s"]
    # the teacher is timed inside the steps only: tiny has a PT batch every step, so every step has teacher time
    assert cfg.pt_coef > 0
    assert all(0 < s["teacher_scoring_s"] < s["seconds"] for s in res["steps"])


@slow
def test_training_section_figures(run):
    tr = run[0]["training"]
    assert tr["status"] == "measured"
    for k in ("seconds", "rollout_s", "teacher_scoring_s", "optimisation_s", "generated_tok_per_s"):
        assert _positive(tr["phase"][k]), k
    cfg = cpu.training_config("tiny", cache=True)
    assert tr["settings"]["steps_per_phase"] == cfg.steps_per_phase == 8
    assert tr["phase"]["generated_tokens"]["values"][0] <= cfg.rollouts_per_phase * cfg.generation.max_new_tokens
    assert _positive(tr["step"]["response_tok_per_s"]) and _positive(tr["memory"]["peak_rss_mb"])


@slow
def test_teacher_logits_cache_rows(run):
    """The teacher forwards each rollout once per phase with the cache and once per PPO epoch without it (a count,
    not a timing); the PT batch (off at tiny scale unless pt_coef > 0) adds the same rows on both sides."""
    r = run[0]
    c, cfg = r["speedups"]["teacher_logits_cache"], r["training"]["settings"]
    pt_rows = cfg["steps_per_phase"] * cfg["batch_size"] if cfg["pt_coef"] > 0 else 0
    assert c["after_teacher_rows"] == cfg["rollouts_per_phase"] + pt_rows
    assert c["before_teacher_rows"] == cfg["ppo_epochs"] * cfg["rollouts_per_phase"] + pt_rows
    assert _positive(c["before_phase_s"]) and _positive(c["after_phase_s"])


@slow
def test_finished_row_compaction_decodes_the_same_tokens(run):
    """Compaction on/off decode the same tokens, and rows really stopped at different lengths."""
    r = run[0]
    c, ro = r["speedups"]["finished_row_compaction"], r["rollouts"]["settings"]
    assert c["same_tokens"] is True
    assert ro["batch"] < c["generated_tokens"] < ro["batch"] * ro["max_new_tokens"]


@slow
def test_trl_side_by_side(run):
    t = run[0]["trl"]
    if importlib.util.find_spec("trl") is None:
        assert t["status"].startswith("not measured")
        return
    assert t["status"] == "measured"
    for side in ("trl", "ours"):
        assert _positive(t[side]["s_per_step"]) and _positive(t[side]["generated_tok_per_s"])
    assert t["settings"]["prompt_tokenization_matches"] == 1.0  # both trainers see the same token ids


@slow
def test_evaluation_batch_size_changes_no_text(run):
    e = run[0]["evaluation"]
    assert e["status"] == "measured"
    assert e["settings"]["batched_batch_size"] == resolve("evaluation", "tiny").batch_size
    assert e["settings"]["seeds"] == [10] and e["settings"]["n_examples"] == 20  # --quick: first seed, <= 50
    assert e["same_rouge_l"] is True  # per-example generators: the batch size changes no text


@slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU rows")
def test_gpu_rows_not_measured_without_gpu(run):
    r, md, _, _ = run
    g = r["gpu"]
    assert g["status"] == cpu.NOT_MEASURED_GPU
    assert [row["pair"] for row in g["rows"]] == [p["name"] for p in gpu.PAIRS]
    assert md.count(cpu.NOT_MEASURED_GPU) == len(gpu.PAIRS)


@slow
def test_worker_runs_in_its_own_process(run):
    """The benchmark's default path: `python -m benchmark _perf-worker` in a fresh process, 1 thread, its result read
    back from stdout."""
    res = cpu.run_worker("evaluation_batched", run[3] / "setup.json", 0, quick=True, isolate=True)
    assert res["seconds"] > 0 and res["memory"]["peak_rss_mb"] > 0
    assert res["n_examples"] == 20 and len(res["rouge_l_per_seed"]) == 1


def _stats(node, path=()):
    """(path, STAT) of every STAT in a report."""
    if isinstance(node, dict):
        if set(node) == {"median", "min", "max", "n", "values"}:
            yield path, node
            return
        for k, v in node.items():
            yield from _stats(v, (*path, k))


@slow
def test_markdown_shows_every_measured_figure(run):
    """Every STAT of the report, given a value of its own, appears in the markdown."""
    r = copy.deepcopy(run[0])
    figures = []
    for value, (path, s) in enumerate(_stats(r), start=901):
        s.update(median=float(value), min=float(value), max=float(value), n=1, values=[float(value)])
        figures.append((path, value))
    assert len(figures) > 30
    md = report.render_markdown(r)
    missing = [".".join(path) for path, v in figures if not re.search(rf"(?<![\d.]){v}(?!\d)", md)]
    assert not missing, f"figures not in the markdown: {missing}"


# ----------------------------------------------------------------------------------------------------------------
# Aggregation: known rounds, figures computed by hand
# ----------------------------------------------------------------------------------------------------------------


def test_stat_is_median_and_range():
    assert stat([3, 1, 2]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3, "values": [3.0, 1.0, 2.0]}
    assert stat([4, 1]) | {"values": None} == {"median": 2.5, "min": 1.0, "max": 4.0, "n": 2, "values": None}
    assert stat([])["median"] is None and stat([])["n"] == 0
    assert report.fmt_stat(stat([0.5, 1.0, 2.0]), "{:.2f}") == "1.00 (0.50-2.00)"
    assert report.fmt_stat(stat([1234.4]), "{:.0f}") == "1234" and report.fmt_stat(stat([])) == "-"


SETUP = {r: {"describe": f"gpt2 {r}", "params": 10} for r in ("teacher", "student")}


def _rollout_round(mixed, student, teacher, student_tps, hf_tps) -> dict:
    def v(seconds, tps=100.0):
        return {"seconds": seconds, "tokens": 64, "tok_per_s": tps}

    return {
        "variants": {
            "mixed": v(mixed),
            "student_ours": v(student, student_tps),
            "teacher_ours": v(teacher),
            "student_hf_generate": v(1.0, hf_tps),
            "mixed_stopping": v(1.0),
            "mixed_stopping_no_compaction": v(3.0),
        },
        "batch": 4,
        "prompt_length": 16,
        "max_new_tokens": 16,
        "mix_alpha": 0.2,
    }


def test_aggregate_rollouts_ratios_within_rounds():
    rounds = [_rollout_round(3.0, 1.0, 2.0, 200.0, 100.0), _rollout_round(2.0, 1.0, 3.0, 300.0, 100.0)]
    ro = report.aggregate_rollouts(rounds, SETUP)
    ratio = ro["ratio_mixed_over_student_plus_teacher"]
    assert (ratio["median"], ratio["min"], ratio["max"]) == (0.75, 0.5, 1.0)  # 3 / (1 + 2) and 2 / (1 + 3)
    assert ro["ratio_ours_student_over_hf_generate_tok_per_s"]["median"] == 2.5  # 200/100 and 300/100
    assert ro["variants"]["student_ours"]["tok_per_s"]["median"] == 250.0
    assert "mixed_stopping" not in ro["variants"]  # reported as a speed-up instead


def _step(seconds, response, pt=0):
    return {"seconds": seconds, "response_tokens": response, "pt_tokens": pt}


def _training_round(phase_s, steps, rows=6, cache=True) -> dict:
    return {
        "phase_s": phase_s,
        "rollout_s": phase_s / 2,
        "teacher_scoring_s": 1.0,
        "optimisation_s": phase_s / 2 - 1,
        "teacher_rows": rows,
        "generated_tokens": 50,
        "steps": steps,
        "memory": {"peak_rss_mb": 100.0, "peak_delta_mb": 10.0 if cache else 30.0},
        "config": {"batch_size": 2, "max_prompt_length": 10, "cache_teacher_logits": cache},
    }


def test_aggregate_training_drops_the_first_step():
    # kept steps: 1 s / 10 tokens, 2 s / 30 tokens + 4 PT, 4 s / 20 tokens; the prompt adds 2 x 10 tokens a step
    steps = [_step(9.0, 99), _step(1.0, 10), _step(2.0, 30, pt=4), _step(4.0, 20)]
    tr = report.aggregate_training([_training_round(10.0, steps), _training_round(20.0, steps)])
    assert tr["step"]["seconds"]["median"] == 2.0
    assert tr["step"]["response_tok_per_s"]["median"] == 10.0  # median of 10, 15, 5
    assert tr["step"]["processed_tok_per_s"]["median"] == 27.0  # median of 30/1, 54/2, 40/4
    assert tr["phase"]["generated_tok_per_s"]["values"] == [5.0, 2.5]
    assert tr["phase"]["seconds"]["median"] == 15.0


def test_aggregate_speedups_pair_rounds():
    """The phase speed-up is the median of per-round ratios (2 and 3), not the ratio of medians (6.5 / 2.5)."""
    after = [_training_round(2.0, [], rows=6), _training_round(3.0, [], rows=6)]
    before = [_training_round(4.0, [], rows=24, cache=False), _training_round(9.0, [], rows=24, cache=False)]
    rollouts = [_rollout_round(3.0, 1.0, 2.0, 200.0, 100.0)]
    sp = report.aggregate_speedups({"training": after, "training_recompute": before, "rollouts": rollouts})
    c = sp["teacher_logits_cache"]
    assert c["phase_speedup"]["median"] == 2.5 and c["phase_speedup"]["values"] == [2.0, 3.0]
    assert (c["before_teacher_rows"], c["after_teacher_rows"]) == (24, 6)
    assert (c["before_peak_delta_mb"]["median"], c["after_peak_delta_mb"]["median"]) == (30.0, 10.0)
    f = sp["finished_row_compaction"]
    assert f["speedup"]["median"] == 3.0 and f["same_tokens"] is True and f["generated_tokens"] == 64
    assert report.aggregate_speedups({"training": [], "rollouts": []}) == {"status": "not run (--only)"}


def _side(s_per_step, tokens, note="n") -> dict:
    memory = {"peak_rss_mb": 100.0, "peak_delta_mb": 10.0}
    return {
        "s_per_step": s_per_step,
        "generate_s": [0.5],
        "generated_tokens": tokens,
        "memory": memory,
        "note": note,
        "prompt_tokenization_matches": 1.0,
    }


def test_aggregate_trl_pairs_rounds():
    trl = [_side([2.0], [20]), _side([4.0], [20])]
    ours = [_side([1.0], [10]), _side([4.0], [40])]
    t = report.aggregate_trl(trl, ours, SETUP, {"batch_size": 4})
    assert t["ratio_ours_over_trl_s_per_step"]["values"] == [0.5, 1.0]  # paired: 1/2, 4/4
    assert t["ratio_of_medians"] == pytest.approx(2.5 / 3.0)
    assert t["ours"]["generated_tok_per_s"]["values"] == [10.0, 10.0]
    assert t["trl"]["generated_tok_per_s"]["values"] == [10.0, 5.0]
    assert t["settings"]["batch_size"] == 4 and t["settings"]["prompt_tokenization_matches"] == 1.0


def _eval_round(seconds, rouge) -> dict:
    memory = {"peak_rss_mb": 100.0}
    return {
        "seconds": seconds,
        "batch_size": 20,
        "n_examples": 20,
        "seeds": [10],
        "rouge_l_per_seed": rouge,
        "memory": memory,
    }


def test_aggregate_evaluation_pairs_rounds_and_compares_rouge():
    batched, single = (
        [_eval_round(2.0, [0.5]), _eval_round(4.0, [0.5])],
        [_eval_round(6.0, [0.5]), _eval_round(8.0, [0.5])],
    )
    e = report.aggregate_evaluation(batched, single, SETUP, True)
    assert e["ratio_single_over_batched"]["values"] == [3.0, 2.0] and e["ratio_single_over_batched"]["median"] == 2.5
    assert e["same_rouge_l"] is True
    differs = report.aggregate_evaluation([_eval_round(2.0, [0.5])], [_eval_round(6.0, [0.4])], SETUP, False)
    assert differs["same_rouge_l"] is False


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def test_cli_options():
    from benchmark.__main__ import build_parser

    args = build_parser().parse_args(["perf", "--scale", "tiny", "--only", "rollouts,trl", "--quick"])
    assert args.func is cli.cmd_perf and cli.parse_only(args.only) == ("rollouts", "trl")
    with pytest.raises(PerfError):
        cli.parse_only("rollouts,gpu")
    args = build_parser().parse_args(["perf-gpu", "--dry-run", "--pairs", "gpt2 1.5B>120M", "--out", "x"])
    assert args.func is cli.cmd_perf_gpu and args.dry_run and args.pairs == "gpt2 1.5B>120M"
    args = build_parser().parse_args([cpu.WORKER_VERB, "training", "--setup", "s.json", "--round", "2"])
    assert args.func is cli.cmd_perf_worker and (args.name, args.round, args.quick) == ("training", 2, False)
