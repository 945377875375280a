"""Sharded == unsharded, run as its own process with 8 CPU devices (``tests/test_sharding.py`` starts it with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, which must be set before JAX starts).

For a tiny LLaVA and a tiny LLaDA-V (random weights, scaled up so that greedy choices are not near ties), batch 2 with
left padding: the generators on models whose parameters are sharded over a mesh give the tokens and kept indices of
the unsharded run, for every method; full forwards of the default-initialised models (logits of order 1) agree
within 1e-5 (float32); every parameter's shards have the
per-device shape the rules imply. Prints one JSON line of what it compared; exits 1 with the first difference.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile

import jax
import numpy as np
from flax import nnx

from vtp_jax.config import config_from_hf
from vtp_jax.modeling.llada_v import LladaV
from vtp_jax.modeling.llava import Llava
from vtp_jax.runtime import build_methods
from vtp_jax.sharding import make_mesh, per_device_bytes, shard_model
from vtp_jax.testbed import hf_llada_v, hf_llava

LLAVA = dict(image_size=64, patch_size=16, vision_hidden=32, vision_layers=2, vision_heads=4, vision_mlp=64,
             text_hidden=64, text_layers=3, text_heads=4, text_kv_heads=2, text_mlp=128, vocab_size=320)
LLADA = dict(image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=4, vision_mlp=64,
             text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=2, text_mlp=128, vocab_size=320, max_grid=2)
MESHES = ("data=2,fsdp=2,tensor=2", "fsdp=4,tensor=2", "data=2,tensor=4")


def scaled(model, seed: int):
    """``model`` with N(0, 0.3²) added to every parameter (logits far from uniform: no near ties)."""
    state = nnx.state(model, nnx.Param)
    leaves = jax.tree.leaves(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noise = jax.tree.unflatten(jax.tree.structure(state), list(keys))
    nnx.update(model, jax.tree.map(lambda x, k: x + 0.3 * jax.random.normal(k, x.shape, x.dtype), state, noise))
    return model


def llava_model(scale: bool = True):
    """The tiny LLaVA: scaled weights for the generation checks, the default initialisation (logits of order 1)
    for the logits check."""
    model = Llava(config_from_hf(hf_llava.tiny_llava_config(**LLAVA).to_dict()), rngs=nnx.Rngs(0))
    return scaled(model, 1) if scale else model


def llada_model(scale: bool = True):
    model = LladaV(config_from_hf(hf_llada_v.tiny_llada_v_config(**LLADA)), rngs=nnx.Rngs(0))
    return scaled(model, 2) if scale else model


def llava_batch(cfg):
    rng = np.random.default_rng(0)
    n_v, t = cfg.num_visual_tokens, 24
    ids = np.full((2, t + n_v), 0, np.int64)
    mask = np.zeros_like(ids)
    for b, n in enumerate((t, t - 5)):  # row 1 left-padded by 5
        row = np.concatenate([rng.integers(10, 300, 3), np.full(n_v, cfg.image_token_id), rng.integers(10, 300, n - 3)])
        ids[b, -len(row):], mask[b, -len(row):] = row, 1
    pixels = rng.standard_normal((2, 3, cfg.vision.image_size, cfg.vision.image_size)).astype(np.float32)
    return ids, mask, pixels


def llada_batch(model, cfg, hw=(40, 60)):
    rng = np.random.default_rng(0)
    layout = model.layout(hw)
    rows = [np.concatenate([rng.integers(10, 300, 4), np.full(layout.num_tokens, cfg.image_token_id),
                            rng.integers(10, 300, 6 - 3 * b)]) for b in range(2)]
    t = max(len(r) for r in rows)
    ids, mask = np.zeros((2, t), np.int64), np.zeros((2, t), np.int64)
    for b, r in enumerate(rows):
        ids[b, t - len(r):], mask[b, t - len(r):] = r, 1
    s = cfg.vision.image_size
    pixels = rng.standard_normal((2, layout.num_tiles, 3, s, s)).astype(np.float32)
    return ids, mask, {"pixel_values": pixels, "image_size": hw}


def fail(what: str, a, b) -> None:
    print(f"MISMATCH {what}:\n{np.asarray(a)}\n{np.asarray(b)}", flush=True)
    sys.exit(1)


def same(what: str, a, b) -> None:
    if np.asarray(a).shape != np.asarray(b).shape or not np.array_equal(a, b):
        fail(what, a, b)


def one_row_tau(model, ids, mask, pixels, kw: dict) -> float:
    """A ToDRE stage-2 τ (layer 2) for which exactly one row of the batch drops its visual tokens: a row fires when
    both attention ratios are below τ, so τ is the mean of the two rows' larger ratio (the host-side decision then
    differs between the rows)."""
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator

    cfg = model.cfg
    method = build_methods("todre+todre-relevance", "llava", cfg.num_visual_tokens, cfg.text.num_hidden_layers,
                           tau=0.5, layer=2)
    st = AutoregressiveGenerator(model, method).generate_arrays(ids, mask, pixels, **kw).stages["todre-relevance"]
    return float(np.mean(np.maximum(np.asarray(st["alpha_t2v"]), np.asarray(st["alpha_v2t"]))))


def cache_spec(model, mesh, ids, mask, pixels) -> list:
    """The PartitionSpec of the first layer's cached keys after a sharded prefill (as a list of axis names)."""
    import jax.numpy as jnp

    from vtp_jax.generation.autoregressive import AutoregressiveGenerator
    from vtp_jax.sharding import mesh_context, shard_batch

    gen = AutoregressiveGenerator(model, None, mesh=mesh)
    args = [shard_batch(x, mesh) for x in (np.asarray(ids, np.int32), np.asarray(mask, bool), pixels)]
    with mesh_context(mesh):
        pre = gen.prefill(gen.state, *args, jax.random.key(0), jnp.float32(0), jnp.float32(1), max_new_tokens=2)
    return [a if a is None or isinstance(a, str) else list(a) for a in pre.caches[0].k.sharding.spec]


