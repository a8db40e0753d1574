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
    # the per-example samples, written before DONE.json, so its manifest covers them
    ev = next((finished_run / "stages").glob("evaluate-*"))
    assert "samples.jsonl" in json.loads((ev / "DONE.json").read_text())["files"]
    samples = results.read_samples(finished_run, scale="tiny")
    assert set(samples["entry"]) == {ENTRY} and set(samples["stage"]) == {rouge["stage"]}
    by_seed = samples.groupby("seed")["rouge_l"].mean()
    assert list(by_seed.index) == [10, 20] and list(by_seed) == pytest.approx(
        list(rouge["values"]), rel=1e-12, abs=1e-12
    )
    # the hop's teacher is the previous hop's selected model, by reference
    hop = json.loads(next((finished_run / "stages").glob("distill-gpt2-1.5B_760M_120M-*/stage.json")).read_text())
    assert hop["inputs"]["teacher"].endswith("/model") and "distill-gpt2-1.5B_760M-" in hop["inputs"]["teacher"]


def test_second_run_does_nothing(finished_run):
    before = {p: p.stat().st_mtime for p in (finished_run / "stages").glob("*/DONE.json")}
    t0 = time.time()
    proc = _run_cli(finished_run)
    assert proc.returncode == 0
    assert "totals: 7 done" in proc.stdout
    assert {p: p.stat().st_mtime for p in (finished_run / "stages").glob("*/DONE.json")} == before
    assert time.time() - t0 < 60


def test_reproduce_writes_stages_md_with_the_trained_stages(finished_run, tmp_path, monkeypatch):
    """`reproduce` on a finished run: nothing is trained again, then the notebooks write the entry's tables and
    stages.md, which names every SFT model and MiniLLM hop of the plan with its numbers (into tmp_path, not the
    repository's paper_tables/tiny)."""
    from benchmark import notebooks
    from benchmark.__main__ import main

    real, seen = notebooks.run_notebooks, {}

    def into_tmp(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, out_dir=tmp_path / "tables", **kwargs)

    monkeypatch.setattr(notebooks, "run_notebooks", into_tmp)
    assert main(["reproduce", ENTRY, "--scale", "tiny", "--out", str(finished_run)]) == 0
    assert seen["retrain_one_step"] is False and seen["overrides"] == {}
    assert seen["artefacts"] == ("table1", "table3")  # the entry's own tables: a GPT-2 run has no Figure 2 records
    md = (tmp_path / "tables" / "stages.md").read_text()
    trained = [s for s in build_plan([ENTRY], "tiny").stages.values() if s.kind in ("sft", "distill")]
    rows = [line for line in md.splitlines() if line.startswith("| gpt2 |")]
    assert [tuple(c.strip() for c in line.split("|")[1:4]) for line in rows] == [
        ("gpt2", s.config["size"], s.config["role"]) for s in trained if s.kind == "sft"
    ]
    hops = [f"| {'>'.join(s.config['path'])} (gpt2) |" for s in trained if s.kind == "distill"]
    assert len(rows) == 3 and len(hops) == 2 and all(hop in md for hop in hops)
    assert "nan" not in md.lower()


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


def _legacy_done(stage_dir: Path) -> None:
    """Make a finished stage look like one finished before DONE.json had manifests (trusted as it is)."""
    done = json.loads((stage_dir / "DONE.json").read_text())
    done.pop("files")
    (stage_dir / "DONE.json").write_text(json.dumps(done))


