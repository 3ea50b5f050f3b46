/*
 * Unit tests for the JSON scanner, iterators and skimmer: exact spans, the
 * exact error for each kind of bad input, and hostile sizes and depths.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "json.h"

#define LIT(s) s, sizeof(s) - 1

struct vcase {
    const char *text;
    size_t len; /* 0: strlen */
    int want;
};

/* Run a table through json_validate, naming the failing case. */
static void run_cases(const struct vcase *c, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        size_t len = c[k].len ? c[k].len : strlen(c[k].text);
        int rc = json_validate(c[k].text, len, NULL);

        if (rc != c[k].want)
            print_error("case %zu: \"%s\": got %d want %d\n", k, c[k].text, rc, c[k].want);
        assert_int_equal(rc, c[k].want);
    }
}

static void assert_span(const struct json_span *s, size_t off, size_t len, enum json_type type)
{
    assert_int_equal(s->off, off);
    assert_int_equal(s->len, len);
    assert_int_equal(s->type, type);
}

static void test_scalars_spans(void **state)
{
    struct json_span s;

    assert_int_equal(json_validate(LIT("  true \n"), &s), 0);
    assert_span(&s, 2, 4, JSON_TRUE);
    assert_int_equal(json_validate(LIT("false"), &s), 0);
    assert_span(&s, 0, 5, JSON_FALSE);
    assert_int_equal(json_validate(LIT("\tnull\r\n"), &s), 0);
    assert_span(&s, 1, 4, JSON_NULL);
    assert_int_equal(json_validate(LIT(" -12.5e+10 "), &s), 0);
    assert_span(&s, 1, 9, JSON_NUMBER);
    assert_int_equal(json_validate(LIT("1e400"), &s), 0);
    assert_span(&s, 0, 5, JSON_NUMBER);
    assert_int_equal(json_validate(LIT("\"a\\\"b\""), &s), 0);
    assert_span(&s, 0, 6, JSON_STRING);
    assert_int_equal(json_validate(LIT(" {} "), &s), 0);
    assert_span(&s, 1, 2, JSON_OBJECT);
    assert_int_equal(json_validate(LIT("[ ]"), &s), 0);
    assert_span(&s, 0, 3, JSON_ARRAY);
    assert_int_equal(json_validate(LIT("{\"a\":[1,{\"b\":null}],\"c\":\"}\"}"), &s), 0);
    assert_span(&s, 0, 28, JSON_OBJECT);
}

static void test_numbers(void **state)
{
    static const struct vcase c[] = {
        {"0", 0, 0},
        {"-0", 0, 0},
        {"-0.0e-0", 0, 0},
        {"123456789012345678901234567890", 0, 0},
        {"1E+2", 0, 0},
        {"0.5", 0, 0},
        {"01", 0, JSON_ERR_SYNTAX},
        {"-01", 0, JSON_ERR_SYNTAX},
        {"[00]", 0, JSON_ERR_SYNTAX},
        {"1.", 0, JSON_ERR_SYNTAX},
        {"1.e5", 0, JSON_ERR_SYNTAX},
        {".5", 0, JSON_ERR_SYNTAX},
        {"+1", 0, JSON_ERR_SYNTAX},
        {"-", 0, JSON_ERR_SYNTAX},
        {"- 1", 0, JSON_ERR_SYNTAX},
        {"1e", 0, JSON_ERR_SYNTAX},
        {"1e+", 0, JSON_ERR_SYNTAX},
        {"[1e]", 0, JSON_ERR_SYNTAX},
        {"NaN", 0, JSON_ERR_SYNTAX},
        {"Infinity", 0, JSON_ERR_SYNTAX},
        {"-Infinity", 0, JSON_ERR_SYNTAX},
        {"0x10", 0, JSON_ERR_TRAILING},
        {"1.5.3", 0, JSON_ERR_TRAILING},
    };
    run_cases(c, sizeof(c) / sizeof(c[0]));
}

