"""Word-vector files: GloVe text, word2vec text or binary, streamed for only the words asked for.

GloVe 840B is 5 GB and word2vec GoogleNews 3.6 GB, so nothing here loads a file whole: one pass
over the file keeps the vectors of the requested words and skips every other row. Formats:
- GloVe text: `word v1 ... vD` per line, no header (D from the first line);
- word2vec text: a header line `count D`, then rows like GloVe;
- word2vec binary (`.bin`): header `count D\\n`, then per word `word<space>` + D little-endian
  float32 (+ an optional newline).
Rows whose length disagrees with D are a wrong-dimension file (InputError naming the line).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import InputError

_CHUNK = 1 << 24  # 16 MiB reads for the binary format
_PROGRESS_BYTES = 64 << 20  # show a progress bar for files larger than this


@dataclass
class WordTable:
    """The vectors of the requested words that the file holds."""

    path: Path
    dim: int
    vectors: dict[str, np.ndarray]
    file_format: str  # "glove-text", "word2vec-text" or "word2vec-binary"


def _progress(path: Path, desc: str):
    from tqdm import tqdm

    size = path.stat().st_size
    return tqdm(total=size, unit="B", unit_scale=True, desc=desc, file=sys.stderr,
                disable=size < _PROGRESS_BYTES, dynamic_ncols=True)


def _parse_header(line: bytes) -> tuple[int, int] | None:
    """`count dim` when the first line is a word2vec header, else None."""
    parts = line.split()
    if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
        return int(parts[0]), int(parts[1])
    return None


def _wrong_dim(path: Path, where: str, got: int, dim: int, source: str) -> InputError:
    return InputError(
        f"--word-vectors {path}: {where} has {got} values, expected {dim} ({source}); "
        "is the file truncated or of mixed dimensions?"
    )


def _read_text(path: Path, wanted: dict[bytes, str]) -> WordTable:
    vectors: dict[str, np.ndarray] = {}
    with open(path, "rb") as f, _progress(path, f"reading {path.name}") as bar:
        first = f.readline()
        bar.update(len(first))
        header = _parse_header(first)
        if header is not None:
            dim, source, fmt = header[1], "as its header says", "word2vec-text"
            lines: Iterable[bytes] = f
            line_no = 1
        else:
            dim, source, fmt = len(first.split()) - 1, "as its first line has", "glove-text"
            lines = _chain(first, f)
            line_no = 0
        if dim < 1:
            raise InputError(f"--word-vectors {path}: first line holds no vector; expected GloVe text "
                             "('word v1 ... vD'), word2vec text ('count D' header) or a .bin / .npz file")
        checked_first = False
        for line in lines:
            line_no += 1
            bar.update(len(line))
            if not checked_first:
                checked_first = True
                _check_first_row(path, line, line_no, dim, source)
            cut = line.find(b" ")
            word = line[:cut] if cut > 0 else line.strip()
            name = wanted.get(word)
            if name is None:
                continue
            tokens = line.split()
            if len(tokens) > dim + 1:
                continue  # GloVe 840B holds a few tokens with spaces inside; not one of ours
            if len(tokens) != dim + 1:
                raise _wrong_dim(path, f"line {line_no} ({name!r})", len(tokens) - 1, dim, source)
            try:
                vectors[name] = np.asarray(tokens[1:], dtype=np.float32)
            except ValueError:
                raise InputError(f"--word-vectors {path}: line {line_no} ({name!r}) holds a value that is "
                                 "not a number; expected 'word v1 ... vD'") from None
    return WordTable(path, dim, vectors, fmt)


def _check_first_row(path: Path, line: bytes, line_no: int, dim: int, source: str) -> None:
    """The first vector row is `word v1 ... vD`: it tells a binary file named like a text one."""
    if _looks_binary(line):
        raise InputError(f"--word-vectors {path}: line {line_no} is binary data, not 'word v1 ... "
                         f"v{dim}'; word2vec binary files must end in .bin")
    tokens = line.split()
    if len(tokens) != dim + 1:
        raise _wrong_dim(path, f"line {line_no}", len(tokens) - 1, dim, source)
    try:
        [float(t) for t in tokens[1:]]
    except ValueError:
        raise InputError(
            f"--word-vectors {path}: line {line_no} is not 'word v1 ... v{dim}'; "
            "word2vec binary files must end in .bin"
        ) from None


def _looks_binary(line: bytes) -> bool:
    if b"\x00" in line:
        return True
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _chain(first: bytes, rest: Iterable[bytes]) -> Iterable[bytes]:
    yield first
    yield from rest


def _read_binary(path: Path, wanted: dict[bytes, str]) -> WordTable:
    vectors: dict[str, np.ndarray] = {}
    with open(path, "rb") as f, _progress(path, f"reading {path.name}") as bar:
        first = f.readline()
        header = _parse_header(first)
        if header is None:
            raise InputError(f"--word-vectors {path}: first line {first[:40]!r} is not a word2vec header "
                             "'count dim'; expected a word2vec binary file")
        count, dim = header
        nbytes = 4 * dim
        buf = f.read(_CHUNK)
        bar.update(len(first) + len(buf))
        pos = 0
        for i in range(count):
            while True:
                while pos < len(buf) and buf[pos] in (0x0A, 0x0D, 0x20):  # newline after the last vector
                    pos += 1
                space = buf.find(b" ", pos)
                if space != -1 and space + 1 + nbytes <= len(buf):
                    break
                more = f.read(_CHUNK)
                if not more:
                    raise InputError(
                        f"--word-vectors {path}: ended after {i} of {count} words; expected {count} words "
                        f"of {dim} float32 values each (as its header says): wrong dimension or truncated"
                    )
                bar.update(len(more))
                buf = buf[pos:] + more
                pos = 0
            name = wanted.get(buf[pos:space])
            if name is not None:
                vectors[name] = np.frombuffer(buf, dtype="<f4", count=dim, offset=space + 1).astype(np.float32)
            pos = space + 1 + nbytes
        rest = buf[pos:].strip() + f.read(64).strip()
        if rest:
            raise InputError(f"--word-vectors {path}: data left after {count} words of {dim} values; "
                             "expected exactly what the header says: wrong dimension?")
    return WordTable(path, dim, vectors, "word2vec-binary")


def read_word_vectors(path: str | Path, words: Iterable[str]) -> WordTable:
    """Stream `path` once and return the vectors of `words` that it holds (others are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--word-vectors {path}: no such file; expected a GloVe / word2vec text file, "
                         "a word2vec .bin file or an .npz of attribute vectors")
    wanted = {w.encode("utf-8"): w for w in words}
    if path.suffix.lower() == ".bin":
        return _read_binary(path, wanted)
    return _read_text(path, wanted)


