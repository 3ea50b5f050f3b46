/*
 * One libsubpool connection: the Unix socket, the output queue of request
 * lines, the input buffer cut into NDJSON lines, the table of outstanding
 * requests by id, and the subscriptions. Everything runs from the caller's
 * thread: nothing happens between calls, and user callbacks are only made
 * from subpool_process() (and the blocking calls built on it) or from
 * subpool_close(), never from a function that queues work, so callers never
 * see a callback before the call that set it up has returned.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "json.h"
#include "jsonrpc.h"
#include "ndjson.h"
#include "subpool.h"

#define DEFAULT_MAX_REPLY ((size_t)512 << 20)
#define READ_CHUNK        ((size_t)64 << 10)
/* Reads per subpool_process() call, so a flood of notifications cannot starve the caller's loop. */
#define READS_PER_PROCESS 32
#define FIRST_BUCKETS     64

struct request {
    uint64_t id;
    int64_t deadline; /* CLOCK_MONOTONIC milliseconds; 0: none */
    subpool_reply_fn *cb;
    void *arg;
    struct request *hnext; /* hash chain */
    TAILQ_ENTRY(request) link;
};

enum sub_state {
    SUB_PENDING, /* the subscribe reply has not come yet */
    SUB_ACTIVE,  /* notifications are delivered */
    SUB_ENDING,  /* unsubscribed by the caller; waiting for a reply before the final callback */
};

struct sub {
    uint64_t handle; /* the id of its subscribe request */
    enum sub_state state;
    int timeout_ms;
    char *sid; /* the subscription id as raw JSON, from the subscribe reply */
    size_t sid_len;
    char *unsub_method;
    subpool_notify_fn *cb;
    void *arg;
    TAILQ_ENTRY(sub) link;
};

struct subpool_conn {
    int fd;
    int dead;      /* 0, or the error that ended the connection */
    int write_err; /* a write error seen outside subpool_process, reported by it */
    uint64_t next_id;
    size_t max_reply;

    char *rbuf; /* input: unread bytes are rbuf[rstart .. rend) */
    size_t rcap, rstart, rend;
    bool discarding; /* inside an over-long line, dropped as it arrives */
    struct json_skim skim;

    char *wbuf; /* output: unsent bytes are wbuf[wstart .. wend) */
    size_t wcap, wstart, wend;

    struct request **buckets; /* outstanding requests by id */
    size_t nbuckets, npending;
    TAILQ_HEAD(, request) pending; /* the same, in send order */
    TAILQ_HEAD(, sub) subs;

    subpool_message_fn *msg_cb;
    void *msg_arg;

    unsigned depth;       /* subpool_process/run/call frames on the stack */
    bool close_requested; /* subpool_close() ran inside them: free on the way out */
};

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- Outstanding requests ---------------------------------------------------- */

static size_t bucket_of(const struct subpool_conn *c, uint64_t id)
{
    /* Ids are sequential, so the low bits already spread evenly. */
    return (size_t)(id & (c->nbuckets - 1));
}

static void requests_grow(struct subpool_conn *c)
{
    size_t n = c->nbuckets * 2;
    struct request **b = calloc(n, sizeof(*b));
    struct request *r;

    if (!b)
        return; /* longer chains, still correct */
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = n;
    TAILQ_FOREACH(r, &c->pending, link)
    {
        size_t i = bucket_of(c, r->id);
        r->hnext = b[i];
        b[i] = r;
    }
}

static void request_insert(struct subpool_conn *c, struct request *r)
{
    size_t i;

    if (c->npending >= c->nbuckets * 2)
        requests_grow(c);
    i = bucket_of(c, r->id);
    r->hnext = c->buckets[i];
    c->buckets[i] = r;
    TAILQ_INSERT_TAIL(&c->pending, r, link);
    c->npending++;
}

static struct request *request_find(const struct subpool_conn *c, uint64_t id)
{
    struct request *r = c->buckets[bucket_of(c, id)];

    while (r && r->id != id)
        r = r->hnext;
    return r;
}

static void request_remove(struct subpool_conn *c, struct request *r)
{
    struct request **p = &c->buckets[bucket_of(c, r->id)];

    while (*p != r)
        p = &(*p)->hnext;
    *p = r->hnext;
    TAILQ_REMOVE(&c->pending, r, link);
    c->npending--;
}

