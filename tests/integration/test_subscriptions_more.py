"""More of the subscriptions issue: storage subscriptions (shared by key set, late joiners
get every key), watched extrinsics (never shared, never replayed, ended with -32052 when
their upstream is lost), notifications that overtake their reply (devnode fault
notify_first), and subscriptions spread over the pool under max_subs_per_upstream.

The devnode's storage: a key whose last byte is 0x01 holds the block number as a SCALE u64
(it changes every block), a key ending in 0x00 is null, any other key is constant."""

import json
import time

import harness

FAST = {"reconnect_min": "50ms", "reconnect_max": "200ms"}

DYN = "0x0a0b01"  # changes every block
CONST = "0x0c0d0e"  # constant
NULL = "0x0f00"  # always null


def u64_le(n: int) -> str:
    return "0x" + n.to_bytes(8, "little").hex()


def read(c, timeout=10) -> dict:
    """The next line from the daemon as JSON (a reply or a notification)."""
    return json.loads(c.recv_line(timeout))


def subscribe(c, method, params, timeout=10):
    """Send a subscribe; the very next line must be its reply. Returns the client's id."""
    rid = int(c.request(method, params))
    msg = read(c, timeout)
    assert msg.get("id") == rid, f"expected the reply to {method} (id {rid}) first, got {msg}"
    assert "result" in msg, f"{method} failed: {msg}"
    assert isinstance(msg["result"], str), msg
    return msg["result"]


def notification(c, sid, method, timeout=10) -> dict:
    """The next line must be a notification of subscription sid; returns its params."""
    msg = read(c, timeout)
    assert "id" not in msg, f"expected a {method} notification, got {msg}"
    assert msg.get("method") == method, msg
    assert msg["params"]["subscription"] == sid, f"not under the client's id {sid}: {msg}"
    return msg["params"]


def changes(params) -> dict:
    """A state_storage result's changes as {key: value}, keys lowercased."""
    out = {}
    for key, value in params["result"]["changes"]:
        assert key.lower() not in out, f"key {key} listed twice: {params}"
        out[key.lower()] = value
    return out


def node_subs(node) -> int:
    return node.stats()["subscriptions"]


def wait_node_subs(node, n, what, timeout=10):
    harness.poll(lambda: node_subs(node), lambda v: v == n, timeout, what)


# --------------------------------------------------------------------------
# Storage


def test_storage_key_sets_share_only_when_equal(devnode, daemon):
    node = devnode(block_ms=0)
    d = daemon(node)
    a, b, c = d.client(), d.client(), d.client()

    sid_a = subscribe(a, "state_subscribeStorage", [[DYN, CONST]])
    first = changes(notification(a, sid_a, "state_storage"))
    assert first == {DYN: u64_le(0), CONST: node.call("state_getStorage", [CONST])}
    # The same set in another order and case: the same upstream subscription.
    sid_b = subscribe(b, "state_subscribeStorage", [[CONST.upper().replace("0X", "0x"), DYN]])
    assert sid_b != sid_a
    assert changes(notification(b, sid_b, "state_storage")) == first
    assert node_subs(node) == 1
    status = d.status()
    assert status["upstream_subscriptions"] == 1, status["subscriptions"]
    [sub] = status["subscriptions"]
    assert sub["kind"] == "state_subscribeStorage" and sub["shared"] and sub["subscribers"] == 2

    # A different set (a subset) is another upstream subscription.
    sid_c = subscribe(c, "state_subscribeStorage", [[DYN]])
    assert changes(notification(c, sid_c, "state_storage")) == {DYN: u64_le(0)}
    assert node_subs(node) == 2
    assert d.status()["upstream_subscriptions"] == 2

    # One block: the dynamic key changed, each client hears it once, under its own id.
    block1 = node.call("devnode_newBlock")
    for client, sid in ((a, sid_a), (b, sid_b), (c, sid_c)):
        params = notification(client, sid, "state_storage")
        assert params["result"]["block"] == block1
        assert changes(params) == {DYN: u64_le(1)}, "only the key that changed"

    # The last subscriber of a set leaving ends that upstream subscription only.
    assert c.call_ok("state_unsubscribeStorage", [sid_c]) is True
    wait_node_subs(node, 1, f"the [{DYN}] subscription ended upstream")
    assert a.call_ok("state_unsubscribeStorage", [sid_a]) is True
    assert node_subs(node) == 1, "b still holds the shared one"
    assert b.call_ok("state_unsubscribeStorage", [sid_b]) is True
    wait_node_subs(node, 0, "no storage subscription left upstream")


