"""Network conditions for benchmarks: a latency-adding, request-counting TCP proxy."""

from backends.proxy.latency import LatencyProxy, ProxyStats, remote_reset, remote_stats

__all__ = ["LatencyProxy", "ProxyStats", "remote_reset", "remote_stats"]