/* Remove r and make its one callback. */
static void request_finish(struct subpool_conn *c, struct request *r, int status, const char *text,
                           size_t len)
{
    subpool_reply_fn *cb = r->cb;
    void *arg = r->arg;
    uint64_t id = r->id;

    request_remove(c, r);
    free(r);
    cb(c, id, status, text, len, arg);
}

/* ---- Connection failure ----------------------------------------------------------- */

static void sub_end(struct subpool_conn *c, struct sub *s, int status, const char *text, size_t len)
{
    subpool_notify_fn *cb = s->cb;
    void *arg = s->arg;
    uint64_t handle = s->handle;

    TAILQ_REMOVE(&c->subs, s, link);
    free(s->sid);
    free(s->unsub_method);
    free(s);
    cb(c, handle, status, text, len, arg);
}

/*
 * The connection is over: every request and subscription hears `err` once.
 * Callbacks may call back in; c->dead makes every new request fail at once.
 */
static void conn_fail(struct subpool_conn *c, int err)
{
    struct request *r;
    struct sub *s;

    if (c->dead)
        return;
    c->dead = err;
    /* Subscriptions still waiting for a reply end through their request's callback. */
    while ((r = TAILQ_FIRST(&c->pending)))
        request_finish(c, r, err, NULL, 0);
    while ((s = TAILQ_FIRST(&c->subs)))
        sub_end(c, s, err, NULL, 0);
}

/* ---- Output ---------------------------------------------------------------------- */

/* Room for `need` more bytes at wbuf + wend. */
static int wbuf_reserve(struct subpool_conn *c, size_t need)
{
    size_t cap;
    char *p;

    if (c->wstart == c->wend)
        c->wstart = c->wend = 0;
    if (c->wcap - c->wend >= need)
        return 0;
    if (c->wstart > 0) {
        memmove(c->wbuf, c->wbuf + c->wstart, c->wend - c->wstart);
        c->wend -= c->wstart;
        c->wstart = 0;
        if (c->wcap - c->wend >= need)
            return 0;
    }
    cap = c->wcap ? c->wcap : 4096;
    while (cap - c->wend < need) {
        if (cap > SIZE_MAX / 2)
            return SUBPOOL_E_NOMEM;
        cap *= 2;
    }
    p = realloc(c->wbuf, cap);
    if (!p)
        return SUBPOOL_E_NOMEM;
    c->wbuf = p;
    c->wcap = cap;
    return 0;
}

/* Write what the socket takes. Returns 0 or the error to fail the connection with. */
static int flush_output(struct subpool_conn *c)
{
    while (c->wstart < c->wend) {
        ssize_t n =
            send(c->fd, c->wbuf + c->wstart, c->wend - c->wstart, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return errno == EPIPE || errno == ECONNRESET ? SUBPOOL_E_CLOSED : SUBPOOL_E_IO;
        }
        c->wstart += (size_t)n;
    }
    return 0;
}

/* Params must be a JSON array or object; NULL means none. */
static int params_check(const char *params)
{
    struct json_span v;

    if (!params)
        return 0;
    if (json_validate(params, strlen(params), &v) < 0)
        return SUBPOOL_E_INVAL;
    return v.type == JSON_ARRAY || v.type == JSON_OBJECT ? 0 : SUBPOOL_E_INVAL;
}

