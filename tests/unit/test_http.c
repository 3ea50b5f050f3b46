/*
 * Unit tests for HTTP head parsing (exact fields, incremental input, every
 * rejected shape, both limits), the WebSocket key/accept computations and
 * frame heads (read back by wslay).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http.h"

#include <wslay/wslay.h>

#define LIT(s) s, sizeof(s) - 1

static void assert_str(const struct http_str *s, const char *want)
{
    assert_non_null(s);
    assert_int_equal(s->len, strlen(want));
    assert_memory_equal(s->p, want, s->len);
}

static const char upgrade_req[] = "GET /ws?x=1 HTTP/1.1\r\n"
                                  "Host: 127.0.0.1:9944\r\n"
                                  "Upgrade:websocket\r\n"
                                  "Connection: keep-alive, Upgrade \r\n"
                                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                  "Sec-WebSocket-Version: 13\r\n"
                                  "X-Empty:\r\n"
                                  "X-Pad: \t a  b \t\r\n"
                                  "\r\n";

static void test_request(void **state)
{
    static char buf[sizeof(upgrade_req) + 16];
    struct http_head h;
    size_t len = sizeof(upgrade_req) - 1;

    memcpy(buf, upgrade_req, len);
    memcpy(buf + len, "{\"body\":1}", 10); /* bytes after the head are not part of it */
    assert_int_equal(http_parse_request(buf, len + 10, &h), 1);
    assert_int_equal(h.head_len, len);
    assert_str(&h.method, "GET");
    assert_str(&h.target, "/ws?x=1");
    assert_int_equal(h.minor_version, 1);
    assert_int_equal(h.n_headers, 7);
    assert_str(&h.headers[0].name, "Host");
    assert_str(&h.headers[0].value, "127.0.0.1:9944");
    assert_str(&h.headers[1].value, "websocket");
    assert_str(&h.headers[2].value, "keep-alive, Upgrade");
    assert_str(&h.headers[5].name, "X-Empty");
    assert_str(&h.headers[5].value, "");
    assert_str(&h.headers[6].value, "a  b");
    assert_int_equal(h.headers[0].name.p - buf, 22);
    assert_int_equal(h.headers[0].value.p - buf, 28);

    assert_str(http_header(&h, "sec-websocket-key"), "dGhlIHNhbXBsZSBub25jZQ==");
    assert_str(http_header(&h, "UPGRADE"), "websocket");
    assert_null(http_header(&h, "Sec-WebSocket-Protocol"));
    assert_null(http_header(&h, "Host2"));
    assert_null(http_header(&h, "Hos"));

    assert_true(http_has_token(http_header(&h, "connection"), "upgrade"));
    assert_true(http_has_token(http_header(&h, "connection"), "Keep-Alive"));
    assert_false(http_has_token(http_header(&h, "connection"), "keep"));
    assert_false(http_has_token(http_header(&h, "connection"), "alive, Upgrade"));
    assert_true(http_has_token(http_header(&h, "upgrade"), "WebSocket"));
    assert_false(http_has_token(http_header(&h, "x-empty"), "a"));
    assert_false(http_has_token(NULL, "upgrade"));
}

static void test_incremental(void **state)
{
    size_t len = sizeof(upgrade_req) - 1;
    struct http_head h;

    /* Every proper prefix needs more; untouched *ret each time. */
    for (size_t n = 0; n < len; n++) {
        h.status = -7;
        h.n_headers = 99;
        if (http_parse_request(upgrade_req, n, &h) != 0)
            print_error("prefix %zu\n", n);
        assert_int_equal(http_parse_request(upgrade_req, n, &h), 0);
        assert_int_equal(h.status, -7);
        assert_int_equal(h.n_headers, 99);
    }
    assert_int_equal(http_parse_request(upgrade_req, len, &h), 1);
}

