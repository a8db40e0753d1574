"""Which teacher assistants? Every distillation path from a teacher to a student, ranked by published laws.

    python -m benchmark suggest --family gpt2 --student 120M                  # 4 paths, best first (capacity-gap law)
    python -m benchmark suggest --family opt --student 1.3B --by ta-quality --format json
    python -m benchmark suggest --family gpt2 --student 120M --results runs/small --scale small  # + measured
    python -m benchmark suggest --sizes 12B,6.9B,2.8B,1.4B,410M,160M --student 160M   # any size ladder (Pythia)
    python -m benchmark figure1                       # Figure 1 of the paper, drawn from the registry's entries
    python -m benchmark planner-report --scale small  # notebooks/planner.ipynb -> paper_tables/small/planner.md

A path is the teacher, any ordered subset of the sizes between teacher and student, and the student: n intermediate
sizes give 2**n paths (GPT-2 1.5B -> 120M: 4; the Pythia ladder 12B -> 160M: 16). Each path gets one score per law
(`LAWS`; for every law lower is better), the plan's cost of the hops not yet trained, its measured ROUGE-L when a
results store is given, and a one-sentence rationale. Paths are ranked by one law (`--by`, default capacity-gap), ties
broken by fewer hops, then by the order of the sizes; `--by measured` ranks by measured ROUGE-L instead.

The laws, each a function of the path (what was verified in each source, and what was not, is stated beside it):

capacity-gap        sum over hops of |ln(N_teacher / N_student) - ln 2.5| (parameter counts); 0 for a chain whose every
                    hop is 2.5x. Zhang, Li, Song, Ye, Gao & Hu, "Towards the Law of Capacity Gap in Distilling Language
                    Models", ACL 2025 (arXiv 2311.07052). Verified: the abstract (ACL Anthology 2025.acl-long.1097)
                    states the law, "the optimal teacher consistently scales linearly with the student scale", inducted
                    from distilling small (< 3B) GPT-2 and Pythia LMs and extended to a 7B teacher (MiniMA-3B from
                    LLaMA2-7B). The factor 2.5 was verified only in secondary summaries of the paper (ACL 2025 paper
                    notes; its authors' team's blog: "the optimal teacher model size is approximately 2.5 times the
                    student model size"); the section of the primary text stating 2.5 was NOT read, so no section is
                    cited for it. The law is about one hop; scoring a chain hop by hop, and the hop count
                    ceil(ln(N_T / N_S) / ln 2.5) reported as `optimal_hops`, are this suite's extrapolation (the one
                    suggested in the project's issue #17), not the paper's.
error-accumulation  the number of teacher assistants (hops - 1): each TA passes its errors on to every model after it.
                    Son, Na, Choi & Hwang, "Densely Guided Knowledge Distillation using Multiple Teacher Assistants",
                    ICCV 2021, §1 (Introduction) and Figure 1(c): in TAKD's sequential chain "mistakes made by early
                    teacher assistants propagate" (the "error avalanche problem"; verified in the paper's abstract page
                    and a summary of §1, not in the full text). DGKD gives no formula: one unit of penalty per TA is
                    this suite's reading. The seed paper says the same of its three-step GPT-2 chain (§4.1: "too many
                    intermediate models accumulate errors"; §3: "too many steps may accumulate information loss").
geometric-midpoint  min over the path's TAs of |ln N_TA - (ln N_T + ln N_S) / 2|; a path without a TA scores
                    ln(N_T / N_S) / 2 (the teacher's own distance). The seed paper's hypothesis (Yim, Ko & Bharadwaj,
                    §3: "the optimal TA lies near the geometric midpoint between teacher and student capacity";
                    verified in shared/paper/mskd-paper.txt).
takd-quality        min over the path's TAs of |Q(TA) - (Q(T) + Q(S)) / 2|, Q = ROUGE-L; without a TA (Q(T) - Q(S)) / 2.
                    Mirzadeh et al., "Improved Knowledge Distillation via Teacher Assistant", AAAI 2020, section "What
                    is the Best TA Size?" (verified in the full text): "the optimal TA size ... is actually placed
                    close to the middle in terms of average accuracy rather than the average of size"; "incorporating a
                    TA with size close to the average performance of teacher and student seems to be a reasonable
                    heuristic".
                    TAKD's Q are networks trained from scratch (its Figure 4); none are registered here, so Q(TA) is the
                    TA as trained along this path (the entry of the path's prefix that ends at the TA), Q(T) the teacher
                    row and Q(S) the one-step student (teacher > student), the nearest registered stand-in for a student
                    without a TA. Needs quality: without those numbers the score is null ("needs quality").
ta-quality          perplexity of the student's own teacher (the last TA as trained along the path; the teacher for a
                    one-step path). The seed paper's reading (§4.1: "TA quality rather than the number of distillation
                    stages is the primary determinant"; §5: "the performance of the TA directly predicts the final
                    student's quality", measured by the TA's perplexity: 760M at 15.40 beats 340M at 17.55). Needs
                    quality (Tables 3-4, or the results store's `perplexity_samples`); null without it.

Quality comes from the paper's Tables 1-4 (registry) or, with `--results`, from the results store at `--scale`.
TAKD also found that without a budget a full path through every TA distils best ("Why Limiting to 1-step TA?"); that
observation is not a separate law here: the capacity-gap score favours it whenever the hops stay near 2.5x.

Cost: for a registered family, `plan.build_plan` at `--scale` and `plan.stage_cost_value` of every hop's distill stage;
with `--results RUN` only hops whose stages are not done in RUN (`plan.stage_status`) count (an interrupted one counts
whole); a hop served by a public
checkpoint ("sourced", the one-step hops at paper scale) costs nothing. A path outside the registry (another teacher,
or a `--sizes` ladder) is estimated with plan.py's rule per hop: 20 V100-GPU-hours per billion parameters of student
+ teacher (`plan.stage_cost_value`; a ladder only at paper scale).
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark import BenchmarkError, plan, registry

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "planner.ipynb"
FIGURE1 = REPO / "paper_tables" / "figure1.png"

OPTIMAL_RATIO = 2.5  # Zhang et al. 2025 (arXiv 2311.07052): optimal teacher ~2.5x its student (see module docstring)
V100_HOURS_PER_B = 20.0  # plan.stage_cost_value's paper-scale rule (tests/test_planner.py keeps the two equal)


class PlannerError(BenchmarkError, ValueError):
    """A family, size, ladder or option `suggest` cannot use; the message says what would work."""


# --------------------------------------------------------------------------------------------------------------
# Sizes and ladders
# --------------------------------------------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmbt])\s*$", re.IGNORECASE)
_UNIT_B = {"k": 1e-6, "m": 1e-3, "b": 1.0, "t": 1e3}


def parse_size(text: str) -> float:
    """A model size in billions of parameters: "1.5B" -> 1.5, "760M" -> 0.76, "160m" -> 0.16, "1T" -> 1000."""
    m = _SIZE_RE.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise PlannerError(f"{text!r} is not a model size; write a positive number and a unit, e.g. 760M or 1.5B")
    return float(m.group(1)) * _UNIT_B[m.group(2).lower()]


def size_label(text: str) -> str:
    """The canonical spelling of a size: "6.9b" -> "6.9B", " 160 m" -> "160M"."""
    m = _SIZE_RE.match(str(text))
    if not m:
        parse_size(text)  # raises
    return f"{m.group(1)}{m.group(2).upper()}"


@dataclass(frozen=True)
class Ladder:
    """The sizes a chain may use, largest first, with their parameter counts (billions), teacher and student."""

    labels: tuple[str, ...]
    params_b: tuple[float, ...]
    teacher: str
    student: str
    family: str | None = None  # a registered family, or None for a `--sizes` ladder
    params_note: str = ""

    def params(self, label: str) -> float:
        return self.params_b[self.labels.index(label)]

    @property
    def between(self) -> tuple[str, ...]:
        """The sizes strictly between teacher and student: the candidate teacher assistants."""
        return self.labels[self.labels.index(self.teacher) + 1 : self.labels.index(self.student)]

    def key(self, path: Sequence[str]) -> str:
        return registry.path_key(self.family, tuple(path)) if self.family else ">".join(path)

    def registered(self, path: Sequence[str]) -> bool:
        return self.family is not None and self.key(path) in registry.ENTRIES


def _nearest(text: str, labels: Sequence[str], params: Sequence[float]) -> str | None:
    """The size in `labels` closest to `text`: in log-parameters when `text` is a size, else by spelling."""
    try:
        want = parse_size(text)
    except PlannerError:
        hint = difflib.get_close_matches(str(text), list(labels), n=1)
        return hint[0] if hint else None
    return min(zip(labels, params), key=lambda lp: abs(math.log(lp[1] / want)))[0]


def _resolve(text: str, labels: Sequence[str], params: Sequence[float], where: str, role: str) -> str:
    """`text` as one of `labels` (case-insensitive, or the same parameter count); else one sentence naming the
    nearest size."""
    wanted = str(text).strip()
    for label in labels:
        if label.lower() == wanted.lower():
            return label
    try:
        n = parse_size(wanted)
    except PlannerError:
        n = None
    if n is not None:
        for label, p in zip(labels, params):
            if math.isclose(p, n, rel_tol=1e-9) or math.isclose(parse_size(label), n, rel_tol=1e-9):
                return label
    hint = _nearest(wanted, labels, params)
    raise PlannerError(
        f"{where} has no {role} size {wanted!r}; sizes are {', '.join(labels)}"
        + (f" (did you mean {hint}?)" if hint else "")
    )


def _check_order(ladder_labels: Sequence[str], teacher: str, student: str) -> None:
    if ladder_labels.index(student) <= ladder_labels.index(teacher):
        raise PlannerError(
            f"the student {student} is not smaller than the teacher {teacher}: a chain distils into smaller models"
        )


def family_ladder(family: str, student: str, teacher: str | None = None) -> Ladder:
    """A registered family's sizes with the paper-scale parameter counts plan.py uses (`plan._PAPER_PARAMS_B`)."""
    if family not in registry.FAMILIES:
        hint = difflib.get_close_matches(family, list(registry.FAMILIES), n=1)
        raise PlannerError(
            f"unknown family {family!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; families are {', '.join(registry.FAMILIES)}, or give any ladder with --sizes"
        )
    fam = registry.FAMILIES[family]
    params = tuple(plan._PAPER_PARAMS_B.get(s, parse_size(s)) for s in fam.sizes)
    t = _resolve(teacher, fam.sizes, params, family, "teacher") if teacher else fam.teacher
    s = _resolve(student, fam.sizes, params, family, "student")
    _check_order(fam.sizes, t, s)
    return Ladder(
        labels=fam.sizes,
        params_b=params,
        teacher=t,
        student=s,
        family=family,
        params_note="parameter counts of the public checkpoints (plan.py's _PAPER_PARAMS_B)",
    )