/* Append one request line to the output queue. */
static int queue_line(struct subpool_conn *c, uint64_t id, const char *method, const char *params)
{
    static const char head[] = "{\"jsonrpc\":\"2.0\",\"id\":";
    size_t mlen = strlen(method), plen = params ? strlen(params) : 0;
    /* json_escape writes at most 6 bytes per input byte, plus the quotes and a NUL. */
    size_t need = sizeof(head) + 20 + 10 + 6 * mlen + 3 + 10 + plen + 3;
    char digits[21];
    size_t dn;
    char *p;
    int err;

    if (mlen > (SIZE_MAX - 256) / 8 || plen > SIZE_MAX / 2)
        return SUBPOOL_E_NOMEM;
    err = wbuf_reserve(c, need);
    if (err)
        return err;
    p = c->wbuf + c->wend;
    memcpy(p, head, sizeof(head) - 1);
    p += sizeof(head) - 1;
    dn = jsonrpc_format_u64(digits, id);
    memcpy(p, digits, dn);
    p += dn;
    memcpy(p, ",\"method\":", 10);
    p += 10;
    p += json_escape(p, 6 * mlen + 3, method, mlen);
    if (params) {
        memcpy(p, ",\"params\":", 10);
        p += 10;
        /* Outside strings a newline is only whitespace, and inside one it is invalid JSON. */
        for (size_t i = 0; i < plen; i++)
            *p++ = params[i] == '\n' || params[i] == '\r' ? ' ' : params[i];
    }
    *p++ = '}';
    *p++ = '\n';
    c->wend = (size_t)(p - c->wbuf);
    return 0;
}

static int send_request(struct subpool_conn *c, const char *method, const char *params,
                        int timeout_ms, subpool_reply_fn *cb, void *arg, uint64_t *ret_id)
{
    struct request *r;
    int err;

    if (c->dead)
        return c->dead;
    err = params_check(params);
    if (err)
        return err;
    r = calloc(1, sizeof(*r));
    if (!r)
        return SUBPOOL_E_NOMEM;
    r->id = ++c->next_id;
    r->cb = cb;
    r->arg = arg;
    r->deadline = timeout_ms >= 0 ? now_ms() + timeout_ms + (timeout_ms == 0) : 0;
    err = queue_line(c, r->id, method, params);
    if (err) {
        free(r);
        return err;
    }
    request_insert(c, r);
    if (!c->write_err)
        c->write_err = flush_output(c);
    if (ret_id)
        *ret_id = r->id;
    return 0;
}

/* ---- Input ----------------------------------------------------------------------- */

static void deliver_stray(struct subpool_conn *c, const char *line, size_t len)
{
    if (c->msg_cb)
        c->msg_cb(c, line, len, c->msg_arg);
}

static struct sub *sub_by_sid(struct subpool_conn *c, const char *p, size_t n)
{
    struct sub *s;

    TAILQ_FOREACH(s, &c->subs, link)
    if (s->sid && s->sid_len == n && memcmp(s->sid, p, n) == 0)
        return s;
    return NULL;
}

/* One complete line, NUL-terminated in place. */
static void dispatch_line(struct subpool_conn *c, const char *line, size_t len)
{
    struct jsonrpc_msg m;
    struct request *r = NULL;
    uint64_t id;

    if (jsonrpc_scan(line, len, &m) == JSONRPC_PARSE_ERROR) {
        deliver_stray(c, line, len);
        return;
    }
    if (m.kind == JSONRPC_KIND_RESPONSE) {
        if (m.id.type == JSON_NUMBER && json_to_u64(line, &m.id, &id))
            r = request_find(c, id);
        else if (m.id.type == JSON_NULL && m.error.type != JSON_NONE && c->npending == 1)
            /* An error subpoold could not tie to a request (a refused client, an
               over-long line) can only be about the one request outstanding. */
            r = TAILQ_FIRST(&c->pending);
        if (r) {
            if (m.error.type != JSON_NONE)
                request_finish(c, r, SUBPOOL_E_RPC, line, len);
            else if (m.result.type != JSON_NONE)
                request_finish(c, r, 0, line, len);
            else
                request_finish(c, r, SUBPOOL_E_PROTOCOL, NULL, 0);
            return;
        }
    } else if (m.kind == JSONRPC_KIND_NOTIFICATION && m.sub.type != JSON_NONE) {
        struct sub *s = sub_by_sid(c, line + m.sub.off, m.sub.len);
        if (s) {
            /* After subpool_unsubscribe() the caller wants no more of them. */
            if (s->state == SUB_ACTIVE)
                s->cb(c, s->handle, 0, line, len, s->arg);
            return;
        }
    }
    deliver_stray(c, line, len);
}

/* An over-long line was dropped: fail its request, found by the id skimmed from it. */
static void discarded_line(struct subpool_conn *c)
{
    uint64_t id;
    struct request *r;

    if (json_skim_id(&c->skim, &id) == 0 && (r = request_find(c, id)))
        request_finish(c, r, SUBPOOL_E_TOOBIG, NULL, 0);
}

