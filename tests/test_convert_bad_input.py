"""``vtp-convert`` under bad input and interruptions (issue 17): never a traceback, never a silent wrong result,
never a user's file lost.

Every failure must exit 2 with ``vtp-convert: error: <message naming the field / file / tensor>`` and no
traceback, leave OUT_DIR absent (or, when it was there, untouched) and no temporary directory; a signal must exit
130 / 143 with "interrupted, nothing was written". Groups:

* tracebacks today: structural config fields (case 5 and its siblings, for both families, and the same checks when a
  converted directory's config.json is read back), a LLaVA checkpoint without processor_config.json (case 6);
* silent wrong results: tensors (and a DyRate predictor) holding NaN / inf (case 8), directory modes (case 13);
* unclear messages: random bytes as pytorch_model.bin (case 10) and siblings;
* concurrency and signals: a second conversion or a user's directory appearing at OUT_DIR mid-run (case 11, made to
  happen deterministically with the ``VTP_CONVERT_TEST_PAUSE_BEFORE_COMMIT`` hook), SIGINT / SIGTERM (case 12).

Most cases run ``convert.cli.main`` in-process on a copy of the small ``testbed_models`` checkpoints; only the
signal cases start a process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from convert import core
from convert.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAVA = os.path.join(REPO, "testbed_models", "llava_shapes")
LLADA = os.path.join(REPO, "testbed_models", "llada_v_shapes")
WEIGHTS = "model.safetensors"


def run_cli(capsys, *args) -> tuple[int, str]:
    rc = main([str(a) for a in args] + ["--no-progress"])
    return rc, capsys.readouterr().err


def leftovers(out) -> list[str]:
    """Temporary / set-aside directories of OUT_DIR ``out`` left beside it."""
    parent, base = os.path.dirname(str(out)), os.path.basename(str(out))
    return sorted(p for p in os.listdir(parent) if p.startswith(f".{base}."))


def assert_refused(rc: int, err: str, out, *needles) -> None:
    assert rc == 2, err
    assert err.startswith("vtp-convert: error: ") or "\nvtp-convert: error: " in err, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not leftovers(out), leftovers(out)


def copy_testbed(src: str, dst, *, weights: bool = True):
    """A copy of a testbed checkpoint (without its weights if ``weights`` is False: config errors come first)."""
    os.makedirs(dst)
    for name in os.listdir(src):
        if (weights or name != WEIGHTS) and os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), dst)
    return dst


def edit_json(path, edit) -> None:
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


def setter(*keys, value=None, delete=False):
    """An edit setting (or deleting) the nested field ``keys`` of a JSON dict."""
    def edit(d):
        for k in keys[:-1]:
            d = d[k]
        if delete:
            d.pop(keys[-1], None)
        else:
            d[keys[-1]] = value
    return edit


def edits(*fns):
    def edit(d):
        for fn in fns:
            fn(d)
    return edit


# --- tracebacks today: structural config fields ---------------------------------------------------------------------

T, V = "text_config", "vision_config"
LLAVA_CONFIG_CASES = {  # id: (edit, the field the message must name)
    "heads 0": (setter(T, "num_attention_heads", value=0), "text_config.num_attention_heads"),
    "kv heads 0": (setter(T, "num_key_value_heads", value=0), "text_config.num_key_value_heads"),
    "vision heads 0": (setter(V, "num_attention_heads", value=0), "vision_config.num_attention_heads"),
    "patch 0": (setter(V, "patch_size", value=0), "vision_config.patch_size"),
    "heads do not divide hidden": (edits(setter(T, "head_dim", delete=True), setter(T, "hidden_size", value=100)),
                                   "text_config.hidden_size 100 is not divisible"),
    "kv heads do not divide heads": (setter(T, "num_key_value_heads", value=3), "text_config.num_key_value_heads"),
    "vision heads do not divide hidden": (setter(V, "num_attention_heads", value=5), "vision_config.hidden_size"),
    "layers 3.5": (setter(T, "num_hidden_layers", value=3.5), "text_config.num_hidden_layers"),
    "layers -1": (setter(T, "num_hidden_layers", value=-1), "text_config.num_hidden_layers"),
    "vision layers as text": (setter(V, "num_hidden_layers", value="3"), "vision_config.num_hidden_layers"),
    "vocab 0": (setter(T, "vocab_size", value=0), "text_config.vocab_size"),
    "mlp negative": (setter(T, "intermediate_size", value=-5), "text_config.intermediate_size"),
    "hidden 0": (setter(T, "hidden_size", value=0), "text_config.hidden_size"),
    "odd head_dim": (setter(T, "head_dim", value=15), "text_config.head_dim"),
    "image smaller than patch": (setter(V, "image_size", value=4), "vision_config.image_size"),
    "one channel": (setter(V, "num_channels", value=1), "vision_config.num_channels"),
    "rope theta 0": (setter(T, "rope_parameters", "rope_theta", value=0), "text_config.rope_parameters.rope_theta"),
    "rope theta inf": (setter(T, "rope_parameters", "rope_theta", value=float("inf")), "rope_theta"),
    "llama3 without factor": (setter(T, "rope_parameters", "rope_type", value="llama3"), "rope_parameters.factor"),
    "llama3 low >= high": (setter(T, "rope_parameters", value={"rope_type": "llama3", "factor": 8.0,
                                                                "low_freq_factor": 4.0, "high_freq_factor": 4.0}),
                           "low_freq_factor"),
    "rms eps 0": (setter(T, "rms_norm_eps", value=0), "text_config.rms_norm_eps"),
    "rms eps as text": (setter(T, "rms_norm_eps", value="1e-5"), "text_config.rms_norm_eps"),
    "vision eps negative": (setter(V, "layer_norm_eps", value=-1e-5), "vision_config.layer_norm_eps"),
    "max positions 0": (setter(T, "max_position_embeddings", value=0), "text_config.max_position_embeddings"),
    "tie as text": (setter(T, "tie_word_embeddings", value="false"), "text_config.tie_word_embeddings"),
    "bias as text": (setter(T, "attention_bias", value="no"), "text_config.attention_bias"),
    "feature layer 1.5": (setter("vision_feature_layer", value=1.5), "vision_feature_layer"),
    "no feature layer": (setter("vision_feature_layer", value=[]), "vision_feature_layer"),
    "projector act": (setter("projector_hidden_act", value="relu"), "projector_hidden_act"),
    "projector bias as text": (setter("multimodal_projector_bias", value="true"), "multimodal_projector_bias"),
    "image token as text": (setter("image_token_index", value="4"), "image_token_index"),
    "vision config a string": (setter(V, value="clip"), "vision_config must be a JSON object"),
    "text config a list": (setter(T, value=[]), "text_config must be a JSON object"),
    "eos id as text": (setter(T, "eos_token_id", value="</s>"), "text_config.eos_token_id"),
    "random weights as text": (setter("vtp_random_weights", value="yes"), "vtp_random_weights"),
    "top-level tie a number": (setter("tie_word_embeddings", value=1), "tie_word_embeddings"),
    "hidden 1e30": (setter(T, "hidden_size", value=10**30), "text_config.hidden_size"),
    "rope type 0": (setter(T, "rope_parameters", "rope_type", value=0), "rope_parameters.rope_type"),
}
LLADA_CONFIG_CASES = {
    "heads 0": (setter("num_attention_heads", value=0), "num_attention_heads"),
    "alias n_heads 0": (edits(setter("num_attention_heads", delete=True), setter("n_heads", value=0)), "n_heads"),
    "layers 2.5": (setter("num_hidden_layers", value=2.5), "num_hidden_layers"),
    "kv heads 3": (setter("num_key_value_heads", value=3), "num_key_value_heads"),
    "rope theta -1": (setter("rope_theta", value=-1.0), "rope_theta"),
    "vision patch 0": (setter(V, "patch_size", value=0), "vision_config.patch_size"),
    "mask id 2.5": (setter("mask_token_id", value=2.5), "mask_token_id"),
    "mm hidden as text": (setter("mm_hidden_size", value="96"), "mm_hidden_size"),
    "aspect ratio a number": (setter("image_aspect_ratio", value=5), "image_aspect_ratio"),
    "pinpoint 72.5": (setter("image_grid_pinpoints", value=[[72.5, 72]]), "image_grid_pinpoints"),
    "pinpoint triple": (setter("image_grid_pinpoints", value=[[72, 72, 72]]), "image_grid_pinpoints"),
    "image token as text": (setter("image_token_index", value="<image>"), "image_token_index"),
    "merge type false": (setter("mm_patch_merge_type", value=False), "mm_patch_merge_type"),
    "pinpoints empty": (setter("image_grid_pinpoints", value=[]), "image_grid_pinpoints is empty"),
    "pinpoints huge range": (setter("image_grid_pinpoints", value="(1x1),...,(100000x100000)"),
                             "more than 4096"),
}
CONFIG_CASES = [pytest.param(LLAVA, *case, id=f"llava: {name}") for name, case in LLAVA_CONFIG_CASES.items()]
CONFIG_CASES += [pytest.param(LLADA, *case, id=f"llada_v: {name}") for name, case in LLADA_CONFIG_CASES.items()]


@pytest.mark.parametrize("testbed, edit, field", CONFIG_CASES)
def test_tracebacks_bad_config_field_is_named(testbed, edit, field, tmp_path, capsys):
    hf = copy_testbed(testbed, tmp_path / "hf", weights=False)
    edit_json(hf / "config.json", edit)
    rc, err = run_cli(capsys, hf, tmp_path / "out")
    assert_refused(rc, err, tmp_path / "out", "config.json", field)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The two testbeds converted once (config.json is what a converted directory reads back)."""
    from convert import convert

    root = tmp_path_factory.mktemp("converted")
    return {t: convert(t, str(root / os.path.basename(t)), progress=False, notify=lambda _: None)
            for t in (LLAVA, LLADA)}


