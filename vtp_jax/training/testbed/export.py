"""Export: our parameters → a Hugging Face-format checkpoint that ``vtp-convert`` accepts.

The HF tensor names of the family's testbed builder (:meth:`TestbedBuilder.tensor_specs`) are mapped to our
parameter paths with the converter's own name map (``Family.tensor_names()``, :mod:`vtp_jax.families.llava.names` /
:mod:`vtp_jax.families.llada_v.names`), run in reverse, and each layout transform is inverted
(:func:`to_hf_layout`). Nothing here imports the converter itself.
"""

from __future__ import annotations

import os

import numpy as np

from vtp_jax.training.testbed.builders import testbed_builder


def to_hf_layout(array: np.ndarray, transform: str) -> np.ndarray:
    """Inverse of :func:`vtp_jax.families.tensor_names.apply_transform`: our layout → the HF (torch) layout.

    "linear": kernel [in, out] → weight [out, in]; "conv": kernel [p, p, C, D] → weight [D, C, p, p]; "none": as is.
    """
    if transform == "none":
        return np.ascontiguousarray(array)
    if transform == "linear":
        return np.ascontiguousarray(array.T)
    if transform == "conv":
        return np.ascontiguousarray(np.transpose(array, (3, 2, 0, 1)))
    raise ValueError(f"unknown transform {transform!r}")


def hf_tensor_specs(family: str, hf_config) -> list[tuple[str, tuple]]:
    """(HF tensor name, HF shape) of every tensor the exported checkpoint holds (the testbed builders' lists)."""
    return testbed_builder(family).tensor_specs(hf_config)


def hf_tensors(family: str, hf_config, params: dict, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Our parameters (nested pure dict, as ``nnx.to_pure_dict``) → {HF tensor name: array in HF layout}.

    Every HF name of :func:`hf_tensor_specs` is mapped to our path with the converter's own name map
    (``Family.tensor_names``), and the layout transform is inverted (:func:`to_hf_layout`).

    Raises:
      ValueError: a name the converter does not map, a missing parameter, a shape mismatch, or a parameter that no
        HF tensor covers.
    """
    from vtp_jax import families
    from vtp_jax.checkpoint import flatten
    from vtp_jax.testbed.hf_llava import _np_dtype

    map_name, _ = families.get(family).tensor_names()
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    np_dtype = _np_dtype(dtype)
    out, used = {}, set()
    for name, shape in hf_tensor_specs(family, hf_config):
        target = map_name(name)
        if target is None:
            raise ValueError(f"the converter does not map HF tensor {name!r}")
        if target.path not in flat:
            raise ValueError(f"no parameter {target.path!r} for HF tensor {name!r}")
        array = to_hf_layout(flat[target.path], target.transform)
        if tuple(array.shape) != shape:
            raise ValueError(f"{name!r}: shape {tuple(array.shape)} after the inverse transform, expected {shape}")
        out[name] = array.astype(np_dtype)
        used.add(target.path)
    left = sorted(set(flat) - used)
    if left:
        raise ValueError(f"parameters not covered by any HF tensor: {left[:5]}")
    return out


def export_hf(out_dir: str, family: str, hf_config, params: dict, tokenizer, record: dict | None = None,
              dtype: str = "float32") -> str:
    """Writes a HF-format checkpoint of ``params`` to ``out_dir`` (created if needed): ``model.safetensors``,
    ``config.json`` (``vtp_random_weights: false``, ``vtp_testbed: record``, ``dtype``), ``generation_config.json``,
    tokenizer and processor files (the testbed builders' ``save_processor``). Returns ``out_dir``."""
    from vtp_jax.testbed.hf_llava import _save_safetensors

    builder = testbed_builder(family)
    os.makedirs(out_dir, exist_ok=True)
    _save_safetensors(hf_tensors(family, hf_config, params, dtype), os.path.join(out_dir, "model.safetensors"), dtype)
    builder.write_checkpoint_config(out_dir, hf_config, tokenizer, dict(record or {}), dtype)
    return out_dir
