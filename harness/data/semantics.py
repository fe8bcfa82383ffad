"""Attribute semantics: the entropy ranking of attributes (paper, Figure 4 left).

Word-vector files (GloVe / word2vec) are read by harness.data.wordvectors.
"""

from __future__ import annotations

import numpy as np


def attribute_entropy(class_attributes: np.ndarray) -> np.ndarray:
    """Entropy of each attribute's distribution over classes, p_c = z^c_a / sum_c' z^c'_a.

    Low entropy means the attribute is concentrated on few classes, i.e. discriminative.
    Attributes that are zero for every class get +inf (they say nothing).
    """
    z = np.clip(np.asarray(class_attributes, dtype=np.float64), 0.0, None)  # [C, A]
    totals = z.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = z / totals
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    entropy = terms.sum(axis=0)
    entropy[totals <= 0] = np.inf
    return entropy


def rank_attributes(class_attributes: np.ndarray) -> np.ndarray:
    """Attribute indices from most to least discriminative (ascending entropy, stable)."""
    return np.argsort(attribute_entropy(class_attributes), kind="stable")


def select_attributes(class_attributes: np.ndarray, k: int | None) -> np.ndarray:
    """The k lowest-entropy attributes in their original order; all of them when k is None."""
    num = class_attributes.shape[1]
    if k is None or k >= num:
        return np.arange(num)
    if k < 1:
        raise ValueError(f"num_attributes must be at least 1, got {k}")
    return np.sort(rank_attributes(class_attributes)[:k])
