"""Paper entries -> a DAG of content-addressed stages.

    python -m benchmark plan table2 --scale paper      # the stages Table 2 needs, their status and cost
    python -m benchmark plan gpt2/1.5B>760M>120M --scale small --out runs/small

Stage kinds (one per box of the paper's Figure 1, plus data and evaluation):
  data      prepare one family's data at a scale (synthetic at small/tiny, dolly-15k + PT corpus at paper)
  sft       the SFT teacher or a student's SFT init (MiniLLM phase 1), only where no public checkpoint is used
  distill   one MiniLLM hop: the student's own SFT init distilled from a teacher *stage* (a reference, never a path)
  evaluate  ROUGE-L over the five seeds + the three perplexities of one entry's final model (for an SFT-only
            baseline, `gpt2/120M`, the student's SFT init: the same stage its hops start from)

A stage's identity is a hash of its kind, its versioned config and the identities of its inputs; its directory is
`stages/<readable name>-<hash>`. Entries that share a prefix (1.5B>760M is the first hop of three GPT-2 entries)
share that stage; changing one hyperparameter changes the hash of that stage and of everything downstream only.

At paper scale the teacher, the inits and the one-step students are the public MiniLLM checkpoints ("sourced"),
which is how the paper built its chains; `retrain_one_step=True` trains the one-step hops here instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from benchmark import registry, scales
from benchmark.config import ConfigError, config_hash, preset_of, preset_overrides, resolve, to_dict
from benchmark.data import HUB_PT

PLAN_VERSION = 1


@dataclass(frozen=True)
class Stage:
    kind: str  # data | sft | distill | evaluate
    name: str  # readable: distill-gpt2-1.5B_760M_120M
    family: str
    config: dict  # the stage's full, versioned settings (JSON-able)
    inputs: dict[str, str] = field(default_factory=dict)  # role -> stage id
    source: str | None = None  # a public checkpoint (hub id) that provides this stage's output instead
    entry: str | None = None  # for distill/evaluate: the entry key whose path this stage ends
    id: str = ""
    # The run's `--set` overrides that changed this stage or a stage it depends on ({} when the stage is the scale's
    # default one). Provenance only, recorded in stage.json and in every evaluation record: not part of the id,
    # which already reflects the changed config values themselves.
    overrides: dict = field(default_factory=dict, compare=False)

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.id}"


def _with_id(stage: Stage) -> Stage:
    ident = config_hash(
        {
            "kind": stage.kind,
            "family": stage.family,
            "plan_version": PLAN_VERSION,
            "config": stage.config,
            "inputs": stage.inputs,
            "source": stage.source,
        }
    )
    return dataclasses.replace(stage, id=ident)


def _slug(path: tuple[str, ...]) -> str:
    return "_".join(path)


@dataclass
class Plan:
    scale: str
    stages: dict[str, Stage]  # id -> stage, in topological order
    entries: dict[str, str]  # entry key -> its evaluate stage id
    overrides: dict[str, dict] = field(default_factory=dict)  # the run's `--set` overrides, by config kind

    def by_kind(self, kind: str) -> list[Stage]:
        return [s for s in self.stages.values() if s.kind == kind]

    def dependents(self, stage_id: str) -> set[str]:
        out: set[str] = set()
        for s in self.stages.values():
            if any(i == stage_id or i in out for i in s.inputs.values()):
                out.add(s.id)
        return out


def build_plan(
    names: list[str], scale_name: str, *, retrain_one_step: bool = False, overrides: dict[str, dict] | None = None
) -> Plan:
    """The DAG for the selected entries (`table1`.., `figure2`, `all`, families or entry keys).

    `overrides` maps a stage kind ("sft", "minillm", "evaluation") to config overrides applied on top of the
    scale's (used by tests and for experiments).
    """
    sc = scales.scale(scale_name)
    overrides = overrides or {}
    per_model = {"lr", "select_by"} & set(overrides.get("sft", {}))
    if per_model:
        raise ConfigError(
            f"sft override of {', '.join(sorted(per_model))}: set per model, not per run (the SFT learning rate is "
            "ModelSpec.sft_lr in benchmark/scales.py; the teacher selects by ROUGE-L, inits by validation loss)"
        )
    entries = registry.select(names)
    stages: dict[str, Stage] = {}

    def add(stage: Stage) -> str:
        stage = _with_id(stage)
        stages.setdefault(stage.id, stage)
        return stage.id

    paper = sc.name == "paper"
    scale_minillm = resolve("minillm", sc.name)  # data stages follow the scale, never a run's overrides
    data_ids = {}
    for fam in sorted({e.family for e in entries}):
        data_cfg = {
            "scale": sc.name,
            "data": sc.data,
            "records": sc.synthetic_records,
            "max_prompt_length": scale_minillm.max_prompt_length,
            "pt_seq_length": scale_minillm.pt_seq_length,
            "seed": 0,
            "version": 1,
        }
        if sc.synthetic_answers != "short":  # absent for the bare answers, so their data stages keep their ids
            data_cfg["answers"] = sc.synthetic_answers
        if sc.data == "dolly":  # the PT corpus `data pt --source hub` reads: MiniLLM's processed one (data.HUB_PT)
            repo, folder = HUB_PT[fam]
            data_cfg["pt_corpus"] = f"hub:{repo}" + (f"/{folder}" if folder else "")
        data_ids[fam] = add(Stage("data", f"data-{fam}-{sc.name}", fam, data_cfg))

    def model_stage(family: str, size: str, role: str) -> str:
        """The SFT teacher (role 'teacher') or a student's SFT init (role 'init')."""
        spec = sc.model(family, size)
        if paper:
            return add(
                Stage("sft", f"sft-{family}-{size}-{role}", family, {"role": role, "size": size}, source=spec.init)
            )
        sft = resolve("sft", sc.name, overrides.get("sft"), model=spec, role=role)
        cfg = {"role": role, "size": size, "model": dataclasses.asdict(spec), "sft": to_dict(sft)}
        return add(Stage("sft", f"sft-{family}-{size}-{role}", family, cfg, inputs={"data": data_ids[family]}))

    evaluation = resolve("evaluation", sc.name, overrides.get("evaluation"))

    def final_stage(family: str, path: tuple[str, ...]) -> str:
        """The stage whose output is the last model of `path` (recursively: the teacher of a hop is the final
        stage of the path's prefix)."""
        if len(path) == 1:
            return model_stage(family, path[0], "teacher")
        key = registry.path_key(family, path)
        student = path[-1]
        if paper and len(path) == 2 and not retrain_one_step:
            spec = sc.model(family, student)
            return add(
                Stage(
                    "distill",
                    f"distill-{family}-{_slug(path)}",
                    family,
                    {"path": list(path)},
                    source=spec.minillm,
                    entry=key,
                )
            )
        inputs = {
            "teacher": final_stage(family, path[:-1]),
            "student": model_stage(family, student, "init"),
            "data": data_ids[family],
        }
        hop = resolve("minillm", sc.name, overrides.get("minillm"), model=sc.model(family, student))
        cfg = {"path": list(path), "minillm": to_dict(hop)}
        if hop.pt_coef > 0:  # PT rows drawn in the reference's shuffled order (minillm.pt_step_rows), not in order
            cfg["pt_order"] = "shuffled"
        return add(Stage("distill", f"distill-{family}-{_slug(path)}", family, cfg, inputs=inputs, entry=key))

    entry_stage = {}
    for e in entries:
        # an SFT-only baseline evaluates the student's SFT init itself, the stage its hops distil
        model = model_stage(e.family, e.student, "init") if e.label == "sft" else final_stage(e.family, e.path)
        scorer = model_stage(e.family, registry.FAMILIES[e.family].teacher, "teacher")
        cfg = {"entry": e.key, "evaluation": to_dict(evaluation)}
        if e.family in sc.text_scorer:  # perplexity_text's external scorer (benchmark.text_perplexity)
            cfg["text_scorer"] = sc.text_scorer[e.family]
        entry_stage[e.key] = add(
            Stage(
                "evaluate",
                f"evaluate-{e.family}-{_slug(e.path)}",
                e.family,
                cfg,
                inputs={"model": model, "scorer": scorer, "data": data_ids[e.family]},
                entry=e.key,
            )
        )
    plan = Plan(scale=sc.name, stages=_toposort(stages), entries=entry_stage, overrides=overrides)
    if overrides:
        default = build_plan(names, scale_name, retrain_one_step=retrain_one_step).stages
        for sid, s in plan.stages.items():
            if sid not in default:
                plan.stages[sid] = dataclasses.replace(s, overrides=_effective_overrides(plan, s))
    return plan


