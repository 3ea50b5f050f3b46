/*
 * A session is one local client connection. This file holds what every
 * framing shares: detecting the framing from the first bytes, validating
 * envelopes, answering what can be answered at once (errors, subpool_*
 * methods), handing the rest to the router, collecting batch replies, flow
 * control and the close path. It also frames NDJSON: one message (or batch)
 * per line in, one reply per line out, in completion order. Over-long lines
 * are discarded as they stream in, never buffered whole. A client with too
 * many requests outstanding is simply not read until replies drain.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "log.h"
#include "methods.h"
#include "metrics.h"
#include "msgbuf.h"
#include "session.h"
#include "sockio.h"
#include "subs.h"

uint64_t session_id(const struct session *s)
{
    return s->id;
}

struct subscriber_list *session_subscribers(struct session *s)
{
    return &s->subscribers;
}

void session_write(struct session *s, const void *p, size_t n)
{
    if (!s->closing)
        msgbuf_add(bufferevent_get_output(s->bev), p, n);
}

/* Close once a finished client has been answered and everything is written. */
void session_maybe_done(struct session *s)
{
    if (s->closing)
        return;
    if (s->ws_finished) {
        /* The close handshake is over: nothing more can be sent. */
        if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
            session_close(s, "websocket closed");
        return;
    }
    if (s->n_requests || !TAILQ_EMPTY(&s->batches) || s->http_busy)
        return;
    if (!s->read_eof && !s->srv->stopping)
        return;
    if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
        session_close(s, s->read_eof ? "client finished" : "shutting down");
}

/*
 * A client that leaves more than client_max_output unread is dropped. The
 * backlog is judged before a reply is added (extra: bytes held elsewhere for
 * it, like a batch being collected), so one large reply to a client that
 * reads is never a reason. Returns false when the session was closed.
 */
static bool session_output_ok(struct session *s, size_t extra)
{
    size_t out = evbuffer_get_length(bufferevent_get_output(s->bev)) + ws_session_queued(s);
    if (out + extra > s->srv->cfg->client_max_output) {
        log_warn("session %llu: %zu unread reply bytes exceed client_max_output; disconnecting",
                 (unsigned long long)s->id, out + extra);
        /*
         * Closed from the loop, not here: the caller may be walking a list this
         * session is on (a subscription's subscribers, an upstream's requests).
         */
        s->dropping = true;
        session_read_stop(s);
        TAILQ_INSERT_TAIL(&s->srv->doomed, s, doom_link);
        event_active(s->srv->reaper, 0, 0);
        return false;
    }
    return true;
}

static void batch_free(struct batch *b)
{
    TAILQ_REMOVE(&b->s->batches, b, link);
    evbuffer_free(b->out);
    free(b);
}

/* One reply fewer outstanding; write the array when it was the last. */
static void batch_settle(struct batch *b)
{
    struct session *s = b->s;

    if (--b->pending)
        return;
    if (b->n_replies) {
        size_t n = evbuffer_get_length(b->out);
        struct iovec parts[3] = {
            {"[", 1},
            {evbuffer_pullup(b->out, (ev_ssize_t)n), n},
            {"]", 1},
        };
        session_emit(s, parts, 3);
    }
    subs_batch_done(&s->subscribers, b);
    batch_free(b);
}

/*
 * Bytes of one reply. When nothing is queued before them, they are written
 * at once: going through the output buffer would cost two epoll_ctl calls
 * and a loop pass per reply. Whatever the socket does not take is queued.
 */
