"""benchmark.evaluate: the ref §5 protocol on fixed strings and tiny random models.

OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_evaluate.py -q     # ~15 s on one core
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer

from benchmark import engine, evaluate, results, text_perplexity
from benchmark.config import EvalConfig
from benchmark.evaluate import (
    EvaluationError,
    exact_match,
    generate_responses,
    perplexity_gold,
    perplexity_gold_token,
    perplexity_samples,
    postprocess,
    rouge_l,
)


@dataclass
class Ex:
    """Example-like record (the fields of benchmark.data.Example that evaluation reads)."""

    prompt: str
    output: str
    prompt_ids: list[int]
    response_ids: list[int]  # EOS appended
    category: str = "open_qa"


PAIRS = [  # (prompt, gold output)
    ("### Instruction:\nwhat is the cat?\n\n### Response:\n", "The cat runs to the river bank."),
    ("list a dog", "A dog."),
    ("Explain knowledge distillation step by step to a small student model.", "A teacher model gives answers."),
    ("why", "Because the data is large and the model is small, the student learns from the teacher."),
    ("write a question", "What is a language model?"),
]


def _examples(tok, pairs=PAIRS) -> list[Ex]:
    return [Ex(p, o, tok.encode(p), tok.encode(o) + [tok.eos_token_id]) for p, o in pairs]


def _cfg(**kw) -> EvalConfig:
    gen = dataclasses.replace(EvalConfig().generation, max_new_tokens=kw.pop("max_new_tokens", 12))
    return EvalConfig(max_prompt_length=kw.pop("max_prompt_length", 32), generation=gen, **kw)


# ----------------------------------------------------------------------------------------------------------------
# ROUGE-L, exact match, post-processing
# ----------------------------------------------------------------------------------------------------------------

ROUGE_CASES = [
    ("the cats are running", "the cat runs"),  # Porter stemming: cats -> cat, running/runs -> run
    ("Hello, world!!! It's... fine", "hello world it s fine"),  # punctuation becomes spaces
    ("", "a non-empty reference"),  # empty prediction scores 0
    ("日本語のテキストです", "日本語のテキストです"),  # non-ASCII letters vanish: scores as empty (0)
    ("café au lait", "cafe au lait"),  # é vanishes: "caf" vs "cafe"
    ("a model answers the question", "the question is answered by a model"),
]


def _reference_way(preds, refs) -> float:
    """rouge_metric.py (ref §5.1): RougeScorer(['rougeL'], use_stemmer=True), score(target=gold, prediction=pred)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    total = 0.0
    for p, r in zip(preds, refs):
        rs = [r] if isinstance(r, str) else r
        total += max(scorer.score(target=g, prediction=p)["rougeL"].fmeasure for g in rs)
    return 100 * total / len(preds)


def test_rouge_l_matches_rouge_score_called_the_reference_way():
    preds, refs = zip(*ROUGE_CASES)
    assert rouge_l(list(preds), list(refs)) == pytest.approx(_reference_way(preds, refs), abs=1e-9)
    assert rouge_l(["the cats are running"], ["the cat runs"]) == pytest.approx(100 * 6 / 7)  # P=3/4, R=3/3
    assert rouge_l(["The cat runs."], ["the cat running"]) == pytest.approx(100.0)
    assert rouge_l([""], ["anything"]) == 0.0
    assert rouge_l(["日本語のテキストです"], ["日本語のテキストです"]) == 0.0


def test_rouge_l_multiple_references_take_the_max():
    refs = [["a dog barks", "the cat runs"], ["zzz"]]
    assert rouge_l(["the cat runs", "zzz"], refs) == pytest.approx(100.0)
    assert rouge_l(["the cat runs", "zzz"], refs) == pytest.approx(_reference_way(["the cat runs", "zzz"], refs))


def test_length_mismatch_and_empty_input_raise():
    # The reference truncates both lists to the shorter one silently (ref §5.1); we refuse.
    with pytest.raises(EvaluationError, match="2 predictions for 3 references"):
        rouge_l(["a", "b"], ["a", "b", "c"])
    with pytest.raises(EvaluationError, match="2 predictions for 1 references"):
        exact_match(["a", "b"], ["a"])
    with pytest.raises(EvaluationError, match="empty"):
        rouge_l([], [])


