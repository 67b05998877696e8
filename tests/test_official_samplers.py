"""dlm's reference schedulers against compact re-implementations of the official samplers.

The two functions below follow the official algorithms literally (REFERENCES.md; ML-GSAI/LLaDA ``generate.py``
and Dream's ``generation_utils.py``): the LLaDA canvas/blocks/quota/Gumbel-in-float64/CFG loop, and Dream's
timestep schedule, logit shift and quota ``int(N * (1 - s/t))``. They call the same model on the whole canvas
every step, with the same padding-aware positions and key mask dlm uses.

Three documented conventions, where the official scripts leave a choice open or would be wrong:
* random draws for tokens (Gumbel noise, categorical sampling) are taken over the active block's positions
  only (the official scripts draw them for the whole canvas; the other positions never influence the result);
* ties in the top-k selection are broken leftmost first (``torch.topk`` leaves the order unspecified);
* ``confidence_eos_eot_inf`` gives stop-token candidates confidence -inf *among the block's masked positions*
  (LLaDA's script assigns -inf to the wrong tensors, see docs/formats.md);
* a step whose quota rounds down to 0 commits nothing; dlm skips it without a forward pass, so it draws no
  random tokens there (the official loop draws and discards them);
* the mask token itself is never chosen as a candidate token (committing it would change nothing); confidences
  are still read from the unmodified distribution;
* every prompt draws its random numbers from its own generator, so its answer does not depend on its batch: with
  random draws (temperature > 0, ``random`` remasking, ``origin``) a batch is compared with the official sampler
  run on each prompt alone (the official scripts draw one tensor across the batch).
At temperature 0 the first one does not apply, and with the default options neither does the third; the last
matters only for models that put the most weight on the mask token, which trained models never do.
"""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm import GenerationConfig

from .conftest import random_prompts


def model_logits(lm, x, valid):
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    key_mask = None if bool(valid.all()) else valid
    return lm.model(x, pos, key_mask=key_mask).float()


def canvas(prompts, gen_length, mask_id, pad_id):
    P = max(len(p) for p in prompts)
    x = torch.full((len(prompts), P + gen_length), pad_id)
    valid = torch.zeros_like(x, dtype=torch.bool)
    for r, p in enumerate(prompts):
        x[r, P - len(p) : P] = torch.tensor(p)
        valid[r, P - len(p) :] = True
    x[:, P:] = mask_id
    return x, valid, P


def topk_leftmost(conf_row, k):
    return torch.sort(conf_row, descending=True, stable=True).indices[:k]


