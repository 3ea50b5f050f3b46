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
    size_t bytes_pending; /* request bytes held for this client's outstanding requests */
    TAILQ_HEAD(, batch) batches;
    struct subscriber_list subscribers;
    enum session_proto proto;
    bool tcp;         /* came through the TCP listener */
    bool read_eof;    /* the client shut its sending side */
    bool read_paused; /* too many requests outstanding */
    bool closing;
    bool dropping;  /* over client_max_output: closed by the reaper */
    bool http_only; /* plain HTTP: subscriptions are refused like a node's HTTP endpoint */
    /* NDJSON */
    size_t scanned;   /* input bytes already searched for a newline */
    size_t discarded; /* bytes dropped of the over-long line in progress */
    bool discarding;  /* inside an over-long line */
    /* WebSocket */
    wslay_event_context_ptr ws;
    bool ws_finished; /* close frames exchanged or protocol error: close once flushed */
    bool ws_in_recv;  /* inside wslay_event_recv: only queue replies */
    /* HTTP */
    bool http_busy;      /* a request is being answered; the next one waits */
    bool http_keep;      /* keep the connection after this response */
    bool http_replied;   /* the current request's reply was written */
    bool http_done;      /* the last response is out: read nothing more */
    bool http_continued; /* 100 Continue sent for the request being received */
};

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
void session_set_proto(struct session *s, enum session_proto proto);

/* ws_server.c */
int ws_session_upgrade(struct session *s, const struct http_head *h);
void ws_session_input(struct session *s);
void ws_session_emit(struct session *s, const struct iovec *parts, int n);
size_t ws_session_queued(const struct session *s);
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