def size_ladder(sizes: str | Sequence[str], student: str, teacher: str | None = None) -> Ladder:
    """Any ladder of sizes ("12B,6.9B,2.8B,1.4B,410M,160M"), parameter counts read from the names."""
    items = [s for s in (sizes.split(",") if isinstance(sizes, str) else sizes) if str(s).strip()]
    labels = [size_label(s) for s in items]
    params = [parse_size(s) for s in items]
    if len(labels) < 2:
        raise PlannerError(
            f"a ladder needs at least 2 sizes (a teacher and a student); got {len(labels)}: e.g. --sizes 1.5B,760M,120M"
        )
    seen: dict[float, str] = {}
    for label, p in zip(labels, params):
        if p in seen:
            raise PlannerError(f"the ladder names one size twice ({seen[p]} and {label}); list each size once")
        seen[p] = label
    order = sorted(range(len(labels)), key=lambda i: -params[i])
    labels = [labels[i] for i in order]
    params = [params[i] for i in order]
    t = _resolve(teacher, labels, params, "the ladder", "teacher") if teacher else labels[0]
    s = _resolve(student, labels, params, "the ladder", "student")
    _check_order(labels, t, s)
    return Ladder(
        labels=tuple(labels),
        params_b=tuple(params),
        teacher=t,
        student=s,
        params_note="parameter counts read from the size names",
    )


