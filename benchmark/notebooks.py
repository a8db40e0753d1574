"""Regenerate the paper's tables and Figure 2 from a results store by executing notebooks/ with papermill.

    python -m benchmark notebooks --results runs/small --scale small              # -> paper_tables/small/
    python -m benchmark notebooks --results runs/paper --scale paper --only table1,figure2

Each notebook reads only the results store and writes `<out>/tableN.{md,csv,tex}` or `figure2.{png,csv,md}`, and
replaces its own records in `<out>/checks.json`. Executed copies go to `<out>/executed/` (never into notebooks/).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from benchmark import BenchmarkError, registry
from benchmark.checks import DEFAULT_TOLERANCES, Tolerances
from benchmark.results import overrides_key

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


class NotebookError(BenchmarkError, RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the executed copy to open."""


def run_notebooks(
    results_dir: str | Path,
    scale: str,
    out_dir: str | Path | None = None,
    artefacts: Sequence[str] = tuple(registry.ARTEFACTS),
    executed_dir: str | Path | None = None,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    overrides: dict | None = None,
) -> Path:
    """Execute the notebooks of `artefacts` against `results_dir`; returns the output directory.

    `out_dir` defaults to `paper_tables/<scale>` in the repository; executed copies go to `executed_dir`
    (default `<out_dir>/executed`). `overrides` selects the records made with those `--set` overrides (default:
    the scale's own configs); the results path is given to the notebooks relative to the repository, so committed
    provenance lines hold no path of the machine that ran them.
    """
    registry.scale(scale)  # an unknown scale fails here with a suggestion, not inside a kernel
    unknown = [a for a in artefacts if a not in registry.ARTEFACTS]
    if unknown:
        raise NotebookError(f"no notebook for {unknown}; artefacts are {', '.join(registry.ARTEFACTS)}")
    results_dir = Path(results_dir).resolve()
    if not results_dir.exists():
        raise NotebookError(f"results store {results_dir} does not exist")
    out = Path(out_dir).resolve() if out_dir else REPO / "paper_tables" / scale
    executed = Path(executed_dir).resolve() if executed_dir else out / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    params = {
        "results_dir": os.path.relpath(results_dir, REPO),
        "overrides": overrides_key(overrides or {}),
        "scale": scale,
        "out_dir": str(out),
        "rouge_tol_min": tolerances.rouge_min,
        "ppl_rel_tol": tolerances.ppl_rel,
        "std_multiplier": tolerances.std_multiplier,
    }
    for name in artefacts:
        execute(name, executed / f"{name}.ipynb", params)
    return out


def execute(name: str, target: Path, parameters: dict) -> None:
    """Run notebooks/NAME.ipynb with papermill into `target`; a failing cell becomes a NotebookError naming it."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    try:
        # cwd=REPO: the kernel imports `benchmark` from this checkout even when it is not installed.
        papermill.execute_notebook(
            NOTEBOOKS / f"{name}.ipynb",
            target,
            parameters=parameters,
            kernel_name="python3",
            progress_bar=False,
            log_output=False,
            cwd=str(REPO),
            config=_kernel_config(),
        )
    except PapermillExecutionError as exc:
        raise NotebookError(
            f"notebooks/{name}.ipynb failed in cell {exc.cell_index} (execution count "
            f"{exc.exec_count}): {exc.ename}: {exc.evalue}; executed copy: {target}"
        ) from exc


def _kernel_config():
    """The kernel connection encrypted with CurveZMQ keys the kernel manager provisions, where the kernelspec declares
    support (ipykernel's does) and pyzmq has libsodium; otherwise plain TCP on localhost, as before.

    ipykernel >= 7 warns "Kernel is running over TCP without encryption" at every start when the connection has no
    CurveZMQ keys; jupyter_client's `transport_encryption="auto"` provisions them, so the warning is answered rather
    than hidden. With a jupyter_client that lacks the setting nothing is configured (and the warning stays)."""
    from jupyter_client.manager import KernelManager
    from traitlets.config import Config

    if not KernelManager.class_traits().get("transport_encryption"):
        return Config()
    return Config({"KernelManager": {"transport_encryption": "auto"}})


def cmd_notebooks(args: argparse.Namespace) -> int:
    artefacts = [a.strip() for a in args.only.split(",")] if args.only else list(registry.ARTEFACTS)
    out = run_notebooks(
        args.results,
        args.scale,
        args.out,
        artefacts,
        tolerances=Tolerances(args.rouge_tol_min, args.ppl_rel_tol, args.std_multiplier),
        overrides=_overrides_arg(args.overrides),
    )
    print(f"wrote {', '.join(artefacts)} to {out} (checks: {out / 'checks.json'})")
    return 0


def _overrides_arg(text: str | None) -> dict:
    import json

    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        example = '{"minillm": {"lr": 1e-4}}'
        raise NotebookError(f"--overrides: not valid JSON ({exc}); e.g. --overrides '{example}'") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise NotebookError("--overrides: expected a JSON object {KIND: {field: value}}, as run --set KIND=... takes")
    return value


def add_cli(subparsers) -> None:
    d = DEFAULT_TOLERANCES
    s = subparsers.add_parser("notebooks", help="regenerate the tables and Figure 2 from a results directory")
    s.add_argument("--results", required=True, help="results directory (holds results.jsonl)")
    s.add_argument("--scale", required=True, choices=list(registry.SCALES), help="the scale whose records to tabulate")
    s.add_argument("--out", default=None, help="output directory (default paper_tables/<scale>)")
    s.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(registry.ARTEFACTS)}")
    s.add_argument(
        "--overrides",
        default=None,
        metavar="JSON",
        help="show the records of a run made with these --set overrides, {KIND: {field: value}} (default: the "
        "scale's own configs); entries the overrides do not change keep their default records",
    )
    s.add_argument("--rouge-tol-min", type=float, default=d.rouge_min, help="ROUGE-L band floor, points")
    s.add_argument("--ppl-rel-tol", type=float, default=d.ppl_rel, help="perplexity band floor, relative")
    s.add_argument("--std-multiplier", type=float, default=d.std_multiplier, help="band = max(floor, k * std)")
    s.set_defaults(func=cmd_notebooks)
