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
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "methods.h"
#include "metrics.h"
#include "msgbuf.h"
#include "session.h"
#include "sockio.h"
#include "subs.h"

static void batch_out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg);

uint64_t session_id(const struct session *s)
{
    return s->id;
}

struct waitq *session_waitq(struct session *s, enum request_pick pick)
{
    return &s->wait[pick];
}

struct qowner *session_qowner(struct session *s)
{
    return &s->qowner;
}

struct session *session_of_qowner(struct qowner *qo)
{
    return (struct session *)((char *)qo - offsetof(struct session, qowner));
}

struct subscriber_list *session_subscribers(struct session *s)
{
    return &s->subscribers;
}

/*
 * Bytes of a reply into the output: a reply from a node by reference when
 * large. Bytes that cannot be added would leave a message with a hole, so
 * the client is cut (after the delivery under way; nothing more is added).
 */
static void session_add(struct session *s, struct evbuffer *out, const void *p, size_t n)
{
    if (!s->dropping && msgbuf_add_counted(out, &s->outrefs, p, n) != 0)
        session_cut(s, "out of memory for a reply");
}

void session_write(struct session *s, const void *p, size_t n)
{
    if (!s->closing)
        session_add(s, bufferevent_get_output(s->bev), p, n);
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

void proc_comm(int pid, char *buf, size_t len)
{
    char path[64];
    ssize_t n = 0;
    int fd;

    snprintf(path, sizeof(path), "/proc/%d/comm", pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        n = read(fd, buf, len - 1);
        close(fd);
    }
    buf[n > 0 ? n : 0] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
}

const char *session_describe(const struct session *s, char *buf, size_t len)
{
    char comm[64];

    if (!s->peer.known) {
        snprintf(buf, len, "session %llu (%s)", (unsigned long long)s->id,
                 s->tcp ? "tcp" : "no credentials");
        return buf;
    }
    /* Read only when a line names the client: a cut or a refusal, never per request. */
    proc_comm(s->peer.pid, comm, sizeof(comm));
    snprintf(buf, len, "session %llu (pid %d uid %u%s%s)", (unsigned long long)s->id, s->peer.pid,
             s->peer.uid, comm[0] ? " " : "", comm);
    return buf;
}

static struct uid_count **uid_slot(struct server *srv, unsigned uid)
{
    struct uid_count **pp = &srv->uids[uid % UID_BUCKETS];

    while (*pp && (*pp)->uid != uid)
        pp = &(*pp)->next;
    return pp;
}

unsigned session_uid_clients(struct server *srv, unsigned uid)
{
    struct uid_count *c = *uid_slot(srv, uid);
    return c ? c->n : 0;
}

static int uid_add(struct server *srv, unsigned uid)
{
    struct uid_count **pp = uid_slot(srv, uid);

    if (!*pp && !(*pp = calloc(1, sizeof(**pp))))
        return -ENOMEM;
    (*pp)->uid = uid;
    (*pp)->n++;
    return 0;
}

static void uid_remove(struct server *srv, unsigned uid)
{
    struct uid_count **pp = uid_slot(srv, uid), *c = *pp;

    if (c && --c->n == 0) {
        *pp = c->next;
        free(c);
    }
}

static void session_hs_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    char who[160];
    (void)fd;
    (void)what;

    log_info("%s: no complete request within handshake_timeout (%u ms); closing",
             session_describe(s, who, sizeof(who)), s->srv->cfg->handshake_timeout_ms);
    if (s->proto == SESSION_PROTO_HTTP ||
        (s->proto == SESSION_PROTO_DETECT && evbuffer_get_length(s->in))) {
        /* After whatever is still queued for it; it closes once that is written. */
        struct iovec body = {"request head incomplete within handshake_timeout\n", 49};
        session_set_proto(s, SESSION_PROTO_HTTP);
        evbuffer_drain(s->in, evbuffer_get_length(s->in));
        http_session_respond(s, 408, "text/plain; charset=utf-8", &body, 1, true);
        session_maybe_done(s);
        return;
    }
    session_close(s, "handshake timeout");
}

void session_head_due(struct session *s)
{
    unsigned ms = s->srv->cfg->handshake_timeout_ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    if (!s->closing && !evtimer_pending(&s->hs_timer, NULL))
        evtimer_add(&s->hs_timer, &tv);
}

void session_head_done(struct session *s)
{
    evtimer_del(&s->hs_timer);
}

