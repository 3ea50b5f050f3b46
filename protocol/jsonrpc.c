/*
 * JSON-RPC 2.0 envelopes: classify a validated object as request,
 * notification or response and locate its members, and write the few
 * error objects subpool produces itself, byte for byte.
 */
#include "jsonrpc.h"

#include <stdio.h>
#include <string.h>

enum envelope_field {
    FIELD_JSONRPC,
    FIELD_ID,
    FIELD_METHOD,
    FIELD_PARAMS,
    FIELD_RESULT,
    FIELD_ERROR,
    FIELD_COUNT,
};

static bool key_is(const char *k, size_t n, const char *lit, size_t lit_len)
{
    return n == lit_len && memcmp(k, lit, n) == 0;
}

/* The envelope member named by raw key bytes k[0..n), or -1. */
static int field_named(const char *k, size_t n)
{
    switch (n) {
    case 2:
        return key_is(k, n, "id", 2) ? FIELD_ID : -1;
    case 5:
        return key_is(k, n, "error", 5) ? FIELD_ERROR : -1;
    case 6:
        if (key_is(k, n, "method", 6))
            return FIELD_METHOD;
        if (key_is(k, n, "params", 6))
            return FIELD_PARAMS;
        if (key_is(k, n, "result", 6))
            return FIELD_RESULT;
        return -1;
    case 7:
        return key_is(k, n, "jsonrpc", 7) ? FIELD_JSONRPC : -1;
    default:
        return -1;
    }
}

static int hex_digit(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/*
 * A validated key with escapes, decoded into out (room for 8) when it is
 * ASCII and short enough to be an envelope member's name. Returns its
 * length, or -1 when it cannot name one.
 */
static int unescape_short(const char *k, size_t n, char out[8])
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        char c = k[i];
        if (o == 8)
            return -1;
        if (c == '\\') {
            c = k[++i];
            /* \b \f \n \r \t are control characters: never part of a member's name. */
            if (c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't')
                return -1;
            if (c == 'u') {
                int v = 0;
                for (int d = 1; d <= 4; d++)
                    v = v * 16 + hex_digit(k[i + (size_t)d]);
                if (v <= 0 || v > 0x7f)
                    return -1;
                c = (char)v;
                i += 4;
            }
        }
        out[o++] = c;
    }
    return (int)o;
}

/*
 * Which envelope member a key names, or -1. Keys are first compared as raw
 * bytes; only a key with a backslash short enough to name a member once
 * decoded ("\u0069d" is "id") is decoded, so writing a key with escapes can
 * never hide a member (and with it a reply) from us.
 */
static int envelope_field(const char *buf, const struct json_span *key)
{
    const char *k = buf + key->off + 1;
    size_t n = key->len - 2;
    int f = field_named(k, n);
    char plain[8];
    int len;

    if (f >= 0 || n > 7 * 6 || !memchr(k, '\\', n))
        return f;
    len = unescape_short(k, n, plain);
    return len < 0 ? -1 : field_named(plain, (size_t)len);
}

/* params.subscription and params.result of a subscription notification (first occurrences). */
static void scan_notification_params(const char *buf, struct jsonrpc_msg *m)
{
    struct json_span key, val;
    size_t pos = 0;

    while (json_object_next(buf, &m->params, &pos, &key, &val) == 1) {
        const char *k = buf + key.off + 1;
        size_t n = key.len - 2;

        if (m->sub.type == JSON_NONE && key_is(k, n, "subscription", 12))
            m->sub = val;
        else if (m->sub_result.type == JSON_NONE && key_is(k, n, "result", 6))
            m->sub_result = val;
    }
}

static bool is_present(const struct json_span *s)
{
    return s->type != JSON_NONE;
}

/*
 * Members are collected first and judged after (envelope_judge): the id must be
 * found even when an earlier member is bad.
 */
struct envelope {
    const char *buf;
    struct json_span f[FIELD_COUNT];
    bool bad;
};

static void envelope_collect(void *arg, const struct json_span *key, const struct json_span *val)
{
    struct envelope *e = arg;
    int k = envelope_field(e->buf, key);

    if (k < 0)
        return;
    if (is_present(&e->f[k]))
        e->bad = true; /* duplicate: the first one is kept for the echo */
    else
        e->f[k] = *val;
}

static int envelope_judge(const char *buf, const struct json_span *elem,
                          const struct json_span f[FIELD_COUNT], bool bad, struct jsonrpc_msg *ret)
{
    struct jsonrpc_msg m;

    memset(&m, 0, sizeof(m));
    m.whole = *elem;

    /* An id of the wrong type is not echoed: the reply then carries null, as JSON-RPC asks. */
    switch (f[FIELD_ID].type) {
    case JSON_NONE:
        break;
    case JSON_STRING:
    case JSON_NUMBER:
    case JSON_NULL:
        m.id = f[FIELD_ID];
        break;
    default:
        bad = true;
        break;
    }

    if (!json_string_eq(buf, &f[FIELD_JSONRPC], "2.0"))
        bad = true;

    if (is_present(&f[FIELD_METHOD])) {
        m.kind = is_present(&f[FIELD_ID]) ? JSONRPC_KIND_REQUEST : JSONRPC_KIND_NOTIFICATION;
        m.method = f[FIELD_METHOD];
        m.params = f[FIELD_PARAMS];
        if (m.method.type != JSON_STRING)
            bad = true;
        if (is_present(&m.params) && m.params.type != JSON_ARRAY && m.params.type != JSON_OBJECT)
            bad = true;
        if (is_present(&f[FIELD_RESULT]) || is_present(&f[FIELD_ERROR]))
            bad = true;
        if (m.kind == JSONRPC_KIND_NOTIFICATION && m.params.type == JSON_OBJECT)
            scan_notification_params(buf, &m);
    } else {
        m.kind = JSONRPC_KIND_RESPONSE;
        m.result = f[FIELD_RESULT];
        m.error = f[FIELD_ERROR];
        if (!is_present(&f[FIELD_ID]) || is_present(&f[FIELD_PARAMS]))
            bad = true;
        if (is_present(&m.result) == is_present(&m.error))
            bad = true;
    }

    *ret = m;
    return bad ? JSONRPC_INVALID_REQUEST : 0;
}

