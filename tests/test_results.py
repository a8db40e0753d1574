"""benchmark.results: the JSONL results store (schema 1).

OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_results.py -q     # ~2 s
"""

from __future__ import annotations

import json
import math

import pytest

from benchmark import results
from benchmark.config import EvalConfig


def _record(metric="rouge_l", values=(24.0, 25.0, 26.0), seeds=(10, 20, 30), **kw):
    model = {"path": "/m", "hub_id": None, "sha256": "ab" * 32}
    return results.make_record(
        metric=metric,
        values=list(values),
        seeds=None if seeds is None else list(seeds),
        model=model,
        n_examples=500,
        settings=EvalConfig(),
        **kw,
    )


def test_record_fields_and_statistics():
    r = _record(entry="gpt2/1.5B>120M", scale="small", stage="abc", wall_time_s=1.5)
    assert r["schema"] == results.SCHEMA_VERSION == 1
    assert r["mean"] == pytest.approx(25.0) and r["std"] == pytest.approx(1.0)  # sample std, ddof=1
    assert r["higher_is_better"] is True and r["metric_version"] == results.METRICS["rouge_l"]["version"]
    assert r["settings"]["generation"]["no_repeat_ngram_size"] == 6 and r["settings"]["seeds"] == [10, 20, 30, 40, 50]
    assert set(r["versions"]) == {"torch", "transformers", "rouge_score", "nltk", "benchmark"}
    assert r["versions"]["rouge_score"] == "0.1.2"
    assert r["created"].endswith("+00:00")
    single = _record(metric="perplexity_gold", values=[12.5], seeds=None)
    assert single["std"] == 0.0 and single["higher_is_better"] is False and single["seeds"] is None
    with pytest.raises(results.ResultsError, match="unknown metric"):
        _record(metric="rougeL")
    with pytest.raises(results.ResultsError, match="2 values for 3 seeds"):
        _record(values=[1.0, 2.0])


def test_append_read_round_trip(tmp_path):
    run = tmp_path / "run"
    path = results.append(run, [_record(), _record(metric="perplexity_gold", values=[float("nan")], seeds=None)])
    assert path == run / results.DEFAULT_NAME
    results.append(path, [_record(metric="exact_match", values=[0.0, 0.0, 1.0], entry="opt/13B>1.3B")])
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["schema"] == 1 for line in lines)
    df = results.read(run)
    assert list(df["metric"]) == ["rouge_l", "perplexity_gold", "exact_match"]
    assert {"model.path", "model.hub_id", "model.sha256"} <= set(df.columns) and "model" not in df.columns
    assert df["model.path"].iloc[0] == "/m" and list(df["values"].iloc[0]) == [24.0, 25.0, 26.0]
    assert df["values"].iloc[1] == [None] and math.isnan(float(df["mean"].iloc[1]))  # NaN stored as null
    assert df["entry"].iloc[2] == "opt/13B>1.3B"


def test_read_empty_and_missing(tmp_path):
    (tmp_path / "results.jsonl").write_text("")
    df = results.read(tmp_path)
    assert len(df) == 0 and "metric" in df.columns
    with pytest.raises(results.ResultsError, match="no results file"):
        results.read(tmp_path / "nowhere")


def test_malformed_line_names_file_and_line(tmp_path):
    path = results.append(tmp_path / "r.jsonl", [_record()])
    with open(path, "a") as fh:
        fh.write('{"schema": 1, "metric": "rouge_l"\n')
    with pytest.raises(results.ResultsError, match=r"r\.jsonl:2: malformed"):
        results.read(path)
    path.write_text(json.dumps(_record()) + "\n" + json.dumps([1, 2]) + "\n")
    with pytest.raises(results.ResultsError, match=r":2: not a results record"):
        results.read(path)


def test_model_identity_hashes_weights(tiny_gpt2, tmp_path):
    tiny_gpt2.save_pretrained(tmp_path / "a")
    a = results.model_identity(tmp_path / "a")
    assert a["path"] == str((tmp_path / "a").resolve()) and a["hub_id"] is None and len(a["sha256"]) == 64
    (tmp_path / "a" / "notes.txt").write_text("not a weight file")
    assert results.model_identity(tmp_path / "a")["sha256"] == a["sha256"]
    tiny_gpt2.lm_head.weight.data.mul_(2.0)  # tied to the embedding
    tiny_gpt2.save_pretrained(tmp_path / "b")
    assert results.model_identity(tmp_path / "b")["sha256"] != a["sha256"]
    hub = results.model_identity("MiniLLM/not-cached-here")  # offline, nothing cached
    assert hub == {"path": None, "hub_id": "MiniLLM/not-cached-here", "sha256": None}


def _write_samples(run, stage: str, rows: list[dict]) -> None:
    d = run / "stages" / f"evaluate-gpt2-x-{stage}"
    d.mkdir(parents=True)
    (d / results.SAMPLES_NAME).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _sample(seed, example, nll=6.0, tokens=3, **kw):
    return {
        "entry": "stale name",  # the record's entry and stage win over what the file says
        "stage": "stale",
        "seed": seed,
        "example": example,
        "prompt": f"prompt {example}",
        "prediction": "p",
        "reference": "r",
        "rouge_l": 10.0 * example,
        "exact_match": 0.0,
        "sample_nll": nll,
        "sample_tokens": tokens,
        "gold_nll": 4.0,
        "gold_tokens": 2,
    } | kw