def test_failed_stage_names_itself_its_cause_and_keeps_the_others(finished_run, tmp_path):
    import shutil

    out = tmp_path / "broken"
    shutil.copytree(finished_run, out)
    plan = build_plan([ENTRY], "tiny")
    ev = plan.stages[plan.entries[ENTRY]]
    # forget the last hop and its evaluation, and damage the student init that hop reads, in a stage finished before
    # manifests existed (nothing can tell that it is damaged before the hop reads it)
    for s in plan.stages.values():
        if s.kind == "distill" and len(s.config["path"]) == 3 or s.kind == "evaluate":
            shutil.rmtree(out / "stages" / s.dirname)
    init = next(s for s in plan.stages.values() if s.kind == "sft" and s.config["size"] == "120M")
    _legacy_done(out / "stages" / init.dirname)
    (out / "stages" / init.dirname / "model" / "config.json").write_text("{not json")
    with pytest.raises(RunError) as err:
        run_plan(plan, out, progress=False)
    msg = str(err.value)
    assert "distill-gpt2-1.5B_760M_120M" in msg and "log.txt" in msg
    # the advice fits the cause: a damaged input file, and the stage that wrote it, with the command that redoes it
    assert "damaged" in msg and f"--redo {init.name}" in msg, msg
    hop = next(s for s in plan.stages.values() if s.kind == "distill" and len(s.config["path"]) == 3)
    failed = json.loads((out / "stages" / hop.dirname / "FAILED.json").read_text())
    assert failed["error"] == "JSONDecodeError" or "JSON" in failed["message"] or "json" in failed["message"]
    assert not (out / "stages" / ev.dirname / "DONE.json").exists()  # blocked, not run
    done = [s for s in plan.stages.values() if (out / "stages" / s.dirname / "DONE.json").exists()]
    assert len(done) == 5  # everything upstream is kept
    status = _cli("status", "--out", str(out))
    assert status.returncode == 0
    line = next(ln for ln in status.stdout.splitlines() if hop.dirname in ln)
    assert line.startswith("failed") and "log.txt" in line


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args], capture_output=True, text=True, env=ENV, timeout=600
    )