static void test_syntax(void **state)
{
    static const struct vcase c[] = {
        {"tru", 0, JSON_ERR_SYNTAX},
        {"nul", 0, JSON_ERR_SYNTAX},
        {"True", 0, JSON_ERR_SYNTAX},
        {"truex", 0, JSON_ERR_TRAILING},
        {"[1,]", 0, JSON_ERR_SYNTAX},
        {"[,1]", 0, JSON_ERR_SYNTAX},
        {"{\"a\":1,}", 0, JSON_ERR_SYNTAX},
        {"{'a':1}", 0, JSON_ERR_SYNTAX},
        {"['a']", 0, JSON_ERR_SYNTAX},
        {"[1 2]", 0, JSON_ERR_SYNTAX},
        {"{\"a\" 1}", 0, JSON_ERR_SYNTAX},
        {"{\"a\":}", 0, JSON_ERR_SYNTAX},
        {"{1:2}", 0, JSON_ERR_SYNTAX},
        {"{\"a\":1 \"b\":2}", 0, JSON_ERR_SYNTAX},
        {"[", 0, JSON_ERR_SYNTAX},
        {"{", 0, JSON_ERR_SYNTAX},
        {"[1", 0, JSON_ERR_SYNTAX},
        {"]", 0, JSON_ERR_SYNTAX},
        {"[}", 0, JSON_ERR_SYNTAX},
        {"{]", 0, JSON_ERR_SYNTAX},
        {"\"abc", 0, JSON_ERR_SYNTAX},
        {"\"abc\\", 0, JSON_ERR_SYNTAX},
        {"/* c */ 1", 0, JSON_ERR_SYNTAX},
        {"\v1", 0, JSON_ERR_SYNTAX},
        {"", 0, JSON_ERR_EMPTY},
        {" \t\r\n ", 0, JSON_ERR_EMPTY},
        {"1 2", 0, JSON_ERR_TRAILING},
        {"{} x", 0, JSON_ERR_TRAILING},
        {"[]]", 0, JSON_ERR_TRAILING},
        {"{}\n", 0, 0},
        {"\"\x7f\"", 0, 0},
    };
    run_cases(c, sizeof(c) / sizeof(c[0]));
    /* An embedded NUL is not whitespace. */
    assert_int_equal(json_validate("1\0", 2, NULL), JSON_ERR_TRAILING);
    assert_int_equal(json_validate("\"\0\"", 3, NULL), JSON_ERR_SYNTAX);
}

static void test_escapes(void **state)
{
    static const struct vcase c[] = {
        {"\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\"", 0, 0},
        {"\"\\u0000\\u00e9\\uFFFF\\uABcd\"", 0, 0},
        {"\"\\ud83d\\ude00\"", 0, 0},
        {"\"\\uDBFF\\uDFFF\"", 0, 0},
        {"\"\\x41\"", 0, JSON_ERR_SYNTAX},
        {"\"\\'\"", 0, JSON_ERR_SYNTAX},
        {"\"\\U0041\"", 0, JSON_ERR_SYNTAX},
        {"\"\\u12\"", 0, JSON_ERR_SYNTAX},
        {"\"\\u12G4\"", 0, JSON_ERR_SYNTAX},
        {"\"\\u", 0, JSON_ERR_SYNTAX},
        /* Control bytes must be escaped. */
        {"\"a\x01z\"", 0, JSON_ERR_SYNTAX},
        {"\"\t\"", 0, JSON_ERR_SYNTAX},
        {"\"line\nbreak\"", 0, JSON_ERR_SYNTAX},
        {"\"0123456789abcdef\x1f\"", 0, JSON_ERR_SYNTAX},
    };
    run_cases(c, sizeof(c) / sizeof(c[0]));
}

static void test_surrogates(void **state)
{
    static const struct vcase c[] = {
        {"\"\\ud800\"", 0, JSON_ERR_SURROGATE},
        {"\"\\udc00\"", 0, JSON_ERR_SURROGATE},
        {"\"\\ud800\\u0041\"", 0, JSON_ERR_SURROGATE},
        {"\"\\udc00\\ud800\"", 0, JSON_ERR_SURROGATE},
        {"\"\\ud800\\ud800\"", 0, JSON_ERR_SURROGATE},
        {"\"\\ud800\\n\"", 0, JSON_ERR_SURROGATE},
        {"\"\\ud800x\"", 0, JSON_ERR_SURROGATE},
        {"\"\\uDFFF\"", 0, JSON_ERR_SURROGATE},
        {"[\"ok\",\"\\uDBFF\"]", 0, JSON_ERR_SURROGATE},
        {"{\"\\ud800\":1}", 0, JSON_ERR_SURROGATE},
        {"\"\\ud800\\u00", 0, JSON_ERR_SYNTAX},
    };
    run_cases(c, sizeof(c) / sizeof(c[0]));
}

