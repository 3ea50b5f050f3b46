"""Node misbehaviour injected with devnode_fault: the daemon routes, retries or fails
requests as documented, and the pool recovers."""

import json
import time

import harness
from harness import ERR_LIMIT, ERR_TIMEOUT, ERR_UNKNOWN_WRITE, check_reply_error, check_reply_ok

FAST = {"reconnect_min": "50ms", "reconnect_max": "200ms"}
XT = "0x" + "ab" * 40  # any hex is an extrinsic to the devnode


def send_echoes(c, n, tag):
    return {c.request("devnode_echo", [f"{tag}{i}"]): f"{tag}{i}" for i in range(n)}


def expect_echoes(c, sent, timeout=15):
    for raw_id, payload in sent.items():
        check_reply_ok(c.recv_id(raw_id, timeout), raw_id, payload)


def test_reordered_replies_reach_the_right_requests(devnode, daemon):
    node = devnode()
    d = daemon(node, pool_size=1)
    node.fault("reorder")
    with d.client() as c:
        # An odd count: the last reply has no partner and goes out on the devnode's timer.
        expect_echoes(c, send_echoes(c, 51, "r"))
    node.fault("none")


def test_text_garbage_is_dropped_without_losing_the_link(devnode, daemon):
    node = devnode()
    d = daemon(node, pool_size=2)
    handshakes = node.stats()["handshakes"]
    node.fault("garbage")
    d.wait_log("dropped a message that is not JSON-RPC", 2)
    with d.client() as c:
        expect_echoes(c, send_echoes(c, 20, "g"))
    assert node.stats()["handshakes"] == handshakes
    assert d.status()["ready"] == 2


def test_invalid_frame_replaces_the_link(devnode, daemon):
    node = devnode()
    d = daemon(node, pool_size=2, **FAST)
    handshakes = node.stats()["handshakes"]
    node.fault("garbage_binary")
    node.fault("none")  # later connections are healthy
    d.wait_status(lambda s: all(u["reconnects"] >= 1 for u in s["upstreams"]) and s["ready"] == 2,
                  "both upstreams reconnected")
    assert node.stats()["handshakes"] >= handshakes + 2
    with d.client() as c:
        expect_echoes(c, send_echoes(c, 20, "b"))


def test_lost_link_retries_reads_and_fails_writes(devnode, daemon):
    # One upstream, so a retry cannot land on a sibling link that is dying too.
    node = devnode(latency_ms=400)
    d = daemon(node, pool_size=1, **FAST)
    with d.client() as c:
        reads = send_echoes(c, 10, "l")
        write = c.request("author_submitExtrinsic", [XT])
        d.wait_status(lambda s: s["in_flight"] == 11, "11 requests in flight")
        node.fault("close")
        node.fault("none")
        check_reply_error(c.recv_id(write, 10), ERR_UNKNOWN_WRITE, write)
        expect_echoes(c, reads)  # resent once on the new link
    status = d.wait_upstreams_ready()
    assert status["upstreams"][0]["reconnects"] >= 1


def test_stalled_link_is_replaced_after_pong_timeout(devnode, daemon):
    node = devnode()
    d = daemon(node, pool_size=1, ping_interval="200ms", pong_timeout="300ms", **FAST)
    node.fault("stall")
    node.fault("none")  # only the current connection stalls
    with d.client() as c:
        sent = send_echoes(c, 5, "s")
        expect_echoes(c, sent, timeout=10)
    status = d.wait_upstreams_ready()
    assert status["upstreams"][0]["reconnects"] >= 1
    assert node.upstream_connections() == 1


def test_refused_handshakes_back_off_until_lifted(devnode, daemon):
    node = devnode()
    d = daemon(node, pool_size=1, **FAST)
    # The node keeps one fault of scope "all": drop the link, then refuse new handshakes.
    node.fault("close")
    node.fault("refuse429")
    d.wait_status(lambda s: s["ready"] == 0 and "429" in (s["upstreams"][0]["last_error"] or ""),
                  "a 429 reported as the upstream's last error")
    with d.client() as c:
        sent = send_echoes(c, 5, "q")  # queued while refused
        node.fault("none")
        expect_echoes(c, sent)
    d.wait_upstreams_ready()


def test_oversize_reply_from_fault(devnode, daemon):
    node = devnode(max_message=1 << 20)
    d = daemon(node, pool_size=1, max_message="1M")
    handshakes = node.stats()["handshakes"]
    node.fault("oversize")  # the next reply is a blob of 2 x 1 MiB
    with d.client() as c:
        first = c.request("devnode_echo", ["big"])
        check_reply_error(c.recv_id(first, 15), ERR_LIMIT, first)
        node.fault("none")
        expect_echoes(c, send_echoes(c, 5, "o"))
    assert node.stats()["handshakes"] == handshakes



def test_slow_reply_times_out_and_the_late_reply_is_dropped(devnode, daemon):
    node = devnode()
    d = daemon(node, pool_size=1, request_timeout="1s")
    with d.client() as c:
        started = time.monotonic()
        slow = c.request("devnode_sleep", [2000])
        reply = c.recv(5)
        waited = time.monotonic() - started
        check_reply_error(reply, ERR_TIMEOUT, slow)
        assert 0.9 <= waited <= 2.0, f"-32051 after {waited:.2f}s, request_timeout is 1s"
        # The node answers later; that reply must not reach the client.
        c.expect_silence(1.5)
        expect_echoes(c, send_echoes(c, 5, "t"))
    status = d.status()
    assert status["in_flight"] == 0 and status["ready"] == 1


def test_newlines_in_node_messages_never_split_an_ndjson_line(devnode, daemon):
    # JSON allows raw newlines between tokens. Replies, batch replies and notifications
    # from a node that sends them must still reach an NDJSON client as one line each.
    node = devnode(block_ms=0)
    d = daemon(node, pool_size=1)
    node.fault("pretty")
    with d.client() as c:
        expect_echoes(c, send_echoes(c, 20, "n"))
        c.send_batch([harness.request_line("devnode_echo", ["b1"], b"71"),
                      harness.request_line("devnode_echo", ["b2"], b"72")])
        batch = c.recv()
        assert sorted((r.id_raw, r.result) for r in batch) == [(b"71", "b1"), (b"72", "b2")]
        heads = [node.call("chain_getHeader")]
        rid = c.request("chain_subscribeNewHeads", [])
        reply = json.loads(c.recv_line())
        assert reply["id"] == int(rid) and isinstance(reply["result"], str), reply
        node.call("devnode_newBlock")
        heads.append(node.call("chain_getHeader"))
        for head in heads:  # the current head first, then the new one
            note = json.loads(c.recv_line())
            assert note["method"] == "chain_newHead", note
            assert note["params"]["subscription"] == reply["result"]
            assert note["params"]["result"] == head
        c.expect_silence(0.3)
    node.fault("none")
