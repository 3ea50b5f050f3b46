"""Bounded by design: what a hostile local client makes the daemon hold is charged to it and
to the daemon's budget (max_client_memory), and stops growing at its limits.

Each test names the item of the bounds issue it covers. Memory is measured where it lives:
the daemon's peak resident size (VmHWM) and its own ledger (subpool_status.client_memory).
Senders run in threads that stop by themselves: at the end of their data, or once the daemon
has not taken a byte for a few seconds (it stopped reading them, which is the point).
"""

import json
import os
import socket
import struct
import subprocess
import threading

import pytest

import harness
from localwire import OP_PING, OP_TEXT, Conn, rpc, tcp_daemon, ws_frame

KiB, MiB = 1 << 10, 1 << 20


class Sender:
    """Writes data to a connection from a thread; stops at the end, on an error, or when the
    daemon has taken nothing for `stall` seconds. `sent` is what the daemon accepted."""

    def __init__(self, conn: Conn, data: bytes, chunk=64 * KiB, stall=3.0):
        self.conn, self.data, self.chunk, self.stall = conn, data, chunk, stall
        self.sent = 0
        self.stalled = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        sock = self.conn.sock
        sock.settimeout(self.stall)
        view = memoryview(self.data)
        try:
            while self.sent < len(view):
                self.sent += sock.send(view[self.sent:self.sent + self.chunk])
        except socket.timeout:
            self.stalled = True
        except OSError:
            pass

    def join(self, timeout=120):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the sender did not stop"


def hwm_mib(d) -> float:
    return harness.vm_hwm_kib(d.pid) / 1024


def held(d) -> int:
    return d.status()["client_memory"]["held"]


def test_http_answers_to_a_client_that_never_reads_are_bounded(devnode, daemon):
    """Item 1: pipelined GET /metrics from a client that never reads its answers. The daemon
    stops reading it once half of client_max_output waits for it: its memory stays bounded,
    and other clients are served meanwhile."""
    node = devnode()
    d = daemon(node, client_max_output="1M", max_request="1M")
    base = hwm_mib(d)
    one = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"
    hostile = Conn(d)
    # About 40,000 answers of several KB each: over 100 MB if all were produced.
    sender = Sender(hostile, one * 40000)
    sender.join()
    assert sender.stalled, "the daemon read every pipelined request of a client that never reads"
    with d.client() as c:
        assert c.call_ok("system_chain") == "Bittensor"
    assert held(d) < 4 * MiB, d.status()["client_memory"]
    growth = hwm_mib(d) - base
    assert growth < 40, f"the daemon grew by {growth:.0f} MiB for one client that never reads"
    hostile.close()
    harness.wait_until(lambda: held(d) < 64 * KiB, 10, "the ledger released the client's bytes")


def test_http_get_with_a_huge_content_length_is_refused(devnode, daemon):
    """Item 3: a GET announcing a body larger than max_request gets 413 at once, instead of
    the daemon buffering whatever follows."""
    node = devnode()
    d = daemon(node, max_request="1M")
    with Conn(d) as c:
        c.send(b"GET /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999999\r\n\r\n")
        r = c.http_response()
        assert r.status == 413 and r.closes, r
    with d.client() as c:
        assert c.call_ok("system_chain") == "Bittensor"


def test_input_behind_a_slow_post_is_bounded(devnode, daemon):
    """Item 3: bytes streamed behind a POST whose answer takes a while are read only up to
    what one request may need (max_request, a head, a read); then the client waits."""
    node = devnode()
    d = daemon(node, max_request="1M")
    base = hwm_mib(d)
    body = rpc("devnode_sleep", [4000])
    c = Conn(d)
    c.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    sender = Sender(c, b"x" * (120 * MiB), stall=2.0)
    sender.join()
    assert sender.stalled, f"the daemon took all {sender.sent} bytes behind a pending POST"
    assert sender.sent < 16 * MiB, sender.sent
    growth = hwm_mib(d) - base
    assert growth < 32, f"the daemon grew by {growth:.0f} MiB behind one slow POST"
    r = c.http_response(timeout=15)
    assert r.status == 200 and r.json()["result"] is True, r
    c.close()
    with d.client() as cl:
        assert cl.call_ok("system_chain") == "Bittensor"


