"""The stage DAG: unique stages, shared prefixes, invalidation, sources at paper scale."""

import copy
import dataclasses
import json
import typing

import pytest

from benchmark import scales
from benchmark.config import ConfigError, EvalConfig, MiniLLMConfig, SFTConfig, resolve
from benchmark.plan import _with_id, build_plan, describe, stage_status


def _kinds(plan):
    out = {}
    for s in plan.stages.values():
        key = (s.kind, "sourced" if s.source else "built")
        out[key] = out.get(key, 0) + 1
    return out


@pytest.mark.parametrize("scale", ["small", "tiny"])
@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_unique_stages_trained_scales(scale, family):
    plan = build_plan([family], scale)
    # 1 data, 4 SFT (teacher + 3 inits), 7 hops (every path prefix is itself an entry), 11 evaluations (8 paths and
    # the 3 SFT-only baselines, which evaluate the inits)
    assert _kinds(plan) == {
        ("data", "built"): 1,
        ("sft", "built"): 4,
        ("distill", "built"): 7,
        ("evaluate", "built"): 11,
    }
    assert len(plan.entries) == 11


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_unique_stages_paper_scale_sources_public_checkpoints(family):
    plan = build_plan([family], "paper")
    # the teacher, the 3 one-step students and the 3 inits (the SFT-only baselines evaluate each of them; the
    # multi-step hops start from two) come from the hub; the 4 multi-step hops are trained
    assert _kinds(plan) == {
        ("data", "built"): 1,
        ("sft", "sourced"): 4,
        ("distill", "sourced"): 3,
        ("distill", "built"): 4,
        ("evaluate", "built"): 11,
    }
    init = plan.stages[plan.stages[plan.entries[f"{family}/{'760M' if family == 'gpt2' else '6.7B'}"]].inputs["model"]]
    assert init.source == ("MiniLLM/init-gpt2-760M" if family == "gpt2" else "MiniLLM/init-OPT-6.7B")
    if family == "gpt2":
        hop = next(
            s for s in plan.stages.values() if s.kind == "distill" and s.config["path"] == ["1.5B", "760M", "120M"]
        )
        teacher = plan.stages[hop.inputs["teacher"]]
        student = plan.stages[hop.inputs["student"]]
        # the paper's construction: init-gpt2-120M distilled from MiniLLM-gpt2-760M
        assert teacher.source == "MiniLLM/MiniLLM-gpt2-760M" and student.source == "MiniLLM/init-gpt2-120M"
    retrained = build_plan([family], "paper", retrain_one_step=True)
    assert _kinds(retrained)[("distill", "built")] == 7 and _kinds(retrained)[("sft", "sourced")] == 4


def test_all_entries_of_both_families():
    plan = build_plan(["all"], "small")
    assert len(plan.stages) == 46 and len(plan.entries) == 22


@pytest.mark.parametrize("scale", ["tiny", "small", "paper"])
def test_an_sft_only_baseline_evaluates_the_init_its_hops_start_from(scale):
    plan = build_plan(["gpt2/120M"], scale)
    evaluate = plan.stages[plan.entries["gpt2/120M"]]
    init, scorer = plan.stages[evaluate.inputs["model"]], plan.stages[evaluate.inputs["scorer"]]
    assert (evaluate.name, evaluate.entry, init.name, scorer.name) == (
        "evaluate-gpt2-120M", "gpt2/120M", "sft-gpt2-120M-init", "sft-gpt2-1.5B-teacher"
    )  # fmt: skip
    # no hop: only the data, the init, the teacher (the scorer) and the evaluation
    assert sorted(s.kind for s in plan.stages.values()) == ["data", "evaluate", "sft", "sft"]
    assert (init.source == "MiniLLM/init-gpt2-120M") == (scale == "paper")
    # the same init stage as the chains', the same scorer and evaluation config as the family's other entries
    chain = build_plan(["gpt2/1.5B>760M>120M", "gpt2/120M"], scale)
    hop = next(s for s in chain.stages.values() if s.kind == "distill" and s.config["path"] == ["1.5B", "760M", "120M"])
    assert hop.inputs["student"] == init.id and chain.entries["gpt2/120M"] == evaluate.id
    other = chain.stages[chain.entries["gpt2/1.5B>760M>120M"]]
    assert other.inputs["scorer"] == scorer.id and other.config["evaluation"] == evaluate.config["evaluation"]


