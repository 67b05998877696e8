"""Each scheduler's rule on hand-built logits, where the exact set of commits is known.

Logits are log-probabilities of distributions written down here, so softmax gives back exactly the confidences,
margins, entropies and logit gaps the expectations are computed from.
"""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm.sampling import compute_candidates
from dlm.schedulers import BlockInfo, Decision, Scheduler, StepView

V = 50  # vocabulary of the hand-built distributions


def dist(p1: float, p2: float | None = None, top: int = 7, second: int = 3) -> torch.Tensor:
    """(V,) probabilities: ``p1`` on token ``top``, ``p2`` on ``second`` (default: the rest spread evenly)."""
    p = torch.zeros(V, dtype=torch.float64)
    p[top] = p1
    if p2 is None:
        p[torch.arange(V) != top] = (1 - p1) / (V - 1)
    else:
        p[second] = p2
        rest = (torch.arange(V) != top) & (torch.arange(V) != second)
        p[rest] = max(0.0, 1 - p1 - p2) / (V - 2)
    return p


def logits_of(rows: list[list[torch.Tensor]]) -> torch.Tensor:
    """(B, n, V) float32 log-probabilities of the given (V,) distributions."""
    return torch.stack([torch.stack(r) for r in rows]).log().float()


def make_view(masked: torch.Tensor, block_cols: int | None = None, *, step: int = 0, row_steps: int = 0,
              steps: int = 8, total_steps: int = 32, active: torch.Tensor | None = None,
              block_masks: int | None = None) -> StepView:
    """A view of a region of ``masked.shape[1]`` columns whose first ``block_cols`` are the active block (every
    row at the same step of the same block, starting at canvas position 10). ``block_masks``: the block's masks
    when it started (default: the masks of the block now)."""
    B, n = masked.shape
    w = n if block_cols is None else block_cols
    in_block = torch.zeros(B, n, dtype=torch.bool)
    in_block[:, :w] = True

    def per_row(value: int) -> torch.Tensor:
        return torch.full((B,), value, dtype=torch.long)

    masks = (masked & in_block).sum(1) if block_masks is None else per_row(block_masks)
    block = BlockInfo(index=per_row(0), num_blocks=per_row(1), steps=per_row(steps), masks=masks,
                      total_steps=per_row(total_steps), width=per_row(w), start=per_row(10),
                      canvas_length=per_row(10 + n), answer_start=per_row(10))
    return StepView(masked=masked, in_block=in_block, active=torch.ones(B, dtype=torch.bool) if active is None
                    else active, step=per_row(step), row_steps=per_row(row_steps), block=block,
                    generators=[None] * B)


def run_step(name: str, logits: torch.Tensor, view: StepView, state=None, **kwargs) -> tuple[Decision, object]:
    s = dlm.schedulers.create(name, kwargs)
    cand = compute_candidates(logits, mode=s.sampling, measures=s.measures)
    if state is None:
        state = s.init_state(view.block)
    return s.step(cand, view, state)


def cols(mask: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in mask]


# ------------------------------------------------------------------------------------------------ threshold
def test_threshold_commits_exactly_the_confident_masks():
    confs = [0.95, 0.5, 0.91, 0.89, 0.99, 0.9]
    logits = logits_of([[dist(c) for c in confs]])
    masked = torch.ones(1, 6, dtype=torch.bool)
    d, _ = run_step("threshold", logits, make_view(masked))
    assert cols(d.commit) == [[0, 2, 4]] or cols(d.commit) == [[0, 2, 4, 5]]  # float32 softmax of log(0.9) ~ 0.9
    # a confidence exactly at the threshold counts (>=): use position 5's computed confidence as the threshold
    at = float(compute_candidates(logits, mode="gumbel").confidence[0, 5])
    d, _ = run_step("threshold", logits, make_view(masked), threshold=at)
    assert cols(d.commit) == [[0, 2, 4, 5]]
    assert d.finish is None


