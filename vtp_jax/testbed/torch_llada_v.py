"""A PyTorch LLaDA-V stand-in and LLaDA's sampling loop, for the parity tests and the benchmark's PyTorch side.

LLaDA-V is not in transformers, so :class:`Reference` is assembled like LLaDA-V's own code builds the model:
  * ``SiglipVisionModel`` with one layer more than the checkpoint stores, features = ``hidden_states[-2]`` (LLaDA-V
    deletes the last SigLIP layer and takes the new last output, without post-layernorm);
  * ``nn.Sequential(Linear, GELU, Linear)`` (``mlp2x_gelu``, saved as ``mm_projector.0`` / ``.2``);
  * transformers' ``LlavaOnevisionModel.pack_image_features`` (anyres_max_N, spatial_unpad, image_newline);
  * a ``LlamaModel`` made bidirectional: an explicit 4-D additive mask that is 0 for every valid key (returned
    as-is by transformers' mask preparation) and ``is_causal = False`` on every attention module (eager attention by
    default, so that ``output_attentions`` works; ``attn_implementation="sdpa"`` for speed);
  * an untied ``lm_head``.
``Reference.llada_v_state()`` gives its tensors under LLaDA-V's on-disk names; :func:`write_reference_checkpoint`
writes them as a LLaDA-V directory that ``vtp-convert`` accepts (so PyTorch and JAX run the same weights).

:func:`generate` is LLaDA's ``generate.py`` sampling loop (ML-GSAI/LLaDA: ``get_num_transfer_tokens``,
``add_gumbel_noise``, low-confidence / random remasking, the whole sequence recomputed at every step) in LLaDA-V's
form: the prompt (text embeddings with the packed image features spliced in) is embedded once, and at every step the
response ids are embedded and appended to it.

torch and transformers are imported only when something here is used: the module itself imports without them, and
``Reference`` (a ``torch.nn.Module`` subclass) is created on first access.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

def _torch():
    """The torch module, or ImportError with what to install."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised only without torch
        raise ImportError("vtp_jax.testbed.torch_llada_v needs torch (pip install 'vtp_jax[test]')") from e
    return torch


_REFERENCE_CLASS = None


