"""The delivery queue: Enqueue accepts durably, a worker delivers at Trengo's pace.

The queue's RPCs are served by sidecar/api/queue_service.py.
"""
