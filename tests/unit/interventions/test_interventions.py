"""Tests of lenskit.interventions: greedy generation, intervention sweeps, layer pairwise KL.

Tiny random models from conftest (3 blocks); their attention/MLP weights are re-drawn larger
than the default init so that blocks change the predictions measurably.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import make_chatml_tokenizer, make_tiny_model, strong_model

from lenskit import (
    INTERVENTIONS,
    GenerationLengthError,
    InterventionError,
    LayerSelectionError,
    PositionSelectionError,
    SweepResult,
    UnknownInterventionError,
    greedy_generate,
    intervention_sweep,
    layer_pairwise_kl,
    lens_on_generation,
    run_lens,
)
from lenskit.model import decoder_layers, find_readout
from lenskit.ops import kl_div
from lenskit.text.prompts import encode_prompt

PROMPT = "What is the capital of Australia?"
# Tolerance for "equal up to float rounding" between batched and sequential KL (nats).
ATOL = 2e-5


_strong = strong_model


@pytest.fixture(scope="module")
def tok():
    return make_chatml_tokenizer()


@pytest.fixture(scope="module")
def llama(tok):
    return _strong(make_tiny_model("llama", len(tok)))


def _prompt_ids(tok, chat: bool = True) -> list[int]:
    return encode_prompt(tok, PROMPT, chat=chat).input_ids


# ----------------------------------------------------------------------------- generation


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_greedy_generate_equals_model_generate(tok, family):
    model = _strong(make_tiny_model(family, len(tok)))
    ids = _prompt_ids(tok)
    ours = greedy_generate(model, ids, 8)
    ref = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=8)
    assert ours == ref[0, len(ids) :].tolist()
    res = intervention_sweep(model, tok, PROMPT, max_new_tokens=8, layers=[0])
    assert res.generated_ids.tolist() == ours
    assert res.n_generated == 8


def test_generation_stops_at_eos(tok):
    model = copy.deepcopy(_strong(make_tiny_model("llama", len(tok))))
    ids = _prompt_ids(tok)
    first_two = greedy_generate(model, ids, 2)
    model.generation_config.eos_token_id = first_two[1]
    res = intervention_sweep(model, tok, PROMPT, max_new_tokens=5)
    assert res.generated_ids.tolist() == first_two  # EOS is the last generated token
    ref = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=5)
    assert ref[0, len(ids) :].tolist() == first_two
    assert res.kl.shape == (3, 2)
    assert res.max_new_tokens == 5


# ----------------------------------------------------------------------------- sweep maths


def test_empty_positions_give_zero(tok, llama):
    for intervention in INTERVENTIONS:
        res = intervention_sweep(llama, tok, PROMPT, positions=[], intervention=intervention)
        assert res.positions.size == 0
        assert np.array_equal(res.kl, np.zeros((3, 5), np.float32))
        assert (res.top_ids_intervened == res.generated_ids[None]).all()
        np.testing.assert_allclose(
            res.generated_prob_intervened, np.broadcast_to(res.generated_prob_clean, (3, 5))
        )
    # A raw prompt has no template tokens: the default "template" would sweep nothing.
    with pytest.raises(PositionSelectionError, match="no chat-template tokens"):
        intervention_sweep(llama, tok, PROMPT, chat=False, positions="template")


@pytest.mark.parametrize("intervention", INTERVENTIONS)
def test_kl_nonnegative_finite_and_nontrivial(tok, llama, intervention):
    res = intervention_sweep(llama, tok, PROMPT, intervention=intervention)
    assert res.kl.shape == (3, 5) and res.kl.dtype == np.float32
    assert np.isfinite(res.kl).all() and (res.kl >= 0).all()
    assert res.kl.max() > 0.05, res.kl
    assert res.positions.tolist() == encode_prompt(tok, PROMPT).template_positions
    assert ((res.generated_prob_intervened >= 0) & (res.generated_prob_intervened <= 1)).all()


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "opt", "qwen3"])
@pytest.mark.parametrize("intervention", INTERVENTIONS)
@pytest.mark.parametrize("positions", ["template", [0, 33, 38]], ids=["template", "from0"])
def test_batched_equals_sequential(tok, family, intervention, positions):
    """Every strategy equals one plain forward pass per block (with a hook) to float
    rounding; "template" exercises the KV-cache split, "from0" the full-length replay.
    gemma2's sliding window (16) is shorter than the prompt."""
    model = _strong(make_tiny_model(family, len(tok)))
    kw = dict(positions=positions, intervention=intervention, seed=3)
    seq = intervention_sweep(model, tok, PROMPT, strategy="sequential", **kw)
    assert seq.kl.max() > 1e-3  # the comparison below must not be between zeros
    for strategy, batch_size in [
        ("batched", None),
        ("batched", 2),
        ("prefix", None),
        ("prefix", 2),
    ]:
        other = intervention_sweep(
            model, tok, PROMPT, strategy=strategy, batch_size=batch_size, **kw
        )
        np.testing.assert_allclose(other.kl, seq.kl, atol=ATOL, rtol=1e-4, err_msg=strategy)
        np.testing.assert_allclose(
            other.generated_prob_intervened, seq.generated_prob_intervened, atol=1e-5
        )
        assert (other.top_ids_intervened == seq.top_ids_intervened).all()


