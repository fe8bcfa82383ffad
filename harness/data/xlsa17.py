"""CUB, SUN and AWA2 from the xlsa17 release (Xian et al., TPAMI 2018) plus their image folders.

One reader for the three datasets; a `Layout` holds what differs. Facts it relies on:
- `res101.mat` `image_files` (MATLAB cell of paths on the xlsa17 authors' machine) and `labels`
  (1-based) fix the image order and labels, as the DAZLE authors' extraction uses them. A path is
  mapped onto the data root by its tail after the dataset's image folder, e.g.
  /BS/.../CUB_200_2011/images/001.Black_footed_Albatross/x.jpg -> ROOT/CUB_200_2011/images/001.../x.jpg.
- `att_splits.mat`: `att` [A, C] (columns L2-normalised), `original_att` [A, C] raw,
  `allclasses_names` [C] in the order of att's columns (= label order), 1-based `*_loc` image
  numbers. The real CUB copy lacks `train_loc` / `val_loc`; then the validation classes come from
  the class list `valclasses1.txt` beside it.
- `cub-ss`, the standard split (150 / 50 classes of Akata et al., ZSL only): the authors' loader
  reads `data/standard_split/CUB/att_splits.mat` (trainval_loc, test_unseen_loc over the same
  image order, no test-seen images). Without that file the split is rebuilt from xlsa17's own class
  order: allclasses.txt / allclasses_names list the 150 standard-split training classes first and
  the 50 standard-split test classes last.
Class attributes are `original_att` transposed, divided by 100 for CUB and AWA2 (percentages,
as the authors' `normalize_att`); AWA2's -1 entries (missing in its continuous predicate matrix)
are kept. Only the direction of z^c matters to the models (they L2-normalise it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from harness.data.files import DatasetFiles, check_locs, choose_validation_classes, require_file
from harness.errors import InputError


@dataclass(frozen=True)
class Layout:
    folder: str  # data_root/xlsa17/data/<folder>/
    image_dir: str  # the image folder under data_root that image_files tails map onto
    marker: str  # the last component of image_files paths before the dataset-relative tail
    class_start: int  # tail folders [class_start:-1] joined by '_' name the class
    names_files: tuple[str, ...]  # attribute-name files under data_root, first found is read
    word_style: str
    percent: bool  # original_att is in percent


LAYOUTS = {
    "cub": Layout("CUB", "CUB_200_2011/images", "images", 0,
                  ("attributes.txt", "CUB_200_2011/attributes.txt", "CUB_200_2011/attributes/attributes.txt"),
                  "cub", True),
    "awa2": Layout("AWA2", "Animals_with_Attributes2/JPEGImages", "JPEGImages", 0,
                   ("Animals_with_Attributes2/predicates.txt",), "awa2", True),
    "sun": Layout("SUN", "SUN/images", "images", 1,
                  ("SUNAttributeDB/attributes.mat", "SUN/SUNAttributeDB/attributes.mat", "SUN/attributes.mat"),
                  "sun", False),
}
SPLIT_KEYS = ("allclasses_names", "att", "original_att", "trainval_loc", "test_seen_loc", "test_unseen_loc")
CUB_SS_SEEN = 150  # the standard split's training classes, first in xlsa17's CUB class order
STANDARD_SPLIT_FILES = ("standard_split/CUB/att_splits.mat", "xlsa17/standard_split/CUB/att_splits.mat")


def load_mat(path: Path, keys: tuple[str, ...], what: str, required: tuple[str, ...] | None = None) -> dict:
    """The arrays `keys` of a MATLAB v5 file (only those: res101.mat also holds 2048 x N features)."""
    require_file(path, what)
    try:
        content = scipy.io.loadmat(str(path), variable_names=list(keys))
    except NotImplementedError:
        raise InputError(f"{path}: a MATLAB v7.3 file; expected a v5 .mat file like the xlsa17 release") from None
    except Exception as err:  # scipy raises several types for corrupt files
        raise InputError(f"{path}: not a readable .mat file ({type(err).__name__}: {err}); expected {what}") from None
    for key in keys if required is None else required:
        if key not in content:
            raise InputError(f"{path}: no {key!r} array; expected {what} with keys {', '.join(keys)}")
    return content


def cell_strings(array: np.ndarray) -> list[str]:
    """A MATLAB cell array of strings as a list of str."""
    out = []
    for item in np.asarray(array, dtype=object).ravel():
        while isinstance(item, np.ndarray):
            item = item.ravel()[0] if item.size else ""
        out.append(str(item).strip())
    return out


def _locs(path: Path, content: dict, key: str) -> np.ndarray:
    loc = np.asarray(content[key]).ravel()
    if loc.size and (not np.issubdtype(loc.dtype, np.number) or np.any(loc != np.round(loc))):
        raise InputError(f"{path}: {key} is not a list of image numbers; expected 1-based integers")
    return loc.astype(np.int64) - 1


def read_class_list(path: Path, class_names: list[str]) -> np.ndarray:
    """Class ids of the names listed one per line in an xlsa17 class-list file."""
    index = {n: i for i, n in enumerate(class_names)}
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    unknown = [n for n in names if n not in index]
    if unknown:
        raise InputError(f"{path}: class {unknown[0]!r} is not in att_splits.mat's allclasses_names; expected "
                         "a class list of the same xlsa17 release")
    return np.array(sorted(index[n] for n in names), dtype=np.int64)


def _attribute_names(root: Path, layout: Layout, num: int) -> tuple[list[str], Path | None]:
    for rel in layout.names_files:
        path = root / rel
        if not path.is_file():
            continue
        if path.suffix == ".mat":
            names = cell_strings(load_mat(path, ("attributes",), "the SUN attribute names (attributes)")["attributes"])
        else:  # "1 has_bill_shape::dagger" / "1\tblack"
            names = [line.split(None, 1)[1].strip() for line in path.read_text().splitlines()
                     if len(line.split(None, 1)) == 2]
        if len(names) != num:
            raise InputError(f"{path}: {len(names)} attribute names, but att_splits.mat has {num} attributes; "
                             "expected one name per attribute row of att")
        return names, path
    return [f"attribute_{i:03d}" for i in range(num)], None


def _image_path(image_dir: Path, raw: str, layout: Layout, res_path: Path, index: int) -> tuple[Path, str]:
    """The local path of one image_files entry and the class its folders name."""
    parts = [p for p in raw.replace("\\", "/").split("/") if p]
    try:
        cut = len(parts) - 1 - parts[::-1].index(layout.marker)
    except ValueError:
        raise InputError(f"{res_path}: image_files[{index}] = {raw!r} has no '{layout.marker}' folder; expected "
                         f".../{layout.image_dir}/<class>/<file> paths as in the xlsa17 release") from None
    tail = parts[cut + 1 :]
    if len(tail) < 2 + layout.class_start:
        raise InputError(f"{res_path}: image_files[{index}] = {raw!r} is too short after '{layout.marker}'; "
                         f"expected .../{layout.image_dir}/<class>/<file>")
    return image_dir.joinpath(*tail), "_".join(tail[layout.class_start : -1])


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _check_class_folders(res_path: Path, folders: list[str], labels: np.ndarray, class_names: list[str]) -> None:
    """Each label's images sit in the folder of that class (catches mixed-up res101/att_splits files)."""
    normalised = np.array([_norm(c) for c in class_names])
    seen: dict[str, int] = {}
    for i, (folder, label) in enumerate(zip(folders, labels, strict=True)):
        if folder in seen:
            if seen[folder] != label:
                raise InputError(f"{res_path}: images of folder {folder!r} carry labels {seen[folder] + 1} and "
                                 f"{label + 1}; expected one label per class folder")
            continue
        seen[folder] = int(label)
        if _norm(folder) != normalised[label]:
            raise InputError(f"{res_path}: image_files[{i}] is in folder {folder!r} but its label {label + 1} is "
                             f"class {class_names[label]!r} of att_splits.mat; expected res101.mat and "
                             "att_splits.mat of the same xlsa17 dataset")


