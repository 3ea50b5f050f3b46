"""The frames a node sends, each written by the test: a scripted websocket server on loopback
stands in for the node. Fragmented replies with control frames between the fragments, every
length encoding, pings (answered with their payload), a close (echoed), and each way a
server can break RFC 6455 (answered with close 1002, named in the log, link replaced)."""

import base64
import hashlib
import json
import queue
import socket
import struct
import threading

import pytest

from harness import ERR_TIMEOUT, check_reply_error, poll
from localwire import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, ws_frame

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
QUIET = {"health_interval": "1h", "ping_interval": "0", "reconnect_min": "50ms",
         "reconnect_max": "100ms", "close_timeout": "200ms"}


def server_frame(opcode, payload=b"", fin=True, **kw):
    return ws_frame(opcode, payload, fin, mask=False, **kw)


class NodeConn:
    """One accepted connection, past the upgrade."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self, n, timeout):
        self.sock.settimeout(timeout)
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the daemon closed the connection")
            self.buf += chunk

    def _take(self, n, timeout):
        self._fill(n, timeout)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def send(self, data: bytes):
        self.sock.sendall(data)

    def frame(self, timeout=10):
        """The daemon's next frame, unmasked: (fin, opcode, payload). Clients must mask."""
        b0, b1 = self._take(2, timeout)
        assert b1 & 0x80, "the daemon sent an unmasked frame"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._take(2, timeout))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._take(8, timeout))[0]
        mask = self._take(4, timeout)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self._take(n, timeout)))
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def request(self, timeout=10):
        """The next request the daemon sends (a text frame), as a dict; the daemon's own
        question for the genesis hash, which every new link asks first, is left unanswered
        (a lone endpoint serves regardless)."""
        while True:
            fin, op, payload = self.frame(timeout)
            assert (fin, op) == (True, OP_TEXT), (fin, op, payload)
            msg = json.loads(payload)
            if not str(msg.get("id", "")).startswith("subpool-genesis-"):
                return msg

    def close_frame(self, timeout=10):
        """Reads up to the daemon's close frame; returns (code or None, reason)."""
        while True:
            fin, op, payload = self.frame(timeout)
            if op == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return code, payload[2:]

    def close(self):
        self.sock.close()


class ScriptedNode:
    """Accepts websocket upgrades on 127.0.0.1 and hands each connection to the test."""

    def __init__(self):
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.url = f"ws://127.0.0.1:{self.srv.getsockname()[1]}"
        self.conns = queue.Queue()
        self.all = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                sock, _ = self.srv.accept()
            except OSError:
                return  # closed
            self.all.append(sock)
            sock.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
            key = next((line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                        if line.lower().startswith(b"sec-websocket-key:")), b"")
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            self.conns.put(NodeConn(sock))

    def next_conn(self, timeout=10) -> NodeConn:
        return self.conns.get(timeout=timeout)

    def close(self):
        self.srv.close()
        for s in self.all:
            s.close()
        self.thread.join(5)


@pytest.fixture
def node():
    n = ScriptedNode()
    yield n
    n.close()


def connected(daemon, node, **opts):
    d = daemon(node.url, pool_size=1, **QUIET, **opts)
    conn = node.next_conn()
    d.wait_upstreams_ready()
    return d, conn


def reply_bytes(req, result) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": result}).encode()


@pytest.mark.parametrize("size", [10, 300, 70000], ids=["7-bit", "16-bit", "64-bit"])
def test_fragmented_reply_with_control_frames_between(daemon, node, size):
    d, conn = connected(daemon, node)
    with d.client() as c:
        raw = c.request("state_getMetadata")
        req = conn.request()
        assert req["method"] == "state_getMetadata"
        body = reply_bytes(req, "x" * size)
        a, b = len(body) // 3, 2 * len(body) // 3
        conn.send(server_frame(OP_TEXT, body[:a], fin=False) + server_frame(OP_PING, b"p1") +
                  server_frame(OP_CONT, b"", fin=False) + server_frame(OP_CONT, body[a:b], fin=False) +
                  server_frame(OP_PONG, b"unasked") + server_frame(OP_CONT, body[b:]))
        reply = c.recv_id(raw, 10)
        assert reply.result == "x" * size
        # The ping is answered with its own payload.
        assert conn.frame() == (True, OP_PONG, b"p1")
        # An unfragmented binary message is a message too; an empty one is dropped as not JSON.
        raw = c.request("system_chain")
        req = conn.request()
        conn.send(server_frame(OP_TEXT, b"") + server_frame(OP_BINARY, reply_bytes(req, "bin")))
        assert c.recv_id(raw, 10).result == "bin"
    assert d.status()["upstreams"][0]["reconnects"] == 0


