#!/usr/bin/env python
"""How well do the MAE residual maps separate lesion from healthy brain voxels?

The command line of :mod:`bundle.tools.residual_map_study` (``--help`` lists its options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the bundle package, also without `pip install -e .`

from bundle.tools.residual_map_study import main  # noqa: E402

if __name__ == "__main__":
    status = main()
    raise SystemExit(status if isinstance(status, int) else 0)
