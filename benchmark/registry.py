"""The paper, as data: model families, their public checkpoints, the 16 paper entries and their published numbers,
and the 6 SFT-only baselines.

    python -m benchmark ls                       # 22 entries with their published ROUGE-L / perplexity
    python -m benchmark show gpt2/1.5B>760M>120M --scale small
    python -m benchmark validate                 # resolves every entry at every scale

An entry is a distillation path from a family's teacher through any subset of the intermediate sizes, in
decreasing order: `gpt2/1.5B>760M>120M` distils 1.5B -> 760M (TA) -> 120M. `gpt2/1.5B` is the teacher row.
Every such path is a row of Tables 1-4 of Yim, Ko & Bharadwaj, "Beyond One-Step Distillation" (EACL 2026 SRW,
`shared/paper/mskd-paper.txt`); the OPT paths are the bars of its Figure 2.

A student size alone, `gpt2/120M`, is that student's SFT init with no distillation: MiniLLM's "SFT w/o KD" row
(Gu et al. 2024, Table 1), the baseline every distillation path has to beat. The seed paper has no such row, so
these entries have no published number; MiniLLM's own values are kept beside them as references, never checked.

How big each size is at the `paper`, `small` and `tiny` scales is `benchmark.scales`.
"""

from __future__ import annotations

import difflib
import itertools
import json
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from benchmark import BenchmarkError

Arch = Literal["gpt2", "opt"]


class RegistryError(BenchmarkError, ValueError):
    """A key, path or scale that the registry cannot resolve; the message says what would work."""


# --------------------------------------------------------------------------------------------------------------
# Families and their public checkpoints (minillm-reference.md §3.2; paper §4 "TA and student sizes are chosen
# from public MiniLLM checkpoints").
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    name: Arch
    sizes: tuple[str, ...]  # decreasing; sizes[0] is the teacher
    base: dict[str, str]  # size -> pretrained base model on the hub
    teacher_sft: str  # SFT teacher, selected by validation ROUGE-L
    init: dict[str, str]  # size -> SFT student init, selected by validation loss (MiniLLM phase 1)
    minillm: dict[str, str]  # size -> one-step MiniLLM student distilled from the teacher
    pt_corpus: str  # MiniLLM's pre-training corpus for the PT loss (reference §4.2)

    @property
    def teacher(self) -> str:
        return self.sizes[0]


FAMILIES: MappingProxyType[str, Family] = MappingProxyType(
    {
        "gpt2": Family(
            name="gpt2",
            sizes=("1.5B", "760M", "340M", "120M"),
            base={
                "1.5B": "openai-community/gpt2-xl",
                "760M": "openai-community/gpt2-large",
                "340M": "openai-community/gpt2-medium",
                "120M": "openai-community/gpt2",
            },
            teacher_sft="MiniLLM/teacher-gpt2-1.5B",
            init={s: f"MiniLLM/init-gpt2-{s}" for s in ("760M", "340M", "120M")},
            minillm={s: f"MiniLLM/MiniLLM-gpt2-{s}" for s in ("760M", "340M", "120M")},
            pt_corpus="openwebtext",
        ),
        "opt": Family(
            name="opt",
            sizes=("13B", "6.7B", "2.7B", "1.3B"),
            base={
                "13B": "facebook/opt-13b",
                "6.7B": "facebook/opt-6.7b",
                "2.7B": "facebook/opt-2.7b",
                "1.3B": "facebook/opt-1.3b",
            },
            teacher_sft="MiniLLM/teacher-OPT-13B",
            init={s: f"MiniLLM/init-OPT-{s}" for s in ("6.7B", "2.7B", "1.3B")},
            minillm={s: f"MiniLLM/MiniLLM-OPT-{s}" for s in ("6.7B", "2.7B", "1.3B")},
            pt_corpus="roberta",
        ),
    }
)


# --------------------------------------------------------------------------------------------------------------
# Published numbers: Tables 1-4 of the paper (also shared/paper/published_numbers.csv; 32 values).
# (rouge_l from Table 1/2, perplexity from Table 3/4). The MiniLLM rows are MiniLLM's own Table 1 values
# (see shared/research/published-verification.md: 7 of 8 confirmed; OPT 2.7B = 27.4 not found in a copy).
# --------------------------------------------------------------------------------------------------------------

