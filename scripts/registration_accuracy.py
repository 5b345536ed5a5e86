#!/usr/bin/env python
"""Accuracy and time of the ITK affine registration to MNI-152 (bundle.transforms.mni).

The command line of :mod:`bundle.tools.registration_accuracy` (``--help`` lists its options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the bundle package, also without `pip install -e .`

from bundle.tools.registration_accuracy import main  # noqa: E402

if __name__ == "__main__":
    status = main()
    raise SystemExit(status if isinstance(status, int) else 0)
