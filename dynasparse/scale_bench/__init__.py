"""`dynasparse scale-bench`: what one operator process costs as the number of control streams grows.

Simulated workers (`fleet.py`, many per process, each its own mTLS `dynasparse.v1.Control` server
on its own loopback address) face the operator's own control loops (`operator_side.py`: the
daemon's `ControlLoop` and `StreamPool`, without kopf and the API server) running in a child
process whose CPU time and memory are measured. `run.py` runs one level per stream count and
writes the table, JSON and a plot.
"""