def test_threshold_commits_the_argmax_when_none_is_confident_and_skips_unmasked():
    confs = [0.5, 0.3, 0.7, 0.99, 0.6]
    logits = logits_of([[dist(c) for c in confs], [dist(c) for c in confs]])
    masked = torch.tensor([[True, True, True, False, True], [True, True, True, True, True]])
    d, _ = run_step("threshold", logits, make_view(masked))
    assert cols(d.commit) == [[2], [3]]  # row 0: the committed 0.99 is not a candidate; its best mask is 0.7


def test_threshold_only_inside_the_block():
    confs = [0.2, 0.95, 0.4, 0.99, 0.97]  # region of 5 columns, block of 3
    logits = logits_of([[dist(c) for c in confs]])
    d, _ = run_step("threshold", logits, make_view(torch.ones(1, 5, dtype=torch.bool), block_cols=3))
    assert cols(d.commit) == [[1]]


@pytest.mark.parametrize("tau,expected", [(0.0, [0, 1, 2, 3]), (0.6, [0, 2]), (1.0, [2])])
def test_threshold_parameter(tau, expected):
    logits = logits_of([[dist(c) for c in [0.65, 0.2, 0.8, 0.55]]])
    d, _ = run_step("threshold", logits, make_view(torch.ones(1, 4, dtype=torch.bool)), threshold=tau)
    assert cols(d.commit) == [expected]


def test_threshold_tops_up_to_finish_within_the_step_budget():
    # 8 masks, none confident, 2 steps in the budget: ceil(8/2) = 4 now, then ceil(4/1) = 4
    confs = [0.30, 0.35, 0.10, 0.50, 0.20, 0.45, 0.25, 0.40]
    logits = logits_of([[dist(c) for c in confs]])
    masked = torch.ones(1, 8, dtype=torch.bool)
    d, state = run_step("threshold", logits, make_view(masked, steps=2, step=0))
    assert cols(d.commit) == [[1, 3, 5, 7]]
    d2, _ = run_step("threshold", logits, make_view(masked & ~d.commit, steps=2, step=1), state=state)
    assert cols(d2.commit) == [[0, 2, 4, 6]]


# ------------------------------------------------------------------------------------------------ factor
@pytest.mark.parametrize("confs,factor,expected", [
    # sorted c = .99 .9 .8 .7; bounds 1 - 1/(n+1) = (.5) .667 .75 .8 -> .7 fails at n = 4: commit 3
    ([0.8, 0.99, 0.7, 0.9], 1.0, [0, 1, 3]),
    # two masks, the second fails (.5 < .667): only the first (Fast-dLLM's loop would commit both)
    ([0.5, 0.99], 1.0, [1]),
    # none passes beyond the first: at least one
    ([0.4, 0.3, 0.35], 1.0, [0]),
    # a larger factor is more lenient: bounds 1 - 2/(n+1) = (.33) .33 .5 .6
    ([0.8, 0.99, 0.7, 0.9, 0.55], 2.0, [0, 1, 2, 3]),
    # every position confident enough: bounds .667 .75 .8 .833 for n = 2..5
    ([0.999, 0.99, 0.98, 0.97, 0.95], 1.0, [0, 1, 2, 3, 4]),
])
def test_factor_prefix_rule(confs, factor, expected):
    logits = logits_of([[dist(c) for c in confs]])
    d, _ = run_step("factor", logits, make_view(torch.ones(1, len(confs), dtype=torch.bool)), factor=factor)
    assert cols(d.commit) == [expected]


def test_factor_matches_the_rule_written_out():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        confs = (0.3 + 0.7 * torch.rand(12, generator=g, dtype=torch.float64)).tolist()
        masked = torch.rand(1, 12, generator=g) < 0.8
        masked[0, 0] = True
        f = float(0.5 + 2 * torch.rand(1, generator=g))
        logits = logits_of([[dist(c) for c in confs]])
        d, _ = run_step("factor", logits, make_view(masked, steps=12), factor=f)  # budget floor 1
        c = compute_candidates(logits, mode="gumbel").confidence[0].double()
        ranked = sorted((i for i in range(12) if masked[0, i]), key=lambda i: -float(c[i]))
        n = 1
        while n < len(ranked) and (n + 2) * (1 - float(c[ranked[n]])) <= f:
            n += 1
        assert set(cols(d.commit)[0]) == set(ranked[:n])


