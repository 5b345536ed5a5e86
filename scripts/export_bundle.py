#!/usr/bin/env python
"""Export the bundle as the MONAI model zoo distributes it, and check its large files.

The command line of :mod:`bundle.tools.export_bundle` (``--help`` lists its options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the bundle package, also without `pip install -e .`

from bundle.tools.export_bundle import main  # noqa: E402

if __name__ == "__main__":
    status = main()
    raise SystemExit(status if isinstance(status, int) else 0)
