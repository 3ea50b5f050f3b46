/*
 * subpool-devnode internals shared by its files: the node (options, chain,
 * listener, counters, global fault), connections with their subscriptions,
 * and the JSON-RPC dispatcher that answers what arrives on them.
 */
#pragma once

#include "chain.h"

#include <event2/event.h>
#include <event2/event_struct.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <wslay/wslay.h>

struct bufferevent;
struct evbuffer;
struct evconnlistener;
struct ssl_ctx_st;

enum fault_kind {
    FAULT_NONE = 0,
    FAULT_CLOSE,          /* flush what is written, then drop TCP without a close frame */
    FAULT_STALL,          /* read and discard everything, answer nothing, until the peer leaves */
    FAULT_GARBAGE,        /* one text frame that is not JSON */
    FAULT_GARBAGE_BINARY, /* bytes that are not a valid websocket frame */
    FAULT_OVERSIZE,       /* the next reply's result is a blob of 2 x max-message */
    FAULT_REORDER,        /* replies held and sent in swapped pairs */
    FAULT_REFUSE429,      /* new handshakes get 429 (scope "all" only) */
    FAULT_FREEZE,         /* no new blocks until the fault is lifted, then catch up (scope "all") */
    FAULT_HANGUP,         /* new handshakes: the connection is closed, unanswered (scope "all") */
    FAULT_NOTIFY_FIRST,   /* a subscription's first notification goes out before its reply */
    FAULT_ONE_REPLY,      /* each connection closes after its next reply (a rate limiter) */
    FAULT_PRETTY,         /* every message carries raw newlines as JSON whitespace */
};

int fault_parse(const char *s, size_t len, enum fault_kind *ret);

struct options {
    char host[256];
    char port[8];
    uint32_t block_ms;
    uint32_t latency_ms;
    uint32_t jitter_ms;
    size_t metadata_size;
    size_t call_size;
    size_t max_message;
    bool oversize_reply; /* over max_message: an id-null error, as jsonrpsee, not a 1009 close */
    uint64_t seed;
    enum fault_kind fault;
    uint32_t retry_after_s; /* Retry-After of the 429 answers */
    const char *tls_cert;   /* PEM chain: serve wss:// when set (with tls_key) */
    const char *tls_key;
};

struct conn;

struct devnode {
    struct event_base *base;
    struct options opt;
    struct chain chain;
    struct evconnlistener *listener;
    struct event *ev_term;
    struct event *ev_int;
    struct event *ev_block;
    struct conn *conns;
    enum fault_kind fault;  /* scope "all": applies to every connection, also future ones */
    struct ssl_ctx_st *tls; /* --tls-cert: every connection is TLS */
    uint64_t missed_blocks; /* block ticks skipped under FAULT_FREEZE */
    uint64_t rng;           /* latency jitter */
    /* --latency-ms as a libevent common timeout: a FIFO queue, so that replies
     * with the same delay keep their order (the timer heap would not). */
    const struct timeval *latency_tv;
    uint64_t next_conn_id;
    uint64_t next_sub_id;
    /* devnode_stats */
    uint64_t n_conns;
    uint64_t n_subs;
    uint64_t n_requests;
    uint64_t n_sent_bytes; /* text frame payloads sent: replies and notifications */
    uint64_t n_handshakes;
    uint64_t n_refused;      /* upgrades answered 429 */
    uint64_t n_hangups;      /* upgrades left unanswered under FAULT_HANGUP */
    uint64_t n_extrinsics;   /* author_submitExtrinsic and author_submitAndWatchExtrinsic calls */
    uint64_t n_tls_failures; /* TLS handshakes that did not complete */
    /* state_getMetadata's whole result, quotes included; replies reference it. */
    char *metadata;
    size_t metadata_len;
    /* The best block's header, ready for replies and notifications. */
    char head_json[CHAIN_HEADER_MAX];
    size_t head_len;
};

/* Produce one block and notify subscribers. */
void devnode_new_block(struct devnode *dn);
/* A global fault changes from `was`: leaving FAULT_FREEZE produces the blocks it held back. */
void devnode_fault_changed(struct devnode *dn, enum fault_kind was);

