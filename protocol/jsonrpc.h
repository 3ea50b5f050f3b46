/*
 * JSON-RPC 2.0 envelopes as Substrate nodes speak them: locate the top-level
 * members of a message, walk batches, splice ids and build error objects.
 * Pure code over caller buffers; spans point into the scanned buffer.
 */
#pragma once

#include "json.h"

/* Standard JSON-RPC codes. */
#define JSONRPC_PARSE_ERROR      -32700
#define JSONRPC_INVALID_REQUEST  -32600
#define JSONRPC_METHOD_NOT_FOUND -32601
#define JSONRPC_INVALID_PARAMS   -32602
#define JSONRPC_INTERNAL_ERROR   -32603
#define JSONRPC_NODE_TOO_BIG     -32007 /* a Substrate node (jsonrpsee): request over its limit */

/* subpool's own block, -32050..-32099. Documented in the README. */
#define SUBPOOL_ERR_UNAVAILABLE   -32050 /* no upstream became ready in time / queue full */
#define SUBPOOL_ERR_TIMEOUT       -32051 /* the request timed out */
#define SUBPOOL_ERR_UNKNOWN_WRITE -32052 /* link lost with a write in flight: outcome unknown */
#define SUBPOOL_ERR_LIMIT         -32053 /* a size or count limit was exceeded */
#define SUBPOOL_ERR_REFUSED       -32054 /* the method is refused by subpool */
#define SUBPOOL_ERR_SHUTDOWN      -32055 /* the daemon is shutting down */
#define SUBPOOL_ERR_UPSTREAM_LOST -32056 /* upstream lost and the retry failed too */

enum jsonrpc_kind {
    JSONRPC_KIND_REQUEST = 1,      /* method and id */
    JSONRPC_KIND_NOTIFICATION = 2, /* method, no id (includes subscription notifications) */
    JSONRPC_KIND_RESPONSE = 3,     /* result or error, and id */
};

struct jsonrpc_msg {
    enum jsonrpc_kind kind;
    struct json_span whole;  /* the object itself */
    struct json_span id;     /* JSON_NONE when absent */
    struct json_span method; /* string span with quotes */
    struct json_span params;
    struct json_span result;
    struct json_span error;
    /* For notifications whose params is an object: params.subscription and params.result. */
    struct json_span sub;
    struct json_span sub_result;
};

/*
 * Scan one JSON-RPC object at buf[0..len) (surrounding whitespace allowed).
 * Returns 0, JSONRPC_PARSE_ERROR when the bytes are not valid JSON, or
 * JSONRPC_INVALID_REQUEST when they are JSON but not a valid message:
 * not an object, "jsonrpc" not "2.0", duplicate envelope members, an id that
 * is an object/array/boolean, a non-string method, params that are neither
 * array nor object, both or neither of result and error in a response.
 * On an invalid message *ret still holds whatever id was found, so the
 * error reply can echo it (an id of a forbidden type is left JSON_NONE: reply
 * with null). On JSONRPC_PARSE_ERROR *ret is zeroed (no spans). Envelope keys are
 * matched as raw bytes: "\u0069d" is not "id". A message with "method" must
 * not have "result" or "error"; one without must not have "params".
 * The span offsets are relative to buf.
 */
int jsonrpc_scan(const char *buf, size_t len, struct jsonrpc_msg *ret);

/* Same, for one element of an already validated batch: `elem` spans it in buf. */
int jsonrpc_scan_span(const char *buf, const struct json_span *elem, struct jsonrpc_msg *ret);

/* True when the first non-whitespace byte is '[' (a batch). */
bool jsonrpc_is_batch(const char *buf, size_t len);

/* Decimal text of an unsigned id; returns its length (at most 20). out needs 21 bytes. */
size_t jsonrpc_format_u64(char out[21], uint64_t v);

/*
 * Write `{"jsonrpc":"2.0","error":{"code":C,"message":"M"},"id":` into out
 * (message JSON-escaped, truncated to fit). The caller appends the id bytes
 * (or `null`) and `}`. Returns the length written (a NUL follows it); out
 * needs `cap` >= 64, and 0 is returned when cap cannot hold the fixed part.
 */
size_t jsonrpc_error_head(char *out, size_t cap, int code, const char *message);

/* A whole error object with a null id, for errors that have no request. */
size_t jsonrpc_error_null(char *out, size_t cap, int code, const char *message);

/*
 * Copy `s` into out as a JSON string literal with quotes; returns length, truncates to fit
 * (never inside an escape or a UTF-8 character) and NUL-terminates. Ill-formed UTF-8 bytes
 * become \ufffd so the output is always valid JSON. Returns 0 when cap < 3.
 */
size_t json_escape(char *out, size_t cap, const char *s, size_t len);