def enumerate_paths(ladder: Ladder) -> list[tuple[str, ...]]:
    """Teacher + every ordered subset of the sizes in between + student, fewest hops first: 2**n paths."""
    between = ladder.between
    return [
        (ladder.teacher, *subset, ladder.student)
        for r in range(len(between) + 1)
        for subset in itertools.combinations(between, r)
    ]


def ratios(ladder: Ladder, path: Sequence[str]) -> list[float]:
    """Parameter ratio teacher / student of every hop."""
    return [ladder.params(a) / ladder.params(b) for a, b in itertools.pairwise(path)]


def optimal_hops(n_teacher: float, n_student: float, ratio: float = OPTIMAL_RATIO) -> int:
    """Hops at ~`ratio` each from n_teacher to n_student: ceil(ln(N_T / N_S) / ln ratio) (issue #17's extrapolation
    of the capacity-gap law to chains). GPT-2 1.5B -> 120M (12.5x nominal, 13x in parameters) and OPT 13B -> 1.3B
    (10x): 3."""
    if n_student >= n_teacher:
        raise PlannerError(f"the student ({n_student:g}B) is not smaller than the teacher ({n_teacher:g}B)")
    return max(1, math.ceil(math.log(n_teacher / n_student) / math.log(ratio) - 1e-12))


