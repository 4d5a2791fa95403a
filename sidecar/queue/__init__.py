"""The delivery queue: Enqueue accepts durably, a worker delivers at Trengo's pace (see service.py)."""
