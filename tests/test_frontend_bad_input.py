"""Bad input to every front end (issue 17, cases 1, 2, 3, 7, 9, 14, 15 and their siblings): exit code 2, a one-line
message naming the flag / file / value, no traceback — and no silently wrong answer.

Groups: tracebacks (decompression bombs, seeds out of range, non-finite sampler settings), silent wrong results
(high-bit-depth and other image modes against NumPy references, sampler settings that used to run greedy or as one
block), messages and output paths (``--out`` / ``--json`` checked before any work, the demo's ``--out``).

Argument errors are caught by argparse before any model loads, so most cases need no checkpoint; one tiny converted
LLaVA (module fixture) serves the ``vtp-eval`` JSONL image case.
"""

from __future__ import annotations

import argparse
import colorsys
import io
import json
import math
import os
import struct
import subprocess
import sys
import types
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from eval import bench, evaluate, tasks
from vtp_jax import argtypes, cli, demo, processing
from vtp_jax.generation import sampling
from vtp_jax.training import dyrate as dyrate_train
from vtp_jax.training.testbed import cli as testbed_train

BIG = "99999999999999999999"
FRONT_ENDS = {"vtp-generate": cli.main, "vtp-eval": evaluate.main, "vtp-bench": bench.main,
              "vtp-train-dyrate": dyrate_train.main, "vtp-train-testbed": testbed_train.main, "vtp-demo": demo.main}
# The flags each front end requires, with values that are never reached (argparse fails first).
REQUIRED = {"vtp-generate": ["--model", "/nonexistent/model", "--image", "/nonexistent.png", "--prompt", "hi"],
            "vtp-eval": ["--model", "/nonexistent/model", "--task", "jsonl:/nonexistent.jsonl"],
            "vtp-bench": ["--preset", "micro", "--no-torch"], "vtp-train-dyrate": ["--model", "/nonexistent/model"],
            "vtp-train-testbed": ["--family", "llava", "--out", "/nonexistent/out"], "vtp-demo": []}


