"""Tiny random-weight LLaDA-V checkpoints in LLaDA-V's on-disk format, built without torch.

LLaDA-V is not in transformers (it loads with remote code), so the checkpoint imitates what its own code
(``LlavaLLaDAModelLM.save_pretrained``) writes: a ``config.json`` with ``model_type "llava_llada"``, Llama-style text
fields at the top level and LLaVA fields (``mm_projector_type``, ``mm_hidden_size``, ``image_aspect_ratio``,
``image_grid_pinpoints``, ``mm_patch_merge_type``…), and tensors under LLaDA-V's names (see
``vtp_jax/families/llada_v/names.py``). Two additions a real LLaDA-V config does not carry: a ``vision_config`` dict (SigLIP;
``num_hidden_layers`` = the layers stored, i.e. after LLaDA-V's deletion of the last one) and ``mask_token_id``.

Public API
----------
``LLADA_V_CHAT_TEMPLATE``   Llama-3 / LLaDA style: ``<|startoftext|><|start_header_id|>user<|end_header_id|>\\n\\n
                            <image>\\n{q}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n``.
``train_tokenizer``         byte-level BPE with LLaDA-like special tokens (ids in ``SPECIAL_TOKENS`` order).
``tiny_llada_v_config``     the config.json dict.
``param_specs``             (name, shape, kind) of every tensor, ``names="llada_v"`` or ``"llada"``.
``save_processor``          tokenizer (with chat template) + ``LlavaOnevisionImageProcessor`` (no
                            ``LlavaOnevisionProcessor``: it needs torchvision; ``AutoProcessor`` returns the tokenizer).
``build_tiny_llada_v``      all of it in one directory; returns the path.

Loading the processor files without ``AutoProcessor``::

    tok = transformers.AutoTokenizer.from_pretrained(d)          # chat template included
    ip = transformers.AutoImageProcessor.from_pretrained(d)      # LlavaOnevisionImageProcessor(Pil)

Transformers 5 picks the image-processor backend at load time: torchvision if importable, else the PIL/numpy class
``LlavaOnevisionImageProcessorPil`` (what is saved here, so saving needs neither torch nor torchvision). It returns
``pixel_values`` [B, max_tiles, 3, S, S] (base tile first; rows padded with zero tiles to the batch maximum) and
``image_sizes`` [B, 2] = (height, width).
"""

from __future__ import annotations

import json
import os

import numpy as np
import transformers

from vtp_jax.testbed.hf_llava import _corpus, _np_dtype, _save_safetensors

# LLaDA's specials (its ids: BOS 126080, EOS 126081, MASK 126336, start/end header 126346/126347, EOT 126348).
SPECIAL_TOKENS = (
    "<|startoftext|>", "<|endoftext|>", "[MASK]", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<image>",
)
BOS_ID, EOS_ID, MASK_ID, START_HEADER_ID, END_HEADER_ID, EOT_ID, IMAGE_TOKEN_ID = range(len(SPECIAL_TOKENS))
IMAGE_TOKEN = "<image>"
MASK_TOKEN = "[MASK]"
# What LLaDA-V never predicts at masked positions (EOS, BOS, start/end header), in this tokenizer's ids.
SUPPRESS_IDS = (EOS_ID, BOS_ID, START_HEADER_ID, END_HEADER_ID)
STOP_IDS = (EOS_ID, EOT_ID)

# bos once, then per message: header, content ("<image>\n" per image part, then text), <|eot_id|>.
LLADA_V_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' -}}"
    "{%- for p in parts if p['type'] == 'image' -%}{{- '<image>\n' -}}{%- endfor -%}"
    "{%- for p in parts if p['type'] == 'text' -%}"
    "{{- p['text'] | trim -}}{%- if not loop.last -%}{{- ' ' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{{- '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}"
)


