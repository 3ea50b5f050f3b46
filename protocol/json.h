/*
 * Validating JSON scanner (RFC 8259) that finds values without building a
 * tree. Pure code: no allocation, no I/O, no globals. Nesting is tracked with
 * a bit stack, not recursion, so hostile depth is an error, never a crash.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Deeper documents are rejected with JSON_ERR_DEPTH. */
#define JSON_MAX_DEPTH 1024

enum json_type {
    JSON_NONE = 0, /* absent */
    JSON_OBJECT,
    JSON_ARRAY,
    JSON_STRING,
    JSON_NUMBER,
    JSON_TRUE,
    JSON_FALSE,
    JSON_NULL,
};

enum json_err {
    JSON_OK = 0,
    JSON_ERR_SYNTAX = -1,    /* not JSON */
    JSON_ERR_DEPTH = -2,     /* nested deeper than JSON_MAX_DEPTH */
    JSON_ERR_UTF8 = -3,      /* invalid UTF-8 in a string */
    JSON_ERR_SURROGATE = -4, /* \u escape with a lone or misordered surrogate */
    JSON_ERR_TRAILING = -5,  /* a complete value followed by more than whitespace */
    JSON_ERR_EMPTY = -6,     /* only whitespace */
};

/* A value inside a caller's buffer; type JSON_NONE (and len 0) means absent. */
struct json_span {
    size_t off;
    size_t len;
    enum json_type type;
};

/*
 * Validate the single value that starts at buf[off] (leading whitespace is
 * skipped). On success store its span in *ret (may be NULL) and return 0;
 * otherwise return a negative enum json_err and leave *ret untouched.
 * Bytes after the value are not validated (only read to find where a number
 * ends; a digit right after a leading zero is a syntax error).
 */
int json_scan_value(const char *buf, size_t len, size_t off, struct json_span *ret);

/* The whole buffer must be exactly one value with optional surrounding whitespace. */
int json_validate(const char *buf, size_t len, struct json_span *ret);

/* One member of a top-level object: its key span (with quotes) and its value span. */
typedef void json_member_fn(void *arg, const struct json_span *key, const struct json_span *value);

/*
 * json_validate, and in the same pass, when the value is an object, fn(arg, ...)
 * for each of its members in order (validating and then iterating would read a
 * large value twice). fn runs as members pass, before the verdict: on an error
 * return, what it was told is to be thrown away.
 */
int json_validate_members(const char *buf, size_t len, struct json_span *ret, json_member_fn *fn,
                          void *arg);

/*
 * Iterate over a validated object's members. *pos starts at 0; each call
 * stores the key span (including quotes) and value span and returns 1, or
 * returns 0 at the end. The object must have been validated first.
 */
int json_object_next(const char *buf, const struct json_span *obj, size_t *pos,
                     struct json_span *ret_key, struct json_span *ret_value);

/* Same for a validated array's elements. */
int json_array_next(const char *buf, const struct json_span *arr, size_t *pos,
                    struct json_span *ret_elem);

/* True when the string span (with quotes) holds exactly `lit` and no escapes. */
bool json_string_eq(const char *buf, const struct json_span *s, const char *lit);

/* Parse a JSON number span that is a non-negative integer fitting in uint64_t. */
bool json_to_u64(const char *buf, const struct json_span *s, uint64_t *ret);

const char *json_strerror(int err);

/*
 * Length (1..4) of the well-formed UTF-8 sequence at p[0..n), or 0 when it is
 * ill-formed: stray continuation byte, overlong form, UTF-16 surrogate,
 * above U+10FFFF or cut short by n. Shared by the scanner and json_escape.
 */
size_t json_utf8_len(const unsigned char *p, size_t n);

/*
 * Incremental skimmer: fed a message in arbitrary chunks, it tracks just
 * enough state to report the top-level "id" when it is an unsigned integer.
 * Used for messages too large to keep, so their request can still be failed.
 * It does not validate.
 */
struct json_skim {
    /* Private: the caller only allocates it and calls json_skim_*. */
    uint64_t id;       /* value of the "id" digits read so far */
    uint32_t depth;    /* open brackets */
    uint8_t state;     /* where in the top-level object we are */
    uint8_t key_len;   /* bytes of the current top-level key; 0xff: cannot be "id" */
    uint8_t id_digits; /* digits of the id read so far */
    bool in_string;    /* inside a string in a value */
    bool escape;       /* the previous string byte was a backslash */
    bool key_is_id;    /* the key just read was exactly "id" */
    bool id_bad;       /* the id digits overflow or have a leading zero */
    bool have_id;      /* a complete integer id was seen at depth 1 */
    char key[2];
};

void json_skim_init(struct json_skim *sk);
void json_skim_feed(struct json_skim *sk, const char *p, size_t n);
/* 0 and *ret_id when the top-level "id" was a complete unsigned integer; -1 otherwise. */
int json_skim_id(const struct json_skim *sk, uint64_t *ret_id);
