"""Hand-computed checks of bundle.metrics (segmentation metrics, lesion bins, aggregation, calcium)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from bundle.metrics.calcium import (
    AGATSTON_CATEGORY_NAMES,
    agatston_category,
    agatston_density_weight,
    agatston_scores,
    calcium_candidates,
    orcascore_metrics,
)
from bundle.metrics.segmentation import (
    SEGMENTATION_METRIC_KEYS,
    LesionMetrics,
    aggregate_metrics,
    connectivity_structure,
    dice_by_lesion_attribute,
    dice_by_lesion_size,
    label_lesions,
    lesion_size_bins,
    segmentation_metrics,
    summarise_lesion_bins,
)
from ignite.engine import Engine
from monai.handlers import IgniteMetricHandler

NAN = float("nan")


def assert_metrics(got: dict[str, float], expected: dict[str, float]) -> None:
    """Compare the expected subset of a metrics dict; NaN must match NaN."""
    for k, v in expected.items():
        if math.isnan(v):
            assert math.isnan(got[k]), f"{k}: expected NaN, got {got[k]}"
        else:
            assert got[k] == pytest.approx(v, abs=1e-12), f"{k}: expected {v}, got {got[k]}"


# ----------------------------------------------------------------------- pixel-wise metrics


def _shifted_squares() -> tuple[np.ndarray, np.ndarray]:
    """4x4 image: truth rows 0-1 x cols 0-1, prediction rows 0-1 x cols 1-2."""
    truth = np.zeros((4, 4), dtype=np.uint8)
    pred = np.zeros((4, 4), dtype=np.uint8)
    truth[0:2, 0:2] = 1
    pred[0:2, 1:3] = 1
    return pred, truth


def test_pixel_metrics_hand_counted() -> None:
    pred, truth = _shifted_squares()
    # TP = column 1, rows 0-1 = 2; FP = column 2 = 2; FN = column 0 = 2; TN = 16 - 6 = 10
    got = segmentation_metrics(pred, truth, spacing=(2.0, 0.5))
    assert_metrics(
        got,
        {
            "tp": 2,
            "fp": 2,
            "fn": 2,
            "tn": 10,
            "dice": 4 / 8,  # 2TP / (2TP + FP + FN)
            "iou": 2 / 6,  # TP / (TP + FP + FN)
            "precision": 2 / 4,
            "recall": 2 / 4,
            "fpr": 2 / 12,  # FP / (FP + TN)
            "vose": 2 / 4,  # FP / |G|
            # one component each, overlapping
            "lesion_precision": 1.0,
            "lesion_recall": 1.0,
            "lesion_f1": 1.0,
            "n_true_lesions": 1,
            "n_pred_lesions": 1,
            # 4 voxels of 2.0 x 0.5 = 1 unit each
            "pred_volume": 4.0,
            "truth_volume": 4.0,
        },
    )
    assert tuple(got) == SEGMENTATION_METRIC_KEYS


def test_vose_counts_only_over_segmentation() -> None:
    # truth 4 voxels, prediction 2 of them + 3 outside: |P| - |G| = 1 but FP = 3 -> VOSE 3/4
    truth = np.zeros((3, 5), dtype=bool)
    pred = np.zeros((3, 5), dtype=bool)
    truth[0, 0:4] = True
    pred[0, 0:2] = True
    pred[2, 0:3] = True
    got = segmentation_metrics(pred, truth)
    assert_metrics(got, {"vose": 3 / 4, "fp": 3, "fn": 2, "tp": 2, "fpr": 3 / 11})


def test_empty_conventions() -> None:
    empty = np.zeros((3, 3), dtype=np.uint8)
    one = empty.copy()
    one[1, 1] = 1
    # both empty: a perfect prediction
    assert_metrics(
        segmentation_metrics(empty, empty),
        {
            "dice": 1.0,
            "iou": 1.0,
            "precision": 1.0,
            "recall": 1.0,
            "fpr": 0.0,
            "vose": 0.0,
            "lesion_precision": 1.0,
            "lesion_recall": 1.0,
            "lesion_f1": 1.0,
        },
    )
    # lesion-free subject with a false positive: recall and VOSE have no denominator
    assert_metrics(
        segmentation_metrics(one, empty),
        {
            "dice": 0.0,
            "iou": 0.0,
            "precision": 0.0,
            "recall": NAN,
            "fpr": 1 / 9,
            "vose": NAN,
            "lesion_precision": 0.0,
            "lesion_recall": NAN,
            "lesion_f1": 0.0,
        },
    )
    # missed lesion, nothing predicted: precision has no denominator
    assert_metrics(
        segmentation_metrics(empty, one),
        {
            "dice": 0.0,
            "iou": 0.0,
            "precision": NAN,
            "recall": 0.0,
            "fpr": 0.0,
            "vose": 0.0,
            "lesion_precision": NAN,
            "lesion_recall": 0.0,
            "lesion_f1": 0.0,
        },
    )
    # the lesion fills the image: no background, FPR undefined
    full = np.ones((2, 2), dtype=np.uint8)
    assert_metrics(segmentation_metrics(full, full), {"dice": 1.0, "fpr": NAN, "vose": 0.0})


# ----------------------------------------------------------------------- lesion-wise metrics


def test_lesion_wise_two_lesions_one_detected_one_false_positive() -> None:
    truth = np.zeros((8, 8), dtype=np.uint8)
    pred = np.zeros((8, 8), dtype=np.uint8)
    truth[0:2, 0:2] = 1  # lesion A, detected
    truth[5:7, 5:7] = 1  # lesion B, missed
    pred[1:3, 1:3] = 1  # overlaps A in (1, 1)
    pred[0, 6] = 1  # false-positive component
    got = segmentation_metrics(pred, truth)
    # 1 of 2 predicted components hits, 1 of 2 lesions found: P = R = F1 = 1/2
    assert_metrics(
        got, {"lesion_precision": 0.5, "lesion_recall": 0.5, "lesion_f1": 0.5, "n_true_lesions": 2, "n_pred_lesions": 2}
    )


def test_connectivity_diagonal_neighbours() -> None:
    truth = np.zeros((3, 3), dtype=np.uint8)
    truth[0, 0] = truth[1, 1] = 1  # touch only diagonally
    for conn, n in ((1, 2), (4, 2), (2, 1), (8, 1), (None, 1)):
        assert segmentation_metrics(truth, truth, connectivity=conn)["n_true_lesions"] == n
    vol = np.zeros((2, 2, 2), dtype=np.uint8)
    vol[0, 0, 0] = vol[1, 1, 1] = 1  # corner neighbours in 3D
    for conn, n in ((6, 2), (18, 2), (26, 1)):
        assert label_lesions(vol, connectivity=conn)[1] == n
    assert connectivity_structure(3, 6).sum() == 7  # centre + 6 faces


def test_min_overlap() -> None:
    truth = np.zeros((4, 4), dtype=np.uint8)
    pred = np.zeros((4, 4), dtype=np.uint8)
    truth[0:2, 0:2] = 1
    pred[0, 0] = 1  # covers 1/4 of the lesion; the component is entirely inside it
    strict = segmentation_metrics(pred, truth, min_overlap=0.5)
    assert_metrics(strict, {"lesion_recall": 0.0, "lesion_precision": 1.0, "lesion_f1": 0.0})
    loose = segmentation_metrics(pred, truth, min_overlap=0.25)
    assert_metrics(loose, {"lesion_recall": 1.0, "lesion_precision": 1.0, "lesion_f1": 1.0})


def test_numpy_torch_and_channel_inputs_agree() -> None:
    truth = np.zeros((5, 6, 4), dtype=np.uint8)
    pred = np.zeros((5, 6, 4), dtype=np.uint8)
    truth[1:4, 1:3, 0:2] = 1
    truth[4, 5, 3] = 1
    pred[2:5, 1:4, 1:3] = 1
    pred[0, 5, 0] = 1
    ref = segmentation_metrics(pred, truth, spacing=(1.0, 0.5, 2.0))
    variants = [
        (torch.from_numpy(pred), torch.from_numpy(truth)),
        (torch.from_numpy(pred).bool()[None], torch.from_numpy(truth).float()[None]),
        (pred.astype(np.float32)[None], truth.astype(bool)),
    ]
    for p, t in variants:
        assert_metrics(segmentation_metrics(p, t, spacing=(1.0, 0.5, 2.0)), ref)
    # a 2D channel-first item (1, H, W) with 2D spacing
    assert_metrics(
        segmentation_metrics(torch.from_numpy(pred[..., 1])[None], truth[None, ..., 1], spacing=(1.0, 1.0)),
        segmentation_metrics(pred[..., 1], truth[..., 1]),
    )


# --------------------------------------------------------------------------- lesion bins


def test_lesion_size_bins_and_per_lesion_dice() -> None:
    truth = np.zeros((20, 20), dtype=np.uint8)
    pred = np.zeros((20, 20), dtype=np.uint8)
    truth[0:2, 0:2] = 1  # lesion 1: 4 voxels
    pred[0:2, 1:3] = 1  # covers 2 of it, component of 4 -> Dice 2*2 / (4 + 4) = 0.5
    truth[5:15, 5:20] = 1  # lesion 2: 150 voxels, predicted exactly -> Dice 1
    pred[5:15, 5:20] = 1
    truth[18, 0:5] = 1  # lesion 3: 5 voxels, missed -> Dice 0
    rec = lesion_size_bins(pred, truth, bins=(0, 4, 150, np.inf), connectivity=4)
    np.testing.assert_array_equal(rec["label"], [1, 2, 3])
    np.testing.assert_array_equal(rec["size"], [4, 150, 5])
    np.testing.assert_array_equal(rec["detected"], [True, True, False])
    np.testing.assert_allclose(rec["dice"], [0.5, 1.0, 0.0])
    # right-closed bins: 4 in (0, 4], 150 in (4, 150], 5 in (4, 150]
    np.testing.assert_array_equal(rec["bin"], [0, 1, 1])
    summary = dice_by_lesion_size(pred, truth, bins=(0, 4, 150, np.inf), connectivity=4)
    assert [s["n_lesions"] for s in summary] == [1, 2, 0]
    assert [s["n_detected"] for s in summary] == [1, 1, 0]
    assert summary[0]["mean_dice"] == pytest.approx(0.5)
    assert summary[1]["mean_dice"] == pytest.approx((1.0 + 0.0) / 2)
    assert summary[1]["detection_rate"] == pytest.approx(0.5)
    assert math.isnan(summary[2]["mean_dice"]) and math.isnan(summary[2]["detection_rate"])


def test_per_lesion_dice_component_shared_by_two_lesions() -> None:
    truth = np.array([[1, 1, 0, 1, 1]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1, 0]], dtype=np.uint8)
    # each lesion (2 voxels) overlaps the 3-voxel component in 1 voxel: 2*1 / (2 + 3) = 0.4
    rec = lesion_size_bins(pred, truth)
    np.testing.assert_allclose(rec["dice"], [0.4, 0.4])


def test_default_size_bins_boundaries() -> None:
    # default bins 1-100, 101-1000, > 1000 voxels
    sizes, detected, dice = [100, 101, 1000, 1001], [True, False, True, True], [0.2, 0.0, 0.6, 0.9]
    out = summarise_lesion_bins(sizes, detected, dice, bins=(0, 100, 1000, np.inf))
    assert [s["n_lesions"] for s in out] == [1, 2, 1]
    assert [s["mean_dice"] for s in out] == pytest.approx([0.2, 0.3, 0.9])
    assert [s["detection_rate"] for s in out] == pytest.approx([1.0, 0.5, 1.0])
    assert (out[0]["low"], out[-1]["high"]) == (0.0, math.inf)


def test_dice_by_lesion_attribute() -> None:
    truth = np.zeros((6, 6), dtype=np.uint8)
    pred = np.zeros((6, 6), dtype=np.uint8)
    truth[0:2, 0:2] = 1  # lesion 1 in raster order, predicted exactly -> Dice 1
    pred[0:2, 0:2] = 1
    truth[4:6, 4:6] = 1  # lesion 2, missed -> Dice 0
    labels, n = label_lesions(truth)
    assert n == 2 and labels[0, 0] == 1 and labels[5, 5] == 2
    contrast = [0.05, 0.4]  # lesion 1 low contrast, lesion 2 high
    out = dice_by_lesion_attribute(pred, truth, contrast, bins=(-np.inf, 0.1, np.inf))
    assert [s["mean_dice"] for s in out] == pytest.approx([1.0, 0.0])
    assert [s["n_detected"] for s in out] == [1, 0]
    with pytest.raises(ValueError, match="lesions"):
        dice_by_lesion_attribute(pred, truth, [0.1], bins=(0, 1))


# --------------------------------------------------------------------------- aggregation


def test_aggregate_metrics_per_subset_then_over_subsets() -> None:
    rows = [
        {"id": "s1", "subset": "A", "dice": 0.2, "precision": 0.5},
        {"id": "s2", "subset": "A", "dice": 0.4, "precision": NAN},
        {"id": "s3", "subset": "B", "dice": 0.9, "precision": 1.0},
    ]
    flat = aggregate_metrics(rows)
    assert flat["n_subjects"] == 3
    assert flat["mean"]["dice"] == pytest.approx((0.2 + 0.4 + 0.9) / 3)
    # NaN is ignored: precision over s1 and s3 only
    assert flat["mean"]["precision"] == pytest.approx(0.75)
    assert flat["count"]["precision"] == 2
    assert flat["std"]["precision"] == pytest.approx(0.25)  # population std of {0.5, 1.0}
    assert "id" not in flat["mean"] and "subset" not in flat["mean"]

    grouped = aggregate_metrics(rows, group_key="subset")
    # subset A: dice 0.3, precision 0.5; subset B: dice 0.9, precision 1.0
    assert grouped["groups"]["A"]["mean"]["dice"] == pytest.approx(0.3)
    assert grouped["groups"]["A"]["n_subjects"] == 2
    assert grouped["mean"]["dice"] == pytest.approx((0.3 + 0.9) / 2)
    assert grouped["std"]["dice"] == pytest.approx(0.3)
    assert grouped["mean"]["precision"] == pytest.approx(0.75)
    assert grouped["n_subjects"] == 3 and grouped["count"]["dice"] == 2
    sample_std = aggregate_metrics(rows, group_key="subset", ddof=1)["std"]["dice"]
    assert sample_std == pytest.approx(math.sqrt((0.3**2 + 0.3**2) / 1))
    with pytest.raises(ValueError, match="empty"):
        aggregate_metrics([])
    with pytest.raises(ValueError, match="group key"):
        aggregate_metrics([{"dice": 1.0}], group_key="subset")


# ------------------------------------------------------------------------ MONAI metric


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two batches of (B, 1, 4, 4) masks: 2 items, then 1 item."""
    pred_a, truth_a = _shifted_squares()  # Dice 0.5
    empty = np.zeros((4, 4), dtype=np.uint8)
    one = empty.copy()
    one[3, 3] = 1  # lesion-free truth + a false positive: Dice 0, recall NaN
    b1 = (torch.tensor(np.stack([pred_a, one]))[:, None], torch.tensor(np.stack([truth_a, empty]))[:, None])
    b2 = (torch.tensor(truth_a)[None, None], torch.tensor(truth_a)[None, None])  # Dice 1
    return [b1, b2]