def _reference_class():
    """Defines :class:`Reference` (needs torch and transformers) once and caches it."""
    global _REFERENCE_CLASS
    if _REFERENCE_CLASS is not None:
        return _REFERENCE_CLASS
    torch = _torch()
    import types

    import transformers
    from transformers.models.llava_onevision import modeling_llava_onevision as hf_ov

    class Reference(torch.nn.Module):
        """The PyTorch LLaDA-V stand-in (see the module docstring).

        config: a LLaDA-V config.json dict (``vtp_jax.testbed.hf_llada_v.tiny_llada_v_config``); seed: torch seed of
        the O(0.1) random weights; attn_implementation: the Llama attention ("eager" or "sdpa").
        """

        def __init__(self, config: dict, seed: int = 0, attn_implementation: str = "eager"):
            super().__init__()
            torch.manual_seed(seed)
            vc = config["vision_config"]
            self.config = config
            self.siglip = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
                hidden_size=vc["hidden_size"], intermediate_size=vc["intermediate_size"],
                num_hidden_layers=vc["num_hidden_layers"] + 1, num_attention_heads=vc["num_attention_heads"],
                image_size=vc["image_size"], patch_size=vc["patch_size"], hidden_act="gelu_pytorch_tanh",
                layer_norm_eps=vc["layer_norm_eps"], vision_use_head=False)).eval()
            d = config["hidden_size"]
            self.projector = torch.nn.Sequential(torch.nn.Linear(vc["hidden_size"], d), torch.nn.GELU(),
                                                 torch.nn.Linear(d, d))
            self.image_newline = torch.nn.Parameter(torch.randn(d))
            llama_cfg = transformers.LlamaConfig(
                vocab_size=config["vocab_size"], hidden_size=d, intermediate_size=config["intermediate_size"],
                num_hidden_layers=config["num_hidden_layers"], num_attention_heads=config["num_attention_heads"],
                num_key_value_heads=config["num_key_value_heads"], rms_norm_eps=config["rms_norm_eps"],
                max_position_embeddings=config["max_position_embeddings"],
                rope_parameters={"rope_type": "default", "rope_theta": config["rope_theta"]})
            llama_cfg._attn_implementation = attn_implementation
            self.llama = transformers.LlamaModel(llama_cfg).eval()
            for layer in self.llama.layers:
                layer.self_attn.is_causal = False
            self.lm_head = torch.nn.Linear(d, config["vocab_size"], bias=False)
            with torch.no_grad():  # O(0.1) weights, non-trivial norm scales and biases: every tensor matters
                for name, p in self.named_parameters():
                    is_norm = p.ndim == 1 and "norm" in name and name.endswith("weight")
                    p.copy_(1.0 + 0.1 * torch.randn_like(p) if is_norm else 0.1 * torch.randn_like(p))
            self.eval()

        # LLaDA-V's tensors: the tower without its last layer, projector, newline, LLM, head.
        def llada_v_state(self) -> dict[str, np.ndarray]:
            last = self.config["vision_config"]["num_hidden_layers"]  # index of the deleted layer
            out = {}
            for k, v in self.siglip.state_dict().items():
                if f"encoder.layers.{last}." in k:
                    continue
                k = k if k.startswith("vision_model.") else f"vision_model.{k}"  # transformers 5 dropped that level
                out[f"model.vision_tower.vision_tower.{k}"] = v
            for k, v in self.projector.state_dict().items():
                out[f"model.mm_projector.{k}"] = v
            out["model.image_newline"] = self.image_newline
            for k, v in self.llama.state_dict().items():
                out[f"model.{k}"] = v
            out["lm_head.weight"] = self.lm_head.weight
            return {k: v.detach().numpy().copy() for k, v in out.items()}

        def tile_features(self, pixels: torch.Tensor) -> torch.Tensor:
            hidden = self.siglip(pixels, output_hidden_states=True).hidden_states
            return self.projector(hidden[-2])

        def image_features(self, pixel_values: torch.Tensor, image_sizes, max_num_patches: int) -> list[torch.Tensor]:
            pins = self.config["image_grid_pinpoints"]
            tile = self.config["vision_config"]["image_size"]
            feats = []
            for b, size in enumerate(image_sizes):
                n = hf_ov.image_size_to_num_patches(list(size), pins, tile)
                feats.append(self.tile_features(pixel_values[b, :n]))
            cfg = types.SimpleNamespace(vision_config=types.SimpleNamespace(
                image_size=tile, patch_size=self.config["vision_config"]["patch_size"]), image_grid_pinpoints=pins)
            packed, _ = hf_ov.LlavaOnevisionModel.pack_image_features(
                types.SimpleNamespace(config=cfg), feats, torch.tensor([list(s) for s in image_sizes]),
                image_newline=self.image_newline, vision_aspect_ratio=f"anyres_max_{max_num_patches}")
            return packed

        def embed(self, ids: torch.Tensor, visual: list[torch.Tensor]) -> torch.Tensor:
            """Token embeddings [B, T, D] with row b's image-placeholder positions replaced by ``visual[b]``."""
            is_img = ids == self.config["image_token_index"]
            emb = self.llama.embed_tokens(torch.where(is_img, 0, ids)).clone()
            for b in range(ids.shape[0]):
                emb[b, is_img[b]] = visual[b]
            return emb

        @staticmethod
        def bidirectional_bias(mask: torch.Tensor) -> torch.Tensor:
            """Additive attention mask float32 [B, 1, T, T]: 0 for valid keys, the float32 minimum for padding."""
            b, t = mask.shape
            bias = torch.zeros(b, 1, t, t)
            return bias.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(torch.float32).min)

        def logits(self, ids: np.ndarray, mask: np.ndarray, visual: list[torch.Tensor], *, causal: bool = False):
            ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
            emb = self.embed(ids_t, visual)
            pos = (mask_t.cumsum(1) - 1).clamp(min=0)
            if causal:  # control: transformers' default (causal) mask construction
                h = self.llama(inputs_embeds=emb, attention_mask=mask_t, position_ids=pos).last_hidden_state
            else:
                bias = self.bidirectional_bias(mask_t)
                h = self.llama(inputs_embeds=emb, attention_mask=bias, position_ids=pos).last_hidden_state
            return self.lm_head(h)

    Reference.__module__ = __name__
    _REFERENCE_CLASS = Reference
    return Reference


