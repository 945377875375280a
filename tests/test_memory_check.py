"""Bad input at real size: the memory check before loading (vtp_jax.memory), out-of-memory inside XLA reported as
exit code 2, and SigLIP's real geometry (384 px / patch 14 → 27 × 27: the strided convolution floors) accepted by
the testbed helpers."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from vtp_jax import cli, memory
from vtp_jax.config import config_from_hf

SIZES = dict(
    image_size=64, patch_size=16, vision_hidden=32, vision_layers=2, vision_heads=4, vision_mlp=64,
    text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=2, text_mlp=128, vocab_size=300,
    max_position_embeddings=160,
)
# A non-multiple geometry like SigLIP's 384 / 14: 30 px tiles of 7 px patches → 4 × 4, last 2 rows / cols ignored.
ODD = dict(image_size=30, patch_size=7, vision_hidden=32, vision_layers=2, vision_heads=4, vision_mlp=64,
           text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=4, text_mlp=128, vocab_size=320,
           max_position_embeddings=256, max_grid=2, max_num_patches=4)
NEEDS = re.compile(r"needs ≈ (\d+\.\d) GB, (\d+\.\d) GB available")
OOM_TEXT = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123456789 bytes.\nBufferAssignment OOM Debugging."

# llava-hf/llava-1.5-7b-hf's config.json (the fields that size the model).
LLAVA_15_7B = {
    "model_type": "llava", "image_token_index": 32000, "projector_hidden_act": "gelu",
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "tie_word_embeddings": False,
    "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                      "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
                      "projection_dim": 768, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
    "text_config": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
                    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0},
}


@pytest.fixture(autouse=True)
def _no_injected_limit(monkeypatch):
    monkeypatch.delenv(memory.LIMIT_ENV, raising=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from convert import convert
    from vtp_jax.testbed.hf_llava import build_tiny_llava

    root = tmp_path_factory.mktemp("mem")
    return convert(build_tiny_llava(str(root / "hf"), **SIZES), str(root / "jax"), progress=False)


@pytest.fixture(scope="module")
def cfg(model_dir):
    return memory.model_config(model_dir)[0]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(path)
    return str(path)


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, prefix: str) -> str:
    """The stderr of a refused run: exactly one line, starting with ``prefix``, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), err
    assert "Traceback" not in err
    return lines[0]


# ---- parameter bytes -----------------------------------------------------------------------------------------

def test_param_bytes_is_the_sum_of_the_abstract_parameters(cfg):
    from vtp_jax.checkpoint import abstract_params, flatten

    for dtype, size in (("float32", 4), ("bfloat16", 2)):
        leaves = flatten(abstract_params(cfg, dtype)).values()
        assert memory.param_bytes(cfg, dtype) == sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in leaves)
        assert memory.param_bytes(cfg, dtype) == size * memory.param_count(cfg)
    # the tiny model by hand: CLIP 64 px / 16 → 16 patches + class token; Llama 64 × 2 layers, 2 kv heads of 16
    dv, f_v, d, f, v, kv = 32, 64, 64, 128, 300, 2 * 16
    vision = dv * 3 * 16 * 16 + dv + 17 * dv + 2 * dv + 2 * (4 * (dv * dv + dv) + 4 * dv + 2 * dv * f_v + f_v + dv) + 2 * dv
    projector = dv * d + d + d * d + d
    text = 2 * v * d + 2 * (2 * d * d + 2 * d * kv + 3 * d * f + 2 * d) + d
    assert memory.param_count(cfg) == vision + projector + text