static void test_utf8(void **state)
{
    static const struct vcase c[] = {
        {"\"\xc2\xa9\"", 0, 0},                 /* U+00A9 */
        {"\"\xe2\x82\xac\"", 0, 0},             /* U+20AC */
        {"\"\xed\x9f\xbf\"", 0, 0},             /* U+D7FF */
        {"\"\xee\x80\x80\"", 0, 0},             /* U+E000 */
        {"\"\xef\xbf\xbf\"", 0, 0},             /* U+FFFF */
        {"\"\xf0\x9f\x98\x80\"", 0, 0},         /* U+1F600 */
        {"\"\xf4\x8f\xbf\xbf\"", 0, 0},         /* U+10FFFF */
        {"\"\xc0\x80\"", 0, JSON_ERR_UTF8},     /* overlong NUL */
        {"\"\xc1\xbf\"", 0, JSON_ERR_UTF8},     /* overlong */
        {"\"\xe0\x80\x80\"", 0, JSON_ERR_UTF8}, /* overlong 3-byte */
        {"\"\xe0\x9f\xbf\"", 0, JSON_ERR_UTF8}, /* overlong U+07FF */
        {"\"\xf0\x80\x80\x80\"", 0, JSON_ERR_UTF8},
        {"\"\xf0\x8f\xbf\xbf\"", 0, JSON_ERR_UTF8},
        {"\"\xed\xa0\x80\"", 0, JSON_ERR_UTF8},     /* U+D800 */
        {"\"\xed\xbf\xbf\"", 0, JSON_ERR_UTF8},     /* U+DFFF */
        {"\"\xf4\x90\x80\x80\"", 0, JSON_ERR_UTF8}, /* U+110000 */
        {"\"\xf5\x80\x80\x80\"", 0, JSON_ERR_UTF8},
        {"\"\xff\"", 0, JSON_ERR_UTF8},
        {"\"\xfe\"", 0, JSON_ERR_UTF8},
        {"\"\x80\"", 0, JSON_ERR_UTF8}, /* lone continuation */
        {"\"\xbf\"", 0, JSON_ERR_UTF8},
        {"\"\xe2\x82\"", 0, JSON_ERR_UTF8}, /* truncated by the quote */
        {"\"\xf0\x9f\x98\"", 0, JSON_ERR_UTF8},
        {"\"\xc2\"", 0, JSON_ERR_UTF8},
        {"\"\xe2\x28\xa1\"", 0, JSON_ERR_UTF8},             /* bad second byte */
        {"\"\xe2", 0, JSON_ERR_UTF8},                       /* truncated by the end */
        {"\"aaaaaaaaaaaaaaaa\xc0\x80\"", 0, JSON_ERR_UTF8}, /* after the 8-byte fast path */
        {"{\"k\xff\":1}", 0, JSON_ERR_UTF8},
        {"\xef\xbb\xbf{}", 0, JSON_ERR_SYNTAX}, /* no BOM outside strings */
    };
    run_cases(c, sizeof(c) / sizeof(c[0]));

    assert_int_equal(json_utf8_len((const unsigned char *)"A", 1), 1);
    assert_int_equal(json_utf8_len((const unsigned char *)"\xc2\xa9", 2), 2);
    assert_int_equal(json_utf8_len((const unsigned char *)"\xe2\x82\xac", 3), 3);
    assert_int_equal(json_utf8_len((const unsigned char *)"\xf0\x9f\x98\x80", 4), 4);
    assert_int_equal(json_utf8_len((const unsigned char *)"\xf0\x9f\x98\x80", 3), 0);
    assert_int_equal(json_utf8_len((const unsigned char *)"\xed\xa0\x80", 3), 0);
    assert_int_equal(json_utf8_len((const unsigned char *)"", 0), 0);
}

