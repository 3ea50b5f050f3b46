"""Shared subscriptions: many clients, one upstream subscription, stable ids,
no leaks when clients die, and upstream loss invisible to subscribers."""

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import harness

WORKER = Path(__file__).with_name("sub_worker.py")


class Workers:
    """Processes of subscribed clients (sub_worker.py), killed by PID at the end."""

    def __init__(self, socket_path, n_procs, per_proc, method="chain_subscribeNewHeads"):
        self.procs = [subprocess.Popen([sys.executable, str(WORKER), socket_path, str(per_proc),
                                        method], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True) for _ in range(n_procs)]

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        for p in self.procs:
            line = p.stdout.readline()  # blocks until the worker is ready or dies
            assert line.strip() == "ready", f"worker {p.pid} said {line!r}"
            assert time.monotonic() < deadline, "workers took too long to subscribe"

    def report(self, procs=None):
        out = []
        for p in procs or self.procs:
            p.stdin.write("report\n")
            p.stdin.flush()
            out += json.loads(p.stdout.readline())
        return out

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)


def check_in_order(clients, at_least):
    problems = [(c["sid"], c["problems"]) for c in clients if c["problems"]]
    assert not problems, problems[:5]
    short = [c for c in clients if len(c["numbers"]) < at_least]
    assert not short, f"{len(short)} clients saw fewer than {at_least} heads: {short[:2]}"
    sids = [c["sid"] for c in clients]
    assert len(set(sids)) == len(sids), "subscription ids must be distinct per client"


def wait_heads(workers, procs, at_least):
    """Poll the workers until every client has seen at least at_least[sid] heads."""
    return harness.poll(lambda: workers.report(procs),
                        lambda cs: all(len(c["numbers"]) >= at_least(c) for c in cs), 60,
                        "every client to receive the new heads", interval=0.2)


def test_thousand_subscribers_share_one_upstream_subscription(devnode, daemon):
    harness.raise_fd_limit(4096)
    node = devnode(block_ms=200)
    d = daemon(node, pool_size=2, log_level="info")
    workers = Workers(d.socket, 10, 100)
    try:
        workers.wait_ready()
        assert node.stats()["subscriptions"] == 1
        status = d.status()
        assert status["upstream_subscriptions"] == 1
        [sub] = status["subscriptions"]
        assert sub["subscribers"] == 1000 and sub["shared"] and sub["state"] == "active"

        clients = wait_heads(workers, None, lambda c: 4)
        assert len(clients) == 1000
        check_in_order(clients, 4)
        ids_before = {c["sid"] for c in clients}

        # SIGKILL half: the node still carries exactly one subscription.
        killed, alive = workers.procs[:5], workers.procs[5:]
        for p in killed:
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        d.wait_status(lambda s: s["subscriptions"] and s["subscriptions"][0]["subscribers"] == 500,
                      "500 subscribers left")
        assert node.stats()["subscriptions"] == 1
        before = {c["sid"]: len(c["numbers"]) for c in workers.report(alive)}
        clients = wait_heads(workers, alive, lambda c: before[c["sid"]] + 2)
        check_in_order(clients, 6)
        assert {c["sid"] for c in clients} <= ids_before, "ids changed"

        # All gone: the upstream subscription is ended at once.
        for p in alive:
            p.kill()
            p.wait(10)
        started = time.monotonic()
        harness.poll(lambda: node.stats()["subscriptions"], lambda n: n == 0, 10,
                     "no upstream subscription left")
        print(f"upstream subscription ended {time.monotonic() - started:.3f}s after the last "
              f"client died")
        assert d.status()["subscriptions"] == []
    finally:
        workers.close()


def test_late_joiner_gets_the_current_head_at_once(devnode, daemon):
    node = devnode(block_ms=0)  # blocks only on demand
    d = daemon(node)
    first = d.client()
    sid1 = first.call_ok("chain_subscribeNewHeads", [])
    head = first.recv()  # the node sends the current head after the reply
    assert head.members["method"] == b'"chain_newHead"'
    late = d.client()
    sid2 = late.call_ok("chain_subscribeNewHeads", [])
    assert sid2 != sid1
    catch_up = late.recv(timeout=5)
    assert json.loads(catch_up.members["params"])["result"] == json.loads(
        head.members["params"])["result"]
    assert node.stats()["subscriptions"] == 1
    node.call("devnode_newBlock")
    for c, sid in ((first, sid1), (late, sid2)):
        n = json.loads(c.recv(timeout=5).members["params"])
        assert n["subscription"] == sid


