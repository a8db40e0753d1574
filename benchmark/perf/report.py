"""The CPU benchmark's figures from its workers' rounds (`aggregate_*`: medians and ranges over rounds, ratios
paired per round) and the markdown table that shows every one of them (`render_markdown`)."""

from __future__ import annotations

import statistics

from benchmark.perf.common import STOP_MEAN_LENGTH, stat

# ----------------------------------------------------------------------------------------------------------------
# Aggregation over rounds
# ----------------------------------------------------------------------------------------------------------------


def aggregate_rollouts(rounds: list[dict], setup: dict) -> dict:
    """The decoders' tok/s and seconds over rounds, mixed / (student + teacher) and our loop / HF generate, each
    ratio taken within a round."""
    first = rounds[0]
    names = [n for n in first["variants"] if "stopping" not in n]  # the stopping pair is reported in speedups
    variants = {
        n: {
            "tok_per_s": stat(r["variants"][n]["tok_per_s"] for r in rounds),
            "seconds": stat(r["variants"][n]["seconds"] for r in rounds),
            "tokens": first["variants"][n]["tokens"],
        }
        for n in names
    }
    ratio = [
        r["variants"]["mixed"]["seconds"]
        / (r["variants"]["student_ours"]["seconds"] + r["variants"]["teacher_ours"]["seconds"])
        for r in rounds
    ]
    ours_vs_hf = [
        r["variants"]["student_ours"]["tok_per_s"] / r["variants"]["student_hf_generate"]["tok_per_s"] for r in rounds
    ]
    alpha = first["mix_alpha"]
    return {
        "status": "measured",
        "settings": {
            "teacher": setup["teacher"]["describe"] + f" ({setup['teacher']['params']:,} params, random weights)",
            "student": setup["student"]["describe"] + f" ({setup['student']['params']:,} params, random weights)",
            "batch": first["batch"],
            "prompt_length": f"{first['prompt_length']} (left-padded with EOS, real synthetic train prompts)",
            "max_new_tokens": first["max_new_tokens"],
            "mix_alpha": alpha,
            "sampling": "temperature 1, top-k 0, top-p 1; EOS suppressed (logit -inf in ours, min_new_tokens in HF)",
            "mixed": f"sample(student, mix_model=teacher, mix_alpha={alpha}, return_logprobs=True, per-row "
            "generators): the trainer's rollout call on one rollout chunk (its training micro-batch)",
            "alone": "sample(model) without mixing or log-probs (per-row generators); HF generate(do_sample=True, "
            "top_k=0, top_p=1.0, use_cache=True) on the same padded prompts",
            "tokens": "generated tokens counted from the outputs (all rows x max_new_tokens)",
        },
        "variants": variants,
        "ratio_mixed_over_student_plus_teacher": stat(ratio),
        "ratio_ours_student_over_hf_generate_tok_per_s": stat(ours_vs_hf),
    }


def kept_steps(r: dict) -> list:
    """A phase's steps without the first (warm-up of the optimizer state and the teacher-logits cache)."""
    return r["steps"][1:] if len(r["steps"]) > 1 else r["steps"]


def aggregate_training(rounds: list[dict]) -> dict:
    """Per round the median step (first dropped) and the phase's split; then medians and ranges over rounds."""
    cfg = rounds[0]["config"]
    step_s = [statistics.median(s["seconds"] for s in kept_steps(r)) for r in rounds]
    step_tok = [statistics.median(s["response_tokens"] / s["seconds"] for s in kept_steps(r)) for r in rounds]
    step_all_tok = [
        statistics.median(
            (s["response_tokens"] + cfg["batch_size"] * cfg["max_prompt_length"] + s["pt_tokens"]) / s["seconds"]
            for s in kept_steps(r)
        )
        for r in rounds
    ]
    return {
        "status": "measured",
        "settings": cfg
        | {
            "driver": "the trainer's minillm.run_phase on the engine of minillm.minillm_engine and the teacher of "
            "engine.frozen_teacher, as train_minillm sets them up; no validation/checkpoint/logging",
            "teacher_scoring": "wall time inside teacher forwards during the optimizer steps (response + PT batch)",
            "optimisation": "step time minus teacher scoring: advantages, student fwd+bwd, losses, DeepSpeed step",
            "step_figure": "median over the phase's steps, the first step dropped",
        },
        "step": {
            "seconds": stat(step_s),
            "response_tok_per_s": stat(step_tok),
            "processed_tok_per_s": stat(step_all_tok),
        },
        "phase": {
            "seconds": stat(r["phase_s"] for r in rounds),
            "rollout_s": stat(r["rollout_s"] for r in rounds),
            "teacher_scoring_s": stat(r["teacher_scoring_s"] for r in rounds),
            "optimisation_s": stat(r["optimisation_s"] for r in rounds),
            "generated_tokens": stat(r["generated_tokens"] for r in rounds),
            "generated_tok_per_s": stat(r["generated_tokens"] / r["phase_s"] for r in rounds),
        },
        "memory": {
            "peak_rss_mb": stat(r["memory"]["peak_rss_mb"] for r in rounds),
            "peak_delta_mb": stat(r["memory"]["peak_delta_mb"] for r in rounds),
        },
    }


