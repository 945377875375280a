"""``mlp2x_gelu`` multimodal projector: Linear → GELU → Linear (transformers ``LlavaMultiModalProjector``)."""

from __future__ import annotations

from flax import nnx

from vtp_jax.modeling.axes import EMBED, MLP, VISION_EMBED
from vtp_jax.modeling.layers import ACTIVATIONS, linear


class Projector(nnx.Module):
    """[B, N, d_vision] → [B, N, d_text].

    ``axes`` = logical names (input, hidden, output): kernels linear_1 (input, hidden), linear_2 (hidden, output);
    default (vision_embed, mlp, embed)."""

    def __init__(self, d_in: int, d_out: int, *, act: str = "gelu", bias: bool = True, dtype, rngs: nnx.Rngs,
                 axes: tuple[str | None, str | None, str | None] = (VISION_EMBED, MLP, EMBED)):
        a_in, a_hidden, a_out = axes
        self.linear_1 = linear(d_in, d_out, bias=bias, dtype=dtype, rngs=rngs, axes=(a_in, a_hidden))
        self.linear_2 = linear(d_out, d_out, bias=bias, dtype=dtype, rngs=rngs, axes=(a_hidden, a_out))
        self.act = ACTIVATIONS[act]

    def __call__(self, x):
        return self.linear_2(self.act(self.linear_1(x)))
