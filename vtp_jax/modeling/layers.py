"""Small building blocks shared by every model: RMSNorm, activations, linear layers.

Parameter layouts follow Flax (``kernel`` is [in, out]); the converter transposes PyTorch's [out, in].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's ``quick_gelu``: x · σ(1.702 x) (transformers ``QuickGELUActivation``)."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf GELU (torch nn.GELU())
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


def linear(d_in: int, d_out: int, *, bias: bool, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """A dense layer whose parameters and compute use ``dtype`` (float32 or bfloat16)."""
    return nnx.Linear(d_in, d_out, use_bias=bias, dtype=dtype, param_dtype=dtype, rngs=rngs)


def layer_norm(dim: int, *, eps: float, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm with torch's semantics (biased variance, eps inside the square root)."""
    return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=dtype, rngs=rngs)


class RMSNorm(nnx.Module):
    """Llama RMSNorm: ``weight * (x / sqrt(mean(x²) + eps))``, normalised in float32, cast back before the scale.

    Source: transformers ``LlamaRMSNorm``. Input [..., D] any float dtype; output the same shape and dtype.
    """

    def __init__(self, dim: int, *, eps: float, dtype=jnp.float32):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * x32.astype(x.dtype)