# The config kind each stage kind reads (the `--set KIND=...` that can change it).
CONFIG_KIND = {"sft": "sft", "distill": "minillm", "evaluate": "evaluation"}


def _effective_overrides(plan: Plan, stage: Stage) -> dict[str, dict]:
    """The run's overrides of the config kinds read by `stage` or by any stage upstream of it."""
    kinds, todo = set(), [stage]
    while todo:
        s = todo.pop()
        kinds.add(CONFIG_KIND.get(s.kind))
        todo += [plan.stages[i] for i in s.inputs.values()]
    return {k: v for k, v in plan.overrides.items() if k in kinds}


def _toposort(stages: dict[str, Stage]) -> dict[str, Stage]:
    out: dict[str, Stage] = {}

    def visit(sid: str) -> None:
        if sid in out:
            return
        for dep in stages[sid].inputs.values():
            visit(dep)
        out[sid] = stages[sid]

    for sid in stages:
        visit(sid)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Status and cost
# ----------------------------------------------------------------------------------------------------------------

DONE_FILE = "DONE.json"


def stage_status(stage: Stage, run_dir: Path) -> str:
    """sourced (a public checkpoint), done (finished earlier: reused, never recomputed), resume (interrupted;
    continues from its last checkpoint) or run."""
    if stage.source:
        return "sourced"
    d = run_dir / "stages" / stage.dirname
    if (d / DONE_FILE).exists():
        return "done"
    if (d / "checkpoints" / "latest").exists():
        return "resume"
    return "run"