/* n copies of `open` followed (when close != NULL) by n copies of close. */
static char *nest(const char *open, const char *inner, const char *close, size_t n, size_t *ret_len)
{
    size_t ol = strlen(open), il = strlen(inner), cl = close ? strlen(close) : 0;
    size_t len = n * (ol + cl) + il;
    char *b = malloc(len + 1);
    char *p = b;

    assert_non_null(b);
    for (size_t k = 0; k < n; k++, p += ol)
        memcpy(p, open, ol);
    memcpy(p, inner, il);
    p += il;
    for (size_t k = 0; k < n && close; k++, p += cl)
        memcpy(p, close, cl);
    *p = '\0';
    *ret_len = len;
    return b;
}

static void test_depth(void **state)
{
    struct json_span s;
    size_t len;
    char *b;

    b = nest("[", "", "]", JSON_MAX_DEPTH, &len);
    assert_int_equal(json_validate(b, len, &s), 0);
    assert_span(&s, 0, 2 * JSON_MAX_DEPTH, JSON_ARRAY);
    free(b);

    b = nest("[", "", "]", JSON_MAX_DEPTH + 1, &len);
    assert_int_equal(json_validate(b, len, NULL), JSON_ERR_DEPTH);
    free(b);

    b = nest("{\"a\":", "1", "}", JSON_MAX_DEPTH, &len);
    assert_int_equal(json_validate(b, len, &s), 0);
    assert_int_equal(s.len, len);
    free(b);

    b = nest("{\"a\":", "1", "}", JSON_MAX_DEPTH + 1, &len);
    assert_int_equal(json_validate(b, len, NULL), JSON_ERR_DEPTH);
    free(b);

    /* Alternating kinds: the bit stack must remember which closer each level wants. */
    b = nest("[{\"k\":", "0", "}]", JSON_MAX_DEPTH / 2, &len);
    assert_int_equal(json_validate(b, len, NULL), 0);
    b[len - 1] = '}';
    assert_int_equal(json_validate(b, len, NULL), JSON_ERR_SYNTAX);
    free(b);

    /* Hostile: 100k levels, open only and balanced. */
    b = nest("[", "", NULL, 100000, &len);
    assert_int_equal(json_validate(b, len, NULL), JSON_ERR_DEPTH);
    free(b);
    b = nest("[", "", "]", 100000, &len);
    assert_int_equal(json_validate(b, len, NULL), JSON_ERR_DEPTH);
    free(b);
    b = nest("{\"a\":", "", NULL, 100000, &len);
    assert_int_equal(json_validate(b, len, NULL), JSON_ERR_DEPTH);
    free(b);
    b = nest("{\"a\":", "null", "}", 100000, &len);
    assert_int_equal(json_validate(b, len, NULL), JSON_ERR_DEPTH);
    free(b);
}

static void test_huge_string(void **state)
{
    size_t n = 20u << 20; /* 20 MiB of content */
    char *b = malloc(n + 2);
    struct json_span s;

    assert_non_null(b);
    b[0] = '"';
    memset(b + 1, 'a', n);
    b[n + 1] = '"';
    assert_int_equal(json_validate(b, n + 2, &s), 0);
    assert_span(&s, 0, n + 2, JSON_STRING);

    b[n] = '\xff'; /* a bad byte right before the closing quote */
    assert_int_equal(json_validate(b, n + 2, NULL), JSON_ERR_UTF8);
    b[n] = '\x1f';
    assert_int_equal(json_validate(b, n + 2, NULL), JSON_ERR_SYNTAX);
    b[n] = 'a';
    b[n + 1] = 'a'; /* unterminated */
    assert_int_equal(json_validate(b, n + 2, NULL), JSON_ERR_SYNTAX);
    free(b);
}

static void test_scan_value(void **state)
{
    static const char doc[] = "xx [1, 2] garbage";
    struct json_span s = {99, 99, JSON_NULL};

    assert_int_equal(json_scan_value(LIT(doc), 2, &s), 0);
    assert_span(&s, 3, 6, JSON_ARRAY);
    /* Bytes after the value are not looked at. */
    assert_int_equal(json_scan_value(LIT("7}{"), 0, &s), 0);
    assert_span(&s, 0, 1, JSON_NUMBER);
    /* Failure leaves *ret alone. */
    s.off = 77;
    assert_int_equal(json_scan_value(LIT(doc), 0, &s), JSON_ERR_SYNTAX);
    assert_int_equal(s.off, 77);
    assert_int_equal(json_scan_value(LIT(doc), sizeof(doc) - 1, &s), JSON_ERR_EMPTY);
    assert_int_equal(json_scan_value(LIT(doc), sizeof(doc), &s), JSON_ERR_SYNTAX);
    assert_int_equal(s.off, 77);
    assert_int_equal(json_validate(LIT("[1] x"), &s), JSON_ERR_TRAILING);
    assert_int_equal(s.off, 77);
}

