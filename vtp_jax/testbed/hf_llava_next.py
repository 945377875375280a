"""Tiny random-weight LLaVA-NeXT checkpoints in Hugging Face format (transformers
``LlavaNextForConditionalGeneration``), for the parity tests. The weights are RANDOM: such a checkpoint is a
shape-faithful stand-in, never a real model (``config.json`` carries ``"vtp_random_weights": true``, which
vtp-convert keeps and vtp-generate reports).

Unlike :mod:`vtp_jax.testbed.hf_llava` this builder needs torch: the model is built by transformers itself (so its
tensor names and shapes are whatever the installed transformers defines) and saved in one of three naming schemes:

* ``"transformers"``: ``save_pretrained`` (transformers 5 writes ``vision_tower.*``, ``language_model.model.*``,
  ``language_model.lm_head.weight``, ``multi_modal_projector.*``, ``image_newline``), sharded with
  ``max_shard_size`` when ``max_shard_bytes`` is given;
* ``"hub"``: the ``llava-hf/llava-v1.6-*`` files' names (``vision_tower.vision_model.*``, ``language_model.model.*``,
  ``language_model.lm_head.weight``, ``multi_modal_projector.*``, ``image_newline``), written with
  ``safetensors.torch`` — one ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` shards plus
  ``model.safetensors.index.json`` when ``max_shard_bytes`` is given;
* ``"memory"``: ``state_dict()`` names as they are (``model.vision_tower.*``, ``model.language_model.*``,
  ``model.multi_modal_projector.*``, ``model.image_newline``, ``lm_head.*``).

Processor files: the byte-level BPE tokenizer of :func:`vtp_jax.testbed.hf_llava.train_tokenizer` (``<image>`` = 4),
``LlavaNextImageProcessorPil`` (tile = the CLIP image size, CLIP mean / std, the config's grid pinpoints) and a
``LlavaNextProcessor`` with LLaVA's chat template (:data:`vtp_jax.testbed.hf_llava.LLAVA_CHAT_TEMPLATE`).
"""

from __future__ import annotations

import os

import transformers

from vtp_jax.testbed.hf_llava import (
    BOS_ID, EOS_ID, IMAGE_TOKEN, IMAGE_TOKEN_ID, LLAVA_CHAT_TEMPLATE, PAD_ID, save_torch_safetensors, train_tokenizer,
    widen_weights,
)

# Odd sizes on purpose: head_dim 10, GQA 4 → 2, an MLP width that is no power of two, 3 pinpoint shapes.
TINY_NEXT = dict(
    image_size=32, patch_size=8, vision_hidden=24, vision_layers=2, vision_heads=2, vision_mlp=40,
    text_hidden=40, text_layers=3, text_heads=4, text_kv_heads=2, text_mlp=72, vocab_size=300,
    max_position_embeddings=512, grid_pinpoints=((32, 64), (64, 32), (64, 64), (96, 32), (32, 96)),
)

HUB_PREFIXES = (  # transformers-5 state_dict() prefix → llava-hf/llava-v1.6-* hub prefix
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.language_model.", "language_model.model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),
    ("lm_head.", "language_model.lm_head."),
)


def hub_name(name: str) -> str:
    """The ``llava-hf/llava-v1.6-*`` name of a transformers-5 ``state_dict()`` name. Raises ValueError for a name
    of no known part."""
    for old, new in HUB_PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    raise ValueError(f"no hub name for {name!r}")


