"""clbench: a continual-learning benchmark harness (one trainer, plug-in methods, one schema)."""

__version__ = "0.1.0"
