"""Device meshes (vtp_jax.sharding): sharded generation equals unsharded generation for both families and every
method on 8 CPU devices (tests/sharding_check.py, its own process: the device count is fixed when JAX starts), and
bad meshes fail with messages that name the problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest
from jax.sharding import PartitionSpec as P

from vtp_jax import sharding
from vtp_jax.sharding import MeshError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_devices(module: str, n: int, timeout: int = 420) -> subprocess.CompletedProcess:
    """``python -m module`` with ``n`` forced CPU devices, from the repository root."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_sharded_generation_equals_unsharded_on_8_devices():
    """Mesh (data 2, fsdp 2, tensor 2): LLaVA unpruned, FastV, ToDRE 1+2 (stage 1 is the pre-LLM selection path
    DivPrune and random share; stage 2 firing for one row of two) and DyRate; LLaDA-V with ToDRE + RedVTP and RedVTP
    under the dual cache with parallel decoding. Tokens, kept indices (and stage-2 decisions, DyRate's per-token
    counts, diffusion step counts) equal the unsharded run (batch 2 with left padding). Meshes (data 2, fsdp 2,
    tensor 2), (fsdp 4, tensor 2), (data 2, tensor 4, LLaVA only): full forwards within 1e-5 and parameter shards of
    the expected per-device shape."""
    done = run_with_devices("tests.sharding_check", 8)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    assert len(report["llava"]) == 4 and len(report["llada_v"]) == 2
    # the KV cache [B, S, kv_heads, head_dim] along data and tensor, every slot of the sequence on each device
    assert report["llava_cache_spec"][:3] == ["data", None, "tensor"]
    assert sorted(report["stage2_dropped"]) == [False, True]  # ToDRE stage 2 fires for one row of the two
    assert report["compiled_prefill_argument_bytes"] > 0  # = parameter shards + input shards (checked there)
    # vtp-bench --mesh fsdp=2,tensor=2: the restored shards are smaller than the whole model on each device
    assert report["bench_mesh_param_bytes"]["fsdp=2,tensor=2"] < report["bench_mesh_param_bytes"]["unsharded"]
    assert max(report["llava_logits_max_abs_diff"].values()) <= 1e-5
    assert max(report["llada_v_logits_max_abs_diff"].values()) <= 1e-5
    # FSDP × tensor = 8 (and 4 on the data mesh): the shards of every device together are the model once per data
    # replica; the vision tower stays whole on every device, so the per-device bytes shrink less than 8×
    per_device = report["llava_param_bytes_per_device"]
    assert max(per_device["fsdp=4,tensor=2"]) < max(per_device["data=2,fsdp=2,tensor=2"])


def test_parse_mesh_and_errors():
    assert sharding.parse_mesh("tensor=2, data=4") == {"data": 4, "fsdp": 1, "tensor": 2}
    assert sharding.parse_mesh("") == {"data": 1, "fsdp": 1, "tensor": 1}
    for text, needle in (("model=2", "is not AXIS=SIZE"), ("data=2,data=2", "given twice"),
                         ("data=0", "whole number ≥ 1"), ("data=1.5", "whole number ≥ 1"), ("data", "AXIS=SIZE")):
        with pytest.raises(MeshError, match=needle):
            sharding.parse_mesh(text)
    with pytest.raises(MeshError, match=r"mesh data=2 × fsdp=1 × tensor=1 has 2 devices, but 1 is available"):
        sharding.make_mesh("data=2")
    assert sharding.distributed_settings(None, None, None) is None or os.environ.get("JAX_COORDINATOR_ADDRESS")
    assert sharding.distributed_settings("10.0.0.1:1234", 4, 3) == ("10.0.0.1:1234", 4, 3)
    for args, needle in ((("localhost", 2, 0), "give HOST:PORT"), (("h:1", 2, 2), "0 ≤ I < N"),
                         (("h:1", None, None), "needs --num-processes N")):
        with pytest.raises(sharding.DistributedError, match=needle):
            sharding.distributed_settings(*args)


def test_an_axis_that_does_not_divide_names_both():
    mesh = sharding.make_mesh("")  # one device: sizes 1 divide everything
    sharding.check_divides(P("data", None), (3, 5), mesh.shape, "x")
    sizes = {"data": 1, "fsdp": 1, "tensor": 3}  # a tensor=3 mesh without three devices: only the sizes are read

    with pytest.raises(MeshError, match=r"parameter q: dimension 1 of shape \[64, 64\] \(64\) is split along mesh "
                                        r"axis tensor of size 3"):
        sharding.check_divides(P("fsdp", "tensor"), (64, 64), sizes, "parameter q")
    with pytest.raises(MeshError, match="the batch: dimension 0 of shape \\[5\\]"):
        sharding.check_divides(P("tensor"), (5,), sizes, "the batch")


def test_cli_mesh_that_does_not_fit_exits_2(capsys):
    """vtp-generate --mesh: checked before the image and the weights are read."""
    from vtp_jax import cli

    assert cli.main(["--model", "/nonexistent", "--image", "x.png", "--prompt", "hi", "--mesh", "data=2"]) == 2
    assert "has 2 devices, but 1 is available" in capsys.readouterr().err
    assert cli.main(["--model", "/nonexistent", "--image", "x.png", "--prompt", "hi", "--mesh", "pipeline=2"]) == 2
    assert "is not AXIS=SIZE" in capsys.readouterr().err


def test_param_bytes_per_device_counts_the_shards():
    """Per-device parameter bytes under a mesh (no devices needed) = each parameter's bytes divided by the mesh
    axes its dimensions are split along (fsdp 2 × tensor 4 here; the vision tower, without rules, stays whole)."""
    import math

    from flax import nnx

    from vtp_jax.checkpoint import abstract_model
    from vtp_jax.config import config_from_hf
    from vtp_jax.modeling.axes import logical_axes
    from vtp_jax.testbed import hf_llava
    from tests.sharding_check import LLAVA

    _, state = abstract_model(config_from_hf(hf_llava.tiny_llava_config(**LLAVA).to_dict()), "bfloat16")
    params = nnx.to_pure_dict(nnx.filter_state(state, nnx.Param))
    names = logical_axes(state)
    flat = {".".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    split = {"embed": 2, "heads": 4, "kv_heads": 4, "mlp": 4, "vocab": 4}
    expected = 0
    for path, leaf in flat.items():
        parts, used = 1, set()
        for n in names[path] or ():
            axis = sharding.RULES.get(n)
            if n in split and axis not in used:  # a mesh axis splits one dimension of a parameter at most
                parts, used = parts * split[n], used | {axis}
        expected += math.prod(leaf.shape) * 2 // parts
    sizes = {"data": 3, "fsdp": 2, "tensor": 4}  # data replicates parameters
    assert sharding.param_bytes_per_device(params, names, sizes) == expected
    assert sharding.param_bytes_per_device(params, names, {}) == sum(math.prod(v.shape) * 2 for v in flat.values())
    with pytest.raises(MeshError, match="does not divide it"):
        sharding.param_bytes_per_device(params, names, {"tensor": 3})
