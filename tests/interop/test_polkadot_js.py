"""@polkadot/api through subpoold's TCP port, to (a) the devnode and (b) chopsticks running
the real Subtensor runtime from a chain spec: metadata, storage, a runtime call, new heads
from blocks made on demand, disconnect; many clients cost the upstream exactly pool_size
connections.

Needs node and npm (the dependencies pinned in package-lock.json are installed into
tests/interop/node_modules with `npm ci` when missing), and for (b) the chain spec at
$SUBPOOL_CHAINSPEC (default: shared/chainspecs/subtensor-raonet.json beside the repo).
"""

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

import harness
from localwire import tcp_daemon

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "polkadot_client.mjs"
CHAINSPEC = Path(os.environ.get("SUBPOOL_CHAINSPEC",
                                harness.REPO.parent / "shared" / "chainspecs" / "subtensor-raonet.json"))
CHOPSTICKS = HERE / "node_modules" / "@acala-network" / "chopsticks" / "chopsticks.cjs"


@pytest.fixture(scope="session")
def node_modules():
    """node and npm, and the locked dependencies installed (npm ci) when missing or stale."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed for the @polkadot/api interop tests (Debian: nodejs, npm)")
    stamp = HERE / "node_modules" / ".package-lock.json"
    lock = HERE / "package-lock.json"
    if not stamp.is_file() or stamp.stat().st_mtime < lock.stat().st_mtime:
        p = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=HERE,
                           capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            pytest.fail(f"npm ci failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return node


def require_subscriptions(d):
    """The acceptance test subscribes to new heads: it needs subscriptions through subpool."""
    with d.client() as c:
        reply = c.call("chain_subscribeNewHeads", [])
    if reply.code == harness.ERR_REFUSED:
        pytest.skip("this subpoold refuses subscriptions (-32054); the @polkadot/api acceptance "
                    "test runs once subscriptions through subpool are implemented")
    assert reply.has_result, f"chain_subscribeNewHeads through subpoold failed: {reply!r}"


class ClientRun:
    """The Node script, its JSON-lines stdout read in a thread; killed by PID at the end."""

    def __init__(self, node_exe, url, log_dir: Path, *args):
        self.argv = [node_exe, str(SCRIPT), "--url", url, *[str(a) for a in args]]
        self.stderr_path = log_dir / f"polkadot-client-{time.monotonic_ns()}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.argv, cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True)
        self.lines = queue.Queue()
        self.events = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def event(self, timeout):
        """The next JSON event; fails on an error event, EOF or timeout."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from the @polkadot/api client within {timeout}s") from None
        if line is None:
            self.proc.wait(10)
            raise AssertionError(f"the @polkadot/api client exited {self.proc.returncode} early; "
                                 f"stderr:\n{self.stderr_tail()}")
        ev = json.loads(line)
        self.events.append(ev)
        assert ev["event"] != "error", f"@polkadot/api client failed: {ev['message']}\n{self.stderr_tail()}"
        return ev

    def go(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self, timeout):
        done = self.event(timeout)
        assert done["event"] == "done", done
        rc = self.proc.wait(timeout)
        assert rc == 0, f"client exited {rc}"
        return done

    def stderr_tail(self):
        self._stderr.flush()
        return harness.tail(self.stderr_path.read_text(errors="replace"), 40)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._stderr.close()


@pytest.fixture
def polkadot_client(node_modules, tmp_path):
    runs = []

    def start(url, *args):
        run = ClientRun(node_modules, url, tmp_path, *args)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


def check_heads(done, blocks):
    best = done["best"]
    for r in done["results"]:
        heads = r["heads"]
        assert all(n in heads for n in range(best - blocks + 1, best + 1)), \
            f"client {r['client']} saw heads {heads}, expected up to #{best}"
        assert heads == sorted(heads), f"client {r['client']}: heads out of order {heads}"


# ----------------------------------------------------------------------------- devnode


