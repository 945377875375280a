"""Device meshes and the one set of logical-axis rules: how a model and its inputs are laid out over devices.

A mesh has up to three named axes (:data:`MESH_AXES`): ``data`` (the batch is split across it), ``fsdp`` (weights are
split along the model width, ``embed``, and gathered layer by layer where a product needs them) and ``tensor``
(tensor parallelism: attention heads, the MLP's intermediate width and the vocabulary are split). ``--mesh
data=2,fsdp=2,tensor=2`` on the command line; :func:`make_mesh` in Python. Axes left out have size 1; the product
must equal the number of devices (every process's, under ``jax.distributed``).

Parameters carry logical axis names (:mod:`vtp_jax.modeling.axes`); :data:`RULES` maps them to mesh axes, and
:func:`param_shardings` turns an abstract parameter tree into ``NamedSharding`` s that
:func:`vtp_jax.checkpoint.load` restores straight into (each device reads only its shard). The vision tower keeps its
own names (``vision_embed`` …), which no rule maps: it is small and stays replicated. Activations follow from the
weights and the inputs through XLA's sharding propagation (GSPMD); the batch of every input is put along ``data``
(:func:`shard_batch`), and the generators' selections (top-k, the diversity loops, compaction gathers) run along
the sequence axis, which no rule shards.

Sharding changes where numbers are computed, not what is computed: a sharded run equals the unsharded one up to the
order of floating-point sums (tests: greedy tokens equal, logits within 1e-5 in float32).

Source of the layout: the FSDP + tensor-parallel rules of MaxText / jax-llm-examples (``embed`` → fsdp, heads and
MLP → tensor, batch → data); JAX's ``jax.sharding`` API (``Mesh``, ``NamedSharding``, ``PartitionSpec``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vtp_jax.modeling.axes import BATCH, EMBED, HEADS, KV_HEADS, MLP, VOCAB, partition_spec

MESH_AXES = ("data", "fsdp", "tensor")
# Logical name → mesh axis (names without a rule are replicated).
RULES: dict[str, str] = {EMBED: "fsdp", HEADS: "tensor", KV_HEADS: "tensor", MLP: "tensor", VOCAB: "tensor",
                         BATCH: "data"}


class MeshError(ValueError):
    """A mesh that does not fit the devices or the model (the message names the axis, the size and what it
    shards)."""


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=2,fsdp=2,tensor=2"`` (any subset, any order) → {"data": 2, "fsdp": 2, "tensor": 2} with every axis of
    :data:`MESH_AXES` (missing ones 1). Raises MeshError for an unknown axis, one given twice, or a size that is not
    a whole number ≥ 1."""
    sizes = {a: 1 for a in MESH_AXES}
    seen = set()
    for item in (x.strip() for x in str(text).split(",")):
        if not item:
            continue
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or name not in MESH_AXES:
            raise MeshError(f"--mesh {text!r}: {item!r} is not AXIS=SIZE with AXIS one of {', '.join(MESH_AXES)}")
        if name in seen:
            raise MeshError(f"--mesh {text!r}: axis {name!r} given twice")
        try:
            size = int(value)
        except ValueError:
            size = 0
        if size < 1 or str(size) != value.strip():
            raise MeshError(f"--mesh {text!r}: the size of {name!r} must be a whole number ≥ 1, got {value!r}")
        sizes[name] = size
        seen.add(name)
    return sizes


def make_mesh(sizes: Mapping[str, int] | str, devices=None) -> Mesh:
    """A ``Mesh`` of shape (data, fsdp, tensor) over ``devices`` (default every device of every process,
    ``jax.devices()``). ``sizes``: a dict as :func:`parse_mesh` returns, or its text. Raises MeshError when the
    product of the sizes differs from the number of devices."""
    if isinstance(sizes, str):
        sizes = parse_mesh(sizes)
    sizes = {a: int(sizes.get(a, 1)) for a in MESH_AXES}
    devices = list(jax.devices() if devices is None else devices)
    shape = tuple(sizes[a] for a in MESH_AXES)
    if math.prod(shape) != len(devices):
        given = " × ".join(f"{a}={s}" for a, s in sizes.items())
        raise MeshError(f"mesh {given} has {math.prod(shape)} devices, but {len(devices)} "
                        f"{'is' if len(devices) == 1 else 'are'} available ({devices[0].platform}; on CPU set "
                        f"XLA_FLAGS=--xla_force_host_platform_device_count=N for N devices)")
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES)


