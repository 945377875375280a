"""Smoke tests of ``vtp-bench`` (eval.bench): micro preset, one run. No timing assertions.

LLaVA section without torch; LLaDA-V section with the PyTorch reference (skipped where torch is not installed).
The runs time a subset of the methods (--methods / --llada-methods) to stay fast; the default method lists, keep
counts and FLOP formulas of every method are checked without running."""

import json
import math
from types import SimpleNamespace

import pytest

from eval import bench

LLAVA_TEST_METHODS = "fastv,todre,todre-relevance"  # in-LLM, pre-LLM (CLIP class-token pivot), no keep count


def _text_dims(model: dict) -> dict:
    """The micro LLaVA preset's decoder sizes from the report's "model" (tiny_llava_config keywords)."""
    d, h = model["text_hidden"], model["text_heads"]
    return dict(d=d, h=h, kv=model["text_kv_heads"], hd=d // h, f=model["text_mlp"], v=model["vocab_size"],
                layers=model["text_layers"])


def _llada_text(model: dict):
    """The LLaDA-V preset's decoder config from the report's "model" (tiny_llada_v_config keywords)."""
    from vtp_jax.config import TextConfig

    return TextConfig(vocab_size=model["vocab_size"], hidden_size=model["text_hidden"],
                      intermediate_size=model["text_mlp"], num_hidden_layers=model["text_layers"],
                      num_attention_heads=model["text_heads"], num_key_value_heads=model["text_kv_heads"],
                      head_dim=model["text_hidden"] // model["text_heads"], causal=False)


def _layer_by_hand(m: dict, t: int) -> int:
    p_layer = m["d"] * m["h"] * m["hd"] + 2 * m["d"] * m["kv"] * m["hd"] + m["h"] * m["hd"] * m["d"] + 3 * m["d"] * m["f"]
    return 2 * t * p_layer + 4 * t * t * m["h"] * m["hd"]


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_micro_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = bench.main(["--family", "llava", "--preset", "micro", "--runs", "1", "--warmup", "1",
                     "--max-new-tokens", "4", "--no-torch", "--json", str(path), "--quiet",
                     "--methods", LLAVA_TEST_METHODS, "--keeps", "50,25"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and "LLaDA-V" not in printed
    for name in ("jax fastv-25", "jax todre-50", "jax todre-25", "jax todre-relevance"):
        assert name in printed

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

    names = ["jax none", "jax fastv-50", "jax fastv-25", "jax todre-50", "jax todre-25", "jax todre-relevance"]
    assert list(report["rows"]) == names and s["variants"] == names
    assert s["methods"] == LLAVA_TEST_METHODS.split(",") and s["keeps_percent"] == [50.0, 25.0]
    for name, row in report["rows"].items():
        for key in ("prefill_ms", "decode_tokens_per_s", "decode_ms_per_step", "llm_prefill_flops", "prefill_flops",
                    "compile_s", "prefill_speedup_vs_jax_none", "llm_flop_ratio_vs_jax_none"):
            assert _positive(row[key]), (name, key, row[key])
        assert len(row["prefill_ms_runs"]) == 1
        assert row["decode_x_torch"] is None
    rows = report["rows"]
    n_v, t = s["num_visual_tokens"], s["prompt_len"]
    assert rows["jax none"]["visual_tokens_kept"] == n_v
    assert rows["jax fastv-50"]["visual_tokens_kept"] == n_v // 2
    assert rows["jax fastv-25"]["visual_tokens_kept"] == n_v // 4
    assert rows["jax none"]["llm_prefill_flops"] > rows["jax fastv-50"]["llm_prefill_flops"] > \
        rows["jax fastv-25"]["llm_prefill_flops"]
    assert [(rows[n]["method"], rows[n]["keep_percent"]) for n in names] == [
        ("none", 100.0), ("fastv", 50.0), ("fastv", 25.0), ("todre", 50.0), ("todre", 25.0), ("todre-relevance", None)]

    # keep counts = runtime.build_method's (what vtp-generate --keep-ratio builds)
    from vtp_jax.runtime import build_method

    m = _text_dims(report["model"])
    for method in ("fastv", "todre"):
        for pct in (50, 25):
            built = build_method(method, "llava", n_v, m["layers"], keep_ratio=pct / 100)
            assert rows[f"jax {method}-{pct}"]["visual_tokens_kept"] == built.keep
    # pre-LLM: every decoder layer over T − N_v + keep (hand computation, batch 1)
    for pct in (50, 25):
        row = rows[f"jax todre-{pct}"]
        short = t - n_v + row["visual_tokens_kept"]
        assert row["stage"] == "pre_llm" and row["llm_tokens_after_pruning"] == short
        assert row["llm_prefill_flops"] == m["layers"] * _layer_by_hand(m, short) + 2 * m["d"] * m["v"]
        assert row["llm_prefill_flops"] < rows[f"jax fastv-{pct}"]["llm_prefill_flops"]  # FastV keeps layers < K
    # ToDRE stage 2: fired or not (random weights), reported; FLOPs follow the decision
    rel = rows["jax todre-relevance"]
    st2 = rel["stage2"]
    assert isinstance(st2["fired"], bool) and st2["runs"] == 1 and st2["fired_runs"] in (0, 1)
    assert 1 <= st2["layer"] < m["layers"] and st2["tau"] == 0.1 and len(st2["alpha_t2v"]) == 1
    assert rel["visual_tokens_kept"] == (0 if st2["fired"] else n_v)
    assert ("FIRED" if st2["fired"] else "did not fire") in printed
    ell, probe = st2["layer"], 2 * t * m["d"] * (m["h"] + m["kv"]) * m["hd"] + 2 * t * t * m["h"] * m["hd"]
    tail = t - n_v if st2["fired"] else t
    assert rel["llm_prefill_flops"] == (ell * _layer_by_hand(m, t) + (m["layers"] - ell) * _layer_by_hand(m, tail)
                                        + 2 * m["d"] * m["v"] + probe)
    assert all(rows[n]["stage2"] is None for n in names[:-1])

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
    """LLaDA-V section: torch reference and the jax variants at both RedVTP settings, same weights; 32/16 also times
    --llada-methods × --keeps (here RedVTP and ToDRE stage 1 at 50 / 25 %), 2/2 only none / RedVTP 50 / 25."""
    pytest.importorskip("torch")
    path = tmp_path / "bench.json"
    rc = bench.main(["--family", "llada_v", "--preset", "micro", "--runs", "1", "--json", str(path), "--quiet",
                     "--llada-methods", "redvtp,todre", "--keeps", "50,25"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and "jax redvtp-50" in printed and "RedVTP keep 50%" in printed
    assert "jax todre-25" in printed

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
    from vtp_jax.runtime import build_method

    layers = report["model"]["text_layers"]
    keep = {f"jax {m}-{p}": build_method(m, "llada_v", n_v, layers, keep_ratio=p / 100).keep
            for m in ("redvtp", "todre") for p in (50, 25)}
    assert keep["jax redvtp-50"] == n_v // 2 and keep["jax todre-25"] == n_v // 4  # floor, as RedVTP's code
    assert s["keep"] == {"jax none": n_v, **keep}
    assert s["methods"] == ["redvtp", "todre"] and s["keeps_percent"] == [50.0, 25.0]
    expected = {"32/16": ["torch", "jax none", "jax redvtp-50", "jax redvtp-25", "jax todre-50", "jax todre-25"],
                "2/2": ["torch", "jax none", "jax redvtp-50", "jax redvtp-25"]}
    assert s["variants"] == {k: v[1:] for k, v in expected.items()}

    assert list(report["sections"]) == ["32/16", "2/2"]
    for name, sec in report["sections"].items():
        g = sec["gen_length"]
        assert (g, sec["steps"], sec["block_length"]) in bench.LLADA_V_SETTINGS
        assert list(sec["rows"]) == expected[name]
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
        if name == "32/16":  # ToDRE stage 1 prunes before the first step: fewer FLOPs than RedVTP at the same keep
            assert rows["jax todre-50"]["stage"] == "pre_llm" and rows["jax todre-50"]["method"] == "todre"
            assert rows["jax todre-50"]["flops"] < rows["jax redvtp-50"]["flops"]
            short = s["prompt_len"] + g - n_v + keep["jax todre-25"]
            assert rows["jax todre-25"]["seq_len_after_pruning"] == short
            assert rows["jax todre-25"]["flops"] == sec["flops"]["vision_and_projector"] + sec["steps"] * \
                bench.diffusion_step_flops(_llada_text(report["model"]), short, g)  # every step short
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


def test_diffusion_flops_pre_llm_by_hand():
    """A pre-LLM method (ToDRE stage 1, DivPrune, random) shortens every step, the first one included."""
    from vtp_jax.config import LladaVConfig, TextConfig, VisionConfig

    text = TextConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=4, causal=False)
    vision = VisionConfig(hidden_size=4, intermediate_size=8, num_hidden_layers=2, num_attention_heads=1,
                          image_size=8, patch_size=4)
    cfg = LladaVConfig(vision=vision, text=text)
    p_layer = 8 * 2 * 4 + 2 * 8 * 1 * 4 + 2 * 4 * 8 + 3 * 8 * 16
    step = lambda t: 3 * (2 * t * p_layer + 4 * t * t * 2 * 4) + 2 * 4 * 8 * 10  # noqa: E731  (G = 4 logit rows)
    kw = dict(prompt_len=20, num_visual=12, num_tiles=5, gen_length=4, steps=3, keep=6)
    vis = bench.llada_vision_flops(cfg, 5)
    assert bench.diffusion_flops(cfg, pre_llm=True, **kw) == vis + 3 * step(24 - 12 + 6)
    assert bench.diffusion_flops(cfg, **kw) == vis + step(24) + 2 * step(18)  # RedVTP: first step full


def test_method_prefill_flops_by_hand():
    """LLaVA prefill FLOPs per method on a hand-sized config: B · (Σ_l layer(T_l) + 2·D·V) (+ ToDRE-2's probe)."""
    from vtp_jax.config import TextConfig
    from vtp_jax.pruning.divprune import DivPrune
    from vtp_jax.pruning.fastv import FastV
    from vtp_jax.pruning.random_prune import RandomPrune
    from vtp_jax.pruning.todre import ToDRE
    from vtp_jax.pruning.todre_relevance import ToDRERelevance

    text = TextConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=4)
    cfg = SimpleNamespace(text=text, num_visual_tokens=12)
    p_layer = 8 * 2 * 4 + 2 * 8 * 1 * 4 + 2 * 4 * 8 + 3 * 8 * 16
    layer = lambda t: 2 * t * p_layer + 4 * t * t * 2 * 4  # noqa: E731
    head, t, b = 2 * 8 * 10, 20, 3
    assert bench.method_prefill_flops(cfg, t, None, batch=b) == b * (4 * layer(20) + head)
    for pre in (ToDRE(keep=5), DivPrune(keep=5), RandomPrune(keep=5)):  # every layer over T − N_v + keep = 13
        assert bench.method_prefill_flops(cfg, t, pre, batch=b) == b * (4 * layer(13) + head), pre.name
    assert bench.method_prefill_flops(cfg, t, FastV(keep=5, layer=2), batch=b) == b * (2 * layer(20) + 2 * layer(13)
                                                                                     + head)
    rel = ToDRERelevance(layer=3)
    probe = 2 * t * 8 * (2 + 1) * 4 + 2 * t * t * 2 * 4  # q, k projections + Q·Kᵀ of every prompt row
    assert bench.method_prefill_flops(cfg, t, rel, fired=True, batch=b) == b * (3 * layer(20) + layer(8) + head + probe)
    assert bench.method_prefill_flops(cfg, t, rel, fired=False, batch=b) == b * (4 * layer(20) + head + probe)


def test_default_methods_cover_the_registry():
    """--methods / --llada-methods default to every registered method of the family (dyrate excepted)."""
    from vtp_jax.pruning import METHODS
    from vtp_jax.runtime import family_stages

    assert bench.family_methods("llava") == ["fastv", "todre", "divprune", "random", "todre-relevance"]
    assert bench.family_methods("llada_v") == ["redvtp", "llada-fastv", "todre", "divprune", "random"]
    for family in ("llava", "llada_v"):
        registered = {n for n, cls in METHODS.items() if cls.stage in family_stages(family)} - set(bench.NOT_BENCHED)
        assert set(bench.family_methods(family)) == registered
        assert bench.parse_methods(None, family) == bench.family_methods(family)
    assert bench.parse_methods("", "llava") == [] and bench.parse_methods(" todre , fastv", "llava") == ["todre", "fastv"]
    assert bench.parse_keeps(bench.DEFAULT_KEEPS) == [50.0, 25.0, 10.0]
    assert bench.parse_keeps("12.5,100") == [12.5, 100.0] and bench.variant_name("todre", 12.5) == "jax todre-12.5"
    specs = bench.variant_specs(bench.family_methods("llava"), [50.0, 25.0, 10.0])
    assert len(specs) == 1 + 4 * 3 + 1 and specs[0] == ("jax none", None, None)
    assert specs[-1] == ("jax todre-relevance", "todre-relevance", None)
    assert [n for n, _, _ in specs[1:4]] == ["jax fastv-50", "jax fastv-25", "jax fastv-10"]


@pytest.mark.parametrize("family,n_v,layers", [("llava", 16, 3), ("llava", 256, 8), ("llada_v", 52, 2),
                                               ("llada_v", 544, 6)])
def test_keep_counts_match_runtime(family, n_v, layers):
    """Every default variant's method object = runtime.build_method(..., keep_ratio=P/100) (LLaVA rounds, LLaDA-V
    floors); ToDRE's pivot stays automatic."""
    from vtp_jax.runtime import build_method

    for name, method, pct in bench.variant_specs(bench.family_methods(family), [50.0, 25.0, 10.0])[1:]:
        ours = bench.build_variant_method(method, family, n_v, layers, pct)
        ref = build_method(method, family, n_v, layers, **({} if pct is None else {"keep_ratio": pct / 100}))
        assert ours == ref, name
        if pct is not None:
            scaled = n_v * pct / 100
            assert ours.keep == max(1, round(scaled) if family == "llava" else int(scaled)), name
        if method == "todre":
            assert ours.pivot is None


@pytest.mark.parametrize("argv,message", [
    (["--methods", "foo"], "--methods: unknown pruning method 'foo'"),
    (["--methods", "redvtp"], "does not apply to llava"),
    (["--methods", "dyrate"], "'dyrate' is not benchmarked"),
    (["--methods", "fastv,none"], "'none' is not a pruning method"),
    (["--methods", "todre,todre"], "listed twice"),
    (["--llada-methods", "fastv"], "--llada-methods: pruning method 'fastv'"),
    (["--llada-methods", "bogus"], "--llada-methods: unknown pruning method"),
    (["--keeps", "0"], "--keeps: every percentage must be in (0, 100]"),
    (["--keeps", "50,120"], "--keeps: every percentage must be in (0, 100]"),
    (["--keeps", "50,x"], "--keeps: 'x' is not a number"),
    (["--keeps", "25,25"], "--keeps: percentage listed twice"),
    (["--keeps", ""], "--keeps: give at least one percentage"),
])
def test_bad_methods_and_keeps_exit_2(argv, message, capsys):
    """Bad --methods / --llada-methods / --keeps: exit 2 with a message, before any section starts."""
    assert bench.main(["--preset", "micro", "--no-torch", *argv]) == 2
    captured = capsys.readouterr()
    assert "vtp-bench: error:" in captured.err and message in captured.err
    assert "RANDOM WEIGHTS" not in captured.out  # nothing ran


def test_bench_llada_v_cache_variants(tmp_path, capsys):
    """--diffusion-cache: every jax variant again under approximate caching / parallel decoding, named
    '<variant> [mode τ]', timed like the others, without an analytic FLOP figure (the model counts the exact loop);
    --llada-settings replaces the settings; the Fast-dLLM targets are reported for the rows present; bad modes, thresholds and settings exit 2."""
    path = tmp_path / "bench.json"
    rc = bench.main(["--family", "llada_v", "--preset", "micro", "--runs", "1", "--json", str(path), "--quiet",
                     "--llada-methods", "redvtp", "--keeps", "50", "--no-torch", "--diffusion-cache",
                     "prefix,dual@0.5", "--llada-settings", "8/4/8"])
    assert rc == 0
    report = json.loads(path.read_text())["llada_v"]
    assert report["settings"]["diffusion_cache"] == ["prefix", "dual τ0.5"]
    assert list(report["sections"]) == ["8/4"]
    rows = report["sections"]["8/4"]["rows"]
    assert set(rows) == {"jax none", "jax none [prefix]", "jax none [dual τ0.5]", "jax redvtp-50",
                         "jax redvtp-50 [prefix]", "jax redvtp-50 [dual τ0.5]"}
    assert rows["jax none [dual τ0.5]"]["flops"] is None and rows["jax none [dual τ0.5]"]["tokens_per_s"] > 0
    assert rows["jax none"]["flops"] > 0
    targets = {(t["setting"], t["variant"]): t for t in report["targets"]["fast_dllm"]}
    assert set(targets) == {("8/4", "jax none [prefix]"), ("8/4", "jax redvtp-50 [prefix]")}
    t = targets[("8/4", "jax none [prefix]")]
    assert t["speedup"] == pytest.approx(1 + rows["jax none [prefix]"]["throughput_gain_vs_jax_none"])
    assert t["status"] == ("PASS" if t["speedup"] >= 5 else "MISS")
    assert "jax none [dual τ0.5]" in capsys.readouterr().out
    for flags, needle in ((["--diffusion-cache", "full"], "unknown mode 'full'"),
                          (["--diffusion-cache", "dual@1.5"], "must be a number in (0, 1]"),
                          (["--llada-settings", "8/3/4"], "steps divisible by the number of blocks"),
                          (["--llada-settings", "8x4"], "is not gen_length/steps/block_length")):
        assert bench.main(["--family", "llada_v", "--preset", "micro", "--quiet", "--no-torch", *flags]) == 2
        assert needle in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--mesh", "model=2"], "is not AXIS=SIZE"),
    (["--mesh", "data=2", "--mesh", "tensor=0"], "whole number ≥ 1"),
    # two devices needed: vtp-bench starts itself again with 2 forced CPU devices; the child rejects --layers
    (["--mesh", "data=2", "--preset", "llava-1.5-7b", "--layers", "99"], "--layers must be an integer in [1, 32]"),
])
def test_bad_mesh_exit_2(argv, message, capfd):
    """vtp-bench --mesh: a bad mesh exits 2 before anything runs; with too few devices the child vtp-bench (forced
    CPU devices) reports its own errors with exit 2."""
    assert bench.main(["--no-torch", *argv]) == 2
    captured = capfd.readouterr()
    assert "vtp-bench: error:" in captured.err and message in captured.err
    assert "RANDOM WEIGHTS" not in captured.out
