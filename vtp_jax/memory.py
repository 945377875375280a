"""Will the model fit? A memory estimate from the config, checked before loading; out-of-memory turned into a message.

``vtp-generate`` and ``vtp-eval`` (and ``vtp-bench``) call this before loading a converted checkpoint, so a model
too large for the machine is refused within seconds with one line (exit code 2) instead of swapping the machine to a
standstill or dying in XLA with a page of C++ traceback.

All sizes are in **bytes** (ints); messages print gigabytes, GB = 10⁹ bytes, one decimal.

What the estimate counts (:func:`estimate`), for ``batch_size`` rows of ``seq_len`` tokens:

* ``params`` — exact: the sum of ``prod(shape) · itemsize`` over the model's parameters, taken from the abstractly
  built model (:func:`vtp_jax.checkpoint.abstract_params`, ``nnx.eval_shape``: nothing is allocated).
* ``kv_cache`` — keys and values, ``2 · B · T · H_kv · d_head · itemsize`` per decoder layer: every layer for a
  causal (LLaVA) decoder, whose KV cache holds the prompt plus the new tokens; one layer for LLaDA-V's
  bidirectional decoder, which keeps no cache (each denoising step recomputes the sequence layer by layer).
* ``activations`` — the working set of one decoder layer at full length: ``B · T · (4·D + 3·F) · itemsize``
  (hidden state, residual, attention projections, the MLP's gate / up / product), the attention scores of one
  layer ``B · H · T² · 4`` (float32: XLA's CPU attention materialises them), the float32 logits of
  ``logit_rows`` rows per batch row ``B · rows · V · 4``, and the same per-layer terms for the vision tower over
  ``vision_images`` images / tiles of ``P`` patches.
* ``overhead`` — a fixed :data:`RUNTIME_OVERHEAD_BYTES` (0.5 GB) for what the terms above leave out: compiled
  programs, XLA temporaries, allocator slack, the processed inputs.

Not counted: the Python process itself (the available memory is measured while it already runs), transient copies
while Orbax restores the parameters, and the memory of other processes started later. The estimate is a sanity
check at the scale of gigabytes, not an exact prediction.

Out of memory at run time (:func:`oom_guard`): XLA raises ``JaxRuntimeError`` with RESOURCE_EXHAUSTED when an
accelerator allocation fails; on the CPU backend the kernel's OOM killer usually ends the process first, so there
the check before loading is what protects the machine.

Available memory (:func:`available_bytes`): the ``VTP_MEMORY_LIMIT_BYTES`` environment variable when set (tests and
users inject a limit with it); else, on an accelerator backend, the first device's ``bytes_limit − bytes_in_use``
from ``memory_stats()`` (compared with the device-resident terms: parameters, KV cache, activations) or nothing
when the backend reports no stats (the check is then skipped); else, on CPU, the host's ``MemAvailable`` from
``/proc/meminfo`` (``os.sysconf`` available pages elsewhere), lowered to the cgroup's free share
(``memory.max − memory.current``) inside a container with a memory limit.

Public API (stable; ``eval/bench.py`` uses it too)::

    GB, RUNTIME_OVERHEAD_BYTES, LIMIT_ENV
    MemoryCheckError(ValueError)
    MemoryEstimate(params, kv_cache, activations, overhead, dtype) .total .device_total .describe()
    Budget(needed, available, source, estimate)   what a check compared (bytes; None = unknown)
    param_count(cfg) -> int                       param_bytes(cfg, dtype) -> int
    kv_cache_bytes(cfg, dtype, *, batch_size, seq_len) -> int
    activation_bytes(cfg, dtype, *, batch_size, seq_len, logit_rows=1, vision_images=None) -> int
    estimate(cfg, dtype, *, batch_size=1, seq_len, logit_rows=1, vision_images=None, overhead_bytes=...) -> MemoryEstimate
    estimate_bytes(...same...) -> int
    host_available_bytes() -> int | None          device_available_bytes(device=None) -> int | None
    available_bytes(device=None) -> int | None
    check_fits(est, *, where, limit_bytes=None, hint=None, device=None) -> Budget   (raises MemoryCheckError)
    model_config(model_dir) -> (cfg, dtype name, meta)                   (reads JSON only, no weights)
    check_model_dir(model_dir, *, seq_len, batch_size=1, ...) -> Budget
    is_out_of_memory(exc) -> bool
    oom_guard(step, budget=None)                  context manager: OOM → MemoryCheckError
    format_gb(n) -> str
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from typing import Any, Iterator, NamedTuple

GB = 1e9  # bytes per GB in every message
RUNTIME_OVERHEAD_BYTES = 500_000_000  # fixed allowance: compiled programs, XLA temporaries, allocator slack
LIMIT_ENV = "VTP_MEMORY_LIMIT_BYTES"  # overrides the detected available memory (bytes)
SCORE_BYTES = 4  # attention scores and logits are float32 whatever the parameter dtype
_OOM_MARKERS = ("resource_exhausted", "out of memory")


class MemoryCheckError(ValueError):
    """The model does not fit in the memory available, or ran out of it (exit code 2 in the CLIs)."""


def format_gb(n: float | int | None) -> str:
    """``n`` bytes as GB (10⁹ bytes) with one decimal, e.g. ``"13.5"``; ``"?"`` for None."""
    return "?" if n is None else f"{n / GB:.1f}"


# ---------------------------------------------------------------------------------------------------------------------
# the estimate
# ---------------------------------------------------------------------------------------------------------------------

def _itemsize(dtype: Any) -> int:
    import numpy as np

    from vtp_jax.checkpoint import DTYPES, dtype_name

    return int(np.dtype(DTYPES[dtype_name(dtype)]).itemsize)


def _leaf_sizes(cfg, dtype: Any) -> tuple[tuple[int, int], ...]:
    """(element count, itemsize) of every parameter of the abstractly built model (no allocation)."""
    from vtp_jax.checkpoint import dtype_name

    return _leaf_sizes_cached(cfg, dtype_name(dtype))


@functools.lru_cache(maxsize=8)
def _leaf_sizes_cached(cfg, dtype: str) -> tuple[tuple[int, int], ...]:
    # cfg is a frozen (hashable) dataclass; tracing a 7B model abstractly takes seconds, so repeat calls are cached
    import numpy as np

    from vtp_jax.checkpoint import abstract_params, flatten

    leaves = flatten(abstract_params(cfg, dtype)).values()
    return tuple((math.prod(leaf.shape), int(np.dtype(leaf.dtype).itemsize)) for leaf in leaves)


def param_count(cfg) -> int:
    """Number of parameters (scalars) of the model ``cfg`` describes (a ``LlavaConfig`` or ``LladaVConfig``).

    Exact: counted from the abstractly built model's parameter shapes (``nnx.eval_shape``; nothing allocated).
    Raises CheckpointError for an unsupported family.
    """
    return sum(n for n, _ in _leaf_sizes(cfg, "float32"))


def param_bytes(cfg, dtype: Any = "float32") -> int:
    """Bytes of the model's parameters in ``dtype`` ("float32" / "bfloat16" or a dtype): Σ prod(shape) · itemsize
    over the abstract parameters (exact, no allocation). Raises CheckpointError for an unsupported dtype or family."""
    return sum(n * size for n, size in _leaf_sizes(cfg, dtype))


def kv_cache_bytes(cfg, dtype: Any, *, batch_size: int, seq_len: int) -> int:
    """Bytes of keys and values for ``batch_size`` rows of ``seq_len`` tokens: ``2 · B · T · H_kv · d_head ·
    itemsize`` per layer, over all decoder layers for a causal (LLaVA) decoder (its KV cache), over one layer for a
    bidirectional (LLaDA-V) decoder (no cache; one layer's K/V live at a time). Raises ValueError for negative sizes."""
    if batch_size < 0 or seq_len < 0:
        raise ValueError(f"batch_size and seq_len must be ≥ 0, got {batch_size}, {seq_len}")
    t = cfg.text
    layers = t.num_hidden_layers if t.causal else 1
    return 2 * layers * batch_size * seq_len * t.num_key_value_heads * t.head_dim * _itemsize(dtype)


def activation_bytes(cfg, dtype: Any, *, batch_size: int, seq_len: int, logit_rows: int = 1,
                     vision_images: int | None = None, vision_tokens: int | None = None) -> int:
    """Bytes of one layer's working set (see the module docstring): decoder ``B · T · (4·D + 3·F) · itemsize +
    B · H · T² · 4``, logits ``B · logit_rows · V · 4``, and the vision tower's per-layer terms over
    ``vision_images`` images / tiles (default ``batch_size``) of ``vision_tokens`` tokens each (default the
    tower's fixed count: its patches, + class token for CLIP; Qwen2.5-VL's dynamic resolution gives each image its
    own patch count, which the caller passes). Raises ValueError for negative sizes, or a tower without a fixed
    token count and no ``vision_tokens``."""
    if min(batch_size, seq_len, logit_rows) < 0 or any(v is not None and v < 0 for v in (vision_images,
                                                                                          vision_tokens)):
        raise ValueError("batch_size, seq_len, logit_rows, vision_images and vision_tokens must be ≥ 0")
    size = _itemsize(dtype)
    t, v = cfg.text, cfg.vision
    images = batch_size if vision_images is None else vision_images
    text = batch_size * seq_len * (4 * t.hidden_size + 3 * t.intermediate_size) * size
    text += batch_size * t.num_attention_heads * seq_len * seq_len * SCORE_BYTES
    logits = batch_size * logit_rows * t.vocab_size * SCORE_BYTES
    if vision_tokens is None and not hasattr(v, "num_positions"):
        raise ValueError(f"the {getattr(v, 'kind', '?')} vision tower has no fixed token count: give vision_tokens")
    p = v.num_positions if vision_tokens is None else vision_tokens
    vision = images * p * (4 * v.hidden_size + 3 * v.intermediate_size) * size
    vision += images * v.num_attention_heads * p * p * SCORE_BYTES
    return text + logits + vision


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """An estimate in bytes, by term (see the module docstring for what each counts)."""

    params: int
    kv_cache: int
    activations: int
    overhead: int
    dtype: str = "float32"

    @property
    def total(self) -> int:
        """Everything: compared with host memory (CPU backend) or an injected limit."""
        return self.params + self.kv_cache + self.activations + self.overhead

    @property
    def device_total(self) -> int:
        """The device-resident terms (parameters, KV cache, activations): compared with an accelerator's memory."""
        return self.params + self.kv_cache + self.activations

    def describe(self) -> str:
        """One line, e.g. ``parameters 13.5 GB (bfloat16), KV cache 0.3 GB, activations 0.1 GB, runtime 0.5 GB``."""
        return (f"parameters {format_gb(self.params)} GB ({self.dtype}), KV cache {format_gb(self.kv_cache)} GB, "
                f"activations {format_gb(self.activations)} GB, runtime {format_gb(self.overhead)} GB")


def estimate(cfg, dtype: Any = "float32", *, batch_size: int = 1, seq_len: int, logit_rows: int = 1,
             vision_images: int | None = None, vision_tokens: int | None = None,
             overhead_bytes: int = RUNTIME_OVERHEAD_BYTES) -> MemoryEstimate:
    """The memory needed to run the model ``cfg`` in ``dtype`` on ``batch_size`` rows of ``seq_len`` tokens (prompt,
    visual tokens included, plus the tokens to generate), bytes by term.

    ``logit_rows``: rows of float32 logits per batch row (LLaVA 1, LLaDA-V ``gen_length``); ``vision_images``:
    images or anyres tiles through the vision tower (default ``batch_size``); ``vision_tokens``: tokens per image in
    the tower (default its fixed count; Qwen2.5-VL: the image's patch count); ``overhead_bytes``: the fixed runtime
    allowance. Raises CheckpointError (unsupported dtype / family) or ValueError (negative sizes).
    """
    from vtp_jax.checkpoint import dtype_name

    return MemoryEstimate(
        params=param_bytes(cfg, dtype),
        kv_cache=kv_cache_bytes(cfg, dtype, batch_size=batch_size, seq_len=seq_len),
        activations=activation_bytes(cfg, dtype, batch_size=batch_size, seq_len=seq_len, logit_rows=logit_rows,
                                     vision_images=vision_images, vision_tokens=vision_tokens),
        overhead=int(overhead_bytes),
        dtype=dtype_name(dtype),
    )


def estimate_bytes(cfg, dtype: Any = "float32", **lengths) -> int:
    """``estimate(cfg, dtype, **lengths).total`` in bytes (same arguments and errors as :func:`estimate`)."""
    return estimate(cfg, dtype, **lengths).total


# ---------------------------------------------------------------------------------------------------------------------
# what the machine has
# ---------------------------------------------------------------------------------------------------------------------

def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_free() -> int | None:
    """memory.max − memory.current of this process's cgroup (v2; v1's limit / usage files), None if unlimited."""
    pairs = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
             ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))
    for limit_path, usage_path in pairs:
        try:
            with open(limit_path, encoding="ascii") as fh:
                limit = fh.read().strip()
            with open(usage_path, encoding="ascii") as fh:
                usage = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        return max(int(limit) - usage, 0)
    return None


