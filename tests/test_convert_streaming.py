"""The streaming ``vtp-convert``: same checkpoint as the old in-memory converter, cleanup after a SIGKILL, and a peak
memory that does not grow with the model.

(a) Every restored leaf — bytes, shape and dtype — equals what the old converter wrote (kept below as
    :func:`old_converter_params`: the whole dict in memory, read with ``safetensors.safe_open``, saved with Orbax
    ``StandardSave``), for both shipped testbeds in float32 and bfloat16, a sharded ``save_pretrained`` fixture and a
    sharded bf16 checkpoint with tied embeddings; ``_METADATA`` is identical too.
(b) A conversion stopped by the ``VTP_CONVERT_TEST_STALL_AFTER`` hook and SIGKILLed leaves its marked temporary
    directory; the next run of the same command removes it and succeeds. Look-alike directories that are not
    provably ours are named and left alone.
(c) Two random checkpoints that differ only in their number of decoder layers peak at nearly the same RSS.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest
from safetensors import safe_open

from convert import core
from vtp_jax.families import tensor_names as names
from convert.cli import main
from convert.sources import open_source
from vtp_jax import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTBEDS = os.path.join(REPO, "testbed_models")


# --- the old converter, as a reference ------------------------------------------------------------


def old_converter_params(hf_dir: str, dtype: str, params_dir: str) -> None:
    """What ``convert`` wrote to OUT_DIR/params before it streamed: every tensor read with ``safe_open`` into one
    dict of numpy arrays (transform, then ``astype(dtype, copy=False)``; a tied head is ``E.T`` contiguous), saved
    with ``checkpoint.save_params`` (Orbax StandardSave)."""
    _, cfg = core._read_config(hf_dir)
    abstract = checkpoint.abstract_params(cfg, dtype)
    key_paths = core._key_paths(abstract)
    expected = {path: core._leaf(abstract, keys) for path, keys in key_paths.items()}
    source = open_source(hf_dir, allow_pickle=False)  # headers only: the data are read with safe_open below
    chosen, problems = core.plan(source.tensors, expected, cfg.text.tie_word_embeddings, cfg.family)
    assert not problems, problems
    by_file: dict[str, list[str]] = {}
    for name in chosen:
        by_file.setdefault(source.tensors[name].file, []).append(name)
    params: dict = {}
    for path, file_names in by_file.items():
        with safe_open(path, framework="numpy") as f:
            for name in file_names:
                target = chosen[name]
                spec = expected[target.path]
                out = names.apply_transform(f.get_tensor(name), target.transform).astype(spec.dtype, copy=False)
                core._set(params, key_paths[target.path], out)
    if "lm_head.kernel" not in {t.path for t in chosen.values()}:
        embedding = core._leaf(params, key_paths["language_model.embed_tokens.embedding"])
        core._set(params, key_paths["lm_head.kernel"], np.ascontiguousarray(embedding.T))
    checkpoint.save_params(params_dir, params)


def restore_exactly(params_dir: str, like: str) -> dict:
    """{dotted path: numpy array} restored as :func:`vtp_jax.checkpoint.load` does (StandardRestore into a
    ShapeDtypeStruct target on one device, in the stored dtype), the target built from ``like``'s metadata."""
    import orbax.checkpoint as ocp

    ckpt = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    meta = ckpt.metadata(like).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta.tree)
    restored = ckpt.restore(params_dir, args=ocp.args.StandardRestore(target))
    return {path: np.asarray(leaf) for path, leaf in checkpoint.flatten(restored).items()}


