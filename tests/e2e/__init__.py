"""The running sidecar end to end: real gRPC calls, processes, clients, the simulator as Trengo."""
