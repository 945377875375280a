"""``vtp-bench --mesh M [--mesh M2 ...]``: what a device mesh costs and whether it changes anything.

* A full-size preset (``--preset llava-1.5-7b | llava-next-7b | llada-v-8b``): the per-device memory of every
  compiled generation step under each mesh (``memory_analysis``; all 32 layers extrapolated from compiled 2- and
  4-layer models unless ``--layers``; :mod:`eval.mesh_memory`). Nothing runs: the model is abstract.
* A bench preset (``micro`` / ``tiny`` / ``small``): the family's random-weight checkpoint is converted, restored
  unsharded and straight into each mesh's shardings (``checkpoint.load(mesh=)``), and every selected method (first
  keep of ``--keeps``; LLaDA-V also under each ``--diffusion-cache`` mode) generates greedily on both: tokens and kept
  indices must be equal. Reported: ``=`` or the number of differing tokens, and the parameter bytes each device
  holds (from the arrays' ``addressable_shards``).

Correctness and memory only, never speed: on CPU the forced host devices
(``--xla_force_host_platform_device_count``, set by :func:`eval.bench.cli.main` when this process has too few
devices) share the machine's cores.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from typing import Any, Callable

from eval.bench.errors import BenchError
from eval.bench.methods import build_variant_method, selection, variant_specs
from eval.bench.report import text_table
from vtp_jax import families

MESH_NOTE = "random weights: per-device memory and sharded == unsharded only, no speed figures"


def mesh_sizes(meshes: list[str]) -> list[dict[str, int]]:
    """Each ``--mesh`` text parsed (:func:`vtp_jax.sharding.parse_mesh`). Raises BenchError."""
    from vtp_jax.sharding import MeshError, parse_mesh

    try:
        return [parse_mesh(m) for m in meshes]
    except MeshError as e:
        raise BenchError(str(e)) from None


def devices_needed(meshes: list[str]) -> int:
    """The largest device count among the meshes (:func:`eval.mesh_memory.devices_needed`). Raises BenchError for
    a bad mesh."""
    from eval.mesh_memory import devices_needed as needed
    from vtp_jax.sharding import MeshError

    try:
        return needed(meshes)
    except MeshError as e:
        raise BenchError(str(e)) from None


def run_mesh_bench(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """The ``--mesh`` report: ``{"random_weights", "note", "mesh": {"meshes", "kind": "compiled" | "equality", ...}}``
    (see the module doc). Raises BenchError for a bad mesh or one that does not fit the devices."""
    import jax

    from eval.bench.cli import FULL_SIZE_PRESETS

    meshes = list(args.mesh)
    need = devices_needed(meshes)
    if need > len(jax.devices()):
        raise BenchError(f"the meshes need {need} devices, {len(jax.devices())} {jax.default_backend()} devices here")
    report: dict[str, Any] = {"random_weights": True, "note": MESH_NOTE, "families": []}
    if args.preset in FULL_SIZE_PRESETS:
        from eval.mesh_memory import compiled_table
        from vtp_jax.testbed import full_size as fs

        try:
            fs.check_preset(args.preset, args.layers)
        except fs.PresetError as e:
            raise BenchError(str(e)) from None
        log(f"vtp-bench --mesh: compiled per-device memory of {args.preset} ({MESH_NOTE})")
        table = compiled_table([args.preset], meshes, layers=args.layers, log=log)
        report["mesh"] = {"kind": "compiled", "meshes": meshes, "devices": len(jax.devices()),
                          "platform": jax.default_backend(), **table}
        return report
    # --family all: one family per bench checkpoint (every autoregressive family is benched on the LLaVA-1.5 one)
    names = [args.family] if args.family in families.families() else list(
        {families.get(f).kind: f for f in reversed(list(families.families()))}.values())
    section: dict[str, Any] = {"kind": "equality", "meshes": meshes, "devices": len(jax.devices()),
                               "platform": jax.default_backend(), "preset": args.preset, "families": {}}
    for name in names:
        t0 = time.perf_counter()
        section["families"][name] = _equality(args, name, meshes, log)
        log(f"{name}: {time.perf_counter() - t0:.0f} s")
    report["mesh"] = section
    return report


def _checkpoint(workdir: str, family: str, preset: str) -> tuple[str, dict]:
    """Writes and converts the family's random-weight bench checkpoint → (converted dir, preset settings)."""
    from convert import convert

    hf_dir, jax_dir = os.path.join(workdir, "hf"), os.path.join(workdir, "converted")
    if families.get(family).kind == families.AUTOREGRESSIVE:
        from eval.bench.autoregressive import PRESETS
        from vtp_jax.testbed.hf_llava import tiny_llava_config, write_random_llava

        settings = dict(PRESETS[preset])
        write_random_llava(hf_dir, tiny_llava_config(vision_feature_select_strategy="default", **settings), seed=0)
    else:
        from eval.bench.diffusion import LLADA_V_PRESETS
        from vtp_jax.testbed.hf_llada_v import tiny_llada_v_config, write_random_llada_v

        settings = dict(LLADA_V_PRESETS[preset])
        image = settings.pop("image")
        write_random_llada_v(hf_dir, tiny_llada_v_config(**settings), seed=0)
        settings["image"] = image
    convert(hf_dir, jax_dir, dtype="float32", progress=False)
    return jax_dir, settings


