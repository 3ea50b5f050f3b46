"""Shared subscriptions through a real subpoold (pool_size 2) to chopsticks running the real
Subtensor runtime from the chain spec (blocks made on demand with dev_newBlock).

The emulator may reorder replies, and for state_subscribeRuntimeVersion it always sends the
first notification before the reply that carries the subscription id (chopsticks 1.5.1: new
heads, finalized heads and storage answer first); subpool must hand every client its own reply
first. Clients are plain NDJSON on the daemon's Unix socket and python3-websockets on its TCP
port; each records every message in arrival order, and every check walks that record.

Needs node and npm (chopsticks; see test_polkadot_js.py) and the chain spec at
$SUBPOOL_CHAINSPEC (default: shared/chainspecs/subtensor-raonet.json beside the repo);
skips with the reason otherwise.
"""

import asyncio
import itertools
import json
import re

import pytest

import harness
from localwire import run_async, tcp_daemon

# One emulator for this module (module-scoped fixture): node and npm checked, the locked
# dependencies installed, the chain spec found, else a skip with the reason.
from test_polkadot_js import chopsticks, node_modules  # noqa: F401  (pytest fixtures)

websockets = pytest.importorskip("websockets", reason="needs python3-websockets (Debian package)")

# Real storage keys of the Subtensor runtime (twox128(pallet) ++ twox128(item)).
# System.Number and Timestamp.Now change every block; Balances.TotalIssuance stays (no extrinsics).
NUMBER = "0x26aa394eea5630e07c48ae0c9558cef702a5c1b19ab7a04f536c519aca4983ac"
NOW = "0xf0c365c3cf59d671eb72da0e7a4113c49f1f0515f462cdcf84e0f1d6045dfcbb"
ISSUANCE = "0xc2261276cc9d1f8598ea4b6a74b15c2f57c875e4cff74148e4628f264b974c80"

SUB_ID = re.compile(r"[0-9a-f]{16}")
WAIT = 20  # seconds: bound of every wait for the emulator or the daemon

NEW_HEADS = ("chain_subscribeNewHeads", "chain_subscribeNewHead", "subscribe_newHead")
UNSUBSCRIBE = {
    "chain_subscribeNewHeads": "chain_unsubscribeNewHeads",
    "chain_subscribeNewHead": "chain_unsubscribeNewHead",
    "subscribe_newHead": "unsubscribe_newHead",
    "chain_subscribeFinalizedHeads": "chain_unsubscribeFinalizedHeads",
    "chain_subscribeFinalisedHeads": "chain_unsubscribeFinalisedHeads",
    "state_subscribeRuntimeVersion": "state_unsubscribeRuntimeVersion",
    "chain_subscribeRuntimeVersion": "chain_unsubscribeRuntimeVersion",
    "state_subscribeStorage": "state_unsubscribeStorage",
}


def upper(key):
    return "0x" + key[2:].upper()


def le_number(value_hex):
    """A SCALE u32 (System.Number) as an int."""
    return int.from_bytes(bytes.fromhex(value_hex[2:]), "little")