# --------------------------------------------------------------------------------------------------------------
# Laws
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quality:
    """Per-entry quality the quality laws read: entry key -> ROUGE-L and perplexity, and where they come from."""

    rouge_l: dict[str, float]
    perplexity: dict[str, float]
    source: str

    @classmethod
    def published(cls) -> Quality:
        return cls(
            rouge_l={k: e.published.rouge_l for k, e in registry.ENTRIES.items() if e.published.rouge_l is not None},
            perplexity={
                k: e.published.perplexity for k, e in registry.ENTRIES.items() if e.published.perplexity is not None
            },
            source="published (Tables 1-4)",
        )

    @classmethod
    def none(cls) -> Quality:
        return cls({}, {}, "none")


@dataclass(frozen=True)
class PathView:
    ladder: Ladder
    path: tuple[str, ...]
    quality: Quality

    @property
    def tas(self) -> tuple[str, ...]:
        return self.path[1:-1]

    def n(self, label: str) -> float:
        return self.ladder.params(label)

    def key(self, prefix: Sequence[str]) -> str | None:
        return self.ladder.key(prefix) if self.ladder.registered(prefix) else None


@dataclass(frozen=True)
class Law:
    id: str
    short: str  # table column
    name: str
    formula: str
    source: str
    score: Callable[[PathView], tuple[float | None, str]] = field(repr=False)


def _capacity_gap(v: PathView) -> tuple[float | None, str]:
    r = ratios(v.ladder, v.path)
    score = sum(abs(math.log(x) - math.log(OPTIMAL_RATIO)) for x in r)
    k = optimal_hops(v.n(v.path[0]), v.n(v.path[-1]))
    return score, f"{len(r)} hop(s) against the law's {k} at ~{OPTIMAL_RATIO}x"


def _error_accumulation(v: PathView) -> tuple[float | None, str]:
    return float(len(v.tas)), f"{len(v.tas)} TA(s) whose errors the student inherits"


def _geometric_midpoint(v: PathView) -> tuple[float | None, str]:
    t, s = v.n(v.path[0]), v.n(v.path[-1])
    mid = (math.log(t) + math.log(s)) / 2
    if not v.tas:
        return math.log(t / s) / 2, f"no TA (geometric midpoint {math.exp(mid):.3g}B)"
    best = min(v.tas, key=lambda a: abs(math.log(v.n(a)) - mid))
    return abs(math.log(v.n(best)) - mid), f"TA {best} nearest the geometric midpoint {math.exp(mid):.3g}B"