def assert_same_checkpoint(new_params: str, old_params: str) -> None:
    new, old = restore_exactly(new_params, old_params), restore_exactly(old_params, old_params)
    assert sorted(new) == sorted(old)
    for path in old:
        assert new[path].dtype == old[path].dtype, path
        assert new[path].shape == old[path].shape, path
        assert new[path].tobytes() == old[path].tobytes(), path
    with open(os.path.join(new_params, "_METADATA")) as a, open(os.path.join(old_params, "_METADATA")) as b:
        assert json.load(a) == json.load(b)
    for d in (new_params, old_params):
        with open(os.path.join(d, "_CHECKPOINT_METADATA")) as f:
            assert json.load(f)["item_handlers"].endswith("StandardCheckpointHandler"), d


def convert_both(hf_dir, root, dtype: str) -> tuple[str, str]:
    out = os.path.join(root, f"new-{dtype}")
    core.convert(hf_dir, out, dtype=dtype, progress=False, inflight_bytes=64 << 10)  # small: many rounds
    old = os.path.join(root, f"old-{dtype}-params")
    old_converter_params(str(hf_dir), dtype, old)
    return os.path.join(out, checkpoint.PARAMS_DIR), old


# --- (a) bit-identical ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("testbed", ["llava_shapes", "llada_v_shapes"])
def test_testbeds_bit_identical_to_old_converter(testbed, dtype, tmp_path):
    new, old = convert_both(os.path.join(TESTBEDS, testbed), tmp_path, dtype)
    assert_same_checkpoint(new, old)
    model, _, meta = checkpoint.load(os.path.dirname(new))  # the unchanged loader, straight into the stored dtype
    assert meta["dtype"] == dtype and model.lm_head.kernel.dtype == np.dtype(checkpoint.DTYPES[dtype])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sharded_save_pretrained_bit_identical(converted_llava, dtype, tmp_path):
    conv = converted_llava(shard_bytes=60_000, dtype=dtype)
    assert os.path.exists(os.path.join(conv.hf_dir, "model.safetensors.index.json"))
    old = str(tmp_path / "old-params")
    old_converter_params(conv.hf_dir, dtype, old)
    assert_same_checkpoint(os.path.join(conv.out_dir, checkpoint.PARAMS_DIR), old)


def test_sharded_bf16_tied_embeddings_bit_identical(tmp_path):
    from vtp_jax.testbed import hf_llava

    config = hf_llava.tiny_llava_config(image_size=32, patch_size=16, vocab_size=300, tie_word_embeddings=True)
    hf_dir = tmp_path / "hf"
    hf_llava.write_random_llava(hf_dir, config, dtype="bfloat16", max_shard_bytes=30_000)
    with open(hf_dir / "model.safetensors.index.json") as f:
        weight_map = json.load(f)["weight_map"]
    assert len(set(weight_map.values())) > 2 and not any("lm_head" in k for k in weight_map)
    for dtype in ("bfloat16", "float32"):
        new, old = convert_both(hf_dir, tmp_path, dtype)
        assert_same_checkpoint(new, old)
    kernel = restore_exactly(new, old)["lm_head.kernel"]
    embedding = restore_exactly(new, old)["language_model.embed_tokens.embedding"]
    np.testing.assert_array_equal(kernel, embedding.T)


def test_source_reader_matches_safe_open_without_mapping_files():
    """sources.SafetensorsSource.read: the bytes safe_open gives, in a fresh writable array."""
    path = os.path.join(TESTBEDS, "llava_shapes", "model.safetensors")
    source = open_source(os.path.dirname(path), allow_pickle=False)
    order = sorted(source.tensors, key=source.order_key)
    with safe_open(path, framework="numpy") as f:
        for name in order[:: max(1, len(order) // 12)]:
            got, want = source.read(name), f.get_tensor(name)
            assert got.dtype == want.dtype and got.shape == want.shape and got.flags.writeable
            assert got.tobytes() == want.tobytes(), name


# --- (b) a killed conversion ----------------------------------------------------------------------


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != core.STALL_ENV}
    return {**env, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]), **extra}


def _temp_dirs(parent, out_name: str) -> list[str]:
    return sorted(p for p in os.listdir(parent) if p.startswith(f".{out_name}.tmp-"))


