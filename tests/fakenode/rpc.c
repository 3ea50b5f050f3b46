/*
 * The devnode's JSON-RPC side: validate each message with the protocol
 * scanner, find the method in a small hash table, and write the reply into
 * one evbuffer per message (a batch gets one array). Results take the shapes
 * a Substrate node gives them; errors use jsonrpsee's codes and messages.
 */
#include "devnode.h"
#include "jsonrpc.h"

#include <assert.h>
#include <errno.h>
#include <event2/buffer.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef SUBPOOL_VERSION
#define SUBPOOL_VERSION "0"
#endif

/* Substrate's "state" errors start at 4000; +3 is a client (unknown block) error. */
#define ERR_UNKNOWN_BLOCK 4003

#define RPC_MAX_PARAMS  4
#define KEY_PREFIX_MAX  1024 /* hex digits of a state_getKeysPaged prefix */
#define KEY_START_MAX   2048
#define SLEEP_MAX_MS    3600000
#define BLOB_MAX        (1ull << 31)
#define BLOB_CHUNK      (26 * 2520) /* whole alphabets, so every chunk starts with 'a' */
#define BLOB_COPY_BELOW 4096

#define OUT_LIT(out, lit) evbuffer_add((out), (lit), sizeof(lit) - 1)

struct rpc_batch {
    struct conn *conn;
    struct devnode *dn;
    struct evbuffer *out;
    bool is_batch;
    size_t n_out; /* replies written so far, for the commas of a batch */
    struct reply_opts opts;
};

struct rpc_call {
    struct rpc_batch *b;
    struct evbuffer *out;
    const char *buf;
    const struct json_span *id;
    struct json_span p[RPC_MAX_PARAMS];
    size_t n_params;
    bool began;
};

/* --- writing --- */

static const char *rpc_error_message(int code)
{
    switch (code) {
    case JSONRPC_PARSE_ERROR:
        return "Parse error";
    case JSONRPC_INVALID_REQUEST:
        return "Invalid request";
    case JSONRPC_METHOD_NOT_FOUND:
        return "Method not found";
    case JSONRPC_INVALID_PARAMS:
        return "Invalid params";
    case ERR_UNKNOWN_BLOCK:
        return "Client error: UnknownBlock: header not found";
    default:
        return "Internal error";
    }
}

static void out_begin(struct rpc_batch *b)
{
    if (b->is_batch && b->n_out > 0)
        evbuffer_add(b->out, ",", 1);
    b->n_out++;
}

static void rpc_write_error(struct rpc_batch *b, const char *buf, const struct json_span *id,
                            int code)
{
    char head[256];
    size_t n = jsonrpc_error_head(head, sizeof(head), code, rpc_error_message(code));

    out_begin(b);
    evbuffer_add(b->out, head, n);
    /* An id that is itself invalid (object, array, boolean) is answered with null. */
    if (id && (id->type == JSON_STRING || id->type == JSON_NUMBER || id->type == JSON_NULL))
        evbuffer_add(b->out, buf + id->off, id->len);
    else
        OUT_LIT(b->out, "null");
    evbuffer_add(b->out, "}", 1);
}

/* The envelope up to the result value; the dispatcher closes it. */
static void rpc_result(struct rpc_call *rc)
{
    out_begin(rc->b);
    OUT_LIT(rc->out, "{\"jsonrpc\":\"2.0\",\"id\":");
    evbuffer_add(rc->out, rc->buf + rc->id->off, rc->id->len);
    OUT_LIT(rc->out, ",\"result\":");
    rc->began = true;
}

static char blob_pattern[BLOB_CHUNK];

void rpc_write_blob(struct evbuffer *out, size_t n)
{
    evbuffer_add(out, "\"", 1);
    while (n > 0) {
        size_t k = n < BLOB_CHUNK ? n : BLOB_CHUNK;
        /* Big blobs point at the static pattern instead of copying it. */
        if (k < BLOB_COPY_BELOW)
            evbuffer_add(out, blob_pattern, k);
        else
            evbuffer_add_reference(out, blob_pattern, k, NULL, NULL);
        n -= k;
    }
    evbuffer_add(out, "\"", 1);
}

/* `"0x` + the hex of nbytes bytes streamed from h + `"`, written in place. */
static void out_hex_stream(struct evbuffer *out, uint64_t h, size_t nbytes)
{
    struct evbuffer_iovec v;
    size_t len = 2 * nbytes + 4;

    if (evbuffer_reserve_space(out, (ev_ssize_t)len, &v, 1) < 1)
        return;
    char *p = v.iov_base;
    memcpy(p, "\"0x", 3);
    chain_fill_hex(h, p + 3, nbytes);
    p[len - 1] = '"';
    v.iov_len = len;
    evbuffer_commit_space(out, &v, 1);
}

