/*
 * libFuzzer target for the whole protocol library. Every parser sees the
 * same input, and the properties that must hold between them are checked
 * (spans inside the buffer, the skimmer agreeing with the scanner, chunking
 * not changing answers, round trips); a broken property aborts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "json.h"
#include "jsonrpc.h"
#include "methods.h"
#include "ndjson.h"
#include "url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                    \
        }                                                                               \
    } while (0)

static void check_span(const struct json_span *s, size_t size)
{
    if (s->type == JSON_NONE)
        return;
    CHECK(s->len > 0);
    CHECK(s->off <= size && s->len <= size - s->off);
}

/* Skim in chunks of `chunk` bytes. */
static int skim(const char *buf, size_t size, size_t chunk, uint64_t *ret_id)
{
    struct json_skim sk;

    json_skim_init(&sk);
    for (size_t i = 0; i < size; i += chunk)
        json_skim_feed(&sk, buf + i, size - i < chunk ? size - i : chunk);
    return json_skim_id(&sk, ret_id);
}

static bool same_span(const struct json_span *a, const struct json_span *b)
{
    return a->off == b->off && a->len == b->len && a->type == b->type;
}

static bool same_msg(const struct jsonrpc_msg *a, const struct jsonrpc_msg *b)
{
    return a->kind == b->kind && same_span(&a->whole, &b->whole) && same_span(&a->id, &b->id) &&
           same_span(&a->method, &b->method) && same_span(&a->params, &b->params) &&
           same_span(&a->result, &b->result) && same_span(&a->error, &b->error) &&
           same_span(&a->sub, &b->sub) && same_span(&a->sub_result, &b->sub_result);
}

/* The first MEMBERS_KEPT members json_validate_members reported, and how many in all. */
#define MEMBERS_KEPT 8
struct members {
    size_t n;
    struct json_span key[MEMBERS_KEPT], value[MEMBERS_KEPT];
};

static void see_member(void *arg, const struct json_span *key, const struct json_span *value)
{
    struct members *m = arg;

    if (m->n < MEMBERS_KEPT) {
        m->key[m->n] = *key;
        m->value[m->n] = *value;
    }
    m->n++;
}

static void check_msg(const char *buf, size_t size, const struct jsonrpc_msg *m)
{
    check_span(&m->whole, size);
    check_span(&m->id, size);
    check_span(&m->method, size);
    check_span(&m->params, size);
    check_span(&m->result, size);
    check_span(&m->error, size);
    check_span(&m->sub, size);
    check_span(&m->sub_result, size);
    if (m->method.type == JSON_STRING)
        (void)method_flags(buf + m->method.off + 1, m->method.len - 2);
}

/*
 * A deliberately naive reference validator (recursive, byte at a time,
 * decoding code points instead of using byte ranges) to compare json_validate
 * against. Recursion is bounded by JSON_MAX_DEPTH, which is fine here.
 */
struct ref {
    const unsigned char *p;
    size_t n, i;
    int depth;
};

static void ref_ws(struct ref *r)
{
    while (r->i < r->n && strchr(" \t\r\n", r->p[r->i]) != NULL && r->p[r->i] != '\0')
        r->i++;
}

static int ref_hex(struct ref *r, unsigned *cp)
{
    *cp = 0;
    if (r->n - r->i < 4)
        return JSON_ERR_SYNTAX;
    for (int k = 0; k < 4; k++) {
        unsigned char c = r->p[r->i++];
        unsigned d;

        if (c >= '0' && c <= '9')
            d = c - '0';
        else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
            d = (c | 0x20) - 'a' + 10;
        else
            return JSON_ERR_SYNTAX;
        *cp = *cp * 16 + d;
    }
    return 0;
}