def test_websocket_ping_flood_from_a_client_that_never_reads_is_bounded(devnode, daemon):
    """Item 4: each ping is answered with a pong that waits in the client's output; a client
    that never reads stops being read once half of client_max_output is waiting."""
    node = devnode()
    d = daemon(node, client_max_output="1M")
    base = hwm_mib(d)
    c = Conn(d)
    assert c.ws_upgrade().status == 101
    ping = ws_frame(OP_PING, b"p" * 125)
    sender = Sender(c, ping * (100 * MiB // len(ping)))
    sender.join()
    assert sender.stalled, "the daemon read a whole ping flood from a client that never reads"
    assert held(d) < 4 * MiB, d.status()["client_memory"]
    growth = hwm_mib(d) - base
    assert growth < 40, f"the daemon grew by {growth:.0f} MiB of pongs nobody reads"
    with Conn(d) as w:
        assert w.ws_upgrade().status == 101
        w.ws_text(rpc("system_chain"))
        assert w.ws_json()["result"] == "Bittensor"
    c.close()


def test_request_ids_count_against_client_max_pending(devnode, daemon):
    """Item 5: the id kept aside for splicing is held as long as the request: it counts
    against client_max_pending like the rest of the request."""
    node = devnode()
    d = daemon(node, client_max_pending="4M", max_request="2M")
    base = hwm_mib(d)
    c = Conn(d)
    big_id = b'"' + b"i" * MiB + b'"'
    line = b'{"jsonrpc":"2.0","id":' + big_id + b',"method":"devnode_sleep","params":[3000]}\n'
    sender = Sender(c, line * 60, stall=2.0)
    sender.join()
    status = d.status()
    assert status["in_flight"] <= 5, f"{status['in_flight']} requests of 1 MiB ids in flight"
    assert status["client_memory"]["held"] < 4 * MiB + 2 * MiB + 256 * KiB, status["client_memory"]
    growth = hwm_mib(d) - base
    assert growth < 32, f"the daemon grew by {growth:.0f} MiB of request ids"
    # The first reply carries its id back whole.
    first = c.read_until(b"\n", timeout=15)
    assert first.startswith(b'{"jsonrpc":"2.0","id":' + big_id) or big_id in first, first[:80]
    c.close()


def test_over_the_daemon_budget_the_largest_client_is_cut(devnode, daemon):
    """Over max_client_memory the client holding the most is disconnected, with one log line
    naming it (pid, uid, process name); a small client goes on being served."""
    node = devnode()
    d = daemon(node, max_client_memory="6M", client_max_output="64M")
    small = d.client()
    assert small.call_ok("system_chain") == "Bittensor"
    big = Conn(d)
    big.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    # Replies of 1 MiB that it never reads: they pile up in the daemon.
    big.send(b"".join(rpc("devnode_blob", [MiB], i) + b"\n" for i in range(12)))
    d.wait_log("over max_client_memory")
    line = next(ln for ln in d.log.splitlines() if "over max_client_memory" in ln)
    assert f"pid {os.getpid()} uid {os.getuid()}" in line, line
    big.read_to_eof(timeout=10)  # what had reached its socket, then the end
    assert small.call_ok("system_chain") == "Bittensor"
    mem = d.status()["client_memory"]
    assert mem["cuts"] == 1 and mem["budget"] == 6 * MiB, mem
    small.close()
    big.close()


def test_the_ledger_balances_after_every_framing(devnode, daemon):
    """Whatever a client held (input, requests, replies, batches, websocket and HTTP output)
    is released when it is done: with every client gone the ledger is back at zero."""
    node = devnode()
    d = daemon(node)
    alone = held(d)  # the client asking for the status, and any not yet freed
    with d.client() as c:
        c.send_batch([rpc("system_chain", None, i) for i in range(5)])
        assert len(c.recv()) == 5
        assert c.call_ok("devnode_blob", [200000])
    with Conn(d) as w:
        assert w.ws_upgrade().status == 101
        w.ws_text(rpc("devnode_blob", [100000]))
        assert len(w.ws_json()["result"]) == 100000
    with Conn(d) as h:
        assert h.http("GET", "/metrics").status == 200
        assert h.http("POST", "/", rpc("system_chain")).json()["result"] == "Bittensor"
    with Conn(d) as n:
        n.send(rpc("devnode_sleep", [2000]) + b"\n")  # left in flight
    harness.poll(lambda: held(d), lambda h: h <= alone, 10,
                 f"the ledger back at {alone} bytes (the status client's) with every client gone")


def test_silent_connections_are_closed_after_handshake_timeout(devnode, daemon):
    """Item 10: connections that never send a complete first request no longer hold client
    slots for as long as they like; an HTTP head left incomplete gets 408."""
    node = devnode()
    d = daemon(node, max_clients=4, handshake_timeout="500ms")
    silent = [Conn(d) for _ in range(3)]
    partial = Conn(d)
    partial.send(b"GET /health HTTP/1.1\r\nHost: loc")
    for c in silent:
        c.expect_eof(timeout=10)
    assert partial.read_to_eof(timeout=10).startswith(b"HTTP/1.1 408 "), "no 408 for a slow head"
    d.wait_log("no complete request within handshake_timeout", count=4)
    with d.client() as c:
        assert c.call_ok("system_chain") == "Bittensor"
        # A client that has sent its first request is not subject to it any more.
        quiet = d.client()
        assert quiet.call_ok("system_chain") == "Bittensor"
        quiet.expect_silence(1.0)
        assert quiet.call_ok("system_chain") == "Bittensor"
    for c in silent + [partial]:
        c.close()


def sole_client(d) -> harness.NdjsonClient:
    """A client let in once the fixture's status clients are gone: until the daemon has seen
    them leave they count against a per-uid cap and may fill it. It asks through itself."""
    def attempt():
        c = harness.NdjsonClient(d.socket, 10)
        try:
            refused = c.call("subpool_status").result is None
        except (OSError, EOFError):
            refused = True  # refused before it asked: the daemon closed on its unread request
        if refused:
            c.close()
            return None
        harness.poll(lambda: c.call("subpool_status").result["clients"], lambda n: n == 1, 10,
                     "the fixture's clients gone")
        return c
    return harness.wait_until(attempt, 10, "a first client let in")


def test_one_user_cannot_take_every_client_slot(devnode, daemon):
    """Item 10: max_clients_per_uid refuses a user's connection over the cap with -32053 and a
    log line naming the process; closing one lets the next in."""
    node = devnode()
    d = daemon(node, max_clients_per_uid=3)
    held_clients = [sole_client(d)]
    held_clients += [d.client() for _ in range(2)]
    for c in held_clients:
        assert c.call_ok("system_chain") == "Bittensor"
    over = harness.NdjsonClient(d.socket, 10)
    reply = over.recv()
    assert reply.code == harness.ERR_LIMIT and "max_clients_per_uid" in reply.error["message"], reply
    over.expect_eof()
    over.close()
    d.wait_log(f"refused a client (pid {os.getpid()} uid {os.getuid()}")
    held_clients[0].close()
    harness.poll(lambda: held_clients[1].call("subpool_status").result["clients"],
                 lambda n: n == 2, 10, "the closed client's slot given back")
    with d.client() as c:
        assert c.call_ok("system_chain") == "Bittensor"


def test_idle_clients_are_closed_only_when_idle(devnode, daemon):
    """client_idle_timeout closes a client with nothing outstanding that sends nothing; one
    with a request in flight or a subscription is left alone."""
    node = devnode()
    d = daemon(node, client_idle_timeout="500ms")
    idle = d.client()
    assert idle.call_ok("system_chain") == "Bittensor"
    busy = d.client()
    busy.send_line(rpc("devnode_sleep", [1500], 9))
    sub = d.client()
    assert sub.call_ok("chain_subscribeNewHeads")
    idle.expect_eof(timeout=10)
    d.wait_log("idle for client_idle_timeout")
    assert busy.recv(timeout=10).result is True, "a client with a request in flight was closed"
    assert sub.recv(timeout=10) is not None  # a notification: still subscribed and open
    for c in (idle, busy, sub):
        c.close()


def queue_many(d, conn, n, method="devnode_echo"):
    """Send n requests on conn and wait until the daemon holds them (queued or sent)."""
    conn.send(b"".join(rpc(method, [i], i) + b"\n" for i in range(n)))
    return d.wait_status(lambda s: s["queued"] + s["in_flight"] >= n - 50 or s["responses"] > 0,
                         f"{n} requests taken in")


def test_draining_the_queue_costs_one_visit_per_request(devnode, daemon):
    """Item 9: each reply used to walk the whole wait queue (10k queued drained in 0.36 s,
    100k in 40 s). Dispatch now looks at O(1) waiting requests per request placed; the
    daemon's own counter of requests looked at says so."""
    node = devnode(latency_ms=1)
    d = daemon(node, pool_size=1, max_in_flight=1, client_max_in_flight=10000)
    n = 3000
    c = Conn(d)
    v0 = d.status()["work"]["dispatch_visits"]
    queue_many(d, c, n)
    got = 0
    while got < n:
        c.read_until(b"\n", timeout=30)
        got += 1
    visits = d.status()["work"]["dispatch_visits"] - v0
    # One visit to place each request, and at most one more per pass that found no room.
    assert visits <= 2 * n + 10, f"{visits} visits to drain {n} queued requests"
    c.close()


def test_a_single_call_waits_for_a_turn_not_for_another_clients_queue(devnode, daemon):
    """Item 9: the wait queue was one FIFO across clients, so a single call waited behind all
    of another client's queued requests. Clients with requests waiting now take turns."""
    node = devnode(latency_ms=2)
    d = daemon(node, pool_size=1, max_in_flight=1, client_max_in_flight=10000)
    hog = Conn(d)
    queue_many(d, hog, 3000)
    before = d.status()["responses"]
    with d.client() as c:
        assert c.call_ok("devnode_echo", ["mine"], timeout=30) == "mine"
    served = d.status()["responses"] - before
    assert served <= 64, f"the single call waited for {served} of another client's requests"
    hog.close()


def storage_keys(n, last="01"):
    """n distinct storage keys; a last byte of 0x01 makes the devnode change them every block."""
    return ["0x%016x%s" % (i, last) for i in range(n)]


def next_notification(c, timeout=20) -> dict:
    while True:
        msg = json.loads(c.recv_line(timeout))
        if "id" not in msg:
            return msg


def test_storage_changes_are_merged_in_constant_work_per_key(devnode, daemon):
    """Item 6: the latest value of each key of a storage subscription was found by a linear
    search per changed key, O(K^2) per block (50,000 keys held the daemon at 100% CPU). The
    daemon's own count of hash entries looked at must stay within a few per change."""
    node = devnode(block_ms=150)
    d = daemon(node, max_subscription_keys=5000)
    n = 4000
    with d.client() as c:
        assert c.call_ok("state_subscribeStorage", [storage_keys(n)])
        first = next_notification(c)
        assert len(first["params"]["result"]["changes"]) == n
        p0 = d.status()["work"]["hash_probes"]
        blocks = 4
        for _ in range(blocks):
            assert len(next_notification(c)["params"]["result"]["changes"]) == n
        probes = d.status()["work"]["hash_probes"] - p0
    # A few blocks more may have been merged while the status was asked for.
    assert probes <= 4 * n * (blocks + 3), f"{probes} probes to merge {blocks} blocks of {n} keys"


def reply_to(c: Conn, method, params, rid) -> dict:
    """Send one request on a raw connection; its reply, skipping notifications."""
    c.send(rpc(method, params, rid) + b"\n")
    while True:
        msg = json.loads(c.read_until(b"\n"))
        if msg.get("id") == rid:
            return msg


def test_subscriptions_are_bounded_per_client_and_per_subscription(devnode, daemon):
    """Item 8: one connection could hold any number of subscriptions and any number of keys
    in one; now client_max_subscriptions and max_subscription_keys refuse with -32053."""
    node = devnode()
    d = daemon(node, client_max_subscriptions=3, max_subscription_keys=10)
    with Conn(d) as c:
        r = reply_to(c, "state_subscribeStorage", [storage_keys(11, "aa")], 1)
        assert r["error"]["code"] == harness.ERR_LIMIT, r
        # No key list follows every key of the chain, without bound: refused too.
        for params in (None, [], [None]):
            r = reply_to(c, "state_subscribeStorage", params, 9)
            assert r["error"]["code"] == harness.ERR_LIMIT, (params, r)
        assert "result" in reply_to(c, "state_subscribeStorage", [storage_keys(10, "aa")], 2)
        assert "result" in reply_to(c, "chain_subscribeNewHeads", None, 3)
        assert "result" in reply_to(c, "chain_subscribeFinalizedHeads", None, 4)
        r = reply_to(c, "state_subscribeRuntimeVersion", None, 5)
        assert r["error"]["code"] == harness.ERR_LIMIT, r
        assert "client_max_subscriptions" in r["error"]["message"], r
        with Conn(d) as other:  # the cap is per client
            assert "result" in reply_to(other, "state_subscribeRuntimeVersion", None, 1)


def test_subscribes_count_against_the_queue_and_the_clients_in_flight(devnode, daemon):
    """Item 8: subscribes skipped queue_max and client_max_in_flight (496 queued with
    queue_max=20). With one upstream taking one subscription, the rest wait in the queue: a
    client stops being read at its in-flight cap, and over queue_max they are refused."""
    node = devnode()
    d = daemon(node, pool_size=1, max_subs_per_upstream=1, queue_max=6, client_max_in_flight=4)
    a = Conn(d)
    a.send(b"".join(rpc("state_subscribeStorage", [storage_keys(1, "%02x" % (i + 2))], i) + b"\n"
                    for i in range(20)))
    # One placed, three waiting: the fifth is not even read.
    d.wait_status(lambda s: s["queued"] == 3, "three of a's subscribes waiting")
    b = Conn(d)
    b.send(b"".join(rpc("state_subscribeStorage", [storage_keys(1, "%02x" % (i + 40))], i) + b"\n"
                    for i in range(4)))
    d.wait_status(lambda s: s["queued"] == 6, "the queue full")
    lines = [json.loads(b.read_until(b"\n")) for _ in range(1)]
    assert lines[0]["error"]["code"] == harness.ERR_UNAVAILABLE, lines
    status = d.status()
    assert status["queued"] == 6 and status["upstream_subscriptions"] <= 1 + 6, status
    a.close()
    b.close()


@pytest.mark.parametrize("node_answer", ["close", "reply"])
def test_a_request_too_big_for_the_node_is_refused_and_not_retried(devnode, daemon, node_answer):
    """Item 7: a request the node refuses for its size made it drop the link; subpool retried
    it on another link, which died too, and bystanders' requests failed with it. Now the
    largest request in flight on the link is charged: it alone gets -32053, once; the other
    reads in flight are answered. A node closes with 1009 (the devnode's default; the other
    reads are retried) or answers an id-null error and keeps the link (jsonrpsee)."""
    extra = ("--oversize-reply",) if node_answer == "reply" else ()
    node = devnode(*extra, max_message=1 << 20)
    d = daemon(node, pool_size=1, max_request="4M")
    handshakes = node.stats()["handshakes"]
    c = Conn(d)
    c.send(rpc("devnode_sleep", [800], 1) + b"\n")
    d.wait_status(lambda s: s["in_flight"] == 1, "the bystander's read in flight")
    c.send(rpc("devnode_echo", ["x" * (2 << 20)], 2) + b"\n")
    replies = {}
    while len(replies) < 2:
        msg = json.loads(c.read_until(b"\n", timeout=20))
        replies[msg["id"]] = msg
    assert replies[2]["error"]["code"] == harness.ERR_LIMIT, replies[2]
    assert "too large" in replies[2]["error"]["message"], replies[2]
    assert replies[1].get("result") is True, replies[1]
    d.wait_upstreams_ready()
    reconnects = 1 if node_answer == "close" else 0
    assert node.stats()["handshakes"] == handshakes + reconnects, "the big request was sent again"
    # Over max_request as sent to the node: refused here, the node never sees it.
    c.send(rpc("devnode_echo", ["x" * (4 << 20)], 3) + b"\n")
    msg = json.loads(c.read_until(b"\n", timeout=20))
    assert msg["error"]["code"] == harness.ERR_LIMIT, msg
    assert node.stats()["handshakes"] == handshakes + reconnects
    c.close()


def sanitized(binary) -> bool:
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    return "libasan" in out


def vm_rss_mib(pid) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_memory_goes_back_to_the_system_after_a_burst(devnode, daemon):
    """Item 13: after a burst the daemon stayed at its peak (glibc keeps what was freed in its
    heaps). Once clients have given back their bytes, it is returned (malloc_trim)."""
    if sanitized(harness.daemon_binary()):
        pytest.skip("the sanitizer's allocator replaces glibc's, whose memory this is about")
    node = devnode()
    d = daemon(node, log_level="info")
    start = vm_rss_mib(d.pid)
    conns = []
    for _ in range(32):
        c = Conn(d)
        conns.append(c)
        c.send(b"".join(rpc("devnode_echo", ["y" * 1000], j) + b"\n" for j in range(2000)))
    d.wait_status(lambda s: s["responses"] >= 32 * 2000, "every request answered", timeout=60)
    peak = vm_rss_mib(d.pid)
    assert peak > start + 48, f"the burst did not grow the daemon ({start:.0f} -> {peak:.0f} MiB)"
    for c in conns:
        c.close()
    harness.poll(lambda: (vm_rss_mib(d.pid), d.status()["client_memory"]),
                 lambda v: v[0] < start + 16, 15,
                 f"the daemon back near its starting size ({start:.0f} MiB) from {peak:.0f} MiB")
    assert d.status()["client_memory"]["trims"] >= 1


def test_a_node_refusal_is_charged_to_the_big_request_even_when_its_client_left(devnode, daemon):
    """Review of item 7: a request whose client has left stays in flight, but its size was
    forgotten, so a node's "too big" was charged to the next largest: here another client's
    write, which the node does run. The write must get the node's own answer."""
    node = devnode("--oversize-reply", max_message=1 << 20, latency_ms=1000)
    d = tcp_daemon(daemon, node, pool_size=1, max_request="4M")
    a = Conn(d, "tcp")  # TCP: a reset ends it at once
    a.send(rpc("devnode_echo", ["x" * (2 << 20)], 2) + b"\n")
    d.wait_status(lambda s: s["in_flight"] == 1, "a's big request in flight")
    b = Conn(d)
    b.send(rpc("author_submitExtrinsic", ["0x0102"], 1) + b"\n")
    d.wait_status(lambda s: s["in_flight"] == 2, "b's write in flight")
    # Gone before the node answers, a second later: a reset, so the daemon drops a at once.
    a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    a.close()
    d.wait_log("socket error")
    d.wait_log("as too large")
    reply = json.loads(b.read_until(b"\n", timeout=10))
    assert "result" in reply, f"b's write was blamed for a's size: {reply}"
    b.close()


def test_a_node_refusal_after_the_big_request_timed_out_blames_nobody_else(devnode, daemon):
    """Item 3 (deliver): a big request that timed out before the node said "too big" was
    forgotten, so the refusal was charged to the largest request still in flight: another
    client's read got -32053 for a size it never sent. That read must be left to its own
    fate (here it times out: the node is slow)."""
    # Each answer comes 1.5 s after its request; requests time out after 1 s: a's "too big"
    # arrives after a timed out and while b, sent after that, is still in flight.
    node = devnode("--oversize-reply", max_message=1 << 20, latency_ms=1500)
    d = daemon(node, pool_size=1, max_request="4M", request_timeout="1s", shutdown_timeout="1s")
    a, b = Conn(d), Conn(d)
    a.send(rpc("devnode_echo", ["x" * (2 << 20)], 1) + b"\n")
    timed_out = json.loads(a.read_until(b"\n", timeout=10))
    assert timed_out["error"]["code"] == harness.ERR_TIMEOUT, timed_out
    b.send(rpc("devnode_echo", ["small"], 2) + b"\n")
    reply = json.loads(b.read_until(b"\n", timeout=10))
    assert reply["error"]["code"] == harness.ERR_TIMEOUT, f"b was blamed for a's size: {reply}"
    d.wait_log("after it timed out here")
    a.close()
    b.close()


def test_each_big_request_that_timed_out_explains_one_refusal(devnode, daemon):
    """Review of the above: one remembered size explained only the first of two refusals for
    requests that had both timed out; the second fell on an innocent read in flight."""
    node = devnode("--oversize-reply", max_message=1 << 20, latency_ms=1500)
    d = daemon(node, pool_size=1, max_request="4M", request_timeout="1s", shutdown_timeout="1s")
    a1, a2, b = Conn(d), Conn(d), Conn(d)
    a1.send(rpc("devnode_echo", ["x" * (2 << 20)], 1) + b"\n")
    a2.send(rpc("devnode_echo", ["y" * (2 << 20)], 1) + b"\n")
    for a in (a1, a2):
        assert json.loads(a.read_until(b"\n", timeout=10))["error"]["code"] == harness.ERR_TIMEOUT
    b.send(rpc("devnode_echo", ["small"], 2) + b"\n")
    reply = json.loads(b.read_until(b"\n", timeout=10))
    assert reply["error"]["code"] == harness.ERR_TIMEOUT, f"b was blamed for a's size: {reply}"
    d.wait_log("after it timed out here", count=2)
    for c in (a1, a2, b):
        c.close()


def test_a_websocket_message_in_progress_is_charged(devnode, daemon):
    """Review of item 1: wslay takes a message's bytes out of the input buffer as they come,
    so a message left unfinished was held by nobody's account: many such connections could
    hold gigabytes unseen. Its bytes are charged until it ends; over the budget it is cut."""
    node = devnode()
    d = daemon(node, max_client_memory="4M")
    small = d.client()
    assert small.call_ok("system_chain") == "Bittensor"
    w = Conn(d)
    assert w.ws_upgrade().status == 101
    frame = ws_frame(OP_TEXT, b" " * (8 << 20))
    sender = Sender(w, frame[: 6 << 20])  # three quarters of an 8 MiB message, then nothing
    d.wait_log("over max_client_memory")
    sender.join()  # ended by the cut
    w.read_to_eof(timeout=10)
    assert small.call_ok("system_chain") == "Bittensor"
    small.close()
    w.close()


def test_a_408_comes_after_what_is_still_queued(devnode, daemon):
    """Review of item 10: the 408 for a slow head was written straight to the socket, in the
    middle of a keep-alive answer still queued for the client, and the rest of that answer
    was thrown away. It now follows the answer, which arrives whole."""
    node = devnode()
    d = daemon(node, handshake_timeout="500ms")
    c = Conn(d)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = rpc("devnode_blob", [4 << 20])
    c.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
           + b"GET /health HTTP/1.1\r\nHost: loc")  # a second head, never finished
    d.wait_log("no complete request within handshake_timeout")
    first = c.http_response(timeout=20)
    assert first.status == 200 and len(first.json()["result"]) == 4 << 20
    second = c.http_response(timeout=10)
    assert second.status == 408 and second.closes, second
    c.close()


def test_a_budget_without_a_unit_is_a_config_error(daemon_bin):
    """max_client_memory = 512 (bytes) would cut every client as it connects: refused."""
    r = harness.run_oneshot([daemon_bin, "-o", "max_client_memory=512", "--check-config"])
    assert r.returncode == 2 and "max_client_memory" in r.stderr, r


def test_what_a_subscription_keeps_is_charged_to_its_subscribers(devnode, daemon):
    """Review of item 1: the latest value and the storage values a subscription keeps for late
    joiners were charged to nobody (1,024 subscriptions each keeping a 1.5 MB value would be
    3 GB unseen). Each subscriber is charged them, and they are released when it leaves."""
    node = devnode()
    d = daemon(node, max_subscription_keys=1000)
    base = held(d)
    keys = storage_keys(1000, "aa")  # values of 4..96 bytes that never change
    with Conn(d) as c:
        assert "result" in reply_to(c, "state_subscribeStorage", [keys], 1)
        first = json.loads(c.read_until(b"\n"))
        size = len(json.dumps(first["params"]["result"]))
        charged = harness.poll(lambda: held(d) - base, lambda h: h >= size, 10,
                               f"the subscription's {size} bytes of values charged")
        assert charged < 4 * size + 256 * KiB, charged
    harness.poll(lambda: held(d), lambda h: h <= base, 10, "released when the client left")


def test_refused_connections_cannot_flood_the_log(devnode, daemon):
    """A local loop of connect() over max_clients_per_uid was one log line (and a /proc read)
    per refusal. Refusals are logged at most once a second, saying how many went unlogged."""
    node = devnode()
    d = daemon(node, max_clients_per_uid=1)
    holder = sole_client(d)
    n = 200
    for _ in range(n):
        with Conn(d) as c:
            assert b"max_clients_per_uid" in c.read_to_eof()
    lines = d.log.count("max_clients_per_uid (1) reached")
    assert 1 <= lines < n // 4, f"{lines} log lines for {n} refused connections"
    holder.close()


def test_a_reply_shared_by_reference_counts_once(devnode, daemon):
    """Item 2 (deliver): a notification from the node goes to every subscriber of a shared
    subscription by reference, and what the subscription keeps is one copy; each subscriber's
    account counts them (its limits are about what it makes the daemon keep), but the
    daemon's budget counts them once. They were counted once per client, so eight clients
    that read nothing looked like eight times the memory the daemon held."""
    node = devnode(block_ms=0)
    d = daemon(node, max_subscription_keys=4000)
    keys = storage_keys(4000)
    clients = []
    for i in range(8):
        c = Conn(d)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        clients.append(c)
        assert "result" in reply_to(c, "state_subscribeStorage", [keys], i)
    size = len(json.loads(clients[0].read_until(b"\n"))["params"]["result"]["changes"]) * 90
    [sub] = d.wait_status(lambda s: len(s["subscriptions"]) == 1, "one shared subscription")[
        "subscriptions"]
    assert sub["subscribers"] == 8, sub
    base = held(d)
    blocks = 8
    for n in range(blocks):
        node.call("devnode_newBlock")
        d.wait_status(lambda s: s["subscriptions"][0]["delivered"] >= sub["delivered"] + n + 1,
                      f"block {n + 1} delivered")
    grown = held(d) - base
    # Each block's notification, about `size` bytes, is held for the clients that left it
    # unread: once (plus the subscription's new values, once), not once per client.
    assert 2 * size < grown < 2 * blocks * size, (grown, size)
    for c in clients:
        c.close()
    harness.poll(lambda: held(d), lambda h: h <= base // 4, 10, "released when the clients left")


def test_a_full_queue_makes_room_for_a_client_with_fewer_waiting(devnode, daemon):
    """Item 2 (deliver): queue_max was one pool for every client, so a few connections at
    client_max_in_flight filled it and every other client's requests were refused with
    -32050. Now the client with the most requests waiting gives up its newest to a client
    with fewer; between clients with as many, the newcomer is refused."""
    node = devnode(latency_ms=10000)  # nothing is answered while the test runs
    d = daemon(node, pool_size=1, max_in_flight=1, queue_max=20, client_max_in_flight=1000,
               shutdown_timeout="1s")
    a, b, c = Conn(d), Conn(d), Conn(d)
    a.send(b"".join(rpc("devnode_echo", [i], i) + b"\n" for i in range(15)))
    d.wait_status(lambda s: s["queued"] == 14 and s["in_flight"] == 1, "a: one sent, 14 waiting")
    b.send(b"".join(rpc("devnode_echo", [i], i) + b"\n" for i in range(100, 106)))
    d.wait_status(lambda s: s["queued"] == 20, "the queue full")
    # c has none waiting: a, with the most, gives up its newest.
    c.send(rpc("devnode_echo", ["c"], "c") + b"\n")
    evicted = json.loads(a.read_until(b"\n"))
    assert evicted["id"] == 14 and evicted["error"]["code"] == harness.ERR_UNAVAILABLE, evicted
    assert "most requests waiting" in evicted["error"]["message"], evicted
    status = d.wait_status(lambda s: s["queue_evicted"] == 1, "one eviction counted")
    assert status["queued"] == 20, status
    # a, still the one with the most, gets no room from anyone: its own new request is refused.
    a.send(rpc("devnode_echo", ["more"], 50) + b"\n")
    refused = json.loads(a.read_until(b"\n"))
    assert refused["id"] == 50 and refused["error"]["code"] == harness.ERR_UNAVAILABLE, refused
    assert "most requests waiting" not in refused["error"]["message"], refused
    assert d.status()["queue_evicted"] == 1
    for conn in (a, b, c):
        conn.close()


def test_cutting_clients_that_share_bytes_never_cuts_bystanders(devnode, daemon):
    """Review of the shared ledger: the shedder summed what clients being cut hold in full,
    shared bytes included, though the ledger has those once; the sum passed the ledger's
    total, the subtraction wrapped, and every client was cut, an idle one included. Six
    subscribers of one large subscription that read nothing are cut for client_max_output in
    one delivery while the daemon is over its budget: the bystander must be left alone."""
    node = devnode(block_ms=0)
    d = daemon(node, pool_size=1, max_subscription_keys=4000, client_max_output="64K",
               max_client_memory="1450000", shutdown_timeout="1s")
    keys = storage_keys(4000)
    reader = Conn(d)
    assert "result" in reply_to(reader, "state_subscribeStorage", [keys], 0)
    reader.read_until(b"\n", timeout=10)
    sharers = []
    for i in range(6):
        c = Conn(d)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert "result" in reply_to(c, "state_subscribeStorage", [keys], i + 1)
        c.read_until(b"\n", timeout=10)
        sharers.append(c)
    bystander = Conn(d)
    assert "result" in reply_to(bystander, "subpool_ping", [], 99)

    def delivered():
        subs = d.status()["subscriptions"]
        return subs[0]["delivered"] if subs else -1

    for n in range(3):
        before = delivered()
        node.call("devnode_newBlock")
        harness.poll(delivered, lambda v: v != before, 10, f"block {n + 1} delivered")
        if n == 0:
            reader.read_until(b"\n", timeout=10)  # the reader keeps up; the others do not
    d.wait_log("exceed client_max_output", count=6)
    assert "result" in reply_to(bystander, "subpool_ping", [], 100), "the bystander was cut"
    assert "holds 18446744" not in d.log, "the shedder's sum wrapped"
    for c in sharers + [reader, bystander]:
        c.close()


def test_the_key_a_shared_read_is_known_by_is_charged_to_its_client(devnode, daemon):
    """Review of coalescing: a pure read keeps a canonical copy of its params as its key,
    as large as the request allows, and it was charged to nobody. It is charged with the
    request, so a pending read of 2 MB of params holds about twice that."""
    node = devnode(block_ms=0, latency_ms=2000)
    d = daemon(node, pool_size=1, max_request="8M", shutdown_timeout="1s")
    h = node.call("chain_getBlockHash", [0])
    base = held(d)
    data = "0x" + "ab" * (1 << 20)  # 2 MB of hex
    c = Conn(d)
    c.send(rpc("state_call", ["Api_call", data, h], 1) + b"\n")
    d.wait_status(lambda s: s["in_flight"] == 1, "the read in flight")
    grown = held(d) - base
    assert grown > 2 * len(data), (grown, len(data))
    c.close()
