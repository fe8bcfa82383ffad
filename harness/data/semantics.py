"""Attribute semantics: the words of each attribute, their vectors, and the entropy ranking of
attributes (paper, Figure 4 left).

An attribute's initial vector v_a is the MEAN of the word vectors of the words of its name, after
the tokenisation below (docs/datasets.md lists it with examples). The word-vector file formats
are read by harness.data.wordvectors.

Tokenisation, per dataset style:
- every style: words are the runs of letters and digits; '-', '_', '/', '::', brackets split;
- cub: the leading "has" is dropped; a bracketed qualifier is kept (`curved_(up_or_down)` ->
  curved up or down) unless it is a measurement, i.e. holds a digit (`large_(16_-_32_in)` ->
  large); upperparts -> upper parts (as the authors; they keep "underparts");
- awa2: the predicates with the known compound-word fixes (toughskin -> tough skin, newworld ->
  new world, quadrapedal -> quadrupedal, ...; AWA2_COMPOUNDS);
- sun, deepfashion: the names as they are (`rock/stone` -> rock stone, `a-line` -> a line).
Lookup tries each word as written, then lower-cased, then capitalised (word2vec GoogleNews is
case-sensitive: `eiffel` is only there as `Eiffel`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.data.wordvectors import read_vector_npz, read_word_vectors
from harness.errors import InputError

WORD_STYLES = ("cub", "sun", "awa2", "deepfashion")

# AWA2 predicates written as one word; the authors' extraction script splits them the same way.
AWA2_COMPOUNDS = {
    "toughskin": "tough skin", "longleg": "long leg", "chewteeth": "chew teeth", "meatteeth": "meat teeth",
    "strainteeth": "strain teeth", "quadrapedal": "quadrupedal", "newworld": "new world",
    "oldworld": "old world", "nestspot": "nest spot",
}
CUB_COMPOUNDS = {"upperparts": "upper parts"}

_WORD = re.compile(r"[A-Za-z0-9]+")
_BRACKETED = re.compile(r"\(([^)]*)\)")


def attribute_words(name: str, style: str) -> list[str]:
    """The words whose vectors are averaged into attribute `name`'s vector (see module doc)."""
    if style not in WORD_STYLES:
        raise ValueError(f"unknown word style {style!r}; expected one of {WORD_STYLES}")
    text = name
    compounds: dict[str, str] = {}
    if style == "cub":
        text = re.sub(r"^has_", "", text)
        text = _BRACKETED.sub(lambda m: " " if re.search(r"\d", m.group(1)) else f" {m.group(1)} ", text)
        compounds = CUB_COMPOUNDS
    elif style == "awa2":
        compounds = AWA2_COMPOUNDS
    words: list[str] = []
    for word in _WORD.findall(text.replace("_", " ")):
        words.extend(compounds.get(word.lower(), word).split())
    return words


def word_variants(word: str) -> list[str]:
    """Spellings tried in order: as written, lower-case, capitalised."""
    out: list[str] = []
    for w in (word, word.lower(), word.capitalize()):
        if w not in out:
            out.append(w)
    return out


@dataclass
class AttributeSemantics:
    """Initial attribute vectors and how they were made (recorded with the dataset)."""

    vectors: np.ndarray  # [A, D] float32
    words: list[list[str]]
    unknown: list[str]  # attributes none of whose words the file holds: zero vectors
    source: str
    file_format: str
    missing_words: list[str] = field(default_factory=list)

    def record(self) -> dict:
        return {"word_vectors": self.source, "word_vector_format": self.file_format,
                "word_vector_dim": int(self.vectors.shape[1]), "attributes_without_words": list(self.unknown),
                "words_not_found": list(self.missing_words)}


def _warn_unknown(path: Path, unknown: list[str], total: int) -> None:
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        print(f"harness: warning: {len(unknown)} of {total} attributes have no word in {path}; "
              f"their vectors are zero: {shown}", file=sys.stderr)


def attribute_vectors(names: list[str], style: str, path: str | Path) -> AttributeSemantics:
    """v_a for every attribute: the mean of its words' vectors from `path`, or an .npz's rows."""
    path = Path(path)
    words = [attribute_words(n, style) for n in names]
    if path.suffix.lower() == ".npz":
        vectors = read_vector_npz(path, names)
        unknown = [n for n, row in zip(names, vectors, strict=True) if not np.any(row)]
        if len(unknown) == len(names):
            raise InputError(f"--word-vectors {path}: every attribute vector is zero; expected vectors of words")
        _warn_unknown(path, unknown, len(names))
        return AttributeSemantics(vectors, words, unknown, str(path), "npz")
    wanted = {v for phrase in words for w in phrase for v in word_variants(w)}
    table = read_word_vectors(path, wanted)
    vectors = np.zeros((len(names), table.dim), dtype=np.float32)
    unknown: list[str] = []
    missing: set[str] = set()
    for i, phrase in enumerate(words):
        found = []
        for w in phrase:
            hit = next((table.vectors[v] for v in word_variants(w) if v in table.vectors), None)
            if hit is None:
                missing.add(w)
            else:
                found.append(hit)
        if found:
            vectors[i] = np.mean(found, axis=0)
        else:
            unknown.append(names[i])
    if len(unknown) == len(names):
        sample = ", ".join(sorted(wanted)[:8])
        raise InputError(f"--word-vectors {path}: holds none of the attributes' words (e.g. {sample}); "
                         "expected a GloVe / word2vec file of English words")
    _warn_unknown(path, unknown, len(names))
    return AttributeSemantics(vectors, words, unknown, str(path), table.file_format, sorted(missing))


def attribute_entropy(class_attributes: np.ndarray) -> np.ndarray:
    """Entropy of each attribute's distribution over classes, p_c = z^c_a / sum_c' z^c'_a.

    Low entropy means the attribute is concentrated on few classes, i.e. discriminative.
    Attributes that are zero for every class get +inf (they say nothing).
    """
    z = np.clip(np.asarray(class_attributes, dtype=np.float64), 0.0, None)  # [C, A]
    totals = z.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = z / totals
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    entropy = terms.sum(axis=0)
    entropy[totals <= 0] = np.inf
    return entropy


def rank_attributes(class_attributes: np.ndarray) -> np.ndarray:
    """Attribute indices from most to least discriminative (ascending entropy, stable)."""
    return np.argsort(attribute_entropy(class_attributes), kind="stable")


def select_attributes(class_attributes: np.ndarray, k: int | None) -> np.ndarray:
    """The k lowest-entropy attributes in their original order; all of them when k is None."""
    num = class_attributes.shape[1]
    if k is None or k >= num:
        return np.arange(num)
    if k < 1:
        raise ValueError(f"num_attributes must be at least 1, got {k}")
    return np.sort(rank_attributes(class_attributes)[:k])
