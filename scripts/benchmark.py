#!/usr/bin/env python
"""End-to-end speed of GRCSF against its bare UNet++ backbone on one volume.

The command line of :mod:`bundle.tools.benchmark` (``--help`` lists its options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the bundle package, also without `pip install -e .`

from bundle.tools.benchmark import main  # noqa: E402

if __name__ == "__main__":
    status = main()
    raise SystemExit(status if isinstance(status, int) else 0)