def aggregate_speedups(raw: dict) -> dict:
    """Before/after of each speed-up, both sides measured in the same rounds (paired, alternating order)."""
    out: dict = {}
    if raw["training"]:
        after, before = raw["training"], raw["training_recompute"]
        out["teacher_logits_cache"] = {
            "what": "minillm.TeacherLogitsCache: the single-step term's teacher logits computed on a rollout's first "
            "PPO epoch and reused by the others (before: recomputed every epoch, as the reference does)",
            "before_phase_s": stat(r["phase_s"] for r in before),
            "after_phase_s": stat(r["phase_s"] for r in after),
            "before_teacher_scoring_s": stat(r["teacher_scoring_s"] for r in before),
            "after_teacher_scoring_s": stat(r["teacher_scoring_s"] for r in after),
            "phase_speedup": stat(b["phase_s"] / a["phase_s"] for a, b in zip(after, before, strict=True)),
            "before_teacher_rows": before[0]["teacher_rows"],
            "after_teacher_rows": after[0]["teacher_rows"],
            "after_peak_delta_mb": stat(r["memory"]["peak_delta_mb"] for r in after),
            "before_peak_delta_mb": stat(r["memory"]["peak_delta_mb"] for r in before),
        }
    if raw["rollouts"]:
        v = [r["variants"] for r in raw["rollouts"]]
        out["finished_row_compaction"] = {
            "what": "sampling.sample drops finished rows (KV caches included) once they are a quarter of the batch; "
            f"measured on the teacher-mixed rollout call with EOS made likely (mean length ~{STOP_MEAN_LENGTH:g} "
            "tokens, random weights); before: compact=False",
            "generated_tokens": v[0]["mixed_stopping"]["tokens"],
            "same_tokens": all(x["mixed_stopping"]["tokens"] == x["mixed_stopping_no_compaction"]["tokens"] for x in v),
            "before_s": stat(x["mixed_stopping_no_compaction"]["seconds"] for x in v),
            "after_s": stat(x["mixed_stopping"]["seconds"] for x in v),
            "speedup": stat(x["mixed_stopping_no_compaction"]["seconds"] / x["mixed_stopping"]["seconds"] for x in v),
        }
    return out or {"status": "not run (--only)"}


def _aggregate_side(rounds: list[dict]) -> dict:
    per_round_s = [statistics.median(r["s_per_step"]) for r in rounds]
    tok = [sum(r["generated_tokens"]) / sum(r["s_per_step"]) for r in rounds]
    gen = [statistics.median(r["generate_s"]) for r in rounds]
    return {
        "s_per_step": stat(per_round_s),
        "generate_s_per_step": stat(gen),
        "generated_tok_per_s": stat(tok),
        "generated_tokens_per_step": stat(statistics.mean(r["generated_tokens"]) for r in rounds),
        "peak_rss_mb": stat(r["memory"]["peak_rss_mb"] for r in rounds),
        "peak_delta_mb": stat(r["memory"]["peak_delta_mb"] for r in rounds),
        "memory_baseline": "RSS after imports (torch, transformers, deepspeed or trl), before loading the models: "
        "the delta is models + optimizer + framework setup + activations",
        "note": rounds[0]["note"],
    }


