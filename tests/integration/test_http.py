"""Plain HTTP/1.1 on the local socket and the loopback port: JSON-RPC over POST / (as a
node's HTTP endpoint answers it), keep-alive, GET /health and the error statuses. Uses
Debian's curl where the acceptance list names it, raw sockets and http.client elsewhere."""

import http.client
import json
import shutil
import socket
import subprocess
import time

import pytest

import harness
from localwire import TRANSPORTS, Conn, quiet_pool_options, rpc, settled, tcp_daemon


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    return request.param


def curl(d, transport, *args, timeout=30):
    exe = shutil.which("curl")
    if not exe:
        pytest.skip("curl is not installed (Debian package curl)")
    if transport == "unix":
        where = ["--unix-socket", d.socket]
        base = "http://localhost"
    else:
        where = []
        base = f"http://127.0.0.1:{d.tcp_port}"
    argv = [exe, "-sS", "--max-time", str(timeout), *where,
            *[a.replace("BASE", base) for a in args]]
    p = subprocess.run(argv, capture_output=True, timeout=timeout + 5)
    assert p.returncode == 0, f"{argv} exited {p.returncode}: {p.stderr.decode()}"
    return p.stdout


def test_curl_post_gets_the_nodes_answer(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)
    for method in ("system_chain", "chain_getHeader", "state_getRuntimeVersion"):
        out = curl(d, transport, "-H", "Content-Type: application/json",
                   "-d", rpc(method, None, 1).decode(), "BASE/")
        assert json.loads(out) == {"jsonrpc": "2.0", "id": 1, "result": node.call(method)}, out[:300]
    # The 600 KB metadata and a batch, with curl's view of the status and type.
    out = curl(d, transport, "-d", rpc("state_getMetadata", None, "m").decode(),
               "-w", "\n%{http_code} %{content_type}", "BASE/")
    body, _, trailer = out.rpartition(b"\n")
    assert trailer.startswith(b"200 application/json"), trailer
    assert json.loads(body)["result"] == node.call("state_getMetadata")
    batch = json.dumps([json.loads(rpc("devnode_echo", [i], i)) for i in range(5)])
    out = curl(d, transport, "-d", batch, "BASE/")
    assert sorted((r["id"], r["result"]) for r in json.loads(out)) == [(i, i) for i in range(5)]


def test_curl_keep_alive_two_requests_one_connection(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)
    accepted = d.status()["accepted"]
    out = curl(d, transport, "-d", rpc("devnode_echo", ["k"], 1).decode(),
               "-w", "\n%{http_code} connects=%{num_connects}\n", "BASE/", "BASE/?again")
    lines = out.decode().splitlines()
    reply = '{"jsonrpc":"2.0","id":1,"result":"k"}'
    assert lines == [reply, "200 connects=1", reply, "200 connects=0"], \
        f"expected two answers on one connection (the second with no new connect): {lines}"
    # One connection for curl, one for each subpool_status.
    assert d.status()["accepted"] == accepted + 2


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.path = path
        self.connects = 0

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)
        self.connects += 1


class CountingHTTPConnection(http.client.HTTPConnection):
    connects = 0

    def connect(self):
        super().connect()
        self.connects += 1


def http_client(d, transport):
    if transport == "unix":
        return UnixHTTPConnection(d.socket)
    return CountingHTTPConnection("127.0.0.1", d.tcp_port, timeout=10)