/* A valid hex string as JSON, lowercased the way Substrate prints bytes. */
static void out_hex_lower(struct evbuffer *out, const char *s, size_t len)
{
    struct evbuffer_iovec v;

    if (evbuffer_reserve_space(out, (ev_ssize_t)len + 2, &v, 1) < 1)
        return;
    char *p = v.iov_base;
    p[0] = '"';
    for (size_t i = 0; i < len; i++)
        p[1 + i] = (s[i] >= 'A' && s[i] <= 'F') ? (char)(s[i] + 32) : s[i];
    p[len + 1] = '"';
    v.iov_len = len + 2;
    evbuffer_commit_space(out, &v, 1);
}

static void out_hash(struct rpc_call *rc, uint64_t n)
{
    char h[72];
    evbuffer_add(rc->out, h, chain_block_hash_json(&rc->b->dn->chain, n, h));
}

static void out_hash_or_null(struct rpc_call *rc, uint64_t n)
{
    if (n > rc->b->dn->chain.best)
        OUT_LIT(rc->out, "null");
    else
        out_hash(rc, n);
}

static void out_header(struct rpc_call *rc, uint64_t n)
{
    struct devnode *dn = rc->b->dn;
    char h[CHAIN_HEADER_MAX];

    if (n == dn->chain.best)
        evbuffer_add(rc->out, dn->head_json, dn->head_len);
    else
        evbuffer_add(rc->out, h, chain_header_json(&dn->chain, n, h));
}

/* --- parameters --- */

static const struct json_span *param(const struct rpc_call *rc, size_t i)
{
    return i < rc->n_params && i < RPC_MAX_PARAMS ? &rc->p[i] : NULL;
}

static bool param_absent(const struct rpc_call *rc, size_t i)
{
    const struct json_span *s = param(rc, i);
    return !s || s->type == JSON_NULL;
}

/* A string's bytes without the quotes (escapes are not decoded: hex has none). */
static bool param_str(const struct rpc_call *rc, size_t i, const char **ret, size_t *ret_len)
{
    const struct json_span *s = param(rc, i);
    if (!s || s->type != JSON_STRING)
        return false;
    *ret = rc->buf + s->off + 1;
    *ret_len = s->len - 2;
    return true;
}

static bool param_hex(const struct rpc_call *rc, size_t i, const char **ret, size_t *ret_len)
{
    return param_str(rc, i, ret, ret_len) && hex_valid(*ret, *ret_len);
}

static bool param_u64(const struct rpc_call *rc, size_t i, uint64_t *ret)
{
    const struct json_span *s = param(rc, i);
    return s && s->type == JSON_NUMBER && json_to_u64(rc->buf, s, ret);
}

/* Optional block hash: absent or null means the best block. Returns 0 or
 * JSONRPC_INVALID_PARAMS; *ret_found is false for a well-formed unknown hash. */
static int param_block(const struct rpc_call *rc, size_t i, uint64_t *ret_n, bool *ret_found)
{
    const struct chain *ch = &rc->b->dn->chain;
    const char *s;
    size_t len;
    uint8_t h[CHAIN_HASH_LEN];

    *ret_found = true;
    if (param_absent(rc, i)) {
        *ret_n = ch->best;
        return 0;
    }
    if (!param_str(rc, i, &s, &len) || hex_decode_hash(s, len, h) != 0)
        return JSONRPC_INVALID_PARAMS;
    *ret_found = chain_block_number(ch, h, ret_n) == 0;
    return 0;
}

/* State methods refuse unknown blocks with an error, as Substrate does. */
static int param_state_block(const struct rpc_call *rc, size_t i, uint64_t *ret_n)
{
    bool found;
    int r = param_block(rc, i, ret_n, &found);
    if (r == 0 && !found)
        r = ERR_UNKNOWN_BLOCK;
    return r;
}

/* Substrate's NumberOrHex: 26 or "0x1a". */
static bool span_block_number(const char *buf, const struct json_span *s, uint64_t *ret)
{
    if (s->type == JSON_NUMBER)
        return json_to_u64(buf, s, ret);
    if (s->type != JSON_STRING)
        return false;
    const char *p = buf + s->off + 1;
    size_t n = s->len - 2;
    if (n < 3 || n > 18 || p[0] != '0' || p[1] != 'x')
        return false;
    uint64_t v = 0;
    for (size_t i = 2; i < n; i++) {
        char ch = p[i];
        int d = ch >= '0' && ch <= '9'   ? ch - '0'
                : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                         : -1;
        if (d < 0)
            return false;
        v = v << 4 | (uint64_t)d;
    }
    *ret = v;
    return true;
}