static void dispatch_lines(struct subpool_conn *c)
{
    while (!c->dead) {
        char *p = c->rbuf + c->rstart;
        size_t avail = c->rend - c->rstart, line_len, used;
        int done;

        if (c->discarding) {
            used = ndjson_skip(p, avail, &done);
            json_skim_feed(&c->skim, p, used);
            c->rstart += used;
            if (!done)
                break;
            c->discarding = false;
            discarded_line(c);
            continue;
        }
        switch (ndjson_next(p, avail, c->max_reply, &line_len, &used)) {
        case NDJSON_NEED_MORE:
            return;
        case NDJSON_TOO_LONG:
            json_skim_init(&c->skim);
            json_skim_feed(&c->skim, p, used);
            c->rstart += used;
            c->discarding = true;
            break;
        case NDJSON_LINE:
            c->rstart += used;
            p[line_len] = '\0'; /* was "\r" or "\n", already consumed */
            if (line_len > 0)
                dispatch_line(c, p, line_len);
            break;
        }
    }
}

/* Room for at least READ_CHUNK bytes at rbuf + rend. */
static int rbuf_reserve(struct subpool_conn *c)
{
    size_t cap;
    char *p;

    if (c->rstart == c->rend)
        c->rstart = c->rend = 0;
    if (c->rcap - c->rend >= READ_CHUNK)
        return 0;
    if (c->rstart > 0) {
        memmove(c->rbuf, c->rbuf + c->rstart, c->rend - c->rstart);
        c->rend -= c->rstart;
        c->rstart = 0;
        if (c->rcap - c->rend >= READ_CHUNK)
            return 0;
    }
    cap = c->rcap ? c->rcap * 2 : READ_CHUNK * 2;
    p = realloc(c->rbuf, cap);
    if (!p)
        return SUBPOOL_E_NOMEM;
    c->rbuf = p;
    c->rcap = cap;
    return 0;
}

static void read_input(struct subpool_conn *c)
{
    for (int i = 0; i < READS_PER_PROCESS && !c->dead; i++) {
        ssize_t n;
        int err = rbuf_reserve(c);

        if (err) {
            conn_fail(c, err);
            return;
        }
        n = read(c->fd, c->rbuf + c->rend, c->rcap - c->rend);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_fail(c, errno == ECONNRESET ? SUBPOOL_E_CLOSED : SUBPOOL_E_IO);
            return;
        }
        if (n == 0) {
            /* Complete lines were dispatched as they came; a cut-off last line is lost. */
            conn_fail(c, SUBPOOL_E_CLOSED);
            return;
        }
        c->rend += (size_t)n;
        /* Only a newline in the new bytes (or the length limit) can complete something. */
        if (c->discarding || memchr(c->rbuf + c->rend - n, '\n', (size_t)n) ||
            c->rend - c->rstart > c->max_reply)
            dispatch_lines(c);
    }
}

/* Fail requests past their deadline; callbacks may add or cancel others meanwhile. */
static void expire_requests(struct subpool_conn *c)
{
    int64_t now = now_ms();
    bool again = true;

    while (again && !c->dead) {
        struct request *r;

        again = false;
        TAILQ_FOREACH(r, &c->pending, link)
        {
            if (r->deadline && r->deadline <= now) {
                request_finish(c, r, SUBPOOL_E_TIMEOUT, NULL, 0);
                again = true; /* the list may have changed under us: start over */
                break;
            }
        }
    }
}

static int process_events(struct subpool_conn *c, unsigned events)
{
    int err;

    if (c->dead)
        return c->dead;
    if (c->write_err) {
        conn_fail(c, c->write_err);
        return c->dead;
    }
    err = flush_output(c);
    if (err) {
        conn_fail(c, err);
        return c->dead;
    }
    if (events & SUBPOOL_READABLE)
        read_input(c);
    if (!c->dead)
        expire_requests(c);
    return c->dead;
}