def test_layer_subset_matches_full_sweep(tok, llama):
    full = intervention_sweep(llama, tok, PROMPT, positions="all-prompt")
    part = intervention_sweep(llama, tok, PROMPT, positions="all-prompt", layers=[2, 1, 2])
    assert part.layers.tolist() == [1, 2]
    np.testing.assert_allclose(part.kl, full.kl[1:], atol=ATOL)


def test_last_block_at_unread_positions_changes_nothing(tok, llama):
    """After the last block nothing reads the other positions: only their own predictions
    change, and positions < n_prompt - 1 predict no generated token."""
    n = len(_prompt_ids(tok))
    for intervention in INTERVENTIONS:
        res = intervention_sweep(
            llama, tok, PROMPT, positions=list(range(n - 1)), intervention=intervention
        )
        np.testing.assert_allclose(res.kl[2], 0.0, atol=ATOL)  # block 2 is the last one
        assert res.kl[0].max() > 0.05  # earlier blocks are read by later positions
    # At the last prompt position the last block changes Gen0's prediction only.
    res = intervention_sweep(llama, tok, PROMPT, positions=[n - 1], layers=[2])
    assert res.kl[0, 0] > 0.05
    np.testing.assert_allclose(res.kl[0, 1:], 0.0, atol=ATOL)


def _logits_with_hook(model, ids, layer, hook):
    h = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0]
    finally:
        h.remove()


def _clean_and_seq(tok, model, res):
    n = res.n_prompt
    seq = res.prompt_token_ids.tolist() + res.generated_ids[:-1].tolist()
    with torch.no_grad():
        clean = model(torch.tensor([seq])).logits[0, n - 1 :]
    return n, seq, clean


def test_skip_everywhere_equals_deleting_the_block(tok, llama):
    """With G = 1 every position is a prompt position: skip at all of them = no block l."""
    res = intervention_sweep(llama, tok, PROMPT, positions="all-prompt", max_new_tokens=1)
    n, seq, clean = _clean_and_seq(tok, llama, res)
    for layer in range(3):
        pruned = copy.deepcopy(llama)
        del pruned.model.layers[layer]
        pruned.config.num_hidden_layers = 2
        with torch.no_grad():
            ref = pruned(torch.tensor([seq]), use_cache=False).logits[0, n - 1 :]
        assert res.kl[layer, 0] == pytest.approx(float(kl_div(clean, ref)[0]), abs=ATOL)


