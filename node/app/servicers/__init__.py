"""gRPC servicers: translate between protobuf messages and domain calls, nothing more."""
