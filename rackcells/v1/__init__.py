"""Generated protobuf and gRPC code for the rackcells.v1 API. Regenerate with scripts/gen-protos."""
