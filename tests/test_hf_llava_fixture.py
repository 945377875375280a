"""Tests for vtp_jax.testbed.hf_llava: tiny random LLaVA checkpoints in Hugging Face format."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import transformers
from PIL import Image
from safetensors import safe_open

from vtp_jax.testbed import hf_llava

PROMPT = "<s>USER: <image>\nWhat is this? ASSISTANT:"
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 256}


def _tensor_shapes(path):
    """{name: shape} over model.safetensors or all shards listed in the index."""
    index = os.path.join(path, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index)
             else ["model.safetensors"])
    shapes = {}
    for fname in files:
        with safe_open(os.path.join(path, fname), "np") as f:
            for k in f.keys():
                shapes[k] = tuple(f.get_slice(k).get_shape())
    return shapes


def _image(w=300, h=200):
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return hf_llava.build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


# --- tokenizer / config ----------------------------------------------------------------------

def test_tokenizer_special_ids_and_determinism():
    a, b = hf_llava.train_tokenizer(), hf_llava.train_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == 512
    assert a.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    assert (a.unk_token_id, a.bos_token_id, a.eos_token_id, a.pad_token_id) == (0, 1, 2, 3)
    ids = a("a red cat <image> on the grass").input_ids
    assert ids[0] != 1 and ids[-1] != 2 and ids.count(4) == 1  # no automatic bos/eos
    assert a.decode(ids, skip_special_tokens=True) == "a red cat  on the grass"
    with pytest.raises(ValueError):
        hf_llava.train_tokenizer(200)


def test_config_fields_and_rope_json(tmp_path):
    cfg = hf_llava.tiny_llava_config(rope_scaling=LLAMA3_ROPE)
    assert cfg.image_token_id == 4 and cfg.image_seq_length == 49
    tc, vc = cfg.text_config, cfg.vision_config
    assert (tc.pad_token_id, tc.bos_token_id, tc.eos_token_id) == (3, 1, 2)
    assert vc.hidden_act == "quick_gelu" and tc.hidden_act == "silu" and tc.rms_norm_eps == 1e-5
    cfg.save_pretrained(tmp_path)
    saved = json.load(open(tmp_path / "config.json"))
    assert saved["image_token_index"] == 4
    assert "rope_theta" not in saved["text_config"] and "rope_scaling" not in saved["text_config"]
    assert saved["text_config"]["rope_parameters"] == {"rope_theta": 10000.0, **LLAMA3_ROPE}
    plain = hf_llava.tiny_llava_config(vision_feature_select_strategy="full")
    assert plain.text_config.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    assert plain.image_seq_length == 50
    floored = hf_llava.tiny_llava_config(image_size=200)  # not a multiple of patch 32: the conv floors, 6 × 6
    assert floored.image_seq_length == 36
    with pytest.raises(ValueError):
        hf_llava.tiny_llava_config(image_size=16)  # smaller than one patch


# --- processor -------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy,n_image_tokens", [("default", 49), ("full", 50)])
def test_processor(tmp_path, strategy, n_image_tokens):
    cfg = hf_llava.tiny_llava_config(vision_feature_select_strategy=strategy)
    hf_llava.save_processor(tmp_path, hf_llava.train_tokenizer(), cfg)
    proc = transformers.AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(proc, transformers.LlavaProcessor)
    prompt = proc.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert prompt == PROMPT
    out = proc(images=_image(), text=prompt, return_tensors="np")
    assert out["pixel_values"].shape == (1, 3, 224, 224) and out["pixel_values"].dtype == np.float32
    ids = out["input_ids"][0]
    assert (ids == 4).sum() == n_image_tokens
    assert ids[0] == 1 and ids[-1] != 2
    # image tokens are contiguous and sit right after "<s>USER: "
    pos = np.flatnonzero(ids == 4)
    assert np.all(np.diff(pos) == 1)
    assert proc.tokenizer.decode(ids[: pos[0]]) == "<s>USER: "


def test_chat_template_multi_turn():
    tok = hf_llava.train_tokenizer()
    msgs = [{"role": "system", "content": "Be brief."}, *MESSAGES,
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
            {"role": "user", "content": "And the colour?"}]
    text = tok.apply_chat_template(msgs, chat_template=hf_llava.LLAVA_CHAT_TEMPLATE,
                                   add_generation_prompt=True, tokenize=False)
    assert text == ("<s>Be brief. USER: <image>\nWhat is this? ASSISTANT: A cat.</s>"
                    "USER: And the colour? ASSISTANT:")


NO_TORCH_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None          # makes `import torch` raise and find_spec return None
    sys.modules["torchvision"] = None
    import numpy as np, transformers
    from PIL import Image
    from transformers.utils import is_torch_available, is_torchvision_available
    assert not is_torch_available() and not is_torchvision_available()
    from vtp_jax.testbed import hf_llava
    d = hf_llava.build_tiny_llava(sys.argv[1], vision_feature_select_strategy="full")
    proc = transformers.AutoProcessor.from_pretrained(d)
    assert type(proc.image_processor).__name__ == "CLIPImageProcessorPil", type(proc.image_processor)
    prompt = proc.apply_chat_template({messages!r}, add_generation_prompt=True, tokenize=False)
    assert prompt == {prompt!r}, prompt
    img = Image.fromarray(np.full((200, 300, 3), 127, np.uint8))
    out = proc(images=img, text=prompt, return_tensors="np")
    assert out["pixel_values"].shape == (1, 3, 224, 224), out["pixel_values"].shape
    assert (out["input_ids"] == 4).sum() == 50
    print("OK")
""").format(messages=MESSAGES, prompt=PROMPT)


