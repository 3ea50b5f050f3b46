/*
 * Unit tests for JSON-RPC envelopes (exact member spans, every invalid
 * shape, id echo on bad messages, batches), the error objects subpool
 * writes byte for byte, and the method table.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "jsonrpc.h"
#include "methods.h"

#define LIT(s) s, sizeof(s) - 1

/* The bytes a span covers, as a NUL-terminated string (static buffer, tests only). */
static const char *span_text(const char *buf, const struct json_span *s)
{
    static char out[512];
    size_t n = s->len < sizeof(out) - 1 ? s->len : sizeof(out) - 1;

    memcpy(out, buf + s->off, n);
    out[n] = '\0';
    return out;
}

static void assert_span(const struct json_span *s, size_t off, size_t len, enum json_type type)
{
    assert_int_equal(s->off, off);
    assert_int_equal(s->len, len);
    assert_int_equal(s->type, type);
}

static void test_request(void **state)
{
    static const char m[] =
        " {\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"chain_getHeader\",\"params\":[\"0x1\"]}\n";
    struct jsonrpc_msg r;

    assert_int_equal(jsonrpc_scan(LIT(m), &r), 0);
    assert_int_equal(r.kind, JSONRPC_KIND_REQUEST);
    assert_span(&r.whole, 1, sizeof(m) - 3, JSON_OBJECT);
    assert_span(&r.id, 23, 1, JSON_NUMBER);
    assert_span(&r.method, 34, 17, JSON_STRING);
    assert_string_equal(span_text(m, &r.method), "\"chain_getHeader\"");
    assert_span(&r.params, 61, 7, JSON_ARRAY);
    assert_int_equal(r.result.type, JSON_NONE);
    assert_int_equal(r.error.type, JSON_NONE);
    assert_int_equal(r.sub.type, JSON_NONE);

    /* No params at all is fine; so is an object. */
    assert_int_equal(
        jsonrpc_scan(LIT("{\"method\":\"rpc_methods\",\"jsonrpc\":\"2.0\",\"id\":\"a\"}"), &r), 0);
    assert_int_equal(r.kind, JSONRPC_KIND_REQUEST);
    assert_int_equal(r.params.type, JSON_NONE);
    assert_int_equal(
        jsonrpc_scan(LIT("{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"m\",\"params\":{\"a\":1}}"),
                     &r),
        0);
    assert_int_equal(r.params.type, JSON_OBJECT);
    assert_int_equal(r.sub.type, JSON_NONE); /* only notifications get sub */
}

static void test_notification(void **state)
{
    static const char m[] =
        "{\"jsonrpc\":\"2.0\",\"method\":\"chain_newHead\",\"params\":{\"result\":{"
        "\"number\":\"0x1\"},\"subscription\":\"abcDEF\",\"result\":2}}";
    struct jsonrpc_msg r;

    assert_int_equal(jsonrpc_scan(LIT(m), &r), 0);
    assert_int_equal(r.kind, JSONRPC_KIND_NOTIFICATION);
    assert_int_equal(r.id.type, JSON_NONE);
    assert_string_equal(span_text(m, &r.method), "\"chain_newHead\"");
    assert_span(&r.params, 51, 62, JSON_OBJECT);
    assert_span(&r.sub, 93, 8, JSON_STRING);
    assert_string_equal(span_text(m, &r.sub), "\"abcDEF\"");
    /* The first "result" wins inside params. */
    assert_span(&r.sub_result, 61, 16, JSON_OBJECT);
    assert_string_equal(span_text(m, &r.sub_result), "{\"number\":\"0x1\"}");

    /* Params as an array: no subscription fields. */
    assert_int_equal(jsonrpc_scan(LIT("{\"jsonrpc\":\"2.0\",\"method\":\"x\",\"params\":[1]}"), &r),
                     0);
    assert_int_equal(r.kind, JSONRPC_KIND_NOTIFICATION);
    assert_int_equal(r.sub.type, JSON_NONE);
    assert_int_equal(r.sub_result.type, JSON_NONE);

    /* Numeric subscription ids are kept as they are. */
    assert_int_equal(jsonrpc_scan(LIT("{\"jsonrpc\":\"2.0\",\"method\":\"x\",\"params\":{"
                                      "\"subscription\":42,\"result\":null}}"),
                                  &r),
                     0);
    assert_string_equal(
        span_text("{\"jsonrpc\":\"2.0\",\"method\":\"x\",\"params\":{\"subscription\":42,"
                  "\"result\":null}}",
                  &r.sub),
        "42");
    assert_int_equal(r.sub_result.type, JSON_NULL);
}