def test_llava_15_7b_has_7063427072_parameters():
    cfg = config_from_hf(LLAVA_15_7B)
    # from the shapes: CLIP ViT-L/14-336 (no projection: LLaVA uses CLIPVisionModel), projector, Llama-2-7B + lm_head
    dv, fv, d, f, v = 1024, 4096, 4096, 11008, 32064
    vision = (dv * 3 * 14 * 14 + dv + (24 * 24 + 1) * dv + 2 * dv
              + 24 * (4 * (dv * dv + dv) + 2 * 2 * dv + dv * fv + fv + fv * dv + dv) + 2 * dv)
    projector = dv * d + d + d * d + d
    text = 2 * v * d + 32 * (4 * d * d + 3 * d * f + 2 * d) + d
    assert vision == 303_507_456 and projector == 20_979_712 and text == 6_738_939_904
    assert vision + projector + text == 7_063_427_072
    assert memory.param_count(cfg) == 7_063_427_072
    assert memory.param_bytes(cfg, "bfloat16") == 2 * 7_063_427_072

    # the estimate at 640 tokens: the KV cache is 2 · 32 layers · 640 · 4096 · 2 bytes
    est = memory.estimate(cfg, "bfloat16", batch_size=1, seq_len=640)
    assert est.kv_cache == 2 * 32 * 640 * 32 * 128 * 2 == 335_544_320
    assert est.total == est.params + est.kv_cache + est.activations + memory.RUNTIME_OVERHEAD_BYTES
    # a 24 GB machine: bf16 fits, fp32 (28.3 GB of parameters alone) is refused with the one-line message
    assert memory.check_fits(est, where="llava-7b", limit_bytes=24 * 10**9).needed == est.total
    est32 = memory.estimate(cfg, "float32", batch_size=1, seq_len=640)
    with pytest.raises(memory.MemoryCheckError) as e:
        memory.check_fits(est32, where="llava-7b", limit_bytes=24 * 10**9, hint="try bfloat16")
    msg = str(e.value)
    assert msg.startswith(f"llava-7b: needs ≈ {est32.total / 1e9:.1f} GB, 24.0 GB available (")
    assert "parameters 28.3 GB (float32)" in msg and msg.endswith("try bfloat16)") and "\n" not in msg


def test_kv_cache_and_activation_terms(cfg):
    import dataclasses

    # causal: every layer; 2 kv heads × head_dim 16, fp32
    assert memory.kv_cache_bytes(cfg, "float32", batch_size=3, seq_len=100) == 2 * 2 * 3 * 100 * 2 * 16 * 4
    bidirectional = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, causal=False))
    assert memory.kv_cache_bytes(bidirectional, "float32", batch_size=3, seq_len=100) == 2 * 1 * 3 * 100 * 2 * 16 * 4
    a1 = memory.activation_bytes(cfg, "float32", batch_size=1, seq_len=100)
    a2 = memory.activation_bytes(cfg, "float32", batch_size=2, seq_len=100)
    assert a2 == 2 * a1  # linear in the batch
    grow = memory.activation_bytes(cfg, "float32", batch_size=1, seq_len=200) - a1
    assert grow == 100 * (4 * 64 + 3 * 128) * 4 + 4 * (200**2 - 100**2) * 4  # hidden / MLP rows + T² scores
    with pytest.raises(ValueError):
        memory.kv_cache_bytes(cfg, "float32", batch_size=-1, seq_len=1)


# ---- available memory, the check -----------------------------------------------------------------------------

def test_available_bytes_env_override_and_host(monkeypatch):
    host = memory.host_available_bytes()
    assert host is not None and host > 0
    with open("/proc/meminfo") as fh:
        meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
    assert host <= meminfo["MemAvailable"] + (1 << 30)  # measured moments apart
    assert memory.device_available_bytes() is None  # CPU backend: no device stats
    monkeypatch.setenv(memory.LIMIT_ENV, "123456")
    assert memory.available_bytes() == 123456
    monkeypatch.setenv(memory.LIMIT_ENV, "2.5e9")
    assert memory.available_bytes() == 2_500_000_000
    monkeypatch.setenv(memory.LIMIT_ENV, "lots")
    with pytest.raises(memory.MemoryCheckError, match="VTP_MEMORY_LIMIT_BYTES must be a non-negative"):
        memory.available_bytes()


def test_check_fits_compares_the_total_with_the_limit(cfg, monkeypatch):
    est = memory.estimate(cfg, "float32", batch_size=1, seq_len=100)
    assert est.total > memory.RUNTIME_OVERHEAD_BYTES
    assert memory.check_fits(est, where="m", limit_bytes=est.total).available == est.total  # exactly fits
    with pytest.raises(memory.MemoryCheckError, match=r"^m: needs ≈ 0\.5 GB, 0\.5 GB available \(parameters 0\.0 GB \(float32\)"):
        memory.check_fits(est, where="m", limit_bytes=est.total - 1)
    monkeypatch.setenv(memory.LIMIT_ENV, str(est.total - 1))
    with pytest.raises(memory.MemoryCheckError, match=f"available: {memory.LIMIT_ENV}"):
        memory.check_fits(est, where="m")


