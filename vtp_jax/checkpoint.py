"""Converted-checkpoint directories: layout, saving the parameters, loading a ready model.

A converted directory (written by ``vtp-convert``, see :mod:`convert`) holds::

    config.json     the Hugging Face config.json, verbatim (read with vtp_jax.config.config_from_hf)
    vtp_jax.json    {"format_version": 1, "family": "llava" | "llada_v", "dtype": "float32" | "bfloat16",
                     "converted_from": <absolute HF_DIR>, "random_weights": <bool>}
    params/         an Orbax checkpoint of the parameter pure dict (``nnx.to_pure_dict`` of the nnx.Param state;
                    nested dicts keyed by attribute name / layer index, leaves are arrays in ``dtype``)
    tokenizer*.json, processor / chat-template / generation_config files copied from HF_DIR

Saving: :func:`save_params` writes an in-memory dict; :func:`save_params_streaming` writes a dict of
:class:`LazyArray` leaves a few at a time (the converter's path, memory independent of the model's size). Both give
the same Orbax StandardCheckpointHandler checkpoint.

Loading never initialises full weights at random: the model is built abstractly with ``nnx.eval_shape`` and the
parameters are restored straight into that shape/dtype target.

Errors: :class:`CheckpointError` (a ``ValueError``) for anything that is not a loadable converted directory; its
subclass :class:`DamagedCheckpointError` when files that ``vtp-convert`` wrote are missing, truncated, corrupt or
hold values of the wrong type ("checkpoint DIR is damaged: <what> — re-run vtp-convert"), as opposed to a valid
checkpoint that does not match the model its config.json describes ("parameters do not match …"). Parameter files
are checked before Orbax reads them (:func:`verify_params`: every stored value present and complete, without reading
the arrays), so a damaged directory is reported by name instead of as an Orbax / TensorStore traceback.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import sys
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


class DamagedCheckpointError(CheckpointError):
    """Files of a converted directory are missing, truncated, corrupt or malformed.

    Attributes:
      root: the directory named in the message (the converted directory, or the parent of a bare ``params/``).
      what: the damage, naming the file (relative to ``root``) and, where known, the field or parameter.
    """

    def __init__(self, root: str, what: str, hint: str = "re-run vtp-convert"):
        self.root, self.what, self.hint = root, what, hint
        super().__init__(f"checkpoint {root} is damaged: {what} — {hint}")

    def __reduce__(self):
        return type(self), (self.root, self.what, self.hint)


def dtype_name(dtype: Any) -> str:
    """"float32" / "bfloat16" for a name or a dtype-like; raises CheckpointError for anything else."""
    try:
        name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise CheckpointError(f"unsupported dtype {dtype!r} (supported: {', '.join(DTYPES)})")
    return name


def build_model_class(cfg):
    """The nnx.Module class of ``cfg.family`` (``Family.model_class``: "llava" → Llava, "llada_v" → LladaV).
    Raises CheckpointError for an unknown family."""
    from vtp_jax import families

    try:
        return families.get(cfg.family).model_class()
    except families.UnknownFamilyError as e:
        raise CheckpointError(str(e)) from None


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
    The whole dict is in memory (and Orbax copies numpy leaves once more); for model-sized trees use
    :func:`save_params_streaming`.
    """
    ocp, ckpt = _checkpointer()
    ckpt.save(os.path.abspath(os.fspath(path)), args=ocp.args.StandardSave(params))


