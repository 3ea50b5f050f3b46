"""subpool-bench --mode spawn, given a program after `--`, runs it once per round: its exit
status is the verdict, its stdout stays out of the report, and whatever is still running at
--timeout is killed so the run ends by itself."""

import json
import os
import subprocess

import pytest

import harness


def built(*parts):
    exe = harness.build_dir().joinpath(*parts)
    if not exe.is_file():
        pytest.skip(f"{exe} is not built")
    return exe


def bench(*args, timeout=60):
    exe = built("bench", "subpool-bench")
    r = subprocess.run([str(exe), *map(str, args)], capture_output=True, timeout=timeout)
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 1, f"the report is one line of JSON: {r.stdout!r}"
    return r, json.loads(lines[0])


def test_spawn_runs_the_program_and_counts_its_exit_status(devnode, daemon):
    d = daemon(devnode())
    cli = built("client", "subpool")
    # The CLI prints each result on stdout: none of it may reach the report.
    r, rep = bench("--target", f"unix:{d.socket}", "--mode", "spawn", "--requests", 5,
                   "--", cli, "--socket", d.socket, "call", "system_chain")
    assert r.returncode == 0, r.stderr
    assert (rep["requests"], rep["ok"], rep["errors"]) == (5, 5, 0)

    r, rep = bench("--target", f"unix:{d.socket}", "--mode", "spawn", "--requests", 3,
                   "--", "false")
    assert r.returncode == 1
    assert (rep["ok"], rep["error_kinds"]["rpc"]) == (0, 3)
    assert rep["first_error"].startswith("false failed")


@pytest.fixture
def pid_file(tmp_path):
    """Where the children write their PIDs; any still sleeping at the end are killed."""
    path = tmp_path / "pids"
    yield path
    for pid in (int(p) for p in path.read_text().split()) if path.exists() else ():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[:2] == [b"sleep", b"120"]:
                    os.kill(pid, 9)
        except (FileNotFoundError, ProcessLookupError):
            pass


def test_spawn_kills_what_outlives_the_timeout(pid_file):
    pids = pid_file
    r, rep = bench("--target", "unix:/nonexistent", "--mode", "spawn", "--requests", 6,
                   "--clients", 2, "--timeout", 3,
                   "--", "sh", "-c", f'echo $$ >> "{pids}"; exec sleep 120', timeout=30)
    assert r.returncode == 1
    # Killed, they count as timeouts, not as calls: no latency, no throughput.
    assert (rep["requests"], rep["error_kinds"]["timeout"]) == (0, 2)
    assert rep["first_error"] == "sh still running at --timeout: killed"
    # No process was started after the deadline, and the two that ran were reaped.
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 2
    for pid in started:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("argv", [
    ["--mode", "closed", "--", "true"],  # a program is for spawn only
    ["--mode", "spawn", "true"],         # and only after --
    ["--mode", "spawn", "true", "--", "false"],
])
def test_a_program_goes_after_the_separator_in_spawn_mode(argv):
    exe = built("bench", "subpool-bench")
    r = subprocess.run([str(exe), "--target", "unix:/nonexistent", *argv], capture_output=True,
                       timeout=30)
    assert r.returncode == 2
    assert b'unexpected argument "true"' in r.stderr