# Measured at small scale on the 2-core development machine (single-thread worker, seconds): see README.
# Paper-scale figures are GPU-hours projected from the paper's report (GPT-2 120M from the 1.5B teacher in under
# 10 h on four V100s; OPT 2.7B from the 6.7B TA in about 40 h on four V100s), proportional to the parameters of
# student + teacher: about 20 V100-hours per billion parameters for 5000 steps of their global batch 16 (the `authors`
# preset, paper scale's default; `_hop_budget_ratio` makes a `minillm`-preset hop, batch 64, four times that).
_SMALL_SECONDS = {"data": 5, "sft": 139, "distill": 107, "evaluate": 42}  # means of the 2026-12-03 smoke run, 1 thread
_TINY_SECONDS = {"data": 2, "sft": 8, "distill": 10, "evaluate": 6}
PAPER_PARAMS_B = {
    "1.5B": 1.56,
    "760M": 0.77,
    "340M": 0.36,
    "120M": 0.12,
    "13B": 13,
    "6.7B": 6.7,
    "2.7B": 2.7,
    "1.3B": 1.3,
}


def _hop_budget_ratio(stage: Stage, scale_name: str) -> float:
    """Rollout-epochs of a distill stage (steps x global batch) relative to its scale's default hop, so that a hop
    run with `--set minillm=...` is estimated at its own size."""
    default = resolve("minillm", scale_name)
    cfg = stage.config["minillm"]
    return cfg["total_steps"] * cfg["batch_size"] / (default.total_steps * default.batch_size)


def stage_cost_value(stage: Stage, scale_name: str) -> tuple[float, str] | None:
    """(amount, unit) of a stage's estimated cost: CPU seconds at small/tiny, GPU-hours at paper scale; None for a
    download or a stage too cheap to estimate (data preparation)."""
    if stage.source:
        return None
    if scale_name in ("small", "tiny"):
        seconds = (_SMALL_SECONDS if scale_name == "small" else _TINY_SECONDS)[stage.kind]
        if stage.kind == "distill":  # a third of a default small hop is its before/after measures, the rest training
            seconds = seconds * (1 + 2 * _hop_budget_ratio(stage, scale_name)) / 3
        return seconds, "s CPU"
    if stage.kind == "distill":
        path = stage.config["path"]
        params = PAPER_PARAMS_B[path[-1]] + PAPER_PARAMS_B[path[-2]]
        return 20 * params * _hop_budget_ratio(stage, scale_name), "V100-GPU-h"
    if stage.kind == "evaluate":
        return 1.0, "GPU-h"
    return None


def stage_cost(stage: Stage, scale_name: str) -> str:
    if stage.source:
        return "download"
    cost = stage_cost_value(stage, scale_name)
    if cost is not None:
        return f"~{cost[0]:.0f} {cost[1]}"
    return "minutes" if stage.kind == "data" else "hours (SFT)"


