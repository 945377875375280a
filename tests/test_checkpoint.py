"""vtp_jax.checkpoint.restore_params: grouped partial restores give exactly what one whole-tree Orbax restore gives,
and a checkpoint that does not fit the model is refused with the offending parameter named."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from flax import nnx

from vtp_jax import checkpoint


def _target(cfg, dtype="float32"):
    _, state = checkpoint.abstract_model(cfg, dtype)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                        nnx.to_pure_dict(nnx.filter_state(state, nnx.Param)))


@pytest.mark.parametrize("group_bytes", [1, 40_000, 1 << 30])
def test_grouped_restore_equals_one_shot(converted_llava, group_bytes):
    import orbax.checkpoint as ocp

    c = converted_llava()
    path = os.path.join(c.out_dir, checkpoint.PARAMS_DIR)
    target = _target(c.cfg)
    flat = checkpoint.flatten(target)
    groups = checkpoint._restore_groups(flat, group_bytes)
    assert sum(len(g) for g in groups) == len(flat)
    if group_bytes == 1:
        assert len(groups) == len(flat)
    ref = ocp.Checkpointer(ocp.StandardCheckpointHandler()).restore(path, args=ocp.args.StandardRestore(target))
    got = checkpoint.restore_params(path, target, group_bytes=group_bytes)
    ref_flat, got_flat = checkpoint.flatten(ref), checkpoint.flatten(got)
    assert ref_flat.keys() == got_flat.keys()
    for k in ref_flat:
        assert got_flat[k].dtype == ref_flat[k].dtype and got_flat[k].shape == ref_flat[k].shape, k
        np.testing.assert_array_equal(np.asarray(got_flat[k]), np.asarray(ref_flat[k]), err_msg=k)


def test_restore_refuses_a_mismatched_model(converted_llava):
    c = converted_llava()
    path = os.path.join(c.out_dir, checkpoint.PARAMS_DIR)
    target = _target(c.cfg)
    kernel = target["lm_head"]["kernel"]
    target["lm_head"]["kernel"] = jax.ShapeDtypeStruct((kernel.shape[0], kernel.shape[1] + 1), kernel.dtype,
                                                       sharding=kernel.sharding)
    with pytest.raises(ValueError, match="lm_head.kernel"):
        checkpoint.restore_params(path, target)
    del target["lm_head"]
    with pytest.raises(ValueError, match="lm_head"):
        checkpoint.restore_params(path, target)
