#!/usr/bin/env python
"""The README's main command: the whole GRCSF pipeline on the built-in demo data, end to end.

The command line of :mod:`bundle.tools.run_demo` (``--help`` lists its options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the bundle package, also without `pip install -e .`

from bundle.tools.run_demo import main  # noqa: E402

if __name__ == "__main__":
    status = main()
    raise SystemExit(status if isinstance(status, int) else 0)
