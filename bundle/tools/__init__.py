"""What the command-line scripts in ``scripts/`` run: the demo, the data generators and data-set
preparation, the benchmark, the studies (ablation, residual maps, registration accuracy), the
network profile and the model-zoo export. Each module has a ``main(argv)``; ``scripts/<name>.py``
only calls it.

The tools read the bundle's configs, so they run from a bundle folder: :data:`BUNDLE_ROOT` is the
folder the package lives in.
"""

from pathlib import Path

#: the bundle folder (``configs/``, ``models/``, ``docs/``) that holds this package
BUNDLE_ROOT = Path(__file__).resolve().parents[2]
