"""Metrics as a test reads them: through the registry, as Prometheus would scrape them."""

from __future__ import annotations

from sipguard.metrics import Metrics


def sample(metrics: Metrics | None, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with ``labels`` (its exported name: a counter's
    ends in ``_total``), read through ``registry.get_sample_value``; an error if absent."""
    assert metrics is not None, "the core was given no Metrics"
    value = metrics.registry.get_sample_value(name, labels or None)
    assert value is not None, f"no sample {name} {labels or ''}"
    return value