void session_send(struct session *s, const struct iovec *iov, int n)
{
    struct evbuffer *out = bufferevent_get_output(s->bev);
    size_t skip = 0;

    if (evbuffer_get_length(out) > 0) {
        for (int i = 0; i < n; i++)
            msgbuf_add(out, iov[i].iov_base, iov[i].iov_len);
        return;
    }
    ssize_t w = writev(bufferevent_getfd(s->bev), iov, n);
    if (w > 0) {
        skip = (size_t)w;
        s->srv->stats.bytes_out += skip;
    }
    /* Queue what the socket did not take (all of it after EAGAIN or an error). */
    for (int i = 0; i < n; i++) {
        if (skip >= iov[i].iov_len) {
            skip -= iov[i].iov_len;
            continue;
        }
        msgbuf_add(out, (const char *)iov[i].iov_base + skip, iov[i].iov_len - skip);
        skip = 0;
    }
    /*
     * All written: no write callback will come, yet a client that has finished
     * sending may be due to be closed. Let the loop run that check.
     */
    if (evbuffer_get_length(out) == 0 && (s->read_eof || s->srv->stopping))
        bufferevent_trigger(s->bev, EV_WRITE,
                            BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}

/* One NDJSON reply: its parts and a newline. */
static void ndjson_emit(struct session *s, const struct iovec *parts, int n)
{
    struct iovec iov[SESSION_IOV_MAX];

    if (n >= SESSION_IOV_MAX) {
        struct evbuffer *out = bufferevent_get_output(s->bev);
        for (int i = 0; i < n; i++)
            msgbuf_add(out, parts[i].iov_base, parts[i].iov_len);
        evbuffer_add(out, "\n", 1);
        return;
    }
    memcpy(iov, parts, (size_t)n * sizeof(*iov));
    iov[n].iov_base = "\n";
    iov[n].iov_len = 1;
    session_send(s, iov, n + 1);
}

void session_emit(struct session *s, const struct iovec *parts, int n)
{
    if (s->closing || s->dropping || !session_output_ok(s, 0))
        return;
    switch (s->proto) {
    case SESSION_PROTO_WS:
        ws_session_emit(s, parts, n);
        break;
    case SESSION_PROTO_HTTP:
        http_session_emit(s, parts, n);
        break;
    default:
        ndjson_emit(s, parts, n);
        break;
    }
}

void session_deliver(struct session *s, struct batch *b, const struct iovec *parts, int n)
{
    if (b) {
        /* A batch collects replies in memory: they count against the same bound. */
        if (s->dropping || !session_output_ok(s, evbuffer_get_length(b->out)))
            return;
        if (b->n_replies++)
            evbuffer_add(b->out, ",", 1);
        for (int i = 0; i < n; i++)
            msgbuf_add(b->out, parts[i].iov_base, parts[i].iov_len);
        batch_settle(b);
    } else {
        session_emit(s, parts, n);
    }
}

void session_error(struct session *s, struct batch *b, const char *id, size_t id_len, int code,
                   const char *message)
{
    char head[512];
    struct iovec parts[3];

    parts[0].iov_base = head;
    parts[0].iov_len = jsonrpc_error_head(head, sizeof(head), code, message);
    if (id && id_len) {
        parts[1].iov_base = (void *)id;
        parts[1].iov_len = id_len;
    } else {
        parts[1].iov_base = "null";
        parts[1].iov_len = 4;
    }
    parts[2].iov_base = "}";
    parts[2].iov_len = 1;
    session_deliver(s, b, parts, 3);
}

void session_request_added(struct session *s, struct request *r)
{
    TAILQ_INSERT_TAIL(&s->requests, r, s_link);
    s->n_requests++;
    s->bytes_pending += r->wire_len;
}

/* Too much of this client's work outstanding: stop reading it until replies drain. */
bool session_over_budget(const struct session *s)
{
    const struct config *cfg = s->srv->cfg;
    return s->n_requests >= cfg->client_max_in_flight ||
           s->bytes_pending >= cfg->client_max_pending;
}

void session_request_removed(struct session *s, struct request *r)
{
    TAILQ_REMOVE(&s->requests, r, s_link);
    s->n_requests--;
    s->bytes_pending -= r->wire_len;
    if (s->read_paused && !session_over_budget(s)) {
        s->read_paused = false;
        session_resume(s);
    }
}

/* Look at input again from the loop: it may already hold what was not read. */
void session_resume(struct session *s)
{
    if (s->closing)
        return;
    if (!s->read_eof)
        event_add(s->rd, NULL);
    event_active(s->rd, EV_READ, 0);
}

void session_read_stop(struct session *s)
{
    event_del(s->rd);
}

/* An error subpool produces itself, counted for status and metrics. */
static void session_reject(struct session *s, struct batch *b, const char *id, size_t id_len,
                           unsigned slot, int code, const char *message)
{
    s->srv->stats.errors++;
    metrics_count_error(s->srv->metrics, slot);
    session_error(s, b, id, id_len, code, message);
}

/* Handle one JSON-RPC object (alone or a batch element). */
static void session_handle_msg(struct session *s, struct batch *b, const char *buf,
                               const struct jsonrpc_msg *m, int err)
{
    struct server *srv = s->srv;
    const char *id = m->id.type ? buf + m->id.off : NULL;
    size_t id_len = m->id.type ? m->id.len : 0;
    unsigned flags, slot = METRICS_METHOD_INVALID;

    srv->stats.requests++;
    if (err == 0 && m->kind == JSONRPC_KIND_NOTIFICATION) {
        /* No id, so no reply is allowed; nodes ignore these too. */
        if (b)
            batch_settle(b);
        return;
    }
    if (err == 0 && m->kind == JSONRPC_KIND_REQUEST)
        slot = metrics_method(srv->metrics, buf + m->method.off + 1, m->method.len - 2);
    metrics_count_request(srv->metrics, slot);
    if (err == JSONRPC_PARSE_ERROR) {
        session_reject(s, b, NULL, 0, slot, JSONRPC_PARSE_ERROR, "Parse error");
        return;
    }
    if (err < 0 || m->kind == JSONRPC_KIND_RESPONSE) {
        session_reject(s, b, id, id_len, slot, JSONRPC_INVALID_REQUEST, "Invalid request");
        return;
    }
    if (memchr(buf + m->method.off + 1, '\\', m->method.len - 2)) {
        /*
         * The method table matches raw bytes; an escaped name could dodge the
         * rules for writes and subscriptions. No real client escapes one.
         */
        session_reject(s, b, id, id_len, slot, JSONRPC_INVALID_REQUEST,
                       "Invalid request: escaped characters in a method name are not accepted");
        return;
    }
    flags = method_flags(buf + m->method.off + 1, m->method.len - 2);
    if (srv->stopping) {
        session_reject(s, b, id, id_len, slot, SUBPOOL_ERR_SHUTDOWN, "subpoold is shutting down");
        return;
    }
    if (flags & METHOD_LOCAL) {
        status_handle(srv, s, b, buf, m, slot);
        return;
    }
    if ((flags & (METHOD_SUBSCRIBE | METHOD_UNSUBSCRIBE)) && s->http_only) {
        session_reject(s, b, id, id_len, slot, JSONRPC_METHOD_NOT_FOUND,
                       "Subscriptions are not available on this transport; use a websocket");
        return;
    }
    if (flags & METHOD_SUBSCRIBE) {
        subs_subscribe(srv, s, b, buf, m,
                       method_lookup(buf + m->method.off + 1, m->method.len - 2));
        return;
    }
    if (flags & METHOD_UNSUBSCRIBE) {
        subs_unsubscribe(srv, s, b, buf, m);
        return;
    }
    router_submit(srv->router, s, b, buf, m, flags, slot);
}

static void session_handle_batch(struct session *s, const char *line, size_t len)
{
    struct json_span arr, elem;
    struct jsonrpc_msg m;
    struct batch *b;
    size_t pos = 0, n = 0;
    char msg[96];

    if (json_validate(line, len, &arr) < 0) {
        s->srv->stats.errors++;
        session_error(s, NULL, NULL, 0, JSONRPC_PARSE_ERROR, "Parse error");
        return;
    }
    while (json_array_next(line, &arr, &pos, &elem) > 0)
        n++;
    if (n == 0) {
        s->srv->stats.errors++;
        session_error(s, NULL, NULL, 0, JSONRPC_INVALID_REQUEST, "Invalid request: empty batch");
        return;
    }
    if (n > s->srv->cfg->max_batch) {
        s->srv->stats.errors++;
        snprintf(msg, sizeof(msg), "batch of %zu calls exceeds max_batch (%u)", n,
                 s->srv->cfg->max_batch);
        session_error(s, NULL, NULL, 0, SUBPOOL_ERR_LIMIT, msg);
        return;
    }
    b = calloc(1, sizeof(*b));
    if (!b || !(b->out = evbuffer_new())) {
        free(b);
        session_error(s, NULL, NULL, 0, JSONRPC_INTERNAL_ERROR, "out of memory");
        return;
    }
    b->s = s;
    /* One extra so replies given synchronously below cannot finish the batch early. */
    b->pending = (unsigned)n + 1;
    TAILQ_INSERT_TAIL(&s->batches, b, link);
    pos = 0;
    while (json_array_next(line, &arr, &pos, &elem) > 0) {
        int err = jsonrpc_scan_span(line, &elem, &m);
        session_handle_msg(s, b, line, &m, err);
    }
    batch_settle(b);
}

void session_handle_text(struct session *s, const char *line, size_t len)
{
    struct jsonrpc_msg m;
    size_t i = 0;

    while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r' || line[i] == '\n'))
        i++;
    if (i == len)
        return; /* blank lines are keep-alives, not errors */
    if (jsonrpc_is_batch(line, len)) {
        session_handle_batch(s, line, len);
        return;
    }
    session_handle_msg(s, NULL, line, &m, jsonrpc_scan(line, len, &m));
}

static void session_too_long(struct session *s, size_t len)
{
    char msg[128];

    log_info("session %llu: discarded a %zu-byte request line over max_request",
             (unsigned long long)s->id, len);
    snprintf(msg, sizeof(msg), "request of %zu bytes exceeds max_request (%llu)", len,
             (unsigned long long)s->srv->cfg->max_request);
    s->srv->stats.errors++;
    session_error(s, NULL, NULL, 0, SUBPOOL_ERR_LIMIT, msg);
}

static void ndjson_input(struct session *s)
{
    struct evbuffer *in = s->in;
    size_t max = s->srv->cfg->max_request;

    while (!s->closing) {
        size_t len = evbuffer_get_length(in), eol_len = 0, line_len;
        struct evbuffer_ptr start, eol;

        if (len == 0)
            break;
        if (session_over_budget(s)) {
            s->read_paused = true;
            session_read_stop(s);
            break;
        }
        if (evbuffer_ptr_set(in, &start, s->scanned, EVBUFFER_PTR_SET) < 0)
            start.pos = -1;
        eol = start.pos < 0 ? start : evbuffer_search_eol(in, &start, &eol_len, EVBUFFER_EOL_LF);
        if (eol.pos < 0) {
            /* No newline yet: keep at most max bytes of a line (and its '\r'). */
            if (s->discarding || len > max + 1) {
                s->discarded += len;
                s->discarding = true;
                evbuffer_drain(in, len);
                s->scanned = 0;
                continue;
            }
            if (!s->read_eof) {
                s->scanned = len;
                break;
            }
            /* At EOF an unterminated last line still counts. */
            eol.pos = (ev_ssize_t)len;
            eol_len = 0;
        }
        line_len = (size_t)eol.pos;
        s->scanned = 0;
        if (!s->discarding && line_len == max + 1) {
            struct evbuffer_ptr last;
            char c = 0;
            evbuffer_ptr_set(in, &last, line_len - 1, EVBUFFER_PTR_SET);
            evbuffer_copyout_from(in, &last, &c, 1);
            if (c == '\r') { /* "\r\n" ends the line; the '\r' is not content */
                line_len--;
                eol_len++;
            }
        }
        if (s->discarding || line_len > max) {
            session_too_long(s, s->discarded + line_len);
            s->discarding = false;
            s->discarded = 0;
            evbuffer_drain(in, line_len + eol_len);
            continue;
        }
        const char *line = (const char *)evbuffer_pullup(in, (ev_ssize_t)(line_len + eol_len));
        if (!line) {
            session_close(s, "out of memory");
            break;
        }
        session_handle_text(s, line, line_len);
        evbuffer_drain(in, line_len + eol_len);
    }
    if (s->read_eof && s->discarding && !s->closing) {
        /* The client ended inside an over-long line: it still gets its answer. */
        session_too_long(s, s->discarded);
        s->discarding = false;
        s->discarded = 0;
    }
}

void session_set_proto(struct session *s, enum session_proto proto)
{
    s->srv->stats.clients_by_proto[s->proto]--;
    s->proto = proto;
    s->srv->stats.clients_by_proto[proto]++;
}

/* The framing follows from the first byte: JSON is NDJSON, a letter starts an HTTP head. */
static void session_detect(struct session *s)
{
    struct evbuffer *in = s->in;
    unsigned char c;

    if (evbuffer_copyout(in, &c, 1) != 1)
        return;
    if (c >= 'A' && c <= 'Z') {
        http_session_detect(s);
        return;
    }
    session_set_proto(s, SESSION_PROTO_NDJSON);
}

static void session_process(struct session *s)
{
    if (s->proto == SESSION_PROTO_DETECT)
        session_detect(s);
    switch (s->proto) {
    case SESSION_PROTO_NDJSON:
        ndjson_input(s);
        break;
    case SESSION_PROTO_WS:
        ws_session_input(s);
        break;
    case SESSION_PROTO_HTTP:
        http_session_input(s);
        break;
    default:
        break;
    }
    session_maybe_done(s);
}

/* Also run from session_resume, with nothing new on the socket. */
static void session_readable(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    (void)what;

    if (!s->read_eof) {
        ssize_t n = sock_read(s->in, fd);
        if (n == 0) {
            s->read_eof = true;
            session_read_stop(s);
        } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            log_debug("session %llu: socket error: %s", (unsigned long long)s->id, strerror(errno));
            session_close(s, "socket error");
            return;
        }
    }
    session_process(s);
}

