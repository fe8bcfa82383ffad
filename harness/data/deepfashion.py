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


def _attribute_sums(path: Path, label_of: dict[str, int], num_labels: int, num_attributes: int
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """Per original label: sum of attribute rows and image count, streamed; plus #unknown (0) values."""
    from tqdm import tqdm

    sums = np.zeros((num_labels + 1, num_attributes), dtype=np.int64)
    counts = np.zeros(num_labels + 1, dtype=np.int64)
    unknown = 0
    rows = _rows(path, "the image attribute annotations")
    _, declared = next(rows)
    if int(declared) != len(label_of):
        raise InputError(f"{path}: line 1 says {declared} images but list_category_img.txt lists {len(label_of)}; "
                         "expected the same images in both")
    seen_names: set[str] = set()
    chunk: list[np.ndarray] = []
    chunk_labels: list[int] = []

    def flush() -> None:
        nonlocal unknown
        block = np.stack(chunk)
        lab = np.asarray(chunk_labels)
        unknown += int((block == 0).sum())
        for label in np.unique(lab):
            sums[label] += block[lab == label].sum(axis=0, dtype=np.int64)
        counts[:] += np.bincount(lab, minlength=num_labels + 1)
        chunk.clear()
        chunk_labels.clear()

    with tqdm(total=int(declared), desc="reading list_attr_img.txt", unit="img", file=sys.stderr,
              disable=int(declared) < 20000, dynamic_ncols=True) as bar:
        for number, line in rows:
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
            chunk.append(values)
            chunk_labels.append(label)
            if len(chunk) == _CHUNK_ROWS:
                flush()
                bar.update(_CHUNK_ROWS)
        if chunk:
            bar.update(len(chunk))
            flush()
    if len(seen_names) != len(label_of):
        raise InputError(f"{path}: {len(seen_names)} image rows but line 1 says {declared}; expected the declared "
                         "count")
    return sums, counts, unknown


def read(data_root: Path, data_seed: int = 0) -> DatasetFiles:
    """Read DeepFashion from `data_root` (layout in the module docstring)."""
    anno, evaluation = data_root / "Anno", data_root / "Eval"
    categories = _read_table(anno / "list_category_cloth.txt", "the category names", name_has_spaces=True)
    attributes = _read_table(anno / "list_attr_cloth.txt", "the attribute names", name_has_spaces=True)
    image_rows = _read_table(anno / "list_category_img.txt", "the image categories", name_has_spaces=False)
    partition_rows = _read_table(evaluation / "list_eval_partition.txt", "the evaluation partition",
                                 name_has_spaces=False)

    num_labels = len(categories)
    label_of: dict[str, int] = {}
    for name, value in image_rows:
        if not value.isdigit() or not 1 <= int(value) <= num_labels:
            raise InputError(f"{anno / 'list_category_img.txt'}: image {name!r} has category {value!r}; expected "
                             f"a label in 1..{num_labels} (list_category_cloth.txt)")
        if name in label_of:
            raise InputError(f"{anno / 'list_category_img.txt'}: image {name!r} listed twice; expected each once")
        label_of[name] = int(value)
    status_of = dict(partition_rows)
    if len(status_of) != len(label_of) or any(n not in status_of for n in label_of):
        raise InputError(f"{evaluation / 'list_eval_partition.txt'}: {len(status_of)} images, "
                         f"list_category_img.txt {len(label_of)}; expected the same images in both")
    bad = next((s for s in status_of.values() if s not in PARTITIONS), None)
    if bad is not None:
        raise InputError(f"{evaluation / 'list_eval_partition.txt'}: partition {bad!r}; expected one of {PARTITIONS}")

    sums, counts, unknown = _attribute_sums(anno / "list_attr_img.txt", label_of, num_labels, len(attributes))

    present = np.flatnonzero(counts[1:]) + 1  # original labels with images, ascending
    new_id = {int(label): i for i, label in enumerate(present)}
    unseen_labels = [label for label in UNSEEN_LABELS if label in new_id]
    if not unseen_labels:
        raise InputError(f"{anno / 'list_category_img.txt'}: no image of the unseen categories {UNSEEN_LABELS}; "
                         "expected the DeepFashion category benchmark's labels")
    mean = sums[present] / counts[present][:, None]
    mapped = (mean + 1.0) / 2.0
    norms = np.linalg.norm(mapped, axis=1, keepdims=True)
    class_attributes = mapped / np.where(norms > 0, norms, 1.0)

    names = [name for name, _ in image_rows]
    labels = np.array([new_id[label_of[n]] for n in names], dtype=np.int64)
    is_unseen = np.isin(labels, [new_id[u] for u in unseen_labels])
    is_test = np.array([status_of[n] == "test" for n in names])
    trainval = np.flatnonzero(~is_unseen & ~is_test)
    seen_ids = np.unique(labels[trainval])
    test_seen = np.flatnonzero(~is_unseen & is_test)
    if not np.isin(labels[test_seen], seen_ids).all():
        raise InputError(f"{evaluation / 'list_eval_partition.txt'}: a seen category has only 'test' images; "
                         "expected train or val images for every seen category")
    val = choose_validation_classes(seen_ids, NUM_VALIDATION, data_seed)
    class_names = [categories[label - 1][0] for label in present]
    dropped = [f"{label} {categories[label - 1][0]}" for label in range(1, num_labels + 1) if label not in new_id]
    notes = {
        "split": "DAZLE authors' DeepFashion split",
        "image_list": str(anno / "list_category_img.txt"),
        "categories_dropped_without_images": dropped,
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
        test_unseen_loc=np.flatnonzero(is_unseen),
        val_classes=val,
        default_epochs=2,
        notes=notes,
        word_style="deepfashion",
    )
