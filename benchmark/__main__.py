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
perf / perf-gpu           throughput / memory benchmark (CPU, side by side with TRL; one GPU)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path

from benchmark import (
    BenchmarkError,
    cluster,
    config,
    data,
    engine,
    evaluate,
    minillm,
    notebooks,
    planner,
    registry,
    rehearsal,
    runner,
    scales,
    sft,
    synthetic,
    tables,
)
from benchmark.checks import DEFAULT_TOLERANCES, Tolerances
from benchmark.config import parse_set, run_overrides
from benchmark.laws import LAWS
from benchmark.perf import cpu, gpu
from benchmark.perf.common import PerfError
from benchmark.plan import Plan, build_plan, resolved_entry
from benchmark.plan import __doc__ as plan_doc

# `train`'s description (-h): what a stage writes and where its code is.
TRAIN_DOC = """\
`python -m benchmark train`: one training stage on DeepSpeed, SFT (MiniLLM phase 1) or one MiniLLM reverse-KL hop.

    python -m benchmark train minillm --student S_DIR --teacher T_DIR --data DATA_DIR --out OUT --scale small \
        --student-size gpt2:120M
    python -m benchmark train sft --model gpt2:120M --data DATA_DIR --out OUT --scale small
    deepspeed --num_gpus 4 -m benchmark train minillm ...          # multi-GPU; torchrun works too

A stage writes OUT/model (the selected checkpoint, Hugging Face format: the next hop's teacher), OUT/metrics.jsonl
(one line per optimizer step and per validation), OUT/summary.json (written last: the stage is done) and
resumable checkpoints under OUT/checkpoints. Killed and restarted with the same arguments it resumes from the
last checkpoint and, on CPU with fixed seeds, ends with the same weights as an uninterrupted run.

The trainers: benchmark/sft.py (SFT) and benchmark/minillm.py (a hop: what each phase does, with the reference
sections it mirrors); their DeepSpeed edge, checkpoints and logs: benchmark/engine.py.
"""


# ----------------------------------------------------------------------------------------------------------------
# The registry: ls, show, validate
# ----------------------------------------------------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    print(registry.entries_json() if args.format == "json" else registry.entries_table())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    if args.format == "json":
        overrides = run_overrides(args.scale, args.preset, args.overrides)
        entry = resolved_entry(args.key, args.scale, retrain_one_step=args.retrain_one_step, overrides=overrides)
        print(json.dumps(entry, indent=2))
    else:
        print(scales.describe_entry(registry.get(args.key), scales.scale(args.scale)))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    print(scales.validate_all())
    return 0


# ----------------------------------------------------------------------------------------------------------------
# One stage by hand: data, train, evaluate
# ----------------------------------------------------------------------------------------------------------------