def aggregate_trl(trl_rounds: list[dict], ours_rounds: list[dict], setup: dict, settings: dict) -> dict:
    """Both trainers' s/step, generation s/step, generated tok/s and memory; ours / TRL s/step paired per round.
    `settings`: what both sides were given (`cpu.rkl_settings`)."""
    t, o = _aggregate_side(trl_rounds), _aggregate_side(ours_rounds)
    paired = [
        statistics.median(ou["s_per_step"]) / statistics.median(tr["s_per_step"])
        for tr, ou in zip(trl_rounds, ours_rounds, strict=True)
    ]
    return {
        "status": "measured",
        "settings": settings
        | {
            "student": setup["student"]["describe"],
            "teacher": setup["teacher"]["describe"],
            "trl": "DistillationTrainer(beta=1.0 reverse KL, temperature 1, top_k 0, top_p 1, use_cpu=True, "
            "bf16=False, gradient_checkpointing=False, disable_dropout=True, gradient_accumulation_steps=1)",
            "ours": "train_minillm with teacher_mixed_alpha=0, policy_gradient=False (single-step reverse KL only), "
            "pt_coef=0, ppo_epochs=1, rollouts_per_phase=batch_size",
            "prompts": "the same multiset: the prompts train_minillm draws in its first `steps` phases",
            "prompt_padding": "ours left-pads every prompt to max_prompt_length (reference protocol); TRL pads to "
            "the longest prompt of the batch",
            "teacher_in_rollouts": "ours decodes the student alone at alpha=0, as TRL does, and forwards the teacher "
            "once over the finished rollouts only where the rewards need log p (not with the PG term off)",
            "prompt_tokenization_matches": statistics.mean(r["prompt_tokenization_matches"] for r in trl_rounds),
        },
        "trl": t,
        "ours": o,
        "ratio_ours_over_trl_s_per_step": stat(paired),
        "ratio_of_medians": o["s_per_step"]["median"] / t["s_per_step"]["median"],
    }


def aggregate_evaluation(batched: list[dict], single: list[dict], setup: dict, quick: bool) -> dict:
    """Batched and one-at-a-time evaluation seconds, their ratio paired per round, and whether ROUGE-L agrees."""
    b0 = batched[0]
    paired = [s["seconds"] / b["seconds"] for b, s in zip(batched, single, strict=True)]
    return {
        "status": "measured",
        "settings": {
            "model": setup["student"]["describe"] + " (random weights: decodes to max_new_tokens, an upper bound "
            "for a trained model that stops at EOS)",
            "call": "evaluate_model(student, data, EvalConfig of the scale): sampling over seeds, ROUGE-L, exact "
            "match and gold perplexity, model loading included",
            "n_examples": b0["n_examples"],
            "seeds": b0["seeds"],
            "subset": "yes (--quick: first seed, at most 50 test examples)" if quick else "no: the whole test split",
            "batched_batch_size": b0["batch_size"],
        },
        "batched_s": stat(b["seconds"] for b in batched),
        "single_s": stat(s["seconds"] for s in single),
        "ratio_single_over_batched": stat(paired),
        "same_rouge_l": all(b["rouge_l_per_seed"] == s["rouge_l_per_seed"] for b, s in zip(batched, single)),
        "peak_rss_mb": {
            "batched": stat(b["memory"]["peak_rss_mb"] for b in batched),
            "single": stat(s["memory"]["peak_rss_mb"] for s in single),
        },
    }


# ----------------------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------------------


def fmt_stat(s: dict, fmt: str = "{:.3g}") -> str:
    """A STAT as "median (min-max)" ("median" alone for one round, "-" for none)."""
    if s["median"] is None:
        return "-"
    if s["n"] == 1:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def _pair(a: dict, b: dict, fmt: str = "{:.3g}") -> str:
    return f"{fmt_stat(a, fmt)} / {fmt_stat(b, fmt)}"


