"""``convert``: a Hugging Face LLaVA directory → a vtp_jax converted directory (see :mod:`vtp_jax.checkpoint`).

Steps:

1. Check the paths (HF_DIR exists; OUT_DIR absent, or replaceable with ``force``), read ``config.json`` and build
   :class:`~vtp_jax.config.LlavaConfig` with ``config_from_hf`` (every structural field validated, named in the
   error); read only the headers of the weight files (a config with more layers than there are tensors stops here);
   build the model *abstractly* to learn the name, shape and dtype of every parameter.
2. Plan where every tensor goes (the family's name map, ``vtp_jax/families/<family>/names.py``). All
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
   Every tensor is checked for NaN / inf as it is loaded (the loaded array is scanned in slices, so the check costs
   no extra copy); such tensors are collected and refused together after the write (``allow_nonfinite`` converts
   them anyway, with a warning). A LLaVA processor_config.json that lacks ``patch_size``,
   ``vision_feature_select_strategy`` or ``num_additional_image_tokens`` (or is absent beside a
   preprocessor_config.json, as in older checkpoints) gets them from config.json, with a note on stderr.
4. Commit: rename the temporary directory to OUT_DIR with a rename that never replaces anything (Linux
   ``renameat2(RENAME_NOREPLACE)``; elsewhere OUT_DIR is first claimed with ``mkdir``). An OUT_DIR that appeared
   while converting — a second conversion, a directory a user made — is left alone and the run fails ("appeared
   while converting"). With ``force`` only the very directory vetted at the start (same ``st_dev`` / ``st_ino``)
   is moved aside and replaced. Any failure removes the temporary directory (and only it): OUT_DIR is either
   complete or absent (an OUT_DIR replaced with ``force`` survives a failed conversion untouched).

Directories are created with mode 0777 and files with 0666 minus the umask, like any other tool's output.

Signals: SIGINT and SIGTERM are caught for the whole conversion (in the main thread) and only recorded
(:class:`_Signals`); the conversion looks at the record between its phases, the writer after every tensor (ending
the Orbax save through its ordinary error path, so no writer task is left behind), and once more right before the
commit — so a signal can neither be swallowed by library code nor commit a checkpoint. The temporary directory is
removed (:func:`_remove_own`, which also outwaits a cancelled tensorstore write) and :class:`Interrupted` (a
KeyboardInterrupt; ``signum`` tells which signal) is raised; the CLI exits 130 / 143 with "interrupted, nothing was
written".

A conversion killed outright (SIGKILL, power loss) cannot clean up. Its temporary directory
``.<OUT_DIR name>.tmp-*`` carries a marker file (:data:`OWNER_FILE`: target path, pid, host, process start time);
the next conversion to the same OUT_DIR removes such a directory when the marker is ours and its process is gone,
and names every other look-alike (no marker, another target, another host, a live process) without touching it.

Every user-facing failure raises :class:`ConversionError` (the CLI turns it into ``vtp-convert: error: ...``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import functools
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from typing import Callable

import numpy as np

from vtp_jax.families import tensor_names as names
from convert.sources import (PICKLE_INDEX, SAFETENSORS_INDEX, ST_DTYPE_CODES, SafetensorsSource, SourceError,
                             open_source)

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
# Test hook: a directory; once everything is written, just before the commit, the converter writes ``paused`` there
# (holding the temporary directory's path) and waits until a file ``resume`` appears. Never set outside tests.
PAUSE_ENV = "VTP_CONVERT_TEST_PAUSE_BEFORE_COMMIT"
PAUSE_TIMEOUT_S = 300
PROCESSOR_FILE = "processor_config.json"
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
PREDICTOR_FILE = "dyrate_predictor.safetensors"
NONFINITE_SLICE = 1 << 20  # elements scanned for NaN / inf at a time (a 1 MiB bool temporary)


class ConversionError(Exception):
    """A conversion that cannot proceed; the message names the problem (and the first offending tensors)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a conversion.

    Attributes:
      signum: the signal number (``signal.SIGINT`` / ``signal.SIGTERM``); exit code 128 + signum.
      written: True only if the signal came while OUT_DIR was being committed and the commit had completed.
    """

    def __init__(self, signum: int, written: bool = False):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.written = written


class _StopWriting(Exception):
    """Raised by the parameter writer's callback once a signal was recorded: it ends the Orbax save through its
    ordinary error path, which cancels and collects the pending writer tasks before the save returns."""


class _Signals:
    """Handles SIGINT / SIGTERM while a conversion runs (handlers only in the main thread; elsewhere a recorder that
    never fires).

    Before the temporary directory exists (``early``) nothing has been written: a signal calls ``on_early(signum)``
    (the CLI's: print the message, end the process at once) or, without one, raises :class:`Interrupted` right away
    — as Python's own SIGINT would. From then on the first signal is only recorded in ``signum``: the conversion
    looks at it between its steps, the writer after every tensor, so the run stops where stopping is safe. The
    handler does not raise there, because an exception raised from a handler lands wherever the main thread happens
    to be — inside a native extension's import it aborts the process (a nanobind ``terminate``), inside a gc
    callback it is printed and dropped, inside Orbax it can be swallowed. A second signal raises
    :class:`Interrupted` at once (for a run that does not stop). The previous handlers are restored on exit.
    """

    def __init__(self, on_early: Callable[[int], None] | None = None):
        self.signum: int | None = None
        self.early = True
        self._on_early = on_early
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):  # not settable here (e.g. an embedding interpreter)
                    pass
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()
        return False

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if self.early and self._on_early is not None:
            self._on_early(signum)
        if first and not self.early:
            return
        raise Interrupted(self.signum)

    @contextlib.contextmanager
    def not_early(self):
        """A step before the temporary directory exists that must not be cut short (removing stale directories)."""
        early, self.early = self.early, False
        try:
            yield
        finally:
            self.early = early

    def check(self) -> None:
        """Raises :class:`Interrupted` if a signal was recorded."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def check_writer(self) -> None:
        """Raises :class:`_StopWriting` if a signal was recorded (called from the writer's thread)."""
        if self.signum is not None:
            raise _StopWriting()


def _problems_message(header: str, problems: list[str], *, count: bool = True) -> str:
    lines = [f"{header}: {len(problems)} problem{'s' if len(problems) != 1 else ''}" if count else header]
    lines += [f"  - {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(lines)


def _check_paths(hf_dir: str, out_dir: str, force: bool) -> tuple[int, int] | None:
    """Checks HF_DIR and OUT_DIR; returns (st_dev, st_ino) of an existing OUT_DIR that ``force`` may replace (the
    only directory the commit will ever replace), None when OUT_DIR does not exist.

    Raises:
      ConversionError: HF_DIR missing / not a directory, OUT_DIR is HF_DIR or contains it, OUT_DIR exists without
        ``force``, or exists and is not a directory / not a converted checkpoint.
    """
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
        st = os.lstat(out_dir)
        return st.st_dev, st.st_ino
    return None


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
    if not isinstance(raw.get("vtp_random_weights", False), bool):
        raise ConversionError(f"{path}: vtp_random_weights must be true or false, got {raw['vtp_random_weights']!r}")
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
    """(map_name, is_ignored) for a model family: HF tensor name → :class:`~vtp_jax.families.tensor_names.Target` |
    None, and → bool — the family's own map (``Family.tensor_names``). Raises ConversionError for an unknown family.
    """
    from vtp_jax import families

    try:
        return families.get(family).tensor_names()
    except families.UnknownFamilyError as e:
        raise ConversionError(str(e)) from None


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
        if info.dtype not in ST_DTYPE_CODES:
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


def _copy_file(src: str, dst: str) -> None:
    """``shutil.copyfile``; a source that cannot be read is named as such (not as a failed write of OUT_DIR).

    Raises:
      ConversionError: ``src`` cannot be opened for reading.
      OSError: writing ``dst`` failed.
    """
    try:
        f = open(src, "rb")
    except OSError as e:
        raise ConversionError(f"cannot read {src}: {e.strerror or e}") from None
    with f, open(dst, "wb") as out:
        shutil.copyfileobj(f, out)


def _copy_extra_files(hf_dir: str, dst: str) -> list[str]:
    copied = []
    for fname in sorted(os.listdir(hf_dir)):
        src = os.path.join(hf_dir, fname)
        if fname in SKIPPED_FILES or not os.path.isfile(src):
            continue
        if any(fnmatch.fnmatch(fname, pat) for pat in EXTRA_FILE_PATTERNS):
            _copy_file(src, os.path.join(dst, fname))
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


_LIVE_TEMP_DIRS: set[str] = set()  # temporary directories conversions of this process are writing right now
_LIVE_LOCK = threading.Lock()


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
        with _LIVE_LOCK:
            ours_live = pid == os.getpid() and path in _LIVE_TEMP_DIRS
        if ours_live or _process_alive(pid, owner.get("process_start")):
            notify(f"left {path} alone: the conversion that writes it (pid {pid}) is still running")
            continue
        shutil.rmtree(path, ignore_errors=True)
        if os.path.lexists(path):
            notify(f"could not remove {path}, left by an interrupted conversion (pid {pid}); remove it by hand")
        else:
            notify(f"removed {path}, left by an interrupted conversion (pid {pid})")
            removed.append(path)
    return removed


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


@functools.cache
def _renameat2():
    """libc's ``renameat2`` (Linux, glibc ≥ 2.28) as a ctypes function, or None where there is none."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _rename_noreplace(src: str, dst: str) -> None:
    """Renames the directory ``src`` to ``dst`` only if nothing is at ``dst``, atomically.

    Linux: ``renameat2(RENAME_NOREPLACE)``. Where that is missing (another OS, a file system without the flag), the
    name is first claimed with ``mkdir`` (which fails if anything is there) and ``src`` renamed onto that empty
    directory of ours; if someone wrote into it meanwhile the rename fails, and what they wrote stays.

    Raises:
      FileExistsError: something is (or appeared) at ``dst``; it is left alone.
      OSError: any other failure (FileNotFoundError if ``src`` is gone).
    """
    fn = _renameat2()
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), src, None, dst)  # EEXIST → FileExistsError, ENOENT → FileNotFound
    os.lstat(src)  # FileNotFoundError before claiming anything
    os.mkdir(dst, 0o700)  # FileExistsError if anything is there
    claimed = os.lstat(dst)
    try:
        os.rename(src, dst)  # onto our own empty directory
    except OSError as e:
        with contextlib.suppress(OSError):
            st = os.lstat(dst)
            if (st.st_dev, st.st_ino) == (claimed.st_dev, claimed.st_ino):
                os.rmdir(dst)  # still ours and empty; fails harmlessly if someone wrote into it
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(errno.EEXIST, "something was written into it while renaming", dst) from None
        raise


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _commit(tmp: str, out_dir: str, vetted: tuple[int, int] | None, notify: Callable[[str], None]) -> None:
    """Renames ``tmp`` to ``out_dir`` without ever replacing a directory that was not vetted.

    Args:
      tmp: our complete temporary directory.
      out_dir: the target.
      vetted: (st_dev, st_ino) of the OUT_DIR that ``force`` allowed to replace (checked at the start), or None:
        then OUT_DIR must still be absent.
      notify: told where a replaced checkpoint was left if putting it back failed.

    Raises:
      ConversionError: OUT_DIR appeared while converting, or the vetted OUT_DIR was replaced by another directory;
        whatever is at OUT_DIR then is left alone (``tmp`` is the caller's to remove).
      OSError: a rename failed otherwise.
    """
    old = None
    if vetted is not None:
        old = os.path.join(os.path.dirname(out_dir), f".{os.path.basename(out_dir)}.old-{secrets.token_hex(4)}")
        try:
            _rename_noreplace(out_dir, old)
        except FileNotFoundError:
            old = None  # the vetted directory is gone: nothing to replace
        else:
            if _identity(old) != vetted:  # OUT_DIR was replaced after it was checked: put that one back
                try:
                    _rename_noreplace(old, out_dir)
                except OSError:
                    raise ConversionError(
                        f"OUT_DIR {out_dir} was replaced by another directory while converting; it could not be "
                        f"put back and is now at {old} (move it back); nothing was written") from None
                raise ConversionError(f"OUT_DIR {out_dir} was replaced by another directory while converting; "
                                      "left it alone, nothing was written")
    try:
        _rename_noreplace(tmp, out_dir)
    except FileExistsError:
        kept = f"; the checkpoint it was to replace is now at {old}" if old is not None else ""
        raise ConversionError(f"OUT_DIR {out_dir} appeared while converting (another conversion or a user made it); "
                              f"left it alone, nothing was written{kept}") from None
    except BaseException:
        if old is not None:
            try:
                _rename_noreplace(old, out_dir)
            except OSError:
                notify(f"the checkpoint that was at {out_dir} is now at {old}; move it back")
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _make_temp_dir(out_dir: str) -> tuple[str, tuple[int, int]]:
    """Creates ``.<OUT_DIR name>.tmp-<random>`` beside OUT_DIR with mode 0777 minus the umask (``tempfile.mkdtemp``
    would make it 0700, and the rename would carry that to OUT_DIR); returns (path, (st_dev, st_ino))."""
    parent, base = os.path.dirname(out_dir), os.path.basename(out_dir)
    for _ in range(100):
        path = os.path.join(parent, f".{base}.tmp-{secrets.token_hex(4)}")
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        st = os.lstat(path)
        return path, (st.st_dev, st.st_ino)
    raise FileExistsError(errno.EEXIST, "no unused temporary name", os.path.join(parent, f".{base}.tmp-*"))


SETTLE_QUIET_S, SETTLE_MAX_S = 0.3, 5.0


def _remove_own(path: str | None, ident: tuple[int, int] | None, *, settle: bool = False) -> None:
    """Removes our temporary directory — only if ``path`` is still the directory we created.

    ``settle``: the write was cut short (a signal, a failed load), and tensorstore may still finish a cancelled
    write, re-creating the path (``.../params.orbax-checkpoint-tmp/ocdbt.process_0``) after it was removed. Then the
    path is watched until it has stayed absent for :data:`SETTLE_QUIET_S` seconds (at most :data:`SETTLE_MAX_S`),
    and removed again whenever it reappears: a random name of ours that only our own writers use.
    """
    if path is None or ident is None or _identity(path) != ident:
        return
    shutil.rmtree(path, ignore_errors=True)
    if not settle:
        return
    start = quiet = time.monotonic()
    while time.monotonic() - quiet < SETTLE_QUIET_S and time.monotonic() - start < SETTLE_MAX_S:
        time.sleep(0.02)
        if os.path.lexists(path):
            shutil.rmtree(path, ignore_errors=True)
            quiet = time.monotonic()


def _stderr_note(message: str) -> None:
    print(f"{OWNER_TOOL}: {message}", file=sys.stderr, flush=True)


class _NonFinite:
    """Collects tensors holding NaN / inf, reported by the loaders (writer threads) as they are loaded."""

    def __init__(self):
        self._lock = threading.Lock()
        self.found: dict[str, tuple[int, int, str | None]] = {}  # name → (bad count, size, overflowed into dtype)

    def check(self, name: str, out: np.ndarray, source: np.ndarray) -> None:
        """Scans ``out`` (what will be written); when it holds NaN / inf, records ``name`` (and whether the source
        itself was finite where ``out`` is not, i.e. the cast to ``out.dtype`` overflowed)."""
        bad = _count_nonfinite(out)
        if not bad:
            return
        overflow = None
        if np.dtype(source.dtype) != np.dtype(out.dtype) and _count_nonfinite(source) < bad:
            overflow = np.dtype(out.dtype).name
        with self._lock:
            self.found.setdefault(name, (bad, int(out.size), overflow))

    def problems(self) -> list[str]:
        out = []
        for name in sorted(self.found):
            bad, size, overflow = self.found[name]
            why = f" (values too large for {overflow})" if overflow else ""
            out.append(f"{name!r}: {bad} of {size} values are NaN or inf{why}")
        return out


def _count_nonfinite(a: np.ndarray) -> int:
    """Number of NaN / ±inf elements of a float array (any strides), scanned in slices of about
    :data:`NONFINITE_SLICE` elements, so no full-size temporary is made. An array whose axes are a permutation of a
    contiguous block (a transposed tensor) is scanned in memory order, as a flat view."""
    if a.ndim == 0 or a.size == 0:
        return int(a.size - np.count_nonzero(np.isfinite(a)))
    dense = a.transpose(sorted(range(a.ndim), key=lambda i: -abs(a.strides[i])))
    if dense.flags.c_contiguous:
        a = dense.reshape(-1)  # a view
    step = max(1, NONFINITE_SLICE // max(1, a.size // a.shape[0]))
    bad = 0
    for i in range(0, a.shape[0], step):
        chunk = a[i:i + step]
        bad += int(chunk.size - np.count_nonzero(np.isfinite(chunk)))
    return bad


def convert(
    hf_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    force: bool = False,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
    progress: bool = True,
    inflight_bytes: int = INFLIGHT_BYTES,
    notify: Callable[[str], None] | None = None,
    on_early_signal: Callable[[int], None] | None = None,
) -> str:
    """Converts HF_DIR (config.json + safetensors / pickled weights) to OUT_DIR; returns OUT_DIR's absolute path.

    Tensors are streamed: read, checked for NaN / inf, transposed, cast and written a few at a time (see the module
    docstring), so peak memory is about ``inflight_bytes`` + the largest tensor, not the model's size. Temporary
    directories left beside OUT_DIR by killed conversions are removed first (:func:`clean_stale_temp_dirs`).

    Args:
      dtype: parameter dtype of the output, "float32" or "bfloat16" (tensors are cast while streaming).
      force: replace an existing OUT_DIR (only if it is empty or a converted checkpoint, and only that very
        directory: one put in its place during the conversion is left alone).
      allow_pickle: accept ``pytorch_model.bin`` (loaded with ``torch.load(weights_only=True)``).
      allow_nonfinite: convert tensors holding NaN / inf (and a DyRate predictor file holding them) with a warning
        instead of refusing them.
      progress: show a tqdm bar over tensors on stderr.
      inflight_bytes: bytes of loaded tensors that may wait for their write at once (≥ 1; one tensor larger than
        this is written alone).
      notify: receives one line per stale temporary directory removed or left alone, and the notes and warnings
        of the conversion (processor fields filled in, non-finite tensors allowed); default: stderr.
      on_early_signal: called with the signal number for SIGINT / SIGTERM before anything is written (config,
        headers, the abstract model — steps that can take a while); the CLI's ends the process there. None: raise
        :class:`Interrupted` at once, as Python's SIGINT would.

    Raises:
      ConversionError: bad paths, unsupported config (naming the field), unusable weight files, tensors that do not
        fit the model or hold NaN / inf (all such tensors are collected; the message lists the first few and the
        count), OUT_DIR appearing or being replaced while converting, write failures.
      Interrupted: SIGINT / SIGTERM (caught while this runs in the main thread); nothing was written and the
        temporary directory is gone, unless ``Interrupted.written`` says the commit had already completed.
    """
    notify = _stderr_note if notify is None else notify
    with _Signals(on_early_signal) as signals:
        return _convert(hf_dir, out_dir, dtype=dtype, force=force, allow_pickle=allow_pickle,
                        allow_nonfinite=allow_nonfinite, progress=progress, inflight_bytes=inflight_bytes,
                        notify=notify, signals=signals)


def _convert(hf_dir, out_dir, *, dtype, force, allow_pickle, allow_nonfinite, progress, inflight_bytes, notify,
             signals: _Signals) -> str:
    from vtp_jax import checkpoint

    signals.check()  # after the import of jax / Orbax / flax (a second or so)
    hf_dir, out_dir = os.path.abspath(os.fspath(hf_dir)), os.path.abspath(os.fspath(out_dir))
    if dtype not in checkpoint.DTYPES:
        raise ConversionError(f"unsupported --dtype {dtype!r} (choose from {', '.join(checkpoint.DTYPES)})")
    if isinstance(inflight_bytes, bool) or not isinstance(inflight_bytes, int) or inflight_bytes < 1:
        raise ConversionError(f"inflight_bytes must be a positive int, got {inflight_bytes!r}")
    vetted = _check_paths(hf_dir, out_dir, force)
    with signals.not_early():
        clean_stale_temp_dirs(out_dir, notify)
    signals.check()  # and after every step below
    raw_config, cfg = _read_config(hf_dir)
    try:
        source = open_source(hf_dir, allow_pickle=allow_pickle)
    except SourceError as e:
        raise ConversionError(str(e)) from None
    _check_layer_counts(cfg, source, hf_dir)
    signals.check()
    abstract = checkpoint.abstract_params(cfg, dtype)
    key_paths = _key_paths(abstract)
    expected = {path: _leaf(abstract, keys) for path, keys in key_paths.items()}
    signals.check()
    chosen, problems = plan(source.tensors, expected, cfg.text.tie_word_embeddings, cfg.family)
    if problems:
        raise ConversionError(_problems_message(f"the weights in {hf_dir} do not fit the model in config.json",
                                                problems))
    stall_after, pause_dir = _stall_after(), _pause_dir()

    parent = os.path.dirname(out_dir)
    tmp = ident = live = None
    writing = False  # the Orbax save was entered: a failure may leave a cancelled write finishing
    signals.early = False  # from here on a signal is recorded and acted on where it is safe
    signals.check()
    try:
        try:
            os.makedirs(parent, exist_ok=True)
            tmp, ident = _make_temp_dir(out_dir)
        except OSError as e:
            raise ConversionError(f"cannot create a directory beside OUT_DIR {out_dir}: {e}") from None
        with _LIVE_LOCK:
            _LIVE_TEMP_DIRS.add(tmp)
            live = tmp
        with open(os.path.join(tmp, OWNER_FILE), "w", encoding="utf-8") as f:
            json.dump(_owner_record(out_dir), f, indent=2)
            f.write("\n")
        signals.check()
        nonfinite = _NonFinite()
        lazy = lazy_params(source, chosen, key_paths, expected, nonfinite=nonfinite)
        writing = True
        _write_params(os.path.join(tmp, checkpoint.PARAMS_DIR), lazy, inflight_bytes, progress, stall_after, tmp,
                      signals)
        del lazy
        writing = False
        signals.check()
        _copy_file(os.path.join(hf_dir, "config.json"), os.path.join(tmp, checkpoint.CONFIG_FILE))
        _copy_extra_files(hf_dir, tmp)
        _check_predictor(hf_dir, nonfinite)
        _check_finite(hf_dir, nonfinite, allow_nonfinite, notify)
        _complete_processor_config(hf_dir, tmp, cfg, notify)
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
        signals.check()
        if pause_dir is not None:
            _test_pause(pause_dir, tmp, signals)
        signals.check()  # the last look before the commit
        os.remove(os.path.join(tmp, OWNER_FILE))
        _commit(tmp, out_dir, vetted, notify)
        tmp = None
    except _StopWriting:
        _remove_own(tmp, ident, settle=writing)
        raise Interrupted(signals.signum or signal.SIGINT) from None
    except SourceError as e:
        _remove_own(tmp, ident, settle=writing)
        raise ConversionError(str(e)) from None
    except OSError as e:
        _remove_own(tmp, ident, settle=writing)
        raise ConversionError(f"writing {out_dir} failed: {e}") from None
    except BaseException:
        _remove_own(tmp, ident, settle=writing)
        raise
    finally:
        with _LIVE_LOCK:
            _LIVE_TEMP_DIRS.discard(live)
    if signals.signum is not None:  # came during the commit, which completed
        raise Interrupted(signals.signum, written=True)
    return out_dir


def _check_layer_counts(cfg, source, hf_dir: str) -> None:
    """Every layer has tensors of its own, so a config.json with more layers than the weights hold tensors cannot fit
    them; refused before the abstract model is built (with, say, 10⁵ layers that alone would take many minutes)."""
    text, vision = cfg.text.num_hidden_layers, cfg.vision.num_hidden_layers
    if text + vision > len(source.tensors):
        raise ConversionError(
            f"config.json describes {text} decoder and {vision} vision layers (num_hidden_layers), but the weights in "
            f"{hf_dir} hold only {len(source.tensors)} tensors, and every layer has several of its own")


def _stall_after() -> int | None:
    value = os.environ.get(STALL_ENV)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConversionError(f"{STALL_ENV}={value!r} is not an integer") from None


def _pause_dir() -> str | None:
    value = os.environ.get(PAUSE_ENV)
    if not value:
        return None
    if not os.path.isdir(value):
        raise ConversionError(f"{PAUSE_ENV}={value!r} is not a directory")
    return value


def _test_pause(pause_dir: str, tmp: str, signals: _Signals) -> None:
    """The :data:`PAUSE_ENV` hook: announce the pause in ``pause_dir/paused``, wait for ``pause_dir/resume`` (or a
    signal)."""
    with open(os.path.join(pause_dir, "paused.tmp"), "w", encoding="utf-8") as f:
        f.write(tmp + "\n")
    os.replace(os.path.join(pause_dir, "paused.tmp"), os.path.join(pause_dir, "paused"))
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while not os.path.exists(os.path.join(pause_dir, "resume")):
        signals.check()
        if time.monotonic() > deadline:
            raise ConversionError(f"{PAUSE_ENV}: no 'resume' file in {pause_dir} after {PAUSE_TIMEOUT_S} s")
        time.sleep(0.01)


def _check_finite(hf_dir: str, nonfinite: _NonFinite, allow: bool, notify: Callable[[str], None]) -> None:
    """Refuses (or, with ``allow``, warns about) the tensors :class:`_NonFinite` collected."""
    problems = nonfinite.problems()
    if not problems:
        return
    n = len(problems)
    what = f"{n} tensor{'s' if n != 1 else ''} in {hf_dir} hold{'s' if n == 1 else ''} NaN or inf values"
    if allow:
        notify(_problems_message(f"warning: {what}; converted anyway (--allow-nonfinite)", problems, count=False))
        return
    raise ConversionError(_problems_message(
        f"{what}; a model with them generates nothing useful (pass --allow-nonfinite to convert anyway)",
        problems, count=False))


def _check_predictor(hf_dir: str, nonfinite: _NonFinite) -> None:
    """A DyRate predictor file copied from HF_DIR must be a valid safetensors file; its tensors are checked for
    NaN / inf like the model's (recorded in ``nonfinite`` under ``<file>:<tensor>``).

    Raises:
      ConversionError: the file is not a valid safetensors file.
    """
    path = os.path.join(hf_dir, PREDICTOR_FILE)
    if not os.path.isfile(path):
        return
    try:
        predictor = SafetensorsSource(None, single_file=path)
        for name in sorted(predictor.tensors):
            if predictor.tensors[name].dtype in ST_DTYPE_CODES:
                array = predictor.read(name)
                nonfinite.check(f"{PREDICTOR_FILE}:{name}", array, array)
    except SourceError as e:
        raise ConversionError(f"the DyRate predictor in HF_DIR: {e}") from None


def _complete_processor_config(hf_dir: str, tmp: str, cfg, notify: Callable[[str], None]) -> None:
    """Gives the copied processor_config.json the fields the family's transformers processor needs
    (``Family.processor_fields``; LLaVA: ``patch_size``, ``vision_feature_select_strategy``,
    ``num_additional_image_tokens``) from config.json where they are missing or null; writes one if HF_DIR has
    only a preprocessor_config.json (older and third-party checkpoints). Says so through ``notify``; a value that
    disagrees with config.json is kept and warned about.

    Raises:
      ConversionError: HF_DIR's processor_config.json is not a JSON object.
    """
    from vtp_jax import families

    fields = families.get(cfg.family).processor_fields
    if fields is None:  # the family's processor reads no processor_config.json
        return
    processor_class, want = fields(cfg)
    path = os.path.join(tmp, PROCESSOR_FILE)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise ConversionError(f"{os.path.join(hf_dir, PROCESSOR_FILE)}: unreadable JSON ({e})") from None
        if not isinstance(data, dict):
            raise ConversionError(f"{os.path.join(hf_dir, PROCESSOR_FILE)}: expected a JSON object")
        why = f"{PROCESSOR_FILE} in HF_DIR lacks"
    elif os.path.isfile(os.path.join(hf_dir, IMAGE_PROCESSOR_FILE)):
        data, why = {"processor_class": processor_class}, f"HF_DIR has {IMAGE_PROCESSOR_FILE} but no {PROCESSOR_FILE}:"
    else:
        return  # no image processor at all: vtp-generate says so when it loads the processor
    for key, value in want.items():
        if data.get(key) is not None and data[key] != value:
            notify(f"warning: {PROCESSOR_FILE}: {key} is {data[key]!r}, config.json implies {value!r}; kept "
                   f"{data[key]!r} (the processor may then expand <image> to the wrong number of tokens)")
    filled = {key: value for key, value in want.items() if data.get(key) is None}
    if not filled:
        return
    data.update(filled)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    notify(f"note: {why} {', '.join(filled)}; wrote {', '.join(f'{k}={v!r}' for k, v in filled.items())} "
           f"(from config.json) into the converted {PROCESSOR_FILE}")


def _load_tensor(source, name: str, target: names.Target, spec, transpose_after: bool = False,
                 nonfinite: _NonFinite | None = None):
    """One parameter: source tensor ``name`` → transform → cast to ``spec.dtype`` (→ transposed: a tied head).

    Returns a C-contiguous numpy array of ``spec.shape`` / ``spec.dtype``, after recording it in ``nonfinite`` if it
    holds NaN / inf.

    Raises:
      SourceError: a short read or a tensor whose data disagree with its header.
    """
    array = source.read(name)
    with np.errstate(over="ignore", invalid="ignore"):  # a cast that overflows is reported by ``nonfinite``
        out = names.apply_transform(array, target.transform).astype(spec.dtype, copy=False)
    if nonfinite is not None and not transpose_after:  # a tied head is the embedding again: checked once
        nonfinite.check(name, out, array)
    del array
    if transpose_after:  # tied head: W_head = E^T
        out = np.ascontiguousarray(out.T)
    if out.shape != tuple(spec.shape):  # headers were checked; this guards against lying files
        raise SourceError(f"tensor {name!r} read with shape {list(out.shape)}, header said otherwise")
    return out


def lazy_params(source, chosen: dict[str, names.Target], key_paths: dict, expected: dict, *,
                nonfinite: _NonFinite | None = None) -> dict:
    """The parameter pure dict with :class:`~vtp_jax.checkpoint.LazyArray` leaves; nothing is read yet.

    Each leaf's loader reads its source tensor (``source.read``), applies the layout transform and casts it to the
    expected dtype; leaves are ordered by (file, byte offset) so every file is read front to back. A missing
    ``lm_head.kernel`` (``plan`` allows that only for tied embeddings) is the transposed token embedding, read again.

    Args:
      source: a :mod:`convert.sources` source (``read``, ``order_key``).
      chosen: {HF name: Target} from :func:`plan` (no problems).
      key_paths: {dotted path: key tuple} of the abstract parameters.
      expected: {dotted path: jax.ShapeDtypeStruct}.
      nonfinite: collects tensors holding NaN / inf as they are loaded (None: not checked).
    """
    from vtp_jax.checkpoint import LazyArray

    tree: dict = {}
    by_path = {}
    for name, target in chosen.items():
        spec = expected[target.path]
        by_path[target.path] = name
        load = functools.partial(_load_tensor, source, name, target, spec, nonfinite=nonfinite)
        _set(tree, key_paths[target.path], LazyArray(spec.shape, spec.dtype, load, order=(*source.order_key(name), 0)))
    if "lm_head.kernel" not in by_path:
        name = by_path["language_model.embed_tokens.embedding"]
        spec = expected["lm_head.kernel"]
        load = functools.partial(_load_tensor, source, name, chosen[name], spec, transpose_after=True,
                                 nonfinite=nonfinite)
        _set(tree, key_paths["lm_head.kernel"], LazyArray(spec.shape, spec.dtype, load,
                                                          order=(*source.order_key(name), 1)))
    return tree


def _write_params(path: str, lazy: dict, inflight_bytes: int, progress: bool, stall_after: int | None,
                  tmp: str, signals: _Signals | None = None) -> None:
    """Streams ``lazy`` into an Orbax checkpoint at ``path`` with a tqdm bar over tensors.

    Raises _StopWriting from the write callback once ``signals`` recorded a signal: one exception, raised in the
    writer's own loop (not in a load task), so Orbax's error path cancels and collects every pending task. The
    stall hook (:data:`STALL_ENV`) waits there until the process is killed or interrupted.
    """
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
                while signals is None or signals.signum is None:
                    time.sleep(0.02)
            if signals is not None:
                signals.check_writer()

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
