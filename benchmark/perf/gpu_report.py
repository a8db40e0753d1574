"""The report of one `python -m benchmark perf-gpu` run: `summary` (a few lines for the terminal) and
`render_markdown` (the file beside the JSON, gpu-<gpu>-<date>.md). The markdown shows every planned GPU row, each
figure measured in this run or "not measured (why)", never an estimate in its place; projections are labelled as
such and computed from the run's own measurements (`decode.phase`, `gpu.project`)."""

from __future__ import annotations

# (JSON key, what it is) of every row the decode section plans, in the order shown
DECODE_VARIANTS = [
    ("dynamic_mixed", 'teacher-mixed, dynamic-cache loop (`sample(cache="dynamic")`, the loop before issue #18)'),
    ("static_mixed", "teacher-mixed, static caches, one CUDA graph per step (`StaticDecoder`, the default on a GPU)"),
    ("static_mixed_eager", "teacher-mixed, static caches, the same step eager (no graph)"),
    ("static_student", "student alone, static caches + CUDA graph"),
    ("static_teacher", "teacher alone, static caches + CUDA graph"),
    ("hf_static_compiled_student", "student alone, HF `generate`, compiled static cache"),
    ("hf_static_compiled_teacher", "teacher alone, HF `generate`, compiled static cache"),
]
STOPPING_VARIANTS = [
    ("dynamic_compact", "dynamic loop: finished rows dropped (compaction)"),
    ("static_mask", "static, masking: one graph, finished rows decode on"),
    ("static_bucket", "static, buckets: live rows moved into a power-of-two batch, one graph each"),
]
AGREEMENTS = [
    ("graph_vs_eager", "CUDA graph vs the same step eager"),
    ("static_vs_dynamic", "static vs dynamic loop"),
    ("stopping_mask_vs_bucket", "masking vs buckets (rows stop)"),
    ("stopping_static_vs_dynamic", "static buckets vs dynamic compaction (rows stop)"),
    ("fp32_static_vs_dynamic", "static vs dynamic on fp32 copies of the weights (a short decode)"),
]
NOT_MEASURED = "not measured"


def _why(v: dict | None, default: str) -> str:
    v = v or {}
    return f"{NOT_MEASURED} ({v.get('error') or v.get('status') or default})"


def _missing_row(label: str, absent: str | None, v: dict | None, columns: int) -> str:
    """A table row of `columns` cells for a figure that is not there, saying why: the whole section's absence, or
    the variant's own error or status."""
    why = f"{NOT_MEASURED} ({absent})" if absent else _why(v, "not run")
    return f"| {label} | {why} |" + " |" * (columns - 2)


