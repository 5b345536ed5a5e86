#!/usr/bin/env python
"""Generate the synthetic CT demo data: MSD Task06 Lung and orCaScore look-alikes with split datalists.

The command line of :mod:`bundle.tools.make_ct_demo_data` (``--help`` lists its options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the bundle package, also without `pip install -e .`

from bundle.tools.make_ct_demo_data import main  # noqa: E402

if __name__ == "__main__":
    status = main()
    raise SystemExit(status if isinstance(status, int) else 0)
