"""The SFT stage (MiniLLM phase 1, ref §2.4 `finetune.py`): fine-tune a base model on the prepared Dolly train split.

It makes a chain's teacher (selected by validation ROUGE-L) and its students' inits (selected by validation loss).
A model of the small/tiny scales is built here from its spec (`scales.build_model`) and first takes
`pretrain_steps` language-model steps on the prepared PT chunks, the stand-in for the pretraining GPT-2/OPT had.

    per step   a global batch of `batch_size` examples in a seeded order per epoch: response-only cross-entropy
               (EOS included), a token mean over the whole global batch, so results do not depend on the GPU count
    schedule   AdamW, weight decay 0.01 except the no-decay names; cosine from lr to lr_min over the run
    selection  every eval_interval steps (default: each epoch) validation loss (and ROUGE-L for a teacher); the
               best checkpoint becomes OUT/model, and its perplexity and greedy ROUGE-L go into summary.json
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark import losses
from benchmark.config import GenerationSettings, SFTConfig, deepspeed_config
from benchmark.data import PreparedData, load_prepared
from benchmark.engine import (
    Dist,
    MetricsLog,
    TrainError,
    all_reduce_sum,
    build_engine,
    check_finite,
    disable_dropout,
    init_distributed,
    load_checkpoint,
    load_model,
    save_checkpoint,
    seed_everything,
    seeded_generator,
    select_model,
    write_summary,
)
from benchmark.evaluate import validate
from benchmark.sampling import labelled_logits
from benchmark.scales import ModelSpec, build_model


def _sft_batch(examples, max_length: int, pad_id: int, device):
    """Right-padded prompt+response, labels only on the response (its EOS included; ref finetune.py)."""
    seqs, labels = [], []
    for ex in examples:
        ids = (list(ex.prompt_ids) + list(ex.response_ids))[:max_length]
        lab = ([-100] * len(ex.prompt_ids) + list(ex.response_ids))[:max_length]
        seqs.append(ids)
        labels.append(lab)
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    lab = torch.full((len(seqs), L), -100, dtype=torch.long)
    for i, (s, y) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)], mask[i, : len(s)], lab[i, : len(y)] = torch.tensor(s), 1, torch.tensor(y)
    # position t predicts token t+1
    return ids.to(device), mask.to(device), lab[:, 1:].to(device)


def _step_batch(step: int, cfg: SFTConfig, train: list, pt: torch.Tensor | None, pad_id: int, device):
    """(ids, mask, labels) of optimizer step `step`: the first `pretrain_steps` are language-model steps on PT
    chunks (every token a target), then SFT steps on the train split; each pass over the data in a seeded order."""
    if step < cfg.pretrain_steps:
        epoch, k = divmod(step, len(pt) // cfg.batch_size)
        perm = torch.randperm(len(pt), generator=seeded_generator(cfg.seed, 1_000_000 + epoch))
        ids = pt[perm[k * cfg.batch_size : (k + 1) * cfg.batch_size]].to(device)
        return ids, torch.ones_like(ids), ids[:, 1:]
    epoch, k = divmod(step - cfg.pretrain_steps, len(train) // cfg.batch_size)
    perm = torch.randperm(len(train), generator=seeded_generator(cfg.seed, epoch))
    rows = perm[k * cfg.batch_size : (k + 1) * cfg.batch_size].tolist()
    return _sft_batch([train[i] for i in rows], cfg.max_length, pad_id, device)


def _optimizer_step(engine, ids, mask, labels, step: int, dist: Dist, out: Path) -> float:
    """One optimizer step on a global batch: this rank's micro-batches, each loss its share of the batch's token
    mean (so the sum over micro-batches and ranks is the global token mean). Returns this rank's loss sum."""
    micro, gas = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
    n_tokens = int((labels != -100).sum())
    loss_sum = 0.0
    for m in range(gas):
        lo = (dist.rank * gas + m) * micro
        sl = slice(lo, lo + micro)
        logits = labelled_logits(engine, ids[sl], mask[sl], labels[sl]).float()  # [tokens, V]
        loss = losses.lm_cross_entropy(logits, labels[sl][labels[sl] != -100], num_tokens=n_tokens)
        check_finite(loss, step, {}, out)
        # DeepSpeed averages gradients over ranks: undo it, and skip its 1/GA scaling (the loss is already a share)
        engine.backward(loss * dist.world_size, scale_wrt_gas=False)
        engine.step()
        loss_sum += loss.item()
    return loss_sum


