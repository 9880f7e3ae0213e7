"""The wire contract between operator and workers: generated stubs of proto/dynasparse_proto/v1/*.proto.

Both sides import from here and from nowhere else of each other's. Regenerate with
`python scripts/gen_proto.py`; never edit the generated files by hand.
"""

from dynasparse_proto.v1 import control_pb2, control_pb2_grpc

__all__ = ["control_pb2", "control_pb2_grpc"]