def test_unsubscribe_answers_like_a_node(devnode, daemon):
    node = devnode(block_ms=0)
    d = daemon(node)
    a, b = d.client(), d.client()
    sid = a.call_ok("chain_subscribeFinalizedHeads", [])
    a.recv()  # current value
    assert b.call_ok("chain_unsubscribeFinalizedHeads", [sid]) is False, "another client's id"
    assert a.call_ok("chain_unsubscribeFinalizedHeads", [sid]) is True
    assert a.call_ok("chain_unsubscribeFinalizedHeads", [sid]) is False, "already gone"
    harness.poll(lambda: node.stats()["subscriptions"], lambda n: n == 0, 10,
                 "the upstream subscription ended")


def test_subscription_survives_upstream_loss_with_the_same_id(devnode, daemon):
    node = devnode(block_ms=100)
    d = daemon(node, pool_size=2, reconnect_min="50ms", reconnect_max="200ms")
    c = d.client()
    sid = c.call_ok("chain_subscribeNewHeads", [])
    c.recv()
    node.restart()  # every upstream link drops; the node starts again from block 0
    d.wait_upstreams_ready()
    harness.poll(lambda: node.stats()["subscriptions"], lambda n: n == 1, 10,
                 "the subscription re-created upstream")
    seen = []
    deadline = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < deadline:
        params = json.loads(c.recv(timeout=5).members["params"])
        assert params["subscription"] == sid, "the client's id must not change"
        seen.append(int(params["result"]["number"], 16))
    assert len(seen) == 3, seen
    assert d.status()["subscriptions"][0]["subscribers"] == 1


def test_slow_subscriber_is_disconnected_and_nobody_else_slows(devnode, daemon):
    node = devnode(block_ms=5)
    d = daemon(node, client_max_output="64K", log_level="info")
    fast = d.client()
    sid = fast.call_ok("chain_subscribeNewHeads", [])
    seen, problems, stop = [], [], threading.Event()

    def read_fast():
        try:
            while not stop.is_set():
                params = json.loads(fast.recv(timeout=5).members["params"])
                if params["subscription"] != sid:
                    problems.append(params)
                seen.append(int(params["result"]["number"], 16))
        except Exception as e:  # reported below
            problems.append(repr(e))

    reader = threading.Thread(target=read_fast)
    reader.start()
    try:
        slow = d.client()
        slow.request("chain_subscribeNewHeads", [])  # and never read again
        d.wait_log("exceed client_max_output; disconnecting", timeout=60)
        count = len(seen)
        harness.poll(lambda: len(seen), lambda n: n >= count + 20, 30, "the fast client carries on")
    finally:
        stop.set()
        reader.join(10)
    assert not problems, problems[:3]
    assert all(b == a + 1 for a, b in zip(seen, seen[1:])), "the fast client saw a gap"
    assert d.log.count("exceed client_max_output") == 1, "only the slow client is dropped"
    assert d.status()["subscriptions"][0]["subscribers"] == 1


def test_subscribe_in_a_batch_with_an_overtaking_notification(devnode, daemon):
    """The node sends the first notification before the subscribe reply, and the client
    subscribed inside a batch: the batch reply comes first, then the held notification."""
    node = devnode(block_ms=0)
    d = daemon(node)
    node.fault("notify_first", "all")
    c = d.client()
    c.send_batch([harness.request_line("chain_subscribeNewHeads", [], b"7")])
    [reply] = c.recv(timeout=10)
    assert reply.id_raw == b"7" and reply.has_result, reply
    params = json.loads(c.recv(timeout=10).members["params"])
    assert params["subscription"] == reply.result
    assert int(params["result"]["number"], 16) == node.stats()["best"]