READ_BACK = ("llava: heads 0", "llava: patch 0", "llava: layers 3.5", "llava: rope theta 0",
             "llada_v: alias n_heads 0", "llada_v: mask id 2.5")


@pytest.mark.parametrize("testbed, edit, field", [p for p in CONFIG_CASES if p.id in READ_BACK])
def test_tracebacks_bad_config_field_is_named_when_a_converted_directory_is_read(
        testbed, edit, field, converted, tmp_path):
    """vtp_jax.checkpoint reads a converted config.json through the same validation (CheckpointError naming the
    field, not a ZeroDivisionError or a model built with 3.5 layers)."""
    from vtp_jax import checkpoint

    model_dir = tmp_path / "model"
    shutil.copytree(converted[testbed], model_dir)
    edit_json(model_dir / "config.json", edit)
    with pytest.raises(checkpoint.CheckpointError, match="config.json") as e:
        checkpoint.read_config(model_dir)
    assert field in str(e.value)


def test_tracebacks_more_layers_than_tensors_refused_before_the_model_is_built(tmp_path, capsys):
    """num_hidden_layers: 100000 would take many minutes to build abstractly; the weights' tensor count refutes it."""
    hf = copy_testbed(LLAVA, tmp_path / "hf")
    edit_json(hf / "config.json", setter(T, "num_hidden_layers", value=100_000))
    t0 = time.monotonic()
    rc, err = run_cli(capsys, hf, tmp_path / "out")
    assert_refused(rc, err, tmp_path / "out", "100000 decoder", "num_hidden_layers", "tensors")
    assert time.monotonic() - t0 < 30