def cmd_data(args: argparse.Namespace) -> int:
    out = args.out or data.default_dir(args.scale if args.data_verb == "synthetic" else "dolly", args.family)
    if args.data_verb == "dolly":
        prepared = data.prepare_dolly(
            args.source,
            args.family,
            args.tokenizer,
            out,
            max_prompt_length=args.max_prompt_length,
            dev_num=args.dev_num,
        )
    elif args.data_verb == "pt":
        prepared = data.prepare_pt(
            args.source, args.family, out, tokenizer=args.tokenizer, seq_len=args.seq_len, max_chunks=args.max_chunks
        )
    else:
        prepared = synthetic.prepare_synthetic(args.scale, args.family, out, seed=args.seed, pt_seq_len=args.seq_len)
    print(prepared.summary())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One stage with the config the plan would give it (`config.resolve`)."""
    if args.kind == "minillm" and not (args.student and args.teacher):
        raise engine.TrainError("train minillm needs --student (the SFT init) and --teacher")
    if args.kind == "sft" and not args.model:
        raise engine.TrainError("train sft needs --model (directory, hub id or FAMILY:SIZE)")
    if args.quiet:
        engine.quiet_logs()
    overrides = parse_set(args.set or [], args.kind).get(args.kind)
    if args.kind == "minillm":
        spec = None
        if args.student_size:
            family, _, size = args.student_size.partition(":")
            spec = scales.scale(args.scale).model(family, size)
        elif scales.scale(args.scale).minillm_lr_per_sft_lr and "lr" not in (overrides or {}):
            raise engine.TrainError(
                f"scale {args.scale!r} sets a hop's lr from its student's SFT lr: pass --student-size FAMILY:SIZE "
                "(e.g. gpt2:120M) or --set minillm='{\"lr\": ...}'"
            )
        cfg = config.resolve("minillm", args.scale, overrides, model=spec)
        model_dir = minillm.train_minillm(
            args.student,
            args.teacher,
            args.data,
            args.out,
            cfg,
            progress=not args.quiet,
            allow_larger_student=args.allow_larger_student,
        )
    else:
        spec, role, model = None, args.role, args.model
        if ":" in model and not Path(model).exists():  # FAMILY:SIZE of the scale, its role as the plan gives it
            family, size = model.split(":", 1)
            spec = scales.scale(args.scale).model(family, size)
            model = spec if not spec.from_hub else spec.base
            role = role or ("teacher" if size == registry.FAMILIES[family].teacher else "init")
        else:
            engine.check_model_path(model)  # before OUT is created
        cfg = config.resolve("sft", args.scale, overrides, model=spec, role=role)
        model_dir = sft.train_sft(model, args.data, args.out, cfg, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(engine.summary_report(Path(model_dir)))
    return 0


def _parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in re.split(r"[,\s]+", text.strip()) if s)
    except ValueError:
        raise evaluate.EvaluationError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise evaluate.EvaluationError("--seeds is empty")
    return seeds


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.no_progress:  # transformers' own bars too ("Loading weights")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    cfg = config.resolve("evaluation", args.scale) if args.scale else config.EvalConfig()
    changes = {"seeds": _parse_seeds(args.seeds)} if args.seeds else {}
    if args.num_examples is not None:
        changes["num_examples"] = args.num_examples
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    cfg = dataclasses.replace(cfg, **changes)
    records = evaluate.evaluate_model(
        args.model,
        data.load_prepared(args.data),
        cfg,
        scorer=args.scorer,
        entry=args.entry,
        scale=args.scale,
        results_path=args.results,
        samples_path=args.samples,
        progress=not args.no_progress,
    )
    print(evaluate.format_table(records))
    if args.results:
        print(f"appended {len(records)} records to {args.results}")
    if args.samples:
        print(f"wrote {len(cfg.seeds)} x {records[0]['n_examples']} per-example samples to {args.samples}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Chains: plan, run, reproduce, status (and the runner's own subprocesses, _stage and _guard)
# ----------------------------------------------------------------------------------------------------------------


def _plan(args: argparse.Namespace) -> tuple[Plan, Path]:
    """The plan of the targets and the run directory (default runs/<scale>)."""
    overrides = run_overrides(args.scale, args.preset, args.overrides)
    plan = build_plan(args.targets, args.scale, retrain_one_step=args.retrain_one_step, overrides=overrides)
    return plan, Path(args.out or f"runs/{args.scale}")


def cmd_plan(args: argparse.Namespace) -> int:
    print(cluster.describe(*_plan(args), args.executor, args.cluster, args.slurm, args.nodes, args.hostfile))
    return 0


def _artefacts(targets: list[str]) -> tuple[str, ...]:
    """The tables and figures `reproduce` regenerates: those named, else those of the targets' entries (a GPT-2
    entry's run holds no OPT records for Figure 2 to draw)."""
    named = tuple(a for a in registry.ARTEFACTS if a in targets)
    entries = registry.select(targets)
    ours = {f"table{t}" for e in entries for t in e.tables} | {f"figure{f}" for e in entries for f in e.figures}
    return named or tuple(a for a in registry.ARTEFACTS if a in ours)