static void session_idle_arm(struct session *s, unsigned ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(&s->idle_timer, &tv);
}

static void session_idle_check(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    unsigned idle = s->srv->cfg->client_idle_timeout_ms;
    uint64_t quiet = clock_mono_ms() - s->last_read_ms;
    char who[160];
    (void)fd;
    (void)what;

    if (idle == 0)
        return; /* turned off by a reload */
    if (s->n_requests || !TAILQ_EMPTY(&s->subscribers) || !TAILQ_EMPTY(&s->batches) ||
        s->http_busy || quiet < idle) {
        session_idle_arm(s, quiet < idle ? idle - (unsigned)quiet : idle);
        return;
    }
    log_info("%s: idle for client_idle_timeout (%u ms); closing",
             session_describe(s, who, sizeof(who)), idle);
    session_close(s, "idle timeout");
}

/*
 * Cut a client off, from the loop and not here: the caller may be walking a
 * list this session is on (a subscription's subscribers, an upstream's
 * requests). One log line says who and why.
 */
void session_cut(struct session *s, const char *why)
{
    char who[160];

    if (s->dropping || s->closing)
        return;
    log_warn("%s: %s; disconnecting", session_describe(s, who, sizeof(who)), why);
    s->dropping = true;
    session_read_stop(s);
    TAILQ_INSERT_TAIL(&s->srv->doomed, s, doom_link);
    event_active(s->srv->reaper, 0, 0);
}

/*
 * A client that leaves more than client_max_output unread is dropped. The
 * backlog is judged before a reply is added (extra: bytes held elsewhere for
 * it, like a batch being collected), so one large reply to a client that
 * reads is never a reason. Returns false when the session was closed.
 */
static bool session_output_ok(struct session *s, size_t extra)
{
    uint64_t out = s->acct.by[CHARGE_OUTPUT] + extra;
    char why[128];

    if (out > s->srv->cfg->client_max_output) {
        snprintf(why, sizeof(why), "%llu unread reply bytes exceed client_max_output",
                 (unsigned long long)out);
        session_cut(s, why);
        return false;
    }
    return true;
}

/*
 * The daemon holds more than max_client_memory for its clients: cut the
 * largest until what is left fits. Runs only when the budget is exceeded,
 * so walking every session here costs nothing on the request path.
 */
void session_shed(struct server *srv)
{
    struct ledger *l = &srv->ledger;
    uint64_t doomed = 0;
    struct session *s;
    char why[160];

    /* What cut and closed clients hold goes when the reaper frees them: not counted twice. */
    TAILQ_FOREACH(s, &srv->doomed, doom_link)
    doomed += s->acct.total;
    TAILQ_FOREACH(s, &srv->closing, link)
    doomed += s->acct.total;
    /*
     * doomed counts what cut clients hold in full, shared bytes included,
     * though the ledger has those once: it may pass l->total. Compared, not
     * subtracted, so it only ever makes the loop stop early.
     */
    while (l->total > doomed + l->budget) {
        struct session *big = NULL;
        TAILQ_FOREACH(s, &srv->sessions, link)
        {
            if (!s->dropping && (!big || s->acct.total > big->acct.total))
                big = s;
        }
        if (!big || big->acct.total == 0)
            break;
        snprintf(why, sizeof(why),
                 "the daemon holds %llu bytes for clients, over max_client_memory (%llu); this "
                 "client holds %llu, the most",
                 (unsigned long long)(l->total - doomed), (unsigned long long)l->budget,
                 (unsigned long long)big->acct.total);
        doomed += big->acct.total;
        l->cuts++;
        session_cut(big, why);
    }
}

