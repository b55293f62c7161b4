"""The processes that wire the hub core and federation together: the server and its gRPC/HTTP
adapters, the CLI, the dashboard, the demo and the reference sensor. Nothing below node/app imports it."""
