"""Intervals, paired differences to the one-step and SFT-only baselines, power and figures for the paper's tables
(notebooks/), and the paper's Figure 1.

    from benchmark import checks, results, tables
    df, samples = results.read("runs/small"), results.read_samples("runs/small")
    scores = checks.sample_scores(samples, df, "rouge_l", "small")     # entry -> [seed x example] per-example scores
    tables.cell_intervals(scores)                  # entry -> mean [95 % CI] over examples, the seed-10 value
    tables.one_step_baseline("gpt2/1.5B>760M>120M")  # -> "gpt2/1.5B>120M"
    diffs = tables.differences(scores, list(scores), "rouge_l")  # every multi-step entry minus its one-step row
    tables.differences(scores, list(scores), "rouge_l", against="sft")  # every one-step entry minus SFT w/o KD
    tables.paper_value("gpt2/120M", "rouge_l")      # -> "23.3 (MiniLLM, ref.)": a baseline's reference, unchecked
    tables.detectable(diffs)                       # the smallest difference this run (or one seed) could detect
    tables.corpus_perplexity(samples[samples.entry == "opt/13B"])  # token-level perplexity per seed
    tables.forest_plot({"ROUGE-L": diffs}, "gpt2", "differences_gpt2.png")
    tables.draw_figure1("paper_tables/figure1.png")  # the paper's Figure 1, drawn from the registry's entries

What the numbers are:

- A cell's interval: each example's score is averaged over the seeds, then the examples are resampled
  (`stats.bootstrap_mean_interval`, percentile interval). ROUGE-L: the per-example `rouge_l`. Perplexity: the
  per-example log-perplexity of the sampled response under the scorer (`log_ppl_samples`), reported as exp() of the
  mean and of the interval's ends: a **geometric-mean perplexity** with its interval. It is not the checked
  `perplexity_samples` (the mean over examples of exp(per-example NLL), what the authors' code computes and the
  tables compare with the paper): a handful of degenerate samples (repetition loops, a perplexity in the tens of
  thousands) decide a mean of exp() on their own, while their log stays on the scale of the other examples.
- The token-level corpus perplexity of the same samples, exp(sum of NLL / sum of tokens) per seed, weighs every
  sampled token equally (a long degenerate sample counts by its length, not by exp of its mean).
- A paired difference (`stats.paired_difference`): multi-step minus its one-step row with the same teacher and
  student, on the examples and seeds both were scored on; ROUGE-L points, or nats of log-perplexity (exp(diff) is
  the ratio of geometric-mean perplexities; < 0 means the multi-step student is better). `published_diff` is the
  paper's on the same scale: ROUGE-L multi − one-step, or ln(ppl multi / ppl one-step). With `against="sft"`, a
  one-step student minus its SFT-only baseline (the student's SFT init, MiniLLM's "SFT w/o KD"): the effect every
  path rests on; its `published_diff` is MiniLLM's own (Table 1, one-step minus SFT w/o KD), a reference.
- Power: an interval's half-width is the smallest difference the comparison could tell from 0 (a true difference of
  that size is detected about half the time; 80 % power needs about 1.43 times it, (1.96 + 0.84) / 1.96). A table
  reports the median half-width of its paired intervals, and the same for a single-seed evaluation: the comparison
  on seed 10 alone, and scaled by sqrt(n / 500) to 500 prompts (the Dolly test set; the paper's likely protocol).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark import registry, stats

__all__ = [
    "DIFF_COLUMNS",
    "FAMILY_NAME",
    "PAPER_PROMPTS",
    "SINGLE_SEED",
    "cell_intervals",
    "corpus_perplexity",
    "detectable",
    "detectable_line",
    "differences",
    "draw_figure1",
    "figure2_plot",
    "forest_plot",
    "one_step_baseline",
    "paper_value",
    "published_difference",
    "ROW_LABEL",
    "sft_baseline",
]

SINGLE_SEED = 10  # MiniLLM's first evaluation seed: what a single-seed evaluation reports
PAPER_PROMPTS = 500  # the Dolly test split the paper evaluates on
N_RESAMPLES = 10000  # as the claim verdicts (checks.N_RESAMPLES): a table's Δ interval is a one-comparison claim's

DIFF_COLUMNS = (
    "entry",
    "baseline",
    "diff",
    "low",
    "high",
    "p_value",
    "published_diff",
    "half_width",
    "single_seed_diff",
    "single_seed_half_width",
    "n_examples",
    "n_seeds",
)


# --------------------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------------------


def _single_seed_row(table: pd.DataFrame, seed: int = SINGLE_SEED):
    """The row of `seed` in a [seed x example] frame, or None when that seed was not evaluated."""
    return table.loc[seed] if seed in table.index else None


def cell_intervals(
    scores: Mapping[str, pd.DataFrame], *, n_resamples: int = 2000, seed: int = 0, exp: bool = False
) -> dict[str, dict]:
    """entry -> {"mean", "low", "high", "seed10", "n_seeds", "n_examples"} from its [seed x example] scores.

    mean, low, high: the mean over examples of the seed-averaged scores and its 95 % percentile bootstrap interval
    (`stats.bootstrap_mean_interval`, examples resampled). seed10: the mean over examples at seed 10 alone (NaN when
    seed 10 was not evaluated). With `exp=True` (per-example log-perplexities) every value is exp() of it: the
    geometric-mean perplexity, its interval and its seed-10 value. Entries with fewer than two examples are left out.
    """
    out = {}
    for entry, table in scores.items():
        arr = np.asarray(table, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] < 2:
            continue
        m = stats.bootstrap_mean_interval(arr, n_resamples=n_resamples, seed=seed)
        row = _single_seed_row(table)
        seed10 = math.nan if row is None else float(np.mean(np.asarray(row, dtype=np.float64)))
        f = math.exp if exp else float
        out[entry] = {
            "mean": f(m.mean),
            "low": f(m.low),
            "high": f(m.high),
            "seed10": f(seed10),
            "n_seeds": m.n_seeds,
            "n_examples": m.n_examples,
        }
    return out


def corpus_perplexity(samples_of_entry: pd.DataFrame) -> pd.Series:
    """Token-level perplexity of one entry's sampled responses, per seed: exp(sum sample_nll / sum sample_tokens).

    `samples_of_entry`: `results.read_samples` rows of one entry (one evaluation). A (seed, example) seen twice
    counts once (the last row); responses without a scored token add nothing. Returns a Series indexed by seed
    (NaN for a seed with no scored token); empty without samples."""
    if samples_of_entry is None or len(samples_of_entry) == 0:
        return pd.Series(dtype=np.float64, name="corpus_perplexity")
    s = samples_of_entry.drop_duplicates(["seed", "example"], keep="last")
    nll = s["sample_nll"].astype(np.float64)
    tokens = s["sample_tokens"].astype(np.float64)
    ok = (tokens > 0) & np.isfinite(nll)
    sums = (
        pd.DataFrame({"seed": s["seed"], "nll": nll.where(ok, 0.0), "tokens": tokens.where(ok, 0.0)})
        .groupby("seed")
        .sum()
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(sums["tokens"] > 0, np.exp(sums["nll"] / sums["tokens"]), np.nan)
    return pd.Series(values, index=sums.index, name="corpus_perplexity", dtype=np.float64)


# --------------------------------------------------------------------------------------------------------------
# Differences to the one-step row
# --------------------------------------------------------------------------------------------------------------


def one_step_baseline(entry_key: str) -> str | None:
    """The one-step entry with the same teacher and student as a multi-step `entry_key`
    ("gpt2/1.5B>760M>120M" -> "gpt2/1.5B>120M"); None for any other entry."""
    e = registry.get(entry_key)
    if e.hops < 2:
        return None
    return registry.path_key(e.family, (e.path[0], e.student))


def sft_baseline(entry_key: str) -> str | None:
    """The SFT-only baseline of a one-step entry's student ("gpt2/1.5B>120M" -> "gpt2/120M"); None for any other
    entry."""
    e = registry.get(entry_key)
    return registry.path_key(e.family, (e.student,)) if e.hops == 1 else None


BASELINES = {"one-step": one_step_baseline, "sft": sft_baseline}


def published_difference(entry_key: str, metric: str, against: str = "one-step") -> float:
    """The paper's difference of an entry to its baseline (`against`: "one-step" for a multi-step entry, "sft" for a
    one-step entry), on the scale of `differences`: ROUGE-L points (entry − baseline) or, for `perplexity`,
    ln(ppl entry / ppl baseline) (nats of log-perplexity). Against "sft" the baseline's value is MiniLLM's reference
    (registry.Reference; ROUGE-L only). NaN without a baseline or without both numbers."""
    base = BASELINES[against](entry_key)
    if base is None:
        return math.nan
    a = getattr(registry.get(entry_key).published, metric)
    ref = registry.get(base).reference
    if against == "sft":
        b = ref.rouge_l if ref is not None and metric == "rouge_l" else None
    else:
        b = getattr(registry.get(base).published, metric)
    if a is None or b is None:
        return math.nan
    return math.log(a / b) if metric == "perplexity" else a - b


def _aligned(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """`a` and `b` on their common seeds and examples (sorted), or None with no seed or fewer than two examples."""
    seeds = a.index.intersection(b.index).sort_values()
    examples = a.columns.intersection(b.columns).sort_values()
    if len(seeds) == 0 or len(examples) < 2:
        return None
    return a.loc[seeds, examples], b.loc[seeds, examples]


def differences(
    scores: Mapping[str, pd.DataFrame],
    entries: Sequence[str],
    metric: str,
    *,
    against: str = "one-step",
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per entry of `entries` that has a baseline (in that order): its paired difference to it. `against`:
    "one-step" (every multi-step entry minus its one-step row) or "sft" (every one-step entry minus its student's
    SFT-only baseline).

    Columns DIFF_COLUMNS: `entry`, `baseline` (`one_step_baseline` / `sft_baseline`), `diff`, `low`, `high`, `p_value`
    (`stats.paired_difference` of entry − baseline on their common seeds and examples: ROUGE-L points, or nats of
    log-perplexity for `perplexity` scores), `published_diff` (`published_difference`), `half_width` ((high − low)
    / 2), `single_seed_diff` and `single_seed_half_width` (the same comparison on seed 10 alone, the first common seed
    when seed 10 is missing: what a single-seed evaluation of these examples reports and could detect),
    `n_examples`, `n_seeds`. An entry or baseline without scores keeps its row with NaN measurements (the published
    difference is still there)."""
    if metric not in ("rouge_l", "perplexity"):
        raise ValueError(f"metric must be 'rouge_l' or 'perplexity'; got {metric!r}")
    if against not in BASELINES:
        raise ValueError(f"against must be one of {', '.join(BASELINES)}; got {against!r}")
    rows = []
    for key in entries:
        base = BASELINES[against](key)
        if base is None:
            continue
        row = dict.fromkeys(DIFF_COLUMNS, math.nan)
        row.update(entry=key, baseline=base, published_diff=published_difference(key, metric, against))
        pair = _aligned(scores[key], scores[base]) if key in scores and base in scores else None
        if pair is not None:
            a, b = pair
            d = stats.paired_difference(a.to_numpy(), b.to_numpy(), n_resamples=n_resamples, seed=seed)
            one = SINGLE_SEED if SINGLE_SEED in a.index else a.index[0]
            a1, b1 = a.loc[one].to_numpy(), b.loc[one].to_numpy()
            d1 = stats.paired_difference(a1, b1, n_resamples=n_resamples, seed=seed)
            row.update(
                diff=d.mean,
                low=d.low,
                high=d.high,
                p_value=d.p_value,
                half_width=(d.high - d.low) / 2,
                single_seed_diff=d1.mean,
                single_seed_half_width=(d1.high - d1.low) / 2,
                n_examples=d.n_examples,
                n_seeds=d.n_seeds,
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=list(DIFF_COLUMNS))


