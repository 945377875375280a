"""``vtp-train-testbed``: trains a tiny VLM of either family on the synthetic shapes VQA task
(:mod:`vtp_jax.testbed.shapes`) and exports it as a real Hugging Face-format directory that ``vtp-convert`` accepts.

    vtp-train-testbed --family llava|llada_v --out DIR [--steps N] [--seed S] [--batch B] [--lr LR]

Pipeline (no torch anywhere):

1. **Files first.** The tokenizer is ``hf_llava.train_tokenizer`` / ``hf_llada_v.train_tokenizer`` — unchanged, with
   the built-in corpus extended (for the duration of the call) by every shapes question and answer, repeated
   ``CORPUS_REPEATS`` times so that each answer is one token. The config is ``tiny_llava_config`` /
   ``tiny_llada_v_config`` with :data:`SIZES`; the processor files are written with the modules' ``save_processor``
   (real chat template, CLIP / LLaVA-OneVision image processor). Training then reads prompts and pixels back through
   :func:`vtp_jax.processing.load_processor` — the very path inference uses.
2. **Model** :class:`~vtp_jax.modeling.llava.Llava` / :class:`~vtp_jax.modeling.llada_v.LladaV` from scratch.
   LLaVA: CLIP-style ViT, 72 px images, patch 8 → 81 visual tokens (class token dropped; features of layer −2, as
   LLaVA-1.5), Llama decoder. LLaDA-V: SigLIP-style ViT on 72 px tiles of patch 12; the grid pinpoints hold only
   72 × 72, so the square training images always take the 1 × 1 grid: base tile + one grid tile →
   36 + 6 · (6 + 1) = 78 visual tokens (with ``image_newline``); bidirectional LLaDA decoder.
3. **Training**: optax AdamW (weight decay on matrices only), linear warm-up + cosine decay, gradient clipping, one
   jitted step; a fresh batch of training examples every step (the train split is an endless stream).
   * LLaVA: next-token cross-entropy on the assistant continuation only (answer tokens + ``</s>``), prompt
     left-padded as at inference.
   * LLaDA-V: LLaDA's masked-diffusion loss. The response is the continuation (``answer<|eot_id|>``) padded with
     ``<|eot_id|>`` to a random length in [len, ``MAX_RESPONSE``] (so any ``gen_length`` up to 32 is in
     distribution); per sample ``t ~ U(0, 1)``, drawn stratified over the batch (:func:`diffusion_noise`: the same
     expected loss, a lower variance under the ``1/p`` weight at batch 32), ``p = (1 − ε) t + ε``, each response
     token is replaced by ``[MASK]`` with probability ``p``; the loss is the cross-entropy on masked tokens
     weighted ``1/p``, divided by the response length and averaged over the batch (LLaDA's SFT loss,
     :func:`diffusion_loss`). The prompt is never masked. ``--complementary`` adds LaViDa's complementary masking:
     each conversation appears twice in the step, the copy masked with exactly the complement, so every response
     token is a target once per step (half as many conversations per step, the same compute). ``--full-mask F``
     masks the whole response of a fraction F of each batch (``t = 1``, the first denoising step's input): more
     weight on the prediction that short-answer decoding starts from, at the cost of LLaDA's uniform ``t``.
4. **Validation** every ``--eval-every`` steps: exact-match accuracy of greedy generation through OUR jitted
   generators (:class:`AutoregressiveGenerator` / :class:`DiffusionGenerator`, built once; the current parameters
   are swapped in as their ``state``, so nothing recompiles) on ``--val-n`` validation examples.
5. **Export** (:func:`export_hf`): our parameters mapped back to HF tensor names (the converter's own name maps,
   the families' name maps, :mod:`vtp_jax.families.llava.names` / :mod:`vtp_jax.families.llada_v.names`, run in reverse), fp32 safetensors, config.json with
   ``"vtp_random_weights": false`` and a ``"vtp_testbed"`` record, generation config, tokenizer and processor files.
   The exported directory is then converted with :func:`convert.convert`, loaded with
   :func:`vtp_jax.checkpoint.load`, and evaluated on the test split (``--test-n`` examples, seed 0) and on the fixed
   subset of the first ``SUBSET_N`` test examples (one batch); both accuracies go into ``vtp_testbed``.
   ``loss_curve.png`` and ``training_log.json`` are written beside the weights.

Answers are compared after :func:`normalise` (strip, lower case, trailing punctuation dropped); a prediction is right
only if it equals the answer exactly.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

from vtp_jax.testbed import shapes

FAMILIES = ("llava", "llada_v")
VOCAB_SIZE = 512
CORPUS_REPEATS = 30  # weight of the shapes lines in the tokenizer corpus: makes every answer a single token
# The plain text around the turns of both chat templates ("USER: … ASSISTANT:", LLaDA's role names and blank line).
TEMPLATE_LINES = ("USER: ", " ASSISTANT:", "user\n\n", "assistant\n\n")
MAX_RESPONSE = 32  # LLaDA-V: training response lengths are drawn from [len(answer<|eot_id|>), MAX_RESPONSE]
MASK_EPS = 1e-3  # LLaDA: p_mask = (1 − ε) t + ε
SUBSET_N = 24  # the fixed test subset (first SUBSET_N test examples) whose accuracy the tests check
TEST_SEED = 0  # the test and validation splits are always drawn with this seed, whatever --seed is
TASK = "shapes"

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

# Generation settings of every evaluation (validation, test, the shipped record).
GENERATION = {
    "llava": {"max_new_tokens": 4, "temperature": 0.0},
    "llada_v": {"gen_length": 8, "block_length": 8, "steps": 8, "remasking": "low_confidence", "cfg": 0.0,
                "temperature": 0.0},
}


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
    complementary: bool = False  # LLaDA-V: LaViDa's complementary masking (--batch rows = batch/2 conversations × 2)
    full_mask: float = 0.0  # LLaDA-V: fraction of rows with the whole response masked (t = 1)
    kinds: tuple | None = None  # question kinds of the training conversations (None = all of shapes.KINDS)
    kind_weights: dict | None = None  # relative weights of the first question's kind (None = the data's own mix)
    init: str | None = None  # an exported testbed (HF format) to continue from
    sizes: dict = dataclasses.field(default_factory=dict)


class TrainError(ValueError):
    """Bad arguments (unknown family, an existing output directory without --force…)."""


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer, config, processor files
# ---------------------------------------------------------------------------------------------------------------------


def _family_module(family: str):
    from vtp_jax.testbed import hf_llada_v, hf_llava

    if family == "llava":
        return hf_llava
    if family == "llada_v":
        return hf_llada_v
    raise TrainError(f"unknown family {family!r} (one of {', '.join(FAMILIES)})")


@contextlib.contextmanager
def _shapes_corpus():
    """While active, the built-in tokenizer corpus of :mod:`hf_llava` and :mod:`hf_llada_v` (``_corpus``, which their
    ``train_tokenizer`` reads) is followed by ``CORPUS_REPEATS`` copies of :func:`shapes.corpus` and of the chat
    templates' plain-text scaffolding (:data:`TEMPLATE_LINES`)."""
    from vtp_jax.testbed import hf_llada_v, hf_llava

    saved = (hf_llava._corpus, hf_llada_v._corpus)
    builtin = hf_llava._corpus
    extra = list(shapes.corpus()) + list(TEMPLATE_LINES)

    def corpus():
        yield from builtin()
        for _ in range(CORPUS_REPEATS):
            yield from extra

    hf_llava._corpus = hf_llada_v._corpus = corpus
    try:
        yield
    finally:
        hf_llava._corpus, hf_llada_v._corpus = saved


def train_shapes_tokenizer(family: str, vocab_size: int = VOCAB_SIZE):
    """The family's ``train_tokenizer(vocab_size)`` on the built-in corpus plus the shapes questions and answers."""
    module = _family_module(family)
    with _shapes_corpus():
        return module.train_tokenizer(vocab_size)


def make_hf_config(family: str, sizes: dict | None = None):
    """The HF config of the testbed model: a ``transformers.LlavaConfig`` (llava) or a config.json dict (llada_v)."""
    module = _family_module(family)
    kwargs = {**SIZES[family], **(sizes or {})}
    if family == "llava":
        return module.tiny_llava_config(**kwargs)
    return module.tiny_llada_v_config(**kwargs)