def cmd_run(args: argparse.Namespace) -> int:
    runner.preflight(args.scale)
    plan, run_dir = _plan(args)
    redo = runner.resolve_redo(plan, args.redo or [])
    print(cluster.describe(plan, run_dir, args.executor, args.cluster, args.slurm, args.nodes, args.hostfile))
    if args.dry_run:
        return 0
    ex = cluster.executor(args.executor, args.cluster, args.slurm, args.scale, args.nodes, args.hostfile)
    opts = dict(
        jobs=args.jobs, prune_checkpoints=args.prune_checkpoints, redo=redo, executor=ex, hostfile=args.hostfile
    )
    try:
        runner.run_plan(plan, run_dir, **opts)
    except BrokenPipeError:  # `run ... | head`: the reader left; main exits quietly
        raise
    except OSError as exc:
        raise runner.RunError(runner.os_error_sentence(exc, run_dir)) from None
    print(runner.entry_summary(plan, run_dir))
    print(f"results: {run_dir / 'results.jsonl'}")
    if args.verb == "reproduce":
        out = notebooks.run_notebooks(
            run_dir,
            args.scale,
            artefacts=_artefacts(args.targets),
            overrides=plan.overrides,
            retrain_one_step=args.retrain_one_step,
        )
        print(f"tables and figure: {out}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = Path(args.out)
    if not run_dir.exists():
        raise runner.RunError(f"{run_dir} does not exist: give the --out directory of a run")
    plan = None
    if args.targets:
        plan = build_plan(args.targets, args.scale, overrides=run_overrides(args.scale, args.preset, args.overrides))
    print(runner.status_table(run_dir, plan, job_state=cluster.job_state))
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    runner.die_with_parent()
    runner.execute_stage(Path(args.stage_dir))
    return 0


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of concurrent stages, got {text!r}")
    return n


_RUN_HELP = {
    "plan": "print the stage DAG the targets need, with status and cost",
    "run": "run the stages the targets need (cached, verified, resumable)",
    "reproduce": "run, then regenerate the tables and figures into paper_tables/<scale>",
}
_RUN_DESCRIPTIONS = {
    "plan": "Print the stage DAG the targets need at a scale: each stage's status in the run directory "
    "(run / resume / done / sourced), its estimated cost and its inputs, and the total cost of what is left. "
    "Runs nothing.",
    "run": "Run the stages the targets need: cached (finished stages are verified and reused), resumable (an "
    "interrupted stage continues from its last checkpoint), concurrent where the DAG allows.",
    "reproduce": "Run the stages the targets need, then regenerate their tables and figures (notebooks -> "
    "paper_tables/<scale>/) and stages.md.",
}


# ----------------------------------------------------------------------------------------------------------------
# Reports: notebooks, suggest, figure1, planner-report
# ----------------------------------------------------------------------------------------------------------------


def _overrides_arg(text: str | None) -> dict:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        example = '{"minillm": {"lr": 1e-4}}'
        raise notebooks.NotebookError(f"--overrides: not valid JSON ({exc}); e.g. --overrides '{example}'") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise notebooks.NotebookError(
            "--overrides: expected a JSON object {KIND: {field: value}}, as run --set KIND=... takes"
        )
    return value


def cmd_notebooks(args: argparse.Namespace) -> int:
    artefacts = [a.strip() for a in args.only.split(",")] if args.only else list(registry.ARTEFACTS)
    out = notebooks.run_notebooks(
        args.results,
        args.scale,
        args.out,
        artefacts,
        tolerances=Tolerances(args.rouge_tol_min, args.ppl_rel_tol, args.std_multiplier),
        overrides=_overrides_arg(args.overrides),
        retrain_one_step=args.retrain_one_step,
    )
    print(f"wrote {', '.join(artefacts)} and stages.md to {out} (checks: {out / 'checks.json'})")
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    suggestions = planner.suggest(
        family=args.family,
        sizes=args.sizes,
        student=args.student,
        teacher=args.teacher,
        results=args.results,
        scale=args.scale,
        by=args.by,
    )
    if args.format == "json":
        print(json.dumps(suggestions, indent=2, ensure_ascii=False))
    else:
        print(planner.format_table(suggestions, args.by, args.scale, args.results))
    return 0


def cmd_figure1(args: argparse.Namespace) -> int:
    print(f"wrote {tables.draw_figure1(args.out)}")
    return 0


def cmd_planner_report(args: argparse.Namespace) -> int:
    print(f"wrote {notebooks.run_planner_report(args.results, args.scale, args.out)}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# The parser
# ----------------------------------------------------------------------------------------------------------------


PRESET_FLAGS = ("--preset",)
PRESET_OPTIONS = dict(
    choices=list(scales.PAPER_PRESETS),
    help="paper scale: the hop settings (scales.PAPER_PRESETS): authors (default; the seed paper's scripts: batch "
    "16, whitening over 8 rollouts, selection among 500-step checkpoints) or minillm (MiniLLM's paper: batch 64)",
)


def _add_registry_verbs(sub) -> None:
    s = sub.add_parser("ls", help="list the paper entries with their published numbers")
    s.add_argument("--format", choices=["table", "json"], default="table", help="a table (default) or JSON")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("show", help="one entry resolved at a scale")
    s.add_argument("key", help="an entry key, e.g. gpt2/1.5B>760M>120M (python -m benchmark ls lists them)")
    s.add_argument("--scale", default="paper", choices=list(scales.SCALES), help="resolve at this scale (paper)")
    s.add_argument(
        "--format", choices=["text", "json"], default="text", help="json: also every stage with its resolved config"
    )
    s.add_argument("--retrain-one-step", action="store_true", help="json: as for run")
    s.add_argument("--set", dest="overrides", action="append", metavar="KIND=JSON", help="json: as for run")
    s.add_argument(*PRESET_FLAGS, **PRESET_OPTIONS)
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("validate", help="resolve every entry at every scale")
    s.set_defaults(func=cmd_validate)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="prepare Dolly, the PT corpus, or the synthetic small/tiny data")
    verbs = p.add_subparsers(dest="data_verb", required=True)
    fam = dict(choices=["gpt2", "opt"], required=True, help="tokenization family (GPT-2 and OPT ids differ)")

    s = verbs.add_parser("dolly", help="MiniLLM's Dolly preparation (ref §4.1)")
    s.add_argument("--family", **fam)
    s.add_argument("--tokenizer", required=True, help="hub id or local dir, e.g. openai-community/gpt2")
    s.add_argument("--source", default="hub", help="hub, hub:REPO, or a dir with raw.jsonl + valid.jsonl")
    s.add_argument("--out", type=Path, help="default: data/prepared/dolly-FAMILY")
    s.add_argument(
        "--max-prompt-length",
        type=int,
        default=data.MAX_PROMPT_LENGTH,
        help=f"longer train/valid prompts are dropped, longer test prompts cut (default {data.MAX_PROMPT_LENGTH} "
        "tokens)",
    )
    s.add_argument("--dev-num", type=int, default=data.DEV_NUM, help="validation = the first N raw records")

    s = verbs.add_parser("pt", help="PT chunks for MiniLLM's PT loss (ref §4.2), into a prepared or new dir")
    s.add_argument("--family", **fam)
    s.add_argument("--tokenizer", help="needed only for a new dir; default: the prepared dir's own tokenizer")
    s.add_argument("--source", default="hub", help=data.PT_SOURCE_HELP)
    s.add_argument("--out", type=Path, help="default: data/prepared/dolly-FAMILY")
    s.add_argument(
        "--seq-len", type=int, default=data.PT_SEQ_LEN, help=f"tokens per PT chunk (default {data.PT_SEQ_LEN})"
    )
    s.add_argument("--max-chunks", type=int, default=None, help="use the first N chunks (default: all, as MiniLLM)")

    s = verbs.add_parser("synthetic", help="generate + tokenizer + prepare + PT for the small/tiny scales")
    s.add_argument("--scale", choices=["small", "tiny"], required=True, help="how many records (the scale's)")
    s.add_argument("--family", **fam)
    s.add_argument("--out", type=Path, help="default: data/prepared/SCALE-FAMILY")
    s.add_argument("--seed", type=int, default=0, help="generator seed (default 0, what run/reproduce use)")
    s.add_argument("--seq-len", type=int, default=None, help="PT chunk length (default: the scale's pt_seq_length)")
    p.set_defaults(func=cmd_data)


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="run one training stage (SFT or a MiniLLM hop) on DeepSpeed",
        description=TRAIN_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=["sft", "minillm"], help="sft: fine-tune one model; minillm: one distillation hop")
    p.add_argument("--data", required=True, help="prepared data directory (python -m benchmark data ...)")
    p.add_argument("--out", required=True, help="stage output directory (resumes if it holds a checkpoint)")
    p.add_argument("--student", help="minillm: the student's SFT init (directory or hub id)")
    p.add_argument("--teacher", help="minillm: the teacher (directory or hub id)")
    p.add_argument(
        "--student-size",
        metavar="FAMILY:SIZE",
        help="minillm: the student's registry size, e.g. gpt2:120M, for scales whose hop lr follows the student's SFT "
        "lr (small: a tenth of it), as the plan gives it",
    )
    p.add_argument("--model", help="sft: a base model (directory, hub id) or FAMILY:SIZE of the scale, e.g. gpt2:120M")
    p.add_argument(
        "--role",
        choices=["teacher", "init"],
        help="sft: the teacher selects its checkpoint by validation ROUGE-L, a student's init by validation loss "
        "(default: teacher for the family's teacher size given as FAMILY:SIZE, else init)",
    )
    p.add_argument("--scale", default="paper", choices=list(scales.SCALES), help="this scale's config (default paper)")
    p.add_argument(
        "--set",
        action="append",
        metavar="JSON",
        help="config overrides on top of the scale's (fields of config.SFTConfig or config.MiniLLMConfig), "
        "e.g. '{\"total_steps\": 100}'",
    )
    p.add_argument(
        "--allow-larger-student",
        action="store_true",
        help="minillm: accept a student with more parameters than its teacher (refused by default: usually swapped "
        "--student and --teacher)",
    )
    p.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # appended by the deepspeed launcher
    p.add_argument("--quiet", action="store_true", help="no progress bars and no DeepSpeed/transformers info logs")
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub) -> None:
    s = sub.add_parser("evaluate", help="ROUGE-L over seeds + perplexity of one model (ref §5)")
    s.add_argument("model", help="a local model directory or a hub id")
    s.add_argument("--data", required=True, help="prepared data directory (python -m benchmark data)")
    s.add_argument("--seeds", default=None, help="comma-separated evaluation seeds (default 10,20,30,40,50)")
    s.add_argument(
        "--scorer",
        default=None,
        help="fixed scorer model for perplexity_samples (the family's SFT "
        "teacher); without it perplexity_samples is not computed",
    )
    s.add_argument("--num-examples", type=int, default=None, help="first N test examples (default: all)")
    s.add_argument("--batch-size", type=int, default=None, help="generation batch size (results do not depend on it)")
    s.add_argument("--results", default=None, help="results JSONL file or run directory to append records to")
    s.add_argument(
        "--samples",
        default=None,
        metavar="PATH",
        help="JSONL file to write the per-example samples to, one line per (seed, example): text, ROUGE-L, exact "
        "match and the NLLs each perplexity is built from (replaced if it exists)",
    )
    s.add_argument("--entry", default=None, help="registry entry key the model belongs to, e.g. gpt2/1.5B>120M")
    s.add_argument("--scale", choices=list(scales.SCALES), help="this scale's evaluation settings (default: paper's)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars (ours or transformers')")
    s.set_defaults(func=cmd_evaluate)


