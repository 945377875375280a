"""Next-token choice: greedy (temperature 0) or temperature + nucleus (top-p) sampling with an explicit PRNG key."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vtp_jax import argtypes


class SamplerError(ValueError):
    """Invalid sampler settings passed to a generator (a non-finite or negative temperature, a top-p outside
    (0, 1], a seed outside [0, 2³² − 1], …)."""


def check_sampler_settings(*, temperature=0.0, top_p=None, seed=None, **counts) -> None:
    """The one validation of sampler settings, shared by both families' generators (``AutoregressiveGenerator`` and
    ``DiffusionGenerator`` call it first in ``generate``). The rules are those of the command-line flags
    (:mod:`vtp_jax.argtypes`): ``temperature`` a finite number ≥ 0 (0 = greedy); ``top_p`` finite in (0, 1];
    ``seed`` a whole number in [0, :data:`vtp_jax.argtypes.SEED_MAX`]; every keyword of ``counts`` (e.g.
    ``max_new_tokens``) a whole number ≥ 1. None skips a setting.

    Raises:
      SamplerError: naming the setting and the value (e.g. ``temperature must be a finite number, got nan``).
    """
    checks = [("temperature", temperature, argtypes.TEMPERATURE), ("top_p", top_p, argtypes.TOP_P),
              ("seed", seed, argtypes.SEED)] + [(k, v, argtypes.POSITIVE) for k, v in counts.items()]
    for name, value, rule in checks:
        if value is None:
            continue
        try:
            argtypes.check_value(name, value, rule)
        except ValueError as e:
            raise SamplerError(str(e)) from None


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