def test_read_samples_follows_the_records_read_selects(tmp_path):
    run = tmp_path / "run"
    a, b = "gpt2/1.5B>120M", "gpt2/1.5B>760M>120M"
    override = {"minillm": {"lr": 1e-4}}
    results.append(run, [_record(entry=a, scale="small", stage="aaaaaaaaaaaa")])  # older stage of a
    results.append(run, [_record(entry=a, scale="small", stage="bbbbbbbbbbbb")])  # newest default stage of a
    results.append(run, [_record(entry=b, scale="small", stage="cccccccccccc")])
    results.append(run, [_record(entry=a, scale="small", stage="dddddddddddd") | {"overrides": override}])
    results.append(run, [_record(entry="gpt2/1.5B", scale="small", stage="eeeeeeeeeeee")])  # no samples.jsonl
    results.append(run, [_record(entry=b, scale="tiny", stage="ffffffffffff")])
    _write_samples(run, "aaaaaaaaaaaa", [_sample(10, 0)])
    _write_samples(run, "bbbbbbbbbbbb", [_sample(s, e) for s in (10, 20) for e in (0, 1)])
    _write_samples(run, "cccccccccccc", [_sample(10, 0, nll=0.0, tokens=0), _sample(10, 1, sample_nll=None)])
    _write_samples(run, "dddddddddddd", [_sample(10, 0)])
    _write_samples(run, "ffffffffffff", [_sample(10, 0)])

    df = results.read_samples(run, overrides={}, scale="small")
    assert list(df.columns[: len(results.SAMPLE_FIELDS)]) == list(results.SAMPLE_FIELDS)
    assert {"scale", "log_ppl_samples", "log_ppl_gold"} <= set(df.columns)
    assert sorted(set(zip(df["entry"], df["stage"]))) == [(a, "bbbbbbbbbbbb"), (b, "cccccccccccc")]
    mine = df[df["entry"] == a]
    assert list(zip(mine["seed"], mine["example"])) == [(10, 0), (10, 1), (20, 0), (20, 1)]
    assert list(mine["log_ppl_samples"]) == [2.0] * 4 and list(mine["log_ppl_gold"]) == [2.0] * 4
    assert set(df["scale"]) == {"small"}
    theirs = df[df["entry"] == b]
    assert theirs["log_ppl_samples"].isna().all()  # an empty response; no scorer (null)
    # without overrides every record counts, so the override stage is a's newest; without a scale, per scale
    everything = results.read_samples(run)
    assert sorted(set(zip(everything["entry"], everything["stage"], everything["scale"]))) == [
        (a, "dddddddddddd", "small"),
        (b, "cccccccccccc", "small"),
        (b, "ffffffffffff", "tiny"),
    ]
    assert set(results.read_samples(run, overrides=override)["stage"]) == {"dddddddddddd"}
    # a store without its stages (or with evaluations from before samples.jsonl) has none
    bare = tmp_path / "bare"
    results.append(bare, [_record(entry=a, scale="small", stage="bbbbbbbbbbbb")])
    empty = results.read_samples(bare, scale="small")
    assert empty.empty and "log_ppl_samples" in empty.columns
    (run / "stages" / "evaluate-gpt2-x-cccccccccccc" / results.SAMPLES_NAME).write_text("{not json\n")
    with pytest.raises(results.ResultsError, match=r"samples\.jsonl:1: malformed samples line"):
        results.read_samples(run, scale="small")


def test_the_schema_table_is_what_records_and_columns_hold(tmp_path):
    r = _record(overrides={"minillm": {"lr": 1e-4}})
    assert list(r) == list(results.RECORD_FIELDS)  # every field, in the table's order, nothing else
    assert list(r["model"]) == list(results.MODEL_FIELDS)
    assert r["overrides"] == {"minillm": {"lr": 1e-4}} and _record()["overrides"] == {}
    results.append(tmp_path, [r])
    assert list(results.read(tmp_path).columns) == list(results.COLUMNS)
    assert "model" not in results.COLUMNS and "model.sha256" in results.COLUMNS


def test_merge_replaces_a_stages_own_records_and_keeps_every_other_line(tmp_path):
    store = tmp_path / "results.jsonl"
    old = [
        {"entry": "opt/13B", "stage": "other", "metric": "rouge_l"},
        {"entry": "gpt2/1.5B", "stage": "superseded", "metric": "rouge_l"},  # an older config of this entry
        {"entry": "gpt2/1.5B", "stage": "s1", "metric": "rouge_l", "values": [1.0]},  # s1, evaluated before
    ]
    store.write_text("".join(json.dumps(r) + "\n" for r in old) + "not json\n")
    new = tmp_path / "records.jsonl"
    new.write_text(json.dumps({"entry": "gpt2/1.5B", "stage": "s1", "metric": "rouge_l", "values": [2.0]}) + "\n\n")
    assert results.merge(tmp_path, {"s1": new}) == store
    lines = store.read_text().splitlines()
    assert lines[:3] == [json.dumps(old[0]), json.dumps(old[1]), "not json"]  # kept verbatim, in order
    assert [json.loads(ln) for ln in lines[3:]] == [
        {"entry": "gpt2/1.5B", "stage": "s1", "metric": "rouge_l", "values": [2.0]}
    ]
    assert results.merge(tmp_path, {}) == store and store.read_text().splitlines() == lines  # nothing finished
    assert not list(tmp_path.glob(".results.jsonl.tmp"))  # replaced atomically, no leftover


def test_write_samples_replaces_the_file_with_strict_json_lines(tmp_path):
    path = tmp_path / "stage" / results.SAMPLES_NAME
    path.parent.mkdir()
    path.write_text("old\n")
    rows = [{"seed": 10, "example": 0, "prediction": "é", "sample_nll": float("nan")}, {"seed": 10, "example": 1}]
    assert results.write_samples(path, rows) == path
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == '{"seed": 10, "example": 0, "prediction": "é", "sample_nll": null}'
    assert [json.loads(ln) for ln in lines][1] == {"seed": 10, "example": 1} and len(lines) == 2