def _num(x, fmt: str = "{:.0f}") -> str:
    return fmt.format(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def _val(x, fmt: str = "{:.0f}") -> str:
    """A figure of this run, or "not measured" where it has none."""
    return NOT_MEASURED if x is None else _num(x, fmt)


def _yes(x) -> str:
    return NOT_MEASURED if x is None else ("yes" if x else "no")


def _decode_absent(r: dict) -> str | None:
    """Why the decode section has no figures (None when it has)."""
    d = r.get("decode")
    if d is None:
        return "the decode section runs with the pair gpt2 1.5B>120M, not selected in this run"
    return None if "variants" in d else str(d.get("status", "no figures"))


def _decode_markdown(r: dict) -> list[str]:
    absent, d = _decode_absent(r), r.get("decode") or {}
    if absent:
        title = "## Decode (issue #18)"
    else:
        title = (
            f"## Decode (issue #18): {d['pair']}, {d['rows']} rows x {d['prompt_length']} + {d['max_new_tokens']} "
            f"tokens, {d['dtype']}"
        )
    lines = [
        title,
        "",
        "Steady state: one untimed call of each variant at full length (capture, allocator growth, compilation), "
        "then the median of the timed calls; EOS suppressed, so every row decodes max_new_tokens.",
        "",
        "| decode | tok/s | seconds | first call s | share of the bandwidth floor |",
        "|---|---|---|---|---|",
    ]
    variants, floor_share = d.get("variants", {}), d.get("fraction_of_floor", {})
    for key, label in DECODE_VARIANTS:
        v = variants.get(key)
        if absent or not v or "tok_per_s" not in v:
            lines.append(_missing_row(label, absent, v, 5))
            continue
        share = _num(floor_share.get(key), "{:.3f}")
        lines.append(f"| {label} | {v['tok_per_s']:.0f} | {v['seconds']:.2f} | {v['first_call_s']:.2f} | {share} |")
    floor = d.get("bandwidth_floor", {})
    if floor.get("tok_per_s"):
        lines.append(
            f"| bandwidth floor: rows x {floor['bandwidth_bytes_per_s'] / 1e12:.1f} TB/s / (weights "
            f"{floor['weight_bytes'] / 1e9:.2f} GB + KV {floor['kv_bytes_per_step'] / 1e9:.2f} GB a step at context "
            f"{floor['context']}) | {floor['tok_per_s']:.0f} | | | 1 |"
        )
    elif absent:
        lines.append(f"| bandwidth floor | {NOT_MEASURED} ({absent}) | | | |")
    else:  # a GPU without a bandwidth on record
        lines.append(f"| bandwidth floor | not computed ({floor['source']}) | | | |")

    stopping = d.get("stopping", {})
    lengths = stopping.get("lengths")
    lines += [
        "",
        f"Finished rows: EOS made likely (target mean length {_num(stopping.get('mean_length_target'))}; measured "
        f"mean {_num((lengths or {}).get('mean'), '{:.1f}')}, longest {_num((lengths or {}).get('max'))}).",
        "",
        "| finished-row policy | tok/s | seconds | first call s |",
        "|---|---|---|---|",
    ]
    for key, label in STOPPING_VARIANTS:
        v = stopping.get("variants", {}).get(key)
        if absent or not v or "tok_per_s" not in v:
            lines.append(_missing_row(label, absent, v, 4))
        else:
            lines.append(f"| {label} | {v['tok_per_s']:.0f} | {v['seconds']:.2f} | {v['first_call_s']:.2f} |")

    lines += [
        "",
        "Token agreement for the same per-example generators (float summation order can flip a draw near a boundary "
        "of the cumulative distribution; the row then diverges):",
        "",
        "| decodes compared | identical rows | mean first difference | max log q gap | max log p gap |",
        "|---|---|---|---|---|",
    ]
    for key, label in AGREEMENTS:
        a = d.get("agreement", {}).get(key)
        if absent or not a or "identical_rows" not in a:
            lines.append(_missing_row(label, absent, a, 5))
            continue
        lines.append(
            f"| {label} | {a['identical_rows']:.0%} of {a['rows']} | {_num(a['mean_first_difference'], '{:.1f}')} | "
            f"{_num(a.get('max_abs_diff_student_logprobs'), '{:.2e}')} | "
            f"{_num(a.get('max_abs_diff_teacher_logprobs'), '{:.2e}')} |"
        )

    g = d.get("goals", {})
    ratio = g.get("static_mixed_over_student_plus_teacher_s")
    measured = next((p["phase"] for p in r["pairs"] if p["pair"] == d.get("pair") and "phase" in p), {})
    projected = (r.get("phases") or {}).get(d.get("pair"), {}).get("static_mixed", {})
    goals = [
        (
            f"static teacher-mixed >= 3 x {_num(g.get('baseline_mixed_tok_per_s'))} tok/s (the 2026-11-28 steady "
            f"state) = {_num(g.get('goal_mixed_tok_per_s'))} tok/s",
            _val(g.get("static_mixed_tok_per_s")),
            _yes(g.get("static_mixed_at_least_3x_baseline")),
        ),
        (
            "static teacher-mixed time / (student + teacher alone, static) <= 1",
            _val(ratio, "{:.2f}"),
            _yes(None if ratio is None else ratio <= 1),
        ),
        ("static / dynamic teacher-mixed tok/s", _val(g.get("static_over_dynamic_mixed_tok_per_s"), "{:.2f}"), ""),
        (
            "rollouts below half of a phase (measured: `run_phase`)",
            _val(measured.get("rollout_share"), "{:.0%}"),
            _yes(g.get("rollouts_below_half_of_phase")),
        ),
        (
            "rollouts below half of a phase (projected from the steady state)",
            _val(projected.get("rollout_share"), "{:.0%}"),
            _yes(g.get("projected_rollouts_below_half_of_phase")),
        ),
    ]
    lines += ["", "| issue #18 goal | value | met |", "|---|---|---|"]
    if absent:
        lines.append(f"| issue #18 goals | {NOT_MEASURED} ({absent}) | |")
    else:
        lines += [f"| {goal} | {value} | {met} |" for goal, value, met in goals]

    lines += [
        "",
        "Table 1's trained hops, teacher-mixed at the rollout batch (tok/s; rescoring seconds per batch):",
        "",
        "| hop | static | dynamic | rescoring s |",
        "|---|---|---|---|",
    ]
    hops = d.get("hops") or {}
    if not hops:
        lines.append(f"| Table 1 hops | {NOT_MEASURED} ({absent or 'no hop measured'}) | | |")
    for name, h in hops.items():
        if "variants" not in h:
            lines.append(f"| {name} | {_why(h, 'failed')} | | |")
            continue
        cells = [
            f"{h['variants'][k]['tok_per_s']:.0f}" if "tok_per_s" in h["variants"].get(k, {}) else
            _why(h["variants"].get(k), "not run")
            for k in ("static_mixed", "dynamic_mixed")
        ]  # fmt: skip
        rescore = _val(h.get("rescore_s"), "{:.2f}") if h.get("rescore_s") is not None else "- (decode log-probs)"
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {rescore} |")
    return lines


def _phase_markdown(r: dict) -> list[str]:
    lines = [
        "## Phase split",
        "",
        "Measured: one phase of the trainer, `minillm.run_phase` itself (rollouts_per_phase random prompts, EOS "
        "suppressed in the rollouts; decoders built and graphs captured inside, as every phase does). Rollouts = the "
        "teacher-mixed decode and the logged pure-student sample; scoring = `rescore_rollouts`; optimisation = the "
        "phase's steps.",
        "",
        "| pair | decode path | rollout chunk | rollouts s | scoring s | optimisation s | phase s | rollouts share "
        "| stage h (1 GPU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [p for p in r["pairs"] if "phase" in p]
    if not rows:
        first = r["pairs"][0] if r["pairs"] else None
        why = first.get("status", "not run") if first else "no pair selected"
        lines.append(f"| {first['pair'] if first else '-'} | {NOT_MEASURED} ({why}) | | | | | | | |")
    for p in rows:
        ph = p["phase"]
        if "phase_s" not in ph:
            lines.append(f"| {p['pair']} | {_why(ph, 'failed')} | | | | | | | |")
            continue
        lines.append(
            f"| {p['pair']} | {ph['decode_cache']} | {ph['rollout_chunk']} | {ph['rollouts_s']:.1f} | "
            f"{ph['scoring_s']:.1f} | {ph['optimisation_s']:.1f} | {ph['phase_s']:.1f} | {ph['rollout_share']:.0%} | "
            f"{ph['hours_1gpu']:.1f} |"
        )
    lines += [
        "",
        "Projected (not a measurement of a phase): `decode.phase` from this run's steady-state decode at the rollout "
        "batch, its rescoring and the measured steps of the pair with the same student (an upper bound for a hop "
        "with a smaller teacher); validation, checkpoints and data loading excluded.",
        "",
        "| pair or hop | decode | rollouts s | scoring s | optimisation s | phase s | rollouts share | stage h "
        "(1 GPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    phases = r.get("phases")
    if not phases:
        lines.append(f"| - | {NOT_MEASURED} ({_decode_absent(r) or 'no decode figures'}) | | | | | | |")
    for name, row in (phases or {}).items():
        for loop in ("static_mixed", "dynamic_mixed"):
            ph = row[loop]
            if "rollouts_s" not in ph:
                lines.append(f"| {name} | {loop} | {_why(ph, 'not run')} | | | | | |")
            elif ph.get("phase_s") is None:
                lines.append(
                    f"| {name} | {loop} | {ph['rollouts_s']:.1f} | {ph['scoring_s']:.1f} | "
                    f"{NOT_MEASURED} ({row['step_from']}) | | | |"
                )
            else:
                lines.append(
                    f"| {name} | {loop} | {ph['rollouts_s']:.1f} | {ph['scoring_s']:.1f} | {ph['optimisation_s']:.1f} "
                    f"| {ph['phase_s']:.1f} | {ph['rollout_share']:.0%} | {ph['hours_1gpu']:.1f} |"
                )
    return lines


def _pairs_markdown(r: dict) -> list[str]:
    lines = [
        "## The trainer per pair",
        "",
        "`collect_rollouts` of one mini-batch (decode path as recorded) and `minillm_step` (first-epoch and cached), "
        "bf16; stage hours projected from them (`gpu.project`).",
        "",
        "| pair | decode path | rollout tok/s | rollout MFU | step s | cached step s | train tok/s | step MFU "
        "| peak GiB | stage h (1 GPU) | paper |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    got = {p["pair"]: p for p in r["pairs"]}
    for name in r["settings"].get("planned_pairs") or list(got):
        p = got.get(name)
        if p is None:
            lines.append(f"| {name} | {NOT_MEASURED} (not selected with --pairs) | | | | | | | | | |")
        elif p.get("status") != "measured":
            lines.append(
                f"| {name} | {NOT_MEASURED} ({p.get('status')}) | | | | | | | | | {p['paper_report'] or '-'} |"
            )
        else:
            ro, s, pr = p["rollouts"], p["step"], p["projection"]
            lines.append(
                f"| {name} | {ro.get('decode_cache', '-')} | {ro['tok_per_s']:.0f} | {ro['mfu']:.3f} | "
                f"{s['step_s']:.2f} | {s['cached_step_s']:.2f} | {s['response_tok_per_s']:.0f} | {s['mfu']:.2f} | "
                f"{_num(p['peak_memory_gib'], '{:.1f}')} | {pr['hours_1gpu']:.1f} | {p['paper_report'] or '-'} |"
            )
    scored = [(p["pair"], who, sc) for p in r["pairs"] for who, sc in (p.get("rollout_scoring") or {}).items()]
    if scored:
        lines += [
            "",
            "Stored rollout log-probs: the decode's incremental values against the trainer's full-forward rescoring "
            "and an fp32 copy (nats, mean / max over the sampled tokens; random weights, so a floor):",
            "",
            "| pair | model | decode path | decode vs forward | forward vs fp32 | ratio outside [0.8, 1.2] |",
            "|---|---|---|---|---|---|",
        ]
        for pair, who, sc in scored:
            dec, fwd = sc["decode_vs_forward"], sc["forward_vs_fp32"]
            lines.append(
                f"| {pair} | {who} ({sc['dtype']}) | {sc.get('decode_cache', '-')} | {dec['mean']:.4f} / "
                f"{dec['max']:.3f} | {fwd['mean']:.4f} / {fwd['max']:.3f} | {sc['clipped_at_epoch1']:.2%} |"
            )
    return lines


def render_markdown(r: dict, json_name: str) -> str:
    """The run as markdown: header (GPU, date, versions, command), the decode section, the phase split (measured and
    projected), the trainer per pair; every planned row present, "not measured (why)" where this run has no
    figure."""
    gpu, v = r["gpu"], r["versions"]
    date = r["created"][:10]
    lines = [f"# GPU run: {gpu['name']}, {date}", ""]
    if r["dry_run"]:
        lines += ["**Dry run: the tiny scale's models and lengths. Nothing here is a measurement.**", ""]
    mem = f", {gpu['memory_gib']:.0f} GiB" if gpu.get("memory_gib") else ""
    lines += [
        f"`{r.get('command') or 'python -m benchmark perf-gpu'}` on {gpu['name']}{mem}, {r['created']}; "
        f"torch {v.get('torch')}, CUDA {v.get('cuda')}, transformers {v.get('transformers')}, deepspeed "
        f"{v.get('deepspeed')}. Models: the real architectures with random weights, bf16 (`benchmark/perf/gpu.py`). "
        f"bf16 matmul peak: {_val((r.get('peak') or {}).get('tflops'), '{:.0f} TFLOPS')}. Wall "
        f"{_num(r.get('wall_s'))} s. Every figure with its settings: `{json_name}`.",
        "",
    ]
    lines += _decode_markdown(r) + [""] + _phase_markdown(r) + [""] + _pairs_markdown(r) + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# The terminal summary
# ----------------------------------------------------------------------------------------------------------------


def _decode_lines(r: dict) -> list[str]:
    d = r.get("decode")
    if not d:
        return []
    if "variants" not in d:
        return [f"decode section: {d.get('status')}"]

    def fig(v: dict) -> str:
        return f"{v['tok_per_s']:.0f}" if "tok_per_s" in v else v.get("error") or v.get("status", "-")

    floor = d["bandwidth_floor"]["tok_per_s"]
    lines = [
        f"decode {d['pair']}, {d['rows']} rows x {d['prompt_length']} + {d['max_new_tokens']} tokens ({d['dtype']}), "
        f"tok/s; bandwidth floor {f'{floor:.0f}' if floor else d['bandwidth_floor']['source']}",
        "  " + " | ".join(f"{k} {fig(v)}" for k, v in d["variants"].items()),
        f"  stopping (mean length ~{d['stopping']['mean_length_target']:g}): "
        + " | ".join(f"{k} {fig(v)}" for k, v in d["stopping"]["variants"].items()),
        "  agreement (identical rows): "
        + " | ".join(
            f"{k} {a['identical_rows']:.0%}" if "rows" in a else f"{k} {a['status']}" for k, a in d["agreement"].items()
        ),
        "  of the floor: " + " | ".join(f"{k} {x:.2f}" for k, x in d["fraction_of_floor"].items()),
        "  goals: " + ", ".join(f"{k}={v if not isinstance(v, float) else round(v, 2)}" for k, v in d["goals"].items()),
    ]
    for name, row in r.get("phases", {}).items():
        for loop in ("static_mixed", "dynamic_mixed"):
            ph = row[loop]
            if ph.get("phase_s") is None:
                got = ph.get("status") or f"rollouts {ph['rollouts_s']:.1f} s; optimisation {row['step_from']}"
            else:
                got = (
                    f"{ph['rollouts_s']:.1f} / {ph['scoring_s']:.1f} / {ph['optimisation_s']:.1f} s = "
                    f"{ph['phase_s']:.1f} s a phase (rollouts {ph['rollout_share']:.0%}), {ph['hours_1gpu']:.1f} h"
                )
            lines.append(f"  projected phase {name} {loop}: {got}")
    return lines


def summary(r: dict) -> str:
    """The run as a few lines of text: one per pair, then the checks."""
    lines = [
        f"GPU {r['gpu']['name']}  {r['created']}{'  (DRY RUN: not a measurement)' if r['dry_run'] else ''}",
        f"bf16 matmul peak {r['peak']['tflops']:.1f} TFLOPS",
        f"{'pair':<16}{'rollout tok/s':>14}{'MFU':>7}{'step s':>8}{'cached s':>9}{'train tok/s':>12}{'MFU':>7}"
        f"{'mem GiB':>9}{'stage h (1 GPU)':>17}  paper",
    ]
    for p in r["pairs"]:
        if p.get("status") != "measured":
            lines.append(f"{p['pair']:<16}{p.get('status')}")
            continue
        ro, s, pr, mem = p["rollouts"], p["step"], p["projection"], p["peak_memory_gib"]
        lines.append(
            f"{p['pair']:<16}{ro['tok_per_s']:>14.0f}{ro['mfu']:>7.3f}{s['step_s']:>8.2f}{s['cached_step_s']:>9.2f}"
            f"{s['response_tok_per_s']:>12.0f}{s['mfu']:>7.2f}{(f'{mem:.1f}' if mem is not None else '-'):>9}"
            f"{pr['hours_1gpu']:>17.1f}  {p['paper_report'] or '-'}"
        )
    for p in r["pairs"]:
        for who, sc in (p.get("rollout_scoring") or {}).items():
            dec, fwd = sc["decode_vs_forward"], sc["forward_vs_fp32"]
            lines.append(
                f"{p['pair']} {who} log-probs ({sc['dtype']}): |decode - forward| mean {dec['mean']:.2e} max "
                f"{dec['max']:.2e}; |forward - fp32| mean {fwd['mean']:.2e}; ratio outside [0.8, 1.2] "
                f"{sc['clipped_at_epoch1']:.2%}"
            )
        if "phase_s" in p.get("phase", {}):
            ph = p["phase"]
            lines.append(
                f"{p['pair']} measured phase ({ph['decode_cache']} decode, chunk {ph['rollout_chunk']}): rollouts "
                f"{ph['rollouts_s']:.1f} / scoring {ph['scoring_s']:.1f} / optimisation {ph['optimisation_s']:.1f} s = "
                f"{ph['phase_s']:.1f} s (rollouts {ph['rollout_share']:.0%}), {ph['hours_1gpu']:.1f} h a stage"
            )
    lines += _decode_lines(r)
    lines.append(f"wall {r['wall_s']:.0f} s")
    return "\n".join(lines)
