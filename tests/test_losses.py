"""benchmark.losses against naive loops, closed forms and numpy. Fast (no models)."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark import losses as L


def _prefix_mask(lengths, width):
    return torch.tensor([[1] * n + [0] * (width - n) for n in lengths], dtype=torch.long)


# --------------------------------------------------------------------------- required settings


def test_reference_valued_settings_are_required_keyword_arguments():
    """The reward scaling and clip, the whitening switch and the PPO clip have reference values (ref §1.3) that
    every caller states: no default exists that could silently be wrong (the trainer passes its MiniLLMConfig
    fields; tests/test_config.py pins those)."""
    required = {
        L.rewards: ("reward_scaling", "cliprange_reward"),
        L.whiten: ("include_padding",),
        L.ppo_clip_loss: ("clip",),
    }
    for fn, names in required.items():
        params = inspect.signature(fn).parameters
        for name in names:
            p = params[name]
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, (fn.__name__, name, p.kind)
            assert p.default is inspect.Parameter.empty, (fn.__name__, name, p.default)
    x, mask = torch.zeros(1, 2), torch.ones(1, 2)
    with pytest.raises(TypeError):
        L.rewards(x, x, mask, 0.5, 100.0)  # positional settings are refused too
    with pytest.raises(TypeError):
        L.ppo_clip_loss(x, x, x + 1, x, mask)


# --------------------------------------------------------------------------- rewards and importance weights


def test_rewards_scale_clip_and_mask():
    log_p = torch.tensor([[-1.0, -2.0, -50.0, -3.0], [-0.5, -80.0, -1.0, -1.0]])
    log_q = torch.tensor([[-2.0, -1.0, -1.0, -7.0], [-0.5, -1.0, -1.0, -1.0]])
    mask = _prefix_mask([3, 4], 4)
    r = L.rewards(log_p, log_q, mask, reward_scaling=0.5, cliprange_reward=100.0)
    expected = torch.tensor([[2.0, -2.0, -98.0, 0.0], [0.0, -100.0, 0.0, 0.0]])  # -158 clipped to -100
    torch.testing.assert_close(r, expected)
    clipped = L.rewards(log_p, log_q, mask, reward_scaling=0.5, cliprange_reward=1.0)
    torch.testing.assert_close(clipped, expected.clamp(-1, 1))


def test_importance_weights_direct_formula():
    g = torch.Generator().manual_seed(0)
    log_q = -torch.rand(3, 7, generator=g, dtype=torch.float64) * 6
    log_p = -torch.rand(3, 7, generator=g, dtype=torch.float64) * 6
    for alpha in (0.2, 0.5, 0.9):
        q, p = log_q.exp(), log_p.exp()
        torch.testing.assert_close(L.importance_weights(log_q, log_p, alpha), q / ((1 - alpha) * q + alpha * p))
    w0 = L.importance_weights(log_q.float(), log_p.float(), 0.0)
    assert w0.dtype == torch.float32 and torch.equal(w0, torch.ones(3, 7))


def test_importance_weights_stable_where_direct_formula_underflows():
    log_q = torch.tensor([-2000.0, -0.1])
    log_p = torch.tensor([-1990.0, -0.1])
    direct = log_q.exp() / (0.8 * log_q.exp() + 0.2 * log_p.exp())
    assert torch.isnan(direct[0])  # 0/0 in float32
    w = L.importance_weights(log_q, log_p, 0.2)
    torch.testing.assert_close(w, torch.tensor([1.0 / (0.8 + 0.2 * math.exp(10.0)), 1.0]))


# --------------------------------------------------------------------------- advantages


def _naive_advantages(r, m, gamma, length_normalization):
    out = []
    for rb, mb in zip(r.tolist(), m.tolist()):
        row = []
        for t in range(len(rb)):
            s = sum(gamma ** (k - t) * rb[k] * mb[k] for k in range(t, len(rb)))
            n = max(sum(mb[k] for k in range(t, len(rb))), 1)
            row.append(s / n if length_normalization else s)
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("length_normalization", [True, False])
def test_advantages_match_naive_double_loop(gamma, length_normalization):
    width = 9
    # EOS at various positions, full row, single token, a row with no valid token, and a mask with a hole.
    mask = torch.cat([_prefix_mask([9, 1, 4, 0, 8], width), torch.tensor([[1, 1, 0, 1, 0, 0, 0, 0, 0]])])
    r = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1)) * 3  # garbage at masked positions too
    got = L.minillm_advantages(r, mask, gamma, length_normalization)
    assert got.dtype == torch.float32 and not got.requires_grad
    torch.testing.assert_close(
        got.double(), _naive_advantages(r.double(), mask, gamma, length_normalization), rtol=1e-5, atol=1e-5
    )
    assert torch.all(got[3] == 0)  # no valid token: zero advantage
    assert torch.all(got[1, 1:] == 0)  # after EOS: zero advantage (n = 1, reward 0)


def test_advantages_length_normalization_counts_t_itself():
    r = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    mask = _prefix_mask([3], 4)
    got = L.minillm_advantages(r, mask, gamma=1.0)
    torch.testing.assert_close(got, torch.tensor([[3 / 3, 2 / 2, 1 / 1, 0.0]]))


# --------------------------------------------------------------------------- whitening


def _values_and_mask():
    g = torch.Generator().manual_seed(2)
    mask = _prefix_mask([6, 2, 5, 1, 4], 6)
    values = (torch.randn(5, 6, generator=g) * 2 + 0.7) * mask  # zeros at padding, as the reference's advantages
    return values, mask


def test_whiten_include_padding_matches_numpy():
    """ref utils.py::whiten (shift_mean=True) over the padded tensor: every element in the biased statistics."""
    values, mask = _values_and_mask()
    values[1, 4] = 5.0  # a non-zero padded element must still count in the statistics
    x = values.double().numpy()
    expected = (x - x.mean()) / np.sqrt(x.var() + 1e-8)
    got = L.whiten(values, mask, include_padding=True)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_whiten_valid_only_matches_numpy():
    values, mask = _values_and_mask()
    values[1, 4] = 5.0  # must be ignored by the statistics
    x = values.double().numpy()
    valid = x[mask.numpy().astype(bool)]
    expected = (x - valid.mean()) / np.sqrt(valid.var() + 1e-8)
    got = L.whiten(values, mask, include_padding=False)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("include_padding", [True, False])
def test_whiten_in_groups_is_whitening_each_group_alone(include_padding):
    """MiniLLMConfig.whiten_group_size: groups of consecutive rows each get their own statistics (the reference's
    per-micro-step all-reduce), computed here by hand per group; one group of every row is plain whitening."""
    g = torch.Generator().manual_seed(3)
    mask = _prefix_mask([6, 2, 5, 1, 4, 3], 6)
    values = (torch.randn(6, 6, generator=g) * 2 + 0.7) * mask
    values[3:] += 4.0  # the second group has another mean, so one set of statistics would not whiten it
    got = L.whiten(values, mask, include_padding=include_padding, group_size=3)
    for rows in (slice(0, 3), slice(3, 6)):
        x, m = values[rows].double().numpy(), mask[rows].numpy().astype(bool)
        counted = x if include_padding else x[m]
        expected = (x - counted.mean()) / np.sqrt(counted.var() + 1e-8)
        np.testing.assert_allclose(got[rows].numpy(), expected, rtol=1e-6, atol=1e-6)
    whole = L.whiten(values, mask, include_padding=include_padding)
    assert torch.equal(L.whiten(values, mask, include_padding=include_padding, group_size=6), whole)
    assert not torch.allclose(got, whole)
    with pytest.raises(ValueError, match="groups of 4"):
        L.whiten(values, mask, include_padding=include_padding, group_size=4)


# --------------------------------------------------------------------------- PPO clipped surrogate


def _ppo_case():
    # token: 0 A>0 rho above band | 1 A<0 rho below band | 2 inside band | 3 A>0 rho below band (unclipped wins)
    #        4 A<0 rho above band (unclipped wins) | 5 A>0 rho above band via w only | 6 masked
    ratio_new_old = torch.tensor([[1.5, 0.5, 1.1, 0.5, 1.5, 1.0, 3.0]], dtype=torch.float64)
    weights = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.3, 1.0]], dtype=torch.float64)
    adv = torch.tensor([[2.0, -1.0, 2.0, 3.0, -2.0, 1.0, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    old = torch.full_like(adv, -1.0)
    logprobs = (old + ratio_new_old.log()).requires_grad_(True)
    return logprobs, old, weights, adv, mask


def test_ppo_clip_loss_branches_and_gradient_zero_where_clip_binds():
    logprobs, old, weights, adv, mask = _ppo_case()
    loss = L.ppo_clip_loss(logprobs, old, weights, adv, mask, clip=0.2)
    per_token = [-2.0 * 1.2, 1.0 * 0.8, -2.0 * 1.1, -3.0 * 0.5, 2.0 * 1.5, -1.0 * 1.2]
    assert loss.item() == pytest.approx(sum(per_token) / 6, rel=1e-12)
    (grad,) = torch.autograd.grad(loss, logprobs)
    # d/d logprob of -A rho is -A rho for the unclipped tokens 2, 3, 4; clipped (0, 1, 5) and masked (6) get 0.
    expected = torch.tensor([[0.0, 0.0, -2.0 * 1.1, -3.0 * 0.5, 2.0 * 1.5, 0.0, 0.0]], dtype=torch.float64) / 6
    torch.testing.assert_close(grad, expected)


def test_ppo_clip_loss_log_ratio_masked_before_exp():
    # ref `_pg_loss`: exp((new - old) * mask). Garbage log-probs at padding (here exp would overflow to inf and
    # inf * 0 = NaN) must not reach the loss or its gradient.
    logprobs, old, weights, adv, mask = _ppo_case()
    garbage = logprobs.detach().clone()
    garbage[0, 6] = 1000.0
    garbage.requires_grad_(True)
    loss = L.ppo_clip_loss(garbage, old, weights, adv, mask, clip=0.2)
    (grad,) = torch.autograd.grad(loss, garbage)
    assert loss.item() == pytest.approx(L.ppo_clip_loss(logprobs, old, weights, adv, mask, clip=0.2).item(), rel=1e-12)
    assert torch.isfinite(grad).all()


def test_ppo_clip_loss_default_is_micro_batch_token_mean():
    logprobs, old, weights, adv, mask = _ppo_case()
    assert L.ppo_clip_loss(logprobs, old, weights, adv, mask, clip=0.2, num_tokens=3).item() == pytest.approx(
        L.ppo_clip_loss(logprobs, old, weights, adv, mask, clip=0.2).item() * 6 / 3
    )


# --------------------------------------------------------------------------- single-step KL


def _logits(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


def test_single_step_kl_matches_double_sum_loop_and_kl_div():
    s, t = _logits(2, 3, 5, seed=3), _logits(2, 3, 5, seed=4)
    mask = _prefix_mask([3, 2], 3)
    total = 0.0
    for b in range(2):
        for i in range(3):
            if mask[b, i]:
                zq = sum(math.exp(x) for x in s[b, i].tolist())
                zp = sum(math.exp(x) for x in t[b, i].tolist())
                for v in range(5):
                    q, p = math.exp(s[b, i, v].item()) / zq, math.exp(t[b, i, v].item()) / zp
                    total += q * (math.log(q) - math.log(p))
    got = L.single_step_kl(s, t, mask)
    assert got.item() == pytest.approx(total / 5, rel=1e-10)
    per_pos = F.kl_div(F.log_softmax(t, -1), F.log_softmax(s, -1), reduction="none", log_target=True).sum(-1)
    assert got.item() == pytest.approx(((per_pos * mask).sum() / mask.sum()).item(), rel=1e-10)
    seq = L.sequence_reverse_kl(s, t, mask)
    assert seq.shape == (2,)
    torch.testing.assert_close(seq, (per_pos * mask).sum(-1))
    assert L.sequence_reverse_kl(s, t, torch.zeros_like(mask))[0].item() == 0.0


def test_single_step_kl_identical_logits_is_zero():
    s = _logits(2, 4, 7, seed=5).float()
    assert abs(L.single_step_kl(s, s.clone(), torch.ones(2, 4)).item()) < 1e-6
    assert L.single_step_kl(s, s.clone(), torch.ones(2, 4)).dtype == torch.float32
    assert L.single_step_kl(s.half(), s.half(), torch.ones(2, 4)).dtype == torch.float32


def test_single_step_kl_gradient_student_only():
    s = _logits(2, 3, 4, seed=6).requires_grad_(True)
    t = _logits(2, 3, 4, seed=7).requires_grad_(True)
    mask = _prefix_mask([3, 1], 3)
    assert torch.autograd.gradcheck(lambda x: L.single_step_kl(x, t, mask), (s,))
    L.single_step_kl(s, t, mask).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_single_step_kl_chunked_same_value_and_gradient():
    s = _logits(2, 5, 6, seed=8).float().requires_grad_(True)
    t = _logits(2, 5, 6, seed=9).float()
    mask = _prefix_mask([5, 3], 5)
    full = L.single_step_kl(s, t, mask)
    (g_full,) = torch.autograd.grad(full, s)
    for chunk in (1, 2, 5, 8):
        part = L.single_step_kl(s, t, mask, chunk_size=chunk)
        (g_part,) = torch.autograd.grad(part, s)
        torch.testing.assert_close(part, full)
        torch.testing.assert_close(g_part, g_full)
    with torch.no_grad():
        torch.testing.assert_close(L.single_step_kl(s, t, mask, chunk_size=2), full.detach())


# --------------------------------------------------------------------------- PT loss


def test_pt_loss_hand_computation():
    s, t = _logits(2, 3, 5, seed=10), _logits(2, 3, 5, seed=11)
    labels = torch.tensor([[4, -100, 0], [-100, 2, 3]])
    ce, soft = [], []
    for b in range(2):
        for i in range(3):
            y = labels[b, i].item()
            if y == -100:
                continue
            zq = sum(math.exp(x) for x in s[b, i].tolist())
            zp = sum(math.exp(x) for x in t[b, i].tolist())
            log_q = [x - math.log(zq) for x in s[b, i].tolist()]
            p = [math.exp(x) / zp for x in t[b, i].tolist()]
            ce.append(-log_q[y])
            soft.append(-sum(pv * lq for pv, lq in zip(p, log_q)))
    ce_mean, soft_mean = sum(ce) / 4, sum(soft) / 4
    assert L.lm_cross_entropy(s, labels).item() == pytest.approx(ce_mean, rel=1e-10)
    assert L.soft_cross_entropy(s, t, labels).item() == pytest.approx(soft_mean, rel=1e-10)
    assert L.pt_loss(s, t, labels).item() == pytest.approx(0.5 * ce_mean + 0.5 * soft_mean, rel=1e-10)
    assert L.pt_loss(s, t, labels, kd_ratio=0.3).item() == pytest.approx(0.7 * ce_mean + 0.3 * soft_mean, rel=1e-10)


def test_pt_loss_teacher_gets_no_gradient():
    s = _logits(2, 3, 5, seed=12).requires_grad_(True)
    t = _logits(2, 3, 5, seed=13).requires_grad_(True)
    L.pt_loss(s, t, torch.tensor([[1, 2, -100], [0, 0, 0]])).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


# ---------------------------------------------------------------- num_tokens: gradient-accumulation invariance


def test_num_tokens_split_halves_sum_to_full_batch_loss():
    g = torch.Generator().manual_seed(14)
    s, t = _logits(4, 6, 5, seed=15), _logits(4, 6, 5, seed=16)
    mask = _prefix_mask([6, 1, 4, 2], 6)  # halves hold 7 and 6 tokens: unequal, so a per-half mean would differ
    n = mask.sum()
    labels = torch.where(mask.bool(), torch.randint(0, 5, (4, 6), generator=g), -100)
    logprobs = -torch.rand(4, 6, generator=g, dtype=torch.float64)
    old = logprobs + 0.3 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(4, 6, generator=g, dtype=torch.float64)
    adv = torch.randn(4, 6, generator=g, dtype=torch.float64)
    halves = (slice(0, 2), slice(2, 4))
    checks = {
        "ppo": lambda i, k: L.ppo_clip_loss(logprobs[i], old[i], weights[i], adv[i], mask[i], clip=0.2, num_tokens=k),
        "kl": lambda i, k: L.single_step_kl(s[i], t[i], mask[i], num_tokens=k),
        "pt": lambda i, k: L.pt_loss(s[i], t[i], labels[i], num_tokens=k),
    }
    for name, fn in checks.items():
        full = fn(slice(None), None)
        split = sum(fn(h, n) for h in halves)
        assert split.item() == pytest.approx(full.item(), rel=1e-12), name
        per_half_mean = sum(fn(h, None) for h in halves) / 2
        assert per_half_mean.item() != pytest.approx(full.item(), rel=1e-6), name  # the invariance is not trivial


# --------------------------------------------------------------------------- token log-probs


def test_token_logprobs_match_log_softmax_gather():
    logits = _logits(2, 4, 9, seed=17).float()
    tokens = torch.randint(0, 9, (2, 4), generator=torch.Generator().manual_seed(18))
    for temperature in (1.0, 0.7):
        expected = F.log_softmax(logits / temperature, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(L.token_logprobs(logits, tokens, temperature), expected)
        for low in (torch.float16, torch.bfloat16):
            x = logits.to(low)
            ref = F.log_softmax(x.float() / temperature, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
            got = L.token_logprobs(x, tokens, temperature)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, ref)


def test_token_logprobs_gradient():
    logits = _logits(2, 3, 6, seed=19).requires_grad_(True)
    tokens = torch.tensor([[0, 5, 2], [1, 1, 3]])
    assert torch.autograd.gradcheck(lambda x: L.token_logprobs(x, tokens, 0.8), (logits,))