def test_mean_and_noise_definitions(tok, llama):
    """Independent re-implementation of "mean" and "noise" with a plain hook."""
    positions = [5, 9, 40]
    layer = 1
    res_mean = intervention_sweep(llama, tok, PROMPT, positions=positions, intervention="mean")
    n, seq, clean = _clean_and_seq(tok, llama, res_mean)
    others = [p for p in range(1, n) if p not in positions]

    def mean_hook(module, args, out):
        out = out.clone()
        out[0, positions] = out[0, others].mean(dim=0)
        return out

    ref = _logits_with_hook(llama, seq, layer, mean_hook)[n - 1 :]
    np.testing.assert_allclose(res_mean.kl[layer], kl_div(clean, ref).numpy(), atol=ATOL)

    # noise: expected norm NOISE_SCALE x the residual norm, independent of batching.
    a = intervention_sweep(llama, tok, PROMPT, intervention="noise", seed=7)
    b = intervention_sweep(llama, tok, PROMPT, intervention="noise", seed=7, strategy="sequential")
    c = intervention_sweep(llama, tok, PROMPT, intervention="noise", seed=8)
    np.testing.assert_array_equal(
        a.kl, intervention_sweep(llama, tok, PROMPT, intervention="noise", seed=7).kl
    )
    np.testing.assert_allclose(a.kl, b.kl, atol=ATOL)
    assert np.abs(a.kl - c.kl).max() > 1e-4
    assert a.seed == 7


def test_noise_at_a_position_does_not_depend_on_the_others(tok, llama):
    """The noise at (layer, position) is fixed by (seed, layer): selecting more positions in
    the last block (which nothing reads afterwards) leaves Gen0's KL unchanged."""
    n = len(_prompt_ids(tok))
    one = intervention_sweep(
        llama, tok, PROMPT, positions=[n - 1], intervention="noise", layers=[2]
    )
    many = intervention_sweep(
        llama, tok, PROMPT, positions=[3, 17, n - 1], intervention="noise", layers=[2]
    )
    assert one.kl[0, 0] > 0
    assert many.kl[0, 0] == pytest.approx(one.kl[0, 0], abs=ATOL)


def test_progress_reports_every_layer(tok, llama):
    """progress(fraction, message) as in run_lens: generation, then each batch of blocks."""
    calls = []
    intervention_sweep(llama, tok, PROMPT, batch_size=2, progress=lambda f, m: calls.append((f, m)))
    assert calls == [
        (0.0, "Generating 5 tokens"),
        (0.0, "Clean run"),
        (2 / 3, "Swept 2/3 blocks"),
        (1.0, "Swept 3/3 blocks"),
    ]
    calls.clear()
    intervention_sweep(
        llama, tok, PROMPT, strategy="sequential", progress=lambda f, m: calls.append((f, m))
    )
    assert [f for f, _ in calls[2:]] == [1 / 3, 2 / 3, 1.0]


def test_progress_bar(tok, llama, capsys):
    """progress=True draws a tqdm bar on stderr, as run_lens and load_model do."""
    intervention_sweep(llama, tok, PROMPT, max_new_tokens=2, progress=True)
    assert "Swept 3/3 blocks" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"progress": "yes"}, "progress must be a callback"),
        ({"seed": -1}, "seed"),
        ({"batch_size": 0}, "batch_size"),
        ({"strategy": "fast"}, "strategy"),
        ({"intervention": "zap"}, "zap"),
    ],
)
def test_options_are_checked_before_generating(tok, llama, monkeypatch, kwargs, pattern):
    from lenskit.interventions import sweep

    def no_generation(*args, **kw):
        raise AssertionError("generated before checking the options")

    monkeypatch.setattr(sweep, "greedy_generate", no_generation)
    with pytest.raises((ValueError, TypeError), match=pattern):
        intervention_sweep(llama, tok, PROMPT, **kwargs)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_prefix_strategy_starts_at_the_first_intervened_position(tok, family):
    """The fast path really is used: rows start at their own block and at min(positions)
    (earlier positions come from the clean KV cache), and it self-checks against the model."""
    from lenskit.interventions.replay import _prepare_clean

    model = _strong(make_tiny_model(family, len(tok)))
    enc = encode_prompt(tok, PROMPT)
    gen = greedy_generate(model, enc.input_ids, 3)
    ids = torch.tensor([enc.input_ids + gen[:-1]])
    readout = find_readout(model).logits
    blocks = decoder_layers(model)
    used, clean = _prepare_clean(model, blocks, readout, ids, 3, enc.template_positions, "auto")
    assert used == "prefix" and clean.split == min(enc.template_positions)
    used, clean = _prepare_clean(model, blocks, readout, ids, 3, [0, 5], "auto")
    assert used == "prefix" and clean.split == 0


