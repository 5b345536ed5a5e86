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
"""Parameters, FLOPs and CPU forward time of the GRCSF presets and their backbone variants.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add as
2 FLOPs (convolutions, matmuls, attention; element-wise ops are not counted). The paper's
"GFLOPs" match multiply-adds (MACs): MONAI's UNet++ at the paper widths does 100.1 G MACs at
224 x 224 against the paper's 106.1 "GFLOPs", so both units are printed.

Examples::

    python scripts/network_profile.py
    python scripts/network_profile.py --presets small --size 96 --repeats 5 --json profile.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch
from bundle.networks.grcsf import GRCSF_PRESETS, grcsf_preset
from torch.utils.flop_counter import FlopCounterMode

# variant name -> constructor overrides applied on top of a preset
VARIANTS: dict[str, dict[str, Any]] = {
    "U-Net": {"backbone": "unet", "gcu_levels": False, "rcu_layers": False},
    "UNet++": {"gcu_levels": False, "rcu_layers": False},
    "UNet++ + GCU": {"rcu_layers": False},
    "GRCSF": {},
}

# Wang et al., Sec. 4.4 / Table 6 (parameters in M; "GFLOPs" at 224 x 224 as published)
PAPER = {"UNet++": {"params_m": 36.63, "gflops": 106.1}, "GRCSF": {"params_m": 42.85, "gflops": 123.1}}


def profile(preset: str, variant: str, size: int, repeats: int) -> dict[str, Any]:
    """Measure one preset x variant at ``size x size``, batch 1."""
    torch.manual_seed(0)
    net = grcsf_preset(preset, **VARIANTS[variant]).eval()
    x = torch.rand(1, net.in_channels, size, size)
    params = sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            net(x)
        flops = counter.get_total_flops()
        net(x)  # warm-up: allocator and oneDNN kernel selection
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
    return {
        "preset": preset,
        "variant": variant,
        "size": size,
        "params_m": params / 1e6,
        "gflops": flops / 1e9,
        "gmacs": flops / 2e9,
        "cpu_forward_s_median": statistics.median(times),
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["paper", "small"], choices=sorted(GRCSF_PRESETS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--size", type=int, default=224, help="input height = width (default 224)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    rows = [profile(p, v, args.size, args.repeats) for p in args.presets for v in args.variants]
    print(
        f"input 1 x C x {args.size} x {args.size}, CPU threads {torch.get_num_threads()}, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    print("GFLOPs: FlopCounterMode, multiply-add = 2 FLOPs; GMACs = GFLOPs / 2 (the paper's unit)")
    header = f"{'preset':<7} {'variant':<13} {'params (M)':>10} {'GFLOPs':>9} {'GMACs':>8} {'CPU fwd (s)':>11}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['preset']:<7} {r['variant']:<13} {r['params_m']:>10.2f} {r['gflops']:>9.2f} "
            f"{r['gmacs']:>8.2f} {r['cpu_forward_s_median']:>11.3f}"
        )
    if args.size == 224:
        for r in rows:
            ref = PAPER.get(r["variant"])
            if r["preset"] == "paper" and ref is not None:
                dp = r["params_m"] / ref["params_m"] - 1
                df = r["gmacs"] / ref["gflops"] - 1
                print(
                    f"paper {r['variant']}: {ref['params_m']} M params (here {dp:+.1%}), "
                    f"{ref['gflops']} 'GFLOPs' vs {r['gmacs']:.1f} GMACs here ({df:+.1%})"
                )
    if args.json:
        with open(args.json, "w") as f:
            meta = {"threads": torch.get_num_threads(), "torch": torch.__version__, "flops_per_mac": 2}
            json.dump({**meta, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
