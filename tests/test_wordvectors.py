"""Word-vector files (GloVe text, word2vec text / binary, .npz) and the attribute tokenisation."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from harness.data.semantics import attribute_vectors, attribute_words
from harness.data.wordvectors import read_word_vectors
from harness.errors import InputError

WORDS = ["bill", "shape", "curved", "up", "or", "down", "wing", "color", "blue", "Eiffel", "a", "line"]


def word_table(dim: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {w: rng.normal(size=dim).astype(np.float32) for w in WORDS + ["zebra", "quokka"]}


def write_glove(path: Path, table: dict[str, np.ndarray]) -> Path:
    path.write_text("".join(f"{w} {' '.join(f'{x:.6f}' for x in v)}\n" for w, v in table.items()))
    return path


def write_word2vec_text(path: Path, table: dict[str, np.ndarray], dim: int | None = None) -> Path:
    dim = dim or len(next(iter(table.values())))
    body = "".join(f"{w} {' '.join(f'{x:.6f}' for x in v)}\n" for w, v in table.items())
    path.write_text(f"{len(table)} {dim}\n" + body)
    return path


def write_word2vec_bin(path: Path, table: dict[str, np.ndarray], dim: int | None = None,
                       count: int | None = None) -> Path:
    dim = dim or len(next(iter(table.values())))
    with open(path, "wb") as f:
        f.write(f"{count or len(table)} {dim}\n".encode())
        for w, v in table.items():
            f.write(w.encode() + b" " + struct.pack(f"<{len(v)}f", *v) + b"\n")
    return path


def expected_vector(table, words):
    return np.mean([table[w] for w in words], axis=0)


# ---------------------------------------------------------------- tokenisation


@pytest.mark.parametrize("name,style,words", [
    ("has_bill_shape::curved_(up_or_down)", "cub", ["bill", "shape", "curved", "up", "or", "down"]),
    ("has_size::very_large_(32_-_72_in)", "cub", ["size", "very", "large"]),
    ("has_upperparts_color::grey", "cub", ["upper", "parts", "color", "grey"]),
    ("has_bill_shape::all-purpose", "cub", ["bill", "shape", "all", "purpose"]),
    ("newworld", "awa2", ["new", "world"]),
    ("quadrapedal", "awa2", ["quadrupedal"]),
    ("toughskin", "awa2", ["tough", "skin"]),
    ("rock/stone", "sun", ["rock", "stone"]),
    ("wood (not part of a tree)", "sun", ["wood", "not", "part", "of", "a", "tree"]),
    ("a-line", "deepfashion", ["a", "line"]),
    ("classic v-neck", "deepfashion", ["classic", "v", "neck"]),
])
def test_attribute_words(name, style, words):
    assert attribute_words(name, style) == words


# ---------------------------------------------------------------- the three file formats


def test_glove_text_mean_of_words_with_case_fallbacks(tmp_path, capsys):
    table = word_table()
    path = write_glove(tmp_path / "glove.txt", table)
    names = ["has_bill_shape::curved_(up_or_down)", "has_wing_color::blue", "eiffel", "a-line", "xyzzy-plugh"]
    sem = attribute_vectors(names[:2], "cub", path)
    np.testing.assert_allclose(sem.vectors[0], expected_vector(table, WORDS[:6]), atol=1e-5)
    np.testing.assert_allclose(sem.vectors[1], expected_vector(table, ["wing", "color", "blue"]), atol=1e-5)
    assert sem.unknown == [] and sem.file_format == "glove-text"

    sem = attribute_vectors(names[2:], "deepfashion", path)
    # 'eiffel' is only in the file capitalised; 'xyzzy plugh' is in no form: zero, listed, warned
    np.testing.assert_allclose(sem.vectors[0], table["Eiffel"], atol=1e-5)
    np.testing.assert_allclose(sem.vectors[1], expected_vector(table, ["a", "line"]), atol=1e-5)
    assert not sem.vectors[2].any()
    assert sem.unknown == ["xyzzy-plugh"]
    assert set(sem.missing_words) == {"xyzzy", "plugh"}
    assert sem.record()["attributes_without_words"] == ["xyzzy-plugh"]
    err = capsys.readouterr().err
    assert "1 of 3 attributes" in err and "xyzzy-plugh" in err


def test_lowercase_fallback(tmp_path):
    path = write_glove(tmp_path / "g.txt", {"wing": np.full(4, 3.0, np.float32), "blue": np.full(4, 5.0, np.float32)})
    sem = attribute_vectors(["Wing Blue"], "sun", path)  # 'Wing' -> 'wing', 'Blue' -> 'blue'
    np.testing.assert_allclose(sem.vectors[0], np.full(4, 4.0), atol=1e-6)


def test_word2vec_text_and_binary_agree_with_glove(tmp_path):
    table = word_table(dim=5, seed=3)
    names = ["has_bill_shape::curved_(up_or_down)", "has_wing_color::blue"]
    a = attribute_vectors(names, "cub", write_glove(tmp_path / "g.txt", table)).vectors
    b_sem = attribute_vectors(names, "cub", write_word2vec_text(tmp_path / "w.txt", table))
    c_sem = attribute_vectors(names, "cub", write_word2vec_bin(tmp_path / "w.bin", table))
    assert b_sem.file_format == "word2vec-text" and c_sem.file_format == "word2vec-binary"
    np.testing.assert_allclose(b_sem.vectors, a, atol=1e-6)
    np.testing.assert_allclose(c_sem.vectors, a, atol=1e-6)
    np.testing.assert_allclose(a[1], expected_vector(table, ["wing", "color", "blue"]), atol=1e-5)


def test_binary_reader_keeps_only_requested_words_across_buffer_refills(tmp_path, monkeypatch):
    import harness.data.wordvectors as wv

    monkeypatch.setattr(wv, "_CHUNK", 37)  # forces many refills, words split across reads
    rng = np.random.default_rng(1)
    table = {f"w{i}": rng.normal(size=7).astype(np.float32) for i in range(200)}
    path = write_word2vec_bin(tmp_path / "many.bin", table)
    got = read_word_vectors(path, ["w0", "w57", "w199", "absent"])
    assert set(got.vectors) == {"w0", "w57", "w199"} and got.dim == 7
    for w in got.vectors:
        np.testing.assert_array_equal(got.vectors[w], table[w])


def test_npz_of_ready_vectors(tmp_path):
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    vectors[1] = 0
    names = ["black", "white", "blue"]
    path = tmp_path / "v.npz"
    np.savez(path, vectors=vectors, names=np.array(names))
    sem = attribute_vectors(names, "awa2", path)
    np.testing.assert_array_equal(sem.vectors, vectors)
    assert sem.unknown == ["white"] and sem.file_format == "npz"
    np.savez(path, vectors=vectors)  # names are optional
    assert attribute_vectors(names, "awa2", path).vectors.shape == (3, 4)


# ---------------------------------------------------------------- bad files


def test_npz_names_in_another_order_is_an_error(tmp_path):
    path = tmp_path / "v.npz"
    np.savez(path, vectors=np.ones((2, 3), np.float32), names=np.array(["white", "black"]))
    with pytest.raises(InputError, match=r"v\.npz.*names\[0\] is 'white'.*'black'"):
        attribute_vectors(["black", "white"], "awa2", path)


def test_npz_wrong_shape_is_an_error(tmp_path):
    path = tmp_path / "v.npz"
    np.savez(path, vectors=np.ones((5, 3), np.float32))
    with pytest.raises(InputError, match=r"v\.npz.*shape \(5, 3\), expected \(2, D\)"):
        attribute_vectors(["black", "white"], "awa2", path)


def test_word2vec_text_rows_shorter_than_header_dimension(tmp_path):
    table = word_table(dim=4)
    path = write_word2vec_text(tmp_path / "w.txt", table, dim=5)
    with pytest.raises(InputError, match=r"w\.txt: line 2 has 4 values, expected 5 \(as its header says\)"):
        attribute_vectors(["has_wing_color::blue"], "cub", path)


def test_glove_rows_of_mixed_dimension(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("the 1 2 3\nwing 1 2\ncolor 1 2 3\n")
    with pytest.raises(InputError, match=r"g\.txt: line 2 \('wing'\) has 2 values, expected 3"):
        attribute_vectors(["has_wing_color::blue"], "cub", path)


def test_binary_with_wrong_header_dimension(tmp_path):
    path = write_word2vec_bin(tmp_path / "w.bin", word_table(dim=4), dim=6)
    with pytest.raises(InputError, match=r"w\.bin: ended after \d+ of 14 words; expected 14 words of 6 float32 values.*wrong dimension"):
        attribute_vectors(["has_wing_color::blue"], "cub", path)


def test_binary_truncated(tmp_path):
    path = write_word2vec_bin(tmp_path / "w.bin", word_table(dim=4), count=40)
    with pytest.raises(InputError, match=r"w\.bin: ended after 14 of 40 words"):
        attribute_vectors(["has_wing_color::blue"], "cub", path)


def test_binary_file_not_named_bin(tmp_path):
    path = write_word2vec_bin(tmp_path / "w.vec", word_table(dim=4))
    with pytest.raises(InputError, match=r"w\.vec: line 2 is binary data.*must end in \.bin"):
        attribute_vectors(["has_wing_color::blue"], "cub", path)


def test_no_known_word_at_all(tmp_path):
    path = write_glove(tmp_path / "g.txt", {"zebra": np.ones(3, np.float32)})
    with pytest.raises(InputError, match=r"g\.txt: holds none of the attributes' words"):
        attribute_vectors(["has_wing_color::blue"], "cub", path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.txt: no such file"):
        attribute_vectors(["black"], "awa2", tmp_path / "nope.txt")
