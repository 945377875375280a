"""Full-size RANDOM-WEIGHT checkpoints of LLaVA-1.5-7B, LLaVA-NeXT-7B and LLaDA-V-8B, written shard by shard (for ``vtp-bench``).

**The weights are random** (uniform, see :func:`write_full_size`); only the shapes, names and configs are the real
models'. Every config.json written here carries ``"vtp_random_weights": true`` (as the other testbed writers do), so
``vtp-convert`` marks the converted checkpoint and every output says the weights are random. Use these checkpoints to
measure speed and memory, never quality.

Presets (:data:`PRESETS`)
=========================

``llava-1.5-7b`` — the config.json of the hub repository ``llava-hf/llava-1.5-7b-hf``. Sources: the transformers
``LlavaConfig`` / ``LlamaConfig`` defaults and two public copies of that config.json found with the code search
(``image_token_index 32000``, ``pad_token_id 32001``, ``projector_hidden_act "gelu"``, text_config ``max_position_embeddings 4096``,
``rms_norm_eps 1e-05``, ``vocab_size 32064``; vision_config ``hidden_size 1024``, ``image_size 336``,
``intermediate_size 4096``, ``num_attention_heads 16``, ``num_hidden_layers 24``, ``patch_size 14``,
``projection_dim 768``; ``vision_feature_layer -2``, ``vision_feature_select_strategy "default"``,
``tie_word_embeddings false``). Fields that config leaves to transformers' defaults are written out explicitly with
those defaults: Llama-2-7B / Vicuna-7B ``hidden_size 4096``, ``intermediate_size 11008``, ``num_hidden_layers 32``,
``num_attention_heads 32``, ``num_key_value_heads 32``, ``hidden_act silu``, RoPE θ 10000 (``LlamaConfig``
defaults = Llama-2-7B); CLIP ``hidden_act quick_gelu``, ``layer_norm_eps 1e-5`` (``CLIPVisionConfig`` defaults);
projector bias true (``multimodal_projector_bias`` default). Tensor names: the hub's ``llava-hf/*`` layout
(``vision_tower.vision_model.*``, :func:`vtp_jax.testbed.hf_llava._param_specs` with ``names="hub"``). Parameter
count: 7,063,427,072 — equal to the published count of llava-hf/llava-1.5-7b-hf (checked in the tests).

``llava-next-7b`` — the config.json of ``llava-hf/llava-v1.6-vicuna-7b-hf``: LLaVA-1.6 keeps LLaVA-1.5-7B's CLIP
ViT-L/14-336 tower, ``mlp2x_gelu`` projector and Vicuna-7B decoder, so every field above is reused
(:func:`_llava_next_config`), with ``model_type llava_next``, ``LlavaNextForConditionalGeneration``,
``image_grid_pinpoints [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]`` (transformers'
``LlavaNextConfig`` default, :data:`vtp_jax.families.llava_next.config.DEFAULT_GRID_PINPOINTS`, which that hub
config writes out) and ``use_image_newline_parameter true`` (the learned ``image_newline`` [4096] vector). Sources:
the transformers ``LlavaNextConfig`` defaults and the LLaVA-1.5 sources above; the hub file itself was not re-read
here, so text_config fields it may set differently (e.g. its ``pad_token_id``) are LLaVA-1.5's. Tensor names: the
``llava-hf/llava-v1.6-*`` layout (LLaVA's hub names + ``image_newline``; :data:`vtp_jax.testbed.hf_llava_next.
HUB_PREFIXES`). Parameter count: LLaVA-1.5-7B's + 4096 = 7,063,431,168 (the hub page rounds it to 7.06 B). The
processor files: :func:`vtp_jax.testbed.hf_llava_next.save_processor` (``LlavaNextProcessor``, CLIP 336-px tiles,
the pinpoints) with the LLaVA tokenizer below.

``llada-v-8b`` — GSAI-ML/LLaDA-V. Sources: the LLaDA-V code (ML-GSAI/LLaDA-V, and no ``vision_config`` in the real
config.json, SigLIP defaults hard-coded, 384 px / patch 14 → 27 × 27 = 729 patches per tile, ``image_grid_pinpoints``
stored expanded as ``[[384, 384], [384, 768], …]`` up to 6 × 6 tiles, mask ``<|mdm_mask|>`` = 126336, BOS 126080,
EOS 126081, EOT 126348, start / end header 126346 / 126347) and the defaults the repository's own reader assumes for
a real LLaDA-V config (:func:`vtp_jax.config.llada_v_config_from_hf`: SigLIP so400m-patch14-384 hidden 1152, MLP
4304, 16 heads, ``layer_norm_eps 1e-6``, ``gelu_pytorch_tanh``, 27 layers of which LLaDA-V deletes the last, so 26
are stored; ``mm_projector_type mlp2x_gelu`` 1152 → 4096 → 4096; ``mm_patch_merge_type spatial_unpad``;
``image_aspect_ratio anyres_max_4``; image placeholder −200 = LLaVA's ``IMAGE_TOKEN_INDEX``). LLaDA-8B decoder
(GSAI-ML/LLaDA-8B-Instruct config.json): hidden 4096, MLP 12288, 32 layers, 32 heads, 32 KV heads, vocab 126464, RoPE θ 500000, RMSNorm eps
1e-5, no biases, untied head; ``max_position_embeddings 4096`` is LLaDA-8B's ``max_sequence_length`` (from memory of
its config, not re-verified here). The real LLaDA-V config.json was not in the searchable index; two fields that it
does not carry are added, as the other testbed writer does: a ``vision_config`` dict (26 stored layers) and
``mask_token_id`` (so the file is self-describing; the converter would infer both). Tensor names: LLaDA-V's
(:func:`vtp_jax.testbed.hf_llada_v.param_specs`, ``names="llada_v"``). Decoder parameter count (embedding + 32
layers + final norm + head): 8,015,581,184 ≈ the published 8.02 B of LLaDA-8B; with SigLIP (26 stored layers + post
layernorm), projector and newline the checkpoint holds 8,434,837,024 parameters (see :func:`param_count`).

``layers=N`` cuts the DECODER depth to N (``num_hidden_layers = N``; the vision tower stays full) for quicker runs.
``overrides`` (tests only) shrink widths: keys in :data:`OVERRIDE_KEYS`; such a checkpoint is no longer the real model
and its config says so (``"vtp_overrides"``).

Files written (an HF-format directory that ``vtp-convert`` accepts): ``model-0000i-of-0000n.safetensors`` (shards of
at most ``max_shard_bytes``, 2 GB by default; a tensor larger than that gets a shard of its own) +
``model.safetensors.index.json``, ``config.json``, ``generation_config.json``, tokenizer files
(:func:`build_tokenizer`: a small byte-level BPE padded to the real vocabulary with unused placeholder entries, the
special tokens at their real ids — training a 126k-entry BPE on the built-in corpus is pointless, and the bench builds
its prompts from ids directly) and the image processor (LLaVA: ``LlavaProcessor`` with a CLIP image processor at 336
px; LLaDA-V: ``LlavaOnevisionImageProcessor`` at 384 px; the existing ``save_processor`` helpers).

Memory: each tensor is generated and written in float32 chunks of :data:`CHUNK_ELEMENTS` elements straight into its
shard file (the header is known from the shapes), so the writer's peak RSS stays near one chunk (~100 MB) plus the
tokenizer, whatever the model size.

Cache: :func:`cached_checkpoint` keeps complete checkpoints under ``$VTP_CACHE`` or ``~/.cache/vtp_jax/presets``
(a directory is complete once its marker file :data:`COMPLETE_MARKER`, written last, exists).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable

import numpy as np

PRESETS = ("llava-1.5-7b", "llava-next-7b", "llada-v-8b")
FAMILY = {"llava-1.5-7b": "llava", "llava-next-7b": "llava_next", "llada-v-8b": "llada_v"}
MAX_LAYERS = 32  # every decoder here has 32 layers
PUBLISHED_PARAMS = {"llava-1.5-7b": 7_063_427_072}  # llava-hf/llava-1.5-7b-hf model card / safetensors index
PUBLISHED_LLADA_8B_PARAMS = 8.02e9  # LLaDA-8B (the paper's / model card's "8B", 8.02 B)
DEFAULT_SHARD_BYTES = 2 * 10**9
CHUNK_ELEMENTS = 1 << 24  # random numbers per chunk (float32: 64 MB)
COMPLETE_MARKER = ".vtp_complete"
INIT_STD = 0.02  # standard deviation of the random weights (biases: INIT_STD / 10)
# Test-only width overrides (a reduced model, NOT the real one).
OVERRIDE_KEYS = ("text_hidden", "text_mlp", "text_heads", "text_kv_heads", "vision_hidden", "vision_layers",
                 "vision_mlp", "vision_heads", "image_size", "patch_size")

# LLaVA-1.5 / Llama-2 tokenizer ids (llava-hf/llava-1.5-7b-hf).
LLAVA_UNK_ID, LLAVA_BOS_ID, LLAVA_EOS_ID = 0, 1, 2
LLAVA_IMAGE_TOKEN_ID, LLAVA_PAD_ID = 32000, 32001
# LLaDA-8B tokenizer ids (GSAI-ML/LLaDA-8B-Instruct tokenizer).
LLADA_BOS_ID, LLADA_EOS_ID, LLADA_MASK_ID = 126080, 126081, 126336
LLADA_START_HEADER_ID, LLADA_END_HEADER_ID, LLADA_EOT_ID = 126346, 126347, 126348
LLADA_IMAGE_TOKEN_INDEX = -200  # LLaVA's IMAGE_TOKEN_INDEX placeholder (not a vocabulary entry)
LLADA_SUPPRESS_IDS = (LLADA_EOS_ID, LLADA_BOS_ID, LLADA_START_HEADER_ID, LLADA_END_HEADER_ID)
# Ordinary text ids the bench may draw for prompts (well inside both vocabularies, no special ids).
TEXT_ID_RANGE = {"llava-1.5-7b": (3, 32000), "llava-next-7b": (3, 32000), "llada-v-8b": (300, 126000)}
# LLaVA-NeXT's candidate (height, width) resolutions: transformers' LlavaNextConfig default, which the hub config of
# llava-hf/llava-v1.6-vicuna-7b-hf spells out (vtp_jax.families.llava_next.config.DEFAULT_GRID_PINPOINTS).
LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


class PresetError(ValueError):
    """Unknown preset, bad ``layers`` / ``dtype`` / override (the bench reports it as ``vtp-bench: error: ...``)."""


def check_preset(preset: str, layers: int | None = None) -> None:
    """Raises PresetError for an unknown preset or ``layers`` outside [1, 32]."""
    if preset not in PRESETS:
        raise PresetError(f"unknown full-size preset {preset!r} (choose from {', '.join(PRESETS)})")
    if layers is not None and not (isinstance(layers, int) and 1 <= layers <= MAX_LAYERS):
        raise PresetError(f"--layers must be an integer in [1, {MAX_LAYERS}], got {layers!r}")


def _check_overrides(overrides: dict | None) -> dict:
    out = dict(overrides or {})
    for k, v in out.items():
        if k not in OVERRIDE_KEYS:
            raise PresetError(f"unknown override {k!r} (allowed: {', '.join(OVERRIDE_KEYS)})")
        if not isinstance(v, int) or v < 1:
            raise PresetError(f"override {k} must be a positive integer, got {v!r}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------

def _llava_config(layers: int, ov: dict) -> dict:
    hidden = ov.get("text_hidden", 4096)
    heads = ov.get("text_heads", 32)
    vision_hidden = ov.get("vision_hidden", 1024)
    image, patch = ov.get("image_size", 336), ov.get("patch_size", 14)
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "ignore_index": -100,
        "image_token_index": LLAVA_IMAGE_TOKEN_ID,
        "pad_token_id": LLAVA_PAD_ID,
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "image_seq_length": (image // patch) ** 2,
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "_name_or_path": "lmsys/vicuna-7b-v1.5",
            "vocab_size": 32064,
            "hidden_size": hidden,
            "intermediate_size": ov.get("text_mlp", 11008),
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": ov.get("text_kv_heads", heads if "text_heads" in ov else 32),
            "head_dim": hidden // heads,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": LLAVA_BOS_ID,
            "eos_token_id": LLAVA_EOS_ID,
            "pad_token_id": LLAVA_PAD_ID,
            "tie_word_embeddings": False,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": vision_hidden,
            "intermediate_size": ov.get("vision_mlp", 4096),
            "num_hidden_layers": ov.get("vision_layers", 24),
            "num_attention_heads": ov.get("vision_heads", 16),
            "image_size": image,
            "patch_size": patch,
            "num_channels": 3,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "projection_dim": 768,
        },
    }


def _llava_next_config(layers: int, ov: dict) -> dict:
    """llava-hf/llava-v1.6-vicuna-7b-hf: LLaVA-1.5-7B's CLIP-336 tower, projector and Vicuna-7B decoder (the same
    dict as :func:`_llava_config`) with ``model_type llava_next``, the anyres pinpoints (scaled with an
    ``image_size`` override, tests only) and ``use_image_newline_parameter`` (an ``image_newline`` [D] vector)."""
    cfg = _llava_config(layers, ov)
    tile = cfg["vision_config"]["image_size"]
    cfg.update({
        "architectures": ["LlavaNextForConditionalGeneration"],
        "model_type": "llava_next",
        "image_grid_pinpoints": [[h * tile // 336, w * tile // 336] for h, w in LLAVA_NEXT_PINPOINTS],
        "use_image_newline_parameter": True,
    })
    cfg["text_config"]["_name_or_path"] = "lmsys/vicuna-7b-v1.5"
    return cfg


def _llada_v_config(layers: int, ov: dict) -> dict:
    hidden = ov.get("text_hidden", 4096)
    heads = ov.get("text_heads", 32)
    vision_hidden = ov.get("vision_hidden", 1152)
    tile, patch = ov.get("image_size", 384), ov.get("patch_size", 14)
    return {
        "architectures": ["LlavaLLaDAModelLM"],
        "model_type": "llava_llada",
        "hidden_size": hidden,
        "intermediate_size": ov.get("text_mlp", 12288),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": ov.get("text_kv_heads", heads if "text_heads" in ov else 32),
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "attention_bias": False,
        "max_position_embeddings": 4096,
        "vocab_size": 126464,
        "tie_word_embeddings": False,
        "bos_token_id": LLADA_BOS_ID,
        "eos_token_id": LLADA_EOS_ID,
        "pad_token_id": LLADA_EOS_ID,
        "mask_token_id": LLADA_MASK_ID,
        "image_token_index": LLADA_IMAGE_TOKEN_INDEX,
        "mm_vision_tower": "google/siglip2-so400m-patch14-384",
        "mm_hidden_size": vision_hidden,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_patch_merge_type": "spatial_unpad",
        "mm_newline_position": "grid",
        "image_aspect_ratio": "anyres_max_4",
        # Stored expanded as (width, height) pairs, 1×1 … 6×6 tiles (symmetric: the same set read either way).
        "image_grid_pinpoints": [[i * tile, j * tile] for i in range(1, 7) for j in range(1, 7)],
        "vision_feature_layer": -1,
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": vision_hidden,
            "intermediate_size": ov.get("vision_mlp", 4304),
            "num_hidden_layers": ov.get("vision_layers", 26),  # 27 minus the one LLaDA-V deletes
            "num_attention_heads": ov.get("vision_heads", 16),
            "image_size": tile,
            "patch_size": patch,
            "num_channels": 3,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
        },
    }


def preset_config(preset: str, *, layers: int | None = None, dtype: str = "bfloat16",
                  overrides: dict | None = None) -> dict:
    """The config.json dict of ``preset`` with ``num_hidden_layers = layers`` (None = 32), marked random-weight.

    Raises PresetError (unknown preset, layers outside [1, 32], bad override, bad dtype)."""
    check_preset(preset, layers)
    if dtype not in ("bfloat16", "float32", "float16"):
        raise PresetError(f"dtype must be bfloat16, float16 or float32, got {dtype!r}")
    ov = _check_overrides(overrides)
    n = MAX_LAYERS if layers is None else layers
    cfg = {"llava": _llava_config, "llava_next": _llava_next_config, "llada_v": _llada_v_config}[FAMILY[preset]](n, ov)
    cfg["torch_dtype"] = dtype
    cfg["vtp_random_weights"] = True
    cfg["vtp_preset"] = preset
    cfg["vtp_layers"] = n
    if ov:
        cfg["vtp_overrides"] = ov
    return cfg


def param_specs(config: dict) -> list[tuple[str, tuple, str]]:
    """(name, shape, kind) of every tensor of a preset config (kind: "weight", "bias", "norm", "embed"), in the
    order they are written."""
    if config.get("model_type") == "llava":
        import transformers

        from vtp_jax.testbed.hf_llava import _param_specs

        return _param_specs(transformers.LlavaConfig.from_dict(config), "hub")
    if config.get("model_type") == "llava_next":  # LLaVA's hub names + the newline (llava-hf/llava-v1.6-* layout)
        import transformers

        from vtp_jax.testbed.hf_llava import _param_specs

        llava = {k: v for k, v in config.items() if k not in ("image_grid_pinpoints", "use_image_newline_parameter")}
        specs = _param_specs(transformers.LlavaConfig.from_dict({**llava, "model_type": "llava"}), "hub")
        return specs + [("image_newline", (config["text_config"]["hidden_size"],), "embed")]
    from vtp_jax.testbed.hf_llada_v import param_specs as llada_specs

    return llada_specs(config, "llada_v")


def param_count(config: dict) -> dict[str, int]:
    """Parameter counts: ``total`` (every stored tensor), ``decoder`` (token embedding + layers + final norm + LM
    head), ``decoder_layers_and_head`` (what one decode step reads: layers + final norm + head), ``vision``
    (tower + projector + newline)."""
    total = decoder = read = 0
    for name, shape, _ in param_specs(config):
        n = int(np.prod(shape))
        total += n
        if _is_decoder(name):
            decoder += n
            if "embed_tokens" not in name:
                read += n
    return {"total": total, "decoder": decoder, "decoder_layers_and_head": read, "vision": total - decoder}


def _is_decoder(name: str) -> bool:
    return name.startswith(("language_model.", "lm_head.", "model.embed_tokens.", "model.layers.", "model.norm."))


def decoder_weight_bytes(config: dict, bytes_per_param: int = 2) -> int:
    """Bytes of the decoder layers + final norm + LM head at ``bytes_per_param`` (2 = bf16): what every decode step
    (LLaVA) or denoising step (LLaDA-V) must read from memory at batch 1 (the embedding is a gather of a few rows)."""
    return bytes_per_param * param_count(config)["decoder_layers_and_head"]


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------

def build_tokenizer(vocab_size: int, specials: dict[int, str], **special_roles):
    """A byte-level BPE tokenizer with exactly ``vocab_size`` entries and ``specials`` ({id: token}) at their ids.

    A small BPE (a few hundred merges) is trained on the testbed's built-in corpus; every id between it and the
    special ids is an unused placeholder ``<vtp_unused_N>`` (never produced: no merge builds it). This keeps the
    real id layout (image / pad / mask / header ids) without training a real-size vocabulary. ``special_roles``
    (``bos_token=...``, ``eos_token=...``, ``pad_token=...``, ``unk_token=...``, ``mask_token=...``,
    ``chat_template=...``) go to ``PreTrainedTokenizerFast``. Returns the tokenizer (``len == vocab_size``)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from vtp_jax.testbed.hf_llava import _corpus

    low = sorted(i for i in specials if i < 300)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=[specials[i] for i in low], initial_alphabet=alphabet,
                                  min_frequency=2, show_progress=False)
    base.train_from_iterator(list(_corpus()), trainer=trainer)
    model = json.loads(base.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    if [vocab.get(specials[i]) for i in low] != low:
        raise AssertionError("low special ids did not land at their positions")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    used = set(vocab.values())
    if max(used) >= min(i for i in specials if i >= 300):
        raise AssertionError("trained vocabulary overlaps the high special ids")
    for i in range(vocab_size):
        if i in specials:
            vocab[specials[i]] = i
        elif i not in used:
            vocab[f"<vtp_unused_{i}>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=special_roles.get("unk_token")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(specials.values()))
    out = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, add_bos_token=False, add_eos_token=False,
                                               model_max_length=4096, padding_side="left", **special_roles)
    for i, t in specials.items():
        if out.convert_tokens_to_ids(t) != i:
            raise AssertionError(f"special token {t!r} got id {out.convert_tokens_to_ids(t)}, expected {i}")
    return out


def _llava_tokenizer(config: dict):
    """The LLaVA-1.5 / LLaVA-NeXT presets' tokenizer (Llama special ids, ``<image>``, ``<pad>``)."""
    return build_tokenizer(
        config["text_config"]["vocab_size"],
        {LLAVA_UNK_ID: "<unk>", LLAVA_BOS_ID: "<s>", LLAVA_EOS_ID: "</s>", LLAVA_IMAGE_TOKEN_ID: "<image>",
         LLAVA_PAD_ID: "<pad>"},
        unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>", extra_special_tokens=["<image>"])


def _save_tokenizer_and_processor(config: dict, out_dir: str) -> None:
    if config["model_type"] == "llava_next":
        import transformers

        from vtp_jax.testbed.hf_llava_next import save_processor as save_next

        save_next(out_dir, transformers.LlavaNextConfig.from_dict(config), tokenizer=_llava_tokenizer(config))
    elif config["model_type"] == "llava":
        import transformers

        from vtp_jax.testbed.hf_llava import save_processor

        save_processor(out_dir, _llava_tokenizer(config), transformers.LlavaConfig.from_dict(config))
    else:
        from vtp_jax.testbed.hf_llada_v import LLADA_V_CHAT_TEMPLATE, save_processor

        tok = build_tokenizer(
            config["vocab_size"],
            {LLADA_BOS_ID: "<|startoftext|>", LLADA_EOS_ID: "<|endoftext|>", LLADA_MASK_ID: "<|mdm_mask|>",
             LLADA_START_HEADER_ID: "<|start_header_id|>", LLADA_END_HEADER_ID: "<|end_header_id|>",
             LLADA_EOT_ID: "<|eot_id|>"},
            bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
            mask_token="<|mdm_mask|>",
            extra_special_tokens=["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            chat_template=LLADA_V_CHAT_TEMPLATE)
        save_processor(out_dir, tok, config)


# ---------------------------------------------------------------------------------------------------------------
# Streaming safetensors writer
# ---------------------------------------------------------------------------------------------------------------

_ST = {"bfloat16": ("BF16", 2), "float16": ("F16", 2), "float32": ("F32", 4)}


def plan_shards(specs: list[tuple[str, tuple, str]], dtype: str, max_shard_bytes: int = DEFAULT_SHARD_BYTES
                ) -> list[list[tuple[str, tuple, str]]]:
    """Greedy split of ``specs`` (in order) into shards of at most ``max_shard_bytes``; a tensor larger than the
    limit gets a shard of its own (:func:`vtp_jax.checkpoint.group_by_bytes`)."""
    from vtp_jax.checkpoint import group_by_bytes

    size = _ST[dtype][1]
    return group_by_bytes(specs, lambda spec: int(np.prod(spec[1])) * size, max_shard_bytes)


def _header(shard: list[tuple[str, tuple, str]], dtype: str) -> bytes:
    code, size = _ST[dtype]
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in shard:
        n = int(np.prod(shape)) * size
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _np_dtype(dtype: str):
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def _write_tensor(f, name: str, shape: tuple, kind: str, dtype: str, seed: int) -> None:
    """Writes one tensor's bytes (little-endian) in float32 chunks. Weights ~ U(−√3·σ, √3·σ), σ = INIT_STD (std σ),
    biases σ/10, norms ones, the newline vector σ = 1/√D; each tensor's generator is seeded by (seed, crc32(name)),
    so a tensor's values do not depend on the depth (``layers``) or on the other tensors."""
    n = int(np.prod(shape))
    out_dtype = _np_dtype(dtype).newbyteorder("<")
    if kind == "norm":
        one = np.ones(min(n, CHUNK_ELEMENTS), np.float32).astype(out_dtype)
        for start in range(0, n, CHUNK_ELEMENTS):
            f.write(one[: min(CHUNK_ELEMENTS, n - start)].tobytes())
        return
    std = {"weight": INIT_STD, "bias": INIT_STD / 10, "embed": shape[0] ** -0.5}[kind]
    half = std * 3.0**0.5
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    buf = np.empty(min(n, CHUNK_ELEMENTS), np.float32)
    for start in range(0, n, CHUNK_ELEMENTS):
        m = min(CHUNK_ELEMENTS, n - start)
        chunk = buf[:m]
        rng.random(out=chunk, dtype=np.float32)
        chunk -= 0.5
        chunk *= 2.0 * half
        f.write(chunk.astype(out_dtype).tobytes())


def write_full_size(preset: str, out_dir: str | os.PathLike, *, layers: int | None = None, dtype: str = "bfloat16",
                    seed: int = 0, overrides: dict | None = None, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                    progress: bool = False) -> str:
    """Writes the RANDOM-WEIGHT full-size checkpoint of ``preset`` into ``out_dir`` (created; existing files are
    overwritten), shard by shard; returns ``out_dir``.

    Args:
      preset: "llava-1.5-7b" or "llada-v-8b".
      layers: decoder depth (None = the real 32).
      dtype: "bfloat16" (default; the real checkpoints' storage precision is 16-bit), "float16" or "float32".
      seed: base seed of the random weights (see :func:`_write_tensor`).
      overrides: test-only widths (:data:`OVERRIDE_KEYS`), making a reduced model.
      max_shard_bytes: largest shard in bytes (default 2 GB).
      progress: a tqdm bar over the bytes written (stderr).

    Raises:
      PresetError: bad preset / layers / dtype / override. OSError: the directory cannot be written.
    """
    from tqdm.auto import tqdm

    config = preset_config(preset, layers=layers, dtype=dtype, overrides=overrides)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    specs = param_specs(config)
    shards = plan_shards(specs, dtype, max_shard_bytes)
    size = _ST[dtype][1]
    total = sum(int(np.prod(s[1])) for s in specs)
    weight_map = {}
    with tqdm(total=total * size, unit="B", unit_scale=True, desc=f"write {preset}", disable=not progress) as bar:
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            with open(os.path.join(out_dir, fname), "wb") as f:
                f.write(_header(shard, dtype))
                for name, shape, kind in shard:
                    _write_tensor(f, name, shape, kind, dtype, seed)
                    weight_map[name] = fname
                    bar.update(int(np.prod(shape)) * size)
    index = {"metadata": {"total_parameters": total, "total_size": total * size},
             "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    if config["model_type"] in ("llava", "llava_next"):
        gen = {"bos_token_id": LLAVA_BOS_ID, "eos_token_id": LLAVA_EOS_ID, "pad_token_id": LLAVA_PAD_ID}
    else:
        gen = {"bos_token_id": LLADA_BOS_ID, "eos_token_id": LLADA_EOS_ID, "pad_token_id": LLADA_EOS_ID}
    with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(gen, f, indent=2)
        f.write("\n")
    _save_tokenizer_and_processor(config, out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------------------

def default_cache_dir() -> str:
    """``$VTP_CACHE`` if set, else ``~/.cache/vtp_jax/presets``."""
    return os.environ.get("VTP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vtp_jax", "presets")


def cache_key(preset: str, layers: int | None, dtype: str, seed: int = 0, overrides: dict | None = None) -> str:
    """Directory name of a cached checkpoint, e.g. ``llava-1.5-7b-L32-bfloat16-s0``."""
    n = MAX_LAYERS if layers is None else layers
    key = f"{preset}-L{n}-{dtype}-s{seed}"
    if overrides:
        key += "-ov" + hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:10]
    return key


def cached_checkpoint(preset: str, layers: int | None = None, dtype: str = "bfloat16", cache_dir: str | None = None,
                      *, seed: int = 0, overrides: dict | None = None, progress: bool = False,
                      log: Callable[[str], None] | None = None) -> tuple[str, dict]:
    """A complete cached checkpoint of ``preset`` (built with :func:`write_full_size` if absent) →
    (directory, info). info: ``{"cached": bool, "write_s": seconds or None, "bytes": bytes on disk}``.

    The checkpoint is written into a temporary sibling directory, the marker :data:`COMPLETE_MARKER` is written last
    and the directory renamed into place, so an interrupted build is never mistaken for a complete one (a stale
    temporary directory is simply left behind; delete ``.tmp-*`` in the cache directory to reclaim it).
    Raises PresetError / OSError as :func:`write_full_size`."""
    check_preset(preset, layers)
    cache_dir = os.fspath(cache_dir or default_cache_dir())
    path = os.path.join(cache_dir, cache_key(preset, layers, dtype, seed, overrides))
    if os.path.isfile(os.path.join(path, COMPLETE_MARKER)):
        return path, {"cached": True, "write_s": None, "bytes": _dir_bytes(path)}
    os.makedirs(cache_dir, exist_ok=True)
    if os.path.exists(path):  # incomplete leftover under the final name: rebuild
        shutil.rmtree(path)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-", dir=cache_dir)
    if log:
        log(f"writing the random-weight {preset} checkpoint ({'all 32' if layers is None else layers} decoder layer(s), "
            f"{dtype}) into the cache {path}")
    t0 = time.perf_counter()
    try:
        write_full_size(preset, tmp, layers=layers, dtype=dtype, seed=seed, overrides=overrides, progress=progress)
        with open(os.path.join(tmp, COMPLETE_MARKER), "w", encoding="utf-8") as f:
            f.write(json.dumps({"preset": preset, "layers": layers, "dtype": dtype, "seed": seed,
                                "overrides": overrides or {}, "written_at": time.time()}) + "\n")
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path, {"cached": False, "write_s": time.perf_counter() - t0, "bytes": _dir_bytes(path)}


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
               if os.path.isfile(os.path.join(path, f)))