static void test_response(void **state)
{
    static const char ok[] = "{\"jsonrpc\":\"2.0\",\"result\":{\"a\":[1,2]},\"id\":17}";
    static const char err[] =
        "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32601,\"message\":\"no\"},\"id\":null}";
    struct jsonrpc_msg r;

    assert_int_equal(jsonrpc_scan(LIT(ok), &r), 0);
    assert_int_equal(r.kind, JSONRPC_KIND_RESPONSE);
    assert_span(&r.result, 26, 11, JSON_OBJECT);
    assert_span(&r.id, 43, 2, JSON_NUMBER);
    assert_int_equal(r.error.type, JSON_NONE);
    assert_int_equal(r.method.type, JSON_NONE);

    assert_int_equal(jsonrpc_scan(LIT(err), &r), 0);
    assert_int_equal(r.kind, JSONRPC_KIND_RESPONSE);
    assert_span(&r.error, 25, 30, JSON_OBJECT);
    assert_span(&r.id, 61, 4, JSON_NULL);
    assert_int_equal(r.result.type, JSON_NONE);

    /* A null result is still a result. */
    assert_int_equal(jsonrpc_scan(LIT("{\"jsonrpc\":\"2.0\",\"result\":null,\"id\":1}"), &r), 0);
    assert_int_equal(r.result.type, JSON_NULL);
}

static void test_ids(void **state)
{
    static const struct {
        const char *id;
        int want;
        enum json_type type;
    } c[] = {
        {"\"abc\"", 0, JSON_STRING},
        {"7", 0, JSON_NUMBER},
        {"9223372036854775808", 0, JSON_NUMBER},
        {"1e400", 0, JSON_NUMBER},
        {"-1", 0, JSON_NUMBER},
        {"0.5", 0, JSON_NUMBER},
        {"null", 0, JSON_NULL},
        {"{\"a\":1}", JSONRPC_INVALID_REQUEST, JSON_NONE},
        {"[1]", JSONRPC_INVALID_REQUEST, JSON_NONE},
        {"true", JSONRPC_INVALID_REQUEST, JSON_NONE},
        {"false", JSONRPC_INVALID_REQUEST, JSON_NONE},
    };
    for (size_t k = 0; k < sizeof(c) / sizeof(c[0]); k++) {
        char m[128];
        int n = snprintf(m, sizeof(m), "{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":%s}", c[k].id);
        struct jsonrpc_msg r;

        assert_int_equal(jsonrpc_scan(m, (size_t)n, &r), c[k].want);
        assert_int_equal(r.kind, JSONRPC_KIND_REQUEST);
        assert_int_equal(r.id.type, c[k].type);
        if (c[k].type != JSON_NONE) {
            assert_int_equal(r.id.off, 35);
            assert_string_equal(span_text(m, &r.id), c[k].id);
        }
    }
}

static void test_invalid(void **state)
{
    static const char *const bad[] = {
        "{\"id\":1,\"method\":\"m\"}",
        "{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"m\"}",
        "{\"jsonrpc\":2.0,\"id\":1,\"method\":\"m\"}",
        "{\"jsonrpc\":\"2.0 \",\"id\":1,\"method\":\"m\"}",
        "{\"jsonrpc\":\"2\\u002e0\",\"id\":1,\"method\":\"m\"}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":1}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":null}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":[\"m\"]}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\",\"params\":\"x\"}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\",\"params\":1}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\",\"params\":null}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\",\"result\":1}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":1,\"error\":{}}",
        "{\"jsonrpc\":\"2.0\",\"id\":1}",
        "{\"jsonrpc\":\"2.0\",\"result\":1}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":1,\"params\":[]}",
        "{}",
        "[]",
        "1",
        "\"x\"",
        "null",
    };
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        struct jsonrpc_msg r;
        int rc = jsonrpc_scan(bad[k], strlen(bad[k]), &r);

        if (rc != JSONRPC_INVALID_REQUEST)
            print_error("case %zu: %s\n", k, bad[k]);
        assert_int_equal(rc, JSONRPC_INVALID_REQUEST);
    }
}

