"""The `subpool` command against the real daemon and devnode: every subcommand,
every exit code, socket resolution, and a --help that documents every option."""

import json
import os
import re
import signal
import subprocess

import pytest

import harness

OK, RPC, USAGE, CONNECT, TIMEOUT, OTHER = 0, 1, 2, 3, 4, 5


def cli_binary():
    path = harness.build_dir() / "client" / "subpool"
    if not path.is_file():
        pytest.skip(f"{path} is not built (client/ needs subdir('client') in meson.build)")
    return path


def cli(*args, env=None, timeout=30):
    """Run `subpool ARGS...` with a clean socket environment plus `env`."""
    base = {k: v for k, v in os.environ.items() if k not in ("SUBPOOL_SOCKET", "XDG_RUNTIME_DIR")}
    return subprocess.run([str(cli_binary()), *map(str, args)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, env={**base, **(env or {})})


@pytest.fixture
def served(devnode, daemon):
    return daemon(devnode(block_ms=50))


def test_help_documents_every_option_and_exit_code():
    r = cli("--help")
    assert r.returncode == OK and r.stderr == ""
    source = (harness.REPO / "client" / "subpool-cli.c").read_text()
    options = re.findall(r'\{"([a-z-]+)", (?:no|required)_argument', source)
    assert len(options) >= 7, options
    for name in options:
        assert f"--{name}" in r.stdout, f"--help does not mention --{name}"
    for command in ("call", "subscribe", "status"):
        assert re.search(rf"^\s+{command} ", r.stdout, re.M), f"--help does not describe {command}"
    for code in (OK, RPC, USAGE, CONNECT, TIMEOUT, OTHER):
        assert re.search(rf"^\s+{code}\s+\S", r.stdout, re.M), f"--help does not document exit {code}"


def test_version():
    r = cli("--version")
    assert r.returncode == OK
    assert re.fullmatch(r"subpool \S+ \(libsubpool \S+\)\n", r.stdout), r.stdout


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["call"],
    ["call", "m", "[1]", "extra"],
    ["call", "m", "not json"],
    ["call", "m", "5"],
    ["call", "m", "--count", "2"],
    ["status", "--count", "1"],
    ["call", "m", "--json"],
    ["status", "extra"],
    ["--timeout", "soon", "status"],
    ["--timeout", "-1", "status"],
    ["subscribe", "m", "--count", "0"],
    ["--no-such-option", "status"],
])
def test_usage_errors(args):
    r = cli(*args)
    assert r.returncode == USAGE, (args, r.returncode, r.stdout, r.stderr)
    assert r.stdout == "" and "subpool" in r.stderr


def test_call_prints_the_result(served):
    r = cli("--socket", served.socket, "call", "chain_getHeader")
    assert r.returncode == OK, r.stderr
    assert r.stdout.endswith("\n") and r.stdout.count("\n") == 1
    assert "parentHash" in json.loads(r.stdout)
    r = cli("-s", served.socket, "call", "devnode_echo", '[{"k": ["v", 1]}]')
    assert r.returncode == OK, r.stderr
    assert r.stdout == '{"k": ["v", 1]}\n'


def test_call_matches_the_node(devnode, daemon):
    """The CLI prints exactly what the node answers (storage is deterministic)."""
    node = devnode(block_ms=0)
    d = daemon(node)
    key = "0x658faa385070e074c85bf6b568cf0555"
    r = cli("--socket", d.socket, "call", "state_getStorage", json.dumps([key]))
    assert r.returncode == OK, r.stderr
    assert json.loads(r.stdout) == node.call("state_getStorage", [key])


def test_error_reply_exits_1_with_the_code(served):
    r = cli("--socket", served.socket, "call", "subpool_nope")
    assert r.returncode == RPC
    assert r.stdout == ""
    assert "error -32601: Method not found" in r.stderr


def test_status_table(served):
    r = cli("--socket", served.socket, "status")
    assert r.returncode == OK, r.stderr
    lines = r.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ID"))
    for title in ("ENDPOINT", "STATE", "SINCE", "RECONNECTS", "IN FLIGHT", "REQUESTS", "LAST ERROR"):
        assert title in lines[header], lines[header]
    rows = lines[header + 1:]
    ups = [row for row in rows if "ws://127.0.0.1:" in row]
    assert len(ups) == served.pool_size, r.stdout
    for row in ups:
        assert " ready " in row and "ago)" in row, row
    assert rows[-1].split()[0] == "total", r.stdout
    assert f"{served.pool_size} of {served.pool_size} upstreams ready" in r.stdout
    assert all(line == line.rstrip() for line in lines), "trailing blanks"


