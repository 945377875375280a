"""Weight sources in a Hugging Face directory: what tensors there are, and reading them one at a time.

Supported layouts, in order of preference:

* ``model.safetensors.index.json`` + the shards it names (every shard must lie inside HF_DIR),
* ``model.safetensors``,
* ``pytorch_model.bin.index.json`` / ``pytorch_model.bin`` (pickle; only with ``allow_pickle=True``, then loaded
  with ``torch.load(weights_only=True)``; torch is imported only there).

safetensors headers are validated with ``safe_open(..., framework="numpy")``; tensor data is then read with plain
``readinto`` calls straight from the file into a fresh numpy array (bfloat16 as ``ml_dtypes.bfloat16``), one tensor
at a time. No file is memory-mapped while tensors are read: the pages of a mapped multi-GB shard would count toward
the converter's resident memory until the mapping is closed, so reading ``k`` tensors would cost their sum, not
their maximum. Pickled weights are the exception (``torch.load(mmap=True)``; see :class:`PickleSource`).
Every problem raises :class:`SourceError` (turned into a ConversionError by the caller).
"""

from __future__ import annotations

import functools
import json
import os
import struct
import zipfile
from typing import Iterator, NamedTuple

import numpy as np

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_FILE = "pytorch_model.bin"

# safetensors dtype codes of the floating types (anything else is rejected by the planner)
ST_DTYPE_CODES = ("F64", "F32", "F16", "BF16")


@functools.cache
def _st_dtypes() -> dict[str, np.dtype]:
    """safetensors dtype code → numpy dtype (bfloat16 as ``ml_dtypes.bfloat16``). ml_dtypes is imported here, on
    first use, not with this module: it takes half a second, and ``vtp-convert`` installs its signal handlers only
    once its modules are imported."""
    import ml_dtypes

    return {"F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
            "BF16": np.dtype(ml_dtypes.bfloat16)}


def __getattr__(name: str):
    if name == "ST_DTYPES":  # the mapping, for callers that want it (built on first use)
        return _st_dtypes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class SourceError(Exception):
    """A weight file or index that cannot be used (missing, truncated, outside HF_DIR, pickle refused…)."""


class TensorInfo(NamedTuple):
    """One source tensor: its file, shape and safetensors-style dtype code ("F32", "BF16", "I64"…)."""

    file: str
    shape: tuple[int, ...]
    dtype: str


def _inside(root: str, name: str) -> str:
    """``root/name`` if ``name`` stays lexically inside ``root`` (symlinked shards, as in the HF cache, are fine)."""
    if not isinstance(name, str) or not name or os.path.isabs(name):
        raise SourceError(f"names the file {name!r}, which is not a relative path inside {root}")
    path = os.path.normpath(os.path.join(root, name))
    if os.path.commonpath([root, path]) != root or path == root:
        raise SourceError(f"names the file {name!r}, which lies outside {root}; refusing to read it")
    return path


def _read_index(hf_dir: str, index_name: str) -> dict[str, str]:
    """{tensor name: absolute file path} from an HF ``*.index.json``."""
    index_path = os.path.join(hf_dir, index_name)
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SourceError(f"{index_name}: unreadable index ({type(e).__name__}: {e})") from None
    bad = sorted(name for name, fname in weight_map.items() if not isinstance(fname, str))
    if bad:
        raise SourceError(f"{index_name}: weight_map gives tensor {bad[0]!r} the file {weight_map[bad[0]]!r}, "
                          "which is not a file name")
    files = {}
    for fname in sorted(set(weight_map.values())):
        try:
            files[fname] = _inside(hf_dir, fname)
        except SourceError as e:
            raise SourceError(f"{index_name} {e}") from None
        if not os.path.isfile(files[fname]):
            raise SourceError(f"{index_name} names the shard {fname!r}, which does not exist in {hf_dir}")
    return {name: files[fname] for name, fname in weight_map.items()}


