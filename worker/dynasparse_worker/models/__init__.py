"""Model loading for the worker: `load_model(spec)` → `LoadedModel` (HF model + tokenizer + fingerprint).

Called by `dynasparse eval/calibrate/serve/bench` and by the engine. See `loading.py`.
"""

from dynasparse_worker.models.loading import LoadedModel, cache_root, load_model

__all__ = ["LoadedModel", "cache_root", "load_model"]
