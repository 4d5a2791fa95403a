"""The HTTP ingest: RudderStack's and Segment's SDKs post batches here, into the durable queue.

Only the API layer (the running process, sidecar/app.py) imports this package. It may import the
queue (sidecar/queue/), the plan (events, filters), the observe modules and the shared kernel.
"""
