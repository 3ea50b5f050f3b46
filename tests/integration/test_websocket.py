"""WebSocket on the local socket and the loopback port: what an unmodified Substrate client
(here Debian's python3-websockets, plus raw frames where the library cannot be made to
misbehave) sees when it points at subpoold instead of a node."""

import asyncio
import json
import time

import pytest

import harness
from localwire import (CLOSE_NORMAL, CLOSE_TOO_BIG, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG,
                       OP_TEXT, TRANSPORTS, Conn, rpc, run_async, tcp_daemon, ws_connect)

websockets = pytest.importorskip("websockets")


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    return request.param


async def call(ws, method, params=None, rid=1):
    await ws.send(rpc(method, params, rid).decode())
    return json.loads(await ws.recv())


def test_handshake_declines_permessage_deflate(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)

    async def go():
        # websockets offers permessage-deflate by default: it must be declined, not half-agreed.
        async with ws_connect(d, transport) as ws:
            assert "permessage-deflate" in ws.request_headers.get("Sec-WebSocket-Extensions", "")
            assert "Sec-WebSocket-Extensions" not in ws.response_headers, ws.response_headers
            assert ws.extensions == []
            reply = await call(ws, "system_chain", rid="a")
            assert reply == {"jsonrpc": "2.0", "id": "a", "result": node.call("system_chain")}

    run_async(go())
    d.wait_status(lambda s: s["clients"] == 1, "the websocket client gone")  # 1: this status call


def test_600k_metadata(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)
    expected = node.call("state_getMetadata")
    assert len(expected) == 600000

    async def go():
        async with ws_connect(d, transport) as ws:
            for rid in range(3):
                reply = await call(ws, "state_getMetadata", rid=rid)
                assert reply["id"] == rid
                assert reply["result"] == expected

    run_async(go())


def test_many_concurrent_calls_ids_matched(devnode, daemon):
    """Two websockets (one per transport) with 500 calls each in flight at once, using the
    same ids: every reply comes back once, on its own socket, with its own result."""
    node = devnode(latency_ms=5, jitter_ms=5)
    d = tcp_daemon(daemon, node)
    n = 500

    async def one(transport):
        async with ws_connect(d, transport) as ws:
            await asyncio.gather(*(ws.send(rpc("devnode_echo", [f"{transport}-{i}"], i).decode())
                                   for i in range(n)))
            got = {}
            for _ in range(n):
                reply = json.loads(await ws.recv())
                assert reply["id"] not in got, f"two replies for id {reply['id']}"
                got[reply["id"]] = reply["result"]
            assert got == {i: f"{transport}-{i}" for i in range(n)}

    async def both():
        await asyncio.gather(one("unix"), one("tcp"))

    run_async(both())
    assert d.status()["in_flight"] == 0


def test_batch_binary_and_fragmented_messages(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)
    head = node.call("chain_getHeader")

    async def go():
        async with ws_connect(d, transport) as ws:
            # A batch gets one array back.
            batch = [json.loads(rpc("devnode_echo", [i], i)) for i in range(20)]
            batch.append(json.loads(rpc("chain_getHeader", None, "h")))
            await ws.send(json.dumps(batch))
            replies = json.loads(await ws.recv())
            assert isinstance(replies, list) and len(replies) == 21
            by_id = {r["id"]: r for r in replies}
            assert {i: by_id[i]["result"] for i in range(20)} == {i: i for i in range(20)}
            assert by_id["h"]["result"] == head

            # A binary message is a request too; the reply is text.
            await ws.send(rpc("devnode_echo", ["bin"], 7))
            reply = await ws.recv()
            assert isinstance(reply, str), "replies are text frames"
            assert json.loads(reply) == {"jsonrpc": "2.0", "id": 7, "result": "bin"}

            # One message sent in many fragments (text and binary).
            text = rpc("devnode_echo", ["x" * 5000], 8).decode()

            async def fragments(data, size):
                for i in range(0, len(data), size):
                    yield data[i:i + size]

            await ws.send(fragments(text, 97))
            assert json.loads(await ws.recv())["result"] == "x" * 5000
            await ws.send(fragments(text.encode(), 1000))
            assert json.loads(await ws.recv())["result"] == "x" * 5000

    run_async(go())


