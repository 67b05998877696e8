"""Stopping rules after a step's commits: end-of-text prediction (EoTP) and stop-at-EOS, for every running
request at once, each with its own settings.

The rules read and rewrite each request's answer (canvas positions P .. P + G - 1), padded to the longest
answer of the step (columns past a request's own G are ignored):

* EoTP (``eotp``): once a stop token is committed at answer position p, every position after p becomes EOS and
  the canvas is cut after p (those positions are no longer attended to or computed). With ``eotp_threshold``
  also when every mask from some p on is confidently predicted to be a stop token (p then takes its predicted
  token at this step).
* stop-at-EOS (``stop_at_eos``): once a stop token is committed and every position before it is, the request is
  done and the rest of its answer is EOS.
* a request is also done when its answer has no masks left.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.transfer import to_device
from .buffers import SlotBuffers
from .request import Request


@dataclass
class StopResult:
    """Per request (R,) device tensors: done, the answer column of the first remaining mask (G when none), and
    the effective canvas length."""

    done: torch.Tensor
    first_mask: torch.Tensor
    length: torch.Tensor


def _settings(reqs: list[Request], dev, any_eotp: bool):
    """The rows' numbers (R, 9) and stop ids (R, S) (one transfer), and EoTP's thresholds (R,) (None without
    EoTP)."""
    width = max(len(r.stop_ids) for r in reqs)
    rows = [[r.slots[0], r.layout.prompt_len, r.layout.gen_length, r.length, r.region_span()[0],
             r.region_span()[1] - r.region_span()[0], int(r.config.eotp), int(r.config.stop_at_eos), r.steps,
             *r.stop_ids, *[-1] * (width - len(r.stop_ids))] for r in reqs]
    t = to_device(rows, dev, torch.long)
    thr = None
    if any_eotp:
        thr = to_device([r.config.eotp_threshold if r.config.eotp_threshold is not None else float("inf")
                         for r in reqs], dev, torch.float32)
    return t[:, :9], t[:, 9:], thr


@dataclass
class Answers:
    """A batch of answers and the rules that apply to each (R rows, padded to the longest answer).

    Attributes:
        tokens: (R, Gmax) long, the answers (columns past a row's G are ignored).
        G: (R,) long, each row's answer length.
        stops: (R, S) long, each row's stop token ids (padded with -1).
        stop_at_eos, eotp: (R,) bool.
        threshold: (R,) float, EoTP's prediction threshold (inf: none); None when no row predicts.
        pred_tokens, pred_confidence: (R, Gmax) the candidates of masked positions for EoTP's prediction (None
            when no row predicts).
    """

    tokens: torch.Tensor
    G: torch.Tensor
    stops: torch.Tensor
    stop_at_eos: torch.Tensor
    eotp: torch.Tensor
    threshold: torch.Tensor | None
    pred_tokens: torch.Tensor | None = None
    pred_confidence: torch.Tensor | None = None
    any_eotp: bool | None = None  # whether some row has eotp, when known on the host (saves a device sync)
    any_stop: bool | None = None  # whether some row has stop_at_eos, when known on the host (saves the rule)


def stop_rules(a: Answers, mask_id: int, eos_id: int):
    """The stopping rules on tensors (see the module doc). Returns (answers, positions decoded by EoTP's
    prediction (R, Gmax) bool, EoTP's cut p (R,) (G: none), done (R,), first remaining mask (R,) (G: none))."""
    ans, G = a.tokens, a.G.unsqueeze(1)
    cols = torch.arange(ans.shape[1], device=ans.device).unsqueeze(0)
    valid = cols < G

    def is_stop(x):
        return (x.unsqueeze(-1) == a.stops.unsqueeze(1)).any(-1)

    def first(mask):
        return torch.where(mask, cols, G).amin(1)

    masked = (ans == mask_id) & valid
    eotp = a.any_eotp if a.any_eotp is not None else bool(a.eotp.any())
    if not eotp and a.any_stop is False:  # no rule can change an answer: only its masks matter
        return ans, torch.zeros_like(masked), a.G, ~masked.any(1), first(masked)
    first_stop = first(is_stop(ans) & ~masked & valid)
    at_p = torch.zeros_like(masked)
    p = a.G.clone()
    if eotp:
        if a.pred_tokens is not None:
            p = torch.minimum(first_stop, _predicted_end(ans, masked, valid, is_stop(a.pred_tokens),
                                                         a.pred_confidence, a.threshold, is_stop, cols, a.G))
        else:
            p = first_stop
        cut = (p < a.G) & a.eotp
        p = torch.where(cut, p, a.G)
        after = (cols > p.unsqueeze(1)) & cut.unsqueeze(1) & valid
        at_p = (cols == p.unsqueeze(1)) & cut.unsqueeze(1) & masked
        fill = a.pred_tokens if a.pred_tokens is not None else torch.full_like(ans, eos_id)
        ans = torch.where(at_p, fill, torch.where(after, eos_id, ans))
        masked = (ans == mask_id) & valid
        first_stop = first(is_stop(ans) & ~masked & valid)
    masks_before = (masked & (cols < first_stop.unsqueeze(1))).any(1)
    stopped = (first_stop < a.G) & ~masks_before & a.stop_at_eos
    ans = torch.where((cols > first_stop.unsqueeze(1)) & stopped.unsqueeze(1) & valid, eos_id, ans)
    masked = (ans == mask_id) & valid
    return ans, at_p, p, stopped | ~masked.any(1), first(masked)


def apply_stops(reqs: list[Request], buf: SlotBuffers, mask_id: int, eos_id: int,
                defer: torch.Tensor | None = None) -> StopResult:
    """Apply the stopping rules of every request in ``reqs`` to its canvas (see the module doc). ``defer`` (R,)
    bool: requests whose stop-at-EOS waits for their block to close (a scheduler that edits may still change
    the block)."""
    dev = buf.device
    any_eotp = any(r.config.eotp for r in reqs)
    any_stop = any(r.config.stop_at_eos for r in reqs)
    t, stops, thr = _settings(reqs, dev, any_eotp)
    slot, P, G, length, rs, rw = (t[:, i] for i in range(6))
    eotp, stop_at_eos, step = t[:, 6].bool(), t[:, 7].bool(), t[:, 8]
    Gmax = int(max(r.layout.gen_length for r in reqs))
    cols = torch.arange(Gmax, device=dev).unsqueeze(0)
    valid = cols < G.unsqueeze(1)
    pos = P.unsqueeze(1) + cols
    rows = slot.unsqueeze(1)
    answers = Answers(buf.tokens[rows, pos], G, stops, stop_at_eos, eotp, thr, any_eotp=any_eotp, any_stop=any_stop)
    if any_eotp:
        rc = pos - rs.unsqueeze(1)  # the region column of each answer position
        in_region = (rc >= 0) & (rc < rw.unsqueeze(1))
        rc = rc.clamp(0, buf.slot_len - 1)
        answers.pred_tokens = torch.where(in_region, buf.cand_tokens[rows, rc], eos_id)
        answers.pred_confidence = torch.where(in_region, buf.cand_confidence[rows, rc], float("-inf"))
    if defer is not None:
        answers.stop_at_eos = answers.stop_at_eos & ~defer
    ans, at_p, p, done, first_mask = stop_rules(answers, mask_id, eos_id)
    if defer is not None:  # the open block may still edit the answer
        done = done & ~defer
    if any_eotp:
        buf.commit_step[rows, pos] = torch.where(at_p, step.unsqueeze(1).int(), buf.commit_step[rows, pos])
        length = torch.where(p < G, torch.minimum(length, P + p + 1), length)
    if any_eotp or any_stop:  # (else the answers are unchanged)
        _write_answers(reqs, buf, rows, pos, answers.tokens, ans, valid)
    return StopResult(done, first_mask, length)


def _predicted_end(ans, masked, valid, pred_stop, pred_conf, thr, is_stop, cols, G) -> torch.Tensor:
    """Smallest masked answer column p such that every mask from p on is confidently predicted a stop token and
    no committed token after p is anything but a stop token (a prediction never erases committed text). Masks
    outside the candidate region count as unsure. (R,), G where there is none."""
    sure = pred_stop & (pred_conf >= thr.unsqueeze(1))
    bad = ((masked & ~sure) | (~masked & ~is_stop(ans))) & valid
    last_bad = torch.where(bad, cols, -1).amax(1)
    ok = masked & sure & (cols > last_bad.unsqueeze(1))
    return torch.where(ok, cols, G.unsqueeze(1)).amin(1)


def _write_answers(reqs, buf: SlotBuffers, rows, pos, cur, ans, valid) -> None:
    """The rewritten answers ``ans`` over ``cur``, the answers read before the rules (nothing wrote since)."""
    buf.tokens[rows, pos] = torch.where(valid, ans, cur)
    uncond = [(i, r.slots[1]) for i, r in enumerate(reqs) if r.copies == 2]
    if uncond:
        idx = to_device([i for i, _ in uncond], buf.device, torch.long)
        urows = to_device([s for _, s in uncond], buf.device, torch.long).unsqueeze(1)
        buf.tokens[urows, pos[idx]] = torch.where(valid[idx], ans[idx], buf.tokens[urows, pos[idx]])
