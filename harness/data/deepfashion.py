"""DeepFashion (Category and Attribute Prediction benchmark) as the DAZLE authors set it up.

Files under the data root: Anno/list_category_cloth.txt, Anno/list_category_img.txt,
Anno/list_attr_cloth.txt, Anno/list_attr_img.txt, Eval/list_eval_partition.txt and the images
img/<item>/<file>.jpg. Each list file: the row count on line 1, a header on line 2, then rows;
category labels are 1-based; attribute values are 1 / -1 (0 = unknown in some copies).

- Image order (= feature cache keys) is the order of list_category_img.txt; the other lists
  are matched to it by image name, and their counts must agree.
- Class attributes (DESIGN section 5): per category, the mean of its images' attribute rows
  mapped to [0, 1] by (x + 1) / 2 (so an unknown 0 counts as 0.5, as in the authors' code),
  then L2-normalised. Categories without images are dropped (46 of 50 remain) and the rest
  renumbered 0.. in order of their original label.
- Unseen: original labels 2, 12, 15, 19, 26, 29, 30, 42, 44, 48 (all their images are
  test_unseen). Seen images in the "test" partition are test_seen, the other seen images trainval.
- 6 validation classes, unpublished by the authors: drawn from the seen classes with
  data_seed (files.choose_validation_classes) and recorded in `notes`.
list_attr_img.txt (289,222 rows x 1,000 values, ~600 MB) is streamed: only per-category sums
are kept.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from harness.data.files import DatasetFiles, choose_validation_classes, require_file
from harness.errors import InputError

UNSEEN_LABELS = (2, 12, 15, 19, 26, 29, 30, 42, 44, 48)
NUM_VALIDATION = 6
PARTITIONS = ("train", "val", "test")
_CHUNK_ROWS = 4096


def _rows(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) of a list file's rows, after checking its count and header.

    The last item is the declared count, yielded as (-1, str(count)) before the rows."""
    require_file(path, what)
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline().strip()
        if not first.isdigit():
            raise InputError(f"{path}: line 1 is {first[:40]!r}; expected the row count of {what}")
        header = f.readline()
        if not header.strip():
            raise InputError(f"{path}: line 2 is empty; expected the column header of {what}")
        yield -1, first
        for number, line in enumerate(f, start=3):
            line = line.strip()
            if line:
                yield number, line


def _read_table(path: Path, what: str, name_has_spaces: bool) -> list[tuple[str, str]]:
    """Two-column rows (name, value); names of the *_cloth lists may hold spaces."""
    rows = _rows(path, what)
    _, count = next(rows)
    out = []
    for number, line in rows:
        parts = line.rsplit(None, 1) if name_has_spaces else line.split()
        if len(parts) != 2:
            raise InputError(f"{path}: line {number} has {len(line.split())} fields; expected 2 ({what})")
        out.append((" ".join(parts[0].split()), parts[1]))
    if len(out) != int(count):
        raise InputError(f"{path}: {len(out)} rows but line 1 says {count}; expected the declared count")
    return out


class _CategorySums:
    """Per original label: the sum of its images' attribute rows and its image count; plus the
    number of unknown (0) values. Rows are added in chunks of _CHUNK_ROWS (one np.stack each)."""

    def __init__(self, num_labels: int, num_attributes: int) -> None:
        self.num_labels = num_labels
        self.sums = np.zeros((num_labels + 1, num_attributes), dtype=np.int64)
        self.counts = np.zeros(num_labels + 1, dtype=np.int64)
        self.unknown = 0
        self._chunk: list[np.ndarray] = []
        self._labels: list[int] = []

    def add(self, values: np.ndarray, label: int) -> int:
        """Queue one image's row; the number of rows summed by this call (0 or a full chunk)."""
        self._chunk.append(values)
        self._labels.append(label)
        return self.flush() if len(self._chunk) == _CHUNK_ROWS else 0

    def flush(self) -> int:
        """Sum the queued rows; how many there were."""
        if not self._chunk:
            return 0
        block = np.stack(self._chunk)
        lab = np.asarray(self._labels)
        self.unknown += int((block == 0).sum())
        for label in np.unique(lab):
            self.sums[label] += block[lab == label].sum(axis=0, dtype=np.int64)
        self.counts[:] += np.bincount(lab, minlength=self.num_labels + 1)
        done = len(self._chunk)
        self._chunk.clear()
        self._labels.clear()
        return done


