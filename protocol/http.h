/*
 * HTTP/1.1 message heads and the WebSocket opening handshake (RFC 6455
 * section 4). Parsing is zero-copy: names and values point into the buffer.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_MAX_HEADERS 48
#define HTTP_MAX_HEAD    16384

struct http_str {
    const char *p;
    size_t len;
};

struct http_header {
    struct http_str name;
    struct http_str value; /* surrounding whitespace trimmed */
};

struct http_head {
    /* Requests: method and target. Responses: status and reason. */
    struct http_str method;
    struct http_str target;
    int status;
    struct http_str reason;
    int major_version; /* HTTP/x.y: requests may carry any digit; responses are HTTP/1 */
    int minor_version;
    size_t n_headers;
    struct http_header headers[HTTP_MAX_HEADERS];
    size_t head_len; /* bytes up to and including the blank line */
};

/*
 * Parse a request or response head at buf[0..len). Return 1 when complete
 * (*ret filled), 0 when more bytes are needed, -1 when malformed or longer
 * than HTTP_MAX_HEAD or with more than HTTP_MAX_HEADERS headers.
 */
int http_parse_request(const char *buf, size_t len, struct http_head *ret);
int http_parse_response(const char *buf, size_t len, struct http_head *ret);

/* Case-insensitive header lookup; NULL when absent. */
const struct http_str *http_header(const struct http_head *h, const char *name);

/*
 * A header that may appear only once: 0 with *ret set to its value (NULL
 * when absent), or -1 when it appears again, with any value or, when
 * same_ok, with a different one.
 */
int http_header_once(const struct http_head *h, const char *name, bool same_ok,
                     const struct http_str **ret);

/* True when a comma-separated header value contains `token` (case-insensitive). */
bool http_has_token(const struct http_str *value, const char *token);

/* Length of a WebSocket key (base64 of 16 bytes) and of an accept value. */
#define WS_KEY_LEN    24
#define WS_ACCEPT_LEN 28

/* A fresh random Sec-WebSocket-Key; out gets WS_KEY_LEN chars and a NUL. Returns 0 or -EIO. */
int ws_make_key(char out[WS_KEY_LEN + 1]);

/* Longest key ws_accept takes; a well-formed key is WS_KEY_LEN. */
#define WS_KEY_MAX 128

/* Sec-WebSocket-Accept for a key: base64(SHA-1(key + GUID)); out gets a NUL too. Returns 0,
 * -EINVAL for an empty or over-long key, or -EIO if libcrypto fails. */
int ws_accept(const char *key, size_t key_len, char out[WS_ACCEPT_LEN + 1]);

/* Longest frame head: 2 bytes, an 8-byte length and a 4-byte mask. */
#define WS_HEAD_MAX 14

/*
 * Writes the head of one final (FIN) frame with this opcode and payload
 * length into out, masked with mask when it is not NULL (client to
 * server). Returns the head's length.
 */
size_t ws_frame_head(uint8_t out[WS_HEAD_MAX], unsigned opcode, uint64_t len, const uint8_t *mask);

/* One frame head as read off the wire. */
struct ws_frame {
    bool fin;
    unsigned rsv;    /* the three reserved bits, 0..7 */
    unsigned opcode; /* 0..15 */
    bool masked;
    uint8_t mask[4]; /* when masked */
    uint64_t len;    /* payload length */
};

/*
 * Reads the frame head at p[0..n). Returns its length (2..WS_HEAD_MAX), 0
 * while it is incomplete, or -1 when its payload length is not in its
 * shortest form or has the top bit set (RFC 6455, 5.2). Checking the
 * opcode, bits and order is the caller's: which are wrong depends on the
 * side.
 */
int ws_frame_parse(const uint8_t *p, size_t n, struct ws_frame *f);

/* Copies n bytes from src to dst masked with mask, starting at mask byte 0. */
void ws_mask_copy(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t mask[4]);
