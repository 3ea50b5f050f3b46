/*
 * The identity of a pure read request, so that identical reads from any
 * clients can share one request to the node: the method after alias
 * folding and the params in a canonical form. Pure code, no allocation.
 */
#pragma once

#include <stddef.h>

#include "json.h"

enum read_at {
    READ_NONE = 0, /* not a known pure read: never shared */
    READ_PINNED,   /* names a block hash, or a chain constant: the answer never changes */
    READ_LATEST,   /* at the best block ("latest"): the answer moves with the head */
};

/* Traits of a read. */
enum read_trait {
    READ_CACHE = 1u << 0,   /* pinned, its answer may be kept for ever */
    READ_NULL_OK = 1u << 1, /* a null answer at a pinned block is definite, and may be kept */
};

/* Bytes a key may need beyond the params' own length. */
#define READ_KEY_EXTRA 64

/*
 * Writes the key of a request for method (a string span with quotes) with
 * params (JSON_NONE when absent) from buf into out, at most cap bytes:
 * the canonical method name, a newline, then the params as an array with
 * whitespace outside strings dropped, hex strings ("0x...") lowercased and
 * trailing nulls dropped (an omitted optional param and null are the same
 * to a node). Returns its length and sets *at and *traits (enum
 * read_trait), or returns 0 (with *at READ_NONE) when the method is not a
 * known pure read, its params are not an array, or cap (params.len +
 * READ_KEY_EXTRA suffices) is too small.
 */
size_t read_key(const char *buf, const struct json_span *method, const struct json_span *params,
                char *out, size_t cap, enum read_at *at, unsigned *traits);

/* The i-th method that has keys, in table order; NULL past the end (for the unit tests). */
const char *read_method_name(size_t i);