static int ref_string(struct ref *r)
{
    static const unsigned min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};

    r->i++;
    for (;;) {
        unsigned char c;

        if (r->i >= r->n)
            return JSON_ERR_SYNTAX;
        c = r->p[r->i++];
        if (c == '"')
            return 0;
        if (c < 0x20)
            return JSON_ERR_SYNTAX;
        if (c == '\\') {
            unsigned cp, lo;

            if (r->i >= r->n)
                return JSON_ERR_SYNTAX;
            c = r->p[r->i++];
            if (c != 'u') {
                if (strchr("\"\\/bfnrt", c) == NULL || c == '\0')
                    return JSON_ERR_SYNTAX;
                continue;
            }
            if (ref_hex(r, &cp) < 0)
                return JSON_ERR_SYNTAX;
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return JSON_ERR_SURROGATE;
            if (cp < 0xD800 || cp > 0xDBFF)
                continue;
            if (r->i >= r->n)
                return JSON_ERR_SYNTAX;
            if (r->p[r->i] != '\\')
                return JSON_ERR_SURROGATE;
            if (r->i + 1 >= r->n)
                return JSON_ERR_SYNTAX;
            if (r->p[r->i + 1] != 'u')
                return JSON_ERR_SURROGATE;
            r->i += 2;
            if (ref_hex(r, &lo) < 0)
                return JSON_ERR_SYNTAX;
            if (lo < 0xDC00 || lo > 0xDFFF)
                return JSON_ERR_SURROGATE;
            continue;
        }
        if (c >= 0x80) {
            unsigned len = (c & 0xE0) == 0xC0   ? 2
                           : (c & 0xF0) == 0xE0 ? 3
                           : (c & 0xF8) == 0xF0 ? 4
                                                : 0;
            unsigned cp;

            if (len == 0)
                return JSON_ERR_UTF8;
            cp = c & (0x7F >> len);
            for (unsigned k = 1; k < len; k++) {
                if (r->i >= r->n || (r->p[r->i] & 0xC0) != 0x80)
                    return JSON_ERR_UTF8;
                cp = cp << 6 | (r->p[r->i++] & 0x3F);
            }
            if (cp < min_cp[len] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
                return JSON_ERR_UTF8;
        }
    }
}

static bool ref_digit(struct ref *r)
{
    return r->i < r->n && r->p[r->i] >= '0' && r->p[r->i] <= '9';
}

static int ref_number(struct ref *r)
{
    if (r->p[r->i] == '-')
        r->i++;
    if (!ref_digit(r))
        return JSON_ERR_SYNTAX;
    if (r->p[r->i] == '0') {
        r->i++;
        if (ref_digit(r))
            return JSON_ERR_SYNTAX;
    } else {
        while (ref_digit(r))
            r->i++;
    }
    if (r->i < r->n && r->p[r->i] == '.') {
        r->i++;
        if (!ref_digit(r))
            return JSON_ERR_SYNTAX;
        while (ref_digit(r))
            r->i++;
    }
    if (r->i < r->n && (r->p[r->i] | 0x20) == 'e') {
        r->i++;
        if (r->i < r->n && (r->p[r->i] == '+' || r->p[r->i] == '-'))
            r->i++;
        if (!ref_digit(r))
            return JSON_ERR_SYNTAX;
        while (ref_digit(r))
            r->i++;
    }
    return 0;
}

static int ref_value(struct ref *r)
{
    static const char *const lits[] = {"true", "false", "null"};
    unsigned char c;
    int rc;

    if (r->i >= r->n)
        return JSON_ERR_SYNTAX;
    c = r->p[r->i];
    if (c == '"')
        return ref_string(r);
    if (c == '-' || (c >= '0' && c <= '9'))
        return ref_number(r);
    for (int k = 0; k < 3; k++) {
        size_t l = strlen(lits[k]);

        if (c == (unsigned char)lits[k][0]) {
            if (r->n - r->i < l || memcmp(r->p + r->i, lits[k], l) != 0)
                return JSON_ERR_SYNTAX;
            r->i += l;
            return 0;
        }
    }
    if (c != '[' && c != '{')
        return JSON_ERR_SYNTAX;
    if (++r->depth > JSON_MAX_DEPTH)
        return JSON_ERR_DEPTH;
    r->i++;
    ref_ws(r);
    if (r->i < r->n && r->p[r->i] == (c == '[' ? ']' : '}')) {
        r->i++;
        r->depth--;
        return 0;
    }
    for (;;) {
        if (c == '{') {
            if (r->i >= r->n || r->p[r->i] != '"')
                return JSON_ERR_SYNTAX;
            rc = ref_string(r);
            if (rc < 0)
                return rc;
            ref_ws(r);
            if (r->i >= r->n || r->p[r->i] != ':')
                return JSON_ERR_SYNTAX;
            r->i++;
            ref_ws(r);
        }
        rc = ref_value(r);
        if (rc < 0)
            return rc;
        ref_ws(r);
        if (r->i >= r->n)
            return JSON_ERR_SYNTAX;
        if (r->p[r->i] == ',') {
            r->i++;
            ref_ws(r);
            continue;
        }
        if (r->p[r->i] != (c == '[' ? ']' : '}'))
            return JSON_ERR_SYNTAX;
        r->i++;
        r->depth--;
        return 0;
    }
}