def llada_official(lm, prompts, *, steps, gen_length, block_length, temperature=0.0, cfg_scale=0.0,
                   remasking="low_confidence", logits_eos_inf=False, confidence_eos_eot_inf=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask_id, eos = lm.ids.mask_id, lm.ids.eos_id
    x, valid, P = canvas(prompts, gen_length, mask_id, lm.ids.pad_id)
    B, L = x.shape
    prompt_index = valid.clone()
    prompt_index[:, P:] = False
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for nb in range(num_blocks):
        bs, be = P + nb * block_length, P + (nb + 1) * block_length
        m = (x[:, bs:be] == mask_id).sum(1, keepdim=True)
        quota = (m // steps_per_block).repeat(1, steps_per_block)
        for j in range(B):
            quota[j, : int(m[j] % steps_per_block)] += 1
        for i in range(steps_per_block):
            mask_index = x == mask_id
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                both = model_logits(lm, torch.cat([x, un_x]), torch.cat([valid, valid]))
                cond, un = both.chunk(2)
                logits = un + (cfg_scale + 1) * (cond - un)
                logits[torch.isneginf(cond) & torch.isneginf(un)] = float("-inf")  # ids beyond the vocabulary
            else:
                logits = model_logits(lm, x, valid)
            if logits_eos_inf:
                logits[:, :, eos] = float("-inf")
            choice = logits.clone()
            choice[:, :, mask_id] = float("-inf")
            x0 = choice.argmax(-1)
            if temperature > 0:
                lb = choice[:, bs:be].double()
                u = torch.rand(lb.shape, dtype=torch.float64, generator=g)
                x0[:, bs:be] = (lb.exp() / (-torch.log(u)) ** temperature).argmax(-1)
            if remasking == "low_confidence":
                x0_p = torch.softmax(logits, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            else:
                x0_p = torch.rand((B, L), generator=g)
            if confidence_eos_eot_inf:
                x0_p = x0_p.masked_fill(torch.isin(x0, torch.tensor(lm.ids.stop_ids)), float("-inf"))
            allowed = mask_index.clone()
            allowed[:, be:] = False
            x0 = torch.where(mask_index, x0, x)
            for j in range(B):
                cols = allowed[j].nonzero().squeeze(1)
                sel = cols[topk_leftmost(x0_p[j, cols], int(quota[j, i]))]
                x[j, sel] = x0[j, sel]
    return x[:, P:]


def dream_official(lm, prompts, *, steps, gen_length, alg="maskgit_plus", eps=1e-3, temperature=0.0, top_p=1.0,
                   top_k=50, seed=0):
    # top_p=1.0, top_k=50: what diffusion_generate uses when they are not passed (DreamGenerationConfig is built
    # from the model config, which carries transformers' old generation defaults); None switches a filter off
    g = torch.Generator().manual_seed(seed)
    mask_id = lm.ids.mask_id
    x, valid, P = canvas(prompts, gen_length, mask_id, lm.ids.pad_id)
    B = x.shape[0]
    ts = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == mask_id
        logits = model_logits(lm, x, valid)
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # the logit shift
        t, s = ts[i], ts[i + 1]
        num_mask = mask_index.sum() / B
        k = int(num_mask * (1 - s / t)) if i < steps - 1 else int(num_mask)
        if alg != "origin" and k == 0:
            continue  # the official loop samples tokens it then throws away; dlm skips the step (see module doc)
        # tokens for every answer position (draws over the answer region, see the module doc)
        proc = logits[:, P:] / temperature if temperature > 0 else logits[:, P:]
        if top_p is not None and top_p < 1:
            proc = dlm.sampling.top_p_filter(proc, top_p)
        if top_k is not None:
            proc = dlm.sampling.top_k_filter(proc, top_k)
        probs = torch.softmax(proc, -1)
        pick = probs.clone()
        pick[..., mask_id] = 0.0
        if temperature > 0:
            tok = torch.multinomial(pick.reshape(-1, pick.shape[-1]), 1, generator=g).view(B, -1)
        else:
            tok = pick.argmax(-1)
        conf = probs.gather(-1, tok.unsqueeze(-1)).squeeze(-1)
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            idx = mask_index[:, P:]
            reveal = torch.rand(int(idx.sum()), generator=g) < p_transfer
            new = torch.full_like(tok[idx], mask_id)
            new[reveal] = tok[idx][reveal]
            x[:, P:][idx] = new
            continue
        if alg == "topk_margin":
            top2 = probs.topk(2, -1).values
            conf = top2[..., 0] - top2[..., 1]
        elif alg == "entropy":
            conf = (probs * torch.log(probs + 1e-10)).sum(-1)
        full_conf = torch.full(x.shape, float("-inf"))
        full_conf[:, P:] = torch.where(mask_index[:, P:], conf, float("-inf"))
        if k > 0:
            for j in range(B):
                sel = topk_leftmost(full_conf[j], k)
                x[j, sel] = torch.cat([x[j, :P], tok[j]])[sel]
    return x[:, P:]


def per_prompt(prompts, separately: bool, run):
    """The official sampler on the whole batch, or (random draws) on each prompt alone, rows stacked."""
    if not separately:
        return run(prompts)
    return torch.cat([run([p]) for p in prompts])


LLADA_CASES = [
    # (batch, equal lengths, gen, block, steps, temperature, cfg, remasking, eos_inf, conf_eos_inf)
    (1, True, 16, 16, 16, 0.0, 0.0, "low_confidence", False, False),
    (1, True, 16, 4, 16, 0.0, 0.0, "low_confidence", False, False),
    (1, True, 24, 8, 12, 0.0, 0.0, "low_confidence", False, False),
    (1, True, 16, 8, 6, 0.0, 0.0, "low_confidence", False, False),
    (3, True, 16, 8, 16, 0.0, 0.0, "low_confidence", False, False),
    (3, False, 16, 4, 8, 0.0, 0.0, "low_confidence", False, False),
    (3, False, 16, 16, 16, 0.0, 0.0, "random", False, False),
    (1, True, 16, 8, 16, 0.0, 0.0, "random", False, False),
    (2, False, 16, 8, 16, 0.8, 0.0, "low_confidence", False, False),
    (1, True, 16, 4, 8, 1.0, 0.0, "random", False, False),
    (2, False, 16, 8, 8, 0.0, 1.5, "low_confidence", False, False),
    (1, True, 16, 8, 16, 0.5, 0.5, "low_confidence", False, False),
    (2, False, 16, 8, 16, 0.0, 0.0, "low_confidence", True, False),
    (2, False, 16, 8, 16, 0.0, 0.0, "low_confidence", False, True),
]


@pytest.mark.parametrize("case", LLADA_CASES, ids=lambda c: "-".join(map(str, c)))
def test_llada_sampler_equals_official(llada, case):
    B, equal, gen, block, steps, temp, cfg, remasking, eos_inf, conf_inf = case
    for trial in range(4):
        seed = 100 * trial + B
        lo = 5 if equal else 1
        prompts = random_prompts(llada, B, seed=seed, min_len=lo, max_len=lo if equal else 14)
        random_draws = temp > 0 or remasking == "random"
        ref = per_prompt(prompts, random_draws, lambda ps: llada_official(
            llada, ps, steps=steps, gen_length=gen, block_length=block, temperature=temp, cfg_scale=cfg,
            remasking=remasking, logits_eos_inf=eos_inf, confidence_eos_eot_inf=conf_inf, seed=seed))
        cfgn = GenerationConfig(gen_length=gen, block_length=block, steps=steps, scheduler=remasking,
                                temperature=temp, cfg_scale=cfg, logits_eos_inf=eos_inf,
                                confidence_eos_eot_inf=conf_inf, seed=seed, stop_at_eos=False)
        out = llada.generate(prompts, cfgn)
        assert torch.equal(out.sequences, ref), f"trial {trial}: dlm {out.sequences.tolist()} != ref {ref.tolist()}"


DREAM_CASES = [
    # (batch, equal lengths, gen, steps, alg, temperature, top_p, top_k)
    (1, True, 16, 16, "maskgit_plus", 0.0, None, None),
    (1, True, 16, 5, "maskgit_plus", 0.0, None, None),  # quotas that round down to 0 at some steps
    (3, True, 16, 16, "maskgit_plus", 0.0, None, None),
    (3, False, 16, 7, "maskgit_plus", 0.0, None, None),
    (2, False, 16, 16, "topk_margin", 0.0, None, None),
    (1, True, 24, 9, "topk_margin", 0.0, None, None),
    (2, False, 16, 16, "entropy", 0.0, None, None),
    (1, True, 16, 6, "entropy", 0.0, None, None),
    (1, True, 16, 16, "origin", 0.0, None, None),
    (1, True, 16, 4, "origin", 0.0, None, None),
    (2, False, 16, 8, "maskgit_plus", 0.9, 0.9, None),
    (1, True, 16, 16, "entropy", 1.0, None, 20),
    (2, True, 16, 8, "topk_margin", 0.7, 0.8, 30),
]


@pytest.mark.parametrize("case", DREAM_CASES, ids=lambda c: "-".join(map(str, c)))
def test_dream_sampler_equals_official(dream, case):
    B, equal, gen, steps, alg, temp, top_p, top_k = case
    for trial in range(4):
        seed = 100 * trial + B + 7
        lo = 5 if equal else 1
        prompts = random_prompts(dream, B, seed=seed, min_len=lo, max_len=lo if equal else 14)
        given = {k: v for k, v in (("top_p", top_p), ("top_k", top_k)) if v is not None}  # else: both defaults
        ref = per_prompt(prompts, temp > 0 or alg == "origin", lambda ps: dream_official(
            dream, ps, steps=steps, gen_length=gen, alg=alg, temperature=temp, seed=seed, **given))
        cfgn = GenerationConfig(gen_length=gen, block_length=gen, steps=steps, scheduler=alg, temperature=temp,
                                seed=seed, stop_at_eos=False, **given)
        out = dream.generate(prompts, cfgn)
        assert torch.equal(out.sequences, ref), f"trial {trial}: dlm {out.sequences.tolist()} != ref {ref.tolist()}"
        # dlm never spends a forward pass on a step that commits nothing
        assert int(out.nfe.max()) <= steps


def test_stop_at_eos_keeps_the_text(llada_path, tmp_path):
    """With stop_at_eos (default) a row ends early, and its answer up to the first stop token is exactly the
    official sampler's. A model biased towards EOS makes stops happen."""
    lm = dlm.load(llada_path, device="cpu")
    with torch.no_grad():
        lm.model.head.weight[lm.ids.eos_id] *= 2.0
        lm.model.head.weight[lm.ids.eos_id] += 0.3 * lm.model.head.weight[:256].mean(0)
    stops = 0
    for trial in range(6):
        prompts = random_prompts(lm, 3, seed=trial, min_len=2, max_len=10)
        ref = llada_official(lm, prompts, steps=32, gen_length=32, block_length=8, seed=trial)
        out = lm.generate(prompts, GenerationConfig(gen_length=32, block_length=8, seed=trial))
        for r in range(3):
            row_ref, row = ref[r].tolist(), out.sequences[r].tolist()
            cut = next((i for i, t in enumerate(row_ref) if t in lm.ids.stop_ids), len(row_ref))
            assert row[: cut + 1] == row_ref[: cut + 1]
            if cut < len(row_ref) - 1:
                stops += 1
                assert all(t == lm.ids.eos_id for t in row[cut + 1 :])
                assert int(out.nfe[r]) <= 32
    assert stops > 0, "the EOS-biased model never stopped early; the test did not exercise stop_at_eos"