def test_storage_late_joiner_gets_every_key(devnode, daemon):
    node = devnode(block_ms=0)
    d = daemon(node)
    first = d.client()
    sid1 = subscribe(first, "state_subscribeStorage", [[DYN, CONST, NULL]])
    const_value = node.call("state_getStorage", [CONST])
    assert changes(notification(first, sid1, "state_storage")) == {
        DYN: u64_le(0), CONST: const_value, NULL: None}

    # Several blocks: each notification carries only the key that changed.
    for n in range(1, 4):
        block = node.call("devnode_newBlock")
        params = notification(first, sid1, "state_storage")
        assert params["result"]["block"] == block
        assert changes(params) == {DYN: u64_le(n)}

    # The late joiner asks for the same set in another order and case.
    late = d.client()
    shuffled = [NULL, CONST.upper().replace("0X", "0x"), DYN]
    sid2 = subscribe(late, "state_subscribeStorage", [shuffled])
    assert sid2 != sid1
    params = notification(late, sid2, "state_storage", timeout=5)
    assert changes(params) == {DYN: u64_le(3), CONST: const_value, NULL: None}, \
        "every key with its current value"
    assert params["result"]["block"] == node.call("chain_getBlockHash", [3])
    assert node_subs(node) == 1, "the late joiner shares the upstream subscription"
    # What the late joiner sees agrees with a plain read through the daemon.
    assert late.call_ok("state_getStorage", [DYN]) == u64_le(3)

    block4 = node.call("devnode_newBlock")
    for c, sid in ((first, sid1), (late, sid2)):
        params = notification(c, sid, "state_storage")
        assert params["result"]["block"] == block4
        assert changes(params) == {DYN: u64_le(4)}


# --------------------------------------------------------------------------
# Watched extrinsics

XT = "0x2d0284d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d01"


def watch(c, xt=XT):
    sid = subscribe(c, "author_submitAndWatchExtrinsic", [xt])
    assert notification(c, sid, "author_extrinsicUpdate")["result"] == "ready"
    return sid


def test_watched_extrinsic_is_never_shared_and_runs_to_finalized(devnode, daemon):
    node = devnode(block_ms=0)
    d = daemon(node)
    a, b = d.client(), d.client()
    sid_a = watch(a)
    sid_b = watch(b)  # the same bytes
    assert sid_a != sid_b
    stats = node.stats()
    assert stats["subscriptions"] == 2, "two upstream subscriptions"
    assert stats["extrinsics"] == 2, "two submissions at the node"
    subs = d.status()["subscriptions"]
    assert len(subs) == 2 and not any(s["shared"] for s in subs), subs
    assert all(s["kind"] == "author_submitAndWatchExtrinsic" and s["subscribers"] == 1
               for s in subs), subs

    block1 = node.call("devnode_newBlock")
    for c, sid in ((a, sid_a), (b, sid_b)):
        assert notification(c, sid, "author_extrinsicUpdate")["result"] == {"inBlock": block1}
    node.call("devnode_newBlock")
    node.call("devnode_newBlock")  # block 3: block 1 is finalized
    for c, sid in ((a, sid_a), (b, sid_b)):
        assert notification(c, sid, "author_extrinsicUpdate")["result"] == {"finalized": block1}

    d.wait_status(lambda s: s["subscriptions"] == [] and s["upstream_subscriptions"] == 0,
                  "finalized watches gone from subpool_status")
    assert node_subs(node) == 0
    assert a.call_ok("author_unwatchExtrinsic", [sid_a]) is False, "already over"
    assert node.stats()["extrinsics"] == 2


def check_lost_watch(c, sid):
    params = notification(c, sid, "author_extrinsicUpdate")
    assert "result" not in params, params
    assert params["error"]["code"] == harness.ERR_UNKNOWN_WRITE, params
    assert isinstance(params["error"].get("message"), str), params


def test_watched_extrinsic_upstream_closed_mid_watch(devnode, daemon):
    node = devnode(block_ms=0)
    d = daemon(node, **FAST)
    c = d.client()
    sid = watch(c)
    assert node.stats()["extrinsics"] == 1
    node.fault("close", "all")
    check_lost_watch(c, sid)
    node.fault("none", "all")
    d.wait_upstreams_ready()
    d.wait_status(lambda s: s["subscriptions"] == [], "the lost watch gone from subpool_status")
    # The pool is back and traffic flows; the watch was never submitted again.
    assert c.call_ok("system_chain") == "Bittensor"
    node.call("devnode_newBlock")
    stats = node.stats()
    assert stats["extrinsics"] == 1, "submitted exactly once, never replayed"
    assert stats["subscriptions"] == 0
    c.expect_silence(0.3)  # nothing more for the ended subscription


