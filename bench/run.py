#!/usr/bin/python3
"""Side-by-side benchmarks of subpoold, in one invocation.

Starts subpool-devnode instances, subpoold and nginx (a plain WebSocket
reverse proxy, bench/nginx.conf.in) from --build-dir, drives them with
subpool-bench, and prints one markdown table per scenario (medians over
--repeat runs) with the ratios the project targets, plus every raw report as
JSON (--json). Scenarios:

  S1  latency at one client: direct websocket vs nginx vs subpoold
  S2  throughput at 64 and 512 clients (and CPU per request of each proxy)
  S3  connection churn: connect + one call + close, in one process and as
      separate short-lived processes; also to a devnode that serves wss://,
      directly (a TLS handshake per client), through nginx (a TLS connection
      to the node per client) and through subpoold (pooled TLS links); and as
      processes of the shipped `subpool` CLI, and of `true` (process start alone)
  S4  fan-out, one call per subnet on a node 20 ms away: sequential direct,
      sequential via subpoold, concurrent via subpoold
  S5  idle clients held by subpoold: daemon memory per client
  S6  8 MiB replies: MB/s direct vs via subpoold (vs nginx)
  S7  upstream sockets each path holds while S2, S5 and S6 run

When subpoold has a TCP listener (`tcp_listen` in --help-config) its WebSocket
is measured too, as the path "subpoold ws".

Every target path has its own devnode, so a node's `connections` count is
exactly the sockets that path holds. Everything listens on 127.0.0.1 or in a
private temporary directory; every run is bounded; only processes started
here are stopped, by PID, in finally blocks. --smoke runs each scenario for
about a second with tiny counts, exits non-zero if anything errored, and
judges no timing. Needs Debian's nginx package (apt-get install nginx-light)
and openssl (the command) for the TLS leg; without them those legs are
skipped with a note.
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOB = 8 << 20

# The project's targets (README of bench/RESULTS.md).
TARGET_P50_ADDED_US = 30.0
TARGET_VS_DIRECT_64 = 0.9
TARGET_VS_NGINX_64 = 1.5
TARGET_CPU_US = 5.0
TARGET_CHURN_VS_TLS = 10.0
TARGET_IDLE_BYTES = 16384


class Failure(Exception):
    """A scenario could not run or reported errors."""


# --------------------------------------------------------------------------
# Processes


class Proc:
    """A child we started; stop() ends it by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, name, argv, logdir, stdout_pipe=False, env=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log = logdir / f"{name}.log"
        with open(self.log, "wb") as log:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else log, stderr=log, env=env)
        self.pid = self.popen.pid
        self.extra_pids = []  # e.g. nginx workers, stopped too if they outlive the master

    def alive(self):
        return self.popen.poll() is None

    def check(self):
        if not self.alive():
            raise Failure(f"{self.name} (pid {self.pid}) exited with {self.popen.returncode}; "
                          f"log: {self.tail()}")

    def tail(self, n=600):
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout=10):
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.popen.stdout:
            self.popen.stdout.close()
        for pid in self.extra_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.popen.returncode


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise Failure(f"timed out after {timeout}s waiting for {what}")