def test_lesion_metrics_two_batches_equal_direct() -> None:
    metric = LesionMetrics(metric_name="dice")
    direct = []
    for y_pred, y in _batches():
        metric(y_pred=y_pred, y=y)
        direct += [segmentation_metrics(p, t) for p, t in zip(y_pred, y)]
    assert metric.aggregate().item() == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    means = metric.aggregate_all()
    # recall: NaN of the lesion-free item ignored -> (0.5 + 1.0) / 2
    assert means["recall"] == pytest.approx(0.75)
    for k in SEGMENTATION_METRIC_KEYS:
        vals = [d[k] for d in direct if not math.isnan(d[k])]
        assert means[k] == pytest.approx(sum(vals) / len(vals)), k
    assert metric.get_buffer().shape == (3, len(SEGMENTATION_METRIC_KEYS))
    metric.reset()
    with pytest.raises(ValueError, match="no buffered"):
        metric.aggregate()


def test_lesion_metrics_in_ignite_engine_and_one_hot() -> None:
    engine = Engine(lambda eng, batch: batch)
    handler = IgniteMetricHandler(
        metric_fn=LesionMetrics(metric_name="dice"), output_transform=lambda out: out, save_details=True
    )
    handler.attach(engine, "dice")
    engine.run(_batches(), max_epochs=1)
    assert engine.state.metrics["dice"] == pytest.approx(0.5)
    # per-item rows are kept for other handlers: 3 items, Dice column 0.5, 0, 1
    details = engine.state.metric_details["dice"]
    assert details[:, SEGMENTATION_METRIC_KEYS.index("dice")].tolist() == pytest.approx([0.5, 0.0, 1.0])
    # one-hot (B, 2, H, W): channel 1 is the lesion
    y_pred, y = _batches()[0]
    onehot = LesionMetrics(metric_name=None)
    onehot(y_pred=torch.cat([1 - y_pred, y_pred], 1), y=torch.cat([1 - y, y], 1))
    assert onehot.aggregate()["dice"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="metric_name"):
        LesionMetrics(metric_name="hausdorff")
    with pytest.raises(ValueError, match="C = 1"):
        LesionMetrics()(y_pred=torch.zeros(1, 3, 4, 4), y=torch.zeros(1, 3, 4, 4))


