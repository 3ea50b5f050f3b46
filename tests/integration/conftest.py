"""Fixtures that start the real subpoold and subpool-devnode binaries.

Binaries come from $SUBPOOL_BUILD_DIR (default <repo>/build). Every process
a fixture starts is stopped at teardown (SIGTERM, then SIGKILL by PID), also
when the test failed; on failure the tail of each process's stderr is
printed, and full logs stay in the test's tmp_path.
"""

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


def _teardown(request, things, log_of, lines):
    """Close every process a factory started (each close() stops it and names any problem:
    died during the test, or no clean exit 0 on SIGTERM). Logs are printed on failure."""
    problems = []
    for thing in things:
        problem = thing.close()
        if problem:
            problems.append(f"{problem}\n{harness.tail(log_of(thing), lines)}")
        elif _failed(request):
            print(f"--- {thing.proc.describe()}\n{harness.tail(log_of(thing), lines)}", file=sys.stderr)
    if problems and not _failed(request):
        pytest.fail("\n\n".join(problems), pytrace=False)
    for p in problems:
        print(p, file=sys.stderr)


def _require(binary: Path):
    if not binary.is_file():
        pytest.skip(
            f"{binary} is not built: run `meson setup build && ninja -C build` at the repo "
            f"root, or point SUBPOOL_BUILD_DIR at a build directory"
        )


@pytest.fixture
def daemon_bin() -> Path:
    _require(harness.daemon_binary())
    return harness.daemon_binary()


@pytest.fixture
def short_dir():
    """A private directory under /tmp whose paths fit a Unix socket address (tmp_path may not)."""
    path = tempfile.mkdtemp(prefix="sp-", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def devnode(request, tmp_path):
    """Factory: devnode(*extra_args, port=0, host="127.0.0.1", url_host=None, **options)
    -> harness.DevNode.

    Options map to flags: block_ms=100 -> --block-ms 100; fault="close" -> --fault close;
    tls_cert=path -> --tls-cert path (the node then serves wss://).
    """
    _require(harness.devnode_binary())
    nodes = []

    def make(*args, port=0, host="127.0.0.1", url_host=None, **options):
        argv = list(args)
        for key, value in options.items():
            argv += ["--" + key.replace("_", "-"), str(value)]
        node = harness.DevNode(argv, tmp_path, port, host, url_host)
        nodes.append(node)
        node.start()
        return node

    yield make
    _teardown(request, nodes, lambda n: n.proc.stderr.text() if n.proc else "", 30)


@pytest.fixture
def daemon(request, tmp_path, daemon_bin):
    """Factory: daemon(*upstreams, pool_size=2, log_level="debug", wait=True,
    extra_args=(), socket_path=None, env=None, wrapper=(), ready_timeout=10, **options)
    -> harness.Daemon.

    upstreams are DevNode objects or ws:// URLs; options become `-o key=value`.
    wait=True waits for the listener and "ready" log lines, and for every
    pool member to be ready when the upstreams are DevNodes.
    """
    daemons = []

    def make(*upstreams, pool_size=2, log_level="debug", wait=True, extra_args=(),
             socket_path=None, env=None, wrapper=(), ready_timeout=10, **options):
        d = harness.Daemon(upstreams, tmp_path, pool_size=pool_size, log_level=log_level,
                           options=options, extra_args=extra_args, socket_path=socket_path,
                           name=f"subpoold-{len(daemons) + 1}", env=env, wrapper=wrapper)
        daemons.append(d)
        if wait:
            d.wait_listening(ready_timeout)
            if all(isinstance(u, harness.DevNode) for u in upstreams):
                d.wait_upstreams_ready(ready_timeout + 5)
        return d

    yield make
    _teardown(request, daemons, lambda d: d.log, 60)