def unix_call(path, method, timeout=5):
    """One NDJSON call on a Unix socket; the decoded reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n") and len(data) < (1 << 20):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


class Stack:
    """Everything started for one run; close() stops all of it."""

    def __init__(self, build, tmp, nginx_workers):
        self.build = build
        self.tmp = tmp
        self.logdir = tmp / "logs"
        self.logdir.mkdir()
        self.procs = []
        self.nginx_workers = nginx_workers
        self.bench_bin = build / "bench" / "subpool-bench"
        self.devnode_bin = build / "tests" / "fakenode" / "subpool-devnode"
        self.subpoold_bin = build / "daemon" / "subpoold"
        self.cli_bin = build / "client" / "subpool"
        self.floor_bin = build / "bench" / "subpool-floor"
        for b in (self.bench_bin, self.devnode_bin, self.subpoold_bin, self.floor_bin,
                  self.cli_bin):
            if not os.access(b, os.X_OK):
                raise Failure(f"{b} is not built (ninja -C {build})")

    def close(self):
        for p in reversed(self.procs):
            p.stop()

    def devnode(self, name, *args):
        p = Proc(name, [self.devnode_bin, "--listen", "127.0.0.1:0", "--block-ms", "0", *args],
                 self.logdir, stdout_pipe=True)
        self.procs.append(p)
        line = p.popen.stdout.readline().decode(errors="replace")
        m = re.match(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            p.check()
            raise Failure(f"{name}: unexpected first line {line!r}")
        p.port = int(m.group(1))
        p.url = f"ws://127.0.0.1:{p.port}"
        return p

    def floor(self, name):
        """subpool-floor: one read and one write per request, no upstream (see its header)."""
        sock = self.tmp / f"{name}.sock"
        p = Proc(name, [self.floor_bin, sock], self.logdir, stdout_pipe=True)
        self.procs.append(p)
        line = p.popen.stdout.readline().decode(errors="replace")
        if not line.startswith("listening on "):
            p.check()
            raise Failure(f"{name}: unexpected first line {line!r}")
        p.target = f"unix:{sock}"
        return p

    def subpoold(self, name, node, pool_size=2, env=None, **keys):
        sock = self.tmp / f"{name}.sock"
        argv = [self.subpoold_bin, "--socket", sock, "--upstream", node.url,
                "--pool-size", pool_size, "--log-level", "warn"]
        # The scenarios compare the forwarding path with the alternatives, like for like:
        # identical concurrent reads (S1 and S2 ask system_chain) must each reach the node.
        keys.setdefault("coalesce", "false")
        for k, v in keys.items():
            argv += ["-o", f"{k}={v}"]
        p = Proc(name, argv, self.logdir, env=env)
        self.procs.append(p)
        p.socket = sock
        p.target = f"unix:{sock}"
        p.pool_size = pool_size

        def ready():
            p.check()
            try:
                st = unix_call(sock, "subpool_status")["result"]
            except (OSError, ValueError, KeyError):
                return False
            return st["ready"] == pool_size
        wait_for(ready, 20, f"{name} to connect its pool")
        return p

    def nginx(self, name, node, tls_node=None):
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK)
                                        else None)
        if not exe:
            return None
        prefix = self.tmp / name
        (prefix / "tmp").mkdir(parents=True)
        port = free_port()
        tls_port = free_port() if tls_node else None
        tls = ""
        if tls_node:
            tls = (f"    server {{\n        listen 127.0.0.1:{tls_port} backlog=4096;\n"
                   f"        location / {{\n"
                   f"            proxy_pass https://127.0.0.1:{tls_node.port};\n"
                   f"        }}\n    }}")
        root = os.geteuid() == 0
        if root:
            # Workers drop to nobody: they must be able to reach their temp paths.
            for d in (self.tmp, prefix, prefix / "tmp"):
                os.chmod(d, 0o755)
        conf = (Path(__file__).with_name("nginx.conf.in").read_text()
                .replace("@USER_LINE@", "user nobody nogroup;" if root else "")
                .replace("@WORKERS@", str(self.nginx_workers))
                .replace("@PREFIX@", str(prefix))
                .replace("@UPSTREAM@", f"127.0.0.1:{node.port}")
                .replace("@LISTEN@", f"127.0.0.1:{port}")
                .replace("@TLS_SERVER@", tls))
        if not root:
            conf = conf.replace("worker_rlimit_nofile 65536;", "")
        (prefix / "nginx.conf").write_text(conf)
        p = Proc(name, [exe, "-p", prefix, "-e", prefix / "error.log", "-c", prefix / "nginx.conf"],
                 self.logdir)
        self.procs.append(p)

        def listening():
            p.check()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(listening, 20, f"{name} to listen")
        children = Path(f"/proc/{p.pid}/task/{p.pid}/children")
        workers = wait_for(lambda: children.read_text().split(), 10, "nginx workers")
        p.extra_pids = [int(w) for w in workers]
        p.worker = p.extra_pids[0]
        p.url = f"ws://127.0.0.1:{port}"
        p.tls_url = f"ws://127.0.0.1:{tls_port}" if tls_node else None
        return p


# --------------------------------------------------------------------------
# Running subpool-bench


class Runner:
    def __init__(self, stack, args):
        self.stack = stack
        self.args = args
        self.failures = []
        self.raw = []

    def bench(self, label, target, *opts, daemon_pid=None, node_pid=None, during=None,
              allow_fail=False, program=None):
        """Run subpool-bench once; `during` is called while it runs. Returns its report.
        `program`: the argv that --mode spawn runs instead of its own `once`."""
        argv = [self.stack.bench_bin, "--target", target, *[str(o) for o in opts]]
        if daemon_pid:
            argv += ["--daemon-pid", daemon_pid]
        if node_pid:
            argv += ["--node-pid", node_pid]
        if program:
            argv += ["--", *program]
        argv = [str(a) for a in argv]
        bound = 180 if not self.args.smoke else 50
        if self.args.verbose:
            print("  $", " ".join(argv), file=sys.stderr)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        side = None
        try:
            if during:
                side = during(proc)
            out, err = proc.communicate(timeout=bound)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise Failure(f"{label}: subpool-bench did not finish within {bound}s")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            rep = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise Failure(f"{label}: no report (exit {proc.returncode}): "
                          f"{err.decode(errors='replace')[-400:]}")
        rep["label"] = label
        if side is not None:
            rep["during"] = side
        self.raw.append(rep)
        if (proc.returncode != 0 or rep["errors"]) and not allow_fail:
            msg = (f"{label}: exit {proc.returncode}, {rep['errors']} errors "
                   f"({rep.get('first_error', '')})")
            self.failures.append(msg)
            print("  FAILED " + msg, file=sys.stderr)
        return rep

    def node_connections(self, node):
        """Websockets the devnode holds now, not counting the one asking."""
        out = subprocess.run(
            [str(self.stack.bench_bin), "--target", node.url + "/control", "--mode", "once",
             "--method", "devnode_stats", "--print", "--quiet"],
            capture_output=True, timeout=20)
        try:
            return json.loads(out.stdout.decode().splitlines()[0])["connections"] - 1
        except (IndexError, ValueError, KeyError):
            raise Failure(f"devnode_stats failed: {out.stderr.decode(errors='replace')[-300:]}")

    def sample_during(self, node, after):
        """A `during` hook: count the node's sockets `after` seconds into the run."""
        def hook(proc):
            deadline = time.monotonic() + after
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            if proc.poll() is not None:
                return None
            return self.node_connections(node)
        return hook


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def pick(rep, path):
    cur = rep
    for key in path.split("."):
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return cur


