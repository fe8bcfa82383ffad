"""python -m harness.features extract | import-hdf5 | import-res101 | info: build and inspect caches."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import InputError, OneLineArgumentParser, run_cli
from harness.features.store import DTYPES, DamagedCacheError, parse_shard

if TYPE_CHECKING:
    from harness.features.extract import ExtractResult


def get_args_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m harness.features",
                                description="Build, import and inspect LMDB feature caches.")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("extract", help="ResNet-101 region features of a dataset's images")
    e.add_argument("--dataset", required=True, help="registered dataset name (cub, sun, awa2, deepfashion, ...)")
    e.add_argument("--data-root", required=True, help="the dataset's folder as distributed")
    e.add_argument("--image-list", default=None,
                   help="text file of image paths (one a line, relative to --data-root) in the dataset's "
                        "order; default: the dataset adapter's list")
    e.add_argument("--weights", default="imagenet", help="imagenet | none (random, smoke tests) | FILE (state dict)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--device", default=None, help="cpu | cuda (default: cuda when visible)")
    e.add_argument("--workers", type=int, default=4, help="image decoding processes")
    e.add_argument("--cache-dir", default=None, help="default: $HARNESS_CACHE or ./cache")
    e.add_argument("--skip-bad", action="store_true", help="skip unreadable images and list them in the metadata")
    e.add_argument("--shard", default=None, help="I/N: extract items i with i %% N == I into shard I")
    e.add_argument("--image-size", type=int, default=224)
    e.add_argument("--dtype", choices=DTYPES, default="float16")
    e.add_argument("--ray-address", default=None,
                   help="run --shards N shard tasks on this Ray cluster ('auto', HOST:PORT, or 'local')")
    e.add_argument("--shards", type=int, default=None, help="with --ray-address: number of shards (default 2)")

    for name, what in (("import-hdf5", "the authors' feature-map HDF5 (flat or DeepFashion layout)"),
                       ("import-res101", "xlsa17 res101.mat holistic features")):
        i = sub.add_parser(name, help=f"import {what}")
        i.add_argument("--dataset", required=True)
        i.add_argument("--file", required=True)
        i.add_argument("--cache-dir", default=None, help="default: $HARNESS_CACHE or ./cache")
        i.add_argument("--dtype", choices=DTYPES, default="float16")

    n = sub.add_parser("info", help="describe a cache folder (or every cache under a folder)")
    n.add_argument("path")
    n.add_argument("--verify", action="store_true", help="re-read every item: size, checksum, finite values")
    return p


def dataset_images(name: str, data_root: str, image_list: str | None) -> list[Path]:
    """The dataset's image paths in its image order (the item indices of the cache)."""
    root = Path(data_root)
    if not root.is_dir():
        raise InputError(f"--data-root {data_root}: not a directory")
    if image_list:
        listing = Path(image_list)
        if not listing.is_file():
            raise InputError(f"--image-list {image_list}: no such file")
        lines = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        return [(root / line) if not Path(line).is_absolute() else Path(line) for line in lines]
    try:
        from harness.data.adapters import read_dataset_files
    except ImportError:
        raise InputError(f"--dataset {name}: the dataset adapters (harness.data.adapters) are not installed; "
                         f"pass --image-list FILE") from None
    return [Path(p) for p in read_dataset_files(name, root).image_paths]


def _command(args: argparse.Namespace) -> str:
    parts = ["python -m harness.features extract", "--dataset", args.dataset, "--data-root", args.data_root]
    if args.image_list:
        parts += ["--image-list", args.image_list]
    parts += ["--weights", args.weights]
    if args.image_size != 224:
        parts += ["--image-size", str(args.image_size)]
    if args.dtype != "float16":
        parts += ["--dtype", args.dtype]
    if args.cache_dir:
        parts += ["--cache-dir", args.cache_dir]
    if args.skip_bad:
        parts.append("--skip-bad")
    return " ".join([parts[0], *(shlex.quote(str(x)) for x in parts[1:])])


