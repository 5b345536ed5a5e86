#!/usr/bin/env python
"""Real images through the bundle: the five pyradiomics 3.1.0 cases (docs/resolution_check.md).

The command line of :mod:`bundle.tools.resolution_check` (``--help`` lists its options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the bundle package, also without `pip install -e .`

from bundle.tools.resolution_check import main  # noqa: E402

if __name__ == "__main__":
    status = main()
    raise SystemExit(status if isinstance(status, int) else 0)