def test_keep_alive_with_http_client(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)
    conn = http_client(d, transport)
    try:
        for i in range(5):
            conn.request("POST", "/", body=rpc("devnode_echo", [f"ka{i}"], i),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200 and not resp.will_close, (resp.status, resp.getheaders())
            assert json.loads(body) == {"jsonrpc": "2.0", "id": i, "result": f"ka{i}"}
            conn.request("GET", "/health")
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
        assert conn.connects == 1, f"{conn.connects} connections for 10 keep-alive requests"
    finally:
        conn.close()


def test_pipelined_requests_are_answered_in_order(devnode, daemon, transport):
    """Three requests in one write, the first slow: responses come in request order."""
    node = devnode()
    d = tcp_daemon(daemon, node)
    with Conn(d, transport) as c:
        reqs = [rpc("devnode_sleep", [300], "slow"), rpc("devnode_echo", ["fast"], "fast"),
                rpc("subpool_ping", None, "local")]
        wire = b"".join(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(r), r) for r in reqs)
        c.send(wire + b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        ids = [c.http_response().json()["id"] for _ in reqs]
        assert ids == ["slow", "fast", "local"]
        assert c.http_response().status == 200


def test_notification_only_post_gets_200_empty(devnode, daemon, transport):
    node = devnode()
    d = settled(tcp_daemon(daemon, node, **quiet_pool_options()))
    before = node.stats()["requests"]
    with Conn(d, transport) as c:
        note = b'{"jsonrpc":"2.0","method":"devnode_echo","params":["n"]}'
        for body in (note, b"[" + note + b"," + note + b"]"):
            r = c.http("POST", "/", body)
            assert (r.status, r.body) == (200, b""), r
            assert not r.closes, r
        # The connection is still good afterwards.
        r = c.http("POST", "/", rpc("devnode_echo", ["after"], 1))
        assert r.json()["result"] == "after"
    # Notifications are not forwarded: the node saw the echo and our two stats calls only.
    assert node.stats()["requests"] == before + 2


def test_subscribe_over_http_gets_the_nodes_error(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)
    with Conn(d, transport) as c:
        for method in ("chain_subscribeNewHeads", "state_subscribeRuntimeVersion",
                       "chain_unsubscribeNewHeads"):
            r = c.http("POST", "/", rpc(method, [] if "unsub" not in method else ["0x01"], 5))
            assert r.status == 200, r
            reply = r.json()
            assert reply["id"] == 5 and reply["error"]["code"] == harness.METHOD_NOT_FOUND, reply
        # In a batch, only that element is refused.
        r = c.http("POST", "/", json.dumps([json.loads(rpc("chain_subscribeNewHeads", [], 1)),
                                            json.loads(rpc("devnode_echo", ["b"], 2))]).encode())
        by_id = {e["id"]: e for e in r.json()}
        assert by_id[1]["error"]["code"] == harness.METHOD_NOT_FOUND
        assert by_id[2]["result"] == "b"
    assert node.stats()["subscriptions"] == 0


def health(d, transport):
    with Conn(d, transport) as c:
        r = c.http("GET", "/health")
        return r.status, r.json()


def test_health_follows_the_upstreams(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node, pool_size=3, reconnect_min="50ms", reconnect_max="300ms")
    with Conn(d, transport) as c:
        r = c.http("GET", "/health")
        assert r.status == 200, r
        assert r.headers["content-type"].startswith("application/json")
        assert r.json() == {"status": "ok", "ready": 3, "pool_size": 3}
    assert node.stop() == 0
    status, body = harness.poll(lambda: health(d, transport), lambda v: v[0] == 503, 10,
                                "/health to answer 503 with the node stopped")
    assert body == {"status": "unavailable", "ready": 0, "pool_size": 3}
    node.restart()
    harness.poll(lambda: health(d, transport), lambda v: v == (200, {"status": "ok", "ready": 3,
                                                                    "pool_size": 3}),
                 15, "/health back to 200 with every upstream ready")


def test_unknown_path_and_wrong_method(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)
    with Conn(d, transport) as c:
        for method, path, status in [("GET", "/nope", 404), ("POST", "/rpc", 404), ("GET", "/", 405),
                                     ("PUT", "/", 405), ("POST", "/health", 405),
                                     ("DELETE", "/metrics", 405), ("GET", "/health?x=1", 200)]:
            body = b"{}" if method in ("POST", "PUT") else None
            r = c.http(method, path, body)
            assert r.status == status, (method, path, r)
            assert not r.closes, f"{method} {path}: keep-alive expected: {r}"
        # Still usable for JSON-RPC.
        assert c.http("POST", "/", rpc("subpool_ping")).json()["result"] == "pong"


def test_connection_close_and_http_1_0(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)
    with Conn(d, transport) as c:
        r = c.http("POST", "/", rpc("subpool_ping"), {"Connection": "close"})
        assert r.status == 200 and r.closes, r
        c.expect_eof(5)
    with Conn(d, transport) as c:
        r = c.http("GET", "/health", version="1.0")
        assert r.status == 200 and r.closes, r
        c.expect_eof(5)
    with Conn(d, transport) as c:
        r = c.http("POST", "/", rpc("subpool_ping"), {"Connection": "keep-alive"}, version="1.0")
        assert r.status == 200 and not r.closes, r
        assert c.http("GET", "/health", version="1.0").closes


def test_post_without_length_or_too_large(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node, max_request="4K")
    with Conn(d, transport) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        r = c.http_response()
        assert r.status == 411 and r.closes, r
        c.expect_eof(5)
    with Conn(d, transport) as c:
        r = c.http("POST", "/", b"x" * 5000)
        assert r.status == 413 and r.closes, r
        c.expect_eof(5)
    with Conn(d, transport) as c:
        body = rpc("devnode_echo", ["z" * 4000], 1)
        assert len(body) <= 4096
        assert c.http("POST", "/", body).json()["result"] == "z" * 4000


def test_curl_large_body_is_not_stalled_by_expect_continue(devnode, daemon, transport, tmp_path):
    """Debian's curl sends `Expect: 100-continue` with bodies over 1 MiB and then waits up
    to 1 s for an interim response before sending the body (RFC 9110 10.1.1); a node's
    HTTP endpoint answers 100 at once. (Large bodies are real: author_submitExtrinsic
    with a runtime upgrade.)"""
    node = devnode()
    d = tcp_daemon(daemon, node)
    payload = "e" * 1_500_000
    body_file = tmp_path / "body.json"
    body_file.write_bytes(rpc("devnode_echo", [payload], 1))
    start = time.monotonic()
    out = curl(d, transport, "-d", f"@{body_file}", "BASE/")
    took = time.monotonic() - start
    assert json.loads(out)["result"] == payload
    assert took < 0.9, f"a 1.5 MB POST with curl took {took:.2f}s (Expect: 100-continue not answered)"
