"""Per-device memory of each full-size preset under device meshes: parameter bytes from the shardings alone, and
the compiled generation steps' ``memory_analysis`` on a mesh of (forced CPU) devices.

    python -m eval.mesh_memory [--json PATH]                       # parameters, no devices needed
    python -m eval.mesh_memory --compiled [--preset P ...] [--mesh M ...] [--layers L] [--json PATH]

``--compiled`` starts itself again with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` when this process
has fewer devices than the largest mesh needs (CPU only; on an accelerator the mesh must fit its devices), builds
the preset's model *abstractly* (``jax.ShapeDtypeStruct`` parameters carrying their ``NamedSharding`` s: nothing
is allocated, no weights exist), lowers the generator's jitted steps with abstract inputs split along ``data``
(batch = the data size: one row per data replica) and compiles them for the mesh. XLA partitions each program per
device (SPMD), so ``memory_analysis()`` of the compiled step is the memory of **one device**: arguments (its
parameter shards, the inputs and caches it holds), outputs, temporaries, aliased (donated) bytes. A step's peak is
estimated as arguments + outputs − aliased + temporaries.

Steps measured: autoregressive families — ``prefill`` (vision tower, merge, every decoder layer, the KV cache
built) and ``decode`` (``max_new_tokens`` steps in one ``while_loop``, the cache donated); LLaDA-V — ``encode``
(vision tower, merge), ``first_step`` (the full-length first denoising step) and ``denoise`` (every later step in
one loop); unpruned, bf16, the bench's prompt and image (:mod:`eval.bench.runners`).

What CPU devices show: the sizes XLA's CPU backend plans for (its fusion and scheduling differ from a GPU's or a
TPU's, so accelerator figures differ somewhat — arguments and outputs, set by the shardings, do not). Nothing is run
and nothing is timed: the devices share the host's cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from typing import Any

MESHES = ("data=1", "fsdp=2", "tensor=2", "fsdp=4", "tensor=4", "fsdp=4,tensor=2", "tensor=8", "fsdp=8")
COMPILED_MESHES = ("data=1", "fsdp=8", "tensor=8", "fsdp=4,tensor=2", "data=2,fsdp=4")
FORCED_DEVICES = 8  # CPU devices --compiled asks for when this process has too few
MAX_NEW_TOKENS = 32  # decode steps of the autoregressive presets
FIT_LAYERS = (2, 4)  # decoder layers compiled for the 32-layer extrapolation
LLADA_SETTING = (32, 16, 32)  # gen_length, steps, block_length of the LLaDA-V preset (the bench's default)


def table(presets=None, meshes=MESHES) -> dict:
    """{preset: {mesh: bytes per device or an error string}} for bfloat16 parameters."""
    from flax import nnx

    from vtp_jax.checkpoint import abstract_model
    from vtp_jax.config import config_from_hf
    from vtp_jax.modeling.axes import logical_axes
    from vtp_jax.sharding import MeshError, param_bytes_per_device, parse_mesh
    from vtp_jax.testbed import full_size as fs

    out = {}
    for preset in presets or fs.PRESETS:
        cfg = config_from_hf(fs.preset_config(preset))
        _, state = abstract_model(cfg, "bfloat16")
        params = nnx.to_pure_dict(nnx.filter_state(state, nnx.Param))
        names = logical_axes(state)
        row = {}
        for mesh in meshes:
            try:
                row[mesh] = param_bytes_per_device(params, names, parse_mesh(mesh))
            except MeshError as e:
                row[mesh] = f"does not divide: {e}"
        out[preset] = row
    return out


# ---- compiled steps -------------------------------------------------------------------------------------------

def _stats(compiled) -> dict[str, int]:
    """One compiled step's per-device ``memory_analysis`` (bytes) and its estimated peak."""
    m = compiled.memory_analysis()
    out = {"argument": int(m.argument_size_in_bytes), "output": int(m.output_size_in_bytes),
           "alias": int(m.alias_size_in_bytes), "temp": int(m.temp_size_in_bytes)}
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def _outputs(lowered, compiled):
    """The abstract outputs of a compiled step, each with the sharding XLA gave it (inputs of the next step)."""
    import jax

    return jax.tree.map(lambda info, sh: jax.ShapeDtypeStruct(info.shape, info.dtype, sharding=sh),
                        lowered.out_info, compiled.output_shardings)


