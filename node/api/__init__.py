"""Generated gRPC/protobuf code for the `smartregion.v1` contract in proto/.

Do not edit node/api/v1/ by hand: run `make proto` (python -m node.api.codegen).
"""