def test_exact_match_squad_normalisation_keeps_articles():
    assert exact_match(["The  Cat!", "a dog", "x"], ["the cat", "dog", ["y", "X."]]) == pytest.approx(200 / 3)
    assert exact_match(["the answer"], ["answer"]) == 0.0  # articles are NOT removed, as in the reference


def test_postprocess():
    assert postprocess("  an answer<|endoftext|> junk", "<|endoftext|>") == "an answer"
    assert postprocess("\n answer \n", "<|endoftext|>") == "answer"


# ----------------------------------------------------------------------------------------------------------------
# Perplexity by hand: one unpadded forward per example, explicit loop over tokens
# ----------------------------------------------------------------------------------------------------------------


def _nll_by_hand(model, prompt: list[int], response: list[int]) -> tuple[float, int]:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    total = 0.0
    for j, tok in enumerate(response):
        total -= float(logp[len(prompt) + j - 1, tok])
    return total, len(response)


@pytest.mark.parametrize("family", ["tiny_gpt2", "tiny_opt"])
def test_gold_perplexities_by_hand(family, request, tiny_tokenizer):
    model, eos = request.getfixturevalue(family), tiny_tokenizer.eos_token_id
    exs = _examples(tiny_tokenizer)
    per = [_nll_by_hand(model, ex.prompt_ids, ex.response_ids[:-1]) for ex in exs]  # final EOS not scored
    by_example = math.exp(sum(s / n for s, n in per) / len(per))
    by_token = math.exp(sum(s for s, _ in per) / sum(n for _, n in per))
    kw = dict(eos_token_id=eos, batch_size=3)  # batches of 3 force left padding
    assert perplexity_gold(model, exs, **kw) == pytest.approx(by_example, rel=1e-5)
    assert perplexity_gold_token(model, exs, **kw) == pytest.approx(by_token, rel=1e-5)
    assert by_example != pytest.approx(by_token, rel=1e-4)  # the two definitions differ on unequal lengths
    # Prompts keep their first max_prompt_length tokens; responses their first max_response_length.
    per = [_nll_by_hand(model, ex.prompt_ids[:4], ex.response_ids[:-1][:3]) for ex in exs]
    expect = math.exp(sum(s / n for s, n in per) / len(per))
    got = perplexity_gold(model, exs, eos_token_id=eos, max_prompt_length=4, max_response_length=3)
    assert got == pytest.approx(expect, rel=1e-5)


