"""Output paths checked before any work: every front end that writes a file or a folder (vtp-eval ``--out`` /
``--json``, vtp-train-dyrate ``--out``, vtp-train-testbed ``--out``) asks here first, so a run never trains or
evaluates for minutes and then fails at the write.

Writability is tried for real, with a temporary file that is removed at once: permission bits alone do not tell
(root ignores them, read-only mounts do not show in them). Nothing is left behind.
"""

from __future__ import annotations

import os
import tempfile


class OutputPathError(ValueError):
    """An output path that cannot be written; the message names the flag and the path."""


def probe_writable(flag: str, folder: str) -> None:
    """Creates and removes a temporary file in ``folder``. Raises OutputPathError naming ``flag`` on failure."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".vtp-probe-", dir=folder)
    except OSError as e:
        raise OutputPathError(f"{flag}: cannot write into {folder}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(flag: str, path: str) -> None:
    """``path`` can be written as a file: its folder exists and takes a new file, ``path`` is not a folder (an
    existing file must be writable). Raises OutputPathError."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OutputPathError(f"{flag}: folder {parent} does not exist")
    if os.path.isdir(path):
        raise OutputPathError(f"{flag}: {path} is a folder")
    if os.path.lexists(path) and not (os.path.isfile(path) and os.access(path, os.W_OK)):
        raise OutputPathError(f"{flag}: {path} exists and cannot be overwritten")
    probe_writable(flag, parent)


def check_output_dir(flag: str, path: str) -> str:
    """``path`` can be created (or written into) as a folder: it is not an existing non-folder, and its nearest
    existing folder (``path`` itself, or the parent it would be created in) takes a new file. Returns the absolute
    path. Raises OutputPathError."""
    out = os.path.abspath(path)
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputPathError(f"{flag}: {path} exists and is not a folder")
    existing = out
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputPathError(f"{flag}: cannot create {path}: {existing} is not a folder")
    probe_writable(flag, existing)
    return out
