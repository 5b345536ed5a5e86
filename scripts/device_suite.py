#!/usr/bin/env python
"""One short run on one GPU: CUDA tests, map checks, end-to-end and training speed (docs/speed.md).

The command line of :mod:`bundle.tools.device_suite` (``--help`` lists its options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the bundle package, also without `pip install -e .`

from bundle.tools.device_suite import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