def resolved_entry(
    key: str, scale_name: str, *, retrain_one_step: bool = False, overrides: dict[str, dict] | None = None
) -> dict:
    """`python -m benchmark show KEY --scale S --format json`: the entry, its models at the scale and every stage it
    needs (upstream ones included) with its full resolved config, id and inputs, in run order: what a run of that
    entry would execute, e.g. a hop's batch size, rollouts per phase, lr and checkpoint interval."""
    e, sc = registry.get(key), scales.scale(scale_name)
    plan = build_plan([key], scale_name, retrain_one_step=retrain_one_step, overrides=overrides)
    stages = []
    for s in plan.stages.values():
        cost = stage_cost_value(s, scale_name)
        stages.append(
            {
                "name": s.name,
                "kind": s.kind,
                "id": s.id,
                "dirname": s.dirname,
                "entry": s.entry,
                "source": s.source,
                "inputs": {role: plan.stages[sid].dirname for role, sid in s.inputs.items()},
                "config": s.config,
                "overrides": s.overrides,
                "cost": None if cost is None else {"amount": round(cost[0], 4), "unit": cost[1]},
            }
        )
    return {
        "key": e.key,
        "family": e.family,
        "path": list(e.path),
        "label": e.label,
        "tables": list(e.tables),
        "figures": list(e.figures),
        "published": dataclasses.asdict(e.published),
        "reference": dataclasses.asdict(e.reference) if e.reference else None,
        "scale": {"name": sc.name, "description": sc.description, "why": sc.why},
        "models": [
            {"role": role, "size": size, **dataclasses.asdict(sc.model(e.family, size))} for role, size in e.roles
        ],
        "retrain_one_step": retrain_one_step,
        "preset": preset_of(sc.name, (overrides or {}).get("minillm")),  # its trained hops' (scales.PAPER_PRESETS)
        "stages": stages,
    }


def _preset_text(plan: Plan) -> str:
    """The plan header's mention of the hop preset (paper scale, the only one with presets): `, hop preset authors`."""
    sc = scales.scale(plan.scale)
    if not sc.presets:
        return ""
    given = plan.overrides.get("minillm") or {}
    name = preset_of(sc.name, given)
    return f", hop preset {name}" + (
        " with --set minillm overrides" if given != preset_overrides(sc.name, name) else ""
    )


def describe(plan: Plan, run_dir: Path) -> str:
    """The plan as a table (status, kind, stage directory, estimated cost, inputs) with totals: stage counts by
    status and the estimated cost of the stages still to run."""
    lines = [
        f"plan: {len(plan.stages)} stages at scale {plan.scale}{_preset_text(plan)} (run dir {run_dir})",
        f"{'status':<8} {'kind':<9} {'stage':<48} {'cost':<18} inputs",
    ]
    names = {s.id: s.name for s in plan.stages.values()}
    counts: dict[str, int] = {}
    todo: dict[str, float] = {}  # unit -> estimated cost of the stages still to run
    for s in plan.stages.values():
        status = stage_status(s, run_dir)
        counts[status] = counts.get(status, 0) + 1
        pt = f"<- dolly + PT {s.config['pt_corpus']}" if "pt_corpus" in s.config else ""  # paper data stages
        deps = ", ".join(f"{k}={names[v]}" for k, v in s.inputs.items() if k != "data")
        src = f"<- {s.source}" if s.source else pt or deps
        lines.append(f"{status:<8} {s.kind:<9} {s.dirname:<48} {stage_cost(s, plan.scale):<18} {src}")
        cost = stage_cost_value(s, plan.scale)
        if status in ("run", "resume") and cost is not None:
            todo[cost[1]] = todo.get(cost[1], 0.0) + cost[0]
    lines.append("totals: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if todo:
        parts = [f"~{v / 60:.0f} min CPU" if u == "s CPU" else f"~{v:.0f} {u}" for u, v in todo.items()]
        extra = " (stage times summed: concurrent stages finish sooner)" if "s CPU" in todo else ""
        lines.append("estimated cost of the stages to run: " + " + ".join(parts) + extra)
    return "\n".join(lines)


def write_stage_spec(stage: Stage, plan: Plan, run_dir: Path) -> Path:
    """stage.json in the stage directory: everything `python -m benchmark _stage DIR` needs."""
    d = run_dir / "stages" / stage.dirname
    d.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for role, sid in stage.inputs.items():
        dep = plan.stages[sid]
        # a data stage's output is DIR/data, a training stage's selected model DIR/model (Hugging Face format)
        inputs[role] = dep.source or str(run_dir / "stages" / dep.dirname / ("data" if dep.kind == "data" else "model"))
    spec = {
        "id": stage.id,
        "kind": stage.kind,
        "name": stage.name,
        "family": stage.family,
        "scale": plan.scale,
        "entry": stage.entry,
        "config": stage.config,
        "inputs": inputs,
        "input_ids": stage.inputs,
        "overrides": stage.overrides,
        "results": str(d / "records.jsonl"),
    }
    tmp = d / ".stage.json.tmp"  # atomic: a full disk leaves the previous stage.json, never a truncated one
    tmp.write_text(json.dumps(spec, indent=2))
    os.replace(tmp, d / "stage.json")
    return d
