"""What the sync and async clients share: the socket path, request lines,
reply decoding, error types and the unsubscribe-method rule. Mirrors
libsubpool (client/subpool.h) so both behave the same.
"""

import builtins
import json
import os

SYSTEM_SOCKET = "/run/subpoold/subpoold.sock"
SOCKET_NAME = "subpoold.sock"  # in $XDG_RUNTIME_DIR
# Longest reply line accepted, as in libsubpool: subpoold's max_message is 64 MiB by default.
MAX_REPLY = 512 << 20


class Error(Exception):
    """Base of every error this package raises."""


class RPCError(Error):
    """A JSON-RPC error reply, from subpoold or from the node."""

    def __init__(self, code, message, data=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class ConnectionError(Error, builtins.ConnectionError):
    """Cannot connect to subpoold, or the connection was lost or closed."""


class TimeoutError(Error, builtins.TimeoutError):
    """No reply within the timeout. The connection stays usable; a late reply is dropped."""


def socket_path(path=None) -> str:
    """The socket to use: `path`, else $SUBPOOL_SOCKET, else the system daemon's socket if it
    exists, else $XDG_RUNTIME_DIR/subpoold.sock, else the system path (so errors name it)."""
    if path:
        return os.fspath(path)
    env = os.environ.get("SUBPOOL_SOCKET")
    if env:
        return env
    if os.path.exists(SYSTEM_SOCKET):
        return SYSTEM_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, SOCKET_NAME)
    return SYSTEM_SOCKET


def request_line(rid: int, method: str, params=None) -> bytes:
    """One NDJSON request line. json.dumps escapes control characters, so no raw newline."""
    if not isinstance(method, str) or not method:
        raise ValueError("method must be a non-empty string")
    msg = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        if not isinstance(params, (list, tuple, dict)):
            raise TypeError("params must be a list, tuple or dict")
        msg["params"] = params
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def decode_line(line: bytes):
    """A line from subpoold as a dict, or None when it is not a JSON object."""
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


def is_reply(msg: dict) -> bool:
    return "id" in msg and ("result" in msg or "error" in msg)


def reply_id(msg: dict, outstanding):
    """The request a reply answers. An error with a null id (a refused client, an over-long
    line) can only be about a request when it is the one outstanding."""
    rid = msg.get("id")
    if rid is None and "error" in msg and len(outstanding) == 1:
        return next(iter(outstanding))
    return rid


def result_of(msg: dict):
    """The result of a reply, or RPCError for an error reply."""
    if "error" in msg:
        err = msg["error"]
        if isinstance(err, dict):
            raise RPCError(err.get("code"), err.get("message", ""), err.get("data"))
        raise RPCError(None, str(err))
    return msg["result"]


def subscription_key(value) -> str:
    """Subscription ids may be strings or numbers: compare them by their JSON text."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def notification(msg: dict):
    """(subscription key, result) of a subscription notification, or None."""
    params = msg.get("params")
    if "method" in msg and "id" not in msg and isinstance(params, dict) and "subscription" in params:
        return subscription_key(params["subscription"]), params.get("result")
    return None


_UNSUBSCRIBE_RULES = (("subscribe", "unsubscribe"), ("submitAndWatch", "unwatch"), ("follow", "unfollow"))


def unsubscribe_method(method: str) -> str:
    """chain_subscribeNewHeads -> chain_unsubscribeNewHeads, and the like."""
    for old, new in _UNSUBSCRIBE_RULES:
        if old in method:
            return method.replace(old, new, 1)
    raise ValueError(f"cannot derive the unsubscribe method from {method!r}: pass unsubscribe=")