def _takd_quality(v: PathView) -> tuple[float | None, str]:
    q = v.quality.rouge_l
    teacher, one_step = v.key(v.path[:1]), v.key((v.path[0], v.path[-1]))
    if teacher is None or one_step is None or teacher not in q or one_step not in q:
        return None, "needs quality: ROUGE-L of the teacher and of the one-step student"
    mid = (q[teacher] + q[one_step]) / 2
    if not v.tas:
        return abs(q[teacher] - mid), f"no TA (midpoint {mid:.2f} ROUGE-L)"
    dists = {}
    for i, ta in enumerate(v.tas, start=1):
        key = v.key(v.path[: i + 1])
        if key is None or key not in q:
            return None, f"needs quality: ROUGE-L of the TA {ta} as trained along this path"
        dists[ta] = abs(q[key] - mid)
    best = min(dists, key=dists.get)
    return dists[best], f"TA {best} nearest the midpoint {mid:.2f} ROUGE-L"


def _ta_quality(v: PathView) -> tuple[float | None, str]:
    key = v.key(v.path[:-1])
    if key is None or key not in v.quality.perplexity:
        return None, "needs quality: perplexity of the student's own teacher"
    who = f"TA {v.path[-2]}" if v.tas else f"teacher {v.path[0]}"
    return float(v.quality.perplexity[key]), f"{who} at perplexity {v.quality.perplexity[key]:.2f}"


LAWS: dict[str, Law] = {
    law.id: law
    for law in (
        Law(
            "capacity-gap",
            "cap-gap",
            "law of capacity gap",
            "sum over hops |ln(N_teacher/N_student) - ln 2.5|",
            "Zhang et al., ACL 2025 (arXiv 2311.07052); 2.5x from secondary summaries, chain extension is issue #17's",
            _capacity_gap,
        ),
        Law(
            "error-accumulation",
            "err-acc",
            "error accumulation (DGKD)",
            "number of TAs (hops - 1)",
            "Son et al., ICCV 2021, §1 and Fig. 1(c) ('error avalanche'); seed paper §3, §4.1",
            _error_accumulation,
        ),
        Law(
            "geometric-midpoint",
            "geo-mid",
            "TA at the geometric midpoint (seed paper)",
            "min over TAs |ln N_TA - (ln N_T + ln N_S)/2|; no TA: ln(N_T/N_S)/2",
            "Yim, Ko & Bharadwaj, EACL 2026 SRW, §3",
            _geometric_midpoint,
        ),
        Law(
            "takd-quality",
            "takd-q",
            "TA quality at the teacher-student midpoint (TAKD)",
            "min over TAs |Q(TA) - (Q(T) + Q(S))/2|, Q = ROUGE-L; no TA: (Q(T) - Q(S))/2",
            "Mirzadeh et al., AAAI 2020, 'What is the Best TA Size?'",
            _takd_quality,
        ),
        Law(
            "ta-quality",
            "ta-ppl",
            "quality of the student's own teacher (seed paper)",
            "perplexity of the last TA as trained along the path (the teacher for one step)",
            "Yim, Ko & Bharadwaj, EACL 2026 SRW, §4.1 and §5",
            _ta_quality,
        ),
    )
}
DEFAULT_LAW = "capacity-gap"
RANK_BY = (*LAWS, "measured")


# --------------------------------------------------------------------------------------------------------------
# Kendall's tau
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


def law_agreement(suggestions: Sequence[dict], law: str, truth: dict[str, float], higher_is_better: bool = True):
    """Kendall's tau-b between a law's prediction and measured values over the paths that have both: +1 when the
    law orders the paths exactly as measured (its lower score where the measured value is better), -1 reversed."""
    pairs = [
        (s["predicted"][law]["score"], truth[s["key"]])
        for s in suggestions
        if s["predicted"][law]["score"] is not None and truth.get(s["key"]) is not None
    ]
    if len(pairs) < 2:
        return math.nan
    sign = -1.0 if higher_is_better else 1.0
    return kendall_tau([sign * p for p, _ in pairs], [m for _, m in pairs])


# --------------------------------------------------------------------------------------------------------------
# Measurements (results store) and cost (plan)
# --------------------------------------------------------------------------------------------------------------


def _newest(df, metric: str, scale: str):
    rows = df[(df["metric"] == metric) & (df["scale"] == scale)]
    if "created" in rows:
        rows = rows.sort_values("created", kind="stable")
    return rows.drop_duplicates("entry", keep="last").set_index("entry")