def train_tokenizer(vocab_size: int = 320) -> transformers.PreTrainedTokenizerFast:
    """Byte-level BPE trained on the built-in corpus; special tokens get ids 0..6 in ``SPECIAL_TOKENS`` order.

    bos ``<|startoftext|>``, eos ``<|endoftext|>`` (also the pad token, as in LLaDA), mask ``[MASK]``; encoding never
    adds bos/eos (the chat template does). Raises ValueError if ``vocab_size`` leaves no room for merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size <= len(SPECIAL_TOKENS) + len(alphabet):
        raise ValueError(f"vocab_size must be > {len(SPECIAL_TOKENS) + len(alphabet)}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=alphabet, min_frequency=2, show_progress=False)
    tok.train_from_iterator(list(_corpus()), trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL_TOKENS[BOS_ID], eos_token=SPECIAL_TOKENS[EOS_ID],
        pad_token=SPECIAL_TOKENS[EOS_ID], mask_token=MASK_TOKEN,
        extra_special_tokens=[SPECIAL_TOKENS[START_HEADER_ID], SPECIAL_TOKENS[END_HEADER_ID],
                              SPECIAL_TOKENS[EOT_ID], IMAGE_TOKEN],
        add_bos_token=False, add_eos_token=False, model_max_length=4096, padding_side="left",
        chat_template=LLADA_V_CHAT_TEMPLATE)


def grid_pinpoints(max_grid: int, tile: int) -> list[list[int]]:
    """All (rows × cols) tile grids from 1×1 to max_grid × max_grid, as [height, width] pixel pairs."""
    return [[i * tile, j * tile] for i in range(1, max_grid + 1) for j in range(1, max_grid + 1)]


def tiny_llada_v_config(*, image_size: int = 32, patch_size: int = 8, vision_hidden: int = 32,
                        vision_layers: int = 2, vision_heads: int = 4, vision_mlp: int = 64,
                        text_hidden: int = 64, text_layers: int = 2, text_heads: int = 4, text_kv_heads: int = 4,
                        text_mlp: int = 128, vocab_size: int = 320, max_position_embeddings: int = 1024,
                        rope_theta: float = 500000.0, max_grid: int = 3, max_num_patches: int = 4,
                        mask_token_id: int | None = MASK_ID) -> dict:
    """config.json dict of a small LLaDA-V. ``vision_layers`` is the number of SigLIP layers *stored* (LLaDA-V's
    tower with its last layer already deleted); features are the output of the last one.

    ``max_grid`` sets the pinpoints (every grid up to max_grid × max_grid tiles of ``image_size``);
    ``max_num_patches`` the N of "anyres_max_N". ``mask_token_id=None`` leaves the key out (the converter must then
    refuse the checkpoint).

    ``image_size`` need not be a multiple of ``patch_size``: the strided patch convolution floors, as in SigLIP
    so400m-patch14-384 (384 // 14 = 27 patches per side, the last 384 − 27·14 = 6 pixel rows / columns ignored).

    Raises:
      ValueError: image_size smaller than patch_size, or hidden sizes not divisible by the head counts.
    """
    if patch_size < 1 or image_size < patch_size:
        raise ValueError(f"image_size {image_size} must be ≥ patch_size {patch_size} ≥ 1")
    if vision_hidden % vision_heads or text_hidden % text_heads or text_heads % text_kv_heads:
        raise ValueError("hidden sizes must divide by the head counts (and heads by kv heads)")
    cfg = {
        "architectures": ["LlavaLLaDAModelLM"],
        "model_type": "llava_llada",
        "hidden_size": text_hidden,
        "intermediate_size": text_mlp,
        "num_hidden_layers": text_layers,
        "num_attention_heads": text_heads,
        "num_key_value_heads": text_kv_heads,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": rope_theta,
        "attention_bias": False,
        "max_position_embeddings": max_position_embeddings,
        "vocab_size": vocab_size,
        "tie_word_embeddings": False,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": EOS_ID,
        "image_token_index": IMAGE_TOKEN_ID,
        "mm_vision_tower": "google/siglip2-so400m-patch14-384",
        "mm_hidden_size": vision_hidden,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_patch_merge_type": "spatial_unpad",
        "mm_newline_position": "grid",
        "image_aspect_ratio": f"anyres_max_{max_num_patches}",
        "image_grid_pinpoints": grid_pinpoints(max_grid, image_size),
        "vision_feature_layer": -1,
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": vision_hidden,
            "intermediate_size": vision_mlp,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": vision_heads,
            "image_size": image_size,
            "patch_size": patch_size,
            "num_channels": 3,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
        },
        "torch_dtype": "float32",
        # the toy tokenizer's prompts: the user turn alone (vtp_jax.processing.LladaVProcessor "plain"); the
        # official system turn would cost ~100 toy tokens per prompt
        "vtp_prompt_format": "plain",
    }
    if mask_token_id is not None:
        cfg["mask_token_id"] = mask_token_id
    return cfg


def param_specs(config: dict, names: str = "llada_v") -> list[tuple[str, tuple, str]]:
    """(name, shape, kind) of every tensor; kind "weight", "norm" (ones), "bias" or "embed".

    names: "llada_v" (LLaDA-V: Llama-style LLM names under ``model.``) or "llada" (the LLM under plain LLaDA-8B
    names ``model.transformer.*``; vision tower, projector and newline keep LLaDA-V's names).
    """
    if names not in ("llada_v", "llada"):
        raise ValueError(f"names must be 'llada_v' or 'llada', got {names!r}")
    vc = config["vision_config"]
    dv, p, s = vc["hidden_size"], vc["patch_size"], vc["image_size"]
    d, v, f = config["hidden_size"], config["vocab_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = d // heads
    specs: list[tuple[str, tuple, str]] = []

    def lin(name, out_f, in_f, bias=True):
        specs.append((f"{name}.weight", (out_f, in_f), "weight"))
        if bias:
            specs.append((f"{name}.bias", (out_f,), "bias"))

    def ln(name, dim, bias=True):
        specs.append((f"{name}.weight", (dim,), "norm"))
        if bias:
            specs.append((f"{name}.bias", (dim,), "bias"))

    vt = "model.vision_tower.vision_tower.vision_model"
    specs.append((f"{vt}.embeddings.patch_embedding.weight", (dv, vc.get("num_channels", 3), p, p), "weight"))
    specs.append((f"{vt}.embeddings.patch_embedding.bias", (dv,), "bias"))
    specs.append((f"{vt}.embeddings.position_embedding.weight", ((s // p) ** 2, dv), "weight"))
    for i in range(vc["num_hidden_layers"]):
        q = f"{vt}.encoder.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            lin(f"{q}.self_attn.{proj}", dv, dv)
        ln(f"{q}.layer_norm1", dv)
        lin(f"{q}.mlp.fc1", vc["intermediate_size"], dv)
        lin(f"{q}.mlp.fc2", dv, vc["intermediate_size"])
        ln(f"{q}.layer_norm2", dv)
    ln(f"{vt}.post_layernorm", dv)
    lin("model.mm_projector.0", d, dv)
    lin("model.mm_projector.2", d, d)
    specs.append(("model.image_newline", (d,), "embed"))

    if names == "llada_v":
        specs.append(("model.embed_tokens.weight", (v, d), "weight"))
        for i in range(config["num_hidden_layers"]):
            q = f"model.layers.{i}"
            lin(f"{q}.self_attn.q_proj", heads * hd, d, False)
            lin(f"{q}.self_attn.k_proj", kv * hd, d, False)
            lin(f"{q}.self_attn.v_proj", kv * hd, d, False)
            lin(f"{q}.self_attn.o_proj", d, heads * hd, False)
            lin(f"{q}.mlp.gate_proj", f, d, False)
            lin(f"{q}.mlp.up_proj", f, d, False)
            lin(f"{q}.mlp.down_proj", d, f, False)
            ln(f"{q}.input_layernorm", d, False)
            ln(f"{q}.post_attention_layernorm", d, False)
        ln("model.norm", d, False)
        specs.append(("lm_head.weight", (v, d), "weight"))
    else:
        specs.append(("model.transformer.wte.weight", (v, d), "weight"))
        for i in range(config["num_hidden_layers"]):
            q = f"model.transformer.blocks.{i}"
            ln(f"{q}.attn_norm", d, False)
            lin(f"{q}.q_proj", heads * hd, d, False)
            lin(f"{q}.k_proj", kv * hd, d, False)
            lin(f"{q}.v_proj", kv * hd, d, False)
            lin(f"{q}.attn_out", d, heads * hd, False)
            ln(f"{q}.ff_norm", d, False)
            lin(f"{q}.ff_proj", f, d, False)
            lin(f"{q}.up_proj", f, d, False)
            lin(f"{q}.ff_out", d, f, False)
        ln("model.transformer.ln_f", d, False)
        specs.append(("model.transformer.ff_out.weight", (v, d), "weight"))
    return specs


def save_processor(out_dir: str | os.PathLike, tokenizer: transformers.PreTrainedTokenizerBase, config: dict) -> None:
    """Writes the tokenizer (chat template included) and a ``LlavaOnevisionImageProcessor`` (PIL backend: tiles of
    ``vision_config.image_size``, the config's pinpoints, SigLIP mean/std 0.5, bicubic).

    No ``LlavaOnevisionProcessor`` is saved: in transformers 5 it cannot even be constructed without torchvision
    (its video-processor slot is resolved through the torchvision-only video registry), and real LLaDA-V checkpoints
    ship none either. Expand ``<image>`` to ``LladaV.num_visual_tokens(image_size)`` placeholders yourself.
    """
    from transformers.image_utils import PILImageResampling

    vc = config["vision_config"]
    s = vc["image_size"]
    image_cls = getattr(transformers, "LlavaOnevisionImageProcessorPil", None)
    image_cls = image_cls or transformers.LlavaOnevisionImageProcessor
    image_processor = image_cls(
        do_resize=True, size={"height": s, "width": s}, resample=PILImageResampling.BICUBIC,
        image_grid_pinpoints=[list(map(int, pp)) for pp in config["image_grid_pinpoints"]],
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5], do_convert_rgb=True, do_pad=True)
    out_dir = os.fspath(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)


def write_random_llada_v(out_dir: str | os.PathLike, config: dict, *, names: str = "llada_v", seed: int = 0,
                         dtype: str = "float32", std: float = 0.02) -> None:
    """Random weights (numpy, ``default_rng(seed)``; N(0, std²) weights, N(0, (std/10)²) biases, unit norms,
    N(0, 1/D) newline) saved as ``model.safetensors`` under LLaDA-V names, plus config.json and the processor files.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    np_dtype = _np_dtype(dtype)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape, kind in param_specs(config, names):
        if kind == "norm":
            arr = np.ones(shape)
        elif kind == "embed":
            arr = rng.normal(0.0, shape[0] ** -0.5, size=shape)
        else:
            arr = rng.normal(0.0, std if kind == "weight" else std / 10, size=shape)
        tensors[name] = arr.astype(np_dtype)
    _save_safetensors(tensors, os.path.join(out_dir, "model.safetensors"), dtype)
    config = {**config, "torch_dtype": dtype, "vtp_random_weights": True}  # converted outputs say "random weights"
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)
        fh.write("\n")
    with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as fh:
        json.dump({"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID}, fh, indent=2)
        fh.write("\n")
    save_processor(out_dir, train_tokenizer(config["vocab_size"]), config)


def build_tiny_llada_v(out_dir: str | os.PathLike, *, names: str = "llada_v", seed: int = 0, dtype: str = "float32",
                       **sizes) -> str:
    """Config from ``tiny_llada_v_config(**sizes)`` + random weights + tokenizer/image processor in ``out_dir``.

    Returns ``out_dir`` as a string.
    """
    write_random_llada_v(out_dir, tiny_llada_v_config(**sizes), names=names, seed=seed, dtype=dtype)
    return os.fspath(out_dir)
