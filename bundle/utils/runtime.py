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
"""The process the workflows run in: device, CPU threads, distributed (DDP) set-up.

The configs call these instead of spelling the choices out in ``$`` expressions.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

__all__ = [
    "ddp_device_ids",
    "default_device",
    "distributed_device",
    "finish_distributed",
    "init_distributed",
    "set_num_threads",
]


def default_device() -> torch.device:
    """The first CUDA device when there is one, else the CPU."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def set_num_threads(num_threads: Any = None) -> None:
    """Set torch's CPU threads (``num_threads``); None or 0 keeps torch's choice."""
    if num_threads:
        torch.set_num_threads(int(num_threads))


def distributed_device() -> torch.device:
    """This rank's device under torchrun: ``cuda:<LOCAL_RANK>`` with GPUs, else the CPU (gloo)."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def ddp_device_ids(device: Any) -> list[torch.device] | None:
    """``device_ids`` of DistributedDataParallel: the GPU of this rank, None on the CPU."""
    device = torch.device(device)
    return [device] if device.type == "cuda" else None


def init_distributed() -> int:
    """Join the torchrun process group (NCCL with GPUs, gloo without) once; select this rank's GPU;
    let only rank 0 log at INFO level. Returns the rank."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(distributed_device())
    rank = dist.get_rank()
    logging.getLogger().setLevel(logging.WARNING if rank > 0 else logging.INFO)
    return rank


def finish_distributed() -> None:
    """Leave the process group (if joined), once every rank has reached this point.

    Without the barrier a rank that finishes first tears down its gloo connections while another
    is still writing its checkpoints, and one of the processes may abort at exit ("terminate
    called without an active exception", seen once in three CPU runs of the zoo's multi-GPU test).
    """
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
