"""``vtp-convert HF_DIR OUT_DIR [--dtype float32|bfloat16] [--force] [--allow-pickle]``.

Exit codes: 0 on success; 2 on any :class:`~convert.core.ConversionError` or bad arguments, with a one-line
(or short multi-line) ``vtp-convert: error: <problem>`` on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import sys

PROG = "vtp-convert"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Convert a Hugging Face LLaVA checkpoint directory (config.json + safetensors) into a "
        "vtp_jax directory (config.json, vtp_jax.json, Orbax params/, tokenizer and processor files).",
    )
    p.add_argument("hf_dir", metavar="HF_DIR", help="Hugging Face model directory")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output directory (must not exist unless --force)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="parameter dtype")
    p.add_argument("--force", action="store_true", help="replace an existing converted OUT_DIR")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept pickled pytorch_model.bin weights (loaded with torch.load(weights_only=True))",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs the converter; returns the exit code (argparse usage errors also return 2 instead of exiting)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage error (2) or --help (0); argparse has printed its message
        return int(e.code or 0)
    from convert.core import ConversionError, convert

    try:
        out = convert(
            args.hf_dir,
            args.out_dir,
            dtype=args.dtype,
            force=args.force,
            allow_pickle=args.allow_pickle,
            progress=not args.no_progress,
        )
    except ConversionError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(f"{PROG}: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
