"""Tiny random-weight LLaVA-1.5 checkpoints in real Hugging Face on-disk format.

Used by ``make demo`` on machines without torch and by the torch parity tests. Everything here
runs without torch: weights are drawn with numpy and written with ``safetensors.numpy``.

Public API
----------
``train_tokenizer``      byte-level BPE tokenizer (``<unk>``=0, ``<s>``=1, ``</s>``=2, ``<pad>``=3,
                         ``<image>``=4), trained on a built-in English corpus; never adds bos itself.
``LLAVA_CHAT_TEMPLATE``  LLaVA-1.5 style Jinja template: ``<s>USER: <image>\\n{q} ASSISTANT:``.
``tiny_llava_config``    small ``LlavaConfig`` (CLIP vision tower + Llama text model).
``save_processor``       tokenizer + CLIP image processor + ``LlavaProcessor`` (chat template included).
``write_random_llava``   config.json, generation_config.json, safetensors weights (+ index if sharded),
                         and the processor files.
``build_tiny_llava``     all of the above in one call.

Findings for the installed transformers (5.23)
----------------------------------------------
* ``LlavaConfig`` stores the image token as ``image_token_index``; ``image_token_id`` is an alias
  (``attribute_map``). config.json contains ``"image_token_index": 4``.
* Llama rope settings live in ``text_config.rope_parameters`` (there are no top-level
  ``rope_theta`` / ``rope_scaling`` keys in transformers 5). config.json gets
  ``"text_config": {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}`` or,
  with llama3 scaling, ``{"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
  "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 256}``.
  ``config.text_config.rope_scaling`` is a deprecated alias that returns the same dict.
* ``LlavaForConditionalGeneration.save_pretrained`` writes the *legacy* (pre-v4.52) top-level
  names ``language_model.model.*``, ``language_model.lm_head.weight``, ``multi_modal_projector.*``
  and ``vision_tower.*`` (note: no ``vision_model.`` level, unlike the hub's ``llava-hf/*`` files,
  which use ``vision_tower.vision_model.*``). Both layouts load without missing/unexpected keys
  thanks to transformers' conversion mapping. The "transformers" scheme (one line per pattern)::

      language_model.lm_head.weight                                (V, D)   absent if tied
      language_model.model.embed_tokens.weight                     (V, D)
      language_model.model.layers.N.input_layernorm.weight         (D,)
      language_model.model.layers.N.post_attention_layernorm.weight (D,)
      language_model.model.layers.N.self_attn.{q,k,v,o}_proj.weight
      language_model.model.layers.N.mlp.{gate,up,down}_proj.weight
      language_model.model.norm.weight                             (D,)
      multi_modal_projector.linear_{1,2}.{weight,bias}
      vision_tower.embeddings.class_embedding                      (Dv,)
      vision_tower.embeddings.patch_embedding.weight               (Dv, 3, P, P)   no bias
      vision_tower.embeddings.position_embedding.weight            ((S/P)^2+1, Dv)
      vision_tower.pre_layrnorm.{weight,bias}                      (sic: "layrnorm")
      vision_tower.encoder.layers.N.self_attn.{q,k,v,out}_proj.{weight,bias}
      vision_tower.encoder.layers.N.layer_norm{1,2}.{weight,bias}
      vision_tower.encoder.layers.N.mlp.fc{1,2}.{weight,bias}
      vision_tower.post_layernorm.{weight,bias}

  File metadata is ``{"format": "pt"}``; sharded output uses ``model-0000i-of-0000n.safetensors``
  plus ``model.safetensors.index.json`` with ``metadata.total_size`` / ``total_parameters``.
* Image processor: in transformers 5 ``CLIPImageProcessor`` is the *torchvision* backend and
  ``CLIPImageProcessorPil`` the numpy/PIL one. Both save ``"image_processor_type":
  "CLIPImageProcessor"``-style configs, and ``AutoProcessor.from_pretrained`` picks the backend at
  load time: torchvision if importable, else PIL. So without torch/torchvision the saved
  processor loads as ``CLIPImageProcessorPil`` and works (tested with ``torch`` and
  ``torchvision`` blocked in ``sys.modules``). To force the PIL path even when torchvision is
  installed, pass ``backend="pil"`` to ``AutoProcessor.from_pretrained``. We instantiate the PIL
  class when saving so that saving never needs torchvision either.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from collections.abc import Iterator

import numpy as np
import transformers

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
UNK_ID, BOS_ID, EOS_ID, PAD_ID, IMAGE_TOKEN_ID = range(5)
IMAGE_TOKEN = "<image>"

# LLaVA-1.5 (vicuna_v1) conversation format. bos is emitted by the template, not by the tokenizer.
# Images of a message come first (one "<image>\n" each), then its text parts joined by spaces.
# User turns end with " ", assistant turns with eos; add_generation_prompt appends "ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- for p in parts if p['type'] == 'text' -%}{{- p['text'] + ' ' -}}{%- endfor -%}"
    "{%- else -%}"
    "{{- message['role'] | upper + ': ' -}}"
    "{%- for p in parts if p['type'] == 'image' -%}{{- '<image>\n' -}}{%- endfor -%}"
    "{%- for p in parts if p['type'] == 'text' -%}"
    "{{- p['text'] -}}{%- if not loop.last -%}{{- ' ' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- else -%}{{- ' ' -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------

_SUBJECTS = ["cat", "dog", "bird", "horse", "cow", "fish", "rabbit", "elephant", "giraffe", "zebra",
             "bear", "duck", "sheep", "tiger", "lion", "monkey"]
_COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple", "brown", "grey",
            "pink"]
_SHAPES = ["circle", "square", "triangle", "star", "rectangle", "heart", "line", "dot"]
_PLACES = ["on the grass", "in the water", "under a tree", "next to a house", "on a table",
           "in the sky", "near the road", "on the beach", "in a field", "behind the fence"]
_QUESTIONS = ["What is in the picture?", "What colour is the {s}?", "How many {s}s are there?",
              "Where is the {s}?", "Is there a {c} {h} in the image?", "What shape is shown?",
              "Describe this image.", "What is the {s} doing?", "Which animal is {c}?",
              "What is this?", "Can you see a {h}?", "What is next to the {s}?"]
_ANSWERS = ["The picture shows a {c} {s} {p}.", "There is a {c} {h} in the corner of the image.",
            "I can see {n} {s}s {p}.", "The {s} is standing {p}.", "This is a photo of a {s}.",
            "A {c} {h} is drawn next to the {s}.", "The image contains a {s} and a {c} {h}.",
            "Yes, the {s} is {c}.", "No, there is no {h} here."]
_NUMBERS = ["one", "two", "three", "four", "five", "many"]


def _corpus() -> Iterator[str]:
    """A deterministic English corpus of a few hundred short sentences about pictures."""
    for i, (s, c, h) in enumerate(itertools.product(_SUBJECTS, _COLOURS[:6], _SHAPES[:4])):
        fill = dict(s=s, c=c, h=h, p=_PLACES[i % len(_PLACES)], n=_NUMBERS[i % len(_NUMBERS)])
        yield _QUESTIONS[i % len(_QUESTIONS)].format(**fill)
        yield _ANSWERS[i % len(_ANSWERS)].format(**fill)
    for c, h in itertools.product(_COLOURS, _SHAPES):
        yield f"USER: Is the {h} {c}? ASSISTANT: Yes, it is a {c} {h}."


def train_tokenizer(vocab_size: int = 512) -> transformers.PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the built-in corpus.

    Args:
      vocab_size: total vocabulary size including the 5 special tokens and the 256 byte symbols;
        must be > 261. The model config's ``vocab_size`` must be >= ``len(tokenizer)``.

    Returns:
      A ``PreTrainedTokenizerFast`` with ``<unk>``=0, ``<s>``=1 (bos), ``</s>``=2 (eos), ``<pad>``=3
      and ``<image>``=4 (all special). No post-processor: encoding never adds bos/eos, the chat
      template does. Identical output for identical ``vocab_size`` (training is deterministic).

    Raises:
      ValueError: if ``vocab_size`` leaves no room for merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size <= len(SPECIAL_TOKENS) + len(alphabet):
        raise ValueError(f"vocab_size must be > {len(SPECIAL_TOKENS) + len(alphabet)}, got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=alphabet, min_frequency=2, show_progress=False)
    tok.train_from_iterator(list(_corpus()), trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        pad_token="<pad>", extra_special_tokens=[IMAGE_TOKEN], add_bos_token=False,
        add_eos_token=False, model_max_length=2048, padding_side="left")


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------

def tiny_llava_config(*, image_size: int = 224, patch_size: int = 32, vision_hidden: int = 64,
                      vision_layers: int = 2, vision_heads: int = 4, vision_mlp: int = 128,
                      text_hidden: int = 64, text_layers: int = 2, text_heads: int = 4,
                      text_kv_heads: int = 4, text_mlp: int = 128, vocab_size: int = 512,
                      max_position_embeddings: int = 2048,
                      vision_feature_select_strategy: str = "default",
                      vision_feature_layer: int | list[int] = -2,
                      rope_scaling: dict | None = None,
                      tie_word_embeddings: bool = False) -> transformers.LlavaConfig:
    """A small LLaVA-1.5 config: CLIP ViT (quick_gelu) + Llama (silu, RMSNorm eps 1e-5, theta 1e4).

    ``rope_scaling`` is a transformers-4-style dict (``rope_type`` or ``type``, plus its
    parameters, e.g. llama3 ``factor``/``low_freq_factor``/``high_freq_factor``/
    ``original_max_position_embeddings``); it is merged with ``rope_theta=10000`` into
    ``text_config.rope_parameters``. ``image_token_id=4``, text pad/bos/eos = 3/1/2,
    ``image_seq_length`` = number of image tokens per image (⌊S/P⌋², +1 for "full").

    ``image_size`` need not be a multiple of ``patch_size``: the strided patch convolution floors
    (⌊S/P⌋² patches; the last S mod P pixel rows / columns are ignored), as CLIP's own embedding does.

    Raises:
      ValueError: if ``image_size`` is smaller than ``patch_size`` or the strategy is not
        "default"/"full". Invalid head counts fail in transformers' own config validation.
    """
    if patch_size < 1 or image_size < patch_size:
        raise ValueError(f"image_size {image_size} must be ≥ patch_size {patch_size} ≥ 1")
    if vision_feature_select_strategy not in ("default", "full"):
        raise ValueError(f"unknown vision_feature_select_strategy {vision_feature_select_strategy!r}")
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    if rope_scaling is not None:
        rope_scaling = dict(rope_scaling)
        rope_scaling.setdefault("rope_type", rope_scaling.pop("type", "default"))
        rope.update(rope_scaling)
    vision = transformers.CLIPVisionConfig(
        hidden_size=vision_hidden, intermediate_size=vision_mlp, num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads, image_size=image_size, patch_size=patch_size,
        num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=text_hidden)
    text = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=text_hidden, intermediate_size=text_mlp,
        num_hidden_layers=text_layers, num_attention_heads=text_heads,
        num_key_value_heads=text_kv_heads, hidden_act="silu", rms_norm_eps=1e-5,
        max_position_embeddings=max_position_embeddings, rope_parameters=rope,
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        tie_word_embeddings=tie_word_embeddings)
    n_tokens = (image_size // patch_size) ** 2 + (vision_feature_select_strategy == "full")
    return transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID,
        image_seq_length=n_tokens, projector_hidden_act="gelu",
        vision_feature_select_strategy=vision_feature_select_strategy,
        vision_feature_layer=vision_feature_layer, multimodal_projector_bias=True,
        tie_word_embeddings=tie_word_embeddings)


# ----------------------------------------------------------------------------------------------
# Processor
# ----------------------------------------------------------------------------------------------

def save_processor(out_dir: str | os.PathLike, tokenizer: transformers.PreTrainedTokenizerBase,
                   config: transformers.LlavaConfig) -> None:
    """Save tokenizer, CLIP image processor and ``LlavaProcessor`` (with chat template) to out_dir.

    The image processor resizes the shortest edge to ``image_size`` (bicubic), center-crops to
    ``image_size``², rescales by 1/255 and normalises with the OpenAI CLIP mean/std; outputs
    float32 ``pixel_values`` of shape (B, 3, image_size, image_size). ``<image>`` expands to
    (image_size/patch_size)² tokens for "default", one more for "full".
    Works without torch/torchvision (PIL backend; see module docstring).
    """
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

    vc = config.vision_config
    image_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    image_processor = image_cls(
        do_resize=True, size={"shortest_edge": vc.image_size}, resample=PILImageResampling.BICUBIC,
        do_center_crop=True, crop_size={"height": vc.image_size, "width": vc.image_size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD, do_convert_rgb=True)
    processor = transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vc.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=LLAVA_CHAT_TEMPLATE, image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    processor.save_pretrained(out_dir)


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------

def _param_specs(config: transformers.LlavaConfig, names: str) -> list[tuple[str, tuple, str]]:
    """(name, shape, kind) for every tensor; kind is "weight", "norm" (ones), or "bias"."""
    if names not in ("transformers", "hub"):
        raise ValueError(f"names must be 'transformers' or 'hub', got {names!r}")
    vc, tc = config.vision_config, config.text_config
    dv, d, v = vc.hidden_size, tc.hidden_size, tc.vocab_size
    hd = tc.head_dim or d // tc.num_attention_heads
    n_feat = 1 if isinstance(config.vision_feature_layer, int) else len(config.vision_feature_layer)
    specs: list[tuple[str, tuple, str]] = []

    def linear(name, out_f, in_f, bias):
        specs.append((f"{name}.weight", (out_f, in_f), "weight"))
        if bias:
            specs.append((f"{name}.bias", (out_f,), "bias"))

    def layer_norm(name, dim, bias=True):
        specs.append((f"{name}.weight", (dim,), "norm"))
        if bias:
            specs.append((f"{name}.bias", (dim,), "bias"))

    vt = "vision_tower.vision_model" if names == "hub" else "vision_tower"
    n_pos = (vc.image_size // vc.patch_size) ** 2 + 1
    specs.append((f"{vt}.embeddings.class_embedding", (dv,), "weight"))
    specs.append((f"{vt}.embeddings.patch_embedding.weight",
                  (dv, vc.num_channels, vc.patch_size, vc.patch_size), "weight"))
    specs.append((f"{vt}.embeddings.position_embedding.weight", (n_pos, dv), "weight"))
    layer_norm(f"{vt}.pre_layrnorm", dv)
    for i in range(vc.num_hidden_layers):
        p = f"{vt}.encoder.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            linear(f"{p}.self_attn.{proj}", dv, dv, True)
        layer_norm(f"{p}.layer_norm1", dv)
        linear(f"{p}.mlp.fc1", vc.intermediate_size, dv, True)
        linear(f"{p}.mlp.fc2", dv, vc.intermediate_size, True)
        layer_norm(f"{p}.layer_norm2", dv)
    layer_norm(f"{vt}.post_layernorm", dv)

    linear("multi_modal_projector.linear_1", d, dv * n_feat, config.multimodal_projector_bias)
    linear("multi_modal_projector.linear_2", d, d, config.multimodal_projector_bias)

    lm = "language_model.model"
    specs.append((f"{lm}.embed_tokens.weight", (v, d), "weight"))
    for i in range(tc.num_hidden_layers):
        p = f"{lm}.layers.{i}"
        linear(f"{p}.self_attn.q_proj", tc.num_attention_heads * hd, d, tc.attention_bias)
        linear(f"{p}.self_attn.k_proj", tc.num_key_value_heads * hd, d, tc.attention_bias)
        linear(f"{p}.self_attn.v_proj", tc.num_key_value_heads * hd, d, tc.attention_bias)
        linear(f"{p}.self_attn.o_proj", d, tc.num_attention_heads * hd, tc.attention_bias)
        linear(f"{p}.mlp.gate_proj", tc.intermediate_size, d, tc.mlp_bias)
        linear(f"{p}.mlp.up_proj", tc.intermediate_size, d, tc.mlp_bias)
        linear(f"{p}.mlp.down_proj", d, tc.intermediate_size, tc.mlp_bias)
        layer_norm(f"{p}.input_layernorm", d, bias=False)
        layer_norm(f"{p}.post_attention_layernorm", d, bias=False)
    layer_norm(f"{lm}.norm", d, bias=False)
    if not config.tie_word_embeddings:
        specs.append(("language_model.lm_head.weight", (v, d), "weight"))
    return specs


_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _np_dtype(dtype: str):
    if dtype == "bfloat16":
        import ml_dtypes
        return ml_dtypes.bfloat16
    if dtype in ("float32", "float16"):
        return np.dtype(dtype)
    raise ValueError(f"dtype must be one of {sorted(_ST_DTYPES)}, got {dtype!r}")


def _save_safetensors(tensors: dict[str, np.ndarray], path: str, dtype: str) -> None:
    """safetensors.numpy.save_file, with a minimal own writer if it rejects the dtype (old bf16)."""
    from safetensors.numpy import save_file

    try:
        save_file(tensors, path, metadata={"format": "pt"})
        return
    except Exception:
        if dtype != "bfloat16":
            raise
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, arr in tensors.items():
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for arr in tensors.values():
            f.write(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())


def _shards(items: list[tuple[str, np.ndarray]], max_bytes: int | None) -> list[list[tuple[str, np.ndarray]]]:
    """Greedy split in order; a tensor larger than max_bytes gets a shard of its own."""
    if max_bytes is None:
        return [items]
    shards, cur, size = [], [], 0
    for name, arr in items:
        if cur and size + arr.nbytes > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, arr))
        size += arr.nbytes
    if cur:
        shards.append(cur)
    return shards


class TorchSized:
    """A torch tensor with the ``nbytes`` attribute :func:`_shards` reads."""

    def __init__(self, tensor):
        self.tensor = tensor
        self.nbytes = tensor.numel() * tensor.element_size()


def save_torch_safetensors(items: list, out_dir: str, max_shard_bytes: int | None = None) -> None:
    """Writes (name, torch tensor) pairs with ``safetensors.torch``: one ``model.safetensors``, or, when
    ``max_shard_bytes`` is given, ``model-0000i-of-0000n.safetensors`` shards split by :func:`_shards` plus
    ``model.safetensors.index.json`` (``metadata.total_parameters`` / ``total_size``, sorted ``weight_map``), the
    layout of Hugging Face's sharded files. Metadata ``{"format": "pt"}``."""
    from safetensors.torch import save_file

    if max_shard_bytes is None:
        save_file(dict(items), os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        return
    shards = _shards([(k, TorchSized(v)) for k, v in items], max_shard_bytes)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: s.tensor for k, s in shard}, os.path.join(out_dir, fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k, _ in shard})
    index = {"metadata": {"total_parameters": int(sum(v.numel() for _, v in items)),
                          "total_size": int(sum(v.numel() * v.element_size() for _, v in items))},
             "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")


