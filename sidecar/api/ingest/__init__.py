"""The HTTP ingest: RudderStack's and Segment's SDKs post batches here, into the durable queue.

Part of the API layer: the running process (app.py) starts it beside the gRPC server, and it hands
each batch to the queue's service (queue_service.py) in one transaction.
"""
