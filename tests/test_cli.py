"""``vtp-generate``: the JSON contract and bad input (exit code 2, a clear message, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CLI_SIZES as SIZES, run_cli
from vtp_jax import cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from convert import convert
    from vtp_jax.testbed.hf_llava import build_tiny_llava

    root = tmp_path_factory.mktemp("cli")
    hf = build_tiny_llava(str(root / "hf"), **SIZES)
    return convert(hf, str(root / "jax"), progress=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_json_contract_unpruned_and_fastv(model_dir, image, capsys):
    code, out, err = run_cli(capsys, "--model", model_dir, "--image", image, "--prompt", "What is this?",
                             "--max-new-tokens", "6", "--json", "--warmup", "0")
    assert code == 0, err
    r = json.loads(out)  # exactly one JSON object on stdout
    assert set(r) >= {"text", "prompt_ids", "output_ids", "num_visual_tokens", "kept_visual_indices", "timings"}
    n_v = (64 // 16) ** 2
    assert r["num_visual_tokens"] == n_v
    assert r["prompt_ids"].count(4) == n_v  # image placeholders expanded
    assert r["kept_visual_indices"] == list(range(n_v))
    assert 1 <= len(r["output_ids"]) <= 6
    assert set(r["timings"]) >= {"prefill_s", "decode_s", "tokens_per_s"}
    assert r["random_weights"] is True

    code, out, err = run_cli(capsys, "--model", model_dir, "--image", image, "--prompt", "What is this?",
                             "--max-new-tokens", "6", "--json", "--warmup", "0", "--method", "fastv", "--keep", "5",
                             "--layer", "1")
    assert code == 0, err
    p = json.loads(out)
    assert len(p["kept_visual_indices"]) == 5
    assert p["kept_visual_indices"] == sorted(p["kept_visual_indices"])
    assert p["prompt_ids"] == r["prompt_ids"]


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--image", "/nonexistent/cat.png"], "image not found"),
        (["--image", "CORRUPT"], "cannot read image"),
        (["--method", "fastv", "--keep", "0"], "argument --keep: must be ≥ 1, got 0"),
        (["--method", "fastv", "--keep", "17"], "keep must be between 1"),
        (["--method", "fastv", "--keep-ratio", "1.5"], "argument --keep-ratio: must be in (0, 1], got 1.5"),
        (["--method", "fastv", "--keep", "4", "--layer", "3"], "layer K must be in [1, 2]"),
        (["--method", "fastv", "--keep", "4", "--layer", "0"], "layer K must be in [1, 2]"),
        (["--max-new-tokens", "120"], "exceeds the model's 160 positions"),
        (["--method", "nosuch", "--keep", "4"], "unknown pruning method"),
        (["--model", "/nonexistent/model"], "/nonexistent/model"),
    ],
)
def test_bad_input_exits_2_with_a_message(model_dir, image, tmp_path, capsys, extra, needle):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    args = {"--model": model_dir, "--image": image, "--prompt": "What is this?"}
    flags = []
    for i, a in enumerate(extra):
        if a in args and i + 1 < len(extra):
            args[a] = extra[i + 1] if extra[i + 1] != "CORRUPT" else str(corrupt)
        elif i == 0 or extra[i - 1] not in args:
            flags.append(a)
    argv = [x for kv in args.items() for x in kv] + flags + ["--warmup", "0"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert needle in err, err
    assert "Traceback" not in err and out == ""


def test_console_script_bad_input_no_traceback(model_dir):
    exe = os.path.join(os.path.dirname(sys.executable), "vtp-generate")
    res = subprocess.run([exe, "--model", model_dir, "--image", "/nope.png", "--prompt", "hi"],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "image not found: /nope.png" in res.stderr and "Traceback" not in res.stderr


# ---- DyRate --------------------------------------------------------------------------------------------------

DYRATE_RATES = 4


def _predictor(path, rate: int, heads: int = 4, layer: int = 1) -> str:
    """A predictor that always picks rate index ``rate``: zero weights, the largest bias at ``rate``."""
    from vtp_jax.pruning.dyrate import RatePredictor

    bias = np.zeros(DYRATE_RATES, np.float32)
    bias[rate] = 1.0
    RatePredictor(np.zeros((heads * 4, DYRATE_RATES), np.float32), bias, layer, {"note": "test"}).save(str(path))
    return str(path)


def _strict_json(text: str) -> dict:
    def no_constants(name):
        raise AssertionError(f"non-JSON constant {name} in the output")

    return json.loads(text, parse_constant=no_constants)


def _check_dyrate_json(r: dict, rate: int) -> None:
    from vtp_jax.pruning import dyrate

    n_v = r["num_visual_tokens"]
    counts = dyrate.keep_counts(n_v, DYRATE_RATES)
    kpt = r["kept_per_token"]
    assert len(kpt) == len(r["output_ids"]) >= 1  # one entry per generated token
    assert kpt[0] == n_v  # the prefill's token saw every visual token
    assert kpt[1:] == [int(counts[rate])] * (len(kpt) - 1)  # the prefill's decision holds for every decode step
    st = r["stages"]["dyrate"]
    assert st["kept_per_token"] == kpt and len(st["rate_per_token"]) == len(kpt)
    assert st["rate_per_token"] == [rate] * len(kpt)
    assert st["rates"] == pytest.approx([k / DYRATE_RATES for k in range(DYRATE_RATES)]) and st["layer"] == 1
    assert r["kept_visual_indices"] == list(range(n_v))  # the prefill kept them all
    if len(kpt) >= 2:
        assert r["decode_visual_kv_cut"] == pytest.approx(1 - counts[rate] / n_v)
    else:
        assert r["decode_visual_kv_cut"] is None


def test_dyrate_json_kept_per_token(model_dir, image, tmp_path, capsys):
    pred = _predictor(tmp_path / "p.safetensors", DYRATE_RATES - 1)
    code, out, err = run_cli(capsys, "--model", model_dir, "--image", image, "--prompt", "What is this?",
                             "--max-new-tokens", "6", "--json", "--warmup", "0", "--method", "dyrate",
                             "--predictor", pred)
    assert code == 0, err
    r = _strict_json(out)
    assert r["method"] == "dyrate"
    assert len(r["kept_per_token"]) >= 2  # this checkpoint and prompt decode past the first token: the cut is defined
    _check_dyrate_json(r, DYRATE_RATES - 1)

    # text mode reports the cut next to the kept count
    code, out, err = run_cli(capsys, "--model", model_dir, "--image", image, "--prompt", "What is this?",
                             "--max-new-tokens", "6", "--warmup", "0", "--method", "dyrate", "--predictor", pred)
    assert code == 0, err
    assert "[dyrate] kept 16/16 visual tokens" in out
    assert ("decode visual KV cut 75.0%" in out) == (r["decode_visual_kv_cut"] is not None)


def test_dyrate_predictor_default_from_model_dir(model_dir, image, tmp_path, capsys):
    import shutil

    from vtp_jax.pruning.dyrate import PREDICTOR_FILE

    local = shutil.copytree(model_dir, tmp_path / "model")
    _predictor(local / PREDICTOR_FILE, 2)
    args = ["--model", str(local), "--image", image, "--prompt", "What is this?", "--max-new-tokens", "4",
            "--json", "--warmup", "0", "--method", "dyrate"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    _check_dyrate_json(_strict_json(out), 2)  # the model folder's predictor
    code, out, err = run_cli(capsys, *args, "--predictor", _predictor(tmp_path / "p1.safetensors", 1))
    assert code == 0, err
    _check_dyrate_json(_strict_json(out), 1)  # --predictor wins over the default


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--method", "dyrate"], "DyRate needs a trained predictor: pass --predictor PATH"),
        (["--method", "dyrate", "--predictor", "/nonexistent/p.safetensors"], "not found"),
        (["--method", "dyrate", "--predictor", "JUNK"], "is not a vtp-train-dyrate file"),
        (["--method", "dyrate", "--predictor", "HEADS8"], "reads 8 heads; this decoder has 4"),
        (["--method", "dyrate", "--predictor", "GOOD", "--keep", "4"], "takes no --keep / --keep-ratio"),
        (["--method", "dyrate", "--predictor", "GOOD", "--layer", "3"], "probe layer must be in [0, 2]"),
        (["--method", "fastv", "--predictor", "GOOD"], "does not take option(s) predictor"),
    ],
)
def test_dyrate_bad_input_exits_2(model_dir, image, tmp_path, capsys, extra, needle):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    files = {"JUNK": str(tmp_path / "junk.safetensors"), "GOOD": _predictor(tmp_path / "good.safetensors", 1),
             "HEADS8": _predictor(tmp_path / "h8.safetensors", 1, heads=8)}
    code, out, err = run_cli(capsys, "--model", model_dir, "--image", image, "--prompt", "What is this?",
                             "--max-new-tokens", "4", "--warmup", "0", *[files.get(a, a) for a in extra])
    assert code == 2
    assert needle in err, err
    assert "Traceback" not in err and out == ""