def test_build_and_processor_without_torch(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, str(tmp_path / "ckpt")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stderr[-3000:]
    assert os.path.exists(tmp_path / "ckpt" / "model.safetensors")


# --- weights vs. torch transformers -----------------------------------------------------------

CONFIG_VARIANTS = {
    "base": {},
    "tied_full_gqa_llama3": dict(tie_word_embeddings=True, vision_feature_select_strategy="full",
                                 text_kv_heads=2, rope_scaling=LLAMA3_ROPE),
    "multi_layer_features": dict(vision_feature_layer=[-2, -1], image_size=64, patch_size=16),
}


@pytest.mark.parametrize("variant", sorted(CONFIG_VARIANTS))
def test_tensor_names_match_save_pretrained(tmp_path, variant):
    torch = pytest.importorskip("torch")
    cfg = hf_llava.tiny_llava_config(**CONFIG_VARIANTS[variant])
    torch.manual_seed(0)
    transformers.LlavaForConditionalGeneration(cfg).save_pretrained(tmp_path / "ref")
    hf_llava.write_random_llava(tmp_path / "ours", cfg, names="transformers")
    assert _tensor_shapes(tmp_path / "ours") == _tensor_shapes(tmp_path / "ref")


@pytest.mark.parametrize("names,shard", [("transformers", None), ("hub", None),
                                         ("transformers", 40_000), ("hub", 40_000)])
def test_from_pretrained_loads_cleanly(tmp_path, names, shard):
    torch = pytest.importorskip("torch")
    cfg = hf_llava.tiny_llava_config()
    hf_llava.write_random_llava(tmp_path, cfg, names=names, max_shard_bytes=shard, seed=1)
    shapes = _tensor_shapes(tmp_path)
    if names == "hub":
        assert any(k.startswith("vision_tower.vision_model.") for k in shapes)
    if shard:
        index = json.load(open(tmp_path / "model.safetensors.index.json"))
        files = sorted(set(index["weight_map"].values()))
        assert len(files) > 1 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
        assert set(index["weight_map"]) == set(shapes)
        assert index["metadata"]["total_size"] == 4 * sum(int(np.prod(s)) for s in shapes.values())
        assert not os.path.exists(tmp_path / "model.safetensors")

    model, info = transformers.LlavaForConditionalGeneration.from_pretrained(
        tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"] and not info["error_msgs"], info

    # values really landed where they belong (catches silent re-initialisation)
    vt = "vision_tower.vision_model" if names == "hub" else "vision_tower"
    expected = {f"{vt}.encoder.layers.1.mlp.fc1.weight": model.model.vision_tower.encoder.layers[1].mlp.fc1.weight,
                "language_model.lm_head.weight": model.lm_head.weight,
                "language_model.model.embed_tokens.weight": model.model.language_model.embed_tokens.weight}
    for name, param in expected.items():
        fname = (json.load(open(tmp_path / "model.safetensors.index.json"))["weight_map"][name]
                 if shard else "model.safetensors")
        with safe_open(tmp_path / fname, "np") as st:
            np.testing.assert_array_equal(st.get_tensor(name), param.detach().numpy())

    # a forward pass gives finite, non-degenerate logits
    proc = transformers.AutoProcessor.from_pretrained(tmp_path)
    prompt = proc.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    inputs = proc(images=_image(), text=prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], 512)
    assert torch.isfinite(logits).all() and logits[0, -1].std() > 1e-3


def test_bfloat16_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    cfg = hf_llava.tiny_llava_config()
    hf_llava.write_random_llava(tmp_path, cfg, dtype="bfloat16")
    with safe_open(tmp_path / "model.safetensors", "np") as f:
        assert f.get_slice("language_model.lm_head.weight").get_dtype() == "BF16"
        assert f.metadata() == {"format": "pt"}
    assert json.load(open(tmp_path / "config.json"))["dtype"] == "bfloat16"
    model, info = transformers.LlavaForConditionalGeneration.from_pretrained(
        tmp_path, output_loading_info=True, dtype=torch.bfloat16)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.lm_head.weight.float().abs().max() > 0


def test_own_bf16_writer_matches_safetensors(tmp_path, monkeypatch):
    """The fallback header writer (for safetensors versions without numpy bf16) is byte-compatible."""
    import ml_dtypes
    import safetensors.numpy

    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16),
               "a": np.linspace(-1, 1, 5).astype(ml_dtypes.bfloat16)}

    def refuse(*args, **kwargs):
        raise TypeError("no bf16")

    monkeypatch.setattr(safetensors.numpy, "save_file", refuse)
    hf_llava._save_safetensors(tensors, str(tmp_path / "x.safetensors"), "bfloat16")
    monkeypatch.undo()
    loaded = safetensors.numpy.load_file(tmp_path / "x.safetensors")
    assert set(loaded) == set(tensors)
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
        np.testing.assert_array_equal(loaded[k].astype(np.float32), v.astype(np.float32))
    with safe_open(tmp_path / "x.safetensors", "np") as f:
        assert f.metadata() == {"format": "pt"}