def test_shared_prefixes_share_stage_identities():
    a = build_plan(["gpt2/1.5B>760M>120M"], "small")
    b = build_plan(["gpt2/1.5B>760M>340M>120M"], "small")
    hop = lambda p, path: next(s.id for s in p.stages.values() if s.kind == "distill" and s.config["path"] == path)
    assert hop(a, ["1.5B", "760M"]) == hop(b, ["1.5B", "760M"])
    # the same student size distilled from different teachers is a different stage
    assert hop(a, ["1.5B", "760M", "120M"]) != hop(b, ["1.5B", "760M", "340M", "120M"])
    # a hop's teacher is a reference to the prefix's stage
    last = next(s for s in a.stages.values() if s.kind == "distill" and s.config["path"] == ["1.5B", "760M", "120M"])
    assert last.inputs["teacher"] == hop(a, ["1.5B", "760M"])
    # topological order: inputs come first
    order = list(a.stages)
    for s in a.stages.values():
        assert all(order.index(d) < order.index(s.id) for d in s.inputs.values())


def test_config_change_invalidates_exactly_the_dependents():
    base = build_plan(["gpt2"], "small")
    changed = build_plan(["gpt2"], "small", overrides={"minillm": {"lr": 2e-4}})  # the scale uses 1e-4
    same = set(base.stages) & set(changed.stages)
    kinds_same = sorted(base.stages[s].kind for s in same)
    # data + 4 SFT stages are untouched; every hop and every evaluation of a distilled model changes, while the
    # evaluations with no hop upstream (the teacher's and the 3 SFT-only baselines') keep their identity
    assert kinds_same == ["data", "evaluate", "evaluate", "evaluate", "evaluate", "sft", "sft", "sft", "sft"]
    assert {base.entries[k] for k in ("gpt2/1.5B", "gpt2/760M", "gpt2/340M", "gpt2/120M")} <= same
    # changing the SFT of the 120M init changes only what depends on it: the four hops into 120M, their evaluations
    # and the 120M baseline's evaluation
    init = next(s for s in base.stages.values() if s.kind == "sft" and s.config["size"] == "120M")
    into_120m = {s.id for s in base.stages.values() if s.entry and s.entry.endswith(("/120M", ">120M"))}
    assert base.dependents(init.id) == into_120m and len(into_120m) == 9


def test_status_and_describe(tmp_path):
    plan = build_plan(["table2"], "paper")
    text = describe(plan, tmp_path)
    assert "sourced" in text and "MiniLLM/MiniLLM-OPT-6.7B" in text and "V100-GPU-h" in text
    data = next(s for s in plan.stages.values() if s.kind == "data")
    assert stage_status(data, tmp_path) == "run"
    d = tmp_path / "stages" / data.dirname
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints" / "latest").write_text("step-000001")
    assert stage_status(data, tmp_path) == "resume"
    (d / "DONE.json").write_text("{}")
    assert stage_status(data, tmp_path) == "done"


def test_set_option_overrides_stage_configs_from_the_command_line(capsys):
    from benchmark.__main__ import main, parse_set
    from benchmark.config import ConfigError

    assert parse_set(['minillm={"lr": 1e-4, "batch_size": 32}', 'minillm={"lr": 2e-4}', "sft={}"]) == {
        "minillm": {"lr": 2e-4, "batch_size": 32},
        "sft": {},
    }
    for bad, words in (
        ("minilm={}", "KIND one of sft, minillm, evaluation"),
        ("minillm", "KIND one of"),
        ("minillm={lr: 1}", "not valid JSON"),
        ("minillm=[1]", "expected a JSON object"),
    ):
        with pytest.raises(ConfigError, match=words):
            parse_set([bad])
    # the printed plan runs the hops and evaluations with the changed field, and the default plan does not
    big = '{"rollouts_per_phase": 512, "batch_size": 128, "micro_batch_size": 32, "total_steps": 32}'
    assert main(["plan", "gpt2/1.5B>120M", "--scale", "small", "--set", f"minillm={big}"]) == 0
    changed = capsys.readouterr().out
    assert main(["plan", "gpt2/1.5B>120M", "--scale", "small"]) == 0
    default = capsys.readouterr().out
    hop = build_plan(["gpt2/1.5B>120M"], "small", overrides={"minillm": json.loads(big)})
    distill = next(s for s in hop.stages.values() if s.kind == "distill")
    assert distill.config["minillm"]["rollouts_per_phase"] == 512 and distill.dirname in changed
    assert distill.dirname not in default
    # its cost estimate follows the hop's size: 32 steps x 128 is half the default 128 x 64 rollout-epochs
    assert f"{distill.dirname:<48} ~71 s CPU" in changed and "~107 s CPU" in default
    # a field the config does not have, or a value it rejects, is a clear error (exit 2), not a traceback
    assert main(["plan", "all", "--scale", "small", "--set", 'minillm={"lrr": 1}']) == 2
    assert "MiniLLMConfig has no field 'lrr'" in capsys.readouterr().err
    assert main(["plan", "all", "--scale", "small", "--set", 'minillm={"rollouts_per_phase": 100}']) == 2
    assert "multiple of batch_size" in capsys.readouterr().err