def _main(prog: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """Runs a front end's main in this process → (exit code, stdout, stderr); SystemExit counts as its code."""
    try:
        code = FRONT_ENDS[prog](REQUIRED[prog] + argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def _assert_usage_error(code, out, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err and out == "", err
    last = err.strip().splitlines()[-1]  # the one-line message
    for n in needles:
        assert n in last, last


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _claim_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR width / height replaced (and the chunk's CRC fixed): the header claims a size the
    pixel data does not have."""
    b = bytearray(png)
    assert b[12:16] == b"IHDR"
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    return bytes(b)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """small.png (50×40 RGB), bomb.png (a tiny PNG whose header claims 14000×14000), gray16.png (16-bit gray)."""
    root = tmp_path_factory.mktemp("bad_images")
    rng = np.random.default_rng(0)
    (root / "small.png").write_bytes(_png_bytes(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)))
    (root / "bomb.png").write_bytes(_claim_size(_png_bytes(np.zeros((8, 8), np.uint8)), 14000, 14000))
    gray = (np.arange(40 * 50, dtype=np.uint32).reshape(40, 50) * 32).astype(np.uint16)
    Image.fromarray(gray).save(root / "gray16.png")
    return root


# =====================================================================================================================
# Tracebacks today
# =====================================================================================================================

BAD_FLAGS = [
    # case 2: seeds out of range (OverflowError before)
    ("vtp-generate", ["--seed", BIG], "--seed", "must be in [0, 4294967295]"),
    ("vtp-generate", ["--seed", "-1"], "--seed", "must be in [0, 4294967295]"),
    ("vtp-eval", ["--seed", BIG], "--seed", "must be in [0, 4294967295]"),
    ("vtp-eval", ["--task-seed", BIG], "--task-seed", "must be in [0, 4294967295]"),
    ("vtp-train-dyrate", ["--seed", BIG], "--seed", "must be in [0, 4294967295]"),
    ("vtp-train-testbed", ["--seed", BIG], "--seed", "must be in [0, 4294967295]"),
    # case 3 / 9: non-finite or negative sampler settings, both families' flags
    ("vtp-generate", ["--cfg", "nan", "--json"], "--cfg", "must be a finite number, got nan"),
    ("vtp-generate", ["--cfg", "inf"], "--cfg", "must be a finite number"),
    ("vtp-generate", ["--temperature", "nan"], "--temperature", "must be a finite number, got nan"),
    ("vtp-generate", ["--temperature", "-1"], "--temperature", "must be ≥ 0, got -1.0"),
    ("vtp-generate", ["--top-p", "nan"], "--top-p", "must be a finite number"),
    ("vtp-generate", ["--top-p", "0"], "--top-p", "must be in (0, 1], got 0.0"),
    ("vtp-generate", ["--block-length", "0"], "--block-length", "must be ≥ 1, got 0"),
    ("vtp-generate", ["--gen-length", "-4"], "--gen-length", "must be ≥ 1"),
    ("vtp-generate", ["--steps", "0"], "--steps", "must be ≥ 1"),
    ("vtp-generate", ["--max-new-tokens", "0"], "--max-new-tokens", "must be ≥ 1"),
    ("vtp-eval", ["--cfg", "nan"], "--cfg", "must be a finite number"),
    ("vtp-eval", ["--temperature", "inf"], "--temperature", "must be a finite number"),
    ("vtp-eval", ["--top-p", "1.5"], "--top-p", "must be in (0, 1]"),
    ("vtp-eval", ["--block-length", "0"], "--block-length", "must be ≥ 1"),
    # case 15: clamped counts
    ("vtp-generate", ["--runs", "0"], "--runs", "must be ≥ 1, got 0"),
    ("vtp-generate", ["--warmup", "-1"], "--warmup", "must be ≥ 0, got -1"),
    ("vtp-eval", ["--warmup", "-1"], "--warmup", "must be ≥ 0, got -1"),
    ("vtp-bench", ["--runs", "0"], "--runs", "must be ≥ 1, got 0"),
    ("vtp-bench", ["--warmup", "-1"], "--warmup", "must be ≥ 0, got -1"),
    # case 1: the flag itself
    ("vtp-generate", ["--max-image-pixels", "0"], "--max-image-pixels", "must be ≥ 1"),
    ("vtp-eval", ["--max-image-pixels", "1e9"], "--max-image-pixels", "'1e9' is not a whole number"),
    # siblings: every numeric flag of every front end
    ("vtp-generate", ["--keep", "0"], "--keep", "must be ≥ 1"),
    ("vtp-generate", ["--keep-ratio", "nan"], "--keep-ratio", "must be a finite number"),
    ("vtp-generate", ["--tau", "1.5"], "--tau", "must be in [0, 1]"),
    ("vtp-generate", ["--layer", "-1"], "--layer", "must be ≥ 0"),
    ("vtp-generate", ["--cls-layer", "x"], "--cls-layer", "'x' is not a whole number"),
    ("vtp-eval", ["--limit", "0"], "--limit", "must be ≥ 1"),
    ("vtp-eval", ["--batch-size", "0"], "--batch-size", "must be ≥ 1"),
    ("vtp-eval", ["--keep-ratio", "0"], "--keep-ratio", "must be in (0, 1]"),
    ("vtp-eval", ["--tau", "nan"], "--tau", "must be a finite number"),
    ("vtp-bench", ["--max-new-tokens", "1"], "--max-new-tokens", "must be ≥ 2"),
    ("vtp-bench", ["--batch", "0"], "--batch", "must be ≥ 1"),
    ("vtp-bench", ["--fastv-layer", "0"], "--fastv-layer", "must be ≥ 1"),
    ("vtp-bench", ["--torch-threads", "0"], "--torch-threads", "must be ≥ 1"),
    ("vtp-bench", ["--text-hidden", "-64"], "--text-hidden", "must be ≥ 1"),
    ("vtp-train-dyrate", ["--lr", "nan"], "--lr", "must be a finite number"),
    ("vtp-train-dyrate", ["--tau", "0"], "--tau", "must be > 0"),
    ("vtp-train-dyrate", ["--lam", "-1"], "--lam", "must be ≥ 0"),
    ("vtp-train-dyrate", ["--layer", "-2"], "--layer", "must be ≥ 0"),
    ("vtp-train-testbed", ["--lr", "inf"], "--lr", "must be a finite number"),
    ("vtp-train-testbed", ["--eval-every", "0"], "--eval-every", "must be ≥ 1"),
    ("vtp-train-testbed", ["--weight-decay", "nan"], "--weight-decay", "must be a finite number"),
    ("vtp-train-testbed", ["--warmup", "-1"], "--warmup", "must be ≥ 0"),
    ("vtp-train-testbed", ["--steps", "0"], "--steps", "must be ≥ 1"),
    ("vtp-train-testbed", ["--sizes", '{"foo": 1}'], "--sizes", "unknown size 'foo'"),
    ("vtp-train-testbed", ["--sizes", "[1]"], "--sizes", "expected a JSON object of sizes, got list"),
    ("vtp-train-testbed", ["--sizes", '{"text_heads": 0}'], "--sizes", "text_heads must be a whole number ≥ 1, got 0"),
    ("vtp-train-testbed", ["--sizes", "{"], "--sizes", "not valid JSON"),
    ("vtp-train-testbed", ["--sizes", '{"rope_theta": -1}'], "--sizes", "rope_theta must be a finite number > 0"),
    ("vtp-demo", ["--max-new-tokens", "0"], "--max-new-tokens", "must be ≥ 1"),
    ("vtp-demo", ["--steps", "x"], "--steps", "'x' is not a whole number"),
]


@pytest.mark.parametrize("prog, argv, flag, why", BAD_FLAGS, ids=[f"{p} {' '.join(a)}" for p, a, _, _ in BAD_FLAGS])
def test_bad_numbers_are_usage_errors(prog, argv, flag, why, capsys):
    code, out, err = _main(prog, argv, capsys)
    _assert_usage_error(code, out, err, f"{prog}: error: argument {flag}", why)


@pytest.mark.parametrize("prog, argv, needle", [
    ("vtp-train-dyrate", ["--describe", "nan"], "--describe must be in [0, 1], got nan"),
    ("vtp-train-dyrate", ["--rates", "1"], "--rates is too small: 1"),
    ("vtp-train-testbed", ["--family", "llada_v", "--full-mask", "nan"], "--full-mask is a fraction in (0, 1]"),
])
def test_flags_checked_after_parsing_refuse_nan_too(prog, argv, needle, capsys):
    """Flags whose range the trainers' main() checks with its own message (kept: their tests pin it)."""
    code, out, err = _main(prog, argv, capsys)
    _assert_usage_error(code, out, err, f"{prog}: error: {needle}")


@pytest.mark.parametrize("extra, needles", [
    ([], ["bomb.png is 14000×14000 = 196,000,000 pixels", "over the limit of 89,478,485 pixels", "--max-image-pixels"]),
    (["--max-image-pixels", "1000"], ["bomb.png is 14000×14000", "over the limit of 1,000 pixels"]),
])
def test_generate_refuses_a_decompression_bomb_from_its_header(images, extra, needles, capsys):
    """A PNG whose header claims 14000×14000 (the pixel data is 8×8): refused before decoding, before any model."""
    code, out, err = _main("vtp-generate", ["--image", str(images / "bomb.png"), *extra], capsys)  # last --image wins
    _assert_usage_error(code, out, err, "vtp-generate: error: image ", *needles)


def test_generate_max_image_pixels_lowers_the_limit(images, capsys):
    code, out, err = _main("vtp-generate", ["--image", str(images / "small.png"), "--max-image-pixels", "1999"],
                           capsys)
    _assert_usage_error(code, out, err, "small.png is 50×40 = 2,000 pixels", "over the limit of 1,999 pixels")


def test_load_image_one_rule_and_no_pil_warning(images, monkeypatch):
    """One rule: width × height > limit is refused, anything up to the limit opens — no DecompressionBombWarning
    in PIL's band between 1× and 2× its limit, no DecompressionBombError above it; PIL's limit is restored."""
    small = str(images / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # PIL alone would warn for this 2000-pixel image
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert processing.load_image(small, max_pixels=2000).size == (50, 40)  # at the limit: opens
        with pytest.raises(processing.InputError, match=r"over the limit of 1,500 pixels"):
            processing.load_image(small)  # the default is PIL's limit as it is now
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL alone would raise (> 2×)
        assert processing.load_image(small, max_pixels=10**6).mode == "RGB"
    assert Image.MAX_IMAGE_PIXELS == 100


def test_console_script_seed_overflow_no_traceback():
    exe = os.path.join(os.path.dirname(sys.executable), "vtp-generate")
    res = subprocess.run([exe, *REQUIRED["vtp-generate"], "--seed", BIG], capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    assert f"argument --seed: must be in [0, 4294967295], got {BIG}" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("settings, needle", [
    (dict(temperature=float("nan")), "temperature must be a finite number, got nan"),
    (dict(temperature=-1.0), "temperature must be ≥ 0"),
    (dict(top_p=float("inf")), "top_p must be a finite number"),
    (dict(top_p=0.0), "top_p must be in (0, 1]"),
    (dict(seed=2**64), "seed must be in [0, 4294967295]"),
    (dict(seed=1.5), "seed must be a whole number"),
    (dict(max_new_tokens=0), "max_new_tokens must be ≥ 1"),
])
def test_sampler_settings_one_python_check_for_both_families(settings, needle):
    """The Python API: both generators call check_sampler_settings first (before touching the model), so a bad
    setting raises SamplerError instead of running greedy or crashing later."""
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator
    from vtp_jax.generation.diffusion import DiffusionGenerator

    with pytest.raises(sampling.SamplerError, match=None) as e:
        sampling.check_sampler_settings(**settings)
    assert needle in str(e.value)
    ar = {"max_new_tokens": 4, **settings}
    with pytest.raises(sampling.SamplerError):
        AutoregressiveGenerator.generate_arrays(object(), None, None, None, **ar)
    if set(settings) <= {"temperature", "seed"}:
        with pytest.raises(sampling.SamplerError):
            DiffusionGenerator.generate_arrays(object(), None, None, {}, **settings)
    sampling.check_sampler_settings(temperature=0.7, top_p=1.0, seed=np.int64(argtypes.SEED_MAX), max_new_tokens=1)


@pytest.mark.parametrize("field, value, needle", [
    ("cfg", float("nan"), "cfg must be a finite number ≥ 0, got nan"),
    ("cfg", float("inf"), "cfg must be a finite number ≥ 0"),
    ("block_length", 0, "must be ≥ 1"),
    ("steps", 2.0, "steps must be a whole number"),
])
def test_diffusion_config_refuses_non_finite_and_zero(field, value, needle):
    from vtp_jax.generation.diffusion import DiffusionConfig, DiffusionError

    with pytest.raises(DiffusionError) as e:
        DiffusionConfig(**{"gen_length": 8, "block_length": 8, "steps": 4, field: value}).validate()
    assert needle in str(e.value)


def test_namespace_from_python_is_checked_like_the_command_line():
    """cli.run / vtp-eval with a Namespace built in Python (no argparse): the same rules, the flag named."""
    ns = argparse.Namespace(temperature=float("nan"), seed=0)
    with pytest.raises(processing.InputError, match=r"--temperature must be a finite number"):
        cli.check_flag_values(ns)
    with pytest.raises(processing.InputError, match=r"--seed must be in \[0, 4294967295\]"):
        cli.check_flag_values(argparse.Namespace(seed=2**40))


# =====================================================================================================================
# Silently wrong today
# =====================================================================================================================

def test_16_bit_grayscale_png_is_scaled_not_white(images):
    """Case 7: the 16-bit PNG (values 0 … 63968) was all 255 after PIL's clipping convert."""
    img = processing.load_image(str(images / "gray16.png"))
    got = np.asarray(img)
    raw = np.asarray(Image.open(images / "gray16.png")).astype(np.float64)
    want = np.round(raw * 255 / 65535).astype(np.uint8)
    assert img.mode == "RGB" and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.repeat(want[..., None], 3, axis=-1))
    assert got.min() == 0 and 240 < got.max() < 255 and len(np.unique(got)) > 200


H, W = 6, 9
PALETTE = np.random.default_rng(7).integers(0, 256, 256 * 3).astype(np.uint8)


def _over_white(rgb, alpha):
    a = alpha.astype(np.float64)[..., None] / 255
    return rgb.astype(np.float64) * a + 255 * (1 - a)


def _case(mode: str):
    """(PIL image of ``mode``, NumPy reference RGB float [H, W, 3], tolerance in levels). Random pixels, seeded by
    the mode's name (the same whatever tests run)."""
    RNG = np.random.default_rng(zlib.crc32(mode.encode()))
    u8 = lambda c: RNG.integers(0, 256, (H, W, c), dtype=np.uint8)  # noqa: E731
    gray3 = lambda g: np.repeat(np.asarray(g, np.float64)[..., None], 3, axis=-1)  # noqa: E731
    if mode == "1":
        bits = RNG.integers(0, 2, (H, W)).astype(bool)
        return Image.fromarray(bits), gray3(bits * 255.0), 0
    if mode in ("L", "RGB", "RGBX", "CMYK", "YCbCr", "HSV", "LAB", "LA", "La", "RGBA", "RGBa"):
        c = {"L": 1, "LA": 2, "La": 2, "RGB": 3, "YCbCr": 3, "HSV": 3, "LAB": 3}.get(mode, 4)
        a = u8(c)
        img = Image.frombytes(mode, (W, H), a.tobytes())
        f = a.astype(np.float64)
        if mode == "L":
            return img, gray3(f[..., 0]), 0
        if mode in ("RGB", "RGBX"):
            return img, f[..., :3], 0
        if mode == "CMYK":
            return img, (255 - f[..., :3]) * (255 - f[..., 3:]) / 255, 1
        if mode == "YCbCr":
            y, cb, cr = f[..., 0], f[..., 1] - 128, f[..., 2] - 128
            rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
            return img, np.clip(rgb, 0, 255), 2
        if mode == "HSV":
            rgb = [[colorsys.hsv_to_rgb(*(f[i, j] / 255)) for j in range(W)] for i in range(H)]
            return img, np.asarray(rgb) * 255, 2
        if mode == "LAB":  # sRGB colours (in gamut) → L*a*b* bytes; the reference: skimage's own lab2rgb (D65)
            from skimage.color import lab2rgb, rgb2lab

            lab = rgb2lab(f / 255, illuminant="D65")
            q = np.clip(np.round(np.stack([lab[..., 0] * 255 / 100, lab[..., 1] + 128, lab[..., 2] + 128], -1)), 0, 255)
            img = Image.frombytes("LAB", (W, H), q.astype(np.uint8).tobytes())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # skimage warns about negative Z values it clips
                ref = lab2rgb(np.stack([q[..., 0] * 100 / 255, q[..., 1] - 128, q[..., 2] - 128], -1), illuminant="D65")
            return img, ref * 255, 1
        if mode == "LA":
            return img, _over_white(gray3(f[..., 0]), a[..., 1]), 1
        if mode == "RGBA":
            return img, _over_white(f[..., :3], a[..., 3]), 1
        # premultiplied: the stored colour is colour · alpha / 255, so over white it is stored + 255 · (1 − alpha)
        alpha = a[..., -1:].astype(np.float64)
        pre = np.minimum(f[..., :-1], alpha)  # a premultiplied colour never exceeds its alpha
        img = Image.frombytes(mode, (W, H), np.concatenate([pre, alpha], -1).astype(np.uint8).tobytes())
        ref = pre + 255 - alpha
        return img, ref if mode == "RGBa" else gray3(ref[..., 0]), 2
    if mode in ("P", "PA"):
        idx = RNG.integers(0, 256, (H, W), dtype=np.uint8)
        rgb = PALETTE.reshape(256, 3)[idx].astype(np.float64)
        if mode == "P":
            img = Image.frombytes("P", (W, H), idx.tobytes())
            img.putpalette(PALETTE.tolist())
            return img, rgb, 0
        alpha = RNG.integers(0, 256, (H, W), dtype=np.uint8)
        img = Image.frombytes("PA", (W, H), np.stack([idx, alpha], -1).tobytes())
        img.putpalette(PALETTE.tolist())
        return img, _over_white(rgb, alpha), 1
    if mode.startswith("I;16"):
        v = RNG.integers(0, 65536, (H, W)).astype(np.uint16)
        dtype = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}[mode]
        return Image.frombytes(mode, (W, H), v.astype(dtype).tobytes()), gray3(v.astype(np.float64) * 255 / 65535), 0
    if mode in ("I", "I-signed"):
        v = RNG.integers(0, 65536, (H, W)) if mode == "I" else RNG.integers(-70000, 70000, (H, W))
        v[0, 0], v[0, 1] = v.min(), v.max()
        lo, hi = (0, 65535) if mode == "I" else (v.min(), v.max())
        img = Image.frombytes("I", (W, H), v.astype("=i4").tobytes())
        return img, gray3((v - lo) * 255 / (hi - lo)), 0
    # F: [0, 1]; [0, 255]; a wide range (stretched); with NaN and ±inf
    lo, hi = {"F": (0, 1), "F-255": (0, 255), "F-wide": (-3e4, 5e4), "F-nonfinite": (-2, 7)}[mode]
    v = RNG.uniform(lo, hi, (H, W)).astype(np.float32).astype(np.float64)  # the values the image holds
    if mode == "F":
        ref = v * 255
    elif mode == "F-255":
        v[0, 0] = 200.5
        ref = v
    else:
        ref = (v - v.min()) * 255 / (v.max() - v.min())
    if mode == "F-nonfinite":
        v[1, :3], ref[1, :3] = [np.nan, np.inf, -np.inf], [0, 255, 0]
        finite = np.isfinite(v)
        ref[finite] = (v[finite] - v[finite].min()) * 255 / (v[finite].max() - v[finite].min())
    return Image.frombytes("F", (W, H), v.astype("=f4").tobytes()), gray3(ref), 0


MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I",
         "I-signed", "I;16", "I;16B", "I;16L", "I;16N", "F", "F-255", "F-wide", "F-nonfinite"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_to_8_bit_rgb_against_numpy(mode):
    img, ref, tol = _case(mode)
    got = processing.to_rgb(img)
    assert got.mode == "RGB" and got.size == (W, H)
    diff = np.abs(np.asarray(got).astype(np.float64) - np.round(ref))
    assert diff.max() <= tol, (mode, diff.max())


def test_every_mode_pil_knows_is_covered():
    known = set(getattr(Image, "MODES", [])) or set(MODES)
    assert known <= {m.split("-")[0] for m in MODES}, known - set(MODES)


def test_transparency_key_and_in_memory_records_are_converted():
    """An RGB image with a tRNS colour key composites over white; an eval record holding an in-memory 16-bit image
    (the Python API) is scaled like a file."""
    img = Image.new("RGB", (2, 1), (10, 20, 30))
    img.info["transparency"] = (10, 20, 30)
    assert np.asarray(processing.to_rgb(img)).tolist() == [[[255, 255, 255]] * 2]
    rec = tasks.Record(question="q", answers=["a"], metric="exact_match", id="x",
                       image=Image.frombytes("I;16", (1, 1), np.array([65535], "<u2").tobytes()))
    assert np.asarray(rec.load_image()).tolist() == [[[255, 255, 255]]]
    rec.image = Image.frombytes("I;16", (1, 1), np.array([32896], "<u2").tobytes())
    assert np.asarray(rec.load_image()).tolist() == [[[128, 128, 128]]]


def test_block_length_zero_is_not_the_whole_generation():
    """runtime.diffusion_config: None means one block; 0 is refused (it used to mean 'the whole generation')."""
    from vtp_jax.generation.diffusion import DiffusionError
    from vtp_jax.runtime import diffusion_config

    cfg = types.SimpleNamespace(mask_token_id=5, text=types.SimpleNamespace(vocab_size=10))
    proc = types.SimpleNamespace(token_ids=lambda tokens: (), tokenizer=types.SimpleNamespace(eos_token_id=None))
    kw = dict(gen_length=8, steps=4, remasking="low_confidence", cfg_scale=0.0)
    assert diffusion_config(cfg, proc, block_length=None, **kw).block_length == 8
    with pytest.raises(DiffusionError, match="block_length and steps must be ≥ 1, got 8, 0, 4"):
        diffusion_config(cfg, proc, block_length=0, **kw)
    heard = []  # legal but suspect: more steps than tokens — a warning, not silence
    diffusion_config(cfg, proc, block_length=None, **{**kw, "steps": 16}, warn=heard.append)
    assert len(heard) == 1 and "--steps 16 exceeds --gen-length 8" in heard[0]
    diffusion_config(cfg, proc, block_length=None, **kw, warn=heard.append)
    assert len(heard) == 1


# =====================================================================================================================
# Messages and output paths
# =====================================================================================================================

@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    from convert import convert
    from vtp_jax.testbed.hf_llava import build_tiny_llava

    root = tmp_path_factory.mktemp("bad_input_llava")
    hf = build_tiny_llava(str(root / "hf"), image_size=32, patch_size=16, vision_hidden=32, vision_layers=1,
                          vision_heads=4, vision_mlp=64, text_hidden=32, text_layers=2, text_heads=4,
                          text_kv_heads=4, text_mlp=64, vocab_size=300, max_position_embeddings=256)
    return convert(hf, str(root / "jax"), progress=False)


@pytest.mark.parametrize("image, extra, needles", [
    ("bomb.png", [], ["record q0: image ", "bomb.png is 14000×14000 = 196,000,000 pixels",
                      "over the limit of 89,478,485 pixels", "--max-image-pixels"]),
    ("small.png", ["--max-image-pixels", "1999"], ["record q0: image ", "small.png is 50×40 = 2,000 pixels",
                                                   "over the limit of 1,999 pixels"]),
])
def test_eval_jsonl_image_over_the_limit(llava_dir, images, tmp_path, image, extra, needles, capsys):
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"image": str(images / image), "question": "What?", "answer": "x",
                                "metric": "exact_match", "id": "q0"}) + "\n")
    code = evaluate.main(["--model", llava_dir, "--task", f"jsonl:{task}", "--no-progress", "--max-new-tokens", "2",
                          *extra])
    out, err = capsys.readouterr()
    _assert_usage_error(code, out, err, "vtp-eval: error: ", *needles)


def test_processor_gets_the_scaled_image_not_a_white_one(llava_dir, images):
    """End to end through the checkpoint's own processor (transformers would clip a 16-bit image to white): a 16-bit
    image in the Python API gives the pixel values of its 8-bit equivalent."""
    from vtp_jax import memory

    cfg, _, _ = memory.model_config(llava_dir)
    proc = processing.load_processor(llava_dir, cfg)
    gray16 = Image.open(images / "gray16.png")
    eight = np.round(np.asarray(gray16).astype(np.float64) * 255 / 65535).astype(np.uint8)
    eight = Image.fromarray(eight).convert("RGB")
    got = proc([gray16], ["What?"]).pixel_values
    np.testing.assert_allclose(got, proc([eight], ["What?"]).pixel_values, atol=1e-6)
    white = proc([Image.new("RGB", gray16.size, (255, 255, 255))], ["What?"]).pixel_values
    assert np.abs(got - white).max() > 1.0


SWEEP = ["--model", "/nonexistent/model", "--task", "jsonl:/nonexistent.jsonl", "--sweep", "--no-progress"]


@pytest.mark.parametrize("setup, needle", [
    ("results_csv_is_a_folder", "results.csv exists and is not a file"),
    ("not_writable", "--out: cannot write into"),
    ("parent_not_writable", "--out: cannot write into"),
    ("parent_is_a_file", "is not a folder"),
])
def test_eval_sweep_out_checked_before_the_sweep(tmp_path, monkeypatch, capsys, setup, needle):
    """Case 14: --out DIR is tried for writing before the task or the model is read (both missing here: an error
    about them would mean the check came too late); nothing is left in DIR."""
    import tempfile

    out = tmp_path / "out"
    out.mkdir()
    target = out
    if setup == "results_csv_is_a_folder":
        (out / "results.csv").mkdir()
    elif setup in ("not_writable", "parent_not_writable"):
        if setup == "parent_not_writable":
            target = out / "new" / "deeper"

        def refuse(*a, **k):  # a read-only folder (root ignores permission bits, so they cannot stand in)
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    else:
        (out / "file").write_text("mine")
        target = out / "file" / "sub"
    before = sorted(os.listdir(out))
    code = evaluate.main([*SWEEP, "--out", str(target)])
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    assert needle in err and "vtp-eval: error: --out" in err, err
    assert sorted(os.listdir(out)) == before  # no probe file left behind, nothing created


def test_eval_out_readonly_folder_without_root(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the monkeypatched case above covers the check")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        code = evaluate.main([*SWEEP, "--out", str(out)])
    finally:
        out.chmod(0o700)
    assert code == 2 and "--out: cannot write into" in capsys.readouterr().err


@pytest.mark.parametrize("json_path, needle", [
    ("/nonexistent/dir/bench.json", "--json: folder /nonexistent/dir does not exist"),
    ("DIR", "is a folder"),
])
def test_bench_json_checked_before_the_run(tmp_path, capsys, json_path, needle):
    """Sibling of case 14: vtp-bench wrote --json only after the whole benchmark."""
    path = str(tmp_path) if json_path == "DIR" else json_path
    code = bench.main(["--preset", "micro", "--no-torch", "--json", path])
    out, err = capsys.readouterr()
    assert code == 2 and needle in err and "Traceback" not in err
    assert "RANDOM WEIGHTS" not in out  # nothing ran


def test_bench_full_size_errors_no_traceback_as_a_module(capsys):
    """Siblings: ``--llada-image`` is held to the image pixel limit (the benchmark builds that image in memory), and
    ``python -m eval.bench`` caught no full-size BenchError (its __main__ copy had another BenchError class)."""
    argv = ["--preset", "llada-v-8b", "--no-torch", "--llada-image", "48000x64000"]
    assert bench.main(argv) == 2
    assert "--llada-image: 48000×64000 = 3,072,000,000 pixels is over the limit of 89,478,485" in capsys.readouterr().err
    res = subprocess.run([sys.executable, "-m", "eval.bench", *argv], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "vtp-bench: error: --llada-image" in res.stderr


def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path, capsys):
    """Sibling (data loss): vtp-demo --out DIR used to rmtree any DIR. A user's folder is refused and kept; an
    empty folder, a new one or one the demo made is (re)created with the demo's marker."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    code, out, err = _main("vtp-demo", ["--out", str(mine)], capsys)
    _assert_usage_error(code, out, err, "vtp-demo: error: --out", "a folder the demo did not make")
    assert (mine / "thesis.tex").read_text() == "precious"
    (tmp_path / "afile").write_text("x")
    code, out, err = _main("vtp-demo", ["--out", str(tmp_path / "afile")], capsys)
    _assert_usage_error(code, out, err, "exists and is not a folder")
    demo_dir = tmp_path / "demo"
    demo.prepare_out(str(demo_dir))
    (demo_dir / "old.txt").write_text("from the last run")
    demo.prepare_out(str(demo_dir))  # the demo's own folder: recreated
    assert sorted(os.listdir(demo_dir)) == [demo.DEMO_MARKER]


def test_seed_bounds_are_what_jax_and_numpy_take():
    """SEED_MAX is accepted by jax.random.key and numpy's default_rng (the front ends pass seeds to both)."""
    import jax

    jax.random.key(argtypes.SEED_MAX)
    np.random.default_rng(argtypes.SEED_MAX)
    assert math.log2(argtypes.SEED_MAX + 1) == 32


def test_testbed_sizes_the_readme_uses_still_parse():
    sizes = ('{"text_heads": 8, "text_hidden": 128, "text_kv_heads": 8, "text_mlp": 384, "vision_hidden": 96, '
             '"vision_mlp": 384, "rope_theta": 10000.0}')
    args = testbed_train._parser().parse_args(["--family", "llada_v", "--out", "x", "--sizes", sizes])
    assert json.loads(args.sizes)["rope_theta"] == 10000.0


# ---- output paths of the trainers (vtp_jax.paths), checked before any training ---------------------------------------
def test_trainers_check_out_before_training(tmp_path, capsys):
    from vtp_jax.training.dyrate import main as dyrate_main
    from vtp_jax.training.testbed.cli import main as testbed_main

    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    code = testbed_main(["--family", "llava", "--out", str(user), "--force", "--steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "is not a vtp-train-testbed output" in err and "Traceback" not in err
    assert (user / "notes.txt").read_text() == "keep me"

    code = testbed_main(["--family", "llava", "--out", str(user / "notes.txt" / "x"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--out: cannot create" in err and "notes.txt" in err

    code = testbed_main(["--family", "llava", "--sizes", '{"max_grid": 2}', "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert code == 2 and "max_grid do not apply to --family llava" in err and "Traceback" not in err

    code = dyrate_main(["--model", str(tmp_path), "--out", str(user), "--n", "1"])
    err = capsys.readouterr().err
    assert code == 2 and f"--out: {user} is a folder" in err