def detectable(diffs: pd.DataFrame, *, prompts: int = PAPER_PROMPTS) -> dict:
    """The smallest difference the run could detect: {"this_run": median `half_width`, "single_seed": median
    `single_seed_half_width`, "single_seed_500": the single-seed half-widths scaled to `prompts` examples by
    sqrt(n_examples / prompts) (their median), "n_examples", "n_seeds", "n_comparisons"}; NaN / None without
    measured differences."""
    measured = diffs.dropna(subset=["half_width"]) if len(diffs) else diffs
    if len(measured) == 0:
        return {
            "this_run": math.nan,
            "single_seed": math.nan,
            "single_seed_500": math.nan,
            "n_examples": None,
            "n_seeds": None,
            "n_comparisons": 0,
        }
    n = measured["n_examples"].astype(float)
    return {
        "this_run": float(measured["half_width"].median()),
        "single_seed": float(measured["single_seed_half_width"].median()),
        "single_seed_500": float((measured["single_seed_half_width"] * np.sqrt(n / prompts)).median()),
        "n_examples": int(n.median()),
        "n_seeds": int(measured["n_seeds"].median()),
        "n_comparisons": len(measured),
    }


def _num(x: float) -> str:
    """Two decimals, or two significant digits below 0.1 (log-perplexity half-widths are hundredths of a nat)."""
    return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.2g}"