def test_overrides_keep_the_scales_nested_generation_settings_and_refuse_per_model_sft_fields():
    from benchmark.config import ConfigError

    plan = build_plan(["gpt2/1.5B>120M"], "small", overrides={"minillm": {"generation": {"temperature": 0.7}}})
    gen = next(s for s in plan.stages.values() if s.kind == "distill").config["minillm"]["generation"]
    assert gen["temperature"] == 0.7 and gen["max_new_tokens"] == 48  # the scale's 48, not the default 256
    with pytest.raises(ConfigError, match="ModelSpec.sft_lr"):
        build_plan(["gpt2"], "small", overrides={"sft": {"lr": 1e-3}})


# ----------------------------------------------------------------------------------------------------------------
# Stage identity: every setting and every input is in the hash (a stale stage must never be reused silently)
# ----------------------------------------------------------------------------------------------------------------


def _other_valid(cls, base, name: str):
    """A value of field `name` different from base's that `cls` accepts (tried in order: validation rejects some,
    e.g. a rollouts_per_phase that is not a multiple of batch_size)."""
    value, hint = getattr(base, name), typing.get_type_hints(cls)[name]
    if isinstance(value, bool):
        candidates = [not value]
    elif typing.get_origin(hint) is typing.Literal:
        candidates = [a for a in typing.get_args(hint) if a != value]
    elif value is None:  # `int | None` fields
        candidates = [1, 2, 8]
    elif isinstance(value, int):
        candidates = [value + 1, value * 2, value // 2, value - 1]
    elif isinstance(value, float):
        candidates = [value / 2, value * 1.5, value + 0.05]
    elif isinstance(value, tuple):
        last = value[-1]
        candidates = [
            value[:-1] + (last + "x" if isinstance(last, str) else last / 2 if isinstance(last, float) else last + 1,)
        ]
    else:
        raise AssertionError(f"{cls.__name__}.{name}: no rule for a {type(value).__name__} (extend _other_valid)")
    for new in candidates:
        if new == value:  # e.g. half of 0.0
            continue
        try:
            dataclasses.replace(base, **{name: new})
        except ConfigError:
            continue
        return new
    raise AssertionError(f"{cls.__name__}.{name}: no valid other value among {candidates}")


def _field_changes(cls, base):
    """(override, dotted field name, the new value as JSON) for EVERY field of `cls`, nested dataclass fields (the
    generation settings) one by one: iterated from dataclasses.fields, never listed by hand."""
    for f in dataclasses.fields(cls):
        value = getattr(base, f.name)
        if dataclasses.is_dataclass(value):
            for g in dataclasses.fields(value):
                new = _other_valid(type(value), value, g.name)
                yield {f.name: {g.name: new}}, f"{f.name}.{g.name}", json.loads(json.dumps(new))
        else:
            new = _other_valid(cls, base, f.name)
            yield {f.name: new}, f.name, json.loads(json.dumps(new))


def _lookup(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


PER_MODEL_SFT = {"lr", "select_by"}  # set per model and role by the plan (refused as overrides, see above)


@pytest.mark.parametrize(
    ("kind", "cls", "stage_kind"),
    [("sft", SFTConfig, "sft"), ("minillm", MiniLLMConfig, "distill"), ("evaluation", EvalConfig, "evaluate")],
)
def test_every_config_field_changes_the_ids_of_the_stages_that_read_it(kind, cls, stage_kind):
    entries, scale = ["gpt2/1.5B>760M>120M"], scales.scale("tiny")
    base = build_plan(entries, scale.name)
    before = {s.id for s in base.by_kind(stage_kind)}
    assert before
    scale_cfg = resolve(kind, scale.name)
    changes = list(_field_changes(cls, scale_cfg))
    assert len(changes) >= len(dataclasses.fields(cls))
    for override, name, new in changes:
        if kind == "sft" and name in PER_MODEL_SFT:
            continue
        plan = build_plan(entries, scale.name, overrides={kind: override})
        changed = plan.by_kind(stage_kind)
        assert len(changed) == len(before) and not {s.id for s in changed} & before, f"{kind}.{name} not in the hash"
        for s in changed:
            assert _lookup(s.config[kind], name) == new, (s.name, name)
        assert [s.id for s in plan.by_kind("data")] == [s.id for s in base.by_kind("data")]
    # the per-model SFT fields are in the stage config, with each model's and role's own value
    for s in base.by_kind("sft"):
        assert s.config["sft"]["lr"] == scale.model("gpt2", s.config["size"]).sft_lr
        assert s.config["sft"]["select_by"] == ("rouge_l" if s.config["role"] == "teacher" else "val_loss")


def _leaves(obj, path=()):
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    else:
        yield path, obj


def _changed_leaf(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, "x"]
    if isinstance(value, dict):
        return {"x": 1}
    assert value is None, value
    return 0


def _replaced(config: dict, path: tuple, new):
    out = copy.deepcopy(config)
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = new
    return out


def test_every_setting_input_and_source_is_in_the_stage_id():
    """_with_id hashes the whole stage: every leaf of its config (whatever the kind), every input's id, its source,
    kind and family. Sourced stages (paper scale) and built ones (tiny) both."""
    stages = [*build_plan(["gpt2/1.5B>760M>120M"], "tiny").stages.values()]
    stages += [*build_plan(["gpt2/1.5B>760M>120M", "opt/13B>6.7B>1.3B"], "paper").stages.values()]
    assert {s.kind for s in stages} == {"data", "sft", "distill", "evaluate"} and any(s.source for s in stages)
    for s in stages:
        assert _with_id(dataclasses.replace(s, id="")).id == s.id  # the id is a function of the stage
        leaves = list(_leaves(s.config))
        assert leaves and all(path for path, _ in leaves)
        for path, value in leaves:
            other = _with_id(dataclasses.replace(s, config=_replaced(s.config, path, _changed_leaf(value))))
            assert other.id != s.id, (s.name, path)
        for role in s.inputs:
            other = _with_id(dataclasses.replace(s, inputs={**s.inputs, role: s.inputs[role][::-1]}))
            assert other.id != s.id, (s.name, role)
            dropped = _with_id(dataclasses.replace(s, inputs={k: v for k, v in s.inputs.items() if k != role}))
            assert dropped.id != s.id, (s.name, role)
        for field, new in (
            ("source", (s.source or "") + "other/checkpoint"),
            ("kind", s.kind + "x"),
            ("family", s.family + "x"),
            ("inputs", {**s.inputs, "extra": s.id}),
        ):
            assert _with_id(dataclasses.replace(s, **{field: new})).id != s.id, (s.name, field)
    sourced = [s for s in stages if s.source]
    assert len({s.id for s in sourced}) == len(sourced)


def test_small_hops_take_a_tenth_of_their_students_sft_lr_unless_the_run_sets_one():
    plan = build_plan(["gpt2/1.5B>120M", "gpt2/1.5B>760M>340M", "opt/13B>2.7B"], "small")
    lrs = {s.name: s.config["minillm"]["lr"] for s in plan.stages.values() if s.kind == "distill"}
    assert lrs == {
        "distill-gpt2-1.5B_120M": 1e-3,
        "distill-gpt2-1.5B_760M": 3e-4,
        "distill-gpt2-1.5B_760M_340M": 5e-4,
        "distill-opt-13B_2.7B": 4.4e-4,
    }
    fixed = build_plan(["gpt2/1.5B>120M"], "small", overrides={"minillm": {"lr": 2e-4}})
    assert {s.config["minillm"]["lr"] for s in fixed.stages.values() if s.kind == "distill"} == {2e-4}
