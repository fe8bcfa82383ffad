"""Reproduce the paper's tables and Figure 4 beside the published numbers.

`python -m harness.reproduce table2|table3|table4|fig4|protocol` (the CLI in `__main__`). The modules:
`paper` (the published numbers, read from harness/paper/*.csv), `runner` (the grid of fits on
Ray and its MLflow runs), `tables` (Tables 2-4: rows, aggregation, rendering, Table 4's claims),
`fig4` (Figure 4's sweeps and the paper's statements about it), `tuned` (a finished search's best
configuration, `--tuned`), and `protocol`, a diagnostic and the only code that looks at test more
than once (what selecting on test adds; nothing outside the CLI may import it).
Nothing is imported here, so `--help` stays light.
"""
