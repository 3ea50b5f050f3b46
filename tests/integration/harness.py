"""Process control and clients for the integration tests.

Everything here talks only to 127.0.0.1 and Unix sockets, and kills only the
processes it started (by their Popen handle, i.e. by PID).
"""

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import rawjson

REPO = Path(__file__).resolve().parents[2]

# JSON-RPC and subpool error codes (protocol/jsonrpc.h).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
ERR_UNAVAILABLE = -32050
ERR_TIMEOUT = -32051
ERR_UNKNOWN_WRITE = -32052
ERR_LIMIT = -32053
ERR_REFUSED = -32054
ERR_SHUTDOWN = -32055
ERR_UPSTREAM_LOST = -32056


def build_dir() -> Path:
    return Path(os.environ.get("SUBPOOL_BUILD_DIR", REPO / "build"))


def daemon_binary() -> Path:
    return build_dir() / "daemon" / "subpoold"


def devnode_binary() -> Path:
    return build_dir() / "tests" / "fakenode" / "subpool-devnode"


def valgrind_usable(binary) -> bool:
    """valgrind is installed and the binary is not a sanitizer build (the two cannot mix)."""
    if not shutil.which("valgrind"):
        return False
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    return "libasan" not in out and "libubsan" not in out


def poll(fetch, check, timeout, what, interval=0.05):
    """Call fetch() until check(value) holds; fail naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if check(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {value!r}")
        time.sleep(interval)


def wait_until(predicate, timeout, what, interval=0.05):
    """Poll predicate() until it returns something truthy."""
    return poll(predicate, bool, timeout, what, interval)


def free_tcp_port() -> int:
    """A 127.0.0.1 port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# Processes


class StreamWatcher:
    """Collects a child's output stream in a reader thread; lets tests wait for patterns."""

    def __init__(self, stream, copy_path: Path):
        self._stream = stream
        self._data = bytearray()
        self._cond = threading.Condition()
        self._eof = False
        self._copy = open(copy_path, "wb")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        fd = self._stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                chunk = b""
            if chunk:
                self._copy.write(chunk)
            with self._cond:
                if not chunk:
                    self._eof = True
                    self._cond.notify_all()
                    break
                self._data += chunk
                self._cond.notify_all()
        self._copy.close()

    def mark(self) -> int:
        """Position to pass as `since` to wait for output written after now."""
        with self._cond:
            return len(self._data)

    def text(self) -> str:
        with self._cond:
            return self._data.decode("utf-8", "replace")

    def wait_for(self, pattern: bytes, timeout: float, since: int = 0):
        """The first match of regex `pattern` after `since`, or None at EOF or timeout."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        pos = since
        with self._cond:
            while True:
                m = rx.search(self._data, pos)
                if m:
                    return m
                # Lines are short: a match can only start in the last few KiB seen.
                pos = max(since, len(self._data) - 4096)
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    return None
                self._cond.wait(left)

    def join(self, timeout=5):
        self._thread.join(timeout)


class Process:
    """A child process with both output streams watched."""

    def __init__(self, argv, name: str, log_dir: Path, env=None):
        self.argv = [str(a) for a in argv]
        self.name = name
        self.popen = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, **env} if env else None,
        )
        self.pid = self.popen.pid
        self.stdout = StreamWatcher(self.popen.stdout, log_dir / f"{name}.stdout")
        self.stderr = StreamWatcher(self.popen.stderr, log_dir / f"{name}.stderr")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send_signal(self, sig):
        if self.alive():
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} (pid {self.pid}) did not exit within {timeout}s")
        self.stdout.join()
        self.stderr.join()
        return rc

    def kill(self):
        """SIGKILL if still running (cleanup path); reaps the child."""
        if self.alive():
            self.popen.kill()
        self.popen.wait()
        self.stdout.join()
        self.stderr.join()

    def shutdown(self, timeout=10):
        """Cleanup: SIGTERM, SIGKILL after timeout. Returns the exit code, None if killed."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        self.kill()
        return self.popen.returncode

    def teardown_problem(self, stopped_by_test: bool):
        """Stop the process; describe what went wrong, if anything: it died during the
        test, or did not exit 0 on SIGTERM (a crash, a sanitizer report, a hang)."""
        if stopped_by_test:
            self.kill()
            return None
        if not self.alive():
            rc = self.shutdown()
            return f"{self.describe()} died during the test (exit {rc})"
        rc = self.shutdown()
        if rc is None:
            return f"{self.describe()} ignored SIGTERM at teardown and was killed"
        if rc != 0:
            return f"{self.describe()} exited {rc} instead of 0 on SIGTERM at teardown"
        return None

    def describe(self) -> str:
        rc = self.popen.poll()
        state = "running" if rc is None else f"exited with {rc}"
        return f"{self.name} (pid {self.pid}, {state}): {' '.join(self.argv)}"

    def expect(self, watcher: StreamWatcher, pattern: bytes, timeout: float, since=0):
        m = watcher.wait_for(pattern, timeout, since)
        if m is None:
            raise AssertionError(
                f"{self.describe()}\nnever printed {pattern!r} within {timeout}s; stderr:\n"
                + tail(self.stderr.text())
            )
        return m