static void test_object_next(void **state)
{
    static const char doc[] =
        " { \"a\" : 1 , \"b\":[1,{\"c\":\"}\"}], \"d\\\"\":\"x,y\" ,\"e\":{} } ";
    struct json_span obj, k, v;
    size_t pos = 0;

    assert_int_equal(json_validate(LIT(doc), &obj), 0);
    assert_span(&obj, 1, sizeof(doc) - 3, JSON_OBJECT);

    assert_int_equal(json_object_next(doc, &obj, &pos, &k, &v), 1);
    assert_span(&k, 3, 3, JSON_STRING);
    assert_span(&v, 9, 1, JSON_NUMBER);
    assert_int_equal(json_object_next(doc, &obj, &pos, &k, &v), 1);
    assert_span(&k, 13, 3, JSON_STRING);
    assert_span(&v, 17, 13, JSON_ARRAY);
    assert_memory_equal(doc + v.off, "[1,{\"c\":\"}\"}]", 13);
    assert_int_equal(json_object_next(doc, &obj, &pos, &k, &v), 1);
    assert_span(&k, 32, 5, JSON_STRING);
    assert_memory_equal(doc + k.off, "\"d\\\"\"", 5);
    assert_span(&v, 38, 5, JSON_STRING);
    assert_int_equal(json_object_next(doc, &obj, &pos, &k, &v), 1);
    assert_memory_equal(doc + k.off, "\"e\"", 3);
    assert_span(&v, 49, 2, JSON_OBJECT);
    assert_int_equal(json_object_next(doc, &obj, &pos, &k, &v), 0);
    assert_int_equal(json_object_next(doc, &obj, &pos, &k, &v), 0);

    /* Empty object, and an array passed as an object. */
    assert_int_equal(json_validate(LIT("{ }"), &obj), 0);
    pos = 0;
    assert_int_equal(json_object_next("{ }", &obj, &pos, &k, &v), 0);
    assert_int_equal(json_validate(LIT("[1]"), &obj), 0);
    pos = 0;
    assert_int_equal(json_object_next("[1]", &obj, &pos, &k, &v), 0);
}

/* What json_validate_members reported, member by member. */
struct seen {
    size_t n;
    struct json_span key[16], value[16];
};

static void see(void *arg, const struct json_span *key, const struct json_span *value)
{
    struct seen *s = arg;

    assert_true(s->n < 16);
    s->key[s->n] = *key;
    s->value[s->n] = *value;
    s->n++;
}

/* json_validate_members reports what validating and then iterating would, in one pass. */
static void check_members(const char *doc)
{
    struct json_span whole, again, k, v;
    struct seen seen = {0};
    size_t pos = 0, i = 0;

    assert_int_equal(json_validate_members(doc, strlen(doc), &whole, see, &seen), 0);
    assert_int_equal(json_validate(doc, strlen(doc), &again), 0);
    assert_span(&whole, again.off, again.len, again.type);
    while (whole.type == JSON_OBJECT && json_object_next(doc, &whole, &pos, &k, &v) == 1) {
        assert_true(i < seen.n);
        assert_span(&seen.key[i], k.off, k.len, k.type);
        assert_span(&seen.value[i], v.off, v.len, v.type);
        i++;
    }
    if (seen.n != i)
        print_error("\"%s\": %zu members reported, the iterator finds %zu\n", doc, seen.n, i);
    assert_int_equal(seen.n, i);
}

/*
 * Every position of every kind of byte that stops a run of plain string bytes, across the
 * 16- and 8-byte blocks the scanner reads: the verdict is the byte's, wherever it sits.
 */