@torch.no_grad()
def _val_loss(model, examples, cfg: SFTConfig, pad_id: int, dist: Dist, batch: int) -> float:
    """Token-mean response CE (EOS included) on the validation split: selects the student inits (ref §2.4)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(dist.rank * batch, len(examples), batch * dist.world_size):
        ids, mask, labels = _sft_batch(examples[start : start + batch], cfg.max_length, pad_id, dist.device)
        targets = labels[labels != -100]
        logits = labelled_logits(model, ids, mask, labels).float()  # [len(targets), V]
        nll = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        total, count = total + nll.item(), count + len(targets)
    model.train(was)
    return all_reduce_sum(total, dist) / max(1.0, all_reduce_sum(count, dist))


def _rouge_l(model, val: list, data: PreparedData, cfg: SFTConfig, dist: Dist, batch: int, settings) -> dict:
    """{"val_rouge_l": ...} of `model`'s responses to the validation prompts with these generation settings."""
    return validate(
        model,
        None,
        val,
        tokenizer=data.tokenizer,
        eos_token_id=data.eos_token_id,
        max_prompt_length=cfg.max_prompt_length,
        settings=settings,
        batch_size=batch,
        seed=cfg.seed,
        dist=dist,
    )


def _base_model(model: str | ModelSpec, data_dir, cfg: SFTConfig, dist: Dist):
    """(the model to fine-tune, its data, its source for the summary): a ModelSpec built here (seeded), or a
    directory / hub id loaded in float32."""
    if isinstance(model, ModelSpec):
        data = load_prepared(data_dir, family=model.arch)
        net = build_model(model, data.tokenizer, n_positions=cfg.max_length, seed=cfg.seed).to(dist.device)
        return net, data, dataclasses.asdict(model)
    net = load_model(model, dist.device, torch.float32, dropout=cfg.dropout)
    return net, load_prepared(data_dir, family=net.config.model_type), model


def _pt_chunks(data: PreparedData, cfg: SFTConfig) -> torch.Tensor | None:
    """The PT chunks of the `pretrain_steps` (None without them), cut to max_length."""
    if not cfg.pretrain_steps:
        return None
    chunks = data.pt_chunks()
    if chunks is None or len(chunks) < cfg.batch_size:
        raise TrainError(
            f"pretrain_steps={cfg.pretrain_steps} needs PT chunks (at least one batch of {cfg.batch_size}) in "
            f"{data.path}: prepare them (`python -m benchmark data synthetic ...` writes pt.npy) or set "
            "pretrain_steps=0"
        )
    return torch.from_numpy(chunks[:, : cfg.max_length].astype(np.int64))


def sft_engine(net, cfg: SFTConfig, total_steps: int, world_size: int):
    """The DeepSpeed engine with the reference's optimizer and schedule (ref §2.4): AdamW, weight decay 0.01 except
    the no-decay names; cosine from lr to lr_min over `total_steps`, after `warmup_steps` linear ones (none)."""
    decay = [p for n, p in net.named_parameters() if not any(nd in n for nd in cfg.no_decay)]
    no_decay = [p for n, p in net.named_parameters() if any(nd in n for nd in cfg.no_decay)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )

    def lr_lambda(s: int) -> float:
        if s < cfg.warmup_steps:
            return (s + 1) / cfg.warmup_steps
        frac = min(1.0, (s - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return (cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * frac))) / cfg.lr

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    return build_engine(net, opt, sched, deepspeed_config(cfg, world_size))


