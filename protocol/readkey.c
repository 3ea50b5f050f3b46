/*
 * Keys of pure reads (readkey.h). Only methods known to read and nothing
 * else are listed: writes, subscriptions, nonces (system_accountNextIndex,
 * account_nextIndex count the pool of pending extrinsics) and every method
 * not listed are never shared.
 */
#include "readkey.h"

#include <string.h>

/* at: where the block hash goes, or one of these. */
#define AT_HEAD  -1 /* no hash: always about the head (latest) */
#define AT_CONST -2 /* the same answer for the chain's whole life */

struct read_method {
    const char *name;
    const char *canon; /* the name aliases fold to */
    int at;
    unsigned traits; /* READ_CACHE, READ_NULL_OK */
};

#define C  READ_CACHE
#define CN (READ_CACHE | READ_NULL_OK)

/*
 * Sorted by bytes (strcmp order): the unit tests look up every entry. Kept
 * in the cache when pinned (C): not blocks, whose justifications appear once
 * finalized, nor what a node upgrade changes (its name, version, methods).
 * A null answer is definite (N) only for storage: at a block the node does
 * not know, state_* methods answer an error, chain_getHeader null.
 */
static const struct read_method reads[] = {
    {"chainSpec_v1_chainName", "chainSpec_v1_chainName", AT_CONST, C},
    {"chainSpec_v1_genesisHash", "chainSpec_v1_genesisHash", AT_CONST, C},
    {"chainSpec_v1_properties", "chainSpec_v1_properties", AT_CONST, C},
    {"chain_getBlock", "chain_getBlock", 0, 0},
    {"chain_getBlockHash", "chain_getBlockHash", AT_HEAD, 0},
    {"chain_getFinalisedHead", "chain_getFinalizedHead", AT_HEAD, 0},
    {"chain_getFinalizedHead", "chain_getFinalizedHead", AT_HEAD, 0},
    {"chain_getHead", "chain_getHead", AT_HEAD, 0},
    {"chain_getHeader", "chain_getHeader", 0, C},
    {"chain_getRuntimeVersion", "state_getRuntimeVersion", 0, C},
    {"childstate_getKeys", "childstate_getKeys", 2, C},
    {"childstate_getKeysPaged", "childstate_getKeysPaged", 4, C},
    {"childstate_getKeysPagedAt", "childstate_getKeysPaged", 4, C},
    {"childstate_getStorage", "childstate_getStorage", 2, CN},
    {"childstate_getStorageEntries", "childstate_getStorageEntries", 2, C},
    {"childstate_getStorageHash", "childstate_getStorageHash", 2, CN},
    {"childstate_getStorageSize", "childstate_getStorageSize", 2, CN},
    {"rpc_methods", "rpc_methods", AT_CONST, 0},
    {"state_call", "state_call", 2, C},
    {"state_callAt", "state_call", 2, C},
    {"state_getKeysPaged", "state_getKeysPaged", 3, C},
    {"state_getKeysPagedAt", "state_getKeysPaged", 3, C},
    {"state_getMetadata", "state_getMetadata", 0, C},
    {"state_getReadProof", "state_getReadProof", 1, C},
    {"state_getRuntimeVersion", "state_getRuntimeVersion", 0, C},
    {"state_getStorage", "state_getStorage", 1, CN},
    {"state_getStorageAt", "state_getStorage", 1, CN},
    {"state_getStorageHash", "state_getStorageHash", 1, CN},
    {"state_getStorageHashAt", "state_getStorageHash", 1, CN},
    {"state_getStorageSize", "state_getStorageSize", 1, CN},
    {"state_getStorageSizeAt", "state_getStorageSize", 1, CN},
    {"state_queryStorageAt", "state_queryStorageAt", 1, C},
    {"system_chain", "system_chain", AT_CONST, C},
    {"system_chainType", "system_chainType", AT_CONST, C},
    {"system_health", "system_health", AT_HEAD, 0},
    {"system_name", "system_name", AT_CONST, 0},
    {"system_properties", "system_properties", AT_CONST, C},
    {"system_version", "system_version", AT_CONST, 0},
};
#undef C
#undef CN

static const struct read_method *read_lookup(const char *name, size_t len)
{
    size_t lo = 0, hi = sizeof(reads) / sizeof(reads[0]);

    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strncmp(reads[mid].name, name, len);
        if (c == 0)
            c = reads[mid].name[len] ? 1 : 0;
        if (c == 0)
            return &reads[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *read_method_name(size_t i)
{
    return i < sizeof(reads) / sizeof(reads[0]) ? reads[i].name : NULL;
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/*
 * Length of the string token at p (with quotes) when it is "0x" and hex
 * digits only, else 0. A "0X" prefix is not one: a node refuses it, so it
 * must not share a key with the "0x" that it accepts.
 */
static size_t hex_string(const char *p, size_t n)
{
    size_t i = 3;

    if (n < 4 || p[1] != '0' || p[2] != 'x')
        return 0;
    while (i < n && is_hex(p[i]))
        i++;
    return i < n && p[i] == '"' ? i + 1 : 0;
}

/* Copies one validated value from buf[off..off+len) in canonical form; returns bytes written. */
static size_t canon_value(const char *buf, size_t off, size_t len, char *out)
{
    size_t w = 0, i = 0;
    const char *p = buf + off;

    while (i < len) {
        char c = p[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            i++;
        } else if (c == '"') {
            size_t h = hex_string(p + i, len - i), j = i + 1;
            if (h) {
                for (size_t k = 0; k < h; k++) {
                    char d = p[i + k];
                    out[w++] = d >= 'A' && d <= 'Z' ? (char)(d - 'A' + 'a') : d;
                }
                i += h;
                continue;
            }
            /* Verbatim, escapes included: the scanner has validated it. */
            while (p[j] != '"')
                j += p[j] == '\\' ? 2 : 1;
            memcpy(out + w, p + i, j + 1 - i);
            w += j + 1 - i;
            i = j + 1;
        } else {
            out[w++] = c;
            i++;
        }
    }
    return w;
}

size_t read_key(const char *buf, const struct json_span *method, const struct json_span *params,
                char *out, size_t cap, enum read_at *at, unsigned *traits)
{
    const struct read_method *rm;
    struct json_span el;
    size_t pos = 0, w, kept, n = 0, n_kept = 0, name_len;

    *at = READ_NONE;
    *traits = 0;
    if (method->type != JSON_STRING || method->len < 2)
        return 0;
    rm = read_lookup(buf + method->off + 1, method->len - 2);
    if (!rm)
        return 0;
    if (params->type != JSON_NONE && params->type != JSON_ARRAY)
        return 0;
    name_len = strlen(rm->canon);
    if (cap < name_len + 3 + (params->type == JSON_ARRAY ? params->len : 0))
        return 0;
    memcpy(out, rm->canon, name_len);
    w = name_len;
    out[w++] = '\n';
    out[w++] = '[';
    kept = w;
    if (params->type == JSON_ARRAY) {
        while (json_array_next(buf, params, &pos, &el) > 0) {
            if (n)
                out[w++] = ',';
            w += canon_value(buf, el.off, el.len, out + w);
            n++;
            if (el.type != JSON_NULL) {
                kept = w;
                n_kept = n;
            }
        }
    }
    /* Trailing nulls go: [k, null] is [k]. */
    w = kept;
    out[w++] = ']';
    *traits = rm->traits;
    if (rm->at == AT_CONST)
        *at = READ_PINNED;
    else if (rm->at == AT_HEAD || n_kept <= (size_t)rm->at)
        *at = READ_LATEST;
    else
        *at = READ_PINNED;
    return w;
}
