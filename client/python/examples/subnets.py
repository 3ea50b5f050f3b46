"""Check subnets 1..7 (or 1..N with --subnets N) and pull data for each one through subpoold, first with the
blocking Client (one request after another), then with AsyncClient (everything in
flight at once on one connection, via asyncio.gather), and time both.

Per subnet: runtime API calls (state_call) and three SubtensorModule storage
maps keyed by netuid (state_getStorage). The dev chain answers deterministically,
so both runs must agree byte for byte. It stores nothing under keys that end in
a zero byte, as netuid keys below 256 do, so those values show as "-" there:

    subpool-devnode --listen 127.0.0.1:19944 --latency-ms 20 &
    subpoold --socket /tmp/subpool.sock --upstream ws://127.0.0.1:19944 &
    python3 subnets.py --socket /tmp/subpool.sock
"""

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

import subpool  # noqa: E402

SUBNETS = range(1, 8)

# twox128("SubtensorModule") ++ twox128(item): maps keyed by netuid with the Identity hasher.
PALLET = "0x658faa385070e074c85bf6b568cf0555"
STORAGE = {
    "tempo": PALLET + "7641384bb339f3758acddfd7053d3317",
    "neurons": PALLET + "a1048e9d244171852dfe8db314dc68ca",  # SubnetworkN
    "max_uids": PALLET + "fabe6b131d9fa6e6d6cacbe7586c3b8a",  # MaxAllowedUids
}


def netuid_hex(netuid: int) -> str:
    """SCALE encoding of a u16."""
    return netuid.to_bytes(2, "little").hex()


def check_request(netuid):
    return "state_call", ["SubnetInfoRuntimeApi_get_subnet_info", "0x" + netuid_hex(netuid)]


def data_requests(netuid):
    """(method, params) for everything we pull about one subnet, in a fixed order."""
    for api in ("SubnetInfoRuntimeApi_get_subnet_hyperparams", "NeuronInfoRuntimeApi_get_neurons_lite"):
        yield "state_call", [api, "0x" + netuid_hex(netuid)]
    for key in STORAGE.values():
        yield "state_getStorage", [key + netuid_hex(netuid)]


def exists(subnet_info) -> bool:
    """get_subnet_info returns a SCALE Option: 0x00 is None."""
    return bool(subnet_info) and subnet_info != "0x00"


def run_sync(path, subnets):
    with subpool.Client(path, timeout=30) as c:
        present = [n for n in subnets if exists(c.call(*check_request(n)))]
        return {n: [c.call(m, p) for m, p in data_requests(n)] for n in present}


async def run_async(path, subnets):
    async with subpool.AsyncClient(path, timeout=30) as c:
        infos = await asyncio.gather(*(c.call(*check_request(n)) for n in subnets))
        present = [n for n, info in zip(subnets, infos) if exists(info)]
        per_subnet = await asyncio.gather(
            *(asyncio.gather(*(c.call(m, p) for m, p in data_requests(n))) for n in present))
        return dict(zip(present, per_subnet))


def nbytes(value) -> int:
    return len(value) // 2 - 1  # "0x" + two hex digits a byte


def u16(value):
    """A SCALE u16 storage value, or '-' when the chain has none stored."""
    return int.from_bytes(bytes.fromhex(value[2:6]), "little") if value else "-"


def show(data, subnets):
    for n in subnets:
        if n not in data:
            print(f"subnet {n}: absent")
            continue
        hyper, neurons_lite, tempo, neurons, max_uids = data[n]
        print(f"subnet {n}: hyperparams {nbytes(hyper)} bytes, neurons {nbytes(neurons_lite)} bytes, "
              f"tempo {u16(tempo)}, neurons {u16(neurons)}, max uids {u16(max_uids)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", help="subpoold's socket (default: $SUBPOOL_SOCKET, then the system one)")
    ap.add_argument("--subnets", type=int, default=len(SUBNETS),
                    help="check subnets 1..N (default 7); e.g. 128 pulls data for every subnet")
    args = ap.parse_args()
    subnets = range(1, args.subnets + 1)
    try:
        t0 = time.perf_counter()
        blocking = run_sync(args.socket, subnets)
        t1 = time.perf_counter()
        concurrent = asyncio.run(run_async(args.socket, subnets))
        t2 = time.perf_counter()
    except subpool.Error as e:
        sys.exit(f"subnets: {e}")
    show(concurrent, subnets)
    n = len(subnets) + sum(len(list(data_requests(s))) for s in concurrent)
    print(f"{n} requests: sync {1000 * (t1 - t0):.1f} ms, async {1000 * (t2 - t1):.1f} ms "
          f"({(t1 - t0) / max(t2 - t1, 1e-9):.1f}x)")
    if blocking != concurrent:
        sys.exit("subnets: the sync and async runs disagree")


if __name__ == "__main__":
    main()