_PUBLISHED: dict[str, tuple[float, float]] = {
    # key: (ROUGE-L, perplexity)                 Table 1 / Table 3 rows, in the paper's order
    "gpt2/1.5B": (27.60, 21.94),
    "gpt2/1.5B>760M": (26.40, 15.40),
    "gpt2/1.5B>340M": (25.40, 24.77),
    "gpt2/1.5B>760M>340M": (26.30, 17.55),
    "gpt2/1.5B>120M": (24.60, 23.93),
    "gpt2/1.5B>760M>120M": (27.20, 21.56),
    "gpt2/1.5B>340M>120M": (27.00, 21.76),
    "gpt2/1.5B>760M>340M>120M": (24.10, 22.31),
    # Table 2 / Table 4 rows
    "opt/13B": (29.20, 17.83),
    "opt/13B>6.7B": (29.00, 11.35),
    "opt/13B>2.7B": (27.40, 13.44),
    "opt/13B>6.7B>2.7B": (31.29, 11.27),
    "opt/13B>1.3B": (26.70, 13.79),
    "opt/13B>6.7B>1.3B": (30.57, 12.52),
    "opt/13B>2.7B>1.3B": (30.13, 12.99),
    "opt/13B>6.7B>2.7B>1.3B": (30.46, 11.88),
}

# Which paper artefacts each family's entries appear in: (ROUGE-L table, perplexity table), figures.
_TABLES = {"gpt2": (1, 3), "opt": (2, 4)}
_FIGURES = {"gpt2": (), "opt": (2,)}


# MiniLLM's "SFT w/o KD" rows, Dolly ROUGE-L (Gu et al. 2024, Table 1), as read from secondary copies of the table
# (shared/research/published-verification.md §1.2): context for the SFT-only baselines, never checked. MiniLLM
# reports no perplexity. The GPT-2 340M and OPT 2.7B rows were not located in any copy.
_MINILLM_SFT = "MiniLLM (Gu et al. 2024) Table 1, SFT w/o KD; secondary copy (published-verification.md §1.2)"
_SFT_REFERENCE: dict[str, tuple[float | None, str]] = {
    "gpt2/760M": (25.4, _MINILLM_SFT),
    "gpt2/340M": (None, "MiniLLM (Gu et al. 2024) Table 1, SFT w/o KD: not located"),
    "gpt2/120M": (23.3, _MINILLM_SFT + "; another copy gives 23.2"),
    "opt/6.7B": (27.6, _MINILLM_SFT),
    "opt/2.7B": (None, "MiniLLM (Gu et al. 2024) Table 1, SFT w/o KD: not located"),
    "opt/1.3B": (26.0, _MINILLM_SFT),
}


@dataclass(frozen=True)
class Published:
    rouge_l: float | None
    perplexity: float | None
    rouge_l_source: str
    perplexity_source: str


@dataclass(frozen=True)
class Reference:
    """Another paper's number for a row the seed paper does not have: shown beside it for context, never checked."""

    rouge_l: float | None  # None: the row was not located
    source: str


@dataclass(frozen=True)
class Entry:
    """One row: a distillation path, teacher first, or a student alone (its SFT-only baseline)."""

    key: str
    family: Arch
    path: tuple[str, ...]
    tables: tuple[int, ...]
    figures: tuple[int, ...]
    published: Published
    reference: Reference | None = None  # only the SFT-only baselines have one

    @property
    def student(self) -> str:
        return self.path[-1]

    @property
    def hops(self) -> int:
        return len(self.path) - 1

    @property
    def label(self) -> str:
        """The row label: `teacher`, `sft` (a student's SFT init, MiniLLM's "SFT w/o KD"), `minillm` (one-step,
        MiniLLM's own numbers) or `ours` (multi-step)."""
        if self.hops == 0:
            return "teacher" if self.path[0] == FAMILIES[self.family].teacher else "sft"
        return "minillm" if self.hops == 1 else "ours"

    @property
    def roles(self) -> tuple[tuple[str, str], ...]:
        """(role, size) of each model of the path: `teacher`, `TA`s, `student`; a baseline's one model is a
        `student`."""
        if self.label == "sft":
            return (("student", self.student),)
        return tuple(
            ("teacher" if i == 0 else "student" if i == self.hops else "TA", size) for i, size in enumerate(self.path)
        )

    @property
    def tas(self) -> tuple[str, ...]:
        return self.path[1:-1]

    def prefix(self) -> str | None:
        """The key of the entry whose final model is this entry's last teacher (None for the teacher row and the
        baselines)."""
        return path_key(self.family, self.path[:-1]) if self.hops else None


