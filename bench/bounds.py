#!/usr/bin/python3
"""What a hostile local client can make subpoold hold or do, measured in one run.

Each attack of the bounds work (numbered as there) runs against its own subpoold
(max_client_memory 256M) and devnode, while a bystander that connected first makes
sequential system_chain calls on its own connection. Reported per attack: the daemon's
peak RSS against max_client_memory + 64 MiB, the bystander's failed calls and its p50.
Then the queue: draining 100k queued requests against 10k (ratio), and how many of
another client's 50k queued requests a single call waits for. Then memory after a burst:
subpoold as built (glibc, trimmed after bursts) against the same daemon with Debian's
jemalloc preloaded, when installed.

Everything listens on 127.0.0.1 or in a private temporary directory; every loop is
bounded in count and time; only processes started here are stopped, by PID.
--smoke runs each part briefly with small counts and judges nothing but errors.
"""

import argparse
import base64
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the stack: devnode, subpoold, processes)

MiB = 1 << 20
BUDGET = 256 * MiB
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def rss_kib(pid, field="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def connect(path, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    return s


def line(method, params=None, rid=1):
    msg = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        msg["params"] = params
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


class Lines:
    """NDJSON replies from a socket."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def next(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("closed")
            self.buf += chunk
        one, self.buf = self.buf.split(b"\n", 1)
        return json.loads(one)

    def reply(self, rid):
        while True:
            msg = self.next()
            if msg.get("id") == rid:
                return msg


class Bystander(threading.Thread):
    """Sequential system_chain calls on one connection, made before the attack starts."""

    def __init__(self, path, seconds, max_calls=200000):
        super().__init__(daemon=True)
        self.sock = connect(path)
        self.lines = Lines(self.sock)
        self.seconds, self.max_calls = seconds, max_calls
        self.lat, self.failed = [], 0

    def run(self):
        end = time.monotonic() + self.seconds
        rid = 0
        while time.monotonic() < end and rid < self.max_calls:
            rid += 1
            t = time.perf_counter()
            try:
                self.sock.sendall(line("system_chain", None, rid))
                ok = "result" in self.lines.reply(rid)
            except (OSError, EOFError, ValueError):
                ok = False
            self.lat.append(time.perf_counter() - t)
            if not ok:
                self.failed += 1
                time.sleep(0.05)
        self.sock.close()


def send_until_stalled(sock, data, stall=2.0, chunk=65536):
    """Send data until it is all sent or the daemon took nothing for `stall` s."""
    sock.settimeout(stall)
    view, sent = memoryview(data), 0
    try:
        while sent < len(view):
            sent += sock.send(view[sent:sent + chunk])
    except (socket.timeout, OSError):
        pass
    return sent


def ws_open(path):
    s = connect(path)
    key = base64.b64encode(os.urandom(16))
    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    return s


def ws_frame(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else
                                     bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# --------------------------------------------------------------------------- attacks


def attack_http_metrics(d, scale):
    s = connect(d.socket)
    send_until_stalled(s, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n" * int(200000 * scale))
    return [s]


def attack_labels(d, scale):
    s = connect(d.socket)
    for i in range(int(256 * scale) or 1):
        s.sendall(line("x" * MiB + str(i), None, i))
        Lines(s).next()
    return [s]


def attack_content_length(d, scale):
    s = connect(d.socket)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999999\r\n\r\n")
    send_until_stalled(s, b"x" * int(500 * MiB * scale))
    return [s]


def attack_slow_post(d, scale):
    s = connect(d.socket)
    body = line("devnode_sleep", [3000]).strip()
    s.sendall(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s"
              % (len(body), body))
    send_until_stalled(s, b"x" * int(500 * MiB * scale))
    return [s]


def attack_ping_flood(d, scale):
    s = ws_open(d.socket)
    ping = ws_frame(0x9, b"p" * 125)
    send_until_stalled(s, ping * int(1000 * MiB * scale // len(ping)))
    return [s]


def attack_big_ids(d, scale):
    s = connect(d.socket)
    big = b'"' + b"i" * (8 * MiB) + b'"'
    one = b'{"jsonrpc":"2.0","id":' + big + b',"method":"devnode_sleep","params":[3000]}\n'
    for _ in range(int(100 * scale) or 1):
        if send_until_stalled(s, one) < len(one):
            break
    return [s]


def attack_storage_keys(d, scale):
    s = connect(d.socket)
    keys = ["0x%016x01" % i for i in range(int(50000 * scale))]
    s.sendall(line("state_subscribeStorage", [keys], 1))
    return [s]


def attack_oversize(d, scale):
    s = connect(d.socket)
    for i in range(int(26 * scale) or 1):
        s.sendall(line("devnode_echo", ["x" * (15 * MiB + 512 * 1024)], i))
    return [s]


def attack_subscribes(d, scale):
    s = connect(d.socket)
    n = int(40000 * scale)
    s.sendall(b"".join(line("state_subscribeStorage", [["0x%016xaa" % i]], i) for i in range(n)))
    return [s]


def attack_queue(d, scale):
    s = connect(d.socket)
    s.sendall(b"".join(line("devnode_echo", [i], i) for i in range(int(50000 * scale))))
    return [s]


def attack_silent(d, scale):
    return [connect(d.socket) for _ in range(50)]


ATTACKS = [
    ("1 pipelined /metrics, never read", attack_http_metrics, {}),
    ("2 method names of 1 MB", attack_labels, {}),
    ("3 huge Content-Length, then a stream", attack_content_length, {}),
    ("3 stream behind a slow POST", attack_slow_post, {}),
    ("4 ping flood, never read", attack_ping_flood, {}),
    ("5 slow requests with 8 MB ids", attack_big_ids, {}),
    ("6 50k storage keys changing every block", attack_storage_keys,
     {"max_subscription_keys": 50000}),
    ("7 requests over the node's limit", attack_oversize, {}),
    ("8 40k distinct subscribes", attack_subscribes, {}),
    ("9 50k queued requests", attack_queue, {"client_max_in_flight": 100000}),
    ("10 50 silent connections", attack_silent, {"max_clients": 60}),
]


def run_attacks(stack, args, out):
    out.append("| attack | peak RSS MiB | bound MiB | bystander calls | failed | p50 ms |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    ok = True
    for i, (name, fn, keys) in enumerate(ATTACKS):
        node = stack.devnode(f"devnode-a{i}", "--block-ms", "1000",
                             "--max-message", str(15 * MiB))
        d = stack.subpoold(f"subpoold-a{i}", node, max_client_memory="256M", **keys)
        by = Bystander(d.socket, args.seconds)
        by.start()
        socks = fn(d, args.scale)
        by.join(args.seconds + 60)
        peak = rss_kib(d.pid, "VmHWM") / 1024
        for s in socks:
            s.close()
        d.check()
        p50 = statistics.median(by.lat) * 1000 if by.lat else float("nan")
        bound = BUDGET / MiB + 64
        ok &= by.failed == 0 and peak <= bound
        out.append(f"| {name} | {peak:.0f} | {bound:.0f} | {len(by.lat)} | {by.failed} | "
                   f"{p50:.3f} |")
        d.stop()
        node.stop()
    return ok


# --------------------------------------------------------------------------- the queue


def drain_seconds(stack, n, tag):
    node = stack.devnode(f"devnode-drain{tag}")
    d = stack.subpoold(f"subpoold-drain{tag}", node, pool_size=1, max_in_flight=1,
                       client_max_in_flight=n + 10, queue_max=n + 10)
    s = connect(d.socket, 120)
    r = Lines(s)
    data = b"".join(line("devnode_echo", [i], i) for i in range(n))
    t = time.perf_counter()
    threading.Thread(target=s.sendall, args=(data,), daemon=True).start()
    for _ in range(n):
        r.next()
    took = time.perf_counter() - t
    s.close()
    d.stop()
    node.stop()
    return took


def single_call_wait(stack, n):
    node = stack.devnode("devnode-turn", "--latency-ms", "1")
    d = stack.subpoold("subpoold-turn", node, pool_size=1, max_in_flight=1,
                       client_max_in_flight=n + 10, queue_max=n + 10)
    hog = connect(d.socket, 120)
    hog.sendall(b"".join(line("devnode_echo", [i], i) for i in range(n)))
    run.wait_for(lambda: run.unix_call(d.socket, "subpool_status")["result"]["queued"] > n // 2,
                 30, "the hog's requests queued")
    before = run.unix_call(d.socket, "subpool_status")["result"]["responses"]
    s = connect(d.socket, 60)
    s.sendall(line("devnode_echo", ["mine"], "mine"))
    Lines(s).reply("mine")
    waited = run.unix_call(d.socket, "subpool_status")["result"]["responses"] - before - 1
    s.close()
    hog.close()
    d.stop()
    node.stop()
    return waited


# --------------------------------------------------------------------------- memory after a burst


def burst(stack, tag, clients, per_client, preload=None):
    node = stack.devnode(f"devnode-burst{tag}")
    env = None
    if preload:
        env = dict(os.environ, LD_PRELOAD=preload)
    d = stack.subpoold(f"subpoold-burst{tag}", node, env=env)
    socks = []
    for _ in range(clients):
        s = connect(d.socket)
        s.sendall(b"".join(line("devnode_echo", ["y" * 1000], j) for j in range(per_client)))
        socks.append(s)
    run.wait_for(lambda: run.unix_call(d.socket, "subpool_status")["result"]["responses"]
                 >= clients * per_client, 120, "the burst answered")
    peak = rss_kib(d.pid) / 1024
    for s in socks:
        s.close()
    time.sleep(3)  # the measurement: memory held after three idle seconds
    idle = rss_kib(d.pid) / 1024
    d.stop()
    node.stop()
    return peak, idle


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", default=str(run.REPO / "build"))
    ap.add_argument("--smoke", action="store_true", help="brief, small counts; judge only errors")
    args = ap.parse_args()
    args.seconds = 1.0 if args.smoke else 5.0
    args.scale = 0.02 if args.smoke else 1.0
    out = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="subpool-bounds-") as tmp:
        stack = run.Stack(Path(args.build_dir), Path(tmp), 1)
        try:
            out.append(f"## Attacks (max_client_memory 256M, bystander for {args.seconds:.0f} s)")
            out.append("")
            attacks_ok = run_attacks(stack, args, out)
            n_small, n_big = (1000, 10000) if args.smoke else (10000, 100000)
            t_small, t_big = drain_seconds(stack, n_small, "s"), drain_seconds(stack, n_big, "b")
            waited = single_call_wait(stack, 2000 if args.smoke else 50000)
            out += ["", "## The queue", "",
                    "| measure | value | target |", "| --- | ---: | ---: |",
                    f"| drain {n_small} queued | {t_small:.2f} s | |",
                    f"| drain {n_big} queued | {t_big:.2f} s | |",
                    f"| ratio | {t_big / t_small:.1f} | <= 12 |",
                    f"| another client's requests served before a single call | {waited} | <= 64 |"]
            clients, per = (4, 200) if args.smoke else (64, 2000)
            rows = [("subpoold (glibc, trimmed)", burst(stack, "g", clients, per))]
            if os.path.exists(JEMALLOC):
                rows.append(("subpoold with jemalloc preloaded", burst(stack, "j", clients, per,
                                                                       JEMALLOC)))
            out += ["", f"## Memory after a burst ({clients} clients x {per} replies of 1 KB, "
                        "left unread, then gone)", "",
                    "| daemon | RSS at peak MiB | after 3 s idle MiB | idle / peak |",
                    "| --- | ---: | ---: | ---: |"]
            for name, (peak, idle) in rows:
                out.append(f"| {name} | {peak:.0f} | {idle:.0f} | {idle / peak:.2f} |")
            if not args.smoke:
                ok = attacks_ok and t_big / t_small <= 12 and waited <= 64
        except run.Failure as e:
            print(f"FAILED: {e}", file=sys.stderr)
            ok = False
        finally:
            stack.close()
    print("\n".join(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
