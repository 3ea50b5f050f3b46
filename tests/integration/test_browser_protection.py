"""Browser protection: a WebSocket upgrade or HTTP request carrying an Origin that is not
allowed, or a Host that is not a loopback name, gets 403 and never reaches the router,
on the Unix socket and on the TCP port. Allowed origins (allowed_origins) work."""

import pytest

import harness
from localwire import (OP_TEXT, TRANSPORTS, Conn, metrics_text, rpc, run_async, status_counts,
                       quiet_pool_options, settled, tcp_daemon, ws_connect, ws_frame)

websockets = pytest.importorskip("websockets")

EVIL = "https://evil.example"


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    return request.param


def refused(c: Conn, r, why: str):
    assert r.status == 403, f"{why}: {r}"
    assert r.closes, f"{why}: a refusal should close: {r}"
    c.expect_eof(5)


def test_evil_origin_upgrade_is_refused_before_the_router(devnode, daemon, transport):
    node = devnode()
    d = settled(tcp_daemon(daemon, node, **quiet_pool_options()))
    before = status_counts(d, node)
    for origin in (EVIL, "null", "HTTPS://EVIL.EXAMPLE", "http://localhost.evil.example"):
        with Conn(d, transport) as c:
            # The upgrade and a request frame in one write: the frame must never be read.
            key = "dGhlIHNhbXBsZSBub25jZQ=="
            head = (f"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n")
            c.send(head.encode() + ws_frame(OP_TEXT, rpc("devnode_echo", ["leak"])))
            refused(c, c.http_response(), f"Origin {origin}")
    after = status_counts(d, node)
    # Each reading adds its own subpool_status and devnode_stats, nothing else.
    assert after == (before[0] + 1, 0, before[2] + 1), (before, after)


def test_evil_origin_refused_with_the_websockets_library(devnode, daemon, transport):
    node = devnode()
    d = settled(tcp_daemon(daemon, node, **quiet_pool_options()))
    before = status_counts(d, node)

    async def go():
        with pytest.raises(websockets.InvalidStatusCode) as info:
            async with ws_connect(d, transport, origin=EVIL):
                pass
        assert info.value.status_code == 403

    run_async(go())
    assert status_counts(d, node) == (before[0] + 1, 0, before[2] + 1)


def test_evil_origin_http_requests_are_refused(devnode, daemon, transport):
    node = devnode()
    d = settled(tcp_daemon(daemon, node, **quiet_pool_options()))
    before = status_counts(d, node)
    for method, path, body in [("POST", "/", rpc("devnode_echo", ["leak"])), ("GET", "/health", None),
                               ("GET", "/metrics", None)]:
        with Conn(d, transport) as c:
            refused(c, c.http(method, path, body, {"Origin": EVIL}), f"{method} {path}")
    assert status_counts(d, node) == (before[0] + 1, 0, before[2] + 1)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:9944", "localhost.evil.example",
                                  "127.0.0.1.nip.io", "0.0.0.0", "192.168.1.10:9944", "[::2]"])
def test_foreign_host_is_refused(devnode, daemon, transport, host):
    node = devnode()
    d = settled(tcp_daemon(daemon, node, **quiet_pool_options()))
    before = status_counts(d, node)
    with Conn(d, transport) as c:
        refused(c, c.ws_upgrade(host=host), f"upgrade with Host {host}")
    with Conn(d, transport) as c:
        refused(c, c.http("POST", "/", rpc("devnode_echo", ["leak"]), host=host), f"POST with Host {host}")
    assert status_counts(d, node) == (before[0] + 1, 0, before[2] + 1)


def test_loopback_hosts_are_accepted(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)
    for host in ("localhost", "LOCALHOST:9944", "127.0.0.1", f"127.0.0.1:{d.tcp_port}", "127.1.2.3",
                 "[::1]", "[::1]:9944", "node.localhost"):
        with Conn(d, transport) as c:
            assert c.ws_upgrade(host=host).status == 101, host
            c.ws_text(rpc("devnode_echo", [host]))
            assert c.ws_json()["result"] == host
        with Conn(d, transport) as c:
            assert c.http("POST", "/", rpc("devnode_echo", [host]), host=host).json()["result"] == host


def test_allowed_origins(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node, allowed_origins="https://polkadot.js.org https://good.example")

    async def go():
        for origin in ("https://good.example", "https://polkadot.js.org"):
            async with ws_connect(d, transport, origin=origin) as ws:
                await ws.send(rpc("devnode_echo", [origin]).decode())
                assert origin in await ws.recv()
        with pytest.raises(websockets.InvalidStatusCode) as info:
            async with ws_connect(d, transport, origin=EVIL):
                pass
        assert info.value.status_code == 403

    run_async(go())
    with Conn(d, transport) as c:
        r = c.http("POST", "/", rpc("devnode_echo", ["ok"]), {"Origin": "https://good.example"})
        assert r.json()["result"] == "ok"
    # An allowed Origin does not excuse a foreign Host.
    with Conn(d, transport) as c:
        refused(c, c.ws_upgrade(host="evil.example", headers={"Origin": "https://good.example"}),
                "allowed origin, foreign host")


def test_allowed_origins_star(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node, allowed_origins="*")
    with Conn(d, transport) as c:
        assert c.ws_upgrade(headers={"Origin": EVIL}).status == 101
        c.ws_text(rpc("subpool_ping"))
        assert c.ws_json()["result"] == "pong"


def test_refused_upgrades_leave_no_client_behind(devnode, daemon, transport):
    """After refused upgrades have gone, /metrics and subpool_status count no client left."""
    node = devnode()
    d = tcp_daemon(daemon, node)
    for _ in range(3):
        with Conn(d, transport) as c:
            refused(c, c.ws_upgrade(headers={"Origin": EVIL}), "evil origin")
    harness.poll(lambda: d.status()["clients"], lambda n: n == 1, 5, "only the status client left")
    text = metrics_text(d)
    clients = {line.split('"')[1]: int(line.split()[-1]) for line in text.splitlines()
               if line.startswith("subpool_clients{")}
    assert clients == {"detecting": 0, "ndjson": 0, "websocket": 0, "http": 1}, clients
