"""scripts/benchmark.py at tiny scale on the CPU: it runs, writes every field, its equality checks hold
and fail loudly on a broken fast path (timings are not checked)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle.tools import benchmark as benchmark

ROOT = Path(__file__).resolve().parents[2]

# tiny networks, one thread (small ops on a shared 2-core machine are faster without OpenMP)
TINY = [
    "--seg-preset",
    "small",
    "--mae-preset",
    "tiny",
    "--input-size",
    "64",
    "--sw-batch-size",
    "8",
    "--repeats",
    "1",
    "--warmup",
    "0",
    "--threads",
    "1",
    "--device",
    "cpu",
    "--quiet",
]


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_volume(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 40 x 48 x 10 head-like volume: a bright block in low noise, empty top and bottom slices."""
    rng = np.random.default_rng(0)
    volume = 0.02 * rng.random((40, 48, 10), dtype=np.float32)
    volume[5:35, 6:42, 2:8] += 0.5 + 0.3 * rng.random((30, 36, 6), dtype=np.float32)
    path = tmp_path_factory.mktemp("volume") / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(800 * volume, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    return str(path)


def test_defaults_follow_the_shipped_settings() -> None:
    # the model settings a training with the default configs records (train.json = MODEL_SETTING_DEFAULTS)
    raw = json.loads((ROOT / "configs" / "train.json").read_text())
    defaults = benchmark.config_defaults()
    assert defaults["num_passes"] == raw["num_passes"] and defaults["masking"] == raw["masking"]
    assert defaults["mask_ratios"] == raw["mask_ratios"]
    assert defaults["residual_map_skip_threshold"] == raw["residual_map_skip_threshold"]
    args = benchmark.build_parser(defaults).parse_args([])
    assert args.num_passes == raw["num_passes"] and args.masking == raw["masking"]
    assert args.ratios == raw["mask_ratios"] and args.input_size == raw["input_size"][0]


def test_slice_blocks() -> None:
    assert benchmark._parse_slices("all") == "all"
    assert benchmark._parse_slices("8") == 8 and benchmark._parse_slices("3:7") == (3, 7)
    assert benchmark._slice_block("all", 189) == (0, 189)
    assert benchmark._slice_block(8, 189) == (90, 98)  # centred
    assert benchmark._slice_block(500, 10) == (0, 10)
    assert benchmark._slice_block((3, 7), 10) == (3, 7)
    with pytest.raises(ValueError, match="exceeds"):
        benchmark._slice_block((3, 20), 10)


def test_runs_on_the_demo_subject_and_writes_every_field(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # default volume: a demo subject generated into the cache folder (4 mm here to stay fast)
    argv = [
        *TINY,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--demo-resolution-mm",
        "4",
        "--slices",
        "4",
        "--json",
        str(out),
    ]
    returned = benchmark.main(argv)
    results = json.loads(out.read_text())
    assert results["settings"]["image"].endswith("_T1w.nii.gz")
    assert results["settings"]["slices"][1] - results["settings"]["slices"][0] == 4
    assert "stands in" in results["settings"]["slices_note"]
    assert set(results) >= {
        "machine",
        "settings",
        "params",
        "gflops",
        "checks",
        "residual_maps",
        "end_to_end",
        "train_step",
    }
    assert results["machine"]["threads"] == 1 and results["machine"]["load_average_before"] is not None
    # the shipped K / masking and the paper's K = 5 random, both checked and timed
    settings = results["settings"]["settings"]
    assert settings["paper"] == {"num_passes": 5, "masking": "random"}
    assert settings["default"]["num_passes"] == benchmark.config_defaults()["num_passes"]
    for name in settings:
        check = results["checks"][name]
        assert check["masks_reproducible"] and check["batched_equals_reference"]
        assert check["pipeline_equals_batched"] and check["segmentation_equal"]
        assert check["max_abs_difference"] <= 1e-5 and check["mean_map_value"] > 0
        maps = results["residual_maps"][name]
        assert maps["batched"]["wall_s"] > 0 and maps["reference"]["wall_s"] > 0 and maps["speedup"] > 0
        assert maps["mae_forwards_reference"] == settings[name]["num_passes"] * 4 * 2
        grcsf = results["end_to_end"][f"grcsf_{name}"]
        for part in (
            "load_preprocess_s",
            "residual_maps_s",
            "segmentation_s",
            "postprocess_s",
            "total_s",
            "total_cpu_s",
        ):
            assert grcsf[part] > 0
        assert grcsf["total_s"] >= grcsf["segmentation_s"] + grcsf["residual_maps_s"]
        assert grcsf["peak_memory"]["mib"] > 0 and grcsf["extrapolated_full_volume_s"] > grcsf["total_s"]
        assert results["end_to_end"][f"ratio_{name}"] > 0
    unetpp = results["end_to_end"]["unetpp"]
    assert "residual_maps_s" not in unetpp and unetpp["total_s"] > 0
    train = results["train_step"]
    assert train["batch_size"] == 2 and train["grcsf"]["wall_s"] > 0 and train["unetpp"]["wall_s"] > 0
    assert train["ratio"] > 0 and train["ratio_cpu_time"] > 0
    assert results["params"]["grcsf_m"] > results["params"]["unetpp_m"] > 0
    assert results["gflops"]["grcsf_per_window"] > results["gflops"]["unetpp_per_window"] > 0
    assert results["gflops"]["mae_per_pass_ratio_0.5"] > results["gflops"]["mae_per_pass_ratio_0.75"] > 0
    assert returned["checks"] == results["checks"]
    # the demo subject is generated once and reused
    image = Path(results["settings"]["image"])
    stamp = image.stat().st_mtime_ns
    assert benchmark.demo_volume(tmp_path / "cache", 4) == str(image) and image.stat().st_mtime_ns == stamp
    # the JSON is not overwritten without --overwrite
    with pytest.raises(SystemExit):
        benchmark.main(argv)


def test_background_slices_are_skipped_with_exact_zeros(tiny_volume: str) -> None:
    # with the preprocessing moved to the device right after loading (the CPU here: the same values)
    argv = [*TINY, "--image", tiny_volume, "--slices", "all", "--no-train", "--no-paper-setting"]
    results = benchmark.main([*argv, "--preprocess-on-device"])
    assert results["settings"]["preprocess_on_device"] and results["checks"]["default"]["segmentation_equal"]
    assert results["settings"]["preprocess_on_device_max_abs_difference"] == 0.0
    # slices 0, 1, 8, 9 hold only noise (<= 0.02 of the scale): 6 of 10 are reconstructed
    assert results["settings"]["foreground_slices_in_block"] == 6
    assert results["residual_maps"]["default"]["mae_forwards_reference"] == 6 * 2 * 2
    assert "paper" not in results["settings"]["settings"] and results["train_step"] == {}


def test_a_broken_fast_path_fails_loudly(tiny_volume: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = benchmark.compute_residual_maps

    def off_by_a_bit(*args, **kwargs):  # type: ignore[no-untyped-def]
        return original(*args, **kwargs) * 1.01

    monkeypatch.setattr(benchmark, "compute_residual_maps", off_by_a_bit)
    out = tmp_path / "never.json"
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main([*TINY, "--image", tiny_volume, "--slices", "3", "--no-train", "--json", str(out)])
    assert exit_info.value.code == 2
    assert not out.exists()


def test_only_train(tiny_volume: str) -> None:
    results = benchmark.main([*TINY, "--image", tiny_volume, "--only-train", "--train-batch-size", "1"])
    assert results["checks"] == {} and results["residual_maps"] == {} and results["end_to_end"] == {}
    train = results["train_step"]
    assert train["batch_size"] == 1 and train["ratio"] > 0 and train["grcsf"]["peak_memory"]["mib"] > 0
    with pytest.raises(SystemExit):
        benchmark.main([*TINY, "--image", tiny_volume, "--only-train", "--no-train"])


def test_dice() -> None:
    a = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    assert benchmark.dice(a, a) == 1.0
    assert benchmark.dice(a, torch.tensor([1, 0, 0, 0], dtype=torch.bool)) == pytest.approx(2 / 3)
    assert benchmark.dice(a, ~a) == 0.0
    assert benchmark.dice(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) == 1.0


def test_precision_variants_against_float32(tiny_volume: str, tmp_path: Path) -> None:
    """--precision: the slice inference in each variant, ratios and mask agreement to float32."""
    out = tmp_path / "precision.json"
    variants = ["float32", "channels_last", "bf16"]
    results = benchmark.main(
        [*TINY, "--image", tiny_volume, "--slices", "2:8", "--precision", *variants, "--json", str(out)]
    )
    precision = results["precision"]
    assert precision["reference"] == "float32" and precision["slices_per_run"] == 6
    assert isinstance(precision["cpu_native_bf16"], bool) and precision["cpu_capability"]
    assert precision["float32"]["ratio"] == 1.0 and precision["float32"]["dice"] == 1.0
    for variant in variants:
        entry = precision[variant]
        assert entry["wall_s"] > 0 and entry["ratio"] > 0 and len(entry["runs"]) == 1
    # channels-last is the same arithmetic in another memory order: the same masks
    assert precision["channels_last"]["dice"] == 1.0
    assert precision["channels_last"]["max_probability_difference"] < 1e-4
    # bf16 rounds: probabilities differ, but they are probabilities of the same image
    assert 0.0 < precision["bf16"]["max_probability_difference"] < 0.5 and 0.0 <= precision["bf16"]["dice"] <= 1.0
    assert json.loads(out.read_text())["precision"]["channels_last"]["dice"] == 1.0
    assert "slice inference" in benchmark.format_table(results)


def test_onnxruntime_variant(tiny_volume: str) -> None:
    """--precision onnxruntime: the exported network runs in the sliding window (chunks of
    ONNX_BATCH windows, the last one padded) and is compared with float32."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        pytest.skip("onnxruntime / onnx not installed (optional: pip install onnxruntime onnx)")
    results = benchmark.main(
        [*TINY, "--image", tiny_volume, "--slices", "2:5", "--precision", "float32", "onnxruntime"]
    )
    entry = results["precision"]["onnxruntime"]
    assert entry["wall_s"] > 0 and 0.0 <= entry["dice"] <= 1.0 and entry["max_probability_difference"] < 0.5
    assert any(note.startswith("onnxruntime ") for note in results["notes"])
