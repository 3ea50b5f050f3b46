"""wss:// upstreams: the daemon verifies the node's certificate chain and name (or IP
address) before it sends anything, reports a rejected certificate in one log line and in
status, backs off, and keeps the usual guarantees (reads retried, writes never replayed)
over TLS. Certificates are made per test with the openssl CLI."""

import re
import time

import pytest

from harness import ERR_UNAVAILABLE, ERR_UNKNOWN_WRITE, check_reply_error, check_reply_ok, poll
from tlscerts import LOCAL_SANS, Ca

FAST = {"reconnect_min": "100ms", "reconnect_max": "400ms", "health_interval": "1h"}
XT = "0x" + "cd" * 40


@pytest.fixture
def ca(tmp_path):
    return Ca(tmp_path / "pki")


def tls_node(devnode, cert_key, **options):
    cert, key = cert_key
    return devnode(tls_cert=cert, tls_key=key, url_host="localhost", **options)


def test_valid_chain_connects_and_serves(devnode, daemon, ca):
    node = tls_node(devnode, ca.issue("node", LOCAL_SANS))
    assert node.url.startswith("wss://localhost:")
    d = daemon(node, pool_size=2, tls_ca_file=ca.cert, **FAST)
    with d.client() as c:
        for i in range(20):
            check_reply_ok(c.call("devnode_echo", [f"tls{i}"]), str(i + 1).encode(), f"tls{i}")
        header = c.call_ok("chain_getHeader")
        assert header["number"].startswith("0x")
        size = 8 << 20  # many TLS records, one websocket message
        blob = c.call_ok("devnode_blob", [size], timeout=30)
        assert blob == ("abcdefghijklmnopqrstuvwxyz" * (size // 26 + 1))[:size]
    status = d.status()
    assert [u["endpoint"] for u in status["upstreams"]] == [node.url] * 2
    assert all(u["state"] == "ready" and u["last_error"] is None for u in status["upstreams"])
    assert node.upstream_connections() == 2
    assert node.stats()["tls_failures"] == 0
    poll(lambda: re.search(r"upstream 0 \(localhost:\d+\): TLSv1\.[23] \S+, certificate verified "
                           r"for localhost", d.log), bool, 10, "the TLS session in the log")


def test_ip_address_is_checked_against_ip_sans(devnode, daemon, ca):
    """A literal address needs an IP subjectAltName (and no SNI is sent): IPv4 and IPv6."""
    cert, key = ca.issue("node", LOCAL_SANS)
    v4 = devnode(tls_cert=cert, tls_key=key)
    v6 = devnode(tls_cert=cert, tls_key=key, host="::1")
    assert v4.url.startswith("wss://127.0.0.1:") and v6.url.startswith("wss://[::1]:")
    for node in (v4, v6):
        d = daemon(node, pool_size=1, tls_ca_file=ca.cert, **FAST)
        with d.client() as c:
            check_reply_ok(c.call("devnode_echo", ["ip"]), b"1", "ip")
        assert d.stop() == 0


REFUSALS = {
    # case: (certificate, trusted CA file or None for the system store, reason in the log)
    "wrong_hostname": ("other", True, "hostname mismatch"),
    "unknown_ca": ("node", False, "unable to get local issuer certificate"),
    "expired": ("expired", True, "certificate has expired"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_certificate_is_refused_before_any_request(devnode, daemon, ca, case):
    name, trusted, reason = REFUSALS[case]
    if name == "other":
        cert_key = ca.issue("other", ["DNS:other.example"])
    elif name == "expired":
        cert_key = ca.issue("expired", LOCAL_SANS, days=-1)
    else:
        cert_key = ca.issue("node", LOCAL_SANS)
    node = tls_node(devnode, cert_key)
    opts = dict(FAST, request_timeout="1s")
    if trusted:
        opts["tls_ca_file"] = ca.cert
    d = daemon(node.url, pool_size=1, **opts)

    line = (rf"warn +upstream 0 \(localhost:{node.port}\): attempt failed: TLS: certificate "
            rf"rejected: {reason}")
    d.wait_status(lambda s: reason in (s["upstreams"][0]["last_error"] or ""),
                  f"status last_error naming {reason!r}")
    # The log is read by another thread: it may trail the status a little.
    poll(lambda: re.search(line, d.log), bool, 10, f"the log line {line!r}")
    assert d.status()["upstreams"][0]["state"] != "ready"

    # Nothing is ever sent to it: a request waits for an upstream and fails with -32050.
    with d.client() as c:
        raw = c.request("devnode_echo", ["secret"])
        check_reply_error(c.recv_id(raw, 10), ERR_UNAVAILABLE, raw)

    # It backs off: a few attempts over a second and a half, not a tight loop.
    first = node.stats()["tls_failures"]
    time.sleep(1.5)
    stats = node.stats()
    assert first >= 1, stats
    assert stats["tls_failures"] - first <= 12, f"no backoff: {stats}"
    # Only our own control connection ever got past TLS and upgraded.
    assert stats["handshakes"] == 1 and stats["connections"] == 1, stats
    # One clear warning, not one per attempt (repeats are logged every tenth time).
    assert len(re.findall(line, d.log)) <= 2, d.log[-3000:]


def test_over_tls_reads_are_retried_and_writes_never_replayed(devnode, daemon, ca):
    node = tls_node(devnode, ca.issue("node", LOCAL_SANS), latency_ms=400)
    d = daemon(node, pool_size=1, tls_ca_file=ca.cert, **FAST)
    with d.client() as c:
        reads = {c.request("devnode_echo", [f"r{i}"]): f"r{i}" for i in range(10)}
        write = c.request("author_submitExtrinsic", [XT])
        d.wait_status(lambda s: s["in_flight"] == 11, "11 requests in flight")
        node.fault("close")
        node.fault("none")
        check_reply_error(c.recv_id(write, 10), ERR_UNKNOWN_WRITE, write)
        for raw, payload in reads.items():
            check_reply_ok(c.recv_id(raw, 10), raw, payload)
    status = d.wait_upstreams_ready()
    assert status["upstreams"][0]["reconnects"] >= 1
    assert node.stats()["extrinsics"] == 1, "the write reached the node once and was not resent"


def test_plain_websocket_to_a_tls_node_fails_cleanly(devnode, daemon, ca):
    """A ws:// URL pointing at a TLS port: no upgrade happens, the daemon backs off."""
    node = tls_node(devnode, ca.issue("node", LOCAL_SANS))
    d = daemon(f"ws://127.0.0.1:{node.port}", pool_size=1, connect_timeout="1s", **FAST)
    d.wait_status(lambda s: s["upstreams"][0]["last_error"] is not None, "a failed attempt")
    assert d.status()["ready"] == 0
    assert node.stats()["handshakes"] == 1


def test_requests_larger_than_the_socket_buffers_go_out_whole_and_in_order(devnode, daemon, ca):
    """Six 2 MiB requests and 300 small ones at once over one TLS link: the records the
    kernel does not take at once wait for the socket to drain, nothing is lost or mixed."""
    node = tls_node(devnode, ca.issue("node", LOCAL_SANS))
    d = daemon(node, pool_size=1, tls_ca_file=ca.cert, **FAST)
    with d.client() as c:
        sent = {}
        for i in range(6):
            payload = chr(ord("a") + i) * (2 << 20)
            sent[c.request("devnode_echo", [payload])] = payload
            for k in range(50):
                sent[c.request("devnode_echo", [f"s{i}.{k}"])] = f"s{i}.{k}"
        for raw, payload in sent.items():
            check_reply_ok(c.recv_id(raw, 60), raw, payload)
    assert d.status()["upstreams"][0]["reconnects"] == 0
    assert node.stats()["tls_failures"] == 0
