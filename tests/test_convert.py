"""``vtp-convert``: a correct conversion, and every bad input failing cleanly.

A failure must exit with code 2, print ``vtp-convert: error: <message naming the problem>`` on stderr without a
traceback, and leave neither OUT_DIR nor a temporary directory behind. Most cases call ``convert.cli.main``
in-process (fast); two run the real command line in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from convert import sources
from convert.cli import main
from conftest import random_hf_llava, tiny_hf_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    """A transformers-5 ``save_pretrained`` directory of a tiny random LLaVA (+ a tokenizer-like file)."""
    pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("good") / "hf"
    random_hf_llava(tiny_hf_config()).save_pretrained(path)
    (path / "tokenizer_config.json").write_text('{"model_max_length": 64}\n')
    (path / "chat_template.jinja").write_text("{{ messages }}")
    (path / "README.md").write_text("not copied")
    return path


@pytest.fixture
def hf_copy(good_dir, tmp_path):
    dst = tmp_path / "hf"
    shutil.copytree(good_dir, dst)
    return dst


def run_cli(capsys, *args) -> tuple[int, str]:
    rc = main([str(a) for a in args] + ["--no-progress"])
    return rc, capsys.readouterr().err


def assert_clean_failure(capsys, hf_dir, out_dir, *needles, extra=()):
    rc, err = run_cli(capsys, hf_dir, out_dir, *extra)
    assert rc == 2, err
    assert err.startswith("vtp-convert: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not os.path.exists(out_dir)
    leftovers = [p for p in os.listdir(os.path.dirname(out_dir)) if p.startswith(f".{os.path.basename(out_dir)}")]
    assert not leftovers, leftovers
    return err


def rewrite(hf_dir, edit):
    """Loads model.safetensors as numpy, applies ``edit(dict)``, writes it back."""
    tensors = load_file(hf_dir / WEIGHTS)
    edit(tensors)
    save_file(tensors, hf_dir / WEIGHTS, metadata={"format": "pt"})


# --- success ------------------------------------------------------------------------------------


def expected_source(path: str) -> tuple[str, str]:
    """(save_pretrained tensor name, transform) for one of our parameter paths — written independently of
    vtp_jax.families.llava.names, as the test's own statement of the layout."""
    if path == "lm_head.kernel":
        return "language_model.lm_head.weight", "linear"
    special = {
        "vision_tower.patch_embedding.kernel": ("vision_tower.embeddings.patch_embedding.weight", "conv"),
        "vision_tower.class_embedding": ("vision_tower.embeddings.class_embedding", "none"),
        "vision_tower.position_embedding.embedding": ("vision_tower.embeddings.position_embedding.weight", "none"),
        "language_model.embed_tokens.embedding": ("language_model.model.embed_tokens.weight", "none"),
    }
    if path in special:
        return special[path]
    name = path.replace("vision_tower.layers.", "vision_tower.encoder.layers.")
    name = name.replace("language_model.", "language_model.model.")
    if name.startswith("vision_tower."):
        name = name.replace(".o_proj.", ".out_proj.")
    transform = "linear" if name.endswith(".kernel") else "none"
    name = name.removesuffix(".kernel").removesuffix(".scale")
    name = name + ".weight" if not name.endswith((".bias", ".weight")) else name
    return name, transform


