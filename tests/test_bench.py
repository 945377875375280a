"""Smoke test of ``vtp-bench`` (eval.bench): micro preset, one run, no torch. No timing assertions."""

import json
import math

from eval import bench


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_micro_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = bench.main(["--preset", "micro", "--runs", "1", "--warmup", "1", "--max-new-tokens", "4",
                     "--no-torch", "--json", str(path), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and "jax fastv-25" in printed

    report = json.loads(path.read_text())
    assert report["random_weights"] is True
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