def test_check_model_dir(model_dir, cfg):
    budget = memory.check_model_dir(model_dir, seq_len=100, batch_size=2, limit_bytes=10**12)
    assert budget.estimate.params == memory.param_bytes(cfg, "float32")  # the stored dtype
    assert budget.needed == memory.estimate_bytes(cfg, "float32", batch_size=2, seq_len=100)
    assert budget.available == 10**12 and budget.source == "limit"
    with pytest.raises(memory.MemoryCheckError, match=f"^{re.escape(model_dir)}: needs ≈ 0.5 GB, 0.0 GB available"):
        memory.check_model_dir(model_dir, seq_len=100, limit_bytes=1000)
    from vtp_jax.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="not a directory"):
        memory.check_model_dir(os.path.join(model_dir, "nope"), seq_len=1)


# ---- vtp-generate ------------------------------------------------------------------------------------------------

def test_generate_refuses_a_model_over_the_injected_limit_before_loading(model_dir, image, capsys, monkeypatch):
    from vtp_jax import checkpoint

    def no_load(*a, **k):
        raise AssertionError("the weights must not be loaded when the estimate does not fit")

    monkeypatch.setattr(checkpoint, "load", no_load)
    monkeypatch.setenv(memory.LIMIT_ENV, "1000")
    code, out, err = run_cli(capsys, "--model", model_dir, "--image", image, "--prompt", "What?", "--warmup", "0",
                             "--max-new-tokens", "4", "--json")
    assert code == 2 and out == ""
    line = one_line_error(err, f"vtp-generate: error: {model_dir}: needs ≈ ")
    needed, available = NEEDS.search(line).groups()
    assert available == "0.0" and float(needed) >= memory.RUNTIME_OVERHEAD_BYTES / 1e9
    assert "--skip-memory-check" in line


def test_generate_under_the_limit_and_skip_flag_run(model_dir, image, capsys, monkeypatch):
    base = ["--model", model_dir, "--image", image, "--prompt", "What?", "--warmup", "0", "--max-new-tokens", "3",
            "--json"]
    monkeypatch.setenv(memory.LIMIT_ENV, str(50 * 10**9))
    code, out, err = run_cli(capsys, *base)
    assert code == 0, err
    assert 1 <= len(json.loads(out)["output_ids"]) <= 3
    monkeypatch.setenv(memory.LIMIT_ENV, "1000")
    code, out, err = run_cli(capsys, *base, "--skip-memory-check")
    assert code == 0, err
    assert json.loads(out)["num_visual_tokens"] == 16


def test_console_script_memory_refusal_no_traceback(model_dir, image):
    exe = os.path.join(os.path.dirname(sys.executable), "vtp-generate")
    res = subprocess.run([exe, "--model", model_dir, "--image", image, "--prompt", "hi"], capture_output=True,
                         text=True, env={**os.environ, memory.LIMIT_ENV: "1000"})
    assert res.returncode == 2 and res.stdout == ""
    one_line_error(res.stderr, f"vtp-generate: error: {model_dir}: needs ≈ ")


def _raise_oom(*a, **k):
    raise jax.errors.JaxRuntimeError(OOM_TEXT)


def test_generate_oom_while_loading_exits_2(model_dir, image, capsys, monkeypatch):
    from vtp_jax import checkpoint

    monkeypatch.setattr(checkpoint, "load", _raise_oom)
    code, out, err = run_cli(capsys, "--model", model_dir, "--image", image, "--prompt", "What?", "--warmup", "0")
    assert code == 2 and out == ""
    line = one_line_error(err, f"vtp-generate: error: out of memory while loading {model_dir}: needs ≈ ")
    assert NEEDS.search(line) and "RESOURCE_EXHAUSTED" in line and "BufferAssignment" not in line


