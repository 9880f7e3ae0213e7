"""The dynasparse worker: gated model, inference engine, OpenAI-compatible API, gRPC control endpoint.

Runs in every worker pod (`dynasparse serve`). Never imports kopf, the Kubernetes client or the
operator; talks to the operator only through `dynasparse_proto`.
"""