def hf_config_dict(family: str, hf_config) -> dict:
    """The config as the JSON dict ``vtp_jax.config.config_from_hf`` reads."""
    return hf_config.to_dict() if family == "llava" else dict(hf_config)


# ---------------------------------------------------------------------------------------------------------------------
# Export: our parameters → HF tensor names (the converter's maps in reverse)
# ---------------------------------------------------------------------------------------------------------------------


def to_hf_layout(array: np.ndarray, transform: str) -> np.ndarray:
    """Inverse of :func:`vtp_jax.families.tensor_names.apply_transform`: our layout → the HF (torch) layout.

    "linear": kernel [in, out] → weight [out, in]; "conv": kernel [p, p, C, D] → weight [D, C, p, p]; "none": as is.
    """
    if transform == "none":
        return np.ascontiguousarray(array)
    if transform == "linear":
        return np.ascontiguousarray(array.T)
    if transform == "conv":
        return np.ascontiguousarray(np.transpose(array, (3, 2, 0, 1)))
    raise ValueError(f"unknown transform {transform!r}")


def hf_tensor_specs(family: str, hf_config) -> list[tuple[str, tuple]]:
    """(HF tensor name, HF shape) of every tensor the exported checkpoint holds (the testbed builders' lists)."""
    module = _family_module(family)
    if family == "llava":
        specs = module._param_specs(hf_config, "transformers")
    else:
        specs = module.param_specs(hf_config, "llada_v")
    return [(name, tuple(shape)) for name, shape, _ in specs]