def _standard_split(root: Path, labels: np.ndarray, class_names: list[str], data_seed: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """trainval / test_unseen / validation classes of CUB's standard split."""
    n = len(labels)
    for rel in STANDARD_SPLIT_FILES:
        path = root / rel
        if not path.is_file():
            continue
        content = load_mat(path, ("trainval_loc", "test_unseen_loc", "train_loc", "val_loc"),
                           "the CUB standard split", required=("trainval_loc", "test_unseen_loc"))
        trainval, unseen = _locs(path, content, "trainval_loc"), _locs(path, content, "test_unseen_loc")
        check_locs(path, {"trainval_loc": trainval, "test_unseen_loc": unseen}, n)
        notes = {"split": "standard split", "split_file": str(path)}
        if "train_loc" in content and "val_loc" in content:
            val = np.unique(labels[_locs(path, content, "val_loc")])
            notes["validation_rule"] = f"classes of val_loc in {path}"
        else:
            val, notes["validation_rule"] = _third_of_seen(labels[trainval], data_seed)
        return trainval, unseen, val, notes
    if len(class_names) != 200:
        raise InputError(f"cub-ss: {len(class_names)} classes in att_splits.mat; expected CUB's 200 (or put the "
                         f"standard split at {root / STANDARD_SPLIT_FILES[0]})")
    seen = np.arange(CUB_SS_SEEN)
    trainval = np.flatnonzero(np.isin(labels, seen))
    unseen = np.flatnonzero(~np.isin(labels, seen))
    val, rule = _third_of_seen(labels[trainval], data_seed)
    notes = {"split": "standard split",
             "split_file": "none: the first 150 classes of xlsa17's allclasses_names are the standard split's "
                           "training classes, the last 50 its test classes",
             "validation_rule": rule}
    return trainval, unseen, val, notes


def _third_of_seen(trainval_labels: np.ndarray, data_seed: int) -> tuple[np.ndarray, str]:
    """The standard split publishes no validation classes: a third of the seen ones (50 of 150, the
    proposed split's ratio), drawn with data_seed."""
    seen = np.unique(trainval_labels)
    count = max(1, round(len(seen) / 3))
    rule = f"{count} of the {len(seen)} seen classes drawn with numpy.random.default_rng({data_seed})"
    return choose_validation_classes(seen, count, data_seed), rule


def _read_class_attributes(split_path: Path, splits: dict) -> tuple[list[str], np.ndarray]:
    """allclasses_names and original_att [A, C], checked against att's shape."""
    class_names = cell_strings(splits["allclasses_names"])
    att = np.asarray(splits["att"], dtype=np.float64)
    original = np.asarray(splits["original_att"], dtype=np.float64)
    if att.ndim != 2 or att.shape[1] != len(class_names):
        raise InputError(f"{split_path}: att has shape {att.shape} for {len(class_names)} allclasses_names; "
                         "expected [attributes, classes]")
    if original.shape != att.shape:
        raise InputError(f"{split_path}: original_att has shape {original.shape}, att {att.shape}; expected "
                         "the same shape")
    return class_names, original


def _read_image_list(res_path: Path, res: dict, num_classes: int) -> tuple[list[str], np.ndarray]:
    """res101.mat's image_files and their 0-based labels."""
    image_files = cell_strings(res["image_files"])
    raw_labels = np.asarray(res["labels"]).ravel()
    if len(image_files) != len(raw_labels):
        raise InputError(f"{res_path}: {len(image_files)} image_files but {len(raw_labels)} labels; expected one "
                         "label per image")
    if len(raw_labels) == 0:
        raise InputError(f"{res_path}: no images; expected the xlsa17 image list")
    if np.any(raw_labels != np.round(raw_labels)) or raw_labels.min() < 1 or raw_labels.max() > num_classes:
        raise InputError(f"{res_path}: labels outside 1..{num_classes}; expected 1-based class numbers of "
                         f"the {num_classes} classes in att_splits.mat")
    return image_files, raw_labels.astype(np.int64) - 1


def _read_test_locs(split_path: Path, splits: dict, labels: np.ndarray) -> dict[str, np.ndarray]:
    """att_splits.mat's trainval / test_seen / test_unseen locs, checked against the labels."""
    locs = {k: _locs(split_path, splits, k) for k in ("trainval_loc", "test_seen_loc", "test_unseen_loc")}
    check_locs(split_path, locs, len(labels))
    seen = np.unique(labels[locs["trainval_loc"]])
    if not np.isin(labels[locs["test_seen_loc"]], seen).all():
        raise InputError(f"{split_path}: test_seen_loc holds images of classes without trainval images; "
                         "expected test-seen images of seen classes")
    if np.isin(labels[locs["test_unseen_loc"]], seen).any():
        raise InputError(f"{split_path}: test_unseen_loc holds images of seen classes; expected unseen classes only")
    return locs


def _proposed_validation(split_path: Path, splits: dict, labels: np.ndarray, class_names: list[str]
                         ) -> tuple[np.ndarray, str]:
    """The proposed split's validation classes: those of val_loc, else the valclasses1.txt list."""
    if "train_loc" in splits and "val_loc" in splits:
        # Only the class ids are taken from val_loc: on AWA2 it also holds test-seen images.
        val = np.unique(labels[_locs(split_path, splits, "val_loc")])
        train = np.unique(labels[_locs(split_path, splits, "train_loc")])
        if np.intersect1d(val, train).size:
            raise InputError(f"{split_path}: train_loc and val_loc share classes; expected disjoint classes")
        return val, f"classes of val_loc in {split_path}"
    list_path = split_path.parent / "valclasses1.txt"
    require_file(list_path, f"the validation classes, since {split_path.name} has no train_loc/val_loc "
                            "(xlsa17 ships valclasses1.txt beside it)")
    return read_class_list(list_path, class_names), f"classes listed in {list_path}"


def _split(data_root: Path, split_path: Path, splits: dict, labels: np.ndarray, class_names: list[str],
           standard_split: bool, data_seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """(trainval / test_seen / test_unseen locs, validation classes, notes) of the split asked for."""
    locs = _read_test_locs(split_path, splits, labels)
    if standard_split:
        trainval, test_unseen, val, notes = _standard_split(data_root, labels, class_names, data_seed)
        chosen = {"trainval_loc": trainval, "test_seen_loc": np.zeros(0, dtype=np.int64),
                  "test_unseen_loc": test_unseen}
    else:
        val, rule = _proposed_validation(split_path, splits, labels, class_names)
        chosen, notes = locs, {"validation_rule": rule, "split": "proposed split"}
    if not np.isin(val, np.unique(labels[chosen["trainval_loc"]])).all() or len(val) == 0:
        raise InputError(f"{split_path}: the validation classes are not all seen (trainval) classes; expected a "
                         "subset of the seen classes")
    return chosen, val, notes


def read(name: str, data_root: Path, standard_split: bool = False, data_seed: int = 0) -> DatasetFiles:
    """Read `cub`, `sun` or `awa2` (and `cub-ss` with standard_split) from `data_root`."""
    layout = LAYOUTS[name]
    folder = data_root / "xlsa17" / "data" / layout.folder
    split_path = folder / "att_splits.mat"
    res_path = folder / "res101.mat"
    splits = load_mat(split_path, SPLIT_KEYS + ("train_loc", "val_loc"),
                      f"the xlsa17 {layout.folder} splits (att_splits.mat)", required=SPLIT_KEYS)
    res = load_mat(res_path, ("image_files", "labels"), f"the xlsa17 {layout.folder} image list (res101.mat)")
    class_names, original = _read_class_attributes(split_path, splits)
    image_files, labels = _read_image_list(res_path, res, len(class_names))

    image_dir = data_root / layout.image_dir
    mapped = [_image_path(image_dir, f, layout, res_path, i) for i, f in enumerate(image_files)]
    _check_class_folders(res_path, [c for _, c in mapped], labels, class_names)
    locs, val, split_notes = _split(data_root, split_path, splits, labels, class_names, standard_split, data_seed)

    names, names_path = _attribute_names(data_root, layout, original.shape[0])
    notes: dict = {"split_file": str(split_path), "image_list": str(res_path), "image_dir": str(image_dir),
                   "image_dir_exists": image_dir.is_dir(), **split_notes}
    notes["attribute_names_file"] = str(names_path) if names_path else (
        "missing: expected one of " + ", ".join(str(data_root / r) for r in layout.names_files))
    notes["validation_classes"] = [class_names[c] for c in val]
    return DatasetFiles(
        name=f"{name}-ss" if standard_split else name,
        image_paths=[p for p, _ in mapped],
        labels=labels,
        class_names=class_names,
        attribute_names=names,
        class_attributes=original.T / (100.0 if layout.percent else 1.0),
        trainval_loc=np.sort(locs["trainval_loc"]),
        test_seen_loc=np.sort(locs["test_seen_loc"]),
        test_unseen_loc=np.sort(locs["test_unseen_loc"]),
        val_classes=np.sort(val),
        default_epochs=20,
        notes=notes,
        word_style=layout.word_style,
        cache_name=name,
        attribute_names_known=names_path is not None,
    )