def host_available_bytes() -> int | None:
    """Host memory available to this process, bytes: ``MemAvailable`` (``/proc/meminfo``; ``os.sysconf`` available
    pages where there is none), lowered to the cgroup's free share under a container limit; None if unknown."""
    values = [v for v in (_meminfo_available(), _cgroup_free()) if v is not None]
    return min(values) if values else None


def device_available_bytes(device=None) -> int | None:
    """Free memory of ``device`` (default ``jax.devices()[0]``), bytes: ``bytes_limit − bytes_in_use`` from
    ``device.memory_stats()``; None on the CPU backend or when the backend reports no stats."""
    import jax

    device = device if device is not None else jax.devices()[0]
    if device.platform == "cpu":
        return None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 — some backends raise instead of returning None
        return None
    if not stats or "bytes_limit" not in stats:
        return None
    return max(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), 0)


def _env_limit() -> int | None:
    raw = os.environ.get(LIMIT_ENV)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(float(raw)) if any(c in raw for c in ".eE") else int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise MemoryCheckError(f"{LIMIT_ENV} must be a non-negative number of bytes, got {raw!r}")
    return value


def _available(device=None) -> tuple[int | None, str, bool]:
    """(bytes or None, where the number comes from, whether it is device memory)."""
    limit = _env_limit()
    if limit is not None:
        return limit, LIMIT_ENV, False
    import jax

    device = device if device is not None else jax.devices()[0]
    if device.platform != "cpu":
        return device_available_bytes(device), f"{device.platform}:{device.id} memory", True
    return host_available_bytes(), "host MemAvailable", False


