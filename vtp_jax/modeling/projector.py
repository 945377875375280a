"""``mlp2x_gelu`` multimodal projector: Linear → GELU → Linear (transformers ``LlavaMultiModalProjector``)."""

from __future__ import annotations

from flax import nnx

from vtp_jax.modeling.layers import ACTIVATIONS, linear


class Projector(nnx.Module):
    """[B, N, d_vision] → [B, N, d_text]."""

    def __init__(self, d_in: int, d_out: int, *, act: str = "gelu", bias: bool = True, dtype, rngs: nnx.Rngs):
        self.linear_1 = linear(d_in, d_out, bias=bias, dtype=dtype, rngs=rngs)
        self.linear_2 = linear(d_out, d_out, bias=bias, dtype=dtype, rngs=rngs)
        self.act = ACTIVATIONS[act]

    def __call__(self, x):
        return self.linear_2(self.act(self.linear_1(x)))