def detectable_line(power: Mapping, unit: str, *, log_scale: bool = False) -> str:
    """The sentence under a table: "smallest detectable difference in this run: ±X UNIT (median half-width of the
    paired 95 % intervals, ...; a single-seed evaluation of the same N examples: ±Y)", with the 500-prompt estimate
    when N is not 500 and, for `log_scale` (nats of log-perplexity), the relative change of the geometric-mean
    perplexity X stands for; "—" without samples."""
    if power["n_comparisons"] == 0 or math.isnan(power["this_run"]):
        return (
            "smallest detectable difference in this run: — (no per-example samples for a multi-step entry and its "
            "one-step row: evaluations from before samples.jsonl)"
        )
    n, s, x = power["n_examples"], power["n_seeds"], power["this_run"]
    relative = f", ≈ ±{100 * math.expm1(x):.1f} % in geometric-mean perplexity" if log_scale else ""
    text = (
        f"smallest detectable difference in this run: ±{_num(x)} {unit}{relative} (median half-width of the "
        f"{power['n_comparisons']} paired 95 % intervals, {n} examples × {s} seeds; a single-seed evaluation of "
        f"the same {n} examples: ±{_num(power['single_seed'])}"
    )
    if n != PAPER_PROMPTS:
        text += f"; of {PAPER_PROMPTS} prompts: ±{_num(power['single_seed_500'])}"
    return text + ")"


