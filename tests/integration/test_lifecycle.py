"""Start-up and shutdown: graceful SIGTERM, one daemon per socket, stale sockets."""

import os
import signal
import stat

import harness
from harness import ERR_SHUTDOWN, check_reply_error, check_reply_ok


def closed_upstream() -> str:
    return f"ws://127.0.0.1:{harness.free_tcp_port()}"


def test_sigterm_lets_in_flight_requests_finish(devnode, daemon):
    node = devnode()
    d = daemon(node, pool_size=2)
    c = d.client()
    sleepers = [c.request("devnode_sleep", [300]) for _ in range(10)]
    # One longer request keeps this connection open after SIGTERM for the check below.
    long_one = c.request("devnode_sleep", [1500])
    d.wait_status(lambda s: s["in_flight"] == 11, "11 requests in flight")

    d.send_signal(signal.SIGTERM)
    # The listener goes first: once the file is gone the daemon is stopping.
    harness.wait_until(lambda: not os.path.exists(d.socket), 5, "the socket file to be removed")
    late = c.request("devnode_echo", ["too late"])
    check_reply_error(c.recv_id(late, 5), ERR_SHUTDOWN, late)

    for raw_id in sleepers + [long_one]:
        check_reply_ok(c.recv_id(raw_id, 10), raw_id)
    c.expect_eof(5)
    assert d.wait_exit(15) == 0
    assert not os.path.exists(d.socket)
    assert "SIGTERM: stopping" in d.log


def test_sigterm_idle_daemon_exits_0_and_removes_socket(daemon):
    d = daemon(closed_upstream())
    assert stat.S_ISSOCK(os.stat(d.socket).st_mode)
    assert d.stop(signal.SIGINT) == 0
    assert not os.path.exists(d.socket)


def test_second_daemon_on_same_socket_is_refused(daemon, daemon_bin):
    first = daemon(closed_upstream())
    proc = harness.run_oneshot([daemon_bin, "--socket", first.socket, "--upstream", closed_upstream()])
    # A runtime failure, not a configuration error: server.c documents exit 1 for these.
    assert proc.returncode == 1, proc
    assert f"{first.socket}: another subpoold is listening there" in proc.stderr
    # The first daemon keeps its socket and keeps serving.
    assert stat.S_ISSOCK(os.stat(first.socket).st_mode)
    with first.client() as c:
        assert c.call_ok("subpool_ping") == "pong"
    assert first.stop() == 0


def test_stale_socket_is_replaced(daemon):
    killed = daemon(closed_upstream())
    killed.stop(signal.SIGKILL)
    assert stat.S_ISSOCK(os.stat(killed.socket).st_mode), "SIGKILL should leave the socket file"

    d = daemon(closed_upstream(), socket_path=killed.socket)
    assert f"replacing stale socket {killed.socket}" in d.log
    with d.client() as c:
        assert c.call_ok("subpool_ping") == "pong"
        assert c.call_ok("subpool_status")["pid"] == d.pid
    assert d.stop() == 0
    assert not os.path.exists(d.socket)


def test_regular_file_at_socket_path_is_not_replaced(daemon_bin, short_dir):
    path = short_dir / "not-a-socket"
    path.write_text("precious\n")
    proc = harness.run_oneshot([daemon_bin, "--socket", path, "--upstream", closed_upstream()])
    assert proc.returncode == 1, proc
    assert "is not a socket; refusing to replace it" in proc.stderr
    assert path.read_text() == "precious\n"
