"""The reply cache: replies to reads pinned to a block hash, and chain constants, are kept
and served to any client with its own id; nothing else is. Counted at the node (devnode_stats
"requests", which counts the stats call itself too) and in subpool_status "cache"."""

import json
import socket

import harness
from localwire import Conn, by_method, quiet_pool_options, rpc, settled



def ask(d, method, params, rid=1) -> dict:
    with Conn(d) as c:
        c.send(rpc(method, params, rid) + b"\n")
        return json.loads(c.read_until(b"\n", timeout=20))


def ask_raw(d, method, params, rid) -> bytes:
    with Conn(d) as c:
        c.send(rpc(method, params, rid) + b"\n")
        return c.read_until(b"\n", timeout=20)


def node_requests(node) -> int:
    return node.stats()["requests"]


def block_hash(node, n) -> str:
    return node.call("chain_getBlockHash", [n])


def test_a_read_at_a_block_hash_goes_upstream_once(devnode, daemon):
    node = devnode(block_ms=0)
    d = settled(daemon(node, pool_size=1, **quiet_pool_options()))
    h = block_hash(node, 0)
    before = node_requests(node)
    first = ask_raw(d, "state_getMetadata", [h], 7)
    again = ask_raw(d, "state_getMetadata", [h.upper().replace("0X", "0x")], "x")
    assert node_requests(node) - before == 1 + 1, "one state_getMetadata (and the stats call)"
    # Byte for byte the same, but for the id.
    assert first.replace(b'"id":7', b'"id":"x"') == again
    cache = d.status()["cache"]
    assert cache["hits"] == 1 and cache["stores"] == 1 and cache["entries"] == 1, cache
    assert 0 < cache["bytes"] <= cache["max_bytes"]
    for family, n in (("subpool_cache_hits_total", 1), ("subpool_cache_misses_total", 1),
                      ("subpool_cache_stores_total", 1)):
        assert by_method(d, family, "state_getMetadata") == n, family


def test_chain_constants_are_kept(devnode, daemon):
    node = devnode(block_ms=0)
    d = settled(daemon(node, pool_size=1, **quiet_pool_options()))
    before = node_requests(node)
    for i in range(3):
        assert ask(d, "system_chain", None, i)["result"] == "Bittensor"
        assert "tokenSymbol" in json.dumps(ask(d, "system_properties", [], i)["result"])
    assert node_requests(node) - before == 2 + 1


def test_what_is_never_kept(devnode, daemon):
    """Errors, latest reads, blocks (justifications come later), writes, a null header for an
    unknown hash, and what a node upgrade changes: each asked twice reaches the node twice."""
    node = devnode(block_ms=0)
    d = settled(daemon(node, pool_size=1, **quiet_pool_options()))
    unknown = "0x" + "ee" * 32
    h = block_hash(node, 0)
    cases = [
        ("state_getStorage", ["0x0102", unknown]),  # an error: unknown block
        ("chain_getHeader", [unknown]),             # null: not a definite answer
        ("state_getStorage", ["0x0102"]),           # latest
        ("state_getMetadata", None),                # latest
        ("chain_getBlock", [h]),                    # a block: justifications may come
        ("system_version", None),                   # changes with the node
        ("author_submitExtrinsic", ["0x0102"]),     # a write
        ("system_accountNextIndex", ["5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"]),
    ]
    for method, params in cases:
        before = node_requests(node)
        ask(d, method, params)
        ask(d, method, params)
        assert node_requests(node) - before == 2 + 1, method
    assert d.status()["cache"]["entries"] == 0


def test_null_storage_at_a_known_block_is_kept(devnode, daemon):
    node = devnode(block_ms=0)
    d = settled(daemon(node, pool_size=1, **quiet_pool_options()))
    h = block_hash(node, 0)
    before = node_requests(node)
    empty = "0x010200"  # ends in 00: the devnode has no value there
    assert ask(d, "state_getStorageAt", [empty, h])["result"] is None
    assert ask(d, "state_getStorage", [empty, h])["result"] is None
    assert node_requests(node) - before == 1 + 1