/* --- chain_* --- */

static int m_get_block_hash(struct rpc_call *rc)
{
    const struct json_span *p0 = param(rc, 0);
    uint64_t n = 0;

    if (param_absent(rc, 0)) {
        rpc_result(rc);
        out_hash(rc, rc->b->dn->chain.best);
        return 0;
    }
    if (p0->type != JSON_ARRAY) {
        if (!span_block_number(rc->buf, p0, &n))
            return JSONRPC_INVALID_PARAMS;
        rpc_result(rc);
        out_hash_or_null(rc, n);
        return 0;
    }
    /* A list of numbers gets a list of hashes. */
    size_t pos = 0;
    struct json_span e;
    while (json_array_next(rc->buf, p0, &pos, &e))
        if (!span_block_number(rc->buf, &e, &n))
            return JSONRPC_INVALID_PARAMS;
    rpc_result(rc);
    evbuffer_add(rc->out, "[", 1);
    pos = 0;
    for (bool first = true; json_array_next(rc->buf, p0, &pos, &e); first = false) {
        if (!first)
            evbuffer_add(rc->out, ",", 1);
        span_block_number(rc->buf, &e, &n);
        out_hash_or_null(rc, n);
    }
    evbuffer_add(rc->out, "]", 1);
    return 0;
}

static int m_get_finalized_head(struct rpc_call *rc)
{
    rpc_result(rc);
    out_hash(rc, chain_finalized(&rc->b->dn->chain));
    return 0;
}

static int m_get_header(struct rpc_call *rc)
{
    uint64_t n;
    bool found;
    int r = param_block(rc, 0, &n, &found);
    if (r != 0)
        return r;
    rpc_result(rc);
    if (found)
        out_header(rc, n);
    else
        OUT_LIT(rc->out, "null");
    return 0;
}

static int m_get_block(struct rpc_call *rc)
{
    uint64_t n;
    bool found;
    int r = param_block(rc, 0, &n, &found);
    if (r != 0)
        return r;
    rpc_result(rc);
    if (!found) {
        OUT_LIT(rc->out, "null");
        return 0;
    }
    OUT_LIT(rc->out, "{\"block\":{\"header\":");
    out_header(rc, n);
    OUT_LIT(rc->out, ",\"extrinsics\":[]},\"justifications\":null}");
    return 0;
}

/* keys: SUB_STORAGE's, owned by the subscription from here (also on failure). */
static int subscribe_with(struct rpc_call *rc, enum sub_kind kind, char **keys, size_t n_keys)
{
    struct sub *s = conn_sub_add(rc->b->conn, kind, rc->b->opts.token, keys, n_keys);
    if (!s)
        return JSONRPC_INTERNAL_ERROR;
    rpc_result(rc);
    evbuffer_add(rc->out, "\"", 1);
    evbuffer_add(rc->out, s->id, SUB_ID_LEN);
    evbuffer_add(rc->out, "\"", 1);
    return 0;
}

static int subscribe(struct rpc_call *rc, enum sub_kind kind)
{
    return subscribe_with(rc, kind, NULL, 0);
}

static int unsubscribe(struct rpc_call *rc, enum sub_kind kind)
{
    const char *id;
    size_t len;
    if (!param_str(rc, 0, &id, &len))
        return JSONRPC_INVALID_PARAMS;
    bool ok = conn_sub_remove(rc->b->conn, kind, id, len);
    rpc_result(rc);
    if (ok)
        OUT_LIT(rc->out, "true");
    else
        OUT_LIT(rc->out, "false");
    return 0;
}

static int m_sub_new_heads(struct rpc_call *rc)
{
    return subscribe(rc, SUB_NEW_HEADS);
}

static int m_unsub_new_heads(struct rpc_call *rc)
{
    return unsubscribe(rc, SUB_NEW_HEADS);
}

static int m_sub_finalized(struct rpc_call *rc)
{
    return subscribe(rc, SUB_FINALIZED_HEADS);
}

static int m_unsub_finalized(struct rpc_call *rc)
{
    return unsubscribe(rc, SUB_FINALIZED_HEADS);
}

static int m_sub_runtime(struct rpc_call *rc)
{
    return subscribe(rc, SUB_RUNTIME_VERSION);
}

static int m_unsub_runtime(struct rpc_call *rc)
{
    return unsubscribe(rc, SUB_RUNTIME_VERSION);
}

