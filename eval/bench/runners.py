"""Runners and inputs of ``vtp-bench``: one runner per (generator kind, side) times one variant.

Every runner has ``warmup()`` (untimed; jax: the first call compiles, its wall time is ``compile_s``, seconds) and
``run()`` (one timed generation → a dict of seconds and tokens/s):

* autoregressive (LLaVA): :class:`JaxRunner` (vtp_jax ``AutoregressiveGenerator``) and :class:`TorchRunner`
  (transformers ``LlavaForConditionalGeneration``) → ``{"prefill_s", "decode_s", "tokens_per_s", ...}``; inputs by
  :func:`make_inputs`;
* masked diffusion (LLaDA-V): :class:`JaxDiffusionRunner` (vtp_jax ``DiffusionGenerator``) and
  :class:`TorchDiffusionRunner` (the PyTorch reference with LLaDA's loop) → ``{"latency_s", "tokens_per_s", ...}``;
  inputs by :func:`make_llada_inputs`.

The prompt of both: ``bos`` + :data:`PREFIX_TEXT` text ids + N_v image tokens + :data:`SUFFIX_TEXT` text ids, built
from ids directly (no tokenizer). torch is imported only inside the torch runners.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any

import numpy as np

PREFIX_TEXT, SUFFIX_TEXT = 5, 8  # text ids before / after the image tokens in the prompt


def jax_environment(load_start: float | None, busy_before: float | None) -> dict:
    """The ``env`` of a section's report: jax version and device, CPU count, Python, machine, ``XLA_FLAGS``, the
    1-minute load average at the start and other processes' CPU share (in [0, 1]) in the second before."""
    import jax

    device = jax.devices()[0]
    return {
        "jax_version": jax.__version__, "platform": device.platform, "device_kind": device.device_kind,
        "jax_device_count": jax.device_count(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "machine": platform.machine(), "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "loadavg_start": load_start, "foreign_cpu_share_before": busy_before,
    }


# ---------------------------------------------------------------------------------------------------------------
# Autoregressive (LLaVA)
# ---------------------------------------------------------------------------------------------------------------

def make_inputs(cfg, batch: int, seed: int = 0, *, bos_id: int | None = None,
                text_range: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Fixed prompt ids int64 [B, T] (bos, 5 text ids, N_v image ids, 8 text ids), mask int64 ones [B, T],
    pixel values float32 [B, 3, H, W] ~ N(0, 1). ``bos_id`` / ``text_range`` ([lo, hi) of the text ids) default to
    the tiny testbed tokenizer's (bos 1, ids after its 5 specials up to the vocabulary size)."""
    from vtp_jax.testbed.hf_llava import BOS_ID, SPECIAL_TOKENS

    rng = np.random.default_rng(seed)
    lo, hi = text_range or (len(SPECIAL_TOKENS), cfg.text.vocab_size)  # after <unk> <s> </s> <pad> <image>
    text = rng.integers(lo, hi, size=PREFIX_TEXT + SUFFIX_TEXT)
    row = ([BOS_ID if bos_id is None else bos_id] + text[:PREFIX_TEXT].tolist() + [cfg.image_token_id] * cfg.num_visual_tokens
           + text[PREFIX_TEXT:].tolist())
    ids = np.tile(np.asarray(row, np.int64), (batch, 1))
    v = cfg.vision
    pixels = rng.standard_normal((batch, v.num_channels, v.image_size, v.image_size)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "pixel_values": pixels}


def make_llava_next_inputs(model, image_hw: tuple[int, int], batch: int = 1, seed: int = 0, *,
                           bos_id: int | None = None, text_range: tuple[int, int] | None = None) -> dict[str, Any]:
    """LLaVA-NeXT: the prompt of :func:`make_inputs` with the image's own N_v (its anyres layout:
    ``model.layout(image_hw)``, newlines included), random pixel values float32 [B, tiles, 3, S, S] ~ N(0, 1) and
    ``image_sizes`` int64 [B, 2] (transformers' input); ``image_inputs`` is the generator's dict
    (``pixel_values``, ``image_size``, ``grid``), ``num_visual`` / ``num_tiles`` / ``grid`` the layout's."""
    from vtp_jax.testbed.hf_llava import BOS_ID, SPECIAL_TOKENS

    cfg = model.cfg
    layout = model.layout(tuple(image_hw))
    n_v = layout.num_tokens
    rng = np.random.default_rng(seed)
    lo, hi = text_range or (len(SPECIAL_TOKENS), cfg.text.vocab_size)
    text = rng.integers(lo, hi, size=PREFIX_TEXT + SUFFIX_TEXT)
    row = ([BOS_ID if bos_id is None else bos_id] + text[:PREFIX_TEXT].tolist() + [cfg.image_token_id] * n_v
           + text[PREFIX_TEXT:].tolist())
    ids = np.tile(np.asarray(row, np.int64), (batch, 1))
    s = cfg.vision.image_size
    pixels = rng.standard_normal((batch, layout.num_tiles, cfg.vision.num_channels, s, s)).astype(np.float32)
    hw = tuple(int(v) for v in image_hw)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "pixel_values": pixels,
            "image_sizes": np.tile(np.asarray([hw], np.int64), (batch, 1)),
            "image_inputs": {"pixel_values": pixels, "image_size": hw, "grid": tuple(layout.grid)},
            "num_visual": n_v, "num_tiles": layout.num_tiles, "grid": tuple(layout.grid)}


class JaxRunner:
    """vtp_jax ``AutoregressiveGenerator`` for one pruning method (None = unpruned). The images are
    ``inputs["image_inputs"]`` when present (LLaVA-NeXT's dict), else ``inputs["pixel_values"]``."""

    def __init__(self, model, method, inputs: dict, max_new_tokens: int, pad_id: int):
        from vtp_jax.generation.autoregressive import AutoregressiveGenerator

        self.gen = AutoregressiveGenerator(model, method)
        self.inputs, self.n, self.pad_id = inputs, max_new_tokens, pad_id
        self.images = inputs.get("image_inputs", inputs["pixel_values"])
        self.compile_s: float | None = None  # wall time of the first call (compilation + one run), seconds
        self.last_tokens: np.ndarray | None = None

    def run(self) -> dict:
        """One timed generation → ``{"prefill_s", "decode_s"}`` (seconds) and ``"tokens_per_s"`` (decode tokens per
        second, batch summed); with ToDRE stage 2 also ``"stage2_dropped"`` (per row) and its ratios ``"alpha_t2v"``,
        ``"alpha_v2t"``. Raises RuntimeError unless every row decoded exactly ``max_new_tokens``."""
        out = self.gen.generate_arrays(
            self.inputs["input_ids"], self.inputs["attention_mask"], self.images,
            max_new_tokens=self.n, eos_token_ids=(), pad_token_id=self.pad_id, temperature=0.0,
        )
        if out.tokens.shape[1] != self.n or any(c != self.n for c in out.num_new_tokens):
            raise RuntimeError(f"jax run decoded {out.num_new_tokens} tokens, expected {self.n} per row")
        self.last_tokens = np.asarray(out.tokens)
        result = {"prefill_s": out.prefill_s, "decode_s": out.decode_s, "tokens_per_s": out.tokens_per_s}
        if out.stage2_dropped is not None:  # ToDRE stage 2: did it fire (per row), and its two ratios
            info = out.stages.get("todre-relevance", {})
            result["stage2_dropped"] = [bool(x) for x in np.asarray(out.stage2_dropped)]
            result["alpha_t2v"] = [float(x) for x in np.asarray(info.get("alpha_t2v", []))]
            result["alpha_v2t"] = [float(x) for x in np.asarray(info.get("alpha_v2t", []))]
        return result

    def warmup(self) -> None:
        """One untimed run; the first one's wall time (compilation + one run, seconds) becomes ``compile_s``."""
        t0 = time.perf_counter()
        self.run()
        if self.compile_s is None:
            self.compile_s = time.perf_counter() - t0


class TorchRunner:
    """transformers ``LlavaForConditionalGeneration`` (fp32 by default, ``dtype="bfloat16"`` for the full-size
    presets; eval). torch is imported here only.

    Decode time of a ``generate`` call = its total wall time minus its own prefill, where the prefill ends when the
    first logits reach the logits processors (a time stamp taken by a pass-through processor, called once per new
    token, the first time right after the prompt's forward pass). This subtracts the prefill of the same call, so a
    disturbed run cannot yield a negative or inflated decode time. For reference the report also holds the decode
    time computed as generate time minus the median stand-alone prefill (``decode_s_by_subtraction``).
    """

    def __init__(self, hf_dir: str, inputs: dict, max_new_tokens: int, pad_id: int, threads: int | None = None,
                 dtype: str = "float32", model_class: str = "LlavaForConditionalGeneration"):
        import torch
        import transformers
        from transformers import LogitsProcessor, LogitsProcessorList

        if threads is not None:
            torch.set_num_threads(threads)
        self.torch = torch
        t0 = time.perf_counter()
        cls = getattr(transformers, model_class)  # LLaVA-NeXT: "LlavaNextForConditionalGeneration" (+ image_sizes)
        self.model = cls.from_pretrained(hf_dir, dtype=getattr(torch, dtype)).eval()
        self.load_s = time.perf_counter() - t0  # from_pretrained wall time, seconds
        self.inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        self.n, self.pad_id = max_new_tokens, pad_id
        self.runs: list[dict] = []
        self.last_tokens: np.ndarray | None = None
        self.info = {"torch_version": torch.__version__, "torch_num_threads": torch.get_num_threads()}
        stamps: list[float] = []

        class Stamp(LogitsProcessor):
            def __call__(self, input_ids, scores):
                stamps.append(time.perf_counter())
                return scores

        self.stamps, self.processors = stamps, LogitsProcessorList([Stamp()])

    def _prefill(self) -> float:
        """Seconds of one stand-alone prefill forward (``logits_to_keep=1``)."""
        with self.torch.inference_mode():
            t0 = time.perf_counter()
            self.model(**self.inputs, use_cache=True, logits_to_keep=1)
            return time.perf_counter() - t0

    def _generate(self) -> tuple[float, float]:
        """(total seconds, seconds from the first logits to the end = the N − 1 decode steps)."""
        self.stamps.clear()
        with self.torch.inference_mode():
            t0 = time.perf_counter()
            out = self.model.generate(
                **self.inputs, max_new_tokens=self.n, min_new_tokens=self.n, do_sample=False,
                pad_token_id=self.pad_id, use_cache=True, logits_processor=self.processors,
            )
            t1 = time.perf_counter()
        new = out[:, self.inputs["input_ids"].shape[1]:]
        if new.shape[1] != self.n or len(self.stamps) != self.n:
            raise RuntimeError(f"torch generate produced {new.shape[1]} tokens ({len(self.stamps)} steps), "
                               f"expected {self.n}")
        self.last_tokens = new.numpy()
        return t1 - t0, t1 - self.stamps[0]

    def warmup(self) -> None:
        """One untimed prefill and one untimed ``generate``."""
        self._prefill()
        self._generate()

    def run(self) -> dict:
        """One timed stand-alone prefill and one timed ``generate`` → ``{"prefill_s", "generate_s", "decode_s"}``
        (seconds; tokens/s come from :meth:`finalize`)."""
        p = self._prefill()
        total, dec = self._generate()
        self.runs.append({"prefill_s": p, "generate_s": total, "decode_s": dec})
        return self.runs[-1]

    def finalize(self, batch: int) -> list[dict]:
        """Per run: tokens/s = B·(N − 1) / decode_s; adds ``decode_s_by_subtraction`` (see the class doc)."""
        pre = statistics.median(r["prefill_s"] for r in self.runs)
        return [{**r, "tokens_per_s": batch * (self.n - 1) / r["decode_s"],
                 "decode_s_by_subtraction": r["generate_s"] - pre} for r in self.runs]


# ---------------------------------------------------------------------------------------------------------------
# Masked diffusion (LLaDA-V)
# ---------------------------------------------------------------------------------------------------------------

def make_llada_inputs(model, image_hw: tuple[int, int], seed: int = 0, *, bos_id: int | None = None,
                      text_range: tuple[int, int] | None = None) -> dict[str, Any]:
    """Fixed batch-1 prompt ``bos`` + 5 text ids + N_v image placeholders + 8 text ids (int64 [1, P]), mask ones,
    random pixel values float32 [1, n_tiles, 3, S, S] ~ N(0, 1) for an image of (height, width) ``image_hw``.
    ``bos_id`` / ``text_range`` as in :func:`make_inputs` (defaults: the tiny LLaDA-V testbed tokenizer's)."""
    from vtp_jax.testbed.hf_llada_v import BOS_ID, SPECIAL_TOKENS

    cfg = model.cfg
    layout = model.layout(image_hw)
    n_v = layout.num_tokens
    rng = np.random.default_rng(seed)
    lo, hi = text_range or (len(SPECIAL_TOKENS), cfg.text.vocab_size)
    text = rng.integers(lo, hi, size=PREFIX_TEXT + SUFFIX_TEXT)
    row = [BOS_ID if bos_id is None else bos_id] + text[:PREFIX_TEXT].tolist() + [cfg.image_token_id] * n_v + text[PREFIX_TEXT:].tolist()
    ids = np.asarray([row], np.int64)
    s = cfg.vision.image_size
    pixels = rng.standard_normal((1, layout.num_tiles, cfg.vision.num_channels, s, s)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "pixel_values": pixels,
            "image_size": tuple(int(v) for v in image_hw), "num_visual": n_v, "num_tiles": layout.num_tiles,
            "grid": layout.grid}


class JaxDiffusionRunner:
    """vtp_jax ``DiffusionGenerator`` (greedy) for one setting and one method (None = unpruned)."""

    def __init__(self, model, dcfg, method, inputs: dict):
        from vtp_jax.generation.diffusion import DiffusionGenerator

        self.gen = DiffusionGenerator(model, dcfg, method)
        self.dcfg, self.inputs = dcfg, inputs
        self.image_inputs = {"pixel_values": inputs["pixel_values"], "image_size": inputs["image_size"]}
        self.compile_s: float | None = None  # wall time of the first call (compilation + one run), seconds
        self.last_tokens: np.ndarray | None = None
        self.kept: int | None = None
        # visual tokens that reach the first denoising step (a pre-LLM method's keep): first_step's static argument
        self.num_left = method.keep if method is not None and method.stage == "pre_llm" else inputs["num_visual"]

    def run(self) -> dict:
        """One timed generation → ``{"latency_s", "encode_s", "denoise_s"}`` (seconds) and ``"tokens_per_s"``
        (gen_length / latency). Raises RuntimeError for an output of the wrong shape."""
        out = self.gen.generate_arrays(self.inputs["input_ids"], self.inputs["attention_mask"], self.image_inputs,
                                temperature=0.0)
        if out.tokens.shape != (1, self.dcfg.gen_length):
            raise RuntimeError(f"jax run returned shape {out.tokens.shape}, expected (1, {self.dcfg.gen_length})")
        # With random weights the argmax may be the mask id itself; LLaDA's loop then commits it like any token
        # (the reference code does the same), so a mask id in the output is not a failure.
        self.last_tokens, self.kept = np.asarray(out.tokens), int(out.kept.shape[1])
        return {"latency_s": out.latency_s, "encode_s": out.encode_s, "denoise_s": out.denoise_s,
                "tokens_per_s": out.tokens_per_s}

    def warmup(self) -> None:
        """One untimed run; the first one's wall time (compilation + one run, seconds) becomes ``compile_s``."""
        t0 = time.perf_counter()
        self.run()
        if self.compile_s is None:
            self.compile_s = time.perf_counter() - t0

    def breakdown(self) -> dict:
        """One generation through the generator's three jitted functions, synchronised after each: seconds of the
        encode (vision + merge), the steps up to the scoring one (step 0; with RedVTP: scoring and compaction) and the
        other steps."""
        import jax
        import jax.numpy as jnp

        gen, x = self.gen, self.inputs
        arrays = {"pixel_values": jnp.asarray(x["pixel_values"])}
        static = (("image_size", x["image_size"]),)
        t0 = time.perf_counter()
        prompt = gen.encode(gen.state, jnp.asarray(x["input_ids"], jnp.int32), jnp.asarray(x["attention_mask"]),
                            arrays, static=static)
        jax.block_until_ready(prompt.h)
        t1 = time.perf_counter()
        carry, prompt, _ = gen.prune_steps(prompt, gen.initial_carry(1, jax.random.key(0)), temperature=0.0,
                                           num_visual=self.num_left)
        jax.block_until_ready(carry.x_gen)
        t2 = time.perf_counter()
        until = jnp.int32(self.dcfg.max_steps)
        jax.block_until_ready(gen.denoise(gen.state, prompt, carry, until, temperature=0.0,
                                          refresh_first=gen.rebuilds_cache).x_gen)
        t3 = time.perf_counter()
        return {"encode_s": t1 - t0, "first_step_s": t2 - t1, "later_steps_s": t3 - t2}


class TorchDiffusionRunner:
    """The PyTorch reference (:class:`vtp_jax.testbed.torch_llada_v.Reference`, fp32, eval) sampled with LLaDA's loop
    (:func:`vtp_jax.testbed.torch_llada_v.generate`, greedy): latency = wall time of the whole call (vision, every
    step recomputing the full sequence)."""

    def __init__(self, ref, dcfg, inputs: dict):
        from vtp_jax.testbed.torch_llada_v import generate

        self.ref, self.dcfg, self.inputs, self.generate = ref, dcfg, inputs, generate
        self.last_tokens: np.ndarray | None = None

    def run(self) -> dict:
        """One timed ``generate`` call → ``{"latency_s"}`` (seconds) and ``"tokens_per_s"`` (gen_length /
        latency). Raises RuntimeError when masked positions are left or the shape is wrong."""
        d, x = self.dcfg, self.inputs
        t0 = time.perf_counter()
        seq = self.generate(self.ref, x["input_ids"], x["attention_mask"], x["pixel_values"], [x["image_size"]],
                            d.gen_length, d.steps, d.block_length, d.remasking, 0.0, mask_id=d.mask_id,
                            suppress_ids=d.suppress_ids)
        latency = time.perf_counter() - t0
        tokens = seq[:, x["input_ids"].shape[1]:].numpy()
        if tokens.shape != (1, d.gen_length) or (tokens == d.mask_id).any():
            raise RuntimeError(f"torch run left masked positions or returned shape {tokens.shape}")
        self.last_tokens = tokens
        return {"latency_s": latency, "tokens_per_s": tokens.size / latency}

    def warmup(self) -> None:
        """One untimed run."""
        self.run()
