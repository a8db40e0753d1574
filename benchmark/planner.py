"""Which teacher assistants? Every distillation path from a teacher to a student, ranked by a published law, with
the plan's cost of the hops not yet trained and, from a results store, the measured ROUGE-L.

    python -m benchmark suggest --family gpt2 --student 120M                  # 4 paths, best first (capacity-gap law)
    python -m benchmark suggest --family opt --student 1.3B --by ta-quality --format json
    python -m benchmark suggest --family gpt2 --student 120M --results runs/small --scale small  # + measured
    python -m benchmark suggest --sizes 12B,6.9B,2.8B,1.4B,410M,160M --student 160M   # any size ladder (Pythia)
    python -m benchmark figure1                       # Figure 1 of the paper, drawn from the registry's entries
    python -m benchmark planner-report --scale small  # notebooks/planner.ipynb -> paper_tables/small/planner.md

The paths and the laws that score them (capacity gap, error accumulation, geometric midpoint, TAKD quality, TA
quality; lower is better for every law) are `benchmark.laws`. `suggest` gives each path its score under every law,
the plan's cost of the hops not yet trained, its measured ROUGE-L when a results store is given, and a one-sentence
rationale. Paths are ranked by one law (`--by`, default capacity-gap), ties broken by fewer hops, then by the order
of the sizes; `--by measured` ranks by measured ROUGE-L instead. Quality comes from the paper's Tables 1-4
(registry) or, with `--results`, from the results store at `--scale` (`measured`). `law_agreement` (Kendall's tau-b
of a law's ranking against a measured one) is what notebooks/planner.ipynb reports for every law.

Cost: for a registered family, `plan.build_plan` at `--scale` and `plan.stage_cost_value` of every hop's distill stage;
with `--results RUN` only hops whose stages are not done in RUN (`plan.stage_status`) count (an interrupted one counts
whole); a hop served by a public checkpoint ("sourced", the one-step hops at paper scale) costs nothing. A path
outside the registry (another teacher, or a `--sizes` ladder) is estimated with plan.py's rule per hop: 20
V100-GPU-hours per billion parameters of student + teacher (`plan.stage_cost_value`; a ladder only at paper scale).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmark import checks, plan, registry, scales, tables
from benchmark.config import resolve, to_dict
from benchmark.laws import (
    LAWS,
    Ladder,
    PathView,
    PlannerError,
    Quality,
    enumerate_paths,
    family_ladder,
    optimal_hops,
    ratios,
    size_ladder,
)
from benchmark.results import METRICS, read, read_samples

REPO = Path(__file__).resolve().parent.parent
FIGURE1 = REPO / "paper_tables" / "figure1.png"

V100_HOURS_PER_B = 20.0  # plan.stage_cost_value's paper-scale rule (tests/test_planner.py keeps the two equal)
DEFAULT_LAW = "capacity-gap"
RANK_BY = (*LAWS, "measured")


# --------------------------------------------------------------------------------------------------------------
# Agreement of a law with a measured ranking
# --------------------------------------------------------------------------------------------------------------


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two equally long sequences, ties allowed (Kendall 1945):

        tau_b = (n_c - n_d) / sqrt((n_0 - n_1) (n_0 - n_2))

    n_c / n_d: concordant / discordant pairs (a pair tied in x or in y is neither), n_0 = n (n - 1) / 2, n_1 / n_2:
    pairs tied in x / in y. kendall_tau([1, 2, 3], [1, 3, 2]) -> 1/3; NaN when either sequence is constant or n < 2.
    """
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"kendall_tau needs two 1-D sequences of one length; got shapes {a.shape} and {b.shape}")
    i, j = np.triu_indices(a.size, k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n0 = i.size
    n1, n2 = int((da == 0).sum()), int((db == 0).sum())
    denom = math.sqrt((n0 - n1) * (n0 - n2))
    if denom == 0:
        return math.nan
    return float((da * db).sum() / denom)


def law_agreement(suggestions: Sequence[dict], law: str, truth: dict[str, float], metric: str = "rouge_l") -> float:
    """Kendall's tau-b between a law's prediction and measured values of `metric` (a key of `results.METRICS`, which
    says whether higher is better) over the paths that have both: +1 when the law orders the paths exactly as
    measured (its lower score where the measured value is better), -1 reversed."""
    pairs = [
        (s["predicted"][law]["score"], truth[s["key"]])
        for s in suggestions
        if s["predicted"][law]["score"] is not None and truth.get(s["key"]) is not None
    ]
    if len(pairs) < 2:
        return math.nan
    sign = -1.0 if METRICS[metric]["higher_is_better"] else 1.0
    return kendall_tau([sign * p for p, _ in pairs], [m for _, m in pairs])


# --------------------------------------------------------------------------------------------------------------
# Measurements (results store) and cost (plan)
# --------------------------------------------------------------------------------------------------------------


def measured(run, scale: str) -> tuple[dict[str, dict], Quality]:
    """From a results store at `scale` (the scale's default configs): entry -> ROUGE-L mean and 95 % interval, and the
    measured quality (ROUGE-L, `perplexity_samples`) the quality laws read.

    The interval is the tables' cell interval (`tables.cell_intervals`: percentile bootstrap over examples, 10 000
    resamples) when the evaluation wrote per-example samples; otherwise mean ± 1.96·std/sqrt(n_seeds) over the seeds
    ("interval over seeds"; none with a single seed)."""
    df = read(run, overrides={}, scale=scale)
    samples = read_samples(run, overrides={}, scale=scale)
    cells = tables.cell_intervals(checks.sample_scores(samples, df, "rouge_l", scale), n_resamples=10000)
    out: dict[str, dict] = {}
    for entry, rec in checks.measurements(df, "rouge_l", scale).iterrows():
        if entry in cells:
            c = cells[entry]
            out[entry] = {
                "mean": c["mean"],
                "low": c["low"],
                "high": c["high"],
                "level": 0.95,
                "interval": "percentile bootstrap over examples (benchmark.stats.bootstrap_mean_interval)",
                "n_seeds": c["n_seeds"],
                "n_examples": c["n_examples"],
            }
            continue
        values = [float(v) for v in (rec.get("values") or [rec["mean"]])]
        n, mean = len(values), float(rec["mean"])
        half = 1.96 * float(rec.get("std") or 0.0) / math.sqrt(n) if n > 1 else None
        out[entry] = {
            "mean": mean,
            "low": None if half is None else mean - half,
            "high": None if half is None else mean + half,
            "level": 0.95,
            "interval": "interval over seeds: mean ± 1.96·std/sqrt(n_seeds)"
            if half is not None
            else "one seed: no interval",
            "n_seeds": n,
            "n_examples": int(rec["n_examples"]) if rec.get("n_examples") is not None else None,
        }
    quality = Quality(
        rouge_l={e: v["mean"] for e, v in out.items()},
        perplexity=checks.means(df, "perplexity", scale),
        source=f"measured in {run} at scale {scale}",
    )
    return out, quality


def _run_dir(run) -> Path:
    p = Path(run)
    return p if p.is_dir() or p.suffix == "" else p.parent


def path_costs(ladder: Ladder, paths: Sequence[tuple[str, ...]], scale: str, run=None) -> dict[tuple, dict]:
    """path -> {"amount", "unit", "hops_to_train", "hops": [{"hop", "stage", "status", "cost"}], "basis"}: the cost of
    the hops not yet trained (see the module docstring)."""
    run_dir = _run_dir(run) if run is not None else None
    unit = "V100-GPU-h" if scale == "paper" else "s CPU"
    if ladder.family is None and scale != "paper":
        raise PlannerError(
            f"a --sizes ladder has no models at scale {scale!r}; its cost is estimated at paper scale only "
            "(drop --scale)"
        )
    registered = [p for p in paths if ladder.registered(p)]
    stages: dict[tuple, plan.Stage] = {}
    if registered:
        built = plan.build_plan([ladder.key(p) for p in registered], scale)
        stages = {tuple(s.config["path"]): s for s in built.by_kind("distill")}
    default_minillm = to_dict(resolve("minillm", scale))
    out = {}
    for path in paths:
        hops, total, todo = [], 0.0, 0
        for i in range(1, len(path)):
            prefix, hop = tuple(path[: i + 1]), f"{path[i - 1]}>{path[i]}"
            if ladder.family is None:
                cost = V100_HOURS_PER_B * (ladder.params(path[i - 1]) + ladder.params(path[i]))
                hops.append({"hop": hop, "stage": None, "status": "estimated", "cost": round(cost, 4)})
                total, todo = total + cost, todo + 1
                continue
            stage = stages.get(prefix)
            if stage is None:  # outside the registry (another teacher): the plan's cost model on a stand-in stage
                stage = plan.Stage(
                    "distill",
                    f"distill-{ladder.family}-{'_'.join(prefix)}",
                    ladder.family,
                    {"path": list(prefix), "minillm": default_minillm},
                )
                status, name = "estimated", None
            else:
                status = plan.stage_status(stage, run_dir) if run_dir else ("sourced" if stage.source else "run")
                name = stage.dirname
            value = plan.stage_cost_value(stage, scale)
            cost = value[0] if value is not None and status in ("run", "resume", "estimated") else 0.0
            if status in ("run", "resume", "estimated"):
                todo += 1
            total += cost
            hop_cost = None if status == "sourced" else round(cost, 4)
            hops.append({"hop": hop, "stage": name, "status": status, "cost": hop_cost})
        if ladder.family is None:
            basis = "plan.py's rule: 20 V100-GPU-h per billion parameters of student + teacher per hop (estimate)"
        elif all(h["stage"] for h in hops):
            basis = f"plan.stage_cost_value at scale {scale}" + (f", stage status in {run_dir}" if run_dir else "")
        else:
            basis = f"plan.stage_cost_value at scale {scale} on stand-in stages (path not registered: estimate)"
        out[tuple(path)] = {
            "amount": round(total, 4),
            "unit": unit,
            "hops_to_train": todo,
            "hops": hops,
            "basis": basis,
        }
    return out


# --------------------------------------------------------------------------------------------------------------
# suggest
# --------------------------------------------------------------------------------------------------------------


def _fmt_ratio(r: float) -> str:
    return f"{r:.1f}x"


def _rationale(s: dict, ladder: Ladder, n_paths: int, by: str) -> str:
    path, cg = s["path"], s["predicted"]["capacity-gap"]
    total = ladder.params(path[0]) / ladder.params(path[-1])
    hops = s["hops"]
    parts = [
        f"{hops} hop{'s' if hops > 1 else ''} ({' > '.join(path)}) at {', '.join(_fmt_ratio(r) for r in s['ratios'])}",
        f"{cg['score']:.2f} in log-ratio from the capacity-gap law's 2.5x per hop, which wants "
        f"{cg['optimal_hops']} hop{'s' if cg['optimal_hops'] > 1 else ''} for {total:.1f}x",
    ]
    if s["tas"]:
        parts.append(f"{len(s['tas'])} TA{'s' if len(s['tas']) > 1 else ''} ({', '.join(s['tas'])}) to pass errors on")
    else:
        parts.append("no TA: nothing accumulates, but the whole gap is one hop")
    if s["measured"] is not None:
        m = s["measured"]
        iv = f" [{m['low']:.2f}, {m['high']:.2f}]" if m.get("low") is not None else ""
        parts.append(f"measured ROUGE-L {m['mean']:.2f}{iv}")
    elif s["published"] is not None and s["published"]["rouge_l"] is not None:
        parts.append(f"published ROUGE-L {s['published']['rouge_l']:.2f}")
    by_name = "measured ROUGE-L" if by == "measured" else f"the {by} law"
    return "; ".join(parts) + f"; ranked {s['rank']} of {n_paths} by {by_name}."


def suggest(
    *,
    family: str | None = None,
    sizes: str | Sequence[str] | None = None,
    student: str,
    teacher: str | None = None,
    results=None,
    scale: str = "paper",
    by: str = DEFAULT_LAW,
    quality: Quality | None = None,
) -> list[dict]:
    """Every path from teacher to student, best first (see the module docstring): a list of JSON-able dicts with
    rank, key, path, hops, tas, ratios, params_b, registered, predicted {law: {name, score, better, note, ...}}, cost,
    published, measured and rationale.

    `quality` overrides where the quality laws read their numbers (default: measured with `results`, else the paper's).
    """
    if (family is None) == (sizes is None):
        raise PlannerError("give either --family (a registered family) or --sizes (any ladder), not both or neither")
    scales.scale(scale)
    if by not in RANK_BY:
        hint = difflib.get_close_matches(by, list(RANK_BY), n=1)
        raise PlannerError(
            f"unknown law {by!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f"; --by takes {', '.join(RANK_BY)}"
        )
    if by == "measured" and results is None:
        raise PlannerError("--by measured ranks by the results store's ROUGE-L: give --results RUN")
    ladder = family_ladder(family, student, teacher) if family else size_ladder(sizes, student, teacher)
    paths = enumerate_paths(ladder)
    costs = path_costs(ladder, paths, scale, results)
    meas: dict[str, dict] = {}
    if results is not None:
        meas, measured_quality = measured(results, scale)
        quality = quality or measured_quality
    quality = quality or (Quality.published() if family else Quality.none())
    out = []
    for index, path in enumerate(paths):
        view = PathView(ladder, path, quality)
        predicted = {}
        for law in LAWS.values():
            score, note = law.score(view)
            predicted[law.id] = {
                "name": law.name,
                "score": None if score is None else round(score, 6),
                "better": "lower",
                "formula": law.formula,
                "source": law.source,
                "note": note,
            }
            if law.id == "capacity-gap":
                predicted[law.id]["optimal_hops"] = optimal_hops(ladder.params(path[0]), ladder.params(path[-1]))
        key = ladder.key(path)
        entry = registry.ENTRIES.get(key) if ladder.registered(path) else None
        out.append(
            {
                "rank": None,
                "key": key,
                "path": list(path),
                "hops": len(path) - 1,
                "tas": list(path[1:-1]),
                "ratios": [round(r, 4) for r in ratios(ladder, path)],
                "params_b": [round(ladder.params(s), 6) for s in path],
                "registered": entry is not None,
                "predicted": predicted,
                "cost": costs[path],
                "published": None
                if entry is None
                else {"rouge_l": entry.published.rouge_l, "perplexity": entry.published.perplexity},
                "measured": meas.get(key) if results is not None else None,
                "quality_source": quality.source,
                "_index": index,
            }
        )

    def order(s: dict):
        if by == "measured":
            m = s["measured"]
            value = None if m is None else -m["mean"]
        else:
            value = s["predicted"][by]["score"]
        return (value is None, value if value is not None else 0.0, s["hops"], s["_index"])

    out.sort(key=order)
    for rank, s in enumerate(out, start=1):
        s["rank"] = rank
        del s["_index"]
        s["rationale"] = _rationale(s, ladder, len(out), by)
    return out


# --------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------


def _fmt_cost(cost: dict) -> str:
    if cost["hops_to_train"] == 0:
        return "0 (all hops " + ("sourced/done" if cost["hops"] else "-") + ")"
    if cost["unit"] == "s CPU":
        return f"~{cost['amount'] / 60:.0f} min CPU"
    return f"~{cost['amount']:.0f} {cost['unit']}"


def _fmt_score(x) -> str:
    if x is None:
        return "n/q"  # needs quality
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.2f}"


