#!/bin/sh
# Build the protocol libFuzzer target with clang (whatever compiler configured
# the project) and run it for SECONDS. Exits non-zero when the build fails or
# the fuzzer finds a crash; the crashing input is left in OUTDIR/artifacts/.
# Usage: run-fuzz.sh SRC_ROOT OUTDIR [SECONDS]
set -eu

src=${1:?usage: run-fuzz.sh SRC_ROOT OUTDIR [SECONDS]}
out=${2:?usage: run-fuzz.sh SRC_ROOT OUTDIR [SECONDS]}
secs=${3:-20}
cc=${FUZZ_CC:-clang}

mkdir -p "$out/corpus" "$out/artifacts"
bin="$out/fuzz_protocol"

"$cc" -std=c17 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$src/protocol" \
    "$src/protocol/json.c" "$src/protocol/jsonrpc.c" "$src/protocol/ndjson.c" \
    "$src/protocol/http.c" "$src/protocol/url.c" "$src/protocol/methods.c" \
    "$src/tests/fuzz/fuzz_protocol.c" -lcrypto -o "$bin"

# A small seed corpus, one input per shape the parsers care about.
seed() {
    printf '%b' "$2" >"$out/corpus/seed-$1"
}
seed req '{"jsonrpc":"2.0","id":1,"method":"chain_getHeader","params":["0x1"]}'
seed resp '{"jsonrpc":"2.0","result":{"a":[1,2.5e3,null,true]},"id":18446744073709551615}'
seed err '{"jsonrpc":"2.0","error":{"code":-32601,"message":"x"},"id":null}'
seed notif '{"jsonrpc":"2.0","method":"chain_newHead","params":{"subscription":"ab","result":{"n":"0x1"}}}'
seed batch '[{"jsonrpc":"2.0","id":"a","method":"m"},{"jsonrpc":"2.0","method":"n","params":{}},5]'
seed str '"\\u00e9\\ud83d\\ude00\\n\xc3\xa9\xf0\x9f\x98\x80"'
seed skim '{"result":"}{\\"id\\":9","x":{"id":3},"id":42}'
seed lines 'ok\r\n\n{"a":1}\nlong line here\n'
seed httpreq 'GET /ws HTTP/1.1\r\nHost: a:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n'
seed httpresp 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n'
seed url 'wss://[::1]:9944/rpc?x=1'
seed url2 'ws://node.example'

# libFuzzer returns non-zero on a crash, a leak or a failed property.
exec "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -artifact_prefix="$out/artifacts/" -print_final_stats=1 "$out/corpus"