def test_killed_conversion_is_removed_by_the_next_run(tmp_path):
    hf_dir, out = os.path.join(TESTBEDS, "llava_shapes"), tmp_path / "out"
    cmd = [sys.executable, "-m", "convert.cli", hf_dir, str(out), "--no-progress", "--dtype", "bfloat16"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=_env(**{core.STALL_ENV: "7"}))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    seen = []
    try:
        while not any("test stall after" in line for line in seen):
            seen.append(lines.get(timeout=120))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    left = _temp_dirs(tmp_path, "out")
    assert len(left) == 1 and not out.exists(), (left, seen)
    with open(tmp_path / left[0] / core.OWNER_FILE) as f:
        owner = json.load(f)
    assert owner["target"] == str(out) and owner["pid"] == proc.pid
    assert os.path.isdir(tmp_path / left[0] / "params.orbax-checkpoint-tmp")  # Orbax's own, half written

    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"removed {tmp_path / left[0]}" in res.stderr and f"pid {proc.pid}" in res.stderr
    assert _temp_dirs(tmp_path, "out") == [] and not (out / core.OWNER_FILE).exists()
    old = str(tmp_path / "old-params")
    old_converter_params(hf_dir, "bfloat16", old)
    assert_same_checkpoint(str(out / checkpoint.PARAMS_DIR), old)


def _fake_temp_dir(parent, name: str, **owner) -> str:
    path = os.path.join(parent, name)
    os.makedirs(os.path.join(path, "params"))
    if owner:
        with open(os.path.join(path, core.OWNER_FILE), "w") as f:
            json.dump({"tool": core.OWNER_TOOL, "host": socket.gethostname(), **owner}, f)
    return path


