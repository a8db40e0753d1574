"""How big everything is: the `paper`, `small` and `tiny` scales, and the one GPT-2 / OPT model builder.

    python -m benchmark show gpt2/1.5B>760M>120M --scale small    # the models an entry uses at a scale

A scale maps every size of a family (`benchmark.registry.FAMILIES`) to a concrete model: `paper` uses the public
MiniLLM checkpoints (https://huggingface.co/MiniLLM), `small` and `tiny` use models built from configs here and
trained on the project's own synthetic Dolly-format data (`benchmark.synthetic`). Its `sft`, `minillm` and
`evaluation` values override the paper-faithful defaults of `benchmark.config` (through `config.resolve`). How the
small scale's sizes and budgets were measured: `paper_tables/small/calibration.md`.
"""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass, field
from types import MappingProxyType

from benchmark.registry import ENTRIES, FAMILIES, Arch, RegistryError, number_str, parse_key


@dataclass(frozen=True)
class ModelSpec:
    """A concrete model for one size at one scale.

    At `paper` scale the model comes from the hub (`init`/`minillm` are checkpoint ids, `base` the pretrained model)
    and `n_layer`/`n_embd`/`n_head` are the real architecture's (for random-weight performance measurements). At
    `small`/`tiny` scale it is built from `n_layer`/`n_embd`/`n_head` and SFT-trained here with `sft_lr`.
    """

    arch: Arch
    size: str
    base: str | None = None
    init: str | None = None
    minillm: str | None = None
    n_layer: int | None = None
    n_embd: int | None = None
    n_head: int | None = None
    sft_lr: float | None = None

    @property
    def from_hub(self) -> bool:
        return self.base is not None

    def model_config(self, vocab_size: int, n_positions: int, tokenizer_ids: dict[str, int]):
        """A transformers config of this architecture (GPT2Config or OPTConfig; OPT's FFN is 4x its width, as in
        every facebook/opt-* model)."""
        if self.n_layer is None:
            raise RegistryError(f"{self.arch} {self.size} has no architecture to build ({self.describe()})")
        from transformers import GPT2Config, OPTConfig

        ids = dict(
            bos_token_id=tokenizer_ids["bos"], eos_token_id=tokenizer_ids["eos"], pad_token_id=tokenizer_ids["pad"]
        )
        if self.arch == "gpt2":
            return GPT2Config(
                vocab_size=vocab_size,
                n_positions=n_positions,
                n_layer=self.n_layer,
                n_embd=self.n_embd,
                n_head=self.n_head,
                **ids,
            )
        return OPTConfig(
            vocab_size=vocab_size,
            max_position_embeddings=n_positions,
            num_hidden_layers=self.n_layer,
            hidden_size=self.n_embd,
            num_attention_heads=self.n_head,
            ffn_dim=4 * self.n_embd,
            word_embed_proj_dim=self.n_embd,
            do_layer_norm_before=True,
            **ids,
        )

    def describe(self) -> str:
        if self.from_hub:
            return f"{self.base} (init {self.init or '-'}, MiniLLM {self.minillm or '-'})"
        return f"{self.arch} {self.n_layer}L/{self.n_embd}d/{self.n_head}h, SFT lr {self.sft_lr:g}"