def _sample_table(samples, entry: str, stage) -> np.ndarray | None:
    """[seeds, examples] per-example ROUGE-L of one entry's evaluation, or None without samples."""
    if samples is None or len(samples) == 0:
        return None
    s = samples[samples["entry"] == entry]
    if isinstance(stage, str) and "stage" in s.columns:
        s = s[s["stage"] == stage]
    if s.empty or s["rouge_l"].isna().all():
        return None
    s = s.drop_duplicates(["seed", "example"], keep="last")
    table = s.pivot(index="seed", columns="example", values="rouge_l").astype(float)
    table = table.fillna(table.mean(axis=0)).dropna(axis=1, how="all")
    return table.to_numpy() if table.shape[1] >= 2 else None


def measured(run, scale: str) -> tuple[dict[str, dict], Quality]:
    """From a results store at `scale` (the scale's default configs): entry -> ROUGE-L mean and 95 % interval, and the
    measured quality (ROUGE-L, `perplexity_samples`) the quality laws read.

    The interval is `stats.bootstrap_mean_interval` over the per-example samples when `results.read_samples` exists
    and the evaluation wrote samples; otherwise mean ± 1.96·std/sqrt(n_seeds) over the seeds ("interval over seeds";
    none with a single seed)."""
    from benchmark import results, stats

    df = results.read(run, overrides={}, scale=scale)
    rouge = _newest(df, "rouge_l", scale)
    ppl = _newest(df, "perplexity_samples", scale)
    samples = results.read_samples(run, overrides={}, scale=scale) if hasattr(results, "read_samples") else None
    out: dict[str, dict] = {}
    for entry, rec in rouge.iterrows():
        table = _sample_table(samples, entry, rec.get("stage"))
        if table is not None:
            mi = stats.bootstrap_mean_interval(table)
            out[entry] = {
                "mean": mi.mean,
                "low": mi.low,
                "high": mi.high,
                "level": mi.level,
                "interval": "percentile bootstrap over examples (benchmark.stats.bootstrap_mean_interval)",
                "n_seeds": mi.n_seeds,
                "n_examples": mi.n_examples,
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
        perplexity={e: float(m) for e, m in ppl["mean"].items() if m is not None and not math.isnan(m)},
        source=f"measured in {run} at scale {scale}",
    )
    return out, quality


def _run_dir(run) -> Path:
    p = Path(run)
    return p if p.is_dir() or p.suffix == "" else p.parent


def path_costs(ladder: Ladder, paths: Sequence[tuple[str, ...]], scale: str, run=None) -> dict[tuple, dict]:
    """path -> {"amount", "unit", "hops_to_train", "hops": [{"hop", "stage", "status", "cost"}], "basis"}: the cost of
    the hops not yet trained (see the module docstring)."""
    from benchmark.config import MiniLLMConfig, for_scale, to_dict

    sc = registry.scale(scale)
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
    default_minillm = to_dict(for_scale(MiniLLMConfig, sc.minillm))
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
    registry.scale(scale)
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


def cmd_suggest(args: argparse.Namespace) -> int:
    suggestions = suggest(
        family=args.family,
        sizes=args.sizes,
        student=args.student,
        teacher=args.teacher,
        results=args.results,
        scale=args.scale,
        by=args.by,
    )
    if args.format == "json":
        print(json.dumps(suggestions, indent=2, ensure_ascii=False))
    else:
        print(format_table(suggestions, args.by, args.scale, args.results))
    return 0


# --------------------------------------------------------------------------------------------------------------
# Figure 1 and the report notebook
# --------------------------------------------------------------------------------------------------------------

_DISPLAY = {"gpt2": "GPT-2", "opt": "OPT"}
_ROLE_COLOUR = {"teacher": "#1f4e79", "TA": "#5b9bd5", "student": "#c9def2"}


