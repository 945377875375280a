"""Smoke tests of ``vtp-bench`` (eval.bench): micro preset, one run. No timing assertions.

LLaVA section without torch; LLaDA-V section with the PyTorch reference (skipped where torch is not installed)."""

import json
import math

import pytest

from eval import bench


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_micro_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = bench.main(["--family", "llava", "--preset", "micro", "--runs", "1", "--warmup", "1",
                     "--max-new-tokens", "4", "--no-torch", "--json", str(path), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and "jax fastv-25" in printed and "LLaDA-V" not in printed

    full = json.loads(path.read_text())
    assert full["random_weights"] is True and full["families"] == ["llava"] and "llada_v" not in full
    report = full["llava"]
    assert report["torch_skipped"] == "--no-torch"
    for key in ("env", "settings", "rows", "flops", "targets", "checkpoint", "model", "raw_runs"):
        assert key in report
    assert report["env"]["platform"] and report["env"]["jax_version"]
    s = report["settings"]
    assert s["runs"] == 1 and s["max_new_tokens"] == 4
    assert s["prompt_len"] == 1 + bench.PREFIX_TEXT + s["num_visual_tokens"] + bench.SUFFIX_TEXT

    assert list(report["rows"]) == ["jax none", "jax fastv-50", "jax fastv-25"]
    for name, row in report["rows"].items():
        for key in ("prefill_ms", "decode_tokens_per_s", "decode_ms_per_step", "llm_prefill_flops", "prefill_flops",
                    "compile_s", "prefill_speedup_vs_jax_none", "llm_flop_ratio_vs_jax_none"):
            assert _positive(row[key]), (name, key, row[key])
        assert len(row["prefill_ms_runs"]) == 1
        assert row["decode_x_torch"] is None
    rows = report["rows"]
    n_v = s["num_visual_tokens"]
    assert rows["jax none"]["visual_tokens_kept"] == n_v
    assert rows["jax fastv-50"]["visual_tokens_kept"] == n_v // 2
    assert rows["jax fastv-25"]["visual_tokens_kept"] == n_v // 4
    assert rows["jax none"]["llm_prefill_flops"] > rows["jax fastv-50"]["llm_prefill_flops"] > \
        rows["jax fastv-25"]["llm_prefill_flops"]

    t = report["targets"]
    assert isinstance(t["reliable"], bool)
    share = report["env"]["foreign_cpu_share_during_runs"]
    assert share is None or 0.0 <= share <= 1.0
    assert t["decode_jax_over_torch"]["status"] == "SKIPPED"
    assert t["fastv25_prefill_speedup"]["status"] in ("PASS", "MISS")
    assert _positive(t["fastv25_prefill_speedup"]["value"])


def test_flops_formula_by_hand():
    """llm_layer_flops = 2·T·P_layer + 4·T²·H·d_h on a hand-sized config."""
    from vtp_jax.config import TextConfig

    text = TextConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=4)
    p_layer = 8 * 2 * 4 + 2 * 8 * 1 * 4 + 2 * 4 * 8 + 3 * 8 * 16
    assert bench.llm_layer_flops(text, 5) == 2 * 5 * p_layer + 4 * 25 * 2 * 4


def test_bench_llada_v_micro_json(tmp_path, capsys):
    """LLaDA-V section: torch reference and the three jax variants at both RedVTP settings, same weights."""
    pytest.importorskip("torch")
    path = tmp_path / "bench.json"
    rc = bench.main(["--family", "llada_v", "--preset", "micro", "--runs", "1", "--json", str(path), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and "jax redvtp-50" in printed and "RedVTP keep 50%" in printed

    full = json.loads(path.read_text())
    assert full["random_weights"] is True and full["families"] == ["llada_v"] and "llava" not in full
    report = full["llada_v"]
    for key in ("env", "settings", "sections", "targets", "checkpoint", "model", "raw_runs", "time_split_ms"):
        assert key in report, key
    assert report["torch_skipped"] is None and report["env"]["torch_version"]
    assert "reference" in report["checkpoint"]["weights"]
    s = report["settings"]
    assert s["runs"] == 1 and s["batch"] == 1
    n_v = s["num_visual_tokens"]
    assert s["prompt_len"] == 1 + bench.PREFIX_TEXT + n_v + bench.SUFFIX_TEXT
    assert s["keep"] == {"jax none": n_v, "jax redvtp-50": n_v // 2, "jax redvtp-25": n_v // 4}

    assert list(report["sections"]) == ["32/16", "2/2"]
    for name, sec in report["sections"].items():
        g = sec["gen_length"]
        assert (g, sec["steps"], sec["block_length"]) in bench.LLADA_V_SETTINGS
        assert list(sec["rows"]) == ["torch", "jax none", "jax redvtp-50", "jax redvtp-25"]
        for variant, row in sec["rows"].items():
            for key in ("latency_ms", "tokens_per_s", "flops", "flop_ratio_vs_jax_none", "x_torch"):
                assert _positive(row[key]), (name, variant, key, row[key])
            assert math.isclose(row["tokens_per_s"], 1e3 * g / row["latency_ms"])
            assert len(row["latency_ms_runs"]) == 1
            assert isinstance(row["throughput_gain_vs_jax_none"], float)
            if variant.startswith("jax"):
                assert _positive(row["compile_s"]) and _positive(row["encode_ms"])
                assert row["visual_tokens_kept"] == s["keep"][variant]
                split = report["time_split_ms"][name][variant]
                assert _positive(split["encode_ms"]) and _positive(split["first_step_ms"])
        rows = sec["rows"]
        assert rows["jax none"]["throughput_gain_vs_jax_none"] == 0.0
        assert rows["jax none"]["flops"] > rows["jax redvtp-50"]["flops"] > rows["jax redvtp-25"]["flops"]
        assert rows["jax redvtp-50"]["seq_len_after_pruning"] == s["prompt_len"] + g - (n_v - n_v // 2)
        # same weights, same greedy loop: torch and jax agree token for token
        assert sec["torch_jax_agree"] is True, (sec["torch_tokens"], sec["jax_tokens"])
        assert sec["torch_jax_greedy_agreement_tokens"] == g
        assert sec["torch_tokens"] == sec["jax_tokens"] and len(sec["jax_tokens"]) == g

    t = report["targets"]
    assert t["torch_jax_agree"] is True and isinstance(t["reliable"], bool)
    r50 = t["redvtp50_throughput_gain"]
    assert r50["setting"] == "32/16" and r50["status"] in ("PASS", "MISS") and r50["target"] == 1.0
    assert _positive(r50["flop_ratio"]) and r50["flop_ratio"] > 1.0


def test_diffusion_flops_by_hand():
    """diffusion_flops = vision once + steps × (L · layer(T) + 2·D·V·G); RedVTP shortens every step but the first."""
    from vtp_jax.config import LladaVConfig, TextConfig, VisionConfig

    text = TextConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=4, causal=False)
    vision = VisionConfig(hidden_size=4, intermediate_size=8, num_hidden_layers=2, num_attention_heads=1,
                          image_size=8, patch_size=4)
    cfg = LladaVConfig(vision=vision, text=text)
    s = 4  # (8 / 4)² positions per tile
    tile = 2 * s * 3 * 16 * 4 + 2 * (2 * s * (4 * 16 + 2 * 4 * 8) + 4 * s * s * 4) + 2 * s * (4 * 8 + 8 * 8)
    assert bench.llada_vision_flops(cfg, 5) == 5 * tile
    step = lambda t, rows: 3 * bench.llm_layer_flops(text, t) + 2 * rows * 8 * 10  # noqa: E731
    kw = dict(prompt_len=20, num_visual=12, num_tiles=5, gen_length=4, steps=3)
    assert bench.diffusion_flops(cfg, **kw) == 5 * tile + 3 * step(24, 4)
    assert bench.diffusion_flops(cfg, keep=6, **kw) == 5 * tile + step(24, 4) + 2 * step(18, 4)
    per_tile_ref = tile + 2 * s * (4 * 16 + 2 * 4 * 8) + 4 * s * s * 4  # one more SigLIP layer
    assert bench.diffusion_flops(cfg, reference=True, **kw) == 5 * per_tile_ref + 3 * step(24, 24)
