"""Several endpoints in priority order: the pool fills from the first healthy one, moves to
the fallback when it fails (stopped, stalled, refusing, stale), and moves back once a watch
link has shown the primary healthy again. Clients only see answers meanwhile."""

import re
import time

from harness import BackgroundTraffic, check_reply_ok, free_tcp_port, poll

# Small timeouts so that failures are seen in well under a second.
FAST = {"reconnect_min": "50ms", "reconnect_max": "300ms", "health_interval": "200ms",
        "ping_interval": "300ms", "pong_timeout": "300ms"}


def on(status, priority):
    """Every pool member ready on the endpoint of this priority, and that endpoint active."""
    return status["active_endpoint"] == priority and all(
        u["priority"] == priority and u["state"] == "ready" for u in status["upstreams"])


def watched(status, priority):
    return any(w["priority"] == priority and w["state"] == "ready" and w["best"] is not None
               for w in status["watchers"])


def start(devnode, daemon, *node_args, pool_size=2, **options):
    primary = devnode(*node_args)
    fallback = devnode(*node_args)
    d = daemon(primary, fallback, pool_size=pool_size, **{**FAST, **options})
    d.wait_status(lambda s: on(s, 0) and watched(s, 1), "the pool on the primary, the fallback watched")
    return primary, fallback, d


def log_after(d, mark: int, *needles) -> str:
    """The log written after `mark`, once it holds every needle (another thread reads it,
    so it may trail what status already shows)."""
    poll(lambda: d.log[mark:], lambda text: all(n in text for n in needles), 10,
         f"{needles} in the log")
    return d.log[mark:]


def test_primary_stopped_then_back(devnode, daemon):
    primary, fallback, d = start(devnode, daemon)
    assert primary.upstream_connections() == 2
    assert fallback.upstream_connections() == 1, "the fallback carries only the watch link"
    bg = BackgroundTraffic(d)

    t0 = time.monotonic()
    primary.stop()
    d.wait_status(lambda s: on(s, 1), "the pool on the fallback", timeout=15)
    # A stopped node is seen at once (connection closed); one backoff step (<= 300 ms) later
    # the members are on the fallback. Bounded generously: this must not take seconds.
    assert time.monotonic() - t0 < 5
    served = fallback.stats()["requests"]
    time.sleep(0.3)
    assert fallback.stats()["requests"] > served + 2, "client traffic goes to the fallback"
    status = d.status()
    assert status["endpoints"][0]["status"] == "down"
    assert watched(status, 0) is False  # the watch link on the primary cannot connect

    mark = len(d.log)
    primary.restart()
    d.wait_status(lambda s: on(s, 0), "the pool back on the primary", timeout=15)
    up_line = f"endpoint 0 (ws://127.0.0.1:{primary.port}) is up"
    later = log_after(d, mark, up_line, "moving from endpoint 1")
    # Checked, not assumed: the watch link saw the primary answer before any member moved.
    up = later.find(up_line)
    moved = later.find("moving from endpoint 1")
    assert 0 <= up < moved, later[-3000:]
    # Members moved back one at a time, each idle when it left.
    assert len(re.findall(r"upstream \d: moving from endpoint 1 \(\S+\) to endpoint 0", later)) == 2
    bg.stop(min_ok=10)
    d.wait_status(lambda s: watched(s, 1), "the fallback watched again")
    assert primary.upstream_connections() == 2
    poll(fallback.upstream_connections, lambda n: n == 1, 10, "only the watch link on the fallback")


def test_primary_unreachable_at_start(devnode, daemon):
    fallback = devnode()
    dead = f"ws://127.0.0.1:{free_tcp_port()}"
    d = daemon(dead, fallback, pool_size=2, wait=False, **FAST)
    d.wait_listening()
    status = d.wait_status(lambda s: on(s, 1), "the pool on the fallback")
    assert status["endpoints"][0]["status"] == "down"
    assert "refused" in status["endpoints"][0]["last_error"].lower()
    assert [w["priority"] for w in status["watchers"]] == [0]
    with d.client() as c:
        check_reply_ok(c.call("devnode_echo", ["x"]), b"1", "x")


def test_primary_that_never_answers_calls_is_left_at_start(devnode, daemon):
    """A primary that accepts websockets and answers pings, but no calls (a wedged node,
    or one that rate-limits every RPC), must not hold the pool while a fallback answers."""
    wedged = devnode("--latency-ms", "600000")
    fallback = devnode()
    d = daemon(wedged, fallback, pool_size=2, wait=False, **FAST)
    d.wait_listening()
    d.wait_status(lambda s: on(s, 1), "the pool on the answering fallback")
    with d.client() as c:
        check_reply_ok(c.call("devnode_echo", ["x"], timeout=10), b"1", "x")


