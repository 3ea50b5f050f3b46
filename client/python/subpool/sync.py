"""The blocking client: one request at a time on one connection."""

import itertools
import socket
import time

from . import _protocol as p


class Client:
    """A blocking connection to subpoold.

    with Client() as c:
        head = c.call("chain_getHeader")

    timeout (seconds, None for no limit) is the default for every call.
    Not thread-safe: use one Client per thread.
    """

    def __init__(self, path=None, timeout=None):
        self.path = p.socket_path(path)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._buf = bytearray()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(self.path)
        except OSError as e:
            self._sock.close()
            raise p.ConnectionError(f"cannot connect to {self.path}: {e.strerror or e}") from e

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Close the connection; calling it again does nothing."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(self, method: str, params=None, timeout=None):
        """Send one request and return its result; raises RPCError for an error reply,
        TimeoutError, or ConnectionError."""
        if self._sock is None:
            raise p.ConnectionError("the client is closed")
        rid = next(self._ids)
        line = p.request_line(rid, method, params)
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(line)
            while True:
                msg = p.decode_line(self._read_line(deadline))
                # Anything else is a late reply to a call that timed out: dropped.
                if msg is not None and p.is_reply(msg) and p.reply_id(msg, (rid,)) == rid:
                    return p.result_of(msg)
        except p.Error:
            raise
        except socket.timeout:
            raise p.TimeoutError(f"no reply to {method} within {timeout} s") from None
        except OSError as e:
            self.close()
            raise p.ConnectionError(f"connection to {self.path} failed: {e}") from e

    def _read_line(self, deadline) -> bytes:
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if len(self._buf) > p.MAX_REPLY:
                raise OSError(f"a reply line exceeds {p.MAX_REPLY} bytes")
            start = len(self._buf)
            if deadline is not None:
                self._sock.settimeout(max(0.0, deadline - time.monotonic()))
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                self.close()
                raise p.ConnectionError(f"subpoold closed the connection ({self.path})")
            self._buf += chunk
