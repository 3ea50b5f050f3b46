"""Bad input on one connection: each gets the right error and the connection stays usable,
while another client's traffic is unaffected."""

import os
import random

import harness
from harness import (ERR_LIMIT, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, Reply,
                     check_reply_error, check_reply_ok, request_line)

MiB = 1 << 20

# (what, line, expected code, expected raw id)
BAD_LINES = [
    ("malformed JSON", b'{"jsonrpc":"2.0","id":1,"method":', PARSE_ERROR, b"null"),
    ("trailing garbage", b'{"jsonrpc":"2.0","id":2,"method":"subpool_ping"} x', PARSE_ERROR, b"null"),
    ("empty batch", b"[]", INVALID_REQUEST, b"null"),
    ("batch with only spaces", b"[  ]", INVALID_REQUEST, b"null"),
    ("a bare string", b'"hello"', INVALID_REQUEST, b"null"),
    ("wrong version", b'{"jsonrpc":"1.0","id":3,"method":"subpool_ping"}', INVALID_REQUEST, b"3"),
    ("no version", b'{"id":"v","method":"subpool_ping"}', INVALID_REQUEST, b'"v"'),
    ("object id", b'{"jsonrpc":"2.0","id":{"a":1},"method":"subpool_ping"}', INVALID_REQUEST, b"null"),
    ("array id", b'{"jsonrpc":"2.0","id":[1],"method":"subpool_ping"}', INVALID_REQUEST, b"null"),
    ("boolean id", b'{"jsonrpc":"2.0","id":true,"method":"subpool_ping"}', INVALID_REQUEST, b"null"),
    ("method not a string", b'{"jsonrpc":"2.0","id":4,"method":7}', INVALID_REQUEST, b"4"),
    ("params a number", b'{"jsonrpc":"2.0","id":5,"method":"subpool_ping","params":1}', INVALID_REQUEST, b"5"),
    ("a response sent as request", b'{"jsonrpc":"2.0","id":6,"result":1}', INVALID_REQUEST, b"6"),
    ("unknown local method", b'{"jsonrpc":"2.0","id":"foo-1","method":"subpool_foo"}', METHOD_NOT_FOUND,
     b'"foo-1"'),
]


def assert_usable(c, tag):
    raw_id = c.request("devnode_echo", [f"good after {tag}"])
    check_reply_ok(c.recv(), raw_id, f"good after {tag}")


def binary_garbage() -> bytes:
    data = bytes(range(256)) + random.Random(7).randbytes(4096)
    return data.replace(b"\n", b"")


def stream_huge_line(c, total: int, chunk=MiB):
    """Send one request line of exactly `total` bytes (newline excluded), chunk by chunk."""
    head = b'{"jsonrpc":"2.0","id":1,"method":"devnode_echo","params":["'
    tail = b'"]}'
    filler = b"x" * chunk
    c.send_raw(head)
    left = total - len(head) - len(tail)
    while left > 0:
        n = min(left, chunk)
        c.send_raw(filler[:n] if n < chunk else filler)
        left -= n
    c.send_raw(tail + b"\n")


def check_huge_line(c, d):
    hwm_before = harness.vm_hwm_kib(d.pid)
    length = 100 * MiB
    stream_huge_line(c, length)
    reply = c.recv(60)
    check_reply_error(reply, ERR_LIMIT)
    assert str(length) in reply.error["message"], reply
    grown = harness.vm_hwm_kib(d.pid) - hwm_before
    assert grown < 32 * 1024, f"daemon peak memory grew {grown} KiB for a discarded line"


def check_oversized_batch(c):
    c.send_batch([request_line("subpool_ping", None, str(i).encode()) for i in range(10000)])
    reply = c.recv(30)
    assert isinstance(reply, Reply), "an oversized batch gets one error, not an array"
    check_reply_error(reply, ERR_LIMIT)


