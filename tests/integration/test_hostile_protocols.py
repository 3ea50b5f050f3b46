"""Hostile input on each local framing (HTTP, WebSocket, NDJSON over TCP), on the Unix
socket and the TCP port: each gets a clear error or a close, while other clients (an
NDJSON client in a thread and a websocket) keep being served and the upstreams are
never disturbed."""

import json
import os
import random
import struct
import threading
import time

import pytest

import harness
from localwire import (CLOSE_INVALID_DATA, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, OP_BINARY, OP_CLOSE,
                       OP_CONT, OP_PING, OP_TEXT, TRANSPORTS, Conn, WsClosed, requests_for, rpc, tcp_daemon,
                       ws_frame)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    return request.param


class Bystanders:
    """Other clients: BackgroundTraffic (NDJSON in a thread) and an open websocket that is
    checked after each hostile case. finish() also checks that no upstream was replaced."""

    def __init__(self, d, node):
        self.d, self.node = d, node
        self.handshakes = node.stats()["handshakes"]
        self.bg = harness.BackgroundTraffic(d)
        self.ws = Conn(d, "tcp" if getattr(d, "tcp_port", None) else "unix")
        assert self.ws.ws_upgrade().status == 101
        self.n = 0

    def check(self, what):
        self.n += 1
        payload = f"bystander after {what}"
        self.ws.ws_text(rpc("devnode_echo", [payload], self.n))
        reply = self.ws.ws_json()
        assert reply == {"jsonrpc": "2.0", "id": self.n, "result": payload}, what

    def finish(self):
        self.bg.stop()
        self.check("the end")
        self.ws.close()
        status = self.d.status()
        assert status["ready"] == self.d.pool_size
        assert [u["reconnects"] for u in status["upstreams"]] == [0] * self.d.pool_size
        assert self.node.stats()["handshakes"] == self.handshakes, "an upstream was replaced"


def vm_rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def send_in_thread(c: Conn, data: bytes, chunk=64 * KiB):
    """Send data from a thread, stopping quietly when the daemon hangs up."""
    def run():
        try:
            for i in range(0, len(data), chunk):
                c.sock.sendall(data[i:i + chunk])
        except OSError:
            pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# --------------------------------------------------------------------------- HTTP