static int ref_validate(const char *buf, size_t size)
{
    struct ref r = {(const unsigned char *)buf, size, 0, 0};
    int rc;

    ref_ws(&r);
    if (r.i >= r.n)
        return JSON_ERR_EMPTY;
    rc = ref_value(&r);
    if (rc < 0)
        return rc;
    ref_ws(&r);
    return r.i == r.n ? 0 : JSON_ERR_TRAILING;
}

static void fuzz_json(const char *buf, size_t size, size_t chunk)
{
    struct json_span v, again, e;
    struct jsonrpc_msg m;
    uint64_t skim_id = 0, skim_id1 = 0, scan_id = 0;
    int rc = json_validate(buf, size, &v);
    int src = jsonrpc_scan(buf, size, &m);
    struct members seen = {0};
    struct json_span whole;
    int mrc = json_validate_members(buf, size, &whole, see_member, &seen);
    int k1 = skim(buf, size, 1, &skim_id1);
    int kc = skim(buf, size, chunk, &skim_id);
    size_t pos = 0;

    /* Chunking never changes the skimmer's answer. */
    CHECK(k1 == kc);
    CHECK(k1 != 0 || skim_id1 == skim_id);

    CHECK(rc <= 0 && rc >= JSON_ERR_EMPTY);
    /* Same verdict, same error, as the naive reference. */
    if (rc != ref_validate(buf, size))
        fprintf(stderr, "json_validate %d, reference %d\n", rc, ref_validate(buf, size));
    CHECK(rc == ref_validate(buf, size));
    CHECK((rc == 0) == (src != JSONRPC_PARSE_ERROR));
    CHECK(mrc == rc);
    if (rc < 0)
        return;
    check_span(&v, size);

    /* One pass finds the members the iterator finds after validation, and the envelope too. */
    {
        struct json_span key;
        struct jsonrpc_msg two;
        size_t i = 0;

        CHECK(same_span(&whole, &v));
        while (v.type == JSON_OBJECT && json_object_next(buf, &v, &pos, &key, &e) == 1) {
            CHECK(i >= MEMBERS_KEPT ||
                  (same_span(&seen.key[i], &key) && same_span(&seen.value[i], &e)));
            i++;
        }
        CHECK(seen.n == i);
        pos = 0;
        CHECK(jsonrpc_scan_span(buf, &v, &two) == src);
        CHECK(same_msg(&m, &two));
    }
    CHECK(json_scan_value(buf, size, 0, &again) == 0);
    CHECK(again.off == v.off && again.len == v.len && again.type == v.type);

    CHECK(src == 0 || src == JSONRPC_INVALID_REQUEST);
    check_msg(buf, size, &m);
    /* Valid single messages: the skimmer finds exactly the integer id the scanner sees. */
    if (src == 0) {
        bool has_u64 = m.id.type == JSON_NUMBER && json_to_u64(buf, &m.id, &scan_id);

        CHECK((kc == 0) == has_u64);
        CHECK(!has_u64 || skim_id == scan_id);
    }

    /*
     * Any valid document: the skimmer reports the last top-level "id" (exact
     * key bytes) exactly when the iterator finds it to be an unsigned integer.
     */
    {
        struct json_span key, last = {0, 0, JSON_NONE};
        uint64_t last_id = 0;
        bool last_u64;

        pos = 0;
        while (v.type == JSON_OBJECT && json_object_next(buf, &v, &pos, &key, &e) == 1)
            if (json_string_eq(buf, &key, "id"))
                last = e;
        last_u64 = json_to_u64(buf, &last, &last_id);
        CHECK((kc == 0) == last_u64);
        CHECK(!last_u64 || skim_id == last_id);
        pos = 0;
    }

    /* Members and elements: inside the parent, each a valid value on its own. */
    if (v.type == JSON_OBJECT) {
        struct json_span key;

        while (json_object_next(buf, &v, &pos, &key, &e) == 1) {
            CHECK(key.type == JSON_STRING && key.off > v.off && key.len >= 2);
            CHECK(e.off > key.off && e.off + e.len < v.off + v.len);
            CHECK(json_scan_value(buf, size, e.off, &again) == 0);
            CHECK(again.off == e.off && again.len == e.len && again.type == e.type);
        }
    } else if (v.type == JSON_ARRAY) {
        CHECK(jsonrpc_is_batch(buf, size));
        while (json_array_next(buf, &v, &pos, &e) == 1) {
            CHECK(e.off > v.off && e.off + e.len < v.off + v.len);
            CHECK(json_scan_value(buf, size, e.off, &again) == 0);
            CHECK(again.off == e.off && again.len == e.len && again.type == e.type);
            rc = jsonrpc_scan_span(buf, &e, &m);
            CHECK(rc == 0 || rc == JSONRPC_INVALID_REQUEST);
            check_msg(buf, size, &m);
            CHECK(m.whole.off == e.off && m.whole.len == e.len);
        }
    }
}

