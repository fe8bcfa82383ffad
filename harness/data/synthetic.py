"""`synthetic`: a miniature of fine-grained GZSL generated on the fly, deterministic from a seed.

What makes it a fair miniature of CUB / DeepFashion (DESIGN section 5):
- an object has parts (head, wing, ...); each part has one property (colour, pattern, shape,
  ...) whose value is an attribute ("has_wing_color::red"), so attributes are grounded in parts;
- in every image the parts sit in different, randomly chosen cells of the 7x7 grid, and some
  parts are occluded; the other cells hold one of several backgrounds plus noise;
- a region showing part p with value v carries a part signature (shared by all values of p)
  plus a value signature, so attention can find a part whatever its value;
- classes come in families: a class is its family's prototype with a few parts changed, so
  classes share most attributes and differ in a few;
- an image shows its class's value of a part most of the time and another value sometimes, and
  the class-attribute matrix holds these frequencies (like CUB's percentages);
- unseen classes are new combinations of values that seen classes show, never new values;
- word vectors are GloVe-like: each word is its semantic group's centre plus its own direction,
  and an attribute's vector is the mean of its phrase's words, so "wing color red" and
  "head color red" are related;
- the true cell of every part in every image is recorded, so attention maps can be scored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from harness.data.base import GZSLDataset, InMemoryFeatures

PART_WORDS = [
    "head", "wing", "tail", "breast", "back", "leg", "crown", "eye", "bill", "throat", "nape", "belly",
    "collar", "sleeve", "hem", "pocket", "button", "zipper", "waist", "cuff", "shoulder", "strap",
    "neckline", "lapel", "hood", "yoke", "placket", "seam", "lining", "trim", "panel", "bodice",
]
PROPERTY_VALUES = {
    "color": ["red", "blue", "green", "yellow", "black", "white", "brown", "grey", "orange", "purple",
              "pink", "olive", "buff", "iridescent"],
    "pattern": ["solid", "striped", "spotted", "plaid", "floral", "checked", "dotted", "paisley", "marbled",
                "speckled", "multicolored", "camouflage", "chevron", "houndstooth"],
    "shape": ["round", "pointed", "curved", "flat", "long", "short", "hooked", "cone", "dagger", "needle",
              "fan", "notched", "squared", "wedge"],
    "material": ["cotton", "denim", "leather", "silk", "wool", "lace", "chiffon", "linen", "satin", "velvet",
                 "knit", "mesh", "suede", "tweed"],
}


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes and noise levels of one preset."""

    name: str
    num_parts: int
    values_per_part: int
    num_classes: int
    num_unseen: int
    num_val: int
    images_per_class: int
    num_families: int
    mutations_per_class: int
    feature_dim: int = 64
    word_dim: int = 50
    grid: int = 7
    value_fidelity: float = 0.8  # an image shows its class's value of a part with this probability
    occlusion: float = 0.1  # a part is hidden in this fraction of images
    num_backgrounds: int = 4
    region_noise: float = 0.6
    test_seen_fraction: float = 0.2
    default_epochs: int = 20
    # "proposed" (GBU's proposed split, the generator's own unseen classes) or "standard": the same
    # images and classes with another set of unseen classes drawn among all classes, as CUB's
    # standard split of Akata et al. differs from its proposed split.
    split: str = "proposed"
    seed: int = 0

    @property
    def num_attributes(self) -> int:
        return self.num_parts * self.values_per_part