def test_http_hostile_heads(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)
    by = Bystanders(d, node)

    # A truncated head, then the client leaves: no reply, nothing forwarded.
    for partial in (b"POST / HTTP/1.1\r\nHost: local", b"GET", b"GET /health HTTP/1.1\r\n",
                    b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n"):
        with Conn(d, transport) as c:
            c.send(partial)
            c.shutdown_write()
            c.expect_eof(5)
    by.check("truncated heads")

    # A truncated head that stays open gets no reply yet (it may still complete).
    with Conn(d, transport) as c:
        c.send(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        c.expect_silence(0.3)
        c.send(b"\r\n")
        assert c.http_response().status == 200

    # Malformed heads: 400 and close.
    bad_heads = [
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nBad Header: x\r\n\r\n",   # space in a name
        b"GET /health HTTP/1.1\r\nHost: localhost\r\n folded\r\n\r\n",         # obs-fold
        b"GET  /health HTTP/1.1\r\n\r\n",                                    # double space
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n",  # two Hosts
        b"GET /health\r\n\r\n",                                              # HTTP/0.9
        b"GET /he\x00alth HTTP/1.1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: local\x01host\r\n\r\n",
        b"Z\xff\xfe\xfd garbage\r\n\r\n",
    ]
    for head in bad_heads:
        with Conn(d, transport) as c:
            c.send(head)
            r = c.http_response()
            assert r.status == 400 and r.closes, (head, r)
            c.read_to_eof(5)
    # Too many headers: refused too (400 or 431).
    with Conn(d, transport) as c:
        c.send(b"GET /health HTTP/1.1\r\nHost: localhost\r\n" +
               b"".join(b"X-H%d: v\r\n" % i for i in range(100)) + b"\r\n")
        r = c.http_response()
        assert r.status in (400, 431) and r.closes, r
        c.read_to_eof(5)
    by.check("malformed heads")
    by.finish()


def test_http_1mb_header_line_gets_431(devnode, daemon, transport):
    """A head over the 16 KiB limit is refused with 431 Request Header Fields Too Large
    (RFC 6585), which http_server.c means to send, and the connection is closed."""
    node = devnode()
    d = tcp_daemon(daemon, node)
    by = Bystanders(d, node)
    rss0 = vm_rss_kib(d.pid)
    for head in (b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * MiB + b"\r\n\r\n",
                 b"POST / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * (20 * KiB) + b"\r\n"
                 b"Content-Length: 2\r\n\r\n{}"):
        with Conn(d, transport) as c:
            t = send_in_thread(c, head)
            r = c.http_response()
            c.read_to_eof(5)
            assert c.eof, "the connection stayed open"
            t.join(10)
            by.check("a huge head")
            assert r.status == 431 and r.closes, r
    assert vm_rss_kib(d.pid) - rss0 < 4 * 1024, "the daemon buffered the huge head"
    by.finish()


def test_http_content_length_lies(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)
    by = Bystanders(d, node)

    # Shorter than the body: the body ends early, the rest is read as the next request
    # head, which is not one: 400 and close.
    body = rpc("subpool_ping", None, "short")
    with Conn(d, transport) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(body) +
               body + b"smuggled /health HTTP/1.1 garbage\r\n\r\n")
        r = c.http_response()
        assert r.status == 200 and r.json() == {"jsonrpc": "2.0", "result": "pong", "id": "short"}, r
        r = c.http_response()
        assert r.status == 400 and r.closes, r
        c.read_to_eof(5)
    # Shorter, cutting the JSON: a parse error for that request, then 400 for the rest.
    body = rpc("devnode_echo", ["cut"], 1)
    with Conn(d, transport) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n" + body + b"\r\n\r\n")
        r = c.http_response()
        assert r.status == 200 and r.json()["error"]["code"] == harness.PARSE_ERROR, r
        r = c.http_response()
        assert r.status == 400 and r.closes, r
        c.read_to_eof(5)
    by.check("short Content-Length")

    # Longer than the body, then the client leaves: no reply, nothing forwarded.
    with Conn(d, transport) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n" +
               rpc("system_dryRun", ["never"], 1))
        c.expect_silence(0.3)
        c.shutdown_write()
        c.expect_eof(5)
    with Conn(d, transport) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 999999\r\n\r\n{")
        c.close()
    assert requests_for(d, "system_dryRun") == 0, "a truncated body was served"
    by.check("long Content-Length")

    # Content-Length that is not a plain decimal: 400 and close.
    for value in (b"abc", b"-1", b"1e3", b"0x10", b"12 34", b"+12", b"", b"99999999999999999999"):
        with Conn(d, transport) as c:
            c.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: " + value + b"\r\n\r\n{}")
            r = c.http_response()
            assert r.status == 400 and r.closes, (value, r)
            c.read_to_eof(5)
    # Chunked bodies (alone or with a Content-Length, the smuggling shape): 501 and close.
    for extra in (b"", b"Content-Length: 5\r\n"):
        with Conn(d, transport) as c:
            c.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n" + extra +
                   b"\r\n5\r\nhello\r\n0\r\n\r\n")
            r = c.http_response()
            assert r.status == 501 and r.closes, r
            c.read_to_eof(5)
    by.check("bad lengths")
    by.finish()


# ---------------------------------------------------------------------- WebSocket


def upgraded(d, transport) -> Conn:
    c = Conn(d, transport)
    assert c.ws_upgrade().status == 101
    return c


def expect_failed(c: Conn, codes, what, timeout=5):
    """The daemon sends a close frame with one of `codes` and closes the TCP connection by
    itself (RFC 6455 7.1.7: after failing a connection it does not wait for our close)."""
    try:
        code = c.ws_expect_close(timeout)
    except (EOFError, ConnectionResetError) as e:
        raise AssertionError(f"{what}: connection ended without a close frame ({e})")
    assert code in codes, f"{what}: close code {code}, expected one of {codes}"
    try:
        rest = c.read_to_eof(timeout)
    except TimeoutError:
        raise AssertionError(f"{what}: the daemon sent close {code} but kept the TCP connection "
                             f"open for {timeout}s") from None
    del rest  # frames after the close are not looked at


