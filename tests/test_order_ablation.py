"""The visual-token order ablation (vtp_jax.training.order_ablation) on the shipped testbeds: with the identity order
it is exactly the models' own forward; another order reaches the decoder; bad input is rejected."""

from __future__ import annotations

import os

import numpy as np
import pytest

from vtp_jax.training import order_ablation as oa
from vtp_jax.testbed import shapes
from vtp_jax.training.testbed import TEST_SEED, Encoder, shapes_image_size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = {"llava": os.path.join(ROOT, "testbed_models", "llava_shapes"),
           "llada_v": os.path.join(ROOT, "testbed_models", "llada_v_shapes")}


def test_permutations():
    assert np.array_equal(oa.permutation("identity", 5), np.arange(5))
    assert np.array_equal(oa.permutation("reversed", 5), [4, 3, 2, 1, 0])
    r = oa.permutation("random", 81)
    assert np.array_equal(np.sort(r), np.arange(81)) and not np.array_equal(r, np.arange(81))
    with pytest.raises(ValueError, match="unknown order"):
        oa.permutation("shuffled", 5)


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def shipped(request, tmp_path_factory):
    from convert import convert
    from vtp_jax.checkpoint import load
    from vtp_jax.processing import load_processor

    out = str(tmp_path_factory.mktemp(request.param))
    convert(SHIPPED[request.param], out, force=True, progress=False)
    model, cfg, _ = load(out)
    encoder = Encoder(cfg.family, load_processor(out, cfg), cfg)
    examples = shapes.make_split("val", 6, TEST_SEED, size=shapes_image_size(cfg))
    return model, cfg, encoder, examples


def test_identity_order_is_the_models_forward(shipped):
    import jax.numpy as jnp

    model, cfg, encoder, examples = shipped
    logits, targets = oa.first_token_logits(model, cfg, encoder, examples,
                                            [oa.permutation("identity", encoder.num_visual_tokens)])
    logits = logits[0]
    ids, valid, read_at, targets2 = oa.build_inputs(cfg, encoder, examples)
    pixels = jnp.asarray(encoder.pixels([e.image for e in examples]))
    if cfg.family == "llava":
        ref = model(jnp.asarray(ids), pixels, jnp.asarray(valid))
    else:
        s = shapes_image_size(cfg)
        ref = model(jnp.asarray(ids), pixels, jnp.asarray(valid), grid=tuple(encoder.layout.grid), image_size=(s, s))
    ref = np.asarray(ref)[np.arange(len(ids)), read_at]
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(targets, targets2)
    # the read position holds what the generators predict from: the last prompt token (LLaVA) / the first [MASK]
    if cfg.family == "llava":
        assert all(ids[i, read_at[i] + 1:].size == 0 for i in range(len(ids)))
    else:
        assert all(ids[i, read_at[i]] == encoder.mask_id and ids[i, read_at[i] - 1] != encoder.mask_id
                   for i in range(len(ids)))
    # the reference id is the first token of the answer
    words = [encoder.tokenizer.decode([int(t)]).strip() for t in targets]
    assert all(e.answer.startswith(w) and w for e, w in zip(examples, words))


def test_an_order_reaches_the_decoder(shipped):
    model, cfg, encoder, examples = shipped
    n = encoder.num_visual_tokens
    (ident, rev), _ = oa.first_token_logits(model, cfg, encoder, examples,
                                            [oa.permutation("identity", n), oa.permutation("reversed", n)])
    assert np.abs(ident - rev).max() > 1e-2


def test_bad_order_is_rejected(shipped):
    model, cfg, encoder, examples = shipped
    n = encoder.num_visual_tokens
    with pytest.raises(ValueError, match="permutation"):
        oa.first_token_logits(model, cfg, encoder, examples, [np.arange(n), np.zeros(n, int)])
    with pytest.raises(ValueError, match="permutation"):
        oa.first_token_logits(model, cfg, encoder, examples, [np.arange(n - 1)])


def test_cli_missing_model(tmp_path, capsys):
    assert oa.main(["--model", str(tmp_path / "nowhere")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_index_variance_share_against_hand_made_cases():
    rng = np.random.default_rng(0)
    by_index = rng.normal(size=(1, 9, 4))
    by_image = rng.normal(size=(16, 1, 4))
    assert oa.index_variance_share(np.broadcast_to(by_index, (16, 9, 4))) == pytest.approx(1.0)
    assert oa.index_variance_share(np.broadcast_to(by_image, (16, 9, 4))) == pytest.approx(0.0, abs=1e-12)
    # two values per image at two indices: x[n, 0] = a_n, x[n, 1] = a_n + 2 (D = 1)
    a = np.array([0.0, 1.0, 2.0, 3.0])
    x = np.stack([a, a + 2], axis=1)[..., None]
    # index means 1.5 and 3.5, grand mean 2.5: between 4 · (1 + 1) = 8; total Σ(a − 2.5)² + Σ(a − 0.5)² = 9 + 9
    assert oa.index_variance_share(x) == pytest.approx(8 / 18)
    with pytest.raises(ValueError, match="N, T, D"):
        oa.index_variance_share(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="constant"):
        oa.index_variance_share(np.ones((3, 4, 2)))


def test_visual_features_are_the_models_visual_tokens(shipped):
    import jax.numpy as jnp

    model, cfg, encoder, examples = shipped
    f = oa.visual_features(model, cfg, encoder, examples)
    pixels = jnp.asarray(encoder.pixels([e.image for e in examples]))
    if cfg.family == "llava":
        full = np.asarray(model.image_features(pixels))
    else:
        s = shapes_image_size(cfg)
        full = np.asarray(model.image_features(pixels, grid=tuple(encoder.layout.grid), image_size=(s, s)))
    assert f.shape[1] == (encoder.num_visual_tokens if cfg.family == "llava" else (s // cfg.vision.patch_size) ** 2)
    np.testing.assert_allclose(f, full[:, : f.shape[1]], rtol=1e-6, atol=1e-6)
