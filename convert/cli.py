"""``vtp-convert HF_DIR OUT_DIR [--dtype float32|bfloat16] [--force] [--allow-pickle] [--allow-nonfinite]
[--max-inflight-mb N]``.

Exit codes: 0 on success; 2 on any :class:`~convert.core.ConversionError` or bad arguments, with a one-line
(or short multi-line) ``vtp-convert: error: <problem>`` on stderr and no traceback; 130 (SIGINT) / 143 (SIGTERM)
with ``vtp-convert: interrupted, nothing was written`` when a signal stopped the conversion (its temporary
directory is removed; see :mod:`convert.core`).

Memory: tensors are streamed (see :mod:`convert.core`); peak memory is about ``--max-inflight-mb`` plus the
largest tensor and its transient copies. The command (not an in-process ``main([...])`` call) also sets glibc's
mmap threshold to 1 MiB and its arena count to 2, so tensor-sized buffers go back to the system when freed and the
writer threads' small buffers do not fragment one heap per thread (measured on 2 vs 10 decoder layers of 370 MB
float32: without them the peak crept up by 35 MB, with them by about 15 MB).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import signal
import sys

from convert.core import INFLIGHT_BYTES
from vtp_jax.argtypes import POSITIVE

PROG = "vtp-convert"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Convert a Hugging Face LLaVA checkpoint directory (config.json + safetensors) into a "
        "vtp_jax directory (config.json, vtp_jax.json, Orbax params/, tokenizer and processor files).",
    )
    p.add_argument("hf_dir", metavar="HF_DIR", help="Hugging Face model directory")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output directory (must not exist unless --force)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="parameter dtype")
    p.add_argument("--force", action="store_true", help="replace an existing converted OUT_DIR")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept pickled pytorch_model.bin weights (loaded with torch.load(weights_only=True))",
    )
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="convert tensors that hold NaN or inf values (refused by default; listed as a warning)",
    )
    p.add_argument(
        "--max-inflight-mb",
        type=POSITIVE,
        default=INFLIGHT_BYTES >> 20,
        metavar="N",
        help="MiB of loaded tensors that may wait for their write at once (default %(default)s; peak memory is "
        "about this plus the largest tensor)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _return_big_buffers_to_the_system(threshold: int = 1 << 20, arenas: int = 2) -> bool:
    """glibc ``mallopt``: ``M_MMAP_THRESHOLD`` = ``threshold`` (allocations of at least that many bytes get their own
    mapping, unmapped on free; a fixed threshold also stops glibc from raising it after frees) and ``M_ARENA_MAX`` =
    ``arenas`` (the writer threads' small buffers share few heaps instead of fragmenting one heap per thread).
    Returns whether both were set; a no-op (False) on other C libraries."""
    M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold)) & bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError, TypeError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Runs the converter; returns the exit code (argparse usage errors also return 2 instead of exiting).

    ``argv`` None means the real command line (``sys.argv[1:]``); only then is the process-wide malloc setting
    (module docstring) applied, and SIGINT / SIGTERM handled from this point on: until the conversion starts
    writing, a signal prints "interrupted, nothing was written" and ends the process at once; while it writes,
    :func:`convert.core.convert` stops at the next safe point, removes its temporary directory and raises
    :class:`~convert.core.Interrupted`; once OUT_DIR is complete a signal just ends the process. (Before ``main``
    runs — Python's start, the import of this module — a signal has its default effect; nothing has been written
    then.) Calling ``main([...])`` from other code leaves that process's allocator and handlers alone;
    :func:`convert.core.convert` still handles signals while it runs in the main thread.

    Exit codes: 0 written; 2 error (usage or :class:`~convert.core.ConversionError`); 128 + signal number
    (130 SIGINT, 143 SIGTERM) interrupted.
    """
    previous: dict = {}
    if argv is None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _exit_before_writing)  # until convert() takes over
    try:
        return _run(argv, previous)
    except KeyboardInterrupt as e:  # convert.core.Interrupted (SIGINT / SIGTERM), or a Ctrl-C outside convert()
        signum = int(getattr(e, "signum", signal.SIGINT))
        name = signal.Signals(signum).name
        if getattr(e, "written", False):
            print(f"{PROG}: interrupted ({name}) after OUT_DIR was complete", file=sys.stderr)
        else:
            print(f"{PROG}: interrupted, nothing was written ({name})", file=sys.stderr)
        return 128 + signum
    finally:
        _restore(previous)


def _restore(previous: dict) -> None:
    """Puts back the signal handlers ``main`` replaced (and forgets them)."""
    for sig, handler in previous.items():
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    previous.clear()


def _run(argv: list[str] | None, previous: dict) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage error (2) or --help (0); argparse has printed its message
        return int(e.code or 0)
    from convert.core import ConversionError, convert

    if argv is None:
        _return_big_buffers_to_the_system()
    try:
        out = convert(
            args.hf_dir,
            args.out_dir,
            dtype=args.dtype,
            force=args.force,
            allow_pickle=args.allow_pickle,
            allow_nonfinite=args.allow_nonfinite,
            progress=not args.no_progress,
            inflight_bytes=args.max_inflight_mb << 20,
            on_early_signal=_exit_before_writing if argv is None else None,
        )
    except ConversionError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if previous:  # the command line: OUT_DIR is complete, so a signal from now on just ends the process
        for sig in previous:
            signal.signal(sig, _exit_at_once)
        previous.clear()
    print(f"{PROG}: wrote {out}", file=sys.stderr)
    return 0


def _exit_before_writing(signum: int, frame=None) -> None:
    """:func:`convert.core.convert`'s ``on_early_signal`` for the command line: a signal before anything was written
    (config, weight headers, the abstract model) says so and ends the process at once with 128 + signum, without
    unwinding through whatever runs then (a native import, a long model build)."""
    print(f"{PROG}: interrupted, nothing was written ({signal.Signals(signum).name})", file=sys.stderr)
    _exit_at_once(signum, None)


def _exit_at_once(signum, frame) -> None:
    """A signal after a successful conversion (OUT_DIR complete, said or about to be said) ends the process at once
    with 128 + signum, without running the exit handlers (jax's, which a KeyboardInterrupt would interrupt with a
    traceback)."""
    sys.stderr.flush()
    os._exit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