def test_a_damaged_finished_stage_is_moved_aside_and_redone(finished_run, tmp_path):
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(finished_run, out)
    plan = build_plan([ENTRY], "tiny")
    init = next(s for s in plan.stages.values() if s.kind == "sft" and s.config["size"] == "120M")
    weights = out / "stages" / init.dirname / "model" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:100])  # truncated
    status = _cli("status", "--out", str(out))
    assert next(ln for ln in status.stdout.splitlines() if init.dirname in ln).startswith("damaged")
    others = {p: p.stat().st_mtime for p in (out / "stages").glob("*/DONE.json") if init.dirname not in str(p)}
    proc = _run_cli(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"damaged {init.dirname}: model/model.safetensors has 100 bytes" in proc.stdout
    aside = list((out / "attic").glob(f"{init.dirname}.damaged-*"))
    assert len(aside) == 1 and (aside[0] / "model" / "model.safetensors").read_bytes() == original[:100]
    assert weights.read_bytes() == original  # redone: the same weights on CPU with the same seeds
    assert {p: p.stat().st_mtime for p in others} == others  # nothing else was recomputed
    assert _values(out) == _values(finished_run)


def test_redo_moves_a_stage_and_everything_downstream_aside(finished_run, tmp_path):
    import shutil

    out = tmp_path / "redo"
    shutil.copytree(finished_run, out)
    proc = _run_cli(out, "--redo", "distill-gpt2-1.5B_760M_120M")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    moved = sorted(p.name.rsplit(".", 1)[0] for p in (out / "attic").iterdir())
    assert [m.rsplit("-", 1)[0] for m in moved] == ["distill-gpt2-1.5B_760M_120M", "evaluate-gpt2-1.5B_760M_120M"]
    assert _values(out) == _values(finished_run)
    assert "entry" in proc.stdout and ENTRY in proc.stdout.split("totals")[-1]  # the closing table of entries
    bad = _run_cli(out, "--redo", "distill-gpt2-9B")
    assert bad.returncode == 2 and "no such stage or entry" in bad.stderr


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited (its reaper may be slow in a container)


def _wait_dead(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_killing_only_the_runner_stops_its_stages(tmp_path):
    out = tmp_path / "orphans"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmark", "run", ENTRY, "--scale", "tiny", "--out", str(out)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    from benchmark.runner import stage_holder

    holder, deadline = None, time.time() + 120
    while holder is None and time.time() < deadline and proc.poll() is None:
        for d in (out / "stages").glob("*") if (out / "stages").exists() else []:
            holder = holder or stage_holder(d)
        time.sleep(0.05)
    assert holder and holder.startswith("pid "), holder
    stage_pid = int(holder.split()[1])
    proc.kill()  # SIGKILL to the runner alone: no handler of ours runs
    proc.wait()
    assert _wait_dead(stage_pid, 20), f"stage process {stage_pid} outlived its runner"


def test_the_guard_stops_its_launcher_when_its_parent_dies(tmp_path):
    """GPU stages run under the deepspeed launcher, which is not ours: a guard process takes it down."""
    pid_file = tmp_path / "pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    parent = (
        "import os, subprocess, sys, time; "  # started as the runner starts it: with the runner's pid
        "env = dict(os.environ, MSKD_RUNNER_PID=str(os.getpid())); "
        f"subprocess.Popen([sys.executable, '-m', 'benchmark', '_guard', sys.executable, '-c', {child!r}], env=env); "
        "time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], env=ENV)
    deadline = time.time() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline
        time.sleep(0.05)
    launched = int(pid_file.read_text())
    proc.kill()
    proc.wait()
    assert _wait_dead(launched, 40), "the guarded command outlived the guard's parent"


def test_a_stage_holds_its_own_lock(tmp_path):
    from benchmark.runner import _try_lock, execute_stage, stage_holder

    held = _try_lock(tmp_path / ".lock")
    try:
        assert stage_holder(tmp_path).startswith(f"pid {os.getpid()}")
        with pytest.raises(RunError, match="already being run by pid"):
            execute_stage(tmp_path)
    finally:
        held.close()
    assert stage_holder(tmp_path) is None


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


def _store(run_dir: Path) -> list[tuple]:
    return sorted(
        (r["entry"], r["stage"]) for r in map(json.loads, (run_dir / "results.jsonl").read_text().splitlines())
    )


def test_the_results_store_never_shrinks(tmp_path):
    """Merging adds a finished stage's records or replaces that stage's own; records of stages that are not finished
    (a failing evaluation, a stage moved aside), of other configs and of other entries are kept."""
    from benchmark.plan import DONE_FILE
    from benchmark.runner import merge_results

    plan = build_plan([ENTRY], "tiny")
    ev = plan.stages[plan.entries[ENTRY]]
    old = [
        {"entry": "opt/13B", "stage": "other", "metric": "rouge_l"},
        {"entry": ENTRY, "stage": "superseded", "metric": "rouge_l"},  # an older config of this entry
        {"entry": ENTRY, "stage": ev.id, "metric": "rouge_l", "values": [1.0]},  # this stage, evaluated before
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old) + "not json\n")
    merge_results(plan, tmp_path)  # the stage is being re-evaluated and has no records yet: nothing is lost
    assert (tmp_path / "results.jsonl").read_text().count("\n") == 4
    d = tmp_path / "stages" / ev.dirname
    d.mkdir(parents=True)
    (d / DONE_FILE).write_text("{}")
    (d / "records.jsonl").write_text(json.dumps({"entry": ENTRY, "stage": ev.id, "metric": "rouge_l", "values": [2.0]}))
    merge_results(plan, tmp_path)  # finished: its records replace its own earlier ones
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert "not json" in lines and len(lines) == 4
    rows = [json.loads(ln) for ln in lines if ln != "not json"]
    assert sorted((r["entry"], r["stage"]) for r in rows) == sorted(
        [(ENTRY, ev.id), (ENTRY, "superseded"), ("opt/13B", "other")]
    )
    assert next(r for r in rows if r["stage"] == ev.id)["values"] == [2.0]


def test_records_name_their_overrides_and_tables_choose_them(finished_run):
    """A --set run's stages carry the overrides that changed them (or a stage upstream); stages the overrides do not
    change stay the default ones, with no overrides. `results.read(..., overrides=)` picks one set."""
    overrides = {"minillm": {"total_steps": 4}}  # the tiny scale's hops take 8
    plan = build_plan([ENTRY, "gpt2/1.5B"], "tiny", overrides=overrides)
    by_name = {s.name: s for s in plan.stages.values()}
    assert by_name["sft-gpt2-120M-init"].overrides == {}
    assert by_name["evaluate-gpt2-1.5B"].overrides == {}  # the teacher's evaluation: no hop involved
    assert by_name["distill-gpt2-1.5B_760M"].overrides == overrides
    assert by_name["evaluate-gpt2-1.5B_760M_120M"].overrides == overrides
    # a value equal to the default changes nothing, so it is no override of any stage
    same = build_plan([ENTRY], "tiny", overrides={"minillm": {"gamma": 0.95}})
    assert all(s.overrides == {} for s in same.stages.values())
    df = results.read(finished_run)
    assert set(df["overrides"]) == {"{}"}
    assert len(results.read(finished_run, overrides={})) == len(df)
    assert len(results.read(finished_run, overrides=overrides)) == 0
    # a table of the override run: the teacher, which no MiniLLM override changes, keeps its default records
    rows = [
        {"entry": "gpt2/1.5B", "overrides": {}},
        {"entry": ENTRY, "overrides": {}},
        {"entry": ENTRY, "overrides": overrides},
    ]
    store = finished_run.parent / "overrides.jsonl"
    store.write_text("".join(json.dumps({"schema": 1, "metric": "rouge_l", **r}) + "\n" for r in rows))
    picked = results.read(store, overrides=overrides, scale="tiny")
    assert sorted(zip(picked["entry"], picked["overrides"])) == [
        ("gpt2/1.5B", "{}"),
        (ENTRY, results.overrides_key(overrides)),
    ]
    assert sorted(zip(*results.read(store, overrides={}, scale="tiny")[["entry", "overrides"]].values.T)) == [
        ("gpt2/1.5B", "{}"),
        (ENTRY, "{}"),
    ]


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
    # the launcher runs under a guard that dies with the runner and takes the launcher's process group with it
    assert cmd_a[:4] == [sys.executable, "-m", "benchmark", "_guard"]
    cmd_a, cmd_b = cmd_a[4:], cmd_b[4:]
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


def test_failure_advice_fits_the_cause(tmp_path):
    """A config error or a damaged file is not fixed by rerunning; a killed stage is."""
    from benchmark.config import ConfigError
    from benchmark.engine import TrainError
    from benchmark.runner import _failure, failure_advice

    stage = tmp_path / "stages" / "distill-gpt2-1.5B_120M-0123456789ab"
    assert "rerunning unchanged fails the same way" in failure_advice(ConfigError("lr must be > 0"), stage)
    assert "rerunning without that fix fails" in failure_advice(TrainError("vocabulary differs"), stage)
    try:
        raise ValueError(f"invalid header in {tmp_path}/stages/sft-gpt2-120M-init-a1b2c3d4e5f6/model/x.safetensors")
    except ValueError as exc:
        advice = failure_advice(exc, stage)
    assert "damaged" in advice and "--redo sft-gpt2-120M-init" in advice
    full = OSError(28, "No space left on device")
    assert "no space left" in failure_advice(full, stage) and "--prune-checkpoints" in failure_advice(full, stage)
    assert "micro_batch_size" in failure_advice(RuntimeError("CUDA out of memory. Tried to allocate"), stage)
    assert "resumes from its last checkpoint" in failure_advice(RuntimeError("NCCL timeout"), stage)
    stage.mkdir(parents=True)
    what, advice = _failure(stage, -9, stage / "log.txt")
    assert what.startswith("killed by SIGKILL") and "resumes from its last checkpoint" in advice


def test_cli_refuses_bad_jobs_and_plan_has_only_its_options(tmp_path):
    for jobs in ("0", "-1", "two"):
        proc = _run_cli(tmp_path / "jobs", "--jobs", jobs)
        assert proc.returncode == 2 and "--jobs" in proc.stderr and "positive" in proc.stderr, proc.stderr
    assert not (tmp_path / "jobs").exists()
    help_ = _cli("plan", "-h").stdout
    assert "Print the stage DAG" in help_ and "  --jobs" not in help_ and "  --prune-checkpoints" not in help_
    plan = _cli("plan", ENTRY, "--scale", "tiny", "--out", str(tmp_path / "p"))
    assert "estimated cost of the stages to run: ~" in plan.stdout and not (tmp_path / "p").exists()


def test_a_full_disk_or_unwritable_directory_is_a_sentence(tmp_path, monkeypatch):
    import errno

    from benchmark import plan as plan_module

    plan = build_plan([ENTRY], "tiny")
    stage = next(iter(plan.stages.values()))
    d = plan_module.write_stage_spec(stage, plan, tmp_path)
    before = (d / "stage.json").read_text()
    real = Path.write_text

    def full(self, *a, **k):
        if self.name.startswith(".stage.json"):
            real(self, before[:10])  # a partial write, then the device is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(RunError, match="no space left on the device that holds"):
        run_plan(plan, tmp_path, progress=False, jobs=1)
    assert (d / "stage.json").read_text() == before  # never a truncated stage.json
    monkeypatch.undo()

    def denied(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(RunError, match="choose a writable --out directory"):
        run_plan(plan, tmp_path / "ro", progress=False)


def test_resumable_state_is_no_output_and_redo_reaches_stages_of_other_plans(tmp_path):
    """checkpoints.damaged-* (moved aside by a resume) is resumable state, not an output a later run would verify;
    --redo also moves aside finished stages of other tables built on the redone stage (their ids do not change)."""
    from benchmark.runner import _move_stale_dependents, output_files

    d = tmp_path / "stage"
    for rel in ("model/model.safetensors", "checkpoints/step-000008/x", "checkpoints.damaged-1/step-000004/x"):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text("w")
    assert list(output_files(d)) == ["model/model.safetensors"]

    stages = tmp_path / "run" / "stages"
    for name, sid, inputs in (("hop-a", "a", {}), ("hop-b", "b", {"teacher": "a"}), ("eval-b", "c", {"model": "b"})):
        (stages / name).mkdir(parents=True)
        (stages / name / "stage.json").write_text(json.dumps({"id": sid, "input_ids": inputs}))
    _move_stale_dependents(tmp_path / "run", {"a"})
    assert sorted(p.name for p in stages.iterdir()) == ["hop-a"]  # hop-a itself is the plan's to move
    assert sorted(p.name.split(".")[0] for p in (tmp_path / "run" / "attic").iterdir()) == ["eval-b", "hop-b"]


def test_a_stage_started_by_hand_is_not_tied_to_its_shell(monkeypatch):
    from benchmark.runner import PARENT_VAR, die_with_parent

    monkeypatch.delenv(PARENT_VAR, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    die_with_parent()  # returns: no parent-death signal, no exit, whoever the parent is
    monkeypatch.setenv(PARENT_VAR, str(os.getpid() + 10_000_000))  # a runner that is not our parent
    with pytest.raises(SystemExit, match="is gone; not starting"):
        die_with_parent()


def test_the_guard_ends_as_its_command_did(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "benchmark", "_guard", sys.executable, "-c", "raise SystemExit(3)"], env=ENV
    )
    assert ok.returncode == 3
    killed = subprocess.run(
        [sys.executable, "-m", "benchmark", "_guard", sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"],
        env=ENV,
    )
    assert killed.returncode == -9  # the runner's report can then say "killed by SIGKILL"