static void session_write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    session_maybe_done(arg);
}

static void session_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct session *s = arg;
    (void)bev;

    /* Only writes go through the bufferevent: this is a write that failed. */
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        log_debug("session %llu: socket error: %s", (unsigned long long)s->id,
                  evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        session_close(s, "socket error");
    }
}

/* Byte counters for /metrics: what the socket delivered and what it took. */
static void count_in_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct server *srv = arg;
    (void)buf;
    srv->stats.bytes_in += info->n_added;
}

static void count_out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct server *srv = arg;
    (void)buf;
    srv->stats.bytes_out += info->n_deleted;
}

/*
 * Writing is enabled on the bufferevent only once something is queued:
 * enabling it at once would arm a write event that fires on the new socket
 * just to find nothing to write, which costs two epoll_ctl calls and a loop
 * pass per connection, and replies mostly go out directly anyway.
 */
static void out_added_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct session *s = arg;
    (void)buf;

    if (info->n_added && !(bufferevent_get_enabled(s->bev) & EV_WRITE) && !s->closing)
        bufferevent_enable(s->bev, EV_WRITE);
}

struct session *session_new(struct server *srv, int fd, bool tcp)
{
    struct session *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    s->in = evbuffer_new();
    s->rd = event_new(srv->base, fd, EV_READ | EV_PERSIST, session_readable, s);
    if (!s->bev || !s->in || !s->rd) {
        if (s->bev) /* the caller closes fd */
            bufferevent_setfd(s->bev, -1);
        session_free(s);
        return NULL;
    }
    s->srv = srv;
    s->id = ++srv->next_session_id;
    TAILQ_INIT(&s->requests);
    TAILQ_INIT(&s->batches);
    TAILQ_INIT(&s->subscribers);
    s->tcp = tcp;
    evbuffer_add_cb(s->in, count_in_cb, srv);
    evbuffer_add_cb(bufferevent_get_output(s->bev), count_out_cb, srv);
    evbuffer_add_cb(bufferevent_get_output(s->bev), out_added_cb, s);
    bufferevent_setcb(s->bev, NULL, session_write_cb, session_event_cb, s);
    event_add(s->rd, NULL);
    TAILQ_INSERT_TAIL(&srv->sessions, s, link);
    srv->n_sessions++;
    srv->stats.clients_by_proto[SESSION_PROTO_DETECT]++;
    log_debug("session %llu: connected", (unsigned long long)s->id);
    /*
     * Clients write as soon as connect() returns, so the first request is
     * usually queued before the accept: read it in this loop pass rather
     * than after the next epoll_wait(). Queued behind the events already
     * due, so a client that left just before this one connected is seen to
     * go first. When nothing is there yet this costs one read() that
     * returns EAGAIN.
     */
    event_active(s->rd, EV_READ, 1);
    return s;
}