def mixed_batch(n):
    """Elements and what each must produce: (element, raw id or None for null, code or result)."""
    out = []
    for i in range(n):
        rid = str(i).encode()
        kind = i % 5
        if kind == 0:
            out.append((request_line("devnode_echo", [f"b{i}"], rid), rid, ("result", f"b{i}")))
        elif kind == 1:
            out.append((request_line("subpool_ping", None, rid), rid, ("result", "pong")))
        elif kind == 2:
            out.append((b'{"jsonrpc":"1.0","id":' + rid + b',"method":"x"}', rid, ("code", INVALID_REQUEST)))
        elif kind == 3:
            out.append((request_line("subpool_nope", [], rid), rid, ("code", METHOD_NOT_FOUND)))
        else:
            out.append((b"42", None, ("code", INVALID_REQUEST)))
    return out


def check_mixed_batch(c):
    plan = mixed_batch(1000)
    c.send_batch([element for element, _, _ in plan])
    replies = c.recv(30)
    assert isinstance(replies, list), f"expected an array: {replies!r}"
    assert len(replies) == 1000
    by_id = {r.id_raw: r for r in replies if r.id_raw != b"null"}
    nulls = [r for r in replies if r.id_raw == b"null"]
    expected_ids = {rid for _, rid, _ in plan if rid is not None}
    assert set(by_id) == expected_ids and len(by_id) == len(replies) - len(nulls)
    assert len(nulls) == 200 and all(r.code == INVALID_REQUEST for r in nulls)
    for _, rid, (kind, value) in plan:
        if rid is None:
            continue
        r = by_id[rid]
        if kind == "result":
            assert r.has_result and r.result == value, r
        else:
            assert r.code == value, r


def check_notifications(c):
    """Notifications and blank lines get no reply: the next line answers the next request."""
    c.notify("devnode_echo", ["n"])
    c.notify("subpool_ping")
    c.send_line(b"")
    c.send_line(b"   ")
    raw_id = c.request("subpool_ping")
    check_reply_ok(c.recv(), raw_id, "pong")


def check_half_close(c):
    sent = [c.request("devnode_sleep", [50]) if i % 2 else c.request("devnode_echo", [i])
            for i in range(10)]
    c.shutdown_write()
    got = [c.recv(10) for _ in sent]
    assert sorted(r.id_raw for r in got) == sorted(sent)
    assert all(r.has_result for r in got), got
    c.expect_eof(10)


def test_bad_input_on_one_connection(devnode, daemon):
    node = devnode()
    # Under AddressSanitizer freed memory sits in a 256 MB quarantine and would count as
    # peak memory of the discarded line; a small quarantine keeps the check meaningful.
    asan = ":".join(filter(None, [os.environ.get("ASAN_OPTIONS"), "quarantine_size_mb=4"]))
    d = daemon(node, max_request="1M", env={"ASAN_OPTIONS": asan})
    other = harness.BackgroundTraffic(d)
    c = d.client(timeout=60)

    for what, line, code, raw_id in BAD_LINES:
        c.send_line(line)
        reply = c.recv()
        assert (reply.code, reply.id_raw) == (code, raw_id), f"{what}: {reply!r}"
        assert_usable(c, what)

    c.send_line(binary_garbage())
    check_reply_error(c.recv(), PARSE_ERROR)
    assert_usable(c, "binary garbage")

    check_huge_line(c, d)
    assert_usable(c, "a 100 MB line")

    check_oversized_batch(c)
    assert_usable(c, "a batch of 10000")

    check_mixed_batch(c)
    assert_usable(c, "a mixed batch")

    check_notifications(c)
    assert_usable(c, "notifications")

    check_half_close(c)  # last: it ends the connection

    other.stop()
    assert d.proc.alive()
    assert node.upstream_connections() == 2


def test_unsubscribe_of_an_unknown_id_answers_false(devnode, daemon):
    node = devnode()
    d = daemon(node)
    with d.client() as c:
        for method, params in [("chain_unsubscribeNewHeads", ["abc"]),
                               ("chain_unsubscribeNewHeads", []),
                               ("state_unsubscribeStorage", [12])]:
            assert c.call_ok(method, params) is False
        assert_usable(c, "unsubscribe")
    assert node.stats()["subscriptions"] == 0