PRESETS = {
    "synthetic": SyntheticSpec(
        name="synthetic", num_parts=8, values_per_part=6, num_classes=32, num_unseen=8, num_val=6,
        images_per_class=40, num_families=6, mutations_per_class=2,
    ),
    "synthetic-deepfashion": SyntheticSpec(
        name="synthetic-deepfashion", num_parts=24, values_per_part=14, num_classes=46, num_unseen=10,
        num_val=6, images_per_class=60, num_families=8, mutations_per_class=4, feature_dim=128,
        word_dim=100, default_epochs=2,
    ),
}
# The miniature's classes, attributes and split rule with few images: CLI smoke tests.
PRESETS["synthetic-tiny"] = replace(PRESETS["synthetic"], name="synthetic-tiny", images_per_class=10)
# Stand-ins shaped like the real datasets of Tables 2 and 3 (DESIGN section 5, paper Table 1): each
# one's class counts (train + validation = seen / unseen) and attribute count, 64-d regions like
# `synthetic`, and few images per class so that `table2 --dataset synthetic` fits on two cores.
PRESETS["synthetic-cub"] = SyntheticSpec(
    name="synthetic-cub", num_parts=24, values_per_part=13, num_classes=200, num_unseen=50, num_val=50,
    images_per_class=20, num_families=20, mutations_per_class=4,
)  # 312 attributes, 100 + 50 / 50 classes
PRESETS["synthetic-cub-ss"] = replace(PRESETS["synthetic-cub"], name="synthetic-cub-ss", split="standard")
PRESETS["synthetic-sun"] = SyntheticSpec(
    name="synthetic-sun", num_parts=17, values_per_part=6, num_classes=717, num_unseen=72, num_val=65,
    images_per_class=8, num_families=40, mutations_per_class=3,
)  # 102 attributes, 580 + 65 / 72 classes
PRESETS["synthetic-awa2"] = SyntheticSpec(
    name="synthetic-awa2", num_parts=17, values_per_part=5, num_classes=50, num_unseen=10, num_val=13,
    images_per_class=60, num_families=8, mutations_per_class=3,
)  # 85 attributes, 27 + 13 / 10 classes


