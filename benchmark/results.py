"""The results store: one JSONL file per run directory (`<run>/results.jsonl`), one record per (model, metric).

    >>> from benchmark import results
    >>> df = results.read("runs/small")                      # a directory or the file itself
    >>> df[df.metric == "rouge_l"][["entry", "stage", "overrides", "mean", "std"]]
    >>> results.read("runs/small", overrides={})              # only records of the scale's default configs
    >>> results.read_samples("runs/small", overrides={}, scale="small")  # their per-example samples

Notebooks read only `read()` and `read_samples()`. `benchmark.evaluate.evaluate_model` makes the records
(`make_record`); `append` and `merge` (the chain runner's: each finished evaluate stage's records into the run's
store) are the only code that writes a store.

The schema (SCHEMA_VERSION = 1) is RECORD_FIELDS below: one JSON object per line, one field per row of that table
with its JSON type and meaning; `make_record` writes exactly those fields and `read` returns them as columns.

Per-example samples (lm-evaluation-harness's `--log_samples`) live beside the records: each evaluate stage of a run
writes `RUN/stages/<stage>/samples.jsonl`, one JSON object per (seed, example) with the fields SAMPLE_FIELDS
(`benchmark.evaluate.evaluate_model` documents them); `read_samples` returns the samples of the records `read`
selects.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from benchmark import BenchmarkError

SCHEMA_VERSION = 1
DEFAULT_NAME = "results.jsonl"

# field -> (JSON type, meaning), in the order of the record and of `read`'s columns.
RECORD_FIELDS: dict[str, tuple[str, str]] = {
    "schema": ("int", "SCHEMA_VERSION"),
    "entry": ("str | null", 'registry entry key ("gpt2/1.5B>760M>120M")'),
    "scale": ("str | null", '"paper", "small" or "tiny"'),
    "stage": ("str | null", "stage id (the chain runner's content-addressed name)"),
    "overrides": (
        "object",
        "the `--set` overrides ({kind: {field: value}}) that changed this stage or one upstream of it; {} for the "
        "scale's defaults (a record without the field reads as {})",
    ),
    "model": ("object", "model_identity(): {path, hub_id, sha256} (MODEL_FIELDS)"),
    "metric": ("str", "a key of METRICS"),
    "metric_version": ("int", 'METRICS[metric]["version"] when written'),
    "higher_is_better": ("bool", 'METRICS[metric]["higher_is_better"] when written'),
    "values": ("list[float]", "per-seed values, in `seeds` order; one value for a seed-independent metric"),
    "seeds": ("list[int] | null", "the evaluation seeds, or null for a seed-independent metric (perplexity_gold*)"),
    "mean": ("float", "mean of values"),
    "std": ("float", "sample standard deviation of values over seeds (ddof=1); 0.0 when there is a single value"),
    "n_examples": ("int", "test examples scored"),
    "settings": ("object", "the EvalConfig as a dict (benchmark.config.to_dict)"),
    "scorer": ("object | null", "model identity of the scorer (perplexity_samples only)"),
    "versions": ("object", '{"torch", "transformers", "rouge_score", "nltk", "benchmark"}: package versions'),
    "git_commit": ("str | null", "HEAD of the benchmark checkout, or null outside git"),
    "wall_time_s": ("float | null", "wall time of the evaluation call that produced the record (all its metrics)"),
    "created": ("str", "UTC ISO-8601 time the record was made"),
}
# model -> {"path": absolute local directory or null, "hub_id": hub id or null, "sha256": hash of the weight files'
# names and bytes or null}; `read` flattens it to the columns model.path, model.hub_id, model.sha256.
MODEL_FIELDS = ("path", "hub_id", "sha256")
COLUMNS = tuple(c for f in RECORD_FIELDS for c in ([f"model.{k}" for k in MODEL_FIELDS] if f == "model" else [f]))

# Metric semantics, declared once (lm-evaluation-harness style). Bump `version` when a metric's meaning changes.
METRICS: dict[str, dict] = {
    "rouge_l": {
        "higher_is_better": True,
        "version": 1,
        "description": "rouge-score 0.1.2 rougeL F-measure x 100 (Porter stemmer), sampled responses vs gold, mean "
        "over examples; one value per seed (ref §5.1)",
    },
    "exact_match": {
        "higher_is_better": True,
        "version": 1,
        "description": "SQuAD-normalised exact match x 100 (articles kept), one value per seed (ref §5.1)",
    },
    "perplexity_gold": {
        "higher_is_better": False,
        "version": 1,
        "description": "exp(mean over examples of per-example mean NLL of the gold response given the prompt), "
        "final EOS not scored: MiniLLM's lm_loss (ref §5.2 item 1)",
    },
    "perplexity_gold_token": {
        "higher_is_better": False,
        "version": 1,
        "description": "token-weighted gold perplexity exp(sum NLL / sum tokens), same tokens as perplexity_gold",
    },
    "perplexity_samples": {
        "higher_is_better": False,
        "version": 1,
        "description": "mean over examples of exp(mean NLL) of the model's own sampled responses (EOS excluded) "
        "under a fixed scorer (the family's SFT teacher) given the prompt; one value per seed; the quantity the "
        "notebooks compare with the paper's perplexity tables (published-verification.md §4)",
    },
    "perplexity_text": {
        "higher_is_better": False,
        "version": 1,
        "description": "Hugging Face evaluate's perplexity of the decoded responses (the authors' definition): "
        "BOS + the text under an external scorer (record's `scorer`), no prompt, mean over examples of exp(mean "
        "NLL), empty responses left out; one value per seed (benchmark/text_perplexity.py)",
    },
}

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class ResultsError(BenchmarkError, ValueError):
    pass


def model_identity(path_or_id) -> dict:
    """{"path", "hub_id", "sha256"} of a local model directory or a hub id.

    sha256 hashes the names and bytes of the weight files (*.safetensors, *.bin, *.pt, *.pth) in sorted order, so
    it names the weights, not the directory. For a hub id the cached snapshot is hashed if present (offline), else
    sha256 is null.
    """
    p = Path(str(path_or_id))
    if p.exists():
        return {"path": str(p.resolve()), "hub_id": None, "sha256": _hash_weights(p)}
    sha = None
    try:
        from huggingface_hub import snapshot_download

        sha = _hash_weights(Path(snapshot_download(str(path_or_id), local_files_only=True)))
    except Exception:  # not cached or not a hub id: identity by name only
        pass
    return {"path": None, "hub_id": str(path_or_id), "sha256": sha}


def _hash_weights(path: Path) -> str | None:
    files = [path] if path.is_file() else sorted(f for f in path.iterdir() if f.name.endswith(_WEIGHT_SUFFIXES))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import benchmark

    out = {"benchmark": benchmark.__version__}
    for name, dist in (
        ("torch", "torch"),
        ("transformers", "transformers"),
        ("rouge_score", "rouge-score"),
        ("nltk", "nltk"),
    ):
        try:
            out[name] = version(dist)
        except PackageNotFoundError:
            out[name] = None
    return out


def _git_commit() -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (res.stdout.strip() or None) if res.returncode == 0 else None


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def make_record(
    *,
    metric: str,
    values: list[float],
    seeds: list[int] | None,
    model: dict,
    n_examples: int,
    settings,
    entry: str | None = None,
    scale: str | None = None,
    stage: str | None = None,
    overrides: dict | None = None,
    scorer: dict | None = None,
    wall_time_s: float | None = None,
) -> dict:
    """One record with the fields of RECORD_FIELDS, in their order; `settings` is an EvalConfig (or already a
    dict)."""
    from benchmark.config import to_dict

    if metric not in METRICS:
        raise ResultsError(f"unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
    if not values:
        raise ResultsError(f"{metric}: no values")
    if seeds is not None and len(seeds) != len(values):
        raise ResultsError(f"{metric}: {len(values)} values for {len(seeds)} seeds")
    mean, std = _mean_std([float(v) for v in values])
    record = {
        "schema": SCHEMA_VERSION,
        "entry": entry,
        "scale": scale,
        "stage": stage,
        "overrides": overrides or {},
        "model": dict(model),
        "metric": metric,
        "metric_version": METRICS[metric]["version"],
        "higher_is_better": METRICS[metric]["higher_is_better"],
        "values": [float(v) for v in values],
        "seeds": None if seeds is None else [int(s) for s in seeds],
        "mean": mean,
        "std": std,
        "n_examples": int(n_examples),
        "settings": settings if isinstance(settings, dict) else to_dict(settings),
        "scorer": scorer,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "wall_time_s": wall_time_s,
        "created": datetime.now(UTC).isoformat(),
    }
    return {name: record[name] for name in RECORD_FIELDS}


def _resolve(path_or_dir) -> Path:
    p = Path(path_or_dir)
    return p / DEFAULT_NAME if p.is_dir() or p.suffix == "" else p


@contextlib.contextmanager
def store_lock(path: Path):
    """An exclusive lock shared by every writer of the store at `path` (a sidecar `.NAME.lock`, not the store itself:
    `merge` replaces the store's file, and a lock on a replaced file would guard nothing)."""
    with open(path.with_name(f".{path.name}.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def append(path, records: list[dict]) -> Path:
    """Append records, one JSON line each, under the store's lock (`store_lock`); flushed and fsynced.

    `path` is the JSONL file or a run directory (-> `<dir>/results.jsonl`, created if needed). Returns the file.
    """
    path = _resolve(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # NaN (a perplexity with nothing to score) is written as JSON null so every line stays strict JSON.
    lines = "".join(json.dumps(_nan_to_none(r), allow_nan=False) + "\n" for r in records)
    with store_lock(path), open(path, "a", encoding="utf-8") as fh:
        fh.write(lines)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def merge(path, stage_records: dict[str, Path]) -> Path:
    """Merge the records of finished stages (stage id -> its records.jsonl) into the store at `path` (a JSONL file
    or a run directory), atomically and under the store's lock.

    The store only grows: a stage's records replace that same stage's earlier records, and every other line
    (other entries, other configs, other overrides, lines this reader cannot parse) is kept as it is. The notebooks
    choose among an entry's records by their `overrides` (default: none) and, among equals, the newest."""
    path = _resolve(path)
    new = {sid: [ln for ln in Path(f).read_text().splitlines() if ln.strip()] for sid, f in stage_records.items()}
    with store_lock(path):  # `evaluate --results RUN` may append meanwhile
        kept = []
        if path.exists():
            for ln in path.read_text(errors="replace").splitlines():
                if not ln.strip():
                    continue
                try:
                    stage = json.loads(ln).get("stage")
                except (ValueError, AttributeError):
                    stage = None  # not ours to judge: kept verbatim (`read` names the line)
                if stage not in new:
                    kept.append(ln)
        lines = kept + [ln for recs in new.values() for ln in recs]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(ln + "\n" for ln in lines))
        os.replace(tmp, path)
    return path


def _nan_to_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def _expected_overrides(overrides, scale: str | None) -> dict[str, str]:
    """entry -> the overrides its evaluation records carry when run with `overrides` at `scale` ({} without a
    scale or overrides: every record is then compared with `overrides` itself)."""
    key = overrides_key(overrides)
    if scale is None or key == "{}":
        return {}
    from benchmark.plan import build_plan

    plan = build_plan(["all"], scale, overrides=json.loads(key))
    return {e: overrides_key(plan.stages[sid].overrides) for e, sid in plan.entries.items()}


def overrides_key(overrides) -> str:
    """The canonical text of an overrides dict (how `read` shows and compares them): '{}' for none."""
    if isinstance(overrides, str):
        overrides = json.loads(overrides) if overrides.strip() else {}
    return json.dumps(overrides or {}, sort_keys=True, separators=(",", ":"))


def read(path_or_dir, *, overrides=None, scale: str | None = None):
    """The store as a pandas DataFrame, one row per record; `model` is flattened to model.path/hub_id/sha256 and
    `overrides` is canonical JSON text ('{}' for the scale's defaults).

    `overrides` (a dict or JSON text of `--set` overrides, {kind: {field: value}}) keeps the records of one
    configuration: default and override records of an entry coexist in a store, and a table shows one of them.
    Without `scale` a record is kept when its overrides are exactly these. With `scale`, each entry keeps the
    records of its evaluate stage in the plan of that scale with these overrides: an entry whose stages the
    overrides do not change (the teacher's, under a MiniLLM override) keeps its default records. A line that is not
    a JSON object raises ResultsError naming the file and the line number.
    """
    import pandas as pd

    path = _resolve(path_or_dir)
    if not path.exists():
        raise ResultsError(f"no results file at {path}")
    rows = []
    for lineno, rec in _jsonl(path, "results"):
        if not isinstance(rec, dict) or "metric" not in rec or "schema" not in rec:
            raise ResultsError(f"{path}:{lineno}: not a results record (needs at least 'schema' and 'metric')")
        if rec["schema"] != SCHEMA_VERSION:
            raise ResultsError(f"{path}:{lineno}: schema {rec['schema']!r}, this reader knows {SCHEMA_VERSION}")
        model = rec.pop("model", None) or {}
        rec.update({f"model.{k}": model.get(k) for k in MODEL_FIELDS})
        rec["overrides"] = overrides_key(rec.get("overrides"))
        rows.append(rec)
    if overrides is not None:
        wanted = _expected_overrides(overrides, scale)
        rows = [r for r in rows if r["overrides"] == wanted.get(r.get("entry"), overrides_key(overrides))]
    if not rows:
        return pd.DataFrame(columns=list(COLUMNS))
    df = pd.DataFrame(rows)
    return df[[c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]]


# ----------------------------------------------------------------------------------------------------------------
# Per-example samples
# ----------------------------------------------------------------------------------------------------------------

SAMPLES_NAME = "samples.jsonl"
SAMPLE_FIELDS = (
    "entry",
    "stage",
    "seed",
    "example",
    "prompt",
    "prediction",
    "reference",
    "rouge_l",
    "exact_match",
    "sample_nll",
    "sample_tokens",
    "text_nll",  # perplexity_text's per-example NLL and tokens; null where it was not computed
    "text_tokens",
    "gold_nll",
    "gold_tokens",
)


def write_samples(path, rows: list[dict]) -> Path:
    """An evaluation's per-example samples (`rows`, fields SAMPLE_FIELDS) as JSON lines (NaN as null), replacing
    `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(_nan_to_none(row), ensure_ascii=False, allow_nan=False) + "\n")
    return path


def _log_ppl(nll, tokens):
    """nll / tokens elementwise, NaN where there is no scored token (or no value)."""
    import numpy as np

    nll = np.asarray(nll, dtype=np.float64)
    tokens = np.asarray(tokens, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tokens > 0, nll / tokens, np.nan)


def _jsonl(path: Path, what: str):
    """(line number, parsed object) of every non-blank line; a malformed line raises ResultsError naming both."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ResultsError(f"{path}:{lineno}: malformed {what} line ({exc.msg})") from None


def read_samples(path_or_dir, *, overrides=None, scale: str | None = None):
    """The per-example samples of the evaluations whose records `read(path_or_dir, overrides=..., scale=...)`
    selects: a pandas DataFrame, one row per (entry, seed, example).

    Per entry (per scale and entry when `scale` is None) the stage of its newest record is taken, as
    `benchmark.checks.measurements` takes the newest record, and its `RUN/stages/<name>-<stage>/samples.jsonl` read.
    Columns: SAMPLE_FIELDS, `scale`, `log_ppl_samples` = sample_nll / sample_tokens (the example's log-perplexity of
    its sampled response under the scorer; NaN for an empty response or without a scorer) and `log_ppl_gold` =
    gold_nll / gold_tokens (NaN for an empty gold response).

    Evaluations that wrote no samples are simply absent: evaluate stages finished before evaluations wrote
    `samples.jsonl`, records appended by `python -m benchmark evaluate` (its `--samples` file is not looked for), a
    store copied without its `stages/`. With none, the frame is empty (with these columns). A malformed line raises
    ResultsError naming the file and the line.
    """
    import pandas as pd

    records = read(path_or_dir, overrides=overrides, scale=scale)
    run_dir = _resolve(path_or_dir).parent
    columns = [*SAMPLE_FIELDS, "scale", "log_ppl_samples", "log_ppl_gold", "log_ppl_text"]
    if scale is not None:
        records = records[records["scale"] == scale]
    if "created" in records:
        records = records.sort_values("created", kind="stable")
    frames = []
    for rec in records.drop_duplicates(["scale", "entry"], keep="last").itertuples(index=False):
        if not isinstance(rec.stage, str) or not rec.stage:
            continue
        found = sorted((run_dir / "stages").glob(f"*-{rec.stage}/{SAMPLES_NAME}"))
        rows = [rec for _, rec in _jsonl(found[0], "samples")] if found else []
        if rows:
            frame = pd.DataFrame(rows)
            frame["entry"], frame["stage"], frame["scale"] = rec.entry, rec.stage, rec.scale
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=columns)
    df = pd.concat(frames, ignore_index=True)
    for col in SAMPLE_FIELDS:
        if col not in df:
            df[col] = None
    df["log_ppl_samples"] = _log_ppl(df["sample_nll"].astype(float), df["sample_tokens"].astype(float))
    df["log_ppl_gold"] = _log_ppl(df["gold_nll"].astype(float), df["gold_tokens"].astype(float))
    df["log_ppl_text"] = _log_ppl(df["text_nll"].astype(float), df["text_tokens"].astype(float))
    return df[columns + [c for c in df.columns if c not in columns]]