def test_status_json(served):
    r = cli("--socket", served.socket, "status", "--json")
    assert r.returncode == OK, r.stderr
    status = json.loads(r.stdout)
    assert status["pool_size"] == served.pool_size
    assert {u["state"] for u in status["upstreams"]} == {"ready"}


def test_status_shows_a_down_upstream(devnode, daemon):
    node = devnode()
    d = daemon(node, pool_size=1, reconnect_min="50ms", reconnect_max="200ms")
    node.stop()
    d.wait_status(lambda s: s["ready"] == 0, "the upstream down")
    r = cli("--socket", d.socket, "status")
    assert r.returncode == OK, r.stderr
    row = next(line for line in r.stdout.splitlines() if "ws://127.0.0.1:" in line)
    assert " ready " not in row and row.split()[-1] != "-", f"no state or last error: {row}"


def test_cannot_connect_exits_3(short_dir):
    missing = short_dir / "nobody.sock"
    r = cli("--socket", missing, "status")
    assert r.returncode == CONNECT
    assert str(missing) in r.stderr and "No such file" in r.stderr


def test_timeout_exits_4(served):
    r = cli("--socket", served.socket, "--timeout", "0.3", "call", "devnode_sleep", "[3000]")
    assert r.returncode == TIMEOUT, (r.returncode, r.stderr)
    assert "timeout" in r.stderr


def test_daemon_lost_exits_5(devnode, daemon):
    d = daemon(devnode())
    p = subprocess.Popen([str(cli_binary()), "--socket", d.socket, "call", "devnode_sleep", "[5000]"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        d.wait_status(lambda s: s["in_flight"] >= 1, "the sleep in flight")
        d.stop(signal.SIGKILL)
        out, err = p.communicate(timeout=10)
    finally:
        p.kill()
    assert p.returncode == OTHER, (p.returncode, out, err)
    assert "closed the connection" in err


def test_socket_from_environment(served, short_dir):
    env = {"SUBPOOL_SOCKET": served.socket}
    assert cli("call", "subpool_ping", env=env).stdout == '"pong"\n'
    # --socket wins over the environment.
    r = cli("--socket", short_dir / "nobody.sock", "call", "subpool_ping", env=env)
    assert r.returncode == CONNECT


def test_socket_in_xdg_runtime_dir(devnode, daemon, short_dir):
    if os.path.exists("/run/subpoold/subpoold.sock"):
        pytest.skip("a system subpoold socket exists and comes before $XDG_RUNTIME_DIR")
    d = daemon(devnode(), socket_path=short_dir / "subpoold.sock")
    r = cli("call", "subpool_ping", env={"XDG_RUNTIME_DIR": str(short_dir)})
    assert r.returncode == OK and r.stdout == '"pong"\n', r.stderr
    r = cli("status")
    assert r.returncode == CONNECT and "/run/subpoold/subpoold.sock" in r.stderr
    assert d.proc.alive()


def test_subscribe_refused_by_the_node_exits_1(served):
    """A subscribe the node refuses (bad params) is a JSON-RPC error: exit 1, code on stderr."""
    r = cli("--socket", served.socket, "subscribe", "state_subscribeStorage", '["not keys"]',
            "--count", "1")
    assert r.returncode == RPC, (r.returncode, r.stderr)
    assert "-32602" in r.stderr


def test_subscribe_needs_an_unsubscribe_method(served):
    r = cli("--socket", served.socket, "subscribe", "chain_watchThings")
    assert r.returncode == USAGE and "--unsubscribe" in r.stderr


def test_subscribe_count(served):
    r = cli("--socket", served.socket, "subscribe", "chain_subscribeNewHeads", "--count", "3")
    assert r.returncode == OK, r.stderr
    heads = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(heads) == 3
    numbers = [int(h["number"], 16) for h in heads]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3, numbers


def test_subscribe_until_interrupted(served):
    p = subprocess.Popen([str(cli_binary()), "--socket", served.socket, "subscribe",
                          "chain_subscribeNewHeads"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline()
        assert "parentHash" in first
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
    finally:
        p.kill()
    assert p.returncode == OK, err
    assert all("parentHash" in line for line in out.splitlines())