def available_bytes(device=None) -> int | None:
    """Memory the model may use, bytes: ``VTP_MEMORY_LIMIT_BYTES`` if set; else free accelerator memory of
    ``device`` (default the first; None when the backend reports no stats); else host memory
    (:func:`host_available_bytes`). Raises MemoryCheckError for a malformed ``VTP_MEMORY_LIMIT_BYTES``."""
    return _available(device)[0]


# ---------------------------------------------------------------------------------------------------------------------
# the check
# ---------------------------------------------------------------------------------------------------------------------

class Budget(NamedTuple):
    """What a check compared: ``needed`` and ``available`` bytes (None: unknown, not checked), ``source`` of the
    available number, and the estimate itself (None if none was made)."""

    needed: int | None
    available: int | None
    source: str
    estimate: MemoryEstimate | None = None


def check_fits(est: MemoryEstimate, *, where: str, limit_bytes: int | None = None, hint: str | None = None,
               device=None) -> Budget:
    """Refuses an estimate that exceeds the available memory.

    Compares ``est.total`` with ``limit_bytes`` (if given), else with ``VTP_MEMORY_LIMIT_BYTES``, else with host
    memory on the CPU backend; on an accelerator compares ``est.device_total`` with the free memory of ``device``
    (skipped when the backend reports none). ``where`` (e.g. the model directory) starts the message; ``hint`` is
    appended to it.

    Returns the :class:`Budget` compared (for :func:`oom_guard`).
    Raises:
      MemoryCheckError: ``"<where>: needs ≈ X GB, Y GB available (<terms>; <source>[; <hint>])"``, one line; or a
        malformed ``VTP_MEMORY_LIMIT_BYTES``.
    """
    if limit_bytes is not None:
        available, source, on_device = int(limit_bytes), "limit", False
    else:
        available, source, on_device = _available(device)
    needed = est.device_total if on_device else est.total
    budget = Budget(needed, available, source, est)
    if available is not None and needed > available:
        tail = f"; {hint}" if hint else ""
        raise MemoryCheckError(f"{where}: needs ≈ {format_gb(needed)} GB, {format_gb(available)} GB available "
                               f"({est.describe()}; available: {source}{tail})")
    return budget


