"""``verify="causal"``: a causal LM verifies diffusion drafts.

Greedy: the output is the causal model's own ``generate(do_sample=False)``, token for token, EOS included.
Sampling: the acceptance rule is checked EXACTLY on hand-built distributions (the emitted token's distribution,
computed analytically from the rule, equals the target to 1e-9), then by seeded statistical smoke tests.

How the tests get drafts that are sometimes accepted: two random models agree about once in |V| = 262 tries, so
both models are given a shared, context-dependent preference for the byte token ``A`` (and the causal model a
weaker one for EOS) with :func:`dlm.verify.testing.prefer_token`: a constant embedding direction that no layer
writes to, read out by A's (and EOS's) head row. The drafter then drafts mostly ``A``; the causal model prefers
``A`` at most positions but not all (its random weights win elsewhere) and ends answers with EOS at varying
lengths. About half of the drafted tokens are accepted, so a rule that accepts too much or too little, or a cache
rolled back to the wrong length, changes the output. The causal verifier is a ``transformers``
``LlamaForCausalLM`` saved with a copy of the tiny LLaDA tokenizer and loaded through its folder, in float64 so
that comparisons never hinge on an ulp (the greedy comparison is bitwise on argmaxes).
"""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch

import dlm
from dlm import GenerationConfig
from dlm.errors import CheckpointError, ConfigError, GenerationError
from dlm.verify import CausalVerifier, register_verifier, VERIFIERS
from dlm.verify.causal_driver import _joined, _State
from dlm.verify.causal_model import tokenizer_differences
from dlm.verify.speculative import accept_probabilities, emitted_distribution, residual_distribution, speculative_sample
from dlm.verify.testing import prefer_token, tiny_causal_model, write_tiny_causal

from ..conftest import random_prompts

A = 97  # the byte token both models prefer
GEN = 32


@pytest.fixture(scope="module")
def drafter(diffusion_paths):
    """The tiny LLaDA model (seed 1) with the A preference (a private copy: the session models stay intact)."""
    lm = dlm.load(diffusion_paths["llada-1"], device="cpu")
    prefer_token(lm, {A: 24.0})
    return lm


@pytest.fixture(scope="module")
def causal_path(tmp_path_factory, diffusion_paths, drafter):
    return write_tiny_causal(tmp_path_factory.mktemp("causal"), diffusion_paths["llada-1"], seed=5,
                             prefs={A: 36.0, drafter.ids.eos_id: 30.0})


@pytest.fixture(scope="module")
def causal_model(causal_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(causal_path), dtype=torch.float64).eval()


@pytest.fixture(scope="module")
def prompts(drafter):
    return random_prompts(drafter, 40, seed=21, max_len=10)


def hf_greedy(model, prompt, max_new_tokens):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=model.generation_config.eos_token_id)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def references(causal_model, prompts):
    return [hf_greedy(causal_model, p, GEN) for p in prompts]


def check_against(out, refs, eos, tokenizer):
    for r, ref in enumerate(refs):
        row = out.sequences[r].tolist()
        assert row[: len(ref)] == ref, f"row {r}: {row[:len(ref)]} != {ref}"
        assert all(t == eos for t in row[len(ref):])  # stopped where the causal model stopped
        text = tokenizer.decode([t for t in ref if t != eos], skip_special_tokens=True)
        assert out.texts[r] == text


# ------------------------------------------------------------------------------------------------ greedy
@pytest.mark.parametrize("kwargs", [{"draft_length": 6}, {"draft_length": 4, "draft_steps": 2},
                                    {"draft_length": 3, "adaptive": True, "max_draft_length": 12}],
                         ids=["one-step-drafts", "two-step-drafts", "adaptive"])