class SafetensorsSource:
    """Tensors of one or more safetensors files, read lazily one tensor at a time."""

    def __init__(self, files_by_name: dict[str, str] | None, single_file: str | None = None):
        from safetensors import safe_open

        self.tensors: dict[str, TensorInfo] = {}
        self._spans: dict[tuple[str, str], tuple[int, int]] = {}  # (file, name) → (absolute offset, byte count)
        files = sorted(set(files_by_name.values())) if files_by_name is not None else [single_file]
        present: dict[str, dict[str, TensorInfo]] = {}
        for path in files:
            present[path] = {}
            try:
                with safe_open(path, framework="numpy") as f:
                    for key in f.keys():
                        sl = f.get_slice(key)
                        present[path][key] = TensorInfo(path, tuple(int(s) for s in sl.get_shape()), sl.get_dtype())
            except Exception as e:  # noqa: BLE001 — safetensors raises its own error types
                raise SourceError(f"{os.path.basename(path)}: not a valid safetensors file ({e})") from None
            data_start, header = _header(path)
            for key in present[path]:
                try:
                    begin, end = (int(x) for x in header[key]["data_offsets"])
                except (KeyError, TypeError, ValueError):
                    raise SourceError(f"{os.path.basename(path)}: bad header entry for tensor {key!r}") from None
                self._spans[path, key] = (data_start + begin, end - begin)
        if files_by_name is None:
            self.tensors = present[single_file]
            return
        for name, path in files_by_name.items():
            if name not in present[path]:
                raise SourceError(
                    f"{SAFETENSORS_INDEX} lists tensor {name!r} in {os.path.basename(path)!r}, which lacks it"
                )
            self.tensors[name] = present[path][name]

    def order_key(self, name: str) -> tuple[str, int]:
        """(file, byte offset) of tensor ``name``: sorting by it reads every file front to back."""
        info = self.tensors[name]
        return info.file, self._spans[info.file, name][0]

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a fresh, writable, C-contiguous numpy array of its stored dtype and shape.

        Reads ``nbytes`` with ``readinto`` (no memory map, no intermediate ``bytes``), so the only memory used is
        the returned array.

        Raises:
          SourceError: the file is shorter than its header says, or cannot be read.
        """
        info = self.tensors[name]
        start, nbytes = self._spans[info.file, name]
        return _read_into(info.file, name, start, nbytes, _st_dtypes()[info.dtype], info.shape)

    def iter_arrays(self, names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        """Yields (name, array) for ``names`` in the given order, one tensor in memory at a time (see :meth:`read`)."""
        for name in names:
            yield name, self.read(name)


def _header(path: str) -> tuple[int, dict]:
    """(absolute offset of the data section, header dict) of a safetensors file.

    Raises:
      SourceError: the file is too short or its header is not a JSON object.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise SourceError(f"{os.path.basename(path)}: not a valid safetensors file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", head)
            raw = f.read(header_len)
    except OSError as e:
        raise SourceError(f"{os.path.basename(path)}: cannot be read ({e})") from None
    if len(raw) != header_len:
        raise SourceError(f"{os.path.basename(path)}: not a valid safetensors file (truncated header)")
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise SourceError(f"{os.path.basename(path)}: not a valid safetensors file (header: {e})") from None
    if not isinstance(header, dict):
        raise SourceError(f"{os.path.basename(path)}: not a valid safetensors file (header is not an object)")
    return 8 + header_len, header