def path_key(family: str, path: tuple[str, ...] | list[str]) -> str:
    return f"{family}/{'>'.join(path)}"


def parse_key(key: str) -> tuple[Arch, tuple[str, ...]]:
    """Split and validate `family/teacher>...>student` or `family/size` (a size alone: the teacher row, or a student's
    SFT-only baseline); raises RegistryError with what is wrong and what would work."""
    if "/" not in key:
        raise RegistryError(
            f"{key!r} is not an entry key: expected 'family/teacher>...>student' or 'family/size', "
            f"e.g. 'gpt2/1.5B>760M>120M' or 'gpt2/120M' (families: {', '.join(FAMILIES)})"
        )
    fam_name, _, path_str = key.partition("/")
    if fam_name not in FAMILIES:
        hint = difflib.get_close_matches(fam_name, list(FAMILIES), n=1)
        raise RegistryError(
            f"unknown family {fam_name!r} in {key!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else f"; families: {', '.join(FAMILIES)}")
        )
    fam = FAMILIES[fam_name]
    path = tuple(s.strip() for s in path_str.split(">"))
    for size in path:
        if size in fam.sizes:
            continue
        other = [f.name for f in FAMILIES.values() if size in f.sizes]
        if other:
            raise RegistryError(
                f"{key!r} mixes families: {size} is an {other[0]} size; {fam_name} sizes are "
                f"{', '.join(fam.sizes)}. A chain must stay in one family (shared tokenizer)."
            )
        hint = difflib.get_close_matches(size, list(fam.sizes), n=1)
        raise RegistryError(
            f"{fam_name} has no size {size!r} in {key!r}; sizes are {', '.join(fam.sizes)}"
            + (f" (did you mean {hint[0]}?)" if hint else "")
        )
    if len(set(path)) != len(path) or any(
        fam.sizes.index(a) >= fam.sizes.index(b) for a, b in itertools.pairwise(path)
    ):
        raise RegistryError(
            f"{key!r} is not in decreasing size order; every hop must distil into a smaller "
            f"model ({' > '.join(fam.sizes)})"
        )
    if len(path) > 1 and path[0] != fam.teacher:
        raise RegistryError(
            f"{key!r} does not start at the {fam_name} teacher {fam.teacher}; paper paths are "
            f"'{fam_name}/{fam.teacher}>...' (a size alone, '{fam_name}/{path[-1]}', is its SFT-only baseline)"
        )
    return fam.name, path


def _build_entries() -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    for fam in FAMILIES.values():
        t_rouge, t_ppl = _TABLES[fam.name]
        middle = fam.sizes[1:]
        for size in middle:
            key = path_key(fam.name, (size,))
            ref, source = _SFT_REFERENCE[key]
            entries[key] = Entry(
                key=key,
                family=fam.name,
                path=(size,),
                tables=(t_rouge, t_ppl),
                figures=_FIGURES[fam.name],
                published=Published(None, None, "not in the paper", "not in the paper"),
                reference=Reference(rouge_l=ref, source=source),
            )
        # Every subset of the smaller sizes, kept in decreasing order, gives one path; the empty subset is the
        # teacher row. 2**3 = 8 paths per family.
        for r in range(len(middle) + 1):
            for subset in itertools.combinations(middle, r):
                path = (fam.teacher, *subset)
                key = path_key(fam.name, path)
                rouge, ppl = _PUBLISHED[key]
                entries[key] = Entry(
                    key=key,
                    family=fam.name,
                    path=path,
                    tables=(t_rouge, t_ppl),
                    figures=_FIGURES[fam.name],
                    published=Published(
                        rouge_l=rouge,
                        perplexity=ppl,
                        rouge_l_source=f"Table {t_rouge}",
                        perplexity_source=f"Table {t_ppl}",
                    ),
                )
    # The paper's row order within each table (teacher, then students largest first, one-step before multi-step:
    # the order of _PUBLISHED), each student's SFT-only baseline first, before its one-step row.
    order = []
    for k in _PUBLISHED:
        if entries[k].hops == 1:
            order.append(path_key(entries[k].family, (entries[k].student,)))
        order.append(k)
    return {k: entries[k] for k in order}


