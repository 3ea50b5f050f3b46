/*
 * Deterministic chain data for subpool-devnode: block hashes, headers,
 * storage values, key pages, call results and metadata, all derived from the
 * seed with a splitmix64 mixer, so two runs with the same seed serve the same
 * bytes. Nothing is stored per block: a hash carries its own block number.
 * Pure code: no I/O, no allocation.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CHAIN_HASH_LEN       32
#define CHAIN_HEADER_MAX     512
#define CHAIN_VALUE_JSON_MAX 200 /* a storage value as JSON: quotes, "0x", 2 x 96 digits */

/* Keys per state_getKeysPaged page, as Substrate caps it. */
#define CHAIN_KEYS_PAGE_MAX 1000

/* What state_getRuntimeVersion answers (and state_runtimeVersion notifies). */
#define CHAIN_RUNTIME_VERSION                                                                  \
    "{\"specName\":\"node-subtensor\",\"implName\":\"node-subtensor\",\"authoringVersion\":1," \
    "\"specVersion\":218,\"implVersion\":1,\"apis\":[],\"transactionVersion\":1,"              \
    "\"stateVersion\":1}"

/* Domains keep the streams for different kinds of data apart. */
enum chain_domain {
    CHAIN_DOMAIN_BLOCK = 1,
    CHAIN_DOMAIN_STATE_ROOT,
    CHAIN_DOMAIN_EXTRINSICS_ROOT,
    CHAIN_DOMAIN_STORAGE,
    CHAIN_DOMAIN_KEYS,
    CHAIN_DOMAIN_CALL,
    CHAIN_DOMAIN_EXTRINSIC,
    CHAIN_DOMAIN_METADATA,
    CHAIN_DOMAIN_SUBSCRIPTION,
    CHAIN_DOMAIN_LATENCY,
};

struct chain {
    uint64_t seed;
    uint64_t best; /* best block number; block 0 is genesis */
};

/* splitmix64's finalizer: a bijection on 64 bits with good avalanche. */
uint64_t chain_mix(uint64_t x);

/* A per-domain key for chain_hash_hex and chain_fill_hex. */
uint64_t chain_domain_key(const struct chain *c, enum chain_domain domain);

uint64_t chain_finalized(const struct chain *c);

/* 32-byte hash of block n (n need not exist yet). */
void chain_block_hash(const struct chain *c, uint64_t n, uint8_t out[CHAIN_HASH_LEN]);

/* Number of the block with this hash: 0, or -ENOENT when no block up to best has it. */
int chain_block_number(const struct chain *c, const uint8_t hash[CHAIN_HASH_LEN], uint64_t *ret);

/* `"0x<64 digits>"` with the quotes; returns the length (68). */
size_t chain_block_hash_json(const struct chain *c, uint64_t n, char out[72]);

/* The header of block n as Substrate's JSON; returns its length. */
size_t chain_header_json(const struct chain *c, uint64_t n, char out[CHAIN_HEADER_MAX]);

/* True when s[0..len) is "0x" followed by an even number of hex digits. */
bool hex_valid(const char *s, size_t len);

/* Decode "0x" + 64 hex digits; 0 or -EINVAL. */
int hex_decode_hash(const char *s, size_t len, uint8_t out[CHAIN_HASH_LEN]);

/* Hash the bytes a valid "0x..." string encodes, keyed by `key`. */
uint64_t chain_hash_hex(uint64_t key, const char *s, size_t len);

/* Hash raw bytes, keyed by `key`. */
uint64_t chain_hash_bytes(uint64_t key, const void *p, size_t len);

/* 2*nbytes lowercase hex digits of the byte stream that `h` seeds. */
void chain_fill_hex(uint64_t h, char *out, size_t nbytes);

/*
 * Storage value for a valid "0x..." key: 0 with the stream seed and byte
 * length (4..96) of the value, or -ENOENT when the key reads as null: the key
 * is empty or its last byte is 0x00 (hex ending in "00"). These values do not
 * change from block to block; see chain_storage_json for the keys that do.
 */
int chain_storage(const struct chain *c, const char *key, size_t len, uint64_t *ret_h,
                  size_t *ret_len);

/* True for a key whose value changes every block: its last byte is 0x01 (hex ending in "01"). */
bool chain_storage_dynamic(const char *key, size_t len);

/*
 * The value of a valid "0x..." key at block n as JSON (quotes included) in
 * out; returns its length, or 0 when the key reads as null. A dynamic key's
 * value is n as a SCALE u64 (8 bytes, little endian); any other key's is
 * chain_storage's, whatever n.
 */
size_t chain_storage_json(const struct chain *c, const char *key, size_t len, uint64_t n,
                          char out[CHAIN_VALUE_JSON_MAX]);

/* How many keys exist under a valid "0x..." prefix: 16..1024. */
uint64_t chain_keys_total(const struct chain *c, const char *prefix, size_t len);
