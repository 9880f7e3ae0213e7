"""Suite-wide pytest settings: offline Hugging Face, and Triton's CPU interpreter without a GPU.

TRITON_INTERPRET must be set before any module decorates a Triton kernel, and any test file may be
the first to import one (the engine and the kernels both do), so it is set here, once, for the
whole run, and only where no CUDA device exists.
"""

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if shutil.which("nvidia-smi") is None and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
