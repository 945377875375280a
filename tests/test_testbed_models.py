"""The trained testbed checkpoints (testbed_models/) and the export they were written with.

* Export round trip (always runs): a freshly initialised model of each family, exported with
  :func:`vtp_jax.training.testbed.export.export_hf` (our parameters → HF names through the converter's maps in
  reverse), converted with :func:`convert.convert` and loaded with :func:`vtp_jax.checkpoint.load`, has bit-identical parameters.
* Shipped checkpoints: each converts, loads and reaches its recorded accuracy on the fixed test subset
  (the first ``SUBSET_N`` test examples, one batch, greedy generation through our generators). Skipped only if the
  checkpoint directory does not exist.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from vtp_jax.testbed import shapes
from vtp_jax.training import testbed as train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = {"llava": os.path.join(ROOT, "testbed_models", "llava_shapes"),
           "llada_v": os.path.join(ROOT, "testbed_models", "llada_v_shapes")}
MAX_CHECKPOINT_BYTES = 20 * 1024 * 1024

TINY = {
    "llava": dict(image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=4, vision_mlp=64,
                  text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=2, text_mlp=96),
    "llada_v": dict(image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=4, vision_mlp=64,
                    text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=2, text_mlp=96),
}


def _flat_params(model) -> dict:
    from flax import nnx

    from vtp_jax.checkpoint import flatten

    return {k: np.asarray(v) for k, v in flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}


@pytest.mark.parametrize("family", train.FAMILIES)
def test_export_convert_load_round_trip(family, tmp_path):
    from flax import nnx

    from convert import convert
    from vtp_jax import checkpoint
    from vtp_jax.config import config_from_hf

    hf_config = train.make_hf_config(family, TINY[family])
    cfg = config_from_hf(train.hf_config_dict(family, hf_config))
    model = train.build_model(cfg, seed=3)
    # non-trivial norms and biases, so a dropped or swapped tensor cannot hide behind an initial value
    state = nnx.state(model, nnx.Param)
    rng = np.random.default_rng(0)
    nnx.update(model, __import__("jax").tree.map(lambda x: x + rng.normal(0, 0.1, x.shape).astype(x.dtype), state))
    expected = _flat_params(model)

    tokenizer = train.train_shapes_tokenizer(family)
    hf_dir = train.export_hf(str(tmp_path / "hf"), family, hf_config, nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                             tokenizer, {"note": "round trip"})
    with open(os.path.join(hf_dir, "config.json")) as fh:
        config = json.load(fh)
    assert config["vtp_random_weights"] is False and config["vtp_testbed"] == {"note": "round trip"}

    out = convert(hf_dir, str(tmp_path / "jax"), progress=False)
    loaded, loaded_cfg, meta = checkpoint.load(out)
    assert loaded_cfg == cfg and meta["random_weights"] is False
    got = _flat_params(loaded)
    assert set(got) == set(expected)
    for k in expected:
        assert got[k].dtype == expected[k].dtype, k
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


def test_inverse_transforms():
    from vtp_jax.families.tensor_names import apply_transform

    rng = np.random.default_rng(0)
    for transform, shape in (("linear", (5, 7)), ("conv", (3, 3, 2, 4)), ("none", (6,))):
        x = rng.normal(size=shape)
        np.testing.assert_array_equal(apply_transform(train.to_hf_layout(x, transform), transform), x)


@pytest.mark.parametrize("family", train.FAMILIES)
def test_tokenizer_and_continuation(family):
    """Every answer is one token; the continuation is what the chat template puts after the generation prompt."""
    tok = train.train_shapes_tokenizer(family)
    lead = " " if family == "llava" else ""
    for a in shapes.answers():
        assert len(tok(lead + a, add_special_tokens=False)["input_ids"]) == 1, a


@pytest.mark.parametrize("family", train.FAMILIES)
def test_shipped_checkpoint(family, tmp_path):
    from convert import convert

    hf_dir = SHIPPED[family]
    if not os.path.isdir(hf_dir):
        pytest.skip(f"no shipped checkpoint at {hf_dir} yet (train one with vtp-train-testbed --family {family})")
    record = train.read_record(hf_dir)
    with open(os.path.join(hf_dir, "config.json")) as fh:
        assert json.load(fh)["vtp_random_weights"] is False
    assert record["task"] == "shapes" and record["family"] == family
    weights = os.path.join(hf_dir, "model.safetensors")
    assert os.path.getsize(weights) < MAX_CHECKPOINT_BYTES
    for name in ("loss_curve.png", "training_log.json"):
        assert os.path.isfile(os.path.join(hf_dir, name)), name

    out = convert(hf_dir, str(tmp_path / "jax"), progress=False)
    subset = record["test_subset"]
    assert subset["n"] == train.SUBSET_N
    result = train.evaluate_converted(out, subset["n"], batch=subset["batch"])
    assert result["n"] == subset["n"]
    assert result["accuracy"] >= subset["accuracy"], (result["predictions"], subset["predictions"])


@pytest.mark.parametrize("family", train.FAMILIES)
def test_shipped_checkpoint_bf16(family, tmp_path):
    """Converted to bfloat16 (weights and compute), a shipped testbed keeps its recorded accuracy on the fixed test
    subset within one point."""
    from convert import convert

    hf_dir = SHIPPED[family]
    if not os.path.isdir(hf_dir):
        pytest.skip(f"no shipped checkpoint at {hf_dir} yet")
    subset = train.read_record(hf_dir)["test_subset"]
    out = convert(hf_dir, str(tmp_path / "jax"), dtype="bfloat16", progress=False)
    result = train.evaluate_converted(out, subset["n"], batch=subset["batch"])
    assert result["n"] == subset["n"]
    assert result["accuracy"] >= subset["accuracy"] - 0.01, (result["predictions"], subset["predictions"])