/* --- state_* --- */

static int m_runtime_version(struct rpc_call *rc)
{
    uint64_t n;
    int r = param_state_block(rc, 0, &n);
    if (r != 0)
        return r;
    rpc_result(rc);
    OUT_LIT(rc->out, CHAIN_RUNTIME_VERSION);
    return 0;
}

static int m_metadata(struct rpc_call *rc)
{
    struct devnode *dn = rc->b->dn;
    uint64_t n;
    int r = param_state_block(rc, 0, &n);
    if (r != 0)
        return r;
    rpc_result(rc);
    /* Shared, never copied: the node outlives every buffer that points at it. */
    evbuffer_add_reference(rc->out, dn->metadata, dn->metadata_len, NULL, NULL);
    return 0;
}

/* The value of key at block n, or null. */
static void out_storage_value(struct rpc_call *rc, const char *key, size_t len, uint64_t n)
{
    char v[CHAIN_VALUE_JSON_MAX];
    size_t vlen = chain_storage_json(&rc->b->dn->chain, key, len, n, v);
    if (vlen == 0)
        OUT_LIT(rc->out, "null");
    else
        evbuffer_add(rc->out, v, vlen);
}

static int m_get_storage(struct rpc_call *rc)
{
    const char *key;
    size_t len;
    uint64_t n;
    if (!param_hex(rc, 0, &key, &len))
        return JSONRPC_INVALID_PARAMS;
    int r = param_state_block(rc, 1, &n);
    if (r != 0)
        return r;
    rpc_result(rc);
    out_storage_value(rc, key, len, n);
    return 0;
}

static int m_query_storage_at(struct rpc_call *rc)
{
    const struct json_span *keys = param(rc, 0);
    struct json_span e;
    size_t pos = 0;
    uint64_t n;

    if (!keys || keys->type != JSON_ARRAY)
        return JSONRPC_INVALID_PARAMS;
    while (json_array_next(rc->buf, keys, &pos, &e))
        if (e.type != JSON_STRING || !hex_valid(rc->buf + e.off + 1, e.len - 2))
            return JSONRPC_INVALID_PARAMS;
    int r = param_state_block(rc, 1, &n);
    if (r != 0)
        return r;

    rpc_result(rc);
    OUT_LIT(rc->out, "[{\"block\":");
    out_hash(rc, n);
    OUT_LIT(rc->out, ",\"changes\":[");
    pos = 0;
    for (bool first = true; json_array_next(rc->buf, keys, &pos, &e); first = false) {
        const char *key = rc->buf + e.off + 1;
        size_t len = e.len - 2;
        if (!first)
            evbuffer_add(rc->out, ",", 1);
        evbuffer_add(rc->out, "[", 1);
        out_hex_lower(rc->out, key, len);
        evbuffer_add(rc->out, ",", 1);
        out_storage_value(rc, key, len, n);
        evbuffer_add(rc->out, "]", 1);
    }
    OUT_LIT(rc->out, "]}]");
    return 0;
}

static void lower_into(char *dst, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        dst[i] = (s[i] >= 'A' && s[i] <= 'F') ? (char)(s[i] + 32) : s[i];
}

/*
 * state_subscribeStorage([keys]): a list of hex keys (Substrate's "all keys"
 * form, no list, is refused). The keys are kept lowercased, in the order
 * given, duplicates included, as the node echoes them.
 */
static int m_sub_storage(struct rpc_call *rc)
{
    const struct json_span *list = param(rc, 0);
    struct json_span e;
    size_t pos = 0, n = 0;

    if (!list || list->type != JSON_ARRAY)
        return JSONRPC_INVALID_PARAMS;
    while (json_array_next(rc->buf, list, &pos, &e)) {
        if (e.type != JSON_STRING || !hex_valid(rc->buf + e.off + 1, e.len - 2))
            return JSONRPC_INVALID_PARAMS;
        n++;
    }
    char **keys = n ? calloc(n, sizeof(*keys)) : NULL;
    if (n && !keys)
        return JSONRPC_INTERNAL_ERROR;
    pos = 0;
    for (size_t i = 0; i < n && json_array_next(rc->buf, list, &pos, &e); i++) {
        keys[i] = malloc(e.len + 1);
        if (!keys[i]) {
            for (size_t k = 0; k < i; k++)
                free(keys[k]);
            free(keys);
            return JSONRPC_INTERNAL_ERROR;
        }
        lower_into(keys[i], rc->buf + e.off, e.len);
        keys[i][e.len] = '\0';
    }
    return subscribe_with(rc, SUB_STORAGE, keys, n);
}

