"""Raw clients for subpoold's local framings: HTTP/1.1 and WebSocket over the Unix socket
or the loopback TCP port, byte by byte, so tests control exactly what goes on the wire
(and can send what no library would). Also a runner for the websockets library.

Everything here talks only to 127.0.0.1 and Unix sockets.
"""

import asyncio
import base64
import json
import os
import re
import socket
import struct
import time

import harness

# WebSocket opcodes and close codes (RFC 6455).
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009

TRANSPORTS = ("unix", "tcp")


_config_keys = None


def quiet_pool_options() -> dict:
    """Options that keep the pool from sending requests of its own (health polls) during a
    test that counts the node's requests; empty for a daemon without such a key."""
    global _config_keys
    if _config_keys is None:
        out = harness.run_oneshot([harness.daemon_binary(), "--help-config"]).stdout
        _config_keys = set(re.findall(r"^\s*([a-z_]+)\b", out, re.M))
    # 30 s: far longer than any test here, and within stale_block_timeout (60 s) / 2.
    return {"health_interval": "30s"} if "health_interval" in _config_keys else {}


def tcp_daemon(daemon_factory, *upstreams, **kw):
    """Start subpoold with tcp_listen on a free 127.0.0.1 port; the port is `d.tcp_port`."""
    port = harness.free_tcp_port()
    d = daemon_factory(*upstreams, tcp_listen=f"127.0.0.1:{port}", **kw)
    d.wait_log(f"listener: accepting clients on tcp 127.0.0.1:{port}")
    d.tcp_port = port
    return d


def rpc(method, params=None, rid=1) -> bytes:
    msg = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        msg["params"] = params
    return json.dumps(msg, separators=(",", ":")).encode()


