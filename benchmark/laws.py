"""Which teacher assistants? The paths from a teacher to a student, and the published laws that score them.

    from benchmark import laws
    ladder = laws.family_ladder("gpt2", "120M")    # GPT-2's sizes with the public checkpoints' parameter counts
    laws.enumerate_paths(ladder)                   # 4 paths: the teacher, any ordered subset of 760M/340M, 120M
    laws.size_ladder("12B,6.9B,2.8B,1.4B,410M,160M", "160M")  # any size ladder (Pythia): 16 paths
    view = laws.PathView(ladder, ("1.5B", "760M", "120M"), laws.Quality.published())
    laws.LAWS["capacity-gap"].score(view)          # -> (score, one-line note); lower is better for every law

A path is the teacher, any ordered subset of the sizes between teacher and student, and the student: n intermediate
sizes give 2**n paths (GPT-2 1.5B -> 120M: 4; the Pythia ladder 12B -> 160M: 16). A law is a pure function of the
path: of its parameter counts and, for the quality laws, of per-entry quality numbers (`Quality`: the paper's Tables
1-4, or a results store's measurements through `benchmark.planner.measured`). `benchmark.planner` ranks the paths by
one law, with the plan's costs and the measured ROUGE-L beside them.

The laws (what was verified in each source, and what was not, is stated beside it):

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

TAKD also found that without a budget a full path through every TA distils best ("Why Limiting to 1-step TA?"); that
observation is not a separate law here: the capacity-gap score favours it whenever the hops stay near 2.5x.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from benchmark import BenchmarkError, plan, registry

OPTIMAL_RATIO = 2.5  # Zhang et al. 2025 (arXiv 2311.07052): optimal teacher ~2.5x its student (see module docstring)


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
    """A registered family's sizes with the paper-scale parameter counts plan.py uses (`plan.PAPER_PARAMS_B`)."""
    if family not in registry.FAMILIES:
        hint = difflib.get_close_matches(family, list(registry.FAMILIES), n=1)
        raise PlannerError(
            f"unknown family {family!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; families are {', '.join(registry.FAMILIES)}, or give any ladder with --sizes"
        )
    fam = registry.FAMILIES[family]
    params = tuple(plan.PAPER_PARAMS_B.get(s, parse_size(s)) for s in fam.sizes)
    t = _resolve(teacher, fam.sizes, params, family, "teacher") if teacher else fam.teacher
    s = _resolve(student, fam.sizes, params, family, "student")
    _check_order(fam.sizes, t, s)
    return Ladder(
        labels=fam.sizes,
        params_b=params,
        teacher=t,
        student=s,
        family=family,
        params_note="parameter counts of the public checkpoints (plan.py's PAPER_PARAMS_B)",
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
    """What a law sees of one path: its ladder (parameter counts), the path and the quality numbers."""

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
    """A published law as a score of a path (lower is better): `score(view)` -> (score or None without the quality it
    needs, a one-line note), with the formula and the source it cites."""

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