static int m_unsub_storage(struct rpc_call *rc)
{
    return unsubscribe(rc, SUB_STORAGE);
}

static void key_set_index(char *digits, uint64_t i)
{
    static const char hex[] = "0123456789abcdef";
    for (int k = 15; k >= 0; k--) {
        digits[k] = hex[i & 15];
        i >>= 4;
    }
}

/*
 * The keys under a prefix are prefix + the 8-byte big-endian index, for
 * index 0..chain_keys_total-1: same length, so the text order is the index
 * order and a page after startKey is found by binary search.
 */
static int m_get_keys_paged(struct rpc_call *rc)
{
    const char *prefix, *start = NULL;
    size_t plen, slen = 0;
    uint64_t count, n;
    char key[KEY_PREFIX_MAX + 16];
    char lstart[KEY_START_MAX];

    if (!param_hex(rc, 0, &prefix, &plen) || plen - 2 > KEY_PREFIX_MAX)
        return JSONRPC_INVALID_PARAMS;
    if (!param_u64(rc, 1, &count) || count > CHAIN_KEYS_PAGE_MAX)
        return JSONRPC_INVALID_PARAMS;
    if (!param_absent(rc, 2) && (!param_hex(rc, 2, &start, &slen) || slen - 2 > KEY_START_MAX))
        return JSONRPC_INVALID_PARAMS;
    int r = param_state_block(rc, 3, &n);
    if (r != 0)
        return r;

    uint64_t total = chain_keys_total(&rc->b->dn->chain, prefix, plen);
    size_t klen = plen - 2 + 16;
    lower_into(key, prefix + 2, plen - 2);
    uint64_t lo = 0;
    if (start) {
        slen -= 2;
        lower_into(lstart, start + 2, slen);
        /* First index whose key sorts after startKey. */
        uint64_t hi = total;
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2;
            key_set_index(key + plen - 2, mid);
            int c = memcmp(key, lstart, klen < slen ? klen : slen);
            if (c < 0 || (c == 0 && klen <= slen))
                lo = mid + 1;
            else
                hi = mid;
        }
    }

    rpc_result(rc);
    evbuffer_add(rc->out, "[", 1);
    for (uint64_t i = lo; i < total && i - lo < count; i++) {
        if (i > lo)
            evbuffer_add(rc->out, ",", 1);
        key_set_index(key + plen - 2, i);
        OUT_LIT(rc->out, "\"0x");
        evbuffer_add(rc->out, key, klen);
        evbuffer_add(rc->out, "\"", 1);
    }
    evbuffer_add(rc->out, "]", 1);
    return 0;
}

static int m_state_call(struct rpc_call *rc)
{
    struct devnode *dn = rc->b->dn;
    const char *method, *data;
    size_t mlen, dlen;
    uint64_t n;

    if (!param_str(rc, 0, &method, &mlen) || !param_hex(rc, 1, &data, &dlen))
        return JSONRPC_INVALID_PARAMS;
    int r = param_state_block(rc, 2, &n);
    if (r != 0)
        return r;
    uint64_t h = chain_hash_bytes(chain_domain_key(&dn->chain, CHAIN_DOMAIN_CALL), method, mlen);
    h = chain_hash_hex(h, data, dlen);
    rpc_result(rc);
    out_hex_stream(rc->out, h, dn->opt.call_size);
    return 0;
}

/* --- system_*, rpc_methods, author_* --- */

static int m_system_chain(struct rpc_call *rc)
{
    rpc_result(rc);
    OUT_LIT(rc->out, "\"Bittensor\"");
    return 0;
}

static int m_system_name(struct rpc_call *rc)
{
    rpc_result(rc);
    OUT_LIT(rc->out, "\"subpool-devnode\"");
    return 0;
}

static int m_system_version(struct rpc_call *rc)
{
    rpc_result(rc);
    OUT_LIT(rc->out, "\"" SUBPOOL_VERSION "\"");
    return 0;
}

static int m_system_health(struct rpc_call *rc)
{
    rpc_result(rc);
    OUT_LIT(rc->out, "{\"peers\":0,\"isSyncing\":false,\"shouldHavePeers\":false}");
    return 0;
}

static int m_system_properties(struct rpc_call *rc)
{
    rpc_result(rc);
    OUT_LIT(rc->out, "{\"ss58Format\":42,\"tokenDecimals\":9,\"tokenSymbol\":\"TAO\"}");
    return 0;
}

static char methods_json[4096];
static size_t methods_json_len;

static int m_rpc_methods(struct rpc_call *rc)
{
    rpc_result(rc);
    evbuffer_add(rc->out, methods_json, methods_json_len);
    return 0;
}