def __getattr__(name: str) -> Any:
    """``Reference`` is created (torch imported) on first access."""
    if name == "Reference":
        return _reference_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------------------------
# LLaDA's sampling loop


def add_gumbel_noise(logits, temperature: float, generator=None):
    """LLaDA's Gumbel-max in float64: ``exp(logits) / (−log u)^T`` (the logits unchanged at T = 0)."""
    torch = _torch()
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand(logits.shape, dtype=torch.float64, generator=generator)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def get_num_transfer_tokens(mask_index, steps: int):
    """Tokens to unmask at each step: ``m // steps`` plus one for the first ``m % steps`` steps; bool [B, L] →
    int64 [B, steps] (LLaDA's linear schedule)."""
    torch = _torch()
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num_transfer_tokens = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num_transfer_tokens[i, : int(remainder[i])] += 1
    return num_transfer_tokens


def _max_num_patches(config: dict) -> int:
    m = re.fullmatch(r"anyres_max_(\d+)", str(config.get("image_aspect_ratio", "")))
    if m is None:
        raise ValueError(f"image_aspect_ratio must be 'anyres_max_N', got {config.get('image_aspect_ratio')!r}")
    return int(m.group(1))


def generate(model, ids, mask, pixel_values, image_sizes: Sequence[Sequence[int]], gen_length: int, steps: int,
             block_length: int, remasking: str = "low_confidence", temperature: float = 0.0, *,
             mask_id: int | None = None, suppress_ids: Sequence[int] = (), seed: int | None = None):
    """LLaDA's ``generate`` for the :class:`Reference` model, under ``torch.no_grad``.

    ids / mask: int [B, P] (numpy or torch), left-padded; pixel_values float32 [B, n_tiles, 3, S, S];
    image_sizes: (height, width) per row. ``gen_length`` response tokens in blocks of ``block_length``, ``steps``
    denoising steps in all (``steps / num_blocks`` per block). Every step runs the bidirectional decoder over the
    whole sequence ``[prompt, response]`` and computes the logits of every position (as LLaDA does); the ``k``
    masked positions of the current block with the highest confidence (``low_confidence``: the chosen token's
    softmax probability, float64) or random scores (``random``) are unmasked, ``k`` from
    :func:`get_num_transfer_tokens`. ``suppress_ids`` get −inf logits (LLaDA-V's forbidden EOS / header ids);
    ``mask_id`` defaults to ``model.config["mask_token_id"]``. Positions are ``cumsum(mask) − 1`` (as in
    :meth:`Reference.logits`). ``temperature > 0`` samples with float64 Gumbel noise from a torch generator seeded
    with ``seed`` (not the JAX sampler's noise).

    Returns the whole sequence int64 [B, P + gen_length] (LLaDA's return value; the response is ``[:, P:]``).
    Raises ValueError for lengths that do not divide or an unknown remasking.
    """
    torch = _torch()
    if gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be divisible by block_length ({block_length})")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps ({steps}) must be divisible by the number of blocks ({num_blocks})")
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"remasking must be 'low_confidence' or 'random', got {remasking!r}")
    steps_per_block = steps // num_blocks
    mask_id = int(model.config["mask_token_id"] if mask_id is None else mask_id)
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))

    with torch.no_grad():
        ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        mask_t = torch.as_tensor(np.asarray(mask), dtype=torch.long)
        pixels = torch.as_tensor(np.asarray(pixel_values, dtype=np.float32))
        b, p = ids_t.shape
        visual = model.image_features(pixels, [tuple(int(v) for v in s) for s in image_sizes],
                                      _max_num_patches(model.config))
        prompt_emb = model.embed(ids_t, visual)  # embedded once; the response part is re-embedded every step

        x = torch.full((b, p + gen_length), mask_id, dtype=torch.long)
        x[:, :p] = ids_t
        full_mask = torch.cat([mask_t, torch.ones((b, gen_length), dtype=torch.long)], dim=1)
        bias = model.bidirectional_bias(full_mask)
        pos = (full_mask.cumsum(1) - 1).clamp(min=0)

        for num_block in range(num_blocks):
            start = p + num_block * block_length
            end = start + block_length
            block_mask_index = x[:, start:end] == mask_id
            num_transfer_tokens = get_num_transfer_tokens(block_mask_index, steps_per_block)
            for i in range(steps_per_block):
                mask_index = x == mask_id
                emb = torch.cat([prompt_emb, model.llama.embed_tokens(x[:, p:])], dim=1)
                h = model.llama(inputs_embeds=emb, attention_mask=bias, position_ids=pos).last_hidden_state
                logits = model.lm_head(h)
                if suppress_ids:
                    logits[:, :, list(suppress_ids)] = -torch.inf
                logits_with_noise = add_gumbel_noise(logits, temperature, generator)
                x0 = torch.argmax(logits_with_noise, dim=-1)  # b, l
                if remasking == "low_confidence":
                    prob = torch.softmax(logits.to(torch.float64), dim=-1)
                    x0_p = torch.squeeze(torch.gather(prob, dim=-1, index=torch.unsqueeze(x0, -1)), -1)  # b, l
                else:
                    x0_p = torch.rand((x0.shape[0], x0.shape[1]), dtype=torch.float64, generator=generator)
                x0_p[:, end:] = -np.inf
                x0 = torch.where(mask_index, x0, x)
                confidence = torch.where(mask_index, x0_p, -np.inf)
                transfer_index = torch.zeros_like(x0, dtype=torch.bool)
                for j in range(confidence.shape[0]):
                    _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j, i]))
                    transfer_index[j, select_index] = True
                x[transfer_index] = x0[transfer_index]
    return x


