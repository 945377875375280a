"""What the anyres VLMs share (LLaDA-V, LLaVA-NeXT): the parameter tree — vision tower, projector,
``image_newline``, decoder, untied LM head — and the host-side packing layout of an image.

The anyres rules themselves (tiles, unpadding, newline packing) are in :mod:`vtp_jax.modeling.anyres`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vtp_jax.modeling.anyres import AnyresError, AnyresLayout, layout_for_config
from vtp_jax.modeling.axes import EMBED, VOCAB, param
from vtp_jax.modeling.decoder import Decoder
from vtp_jax.modeling.layers import linear
from vtp_jax.modeling.llava import VisionLanguageModel
from vtp_jax.modeling.projector import Projector
from vtp_jax.modeling.vision import VisionTower


class AnyresVisionLanguageModel(VisionLanguageModel):
    """Parameter tree: ``vision_tower``, ``multi_modal_projector`` (``linear_1``, ``linear_2``), ``image_newline``
    [D_text], ``language_model`` (:class:`Decoder`, causal or not as ``cfg.text`` says), ``lm_head`` (kernel
    [D, V]). Logical axes: ``image_newline`` (embed,), ``lm_head`` (embed, vocab); the rest as in its modules.

    ``cfg`` needs ``vision``, ``text``, ``vision_feature_layer``, ``projector_hidden_act``, ``projector_bias`` and
    the tiling fields :func:`vtp_jax.modeling.anyres.layout_for_config` reads. Subclasses check their family's
    constraints before calling this constructor.
    """

    def __init__(self, cfg, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vision_tower = VisionTower(cfg.vision, dtype=dtype, rngs=rngs)
        d_in = cfg.vision.hidden_size * len(cfg.vision_feature_layer)
        d = cfg.text.hidden_size
        self.multi_modal_projector = Projector(
            d_in, d, act=cfg.projector_hidden_act, bias=cfg.projector_bias, dtype=dtype, rngs=rngs
        )
        self.image_newline = param(jax.random.normal(rngs.params(), (d,), dtype) * d**-0.5, (EMBED,))
        self.language_model = Decoder(cfg.text, dtype=dtype, rngs=rngs)
        self.lm_head = linear(d, cfg.text.vocab_size, bias=False, dtype=dtype, rngs=rngs, axes=(EMBED, VOCAB))

    # ---- host-side layout ---------------------------------------------------------------------------------------
    def layout(self, image_size: Sequence[int], grid: Sequence[int] | None = None) -> AnyresLayout:
        """The static packing layout of an image of (height, width) ``image_size`` (Python ints); checks ``grid``
        (rows, cols) if given. Raises AnyresError for a bad size or a grid that does not match it."""
        layout = layout_for_config(self.cfg, tuple(int(v) for v in image_size))
        if grid is not None and tuple(int(g) for g in grid) != layout.grid:
            raise AnyresError(
                f"grid {tuple(grid)} does not match image size {tuple(image_size)} (expected {layout.grid})"
            )
        return layout

    def num_visual_tokens(self, image_size: Sequence[int]) -> int:
        """N_v of an image of (height, width) ``image_size`` (what the family's processor expands ``<image>``
        to)."""
        return self.layout(image_size).num_tokens