def test_greedy_equals_causal_generate(drafter, causal_path, prompts, references, kwargs):
    cfg = GenerationConfig(gen_length=GEN, verify="causal",
                           verify_kwargs={"verifier": str(causal_path), "dtype": "float64", **kwargs})
    out = drafter.generate(prompts, cfg)
    check_against(out, references, drafter.ids.eos_id, drafter.tokenizer)
    s = out.stats
    lengths = [len(r) for r in references]
    # one causal forward per round (a request's first round also prefills its prompt)
    assert s["emitted_tokens"] == sum(lengths) and s["rounds"] == s["causal_forwards"]
    assert 0.2 < s["acceptance_rate"] < 0.95, s  # drafts are accepted AND rejected: the rule is exercised
    assert s["block_efficiency"] > 1.5
    assert min(lengths) < GEN and max(lengths) == GEN  # some answers end at EOS, some run to gen_length
    assert int(out.nfe.sum()) == s["diffusion_nfe"] and s["diffusion_nfe"] <= s["rounds"] * kwargs.get("draft_steps", 1)
    # the drafter alone would say something else: what the verifier keeps matters
    alone = drafter.generate(prompts[:8], GenerationConfig(gen_length=GEN, block_length=GEN))
    assert any(alone.sequences[r, : len(references[r])].tolist() != references[r] for r in range(8))


def test_greedy_with_a_dream_drafter_and_model_objects(diffusion_models):
    """Dream (shifted logits) drafts; the verifier and its tokenizer are passed as objects."""
    lm = dlm.load(diffusion_models["dream-2"].path, device="cpu")
    eos = lm.ids.eos_id
    prefer_token(lm, {A: 24.0})
    model = tiny_causal_model(len(lm.tokenizer), eos, None, seed=7, prefs={A: 36.0, eos: 33.0}).double()
    prompts = random_prompts(lm, 12, seed=4)
    out = CausalVerifier(verifier=model, tokenizer=lm.tokenizer, draft_length=5).run(
        lm, prompts, GenerationConfig(gen_length=24, return_trace=True))
    check_against(out, [hf_greedy(model, p, 24) for p in prompts], eos, lm.tokenizer)
    assert out.stats["accepted_draft_tokens"] > 0
    assert out.trace.commit_step.max() < out.stats["rounds"]


# ------------------------------------------------------------------------------------------------ the rule
def random_pair(g, V):
    """A random (p, q) pair with the awkward cases: zeros in q where p > 0 and vice versa, point masses,
    disjoint supports, p == q."""
    kind = int(torch.randint(0, 6, (1,), generator=g))
    p = torch.rand(V, generator=g, dtype=torch.float64) ** 3
    q = torch.rand(V, generator=g, dtype=torch.float64) ** 3
    p[torch.rand(V, generator=g) < 0.3] = 0
    q[torch.rand(V, generator=g) < 0.3] = 0
    p[int(torch.randint(0, V, (1,), generator=g))] += 0.1
    q[int(torch.randint(0, V, (1,), generator=g))] += 0.1
    if kind == 1:  # point-mass proposal (how multi-step drafts are verified)
        q = torch.nn.functional.one_hot(torch.randint(0, V, (1,), generator=g), V)[0].double()
    elif kind == 2 and V > 1:  # disjoint supports
        half = V // 2
        p[:half], q[half:] = 0, 0
        p[0 if half == 0 else half] += 0.1
        q[0] += 0.1
    elif kind == 3:
        q = p.clone()
    elif kind == 4:  # point-mass target
        p = torch.nn.functional.one_hot(torch.randint(0, V, (1,), generator=g), V)[0].double()
    return p / p.sum(), q / q.sum()


def test_acceptance_rule_emits_exactly_the_target():
    g = torch.Generator().manual_seed(0)
    for i in range(600):
        V = [1, 2, 3, 5, 17, 262][i % 6]
        p, q = random_pair(g, V)
        a = accept_probabilities(p, q)
        assert bool(((a >= 0) & (a <= 1)).all())
        res = residual_distribution(p, q)
        assert bool((res >= 0).all()) and abs(float(res.sum()) - 1) < 1e-12
        assert bool((res[p <= q] == 0).all()) or torch.equal(res, p)
        # analytically: P(emit y) = q(y) a(y) + (1 - sum_x q(x) a(x)) res(y)
        kept = q * a
        analytic = kept + (1 - kept.sum()) * res
        assert torch.allclose(analytic, p, rtol=0, atol=1e-9), (p, q, analytic)
        assert torch.allclose(emitted_distribution(p, q), p, rtol=0, atol=1e-9)
    # batched, as the verifier calls it
    pairs = [random_pair(g, 7) for _ in range(32)]
    P, Q = torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])
    assert torch.allclose(emitted_distribution(P, Q), P, rtol=0, atol=1e-9)