static void test_bare_lf(void **state)
{
    static const char r[] = "GET / HTTP/1.0\nHost: x\r\nA: b\n\nrest";
    struct http_head h;

    assert_int_equal(http_parse_request(LIT(r), &h), 1);
    assert_int_equal(h.minor_version, 0);
    assert_int_equal(h.head_len, sizeof(r) - 1 - 4);
    assert_int_equal(h.n_headers, 2);
    assert_str(&h.headers[0].value, "x");
    assert_str(&h.headers[1].value, "b");
    /* Ending on CRLF + bare LF too. */
    assert_int_equal(http_parse_request(LIT("GET / HTTP/1.1\r\n\n"), &h), 1);
    assert_int_equal(h.head_len, 17);
    assert_int_equal(h.n_headers, 0);
}

/* Any one-digit version parses; the server decides (505 for a major other than 1). */
static void test_request_versions(void **state)
{
    struct http_head h;
    (void)state;

    assert_int_equal(http_parse_request(LIT("GET / HTTP/2.0\r\n\r\n"), &h), 1);
    assert_int_equal(h.major_version, 2);
    assert_int_equal(h.minor_version, 0);
    assert_int_equal(http_parse_request(LIT("GET / HTTP/1.9\r\n\r\n"), &h), 1);
    assert_int_equal(h.major_version, 1);
    assert_int_equal(h.minor_version, 9);
    /* Responses must be HTTP/1. */
    assert_int_equal(http_parse_response(LIT("HTTP/2.0 101 x\r\n\r\n"), &h), -1);
}

static void test_header_once(void **state)
{
    static const char r[] = "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                            "content-length: 5\r\nX: 1\r\nx: 2\r\n\r\n";
    const struct http_str *v = (void *)1;
    struct http_head h;
    (void)state;

    assert_int_equal(http_parse_request(LIT(r), &h), 1);
    assert_int_equal(http_header_once(&h, "Host", false, &v), 0);
    assert_int_equal(v->len, 1);
    /* Identical duplicates may pass where the caller allows them; different ones never. */
    assert_int_equal(http_header_once(&h, "Content-Length", true, &v), 0);
    assert_int_equal(v->len, 1);
    assert_int_equal(http_header_once(&h, "Content-Length", false, &v), -1);
    assert_int_equal(http_header_once(&h, "X", true, &v), -1);
    assert_int_equal(http_header_once(&h, "Absent", false, &v), 0);
    assert_null(v);
}

static void test_request_rejects(void **state)
{
    static const char *const bad[] = {
        "GET  / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1 \r\n\r\n",
        "GET / HTTP/12.0\r\n\r\n",
        "GET / HTTP/1.x\r\n\r\n",
        "GET / HTTP/1.1 x\r\n\r\n",
        "GET / HTTP/1.\r\n\r\n",
        "GET / http/1.1\r\n\r\n",
        "GET /a\x7f HTTP/1.1\r\n\r\n",
        "GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
        "G(T / HTTP/1.1\r\n\r\n",
        " / HTTP/1.1\r\n\r\n",
        "GET HTTP/1.1\r\n\r\n",
        "GET /\r\n\r\n",
        "\r\nGET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\rX: y\r\n\r\n",
        "GET / HTTP/1.1\r\r\n\r\n",
        "GET / HTTP/1.1\r\nX: a\r\n  b\r\n\r\n", /* obs-fold */
        "GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", /* obs-fold */
        "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        "GET / HTTP/1.1\r\nHo\x01st: x\r\n\r\n",
        "GET / HTTP/1.1\r\nX: a\x01z\r\n\r\n",
        "GET / HTTP/1.1\r\nX: a\x7fz\r\n\r\n",
        "GET / HTTP/1.1\r\nX: a\rz\r\n\r\n",
        "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        "GET / HTTP/1.1\r\n: x\r\n\r\n",
        "GET / HTTP/1.1\r\n\xc3\xa9: x\r\n\r\n",
    };
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        struct http_head h;
        int rc;

        h.n_headers = 77;
        rc = http_parse_request(bad[k], strlen(bad[k]), &h);
        if (rc != -1)
            print_error("case %zu: %s\n", k, bad[k]);
        assert_int_equal(rc, -1);
        assert_int_equal(h.n_headers, 77);
    }
    /* A malformed complete line fails at once, before the head is complete. */
    assert_int_equal(http_parse_request(LIT("GET / HTTP/1.1\r\nBad Name: x\r\n"), NULL), -1);
    /* obs-text in a value is allowed. */
    {
        struct http_head h;

        assert_int_equal(http_parse_request(LIT("GET / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n"), &h),
                         1);
        assert_str(&h.headers[0].value, "caf\xc3\xa9");
    }
}