static void test_duplicates(void **state)
{
    static const char *const keys[] = {"\"jsonrpc\":\"2.0\"", "\"id\":3",     "\"method\":\"m\"",
                                       "\"params\":[]",       "\"result\":1", "\"error\":{}"};
    static const char base_req[] = "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"m\",\"params\":[]";
    static const char base_resp[] = "{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":1";
    struct jsonrpc_msg r;
    char m[256];
    int n;

    for (size_t k = 0; k < 6; k++) {
        const char *base = k < 4 ? base_req : base_resp;

        if (k == 5)
            base = "{\"jsonrpc\":\"2.0\",\"id\":3,\"error\":{}";
        n = snprintf(m, sizeof(m), "%s,%s}", base, keys[k]);
        assert_int_equal(json_validate(m, (size_t)n, NULL), 0);
        assert_int_equal(jsonrpc_scan(m, (size_t)n, &r), JSONRPC_INVALID_REQUEST);
        /* The first id is still there to echo. */
        assert_span(&r.id, 22, 1, JSON_NUMBER);
    }
    /* Duplicate non-envelope keys are not our business. */
    assert_int_equal(
        jsonrpc_scan(LIT("{\"jsonrpc\":\"2.0\",\"x\":1,\"id\":3,\"x\":2,\"method\":\"m\"}"), &r),
        0);
    /* Nor are envelope names nested deeper. */
    assert_int_equal(
        jsonrpc_scan(LIT("{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"id\":4,\"id\":5}}"), &r), 0);
}

/* Envelopes among many other members: found, and a duplicate far from the first one seen. */
static void test_many_members(void **state)
{
    static const char ok[] = "{\"a\":1,\"b\":2,\"c\":3,\"d\":4,\"e\":5,\"f\":6,\"g\":7,"
                             "\"jsonrpc\":\"2.0\",\"result\":[8],\"id\":9}";
    static const char dup[] = "{\"id\":1,\"a\":1,\"b\":2,\"c\":3,\"d\":4,\"e\":5,\"f\":6,\"g\":7,"
                              "\"jsonrpc\":\"2.0\",\"result\":0,\"id\":2}";
    struct jsonrpc_msg r;

    (void)state;
    assert_int_equal(jsonrpc_scan(LIT(ok), &r), 0);
    assert_int_equal(r.kind, JSONRPC_KIND_RESPONSE);
    assert_span(&r.result, sizeof(ok) - 12, 3, JSON_ARRAY);
    assert_span(&r.id, sizeof(ok) - 3, 1, JSON_NUMBER);
    /* The eleventh member duplicates the first: invalid, and the first id is kept. */
    assert_int_equal(jsonrpc_scan(LIT(dup), &r), JSONRPC_INVALID_REQUEST);
    assert_span(&r.id, 6, 1, JSON_NUMBER);
}

static void test_invalid_keeps_id(void **state)
{
    static const char a[] = "{\"jsonrpc\":\"1.0\",\"method\":\"m\",\"id\":\"x-9\"}";
    static const char b[] = "{\"params\":7,\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":12}";
    struct jsonrpc_msg r;

    assert_int_equal(jsonrpc_scan(LIT(a), &r), JSONRPC_INVALID_REQUEST);
    assert_span(&r.id, 35, 5, JSON_STRING);
    assert_int_equal(jsonrpc_scan(LIT(b), &r), JSONRPC_INVALID_REQUEST);
    assert_span(&r.id, 46, 2, JSON_NUMBER);
}