static int poll_once(struct subpool_conn *c, int timeout_ms)
{
    struct pollfd p;
    int t = subpool_timeout_ms(c), n;
    unsigned events = 0;

    if (c->dead)
        return c->dead;
    if (t < 0 || (timeout_ms >= 0 && timeout_ms < t))
        t = timeout_ms;
    p.fd = c->fd;
    p.events = POLLIN | (subpool_want_write(c) ? POLLOUT : 0);
    p.revents = 0;
    n = poll(&p, 1, t);
    if (n < 0) {
        if (errno == EINTR)
            return 0;
        conn_fail(c, SUBPOOL_E_IO);
        return c->dead;
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR))
        events |= SUBPOOL_READABLE;
    if (p.revents & POLLOUT)
        events |= SUBPOOL_WRITABLE;
    return process_events(c, events);
}

/* ---- Frames: subpool_close() inside a callback defers the free to here -------------------- */

static void conn_free(struct subpool_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->rbuf);
    free(c->wbuf);
    free(c->buckets);
    free(c);
}

static int frame_enter(struct subpool_conn *c)
{
    if (c->depth > 0)
        return SUBPOOL_E_BUSY;
    c->depth++;
    return 0;
}

/* Leave the outermost frame; the connection is gone when it returns SUBPOOL_E_CANCELED. */
static int frame_leave(struct subpool_conn *c, int rc)
{
    c->depth--;
    if (c->depth == 0 && c->close_requested) {
        conn_free(c);
        return SUBPOOL_E_CANCELED;
    }
    return rc;
}

/* ---- Public API -------------------------------------------------------------------- */

int subpool_connect(const char *path, struct subpool_conn **ret_conn)
{
    struct sockaddr_un sa;
    struct subpool_conn *c;
    int fd, err, saved;

    if (!ret_conn)
        return SUBPOOL_E_INVAL;
    *ret_conn = NULL;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    err = subpool_socket_path(path, sa.sun_path, sizeof(sa.sun_path));
    if (err)
        return err;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return SUBPOOL_E_CONNECT;
    while ((err = connect(fd, (struct sockaddr *)&sa, sizeof(sa))) < 0 && errno == EINTR)
        ;
    if (err < 0 || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
        saved = errno;
        close(fd);
        errno = saved;
        return SUBPOOL_E_CONNECT;
    }
    c = calloc(1, sizeof(*c));
    if (c)
        c->buckets = calloc(FIRST_BUCKETS, sizeof(*c->buckets));
    if (!c || !c->buckets) {
        free(c);
        close(fd);
        return SUBPOOL_E_NOMEM;
    }
    c->fd = fd;
    c->nbuckets = FIRST_BUCKETS;
    c->max_reply = DEFAULT_MAX_REPLY;
    TAILQ_INIT(&c->pending);
    TAILQ_INIT(&c->subs);
    *ret_conn = c;
    return 0;
}

void subpool_close(struct subpool_conn *c)
{
    if (!c || c->close_requested)
        return;
    c->close_requested = true;
    /* A frame guards the callbacks below: they cannot start subpool_process on a dying conn. */
    c->depth++;
    conn_fail(c, SUBPOOL_E_CANCELED);
    c->depth--;
    if (c->depth == 0)
        conn_free(c);
}

void subpool_set_max_reply(struct subpool_conn *c, size_t bytes)
{
    if (c && bytes > 0)
        c->max_reply = bytes;
}

void subpool_set_message_cb(struct subpool_conn *c, subpool_message_fn *cb, void *arg)
{
    if (!c)
        return;
    c->msg_cb = cb;
    c->msg_arg = arg;
}

int subpool_fd(const struct subpool_conn *c)
{
    return c ? c->fd : -1;
}

bool subpool_want_write(const struct subpool_conn *c)
{
    return c && !c->dead && c->wstart < c->wend;
}

int subpool_timeout_ms(const struct subpool_conn *c)
{
    const struct request *r;
    int64_t first = 0, left;

    if (!c || c->dead)
        return -1;
    TAILQ_FOREACH(r, &c->pending, link)
    if (r->deadline && (!first || r->deadline < first))
        first = r->deadline;
    if (!first)
        return -1;
    left = first - now_ms();
    return left <= 0 ? 0 : left > 0x7fffffff ? 0x7fffffff : (int)left;
}

int subpool_process(struct subpool_conn *c, unsigned events)
{
    int err;

    if (!c)
        return SUBPOOL_E_INVAL;
    err = frame_enter(c);
    if (err)
        return err;
    return frame_leave(c, process_events(c, events));
}

