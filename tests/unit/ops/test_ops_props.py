"""Property tests (hypothesis) of the ops on CPU, for the C++ and the PyTorch backends.

0 <= entropy <= log(number of live entries); KL >= 0; KL(p, p) == 0; the diagonal of
pairwise_kl(P, Q) equals kl_div(P, Q) row by row.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lenskit

BACKENDS = ["cpp", "torch"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setenv("LENSKIT_BACKEND", "torch")
    elif lenskit.extension_error() is not None or os.environ.get("LENSKIT_BACKEND") == "torch":
        pytest.skip("extension not available (see tests/test_ops.py::test_extension_built)")
    return request.param


@st.composite
def logits(draw, rows=None, v=None):
    """A [rows, V] logits tensor: random scale, dtype, optional -inf mask (never a whole row)."""
    rows = rows if rows is not None else draw(st.integers(1, 6))
    v = v if v is not None else draw(st.sampled_from([1, 2, 3, 17, 100, 1000, 5000, 20000]))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 5.0, 30.0, 1e3]))
    mask_prob = draw(st.sampled_from([0.0, 0.0, 0.3, 0.9]))
    dtype = draw(st.sampled_from(DTYPES))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, v, generator=g) * scale
    mask = torch.rand(rows, v, generator=g) < mask_prob
    mask[:, 0] = False  # keep a live entry per row
    return x.masked_fill(mask, -math.inf).to(dtype)


@SETTINGS
@given(x=logits())
def test_entropy_bounds(backend, x):
    h = lenskit.entropy(x)
    n_live = (x > -math.inf).sum(-1).double()
    assert bool((h >= -1e-6).all()), h
    assert bool((h.double() <= n_live.log() * (1 + 1e-5) + 1e-5).all()), (h, n_live.log())


@SETTINGS
@given(data=st.data())
def test_kl_non_negative_and_zero_on_self(backend, data):
    p = data.draw(logits())
    q = data.draw(logits(rows=p.shape[0], v=p.shape[1]))
    kl = lenskit.kl_div(p, q)
    assert bool((kl >= 0).all()), kl  # +inf where q is masked and p is not
    self_kl = lenskit.kl_div(p, p)
    assert bool((self_kl.abs() <= 1e-5).all()), self_kl


@SETTINGS
@given(data=st.data())
def test_pairwise_diagonal_equals_kl_div(backend, data):
    p = data.draw(logits())
    q = data.draw(logits(rows=p.shape[0], v=p.shape[1]))
    q = q.to(p.dtype)
    diag = torch.diagonal(lenskit.pairwise_kl(p, q))
    kl = lenskit.kl_div(p, q)
    assert torch.equal(torch.isinf(diag), torch.isinf(kl))
    fin = torch.isfinite(kl)
    # pairwise_kl goes through one fp32 GEMM (sum p log p - P @ log Q^T): it cancels more.
    tol = 1e-4 * kl[fin].abs() + 1e-4 * (1 + math.log(p.shape[1]))
    assert bool(((diag[fin] - kl[fin]).abs() <= tol).all()), (diag, kl)