def _read_into(path: str, name: str, start: int, nbytes: int, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """``nbytes`` little-endian bytes at absolute offset ``start`` of ``path`` as a fresh array (dtype, shape)."""
    out = np.empty(shape, dtype=np.dtype(dtype).newbyteorder("<"))
    if out.nbytes != nbytes:
        raise SourceError(
            f"{os.path.basename(path)}: tensor {name!r} spans {nbytes} bytes, but shape {list(shape)} of "
            f"{np.dtype(dtype).name} needs {out.nbytes}"
        )
    view = memoryview(out.reshape(-1).view(np.uint8))
    try:
        with open(path, "rb", buffering=0) as f:
            f.seek(start)
            done = 0
            while done < nbytes:
                n = f.readinto(view[done:])
                if not n:
                    break
                done += n
    except OSError as e:
        raise SourceError(f"{os.path.basename(path)}: reading tensor {name!r} failed ({e})") from None
    if done != nbytes:
        raise SourceError(f"{os.path.basename(path)}: truncated data for tensor {name!r}")
    return out if out.dtype == np.dtype(dtype) else out.astype(dtype)


def read_raw(path: str, name: str) -> np.ndarray:
    """Reads one tensor's bytes straight from a safetensors file (little-endian, row-major) into a fresh array.

    Returns an array of the tensor's stored shape and dtype (``ml_dtypes.bfloat16`` for BF16).

    Raises:
      SourceError: the tensor is absent, its dtype is not a float type, or the file is short.
    """
    data_start, header = _header(path)
    if name not in header or name == "__metadata__":
        raise SourceError(f"{os.path.basename(path)}: no tensor {name!r}")
    info = header[name]
    if info["dtype"] not in ST_DTYPE_CODES:
        raise SourceError(f"{os.path.basename(path)}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    return _read_into(path, name, data_start + start, end - start, _st_dtypes()[info["dtype"]],
                      tuple(info["shape"]))


_TORCH_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def torch_file_format(path: str) -> str:
    """"zip" (``torch.save``'s format since PyTorch 1.6: a zip archive holding ``data.pkl``) or "legacy" (a bare
    pickle, older PyTorch), judged from the file's first bytes / zip directory without importing torch.

    Raises:
      SourceError: the file cannot be read, or is neither (random bytes, a truncated archive, another zip file):
        "not a PyTorch checkpoint".
    """
    base = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        is_zip = zipfile.is_zipfile(path)
    except OSError as e:
        raise SourceError(f"{base}: cannot be read ({e})") from None
    if is_zip:
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise SourceError(f"{base}: not a PyTorch checkpoint (a damaged zip archive: {e})") from None
        if not any(m == "data.pkl" or m.endswith("/data.pkl") for m in members):
            raise SourceError(f"{base}: not a PyTorch checkpoint (a zip archive without the data.pkl that "
                              "torch.save writes)")
        return "zip"
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return "legacy"
    raise SourceError(f"{base}: not a PyTorch checkpoint (neither the zip archive torch.save writes nor a "
                      "legacy pickle; truncated, or another kind of file)")


class PickleSource:
    """``pytorch_model.bin`` (single or sharded), loaded with ``torch.load(weights_only=True)`` — memory-mapped
    for the zip format, read whole for the legacy one (which cannot be mapped)."""

    def __init__(self, files: list[str]):
        formats = {path: torch_file_format(path) for path in files}  # before torch is imported: a clear message
        import torch  # the only torch import of the converter: pickles need it

        self._torch = torch
        self._state: dict = {}
        self._position: dict[str, int] = {}
        self.tensors: dict[str, TensorInfo] = {}
        for path in files:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=formats[path] == "zip")
            except Exception as e:  # noqa: BLE001 — torch raises many types for bad pickles
                why = f"{type(e).__name__}: {e}"
                raise SourceError(f"{os.path.basename(path)}: cannot be loaded safely ({why})") from None
            if not isinstance(state, dict):
                raise SourceError(f"{os.path.basename(path)}: holds a {type(state).__name__}, not a state dict")
            for name, t in state.items():
                if not isinstance(t, torch.Tensor):
                    raise SourceError(f"{os.path.basename(path)}: entry {name!r} is not a tensor")
                code = _TORCH_DTYPES.get(str(t.dtype).removeprefix("torch."), str(t.dtype))
                self.tensors[name] = TensorInfo(path, tuple(t.shape), code)
                self._state[name] = t
                self._position[name] = len(self._position)

    def order_key(self, name: str) -> tuple[str, int]:
        """(file, position in that file's state dict): the order the pickles were written in."""
        return self.tensors[name].file, self._position[name]

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a numpy array of its stored dtype and shape (bfloat16 as ``ml_dtypes.bfloat16``).

        The state dicts stay memory-mapped for the whole conversion, so pages read here stay resident until the
        source is dropped: pickled checkpoints are not held to the streaming memory bound of safetensors.
        """
        t = self._state[name].detach().contiguous()
        if t.dtype == self._torch.bfloat16:
            return t.view(self._torch.int16).numpy().view(_st_dtypes()["BF16"])
        return t.numpy()

    def iter_arrays(self, names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        """Yields (name, array) for ``names`` in the given order (see :meth:`read`)."""
        for name in names:
            yield name, self.read(name)


def open_source(hf_dir: str, *, allow_pickle: bool):
    """The weight source of ``hf_dir`` (see module docstring for the order of preference).

    Raises:
      SourceError: no weights, a bad index or file, or pickled weights without ``allow_pickle``.
    """
    if os.path.exists(os.path.join(hf_dir, SAFETENSORS_INDEX)):
        return SafetensorsSource(_read_index(hf_dir, SAFETENSORS_INDEX))
    if os.path.exists(os.path.join(hf_dir, SAFETENSORS_FILE)):
        path = os.path.join(hf_dir, SAFETENSORS_FILE)
        return SafetensorsSource(None, single_file=path)
    pickles = None
    if os.path.exists(os.path.join(hf_dir, PICKLE_INDEX)):
        pickles = PICKLE_INDEX
    elif os.path.exists(os.path.join(hf_dir, PICKLE_FILE)):
        pickles = PICKLE_FILE
    if pickles is None:
        raise SourceError(
            f"no weights found in {hf_dir}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or {PICKLE_FILE}"
        )
    if not allow_pickle:
        raise SourceError(
            f"{hf_dir} holds pickled PyTorch weights ({pickles}); unpickling can run arbitrary code, so it is "
            "refused. Convert them to safetensors, or pass --allow-pickle to load them with "
            "torch.load(weights_only=True)"
        )
    if pickles == PICKLE_INDEX:
        files = sorted(set(_read_index(hf_dir, PICKLE_INDEX).values()))
    else:
        files = [os.path.join(hf_dir, PICKLE_FILE)]
    return PickleSource(files)
