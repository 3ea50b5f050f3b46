"""Item 12 of the bounds issue: input that two readers could take for different things gets
one clear answer, and the socket's lock file is never opened through a symlink."""

import os

import pytest

import harness
from localwire import TRANSPORTS, Conn, rpc, tcp_daemon


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    return request.param


def test_an_escaped_id_key_is_an_id(devnode, daemon):
    """{"\\u0069d":6,...} has an id: it gets a reply carrying it, not silence as a
    notification would."""
    node = devnode()
    d = daemon(node)
    with d.client() as c:
        c.send_line(b'{"jsonrpc":"2.0","\\u0069d":6,"method":"system_chain"}')
        reply = c.recv(timeout=10)
        assert reply.id_raw == b"6" and reply.result == "Bittensor", reply
        # Escaped envelope names all round, and an escaped second id is a duplicate.
        c.send_line(b'{"json\\u0072pc":"2.0","i\\u0064":7,"\\u006dethod":"system_chain"}')
        assert c.recv(timeout=10).result == "Bittensor"
        c.send_line(b'{"jsonrpc":"2.0","id":8,"\\u0069d":9,"method":"system_chain"}')
        assert c.recv(timeout=10).code == harness.INVALID_REQUEST


@pytest.mark.parametrize("head, status", [
    (b"GET /health HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
     b"Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n\r\n", 400),
    (b"GET /health HTTP/2.0\r\nHost: localhost\r\n\r\n", 505),
    (b"GET /health HTTP/3.1\r\nHost: localhost\r\n\r\n", 505),
], ids=["two-hosts", "no-host", "two-lengths", "two-keys", "http2", "http3"])
def test_ambiguous_http_heads_are_refused(devnode, daemon, transport, head, status):
    node = devnode()
    d = tcp_daemon(daemon, node) if transport == "tcp" else daemon(node)
    with Conn(d, transport) as c:
        c.send(head)
        r = c.http_response()
        assert r.status == status and r.closes, r
    with Conn(d, transport) as c:
        # Identical duplicate lengths may pass (RFC 9110 8.6); a later minor version is 1.1.
        body = rpc("system_chain")
        c.send(b"POST / HTTP/1.7\r\nHost: localhost\r\nContent-Length: %d\r\nContent-Length: %d\r\n"
               b"\r\n%s" % (len(body), len(body), body))
        r = c.http_response()
        assert r.status == 200 and r.json()["result"] == "Bittensor", r
        assert not r.closes, "a higher 1.x minor version is not kept alive like 1.1"
    # HTTP/1.0 may leave Host out.
    with Conn(d, transport) as c:
        c.send(b"GET /health HTTP/1.0\r\n\r\n")
        assert c.http_response().status == 200


def test_the_lock_file_is_never_opened_through_a_symlink(daemon, short_dir):
    """A dangling <socket>.lock symlink must not make the daemon create a file where it
    points: start-up fails naming the lock file, and nothing is created."""
    sock = short_dir / "s.sock"
    target = short_dir / "elsewhere"
    os.symlink(target, str(sock) + ".lock")
    d = daemon("ws://127.0.0.1:9", socket_path=str(sock), wait=False)
    assert d.wait_exit(10) != 0
    d.stopped = True
    assert not target.exists(), "the daemon created a file through the lock file's symlink"
    assert "s.sock.lock" in d.log and "symbolic links" in d.log, d.log[-500:]