static void batch_free(struct batch *b)
{
    TAILQ_REMOVE(&b->s->batches, b, link);
    account_charge(b->s->srv, &b->s->acct, CHARGE_BATCH,
                   -(int64_t)(sizeof(*b) + evbuffer_get_length(b->out)));
    evbuffer_remove_cb(b->out, batch_out_cb, b->s);
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
        void *replies = evbuffer_pullup(b->out, (ev_ssize_t)n);
        struct iovec parts[3] = {
            {"[", 1},
            {replies, n},
            {"]", 1},
        };
        if (replies)
            session_emit(s, parts, 3);
        else
            session_cut(s, "out of memory for a batch reply");
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
            session_add(s, out, iov[i].iov_base, iov[i].iov_len);
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
        session_add(s, out, (const char *)iov[i].iov_base + skip, iov[i].iov_len - skip);
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
            session_add(s, out, parts[i].iov_base, parts[i].iov_len);
        session_add(s, out, "\n", 1);
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

/* What an outstanding request holds: its record, its wire copy and the id kept aside. */
static int64_t request_bytes(const struct request *r)
{
    return (int64_t)(sizeof(*r) + r->wire_len + r->orig_id_len + r->key_len);
}

void session_request_added(struct session *s, struct request *r)
{
    TAILQ_INSERT_TAIL(&s->requests, r, s_link);
    s->n_requests++;
    account_charge(s->srv, &s->acct, CHARGE_PENDING, request_bytes(r));
}

/* Input a client may have waiting: one whole request, its HTTP head and one read. */
static uint64_t input_max(const struct config *cfg)
{
    return cfg->max_request + HTTP_MAX_HEAD + SOCK_READ_MAX;
}

/*
 * This client holds as much as it may: stop reading it until it holds less.
 * Unread output counts from half of client_max_output on, so a client that
 * never reads cannot make the daemon produce answers (HTTP, pongs) for it
 * without bound, and one that reads is never cut for answers it provoked.
 */
bool session_over_budget(const struct session *s)
{
    const struct config *cfg = s->srv->cfg;
    const uint64_t *by = s->acct.by;

    return s->n_requests + s->n_subs_pending >= cfg->client_max_in_flight ||
           by[CHARGE_PENDING] >= cfg->client_max_pending ||
           by[CHARGE_OUTPUT] + ws_session_queued(s) - s->ws_charged >= cfg->client_max_output / 2;
}

/* A paused client may be under its limits again: look at its input once more. */
void session_maybe_resume(struct session *s)
{
    if (s->read_paused && !session_over_budget(s)) {
        s->read_paused = false;
        session_resume(s);
    }
}

/* Pause a client over its limits; returns true when it was paused. */
bool session_pause_if_over(struct session *s)
{
    if (!session_over_budget(s))
        return false;
    s->read_paused = true;
    session_read_stop(s);
    return true;
}

void session_request_removed(struct session *s, struct request *r)
{
    TAILQ_REMOVE(&s->requests, r, s_link);
    s->n_requests--;
    account_charge(s->srv, &s->acct, CHARGE_PENDING, -request_bytes(r));
    session_maybe_resume(s);
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
    if (!b || !(b->out = evbuffer_new()) || !evbuffer_add_cb(b->out, batch_out_cb, s)) {
        if (b && b->out)
            evbuffer_free(b->out);
        free(b);
        session_error(s, NULL, NULL, 0, JSONRPC_INTERNAL_ERROR, "out of memory");
        return;
    }
    b->s = s;
    account_charge(s->srv, &s->acct, CHARGE_BATCH, (int64_t)sizeof(*b));
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
        if (session_pause_if_over(s))
            break;
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
        session_head_done(s);
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

    if (!s->read_eof && s->acct.by[CHARGE_INPUT] >= input_max(s->srv->cfg)) {
        /* As much input as one request may need is waiting: take some first. */
        s->read_paused = true;
        session_read_stop(s);
    } else if (!s->read_eof) {
        ssize_t n = sock_read(s->in, fd);
        if (n == 0) {
            s->read_eof = true;
            session_read_stop(s);
        } else if (n > 0) {
            if (s->srv->cfg->client_idle_timeout_ms)
                s->last_read_ms = clock_mono_ms();
        } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            log_debug("session %llu: socket error: %s", (unsigned long long)s->id, strerror(errno));
            session_close(s, "socket error");
            return;
        }
    }
    session_process(s);
    if (!s->closing && s->read_paused && s->acct.by[CHARGE_INPUT] < input_max(s->srv->cfg))
        session_maybe_resume(s);
}

/* Output drained to the write low-water mark (half of client_max_output) or below. */
static void session_write_cb(struct bufferevent *bev, void *arg)
{
    struct session *s = arg;
    (void)bev;

    session_maybe_resume(s);
    session_maybe_done(s);
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

/* Input: counted for /metrics and charged to the client until taken. */
static void in_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct session *s = arg;
    (void)buf;
    s->srv->stats.bytes_in += info->n_added;
    account_charge(s->srv, &s->acct, CHARGE_INPUT,
                   (int64_t)info->n_added - (int64_t)info->n_deleted);
}

