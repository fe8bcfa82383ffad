"""Search-and-benchmark harness for fine-grained generalized zero-shot learning."""

__version__ = "0.1.0"
