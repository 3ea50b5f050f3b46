"""Coalescing: identical pure reads from any clients while one is in flight share one request
to the node, and each client gets the reply with its own id. Counted at the node (devnode_stats
"requests", which counts the stats call itself too) and in subpool_status "coalesced"."""

import json
import socket
import struct

import harness
from localwire import Conn, by_method, quiet_pool_options, rpc, settled, tcp_daemon



def node_requests(node) -> int:
    return node.stats()["requests"]


def send_all(d, n, method, params, kind="unix"):
    """n clients, each sends the same request (its own id); returns the connections."""
    conns = []
    for i in range(n):
        c = Conn(d, kind)
        c.send(rpc(method, params, 100 + i) + b"\n")
        conns.append(c)
    return conns


def replies(conns, timeout=20):
    out = []
    for c in conns:
        out.append(json.loads(c.read_until(b"\n", timeout=timeout)))
        c.close()
    return out


def test_identical_reads_at_once_go_upstream_once(devnode, daemon):
    node = devnode(block_ms=0, latency_ms=300)
    d = settled(daemon(node, pool_size=2, **quiet_pool_options()))
    d.wait_upstreams_ready()
    before = node_requests(node)
    conns = send_all(d, 8, "state_getMetadata", None)
    got = replies(conns)
    assert [r["id"] for r in got] == [100 + i for i in range(8)], "each with its own id"
    assert len({r["result"] for r in got}) == 1, "the same answer for all"
    assert node_requests(node) - before == 1 + 1, "one state_getMetadata (and the stats call)"
    assert d.status()["coalesced"] == 7
    assert by_method(d, "subpool_coalesced_total", "state_getMetadata") == 7


def test_aliases_and_spelling_of_params_share_too(devnode, daemon):
    """state_getStorageAt [k, null] is state_getStorage [k]; hex case does not matter."""
    node = devnode(block_ms=0, latency_ms=300)
    d = settled(daemon(node, pool_size=1, **quiet_pool_options()))
    key = "0x%016xaa" % 7
    before = node_requests(node)
    a = Conn(d)
    a.send(rpc("state_getStorage", [key], 1) + b"\n")
    d.wait_status(lambda s: s["in_flight"] == 1, "the first read in flight")
    b = Conn(d)
    b.send(rpc("state_getStorageAt", [key.upper().replace("0X", "0x"), None], 2) + b"\n")
    ra, rb = replies([a, b])
    assert ra["result"] == rb["result"] and (ra["id"], rb["id"]) == (1, 2)
    assert node_requests(node) - before == 1 + 1
    assert d.status()["coalesced"] == 1


def test_errors_reach_every_waiter(devnode, daemon):
    """An unknown block hash: the node's error goes to each client, with its own id."""
    node = devnode(block_ms=0, latency_ms=300)
    d = settled(daemon(node, pool_size=1, **quiet_pool_options()))
    unknown = "0x" + "ee" * 32
    before = node_requests(node)
    got = replies(send_all(d, 4, "state_getStorage", ["0x0102", unknown]))
    assert all("error" in r for r in got), got
    assert len({json.dumps(r["error"]) for r in got}) == 1
    assert node_requests(node) - before == 1 + 1
    # Nothing of it is kept: asked again later, it goes to the node again.
    replies(send_all(d, 1, "state_getStorage", ["0x0102", unknown]))
    assert node_requests(node) - before == 1 + 1 + 1 + 1


def test_writes_nonces_and_unknown_methods_are_never_shared(devnode, daemon):
    node = devnode(block_ms=0, latency_ms=300)
    d = settled(daemon(node, pool_size=1, **quiet_pool_options()))
    before = node.stats()
    replies(send_all(d, 3, "author_submitExtrinsic", ["0x0102"]))
    replies(send_all(d, 3, "system_accountNextIndex", ["5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"]))
    replies(send_all(d, 3, "devnode_echo", ["same"]))
    after = node.stats()
    assert after["extrinsics"] - before["extrinsics"] == 3
    assert after["requests"] - before["requests"] == 9 + 1
    assert d.status()["coalesced"] == 0


def test_a_follower_gets_its_answer_when_the_leaders_client_leaves(devnode, daemon):
    node = devnode(block_ms=0, latency_ms=500)
    d = settled(tcp_daemon(daemon, node, pool_size=1, **quiet_pool_options()))
    leader = Conn(d, "tcp")
    leader.send(rpc("state_getMetadata", None, 1) + b"\n")
    d.wait_status(lambda s: s["in_flight"] == 1, "the leader's read in flight")
    follower = Conn(d)
    follower.send(rpc("state_getMetadata", None, 2) + b"\n")
    d.wait_status(lambda s: s["coalesced"] == 1, "the follower joined")
    leader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    leader.close()  # a reset: the daemon drops the leader's client at once
    d.wait_log("socket error")
    [r] = replies([follower])
    assert r["id"] == 2 and r["result"].startswith("0x"), r