/*
 * Output: charged until written, counted for /metrics when written. Bytes
 * that are references into a node's message are the client's to answer for,
 * but the ledger has their buffer once (account.c).
 * Writing is enabled on the bufferevent only once something is queued:
 * enabling it at once would arm a write event that fires on the new socket
 * just to find nothing to write, which costs two epoll_ctl calls and a loop
 * pass per connection, and replies mostly go out directly anyway.
 */
static void out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct session *s = arg;
    size_t ref_added, ref_deleted;
    (void)buf;

    outrefs_moved(&s->outrefs, info->n_added, info->n_deleted, &ref_added, &ref_deleted);
    account_charge(s->srv, &s->acct, CHARGE_OUTPUT,
                   (int64_t)(info->n_added - ref_added) - (int64_t)(info->n_deleted - ref_deleted));
    account_charge_shared(s->srv, &s->acct, CHARGE_OUTPUT,
                          (int64_t)ref_added - (int64_t)ref_deleted);
    if (s->closing)
        return;
    s->srv->stats.bytes_out += info->n_deleted;
    if (info->n_added && !(bufferevent_get_enabled(s->bev) & EV_WRITE))
        bufferevent_enable(s->bev, EV_WRITE);
}

static void batch_out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct session *s = arg;
    (void)buf;
    account_charge(s->srv, &s->acct, CHARGE_BATCH,
                   (int64_t)info->n_added - (int64_t)info->n_deleted);
}

struct session *session_new(struct server *srv, int fd, bool tcp, const struct peer *peer)
{
    struct session *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->peer = *peer;
    s->uid = peer->known ? peer->uid : PEER_UID_TCP;
    s->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    s->in = evbuffer_new();
    s->rd = event_new(srv->base, fd, EV_READ | EV_PERSIST, session_readable, s);
    if (!s->bev || !s->in || !s->rd || uid_add(srv, s->uid) < 0) {
        if (s->bev) /* the caller closes fd */
            bufferevent_setfd(s->bev, -1);
        session_free(s);
        return NULL;
    }
    s->counted = true;
    s->srv = srv;
    s->id = ++srv->next_session_id;
    TAILQ_INIT(&s->requests);
    for (int k = 0; k < WAIT_KINDS; k++)
        TAILQ_INIT(&s->wait[k].reqs);
    TAILQ_INIT(&s->batches);
    TAILQ_INIT(&s->subscribers);
    s->tcp = tcp;
    evtimer_assign(&s->hs_timer, srv->base, session_hs_timeout, s);
    evtimer_assign(&s->idle_timer, srv->base, session_idle_check, s);
    if (!evbuffer_add_cb(s->in, in_cb, s) ||
        !evbuffer_add_cb(bufferevent_get_output(s->bev), out_cb, s)) {
        bufferevent_setfd(s->bev, -1);
        session_free(s);
        return NULL;
    }
    account_charge(srv, &s->acct, CHARGE_CONN, SESSION_CONN_BYTES);
    bufferevent_setcb(s->bev, NULL, session_write_cb, session_event_cb, s);
    bufferevent_setwatermark(s->bev, EV_WRITE, srv->cfg->client_max_output / 2, 0);
    event_add(s->rd, NULL);
    session_head_due(s);
    s->last_read_ms = clock_mono_ms();
    if (srv->cfg->client_idle_timeout_ms)
        session_idle_arm(s, srv->cfg->client_idle_timeout_ms);
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
        session_close(s, "cut off");
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
    evtimer_del(&s->hs_timer);
    evtimer_del(&s->idle_timer);
    bufferevent_disable(s->bev, EV_READ | EV_WRITE);
    TAILQ_REMOVE(&srv->sessions, s, link);
    srv->n_sessions--;
    uid_remove(srv, s->uid);
    s->counted = false;
    srv->stats.clients_by_proto[s->proto]--;
    TAILQ_INSERT_TAIL(&srv->closing, s, link);
    event_active(srv->reaper, 0, 0);
}

void session_free(struct session *s)
{
    if (!s)
        return;
    ws_session_free(s);
    if (s->counted) /* a session that failed to start */
        uid_remove(s->srv, s->uid);
    if (s->rd)
        event_free(s->rd);
    /* What the buffers still hold is released below, all at once. */
    if (s->in) {
        evbuffer_remove_cb(s->in, in_cb, s);
        evbuffer_free(s->in);
    }
    if (s->bev) {
        evbuffer_remove_cb(bufferevent_get_output(s->bev), out_cb, s);
        bufferevent_free(s->bev);
    }
    if (s->srv)
        account_release(s->srv, &s->acct);
    free(s);
}