def _add_run_verbs(sub) -> None:
    for verb in ("plan", "run", "reproduce"):
        p = sub.add_parser(
            verb,
            help=_RUN_HELP[verb],
            description=_RUN_DESCRIPTIONS[verb]
            + "\n\n"
            + (plan_doc if verb == "plan" else runner.__doc__).split("\n\n", 1)[1],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("targets", nargs="+", help="table1..table4, figure2, all, a family, or entry keys")
        p.add_argument("--scale", default="paper", choices=list(scales.SCALES), help="paper, small or tiny")
        p.add_argument("--out", help="run directory (default runs/<scale>)")
        p.add_argument("--retrain-one-step", action="store_true", help="paper scale: train the one-step hops here")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            metavar="KIND=JSON",
            help="override stage configs on top of the scale's: KIND is sft, minillm or evaluation, JSON an object of "
            "its fields (repeatable); only the stages that depend on a changed field rerun",
        )
        p.add_argument(*PRESET_FLAGS, **PRESET_OPTIONS)
        for flags, options in cluster.OPTIONS:  # --executor, --cluster, --slurm, --dry-run
            p.add_argument(*flags, **options)
        p.set_defaults(func=cmd_plan if verb == "plan" else cmd_run)
        if verb == "plan":
            continue
        p.add_argument(
            "--jobs",
            type=_positive_int,
            help="concurrent stages (default: 1 per CPU core; on GPUs 1, and N splits the GPUs into N groups)",
        )
        p.add_argument(
            "--redo",
            action="append",
            metavar="STAGE_OR_KEY",
            help="run this stage again (a stage name such as distill-gpt2-1.5B_760M, a stage directory, or an entry "
            "key: the stage that trains its final model), and every stage downstream of it; the old directories "
            "are moved to RUN/attic (repeatable)",
        )
        p.add_argument(
            "--prune-checkpoints",
            action="store_true",
            help="delete each finished stage's resumable checkpoints (its selected model stays)",
        )
    p = sub.add_parser(
        "status",
        help="the state of every stage of a run directory",
        description="Every stage of a run directory: done / running / failed / damaged / interrupted / pending, "
        "with its log. With targets (and --scale), the stages those targets need, including those not started.",
    )
    p.add_argument("targets", nargs="*", help="optional: tables or entry keys whose stages to list")
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument("--scale", default="paper", choices=list(scales.SCALES), help="scale of the targets")
    p.add_argument("--set", dest="overrides", action="append", metavar="KIND=JSON", help="as for run")
    p.add_argument(*PRESET_FLAGS, **PRESET_OPTIONS)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("_stage")
    p.add_argument("stage_dir")
    p.add_argument("--local_rank", type=int, default=0)
    p.set_defaults(func=cmd_stage)
    p = sub.add_parser("_guard")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: cluster.guard(args.command))


