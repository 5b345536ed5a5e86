# Copyright (c) GRCSF bundle contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The model zoo's unit test of the GRCSF bundle: ``python ci/unit_tests/runner.py --b grcsf_lesion_segmentation``.

Written for a checkout of Project-MONAI/model-zoo with the bundle in ``models/grcsf_lesion_segmentation``
(``python scripts/export_bundle.py zoo <checkout>`` of the bundle's repository puts both there), run
from the checkout's root. Every workflow of the bundle at toy scale, in the order it is used:
MAE pre-training (train_mae.json), GRCSF training (train.json, with that MAE), evaluation
(inference.json + evaluate.json) and inference (inference.json), each through
``check_workflow(..., check_properties=True)`` on synthetic 4 mm ATLAS look-alikes. The weights
and outputs go to a temporary folder, not into the bundle.
"""

import json
import os
import shutil
import sys
import tempfile
import unittest

from monai.bundle import ConfigWorkflow
from parameterized import parameterized
from utils import check_workflow

BUNDLE_ROOT = "models/grcsf_lesion_segmentation"

#: toy scale of the GRCSF workflows: a 4-16 channel network at 64 x 64, one MAE pass, one short epoch
TOY_SCALE = {
    "bundle_root": BUNDLE_ROOT,
    "input_size": [64, 64],
    "rcu_patch_sizes": [4, 4, 8],
    "network_options": {"features": [4, 8, 8, 8, 8, 4]},
    "num_passes": 1,
    "sw_batch_size": 48,
    "num_workers": 0,
    "progress": False,
}

TEST_CASE_MAE = [  # MAE pre-training: the tiny MAE at 32 x 32, one epoch
    {
        "bundle_root": BUNDLE_ROOT,
        "mae_preset": "tiny",
        "mae_img_size": 32,
        "mae_max_epochs": 1,
        "mae_batch_size": 8,
        "volume_cache": None,
        "num_workers": 0,
        "progress": False,
    }
]
TEST_CASE_TRAIN = [{**TOY_SCALE, "max_epochs": 1, "batch_size": 4, "max_slices_per_epoch": 8, "val_interval": 1}]
TEST_CASE_EVAL = [dict(TOY_SCALE)]
TEST_CASE_INFER = [dict(TOY_SCALE)]


def test_order(test_name1, test_name2):
    """The workflows in the order they depend on each other: MAE, training, evaluation, inference."""

    def get_order(name):
        for rank, key in enumerate(("mae", "train", "eval", "infer")):
            if key in name:
                return rank
        return 4

    return get_order(test_name1) - get_order(test_name2)


def _workflow(workflow_type, config_files, run_id, override):
    return ConfigWorkflow(
        workflow_type=workflow_type,
        config_file=[os.path.join(BUNDLE_ROOT, "configs", c) for c in config_files],
        logging_file=os.path.join(BUNDLE_ROOT, "configs/logging.conf"),
        meta_file=os.path.join(BUNDLE_ROOT, "configs/metadata.json"),
        run_id=run_id,
        **override,
    )


class TestGRCSFLesionSegmentation(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # the bundle's own code (its configs import the `bundle` package of the bundle folder)
        sys.path.insert(0, os.path.abspath(BUNDLE_ROOT))
        from bundle.data.synthetic.atlas import generate_atlas_like_dataset

        cls.work_dir = tempfile.mkdtemp()
        cls.dataset_dir = os.path.join(cls.work_dir, "atlas_4mm")
        cls.records = generate_atlas_like_dataset(
            cls.dataset_dir,
            num_subjects=3,
            num_cohorts=3,
            lesion_free_fraction=0.0,
            resolution_mm=4,
            seed=0,
            progress=False,
        )
        cls.ckpt_dir = os.path.join(cls.work_dir, "models")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.work_dir)
        sys.path.remove(os.path.abspath(BUNDLE_ROOT))

    def _paths(self, name):
        return {
            "dataset_dir": self.dataset_dir,
            "ckpt_dir": self.ckpt_dir,
            "output_dir": os.path.join(self.work_dir, name),
            "cache_dir": os.path.join(self.work_dir, "cache"),
        }

    @parameterized.expand([TEST_CASE_MAE])
    def test_mae_config(self, override):
        paths = self._paths("mae")
        paths.pop("cache_dir")  # not an id of train_mae.json
        workflow = _workflow("train", ["train_mae.json"], "training", {**override, **paths})
        workflow.initialize()
        # every required property; of the optional ones MONAI wants the ValidationHandler's interval
        # to be `@val_interval`: the MAE's is `mae_val_interval` (ids of the MAE pre-training start
        # with mae_, so that a data-set overlay's val_interval for the segmentation training does
        # not reach the MAE; docs/configs.md)
        self.assertEqual(workflow.check_properties(), ["val_interval"])
        workflow.run()
        workflow.finalize()
        self.assertTrue(os.path.isfile(os.path.join(self.ckpt_dir, "mae.pt")))

    @parameterized.expand([TEST_CASE_TRAIN])
    def test_train_config(self, override):
        check_workflow(_workflow("train", ["train.json"], "training", {**override, **self._paths("train")}), True)
        self.assertTrue(os.path.isfile(os.path.join(self.ckpt_dir, "model.pt")))

    @parameterized.expand([TEST_CASE_EVAL])
    def test_eval_config(self, override):
        paths = self._paths("eval")
        paths.pop("cache_dir")
        workflow = _workflow("infer", ["inference.json", "evaluate.json"], "evaluating", {**override, **paths})
        check_workflow(workflow, check_properties=True)
        with open(os.path.join(paths["output_dir"], "summary.json")) as f:
            summary = json.load(f)
        self.assertIn("mean", json.dumps(summary))

    @parameterized.expand([TEST_CASE_INFER])
    def test_infer_config(self, override):
        paths = self._paths("infer")
        paths.pop("cache_dir")
        override = {**override, **paths, "input_dir": self.records[0]["image"]}
        check_workflow(_workflow("infer", ["inference.json"], "run", override), check_properties=True)
        outputs = [f for f in os.listdir(paths["output_dir"]) if f.endswith("_seg.nii.gz")]
        self.assertEqual(len(outputs), 1)


if __name__ == "__main__":
    loader = unittest.TestLoader()
    loader.sortTestMethodsUsing = test_order
    unittest.main(testLoader=loader)