int subpool_run(struct subpool_conn *c, int timeout_ms)
{
    int err;

    if (!c)
        return SUBPOOL_E_INVAL;
    err = frame_enter(c);
    if (err)
        return err;
    return frame_leave(c, poll_once(c, timeout_ms));
}

int subpool_send(struct subpool_conn *c, const char *method, const char *params, int timeout_ms,
                 subpool_reply_fn *cb, void *arg, uint64_t *ret_id)
{
    if (!c || !method || !*method || !cb)
        return SUBPOOL_E_INVAL;
    return send_request(c, method, params, timeout_ms, cb, arg, ret_id);
}

static void sub_replied(struct subpool_conn *c, uint64_t id, int status, const char *text,
                        size_t len, void *arg);

int subpool_cancel(struct subpool_conn *c, uint64_t id)
{
    struct request *r;

    if (!c)
        return SUBPOOL_E_INVAL;
    r = request_find(c, id);
    if (!r)
        return SUBPOOL_E_NOTFOUND;
    if (r->cb == sub_replied)
        return SUBPOOL_E_INVAL; /* a subscription: subpool_unsubscribe() ends it */
    request_remove(c, r);
    free(r);
    return 0;
}

/* ---- Blocking call ----------------------------------------------------------------- */

struct call_wait {
    bool done;
    int status;
    char *text;
    size_t len;
};

static void call_replied(struct subpool_conn *c, uint64_t id, int status, const char *text,
                         size_t len, void *arg)
{
    struct call_wait *w = arg;
    (void)c;
    (void)id;

    w->done = true;
    w->status = status;
    if (text) {
        w->text = malloc(len + 1);
        if (!w->text) {
            w->status = SUBPOOL_E_NOMEM;
            return;
        }
        memcpy(w->text, text, len + 1);
        w->len = len;
    }
}

int subpool_call(struct subpool_conn *c, const char *method, const char *params, int timeout_ms,
                 char **ret_reply, size_t *ret_len)
{
    struct call_wait w = {false, 0, NULL, 0};
    uint64_t id = 0;
    int rc;

    if (ret_reply)
        *ret_reply = NULL;
    if (ret_len)
        *ret_len = 0;
    if (!c || !method || !*method || !ret_reply)
        return SUBPOOL_E_INVAL;
    rc = frame_enter(c);
    if (rc)
        return rc;
    rc = send_request(c, method, params, timeout_ms, call_replied, &w, &id);
    /* The request's own deadline ends the wait: poll_once wakes up for it. */
    while (rc == 0 && !w.done)
        rc = poll_once(c, -1);
    if (w.done)
        rc = w.status;
    else if (id)
        (void)subpool_cancel(c, id); /* its callback points into this frame */
    rc = frame_leave(c, rc);
    if (rc == SUBPOOL_E_CANCELED || (rc != 0 && rc != SUBPOOL_E_RPC)) {
        free(w.text);
        return rc;
    }
    *ret_reply = w.text;
    if (ret_len)
        *ret_len = w.len;
    return rc;
}

/* ---- Subscriptions ------------------------------------------------------------------- */

/* The unsubscribe method for a subscribe method; SUBPOOL_E_INVAL when no rule applies. */
static int unsub_name(const char *method, char **ret)
{
    static const struct {
        const char *from, *to;
    } rules[] = {
        {"subscribe", "unsubscribe"},
        {"submitAndWatch", "unwatch"},
        {"follow", "unfollow"},
    };

    for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
        const char *at = strstr(method, rules[i].from);
        size_t pre, from_len, to_len, rest;
        char *out;

        if (!at)
            continue;
        pre = (size_t)(at - method);
        from_len = strlen(rules[i].from);
        to_len = strlen(rules[i].to);
        rest = strlen(at + from_len);
        out = malloc(pre + to_len + rest + 1);
        if (!out)
            return SUBPOOL_E_NOMEM;
        memcpy(out, method, pre);
        memcpy(out + pre, rules[i].to, to_len);
        memcpy(out + pre + to_len, at + from_len, rest + 1);
        *ret = out;
        return 0;
    }
    return SUBPOOL_E_INVAL;
}