def _add_notebooks(sub) -> None:
    d = DEFAULT_TOLERANCES
    s = sub.add_parser("notebooks", help="regenerate the tables, Figure 2 and stages.md from a results directory")
    s.add_argument("--results", required=True, help="results directory (holds results.jsonl)")
    s.add_argument("--scale", required=True, choices=list(scales.SCALES), help="the scale whose records to tabulate")
    s.add_argument("--out", default=None, help="output directory (default paper_tables/<scale>)")
    s.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(registry.ARTEFACTS)}")
    s.add_argument(
        "--overrides",
        default=None,
        metavar="JSON",
        help="show the records of a run made with these --set overrides, {KIND: {field: value}} (default: the "
        "scale's own configs); entries the overrides do not change keep their default records",
    )
    s.add_argument(
        "--retrain-one-step",
        action="store_true",
        help="the run was made with run --retrain-one-step (paper scale): stages.md shows its one-step hops",
    )
    s.add_argument("--rouge-tol-min", type=float, default=d.rouge_min, help="ROUGE-L band floor, points")
    s.add_argument("--ppl-rel-tol", type=float, default=d.ppl_rel, help="perplexity band floor, relative")
    s.add_argument("--std-multiplier", type=float, default=d.std_multiplier, help="band = max(floor, k * std)")
    s.set_defaults(func=cmd_notebooks)