# --------------------------------------------------------------------------------------------------------------
# Rows: labels and the paper column
# --------------------------------------------------------------------------------------------------------------

# Each registry label as the tables write it: the paper's row labels (its teacher row has none) and MiniLLM's name
# for the SFT-only baseline.
ROW_LABEL = {"teacher": "", "sft": "SFT w/o KD", "minillm": "MiniLLM", "ours": "Ours"}


def paper_value(entry_key: str, metric: str) -> str:
    """A row's paper column: its published number ("24.60"), or for an SFT-only baseline MiniLLM's reference value
    marked as one ("23.3 (MiniLLM, ref.)", never checked; "— (MiniLLM: not located)" when no copy of that row was
    found; "—" for perplexity, which MiniLLM does not report)."""
    e = registry.get(entry_key)
    if e.reference is None:
        value = getattr(e.published, metric)
        return "—" if value is None else f"{value:.2f}"
    if metric != "rouge_l":
        return "—"
    if e.reference.rouge_l is None:
        return "— (MiniLLM: not located)"
    return f"{e.reference.rouge_l:.1f} (MiniLLM, ref.)"


# --------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------

FAMILY_NAME = {"gpt2": "GPT-2", "opt": "OPT"}  # as the paper writes them
_KIND_COLOUR = {
    "teacher": "#757575",
    "SFT w/o KD": "#5aae61",
    "one-step (MiniLLM)": "#d6604d",
    "multi-step (ours)": "#2166ac",
}
_ROLE_COLOUR = {"teacher": "#1f4e79", "TA": "#5b9bd5", "student": "#c9def2"}  # Figure 1's boxes