def _report(result: ExtractResult, dataset: str) -> None:
    state = "complete" if result.complete else "incomplete"
    print(f"{dataset}: {result.written} items extracted, {result.already} already there, "
          f"{len(result.skipped)} skipped; {result.folder} ({state}, {result.seconds:.1f} s)")
    for index, why in sorted(result.skipped.items())[:20]:
        print(f"  skipped {index}: {why}")


def main_extract(args: argparse.Namespace) -> int:
    from harness.features.extract import ExtractOptions, extract

    paths = dataset_images(args.dataset, args.data_root, args.image_list)
    options = ExtractOptions(
        dataset=args.dataset, weights=args.weights, batch_size=args.batch_size, device=args.device,
        workers=args.workers, cache_dir=args.cache_dir, skip_bad=args.skip_bad,
        shard=parse_shard(args.shard) if args.shard else (0, 1), image_size=args.image_size,
        dtype=args.dtype, command=_command(args),
    )
    if args.ray_address:
        if args.shard:
            raise InputError("--shard: not with --ray-address, which runs every shard (set --shards N)")
        from harness.features.distributed import extract_on_ray

        results = extract_on_ray(paths, options, args.ray_address, args.shards or 2, Path(args.data_root))
        for result in results:
            _report(result, args.dataset)
        return 0 if all(r.complete for r in results) else 1
    if args.shards:
        raise InputError("--shards: only with --ray-address; run one process per shard with --shard I/N instead")
    result = extract(paths, options, Path(args.data_root))
    _report(result, args.dataset)
    return 0


def main_import(args: argparse.Namespace) -> int:
    from harness.features import importers

    fn = importers.import_hdf5 if args.command == "import-hdf5" else importers.import_res101
    command = (f"python -m harness.features {args.command} --dataset {shlex.quote(args.dataset)} "
               f"--file {shlex.quote(args.file)}"
               + (f" --cache-dir {shlex.quote(args.cache_dir)}" if args.cache_dir else "")
               + (f" --dtype {args.dtype}" if args.dtype != "float16" else ""))
    result = fn(args.file, args.dataset, cache_dir=args.cache_dir, dtype=args.dtype, command=command)
    print(f"{args.dataset}: {result.written} items imported, {result.already} already there, "
          f"{result.count} in all; {result.folder} ({'complete' if result.complete else 'incomplete'})")
    return 0


def main_info(args: argparse.Namespace) -> int:
    from harness.features.info import cache_folders, describe, open_for_info, verify

    folders = cache_folders(args.path)
    if not folders:
        raise InputError(f"{args.path}: no feature cache here (expected a cache folder or a folder of caches)")
    failed = 0
    for k, folder in enumerate(folders):
        if k:
            print()
        try:
            reader = open_for_info(folder)
        except DamagedCacheError as err:  # damage that stops even the key scan: report it, go on
            print(f"cache        {folder}\nPROBLEM      {err}\nverify       FAILED: the cache cannot be read")
            failed += 1
            continue
        try:
            print("\n".join(describe(reader)))
            if args.verify:
                problems = verify(reader)
                for line in problems[:50]:
                    print(f"PROBLEM      {line}")
                if len(problems) > 50:
                    print(f"PROBLEM      ... and {len(problems) - 50} more")
                print(f"verify       {'OK' if not problems else f'{len(problems)} problems'}: "
                      f"{reader.stored} items re-read")
                failed += bool(problems)
        finally:
            reader.close()
    return 1 if failed else 0


def main(args: argparse.Namespace) -> int:
    if args.command == "extract":
        return main_extract(args)
    if args.command in ("import-hdf5", "import-res101"):
        return main_import(args)
    return main_info(args)


def run(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return run_cli(lambda: main(args), "harness.features")


if __name__ == "__main__":
    sys.exit(run())
