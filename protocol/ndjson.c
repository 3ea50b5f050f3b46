/*
 * NDJSON line framing over a caller's input buffer. It only finds line ends
 * and enforces the length limit; it never copies, so an over-long line can
 * be thrown away piece by piece as it arrives.
 */
#include "ndjson.h"

#include <stdint.h>
#include <string.h>

enum ndjson_result ndjson_next(const char *buf, size_t len, size_t max, size_t *ret_line_len,
                               size_t *ret_consumed)
{
    /* A line of max bytes may still be followed by "\r\n", hence max + 2. */
    size_t window = max > SIZE_MAX - 2 ? SIZE_MAX : max + 2;
    const char *nl = len > 0 ? memchr(buf, '\n', len) : NULL;

    *ret_line_len = 0;
    if (nl != NULL) {
        size_t k = (size_t)(nl - buf);
        size_t content = k > 0 && buf[k - 1] == '\r' ? k - 1 : k;

        if (content > max) {
            *ret_consumed = k; /* ndjson_skip then eats the newline */
            return NDJSON_TOO_LONG;
        }
        *ret_line_len = content;
        *ret_consumed = k + 1;
        return NDJSON_LINE;
    }
    /* No newline yet: too long once more than max bytes are known not to be "\r". */
    if (len >= window || (len > 0 && len == window - 1 && buf[len - 1] != '\r')) {
        *ret_consumed = len;
        return NDJSON_TOO_LONG;
    }
    *ret_consumed = 0;
    return NDJSON_NEED_MORE;
}

size_t ndjson_skip(const char *buf, size_t len, int *ret_done)
{
    const char *nl = len > 0 ? memchr(buf, '\n', len) : NULL;

    if (nl == NULL) {
        *ret_done = 0;
        return len;
    }
    *ret_done = 1;
    return (size_t)(nl - buf) + 1;
}
