#!/usr/bin/env python
"""Parameters, FLOPs and CPU forward time of the GRCSF presets and their backbone variants.

The command line of :mod:`bundle.tools.network_profile` (``--help`` lists its options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the bundle package, also without `pip install -e .`

from bundle.tools.network_profile import main  # noqa: E402

if __name__ == "__main__":
    status = main()
    raise SystemExit(status if isinstance(status, int) else 0)