def test_auto_falls_back_without_a_readout(tok, llama, monkeypatch):
    from lenskit.interventions import sweep

    enc = encode_prompt(tok, PROMPT)
    gen = greedy_generate(llama, enc.input_ids, 3)
    kw = dict(positions=enc.template_positions)
    b = sweep.sweep_token_ids(llama, enc.input_ids, gen, **kw)
    monkeypatch.setattr(sweep, "_model_readout", lambda model: None)  # no read-out found
    a = sweep.sweep_token_ids(llama, enc.input_ids, gen, **kw)
    assert (a["strategy"], b["strategy"]) == ("batched", "prefix")
    np.testing.assert_allclose(a["kl"], b["kl"], atol=ATOL)
    with pytest.raises(InterventionError, match="prefix"):
        sweep.sweep_token_ids(llama, enc.input_ids, gen, strategy="prefix", **kw)


def test_hooks_ignore_other_threads(tok, llama):
    """The model may be shared (Streamlit caches one per process): a sweep's hooks must not
    touch forward passes that other threads run through the same blocks meanwhile."""
    import threading

    from lenskit.interventions.hooks import _InterventionHook

    skip = INTERVENTIONS["skip"]
    hook = _InterventionHook(skip, torch.tensor([1]), None, layer=0, seed=0, n_prompt=3)
    x, y = torch.zeros(1, 3, 4), torch.ones(1, 3, 4)
    assert hook(None, (x,), {}, y)[0, 1].eq(0).all()  # this thread: edited
    seen = []
    worker = threading.Thread(target=lambda: seen.append(hook(None, (x,), {}, y)))
    worker.start()
    worker.join()
    assert seen == [None]  # another thread: untouched


# ----------------------------------------------------------------------------- lens on generation


