"""Split views: the search view holds no test index and its features refuse them."""

from __future__ import annotations

import numpy as np
import pytest

from harness.data.base import SplitLeakError
from harness.data.splits import final_view, search_view


def test_search_view_holds_no_test_index(tiny_synthetic):
    ds = tiny_synthetic
    view = search_view(ds)
    test = np.concatenate([ds.test_seen_loc, ds.test_unseen_loc])
    assert not np.intersect1d(view.all_indices(), test).size
    assert np.isin(view.all_indices(), ds.trainval_loc).all()
    with pytest.raises(SplitLeakError):
        view.features.read(ds.test_unseen_loc[:3])
    with pytest.raises(SplitLeakError):
        view.features.read(ds.test_seen_loc[:1])


def test_search_view_classes(tiny_synthetic):
    ds = tiny_synthetic
    view = search_view(ds)
    assert np.array_equal(np.sort(view.class_ids[view.seen_classes]), ds.train_classes)
    assert np.array_equal(np.sort(view.class_ids[view.unseen_classes]), np.sort(ds.val_classes))
    assert not np.intersect1d(view.fit_indices, view.eval_seen_indices).size  # held-out images
    assert set(np.unique(view.eval_unseen_labels)) == set(view.unseen_classes.tolist())
    assert not np.isin(view.class_ids, ds.unseen_classes).any()  # test classes are not even named


def test_final_view_is_trainval_vs_test(tiny_synthetic):
    ds = tiny_synthetic
    view = final_view(ds)
    assert np.array_equal(view.fit_indices, np.sort(ds.trainval_loc))
    assert np.array_equal(view.eval_unseen_indices, np.sort(ds.test_unseen_loc))
    assert np.array_equal(view.class_ids[view.fit_labels], ds.labels[view.fit_indices])
