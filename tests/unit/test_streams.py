"""``orchd.streams``: slots for long-lived streams, per client address and in total."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchd.errors import ProblemError
from orchd.model import ServerSettings
from orchd.streams import RETRY_AFTER, StreamCaps, total_cap


def test_total_cap_keeps_half_of_the_connections_for_requests() -> None:
    assert total_cap(ServerSettings()) == 1024
    assert total_cap(ServerSettings(max_connections=20)) == 10
    assert total_cap(ServerSettings(max_connections=20, max_streams=4)) == 4
    assert total_cap(ServerSettings(max_connections=1)) == 0


def test_refusals_name_the_cap_and_its_key() -> None:
    caps = StreamCaps(lambda: ServerSettings(max_connections=10, max_streams_per_client=2))
    slots = [caps.acquire("a"), caps.acquire("a")]
    with pytest.raises(ProblemError) as per_client:
        caps.acquire("a")
    assert per_client.value.status == 429
    assert per_client.value.headers["Retry-After"] == str(RETRY_AFTER)
    assert "server.max_streams_per_client is 2" in per_client.value.detail
    assert per_client.value.body()["reason"] == "max_streams_per_client"
    slots += [caps.acquire("b"), caps.acquire("b"), caps.acquire("c")]
    with pytest.raises(ProblemError) as total:
        caps.acquire("d")
    assert "half of server.max_connections (10): 5" in total.value.detail
    assert total.value.body()["reason"] == "max_streams"
    assert caps.refused == {"max_streams": 1, "max_streams_per_client": 1}
    assert caps.open == 5 and caps.held("a") == 2


def test_a_released_slot_is_given_back_once() -> None:
    caps = StreamCaps(lambda: ServerSettings(max_streams_per_client=1))
    with caps.acquire("a", "websocket") as slot:
        assert caps.by_kind == {"events": 0, "websocket": 1} and caps.held("a") == 1
    slot.release()  # a second release changes nothing
    assert caps.open == 0 and caps.held("a") == 0 and caps.by_kind == {"events": 0, "websocket": 0}
    with caps.acquire("a"):
        assert caps.open == 1


def test_the_limits_are_read_at_every_acquire() -> None:
    settings = [ServerSettings(max_streams_per_client=1)]
    caps = StreamCaps(lambda: settings[0])
    caps.acquire("a")
    with pytest.raises(ProblemError):
        caps.acquire("a")
    settings[0] = replace(settings[0], max_streams_per_client=2)
    caps.acquire("a")
    assert caps.held("a") == 2
    settings[0] = replace(settings[0], max_streams=1)  # lowered below what is open
    with pytest.raises(ProblemError):
        caps.acquire("b")
    assert caps.open == 2  # open streams are never cut