def test_only_provably_stale_temp_dirs_are_removed(tmp_path, capsys):
    hf_dir, out = os.path.join(TESTBEDS, "llava_shapes"), str(tmp_path / "out")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
        stale = _fake_temp_dir(tmp_path, ".out.tmp-stale", target=out, pid=int(dead.stdout))
        recycled = _fake_temp_dir(tmp_path, ".out.tmp-recycled", target=out, pid=os.getpid(),
                                  process_start="0")  # our own pid: the writer is certainly gone
        keep = {
            "no marker": _fake_temp_dir(tmp_path, ".out.tmp-nomarker"),
            "other target": _fake_temp_dir(tmp_path, ".out.tmp-other", target=out + "2", pid=int(dead.stdout)),
            "other host": _fake_temp_dir(tmp_path, ".out.tmp-host", target=out, pid=int(dead.stdout),
                                         host="elsewhere.invalid"),
            "live process": _fake_temp_dir(tmp_path, ".out.tmp-live", target=out, pid=sleeper.pid,
                                           process_start=core._process_start(sleeper.pid)),
            "old": _fake_temp_dir(tmp_path, ".out.old-abc"),
        }
        linked = _fake_temp_dir(tmp_path, "real-dir", target=out, pid=int(dead.stdout))
        os.symlink(linked, tmp_path / ".out.tmp-link")
        (tmp_path / ".out.tmp-file").write_text("a file, not a directory")
        (tmp_path / ".outer.tmp-x").mkdir()  # another OUT_DIR's name

        rc = main([hf_dir, out, "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 0, err
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not os.path.exists(stale) and not os.path.exists(recycled)
    assert f"removed {stale}" in err and f"removed {recycled}" in err
    for why, path in keep.items():
        assert os.path.isdir(os.path.join(path, "params")), why
        assert f"left {path} alone" in err, (why, err)
    assert "still running" in err and "elsewhere.invalid" in err and "--force" in err
    assert os.path.isdir(os.path.join(linked, "params")) and os.path.islink(tmp_path / ".out.tmp-link")
    assert (tmp_path / ".out.tmp-file").read_text() == "a file, not a directory"
    assert (tmp_path / ".outer.tmp-x").is_dir() and ".outer.tmp-x" not in err
    assert os.path.isdir(os.path.join(out, "params")) and not os.path.exists(os.path.join(out, core.OWNER_FILE))


def test_failed_load_mid_stream_leaves_nothing(tmp_path, capsys, monkeypatch):
    """A tensor that cannot be read mid-way (here: the file shrinks after its header was read) is a clean
    ConversionError naming it, with neither OUT_DIR nor a temporary directory left."""
    hf_dir = tmp_path / "hf"
    shutil.copytree(os.path.join(TESTBEDS, "llava_shapes"), hf_dir)
    from convert import sources

    original = sources._read_into
    calls = []

    def flaky(path, name, start, nbytes, dtype, shape):
        calls.append(name)
        if len(calls) == 10:
            raise sources.SourceError(f"{os.path.basename(path)}: truncated data for tensor {name!r}")
        return original(path, name, start, nbytes, dtype, shape)

    monkeypatch.setattr(sources, "_read_into", flaky)
    rc = main([str(hf_dir), str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "truncated data for tensor" in err and calls[9] in err
    assert "Traceback" not in err
    assert [p for p in os.listdir(tmp_path) if p != "hf"] == []


# --- (c) peak memory independent of the number of layers ------------------------------------------

MEMORY_WIDTHS = dict(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, vision_heads=2,
                     vision_mlp=64, text_hidden=1024, text_heads=8, text_kv_heads=8, text_mlp=2816, vocab_size=512)


@pytest.fixture(scope="module")
def layer_pair(tmp_path_factory):
    """Two float32 checkpoints (100 MB shards) that differ only in their decoder layers: 2 and 8 (~94 / ~370 MB)."""
    from vtp_jax.testbed import hf_llava

    root = tmp_path_factory.mktemp("layers")
    dirs = {}
    for layers in (2, 8):
        config = hf_llava.tiny_llava_config(text_layers=layers, **MEMORY_WIDTHS)
        dirs[layers] = root / f"hf{layers}"
        hf_llava.write_random_llava(dirs[layers], config, max_shard_bytes=100_000_000)
    yield dirs
    shutil.rmtree(root, ignore_errors=True)


def _weights_bytes(hf_dir) -> int:
    with open(os.path.join(hf_dir, "model.safetensors.index.json")) as f:
        return int(json.load(f)["metadata"]["total_size"])


def _peak_rss_of_command(args: list[str]) -> int:
    """Peak RSS (bytes) of ``vtp-convert ARGS`` run as the only child of a fresh process (its RUSAGE_CHILDREN)."""
    script = ("import resource, subprocess, sys; "
              "rc = subprocess.run([sys.executable, '-m', 'convert.cli', *sys.argv[1:]]).returncode; "
              "assert rc == 0, rc; print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    res = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=_env(),
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return int(res.stdout.split()[-1]) * 1024  # Linux reports KiB


def test_peak_memory_does_not_grow_with_the_number_of_layers(layer_pair, tmp_path):
    peaks = {}
    for layers, hf_dir in layer_pair.items():
        peaks[layers] = _peak_rss_of_command(
            [str(hf_dir), str(tmp_path / f"out{layers}"), "--no-progress", "--max-inflight-mb", "16"])
    extra_weights = _weights_bytes(layer_pair[8]) - _weights_bytes(layer_pair[2])
    assert extra_weights > 250e6
    # The old converter held every tensor (twice, with Orbax's copy): its peak grew by ≥ extra_weights.
    grew = peaks[8] - peaks[2]
    assert grew < 0.2 * extra_weights, (peaks, extra_weights)
    got = restore_exactly(str(tmp_path / "out8" / checkpoint.PARAMS_DIR), str(tmp_path / "out8" / "params"))
    assert len([p for p in got if ".layers." in p and p.startswith("language_model.")]) == 8 * 9
    assert got["lm_head.kernel"].dtype == np.float32