def test_perplexity_samples_by_hand(tiny_opt, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    exs = _examples(tiny_tokenizer)
    responses = [tiny_tokenizer.encode(t) for t in ["the cat", "a model answers", "", "why not", "data data data"]]
    responses[1] = responses[1] + [eos]  # an EOS is never scored
    per = [
        _nll_by_hand(tiny_opt, ex.prompt_ids, [t for t in r if t != eos])
        for ex, r in zip(exs, responses)
        if [t for t in r if t != eos]
    ]
    expect = sum(math.exp(s / n) for s, n in per) / len(per)  # mean of per-example perplexities; empty skipped
    got = perplexity_samples(tiny_opt, exs, responses, eos_token_id=eos, batch_size=2)
    assert got == pytest.approx(expect, rel=1e-5)
    with pytest.raises(EvaluationError, match="responses for"):
        perplexity_samples(tiny_opt, exs, responses[:2], eos_token_id=eos)


# ----------------------------------------------------------------------------------------------------------------
# Sampling protocol
# ----------------------------------------------------------------------------------------------------------------


def test_eval_settings_reach_the_sampler(tiny_gpt2, tiny_tokenizer, monkeypatch):
    """ref §5.1: do_sample, temperature 1.0, top-k 0, top-p 1.0, no_repeat_ngram_size=6; prompts left-padded with
    EOS to max_prompt_length; per-example generators."""
    default = EvalConfig().generation
    assert (
        default.do_sample,
        default.temperature,
        default.top_k,
        default.top_p,
        default.no_repeat_ngram_size,
        default.max_new_tokens,
    ) == (True, 1.0, 0, 1.0, 6, 256)
    from benchmark import sampling

    calls = []
    real = sampling.sample

    def spy(model, ids, mask, settings, **kw):
        calls.append((ids, mask, settings, kw))
        return real(model, ids, mask, settings, **kw)

    monkeypatch.setattr(sampling, "sample", spy)
    cfg = _cfg(batch_size=2)
    generate_responses(
        tiny_gpt2,
        tiny_tokenizer,
        _examples(tiny_tokenizer),
        cfg,
        10,
        eos_token_id=tiny_tokenizer.eos_token_id,
        progress=False,
    )
    assert len(calls) == 3  # 5 examples in batches of 2
    for ids, mask, settings, kw in calls:
        assert settings == dataclasses.replace(default, max_new_tokens=12)
        assert (
            settings.no_repeat_ngram_size,
            settings.top_k,
            settings.top_p,
            settings.temperature,
            settings.do_sample,
        ) == (6, 0, 1.0, 1.0, True)
        # left-padded to max_prompt_length (32) with EOS, minus the columns that are padding in every row: the
        # longest prompt of the batch starts at column 0
        assert ids.shape[1] <= 32 and mask.shape == ids.shape and bool(mask[:, 0].any())
        assert (ids[mask == 0] == tiny_tokenizer.eos_token_id).all()
        assert kw["eos_token_id"] == tiny_tokenizer.eos_token_id and len(kw["generators"]) == ids.shape[0]
        assert kw.get("mix_model") is None


def test_same_seed_same_text_different_seed_different(tiny_gpt2, tiny_tokenizer):
    exs, eos = _examples(tiny_tokenizer), tiny_tokenizer.eos_token_id
    gen = lambda seed: generate_responses(
        tiny_gpt2, tiny_tokenizer, exs, _cfg(), seed, eos_token_id=eos, progress=False
    )
    a = gen(10)
    assert a == gen(10)
    assert a != gen(20)
    assert all(isinstance(t, str) and t == t.strip() for t in a)


@pytest.mark.parametrize("family", ["tiny_gpt2", "tiny_opt"])
def test_batched_equals_unbatched(family, request, tiny_tokenizer):
    model, eos = request.getfixturevalue(family), tiny_tokenizer.eos_token_id
    exs = _examples(tiny_tokenizer)[:4]  # four different prompt lengths
    assert len({len(e.prompt_ids) for e in exs}) == 4
    one = generate_responses(model, tiny_tokenizer, exs, _cfg(batch_size=1), 30, eos_token_id=eos, progress=False)
    four = generate_responses(model, tiny_tokenizer, exs, _cfg(batch_size=4), 30, eos_token_id=eos, progress=False)
    assert one == four


def test_empty_test_set_raises(tiny_gpt2, tiny_tokenizer):
    with pytest.raises(EvaluationError, match="empty"):
        generate_responses(tiny_gpt2, tiny_tokenizer, [], _cfg(), 10, eos_token_id=tiny_tokenizer.eos_token_id)
    with pytest.raises(EvaluationError, match="empty"):
        perplexity_gold(tiny_gpt2, [], eos_token_id=tiny_tokenizer.eos_token_id)


# ----------------------------------------------------------------------------------------------------------------
# evaluate_model end to end, and the CLI
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FakeData:
    """What evaluate_model reads of benchmark.data.PreparedData."""

    examples: list
    tokenizer: object
    family: str = "gpt2"

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def split(self, name: str) -> list:
        assert name == "test"
        return self.examples


@pytest.fixture
def saved_models(tiny_gpt2, tiny_opt, tmp_path):
    tiny_gpt2.save_pretrained(tmp_path / "student")
    tiny_opt.save_pretrained(tmp_path / "teacher")
    return tmp_path / "student", tmp_path / "teacher"


def test_evaluate_model_records(saved_models, tiny_gpt2, tiny_tokenizer, tmp_path):
    student = saved_models[0]
    with torch.random.fork_rng(devices=[]):  # the scorer: another GPT-2 (it must be of the data's family)
        torch.manual_seed(5)
        scorer = type(tiny_gpt2)(tiny_gpt2.config).eval()
    teacher = tmp_path / "scorer"
    scorer.save_pretrained(teacher)
    tiny_tokenizer.save_pretrained(teacher)  # perplexity_text loads the scorer's own tokenizer
    exs = _examples(tiny_tokenizer)
    data = FakeData(exs, tiny_tokenizer)
    cfg = _cfg(seeds=(10, 20), num_examples=4, batch_size=3)
    recs = evaluate.evaluate_model(
        student,
        data,
        cfg,
        scorer=teacher,
        text_scorer=str(teacher),
        entry="gpt2/1.5B>120M",
        scale="tiny",
        stage="s1",
        results_path=tmp_path / "run",
        device="cpu",
        progress=False,
    )
    by = {r["metric"]: r for r in recs}
    assert set(by) == set(results.METRICS)
    eos = tiny_tokenizer.eos_token_id
    texts = [
        generate_responses(tiny_gpt2, tiny_tokenizer, exs[:4], cfg, s, eos_token_id=eos, progress=False)
        for s in (10, 20)
    ]
    refs = [e.output for e in exs[:4]]
    assert by["rouge_l"]["values"] == pytest.approx([rouge_l(t, refs) for t in texts])
    assert by["rouge_l"]["seeds"] == [10, 20] and by["rouge_l"]["n_examples"] == 4
    gold = perplexity_gold(tiny_gpt2, exs[:4], eos_token_id=eos, max_prompt_length=32, max_response_length=12)
    assert by["perplexity_gold"]["values"] == pytest.approx([gold], rel=1e-5)
    assert by["perplexity_gold"]["seeds"] is None and by["perplexity_gold"]["std"] == 0.0
    ids = [evaluate._sample_ids(tiny_gpt2, exs[:4], cfg, s, eos_token_id=eos, progress=False) for s in (10, 20)]
    samples = [perplexity_samples(scorer, exs[:4], i, eos_token_id=eos, max_prompt_length=32) for i in ids]
    assert by["perplexity_samples"]["values"] == pytest.approx(samples, rel=1e-5)
    assert by["perplexity_samples"]["scorer"]["path"] == str(teacher.resolve())
    decoded = [
        [postprocess(tiny_tokenizer.decode(r, skip_special_tokens=True), tiny_tokenizer.eos_token) for r in i]
        for i in ids
    ]
    text = [text_perplexity.mean_perplexity(text_perplexity.text_nll(scorer, tiny_tokenizer, t)) for t in decoded]
    assert by["perplexity_text"]["values"] == pytest.approx(text, rel=1e-5)
    assert by["perplexity_text"]["scorer"]["path"] == str(teacher.resolve())
    assert by["rouge_l"]["model"]["sha256"] and by["rouge_l"]["settings"]["generation"]["no_repeat_ngram_size"] == 6
    df = results.read(tmp_path / "run")
    assert len(df) == 6 and set(df["entry"]) == {"gpt2/1.5B>120M"} and set(df["stage"]) == {"s1"}


def test_samples_reproduce_every_record(saved_models, tiny_gpt2, tiny_tokenizer, tmp_path, monkeypatch):
    """samples.jsonl: one line per (seed, example) with the fields of results.SAMPLE_FIELDS, from which every recorded
    value is recomputed, with the code's edge cases: an empty sampled response (no token to score) and an empty gold
    response are skipped by the example-mean perplexities."""
    import pandas as pd

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        scorer = type(tiny_gpt2)(tiny_gpt2.config).eval()
    scorer.save_pretrained(tmp_path / "scorer")
    tiny_tokenizer.save_pretrained(tmp_path / "scorer")
    eos = tiny_tokenizer.eos_token_id
    exs = _examples(tiny_tokenizer) + [Ex("say nothing", "", tiny_tokenizer.encode("say nothing"), [eos])]
    real = evaluate._sample_ids

    def second_response_empty(*args, **kwargs):
        ids = real(*args, **kwargs)
        ids[1] = []
        return ids

    monkeypatch.setattr(evaluate, "_sample_ids", second_response_empty)
    cfg = _cfg(seeds=(10, 20), batch_size=4)
    path = tmp_path / "out" / "samples.jsonl"
    recs = evaluate.evaluate_model(
        saved_models[0],
        FakeData(exs, tiny_tokenizer),
        cfg,
        scorer=tmp_path / "scorer",
        text_scorer=str(tmp_path / "scorer"),
        entry="gpt2/1.5B>120M",
        stage="s1",
        samples_path=path,
        device="cpu",
        progress=False,
    )
    by = {r["metric"]: r["values"] for r in recs}
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [tuple(line) for line in lines] == [results.SAMPLE_FIELDS] * 12
    assert [(line["seed"], line["example"]) for line in lines] == [(s, i) for s in (10, 20) for i in range(6)]
    first = lines[0]
    assert (first["entry"], first["stage"], first["prompt"], first["reference"]) == (
        "gpt2/1.5B>120M",
        "s1",
        exs[0].prompt,
        exs[0].output,
    )
    assert isinstance(first["prediction"], str) and first["sample_tokens"] > 0 and first["gold_tokens"] > 0
    empty = lines[1]
    assert (empty["prediction"], empty["rouge_l"], empty["sample_nll"], empty["sample_tokens"]) == ("", 0.0, 0.0, 0)
    assert (empty["text_nll"], empty["text_tokens"]) == (0.0, 0)
    assert (lines[5]["gold_nll"], lines[5]["gold_tokens"]) == (0.0, 0)  # an empty gold response
    df = pd.DataFrame(lines)
    for k, seed in enumerate(cfg.seeds):
        one = df[df["seed"] == seed]
        assert one["rouge_l"].mean() == pytest.approx(by["rouge_l"][k], rel=1e-12, abs=1e-12)
        assert one["exact_match"].mean() == pytest.approx(by["exact_match"][k], rel=1e-12, abs=1e-12)
        scored = one[one["sample_tokens"] > 0]
        assert 1 not in set(scored["example"]) and len(scored) >= 2
        ppl = (scored["sample_nll"] / scored["sample_tokens"]).map(math.exp).mean()
        assert ppl == pytest.approx(by["perplexity_samples"][k], rel=1e-12)
        texts = one[one["text_tokens"] > 0]
        assert 1 not in set(texts["example"])  # the empty response has no text token either
        ppl_text = (texts["text_nll"] / texts["text_tokens"]).map(math.exp).mean()
        assert ppl_text == pytest.approx(by["perplexity_text"][k], rel=1e-12)
    gold = df[df["seed"] == 10]
    assert (
        gold[["gold_nll", "gold_tokens"]].values.tolist()
        == df[df["seed"] == 20][["gold_nll", "gold_tokens"]].values.tolist()
    )
    scored = gold[gold["gold_tokens"] > 0]
    assert math.exp((scored["gold_nll"] / scored["gold_tokens"]).mean()) == pytest.approx(
        by["perplexity_gold"][0], rel=1e-12
    )
    assert math.exp(gold["gold_nll"].sum() / gold["gold_tokens"].sum()) == pytest.approx(
        by["perplexity_gold_token"][0], rel=1e-12
    )


def test_evaluate_empty_split_raises(saved_models, tiny_tokenizer):
    with pytest.raises(EvaluationError, match="empty"):
        evaluate.evaluate_model(saved_models[0], FakeData([], tiny_tokenizer), _cfg(), device="cpu", progress=False)


def test_cli(saved_models, tiny_tokenizer, tmp_path, monkeypatch, capsys):
    """`python -m benchmark evaluate MODEL --data DIR ...` with stand-ins for the prepared data and the protocol."""
    from benchmark import config, data
    from benchmark.__main__ import main

    monkeypatch.setattr(data, "load_prepared", lambda path: FakeData(_examples(tiny_tokenizer), tiny_tokenizer))
    monkeypatch.setattr(config, "EvalConfig", lambda: _cfg())
    code = main(
        [
            "evaluate",
            str(saved_models[0]),
            "--data",
            "x",
            "--seeds",
            "10,20",
            "--num-examples",
            "3",
            "--batch-size",
            "2",
            "--results",
            str(tmp_path / "r.jsonl"),
            "--samples",
            str(tmp_path / "samples.jsonl"),
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "rouge_l" in out and "perplexity_gold_token" in out and "appended 4 records" in out
    assert f"wrote 2 x 3 per-example samples to {tmp_path / 'samples.jsonl'}" in out
    lines = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and {(line["sample_nll"], line["sample_tokens"]) for line in lines} == {(None, None)}
    df = results.read(tmp_path / "r.jsonl")
    assert list(df[df.metric == "rouge_l"]["seeds"].iloc[0]) == [10, 20]
    assert int(df["n_examples"].iloc[0]) == 3


# ----------------------------------------------------------------------------------------------------------------
# Errors before any generation
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_generation(monkeypatch):
    """Fails the test if evaluation reaches generation: the checks must come first."""

    def boom(*args, **kwargs):
        raise AssertionError("generation ran before the error")

    monkeypatch.setattr(evaluate, "_sample_ids", boom)


def test_missing_local_model_directory_is_named(tmp_path, tiny_tokenizer, monkeypatch, no_generation):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    data = FakeData(_examples(tiny_tokenizer), tiny_tokenizer)
    for path in (tmp_path / "nowhere" / "model", "runs/model", "./model", "a/b/c"):
        with pytest.raises(EvaluationError) as err:
            evaluate.evaluate_model(path, data, _cfg(), device="cpu", progress=False)
        assert str(err.value).startswith(f"cannot load model: model directory {path} does not exist; ")
        assert "python -m benchmark train ... --out OUT` (OUT/model)" in str(err.value)
        assert "Repo id" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="empty holds no config.json"):
        evaluate.evaluate_model(tmp_path / "empty", data, _cfg(), device="cpu", progress=False)
    # hub ids are left to from_pretrained (offline here: its error becomes one sentence too)
    assert engine.model_path_problem("openai-community/gpt2") is None
    assert engine.model_path_problem("gpt2") is None
    with pytest.raises(EvaluationError, match=r"^cannot load model 'nobody-here/no-model' \("):
        evaluate.evaluate_model("nobody-here/no-model", data, _cfg(), device="cpu", progress=False)


def test_model_of_another_family_is_refused(saved_models, tiny_tokenizer, no_generation):
    data = FakeData(_examples(tiny_tokenizer), tiny_tokenizer, family="gpt2")
    teacher = saved_models[1]  # an OPT model
    with pytest.raises(EvaluationError) as err:
        evaluate.evaluate_model(teacher, data, _cfg(), device="cpu", progress=False)
    assert str(err.value) == (
        f"model {teacher} is of family opt but the data was prepared for gpt2 (their token ids differ): evaluate it "
        "on data prepared with --family opt"
    )
    with pytest.raises(EvaluationError, match=r"^scorer .*teacher is of family opt .*score with a gpt2 model"):
        evaluate.evaluate_model(saved_models[0], data, _cfg(), scorer=teacher, device="cpu", progress=False)


def test_model_too_short_or_small_vocabulary_is_refused(tiny_gpt2, tiny_tokenizer, tmp_path, no_generation):
    from transformers import GPT2Config, GPT2LMHeadModel

    data = FakeData(_examples(tiny_tokenizer), tiny_tokenizer)
    short = GPT2LMHeadModel(GPT2Config(**(tiny_gpt2.config.to_dict() | {"n_positions": 40})))
    short.save_pretrained(tmp_path / "short")
    with pytest.raises(EvaluationError) as err:  # 32 prompt + 12 new tokens = 44 > 40 positions
        evaluate.evaluate_model(tmp_path / "short", data, _cfg(), device="cpu", progress=False)
    need = "needs 44 (max_prompt_length 32 + max_new_tokens 12)"
    assert str(err.value).startswith(f"model {tmp_path / 'short'} has 40 positions but evaluation {need}")
    evaluate.check_model_fits(short, "m", data, _cfg(max_new_tokens=8))  # 32 + 8 fits
    small = GPT2LMHeadModel(GPT2Config(**(tiny_gpt2.config.to_dict() | {"vocab_size": len(tiny_tokenizer) - 1})))
    small.save_pretrained(tmp_path / "small")
    n = len(tiny_tokenizer)
    vocab = f"has a vocabulary of {n - 1} tokens but the tokenizer of the data has {n}"
    with pytest.raises(EvaluationError, match=vocab):
        evaluate.evaluate_model(tmp_path / "small", data, _cfg(), device="cpu", progress=False)


def test_cli_scale_has_choices(capsys):
    from benchmark import scales
    from benchmark.__main__ import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "m", "--data", "d", "--scale", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err
    (action,) = [a for a in parser._subparsers._group_actions[0].choices["evaluate"]._actions if a.dest == "scale"]
    assert action.choices == list(scales.SCALES)
