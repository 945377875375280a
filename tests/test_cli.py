"""``vtp-generate``: the JSON contract and bad input (exit code 2, a clear message, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vtp_jax import cli

SIZES = dict(
    image_size=64, patch_size=16, vision_hidden=32, vision_layers=2, vision_heads=4, vision_mlp=64,
    text_hidden=64, text_layers=3, text_heads=4, text_kv_heads=2, text_mlp=128, vocab_size=300,
    max_position_embeddings=160,
)


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


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


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
        (["--method", "fastv", "--keep", "0"], "keep must be between 1"),
        (["--method", "fastv", "--keep", "17"], "keep must be between 1"),
        (["--method", "fastv", "--keep-ratio", "1.5"], "keep ratio must be in"),
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