ENTRIES: MappingProxyType[str, Entry] = MappingProxyType(_build_entries())


def get(key: str) -> Entry:
    """The paper entry for `key`; unknown keys fail with the closest registered key."""
    key = key.strip()
    if key in ENTRIES:
        return ENTRIES[key]
    parse_key(key)  # raises a precise message for malformed paths
    hint = difflib.get_close_matches(key, list(ENTRIES), n=1)  # pragma: no cover - every valid path is registered
    raise RegistryError(f"unknown entry {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))


ARTEFACTS = {
    "table1": ("gpt2", "rouge_l"),
    "table2": ("opt", "rouge_l"),
    "table3": ("gpt2", "perplexity"),
    "table4": ("opt", "perplexity"),
    "figure2": ("opt", "perplexity"),
}


def select(names: list[str] | tuple[str, ...]) -> list[Entry]:
    """Entries for a mix of artefact names (`table1`..`table4`, `figure2`, `all`, a family) and entry keys."""
    chosen: dict[str, Entry] = {}
    for name in names:
        name = name.strip()
        if name == "all":
            chosen.update(ENTRIES)
        elif name in ARTEFACTS or name in FAMILIES:
            fam = ARTEFACTS[name][0] if name in ARTEFACTS else name
            chosen.update({k: e for k, e in ENTRIES.items() if e.family == fam})
        elif "/" in name:
            chosen[name] = get(name)
        else:
            options = ["all", *ARTEFACTS, *FAMILIES]
            hint = difflib.get_close_matches(name, options, n=1)
            raise RegistryError(
                f"unknown table/entry {name!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + f"; use one of {', '.join(options)} or an entry key like 'gpt2/1.5B>760M>120M'"
            )
    return [ENTRIES[k] for k in ENTRIES if k in chosen]


def number_str(x: float | None) -> str:
    """A published number as the CLI prints it: two decimals, "-" where the paper has none."""
    return "-" if x is None else f"{x:.2f}"


def entries_table() -> str:
    """`python -m benchmark ls`: one line per entry with its label, tables and published numbers."""
    lines = [f"{'key':<28} {'label':<8} {'tables':<8} {'ROUGE-L':>8} {'PPL':>7}"]
    for e in ENTRIES.values():
        tables = ",".join(map(str, e.tables)) + ("+F2" if e.figures else "")
        lines.append(
            f"{e.key:<28} {e.label:<8} {tables:<8} {number_str(e.published.rouge_l):>8} "
            f"{number_str(e.published.perplexity):>7}"
        )
    return "\n".join(lines)


def entries_json() -> str:
    """`python -m benchmark ls --format json`: every entry with its path, artefacts, published numbers, sources and
    (SFT-only baselines) MiniLLM's reference value."""
    rows = [
        {
            "key": e.key,
            "family": e.family,
            "path": list(e.path),
            "tables": list(e.tables),
            "figures": list(e.figures),
            "label": e.label,
            "published": {"rouge_l": e.published.rouge_l, "perplexity": e.published.perplexity},
            "sources": {"rouge_l": e.published.rouge_l_source, "perplexity": e.published.perplexity_source},
            "reference": {"rouge_l": e.reference.rouge_l, "source": e.reference.source} if e.reference else None,
        }
        for e in ENTRIES.values()
    ]
    return json.dumps(rows, indent=2)
