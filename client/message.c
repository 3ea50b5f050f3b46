/*
 * The parts of libsubpool that need no connection: error strings, socket
 * path resolution, and reading replies. Replies are located with the
 * protocol/ scanner (jsonrpc_scan, json_object_next), never copied; only
 * JSON strings a caller wants as C text are decoded here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "json.h"
#include "jsonrpc.h"
#include "subpool.h"

const char *subpool_strerror(int err)
{
    switch (err) {
    case SUBPOOL_OK:
        return "success";
    case SUBPOOL_E_INVAL:
        return "invalid argument";
    case SUBPOOL_E_NOMEM:
        return "out of memory";
    case SUBPOOL_E_CONNECT:
        return "cannot connect to subpoold";
    case SUBPOOL_E_TIMEOUT:
        return "timed out waiting for the reply";
    case SUBPOOL_E_CLOSED:
        return "subpoold closed the connection";
    case SUBPOOL_E_IO:
        return "socket read or write failed";
    case SUBPOOL_E_PROTOCOL:
        return "not the JSON-RPC message expected";
    case SUBPOOL_E_TOOBIG:
        return "reply too large";
    case SUBPOOL_E_RPC:
        return "JSON-RPC error reply";
    case SUBPOOL_E_CANCELED:
        return "canceled";
    case SUBPOOL_E_NOTFOUND:
        return "no such request or subscription";
    case SUBPOOL_E_BUSY:
        return "not allowed inside a callback";
    default:
        return "unknown error";
    }
}

const char *subpool_version(void)
{
    return SUBPOOL_VERSION;
}

static int path_copy(const char *path, char *buf, size_t cap)
{
    size_t n = strlen(path);

    if (buf == NULL || n + 1 > cap || n + 1 > sizeof(((struct sockaddr_un *)0)->sun_path))
        return SUBPOOL_E_INVAL;
    memcpy(buf, path, n + 1);
    return 0;
}

int subpool_socket_path(const char *path, char *buf, size_t cap)
{
    const char *env;

    if (path && *path)
        return path_copy(path, buf, cap);
    env = getenv("SUBPOOL_SOCKET");
    if (env && *env)
        return path_copy(env, buf, cap);
    if (access(SUBPOOL_SOCKET_SYSTEM, F_OK) == 0)
        return path_copy(SUBPOOL_SOCKET_SYSTEM, buf, cap);
    env = getenv("XDG_RUNTIME_DIR");
    if (env && *env) {
        char user[SUBPOOL_PATH_MAX];
        int n = snprintf(user, sizeof(user), "%s/%s", env, SUBPOOL_SOCKET_NAME);

        if (n < 0 || (size_t)n >= sizeof(user))
            return SUBPOOL_E_INVAL;
        return path_copy(user, buf, cap);
    }
    return path_copy(SUBPOOL_SOCKET_SYSTEM, buf, cap);
}

static struct subpool_span span_of(const struct json_span *s)
{
    struct subpool_span out = {s->off, s->type == JSON_NONE ? 0 : s->len};
    return out;
}

static bool key_eq(const char *text, const struct json_span *key, const char *lit)
{
    return json_string_eq(text, key, lit);
}

/* An integer JSON number that fits in long long; anything else leaves *ret alone. */
static void number_to_ll(const char *text, const struct json_span *s, long long *ret)
{
    char digits[24];
    char *end;
    long long v;

    if (s->type != JSON_NUMBER || s->len >= sizeof(digits))
        return;
    memcpy(digits, text + s->off, s->len);
    digits[s->len] = '\0';
    v = strtoll(digits, &end, 10);
    if (*end == '\0')
        *ret = v;
}

static void error_members(const char *text, const struct json_span *err,
                          struct subpool_message *ret)
{
    struct json_span key, val;
    size_t pos = 0;

    if (err->type != JSON_OBJECT)
        return;
    while (json_object_next(text, err, &pos, &key, &val) == 1) {
        if (key_eq(text, &key, "code"))
            number_to_ll(text, &val, &ret->code);
        else if (key_eq(text, &key, "message") && val.type == JSON_STRING)
            ret->message = span_of(&val);
        else if (key_eq(text, &key, "data"))
            ret->data = span_of(&val);
    }
}

