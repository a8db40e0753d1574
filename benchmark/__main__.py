"""`python -m benchmark VERB ...` — every command of the suite. `python -m benchmark VERB -h` for options.

ls / show / validate      the registry (16 paper entries, 3 scales)
data                      prepare Dolly, the PT corpus, or the synthetic small/tiny data
train                     one stage: SFT or a MiniLLM hop
evaluate                  ROUGE-L over seeds + perplexity of one model
plan / run / reproduce    the chain DAG of cached, verified, resumable stages
status                    every stage of a run directory: done / running / failed / damaged / pending
notebooks                 regenerate the tables and Figure 2 from a results directory
suggest                   rank the TA paths from a teacher to a student by published laws (and measurements)
figure1 / planner-report  the paper's Figure 1 from the registry; the planner's laws against measured chains
perf                      throughput / memory benchmark
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from benchmark import BenchmarkError, registry, scales


def _published_str(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def cmd_ls(args: argparse.Namespace) -> int:
    entries = list(registry.ENTRIES.values())
    if args.format == "json":
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
            }
            for e in entries
        ]
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'key':<28} {'label':<8} {'tables':<8} {'ROUGE-L':>8} {'PPL':>7}")
    for e in entries:
        tables = ",".join(map(str, e.tables)) + ("+F2" if e.figures else "")
        print(
            f"{e.key:<28} {e.label:<8} {tables:<8} {_published_str(e.published.rouge_l):>8} "
            f"{_published_str(e.published.perplexity):>7}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    e = registry.get(args.key)
    sc = scales.scale(args.scale)
    print(
        f"{e.key}  ({e.label}; Tables {', '.join(map(str, e.tables))}"
        + (f"; Figure {', '.join(map(str, e.figures))})" if e.figures else ")")
    )
    print(
        f"published: ROUGE-L {_published_str(e.published.rouge_l)} ({e.published.rouge_l_source}), "
        f"perplexity {_published_str(e.published.perplexity)} ({e.published.perplexity_source})"
    )
    print(f"scale {sc.name}: {sc.description}")
    for i, size in enumerate(e.path):
        role = "teacher" if i == 0 else ("student" if i == len(e.path) - 1 else "TA")
        print(f"  {role:<8} {size:<6} {sc.model(e.family, size).describe()}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    n = 0
    for sc in scales.SCALES.values():
        for e in registry.ENTRIES.values():
            registry.parse_key(e.key)
            for size in e.path:
                spec = sc.model(e.family, size)
                if not spec.from_hub:
                    spec.model_config(vocab_size=100, n_positions=64, tokenizer_ids={"bos": 0, "eos": 0, "pad": 0})
            n += 1
    print(f"ok: {len(registry.ENTRIES)} entries x {len(scales.SCALES)} scales = {n} resolved")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="verb", required=True)

    s = sub.add_parser("ls", help="list the paper entries with their published numbers")
    s.add_argument(
        "--format", choices=["table", "json"], default="table", help="a table for people (default) or JSON for programs"
    )
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("show", help="one entry resolved at a scale")
    s.add_argument("key", help="an entry key, e.g. gpt2/1.5B>760M>120M (python -m benchmark ls lists them)")
    s.add_argument(
        "--scale", default="paper", choices=list(scales.SCALES), help="resolve at this scale (default paper)"
    )
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("validate", help="resolve every entry at every scale")
    s.set_defaults(func=cmd_validate)

    # Each verb's module owns its options: `add_cli(subparsers)` adds its parser(s) with `func` set.
    for module in _verb_modules():
        module.add_cli(sub)
    # Verbs named _like_this are internal (the runner's own subprocesses): usable, but not offered in -h.
    sub.metavar = "{" + ",".join(name for name in sub.choices if not name.startswith("_")) + "}"
    return p


def _verb_modules():
    import importlib

    return [importlib.import_module(f"benchmark.{name}") for name in VERB_MODULES]


VERB_MODULES: list[str] = ["data", "train", "evaluate", "runner", "notebooks", "perf", "planner"]


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # inside: `-h | head -1` can meet a closed pipe too
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe (`ls | head`) shows here, inside the handler, not at interpreter exit
        return code
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`python -m benchmark ls --format json | head`): stop quietly, as a Unix tool does.
        # stdout is pointed at devnull so the interpreter's final flush cannot raise again (Python docs, "Note on
        # SIGPIPE"); exit status 141 = 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
