"""Qwen2.5-VL: vision transformer + 2×2 patch merger (:mod:`vtp_jax.modeling.qwen2_5_vl_vision`) → Qwen2 decoder
(causal, q/k/v biases, GQA, M-RoPE) → LM head.

Source: transformers ``models/qwen2_5_vl/modeling_qwen2_5_vl.py`` (5.x): ``Qwen2_5_VLModel.forward`` runs the tower on
the processor's flat patches (``pixel_values`` [Σ t·h·w, C·T·P·P], ``image_grid_thw``), scatters the merged tokens
into the image placeholders (``<|image_pad|>``) in order, and computes 3-D positions with ``get_rope_index``:

* text tokens: one position for all three axes, counting up from 0 over the valid (non-padding) tokens;
* the visual tokens of an image whose merged grid is (t', h', w') = (t, h/m, w/m), starting after s text
  positions: (s + frame, s + row, s + column) (``get_vision_position_ids``; still images have t' = 1, so the
  temporal position is s);
* the text after the image resumes at s + max(h', w') (the *rope-delta rule*: ``current_pos += max(grid_h,
  grid_w) // spatial_merge_size``), so a prompt's last position is below its length when the image is not square;
* padding takes position 0 (masked anyway); decode steps take ``max(prefill positions) + 1``, + 1 per step, on all
  three axes (``compute_3d_position_ids``: ``cumsum(mask) − 1 + rope_deltas``, with ``rope_deltas = max + 1 −
  valid length``).

Here the positions are computed under ``jit`` from the static per-row grids, the key validity and the placeholder
mask (:meth:`Qwen25VL.positions`), so they are whatever the prompt's (left) padding and the batch's visual-span
padding (:mod:`vtp_jax.generation.visual_spans`: extra masked placeholder slots take no position) make them.
Pruning keeps each kept visual token's (t, h, w) position and leaves the text after the image where it was
(:func:`vtp_jax.pruning.core.compact` gathers the [B, T, 3] positions with the tokens).

Images per row: one. ``image_inputs`` are ``{"pixel_values": float32 [B, P, C·T·P·P], "grid_thw": ((t, h, w), …)}``:
row b's flat patches first (t·h·w of them, in the processor's order), zero rows after (batch padding), and one static
(t, h, w) per row. Rows of different grids hold different visual-token counts N_v[b] = t·h·w / m²; the features are
zero-padded to the largest (as the anyres families do).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vtp_jax.modeling.axes import EMBED, VOCAB
from vtp_jax.modeling.decoder import Decoder, DecoderOutput, SequenceState
from vtp_jax.modeling.layers import linear
from vtp_jax.modeling.llava import VisionLanguageModel
from vtp_jax.modeling.qwen2_5_vl_vision import Qwen25VisionTower, normalise_grid


class Qwen25VL(VisionLanguageModel):
    """The Qwen2.5-VL model (``cfg``: :class:`vtp_jax.families.qwen2_5_vl.config.Qwen25VLConfig`).

    Parameter tree: ``visual`` (:class:`Qwen25VisionTower`: ``patch_embed``, ``blocks``, ``merger``),
    ``language_model`` (causal :class:`Decoder` with q/k/v biases and M-RoPE), ``lm_head`` (kernel [D, V], logical
    axes (embed, vocab); with tied embeddings the converter fills it from the token embedding).

    Raises ValueError for a non-causal text config or a text config without M-RoPE sections.
    """

    def __init__(self, cfg, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if not cfg.text.causal:
            raise ValueError("Qwen2.5-VL needs a causal text config")
        if cfg.text.rope.mrope_section is None:
            raise ValueError("Qwen2.5-VL needs M-RoPE (text rope.mrope_section)")
        self.cfg = cfg
        self.visual = Qwen25VisionTower(cfg.vision, dtype=dtype, rngs=rngs)
        self.language_model = Decoder(cfg.text, dtype=dtype, rngs=rngs)
        self.lm_head = linear(cfg.text.hidden_size, cfg.text.vocab_size, bias=False, dtype=dtype, rngs=rngs,
                              axes=(EMBED, VOCAB))

    # ---- host-side layout ---------------------------------------------------------------------------------------
    def row_grids(self, grid_thw, batch: int) -> tuple[tuple[int, int, int], ...]:
        """One (t, h, w) per row: ``grid_thw`` is B triples, or one triple shared by every row. Raises ValueError
        for a bad grid (see :func:`vtp_jax.modeling.qwen2_5_vl_vision.normalise_grid`) or a count other than B."""
        if len(grid_thw) == 3 and not isinstance(grid_thw[0], (tuple, list, np.ndarray)):
            grid_thw = (tuple(grid_thw),) * batch
        grids = normalise_grid(grid_thw, self.cfg.vision.spatial_merge_size)
        if len(grids) != batch:
            raise ValueError(f"{len(grids)} image grids for a batch of {batch} rows (one image per row)")
        return grids

    def num_visual_tokens(self, grid) -> int:
        """N_v of an image of patch grid (t, h, w): t · h · w / spatial_merge_size² (the config's rule)."""
        return self.cfg.num_visual_tokens_of(grid)

    # ---- forward pieces ----------------------------------------------------------------------------------------
    def image_features(self, pixel_values: jax.Array, *, grid_thw) -> jax.Array:
        """Merged visual tokens of one image per row, float32 [B, N, D_text] with N = max_b N_v[b] (row b's N_v[b]
        tokens first, zeros after).

        pixel_values: float [B, P ≥ max_b t·h·w, C·T·P·P] (row b's flat patches first; the rest is batch padding);
        grid_thw: static, one (t, h, w) per row (or one shared). The tower runs once over all rows' patches
        (attention never crosses an image: every segment is inside one frame). Raises ValueError for a bad grid
        or pixel_values of the wrong shape.
        """
        b = pixel_values.shape[0]
        grids = self.row_grids(grid_thw, b)
        sizes = [t * h * w for t, h, w in grids]
        if pixel_values.ndim != 3 or pixel_values.shape[1] < max(sizes):
            raise ValueError(f"pixel_values must be [B, ≥{max(sizes)}, {self.cfg.vision.patch_dim}], got "
                             f"{tuple(pixel_values.shape)}")
        flat = jnp.concatenate([pixel_values[i, :n] for i, n in enumerate(sizes)], axis=0)
        tokens = self.visual(flat, grids)  # [Σ N_v, D] float32, image by image
        counts = [self.num_visual_tokens(g) for g in grids]
        n_max, rows, start = max(counts), [], 0
        for n in counts:
            rows.append(jnp.pad(tokens[start : start + n], ((0, n_max - n), (0, 0))))
            start += n
        return jnp.stack(rows)

    def positions(self, key_valid: jax.Array, visual_mask: jax.Array, *, grid_thw, **_) -> jax.Array:
        """M-RoPE positions int32 [B, T, 3] (temporal, height, width) of a prompt (see the module docstring).

        key_valid bool [B, T] (left padding False); visual_mask bool [B, T] (image placeholder slots, padded visual
        slots included: those are not valid and take no position); grid_thw: static (t, h, w) per row. Each row's
        valid visual slots are its image's merged tokens in the processor's order: t' frames of h' rows of w'.
        """
        b, t = key_valid.shape
        grids = self.row_grids(grid_thw, b)
        m = self.cfg.vision.spatial_merge_size
        gh = jnp.asarray([g[1] // m for g in grids], jnp.int32)[:, None]
        gw = jnp.asarray([g[2] // m for g in grids], jnp.int32)[:, None]
        text = key_valid & ~visual_mask
        image = key_valid & visual_mask
        text_before = jnp.cumsum(text, axis=1, dtype=jnp.int32) - text  # valid text tokens before each slot
        k = jnp.cumsum(image, axis=1, dtype=jnp.int32) - image  # index of a visual token in its image
        after_image = k > 0  # a visual token comes before this slot
        text_pos = text_before + jnp.where(after_image, jnp.maximum(gh, gw), 0)
        frame = k // (gh * gw)
        row = (k // gw) % gh
        col = k % gw
        vis = jnp.stack([text_before + frame, text_before + row, text_before + col], axis=-1)
        pos = jnp.where(image[..., None], vis, text_pos[..., None])
        return jnp.where(key_valid[..., None], pos, 0).astype(jnp.int32)

    def __call__(self, input_ids: jax.Array, pixel_values: jax.Array, attention_mask: jax.Array | None = None, *,
                 grid_thw) -> jax.Array:
        """Full causal forward without cache or pruning (parity reference): input_ids int [B, T] (N_v[b]
        placeholders per row), pixel_values float [B, P, C·T·P·P], grid_thw one (t, h, w) per row → logits float32
        [B, T, V]. Positions: :meth:`positions` (what ``generate`` uses); padding keys are masked."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        key_valid = attention_mask.astype(bool)
        visual = self.image_features(pixel_values, grid_thw=grid_thw)
        h, visual_mask = self.embed(input_ids, visual)
        positions = self.positions(key_valid, visual_mask, grid_thw=grid_thw)
        out: DecoderOutput = self.language_model(SequenceState(h, positions, key_valid))
        return self.logits(out.h)