def test_watched_extrinsic_node_restarted_mid_watch(devnode, daemon):
    node = devnode(block_ms=0)
    d = daemon(node, **FAST)
    c = d.client()
    sid = watch(c)
    node.call("devnode_newBlock")
    assert notification(c, sid, "author_extrinsicUpdate")["result"].keys() == {"inBlock"}
    assert node.stats()["extrinsics"] == 1
    node.restart()
    check_lost_watch(c, sid)
    d.wait_upstreams_ready()
    d.wait_status(lambda s: s["subscriptions"] == [], "the lost watch gone from subpool_status")
    assert c.call_ok("system_chain") == "Bittensor"
    stats = node.stats()
    assert stats["extrinsics"] == 0, "never resubmitted to the restarted node"
    assert stats["subscriptions"] == 0


# --------------------------------------------------------------------------
# Notifications ahead of their reply


def test_notify_first_twenty_clients_get_reply_then_head(devnode, daemon):
    # Latency keeps the upstream subscribe in flight while all 20 join it.
    node = devnode(block_ms=0, latency_ms=100, fault="notify_first")
    d = daemon(node)
    head = node.call("chain_getHeader")
    clients = [d.client() for _ in range(20)]
    rids = [int(c.request("chain_subscribeNewHeads", [])) for c in clients]
    sids = []
    for c, rid in zip(clients, rids):
        msg = read(c)
        assert msg.get("id") == rid and isinstance(msg.get("result"), str), \
            f"the subscribe reply must come before any notification: {msg}"
        sids.append(msg["result"])
        params = notification(c, msg["result"], "chain_newHead", timeout=5)
        assert params["result"] == head, "the held first head, right after the reply"
    assert len(set(sids)) == 20
    assert node_subs(node) == 1
    node.call("devnode_newBlock")
    head1 = node.call("chain_getHeader")
    for c, sid in zip(clients, sids):
        assert notification(c, sid, "chain_newHead")["result"] == head1


def test_notify_first_storage_and_watch(devnode, daemon):
    node = devnode(block_ms=0, fault="notify_first")
    d = daemon(node)
    s, w = d.client(), d.client()
    sid = subscribe(s, "state_subscribeStorage", [[DYN, NULL]])
    assert changes(notification(s, sid, "state_storage")) == {DYN: u64_le(0), NULL: None}
    wid = watch(w)
    block1 = node.call("devnode_newBlock")
    assert changes(notification(s, sid, "state_storage")) == {DYN: u64_le(1)}
    assert notification(w, wid, "author_extrinsicUpdate")["result"] == {"inBlock": block1}


# --------------------------------------------------------------------------
# Spread over the pool


def storage_keys(i):
    return [f"0x{i:02x}01", f"0x{i:02x}02"]


def per_upstream(status):
    """Active subscriptions per pool member, as sorted counts over every member: [2, 2] is
    two on each of two members. A subscription on something else than a pool member fails."""
    members = {u["id"]: 0 for u in status["upstreams"] if u["role"] == "pool"}
    for s in status["subscriptions"]:
        if s["state"] == "active":
            assert s["upstream"] in members, (s, members)
            members[s["upstream"]] += 1
    return sorted(members.values())


def four_storage_subscribers(d):
    """Five clients; the first four each hold one storage subscription. Returns both."""
    clients = [d.client() for _ in range(5)]
    sids = []
    for i, c in enumerate(clients[:4]):
        sid = subscribe(c, "state_subscribeStorage", [storage_keys(i)])
        notification(c, sid, "state_storage")
        sids.append(sid)
    return clients, sids