def read_vector_npz(path: str | Path, attribute_names: list[str]) -> np.ndarray:
    """Ready attribute vectors: key `vectors` [A, D], optional `names` [A] checked against ours."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--word-vectors {path}: no such file; expected an .npz with 'vectors' [A, D]")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "vectors" not in z.files:
                raise InputError(f"--word-vectors {path}: no 'vectors' array (has {sorted(z.files)}); "
                                 "expected 'vectors' [attributes, dim] and optionally 'names'")
            vectors = np.asarray(z["vectors"])
            names = [str(n) for n in z["names"]] if "names" in z.files else None
    except (ValueError, OSError) as err:
        raise InputError(f"--word-vectors {path}: not a readable .npz ({err})") from None
    num = len(attribute_names)
    if vectors.ndim != 2 or vectors.shape[0] != num or vectors.shape[1] < 1:
        raise InputError(f"--word-vectors {path}: 'vectors' has shape {vectors.shape}, expected ({num}, D): "
                         f"one row per attribute of the dataset")
    if not np.issubdtype(vectors.dtype, np.number) or not np.isfinite(vectors).all():
        raise InputError(f"--word-vectors {path}: 'vectors' must hold finite numbers")
    if names is not None:
        if len(names) != num:
            raise InputError(f"--word-vectors {path}: 'names' has {len(names)} entries, expected {num}")
        ours = [" ".join(n.split()) for n in attribute_names]
        theirs = [" ".join(n.split()) for n in names]
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            if a != b:
                raise InputError(f"--word-vectors {path}: names[{i}] is {b!r} but the dataset's attribute {i} "
                                 f"is {a!r}; expected the rows in the dataset's attribute order")
    return vectors.astype(np.float32)
