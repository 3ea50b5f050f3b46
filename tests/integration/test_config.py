"""Command line and configuration file handling of subpoold (no node needed)."""

import re

import pytest

import harness

# Keys the README and the brief promise; config.c may have more (all are checked below).
DOCUMENTED_KEYS = {
    "socket", "upstream", "pool_size", "request_timeout", "max_message", "max_request",
    "max_batch", "queue_max", "client_max_in_flight", "client_max_output", "ping_interval",
    "pong_timeout", "reconnect_min", "reconnect_max", "shutdown_timeout", "connect_timeout",
    "max_in_flight", "log_level",
}


def source(rel: str) -> str:
    return (harness.REPO / rel).read_text()


def long_options():
    """(name, short letter) of every entry of server.c's long_options table."""
    found = re.findall(r'\{"([a-z-]+)",\s*\w+_argument,\s*NULL,\s*\'(.)\'\}', source("daemon/server.c"))
    assert len(found) >= 10, f"cannot read long_options from daemon/server.c: {found}"
    return found


def short_options():
    m = re.search(r'getopt_long\(argc, argv, "([^"]+)"', source("daemon/server.c"))
    assert m, "cannot find the getopt string in daemon/server.c"
    return [c for c in m.group(1) if c != ":"]


def config_keys():
    keys = set(re.findall(r'^\s*\{"(\w+)", CONFIG_[A-Z]+,', source("daemon/config.c"), re.M))
    assert DOCUMENTED_KEYS <= keys, f"config.c lacks documented keys: {DOCUMENTED_KEYS - keys}"
    return keys


@pytest.fixture
def sandbox(short_dir):
    """Settings that keep a daemon that wrongly starts harmless: private socket, closed port."""
    return {"socket": str(short_dir / "s.sock"), "upstream": f"ws://127.0.0.1:{harness.free_tcp_port()}"}


def write_config(path, sandbox, body_lines):
    """A config file: the sandbox settings on lines 1-3, then body_lines from line 4."""
    lines = ["[subpoold]", f"socket = {sandbox['socket']}", f"upstream = {sandbox['upstream']}",
             *body_lines]
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_config_error(proc, *needles):
    """Exit 2 with exactly one line on stderr containing every needle."""
    err_lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}, stderr: {proc.stderr!r}"
    assert len(err_lines) == 1, f"expected one line on stderr: {proc.stderr!r}"
    for needle in needles:
        assert needle in err_lines[0], f"{needle!r} not in {err_lines[0]!r}"
    return err_lines[0]


@pytest.mark.parametrize(
    "body, bad_line, needle",
    [
        (["pool_size = 3", "bogus_key = 1"], 5, 'unknown key "bogus_key"'),
        (["request_timeout = soon"], 4, "request_timeout"),
        (["pool_size = 0"], 4, "pool_size"),
        (["max_message = 12X"], 4, "max_message"),
        (["", "; a comment", "[other]", "pool_size = 2"], 7, "unknown section [other]"),
        (["pool_size = 2", "this line has no equals sign"], 5, "syntax error"),
        (["upstream = http://127.0.0.1:1"], 4, "upstream"),
    ],
)
def test_bad_config_file_names_file_and_line(daemon_bin, tmp_path, sandbox, body, bad_line, needle):
    conf = write_config(tmp_path / "subpoold.conf", sandbox, body)
    proc = harness.run_oneshot([daemon_bin, "--config", conf])
    assert_config_error(proc, f"{conf}:{bad_line}:", needle)
    assert not (tmp_path / "s.sock").exists()


def test_missing_config_file(daemon_bin, tmp_path):
    missing = tmp_path / "nope.conf"
    proc = harness.run_oneshot([daemon_bin, "--config", missing])
    assert_config_error(proc, str(missing), "No such file")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-o", "bogus=1"], 'unknown key "bogus"'),
        (["-o", "request_timeout=abc"], "request_timeout"),
        (["-o", "request_timeout=50ms"], "request_timeout"),  # below the 100 ms minimum
        (["-o", "noequals"], "KEY=VALUE"),
        (["--pool-size", "65"], "pool_size"),
        (["--log-level", "loud"], "log_level"),
        (["-o", "reconnect_min=10s", "-o", "reconnect_max=1s"], "reconnect_min"),
        (["extra-argument"], "unexpected argument"),
    ],
)
def test_bad_command_line(daemon_bin, sandbox, args, needle):
    proc = harness.run_oneshot([daemon_bin, "--socket", sandbox["socket"], "--upstream",
                                sandbox["upstream"], *args])
    assert_config_error(proc, needle)


def test_unknown_option_exits_2(daemon_bin):
    proc = harness.run_oneshot([daemon_bin, "--no-such-option"])
    assert proc.returncode == 2, proc
    assert "--help" in proc.stderr


def test_help_mentions_every_option(daemon_bin):
    proc = harness.run_oneshot([daemon_bin, "--help"])
    assert proc.returncode == 0, proc
    text = proc.stdout
    for name, letter in long_options():
        assert f"--{name}" in text, f"--help does not mention --{name}"
    for letter in short_options():
        assert f"-{letter}," in text, f"--help does not mention -{letter}"
    assert "Exit status" in text


def test_help_config_lists_every_key(daemon_bin):
    proc = harness.run_oneshot([daemon_bin, "--help-config"])
    assert proc.returncode == 0, proc
    listed = set(re.findall(r"^  (\w+)\s+default ", proc.stdout, re.M))
    assert listed == config_keys()


def test_version(daemon_bin):
    version = re.search(r"version\s*:\s*'([^']+)'", source("meson.build")).group(1)
    proc = harness.run_oneshot([daemon_bin, "--version"])
    assert (proc.returncode, proc.stdout.strip()) == (0, f"subpoold {version}")


def test_check_config_accepts_good_config(daemon_bin, tmp_path, sandbox):
    conf = write_config(tmp_path / "good.conf", sandbox,
                        ["pool_size = 4", "request_timeout = 250ms", "max_message = 2M",
                         "upstream = ws://127.0.0.1:1"])
    proc = harness.run_oneshot([daemon_bin, "--config", conf, "--check-config",
                                "-o", "max_batch=10"])
    assert proc.returncode == 0, proc
    assert proc.stdout.strip() == "configuration ok"
    assert not (tmp_path / "s.sock").exists(), "--check-config must not create the socket"


def test_check_config_rejects_bad_config(daemon_bin, tmp_path, sandbox):
    conf = write_config(tmp_path / "bad.conf", sandbox, ["max_batch = lots"])
    proc = harness.run_oneshot([daemon_bin, "-t", "--config", conf])
    assert_config_error(proc, f"{conf}:4:", "max_batch")
    assert "configuration ok" not in proc.stdout


def test_options_override_file(daemon_bin, tmp_path, sandbox):
    """-o values are validated after the file: a good file does not hide a bad option."""
    conf = write_config(tmp_path / "o.conf", sandbox, ["pool_size = 2"])
    proc = harness.run_oneshot([daemon_bin, "--config", conf, "--check-config", "-o", "pool_size=0"])
    assert_config_error(proc, "pool_size")
