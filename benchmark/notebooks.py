"""Regenerate the paper's tables, Figure 2 and the run's stage report from a results store by executing notebooks/
with papermill.

    python -m benchmark notebooks --results runs/small --scale small              # -> paper_tables/small/
    python -m benchmark notebooks --results runs/paper --scale paper --only table1,figure2

notebooks/table.ipynb runs once per table (its parameter `artefact`) and writes `<out>/tableN.{md,csv,tex}`;
notebooks/figure2.ipynb writes `figure2.{png,csv,md}`; each replaces its own records in `<out>/checks.json`.
notebooks/stages.ipynb then writes `<out>/stages.md` from the run directory's stage summaries. Executed copies go to
`<out>/executed/<artefact>.ipynb` (never into notebooks/). notebooks/planner.ipynb is run by `run_planner_report`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from benchmark import BenchmarkError, registry, scales
from benchmark.checks import DEFAULT_TOLERANCES, Tolerances
from benchmark.results import overrides_key

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
TABLES = ("table1", "table2", "table3", "table4")  # one notebook, notebooks/table.ipynb, parameterised by artefact


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
    retrain_one_step: bool = False,
) -> Path:
    """Execute the notebooks of `artefacts` against `results_dir`, then notebooks/stages.ipynb; returns the output
    directory.

    `out_dir` defaults to `paper_tables/<scale>` in the repository; executed copies go to `executed_dir`
    (default `<out_dir>/executed`). `overrides` selects the records made with those `--set` overrides (default:
    the scale's own configs) and, with `retrain_one_step` (as `run --retrain-one-step`), the stages whose summaries
    stages.md shows; the results path is given to the notebooks relative to the repository, so committed
    provenance lines hold no path of the machine that ran them.
    """
    scales.scale(scale)  # an unknown scale fails here with a suggestion, not inside a kernel
    unknown = [a for a in artefacts if a not in registry.ARTEFACTS]
    if unknown:
        raise NotebookError(f"no notebook for {unknown}; artefacts are {', '.join(registry.ARTEFACTS)}")
    results_dir = Path(results_dir).resolve()
    if not results_dir.exists():
        raise NotebookError(f"results store {results_dir} does not exist")
    out = Path(out_dir).resolve() if out_dir else REPO / "paper_tables" / scale
    executed = Path(executed_dir).resolve() if executed_dir else out / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    store = {
        "results_dir": os.path.relpath(results_dir, REPO),
        "overrides": overrides_key(overrides or {}),
        "scale": scale,
        "out_dir": str(out),
    }
    params = store | {
        "rouge_tol_min": tolerances.rouge_min,
        "ppl_rel_tol": tolerances.ppl_rel,
        "std_multiplier": tolerances.std_multiplier,
    }
    for name in artefacts:
        if name in TABLES:
            execute("table", executed / f"{name}.ipynb", params | {"artefact": name})
        else:
            execute(name, executed / f"{name}.ipynb", params)
    execute("stages", executed / "stages.ipynb", store | {"retrain_one_step": retrain_one_step})
    return out


def run_planner_report(results_dir: str | Path | None, scale: str, out_dir: str | Path | None = None) -> Path:
    """Execute notebooks/planner.ipynb: each law of `benchmark.planner` ranks the paths next to the paper's and (if
    `results_dir` holds a store) the measured ranking at `scale`, with Kendall's tau; writes `<out_dir>/planner.md`
    (default paper_tables/<scale>/) and the executed copy to `<out_dir>/executed/`. Returns planner.md's path."""
    scales.scale(scale)
    out = Path(out_dir).resolve() if out_dir else REPO / "paper_tables" / scale
    executed = out / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    rel = "" if results_dir is None else os.path.relpath(Path(results_dir).resolve(), REPO)  # "": no store
    execute("planner", executed / "planner.ipynb", {"results_dir": rel, "scale": scale, "out_dir": str(out)})
    return out / "planner.md"


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
    support (ipykernel's does) and pyzmq has libsodium; otherwise plain TCP on localhost.

    ipykernel >= 7 warns "Kernel is running over TCP without encryption" at every start when the connection has no
    CurveZMQ keys; jupyter_client's `transport_encryption="auto"` provisions them, so the warning is answered rather
    than hidden. With a jupyter_client that lacks the setting nothing is configured (and the warning stays)."""
    from jupyter_client.manager import KernelManager
    from traitlets.config import Config

    if not KernelManager.class_traits().get("transport_encryption"):
        return Config()
    return Config({"KernelManager": {"transport_encryption": "auto"}})
