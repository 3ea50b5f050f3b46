/*
 * HTTP/1.x head parsing for the WebSocket upgrade, strict enough that a
 * malformed or smuggling-shaped head is refused rather than guessed at, and
 * the two computed handshake values (a random key and its accept hash).
 */
#include "http.h"

#include <errno.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/* RFC 9110 tchar: the bytes allowed in methods and header names. */
static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Field values and reason phrases: HTAB, SP, VCHAR, obs-text. No other control bytes. */
static bool is_field_byte(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

static bool case_eq(const char *a, const char *b, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (lower((unsigned char)a[k]) != lower((unsigned char)b[k]))
            return false;
    return true;
}

/*
 * The line starting at buf[i]: *ret_end is where its content ends (before
 * CRLF or a bare LF) and *ret_next where the next line starts. 0 when no LF
 * is in buf[i..len) yet.
 */
static int next_line(const char *buf, size_t len, size_t i, size_t *ret_end, size_t *ret_next)
{
    const char *nl = i < len ? memchr(buf + i, '\n', len - i) : NULL;
    size_t e;

    if (nl == NULL)
        return 0;
    e = (size_t)(nl - buf);
    *ret_next = e + 1;
    if (e > i && buf[e - 1] == '\r')
        e--;
    *ret_end = e;
    return 1;
}

/* "HTTP/x.y" at p[0..8), one digit each. */
static int parse_version(const char *p, struct http_head *h)
{
    if (memcmp(p, "HTTP/", 5) != 0 || p[5] < '0' || p[5] > '9' || p[6] != '.' || p[7] < '0' ||
        p[7] > '9')
        return -1;
    h->major_version = p[5] - '0';
    h->minor_version = p[7] - '0';
    return 0;
}

static int parse_request_line(const char *buf, size_t end, struct http_head *h)
{
    size_t i = 0, m, t;

    while (i < end && is_tchar((unsigned char)buf[i]))
        i++;
    if (i == 0 || i >= end || buf[i] != ' ')
        return -1;
    m = i++;
    t = i;
    while (i < end && (unsigned char)buf[i] > 0x20 && (unsigned char)buf[i] < 0x7f)
        i++;
    if (i == t || i >= end || buf[i] != ' ')
        return -1;
    h->method.p = buf;
    h->method.len = m;
    h->target.p = buf + t;
    h->target.len = i - t;
    i++;
    if (end - i != 8)
        return -1;
    return parse_version(buf + i, h);
}

static int parse_status_line(const char *buf, size_t end, struct http_head *h)
{
    size_t i;

    if (end < 12 || parse_version(buf, h) < 0 || h->major_version != 1 || buf[8] != ' ')
        return -1;
    for (i = 9; i < 12; i++)
        if (buf[i] < '0' || buf[i] > '9')
            return -1;
    h->status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
    /* RFC 9112 wants "SP reason" but asks clients to accept a missing one. */
    if (end == 12) {
        h->reason.p = buf + 12;
        h->reason.len = 0;
        return 0;
    }
    if (buf[12] != ' ')
        return -1;
    for (i = 13; i < end; i++)
        if (!is_field_byte((unsigned char)buf[i]))
            return -1;
    h->reason.p = buf + 13;
    h->reason.len = end - 13;
    return 0;
}

static int parse_header(const char *buf, size_t i, size_t end, struct http_header *ret)
{
    size_t n = i, v, ve;

    while (n < end && is_tchar((unsigned char)buf[n]))
        n++;
    /* No space before the colon: RFC 9112 says reject, it is a smuggling vector. */
    if (n == i || n >= end || buf[n] != ':')
        return -1;
    v = n + 1;
    while (v < end && (buf[v] == ' ' || buf[v] == '\t'))
        v++;
    ve = end;
    while (ve > v && (buf[ve - 1] == ' ' || buf[ve - 1] == '\t'))
        ve--;
    for (size_t k = v; k < ve; k++)
        if (!is_field_byte((unsigned char)buf[k]))
            return -1;
    ret->name.p = buf + i;
    ret->name.len = n - i;
    ret->value.p = buf + v;
    ret->value.len = ve - v;
    return 0;
}

static int parse_head(const char *buf, size_t len, bool request, struct http_head *ret)
{
    struct http_head h;
    /* Only the first HTTP_MAX_HEAD bytes may hold the head; past that it is too long. */
    size_t lim = len < HTTP_MAX_HEAD ? len : HTTP_MAX_HEAD;
    int incomplete = len >= HTTP_MAX_HEAD ? -1 : 0;
    size_t i, end, next;

    memset(&h, 0, sizeof(h));
    if (!next_line(buf, lim, 0, &end, &next))
        return incomplete;
    if ((request ? parse_request_line(buf, end, &h) : parse_status_line(buf, end, &h)) < 0)
        return -1;
    i = next;
    for (;;) {
        if (!next_line(buf, lim, i, &end, &next))
            return incomplete;
        if (end == i) {
            h.head_len = next;
            *ret = h;
            return 1;
        }
        if (buf[i] == ' ' || buf[i] == '\t')
            return -1; /* obs-fold */
        if (h.n_headers == HTTP_MAX_HEADERS)
            return -1;
        if (parse_header(buf, i, end, &h.headers[h.n_headers]) < 0)
            return -1;
        h.n_headers++;
        i = next;
    }
}

int http_parse_request(const char *buf, size_t len, struct http_head *ret)
{
    return parse_head(buf, len, true, ret);
}

int http_parse_response(const char *buf, size_t len, struct http_head *ret)
{
    return parse_head(buf, len, false, ret);
}

const struct http_str *http_header(const struct http_head *h, const char *name)
{
    size_t n = strlen(name);

    for (size_t k = 0; k < h->n_headers; k++) {
        const struct http_str *hn = &h->headers[k].name;

        if (hn->len == n && case_eq(hn->p, name, n))
            return &h->headers[k].value;
    }
    return NULL;
}

int http_header_once(const struct http_head *h, const char *name, bool same_ok,
                     const struct http_str **ret)
{
    const struct http_str *first = NULL;
    size_t n = strlen(name);

    for (size_t k = 0; k < h->n_headers; k++) {
        const struct http_str *hn = &h->headers[k].name, *v = &h->headers[k].value;

        if (hn->len != n || !case_eq(hn->p, name, n))
            continue;
        if (first && (!same_ok || first->len != v->len || memcmp(first->p, v->p, v->len) != 0))
            return -1;
        if (!first)
            first = v;
    }
    *ret = first;
    return 0;
}

bool http_has_token(const struct http_str *value, const char *token)
{
    size_t tn = strlen(token), i = 0;

    if (value == NULL)
        return false;
    while (i <= value->len) {
        size_t s = i, e;

        while (i < value->len && value->p[i] != ',')
            i++;
        e = i;
        while (s < e && (value->p[s] == ' ' || value->p[s] == '\t'))
            s++;
        while (e > s && (value->p[e - 1] == ' ' || value->p[e - 1] == '\t'))
            e--;
        if (e - s == tn && case_eq(value->p + s, token, tn))
            return true;
        i++; /* past the comma (or the end) */
    }
    return false;
}

int ws_make_key(char out[WS_KEY_LEN + 1])
{
    unsigned char raw[16];

    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return -EIO;
    EVP_EncodeBlock((unsigned char *)out, raw, sizeof(raw)); /* 24 chars and a NUL */
    return 0;
}

int ws_accept(const char *key, size_t key_len, char out[WS_ACCEPT_LEN + 1])
{
    unsigned char in[WS_KEY_MAX + sizeof(ws_guid)];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;

    if (key_len == 0 || key_len > WS_KEY_MAX)
        return -EINVAL;
    memcpy(in, key, key_len);
    memcpy(in + key_len, ws_guid, sizeof(ws_guid) - 1);
    if (EVP_Digest(in, key_len + sizeof(ws_guid) - 1, md, &md_len, EVP_sha1(), NULL) != 1 ||
        md_len != 20)
        return -EIO;
    EVP_EncodeBlock((unsigned char *)out, md, 20); /* 28 chars and a NUL */
    return 0;
}

size_t ws_frame_head(uint8_t out[WS_HEAD_MAX], unsigned opcode, uint64_t len, const uint8_t *mask)
{
    size_t n = 2;

    out[0] = (uint8_t)(0x80 | (opcode & 0x0f));
    if (len < 126) {
        out[1] = (uint8_t)len;
    } else if (len <= 0xffff) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        n = 4;
    } else {
        out[1] = 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        n = 10;
    }
    if (mask) {
        out[1] |= 0x80;
        memcpy(out + n, mask, 4);
        n += 4;
    }
    return n;
}

