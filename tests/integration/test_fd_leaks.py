"""A daemon that runs for months must give back every descriptor it takes: whatever happens
to its links (closed by the node, hung up mid-upgrade, refused, failing certificate checks,
over ws:// and wss://) and however its clients leave (after a reply, mid-request, mid-frame,
mid-HTTP-request), its descriptor table returns to what it was. Counted from /proc."""

import os
from collections import Counter

import pytest

from harness import ERR_UNAVAILABLE, check_reply_error, check_reply_ok, poll
from localwire import Conn, rpc, tcp_daemon
from tlscerts import LOCAL_SANS, Ca

FAST = {"reconnect_min": "50ms", "reconnect_max": "100ms", "health_interval": "1h"}
CYCLES = 4


def fd_table(pid) -> dict:
    """fd number -> what it refers to (socket:[inode], a path, anon_inode:[eventpoll], ...)."""
    table = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            table[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:  # closed between listdir and readlink
            pass
    return table


def kinds(table) -> Counter:
    """How many sockets, and which files, pipes and epoll: numbers may differ (a socket taken
    while another was open gets the next free number and keeps it)."""
    return Counter(t.split(":[")[0] if t.startswith(("socket:", "anon_inode:")) else t
                   for t in table.values())


def readings(d, observer, n=3):
    """n readings of (clients, descriptor kinds), each after a status round trip on the one
    connection the test keeps open: a socket closed a moment ago is gone by the last one."""
    out = []
    for _ in range(n):
        clients = observer.call_ok("subpool_status")["clients"]
        out.append((clients, kinds(fd_table(d.pid))))
    return out


def steady(d, observer):
    """The daemon's descriptors with only the observer connected, the same three times over."""
    return poll(lambda: readings(d, observer), lambda r: all(x == r[0] for x in r) and
                r[0][0] == 1, 10, "three equal readings with one client")[0][1]


def expect_steady(d, observer, baseline, what):
    poll(lambda: readings(d, observer, 1)[0], lambda r: r == (1, baseline), 10,
         f"{what}: one client and the descriptors of the start {dict(baseline)}")


@pytest.fixture(params=["ws", "wss"])
def link(request, devnode, tmp_path):
    """A node over ws:// or wss://, and the daemon options to trust it."""
    if request.param == "ws":
        return devnode(), {}
    ca = Ca(tmp_path / "pki")
    cert, key = ca.issue("node", LOCAL_SANS)
    return devnode(tls_cert=cert, tls_key=key, url_host="localhost"), {"tls_ca_file": ca.cert}


def wait_counter(node, key, more_than, what):
    return poll(node.stats, lambda s: s[key] > more_than, 15, what)[key]


def test_lost_links_give_back_their_descriptors(link, daemon):
    node, opts = link
    d = daemon(node, pool_size=2, **FAST, **opts)
    with d.client() as observer:
        check_reply_ok(observer.call("devnode_echo", ["warm"]), b"1", "warm")
        baseline = steady(d, observer)
        # The listener, the observer and the two links at least.
        assert baseline["socket"] >= 4, baseline

        for cycle in range(CYCLES):
            stats = node.stats()
            # Links closed by the node after the upgrade; every new one closed again at once.
            node.fault("close")
            wait_counter(node, "handshakes", stats["handshakes"] + 2, "links closed and retried")
            # Links hung up after the upgrade request: the node read it and closed.
            node.fault("hangup")
            wait_counter(node, "hangups", stats["hangups"], "a reconnect hung up mid-upgrade")
            # Links refused with 429 and Retry-After.
            node.fault("refuse429")
            wait_counter(node, "refused", stats["refused"], "a reconnect refused with 429")
            node.fault("none")
            d.wait_upstreams_ready()
            assert observer.call_ok("devnode_echo", [f"c{cycle}"]) == f"c{cycle}"
            expect_steady(d, observer, baseline, f"after cycle {cycle + 1}")
        assert all(u["reconnects"] >= CYCLES for u in d.status()["upstreams"]), d.status()


def test_failed_certificate_checks_give_back_their_descriptors(devnode, daemon, tmp_path):
    """Every attempt at a node whose certificate no trusted CA signed fails in the TLS
    handshake; none may keep its socket. Attempts never stop here, so the bound is
    structural: the listener, the observer and at most one socket per link."""
    ca, other = Ca(tmp_path / "pki"), Ca(tmp_path / "other", "other")
    cert, key = ca.issue("node", LOCAL_SANS)
    node = devnode(tls_cert=cert, tls_key=key, url_host="localhost")
    d = daemon(node.url, pool_size=2, tls_ca_file=other.cert, request_timeout="1s", **FAST)
    wait_counter(node, "tls_failures", 0, "the first refused handshake")
    with d.client() as observer:
        raw = observer.request("devnode_echo", ["x"])
        check_reply_error(observer.recv_id(raw, 10), ERR_UNAVAILABLE, raw)
        failures = node.stats()["tls_failures"]
        seen = []
        while node.stats()["tls_failures"] < failures + 4 * CYCLES or len(seen) < 20:
            seen.append(readings(d, observer, 1)[0])
        assert seen, "no reading taken"
        # /proc is read while sockets come and go: a reading can catch one closing as the
        # next opens. A leak only grows, so the fewest sockets seen of late is the measure.
        last = [k["socket"] for clients, k in seen[-20:] if clients == 1]
        assert len(seen) >= 20 and min(last) <= 1 + 1 + 2, seen[-20:]


def test_clients_that_leave_any_way_give_back_their_descriptors(devnode, daemon):
    node = devnode()
    d = tcp_daemon(daemon, node, pool_size=2)
    with d.client() as observer:
        baseline = steady(d, observer)
        held = []
        for i in range(CYCLES * 8):
            transport = ("unix", "tcp")[i % 2]
            way = i // 2 % 4
            c = Conn(d, transport)
            if way == 0:  # NDJSON: a reply, then close
                c.send(rpc("devnode_echo", [i], i) + b"\n")
                assert c.read_until(b"\n").startswith(b'{"jsonrpc":"2.0","id":%d,' % i)
                c.close()
            elif way == 1:  # gone with a slow request in flight and a half line after it
                c.send(rpc("devnode_sleep", [1000], i) + b"\n" + b'{"jsonrpc":"2.0","id":')
                held.append(c)
            elif way == 2:  # a websocket mid-frame: the head promises more than ever comes
                assert c.ws_upgrade().status == 101
                c.send(b"\x81\xfe\x01\x00" + b"\0" * 4 + b"x" * 10)
                held.append(c)
            else:  # HTTP: a body shorter than its Content-Length
                c.http_send("POST", "/", b"{", headers={"Content-Length": "100"})
                held.append(c)
        # The daemon is seen to hold them all, then every one goes at once, the slow requests
        # still in flight.
        poll(lambda: observer.call_ok("subpool_status"),
             lambda st: st["clients"] == len(held) + 1 and st["in_flight"] >= 1, 10,
             f"{len(held)} clients held, slow requests in flight")
        for c in held:
            c.close()
        expect_steady(d, observer, baseline, "after every client left")
        # The slow requests' replies arrive for nobody and take nothing either.
        poll(lambda: observer.call_ok("subpool_status")["in_flight"], lambda n: n == 0, 10,
             "no request in flight")
        expect_steady(d, observer, baseline, "after the orphaned replies")
        assert observer.call_ok("devnode_echo", ["after"]) == "after"
