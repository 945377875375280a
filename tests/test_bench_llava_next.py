"""``vtp-bench --preset llava-next-7b`` (RANDOM weights): the exact config's counts and converter fit without writing
7 B parameters, the anyres vision FLOPs, and the whole preset path (cache → vtp-convert → jax child → torch child,
``LlavaNextForConditionalGeneration`` in bf16) on a heavily reduced width override (test only)."""

import json

import pytest

from eval import bench
from eval.bench import flops
from vtp_jax.testbed import full_size as fs

TINY_FLAGS = ["--text-hidden", "64", "--text-mlp", "128", "--text-heads", "4", "--vision-hidden", "32",
              "--vision-layers", "2", "--vision-mlp", "64", "--vision-heads", "2", "--image-size", "28"]


def test_llava_next_7b_config_and_count():
    from vtp_jax.config import config_from_hf

    raw = fs.preset_config("llava-next-7b")
    assert raw["model_type"] == "llava_next" and raw["vtp_random_weights"] is True
    assert raw["image_grid_pinpoints"] == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    counts = fs.param_count(raw)
    # LLaVA-1.5-7B's tensors (7,063,427,072, the published count) + the image_newline vector [4096]
    assert counts["total"] == fs.PUBLISHED_PARAMS["llava-1.5-7b"] + 4096 == 7_063_431_168
    cfg = config_from_hf(fs.preset_config("llava-next-7b", layers=2))
    assert cfg.family == "llava_next" and cfg.num_visual_tokens == 2928 and cfg.text.num_hidden_layers == 2


def test_anyres_vision_flops_is_tiles_times_one_tile():
    from vtp_jax.config import config_from_hf

    cfg = config_from_hf(fs.preset_config("llava-next-7b", layers=1))
    one = flops.anyres_vision_flops(cfg, 1)
    assert flops.anyres_vision_flops(cfg, 5) == 5 * one
    # one CLIP-L/14 tile at 336 px (577 positions, 23 of 24 layers run) + the projector over its 576 patches
    v, d = cfg.vision, cfg.text.hidden_size
    per_layer = 2 * 577 * (4 * 1024**2 + 2 * 1024 * 4096) + 4 * 577**2 * 1024
    by_hand = 2 * 576 * 3 * 14**2 * 1024 + 23 * per_layer + 2 * 576 * (1024 * d + d * d)
    assert (v.num_positions, v.num_patches) == (577, 576) and one == by_hand


def test_preset_path_end_to_end_reduced(tmp_path, capsys):
    path = tmp_path / "out.json"
    rc = bench.main(["--preset", "llava-next-7b", "--layers", "1", "--max-new-tokens", "2",
                     "--methods", "todre", "--keeps", "10", "--llada-image", "56x56", "--runs", "1",
                     "--warmup", "0", "--quiet", "--cache-dir", str(tmp_path / "cache"), "--json", str(path)]
                    + TINY_FLAGS)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and "REDUCED WIDTHS" in printed and "e2e ms" in printed
    full = json.loads(path.read_text())
    assert full["random_weights"] is True and full["families"] == ["llava_next"]
    r = full["llava_next"]
    st = r["settings"]
    # 56 × 56 on 28 px tiles: the 2 × 2 pinpoint → 5 tiles, N_v = 4 + 4 · (4 + 1) = 24 (newlines included)
    assert (st["num_tiles"], st["grid"], st["num_visual_tokens"]) == (5, [2, 2], 24)
    assert st["prompt_len"] == 1 + 5 + 24 + 8
    assert list(r["rows"]) == ["torch", "jax none", "jax todre-10"]  # (FastV: the same LLaVA path, tested elsewhere)
    rows = r["rows"]
    assert rows["jax todre-10"]["visual_tokens_kept"] == round(0.1 * 24) == 2
    for row in rows.values():
        for key in ("prefill_ms", "e2e_ms", "decode_tokens_per_s", "prefill_flops", "llm_prefill_flops",
                    "prefill_speedup_vs_jax_none", "e2e_speedup_vs_jax_none", "prefill_flop_ratio_vs_jax_none"):
            assert row[key] is not None and row[key] > 0, key
    base, todre = rows["jax none"], rows["jax todre-10"]
    assert base["prefill_flops"] == rows["torch"]["prefill_flops"]
    assert todre["prefill_flop_ratio_vs_jax_none"] == pytest.approx(base["prefill_flops"] / todre["prefill_flops"])
    assert todre["e2e_speedup_vs_jax_none"] == pytest.approx(base["e2e_ms"] / todre["e2e_ms"])
    assert base["prefill_flops"] - base["llm_prefill_flops"] == st["vision_flops"]
    assert todre["llm_tokens_after_pruning"] == st["prompt_len"] - 24 + 2
    assert r["jax_over_torch"]["e2e_speed"] > 0 and r["torch"]["peak_rss_bytes"] > 10e6
    assert len(r["machine"]["loadavg_start"]) == 3 and len(r["machine"]["loadavg_end"]) == 3