def test_subscriptions_spread_and_the_fifth_times_out(devnode, daemon):
    node = devnode(block_ms=0)
    d = daemon(node, pool_size=2, max_subs_per_upstream=2, request_timeout="1500ms")
    clients, sids = four_storage_subscribers(d)
    status = d.status()
    assert per_upstream(status) == [2, 2], status["subscriptions"]
    assert node_subs(node) == 4

    # The fifth waits for a slot, and gets -32050 once request_timeout passes.
    started = time.monotonic()
    rid = int(clients[4].request("state_subscribeStorage", [storage_keys(4)]))
    d.wait_status(lambda s: len(s["subscriptions"]) == 5, "the fifth subscription waiting")
    waiting = [s for s in d.status()["subscriptions"] if s["state"] != "active"]
    assert len(waiting) == 1 and waiting[0]["upstream"] is None, waiting
    msg = read(clients[4], timeout=10)
    elapsed = time.monotonic() - started
    assert msg.get("id") == rid and msg.get("error", {}).get("code") == harness.ERR_UNAVAILABLE, msg
    # Not before request_timeout (less timer slack); how much later depends on the machine.
    assert elapsed >= 1.0, f"answered after {elapsed:.2f}s, request_timeout is 1.5s"
    status = d.status()
    assert per_upstream(status) == [2, 2] and len(status["subscriptions"]) == 4, status
    assert node_subs(node) == 4
    clients[4].expect_silence(0.2)

    # The others still stream.
    node.call("devnode_newBlock")
    for i, sid in enumerate(sids):
        params = notification(clients[i], sid, "state_storage")
        assert changes(params) == {storage_keys(i)[0]: u64_le(1)}


def test_waiting_subscription_takes_a_freed_slot(devnode, daemon):
    node = devnode(block_ms=0)
    d = daemon(node, pool_size=2, max_subs_per_upstream=2, request_timeout="20s")
    clients, sids = four_storage_subscribers(d)
    rid = int(clients[4].request("state_subscribeStorage", [storage_keys(4)]))
    d.wait_status(lambda s: len(s["subscriptions"]) == 5, "the fifth subscription waiting")

    assert clients[0].call_ok("state_unsubscribeStorage", [sids[0]]) is True
    msg = read(clients[4], timeout=10)
    assert msg.get("id") == rid and isinstance(msg.get("result"), str), msg
    notification(clients[4], msg["result"], "state_storage")
    d.wait_status(lambda s: per_upstream(s) == [2, 2] and len(s["subscriptions"]) == 4,
                  "four active, two per upstream")
    wait_node_subs(node, 4, "four storage subscriptions upstream")


def test_plain_requests_are_not_held_behind_a_waiting_subscription(devnode, daemon):
    """A subscription waiting for a free slot must not block ordinary requests: both
    upstreams are ready and idle."""
    node = devnode(block_ms=0)
    d = daemon(node, pool_size=2, max_subs_per_upstream=1, request_timeout="8s")
    a, b, waiting, other = d.client(), d.client(), d.client(), d.client()
    for i, c in enumerate((a, b)):
        notification(c, subscribe(c, "state_subscribeStorage", [storage_keys(i)]), "state_storage")
    rid = int(waiting.request("state_subscribeStorage", [storage_keys(2)]))
    d.wait_status(lambda s: len(s["subscriptions"]) == 3, "the third subscription waiting")

    started = time.monotonic()
    reply = other.call("system_chain", timeout=10)
    elapsed = time.monotonic() - started
    assert reply.result == "Bittensor", reply
    assert elapsed < 2, f"system_chain took {elapsed:.2f}s: it waited behind the subscription"
    msg = read(waiting, timeout=15)
    assert msg.get("id") == rid and msg["error"]["code"] == harness.ERR_UNAVAILABLE, msg


def test_concurrent_subscriptions_respect_the_cap(devnode, daemon):
    """Five subscribes sent at once: at most max_subs_per_upstream per upstream, even while
    the subscribes are still in flight."""
    node = devnode(block_ms=0, latency_ms=50)
    d = daemon(node, pool_size=2, max_subs_per_upstream=2, request_timeout="1500ms")
    clients = [d.client() for _ in range(5)]
    rids = [int(c.request("state_subscribeStorage", [storage_keys(i)]))
            for i, c in enumerate(clients)]
    ok, refused = 0, 0
    for c, rid in zip(clients, rids):
        msg = read(c, timeout=10)
        assert msg.get("id") == rid, msg
        if "result" in msg:
            ok += 1
            notification(c, msg["result"], "state_storage")
        else:
            assert msg["error"]["code"] == harness.ERR_UNAVAILABLE, msg
            refused += 1
    status = d.status()
    assert per_upstream(status) == [2, 2], status["subscriptions"]
    assert (ok, refused) == (4, 1)
    assert node_subs(node) == 4
