"""Helpers every kind of test shares: the in-process sidecar and simulator (harness), processes, PostgreSQL,
the fleet, the queue, TLS files, metrics, logs, traces, grpcurl. Nothing here is collected as a test."""
