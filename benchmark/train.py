"""`python -m benchmark train`: one training stage on DeepSpeed, SFT (MiniLLM phase 1) or one MiniLLM reverse-KL hop.

    python -m benchmark train minillm --student S_DIR --teacher T_DIR --data DATA_DIR --out OUT [--scale small]
    python -m benchmark train sft --model gpt2:120M --data DATA_DIR --out OUT --scale small
    deepspeed --num_gpus 4 -m benchmark train minillm ...          # multi-GPU; torchrun works too

A stage writes OUT/model (the selected checkpoint, Hugging Face format: the next hop's teacher), OUT/metrics.jsonl
(one line per optimizer step and per validation), OUT/summary.json (written last: the stage is done) and
resumable checkpoints under OUT/checkpoints. Killed and restarted with the same arguments it resumes from the
last checkpoint and, on CPU with fixed seeds, ends with the same weights as an uninterrupted run.

The trainers: benchmark/sft.py (SFT) and benchmark/minillm.py (a hop: what each phase does, with the reference
sections it mirrors); their DeepSpeed edge, checkpoints and logs: benchmark/engine.py.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from benchmark import registry, scales
from benchmark.config import resolve
from benchmark.engine import TrainError
from benchmark.engine import check_model_path as _check_model_path  # the name cmd_train calls
from benchmark.minillm import train_minillm
from benchmark.sft import train_sft

# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def _json_overrides(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrainError(f"--set: not valid JSON ({exc}); quote it, e.g. --set '{{\"total_steps\": 100}}'") from None
    if not isinstance(value, dict):
        raise TrainError(f"--set: expected a JSON object of config fields, got {type(value).__name__}")
    return value


def _quiet_logs() -> None:
    """`--quiet`: no progress bars and no info logging from transformers or DeepSpeed (warnings that matter still
    reach stderr at ERROR level). DeepSpeed sets its logger's level when first imported, so it is imported here."""
    import logging

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # as init_distributed: no "Setting accelerator to CPU" warning
    from deepspeed.utils import logger as ds_logger
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    ds_logger.setLevel(logging.ERROR)
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)


def _final_report(model_dir: Path, kind: str) -> str:
    """Where the stage's model went and the validation that selected it (from OUT/summary.json)."""
    summary = json.loads((model_dir.parent / "summary.json").read_text())
    best = summary.get("best") or {}
    metric = "val_rouge_l" if kind == "minillm" or summary["config"].get("select_by") == "rouge_l" else "val_loss"
    direction = "higher" if metric == "val_rouge_l" else "lower"
    values = ", ".join(f"{k} {v:.4g}" for k, v in best.items() if k != "step" and isinstance(v, int | float))
    lines = [
        f"model: {model_dir}",
        f"selected: step {best.get('step')} of {summary['steps']} by {metric} ({direction} is better): {values}",
    ]
    sel = summary.get("selected") or {}
    if "val_ppl" in sel:
        ppl, rouge = sel["val_ppl"], sel["val_rouge_l_greedy"]
        lines.append(f"selected model: validation perplexity {ppl:.4g}, greedy ROUGE-L {rouge:.4g}")
    kl = summary.get("sequence_rev_kl") or {}
    if isinstance(kl.get("init"), dict) and isinstance(kl.get("selected"), dict):
        before, after = kl["init"]["per_response"], kl["selected"]["per_response"]
        lines.append(f"reverse KL to the teacher per sampled response: {before:.4g} (init) -> {after:.4g} (selected)")
    lines.append(f"summary: {model_dir.parent / 'summary.json'}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    """`python -m benchmark train`: one stage with the config the plan would give it (`config.resolve`)."""
    if args.quiet:
        _quiet_logs()
    if args.kind == "minillm":
        cfg = resolve("minillm", args.scale, _json_overrides(args.set))
        model_dir = train_minillm(
            args.student,
            args.teacher,
            args.data,
            args.out,
            cfg,
            progress=not args.quiet,
            allow_larger_student=args.allow_larger_student,
        )
    else:
        spec, role = None, args.role
        if ":" in args.model and not Path(args.model).exists():
            family, size = args.model.split(":", 1)
            spec = scales.scale(args.scale).model(family, size)
            model = spec if not spec.from_hub else spec.base
            role = role or ("teacher" if size == registry.FAMILIES[family].teacher else "init")  # as the plan
        else:
            model = args.model
            _check_model_path(model)  # before OUT is created
        cfg = resolve("sft", args.scale, _json_overrides(args.set), model=spec, role=role)
        model_dir = train_sft(model, args.data, args.out, cfg, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(_final_report(Path(model_dir), args.kind))
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser(
        "train",
        help="run one training stage (SFT or a MiniLLM hop) on DeepSpeed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=["sft", "minillm"], help="sft: fine-tune one model; minillm: one distillation hop")
    p.add_argument("--data", required=True, help="prepared data directory (python -m benchmark data ...)")
    p.add_argument("--out", required=True, help="stage output directory (resumes if it holds a checkpoint)")
    p.add_argument("--student", help="minillm: the student's SFT init (directory or hub id)")
    p.add_argument("--teacher", help="minillm: the teacher (directory or hub id)")
    p.add_argument("--model", help="sft: a base model (directory, hub id) or FAMILY:SIZE of the scale, e.g. gpt2:120M")
    p.add_argument(
        "--role",
        choices=["teacher", "init"],
        help="sft: the teacher selects its checkpoint by validation ROUGE-L, a student's init by validation loss "
        "(default: teacher for the family's teacher size given as FAMILY:SIZE, else init)",
    )
    p.add_argument(
        "--scale",
        default="paper",
        choices=list(scales.SCALES),
        help="apply this scale's config overrides (default: paper-faithful values)",
    )
    p.add_argument(
        "--set",
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
    p.set_defaults(func=_checked_train)


def _checked_train(args: argparse.Namespace) -> int:
    if args.kind == "minillm" and not (args.student and args.teacher):
        raise TrainError("train minillm needs --student (the SFT init) and --teacher")
    if args.kind == "sft" and not args.model:
        raise TrainError("train sft needs --model (directory, hub id or FAMILY:SIZE)")
    return cmd_train(args)
