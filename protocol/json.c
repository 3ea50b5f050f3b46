/*
 * RFC 8259 validating scanner, member/element iterators and the incremental
 * "id" skimmer. Everything is a flat loop over the caller's bytes: nesting
 * lives in a bit stack, strings are checked 16 or 8 bytes at a time, and
 * nothing is allocated, so a 15 MiB response costs one linear pass.
 */
#include "json.h"

#include <string.h>

/* JSON_PORTABLE: build without the SSE2 loop, as other machines run it (for the tests). */
#if defined(__SSE2__) && !defined(JSON_PORTABLE)
#define JSON_SSE2 1
#include <emmintrin.h>
#endif

#define ONES  0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Words of the depth bit stack: bit set = that level is an object. */
#define STACK_WORDS ((JSON_MAX_DEPTH + 63) / 64)

static inline uint64_t load64(const char *p)
{
    uint64_t v;

    memcpy(&v, p, sizeof(v));
    return v;
}

/* Non-zero when some byte of w is zero. Exact as an existence test. */
static inline uint64_t has_zero(uint64_t w)
{
    return (w - ONES) & ~w & HIGHS;
}

/* Non-zero when some byte of w is '"' or '\\': the only bytes that end a run inside a string
 * the scanner already validated. */
static inline uint64_t has_quote_or_backslash(uint64_t w)
{
    return has_zero(w ^ (ONES * '"')) | has_zero(w ^ (ONES * '\\'));
}

/*
 * Non-zero when some byte of w needs a closer look in a string being validated:
 * a control byte, '"', '\\' or a non-ASCII byte. The "< 0x20" term can
 * misfire only when a byte >= 0x80 is present, which is reported anyway.
 */
static inline uint64_t has_string_special(uint64_t w)
{
    return ((w - ONES * 0x20) & ~w & HIGHS) | has_quote_or_backslash(w) | (w & HIGHS);
}

/*
 * The first byte at or after buf[i] that a string cannot hold as it is ('"',
 * '\\', a control byte or a non-ASCII one, which is checked on its own), or
 * len. Sixteen bytes at a time with SSE2 (every x86-64 has it), else eight.
 */
static inline size_t string_run_end(const char *buf, size_t len, size_t i)
{
#if defined(JSON_SSE2)
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);

    while (len - i >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(buf + i));
        /* Signed, bytes >= 0x80 are below 0x20 too. */
        __m128i special =
            _mm_or_si128(_mm_cmplt_epi8(v, space),
                         _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)));
        unsigned mask = (unsigned)_mm_movemask_epi8(special);

        if (mask != 0)
            return i + (size_t)__builtin_ctz(mask);
        i += 16;
    }
#endif
    while (len - i >= 8 && !has_string_special(load64(buf + i)))
        i += 8;
    while (i < len) {
        unsigned char c = (unsigned char)buf[i];

        if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\')
            break;
        i++;
    }
    return i;
}

static inline bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

static inline bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static inline size_t skip_ws(const char *buf, size_t len, size_t i)
{
    while (i < len && is_ws((unsigned char)buf[i]))
        i++;
    return i;
}

static enum json_type type_of(char c)
{
    switch (c) {
    case '{':
        return JSON_OBJECT;
    case '[':
        return JSON_ARRAY;
    case '"':
        return JSON_STRING;
    case 't':
        return JSON_TRUE;
    case 'f':
        return JSON_FALSE;
    case 'n':
        return JSON_NULL;
    default:
        return JSON_NUMBER;
    }
}