int subpool_message_parse(const char *text, size_t len, struct subpool_message *ret)
{
    struct jsonrpc_msg m;
    struct subpool_message out;
    int err;

    if (text == NULL || ret == NULL)
        return SUBPOOL_E_INVAL;
    memset(&out, 0, sizeof(out));
    err = jsonrpc_scan(text, len, &m);
    /*
     * A reply whose envelope is slightly off (say both result and error) is
     * still read: errors from the node pass through subpool untouched, and
     * the caller is better served by what is there than by nothing.
     */
    if (err == JSONRPC_PARSE_ERROR || m.whole.type != JSON_OBJECT) {
        *ret = out;
        return SUBPOOL_E_PROTOCOL;
    }
    out.id = span_of(&m.id);
    if (m.kind == JSONRPC_KIND_NOTIFICATION) {
        out.method = span_of(&m.method);
        out.result = span_of(&m.sub_result);
        out.subscription = span_of(&m.sub);
        *ret = out;
        return 0;
    }
    if (m.kind != JSONRPC_KIND_RESPONSE) {
        *ret = out;
        return SUBPOOL_E_PROTOCOL;
    }
    if (m.error.type != JSON_NONE) {
        out.error = span_of(&m.error);
        error_members(text, &m.error, &out);
        *ret = out;
        return SUBPOOL_E_RPC;
    }
    if (m.result.type == JSON_NONE) {
        *ret = out;
        return SUBPOOL_E_PROTOCOL;
    }
    out.result = span_of(&m.result);
    *ret = out;
    return 0;
}

int subpool_error_message(const char *text, size_t len, long long *ret_code, char *buf, size_t cap)
{
    struct subpool_message m;

    if (subpool_message_parse(text, len, &m) != SUBPOOL_E_RPC)
        return SUBPOOL_E_PROTOCOL;
    if (ret_code)
        *ret_code = m.code;
    if (buf && cap) {
        buf[0] = '\0';
        if (m.message.len)
            (void)subpool_string_decode(text, &m.message, buf, cap);
    }
    return 0;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static long hex4_at(const char *p, const char *end)
{
    long v = 0;

    if (end - p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        int h = hex_value(p[i]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

static size_t utf8_encode(unsigned long cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/*
 * One character of a JSON string body at *p: its UTF-8 bytes into out.
 * Returns their count, or 0 for a malformed escape. Lone surrogates cannot
 * occur in scanner-validated text; elsewhere they become U+FFFD.
 */
static size_t string_char(const char **p, const char *end, char out[4])
{
    const char *s = *p;
    long cp, lo;

    if (*s != '\\') {
        size_t n = json_utf8_len((const unsigned char *)s, (size_t)(end - s));
        if (n == 0)
            n = 1; /* not from the scanner: pass the byte through rather than loop */
        memcpy(out, s, n);
        *p = s + n;
        return n;
    }
    if (end - s < 2)
        return 0;
    *p = s + 2;
    switch (s[1]) {
    case '"':
    case '\\':
    case '/':
        out[0] = s[1];
        return 1;
    case 'b':
        out[0] = '\b';
        return 1;
    case 'f':
        out[0] = '\f';
        return 1;
    case 'n':
        out[0] = '\n';
        return 1;
    case 'r':
        out[0] = '\r';
        return 1;
    case 't':
        out[0] = '\t';
        return 1;
    case 'u':
        break;
    default:
        return 0;
    }
    cp = hex4_at(s + 2, end);
    if (cp < 0)
        return 0;
    *p = s + 6;
    if (cp >= 0xd800 && cp < 0xdc00 && end - *p >= 6 && (*p)[0] == '\\' && (*p)[1] == 'u' &&
        (lo = hex4_at(*p + 2, end)) >= 0xdc00 && lo < 0xe000) {
        *p += 6;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    } else if (cp >= 0xd800 && cp < 0xe000) {
        cp = 0xfffd;
    }
    return utf8_encode((unsigned long)cp, out);
}

int subpool_string_decode(const char *text, const struct subpool_span *s, char *buf, size_t cap)
{
    const char *p, *end;
    size_t used = 0;

    if (text == NULL || s == NULL || buf == NULL || cap == 0)
        return SUBPOOL_E_INVAL;
    buf[0] = '\0';
    if (s->len < 2 || text[s->off] != '"' || text[s->off + s->len - 1] != '"')
        return SUBPOOL_E_INVAL;
    p = text + s->off + 1;
    end = text + s->off + s->len - 1;
    while (p < end) {
        char ch[4];
        size_t n = string_char(&p, end, ch);

        if (n == 0)
            return SUBPOOL_E_INVAL;
        if (used + n + 1 > cap)
            return SUBPOOL_E_TOOBIG;
        memcpy(buf + used, ch, n);
        used += n;
        buf[used] = '\0';
    }
    return 0;
}