def format_table(suggestions: Sequence[dict], by: str, scale: str, results=None) -> str:
    """The ranking as a text table, the rationales and a legend of the laws."""
    first = suggestions[0]
    path = first["path"]
    total = first["params_b"][0] / first["params_b"][-1]
    cg = first["predicted"]["capacity-gap"]["optimal_hops"]
    by_text = "measured ROUGE-L (higher is better)" if by == "measured" else f"{by} (lower is better)"
    head = [
        f"{path[0]} -> {path[-1]} ({total:.1f}x in parameters): {len(suggestions)} paths, best first by {by_text}",
        f"capacity-gap law: ceil(ln {total:.1f} / ln 2.5) = {cg} hops at ~2.5x each; quality laws read: "
        f"{first['quality_source']}",
        f"cost: hops not yet trained ({first['cost']['basis']})",
        "",
    ]
    cols = ["rank", "key", "hops", "ratios", *(law.short for law in LAWS.values()), "cost", "ROUGE-L"]
    rows = []
    for s in suggestions:
        if s["measured"] is not None:
            m = s["measured"]
            rl = f"{m['mean']:.2f}" + (f" [{m['low']:.2f}, {m['high']:.2f}]" if m.get("low") is not None else "")
        elif results is not None:
            rl = "not measured"
        elif s["published"] is not None and s["published"]["rouge_l"] is not None:
            rl = f"{s['published']['rouge_l']:.2f} (paper)"
        else:
            rl = "-"
        rows.append(
            [
                str(s["rank"]),
                s["key"],
                str(s["hops"]),
                ",".join(_fmt_ratio(r) for r in s["ratios"]),
                *(_fmt_score(s["predicted"][law]["score"]) for law in LAWS),
                _fmt_cost(s["cost"]),
                rl,
            ]
        )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    right = {0, 2, *range(4, 4 + len(LAWS))}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = head + [line(cols).rstrip()] + [line(r).rstrip() for r in rows] + [""]
    out += [f"{s['rank']}. {s['key']}: {s['rationale']}" for s in suggestions]
    intervals = sorted({s["measured"]["interval"] for s in suggestions if s["measured"] is not None})
    out += ["", "laws (every score: lower is better; n/q = needs quality data):"]
    out += [f"  {law.short:<8} {law.formula}  [{law.source}]" for law in LAWS.values()]
    if intervals:
        out.append("ROUGE-L: measured mean [95 % interval]; " + "; ".join(intervals))
    return "\n".join(out)