/* Not an object: invalid, with nothing found but the element itself. */
static int envelope_not_object(const struct json_span *elem, struct jsonrpc_msg *ret)
{
    memset(ret, 0, sizeof(*ret));
    ret->whole = *elem;
    return JSONRPC_INVALID_REQUEST;
}

int jsonrpc_scan_span(const char *buf, const struct json_span *elem, struct jsonrpc_msg *ret)
{
    struct envelope e = {.buf = buf};
    struct json_span key, val;
    size_t pos = 0;

    if (elem->type != JSON_OBJECT)
        return envelope_not_object(elem, ret);
    while (json_object_next(buf, elem, &pos, &key, &val) == 1)
        envelope_collect(&e, &key, &val);
    return envelope_judge(buf, elem, e.f, e.bad, ret);
}

int jsonrpc_scan(const char *buf, size_t len, struct jsonrpc_msg *ret)
{
    struct envelope e = {.buf = buf};
    struct json_span whole;

    /* One pass validates and finds the members: a large result is not read twice. */
    if (json_validate_members(buf, len, &whole, envelope_collect, &e) < 0) {
        /* Cleared, not left alone: callers pick the id before looking at the code. */
        memset(ret, 0, sizeof(*ret));
        return JSONRPC_PARSE_ERROR;
    }
    if (whole.type != JSON_OBJECT)
        return envelope_not_object(&whole, ret);
    return envelope_judge(buf, &whole, e.f, e.bad, ret);
}

bool jsonrpc_is_batch(const char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];

        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            return c == '[';
    }
    return false;
}

size_t jsonrpc_format_u64(char out[21], uint64_t v)
{
    char tmp[20];
    size_t n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t k = 0; k < n; k++)
        out[k] = tmp[n - 1 - k];
    out[n] = '\0';
    return n;
}

size_t json_escape(char *out, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0, i = 0;

    /* Room for the two quotes and a NUL is the least we need to say anything. */
    if (cap < 3) {
        if (cap > 0)
            out[0] = '\0';
        return 0;
    }
    out[o++] = '"';
    while (i < len) {
        unsigned char c = u[i];
        char esc[6];
        const char *src = esc;
        size_t n, adv = 1;

        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            n = 2;
        } else if (c < 0x20) {
            const char *shortf = NULL;

            switch (c) {
            case '\b':
                shortf = "\\b";
                break;
            case '\f':
                shortf = "\\f";
                break;
            case '\n':
                shortf = "\\n";
                break;
            case '\r':
                shortf = "\\r";
                break;
            case '\t':
                shortf = "\\t";
                break;
            default:
                break;
            }
            if (shortf) {
                src = shortf;
                n = 2;
            } else {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                n = 6;
            }
        } else if (c < 0x80) {
            src = s + i;
            n = 1;
        } else {
            /* Bad UTF-8 (say, from a peer's error text) becomes U+FFFD so the output stays JSON. */
            n = json_utf8_len(u + i, len - i);
            if (n == 0) {
                src = "\\ufffd";
                n = 6;
            } else {
                src = s + i;
                adv = n;
            }
        }
        /* Never split an escape or a character; keep room for the closing quote and NUL. */
        if (o + n > cap - 2)
            break;
        memcpy(out + o, src, n);
        o += n;
        i += adv;
    }
    out[o++] = '"';
    out[o] = '\0';
    return o;
}

static const char head_a[] = "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":";
static const char head_b[] = ",\"message\":";
static const char head_c[] = "},\"id\":";

size_t jsonrpc_error_head(char *out, size_t cap, int code, const char *message)
{
    char num[16];
    int nn = snprintf(num, sizeof(num), "%d", code);
    size_t o = 0, fixed;

    if (message == NULL)
        message = "";
    fixed = sizeof(head_a) - 1 + (size_t)nn + sizeof(head_b) - 1 + sizeof(head_c) - 1;
    if (cap < fixed + 3) { /* "" and the NUL */
        if (cap > 0)
            out[0] = '\0';
        return 0;
    }
    memcpy(out + o, head_a, sizeof(head_a) - 1);
    o += sizeof(head_a) - 1;
    memcpy(out + o, num, (size_t)nn);
    o += (size_t)nn;
    memcpy(out + o, head_b, sizeof(head_b) - 1);
    o += sizeof(head_b) - 1;
    o += json_escape(out + o, cap - o - (sizeof(head_c) - 1), message, strlen(message));
    memcpy(out + o, head_c, sizeof(head_c) - 1);
    o += sizeof(head_c) - 1;
    out[o] = '\0';
    return o;
}

size_t jsonrpc_error_null(char *out, size_t cap, int code, const char *message)
{
    static const char tail[] = "null}";
    size_t o;

    if (cap < sizeof(tail)) {
        if (cap > 0)
            out[0] = '\0';
        return 0;
    }
    o = jsonrpc_error_head(out, cap - (sizeof(tail) - 1), code, message);
    if (o == 0)
        return 0;
    memcpy(out + o, tail, sizeof(tail)); /* with its NUL */
    return o + sizeof(tail) - 1;
}