def write_random_llava(out_dir: str | os.PathLike, config: transformers.LlavaConfig, *, seed: int = 0,
                       dtype: str = "float32", names: str = "transformers",
                       max_shard_bytes: int | None = None, std: float = 0.02) -> None:
    """Write a random-weight LLaVA checkpoint (no torch needed).

    Weights ~ N(0, std²) (float64 draws from ``np.random.default_rng(seed)``, cast to ``dtype``),
    norm weights are ones, biases ~ N(0, (std/10)²). Writes ``config.json`` (with ``dtype``),
    ``generation_config.json``, ``model.safetensors`` or, if ``max_shard_bytes`` is set,
    ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``, and the processor
    files (a tokenizer is trained with ``train_tokenizer(config.text_config.vocab_size)``).

    Args:
      names: "transformers" (what the installed transformers' ``save_pretrained`` writes) or
        "hub" (``llava-hf/*`` layout: ``vision_tower.vision_model.*``).
      dtype: "float32", "float16" or "bfloat16" (stored as safetensors BF16 via ml_dtypes).

    Raises:
      ValueError: unknown ``names`` or ``dtype``.
    """
    specs = _param_specs(config, names)
    np_dtype = _np_dtype(dtype)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for name, shape, kind in specs:
        if kind == "norm":
            arr = np.ones(shape)
        else:
            arr = rng.normal(0.0, std if kind == "weight" else std / 10, size=shape)
        items.append((name, arr.astype(np_dtype)))

    shards = _shards(items, max_shard_bytes)
    if len(shards) == 1 and max_shard_bytes is None:
        _save_safetensors(dict(items), os.path.join(out_dir, "model.safetensors"), dtype)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _save_safetensors(dict(shard), os.path.join(out_dir, fname), dtype)
            weight_map.update({name: fname for name, _ in shard})
        index = {"metadata": {"total_parameters": int(sum(a.size for _, a in items)),
                              "total_size": int(sum(a.nbytes for _, a in items))},
                 "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")

    config = config.__class__.from_dict(config.to_dict())  # don't mutate the caller's config
    config.dtype = dtype
    config.architectures = ["LlavaForConditionalGeneration"]
    config.vtp_random_weights = True  # carried into the converted checkpoint: outputs say the weights are random
    config.save_pretrained(out_dir)
    transformers.GenerationConfig.from_model_config(config).save_pretrained(out_dir)
    save_processor(out_dir, train_tokenizer(config.text_config.vocab_size), config)


def build_tiny_llava(out_dir: str | os.PathLike, **config_kwargs) -> str:
    """Config from ``tiny_llava_config(**config_kwargs)`` + random fp32 weights + processor.

    Returns ``out_dir`` as a string.
    """
    write_random_llava(out_dir, tiny_llava_config(**config_kwargs))
    return os.fspath(out_dir)


def widen_weights(model):
    """Re-draws a torch model's parameters in place for parity tests from torch's global generator (seed it before
    building the model): norm scales 1 + N(0, 0.1²), every other tensor (weights, biases, embeddings) N(0, 0.1²).
    transformers' initialiser (std 0.02, zero biases, unit norms) makes activations so small that parity would be
    met trivially. Returns ``model``. Needs torch."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = p.ndim == 1 and any(s in name for s in ("norm", "layrnorm"))
            if is_norm and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.1)
    return model