def model_config(model_dir: str | os.PathLike) -> tuple[Any, str, dict]:
    """(config, parameter dtype name, vtp_jax.json dict) of a converted directory, from its JSON files only (no
    weights read): what :func:`vtp_jax.checkpoint.load` would build.

    Raises CheckpointError like ``load`` (via :func:`vtp_jax.checkpoint.read_config`): DamagedCheckpointError for a
    missing / truncated / malformed config.json or vtp_jax.json or a field of the wrong type (named), CheckpointError
    for a directory that is not converted or a config this library cannot build. The parameter files are checked
    only by ``load``."""
    from vtp_jax.checkpoint import dtype_name, read_config

    cfg, meta = read_config(model_dir)
    return cfg, dtype_name(meta.get("dtype", "float32")), meta


def check_model_dir(model_dir: str | os.PathLike, *, seq_len: int, batch_size: int = 1, logit_rows: int = 1,
                    vision_images: int | None = None, dtype: Any = None, limit_bytes: int | None = None,
                    hint: str | None = None) -> Budget:
    """:func:`model_config` + :func:`estimate` + :func:`check_fits` for a converted directory (``dtype`` None = the
    stored one). Returns the Budget; raises CheckpointError (not a converted directory) or MemoryCheckError."""
    cfg, stored, _ = model_config(model_dir)
    est = estimate(cfg, stored if dtype is None else dtype, batch_size=batch_size, seq_len=seq_len,
                   logit_rows=logit_rows, vision_images=vision_images)
    return check_fits(est, where=os.fspath(model_dir), limit_bytes=limit_bytes, hint=hint)


