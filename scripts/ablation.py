#!/usr/bin/env python
"""The paper's ablation (Tables 1, 3-5, Fig. 9) reproduced on the synthetic ATLAS look-alike.

The command line of :mod:`bundle.tools.ablation` (``--help`` lists its options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the bundle package, also without `pip install -e .`

from bundle.tools.ablation import main  # noqa: E402

if __name__ == "__main__":
    status = main()
    raise SystemExit(status if isinstance(status, int) else 0)
