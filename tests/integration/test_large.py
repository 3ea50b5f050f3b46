"""Large replies: passed through intact, or refused per request when over max_message."""

import json
import string

from harness import ERR_LIMIT, check_reply_error, check_reply_ok, poll
from localwire import Conn, rpc, tcp_daemon

MiB = 1 << 20


def expected_blob(n: int) -> str:
    """What devnode_blob([n]) returns: n bytes cycling through 'a'..'z'."""
    alphabet = string.ascii_lowercase
    return (alphabet * (n // 26 + 1))[:n]


def test_8mib_reply_passes_intact(devnode, daemon):
    node = devnode()
    d = daemon(node)
    with d.client() as c:
        reply = c.call("devnode_blob", [8 * MiB], timeout=60)
        assert reply.has_result, reply
        assert len(reply.result) == 8 * MiB
        assert reply.result == expected_blob(8 * MiB)
        # The connection is fine afterwards.
        assert c.call_ok("devnode_echo", ["after"]) == "after"


def test_reply_over_max_message_fails_only_that_request(devnode, daemon):
    node = devnode()
    d = daemon(node, pool_size=2, max_message="1M")
    handshakes = node.stats()["handshakes"]
    reconnects = [u["reconnects"] for u in d.status()["upstreams"]]

    with d.client() as big, d.client() as other:
        # The other client's requests are in flight together with the oversized one.
        first_half = [other.request("devnode_echo", [f"o{i}"]) for i in range(200)]
        blob_id = big.request("devnode_blob", [2 * MiB])
        second_half = [other.request("devnode_echo", [f"o{i}"]) for i in range(200, 400)]

        reply = big.recv_id(blob_id, 30)
        check_reply_error(reply, ERR_LIMIT, blob_id)
        for i, raw_id in enumerate(first_half + second_half):
            check_reply_ok(other.recv_id(raw_id, 30), raw_id, f"o{i}")

        # Both connections and the upstreams keep working; one under the limit passes.
        assert big.call_ok("devnode_blob", [512 * 1024]) == expected_blob(512 * 1024)
        assert other.call_ok("devnode_echo", ["still"]) == "still"

    assert node.stats()["handshakes"] == handshakes, "an upstream reconnected"
    status = d.status()
    assert [u["reconnects"] for u in status["upstreams"]] == reconnects
    assert status["ready"] == 2
    assert node.upstream_connections() == 2


def test_large_replies_held_by_slow_readers_stay_intact(devnode, daemon):
    """A large reply is queued for its client straight from the buffer it arrived in. With one
    link, every next message from the node arrives while clients still hold earlier ones
    unread: each must still read exactly what the node sent, over NDJSON (single and batch),
    WebSocket and HTTP."""
    node = devnode()
    d = tcp_daemon(daemon, node, pool_size=1)
    n, size = 12, 150 * 1024

    def payload(tag, i):
        return f"{tag}{i:03d}:" + chr(ord("a") + i % 26) * size

    with d.client() as nd, Conn(d, "tcp") as ws, Conn(d, "unix") as http:
        assert ws.ws_upgrade().status == 101
        ids = [nd.request("devnode_echo", [payload("n", i)]) for i in range(n)]
        nd.send_batch([rpc("devnode_echo", [payload("b", i)], f"b{i}") for i in range(3)])
        for i in range(n):
            ws.ws_text(rpc("devnode_echo", [payload("w", i)], i))
        for i in range(n // 2):
            http.http_send("POST", "/", rpc("devnode_echo", [payload("h", i)], i))
        # Every reply has come from the node and waits, unread, in the daemon.
        poll(d.status, lambda s: s["responses"] == 2 * n + 3 + n // 2 and s["in_flight"] == 0,
             30, "every reply received from the node")

        for i, raw_id in enumerate(ids):
            check_reply_ok(nd.recv_id(raw_id, 30), raw_id, payload("n", i))
        batch = nd.recv(30)
        assert [r.result for r in batch] == [payload("b", i) for i in range(3)]
        for i in range(n):
            assert ws.ws_json(30) == {"jsonrpc": "2.0", "id": i, "result": payload("w", i)}
        for i in range(n // 2):
            r = http.http_response(30)
            assert r.status == 200, r
            assert json.loads(r.body) == {"jsonrpc": "2.0", "id": i, "result": payload("h", i)}
