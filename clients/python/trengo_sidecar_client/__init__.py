"""A typed Python client (blocking and asyncio) for the Trengo sidecar's gRPC API."""

from .client import AsyncTrengoSidecarClient, TrengoSidecarClient
from .errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RateLimited,
    SidecarError,
    Unauthenticated,
    Unavailable,
)
from .result import (
    Action,
    Delivered,
    DeliveryError,
    DeliveryPage,
    DeliveryResult,
    DeliveryState,
    DeliveryStatus,
    DeliveryUpdate,
    Enqueued,
    FollowUpFailure,
    TicketAssignment,
    TrengoCall,
)

__all__ = [
    "Action", "AsyncTrengoSidecarClient", "DeadlineExceeded", "Delivered", "DeliveryError",
    "DeliveryPage", "DeliveryResult", "DeliveryState", "DeliveryStatus", "DeliveryUpdate", "Enqueued",
    "FailedPrecondition", "FollowUpFailure", "InvalidArgument", "NotFound", "RateLimited",
    "SidecarError", "TicketAssignment", "TrengoCall", "TrengoSidecarClient", "Unauthenticated",
    "Unavailable",
]
