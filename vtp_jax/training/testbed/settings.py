"""The testbed trainer's constants, model sizes, generation settings and run settings (no code that runs)."""

from __future__ import annotations

import dataclasses

VOCAB_SIZE = 512
CORPUS_REPEATS = 30  # weight of the shapes lines in the tokenizer corpus: makes every answer a single token
# The plain text around the turns of both chat templates ("USER: … ASSISTANT:", LLaDA's role names and blank line).
TEMPLATE_LINES = ("USER: ", " ASSISTANT:", "user\n\n", "assistant\n\n")
MAX_RESPONSE = 32  # masked diffusion: training response lengths are drawn from [len(answer<|eot_id|>), MAX_RESPONSE]
MASK_EPS = 1e-3  # LLaDA: p_mask = (1 − ε) t + ε
SUBSET_N = 24  # the fixed test subset (first SUBSET_N test examples) whose accuracy the tests check
TEST_SEED = 0  # the test and validation splits are always drawn with this seed, whatever --seed is
TASK = "shapes"

# Model sizes per family (keyword arguments of the family's config builder, :mod:`vtp_jax.training.testbed.builders`).
SIZES = {
    "llava": dict(
        image_size=72, patch_size=8, vision_hidden=128, vision_layers=3, vision_heads=4, vision_mlp=512,
        text_hidden=192, text_layers=3, text_heads=4, text_kv_heads=4, text_mlp=512, vocab_size=VOCAB_SIZE,
        max_position_embeddings=256,
    ),
    "llada_v": dict(
        image_size=72, patch_size=12, vision_hidden=128, vision_layers=2, vision_heads=4, vision_mlp=512,
        text_hidden=192, text_layers=3, text_heads=4, text_kv_heads=4, text_mlp=512, vocab_size=VOCAB_SIZE,
        max_position_embeddings=256, max_grid=1, max_num_patches=1,
    ),
}

# Generation settings of every evaluation (validation, test, the shipped record), per family.
GENERATION = {
    "llava": {"max_new_tokens": 4, "temperature": 0.0},
    "llada_v": {"gen_length": 8, "block_length": 8, "steps": 8, "remasking": "low_confidence", "cfg": 0.0,
                "temperature": 0.0},
}

FAMILIES = tuple(SIZES)  # the families the testbed trainer builds (each has a builder in builders.TESTBEDS)


@dataclasses.dataclass
class TrainSettings:
    """Hyper-parameters of one run (recorded in ``training_log.json`` and ``vtp_testbed``)."""

    family: str
    steps: int = 2000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.05
    clip: float = 1.0
    seed: int = 0
    eval_every: int = 250
    val_n: int = 256
    test_n: int = 500
    eval_batch: int = 32
    describe: float = 0.3
    vision_steps: int = 3000  # ~3 min on 2 CPU cores; 500 left the patch-12 tower at 84% cell-shape accuracy
    max_turns: int = 4
    train_vision: bool = False
    complementary: bool = False  # masked diffusion: LaViDa's complementary masking (batch/2 conversations × 2)
    full_mask: float = 0.0  # masked diffusion: fraction of rows with the whole response masked (t = 1)
    kinds: tuple | None = None  # question kinds of the training conversations (None = all of shapes.KINDS)
    kind_weights: dict | None = None  # relative weights of the first question's kind (None = the data's own mix)
    init: str | None = None  # an exported testbed (HF format) to continue from
    sizes: dict = dataclasses.field(default_factory=dict)


class TrainError(ValueError):
    """Bad arguments (unknown family, an existing output directory without --force…)."""
