"""connections.py: what a full listener closes to make room, against real sockets on loopback."""

from __future__ import annotations

from healert_webhook import connections
from healert_webhook import protocol as http_protocol

from support.servers import serve_app
from support.sockets import Proving, ask, closed, connect


def test_a_full_listener_closes_the_least_recently_active_unproven_connection() -> None:
    with serve_app(Proving(), limits=connections.Limits(3)) as running:
        port = running.port
        silent = connect(port)
        asked = connect(port)
        assert ask(asked).startswith(b"HTTP/1.1 200")  # a request, but not authenticated
        proven = connect(port)
        assert ask(proven, auth=True).startswith(b"HTTP/1.1 200")
        newer = connect(port)  # full: the oldest unproven goes
        assert closed(silent) and not closed(asked) and not closed(proven)
        newest = connect(port)
        assert closed(asked) and not closed(newer) and not closed(proven)
        assert ask(newer, auth=True).startswith(b"HTTP/1.1 200")
        last = connect(port)
        assert closed(newest)  # the only unproven one left
        assert ask(last, auth=True).startswith(b"HTTP/1.1 200")
        refused = connect(port)  # every connection proven: the new one is refused
        assert closed(refused) and not closed(proven) and not closed(newer)


def test_a_peer_at_the_cap_replaces_its_own_connections() -> None:
    with serve_app(Proving(), limits=connections.Limits(4)) as running:
        port = running.port
        flood = [connect(port) for _ in range(3)]
        other = connect(port, "127.0.0.2")  # the newest: least recently active are flood's
        more = [connect(port) for _ in range(10)]  # the flood renews its own
        assert not closed(other)
        assert all(closed(sock) for sock in flood + more[:-3])
        third = connect(port, "127.0.0.3")  # the flood holds the most: it makes room
        assert not closed(other) and not closed(third)
        assert ask(other).startswith(b"HTTP/1.1 200")


def test_on_the_ops_listener_idle_between_requests_counts_as_idle() -> None:
    with serve_app(Proving(), protocol=http_protocol.OpsHttpProtocol,
                   limits=connections.Limits(2)) as running:
        port = running.port
        silent = connect(port)
        scraped = connect(port)
        assert ask(scraped).startswith(b"HTTP/1.1 200")  # answered, then idle
        third = connect(port)
        assert closed(silent) and not closed(scraped)
        fourth = connect(port)
        assert closed(scraped)  # idle after its request: evicted like any idle one
        assert not closed(third) and not closed(fourth)
