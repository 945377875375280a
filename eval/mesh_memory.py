"""Parameter bytes per device of each full-size preset under common meshes (no devices needed: the shards that
:data:`vtp_jax.sharding.RULES` give, counted from the abstract model in bf16).

    python -m eval.mesh_memory [--json PATH]

Parameters only: the KV cache, the diffusion state and activations come on top (split along data and, through the
key / value projections, along tensor). The per-device size of a compiled step (``memory_analysis``) needs the
devices themselves and is not measured here.
"""

from __future__ import annotations

import argparse
import json
import sys

MESHES = ("data=1", "fsdp=2", "tensor=2", "fsdp=4", "tensor=4", "fsdp=4,tensor=2", "tensor=8", "fsdp=8")


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.mesh_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    t = table()
    print(f"{'preset':<16}" + "".join(f"{m:>17}" for m in MESHES))
    for preset, row in t.items():
        print(f"{preset:<16}" + "".join(f"{(v / 2**30):>13.2f} GiB" if isinstance(v, int) else f"{'n/a':>17}"
                                        for v in row.values()))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(t, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