def check_llava(report: dict, predictor: str) -> None:
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator

    base, model = llava_model(), llava_model()
    cfg = base.cfg
    ids, mask, pixels = llava_batch(cfg)
    n_v, n_layers = cfg.num_visual_tokens, cfg.text.num_hidden_layers
    kw = dict(max_new_tokens=6, eos_token_ids=(), pad_token_id=0)
    tau = one_row_tau(base, ids, mask, pixels, kw)
    # ToDRE 1+2 covers the pre-LLM selection (DivPrune and random share its path) and the host-side decision
    specs = {"none": {}, "fastv": {"layer": 2}, "todre+todre-relevance": {"tau": tau, "layer": 2},
             "dyrate": {"predictor": predictor}}
    ref = {name: AutoregressiveGenerator(base, build_methods(name, "llava", n_v, n_layers, **o)).generate_arrays(
        ids, mask, pixels, **kw) for name, o in specs.items()}
    fwd = jax.jit(lambda m: m(ids, pixels, mask))
    plain, plain_sharded = llava_model(scale=False), llava_model(scale=False)
    logits_ref = np.asarray(fwd(plain))
    for text in MESHES:
        mesh = make_mesh(text)
        shard_model(model, mesh)
        logits = np.asarray(fwd(shard_model(plain_sharded, mesh)))
        err = float(np.max(np.abs(logits - logits_ref)))
        if err > 1e-5:
            fail(f"llava logits on {text}: max |diff| {err}", logits, logits_ref)
        report["llava_logits_max_abs_diff"][text] = err
        sizes = mesh.shape
        k = model.language_model.layers[0].mlp.up_proj.kernel
        if k[...].addressable_shards[0].data.shape != (64 // sizes["fsdp"], 128 // sizes["tensor"]):
            fail(f"up_proj shard shape on {text}", k[...].addressable_shards[0].data.shape, None)
        report["llava_param_bytes_per_device"][text] = sorted(set(per_device_bytes(nnx.state(model)).values()))
        for name, o in specs.items():
            if text != MESHES[0]:
                break  # every method on the first mesh; the others check the layouts (logits, shard shapes)
            method = build_methods(name, "llava", n_v, n_layers, **o)
            out = AutoregressiveGenerator(model, method, mesh=mesh).generate_arrays(ids, mask, pixels, **kw)
            same(f"llava {name} tokens on {text}", out.tokens, ref[name].tokens)
            same(f"llava {name} kept on {text}", out.kept, ref[name].kept)
            if out.stage2_dropped is not None:
                same(f"llava {name} stage 2 on {text}", out.stage2_dropped, ref[name].stage2_dropped)
            if out.kept_per_token is not None:
                same(f"llava {name} kept per token on {text}", out.kept_per_token, ref[name].kept_per_token)
            report["llava"].append(f"{name} @ {text}")
        if text == MESHES[0]:
            report["llava_cache_spec"] = cache_spec(model, mesh, ids, mask, pixels)
            report["stage2_dropped"] = np.asarray(ref["todre+todre-relevance"].stage2_dropped).tolist()


def check_llada(report: dict) -> None:
    from vtp_jax.generation.diffusion import DiffusionConfig, DiffusionGenerator

    base, model = llada_model(), llada_model()
    cfg = base.cfg
    ids, mask, image = llada_batch(base, cfg)
    n_v = int((ids[0] == cfg.image_token_id).sum())
    n_layers = cfg.text.num_hidden_layers
    dcfg = DiffusionConfig(gen_length=8, block_length=4, steps=8, mask_id=int(cfg.mask_token_id))
    # the pre-LLM selections (DivPrune, random) and the attention probe (LLaDA-FastV) share their code with the
    # LLaVA runs above and with RedVTP; ToDRE + RedVTP chains both diffusion stages
    variants = {"todre+redvtp": ("todre+redvtp", dcfg),
                "redvtp dual τ0.5": ("redvtp", dataclasses.replace(dcfg, cache="dual", threshold=0.5))}

    def run(m, mesh=None, only=None):
        return {name: DiffusionGenerator(m, c, None if spec is None else build_methods(spec, "llada_v", n_v, n_layers),
                                         mesh=mesh).generate_arrays(ids, mask, image)
                for name, (spec, c) in variants.items() if only is None or name in only}

    ref = run(base)
    fwd = jax.jit(lambda m, px: m(ids, px, mask, image_size=image["image_size"]))
    plain, plain_sharded = llada_model(scale=False), llada_model(scale=False)
    logits_ref = np.asarray(fwd(plain, image["pixel_values"]))
    for text in MESHES[:2]:
        mesh = make_mesh(text)
        shard_model(model, mesh)
        err = float(np.max(np.abs(np.asarray(fwd(shard_model(plain_sharded, mesh), image["pixel_values"]))
                                  - logits_ref)))
        if err > 1e-5:
            fail(f"llada-v logits on {text}: max |diff| {err}", err, 1e-5)
        report["llada_v_logits_max_abs_diff"][text] = err
        for name, out in (run(model, mesh) if text == MESHES[0] else {}).items():
            same(f"llada-v {name} tokens on {text}", out.tokens, ref[name].tokens)
            same(f"llada-v {name} kept on {text}", out.kept, ref[name].kept)
            if out.steps != ref[name].steps:
                fail(f"llada-v {name} steps on {text}", out.steps, ref[name].steps)
            report["llada_v"].append(f"{name} @ {text}")


def check_compiled_memory(report: dict) -> None:
    """eval.mesh_memory on a reduced LLaVA-1.5 preset: the compiled prefill's per-device arguments are exactly the
    parameter shards (sharding.param_bytes_per_device) plus the inputs' shards; the 3-layer figures extrapolated
    from 1 and 2 layers equal the compiled 3-layer ones (arguments and outputs exactly)."""
    from eval.bench.runners import make_inputs
    import math

    from eval.mesh_memory import abstract_sharded_model, compiled_steps, extrapolate
    from vtp_jax.checkpoint import flatten
    from vtp_jax.modeling.axes import logical_axes
    from vtp_jax.sharding import param_bytes_per_device, parse_mesh
    from vtp_jax.testbed import full_size as fs

    small = dict(text_hidden=64, text_mlp=128, text_heads=4, text_kv_heads=4, vision_hidden=32, vision_layers=1,
                 vision_mlp=64, vision_heads=2, image_size=56, patch_size=14)
    mesh_text = "data=2,fsdp=2,tensor=2"
    got = {n: compiled_steps("llava-1.5-7b", mesh_text, layers=n, overrides=small) for n in (1, 2, 3)}
    cfg = config_from_hf(fs.preset_config("llava-1.5-7b", layers=1, overrides=small))
    _, state = abstract_sharded_model(cfg, make_mesh(mesh_text))
    params = param_bytes_per_device(nnx.to_pure_dict(state), logical_axes(state), parse_mesh(mesh_text))
    ins = make_inputs(cfg, 2)
    t = ins["input_ids"].shape[1]
    # per device: 1 of 2 rows of ids (int32) and mask (bool), pixels (float32); the key (2 × uint32), temperature, top-p
    inputs = t * 4 + t + ins["pixel_values"][0].size * 4 + 8 + 4 + 4
    # jit drops the parameters a step never reads: the last CLIP layer and post-LayerNorm (feature layer −2;
    # the tower is replicated, so every device would hold them whole)
    last = f"vision_tower.layers.{cfg.vision.num_hidden_layers - 1}."
    unused = sum(math.prod(x.shape) * x.dtype.itemsize for k, x in flatten(nnx.to_pure_dict(state)).items()
                 if k.startswith((last, "vision_tower.post_layernorm.")))
    arg = got[1]["steps"]["prefill"]["argument"]
    if arg != params - unused + inputs:
        fail("compiled prefill arguments vs parameter shards + inputs", arg, params - unused + inputs)
    ext = extrapolate(got[1], got[2], 3)["steps"]
    for step, v in got[3]["steps"].items():
        for k in ("argument", "output"):
            if ext[step][k] != v[k]:
                fail(f"extrapolated {step} {k}", ext[step][k], v[k])
    report["compiled_prefill_argument_bytes"] = arg


def check_bench_mesh(report: dict) -> None:
    """vtp-bench --mesh on the micro LLaVA (in this 8-device process): the sharded restore generates as the
    unsharded one."""
    from eval.bench.cli import main as bench

    with tempfile.TemporaryDirectory() as tmp:
        rc = bench(["--mesh", "fsdp=2,tensor=2", "--preset", "micro", "--family", "llava", "--methods", "fastv",
                    "--keeps", "50", "--max-new-tokens", "4", "--no-torch", "--quiet", "--json", f"{tmp}/m.json"])
        if rc != 0:
            fail("vtp-bench --mesh exit code", rc, 0)
        with open(f"{tmp}/m.json", encoding="utf-8") as f:
            section = json.load(f)["mesh"]["families"]["llava"]
    if not section["all_equal"] or sorted(section["rows"]) != ["jax fastv-50", "jax none"]:
        fail("vtp-bench --mesh rows", section["rows"], None)
    report["bench_mesh_param_bytes"] = section["param_bytes_per_device"]


def main() -> int:
    from vtp_jax.pruning.dyrate import RatePredictor

    assert jax.device_count() == 8, jax.devices()
    report = {"devices": jax.device_count(), "llava": [], "llada_v": [], "llava_logits_max_abs_diff": {},
              "llada_v_logits_max_abs_diff": {}, "llava_param_bytes_per_device": {}}
    with tempfile.TemporaryDirectory() as tmp:
        predictor = f"{tmp}/p.safetensors"
        rng = np.random.default_rng(0)  # a hand-set predictor (4 rates): rates that rise with the attention shares
        RatePredictor(rng.standard_normal((4 * 4, 4)).astype(np.float32), np.array([2.0, 0.0, -1.0, -2.0], np.float32),
                      1, {"note": "test"}).save(predictor)
        check_llava(report, predictor)
    check_llada(report)
    check_compiled_memory(report)
    check_bench_mesh(report)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
