"""``causal``: a causal LM verifies blocks drafted by the diffusion model; the output is the causal model's.

Speculative decoding with a diffusion drafter (Christopher et al., 2024, "Speculative Diffusion Decoding",
arXiv:2408.05636; DiffuSpec, arXiv:2510.02358), whose greedy form is blockwise parallel decoding (Stern et al.,
2018, arXiv:1811.03115) and whose sampling form is speculative sampling (Leviathan et al., 2023,
arXiv:2211.17192; Chen et al., 2023, arXiv:2302.01318).

Each *round*, for one row whose answer so far is ``y`` (the rows of a batch are processed one after the other):

1. Draft: the diffusion model decodes ``D`` tokens on the canvas ``prompt + y + D masks`` (``draft_steps`` = 1:
   every position from one forward, each token drawn from its own distribution ``q_i``; more steps: the
   configured scheduler, cache and sampling commit them over ``draft_steps`` steps, like any dlm decode).
2. Verify: ONE forward of the causal model over ``[last token] + draft``, on top of its KV cache of everything
   before, gives its next-token distribution ``p_i`` after every draft prefix (and one past the draft).
3. Greedy (temperature 0): accept the longest prefix of the draft equal to the causal model's argmax, then append
   the causal model's own argmax after it. The output is exactly ``model.generate(do_sample=False,
   max_new_tokens=gen_length)`` of the causal model (stopping at its EOS).
   Sampling (temperature > 0): accept draft token ``x_i`` with probability ``min(1, p_i(x_i) / q_i(x_i))``; at the
   first rejection emit a token drawn from ``normalize(max(0, p_i - q_i))`` and end the round; after a fully
   accepted draft emit a bonus token drawn from ``p_D``. Every emitted token is distributed exactly as
   ``p_i`` (see :func:`emitted_distribution`), so the output is distributed exactly as the causal model's samples:
   ``model.generate(do_sample=True, temperature=T, top_k=top_k or 0, top_p=top_p or 1.0)`` (no other logits
   processors).
4. The causal KV cache is cropped back to the accepted tokens (the rejected suffix is rolled back).

Why the rule needs a *proposal distribution that is the draw's true conditional*: the argument behind step 3
needs, at position ``i`` and given the accepted prefix, ``x_i`` to be distributed as ``q_i``. A one-step draft
satisfies this (positions are drawn independently from one forward). A multi-step diffusion draft does not: a
position committed at a later step depends on tokens committed earlier to its right, and confidence-based
schedulers choose *which* positions to commit by looking at the drawn tokens, so ``x_i`` is not distributed as
the ``q_i`` it was drawn from once the other draft tokens are known. With ``draft_steps > 1`` the verifier
therefore treats the draft as a given proposal, ``q_i = point mass at x_i``: accept with probability ``p_i(x_i)``,
else draw from ``p_i`` without ``x_i``. That rule is exact for any proposal however it was produced; it accepts
less often. (Greedy verification is exact either way.)

Parameters (``verify_kwargs``; ``verifier`` and ``tokenizer`` may also be objects when the class is built
directly, ``CausalVerifier(verifier=model, tokenizer=tok).run(lm, prompts, config)``):
    verifier: folder of a transformers causal LM (``AutoModelForCausalLM``, no remote code) sharing the diffusion
        model's tokenizer, or the model object. ``None``: the bundled ``dlm-tiny-ar``.
    tokenizer: the causal model's tokenizer (folder or object); default: the verifier folder's.
    draft_length: tokens drafted per round, D (default 8).
    draft_steps: diffusion steps per draft (default 1: all D positions from one forward).
    adaptive: grow D by 2 after a fully accepted draft, shrink it by 1 after a rejection (1..max_draft_length).
    max_draft_length: upper bound of the adaptive D (default 32).
    dtype: dtype to load the verifier in (``"float32"``, ``"float64"``, ``"bfloat16"``, ...; default: transformers').

Statistics: ``rounds`` (causal verification forwards), ``causal_forwards`` (plus one prefill per row),
``diffusion_nfe`` (drafting forwards), ``drafted_tokens``, ``accepted_draft_tokens``, ``emitted_tokens``,
``block_efficiency`` (tokens emitted per round: accepted drafts + the causal model's own token; the ratio of
the counters ``accepted_tokens`` and ``row_rounds``, which repeat ``emitted_tokens`` and ``rounds`` under the names
the stepwise verifier uses, so batches merge the same way),
``acceptance_rate`` (accepted / drafted). ``GenerationOutput.nfe`` counts each row's diffusion forwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..cache.base import CacheContext, StepInfo
from .. import cache as cache_mod
from ..config import GenerationConfig
from ..errors import CheckpointError, ConfigError
from ..outputs import GenerationOutput, StepEvent, StepTrace
from ..sampling import top_k_filter, top_p_filter
from .base import register_verifier
from .common import Verifier, positive_int

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------------------------ the acceptance rule (pure)
def accept_probabilities(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Probability of accepting each possible draft token: ``min(1, p / q)``; 1 where ``q`` is 0 (such a token
    is never drafted). p, q: (..., V) probability vectors. Returns (..., V)."""
    safe = torch.where(q > 0, q, torch.ones_like(q))
    return torch.where(q > 0, torch.clamp(p / safe, max=1.0), torch.ones_like(p))


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``normalize(max(0, p - q))``: where a rejected draft's replacement is drawn from. When it has no mass
    (p == q, so nothing is ever rejected) it is ``p``. p, q: (..., V). Returns (..., V)."""
    r = torch.clamp(p - q, min=0.0)
    mass = r.sum(-1, keepdim=True)
    return torch.where(mass > 0, r / torch.where(mass > 0, mass, torch.ones_like(mass)), p)


def emitted_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Distribution of the token the rule emits at a position when the draft token is drawn from ``q``:
    ``q(x) * accept(x)`` for each ``x``, plus the rejection mass times the residual. Equals ``p`` (the point of
    the rule): ``sum_x min(p, q) + (p - min(p, q)) = p``. p, q: (..., V). Returns (..., V)."""
    kept = q * accept_probabilities(p, q)
    return kept + (1.0 - kept.sum(-1, keepdim=True)) * residual_distribution(p, q)


