"""ViT vision towers: CLIP (class token, pre-LN, ``quick_gelu``) and SigLIP (no class token, no pre-LN).

Source: transformers ``CLIPVisionTransformer`` / ``SiglipVisionTransformer`` (``*Embeddings``, ``*EncoderLayer``).
Pixel values arrive NCHW float32 (as HF image processors return them) and are transposed to NHWC for the conv.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vtp_jax.config import VisionConfig
from vtp_jax.modeling.attention import Attention
from vtp_jax.modeling.axes import (CHANNELS, PATCH_HEIGHT, PATCH_WIDTH, POSITIONS, VISION_EMBED, VISION_HEADS,
                                   VISION_MLP, param)
from vtp_jax.modeling.layers import ACTIVATIONS, conv, embedding, layer_norm, linear


class VisionMLP(nnx.Module):
    """``fc2(act(fc1(x)))``; kernels fc1 (vision_embed, vision_mlp), fc2 (vision_mlp, vision_embed)."""

    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs):
        self.fc1 = linear(cfg.hidden_size, cfg.intermediate_size, bias=True, dtype=dtype, rngs=rngs,
                          axes=(VISION_EMBED, VISION_MLP))
        self.fc2 = linear(cfg.intermediate_size, cfg.hidden_size, bias=True, dtype=dtype, rngs=rngs,
                          axes=(VISION_MLP, VISION_EMBED))
        self.act = ACTIVATIONS[cfg.hidden_act]

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nnx.Module):
    """Pre-LN ViT block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs):
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        heads = cfg.num_attention_heads
        self.layer_norm1 = layer_norm(d, eps=eps, dtype=dtype, rngs=rngs, axis=VISION_EMBED)
        self.self_attn = Attention(d, heads, heads, d // heads, qkv_bias=True, out_bias=True, dtype=dtype, rngs=rngs,
                                   embed_axis=VISION_EMBED, heads_axis=VISION_HEADS, kv_heads_axis=VISION_HEADS)
        self.layer_norm2 = layer_norm(d, eps=eps, dtype=dtype, rngs=rngs, axis=VISION_EMBED)
        self.mlp = VisionMLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x, probe_rows=None):
        a, _, probs = self.self_attn(self.layer_norm1(x), probe_rows=probe_rows)
        x = x + a
        return x + self.mlp(self.layer_norm2(x)), probs


class VisionTower(nnx.Module):
    """Patch embedding, (class token), position embedding, (pre-LN), encoder layers, post-LN.

    ``post_layernorm`` is held so checkpoints load whole, but LLaVA/LLaDA-V take hidden states before it.
    Logical axes: patch conv kernel (patch_height, patch_width, channels, vision_embed), class embedding
    (vision_embed,), position embedding (positions, vision_embed), LayerNorms (vision_embed,).
    """

    def __init__(self, cfg: VisionConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        d, p = cfg.hidden_size, cfg.patch_size
        clip = cfg.kind == "clip"
        self.patch_embedding = conv(
            cfg.num_channels, d, (p, p), strides=(p, p), padding="VALID", bias=not clip, dtype=dtype, rngs=rngs,
            axes=(PATCH_HEIGHT, PATCH_WIDTH, CHANNELS, VISION_EMBED),
        )
        self.class_embedding = (param(jax.random.normal(rngs.params(), (d,), dtype), (VISION_EMBED,)) if clip
                                else None)
        self.position_embedding = embedding(cfg.num_positions, d, dtype=dtype, rngs=rngs,
                                            axes=(POSITIONS, VISION_EMBED))
        eps = cfg.layer_norm_eps
        self.pre_layrnorm = layer_norm(d, eps=eps, dtype=dtype, rngs=rngs, axis=VISION_EMBED) if clip else None
        self.layers = nnx.List([EncoderLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.post_layernorm = layer_norm(d, eps=eps, dtype=dtype, rngs=rngs, axis=VISION_EMBED)

    def hidden_states(self, pixel_values: jax.Array, upto: int, cls_probe_layer: int | None = None):
        """Hidden states 0..``upto`` (0 = embeddings after pre-LN; i = output of layer i), list of [B, P(+1), D].

        pixel_values: float [B, C, H, W]. Only layers 1..upto run. If ``cls_probe_layer`` (1-based) is given,
        also returns that layer's class-token attention row, head-averaged, float32 [B, P+1] (ToDRE's pivot).
        """
        x = jnp.transpose(pixel_values, (0, 2, 3, 1)).astype(self.patch_embedding.kernel.dtype)
        x = self.patch_embedding(x)
        b = x.shape[0]
        x = x.reshape(b, -1, x.shape[-1])
        if self.class_embedding is not None:
            cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=1)
        x = x + self.position_embedding.embedding[...][None, : x.shape[1]].astype(x.dtype)
        if self.pre_layrnorm is not None:
            x = self.pre_layrnorm(x)
        states, cls_attn = [x], None
        for i, layer in enumerate(self.layers[:upto]):
            rows = jnp.zeros((b, 1), jnp.int32) if cls_probe_layer == i + 1 else None
            x, probs = layer(x, probe_rows=rows)
            if probs is not None:
                cls_attn = probs.mean(axis=1)[:, 0]
            states.append(x)
        return states, cls_attn

    def features(self, pixel_values: jax.Array, feature_layers: tuple[int, ...]) -> jax.Array:
        """Hidden states at ``feature_layers`` (HF indexing into ``hidden_states``; −2 = second-to-last layer),
        concatenated on the feature axis: [B, P(+1), D · len(feature_layers)]."""
        n = self.cfg.num_hidden_layers
        idx = [l % (n + 1) for l in feature_layers]
        states, _ = self.hidden_states(pixel_values, max(idx))
        return jnp.concatenate([states[i] for i in idx], axis=-1)