def test_primary_that_answers_once_then_hangs_up_is_left(devnode, daemon):
    """A node (or a rate limiter before it) that accepts each link, answers one message and
    closes it must not keep the pool: short-lived links count as the node not answering."""
    primary, fallback, d = start(devnode, daemon)
    primary.fault("one_reply")
    d.wait_status(lambda s: on(s, 1), "the pool on the fallback", timeout=20)
    assert d.status()["endpoints"][0]["status"] == "down"
    with d.client() as c:
        for i in range(20):
            check_reply_ok(c.call("devnode_echo", [i], timeout=10), str(i + 1).encode(), i)


def test_stalled_primary_is_left_within_the_pong_deadline(devnode, daemon):
    primary, fallback, d = start(devnode, daemon)
    bg = BackgroundTraffic(d)
    t0 = time.monotonic()
    primary.fault("stall")  # every open and future connection: no pongs, no replies
    d.wait_status(lambda s: on(s, 1), "the pool on the fallback", timeout=15)
    # ping_interval + pong_timeout (600 ms) plus a backoff step; generous bound only.
    assert time.monotonic() - t0 < 6
    assert d.status()["endpoints"][0]["status"] == "down"
    primary.fault("none")  # new connections answer again; the watch link finds out
    d.wait_status(lambda s: on(s, 0), "the pool back on the primary", timeout=15)
    bg.stop(min_ok=10)


def test_primary_refusing_with_429_is_left_and_its_retry_after_honoured(devnode, daemon):
    primary = devnode(retry_after=2)
    fallback = devnode()
    d = daemon(primary, fallback, pool_size=2, **FAST)
    d.wait_status(lambda s: on(s, 0) and watched(s, 1), "the pool on the primary")
    primary.fault("close")
    primary.fault("refuse429")
    d.wait_status(lambda s: on(s, 1), "the pool on the fallback", timeout=15)
    # The links dropped by the close may be what marked it down; the next attempt meets the 429.
    d.wait_status(lambda s: "429" in (s["endpoints"][0]["last_error"] or ""),
                  "the primary's 429 recorded", timeout=15)
    # From now on only the watch link tries the primary, at most once per Retry-After (2 s):
    # without it, 300 ms backoff steps would mean a dozen attempts in 3 s.
    first = primary.stats()["refused"]
    time.sleep(3)
    assert primary.stats()["refused"] - first <= 3
    primary.fault("none")
    d.wait_status(lambda s: on(s, 0), "the pool back on the primary", timeout=15)


def test_stale_primary_is_taken_out_of_rotation(devnode, daemon):
    primary, fallback, d = start(devnode, daemon, "--block-ms", "100", health_interval="100ms",
                                 stale_block_timeout="1s")
    bg = BackgroundTraffic(d)
    primary.fault("freeze")  # its chain stops; the fallback's goes on
    s = d.wait_status(lambda s: on(s, 1), "the pool on the fallback", timeout=15)
    assert s["endpoints"][0]["stale"] is True and s["endpoints"][1]["stale"] is False
    assert s["endpoints"][0]["status"] == "up", "it answers, it is just stuck"
    assert s["endpoints"][1]["best"] > s["endpoints"][0]["best"]
    poll(lambda: re.search(r"endpoint 0 \(\S+\) is stale: best block \d+ for \d+ ms while "
                           r"endpoint 1", d.log), bool, 10, "the stale endpoint in the log")
    poll(primary.upstream_connections, lambda n: n == 1, 10,
         "only the watch link left on the stale primary")

    mark = len(d.log)
    primary.fault("none")  # it catches up with the blocks it missed, and advances again
    d.wait_status(lambda s: on(s, 0) and not s["endpoints"][0]["stale"], "the pool back on the primary",
                  timeout=15)
    log_after(d, mark, "is current again")
    bg.stop(min_ok=10)


def test_single_endpoint_is_never_stale(devnode, daemon):
    node = devnode(block_ms=100)
    d = daemon(node, pool_size=2, health_interval="100ms", stale_block_timeout="1s")
    d.wait_status(lambda s: all(u["best"] is not None for u in s["upstreams"]), "best blocks known")
    node.fault("freeze")
    time.sleep(2.5)
    status = d.status()
    assert status["ready"] == 2 and status["watchers"] == []
    assert not any(u["stale"] for u in status["upstreams"]), status["upstreams"]
    assert not status["endpoints"][0]["stale"]
    with d.client() as c:
        check_reply_ok(c.call("devnode_echo", ["still"]), b"1", "still")
    node.fault("none")