def abstract_sharded_model(cfg, mesh, dtype: str = "bfloat16"):
    """(abstract model, its state with ``ShapeDtypeStruct`` leaves carrying their ``NamedSharding`` s under
    :data:`vtp_jax.sharding.RULES`): what :func:`vtp_jax.checkpoint.load` with ``mesh`` restores into, without any
    weight. Raises MeshError for an axis that does not divide a dimension it splits."""
    import jax
    from flax import nnx

    from vtp_jax.checkpoint import abstract_model
    from vtp_jax.modeling.axes import logical_axes
    from vtp_jax.sharding import param_shardings

    graphdef, state = abstract_model(cfg, dtype)
    pure = nnx.to_pure_dict(state)
    shardings = param_shardings(pure, logical_axes(state), mesh)
    sharded = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), pure, shardings)
    nnx.replace_by_pure_dict(state, sharded)
    return nnx.merge(graphdef, state), state


def _abstract_batch(x, mesh):
    """A host array's abstract twin split along ``data`` (int64 → int32, as the generators pass ids)."""
    import jax
    import numpy as np

    from vtp_jax.sharding import batch_sharding, check_divides

    x = np.asarray(x)
    dtype = np.int32 if x.dtype == np.int64 else x.dtype
    sh = batch_sharding(mesh, x.ndim)
    check_divides(sh.spec, x.shape, mesh.shape, "the batch")
    return jax.ShapeDtypeStruct(x.shape, dtype, sharding=sh)