def random_model(
    spec: ModelSpec,
    vocab_size: int,
    tokenizer_ids: dict[str, int],
    n_positions: int,
    seed: int,
    *,
    device=None,
    dtype=None,
    dropout: bool = True,
):
    """A freshly initialised model of `spec`'s architecture (seeded with `torch.manual_seed(seed)`), created on
    `device` in `dtype` when given; `dropout=False` zeroes every dropout probability (MiniLLM's policy runs
    without dropout)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = spec.model_config(vocab_size=vocab_size, n_positions=n_positions, tokenizer_ids=tokenizer_ids)
    if not dropout:
        for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout", "attention_dropout"):
            if hasattr(config, k):
                setattr(config, k, 0.0)
    torch.manual_seed(seed)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return AutoModelForCausalLM.from_config(config, **({"dtype": dtype} if dtype is not None else {}))


def build_model(spec: ModelSpec, tokenizer, n_positions: int, seed: int):
    """A freshly initialised model of a small/tiny size on `tokenizer`'s vocabulary (the analogue of a pretrained
    base for SFT)."""
    ids = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    return random_model(spec, len(tokenizer), ids, n_positions, seed)


@dataclass(frozen=True)
class Scale:
    """How big everything is. `paper` is the real thing; the others override only what they must, and say why.

    `sft`, `minillm` and `evaluation` override the paper-faithful defaults of `benchmark.config` (SFTConfig,
    MiniLLMConfig, EvalConfig); `config.resolve` merges them with a run's own overrides.
    """

    name: str
    description: str
    models: dict[str, dict[str, ModelSpec]]  # family -> size -> spec
    data: str  # "dolly" (hub/local files) or "synthetic" (generated here)
    synthetic_records: dict[str, int] = field(default_factory=dict)  # split -> count, synthetic data only
    synthetic_answers: str = "short"  # benchmark.synthetic.ANSWERS: the bare answers or Dolly-like sentences
    sft: dict = field(default_factory=dict)
    # family -> size -> SFT fields of that model alone (paper scale: the reference's per-size scripts)
    sft_by_size: dict[str, dict[str, dict]] = field(default_factory=dict)
    minillm: dict = field(default_factory=dict)
    # A hop's learning rate as a fraction of its student's SFT lr (ModelSpec.sft_lr, `config.resolve`); None: the
    # `minillm` lr for every hop
    minillm_lr_per_sft_lr: float | None = None
    evaluation: dict = field(default_factory=dict)
    # named hop settings (`--preset NAME`, MiniLLMConfig values); `minillm` above is the default preset's
    presets: dict[str, dict] = field(default_factory=dict)
    default_preset: str | None = None
    # family -> the external model `perplexity_text` scores decoded responses with (evaluate stages; none: not computed)
    text_scorer: dict[str, str] = field(default_factory=dict)
    why: str = ""

    def model(self, family: str, size: str) -> ModelSpec:
        try:
            return self.models[family][size]
        except KeyError:
            raise RegistryError(f"scale {self.name!r} has no model for {family}/{size}") from None


# The real architectures (n_layer, n_embd, n_head) of the hub configs: openai-community/gpt2, -medium, -large, -xl;
# facebook/opt-1.3b, -2.7b, -6.7b, -13b.
_PAPER_SHAPES = {
    "gpt2": {"1.5B": (48, 1600, 25), "760M": (36, 1280, 20), "340M": (24, 1024, 16), "120M": (12, 768, 12)},
    "opt": {"13B": (40, 5120, 40), "6.7B": (32, 4096, 32), "2.7B": (32, 2560, 32), "1.3B": (24, 2048, 32)},
}


def _paper_models() -> dict[str, dict[str, ModelSpec]]:
    out: dict[str, dict[str, ModelSpec]] = {}
    for fam in FAMILIES.values():
        out[fam.name] = {
            s: ModelSpec(
                arch=fam.name,
                size=s,
                base=fam.base[s],
                init=fam.teacher_sft if s == fam.teacher else fam.init[s],
                minillm=fam.minillm.get(s),
                n_layer=_PAPER_SHAPES[fam.name][s][0],
                n_embd=_PAPER_SHAPES[fam.name][s][1],
                n_head=_PAPER_SHAPES[fam.name][s][2],
            )
            for s in fam.sizes
        }
    return out


# The reference's SFT settings per size (microsoft/LMOps `minillm/scripts/{gpt2,opt}/sft/*.sh`, read at 4f2a9de:
# `LR=` and `--epochs`; ref §2.4). Everything else is the same in every script and is SFTConfig's default: global
# batch 32, cosine to 1e-7 without warmup, weight decay 0.01, clip 1.0, lengths 512/256, fp16 ZeRO-1 (OPT 6.7B/13B
# add model parallelism 4 at the same global batch). Used when an SFT stage is trained at paper scale
# (`train sft --model gpt2:120M --scale paper`); the plan itself takes MiniLLM's public SFT checkpoints.
_PAPER_SFT = {
    "gpt2": {
        "120M": {"lr": 5e-4, "epochs": 20},  # gpt2/sft/sft_base.sh:24 LR=0.0005, :55 --epochs 20
        "340M": {"lr": 1e-4, "epochs": 20},  # gpt2/sft/sft_medium.sh:24 LR=0.0001, :55 --epochs 20
        "760M": {"lr": 1e-4, "epochs": 10},  # gpt2/sft/sft_large.sh:24 LR=0.0001, :55 --epochs 10
        "1.5B": {"lr": 5e-5, "epochs": 10},  # gpt2/sft/sft_xlarge.sh:24 LR=0.00005, :56 --epochs 10
    },
    "opt": {
        "1.3B": {"lr": 5e-5, "epochs": 10},  # opt/sft/sft_1.3B.sh:24 LR=0.00005, :57 --epochs 10
        "2.7B": {"lr": 5e-5, "epochs": 10},  # opt/sft/sft_2.7B.sh (sft_1.3B.sh but the checkpoint name)
        "6.7B": {"lr": 1e-5, "epochs": 10},  # opt/sft/sft_6.7B.sh LR=0.00001 (batch 8 x DP 4 = 32)
        "13B": {"lr": 1e-5, "epochs": 10},  # opt/sft/sft_13B.sh LR=0.00001 (batch 2 x GA 4 x DP 4 = 32)
    },
}


# The hop settings a paper-scale run can take (`--preset NAME` on plan/run/reproduce/show), as MiniLLMConfig values
# over its defaults, which are the MiniLLM paper's. `authors` is paper scale's default (`reproduce_table1..4`).
PAPER_PRESETS = {
    # The seed paper's authors' runs (GAEUNYIM/LMOps-TA-Distillation at 013aff3, MiniLLM/scripts/gpt2/ours/
    # ours_train_gpt2_760M_to_340M.sh and ours_train_opt_2.7B_to_1.3B.sh): 4 GPUs x --batch-size 2 x
    # --gradient-accumulation-steps 2 = global batch 16, so 256 rollouts x 4 PPO epochs / 16 = 64 steps per phase;
    # the reference whitens per micro-step over 2 rollouts x 4 ranks = 8; --save-interval 500 (with
    # --eval-interval 100), so a run could only pick among the models saved every 500 steps and the last one.
    # Everything else is MiniLLMConfig's default there too (lr 5e-6, warmup 100, 5000 steps, --dev-num 1000, kd 0.5).
    "authors": dict(batch_size=16, whiten_group_size=8, select_interval=500),
    # MiniLLM's paper (App. B.1, ref §2.3): global batch 64, 256 rollouts per phase, 4 PPO epochs = 16 steps per
    # phase, whitening over the mini-batch, the best of the validations every 100 steps: MiniLLMConfig's defaults.
    "minillm": {},
}
# HF `evaluate`'s perplexity metric scores with a model it is given (model_id); the authors passed 'opt', a local
# directory not in their repository, so their scorer is unknown. Ours: each family's smallest pretrained model.
PAPER_TEXT_SCORER = {"gpt2": "openai-community/gpt2", "opt": "facebook/opt-1.3b"}


def _built(arch: Arch, dims: dict[str, tuple[int, int, int, float]]) -> dict[str, ModelSpec]:
    return {
        s: ModelSpec(arch=arch, size=s, n_layer=L, n_embd=d, n_head=h, sft_lr=lr) for s, (L, d, h, lr) in dims.items()
    }


SCALES: MappingProxyType[str, Scale] = MappingProxyType(
    {
        "paper": Scale(
            name="paper",
            description="the paper's models: public MiniLLM checkpoints from the Hugging Face Hub, dolly-15k, "
            "5000 MiniLLM steps per hop (GPUs needed; see README 'Hardware')",
            models=_paper_models(),
            data="dolly",
            sft_by_size=_PAPER_SFT,
            minillm=PAPER_PRESETS["authors"],
            presets=PAPER_PRESETS,
            default_preset="authors",
            text_scorer=PAPER_TEXT_SCORER,
        ),
        "small": Scale(
            name="small",
            description="the whole paper on a laptop CPU: tiny models of the same architectures (parameter ratios "
            "close to the real ones), the project's synthetic Dolly-format data, short schedules",
            models={
                # (n_layer, n_embd, n_head, SFT lr): all 2 layers deep and ordered by width, because depth ordered
                # the sizes the wrong way at this budget; lr = c / n_embd (muP-style, c = 0.4 GPT-2, 0.3 OPT) so
                # the widest models are not the worst-tuned. Parameter ratios close to the real ones (GPT-2
                # 11.3 : 5.7 : 2.7 : 1, OPT 9.7 : 5.1 : 2.1 : 1). Measurements: paper_tables/small/calibration.md.
                "gpt2": _built(
                    "gpt2",
                    {
                        "1.5B": (2, 192, 6, 2e-3),
                        "760M": (2, 128, 4, 3e-3),
                        "340M": (2, 80, 4, 5e-3),
                        "120M": (2, 40, 2, 1e-2),
                    },
                ),
                "opt": _built(
                    "opt",
                    {
                        "13B": (2, 176, 4, 1.7e-3),
                        "6.7B": (2, 120, 4, 2.5e-3),
                        "2.7B": (2, 68, 4, 4.4e-3),
                        "1.3B": (2, 40, 2, 7.5e-3),
                    },
                ),
            },
            data="synthetic",
            synthetic_records={"train": 8000, "valid": 500, "test": 500, "pt": 2000},
            # Dolly-like answers of ~25 tokens (10-50) instead of ~5: with bare answers a hop lowered the student's
            # reverse KL but moved no student's sampled ROUGE-L significantly; with sentences the one-step hops
            # raise it (paper_tables/small/calibration.md, runs 0-4). Prompts (template included) are <= 128
            # tokens; the few answers over 48 tokens lose their last tokens to max_new_tokens.
            synthetic_answers="sentences",
            sft=dict(
                # from-scratch models first learn the language (200 LM steps on the synthetic PT corpus), as GPT-2
                # and OPT did: without it no size learns to answer and the sizes are not ordered (README "Small scale")
                pretrain_steps=200,
                total_steps=800,
                # a short warmup lets these from-scratch models take learning rates 2-3x the reference's 1e-3 range
                warmup_steps=50,
                batch_size=16,
                eval_interval=200,
                val_examples=200,
                max_length=176,
                max_prompt_length=128,
                precision="fp32",
                checkpoint_interval=250,
                # off at this scale: 2-3 epochs from scratch are far from overfitting; dropout only slows learning
                dropout=False,
            ),
            minillm=dict(
                # 2048 distinct rollouts per hop (4 phases of 512, batch 64, 4 PPO epochs: 128 steps): 2048 is the
                # fewest with which every hop lowers MiniLLM's reverse KL at this scale (hop-budget.md); 128 steps at
                # a tenth of the student's SFT lr (`minillm_lr_per_sft_lr`) is the update size that moves the
                # students' ROUGE-L, where 32 steps at 1e-4 left every one within noise (calibration.md, runs 0-1)
                total_steps=128,
                rollouts_per_phase=512,
                batch_size=64,
                micro_batch_size=32,  # memory/speed only: the same numbers, a CPU phase ~2x faster than 256 at once
                warmup_steps=8,
                eval_interval=64,
                val_examples=64,
                max_prompt_length=128,
                generation={"max_new_tokens": 48},
                pt_seq_length=128,
                precision="fp32",
                checkpoint_interval=64,
                log_student_sample=False,
                # fp32 here, so the decode loop's log-probs equal the reference's rescoring forward up to float
                # summation order (config.MiniLLMConfig.rollout_logprobs; measured 9e-7 relative on a whole phase)
                # and the rollouts cost one student and one teacher forward less.
                rollout_logprobs="decode",
                # no PT loss: SFT makes these models forget the PT corpus, so the term would re-train language
                # modelling instead of preserving it (it raised the reverse KL ~25 %); on at paper scale (ref §4.2)
                pt_coef=0.0,
                # whiten_include_padding stays True, the reference's quirk: with sentence answers about half of the
                # 48 response columns are padding (~90 % with bare answers, where valid-only whitening did not help)
            ),
            # a hop's lr = its student's SFT lr / 10 (3e-4 for GPT-2 760M, 1e-3 for 120M): the SFT lrs follow width
            # (muP-style) and so does the hop's; MiniLLM's own defaults have the same ratio (5e-6 against 5e-5)
            minillm_lr_per_sft_lr=0.1,
            evaluation=dict(max_prompt_length=128, generation={"max_new_tokens": 48}, batch_size=50, precision="fp32"),
            why="CPU budget: `nox -s smoke` runs all 22 entries (8 SFT, 14 hops, 22 evaluations) in <= 45 min on 2 "
            "cores (34 min measured); README 'Small scale' has what it shows, calibration.md why these settings.",
        ),
        "tiny": Scale(
            name="tiny",
            description="seconds per stage, for tests and CI: 1-2 layer models, a few hundred records",
            models={
                "gpt2": _built(
                    "gpt2",
                    {
                        "1.5B": (2, 48, 2, 3e-3),
                        "760M": (2, 32, 2, 3e-3),
                        "340M": (1, 32, 2, 3e-3),
                        "120M": (1, 16, 2, 3e-3),
                    },
                ),
                "opt": _built(
                    "opt",
                    {
                        "13B": (2, 48, 2, 3e-3),
                        "6.7B": (2, 32, 2, 3e-3),
                        "2.7B": (1, 32, 2, 3e-3),
                        "1.3B": (1, 16, 2, 3e-3),
                    },
                ),
            },
            data="synthetic",
            synthetic_records={"train": 400, "valid": 40, "test": 40, "pt": 100},
            sft=dict(
                total_steps=40,
                batch_size=8,
                eval_interval=20,
                val_examples=20,
                max_length=160,
                max_prompt_length=128,
                precision="fp32",
                checkpoint_interval=20,
            ),
            minillm=dict(
                total_steps=8,
                rollouts_per_phase=16,
                batch_size=8,
                lr=1e-3,
                warmup_steps=2,
                eval_interval=4,
                val_examples=16,
                max_prompt_length=128,
                generation={"max_new_tokens": 32},
                pt_seq_length=64,
                precision="fp32",
                checkpoint_interval=8,
                log_student_sample=False,
            ),
            evaluation=dict(
                seeds=(10, 20),
                max_prompt_length=128,
                generation={"max_new_tokens": 32},
                num_examples=20,
                batch_size=20,
                precision="fp32",
            ),
            why="CI: a two-hop chain trains and evaluates in well under a minute.",
        ),
    }
)


def scale(name: str) -> Scale:
    """The scale called `name`; an unknown name fails with the closest one."""
    if name not in SCALES:
        hint = difflib.get_close_matches(name, list(SCALES), n=1)
        raise RegistryError(
            f"unknown scale {name!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f"; scales: {', '.join(SCALES)}"
        )
    return SCALES[name]


def validate_all() -> str:
    """Resolve every entry at every scale (`python -m benchmark validate`): each key parses and each model of each
    path has a buildable config. Returns the one-line count; a bad entry raises with its key."""
    for sc in SCALES.values():
        for e in ENTRIES.values():
            parse_key(e.key)
            for size in e.path:
                spec = sc.model(e.family, size)
                if not spec.from_hub:
                    spec.model_config(vocab_size=100, n_positions=64, tokenizer_ids={"bos": 0, "eos": 0, "pad": 0})
    n = len(ENTRIES) * len(SCALES)
    return f"ok: {len(ENTRIES)} entries x {len(SCALES)} scales = {n} resolved"


def describe_entry(e, sc: Scale) -> str:
    """`python -m benchmark show KEY --scale S`: the entry, its published numbers and each model at the scale."""
    published = e.published
    lines = [
        f"{e.key}  ({e.label}; Tables {', '.join(map(str, e.tables))}"
        + (f"; Figure {', '.join(map(str, e.figures))})" if e.figures else ")"),
        f"published: ROUGE-L {number_str(published.rouge_l)} ({published.rouge_l_source}), "
        f"perplexity {number_str(published.perplexity)} ({published.perplexity_source})",
    ]
    if e.reference:
        lines.append(f"reference (not checked): ROUGE-L {number_str(e.reference.rouge_l)} ({e.reference.source})")
    lines.append(f"scale {sc.name}: {sc.description}")
    lines += [f"  {role:<8} {size:<6} {sc.model(e.family, size).describe()}" for role, size in e.roles]
    return "\n".join(lines)