def test_ws_unmasked_frame_fails_the_connection(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)
    by = Bystanders(d, node)
    with upgraded(d, transport) as c:
        c.ws_send(OP_TEXT, rpc("devnode_echo", ["unmasked"]), mask=False)
        expect_failed(c, {CLOSE_PROTOCOL_ERROR}, "unmasked text frame")
    by.check("unmasked frame")
    # Masked first, then unmasked: the first is answered, the second fails the connection.
    with upgraded(d, transport) as c:
        c.ws_text(rpc("devnode_echo", ["masked"]))
        assert c.ws_json()["result"] == "masked"
        c.ws_send(OP_PING, b"x", mask=False)
        expect_failed(c, {CLOSE_PROTOCOL_ERROR}, "unmasked ping")
    by.finish()


def test_ws_1gb_declared_frame_closes_1009_without_allocating(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)
    by = Bystanders(d, node)
    rss0 = vm_rss_kib(d.pid)
    with upgraded(d, transport) as c:
        # The header alone, then payload bytes streamed behind it.
        c.send(ws_frame(OP_TEXT, b"", declared=GiB))
        t = send_in_thread(c, b"\x00" * (8 * MiB))
        expect_failed(c, {CLOSE_TOO_BIG}, "1 GiB frame")
        t.join(10)
    by.check("1 GiB frame")
    # Declared as a fragment of a message that grows past max_request.
    with upgraded(d, transport) as c:
        c.ws_send(OP_TEXT, b"[" * 1000, fin=False)
        c.send(ws_frame(OP_CONT, b"", fin=True, declared=GiB))
        t = send_in_thread(c, b"[" * MiB)
        expect_failed(c, {CLOSE_TOO_BIG}, "1 GiB continuation")
        t.join(10)
    grown = vm_rss_kib(d.pid) - rss0
    assert grown < 8 * 1024, f"daemon RSS grew {grown} KiB for frames it refused"
    # A length with the top bit set is not a length at all (RFC 6455 5.2).
    with upgraded(d, transport) as c:
        c.send(bytes([0x81, 0xFF]) + struct.pack("!Q", 1 << 63) + os.urandom(4))
        expect_failed(c, {CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, None}, "64-bit length with the top bit set")
    by.finish()


def test_ws_invalid_utf8_text(devnode, daemon, transport):
    """Invalid UTF-8 in a text frame: either the RFC's close 1007 or a JSON-RPC parse error;
    never forwarded (it would break the shared upstream websocket)."""
    node = devnode()
    d = tcp_daemon(daemon, node)
    by = Bystanders(d, node)
    for bad in (b'{"jsonrpc":"2.0","id":1,"method":"system_dryRunAt","params":["\xff\xfe"]}',
                b'{"jsonrpc":"2.0","id":1,"method":"system_dryRunAt","params":["\xed\xa0\x80"]}',  # surrogate
                b'{"jsonrpc":"2.0","id":1,"method":"system_dryRunAt","params":["\xc0\xaf"]}'):      # overlong
        with upgraded(d, transport) as c:
            c.ws_send(OP_TEXT, bad)
            try:
                reply = c.ws_json()
            except WsClosed as e:
                assert e.code == CLOSE_INVALID_DATA, e
            else:
                assert reply["error"]["code"] in (harness.PARSE_ERROR, harness.INVALID_REQUEST), reply
                # The connection is still usable then.
                c.ws_text(rpc("devnode_echo", ["fine"], 2))
                assert c.ws_json()["result"] == "fine"
    by.check("invalid UTF-8")
    by.finish()
    assert requests_for(d, "system_dryRunAt") == 0, "a request with invalid UTF-8 was routed"


