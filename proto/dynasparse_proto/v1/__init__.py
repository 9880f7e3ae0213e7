"""Generated stubs of v1/*.proto (package dynasparse.v1); see scripts/gen_proto.py."""