def hf_tensors(family: str, hf_config, params: dict, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Our parameters (nested pure dict, as ``nnx.to_pure_dict``) → {HF tensor name: array in HF layout}.

    Every HF name of :func:`hf_tensor_specs` is mapped to our path with the converter's own name map
    (``Family.tensor_names``), and the layout transform is inverted (:func:`to_hf_layout`).

    Raises:
      ValueError: a name the converter does not map, a missing parameter, a shape mismatch, or a parameter that no
        HF tensor covers.
    """
    from vtp_jax import families
    from vtp_jax.checkpoint import flatten
    from vtp_jax.testbed.hf_llava import _np_dtype

    map_name, _ = families.get(family).tensor_names()
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    np_dtype = _np_dtype(dtype)
    out, used = {}, set()
    for name, shape in hf_tensor_specs(family, hf_config):
        target = map_name(name)
        if target is None:
            raise ValueError(f"the converter does not map HF tensor {name!r}")
        if target.path not in flat:
            raise ValueError(f"no parameter {target.path!r} for HF tensor {name!r}")
        array = to_hf_layout(flat[target.path], target.transform)
        if tuple(array.shape) != shape:
            raise ValueError(f"{name!r}: shape {tuple(array.shape)} after the inverse transform, expected {shape}")
        out[name] = array.astype(np_dtype)
        used.add(target.path)
    left = sorted(set(flat) - used)
    if left:
        raise ValueError(f"parameters not covered by any HF tensor: {left[:5]}")
    return out


def export_hf(out_dir: str, family: str, hf_config, params: dict, tokenizer, record: dict | None = None,
              dtype: str = "float32") -> str:
    """Writes a HF-format checkpoint of ``params`` to ``out_dir`` (created if needed): ``model.safetensors``,
    ``config.json`` (``vtp_random_weights: false``, ``vtp_testbed: record``, ``dtype``), ``generation_config.json``,
    tokenizer and processor files (the testbed builders' ``save_processor``). Returns ``out_dir``."""
    import transformers

    from vtp_jax.testbed.hf_llava import _save_safetensors

    module = _family_module(family)
    os.makedirs(out_dir, exist_ok=True)
    _save_safetensors(hf_tensors(family, hf_config, params, dtype), os.path.join(out_dir, "model.safetensors"), dtype)
    record = dict(record or {})
    if family == "llava":
        config = hf_config.__class__.from_dict(hf_config.to_dict())
        config.dtype = dtype
        config.architectures = ["LlavaForConditionalGeneration"]
        config.vtp_random_weights = False
        config.vtp_testbed = record
        config.save_pretrained(out_dir)
        transformers.GenerationConfig.from_model_config(config).save_pretrained(out_dir)
        module.save_processor(out_dir, tokenizer, config)
    else:
        config = {**hf_config, "torch_dtype": dtype, "vtp_random_weights": False, "vtp_testbed": record}
        _write_json(os.path.join(out_dir, "config.json"), config)
        _write_json(os.path.join(out_dir, "generation_config.json"),
                    {"bos_token_id": module.BOS_ID, "eos_token_id": module.EOS_ID, "pad_token_id": module.EOS_ID})
        module.save_processor(out_dir, tokenizer, config)
    return out_dir


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def update_record(hf_dir: str, updates: dict) -> dict:
    """Merges ``updates`` into config.json's ``vtp_testbed`` record; returns the new record."""
    path = os.path.join(hf_dir, "config.json")
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    record = {**(config.get("vtp_testbed") or {}), **updates}
    config["vtp_testbed"] = record
    _write_json(path, config)
    return record


def write_processor_files(out_dir: str, family: str, hf_config, tokenizer) -> None:
    """config.json + tokenizer + processor files (no weights): enough for ``load_processor``."""
    module = _family_module(family)
    os.makedirs(out_dir, exist_ok=True)
    if family == "llava":
        hf_config.save_pretrained(out_dir)
    else:
        _write_json(os.path.join(out_dir, "config.json"), hf_config)
    module.save_processor(out_dir, tokenizer, hf_config)


# ---------------------------------------------------------------------------------------------------------------------
# Examples → arrays (through the checkpoint's processor)
# ---------------------------------------------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Answer comparison form: stripped, lower case, trailing ``.!?`` removed."""
    return text.strip().lower().rstrip(".!?").strip()


@dataclasses.dataclass(frozen=True)
class Conversation:
    """One training sample: an image and its (question, answer) turns; the image belongs to the first turn."""

    image: Any
    turns: tuple[tuple[str, str], ...]


class Encoder:
    """Turns conversations about shapes images into training arrays with the checkpoint's own processor (prompt ids,
    pixel values) and chat template (the text between and after the turns).

    The first turn is tokenised exactly as inference does (``processor`` → prompt ids with the image placeholders
    expanded); each later turn adds the template's user segment (``USER: {q} ASSISTANT:`` / ``<|start_header_id|>user…
    assistant<|end_header_id|>\n\n``) and every turn its assistant continuation (``" {a}</s>"`` / ``"{a}<|eot_id|>"``).
    The segmentation is checked against the template's rendering of a whole conversation at construction.

    Args:
      processor: :func:`vtp_jax.processing.load_processor` of a directory with the processor files.
      cfg: the model config (``vtp_jax.config``).
      max_turns: most question turns per conversation.
      describe: whether conversations may end with a description turn (room is made for it).
    """

    def __init__(self, family: str, processor, cfg, max_turns: int = 1, describe: bool = False):
        self.family, self.processor, self.cfg = family, processor, cfg
        self.tokenizer = processor.tokenizer
        self.max_turns, self.describe = max_turns, describe
        s = shapes_image_size(cfg)
        self._dummy = shapes.render(shapes.Scene("noise", (), 0), s)
        if family == "llada_v":
            self.layout = processor.layout((s, s))
            self.num_visual_tokens = self.layout.num_tokens
            self.mask_id = int(cfg.mask_token_id)
            self.pad_id = int(self.tokenizer.convert_tokens_to_ids("<|eot_id|>"))  # response padding (LLaDA-V)
        else:
            self.num_visual_tokens = cfg.num_visual_tokens
        self._prompts: dict[str, list[int]] = {}
        self._users: dict[str, list[int]] = {}
        self._conts: dict[tuple[str, str], list[int]] = {}
        questions = list(shapes.questions())
        self.max_prompt = max(len(self.prompt_ids(q)) for q in questions + [shapes.DESCRIBE])
        self.max_user = max(len(self.user_ids(q)) for q in questions + [shapes.DESCRIBE])
        self.max_answer = max(len(self.continuation_ids(questions[0], a)) for a in shapes.answers())
        self.max_description = len(self.continuation_ids(shapes.DESCRIBE, self._longest_description()))
        self._check_segmentation()

    def _longest_description(self) -> str:
        """A description at least as long in tokens as any scene's: the longest-tokenising colour and shape with the
        longest-tokenising places, MAX_OBJECTS times (byte-level BPE tokenises word by word)."""
        def n(word):
            return len(self.tokenizer(" " + word, add_special_tokens=False)["input_ids"])

        colour = max(shapes.COLOURS, key=n)
        shape = max(shapes.SHAPES, key=n)
        places = sorted(shapes.PLACES, key=lambda p: -sum(n(w) for w in p.split()))[: shapes.MAX_OBJECTS]
        return ", ".join(f"{colour} {shape} {p}" for p in places)

    # ---- chat template -----------------------------------------------------------------------------------------
    def _messages(self, turns, *, last_answer: bool = True) -> list[dict]:
        messages = []
        for k, (q, a) in enumerate(turns):
            if self.family == "llava":
                content = [{"type": "text", "text": q}]
                if k == 0:
                    content = [{"type": "image"}] + content
            else:
                content = f"{shapes_image_marker()}\n{q}" if k == 0 else q
            messages.append({"role": "user", "content": content})
            if last_answer or k + 1 < len(turns):
                messages.append({"role": "assistant", "content": a})
        return messages

    def _render(self, turns, *, last_answer: bool = True) -> str:
        messages = self._messages(turns, last_answer=last_answer)
        owner = self.processor.hf if self.family == "llava" else self.processor.tokenizer
        return owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=not last_answer)

    def _segment(self, longer: str, shorter: str) -> str:
        if not longer.startswith(shorter):
            raise TrainError(f"chat template: {longer!r} does not extend {shorter!r}")
        return longer[len(shorter):]

    def _check_segmentation(self) -> None:
        """The first-turn prompt + continuation + user segments + continuations == the template's whole rendering."""
        turns = (("What colour is the circle?", "red"), ("How many squares are there?", "2"),
                 (shapes.DESCRIBE, "red circle top left, blue square centre"))
        text = self.processor.build_prompt(turns[0][0]) + self.continuation_text(*turns[0])
        for q, a in turns[1:]:
            text += self.user_text(q) + self.continuation_text(q, a)
        if text != self._render(turns):
            raise TrainError(f"chat-template segmentation mismatch: {text!r} != {self._render(turns)!r}")

    # ---- token ids -------------------------------------------------------------------------------------------
    def prompt_ids(self, question: str) -> list[int]:
        """The first turn's prompt exactly as inference builds it (chat template, image placeholders expanded)."""
        if question not in self._prompts:
            if self.family == "llava":
                ids = self.processor([self._dummy], [question]).prompt_ids[0]
            else:
                p = self.processor
                ids = p.encode_prompt(p.build_prompt(question), self.num_visual_tokens)
            self._prompts[question] = [int(i) for i in ids]
        return self._prompts[question]

    def continuation_text(self, question: str, answer: str) -> str:
        """What the chat template puts after the generation prompt for an assistant turn ``answer``
        (LLaVA: ``" red</s>"``; LLaDA-V: ``"red<|eot_id|>"``)."""
        turns = ((question, answer),)
        return self._segment(self._render(turns), self._render(turns, last_answer=False))

    def user_text(self, question: str) -> str:
        """The template's text for a later user turn up to the generation prompt."""
        first = (("What shape is in the centre?", "circle"),)
        return self._segment(self._render(first + ((question, ""),), last_answer=False), self._render(first))

    def _ids(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def continuation_ids(self, question: str, answer: str) -> list[int]:
        key = (question, answer)
        if key not in self._conts:
            self._conts[key] = self._ids(self.continuation_text(question, answer))
        return self._conts[key]

    def user_ids(self, question: str) -> list[int]:
        if question not in self._users:
            self._users[question] = self._ids(self.user_text(question))
        return self._users[question]

    @property
    def seq_len(self) -> int:
        """Fixed training length (one compiled step), rounded up to 8: the longest first turn, ``max_turns − 1``
        longest later question turns, a description turn if enabled; LLaDA-V: the last response padded to
        MAX_RESPONSE."""
        n = self.max_prompt + (self.max_turns - 1) * (self.max_user + self.max_answer)  # all but the last response
        if self.describe:  # a last description turn
            n += self.max_answer + self.max_user
        last = MAX_RESPONSE if self.family == "llada_v" else (self.max_description if self.describe else
                                                               self.max_answer)
        return -(-(n + last) // 8) * 8

    # ---- arrays ----------------------------------------------------------------------------------------------
    def pixels(self, images) -> np.ndarray:
        """LLaVA [B, 3, S, S]; LLaDA-V [B, 2, 3, S, S] (base tile + the 1 × 1 grid)."""
        if self.family == "llava":
            return np.asarray(self.processor.hf.image_processor(images=list(images), return_tensors="np")
                              ["pixel_values"], np.float32)
        enc = self.processor.image_processor(images=list(images), return_tensors="np")
        sizes = {tuple(int(v) for v in s) for s in np.asarray(enc["image_sizes"])}
        if sizes != {(self.layout_size,) * 2}:
            raise TrainError(f"training images must be {self.layout_size} px squares, got sizes {sizes}")
        return np.asarray(enc["pixel_values"], np.float32)[:, : self.layout.num_tiles]

    @property
    def layout_size(self) -> int:
        return shapes_image_size(self.cfg)

    @property
    def image_kwargs(self) -> dict:
        """The static image arguments the model's forward / ``image_features`` take with :meth:`pixels`: none for
        LLaVA; LLaDA-V: ``grid`` (the anyres tile grid) and ``image_size`` (the training images' (H, W) in px)."""
        if self.family == "llava":
            return {}
        return {"grid": tuple(self.layout.grid), "image_size": (self.layout_size, self.layout_size)}

    def row(self, conv: Conversation, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """(token ids, target flags) of one conversation. LLaVA: flags on every continuation token (the next-token
        targets). LLaDA-V: flags on every response token; the last response is padded with ``<|eot_id|>`` to a
        random length in [its length, MAX_RESPONSE]."""
        ids, flags = [], []
        for k, (q, a) in enumerate(conv.turns):
            head = self.prompt_ids(q) if k == 0 else self.user_ids(q)
            cont = self.continuation_ids(q, a)
            if self.family == "llada_v" and k + 1 == len(conv.turns):
                cont = cont + [self.pad_id] * (int(rng.integers(len(cont), MAX_RESPONSE + 1)) - len(cont))
            ids += head + cont
            flags += [0] * len(head) + [1] * len(cont)
        return ids, flags

    def batch(self, conversations, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Training arrays, left-padded to :attr:`seq_len`.

        LLaVA: input_ids, attention_mask, loss_mask (1 on the continuation tokens, the targets), pixel_values.
        LLaDA-V: input_ids (clean), attention_mask, response (1 on the responses), pixel_values.
        """
        t = self.seq_len
        b = len(conversations)
        ids = np.full((b, t), self.processor.pad_token_id, np.int32)
        attn = np.zeros((b, t), np.int32)
        target = np.zeros((b, t), np.int32)
        for i, conv in enumerate(conversations):
            row, flags = self.row(conv, rng)
            if len(row) > t:
                raise TrainError(f"training sequence of {len(row)} tokens exceeds the training length {t}")
            ids[i, t - len(row):] = row
            attn[i, t - len(row):] = 1
            target[i, t - len(row):] = flags
        key = "loss_mask" if self.family == "llava" else "response"
        return {"input_ids": ids, "attention_mask": attn, key: target,
                "pixel_values": self.pixels([c.image for c in conversations])}


def make_conversation(example, rng: np.random.Generator, max_turns: int, describe: float,
                      kinds: tuple[str, ...] | None = None, first_kind: str | None = None) -> Conversation | None:
    """The example's question first, then up to ``max_turns − 1`` other distinct questions about the same scene
    (drawn with :func:`shapes.make_questions`, random order), then — with probability ``describe`` — the description
    turn (last, so it cannot give away the answers of the questions before it).

    ``kinds`` (a subset of ``shapes.KINDS``; None = all) restricts the question turns to those kinds — a curriculum
    stage such as ``("location", "position")``. If the example's own question is of another kind, a question of an
    allowed kind about the same scene replaces it; if the scene has none (e.g. ``("position",)`` for a scene without
    two distinguishable objects in different columns), the result is None and the caller draws another example.

    ``first_kind`` (optional) fixes the kind of the first question the same way: the example's own question if it is
    of that kind, else a question of that kind about the same scene, else None. The trainer draws it per row with
    ``--kind-weights`` and, on None, draws a kind afresh for the next example — so the training mix is the weights
    times each kind's askable rate, renormalised (e.g. part 5's position weight 3.5 of 8.5 gave 35% of the questions).

    Raises:
      TrainError: an unknown kind in ``kinds``, or a ``first_kind`` outside them.
    """
    if kinds is not None and not set(kinds) <= set(shapes.KINDS):
        raise TrainError(f"unknown question kinds {sorted(set(kinds) - set(shapes.KINDS))} "
                         f"(choose from {', '.join(shapes.KINDS)})")
    allowed = set(shapes.KINDS if kinds is None else kinds)
    if first_kind is not None and first_kind not in allowed:
        raise TrainError(f"first question kind {first_kind!r} is not among the allowed kinds {sorted(allowed)}")
    first_kinds = allowed if first_kind is None else {first_kind}
    others: dict[str, shapes.QA] = {}  # question text → QA, in first-drawn order
    for _ in range(-(-max_turns // len(shapes.KINDS)) + 1):  # enough draws for max_turns distinct questions
        for qa in shapes.make_questions(example.scene, rng):
            if qa.question != example.question and qa.kind in allowed:
                others.setdefault(qa.question, qa)
    questions = list(others)
    if example.kind in first_kinds:
        turns = [(example.question, example.answer)]
    else:  # a question of an allowed kind about the same scene takes the example's place
        candidates = [q for q in questions if others[q].kind in first_kinds]
        if not candidates:  # no question of such a kind can be asked about this scene
            return None
        first = candidates[int(rng.integers(len(candidates)))]
        questions.remove(first)
        turns = [(first, others[first].answer)]
    for j in rng.permutation(len(questions))[: max_turns - 1]:
        turns.append((questions[j], others[questions[j]].answer))
    if rng.random() < describe:
        turns.append((shapes.DESCRIBE, shapes.describe(example.scene)))
    return Conversation(example.image, tuple(turns))


def shapes_image_size(cfg) -> int:
    """The rendered image size: the model's input size (LLaVA) / tile size (LLaDA-V), so preprocessing is 1:1."""
    return int(cfg.vision.image_size)


def shapes_image_marker() -> str:
    from vtp_jax.processing import IMAGE_TOKEN

    return IMAGE_TOKEN


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation through our generators
# ---------------------------------------------------------------------------------------------------------------------


def diffusion_config(processor, cfg, settings: dict | None = None):
    """The :class:`DiffusionConfig` ``vtp-generate`` would build for this checkpoint (:func:`runtime.diffusion_config`)
    with ``settings`` (default :data:`GENERATION`["llada_v"])."""
    from vtp_jax.runtime import diffusion_config as runtime_config

    s = {**GENERATION["llada_v"], **(settings or {})}
    return runtime_config(cfg, processor, gen_length=s["gen_length"], block_length=s["block_length"],
                          steps=s["steps"], remasking=s["remasking"], cfg_scale=s["cfg"])


def testbed_generator(model, processor, settings: dict, method=None):
    """The family's jitted generator for a testbed model: :class:`AutoregressiveGenerator` (LLaVA) or
    :class:`DiffusionGenerator` with :func:`diffusion_config` of ``settings`` (LLaDA-V); ``method``: a pruning method
    from :func:`vtp_jax.runtime.build_methods` (None: unpruned)."""
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator
    from vtp_jax.generation.diffusion import DiffusionGenerator

    if model.cfg.family == "llava":
        return AutoregressiveGenerator(model, method)
    return DiffusionGenerator(model, diffusion_config(processor, model.cfg, settings), method)


def generate_answers(generator, processor, enc, settings: dict):
    """Greedy (``settings["temperature"]``) generation on one processed batch ``enc`` with a
    :func:`testbed_generator` → (decoded texts, one per row; the generator's result, e.g. its ``kept`` indices).
    LLaVA stops at :func:`vtp_jax.runtime.eos_token_ids` or ``settings["max_new_tokens"]``; LLaDA-V decodes with the
    generator's own :class:`DiffusionConfig`."""
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator
    from vtp_jax.runtime import eos_token_ids

    if isinstance(generator, AutoregressiveGenerator):
        out = generator.generate(
            enc.input_ids, enc.attention_mask, enc.image_inputs["pixel_values"],
            max_new_tokens=settings["max_new_tokens"], eos_token_ids=eos_token_ids(generator.cfg, processor),
            pad_token_id=processor.pad_token_id, temperature=settings["temperature"],
        )
    else:
        out = generator.generate(enc.input_ids, enc.attention_mask, enc.image_inputs,
                                 temperature=settings["temperature"])
    return [processor.decode(row[:n]) for row, n in zip(out.tokens, out.num_new_tokens)], out


class Evaluator:
    """Exact-match accuracy of greedy generation through our jitted generators on a fixed list of examples.

    The examples are processed once (``processor(images, questions)``, batches of ``batch`` rows; a short last batch
    is filled with copies of its first row, whose answers are ignored). ``__call__(state)`` swaps ``state`` (the
    ``nnx.split`` state of a model of the same config) into the generator — no recompilation — and returns
    ``{"accuracy", "n", "per_kind", "predictions"}``.

    Args:
      model: a model of the family (its parameters are used unless a state is passed).
      generation: overrides of :data:`GENERATION` for the family.
    """

    def __init__(self, model, processor, examples, *, batch: int = 32, generation: dict | None = None):
        self.cfg = model.cfg
        self.family = self.cfg.family
        self.processor = processor
        self.examples = list(examples)
        self.settings = {**GENERATION[self.family], **(generation or {})}
        self.generator = testbed_generator(model, processor, self.settings)
        self.batches = []
        for start in range(0, len(self.examples), batch):
            chunk = self.examples[start:start + batch]
            fill = chunk + [chunk[0]] * (batch - len(chunk)) if len(self.examples) > batch else chunk
            self.batches.append((len(chunk), processor([e.image for e in fill], [e.question for e in fill])))

    def __call__(self, state=None) -> dict:
        """Scores the examples; ``state``: the full ``nnx.split`` state of a same-config model (None: keep)."""
        if state is not None:
            self.generator.state = state
        texts = []
        for n, enc in self.batches:
            texts += generate_answers(self.generator, self.processor, enc, self.settings)[0][:n]
        return score(self.examples, texts)


def score(examples, texts) -> dict:
    """Exact-match accuracy overall and per kind, plus the predictions."""
    right = [normalise(t) == normalise(e.answer) for e, t in zip(examples, texts, strict=True)]
    per_kind = {}
    for kind in shapes.KINDS:
        hits = [r for r, e in zip(right, examples) if e.kind == kind]
        if hits:
            per_kind[kind] = {"accuracy": float(np.mean(hits)), "n": len(hits)}
    return {
        "accuracy": float(np.mean(right)) if right else float("nan"),
        "n": len(right),
        "correct": int(sum(right)),
        "per_kind": per_kind,
        "predictions": [normalise(t) for t in texts],
    }


def testset_examples(n: int, size: int) -> list:
    """The first ``n`` examples of the test split (seed :data:`TEST_SEED`)."""
    return shapes.make_split("test", n, TEST_SEED, size=size)


def evaluate_converted(converted_dir: str, n: int = SUBSET_N, *, batch: int | None = None) -> dict:
    """Loads a converted testbed checkpoint and scores it on the first ``n`` test examples (one batch of ``n`` rows
    unless ``batch`` is given) with the recorded generation settings. Returns :func:`score`'s dict."""
    from vtp_jax import checkpoint
    from vtp_jax.processing import load_processor

    model, cfg, _ = checkpoint.load(converted_dir)
    processor = load_processor(converted_dir, cfg)
    record = read_record(converted_dir)
    examples = testset_examples(n, shapes_image_size(cfg))
    return Evaluator(model, processor, examples, batch=batch or n, generation=record.get("generation"))()


def read_record(model_dir: str) -> dict:
    """The ``vtp_testbed`` record of a (HF or converted) testbed checkpoint's config.json ({} if none)."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as fh:
        return json.load(fh).get("vtp_testbed") or {}


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


def make_optimizer(lr: float, steps: int, warmup: int, weight_decay: float, clip: float):
    """AdamW (β = 0.9, 0.98; weight decay on ≥ 2-D parameters) with linear warm-up and cosine decay to 5 %, after
    global-norm clipping. Returns (optax transformation, learning-rate schedule)."""
    import jax
    import optax

    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, min(warmup, max(steps - 1, 1)), max(steps, 2), end_value=lr * 0.05,
    )
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    tx = optax.chain(
        optax.clip_by_global_norm(clip),
        optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=weight_decay, mask=decay_mask),
    )
    return tx, schedule


def cell_labels(scenes) -> tuple[np.ndarray, np.ndarray]:
    """Targets of the vision pre-training stage: (shape, colour) int32 [B, 9] of the object in each 3 × 3-grid cell
    (row-major; 0 = empty cell, else 1 + index in SHAPES / COLOURS)."""
    shape = np.zeros((len(scenes), shapes.GRID**2), np.int32)
    colour = np.zeros_like(shape)
    for b, scene in enumerate(scenes):
        for o in scene.objects:
            c = o.cell[0] * shapes.GRID + o.cell[1]
            shape[b, c] = 1 + shapes.SHAPES.index(o.shape)
            colour[b, c] = 1 + shapes.COLOURS.index(o.colour)
    return shape, colour


def pretrain_vision(model, encoder: Encoder, settings: TrainSettings, stream, *, progress: bool = True):
    """Stage 1: supervised pre-training of the vision tower. LLaVA's tower comes pretrained (CLIP); ours starts from
    scratch, so it gets a short stage of its own on the same synthetic scenes.

    Temporary linear heads read the tower's features (the layer(s) the VLM uses): averaged over the patches of each
    3 × 3-grid cell, they predict the cell's shape and colour (or "empty"); per patch, the row and column of the
    patch's cell. Cross-entropy, AdamW. Averaging makes every patch of a cell carry the cell's content — what an
    attention read-out in the language model needs —, and the position targets keep the coarse location in the
    features themselves (the decoder's RoPE acts on queries and keys, not on the values it reads). The heads are
    discarded; the tower's parameters (shared with ``model``) are updated in place.

    Returns (losses, accuracy on 128 validation images: shape and colour of occupied cells, "empty" of empty ones).
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from tqdm.auto import tqdm

    from vtp_jax.modeling.layers import linear

    cfg = model.cfg
    vision = cfg.vision
    grid = vision.image_size // vision.patch_size
    if grid % shapes.GRID:
        raise TrainError(f"the {grid} × {grid} patch grid does not split into {shapes.GRID} × {shapes.GRID} cells")
    g = grid // shapes.GRID
    k = 1 + len(shapes.SHAPES)
    n_out = k + 1 + len(shapes.COLOURS)
    drop_cls = vision.kind == "clip"
    d_feat = vision.hidden_size * len(cfg.vision_feature_layer)
    # the grid row and column of every patch's cell: int32 [grid², 2]
    where = np.asarray([(i // g, j // g) for i in range(grid) for j in range(grid)], np.int32)

    class Probe(nnx.Module):
        def __init__(self, tower, rngs):
            self.tower = tower
            self.head = linear(d_feat, n_out, bias=True, dtype=jnp.float32, rngs=rngs)
            self.where = linear(d_feat, 2 * shapes.GRID, bias=True, dtype=jnp.float32, rngs=rngs)

        def __call__(self, pixels):
            feats = self.tower.features(pixels, cfg.vision_feature_layer)
            feats = feats[:, 1:] if drop_cls else feats
            b, d = feats.shape[0], feats.shape[-1]
            cells = feats.reshape(b, shapes.GRID, g, shapes.GRID, g, d).mean(axis=(2, 4)).reshape(b, -1, d)
            return self.head(cells), self.where(feats)

    probe = Probe(model.vision_tower, nnx.Rngs(settings.seed + 1))
    graphdef, params = nnx.split(probe)
    steps = settings.vision_steps
    tx, _ = make_optimizer(settings.lr, steps, min(settings.warmup, steps // 4), settings.weight_decay, settings.clip)
    opt_state = tx.init(params)

    def loss_fn(params, pixels, shape, colour):
        logits, pos = nnx.merge(graphdef, params)(pixels)
        ce_s = optax.softmax_cross_entropy_with_integer_labels(logits[..., :k], shape)
        ce_c = optax.softmax_cross_entropy_with_integer_labels(logits[..., k:], colour)
        row = jnp.broadcast_to(where[:, 0], pos.shape[:2])
        col = jnp.broadcast_to(where[:, 1], pos.shape[:2])
        ce_p = (optax.softmax_cross_entropy_with_integer_labels(pos[..., : shapes.GRID], row)
                + optax.softmax_cross_entropy_with_integer_labels(pos[..., shapes.GRID:], col))
        return jnp.mean(ce_s + ce_c) + jnp.mean(ce_p)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, pixels, shape, colour):
        loss, grads = jax.value_and_grad(loss_fn)(params, pixels, shape, colour)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def arrays(examples):
        pixels = encoder.pixels([e.image for e in examples])
        if pixels.ndim == 5:  # LLaDA-V: the base tile (the whole image)
            pixels = pixels[:, 0]
        return (pixels, *cell_labels([e.scene for e in examples]))

    losses, pending = [], []
    batch = arrays([next(stream) for _ in range(settings.batch)])
    bar = tqdm(range(steps), desc="stage 1: vision", disable=not progress, dynamic_ncols=True)
    for i in bar:
        params, opt_state, loss = step(params, opt_state, *batch)
        pending.append(loss)
        if i + 1 < steps:
            batch = arrays([next(stream) for _ in range(settings.batch)])
        if len(pending) >= 10 or i + 1 == steps:
            losses += [float(x) for x in pending]
            pending = []
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    bar.close()
    nnx.update(probe, params)

    pixels, shape, colour = arrays([shapes.make_example("val", i, TEST_SEED, size=vision.image_size)
                                    for i in range(128)])
    logits, pos = (np.asarray(a) for a in jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, pixels))
    occupied = shape > 0
    pred_shape = np.argmax(logits[..., :k], -1)
    accuracy = {
        "shape": float(np.mean(pred_shape[occupied] == shape[occupied])),
        "colour": float(np.mean(np.argmax(logits[..., k:], -1)[occupied] == colour[occupied])),
        "empty": float(np.mean(pred_shape[~occupied] == 0)),
        "patch_row_col": float(np.mean((np.argmax(pos[..., : shapes.GRID], -1) == where[:, 0])
                                       & (np.argmax(pos[..., shapes.GRID:], -1) == where[:, 1]))),
    }
    print(f"[vision] cell accuracy on 128 val images: {accuracy}", file=sys.stderr)
    return losses, accuracy


def diffusion_noise(key, ids, response, mask_id: int, *, complementary: bool = False, full_mask: float = 0.0):
    """LLaDA's forward (masking) process on the response tokens, with stratified noise levels.

    Args:
      key: a JAX PRNG key.
      ids: int32 [B, T] clean token ids.
      response: int/bool [B, T], 1 on the response tokens (the only ones ever masked).
      mask_id: the ``[MASK]`` token id.
      complementary: LaViDa's complementary masking (Li et al. 2025, arXiv 2505.16839). ``B`` must be even and row
        ``i + B/2`` must be a copy of row ``i``; the first half is masked as usual, the second half with exactly
        the complement (the response tokens the first half left clean), so every response token is a target in
        exactly one of the two copies.
      full_mask: the fraction F of the rows (the last ``round(F · B)``; a static count) whose whole response is
        masked, ``t = 1`` — the input of the first denoising step, from which greedy low-confidence decoding of a
        short answer takes its first tokens. The other rows are masked as usual. This mixes a point mass at
        ``t = 1`` into LLaDA's ``t ~ U(0, 1)``: the loss is still a ``1/p``-weighted masked-diffusion loss, but
        under a noise distribution that puts more weight on fully masked responses than LLaDA's ELBO does.

    Returns:
      (noisy int32 [B, T] — ``ids`` with the masked tokens replaced by ``mask_id`` —, masked bool [B, T],
      p float32 [B] — each row's masking probability: ``(1 − ε) t + ε`` with ε = :data:`MASK_EPS`; with
      ``complementary``, ``(1 − 2ε) t + ε`` for the first half and one minus that for the copies, so both stay
      in [ε, 1 − ε]; 1 on the ``full_mask`` rows).

    ``t`` is stratified over the (first half of the) batch: ``t_i = (u + i / B) mod 1`` with one ``u ~ U(0, 1)``,
    so every ``t_i`` is marginally ``U(0, 1)`` (LLaDA, Nie et al. 2025, §2.2–2.3) while the batch covers [0, 1)
    evenly — the low-discrepancy sampler of VDM (Kingma et al. 2021), also used by MDLM. Each row's token mask is
    unbiased for its ``p`` (``E[1{masked}] = p``), so :func:`diffusion_loss` stays unbiased either way.

    Raises:
      ValueError: ``complementary`` with an odd batch; ``full_mask`` outside [0, 1] or combined with
        ``complementary`` (the complement of a fully masked response masks nothing).
    """
    import jax
    import jax.numpy as jnp

    k_t, k_m = jax.random.split(key)
    response = response.astype(bool)
    b = ids.shape[0]
    if complementary and b % 2:
        raise ValueError(f"complementary masking needs an even batch (a copy of every row), got {b} rows")
    if not 0.0 <= full_mask <= 1.0:
        raise ValueError(f"full_mask is a fraction of the batch in [0, 1], got {full_mask}")
    if complementary and full_mask:
        raise ValueError("full_mask cannot be combined with complementary masking (the complement of a fully "
                         "masked response masks nothing)")
    n = b // 2 if complementary else b  # the rows masked (all, or the first half)
    n_full = int(round(full_mask * n))  # of which the last n_full have t = 1
    m = n - n_full  # the rows with t ~ U(0, 1), stratified
    t = (jax.random.uniform(k_t, ()) + jnp.arange(m) / max(m, 1)) % 1.0
    p = (1.0 - (2 if complementary else 1) * MASK_EPS) * t + MASK_EPS
    masked = (jax.random.uniform(k_m, (m, ids.shape[1])) < p[:, None]) & response[:m]
    if n_full:  # t = 1: every response token masked, p = 1 (weight 1)
        masked = jnp.concatenate([masked, response[m:n]])
        p = jnp.concatenate([p, jnp.ones((n_full,), p.dtype)])
    if complementary:  # the copies: exactly the response tokens the first half left clean
        masked = jnp.concatenate([masked, ~masked & response[n:]])
        p = jnp.concatenate([p, 1.0 - p])
    return jnp.where(masked, mask_id, ids), masked, p


def diffusion_loss(logits, ids, masked, p, response):
    """LLaDA's SFT loss (Nie et al. 2025, §2.3): cross-entropy on the masked response tokens weighted ``1/p``,
    divided by each row's response length, averaged over the batch.

    Args:
      logits: float32 [B, T, V]; ids: int32 [B, T] clean ids; masked: bool [B, T]; p: float32 [B];
      response: int/bool [B, T] (1 on the response tokens).

    Returns a float32 scalar (nats per response token). Its expectation over the masking equals the mean
    cross-entropy per response token of the model's predictions at those noise levels (``E[1{masked}/p] = 1``).
    """
    import jax.numpy as jnp
    import optax

    ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids)
    length = jnp.maximum(jnp.sum(response.astype(bool), axis=1, keepdims=True), 1).astype(jnp.float32)
    return jnp.sum(jnp.where(masked, ce / p[:, None] / length, 0.0)) / ids.shape[0]


def make_train_step(family: str, graphdef, tx, cfg, static: dict, complementary: bool = False,
                    full_mask: float = 0.0):
    """The jitted step ``(params, frozen, opt_state, batch, key) → (params, opt_state, loss, grad_norm)``: the model is
    ``nnx.merge(graphdef, frozen, params)``, gradients are taken for ``params`` only (params and optimizer state
    donated). ``complementary`` (LLaDA-V only): the batch's rows are duplicated inside the step and the copies masked
    with the complement (:func:`diffusion_noise`), so the step runs on twice the rows it is given. ``full_mask``
    (LLaDA-V only): the fraction of rows whose whole response is masked (:func:`diffusion_noise`)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    def loss_fn(params, frozen, batch, key):
        model = nnx.merge(graphdef, frozen, params)
        if complementary:  # every row twice: [batch; batch], the copies masked with the complement
            batch = {k: jnp.concatenate([v, v]) for k, v in batch.items()}
        ids, attn = batch["input_ids"], batch["attention_mask"]
        if family == "llava":
            logits = model(ids, batch["pixel_values"], attn)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:])
            m = batch["loss_mask"][:, 1:].astype(jnp.float32)
            return jnp.sum(ce * m) / jnp.maximum(jnp.sum(m), 1.0)
        noisy, masked, p = diffusion_noise(key, ids, batch["response"], cfg.mask_token_id,
                                           complementary=complementary, full_mask=full_mask)
        logits = model(noisy, batch["pixel_values"], attn, **static)
        return diffusion_loss(logits, ids, masked, p, batch["response"])

    def step(params, frozen, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, frozen, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, optax.global_norm(grads)

    return jax.jit(step, donate_argnums=(0, 2))


def build_model(cfg, seed: int):
    import jax.numpy as jnp
    from flax import nnx

    from vtp_jax.checkpoint import build_model_class

    return build_model_class(cfg)(cfg, dtype=jnp.float32, rngs=nnx.Rngs(seed))


def plot_curves(path: str, log: dict) -> None:
    """Loss (raw and smoothed) against steps, validation accuracy on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = np.asarray(log["loss_steps"]), np.asarray(log["losses"])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, lw=0.8, label="train loss")
    if len(losses) >= 20:
        k = max(len(losses) // 50, 5)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color="tab:blue", lw=1.5, label=f"train loss ({k}-point mean)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    if log["val"]:
        ax2.plot([v["step"] for v in log["val"]], [v["accuracy"] for v in log["val"]], "o-", color="tab:orange",
                 label="val accuracy (greedy generation)")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("val accuracy")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="center right", fontsize=8)
    ax.set_title(f"{log['family']} on shapes VQA — {log['settings']['steps']} steps × {log['settings']['batch']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _per_kind_text(result: dict) -> str:
    return ", ".join(f"{k} {v['accuracy']:.2f}" for k, v in result["per_kind"].items())


def _summary(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "predictions"}


def _is_testbed_output(path: str) -> bool:
    """Whether ``path`` holds a checkpoint this trainer wrote (config.json with a ``vtp_testbed`` record)."""
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "vtp_testbed" in config


def train(settings: TrainSettings, out_dir: str, *, force: bool = False, progress: bool = True) -> dict:
    """Trains, exports to ``out_dir``, converts, evaluates and records. Returns the training log dict."""
    import jax
    from flax import nnx
    from tqdm.auto import tqdm

    from vtp_jax.config import config_from_hf
    from vtp_jax.paths import check_output_dir
    from vtp_jax.processing import load_processor

    family = settings.family
    _family_module(family)
    out_dir = os.path.abspath(out_dir)
    if settings.init and os.path.abspath(settings.init) == out_dir:
        raise TrainError("--init and --out must differ (--out is replaced)")
    check_output_dir("--out", out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir):
        if not force:
            raise TrainError(f"{out_dir} exists and is not empty; pass --force to replace it")
        if not _is_testbed_output(out_dir):
            raise TrainError(f"{out_dir} is not a vtp-train-testbed output (no config.json with \"vtp_testbed\"); "
                             "refusing to replace it even with --force")
        shutil.rmtree(out_dir)
    t_start = time.time()
    hf_config = make_hf_config(family, settings.sizes)
    if settings.init:  # the init checkpoint's own tokenizer: a retrained one may differ if the corpus changed
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(settings.init)
    else:
        tokenizer = train_shapes_tokenizer(family, {**SIZES[family], **settings.sizes}["vocab_size"])
    work = tempfile.mkdtemp(prefix="vtp_testbed_")
    try:
        write_processor_files(work, family, hf_config, tokenizer)
        with open(os.path.join(work, "config.json"), encoding="utf-8") as fh:
            cfg = config_from_hf(json.load(fh))
        processor = load_processor(work, cfg)
        encoder = Encoder(family, processor, cfg, settings.max_turns, settings.describe > 0)
        size = shapes_image_size(cfg)
        static = encoder.image_kwargs

        model = build_model(cfg, settings.seed)
        if settings.init:  # continue from an exported testbed (same sizes): its converted weights replace the init
            from convert import convert
            from vtp_jax.checkpoint import load

            try:
                loaded, init_cfg, _ = load(convert(settings.init, os.path.join(work, "init"), progress=False))
            except ValueError as e:
                raise TrainError(f"--init {settings.init}: {e}") from None
            if init_cfg != cfg:
                raise TrainError(f"--init {settings.init}: its config differs from this run's (family / --sizes)")
            nnx.update(model, nnx.state(loaded, nnx.Param))
        stream = shapes.iter_split("train", settings.seed, size=size)
        t_vision = time.time()
        vision_losses, vision_accuracy = pretrain_vision(model, encoder, settings, stream, progress=progress) \
            if settings.vision_steps > 0 else ([], {})
        vision_seconds = time.time() - t_vision
        n_params = int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
        # Stage 2 trains the projector and the language model; the vision tower stays frozen (LLaVA-1.5's recipe)
        # unless --train-vision.
        frozen_filter = nnx.Nothing() if settings.train_vision else nnx.PathContains("vision_tower")
        graphdef, frozen, params = nnx.split(model, frozen_filter, ...)

        def full_state(params):
            return nnx.split(nnx.merge(graphdef, frozen, params))[1]
        tx, schedule = make_optimizer(settings.lr, settings.steps, settings.warmup, settings.weight_decay,
                                      settings.clip)
        opt_state = tx.init(params)
        step_fn = make_train_step(family, graphdef, tx, cfg, static, settings.complementary, settings.full_mask)
        val_examples = shapes.make_split("val", settings.val_n, TEST_SEED, size=size)
        evaluator = Evaluator(model, processor, val_examples, batch=settings.eval_batch)

        log: dict[str, Any] = {
            "family": family, "task": TASK, "settings": dataclasses.asdict(settings),
            "sizes": {**SIZES[family], **settings.sizes}, "num_parameters": n_params,
            "num_visual_tokens": encoder.num_visual_tokens, "seq_len": encoder.seq_len,
            "loss_steps": [], "losses": [], "grad_norms": [], "val": [],
        }
        print(f"[{family}] {n_params / 1e6:.2f}M parameters, {encoder.num_visual_tokens} visual tokens, "
              f"training length {encoder.seq_len}, {settings.steps} steps × {settings.batch}", file=sys.stderr)

        log["vision_pretraining"] = {"steps": settings.vision_steps, "seconds": vision_seconds,
                                     "val_patch_accuracy": vision_accuracy, "losses": vision_losses}
        rng = np.random.default_rng([settings.seed, 7])
        key = jax.random.key(settings.seed)

        # complementary masking: half as many conversations, each twice in the step (same rows, same compute)
        rows_per_step = settings.batch // 2 if settings.complementary else settings.batch

        if settings.kind_weights:
            weighted = sorted(settings.kind_weights)
            weights = np.asarray([settings.kind_weights[k] for k in weighted], np.float64)
            weights /= weights.sum()

        def next_batch():
            convs: list[Conversation] = []
            while len(convs) < rows_per_step:  # scenes without a question of the requested kind are skipped
                first = (weighted[int(rng.choice(len(weighted), p=weights))] if settings.kind_weights else None)
                conv = make_conversation(next(stream), rng, settings.max_turns, settings.describe, settings.kinds,
                                         first_kind=first)
                if conv is not None:
                    convs.append(conv)
            return encoder.batch(convs, rng)

        pending: list = []
        t_train = time.time()
        batch = next_batch()
        bar = tqdm(range(settings.steps), desc=f"train {family}", disable=not progress, dynamic_ncols=True)
        for step in bar:
            key, sub = jax.random.split(key)
            params, opt_state, loss, gnorm = step_fn(params, frozen, opt_state, batch, sub)
            pending.append((step, loss, gnorm))
            if step + 1 < settings.steps:
                batch = next_batch()  # built on the host while the step runs
            last = step + 1 == settings.steps
            if len(pending) >= 10 or last:
                for s, l, g in pending:
                    log["loss_steps"].append(s)
                    log["losses"].append(float(l))
                    log["grad_norms"].append(float(g))
                pending = []
                bar.set_postfix(loss=f"{np.mean(log['losses'][-50:]):.4f}", lr=f"{float(schedule(step)):.2e}")
            if (step + 1) % settings.eval_every == 0 or last:
                result = evaluator(full_state(params))
                log["val"].append({"step": step + 1, **_summary(result)})
                tqdm.write(f"[{family}] step {step + 1}: val accuracy {result['accuracy']:.3f} "
                           f"({_per_kind_text(result)})",
                           file=sys.stderr)
        bar.close()
        log["train_seconds"] = time.time() - t_train + vision_seconds  # both stages

        # ---- export, convert, evaluate on the test split, record ----
        record = {
            "task": TASK, "family": family, "image_size": size, "num_visual_tokens": encoder.num_visual_tokens,
            "train_steps": settings.steps, "vision_pretrain_steps": settings.vision_steps, "batch": settings.batch,
            "train_examples": settings.steps * rows_per_step + settings.vision_steps * settings.batch,
            "describe_fraction": settings.describe, "max_turns": settings.max_turns, "vision_tower_trained_in_stage_2": settings.train_vision,
            "complementary_masking": settings.complementary,
            "question_kinds": list(settings.kinds) if settings.kinds else list(shapes.KINDS),
            "first_question_kind_weights": settings.kind_weights,
            "full_mask_fraction": settings.full_mask,
            "seed": settings.seed, "generation": GENERATION[family], "init": settings.init,
            "val": {"n": settings.val_n, "seed": TEST_SEED, "accuracy": log["val"][-1]["accuracy"]},
            "tokenizer": f"train_tokenizer({VOCAB_SIZE}) on the built-in corpus + shapes.corpus() x{CORPUS_REPEATS}",
            "generator": "vtp_jax.testbed.train (vtp-train-testbed)",
        }
        final = nnx.merge(graphdef, frozen, params)
        export_hf(out_dir, family, hf_config, nnx.to_pure_dict(nnx.state(final, nnx.Param)), tokenizer, record)
        converted = os.path.join(work, "converted")
        from convert import convert

        convert(out_dir, converted, progress=False)
        test = evaluate_converted(converted, settings.test_n, batch=settings.eval_batch)
        subset = evaluate_converted(converted, SUBSET_N)
        record = update_record(out_dir, {
            "test": {"n": settings.test_n, "seed": TEST_SEED, "accuracy": test["accuracy"],
                     "per_kind": {k: v["accuracy"] for k, v in test["per_kind"].items()}},
            "test_subset": {"n": SUBSET_N, "seed": TEST_SEED, "batch": SUBSET_N, "accuracy": subset["accuracy"],
                            "correct": subset["correct"], "predictions": subset["predictions"]},
        })
        log["test"] = _summary(test)
        log["test_subset"] = _summary(subset)
        log["record"] = record
        log["total_seconds"] = time.time() - t_start
        log["checkpoint_bytes"] = os.path.getsize(os.path.join(out_dir, "model.safetensors"))
        log["checkpoint_dir_bytes"] = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
        _write_json(os.path.join(out_dir, "training_log.json"), log)
        plot_curves(os.path.join(out_dir, "loss_curve.png"), log)
        print(f"[{family}] test accuracy {test['accuracy']:.3f} on {test['n']} ({subset['correct']}/{SUBSET_N} on the "
              f"fixed subset); trained {log['train_seconds'] / 60:.1f} min; wrote {out_dir}", file=sys.stderr)
        return log
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from vtp_jax import argtypes

    p = argparse.ArgumentParser(prog="vtp-train-testbed", description=__doc__.splitlines()[0])
    p.add_argument("--family", required=True, choices=FAMILIES)
    p.add_argument("--out", required=True, help="output HF-format directory (the input of vtp-convert)")
    d = TrainSettings("llava")
    p.add_argument("--steps", type=argtypes.POSITIVE, default=d.steps)
    p.add_argument("--seed", type=argtypes.SEED, default=d.seed)
    p.add_argument("--batch", type=argtypes.POSITIVE, default=d.batch)
    p.add_argument("--lr", type=argtypes.POSITIVE_REAL, default=d.lr, help="peak learning rate (> 0)")
    p.add_argument("--warmup", type=argtypes.NON_NEGATIVE, default=d.warmup)
    p.add_argument("--weight-decay", type=argtypes.NON_NEGATIVE_REAL, default=d.weight_decay)
    p.add_argument("--describe", type=argtypes.UNIT_INTERVAL, default=d.describe,
                   help="fraction of training examples replaced by the auxiliary description task")
    p.add_argument("--vision-steps", type=argtypes.NON_NEGATIVE, default=d.vision_steps,
                   help="steps of the vision pre-training stage (0 = none)")
    p.add_argument("--max-turns", type=argtypes.POSITIVE, default=d.max_turns, help="question turns per training conversation")
    p.add_argument("--train-vision", action="store_true", help="also train the vision tower in stage 2")
    p.add_argument("--complementary", action="store_true",
                   help="LLaDA-V: complementary masking (LaViDa): --batch/2 conversations per step, each twice, "
                        "the copy masked with the complement, so every response token is a target")
    p.add_argument("--full-mask", type=float, default=d.full_mask,  # range checked in main (its own message) metavar="F",
                   help="LLaDA-V: fraction of each batch whose whole response is masked (t = 1, the first denoising "
                        "step's input); the rest t ~ U(0, 1) as in LLaDA")
    p.add_argument("--kinds", default=None, metavar="K1,K2",
                   help=f"train only on questions of these kinds (comma-separated, from {','.join(shapes.KINDS)}; "
                        "default all) — e.g. a spatial curriculum stage: --kinds location,position")
    p.add_argument("--kind-weights", default=None, metavar="K1=W1,K2=W2",
                   help="draw the kind of each conversation's first question with these relative weights (kinds not "
                        "listed: 0) instead of the data's own mix; a scene that cannot be asked the drawn kind is "
                        "skipped and a kind drawn afresh, so a kind not every scene has (position) gets less than its "
                        "weight's share — e.g. colour=1,count=1,presence=1,location=2,position=2")
    p.add_argument("--init", default=None, metavar="HF_DIR",
                   help="continue from an exported testbed of the same sizes (use with --vision-steps 0)")
    p.add_argument("--eval-every", type=argtypes.POSITIVE, default=d.eval_every)
    p.add_argument("--val-n", type=argtypes.POSITIVE, default=d.val_n)
    p.add_argument("--test-n", type=argtypes.POSITIVE, default=d.test_n)
    p.add_argument("--sizes", type=_sizes_type, default=None,
                   help="JSON dict overriding model sizes (tiny_*_config arguments; sizes whole numbers ≥ 1)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-progress", action="store_true")
    return p


BUILDERS = {"llava": "tiny_llava_config", "llada_v": "tiny_llada_v_config"}  # --sizes keys: these functions' arguments


def _sizes_type(text: str) -> str:
    """argparse type of ``--sizes``: a JSON object whose keys are keyword arguments of either family's config
    builder (``tiny_llava_config`` / ``tiny_llada_v_config``); the sizes of :data:`SIZES` must be whole numbers ≥ 1
    and ``rope_theta`` a finite number > 0. Returns the text unchanged (main parses it). Raises ArgumentTypeError."""
    import inspect
    import math

    try:
        sizes = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(sizes, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of sizes, got {type(sizes).__name__}")
    if not sizes:
        return text
    known = set()
    for family, builder in BUILDERS.items():
        known |= set(inspect.signature(getattr(_family_module(family), builder)).parameters)
    counts = set(SIZES["llava"]) | set(SIZES["llada_v"])
    for key, value in sizes.items():
        if key not in known:
            raise argparse.ArgumentTypeError(f"unknown size {key!r} (known: {', '.join(sorted(known))})")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in counts and not (number and isinstance(value, int) and value >= 1):
            raise argparse.ArgumentTypeError(f"{key} must be a whole number ≥ 1, got {value!r}")
        if key == "rope_theta" and not (number and math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"rope_theta must be a finite number > 0, got {value!r}")
    return text


def parse_kind_weights(text: str, kinds: tuple[str, ...] | None = None) -> dict[str, float]:
    """``"location=2,position=2,colour=1"`` → {kind: weight} for ``--kind-weights``.

    Raises:
      TrainError: a malformed item, an unknown kind or one outside ``kinds``, a negative or non-finite weight, or
        weights that are all zero.
    """
    allowed = shapes.KINDS if kinds is None else kinds
    out: dict[str, float] = {}
    for item in (t.strip() for t in text.split(",")):
        kind, sep, value = item.partition("=")
        kind = kind.strip()
        try:
            weight = float(value) if sep else float("nan")
        except ValueError:
            weight = float("nan")
        if not np.isfinite(weight) or weight < 0:
            raise TrainError(f"--kind-weights {text!r}: {item!r} is not KIND=WEIGHT with a weight ≥ 0")
        if kind not in allowed or kind in out:
            raise TrainError(f"--kind-weights {text!r}: {kind!r} is unknown, repeated or outside --kinds "
                             f"(choose from {','.join(allowed)})")
        out[kind] = weight
    if not sum(out.values()) > 0:
        raise TrainError(f"--kind-weights {text!r}: at least one weight must be > 0")
    return {k: w for k, w in out.items() if w > 0}


def main(argv: list[str] | None = None) -> int:
    import inspect

    from vtp_jax.paths import OutputPathError

    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        sizes = json.loads(args.sizes) if args.sizes else {}
        own = set(inspect.signature(getattr(_family_module(args.family), BUILDERS[args.family])).parameters)
        if set(sizes) - own:
            raise TrainError(f"--sizes: {', '.join(sorted(set(sizes) - own))} do not apply to --family "
                             f"{args.family} (its sizes: {', '.join(sorted(own))})")
        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip()) if args.kinds is not None else None
        if kinds is not None and (not kinds or not set(kinds) <= set(shapes.KINDS)):
            raise TrainError(f"--kinds {args.kinds!r}: choose one or more of {','.join(shapes.KINDS)}")
        kind_weights = parse_kind_weights(args.kind_weights, kinds) if args.kind_weights is not None else None
        if args.steps < 1 or args.batch < 1:
            raise TrainError("--steps and --batch must be ≥ 1")
        if args.complementary and (args.family != "llada_v" or args.batch % 2):
            raise TrainError("--complementary is for --family llada_v with an even --batch")
        if args.full_mask and (args.family != "llada_v" or args.complementary or not 0 < args.full_mask <= 1):
            raise TrainError("--full-mask is a fraction in (0, 1] for --family llada_v, without --complementary")
        settings = TrainSettings(
            family=args.family, steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup,
            weight_decay=args.weight_decay, seed=args.seed, eval_every=args.eval_every, val_n=args.val_n,
            test_n=args.test_n, describe=args.describe, vision_steps=args.vision_steps,
            train_vision=args.train_vision, complementary=args.complementary, full_mask=args.full_mask,
            max_turns=args.max_turns, kinds=kinds, kind_weights=kind_weights,
            sizes=sizes, init=args.init,
        )
        train(settings, args.out, force=args.force, progress=not args.no_progress)
    except (TrainError, OutputPathError, json.JSONDecodeError) as e:
        print(f"vtp-train-testbed: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