def tiny_llava_next_config(*, image_size: int = 32, patch_size: int = 8, vision_hidden: int = 24,
                           vision_layers: int = 2, vision_heads: int = 2, vision_mlp: int = 40,
                           text_hidden: int = 40, text_layers: int = 3, text_heads: int = 4,
                           text_kv_heads: int = 2, text_mlp: int = 72, vocab_size: int = 300,
                           max_position_embeddings: int = 512,
                           grid_pinpoints=TINY_NEXT["grid_pinpoints"],
                           vision_feature_layer: int | list[int] = -2) -> transformers.LlavaNextConfig:
    """A small ``LlavaNextConfig``: CLIP ViT (quick_gelu, class token) + Llama (silu, RMSNorm 1e-5, theta 1e4),
    ``image_token_index`` 4, pad / bos / eos 3 / 1 / 2, strategy "default", untied head.

    ``grid_pinpoints``: (height, width) pixel resolutions, multiples of ``image_size`` (one tile side). Raises
    ValueError when one is not; transformers' own validation covers the head counts.
    """
    pinpoints = [[int(h), int(w)] for h, w in grid_pinpoints]
    if any(h % image_size or w % image_size or h < 1 or w < 1 for h, w in pinpoints):
        raise ValueError(f"grid_pinpoints {pinpoints} must be positive multiples of image_size {image_size}")
    vision = transformers.CLIPVisionConfig(
        hidden_size=vision_hidden, intermediate_size=vision_mlp, num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads, image_size=image_size, patch_size=patch_size, num_channels=3,
        hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=text_hidden)
    text = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=text_hidden, intermediate_size=text_mlp, num_hidden_layers=text_layers,
        num_attention_heads=text_heads, num_key_value_heads=text_kv_heads, hidden_act="silu", rms_norm_eps=1e-5,
        max_position_embeddings=max_position_embeddings, rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, tie_word_embeddings=False)
    return transformers.LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID, projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=vision_feature_layer,
        multimodal_projector_bias=True, tie_word_embeddings=False, image_grid_pinpoints=pinpoints,
        image_seq_length=(image_size // patch_size) ** 2)


def random_llava_next(config: transformers.LlavaNextConfig, seed: int = 0):
    """A seeded fp32 ``LlavaNextForConditionalGeneration`` in eval mode with O(0.1) weights (norm scales 1 ± 0.1,
    biases and ``image_newline`` N(0, 0.1²)): transformers' own initialiser makes activations so small that parity
    would be met trivially."""
    import torch

    torch.manual_seed(seed)
    return widen_weights(transformers.LlavaNextForConditionalGeneration(config).eval())


def save_processor(out_dir: str | os.PathLike, config: transformers.LlavaNextConfig, tokenizer=None) -> None:
    """Saves tokenizer, ``LlavaNextImageProcessorPil`` and ``LlavaNextProcessor`` (chat template included) to
    ``out_dir``. The image processor: bicubic resize, tiles of ``vision_config.image_size`` pixels, the config's
    grid pinpoints, rescale 1/255, CLIP mean / std, batch padding of the tile dimension. Needs no torchvision."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

    vc = config.vision_config
    tokenizer = tokenizer or train_tokenizer(config.text_config.vocab_size)
    image_cls = getattr(transformers, "LlavaNextImageProcessorPil", None) or transformers.LlavaNextImageProcessor
    image_processor = image_cls(
        do_resize=True, size={"shortest_edge": vc.image_size}, resample=PILImageResampling.BICUBIC,
        do_center_crop=True, crop_size={"height": vc.image_size, "width": vc.image_size}, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True, do_pad=True, image_grid_pinpoints=[list(p) for p in config.image_grid_pinpoints])
    processor = transformers.LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vc.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy, chat_template=LLAVA_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    processor.save_pretrained(out_dir)


def write_llava_next(model, out_dir: str | os.PathLike, *, names: str = "hub",
                     max_shard_bytes: int | None = None) -> str:
    """Writes ``model`` (a ``LlavaNextForConditionalGeneration``) with its config, generation config and processor
    files to ``out_dir`` in naming scheme ``names`` ("hub", "transformers" or "memory"; see the module docstring),
    sharded when ``max_shard_bytes`` is given ("memory" is never sharded). Returns ``out_dir`` as a string.

    Raises ValueError for an unknown scheme, or ``max_shard_bytes`` with "memory".
    """
    if names not in ("hub", "transformers", "memory"):
        raise ValueError(f"names must be 'hub', 'transformers' or 'memory', got {names!r}")
    if names == "memory" and max_shard_bytes is not None:
        raise ValueError("the 'memory' scheme is written as one file")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    config = model.config
    config.vtp_random_weights = True  # carried into the converted checkpoint: outputs say the weights are random
    if names == "transformers":
        kwargs = {} if max_shard_bytes is None else {"max_shard_size": max_shard_bytes}
        model.save_pretrained(out_dir, **kwargs)
    else:
        rename = hub_name if names == "hub" else (lambda n: n)
        items = [(rename(k), v.detach().clone().contiguous()) for k, v in model.state_dict().items()]
        save_torch_safetensors(items, out_dir, max_shard_bytes)
        config.save_pretrained(out_dir)
    transformers.GenerationConfig.from_model_config(config).save_pretrained(out_dir)
    save_processor(out_dir, config)
    return out_dir



def build_tiny_llava_next(out_dir: str | os.PathLike, *, names: str = "hub", max_shard_bytes: int | None = None,
                          seed: int = 0, **config_kwargs):
    """A random tiny LLaVA-NeXT (``tiny_llava_next_config(**config_kwargs)``, :func:`random_llava_next`) written
    by :func:`write_llava_next`. Returns (``out_dir`` as a string, the torch model)."""
    model = random_llava_next(tiny_llava_next_config(**config_kwargs), seed)
    return write_llava_next(model, out_dir, names=names, max_shard_bytes=max_shard_bytes), model