def test_tracebacks_processor_fields_filled_from_config_json(tmp_path, capsys):
    """Case 6: tokenizer + preprocessor_config.json, no processor_config.json (older / third-party LLaVA
    checkpoints): the converted directory gets patch_size, the feature-select strategy and the number of additional
    image tokens from config.json, stderr says so, and transformers' LlavaProcessor then expands <image> right."""
    import transformers
    from PIL import Image

    hf = copy_testbed(LLAVA, tmp_path / "hf")
    with open(hf / core.PROCESSOR_FILE) as f:
        image_processor = json.load(f)["image_processor"]
    os.remove(hf / core.PROCESSOR_FILE)
    with open(hf / core.IMAGE_PROCESSOR_FILE, "w") as f:
        json.dump({**image_processor, "processor_class": "LlavaProcessor"}, f)
    rc, err = run_cli(capsys, hf, tmp_path / "out")
    assert rc == 0, err
    assert "Traceback" not in err
    assert "no processor_config.json" in err and "patch_size=8" in err and "num_additional_image_tokens=1" in err
    assert not (hf / core.PROCESSOR_FILE).exists()  # HF_DIR is never written to
    with open(tmp_path / "out" / core.PROCESSOR_FILE) as f:
        written = json.load(f)
    assert written == {"processor_class": "LlavaProcessor", "patch_size": 8,
                       "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "out")
    enc = processor(images=Image.new("RGB", (90, 60)), text="USER: <image>\nWhat? ASSISTANT:", return_tensors="np")
    assert int((np.asarray(enc["input_ids"]) == 4).sum()) == 81  # (72 / 8)² visual tokens

    # a processor_config.json whose fields are null gets them too; an existing value is kept
    hf2 = copy_testbed(LLAVA, tmp_path / "hf2", weights=True)
    edit_json(hf2 / core.PROCESSOR_FILE, edits(setter("patch_size", value=None),
                                               setter("num_additional_image_tokens", delete=True)))
    rc, err = run_cli(capsys, hf2, tmp_path / "out2")
    assert rc == 0 and "lacks patch_size, num_additional_image_tokens" in err, err
    with open(tmp_path / "out2" / core.PROCESSOR_FILE) as f:
        written = json.load(f)
    assert written["patch_size"] == 8 and written["num_additional_image_tokens"] == 1
    assert written["image_processor"] == image_processor


# --- silent wrong results -------------------------------------------------------------------------------------------

def _poison(name: str, value, dtype=None):
    def edit(tensors):
        t = tensors[name].astype(dtype or tensors[name].dtype)
        t.reshape(-1)[:3] = value
        tensors[name] = t
    return edit


PROJ = "multi_modal_projector.linear_1.weight"
EMBED = "language_model.model.embed_tokens.weight"
NONFINITE_CASES = {  # id: (tensor edit, extra args, what the message must say)
    "nan": (_poison(PROJ, np.nan), (), [PROJ, "3 of", "NaN or inf"]),
    "inf in the embedding": (_poison(EMBED, -np.inf), (), [EMBED, "NaN or inf"]),
    "overflow to bfloat16": (_poison(PROJ, np.finfo(np.float32).max), ("--dtype", "bfloat16"),
                             [PROJ, "too large for bfloat16"]),
    "float64 overflow to float32": (_poison(PROJ, 1e300, np.float64), (), [PROJ, "too large for float32"]),
}


def _hf_with_tensors(tmp_path, edit):
    hf = copy_testbed(LLAVA, tmp_path / "hf")
    tensors = load_file(hf / WEIGHTS)
    edit(tensors)
    save_file(tensors, hf / WEIGHTS)
    return hf


@pytest.mark.parametrize("edit, extra, needles", NONFINITE_CASES.values(), ids=NONFINITE_CASES.keys())
def test_silent_nonfinite_tensors_are_refused(edit, extra, needles, tmp_path, capsys):
    hf = _hf_with_tensors(tmp_path, edit)
    rc, err = run_cli(capsys, hf, tmp_path / "out", *extra)
    assert_refused(rc, err, tmp_path / "out", "--allow-nonfinite", *needles)
    assert not (tmp_path / "out").exists()


def test_silent_nonfinite_allowed_with_a_warning(tmp_path, capsys):
    hf = _hf_with_tensors(tmp_path, edits(_poison(PROJ, np.nan), _poison(EMBED, np.inf)))
    rc, err = run_cli(capsys, hf, tmp_path / "out", "--allow-nonfinite")
    assert rc == 0, err
    assert "warning: 2 tensors" in err and PROJ in err and EMBED in err and "Traceback" not in err
    assert (tmp_path / "out" / "params").is_dir()


def test_silent_nonfinite_predictor_is_refused(tmp_path, capsys):
    hf = copy_testbed(LLAVA, tmp_path / "hf")
    predictor = load_file(hf / core.PREDICTOR_FILE)
    name = sorted(k for k, v in predictor.items() if v.dtype.kind == "f")[0]
    predictor[name] = np.full_like(predictor[name], np.nan)
    save_file(predictor, hf / core.PREDICTOR_FILE)
    rc, err = run_cli(capsys, hf, tmp_path / "out")
    assert_refused(rc, err, tmp_path / "out", f"{core.PREDICTOR_FILE}:{name}", "NaN or inf")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_silent_modes_honour_the_umask(umask, tmp_path, capsys):
    """Case 13: the converted directory (not just what Orbax writes inside it) gets 0777 / 0666 minus the umask."""
    previous = os.umask(umask)
    try:
        rc, err = run_cli(capsys, LLAVA, tmp_path / "out")
    finally:
        os.umask(previous)
    assert rc == 0, err
    modes = {}
    for root, dirs, files in os.walk(tmp_path / "out"):
        for name in dirs + files + ([""] if root == str(tmp_path / "out") else []):
            path = os.path.join(root, name)
            want = (0o777 if os.path.isdir(path) else 0o666) & ~umask
            modes[os.path.relpath(path, tmp_path)] = (oct(os.stat(path).st_mode & 0o777), oct(want))
    wrong = {p: m for p, m in modes.items() if m[0] != m[1]}
    assert not wrong and "out" in modes, wrong


# --- unclear messages -----------------------------------------------------------------------------------------------

def _zip_without_data_pkl(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/readme.txt", "not a checkpoint")


PICKLE_CASES = {  # id: (writes HF_DIR/pytorch_model.bin, what the message must say)
    "random bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not a PyTorch checkpoint"),
    "empty file": (lambda p: p.write_bytes(b""), "not a PyTorch checkpoint"),
    "zip without data.pkl": (_zip_without_data_pkl, "without the data.pkl"),
}


@pytest.mark.parametrize("write, needle", PICKLE_CASES.values(), ids=PICKLE_CASES.keys())
def test_messages_not_a_pytorch_checkpoint(write, needle, tmp_path, capsys):
    hf = copy_testbed(LLAVA, tmp_path / "hf", weights=False)
    write(hf / "pytorch_model.bin")
    rc, err = run_cli(capsys, hf, tmp_path / "out", "--allow-pickle")
    assert_refused(rc, err, tmp_path / "out", "pytorch_model.bin", needle)
    assert "mmap" not in err and "zipfile" not in err


@pytest.mark.parametrize("weight_map", [{"a": ["model.safetensors"]}, {"a": 5}], ids=["a list", "a number"])
def test_messages_index_naming_a_non_file(weight_map, tmp_path, capsys):
    hf = copy_testbed(LLAVA, tmp_path / "hf", weights=False)
    (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    rc, err = run_cli(capsys, hf, tmp_path / "out")
    assert_refused(rc, err, tmp_path / "out", "model.safetensors.index.json", "'a'")


def test_messages_unreadable_hf_file_is_named_as_such(tmp_path, capsys, monkeypatch):
    """An HF_DIR file that cannot be read (say, mode 000 for a non-root user) is named — not "writing OUT_DIR
    failed"."""
    real_open = open

    def open_refusing_the_tokenizer(path, *args, **kwargs):
        if str(path).endswith("tokenizer.json"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(core, "open", open_refusing_the_tokenizer, raising=False)
    rc, err = run_cli(capsys, LLAVA, tmp_path / "out")
    assert_refused(rc, err, tmp_path / "out", f"cannot read {os.path.join(LLAVA, 'tokenizer.json')}",
                   "Permission denied")
    assert not (tmp_path / "out").exists()


def test_messages_other_inputs(tmp_path, capsys):
    rc, err = run_cli(capsys, LLAVA, tmp_path / "out", "--max-inflight-mb", "0")
    assert rc == 2 and "argument --max-inflight-mb" in err and "Traceback" not in err
    hf = copy_testbed(LLAVA, tmp_path / "hf")
    (hf / core.PROCESSOR_FILE).write_text("{not json")
    rc, err = run_cli(capsys, hf, tmp_path / "out")
    assert_refused(rc, err, tmp_path / "out", str(hf / core.PROCESSOR_FILE), "unreadable JSON")


# --- concurrency and signals ----------------------------------------------------------------------------------------

class Paused:
    """A conversion run in a thread (``convert.cli.main``) that stops just before its commit
    (:data:`convert.core.PAUSE_ENV`) until :meth:`resume`."""

    def __init__(self, monkeypatch, tmp_path, *args):
        self.hook = tmp_path / "hook"
        self.hook.mkdir()
        monkeypatch.setenv(core.PAUSE_ENV, str(self.hook))
        self.rc = None
        self.thread = threading.Thread(target=self._run, args=([str(a) for a in args] + ["--no-progress"],))
        self.thread.start()
        deadline = time.monotonic() + 120
        while not (self.hook / "paused").exists():  # the converter has read the hook and written everything
            assert self.thread.is_alive() and time.monotonic() < deadline, "the conversion did not pause"
            time.sleep(0.01)
        monkeypatch.delenv(core.PAUSE_ENV)  # other conversions of this test run without the pause
        self.tmp = (self.hook / "paused").read_text().strip()

    def _run(self, argv):
        self.rc = main(argv)

    def resume(self) -> int:
        (self.hook / "resume").touch()
        self.thread.join(120)
        assert not self.thread.is_alive()
        return self.rc


def test_concurrency_second_conversion_to_the_same_out_dir(tmp_path, capsys, monkeypatch):
    """Case 11: A pauses before its commit, B converts to the same OUT_DIR and succeeds (A's live temporary
    directory is left alone); A then fails with "appeared while converting" and B's OUT_DIR is untouched."""
    out = tmp_path / "out"
    a = Paused(monkeypatch, tmp_path, LLAVA, out)
    rc_b, err_b = run_cli(capsys, LLAVA, out, "--dtype", "bfloat16")
    assert rc_b == 0, err_b
    assert f"left {a.tmp} alone" in err_b and "still running" in err_b
    stamp = os.stat(out / "vtp_jax.json").st_ino
    rc_a = a.resume()
    err_a = capsys.readouterr().err
    assert_refused(rc_a, err_a, out, f"OUT_DIR {out} appeared while converting")
    assert os.stat(out / "vtp_jax.json").st_ino == stamp
    assert json.loads((out / "vtp_jax.json").read_text())["dtype"] == "bfloat16"


def _user_dir(out):
    out.mkdir()
    (out / "notes.txt").write_text("keep me")


@pytest.mark.parametrize("fallback", [False, True], ids=["renameat2", "mkdir fallback"])
@pytest.mark.parametrize("make", [_user_dir, lambda out: out.mkdir()], ids=["with a file", "empty"])
def test_concurrency_directory_made_by_a_user_mid_run_is_kept(make, fallback, tmp_path, capsys, monkeypatch):
    """A directory a user makes at OUT_DIR while the conversion runs is never replaced (not even an empty one)."""
    if fallback:
        monkeypatch.setattr(core, "_renameat2", lambda: None)
    out = tmp_path / "out"
    a = Paused(monkeypatch, tmp_path, LLAVA, out)
    make(out)
    rc = a.resume()
    assert_refused(rc, capsys.readouterr().err, out, "appeared while converting", "left it alone")
    assert out.is_dir() and sorted(os.listdir(out)) == (["notes.txt"] if make is _user_dir else [])


def test_concurrency_force_replaces_only_the_vetted_directory(tmp_path, capsys, monkeypatch):
    """With --force, a converted OUT_DIR is replaced; but when it is swapped for another directory mid-run, that
    one is left alone (and so is the one moved away)."""
    out = tmp_path / "out"
    assert run_cli(capsys, LLAVA, out)[0] == 0
    a = Paused(monkeypatch, tmp_path, LLAVA, out, "--force")
    os.rename(out, tmp_path / "moved-away")
    _user_dir(out)
    rc = a.resume()
    assert_refused(rc, capsys.readouterr().err, out, "was replaced by another directory", "left it alone")
    assert (out / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "moved-away" / "vtp_jax.json").exists()

    os.rename(tmp_path / "moved-away", tmp_path / "out2")  # the plain --force path still replaces it
    rc, err = run_cli(capsys, LLAVA, tmp_path / "out2", "--force", "--dtype", "bfloat16")
    assert rc == 0, err
    assert json.loads((tmp_path / "out2" / "vtp_jax.json").read_text())["dtype"] == "bfloat16"
    assert not leftovers(tmp_path / "out2")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (core.STALL_ENV, core.PAUSE_ENV)}
    return {**env, "PYTHONPATH": os.pathsep.join([REPO, env.get("PYTHONPATH", "")]), **extra}


@pytest.mark.parametrize("at", [1, 12, -1], ids=["first tensor", "tensor 12", "last tensor"])
def test_signals_while_writing_in_process(at, tmp_path, capsys, monkeypatch):
    """SIGINT arriving while tensor ``at`` loads (sent from the writer's thread; Python runs the handler in the main
    thread, inside Orbax): recorded, the save ends at the next tensor, rc 130, nothing left — every time."""
    from convert.sources import SafetensorsSource

    n = len(load_file(os.path.join(LLAVA, WEIGHTS)))
    at = n if at == -1 else at
    read, calls = SafetensorsSource.read, []

    def read_and_signal(self, name):
        calls.append(name)
        if len(calls) == at:
            os.kill(os.getpid(), signal.SIGINT)
        return read(self, name)

    monkeypatch.setattr(SafetensorsSource, "read", read_and_signal)
    rc, err = run_cli(capsys, LLAVA, tmp_path / "out")
    assert rc == 130, err
    assert "interrupted, nothing was written (SIGINT)" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path / "out")


@pytest.mark.parametrize("on_early", [None, "callback"])
def test_signals_before_anything_is_written(on_early, tmp_path, monkeypatch):
    """A signal while config.json is read: the API raises Interrupted at once (as Python's SIGINT would); with
    ``on_early_signal`` (the CLI's ends the process) that is called instead."""
    from convert import convert

    read_config, seen = core._read_config, []

    def read_and_signal(hf_dir):
        os.kill(os.getpid(), signal.SIGTERM)
        return read_config(hf_dir)

    monkeypatch.setattr(core, "_read_config", read_and_signal)

    def callback(signum):
        seen.append(signum)
        raise RuntimeError("the CLI would end the process here")

    with pytest.raises(core.Interrupted if on_early is None else RuntimeError) as e:
        convert(LLAVA, tmp_path / "out", progress=False, on_early_signal=None if on_early is None else callback)
    if on_early is None:
        assert e.value.signum == signal.SIGTERM and not e.value.written
    else:
        assert seen == [signal.SIGTERM]
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


SIGNAL_CASES = [(signal.SIGINT, "stall 1"), (signal.SIGINT, "stall 20"), (signal.SIGTERM, "stall 7"),
                (signal.SIGINT, "pause"), (signal.SIGTERM, "pause")]


@pytest.mark.parametrize("sig, where", SIGNAL_CASES, ids=[f"{s.name} {w}" for s, w in SIGNAL_CASES])
def test_signals_interrupt_cleanly(sig, where, tmp_path):
    """Case 12: SIGINT / SIGTERM while tensors are written (the stall hook) or just before the commit (the pause
    hook): exit 130 / 143, "interrupted, nothing was written", no OUT_DIR, no temporary directory."""
    out = tmp_path / "out"
    if where == "pause":
        (tmp_path / "hook").mkdir()
        env = _env(**{core.PAUSE_ENV: str(tmp_path / "hook")})
    else:
        env = _env(**{core.STALL_ENV: where.split()[1]})
    proc = subprocess.Popen([sys.executable, "-m", "convert.cli", LLAVA, str(out), "--no-progress"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        if where == "pause":
            deadline = time.monotonic() + 120
            while not (tmp_path / "hook" / "paused").exists():
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
        else:
            for line in proc.stderr:
                if "test stall after" in line:
                    break
        proc.send_signal(sig)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err
    assert "interrupted, nothing was written" in err and signal.Signals(sig).name in err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert not out.exists() and not leftovers(out), leftovers(out)