def test_lens_on_generation(tok, llama):
    res, n_prompt = lens_on_generation(llama, tok, PROMPT, max_new_tokens=4, top_k=3)
    enc = encode_prompt(tok, PROMPT)
    gen = greedy_generate(llama, enc.input_ids, 4)
    assert n_prompt == len(enc.input_ids)
    assert res.token_ids.tolist() == enc.input_ids + gen
    assert res.n_rows == 4 and res.n_positions == n_prompt + 4 and res.top_k == 3
    assert res.template_positions.tolist() == enc.template_positions
    assert res.prompt == PROMPT and res.chat
    # Gen j is the model's own top-1 at position n_prompt - 1 + j (row "out").
    assert res.top_ids[-1, n_prompt - 1 : n_prompt + 3, 0].tolist() == gen
    # Causality: the prompt columns equal the plain lens over the prompt alone.
    plain = run_lens(llama, tok, PROMPT, top_k=3)
    np.testing.assert_allclose(res.entropy[:, :n_prompt], plain.entropy, atol=1e-4)
    np.testing.assert_allclose(res.kl_to_final[:, :n_prompt], plain.kl_to_final, atol=1e-4)
    with pytest.raises(GenerationLengthError):
        lens_on_generation(llama, tok, PROMPT, max_new_tokens=0)
    with pytest.raises(ValueError):
        lens_on_generation(llama, tok, PROMPT, top_k=0)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_new_tokens": 0}, GenerationLengthError),
        ({"max_new_tokens": 65}, GenerationLengthError),
        ({"max_new_tokens": 2.0}, GenerationLengthError),
        ({"layers": []}, LayerSelectionError),
        ({"layers": [3]}, LayerSelectionError),
        ({"layers": [-1]}, LayerSelectionError),
        ({"layers": ["0"]}, LayerSelectionError),
        ({"positions": "bogus"}, PositionSelectionError),
        ({"positions": [10_000]}, PositionSelectionError),
        ({"positions": [-1]}, PositionSelectionError),
        ({"positions": [1.5]}, PositionSelectionError),
        ({"positions": "all-prompt", "intervention": "mean"}, PositionSelectionError),
        ({"intervention": "zero"}, UnknownInterventionError),
        ({"seed": -1, "intervention": "noise"}, InterventionError),
        ({"batch_size": 0}, InterventionError),
        ({"strategy": "fast"}, InterventionError),
    ],
)
def test_bad_input_raises(tok, llama, kwargs, error):
    with pytest.raises(error) as info:
        intervention_sweep(llama, tok, PROMPT, **kwargs)
    assert isinstance(info.value, ValueError)
    assert str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "error", "shown"),
    [
        ({"layers": range(10**6)}, LayerSelectionError, "[3, 4, 5, ..., 999997, 999998, 999999]"),
        (
            {"positions": range(-5, 10**6)},
            PositionSelectionError,
            "[-5, -4, -3, ..., 999997, 999998, 999999]",
        ),
    ],
)
def test_out_of_range_lists_are_elided(tok, llama, kwargs, error, shown):
    with pytest.raises(error) as info:
        intervention_sweep(llama, tok, PROMPT, **kwargs)
    assert shown in str(info.value) and len(str(info.value)) < 300


def test_mean_with_only_position_zero_left_raises(tok, llama):
    n = len(_prompt_ids(tok))
    with pytest.raises(PositionSelectionError, match="position 0 excluded"):
        intervention_sweep(llama, tok, PROMPT, positions=list(range(1, n)), intervention="mean")


# ----------------------------------------------------------------------------- result


def _result(**over) -> SweepResult:
    data = dict(
        layers=[0, 2],
        generated_ids=[5, 6, 7],
        generated_tokens=["ĠThe", "Ġcap", "ital"],
        generated_display_tokens=["␣The", "␣cap", "ital"],
        kl=np.arange(6, dtype=np.float32).reshape(2, 3),
        top_ids_intervened=[[5, 6, 8], [5, 9, 7]],
        top_tokens_intervened=[["ĠThe", "Ġcap", "x"], ["ĠThe", "y", "ital"]],
        generated_prob_clean=[0.5, 0.4, 0.3],
        generated_prob_intervened=[[0.5, 0.3, 0.1], [0.4, 0.2, 0.3]],
        positions=[1, 3],
        prompt_token_ids=[1, 2, 3, 4],
        prompt_tokens=["a", "b", "c", "d"],
        intervention="skip",
        num_blocks=3,
        max_new_tokens=5,
        prompt="hi",
        system=None,
    )
    data.update(over)
    return SweepResult(**data)