def test_ping_pong_and_clean_close(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node)

    async def go():
        ws = await ws_connect(d, transport, ping_interval=None)
        for payload in (b"", b"hello", b"p" * 125):
            waiter = await ws.ping(payload)
            await asyncio.wait_for(waiter, 5)
        assert (await call(ws, "subpool_ping"))["result"] == "pong"
        # A clean close gets 1000 back, and the daemon then closes TCP promptly (the
        # library waits up to close_timeout for that).
        start = time.monotonic()
        await ws.close()
        took = time.monotonic() - start
        assert ws.close_code == CLOSE_NORMAL, (ws.close_code, ws.close_reason)
        assert took < 3, f"closing took {took:.1f}s: the daemon did not end the TCP connection"

    run_async(go())
    d.wait_status(lambda s: s["clients"] == 1, "the websocket client gone")


def test_raw_frames_control_inside_fragments_and_close_echo(devnode, daemon, transport):
    """Frames the library does not let us shape: a ping between the fragments of a message,
    an empty continuation, a close with a reason; the daemon answers each per RFC 6455."""
    node = devnode()
    d = tcp_daemon(daemon, node)
    with Conn(d, transport) as c:
        assert c.ws_upgrade().status == 101
        msg = rpc("devnode_echo", ["frag"], "f")
        c.ws_send(OP_TEXT, msg[:10], fin=False)
        c.ws_send(OP_PING, b"mid")
        c.ws_send(OP_CONT, msg[10:20], fin=False)
        c.ws_send(OP_CONT, b"", fin=False)
        c.ws_send(OP_CONT, msg[20:], fin=True)
        fin, op, payload = c.ws_frame()
        assert (fin, op, payload) == (True, OP_PONG, b"mid")
        assert c.ws_json() == {"jsonrpc": "2.0", "id": "f", "result": "frag"}
        # An unsolicited pong is ignored.
        c.ws_send(OP_PONG, b"unasked")
        c.ws_send(OP_BINARY, rpc("subpool_ping", None, 2))
        assert c.ws_json()["result"] == "pong"
        # Close with a code and a reason: the daemon answers with a close, then hangs up.
        c.ws_send(OP_CLOSE, (4321).to_bytes(2, "big") + b"bye")
        fin, op, payload = c.ws_frame()
        assert op == OP_CLOSE, (op, payload)
        assert int.from_bytes(payload[:2], "big") in (4321, CLOSE_NORMAL), payload
        c.expect_eof(5)


def test_message_over_max_request_closes_1009(devnode, daemon, transport):
    """The sender of an oversized message is closed with 1009; other clients, including
    another websocket with requests in flight, carry on."""
    node = devnode(latency_ms=20)
    d = tcp_daemon(daemon, node, max_request="64K")
    bg = harness.BackgroundTraffic(d)

    async def go():
        async with ws_connect(d, "unix") as other, ws_connect(d, transport) as big:
            await other.send(rpc("devnode_sleep", [300], "slow").decode())
            assert (await call(big, "devnode_echo", ["x" * 60000], 1))["result"] == "x" * 60000
            await big.send(rpc("devnode_echo", ["x" * 70000], 2).decode())
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(big.recv(), 10)
            assert info.value.rcvd is not None, "no close frame from the daemon"
            assert info.value.rcvd.code == CLOSE_TOO_BIG, info.value
            # The other websocket's request in flight still completes, and it keeps working.
            assert json.loads(await asyncio.wait_for(other.recv(), 10)) == \
                {"jsonrpc": "2.0", "id": "slow", "result": True}
            assert (await call(other, "devnode_echo", ["after"], 3))["result"] == "after"

    run_async(go())
    bg.stop()
    # The binary frame path counts the same limit.
    with Conn(d, transport) as c:
        assert c.ws_upgrade().status == 101
        c.ws_send(OP_BINARY, rpc("devnode_echo", ["y" * 70000], 1))
        assert c.ws_expect_close() == CLOSE_TOO_BIG
    assert d.status()["ready"] == 2
