"""``python -m eval.bench``: the ``vtp-bench`` command (:func:`eval.bench.cli.main`)."""

import sys

from eval.bench.cli import main

sys.exit(main())