class Client:
    """One local client of subpoold: NDJSON on the Unix socket ("ndjson") or a WebSocket on
    the TCP port ("ws"). A reader task on the shared loop thread records every message in
    arrival order (a dict, or a list for a batch reply)."""

    def __init__(self, loop, d, transport, name):
        self.loop = loop
        self.transport = transport
        self.name = f"{name} ({transport})"
        self.msgs = []
        self.subscribes = {}    # request id -> subscribe method
        self.unsubscribes = {}  # request id -> subpool subscription id
        self.eof = False
        self.read_error = None
        self._ids = itertools.count(1)
        loop.run(self._open(d), WAIT)

    async def _open(self, d):
        if self.transport == "ndjson":
            self._reader, self._writer = await asyncio.open_unix_connection(d.socket, limit=1 << 24)
        else:
            self._ws = await websockets.connect(f"ws://127.0.0.1:{d.tcp_port}/", max_size=None,
                                                ping_interval=None, compression=None,
                                                open_timeout=10, close_timeout=2)
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self):
        try:
            while True:
                if self.transport == "ndjson":
                    line = await self._reader.readline()
                    if not line:
                        break
                else:
                    line = await self._ws.recv()
                self.msgs.append(json.loads(line))
        except (ConnectionError, websockets.ConnectionClosed, asyncio.CancelledError):
            pass
        except Exception as e:  # reported by streams()
            self.read_error = repr(e)
        finally:
            self.eof = True

    async def _send(self, text):
        if self.transport == "ndjson":
            self._writer.write(text.encode() + b"\n")
            await self._writer.drain()
        else:
            await self._ws.send(text)

    def send(self, payload):
        self.loop.run(self._send(json.dumps(payload)), WAIT)

    def _msg(self, method, params):
        rid = next(self._ids)
        return rid, {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}

    def request(self, method, params=None):
        rid, msg = self._msg(method, [] if params is None else params)
        self.send(msg)
        return rid

    def subscribe(self, method, params=None, batch=False):
        """Send a subscribe (inside a batch with system_chain when batch); returns its request id."""
        rid, msg = self._msg(method, [] if params is None else params)
        self.subscribes[rid] = method
        if batch:
            self.send([msg, self._msg("system_chain", [])[1]])
        else:
            self.send(msg)
        return rid

    def subscribe_and_vanish(self, method, params=None):
        """Send a subscribe and drop the connection at once, in one step on the loop."""
        text = json.dumps(self._msg(method, [] if params is None else params)[1])

        async def go():
            await self._send(text)
            (self._writer if self.transport == "ndjson" else self._ws).transport.abort()

        self.loop.run(go(), WAIT)

    def unsubscribe(self, method, sid):
        rid, msg = self._msg(method, [sid])
        self.unsubscribes[rid] = sid
        self.send(msg)
        return rid

    def replies(self):
        out = {}
        for msg in list(self.msgs):
            for m in msg if isinstance(msg, list) else [msg]:
                if "id" in m:
                    assert m["id"] not in out, f"{self.name}: two replies with id {m['id']}: {m}"
                    out[m["id"]] = m
        return out

    def reply(self, rid, timeout=WAIT):
        return harness.poll(lambda: self.replies().get(rid), lambda r: r is not None or self.eof,
                            timeout, f"{self.name}: the reply to request {rid}")

    def result(self, rid, timeout=WAIT):
        r = self.reply(rid, timeout)
        assert r is not None, f"{self.name}: connection closed before the reply to {rid}"
        assert "result" in r, f"{self.name}: request {rid} failed: {r}"
        return r["result"]

    def streams(self):
        """Walk the record in arrival order. Every notification must carry a subscription id
        that a subscribe reply on this connection announced before it, and none may come
        after that id's unsubscribe answered true. Returns {sid: [notification, ...]}."""
        assert self.read_error is None, f"{self.name}: reader failed: {self.read_error}"
        subs, ended = {}, set()
        for n, msg in enumerate(list(self.msgs)):
            for m in msg if isinstance(msg, list) else [msg]:
                if "id" in m:
                    rid = m["id"]
                    if rid in self.subscribes and "result" in m:
                        sid = m["result"]
                        assert isinstance(sid, str) and SUB_ID.fullmatch(sid), \
                            f"{self.name}: subscription id {sid!r} is not 16 hex digits"
                        assert sid not in subs, f"{self.name}: subscription id {sid} given twice"
                        subs[sid] = []
                    elif rid in self.unsubscribes and m.get("result") is True:
                        ended.add(self.unsubscribes[rid])
                    continue
                sid = m.get("params", {}).get("subscription")
                assert sid in subs, (f"{self.name}: message #{n} is a notification for {sid!r} before "
                                     f"(or without) the reply announcing that id: {json.dumps(m)[:300]}")
                assert sid not in ended, (f"{self.name}: message #{n} is a notification for {sid} "
                                          f"after its unsubscribe answered true: {json.dumps(m)[:300]}")
                subs[sid].append(m)
        return subs

    def notes(self, sid):
        return self.streams().get(sid, [])

    def close(self, abort=False):
        """Close; abort=True drops the connection without a goodbye (no close frame)."""
        async def _close():
            if self.transport == "ndjson":
                if abort:
                    self._writer.transport.abort()
                else:
                    self._writer.close()
            elif abort:
                self._ws.transport.abort()
            else:
                await self._ws.close()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

        try:
            self.loop.run(_close(), 10)
        except Exception:
            pass


def heads(notes):
    return [int(n["params"]["result"]["number"], 16) for n in notes]


