/*
 * NDJSON framing: one JSON text per line, lines end with "\n" (a "\r"
 * before it is dropped). Lines longer than a limit are discarded whole
 * without being buffered, so one bad client cannot make us hold 100 MB.
 */
#pragma once

#include <stddef.h>
#include <sys/types.h>

enum ndjson_result {
    NDJSON_NEED_MORE = 0, /* no complete line yet; *ret_consumed bytes may be dropped */
    NDJSON_LINE = 1,      /* a line of *ret_line_len bytes at buf[0]; consume *ret_consumed */
    NDJSON_TOO_LONG = 2,  /* the line at buf[0] exceeds max: consume *ret_consumed and discard
                             until the end of the line (see ndjson_skip). *ret_consumed never
                             includes the newline, so ndjson_skip always follows. */
};

/*
 * Look for the next line in buf[0..len). `max` is the longest line accepted
 * (without the newline and a "\r" before it). Both out-params are always set;
 * *ret_line_len is 0 unless NDJSON_LINE.
 */
enum ndjson_result ndjson_next(const char *buf, size_t len, size_t max, size_t *ret_line_len,
                               size_t *ret_consumed);

/*
 * While discarding an over-long line: how many bytes of buf[0..len) belong to
 * it. Sets *ret_done when the newline was found (it is included in the count).
 */
size_t ndjson_skip(const char *buf, size_t len, int *ret_done);
