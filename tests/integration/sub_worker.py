"""A process holding many subscribed NDJSON clients, for tests that SIGKILL
clients. Usage: sub_worker.py SOCKET CLIENTS METHOD

Each client subscribes to METHOD and records every notification. The worker
prints "ready" once every client has its subscription id, and on each
"report" line from stdin prints one JSON line: per client, the subscription
id, the block numbers seen, and any problem (wrong id, gap, duplicate).
"quit" closes the clients and exits 0."""

import asyncio
import json
import sys


class Sub:
    def __init__(self):
        self.sid = None
        self.numbers = []
        self.problems = []


async def run_client(path, method, sub, ready):
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 22)
    writer.write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": []}).encode()
                 + b"\n")
    await writer.drain()
    try:
        while True:
            line = await reader.readline()
            if not line:
                sub.problems.append("connection closed")
                return
            msg = json.loads(line)
            if msg.get("id") == 1:
                sub.sid = msg.get("result")
                if not isinstance(sub.sid, str):
                    sub.problems.append(f"subscribe failed: {msg}")
                ready()
                continue
            params = msg.get("params", {})
            if sub.sid is None:
                sub.problems.append("notification before the subscribe reply")
            if params.get("subscription") != sub.sid:
                sub.problems.append(f"id {params.get('subscription')} != {sub.sid}")
            n = int(params["result"]["number"], 16)
            if sub.numbers and n == sub.numbers[-1]:
                sub.problems.append(f"duplicate head {n}")
            elif sub.numbers and n != sub.numbers[-1] + 1:
                sub.problems.append(f"gap {sub.numbers[-1]} -> {n}")
            sub.numbers.append(n)
    finally:
        writer.close()


async def main(path, count, method):
    subs = [Sub() for _ in range(count)]
    pending = count
    all_ready = asyncio.Event()

    def ready():
        nonlocal pending
        pending -= 1
        if pending == 0:
            all_ready.set()

    tasks = [asyncio.create_task(run_client(path, method, s, ready)) for s in subs]
    await all_ready.wait()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        cmd = line.strip()
        if cmd == "report":
            print(json.dumps([{"sid": s.sid, "numbers": s.numbers, "problems": s.problems[:5]}
                              for s in subs]), flush=True)
        elif cmd in ("quit", ""):
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
