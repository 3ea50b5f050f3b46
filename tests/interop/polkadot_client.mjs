// @polkadot/api clients through subpoold, as a dApp or a script would use a node.
//
//   node polkadot_client.mjs --url ws://127.0.0.1:PORT [--mode api|provider] [--clients N]
//        [--blocks K] [--new-block METHOD] [--wait-go] [--timeout SECONDS]
//
// Each of the N clients opens its own websocket, loads the metadata, reads storage, makes
// a runtime call (state_call), subscribes to new heads, and then sees the K blocks that
// client 0 makes with METHOD (dev_newBlock on chopsticks, devnode_newBlock on the
// devnode), unsubscribes and disconnects.
//
// --mode api (default): ApiPromise, metadata decoded, typed storage and runtime calls.
// --mode provider: the same calls through @polkadot/api's WsProvider without decoding the
//   metadata, for the devnode, whose metadata is synthetic bytes of the right size.
//
// Output: JSON lines on stdout. {"event":"ready",...} once every client is subscribed
// (with --wait-go, the script then waits for a line "go" on stdin, so the caller can look
// at the upstream while all clients are connected), {"event":"done",...} at the end.
// Exit 0 on success, 1 with {"event":"error","message":...}.

import { ApiPromise, WsProvider } from '@polkadot/api';
import { createInterface } from 'node:readline';

const SYSTEM_NUMBER_KEY = '0x26aa394eea5630e07c48ae0c9558cef702a5c1b19ab7a04f536c519aca4983ac';