def _short(entry_key: str) -> str:
    return " → ".join(registry.get(entry_key).path)


def forest_plot(
    panels: Mapping[str, pd.DataFrame],
    family: str,
    path: str | Path | None = None,
    *,
    scale: str | None = None,
    prompts: int = PAPER_PROMPTS,
):
    """A forest plot per panel (label -> `differences` frame): each multi-step path minus its one-step row, the 95 %
    paired interval as a line, the paper's difference as an open diamond just below it, a vertical line at 0, and a
    grey band of ± the median single-seed half-width at `prompts` prompts (`detectable`): a published difference
    inside it could be noise for a single-seed evaluation with this run's per-example variance. A panel label
    containing "perplexity" is read as log-perplexity (nats, lower is better). Returns the matplotlib Figure (saved
    to `path`)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    n_rows = max((len(d) for d in panels.values()), default=1)
    fig = Figure(figsize=(6.8 * max(len(panels), 1), 2.2 + 0.75 * n_rows), layout="constrained")
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    colour, pub_colour = _KIND_COLOUR["multi-step (ours)"], "#b2182b"
    any_band = False
    for ax, (label, diffs) in zip(axes, panels.items()):
        diffs = diffs.reset_index(drop=True)
        ppl = "perplexity" in label
        spec = "+.3f" if ppl else "+.2f"
        y = np.arange(len(diffs))[::-1].astype(float)
        power = detectable(diffs, prompts=prompts)
        band = power["single_seed_500"]
        if not math.isnan(band):
            any_band = True
            ax.axvspan(-band, band, color="#e0e0e0", zorder=0, lw=0)
            ax.annotate(
                f"±{format(band, '.2g')}", (band, 1.0), xycoords=("data", "axes fraction"), xytext=(-2, -2),
                textcoords="offset points", ha="right", va="top", fontsize=7.5, color="#616161",
            )  # fmt: skip
        ax.axvline(0.0, color="black", lw=0.9, zorder=1)
        measured = diffs["diff"].notna().to_numpy()
        if measured.any():
            ax.hlines(y[measured], diffs["low"][measured], diffs["high"][measured], color=colour, lw=2.4, zorder=3)
            ax.plot(diffs["diff"][measured], y[measured], "o", color=colour, ms=6.5, zorder=4)
        ax.plot(diffs["published_diff"], y - 0.22, "D", mfc="white", mec=pub_colour, mew=1.4, ms=6.5, zorder=5, lw=0)
        for yi, row in zip(y, diffs.itertuples(index=False)):
            if math.isnan(row.diff):
                text = "no samples"
            else:
                text = f"{format(row.diff, spec)} [{format(row.low, spec)}, {format(row.high, spec)}]"
            if not math.isnan(row.published_diff):
                text += f"\npaper {format(row.published_diff, spec)}"
            ax.annotate(
                text, (1.0, yi - 0.11), xycoords=("axes fraction", "data"), xytext=(5, 0), textcoords="offset points",
                va="center", ha="left", fontsize=8, color="#333333",
            )  # fmt: skip
        labels = [f"{_short(r.entry)}\nvs {_short(r.baseline)}" for r in diffs.itertuples()]
        ax.set_yticks(y - 0.11, labels, fontsize=8.5)
        ax.set_ylim(-0.7, len(diffs) - 0.4)
        better = "< 0: multi-step better" if ppl else "> 0: multi-step better"
        ax.set_xlabel(f"{label} difference to the one-step row ({'nats' if ppl else 'points'}; {better})", fontsize=9)
        ax.grid(axis="x", color="#eeeeee", lw=0.8)
        ax.set_axisbelow(True)
        xs = [diffs[c].to_numpy(dtype=float) for c in ("low", "high", "published_diff")]
        xs = np.concatenate([*xs, [0.0, band if not math.isnan(band) else 0.0, -band if not math.isnan(band) else 0.0]])
        xs = xs[np.isfinite(xs)]
        lo, hi = float(xs.min()), float(xs.max())
        pad = 0.08 * (hi - lo or 1.0)
        ax.set_xlim(lo - pad, hi + pad)
        n_txt = f"{power['n_examples']} examples × {power['n_seeds']} seeds" if power["n_comparisons"] else "no samples"
        ax.set_title(f"{label} ({n_txt})", fontsize=10, loc="left")
    handles = [
        Line2D([], [], color=colour, marker="o", lw=2.4, label="measured: mean over seeds, 95 % paired interval"),
        Line2D([], [], color=pub_colour, marker="D", mfc="white", lw=0, label="published (paper)"),
    ]
    if any_band:
        handles.append(
            Patch(color="#e0e0e0", label=f"± median half-width of a single-seed evaluation of {prompts} prompts")
        )
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    where = f"scale {scale}; " if scale else ""
    fig.suptitle(
        f"{FAMILY_NAME.get(family, family)}: every multi-step path minus its one-step baseline "
        f"({where}paired bootstrap over examples)",
        fontsize=11,
    )
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150)
    return fig


def _log_ticks(ax, values) -> None:
    """Readable ticks on a log x axis spanning `values`: plain numbers (12, 15, 20, 1,000), at most 8 of them, from the
    densest of a few mantissa sets that fits, and the limits padded by 12 % on the log scale."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) == 0:
        return
    lo, hi = float(v.min()), float(v.max())
    span = math.log(hi / lo) if hi > lo else math.log(1.5)
    lo, hi = lo / math.exp(0.06 * span + 0.02), hi * math.exp(0.06 * span + 0.02)
    ax.set_xlim(lo, hi)
    dense = (1, 1.2, 1.4, 1.6, 1.8, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)
    ticks = []
    for subs in (dense, (1, 1.5, 2, 3, 5, 7), (1, 2, 5), (1, 3), (1,)):
        ticks = [m * 10.0**k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) for m in subs]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) <= 8:
            break
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 1000 else f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def figure2_plot(
    data: pd.DataFrame,
    path: str | Path | None = None,
    *,
    scale: str,
    published_source: str = "Table 4",
):
    """Figure 2 on a log-scale perplexity axis, one row per path of `data` (top to bottom).

    `data` columns: `path`, `kind` (teacher / SFT w/o KD / one-step (MiniLLM) / multi-step (ours)), `student`,
    `geomean_ppl`, `geomean_low`, `geomean_high` (geometric-mean perplexity of the samples with its 95 % bootstrap
    interval), `corpus_ppl`, `corpus_min`, `corpus_max` (token-level, mean and range over seeds),
    `perplexity_samples` (the checked mean of per-example exp) and `published` (none for the SFT-only baselines).
    Missing values are simply not drawn. The published values
    share the axis at scale `paper` and get a panel of their own elsewhere. Nothing can go below zero: every mark
    is a perplexity or an interval of perplexities. Returns the Figure (saved to `path`)."""
    from matplotlib.figure import Figure

    data = data.reset_index(drop=True)
    y = np.arange(len(data))[::-1].astype(float)
    same_axis = scale == "paper"
    fig = Figure(figsize=(11.5 if not same_axis else 9.5, 1.4 + 0.55 * len(data)), layout="constrained")
    if same_axis:
        ax, pub_ax = fig.subplots(1, 1), None
    else:
        ax, pub_ax = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 1.1]})

    def num(col):
        return data[col].to_numpy(dtype=float) if col in data else np.full(len(data), np.nan)

    geo, corpus = num("geomean_ppl"), num("corpus_ppl")
    lo, hi = (np.where(np.isfinite(geo), num(c), np.nan) for c in ("geomean_low", "geomean_high"))
    cmin, cmax = (np.where(np.isfinite(corpus), num(c), np.nan) for c in ("corpus_min", "corpus_max"))
    checked = num("perplexity_samples")
    colours = [_KIND_COLOUR.get(k, "#333333") for k in data["kind"]]
    # each row: geometric mean (top), corpus, perplexity_samples and, at paper scale, the published value (bottom)
    off = dict(zip(("geo", "corpus", "checked", "pub"), (0.25, 0.08, -0.08, -0.25) if same_axis else (0.2, 0, -0.2, 0)))
    ok = np.isfinite(geo)
    for yi, g, a, b, c in zip(y[ok], geo[ok], lo[ok], hi[ok], np.array(colours, dtype=object)[ok]):
        ax.hlines(yi + off["geo"], a, b, color=c, lw=2.4, zorder=3)
        ax.plot(g, yi + off["geo"], "o", color=c, ms=7, zorder=4)
    ok = np.isfinite(corpus)
    if ok.any():
        ax.hlines(y[ok] + off["corpus"], cmin[ok], cmax[ok], color="#555555", lw=1.0, zorder=3)
        ax.plot(corpus[ok], y[ok] + off["corpus"], "s", mfc="white", mec="#333333", ms=6, zorder=4)
    ok = np.isfinite(checked)
    ax.plot(checked[ok], y[ok] + off["checked"], "X", color="#333333", ms=7, zorder=4)
    pub = num("published")
    if same_axis:
        ax.plot(pub, y + off["pub"], "D", mfc="white", mec="#b2182b", mew=1.4, ms=7, zorder=5)
    else:
        pub_ax.plot(pub, y, "D", mfc="white", mec="#b2182b", mew=1.4, ms=7, zorder=5)
        pub_ax.set_xscale("log")
        _log_ticks(pub_ax, pub)
        pub_ax.set_xlabel(f"published ({published_source}); log axis", fontsize=9)
        pub_ax.set_title(
            f"paper's models ({published_source}):\nnot comparable with scale {scale}", fontsize=9, loc="left"
        )
        pub_ax.grid(axis="x", color="#eeeeee", lw=0.8)
    ax.set_xscale("log")
    _log_ticks(ax, np.concatenate([geo, lo, hi, corpus, cmin, cmax, checked] + ([pub] if same_axis else [])))
    ax.set_yticks(y, list(data["path"]), fontsize=9)
    ax.set_ylim(-0.6, len(data) - 0.4)
    for i in range(1, len(data)):  # a rule between student sizes
        if data["student"].iloc[i] != data["student"].iloc[i - 1]:
            for a in (ax, pub_ax) if pub_ax is not None else (ax,):
                a.axhline(y[i] + 0.5, color="#bdbdbd", lw=0.8)
    ax.grid(axis="x", color="#eeeeee", lw=0.8)
    ax.set_axisbelow(True)
    ax.set_xlabel(f"perplexity of the sampled responses under the scorer ↓ (scale {scale}; log axis)", fontsize=9)
    ax.set_ylabel("distillation path (teacher → TAs → student)")

    from matplotlib.lines import Line2D

    drawn = set(data["kind"][np.isfinite(geo)])
    handles = [
        Line2D([], [], color=_KIND_COLOUR[k], marker="o", lw=2.4, label=f"geometric mean, 95 % CI: {k}")
        for k in _KIND_COLOUR
        if k in drawn
    ]
    if np.isfinite(corpus).any():
        handles.append(
            Line2D([], [], color="#555555", marker="s", mfc="white", lw=1.0, label="token-level (corpus), seed range")
        )
    handles.append(Line2D([], [], color="#333333", marker="X", lw=0, label="perplexity_samples (mean of exp; checked)"))
    if same_axis:
        handles.append(
            Line2D([], [], color="#b2182b", marker="D", mfc="white", lw=0, label=f"published ({published_source})")
        )
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"Perplexity of OPT across all possible paths (Figure 2; scale {scale})", fontsize=11)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150)
    return fig


