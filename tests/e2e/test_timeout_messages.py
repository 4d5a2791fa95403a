"""An unanswered Trengo is reported as what happened (issue 10, item 17a).

Two attempts of requestTimeoutSeconds each, under a deadline with room for no third, used to end in
"no answer before the deadline", although each attempt had given up on its own timeout and the
deadline was still seconds away. Scaled down here: 1 s attempts.
"""

from __future__ import annotations

import grpc
import pytest

from tests.support.grpc_helpers import failure
from tests.support.harness import SMS_CHANNEL, struct
from trengo.sidecar.v1 import sidecar_pb2 as pb

SEARCH = "/api/v2/contacts"


def identify() -> pb.IdentifyRequest:
    """A new number on the SMS channel: searched for first (a new e-mail address is created at once)."""
    on_sms = pb.ExternalId(type="trengoChannelId", id=str(SMS_CHANNEL))
    return pb.IdentifyRequest(traits=struct({"phone": "+31612345678"}), external_ids=[on_sms])


def test_attempts_that_each_timed_out_say_so_and_why_no_other_was_made(make_sidecar, control):
    sidecar = make_sidecar(requestTimeoutSeconds=1)
    control.add_fault(method="GET", path=SEARCH, delay=3.0, count=5)
    channel, stub = sidecar.stub()
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.Identify(identify(), timeout=3.2)  # room for two 1 s attempts, not for a third
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_UNAVAILABLE", f
    assert "no answer before the deadline" not in f.message, f
    assert "GET /contacts: no answer within 1 s (requestTimeoutSeconds)" in f.message, f
    assert "2 attempts, and another could not finish before the deadline" in f.message, f
    assert len(control.requests(path_prefix=SEARCH)) == 2


def test_attempts_that_used_up_max_attempts_say_so(make_sidecar, control):
    sidecar = make_sidecar(requestTimeoutSeconds=0.5, maxAttempts=2)
    control.add_fault(method="GET", path=SEARCH, delay=2.0, count=5)
    channel, stub = sidecar.stub()
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.Identify(identify(), timeout=10)
    f = failure(caught.value)
    assert "no answer within 0.5 s (requestTimeoutSeconds)" in f.message, f
    assert "2 attempts, the most maxAttempts allows" in f.message, f
    assert f.retry_delay is not None  # nothing was written: retrying is safe


def test_an_attempt_cut_short_by_the_deadline_still_blames_the_deadline(make_sidecar, control):
    sidecar = make_sidecar(requestTimeoutSeconds=10)
    control.add_fault(method="GET", path=SEARCH, delay=3.0)
    channel, stub = sidecar.stub()
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.Identify(identify(), timeout=1.0)
    f = failure(caught.value)
    assert "GET /contacts: no answer before the deadline" in f.message, f
    assert "another attempt could not finish before the deadline" in f.message, f