static void test_string_blocks(void **state)
{
    static const struct {
        const char *bytes;
        int want;
    } kinds[] = {
        {"\"", JSON_ERR_TRAILING}, /* ends the string early; the rest is junk */
        {"\\n", 0},
        {"\\u00e9", 0},
        {"\x1f", JSON_ERR_SYNTAX},
        {"\x7f", 0}, /* DEL is allowed */
        {"\xc3\xa9", 0},
        {"\xe2\x82\xac", 0},
        {"\xff", JSON_ERR_UTF8},
        {"\xc3", JSON_ERR_UTF8},
    };
    char doc[128];

    (void)state;
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        for (size_t before = 0; before <= 40; before++) {
            for (size_t after = 0; after <= 20; after += 19) {
                size_t n = 0, b = strlen(kinds[k].bytes);
                int rc;

                doc[n++] = '"';
                memset(doc + n, 'a', before);
                n += before;
                memcpy(doc + n, kinds[k].bytes, b);
                n += b;
                memset(doc + n, 'z', after);
                n += after;
                doc[n++] = '"';
                rc = json_validate(doc, n, NULL);
                if (rc != kinds[k].want)
                    print_error("kind %zu at %zu (+%zu after): got %d\n", k, before, after, rc);
                assert_int_equal(rc, kinds[k].want);
            }
        }
    }
}

static void test_validate_members(void **state)
{
    static const char *const docs[] = {
        " { \"a\" : 1 , \"b\":[1,{\"c\":\"}\"}], \"d\\\"\":\"x,y\" ,\"e\":{} } ",
        "{}",
        "{ }",
        "{\"a\":{}}",
        "{\"a\":[]}",
        "{\"a\":{\"b\":{\"c\":1},\"d\":2},\"e\":3}",
        "{\"t\":true,\"f\":false,\"n\":null,\"x\":-1.5e3,\"s\":\"\\u00e9\\n\",\"z\":0}",
        "{\"a\":1,\"a\":2,\"a\":[3]}",
        "{\"a\":1,\"b\":2,\"c\":3,\"d\":4,\"e\":5,\"f\":6,\"g\":7,\"h\":8,\"i\":9,\"j\":10}",
        "{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":\"0x00\"}\n",
        "[{\"a\":1},{\"b\":2}]",
        "\"a string\"",
        "42",
    };

    (void)state;
    for (size_t k = 0; k < sizeof(docs) / sizeof(docs[0]); k++)
        check_members(docs[k]);
}

static void test_validate_members_errors(void **state)
{
    static const struct vcase bad[] = {
        {"{\"a\":1,}", 0, JSON_ERR_SYNTAX},
        {"{\"a\" 1}", 0, JSON_ERR_SYNTAX},
        {"{\"a\":1}}", 0, JSON_ERR_TRAILING},
        {"{\"a\":\"\xff\"}", 0, JSON_ERR_UTF8},
        {"{\"a\":\"\\ud800\"}", 0, JSON_ERR_SURROGATE},
        {"{\"a\":[1,2}", 0, JSON_ERR_SYNTAX},
        {"  ", 0, JSON_ERR_EMPTY},
    };
    struct json_span whole;

    (void)state;
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        struct seen seen = {0};

        assert_int_equal(
            json_validate_members(bad[k].text, strlen(bad[k].text), &whole, see, &seen),
            bad[k].want);
    }
}

static void test_array_next(void **state)
{
    static const char doc[] = "[ 1, \"a]\" ,{\"b\":[2]},null,-0.5e3,true,[[]] ]";
    static const struct {
        size_t off, len;
        enum json_type type;
    } want[] = {
        {2, 1, JSON_NUMBER},  {5, 4, JSON_STRING}, {11, 9, JSON_OBJECT}, {21, 4, JSON_NULL},
        {26, 6, JSON_NUMBER}, {33, 4, JSON_TRUE},  {38, 4, JSON_ARRAY},
    };
    struct json_span arr, e;
    size_t pos = 0, n = 0;

    assert_int_equal(json_validate(LIT(doc), &arr), 0);
    while (json_array_next(doc, &arr, &pos, &e) == 1) {
        assert_true(n < sizeof(want) / sizeof(want[0]));
        assert_span(&e, want[n].off, want[n].len, want[n].type);
        n++;
    }
    assert_int_equal(n, 7);

    assert_int_equal(json_validate(LIT("[]"), &arr), 0);
    pos = 0;
    assert_int_equal(json_array_next("[]", &arr, &pos, &e), 0);
    assert_int_equal(json_validate(LIT("{}"), &arr), 0);
    pos = 0;
    assert_int_equal(json_array_next("{}", &arr, &pos, &e), 0);
}