static void test_escaped_keys(void **state)
{
    /* "\u0069d" is "id": a request, not a notification that would get no reply. */
    static const char m[] = "{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"\\u0069d\":6}";
    struct jsonrpc_msg r;

    assert_int_equal(jsonrpc_scan(LIT(m), &r), 0);
    assert_int_equal(r.kind, JSONRPC_KIND_REQUEST);
    assert_int_equal(r.id.type, JSON_NUMBER);
    assert_int_equal(r.id.len, 1);
    assert_int_equal(m[r.id.off], '6');
    /* Every member may be written so; and a second id, escaped or not, is a duplicate. */
    assert_int_equal(jsonrpc_scan(LIT("{\"json\\u0072pc\":\"2.0\",\"\\u006d\\u0065thod\":\"m\","
                                      "\"i\\u0064\":1}"),
                                  &r),
                     0);
    assert_int_equal(r.kind, JSONRPC_KIND_REQUEST);
    assert_int_equal(
        jsonrpc_scan(LIT("{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":1,\"\\u0069d\":2}"), &r),
        JSONRPC_INVALID_REQUEST);
    /* "me\thod" holds a tab, not the letter t: it is not "method", so there is none. */
    assert_int_equal(jsonrpc_scan(LIT("{\"jsonrpc\":\"2.0\",\"me\\thod\":\"m\",\"id\":1}"), &r),
                     JSONRPC_INVALID_REQUEST);
    /* Keys that only look close stay unknown: non-ASCII, NUL, too long once decoded. */
    assert_int_equal(
        jsonrpc_scan(LIT("{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"\\u0000id\":1}"), &r), 0);
    assert_int_equal(r.kind, JSONRPC_KIND_NOTIFICATION);
    assert_int_equal(jsonrpc_scan(LIT("{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"\\u0130d\":1}"), &r),
                     0);
    assert_int_equal(r.kind, JSONRPC_KIND_NOTIFICATION);
    assert_int_equal(
        jsonrpc_scan(LIT("{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"\\u0069dentity\":1}"), &r), 0);
    assert_int_equal(r.kind, JSONRPC_KIND_NOTIFICATION);
}

static void test_parse_error(void **state)
{
    static const char *const bad[] = {
        "",
        "   ",
        "{",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\"} x",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\",}",
        "{\"jsonrpc\":\"2.0\",\"method\":\"\xff\"}",
        "{\"jsonrpc\":\"2.0\",\"method\":\"\\ud800\"}",
    };
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        struct jsonrpc_msg r;

        memset(&r, 0x5a, sizeof(r));
        assert_int_equal(jsonrpc_scan(bad[k], strlen(bad[k]), &r), JSONRPC_PARSE_ERROR);
        /* Cleared, so a caller reading the id first finds none. */
        assert_int_equal(r.kind, 0);
        assert_int_equal(r.whole.type, JSON_NONE);
        assert_int_equal(r.id.type, JSON_NONE);
        assert_int_equal(r.id.off, 0);
    }
}

static void test_batch(void **state)
{
    static const char b[] = " [ {\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"a\"} ,"
                            "{\"jsonrpc\":\"2.0\",\"method\":\"n\"},5,{},"
                            "{\"jsonrpc\":\"2.0\",\"id\":\"q\",\"method\":3}]";
    struct json_span arr, e;
    struct jsonrpc_msg r;
    size_t pos = 0;

    assert_true(jsonrpc_is_batch(LIT(b)));
    assert_int_equal(json_validate(LIT(b), &arr), 0);

    assert_int_equal(json_array_next(b, &arr, &pos, &e), 1);
    assert_int_equal(jsonrpc_scan_span(b, &e, &r), 0);
    assert_int_equal(r.kind, JSONRPC_KIND_REQUEST);
    assert_span(&r.whole, 3, 37, JSON_OBJECT);
    assert_span(&r.id, 25, 1, JSON_NUMBER);

    assert_int_equal(json_array_next(b, &arr, &pos, &e), 1);
    assert_int_equal(jsonrpc_scan_span(b, &e, &r), 0);
    assert_int_equal(r.kind, JSONRPC_KIND_NOTIFICATION);
    assert_span(&r.whole, 42, 30, JSON_OBJECT);

    assert_int_equal(json_array_next(b, &arr, &pos, &e), 1);
    assert_int_equal(jsonrpc_scan_span(b, &e, &r), JSONRPC_INVALID_REQUEST);
    assert_span(&r.whole, 73, 1, JSON_NUMBER);
    assert_int_equal(r.id.type, JSON_NONE);

    assert_int_equal(json_array_next(b, &arr, &pos, &e), 1);
    assert_int_equal(jsonrpc_scan_span(b, &e, &r), JSONRPC_INVALID_REQUEST);
    assert_span(&r.whole, 75, 2, JSON_OBJECT);

    assert_int_equal(json_array_next(b, &arr, &pos, &e), 1);
    assert_int_equal(jsonrpc_scan_span(b, &e, &r), JSONRPC_INVALID_REQUEST);
    assert_string_equal(span_text(b, &r.id), "\"q\"");

    assert_int_equal(json_array_next(b, &arr, &pos, &e), 0);

    /* The empty batch: valid JSON, a batch, and no elements. */
    assert_true(jsonrpc_is_batch(LIT("\n[]")));
    assert_int_equal(json_validate(LIT("\n[]"), &arr), 0);
    pos = 0;
    assert_int_equal(json_array_next("\n[]", &arr, &pos, &e), 0);
    assert_int_equal(jsonrpc_scan(LIT("[]"), &r), JSONRPC_INVALID_REQUEST);

    assert_false(jsonrpc_is_batch(LIT(" {\"a\":[1]}")));
    assert_false(jsonrpc_is_batch(LIT("   ")));
    assert_false(jsonrpc_is_batch(LIT("")));
    assert_false(jsonrpc_is_batch(LIT("x[")));
}

