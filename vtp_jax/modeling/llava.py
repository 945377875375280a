"""LLaVA-1.5: CLIP vision tower → ``mlp2x_gelu`` projector → Llama decoder → LM head.

Source: transformers ``LlavaForConditionalGeneration`` (5.x): image features replace the embeddings of the image
placeholder tokens, in order. Here the merge has static shapes: every sample carries exactly ``num_visual_tokens``
placeholders (one image per sample), found with a cumulative sum rather than a data-dependent scatter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vtp_jax.config import LlavaConfig
from vtp_jax.modeling.decoder import Decoder, DecoderOutput, SequenceState
from vtp_jax.modeling.axes import EMBED, VOCAB
from vtp_jax.modeling.layers import linear
from vtp_jax.modeling.projector import Projector
from vtp_jax.modeling.vision import VisionTower


def merge_visual_tokens(text_emb: jax.Array, visual: jax.Array, visual_mask: jax.Array) -> jax.Array:
    """Places visual embeddings [B, N_v, D] at the True positions of ``visual_mask`` bool [B, T] (in order).

    Each row must hold exactly N_v True entries (checked on the host by the processing code).
    """
    idx = jnp.clip(jnp.cumsum(visual_mask, axis=1) - 1, 0, visual.shape[1] - 1)
    gathered = jnp.take_along_axis(visual, idx[:, :, None], axis=1)
    return jnp.where(visual_mask[:, :, None], gathered.astype(text_emb.dtype), text_emb)


class VisionLanguageModel(nnx.Module):
    """What both VLM families share around the decoder: the merge of visual tokens into the text embeddings and
    the LM head. Subclasses define ``cfg`` (with ``image_token_id``), ``language_model`` and ``lm_head``."""

    def embed(self, input_ids: jax.Array, visual: jax.Array) -> tuple[jax.Array, jax.Array]:
        """input_ids int [B, T], visual [B, N_v, D] → (embeddings [B, T, D], visual_mask bool [B, T]).

        Positions holding ``cfg.image_token_id`` (exactly N_v per row) receive the visual tokens in order; the
        placeholder id itself is never embedded (it may lie outside the vocabulary, e.g. LLaDA-V's −200)."""
        visual_mask = input_ids == self.cfg.image_token_id
        text = self.language_model.embed_tokens(jnp.where(visual_mask, 0, input_ids))
        return merge_visual_tokens(text, visual, visual_mask), visual_mask

    def positions(self, key_valid: jax.Array, visual_mask: jax.Array, **image_inputs) -> jax.Array:
        """RoPE positions int32 [B, T] of a prompt: ``cumsum(key_valid) − 1`` (0 at left padding), every token one
        step, visual ones included. key_valid, visual_mask bool [B, T]; ``image_inputs`` (the keyword arguments of
        ``image_features``) are not needed here. Families with other position rules override it (Qwen2.5-VL's
        M-RoPE: [B, T, 3])."""
        del visual_mask, image_inputs
        return jnp.maximum(jnp.cumsum(key_valid, axis=1) - 1, 0).astype(jnp.int32)

    def logits(self, h: jax.Array) -> jax.Array:
        """Final hidden states [..., D] → logits float32 [..., V]."""
        return self.lm_head(h).astype(jnp.float32)

    def forward_visual(self, input_ids: jax.Array, visual: jax.Array, attention_mask: jax.Array | None = None
                       ) -> jax.Array:
        """The decoder's full forward (no cache, no pruning) on given visual tokens: input_ids int [B, T], visual
        [B, N_v, D] (projector outputs, in the order they fill the image placeholders), attention_mask int/bool
        [B, T] or None (all valid) → logits float32 [B, T, V]. Positions are ``cumsum(attention_mask) − 1`` (what
        the generators use); padding keys are masked. The family's attention (causal or bidirectional) is the
        decoder's."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        attention_mask = attention_mask.astype(bool)
        positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0).astype(jnp.int32)
        h, _ = self.embed(input_ids, visual)
        out: DecoderOutput = self.language_model(SequenceState(h, positions, attention_mask))
        return self.logits(out.h)


class Llava(VisionLanguageModel):
    """The LLaVA model. Parameter tree: ``vision_tower``, ``multi_modal_projector``, ``language_model``,
    ``lm_head`` (kernel [D, V], logical axes (embed, vocab))."""

    def __init__(self, cfg: LlavaConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vision_tower = VisionTower(cfg.vision, dtype=dtype, rngs=rngs)
        d_in = cfg.vision.hidden_size * len(cfg.vision_feature_layer)
        self.multi_modal_projector = Projector(
            d_in, cfg.text.hidden_size, act=cfg.projector_hidden_act, bias=cfg.projector_bias, dtype=dtype, rngs=rngs
        )
        self.language_model = Decoder(cfg.text, dtype=dtype, rngs=rngs)
        self.lm_head = linear(cfg.text.hidden_size, cfg.text.vocab_size, bias=False, dtype=dtype, rngs=rngs,
                              axes=(EMBED, VOCAB))

    def image_features(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values float [B, 3, H, W] → projector outputs [B, N_v, D_text] (class token dropped for "default")."""
        feats = self.vision_tower.features(pixel_values, self.cfg.vision_feature_layer)
        if self.cfg.vision_feature_select_strategy == "default" and self.cfg.vision.kind == "clip":
            feats = feats[:, 1:]
        return self.multi_modal_projector(feats)

    def image_features_with_cls(self, pixel_values: jax.Array, *, cls_layer: int) -> tuple[jax.Array, jax.Array]:
        """The features of :meth:`image_features` plus the class-token attention of the visual tokens.

        pixel_values float [B, 3, H, W]; cls_layer: 1-based vision layer (static) whose head-averaged class-token
        attention row ``softmax(q_CLS · Kᵀ / √d)`` is returned (ToDRE's pivot). The tower runs up to
        ``max(feature layer, cls_layer)``. Returns (projector outputs [B, N_v, D_text], float32 [B, N_v]) — the
        class token's own column dropped when the class token is (strategy "default"). Raises ValueError for a
        tower without a class token.
        """
        vision = self.cfg.vision
        if vision.kind != "clip":
            raise ValueError(f"the {vision.kind} vision tower has no class token")
        n = vision.num_hidden_layers
        idx = [l % (n + 1) for l in self.cfg.vision_feature_layer]
        upto = max(idx + [cls_layer])
        states, cls_attn = self.vision_tower.hidden_states(pixel_values, upto, cls_probe_layer=cls_layer)
        feats = jnp.concatenate([states[i] for i in idx], axis=-1)
        if self.cfg.vision_feature_select_strategy == "default":
            feats, cls_attn = feats[:, 1:], cls_attn[:, 1:]
        return self.multi_modal_projector(feats), cls_attn

    def __call__(
        self, input_ids: jax.Array, pixel_values: jax.Array, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """Full forward without cache or pruning (parity reference): logits float32 [B, T, V].

        Positions are ``cumsum(attention_mask) − 1`` (what ``generate`` uses); padding keys are masked.
        """
        return self.forward_visual(input_ids, self.image_features(pixel_values), attention_mask)
