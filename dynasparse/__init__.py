"""dynasparse: resource-adaptive LLM inference on Kubernetes through dynamic sparsity.

This top-level package is the application layer: the `dynasparse` command line (cli.py), the local
demo and the development cluster. It may import both sides; `dynasparse_worker` (model server) and
`dynasparse_operator` (kopf operator) never import each other and meet only in `dynasparse_proto`.
"""

__version__ = "0.1.0"