static int m_submit_extrinsic(struct rpc_call *rc)
{
    struct devnode *dn = rc->b->dn;
    const char *xt;
    size_t len;

    if (!param_hex(rc, 0, &xt, &len) || len <= 2)
        return JSONRPC_INVALID_PARAMS;
    dn->n_extrinsics++;
    rpc_result(rc);
    out_hex_stream(rc->out,
                   chain_hash_hex(chain_domain_key(&dn->chain, CHAIN_DOMAIN_EXTRINSIC), xt, len),
                   CHAIN_HASH_LEN);
    return 0;
}

/* ready at once, inBlock at the next block, finalized two blocks later; then it ends. */
static int m_submit_and_watch(struct rpc_call *rc)
{
    const char *xt;
    size_t len;

    if (!param_hex(rc, 0, &xt, &len) || len <= 2)
        return JSONRPC_INVALID_PARAMS;
    int r = subscribe(rc, SUB_EXTRINSIC);
    if (r == 0)
        rc->b->dn->n_extrinsics++;
    return r;
}

static int m_unwatch_extrinsic(struct rpc_call *rc)
{
    return unsubscribe(rc, SUB_EXTRINSIC);
}

/* --- devnode_* test control --- */

static int m_devnode_stats(struct rpc_call *rc)
{
    struct devnode *dn = rc->b->dn;
    rpc_result(rc);
    evbuffer_add_printf(rc->out,
                        "{\"connections\":%" PRIu64 ",\"subscriptions\":%" PRIu64
                        ",\"requests\":%" PRIu64 ",\"handshakes\":%" PRIu64 ",\"best\":%" PRIu64
                        ",\"refused\":%" PRIu64 ",\"hangups\":%" PRIu64 ",\"tls_failures\":%" PRIu64
                        ",\"extrinsics\":%" PRIu64 ",\"frozen\":%s,\"sent_bytes\":%" PRIu64 "}",
                        dn->n_conns, dn->n_subs, dn->n_requests, dn->n_handshakes, dn->chain.best,
                        dn->n_refused, dn->n_hangups, dn->n_tls_failures, dn->n_extrinsics,
                        dn->fault == FAULT_FREEZE ? "true" : "false", dn->n_sent_bytes);
    return 0;
}

static int m_devnode_sleep(struct rpc_call *rc)
{
    uint64_t ms;
    if (!param_u64(rc, 0, &ms) || ms > SLEEP_MAX_MS)
        return JSONRPC_INVALID_PARAMS;
    if (ms > rc->b->opts.extra_ms)
        rc->b->opts.extra_ms = (uint32_t)ms;
    rpc_result(rc);
    OUT_LIT(rc->out, "true");
    return 0;
}

static int m_devnode_echo(struct rpc_call *rc)
{
    const struct json_span *p0 = param(rc, 0);
    if (!p0)
        return JSONRPC_INVALID_PARAMS;
    rpc_result(rc);
    evbuffer_add(rc->out, rc->buf + p0->off, p0->len);
    return 0;
}

static int m_devnode_blob(struct rpc_call *rc)
{
    uint64_t n;
    if (!param_u64(rc, 0, &n) || n > BLOB_MAX)
        return JSONRPC_INVALID_PARAMS;
    rpc_result(rc);
    rpc_write_blob(rc->out, (size_t)n);
    return 0;
}

static int m_devnode_new_block(struct rpc_call *rc)
{
    devnode_new_block(rc->b->dn);
    rpc_result(rc);
    out_hash(rc, rc->b->dn->chain.best);
    return 0;
}

static int m_devnode_fault(struct rpc_call *rc)
{
    const char *s;
    size_t len;
    enum fault_kind kind;
    bool all = false;

    if (!param_str(rc, 0, &s, &len) || fault_parse(s, len, &kind) != 0)
        return JSONRPC_INVALID_PARAMS;
    if (!param_absent(rc, 1)) {
        if (!param_str(rc, 1, &s, &len))
            return JSONRPC_INVALID_PARAMS;
        if (len == 3 && memcmp(s, "all", 3) == 0)
            all = true;
        else if (len != 4 || memcmp(s, "conn", 4) != 0)
            return JSONRPC_INVALID_PARAMS;
    }
    /* A 429 is about new handshakes, a frozen chain about the node: no connection to give it to. */
    if ((kind == FAULT_REFUSE429 || kind == FAULT_FREEZE || kind == FAULT_HANGUP) && !all)
        return JSONRPC_INVALID_PARAMS;
    /* The reply goes out at once, before the fault takes hold, so that the
     * caller learns it was accepted even when the fault closes or stalls. */
    rc->b->opts.immediate = true;
    rc->b->opts.has_fault = true;
    rc->b->opts.fault = kind;
    rc->b->opts.fault_all = all;
    rpc_result(rc);
    OUT_LIT(rc->out, "true");
    return 0;
}

