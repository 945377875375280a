"""``convert``: a Hugging Face LLaVA directory → a vtp_jax converted directory (see :mod:`vtp_jax.checkpoint`).

Steps:

1. Check the paths (HF_DIR exists; OUT_DIR absent, or replaceable with ``force``), read ``config.json`` and build
   :class:`~vtp_jax.config.LlavaConfig` with ``config_from_hf``; build the model *abstractly* to learn the name,
   shape and dtype of every parameter.
2. Read only the headers of the weight files and plan where every tensor goes (:mod:`convert.names`). All
   problems — unrecognised or surplus tensors, missing parameters, wrong shapes, non-float dtypes, duplicates —
   are collected and reported together before any tensor data is read.
3. Stream the tensors into an Orbax checkpoint (:func:`vtp_jax.checkpoint.save_params_streaming`), with
   ``config.json``, ``vtp_jax.json`` and the tokenizer/processor files, in a temporary directory beside OUT_DIR.
   Every parameter is a :class:`~vtp_jax.checkpoint.LazyArray` whose loader reads one source tensor, transposes
   it and casts it to ``dtype``; leaves are loaded in file order, and only while fewer than
   :data:`INFLIGHT_BYTES` of loaded tensors wait for their write. Peak memory is therefore about that budget plus
   the largest tensor (the token embedding) and its transient copies — independent of the number of layers; no
   whole-model dict ever exists. The checkpoint is the one Orbax's StandardCheckpointHandler writes for the
   in-memory dict (same ``_METADATA``, same arrays), restored by :func:`vtp_jax.checkpoint.load` as before.
4. Rename the temporary directory to OUT_DIR. Any failure removes the temporary directory: OUT_DIR is either
   complete or absent (an OUT_DIR replaced with ``force`` survives a failed conversion untouched).

A conversion killed outright (SIGKILL, power loss) cannot clean up. Its temporary directory
``.<OUT_DIR name>.tmp-*`` carries a marker file (:data:`OWNER_FILE`: target path, pid, host, process start time);
the next conversion to the same OUT_DIR removes such a directory when the marker is ours and its process is gone,
and names every other look-alike (no marker, another target, another host, a live process) without touching it.

Every user-facing failure raises :class:`ConversionError` (the CLI turns it into ``vtp-convert: error: ...``).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from convert import names
from convert.sources import SAFETENSORS_INDEX, PICKLE_INDEX, SourceError, ST_DTYPES, open_source

MAX_LISTED = 10  # problems spelled out in an error message; the rest are counted
# Copied next to the converted weights: tokenizer / processor / template files, and a DyRate predictor trained for
# this checkpoint (vtp-train-dyrate), which vtp-generate / vtp-eval then find without --predictor.
EXTRA_FILE_PATTERNS = ("*.json", "*.jinja", "*.model", "*.txt", "dyrate_predictor.safetensors")
SKIPPED_FILES = {"config.json", SAFETENSORS_INDEX, PICKLE_INDEX, "vtp_jax.json"}
INFLIGHT_BYTES = 256 << 20  # loaded tensors allowed to wait for their write at once (one larger tensor goes alone)
OWNER_FILE = ".vtp-convert-owner.json"  # marker in our temporary directory; removed just before the final rename
OWNER_TOOL = "vtp-convert"
# Test hook: after this many tensors are written, print a line naming the temporary directory and stop (block), so
# a test can SIGKILL a conversion at a known point. Never set outside tests.
STALL_ENV = "VTP_CONVERT_TEST_STALL_AFTER"


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


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (field 22 of /proc/PID/stat, clock ticks since boot), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def _process_alive(pid: int, start: str | None) -> bool:
    """Whether ``pid`` still runs the process that wrote a marker (its start time, when recorded, must match)."""
    if pid == os.getpid():  # a recycled pid: our own conversion has not started writing yet
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (OSError, OverflowError, ValueError):
        return False
    now = _process_start(pid)
    return start is None or now is None or now == start


def _owner_record(out_dir: str) -> dict:
    return {"tool": OWNER_TOOL, "target": out_dir, "pid": os.getpid(), "host": socket.gethostname(),
            "process_start": _process_start(os.getpid()), "created": time.time()}


def _read_owner(path: str) -> dict | None:
    try:
        with open(os.path.join(path, OWNER_FILE), encoding="utf-8") as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and owner.get("tool") == OWNER_TOOL else None


def clean_stale_temp_dirs(out_dir: str, notify: Callable[[str], None]) -> list[str]:
    """Removes temporary directories that killed conversions to ``out_dir`` left beside it; returns their paths.

    A directory ``.<name>.tmp-*`` next to ``out_dir`` is removed only if it is a real directory (not a link) holding
    our marker (:data:`OWNER_FILE`) for exactly this ``out_dir``, written on this host by a process that no longer
    runs. Every other look-alike — and any ``.<name>.old-*`` left by a ``--force`` run killed between its two
    renames, which holds the previous checkpoint — is named through ``notify`` and left alone.

    Args:
      out_dir: absolute OUT_DIR path.
      notify: called with one human-readable line per directory removed or left alone.
    """
    parent, base = os.path.dirname(out_dir), os.path.basename(out_dir)
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return []
    removed = []
    for entry in entries:
        path = os.path.join(parent, entry)
        if entry.startswith(f".{base}.old-"):
            notify(f"left {path} alone: a previous checkpoint set aside by an interrupted --force run "
                   f"(move it back to {out_dir} or remove it)")
            continue
        if not entry.startswith(f".{base}.tmp-"):
            continue
        owner = None if os.path.islink(path) or not os.path.isdir(path) else _read_owner(path)
        if owner is None or owner.get("target") != out_dir:
            notify(f"left {path} alone: it looks like a temporary directory of an earlier conversion, but it has "
                   f"no {OWNER_FILE} naming {out_dir}; remove it by hand if it is not in use")
            continue
        pid = owner.get("pid")
        if owner.get("host") != socket.gethostname() or not isinstance(pid, int):
            notify(f"left {path} alone: written by a conversion on host {owner.get('host')!r}, which this one "
                   "cannot check; remove it by hand if that conversion is over")
            continue
        if _process_alive(pid, owner.get("process_start")):
            notify(f"left {path} alone: the conversion that writes it (pid {pid}) is still running")
            continue
        shutil.rmtree(path, ignore_errors=True)
        if os.path.lexists(path):
            notify(f"could not remove {path}, left by an interrupted conversion (pid {pid}); remove it by hand")
        else:
            notify(f"removed {path}, left by an interrupted conversion (pid {pid})")
            removed.append(path)
    return removed


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


def _stderr_note(message: str) -> None:
    print(f"{OWNER_TOOL}: {message}", file=sys.stderr, flush=True)


def convert(
    hf_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    force: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
    inflight_bytes: int = INFLIGHT_BYTES,
    notify: Callable[[str], None] | None = None,
) -> str:
    """Converts HF_DIR (config.json + safetensors / pickled weights) to OUT_DIR; returns OUT_DIR's absolute path.

    Tensors are streamed: read, transposed, cast and written a few at a time (see the module docstring), so peak
    memory is about ``inflight_bytes`` + the largest tensor, not the model's size. Temporary directories left
    beside OUT_DIR by killed conversions are removed first (:func:`clean_stale_temp_dirs`).

    Args:
      dtype: parameter dtype of the output, "float32" or "bfloat16" (tensors are cast while streaming).
      force: replace an existing OUT_DIR (only if it is empty or a converted checkpoint).
      allow_pickle: accept ``pytorch_model.bin`` (loaded with ``torch.load(weights_only=True)``).
      progress: show a tqdm bar over tensors on stderr.
      inflight_bytes: bytes of loaded tensors that may wait for their write at once (≥ 1; one tensor larger than
        this is written alone).
      notify: receives one line per stale temporary directory removed or left alone; default: stderr.

    Raises:
      ConversionError: bad paths, unsupported config, unusable weight files, tensors that do not fit the model
        (all such tensors are collected; the message lists the first few and the count), write failures.
    """
    from vtp_jax import checkpoint

    notify = _stderr_note if notify is None else notify
    hf_dir, out_dir = os.path.abspath(os.fspath(hf_dir)), os.path.abspath(os.fspath(out_dir))
    if dtype not in checkpoint.DTYPES:
        raise ConversionError(f"unsupported --dtype {dtype!r} (choose from {', '.join(checkpoint.DTYPES)})")
    if not isinstance(inflight_bytes, int) or inflight_bytes < 1:
        raise ConversionError(f"inflight_bytes must be a positive int, got {inflight_bytes!r}")
    _check_paths(hf_dir, out_dir, force)
    clean_stale_temp_dirs(out_dir, notify)
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
    stall_after = _stall_after()

    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    except OSError as e:
        raise ConversionError(f"cannot create a directory beside OUT_DIR {out_dir}: {e}") from None
    try:
        with open(os.path.join(tmp, OWNER_FILE), "w", encoding="utf-8") as f:
            json.dump(_owner_record(out_dir), f, indent=2)
            f.write("\n")
        lazy = lazy_params(source, chosen, key_paths, expected)
        _write_params(os.path.join(tmp, checkpoint.PARAMS_DIR), lazy, inflight_bytes, progress, stall_after, tmp)
        del lazy
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
        os.remove(os.path.join(tmp, OWNER_FILE))
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


def _stall_after() -> int | None:
    value = os.environ.get(STALL_ENV)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConversionError(f"{STALL_ENV}={value!r} is not an integer") from None


def _load_tensor(source, name: str, target: names.Target, spec, transpose_after: bool = False):
    """One parameter: source tensor ``name`` → transform → cast to ``spec.dtype`` (→ transposed: a tied head).

    Returns a C-contiguous numpy array of ``spec.shape`` / ``spec.dtype``. Raises SourceError for a short read or
    a tensor whose data disagree with its header.
    """
    array = source.read(name)
    out = names.apply_transform(array, target.transform).astype(spec.dtype, copy=False)
    del array
    if transpose_after:  # tied head: W_head = E^T
        out = np.ascontiguousarray(out.T)
    if out.shape != tuple(spec.shape):  # headers were checked; this guards against lying files
        raise SourceError(f"tensor {name!r} read with shape {list(out.shape)}, header said otherwise")
    return out


def lazy_params(source, chosen: dict[str, names.Target], key_paths: dict, expected: dict) -> dict:
    """The parameter pure dict with :class:`~vtp_jax.checkpoint.LazyArray` leaves; nothing is read yet.

    Each leaf's loader reads its source tensor (``source.read``), applies the layout transform and casts it to the
    expected dtype; leaves are ordered by (file, byte offset) so every file is read front to back. A missing
    ``lm_head.kernel`` (``plan`` allows that only for tied embeddings) is the transposed token embedding, read again.

    Args:
      source: a :mod:`convert.sources` source (``read``, ``order_key``).
      chosen: {HF name: Target} from :func:`plan` (no problems).
      key_paths: {dotted path: key tuple} of the abstract parameters.
      expected: {dotted path: jax.ShapeDtypeStruct}.
    """
    from vtp_jax.checkpoint import LazyArray

    tree: dict = {}
    by_path = {}
    for name, target in chosen.items():
        spec = expected[target.path]
        by_path[target.path] = name
        leaf = LazyArray(spec.shape, spec.dtype, functools.partial(_load_tensor, source, name, target, spec),
                         order=(*source.order_key(name), 0))
        _set(tree, key_paths[target.path], leaf)
    if "lm_head.kernel" not in by_path:
        name = by_path["language_model.embed_tokens.embedding"]
        spec = expected["lm_head.kernel"]
        load = functools.partial(_load_tensor, source, name, chosen[name], spec, transpose_after=True)
        _set(tree, key_paths["lm_head.kernel"], LazyArray(spec.shape, spec.dtype, load,
                                                          order=(*source.order_key(name), 1)))
    return tree


def _write_params(path: str, lazy: dict, inflight_bytes: int, progress: bool, stall_after: int | None,
                  tmp: str) -> None:
    """Streams ``lazy`` into an Orbax checkpoint at ``path`` with a tqdm bar over tensors."""
    from tqdm.auto import tqdm

    from vtp_jax import checkpoint

    n_leaves = len(checkpoint.flatten(lazy))
    written = 0
    with tqdm(total=n_leaves, desc="vtp-convert", unit="tensor", disable=not progress) as bar:

        def on_written(n: int) -> None:  # called from Orbax's writer thread
            nonlocal written
            written += n
            bar.update(n)
            if stall_after is not None and written >= stall_after:
                print(f"{OWNER_TOOL}: test stall after {written} tensors in {tmp}", file=sys.stderr, flush=True)
                while True:
                    time.sleep(3600)

        # Orbax logs a traceback (absl ERROR) for a failed background write before re-raising it here; the error
        # itself reaches the caller, so that log would only repeat it on the command line.
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.CRITICAL)
        try:
            checkpoint.save_params_streaming(path, lazy, max_inflight_bytes=inflight_bytes, on_written=on_written)
        except ValueError as e:  # tensorstore / Orbax write failures (e.g. no space left) surface as ValueError
            raise OSError(f"saving the parameters failed: {e}") from None
        finally:
            absl_logger.setLevel(level)


def _set(tree: dict, keys: tuple, value) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value
