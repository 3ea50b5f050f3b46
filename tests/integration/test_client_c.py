"""libsubpool against the real daemon and devnode, through client/tests/client_check.c.

Each scenario is one run of subpool-client-check; under valgrind when it is
installed, so a leak or a bad read fails the test too (exit 99).
"""

import signal

import pytest

import harness

VALGRIND_FAILED = 99
SKIP = 77


def check_binary():
    path = harness.build_dir() / "client" / "tests" / "subpool-client-check"
    if not path.is_file():
        pytest.skip(f"{path} is not built (client/ needs subdir('client') in meson.build)")
    return path


def check_argv(scenario, socket_path):
    argv = [check_binary(), scenario, socket_path]
    if harness.valgrind_usable(argv[0]):
        argv = ["valgrind", "-q", f"--error-exitcode={VALGRIND_FAILED}", "--leak-check=full",
                "--errors-for-leak-kinds=all", "--show-leak-kinds=all", *argv]
    return argv


def run_check(scenario, socket_path, timeout=120):
    r = harness.run_oneshot(check_argv(scenario, socket_path), timeout=timeout)
    if r.returncode == SKIP:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, f"{scenario} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert r.stdout.strip().endswith("ok"), r.stdout


@pytest.fixture
def served(devnode, daemon):
    node = devnode(block_ms=50)
    return daemon(node)


def test_call(served):
    """Results, an error reply's code and message, bad params, 3 MB replies, the reply limit."""
    run_check("call", served.socket)


def test_timeout(served):
    """A call past its timeout returns on time; the connection stays usable."""
    run_check("timeout", served.socket)


def test_nonblocking_in_libevent(served):
    """200 calls in flight from a libevent loop, a 4 MiB request that needs write readiness,
    a deadline from subpool_timeout_ms, a cancel, and close with a request outstanding."""
    run_check("libevent", served.socket)


def test_subscribe(served):
    """Notifications routed to the subscription, then unsubscribe."""
    run_check("subscribe", served.socket)


@pytest.mark.parametrize("how", ["kill", "term"])
def test_daemon_restart_mid_call(devnode, daemon, short_dir, tmp_path, how):
    """The daemon dies (SIGKILL) or stops at once (SIGTERM, shutdown_timeout=0) while a call
    is in flight: the call ends with a clear error, no hang, and a new daemon on the same
    socket is reached again."""
    node = devnode()
    sock = short_dir / "s.sock"
    first = daemon(node, socket_path=sock, shutdown_timeout="0s")
    proc = harness.Process(check_argv("restart", sock), "client-check", tmp_path)
    try:
        proc.expect(proc.stdout, rb"sent\n", 30)
        first.wait_status(lambda s: s["in_flight"] >= 1, "the sleep in flight")
        if how == "kill":
            first.stop(signal.SIGKILL)
        else:
            assert first.stop() == 0
        m = proc.expect(proc.stdout, rb"status (.*) after ([0-9.]+) s\n", 10)
        if how == "kill":
            assert m.group(1) == b"subpoold closed the connection"
        else:
            assert b"rpc error -32055" in proc.stdout.text().encode(), proc.stdout.text()
        assert float(m.group(2)) < 3.5, "the error came only when the sleep would have ended"
        proc.expect(proc.stdout, rb"lost\n", 10)
        daemon(node, socket_path=sock)
        proc.expect(proc.stdout, rb"reconnected\n", 30)
        assert proc.wait(30) == 0, proc.stdout.text()
    finally:
        proc.kill()


def test_unit_tests_under_valgrind():
    """The cmocka unit test (meson test runs it too) is valgrind clean."""
    unit = harness.build_dir() / "client" / "tests" / "test_libsubpool"
    if not unit.is_file():
        pytest.skip(f"{unit} is not built (needs cmocka)")
    if not harness.valgrind_usable(unit):
        pytest.skip("valgrind is missing or this is a sanitizer build (the normal build runs it)")
    r = harness.run_oneshot(["valgrind", "-q", f"--error-exitcode={VALGRIND_FAILED}",
                             "--leak-check=full", "--errors-for-leak-kinds=all", unit], timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
