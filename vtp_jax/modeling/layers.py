"""Small building blocks shared by every model: RMSNorm, activations, linear layers.

Parameter layouts follow Flax (``kernel`` is [in, out]); the converter transposes PyTorch's [out, in].

Every parameter of the models is created by the factories here (:func:`linear`, :func:`embedding`, :func:`conv`,
:func:`layer_norm`, :func:`rms_norm`, and :func:`vtp_jax.modeling.axes.param` for a bare ``nnx.Param``), which take
the parameter's logical axis names (``axes=`` / ``axis=``) and record them as NNX sharding metadata
(:mod:`vtp_jax.modeling.axes`). The names change nothing until a mesh is given: same values, RNG order, dtypes,
traced programs and checkpoints. Omitting them (the default) creates the parameter without names, as before.

**bfloat16 weights on XLA's CPU backend.** XLA:CPU has no bf16 matrix kernel on the default path: it rewrites every
bf16 ``dot`` as ``convert(W) → f32 dot``. Two costs follow (measured on this 2-core Xeon, a 4-layer
4096 × 11008 SwiGLU stack, 1.08 GB of bf16 weights, ``/tmp``-style scripts recorded in docs/bf16_cpu.md):

* memory — the default "concurrency optimised" scheduler hoists all those converts to the start of the program, so
  the compiled temp memory is the float32 size of *every* weight (2.16 GB temp for the 1.08 GB stack; a 7B model
  asks for 27.5 GB). The memory-optimised scheduler (:func:`compiler_options`) runs each convert just before its
  dot: temp drops to one float32 matrix (0.18 GB).
* speed — converting a whole matrix writes and re-reads a float32 copy through DRAM (≈ 14 bytes of traffic per
  weight instead of 2). :func:`weight_dot_general` converts the kernel in blocks of rows of the contraction axis
  that fit in the L2/L3 cache and sums the partial products in float32: a decode step's matrix–vector products
  went from 4.7 to 9.7 GB/s of bf16 weights read, and a 128-token prefill from 178 to 236 GFLOP/s; temp memory is
  one block.

Float32 weights, and every other backend (GPU/TPU have native bf16 matmuls), take the plain ``lax.dot_general``
with float32 accumulation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vtp_jax.modeling import axes as axes_lib
from vtp_jax.modeling.axes import Axes, param  # noqa: F401 (param: the factory of bare parameters)


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's ``quick_gelu``: x · σ(1.702 x) (transformers ``QuickGELUActivation``)."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf GELU (torch nn.GELU())
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


# Bytes of float32 kernel converted at a time by weight_dot_general on CPU (fits the 4 MB L2 of two cores a few
# times over and the L3 easily; 8–64 blocks of a 4096 × 11008 matrix all measured within 10% of each other).
CPU_BLOCK_BYTES = 24 * 2**20


def low_precision_weights(params) -> bool:
    """Whether a parameter pytree holds any bfloat16 / float16 array (the case the CPU measures below are for)."""
    return any(getattr(x, "dtype", None) in (jnp.bfloat16, jnp.float16) for x in jax.tree.leaves(params))


def compiler_options(low_precision: bool = True) -> dict | None:
    """XLA compiler options for the jitted generation functions of a model: on the CPU backend, for bf16 / f16
    weights, the memory-optimised scheduler (see the module docstring: without it a bf16 model's compiled temp
    memory is the float32 size of all its weights); None elsewhere. Float32 models have no such copies and keep
    XLA's default (concurrency-optimised) scheduler (on the tiny f32 bench presets the two measured the same)."""
    if low_precision and jax.default_backend() == "cpu":
        return {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
    return None


def loop_invariant_weights(params, counter):
    """``params`` (any pytree, e.g. the model state) routed through an optimisation barrier together with a loop
    counter, for use at the top of a ``while_loop`` / ``fori_loop`` body.

    XLA's while-loop invariant code motion hoists ``convert(W)`` of loop-invariant bf16 weights out of the loop
    (see the module docstring), which keeps a float32 copy of every weight alive for the whole decode loop (a 7B
    model's decode asked for 27.5 GB). Tied to the loop-variant ``counter``, the barrier's outputs are
    loop-variant, so each convert stays inside the body, next to its dot. Values are unchanged. Float32 ``params``
    are returned as they are (XLA may hoist their layout changes out of the loop, which is what a f32 model wants).
    """
    if not low_precision_weights(params):  # nothing to keep in the loop; hoisting helps f32 models
        return params
    params, _ = jax.lax.optimization_barrier((params, counter))
    return params


def _contraction_blocks(rows: int, cols: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of a [rows, cols] kernel whose float32 blocks are about CPU_BLOCK_BYTES each."""
    n = max(1, min(rows, -(-rows * cols * 4 // CPU_BLOCK_BYTES)))
    edges = [round(i * rows / n) for i in range(n + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def weight_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    """``lax.dot_general`` for ``x @ kernel`` (lhs [..., in], rhs = kernel [in, out]) → [..., out] in lhs's dtype.

    bf16/f16 kernels on the CPU backend are converted to float32 block by block along the contraction axis (see
    the module docstring) and the partial products summed in float32; otherwise a single ``lax.dot_general`` with
    float32 accumulation for low-precision inputs. Drop-in for ``nnx.Linear(dot_general=...)``.
    """
    (lc, rc), (lb, rb) = dimension_numbers
    low = rhs.dtype in (jnp.bfloat16, jnp.float16)
    out_dtype = preferred_element_type or lhs.dtype
    plain = not low or jax.default_backend() != "cpu" or rhs.ndim != 2 or lb or rb or tuple(rc) != (0,) \
        or tuple(lc) != (lhs.ndim - 1,)
    if plain:
        acc = jnp.float32 if low or lhs.dtype in (jnp.bfloat16, jnp.float16) else preferred_element_type
        y = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=acc,
                                **kwargs)
        return y.astype(out_dtype)
    x = lhs.astype(jnp.float32)
    acc = None
    for a, b in _contraction_blocks(*rhs.shape):
        part = jax.lax.dot_general(x[..., a:b], rhs[a:b].astype(jnp.float32), (((x.ndim - 1,), (0,)), ((), ())),
                                   precision=precision, **kwargs)
        acc = part if acc is None else acc + part
    return acc.astype(out_dtype)


def linear(d_in: int, d_out: int, *, bias: bool, dtype, rngs: nnx.Rngs, axes: Axes | None = None) -> nnx.Linear:
    """A dense layer (kernel [d_in, d_out], bias [d_out]) whose parameters and compute use ``dtype`` (float32 or
    bfloat16); its matmul is :func:`weight_dot_general` (no whole-matrix float32 copy of a bf16 kernel on CPU).

    ``axes``: the logical names (input, output) of the kernel (:mod:`vtp_jax.modeling.axes`); the bias gets the
    output name. None: no names. Raises ValueError unless ``axes`` has two entries."""
    axes_lib.check_rank(axes, (d_in, d_out), "linear")
    return nnx.Linear(d_in, d_out, use_bias=bias, dtype=dtype, param_dtype=dtype, dot_general=weight_dot_general,
                      kernel_metadata=axes_lib.param_metadata(axes),
                      bias_metadata=axes_lib.param_metadata(None if axes is None else axes[1:]), rngs=rngs)


def embedding(num: int, dim: int, *, dtype, rngs: nnx.Rngs, axes: Axes | None = None) -> nnx.Embed:
    """An embedding table [num, dim] in ``dtype`` (``nnx.Embed``'s initialiser); ``axes``: its two logical names
    (rows, features), None: no names. Raises ValueError unless ``axes`` has two entries."""
    axes_lib.check_rank(axes, (num, dim), "embedding")
    return nnx.Embed(num, dim, dtype=dtype, param_dtype=dtype, embedding_metadata=axes_lib.param_metadata(axes),
                     rngs=rngs)


def conv(in_channels: int, out_channels: int, kernel_size: tuple[int, int], *, strides: tuple[int, int],
         padding: str, bias: bool, dtype, rngs: nnx.Rngs, axes: Axes | None = None) -> nnx.Conv:
    """A 2-D convolution on NHWC inputs, kernel [kh, kw, in_channels, out_channels], bias [out_channels], in
    ``dtype``. ``axes``: the kernel's four logical names (the bias gets the last); None: no names. Raises
    ValueError unless ``axes`` has four entries."""
    axes_lib.check_rank(axes, tuple(kernel_size) + (in_channels, out_channels), "conv")
    return nnx.Conv(in_channels, out_channels, tuple(kernel_size), strides=tuple(strides), padding=padding,
                    use_bias=bias, dtype=dtype, param_dtype=dtype, kernel_metadata=axes_lib.param_metadata(axes),
                    bias_metadata=axes_lib.param_metadata(None if axes is None else axes[-1:]), rngs=rngs)


def layer_norm(dim: int, *, eps: float, dtype, rngs: nnx.Rngs, axis: str | None = None) -> nnx.LayerNorm:
    """LayerNorm with torch's semantics (biased variance, eps inside the square root); scale and bias [dim] carry
    the logical name ``axis`` (None: no names)."""
    names = None if axis is None else (axis,)
    return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=dtype,
                         scale_metadata=axes_lib.param_metadata(names), bias_metadata=axes_lib.param_metadata(names),
                         rngs=rngs)


def rms_norm(dim: int, *, eps: float, dtype=jnp.float32, axis: str | None = None) -> "RMSNorm":
    """:class:`RMSNorm` over ``dim`` features whose weight [dim] carries the logical name ``axis``."""
    return RMSNorm(dim, eps=eps, dtype=dtype, axis=axis)


class RMSNorm(nnx.Module):
    """Llama RMSNorm: ``weight * (x / sqrt(mean(x²) + eps))``, normalised in float32, cast back before the scale.

    Source: transformers ``LlamaRMSNorm``. Input [..., D] any float dtype; output the same shape and dtype.
    ``axis``: the logical name of the weight [D] (:mod:`vtp_jax.modeling.axes`; None: no name).
    """

    def __init__(self, dim: int, *, eps: float, dtype=jnp.float32, axis: str | None = None):
        self.weight = axes_lib.param(jnp.ones((dim,), dtype), None if axis is None else (axis,))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * x32.astype(x.dtype)
