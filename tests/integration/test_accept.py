"""Accepting clients, over the Unix socket and the TCP port: max_clients refuses the client
over the limit with a JSON-RPC error and takes the next one once a place is free; running out
of descriptors pauses accepting (it does not spin on the error), connected clients carry on
meanwhile, and the clients left waiting in the backlog are served once descriptors are free."""

import json
import os
import resource

import pytest

from harness import ERR_LIMIT, poll
from localwire import Conn, rpc, tcp_daemon

PAUSE_LOG = "listener: accept failed: Too many open files; pausing accept for 1 s"


def start(daemon, devnode, transport, **options):
    node = devnode()
    if transport == "tcp":
        return tcp_daemon(daemon, node, **options)
    return daemon(node, **options)


def call(conn, method, rid=1, params=None):
    conn.send(rpc(method, params, rid) + b"\n")
    return json.loads(conn.read_until(b"\n"))


def clients(conn) -> int:
    """Sessions the daemon holds, asked on a connection it has already accepted."""
    return call(conn, "subpool_status", rid=99)["result"]["clients"]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_max_clients_refuses_then_takes_the_next(daemon, devnode, transport):
    d = start(daemon, devnode, transport, max_clients=3)
    held = [Conn(d, transport) for _ in range(3)]
    for i, c in enumerate(held):
        assert call(c, "subpool_ping", rid=i)["result"] == "pong"

    over = Conn(d, transport)
    refusal = json.loads(over.read_until(b"\n"))
    assert refusal["error"]["code"] == ERR_LIMIT, refusal
    assert "max_clients" in refusal["error"]["message"], refusal
    assert refusal["id"] is None
    assert over.read_to_eof() == b"", "the refused client is closed after the error line"
    d.wait_log("listener: refused a client: max_clients (3) reached")

    assert call(held[0], "devnode_echo", rid=5, params=["still here"])["result"] == "still here"
    held.pop().close()
    # The daemon sees the client leave in its own time: ask until it has.
    poll(lambda: clients(held[0]), lambda n: n == 2, 10, "the closed client to be gone")
    late = Conn(d, transport)
    assert call(late, "subpool_ping", rid=7)["result"] == "pong"
    for c in held + [late, over]:
        c.close()


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_out_of_descriptors_pauses_accept_and_recovers(daemon, devnode, transport):
    d = start(daemon, devnode, transport, log_level="info")
    first = Conn(d, transport)
    assert call(first, "subpool_ping")["result"] == "pong"
    # Room for a few more clients only.
    in_use = len(os.listdir(f"/proc/{d.pid}/fd"))
    soft, hard = resource.prlimit(d.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (in_use + 3, hard))

    # All connect (the kernel queues them); the daemon accepts as many as it has descriptors.
    waiting = [Conn(d, transport) for _ in range(12)]
    for i, c in enumerate(waiting):
        c.send(rpc("devnode_echo", [f"waited {i}"], 10 + i) + b"\n")
    d.wait_log(PAUSE_LOG)
    # The pause is retried behind its timer, not in a loop on the error.
    d.wait_log(PAUSE_LOG, count=2)
    assert d.log.count(PAUSE_LOG) < 10, "accept errors must not be retried in a tight loop"

    # Those accepted before the error are the first in the backlog, and are served.
    accepted = clients(first) - 1
    assert 1 <= accepted < len(waiting), accepted
    for i, c in enumerate(waiting[:accepted]):
        assert json.loads(c.read_until(b"\n")) == {"jsonrpc": "2.0", "id": 10 + i,
                                                    "result": f"waited {i}"}
    # Clients already connected carry on; the ones still waiting are not taken in.
    assert call(first, "devnode_echo", rid=3, params=["during"])["result"] == "during"
    assert clients(first) == 1 + accepted

    # With descriptors to spare again, the rest are accepted and answered.
    resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (soft, hard))
    for i, c in enumerate(waiting[accepted:], start=accepted):
        reply = json.loads(c.read_until(b"\n", timeout=15))
        assert reply == {"jsonrpc": "2.0", "id": 10 + i, "result": f"waited {i}"}, reply
    assert clients(first) == 1 + len(waiting)
    for c in waiting + [first]:
        c.close()