def train_sft(
    model: str | ModelSpec, data_dir: str | Path, out_dir: str | Path, cfg: SFTConfig, *, progress: bool = True
) -> Path:
    """Fine-tune a base model (hub id, directory, or a small/tiny ModelSpec built here) on the prepared Dolly
    train split; returns OUT/model, the checkpoint with the best validation loss (or ROUGE-L for a teacher).
    A model built here from scratch first takes `cfg.pretrain_steps` LM steps on the prepared PT chunks."""
    out, dist = Path(out_dir), init_distributed()
    if dist.is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    seed_everything(cfg.seed, dist.rank)
    net, data, source = _base_model(model, data_dir, cfg, dist)
    if not cfg.dropout:
        disable_dropout(net)
    net.train()
    train, val = data.split("train"), data.split("valid")[: cfg.val_examples]
    steps_per_epoch = len(train) // cfg.batch_size
    total = cfg.pretrain_steps + (cfg.total_steps or cfg.epochs * steps_per_epoch)
    eval_interval = cfg.eval_interval or steps_per_epoch
    response = cfg.max_length - cfg.max_prompt_length  # the longest response validation generates
    pt = _pt_chunks(data, cfg)
    engine = sft_engine(net, cfg, total, dist.world_size)
    micro = engine.train_micro_batch_size_per_gpu()
    resumed = load_checkpoint(engine, out, dist)
    log = MetricsLog(out / "metrics.jsonl", dist.is_main, resumed_step=resumed and resumed["step"])
    state = resumed or {"step": 0, "best": None, "history": []}

    bar = dict(desc="sft steps", disable=not (progress and dist.is_main), dynamic_ncols=True)
    pbar = tqdm(total=total, initial=state["step"], **bar)
    t_start = time.time()
    while state["step"] < total:
        step = state["step"]
        ids, mask, labels = _step_batch(step, cfg, train, pt, data.eos_token_id, dist.device)
        t0, lr = time.time(), engine.lr_scheduler.get_last_lr()[0]
        loss = all_reduce_sum(_optimizer_step(engine, ids, mask, labels, step, dist, out), dist)
        state["step"] += 1
        kind = "train" if step >= cfg.pretrain_steps else "pretrain"
        speed = float(mask.sum()) / max(time.time() - t0, 1e-9)
        log.write(step=state["step"], kind=kind, loss=loss, lr=lr, tokens_per_s=speed)
        pbar.update(1)
        sft_steps = state["step"] - cfg.pretrain_steps
        if sft_steps > 0 and (sft_steps % eval_interval == 0 or state["step"] == total):
            v = {"val_loss": _val_loss(engine.module, val, cfg, data.eos_token_id, dist, micro)}
            if cfg.select_by == "rouge_l":  # a teacher: sampled ROUGE-L of one seed (ref §3.1)
                v |= _rouge_l(engine.module, val, data, cfg, dist, micro, GenerationSettings(max_new_tokens=response))
            state["history"].append({"step": state["step"], **v})
            log.write(step=state["step"], kind="validation", **v)
            pbar.set_postfix(val_loss=f"{v['val_loss']:.3f}", refresh=False)
            metric = "val_rouge_l" if cfg.select_by == "rouge_l" else "val_loss"
            select_model(engine, data.tokenizer, state, v, metric=metric, out=out, dist=dist, zero_stage=cfg.zero_stage)
        if state["step"] % cfg.checkpoint_interval == 0 or state["step"] == total:
            save_checkpoint(engine, out / "checkpoints", state["step"], state, dist)
    pbar.close()
    log.close()
    # The selected model's validation perplexity and greedy ROUGE-L: the small scale is checked to order the four
    # sizes of a family by both (README "Small scale").
    selected = load_model(str(out / "model"), dist.device, torch.float32, dropout=False)
    greedy = GenerationSettings(max_new_tokens=response, do_sample=False)
    v = _rouge_l(selected, val, data, cfg, dist, max(micro, 32), greedy)
    state["selected"] = {
        "val_loss": state["best"]["val_loss"],
        "val_ppl": math.exp(state["best"]["val_loss"]),
        "val_rouge_l_greedy": v["val_rouge_l"],
        "parameters": selected.num_parameters(),
    }
    inputs = {"model": source, "data": str(data_dir)}
    return write_summary(out, state, dist, kind="sft", cfg=cfg, wall=time.time() - t_start, inputs=inputs)
