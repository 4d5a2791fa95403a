"""An event's status as the queue's read RPCs answer it (GetDelivery, ListDeliveries, WatchDeliveries):
the store's states as DeliveryState, a Job or a Change as a DeliveryStatus, and ListDeliveries' pages."""

from __future__ import annotations

from google.protobuf import json_format, timestamp_pb2

from trengo.sidecar.v1 import sidecar_pb2 as pb

from ..errors import InvalidArgument
from ..queue.store import DELIVERED, DELIVERING, FAILED, QUEUED, RETRYING, Change, Job, Listed

STATES = {
    QUEUED: pb.DELIVERY_STATE_QUEUED,
    DELIVERING: pb.DELIVERY_STATE_DELIVERING,
    RETRYING: pb.DELIVERY_STATE_RETRYING,
    DELIVERED: pb.DELIVERY_STATE_DELIVERED,
    FAILED: pb.DELIVERY_STATE_FAILED,
}
STATE_NAMES = {number: name for name, number in STATES.items()}
DEFAULT_PAGE, MAX_PAGE = 100, 1000


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def to_status(job: Job | Change | Listed) -> pb.DeliveryStatus:
    """An event's status: as it is now (a Job), or as of one change (a Change, for WatchDeliveries)."""
    status = pb.DeliveryStatus(
        message_id=job.message_id,
        state=STATES[job.state],
        attempts=job.attempts,
        accepted_at=_timestamp(job.accepted_at),
    )
    if job.state == DELIVERED and job.result is not None:
        json_format.ParseDict(job.result, status.result)
    if job.state in (FAILED, RETRYING) and job.error is not None:
        json_format.ParseDict(job.error, status.error)
    if job.state in (QUEUED, RETRYING):
        status.next_attempt_at.CopyFrom(_timestamp(job.next_attempt_at))
    return status


def page_token(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit():
        raise InvalidArgument("page_token is not one ListDeliveries gave", field="page_token")
    return int(token)
