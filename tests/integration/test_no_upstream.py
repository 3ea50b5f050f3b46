"""No node reachable: requests wait up to request_timeout, then are served once it comes up."""

import time

import harness
from harness import ERR_UNAVAILABLE, check_reply_error, check_reply_ok

FAST_RECONNECT = {"reconnect_min": "50ms", "reconnect_max": "300ms"}


def test_request_fails_after_request_timeout(daemon):
    port = harness.free_tcp_port()
    d = daemon(f"ws://127.0.0.1:{port}", request_timeout="2s", **FAST_RECONNECT)
    assert d.status()["ready"] == 0
    with d.client() as c:
        started = time.monotonic()
        raw_id = c.request("devnode_echo", ["x"])
        reply = c.recv(10)
        waited = time.monotonic() - started
    check_reply_error(reply, ERR_UNAVAILABLE, raw_id)
    assert 1.9 <= waited <= 3.5, f"-32050 after {waited:.2f}s, request_timeout is 2s"
    assert d.status()["queued"] == 0


def test_full_queue_refuses_at_once(daemon):
    port = harness.free_tcp_port()
    d = daemon(f"ws://127.0.0.1:{port}", request_timeout="2s", queue_max=3, **FAST_RECONNECT)
    with d.client() as c:
        started = time.monotonic()
        ids = [c.request("devnode_echo", [i]) for i in range(5)]
        refused = [c.recv(1.5), c.recv(1.5)]
        refused_after = time.monotonic() - started
        timed_out = [c.recv(5) for _ in range(3)]
    assert refused_after < 1.5
    assert sorted(r.id_raw for r in refused) == ids[3:], "the requests over queue_max are refused"
    assert sorted(r.id_raw for r in timed_out) == ids[:3]
    assert all(r.code == ERR_UNAVAILABLE for r in refused + timed_out), refused + timed_out


def test_queued_requests_are_served_when_the_node_comes_up(devnode, daemon):
    port = harness.free_tcp_port()
    d = daemon(f"ws://127.0.0.1:{port}", pool_size=2, request_timeout="60s", **FAST_RECONNECT)
    clients = [d.client(), d.client()]
    sent = [(c, c.request("devnode_echo", [f"q{n}-{i}"]), f"q{n}-{i}")
            for n, c in enumerate(clients) for i in range(10)]
    d.wait_status(lambda s: s["queued"] == 20, "20 queued requests")
    for c in clients:
        c.expect_silence(0.2)

    node = devnode(port=port)
    for c, raw_id, payload in sent:
        check_reply_ok(c.recv_id(raw_id, 15), raw_id, payload)
    status = d.wait_upstreams_ready()
    assert status["queued"] == 0 and status["in_flight"] == 0
    assert node.upstream_connections() == 2