# ---------------------------------------------------------------------------------------------------------------------
# out of memory at run time
# ---------------------------------------------------------------------------------------------------------------------

def is_out_of_memory(exc: BaseException) -> bool:
    """True for ``MemoryError`` and for XLA runtime errors (``jax.errors.JaxRuntimeError``, alias
    ``XlaRuntimeError``) whose message says RESOURCE_EXHAUSTED or "out of memory" (any case)."""
    if isinstance(exc, MemoryError):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    if not names & {"JaxRuntimeError", "XlaRuntimeError"}:
        return False
    text = str(exc).lower()
    return any(m in text for m in _OOM_MARKERS)


@contextlib.contextmanager
def oom_guard(step: str, budget: Budget | None = None) -> Iterator[None]:
    """Runs the ``with`` body; an out-of-memory inside it (:func:`is_out_of_memory`) becomes

        MemoryCheckError("out of memory while <step>: needs ≈ X GB, Y GB available (<source>; XLA: <first line>)")

    (without "needs ≈ …" when ``budget`` has no estimate), raised ``from None`` so no XLA traceback follows. Other
    exceptions pass unchanged."""
    try:
        yield
    except BaseException as e:  # noqa: BLE001 — re-raised unless it is an out-of-memory
        if not is_out_of_memory(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if budget is not None and budget.needed is not None:
            msg = (f"out of memory while {step}: needs ≈ {format_gb(budget.needed)} GB, "
                   f"{format_gb(budget.available)} GB available (available: {budget.source}; XLA: {first})")
        else:
            msg = f"out of memory while {step} (XLA: {first})"
        raise MemoryCheckError(msg) from None