def results(notes):
    return [n["params"]["result"] for n in notes]


@pytest.fixture
def subpool(chopsticks, daemon):
    url, _port = chopsticks
    d = tcp_daemon(daemon, url, pool_size=2, request_timeout="60s")
    d.wait_status(lambda s: s["ready"] == 2, "both upstreams ready to the emulator", 30)
    d.ctl = d.client(60)
    d.upstream_url = url
    return d


@pytest.fixture
def clients(subpool):
    """Factory: clients(transport="ndjson") -> Client; all closed at teardown."""
    loop = harness._LoopThread()
    made = []

    def make(transport="ndjson"):
        c = Client(loop, subpool, transport, f"client {len(made)}")
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
    loop.close()


def emulator_first_message(url, method, params=()):
    """What the emulator itself sends first after a subscribe: "reply" or "notification"."""
    async def probe():
        async with websockets.connect(url, max_size=None, open_timeout=10, close_timeout=2) as ws:
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                                      "params": list(params)}))
            first = json.loads(await ws.recv())
            return "reply" if first.get("id") == 1 else "notification"

    return run_async(probe(), WAIT)


def head_number(d):
    return int(d.ctl.call_ok("chain_getHeader", [], timeout=60)["number"], 16)


def new_block(d):
    """dev_newBlock through subpool; returns the new head number."""
    assert isinstance(d.ctl.call_ok("dev_newBlock", [], timeout=60), str)
    return head_number(d)


def wait_notes(pairs, check, what):
    """Poll until check(notifications) holds for every (client, sid); on timeout name the
    clients still short and what they have."""
    def short():
        return [f"{c.name} {sid}: {[json.dumps(n['params']['result'])[:120] for n in c.notes(sid)]}"
                for c, sid in pairs if not check(c.notes(sid))]

    harness.poll(short, lambda s: not s, WAIT, what)


def wait_head(pairs, number):
    wait_notes(pairs, lambda ns: ns and heads(ns)[-1] >= number, f"every subscriber at head #{number}")


def only_sub(status, kind, params=None):
    subs = [s for s in status["subscriptions"]
            if s["kind"] == kind and (params is None or s["params"] == params)]
    assert len(subs) == 1, f"expected one {kind} {params} subscription: {status['subscriptions']}"
    return subs[0]


def unsubscribe_all(pairs):
    """Every (client, sid, subscribe method) unsubscribes with the matching method: true."""
    rids = [(c, c.unsubscribe(UNSUBSCRIBE[m], sid)) for c, sid, m in pairs]
    for c, rid in rids:
        assert c.result(rid) is True, f"{c.name}: unsubscribe did not answer true"


def wait_no_upstream_subscriptions(d, what):
    return d.wait_status(lambda s: s["upstream_subscriptions"] == 0 and s["subscriptions"] == [],
                         what, WAIT)


# ------------------------------------------------------------------------------- tests


def test_20_clients_share_one_new_heads_subscription(subpool, clients):
    d = subpool
    start = head_number(d)
    conns = [clients("ws" if i % 4 == 3 else "ndjson") for i in range(20)]
    # All at once, so most join while the upstream subscribe is in flight; two in a batch.
    subs = [(c, c.subscribe(NEW_HEADS[i % 3], batch=i in (5, 10)), NEW_HEADS[i % 3])
            for i, c in enumerate(conns)]
    pairs = [(c, c.result(rid)) for c, rid, _ in subs]
    assert len({sid for _, sid in pairs}) == 20, "every client gets its own subscription id"

    status = d.status()
    assert status["upstream_subscriptions"] == 1, status
    sub = only_sub(status, "chain_subscribeNewHeads")
    assert sub == {**sub, "params": [], "shared": True, "state": "active", "subscribers": 20}, sub
    assert sub["upstream"] in (0, 1), sub

    wait_head(pairs, start)  # the current head, right after each reply
    for n in range(1, 4):
        assert new_block(d) == start + n
        wait_head(pairs, start + n)

    reference = results(pairs[0][0].notes(pairs[0][1]))
    for c, sid in pairs:
        notes = c.notes(sid)
        assert heads(notes) == list(range(start, start + 4)), f"{c.name}: heads {heads(notes)}"
        assert {n["method"] for n in notes} == {"chain_newHead"}, f"{c.name}: {notes}"
        assert results(notes) == reference, f"{c.name} saw other headers than {pairs[0][0].name}"
    for i, (c, rid, _) in enumerate(subs):  # the two batch replies are whole, and first
        if i in (5, 10):
            batch = c.msgs[0]
            assert isinstance(batch, list) and sorted(m["id"] for m in batch) == [rid, rid + 1], batch
            assert all("result" in m for m in batch), batch
    status = d.status()
    sub = only_sub(status, "chain_subscribeNewHeads")
    assert (status["upstream_subscriptions"], sub["subscribers"], sub["delivered"]) == (1, 20, 4), status

    # Unsubscribing answers after anything already queued for the client: a late
    # duplicate would show up in the streams re-checked below.
    unsubscribe_all([(c, sid, m) for (c, sid), (_, _, m) in zip(pairs, subs)])
    for c, sid in pairs:
        assert heads(c.notes(sid)) == list(range(start, start + 4)), f"{c.name}: {heads(c.notes(sid))}"
    wait_no_upstream_subscriptions(d, "the shared subscription ended upstream")
    d.wait_log("unsubscribed chain_subscribeNewHeads (no subscribers left)")