# ------------------------------------------------------------------------------------------------ margin / entropy
def test_margin_threshold_uses_top1_minus_top2():
    # margins: .85, .21, .84, .0, .80 ; default threshold 0.8
    dists = [dist(0.9, 0.05), dist(0.6, 0.39), dist(0.85, 0.01), dist(0.45, 0.45), dist(0.85, 0.05)]
    logits = logits_of([dists])
    d, _ = run_step("margin_threshold", logits, make_view(torch.ones(1, 5, dtype=torch.bool)))
    assert cols(d.commit) == [[0, 2, 4]]
    # a confidence threshold of 0.9 would take only position 0: the rules differ
    d, _ = run_step("threshold", logits, make_view(torch.ones(1, 5, dtype=torch.bool)))
    assert cols(d.commit) == [[0]]


def test_margin_threshold_at_least_one():
    dists = [dist(0.4, 0.35), dist(0.5, 0.3), dist(0.45, 0.44)]
    d, _ = run_step("margin_threshold", logits_of([dists]), make_view(torch.ones(1, 3, dtype=torch.bool)))
    assert cols(d.commit) == [[1]]  # the largest margin, .2


def entropy(p: torch.Tensor) -> float:
    return float(-torch.special.xlogy(p, p).sum())


def test_entropy_threshold_commits_low_entropy_masks():
    dists = [dist(0.999), dist(0.95, 0.05), dist(0.9), dist(0.9, 0.1), dist(0.6, 0.4), dist(0.97)]
    H = [entropy(p) for p in dists]
    tau = 0.3
    expected = [i for i, h in enumerate(H) if h <= tau]
    assert expected == [0, 1, 5]  # 0.9 spread over 49 tokens has H = 0.71; a clean 0.9/0.1 split 0.325
    d, _ = run_step("entropy_threshold", logits_of([dists]), make_view(torch.ones(1, 6, dtype=torch.bool)),
                    threshold=tau)
    assert cols(d.commit) == [expected]


def test_entropy_threshold_at_least_one():
    dists = [dist(0.6, 0.4), dist(0.5), dist(0.7, 0.2)]
    d, _ = run_step("entropy_threshold", logits_of([dists]), make_view(torch.ones(1, 3, dtype=torch.bool)))
    assert cols(d.commit) == [[0]]  # H: .67, 2.3, .80


# ------------------------------------------------------------------------------------------------ quotas
def test_llada_quota_8_tokens_over_2_steps_commits_4_then_4():
    confs = [0.30, 0.35, 0.10, 0.50, 0.20, 0.45, 0.25, 0.40]
    logits = logits_of([[dist(c) for c in confs]])
    masked = torch.ones(1, 8, dtype=torch.bool)
    d, state = run_step("low_confidence", logits, make_view(masked, steps=2))
    assert cols(d.commit) == [[1, 3, 5, 7]]
    d2, _ = run_step("low_confidence", logits, make_view(masked & ~d.commit, steps=2, step=1, block_masks=8),
                     state=state)
    assert cols(d2.commit) == [[0, 2, 4, 6]]


def test_llada_quota_remainder_goes_first():
    logits = logits_of([[dist(0.5) for _ in range(7)]])
    masked = torch.ones(1, 7, dtype=torch.bool)
    s = dlm.schedulers.create("low_confidence")
    view = make_view(masked, steps=3)
    state = s.init_state(view.block)
    counts = []
    for step in range(3):
        cand = compute_candidates(logits, mode="gumbel")
        d, state = s.step(cand, make_view(masked, steps=3, step=step, block_masks=7), state)
        counts.append(int(d.commit.sum()))
        masked = masked & ~d.commit
    assert counts == [3, 2, 2]