def mesh_shape(mesh: Mesh) -> dict[str, int]:
    """{axis: size} of a mesh."""
    return dict(zip(mesh.axis_names, mesh.devices.shape))


def check_divides(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh, what: str) -> None:
    """Raises MeshError naming ``what``, the dimension and the mesh axis when a mesh axis (or the product of the axes)
    a dimension is split along does not divide it."""
    sizes = mesh_shape(mesh)
    for dim, (n, axes) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
        if axes is None:
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        parts = math.prod(sizes[a] for a in axes)
        if n % parts:
            raise MeshError(f"{what}: dimension {dim} of shape {list(shape)} ({n}) is split along mesh axis "
                            f"{'×'.join(axes)} of size {parts}, which does not divide it; pick a size that divides "
                            f"{n} or leave {'/'.join(axes)} out")


def param_shardings(abstract: dict, names: Mapping[str, Any], mesh: Mesh, rules: Mapping[str, Any] = RULES) -> dict:
    """``NamedSharding`` of every parameter: ``abstract`` a pure dict of arrays / ``ShapeDtypeStruct`` s (the restore
    target), ``names`` {dotted path: logical axis names} (:func:`vtp_jax.modeling.axes.logical_axes`). Returns a
    dict of the same structure. Raises MeshError for an axis that does not divide the dimension it shards (the
    message names the parameter, the dimension and the axis)."""

    def one(path, leaf):
        dotted = ".".join(str(getattr(k, "key", k)) for k in path)
        spec = partition_spec(names.get(dotted), rules)
        check_divides(spec, tuple(leaf.shape), mesh, f"parameter {dotted}")
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, abstract)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """The sharding of an input whose first dimension is the batch: split along ``data``, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(RULES[BATCH], *([None] * (ndim - 1))))


def shard_batch(x, mesh: Mesh | None, what: str = "the batch"):
    """``x`` (a host or device array whose first dimension is the batch) as a global array split along ``data``;
    unchanged without a mesh. Every process passes the same full array (inputs are built the same way on each), of
    which each device keeps its rows. Raises MeshError when ``data`` does not divide the batch."""
    if mesh is None:
        return x
    x = np.asarray(x)
    spec = batch_sharding(mesh, x.ndim)
    check_divides(spec.spec, x.shape, mesh, what)
    return jax.make_array_from_callback(x.shape, spec, lambda idx: x[idx])


def replicate(x, mesh: Mesh | None):
    """``x`` as a global array replicated over the mesh (every device holds all of it); unchanged without a mesh."""
    if mesh is None:
        return x
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, PartitionSpec()), lambda idx: x[idx])


def to_host(x) -> np.ndarray:
    """A (possibly sharded, possibly multi-process) array as one NumPy array on every process: the global value
    (``multihost_utils.process_allgather`` when some shards live in other processes)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def per_device_bytes(tree) -> dict[int, int]:
    """{device id: bytes of the shards of ``tree``'s arrays held on that device} (this process's devices)."""
    out: dict[int, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in getattr(leaf, "addressable_shards", ()):
            out[shard.device.id] = out.get(shard.device.id, 0) + shard.data.nbytes
    return out


def shard_model(model, mesh: Mesh, rules: Mapping[str, Any] = RULES):
    """Moves every parameter of an in-memory NNX ``model`` onto its ``NamedSharding`` under ``rules`` (in place) and
    returns the model — for models built in Python; converted checkpoints restore sharded directly
    (:func:`vtp_jax.checkpoint.load` with ``mesh``). Raises MeshError (see :func:`param_shardings`)."""
    from flax import nnx

    from vtp_jax.modeling.axes import logical_axes

    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    placed = jax.device_put(pure, param_shardings(pure, logical_axes(state), mesh, rules))
    nnx.replace_by_pure_dict(state, placed)
    nnx.update(model, state)
    return model
