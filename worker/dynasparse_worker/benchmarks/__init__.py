"""Benchmarks: the engine against HF and the roofline (`engine_bench`), the gated engine per budget
(`gated_bench`, `budget_bench`), `dynasparse serve` driven from outside (`serve_bench`,
`stream_client`) and the server's host cost per token (`host_cost`). Run by `dynasparse bench` and
as scripts; nothing in the engine, the gated model, the kernels or the models imports them.
"""