@pytest.mark.parametrize("payload,code", [(struct.pack("!H", 4000) + b"bye", 4000), (b"", 1005)],
                         ids=["with-code", "empty"])
def test_close_from_the_node_is_echoed_and_the_link_replaced(daemon, node, payload, code):
    d, conn = connected(daemon, node)
    conn.send(server_frame(OP_CLOSE, payload))
    echoed, _ = conn.close_frame()
    assert echoed == (None if code == 1005 else code)
    poll(lambda: d.log, lambda log: f"peer closed the websocket (code {code})" in log, 10,
         "the close in the log")
    node.next_conn()  # reconnected


BAD = {
    "masked": (ws_frame(OP_TEXT, b"{}", mask=True), "a masked frame from the server"),
    "rsv-bits": (server_frame(OP_TEXT, b"{}", rsv=4), "reserved bits set"),
    "data-opcode-3": (server_frame(3, b""), "reserved opcode"),
    "control-opcode-11": (server_frame(11, b""), "reserved opcode"),
    "fragmented-ping": (server_frame(OP_PING, b"", fin=False), "fragmented or long control frame"),
    "long-ping": (server_frame(OP_PING, b"x" * 126), "fragmented or long control frame"),
    "lone-continuation": (server_frame(OP_CONT, b"{}"), "fragments out of order"),
    "text-inside-fragments": (server_frame(OP_TEXT, b"{", fin=False) + server_frame(OP_TEXT, b"}"),
                              "fragments out of order"),
    "long-16-bit-form": (bytes([0x81, 126, 0, 5]) + b"hello", "length not in its shortest form"),
    "long-64-bit-form": (bytes([0x81, 127]) + (5).to_bytes(8, "big") + b"hello",
                         "length not in its shortest form"),
    "64-bit-top-bit": (bytes([0x82, 127]) + (1 << 63).to_bytes(8, "big"),
                       "length not in its shortest form"),
    "close-1-byte": (server_frame(OP_CLOSE, b"\x03"), "invalid close frame"),
    "close-1005": (server_frame(OP_CLOSE, struct.pack("!H", 1005)), "invalid close frame"),
    "close-999": (server_frame(OP_CLOSE, struct.pack("!H", 999)), "invalid close frame"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_protocol_violations_close_with_1002_and_replace_the_link(daemon, node, case):
    data, why = BAD[case]
    d, conn = connected(daemon, node)
    with d.client() as c:
        raw = c.request("system_chain")
        conn.request()
        conn.send(data)
        code, _ = conn.close_frame()
        assert code == 1002
        line = f"websocket protocol error: {why} (sent close 1002)"
        poll(lambda: d.log, lambda log: line in log, 10, repr(line))
        # The read in flight goes out again on the new link and is answered there.
        again = node.next_conn()
        req = again.request()
        assert req["method"] == "system_chain"
        again.send(server_frame(OP_TEXT, reply_bytes(req, "after")))
        assert c.recv_id(raw, 10).result == "after"


def test_invalid_utf8_in_a_reply_drops_the_message_not_the_link(daemon, node):
    """Every message is validated as JSON, UTF-8 included, before a client sees any of it."""
    d, conn = connected(daemon, node, request_timeout="1s")
    with d.client() as c:
        raw = c.request("system_chain")
        req = conn.request()
        conn.send(server_frame(OP_TEXT, b'{"jsonrpc":"2.0","id":%d,"result":"\xff"}' % req["id"]))
        check_reply_error(c.recv_id(raw, 10), ERR_TIMEOUT, raw)
        assert "dropped a message that is not JSON-RPC" in d.log
        raw = c.request("system_chain")
        req = conn.request()
        conn.send(server_frame(OP_TEXT, reply_bytes(req, "fine")))
        assert c.recv_id(raw, 10).result == "fine"
    assert d.status()["upstreams"][0]["reconnects"] == 0
