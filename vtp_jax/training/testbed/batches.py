"""Conversations → training arrays, through the checkpoint's own processor and chat template (:class:`Encoder`)."""

from __future__ import annotations

import numpy as np

from vtp_jax import families
from vtp_jax.testbed import shapes
from vtp_jax.training.testbed.builders import testbed_builder
from vtp_jax.training.testbed.corpus import Conversation, shapes_image_size
from vtp_jax.training.testbed.settings import MAX_RESPONSE, TrainError

# The batch key of the target flags, per generator kind: next-token targets (autoregressive) or the response tokens
# that the masking process may hide (masked diffusion).
TARGET_KEYS = {families.AUTOREGRESSIVE: "loss_mask", families.MASKED_DIFFUSION: "response"}


class Encoder:
    """Turns conversations about shapes images into training arrays with the checkpoint's own processor (prompt ids,
    pixel values) and chat template (the text between and after the turns).

    The first turn is tokenised exactly as inference does (``processor`` → prompt ids with the image placeholders
    expanded); each later turn adds the template's user segment (``USER: {q} ASSISTANT:`` / ``<|start_header_id|>user…
    assistant<|end_header_id|>\n\n``) and every turn its assistant continuation (``" {a}</s>"`` / ``"{a}<|eot_id|>"``).
    The segmentation is checked against the template's rendering of a whole conversation at construction.

    The family's file and processor specifics come from its :class:`~vtp_jax.training.testbed.builders.
    TestbedBuilder`; what depends on the generator kind (``Family.kind``) from :data:`TARGET_KEYS` and
    :attr:`masked_diffusion` (the last response padded to a random length, the fixed length holding
    ``MAX_RESPONSE`` response tokens).

    Args:
      family: the family's name.
      processor: :func:`vtp_jax.processing.load_processor` of a directory with the processor files.
      cfg: the model config (``vtp_jax.config``).
      max_turns: most question turns per conversation.
      describe: whether conversations may end with a description turn (room is made for it).
    """

    def __init__(self, family: str, processor, cfg, max_turns: int = 1, describe: bool = False):
        self.family, self.processor, self.cfg = family, processor, cfg
        self.builder = testbed_builder(family)
        self.kind = families.get(family).kind
        self.masked_diffusion = self.kind == families.MASKED_DIFFUSION
        self.target_key = TARGET_KEYS[self.kind]
        self.tokenizer = processor.tokenizer
        self.max_turns, self.describe = max_turns, describe
        s = shapes_image_size(cfg)
        self._dummy = shapes.render(shapes.Scene("noise", (), 0), s)
        self.num_visual_tokens, self.layout = self.builder.visual_layout(processor, cfg, s)
        if self.masked_diffusion:
            self.mask_id = int(cfg.mask_token_id)
            # the padding of the last response (LLaDA-V: <|eot_id|>, what the model emits after an answer)
            self.pad_id = int(self.tokenizer.convert_tokens_to_ids(self.builder.response_pad_token))
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
            messages.append({"role": "user", "content": self.builder.user_content(q, first=k == 0)})
            if last_answer or k + 1 < len(turns):
                messages.append({"role": "assistant", "content": a})
        return messages

    def _render(self, turns, *, last_answer: bool = True) -> str:
        messages = self._messages(turns, last_answer=last_answer)
        owner = self.builder.template_owner(self.processor)
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
            self._prompts[question] = self.builder.prompt_ids(self.processor, question, self._dummy,
                                                              self.num_visual_tokens)
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
        """Token ids of :meth:`continuation_text` (cached)."""
        key = (question, answer)
        if key not in self._conts:
            self._conts[key] = self._ids(self.continuation_text(question, answer))
        return self._conts[key]

    def user_ids(self, question: str) -> list[int]:
        """Token ids of :meth:`user_text` (cached)."""
        if question not in self._users:
            self._users[question] = self._ids(self.user_text(question))
        return self._users[question]

    @property
    def seq_len(self) -> int:
        """Fixed training length (one compiled step), rounded up to 8: the longest first turn, ``max_turns − 1``
        longest later question turns, a description turn if enabled; masked diffusion: the last response padded to
        MAX_RESPONSE."""
        n = self.max_prompt + (self.max_turns - 1) * (self.max_user + self.max_answer)  # all but the last response
        if self.describe:  # a last description turn
            n += self.max_answer + self.max_user
        last = MAX_RESPONSE if self.masked_diffusion else (self.max_description if self.describe else
                                                           self.max_answer)
        return -(-(n + last) // 8) * 8

    # ---- arrays ----------------------------------------------------------------------------------------------
    def pixels(self, images) -> np.ndarray:
        """The processor's pixel values: LLaVA [B, 3, S, S]; LLaDA-V [B, 2, 3, S, S] (base tile + the 1 × 1 grid)."""
        return self.builder.pixels(self.processor, images, self.layout_size, self.layout)

    @property
    def layout_size(self) -> int:
        """The training images' side in px (:func:`shapes_image_size`)."""
        return shapes_image_size(self.cfg)

    @property
    def image_kwargs(self) -> dict:
        """The static image arguments the model's forward / ``image_features`` take with :meth:`pixels`: none for
        LLaVA; LLaDA-V: ``grid`` (the anyres tile grid) and ``image_size`` (the training images' (H, W) in px)."""
        return self.builder.image_kwargs(self.layout, self.layout_size)

    def row(self, conv: Conversation, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """(token ids, target flags) of one conversation. Autoregressive: flags on every continuation token (the
        next-token targets). Masked diffusion: flags on every response token; the last response is padded with the
        builder's response pad token (LLaDA-V: ``<|eot_id|>``) to a random length in [its length, MAX_RESPONSE]."""
        ids, flags = [], []
        for k, (q, a) in enumerate(conv.turns):
            head = self.prompt_ids(q) if k == 0 else self.user_ids(q)
            cont = self.continuation_ids(q, a)
            if self.masked_diffusion and k + 1 == len(conv.turns):
                cont = cont + [self.pad_id] * (int(rng.integers(len(cont), MAX_RESPONSE + 1)) - len(cont))
            ids += head + cont
            flags += [0] * len(head) + [1] * len(cont)
        return ids, flags

    def batch(self, conversations, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Training arrays, left-padded to :attr:`seq_len`: input_ids (clean), attention_mask, the target flags
        under :attr:`target_key` (autoregressive ``loss_mask``: 1 on the continuation tokens; masked diffusion
        ``response``: 1 on the responses), pixel_values."""
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
        return {"input_ids": ids, "attention_mask": attn, self.target_key: target,
                "pixel_values": self.pixels([c.image for c in conversations])}
