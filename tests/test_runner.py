"""The chain runner at `tiny` scale: a two-hop entry end to end, no-op reruns, kill + resume, lock, failures."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark import results
from benchmark.plan import build_plan
from benchmark.runner import RunError, RunLock, _command, _gpu_groups, _stage_env, run_plan

pytestmark = pytest.mark.slow
ENTRY = "gpt2/1.5B>760M>120M"
ENV = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run_cli(out: Path, *extra: str, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmark", "run", ENTRY, "--scale", "tiny", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    # The runner is started from a process that looks like one rank of a launcher, its MASTER_PORT taken (as after
    # an in-process training in a notebook or test): the stages, two at a time, must neither inherit nor need it.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        launcher_vars = dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        env = ENV | launcher_vars | {"MASTER_PORT": str(taken.getsockname()[1])}
        proc = _run_cli(out, "--jobs", "2", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _values(run_dir: Path) -> dict[tuple[str, str], list]:
    df = results.read(run_dir)
    return {(r.entry, r.metric): list(r["values"]) for _, r in df.iterrows()}


def test_two_hop_entry_end_to_end(finished_run):
    stages = sorted(p.name.rsplit("-", 1)[0] for p in (finished_run / "stages").iterdir())
    assert stages == [
        "data-gpt2-tiny",
        "distill-gpt2-1.5B_760M",
        "distill-gpt2-1.5B_760M_120M",
        "evaluate-gpt2-1.5B_760M_120M",
        "sft-gpt2-1.5B-teacher",
        "sft-gpt2-120M-init",
        "sft-gpt2-760M-init",
    ]
    assert all((p / "DONE.json").exists() for p in (finished_run / "stages").iterdir())
    df = results.read(finished_run)
    assert set(df["metric"]) == {
        "rouge_l",
        "exact_match",
        "perplexity_gold",
        "perplexity_gold_token",
        "perplexity_samples",
    }
    assert set(df["entry"]) == {ENTRY} and set(df["scale"]) == {"tiny"}
    rouge = df[df.metric == "rouge_l"].iloc[0]
    assert list(rouge["seeds"]) == [10, 20] and len(rouge["values"]) == 2
    # the hop's teacher is the previous hop's selected model, by reference
    hop = json.loads(next((finished_run / "stages").glob("distill-gpt2-1.5B_760M_120M-*/stage.json")).read_text())
    assert hop["inputs"]["teacher"].endswith("/model") and "distill-gpt2-1.5B_760M-" in hop["inputs"]["teacher"]


def test_stage_report_shows_each_trained_stage(finished_run):
    """stages.md (written by `reproduce`): the three SFT models with their checks, and both hops with the sequence
    and teacher-forced reverse KL before -> after, read from their summaries."""
    from benchmark.runner import stage_report

    report = stage_report(build_plan([ENTRY], "tiny"), finished_run)
    sft = [ln for ln in report.splitlines() if ln.startswith("| gpt2 |")]
    hops = [ln for ln in report.splitlines() if ln.startswith("| 1.5B>760M")]
    assert len(sft) == 3 and len(hops) == 2, report
    summ = json.loads(next((finished_run / "stages").glob("distill-gpt2-1.5B_760M-*/summary.json")).read_text())
    seq = summ["sequence_rev_kl"]
    row = next(h for h in hops if h.startswith("| 1.5B>760M (gpt2)")).split("|")
    assert float(row[2]) == pytest.approx(seq["init"]["per_response"], abs=1e-3)
    assert float(row[3]) == pytest.approx(seq["selected"]["per_response"], abs=1e-3)
    assert row[5].count("%") == 2  # the change per seed
    assert "nan" not in report


def test_second_run_does_nothing(finished_run):
    before = {p: p.stat().st_mtime for p in (finished_run / "stages").glob("*/DONE.json")}
    t0 = time.time()
    proc = _run_cli(finished_run)
    assert proc.returncode == 0
    assert "totals: 7 done" in proc.stdout
    assert {p: p.stat().st_mtime for p in (finished_run / "stages").glob("*/DONE.json")} == before
    assert time.time() - t0 < 60


def test_kill_mid_stage_then_rerun_gives_the_same_results(finished_run, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmark", "run", ENTRY, "--scale", "tiny", "--out", str(out)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # wait until a training stage is half-way: it has a resumable checkpoint but is not done
    deadline = time.time() + 300
    mid = None
    while mid is None and proc.poll() is None and time.time() < deadline:
        for d in (out / "stages").glob("sft-*"):
            if (d / "checkpoints" / "latest").exists() and not (d / "DONE.json").exists():
                mid = d
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert mid is not None and not (mid / "DONE.json").exists()
    rerun = _run_cli(out)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resume" in rerun.stdout  # the interrupted stage continued from its checkpoint
    a, b = _values(finished_run), _values(out)
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-9, nan_ok=True), key


def test_lock_blocks_a_second_run_on_the_same_directory(tmp_path):
    plan = build_plan([ENTRY], "tiny")
    with RunLock(tmp_path):
        with pytest.raises(RunError, match="in use by pid"):
            run_plan(plan, tmp_path, progress=False)


def test_failed_stage_names_itself_and_keeps_the_others(finished_run, tmp_path):
    import shutil

    out = tmp_path / "broken"
    shutil.copytree(finished_run, out)
    plan = build_plan([ENTRY], "tiny")
    ev = plan.stages[plan.entries[ENTRY]]
    # corrupt the student init the last hop needs, and forget the last hop and its evaluation
    for s in plan.stages.values():
        if s.kind == "distill" and len(s.config["path"]) == 3 or s.kind == "evaluate":
            shutil.rmtree(out / "stages" / s.dirname)
    init = next(s for s in plan.stages.values() if s.kind == "sft" and s.config["size"] == "120M")
    (out / "stages" / init.dirname / "model" / "config.json").write_text("{not json")
    with pytest.raises(RunError) as err:
        run_plan(plan, out, progress=False)
    msg = str(err.value)
    assert "distill-gpt2-1.5B_760M_120M" in msg and "log.txt" in msg and "rerun" in msg
    assert not (out / "stages" / ev.dirname / "DONE.json").exists()  # blocked, not run
    done = [s for s in plan.stages.values() if (out / "stages" / s.dirname / "DONE.json").exists()]
    assert len(done) == 5  # everything upstream is kept


def test_paper_scale_without_gpu_stops_before_any_work(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark", "run", "table1", "--scale", "paper", "--out", str(tmp_path / "paper")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "paper scale cannot run here" in proc.stderr and "--scale small" in proc.stderr
    assert not (tmp_path / "paper").exists()


@pytest.mark.parametrize("with_old", [True, False])
def test_merge_keeps_other_entries_and_only_current_stages(tmp_path, with_old):
    """The store holds, per entry of the plan, only its current evaluate stage's records; entries outside the
    plan (another table run into the same directory) are kept."""
    from benchmark.plan import DONE_FILE
    from benchmark.runner import merge_results

    plan = build_plan([ENTRY], "tiny")
    ev = plan.stages[plan.entries[ENTRY]]
    d = tmp_path / "stages" / ev.dirname
    d.mkdir(parents=True)
    (d / DONE_FILE).write_text("{}")
    (d / "records.jsonl").write_text(json.dumps({"entry": ENTRY, "stage": ev.id, "metric": "rouge_l"}) + "\n")
    old = [{"entry": "opt/13B", "stage": "other", "metric": "rouge_l"}]
    if with_old:  # a record of this entry from a stage whose config has since changed
        old.append({"entry": ENTRY, "stage": "superseded", "metric": "rouge_l"})
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    merge_results(plan, tmp_path)
    rows = [json.loads(ln) for ln in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted((r["entry"], r["stage"]) for r in rows) == [(ENTRY, ev.id), ("opt/13B", "other")]


def test_stages_get_their_own_gpu_group_and_launcher_port_and_no_inherited_rendezvous(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _gpu_groups(8, 2) == [["0", "1", "2", "3"], ["4", "5", "6", "7"]]
    assert _gpu_groups(4, 3) == [["0"], ["1"], ["2"]]  # the fourth GPU idles rather than unbalance the groups
    with pytest.raises(RunError, match="--jobs 3 needs a GPU per concurrent stage; this machine has 2"):
        _gpu_groups(2, 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # the user's restriction is kept
    assert _gpu_groups(4, 2) == [["4", "5"], ["6", "7"]]

    plan = build_plan([ENTRY], "tiny")
    distill, evaluate = plan.by_kind("distill")[0], plan.by_kind("evaluate")[0]
    cmd_a, cmd_b = _command(distill, tmp_path, ["4", "5"]), _command(distill, tmp_path, ["6", "7"])
    assert cmd_a[:2] == ["deepspeed", "--master_port"] and "--num_gpus" not in cmd_a and "--include" not in cmd_a
    assert cmd_a[2] != cmd_b[2]  # side by side on one node, each launcher on its own port
    assert _command(evaluate, tmp_path, ["4", "5"])[:3] == [sys.executable, "-m", "benchmark"]
    assert _command(distill, tmp_path, [])[:3] == [sys.executable, "-m", "benchmark"]  # CPU

    for k, v in dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="29500").items():
        monkeypatch.setenv(k, v)
    env = _stage_env(3, ["6", "7"])
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"} & set(env)
    assert env["CUDA_VISIBLE_DEVICES"] == "6,7" and env["OMP_NUM_THREADS"] == "3"
    assert _stage_env(1, [])["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"  # CPU stages: untouched