def test_the_byte_bound_holds_and_the_least_recently_used_go_first(devnode, daemon):
    node = devnode("--call-size", "150000", block_ms=0)  # 300 kB replies, distinct per call
    d = settled(daemon(node, pool_size=1, cache_max_bytes="1M", **quiet_pool_options()))
    h = node.call("devnode_newBlock")
    calls = [["Api_call", "0x%02x" % i, h] for i in range(6)]
    for params in calls[:3]:
        ask(d, "state_call", params)
    ask(d, "state_call", calls[0])  # the first is now the most recently used, the second least
    ask(d, "state_call", calls[3])  # no room for a fourth: one goes
    before = node_requests(node)
    ask(d, "state_call", calls[0])  # kept
    assert node_requests(node) - before == 1, "the first, used since, was evicted"
    before = node_requests(node)
    ask(d, "state_call", calls[1])  # gone: it is now back, and the third went
    assert node_requests(node) - before == 1 + 1, "the least recently used was kept"
    for params in calls[4:]:
        ask(d, "state_call", params)
        cache = d.status()["cache"]
        assert cache["bytes"] <= 1 << 20, cache
    cache = d.status()["cache"]
    assert cache["evictions"] >= 4 and cache["entries"] == 3, cache
    assert by_method(d, "subpool_cache_evictions_total", "state_call") == cache["evictions"]


def test_cache_off_and_clear(devnode, daemon):
    node = devnode(block_ms=0)
    d = settled(daemon(node, pool_size=1, **quiet_pool_options()))
    h = block_hash(node, 0)
    ask(d, "state_getRuntimeVersion", [h])
    assert d.status()["cache"]["entries"] == 1
    assert ask(d, "subpool_cacheClear", None)["result"] == 1
    assert d.status()["cache"]["entries"] == 0 and d.status()["cache"]["bytes"] == 0
    off = settled(daemon(node, pool_size=1, cache="false", **quiet_pool_options()))
    before = node_requests(node)
    ask(off, "state_getRuntimeVersion", [h])
    ask(off, "state_getRuntimeVersion", [h])
    assert node_requests(node) - before == 2 + 1
    assert off.status()["cache"] == {**off.status()["cache"], "entries": 0, "enabled": False}


def test_reload_turns_the_cache_off_and_empties_it(devnode, tmp_path, short_dir):
    from test_systemd import file_daemon, reload_with
    node = devnode(block_ms=0)
    conf = tmp_path / "subpoold.conf"
    conf.write_text(f"upstream = {node.url}\npool_size = 1\n")
    d = file_daemon(tmp_path, short_dir, "--config", conf, pool_size=1)
    try:
        h = block_hash(node, 0)
        ask(d, "state_getRuntimeVersion", [h])
        assert d.status()["cache"]["entries"] == 1
        reload_with(d, conf, f"upstream = {node.url}\npool_size = 1\ncache = false\n")
        cache = d.status()["cache"]
        assert cache["entries"] == 0 and cache["bytes"] == 0 and not cache["enabled"], cache
        assert cache["evictions"] == 0, "dropped by the switch, not evicted for room"
        before = node_requests(node)
        ask(d, "state_getRuntimeVersion", [h])
        ask(d, "state_getRuntimeVersion", [h])
        assert node_requests(node) - before == 2 + 1
        reload_with(d, conf, f"upstream = {node.url}\npool_size = 1\ncache_max_bytes = 2M\n")
        ask(d, "state_getRuntimeVersion", [h])
        cache = d.status()["cache"]
        assert cache["enabled"] and cache["max_bytes"] == 2 << 20 and cache["entries"] == 1, cache
    finally:
        problem = d.close()
    assert problem is None, problem


def test_a_cached_reply_written_to_many_clients_counts_once(devnode, daemon):
    """The clients' outputs point into the cache's copy: the cache's budget counts it, and
    the clients' ledger does not count it again, however many clients leave it unread."""
    node = devnode(block_ms=0)  # metadata of 600 kB
    d = settled(daemon(node, pool_size=1, **quiet_pool_options()))
    h = block_hash(node, 0)
    size = len(ask_raw(d, "state_getMetadata", [h], 1))
    base = d.status()["client_memory"]["held"]
    responses = d.status()["responses"]
    conns = []
    for i in range(6):
        c = Conn(d)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.send(rpc("state_getMetadata", [h], i) + b"\n")
        conns.append(c)
    d.wait_status(lambda s: s["responses"] >= responses + 6, "six answered from the cache")
    grown = d.status()["client_memory"]["held"] - base
    assert grown < size // 2, (grown, size)
    for c in conns:
        c.close()


FAST = {"reconnect_min": "50ms", "reconnect_max": "300ms", "health_interval": "200ms",
        "ping_interval": "300ms", "pong_timeout": "300ms", "request_timeout": "1s"}