def test_late_joiner_gets_the_current_head_at_once(subpool, clients):
    d = subpool
    start = head_number(d)
    early = [clients(t) for t in ("ndjson", "ws", "ndjson")]
    pairs = [(c, c.result(c.subscribe(NEW_HEADS[i]))) for i, c in enumerate(early)]
    wait_head(pairs, start)
    for n in (1, 2):
        assert new_block(d) == start + n
        wait_head(pairs, start + n)
    last = pairs[0][0].notes(pairs[0][1])[-1]["params"]["result"]
    assert int(last["number"], 16) == start + 2

    late = [clients("ndjson"), clients("ws")]
    late_pairs = []
    for c, method in zip(late, ("subscribe_newHead", "chain_subscribeNewHeads")):
        rid = c.subscribe(method)
        sid = c.result(rid)
        late_pairs.append((c, sid))
        # No block is made now: the only notification that can come is the catch-up.
        wait_notes([(c, sid)], lambda ns: len(ns) >= 1, f"{c.name}: the current head after the reply")
        after = [i for i, m in enumerate(c.msgs) if isinstance(m, dict) and m.get("id") == rid]
        assert after == [0], f"{c.name}: the reply must come first: {c.msgs[:3]}"
        catch_up = c.msgs[1]
        assert catch_up["method"] == "chain_newHead" and catch_up["params"]["subscription"] == sid, catch_up
        assert catch_up["params"]["result"] == last, "the late joiner's head differs from the others' last"

    status = d.status()
    assert status["upstream_subscriptions"] == 1
    assert only_sub(status, "chain_subscribeNewHeads")["subscribers"] == 5

    assert new_block(d) == start + 3
    wait_head(pairs + late_pairs, start + 3)
    for c, sid in pairs:
        assert heads(c.notes(sid)) == list(range(start, start + 4)), f"{c.name}: {heads(c.notes(sid))}"
    for c, sid in late_pairs:
        assert heads(c.notes(sid)) == [start + 2, start + 3], f"{c.name}: {heads(c.notes(sid))}"
    assert results(late_pairs[0][0].notes(late_pairs[0][1])) == results(pairs[0][0].notes(pairs[0][1]))[2:]


def storage_changes(note):
    """{lowercased key: value} of a state_storage notification."""
    return {k.lower(): v for k, v in note["params"]["result"]["changes"]}