def test_success_every_param_equals_source(hf_copy, tmp_path, capsys):
    from vtp_jax import checkpoint
    from flax import nnx

    config = json.loads((hf_copy / "config.json").read_text())
    config["vtp_random_weights"] = True
    (hf_copy / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    rc = main([str(hf_copy), str(out)])  # with the progress bar
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "Traceback" not in err

    assert sorted(os.listdir(out)) == sorted(
        ["config.json", "vtp_jax.json", "params", "generation_config.json", "tokenizer_config.json",
         "chat_template.jinja"])
    assert (out / "config.json").read_bytes() == (hf_copy / "config.json").read_bytes()
    meta = json.loads((out / "vtp_jax.json").read_text())
    assert meta == {"format_version": 1, "family": "llava", "dtype": "float32",
                    "converted_from": str(hf_copy), "random_weights": True}
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []

    model, cfg, _ = checkpoint.load(out)
    flat = {".".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    used = set()
    with safe_open(hf_copy / WEIGHTS, "numpy") as f:
        for path, value in flat.items():
            name, transform = expected_source(path)
            src = f.get_tensor(name)
            if transform == "linear":
                src = src.T
            elif transform == "conv":
                src = src.transpose(2, 3, 1, 0)
            assert value.dtype == np.float32
            np.testing.assert_array_equal(np.asarray(value), src, err_msg=path)
            used.add(name)
        assert used == set(f.keys())


def test_bfloat16_source_and_pickle_with_allow_pickle(good_dir, tmp_path, capsys):
    """A bf16 safetensors file (read without torch) and a pytorch_model.bin (--allow-pickle) convert exactly."""
    import torch

    from vtp_jax import checkpoint

    ref = load_file(good_dir / WEIGHTS)
    bf16_dir, bin_dir = tmp_path / "bf16", tmp_path / "bin"
    for d in (bf16_dir, bin_dir):
        d.mkdir()
        shutil.copy(good_dir / "config.json", d)
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in ref.items()}, bf16_dir / WEIGHTS)
    state = {k: torch.from_numpy(v.copy()).to(torch.bfloat16) for k, v in ref.items()}
    torch.save(state, bin_dir / "pytorch_model.bin")

    assert run_cli(capsys, bf16_dir, tmp_path / "o1")[0] == 0
    assert run_cli(capsys, bin_dir, tmp_path / "o2", "--allow-pickle", "--dtype", "bfloat16")[0] == 0
    m1, _, _ = checkpoint.load(tmp_path / "o1")
    m2, _, meta2 = checkpoint.load(tmp_path / "o2")
    assert meta2["dtype"] == "bfloat16" and m2.lm_head.kernel.dtype == np.dtype(ml_dtypes.bfloat16)
    want = ref["language_model.lm_head.weight"].astype(ml_dtypes.bfloat16).T
    np.testing.assert_array_equal(np.asarray(m1.lm_head.kernel[...]), want.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(m2.lm_head.kernel[...]), want)


def test_read_raw_matches_safe_open(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4),
              "b": (np.arange(6, dtype=np.float32) / 7).astype(ml_dtypes.bfloat16).reshape(2, 3)}
    save_file(arrays, tmp_path / "x.safetensors")
    for name, arr in arrays.items():
        got = sources.read_raw(str(tmp_path / "x.safetensors"), name)
        assert got.dtype == arr.dtype
        np.testing.assert_array_equal(got, arr)


