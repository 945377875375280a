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

from vtp_jax.modeling.axes import BATCH, RULES, partition_spec

MESH_AXES = ("data", "fsdp", "tensor")
# RULES (logical name → mesh axis; names without a rule are replicated) live in vtp_jax.modeling.axes, beside
# the names, so that the model's caches and the pruning selections constrain activations with the same rules.
__all__ = ["MESH_AXES", "RULES", "MeshError", "parse_mesh", "make_mesh", "check_divides", "param_shardings",
           "batch_sharding", "shard_batch", "place", "to_host", "per_device_bytes", "shard_model",
           "DistributedError", "distributed_settings", "initialize_distributed", "is_primary",
           "param_bytes_per_device", "mesh_context", "within_mesh"]


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


def check_divides(spec: PartitionSpec | tuple, shape: tuple[int, ...], sizes: Mapping[str, int], what: str) -> None:
    """Raises MeshError naming ``what``, the dimension and the mesh axis when a mesh axis (or the product of the axes)
    a dimension is split along does not divide it. ``sizes``: {axis: size}, e.g. ``mesh.shape`` (no devices
    needed)."""
    for dim, (n, axes) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
        if axes is None:
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        parts = math.prod(int(sizes.get(a, 1)) for a in axes)
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
        check_divides(spec, tuple(leaf.shape), mesh.shape, f"parameter {dotted}")
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
    check_divides(spec.spec, x.shape, mesh.shape, what)
    return jax.make_array_from_callback(x.shape, spec, lambda idx: x[idx])


def place(x, sharding: NamedSharding) -> jax.Array:
    """``x`` (the same full value on every process) as a global array with ``sharding``: each process keeps the
    shards of its own devices (works with one process or several, where ``jax.device_put`` would need every shard
    to be addressable)."""
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


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
    shardings = param_shardings(pure, logical_axes(state), mesh, rules)
    placed = jax.tree.map(lambda x, sh: place(x, sh), pure, shardings)
    nnx.replace_by_pure_dict(state, placed)
    nnx.update(model, state)
    return model


class DistributedError(ValueError):
    """Bad multi-process settings, or a coordinator that cannot be reached in time."""


def distributed_settings(coordinator: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None) -> tuple[str, int, int] | None:
    """The multi-process settings from the flags, else from the environment (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``): (HOST:PORT, N, I), or None for a single process (no coordinator).
    Raises DistributedError for an address that is not HOST:PORT, N < 1 or I outside [0, N)."""
    import os

    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not coordinator:
        return None
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"--coordinator {coordinator!r}: give HOST:PORT (e.g. 127.0.0.1:12345)")
    try:
        n = int(num_processes if num_processes is not None else os.environ.get("JAX_NUM_PROCESSES", ""))
        i = int(process_id if process_id is not None else os.environ.get("JAX_PROCESS_ID", ""))
    except ValueError:
        raise DistributedError("--coordinator needs --num-processes N and --process-id I (or JAX_NUM_PROCESSES / "
                               "JAX_PROCESS_ID)") from None
    if n < 1 or not 0 <= i < n:
        raise DistributedError(f"--num-processes {n} / --process-id {i}: need N ≥ 1 and 0 ≤ I < N")
    return coordinator, n, i


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, timeout_s: int = 60) -> bool:
    """Joins a multi-process run (``jax.distributed.initialize``) when a coordinator is given (flags or
    environment, :func:`distributed_settings`); must run before JAX touches a device. On CPU the processes talk
    through gloo (``jax_cpu_collectives_implementation``). Returns whether a multi-process run was joined.

    Process 0 serves the coordinator at HOST:PORT; the others connect to it. Raises DistributedError when the
    coordinator is not reached within ``timeout_s`` seconds (or the settings are bad)."""
    settings = distributed_settings(coordinator, num_processes, process_id)
    if settings is None:
        return False
    address, n, i = settings
    # XLA aborts the whole process (not an exception) when the coordinator cannot be reached: check first
    _check_reachable(address, i, n, timeout_s)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(address, num_processes=n, process_id=i, initialization_timeout=int(timeout_s))
    except Exception as e:  # noqa: BLE001 — XLA's runtime errors (DEADLINE_EXCEEDED, UNAVAILABLE…)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(f"process {i} of {n} could not join the coordinator at {address} within "
                               f"{timeout_s} s ({first[:300]})") from None
    return True


def _check_reachable(address: str, process_id: int, num_processes: int, timeout_s: float) -> None:
    """Process 0: the coordinator's port must be free to bind. Others: a TCP connection to it must open within
    ``timeout_s`` seconds (retried every 0.2 s). Raises DistributedError."""
    import socket
    import time

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if process_id == 0:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind((host, int(port)))
            except OSError as e:
                raise DistributedError(f"process 0 cannot serve the coordinator at {address}: {e.strerror or e}"
                                       ) from None
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(1.0, timeout_s)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise DistributedError(f"process {process_id} of {num_processes} could not join the coordinator at "
                                       f"{address} within {timeout_s} s ({e.strerror or e}); is process 0 running?"
                                       ) from None
            time.sleep(0.2)


def mesh_context(mesh: Mesh | None):
    """The context the generators trace and run their jitted steps in: ``jax.set_mesh(mesh)``, under which
    :func:`vtp_jax.modeling.axes.constrain` lays out KV caches, the diffusion state and the pruning selections by
    :data:`RULES`; a no-op context without a mesh."""
    import contextlib

    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def within_mesh(method):
    """Decorator for a generator method: runs it inside :func:`mesh_context` of ``self.mesh`` (no mesh when the
    object has none), so that every jitted step it calls is traced under the mesh."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with mesh_context(getattr(self, "mesh", None)):
            return method(self, *args, **kwargs)

    return wrapper


def is_primary() -> bool:
    """Whether this is process 0 (the one that prints results and writes files)."""
    return jax.process_index() == 0


def param_bytes_per_device(abstract: dict, names: Mapping[str, Any], sizes: Mapping[str, int],
                           rules: Mapping[str, Any] = RULES) -> int:
    """Bytes of parameters one device holds under a mesh of ``sizes`` ({axis: size}; no devices needed): each
    parameter's shard (every split dimension divided by its mesh axes' sizes) summed over ``abstract`` (a pure dict
    of ``ShapeDtypeStruct`` s, the restore target), ``names`` as :func:`param_shardings`. Raises MeshError for an
    axis that does not divide the dimension it splits."""
    total = 0

    def one(path, leaf):
        nonlocal total
        dotted = ".".join(str(getattr(k, "key", k)) for k in path)
        spec = tuple(partition_spec(names.get(dotted), rules))
        check_divides(spec, tuple(leaf.shape), sizes, f"parameter {dotted}")
        shard = [n // math.prod(int(sizes.get(a, 1)) for a in ((axes,) if isinstance(axes, str) else axes))
                 if axes is not None else n for n, axes in zip(leaf.shape, spec)]
        total += math.prod(shard) * np.dtype(leaf.dtype).itemsize

    jax.tree_util.tree_map_with_path(one, abstract)
    return total
