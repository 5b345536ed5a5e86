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
"""Ranking metrics: how well a score separates lesion from non-lesion samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["auroc"]


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """
    Exact area under the ROC curve by the rank-sum (Mann-Whitney U) formula.

    ``AUROC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with ``R_pos`` the sum of the ranks
    (1-based, ascending scores) of the positives; tied scores get the average of their ranks, so a
    tie between a positive and a negative counts 1/2 (the trapezoidal ROC area).

    Args:
        scores: one score per sample, higher = more likely positive; finite.
        labels: one label per sample, nonzero/True = positive.

    Returns:
        the AUROC in [0, 1].

    Raises:
        ValueError: shapes differ, non-finite scores, or only one class present.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same number of elements, got {s.size} and {y.size}.")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite.")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes, got {n_pos} positives and {n_neg} negatives.")
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    # average 1-based rank of every group of tied scores
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    group_ranks = first + (counts + 1) / 2.0
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(group_ranks, counts)
    rank_sum = float(ranks[y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (float(n_pos) * float(n_neg))