def _autoregressive_steps(gen, model, preset: str, batch: int, mesh) -> dict[str, dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from eval.bench.runners import make_inputs, make_llava_next_inputs
    from eval.full_size_bench import DEFAULT_IMAGE
    from vtp_jax.generation.autoregressive import split_image_inputs
    from vtp_jax.testbed import full_size as fs

    cfg = model.cfg
    text = fs.TEXT_ID_RANGE[preset]
    if cfg.family == "llava_next":
        ins = make_llava_next_inputs(model, DEFAULT_IMAGE["llava_next"], batch, bos_id=fs.LLAVA_BOS_ID,
                                     text_range=text)
    else:
        ins = make_inputs(cfg, batch, bos_id=fs.LLAVA_BOS_ID, text_range=text)
    traced, static = split_image_inputs(ins.get("image_inputs", ins["pixel_values"]))
    images = jax.tree.map(lambda x: _abstract_batch(x, mesh), traced)
    image_kw = {"image_static": static} if static else {}
    ids = _abstract_batch(ins["input_ids"], mesh)
    mask = jax.ShapeDtypeStruct(ids.shape, np.bool_, sharding=ids.sharding)
    key, temp, top_p = jax.random.key(0), jnp.float32(0), jnp.float32(1)
    low = gen.prefill.lower(gen.state, ids, mask, images, key, temp, top_p, max_new_tokens=MAX_NEW_TOKENS,
                            **image_kw)
    comp = low.compile()
    pre = _outputs(low, comp)
    out = {"prefill": _stats(comp)}
    low = gen.decode.lower(gen.state, pre.caches, pre.token, pre.next_pos, pre.key, temp, top_p,
                           jnp.asarray([-1], jnp.int32), jnp.int32(0), max_new_tokens=MAX_NEW_TOKENS)
    out["decode"] = _stats(low.compile())
    return out


def _diffusion_steps(gen, model, preset: str, batch: int, mesh) -> dict[str, dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from eval.bench.runners import make_llada_inputs
    from eval.full_size_bench import DEFAULT_LLADA_IMAGE
    from vtp_jax.testbed import full_size as fs

    ins = make_llada_inputs(model, DEFAULT_LLADA_IMAGE, bos_id=fs.LLADA_BOS_ID, text_range=fs.TEXT_ID_RANGE[preset])
    rep = lambda x: np.repeat(np.asarray(x), batch, axis=0)
    ids = _abstract_batch(rep(ins["input_ids"]), mesh)
    mask = jax.ShapeDtypeStruct(ids.shape, np.int32, sharding=ids.sharding)
    arrays = {"pixel_values": _abstract_batch(rep(ins["pixel_values"]), mesh)}
    static = (("image_size", tuple(ins["image_size"])),)
    low = gen.encode.lower(gen.state, ids, mask, arrays, static=static)
    comp = low.compile()
    prompt = _outputs(low, comp)
    out = {"encode": _stats(comp)}
    carry = gen.initial_carry(batch, jax.random.key(0))
    low = gen.first_step.lower(gen.state, prompt, carry, temperature=0.0, num_visual=ins["num_visual"], score=False)
    comp = low.compile()
    carry2, prompt2, _ = _outputs(low, comp)
    out["first_step"] = _stats(comp)
    low = gen.denoise.lower(gen.state, prompt2, carry2, jnp.int32(gen.cfg.max_steps), temperature=0.0)
    out["denoise"] = _stats(low.compile())
    return out


def compiled_steps(preset: str, mesh_text: str, *, layers: int | None = None,
                   overrides: dict | None = None) -> dict[str, Any]:
    """Per-device ``memory_analysis`` of each generation step of ``preset`` with ``layers`` decoder layers (None:
    all 32; ``overrides``: the test-only widths of :func:`vtp_jax.testbed.full_size.preset_config`) on the mesh
    ``mesh_text`` over the first devices of this process: ``{"mesh", "batch", "devices", "layers", "steps": {step:
    {"argument", "output", "alias", "temp", "peak"}}}`` (bytes), or ``{"mesh", "error"}`` when an axis does not
    divide a dimension it splits. Raises MeshError when the mesh needs more devices than there are."""
    import jax

    from vtp_jax.config import config_from_hf
    from vtp_jax.generation import make_generator
    from vtp_jax.sharding import MeshError, make_mesh, mesh_context, parse_mesh
    from vtp_jax.testbed import full_size as fs

    sizes = parse_mesh(mesh_text)
    n = math.prod(sizes.values())
    if n > len(jax.devices()):
        raise MeshError(f"mesh {mesh_text} needs {n} devices, this process has {len(jax.devices())}")
    mesh = make_mesh(sizes, devices=jax.devices()[:n])
    cfg = config_from_hf(fs.preset_config(preset, layers=layers, overrides=overrides))
    try:
        model, _ = abstract_sharded_model(cfg, mesh)
    except MeshError as e:
        return {"mesh": mesh_text, "error": str(e)}
    batch = sizes["data"]
    diffusion = None
    if fs.FAMILY[preset] == "llada_v":
        from eval.full_size_bench import _diffusion_config

        diffusion = _diffusion_config(cfg, *LLADA_SETTING)
    gen = make_generator(model, None, diffusion=diffusion, mesh=mesh)
    steps = _diffusion_steps if diffusion is not None else _autoregressive_steps
    with mesh_context(mesh):
        return {"mesh": mesh_text, "batch": batch, "devices": n, "layers": cfg.text.num_hidden_layers,
                "steps": steps(gen, model, preset, batch, mesh)}


def extrapolate(a: dict, b: dict, layers: int) -> dict:
    """The steps of ``layers`` decoder layers, linear in the layer count through two :func:`compiled_steps`
    results ``a`` and ``b`` (different layer counts; every field of every step). Exact for arguments and outputs
    (parameters and KV caches grow by the same bytes per layer); temporaries follow the same line within a few
    percent (measured against compiled 8-layer models: docs/results/mesh_compiled_memory_check.json, ``"check"``)."""
    la, lb = a["layers"], b["layers"]
    steps = {name: {k: int(round(b["steps"][name][k] + (layers - lb) * (b["steps"][name][k] - v) / (lb - la)))
                    for k, v in sa.items()} for name, sa in a["steps"].items()}
    return {**b, "layers": layers, "steps": steps, "fit_layers": [la, lb]}


def compiled_table(presets=None, meshes=COMPILED_MESHES, *, layers: int | None = None,
                   log=lambda msg: None) -> dict:
    """{preset: {mesh: steps}} at ``layers`` decoder layers compiled directly, or (None) all 32 layers
    extrapolated from compiled models of :data:`FIT_LAYERS` layers (:func:`extrapolate`: compiling the 32
    Python-unrolled layers for 8 devices takes XLA's CPU compiler over 15 minutes per step)."""
    import time

    from vtp_jax.testbed import full_size as fs

    out: dict[str, Any] = {"layers": layers or fs.MAX_LAYERS, "fit_layers": None if layers else list(FIT_LAYERS),
                           "max_new_tokens": MAX_NEW_TOKENS, "llada_setting": list(LLADA_SETTING),
                           "dtype": "bfloat16", "presets": {}}
    for preset in presets or fs.PRESETS:
        row = out["presets"].setdefault(preset, {})
        for mesh in meshes:
            t0 = time.perf_counter()
            if layers:
                row[mesh] = compiled_steps(preset, mesh, layers=layers)
            else:
                a, b = (compiled_steps(preset, mesh, layers=n) for n in FIT_LAYERS)
                row[mesh] = a if "error" in a else extrapolate(a, b, fs.MAX_LAYERS)
            log(f"{preset} @ {mesh}: {time.perf_counter() - t0:.0f} s")
    return out


def check_extrapolation(presets, meshes, layers: int) -> dict:
    """{preset: {mesh: {step: {field: (extrapolated − compiled) / compiled}}}} at ``layers`` decoder layers
    (relative error of :func:`extrapolate` from :data:`FIT_LAYERS`; fields of 0 bytes are skipped)."""
    from vtp_jax.testbed import full_size as fs

    out: dict[str, Any] = {"layers": layers}
    for preset in presets or fs.PRESETS:
        for mesh in meshes:
            a, b = (compiled_steps(preset, mesh, layers=n) for n in FIT_LAYERS)
            if "error" in a:
                continue
            got, want = extrapolate(a, b, layers)["steps"], compiled_steps(preset, mesh, layers=layers)["steps"]
            out.setdefault(preset, {})[mesh] = {
                s: {k: round((got[s][k] - v) / v, 4) for k, v in want[s].items() if v} for s in want}
    return out


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def format_compiled(t: dict) -> str:
    """The compiled table as text: one line per preset × mesh, each step's peak and arguments (GiB per device)."""
    fit = f", extrapolated from {' and '.join(map(str, t['fit_layers']))}" if t.get("fit_layers") else ""
    lines = [f"per-device memory of the compiled steps (GiB; bf16; {t['layers']} decoder layers{fit}; peak = "
             "arguments + outputs − aliased + temporaries; arguments in brackets)"]
    for preset, row in t["presets"].items():
        for mesh, r in row.items():
            if "error" in r:
                lines.append(f"{preset:<14} {mesh:<16} n/a: {r['error'][:120]}")
                continue
            cells = "  ".join(f"{s} {_gib(v['peak'])} ({_gib(v['argument'])})" for s, v in r["steps"].items())
            lines.append(f"{preset:<14} {mesh:<16} batch {r['batch']}  {cells}")
    return "\n".join(lines)


CHILD_ENV = "VTP_FORCED_DEVICES_CHILD"  # set in the child rerun_with_cpu_devices starts (it never reruns again)


def devices_needed(meshes) -> int:
    """The largest device count among mesh texts. Raises MeshError for a bad mesh."""
    from vtp_jax.sharding import parse_mesh

    return max(math.prod(parse_mesh(m).values()) for m in meshes)


def rerun_with_cpu_devices(module: str, argv: list[str], n: int) -> int | None:
    """When this process runs on CPU with fewer than ``n`` devices (the count is fixed when JAX starts) and is not
    such a child itself, runs ``python -m module argv`` again in a child with
    ``--xla_force_host_platform_device_count=n`` and returns its exit code; None otherwise (the caller goes on and
    reports devices that do not suffice)."""
    import jax

    if len(jax.devices()) >= n or jax.default_backend() != "cpu" or os.environ.get(CHILD_ENV):
        return None
    env = {**os.environ, CHILD_ENV: "1", "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") +
                                                       f" --xla_force_host_platform_device_count={n}").strip()}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=root, env=env).returncode


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m eval.mesh_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None, help="also write the table to this file")
    p.add_argument("--compiled", action="store_true",
                   help="compile every generation step on each mesh and report memory_analysis per device")
    p.add_argument("--preset", action="append", default=None, help="a full-size preset (repeat; default all)")
    p.add_argument("--mesh", action="append", default=None,
                   help=f"a mesh such as fsdp=4,tensor=2 (repeat; default {' '.join(COMPILED_MESHES)})")
    p.add_argument("--layers", type=int, default=None,
                   help=f"compile this many decoder layers (default: all 32, extrapolated from {FIT_LAYERS})")
    p.add_argument("--check", type=int, default=None, metavar="L",
                   help="also compile L layers directly and record how far the extrapolation from "
                        f"{FIT_LAYERS} is from it")
    args = p.parse_args(argv)
    from vtp_jax.sharding import MeshError
    from vtp_jax.testbed import full_size as fs

    for preset in args.preset or ():
        if preset not in fs.PRESETS:
            p.error(f"--preset {preset!r}: one of {', '.join(fs.PRESETS)}")
    try:
        meshes = tuple(args.mesh or (COMPILED_MESHES if args.compiled else MESHES))
        need = devices_needed(meshes)
    except MeshError as e:
        p.error(str(e))
    if args.layers is not None and not 1 <= args.layers <= fs.MAX_LAYERS:
        p.error(f"--layers {args.layers}: between 1 and {fs.MAX_LAYERS}")
    if not args.compiled:
        t = table(args.preset, meshes)
        print(f"{'preset':<16}" + "".join(f"{m:>17}" for m in meshes))
        for preset, row in t.items():
            print(f"{preset:<16}" + "".join(f"{(v / 2**30):>13.2f} GiB" if isinstance(v, int) else f"{'n/a':>17}"
                                            for v in row.values()))
    else:
        import jax

        rc = rerun_with_cpu_devices("eval.mesh_memory", argv, max(need, FORCED_DEVICES))
        if rc is not None:
            return rc
        if len(jax.devices()) < need:
            p.error(f"the meshes need {need} devices, {len(jax.devices())} {jax.default_backend()} devices here")
        t = compiled_table(args.preset, meshes, layers=args.layers, log=lambda m: print(m, flush=True))
        if args.check:
            t["check"] = check_extrapolation(args.preset, meshes, args.check)
        print(format_compiled(t))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(t, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