def test_sweep_result_roundtrip_and_frame(tok, llama):
    res = intervention_sweep(llama, tok, PROMPT, intervention="noise", seed=2)
    back = SweepResult.from_json(res.to_json())
    for name in ("layers", "generated_ids", "kl", "top_ids_intervened", "positions"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    assert back.generated_tokens.tolist() == res.generated_tokens.tolist()
    assert back.top_tokens_intervened.tolist() == res.top_tokens_intervened.tolist()
    assert (back.intervention, back.seed, back.prompt, back.chat) == ("noise", 2, PROMPT, True)
    assert back.units["kl"] == "nats"
    frame = res.to_frame()
    assert len(frame) == 3 * 5
    assert frame["gen_label"].tolist()[:5] == ["Gen0", "Gen1", "Gen2", "Gen3", "Gen4"]
    np.testing.assert_array_equal(frame["kl"].to_numpy().reshape(3, 5), res.kl)
    assert (frame["predicting_position"].iloc[:5] == res.n_prompt - 1 + np.arange(5)).all()
    positions = ",".join(str(t) for t in res.positions)
    assert (frame["intervened_positions"] == positions).all() and (frame["seed"] == 2).all()
    assert res.gen_labels == ["Gen0", "Gen1", "Gen2", "Gen3", "Gen4"]


@pytest.mark.parametrize(
    "over",
    [
        {"kl": np.zeros((2, 2), np.float32)},
        {"layers": [0, 1, 2]},
        {"layers": [2, 0]},
        {"layers": [0, 3]},
        {"positions": [4]},
        {"positions": [3, 1]},
        {"intervention": "zero"},
        {"generated_tokens": ["a", "b"]},
        {"top_ids_intervened": [[1, 2, 3]]},
        {"max_new_tokens": 2},
        {"kl": np.zeros(3, np.float32)},
    ],
)
def test_sweep_result_validation(over):
    _result()  # the base case is valid
    with pytest.raises(ValueError):
        _result(**over)


def test_sweep_result_from_dict_rejects_unknown_fields():
    data = _result().to_dict()
    data["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        SweepResult.from_dict(data)


# ----------------------------------------------------------------------------- pairwise KL


def test_layer_pairwise_kl(tok, llama):
    names, kl = layer_pairwise_kl(llama, tok, PROMPT, -1)
    assert names == ["emb", "1", "2", "out"]
    assert kl.shape == (4, 4) and kl.dtype == np.float32
    assert np.isfinite(kl).all() and (kl >= 0).all()
    np.testing.assert_array_equal(np.diag(kl), 0.0)
    assert kl[0, 3] > 0

    # Independent check: the "out" row against every read-out row via output_hidden_states.
    ids = _prompt_ids(tok)
    readout = find_readout(llama)
    with torch.no_grad():
        out = llama(torch.tensor([ids]), output_hidden_states=True)
        final = out.logits[0, -1]
        rows = [readout.logits(out.hidden_states[i][0, -1]) for i in range(3)] + [final]
    expected = kl_div(final.expand(4, -1), torch.stack(rows)).numpy()
    np.testing.assert_allclose(kl[3], expected, atol=1e-5, rtol=1e-4)

    names2, kl2 = layer_pairwise_kl(llama, tok, PROMPT, len(ids) - 1)
    np.testing.assert_array_equal(kl, kl2)
    _, kl0 = layer_pairwise_kl(llama, tok, PROMPT, 0)
    assert not np.allclose(kl0, kl)


@pytest.mark.parametrize("position", [10_000, -10_000, 1.0, True])
def test_layer_pairwise_kl_bad_position(tok, llama, position):
    with pytest.raises(PositionSelectionError):
        layer_pairwise_kl(llama, tok, PROMPT, position)


def test_generation_may_fill_the_context_exactly(tok, llama):
    """The last generated token is never fed back: prompt + new - 1 tokens may fill the
    context (128 here), one more may not."""
    ctx = llama.config.max_position_embeddings
    prompt = next(
        p for k in range(40, 200) if 80 <= len(tok(p := "capital " * k)["input_ids"]) <= 100
    )
    n_prompt = len(tok(prompt)["input_ids"])
    fits = ctx + 1 - n_prompt
    res = intervention_sweep(
        llama, tok, prompt, chat=False, positions=[1], max_new_tokens=fits, layers=[0]
    )
    assert res.n_prompt == n_prompt
    with pytest.raises(GenerationLengthError, match=f"read {ctx + 1}, more than its context"):
        intervention_sweep(
            llama, tok, prompt, chat=False, positions=[1], max_new_tokens=fits + 1, layers=[0]
        )


def test_lens_on_generation_reuses_a_known_continuation(tok, llama, monkeypatch):
    """generated_ids (the sweep's) give the same lens as generating, without generating."""
    from lenskit.lens import views

    made, n_prompt = lens_on_generation(llama, tok, PROMPT, max_new_tokens=3)
    gen_ids = made.token_ids[n_prompt:].tolist()

    def no_generation(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(views, "greedy_generate", no_generation)
    given, n_given = lens_on_generation(llama, tok, PROMPT, generated_ids=gen_ids)
    assert n_given == n_prompt
    np.testing.assert_array_equal(given.token_ids, made.token_ids)
    np.testing.assert_array_equal(given.entropy, made.entropy)
    with pytest.raises(InterventionError, match="outside the vocabulary"):
        lens_on_generation(llama, tok, PROMPT, generated_ids=[10**6])
    with pytest.raises(InterventionError, match="1..64 token ids, got 0"):
        lens_on_generation(llama, tok, PROMPT, generated_ids=[])


def test_lens_on_generation_reads_every_generated_token(tok, llama):
    """Unlike the sweep, the lens over prompt + generation reads the last generated token
    too: prompt + new tokens must fit the context."""
    ctx = llama.config.max_position_embeddings
    prompt = next(
        p for k in range(40, 200) if 80 <= len(tok(p := "capital " * k)["input_ids"]) <= 100
    )
    n_prompt = len(tok(prompt)["input_ids"])
    ids = [5] * (ctx - n_prompt)
    result, _ = lens_on_generation(llama, tok, prompt, chat=False, generated_ids=ids)
    assert result.n_positions == ctx
    with pytest.raises(
        GenerationLengthError,
        match=f"with {len(ids) + 1} generated tokens the model would read {ctx + 1}, more",
    ):
        lens_on_generation(llama, tok, prompt, chat=False, generated_ids=[*ids, 5])


def test_chat_messages_keep_the_users_text_as_prompt(tok, llama):
    """A list of chat messages is accepted like run_lens does; .prompt is the user's text."""
    messages = [{"role": "user", "content": PROMPT}]
    sweep = intervention_sweep(llama, tok, messages, max_new_tokens=2, layers=[0])
    gen, _ = lens_on_generation(llama, tok, messages, max_new_tokens=2)
    assert sweep.prompt == gen.prompt == PROMPT
    np.testing.assert_array_equal(
        sweep.kl, intervention_sweep(llama, tok, PROMPT, max_new_tokens=2, layers=[0]).kl
    )


def test_sweep_keeps_the_byte_level_flag(tok, llama):
    res = intervention_sweep(llama, tok, PROMPT, max_new_tokens=2, layers=[0])
    assert res.byte_level is True
    assert SweepResult.from_json(res.to_json()).byte_level is True
    gen, _ = lens_on_generation(llama, tok, PROMPT, max_new_tokens=2)
    assert gen.byte_level is True


def test_mean_error_elides_long_position_lists(tok, llama):
    with pytest.raises(PositionSelectionError, match=r"\.\.\., .*\(\d+ indices\)") as info:
        intervention_sweep(llama, tok, PROMPT, positions="all-prompt", intervention="mean")
    assert len(str(info.value)) < 300


def test_layer_pairwise_kl_prompt_beyond_context(tok, llama):
    from lenskit.errors import PromptError

    with pytest.raises(PromptError, match="context of 128 tokens"):
        layer_pairwise_kl(llama, tok, PROMPT * 20, -1)


# ----------------------------------------------------------------------------- real model


@pytest.fixture(scope="session")
def default_model():
    from lenskit import load_model

    return load_model("default")


@pytest.mark.slow
def test_default_model_sweep(default_model):
    model, tokenizer = default_model
    res = intervention_sweep(model, tokenizer, PROMPT)
    assert res.kl.shape == (30, 5)
    answer = tokenizer.convert_tokens_to_string(res.generated_tokens.tolist())
    assert answer.startswith("The capital of Australia"), answer
    assert np.isfinite(res.kl).all() and (res.kl >= 0).all()
    assert res.kl.max() > 0.1
    assert res.positions.size > 0


@pytest.mark.slow
def test_default_model_pairwise_kl_and_lens_on_generation(default_model):
    model, tokenizer = default_model
    names, kl = layer_pairwise_kl(model, tokenizer, PROMPT, -1)
    assert len(names) == 31 and kl.shape == (31, 31)
    assert np.isfinite(kl).all() and not np.diag(kl).any()
    lens, n_prompt = lens_on_generation(model, tokenizer, PROMPT, max_new_tokens=5)
    assert lens.n_positions == n_prompt + 5 and lens.n_rows == 31
    answer = tokenizer.decode(lens.token_ids[n_prompt:].tolist())
    assert answer.startswith("The capital of Australia"), answer


def test_top_token_and_probability_are_the_intervened_runs(tok, llama):
    """top_ids_intervened / generated_prob_intervened come from the intervened logits (here:
    skip everywhere = the model without block l), not from the clean run."""
    res = intervention_sweep(llama, tok, PROMPT, positions="all-prompt", max_new_tokens=1)
    n, seq, clean = _clean_and_seq(tok, llama, res)
    gen = int(res.generated_ids[0])
    assert int(clean[0].argmax()) == gen
    for layer in range(3):
        pruned = copy.deepcopy(llama)
        del pruned.model.layers[layer]
        pruned.config.num_hidden_layers = 2
        with torch.no_grad():
            ref = pruned(torch.tensor([seq]), use_cache=False).logits[0, n - 1]
        assert res.top_ids_intervened[layer, 0] == int(ref.argmax())
        assert res.top_tokens_intervened[layer, 0] == tok.convert_ids_to_tokens(int(ref.argmax()))
        p_gen = float(torch.softmax(ref.float(), -1)[gen])
        assert res.generated_prob_intervened[layer, 0] == pytest.approx(p_gen, abs=1e-5)
        p_clean = float(torch.softmax(clean[0].float(), -1)[gen])
        assert res.generated_prob_clean[0] == pytest.approx(p_clean, abs=1e-5)
    # the comparison is not between identical runs: skipping a block changes the top-1
    assert (res.top_ids_intervened[:, 0] != gen).any()


def test_noise_is_scaled_by_the_residual_rms(tok, llama):
    """ "noise": h_out[t] += NOISE_SCALE * rms(h_out[t]) * eps[t], eps fixed by (seed, l)."""
    from lenskit.interventions.registry import NOISE_SCALE
    from lenskit.interventions.registry import standard_noise as _noise

    positions, layer, seed = [5, 9, 40], 1, 4
    res = intervention_sweep(
        llama, tok, PROMPT, positions=positions, intervention="noise", seed=seed, layers=[layer]
    )
    n, seq, clean = _clean_and_seq(tok, llama, res)
    d = llama.config.hidden_size
    eps = _noise(seed, layer, n, d)[positions]

    def noise_hook(module, args, out):
        out = out.clone()
        h = out[0, positions]
        rms = h.norm(dim=-1, keepdim=True) / d**0.5
        out[0, positions] = h + NOISE_SCALE * rms * eps
        return out

    ref = _logits_with_hook(llama, seq, layer, noise_hook)[n - 1 :]
    np.testing.assert_allclose(res.kl[0], kl_div(clean, ref).numpy(), atol=ATOL)
    assert res.kl[0].max() > 1e-3


def test_sweep_frame_top_changed(tok, llama):
    """The frame's top_changed is True exactly where the intervened top-1 differs from the
    generated token."""
    res = intervention_sweep(llama, tok, PROMPT, positions="all-prompt", max_new_tokens=3)
    changed = res.top_ids_intervened != res.generated_ids[None]
    assert changed.any() and not changed.all()
    frame = res.to_frame()
    np.testing.assert_array_equal(frame["top_changed"].to_numpy().reshape(changed.shape), changed)
