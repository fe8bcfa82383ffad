"""deepfashion from tiny real-format Anno/ and Eval/ files written in temporary folders.

The files follow the benchmark's: the row count on line 1, a header on line 2, names padded with
spaces, 1-based category labels, attribute values 1 / -1 (and 0 for unknown), attribute names
with spaces and trailing blanks; list_attr_img.txt and list_eval_partition.txt in another order
than list_category_img.txt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from harness.data.adapters import build_dataset, read_dataset_files
from harness.data.base import InMemoryFeatures
from harness.data.deepfashion import UNSEEN_LABELS
from harness.data.splits import final_view, search_view
from harness.errors import InputError

REPO = Path(__file__).resolve().parents[1]
ATTRIBUTES = ["a-line", "abstract chevron", "eiffel", "floral print", "crew neck", "zzqx-vvwk"]
VOCAB = ["a", "line", "abstract", "chevron", "Eiffel", "floral", "print", "crew", "neck"]
SEEN_LABELS = [1, 3, 4, 5, 6, 7, 8, 9]  # 8 seen categories with images; 10 and most others have none
UNSEEN_WITH_IMAGES = [2, 12]  # the other unseen labels have no image here and are dropped
PARTS = ["train", "train", "val", "test"]  # per seen category


@dataclass
class Fashion:
    root: Path
    names: list[str]  # list_category_img order
    labels: dict[str, int]  # original label
    values: dict[str, np.ndarray]
    status: dict[str, str]

    def anno(self, name: str) -> Path:
        return self.root / "Anno" / name


def write_list(path: Path, header: str, rows: list[str], count: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{len(rows) if count is None else count}\n{header}\n" + "".join(f"{r}\n" for r in rows))


def make_deepfashion(root: Path, images: bool = False) -> Fashion:
    rng = np.random.default_rng(5)
    write_list(root / "Anno" / "list_category_cloth.txt", "category_name  category_type",
               [f"{f'Category{i}':<15}{1 + i % 3}" for i in range(1, 51)])
    write_list(root / "Anno" / "list_attr_cloth.txt", "attribute_name  attribute_type",
               [f"{a:<29}{1 + i % 5}" + ("     " if i % 2 else "") for i, a in enumerate(ATTRIBUTES)])
    names, labels, values, status = [], {}, {}, {}
    for label in sorted(SEEN_LABELS + UNSEEN_WITH_IMAGES):
        parts = PARTS if label in SEEN_LABELS else ["train", "test"]
        for k, part in enumerate(parts):
            name = f"img/Item_With-Dash_{label}/img_{k + 1:08d}.jpg"
            names.append(name)
            labels[name] = label
            row = rng.choice([-1, 1], size=len(ATTRIBUTES)).astype(np.int8)
            if label == 3 and k == 0:
                row[0] = 0  # unknown, in some copies
            values[name] = row
            status[name] = part
    write_list(root / "Anno" / "list_category_img.txt", "image_name  category_label",
               [f"{n:<70}{labels[n]}" for n in names])
    shuffled = list(rng.permutation(names))
    write_list(root / "Anno" / "list_attr_img.txt", "image_name  attribute_labels",
               [f"{n:<60}" + " ".join(f"{v:d}" for v in values[n]) for n in shuffled])
    write_list(root / "Eval" / "list_eval_partition.txt", "image_name  evaluation_status",
               [f"{n:<70}{status[n]}" for n in reversed(names)])
    if images:
        from PIL import Image

        for i, n in enumerate(names):
            (root / n).parent.mkdir(parents=True, exist_ok=True)
            pixels = np.random.default_rng(i).integers(0, 255, size=(36, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / n, format="JPEG")
    return Fashion(root, names, labels, values, status)


def write_glove(path: Path, dim: int = 6) -> Path:
    rng = np.random.default_rng(2)
    path.write_text("".join(f"{w} {' '.join(f'{x:.5f}' for x in rng.normal(size=dim))}\n" for w in VOCAB))
    return path


# ---------------------------------------------------------------- reading


def test_categories_splits_and_class_attributes(tmp_path):
    fx = make_deepfashion(tmp_path)
    files = read_dataset_files("deepfashion", tmp_path)
    present = sorted(SEEN_LABELS + UNSEEN_WITH_IMAGES)  # empty categories dropped, the rest renumbered
    assert files.class_names == [f"Category{label}" for label in present]
    assert [str(p) for p in files.image_paths] == [str(tmp_path / n) for n in fx.names]  # list_category_img order
    np.testing.assert_array_equal(files.labels, [present.index(fx.labels[n]) for n in fx.names])
    assert files.default_epochs == 2 and files.word_style == "deepfashion"
    assert files.attribute_names == ATTRIBUTES

    # DESIGN section 5: per-category mean, (x + 1) / 2, L2-normalised rows
    for i, label in enumerate(present):
        rows = np.stack([fx.values[n] for n in fx.names if fx.labels[n] == label]).astype(np.float64)
        expected = (rows.mean(axis=0) + 1) / 2
        np.testing.assert_allclose(files.class_attributes[i], expected / np.linalg.norm(expected), atol=1e-12)
    assert files.notes["unknown_attribute_values"] == 1

    unseen = {present.index(u) for u in UNSEEN_WITH_IMAGES}
    assert set(files.labels[files.test_unseen_loc]) == unseen
    assert len(files.test_unseen_loc) == 4  # every image of an unseen category, whatever its partition
    test_seen_names = {fx.names[i] for i in files.test_seen_loc}
    assert test_seen_names == {n for n in fx.names if fx.status[n] == "test" and fx.labels[n] in SEEN_LABELS}
    trainval_names = {fx.names[i] for i in files.trainval_loc}
    assert trainval_names == {n for n in fx.names if fx.status[n] != "test" and fx.labels[n] in SEEN_LABELS}
    assert files.notes["unseen_categories"] == ["2 Category2", "12 Category12"]
    assert "10 Category10" in files.notes["categories_dropped_without_images"]
    assert len(files.notes["categories_dropped_without_images"]) == 40


def test_validation_classes_are_seeded_recorded_and_seen(tmp_path):
    make_deepfashion(tmp_path)
    first = read_dataset_files("deepfashion", tmp_path, data_seed=0)
    again = read_dataset_files("deepfashion", tmp_path, data_seed=0)
    np.testing.assert_array_equal(first.val_classes, again.val_classes)
    assert len(first.val_classes) == 6
    assert set(first.val_classes) <= set(first.labels[first.trainval_loc])
    assert first.notes["validation_classes"] == [f"{int(first.class_names[c][8:])} {first.class_names[c]}"
                                                 for c in first.val_classes]
    assert "default_rng(0)" in first.notes["validation_rule"]
    choices = {tuple(read_dataset_files("deepfashion", tmp_path, data_seed=s).val_classes) for s in range(6)}
    assert len(choices) > 1


def test_views_and_word_vectors(tmp_path, capsys):
    make_deepfashion(tmp_path)
    files = read_dataset_files("deepfashion", tmp_path, word_vectors=write_glove(tmp_path / "glove.txt"))
    sem = files.semantics
    assert sem.unknown == ["zzqx-vvwk"] and not sem.vectors[-1].any()
    assert "zzqx-vvwk" in capsys.readouterr().err
    ds = build_dataset(files, InMemoryFeatures(np.ones((len(files.labels), 4, 2), np.float32)), sem)
    assert ds.annotations["notes"]["validation_classes"] == files.notes["validation_classes"]
    view = search_view(ds)
    test = np.concatenate([ds.test_seen_loc, ds.test_unseen_loc])
    assert not np.isin(view.all_indices(), test).any()
    assert len(view.seen_classes) == 2 and len(view.unseen_classes) == 6  # 8 seen = 2 train + 6 validation
    final = final_view(ds)
    assert len(final.seen_classes) == 8 and len(final.unseen_classes) == 2


# ---------------------------------------------------------------- bad input


def _raises(match: str, root: Path) -> str:
    with pytest.raises(InputError, match=match) as info:
        read_dataset_files("deepfashion", root)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("name", ["Anno/list_category_cloth.txt", "Anno/list_category_img.txt",
                                  "Anno/list_attr_cloth.txt", "Anno/list_attr_img.txt",
                                  "Eval/list_eval_partition.txt"])
def test_missing_annotation_or_split_file(tmp_path, name):
    make_deepfashion(tmp_path)
    (tmp_path / name).unlink()
    _raises(rf"{name}: missing; expected the ", tmp_path)


def test_declared_count_that_disagrees_with_rows(tmp_path):
    fx = make_deepfashion(tmp_path)
    write_list(fx.anno("list_category_img.txt"), "image_name  category_label",
               [f"{n}  {fx.labels[n]}" for n in fx.names], count=len(fx.names) + 1)
    _raises(r"list_category_img\.txt: 36 rows but line 1 says 37", tmp_path)


def test_image_lists_whose_counts_disagree(tmp_path):
    fx = make_deepfashion(tmp_path)
    write_list(fx.anno("list_attr_img.txt"), "image_name  attribute_labels",
               [f"{n} " + " ".join(map(str, fx.values[n])) for n in fx.names[:-1]])
    _raises(r"list_attr_img\.txt: line 1 says 35 images but list_category_img\.txt lists 36", tmp_path)
    make_deepfashion(tmp_path / "b")
    write_list(tmp_path / "b" / "Eval" / "list_eval_partition.txt", "image_name  evaluation_status",
               [f"{n} {fx.status[n]}" for n in fx.names[1:]])
    _raises(r"list_eval_partition\.txt: 35 images, list_category_img\.txt 36", tmp_path / "b")


def test_attribute_row_of_the_wrong_length(tmp_path):
    fx = make_deepfashion(tmp_path)
    rows = [f"{n} " + " ".join(map(str, fx.values[n])) for n in fx.names]
    rows[4] += " 1"
    write_list(fx.anno("list_attr_img.txt"), "image_name  attribute_labels", rows)
    _raises(r"list_attr_img\.txt: line 7 has 7 values; expected 6 values of 1 / -1 / 0", tmp_path)


def test_attribute_row_of_an_unknown_image(tmp_path):
    fx = make_deepfashion(tmp_path)
    rows = [f"{n} " + " ".join(map(str, fx.values[n])) for n in fx.names]
    rows[0] = "img/Other/img_1.jpg " + rows[0].split(" ", 1)[1]
    write_list(fx.anno("list_attr_img.txt"), "image_name  attribute_labels", rows)
    _raises(r"line 3 names image 'img/Other/img_1\.jpg', which list_category_img\.txt does not list", tmp_path)


def test_bad_partition_and_category_label(tmp_path):
    fx = make_deepfashion(tmp_path)
    write_list(tmp_path / "Eval" / "list_eval_partition.txt", "image_name  evaluation_status",
               [f"{n} {'holdout' if i == 3 else fx.status[n]}" for i, n in enumerate(fx.names)])
    _raises(r"partition 'holdout'; expected one of \('train', 'val', 'test'\)", tmp_path)
    make_deepfashion(tmp_path / "b")
    write_list(tmp_path / "b" / "Anno" / "list_category_img.txt", "image_name  category_label",
               [f"{n} {51 if i == 0 else fx.labels[n]}" for i, n in enumerate(fx.names)])
    _raises(r"has category '51'; expected a label in 1\.\.50", tmp_path / "b")


def test_count_line_that_is_not_a_number(tmp_path):
    fx = make_deepfashion(tmp_path)
    fx.anno("list_attr_cloth.txt").write_text("attribute_name  attribute_type\na-line 3\n")
    _raises(r"list_attr_cloth\.txt: line 1 is 'attribute_name  attribute_type'; expected the row count", tmp_path)


def test_unseen_labels_are_the_papers():
    assert UNSEEN_LABELS == (2, 12, 15, 19, 26, 29, 30, 42, 44, 48)


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_extract_then_train_deepfashion(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    make_deepfashion(root, images=True)
    words = write_glove(tmp_path / "glove.txt")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    # 32-pixel crops keep ResNet-101 fast here (a 1x1 region grid); the pipeline is the same
    extract = subprocess.run([sys.executable, "-m", "harness.features", "extract", "--dataset", "deepfashion",
                              "--data-root", str(root), "--weights", "none", "--image-size", "32",
                              "--cache-dir", str(cache)], capture_output=True, text=True, env=env, cwd=tmp_path,
                             timeout=600)
    assert extract.returncode == 0, extract.stderr[-2000:]
    train = subprocess.run([sys.executable, "-m", "harness.train", "--dataset", "deepfashion", "--data-root",
                            str(root), "--cache-dir", str(cache), "--word-vectors", str(words), "--json",
                            "--batch-size", "8"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    metrics = json.loads(train.stdout.strip().splitlines()[-1])
    assert 0.0 <= metrics["H"] <= 1.0 and 0.0 <= metrics["zsl_top1"] <= 1.0
    assert "zzqx-vvwk" in train.stderr  # the attribute without a known word is listed
