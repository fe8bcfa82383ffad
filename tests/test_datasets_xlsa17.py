"""cub / awa2 / sun / cub-ss from tiny real-format xlsa17 fixtures written in temporary folders.

The fixtures follow the real files: att_splits.mat and res101.mat written with scipy (MATLAB cell
arrays of strings, [A, C] att, 1-based uint16 locs, 1-based labels, absolute image paths of the
xlsa17 authors' machine), the class lists beside them, and the distributed image folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from harness.data.adapters import build_dataset, load, read_dataset_files
from harness.data.base import InMemoryFeatures
from harness.data.registry import list_datasets, load_dataset
from harness.data.splits import final_view, search_view
from harness.errors import InputError

REPO = Path(__file__).resolve().parents[1]

# (class name in allclasses_names, folder path under the image dir); allclasses order on purpose
# not sorted, as in the real CUB file (its first class is 002.Laysan_Albatross).
CLASSES = {
    "cub": [("002.Laysan_Albatross", "002.Laysan_Albatross"), ("005.Crested_Auklet", "005.Crested_Auklet"),
            ("010.Red_winged_Blackbird", "010.Red_winged_Blackbird"), ("013.Bobolink", "013.Bobolink"),
            ("001.Black_footed_Albatross", "001.Black_footed_Albatross"), ("004.Groove_billed_Ani", "004.Groove_billed_Ani")],
    "awa2": [("antelope", "antelope"), ("grizzly+bear", "grizzly+bear"), ("killer+whale", "killer+whale"),
             ("beaver", "beaver"), ("dalmatian", "dalmatian"), ("persian+cat", "persian+cat")],
    "sun": [("abbey", "a/abbey"), ("airport_airport", "a/airport/airport"),
            ("apartment_building_outdoor", "a/apartment_building/outdoor"), ("bakery_shop", "b/bakery/shop"),
            ("beach", "b/beach"), ("temple_south_asia", "t/temple/south_asia")],
}
PREFIX = {
    "cub": "/BS/Deep_Fragments/work/MSc/CUB_200_2011/CUB_200_2011/images",
    "awa2": "/BS/xian/work/data/Animals_with_Attributes2//JPEGImages",
    "sun": "/BS/Deep_Fragments/work/MSc/data/SUN/images",
}
IMAGE_DIR = {"cub": "CUB_200_2011/images", "awa2": "Animals_with_Attributes2/JPEGImages", "sun": "SUN/images"}
FOLDER = {"cub": "CUB", "awa2": "AWA2", "sun": "SUN"}
ATTRIBUTES = {
    "cub": ["has_bill_shape::curved_(up_or_down)", "has_wing_color::blue", "has_upperparts_color::grey",
            "has_size::large_(16_-_32_in)", "has_eye_color::black"],
    "awa2": ["black", "toughskin", "newworld", "stripes", "xyzzyq"],
    "sun": ["sailing/ boating", "rock/stone", "man-made", "far-away horizon", "snow"],
}
VOCAB = ["bill", "shape", "curved", "up", "or", "down", "wing", "color", "blue", "upper", "parts", "grey", "size",
         "large", "eye", "black", "tough", "skin", "new", "world", "stripes", "sailing", "boating", "rock", "stone",
         "man", "made", "far", "away", "horizon", "snow", "the", "of"]
NUM_SEEN = 4
TRAINVAL, TEST_SEEN, UNSEEN = 2, 1, 2  # images per class


def cell(strings: list[str]) -> np.ndarray:
    out = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        out[i, 0] = s
    return out


def write_jpeg(path: Path, seed: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, size=(40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


@dataclass
class Fixture:
    root: Path
    kind: str
    labels: np.ndarray  # 0-based, image order
    rel_paths: list[str]
    original_att: np.ndarray  # [A, C]
    splits: dict = field(default_factory=dict)  # what was written to att_splits.mat

    @property
    def split_path(self) -> Path:
        return self.root / "xlsa17" / "data" / FOLDER[self.kind] / "att_splits.mat"

    @property
    def res_path(self) -> Path:
        return self.root / "xlsa17" / "data" / FOLDER[self.kind] / "res101.mat"

    def rewrite_splits(self, drop: tuple[str, ...] = (), **replace) -> None:
        content = {k: v for k, v in self.splits.items() if k not in drop}
        content.update(replace)
        scipy.io.savemat(self.split_path, content)

    def rewrite_res(self, image_files: list[str] | None = None, labels: np.ndarray | None = None) -> None:
        files = image_files if image_files is not None else [f"{PREFIX[self.kind]}/{p}" for p in self.rel_paths]
        labels = labels if labels is not None else self.labels + 1
        scipy.io.savemat(self.res_path, {"features": np.zeros((4, len(files))), "image_files": cell(files),
                                         "labels": np.asarray(labels, dtype=np.float64).reshape(-1, 1)})


def make_xlsa17(root: Path, kind: str = "cub", images: bool = False, train_val_loc: bool = False,
                class_lists: bool = True, names_file: bool = True) -> Fixture:
    """A 6-class dataset: classes 0-3 seen (2 trainval + 1 test-seen image each), 4-5 unseen (2 each)."""
    classes = CLASSES[kind]
    entries = []  # (folder, file, label, split)
    for label, (_, folder) in enumerate(classes):
        splits = ["trainval"] * TRAINVAL + ["test_seen"] * TEST_SEEN if label < NUM_SEEN else ["test_unseen"] * UNSEEN
        for k, split in enumerate(splits):
            stem = folder.split("/")[-1 if kind != "sun" else 1]
            entries.append((folder, f"{stem}_{k + 1:04d}.jpg", label, split))
    entries.sort(key=lambda e: (e[0], e[1]))  # res101 image order: the folders' listing order
    labels = np.array([e[2] for e in entries], dtype=np.int64)
    rel_paths = [f"{e[0]}/{e[1]}" for e in entries]
    loc = {s: np.array([i + 1 for i, e in enumerate(entries) if e[3] == s], dtype=np.uint16).reshape(-1, 1)
           for s in ("trainval", "test_seen", "test_unseen")}
    rng = np.random.default_rng(7)
    num_attr = len(ATTRIBUTES[kind])
    original = rng.uniform(0, 100 if kind != "sun" else 1, size=(num_attr, len(classes)))
    if kind == "awa2":
        original[0, 0] = -1.0  # AWA2's continuous predicate matrix marks missing values with -1
    att = original / np.linalg.norm(original, axis=0)
    folder = root / "xlsa17" / "data" / FOLDER[kind]
    folder.mkdir(parents=True)
    splits = {"allclasses_names": cell([c for c, _ in classes]), "att": att, "original_att": original,
              "trainval_loc": loc["trainval"], "test_seen_loc": loc["test_seen"],
              "test_unseen_loc": loc["test_unseen"]}
    if train_val_loc:  # like AWA2: val_loc holds every image of the validation class, test-seen included
        splits["train_loc"] = np.array([i + 1 for i, e in enumerate(entries) if e[2] in (0, 1, 2)],
                                       dtype=np.uint16).reshape(-1, 1)
        splits["val_loc"] = np.array([i + 1 for i, e in enumerate(entries) if e[2] == 3], dtype=np.uint16).reshape(-1, 1)
    fixture = Fixture(root, kind, labels, rel_paths, original, splits)
    fixture.rewrite_splits()
    fixture.rewrite_res()
    if class_lists:
        (folder / "valclasses1.txt").write_text(f"{classes[1][0]}\n")
        (folder / "trainvalclasses.txt").write_text("".join(f"{c}\n" for c, _ in classes[:NUM_SEEN]))
        (folder / "testclasses.txt").write_text("".join(f"{c}\n" for c, _ in classes[NUM_SEEN:]))
    if names_file:
        names = ATTRIBUTES[kind]
        if kind == "cub":
            (root / "attributes.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
        elif kind == "awa2":
            (root / "Animals_with_Attributes2").mkdir(parents=True, exist_ok=True)
            (root / "Animals_with_Attributes2" / "predicates.txt").write_text(
                "".join(f"{i + 1}\t{n}\n" for i, n in enumerate(names)))
        else:
            (root / "SUNAttributeDB").mkdir()
            scipy.io.savemat(root / "SUNAttributeDB" / "attributes.mat", {"attributes": cell(names)})
    if images:
        for i, rel in enumerate(rel_paths):
            write_jpeg(root / IMAGE_DIR[kind] / rel, seed=i)
    return fixture


def write_glove(path: Path, dim: int = 8) -> Path:
    rng = np.random.default_rng(11)
    path.write_text("".join(f"{w} {' '.join(f'{x:.5f}' for x in rng.normal(size=dim))}\n" for w in VOCAB))
    return path


# ---------------------------------------------------------------- reading


def test_real_datasets_are_registered():
    assert {"cub", "sun", "awa2", "cub-ss", "deepfashion"} <= set(list_datasets())


def test_cub_order_labels_splits_and_class_list_validation(tmp_path):
    fx = make_xlsa17(tmp_path)
    files = read_dataset_files("cub", tmp_path)
    assert files.name == "cub" and files.cache_name == "cub" and files.default_epochs == 20
    assert [str(p) for p in files.image_paths] == [str(tmp_path / "CUB_200_2011/images" / r) for r in fx.rel_paths]
    np.testing.assert_array_equal(files.labels, fx.labels)
    # the folder of every image names the class its label points at in allclasses_names
    for path, label in zip(files.image_paths, files.labels, strict=True):
        assert path.parent.name == files.class_names[label]
    assert files.class_names[0] == "002.Laysan_Albatross"
    np.testing.assert_allclose(files.class_attributes, fx.original_att.T / 100)
    np.testing.assert_array_equal(files.trainval_loc, np.sort(fx.splits["trainval_loc"].ravel() - 1))
    np.testing.assert_array_equal(files.test_unseen_loc, np.sort(fx.splits["test_unseen_loc"].ravel() - 1))
    assert set(files.labels[files.test_unseen_loc]) == {4, 5}
    # no train_loc / val_loc in the file: validation classes from valclasses1.txt
    np.testing.assert_array_equal(files.val_classes, [1])
    assert "valclasses1.txt" in files.notes["validation_rule"]
    assert files.notes["validation_classes"] == ["005.Crested_Auklet"]
    assert files.attribute_names == ATTRIBUTES["cub"] and files.word_style == "cub"
    assert files.notes["image_dir_exists"] is False  # images are not needed to read the files


def test_awa2_validation_classes_from_val_loc_and_missing_values_kept(tmp_path):
    fx = make_xlsa17(tmp_path, "awa2", train_val_loc=True, class_lists=False)
    files = read_dataset_files("awa2", tmp_path)
    np.testing.assert_array_equal(files.val_classes, [3])  # from val_loc, although it holds a test-seen image
    assert "val_loc" in files.notes["validation_rule"]
    assert files.class_attributes[0, 0] == pytest.approx(-0.01)
    assert str(files.image_paths[0]).startswith(str(tmp_path / "Animals_with_Attributes2" / "JPEGImages"))
    assert files.attribute_names == ATTRIBUTES["awa2"]
    # the search view built from these files never holds a test image
    view = search_view(build_dataset(files, InMemoryFeatures(np.zeros((16, 3, 4), np.float32)),
                                     _semantics(files, tmp_path)))
    test = np.concatenate([files.test_seen_loc, files.test_unseen_loc])
    assert not np.isin(view.all_indices(), test).any()
    assert np.isin(fx.splits["val_loc"].ravel() - 1, test).any()


def test_sun_nested_class_folders_and_mat_names(tmp_path):
    fx = make_xlsa17(tmp_path, "sun", train_val_loc=True)
    files = read_dataset_files("sun", tmp_path)
    assert files.attribute_names == ATTRIBUTES["sun"]
    nested = [p for p in files.image_paths if "south_asia" in str(p)]
    assert nested and all(str(p).startswith(str(tmp_path / "SUN/images/t/temple/south_asia")) for p in nested)
    np.testing.assert_allclose(files.class_attributes, fx.original_att.T)  # SUN is not in percent


def _semantics(files, tmp_path):
    from harness.data.adapters import read_semantics

    return read_semantics(files, write_glove(tmp_path / "glove.txt"))


def test_dataset_built_with_word_vectors(tmp_path, capsys):
    make_xlsa17(tmp_path, "awa2", train_val_loc=True)
    files = read_dataset_files("awa2", tmp_path, word_vectors=write_glove(tmp_path / "glove.txt"))
    assert files.semantics is not None and files.semantics.vectors.shape == (5, 8)
    assert files.notes["attributes_without_words"] == ["xyzzyq"]  # listed, zero vector, warned
    assert not files.semantics.vectors[4].any()
    assert "xyzzyq" in capsys.readouterr().err
    ds = build_dataset(files, InMemoryFeatures(np.ones((16, 3, 4), np.float32)), files.semantics)
    assert ds.num_classes == 6 and len(ds.seen_classes) == 4 and len(ds.unseen_classes) == 2
    assert ds.annotations["notes"]["validation_classes"] == ["beaver"]
    final = final_view(ds)
    assert len(final.eval_seen_indices) == 4 and len(final.eval_unseen_indices) == 4


def test_cub_ss_rebuilt_from_class_order(tmp_path):
    """Without standard_split/CUB/att_splits.mat: first 150 classes of allclasses_names seen, last 50 unseen."""
    fx = make_xlsa17(tmp_path)
    names = [f"{i:03d}.Bird_{i}" for i in range(1, 201)]
    names[0], names[1], names[150], names[151] = (CLASSES["cub"][0][0], CLASSES["cub"][1][0],
                                                  CLASSES["cub"][4][0], CLASSES["cub"][5][0])
    # fixture classes 0-3 keep their ids (seen in SS), 4 and 5 become 150 and 151 (unseen in SS)
    remap = np.array([0, 1, 2, 3, 150, 151])
    fx.rewrite_res(labels=remap[fx.labels] + 1)
    for (name, _), c in zip(CLASSES["cub"], remap, strict=True):
        names[c] = name
    att = np.random.default_rng(0).uniform(0, 100, size=(5, 200))
    fx.rewrite_splits(allclasses_names=cell(names), att=att, original_att=att)
    files = read_dataset_files("cub-ss", tmp_path, data_seed=3)
    assert files.name == "cub-ss" and files.cache_name == "cub"
    assert len(files.test_seen_loc) == 0
    assert set(files.labels[files.trainval_loc]) == {0, 1, 2, 3}
    assert set(files.labels[files.test_unseen_loc]) == {150, 151}
    assert len(files.trainval_loc) == 4 * (TRAINVAL + TEST_SEEN)  # all images of the seen classes
    assert len(files.val_classes) == 1 and set(files.val_classes) <= {0, 1, 2, 3}
    assert "allclasses_names" in files.notes["split_file"]


def test_cub_ss_from_standard_split_file(tmp_path):
    fx = make_xlsa17(tmp_path)
    ss = tmp_path / "standard_split" / "CUB"
    ss.mkdir(parents=True)
    trainval = np.flatnonzero(fx.labels < 5) + 1
    unseen = np.flatnonzero(fx.labels == 5) + 1
    scipy.io.savemat(ss / "att_splits.mat", {"trainval_loc": trainval.astype(np.uint16).reshape(-1, 1),
                                             "test_unseen_loc": unseen.astype(np.uint16).reshape(-1, 1)})
    files = read_dataset_files("cub-ss", tmp_path)
    assert set(files.labels[files.trainval_loc]) == {0, 1, 2, 3, 4}
    assert set(files.labels[files.test_unseen_loc]) == {5}
    assert files.notes["split_file"] == str(ss / "att_splits.mat")
    assert len(files.val_classes) == 2  # a third of the 5 seen classes, drawn with data_seed


def test_validation_choice_is_seeded_and_recorded(tmp_path):
    make_xlsa17(tmp_path)
    ss = tmp_path / "standard_split" / "CUB"
    ss.mkdir(parents=True)
    files = read_dataset_files("cub", tmp_path)
    scipy.io.savemat(ss / "att_splits.mat", {
        "trainval_loc": (np.flatnonzero(files.labels < 5) + 1).astype(np.uint16).reshape(-1, 1),
        "test_unseen_loc": (np.flatnonzero(files.labels == 5) + 1).astype(np.uint16).reshape(-1, 1)})
    choices = {tuple(read_dataset_files("cub-ss", tmp_path, data_seed=s).val_classes) for s in range(8)}
    assert len(choices) > 1
    again = read_dataset_files("cub-ss", tmp_path, data_seed=5)
    assert tuple(again.val_classes) == tuple(read_dataset_files("cub-ss", tmp_path, data_seed=5).val_classes)
    assert "default_rng(5)" in again.notes["validation_rule"]
    assert again.notes["validation_classes"] == [again.class_names[c] for c in again.val_classes]


def test_cub_ss_trains_and_reports_zsl_only(tmp_path):
    from harness.config import TrainConfig
    from harness.trainer import fit

    fx = make_xlsa17(tmp_path)
    (tmp_path / "standard_split" / "CUB").mkdir(parents=True)
    scipy.io.savemat(tmp_path / "standard_split" / "CUB" / "att_splits.mat", {
        "trainval_loc": (np.flatnonzero(fx.labels < 5) + 1).astype(np.uint16).reshape(-1, 1),
        "test_unseen_loc": (np.flatnonzero(fx.labels == 5) + 1).astype(np.uint16).reshape(-1, 1)})
    files = read_dataset_files("cub-ss", tmp_path, word_vectors=write_glove(tmp_path / "glove.txt"))
    maps = np.random.default_rng(0).normal(size=(16, 8, 49)).astype(np.float32)
    ds = build_dataset(files, InMemoryFeatures(maps), files.semantics)
    with np.errstate(all="ignore"):  # no test-seen image: GZSL numbers are NaN
        final = fit(TrainConfig(dataset="cub-ss", epochs=1, batch_size=8), ds).metrics
    assert 0.0 <= final["test_zsl_top1"] <= 1.0 and np.isnan(final["test_acc_seen"])
    search = fit(TrainConfig(dataset="cub-ss", stage="search", epochs=1, batch_size=8), ds).metrics
    assert 0.0 <= search["val_H"] <= 1.0


# ---------------------------------------------------------------- bad input


def _raises(match: str, fn, *args, **kwargs):
    with pytest.raises(InputError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_data_root(tmp_path):
    _raises(r"--data-root: dataset 'cub' .*expected --data-root DIR", load, "cub", None, word_vectors="w.txt")
    _raises(r"--data-root .*nowhere: no such folder", read_dataset_files, "cub", tmp_path / "nowhere")


def test_missing_word_vectors(tmp_path):
    make_xlsa17(tmp_path)
    _raises(r"--word-vectors: dataset 'cub' needs the attribute word vectors; expected --word-vectors FILE",
            load, "cub", tmp_path)


def test_missing_split_and_image_list_files(tmp_path):
    fx = make_xlsa17(tmp_path)
    fx.res_path.unlink()
    _raises(r"res101\.mat: missing; expected the xlsa17 CUB image list", read_dataset_files, "cub", tmp_path)
    fx.split_path.unlink()
    _raises(r"att_splits\.mat: missing; expected the xlsa17 CUB splits", read_dataset_files, "cub", tmp_path)


def test_corrupt_mat_file(tmp_path):
    fx = make_xlsa17(tmp_path)
    fx.split_path.write_bytes(b"not a mat file at all" * 10)
    _raises(r"att_splits\.mat: not a readable \.mat file", read_dataset_files, "cub", tmp_path)


@pytest.mark.parametrize("key", ["att", "original_att", "trainval_loc", "allclasses_names"])
def test_att_splits_without_a_needed_key(tmp_path, key):
    fx = make_xlsa17(tmp_path)
    fx.rewrite_splits(drop=(key,))
    _raises(rf"att_splits\.mat: no '{key}' array", read_dataset_files, "cub", tmp_path)


def test_att_shapes_that_disagree(tmp_path):
    fx = make_xlsa17(tmp_path)
    fx.rewrite_splits(att=fx.splits["att"][:, :5])
    _raises(r"att has shape \(5, 5\) for 6 allclasses_names", read_dataset_files, "cub", tmp_path)
    fx.rewrite_splits(original_att=fx.splits["original_att"][:4])
    _raises(r"original_att has shape \(4, 6\), att \(5, 6\)", read_dataset_files, "cub", tmp_path)


def test_image_counts_that_disagree(tmp_path):
    fx = make_xlsa17(tmp_path)
    fx.rewrite_res(labels=(fx.labels + 1)[:-1])
    _raises(r"res101\.mat: 16 image_files but 15 labels", read_dataset_files, "cub", tmp_path)
    fx.rewrite_res()
    fx.rewrite_splits(test_unseen_loc=np.array([[15], [17]], dtype=np.uint16))
    _raises(r"test_unseen_loc holds image numbers outside 1\.\.16", read_dataset_files, "cub", tmp_path)


def test_overlapping_splits(tmp_path):
    fx = make_xlsa17(tmp_path)
    fx.rewrite_splits(test_seen_loc=fx.splits["trainval_loc"][:2])
    _raises(r"trainval_loc and test_seen_loc share images", read_dataset_files, "cub", tmp_path)


def test_labels_out_of_range(tmp_path):
    fx = make_xlsa17(tmp_path)
    fx.rewrite_res(labels=np.where(fx.labels == 0, 7, fx.labels + 1))
    _raises(r"labels outside 1\.\.6", read_dataset_files, "cub", tmp_path)


def test_labels_that_do_not_match_the_class_folders(tmp_path):
    fx = make_xlsa17(tmp_path)
    swapped = fx.labels.copy()
    swapped[fx.labels == 0], swapped[fx.labels == 1] = 1, 0
    fx.rewrite_res(labels=swapped + 1)
    _raises(r"in folder '00\d\.\w+' but its label \d is class", read_dataset_files, "cub", tmp_path)


def test_image_path_without_the_image_folder(tmp_path):
    fx = make_xlsa17(tmp_path)
    files = [f"/somewhere/else/{p}" for p in fx.rel_paths]
    fx.rewrite_res(image_files=files)
    _raises(r"image_files\[0\] = '/somewhere/else/.*' has no 'images' folder", read_dataset_files, "cub", tmp_path)


def test_no_validation_source(tmp_path):
    make_xlsa17(tmp_path, class_lists=False)
    _raises(r"valclasses1\.txt: missing; expected the validation classes, since att_splits\.mat has no "
            r"train_loc/val_loc", read_dataset_files, "cub", tmp_path)


def test_class_list_with_unknown_class(tmp_path):
    fx = make_xlsa17(tmp_path)
    (fx.split_path.parent / "valclasses1.txt").write_text("999.Dodo\n")
    _raises(r"valclasses1\.txt: class '999\.Dodo' is not in att_splits\.mat's allclasses_names",
            read_dataset_files, "cub", tmp_path)


def test_attribute_names_file_with_wrong_count(tmp_path):
    make_xlsa17(tmp_path)
    (tmp_path / "attributes.txt").write_text("1 has_wing_color::blue\n")
    _raises(r"attributes\.txt: 1 attribute names, but att_splits\.mat has 5 attributes",
            read_dataset_files, "cub", tmp_path)


def test_missing_names_file_needs_names_for_text_vectors_but_not_for_npz(tmp_path):
    make_xlsa17(tmp_path, names_file=False)
    files = read_dataset_files("cub", tmp_path)  # the extractor needs no names
    assert not files.attribute_names_known
    _raises(r"--word-vectors .*glove\.txt: the attribute names are needed .*attributes\.txt",
            read_dataset_files, "cub", tmp_path, word_vectors=write_glove(tmp_path / "glove.txt"))
    npz = tmp_path / "v.npz"
    _raises(r"--word-vectors .*v\.npz: no such file", read_dataset_files, "cub", tmp_path, word_vectors=npz)
    np.savez(npz, vectors=np.ones((5, 3), np.float32), names=np.array(ATTRIBUTES["cub"]))
    files = read_dataset_files("cub", tmp_path, word_vectors=npz)
    assert files.attribute_names == ATTRIBUTES["cub"] and files.semantics.vectors.shape == (5, 3)


def test_word_vector_file_with_wrong_dimension(tmp_path):
    make_xlsa17(tmp_path)
    bad = tmp_path / "w2v.txt"
    bad.write_text("3 300\nbill 0.1 0.2\nwing 0.3 0.4\ncolor 0.5 0.6\n")
    _raises(r"--word-vectors .*w2v\.txt: line 2 has 2 values, expected 300", read_dataset_files, "cub",
            tmp_path, word_vectors=bad)


def test_cache_of_another_size_is_refused(tmp_path):
    make_xlsa17(tmp_path, "awa2", train_val_loc=True)
    files = read_dataset_files("awa2", tmp_path, word_vectors=write_glove(tmp_path / "glove.txt"))
    _raises(r"feature cache awa2: 10 items, but the awa2 files list 16 images", build_dataset, files,
            InMemoryFeatures(np.zeros((10, 3, 4), np.float32)), files.semantics)


def test_missing_feature_cache_names_the_command_that_builds_it(tmp_path):
    make_xlsa17(tmp_path / "data")
    words = write_glove(tmp_path / "glove.txt")
    _raises(r"no feature cache for 'cub'.*python -m harness.features extract", load, "cub", tmp_path / "data",
            cache_dir=tmp_path / "cache", word_vectors=words)


def test_cli_exits_2_with_one_line_on_missing_data_root(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "harness.train", "--dataset", "cub", "--data-root",
                          str(tmp_path / "absent"), "--word-vectors", "w.txt"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--data-root" in lines[0] and "absent" in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_extract_then_train_from_the_cache(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    fx = make_xlsa17(root, "cub", images=True)
    words = write_glove(tmp_path / "glove.txt")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    extract = subprocess.run([sys.executable, "-m", "harness.features", "extract", "--dataset", "cub",
                              "--data-root", str(root), "--weights", "none", "--cache-dir", str(cache)],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert extract.returncode == 0, extract.stderr[-2000:]
    train = subprocess.run([sys.executable, "-m", "harness.train", "--dataset", "cub", "--data-root", str(root),
                            "--cache-dir", str(cache), "--word-vectors", str(words), "--epochs", "1", "--json"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    metrics = json.loads(train.stdout.strip().splitlines()[-1])
    for key in ("acc_seen", "acc_unseen", "H", "zsl_top1", "ausuc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["test_H"] == metrics["H"]
    # the same cache serves cub-ss (same images, same order)
    (root / "standard_split" / "CUB").mkdir(parents=True)
    scipy.io.savemat(root / "standard_split" / "CUB" / "att_splits.mat", {
        "trainval_loc": (np.flatnonzero(fx.labels < 5) + 1).astype(np.uint16).reshape(-1, 1),
        "test_unseen_loc": (np.flatnonzero(fx.labels == 5) + 1).astype(np.uint16).reshape(-1, 1)})
    dataset = load_dataset("cub-ss", data_root=str(root), cache_dir=str(cache), word_vectors=str(words))
    assert dataset.name == "cub-ss" and len(dataset.features) == 16 and len(dataset.test_seen_loc) == 0
    assert dataset.features.read(np.array([0, 15])).shape == (2, 2048, 49)
