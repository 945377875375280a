"""``vtp-train-testbed``: trains a tiny VLM of either family on the synthetic shapes VQA task
(:mod:`vtp_jax.testbed.shapes`) and exports it as a real Hugging Face-format directory that ``vtp-convert`` accepts.

    vtp-train-testbed --family llava|llada_v --out DIR [--steps N] [--seed S] [--batch B] [--lr LR]

Pipeline (no torch anywhere):

1. **Files first.** The tokenizer is ``hf_llava.train_tokenizer`` / ``hf_llada_v.train_tokenizer`` retrained (same
   pipeline, special tokens and settings) on the built-in corpus followed by every shapes question and answer,
   repeated ``CORPUS_REPEATS`` times so that each answer is one token (:func:`corpus.train_shapes_tokenizer`). The
   config is ``tiny_llava_config`` / ``tiny_llada_v_config`` with :data:`SIZES`; the processor files are written
   with the modules' ``save_processor`` (real chat template, CLIP / LLaVA-OneVision image processor). Training then
   reads prompts and pixels back through :func:`vtp_jax.processing.load_processor` — the very path inference uses.
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
   :mod:`vtp_jax.families.llava.names` / :mod:`vtp_jax.families.llada_v.names`, run in reverse), fp32 safetensors,
   config.json with ``"vtp_random_weights": false`` and a ``"vtp_testbed"`` record, generation config, tokenizer
   and processor files. The exported directory is then converted with the ``converter`` the CLI passes
   (:func:`convert.convert`), loaded with :func:`vtp_jax.checkpoint.load`, and evaluated on the test split
   (``--test-n`` examples, seed 0) and on the fixed subset of the first ``SUBSET_N`` test examples (one batch); both
   accuracies go into ``vtp_testbed``. ``loss_curve.png`` and ``training_log.json`` are written beside the weights.

Answers are compared after :func:`normalise` (strip, lower case, trailing punctuation dropped); a prediction is right
only if it equals the answer exactly.

Modules (one concern each; imports point down the list, the CLI last):

* :mod:`~vtp_jax.training.testbed.settings` — constants, :data:`SIZES`, :data:`GENERATION`, :class:`TrainSettings`;
* :mod:`~vtp_jax.training.testbed.recording` — the ``vtp_testbed`` record, JSON files, the loss-curve plot;
* :mod:`~vtp_jax.training.testbed.builders` — each family's HF-format testbed builder (config, tensors, files,
  processor specifics), the trainer's only per-family table;
* :mod:`~vtp_jax.training.testbed.corpus` — tokenizer corpus and tokenizer, training conversations;
* :mod:`~vtp_jax.training.testbed.batches` — conversations → token batches (:class:`Encoder`);
* :mod:`~vtp_jax.training.testbed.losses` — losses per generator kind, optimiser, the jitted step;
* :mod:`~vtp_jax.training.testbed.vision` — the vision pre-training stage;
* :mod:`~vtp_jax.training.testbed.export` — our parameters → a HF-format checkpoint (the name maps in reverse);
* :mod:`~vtp_jax.training.testbed.evaluation` — greedy generation through our generators, exact-match scores;
* :mod:`~vtp_jax.training.testbed.loop` — :func:`train`, the whole run (the converter is its argument);
* :mod:`~vtp_jax.training.testbed.cli` — parser and :func:`main` (the only module that imports ``convert``).

What depends on the generator kind (the loss, the response padding, the generator used for evaluation, the masking
flags) is keyed by ``Family.kind`` from :mod:`vtp_jax.families`; no code here tests a family's name.
"""

from vtp_jax.training.testbed.settings import (
    CORPUS_REPEATS, FAMILIES, GENERATION, MASK_EPS, MAX_RESPONSE, SIZES, SUBSET_N, TASK, TEMPLATE_LINES, TEST_SEED,
    VOCAB_SIZE, TrainError, TrainSettings,
)
from vtp_jax.training.testbed.recording import (
    is_testbed_output, per_kind_text, plot_curves, read_record, summary, update_record, write_json,
)
from vtp_jax.training.testbed.builders import (
    TESTBEDS, TestbedBuilder, hf_config_dict, make_hf_config, testbed_builder, write_processor_files,
)
from vtp_jax.training.testbed.corpus import (
    Conversation, conversation_stream, make_conversation, normalise, shapes_image_marker, shapes_image_size,
    tokenizer_corpus, train_shapes_tokenizer,
)
from vtp_jax.training.testbed.batches import TARGET_KEYS, Encoder
from vtp_jax.training.testbed.losses import (
    LOSSES, diffusion_loss, diffusion_noise, make_optimizer, make_train_step, masked_diffusion_loss, next_token_loss,
)
from vtp_jax.training.testbed.vision import cell_labels, pretrain_vision
from vtp_jax.training.testbed.export import export_hf, hf_tensor_specs, hf_tensors, to_hf_layout
from vtp_jax.training.testbed.evaluation import (
    Evaluator, diffusion_config, evaluate_converted, generate_answers, score, testbed_generator, testset_examples,
)
from vtp_jax.training.testbed.loop import Converter, build_model, prepare_output, train

__all__ = [
    "CORPUS_REPEATS", "FAMILIES", "GENERATION", "LOSSES", "MASK_EPS", "MAX_RESPONSE", "SIZES", "SUBSET_N",
    "TARGET_KEYS", "TASK", "TEMPLATE_LINES", "TESTBEDS", "TEST_SEED", "VOCAB_SIZE", "Conversation", "Converter",
    "Encoder", "Evaluator", "TestbedBuilder", "TrainError", "TrainSettings", "build_model", "cell_labels",
    "conversation_stream", "diffusion_config", "diffusion_loss", "diffusion_noise", "evaluate_converted",
    "export_hf", "generate_answers", "hf_config_dict", "hf_tensor_specs", "hf_tensors", "is_testbed_output",
    "make_conversation", "make_hf_config", "make_optimizer", "make_train_step", "masked_diffusion_loss",
    "next_token_loss", "normalise", "per_kind_text", "plot_curves", "prepare_output", "pretrain_vision",
    "read_record", "score", "shapes_image_marker", "shapes_image_size", "summary", "testbed_builder",
    "testbed_generator", "testset_examples", "to_hf_layout", "tokenizer_corpus", "train", "train_shapes_tokenizer",
    "update_record", "write_json", "write_processor_files",
]