def test_dream_quota_8_tokens_over_2_steps():
    # Dream: t = 1, s = 0.5005 -> int(8 * 0.4995) = 3, then the rest
    confs = [0.30, 0.35, 0.10, 0.50, 0.20, 0.45, 0.25, 0.40]
    logits = logits_of([[dist(c) for c in confs]])
    masked = torch.ones(1, 8, dtype=torch.bool)
    d, state = run_step("maskgit_plus", logits, make_view(masked, steps=2))
    assert cols(d.commit) == [[3, 5, 7]]
    d2, _ = run_step("maskgit_plus", logits, make_view(masked & ~d.commit, steps=2, step=1), state=state)
    assert cols(d2.commit) == [[0, 1, 2, 4, 6]]


# ------------------------------------------------------------------------------------------------ early_commit
def gap_logits(gaps: list[list[float]]) -> torch.Tensor:
    """(B, n, V) logits whose top-1 minus top-2 logit is exactly the given gap (top-1 token 7, top-2 token 3)."""
    out = torch.full((len(gaps), len(gaps[0]), V), -20.0)
    for b, row in enumerate(gaps):
        for i, g in enumerate(row):
            out[b, i, 3] = 0.0
            out[b, i, 7] = g
    return out


@pytest.mark.parametrize("row_steps,gap,exits", [
    # total budget 30: progress = (row_steps + 1) / 30; early phase while < 0.33 (steps 0..8)
    (0, 7.5, True), (8, 7.5, True), (8, 7.49, False), (0, 5.0, False),
    # mid phase while < 0.67 (steps 9..19)
    (9, 5.0, True), (9, 4.99, False), (19, 5.0, True), (19, 2.5, False),
    # late phase
    (20, 2.5, True), (20, 2.49, False), (29, 2.5, True),
])
def test_early_commit_exits_exactly_at_the_phase_thresholds(row_steps, gap, exits):
    n, w = 12, 4  # region = rest of the answer (12 columns), block of 4
    logits = gap_logits([[gap] * n])
    masked = torch.ones(1, n, dtype=torch.bool)
    masked[0, 1] = False
    d, _ = run_step("early_commit", logits, make_view(masked, block_cols=w, row_steps=row_steps,
                                                      total_steps=30))
    assert d.finish is not None and bool(d.finish[0]) == exits
    if exits:
        assert torch.equal(d.commit, masked)  # every remaining mask of the answer, beyond the block too
    else:
        # the inner low_confidence step: quota 3 masks over 8 steps -> 1 position, inside the block
        assert int(d.commit.sum()) == 1 and not d.commit[0, w:].any()


def test_early_commit_gap_is_averaged_over_the_masked_answer_or_the_block():
    # block columns 0..3 very sure, the rest of the answer unsure; one unmasked column with a huge gap ignored
    gaps = [[9.0, 9.0, 9.0, 9.0, 1.0, 1.0, 1.0, 1.0, 100.0]]
    masked = torch.ones(1, 9, dtype=torch.bool)
    masked[0, 8] = False
    view = make_view(masked, block_cols=4, row_steps=0, total_steps=32)
    d, _ = run_step("early_commit", gap_logits(gaps), view)  # mean over masks = 5.0 < 7.5
    assert not bool(d.finish[0])
    d, _ = run_step("early_commit", gap_logits(gaps), view, gap_over="block")  # mean over block = 9.0
    assert bool(d.finish[0]) and torch.equal(d.commit, masked)


def test_early_commit_rows_decide_independently():
    gaps = [[8.0] * 6, [1.0] * 6, [8.0] * 6]
    masked = torch.ones(3, 6, dtype=torch.bool)
    active = torch.tensor([True, True, False])
    d, _ = run_step("early_commit", gap_logits(gaps), make_view(masked, block_cols=3, active=active))
    assert d.finish.tolist() == [True, False, False]  # row 2 is not decoding: no exit
    assert d.commit[0].all() and int(d.commit[1].sum()) == 1


