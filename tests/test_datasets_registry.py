"""The dataset registry: its shape (imports one way, short functions, a light index), what it
knows about each real dataset, and every registered synthetic dataset at a tiny size."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.data import registry
from harness.data.registry import list_datasets, load_dataset, missing_data_message, needs_files
from harness.data.splits import final_view, search_view

DATA = Path(registry.__file__).parent
REAL = ["awa2", "cub", "cub-ss", "deepfashion", "sun"]
SYNTHETIC = [name for name in list_datasets() if not needs_files(name)]
TINY = 6  # images per class: two test-seen, four trainval, of which the search view holds one out


def _modules() -> dict[str, ast.Module]:
    return {f"harness.data.{p.stem}": ast.parse(p.read_text(), str(p))
            for p in sorted(DATA.glob("*.py")) if p.stem != "__init__"}


def _imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """The harness.data modules a module imports, at any depth (function-level imports count)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found & modules


def test_harness_data_imports_point_one_way():
    trees = _modules()
    graph = {name: _imports(tree, set(trees)) for name, tree in trees.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = path[path.index(name):] + [name]
            pytest.fail(f"import cycle in harness/data: {' -> '.join(cycle)}")
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, path + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    # the readers know nothing of the registry or of the module that joins them with features
    for reader in ("xlsa17", "deepfashion", "files", "synthetic"):
        assert not graph[f"harness.data.{reader}"] & {"harness.data.registry", "harness.data.catalog",
                                                      "harness.data.adapters"}


def test_listing_the_datasets_imports_neither_torch_nor_ray():
    code = ("import sys, harness.data.registry as r; names = r.list_datasets(); [r.describe(n) for n in names]; "
            "print(sorted(m for m in ('torch', 'ray', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(registry.__file__).parents[2])
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ---------------------------------------------------------------- what the registry knows


def test_real_datasets_name_their_cache_command_and_stand_in():
    assert set(REAL) <= set(list_datasets())
    assert all(needs_files(n) for n in REAL) and "synthetic" in SYNTHETIC
    extract = "python -m harness.features extract --dataset {} --data-root DIR"
    assert {n: registry.prepare_command(n) for n in REAL} == {
        "cub": extract.format("cub"), "cub-ss": extract.format("cub"),  # cub-ss reads cub's cache
        "sun": extract.format("sun"), "awa2": extract.format("awa2"), "deepfashion": extract.format("deepfashion")}
    assert {n: registry.stand_in(n) for n in REAL} == {
        "cub": "synthetic-cub", "cub-ss": "synthetic-cub-ss", "sun": "synthetic-sun", "awa2": "synthetic-awa2",
        "deepfashion": "synthetic-deepfashion"}
    for name in SYNTHETIC + ["no-such-dataset"]:
        assert registry.prepare_command(name) is None and registry.stand_in(name) is None
    for stand_in in {registry.stand_in(n) for n in REAL}:
        assert stand_in in SYNTHETIC


def test_missing_data_message_for_one_dataset_reads_as_before():
    assert missing_data_message(["cub"], "no\nfeature cache") == (
        "--dataset cub: data or feature cache not available (no feature cache); prepare it with "
        "`python -m harness.features extract --dataset cub --data-root DIR` (add --cache-dir DIR to choose where), "
        "or try the synthetic stand-in `--dataset synthetic-cub`")


def test_missing_data_message_names_every_dataset_on_one_line():
    text = missing_data_message(["cub", "cub-ss", "deepfashion"],
                                {"cub": "no cache", "cub-ss": "no cache", "deepfashion": "--data-root: missing"})
    assert "\n" not in text
    assert text.startswith("--dataset cub,cub-ss,deepfashion: data or feature cache not available (cub: no cache; "
                           "cub-ss: no cache; deepfashion: --data-root: missing)")
    assert "`python -m harness.features extract --dataset cub --data-root DIR` (cub, cub-ss)" in text
    assert "`python -m harness.features extract --dataset deepfashion --data-root DIR` (deepfashion)" in text
    assert ("`--dataset synthetic-cub` (cub), `--dataset synthetic-cub-ss` (cub-ss), "
            "`--dataset synthetic-deepfashion` (deepfashion)") in text
    same = missing_data_message(["sun", "awa2"], "no cache")
    assert "not available (no cache);" in same
    with pytest.raises(ValueError, match="synthetic"):
        missing_data_message(["cub", "synthetic"], "no cache")


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(registry.UnknownDatasetError, match="expected one of .*synthetic"):
        load_dataset("no-such-dataset")


# ---------------------------------------------------------------- every synthetic dataset, tiny


@pytest.fixture(scope="module", params=SYNTHETIC)
def tiny(request):
    return request.param, load_dataset(request.param, data_seed=0, images_per_class=TINY)


def test_tiny_synthetic_dataset_loads_with_consistent_splits(tiny):
    name, ds = tiny
    ds.check()
    assert np.bincount(ds.labels).tolist() == [TINY] * ds.num_classes
    locs = [ds.trainval_loc, ds.test_seen_loc, ds.test_unseen_loc]
    assert sum(len(loc) for loc in locs) == len(ds.labels)  # every image in exactly one split
    assert len(np.unique(np.concatenate(locs))) == len(ds.labels)
    seen, unseen = ds.seen_classes, ds.unseen_classes
    assert not np.intersect1d(seen, unseen).size
    assert np.array_equal(np.union1d(seen, unseen), np.arange(ds.num_classes))
    assert np.array_equal(np.unique(ds.labels[ds.test_seen_loc]), seen)
    assert np.isin(ds.val_classes, seen).all() and 0 < len(ds.val_classes) < len(seen)


def test_tiny_synthetic_dataset_shapes_and_values(tiny):
    name, ds = tiny
    num_attributes = len(ds.attribute_names)
    assert ds.class_attributes.shape == (ds.num_classes, num_attributes)
    assert ds.attribute_vectors.shape[0] == num_attributes
    maps = ds.features.read(np.arange(len(ds.labels)))
    assert maps.shape == (len(ds.labels), ds.features.feature_dim, ds.features.num_regions)
    for array in (maps, ds.class_attributes, ds.attribute_vectors):
        assert np.isfinite(array).all()


def test_tiny_synthetic_dataset_builds_both_views(tiny):
    name, ds = tiny
    search, final = search_view(ds, seed=0), final_view(ds)
    assert not np.isin(search.all_indices(), np.concatenate([ds.test_seen_loc, ds.test_unseen_loc])).any()
    assert np.array_equal(np.sort(search.class_ids[search.unseen_classes]), np.sort(ds.val_classes))
    assert len(search.fit_indices) and len(search.eval_seen_indices) and len(search.eval_unseen_indices)
    assert np.array_equal(np.sort(final.fit_indices), np.sort(ds.trainval_loc))
    assert len(final.eval_unseen_indices) == len(ds.test_unseen_loc)
    for view in (search, final):
        assert view.features.allows(view.all_indices())


@pytest.mark.parametrize("name", SYNTHETIC)
def test_tiny_synthetic_dataset_is_deterministic_by_seed(name):
    a, b, c = (registry.ENTRIES[name].loader(data_seed=seed, images_per_class=TINY) for seed in (1, 1, 2))
    idx = np.arange(len(a.labels))
    assert np.array_equal(a.features.read(idx), b.features.read(idx))
    assert np.array_equal(a.trainval_loc, b.trainval_loc) and np.array_equal(a.val_classes, b.val_classes)
    assert not np.array_equal(a.features.read(idx), c.features.read(idx))


def test_registered_synthetic_presets_keep_their_default_size():
    assert len(load_dataset("synthetic").labels) == 32 * 40
    assert len(load_dataset("synthetic-tiny").labels) == 32 * 10
    assert len(load_dataset("synthetic", images_per_class=TINY).labels) == 32 * TINY