def _attribute_row(path: Path, number: int, line: str, label_of: dict[str, int], seen_names: set[str],
                   num_attributes: int) -> tuple[np.ndarray, int]:
    """One list_attr_img.txt row: its values and its image's original label, checked."""
    name, _, rest = line.partition(" ")
    label = label_of.get(name)
    if label is None:
        raise InputError(f"{path}: line {number} names image {name!r}, which list_category_img.txt "
                         "does not list; expected the same images in both")
    if name in seen_names:
        raise InputError(f"{path}: image {name!r} listed twice (line {number}); expected each image once")
    seen_names.add(name)
    values = np.fromstring(rest, dtype=np.int8, sep=" ")
    if len(values) != num_attributes or np.abs(values).max(initial=0) > 1:
        raise InputError(f"{path}: line {number} has {len(rest.split())} values; expected "
                         f"{num_attributes} values of 1 / -1 / 0 (one per attribute of list_attr_cloth.txt)")
    return values, label


def _attribute_sums(path: Path, label_of: dict[str, int], num_labels: int, num_attributes: int
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """Per original label: sum of attribute rows and image count, streamed; plus #unknown (0) values."""
    from tqdm import tqdm

    rows = _rows(path, "the image attribute annotations")
    _, declared = next(rows)
    if int(declared) != len(label_of):
        raise InputError(f"{path}: line 1 says {declared} images but list_category_img.txt lists {len(label_of)}; "
                         "expected the same images in both")
    totals = _CategorySums(num_labels, num_attributes)
    seen_names: set[str] = set()
    with tqdm(total=int(declared), desc="reading list_attr_img.txt", unit="img", file=sys.stderr,
              disable=int(declared) < 20000, dynamic_ncols=True) as bar:
        for number, line in rows:
            summed = totals.add(*_attribute_row(path, number, line, label_of, seen_names, num_attributes))
            if summed:
                bar.update(summed)
        bar.update(totals.flush())
    if len(seen_names) != len(label_of):
        raise InputError(f"{path}: {len(seen_names)} image rows but line 1 says {declared}; expected the declared "
                         "count")
    return totals.sums, totals.counts, totals.unknown


def _image_labels(path: Path, image_rows: list[tuple[str, str]], num_labels: int) -> dict[str, int]:
    """Original (1-based) category label of each image of list_category_img.txt, in its order."""
    label_of: dict[str, int] = {}
    for name, value in image_rows:
        if not value.isdigit() or not 1 <= int(value) <= num_labels:
            raise InputError(f"{path}: image {name!r} has category {value!r}; expected "
                             f"a label in 1..{num_labels} (list_category_cloth.txt)")
        if name in label_of:
            raise InputError(f"{path}: image {name!r} listed twice; expected each once")
        label_of[name] = int(value)
    return label_of


def _image_partitions(path: Path, partition_rows: list[tuple[str, str]], label_of: dict[str, int]
                      ) -> dict[str, str]:
    """Evaluation partition of each image, checked to cover exactly the images of label_of."""
    status_of = dict(partition_rows)
    if len(status_of) != len(label_of) or any(n not in status_of for n in label_of):
        raise InputError(f"{path}: {len(status_of)} images, "
                         f"list_category_img.txt {len(label_of)}; expected the same images in both")
    bad = next((s for s in status_of.values() if s not in PARTITIONS), None)
    if bad is not None:
        raise InputError(f"{path}: partition {bad!r}; expected one of {PARTITIONS}")
    return status_of


def _class_attributes(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Original labels with images (ascending) and their class-attribute rows: the mean of the
    images' rows mapped to [0, 1] by (x + 1) / 2, then L2-normalised."""
    present = np.flatnonzero(counts[1:]) + 1
    mean = sums[present] / counts[present][:, None]
    mapped = (mean + 1.0) / 2.0
    norms = np.linalg.norm(mapped, axis=1, keepdims=True)
    return present, mapped / np.where(norms > 0, norms, 1.0)


def _split(evaluation: Path, labels: np.ndarray, unseen_ids: list[int], is_test: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """trainval / test_seen / test_unseen image indices: unseen categories are all test_unseen,
    seen images of the "test" partition test_seen, the other seen images trainval."""
    is_unseen = np.isin(labels, unseen_ids)
    trainval = np.flatnonzero(~is_unseen & ~is_test)
    test_seen = np.flatnonzero(~is_unseen & is_test)
    if not np.isin(labels[test_seen], np.unique(labels[trainval])).all():
        raise InputError(f"{evaluation / 'list_eval_partition.txt'}: a seen category has only 'test' images; "
                         "expected train or val images for every seen category")
    return trainval, test_seen, np.flatnonzero(is_unseen)


def read(data_root: Path, data_seed: int = 0) -> DatasetFiles:
    """Read DeepFashion from `data_root` (layout in the module docstring)."""
    anno, evaluation = data_root / "Anno", data_root / "Eval"
    categories = _read_table(anno / "list_category_cloth.txt", "the category names", name_has_spaces=True)
    attributes = _read_table(anno / "list_attr_cloth.txt", "the attribute names", name_has_spaces=True)
    image_rows = _read_table(anno / "list_category_img.txt", "the image categories", name_has_spaces=False)
    partition_rows = _read_table(evaluation / "list_eval_partition.txt", "the evaluation partition",
                                 name_has_spaces=False)
    label_of = _image_labels(anno / "list_category_img.txt", image_rows, len(categories))
    status_of = _image_partitions(evaluation / "list_eval_partition.txt", partition_rows, label_of)
    sums, counts, unknown = _attribute_sums(anno / "list_attr_img.txt", label_of, len(categories), len(attributes))

    present, class_attributes = _class_attributes(sums, counts)
    new_id = {int(label): i for i, label in enumerate(present)}
    unseen_labels = [label for label in UNSEEN_LABELS if label in new_id]
    if not unseen_labels:
        raise InputError(f"{anno / 'list_category_img.txt'}: no image of the unseen categories {UNSEEN_LABELS}; "
                         "expected the DeepFashion category benchmark's labels")
    names = [name for name, _ in image_rows]
    labels = np.array([new_id[label_of[n]] for n in names], dtype=np.int64)
    is_test = np.array([status_of[n] == "test" for n in names])
    trainval, test_seen, test_unseen = _split(evaluation, labels, [new_id[u] for u in unseen_labels], is_test)
    seen_ids = np.unique(labels[trainval])
    val = choose_validation_classes(seen_ids, NUM_VALIDATION, data_seed)
    class_names = [categories[label - 1][0] for label in present]
    notes = {
        "split": "DAZLE authors' DeepFashion split",
        "image_list": str(anno / "list_category_img.txt"),
        "categories_dropped_without_images": [f"{label} {categories[label - 1][0]}"
                                              for label in range(1, len(categories) + 1) if label not in new_id],
        "unseen_categories": [f"{u} {categories[u - 1][0]}" for u in unseen_labels],
        "validation_rule": f"{NUM_VALIDATION} of the {len(seen_ids)} seen classes (sorted by original label) drawn "
                           f"with numpy.random.default_rng({data_seed})",
        "validation_classes": [f"{int(present[c])} {class_names[c]}" for c in val],
        "unknown_attribute_values": unknown,
    }
    return DatasetFiles(
        name="deepfashion",
        image_paths=[data_root / n for n in names],
        labels=labels,
        class_names=class_names,
        attribute_names=[name for name, _ in attributes],
        class_attributes=class_attributes,
        trainval_loc=trainval,
        test_seen_loc=test_seen,
        test_unseen_loc=test_unseen,
        val_classes=val,
        default_epochs=2,
        notes=notes,
        word_style="deepfashion",
    )
