/*
 * Unit tests for ws:// and wss:// URL parsing: every field of good URLs,
 * the cause of each rejection, the size limits, and url_authority.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "url.h"

static void expect_url(const char *s, bool tls, const char *host, bool v6, unsigned port,
                       const char *path, const char *authority)
{
    struct url u;
    const char *cause = "unset";
    char auth[URL_HOST_MAX + 16];

    if (url_parse(s, &u, &cause) != 0)
        print_error("%s: %s\n", s, cause);
    assert_int_equal(url_parse(s, &u, &cause), 0);
    assert_string_equal(cause, "unset"); /* only failures set it */
    assert_int_equal(u.tls, tls);
    assert_string_equal(u.host, host);
    assert_int_equal(u.ipv6_literal, v6);
    assert_int_equal(u.port, port);
    assert_string_equal(u.path, path);
    assert_int_equal(url_authority(&u, auth, sizeof(auth)), (int)strlen(authority));
    assert_string_equal(auth, authority);
}

static void test_good(void **state)
{
    expect_url("ws://127.0.0.1:9944", false, "127.0.0.1", false, 9944, "/", "127.0.0.1:9944");
    expect_url("wss://entrypoint-finney.opentensor.ai:443/rpc?x=1&y=%20", true,
               "entrypoint-finney.opentensor.ai", false, 443, "/rpc?x=1&y=%20",
               "entrypoint-finney.opentensor.ai:443");
    expect_url("wss://node.example", true, "node.example", false, 443, "/", "node.example:443");
    expect_url("ws://node.example/", false, "node.example", false, 80, "/", "node.example:80");
    expect_url("WS://Node_1.Local", false, "Node_1.Local", false, 80, "/", "Node_1.Local:80");
    expect_url("WsS://h", true, "h", false, 443, "/", "h:443");
    expect_url("ws://[::1]:9944", false, "::1", true, 9944, "/", "[::1]:9944");
    expect_url("ws://[2001:db8::1]/p/q", false, "2001:db8::1", true, 80, "/p/q",
               "[2001:db8::1]:80");
    expect_url("wss://[::ffff:192.0.2.1]", true, "::ffff:192.0.2.1", true, 443, "/",
               "[::ffff:192.0.2.1]:443");
    expect_url("ws://host?q=1", false, "host", false, 80, "/?q=1", "host:80");
    expect_url("ws://host:65535", false, "host", false, 65535, "/", "host:65535");
    expect_url("ws://host:1/", false, "host", false, 1, "/", "host:1");
    expect_url("ws://host:00080", false, "host", false, 80, "/", "host:80");
}