static void test_string_eq_u64(void **state)
{
    static const char doc[] = "[\"2.0\",\"2\\u002e0\",2.0,\"id\",0,18446744073709551615,"
                              "18446744073709551616,9223372036854775808,-1,0.5,1e3,1E400]";
    struct json_span arr, e[12];
    size_t pos = 0, n = 0;
    uint64_t v = 12345;

    assert_int_equal(json_validate(LIT(doc), &arr), 0);
    while (n < 12 && json_array_next(doc, &arr, &pos, &e[n]) == 1)
        n++;
    assert_int_equal(n, 12);
    assert_true(json_string_eq(doc, &e[0], "2.0"));
    assert_false(json_string_eq(doc, &e[0], "2.00"));
    assert_false(json_string_eq(doc, &e[0], "2."));
    assert_false(json_string_eq(doc, &e[1], "2.0")); /* escapes never match */
    assert_false(json_string_eq(doc, &e[2], "2.0")); /* a number */
    assert_true(json_string_eq(doc, &e[3], "id"));

    assert_false(json_to_u64(doc, &e[0], &v));
    assert_int_equal(v, 12345);
    assert_true(json_to_u64(doc, &e[4], &v));
    assert_int_equal(v, 0);
    assert_true(json_to_u64(doc, &e[5], &v));
    assert_true(v == UINT64_MAX);
    v = 1;
    assert_false(json_to_u64(doc, &e[6], &v));
    assert_int_equal(v, 1);
    assert_true(json_to_u64(doc, &e[7], &v));
    assert_true(v == 9223372036854775808ULL);
    for (int k = 8; k < 12; k++)
        assert_false(json_to_u64(doc, &e[k], &v));
}

static void test_strerror(void **state)
{
    assert_string_equal(json_strerror(JSON_ERR_DEPTH), "nested too deep");
    assert_string_equal(json_strerror(JSON_ERR_SURROGATE),
                        "lone or misordered UTF-16 surrogate escape");
    assert_string_equal(json_strerror(-99), "unknown JSON error");
}

/* Skim `s` in chunks of `chunk` bytes; returns the json_skim_id code and stores the id. */
static int skim(const char *s, size_t len, size_t chunk, uint64_t *id)
{
    struct json_skim sk;

    json_skim_init(&sk);
    for (size_t i = 0; i < len; i += chunk)
        json_skim_feed(&sk, s + i, len - i < chunk ? len - i : chunk);
    return json_skim_id(&sk, id);
}

struct skcase {
    const char *text;
    int want;
    uint64_t id;
};

