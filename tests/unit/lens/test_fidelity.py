"""lens_fidelity: per row and region, mean KL(out || row) and top-1 agreement with "out"."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_chatml_tokenizer, make_tiny_model, strong_model

import lenskit
from lenskit import InputError
from lenskit.lens import Lens
from lenskit.lens.fidelity import (
    FIDELITY_REGIONS,
    FidelityReport,
    compare_fidelity,
    lens_fidelity,
)
from lenskit.text.prompts import encode_prompt

PROMPTS = [
    "What is the capital of Australia?",
    "The quick brown fox jumps over the lazy dog.",
    "one two three four five",
]


@pytest.fixture(scope="module")
def tok():
    return make_chatml_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return strong_model(make_tiny_model("llama", len(tok)))


class ShiftedLens(Lens):
    """A lens that is not the identity (so its numbers differ from the logit lens's; a shift,
    since the final RMS norm would undo a scale)."""

    name = "shifted"

    def translate(self, states, rows):
        shift = torch.tensor([0.5 + r for r in rows], dtype=states.dtype, device=states.device)
        return states + shift[:, None] * torch.linspace(-1, 1, states.shape[-1])


def _direct(model, tok, lens) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mean KL, top-1 agreement ``[2, R]`` and n ``[2]`` from run_lens rows at the masked
    positions, pooled over the prompts."""
    kl = [[], []]
    hit = [[], []]
    for prompt in PROMPTS:
        res = lenskit.run_lens(model, tok, prompt, top_k=1, lens=lens)
        enc = encode_prompt(tok, prompt)
        user = list(range(*enc.user_span))
        for region, pos in enumerate([list(res.template_positions), user]):
            kl[region].append(res.kl_to_final[:, pos])
            top = res.top_ids[:, pos, 0]
            hit[region].append(top == top[-1:])
    kl_all = [np.concatenate(k, axis=1) for k in kl]
    hit_all = [np.concatenate(h, axis=1) for h in hit]
    return (
        np.stack([k.astype(np.float64).mean(axis=1) for k in kl_all]),
        np.stack([h.mean(axis=1) for h in hit_all]),
        np.array([k.shape[1] for k in kl_all]),
    )


@pytest.mark.parametrize("lens", ["logit", ShiftedLens()])
def test_report_equals_run_lens_rows_at_the_masked_positions(model, tok, lens):
    report = lens_fidelity(model, tok, lens, PROMPTS)
    kl, agree, n = _direct(model, tok, lens)
    np.testing.assert_allclose(report.mean_kl[0], kl, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(report.top1_agreement[0], agree, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(report.n, n)
    assert report.n_transcripts == 3 and report.lenses.tolist() == [getattr(lens, "name", lens)]
    assert report.layer_names.tolist() == ["emb", "1", "2", "out"]
    # The reference row: the logit lens (any lens) agrees with out exactly, KL 0.
    np.testing.assert_array_equal(report.top1_agreement[0, :, -1], [1.0, 1.0])
    np.testing.assert_array_equal(report.mean_kl[0, :, -1], [0.0, 0.0])
    assert (report.mean_kl[0, :, :-1] > 0).all() and (report.top1_agreement[0] < 1).any()


def test_transcripts_as_masks_equal_prompts(model, tok):
    data = []
    for prompt in PROMPTS:
        enc = encode_prompt(tok, prompt)
        template = [p in enc.template_positions for p in range(len(enc))]
        user = [enc.user_span[0] <= p < enc.user_span[1] for p in range(len(enc))]
        data.append({"input_ids": enc.input_ids, "template_mask": template, "user_mask": user})
    from_prompts = lens_fidelity(model, tok, "logit", PROMPTS)
    from_masks = lens_fidelity(model, tok, "logit", data, chunk_size=5)
    np.testing.assert_allclose(from_masks.mean_kl, from_prompts.mean_kl, rtol=1e-6)
    np.testing.assert_array_equal(from_masks.top1_agreement, from_prompts.top1_agreement)
    np.testing.assert_array_equal(from_masks.n, from_prompts.n)


def test_several_lenses_side_by_side(model, tok):
    both = lens_fidelity(model, tok, ["logit", ShiftedLens()], PROMPTS[:2])
    one = lens_fidelity(model, tok, "logit", PROMPTS[:2])
    other = lens_fidelity(model, tok, ShiftedLens(), PROMPTS[:2])
    assert both.lenses.tolist() == ["logit", "shifted"]
    np.testing.assert_allclose(both.mean_kl, np.concatenate([one.mean_kl, other.mean_kl]))
    merged = compare_fidelity([one, other, one])
    assert merged.lenses.tolist() == ["logit", "shifted", "logit (2)"]
    np.testing.assert_array_equal(merged.top1_agreement[2], one.top1_agreement[0])
    assert not np.allclose(both.mean_kl[0, :, :-1], both.mean_kl[1, :, :-1])
    shorter = lens_fidelity(model, tok, "logit", PROMPTS[:1])
    with pytest.raises(InputError, match="other rows or other transcripts"):
        compare_fidelity([one, shorter])
    with pytest.raises(InputError, match="one or more FidelityReport"):
        compare_fidelity([])


def test_frame_and_json_round_trip(model, tok):
    report = lens_fidelity(model, tok, "logit", PROMPTS[:1])
    frame = report.to_frame()
    assert list(frame.columns) == [
        "row", "row_index", "lens", "region", "mean_kl", "top1_agreement", "n",
    ]  # fmt: skip
    assert len(frame) == 2 * 4 and set(frame["region"]) == set(FIDELITY_REGIONS)
    user_out = frame[(frame["region"] == "user") & (frame["row"] == "out")].iloc[0]
    assert user_out["top1_agreement"] == 1.0 and user_out["mean_kl"] == 0.0
    assert user_out["n"] == report.n[1]
    back = FidelityReport.from_json(report.to_json())
    assert back.to_frame().equals(frame)


def test_an_empty_region_is_nan(model, tok):
    enc = encode_prompt(tok, PROMPTS[0])
    n = len(enc)
    data = [{"input_ids": enc.input_ids, "template_mask": [0] * n, "user_mask": [1] * n}]
    report = lens_fidelity(model, tok, "logit", data)
    assert report.n.tolist() == [0, n]
    assert np.isnan(report.mean_kl[0, 0]).all() and np.isfinite(report.mean_kl[0, 1]).all()


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "non-empty list"),
        ("just text", "non-empty list"),
        ([{"input_ids": [1, 2], "template_mask": [0, 1]}], "has no user_mask"),
        ([{"input_ids": [1, 2], "template_mask": [0], "user_mask": [1, 1]}], "1 entries for 2"),
        ([{"input_ids": [], "template_mask": [], "user_mask": []}], "no input_ids"),
    ],
)
def test_bad_data_is_refused(model, tok, data, message):
    with pytest.raises(InputError, match=message):
        lens_fidelity(model, tok, "logit", data)


def test_bad_report_fields_are_refused():
    good = dict(
        layer_names=["emb", "out"], lenses=["logit"], mean_kl=np.zeros((1, 2, 2)),
        top1_agreement=np.ones((1, 2, 2)), n=[1, 1],
    )  # fmt: skip
    FidelityReport(**good)
    with pytest.raises(InputError, match="mean_kl has shape"):
        FidelityReport(**{**good, "mean_kl": np.zeros((1, 2, 3))})
    with pytest.raises(InputError, match="unique"):
        FidelityReport(
            **{**good, "lenses": ["a", "a"], "mean_kl": np.zeros((2, 2, 2)),
               "top1_agreement": np.zeros((2, 2, 2))}
        )  # fmt: skip