def _add_planner_verbs(sub) -> None:
    laws = "; ".join(f"{law.id}: {law.formula}" for law in LAWS.values())
    s = sub.add_parser(
        "suggest",
        help="rank every distillation path (which TAs?) by the capacity-gap, TAKD, DGKD and the paper's laws",
        description=planner.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--family", help=f"a registered family ({', '.join(registry.FAMILIES)})")
    where.add_argument(
        "--sizes",
        help="any size ladder, comma-separated, e.g. 12B,6.9B,2.8B,1.4B,410M,160M (the Pythia suite); parameter "
        "counts are read from the names",
    )
    s.add_argument("--student", required=True, help="the student size, e.g. 120M")
    s.add_argument("--teacher", help="the teacher size (default: the family's teacher / the ladder's largest size)")
    s.add_argument(
        "--results",
        metavar="RUN",
        help="a results directory: measured ROUGE-L (95 %% interval) per path, measured quality for the quality laws, "
        "and only the hops whose stages are not done in RUN are costed",
    )
    s.add_argument(
        "--scale",
        default="paper",
        choices=list(scales.SCALES),
        help="the scale of the cost model and of the records read from --results (default paper)",
    )
    s.add_argument(
        "--by",
        default=planner.DEFAULT_LAW,
        choices=list(planner.RANK_BY),
        metavar="LAW",
        help=f"rank by this law (lower score first; ties: fewer hops first), default {planner.DEFAULT_LAW}; or "
        f"'measured' (ROUGE-L from --results, highest first). Laws: {laws}",
    )
    s.add_argument("--format", choices=["table", "json"], default="table", help="a table (default) or JSON, best first")
    s.set_defaults(func=cmd_suggest)

    f = sub.add_parser("figure1", help="draw the paper's Figure 1 (one-step vs multi-step) from the registry")
    f.add_argument("--out", default=str(planner.FIGURE1), help="output PNG (default paper_tables/figure1.png)")
    f.set_defaults(func=cmd_figure1)

    r = sub.add_parser(
        "planner-report",
        help="each law's ranking next to the measured one, with Kendall's tau (notebooks/planner.ipynb)",
    )
    r.add_argument("--results", help="results directory (default: none; the paper's numbers only)")
    r.add_argument("--scale", default="small", choices=list(scales.SCALES), help="scale of the results (default small)")
    r.add_argument("--out", help="output directory (default paper_tables/<scale>)")
    r.set_defaults(func=cmd_planner_report)


# ----------------------------------------------------------------------------------------------------------------
# The performance benchmark: perf (CPU), perf-gpu, and the internal _perf-worker (one round in a fresh process)
# ----------------------------------------------------------------------------------------------------------------


def parse_only(text: str) -> tuple[str, ...]:
    """`--only rollouts,trl` as a tuple of sections; anything not in cpu.SECTIONS is a PerfError."""
    parts = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in parts if s not in cpu.SECTIONS]
    if bad or not parts:
        raise PerfError(f"--only takes a comma-separated subset of {','.join(cpu.SECTIONS)}, got {text!r}")
    return parts


