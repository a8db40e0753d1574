"""Every entry point of MSKD-Bench.

    nox -s tests                      # unit + tiny end-to-end tests on CPU (what CI runs)
    nox -s lint                       # ruff
    nox -s smoke                      # the whole paper at `small` scale on a CPU (<= 30 min on 2 cores)
    nox -s rehearsal                  # Tables 1-4 at `paper` scale offline on a fake local hub (CI, minutes)
    nox -s reproduce_table2           # paper scale (GPUs + Hugging Face Hub); `-- --scale small` on a laptop
    nox -s notebooks -- --results runs/small --scale small
    nox -s perf                       # throughput/memory benchmark, side by side with TRL

Sessions reuse their virtualenvs; the virtualenv backend is kept on purpose (uv ignores the machine's pip
configuration, which is what makes `torch==2.13.0` resolve to the local CPU wheel).
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "virtualenv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "tests"]

PYTHON = "3.11"
# torch is pinned in the same pip command as everything else: an unpinned torch pulls a multi-GB CUDA build.
TORCH = "torch==2.13.0"


def _env(session: nox.Session) -> dict[str, str]:
    return {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DS_ACCELERATOR": "cpu",
        # One JIT cache per virtualenv: a shared cache makes two venvs invalidate each other's DeepSpeed ops.
        "TORCH_EXTENSIONS_DIR": f"{session.virtualenv.location}/torch_extensions",
    }


def _install(session: nox.Session, extras: str = "dev") -> None:
    session.install(TORCH, "-e", f".[{extras}]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit tests and tiny end-to-end runs (CPU, a few minutes)."""
    _install(session, "dev,cluster")  # tests/test_cluster.py runs stages on submitit's local stand-ins
    # two pytest-xdist workers (every test runs single-threaded), a file's tests on one worker so that its slow
    # fixtures (tiny trained runs) are built once: ~7 min on 2 cores instead of ~12 in one process (8 with --dist load)
    session.run("pytest", *(session.posargs or ["-q", "-n", "2", "--dist", "loadfile"]), env=_env(session))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff==0.17.6")  # pinned: formatting rules change between releases
    session.run("ruff", "check", "benchmark", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "benchmark", "tests", "noxfile.py")


def _reproduce(session: nox.Session, target: str) -> None:
    """Run the stages `target` needs, then regenerate its tables/figure with the notebooks.

    `nox -s reproduce_table1 -- --scale small` runs on a CPU; the default scale is `paper`, whose trained hops take
    the `authors` preset (the seed paper's scripts; `-- --preset minillm` for MiniLLM's batch 64: README "Hop presets").
    """
    _install(session)
    args = list(session.posargs)
    if "--scale" not in args:
        args += ["--scale", "paper"]
    session.run("python", "-m", "benchmark", "reproduce", target, *args, env=_env(session))


@nox.session(python=PYTHON)
def reproduce_table1(session: nox.Session) -> None:
    """Table 1: GPT-2 ROUGE-L of every distillation path."""
    _reproduce(session, "table1")


@nox.session(python=PYTHON)
def reproduce_table2(session: nox.Session) -> None:
    """Table 2: OPT ROUGE-L of every distillation path."""
    _reproduce(session, "table2")


@nox.session(python=PYTHON)
def reproduce_table3(session: nox.Session) -> None:
    """Table 3: GPT-2 perplexity of every distillation path."""
    _reproduce(session, "table3")


@nox.session(python=PYTHON)
def reproduce_table4(session: nox.Session) -> None:
    """Table 4: OPT perplexity of every distillation path."""
    _reproduce(session, "table4")


@nox.session(python=PYTHON)
def reproduce_figure2(session: nox.Session) -> None:
    """Figure 2: perplexity of OPT across all paths."""
    _reproduce(session, "figure2")


@nox.session(python=PYTHON)
def reproduce_all(session: nox.Session) -> None:
    """Tables 1-4 and Figure 2."""
    _reproduce(session, "all")


@nox.session(python=PYTHON)
def smoke(session: nox.Session) -> None:
    """The whole paper (Tables 1-4, Figure 2) at `small` scale on a CPU, into runs/small and paper_tables/small."""
    _install(session)
    args = list(session.posargs) or ["--scale", "small", "--out", "runs/small"]
    session.run("python", "-m", "benchmark", "reproduce", "all", *args, env=_env(session))


@nox.session(python=PYTHON)
def rehearsal(session: nox.Session) -> None:
    """Dress rehearsal: Tables 1-4 at paper scale, offline, on a local fake hub of tiny models.

    benchmark.rehearsal: every paper-scale code path but memory and time, into runs/rehearsal and
    paper_tables/rehearsal (a few minutes on 2 CPU cores)."""
    _install(session)
    args = list(session.posargs) or ["--out", "runs/rehearsal", "--tables", "paper_tables/rehearsal"]
    session.run("python", "-m", "benchmark", "rehearsal", *args, env=_env(session))


@nox.session(python=PYTHON)
def notebooks(session: nox.Session) -> None:
    """Execute every notebook against an existing results directory: `-- --results DIR --scale S`."""
    _install(session)
    session.run("python", "-m", "benchmark", "notebooks", *session.posargs, env=_env(session))


@nox.session(python=PYTHON)
def perf(session: nox.Session) -> None:
    """Throughput and memory of rollouts, training and evaluation, side by side with TRL."""
    _install(session, extras="dev,perf")
    env = _env(session) | {"OMP_NUM_THREADS": "1"}
    session.run("python", "-m", "benchmark", "perf", *session.posargs, env=env)