void session_reap(struct server *srv)
{
    struct session *s;

    while ((s = TAILQ_FIRST(&srv->doomed)))
        session_close(s, "slow reader");
    while ((s = TAILQ_FIRST(&srv->closing))) {
        TAILQ_REMOVE(&srv->closing, s, link);
        session_free(s);
    }
}

void session_stop_all(struct server *srv)
{
    struct session *s, *next;

    for (s = TAILQ_FIRST(&srv->sessions); s; s = next) {
        next = TAILQ_NEXT(s, link);
        session_maybe_done(s);
    }
}

void session_close_all(struct server *srv)
{
    while (!TAILQ_EMPTY(&srv->sessions))
        session_close(TAILQ_FIRST(&srv->sessions), "exit");
    session_reap(srv);
}

void session_close(struct session *s, const char *why)
{
    struct server *srv = s->srv;
    struct request *r;
    struct batch *b;

    if (s->closing)
        return;
    log_debug("session %llu: closed (%s), %u requests outstanding", (unsigned long long)s->id, why,
              s->n_requests);
    s->closing = true;
    if (s->dropping)
        TAILQ_REMOVE(&srv->doomed, s, doom_link);
    while ((r = TAILQ_FIRST(&s->requests)))
        router_forget(srv->router, r);
    subs_session_gone(srv, &s->subscribers);
    while ((b = TAILQ_FIRST(&s->batches)))
        batch_free(b);
    session_read_stop(s);
    bufferevent_disable(s->bev, EV_READ | EV_WRITE);
    TAILQ_REMOVE(&srv->sessions, s, link);
    srv->n_sessions--;
    srv->stats.clients_by_proto[s->proto]--;
    TAILQ_INSERT_TAIL(&srv->closing, s, link);
    event_active(srv->reaper, 0, 0);
}

void session_free(struct session *s)
{
    if (!s)
        return;
    ws_session_free(s);
    if (s->rd)
        event_free(s->rd);
    if (s->in)
        evbuffer_free(s->in);
    if (s->bev)
        bufferevent_free(s->bev);
    free(s);
}
