"""What the masked-diffusion sampler tests share (tests/test_diffusion.py, tests/test_fast_dllm.py): a tiny
bidirectional model with large weights and two left-padded prompts."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from vtp_jax.config import LlavaConfig, TextConfig, VisionConfig
from vtp_jax.modeling.llava import Llava

MASK, IMG, PAD = 95, 5, 0
TINY = LlavaConfig(
    vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        image_size=32, patch_size=8),
    text=TextConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=8, causal=False),
    image_token_id=IMG,
)


def reference_counts(block_masked: np.ndarray, steps_per_block: int) -> np.ndarray:
    """LLaDA's ``get_num_transfer_tokens`` in NumPy: masked positions per row int [B] → tokens to unmask at each
    step of the block, int64 [B, steps_per_block] (``m // steps``, one more for the first ``m % steps``)."""
    counts = np.zeros((len(block_masked), steps_per_block), np.int64) + (block_masked // steps_per_block)[:, None]
    for j in range(len(block_masked)):
        counts[j, : block_masked[j] % steps_per_block] += 1
    return counts


def make_model():
    """The tiny bidirectional Llava-shaped model of the sampler tests, weights scaled up so that choices are not
    near ties."""
    m = Llava(TINY, rngs=nnx.Rngs(1))
    # larger weights than the default init so that logits are far from uniform and choices are not ties
    state = nnx.state(m, nnx.Param)
    leaves = jax.tree.leaves(state)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    nnx.update(m, jax.tree.map(lambda x, k: x + 0.3 * jax.random.normal(k, x.shape, x.dtype), state,
                               jax.tree.unflatten(jax.tree.structure(state), list(keys))))
    return m


def prompts(batch: int):
    """Two left-padded prompts (one with more padding) in a bucket of 32, and random pixels."""
    n_v = TINY.vision.num_patches
    rows = [[1, 7, 8] + [IMG] * n_v + [9, 10, 11], [1, 12] + [IMG] * n_v + [13]][:batch]
    t = 32
    ids = np.full((batch, t), PAD, np.int32)
    mask = np.zeros((batch, t), np.int32)
    for b, r in enumerate(rows):
        ids[b, t - len(r):] = r
        mask[b, t - len(r):] = 1
    pixels = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    return ids, mask, pixels