static void test_format_u64(void **state)
{
    char out[21];

    assert_int_equal(jsonrpc_format_u64(out, 0), 1);
    assert_string_equal(out, "0");
    assert_int_equal(jsonrpc_format_u64(out, 1234567890), 10);
    assert_string_equal(out, "1234567890");
    assert_int_equal(jsonrpc_format_u64(out, 9223372036854775808ULL), 19);
    assert_string_equal(out, "9223372036854775808");
    assert_int_equal(jsonrpc_format_u64(out, UINT64_MAX), 20);
    assert_string_equal(out, "18446744073709551615");
}

static void test_error_objects(void **state)
{
    static const char parse[] =
        "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32700,\"message\":\"Parse error\"},\"id\":null}";
    static const char head[] =
        "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32601,\"message\":\"Method not found\"},\"id\":";
    char out[256];
    struct jsonrpc_msg r;
    size_t n;

    n = jsonrpc_error_null(out, sizeof(out), JSONRPC_PARSE_ERROR, "Parse error");
    assert_int_equal(n, sizeof(parse) - 1);
    assert_string_equal(out, parse);

    n = jsonrpc_error_head(out, sizeof(out), JSONRPC_METHOD_NOT_FOUND, "Method not found");
    assert_int_equal(n, sizeof(head) - 1);
    assert_string_equal(out, head);

    n = jsonrpc_error_null(out, sizeof(out), SUBPOOL_ERR_LIMIT, "a\"b\\c\nd\x01\x7f");
    assert_string_equal(out, "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32053,\"message\":"
                             "\"a\\\"b\\\\c\\nd\\u0001\x7f\"},\"id\":null}");
    assert_int_equal(jsonrpc_scan(out, n, &r), 0);
    assert_int_equal(r.kind, JSONRPC_KIND_RESPONSE);
    assert_int_equal(r.id.type, JSON_NULL);
    assert_int_equal(r.error.type, JSON_OBJECT);

    /* Positive and NULL messages. */
    n = jsonrpc_error_null(out, sizeof(out), 7, NULL);
    assert_string_equal(
        out, "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":7,\"message\":\"\"},\"id\":null}");
    assert_int_equal(n, strlen(out));
}

static void test_error_truncation(void **state)
{
    char out[256], big[300];
    struct jsonrpc_msg r;
    size_t n;

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';

    /* cap 64: the head fits, the message is cut, the result is still JSON once closed. */
    n = jsonrpc_error_head(out, 64, JSONRPC_INTERNAL_ERROR, big);
    assert_int_equal(n, 63);
    assert_string_equal(
        out, "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32603,\"message\":\"xxxx\"},\"id\":");
    memcpy(out + n, "null}", 6);
    assert_int_equal(jsonrpc_scan(out, n + 5, &r), 0);

    n = jsonrpc_error_null(out, 70, JSONRPC_INTERNAL_ERROR, big);
    assert_int_equal(n, 69);
    assert_int_equal(jsonrpc_scan(out, n, &r), 0);
    assert_int_equal(strlen(out), 69);

    /* Too small for the fixed part: nothing, not a broken object. */
    out[0] = 'z';
    assert_int_equal(jsonrpc_error_head(out, 40, JSONRPC_INTERNAL_ERROR, "m"), 0);
    assert_string_equal(out, "");
    assert_int_equal(jsonrpc_error_null(out, 4, JSONRPC_INTERNAL_ERROR, "m"), 0);
    assert_int_equal(jsonrpc_error_null(out, 0, JSONRPC_INTERNAL_ERROR, "m"), 0);
}

