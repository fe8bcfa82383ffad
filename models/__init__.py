"""Pure PyTorch model code. Nothing here imports from the harness."""

from models.dazle import DAZLE, DAZLEOutput

__all__ = ["DAZLE", "DAZLEOutput"]
