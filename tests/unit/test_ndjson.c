/*
 * Unit tests for NDJSON framing: exact line lengths and consumed counts,
 * the limit at its edges, and a whole stream framed through every chunking.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ndjson.h"

#define LIT(s) s, sizeof(s) - 1

static void expect_next(const char *buf, size_t len, size_t max, enum ndjson_result want,
                        size_t want_line, size_t want_consumed)
{
    size_t line = 999, consumed = 999;

    assert_int_equal(ndjson_next(buf, len, max, &line, &consumed), want);
    assert_int_equal(line, want_line);
    assert_int_equal(consumed, want_consumed);
}

static void test_lines(void **state)
{
    expect_next(LIT("abc\n"), 10, NDJSON_LINE, 3, 4);
    expect_next(LIT("abc\r\n"), 10, NDJSON_LINE, 3, 5);
    expect_next(LIT("a\rb\n"), 10, NDJSON_LINE, 3, 4); /* only a CR before LF goes */
    expect_next(LIT("\n"), 10, NDJSON_LINE, 0, 1);
    expect_next(LIT("\r\n"), 10, NDJSON_LINE, 0, 2);
    expect_next(LIT("  \t\n"), 10, NDJSON_LINE, 3, 4); /* blank lines come back as they are */
    expect_next(LIT("a\nb\n"), 10, NDJSON_LINE, 1, 2);
    expect_next(LIT("{\"a\":1}\n{\"b\""), 10, NDJSON_LINE, 7, 8);
    expect_next(LIT("abc"), 10, NDJSON_NEED_MORE, 0, 0);
    expect_next(LIT("abc\r"), 10, NDJSON_NEED_MORE, 0, 0);
    expect_next("", 0, 10, NDJSON_NEED_MORE, 0, 0);
    expect_next(NULL, 0, 10, NDJSON_NEED_MORE, 0, 0);
}

static void test_limit(void **state)
{
    /* max = 3: three bytes of content are fine with either line end. */
    expect_next(LIT("abc\n"), 3, NDJSON_LINE, 3, 4);
    expect_next(LIT("abc\r\n"), 3, NDJSON_LINE, 3, 5);
    expect_next(LIT("abcd\n"), 3, NDJSON_TOO_LONG, 0, 4);
    expect_next(LIT("abcd\r\n"), 3, NDJSON_TOO_LONG, 0, 5);
    /* A newline far beyond the limit: stop before it, never past it. */
    expect_next(LIT("abcdefgh\nnext\n"), 3, NDJSON_TOO_LONG, 0, 8);
    /* No newline: decide as soon as max + 1 content bytes are certain. */
    expect_next(LIT("abc"), 3, NDJSON_NEED_MORE, 0, 0);
    expect_next(LIT("abcd"), 3, NDJSON_TOO_LONG, 0, 4);
    expect_next(LIT("abc\r"), 3, NDJSON_NEED_MORE, 0, 0); /* could still be "abc\r\n" */
    expect_next(LIT("abc\rx"), 3, NDJSON_TOO_LONG, 0, 5);
    expect_next(LIT("abcdefghij"), 3, NDJSON_TOO_LONG, 0, 10);
    /* max = 0 accepts only empty lines. */
    expect_next(LIT("\n"), 0, NDJSON_LINE, 0, 1);
    expect_next(LIT("\r\n"), 0, NDJSON_LINE, 0, 2);
    expect_next(LIT("\r"), 0, NDJSON_NEED_MORE, 0, 0);
    expect_next(LIT("x"), 0, NDJSON_TOO_LONG, 0, 1);
    /* No overflow at the top of size_t. */
    expect_next(LIT("abc"), SIZE_MAX, NDJSON_NEED_MORE, 0, 0);
    expect_next(LIT("abc\n"), SIZE_MAX, NDJSON_LINE, 3, 4);
}

static void test_skip(void **state)
{
    int done = 7;

    assert_int_equal(ndjson_skip(LIT("xyz"), &done), 3);
    assert_int_equal(done, 0);
    assert_int_equal(ndjson_skip(LIT("xy\nz\n"), &done), 3);
    assert_int_equal(done, 1);
    assert_int_equal(ndjson_skip(LIT("\n"), &done), 1);
    assert_int_equal(done, 1);
    assert_int_equal(ndjson_skip("", 0, &done), 0);
    assert_int_equal(done, 0);
}

/*
 * Frame `in` as the daemon would: an input buffer that grows by `chunk`
 * bytes, lines taken from its front, over-long lines skipped. Lines are
 * appended to out separated by '|', a dropped line shows as "#".
 */
static void frame(const char *in, size_t len, size_t chunk, size_t max, char *out)
{
    char buf[256];
    size_t have = 0, o = 0, fed = 0;
    int skipping = 0;

    out[0] = '\0';
    while (fed < len) {
        size_t n = len - fed < chunk ? len - fed : chunk;

        assert_true(have + n <= sizeof(buf));
        memcpy(buf + have, in + fed, n);
        have += n;
        fed += n;
        for (;;) {
            size_t line, consumed;
            enum ndjson_result r;

            if (skipping) {
                int done;

                consumed = ndjson_skip(buf, have, &done);
                skipping = !done;
            } else {
                r = ndjson_next(buf, have, max, &line, &consumed);
                if (r == NDJSON_LINE) {
                    memcpy(out + o, buf, line);
                    o += line;
                    out[o++] = '|';
                } else if (r == NDJSON_TOO_LONG) {
                    out[o++] = '#';
                    out[o++] = '|';
                    skipping = 1;
                }
            }
            assert_true(consumed <= have);
            memmove(buf, buf + consumed, have - consumed);
            have -= consumed;
            if (consumed == 0 || have == 0)
                break;
        }
        out[o] = '\0';
    }
}

static void test_stream(void **state)
{
    static const char in[] = "ok1\n"
                             "this line is far too long for a max of ten\n"
                             "ok2\r\n"
                             "\n"
                             "0123456789\r\n"
                             "01234567890\n"
                             "tail";
    char out[512];

    for (size_t chunk = 1; chunk <= sizeof(in); chunk++) {
        frame(LIT(in), chunk, 10, out);
        if (strcmp(out, "ok1|#|ok2||0123456789|#|") != 0)
            print_error("chunk %zu: %s\n", chunk, out);
        assert_string_equal(out, "ok1|#|ok2||0123456789|#|");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines),
        cmocka_unit_test(test_limit),
        cmocka_unit_test(test_skip),
        cmocka_unit_test(test_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
