"""Benchmarks: the engine against HF and the roofline (`engine_bench`), the gated engine per budget
(`gated_bench`, `budget_bench`), and `dynasparse serve` driven from outside (`serve_bench`,
`stream_client`). Run by `dynasparse bench`; nothing in the engine or the gated model imports them.
"""
