"""The Trengo sidecar. Read it from the request down; each package imports only the ones below it.

``api`` (the gRPC surface and the running process), ``queue`` (durable asynchronous delivery),
``observe`` (metrics, traces, logs), ``delivery`` (caches, contacts, follow-ups, idempotency),
``trengo_api`` (the HTTP client for Trengo), ``config``, ``plan`` (pure: events, filters, templates,
transform), ``state`` (the storage seam), then the shared kernel ``errors`` and ``deadline``.
``simulator`` stands apart: a stand-in for Trengo. pyproject.toml's [tool.importlinter] holds the line.
"""