def _attribute_words(spec: SyntheticSpec) -> tuple[list[str], list[list[str]], np.ndarray]:
    """Names (CUB style), phrase words and owning part of every attribute."""
    properties = list(PROPERTY_VALUES)
    names, phrases, parts = [], [], []
    for p in range(spec.num_parts):
        part = PART_WORDS[p % len(PART_WORDS)] + ("" if p < len(PART_WORDS) else str(p // len(PART_WORDS)))
        prop = properties[p % len(properties)]
        for v in range(spec.values_per_part):
            value = PROPERTY_VALUES[prop][v % len(PROPERTY_VALUES[prop])]
            names.append(f"has_{part}_{prop}::{value}")
            phrases.append([part, prop, value])
            parts.append(p)
    return names, phrases, np.asarray(parts, dtype=np.int64)


def _word_vectors(phrases: list[list[str]], spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """GloVe-like: word = centre of its semantic group + its own direction; attribute = mean."""
    groups = {"part": PART_WORDS, **PROPERTY_VALUES, "property": list(PROPERTY_VALUES)}
    group_of = {}
    for group, words in groups.items():
        for word in words:
            group_of.setdefault(word, group)
    centres = {g: rng.normal(size=spec.word_dim) for g in groups}
    vocab: dict[str, np.ndarray] = {}
    for phrase in phrases:
        for word in phrase:
            if word not in vocab:
                centre = centres[group_of.get(word.rstrip("0123456789"), "part")]
                vocab[word] = centre + 0.8 * rng.normal(size=spec.word_dim)
    return np.stack([np.mean([vocab[w] for w in phrase], axis=0) for phrase in phrases]).astype(np.float32)


def _class_values(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Value index of each part for each class [C, P], and the unseen class ids.

    Seen classes are family prototypes with a few parts mutated; unseen classes recombine
    values that seen classes already show at each part.
    """
    num_seen = spec.num_classes - spec.num_unseen
    families = rng.integers(0, spec.values_per_part, size=(spec.num_families, spec.num_parts))
    taken: set[tuple[int, ...]] = set()

    def mutate(base: np.ndarray, allowed: list[np.ndarray] | None) -> np.ndarray:
        for _ in range(1000):
            cls = base.copy()
            for p in rng.choice(spec.num_parts, size=spec.mutations_per_class, replace=False):
                choices = np.arange(spec.values_per_part) if allowed is None else allowed[p]
                cls[p] = rng.choice(choices)
            if tuple(cls) not in taken:
                taken.add(tuple(cls))
                return cls
        raise RuntimeError("could not make distinct classes; raise values_per_part or mutations")

    seen = np.stack([mutate(families[c % spec.num_families], None) for c in range(num_seen)])
    seen_values = [np.unique(seen[:, p]) for p in range(spec.num_parts)]
    unseen = np.stack(
        [mutate(seen[rng.integers(num_seen)], seen_values) for _ in range(spec.num_unseen)]
    )
    values = np.concatenate([seen, unseen])
    order = rng.permutation(spec.num_classes)  # unseen classes get scattered ids, as in real data
    values = values[order]
    unseen_ids = np.sort(np.flatnonzero(order >= num_seen))
    return values, unseen_ids


@dataclass(frozen=True)
class _Signatures:
    part: np.ndarray  # [P, F] shared by every value of a part
    value: np.ndarray  # [A, F] one per attribute (part value)
    backgrounds: np.ndarray  # [num_backgrounds, F]


def _signatures(spec: SyntheticSpec, rng: np.random.Generator) -> _Signatures:
    return _Signatures(
        part=rng.normal(size=(spec.num_parts, spec.feature_dim)),
        value=rng.normal(size=(spec.num_attributes, spec.feature_dim)),
        backgrounds=rng.normal(size=(spec.num_backgrounds, spec.feature_dim)),
    )


def _image_parts(spec: SyntheticSpec, class_values: np.ndarray, labels: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and part: the value shown [N, P], whether it is visible [N, P], its cell [N, P]."""
    # Which value each image shows at each part: the class's value, sometimes another one.
    shown = class_values[labels].copy()  # [N, P]
    swap = rng.random(shown.shape) > spec.value_fidelity
    shown[swap] = rng.integers(0, spec.values_per_part, size=int(swap.sum()))
    visible = rng.random(shown.shape) > spec.occlusion
    # Every part gets its own cell.
    cells = np.argsort(rng.random((len(labels), spec.grid * spec.grid)), axis=1)[:, : spec.num_parts]
    return shown, visible, cells


def _region_features(spec: SyntheticSpec, signatures: _Signatures, shown: np.ndarray, visible: np.ndarray,
                     cells: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Feature maps [N, F, R] (background + noise, part + value signature where a part shows) and
    which attributes each image shows [N, A]."""
    n, num_regions = len(shown), spec.grid * spec.grid
    background = signatures.backgrounds[rng.integers(0, spec.num_backgrounds, size=n)]  # [N, F]
    maps = background[:, None, :].repeat(num_regions, axis=1)
    maps = maps + spec.region_noise * rng.normal(size=maps.shape)  # [N, R, F]
    rows = np.repeat(np.arange(n), spec.num_parts)
    parts = np.tile(np.arange(spec.num_parts), n)
    attrs = parts * spec.values_per_part + shown.reshape(-1)
    keep = visible.reshape(-1)
    rows, parts, attrs, regions = rows[keep], parts[keep], attrs[keep], cells.reshape(-1)[keep]
    maps[rows, regions] = signatures.part[parts] + signatures.value[attrs] + spec.region_noise * rng.normal(
        size=(len(rows), spec.feature_dim)
    )
    maps = np.maximum(maps, 0.0).astype(np.float32).transpose(0, 2, 1)  # post-ReLU like a CNN, [N, F, R]
    shown_attributes = np.zeros((n, spec.num_attributes), dtype=bool)
    shown_attributes[rows, attrs] = True
    return maps, shown_attributes


def _class_attribute_matrix(spec: SyntheticSpec, class_values: np.ndarray) -> np.ndarray:
    """How often a class's images show each value [C, A] (cf. CUB percentages)."""
    class_attributes = np.full((spec.num_classes, spec.num_attributes),
                               (1 - spec.value_fidelity) / spec.values_per_part)
    for c in range(spec.num_classes):
        class_attributes[c, np.arange(spec.num_parts) * spec.values_per_part + class_values[c]] += spec.value_fidelity
    return class_attributes


def _seen_splits(spec: SyntheticSpec, labels: np.ndarray, unseen_ids: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validation classes, and trainval / test_seen images of the seen classes."""
    seen_ids = np.setdiff1d(np.arange(spec.num_classes), unseen_ids)
    val_classes = np.sort(rng.choice(seen_ids, size=spec.num_val, replace=False))
    trainval, test_seen = [], []
    for c in seen_ids:
        images = np.flatnonzero(labels == c)[rng.permutation(spec.images_per_class)]
        n_test = int(round(spec.test_seen_fraction * len(images)))
        test_seen.append(images[:n_test])
        trainval.append(images[n_test:])
    return val_classes, np.sort(np.concatenate(trainval)), np.sort(np.concatenate(test_seen))


def _standard_split(spec: SyntheticSpec, labels: np.ndarray, proposed_unseen: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unseen classes, validation classes, trainval and test_seen images of the standard split.

    Its unseen classes are drawn among all classes (so some proposed-split unseen classes become
    seen and some seen ones unseen), from a generator of its own: the images, classes and
    attributes are exactly the proposed split's. Unlike the real CUB standard split it keeps
    test-seen images (the same 20% rule), so it also builds a GZSL view; Table 3 reads ZSL only.
    """
    rng = np.random.default_rng([spec.seed, 1])
    for _ in range(100):
        unseen = np.sort(rng.choice(spec.num_classes, size=spec.num_unseen, replace=False))
        if not np.array_equal(unseen, proposed_unseen):
            break
    val_classes, trainval, test_seen = _seen_splits(spec, labels, unseen, rng)
    return unseen, val_classes, trainval, test_seen


def generate(spec: SyntheticSpec) -> GZSLDataset:
    """The dataset of `spec`; every random draw comes from one generator seeded with spec.seed,
    in a fixed order, so the same spec gives the same arrays."""
    if spec.split not in ("proposed", "standard"):
        raise ValueError(f"{spec.name}: split must be 'proposed' or 'standard', got {spec.split!r}")
    rng = np.random.default_rng(spec.seed)
    names, phrases, attribute_part = _attribute_words(spec)
    word_vectors = _word_vectors(phrases, spec, rng)
    class_values, unseen_ids = _class_values(spec, rng)
    signatures = _signatures(spec, rng)
    labels = np.repeat(np.arange(spec.num_classes), spec.images_per_class)
    shown, visible, cells = _image_parts(spec, class_values, labels, rng)
    maps, shown_attributes = _region_features(spec, signatures, shown, visible, cells, rng)
    val_classes, trainval, test_seen = _seen_splits(spec, labels, unseen_ids, rng)
    if spec.split == "standard":
        unseen_ids, val_classes, trainval, test_seen = _standard_split(spec, labels, unseen_ids)
    ds = GZSLDataset(
        name=spec.name,
        labels=labels.astype(np.int64),
        class_names=[f"class_{c:03d}" for c in range(spec.num_classes)],
        attribute_names=names,
        class_attributes=_class_attribute_matrix(spec, class_values).astype(np.float32),
        attribute_vectors=word_vectors,
        features=InMemoryFeatures(maps),
        trainval_loc=trainval,
        test_seen_loc=test_seen,
        test_unseen_loc=np.flatnonzero(np.isin(labels, unseen_ids)),
        val_classes=val_classes,
        default_epochs=spec.default_epochs,
        feature_cache_id=f"{spec.name}-seed{spec.seed}",
        annotations={
            "part_regions": np.where(visible, cells, -1),  # occluded parts are recorded as -1
            "attribute_part": attribute_part,
            "shown_attributes": shown_attributes,
            "grid": spec.grid,
        },
    )
    ds.check()
    return ds


def load(name: str, seed: int = 0, **overrides) -> GZSLDataset:
    """A preset by name, optionally with other sizes (tests use tiny ones)."""
    spec = replace(PRESETS[name], seed=seed, **overrides)
    return generate(spec)