def test_a_wrong_rule_would_be_caught():
    """The exact check has teeth: accepting with min(1, q/p), or resampling from p itself, breaks it."""
    g = torch.Generator().manual_seed(1)
    p, q = random_pair(g, 5)
    while torch.allclose(p, q):
        p, q = random_pair(g, 5)
    wrong_accept = q * torch.clamp(q / p.clamp(min=1e-30), max=1)
    assert not torch.allclose(wrong_accept + (1 - wrong_accept.sum()) * residual_distribution(p, q), p, atol=1e-6)
    kept = q * accept_probabilities(p, q)
    assert not torch.allclose(kept + (1 - kept.sum()) * p, p, atol=1e-6)


def test_speculative_sample_draws_from_the_target():
    """Seeded smoke test of the sampler itself: drafts x_i ~ q_i, targets p_i fixed. The first emitted token is
    distributed as p_0, the second (after an accepted first draft) as p_1. Chi-square at 8k draws; with a random
    seed it fails with probability about 1e-6 per check (threshold = the 1 - 1e-6 quantile)."""
    g = torch.Generator().manual_seed(3)
    V = 6
    p = torch.stack([random_pair(g, V)[0] for _ in range(3)])
    q = torch.stack([random_pair(g, V)[1] for _ in range(2)])
    q[0] = 0.5 * q[0] + 0.5 * p[0]  # so that the first draft is accepted often enough to test the second
    N = 8000
    first, second = torch.zeros(V), torch.zeros(V)
    for _ in range(N):
        draft = torch.multinomial(q, 1, generator=g).squeeze(1)
        emitted, k = speculative_sample(p, q, draft, g)
        assert len(emitted) == k + 1 and emitted[:k] == draft[:k].tolist()
        first[emitted[0]] += 1
        if k >= 1:
            second[emitted[1]] += 1

    def chi2_ok(counts, target):
        n = counts.sum()
        keep = target > 0
        assert float(counts[~keep].sum()) == 0, "a token of probability 0 was emitted"
        stat = float(((counts[keep] - n * target[keep]) ** 2 / (n * target[keep])).sum())
        dof = int(keep.sum()) - 1
        return stat < dof + 4.75 * math.sqrt(2 * dof) + 12  # generous 1 - 1e-6 bound for dof <= 5

    assert chi2_ok(first, p[0].float())
    assert second.sum() > 2000 and chi2_ok(second, p[1].float())


@pytest.mark.parametrize("draft_steps", [1, 2])
def test_sampling_smoke(drafter, causal_path, causal_model, draft_steps):
    """End to end at temperature 0.5: the first answer token of one prompt, over 240 runs with seeds 0..239 (all
    in one engine), is A as often as the causal model's own distribution says (5 sigma: false failure ~6e-7), and
    each output is reproducible from its seed."""
    prompt = [10, 20, 30, 40]
    T, N = 0.5, 240
    with torch.no_grad():
        p = torch.softmax(causal_model(torch.tensor([prompt])).logits[0, -1] / T, -1)
    pa = float(p[A])
    cfg = GenerationConfig(gen_length=3, temperature=T, seed=11, verify="causal",
                           verify_kwargs={"verifier": str(causal_path), "dtype": "float64", "draft_length": 2,
                                          "draft_steps": draft_steps})
    engine = dlm.Engine(drafter, max_rows=N)
    reqs = [engine.submit(prompt, cfg, seed=i) for i in range(N)]
    engine.run()
    out = dlm.api.merge_outputs([r.output for r in reqs])
    freq = float((out.sequences[:, 0] == A).float().mean())
    sigma = math.sqrt(pa * (1 - pa) / N)
    assert 0.1 < pa < 0.9 and abs(freq - pa) < 5 * sigma, (freq, pa)
    assert out.stats["accepted_draft_tokens"] > 0 and out.stats["accepted_draft_tokens"] < out.stats["drafted_tokens"]
    for i in range(8):  # alone, with its seed: the same answer as in the crowd
        again = drafter.generate([prompt], cfg.replace(seed=i))
        assert torch.equal(again.sequences[0], out.sequences[i])