def test_finalized_runtime_version_and_storage_are_shared(subpool, clients):
    d = subpool
    start = head_number(d)
    version = d.ctl.call_ok("state_getRuntimeVersion", [])
    assert version["specName"] == "node-subtensor", version
    issuance = d.ctl.call_ok("state_getStorage", [ISSUANCE])
    assert isinstance(issuance, str) and len(issuance) > 2, f"Balances.TotalIssuance is {issuance!r}"

    plan = [  # (group, transport, method, params)
        ("fin", "ndjson", "chain_subscribeFinalizedHeads", []),
        ("fin", "ws", "chain_subscribeFinalisedHeads", []),
        ("fin", "ndjson", "chain_subscribeFinalisedHeads", None),
        ("rv", "ndjson", "state_subscribeRuntimeVersion", []),
        ("rv", "ws", "chain_subscribeRuntimeVersion", []),
        ("rv", "ndjson", "chain_subscribeRuntimeVersion", None),
        ("rv", "ws", "state_subscribeRuntimeVersion", []),
        ("rv-batch", "ndjson", "state_subscribeRuntimeVersion", []),
        ("st3", "ndjson", "state_subscribeStorage", [[NUMBER, NOW, ISSUANCE]]),
        ("st3", "ws", "state_subscribeStorage", [[upper(ISSUANCE), NOW, upper(NUMBER)]]),
        ("st1", "ndjson", "state_subscribeStorage", [[NUMBER]]),
    ]
    # On this emulator the runtime version's first notification always overtakes the reply
    # that names its subscription: subpool must hold it until the reply has gone out.
    assert emulator_first_message(d.upstream_url, "state_subscribeRuntimeVersion") == "notification", \
        "chopsticks now answers state_subscribeRuntimeVersion before its first notification: " \
        "nothing here covers notifications that overtake their reply any more"
    conns = [(group, clients(transport), method, params) for group, transport, method, params in plan]
    subs = [(group, c, c.subscribe(method, params, batch=group == "rv-batch"), method)
            for group, c, method, params in conns]
    groups = {}
    for group, c, rid, method in subs:
        groups.setdefault(group.split("-")[0], []).append((c, c.result(rid)))

    status = d.status()
    assert status["upstream_subscriptions"] == 4, status
    fin = only_sub(status, "chain_subscribeFinalizedHeads")
    rv = only_sub(status, "state_subscribeRuntimeVersion")
    st3 = only_sub(status, "state_subscribeStorage", [sorted([NUMBER, NOW, ISSUANCE])])
    st1 = only_sub(status, "state_subscribeStorage", [[NUMBER]])
    for sub, n in ((fin, 3), (rv, 5), (st3, 2), (st1, 1)):
        assert sub == {**sub, "shared": True, "state": "active", "subscribers": n}, sub

    # The current values, right after each reply.
    one = lambda ns: len(ns) >= 1  # noqa: E731
    wait_notes(sum(groups.values(), []), one, "every subscriber's current value")
    for c, sid in groups["fin"]:
        [n] = c.notes(sid)
        assert n["method"] == "chain_finalizedHead" and int(n["params"]["result"]["number"], 16) == start, n
    for c, sid in groups["rv"]:
        [n] = c.notes(sid)
        assert n["method"] == "state_runtimeVersion", n
        assert (n["params"]["result"]["specName"], n["params"]["result"]["specVersion"]) == \
            (version["specName"], version["specVersion"]), n
    for c, sid in groups["st3"]:
        [n] = c.notes(sid)
        assert n["method"] == "state_storage", n
        got = storage_changes(n)
        assert set(got) == {NUMBER, NOW, ISSUANCE}, f"{c.name}: {got}"
        assert le_number(got[NUMBER]) == start and got[ISSUANCE] == issuance, f"{c.name}: {got}"
    for c, sid in groups["st1"]:
        [n] = c.notes(sid)
        assert set(storage_changes(n)) == {NUMBER} and le_number(storage_changes(n)[NUMBER]) == start, n

    # One block: finalized heads move, System.Number and Timestamp.Now change.
    assert new_block(d) == start + 1
    two = lambda ns: len(ns) >= 2  # noqa: E731
    wait_notes(groups["fin"] + groups["st3"] + groups["st1"], two, "the new block's notifications")
    for c, sid in groups["fin"]:
        assert heads(c.notes(sid)) == [start, start + 1], f"{c.name}: {heads(c.notes(sid))}"
    for c, sid in groups["st3"] + groups["st1"]:
        assert le_number(storage_changes(c.notes(sid)[1])[NUMBER]) == start + 1, c.notes(sid)
    head = d.ctl.call_ok("chain_getHeader", [])
    block_hash = d.ctl.call_ok("chain_getBlockHash", [start + 1])
    st3_last = groups["st3"][0][0].notes(groups["st3"][0][1])[-1]
    assert ISSUANCE not in storage_changes(st3_last), \
        "the emulator resent Balances.TotalIssuance unchanged: the late-joiner merge is not exercised"
    assert st3_last["params"]["result"]["block"] == block_hash, (st3_last, block_hash)

    # Late joiners: the current value at once, right after the reply; storage with every key.
    late = {
        "fin": ("ws", "chain_subscribeFinalizedHeads", []),
        "rv": ("ndjson", "chain_subscribeRuntimeVersion", []),
        "st3": ("ndjson", "state_subscribeStorage", [[NOW, upper(ISSUANCE), NUMBER]]),
    }
    late_pairs = {}
    for group, (transport, method, params) in late.items():
        c = clients(transport)
        rid = c.subscribe(method, params)
        sid = c.result(rid)
        late_pairs[group] = (c, sid)
        wait_notes([(c, sid)], one, f"{c.name}: the current {group} value after the reply")
        assert isinstance(c.msgs[0], dict) and c.msgs[0].get("id") == rid, f"{c.name}: {c.msgs[:2]}"
        catch_up = c.msgs[1]["params"]["result"]
        others = groups[group][0][0].notes(groups[group][0][1])
        if group == "fin":
            assert catch_up == others[-1]["params"]["result"] == head, catch_up
        elif group == "rv":
            assert catch_up == others[-1]["params"]["result"], catch_up
        else:
            got = {k.lower(): v for k, v in catch_up["changes"]}
            assert set(got) == {NUMBER, NOW, ISSUANCE}, f"the late storage joiner lacks keys: {catch_up}"
            seen = {}
            for n in others:
                seen.update(storage_changes(n))
            assert got == seen, f"late joiner {got} != the latest values {seen}"
            assert le_number(got[NUMBER]) == start + 1 and got[ISSUANCE] == issuance
            assert got[NOW] == d.ctl.call_ok("state_getStorage", [NOW]), got
            assert catch_up["block"] == block_hash, catch_up

    status = d.status()
    assert status["upstream_subscriptions"] == 4, status
    assert [only_sub(status, k, p)["subscribers"] for k, p in (
        ("chain_subscribeFinalizedHeads", None), ("state_subscribeRuntimeVersion", None),
        ("state_subscribeStorage", [sorted([NUMBER, NOW, ISSUANCE])]),
        ("state_subscribeStorage", [[NUMBER]]))] == [4, 6, 3, 1], status

    # Then everybody, late joiners included, sees the next block once.
    assert new_block(d) == start + 2
    wait_notes(groups["fin"] + [late_pairs["fin"]], lambda ns: heads(ns)[-1:] == [start + 2],
               "finalized head #%d everywhere" % (start + 2))
    assert heads(late_pairs["fin"][0].notes(late_pairs["fin"][1])) == [start + 1, start + 2]
    st_all = groups["st3"] + [late_pairs["st3"]] + groups["st1"]
    wait_notes(st_all, lambda ns: le_number(storage_changes(ns[-1]).get(NUMBER, "0x00")) == start + 2,
               "System.Number %d in every storage subscription" % (start + 2))
    for c, sid in st_all:
        numbers = [le_number(storage_changes(n)[NUMBER]) for n in c.notes(sid)]
        assert numbers == sorted(set(numbers)) and numbers[-1] == start + 2, f"{c.name}: {numbers}"
    for c, sid in groups["rv"] + [late_pairs["rv"]]:
        assert len(c.notes(sid)) == 1, f"{c.name}: one runtime version (it never changes): {c.notes(sid)}"


