"""LLaDA's Monte Carlo log-likelihood: the masking scheme, the logits it reads (Dream's shift, CFG), agreement
with the exact expectation, and the greedy check."""

from __future__ import annotations

import pytest
import torch

from dlm.eval.likelihood import (exact_elbo, greedy_matches, masked_counts, mc_loglikelihood, request_seed,
                                 target_logprobs, target_masks)


def test_masked_counts_are_stratified_over_1_to_T():
    g = torch.Generator().manual_seed(0)
    for T, b in [(7, 32), (4, 12), (1, 8), (10, 3)]:
        for _ in range(20):
            c = masked_counts(T, b, g)
            assert c.shape == (b,) and int(c.min()) >= 1 and int(c.max()) <= T
            if b >= T:  # a pass covers every masking level
                assert set(c.tolist()) == set(range(1, T + 1))


def test_target_masks_mask_exactly_the_counts():
    g = torch.Generator().manual_seed(1)
    counts = torch.tensor([1, 3, 5, 5, 2])
    m = target_masks(counts, 5, g)
    assert m.sum(1).tolist() == counts.tolist()


def _manual_logits(lm, seq, P):
    """Logits of every target position from one full forward, shifted by hand for Dream."""
    L = seq.shape[1]
    logits = lm.model(seq, torch.arange(L).expand_as(seq)).float()
    if lm.logits_shift:
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # position i reads the logit of i-1
    return logits[:, P:]


@pytest.mark.parametrize("w", [0.0, 1.5])
def test_target_logprobs_read_the_right_positions(tiny, w):
    g = torch.Generator().manual_seed(2)
    P, T = 5, 4
    seq = torch.randint(0, 200, (3, P + T), generator=g)
    seq[:, P + 1] = tiny.ids.mask_id
    got = target_logprobs(tiny, seq, P, w)
    want = _manual_logits(tiny, seq, P)
    if w > 0:
        unc = seq.clone()
        unc[:, :P] = tiny.ids.mask_id
        u = _manual_logits(tiny, unc, P)
        mixed = u + (w + 1) * (want - u)
        want = torch.where(torch.isneginf(want), want, mixed)  # ids outside the vocabulary stay -inf
    torch.testing.assert_close(got, torch.log_softmax(want, dim=-1), atol=1e-4, rtol=1e-4)


def test_estimate_agrees_with_the_exact_expectation(tiny):
    """With mc_batch_size 12 and T = 4, every row's masking level is uniform on 1..4 (no rounding ties), so the
    estimator is unbiased for exact_elbo; 480 samples put it within a fraction of a nat. The bound is about 8
    standard deviations of the estimate (measured spread of the per-pass values), so a false failure is
    practically impossible."""
    prefix, target = [5, 17, 42, 9, 11], [60, 61, 62, 63]
    exact = exact_elbo(tiny, prefix, target)
    passes = [mc_loglikelihood(tiny, prefix, target, mc_num=12, mc_batch_size=12, seed=s) for s in range(40)]
    est = sum(passes) / len(passes)
    sd = torch.tensor(passes).std().item() / len(passes) ** 0.5
    assert abs(est - exact) < max(8 * sd, 1e-3), (est, exact, sd)
    # and one call with mc_num=480 is the same kind of estimate
    one = mc_loglikelihood(tiny, prefix, target, mc_num=480, mc_batch_size=12, seed=123)
    assert abs(one - exact) < max(8 * sd, 1e-3)


def test_estimate_is_reproducible_and_independent_of_order(llada):
    a = mc_loglikelihood(llada, [1, 2, 3], [7, 8], mc_num=8, mc_batch_size=4, seed=3)
    mc_loglikelihood(llada, [9, 9], [4], mc_num=8, mc_batch_size=4, seed=3)  # something else in between
    b = mc_loglikelihood(llada, [1, 2, 3], [7, 8], mc_num=8, mc_batch_size=4, seed=3)
    assert a == b
    assert request_seed(3, [1, 2, 3], [7, 8]) != request_seed(3, [1, 2], [3, 7, 8])


def _llada_greedy(lm, prefix, T):
    """LLaDA's suffix_greedy_prediction written out: from prefix + T masks, per step commit the argmax of the
    most confident masked position."""
    seq = torch.tensor([list(prefix) + [lm.ids.mask_id] * T])
    for _ in range(T):
        masked = seq[0] == lm.ids.mask_id
        logits = lm.model(seq, torch.arange(seq.shape[1]).unsqueeze(0))[0]
        x0 = logits.argmax(-1)
        conf = torch.softmax(logits.float(), -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        conf[~masked] = -1.0
        i = int(conf.argmax())
        seq[0, i] = x0[i]
    return seq[0, len(prefix):].tolist()


def test_greedy_check_follows_llada(llada):
    prefix = [5, 17, 42, 9]
    target = _llada_greedy(llada, prefix, 5)
    assert greedy_matches(llada, prefix, target)
    wrong = list(target)
    wrong[2] = (wrong[2] + 1) % 200
    assert not greedy_matches(llada, prefix, wrong)
