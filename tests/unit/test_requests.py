"""Requests: every range, mode and default defined once, and validated when a request is made."""

from __future__ import annotations

import pytest
from conftest import make_chatml_tokenizer, make_tiny_model

import lenskit
from lenskit import errors
from lenskit.requests import (
    MAX_NEW_TOKENS,
    SEED,
    TOP_K,
    IntOption,
    LensRequest,
    PairwiseRequest,
    SweepRequest,
    check_context,
    check_position,
    few,
    resolve_layers,
    resolve_positions,
)


@pytest.mark.parametrize("value", [0, 51, -3, 2.5, "5", True, None])
def test_top_k_range_and_message(value):
    with pytest.raises(errors.InputError, match=r"top_k must be an integer in 1\.\.50") as info:
        LensRequest("hi", top_k=value)
    with pytest.raises(errors.InputError) as same:
        TOP_K.check(value)
    assert str(info.value) == str(same.value)  # one rule, one message


def test_int_option_bounds_and_flag():
    opt = IntOption("max_things", "Things", 2, 4, 3, "help")
    assert opt.flag == "--max-things" and opt.describe() == "an integer in 2..4"
    assert [opt.check(v) for v in (2, 3, 4)] == [2, 3, 4]
    for bad in (1, 5):
        with pytest.raises(errors.InputError, match="max_things must be an integer in 2..4"):
            opt.check(bad)
    open_ended = IntOption("n", "N", 1, None, None, "help")
    assert open_ended.describe() == "an integer >= 1" and open_ended.check(10**9) == 10**9
    assert open_ended.check_optional(None) is None


def test_defaults_come_from_the_options():
    lens, sweep = LensRequest("hi"), SweepRequest("hi")
    assert lens.top_k == TOP_K.default and sweep.top_k == TOP_K.default
    assert sweep.max_new_tokens == MAX_NEW_TOKENS.default and sweep.seed == SEED.default


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"max_new_tokens": 0}, errors.GenerationLengthError, "max_new_tokens"),
        ({"max_new_tokens": 65}, errors.GenerationLengthError, "1..64"),
        ({"layers": []}, errors.LayerSelectionError, "empty"),
        ({"layers": "1,2"}, errors.LayerSelectionError, "block indices"),
        ({"layers": [1.5]}, errors.LayerSelectionError, "integers"),
        ({"positions": "everything"}, errors.PositionSelectionError, "template"),
        ({"positions": ["a"]}, errors.PositionSelectionError, "integers"),
        ({"intervention": "zap"}, errors.UnknownInterventionError, "zap"),
        ({"strategy": "fast"}, errors.InterventionError, "strategy"),
        ({"seed": -1}, errors.InterventionError, "seed"),
        ({"seed": 2**31}, errors.InterventionError, "seed"),
        ({"batch_size": 0}, errors.InterventionError, "batch_size"),
        ({"top_k": 0}, errors.InputError, "top_k"),
        ({"chat": "yes"}, errors.InputError, "chat"),
        ({"system": 3}, errors.InputError, "system"),
        ({"lens": "tuned-by-magic"}, errors.InputError, "lens"),
    ],
)
def test_sweep_request_rejects(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        SweepRequest("hi", **kwargs)


def test_requests_normalise_and_hash():
    a = SweepRequest("hi", layers=[3, 1], positions=[5, 2])
    assert a.layers == (3, 1) and a.positions == (5, 2)
    assert a == SweepRequest("hi", layers=(3, 1), positions=(5, 2))
    assert hash(a) == hash(SweepRequest("hi", layers=(3, 1), positions=(5, 2)))
    assert SweepRequest("hi", layers=4).layers == (4,)
    assert hash(LensRequest("hi", target=" Paris")) == hash(LensRequest("hi", target=" Paris"))


def test_target_and_position_types():
    with pytest.raises(errors.TargetError, match="text"):
        LensRequest("hi", target=1.5)
    with pytest.raises(errors.PositionSelectionError, match="int"):
        PairwiseRequest("hi", position="last")


def test_resolve_layers_and_positions():
    assert resolve_layers(None, 3) == [0, 1, 2]
    assert resolve_layers([2, 0, 2], 3) == [0, 2]
    with pytest.raises(errors.LayerSelectionError, match=r"\[3\] out of range.*3 blocks"):
        resolve_layers([0, 3], 3)
    assert resolve_positions("template", 10, [8, 9]) == [8, 9]
    assert resolve_positions("all-prompt", 3, []) == [0, 1, 2]
    assert resolve_positions([4, 1, 4], 5, []) == [1, 4]
    with pytest.raises(errors.PositionSelectionError, match="no chat-template tokens"):
        resolve_positions("template", 5, [])
    with pytest.raises(errors.PositionSelectionError, match="out of range"):
        resolve_positions([5], 5, [])


def test_position_and_context_rules():
    assert check_position(-1, 4) == 3 and check_position(0, 4) == 0
    with pytest.raises(errors.PositionSelectionError, match="-4..3"):
        check_position(4, 4)
    check_context(10, 5, 14, reads_last=False)  # reads 14 tokens: fits
    with pytest.raises(errors.GenerationLengthError, match="read 15, more than its context"):
        check_context(10, 5, 14, reads_last=True)
    check_context(10, 64, None, reads_last=True)  # no known context: no limit


def test_few_elides_long_lists():
    assert few([1, 2]) == "[1, 2]"
    assert few(list(range(100))) == "[0, 1, 2, ..., 97, 98, 99] (100 indices)"


def test_system_prompt_on_a_raw_prompt_is_one_rule():
    """The library's PromptError is the only copy of this rule (the app and CLI show it)."""
    tok = make_chatml_tokenizer()
    model = make_tiny_model("llama", len(tok))
    with pytest.raises(errors.PromptError, match="system prompt needs the chat template"):
        lenskit.run(model, tok, LensRequest("hi there", chat=False, system="Be brief."))


def test_run_dispatches_on_the_request():
    tok = make_chatml_tokenizer()
    model = make_tiny_model("llama", len(tok))
    lens = lenskit.run(model, tok, LensRequest("What is the capital", top_k=2))
    assert isinstance(lens, lenskit.LensResult) and lens.top_k == 2
    pair = lenskit.run(model, tok, PairwiseRequest("What is the capital", position=-1))
    assert isinstance(pair, lenskit.PairwiseKL) and pair.kl.shape == (lens.n_rows, lens.n_rows)
    report = lenskit.run(model, tok, SweepRequest("What is the capital", max_new_tokens=2))
    assert isinstance(report, lenskit.SweepReport) and report.generation is None
    with pytest.raises(TypeError, match="LensRequest"):
        lenskit.run(model, tok, "What is the capital")