static void fuzz_ndjson(const char *buf, size_t size, size_t max)
{
    size_t i = 0;
    int skipping = 0;

    while (i < size) {
        size_t line = 0, consumed = 0;

        if (skipping) {
            int done = 0;

            consumed = ndjson_skip(buf + i, size - i, &done);
            CHECK(consumed > 0 && consumed <= size - i);
            CHECK(!done || buf[i + consumed - 1] == '\n');
            skipping = !done;
        } else {
            enum ndjson_result r = ndjson_next(buf + i, size - i, max, &line, &consumed);

            CHECK(consumed <= size - i);
            if (r == NDJSON_NEED_MORE) {
                CHECK(consumed == 0 && line == 0);
                CHECK(memchr(buf + i, '\n', size - i) == NULL);
                break;
            }
            if (r == NDJSON_LINE) {
                CHECK(line <= max && line < consumed);
                CHECK(buf[i + consumed - 1] == '\n');
                CHECK(memchr(buf + i, '\n', consumed - 1) == NULL);
            } else {
                CHECK(r == NDJSON_TOO_LONG);
                CHECK(consumed > max);
                CHECK(memchr(buf + i, '\n', consumed) == NULL);
                skipping = 1;
            }
        }
        i += consumed;
    }
}

static void check_head(const char *buf, size_t size, const struct http_head *h)
{
    const char *end = buf + h->head_len;

    CHECK(h->head_len <= size && h->head_len <= HTTP_MAX_HEAD);
    CHECK(h->n_headers <= HTTP_MAX_HEADERS);
    for (size_t k = 0; k < h->n_headers; k++) {
        const struct http_header *x = &h->headers[k];

        CHECK(x->name.len > 0 && x->name.p >= buf && x->name.p + x->name.len <= end);
        CHECK(x->value.p >= buf && x->value.p + x->value.len <= end);
    }
}