size_t json_utf8_len(const unsigned char *p, size_t n)
{
    unsigned c, lo = 0x80, hi = 0xBF;
    size_t need, k;

    if (n == 0)
        return 0;
    c = p[0];
    if (c < 0x80)
        return 1;
    if (c < 0xC2) /* continuation byte, or C0/C1: always overlong */
        return 0;
    if (c < 0xE0) {
        need = 1;
    } else if (c < 0xF0) {
        need = 2;
        if (c == 0xE0)
            lo = 0xA0; /* overlong below U+0800 */
        else if (c == 0xED)
            hi = 0x9F; /* U+D800..DFFF are not characters */
    } else if (c < 0xF5) {
        need = 3;
        if (c == 0xF0)
            lo = 0x90; /* overlong below U+10000 */
        else if (c == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (n <= need)
        return 0;
    for (k = 1; k <= need; k++) {
        if (p[k] < lo || p[k] > hi)
            return 0;
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

static int hex4(const char *p, unsigned *ret)
{
    unsigned v = 0;

    for (int k = 0; k < 4; k++) {
        unsigned char c = (unsigned char)p[k];
        unsigned d;

        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v << 4 | d;
    }
    *ret = v;
    return 0;
}

/* An escape at buf[*pos] == '\\'. Advances *pos past it (and past the low half of a pair). */
static int scan_escape(const char *buf, size_t len, size_t *pos)
{
    size_t i = *pos;
    unsigned u, lo;

    if (len - i < 2)
        return JSON_ERR_SYNTAX;
    switch (buf[i + 1]) {
    case '"':
    case '\\':
    case '/':
    case 'b':
    case 'f':
    case 'n':
    case 'r':
    case 't':
        *pos = i + 2;
        return JSON_OK;
    case 'u':
        break;
    default:
        return JSON_ERR_SYNTAX;
    }
    if (len - i < 6 || hex4(buf + i + 2, &u) < 0)
        return JSON_ERR_SYNTAX;
    i += 6;
    if (u >= 0xDC00 && u <= 0xDFFF) /* a low half with no high half before it */
        return JSON_ERR_SURROGATE;
    if (u >= 0xD800 && u <= 0xDBFF) {
        /* A high half must be followed at once by an escaped low half. */
        if (i < len && buf[i] != '\\')
            return JSON_ERR_SURROGATE;
        if (i + 1 < len && buf[i + 1] != 'u')
            return JSON_ERR_SURROGATE;
        if (len - i < 6 || hex4(buf + i + 2, &lo) < 0)
            return JSON_ERR_SYNTAX;
        if (lo < 0xDC00 || lo > 0xDFFF)
            return JSON_ERR_SURROGATE;
        i += 6;
    }
    *pos = i;
    return JSON_OK;
}

/* A string whose opening quote is at buf[*pos]; *pos ends just past the closing quote. */
static int scan_string(const char *buf, size_t len, size_t *pos)
{
    size_t i = *pos + 1;
    int rc;

    for (;;) {
        unsigned char c;
        size_t n;

        i = string_run_end(buf, len, i);
        if (i >= len)
            return JSON_ERR_SYNTAX; /* unterminated */
        c = (unsigned char)buf[i];
        if (c == '"') {
            *pos = i + 1;
            return JSON_OK;
        }
        if (c == '\\') {
            rc = scan_escape(buf, len, &i);
            if (rc < 0)
                return rc;
            continue;
        }
        if (c < 0x20)
            return JSON_ERR_SYNTAX;
        n = json_utf8_len((const unsigned char *)buf + i, len - i);
        if (n == 0)
            return JSON_ERR_UTF8;
        i += n;
    }
}

/*
 * -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? starting at buf[*pos]. A digit
 * right after a leading zero is rejected here rather than left as trailing
 * bytes, so "01" is a syntax error wherever it appears.
 */
static int scan_number(const char *buf, size_t len, size_t *pos)
{
    size_t i = *pos;

    if (buf[i] == '-')
        i++;
    if (i >= len)
        return JSON_ERR_SYNTAX;
    if (buf[i] == '0') {
        i++;
        if (i < len && is_digit((unsigned char)buf[i]))
            return JSON_ERR_SYNTAX;
    } else if (is_digit((unsigned char)buf[i])) {
        while (i < len && is_digit((unsigned char)buf[i]))
            i++;
    } else {
        return JSON_ERR_SYNTAX;
    }
    if (i < len && buf[i] == '.') {
        i++;
        if (i >= len || !is_digit((unsigned char)buf[i]))
            return JSON_ERR_SYNTAX;
        while (i < len && is_digit((unsigned char)buf[i]))
            i++;
    }
    if (i < len && (buf[i] == 'e' || buf[i] == 'E')) {
        i++;
        if (i < len && (buf[i] == '+' || buf[i] == '-'))
            i++;
        if (i >= len || !is_digit((unsigned char)buf[i]))
            return JSON_ERR_SYNTAX;
        while (i < len && is_digit((unsigned char)buf[i]))
            i++;
    }
    *pos = i;
    return JSON_OK;
}

static int scan_literal(const char *buf, size_t len, size_t *pos, const char *lit, size_t n)
{
    if (len - *pos < n || memcmp(buf + *pos, lit, n) != 0)
        return JSON_ERR_SYNTAX;
    *pos += n;
    return JSON_OK;
}

/*
 * An object key at buf[*pos] and its colon; *pos ends at the start of the value,
 * *key_end just past the key's closing quote.
 */
static int scan_key(const char *buf, size_t len, size_t *pos, size_t *key_end)
{
    size_t i = *pos;
    int rc;

    if (i >= len || buf[i] != '"')
        return JSON_ERR_SYNTAX;
    rc = scan_string(buf, len, &i);
    if (rc < 0)
        return rc;
    *key_end = i;
    i = skip_ws(buf, len, i);
    if (i >= len || buf[i] != ':')
        return JSON_ERR_SYNTAX;
    *pos = skip_ws(buf, len, i + 1);
    return JSON_OK;
}

/* Where scan_value reports the members of a top-level object (json_validate_members). */
struct member_log {
    json_member_fn *fn;
    void *arg;
    struct json_span key; /* of the member whose value is being scanned */
    size_t value;         /* where that value starts */
};

static void log_key(struct member_log *log, size_t key, size_t key_end, size_t value)
{
    log->key = (struct json_span){key, key_end - key, JSON_STRING};
    log->value = value;
}

static void log_value_end(struct member_log *log, const char *buf, size_t end)
{
    struct json_span v = {log->value, end - log->value, type_of(buf[log->value])};

    log->fn(log->arg, &log->key, &v);
}

/* json_scan_value; with a log, the members of a top-level object go into it as they pass. */
static int scan_value(const char *buf, size_t len, size_t off, struct json_span *ret,
                      struct member_log *log)
{
    uint64_t stack[STACK_WORDS];
    size_t depth = 0, start, i, key_end;
    int rc;

    if (off > len)
        return JSON_ERR_SYNTAX;
    i = skip_ws(buf, len, off);
    if (i >= len)
        return JSON_ERR_EMPTY;
    start = i;
    if (log && buf[i] != '{')
        log = NULL;
    for (;;) {
        /* A value must start at buf[i]. */
        bool opened = false;

        if (i >= len)
            return JSON_ERR_SYNTAX;
        switch (buf[i]) {
        case '{':
        case '[': {
            bool obj = buf[i] == '{';
            uint64_t bit = 1ULL << (depth % 64);

            if (depth >= JSON_MAX_DEPTH)
                return JSON_ERR_DEPTH;
            if (obj)
                stack[depth / 64] |= bit;
            else
                stack[depth / 64] &= ~bit;
            depth++;
            i = skip_ws(buf, len, i + 1);
            if (i < len && buf[i] == (obj ? '}' : ']')) {
                depth--;
                i++;
                break;
            }
            if (obj) {
                size_t k = i;

                rc = scan_key(buf, len, &i, &key_end);
                if (rc < 0)
                    return rc;
                if (log && depth == 1)
                    log_key(log, k, key_end, i);
            }
            opened = true;
            break;
        }
        case '"':
            rc = scan_string(buf, len, &i);
            if (rc < 0)
                return rc;
            break;
        case '-':
        case '0':
        case '1':
        case '2':
        case '3':
        case '4':
        case '5':
        case '6':
        case '7':
        case '8':
        case '9':
            rc = scan_number(buf, len, &i);
            if (rc < 0)
                return rc;
            break;
        case 't':
            rc = scan_literal(buf, len, &i, "true", 4);
            if (rc < 0)
                return rc;
            break;
        case 'f':
            rc = scan_literal(buf, len, &i, "false", 5);
            if (rc < 0)
                return rc;
            break;
        case 'n':
            rc = scan_literal(buf, len, &i, "null", 4);
            if (rc < 0)
                return rc;
            break;
        default:
            return JSON_ERR_SYNTAX;
        }
        if (opened)
            continue;

        /* A value ended at i: close containers until one wants another member. */
        for (;;) {
            bool obj;

            if (depth == 0) {
                if (ret) {
                    ret->off = start;
                    ret->len = i - start;
                    ret->type = type_of(buf[start]);
                }
                return JSON_OK;
            }
            if (log && depth == 1)
                log_value_end(log, buf, i);
            i = skip_ws(buf, len, i);
            if (i >= len)
                return JSON_ERR_SYNTAX;
            obj = (stack[(depth - 1) / 64] >> ((depth - 1) % 64)) & 1;
            if (buf[i] == ',') {
                i = skip_ws(buf, len, i + 1);
                if (obj) {
                    size_t k = i;

                    rc = scan_key(buf, len, &i, &key_end);
                    if (rc < 0)
                        return rc;
                    if (log && depth == 1)
                        log_key(log, k, key_end, i);
                }
                break;
            }
            if (buf[i] != (obj ? '}' : ']'))
                return JSON_ERR_SYNTAX;
            depth--;
            i++;
        }
    }
}

int json_scan_value(const char *buf, size_t len, size_t off, struct json_span *ret)
{
    return scan_value(buf, len, off, ret, NULL);
}

static int validate(const char *buf, size_t len, struct json_span *ret, struct member_log *log)
{
    struct json_span v;
    int rc = scan_value(buf, len, 0, &v, log);

    if (rc < 0)
        return rc;
    if (skip_ws(buf, len, v.off + v.len) != len)
        return JSON_ERR_TRAILING;
    if (ret)
        *ret = v;
    return JSON_OK;
}

int json_validate(const char *buf, size_t len, struct json_span *ret)
{
    return validate(buf, len, ret, NULL);
}

int json_validate_members(const char *buf, size_t len, struct json_span *ret, json_member_fn *fn,
                          void *arg)
{
    struct member_log log = {.fn = fn, .arg = arg};

    return validate(buf, len, ret, &log);
}

/*
 * The iterators trust that the container was validated, so they only look
 * for quotes, backslashes and brackets. They still never read past the
 * container's span, so a wrong span gives wrong answers, not a crash.
 */
static size_t skip_string(const char *buf, size_t i, size_t end)
{
    i++;
    while (i < end) {
        while (end - i >= 8 && !has_quote_or_backslash(load64(buf + i)))
            i += 8;
        while (i < end && buf[i] != '"' && buf[i] != '\\')
            i++;
        if (i >= end)
            break;
        if (buf[i] == '"')
            return i + 1;
        i += 2; /* the escaped byte cannot end the string */
    }
    return end;
}

static size_t skip_value(const char *buf, size_t i, size_t end)
{
    size_t depth = 0;

    while (i < end) {
        char c = buf[i];

        if (c == '"') {
            i = skip_string(buf, i, end);
            if (depth == 0)
                return i;
        } else if (c == '{' || c == '[') {
            depth++;
            i++;
        } else if (c == '}' || c == ']') {
            if (depth == 0)
                return i;
            i++;
            if (--depth == 0)
                return i;
        } else if (depth == 0) {
            /* A number or literal: runs to the next delimiter. */
            while (i < end && buf[i] != ',' && buf[i] != '}' && buf[i] != ']' &&
                   !is_ws((unsigned char)buf[i]))
                i++;
            return i;
        } else {
            i++;
        }
    }
    return end;
}

/*
 * Common walk: position i at the next member of the container, or return
 * false at its end. *pos is relative to the container start; 0 means "before
 * the first member".
 */
static bool next_start(const char *buf, const struct json_span *c, size_t pos, size_t *ret_i)
{
    size_t close = c->off + c->len - 1; /* the closing bracket */
    size_t i = c->off + (pos == 0 ? 1 : pos);

    i = skip_ws(buf, close, i);
    if (pos != 0) {
        if (i >= close || buf[i] != ',')
            return false;
        i = skip_ws(buf, close, i + 1);
    }
    if (i >= close)
        return false;
    *ret_i = i;
    return true;
}

int json_object_next(const char *buf, const struct json_span *obj, size_t *pos,
                     struct json_span *ret_key, struct json_span *ret_value)
{
    size_t close, i, k, ke, v;

    if (obj->type != JSON_OBJECT || obj->len < 2 || !next_start(buf, obj, *pos, &i))
        return 0;
    close = obj->off + obj->len - 1;
    if (buf[i] != '"')
        return 0;
    k = i;
    ke = skip_string(buf, i, close);
    i = skip_ws(buf, close, ke);
    if (i >= close || buf[i] != ':')
        return 0;
    v = skip_ws(buf, close, i + 1);
    if (v >= close)
        return 0;
    i = skip_value(buf, v, close);
    ret_key->off = k;
    ret_key->len = ke - k;
    ret_key->type = JSON_STRING;
    ret_value->off = v;
    ret_value->len = i - v;
    ret_value->type = type_of(buf[v]);
    *pos = i - obj->off;
    return 1;
}

int json_array_next(const char *buf, const struct json_span *arr, size_t *pos,
                    struct json_span *ret_elem)
{
    size_t close, i, e;

    if (arr->type != JSON_ARRAY || arr->len < 2 || !next_start(buf, arr, *pos, &i))
        return 0;
    close = arr->off + arr->len - 1;
    e = skip_value(buf, i, close);
    ret_elem->off = i;
    ret_elem->len = e - i;
    ret_elem->type = type_of(buf[i]);
    *pos = e - arr->off;
    return 1;
}

bool json_string_eq(const char *buf, const struct json_span *s, const char *lit)
{
    size_t n = strlen(lit);

    if (s->type != JSON_STRING || s->len != n + 2)
        return false;
    if (memchr(buf + s->off + 1, '\\', n) != NULL)
        return false;
    return memcmp(buf + s->off + 1, lit, n) == 0;
}

bool json_to_u64(const char *buf, const struct json_span *s, uint64_t *ret)
{
    uint64_t v = 0;

    if (s->type != JSON_NUMBER || s->len == 0 || s->len > 20)
        return false;
    if (s->len > 1 && buf[s->off] == '0')
        return false;
    for (size_t k = 0; k < s->len; k++) {
        unsigned char c = (unsigned char)buf[s->off + k];
        unsigned d;

        if (!is_digit(c))
            return false;
        d = c - '0';
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *ret = v;
    return true;
}

const char *json_strerror(int err)
{
    switch (err) {
    case JSON_OK:
        return "ok";
    case JSON_ERR_SYNTAX:
        return "syntax error";
    case JSON_ERR_DEPTH:
        return "nested too deep";
    case JSON_ERR_UTF8:
        return "invalid UTF-8 in a string";
    case JSON_ERR_SURROGATE:
        return "lone or misordered UTF-16 surrogate escape";
    case JSON_ERR_TRAILING:
        return "bytes after the value";
    case JSON_ERR_EMPTY:
        return "no value";
    default:
        return "unknown JSON error";
    }
}

/* Skimmer states. Depth 1 is inside the top-level object. */
enum {
    SKIM_START = 0,  /* before the top-level '{' */
    SKIM_KEY_WAIT,   /* depth 1: a key, ',' or '}' comes next */
    SKIM_KEY,        /* depth 1: inside a key */
    SKIM_COLON,      /* depth 1: after a key */
    SKIM_VALUE_WAIT, /* depth 1: after the colon */
    SKIM_ID,         /* reading the digits of the top-level "id" */
    SKIM_VALUE,      /* inside some other value (depth >= 1) */
    SKIM_DONE,       /* the top-level object closed */
    SKIM_DEAD,       /* not an object we understand: report nothing */
};

void json_skim_init(struct json_skim *sk)
{
    memset(sk, 0, sizeof(*sk));
    sk->state = SKIM_START;
}

/* Inside a value at depth >= 1: strings, brackets, and the ',' or '}' that ends it. */
static size_t skim_value(struct json_skim *sk, const char *p, size_t i, size_t n)
{
    while (i < n) {
        char c;

        if (sk->in_string) {
            if (sk->escape) {
                sk->escape = false;
                i++;
                continue;
            }
            /* The bulk of a large response is one long hex string: skip it fast. */
            while (n - i >= 8 && !has_quote_or_backslash(load64(p + i)))
                i += 8;
            while (i < n && p[i] != '"' && p[i] != '\\')
                i++;
            if (i >= n)
                return n;
            if (p[i] == '\\')
                sk->escape = true;
            else
                sk->in_string = false;
            i++;
            continue;
        }
        c = p[i++];
        switch (c) {
        case '"':
            sk->in_string = true;
            break;
        case '{':
        case '[':
            if (sk->depth == UINT32_MAX) {
                sk->state = SKIM_DEAD;
                return n;
            }
            sk->depth++;
            break;
        case '}':
        case ']':
            if (--sk->depth == 0) {
                sk->state = SKIM_DONE;
                return i;
            }
            break;
        case ',':
            if (sk->depth == 1) {
                sk->state = SKIM_KEY_WAIT;
                return i;
            }
            break;
        default:
            break;
        }
    }
    return n;
}

void json_skim_feed(struct json_skim *sk, const char *p, size_t n)
{
    size_t i = 0;

    while (i < n) {
        unsigned char c = (unsigned char)p[i];

        switch (sk->state) {
        case SKIM_START:
            i++;
            if (c == '{') {
                sk->depth = 1;
                sk->state = SKIM_KEY_WAIT;
            } else if (!is_ws(c)) {
                sk->state = SKIM_DEAD;
            }
            break;
        case SKIM_KEY_WAIT:
            i++;
            if (c == '"') {
                sk->key_len = 0;
                sk->escape = false;
                sk->state = SKIM_KEY;
            } else if (c == '}') {
                sk->depth = 0;
                sk->state = SKIM_DONE;
            } else if (!is_ws(c) && c != ',') {
                sk->state = SKIM_DEAD;
            }
            break;
        case SKIM_KEY:
            i++;
            if (sk->escape) {
                sk->escape = false;
            } else if (c == '\\') {
                /* Exact bytes, as in jsonrpc_scan: an escaped key is never "id". */
                sk->escape = true;
                sk->key_len = 0xff;
            } else if (c == '"') {
                sk->key_is_id = sk->key_len == 2 && sk->key[0] == 'i' && sk->key[1] == 'd';
                sk->state = SKIM_COLON;
            } else if (sk->key_len < 2) {
                sk->key[sk->key_len++] = (char)c;
            } else {
                sk->key_len = 0xff;
            }
            break;
        case SKIM_COLON:
            i++;
            if (c == ':')
                sk->state = SKIM_VALUE_WAIT;
            else if (!is_ws(c))
                sk->state = SKIM_DEAD;
            break;
        case SKIM_VALUE_WAIT:
            if (is_ws(c)) {
                i++;
                break;
            }
            if (sk->key_is_id) {
                /* A later "id" replaces an earlier one, whatever its type. */
                sk->have_id = false;
                if (is_digit(c)) {
                    i++;
                    sk->id = c - '0';
                    sk->id_digits = 1;
                    sk->id_bad = false;
                    sk->state = SKIM_ID;
                    break;
                }
            }
            sk->state = SKIM_VALUE;
            break;
        case SKIM_ID:
            if (is_digit(c)) {
                unsigned d = c - '0';

                i++;
                if (sk->id_digits == 1 && sk->id == 0)
                    sk->id_bad = true; /* leading zero: not JSON */
                if (sk->id > (UINT64_MAX - d) / 10)
                    sk->id_bad = true;
                else
                    sk->id = sk->id * 10 + d;
                if (sk->id_digits < UINT8_MAX)
                    sk->id_digits++;
                break;
            }
            /* Only a delimiter completes an integer; '.', 'e' and the like do not. */
            sk->have_id = !sk->id_bad && (is_ws(c) || c == ',' || c == '}');
            sk->state = SKIM_VALUE; /* re-read c there */
            break;
        case SKIM_VALUE:
            i = skim_value(sk, p, i, n);
            break;
        default: /* SKIM_DONE, SKIM_DEAD */
            return;
        }
    }
}

int json_skim_id(const struct json_skim *sk, uint64_t *ret_id)
{
    if (!sk->have_id)
        return -1;
    *ret_id = sk->id;
    return 0;
}
