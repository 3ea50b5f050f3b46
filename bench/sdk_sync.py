#!/usr/bin/python3
"""S8: the Bittensor SDK's cold start and one sync, from many processes at once.

Each worker is its own process with its own WebSocket, and sends what an SDK
instance sends (async-substrate-interface and bittensor): the runtime bootstrap
by hash (chain_getHead, chain_getHeader [H], state_getRuntimeVersion [parent],
state_getMetadata [parent], state_call Metadata_metadata_at_version at parent),
then neurons_lite for a few netuids at latest (state_call with a null hash),
then a metagraph sync pinned to a block (chain_getBlockHash [n], then several
state_call at that hash), the calls of each stage in flight at once.

Paths, side by side in one run, each against its own devnode (20 ms latency,
metadata and state_call results of SDK size): direct to the node, subpoold
with coalesce and cache off, subpoold as shipped. For 1 and N processes each:
wall time from a common start (every worker connected) to the last done, and
the requests and bytes the node sent (devnode_stats). Everything listens on
127.0.0.1 or in a private directory; only processes started here are stopped.
--smoke runs small and judges only errors.
"""

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the stack: devnode, subpoold, processes)

CALL_SIZE = 400_000     # neurons_lite and metagraph state_call results, as on finney
METADATA_SIZE = 520_000
LATENCY_MS = 20
ID = re.compile(r'"id":(\d+)[,}]')


async def worker(url, netuids, pinned, calls):
    import websockets  # python3-websockets; only workers need it

    async with websockets.connect(url, max_size=None, compression=None) as ws:
        pending, next_id = {}, 0

        async def reader():
            async for msg in ws:
                if len(msg) > 4096:
                    # A large result: decoding it would make this bench one of Python's JSON
                    # parser on two cores; its id is at one end, an error near the top.
                    at = ID.search(msg[:64]) or ID.search(msg[-64:])
                    m = {"id": int(at.group(1)) if at else None,
                         "result" if '"error"' not in msg[:64] else "error": msg[:64]}
                else:
                    m = json.loads(msg)
                fut = pending.pop(m.get("id"), None)
                if fut:
                    fut.set_result(m)

        task = asyncio.create_task(reader())

        async def call(method, params):
            nonlocal next_id
            next_id += 1
            fut = asyncio.get_running_loop().create_future()
            pending[next_id] = fut
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": next_id, "method": method,
                                      "params": params}))
            m = await asyncio.wait_for(fut, 60)
            if "error" in m:
                raise RuntimeError(f"{method}: {m['error']}")
            return m["result"]

        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        head = await call("chain_getHead", [])
        parent = (await call("chain_getHeader", [head]))["parentHash"]
        await asyncio.gather(
            call("state_getRuntimeVersion", [parent]),
            call("state_getMetadata", [parent]),
            call("state_call", ["Metadata_metadata_at_version", "0x0f000000", parent]))
        await asyncio.gather(*(call("state_call", ["NeuronInfoRuntimeApi_get_neurons_lite",
                                                   "0x%04x" % n, None]) for n in netuids))
        at = await call("chain_getBlockHash", [pinned])
        await asyncio.gather(*(call("state_call", ["NeuronInfoRuntimeApi_get_neurons_lite",
                                                   "0x%04x" % n, at]) for n in range(calls)))
        task.cancel()
    print("done", flush=True)


def run_workers(url, n, netuids, calls, timeout):
    """n worker processes; wall time from the moment all are connected to the last done."""
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", url, "--netuids", str(netuids),
                               "--calls", str(calls)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
             for _ in range(n)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != b"ready":
                raise run.Failure(f"a worker for {url} did not connect")
        t0 = time.monotonic()
        for p in procs:
            p.stdin.write(b"go\n")
            p.stdin.flush()
        for p in procs:
            if p.stdout.readline().strip() != b"done" or p.wait(timeout) != 0:
                raise run.Failure(f"a worker for {url} failed")
        return time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def node_call(stack, node, method):
    """A devnode_* call over the node's /control path (not counted as a client connection)."""
    out = subprocess.run([str(stack.bench_bin), "--target", node.url + "/control", "--mode", "once",
                          "--method", method, "--print", "--quiet"],
                         capture_output=True, timeout=20)
    try:
        return json.loads(out.stdout.decode().splitlines()[0])
    except (IndexError, ValueError):
        raise run.Failure(f"{method} failed: {out.stderr.decode(errors='replace')[-300:]}")


def node_stats(stack, node):
    return node_call(stack, node, "devnode_stats")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", default=str(run.REPO / "build"))
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--processes", type=int, default=32)
    ap.add_argument("--worker")
    ap.add_argument("--netuids", type=int, default=3)
    ap.add_argument("--calls", type=int, default=4)
    args = ap.parse_args()
    if args.worker:
        asyncio.run(worker(args.worker, range(1, args.netuids + 1), 1, args.calls))
        return 0
    n = 4 if args.smoke else args.processes
    size = ["--call-size", "4000", "--metadata-size", "5200"] if args.smoke else \
        ["--call-size", str(CALL_SIZE), "--metadata-size", str(METADATA_SIZE)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="subpool-s8-") as tmp:
        stack = run.Stack(Path(args.build_dir), Path(tmp), 1)
        try:
            for label, keys in (("direct", None), ("subpoold, cache and coalescing off",
                                                   {"cache": "false", "coalesce": "false"}),
                                ("subpoold", {"cache": "true", "coalesce": "true"})):
                for count in (1, n):
                    node = stack.devnode(f"node-{len(rows)}", "--latency-ms", str(LATENCY_MS),
                                         *size)
                    for _ in range(3):  # a head with a parent, and a block 1 to pin
                        node_call(stack, node, "devnode_newBlock")
                    if keys is None:
                        url = node.url
                    else:
                        port = run.free_port()
                        stack.subpoold(f"subpoold-{len(rows)}", node, pool_size=4,
                                       tcp_listen=f"127.0.0.1:{port}", **keys)
                        url = f"ws://127.0.0.1:{port}"
                    before = node_stats(stack, node)
                    wall = run_workers(url, count, args.netuids, args.calls, 120)
                    after = node_stats(stack, node)
                    rows.append((label, count, wall, after["requests"] - before["requests"] - 1,
                                 after["sent_bytes"] - before["sent_bytes"]))
        finally:
            stack.close()
    print("## S8 — the SDK's cold start and one sync, 1 and %d processes at once" % n)
    print()
    print("| path | processes | wall s | node requests | node MB sent |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, count, wall, reqs, sent in rows:
        print(f"| {label} | {count} | {wall:.3f} | {reqs} | {sent / 1e6:.2f} |")
    by = {(r[0], r[1]): r for r in rows}
    one, many = by[("subpoold", 1)], by[("subpoold", n)]
    print()
    print(f"subpoold, {n} processes against 1: node bytes x{many[4] / one[4]:.2f}, "
          f"node requests {many[3]} (one process: {one[3]}), wall x{many[2] / one[2]:.2f}; "
          f"against direct with {n}: wall x{many[2] / by[('direct', n)][2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
