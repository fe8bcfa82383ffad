"""Dataset registry: every CLI resolves --dataset through here.

A dataset module registers a loader `fn(**options) -> GZSLDataset` under one or more names with
`register_dataset` (catalog.py); importing this module imports those modules, so the table is
full. Real datasets need files (`data_root`, `cache_dir`, ...) and name the command that
prepares them and the synthetic dataset that stands in for them; `synthetic*` need nothing.
Listing the names imports neither torch nor Ray (CLIs build their --help from it).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path

# Importing the dataset modules registers them.
from harness.data import real_datasets, synthetic_registry  # noqa: F401
from harness.data.base import GZSLDataset
from harness.data.catalog import ENTRIES, DatasetEntry, register_dataset
from harness.errors import InputError

__all__ = ["DatasetEntry", "UnknownDatasetError", "describe", "list_datasets", "load_dataset", "load_or_explain",
           "missing_data_message", "missing_inputs", "needs_files", "prepare_command", "register_dataset",
           "stand_in"]


class UnknownDatasetError(InputError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def list_datasets() -> list[str]:
    return sorted(ENTRIES)


def _entry(name: str) -> DatasetEntry:
    if name not in ENTRIES:
        raise UnknownDatasetError(f"--dataset: unknown dataset {name!r}; expected one of {', '.join(list_datasets())}")
    return ENTRIES[name]


def describe(name: str) -> str:
    entry = ENTRIES.get(name)
    return entry.description if entry else ""


def needs_files(name: str) -> bool:
    """Whether dataset `name` reads files (a data root, a feature cache) rather than generating itself."""
    return _entry(name).needs_files


def stand_in(name: str) -> str | None:
    """The synthetic dataset to try in place of real dataset `name`; None for unknown or synthetic names."""
    entry = ENTRIES.get(name)
    return entry.stand_in if entry else None


def prepare_command(name: str) -> str | None:
    """The command that builds the feature cache `name` reads; None for unknown or synthetic names."""
    entry = ENTRIES.get(name)
    return entry.prepare if entry else None


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _grouped(pairs: list[tuple[str, str]], fmt: str) -> str:
    """`fmt` of each distinct value, followed by the names that share it: "`a` (x, y), `b` (z)"."""
    by_value: dict[str, list[str]] = {}
    for name, value in pairs:
        by_value.setdefault(value, []).append(name)
    return ", ".join(f"{fmt.format(value)} ({', '.join(names)})" for value, names in by_value.items())


def missing_data_message(names: list[str], reason: str | Mapping[str, str]) -> str:
    """One line for real datasets whose data or feature cache is missing: for each, why, the
    command that prepares it and its synthetic stand-in.

    `reason` is one reason for all of `names` or a reason per name. For a single name the line
    reads "--dataset cub: data or feature cache not available (REASON); prepare it with `CMD`
    (add --cache-dir DIR to choose where), or try the synthetic stand-in `--dataset synthetic`".
    Raises ValueError for a name without a prepare command (unknown or synthetic).
    """
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("missing_data_message: no dataset names")
    unprepared = [n for n in names if prepare_command(n) is None]
    if unprepared:
        raise ValueError(f"missing_data_message: {', '.join(unprepared)} read no files; expected real datasets "
                         f"({', '.join(n for n in list_datasets() if ENTRIES[n].needs_files)})")
    reasons = {n: _one_line(reason[n] if isinstance(reason, Mapping) else reason) for n in names}
    commands = [(n, str(prepare_command(n))) for n in names]
    stand_ins = [(n, stand_in(n) or "synthetic") for n in names]
    if len(names) == 1:
        (name,) = names
        return (f"--dataset {name}: data or feature cache not available ({reasons[name]}); prepare it with "
                f"`{commands[0][1]}` (add --cache-dir DIR to choose where), or try the synthetic stand-in "
                f"`--dataset {stand_ins[0][1]}`")
    if len(set(reasons.values())) == 1:
        why = next(iter(reasons.values()))
    else:
        why = "; ".join(f"{n}: {r}" for n, r in reasons.items())
    return (f"--dataset {','.join(names)}: data or feature cache not available ({why}); prepare them with "
            f"{_grouped(commands, '`{}`')} (add --cache-dir DIR to choose where), or try the synthetic stand-ins "
            f"{_grouped(stand_ins, '`--dataset {}`')}")


# Real datasets take tens of seconds to parse (DeepFashion's attribute file); a search runs many
# trials per worker process, so the last few loads are kept per process.
_LOADED: dict[tuple, GZSLDataset] = {}
_KEEP = 2


def load_dataset(name: str, **options) -> GZSLDataset:
    """Build the dataset `name` (memoised per process); options a loader does not take are ignored."""
    fn = _entry(name).loader
    params = inspect.signature(fn).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        options = {k: v for k, v in options.items() if k in params}
    key = (name, tuple(sorted((k, str(v)) for k, v in options.items())))
    if key not in _LOADED:
        while len(_LOADED) >= _KEEP:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = fn(**options)
    return _LOADED[key]


def missing_inputs(name: str, data_root: str | None = None, word_vectors: str | None = None) -> list[str]:
    """What real dataset `name` lacks before anything is read: every missing input, not only the first."""
    if prepare_command(name) is None:
        return []
    out = []
    if not data_root:
        out.append("--data-root not given, expected the folder of its files")
    elif not Path(data_root).expanduser().is_dir():
        out.append(f"--data-root {data_root}: no such folder, expected the folder of its files")
    if not word_vectors:
        out.append("--word-vectors not given, expected a file of attribute word vectors")
    elif not Path(word_vectors).expanduser().exists():
        out.append(f"--word-vectors {word_vectors}: no such file, expected a file of attribute word vectors")
    return out


def load_or_explain(name: str, **options) -> GZSLDataset:
    """load_dataset for a CLI: a real dataset without its files is one InputError line that names every
    missing input, the command that builds its cache and its synthetic stand-in (missing_data_message)."""
    _entry(name)  # an unknown name: the registry's own error, listing the known ones
    missing = missing_inputs(name, options.get("data_root"), options.get("word_vectors"))
    if missing:
        raise InputError(missing_data_message([name], "; ".join(missing)))
    try:
        return load_dataset(name, **options)
    except (InputError, OSError) as err:
        if prepare_command(name) is None:
            raise
        raise InputError(missing_data_message([name], _one_line(err))) from err
