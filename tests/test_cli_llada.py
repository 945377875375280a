"""``vtp-generate`` on LLaDA-V checkpoints: the JSON contract (unpruned and RedVTP), the LLaDA-V processor, and bad
input (exit code 2, a clear message, no traceback). The LLaVA path is covered by tests/test_cli.py."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from vtp_jax import cli
from vtp_jax.testbed import hf_llada_v

# SigLIP-style 32 px tiles of 8 px patches (16 features per tile), grids up to 3×3, anyres_max_4.
SIZES = dict(image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=4, vision_mlp=64,
             text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=4, text_mlp=128, vocab_size=320,
             max_position_embeddings=200, max_grid=3, max_num_patches=4)
FAST = ["--gen-length", "8", "--steps", "4", "--block-length", "4", "--warmup", "0"]
IMAGE_HW = (60, 90)


def _convert(root, hf_dir: str) -> str:
    from convert import convert

    return convert(hf_dir, str(root / "jax"), progress=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_llada")
    return _convert(root, hf_llada_v.build_tiny_llada_v(str(root / "hf"), **SIZES))


@pytest.fixture(scope="module")
def cfg(model_dir):
    from vtp_jax.config import config_from_hf

    with open(os.path.join(model_dir, "config.json")) as fh:
        return config_from_hf(json.load(fh))


@pytest.fixture(scope="module")
def n_v(cfg):
    """N_v of the test image, from the anyres layout (base tile + rows · (cols + 1))."""
    from vtp_jax.modeling.anyres import layout_for_config

    return layout_for_config(cfg, IMAGE_HW).num_tokens


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, IMAGE_HW + (3,), dtype=np.uint8)).save(path)
    return str(path)


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _check_common(r, cfg, n_v):
    assert set(r) >= {"text", "prompt_ids", "output_ids", "num_visual_tokens", "kept_visual_indices", "timings",
                      "family", "random_weights"}
    assert r["family"] == "llada_v" and r["random_weights"] is True
    assert r["num_visual_tokens"] == n_v
    ids = r["prompt_ids"]
    assert ids.count(cfg.image_token_id) == n_v  # <image> expanded into N_v placeholders, in one run
    first = ids.index(cfg.image_token_id)
    assert ids[first:first + n_v] == [cfg.image_token_id] * n_v
    assert ids[0] == hf_llada_v.BOS_ID  # from the chat template, not added twice
    assert len(r["output_ids"]) <= 8
    # cut after the first stop id, included (the same rule as LLaVA's EOS): no stop id before the last token
    assert not set(r["output_ids"][:-1]) & set(hf_llada_v.STOP_IDS)
    t = r["timings"]
    assert set(t) >= {"prefill_s", "decode_s", "tokens_per_s", "latency_s"}
    assert t["prefill_s"] > 0 and t["decode_s"] > 0 and t["latency_s"] == pytest.approx(t["prefill_s"] + t["decode_s"])
    d = r["diffusion"]
    assert d["gen_length"] == 8 and d["steps"] == 4 and d["block_length"] == 4
    assert sorted(d["suppress_ids"]) == sorted(hf_llada_v.SUPPRESS_IDS)
    assert set(d["stop_ids"]) == set(hf_llada_v.STOP_IDS)


def test_json_contract_unpruned_and_redvtp(model_dir, image, cfg, n_v, capsys):
    base = ["--model", model_dir, "--image", image, "--prompt", "What is this?", "--json", *FAST]
    code, out, err = run_cli(capsys, *base)
    assert code == 0, err
    r = json.loads(out)  # exactly one JSON object on stdout
    _check_common(r, cfg, n_v)
    assert r["method"] == "none"
    assert r["kept_visual_indices"] == list(range(n_v))

    code, out, err = run_cli(capsys, *base, "--method", "redvtp")  # default keep ratio 0.5
    assert code == 0, err
    p = json.loads(out)
    _check_common(p, cfg, n_v)
    kept = p["kept_visual_indices"]
    assert len(kept) == int(n_v * 0.5)
    assert kept == sorted(set(kept)) and 0 <= kept[0] and kept[-1] < n_v
    assert p["prompt_ids"] == r["prompt_ids"]

    # The RedVTP rule floors (int), where FastV's resolve_keep rounds: 0.3 · 76 = 22.8 → 22.
    code, out, err = run_cli(capsys, *base, "--method", "redvtp", "--keep-ratio", "0.3", "--original-positions")
    assert code == 0, err
    q = json.loads(out)
    assert len(q["kept_visual_indices"]) == int(n_v * 0.3) != round(n_v * 0.3)
    assert q["kept_visual_indices"] == sorted(set(q["kept_visual_indices"]))


def test_processor_expands_image_and_takes_mixed_layouts(model_dir, cfg, n_v):
    from vtp_jax.processing import InputError, LladaVProcessor, load_processor

    proc = load_processor(model_dir, cfg)
    assert isinstance(proc, LladaVProcessor)
    rng = np.random.default_rng(1)
    img = lambda hw: Image.fromarray(rng.integers(0, 255, hw + (3,), dtype=np.uint8))
    batch = proc([img(IMAGE_HW), img(IMAGE_HW)], ["What is this?", "And this one, please?"], bucket=64)
    assert batch.num_visual_tokens == n_v
    assert batch.input_ids.shape[1] % 64 == 0 and batch.input_ids.dtype == np.int32
    for b, row in enumerate(batch.prompt_ids):
        assert batch.input_ids[b, -len(row):].tolist() == row and batch.attention_mask[b].sum() == len(row)
        at = row.index(cfg.image_token_id)
        head, tail = proc.decode(row[:at]), proc.tokenizer.decode(row[at + n_v:])
        assert head == "user\n\n" and tail.startswith("\n") and tail.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    ii = batch.image_inputs
    assert set(ii) == {"pixel_values", "image_size", "grid"}
    assert ii["image_size"] == IMAGE_HW and ii["grid"] == proc.layout(IMAGE_HW).grid
    assert ii["pixel_values"].shape[0] == 2 and ii["pixel_values"].shape[2:] == (3, 32, 32)
    assert ii["pixel_values"].shape[1] >= proc.layout(IMAGE_HW).num_tiles

    # images of two layouts: one (height, width) and one grid per row, each row its own N_v placeholders
    mixed = proc([img(IMAGE_HW), img((90, 30))], ["a", "b"])
    other = proc.layout((90, 30))
    assert other != proc.layout(IMAGE_HW) and mixed.num_visual_tokens == max(n_v, other.num_tokens)
    assert mixed.image_inputs["image_size"] == (IMAGE_HW, (90, 30))
    assert mixed.image_inputs["grid"] == (proc.layout(IMAGE_HW).grid, other.grid)
    assert [r.count(cfg.image_token_id) for r in mixed.prompt_ids] == [n_v, other.num_tokens]
    with pytest.raises(InputError, match="exactly one <image>"):
        proc([img(IMAGE_HW)], ["<image> twice?"])


@pytest.fixture(scope="module")
def no_mask_dir(model_dir, tmp_path_factory):
    """A converted directory whose config.json lost its mask_token_id after conversion."""
    out = str(tmp_path_factory.mktemp("nomask") / "jax")
    shutil.copytree(model_dir, out)
    path = os.path.join(out, "config.json")
    with open(path) as fh:
        config = json.load(fh)
    config.pop("mask_token_id")
    with open(path, "w") as fh:
        json.dump(config, fh)
    return out


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    from convert import convert
    from vtp_jax.testbed.hf_llava import build_tiny_llava

    root = tmp_path_factory.mktemp("cli_llava")
    hf = build_tiny_llava(str(root / "hf"), image_size=32, patch_size=16, vision_hidden=32, vision_layers=1,
                          vision_heads=4, vision_mlp=64, text_hidden=32, text_layers=2, text_heads=4, text_kv_heads=4,
                          text_mlp=64, vocab_size=300, max_position_embeddings=128)
    return convert(hf, str(root / "jax"), progress=False)


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--gen-length", "10", "--block-length", "4"], "gen_length (10) must be divisible by block_length (4)"),
        (["--gen-length", "8", "--block-length", "4", "--steps", "3"],
         "steps (3) must be divisible by the number of blocks (2)"),
        (["--method", "redvtp", "--keep", "0"], "argument --keep: must be ≥ 1, got 0"),
        (["--method", "redvtp", "--keep", "NV+1"], "keep must be between 1 and the number of visual tokens"),
        (["--method", "redvtp", "--keep-ratio", "1.5"], "argument --keep-ratio: must be in (0, 1], got 1.5"),
        (["--method", "redvtp", "--keep-ratio", "0"], "argument --keep-ratio: must be in (0, 1], got 0.0"),
        (["--method", "redvtp", "--layer", "1"], "does not take option(s) layer"),
        (["--method", "fastv"], "pruning method 'fastv' (stage in_llm) does not apply to llada_v checkpoints"),
        (["--method", "nosuch"], "unknown pruning method"),
        (["--keep", "4"], "need a pruning --method"),
        (["--max-new-tokens", "8"], "--max-new-tokens only apply to autoregressive (llava, llava_next, qwen2_5_vl) checkpoints"),
        (["--gen-length", "120"], "plus --gen-length 120 exceeds the model's 200 positions"),
        (["--cfg", "-1"], "argument --cfg: must be ≥ 0, got -1.0"),
        (["--temperature", "-1"], "argument --temperature: must be ≥ 0, got -1.0"),
        (["--remasking", "sometimes"], "invalid choice"),
        (["--prompt", "two <image> markers"], "exactly one <image> marker"),
        (["NOMASK"], "no mask_token_id"),
        (["LLAVA", "--method", "redvtp"], "pruning method 'redvtp' (stage during_generation) does not apply to llava"),
        (["LLAVA", "--gen-length", "8"], "--gen-length only apply to diffusion (llada_v) checkpoints"),
    ],
)
def test_bad_input_exits_2_with_a_message(model_dir, no_mask_dir, request, image, n_v, capsys, extra, needle):
    model = model_dir
    if extra and extra[0] == "NOMASK":
        model, extra = no_mask_dir, extra[1:]
    elif extra and extra[0] == "LLAVA":
        model, extra = request.getfixturevalue("llava_dir"), extra[1:]
    extra = [str(n_v + 1) if a == "NV+1" else a for a in extra]
    argv = ["--model", model, "--image", image, "--prompt", "What is this?", "--warmup", "0", *extra]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert needle in err, err
    assert "Traceback" not in err and out == ""


def test_console_script_diffusion_error_no_traceback(model_dir, image):
    import subprocess
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "vtp-generate")
    res = subprocess.run([exe, "--model", model_dir, "--image", image, "--prompt", "hi", "--gen-length", "6",
                          "--block-length", "4"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    assert "gen_length (6) must be divisible by block_length (4)" in res.stderr and "Traceback" not in res.stderr


def test_combined_stages_run_on_llada_v(model_dir, image, n_v, capsys):
    """``divprune+redvtp``: DivPrune keeps a subset before the LLM, RedVTP prunes that subset after the first
    denoising step; both selections are reported per stage, RedVTP's a subset of DivPrune's."""
    code = cli.main(["--model", model_dir, "--image", image, "--prompt", "What shape?", "--method", "divprune+redvtp",
                     "--gen-length", "8", "--steps", "4", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    pre, during = r["stages"]["divprune"], r["stages"]["redvtp"]
    # no --keep / --keep-ratio: each method keeps its default ratio (DivPrune 0.098, RedVTP 0.5 of what reached it)
    assert len(pre) == max(1, int(n_v * 0.098)) and len(set(pre)) == len(pre) and all(0 <= i < n_v for i in pre)
    assert len(during) == max(1, int(len(pre) * 0.5))
    assert set(during) <= set(pre) and r["kept_visual_indices"] == sorted(during)


def _official_prompt_ids(tokenizer, question: str, image_token_id: int) -> list[int]:
    """LLaDA-V's own path, step by step: ``conv_llava_llada.get_prompt()`` (system turn, user turn
    ``<image>\\n{question}``, ``apply_chat_template(add_generation_prompt=True)``), then LLaVA's
    ``tokenizer_image_token`` (chunks at ``<image>``, each ``tokenizer(chunk).input_ids``, an empty chunk → [BOS];
    ``insert_separator`` with ``[IMAGE] * (offset + 1)``; ``x[offset:]`` of every element, offset 1 after a
    leading BOS)."""
    from vtp_jax.processing import LLADA_V_SYSTEM_PROMPT

    messages = [{"role": "system", "content": LLADA_V_SYSTEM_PROMPT}, {"role": "user", "content": "<image>\n" + question}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    chunks = [tokenizer(c).input_ids if c else [tokenizer.bos_token_id] for c in prompt.split("<image>")]
    offset = 1 if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = [chunks[0][0]] if offset else []
    separated = [e for pair in zip(chunks, [[image_token_id] * (offset + 1)] * len(chunks)) for e in pair][:-1]
    for x in separated:
        ids.extend(x[offset:])
    return ids


def test_official_prompt_format_equals_llada_v_code(model_dir, cfg, n_v):
    from vtp_jax.processing import InputError, LladaVProcessor, load_processor

    assert load_processor(model_dir, cfg).prompt_format == "plain"  # the toy checkpoint's config.json says so
    proc = load_processor(model_dir, cfg, prompt_format="official")
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 255, IMAGE_HW + (3,), dtype=np.uint8))
    question = "What is in the picture?"
    row = proc([image], [question]).prompt_ids[0]
    ref = _official_prompt_ids(proc.tokenizer, question, cfg.image_token_id)
    at = ref.index(cfg.image_token_id)
    assert ref.count(cfg.image_token_id) == 1
    assert row == ref[:at] + [cfg.image_token_id] * n_v + ref[at + 1:]  # the one placeholder expanded to N_v
    plain = load_processor(model_dir, cfg).encode_prompt(load_processor(model_dir, cfg).build_prompt(question), n_v)
    assert len(row) > len(plain) + 10  # the system turn is there
    assert proc.tokenizer.decode(ref[:at]).count("helpful language and vision assistant") == 1
    # the toy tokenizer adds no BOS itself: the code drops the first token after <image> (the "\n"), and so do we
    after = proc.tokenizer(proc.build_prompt(question).split("<image>")[1]).input_ids
    assert row[at + n_v:] == after[1:]
    with pytest.raises(InputError, match="prompt format must be one of"):
        LladaVProcessor(model_dir, cfg, prompt_format="chat")
