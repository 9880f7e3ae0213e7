"""Where `server.runtime` still imports the synthetic plan from; it lives in `gating.synthetic_plan`.

Kept only so the server's import keeps working until it imports `gating.synthetic_plan` itself;
nothing else may import this module.
"""

from dynasparse_worker.gating.synthetic_plan import synthetic_calibration

__all__ = ["synthetic_calibration"]
