"""Endpoints as users write them (network names, IPv6 literals), what subpool_status says
about each upstream, Retry-After on a refused handshake, and a bounded close handshake.

Network names of public chains are checked without contacting them: only --check-config
and --help-config run with them; the one name started for real is `local` (loopback)."""

import re
import signal
import time

import pytest

import harness
from harness import check_reply_ok, poll

FAST = {"reconnect_min": "50ms", "reconnect_max": "200ms"}


def test_default_upstream_is_finney(daemon_bin):
    proc = harness.run_oneshot([daemon_bin, "--help-config"])
    assert proc.returncode == 0, proc
    assert re.search(r"^  upstream\s+default finney$", proc.stdout, re.M), proc.stdout


@pytest.mark.parametrize("name", ["finney", "test", "archive", "local", "latent-lite"])
def test_network_names_are_accepted(daemon_bin, short_dir, name):
    proc = harness.run_oneshot([daemon_bin, "--socket", short_dir / "s.sock", "--upstream", name,
                                "--upstream", "ws://[::1]:9944/rpc", "--check-config"])
    assert (proc.returncode, proc.stdout.strip()) == (0, "configuration ok"), proc


@pytest.mark.parametrize("value, needle", [
    ("mainnet", "neither a ws:// or wss:// URL nor a network name (finney, test, archive, local, "
                "latent-lite)"),
    ("Finney", "nor a network name"),
    ("http://127.0.0.1:9944", "invalid URL"),
    ("ws://[::1", "invalid URL"),
])
def test_bad_upstream_values(daemon_bin, short_dir, value, needle):
    proc = harness.run_oneshot([daemon_bin, "--socket", short_dir / "s.sock", "--upstream", value,
                                "--check-config"])
    assert proc.returncode == 2 and needle in proc.stderr, proc


def test_same_endpoint_twice_is_an_error(daemon_bin, short_dir):
    proc = harness.run_oneshot([daemon_bin, "--socket", short_dir / "s.sock", "-u", "local",
                                "-u", "ws://127.0.0.1:9944", "--check-config"])
    assert proc.returncode == 2 and "listed twice" in proc.stderr, proc


def test_unreadable_ca_file_is_a_config_error(daemon_bin, short_dir, tmp_path):
    proc = harness.run_oneshot([daemon_bin, "--socket", short_dir / "s.sock", "-u", "local",
                                "-o", f"tls_ca_file={tmp_path / 'missing.pem'}", "--check-config"])
    assert proc.returncode == 2 and "tls_ca_file" in proc.stderr, proc


def test_local_network_name_maps_to_its_url(daemon):
    """`local` is ws://127.0.0.1:9944 (loopback only): status names it and shows its URL."""
    d = daemon("local", pool_size=1, wait=False, **FAST)
    d.wait_listening()
    status = d.status()
    up = status["upstreams"][0]
    assert (up["endpoint"], up["name"], up["priority"]) == ("ws://127.0.0.1:9944", "local", 0)
    assert status["endpoints"] == [{**status["endpoints"][0], "url": "ws://127.0.0.1:9944",
                                    "name": "local", "priority": 0, "active": True}]


def test_ipv6_literal_upstream(devnode, daemon):
    node = devnode(host="::1")
    assert node.url.startswith("ws://[::1]:")
    d = daemon(node, pool_size=2)
    with d.client() as c:
        check_reply_ok(c.call("devnode_echo", ["v6"]), b"1", "v6")
    assert d.status()["upstreams"][0]["endpoint"] == node.url
    d.wait_log(f"upstream 0 ([::1]:{node.port}): connected")


def test_status_fields_have_real_values(devnode, daemon):
    primary = devnode(block_ms=100)
    fallback = devnode(block_ms=100)
    d = daemon(primary, fallback, pool_size=2, health_interval="100ms")
    with d.client() as c:
        for i in range(5):
            c.call_ok("devnode_echo", [i])
    s = d.wait_status(lambda s: all(u["best"] for u in s["upstreams"] + s["watchers"]),
                      "best blocks on every link")
    now = time.time()
    for u in s["upstreams"]:
        assert u["role"] == "pool" and u["endpoint"] == primary.url and u["name"] is None
        assert u["priority"] == 0 and u["state"] == "ready"
        assert now - 60 < u["since"] <= now + 1
        assert u["reconnects"] == 0 and u["last_error"] is None and u["in_flight"] == 0
        assert isinstance(u["best"], int) and u["best"] >= 1
        assert u["stale"] is False and u["draining"] is False
    assert sum(u["requests"] for u in s["upstreams"]) == 5, "health checks are not client requests"
    [w] = s["watchers"]
    assert (w["role"], w["endpoint"], w["priority"], w["state"]) == ("watch", fallback.url, 1, "ready")
    assert w["requests"] == 0 and w["best"] >= 1
    assert s["active_endpoint"] == 0
    assert [(e["priority"], e["url"], e["status"], e["active"]) for e in s["endpoints"]] == [
        (0, primary.url, "up", True), (1, fallback.url, "up", False)]
    # The best block keeps moving with the chain.
    later = d.wait_status(lambda t: t["upstreams"][0]["best"] > s["upstreams"][0]["best"] + 2,
                          "the best block to advance")
    assert later["endpoints"][0]["best"] >= later["upstreams"][0]["best"]


def test_retry_after_is_honoured(devnode, daemon):
    """A 429 with Retry-After: 2 delays the next attempt by 2 s although the backoff says 200 ms.
    Counted, not timed: over ~4 s at most 3 refused handshakes (t=0, 2, 4), never a dozen."""
    node = devnode(retry_after=2)
    d = daemon(node, pool_size=1, **FAST)
    node.fault("close")
    node.fault("refuse429")
    poll(lambda: node.stats()["refused"], lambda n: n >= 1, 10, "a refused handshake")
    time.sleep(4)
    refused = node.stats()["refused"]
    assert 1 <= refused <= 3, f"{refused} handshakes refused in ~4 s with Retry-After: 2"
    d.wait_log("the node asks to retry after 2000 ms")
    poll(lambda: node.stats()["refused"], lambda n: n >= 2, 10, "the daemon to keep trying")
    assert "429" in d.status()["upstreams"][0]["last_error"]
    node.fault("none")
    d.wait_upstreams_ready()


def test_close_handshake_the_node_never_answers_is_bounded(devnode, daemon):
    node = devnode()
    d = daemon(node, pool_size=1, close_timeout="500ms", ping_interval="0")
    node.fault("stall")  # reads and discards everything from now on, close frames included
    t0 = time.monotonic()
    assert d.stop(signal.SIGTERM) == 0
    waited = time.monotonic() - t0
    assert "peer did not answer the close within 500 ms" in d.log
    assert waited < 5, f"shutdown took {waited:.1f}s with close_timeout 500ms"
    node.fault("none")
