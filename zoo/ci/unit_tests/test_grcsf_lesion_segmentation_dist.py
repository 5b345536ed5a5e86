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
"""The model zoo's multi-GPU unit test of the GRCSF bundle:
``torchrun ci/unit_tests/runner.py --b grcsf_lesion_segmentation --dist True``.

Distributed training (train.json + multi_gpu_train.json) through the zoo's
``export_config_and_run_mgpu_cmd``: one process per GPU (NCCL), or two CPU processes with gloo on
a machine without a GPU. Toy scale, synthetic 4 mm ATLAS look-alikes and a random tiny MAE; the
weights and outputs go to a temporary folder.
"""

import os
import shutil
import sys
import tempfile
import unittest

import torch
from parameterized import parameterized
from utils import export_config_and_run_mgpu_cmd

BUNDLE_ROOT = "models/grcsf_lesion_segmentation"

TEST_CASE_1 = [  # distributed training, one short epoch, validation on both ranks
    {
        "bundle_root": BUNDLE_ROOT,
        "input_size": [64, 64],
        "rcu_patch_sizes": [4, 4, 8],
        "network_options": {"features": [4, 8, 8, 8, 8, 4]},
        "num_passes": 1,
        "sw_batch_size": 48,
        "num_workers": 0,
        "progress": False,
        "max_epochs": 1,
        "batch_size": 4,
        "max_slices_per_epoch": 8,
        "val_interval": 1,
        "val_fraction": 0.5,
    }
]


class TestGRCSFLesionSegmentationMGPU(unittest.TestCase):
    def setUp(self):
        sys.path.insert(0, os.path.abspath(BUNDLE_ROOT))
        from bundle.data.synthetic.atlas import generate_atlas_like_dataset
        from bundle.networks.mae import mae_preset, save_mae

        self.work_dir = tempfile.mkdtemp()
        self.dataset_dir = os.path.join(self.work_dir, "atlas_4mm")
        generate_atlas_like_dataset(
            self.dataset_dir,
            num_subjects=3,
            num_cohorts=3,
            lesion_free_fraction=0.0,
            resolution_mm=4,
            seed=0,
            progress=False,
        )
        self.mae_path = os.path.join(self.work_dir, "mae.pt")
        torch.manual_seed(0)
        save_mae(mae_preset("tiny", img_size=32, patch_size=8), self.mae_path)

    def tearDown(self):
        shutil.rmtree(self.work_dir)
        sys.path.remove(os.path.abspath(BUNDLE_ROOT))

    @parameterized.expand([TEST_CASE_1])
    def test_train_mgpu_config(self, override):
        override = {
            **override,
            "dataset_dir": self.dataset_dir,
            "mae_path": self.mae_path,
            "ckpt_dir": os.path.join(self.work_dir, "models"),
            "output_dir": os.path.join(self.work_dir, "train"),
            "cache_dir": os.path.join(self.work_dir, "cache"),
        }
        bundle_root = override["bundle_root"]
        n_processes = torch.cuda.device_count() or 2  # gloo on the CPU without GPUs
        export_config_and_run_mgpu_cmd(
            config_file=[
                os.path.join(bundle_root, "configs/train.json"),
                os.path.join(bundle_root, "configs/multi_gpu_train.json"),
            ],
            logging_file=os.path.join(bundle_root, "configs/logging.conf"),
            meta_file=os.path.join(bundle_root, "configs/metadata.json"),
            override_dict=override,
            output_path=os.path.join(self.work_dir, "train_override.json"),
            ngpu=n_processes,
        )
        self.assertTrue(os.path.isfile(os.path.join(self.work_dir, "models", "model.pt")))
        self.assertTrue(os.path.isfile(os.path.join(self.work_dir, "models", "checkpoint_last.pt")))


if __name__ == "__main__":
    unittest.main()