int ws_frame_parse(const uint8_t *p, size_t n, struct ws_frame *f)
{
    size_t head = 2;
    uint64_t len;

    *f = (struct ws_frame){0};
    if (n < 2)
        return 0;
    len = p[1] & 0x7f;
    if (len >= 126)
        head = len == 126 ? 4 : 10;
    f->masked = (p[1] & 0x80) != 0;
    if (n < head + (f->masked ? 4 : 0))
        return 0;
    if (len == 126) {
        len = (uint64_t)p[2] << 8 | p[3];
        if (len < 126)
            return -1;
    } else if (len == 127) {
        len = 0;
        for (int i = 2; i < 10; i++)
            len = len << 8 | p[i];
        if (len <= 0xffff || len >> 63)
            return -1;
    }
    f->fin = (p[0] & 0x80) != 0;
    f->rsv = (p[0] >> 4) & 7;
    f->opcode = p[0] & 0x0f;
    f->len = len;
    if (f->masked) {
        memcpy(f->mask, p + head, 4);
        head += 4;
    }
    return (int)head;
}

void ws_mask_copy(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t mask[4])
{
    uint32_t m, w;
    size_t i = 0;

    memcpy(&m, mask, 4);
    for (; i + 4 <= n; i += 4) {
        memcpy(&w, src + i, 4);
        w ^= m;
        memcpy(dst + i, &w, 4);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ mask[i & 3];
}