def test_a_queued_leaders_followers_still_get_an_answer_when_it_leaves(devnode, daemon):
    """A read that waited in the queue and was then shared: its client leaving hands the read
    to a follower, which goes upstream in its place."""
    node = devnode(block_ms=0, latency_ms=400)
    d = settled(tcp_daemon(daemon, node, pool_size=1, max_in_flight=1, **quiet_pool_options()))
    blocker = Conn(d)
    blocker.send(rpc("devnode_sleep", [300], 9) + b"\n")
    d.wait_status(lambda s: s["in_flight"] == 1, "the only slot taken")
    leader = Conn(d, "tcp")
    leader.send(rpc("state_getMetadata", None, 1) + b"\n")
    d.wait_status(lambda s: s["queued"] == 1, "the leader queued")
    leader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    leader.close()
    d.wait_status(lambda s: s["queued"] == 0, "the leader gone from the queue")
    follower = Conn(d)
    follower.send(rpc("state_getMetadata", None, 2) + b"\n")
    [r] = replies([follower])
    assert r["id"] == 2 and r["result"].startswith("0x"), r
    replies([blocker])


def test_latest_reads_are_not_shared_across_a_block_the_daemon_saw(devnode, daemon):
    """A read of "latest" sent before a new head must not answer one asked after the client
    saw that head: the second goes to the node and gets the new value."""
    node = devnode(block_ms=0, latency_ms=600)
    d = settled(daemon(node, pool_size=1, **quiet_pool_options()))
    dyn = "0x%016x01" % 3  # its value is the block number
    watcher = Conn(d)
    watcher.send(rpc("chain_subscribeNewHeads", None, 0) + b"\n")
    assert "result" in json.loads(watcher.read_until(b"\n", timeout=10))
    json.loads(watcher.read_until(b"\n", timeout=10))  # the current head
    a = Conn(d)
    a.send(rpc("state_getStorage", [dyn], 1) + b"\n")
    d.wait_status(lambda s: s["in_flight"] >= 1, "a's read in flight")
    node.call("devnode_newBlock")
    # The daemon has seen the new head: it passed it on.
    head = json.loads(watcher.read_until(b"\n", timeout=10))["params"]["result"]
    b = Conn(d)
    b.send(rpc("state_getStorage", [dyn], 2) + b"\n")
    ra, rb = replies([a, b])
    assert d.status()["coalesced"] == 0
    number = int(head["number"], 16)
    assert rb["result"] == "0x" + number.to_bytes(8, "little").hex(), (rb, head)
    assert ra["result"] != rb["result"]
    watcher.close()


def test_coalesce_off_sends_every_read(devnode, daemon):
    node = devnode(block_ms=0, latency_ms=300)
    d = settled(daemon(node, pool_size=1, coalesce="false", **quiet_pool_options()))
    before = node_requests(node)
    replies(send_all(d, 4, "state_getMetadata", None))
    assert node_requests(node) - before == 4 + 1
    assert d.status()["coalesced"] == 0


def test_making_room_in_the_queue_never_fails_another_clients_follower(devnode, daemon):
    """Review: a leader back in the queue after a lost link could be the one a full queue
    gave up, and its failure went to every follower, other clients' included."""
    node = devnode(block_ms=0, latency_ms=800)
    d = settled(daemon(node, pool_size=1, max_in_flight=8, queue_max=2, request_timeout="20s",
                       reconnect_min="2s", reconnect_max="2s", **quiet_pool_options()))
    h = node.call("chain_getBlockHash", [0])
    x = Conn(d)
    x.send(rpc("state_getRuntimeVersion", [h], 1) + b"\n" + rpc("state_getMetadata", [h], 2) + b"\n")
    d.wait_status(lambda s: s["in_flight"] == 2, "x's two reads sent")
    y = Conn(d)
    y.send(rpc("state_getMetadata", [h], 77) + b"\n")
    d.wait_status(lambda s: s["coalesced"] == 1, "y follows x's second read")
    node.fault("close", "all")  # the link is lost: x's reads wait in the queue for a retry
    d.wait_status(lambda s: s["queued"] == 2, "x's reads back in the queue")
    z = Conn(d)
    z.send(rpc("system_name", None, 5) + b"\n")  # the queue is full: x has the most waiting
    json.loads(z.read_until(b"\n", timeout=10))
    node.fault("none", "all")
    reply = json.loads(y.read_until(b"\n", timeout=15))
    assert reply["id"] == 77 and "result" in reply, reply
    for c in (x, y, z):
        c.close()