class Conn:
    """One raw stream connection to the daemon, over its Unix socket or its TCP port."""

    def __init__(self, d, transport="unix", timeout=10.0):
        if transport == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(d.socket)
        elif transport == "tcp":
            self.sock = socket.create_connection(("127.0.0.1", d.tcp_port), timeout)
        else:
            raise ValueError(transport)
        self.transport = transport
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False
        self.sent = 0      # bytes written, for exact byte counters
        self.received = 0  # bytes read

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def send(self, data: bytes):
        self.sock.sendall(data)
        self.sent += len(data)

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self, deadline) -> bool:
        """Read what arrives before deadline; False at EOF. Raises TimeoutError."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("nothing more arrived in time")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(1 << 20)
        except socket.timeout:
            raise TimeoutError("nothing more arrived in time") from None
        finally:
            self.sock.settimeout(self.timeout)
        if not chunk:
            self.eof = True
            return False
        self.received += len(chunk)
        self.buf += chunk
        return True

    def take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_exact(self, n: int, timeout=None) -> bytes:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise EOFError(f"EOF after {len(self.buf)} of {n} bytes: {bytes(self.buf[:200])!r}")
        return self.take(n)

    def read_until(self, marker: bytes, timeout=None, limit=1 << 24) -> bytes:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                return self.take(i + len(marker))
            if len(self.buf) > limit:
                raise AssertionError(f"no {marker!r} within {limit} bytes")
            if not self._fill(deadline):
                raise EOFError(f"EOF before {marker!r}; have {bytes(self.buf[:300])!r}")

    def read_to_eof(self, timeout=None) -> bytes:
        """Everything until the daemon closes (a reset after data counts as the end too)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while self._fill(deadline):
                pass
        except ConnectionResetError:
            self.eof = True
        return self.take(len(self.buf))

    def expect_eof(self, timeout=None):
        """The daemon closes the connection without sending anything more."""
        rest = self.read_to_eof(timeout)
        assert rest == b"", f"expected the connection to close silently, got {rest[:300]!r}"

    def expect_silence(self, timeout: float):
        """Nothing arrives and the connection stays open for `timeout` seconds."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            assert not self.buf, f"unexpected bytes: {bytes(self.buf[:300])!r}"
            return
        raise AssertionError(f"connection closed; got {bytes(self.buf[:300])!r}")

    # ---------------------------------------------------------------- HTTP

    def http_send(self, method, path, body: bytes = None, headers=None, host="localhost",
                  version="1.1", content_length=True):
        lines = [f"{method} {path} HTTP/{version}"]
        hdrs = {"Host": host} if host is not None else {}
        if body is not None:
            hdrs["Content-Type"] = "application/json"
            if content_length:
                hdrs["Content-Length"] = str(len(body))
        hdrs.update(headers or {})
        lines += [f"{k}: {v}" for k, v in hdrs.items()]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))

    def http_response(self, timeout=None) -> "HttpResponse":
        head = self.read_until(b"\r\n\r\n", timeout, limit=65536)
        r = HttpResponse(head)
        if r.status != 101:
            assert "content-length" in r.headers, f"response without Content-Length: {head!r}"
            r.body = self.read_exact(int(r.headers["content-length"]), timeout)
        return r

    def http(self, method, path, body: bytes = None, headers=None, timeout=None, **kw) -> "HttpResponse":
        self.http_send(method, path, body, headers, **kw)
        return self.http_response(timeout)

    # ----------------------------------------------------------- WebSocket

    def ws_upgrade(self, path="/", host="localhost", headers=None, timeout=None) -> "HttpResponse":
        """Send a client handshake; returns the daemon's response head (101 on success)."""
        key = base64.b64encode(os.urandom(16)).decode()
        hdrs = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key,
                "Sec-WebSocket-Version": "13"}
        hdrs.update(headers or {})
        self.http_send("GET", path, None, hdrs, host=host)
        r = self.http_response(timeout)
        if r.status == 101:
            assert r.headers.get("sec-websocket-accept") == ws_accept(key), r
        return r

    def ws_send(self, opcode, payload: bytes = b"", fin=True, mask=True, rsv=0, declared=None):
        self.send(ws_frame(opcode, payload, fin, mask, rsv, declared))

    def ws_text(self, text):
        self.ws_send(OP_TEXT, text if isinstance(text, bytes) else text.encode())

    def ws_frame(self, timeout=None):
        """The next frame from the daemon: (fin, opcode, payload). Server frames are unmasked."""
        b0, b1 = self.read_exact(2, timeout)
        assert not b1 & 0x80, "the daemon masked a frame (servers must not)"
        assert not b0 & 0x70, f"RSV bits set in a server frame: {b0:#x}"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.read_exact(2, timeout))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.read_exact(8, timeout))[0]
        return bool(b0 & 0x80), b0 & 0x0F, self.read_exact(n, timeout)

    def ws_message(self, timeout=None, pings=None):
        """The next data message (opcode, payload), reassembled; control frames other than
        close are collected into `pings` when given. A close frame raises WsClosed."""
        parts, first = [], None
        while True:
            fin, op, payload = self.ws_frame(timeout)
            if op == OP_CLOSE:
                raise WsClosed(payload)
            if op in (OP_PING, OP_PONG):
                if pings is not None:
                    pings.append((op, payload))
                continue
            if first is None:
                assert op in (OP_TEXT, OP_BINARY), f"continuation without a start: {op}"
                first = op
            else:
                assert op == OP_CONT, f"new message {op} inside a fragmented one"
            parts.append(payload)
            if fin:
                return first, b"".join(parts)

    def ws_json(self, timeout=None):
        op, payload = self.ws_message(timeout)
        assert op == OP_TEXT, f"replies must be text frames, got opcode {op}"
        return json.loads(payload)

    def ws_expect_close(self, timeout=None) -> int:
        """Read until a close frame; returns its code (None when it has no payload)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            fin, op, payload = self.ws_frame(max(0.01, deadline - time.monotonic()))
            if op == OP_CLOSE:
                return close_code(payload)


class WsClosed(Exception):
    def __init__(self, payload):
        super().__init__(f"close frame {payload!r}")
        self.code = close_code(payload)


def close_code(payload: bytes):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def ws_accept(key: str) -> str:
    import hashlib

    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    return base64.b64encode(digest).decode()


def ws_frame(opcode, payload: bytes = b"", fin=True, mask=True, rsv=0, declared=None) -> bytes:
    """One frame; `declared` overrides the length in the header (to lie about it)."""
    n = len(payload) if declared is None else declared
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mbit = 0x80 if mask else 0
    if n < 126:
        head.append(mbit | n)
    elif n < 1 << 16:
        head.append(mbit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mbit | 127)
        head += struct.pack("!Q", n)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    head += key
    return bytes(head) + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


class HttpResponse:
    def __init__(self, head: bytes):
        self.head = head
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        assert len(parts) >= 2 and parts[0] == "HTTP/1.1", f"bad status line: {lines[0]!r}"
        self.status = int(parts[1])
        self.headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                self.headers[k.strip().lower()] = v.strip()
        self.body = b""

    def json(self):
        return json.loads(self.body)

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()

    def __repr__(self):
        return f"HttpResponse({self.head!r} + {self.body[:300]!r})"


def run_async(coro, timeout=60):
    """Run a coroutine to completion on a fresh loop, bounded by timeout."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def ws_connect(d, transport, **kw):
    """websockets (Debian's python3-websockets) to the daemon over `transport`."""
    import websockets

    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 5)
    if transport == "unix":
        return websockets.unix_connect(d.socket, "ws://localhost/", **kw)
    return websockets.connect(f"ws://127.0.0.1:{d.tcp_port}/", **kw)


def metrics_text(d, transport="unix") -> str:
    with Conn(d, transport) as c:
        r = c.http("GET", "/metrics")
        assert r.status == 200, r
        return r.body.decode("utf-8")


def settled(d):
    """Every link has told its chain (each link asks the node once when it connects): what
    the node counts from now on is the test's own, and the pool's health polls."""
    d.wait_status(lambda s: s["upstreams"] and all(u["chain_checked"] for u in s["upstreams"]),
                  "every link's genesis known")
    return d


def status_counts(d, node):
    """(daemon requests, daemon in_flight, node requests): to show nothing reached the pool.
    Each reading adds one request to each side (subpool_status, devnode_stats)."""
    s = d.status()
    return s["requests"], s["in_flight"], node.stats()["requests"]


def by_method(d, family, method) -> int:
    """A counter labelled by method, from /metrics (0 when absent)."""
    prefix = '%s{method="%s"} ' % (family, method)
    for line in metrics_text(d).splitlines():
        if line.startswith(prefix):
            return int(line[len(prefix):])
    return 0


def requests_for(d, method) -> int:
    """subpool_requests_total for one method (0 when absent): a known method name (only
    those get a label) used only by a hostile request shows whether the daemon ever took it
    for a request."""
    return by_method(d, "subpool_requests_total", method)
