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


@pytest.mark.parametrize("causal", [True, False])
def test_decoder_all_valid_matches_masked_path(causal):
    """``all_valid=True`` (no explicit mask; ``is_causal`` for Llama — the form cuDNN accepts on GPU) computes the
    same hidden states, caches and attention-row probes as the explicit all-valid mask."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vtp_jax.config import TextConfig
    from vtp_jax.modeling.decoder import Decoder, DecoderPlan, Probe, SequenceState

    cfg = dataclasses.replace(TextConfig(), vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, causal=causal)
    dec = Decoder(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    b, t = 2, 9
    state = SequenceState(jnp.asarray(rng.standard_normal((b, t, 32)), jnp.float32),
                          jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)), jnp.ones((b, t), bool))
    rows = jnp.asarray([[t - 1, 3], [0, t - 2]], jnp.int32)
    kw = dict(cache_extra=2, probe=Probe(rows, (0, 2)))
    ref, got = dec(state, DecoderPlan(**kw)), dec(state, DecoderPlan(all_valid=True, **kw))
    np.testing.assert_allclose(np.asarray(got.h), np.asarray(ref.h), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.probe), np.asarray(ref.probe), rtol=1e-5, atol=1e-6)
    for c_got, c_ref in zip(got.caches, ref.caches):
        np.testing.assert_allclose(np.asarray(c_got.k), np.asarray(c_ref.k), rtol=1e-5, atol=1e-6)
    if causal:  # the probe of an early row sees no later key
        assert float(np.asarray(got.probe)[1, 0, 1:].max()) == 0.0
    jitted = jax.jit(lambda s: dec(s, DecoderPlan(all_valid=True)).h)
    np.testing.assert_allclose(np.asarray(jitted(state)), np.asarray(ref.h), rtol=1e-5, atol=1e-5)
