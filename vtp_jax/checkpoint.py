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

Errors: :class:`CheckpointError` (a ``ValueError``) for anything that is not a loadable converted directory.
"""

from __future__ import annotations

import functools
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


def restore_params(path: str | os.PathLike, target: dict, *, group_bytes: int = RESTORE_GROUP_BYTES) -> dict:
    """Restores the Orbax parameter checkpoint at ``path`` into ``target`` (a pure dict of ``jax.ShapeDtypeStruct``
    with shardings) → the same dict with ``jax.Array`` leaves in the target dtypes and shardings.

    The parameters are restored a group of about ``group_bytes`` at a time (Orbax partial restores): restoring the
    whole tree in one call holds tensorstore's read buffers of every array at once — measured on a 3.2 GB bf16
    checkpoint (LLaDA-V width, one decoder layer): peak RSS 5.7 GB in one call, 3.8 GB leaf by leaf, where the
    parameters alone take 3.4 GB with the runtime. Arrays are read in the stored dtype and cast only if the target
    dtype differs (bf16 → bf16 creates no float32 intermediate).

    Raises:
      ValueError / KeyError / OSError: Orbax's errors for a checkpoint that does not fit ``target``.
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    ckpt = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    metadata = ckpt.metadata(path)
    stored = flatten(_pure_tree(metadata))
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
        out = ckpt.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True))
        restored.update(flatten(out))
    return jax.tree_util.tree_map_with_path(
        lambda keys, _: restored[".".join(str(k.key) for k in keys)], target)


def _pure_tree(metadata) -> dict:
    """The nested dict of a PyTree checkpoint's metadata (Orbax returns a mapping or an object holding it)."""
    tree = getattr(metadata, "item_metadata", None) or getattr(metadata, "tree", None) or metadata
    tree = getattr(tree, "tree", tree)
    return dict(tree)



def read_config(model_dir: str | os.PathLike) -> tuple[LlavaConfig, dict]:
    """(model config, vtp_jax.json dict) of a converted directory from its JSON files only (no weights read).

    Raises:
      CheckpointError: not a converted directory, or a config.json this library cannot build a model from.
    """
    model_dir = os.path.abspath(os.fspath(model_dir))
    hf_config, meta = read_meta(model_dir)
    try:
        return config_from_hf(hf_config), meta
    except ConfigError as e:
        raise CheckpointError(f"{os.path.join(model_dir, CONFIG_FILE)}: {e}") from None


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
    cfg, meta = read_config(model_dir)
    name = dtype_name(meta.get("dtype", "float32") if dtype is None else dtype)
    graphdef, state = abstract_model(cfg, name)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
        nnx.to_pure_dict(nnx.filter_state(state, nnx.Param)),
    )
    try:
        restored = restore_params(os.path.join(model_dir, PARAMS_DIR), target)
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