function parseArgs(argv) {
  const opts = { mode: 'api', clients: 1, blocks: 2, newBlock: 'dev_newBlock', waitGo: false, timeout: 120 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--url') opts.url = next();
    else if (a === '--mode') opts.mode = next();
    else if (a === '--clients') opts.clients = Number(next());
    else if (a === '--blocks') opts.blocks = Number(next());
    else if (a === '--new-block') opts.newBlock = next();
    else if (a === '--wait-go') opts.waitGo = true;
    else if (a === '--timeout') opts.timeout = Number(next());
    else throw new Error(`unknown argument ${a}`);
  }
  if (!opts.url) throw new Error('--url is required');
  if (!['api', 'provider'].includes(opts.mode)) throw new Error(`bad --mode ${opts.mode}`);
  return opts;
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

const toNumber = (n) => (typeof n === 'number' ? n : Number(BigInt(n)));

// A client that waits for heads: resolves once it has seen `count` heads after `after`.
class HeadWatch {
  constructor() {
    this.numbers = [];
    this.waiters = [];
  }

  push(n) {
    this.numbers.push(n);
    for (const w of this.waiters.splice(0)) w();
  }

  async until(pred, ms, what) {
    const deadline = Date.now() + ms;
    while (!pred(this.numbers)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; heads seen: ${JSON.stringify(this.numbers)}`);
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }
}

async function connectProvider(url) {
  // No automatic reconnection: a dropped connection must fail the test, not be hidden.
  const provider = new WsProvider(url, false);
  const failed = new Promise((_, reject) => {
    provider.on('error', (e) => reject(new Error(`websocket error connecting to ${url}: ${e && e.message ? e.message : e}`)));
    provider.on('disconnected', () => reject(new Error(`websocket to ${url} closed while connecting`)));
  });
  failed.catch(() => {});
  await provider.connect();
  await Promise.race([provider.isReady, failed]);
  return provider;
}

// ---------------------------------------------------------------- api mode (chopsticks)

async function apiClient(no, opts) {
  const provider = await connectProvider(opts.url);
  const api = await ApiPromise.create({ provider, noInitWarn: true, throwOnConnect: true });
  const result = { client: no };

  // Metadata, decoded.
  const meta = api.runtimeMetadata;
  const pallets = meta.asLatest.pallets.map((p) => p.name.toString());
  result.metadataVersion = meta.version;
  result.pallets = pallets.length;
  result.specName = api.runtimeVersion.specName.toString();
  result.specVersion = api.runtimeVersion.specVersion.toNumber();
  check(pallets.includes('System'), `no System pallet in ${pallets}`);

  // Storage.
  const number = (await api.query.system.number()).toNumber();
  result.systemNumber = number;
  if (api.query.timestamp) result.timestamp = (await api.query.timestamp.now()).toString();

  // Runtime calls: typed (api.call) and raw (state_call).
  const version = api.call.core ? await api.call.core.version() : null;
  if (version) {
    check(version.specVersion.toNumber() === result.specVersion, 'Core_version disagrees with the runtime version');
  }
  const raw = await api.rpc.state.call('Core_version', '0x');
  check(raw.length > 8, `state_call Core_version returned ${raw.toHex()}`);
  result.stateCallBytes = raw.length;

  // New heads.
  const heads = new HeadWatch();
  const unsub = await api.rpc.chain.subscribeNewHeads((h) => heads.push(h.number.toNumber()));
  await heads.until((ns) => ns.length >= 1, 30000, 'the first head');

  return {
    result,
    heads,
    makeBlock: () => provider.send(opts.newBlock, []),
    async finish(best) {
      // Storage follows the chain: the best block's System.Number.
      result.systemNumberAfter = (await api.query.system.number()).toNumber();
      check(result.systemNumberAfter === best, `System.Number ${result.systemNumberAfter} != best head ${best}`);
      unsub();
      await api.disconnect();
    },
  };
}

// ----------------------------------------------------------- provider mode (devnode)

async function providerClient(no, opts) {
  const provider = await connectProvider(opts.url);
  const result = { client: no };

  const metadata = await provider.send('state_getMetadata', []);
  check(typeof metadata === 'string' && metadata.startsWith('0x'), 'metadata is not hex');
  result.metadataBytes = (metadata.length - 2) / 2;
  const rv = await provider.send('state_getRuntimeVersion', []);
  result.specName = rv.specName;
  result.specVersion = rv.specVersion;

  const stored = await provider.send('state_getStorage', [SYSTEM_NUMBER_KEY]);
  check(typeof stored === 'string' && stored.startsWith('0x'), `state_getStorage gave ${stored}`);
  result.storageBytes = (stored.length - 2) / 2;

  const call = await provider.send('state_call', ['Core_version', '0x']);
  check(typeof call === 'string' && call.length > 2, `state_call gave ${call}`);
  result.stateCallBytes = (call.length - 2) / 2;

  const heads = new HeadWatch();
  const subId = await provider.subscribe('chain_newHead', 'chain_subscribeNewHeads', [], (err, head) => {
    if (!err) heads.push(toNumber(head.number));
  });
  await heads.until((ns) => ns.length >= 1, 30000, 'the first head');

  return {
    result,
    heads,
    makeBlock: () => provider.send(opts.newBlock, []),
    async finish() {
      const ok = await provider.unsubscribe('chain_newHead', 'chain_unsubscribeNewHeads', subId);
      check(ok === true, `unsubscribe answered ${ok}`);
      await provider.disconnect();
    },
  };
}

async function waitGo() {
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (line.trim() === 'go') break;
  }
  rl.close();
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const started = Date.now();
  const make = opts.mode === 'api' ? apiClient : providerClient;
  const clients = await Promise.all(Array.from({ length: opts.clients }, (_, i) => make(i, opts)));
  const start = Math.max(...clients.map((c) => c.heads.numbers.at(-1)));
  emit({ event: 'ready', clients: clients.length, best: start, ms: Date.now() - started });
  if (opts.waitGo) await waitGo();

  // Client 0 makes the blocks; every client must see each of them.
  let best = start;
  for (let k = 0; k < opts.blocks; k++) {
    await clients[0].makeBlock();
    best += 1;
    const target = best;
    await Promise.all(clients.map((c) => c.heads.until((ns) => ns.includes(target), 30000, `head #${target}`)));
  }
  for (const c of clients) await c.finish(best);
  emit({
    event: 'done',
    best,
    ms: Date.now() - started,
    results: clients.map((c) => ({ ...c.result, heads: c.heads.numbers })),
  });
}

const opts = (() => {
  try {
    return parseArgs(process.argv.slice(2));
  } catch (e) {
    return null;
  }
})();
const timer = setTimeout(() => {
  emit({ event: 'error', message: `timed out after ${opts ? opts.timeout : 120}s` });
  process.exit(1);
}, 1000 * (opts ? opts.timeout : 120));

main().then(
  () => {
    clearTimeout(timer);
    process.exit(0);
  },
  (e) => {
    emit({ event: 'error', message: String(e && e.stack ? e.stack : e) });
    process.exit(1);
  },
);