# ------------------------------------------------------------------------------------------------ batched greedy path
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_greedy_drafts_equal_the_per_request_distribution(drafter, dtype):
    """The driver drafts every greedy request of a step with one argmax (``greedy_drafts``); each row equals
    the per-request reference (``draft_distribution(...).argmax(-1)``), ties, the mask token and EOS included."""
    g = torch.Generator().manual_seed(4)
    V, ids = 40, drafter.ids
    logits = torch.randint(-3, 4, (64, V), generator=g).to(dtype)  # few values: many ties
    logits[::3, ids.mask_id % V] = 9.0  # the best logit on the mask token: never drafted
    logits[::2, ids.eos_id % V] = 9.0
    lm = SimpleNamespace(ids=SimpleNamespace(mask_id=ids.mask_id % V, eos_id=ids.eos_id % V))
    eos_inf = torch.rand(64, generator=g) < 0.5
    verifier = CausalVerifier()
    for mask in (eos_inf, None):
        got = verifier.greedy_drafts(logits, lm, mask)
        for i in range(64):
            cfg = GenerationConfig(logits_eos_inf=bool(mask[i]) if mask is not None else False)
            want = verifier.draft_distribution(logits[i : i + 1], lm, cfg).argmax(-1)
            assert int(got[i]) == int(want), (i, mask is None)
    assert (got == lm.ids.eos_id).any() and not (got == lm.ids.mask_id).any()


def test_joined_rows_are_one_view_when_adjacent():
    base = torch.randn(10, 7)
    parts = [base[0:3], base[3:4], base[4:9]]
    joined = _joined(parts)
    assert torch.equal(joined, base[:9]) and joined.data_ptr() == base.data_ptr()  # no copy
    apart = [base[0:3], base[5:7]]
    assert torch.equal(_joined(apart), torch.cat(apart))
    assert torch.equal(_joined([base[2:5]]), base[2:5])


def test_nan_drafts_fail_their_own_request_only(drafter, causal_path):
    """A greedy request whose drafter logits hold NaN gets an error; the others of the same batch do not."""
    cfg = GenerationConfig(gen_length=8, verify="causal", verify_kwargs={"verifier": str(causal_path)})
    driver = CausalVerifier(verifier=str(causal_path)).driver(drafter)
    reqs = [SimpleNamespace(id=i, config=cfg, copies=1, driver_state=_State([1, 2])) for i in range(3)]
    rows = torch.randn(12, len(drafter.tokenizer))
    rows[5, 3] = float("nan")  # in request 1's rows (4..7)
    core = SimpleNamespace(lm=drafter)
    out = driver._greedy_drafts(core, [(r, rows[4 * i : 4 * i + 4]) for i, r in enumerate(reqs)])
    assert out[id(reqs[0])] is None and out[id(reqs[2])] is None
    failed, err = out[id(reqs[1])]
    assert failed and isinstance(err, GenerationError) and "NaN logits for request 1" in str(err)
    assert len(reqs[0].driver_state.draft) == 4 and reqs[1].driver_state.draft is None


def test_batched_drafts_keep_each_requests_logits_eos_inf(drafter, causal_path):
    eos = drafter.ids.eos_id
    driver = CausalVerifier(verifier=str(causal_path)).driver(drafter)
    configs = [GenerationConfig(gen_length=8, logits_eos_inf=flag) for flag in (False, True, False)]
    reqs = [SimpleNamespace(id=i, config=c, copies=1, driver_state=_State([1])) for i, c in enumerate(configs)]
    rows = torch.randn(9, len(drafter.tokenizer))
    rows[:, eos] = 50.0  # EOS is every position's best token
    driver._greedy_drafts(SimpleNamespace(lm=drafter), [(r, rows[3 * i : 3 * i + 3]) for i, r in enumerate(reqs)])
    drafts = [r.driver_state.draft for r in reqs]
    assert drafts[0] == [eos] * 3 and drafts[2] == [eos] * 3 and eos not in drafts[1]


# ------------------------------------------------------------------------------------------------ errors
def test_tokenizer_mismatch_names_what_differs(drafter, diffusion_models, causal_model, tmp_path, causal_path):
    dream_tok = diffusion_models["dream-2"].tokenizer
    with pytest.raises(ConfigError, match=r"shares the diffusion model's tokenizer; they differ: .*only in the "
                                          r"diffusion model's tokenizer, e\.g\. '<\|startoftext\|>'"):
        CausalVerifier(verifier=causal_model, tokenizer=dream_tok).run(drafter, [[1, 2]],
                                                                       GenerationConfig(gen_length=4))
    # same vocabulary, another EOS
    folder = tmp_path / "other-eos"
    shutil.copytree(causal_path, folder)
    tcfg = json.loads((folder / "tokenizer_config.json").read_text())
    tcfg["eos_token"] = "<|eot_id|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(tcfg))
    cfg = GenerationConfig(gen_length=4, verify="causal", verify_kwargs={"verifier": str(folder)})
    with pytest.raises(ConfigError, match=r"eos_token: '<\|endoftext\|>' \(diffusion\) vs '<\|eot_id\|>' \(causal\)"):
        drafter.generate([[1, 2]], cfg)
    assert tokenizer_differences(drafter.tokenizer, drafter.tokenizer) == []