def speculative_sample(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor,
                       generator: torch.Generator | None) -> tuple[list[int], int]:
    """Run the rule over one draft.

    p: (n + 1, V) target distributions (row i: after the first i draft tokens); q: (n, V) the draft tokens'
    proposal distributions; draft: (n,) long. Returns (emitted tokens, number of draft tokens accepted); the
    emitted tokens are the accepted ones plus one more (the residual draw, or the bonus draw from ``p[n]``).
    """
    n = int(draft.numel())
    out: list[int] = []
    acc = accept_probabilities(p[:n], q).gather(1, draft.view(n, 1)).squeeze(1) if n else p.new_zeros(0)
    for i in range(n):
        u = torch.rand((), dtype=torch.float64, device=p.device, generator=generator)
        if bool(u < acc[i]):
            out.append(int(draft[i]))
            continue
        res = residual_distribution(p[i], q[i])
        out.append(int(torch.multinomial(res, 1, generator=generator)))
        return out, i
    out.append(int(torch.multinomial(p[n], 1, generator=generator)))
    return out, n


# ------------------------------------------------------------------------------------ loading and checks
_LOADED: dict[tuple, tuple[Any, Any]] = {}


def _from_pretrained_kwargs(dtype: torch.dtype | None) -> dict[str, Any]:
    if dtype is None:
        return {}
    import transformers

    major, minor = (int(v) for v in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def load_causal(path: str | Path, dtype: torch.dtype | None, device: torch.device) -> tuple[Any, Any]:
    """The causal model and its tokenizer from a folder (no remote code), cached per (folder, dtype, device)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"verifier folder {str(folder)!r} has no config.json; pass the folder of a transformers "
                              "causal LM (AutoModelForCausalLM) that shares the diffusion model's tokenizer")
    key = (str(folder.resolve()), str(dtype), str(device))
    if key not in _LOADED:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=False,
                                                         **_from_pretrained_kwargs(dtype))
        except (ValueError, OSError, KeyError) as exc:
            raise CheckpointError(f"cannot load {str(folder)!r} as a causal LM with transformers' "
                                  f"AutoModelForCausalLM (no remote code): {exc}") from exc
        try:
            tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except (ValueError, OSError) as exc:
            raise CheckpointError(f"verifier folder {str(folder)!r} has no loadable tokenizer ({exc}); pass "
                                  "tokenizer=<folder or tokenizer object>") from exc
        if len(_LOADED) >= 2:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = (model.to(device).eval(), tok)
    return _LOADED[key]


def tokenizer_differences(diffusion_tok: Any, causal_tok: Any) -> list[str]:
    """What differs between two tokenizers, in words (empty when they agree): tokens present in one vocabulary
    only, tokens with different ids, and the EOS / BOS tokens."""
    va, vb = diffusion_tok.get_vocab(), causal_tok.get_vocab()
    out = []
    only_a = sorted(set(va) - set(vb), key=lambda t: va[t])
    only_b = sorted(set(vb) - set(va), key=lambda t: vb[t])
    moved = sorted((t for t in set(va) & set(vb) if va[t] != vb[t]), key=lambda t: va[t])
    if only_a:
        out.append(f"{len(only_a)} token(s) only in the diffusion model's tokenizer, e.g. "
                   + ", ".join(f"{t!r} (id {va[t]})" for t in only_a[:5]))
    if only_b:
        out.append(f"{len(only_b)} token(s) only in the causal model's tokenizer, e.g. "
                   + ", ".join(f"{t!r} (id {vb[t]})" for t in only_b[:5]))
    if moved:
        out.append(f"{len(moved)} token(s) with different ids, e.g. "
                   + ", ".join(f"{t!r} ({va[t]} vs {vb[t]})" for t in moved[:5]))
    for attr in ("eos_token", "bos_token"):
        a, b = getattr(diffusion_tok, attr, None), getattr(causal_tok, attr, None)
        if str(a) != str(b):
            out.append(f"{attr}: {a!r} (diffusion) vs {b!r} (causal)")
    return out


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _crop(cache: Any, length: int) -> None:
    """Roll the causal KV cache back to its first ``length`` positions (a negative argument removes tokens from
    the end in every transformers version that has ``crop``)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


# ------------------------------------------------------------------------------------ the verifier
@register_verifier("causal")
class CausalVerifier(Verifier):
    """A causal LM verifies diffusion drafts; greedy output identical, samples identically distributed."""

    @dataclass(frozen=True)
    class Params:
        verifier: Any = None
        tokenizer: Any = None
        draft_length: int = 8
        draft_steps: int = 1
        adaptive: bool = False
        max_draft_length: int = 32
        dtype: str | None = None

        def __post_init__(self):
            positive_int("draft_length", self.draft_length)
            positive_int("draft_steps", self.draft_steps)
            positive_int("max_draft_length", self.max_draft_length)
            if not isinstance(self.adaptive, bool):
                raise ValueError(f"adaptive must be True or False, got {self.adaptive!r}")
            if self.dtype is not None and self.dtype not in _DTYPES:
                raise ValueError(f"dtype must be None or one of {', '.join(_DTYPES)}, got {self.dtype!r}")

    # ----------------------------------------------------------------- set-up
    def resolve(self, lm) -> tuple[Any, Any]:
        """The causal model and its tokenizer, checked against the diffusion model's tokenizer."""
        prm = self.params
        dtype = _DTYPES.get(prm.dtype) if prm.dtype else None
        target = prm.verifier
        if target is None:
            from ..assets import default_verifier_path

            try:
                target = default_verifier_path()
            except CheckpointError as exc:
                raise CheckpointError(f"verify='causal' needs a causal verifier model and none was given; the "
                                      f"default is the bundled dlm-tiny-ar, which is not available: {exc}. Pass "
                                      "verify_kwargs={'verifier': '/path/to/causal-lm'}") from exc
        if isinstance(target, (str, Path)):
            model, tok = load_causal(target, dtype, lm.device)
        else:
            model, tok = target, None
            if dtype is not None:
                model = model.to(dtype)
        if prm.tokenizer is not None:
            if isinstance(prm.tokenizer, (str, Path)):
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(str(prm.tokenizer), trust_remote_code=False)
            else:
                tok = prm.tokenizer
        if tok is None:
            raise ConfigError("verify='causal' with a model object needs its tokenizer too (tokenizer=...), so that "
                              "the two models' vocabularies can be compared")
        if lm.tokenizer is None:
            raise ConfigError("verify='causal' needs the diffusion model's tokenizer to check that both models "
                              "share it; load the diffusion model with a tokenizer")
        diffs = tokenizer_differences(lm.tokenizer, tok)
        if diffs:
            raise ConfigError("verify='causal' needs a verifier that shares the diffusion model's tokenizer; they "
                              "differ: " + "; ".join(diffs))
        if getattr(model.config, "is_encoder_decoder", False):
            raise ConfigError(f"the verifier {type(model).__name__} is an encoder-decoder; a decoder-only causal "
                              "LM is needed")
        return model.eval(), tok

    @staticmethod
    def stop_ids(model, tok, config: GenerationConfig) -> list[int]:
        """Tokens that end the causal model's answer: ``stop_token_ids`` if set, else the EOS ids its
        ``generate`` stops at (generation config, then model config, then tokenizer)."""
        if config.stop_token_ids is not None:
            return list(config.stop_token_ids)
        gc = getattr(model, "generation_config", None)
        for value in (getattr(gc, "eos_token_id", None), getattr(model.config, "eos_token_id", None),
                      getattr(tok, "eos_token_id", None)):
            if _ids(value):
                return _ids(value)
        return []

    # ----------------------------------------------------------------- drafting
    def draft_distribution(self, logits: torch.Tensor, lm, config: GenerationConfig) -> torch.Tensor:
        """The drafter's token distribution per position, (n, V) float64, from its logits (n, V): the
        generation's temperature, top-k/top-p (in the order of the sampling family, see :mod:`dlm.sampling`),
        ``logits_eos_inf``, and never the mask token."""
        raw = logits.double().clone()
        if config.logits_eos_inf:
            raw[:, lm.ids.eos_id] = float("-inf")
        raw[:, lm.ids.mask_id] = float("-inf")
        T = config.temperature
        if T == 0:
            return torch.nn.functional.one_hot(raw.argmax(-1), raw.shape[-1]).double()
        mode = "gumbel" if config.sampling in ("auto", "gumbel") else "categorical"
        if mode == "gumbel":  # LLaDA: filters read the untempered logits; argmax(l + T * gumbel) ~ softmax(l / T)
            if config.top_p is not None and config.top_p < 1:
                raw = top_p_filter(raw, config.top_p)
            if config.top_k is not None:
                raw = top_k_filter(raw, config.top_k)
            return torch.softmax(raw / T, -1)
        proc = raw / T
        if config.top_p is not None and config.top_p < 1:
            proc = top_p_filter(proc, config.top_p)
        if config.top_k is not None:
            proc = top_k_filter(proc, config.top_k)
        return torch.softmax(proc, -1)

    def draft(self, lm, context: list[int], n: int, config: GenerationConfig,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """Draft ``n`` tokens after ``context``: (tokens (n,), their proposal distributions (n, V) or ``None`` for
        a multi-step draft (verified as a point mass), diffusion forwards used)."""
        prm = self.params
        if prm.draft_steps == 1:
            dcfg = config.replace(verify=None, verify_kwargs={}, gen_length=n, block_length=n, steps=n,
                                  eotp=False, eotp_threshold=None, return_trace=False)
            g = Generation(lm, [context], dcfg)
            policy = cache_mod.create("none")
            policy.setup(CacheContext(rows=g.copies, copies=g.copies, canvas_length=g.L,
                                      num_layers=lm.arch.num_layers, num_kv_heads=lm.arch.num_kv_heads,
                                      head_dim=lm.arch.head_dim, dtype=lm.dtype, device=g.device,
                                      answer_start=g.P, logits_shift=g.shift))
            masked = g.x == g.mask_id
            info = StepInfo(step=0, global_step=0, block_start=g.P, block_end=g.L, region_start=g.P, region_end=g.L,
                            masked=masked, committed_last=torch.zeros_like(masked), length=g.L)
            logits = g.forward(policy, policy.plan(info), g.key_mask())[0]  # (n, V)
            q = self.draft_distribution(logits, lm, config)
            if config.temperature == 0:
                tokens = q.argmax(-1)
            else:
                tokens = torch.multinomial(q, 1, generator=generator).squeeze(1)
            return tokens, q, g.copies
        from ..engine_legacy import generate

        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        dcfg = config.replace(verify=None, verify_kwargs={}, gen_length=n, block_length=n,
                              steps=min(prm.draft_steps, n), stop_at_eos=False, eotp=False, eotp_threshold=None,
                              return_trace=False, seed=seed)
        out = generate(lm, [context], dcfg)
        return out.sequences[0].to(lm.device), None, int(out.nfe[0])

    # ----------------------------------------------------------------- decoding
    @torch.no_grad()
    def run(self, lm, prompts: Sequence[Sequence[int]], config: GenerationConfig, stream=None) -> GenerationOutput:
        from transformers import DynamicCache
        from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

        t0 = time.perf_counter()
        prm = self.params
        G = config.gen_length
        check_prompts(prompts, lm, G)
        model, tok = self.resolve(lm)
        cdev = next(model.parameters()).device
        ctx_len = getattr(model.config, "max_position_embeddings", None)
        for r, p in enumerate(prompts):
            if len(p) == 0:
                raise ConfigError(f"prompt {r} is empty; the causal verifier needs at least one token (e.g. BOS)")
            if ctx_len is not None and len(p) + G > ctx_len:
                raise ConfigError(f"prompt {r} has {len(p)} tokens; with gen_length={G} the causal verifier needs "
                                  f"{len(p) + G} positions but its context is {ctx_len}")
        stops = set(self.stop_ids(model, tok, config)) if config.stop_at_eos else set()
        drafter_vocab = lm.arch.valid_vocab or lm.arch.vocab_size
        T = config.temperature
        warpers = []
        if T > 0:
            if config.top_k is not None:
                warpers.append(TopKLogitsWarper(config.top_k))
            if config.top_p is not None and config.top_p < 1:
                warpers.append(TopPLogitsWarper(config.top_p))
        seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        generator = torch.Generator(device=lm.device).manual_seed(seed)
        B, dev = len(prompts), lm.device
        seqs = torch.full((B, G), lm.ids.mask_id, dtype=torch.long)
        commit_step = torch.full((B, G), -1, dtype=torch.int32)
        nfe = torch.zeros(B, dtype=torch.long)
        done = torch.zeros(B, dtype=torch.bool)
        n_rounds = n_causal = n_drafted = n_accepted = n_emitted = 0
        t_prep = time.perf_counter()
        stopped = False
        for r, prompt in enumerate(prompts):
            if stopped:
                break
            cache = DynamicCache()
            if len(prompt) > 1:  # everything but the last prompt token goes into the cache
                model(input_ids=torch.tensor([prompt[:-1]], device=cdev), past_key_values=cache, use_cache=True)
                n_causal += 1
            cached = len(prompt) - 1
            pending = prompt[-1]
            out: list[int] = []
            D = prm.draft_length
            row_round = 0
            undraftable = False
            while len(out) < G:
                n = min(D, G - len(out) - 1)  # the causal model's own token fills the last position
                if undraftable:
                    n = 0  # the answer holds a token the drafter cannot read: plain causal steps
                draft = torch.zeros(0, dtype=torch.long, device=cdev)
                q = None
                if n > 0:
                    draft, q, used = self.draft(lm, list(prompt) + out, n, config, generator)
                    draft = draft.to(cdev)
                    nfe[r] += used
                feed = torch.cat([torch.tensor([pending], device=cdev), draft]).unsqueeze(0)
                logits = model(input_ids=feed, past_key_values=cache, use_cache=True).logits[0]  # (n + 1, Vc)
                n_causal += 1
                if T == 0:
                    target = logits.argmax(-1)
                    same = (draft == target[:n]).long().cumprod(0)
                    k = int(same.sum())
                    emitted = draft[:k].tolist() + [int(target[k])]
                else:
                    p = logits.double() / T
                    for w in warpers:
                        p = w(feed, p)
                    p = torch.softmax(p, -1)
                    V = max(p.shape[-1], q.shape[-1] if q is not None else 0)
                    p = torch.nn.functional.pad(p, (0, V - p.shape[-1]))
                    if q is None:  # multi-step draft: a point mass at each drafted token (see module doc)
                        qv = torch.nn.functional.one_hot(draft, V).double()
                    else:
                        qv = torch.nn.functional.pad(q.to(cdev), (0, V - q.shape[-1]))
                    emitted, k = speculative_sample(p.to(dev), qv.to(dev), draft.to(dev), generator)
                _crop(cache, cached + 1 + k)  # keep [pending] + the accepted drafts; roll back the rest
                cached += 1 + k
                pending = emitted[-1]
                n_rounds += 1
                n_drafted += n
                n_accepted += k
                cut = next((i for i, t in enumerate(emitted) if t in stops), None)
                if cut is not None:
                    emitted = emitted[: cut + 1]
                emitted = emitted[: G - len(out)]
                start = len(out)
                out.extend(emitted)
                if any(t == lm.ids.mask_id or t >= drafter_vocab for t in emitted):
                    undraftable = True
                n_emitted += len(emitted)
                seqs[r, start : len(out)] = torch.tensor(emitted)
                commit_step[r, start : len(out)] = row_round
                row_round += 1
                if prm.adaptive:
                    D = min(D + 2, prm.max_draft_length) if k == n else max(1, D - 1)
                finished = cut is not None or len(out) >= G
                if finished:
                    seqs[r, len(out) :] = lm.ids.eos_id
                    done[r] = True
                if stream is not None:
                    committed = torch.zeros(B, G, dtype=torch.bool)
                    committed[r, start : len(out)] = True
                    event = StepEvent(step=n_rounds, block=0, committed=committed, tokens=seqs.clone(),
                                      done=done.clone())
                    stream(event)
                    if getattr(event, "stop_requested", False):
                        stopped = True
                        break
                if finished:
                    break
        texts = None
        if lm.tokenizer is not None:
            texts = []
            for row in seqs.tolist():
                cut = next((i for i, t in enumerate(row) if t in stops), len(row))
                texts.append(lm.tokenizer.decode([t for t in row[:cut] if t != lm.ids.mask_id],
                                                 skip_special_tokens=True))
        stats = {
            "rounds": float(n_rounds),
            "causal_forwards": float(n_causal),
            "diffusion_nfe": float(nfe.sum()),
            "drafted_tokens": float(n_drafted),
            "accepted_draft_tokens": float(n_accepted),
            "emitted_tokens": float(n_emitted),
            "row_rounds": float(n_rounds),
            "accepted_tokens": float(n_emitted),
            "block_efficiency": n_emitted / max(1, n_rounds),
            "acceptance_rate": n_accepted / max(1, n_drafted),
        }
        t1 = time.perf_counter()
        trace = StepTrace(commit_step, []) if config.return_trace else None
        return GenerationOutput(sequences=seqs, prompt_ids=[list(p) for p in prompts], texts=texts, nfe=nfe,
                                steps=int(nfe.sum()), timings={"total": t1 - t0, "prepare": t_prep - t0,
                                                               "decode": t1 - t_prep},
                                trace=trace, stats=stats)
