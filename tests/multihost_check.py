"""One process of a two-process ``jax.distributed`` run on localhost (tests/test_sharding.py starts both, each with 4
CPU devices; ``python -m tests.multihost_check PORT PROCESS_ID CONVERTED_LLADA_DIR OUT_JSON``).

The 8 devices of the two processes form one mesh (data 2, fsdp 2, tensor 2). Each process computes the unsharded
answers on its own first device and the sharded ones on the global mesh: a tiny LLaVA (in memory, the same seed in
both processes) with ToDRE stages 1 + 2 — a τ between the rows, so that stage 2 fires for one row only and both
processes must take the same compiled branch; a converted LLaDA-V checkpoint restored straight onto
the mesh (each process reads its shards), whose full forward equals the unsharded one within 1e-5. Process 0
writes what it compared to OUT_JSON; a difference exits 1.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    port, pid, llada_dir, out_path = argv
    from vtp_jax.sharding import initialize_distributed

    initialize_distributed(f"127.0.0.1:{port}", 2, int(pid), timeout_s=60)
    import jax
    import numpy as np
    from flax import nnx

    from tests.sharding_check import llada_batch, llava_batch, llava_model, one_row_tau, same
    from vtp_jax.checkpoint import load
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator
    from vtp_jax.runtime import build_methods
    from jax.sharding import NamedSharding, PartitionSpec

    from vtp_jax.sharding import make_mesh, per_device_bytes, place, shard_model, to_host

    assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
    mesh = make_mesh("data=2,fsdp=2,tensor=2")
    report: dict = {"processes": jax.process_count(), "devices": jax.device_count()}

    # LLaVA in memory: unsharded on this process's first device, then sharded over both processes' devices
    with jax.default_device(jax.local_devices()[0]):
        base = llava_model()
        cfg = base.cfg
        ids, mask, pixels = llava_batch(cfg)
        n_v, n_layers = cfg.num_visual_tokens, cfg.text.num_hidden_layers
        kw = dict(max_new_tokens=6, eos_token_ids=(), pad_token_id=0)
        specs = {"todre+todre-relevance": {"tau": one_row_tau(base, ids, mask, pixels, kw), "layer": 2}}
        ref = {n: AutoregressiveGenerator(base, build_methods(n, "llava", n_v, n_layers, **o)).generate_arrays(
            ids, mask, pixels, **kw) for n, o in specs.items()}
    model = shard_model(llava_model(), mesh)
    for name, o in specs.items():
        out = AutoregressiveGenerator(model, build_methods(name, "llava", n_v, n_layers, **o), mesh=mesh
                                      ).generate_arrays(ids, mask, pixels, **kw)
        same(f"llava {name} tokens (process {pid})", out.tokens, ref[name].tokens)
        same(f"llava {name} kept (process {pid})", out.kept, ref[name].kept)
        report[f"llava {name}"] = np.asarray(out.tokens).tolist()
    report["stage2_dropped"] = np.asarray(ref["todre+todre-relevance"].stage2_dropped).tolist()

    # LLaDA-V restored from a converted checkpoint straight onto the mesh
    with jax.default_device(jax.local_devices()[0]):
        plain, lcfg, _ = load(llada_dir)
    sharded, _, _ = load(llada_dir, mesh=mesh)
    k = sharded.language_model.layers[0].mlp.up_proj.kernel[...]
    report["restored_up_proj_shard"] = list(k.addressable_shards[0].data.shape)
    report["restored_up_proj_global"] = list(k.shape)
    report["param_bytes_per_local_device"] = sorted(set(per_device_bytes(nnx.state(sharded)).values()))
    lids, lmask, image = llada_batch(plain, lcfg)
    fwd = jax.jit(lambda m, px: m(lids, px, lmask, image_size=image["image_size"]))
    with jax.default_device(jax.local_devices()[0]):
        want = np.asarray(fwd(plain, image["pixel_values"]))
    got = to_host(fwd(sharded, place(image["pixel_values"], NamedSharding(mesh, PartitionSpec()))))
    err = float(np.max(np.abs(got - want)))
    if err > 1e-5:
        print(f"MISMATCH llada-v logits of the restored model (process {pid}): max |diff| {err}", flush=True)
        sys.exit(1)
    report["llada_v_logits_max_abs_diff"] = err
    if jax.process_index() == 0:
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