def test_tokenizer_check_is_remembered_until_a_tokenizer_changes(drafter, causal_path):
    from transformers import AutoTokenizer

    mine, theirs = AutoTokenizer.from_pretrained(str(causal_path)), AutoTokenizer.from_pretrained(str(causal_path))
    assert tokenizer_differences(mine, theirs) == [] and tokenizer_differences(mine, theirs) == []
    theirs.add_tokens(["<|a-new-token|>"])  # the causal tokenizer grows: checked again, not remembered
    assert any("only in the causal model's tokenizer" in d for d in tokenizer_differences(mine, theirs))
    theirs.eos_token = "<|a-new-token|>"
    assert any(d.startswith("eos_token") for d in tokenizer_differences(mine, theirs))
    import tokenizers  # a tokenizer object without len(): compared (and remembered) all the same

    bare = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "b": 1}, unk_token="a"))
    assert tokenizer_differences(bare, bare) == [] and tokenizer_differences(bare, bare) == []


def test_missing_default_verifier_is_a_clear_error(drafter, tmp_path, monkeypatch):
    import dlm.assets

    monkeypatch.setattr(dlm.assets, "ASSETS", tmp_path)
    with pytest.raises(CheckpointError, match=r"needs a causal verifier model and none was given; the default is "
                                              r"the bundled dlm-tiny-ar, which is not available.*'verifier'"):
        drafter.generate([[1, 2]], GenerationConfig(gen_length=4, verify="causal"))


def test_other_errors(drafter, causal_path, tmp_path):
    def run(prompts, **kw):
        cfg = GenerationConfig(gen_length=kw.pop("gen_length", 8), verify="causal",
                               verify_kwargs={"verifier": str(causal_path), **kw})
        return drafter.generate(prompts, cfg)

    with pytest.raises(ConfigError, match="needs 518 positions but the model's context is 512"):
        run([[1] * 510], gen_length=8)
    with pytest.raises(ConfigError, match="draft_length must be an integer >= 1, got 0"):
        run([[1]], draft_length=0)
    with pytest.raises(ConfigError, match=r"has no parameter\(s\) 'blocks'"):
        run([[1]], blocks=2)
    with pytest.raises(CheckpointError, match="has no config.json"):
        drafter.generate([[1]], GenerationConfig(gen_length=4, verify="causal",
                                                 verify_kwargs={"verifier": str(tmp_path)}))
    small = tiny_causal_model(len(drafter.tokenizer), drafter.ids.eos_id, max_position=16)
    with pytest.raises(ConfigError, match=r"prompt 0 has 10 tokens; with gen_length=8 the causal verifier needs 18 "
                                          r"positions but its context is 16"):
        CausalVerifier(verifier=small, tokenizer=drafter.tokenizer).run(drafter, [[1] * 10],
                                                                        GenerationConfig(gen_length=8))


# ------------------------------------------------------------------------------------------------ registry
def test_builtin_and_plugin_verifiers(drafter):
    assert {"stepwise", "causal"} <= set(dlm.verify.names())

    @register_verifier("stepwise_k2_test")
    class K2(dlm.verify.StepwiseVerifier):
        """A plugin: stepwise verification with two drafts by default."""

        def __init__(self, **kwargs):
            super().__init__(**{"drafts": 2, **kwargs})

    try:
        cfg = GenerationConfig(gen_length=16, block_length=8)
        ref = drafter.generate([[5, 6, 7]], cfg)
        out = drafter.generate([[5, 6, 7]], cfg.replace(verify="stepwise_k2_test"))
        assert torch.equal(out.sequences, ref.sequences)
        assert out.stats["drafted_tokens"] <= 2 * out.stats["row_rounds"]
    finally:
        VERIFIERS.unregister("stepwise_k2_test")