def test_generate_oom_while_generating_exits_2(model_dir, image, capsys, monkeypatch):
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator

    monkeypatch.setattr(AutoregressiveGenerator, "generate", _raise_oom)
    code, out, err = run_cli(capsys, "--model", model_dir, "--image", image, "--prompt", "What?", "--warmup", "0")
    assert code == 2 and out == ""
    one_line_error(err, "vtp-generate: error: out of memory while generating")


def test_oom_guard_passes_other_errors():
    assert memory.is_out_of_memory(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: x"))
    assert memory.is_out_of_memory(jax.errors.JaxRuntimeError("INTERNAL: Out of memory allocating 5 bytes"))
    assert memory.is_out_of_memory(MemoryError())
    assert not memory.is_out_of_memory(jax.errors.JaxRuntimeError("INVALID_ARGUMENT: bad shape"))
    assert not memory.is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED"))  # not from XLA
    with pytest.raises(jax.errors.JaxRuntimeError, match="INVALID_ARGUMENT"):
        with memory.oom_guard("x"):
            raise jax.errors.JaxRuntimeError("INVALID_ARGUMENT: bad shape")
    with pytest.raises(memory.MemoryCheckError, match=r"^out of memory while compiling \(XLA: RESOURCE_EXHAUSTED"):
        with memory.oom_guard("compiling"):
            raise jax.errors.JaxRuntimeError(OOM_TEXT)


# ---- vtp-eval ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / "a.png")
    with open(root / "t.jsonl", "w") as fh:
        for i in range(3):
            fh.write(json.dumps({"image": "a.png", "question": f"Colour {i}?", "answer": "red", "metric": "exact_match",
                                 "id": f"q{i}"}) + "\n")
    return f"jsonl:{root / 't.jsonl'}"


def run_eval(capsys, *argv):
    from eval import evaluate

    code = evaluate.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_refuses_over_the_limit_and_reports_oom(model_dir, task, capsys, monkeypatch):
    from eval import evaluate

    base = ["--model", model_dir, "--task", task, "--max-new-tokens", "2", "--no-progress", "--warmup", "0"]
    monkeypatch.setenv(memory.LIMIT_ENV, "1000")
    code, out, err = run_eval(capsys, *base)
    assert code == 2 and out == ""
    one_line_error(err, f"vtp-eval: error: {model_dir}: needs ≈ ")

    # the batch counts: the estimate of 3 records in one batch exceeds that of one record per batch
    monkeypatch.delenv(memory.LIMIT_ENV)
    args = evaluate._parser().parse_args(base)
    one = evaluate._parser().parse_args(base + ["--batch-size", "1"])
    from eval.tasks import load_task

    recs = load_task(task)
    assert evaluate.Evaluator(args, recs, progress=False).budget.needed > \
        evaluate.Evaluator(one, recs, progress=False).budget.needed

    monkeypatch.setattr(evaluate.Evaluator, "run", _raise_oom)
    code, out, err = run_eval(capsys, *base)
    assert code == 2 and out == ""
    line = one_line_error(err, "vtp-eval: error: out of memory while generating (none): needs ≈ ")
    assert NEEDS.search(line)


# ---- SigLIP geometry: image size not a multiple of the patch size ------------------------------------------------

def test_testbed_configs_accept_the_real_siglip_geometry():
    from vtp_jax.testbed import hf_llada_v, hf_llava

    real = hf_llada_v.tiny_llada_v_config(image_size=384, patch_size=14)
    cfg = config_from_hf(real)
    assert cfg.patches_per_side == 27 and cfg.tokens_per_tile == 729 and cfg.vision.num_patches == 729
    specs = {n: s for n, s, _ in hf_llada_v.param_specs(real)}
    assert specs["model.vision_tower.vision_tower.vision_model.embeddings.position_embedding.weight"] == (729, 32)
    llava = hf_llava.tiny_llava_config(image_size=30, patch_size=7)
    assert llava.image_seq_length == 16
    with pytest.raises(ValueError, match="must be ≥ patch_size"):
        hf_llada_v.tiny_llada_v_config(image_size=6, patch_size=7)


@pytest.fixture(scope="module")
def odd_llada(tmp_path_factory):
    from convert import convert
    from vtp_jax import checkpoint
    from vtp_jax.testbed import hf_llada_v

    root = tmp_path_factory.mktemp("odd")
    hf = hf_llada_v.build_tiny_llada_v(str(root / "hf"), **ODD)
    out = convert(hf, str(root / "jax"), progress=False)
    model, cfg, _ = checkpoint.load(out)
    return hf, out, model, cfg


def test_non_multiple_patch_embedding_matches_torch_conv(odd_llada):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    hf, _, model, cfg = odd_llada
    assert cfg.patches_per_side == 4 and cfg.vision.num_patches == 16  # 30 // 7
    tensors = load_file(os.path.join(hf, "model.safetensors"))
    emb = "model.vision_tower.vision_tower.vision_model.embeddings."
    w, b, pos = (tensors[emb + k] for k in ("patch_embedding.weight", "patch_embedding.bias",
                                             "position_embedding.weight"))
    pixels = np.random.default_rng(0).standard_normal((2, 3, 30, 30)).astype(np.float32)
    ref = torch.nn.functional.conv2d(torch.from_numpy(pixels), torch.from_numpy(w), torch.from_numpy(b), stride=7)
    assert tuple(ref.shape) == (2, 32, 4, 4)
    ref = ref.flatten(2).transpose(1, 2).numpy() + pos[None]
    states, _ = model.vision_tower.hidden_states(jax.numpy.asarray(pixels), 0)
    np.testing.assert_allclose(np.asarray(states[0]), ref, atol=1e-5, rtol=1e-5)

    # the last 30 − 28 = 2 pixel rows and columns are ignored, by the whole tower
    feats = np.asarray(model.tile_features(jax.numpy.asarray(pixels[:, None])))
    changed = pixels.copy()
    changed[:, :, 28:, :] = 9.0
    changed[:, :, :, 28:] = -9.0
    np.testing.assert_array_equal(np.asarray(model.tile_features(jax.numpy.asarray(changed[:, None]))), feats)
    changed[:, :, 27, 0] += 1.0  # a pixel inside the last patch row does count
    assert np.abs(np.asarray(model.tile_features(jax.numpy.asarray(changed[:, None]))) - feats).max() > 1e-4


def test_non_multiple_tower_matches_transformers_siglip(odd_llada):
    torch = pytest.importorskip("torch")
    import transformers
    from safetensors.numpy import load_file

    hf, _, model, cfg = odd_llada
    vc = json.load(open(os.path.join(hf, "config.json")))["vision_config"]
    ref = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=vc["hidden_size"], intermediate_size=vc["intermediate_size"],
        num_hidden_layers=vc["num_hidden_layers"], num_attention_heads=vc["num_attention_heads"],
        image_size=30, patch_size=7, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False,
    )).eval()
    prefix = "model.vision_tower.vision_tower.vision_model."  # transformers 5 names them from the embeddings on
    state = {k[len(prefix):]: torch.from_numpy(v) for k, v in load_file(os.path.join(hf, "model.safetensors")).items()
             if k.startswith(prefix)}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)
    pixels = np.random.default_rng(1).standard_normal((2, 3, 30, 30)).astype(np.float32)
    with torch.no_grad():
        want = ref(pixel_values=torch.from_numpy(pixels), output_hidden_states=True).hidden_states[-1].numpy()
    got = np.asarray(model.vision_tower.features(jax.numpy.asarray(pixels), cfg.vision_feature_layer))
    assert got.shape == want.shape == (2, 16, 32)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_non_multiple_llada_v_generates(odd_llada, image, capsys):
    from vtp_jax.modeling.anyres import layout_for_config

    _, out_dir, _, cfg = odd_llada
    code, out, err = run_cli(capsys, "--model", out_dir, "--image", image, "--prompt", "What?", "--json",
                             "--gen-length", "4", "--steps", "2", "--block-length", "4", "--warmup", "0")
    assert code == 0, err
    r = json.loads(out)
    layout = layout_for_config(cfg, (60, 90))
    assert layout.patches_per_side == 4
    assert r["num_visual_tokens"] == layout.num_tokens == len(r["kept_visual_indices"])
    assert r["diffusion"]["grid"] == list(layout.grid)