def test_force_replaces_existing_out_dir(hf_copy, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(capsys, hf_copy, out)[0] == 0
    stamp = (out / "vtp_jax.json").stat().st_mtime_ns
    rc, err = run_cli(capsys, hf_copy, out)
    assert rc == 2 and "already exists" in err and "--force" in err and "Traceback" not in err
    assert (out / "vtp_jax.json").stat().st_mtime_ns == stamp  # untouched
    rc, err = run_cli(capsys, hf_copy, out, "--force", "--dtype", "bfloat16")
    assert rc == 0, err
    assert json.loads((out / "vtp_jax.json").read_text())["dtype"] == "bfloat16"
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_force_refuses_to_replace_a_foreign_directory(hf_copy, tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    rc, err = run_cli(capsys, hf_copy, out, "--force")
    assert rc == 2 and "not a converted checkpoint" in err
    assert (out / "notes.txt").read_text() == "keep me"


# --- bad input ----------------------------------------------------------------------------------


def test_truncated_safetensors(hf_copy, tmp_path, capsys):
    data = (hf_copy / WEIGHTS).read_bytes()
    (hf_copy / WEIGHTS).write_bytes(data[: len(data) - 1000])
    assert_clean_failure(capsys, hf_copy, tmp_path / "out", WEIGHTS, "not a valid safetensors file")


def test_missing_tensor(hf_copy, tmp_path, capsys):
    rewrite(hf_copy, lambda t: t.pop("language_model.model.layers.1.mlp.up_proj.weight"))
    assert_clean_failure(capsys, hf_copy, tmp_path / "out", "missing tensor",
                         "language_model.layers.1.mlp.up_proj.kernel", "1 problem")


def test_unexpected_tensor(hf_copy, tmp_path, capsys):
    def edit(t):
        t["vision_tower.encoder.layers.0.mlp.fc3.weight"] = np.zeros((4, 4), np.float32)
        t["language_model.model.layers.7.mlp.up_proj.weight"] = np.zeros((128, 64), np.float32)
    rewrite(hf_copy, edit)
    err = assert_clean_failure(capsys, hf_copy, tmp_path / "out", "unexpected tensor",
                               "vision_tower.encoder.layers.0.mlp.fc3.weight",
                               "language_model.model.layers.7.mlp.up_proj.weight", "2 problems")
    assert "does not have" in err


def test_wrong_shape(hf_copy, tmp_path, capsys):
    rewrite(hf_copy, lambda t: t.update({"multi_modal_projector.linear_1.weight": np.zeros((64, 33), np.float32)}))
    assert_clean_failure(capsys, hf_copy, tmp_path / "out", "wrong shape",
                         "multi_modal_projector.linear_1.weight", "[64, 33]", "[64, 32]")


def test_many_problems_are_counted(hf_copy, tmp_path, capsys):
    rewrite(hf_copy, lambda t: [t.pop(k) for k in list(t) if k.startswith("vision_tower.encoder.")])
    err = assert_clean_failure(capsys, hf_copy, tmp_path / "out", "missing tensor", "problems", "more")
    n_listed = err.count("\n  - ")
    assert n_listed == 10


def test_unknown_model_type(hf_copy, tmp_path, capsys):
    config = json.loads((hf_copy / "config.json").read_text())
    config["model_type"] = "llava_next_video_9000"
    (hf_copy / "config.json").write_text(json.dumps(config))
    assert_clean_failure(capsys, hf_copy, tmp_path / "out", "model_type", "llava_next_video_9000")


def test_index_naming_file_outside_dir(hf_copy, tmp_path, capsys):
    shutil.move(hf_copy / WEIGHTS, tmp_path / "outside.safetensors")
    with safe_open(tmp_path / "outside.safetensors", "numpy") as f:
        weight_map = {k: "../outside.safetensors" for k in f.keys()}
    (hf_copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_clean_failure(capsys, hf_copy, tmp_path / "out", "model.safetensors.index.json",
                         "../outside.safetensors", "outside")


def test_missing_hf_dir(tmp_path, capsys):
    assert_clean_failure(capsys, tmp_path / "nope", tmp_path / "out", "does not exist", str(tmp_path / "nope"))


def test_pickle_refused_without_allow_pickle(hf_copy, tmp_path, capsys):
    os.remove(hf_copy / WEIGHTS)
    (hf_copy / "pytorch_model.bin").write_bytes(b"not even a pickle, never opened")
    assert_clean_failure(capsys, hf_copy, tmp_path / "out", "pytorch_model.bin", "--allow-pickle")


def test_no_weights(hf_copy, tmp_path, capsys):
    os.remove(hf_copy / WEIGHTS)
    assert_clean_failure(capsys, hf_copy, tmp_path / "out", "no weights found")


def test_out_dir_equal_to_hf_dir(hf_copy, capsys):
    rc, err = run_cli(capsys, hf_copy, hf_copy, "--force")
    assert rc == 2 and "must not be HF_DIR" in err
    assert (hf_copy / WEIGHTS).exists()


# --- the real command line ----------------------------------------------------------------------


def _python(*args, **kw):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120, **kw)


def test_cli_subprocess_error_exit_code(hf_copy, tmp_path):
    rewrite(hf_copy, lambda t: t.pop("vision_tower.post_layernorm.bias"))
    res = _python("-m", "convert.cli", str(hf_copy), str(tmp_path / "out"))
    assert res.returncode == 2
    assert "vtp-convert: error: " in res.stderr and "vision_tower.post_layernorm.bias" in res.stderr
    assert "Traceback" not in res.stderr
    assert not os.path.exists(tmp_path / "out")


def test_cli_subprocess_success_never_imports_torch(good_dir, tmp_path):
    script = ("import sys; from convert.cli import main; rc = main(sys.argv[1:]); "
              "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    res = _python("-c", script, str(good_dir), str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert os.path.isdir(tmp_path / "out" / "params")


def test_llada_v_family_converts_and_loads(tmp_path, capsys):
    """The same engine converts a LLaDA-V checkpoint (names from vtp_jax.families.llada_v.names) and loads a LladaV."""
    from vtp_jax import checkpoint
    from vtp_jax.testbed import hf_llada_v

    hf_dir = hf_llada_v.build_tiny_llada_v(tmp_path / "hf")
    rc, err = run_cli(capsys, hf_dir, tmp_path / "out", "--dtype", "bfloat16")
    assert rc == 0, err
    model, cfg, meta = checkpoint.load(tmp_path / "out")
    assert type(model).__name__ == "LladaV" and meta["family"] == cfg.family == "llada_v"
    assert model.lm_head.kernel.dtype == np.dtype(ml_dtypes.bfloat16)


def test_load_refuses_a_directory_that_is_not_converted(good_dir, tmp_path):
    from vtp_jax.checkpoint import CheckpointError, load

    with pytest.raises(CheckpointError, match="not a converted vtp_jax checkpoint"):
        load(good_dir)
    with pytest.raises(CheckpointError, match="not a directory"):
        load(tmp_path / "nope")
