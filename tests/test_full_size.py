"""Full-size presets (vtp_jax.testbed.full_size, ``vtp-bench --preset llava-1.5-7b|llada-v-8b``), without building
the real 7B / 8B files: exact parameter counts from the shapes, tensor names / shapes against what the converter
expects (via headers and the converter's own plan), the cache, the flag checks, and the bench's preset path end to end
on a heavily reduced width override (test only)."""

import json
import os

import numpy as np
import pytest

from eval import bench
from vtp_jax.testbed import full_size as fs

TINY = dict(text_hidden=64, text_mlp=128, text_heads=4, vision_hidden=32, vision_layers=2, vision_mlp=64,
            vision_heads=2, image_size=28)
TINY_FLAGS = ["--text-hidden", "64", "--text-mlp", "128", "--text-heads", "4", "--vision-hidden", "32",
              "--vision-layers", "2", "--vision-mlp", "64", "--vision-heads", "2", "--image-size", "28"]


def test_llava_7b_parameter_count_is_the_published_one():
    cfg = fs.preset_config("llava-1.5-7b")
    counts = fs.param_count(cfg)
    assert counts["total"] == fs.PUBLISHED_PARAMS["llava-1.5-7b"] == 7_063_427_072
    assert cfg["vtp_random_weights"] is True and cfg["text_config"]["num_hidden_layers"] == 32
    # decoder: embedding + 32 × (4·D² + 3·D·F + 2·D) + D + head, by hand
    d, f, v = 4096, 11008, 32064
    assert counts["decoder"] == 2 * v * d + 32 * (4 * d * d + 3 * d * f + 2 * d) + d
    assert fs.decoder_weight_bytes(cfg) == 2 * (counts["decoder"] - v * d)