def draw_figure1(out: str | Path = FIGURE1) -> Path:
    """Figure 1 of the paper (one-step vs multi-step distillation) drawn from `registry.ENTRIES`: one row per family,
    the one-step paths (MiniLLM) on the left and the multi-step paths (ours) on the right; each box is a model (x =
    its size in the family), each arrow one MiniLLM hop minimising KL(q_theta || p). Returns the written file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
    fig, axes = plt.subplots(
        len(families),
        2,
        figsize=(15, 1.0 + 1.05 * sum(n_rows)),
        gridspec_kw={"height_ratios": n_rows},
        squeeze=False,
    )
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
            ax.set_title(f"{_DISPLAY.get(fam, fam)} — {title}", fontsize=12, loc="left")
            for y, e in enumerate(entries):
                xs = [sizes.index(s) for s in e.path]
                for i, (x, size) in enumerate(zip(xs, e.path)):
                    role = "teacher" if i == 0 else ("student" if i == len(e.path) - 1 else "TA")
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
    plt.close(fig)
    return out


def cmd_figure1(args: argparse.Namespace) -> int:
    print(f"wrote {draw_figure1(args.out)}")
    return 0


def run_report(results_dir: str | Path | None, scale: str, out_dir: str | Path | None = None) -> Path:
    """Execute notebooks/planner.ipynb with papermill (as `benchmark.notebooks` runs the table notebooks): each
    law's ranking next to the paper's and (if `results_dir` holds a store) the measured ranking at `scale`, with
    Kendall's tau; writes `<out_dir>/planner.md` (default paper_tables/<scale>/) and the executed copy to
    `<out_dir>/executed/`."""
    from benchmark.notebooks import execute

    registry.scale(scale)
    out = Path(out_dir).resolve() if out_dir else REPO / "paper_tables" / scale
    executed = out / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    rel = "" if results_dir is None else os.path.relpath(Path(results_dir).resolve(), REPO)  # "": no store
    execute("planner", executed / "planner.ipynb", {"results_dir": rel, "scale": scale, "out_dir": str(out)})
    return out / "planner.md"


def cmd_report(args: argparse.Namespace) -> int:
    print(f"wrote {run_report(args.results, args.scale, args.out)}")
    return 0


def add_cli(subparsers) -> None:
    laws = "; ".join(f"{law.id}: {law.formula}" for law in LAWS.values())
    s = subparsers.add_parser(
        "suggest",
        help="rank every distillation path (which TAs?) by the capacity-gap, TAKD, DGKD and the paper's laws",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--family", help=f"a registered family ({', '.join(registry.FAMILIES)})")
    where.add_argument(
        "--sizes",
        help="any size ladder, comma-separated, e.g. 12B,6.9B,2.8B,1.4B,410M,160M (the Pythia suite); parameter "
        "counts are read from the names",
    )
    s.add_argument("--student", required=True, help="the student size, e.g. 120M")
    s.add_argument("--teacher", help="the teacher size (default: the family's teacher / the ladder's largest size)")
    s.add_argument(
        "--results",
        metavar="RUN",
        help="a results directory: measured ROUGE-L (95 %% interval) per path, measured quality for the quality laws, "
        "and only the hops whose stages are not done in RUN are costed",
    )
    s.add_argument(
        "--scale",
        default="paper",
        choices=list(registry.SCALES),
        help="the scale of the cost model and of the records read from --results (default paper)",
    )
    s.add_argument(
        "--by",
        default=DEFAULT_LAW,
        choices=list(RANK_BY),
        metavar="LAW",
        help=f"rank by this law (lower score first; ties: fewer hops first), default {DEFAULT_LAW}; or 'measured' "
        f"(ROUGE-L from --results, highest first). Laws: {laws}",
    )
    s.add_argument("--format", choices=["table", "json"], default="table", help="a table (default) or JSON, best first")
    s.set_defaults(func=cmd_suggest)

    f = subparsers.add_parser("figure1", help="draw the paper's Figure 1 (one-step vs multi-step) from the registry")
    f.add_argument("--out", default=str(FIGURE1), help="output PNG (default paper_tables/figure1.png)")
    f.set_defaults(func=cmd_figure1)

    r = subparsers.add_parser(
        "planner-report",
        help="each law's ranking next to the measured one, with Kendall's tau (notebooks/planner.ipynb)",
    )
    r.add_argument("--results", help="results directory (default: none; the paper's numbers only)")
    r.add_argument(
        "--scale", default="small", choices=list(registry.SCALES), help="scale of the results (default small)"
    )
    r.add_argument("--out", help="output directory (default paper_tables/<scale>)")
    r.set_defaults(func=cmd_report)