/* --- connections (conn.c) --- */

enum sub_kind {
    SUB_NEW_HEADS = 0,
    SUB_FINALIZED_HEADS,
    SUB_RUNTIME_VERSION,
    SUB_STORAGE,   /* state_subscribeStorage */
    SUB_EXTRINSIC, /* author_submitAndWatchExtrinsic */
};

#define SUB_ID_LEN 16

struct sub {
    struct sub *next;
    /* Nonzero until the reply that carries the id has gone out: no
     * notification may overtake it. */
    uint64_t token;
    enum sub_kind kind;
    char id[SUB_ID_LEN + 1];
    /* SUB_STORAGE: the keys as JSON strings, lowercased, in the order asked (owned). */
    char **keys;
    size_t n_keys;
    /* SUB_EXTRINSIC: the block it went into; 0 while it is only "ready". */
    uint64_t in_block;
};

enum conn_state {
    CONN_HTTP = 0, /* waiting for the upgrade request */
    CONN_WS,       /* websocket open */
    CONN_CLOSING,  /* flushing the output, then the TCP connection is closed */
    CONN_DEAD,     /* to be freed by kill_ev */
};

struct pending;

struct conn {
    struct devnode *dn;
    struct conn *prev;
    struct conn *next;
    struct bufferevent *bev;
    wslay_event_context_ptr ws;
    struct event kill_ev;    /* frees the connection outside every callback of its own */
    struct event reorder_ev; /* sends a held reply that found no partner */
    enum conn_state state;
    bool counted;      /* included in dn->n_conns */
    bool control;      /* opened on /control: exempt from scope "all" faults */
    bool in_recv;      /* inside wslay_event_recv: leave wslay_event_send for later */
    bool stalled;      /* FAULT_STALL */
    bool draining;     /* closing after 1009: reading and dropping until the peer hangs up */
    bool reorder;      /* FAULT_REORDER */
    bool oversize;     /* FAULT_OVERSIZE, armed */
    bool read_paused;  /* too much unsent output: requests wait */
    bool tls_up;       /* TLS connections: the TLS handshake completed */
    bool notify_first; /* FAULT_NOTIFY_FIRST */
    bool one_reply;    /* FAULT_ONE_REPLY */
    bool pretty;       /* FAULT_PRETTY */
    struct pending *pending;
    struct evbuffer *held; /* FAULT_REORDER: the first of a pair */
    uint64_t held_token;
    struct sub *subs;
    uint64_t next_token;
    uint64_t id;
};

/* How a reply goes out. */
struct reply_opts {
    uint64_t token;    /* activates the subscriptions created by this message */
    uint32_t extra_ms; /* devnode_sleep */
    bool immediate;    /* devnode_fault: no latency, no reorder */
    bool has_fault;    /* apply `fault` once the reply is written */
    bool fault_all;    /* ... to every connection (scope "all") */
    enum fault_kind fault;
};

int conn_accept(struct devnode *dn, evutil_socket_t fd);
void conn_free(struct conn *c);

/* Queue a reply (takes ownership of buf) with latency, faults and reordering applied. */
void conn_reply(struct conn *c, struct evbuffer *buf, const struct reply_opts *opts);

/* Send subscription notifications for a new best block (fin_json: new finalized header or
 * NULL when finality did not move). */
void conn_notify_block(struct devnode *dn, const char *fin_json, size_t fin_len);

/* A new subscription; for SUB_STORAGE it takes ownership of keys (also on failure). */
struct sub *conn_sub_add(struct conn *c, enum sub_kind kind, uint64_t token, char **keys,
                         size_t n_keys);
bool conn_sub_remove(struct conn *c, enum sub_kind kind, const char *id, size_t len);

/* --- dispatcher (rpc.c) --- */

void rpc_init(void);
/* Answer one websocket message (a request, a notification or a batch). */
void rpc_handle(struct conn *c, const char *msg, size_t len);
/* Append a JSON string of n bytes of 'a'..'z' (quotes included). */
void rpc_write_blob(struct evbuffer *out, size_t n);
