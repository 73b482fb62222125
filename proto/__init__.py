"""proto: the gRPC API (.proto sources) and the modules generated from them.

The bottom layer: every other package may import it and it imports none of them. The generated
modules import each other as `from proto import ...` (scripts/genproto.sh regenerates them;
tests/unit/test_proto_fresh.py fails when they are stale).
"""
