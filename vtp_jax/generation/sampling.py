"""Next-token choice: greedy (temperature 0) or temperature + nucleus (top-p) sampling with an explicit PRNG key."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def top_p_filter(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keeps the smallest set of tokens whose probability mass reaches ``top_p`` (at least one); others → −inf.

    logits float32 [B, V]; top_p scalar in (0, 1]. Same rule as transformers ``TopPLogitsWarper``.
    """
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly better tokens
    keep_sorted = mass_before < top_p
    keep_sorted = keep_sorted.at[:, 0].set(True)
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample_token(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """logits float32 [B, V] → token ids int32 [B]. ``temperature`` ≤ 0 means argmax (greedy).

    Temperature and top_p are traced scalars, so changing them does not recompile.
    """
    def sampled(logits):
        scaled = logits / jnp.maximum(temperature, 1e-6)
        return jax.random.categorical(key, top_p_filter(scaled, top_p), axis=-1).astype(jnp.int32)

    def greedy(logits):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    # lax.cond: greedy decoding skips the vocabulary sort of top-p on every step
    return jax.lax.cond(temperature > 0, sampled, greedy, logits)
