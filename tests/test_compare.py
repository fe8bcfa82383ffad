"""The compare CLI: every model x seed through harness.trainer.fit, a mean +- std table, bad input exits 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from harness.compare import default_hyperparameters, run
from harness.config import TrainConfig
from harness.trainer import fit


def test_compare_table_json_and_markdown_file(tmp_path, capsys):
    out_file = tmp_path / "table.md"
    code = run(["--dataset", "synthetic", "--models", "eszsl,devise,dazle", "--seeds", "2", "--epochs", "1",
                "--threads", "1", "--markdown", str(out_file), "--json"])
    assert code == 0
    stdout = capsys.readouterr().out
    summary = json.loads(stdout.strip().splitlines()[-1])
    table = out_file.read_text()
    assert table in stdout  # the file holds exactly the printed table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split("|")[1].strip() for r in rows] == ["eszsl", "devise", "dazle"]
    assert "| model | ZSL T1 | acc_s | acc_u | H | AUSUC |" in table

    models = summary["models"]
    # Each cell is the mean +- std of the per-seed values, in percent.
    for row in rows:
        name = row.split("|")[1].strip()
        cells = [c.strip() for c in row.split("|")[2:7]]
        for cell, key in zip(cells, ["zsl_top1", "acc_seen", "acc_unseen", "H", "ausuc"], strict=True):
            values = np.array(models[name][key]["values"])
            assert len(values) == 2
            assert cell == f"{100 * values.mean():.1f} +- {100 * values.std(ddof=1):.1f}"
    # ESZSL is a closed form on one ordered pass: the seed cannot change it.
    assert models["eszsl"]["H"]["std"] == 0.0
    # The runs are real final-stage fits at the search-space defaults.
    devise = models["devise"]
    assert devise["hyperparameters"] == default_hyperparameters("devise")
    again = fit(TrainConfig(model="devise", seed=1, epochs=1, **devise["hyperparameters"]))
    assert again.metrics["test_H"] == pytest.approx(devise["H"]["values"][1])


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--models", "eszsl,nope"], "--models"),
        (["--dataset", "nope"], "--dataset"),
        (["--seeds", "0"], "--seeds"),
        (["--epochs", "0"], "--epochs"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, needle):
    out_file = tmp_path / "table.md"
    assert run([*args, "--markdown", str(out_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not out_file.exists() and list(tmp_path.iterdir()) == []


def test_markdown_into_a_missing_directory_is_bad_input(tmp_path, capsys):
    assert run(["--models", "eszsl", "--seeds", "1", "--markdown", str(tmp_path / "no" / "t.md")]) == 2
    assert "--markdown" in capsys.readouterr().err


def test_module_entry_point_exits_2_on_unknown_model():
    proc = subprocess.run([sys.executable, "-m", "harness.compare", "--models", "bogus"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--models" in proc.stderr and "bogus" in proc.stderr