/* --- dispatch --- */

enum method_flags {
    M_CONTROL = 1u << 0, /* never replaced by FAULT_OVERSIZE */
};

struct method {
    const char *name;
    int (*fn)(struct rpc_call *rc);
    unsigned flags;
};

static const struct method methods[] = {
    {"author_submitAndWatchExtrinsic", m_submit_and_watch, 0},
    {"author_submitExtrinsic", m_submit_extrinsic, 0},
    {"author_unwatchExtrinsic", m_unwatch_extrinsic, 0},
    {"chain_getBlock", m_get_block, 0},
    {"chain_getBlockHash", m_get_block_hash, 0},
    {"chain_getFinalisedHead", m_get_finalized_head, 0},
    {"chain_getFinalizedHead", m_get_finalized_head, 0},
    {"chain_getHead", m_get_block_hash, 0},
    {"chain_getHeader", m_get_header, 0},
    {"chain_getRuntimeVersion", m_runtime_version, 0},
    {"chain_subscribeFinalisedHeads", m_sub_finalized, 0},
    {"chain_subscribeFinalizedHeads", m_sub_finalized, 0},
    {"chain_subscribeNewHeads", m_sub_new_heads, 0},
    {"chain_unsubscribeFinalisedHeads", m_unsub_finalized, 0},
    {"chain_unsubscribeFinalizedHeads", m_unsub_finalized, 0},
    {"chain_unsubscribeNewHeads", m_unsub_new_heads, 0},
    {"dev_newBlock", m_devnode_new_block, 0},
    {"devnode_blob", m_devnode_blob, 0},
    {"devnode_echo", m_devnode_echo, 0},
    {"devnode_fault", m_devnode_fault, M_CONTROL},
    {"devnode_newBlock", m_devnode_new_block, 0},
    {"devnode_sleep", m_devnode_sleep, 0},
    {"devnode_stats", m_devnode_stats, M_CONTROL},
    {"rpc_methods", m_rpc_methods, 0},
    {"state_call", m_state_call, 0},
    {"state_callAt", m_state_call, 0},
    {"state_getKeysPaged", m_get_keys_paged, 0},
    {"state_getKeysPagedAt", m_get_keys_paged, 0},
    {"state_getMetadata", m_metadata, 0},
    {"state_getRuntimeVersion", m_runtime_version, 0},
    {"state_getStorage", m_get_storage, 0},
    {"state_getStorageAt", m_get_storage, 0},
    {"state_queryStorageAt", m_query_storage_at, 0},
    {"state_subscribeRuntimeVersion", m_sub_runtime, 0},
    {"state_subscribeStorage", m_sub_storage, 0},
    {"state_unsubscribeRuntimeVersion", m_unsub_runtime, 0},
    {"state_unsubscribeStorage", m_unsub_storage, 0},
    {"system_chain", m_system_chain, 0},
    {"system_health", m_system_health, 0},
    {"system_name", m_system_name, 0},
    {"system_properties", m_system_properties, 0},
    {"system_version", m_system_version, 0},
};

#define N_METHODS  (sizeof(methods) / sizeof(methods[0]))
#define SLOTS_BITS 8
#define N_SLOTS    (1u << SLOTS_BITS)

/* Open addressing, index + 1 per slot; at most a third full, so probes are short. */
static uint8_t method_slots[N_SLOTS];

static uint32_t method_hash(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h ^ (h >> 15);
}

static const struct method *method_find(const char *name, size_t len)
{
    for (uint32_t i = method_hash(name, len);; i++) {
        uint8_t k = method_slots[i & (N_SLOTS - 1)];
        if (k == 0)
            return NULL;
        const struct method *m = &methods[k - 1];
        if (strlen(m->name) == len && memcmp(m->name, name, len) == 0)
            return m;
    }
}