static void test_escape(void **state)
{
    char out[64];

    assert_int_equal(json_escape(out, sizeof(out), LIT("plain")), 7);
    assert_string_equal(out, "\"plain\"");
    assert_int_equal(json_escape(out, sizeof(out), LIT("\b\f\n\r\t\x1f\"\\/")), 23);
    assert_string_equal(out, "\"\\b\\f\\n\\r\\t\\u001f\\\"\\\\/\"");
    /* Embedded NUL is data. */
    assert_int_equal(json_escape(out, sizeof(out), "a\0b", 3), 10);
    assert_string_equal(out, "\"a\\u0000b\"");
    /* Valid UTF-8 passes through; invalid bytes become U+FFFD escapes. */
    assert_int_equal(json_escape(out, sizeof(out), LIT("\xc3\xa9\xff\xed\xa0\x80")), 28);
    assert_string_equal(out, "\"\xc3\xa9\\ufffd\\ufffd\\ufffd\\ufffd\"");
}

static void test_escape_truncation(void **state)
{
    char out[16];

    assert_int_equal(json_escape(out, 8, LIT("abcdefgh")), 7);
    assert_string_equal(out, "\"abcde\"");
    /* An escape that does not fit is left out whole. */
    assert_int_equal(json_escape(out, 6, LIT("ab\"cd")), 4);
    assert_string_equal(out, "\"ab\"");
    assert_int_equal(json_escape(out, 7, LIT("ab\"cd")), 6);
    assert_string_equal(out, "\"ab\\\"\"");
    /* So is a character. */
    assert_int_equal(json_escape(out, 5, LIT("a\xe2\x82\xac")), 3);
    assert_string_equal(out, "\"a\"");
    assert_int_equal(json_escape(out, 7, LIT("a\xe2\x82\xac")), 6);
    assert_string_equal(out, "\"a\xe2\x82\xac\"");
    assert_int_equal(json_escape(out, 3, LIT("abc")), 2);
    assert_string_equal(out, "\"\"");
    out[0] = 'z';
    assert_int_equal(json_escape(out, 2, LIT("abc")), 0);
    assert_string_equal(out, "");
    assert_int_equal(json_escape(out, 0, LIT("abc")), 0);
}

static void test_method_flags(void **state)
{
    static const struct {
        const char *name;
        unsigned flags;
    } c[] = {
        {"author_insertKey", METHOD_WRITE},
        {"author_removeExtrinsic", METHOD_WRITE},
        {"author_rotateKeys", METHOD_WRITE},
        {"author_submitAndWatchExtrinsic", METHOD_SUBSCRIBE | METHOD_WRITE},
        {"author_submitExtrinsic", METHOD_WRITE},
        {"author_unwatchExtrinsic", METHOD_UNSUBSCRIBE},
        {"beefy_subscribeJustifications", METHOD_SUBSCRIBE},
        {"beefy_unsubscribeJustifications", METHOD_UNSUBSCRIBE},
        {"chainHead_unstable_follow", METHOD_SUBSCRIBE},
        {"chainHead_unstable_unfollow", METHOD_UNSUBSCRIBE},
        {"chainHead_v1_follow", METHOD_SUBSCRIBE},
        {"chainHead_v1_unfollow", METHOD_UNSUBSCRIBE},
        {"chain_subscribeAllHeads", METHOD_SUBSCRIBE},
        {"chain_subscribeFinalisedHeads", METHOD_SUBSCRIBE},
        {"chain_subscribeFinalizedHeads", METHOD_SUBSCRIBE},
        {"chain_subscribeNewHead", METHOD_SUBSCRIBE},
        {"chain_subscribeNewHeads", METHOD_SUBSCRIBE},
        {"chain_subscribeRuntimeVersion", METHOD_SUBSCRIBE},
        {"chain_unsubscribeAllHeads", METHOD_UNSUBSCRIBE},
        {"chain_unsubscribeFinalisedHeads", METHOD_UNSUBSCRIBE},
        {"chain_unsubscribeFinalizedHeads", METHOD_UNSUBSCRIBE},
        {"chain_unsubscribeNewHead", METHOD_UNSUBSCRIBE},
        {"chain_unsubscribeNewHeads", METHOD_UNSUBSCRIBE},
        {"chain_unsubscribeRuntimeVersion", METHOD_UNSUBSCRIBE},
        {"grandpa_subscribeJustifications", METHOD_SUBSCRIBE},
        {"grandpa_unsubscribeJustifications", METHOD_UNSUBSCRIBE},
        {"offchain_localStorageClear", METHOD_WRITE},
        {"offchain_localStorageSet", METHOD_WRITE},
        {"state_subscribeRuntimeVersion", METHOD_SUBSCRIBE},
        {"state_subscribeStorage", METHOD_SUBSCRIBE},
        {"state_unsubscribeRuntimeVersion", METHOD_UNSUBSCRIBE},
        {"state_unsubscribeStorage", METHOD_UNSUBSCRIBE},
        {"subscribe_newHead", METHOD_SUBSCRIBE},
        {"system_addLogFilter", METHOD_WRITE},
        {"system_addReservedPeer", METHOD_WRITE},
        {"system_removeReservedPeer", METHOD_WRITE},
        {"system_resetLogFilter", METHOD_WRITE},
        {"transactionWatch_unstable_submitAndWatch", METHOD_SUBSCRIBE | METHOD_WRITE},
        {"transactionWatch_unstable_unwatch", METHOD_UNSUBSCRIBE},
        {"transactionWatch_v1_submitAndWatch", METHOD_SUBSCRIBE | METHOD_WRITE},
        {"transactionWatch_v1_unwatch", METHOD_UNSUBSCRIBE},
        {"transaction_unstable_broadcast", METHOD_WRITE},
        {"transaction_unstable_stop", METHOD_WRITE},
        {"transaction_v1_broadcast", METHOD_WRITE},
        {"transaction_v1_stop", METHOD_WRITE},
        {"unsubscribe_newHead", METHOD_UNSUBSCRIBE},
        /* Plain reads and near misses. */
        {"chain_getHeader", 0},
        {"state_getMetadata", 0},
        {"rpc_methods", 0},
        {"", 0},
        {"a", 0},
        {"zzz", 0},
        {"chain_subscribeNewHeadsX", 0},
        {"chain_subscribeNewHea", 0},
        {"Chain_subscribeNewHeads", 0},
        {"subpool_status", METHOD_LOCAL},
        {"subpool_", METHOD_LOCAL},
        {"subpool", 0},
        {"Subpool_status", 0},
    };
    for (size_t k = 0; k < sizeof(c) / sizeof(c[0]); k++) {
        unsigned f = method_flags(c[k].name, strlen(c[k].name));

        if (f != c[k].flags)
            print_error("method %s: got %u\n", c[k].name, f);
        assert_int_equal(f, c[k].flags);
    }
    /* The name is bytes with a length, not a C string. */
    assert_int_equal(method_flags("state_subscribeStorageXYZ", 22), METHOD_SUBSCRIBE);
    assert_int_equal(method_flags(NULL, 0), 0);
}