static void test_response(void **state)
{
    static const char r[] = "HTTP/1.1 101 Switching Protocols\r\n"
                            "Upgrade: websocket\r\n"
                            "Connection: Upgrade\r\n"
                            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                            "\r\n";
    struct http_head h;

    assert_int_equal(http_parse_response(LIT(r), &h), 1);
    assert_int_equal(h.status, 101);
    assert_str(&h.reason, "Switching Protocols");
    assert_int_equal(h.minor_version, 1);
    assert_int_equal(h.n_headers, 3);
    assert_int_equal(h.head_len, sizeof(r) - 1);
    assert_str(http_header(&h, "sec-websocket-accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    for (size_t n = 0; n < sizeof(r) - 1; n++)
        assert_int_equal(http_parse_response(r, n, &h), 0);

    assert_int_equal(http_parse_response(LIT("HTTP/1.1 200 \r\n\r\n"), &h), 1);
    assert_int_equal(h.status, 200);
    assert_str(&h.reason, "");
    assert_int_equal(http_parse_response(LIT("HTTP/1.0 404\r\n\r\n"), &h), 1);
    assert_int_equal(h.status, 404);
    assert_int_equal(h.minor_version, 0);
    assert_str(&h.reason, "");
    assert_int_equal(http_parse_response(LIT("HTTP/1.1 503 Busy \tnow\n\n"), &h), 1);
    assert_str(&h.reason, "Busy \tnow");

    static const char *const bad[] = {
        "HTTP/1.1 20 OK\r\n\r\n",   "HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1 abc OK\r\n\r\n",
        "HTTP/1.1  200 OK\r\n\r\n", "HTTP/2 200 OK\r\n\r\n",    "HTTP/1.1 200 O\x01K\r\n\r\n",
        "ICY 200 OK\r\n\r\n",       "HTTP/1.1\r\n\r\n",         "HTTP/1.1 101 OK\r\nA b: c\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
    };
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        if (http_parse_response(bad[k], strlen(bad[k]), &h) != -1)
            print_error("case %zu: %s\n", k, bad[k]);
        assert_int_equal(http_parse_response(bad[k], strlen(bad[k]), &h), -1);
    }
}

static void test_max_headers(void **state)
{
    char buf[4096];
    struct http_head h;
    size_t n = (size_t)sprintf(buf, "GET / HTTP/1.1\r\n");

    for (int k = 0; k < HTTP_MAX_HEADERS; k++)
        n += (size_t)sprintf(buf + n, "H%d: %d\r\n", k, k);
    memcpy(buf + n, "\r\n", 2);
    assert_int_equal(http_parse_request(buf, n + 2, &h), 1);
    assert_int_equal(h.n_headers, HTTP_MAX_HEADERS);
    assert_str(&h.headers[HTTP_MAX_HEADERS - 1].name, "H47");
    n += (size_t)sprintf(buf + n, "One: more\r\n\r\n");
    assert_int_equal(http_parse_request(buf, n, &h), -1);
}

static void test_max_head(void **state)
{
    char *buf = malloc(HTTP_MAX_HEAD + 64);
    struct http_head h;
    size_t pre = (size_t)sprintf(buf, "GET / HTTP/1.1\r\nX: ");
    size_t fill = HTTP_MAX_HEAD - pre - 4; /* "\r\n\r\n" ends it */

    assert_non_null(buf);
    memset(buf + pre, 'a', fill);
    memcpy(buf + pre + fill, "\r\n\r\n", 4);
    /* Exactly HTTP_MAX_HEAD bytes: accepted. */
    assert_int_equal(http_parse_request(buf, HTTP_MAX_HEAD, &h), 1);
    assert_int_equal(h.head_len, HTTP_MAX_HEAD);
    assert_int_equal(h.headers[0].value.len, fill);
    /* One more byte of value: refused, complete or not. */
    memset(buf + pre, 'a', fill + 1);
    memcpy(buf + pre + fill + 1, "\r\n\r\n", 4);
    assert_int_equal(http_parse_request(buf, HTTP_MAX_HEAD + 1, &h), -1);
    assert_int_equal(http_parse_request(buf, HTTP_MAX_HEAD, &h), -1);
    assert_int_equal(http_parse_request(buf, HTTP_MAX_HEAD - 1, &h), 0);
    /* No line end at all: still only "more" below the limit. */
    memset(buf, 'G', HTTP_MAX_HEAD + 1);
    assert_int_equal(http_parse_request(buf, HTTP_MAX_HEAD - 1, &h), 0);
    assert_int_equal(http_parse_request(buf, HTTP_MAX_HEAD + 1, &h), -1);
    free(buf);
}

static void test_ws_accept(void **state)
{
    char out[WS_ACCEPT_LEN + 1];
    char key[WS_KEY_MAX + 1];

    memset(out, 'z', sizeof(out));
    assert_int_equal(ws_accept(LIT("dGhlIHNhbXBsZSBub25jZQ=="), out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_int_equal(strlen(out), WS_ACCEPT_LEN);

    memset(key, 'k', sizeof(key));
    assert_int_equal(ws_accept(key, WS_KEY_MAX, out), 0);
    assert_int_equal(strlen(out), WS_ACCEPT_LEN);
    strcpy(out, "unchanged");
    assert_int_equal(ws_accept(key, WS_KEY_MAX + 1, out), -EINVAL);
    assert_int_equal(ws_accept(key, 0, out), -EINVAL);
    assert_string_equal(out, "unchanged");
}

static void test_ws_make_key(void **state)
{
    char a[WS_KEY_LEN + 1], b[WS_KEY_LEN + 1], acc[WS_ACCEPT_LEN + 1];

    assert_int_equal(ws_make_key(a), 0);
    assert_int_equal(ws_make_key(b), 0);
    assert_int_equal(strlen(a), WS_KEY_LEN);
    assert_string_not_equal(a, b);
    /* 16 bytes of base64: 22 significant characters and "==". */
    assert_memory_equal(a + 22, "==", 2);
    for (int k = 0; k < 22; k++)
        assert_non_null(
            strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", a[k]));
    assert_int_equal(ws_accept(a, WS_KEY_LEN, acc), 0);
}

/* Frames read back by wslay's own parser: the head layout, the mask and the payload. */
struct feed {
    const uint8_t *p;
    size_t n, off;
};

static ssize_t feed_recv(uint8_t *buf, size_t len, int flags, void *user_data)
{
    struct feed *f = user_data;
    size_t n = f->n - f->off < len ? f->n - f->off : len;
    (void)flags;
    if (n == 0)
        return -1;
    memcpy(buf, f->p + f->off, n);
    f->off += n;
    return (ssize_t)n;
}

static void check_frame(uint64_t len, bool masked)
{
    static const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    struct wslay_frame_callbacks cbs = {.recv_callback = feed_recv};
    uint8_t *frame = malloc(WS_HEAD_MAX + len), *got = malloc(len + 1), *src = malloc(len + 1);
    wslay_frame_context_ptr ctx;
    struct wslay_frame_iocb io;
    size_t have = 0;

    assert_non_null(frame);
    for (uint64_t i = 0; i < len; i++)
        src[i] = (uint8_t)(i * 7 + 3);
    size_t head = ws_frame_head(frame, WSLAY_TEXT_FRAME, len, masked ? mask : NULL);
    assert_true(head <= WS_HEAD_MAX);
    assert_int_equal(head, (len < 126 ? 2 : len < 65536 ? 4 : 10) + (masked ? 4 : 0));
    if (masked)
        ws_mask_copy(frame + head, src, len, mask);
    else
        memcpy(frame + head, src, len);
    /* ws_frame_parse reads the same head back, and nothing from a shorter prefix. */
    struct ws_frame fr;
    assert_int_equal(ws_frame_parse(frame, head + len, &fr), (int)head);
    assert_true(fr.fin);
    assert_int_equal(fr.rsv, 0);
    assert_int_equal(fr.opcode, WSLAY_TEXT_FRAME);
    assert_int_equal(fr.masked, masked);
    assert_int_equal(fr.len, len);
    if (masked)
        assert_memory_equal(fr.mask, mask, 4);
    for (size_t k = 0; k < head; k++)
        assert_int_equal(ws_frame_parse(frame, k, &fr), 0);
    struct feed f = {frame, head + len, 0};
    assert_int_equal(wslay_frame_context_init(&ctx, &cbs, &f), 0);
    do {
        memset(&io, 0, sizeof(io));
        ssize_t r = wslay_frame_recv(ctx, &io);
        assert_true(r >= 0);
        assert_int_equal(io.fin, 1);
        assert_int_equal(io.rsv, 0);
        assert_int_equal(io.opcode, WSLAY_TEXT_FRAME);
        assert_int_equal(io.mask, masked);
        assert_int_equal(io.payload_length, len);
        assert_true(have + io.data_length <= len);
        memcpy(got + have, io.data, io.data_length);
        have += io.data_length;
    } while (have < len);
    assert_int_equal(f.off, f.n);
    assert_memory_equal(got, src, len);
    wslay_frame_context_free(ctx);
    free(frame);
    free(got);
    free(src);
}

static void test_ws_frame_head(void **state)
{
    static const uint64_t lens[] = {0, 1, 3, 4, 5, 125, 126, 127, 65535, 65536, 70001};

    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        check_frame(lens[i], false);
        check_frame(lens[i], true);
    }
}

static void test_ws_frame_parse_rejects(void **state)
{
    /* Lengths not in their shortest form, or with the top bit set (RFC 6455, 5.2). */
    static const uint8_t bad16[] = {0x81, 126, 0, 125};
    static const uint8_t bad64[] = {0x82, 127, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t top64[] = {0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0};
    /* Smallest good ones, with every header bit set: read as given. */
    static const uint8_t ok16[] = {0xff, 0x80 | 126, 0, 126, 1, 2, 3, 4};
    static const uint8_t ok64[] = {0x0a, 127, 0, 0, 0, 0, 0, 1, 0, 0};
    struct ws_frame f;
    (void)state;

    assert_int_equal(ws_frame_parse(bad16, sizeof(bad16), &f), -1);
    assert_int_equal(ws_frame_parse(bad64, sizeof(bad64), &f), -1);
    assert_int_equal(ws_frame_parse(top64, sizeof(top64), &f), -1);
    assert_int_equal(ws_frame_parse(ok16, sizeof(ok16), &f), 8);
    assert_true(f.fin && f.masked);
    assert_int_equal(f.rsv, 7);
    assert_int_equal(f.opcode, 15);
    assert_int_equal(f.len, 126);
    assert_memory_equal(f.mask, ok16 + 4, 4);
    assert_int_equal(ws_frame_parse(ok64, sizeof(ok64), &f), 10);
    assert_false(f.fin || f.masked);
    assert_int_equal(f.opcode, 10);
    assert_int_equal(f.len, 65536);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request),
        cmocka_unit_test(test_incremental),
        cmocka_unit_test(test_bare_lf),
        cmocka_unit_test(test_request_versions),
        cmocka_unit_test(test_header_once),
        cmocka_unit_test(test_request_rejects),
        cmocka_unit_test(test_response),
        cmocka_unit_test(test_max_headers),
        cmocka_unit_test(test_max_head),
        cmocka_unit_test(test_ws_accept),
        cmocka_unit_test(test_ws_make_key),
        cmocka_unit_test(test_ws_frame_head),
        cmocka_unit_test(test_ws_frame_parse_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
