"""``convert``: a Hugging Face LLaVA directory → a vtp_jax converted directory (see :mod:`vtp_jax.checkpoint`).

Steps:

1. Check the paths (HF_DIR exists; OUT_DIR absent, or replaceable with ``force``), read ``config.json`` and build
   :class:`~vtp_jax.config.LlavaConfig` with ``config_from_hf``; build the model *abstractly* to learn the name,
   shape and dtype of every parameter.
2. Read only the headers of the weight files and plan where every tensor goes (:mod:`convert.names`). All
   problems — unrecognised or surplus tensors, missing parameters, wrong shapes, non-float dtypes, duplicates —
   are collected and reported together before any tensor data is read.
3. Stream the tensors one at a time (transpose, cast to ``dtype``) into a parameter dict of numpy arrays — the
   only full copy of the model in memory — and write it as an Orbax checkpoint, with ``config.json``,
   ``vtp_jax.json`` and the tokenizer/processor files, into a temporary directory beside OUT_DIR.
4. Rename the temporary directory to OUT_DIR. Any failure removes the temporary directory: OUT_DIR is either
   complete or absent (an OUT_DIR replaced with ``force`` survives a failed conversion untouched).

Every user-facing failure raises :class:`ConversionError` (the CLI turns it into ``vtp-convert: error: ...``).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile

import numpy as np

from convert import names
from convert.sources import SAFETENSORS_INDEX, PICKLE_INDEX, SourceError, ST_DTYPES, open_source

MAX_LISTED = 10  # problems spelled out in an error message; the rest are counted
# Copied next to the converted weights: tokenizer / processor / template files, and a DyRate predictor trained for
# this checkpoint (vtp-train-dyrate), which vtp-generate / vtp-eval then find without --predictor.
EXTRA_FILE_PATTERNS = ("*.json", "*.jinja", "*.model", "*.txt", "dyrate_predictor.safetensors")
SKIPPED_FILES = {"config.json", SAFETENSORS_INDEX, PICKLE_INDEX, "vtp_jax.json"}


class ConversionError(Exception):
    """A conversion that cannot proceed; the message names the problem (and the first offending tensors)."""


def _problems_message(header: str, problems: list[str]) -> str:
    lines = [f"{header}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"]
    lines += [f"  - {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(lines)


def _check_paths(hf_dir: str, out_dir: str, force: bool) -> None:
    if not os.path.exists(hf_dir):
        raise ConversionError(f"HF_DIR {hf_dir} does not exist")
    if not os.path.isdir(hf_dir):
        raise ConversionError(f"HF_DIR {hf_dir} is not a directory")
    real_hf, real_out = os.path.realpath(hf_dir), os.path.realpath(out_dir)
    if real_out == real_hf or os.path.commonpath([real_hf, real_out]) == real_out:
        raise ConversionError(f"OUT_DIR {out_dir} must not be HF_DIR or contain it")
    if os.path.lexists(out_dir):
        if not force:
            raise ConversionError(f"OUT_DIR {out_dir} already exists; pass --force to replace it")
        if not os.path.isdir(out_dir) or os.path.islink(out_dir):
            raise ConversionError(f"OUT_DIR {out_dir} exists and is not a directory; refusing to replace it")
        if os.listdir(out_dir) and not os.path.exists(os.path.join(out_dir, "vtp_jax.json")):
            raise ConversionError(
                f"OUT_DIR {out_dir} exists and is not a converted checkpoint (no vtp_jax.json); "
                "refusing to replace it even with --force"
            )


def _read_config(hf_dir: str):
    """(raw config dict, LlavaConfig)."""
    from vtp_jax.config import ConfigError, config_from_hf

    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise ConversionError(f"no config.json in HF_DIR {hf_dir}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    try:
        return raw, config_from_hf(raw)
    except ConfigError as e:
        raise ConversionError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ConversionError(f"{path}: invalid config ({type(e).__name__}: {e})") from None


def _key_paths(tree: dict, prefix: tuple = ()) -> dict[str, tuple]:
    """{dotted path: key tuple} of a nested pure dict (keys kept as they are: layer indices stay ints)."""
    out = {}
    for key, value in tree.items():
        keys = prefix + (key,)
        if isinstance(value, dict):
            out.update(_key_paths(value, keys))
        else:
            out[".".join(map(str, keys))] = keys
    return out


def _leaf(tree: dict, keys: tuple):
    for k in keys:
        tree = tree[k]
    return tree


def name_mapper(family: str):
    """(map_name, is_ignored) for a model family: HF tensor name → :class:`names.Target` | None, and → bool.

    "llava" uses :mod:`convert.names`; "llada_v" uses :mod:`convert.llada_names`.
    """
    if family == "llava":
        return names.map_name, names.is_ignored
    if family == "llada_v":
        from convert import llada_names

        def map_llada(name: str) -> names.Target | None:
            target = llada_names.canonical_llada_name(name)
            return None if target is None else names.Target(target.dotted, target.transform)

        return map_llada, llada_names.is_ignored_llada_name
    raise ConversionError(f"no tensor-name map for model family {family!r}")


def plan(
    tensors: dict, expected: dict, tie_word_embeddings: bool, family: str = "llava"
) -> tuple[dict[str, names.Target], list[str]]:
    """Matches source tensors to parameters.

    Args:
      tensors: {HF name: TensorInfo(file, shape, dtype code)}.
      expected: {our dotted path: jax.ShapeDtypeStruct}.
      tie_word_embeddings: a missing ``lm_head.kernel`` is then filled from the token embedding.
      family: model family, selects the name map (:func:`name_mapper`).

    Returns:
      ({HF name: Target} for the tensors to load, [problem descriptions]) — the plan is usable iff no problems.
    """
    map_name, is_ignored = name_mapper(family)
    problems: list[str] = []
    chosen: dict[str, names.Target] = {}
    owner: dict[str, str] = {}
    for name in sorted(tensors):
        info = tensors[name]
        if is_ignored(name):
            continue
        target = map_name(name)
        if target is None:
            problems.append(f"unexpected tensor {name!r}: not a {family} parameter name this converter knows")
            continue
        if target.path not in expected:
            problems.append(
                f"unexpected tensor {name!r}: maps to {target.path!r}, which the model in config.json does not have"
            )
            continue
        if target.path in owner:
            problems.append(f"duplicate tensor {name!r}: {target.path!r} is already given by {owner[target.path]!r}")
            continue
        owner[target.path] = name  # placed, even if unusable below: not reported as missing as well
        want = tuple(expected[target.path].shape)
        got = names.transformed_shape(info.shape, target.transform)
        if got != want:
            hf_want = list(names.source_shape(want, target.transform))
            problems.append(f"wrong shape for {name!r}: {list(info.shape)}, expected {hf_want} (for {target.path!r})")
            continue
        if info.dtype not in ST_DTYPES:
            problems.append(f"unsupported dtype {info.dtype} for {name!r} (expected a floating-point tensor)")
            continue
        chosen[name] = target
    for path in expected:
        if path in owner:
            continue
        if path == "lm_head.kernel" and tie_word_embeddings and "language_model.embed_tokens.embedding" in owner:
            continue
        problems.append(f"missing tensor for {path!r} (shape {list(expected[path].shape)})")
    return chosen, problems


def _copy_extra_files(hf_dir: str, dst: str) -> list[str]:
    copied = []
    for fname in sorted(os.listdir(hf_dir)):
        src = os.path.join(hf_dir, fname)
        if fname in SKIPPED_FILES or not os.path.isfile(src):
            continue
        if any(fnmatch.fnmatch(fname, pat) for pat in EXTRA_FILE_PATTERNS):
            shutil.copyfile(src, os.path.join(dst, fname))
            copied.append(fname)
    return copied


def _commit(tmp: str, out_dir: str) -> None:
    """Renames ``tmp`` to ``out_dir``, replacing an existing ``out_dir`` (already vetted by _check_paths)."""
    if not os.path.lexists(out_dir):
        os.rename(tmp, out_dir)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=os.path.dirname(out_dir))
    os.rmdir(old)
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def convert(
    hf_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    force: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
) -> str:
    """Converts HF_DIR (config.json + safetensors / pickled weights) to OUT_DIR; returns OUT_DIR's absolute path.

    Args:
      dtype: parameter dtype of the output, "float32" or "bfloat16" (tensors are cast while streaming).
      force: replace an existing OUT_DIR (only if it is empty or a converted checkpoint).
      allow_pickle: accept ``pytorch_model.bin`` (loaded with ``torch.load(weights_only=True)``).
      progress: show a tqdm bar over tensors on stderr.

    Raises:
      ConversionError: bad paths, unsupported config, unusable weight files, tensors that do not fit the model
        (all such tensors are collected; the message lists the first few and the count), write failures.
    """
    from vtp_jax import checkpoint

    hf_dir, out_dir = os.path.abspath(os.fspath(hf_dir)), os.path.abspath(os.fspath(out_dir))
    if dtype not in checkpoint.DTYPES:
        raise ConversionError(f"unsupported --dtype {dtype!r} (choose from {', '.join(checkpoint.DTYPES)})")
    _check_paths(hf_dir, out_dir, force)
    raw_config, cfg = _read_config(hf_dir)
    abstract = checkpoint.abstract_params(cfg, dtype)
    key_paths = _key_paths(abstract)
    expected = {path: _leaf(abstract, keys) for path, keys in key_paths.items()}
    try:
        source = open_source(hf_dir, allow_pickle=allow_pickle)
    except SourceError as e:
        raise ConversionError(str(e)) from None
    chosen, problems = plan(source.tensors, expected, cfg.text.tie_word_embeddings, cfg.family)
    if problems:
        raise ConversionError(_problems_message(f"the weights in {hf_dir} do not fit the model in config.json",
                                                problems))

    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    except OSError as e:
        raise ConversionError(f"cannot create a directory beside OUT_DIR {out_dir}: {e}") from None
    try:
        params = _stream(source, chosen, key_paths, expected, progress)
        if "lm_head.kernel" not in {t.path for t in chosen.values()}:  # tied head: W_head = E^T
            embedding = _leaf(params, key_paths["language_model.embed_tokens.embedding"])
            _set(params, key_paths["lm_head.kernel"], np.ascontiguousarray(embedding.T))
        checkpoint.save_params(os.path.join(tmp, checkpoint.PARAMS_DIR), params)
        del params
        shutil.copyfile(os.path.join(hf_dir, "config.json"), os.path.join(tmp, checkpoint.CONFIG_FILE))
        _copy_extra_files(hf_dir, tmp)
        meta = {
            "format_version": checkpoint.FORMAT_VERSION,
            "family": cfg.family,
            "dtype": dtype,
            "converted_from": hf_dir,
            "random_weights": bool(raw_config.get("vtp_random_weights", False)),
        }
        with open(os.path.join(tmp, checkpoint.META_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
        _commit(tmp, out_dir)
    except SourceError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConversionError(str(e)) from None
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConversionError(f"writing {out_dir} failed: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _set(tree: dict, keys: tuple, value) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def _stream(source, chosen: dict[str, names.Target], key_paths: dict, expected: dict, progress: bool) -> dict:
    """Reads the chosen tensors one by one into a nested dict of numpy arrays in the expected dtypes."""
    from tqdm.auto import tqdm

    params: dict = {}
    with tqdm(total=len(chosen), desc="vtp-convert", unit="tensor", disable=not progress) as bar:
        for name, array in source.iter_arrays(list(chosen)):
            target = chosen[name]
            spec = expected[target.path]
            out = names.apply_transform(array, target.transform).astype(spec.dtype, copy=False)
            del array
            if out.shape != tuple(spec.shape):  # headers were checked; this guards against lying files
                raise SourceError(f"tensor {name!r} read with shape {list(out.shape)}, header said otherwise")
            _set(params, key_paths[target.path], out)
            bar.update(1)
    return params