static void fuzz_http(const char *buf, size_t size)
{
    struct http_head h, h2;
    int rc;

    rc = http_parse_request(buf, size, &h);
    CHECK(rc >= -1 && rc <= 1);
    if (rc == 1) {
        check_head(buf, size, &h);
        CHECK(h.method.p == buf && h.method.len > 0 && h.target.len > 0);
        /* The head alone parses the same; one byte less needs more. */
        CHECK(http_parse_request(buf, h.head_len, &h2) == 1 && h2.head_len == h.head_len);
        CHECK(http_parse_request(buf, h.head_len - 1, &h2) == 0);
        (void)http_has_token(http_header(&h, "connection"), "upgrade");
    }
    rc = http_parse_response(buf, size, &h);
    CHECK(rc >= -1 && rc <= 1);
    if (rc == 1) {
        check_head(buf, size, &h);
        CHECK(h.status >= 0 && h.status <= 999);
        CHECK(http_parse_response(buf, h.head_len, &h2) == 1 && h2.head_len == h.head_len);
        CHECK(http_parse_response(buf, h.head_len - 1, &h2) == 0);
    }
    if (size > 0 && size <= WS_KEY_MAX) {
        char acc[WS_ACCEPT_LEN + 1];

        CHECK(ws_accept(buf, size, acc) == 0 && strlen(acc) == WS_ACCEPT_LEN);
    }
    /* A frame head: never past the input; one byte less needs more; written back the same. */
    struct ws_frame f;
    rc = ws_frame_parse((const uint8_t *)buf, size, &f);
    CHECK(rc >= -1 && rc <= WS_HEAD_MAX && (size_t)(rc > 0 ? rc : 0) <= size);
    if (rc > 0) {
        uint8_t again[WS_HEAD_MAX];
        struct ws_frame f2;

        CHECK(ws_frame_parse((const uint8_t *)buf, (size_t)rc - 1, &f2) == 0);
        CHECK(ws_frame_head(again, f.opcode, f.len, f.masked ? f.mask : NULL) == (size_t)rc);
        CHECK(memcmp(again + 1, buf + 1, (size_t)rc - 1) == 0);
        CHECK((again[0] & 0x0f) == ((uint8_t)buf[0] & 0x0f));
    }
}

static void fuzz_url(const char *buf, size_t size)
{
    char *s = malloc(size + 1);
    struct url u, u2;
    const char *cause = NULL;

    CHECK(s != NULL);
    memcpy(s, buf, size);
    s[size] = '\0';
    if (url_parse(s, &u, &cause) == 0) {
        char auth[URL_HOST_MAX + 16];
        char *again = malloc(URL_HOST_MAX + URL_PATH_MAX + 32);
        int n = url_authority(&u, auth, sizeof(auth));

        CHECK(again != NULL);
        CHECK(n > 0 && (size_t)n < sizeof(auth));
        CHECK(u.host[0] != '\0' && u.port != 0 && u.path[0] == '/');
        /* Round trip: what we print parses back to the same endpoint. */
        sprintf(again, "%s://%s%s", u.tls ? "wss" : "ws", auth, u.path);
        CHECK(url_parse(again, &u2, NULL) == 0);
        CHECK(u2.tls == u.tls && u2.port == u.port && u2.ipv6_literal == u.ipv6_literal);
        CHECK(strcmp(u2.host, u.host) == 0 && strcmp(u2.path, u.path) == 0);
        free(again);
    } else {
        CHECK(cause != NULL);
    }
    free(s);
}

/* Escaped output is always one valid JSON string, whatever the cap. */
static void fuzz_escape(const char *buf, size_t size, size_t small)
{
    size_t cap = size * 6 + 3;
    char *out = malloc(cap);
    struct json_span s;
    size_t n;

    CHECK(out != NULL);
    n = json_escape(out, cap, buf, size);
    CHECK(n < cap && out[n] == '\0');
    CHECK(json_validate(out, n, &s) == 0 && s.type == JSON_STRING && s.len == n);
    n = json_escape(out, small, buf, size);
    CHECK(n < small && out[n] == '\0');
    CHECK(json_validate(out, n, &s) == 0 && s.type == JSON_STRING);
    free(out);
    out = malloc(size + 128);
    CHECK(out != NULL);
    {
        char *msg = malloc(size + 1);
        struct jsonrpc_msg m;

        CHECK(msg != NULL);
        memcpy(msg, buf, size);
        msg[size] = '\0';
        n = jsonrpc_error_null(out, size + 128, -32000, msg);
        CHECK(jsonrpc_scan(out, n, &m) == 0 && m.kind == JSONRPC_KIND_RESPONSE);
        free(msg);
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    /* The first byte picks sizes; all parsers still see every byte. */
    unsigned char p = size > 0 ? data[0] : 0;

    fuzz_json(buf, size, (size_t)(p % 13) + 1);
    fuzz_ndjson(buf, size, (size_t)(p % 64));
    fuzz_http(buf, size);
    fuzz_url(buf, size);
    fuzz_escape(buf, size, (size_t)(p % 16) + 3);
    return 0;
}