def test_llada_v_8b_decoder_count_matches_llada_8b():
    cfg = fs.preset_config("llada-v-8b")
    counts = fs.param_count(cfg)
    d, f, v = 4096, 12288, 126464
    assert counts["decoder"] == 2 * v * d + 32 * (4 * d * d + 3 * d * f + 2 * d) + d == 8_015_581_184
    assert abs(counts["decoder"] - fs.PUBLISHED_LLADA_8B_PARAMS) / fs.PUBLISHED_LLADA_8B_PARAMS < 0.001
    assert counts["total"] == 8_434_837_024  # + SigLIP (26 stored layers), projector, newline (reported)
    vc = cfg["vision_config"]
    assert (vc["image_size"] // vc["patch_size"]) ** 2 == 729 and vc["num_hidden_layers"] == 26
    assert cfg["mask_token_id"] == 126336 and cfg["rope_theta"] == 500000.0 and cfg["vtp_random_weights"] is True


@pytest.mark.parametrize("preset", fs.PRESETS)
def test_full_width_names_and_shapes_fit_the_converter(preset):
    """layers=1 at the REAL widths, checked without writing any tensor: the converter's planner accepts every
    (name, shape) and misses nothing."""
    from convert.core import _key_paths, _leaf, plan
    from convert.sources import TensorInfo
    from vtp_jax import checkpoint
    from vtp_jax.config import config_from_hf

    raw = fs.preset_config(preset, layers=1)
    cfg = config_from_hf(raw)
    assert cfg.text.num_hidden_layers == 1 and cfg.text.hidden_size == 4096
    abstract = checkpoint.abstract_params(cfg, "bfloat16")
    expected = {p: _leaf(abstract, k) for p, k in _key_paths(abstract).items()}
    tensors = {name: TensorInfo("x.safetensors", tuple(shape), "BF16") for name, shape, _ in fs.param_specs(raw)}
    chosen, problems = plan(tensors, expected, cfg.text.tie_word_embeddings, cfg.family)
    assert problems == [] and len(chosen) == len(tensors)


def test_shards_and_headers(tmp_path):
    """A reduced layers=2 checkpoint with tiny shards: several shard files, the index maps every tensor to the
    file that holds it, headers carry the shapes / BF16, norms are ones, weights have std ≈ 0.02."""
    from safetensors.numpy import load_file

    out = fs.write_full_size("llada-v-8b", tmp_path / "ck", layers=2, overrides=TINY, max_shard_bytes=5_000_000)
    index = json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1
    specs = {n: s for n, s, _ in fs.param_specs(json.loads((tmp_path / "ck" / "config.json").read_text()))}
    seen = {}
    for fname in files:
        tensors = load_file(os.path.join(out, fname))
        for name, arr in tensors.items():
            assert index["weight_map"][name] == fname and tuple(arr.shape) == specs[name]
            seen[name] = arr
    assert set(seen) == set(specs)
    assert index["metadata"]["total_size"] == 2 * sum(int(np.prod(s)) for s in specs.values())
    assert str(seen["model.norm.weight"].dtype) == "bfloat16"
    assert np.all(seen["model.norm.weight"].astype(np.float32) == 1.0)
    w = seen["model.layers.0.mlp.up_proj.weight"].astype(np.float32)
    assert 0.017 < w.std() < 0.023 and abs(w.mean()) < 0.002
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["vtp_random_weights"] is True and cfg["vtp_overrides"] == TINY and cfg["num_hidden_layers"] == 2
    # a tensor's values do not depend on the depth: layers=1 holds the same layer 0
    fs.write_full_size("llada-v-8b", tmp_path / "ck1", layers=1, overrides=TINY)
    one = load_file(str(tmp_path / "ck1" / "model-00001-of-00001.safetensors"))
    assert np.array_equal(one["model.layers.0.mlp.up_proj.weight"].view(np.uint16),
                          seen["model.layers.0.mlp.up_proj.weight"].view(np.uint16))


def test_tokenizers_keep_the_real_special_ids(tmp_path):
    import transformers

    for preset, checks in (("llava-1.5-7b", {"<image>": 32000, "<pad>": 32001, "<s>": 1, "</s>": 2}),
                           ("llada-v-8b", {"<|mdm_mask|>": 126336, "<|startoftext|>": 126080,
                                           "<|endoftext|>": 126081, "<|eot_id|>": 126348})):
        d = tmp_path / preset
        fs.write_full_size(preset, d, layers=1, overrides=TINY)
        tok = transformers.AutoTokenizer.from_pretrained(d)
        for t, i in checks.items():
            assert tok.convert_tokens_to_ids(t) == i
        ids = tok.encode("a red cat on the grass", add_special_tokens=False)
        assert ids and max(ids) < 1000 and tok.decode(ids) == "a red cat on the grass"


def test_cache_returns_the_same_dir_without_rewriting(tmp_path):
    d1, info1 = fs.cached_checkpoint("llava-1.5-7b", 1, "bfloat16", str(tmp_path), overrides=TINY)
    assert not info1["cached"] and os.path.isfile(os.path.join(d1, fs.COMPLETE_MARKER))
    mtimes = {f: os.path.getmtime(os.path.join(d1, f)) for f in os.listdir(d1)}
    d2, info2 = fs.cached_checkpoint("llava-1.5-7b", 1, "bfloat16", str(tmp_path), overrides=TINY)
    assert d2 == d1 and info2["cached"] and info2["write_s"] is None
    assert {f: os.path.getmtime(os.path.join(d1, f)) for f in os.listdir(d1)} == mtimes
    # an incomplete directory (no marker) is rebuilt; no temporary directories are left behind
    os.remove(os.path.join(d1, fs.COMPLETE_MARKER))
    d3, info3 = fs.cached_checkpoint("llava-1.5-7b", 1, "bfloat16", str(tmp_path), overrides=TINY)
    assert d3 == d1 and not info3["cached"]
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")] == []
    assert fs.default_cache_dir().endswith(os.path.join(".cache", "vtp_jax", "presets")) or os.environ.get("VTP_CACHE")


@pytest.mark.parametrize("argv, message", [
    (["--preset", "llava-1.5-13b"], "invalid choice"),
    (["--preset", "llava-1.5-7b", "--layers", "0"], "--layers must be an integer in [1, 32]"),
    (["--preset", "llada-v-8b", "--layers", "33"], "--layers must be an integer in [1, 32]"),
    (["--preset", "tiny", "--layers", "2"], "apply only to the full-size presets"),
    (["--preset", "llava-1.5-7b", "--text-layers", "2"], "use --layers"),
    (["--preset", "llava-1.5-7b", "--family", "llada_v"], "does not fit"),
    (["--preset", "llada-v-8b", "--llada-image", "big"], "--llada-image"),
    (["--preset", "llava-1.5-7b", "--layers", "1", "--methods", "fastv"], "FastV at layer K"),
])
def test_bad_flags_exit_2(argv, message, capsys):
    try:
        rc = bench.main(argv)
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert "vtp-bench: error:" in err and message in err


def test_bandwidth_and_roofline():
    bw = fs_bench().measure_bandwidth(16 << 20, repeats=2)
    assert bw["gb_per_s"] > 0.1 and len(bw["runs_gb_per_s"]) == 2
    cfg = fs.preset_config("llava-1.5-7b")
    r = fs_bench().roofline(cfg, 100.0)
    assert r["weight_bytes"] == 2 * 6_607_605_760 and r["decode_tokens_per_s"] == pytest.approx(100e9 / r["weight_bytes"])
    r = fs_bench().roofline(fs.preset_config("llada-v-8b"), 100.0)
    assert r["tokens_per_s"]["32/16"] == pytest.approx(2 * r["steps_per_s"])


def fs_bench():
    from eval import full_size_bench

    return full_size_bench


@pytest.mark.parametrize("preset, extra", [
    ("llava-1.5-7b", ["--layers", "2", "--fastv-layer", "1", "--max-new-tokens", "3", "--methods", "fastv,divprune"]),
    ("llada-v-8b", ["--layers", "1", "--llada-image", "28x56", "--llada-methods", "redvtp", "--llada-settings",
                    "4/2/4", "--diffusion-cache", "prefix"]),
])
def test_preset_path_end_to_end_reduced(preset, extra, tmp_path, capsys):
    """Cache → vtp-convert subprocess → jax child → torch child (bf16) → merged report, on a reduced width."""
    path = tmp_path / "out.json"
    rc = bench.main(["--preset", preset, "--runs", "1", "--warmup", "0", "--keeps", "50", "--quiet",
                     "--cache-dir", str(tmp_path / "cache"), "--json", str(path)] + TINY_FLAGS + extra)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and "REDUCED WIDTHS" in printed and "roofline" in printed
    full = json.loads(path.read_text())
    family = fs.FAMILY[preset]
    assert full["random_weights"] is True and full["families"] == [family]
    r = full[family]
    assert r["full_size"] and r["overrides"] == TINY
    for part in ("convert", "jax", "torch"):
        assert r[part]["peak_rss_bytes"] > 10e6, part
    assert r["convert"]["rc"] == 0 and r["convert"]["wall_s"] > 0 and r["jax"]["load_s"] > 0
    assert r["torch"]["load_s"] > 0 and r["torch_skipped"] is None
    assert r["machine"]["memory_bandwidth"]["gb_per_s"] > 0 and r["roofline"]["steps_per_s"] > 0
    ratios = r["jax_over_torch"]
    assert ratios["peak_rss"] > 0 and ratios["load_time"] > 0
    if family == "llava":
        assert list(r["rows"]) == ["torch", "jax none", "jax fastv-50", "jax divprune-50"]
        assert ratios["decode_tokens_per_s"] > 0 and ratios["prefill_speed"] > 0
        assert r["rows"]["jax fastv-50"]["visual_tokens_kept"] == 2  # 4 visual tokens at 28 px / 14
        assert all(row["decode_tokens_per_s"] > 0 for row in r["rows"].values())
    else:
        assert set(r["sections"]) == {"4/2"}  # --llada-settings; every variant again under --diffusion-cache
        assert list(r["sections"]["4/2"]["rows"]) == ["torch", "jax none", "jax none [prefix]", "jax redvtp-50",
                                                      "jax redvtp-50 [prefix]"]
        assert r["sections"]["4/2"]["rows"]["jax redvtp-50 [prefix]"]["flops"] is None
        assert [t["variant"] for t in r["fast_dllm_targets"]] == ["jax none [prefix]", "jax redvtp-50 [prefix]"]
        assert ratios["tokens_per_s_4/2"] > 0 and set(r["roofline"]["tokens_per_s"]) == {"4/2"}
    assert [n for n in os.listdir(tmp_path / "cache") if n.startswith(".bench-")] == []  # converted dir removed
