#!/usr/bin/env python
"""Check a data set download and write the paper's split as datalist JSON files to inspect and reuse.

The command line of :mod:`bundle.tools.prepare_dataset` (``--help`` lists its options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the bundle package, also without `pip install -e .`

from bundle.tools.prepare_dataset import main  # noqa: E402

if __name__ == "__main__":
    status = main()
    raise SystemExit(status if isinstance(status, int) else 0)