static void unsub_replied(struct subpool_conn *c, uint64_t id, int status, const char *text,
                          size_t len, void *arg)
{
    (void)id;
    (void)status;
    (void)text;
    (void)len;
    /* Whatever the node answered, the caller asked for the end. */
    sub_end(c, arg, SUBPOOL_E_CANCELED, NULL, 0);
}

/* Send the unsubscribe request; on success the sub is SUB_ENDING until its reply. */
static int sub_send_unsubscribe(struct subpool_conn *c, struct sub *s)
{
    size_t n = s->sid_len + 3;
    char *params = malloc(n);
    int err;

    if (!params)
        return SUBPOOL_E_NOMEM;
    params[0] = '[';
    memcpy(params + 1, s->sid, s->sid_len);
    params[n - 2] = ']';
    params[n - 1] = '\0';
    err = send_request(c, s->unsub_method, params, s->timeout_ms, unsub_replied, s, NULL);
    free(params);
    if (!err)
        s->state = SUB_ENDING;
    return err;
}

static void sub_replied(struct subpool_conn *c, uint64_t id, int status, const char *text,
                        size_t len, void *arg)
{
    struct sub *s = arg;
    struct jsonrpc_msg m;
    (void)id;

    if (status != 0) {
        int final = s->state == SUB_ENDING ? SUBPOOL_E_CANCELED : status;
        sub_end(c, s, final, final == SUBPOOL_E_RPC ? text : NULL,
                final == SUBPOOL_E_RPC ? len : 0);
        return;
    }
    jsonrpc_scan(text, len, &m);
    s->sid = malloc(m.result.len);
    if (!s->sid) {
        sub_end(c, s, SUBPOOL_E_NOMEM, NULL, 0);
        return;
    }
    memcpy(s->sid, text + m.result.off, m.result.len);
    s->sid_len = m.result.len;
    if (s->state == SUB_ENDING) {
        /* Not sent: nothing to wait for; its notifications are then dropped as strays. */
        if (sub_send_unsubscribe(c, s) < 0)
            sub_end(c, s, SUBPOOL_E_CANCELED, NULL, 0);
        return;
    }
    s->state = SUB_ACTIVE;
    s->cb(c, s->handle, SUBPOOL_SUBSCRIBED, text, len, s->arg);
}

int subpool_subscribe(struct subpool_conn *c, const char *method, const char *params,
                      const char *unsub_method, int timeout_ms, subpool_notify_fn *cb, void *arg,
                      uint64_t *ret_sub)
{
    struct sub *s;
    int err;

    if (!c || !method || !*method || !cb || (unsub_method && !*unsub_method))
        return SUBPOOL_E_INVAL;
    if (c->dead)
        return c->dead;
    s = calloc(1, sizeof(*s));
    if (!s)
        return SUBPOOL_E_NOMEM;
    if (unsub_method)
        err = (s->unsub_method = strdup(unsub_method)) ? 0 : SUBPOOL_E_NOMEM;
    else
        err = unsub_name(method, &s->unsub_method);
    if (err) {
        free(s);
        return err;
    }
    s->state = SUB_PENDING;
    s->timeout_ms = timeout_ms;
    s->cb = cb;
    s->arg = arg;
    err = send_request(c, method, params, timeout_ms, sub_replied, s, &s->handle);
    if (err) {
        free(s->unsub_method);
        free(s);
        return err;
    }
    TAILQ_INSERT_TAIL(&c->subs, s, link);
    if (ret_sub)
        *ret_sub = s->handle;
    return 0;
}

int subpool_unsubscribe(struct subpool_conn *c, uint64_t sub)
{
    struct sub *s;

    if (!c)
        return SUBPOOL_E_INVAL;
    TAILQ_FOREACH(s, &c->subs, link)
    if (s->handle == sub)
        break;
    if (!s)
        return SUBPOOL_E_NOTFOUND;
    switch (s->state) {
    case SUB_PENDING:
        s->state = SUB_ENDING; /* sub_replied unsubscribes once the id is known */
        return 0;
    case SUB_ACTIVE:
        return sub_send_unsubscribe(c, s);
    case SUB_ENDING:
        return 0;
    }
    return 0;
}
