"""The sealed protocol: what a search trial is given holds no test index and cannot read one."""

from __future__ import annotations

import numpy as np
import pytest

from harness.config import TrainConfig
from harness.data.base import SplitLeakError
from harness.data.splits import final_view
from harness.search.trial import check_sealed, forbidden_indices, sealed_dataset, trial_dataset
from harness.trainer import fit, resolve_dataset


@pytest.fixture(scope="module")
def dataset():
    return resolve_dataset(TrainConfig(dataset="synthetic"))


def test_sealed_dataset_holds_no_test_index_and_refuses_test_images(dataset):
    test = forbidden_indices(dataset)
    assert test.size > 0
    sealed = sealed_dataset(dataset)
    assert sealed.test_seen_loc.size == 0 and sealed.test_unseen_loc.size == 0
    assert not np.isin(test, sealed.trainval_loc).any()
    with pytest.raises(SplitLeakError):
        sealed.features.read(test[:3])
    # every image the search view uses stays readable
    assert sealed.features.read(sealed.trainval_loc[:3]).shape[0] == 3


def test_a_trial_fit_uses_views_without_test_indices(dataset):
    config = TrainConfig(dataset="synthetic", stage="search", epochs=1, num_threads=1)
    sealed, test = trial_dataset(config)
    seen_reports = []
    result = fit(config, sealed, reporter=seen_reports.append)
    view = result.view
    for indices in (view.fit_indices, view.eval_seen_indices, view.eval_unseen_indices):
        assert indices.size > 0
        assert not np.isin(indices, test).any()
    # validation "unseen" classes are validation classes, never the dataset's unseen classes
    names = [sealed.class_names[c] for c in view.class_ids]
    assert {names[c] for c in view.unseen_classes} == {dataset.class_names[c] for c in dataset.val_classes}
    assert not set(names) & {dataset.class_names[c] for c in dataset.unseen_classes}
    check_sealed(view, test)
    assert seen_reports and "val_H" in seen_reports[0]


def test_check_sealed_catches_a_view_with_test_images(dataset):
    with pytest.raises(SplitLeakError, match="test images"):
        check_sealed(final_view(dataset), forbidden_indices(dataset))


def test_sealed_labels_outside_trainval_are_minus_one_and_test_unseen_classes_are_gone(dataset):
    sealed = sealed_dataset(dataset)
    outside = np.setdiff1d(np.arange(len(dataset.labels)), dataset.trainval_loc)
    assert outside.size and (sealed.labels[outside] == -1).all()
    assert (sealed.labels[dataset.trainval_loc] >= 0).all()
    unseen_names = {dataset.class_names[c] for c in dataset.unseen_classes}
    assert unseen_names and not unseen_names & set(sealed.class_names)
    assert len(sealed.class_names) == len(dataset.seen_classes) == sealed.class_attributes.shape[0]
    # per-image annotations of images outside trainval are blank
    assert not sealed.annotations["shown_attributes"][outside].any()
    assert (sealed.annotations["part_regions"][outside] == -1).all()
    sealed.check()


def test_the_sealed_search_view_is_the_search_view(dataset):
    from harness.data.splits import search_view

    plain, sealed = search_view(dataset), search_view(sealed_dataset(dataset))
    for name in ("fit_indices", "fit_labels", "eval_seen_indices", "eval_seen_labels", "eval_unseen_indices",
                 "eval_unseen_labels", "class_attributes", "seen_classes", "unseen_classes"):
        assert np.array_equal(getattr(plain, name), getattr(sealed, name)), name