def draw_figure1(out: str | Path) -> Path:
    """Figure 1 of the paper (one-step vs multi-step distillation) drawn from `registry.ENTRIES`: one row per family,
    the one-step paths (MiniLLM) on the left and the multi-step paths (ours) on the right; each box is a model (x =
    its size in the family), each arrow one MiniLLM hop minimising KL(q_theta || p). Returns the written file."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch

    families = list(registry.FAMILIES)
    groups = {
        fam: (
            [e for e in registry.ENTRIES.values() if e.family == fam and e.hops == 1],
            [e for e in registry.ENTRIES.values() if e.family == fam and e.hops >= 2],
        )
        for fam in families
    }
    n_rows = [max(len(one), len(multi)) for one, multi in groups.values()]
    fig = Figure(figsize=(15, 1.0 + 1.05 * sum(n_rows)))
    axes = fig.subplots(len(families), 2, gridspec_kw={"height_ratios": n_rows}, squeeze=False)
    for r, fam in enumerate(families):
        sizes = registry.FAMILIES[fam].sizes
        for c, (entries, title) in enumerate(
            zip(groups[fam], ("MiniLLM: one-step distillation", "Ours: multi-step distillation through TAs"))
        ):
            ax = axes[r][c]
            ax.set_xlim(-0.55, len(sizes) + 0.9)
            ax.set_ylim(-0.6, n_rows[r] - 0.4)
            ax.invert_yaxis()
            ax.axis("off")
            ax.set_title(f"{FAMILY_NAME.get(fam, fam)} — {title}", fontsize=12, loc="left")
            for y, e in enumerate(entries):
                xs = [sizes.index(s) for s in e.path]
                for x, (role, size) in zip(xs, e.roles):
                    ax.add_patch(
                        FancyBboxPatch(
                            (x - 0.32, y - 0.28),
                            0.64,
                            0.56,
                            boxstyle="round,pad=0.02",
                            facecolor=_ROLE_COLOUR[role],
                            edgecolor="#1f1f1f",
                            linewidth=0.8,
                        )
                    )
                    ax.text(
                        x,
                        y,
                        f"{size}\n{role}",
                        ha="center",
                        va="center",
                        fontsize=9,
                        color="white" if role == "teacher" else "black",
                    )
                for x0, x1 in itertools.pairwise(xs):
                    ax.annotate(
                        "",
                        xy=(x1 - 0.34, y),
                        xytext=(x0 + 0.34, y),
                        arrowprops={"arrowstyle": "-|>", "color": "#c0392b", "lw": 1.6},
                    )
                ax.text(
                    len(sizes) - 0.5,
                    y,
                    f"{e.key}\nROUGE-L {e.published.rouge_l:.2f} ({e.published.rouge_l_source})",
                    ha="left",
                    va="center",
                    fontsize=8.5,
                    family="monospace",
                )
    fig.suptitle(
        "Figure 1 (drawn from benchmark.registry): every registered path; boxes are models, each red arrow one MiniLLM "
        "hop minimising the reverse KL(q_θ‖p)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