def test_ws_protocol_violations(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)
    by = Bystanders(d, node)
    # Violations the frame layer catches may close without a status code (an empty close
    # body is allowed by RFC 6455 5.5.1); the others must say 1002.
    frame_level = {CLOSE_PROTOCOL_ERROR, None}
    cases = [
        ("RSV1 without an extension", [ws_frame(OP_TEXT, b"{}", rsv=4)], {CLOSE_PROTOCOL_ERROR}),
        ("RSV3", [ws_frame(OP_BINARY, b"{}", rsv=1)], {CLOSE_PROTOCOL_ERROR}),
        ("reserved opcode 3", [ws_frame(0x3, b"x")], {CLOSE_PROTOCOL_ERROR}),
        ("reserved control opcode 0xB", [ws_frame(0xB, b"x")], {CLOSE_PROTOCOL_ERROR}),
        ("continuation without a start", [ws_frame(OP_CONT, b"x")], {CLOSE_PROTOCOL_ERROR}),
        ("new message inside a fragmented one", [ws_frame(OP_TEXT, b"[", fin=False),
                                                 ws_frame(OP_TEXT, b"]")], {CLOSE_PROTOCOL_ERROR}),
        ("fragmented ping", [ws_frame(OP_PING, b"x", fin=False)], frame_level),
        ("ping over 125 bytes", [ws_frame(OP_PING, b"p" * 126)], frame_level),
        ("close with a 1-byte payload", [ws_frame(OP_CLOSE, b"\x03")], frame_level),
        ("close with code 1005", [ws_frame(OP_CLOSE, struct.pack("!H", 1005))], {CLOSE_PROTOCOL_ERROR}),
        ("close with code 999", [ws_frame(OP_CLOSE, struct.pack("!H", 999))], {CLOSE_PROTOCOL_ERROR}),
        ("close reason not UTF-8", [ws_frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff")],
         {CLOSE_INVALID_DATA, CLOSE_PROTOCOL_ERROR}),
    ]
    for what, frames, codes in cases:
        with upgraded(d, transport) as c:
            c.send(b"".join(frames))
            expect_failed(c, codes, what)
    by.check("protocol violations")
    by.finish()


def test_ws_garbage_after_upgrade(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)
    by = Bystanders(d, node)
    rng = random.Random(5)
    for what, garbage in [("text line", b"hello, this is not a frame\r\n"),
                          ("an HTTP request", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
                          ("NDJSON", rpc("devnode_echo", ["raw"]) + b"\n"),
                          ("random bytes", rng.randbytes(4096)),
                          ("random bytes 2", rng.randbytes(64 * KiB))]:
        with upgraded(d, transport) as c:
            t = send_in_thread(c, garbage)
            # Whatever the bytes parse as, the connection must end, by itself, promptly.
            deadline = time.monotonic() + 5
            ended = False
            while time.monotonic() < deadline:
                try:
                    fin, op, payload = c.ws_frame(max(0.01, deadline - time.monotonic()))
                except (EOFError, ConnectionResetError):
                    ended = True
                    break
                except TimeoutError:
                    break
                assert op in (OP_CLOSE, 0xA), f"{what}: unexpected frame {op} {payload[:100]!r}"
            t.join(10)
            assert ended, f"{what}: the connection was still open 5 s after garbage"
            by.check(what)
    # Garbage before any upgrade completes: an HTTP 400, never a hang.
    with Conn(d, transport) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n")  # no key
        r = c.http_response()
        assert r.status == 400, r
        c.read_to_eof(5)
    with Conn(d, transport) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n")
        r = c.http_response()
        assert r.status == 426 and r.headers.get("sec-websocket-version") == "13", r
        c.read_to_eof(5)
    by.finish()


# ------------------------------------------------------------------------- NDJSON


def test_ndjson_over_tcp_bad_input(devnode, daemon):
    """test_bad_input.py covers NDJSON on the Unix socket; the same framing on TCP."""
    node = devnode()
    d = tcp_daemon(daemon, node, max_request="64K")
    by = Bystanders(d, node)
    with Conn(d, "tcp") as c:
        c.send(b'{"jsonrpc":"2.0","id":1,"method":\n')
        assert json.loads(c.read_until(b"\n"))["error"]["code"] == harness.PARSE_ERROR
        c.send(b'{"jsonrpc":"2.0","id":2,"method":"devnode_echo","params":["' + b"x" * (100 * KiB) + b'"]}\n')
        assert json.loads(c.read_until(b"\n"))["error"]["code"] == harness.ERR_LIMIT
        c.send(b"[" + b"\xff" * 100 + b"]\n")
        assert json.loads(c.read_until(b"\n"))["error"]["code"] == harness.PARSE_ERROR
        c.send(rpc("devnode_echo", ["still"], 3) + b"\n")
        assert json.loads(c.read_until(b"\n"))["result"] == "still"
    by.finish()