def median_report(reps, paths):
    return {p: med([pick(r, p) for r in reps]) for p in paths}


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


FLOOR = "floor (no upstream)"
TLS_DIRECT = "direct, node over TLS"
TLS_SUB = "subpoold, node over TLS"
TLS_SUB_CLI = "subpoold, node over TLS, `subpool` CLI"
PROC_START = "process start alone (`true`)"


def ratio(a, b):
    return a / b if a is not None and b else None


def verdict(ok, smoke):
    if smoke or ok is None:
        return ""
    return " — **met**" if ok else " — **missed**"


# --------------------------------------------------------------------------
# Scenarios


def make_cert(tmp):
    """A throwaway ECDSA P-256 certificate for 127.0.0.1, or None without openssl."""
    exe = shutil.which("openssl")
    if not exe:
        return None
    cert, key = tmp / "tls.crt", tmp / "tls.key"
    r = subprocess.run([exe, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], capture_output=True, timeout=30)
    if r.returncode != 0:
        return None
    return cert, key


class Bench:
    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.out = []  # markdown lines
        self.notes = []

    def p(self, line=""):
        self.out.append(line)
        print(line, flush=True)

    def setup(self, stack):
        s = stack
        self.node_direct = s.devnode("devnode-direct")
        self.node_nginx = s.devnode("devnode-nginx")
        self.node_sub = s.devnode("devnode-subpoold")
        self.node_lat = s.devnode("devnode-20ms", "--latency-ms", 20)
        self.node_idle = s.devnode("devnode-idle")
        self.sub = s.subpoold("subpoold", self.node_sub)
        self.sub_lat = s.subpoold("subpoold-20ms", self.node_lat)
        self.floor = s.floor("floor")
        self.idle_clients = self.args.idle_clients if not self.smoke else 200
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if self.idle_clients + 200 > hard:
            self.notes.append(f"S5: open file hard limit {hard}; idle clients cut from "
                              f"{self.idle_clients} to {hard - 200}")
            self.idle_clients = hard - 200
        # S3's node behind TLS, and subpoold pooling its links to it.
        self.cert = make_cert(s.tmp)
        self.node_tls = self.sub_tls = None
        if self.cert:
            self.node_tls = s.devnode("devnode-tls", "--tls-cert", self.cert[0],
                                      "--tls-key", self.cert[1])
            self.node_tls.url = f"wss://127.0.0.1:{self.node_tls.port}"
            self.sub_tls = s.subpoold("subpoold-tls", self.node_tls, tls_ca_file=self.cert[0])
        else:
            self.notes.append("openssl not found: the TLS (wss) churn legs are skipped")
        self.nginx = s.nginx("nginx", self.node_nginx, self.node_tls)
        if not self.nginx:
            self.notes.append("nginx not installed (apt-get install nginx-light): nginx legs "
                              "skipped")
        # subpoold's own WebSocket/TCP listener, when this build has one.
        self.sub_ws = None
        key = self.args.subpoold_ws_key
        if key == "auto":
            help_config = subprocess.run([str(s.subpoold_bin), "--help-config"],
                                         capture_output=True, timeout=10).stdout.decode()
            key = "tcp_listen" if re.search(r"^\s*tcp_listen\b", help_config, re.M) else None
            if not key:
                self.notes.append("this subpoold has no tcp_listen: the 'subpoold ws' path is "
                                  "skipped")
        self.args.subpoold_ws_key = None if key == "none" else key
        if self.args.subpoold_ws_key:
            self.node_subws = s.devnode("devnode-subpoold-ws")
            port = free_port()
            self.sub_ws = s.subpoold("subpoold-ws", self.node_subws,
                                     **{self.args.subpoold_ws_key: f"127.0.0.1:{port}"})
            self.sub_ws.url = f"ws://127.0.0.1:{port}"

    # The three paths to the same kind of node.
    # (name, target, proxy PID or None, its devnode)
    def paths(self):
        p = [("direct", self.node_direct.url, None, self.node_direct)]
        if self.nginx:
            p.append(("nginx", self.nginx.url, self.nginx.worker, self.node_nginx))
        p.append(("subpoold", self.sub.target, self.sub.pid, self.node_sub))
        if self.sub_ws:
            p.append(("subpoold ws", self.sub_ws.url, self.sub_ws.pid, self.node_subws))
        return p

    # The yardstick: no node behind it, so no S7 count and no node CPU.
    def floor_path(self):
        return [(FLOOR, self.floor.target, self.floor.pid, None)]

    def repeat(self):
        return 1 if self.smoke else self.args.repeat

    def run_paths(self, r, label, opts, paths=None, s7_after=None, extra_paths=()):
        """Every path, --repeat times (interleaved so drift hits all alike); medians."""
        results = {}
        for i in range(self.repeat()):
            for name, target, pid, node in list(paths or self.paths()) + list(extra_paths):
                during = (r.sample_during(node, s7_after)
                          if s7_after is not None and node else None)
                rep = r.bench(f"{label} {name} #{i + 1}", target, *opts, daemon_pid=pid,
                              node_pid=node.pid if node else None, during=during)
                results.setdefault(name, []).append(rep)
        return results

    # S1 -------------------------------------------------------------------
    def s1(self, r):
        d, w = (0.5, 0.2) if self.smoke else (self.args.duration, 1.0)
        res = self.run_paths(r, "S1", ["--clients", 1, "--duration", d, "--warmup", w],
                             extra_paths=self.floor_path())
        keys = ["latency_us.p50", "latency_us.p90", "latency_us.p99", "latency_us.p999",
                "throughput_rps"]
        m = {k: median_report(v, keys) for k, v in res.items()}
        self.p("## S1 — latency at one client (closed loop, depth 1, `system_chain`)")
        self.p()
        self.p("| path | p50 µs | p90 µs | p99 µs | p99.9 µs | req/s |")
        self.p("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, v in m.items():
            self.p(f"| {name} | {fmt(v['latency_us.p50'])} | {fmt(v['latency_us.p90'])} | "
                   f"{fmt(v['latency_us.p99'])} | {fmt(v['latency_us.p999'])} | "
                   f"{fmt(v['throughput_rps'], 0)} |")
        self.p()
        added = (m["subpoold"]["latency_us.p50"] - m["direct"]["latency_us.p50"])
        self.p(f"subpoold adds **{added:.1f} µs** to p50 over direct "
               f"(target ≤ {TARGET_P50_ADDED_US:.0f} µs)"
               f"{verdict(added <= TARGET_P50_ADDED_US, self.smoke)}.")
        if "nginx" in m:
            self.p(f"nginx adds {m['nginx']['latency_us.p50'] - m['direct']['latency_us.p50']:.1f}"
                   " µs.")
        if FLOOR in m:
            hop = m[FLOOR]["latency_us.p50"]
            self.p(f"A whole round trip through `{FLOOR}`, a process that answers at once, takes "
                   f"{hop:.1f} µs at p50: the hop that any local proxy adds before it does any "
                   "work.")
            self.summary["S1_floor_p50_us"] = hop
        self.p()
        self.summary["S1_p50_added_us"] = added
        # The same paths under a steady offered load, timed from when each request was due.
        rate, clients = (1000, 4) if self.smoke else (self.args.open_rate, 8)
        res = self.run_paths(r, "S1 open", ["--mode", "open", "--rate", rate, "--clients",
                                            clients, "--duration", d, "--warmup", w])
        m = {k: median_report(v, keys + ["daemon.cpu_us_per_request"]) for k, v in res.items()}
        self.p(f"Open loop, {rate:,} req/s over {clients} clients (latency from when each request "
               "was due, so queueing is not hidden):")
        self.p()
        self.p("| path | p50 µs | p90 µs | p99 µs | p99.9 µs | proxy CPU µs/req |")
        self.p("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, v in m.items():
            self.p(f"| {name} | {fmt(v['latency_us.p50'])} | {fmt(v['latency_us.p90'])} | "
                   f"{fmt(v['latency_us.p99'])} | {fmt(v['latency_us.p999'])} | "
                   f"{fmt(v['daemon.cpu_us_per_request'], 2)} |")
        self.p()

    # S2 -------------------------------------------------------------------
    def s2(self, r):
        d, w = (0.5, 0.2) if self.smoke else (self.args.duration, 1.0)
        counts = (8, 32) if self.smoke else (64, 512)
        self.p("## S2 — throughput (closed loop, depth 1 per client, `system_chain`)")
        self.p()
        self.p("| clients | path | req/s | p50 µs | p99 µs | proxy CPU µs/req | node CPU µs/req "
               "| bench CPU s |")
        self.p("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        keys = ["throughput_rps", "latency_us.p50", "latency_us.p99",
                "daemon.cpu_us_per_request", "node.cpu_us_per_request", "bench_cpu_s", "during"]
        for k in counts:
            res = self.run_paths(r, f"S2 {k}", ["--clients", k, "--duration", d, "--warmup", w],
                                 s7_after=w + d / 2, extra_paths=self.floor_path())
            m = {n: median_report(v, keys) for n, v in res.items()}
            for name, v in m.items():
                self.p(f"| {k} | {name} | {fmt(v['throughput_rps'], 0)} | "
                       f"{fmt(v['latency_us.p50'])} | {fmt(v['latency_us.p99'])} | "
                       f"{fmt(v['daemon.cpu_us_per_request'], 2)} | "
                       f"{fmt(v['node.cpu_us_per_request'], 2)} | {fmt(v['bench_cpu_s'], 2)} |")
                if name != FLOOR:
                    self.s7.append((f"S2, {k} clients", name, v["during"]))
            vs_direct = ratio(m["subpoold"]["throughput_rps"], m["direct"]["throughput_rps"])
            vs_nginx = ratio(m["subpoold"]["throughput_rps"], m.get("nginx", {}).get(
                "throughput_rps"))
            self.summary[f"S2_{k}"] = {"vs_direct": vs_direct, "vs_nginx": vs_nginx,
                                       "cpu_us": m["subpoold"]["daemon.cpu_us_per_request"],
                                       "floor_cpu_us": m[FLOOR]["daemon.cpu_us_per_request"]}
        self.p()
        for k in counts:
            s = self.summary[f"S2_{k}"]
            line = f"- {k} clients: subpoold/direct **{fmt(s['vs_direct'], 2)}x**"
            if k == counts[0]:
                line += (f" (target ≥ {TARGET_VS_DIRECT_64}x)"
                         f"{verdict(s['vs_direct'] >= TARGET_VS_DIRECT_64, self.smoke)}")
            if s["vs_nginx"] is not None:
                line += f"; subpoold/nginx **{fmt(s['vs_nginx'], 2)}x**"
                if k == counts[0]:
                    line += (f" (target ≥ {TARGET_VS_NGINX_64}x)"
                             f"{verdict(s['vs_nginx'] >= TARGET_VS_NGINX_64, self.smoke)}")
            cpu = s["cpu_us"]
            line += f"; daemon CPU **{fmt(cpu, 2)} µs/request**"
            if k == counts[0]:
                line += (f" (target ≤ {TARGET_CPU_US:.0f})"
                         f"{verdict(cpu is not None and cpu <= TARGET_CPU_US, self.smoke)}")
            floor = s["floor_cpu_us"]
            line += (f"; the floor costs {fmt(floor, 2)} µs/request, subpoold "
                     f"**{fmt(ratio(cpu, floor), 2)}x** that")
            self.p(line)
        self.p()
        self.p(f"`{FLOOR}` is subpool-floor (bench/subpool-floor.c): a bare epoll loop that "
               "answers each request from memory with one read and one write on the client "
               "socket and has no upstream. Its CPU per request is what the kernel charges any "
               "local proxy on this machine for the client side alone.")
        self.p()

    # S3 -------------------------------------------------------------------
    def s3(self, r):
        # In one process every path gets the same window: a fixed count of rounds would be
        # over in a tenth of a second on the fast paths, below what /proc's CPU ticks resolve.
        secs, nproc = (0.3, 10) if self.smoke else (self.args.churn_seconds, self.args.churn_procs)
        paths = self.paths()
        if self.node_tls:
            paths.append((TLS_DIRECT, self.node_tls.url, None, self.node_tls))
            if self.nginx:
                paths.append(("nginx, node over TLS", self.nginx.tls_url, self.nginx.worker,
                              self.node_tls))
            paths.append((TLS_SUB, self.sub_tls.target, self.sub_tls.pid, self.node_tls))
        paths += self.floor_path()
        # Separate processes only: the shipped CLI (what a shell script runs; it loads no TLS
        # library), and a process that does nothing, which bounds every path from below.
        spawn_only = [(PROC_START, self.node_direct.url, None, None, ["true"])]
        if self.node_tls:
            spawn_only.insert(0, (TLS_SUB_CLI, self.sub_tls.target, self.sub_tls.pid,
                                  self.node_tls,
                                  [self.stack.cli_bin, "--socket", self.sub_tls.socket,
                                   "--timeout", 30, "call", "system_chain"]))
        self.p(f"## S3 — connection churn (connect + 1 call + close, one after another)")
        self.p()
        self.p("| path | in-process calls/s | p50 ms | p99 ms | separate processes calls/s "
               "| p50 ms | p99 ms |")
        self.p("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        keys = ["throughput_rps", "latency_us.p50", "latency_us.p99"]
        res_in, res_proc = {}, {}
        for i in range(self.repeat()):
            for name, target, pid, node in paths:
                extra = ["--cafile", self.cert[0]] if target.startswith("wss:") else []
                node_pid = node.pid if node else None
                res_in.setdefault(name, []).append(r.bench(
                    f"S3 churn {name} #{i + 1}", target, "--mode", "churn", "--clients", 1,
                    "--duration", secs, *extra, daemon_pid=pid, node_pid=node_pid))
                res_proc.setdefault(name, []).append(r.bench(
                    f"S3 spawn {name} #{i + 1}", target, "--mode", "spawn", "--clients", 1,
                    "--requests", nproc, *extra, daemon_pid=pid, node_pid=node_pid))
            for name, target, pid, node, program in spawn_only:
                res_proc.setdefault(name, []).append(r.bench(
                    f"S3 spawn {name} #{i + 1}", target, "--mode", "spawn", "--clients", 1,
                    "--requests", nproc, daemon_pid=pid, node_pid=node.pid if node else None,
                    program=program))
        mi = {k: median_report(v, keys) for k, v in res_in.items()}
        mp = {k: median_report(v, keys) for k, v in res_proc.items()}
        none = dict.fromkeys(keys)

        def ms(v):
            return v / 1e3 if v is not None else None
        for name in mp:
            a, b = mi.get(name, none), mp[name]
            self.p(f"| {name} | {fmt(a['throughput_rps'], 0)} | "
                   f"{fmt(ms(a['latency_us.p50']), 3)} | {fmt(ms(a['latency_us.p99']), 3)} | "
                   f"{fmt(b['throughput_rps'], 0)} | {fmt(ms(b['latency_us.p50']), 2)} | "
                   f"{fmt(ms(b['latency_us.p99']), 2)} |")
        self.p()
        sub = mi["subpoold"]["throughput_rps"]
        self.p(f"- subpoold vs direct plain ws: **{fmt(ratio(sub, mi['direct']['throughput_rps']), 1)}x**"
               f" in-process, **{fmt(ratio(mp['subpoold']['throughput_rps'], mp['direct']['throughput_rps']), 2)}x**"
               " as separate processes")
        if TLS_DIRECT in mi:
            x = ratio(mi[TLS_SUB]["throughput_rps"], mi[TLS_DIRECT]["throughput_rps"])
            xp = ratio(mp[TLS_SUB]["throughput_rps"], mp[TLS_DIRECT]["throughput_rps"])
            self.p(f"- node over TLS (the devnode's own wss://; TLS 1.3, ECDSA P-256): subpoold "
                   f"vs direct, where every client pays a full handshake: **{fmt(x, 1)}x** "
                   f"in-process (target ≥ {TARGET_CHURN_VS_TLS:.0f}x)"
                   f"{verdict(x is not None and x >= TARGET_CHURN_VS_TLS, self.smoke)}; "
                   f"**{fmt(xp, 2)}x** as separate processes")
            self.summary["S3_vs_tls"] = x
            self.summary["S3_vs_tls_procs"] = xp
            plain = ratio(mi["subpoold"]["throughput_rps"], mi[TLS_DIRECT]["throughput_rps"])
            self.p(f"- subpoold with a plain ws:// link to its node, against the same direct "
                   f"wss:// clients: **{fmt(plain, 1)}x** in-process")
            xc = ratio(mp[TLS_SUB_CLI]["throughput_rps"], mp[TLS_DIRECT]["throughput_rps"])
            bound = ratio(mp[PROC_START]["throughput_rps"], mp[TLS_DIRECT]["throughput_rps"])
            self.p(f"- separate processes, each a call through the `subpool` CLI (a process that "
                   f"loads no TLS library), against direct wss:// processes: **{fmt(xc, 2)}x**; "
                   f"no path can pass **{fmt(bound, 2)}x** here, the rate at which processes that "
                   f"do nothing (`true`) start and end")
            self.summary["S3_vs_tls_cli_procs"] = xc
            self.summary["S3_procs_bound"] = bound
        self.p(f"- `{FLOOR}` bounds every local proxy: in a separate process it shows what "
               "starting the process and connecting cost before any call is made")
        self.p()

    # S4 -------------------------------------------------------------------
    def s4(self, r):
        n = 16 if self.smoke else 128
        params = '["SubnetInfoRuntimeApi_get_subnet_info","0x{u16le}"]'
        base = ["--method", "state_call", "--params", params, "--requests", n]
        runs = [
            ("sequential direct", self.node_lat.url, ["--clients", 1, "--depth", 1], None),
            ("sequential via subpoold", self.sub_lat.target, ["--clients", 1, "--depth", 1],
             self.sub_lat.pid),
            ("concurrent via subpoold", self.sub_lat.target, ["--clients", 1, "--depth", n],
             self.sub_lat.pid),
            ("concurrent direct (one websocket, pipelined)", self.node_lat.url,
             ["--clients", 1, "--depth", n], None),
        ]
        res = {}
        for i in range(self.repeat()):
            for name, target, opts, pid in runs:
                res.setdefault(name, []).append(r.bench(
                    f"S4 {name} #{i + 1}", target, *base, *opts, daemon_pid=pid,
                    node_pid=self.node_lat.pid))
        m = {k: median_report(v, ["elapsed_s", "latency_us.p50"]) for k, v in res.items()}
        self.p(f"## S4 — fan-out: one `state_call` per subnet, {n} subnets, node at 20 ms")
        self.p()
        self.p("| how | wall time ms | per call p50 ms |")
        self.p("| --- | ---: | ---: |")
        for name, v in m.items():
            self.p(f"| {name} | {fmt(v['elapsed_s'] * 1e3, 1)} | "
                   f"{fmt(v['latency_us.p50'] / 1e3, 2)} |")
        self.p()
        self.p(f"Concurrent via subpoold is **{fmt(ratio(m['sequential direct']['elapsed_s'], m['concurrent via subpoold']['elapsed_s']), 0)}x** "
               "faster than the sequential loop a script writes against one websocket.")
        self.p()

    # S5 -------------------------------------------------------------------
    def s5(self, r):
        n = self.idle_clients
        hold = 0.5 if self.smoke else 2.0
        reps = []
        for i in range(self.repeat()):
            # A fresh daemon every time: right after a previous run its 10,000 departed
            # clients are still being torn down, and a baseline read then means nothing.
            self.sub_idle = self.stack.subpoold(f"subpoold-idle-{i + 1}", self.node_idle,
                                                max_clients=n + 100)
            try:
                rep = r.bench(f"S5 idle #{i + 1}", self.sub_idle.target, "--mode", "idle",
                              "--clients", n, "--method", "subpool_ping", "--hold", hold,
                              daemon_pid=self.sub_idle.pid, during=self.idle_probe(n))
            finally:
                self.sub_idle.stop()
                self.stack.procs.remove(self.sub_idle)
            reps.append(rep)
            self.s7.append((f"S5, {n} idle clients", "subpoold", rep.get("during")))
        m = median_report(reps, ["idle.rss_start_kib", "idle.rss_end_kib",
                                 "idle.rss_per_client_bytes", "settle_s"])
        self.p(f"## S5 — {n:,} idle clients on subpoold (each made one `subpool_ping`)")
        self.p()
        self.p("| daemon RSS before KiB | RSS with all connected KiB | bytes per idle client | "
               "time to connect all s |")
        self.p("| ---: | ---: | ---: | ---: |")
        for rep in reps:
            self.p(f"| {fmt(pick(rep, 'idle.rss_start_kib'), 0)} | "
                   f"{fmt(pick(rep, 'idle.rss_end_kib'), 0)} | "
                   f"{fmt(pick(rep, 'idle.rss_per_client_bytes'), 0)} | "
                   f"{fmt(pick(rep, 'settle_s'), 2)} |")
        self.p()
        per = m["idle.rss_per_client_bytes"]
        self.p(f"Daemon memory per idle client (median, a fresh daemon each run): "
               f"**{fmt(per, 0)} bytes** (target ≤ {TARGET_IDLE_BYTES // 1024} KiB)"
               f"{verdict(per is not None and per <= TARGET_IDLE_BYTES, self.smoke)}.")
        self.p()
        self.summary["S5_bytes"] = per

    def idle_probe(self, n):
        """While the idle run holds its clients: wait until the daemon counts them all."""
        def hook(proc):
            def all_in():
                if proc.poll() is not None:
                    return "gone"
                try:
                    st = unix_call(self.sub_idle.socket, "subpool_status", timeout=10)["result"]
                except (OSError, ValueError, KeyError):
                    return False
                return st["clients"] >= n
            if wait_for(all_in, 60, "idle clients") == "gone":
                return None
            return self.runner.node_connections(self.node_idle)
        return hook

    # S6 -------------------------------------------------------------------
    def s6(self, r):
        d = 1.0 if self.smoke else self.args.duration
        opts = ["--method", "devnode_blob", "--params", f"[{BLOB}]", "--clients", 2,
                "--duration", d, "--warmup", 0 if self.smoke else 0.5]
        res = self.run_paths(r, "S6", opts, s7_after=d / 2)
        keys = ["mb_per_s", "latency_us.p50", "daemon.cpu_us_per_request", "during"]
        m = {k: median_report(v, keys) for k, v in res.items()}
        self.p("## S6 — 8 MiB replies (`devnode_blob`, 2 clients, depth 1)")
        self.p()
        self.p("| path | MB/s | p50 ms per reply | proxy CPU ms/reply |")
        self.p("| --- | ---: | ---: | ---: |")
        for name, v in m.items():
            cpu = v["daemon.cpu_us_per_request"]
            self.p(f"| {name} | {fmt(v['mb_per_s'], 0)} | {fmt(v['latency_us.p50'] / 1e3, 2)} | "
                   f"{fmt(cpu / 1e3 if cpu is not None else None, 2)} |")
            self.s7.append(("S6, 2 clients", name, v["during"]))
        self.p()
        self.p(f"subpoold/direct: **{fmt(ratio(m['subpoold']['mb_per_s'], m['direct']['mb_per_s']), 2)}x**.")
        self.p()

    # S7 -------------------------------------------------------------------
    def s7_table(self):
        self.p("## S7 — upstream websockets held (devnode `connections`, sampled mid-run)")
        self.p()
        self.p("| scenario | path | node sockets |")
        self.p("| --- | --- | ---: |")
        seen = set()
        ok = True
        for scen, path, v in self.s7:
            if (scen, path) in seen:
                continue
            seen.add((scen, path))
            self.p(f"| {scen} | {path} | {fmt(v, 0) if v is not None else '-'} |")
            if path.startswith("subpoold") and v is not None and v != self.sub.pool_size:
                ok = False
        self.p()
        self.p(f"subpoold holds pool_size ({self.sub.pool_size}) whatever the client count"
               f"{verdict(ok, self.smoke)}.")
        self.p()

    def run(self, stack):
        self.stack = stack
        self.runner = r = Runner(stack, self.args)
        self.summary = {}
        self.s7 = []
        self.setup(stack)
        scenarios = {"S1": self.s1, "S2": self.s2, "S3": self.s3, "S4": self.s4, "S5": self.s5,
                     "S6": self.s6}
        wanted = self.args.only.split(",") if self.args.only else list(scenarios)
        for name in wanted:
            if name not in scenarios:
                raise Failure(f"--only: no scenario {name}")
            t0 = time.monotonic()
            try:
                scenarios[name](r)
            except Failure as e:
                r.failures.append(f"{name}: {e}")
                print(f"  FAILED {name}: {e}", file=sys.stderr)
            if self.args.verbose:
                print(f"  ({name} took {time.monotonic() - t0:.1f}s)", file=sys.stderr)
            for p in stack.procs:
                if not p.alive():
                    r.failures.append(f"{p.name} died during {name}: {p.tail()}")
                    print(f"  FAILED: {p.name} died during {name}", file=sys.stderr)
                    return r
        if self.s7:
            self.s7_table()
        for n in self.notes:
            self.p(f"Note: {n}")
        return r


# --------------------------------------------------------------------------
# The machine


def environment(build):
    def first_line(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=10)
            text = (r.stdout or r.stderr).decode(errors="replace").strip()
            return text.splitlines()[0] if text else "?"
        except (OSError, subprocess.TimeoutExpired):
            return "not found"

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kib / 1048576:.1f} GiB"
    except (OSError, AttributeError):
        pass

    def pkg(name):
        return first_line(["dpkg-query", "-W", "-f=${Version}", name])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "os": first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "subpoold": first_line([str(build / "daemon" / "subpoold"), "--version"]),
        "nginx": first_line([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
        "cc": first_line(["cc", "--version"]),
        "libevent": pkg("libevent-dev"),
        "wslay": pkg("libwslay-dev"),
        "openssl": first_line(["openssl", "version"]),
        "python": platform.python_version(),
        "commit": first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        # Other work on the machine skews every figure: say how busy it was.
        "loadavg_at_start": loadavg(),
    }


def loadavg():
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", type=Path, default=REPO / "build",
                    help="where subpoold, subpool-devnode and subpool-bench are built")
    ap.add_argument("--smoke", action="store_true",
                    help="every scenario for about a second; fail only on errors")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; medians")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per throughput run")
    ap.add_argument("--churn-seconds", type=float, default=2.0,
                    help="S3 in-process: seconds of connect + call + close per path")
    ap.add_argument("--churn-procs", type=int, default=1000,
                    help="S3 separate processes per path")
    ap.add_argument("--idle-clients", type=int, default=10000, help="S5 clients")
    ap.add_argument("--open-rate", type=int, default=5000, help="S1 open-loop rate, req/s")
    # Hooks for what does not exist yet; both stay off until given.
    ap.add_argument("--subpoold-ws-key", metavar="KEY", default="auto",
                    help="config key of subpoold's TCP listener (default: tcp_listen when "
                         "--help-config lists it; 'none' to skip): a subpoold started with "
                         "-o KEY=127.0.0.1:PORT is benchmarked over ws:// as the path "
                         "'subpoold ws' in S1, S2, S3 and S6")
    ap.add_argument("--nginx-workers", default="1", help="nginx worker_processes (1 or auto)")
    ap.add_argument("--only", help="comma-separated scenarios, e.g. S1,S2")
    ap.add_argument("--json", type=Path, help="write every raw report and the summary here")
    ap.add_argument("--verbose", "-v", action="store_true", help="show each command")
    args = ap.parse_args()
    if args.repeat < 1 or args.duration <= 0:
        ap.error("--repeat and --duration must be positive")

    # Thousands of clients are thousands of descriptors, for us and our children.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    # SIGTERM (or SIGHUP) ends the run through the finally below: every child is stopped.
    def terminated(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGHUP, terminated)

    build = args.build_dir.resolve()
    env = environment(build)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="subpool-bench-"))
    stack = bench = runner = None
    try:
        stack = Stack(build, tmp, args.nginx_workers)
        bench = Bench(args)
        print("# subpool benchmarks" + (" (smoke: no timing judged)" if args.smoke else ""))
        print()
        for k, v in env.items():
            print(f"- {k}: {v}")
        print(f"- repeat: {1 if args.smoke else args.repeat} (medians), duration "
              f"{args.duration}s, nginx worker_processes {args.nginx_workers}")
        print()
        runner = bench.run(stack)
    except Failure as e:
        print(f"run.py: {e}", file=sys.stderr)
        return 1
    finally:
        if stack:
            stack.close()
        keep = runner is not None and runner.failures
        if keep:
            print(f"run.py: logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "summary": bench.summary,
                                         "reports": runner.raw}, indent=1))
    print(f"(took {time.monotonic() - t0:.0f}s; load average at the end {loadavg()})")
    if runner.failures:
        print(f"run.py: {len(runner.failures)} failures:", file=sys.stderr)
        for f in runner.failures:
            print("  " + f, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