# --------------------------------------------------------------------------- bad input


def test_segmentation_bad_inputs() -> None:
    good = np.zeros((4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="shapes differ"):
        segmentation_metrics(good, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="binary"):
        segmentation_metrics(good + 0.5, good)
    with pytest.raises(ValueError, match="NaN"):
        segmentation_metrics(np.full((4, 4), np.nan), good)
    with pytest.raises(ValueError, match="empty"):
        segmentation_metrics(np.zeros((0, 4)), np.zeros((0, 4)))
    with pytest.raises(ValueError, match="channel"):
        segmentation_metrics(np.zeros((2, 4, 4, 4)), np.zeros((2, 4, 4, 4)))
    with pytest.raises(ValueError, match="spacing"):
        segmentation_metrics(good, good, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        segmentation_metrics(good, good, spacing=(1.0, -1.0))
    with pytest.raises(ValueError, match="connectivity"):
        segmentation_metrics(good, good, connectivity=6)
    with pytest.raises(ValueError, match="min_overlap"):
        segmentation_metrics(good, good, min_overlap=1.5)
    with pytest.raises(ValueError, match="increasing"):
        lesion_size_bins(good, good, bins=(0, 100, 50))


# ------------------------------------------------------------------------------ calcium


def _ct(shape: tuple[int, int, int]) -> np.ndarray:
    """Air-filled CT in HU (so that the Hounsfield check sees negative values)."""
    return np.full(shape, -1000.0)


def test_agatston_hand_computed() -> None:
    image = _ct((4, 4, 3))
    mask = np.zeros((4, 4, 3), dtype=np.uint8)
    mask[1:3, 1:3, 0:2] = 1
    image[1:3, 1:3, 0:2] = 250.0
    # per slice: 4 pixels x 0.5 x 0.5 mm = 1 mm², peak 250 HU -> weight 2 -> 2; two slices -> 4
    res = agatston_scores(mask, image, spacing=(0.5, 0.5, 3.0))
    assert len(res.lesions) == 1
    les = res.lesions[0]
    assert les.agatston == pytest.approx(4.0)
    assert les.volume_mm3 == pytest.approx(8 * 0.75)  # 8 voxels of 0.5 x 0.5 x 3 mm³
    assert (les.n_voxels, les.n_slices, les.peak_hu) == (8, 2, 250.0)
    assert res.total == pytest.approx(4.0) and res.category == "I" and res.category_name == "minimal"
    # the peak is taken per slice: one 420 HU pixel on slice 1 -> 1 x 2 + 1 x 4 = 6
    image[1, 1, 1] = 420.0
    res = agatston_scores(mask, image, spacing=(0.5, 0.5, 3.0))
    assert res.total == pytest.approx(6.0) and res.lesions[0].peak_hu == 420.0
    # 1.5 mm slices scaled to 3 mm: (1 x 2 + 1 x 4) x 1.5 / 3 = 3
    scaled = agatston_scores(mask, image, spacing=(0.5, 0.5, 1.5), scale_by_thickness=True)
    assert scaled.total == pytest.approx(3.0)
    # slices along axis 0 instead: the cube is 2 slices of 2 x 2 pixels of 0.5 x 3 = 1.5 mm² each
    axial0 = agatston_scores(mask, image, spacing=(3.0, 0.5, 3.0), slice_axis=0)
    # slice 1: pixels (1,1,0)=250, (1,1,1)=420, (1,2,0)=250, (1,2,1)=250 -> 4 x 1.5 = 6 mm² x 4 = 24
    # slice 2: four pixels at 250 -> 6 mm² x 2 = 12
    assert axial0.total == pytest.approx(36.0)


def test_agatston_min_area_and_empty() -> None:
    image = _ct((3, 3, 1))
    mask = np.zeros((3, 3, 1), dtype=np.uint8)
    mask[1, 1, 0] = 1
    image[1, 1, 0] = 500.0
    # one 0.5 x 0.5 mm pixel = 0.25 mm² < 1 mm² -> not counted; with a 0.25 mm² minimum: 0.25 x 4
    assert agatston_scores(mask, image, spacing=(0.5, 0.5, 3.0)).total == 0.0
    low_min = agatston_scores(mask, image, spacing=(0.5, 0.5, 3.0), min_area_mm2=0.25)
    assert low_min.total == pytest.approx(1.0)
    empty = agatston_scores(np.zeros_like(mask), image, spacing=(0.5, 0.5, 3.0))
    assert (empty.total, empty.category, empty.lesions) == (0.0, "0", ())


def test_agatston_weights_and_categories() -> None:
    peaks = [129.9, 130, 199, 200, 299.5, 300, 399, 400, 1500]
    np.testing.assert_array_equal(agatston_density_weight(np.array(peaks)), [0, 1, 1, 2, 2, 3, 3, 4, 4])
    cases = {0: "0", 0.5: "I", 10: "I", 10.5: "II", 11: "II", 100: "II", 101: "III", 400: "III", 401: "IV"}
    for total, code in cases.items():
        assert agatston_category(total) == code, total
    assert set(AGATSTON_CATEGORY_NAMES) == {"0", "I", "II", "III", "IV"}
    with pytest.raises(ValueError):
        agatston_category(-1.0)
    with pytest.raises(ValueError):
        agatston_category(NAN)


def test_calcium_threshold_and_six_connectivity() -> None:
    image = _ct((4, 4, 2))
    pred = np.zeros((4, 4, 2), dtype=np.uint8)
    pred[0, 0, 0] = pred[1, 1, 0] = 1  # touch only diagonally (in-plane)
    image[0, 0, 0] = 130.0  # exactly the threshold: kept
    image[1, 1, 0] = 300.0
    pred[3, 3, 1] = 1
    image[3, 3, 1] = 129.0  # below the threshold: dropped
    cand = calcium_candidates(pred, image)
    expected = np.zeros_like(cand)
    expected[0, 0, 0] = expected[1, 1, 0] = True
    np.testing.assert_array_equal(cand, expected)
    res = agatston_scores(pred, image, spacing=(1.0, 1.0, 3.0))
    assert len(res.lesions) == 2  # 6-connectivity: diagonal voxels are two lesions
    assert [les.agatston for les in res.lesions] == pytest.approx([1.0, 3.0])  # 1 mm² x weight 1 and 3
    assert [les.peak_hu for les in res.lesions] == [130.0, 300.0]
    assert len(agatston_scores(pred, image, spacing=(1.0, 1.0, 3.0), connectivity=26).lesions) == 1
    # min_voxels drops the two 1-voxel lesions of 6-connectivity, not the 2-voxel one of 26
    assert not calcium_candidates(pred, image, min_voxels=2).any()
    assert calcium_candidates(pred, image, min_voxels=2, connectivity=26).sum() == 2


def _orcascore_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (6, 6, 2) CT with two reference lesions and a prediction with several kinds of error."""
    image = _ct((6, 6, 2))
    truth = np.zeros((6, 6, 2), dtype=np.uint8)
    pred = np.zeros((6, 6, 2), dtype=np.uint8)
    truth[1, 1, 0:2] = 1  # R1: 2 voxels over 2 slices, 300 HU
    image[1, 1, 0:2] = 300.0
    truth[4, 4:6, 0] = 1  # R2: 2 voxels on slice 0, 150 HU, missed
    image[4, 4:6, 0] = 150.0
    pred[1, 1, 0:2] = 1  # R1 found ...
    pred[1, 2, 0] = 1  # ... with one extra voxel (200 HU) in the same lesion
    image[1, 2, 0] = 200.0
    pred[4, 1, 1] = 1  # a separate false-positive lesion, 450 HU
    image[4, 1, 1] = 450.0
    pred[3, 3, 1] = 1  # a predicted voxel below 130 HU (removed by post-processing)
    image[3, 3, 1] = 100.0
    return pred, truth, image


def test_orcascore_metrics_constructed() -> None:
    pred, truth, image = _orcascore_case()
    got = orcascore_metrics(pred, truth, image, spacing=(1.0, 1.0, 3.0))
    # post-processed: |P| = 4 (R1 x2, extra, FP lesion), |R| = 4, overlap 2
    # reference Agatston: R1 1 mm² x 3 on 2 slices = 6, R2 2 mm² x 1 = 2 -> 8 (I)
    # predicted: R1 + extra slice 0 = 2 mm² x 3 (peak 300) = 6, slice 1 = 1 x 3 = 3, FP 1 x 4 = 4 -> 13 (II)
    assert_metrics(
        got,
        {
            "f1_vol": 2 * 2 / (4 + 4),
            "sens_vol": 2 / 4,
            "ppv_vol": 2 / 4,
            "vose": 2 / 4,
            "sens_lesion": 1 / 2,  # R1 of {R1, R2}
            "ppv_lesion": 1 / 2,  # {R1 + extra} of {R1 + extra, FP}
            "n_ref_lesions": 2,
            "n_pred_lesions": 2,
            "volume_pred_mm3": 4 * 3.0,
            "volume_ref_mm3": 4 * 3.0,
            "agatston_ref": 8.0,
            "agatston_pred": 13.0,
            "category_ref": 1,
            "category_pred": 2,
        },
    )
    raw = orcascore_metrics(torch.from_numpy(pred), truth, torch.from_numpy(image), (1.0, 1.0, 3.0), post_process=False)
    # without post-processing the 100 HU voxel stays: |P| = 5, a third predicted lesion
    assert_metrics(
        raw,
        {
            "f1_vol": 2 * 2 / (5 + 4),
            "sens_vol": 2 / 4,
            "ppv_vol": 2 / 5,
            "vose": 3 / 4,
            "sens_lesion": 1 / 2,
            "ppv_lesion": 1 / 3,
            "n_pred_lesions": 3,
            "agatston_pred": 13.0,  # Agatston never counts voxels below 130 HU
        },
    )
    none = orcascore_metrics(np.zeros_like(pred), np.zeros_like(truth), image, (1.0, 1.0, 3.0))
    assert_metrics(none, {"f1_vol": 1.0, "sens_lesion": 1.0, "ppv_lesion": 1.0, "vose": 0.0, "category_ref": 0})


def test_calcium_bad_inputs() -> None:
    pred, truth, image = _orcascore_case()
    sp = (1.0, 1.0, 3.0)
    with pytest.raises(ValueError, match="Hounsfield"):
        agatston_scores(truth, (image > 0).astype(np.float32), sp)  # a [0, 1] image
    with pytest.raises(ValueError, match="Hounsfield"):
        calcium_candidates(pred, np.clip(image, 0, 255))  # an 8-bit-like image
    small = np.clip(image, 0, 255)
    assert calcium_candidates(pred, small, check_hu=False).sum() == 4  # the 100 HU voxel is dropped
    with pytest.raises(ValueError, match="spacing"):
        orcascore_metrics(pred, truth, image, None)
    with pytest.raises(ValueError, match="spacing"):
        agatston_scores(truth, image, (1.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        orcascore_metrics(pred, truth[:, :, :1], image, sp)
    with pytest.raises(ValueError, match="shape"):
        agatston_scores(truth, image[:, :, :1], sp)
    with pytest.raises(ValueError, match="3D"):
        agatston_scores(truth[:, :, 0], image[:, :, 0], sp)
    with pytest.raises(ValueError, match="NaN"):
        agatston_scores(truth, np.where(truth > 0, np.nan, image), sp)
    with pytest.raises(ValueError, match="binary"):
        calcium_candidates(pred * 2, image)
    with pytest.raises(ValueError, match="slice_axis"):
        agatston_scores(truth, image, sp, slice_axis=3)