def tail(text: str, lines=60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run_oneshot(argv, timeout=10) -> subprocess.CompletedProcess:
    """Run a command that must exit by itself (help, config checks)."""
    return subprocess.run(
        [str(a) for a in argv], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )


class _LoopThread:
    """An asyncio loop in a thread, so synchronous tests can use the websockets library."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class RpcError(Exception):
    def __init__(self, error):
        super().__init__(f"JSON-RPC error {error}")
        self.error = error
        self.code = error.get("code") if isinstance(error, dict) else None


class DevNode:
    """A subpool-devnode on 127.0.0.1 (or `host`, e.g. "::1"), plus one control websocket
    for devnode_* calls. With --tls-cert among the args it serves wss://; url_host names
    it in the URL instead of the address (e.g. "localhost", for a certificate's DNS name).

    Created stopped: register it for cleanup, then call start()."""

    def __init__(self, args, log_dir: Path, port: int = 0, host: str = "127.0.0.1", url_host=None):
        self.args = list(args)
        self.log_dir = log_dir
        self.port = port
        self.host = host
        self.url_host = url_host
        self.tls = "--tls-cert" in self.args
        self.proc = None
        self.stopped = False  # by the test
        self.generation = 0
        self._ws = None
        self._next_id = 0
        self._loop = _LoopThread()

    @property
    def url(self) -> str:
        host = self.url_host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"{'wss' if self.tls else 'ws'}://{host}:{self.port}"

    def start(self, timeout=10):
        assert self.proc is None or not self.proc.alive(), "devnode already running"
        self.generation += 1
        listen = f"[{self.host}]" if ":" in self.host else self.host
        argv = [devnode_binary(), "--listen", f"{listen}:{self.port}", *self.args]
        self.proc = Process(argv, f"devnode-{self.generation}", self.log_dir)
        self.stopped = False
        m = self.proc.expect(self.proc.stdout, rb"listening on (\[[0-9a-f:]+\]|[0-9.]+):([0-9]+)", timeout)
        port = int(m.group(2))
        assert self.port in (0, port), f"devnode asked for port {self.port}, listens on {port}"
        self.port = port

    async def _acall(self, method, params):
        import websockets  # Debian's python3-websockets; imported late so a missing one is a clear error

        if self._ws is None or self._ws.closed:
            # /control: the devnode exempts it from scope "all" faults (it still counts it).
            extra = {}
            if self.tls:
                import ssl

                # The test's own node, maybe with a deliberately bad certificate: no checks here.
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                extra["ssl"] = ctx
            self._ws = await websockets.connect(
                self.url + "/control", max_size=None, ping_interval=None, compression=None, open_timeout=5,
                **extra
            )
        self._next_id += 1
        rid = self._next_id
        await self._ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}))
        while True:
            reply = json.loads(await self._ws.recv())
            if isinstance(reply, dict) and reply.get("id") == rid:
                return reply

    async def _aclose_ws(self):
        if self._ws is not None:
            ws, self._ws = self._ws, None
            await ws.close()

    def call(self, method, params=None, timeout=15):
        """Call a method on the node directly; returns the result or raises RpcError."""
        reply = self._loop.run(self._acall(method, [] if params is None else params), timeout)
        if "error" in reply:
            raise RpcError(reply["error"])
        return reply["result"]

    def stats(self) -> dict:
        """devnode_stats; "connections" and "handshakes" include this control connection."""
        return self.call("devnode_stats")

    def upstream_connections(self) -> int:
        """Connections other than our own control websocket."""
        return self.stats()["connections"] - 1

    def fault(self, kind, scope="all"):
        return self.call("devnode_fault", [kind, scope])

    def stop(self, timeout=10) -> int:
        """SIGTERM; returns the exit code (0 expected)."""
        self._close_ws()
        self.stopped = True
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def restart(self, timeout=10):
        """Stop (if running) and start again on the same port."""
        if self.proc.alive():
            rc = self.stop()
            assert rc == 0, f"devnode exited {rc} on SIGTERM"
        self.start(timeout)

    def _close_ws(self):
        try:
            self._loop.run(self._aclose_ws(), 5)
        except Exception:
            self._ws = None

    def close(self):
        """Cleanup, also after failures; returns a problem description or None."""
        problem = None
        if self.proc is not None:
            self._close_ws()
            problem = self.proc.teardown_problem(self.stopped)
        self._loop.close()
        return problem


class Daemon:
    """A subpoold on a private Unix socket."""

    def __init__(self, upstreams, log_dir: Path, pool_size=2, log_level="debug", options=None,
                 extra_args=(), socket_path=None, name="subpoold", env=None, wrapper=()):
        self.log_dir = log_dir
        self._tmpdir = None
        if socket_path is None:
            # tmp_path can exceed the 107 bytes a Unix socket path may have: use a short dir.
            self._tmpdir = tempfile.mkdtemp(prefix="sp-", dir="/tmp")
            socket_path = os.path.join(self._tmpdir, "subpoold.sock")
        self.socket = str(socket_path)
        self.pool_size = pool_size
        self.options = dict(options or {})
        # wrapper: a command that runs the daemon, e.g. valgrind and its options.
        argv = [*wrapper, daemon_binary(), "--socket", self.socket, "--pool-size", pool_size]
        if log_level is not None:  # None: the config file decides
            argv += ["--log-level", log_level]
        for u in upstreams:
            argv += ["--upstream", getattr(u, "url", u)]
        for k, v in self.options.items():
            argv += ["-o", f"{k}={v}"]
        argv += list(extra_args)
        self.proc = Process(argv, name, log_dir, env)
        self.pid = self.proc.pid
        self.stopped = False  # by the test
        self._clients = []

    def wait_listening(self, timeout=10):
        self.proc.expect(self.proc.stderr, rb"listener: accepting clients on " + re.escape(self.socket.encode()),
                         timeout)
        self.proc.expect(self.proc.stderr, rb"subpoold \S+ ready", timeout)

    def wait_status(self, check, what, timeout=15):
        """Poll subpool_status until check(status) holds; returns that status."""
        return poll(self.status, check, timeout, what)

    def wait_upstreams_ready(self, timeout=15):
        return self.wait_status(lambda s: s["ready"] == self.pool_size,
                                f"all {self.pool_size} upstreams ready", timeout)

    @property
    def log(self) -> str:
        return self.proc.stderr.text()

    def wait_log(self, text: str, count=1, timeout=10):
        """Poll until `text` appears at least `count` times in the log."""
        poll(lambda: self.log.count(text), lambda n: n >= count, timeout,
             f"{count} x {text!r} in the {self.proc.name} log")

    def client(self, timeout=30) -> "NdjsonClient":
        c = NdjsonClient(self.socket, timeout)
        self._clients.append(c)
        return c

    def status(self) -> dict:
        with NdjsonClient(self.socket, 10) as c:
            return c.call("subpool_status").result

    def send_signal(self, sig):
        """Send a signal; the test then owns the exit (teardown will not expect a clean one)."""
        self.stopped = True
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=20) -> int:
        return self.proc.wait(timeout)

    def stop(self, sig=signal.SIGTERM, timeout=20) -> int:
        """Send sig (SIGTERM by default) and return the exit code."""
        self.send_signal(sig)
        return self.wait_exit(timeout)

    def close(self):
        """Cleanup, also after failures; returns a problem description or None."""
        for c in self._clients:
            c.close()
        problem = self.proc.teardown_problem(self.stopped)
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        return problem


# --------------------------------------------------------------------------
# NDJSON client


def request_line(method: str, params=None, raw_id: bytes = None) -> bytes:
    """One request as JSON text, the id written exactly as raw_id (None: a notification)."""
    parts = [b'{"jsonrpc":"2.0"']
    if raw_id is not None:
        parts.append(b',"id":' + raw_id)
    parts.append(b',"method":' + json.dumps(method).encode())
    if params is not None:
        parts.append(b',"params":' + json.dumps(params, separators=(",", ":")).encode())
    parts.append(b"}")
    return b"".join(parts)


class Reply:
    """One JSON-RPC reply; id_raw holds the id exactly as the daemon wrote it."""

    def __init__(self, raw: bytes):
        self.raw = raw
        members = rawjson.object_members(raw)
        self.members = members
        self.id_raw = members.get("id")
        self.has_result = "result" in members
        self.result = json.loads(members["result"]) if self.has_result else None
        self.error = json.loads(members["error"]) if "error" in members else None
        self.code = self.error.get("code") if isinstance(self.error, dict) else None

    def __repr__(self):
        text = self.raw if len(self.raw) < 300 else self.raw[:300] + b"..."
        return f"Reply({text!r})"


def parse_line(line: bytes):
    """A reply line: one Reply, or a list of them for a batch."""
    stripped = line.lstrip()
    if stripped.startswith(b"["):
        return [Reply(e) for e in rawjson.array_elements(stripped)]
    return Reply(line)


class NdjsonClient:
    """A blocking NDJSON client on the daemon's Unix socket."""

    def __init__(self, path: str, timeout: float = 30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self.sock.connect(path)
        self._buf = bytearray()
        self._eof = False
        self._next_id = 0
        self._stash = {}  # replies read while waiting for another id

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def fresh_id(self) -> bytes:
        self._next_id += 1
        return str(self._next_id).encode()

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def send_line(self, line: bytes):
        self.sock.sendall(line + b"\n")

    def request(self, method, params=None, raw_id: bytes = None) -> bytes:
        """Send one request (fresh numeric id unless given); returns the raw id."""
        raw_id = self.fresh_id() if raw_id is None else raw_id
        self.send_line(request_line(method, params, raw_id))
        return raw_id

    def notify(self, method, params=None):
        self.send_line(request_line(method, params))

    def send_batch(self, elements):
        """elements: raw JSON texts (bytes); sent as one array line."""
        self.send_line(b"[" + b",".join(elements) + b"]")

    def recv_line(self, timeout: float = None) -> bytes:
        """The next line without its newline; raises EOFError at end of stream."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            start = len(self._buf)
            if self._eof:
                raise EOFError(f"connection closed; {len(self._buf)} bytes of an unterminated line")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete reply line in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                raise TimeoutError("no complete reply line in time") from None
            finally:
                self.sock.settimeout(self.timeout)
            if not chunk:
                self._eof = True
            self._buf += chunk

    def recv(self, timeout: float = None):
        """The next reply (a Reply, or a list for a batch reply)."""
        return parse_line(self.recv_line(timeout))

    def recv_id(self, raw_id: bytes, timeout: float = None) -> Reply:
        """The reply with this raw id; other replies read meanwhile are kept for later."""
        if raw_id in self._stash:
            return self._stash.pop(raw_id)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            r = self.recv(max(0.0, deadline - time.monotonic()))
            assert isinstance(r, Reply), f"unexpected batch reply while waiting for id {raw_id!r}"
            if r.id_raw == raw_id:
                return r
            assert r.id_raw not in self._stash, f"two replies with id {r.id_raw!r}"
            self._stash[r.id_raw] = r

    def call(self, method, params=None, timeout: float = None) -> Reply:
        return self.recv_id(self.request(method, params), timeout)

    def call_ok(self, method, params=None, timeout: float = None):
        """Call and return the result, failing the test on an error reply."""
        r = self.call(method, params, timeout)
        assert r.has_result, f"{method} failed: {r!r}"
        return r.result

    def expect_silence(self, timeout: float):
        """Nothing arrives within timeout."""
        try:
            line = self.recv_line(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected line: {line[:300]!r}")

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def expect_eof(self, timeout: float = None):
        """The daemon closes the connection with nothing more to say."""
        try:
            line = self.recv_line(timeout)
        except EOFError:
            assert not self._buf, f"unterminated data before EOF: {bytes(self._buf[:200])!r}"
            return
        raise AssertionError(f"expected EOF, got line {line[:300]!r}")


def check_reply_ok(reply: Reply, raw_id: bytes, expected_result=None):
    assert reply.id_raw == raw_id, f"id {reply.id_raw!r} != sent {raw_id!r}: {reply!r}"
    assert reply.has_result, f"expected a result: {reply!r}"
    if expected_result is not None:
        assert reply.result == expected_result, f"result mismatch: {reply!r}"


def check_reply_error(reply: Reply, code: int, raw_id: bytes = b"null"):
    assert reply.code == code, f"expected error {code}: {reply!r}"
    assert reply.id_raw == raw_id, f"expected id {raw_id!r}: {reply!r}"


class BackgroundTraffic:
    """Another client: a thread calling devnode_echo on its own connection until stopped.

    Bounded by max_calls. stop() returns the number of good replies and fails
    the test with the first problems seen (error replies, wrong results, timeouts).
    """

    def __init__(self, daemon: Daemon, max_calls=20000, timeout=10):
        self._client = daemon.client(timeout)
        self._stop = threading.Event()
        self._max = max_calls
        self.ok = 0
        self.problems = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        for n in range(self._max):
            if self._stop.is_set():
                return
            payload = f"bg-{n}"
            try:
                reply = self._client.call("devnode_echo", [payload])
            except Exception as e:  # reported by stop()
                self.problems.append(f"call {n}: {e!r}")
                return
            if reply.result == payload:
                self.ok += 1
            else:
                self.problems.append(f"call {n}: {reply!r}")

    def stop(self, min_ok=1) -> int:
        """Stop calling, close the connection; returns the number of good replies."""
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "background client is stuck"
        self._client.close()
        assert not self.problems, f"the other client was disturbed: {self.problems[:5]}"
        assert self.ok >= min_ok, f"the other client got only {self.ok} replies"
        return self.ok


def raise_fd_limit(wanted: int):
    """Raise this process's (and so its children's) soft descriptor limit to `wanted`."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            raise AssertionError(f"need {wanted} descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def vm_hwm_kib(pid: int) -> int:
    """Peak resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")