def test_early_commit_inner_sees_only_the_block(registered):
    seen = {}

    class Spy(Scheduler):
        """Records what it is given; commits the last masked column it sees."""

        def init_state(self, block):
            seen["init_block"] = (block.start.tolist(), block.width.tolist())
            return {"calls": torch.zeros_like(block.masks)}

        def step(self, cand, view, state):
            seen["shapes"] = (tuple(cand.tokens.shape), tuple(cand.logit_gap.shape), tuple(view.masked.shape),
                              view.in_block.tolist())
            commit = torch.zeros_like(view.masked)
            commit[:, -1] = view.masked[:, -1]
            return Decision(commit), {"calls": state["calls"] + 1}

    registered("test_spy", Spy)
    n, w = 10, 4
    view = make_view(torch.ones(1, n, dtype=torch.bool), block_cols=w)
    d, state = run_step("early_commit", gap_logits([[0.5] * n]), view, inner="test_spy")
    assert seen["init_block"] == ([10], [w])
    assert seen["shapes"] == ((1, w), (1, w), (1, w), [[True] * w])
    assert cols(d.commit) == [[w - 1]]  # padded back to the region
    assert state["inner"]["calls"].tolist() == [1]


def test_early_commit_flags_follow_the_inner_scheduler():
    s = dlm.schedulers.create("early_commit", {"inner": "entropy", "inner_kwargs": {"alg_temp": 0.3}})
    assert s.sampling == "categorical" and not s.deterministic and s.full_region
    assert set(s.measures) == {"logit_gap", "entropy"}
    s = dlm.schedulers.create("early_commit", {"inner": "margin_threshold"})
    assert s.sampling == "categorical" and s.deterministic and set(s.measures) == {"logit_gap", "margin"}


@pytest.mark.parametrize("kwargs,match", [
    ({"inner": "no_such_scheduler"}, "no_such_scheduler"),
    ({"inner": "threshold", "inner_kwargs": {"threshold": 2.0}}, "threshold"),
    ({"inner_kwargs": {"bogus": 1}}, "bogus"),
    ({"gap_over": "everything"}, "gap_over"),
    ({"early_until": 0.8, "mid_until": 0.5}, "early_until"),
])
def test_early_commit_validates(kwargs, match):
    with pytest.raises(dlm.ConfigError, match=match):
        dlm.schedulers.create("early_commit", kwargs)


@pytest.mark.parametrize("name,kwargs", [("threshold", {"threshold": 1.5}), ("factor", {"factor": 0}),
                                         ("margin_threshold", {"threshold": -0.1}),
                                         ("entropy_threshold", {"threshold": -1}), ("threshold", {"tau": 0.9})])
def test_parameters_are_validated(name, kwargs):
    with pytest.raises(dlm.ConfigError):
        dlm.schedulers.create(name, kwargs)


def test_early_commit_with_zero_thresholds_decodes_in_one_step(peaky):
    cfg = dlm.GenerationConfig(gen_length=32, block_length=8, scheduler="early_commit",
                               scheduler_kwargs={"early": 0.0, "mid": 0.0, "late": 0.0}, return_trace=True,
                               stop_at_eos=False)
    out = peaky.generate([[5, 6, 7]], cfg)
    assert out.nfe.tolist() == [1] and out.trace.block_steps == [[1]]
    assert (out.trace.commit_step == 0).all()
    # the answer is the argmax of the very first forward pass, for every position
    ref = dlm.GenerationConfig(gen_length=32, block_length=32, scheduler="threshold",
                               scheduler_kwargs={"threshold": 0.0}, stop_at_eos=False)
    assert peaky.generate([[5, 6, 7]], ref).sequences.tolist() == out.sequences.tolist()


def test_select_top_prefers_allowed_positions_on_ties():
    from dlm.schedulers import select_top

    scores = torch.tensor([[float("-inf"), float("-inf"), 0.5, float("-inf")]])
    allowed = torch.tensor([[False, True, False, True]])
    assert cols(select_top(scores, allowed, torch.tensor([1]))) == [[1]]
    assert cols(select_top(scores, allowed, torch.tensor([2]))) == [[1, 3]]