# ---------------------------------------------------------------------------------------------------------------------
# checkpoint


def write_reference_checkpoint(model, out_dir: str | os.PathLike) -> str:
    """Writes ``model`` (a :class:`Reference`) as a LLaDA-V directory that ``vtp-convert`` accepts: its
    ``llada_v_state()`` as ``model.safetensors`` (float32), ``config.json`` (``model.config`` marked
    ``"vtp_random_weights": true``), ``generation_config.json`` and the tokenizer / image-processor files of
    :mod:`vtp_jax.testbed.hf_llada_v`. Returns ``out_dir`` as a string."""
    from safetensors.numpy import save_file

    from vtp_jax.testbed import hf_llada_v

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    state = {k: np.ascontiguousarray(v, np.float32) for k, v in model.llada_v_state().items()}
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    config = {**model.config, "torch_dtype": "float32", "vtp_random_weights": True}
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)
        fh.write("\n")
    with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as fh:
        json.dump({"bos_token_id": hf_llada_v.BOS_ID, "eos_token_id": hf_llada_v.EOS_ID,
                   "pad_token_id": hf_llada_v.EOS_ID}, fh, indent=2)
        fh.write("\n")
    hf_llada_v.save_processor(out_dir, hf_llada_v.train_tokenizer(config["vocab_size"]), config)
    return out_dir