/* Known names are sorted and each is found at its own index; near misses are not known. */
static void test_method_known(void **state)
{
    (void)state;
    for (unsigned i = 0; i < METHOD_KNOWN_COUNT; i++) {
        const char *name = method_known_name(i);
        assert_non_null(name);
        if (i > 0)
            assert_true(strcmp(method_known_name(i - 1), name) < 0);
        assert_int_equal(method_known(name, strlen(name)), (int)i);
    }
    assert_null(method_known_name(METHOD_KNOWN_COUNT));
    assert_true(method_known("state_getStorage", 16) >= 0);
    assert_true(method_known("author_submitExtrinsic", 22) >= 0);
    assert_true(method_known("subpool_status", 14) >= 0);
    assert_int_equal(method_known("state_getStorag", 15), -1);
    assert_int_equal(method_known("state_getStorageX", 17), -1);
    assert_int_equal(method_known("devnode_sleep", 13), -1);
    assert_int_equal(method_known("", 0), -1);
    /* Every method the table treats specially has a label of its own. */
    assert_true(method_known("chain_subscribeNewHeads", 23) >= 0);
    assert_true(method_known("transactionWatch_v1_submitAndWatch", 34) >= 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request),       cmocka_unit_test(test_notification),
        cmocka_unit_test(test_response),      cmocka_unit_test(test_ids),
        cmocka_unit_test(test_invalid),       cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_many_members),  cmocka_unit_test(test_invalid_keeps_id),
        cmocka_unit_test(test_escaped_keys),  cmocka_unit_test(test_parse_error),
        cmocka_unit_test(test_batch),         cmocka_unit_test(test_format_u64),
        cmocka_unit_test(test_error_objects), cmocka_unit_test(test_error_truncation),
        cmocka_unit_test(test_escape),        cmocka_unit_test(test_escape_truncation),
        cmocka_unit_test(test_method_flags),  cmocka_unit_test(test_method_known),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