def test_polkadot_js_through_subpoold_to_devnode(devnode, daemon, polkadot_client):
    node = devnode(block_ms=0)
    d = tcp_daemon(daemon, node, pool_size=2)
    require_subscriptions(d)
    version = node.call("state_getRuntimeVersion")
    run = polkadot_client(f"ws://127.0.0.1:{d.tcp_port}", "--mode", "provider", "--new-block",
                          "devnode_newBlock", "--blocks", 3, "--timeout", 60)
    assert run.event(60)["event"] == "ready"
    done = run.finish(60)
    (r,) = done["results"]
    assert r["metadataBytes"] == (600000 - 2) // 2
    assert (r["specName"], r["specVersion"]) == (version["specName"], version["specVersion"])
    assert r["storageBytes"] >= 4 and r["stateCallBytes"] == 64
    check_heads(done, 3)
    assert done["best"] == int(node.call("chain_getHeader")["number"], 16)


def test_50_polkadot_js_clients_cost_pool_size_connections(devnode, daemon, polkadot_client):
    node = devnode(block_ms=0)
    d = tcp_daemon(daemon, node, pool_size=3)
    require_subscriptions(d)
    before = node.stats()
    assert before["connections"] - 1 == 3  # minus the harness's control websocket
    run = polkadot_client(f"ws://127.0.0.1:{d.tcp_port}", "--mode", "provider", "--new-block",
                          "devnode_newBlock", "--clients", 50, "--blocks", 2, "--wait-go", "--timeout", 90)
    ready = run.event(90)
    assert ready == {**ready, "event": "ready", "clients": 50}
    during = node.stats()
    assert during["connections"] - 1 == 3, f"50 clients opened {during['connections'] - 1} upstream connections"
    assert during["handshakes"] == before["handshakes"], "upstream connections were opened for clients"
    harness.poll(lambda: d.status()["clients"], lambda n: n >= 51, 10, "50 websocket clients in subpool_status")
    run.go()
    done = run.finish(90)
    assert len(done["results"]) == 50
    check_heads(done, 2)
    after = node.stats()
    assert (after["connections"] - 1, after["handshakes"]) == (3, before["handshakes"])
    d.wait_status(lambda s: s["clients"] == 1, "the 50 clients gone")


# -------------------------------------------------------------------------- chopsticks


def upstream_sockets_to(port: int) -> int:
    """Established IPv4 TCP connections to 127.0.0.1:port from a client side (ours only:
    nothing but subpoold connects to the emulator)."""
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        rem_port = int(fields[2].split(":")[1], 16)
        if rem_port == port and fields[3] == "01":
            n += 1
    return n


@pytest.fixture(scope="module")
def chopsticks(node_modules, tmp_path_factory):
    """One chopsticks per module (slow to start, ~300 MB): the real Subtensor runtime."""
    if not CHAINSPEC.is_file():
        pytest.skip(f"chain spec {CHAINSPEC} not found: set SUBPOOL_CHAINSPEC to "
                    f"subtensor-raonet.json (see shared/chainspecs/README.md)")
    port = harness.free_tcp_port()
    log_dir = tmp_path_factory.mktemp("chopsticks")
    proc = harness.Process([node_modules, CHOPSTICKS, "--genesis", CHAINSPEC, "--host", "127.0.0.1",
                            "--port", port, "--build-block-mode", "Manual"], "chopsticks", log_dir)
    try:
        proc.expect(proc.stdout, rb"RPC listening on http://127\.0\.0\.1:" + str(port).encode(), 120)
        yield f"ws://127.0.0.1:{port}", port
    finally:
        proc.shutdown()


def test_polkadot_js_through_subpoold_to_chopsticks(chopsticks, daemon, polkadot_client):
    url, port = chopsticks
    d = tcp_daemon(daemon, url, pool_size=2, request_timeout="60s")
    d.wait_status(lambda s: s["ready"] == 2, "both upstreams ready to chopsticks", 30)
    require_subscriptions(d)
    clients = 5
    run = polkadot_client(f"ws://127.0.0.1:{d.tcp_port}", "--mode", "api", "--new-block", "dev_newBlock",
                          "--clients", clients, "--blocks", 2, "--wait-go", "--timeout", 120)
    assert run.event(120)["event"] == "ready"
    assert upstream_sockets_to(port) == 2, "clients cost the emulator more than pool_size connections"
    run.go()
    done = run.finish(120)
    assert len(done["results"]) == clients
    for r in done["results"]:
        assert r["specName"] == "node-subtensor" and r["metadataVersion"] >= 14, r
        assert r["pallets"] >= 20, r
        assert r["systemNumberAfter"] == done["best"], r
        assert r["stateCallBytes"] > 8, r
    check_heads(done, 2)
    assert upstream_sockets_to(port) == 2
