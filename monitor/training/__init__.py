"""Training the embedded guard: corpus composition, generators of benign text, training-data adapters and
the fit itself. Serving never imports this package (the worker loads the trained files only)."""

from __future__ import annotations

from monitor.training.fit import train

__all__ = ["train"]
