"""Converted-checkpoint directories: layout, saving the parameters, loading a ready model.

A converted directory (written by ``vtp-convert``, see :mod:`convert`) holds::

    config.json     the Hugging Face config.json, verbatim (read with vtp_jax.config.config_from_hf)
    vtp_jax.json    {"format_version": 1, "family": "llava" | "llada_v", "dtype": "float32" | "bfloat16",
                     "converted_from": <absolute HF_DIR>, "random_weights": <bool>}
    params/         an Orbax checkpoint of the parameter pure dict (``nnx.to_pure_dict`` of the nnx.Param state;
                    nested dicts keyed by attribute name / layer index, leaves are arrays in ``dtype``)
    tokenizer*.json, processor / chat-template / generation_config files copied from HF_DIR

Loading never initialises full weights at random: the model is built abstractly with ``nnx.eval_shape`` and the
parameters are restored straight into that shape/dtype target.

Errors: :class:`CheckpointError` (a ``ValueError``) for anything that is not a loadable converted directory.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vtp_jax.config import ConfigError, LlavaConfig, config_from_hf

FORMAT_VERSION = 1
META_FILE = "vtp_jax.json"
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class CheckpointError(ValueError):
    """The directory is not a (loadable) converted vtp_jax checkpoint."""


def dtype_name(dtype: Any) -> str:
    """"float32" / "bfloat16" for a name or a dtype-like; raises CheckpointError for anything else."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in DTYPES:
        raise CheckpointError(f"unsupported dtype {dtype!r} (supported: {', '.join(DTYPES)})")
    return name


def build_model_class(cfg):
    """The nnx.Module class for ``cfg.family``: "llava" → Llava, "llada_v" → LladaV."""
    if cfg.family == "llava":
        from vtp_jax.modeling.llava import Llava

        return Llava
    if cfg.family == "llada_v":
        from vtp_jax.modeling.llada_v import LladaV

        return LladaV
    raise CheckpointError(f"unsupported model family {cfg.family!r}")


def abstract_model(cfg: LlavaConfig, dtype: Any = jnp.float32) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, abstract_state) of the model for ``cfg`` without allocating any weight.

    ``abstract_state`` is the full ``nnx.State`` with ``jax.ShapeDtypeStruct`` leaves (param dtype = ``dtype``).
    """
    cls = build_model_class(cfg)
    dt = DTYPES[dtype_name(dtype)]
    model = nnx.eval_shape(lambda: cls(cfg, dtype=dt, rngs=nnx.Rngs(0)))
    return nnx.split(model)


def abstract_params(cfg: LlavaConfig, dtype: Any = jnp.float32) -> dict:
    """Pure dict of the model's parameters, leaves ``jax.ShapeDtypeStruct`` (the converter's shape contract)."""
    _, state = abstract_model(cfg, dtype)
    return nnx.to_pure_dict(nnx.filter_state(state, nnx.Param))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a.b.0.c": leaf} from a nested pure dict (keys joined with dots)."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp, ocp.Checkpointer(ocp.StandardCheckpointHandler())


def save_params(path: str | os.PathLike, params: dict) -> None:
    """Writes the parameter pure dict (numpy or jax array leaves) as an Orbax checkpoint at ``path``.

    ``path`` must not exist yet (Orbax creates it). Synchronous: returns once the checkpoint is committed.
    """
    ocp, ckpt = _checkpointer()
    ckpt.save(os.path.abspath(os.fspath(path)), args=ocp.args.StandardSave(params))


def read_meta(model_dir: str | os.PathLike) -> tuple[dict, dict]:
    """(HF config dict, vtp_jax.json dict) of a converted directory; CheckpointError if it is not one."""
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise CheckpointError(f"{model_dir!r} is not a directory")
    missing = [f for f in (CONFIG_FILE, META_FILE, PARAMS_DIR) if not os.path.exists(os.path.join(model_dir, f))]
    if missing:
        raise CheckpointError(
            f"{model_dir!r} is not a converted vtp_jax checkpoint (missing {', '.join(missing)}); "
            "convert a Hugging Face checkpoint first with: vtp-convert HF_DIR OUT_DIR"
        )
    texts = {}
    for name in (CONFIG_FILE, META_FILE):
        try:
            with open(os.path.join(model_dir, name), encoding="utf-8") as f:
                texts[name] = json.load(f)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{os.path.join(model_dir, name)}: unreadable JSON ({e})") from None
    meta = texts[META_FILE]
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{os.path.join(model_dir, META_FILE)}: unsupported format_version "
            f"{meta.get('format_version') if isinstance(meta, dict) else None!r} (expected {FORMAT_VERSION})"
        )
    return texts[CONFIG_FILE], meta


def load(model_dir: str | os.PathLike, dtype: Any = None) -> tuple[nnx.Module, LlavaConfig, dict]:
    """Loads a converted directory → (model, config, meta).

    Args:
      model_dir: a directory written by ``vtp-convert``.
      dtype: parameter and compute dtype ("float32" / "bfloat16" or a jnp dtype); None = the stored dtype.
        Parameters are cast on restore when it differs from the stored one.

    Raises:
      CheckpointError: not a converted directory, unsupported config / format, or parameters that do not match
        the model the config describes.
    """
    model_dir = os.path.abspath(os.fspath(model_dir))
    hf_config, meta = read_meta(model_dir)
    try:
        cfg = config_from_hf(hf_config)
    except ConfigError as e:
        raise CheckpointError(f"{os.path.join(model_dir, CONFIG_FILE)}: {e}") from None
    name = dtype_name(meta.get("dtype", "float32") if dtype is None else dtype)
    graphdef, state = abstract_model(cfg, name)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
        nnx.to_pure_dict(nnx.filter_state(state, nnx.Param)),
    )
    ocp, ckpt = _checkpointer()
    try:
        restored = ckpt.restore(os.path.join(model_dir, PARAMS_DIR), args=ocp.args.StandardRestore(target))
    except (ValueError, KeyError, OSError, FileNotFoundError) as e:
        raise CheckpointError(
            f"{model_dir}: parameters do not match the model described by config.json: {e}"
        ) from None
    nnx.replace_by_pure_dict(state, restored)
    leftovers = [
        ".".join(map(str, path))
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
        if isinstance(leaf, jax.ShapeDtypeStruct)
    ]
    if leftovers:  # non-Param array state that eval_shape left abstract: a modeling bug, not a user error
        raise CheckpointError(f"model state not restored from the checkpoint: {leftovers[:5]}")
    model = nnx.merge(graphdef, state)
    return model, cfg, {**meta, "dtype": name, "stored_dtype": meta.get("dtype"), "path": model_dir}