static void test_bad(void **state)
{
    static const struct {
        const char *url, *cause;
    } c[] = {
        {"http://x", "scheme must be ws:// or wss://"},
        {"ws//x", "scheme must be ws:// or wss://"},
        {"ws:/x", "scheme must be ws:// or wss://"},
        {"wss:x", "scheme must be ws:// or wss://"},
        {"", "scheme must be ws:// or wss://"},
        {" ws://x", "scheme must be ws:// or wss://"},
        {"ws://", "empty host"},
        {"ws://:9944", "empty host"},
        {"ws:///path", "empty host"},
        {"ws://host:", "empty port"},
        {"ws://host:/", "empty port"},
        {"ws://host:0", "port out of range"},
        {"ws://host:65536", "port out of range"},
        {"ws://host:99999", "port out of range"},
        {"ws://host:123456", "bad port"},
        {"ws://host:9a", "bad port"},
        {"ws://host:-1", "bad port"},
        {"ws://host:+1", "bad port"},
        {"ws://host:1:2", "bad port"},
        {"ws://user@host", "userinfo not allowed"},
        {"ws://user:pw@host:1/", "userinfo not allowed"},
        {"ws://host/#frag", "fragment not allowed"},
        {"ws://host#f", "fragment not allowed"},
        {"ws://[::1", "unterminated IPv6 literal"},
        {"ws://[::1/x]", "unterminated IPv6 literal"},
        {"ws://[]:1", "empty host"},
        {"ws://[zz]:1", "bad IPv6 literal"},
        {"ws://[127.0.0.1]", "bad IPv6 literal"},
        {"ws://[fe80::1%eth0]", "bad IPv6 literal"},
        {"ws://[::1]x", "junk after IPv6 literal"},
        {"ws://[::1]:", "empty port"},
        {"ws://ho st", "bad character in host"},
        {"ws://h\xc3\xa9", "bad character in host"},
        {"ws://host%41", "bad character in host"},
        {"ws://host/a b", "bad character in path"},
        {"ws://host/\x01", "bad character in path"},
        {"ws://host/\r\nX: y", "bad character in path"},
        {"ws://host/\x7f", "bad character in path"},
        {"ws://host/\xc3\xa9", "bad character in path"},
    };
    for (size_t k = 0; k < sizeof(c) / sizeof(c[0]); k++) {
        struct url u;
        const char *cause = NULL;
        int rc;

        u.port = 4242;
        strcpy(u.host, "keep");
        rc = url_parse(c[k].url, &u, &cause);
        if (rc != -EINVAL || cause == NULL || strcmp(cause, c[k].cause) != 0)
            print_error("case %zu: %s: %d %s\n", k, c[k].url, rc, cause ? cause : "(null)");
        assert_int_equal(rc, -EINVAL);
        assert_non_null(cause);
        assert_string_equal(cause, c[k].cause);
        assert_int_equal(u.port, 4242); /* untouched */
        assert_string_equal(u.host, "keep");
        /* A NULL cause pointer is fine too. */
        assert_int_equal(url_parse(c[k].url, &u, NULL), -EINVAL);
    }
    assert_int_equal(url_parse(NULL, NULL, NULL), -EINVAL);
}

static void test_limits(void **state)
{
    char s[URL_HOST_MAX + URL_PATH_MAX + 32];
    struct url u;
    const char *cause = NULL;
    size_t n;

    /* Host: URL_HOST_MAX - 1 bytes fit with the NUL, one more does not. */
    n = (size_t)sprintf(s, "ws://");
    memset(s + n, 'h', URL_HOST_MAX - 1);
    s[n + URL_HOST_MAX - 1] = '\0';
    assert_int_equal(url_parse(s, &u, &cause), 0);
    assert_int_equal(strlen(u.host), URL_HOST_MAX - 1);
    strcat(s, "h");
    assert_int_equal(url_parse(s, &u, &cause), -EINVAL);
    assert_string_equal(cause, "host too long");
    /* Same inside brackets. */
    n = (size_t)sprintf(s, "ws://[");
    memset(s + n, ':', URL_HOST_MAX);
    strcpy(s + n + URL_HOST_MAX, "]");
    assert_int_equal(url_parse(s, &u, &cause), -EINVAL);
    assert_string_equal(cause, "host too long");

    /* Path: URL_PATH_MAX - 1 bytes fit. */
    n = (size_t)sprintf(s, "ws://h");
    s[n] = '/';
    memset(s + n + 1, 'p', URL_PATH_MAX - 2);
    s[n + URL_PATH_MAX - 1] = '\0';
    assert_int_equal(url_parse(s, &u, &cause), 0);
    assert_int_equal(strlen(u.path), URL_PATH_MAX - 1);
    strcat(s, "p");
    assert_int_equal(url_parse(s, &u, &cause), -EINVAL);
    assert_string_equal(cause, "path too long");
    /* A bare query gains a '/', which must fit too. */
    s[n] = '?';
    s[n + URL_PATH_MAX - 1] = '\0';
    assert_int_equal(url_parse(s, &u, &cause), -EINVAL);
    assert_string_equal(cause, "path too long");
    s[n + URL_PATH_MAX - 2] = '\0';
    assert_int_equal(url_parse(s, &u, &cause), 0);
    assert_int_equal(u.path[0], '/');
    assert_int_equal(u.path[1], '?');
    assert_int_equal(strlen(u.path), URL_PATH_MAX - 1);
}

static void test_authority_truncates(void **state)
{
    struct url u;
    char out[8];

    assert_int_equal(url_parse("ws://[2001:db8::1]:9944", &u, NULL), 0);
    assert_int_equal(url_authority(&u, out, sizeof(out)), 18);
    assert_string_equal(out, "[2001:d");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_authority_truncates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
