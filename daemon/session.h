/*
 * Private to the session files. A session is one local connection; its
 * framing is chosen from the first bytes: NDJSON (session.c), WebSocket
 * (ws_server.c) or plain HTTP/1.1 (http_server.c). Whatever the framing,
 * messages go through session_handle_text() and replies come back through
 * session_emit().
 */
#pragma once

#include <event2/bufferevent.h>
#include <wslay/wslay.h>

#include "http.h"
#include "msgbuf.h"
#include "server.h"

enum session_proto {
    SESSION_PROTO_DETECT = 0,
    SESSION_PROTO_NDJSON,
    SESSION_PROTO_WS,
    SESSION_PROTO_HTTP,
    SESSION_PROTO_COUNT,
};

/* Replies of one batch, collected until the last one arrives. */
struct batch {
    struct session *s;
    struct evbuffer *out; /* replies so far, comma-separated */
    unsigned pending;     /* replies still to come (+1 while the batch is being read) */
    unsigned n_replies;
    TAILQ_ENTRY(batch) link;
};

struct session {
    struct server *srv;
    uint64_t id;
    struct bufferevent *bev; /* the socket and its output; reads go through rd */
    struct evbuffer *in;     /* what the client sent, not yet taken */
    struct event *rd;        /* the socket is readable (see sockio.h) */
    TAILQ_ENTRY(session) link;
    TAILQ_ENTRY(session) doom_link; /* srv->doomed */
    struct request_list requests;
    unsigned n_requests;
    struct waitq wait[WAIT_KINDS]; /* its requests waiting for an upstream (router.c) */
    struct qowner qowner;          /* how many of them, for its share of queue_max */
    unsigned n_subscribers;        /* its subscriptions (subs.c) */
    unsigned n_subs_pending;       /* of them, those whose reply it still waits for */
    struct account acct;           /* what the daemon holds for this client (account.c) */
    struct outrefs outrefs;        /* which of its output bytes are references (msgbuf.h) */
    struct event hs_timer;   /* handshake_timeout: armed while a first request or a head is due */
    struct event idle_timer; /* client_idle_timeout */
    uint64_t last_read_ms;   /* monotonic, for the idle timeout */
    struct peer peer;        /* who it is: read once at accept */
    unsigned uid;            /* the user it counts against: peer.uid, or PEER_UID_TCP */
    TAILQ_HEAD(, batch) batches;
    struct subscriber_list subscribers;
    enum session_proto proto;
    bool tcp;         /* came through the TCP listener */
    bool read_eof;    /* the client shut its sending side */
    bool read_paused; /* over one of its limits: not read until it is under */
    bool closing;
    bool dropping;  /* over client_max_output: closed by the reaper */
    bool counted;   /* in srv->uids */
    bool http_only; /* plain HTTP: subscriptions are refused like a node's HTTP endpoint */
    /* NDJSON */
    size_t scanned;   /* input bytes already searched for a newline */
    size_t discarded; /* bytes dropped of the over-long line in progress */
    bool discarding;  /* inside an over-long line */
    /* WebSocket */
    wslay_event_context_ptr ws;
    bool ws_finished;  /* close frames exchanged or protocol error: close once flushed */
    bool ws_in_recv;   /* inside wslay_event_recv: only queue replies */
    size_t ws_charged; /* wslay's queue as last charged to the account */
    size_t ws_partial; /* bytes wslay took from s->in for a message not yet complete */
    /* HTTP */
    bool http_busy;      /* a request is being answered; the next one waits */
    bool http_keep;      /* keep the connection after this response */
    bool http_replied;   /* the current request's reply was written */
    bool http_done;      /* the last response is out: read nothing more */
    bool http_continued; /* 100 Continue sent for the request being received */
};

/* What a connection costs before it holds anything: charged to its account. */
#define SESSION_CONN_BYTES ((int64_t)sizeof(struct session) + 1024)

/* session.c */
void session_handle_text(struct session *s, const char *text, size_t len);
void session_write(struct session *s, const void *p, size_t n);
void session_maybe_done(struct session *s);
/* Most parts session_send takes; callers with more queue them themselves. */
#define SESSION_IOV_MAX 8
/* Write at once when nothing is queued before; queue what the socket does not take. */
void session_send(struct session *s, const struct iovec *iov, int n);
/* Deliver bytes of one complete reply (not part of a batch) in the session's framing. */
void session_emit(struct session *s, const struct iovec *parts, int n);
void session_resume(struct session *s);
/* Read nothing more from the client until session_resume(). */
void session_read_stop(struct session *s);
bool session_over_budget(const struct session *s);
/* Read a paused client again if it is now under its limits. */
void session_maybe_resume(struct session *s);
/* Stop reading a client over its limits; true when it was. */
bool session_pause_if_over(struct session *s);
/* A request head or the first request is due within handshake_timeout (armed once). */
void session_head_due(struct session *s);
/* It came: the handshake timeout is off. */
void session_head_done(struct session *s);
/*
 * Close a client from the loop, not now: safe while a list it is on is being
 * walked (delivery to subscribers, a batch, an upstream's requests). Logs why.
 */
void session_cut(struct session *s, const char *why);
/* "session 7 (pid 123 uid 1000 python3)": who a client is, for log lines. */
const char *session_describe(const struct session *s, char *buf, size_t len);
void session_set_proto(struct session *s, enum session_proto proto);

/* ws_server.c */
int ws_session_upgrade(struct session *s, const struct http_head *h);
void ws_session_input(struct session *s);
void ws_session_emit(struct session *s, const struct iovec *parts, int n);
size_t ws_session_queued(const struct session *s);
/* Charge wslay's queue as it is now to the session's output. */
void ws_session_account(struct session *s);
void ws_session_free(struct session *s);

/* metrics.c */
void metrics_render(struct server *srv, struct evbuffer *out);

/* http_server.c */
/* Detects the framing of a new connection whose first byte is a letter. */
void http_session_detect(struct session *s);
void http_session_input(struct session *s);
void http_session_emit(struct session *s, const struct iovec *parts, int n);
/* Answer with a status and a short text body, closing when close_after. */
void http_session_respond(struct session *s, int status, const char *content_type,
                          const struct iovec *body, int n, bool close_after);