static void test_skim_cases(void **state)
{
    static const struct skcase c[] = {
        {"{\"jsonrpc\":\"2.0\",\"id\":42,\"result\":\"0x00\"}", 0, 42},
        {" {\"id\" : 7 }", 0, 7},
        {"{\"result\":{\"id\":7,\"s\":\"}{\\\"id\\\":9\"},\"id\":123}", 0, 123},
        {"{\"result\":\"a\\\\\",\"id\":5}", 0, 5},
        {"{\"result\":[{\"id\":1},[2,{\"id\":3}]],\"id\":0}", 0, 0},
        {"{\"id\":18446744073709551615}", 0, UINT64_MAX},
        {"{\"id\":9223372036854775808}", 0, 9223372036854775808ULL},
        {"{\"id\":1,\"id\":2}", 0, 2},
        {"{\"result\":{\"id\":7}}", -1, 0},
        {"{\"id\":\"42\"}", -1, 0},
        {"{\"id\":-1}", -1, 0},
        {"{\"id\":0.5}", -1, 0},
        {"{\"id\":1e3}", -1, 0},
        {"{\"id\":1E400}", -1, 0},
        {"{\"id\":null}", -1, 0},
        {"{\"id\":true}", -1, 0},
        {"{\"id\":{}}", -1, 0},
        {"{\"id\":[1]}", -1, 0},
        {"{\"id\":18446744073709551616}", -1, 0},
        {"{\"id\":007}", -1, 0},
        {"{\"id\":12", -1, 0}, /* not known to be complete */
        {"{\"id\":1,\"id\":\"x\"}", -1, 0},
        {"{\"\\u0069d\":5}", -1, 0},
        {"{\"idx\":5}", -1, 0},
        {"{\"i\":5}", -1, 0},
        {"{\"\":5}", -1, 0},
        {"[{\"id\":5}]", -1, 0},
        {"{\"a\":\"\\\"id\\\":3\",\"b\":1}", -1, 0},
        {"", -1, 0},
    };
    for (size_t k = 0; k < sizeof(c) / sizeof(c[0]); k++) {
        size_t len = strlen(c[k].text);
        size_t chunks[] = {1, 2, 3, 7, len ? len : 1};

        for (size_t j = 0; j < sizeof(chunks) / sizeof(chunks[0]); j++) {
            uint64_t id = 999;
            int rc = skim(c[k].text, len, chunks[j], &id);

            if (rc != c[k].want)
                print_error("case %zu chunk %zu: %s\n", k, chunks[j], c[k].text);
            assert_int_equal(rc, c[k].want);
            if (rc == 0)
                assert_true(id == c[k].id);
            else
                assert_int_equal(id, 999); /* untouched */
        }
    }
    /* "{"id":12" becomes complete once the delimiter arrives. */
    {
        struct json_skim sk;
        uint64_t id = 0;

        json_skim_init(&sk);
        json_skim_feed(&sk, LIT("{\"id\":12"));
        assert_int_equal(json_skim_id(&sk, &id), -1);
        json_skim_feed(&sk, LIT("34"));
        assert_int_equal(json_skim_id(&sk, &id), -1);
        json_skim_feed(&sk, LIT(","));
        assert_int_equal(json_skim_id(&sk, &id), 0);
        assert_int_equal(id, 1234);
        /* Anything after the closing brace is ignored. */
        json_skim_feed(&sk, LIT("\"x\":1}{\"id\":5}"));
        assert_int_equal(json_skim_id(&sk, &id), 0);
        assert_int_equal(id, 1234);
    }
}

/* id before and after a huge result full of tricky bytes, whole and byte by byte. */
static void test_skim_huge(void **state)
{
    static const char pat[] = "{}[]\\\"\"id\":1,";
    size_t n = 1u << 20, len = 0;
    char *b = malloc(n * 2 + 128);
    uint64_t id = 0;

    assert_non_null(b);
    len += (size_t)sprintf(b, "{\"jsonrpc\":\"2.0\",\"result\":\"");
    /* Escape every quote and backslash of the pattern so the string stays one string. */
    for (size_t k = 0; len < n; k++) {
        char c = pat[k % (sizeof(pat) - 1)];

        if (c == '"' || c == '\\')
            b[len++] = '\\';
        b[len++] = c;
    }
    len += (size_t)sprintf(b + len, "\",\"id\":8589934592}");
    assert_int_equal(json_validate(b, len, NULL), 0);
    assert_int_equal(skim(b, len, 1, &id), 0);
    assert_true(id == 8589934592ULL);
    id = 0;
    assert_int_equal(skim(b, len, 4096, &id), 0);
    assert_true(id == 8589934592ULL);
    id = 0;
    assert_int_equal(skim(b, len, len, &id), 0);
    assert_true(id == 8589934592ULL);
    /* Cut before the id: nothing. */
    assert_int_equal(skim(b, len - 20, 4096, &id), -1);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalars_spans),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_syntax),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_surrogates),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_huge_string),
        cmocka_unit_test(test_scan_value),
        cmocka_unit_test(test_object_next),
        cmocka_unit_test(test_string_blocks),
        cmocka_unit_test(test_validate_members),
        cmocka_unit_test(test_validate_members_errors),
        cmocka_unit_test(test_array_next),
        cmocka_unit_test(test_string_eq_u64),
        cmocka_unit_test(test_strerror),
        cmocka_unit_test(test_skim_cases),
        cmocka_unit_test(test_skim_huge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
