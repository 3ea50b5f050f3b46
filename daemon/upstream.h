/*
 * One websocket to a chain node. It resolves (evdns), connects (through TLS
 * for wss://, with the peer's certificate and name verified), performs the
 * HTTP/1.1 upgrade and verifies Sec-WebSocket-Accept, then moves text
 * messages both ways with wslay. It pings when idle and gives up on a peer
 * that does not answer. When the link is lost it reports once and
 * reconnects by itself after a capped exponential backoff with jitter; the
 * owner may point it at another URL or make it reconnect at once. It knows
 * nothing about requests: the owner matches replies to requests.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evdns_base;
struct upstream;
struct ssl_ctx_st; /* OpenSSL's SSL_CTX */

enum upstream_state {
    UPSTREAM_STATE_IDLE = 0,   /* created, not started */
    UPSTREAM_STATE_CONNECTING, /* resolving the name and opening the TCP connection */
    UPSTREAM_STATE_HANDSHAKE,  /* HTTP upgrade sent, waiting for 101 */
    UPSTREAM_STATE_READY,      /* messages flow */
    UPSTREAM_STATE_BACKOFF,    /* lost or failed; waiting before the next attempt */
    UPSTREAM_STATE_CLOSING,    /* close frame sent after upstream_close(); ends in CLOSED */
    UPSTREAM_STATE_CLOSED,     /* stopped for good; only upstream_free() is left */
};

struct upstream_opts {
    uint64_t max_message;        /* largest message kept, bytes */
    unsigned connect_timeout_ms; /* resolve + TCP + upgrade */
    unsigned ping_interval_ms;   /* ping after this much silence; 0 disables */
    unsigned pong_timeout_ms;    /* no pong (or any frame) within this: lost */
    unsigned backoff_min_ms;     /* first reconnect delay */
    unsigned backoff_max_ms;     /* cap of the doubling */
    unsigned close_timeout_ms;   /* how long to wait for the peer's close frame */
    struct ssl_ctx_st *tls;      /* client context for wss:// (upstream_tls_new); not owned */
};

struct upstream_ops {
    /* The link is READY; queued work may be sent now. */
    void (*ready)(struct upstream *u, void *arg);
    /* One complete text (or binary) message. `msg` is valid during the call only. */
    void (*message)(struct upstream *u, const char *msg, size_t len, void *arg);
    /*
     * A message longer than max_message was received and dropped. When the
     * top-level "id" could be read as an unsigned integer it is passed with
     * have_id true, so its request can be failed. The link stays up.
     */
    void (*oversize)(struct upstream *u, bool have_id, uint64_t id, uint64_t len, void *arg);
    /*
     * A READY link was lost (reason is a short human text). Called once per
     * loss, before the upstream schedules its reconnect. Everything sent and
     * not answered on this link is gone. `unresponsive` says the peer stopped
     * answering (no pong) or never delivered a message on this link: a hint
     * that the node itself is in trouble, not just this connection. Not
     * called for failed attempts that never reached READY, nor after
     * upstream_close(). A link closed by upstream_reconnect() is reported
     * here too, with unresponsive false.
     */
    void (*lost)(struct upstream *u, const char *reason, bool unresponsive, void *arg);
    /*
     * An attempt failed before READY (reason as in upstream_last_error()).
     * retry_after_ms is what the server asked for with Retry-After (0 when
     * it did not). The upstream will retry after its backoff unless the
     * owner calls upstream_set_url() or upstream_reconnect() from here.
     */
    void (*failed)(struct upstream *u, const char *reason, unsigned retry_after_ms, void *arg);
    /* After upstream_close(): the link is fully shut; the owner may free it now (not inside). */
    void (*closed)(struct upstream *u, void *arg);
};

/*
 * A client TLS context for wss:// upstreams, shared by all of them: peer
 * verification against ca_file (a PEM bundle) or, when it is NULL, the
 * system's trust store; TLS 1.2 or later. NULL on failure with the reason in
 * err. Free it with SSL_CTX_free() after the upstreams using it.
 */
struct ssl_ctx_st *upstream_tls_new(const char *ca_file, char *err, size_t errlen);

/*
 * `id` names it in logs ("upstream 3 (127.0.0.1:9944): ..."); `url` is a
 * ws:// or wss:// URL (wss:// needs opts->tls).
 * Returns NULL on a bad URL or allocation failure; *ret_cause says why.
 */
struct upstream *upstream_new(struct event_base *base, struct evdns_base *dns, unsigned id,
                              const char *url, const struct upstream_opts *opts,
                              const struct upstream_ops *ops, void *arg, const char **ret_cause);

/* Begin connecting (IDLE -> CONNECTING). */
void upstream_start(struct upstream *u);

/*
 * Queue one text message. Only valid in READY; returns 0, -ENOTCONN when not
 * ready, or -ENOMEM. The bytes are copied.
 */
int upstream_send(struct upstream *u, const char *msg, size_t len);

/*
 * Connect to `url` from the next attempt on; the current link, if any, is
 * left alone. A Retry-After heard from the previous URL no longer applies.
 * Returns 0, or -EINVAL with *ret_cause (may be NULL) when the URL is bad.
 */
int upstream_set_url(struct upstream *u, const char *url, const char **ret_cause);

/*
 * Start a fresh link now, with the backoff reset: a READY link is closed
 * gracefully first (close frame, bounded by close_timeout_ms; `lost` is
 * reported), an attempt in progress is abandoned, a pending backoff is cut
 * short. Never counted as a failure. Runs from the upstream's deferred
 * event, so it is safe to call from any callback.
 */
void upstream_reconnect(struct upstream *u);

/* Send a close frame (1001) and stop reconnecting; `closed` fires when done (bounded). */
void upstream_close(struct upstream *u);

/* Frees everything; safe on NULL; must not be called from inside an upstream callback. */
struct upstream *upstream_free(struct upstream *u);

enum upstream_state upstream_state(const struct upstream *u);
const char *upstream_state_name(enum upstream_state s);
unsigned upstream_id(const struct upstream *u);
const char *upstream_url(const struct upstream *u);
/* Times the link went from READY to lost. */
uint64_t upstream_reconnects(const struct upstream *u);
/* In ops->lost: the node ended the link with 1009, a message of ours too big for it. */
bool upstream_lost_too_big(const struct upstream *u);
/* Wall-clock time (Unix seconds) at which the current state began. */
double upstream_state_since(const struct upstream *u);
/* Last failure in words, or NULL. */
const char *upstream_last_error(const struct upstream *u);
/* READY, and this link has delivered at least one message. */
bool upstream_healthy(const struct upstream *u);
/*
 * READY, but silent for over half the pong timeout since its last ping:
 * probably about to be given up. A healthy link answers a ping in one
 * round trip.
 */
bool upstream_pong_overdue(const struct upstream *u);