def render_markdown(r: dict) -> str:
    """The report as one table (section, figure, value, settings) under a header with the machine and protocol."""
    m, p = r["machine"], r["protocol"]
    cal = r["calibration"]["matmul_512_fp32_1thread_ms"]
    lines = [
        f"# Performance: {m['slug']}",
        "",
        f"Measured {r['created']} by `python -m benchmark perf` (scale `{p['scale']}`, {p['repeats']} interleaved "
        f"round(s){', --quick' if p['quick'] else ''}, {p['threads']} thread). CPU: {m['cpu']}, "
        f"{m['logical_cores']} logical cores; torch {m['versions']['torch']}, transformers "
        f"{m['versions']['transformers']}, deepspeed {m['versions']['deepspeed']}, trl {m['versions']['trl']}.",
        f"Calibration (512x512 fp32 matmul, 1 thread): {fmt_stat(cal)} ms. Figures: median over rounds (min-max).",
        f"Memory: {p['memory_method']}.",
        "",
        "| section | figure | value | settings |",
        "|---|---|---|---|",
    ]

    def row(section, figure, value, settings=""):
        lines.append(f"| {section} | {figure} | {value} | {settings} |")

    ro = r["rollouts"]
    if ro["status"] == "measured":
        st = ro["settings"]
        common = f"batch {st['batch']}, prompt {st['prompt_length'].split()[0]}, {st['max_new_tokens']} new tokens"
        labels = {
            "mixed": f"teacher-mixed loop (alpha {st['mix_alpha']}, log-probs)",
            "student_ours": "our loop, student alone",
            "teacher_ours": "our loop, teacher alone",
            "student_hf_generate": "HF generate, student alone (KV cache)",
        }
        for n, v in ro["variants"].items():
            row("rollouts", f"{labels[n]}: generated tok/s", fmt_stat(v["tok_per_s"], "{:.0f}"), common)
            row("rollouts", f"{labels[n]}: seconds", fmt_stat(v["seconds"]), f"{v['tokens']} tokens")
        row(
            "rollouts",
            "mixed time / (student + teacher time)",
            fmt_stat(ro["ratio_mixed_over_student_plus_teacher"], "{:.2f}"),
            "<= 1 means mixing costs no more than decoding both models separately",
        )
        row(
            "rollouts",
            "our student loop / HF generate (tok/s)",
            fmt_stat(ro["ratio_ours_student_over_hf_generate_tok_per_s"], "{:.2f}"),
            "> 1: our loop is faster",
        )
    else:
        row("rollouts", "-", ro["status"])
    tr = r["training"]
    if tr["status"] == "measured":
        st = tr["settings"]
        common = (
            f"{st['rollouts_per_phase']} rollouts, batch {st['batch_size']}, {st['ppo_epochs']} PPO epochs = "
            f"{st['steps_per_phase']} steps; alpha {st['teacher_mixed_alpha']}, PG {st['policy_gradient']}, "
            f"PT coef {st['pt_coef']}"
        )
        row("training", "one optimizer step: seconds", fmt_stat(tr["step"]["seconds"]), "median step of the phase")
        row(
            "training",
            "one step: response tok/s",
            fmt_stat(tr["step"]["response_tok_per_s"], "{:.0f}"),
            "valid response tokens / step time (the trainer's tokens_per_s)",
        )
        row(
            "training",
            "one step: processed tok/s",
            fmt_stat(tr["step"]["processed_tok_per_s"], "{:.0f}"),
            "(padded prompt + response + PT tokens) / step time",
        )
        for k, label in (
            ("seconds", "whole phase: seconds"),
            ("rollout_s", "phase: rollout seconds"),
            ("teacher_scoring_s", "phase: teacher scoring seconds"),
            ("optimisation_s", "phase: optimisation seconds"),
        ):
            row("training", label, fmt_stat(tr["phase"][k]), common)
        row("training", "phase: generated tokens", fmt_stat(tr["phase"]["generated_tokens"], "{:.0f}"), "rollouts")
        row(
            "training",
            "phase: generated tok/s",
            fmt_stat(tr["phase"]["generated_tok_per_s"], "{:.0f}"),
            "generated tokens / phase seconds",
        )
        row(
            "training",
            "peak RSS MB (delta)",
            f"{fmt_stat(tr['memory']['peak_rss_mb'], '{:.0f}')} (+{fmt_stat(tr['memory']['peak_delta_mb'], '{:.0f}')})",
            "whole worker process; delta over the loaded process",
        )
    else:
        row("training", "-", tr["status"])
    sp = r["speedups"]
    if "teacher_logits_cache" in sp:
        c = sp["teacher_logits_cache"]
        row(
            "speed-up",
            "teacher-logits cache: phase s before / after",
            _pair(c["before_phase_s"], c["after_phase_s"]),
            "same rounds, alternating order; before = recompute every PPO epoch (the reference)",
        )
        row(
            "speed-up",
            "teacher-logits cache: teacher scoring s before / after",
            _pair(c["before_teacher_scoring_s"], c["after_teacher_scoring_s"]),
            f"teacher rows forwarded per phase: {c['before_teacher_rows']} / {c['after_teacher_rows']}",
        )
        row("speed-up", "teacher-logits cache: phase speed-up", fmt_stat(c["phase_speedup"], "{:.2f}x"), "paired")
        row(
            "speed-up",
            "teacher-logits cache: peak delta MB before / after",
            _pair(c["before_peak_delta_mb"], c["after_peak_delta_mb"], "{:.0f}"),
            "",
        )
    if "finished_row_compaction" in sp:
        c = sp["finished_row_compaction"]
        row(
            "speed-up",
            "finished-row compaction: rollout s before / after",
            _pair(c["before_s"], c["after_s"]),
            f"teacher-mixed, EOS made likely (mean ~{STOP_MEAN_LENGTH:g} tokens); {c['generated_tokens']} tokens, "
            f"same tokens: {c['same_tokens']}",
        )
        row("speed-up", "finished-row compaction: speed-up", fmt_stat(c["speedup"], "{:.2f}x"), "paired per round")
    if "status" in sp:
        row("speed-up", "-", sp["status"])
    t = r["trl"]
    if t["status"] == "measured":
        st = t["settings"]
        common = (
            f"batch {st['batch_size']}, {st['max_new_tokens']} new tokens, lr {st['lr']:g}, fp32, {st['steps']} steps"
        )
        for side, name in (("trl", "TRL DistillationTrainer"), ("ours", "ours (same objective)")):
            v = t[side]
            row("vs TRL", f"{name}: s/step", fmt_stat(v["s_per_step"]), common)
            row("vs TRL", f"{name}: generation s/step", fmt_stat(v["generate_s_per_step"]), "")
            row("vs TRL", f"{name}: generated tok/s", fmt_stat(v["generated_tok_per_s"], "{:.0f}"), "end to end")
            row("vs TRL", f"{name}: generated tokens/step", fmt_stat(v["generated_tokens_per_step"], "{:.0f}"), "")
            row(
                "vs TRL",
                f"{name}: peak RSS MB (delta)",
                f"{fmt_stat(v['peak_rss_mb'], '{:.0f}')} (+{fmt_stat(v['peak_delta_mb'], '{:.0f}')})",
                "own subprocess",
            )
        row(
            "vs TRL",
            "ours / TRL s/step",
            fmt_stat(t["ratio_ours_over_trl_s_per_step"], "{:.2f}"),
            "paired per round; < 1: ours faster",
        )
    else:
        row("vs TRL", "-", t["status"])
    e = r["evaluation"]
    if e["status"] == "measured":
        st = e["settings"]
        common = f"{st['n_examples']} examples x {len(st['seeds'])} seed(s); subset: {st['subset']}"
        row("evaluation", f"batched (batch {st['batched_batch_size']}): seconds", fmt_stat(e["batched_s"]), common)
        row("evaluation", "one example at a time: seconds", fmt_stat(e["single_s"]), common)
        row(
            "evaluation",
            "one-at-a-time / batched",
            fmt_stat(e["ratio_single_over_batched"], "{:.2f}"),
            f"same ROUGE-L: {e['same_rouge_l']}",
        )
        row(
            "evaluation",
            "peak RSS MB batched / one at a time",
            _pair(e["peak_rss_mb"]["batched"], e["peak_rss_mb"]["single"], "{:.0f}"),
            "whole worker process",
        )
    else:
        row("evaluation", "-", e["status"])
    g = r["gpu"]
    for gr in g["rows"]:
        row("gpu", gr["pair"], gr["status"], "bf16, random weights (python -m benchmark perf-gpu)")
    for f in g["result_files"]:
        row("gpu", "separate perf-gpu run", f"{f['file']}", f"{f['gpu']}, {f['date']}")
    lines += ["", "Settings of every section in full: the JSON file beside this one.", ""]
    return "\n".join(lines)
