"""Reproduce the paper with one command: `python -m harness.reproduce table2|table3|table4|fig4|protocol`.

Each command fits every configuration x seed of the table as a Ray task (local Ray by default,
`--address` for a cluster), always at the final stage (trainval -> test: the paper's settings
are fixed, nothing is selected), prints the published numbers beside ours as a Markdown table,
and records the grid in MLflow: one parent run, one child run per configuration and seed, the
table (CSV + Markdown) and plots as the parent's artifacts. `--tuned SOURCE` adds the best
configuration of a finished search beside the paper's settings. `protocol` is a diagnostic (see
harness/reproduce/protocol.py): it measures what selecting on test would add to the same fits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from harness import tracking
from harness.cluster import check_address, check_cluster_capacity
from harness.config import add_resident_option
from harness.data.base import GZSLDataset
from harness.data.registry import list_datasets, load_dataset, missing_data_message, prepare_command, stand_in
from harness.errors import InputError, OneLineArgumentParser, run_cli
from harness.reproduce import fig4, paper, tables
from harness.reproduce.runner import ClusterOptions, GridTracker, Outcome, run_grid, start_ray
from harness.reproduce.tuned import TunedConfig, apply_tuned, load_tuned, pick
from harness.search.settings import absolute

TARGETS = {
    "table2": ("GZSL of ESZSL, DeViSE and DAZLE on CUB, SUN, AWA2", "cub,sun,awa2", 3),
    "table3": ("DAZLE's ZSL accuracy on CUB, standard vs proposed split", "cub-ss,cub", 3),
    "table4": ("DAZLE's ablation on DeepFashion (seven configurations)", "deepfashion", 3),
    "fig4": ("Figure 4 (DeepFashion): H vs share of attributes (three series), accuracies vs lambda, the paper's "
             "statements checked (PNG plots)", "deepfashion", 1),
    "protocol": ("diagnostic: what selecting on test adds (sealed last step vs best test H vs shift swept on "
                 "test), DAZLE", "cub", 3),
}


def get_args_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m harness.reproduce",
                                description="Reproduce the DAZLE paper's tables and Figure 4 beside the published numbers.")
    sub = p.add_subparsers(dest="target", required=True, metavar="{table2,table3,table4,fig4,protocol}")
    for name, (summary, dataset, seeds) in TARGETS.items():
        sp = sub.add_parser(name, help=summary, description=summary)
        multi = name in ("table2", "table3")
        sp.add_argument("--dataset", default=dataset, help=(
            f"default {dataset}. Comma list of PAPER=OURS items or bare names: synthetic maps each paper "
            "dataset to its own stand-in (cub -> synthetic-cub, ...); a registered stand-in picks its dataset; any "
            "other name stands in for all of them" if multi else
            f"default {dataset}; e.g. {stand_in(dataset) or 'synthetic'} for the synthetic stand-in"))
        sp.add_argument("--seeds", type=int, default=seeds, help=f"seeds 0..N-1 per configuration (default {seeds})")
        sp.add_argument("--epochs", type=int, default=None, help="override the dataset's default (paper) epochs")
        sp.add_argument("--tuned", action="append", default=[], metavar="SOURCE",
                        help="also run the best configuration of a finished search: its storage folder, a JSON "
                             "file, or its MLflow parent run id (repeatable)")
        sp.add_argument("--address", default=None, help="join this Ray cluster (HOST:PORT or auto); default: local Ray")
        sp.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
        sp.add_argument("--cpus-per-trial", type=float, default=1.0)
        sp.add_argument("--gpus-per-trial", type=float, default=0.0, help="> 0 trains on CUDA (fractions allowed)")
        add_resident_option(sp)
        sp.add_argument("--tracking-uri", default=None, help="MLflow store (default $MLFLOW_TRACKING_URI or ./mlflow.db)")
        sp.add_argument("--experiment", default=tracking.reproduce_experiment(name),
                        help=f"MLflow experiment (default {tracking.reproduce_experiment(name)})")
        sp.add_argument("--out", default=None, help="also write the table / plots into this folder")
        sp.add_argument("--data-root", default=None)
        sp.add_argument("--cache-dir", default=None, help="feature caches (default $HARNESS_CACHE or ./cache)")
        sp.add_argument("--word-vectors", default=None)
        sp.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
        sp.add_argument("--json", action="store_true", help="print the results as JSON on the last line")
        if name == "fig4":
            sp.add_argument("--k-fractions", default=None, help=(
                "comma list of shares of the attributes to keep, in (0, 1] (default "
                f"{','.join(f'{x:g}' for x in fig4.DEFAULT_K_FRACTIONS)}: the paper's 300 of 1,000 is 0.3)"))
            sp.add_argument("--k-grid", default=None, help="comma list of attribute counts k (overrides --k-fractions)")
            sp.add_argument("--lambda-grid", default=None,
                            help=f"comma list of lambdas (default {','.join(f'{x:g}' for x in fig4.DEFAULT_LAMBDAS)})")
    return p


# ---------------------------------------------------------------- checks before anything starts


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def preflight(names: list[str], common: dict) -> dict[str, GZSLDataset]:
    """Load every dataset once in the driver: missing caches fail here, all named in one line,
    before Ray or MLflow start."""
    loaded, missing = {}, {}
    for name in dict.fromkeys(names):
        if name not in list_datasets():
            load_dataset(name)  # raises the registry's error listing the known names
        try:
            loaded[name] = load_dataset(name, data_root=common.get("data_root"), cache_dir=common.get("cache_dir"),
                                        word_vectors=common.get("word_vectors"), data_seed=common.get("data_seed", 0))
        except (InputError, OSError) as err:
            if prepare_command(name) is None:
                raise
            missing[name] = _one_line(err)
    if missing:
        raise InputError(missing_data_message(list(missing), missing))
    return loaded


def _check_args(args: argparse.Namespace) -> None:
    if args.seeds < 1:
        raise InputError(f"--seeds: got {args.seeds}, expected at least 1")
    if args.epochs is not None and args.epochs < 1:
        raise InputError(f"--epochs: got {args.epochs}, expected at least 1")
    if args.cpus_per_trial <= 0:
        raise InputError(f"--cpus-per-trial: got {args.cpus_per_trial}, expected > 0")
    if args.gpus_per_trial < 0:
        raise InputError(f"--gpus-per-trial: got {args.gpus_per_trial}, expected >= 0")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise InputError(f"--num-cpus: got {args.num_cpus}, expected at least 1")
    if args.address and args.num_cpus:
        raise InputError("--num-cpus: only for the local Ray; a cluster joined with --address has its own")
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out}: is a file; expected a folder for the tables")
        existing = next(p for p in (out, *out.parents) if p.exists())
        if not os.access(existing, os.W_OK):
            raise InputError(f"--out {out}: {existing} is not writable; expected a writable folder")


# ---------------------------------------------------------------- outputs


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _publish(files: list[Path], tracker: GridTracker, out: str | None) -> list[Path]:
    """Log the files to the parent run and, with --out, copy them there (each replaced atomically)."""
    tracker.log_files([str(f) for f in files])
    if not out:
        return []
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for f in files:
        tmp = target / f".{f.name}.tmp"
        shutil.copyfile(f, tmp)
        os.replace(tmp, target / f.name)
        written.append(target / f.name)
    return written


def _timing_line(trials: int, fits: int, seconds: float, outcomes: dict, cluster: ClusterOptions) -> str:
    fit_seconds = sum(o.seconds for o in outcomes.values())
    where = f"Ray cluster {cluster.address}" if cluster.address else f"local Ray ({cluster.num_cpus or os.cpu_count()} CPUs)"
    return (f"{trials} trials ({fits} distinct fits, {fit_seconds:.0f} s of fitting) in {seconds:.0f} s wall "
            f"on {where}")


# ---------------------------------------------------------------- the commands


def _tables(args, common: dict, tuned: list[TunedConfig]) -> tuple[tables.TableSpec, list[str]]:
    if args.target == "table2":
        spec = tables.table2_spec(tables.parse_dataset_map(args.dataset, tables.TABLE2_DATASETS), common, tuned)
    elif args.target == "table3":
        spec = tables.table3_spec(tables.parse_dataset_map(args.dataset, tables.TABLE3_DATASETS), common, tuned)
    else:
        if "," in args.dataset or "=" in args.dataset:
            raise InputError(f"--dataset {args.dataset}: table4 takes one dataset name")
        spec = tables.table4_spec(args.dataset, common, tuned)
    return spec, [r.config.dataset for r in spec.rows if r.config is not None]


def run_table(args, common, tuned, cluster, uri, started) -> tuple[str, dict, int]:
    spec, datasets = _tables(args, common, tuned)
    preflight(datasets, common)
    trials = spec.trials(args.seeds)
    tracker = GridTracker(uri, args.experiment, f"reproduce-{args.target}", _parent_params(args, trials), {
        "reproduce.table": args.target, "dataset": ",".join(dict.fromkeys(datasets))})
    with tracker.running():
        outcomes = run_grid(trials, cluster, tracker, progress=not args.no_progress)
        results = tables.aggregate(spec, outcomes, args.seeds)
        text = tables.render_markdown(spec, results)
        records = tables.table_records(spec, results)
        payload: dict = {"table": args.target, "rows": records}
        claims_text = ""
        if args.target == "table4":
            checks = tables.check_claims(results, paper.table4_claims())
            claims_text = tables.render_claims(checks, args.dataset, args.seeds)
            payload["claims"] = tables.claims_records(checks)
        seconds = time.perf_counter() - started
        footer = _timing_line(len(trials), len(outcomes), seconds, outcomes, cluster)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            files = [_write(folder, f"{args.target}.md", text + ("\n" + claims_text if claims_text else "")),
                     _write(folder, f"{args.target}.csv", tables.render_csv(records))]
            if "claims" in payload:
                files.append(_write(folder, f"{args.target}_claims.csv", tables.render_csv(payload["claims"])))
            files.append(_write(folder, f"{args.target}.json", json.dumps(payload, indent=1)))
            written = _publish(files, tracker, args.out)
        tracker.log_metrics({**_row_metrics(records, spec.metrics), "wall_seconds": seconds})
        failures = sum(not o.ok for o in outcomes.values())
    payload.update(_summary(tracker, uri, seconds, outcomes, written))
    report = text + ("\n" + claims_text if claims_text else "") + "\n" + footer + "\n" + _where(tracker, uri, written)
    return report, payload, failures


def _row_metrics(records: list[dict], metrics: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for rec in records:
        for m in metrics:
            value = rec.get(f"{m}_ours_mean")
            if value is not None:
                # metric/row: the UI charts each metric's rows together (H/row1 ... H/row7)
                out[f"{m}/{'row' + rec['row'] if str(rec['row']).isdigit() else rec['row']}"] = float(value)
    return out


def _parent_params(args, trials) -> dict:
    return {
        "target": args.target, "dataset": args.dataset, "seeds": args.seeds,
        "epochs": "default" if args.epochs is None else args.epochs, "trials": len(trials),
        "address": args.address or "local", "cpus_per_trial": args.cpus_per_trial,
        "gpus_per_trial": args.gpus_per_trial, "tuned": ";".join(args.tuned) or "none",
        "stage": "final", "git_commit": tracking.git_commit(),
        **({"k_grid": args.k_grid or "default", "k_fractions": args.k_fractions or "default",
            "lambda_grid": args.lambda_grid or "default"}
           if args.target == "fig4" else {}),
    }


def _summary(tracker: GridTracker, uri: str, seconds: float, outcomes: dict[object, Outcome], written) -> dict:
    return {"parent_run_id": tracker.parent.run_id, "tracking_uri": uri, "wall_seconds": round(seconds, 2),
            "fits": len(outcomes), "failed_fits": sum(not o.ok for o in outcomes.values()),
            "out_files": [str(p) for p in written]}


def _where(tracker: GridTracker, uri: str, written: list[Path]) -> str:
    lines = [f"MLflow: parent run {tracker.parent.run_id} in {uri}; to browse: {tracking.ui_command(uri, tracker.exp_id)}"]
    if written:
        lines.append("written: " + ", ".join(str(p) for p in written))
    return "\n".join(lines) + "\n"


def run_fig4(args, common, tuned, cluster, uri, started) -> tuple[str, dict, int]:
    if "," in args.dataset or "=" in args.dataset:
        raise InputError(f"--dataset {args.dataset}: fig4 takes one dataset name")
    k_grid = fig4.parse_grid(args.k_grid, "--k-grid", int)
    fractions = fig4.parse_grid(args.k_fractions, "--k-fractions", float)
    if fractions and not all(0 < f <= 1 for f in fractions):
        raise InputError(f"--k-fractions {args.k_fractions}: expected shares in (0, 1]")
    lambdas = fig4.parse_grid(args.lambda_grid, "--lambda-grid", float)
    dataset = preflight([args.dataset], common)[args.dataset]
    num_attributes = int(dataset.class_attributes.shape[1])
    base = tables.base_config("dazle", args.dataset, common)
    chosen = pick(tuned, "dazle", args.dataset)
    k_grid = k_grid or fig4.default_k_grid(num_attributes, tuple(fractions or fig4.DEFAULT_K_FRACTIONS))
    spec = fig4.Fig4Spec(args.dataset, num_attributes, k_grid,
                         lambdas or list(fig4.DEFAULT_LAMBDAS), base,
                         None if chosen is None else apply_tuned(base, chosen))
    trials = spec.trials(args.seeds)
    tracker = GridTracker(uri, args.experiment, "reproduce-fig4", _parent_params(args, trials),
                          {"reproduce.table": "fig4", "dataset": args.dataset})
    with tracker.running():
        outcomes = run_grid(trials, cluster, tracker, progress=not args.no_progress)
        records = fig4.collect(spec, outcomes, args.seeds)
        statements = fig4.check_statements(records)
        text = fig4.render_markdown(records, args.dataset) + "\n" + fig4.render_statements(
            statements, args.dataset, args.seeds)
        seconds = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            files = fig4.draw(records, folder, args.dataset, args.seeds)
            files += [_write(folder, "fig4.md", text), _write(folder, "fig4.csv", fig4.render_csv(records)),
                      _write(folder, "fig4.json", json.dumps({"table": "fig4", "points": records, "statements": [
                          asdict(st) for st in statements]}, indent=1))]
            written = _publish(files, tracker, args.out)
        tracker.log_metrics({"wall_seconds": seconds})
        failures = sum(not o.ok for o in outcomes.values())
    payload = {"table": "fig4", "points": records, "statements": [asdict(st) for st in statements],
               **_summary(tracker, uri, seconds, outcomes, written)}
    footer = _timing_line(len(trials), len(outcomes), seconds, outcomes, cluster)
    plots = "plots: fig4_attributes.png, fig4_lambda.png (artifacts of the parent run"
    plots += ", and in --out)" if written else ")"
    return text + "\n" + plots + "\n" + footer + "\n" + _where(tracker, uri, written), payload, failures


def run_protocol(args, common, tuned, cluster, uri, started) -> tuple[str, dict, int]:
    """The diagnostic of harness/reproduce/protocol.py: the only command that looks at test more than once."""
    from harness.reproduce import protocol  # torch only when this command runs: --help stays light

    if "," in args.dataset or "=" in args.dataset:
        raise InputError(f"--dataset {args.dataset}: protocol takes one dataset name")
    if not len(preflight([args.dataset], common)[args.dataset].test_seen_loc):
        raise InputError(f"--dataset {args.dataset}: no test-seen images (a ZSL-only split); protocol measures GZSL H")
    base = tables.base_config("dazle", args.dataset, common)
    chosen = pick(tuned, "dazle", args.dataset)
    if tuned and chosen is None:
        raise InputError(f"--tuned: no DAZLE configuration for {args.dataset} in {', '.join(args.tuned)}")
    tuned_config = None if chosen is None else apply_tuned(base, chosen)
    fits = protocol.trials(base, args.seeds)
    tuned_fits = [] if tuned_config is None else protocol.trials(tuned_config, args.seeds, "tuned")
    tracker = GridTracker(uri, args.experiment, "reproduce-protocol", _parent_params(args, fits + tuned_fits),
                          {"reproduce.table": "protocol", "dataset": args.dataset, "diagnostic": "looks at test"})
    with tracker.running():
        outcomes = run_grid(fits, cluster, tracker, progress=not args.no_progress, task=protocol.protocol_task)
        tuned_outcomes = run_grid(tuned_fits, cluster, tracker, progress=not args.no_progress) if tuned_fits else {}
        readings = protocol.read_outcomes(base, args.seeds, outcomes, tuned_config, tuned_outcomes)
        text = protocol.render_markdown(readings, args.dataset, args.seeds, protocol.schedule_text(args.dataset, outcomes),
                                        args.epochs)
        records = protocol.records(readings)
        seconds = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            files = [protocol.draw(outcomes, base, args.seeds, folder, args.dataset),
                     _write(folder, "protocol.md", text), _write(folder, "protocol.csv", tables.render_csv(records)),
                     _write(folder, "protocol.json", json.dumps({"table": "protocol", "rows": records}, indent=1))]
            written = _publish(files, tracker, args.out)
        tracker.log_metrics({**{f"{r['reading']}.{m}": r[f"{m}_mean"] for r in records for m in protocol.METRICS
                                if r[f"{m}_mean"] is not None},
                             **{f"{r['reading']}.H_inflation": r["H_inflation_mean"] for r in records
                                if r["H_inflation_mean"] is not None}, "wall_seconds": seconds})
        all_outcomes = {**outcomes, **tuned_outcomes}
        failures = sum(not o.ok for o in all_outcomes.values())
    payload = {"table": "protocol", "rows": records, **_summary(tracker, uri, seconds, all_outcomes, written)}
    footer = _timing_line(len(fits) + len(tuned_fits), len(all_outcomes), seconds, all_outcomes, cluster)
    plot = "plot: protocol_test_h.png (artifact of the parent run" + (", and in --out)" if written else ")")
    return text + "\n" + plot + "\n" + footer + "\n" + _where(tracker, uri, written), payload, failures


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    _check_args(args)
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracking.check_tracking(uri)
    tuned = [c for source in args.tuned for c in load_tuned(source, uri)]
    if args.address:  # a plain TCP check first: an unreachable cluster is one line, not a hanging ray.init
        check_address(args.address)
    common = {"epochs": args.epochs, "data_root": absolute(args.data_root), "cache_dir": absolute(args.cache_dir),
              "word_vectors": absolute(args.word_vectors), "resident": args.resident}
    cluster = ClusterOptions(args.address, args.num_cpus, args.cpus_per_trial, args.gpus_per_trial)
    runner = {"fig4": run_fig4, "protocol": run_protocol}.get(args.target, run_table)
    # Ray first, and a trial that no node could ever host is an error now, not an endless wait.
    started_ray = start_ray(cluster)
    try:
        check_cluster_capacity(cluster, args.address or "the local Ray")
        report, payload, failures = runner(args, common, tuned, cluster, uri, started)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    print(report, end="")
    if failures:
        print(f"{failures} fit(s) failed; their rows show 'failed' and their child runs are marked FAILED",
              file=sys.stderr)
    if args.json:
        print(json.dumps(payload))
    return 1 if failures else 0


def run(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return run_cli(lambda: main(args), "harness.reproduce")


if __name__ == "__main__":
    sys.exit(run())

