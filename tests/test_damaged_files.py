"""Damaged or malformed files next to a model (issue 17, cases 4, 8 second half, 10 first half, and their siblings).

* A converted directory whose files were deleted, emptied or cut in half (the Orbax index, a b-tree node, a data file,
  the tree record, config.json, vtp_jax.json) gives ``DamagedCheckpointError`` from :func:`vtp_jax.checkpoint.load`
  naming the file — "checkpoint DIR is damaged: … — re-run vtp-convert" — and exit 2 from every front end that loads
  a checkpoint (vtp-generate, vtp-eval, vtp-train-dyrate), with no traceback and nothing changed on disk. A valid
  checkpoint of another shape is told apart ("do not match the model described by config.json").
* vtp_jax.json / config.json with fields of the wrong type are refused naming the field.
* A DyRate predictor file that is malformed (metadata, tensors, dtypes, bytes) or holds NaN / inf is refused naming
  the file and the field or tensor.

The exhaustive sweep (every file under params/ × delete / truncate to 0 / to half / flip a byte, float32 and bfloat16)
was run once by hand; these tests keep one representative per kind of file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vtp_jax import checkpoint
from vtp_jax.checkpoint import CheckpointError, DamagedCheckpointError

SIZES = dict(
    image_size=64, patch_size=16, vision_hidden=32, vision_layers=2, vision_heads=4, vision_mlp=64,
    text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=2, text_mlp=128, vocab_size=300,
    max_position_embeddings=160,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from convert import convert
    from vtp_jax.testbed.hf_llava import build_tiny_llava

    root = tmp_path_factory.mktemp("damaged")
    hf = build_tiny_llava(str(root / "hf"), **SIZES)
    return convert(hf, str(root / "jax"), progress=False)


@pytest.fixture(scope="module")
def bf16_dir(model_dir, tmp_path_factory):
    from convert import convert

    hf = os.path.join(os.path.dirname(model_dir), "hf")
    return convert(hf, str(tmp_path_factory.mktemp("damaged_bf16") / "jax"), progress=False, dtype="bfloat16")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    return str(path)


def _file_of_kind(model_dir: str, kind: str) -> str:
    """Path (relative to the converted directory) of one file of each role in the Orbax checkpoint."""
    params = os.path.join(model_dir, checkpoint.PARAMS_DIR)
    if kind == "data":  # the largest data file holds most parameters' chunks
        d = os.path.join(params, "ocdbt.process_0", "d")
        return os.path.relpath(max((os.path.join(d, f) for f in os.listdir(d)), key=os.path.getsize), model_dir)
    if kind == "btree":
        (name,) = os.listdir(os.path.join(params, "d"))
        return os.path.join(checkpoint.PARAMS_DIR, "d", name)
    return {"index": "params/manifest.ocdbt", "tree": "params/_METADATA", "config": "config.json",
            "meta": "vtp_jax.json"}[kind]


def _damage(path: str, how: str) -> None:
    if how == "delete":
        os.remove(path)
    elif how == "empty":
        open(path, "wb").close()
    elif how == "half":
        os.truncate(path, os.path.getsize(path) // 2)
    else:
        raise AssertionError(how)


def _snapshot(root: str) -> dict:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha1(fh.read()).hexdigest()
    return out


def _copy(model_dir: str, tmp_path, name: str = "copy") -> str:
    return shutil.copytree(model_dir, str(tmp_path / name))


def _edit_json(path: str, edit) -> None:
    with open(path, encoding="utf-8") as f:
        value = json.load(f)
    value = edit(value)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f)


# ---- tracebacks today: damaged converted directories ---------------------------------------------------------------

KINDS = ["index", "btree", "data", "tree", "config", "meta"]


@pytest.mark.parametrize("how", ["delete", "empty", "half"])
@pytest.mark.parametrize("kind", KINDS)
def test_damaged_directory_names_the_file(model_dir, tmp_path, kind, how):
    d = _copy(model_dir, tmp_path)
    rel = _file_of_kind(d, kind)
    _damage(os.path.join(d, rel), how)
    before = _snapshot(d)
    with pytest.raises(DamagedCheckpointError) as info:
        checkpoint.load(d)
    msg = str(info.value)
    assert msg.startswith(f"checkpoint {d} is damaged: ") and "re-run vtp-convert" in msg, msg
    assert rel in msg, msg
    assert "\n" not in msg and "Traceback" not in msg
    if kind == "data" and how != "delete":
        # the file and the parameters it holds (which ones share the largest data file depends on write order)
        assert "truncated" in msg and re.search(r"it holds (language_model|vision_tower|multi_modal_projector)\.", msg), msg
    assert _snapshot(d) == before


@pytest.mark.parametrize("kind, how", [("data", "half"), ("index", "empty")])
def test_damaged_bf16_directory(bf16_dir, tmp_path, kind, how):
    d = _copy(bf16_dir, tmp_path)
    rel = _file_of_kind(d, kind)
    _damage(os.path.join(d, rel), how)
    with pytest.raises(DamagedCheckpointError, match=f"^checkpoint {d} is damaged: {rel} is "):
        checkpoint.load(d)


def _corrupt_first_chunk(d: str) -> None:
    """Zeroes the zstd frame header at byte 0 of the largest data file: the index and every file length stay
    intact (verify_params passes), the chunk fails to decompress when Orbax reads it."""
    path = os.path.join(d, _file_of_kind(d, "data"))
    with open(path, "r+b") as f:
        f.write(b"\0\0\0\0")


def test_corrupt_chunk_is_damaged_with_the_parameter_named(model_dir, tmp_path):
    d = _copy(model_dir, tmp_path)
    _corrupt_first_chunk(d)
    checkpoint.verify_params(os.path.join(d, "params"))  # lengths and index are intact
    with pytest.raises(DamagedCheckpointError, match=r"is damaged: reading [a-z_.0-9]+ failed \(.*ZSTD"):
        checkpoint.load(d)


@pytest.mark.parametrize("field, value, needle", [
    ("intermediate_size", 96, "mlp.down_proj.kernel: stored shape [128, 64], the model needs [96, 64]"),
    ("num_hidden_layers", 1, "unexpected ['language_model.layers.1."),
])
def test_valid_checkpoint_of_another_shape_is_a_mismatch_not_damage(model_dir, tmp_path, field, value, needle):
    d = _copy(model_dir, tmp_path)
    _edit_json(os.path.join(d, "config.json"), lambda c: {**c, "text_config": {**c["text_config"], field: value}})
    with pytest.raises(CheckpointError, match="do not match the model described by config.json") as info:
        checkpoint.load(d)
    assert not isinstance(info.value, DamagedCheckpointError)
    assert needle in str(info.value), str(info.value)


def _run(capsys, main, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _front_ends(d: str, image: str, tmp_path) -> dict:
    from eval.evaluate import main as eval_main
    from vtp_jax.cli import main as generate_main
    from vtp_jax.training.dyrate import main as train_main

    return {
        "vtp-generate": (generate_main, ["--model", d, "--image", image, "--prompt", "hi", "--max-new-tokens", "2",
                                         "--warmup", "0"]),
        "vtp-eval": (eval_main, ["--model", d, "--task", "shapes", "--limit", "1", "--no-progress",
                                 "--warmup", "0"]),
        "vtp-train-dyrate": (train_main, ["--model", d, "--n", "1", "--val-n", "1", "--steps", "1", "--no-progress",
                                          "--out", str(tmp_path / "p.safetensors")]),
    }


@pytest.mark.parametrize("prog", ["vtp-generate", "vtp-eval", "vtp-train-dyrate"])
def test_front_ends_exit_2_on_a_damaged_directory(model_dir, image, tmp_path, capsys, prog):
    d = _copy(model_dir, tmp_path)
    rel = _file_of_kind(d, "data")
    _damage(os.path.join(d, rel), "half")
    before = _snapshot(d)
    main, argv = _front_ends(d, image, tmp_path)[prog]
    code, out, err = _run(capsys, main, argv)
    assert code == 2, err
    assert err.startswith(f"{prog}: error: checkpoint {d} is damaged: {rel} is truncated"), err
    assert "Traceback" not in err and err.count("\n") == 1
    assert _snapshot(d) == before and not os.path.exists(tmp_path / "p.safetensors")


def test_console_script_corrupt_chunk_no_traceback(model_dir, image, tmp_path):
    """The one path where Orbax itself fails: its abandoned reads must not print tracebacks (they come late, from
    TensorStore's threads, through sys.unraisablehook)."""
    d = _copy(model_dir, tmp_path)
    _corrupt_first_chunk(d)
    exe = os.path.join(os.path.dirname(sys.executable), "vtp-generate")
    res = subprocess.run([exe, "--model", d, "--image", image, "--prompt", "hi", "--max-new-tokens", "2"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "is damaged: reading" in res.stderr and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "Event loop is closed" not in res.stderr


# ---- messages: fields of the wrong type in the files next to the parameters ----------------------------------------

def _set(key, value):
    return lambda m: {**m, key: value}


@pytest.mark.parametrize(
    "file, edit, needle",
    [
        ("vtp_jax.json", _set("dtype", 5), "vtp_jax.json field 'dtype' must be 'float32' or 'bfloat16', got 5"),
        ("vtp_jax.json", _set("random_weights", "yes"), "field 'random_weights' must be true or false, got 'yes'"),
        ("vtp_jax.json", _set("family", "gpt"), "field 'family' must be 'llava' or 'llada_v' or 'llava_next' or 'qwen2_5_vl', got 'gpt'"),
        ("vtp_jax.json", _set("family", "llada_v"), "vtp_jax.json says family 'llada_v' but config.json describes"),
        ("vtp_jax.json", _set("converted_from", 3), "field 'converted_from' must be a path (string), got 3"),
        ("vtp_jax.json", _set("format_version", "1"), "field 'format_version' must be an integer (1), got '1'"),
        ("vtp_jax.json", _set("format_version", True), "field 'format_version' must be an integer (1), got True"),
        ("vtp_jax.json", _set("format_version", 2), "format_version 2: written by a newer vtp_jax"),
        ("vtp_jax.json", lambda m: [m], "vtp_jax.json is not a JSON object (got list)"),
        ("config.json", lambda c: [c], "config.json is not a JSON object (got list)"),
    ],
)
def test_malformed_json_fields_are_named(model_dir, tmp_path, file, edit, needle):
    from vtp_jax import memory

    d = _copy(model_dir, tmp_path)
    _edit_json(os.path.join(d, file), edit)
    for read in (checkpoint.read_config, memory.model_config):  # the JSON-only path runs before any weight is read
        with pytest.raises(CheckpointError) as info:
            read(d)
        assert needle in str(info.value), str(info.value)


@pytest.mark.parametrize("what", ["params-file", "params-missing", "config-dir", "hf-dir"])
def test_layout_problems(model_dir, tmp_path, what):
    d = _copy(model_dir, tmp_path)
    if what == "params-file":
        shutil.rmtree(os.path.join(d, "params"))
        open(os.path.join(d, "params"), "w").close()
        needle, damaged = "params is not a directory", True
    elif what == "params-missing":
        shutil.rmtree(os.path.join(d, "params"))
        needle, damaged = "is damaged: params missing", True
    elif what == "config-dir":
        os.remove(os.path.join(d, "config.json"))
        os.mkdir(os.path.join(d, "config.json"))
        needle, damaged = "config.json is a directory", True
    else:  # a Hugging Face directory, not converted: not "damaged"
        os.remove(os.path.join(d, "vtp_jax.json"))
        shutil.rmtree(os.path.join(d, "params"))
        needle, damaged = "not a converted vtp_jax checkpoint", False
    with pytest.raises(CheckpointError, match=needle) as info:
        checkpoint.load(d)
    assert isinstance(info.value, DamagedCheckpointError) == damaged


# ---- DyRate predictor files ----------------------------------------------------------------------------------------

def _write_predictor(path, *, weight=None, bias=None, meta=None, drop=()):
    from safetensors.numpy import save_file

    tensors = {"weight": np.zeros((16, 4), np.float32) if weight is None else weight,
               "bias": np.zeros(4, np.float32) if bias is None else bias}
    metadata = {"format": "vtp_jax.dyrate.v1", "layer": "1", "meta": "{}", **(meta or {})}
    for key in drop:
        tensors.pop(key, None)
        metadata.pop(key, None)
    save_file(tensors, str(path), metadata={k: v for k, v in metadata.items() if v is not None})
    return str(path)


def _nan_weight():
    w = np.zeros((16, 4), np.float32)
    w[3, 1] = np.nan
    return w


PREDICTOR_CASES = {
    "nan-weight": (dict(weight=_nan_weight()), "tensor 'weight' has non-finite values (1 NaN, 0 inf of 64)"),
    "inf-bias": (dict(bias=np.array([0, np.inf, 0, 0], np.float32)),
                 "tensor 'bias' has non-finite values (0 NaN, 1 inf"),
    "bad-json-meta": (dict(meta={"meta": "{not json"}), "metadata field 'meta' is not valid JSON"),
    "list-meta": (dict(meta={"meta": "[1, 2]"}), "metadata field 'meta' must be a JSON object, got list"),
    "no-format": (dict(drop=("format",)), "metadata field 'format' must be 'vtp_jax.dyrate.v1', got None"),
    "wrong-format": (dict(meta={"format": "pt"}), "metadata field 'format' must be 'vtp_jax.dyrate.v1', got 'pt'"),
    "float-layer": (dict(meta={"layer": "3.5"}), "metadata field 'layer' must be an integer ≥ 0, got '3.5'"),
    "negative-layer": (dict(meta={"layer": "-1"}), "metadata field 'layer' must be an integer ≥ 0, got '-1'"),
    "no-layer": (dict(drop=("layer",)), "metadata field 'layer' must be an integer ≥ 0, got None"),
    "no-weight": (dict(drop=("weight",)), "tensor 'weight' missing (the file holds ['bias'])"),
    "int-bias": (dict(bias=np.zeros(4, np.int32)), "tensor 'bias' has dtype int32, expected a floating point dtype"),
    "empty-rates": (dict(weight=np.zeros((16, 0), np.float32), bias=np.zeros(0, np.float32)), "are empty"),
}


@pytest.mark.parametrize("case", sorted(PREDICTOR_CASES))
def test_malformed_predictor_names_file_and_field(tmp_path, case):
    from vtp_jax.pruning import PruningError
    from vtp_jax.pruning.dyrate import RatePredictor

    kwargs, needle = PREDICTOR_CASES[case]
    path = _write_predictor(tmp_path / f"{case}.safetensors", **kwargs)
    with pytest.raises(PruningError) as info:
        RatePredictor.load(path)
    assert str(info.value).startswith(f"DyRate predictor {path!r}") and needle in str(info.value), str(info.value)


@pytest.mark.parametrize("content", [b"", os.urandom(256), b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}"])
def test_predictor_bytes_that_are_not_safetensors(tmp_path, content):
    from vtp_jax.pruning import PruningError
    from vtp_jax.pruning.dyrate import RatePredictor

    path = tmp_path / "p.safetensors"
    path.write_bytes(content)
    with pytest.raises(PruningError, match=r"is not a vtp-train-dyrate file"):
        RatePredictor.load(str(path))
    with pytest.raises(PruningError, match="is a directory"):
        RatePredictor.load(str(tmp_path))


def test_predictor_save_refuses_nan_and_writes_nothing(tmp_path):
    from vtp_jax.pruning import PruningError
    from vtp_jax.pruning.dyrate import RatePredictor

    path = tmp_path / "p.safetensors"
    with pytest.raises(PruningError, match=r"refusing to write .*tensor 'weight' has non-finite values"):
        RatePredictor(_nan_weight(), np.zeros(4, np.float32), 1).save(str(path))
    with pytest.raises(PruningError, match="layer must be an integer ≥ 0"):
        RatePredictor(np.zeros((16, 4), np.float32), np.zeros(4, np.float32), -1).save(str(path))
    assert os.listdir(tmp_path) == []


def test_front_end_refuses_a_nan_predictor(model_dir, image, tmp_path, capsys):
    from vtp_jax.cli import main

    path = _write_predictor(tmp_path / "nan.safetensors", weight=_nan_weight())
    code, out, err = _run(capsys, main, ["--model", model_dir, "--image", image, "--prompt", "hi",
                                         "--max-new-tokens", "2", "--method", "dyrate", "--predictor", path])
    assert code == 2 and out == ""
    assert err == (f"vtp-generate: error: DyRate predictor {path!r}: tensor 'weight' has non-finite values "
                   "(1 NaN, 0 inf of 64); re-train it with vtp-train-dyrate\n"), err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files of any mode")
@pytest.mark.parametrize("kind", ["config", "index", "data"])
def test_unreadable_file_is_named_and_not_called_damaged(model_dir, tmp_path, kind):
    d = _copy(model_dir, tmp_path)
    rel = _file_of_kind(d, kind)
    os.chmod(os.path.join(d, rel), 0)
    try:
        with pytest.raises(CheckpointError, match="Permission denied") as info:
            checkpoint.load(d)
    finally:
        os.chmod(os.path.join(d, rel), 0o644)
    assert rel in str(info.value) and not isinstance(info.value, DamagedCheckpointError)


# ---- damaged tokenizer / processor files of a converted directory --------------------------------------------------
@pytest.mark.parametrize("name, how, needle", [
    ("chat_template.jinja", "half", "chat_template.jinja: the chat template does not parse"),
    ("tokenizer.json", "half", "tokenizer.json: unreadable JSON"),
    ("tokenizer_config.json", "half", "tokenizer_config.json: unreadable JSON"),
    ("processor_config.json", "empty", "processor_config.json: unreadable JSON"),
    ("tokenizer.json", "delete", "cannot load the tokenizer / image processor from"),
])
def test_damaged_processor_files_are_named(model_dir, image, tmp_path, capsys, name, how, needle):
    from vtp_jax.cli import main as generate_main

    d = _copy(model_dir, tmp_path)
    _damage(os.path.join(d, name), how)
    code, out, err = _run(capsys, generate_main, ["--model", d, "--image", image, "--prompt", "hi",
                                                  "--max-new-tokens", "2", "--warmup", "0"])
    assert code == 2 and needle in err, err
    assert "Traceback" not in err and err.count("\n") == 1, err
