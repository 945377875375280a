"""Attention-row probes against a NumPy softmax, for causal, bidirectional (broadcast query axis) and GQA masks."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from vtp_jax.modeling.attention import attention_rows
from vtp_jax.modeling.decoder import attention_mask


def numpy_rows(q, k, rows, valid, causal):
    b, t, h, d = q.shape
    kv = k.shape[2]
    k = np.repeat(k, h // kv, axis=2)
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(d)
    mask = np.broadcast_to(valid[:, None, None, :], logits.shape).copy()
    if causal:
        mask &= np.tril(np.ones((t, t), bool))[None, None]
    logits = np.where(mask, logits, -np.inf)
    with np.errstate(invalid="ignore"):  # fully masked (padding) query rows are NaN and never compared
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
    return np.stack([p[i][:, rows[i]] for i in range(b)])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attention_rows_match_numpy(causal, kv_heads):
    rng = np.random.default_rng(0)
    b, t, h, d = 2, 7, 4, 8
    q = rng.standard_normal((b, t, h, d)).astype(np.float32)
    k = rng.standard_normal((b, t, kv_heads, d)).astype(np.float32)
    valid = np.ones((b, t), bool)
    valid[0, :2] = False  # left padding in row 0
    rows = np.array([[6, 3], [6, 2]])
    mask = attention_mask(jnp.asarray(valid), causal)
    ours = np.asarray(attention_rows(jnp.asarray(q), jnp.asarray(k), jnp.asarray(rows), mask, d**-0.5))
    ref = numpy_rows(q, k, rows, valid, causal)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert (ours[0][..., :2] == 0).all()  # padded keys get no attention