def test_unsubscribe_and_disconnect_end_upstream_subscriptions(subpool, clients):
    d = subpool
    start = head_number(d)
    a, b, c = clients("ndjson"), clients("ws"), clients("ndjson")
    plan = [
        (a, "chain_subscribeNewHead", None), (a, "state_subscribeStorage", [[NUMBER]]),
        (b, "subscribe_newHead", None), (b, "state_subscribeStorage", [[upper(NUMBER)]]),
        (c, "chain_subscribeNewHeads", None), (c, "chain_subscribeNewHeads", None),  # two ids, one connection
        (c, "chain_subscribeFinalisedHeads", None),
    ]
    rids = [(cl, cl.subscribe(m, p), m) for cl, m, p in plan]
    held = [(cl, cl.result(rid), m) for cl, rid, m in rids]
    status = d.status()
    assert status["upstream_subscriptions"] == 3, status
    assert only_sub(status, "chain_subscribeNewHeads")["subscribers"] == 4
    assert only_sub(status, "state_subscribeStorage")["subscribers"] == 2
    wait_notes([(cl, sid) for cl, sid, _ in held], lambda ns: len(ns) >= 1, "every current value")

    (_, a_heads, _), _, _, _, (_, c_first, _), (_, c_second, _), _ = held
    assert b.result(b.unsubscribe("chain_unsubscribeNewHeads", a_heads)) is False, "another client's id"
    assert a.result(a.unsubscribe("chain_unsubscribeNewHeads", "0123456789abcdef")) is False, "an unknown id"
    assert c.result(c.unsubscribe("chain_unsubscribeNewHeads", c_first)) is True
    assert c.result(c.unsubscribe("chain_unsubscribeNewHeads", c_first)) is False, "already unsubscribed"
    status = d.status()
    assert status["upstream_subscriptions"] == 3, status
    assert only_sub(status, "chain_subscribeNewHeads")["subscribers"] == 3

    # The other id on that connection carries on; the ended one gets nothing more (streams()).
    assert new_block(d) == start + 1
    rest = [h for h in held if h[1] != c_first]
    wait_notes([(cl, sid) for cl, sid, _ in rest], lambda ns: len(ns) >= 2, "the new block everywhere")
    assert heads(c.notes(c_second)) == [start, start + 1]
    assert heads(c.notes(c_first)) == [start]

    unsubscribe_all(rest)
    wait_no_upstream_subscriptions(d, "every upstream subscription ended after the unsubscribes")
    for kind in ("chain_subscribeNewHeads", "state_subscribeStorage", "chain_subscribeFinalizedHeads"):
        d.wait_log(f"unsubscribed {kind} (no subscribers left)")
    assert new_block(d) == start + 2
    for cl in (a, b, c):  # a round trip on each connection, then nothing after the unsubscribes
        cl.result(cl.request("system_chain"))
        cl.streams()
        assert not cl.eof

    # Clients that go away without unsubscribing are dropped the same way.
    log_mark = d.log.count("(no subscribers left)")
    gone = [(clients("ndjson"), "chain_subscribeNewHeads", None),
            (clients("ws"), "state_subscribeStorage", [[NOW]]),
            (clients("ndjson"), "chain_subscribeFinalizedHeads", None),
            (clients("ws"), "state_subscribeRuntimeVersion", None),
            (clients("ndjson"), "subscribe_newHead", None)]
    for cl, m, p in gone:
        cl.result(cl.subscribe(m, p))
    status = d.status()
    assert status["upstream_subscriptions"] == 4, status
    assert only_sub(status, "chain_subscribeNewHeads")["subscribers"] == 2
    for cl, _, _ in gone:
        cl.close(abort=True)
    wait_no_upstream_subscriptions(d, "every upstream subscription ended after the disconnects")
    d.wait_log("(no subscribers left)", log_mark + 4)

    # And so are clients that go away right after sending a subscribe: the daemon sees them
    # leave while the upstream subscribe is in flight and must end it upstream when its
    # reply comes.
    log_mark = d.log.count("(no subscribers left)")
    vanished = [("ndjson", "chain_subscribeNewHeads", None),
                ("ws", "state_subscribeStorage", [[NUMBER, NOW]]),
                ("ndjson", "chain_subscribeFinalizedHeads", None),
                ("ws", "chain_subscribeRuntimeVersion", None)]
    for t, m, p in vanished:
        clients(t).subscribe_and_vanish(m, p)
    wait_no_upstream_subscriptions(d, "no upstream subscription left after clients vanished mid-subscribe")
    d.wait_log("(no subscribers left)", log_mark + 4)
    answered_late = d.log.count(" for 0 clients")
    print(f"upstream subscribes answered after their only client had left: {answered_late} of 4")
    assert answered_late >= 1, "every client was still there when its upstream subscribe was answered: " \
                               "the in-flight path was not exercised"

    # The daemon still serves subscriptions afterwards.
    late = clients("ndjson")
    sid = late.result(late.subscribe("chain_subscribeNewHeads"))
    wait_notes([(late, sid)], lambda ns: len(ns) >= 1, "a new subscriber's current head")
    assert heads(late.notes(sid)) == [head_number(d)] == [start + 2]
    assert d.status()["upstream_subscriptions"] == 1
