"""Importers: the authors' HDF5 files (flat and DeepFashion layouts) and xlsa17 res101.mat."""

from __future__ import annotations

import h5py
import lmdb
import numpy as np
import pytest
import scipy.io

from harness.features.__main__ import run as features_cli
from harness.features.info import verify
from harness.features.store import find_cache, item_key, open_store

F = 2048  # the authors' feature dimension; few images keep the files small


def relu_maps(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((n, F, 7, 7)), 0).astype(np.float32)


def write_flat(path, maps: np.ndarray) -> None:
    """The CUB/SUN/AWA2 file as extract_feature_map_ResNet_101_<DS>.py writes it."""
    n = len(maps)
    with h5py.File(path, "w") as fh:
        fh.create_dataset("feature_map", data=maps, compression="gzip")
        fh.create_dataset("labels", data=np.arange(n) % 3, compression="gzip")
        for key, loc in (("trainval_loc", [0, 1]), ("test_seen_loc", [2]), ("test_unseen_loc", list(range(3, n)))):
            fh.create_dataset(key, data=np.array(loc, dtype=np.uint16), compression="gzip")
        fh.create_dataset("att", data=np.random.default_rng(0).random((3, 5)), compression="gzip")
        fh.create_dataset("original_att", data=np.random.default_rng(1).random((3, 5)), compression="gzip")
        fh.create_dataset("w2v_att", data=np.random.default_rng(2).random((5, 300)), compression="gzip")


def test_flat_layout_imports_in_image_order_and_resumes(tmp_path, capsys):
    maps = relu_maps(7, 0)
    source = tmp_path / "feature_map_ResNet_101_CUB.hdf5"
    write_flat(source, maps)
    cache = tmp_path / "cache"
    assert features_cli(["import-hdf5", "--dataset", "cub", "--file", str(source), "--cache-dir", str(cache)]) == 0
    assert "7 items imported, 0 already there" in capsys.readouterr().out
    reader = find_cache(cache, "cub", {"count": 7})
    meta = reader.metadata
    assert meta["backbone"] == "resnet101" and meta["weights"].startswith("imported:")
    assert meta["shape"] == [F, 7, 7] and meta["source"] == str(source.resolve())
    np.testing.assert_allclose(reader.read(np.array([6, 0, 3])), maps[[6, 0, 3]].reshape(3, F, 49),
                               rtol=1e-3, atol=1e-3)
    folder = reader.folder
    reader.close()
    env = lmdb.open(str(folder / "shard-0-of-1"), subdir=True)  # as if an import had been killed
    with env.begin(write=True) as txn:
        txn.delete(item_key(2))
        txn.delete(item_key(5))
    env.close()
    assert features_cli(["import-hdf5", "--dataset", "cub", "--file", str(source), "--cache-dir", str(cache)]) == 0
    assert "2 items imported, 5 already there" in capsys.readouterr().out
    reader = open_store(folder)
    assert verify(reader, progress=False) == []
    np.testing.assert_allclose(reader.read(np.arange(7)), maps.reshape(7, F, 49), rtol=1e-3, atol=1e-3)


def write_deepfashion(path, maps: np.ndarray, imgs: list[str], train: dict[int, list[int]],
                      test_seen: list[int], test_unseen: list[int]) -> None:
    """The per-category layout of extract_feature_map_ResNet_101_DeepFashion.py (rows = imgs indices)."""
    text = h5py.string_dtype()
    with h5py.File(path, "w") as fh:
        for label, rows in train.items():
            fh.create_dataset(f"feature_map_train/{label}", data=maps[rows], compression="gzip")
            fh.create_dataset(f"label_train/{label}", data=np.full(len(rows), label))
            fh.create_dataset(f"img_train/{label}", data=[imgs[r] for r in rows], dtype=text)
        for split, rows in (("test_seen", test_seen), ("test_unseen", test_unseen)):
            fh.create_dataset(f"feature_map_{split}", data=maps[rows], compression="gzip")
            fh.create_dataset(f"label_{split}", data=np.zeros(len(rows), dtype=np.int64))
            fh.create_dataset(f"img_{split}", data=[imgs[r] for r in rows], dtype=text)
        fh.create_dataset("imgs", data=imgs, dtype=text)
        fh.create_dataset("labels", data=np.zeros(len(imgs), dtype=np.int64))
        fh.create_dataset("att", data=np.zeros((50, 1000)))


def test_deepfashion_layout_maps_every_image_to_its_row_in_imgs(tmp_path):
    n = 9
    maps = relu_maps(n, 1)
    imgs = [f"img/Sheer_Pleated-Front_Blouse/img_{i:08d}.jpg" for i in range(n)]
    source = tmp_path / "feature_map_ResNet_101_DeepFashion_sep_seen_samples.hdf5"
    write_deepfashion(source, maps, imgs, train={3: [4, 0], 11: [7, 2, 8]}, test_seen=[5, 1], test_unseen=[6, 3])
    cache = tmp_path / "cache"
    assert features_cli(["import-hdf5", "--dataset", "deepfashion", "--file", str(source),
                         "--cache-dir", str(cache), "--dtype", "float32"]) == 0
    reader = find_cache(cache, "deepfashion", {"dtype": "float32", "count": n})
    np.testing.assert_array_equal(reader.read(np.arange(n)), maps.reshape(n, F, 49))  # float32: exact
    assert verify(reader, progress=False) == []


def test_deepfashion_layout_with_an_image_without_features_is_refused(tmp_path, capsys):
    maps = relu_maps(4, 2)
    imgs = [f"img/x/img_{i}.jpg" for i in range(4)]
    source = tmp_path / "df.hdf5"
    write_deepfashion(source, maps, imgs, train={1: [0]}, test_seen=[1], test_unseen=[2])
    assert features_cli(["import-hdf5", "--dataset", "deepfashion", "--file", str(source),
                         "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "c").exists()  # checked before anything is written
    assert "1 images of 'imgs' (e.g. 'img/x/img_3.jpg') have no feature map" in err


def test_res101_mat_imports_holistic_vectors(tmp_path):
    n = 6
    rng = np.random.default_rng(3)
    features = rng.random((F, n)).astype(np.float32)  # [2048 x N], as xlsa17 stores it
    source = tmp_path / "res101.mat"
    image_files = np.array([[f"/BS/xian/CUB/images/{i:03d}.jpg"] for i in range(n)], dtype=object)
    scipy.io.savemat(source, {"features": features, "labels": np.arange(1, n + 1)[:, None],
                              "image_files": image_files})
    cache = tmp_path / "cache"
    assert features_cli(["import-res101", "--dataset", "cub", "--file", str(source), "--cache-dir", str(cache)]) == 0
    reader = find_cache(cache, "cub", {"backbone": "resnet101-holistic"})
    assert (reader.feature_dim, reader.num_regions, len(reader)) == (F, 1, n)
    assert reader.metadata["shape"] == [F, 1, 1]
    np.testing.assert_allclose(reader.read(np.array([5, 1]))[:, :, 0], features[:, [5, 1]].T, rtol=1e-3)


@pytest.mark.parametrize("command", ["import-hdf5", "import-res101"])
def test_files_that_are_not_the_expected_kind_fail_in_one_line(tmp_path, capsys, command):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    other = tmp_path / "other.hdf5"
    with h5py.File(other, "w") as fh:
        fh.create_dataset("something", data=np.zeros(3))
    for path in (junk, other, tmp_path / "absent.hdf5"):
        assert features_cli([command, "--dataset", "cub", "--file", str(path), "--cache-dir", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err.strip()
        assert str(path) in err and "\n" not in err
    assert not (tmp_path / "c").exists()