class LazyArray:
    """A checkpoint leaf that is produced only when :func:`save_params_streaming` writes it.

    Attributes:
      shape: the array's shape (tuple of ints).
      dtype: its numpy dtype (e.g. ``np.float32``, ``ml_dtypes.bfloat16``).
      load: a zero-argument callable returning a numpy array of exactly ``shape`` and ``dtype`` (any strides);
        called once, from a worker thread, and the array is dropped as soon as it is written.
      order: a sortable key; leaves are loaded in ascending order (e.g. (file, byte offset) of the source).
    """

    __slots__ = ("shape", "dtype", "load", "order")

    def __init__(self, shape, dtype, load, order: Any = 0):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.load = load
        self.order = order

    @property
    def nbytes(self) -> int:
        """Bytes of the loaded array (product of ``shape`` × itemsize)."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self.dtype.name})"


DEFAULT_INFLIGHT_BYTES = 256 << 20  # loaded-but-not-yet-written bytes allowed at once by save_params_streaming


@functools.cache
def _streaming_classes():
    """(LazyNumpyHandler, LazyPyTreeHandler, LazySave): Orbax classes defined once, on first use (Orbax registers
    handler classes globally by name, so they must not be re-created per call)."""
    import asyncio
    import dataclasses

    import orbax.checkpoint as ocp

    class LazyNumpyHandler(ocp.type_handlers.NumpyHandler):
        """Orbax's NumpyHandler (same tensorstore spec, same metadata, typestr "np.ndarray"), for LazyArray leaves:
        each leaf is loaded only when its turn comes, and at most ``max_inflight_bytes`` of loaded leaves await
        their write at once (a leaf larger than that is written alone)."""

        def __init__(self, max_inflight_bytes: int, on_written):
            super().__init__(deepcopy_host_arrays=False)
            self._max_inflight = max_inflight_bytes
            self._on_written = on_written

        async def serialize(self, values, infos, args=None):
            args = args or [ocp.SaveArgs()] * len(values)
            return [ocp.future.CommitFutureAwaitingContractedSignals(
                self._stream(list(values), list(infos), list(args)), name="vtp_lazy_numpy")]

        async def _write_one(self, lazy, info, arg):
            array = await asyncio.to_thread(lazy.load)
            if tuple(array.shape) != lazy.shape or np.dtype(array.dtype) != lazy.dtype:
                raise ValueError(
                    f"leaf {info.name!r} loaded as {np.dtype(array.dtype).name}{list(array.shape)}, "
                    f"expected {lazy.dtype.name}{list(lazy.shape)}"
                )
            # NumpyHandler's own writer for this one value: Orbax's tensorstore spec, awaited until committed.
            await self._background_serialize([array], [info], [arg])
            return lazy.nbytes

        async def _stream(self, values, infos, args):
            pending: set = set()
            inflight = 0

            async def settle():
                nonlocal pending, inflight
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    inflight -= task.result()  # re-raises a failed load or write
                    if self._on_written is not None:
                        self._on_written(1)

            try:
                for i in sorted(range(len(values)), key=lambda j: values[j].order):
                    while pending and inflight + values[i].nbytes > self._max_inflight:
                        await settle()
                    inflight += values[i].nbytes
                    pending.add(asyncio.ensure_future(self._write_one(values[i], infos[i], args[i])))
                while pending:
                    await settle()
            except BaseException:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                raise

    class LazyPyTreeHandler(ocp.PyTreeCheckpointHandler):
        """PyTreeCheckpointHandler (with StandardCheckpointHandler's settings) over a registry that knows only
        LazyArray leaves."""

        def __init__(self, max_inflight_bytes: int, on_written):
            registry = ocp.type_handlers.create_type_handler_registry(
                (LazyArray, LazyNumpyHandler(max_inflight_bytes, on_written)))
            super().__init__(save_concurrent_gb=96, restore_concurrent_gb=96, type_handler_registry=registry)

    @ocp.args.register_with_handler(LazyPyTreeHandler, for_save=True, for_restore=True)
    @dataclasses.dataclass
    class LazySave(ocp.args.PyTreeSave):
        """PyTreeSave for LazyPyTreeHandler (Orbax's Checkpointer looks handlers' args up by exact class)."""

    return LazyNumpyHandler, LazyPyTreeHandler, LazySave


def save_params_streaming(
    path: str | os.PathLike,
    params: dict,
    *,
    max_inflight_bytes: int = DEFAULT_INFLIGHT_BYTES,
    on_written=None,
) -> None:
    """Writes a pure dict of :class:`LazyArray` leaves as an Orbax checkpoint at ``path``, a few leaves at a time.

    The result is the checkpoint :func:`save_params` writes for the loaded dict (same ``_METADATA``, same
    tensorstore arrays, same ``StandardCheckpointHandler`` record), restorable with :func:`load`; but no more
    than ``max_inflight_bytes`` of loaded leaves (at least one leaf) are held at once, so peak memory is about
    ``max_inflight_bytes`` + the largest leaf (+ what each ``load`` needs transiently), whatever the tree's size.

    Args:
      path: the checkpoint directory; must not exist yet (Orbax creates it, via a temporary sibling).
      params: nested dicts (str / int keys) whose leaves are all :class:`LazyArray`.
      max_inflight_bytes: bytes of loaded leaves allowed to await their write at once.
      on_written: optional callable, called with 1 from a worker thread after each leaf is committed.

    Raises:
      TypeError: a leaf is not a LazyArray.
      Whatever a leaf's ``load`` raises (the first such error, re-raised unchanged); ValueError for a leaf whose
        ``load`` returned the wrong shape or dtype; OSError / ValueError from Orbax for write failures. The
        partial checkpoint is left for the caller to remove.
    """
    bad = [leaf for leaf in jax.tree.leaves(params) if not isinstance(leaf, LazyArray)]
    if bad:
        raise TypeError(f"save_params_streaming needs LazyArray leaves, got {type(bad[0]).__name__}")
    import orbax.checkpoint as ocp

    _, handler_cls, save_args = _streaming_classes()
    path = os.path.abspath(os.fspath(path))
    ocp.Checkpointer(handler_cls(int(max_inflight_bytes), on_written)).save(path, args=save_args(params))
    _record_standard_handler(path, handler_cls.typestr(), ocp.StandardCheckpointHandler.typestr())


def _record_standard_handler(path: str, ours: str, standard: str) -> None:
    """Names StandardCheckpointHandler in ``path/_CHECKPOINT_METADATA`` instead of our PyTree handler.

    What LazyPyTreeHandler writes is what StandardCheckpointHandler writes for the loaded dict (the same _METADATA,
    the same tensorstore arrays and OCDBT layout), so the record says so, and a tool that picks its handler from
    the record (a CheckpointManager without explicit handlers) finds one it can import. A record of another shape
    is left alone.
    """
    meta_path = os.path.join(path, "_CHECKPOINT_METADATA")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return
    if not isinstance(meta, dict) or meta.get("item_handlers") != ours:
        return
    meta["item_handlers"] = standard
    tmp = meta_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f)
    os.replace(tmp, meta_path)




def _read_json(model_dir: str, name: str) -> Any:
    """The parsed JSON file ``model_dir/name``. Raises CheckpointError (unreadable: permissions, I/O) or
    DamagedCheckpointError (a directory, not UTF-8, not JSON)."""
    path = os.path.join(model_dir, name)
    if os.path.isdir(path):
        raise DamagedCheckpointError(model_dir, f"{name} is a directory, not a file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise DamagedCheckpointError(model_dir, f"{name} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        what = "is empty" if e.doc.strip() == "" else f"is not valid JSON ({e.msg}: line {e.lineno} column {e.colno})"
        raise DamagedCheckpointError(model_dir, f"{name} {what}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None


def _check_meta(model_dir: str, meta: Any) -> dict:
    """``meta`` (the parsed vtp_jax.json) if its fields have the types vtp-convert writes; raises CheckpointError for a
    format_version this library does not read, DamagedCheckpointError (naming the field) for anything else."""
    from vtp_jax import families

    def bad(field: str, expected: str):
        return DamagedCheckpointError(model_dir, f"{META_FILE} field {field!r} must be {expected}, got "
                                                 f"{meta.get(field)!r}")

    if not isinstance(meta, dict):
        raise DamagedCheckpointError(model_dir, f"{META_FILE} is not a JSON object (got {type(meta).__name__})")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise bad("format_version", f"an integer ({FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{os.path.join(model_dir, META_FILE)}: unsupported format_version {version}: written by a newer "
            f"vtp_jax (this one reads format_version {FORMAT_VERSION}); upgrade vtp_jax or re-run vtp-convert"
        )
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{os.path.join(model_dir, META_FILE)}: unsupported format_version {version} "
                              f"(expected {FORMAT_VERSION}); re-run vtp-convert")
    if "dtype" in meta and meta["dtype"] not in DTYPES:
        raise bad("dtype", " or ".join(map(repr, DTYPES)))
    known = tuple(families.families())
    if "family" in meta and meta["family"] not in known:
        raise bad("family", " or ".join(map(repr, known)))
    if "random_weights" in meta and not isinstance(meta["random_weights"], bool):
        raise bad("random_weights", "true or false")
    if "converted_from" in meta and not isinstance(meta["converted_from"], str):
        raise bad("converted_from", "a path (string)")
    return meta


def read_meta(model_dir: str | os.PathLike) -> tuple[dict, dict]:
    """(HF config dict, vtp_jax.json dict) of a converted directory, checked for the types vtp-convert writes.

    Raises:
      CheckpointError: not a directory; not a converted directory at all (neither vtp_jax.json nor params/); a file
        that cannot be read (permissions, I/O); a format_version this library does not read.
      DamagedCheckpointError: one of config.json / vtp_jax.json / params/ missing while the others are there, a JSON
        file that is empty, truncated, not UTF-8 or not a JSON object, a vtp_jax.json field of the wrong type
        (``format_version``, ``dtype``, ``family``, ``random_weights``, ``converted_from``; the message names it).
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise CheckpointError(f"{model_dir!r} is not a directory")
    names = (CONFIG_FILE, META_FILE, PARAMS_DIR)
    missing = [f for f in names if not os.path.lexists(os.path.join(model_dir, f))]
    if META_FILE in missing and PARAMS_DIR in missing:
        raise CheckpointError(
            f"{model_dir!r} is not a converted vtp_jax checkpoint (missing {', '.join(missing)}); "
            "convert a Hugging Face checkpoint first with: vtp-convert HF_DIR OUT_DIR"
        )
    if missing:
        raise DamagedCheckpointError(model_dir, f"{' and '.join(missing)} missing")
    if not os.path.isdir(os.path.join(model_dir, PARAMS_DIR)):
        raise DamagedCheckpointError(model_dir, f"{PARAMS_DIR} is not a directory")
    hf_config = _read_json(model_dir, CONFIG_FILE)
    if not isinstance(hf_config, dict):
        raise DamagedCheckpointError(model_dir, f"{CONFIG_FILE} is not a JSON object (got {type(hf_config).__name__})")
    return hf_config, _check_meta(model_dir, _read_json(model_dir, META_FILE))


RESTORE_GROUP_BYTES = 512 * 2**20  # parameters restored per Orbax call (a larger tensor is restored alone)


def group_by_bytes(items: list, nbytes, budget: int) -> list[list]:
    """Greedy split of ``items`` (in order) into consecutive groups of at most ``budget`` bytes, ``nbytes(item)``
    giving each item's size; an item larger than ``budget`` forms a group of its own. Used for restore groups here
    and for the shards of the full-size checkpoint writer."""
    groups, cur, size = [], [], 0
    for item in items:
        n = nbytes(item)
        if cur and size + n > budget:
            groups.append(cur)
            cur, size = [], 0
        cur.append(item)
        size += n
    if cur:
        groups.append(cur)
    return groups


def _restore_groups(flat: dict[str, Any], budget: int) -> list[list[str]]:
    """Dotted paths of ``flat`` (leaves with ``.shape`` / ``.dtype``) in groups of at most ``budget`` bytes."""
    return group_by_bytes(list(flat), lambda p: int(np.prod(flat[p].shape)) * np.dtype(flat[p].dtype).itemsize,
                          budget)


def _subtree(tree: dict, keep: set[str], prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            sub = _subtree(value, keep, path + ".")
            if sub:
                out[key] = sub
        elif path in keep:
            out[key] = value
    return out


_TS_PATH = re.compile(r'local file "([^"]+)"')
_TS_CODE = re.compile(r"^([A-Z_]{4,}): ")
_STATES = {"NOT_FOUND": "is missing", "OUT_OF_RANGE": "is truncated", "DATA_LOSS": "is corrupt or truncated"}
_DAMAGE_CODES = {"DATA_LOSS", "OUT_OF_RANGE", "FAILED_PRECONDITION", "NOT_FOUND", "INVALID_ARGUMENT"}


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "…"


def _chain(e: BaseException):
    """``e`` and its causes / contexts, outermost first."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _relative(root: str, text: str) -> str:
    """``text`` with absolute paths under ``root`` written relative to it."""
    return text.replace(root.rstrip(os.sep) + os.sep, "")


def _ts_failure(root: str, e: BaseException, named: bool = False) -> str:
    """One line for a TensorStore error: its first line, paths relative to ``root``; ``named``: without the
    "Error reading … of local file "…"" part (the message names the file already)."""
    text = _relative(root, _first_line(e))
    if named:
        text = re.sub(r'Error (reading|decoding) (Byte range \[\d+, \d+\) of )?local file "[^"]+"(: )?', "", text)
        text = text.rstrip(": ")
    return text


def _names(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _stored_arrays(path: str, root: str) -> list[str]:
    """Dotted parameter paths listed by ``path/_METADATA`` (Orbax's tree record); DamagedCheckpointError if it is
    missing, unreadable or not the record Orbax writes."""
    rel = os.path.relpath(os.path.join(path, "_METADATA"), root)
    try:
        with open(os.path.join(path, "_METADATA"), encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        raise DamagedCheckpointError(root, f"{rel} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedCheckpointError(root, f"{rel} is truncated or corrupt ({_first_line(e, 120)})") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {os.path.join(path, '_METADATA')}: {e.strerror or e}") from None
    tree = record.get("tree_metadata") if isinstance(record, dict) else None
    try:
        names = [".".join(str(k["key"]) for k in entry["key_metadata"]) for entry in tree.values()]
    except (AttributeError, KeyError, TypeError):
        names = []
    if not names:
        raise DamagedCheckpointError(root, f"{rel} does not list the parameters (not an Orbax tree record)")
    return names


def _chunk_keys(name: str, zarray: bytes) -> list[bytes]:
    """The zarr v2 chunk keys of array ``name`` from its ``.zarray`` JSON; ValueError if that is malformed."""
    meta = json.loads(zarray)
    shape, chunks = meta["shape"], meta["chunks"]
    sep = meta.get("dimension_separator") or "."
    if len(shape) != len(chunks) or any(int(c) <= 0 for c in chunks) or any(int(n) < 0 for n in shape):
        raise ValueError(f"bad shape {shape} / chunks {chunks}")
    if not shape:
        return [f"{name}/0".encode()]
    grid = [range(-(-int(n) // int(c))) for n, c in zip(shape, chunks)]
    return [f"{name}/{sep.join(map(str, idx))}".encode() for idx in itertools.product(*grid)]


def _locate(path: str, root: str, keys: list[bytes]) -> list[str]:
    """Best effort: which data files hold ``keys`` and what is wrong with them ("params/d/… is missing" /
    "… is truncated (N bytes, needs M)"), from TensorStore's dump of the OCDBT index; [] when it cannot tell."""
    import tensorstore as ts

    try:
        base = ts.KvStore.open({"driver": "file", "path": path + os.sep}).result()
        manifest = ts.ocdbt.dump(base).result()
        pending = [manifest["versions"][-1]["root"]["location"]]
        where: dict[bytes, tuple[str, int]] = {}
        wanted = set(keys)
        while pending:
            node = ts.ocdbt.dump(base, pending.pop()).result()
            for entry in node.get("entries", []):
                ref = entry.get("indirect_value")
                if isinstance(ref, str) and entry.get("key") in wanted:
                    m = re.fullmatch(r"value:(.*):(\d+):(\d+)", ref)
                    if m:
                        prefix, _, rel = m.group(1).partition(":")
                        where[entry["key"]] = (prefix + rel, int(m.group(2)) + int(m.group(3)))
                for value in entry.values():  # interior nodes: recurse into child node locations
                    if isinstance(value, str) and value.startswith("btreenode:"):
                        pending.append(value)
    except Exception:  # noqa: BLE001 — only used to word the message; detection does not depend on it
        return []
    files: dict[str, list] = {}
    for key, (rel, end) in where.items():
        files.setdefault(rel, [0, []])
        files[rel][0] = max(files[rel][0], end)
        files[rel][1].append(key.decode(errors="replace").split("/")[0])
    out = []
    for rel, (end, arrays) in sorted(files.items()):
        full = os.path.join(path, rel)
        shown = os.path.relpath(full, root)
        arrays = sorted(set(arrays))
        if not os.path.exists(full):
            out.append(f"{shown} is missing (it holds {_names(arrays)})")
        elif os.path.getsize(full) < end:
            out.append(f"{shown} is truncated ({os.path.getsize(full)} bytes, its data runs to byte {end}; it holds "
                       f"{_names(arrays)})")
    return out


def verify_params(path: str | os.PathLike) -> None:
    """Checks that the Orbax parameter checkpoint at ``path`` (a converted directory's ``params/``) is complete,
    without reading the arrays: Orbax's tree record (``_METADATA``) parses and lists the parameters; the OCDBT index
    (``manifest.ocdbt`` and the b-tree nodes it points to, which carry CRC-32C checksums) reads; every listed
    parameter has its zarr metadata and every chunk; and the last byte of every stored chunk can be read (so no
    data file is missing or shorter than the index says). Costs one small read per chunk.

    Not detected: flipped bits inside a compressed chunk (zarr's zstd chunks carry no checksum) — those fail, or
    silently change values, when the arrays are read.

    Raises:
      DamagedCheckpointError: naming the file (relative to the converted directory) and the parameters it holds.
      CheckpointError: a file that cannot be read for another reason (permissions).
    """
    import tensorstore as ts

    path = os.path.abspath(os.fspath(path))
    root = os.path.dirname(path)
    rel = os.path.relpath(path, root)
    if not os.path.isdir(path):
        raise DamagedCheckpointError(root, f"{rel} is {'not a directory' if os.path.exists(path) else 'missing'}")
    names = _stored_arrays(path, root)
    if not os.path.isfile(os.path.join(path, "manifest.ocdbt")):
        raise DamagedCheckpointError(root, f"{os.path.join(rel, 'manifest.ocdbt')} is missing")

    def failure(e: BaseException, what: str) -> CheckpointError:
        text = _ts_failure(root, e)
        if "PERMISSION_DENIED" in text:
            return CheckpointError(f"cannot read the parameters of {root}: {text}")
        m = _TS_PATH.search(str(e))
        if not m:
            return DamagedCheckpointError(root, f"{what} ({text})")
        code = _TS_CODE.match(text)
        state = _STATES.get(code.group(1) if code else "", "cannot be read")
        return DamagedCheckpointError(root, f"{os.path.relpath(m.group(1), root)} {state}, so {what} "
                                            f"({_ts_failure(root, e, named=True)})")

    try:
        kv = ts.KvStore.open({"driver": "ocdbt", "base": {"driver": "file", "path": path + os.sep}}).result()
        stored = set(kv.list().result())
    except Exception as e:  # noqa: BLE001 — TensorStore reports every failure as ValueError / its own types
        raise failure(e, "the parameter index cannot be read") from None
    absent = [n for n in names if f"{n}/.zarray".encode() not in stored]
    if absent:
        raise DamagedCheckpointError(root, f"{rel} holds no data for {_names(absent)} ({len(absent)} of "
                                           f"{len(names)} parameters; the index {rel}/manifest.ocdbt or a b-tree "
                                           f"node under {rel}/d/ is stale or was replaced)")
    chunks: dict[str, list[bytes]] = {}
    futures = {n: kv.read(f"{n}/.zarray".encode()) for n in names}
    for n, fut in futures.items():
        try:
            chunks[n] = _chunk_keys(n, fut.result().value)
        except Exception as e:  # noqa: BLE001
            raise failure(e, f"the zarr metadata of {n} is unreadable") from None
    lost = [k.decode() for n in names for k in chunks[n] if k not in stored]
    if lost:
        raise DamagedCheckpointError(root, f"{rel} lacks chunk(s) {_names(lost)}")
    reads = {k: kv.read(k, byte_range=slice(-1, None)) for n in names for k in chunks[n]}
    bad, errors = [], []
    for k, fut in reads.items():
        try:
            if len(fut.result().value) != 1:  # a deleted data file reads as an empty value
                bad.append(k)
        except Exception as e:  # noqa: BLE001 — OUT_OF_RANGE for a data file shorter than the index says
            if "PERMISSION_DENIED" in str(e):
                raise failure(e, "") from None
            bad.append(k)
            errors.append(e)
    if bad:
        located = _locate(path, root, bad)
        arrays = sorted({k.decode(errors="replace").split("/")[0] for k in bad})
        if located:
            raise DamagedCheckpointError(root, "; ".join(located))
        detail = f" ({_ts_failure(root, errors[0])})" if errors else ""
        raise DamagedCheckpointError(root, f"the stored data of {_names(arrays)} is missing or truncated under "
                                           f"{rel}/{detail}")


def restore_params(path: str | os.PathLike, target: dict, *, group_bytes: int = RESTORE_GROUP_BYTES) -> dict:
    """Restores the Orbax parameter checkpoint at ``path`` into ``target`` (a pure dict of ``jax.ShapeDtypeStruct``
    with shardings) → the same dict with ``jax.Array`` leaves in the target dtypes and shardings.

    The parameters are restored a group of about ``group_bytes`` at a time (Orbax partial restores): restoring the
    whole tree in one call holds tensorstore's read buffers of every array at once — measured on a 3.2 GB bf16
    checkpoint (LLaDA-V width, one decoder layer): peak RSS 5.7 GB in one call, 3.8 GB leaf by leaf, where the
    parameters alone take 3.4 GB with the runtime. Arrays are read in the stored dtype and cast only if the target
    dtype differs (bf16 → bf16 creates no float32 intermediate).

    The checkpoint is first checked with :func:`verify_params` (missing / truncated files are reported by name
    before Orbax reads anything); a read that still fails (a corrupt chunk) is reported the same way, and Orbax's
    late "Event loop is closed" reports of that failed read are kept off stderr (:func:`_quiet_orbax_noise`).

    Raises:
      DamagedCheckpointError: files missing, truncated or corrupt (the message names the file or the parameter).
      CheckpointError: a file that cannot be read for another reason (permissions), or a read failing otherwise.
      ValueError: a complete checkpoint that does not fit ``target`` (missing / unexpected parameters, a shape).
      Out-of-memory errors (``MemoryError``, XLA RESOURCE_EXHAUSTED) pass unchanged.
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    verify_params(path)
    _quiet_orbax_noise()  # before any read: a failed read's late reports can beat the error to the hook
    root = os.path.dirname(path)
    ckpt = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    try:
        stored = flatten(_pure_tree(ckpt.metadata(path)))
    except Exception as e:  # noqa: BLE001 — verify_params passed, so this is corruption it cannot see
        raise _restore_failure(root, "the parameter metadata", e, damaged_types=(OSError, TypeError)) from None
    flat = flatten(target)
    missing = sorted(set(flat) - set(stored))
    surplus = sorted(set(stored) - set(flat))
    if missing or surplus:
        raise ValueError(f"checkpoint and model differ: missing {missing[:5]}, unexpected {surplus[:5]}")
    for p, spec in flat.items():
        shape = tuple(getattr(stored[p], "shape", ()) or ())
        if shape != tuple(spec.shape):
            raise ValueError(f"{p}: stored shape {list(shape)}, the model needs {list(spec.shape)}")
    restored: dict[str, Any] = {}
    for group in _restore_groups(flat, group_bytes):
        item = _subtree(target, set(group))
        args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, dtype=s.dtype,
                                                           global_shape=s.shape), item)
        try:
            out = ckpt.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=args,
                                                                 partial_restore=True))
        except Exception as e:  # noqa: BLE001 — classified below; out-of-memory is re-raised unchanged
            raise _restore_failure(root, _names(group), e) from None
        restored.update(flatten(out))
    return jax.tree_util.tree_map_with_path(
        lambda keys, _: restored[".".join(str(k.key) for k in keys)], target)


def _pure_tree(metadata) -> dict:
    """The nested dict of a PyTree checkpoint's metadata (Orbax returns a mapping or an object holding it);
    TypeError when Orbax returned no tree (it does so, without raising, for an index it could not read)."""
    tree = getattr(metadata, "item_metadata", None) or getattr(metadata, "tree", None) or metadata
    tree = getattr(tree, "tree", tree)
    return dict(tree)


def _is_orbax_noise(unraisable) -> bool:
    """True for the reports a failed Orbax restore leaves behind: its still-running reads completing on the closed
    asyncio loop (RuntimeError "Event loop is closed") and its abandoned read coroutines."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    code = getattr(unraisable.object, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _quiet_orbax_noise() -> None:
    """Installs (once) a ``sys.unraisablehook`` that drops :func:`_is_orbax_noise` reports and passes every other
    one to the hook it replaced. Installed before every restore (and again when a read fails): a failed read's
    reports come from TensorStore's threads — before, while and after the error propagates — as dozens of
    "Traceback" blocks on stderr."""
    previous = sys.unraisablehook
    if getattr(previous, "vtp_orbax_filter", False):
        return

    def hook(unraisable):
        if not _is_orbax_noise(unraisable):
            previous(unraisable)

    hook.vtp_orbax_filter = True
    sys.unraisablehook = hook


def _restore_failure(root: str, what: str, e: BaseException,
                     damaged_types: tuple = (OSError,)) -> BaseException:
    """The exception to raise for Orbax failing to read ``what`` of the checkpoint under ``root``: an out-of-memory
    error in ``e``'s chain unchanged; DamagedCheckpointError for TensorStore's data errors (a corrupt or shortened
    chunk: DATA_LOSS, OUT_OF_RANGE, …) and innermost causes of ``damaged_types`` (for the metadata step also
    TypeError: Orbax returns no tree, without raising, for an index it could not read); CheckpointError otherwise.
    The message names the parameter (from TensorStore's spec in Orbax's error, when there) and the innermost
    cause."""
    from vtp_jax.memory import is_out_of_memory

    _quiet_orbax_noise()
    chain = list(_chain(e))
    for c in chain:
        if is_out_of_memory(c):
            return c
    arrays = sorted({m for c in chain for m in re.findall(r"'path': '([^'/]+)/'", str(c))})
    if arrays:
        what = _names(arrays)
    coded = [c for c in chain if _TS_CODE.match(_first_line(c))]
    cause = coded[-1] if coded else chain[-1]
    text = _ts_failure(root, cause)
    code = _TS_CODE.match(text)
    if code and code.group(1) == "PERMISSION_DENIED":
        return CheckpointError(f"cannot read the parameters of {root}: {text}")
    if (code and code.group(1) in _DAMAGE_CODES) or isinstance(cause, damaged_types):
        return DamagedCheckpointError(root, f"reading {what} failed ({text})")
    return CheckpointError(f"checkpoint {root}: reading {what} failed ({type(cause).__name__}: {text})")



def read_config(model_dir: str | os.PathLike) -> tuple[LlavaConfig, dict]:
    """(model config, vtp_jax.json dict) of a converted directory from its JSON files only (no weights read).

    Raises:
      CheckpointError: not a converted directory, or a config.json this library cannot build a model from (the
        message names config.json and, from :mod:`vtp_jax.config`, the field).
      DamagedCheckpointError: see :func:`read_meta`; also a vtp_jax.json ``family`` that differs from the family
        config.json describes.
    """
    model_dir = os.path.abspath(os.fspath(model_dir))
    hf_config, meta = read_meta(model_dir)
    where = os.path.join(model_dir, CONFIG_FILE)
    try:
        cfg = config_from_hf(hf_config)
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None
    except (TypeError, KeyError, AttributeError, ValueError, IndexError) as e:  # a value config.py did not vet
        raise CheckpointError(f"{where}: malformed config ({type(e).__name__}: {e})") from None
    if meta.get("family", cfg.family) != cfg.family:
        raise DamagedCheckpointError(model_dir, f"{META_FILE} says family {meta['family']!r} but {CONFIG_FILE} "
                                                f"describes a {cfg.family!r} model")
    return cfg, meta


def load(model_dir: str | os.PathLike, dtype: Any = None, mesh=None) -> tuple[nnx.Module, LlavaConfig, dict]:
    """Loads a converted directory → (model, config, meta).

    Args:
      model_dir: a directory written by ``vtp-convert``.
      dtype: parameter and compute dtype ("float32" / "bfloat16" or a jnp dtype); None = the stored dtype.
        Parameters are cast on restore when it differs from the stored one.
      mesh: a ``jax.sharding.Mesh`` (:func:`vtp_jax.sharding.make_mesh`): every parameter is restored straight
        onto its ``NamedSharding`` under :data:`vtp_jax.sharding.RULES` (each device reads only its shard; the
        whole model is never gathered on one device or host). None: every parameter on this process's first device.

    Raises:
      CheckpointError: not a converted directory, unsupported config / format, unreadable files, or a complete
        checkpoint whose parameters do not match the model config.json describes ("parameters do not match …").
      DamagedCheckpointError: files missing, truncated, corrupt or malformed ("checkpoint DIR is damaged: <file /
        field> — re-run vtp-convert …"), from :func:`read_meta` / :func:`read_config` / :func:`restore_params`.
      MeshError (a ValueError, :mod:`vtp_jax.sharding`): a mesh axis that does not divide a dimension it shards.
      Out-of-memory errors pass unchanged (the front ends' ``memory.oom_guard`` reports them).
    """
    model_dir = os.path.abspath(os.fspath(model_dir))
    cfg, meta = read_config(model_dir)
    name = dtype_name(meta.get("dtype", "float32") if dtype is None else dtype)
    graphdef, state = abstract_model(cfg, name)
    params = nnx.to_pure_dict(nnx.filter_state(state, nnx.Param))
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # this process's first device
        shardings = jax.tree.map(lambda _: device, params)
    else:
        from vtp_jax.modeling.axes import logical_axes
        from vtp_jax.sharding import param_shardings

        shardings = param_shardings(params, logical_axes(state), mesh)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), params, shardings)
    try:
        restored = restore_params(os.path.join(model_dir, PARAMS_DIR), target)
    except DamagedCheckpointError as e:
        hf = meta.get("converted_from")
        hint = (f"re-run vtp-convert {hf} {model_dir} --force" if isinstance(hf, str) and os.path.isdir(hf)
                else "re-run vtp-convert")
        raise DamagedCheckpointError(model_dir, e.what, hint) from None
    except CheckpointError:
        raise
    except (ValueError, KeyError) as e:
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
