"""Rotary position embeddings in Hugging Face's half-split (``rotate_half``) layout.

Source: transformers ``LlamaRotaryEmbedding`` / ``apply_rotary_pos_emb`` and ``modeling_rope_utils``
(``_compute_default_rope_parameters``, ``_compute_llama3_parameters``). Frequencies and angles are float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vtp_jax.config import RopeConfig


def inv_frequencies(head_dim: int, rope: RopeConfig) -> np.ndarray:
    """Inverse frequencies, float32 [head_dim // 2]; "llama3" applies Llama-3.1's wavelength-dependent scaling."""
    inv = 1.0 / (rope.theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    inv = inv.astype(np.float32)
    if rope.rope_type == "default":
        return inv
    if rope.rope_type != "llama3":
        raise ValueError(f"unsupported rope_type {rope.rope_type!r}")
    old = rope.original_max_position_embeddings
    low_wavelen = old / rope.low_freq_factor
    high_wavelen = old / rope.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / rope.factor, inv)
    smooth = (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_angles(positions: jax.Array, inv_freq: np.ndarray, dtype) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape [B, T, head_dim] (``dtype``) for integer positions [B, T]."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def mrope_angles(positions: jax.Array, inv_freq: np.ndarray, section, dtype) -> tuple[jax.Array, jax.Array]:
    """Multimodal RoPE (M-RoPE): cos, sin [B, T, head_dim] (``dtype``) for positions int [B, T, 3] (temporal,
    height, width). Frequency j of the head_dim / 2 uses the axis of the chunk of ``section`` (sizes summing to
    head_dim / 2) it falls in: the first ``section[0]`` frequencies the temporal position, the next ``section[1]``
    the height, the last ``section[2]`` the width; then the half-split layout as in :func:`rope_angles`.

    Source: transformers ``models/qwen2_5_vl/modeling_qwen2_5_vl.py``, ``Qwen2_5_VLRotaryEmbedding.forward`` and
    ``recomposition_frequencies`` (chunk i of ``mrope_section`` takes axis ``i % 3``). Raises ValueError when
    ``section`` is None or does not sum to head_dim / 2."""
    if section is None or sum(section) != inv_freq.shape[0]:
        raise ValueError(f"mrope_section {section} must sum to head_dim / 2 = {inv_freq.shape[0]}")
    axis = np.concatenate([np.full(n, i % 3) for i, n in enumerate(section)])  # [head_dim / 2]
    pos = jnp.take(positions.astype(jnp.float32), jnp.asarray(axis), axis=-1)  # [B, T, head_dim / 2]
    freqs = pos * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x [B, T, heads, head_dim] by cos/sin [B, T, head_dim]: ``x·cos + rotate_half(x)·sin``."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]