def cmd_perf(args: argparse.Namespace) -> int:
    cpu.run_perf(
        scale=args.scale,
        out=args.out,
        repeats=args.repeats,
        only=parse_only(args.only),
        quick=args.quick,
        work=args.work,
        command="python -m benchmark perf " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["perf"] else None,
    )
    return 0


def cmd_perf_gpu(args: argparse.Namespace) -> int:
    gpu.run(Path(args.out), args.dry_run, args.budget_s, tuple(n for n in args.pairs.split(",") if n))
    return 0


def cmd_perf_worker(args: argparse.Namespace) -> int:
    result = cpu.measure(args.name, Path(args.setup), args.round, args.quick)
    print(cpu.RESULT_MARK + json.dumps(result), flush=True)
    return 0


def _add_perf_verbs(sub) -> None:
    p = sub.add_parser(
        "perf",
        help="throughput / memory benchmark of rollouts, training and evaluation, side by side with TRL",
        description=cpu.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scale", default="small", choices=["small", "tiny"], help="model sizes to measure (default small)")
    p.add_argument("--out", default="paper_tables/perf", help="directory for <machine>.json and <machine>.md")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians and ranges over them)")
    sections = ",".join(cpu.SECTIONS)
    p.add_argument("--only", default=sections, help=f"comma-separated subset of {sections}")
    p.add_argument("--quick", action="store_true", help="shorter runs: no warm-up phase, 4 TRL steps, eval subset")
    p.add_argument("--work", default=None, help="keep data/models here (default: a temporary directory)")
    p.set_defaults(func=cmd_perf)

    p = sub.add_parser(
        "perf-gpu",
        help="GPU throughput, MFU and memory of the trainer's rollouts and step at the paper's shapes",
        description=gpu.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default=os.environ.get("OUT") or "paper_tables/perf", help="directory (default $OUT)")
    p.add_argument("--dry-run", action="store_true", help="tiny models and lengths: tests the script, measures nothing")
    p.add_argument("--budget-s", type=float, default=360.0, help="start no new pair after this many seconds")
    p.add_argument("--pairs", default="", help="comma-separated pair names to run (default: all, in order)")
    p.set_defaults(func=cmd_perf_gpu)

    p = sub.add_parser(cpu.WORKER_VERB, description="one measurement round of `perf` (internal)")
    p.add_argument("name", choices=list(cpu.WORKERS), help="the measurement to make")
    p.add_argument("--setup", required=True, help="JSON file written by run_perf: data and model paths")
    p.add_argument("--round", type=int, default=0, help="which interleaved round this is (0-based)")
    p.add_argument("--quick", action="store_true", help="the shorter --quick measurement")
    p.set_defaults(func=cmd_perf_worker)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="verb", required=True)
    _add_registry_verbs(sub)
    _add_data(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_run_verbs(sub)
    _add_notebooks(sub)
    _add_perf_verbs(sub)
    _add_planner_verbs(sub)
    r = sub.add_parser("rehearsal", help="Tables 1-4 at paper scale offline, fake hub", description=rehearsal.__doc__)
    r.add_argument("--out", default="runs/rehearsal", help="run directory; the fake hub is built in OUT/hf_home")
    r.add_argument("--tables", default="paper_tables/rehearsal", help="output directory of the tables")
    r.add_argument("--targets", nargs="+", default=list(rehearsal.TARGETS), help="default: table1 table2 table3 table4")
    r.set_defaults(func=lambda a: print(f"tables: {rehearsal.run(a.out, a.tables, a.targets)}") or 0)
    # Verbs named _like_this are internal (the runner's own subprocesses): usable, but not offered in -h.
    sub.metavar = "{" + ",".join(name for name in sub.choices if not name.startswith("_")) + "}"
    return p


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