def _equality(args: argparse.Namespace, family: str, meshes: list[str], log) -> dict:
    """One family on the bench preset: every variant's tokens / kept indices on each mesh against the unsharded
    run, and the parameter bytes per device."""
    import numpy as np
    from flax import nnx

    from eval.bench.runners import make_inputs, make_llada_inputs
    from vtp_jax.checkpoint import load
    from vtp_jax.generation import make_generator
    import jax

    from vtp_jax.sharding import MeshError, make_mesh, per_device_bytes

    methods, keeps = selection(args, family)
    specs = variant_specs(methods, keeps[:1])
    sizes = mesh_sizes(meshes)
    batch = math.lcm(*(s["data"] for s in sizes)) * args.batch  # every data size divides the batch
    with tempfile.TemporaryDirectory(prefix="vtp-bench-mesh-") as workdir:
        jax_dir, settings = _checkpoint(workdir, family, args.preset)
        models = {"unsharded": load(jax_dir)[0]}
        for text, s in zip(meshes, sizes):
            try:
                models[text] = load(jax_dir, mesh=make_mesh(s, devices=jax.devices()[:math.prod(s.values())]))[0]
            except MeshError as e:
                raise BenchError(f"--mesh {text} on the {family} bench preset {args.preset}: {e}") from None
    cfg = models["unsharded"].cfg
    n_layers = cfg.text.num_hidden_layers
    diffusion: dict[str, Any] = {"": None}
    if families.get(family).kind == families.AUTOREGRESSIVE:
        ins = make_inputs(cfg, batch)
        images, n_v = ins["pixel_values"], cfg.num_visual_tokens
        call = lambda gen: gen.generate_arrays(ins["input_ids"], ins["attention_mask"], images,
                                               max_new_tokens=args.max_new_tokens, eos_token_ids=(), pad_token_id=0)
    else:
        import dataclasses

        from eval.bench.diffusion import parse_cache_variants, parse_llada_settings
        from vtp_jax.generation.diffusion import DiffusionConfig
        from vtp_jax.testbed.hf_llada_v import SUPPRESS_IDS

        one = make_llada_inputs(models["unsharded"], tuple(settings["image"]))
        rep = lambda x: np.repeat(x, batch, axis=0)
        ins = {"input_ids": rep(one["input_ids"]), "attention_mask": rep(one["attention_mask"])}
        images = {"pixel_values": rep(one["pixel_values"]), "image_size": one["image_size"]}
        n_v = one["num_visual"]
        g, st, bl = parse_llada_settings(getattr(args, "llada_settings", None))[0]
        base = DiffusionConfig(gen_length=g, block_length=bl, steps=st, mask_id=int(cfg.mask_token_id),
                               suppress_ids=tuple(i for i in SUPPRESS_IDS if i != cfg.mask_token_id))
        diffusion = {"": base}
        for label, mode, tau in parse_cache_variants(getattr(args, "diffusion_cache", None)):
            diffusion[f" [{label}]"] = dataclasses.replace(base, cache=mode, threshold=tau)
        call = lambda gen: gen.generate_arrays(ins["input_ids"], ins["attention_mask"], images, temperature=0.0)
    rows: dict[str, dict] = {}
    for name, m, pct in specs:
        for suffix, dcfg in diffusion.items():
            method = build_variant_method(m, family, n_v, n_layers, pct)
            outs = {}
            for key, model in models.items():
                mesh = None if key == "unsharded" else _mesh_of(model)
                outs[key] = call(make_generator(model, method, diffusion=dcfg, mesh=mesh))
            ref = outs.pop("unsharded")
            row = {}
            for key, out in outs.items():
                diff = int(np.sum(np.asarray(out.tokens) != np.asarray(ref.tokens)))
                row[key] = {"tokens_differ": diff, "kept_equal": bool(np.array_equal(out.kept, ref.kept))}
            rows[name + suffix] = row
            log(f"  {family} {name + suffix}: " + ", ".join(
                f"{k}: {'=' if v['tokens_differ'] == 0 and v['kept_equal'] else 'DIFF'}" for k, v in row.items()))
    params = {key: max(per_device_bytes(nnx.state(model, nnx.Param)).values()) for key, model in models.items()}
    return {"batch": batch, "num_visual_tokens": int(n_v), "rows": rows, "param_bytes_per_device": params,
            "all_equal": all(v["tokens_differ"] == 0 and v["kept_equal"] for r in rows.values() for v in r.values())}


def _mesh_of(model):
    """The mesh a restored model's parameters are sharded over."""
    import jax
    from flax import nnx

    return jax.tree.leaves(nnx.state(model, nnx.Param))[0].sharding.mesh


def format_mesh(section: dict) -> str:
    """The ``--mesh`` report as text."""
    if section["kind"] == "compiled":
        from eval.mesh_memory import format_compiled

        return format_compiled(section)
    parts = [f"sharded == unsharded on {section['devices']} {section['platform']} devices, bench preset "
             f"{section['preset']} (correctness only: the devices share the host's cores, no speed figures)"]
    for family, r in section["families"].items():
        meshes = section["meshes"]
        body = [[name] + [("=" if row[m]["tokens_differ"] == 0 and row[m]["kept_equal"] else
                           f"DIFF {row[m]['tokens_differ']} tok" + ("" if row[m]["kept_equal"] else ", kept"))
                          for m in meshes] for name, row in r["rows"].items()]
        body.append(["param MiB / device"] + [f"{r['param_bytes_per_device'][m] / 2**20:.1f}" for m in meshes])
        parts.append(f"\n{family} (batch {r['batch']}, {r['num_visual_tokens']} visual tokens; unsharded "
                     f"{r['param_bytes_per_device']['unsharded'] / 2**20:.1f} MiB of parameters): "
                     f"{'ALL EQUAL' if r['all_equal'] else 'DIFFERENCES'}")
        width = max(len(name) for name in r["rows"]) + 2
        cols = [("variant", max(width, 20), "<")] + [(m, max(len(m) + 2, 18), ">") for m in meshes]
        parts.extend(text_table(cols, body))
    return "\n".join(parts)
