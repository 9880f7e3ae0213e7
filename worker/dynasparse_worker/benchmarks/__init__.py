"""Benchmarks that drive a running server from outside (`dynasparse bench --serve`)."""
