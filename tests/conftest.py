"""Shared fixtures: tiny random transformers LLaVA checkpoints, converted and loaded with vtp_jax.

``jax_default_matmul_precision`` is set to "highest" for the whole session so fp32 parity holds to ~1e-6.

``converted_llava`` (module scope) is a factory: ``converted_llava(names=..., shard_bytes=..., dtype=...,
**tiny_config_kwargs)`` builds a random ``LlavaForConditionalGeneration`` (torch fp32, seeded), writes it in the
requested naming scheme, converts it with :func:`convert.convert` and loads it with :func:`vtp_jax.checkpoint.load`.
Identical requests within a module are built once.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

# Tests compile many small programs; XLA's CPU backend at optimisation level 0 compiles about twice as fast and
# computes the same fp32 numbers (tolerances below are unchanged). Must be set before jax initialises a backend.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# Small enough for sub-second forwards, big enough to exercise heads, GQA and several layers.
TINY = dict(
    image_size=64, patch_size=16, vision_hidden=32, vision_layers=2, vision_heads=4, vision_mlp=64,
    text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=4, text_mlp=128, vocab_size=300,
    max_position_embeddings=256,
)
IMAGE_TOKEN_ID = 4
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}


def tiny_hf_config(**overrides):
    """A transformers LlavaConfig (CLIP 64 px / patch 16 → 16 patches; Llama hidden 64, 2 layers, 4 heads)."""
    from vtp_jax.testbed import hf_llava

    return hf_llava.tiny_llava_config(**{**TINY, **overrides})


def random_hf_llava(config, seed: int = 0):
    """A seeded fp32 ``LlavaForConditionalGeneration`` in eval mode with O(0.1) weights.

    transformers' initialiser (std 0.02, zero biases, unit norms) makes activations so small that parity is
    trivially met; wider weights, non-trivial norm scales and non-zero biases make every tensor count.
    """
    import torch
    import transformers

    from vtp_jax.testbed.hf_llava import widen_weights

    torch.manual_seed(seed)
    return widen_weights(transformers.LlavaForConditionalGeneration(config).eval())


HUB_PREFIXES = (  # transformers-5 in-memory name prefix → llava-hf hub prefix
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.language_model.", "language_model.model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
)


def hub_name(name: str) -> str:
    for old, new in HUB_PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    raise ValueError(name)


def write_hf_dir(model, path: str, *, names: str = "transformers", shard_bytes: int | None = None) -> str:
    """Writes ``model`` to ``path`` in a naming scheme.

    names: "transformers" (``save_pretrained``), "hub" (llava-hf names, one ``model.safetensors`` written with
    ``safetensors.torch.save_file``) or "memory" (``state_dict()`` names as they are). ``shard_bytes`` shards
    (``save_pretrained`` only). Returns ``path``.
    """
    from safetensors.torch import save_file

    if names == "transformers":
        kwargs = {} if shard_bytes is None else {"max_shard_size": shard_bytes}
        model.save_pretrained(path, **kwargs)
        return path
    assert shard_bytes is None
    os.makedirs(path, exist_ok=True)
    rename = hub_name if names == "hub" else (lambda n: n)
    state = {rename(k): v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state = {k: v for k, v in state.items() if not k.endswith("lm_head.weight")}
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(path)
    return path


class Converted(NamedTuple):
    hf_model: Any  # torch LlavaForConditionalGeneration (fp32)
    hf_dir: str
    out_dir: str
    model: Any  # vtp_jax Llava
    cfg: Any  # vtp_jax LlavaConfig
    meta: dict


@pytest.fixture(scope="module")
def converted_llava(tmp_path_factory):
    cache: dict[str, Converted] = {}

    def make(*, names: str = "transformers", shard_bytes: int | None = None, dtype: str = "float32",
             seed: int = 0, **config_overrides) -> Converted:
        from convert import convert
        from vtp_jax import checkpoint

        key = json.dumps(dict(names=names, shard_bytes=shard_bytes, dtype=dtype, seed=seed, **config_overrides),
                         sort_keys=True)
        if key not in cache:
            root = tmp_path_factory.mktemp("llava")
            hf_model = random_hf_llava(tiny_hf_config(**config_overrides), seed)
            hf_dir = write_hf_dir(hf_model, str(root / "hf"), names=names, shard_bytes=shard_bytes)
            out_dir = convert(hf_dir, str(root / "converted"), dtype=dtype, progress=False)
            model, cfg, meta = checkpoint.load(out_dir)
            cache[key] = Converted(hf_model, hf_dir, out_dir, model, cfg, meta)
        return cache[key]

    return make


def llava_inputs(cfg, *, batch: int = 2, text_len: int = 12, seed: int = 0):
    """(input_ids int64 [B, T], pixel_values float32 [B, 3, S, S]): random text ids with one run of
    ``cfg.num_visual_tokens`` image tokens per row, at a different offset in each row."""
    rng = np.random.default_rng(seed)
    n_v = cfg.num_visual_tokens
    rows = []
    for b in range(batch):
        ids = rng.integers(IMAGE_TOKEN_ID + 1, cfg.text.vocab_size, size=text_len)
        at = 1 + (3 * b) % (text_len - 1)
        rows.append(np.concatenate([ids[:at], np.full(n_v, cfg.image_token_id), ids[at:]]))
    size = cfg.vision.image_size
    pixels = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    return np.stack(rows).astype(np.int64), pixels


PAD = 3  # pad token id of :func:`left_pad`


def left_pad(rows: np.ndarray, lengths: list[int], bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-aligns rows[b, :lengths[b]] in a [B, bucket] array (pad id PAD) and returns (ids, mask)."""
    ids = np.full((len(lengths), bucket), PAD, np.int64)
    mask = np.zeros((len(lengths), bucket), np.int64)
    for b, n in enumerate(lengths):
        ids[b, bucket - n:] = rows[b, :n]
        mask[b, bucket - n:] = 1
    return ids, mask


# The tiny LLaVA of the vtp-generate CLI tests (tests/test_cli.py, tests/test_todre_stage2.py).
CLI_SIZES = dict(
    image_size=64, patch_size=16, vision_hidden=32, vision_layers=2, vision_heads=4, vision_mlp=64,
    text_hidden=64, text_layers=3, text_heads=4, text_kv_heads=2, text_mlp=128, vocab_size=300,
    max_position_embeddings=160,
)


def run_cli(capsys, *argv):
    """vtp-generate in-process: (exit code, stdout, stderr)."""
    from vtp_jax import cli

    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