def test_an_endpoint_of_another_chain_is_marked_and_never_answers(devnode, daemon):
    """Endpoints must serve one chain; that is checked, not assumed: a fallback with another
    genesis is marked wrong_chain, and when the primary stops, clients get -32050 rather than
    another chain's answers (which the cache would also have kept)."""
    primary = devnode(block_ms=0)
    other = devnode(block_ms=0, seed=7)  # another genesis hash
    d = daemon(primary, other, pool_size=1, **FAST)
    s = d.wait_status(lambda s: s["endpoints"][0]["genesis"] and s["endpoints"][1]["genesis"],
                      "both endpoints told their genesis")
    assert s["endpoints"][0]["genesis"] != s["endpoints"][1]["genesis"]
    assert not s["endpoints"][0]["wrong_chain"] and s["endpoints"][1]["wrong_chain"], s["endpoints"]
    assert "another chain" in s["endpoints"][1]["last_error"]
    d.wait_log("serves another chain")
    h = block_hash(primary, 0)
    assert "result" in ask(d, "state_getRuntimeVersion", [h])
    served = other.stats()["requests"]
    primary.stop()
    d.wait_status(lambda s: s["endpoints"][0]["status"] == "down", "the primary seen down")
    r = ask(d, "system_name", None)  # not cacheable: it has to reach a node
    assert r["error"]["code"] == harness.ERR_UNAVAILABLE, r
    s = d.status()
    assert s["active_endpoint"] == 0, "the pool never moves to another chain"
    assert [u["priority"] for u in s["upstreams"]] == [0], s["upstreams"]
    assert other.stats()["requests"] > served, "its watch link is still polled"


def test_a_reply_is_kept_at_its_size_not_a_spare_buffers(devnode, daemon):
    """Review: a copy took a spare buffer of any larger size (8 MB for a 1.2 MB reply after
    two 8 MB replies), so one entry cost several times its size."""
    node = devnode("--metadata-size", "1200000", block_ms=0)
    d = settled(daemon(node, pool_size=2, **quiet_pool_options()))
    h = block_hash(node, 0)
    conns = [Conn(d) for _ in range(2)]
    for i, c in enumerate(conns):
        c.send(rpc("devnode_blob", [8 << 20], i) + b"\n")
    for c in conns:
        assert len(c.read_until(b"\n", timeout=30)) > 8 << 20  # leaves 8 MB spares behind
        c.close()
    n = len(ask_raw(d, "state_getMetadata", [h], 1))
    cache = d.status()["cache"]
    assert cache["entries"] == 1 and cache["bytes"] < n + (64 << 10), (n, cache)


def test_a_reload_to_another_chain_never_serves_the_old_chains_replies(devnode, tmp_path,
                                                                      short_dir):
    """Review: the chain was judged per endpoint of one pool, and the cache is the daemon's:
    a reply from the old pool's link, still draining after a reload to another chain, was
    kept after the new chain emptied the cache, and served to the new chain's clients."""
    from test_systemd import file_daemon, reload_with
    old = devnode(block_ms=0, latency_ms=1500)
    new = devnode(block_ms=0, seed=7)
    conf = tmp_path / "subpoold.conf"
    conf.write_text(f"upstream = {old.url}\npool_size = 1\n")
    d = settled(file_daemon(tmp_path, short_dir, "--config", conf, pool_size=1))
    try:
        h = block_hash(old, 0)
        c = Conn(d)
        c.send(rpc("chain_getHeader", [h], 1) + b"\n")
        d.wait_status(lambda s: s["in_flight"] == 1, "the read in flight on the old chain")
        reload_with(d, conf, f"upstream = {new.url}\npool_size = 1\n")
        assert "result" in json.loads(c.read_until(b"\n", timeout=20))  # the old chain's answer
        c.close()
        d.wait_log("replaced pool has drained")
        settled(d)
        again = ask(d, "chain_getHeader", [h], 2)
        assert again["result"] == new.call("chain_getHeader", [h]), again  # null: not its block
        assert d.status()["cache"]["hits"] == 0
    finally:
        problem = d.close()
    assert problem is None, problem


def test_identical_replies_at_several_blocks_are_kept_once(devnode, daemon):
    """Metadata fetched at several blocks of one runtime is the same reply but for the id:
    its bytes are kept once, however many blocks it was asked at."""
    node = devnode(block_ms=0)  # metadata of 600 kB, the same at every block
    d = settled(daemon(node, pool_size=1, **quiet_pool_options()))
    hashes = [block_hash(node, 0)] + [node.call("devnode_newBlock") for _ in range(3)]
    replies = [ask(d, "state_getMetadata", [h], 1)["result"] for h in hashes]
    assert len(set(replies)) == 1
    size = len(replies[0])
    cache = d.status()["cache"]
    assert cache["entries"] == 4 and cache["shared"] == 3, cache
    assert size < cache["bytes"] < size + (64 << 10), (size, cache)
    # Each still answers on its own, and dropping three leaves the fourth whole.
    for h in hashes:
        assert ask_raw(d, "state_getMetadata", [h], 2).startswith(b'{"jsonrpc":"2.0"')
    assert d.status()["cache"]["hits"] == 4
