"""The model-family registry (vtp_jax.families): one record per family, one error for an unknown one."""

import pytest

from vtp_jax import families
from vtp_jax.families import AUTOREGRESSIVE, MASKED_DIFFUSION, Family


def test_builtin_families_in_order_with_their_records():
    import vtp_jax.families.llada_v.names  # noqa: F401  (importing a family's module first must not reorder)

    fams = families.families()
    assert list(fams) == ["llava", "llada_v", "llava_next", "qwen2_5_vl"]
    assert fams["llava"].kind == AUTOREGRESSIVE and fams["llada_v"].kind == MASKED_DIFFUSION
    assert fams["llava"].stages == ("pre_llm", "in_llm", "decode")
    assert fams["llada_v"].stages == ("pre_llm", "during_generation")
    assert (fams["llava"].keep_rounding, fams["llada_v"].keep_rounding) == ("round", "floor")
    assert families.for_model_type("llava_llada") is fams["llada_v"]
    assert fams["llava"].model_class().__name__ == "Llava" and fams["llada_v"].model_class().__name__ == "LladaV"
    map_name, is_ignored = fams["llava"].tensor_names()
    assert map_name("language_model.lm_head.weight") == ("lm_head.kernel", "linear")
    assert is_ignored("vision_tower.vision_model.embeddings.position_ids")
    map_name, _ = fams["llada_v"].tensor_names()
    assert map_name("model.mm_projector.2.weight") == ("multi_modal_projector.linear_2.kernel", "linear")


def test_unknown_family_and_model_type_are_one_clear_error():
    with pytest.raises(families.UnknownFamilyError, match=r"unknown model family 'gpt' \(supported: llava, llada_v, "
                                                            r"llava_next, qwen2_5_vl\)"):
        families.get("gpt")
    with pytest.raises(families.UnknownFamilyError, match=r"unsupported model_type 'qwen2_vl' \(supported: llava, "
                                                           r"llava_llada, llava_next, qwen2_5_vl\)"):
        families.for_model_type("qwen2_vl")


def test_register_refuses_duplicates():
    llava = families.get("llava")
    with pytest.raises(ValueError, match="registered twice"):
        families.register(llava)
    import dataclasses

    with pytest.raises(ValueError, match="model_type 'llava' of family 'llava2' is already family 'llava'"):
        families.register(dataclasses.replace(llava, name="llava2"))
    with pytest.raises(ValueError, match="kind"):
        dataclasses.replace(llava, name="x", kind="encoder")
    assert isinstance(llava, Family) and "llava2" not in families.families()


def test_every_method_derives_from_one_typed_stage():
    from vtp_jax.pruning import METHODS, PruningError
    from vtp_jax.pruning import stages

    bases = (stages.PreLLMSelection, stages.InLLMCompaction, stages.AllOrNothingGate, stages.DecodePruning,
             stages.AfterFirstStep)
    for name, cls in METHODS.items():
        own = [b for b in bases if issubclass(cls, b)]
        assert len(own) == 1 and cls.stage == own[0].stage, name
        assert cls.takes_keep == issubclass(cls, stages.KeepCount), name
    # the one keep check: the same message for every method that takes a keep count
    for name in ("fastv", "divprune", "random", "todre", "redvtp", "llada-fastv"):
        with pytest.raises(PruningError, match=r"keep must be between 1 and the number of visual tokens \(8\), got 9"):
            METHODS[name](keep=9).validate(8, 4)
        with pytest.raises(PruningError, match="got True"):
            METHODS[name](keep=True).validate(8, 4)
