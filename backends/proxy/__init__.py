"""Network conditions for benchmarks and chaos tests.

* :class:`LatencyProxy` (``latency.py``): a latency-adding, request-counting TCP proxy;
  ``python -m backends.proxy HOST:PORT --latency-ms N``.
* ``FaultProxy`` (``faults.py``, imported from there: ``from backends.proxy.faults import
  FaultProxy``): an HTTP/1.1 proxy that injects seeded faults per request — 503/500/429,
  resets, lost answers after the write landed, held answers, truncated answers — and counts
  them by kind; ``python -m backends.proxy.faults HOST:PORT --rate 0.05 --seed 1``, and the
  ``faulty`` fixture of ``tests/fixtures/faults.py``.  (Not imported here, so that ``python -m
  backends.proxy.faults`` runs the module once.)
"""

from backends.proxy.latency import LatencyProxy, ProxyStats, remote_reset, remote_stats

__all__ = ["LatencyProxy", "ProxyStats", "remote_reset", "remote_stats"]
