"""Observability: Prometheus metrics, OpenTelemetry traces, logs. May import delivery, trengo_api, config,
plan, state and the kernel; it reads the running process only through what it is handed.
"""