void rpc_init(void)
{
    static_assert(N_METHODS * 3 < N_SLOTS, "method table too full");

    memset(method_slots, 0, sizeof(method_slots));
    size_t k = 0;
    k += (size_t)snprintf(methods_json + k, sizeof(methods_json) - k, "{\"methods\":[");
    for (size_t i = 0; i < N_METHODS; i++) {
        uint32_t h = method_hash(methods[i].name, strlen(methods[i].name));
        while (method_slots[h & (N_SLOTS - 1)] != 0)
            h++;
        method_slots[h & (N_SLOTS - 1)] = (uint8_t)(i + 1);
        /* The table is sorted, like Substrate's list. */
        k += (size_t)snprintf(methods_json + k, sizeof(methods_json) - k, "%s\"%s\"", i ? "," : "",
                              methods[i].name);
    }
    k += (size_t)snprintf(methods_json + k, sizeof(methods_json) - k, "]}");
    assert(k < sizeof(methods_json));
    methods_json_len = k;

    for (size_t i = 0; i < BLOB_CHUNK; i++)
        blob_pattern[i] = (char)('a' + i % 26);
}

static void rpc_call_method(struct rpc_batch *b, const char *buf, const struct jsonrpc_msg *m)
{
    struct conn *c = b->conn;
    struct json_span e;
    size_t pos = 0;

    b->dn->n_requests++;
    /* Escaped method names never match: no node method needs an escape. */
    const struct method *meth = method_find(buf + m->method.off + 1, m->method.len - 2);
    if (!meth) {
        rpc_write_error(b, buf, &m->id, JSONRPC_METHOD_NOT_FOUND);
        return;
    }

    struct rpc_call rc = {.b = b, .out = b->out, .buf = buf, .id = &m->id};
    if (m->params.type == JSON_ARRAY) {
        while (json_array_next(buf, &m->params, &pos, &e)) {
            if (rc.n_params < RPC_MAX_PARAMS)
                rc.p[rc.n_params] = e;
            rc.n_params++;
        }
    } else if (m->params.type == JSON_OBJECT) {
        struct json_span key;
        /* Only positional parameters; {} is as good as none. */
        if (json_object_next(buf, &m->params, &pos, &key, &e)) {
            rpc_write_error(b, buf, &m->id, JSONRPC_INVALID_PARAMS);
            return;
        }
    }

    if (c->oversize && !(meth->flags & M_CONTROL)) {
        c->oversize = false;
        rpc_result(&rc);
        rpc_write_blob(b->out, 2 * b->dn->opt.max_message);
        evbuffer_add(b->out, "}", 1);
        return;
    }

    int r = meth->fn(&rc);
    if (r != 0) {
        assert(!rc.began);
        rpc_write_error(b, buf, &m->id, r);
        return;
    }
    evbuffer_add(b->out, "}", 1);
}

static void rpc_one(struct rpc_batch *b, const char *buf, int scan, const struct jsonrpc_msg *m)
{
    if (scan == JSONRPC_PARSE_ERROR) {
        rpc_write_error(b, buf, NULL, JSONRPC_PARSE_ERROR);
        return;
    }
    if (scan != 0 || m->kind == JSONRPC_KIND_RESPONSE) {
        rpc_write_error(b, buf, &m->id, JSONRPC_INVALID_REQUEST);
        return;
    }
    /* Like jsonrpsee: a notification runs nothing and gets nothing. */
    if (m->kind == JSONRPC_KIND_NOTIFICATION)
        return;
    rpc_call_method(b, buf, m);
}

void rpc_handle(struct conn *c, const char *msg, size_t len)
{
    struct rpc_batch b = {.conn = c, .dn = c->dn};
    struct jsonrpc_msg m;

    b.out = evbuffer_new();
    if (!b.out)
        return;
    b.opts.token = ++c->next_token;

    if (!jsonrpc_is_batch(msg, len)) {
        memset(&m, 0, sizeof(m));
        rpc_one(&b, msg, jsonrpc_scan(msg, len, &m), &m);
    } else {
        struct json_span arr, e;
        size_t pos = 0, count = 0;
        if (json_validate(msg, len, &arr) != 0 || arr.type != JSON_ARRAY) {
            rpc_write_error(&b, msg, NULL, JSONRPC_PARSE_ERROR);
        } else {
            b.is_batch = true;
            evbuffer_add(b.out, "[", 1);
            while (json_array_next(msg, &arr, &pos, &e)) {
                memset(&m, 0, sizeof(m));
                rpc_one(&b, msg, jsonrpc_scan_span(msg, &e, &m), &m);
                count++;
            }
            evbuffer_add(b.out, "]", 1);
            if (count == 0) {
                /* An empty batch is one invalid request, not an empty array. */
                evbuffer_drain(b.out, evbuffer_get_length(b.out));
                b.is_batch = false;
                b.n_out = 0;
                rpc_write_error(&b, msg, NULL, JSONRPC_INVALID_REQUEST);
            }
        }
    }
    if (b.n_out == 0) {
        evbuffer_free(b.out);
        return;
    }
    conn_reply(c, b.out, &b.opts);
}
