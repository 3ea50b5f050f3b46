/*
 * subpool-bench: drives JSON-RPC load at one target and prints one JSON
 * object with throughput, latency percentiles, errors and, given PIDs, the
 * CPU and memory the daemon (and the node) spent on it.
 *
 * Targets: unix:PATH (subpoold's NDJSON socket) or ws://HOST:PORT/PATH and
 * wss://... (a node, a proxy, later subpoold's TCP port), loopback only.
 * Every client is its own connection. Modes:
 *   closed  K clients, each keeping D requests outstanding
 *   open    a fixed total rate over K clients; latency counts from the
 *           moment a request was due, so a stalled server is not hidden
 *           (no coordinated omission)
 *   churn   K workers, each doing connect + one call + close, over and over
 *   idle    K clients connect, make --idle-calls calls, then sit; reports
 *           the daemon's RSS growth per client
 *   once    one connection, one call (--print shows the reply); exit status
 *           says whether it worked. The unit of `spawn`.
 *   spawn   runs `once` as N separate short-lived processes, K at a time
 *           (churn including process start, like cron jobs and scripts), or
 *           the program given after `--`, whose exit status is the verdict
 * Runs are bounded by --duration and/or --requests, and a --timeout that
 * stops everything whatever happens. Exit 0 when nothing failed, 1 when a
 * request, connection or reply went wrong (the report is printed anyway),
 * 2 on bad usage.
 *
 * One thread, one libevent loop, raw non-blocking sockets: the bench should
 * cost as little as possible per request, because on a small machine it
 * competes with the daemon and the node for the same cores.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <wslay/wslay.h>

#include "hist.h"
#include "http.h"
#include "jsonrpc.h"
#include "ndjson.h"
#include "url.h"

extern char **environ;

#define PROG "subpool-bench"

/* Bytes read from a socket per wakeup at least; large replies grow the buffer. */
#define READ_CHUNK (256u << 10)
/* A connection whose peer never answers is given up after this (connect + handshake). */
#define CONNECT_TIMEOUT_NS (10ull * 1000000000ull)
/* After the run, outstanding replies may arrive for this long before they count as lost. */
#define DRAIN_NS (10ull * 1000000000ull)
/* Open loop: more than this many requests outstanding means the target cannot keep up. */
#define OPEN_MAX_OUTSTANDING 1000000u
/* Slots (request ids) per connection never grow beyond this. */
#define MAX_SLOTS (1u << 22)

enum mode { MODE_CLOSED, MODE_OPEN, MODE_CHURN, MODE_IDLE, MODE_ONCE, MODE_SPAWN };
static const char *const mode_names[] = {"closed", "open", "churn", "idle", "once", "spawn"};

struct opts {
    enum mode mode;
    const char *target;
    unsigned clients;
    unsigned depth;
    double rate;
    double duration;
    uint64_t requests;
    double warmup;
    double hold;
    unsigned idle_calls;
    const char *method;
    const char *params;
    long daemon_pid;
    long node_pid;
    unsigned connect_concurrency;
    double timeout;
    size_t max_message;
    const char *cafile;
    bool print;
    bool quiet;
    char **spawn_argv; /* spawn: the program to run instead of `once` */
};

struct target {
    bool unix_sock;
    bool tls;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char host[URL_HOST_MAX];
    char authority[URL_HOST_MAX + 16];
    char path[URL_PATH_MAX];
};

/* A growable byte buffer with a consumed prefix [0, off). */
struct buf {
    char *p;
    size_t off;
    size_t len;
    size_t cap;
};

/* One request id. Ids are slot indexes, recycled through a free list. */
struct slot {
    uint64_t t0; /* when it was sent (or due, in the open loop) */
    uint32_t next_free;
    bool busy;
    bool measured; /* sent after the warm-up: counts in the results */
};

enum cstate { C_OFF, C_WAIT, C_CONNECTING, C_TLS, C_UPGRADE, C_READY, C_DEAD };

struct bench;

struct conn {
    struct bench *b;
    unsigned idx;
    int fd;
    enum cstate state;
    short watching; /* the flags of ev as last added */
    struct event *ev;
    struct event *timer; /* connect retries, deferred restarts */
    uint64_t t_connect;  /* connect started (churn latency counts from here) */
    uint64_t connect_deadline;
    struct buf in;
    struct buf out;
    struct buf msg; /* websocket: a fragmented message being put together */
    size_t scanned; /* NDJSON: bytes of in already searched for a newline */
    SSL *ssl;
    wslay_event_context_ptr ws;
    char key[WS_KEY_LEN + 1];
    struct slot *slots;
    uint32_t nslots;
    uint32_t free_head;
    uint32_t outstanding;
    unsigned calls_done; /* idle mode */
    bool idle_done;
    bool in_recv;    /* inside a reply callback: writes and closes wait until it returns */
    bool round_done; /* churn: this round's reply came; close from the timer */
    bool scheduled;  /* churn: the timer will start the next round */
};

struct errors {
    uint64_t connect;
    uint64_t handshake;
    uint64_t closed;
    uint64_t protocol;
    uint64_t rpc;
    uint64_t timeout;
    uint64_t overload;
};

struct procsample {
    bool ok;
    double cpu_s;
    long rss_kib;
};

struct bench {
    struct opts o;
    struct target t;
    struct event_base *base;
    SSL_CTX *ssl_ctx;
    struct conn *conns;
    unsigned nconns;
    /* Connection start-up is paced: at most connect_concurrency in progress. */
    unsigned next_connect;
    unsigned connecting;
    unsigned settled; /* initial connections that are ready or failed */
    uint64_t connect_retries;
    bool sampled0; /* the CPU counters at the start of measuring are taken */
    bool running;  /* issuing requests */
    bool stopping; /* no new requests; waiting for the outstanding ones */
    bool finished;
    uint64_t t_start;   /* connections settled; the warm-up starts */
    uint64_t t_measure; /* the warm-up is over */
    uint64_t t_stop;    /* issuing stops (0: by count only) */
    uint64_t t_last;    /* last measured reply */
    uint64_t t_idle_all;
    uint64_t issued;         /* requests sent after the warm-up */
    uint64_t seq;            /* every request, for {seq} in params */
    uint64_t open_due;       /* open loop: requests due so far */
    unsigned rr;             /* open loop: next connection */
    uint64_t outstanding;    /* all connections */
    uint64_t completed;      /* measured replies (ok or error) */
    uint64_t bytes_in;       /* measured reply bytes */
    uint64_t bytes_in_total; /* every reply byte */
    struct hist hist;
    struct errors err;
    char first_error[300];
    struct event *tick;
    struct event *phase;
    struct event *deadline;
    /* The request, split around its id and any {seq}/{u16le} placeholders. */
    char *tmpl;
    size_t tmpl_len;
    char *reqbuf;
    size_t reqcap;
    struct procsample d0, d1, n0, n1;
    long d_rss_start;
    struct rusage ru0, ru1;
    int exit_code;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t sec_to_ns(double s)
{
    return s <= 0 ? 0 : (uint64_t)(s * 1e9);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, PROG ": ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

/* ---------------------------------------------------------------- /proc -- */

/* CPU seconds (utime + stime) of a process, from /proc/PID/stat. */
static bool proc_cpu(long pid, double *ret)
{
    char path[64], data[1024];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    size_t n = fread(data, 1, sizeof(data) - 1, f);
    fclose(f);
    data[n] = '\0';
    /* The command name may hold spaces and parentheses: fields restart after the last ')'. */
    char *p = strrchr(data, ')');
    if (!p)
        return false;
    unsigned long long utime = 0, stime = 0;
    /* Field 3 (state) follows ") "; utime and stime are fields 14 and 15. */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return false;
    *ret = (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
    return true;
}

/* VmRSS in KiB, from /proc/PID/status; -1 when unknown. */
static long proc_rss_kib(long pid)
{
    char path[64], line[256];
    long kib = -1;
    snprintf(path, sizeof(path), "/proc/%ld/status", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

static void sample(long pid, struct procsample *s)
{
    s->ok = pid > 0 && proc_cpu(pid, &s->cpu_s);
    s->rss_kib = pid > 0 ? proc_rss_kib(pid) : -1;
}

/* ---------------------------------------------------------------- buffers -- */

static void buf_reserve(struct buf *b, size_t want)
{
    if (b->off && b->off == b->len) {
        b->off = b->len = 0;
    }
    if (b->cap - b->len >= want)
        return;
    /* Reclaim the consumed prefix before growing. */
    if (b->off) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->cap - b->len >= want)
            return;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < want)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        die("out of memory");
    b->p = p;
    b->cap = cap;
}

static void buf_add(struct buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void buf_free(struct buf *b)
{
    free(b->p);
    *b = (struct buf){0};
}

/* ---------------------------------------------------------------- errors -- */

static void note_error(struct bench *b, uint64_t *counter, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void note_error(struct bench *b, uint64_t *counter, const char *fmt, ...)
{
    (*counter)++;
    if (b->first_error[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->first_error, sizeof(b->first_error), fmt, ap);
    va_end(ap);
    if (!b->o.quiet)
        fprintf(stderr, PROG ": first error: %s\n", b->first_error);
}

static uint64_t errors_total(const struct errors *e)
{
    return e->connect + e->handshake + e->closed + e->protocol + e->rpc + e->timeout + e->overload;
}

/* ---------------------------------------------------------------- target -- */

static bool addr_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
    }
    return false;
}

static void target_parse(const char *s, struct target *t)
{
    memset(t, 0, sizeof(*t));
    if (strncmp(s, "unix:", 5) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)&t->addr;
        const char *path = s + 5;
        if (!*path || strlen(path) >= sizeof(un->sun_path))
            die("unix:PATH: empty or longer than a Unix socket allows: \"%s\"", s);
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, path, strlen(path));
        t->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
        t->unix_sock = true;
        return;
    }
    struct url u;
    const char *cause = NULL;
    if (url_parse(s, &u, &cause) < 0)
        die("target \"%s\": %s (want unix:PATH, ws://HOST:PORT or wss://HOST:PORT)", s,
            cause ? cause : "invalid");
    t->tls = u.tls;
    snprintf(t->host, sizeof(t->host), "%s", u.host);
    snprintf(t->path, sizeof(t->path), "%s", u.path);
    url_authority(&u, t->authority, sizeof(t->authority));
    char port[8];
    snprintf(port, sizeof(port), "%u", u.port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res = NULL;
    int r = getaddrinfo(u.host, port, &hints, &res);
    if (r != 0 || !res)
        die("target \"%s\": %s", s, gai_strerror(r));
    /* A benchmark floods its target: refuse anything but this machine. */
    if (!addr_is_loopback(res->ai_addr))
        die("target \"%s\" is not a loopback address; " PROG " only loads this machine", s);
    memcpy(&t->addr, res->ai_addr, res->ai_addrlen);
    t->addrlen = res->ai_addrlen;
    freeaddrinfo(res);
}

/* ---------------------------------------------------------------- requests -- */

/*
 * The request after its id: ,"method":"M","params":P}. Placeholders in P are
 * expanded per request: {seq} is the request's sequence number in decimal,
 * {u16le} the same as 4 hex digits of a little-endian u16 (a SCALE netuid).
 */
static void request_template(struct bench *b)
{
    char esc[512];
    size_t n = json_escape(esc, sizeof(esc), b->o.method, strlen(b->o.method));
    size_t plen = strlen(b->o.params);
    b->tmpl_len = n + plen + 32;
    b->tmpl = malloc(b->tmpl_len);
    if (!b->tmpl)
        die("out of memory");
    b->tmpl_len =
        (size_t)snprintf(b->tmpl, b->tmpl_len, ",\"method\":%s,\"params\":%s}", esc, b->o.params);
    b->reqcap = b->tmpl_len + 64 + 16 * (plen / 5 + 1);
    b->reqbuf = malloc(b->reqcap);
    if (!b->reqbuf)
        die("out of memory");
}

/* Writes the request with this id into b->reqbuf; returns its length (no newline). */
static size_t request_build(struct bench *b, uint32_t id)
{
    static const char head[] = "{\"jsonrpc\":\"2.0\",\"id\":";
    char *o = b->reqbuf;
    uint64_t seq = b->seq++;
    memcpy(o, head, sizeof(head) - 1);
    o += sizeof(head) - 1;
    char num[21];
    size_t nl = jsonrpc_format_u64(num, id);
    memcpy(o, num, nl);
    o += nl;
    const char *p = b->tmpl, *end = b->tmpl + b->tmpl_len;
    while (p < end) {
        const char *brace = memchr(p, '{', (size_t)(end - p));
        if (!brace) {
            memcpy(o, p, (size_t)(end - p));
            o += end - p;
            break;
        }
        memcpy(o, p, (size_t)(brace - p));
        o += brace - p;
        if ((size_t)(end - brace) >= 5 && memcmp(brace, "{seq}", 5) == 0) {
            nl = jsonrpc_format_u64(num, seq);
            memcpy(o, num, nl);
            o += nl;
            p = brace + 5;
        } else if ((size_t)(end - brace) >= 7 && memcmp(brace, "{u16le}", 7) == 0) {
            o += sprintf(o, "%02x%02x", (unsigned)(seq & 0xff), (unsigned)((seq >> 8) & 0xff));
            p = brace + 7;
        } else {
            *o++ = '{';
            p = brace + 1;
        }
    }
    return (size_t)(o - b->reqbuf);
}

static uint32_t slot_take(struct conn *c)
{
    if (c->free_head == UINT32_MAX) {
        uint32_t n = c->nslots ? c->nslots * 2 : 16;
        if (n > MAX_SLOTS)
            return UINT32_MAX;
        struct slot *s = realloc(c->slots, n * sizeof(*s));
        if (!s)
            die("out of memory");
        for (uint32_t i = c->nslots; i < n; i++)
            s[i] = (struct slot){.next_free = i + 1 < n ? i + 1 : c->free_head};
        c->free_head = c->nslots;
        c->slots = s;
        c->nslots = n;
    }
    uint32_t id = c->free_head;
    c->free_head = c->slots[id].next_free;
    c->slots[id].busy = true;
    return id;
}

static void slot_put(struct conn *c, uint32_t id)
{
    c->slots[id].busy = false;
    c->slots[id].next_free = c->free_head;
    c->free_head = id;
}

/* ---------------------------------------------------------------- I/O -- */

static void conn_close(struct conn *c, enum cstate to);
static void conn_flush(struct conn *c);
static void conn_start(struct conn *c);
static void on_ready(struct conn *c);
static void bench_check_done(struct bench *b);
static void conn_cb(evutil_socket_t fd, short what, void *arg);

static void conn_watch(struct conn *c, short flags)
{
    if (c->watching == flags)
        return;
    if (c->watching)
        event_del(c->ev);
    c->watching = flags;
    if (!flags)
        return;
    event_assign(c->ev, c->b->base, c->fd, flags | EV_PERSIST, conn_cb, c);
    event_add(c->ev, NULL);
}

/* read(2) or SSL_read; -1 with errno EAGAIN when nothing is there, 0 at EOF. */
static ssize_t io_read(struct conn *c, void *p, size_t n)
{
    if (!c->ssl)
        return read(c->fd, p, n);
    int r = SSL_read(c->ssl, p, n > INT_MAX ? INT_MAX : (int)n);
    if (r > 0)
        return r;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    errno = EPROTO;
    return -1;
}

static ssize_t io_write(struct conn *c, const void *p, size_t n)
{
    if (!c->ssl)
        return send(c->fd, p, n, MSG_NOSIGNAL);
    int r = SSL_write(c->ssl, p, n > INT_MAX ? INT_MAX : (int)n);
    if (r > 0)
        return r;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    errno = EPIPE;
    return -1;
}

/* A connection that went away: its outstanding requests are lost. */
static void conn_lost(struct conn *c, const char *why)
{
    struct bench *b = c->b;
    bool expected = b->finished || (b->stopping && c->outstanding == 0) ||
                    (b->o.mode == MODE_IDLE && b->stopping);
    if (!expected) {
        if (c->state == C_READY)
            note_error(b, &b->err.closed, "connection %u lost with %u requests outstanding: %s",
                       c->idx, c->outstanding, why);
        else if (c->state == C_UPGRADE || c->state == C_TLS)
            note_error(b, &b->err.handshake, "connection %u: handshake failed: %s", c->idx, why);
        else
            note_error(b, &b->err.connect, "connection %u: connect failed: %s", c->idx, why);
    }
    if (b->o.mode == MODE_CHURN) {
        /* A failed round is counted; the worker goes on with the next one (the timer decides
         * whether there is one). Scheduled first, so that the close does not end the run. */
        c->scheduled = true;
        conn_close(c, C_OFF);
        event_active(c->timer, EV_TIMEOUT, 1);
        return;
    }
    conn_close(c, C_DEAD);
}

/* ---------------------------------------------------------------- replies -- */

static void conn_after_reply(struct conn *c);

static void handle_reply(struct conn *c, const char *p, size_t n)
{
    struct bench *b = c->b;
    struct jsonrpc_msg m;
    uint64_t id;
    uint64_t t = now_ns();

    b->bytes_in_total += n;
    if (jsonrpc_scan(p, n, &m) != 0) {
        note_error(b, &b->err.protocol, "reply is not a JSON-RPC message: %.80s", p);
        return;
    }
    if (m.kind != JSONRPC_KIND_RESPONSE)
        return; /* a notification: not ours to time */
    if (m.id.type != JSON_NUMBER || !json_to_u64(p, &m.id, &id) || id >= c->nslots ||
        !c->slots[id].busy) {
        note_error(b, &b->err.protocol, "reply with an id we did not send: %.*s",
                   (int)(m.id.len > 40 ? 40 : m.id.len), p + m.id.off);
        return;
    }
    struct slot *s = &c->slots[id];
    if (s->measured) {
        hist_record(&b->hist, t > s->t0 ? t - s->t0 : 0);
        b->completed++;
        b->bytes_in += n;
        b->t_last = t;
    }
    if (m.error.type != JSON_NONE)
        note_error(b, &b->err.rpc, "error reply: %.200s", p + m.error.off);
    else if (b->o.print)
        printf("%.*s\n", (int)m.result.len, p + m.result.off);
    slot_put(c, (uint32_t)id);
    c->outstanding--;
    b->outstanding--;
    conn_after_reply(c);
}

/* NDJSON: every complete line in the input is a reply. */
static void ndjson_drain(struct conn *c)
{
    struct buf *in = &c->in;
    while (c->state == C_READY && in->off < in->len) {
        char *start = in->p + in->off;
        size_t avail = in->len - in->off;
        char *nl = c->scanned < avail ? memchr(start + c->scanned, '\n', avail - c->scanned) : NULL;
        if (!nl) {
            c->scanned = avail;
            if (avail > c->b->o.max_message) {
                note_error(c->b, &c->b->err.protocol, "reply line over %zu bytes",
                           c->b->o.max_message);
                conn_close(c, C_DEAD);
            }
            return;
        }
        size_t line_len, consumed;
        /* The framing (and "\r\n") is protocol/'s: give it exactly one line. */
        if (ndjson_next(start, (size_t)(nl - start) + 1, SIZE_MAX - 1, &line_len, &consumed) !=
                NDJSON_LINE ||
            consumed == 0) {
            note_error(c->b, &c->b->err.protocol, "NDJSON framing failed");
            conn_close(c, C_DEAD);
            return;
        }
        in->off += consumed;
        c->scanned = 0;
        if (line_len) {
            c->in_recv = true;
            handle_reply(c, start, line_len);
            c->in_recv = false;
        }
    }
}

/* --- websocket (wslay) --- */

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *p, size_t n, int flags,
                          void *user)
{
    struct conn *c = user;
    (void)flags;
    ssize_t r = io_write(c, p, n);
    if (r < 0) {
        wslay_event_set_error(ctx, errno == EAGAIN || errno == EWOULDBLOCK
                                       ? WSLAY_ERR_WOULDBLOCK
                                       : WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return r;
}

/* Masking keys need not be secret here: a cheap generator keeps masking off the profile. */
static int ws_genmask_cb(wslay_event_context_ptr ctx, uint8_t *p, size_t n, void *user)
{
    static uint64_t x = 0x9e3779b97f4a7c15ull;
    (void)ctx;
    (void)user;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)x;
    }
    return 0;
}

/* wslay only writes; frames from the server are read by ws_drain. */
static const struct wslay_event_callbacks ws_callbacks = {
    .send_callback = ws_send_cb,
    .genmask_callback = ws_genmask_cb,
};

/*
 * Frames from the server, read where they lie in c->in: wslay_event_recv
 * would copy every message and check its UTF-8 a byte at a time, and the
 * load generator must not be what limits a run. A message in one frame is
 * handled in place; fragments are put together in c->msg.
 */
static void ws_drain(struct conn *c)
{
    struct buf *in = &c->in;
    uint64_t max = c->b->o.max_message;

    while (c->state == C_READY && in->off < in->len) {
        const uint8_t *h = (const uint8_t *)in->p + in->off;
        size_t avail = in->len - in->off;
        struct ws_frame fr;
        int head = ws_frame_parse(h, avail, &fr);
        if (head == 0)
            return;
        unsigned op = fr.opcode;
        uint64_t n = fr.len;
        bool fin = fr.fin;
        if (head < 0 || fr.masked || fr.rsv || (op > 2 && op < 8) || op > 10 || n > max) {
            conn_lost(c, head > 0 && n > max ? "message over --max-message"
                                             : "websocket protocol error");
            return;
        }
        if (avail - (size_t)head < n)
            return; /* conn_read grows the buffer to the whole frame */
        const char *payload = (const char *)h + head;
        in->off += (size_t)head + (size_t)n;
        if (op == WSLAY_CONNECTION_CLOSE) {
            conn_lost(c, "closed by the server");
            return;
        }
        if (op == WSLAY_PING) {
            struct wslay_event_msg pong = {WSLAY_PONG, (const uint8_t *)payload, (size_t)n};
            (void)wslay_event_queue_msg(c->ws, &pong);
            continue;
        }
        if (op == WSLAY_PONG)
            continue;
        bool pieced = !fin || op == WSLAY_CONTINUATION_FRAME;
        if (pieced) {
            if (op != WSLAY_CONTINUATION_FRAME)
                c->msg.off = c->msg.len = 0;
            buf_add(&c->msg, payload, (size_t)n);
            if (c->msg.len > max) {
                conn_lost(c, "message over --max-message");
                return;
            }
            if (!fin)
                continue;
            payload = c->msg.p;
            n = c->msg.len;
        }
        c->in_recv = true;
        handle_reply(c, payload, (size_t)n);
        c->in_recv = false;
        if (pieced)
            c->msg.off = c->msg.len = 0;
    }
}

/* --- the opening handshake --- */

static void upgrade_send(struct conn *c)
{
    char req[URL_PATH_MAX + URL_HOST_MAX + 256];
    if (ws_make_key(c->key) < 0) {
        conn_lost(c, "no random bytes for a websocket key");
        return;
    }
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     c->b->t.path, c->b->t.authority, c->key);
    c->state = C_UPGRADE;
    buf_add(&c->out, req, (size_t)n);
    conn_flush(c);
}

static void upgrade_read(struct conn *c)
{
    struct http_head h;
    size_t avail = c->in.len - c->in.off;
    int r = http_parse_response(c->in.p + c->in.off, avail, &h);
    if (r == 0)
        return;
    if (r < 0 || h.status != 101) {
        conn_lost(c, r < 0 ? "malformed HTTP response" : "upgrade refused (status not 101)");
        return;
    }
    char want[WS_ACCEPT_LEN + 1];
    const struct http_str *acc = http_header(&h, "Sec-WebSocket-Accept");
    if (ws_accept(c->key, WS_KEY_LEN, want) < 0 || !acc || acc->len != WS_ACCEPT_LEN ||
        memcmp(acc->p, want, WS_ACCEPT_LEN) != 0) {
        conn_lost(c, "wrong Sec-WebSocket-Accept");
        return;
    }
    c->in.off += h.head_len;
    if (wslay_event_context_client_init(&c->ws, &ws_callbacks, c) != 0)
        die("out of memory");
    on_ready(c);
}

/* --- TLS (wss://) --- */

static void tls_step(struct conn *c)
{
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        upgrade_send(c);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ)
        conn_watch(c, EV_READ);
    else if (e == SSL_ERROR_WANT_WRITE)
        conn_watch(c, EV_READ | EV_WRITE);
    else {
        char msg[200];
        ERR_error_string_n(ERR_get_error(), msg, sizeof(msg));
        c->state = C_TLS;
        conn_lost(c, msg);
    }
}

static void tls_start(struct conn *c)
{
    c->state = C_TLS;
    c->ssl = SSL_new(c->b->ssl_ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
        die("out of memory");
    SSL_set_connect_state(c->ssl);
    /* SNI only for names, as browsers and Python do; IP literals are checked as IPs. */
    struct in6_addr ip;
    bool is_ip =
        inet_pton(AF_INET, c->b->t.host, &ip) == 1 || inet_pton(AF_INET6, c->b->t.host, &ip) == 1;
    if (!is_ip)
        SSL_set_tlsext_host_name(c->ssl, c->b->t.host);
    if (c->b->o.cafile) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
        if (is_ip)
            X509_VERIFY_PARAM_set1_ip_asc(vp, c->b->t.host);
        else
            X509_VERIFY_PARAM_set1_host(vp, c->b->t.host, 0);
    }
    tls_step(c);
}

/* ---------------------------------------------------------------- events -- */

static void conn_flush(struct conn *c)
{
    struct buf *out = &c->out;
    /* Inside wslay_event_recv nothing may be sent or freed; conn_read flushes afterwards. */
    if (c->in_recv)
        return;
    while (out->off < out->len) {
        ssize_t r = io_write(c, out->p + out->off, out->len - out->off);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_lost(c, strerror(errno));
            return;
        }
        out->off += (size_t)r;
    }
    if (out->off == out->len)
        out->off = out->len = 0;
    if (c->ws && c->state == C_READY && wslay_event_want_write(c->ws) &&
        wslay_event_send(c->ws) != 0) {
        conn_lost(c, "websocket send failed");
        return;
    }
    bool want = out->len > 0 || (c->ws && wslay_event_want_write(c->ws));
    conn_watch(c, want ? EV_READ | EV_WRITE : EV_READ);
}

static void conn_read(struct conn *c)
{
    struct buf *in = &c->in;
    /* Large NDJSON lines grow the buffer so that a whole reply fits and reads stay big. */
    size_t want = READ_CHUNK;
    if (in->len - in->off > want)
        want = in->len - in->off;
    buf_reserve(in, want);
    ssize_t r = io_read(c, in->p + in->len, in->cap - in->len);
    if (r == 0) {
        conn_lost(c, "end of stream");
        return;
    }
    if (r < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            conn_lost(c, strerror(errno));
        return;
    }
    in->len += (size_t)r;
    /* TLS may hold decrypted bytes the socket no longer signals: come back for them. */
    if (c->ssl && SSL_pending(c->ssl) > 0)
        event_active(c->ev, EV_READ, 0);
    switch (c->state) {
    case C_UPGRADE:
        upgrade_read(c);
        if (c->state == C_READY && c->in.off < c->in.len)
            ws_drain(c);
        break;
    case C_READY:
        if (c->ws)
            ws_drain(c);
        else
            ndjson_drain(c);
        break;
    default:
        break;
    }
    if (c->round_done) {
        /* Churn: the reply is in; close and start the next round outside this callback. */
        c->scheduled = true;
        event_active(c->timer, EV_TIMEOUT, 1);
    } else if (c->state == C_READY) {
        /* Requests queued while replies were handled leave in one write. */
        conn_flush(c);
    }
}

static void conn_connected(struct conn *c)
{
    if (c->b->t.unix_sock) {
        on_ready(c);
    } else if (c->b->t.tls) {
        tls_start(c);
    } else {
        upgrade_send(c);
    }
}

static void conn_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd;
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err) {
            conn_lost(c, strerror(err));
            return;
        }
        conn_connected(c);
        return;
    }
    if (c->state == C_TLS) {
        tls_step(c);
        return;
    }
    if (what & EV_READ)
        conn_read(c);
    if ((what & EV_WRITE) && c->fd >= 0 && c->state != C_DEAD && c->state != C_OFF)
        conn_flush(c);
}

/* Deferred work for a connection: a connect retry or the next churn round. */
static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd;
    (void)what;
    conn_start(c);
}

/* Starting a connection finishes with on_ready or conn_lost, never silently. */
static void conn_start(struct conn *c)
{
    struct bench *b = c->b;
    uint64_t t = now_ns();

    if (c->state != C_WAIT) {
        c->t_connect = t;
        c->connect_deadline = t + CONNECT_TIMEOUT_NS;
    }
    c->state = C_CONNECTING;
    c->fd = socket(b->t.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        conn_lost(c, strerror(errno));
        return;
    }
    if (!b->t.unix_sock) {
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    if (connect(c->fd, (const struct sockaddr *)&b->t.addr, b->t.addrlen) == 0) {
        conn_watch(c, EV_READ);
        conn_connected(c);
        return;
    }
    if (errno == EINPROGRESS) {
        conn_watch(c, EV_WRITE);
        return;
    }
    /* A full Unix listen backlog says EAGAIN at once: wait a moment and try again. */
    if (errno == EAGAIN && t < c->connect_deadline) {
        close(c->fd);
        c->fd = -1;
        c->state = C_WAIT;
        b->connect_retries++;
        struct timeval tv = {0, 2000};
        evtimer_add(c->timer, &tv);
        return;
    }
    conn_lost(c, strerror(errno));
}

static void conn_close(struct conn *c, enum cstate to)
{
    struct bench *b = c->b;
    bool was_connecting = c->state == C_CONNECTING || c->state == C_WAIT || c->state == C_TLS ||
                          c->state == C_UPGRADE;

    conn_watch(c, 0);
    evtimer_del(c->timer);
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->ws) {
        wslay_event_context_free(c->ws);
        c->ws = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    b->outstanding -= c->outstanding;
    c->outstanding = 0;
    for (uint32_t i = 0; i < c->nslots; i++)
        if (c->slots[i].busy)
            slot_put(c, i);
    c->in.off = c->in.len = 0;
    c->out.off = c->out.len = 0;
    c->scanned = 0;
    c->round_done = false;
    c->state = to;
    if (was_connecting && b->connecting) {
        b->connecting--;
        if (!b->running && !b->stopping)
            b->settled++;
    }
    bench_check_done(b);
}

/* ---------------------------------------------------------------- load -- */

static void bench_finish(struct bench *b)
{
    if (b->finished)
        return;
    b->finished = true;
    event_base_loopbreak(b->base);
}

static bool send_request(struct conn *c, uint64_t t0, bool measured)
{
    struct bench *b = c->b;
    uint32_t id = slot_take(c);
    if (id == UINT32_MAX) {
        note_error(b, &b->err.overload, "more than %u requests outstanding on one connection",
                   MAX_SLOTS);
        return false;
    }
    c->slots[id].t0 = t0;
    c->slots[id].measured = measured;
    size_t n = request_build(b, id);
    if (c->ws) {
        struct wslay_event_msg msg = {WSLAY_TEXT_FRAME, (const uint8_t *)b->reqbuf, n};
        if (wslay_event_queue_msg(c->ws, &msg) != 0)
            die("out of memory");
    } else {
        b->reqbuf[n++] = '\n';
        buf_add(&c->out, b->reqbuf, n);
    }
    c->outstanding++;
    b->outstanding++;
    return true;
}

static bool may_issue(struct bench *b, uint64_t t)
{
    if (!b->running || b->stopping)
        return false;
    if (b->t_stop && t >= b->t_stop)
        return false;
    if (b->o.requests && t >= b->t_measure && b->issued >= b->o.requests)
        return false;
    return true;
}

/* Closed loop: top the connection up to depth. */
static void closed_fill(struct conn *c)
{
    struct bench *b = c->b;
    uint64_t t = now_ns();
    bool sent = false;
    while (c->state == C_READY && c->outstanding < b->o.depth && may_issue(b, t)) {
        bool measured = t >= b->t_measure;
        if (!send_request(c, t, measured))
            break;
        b->issued += measured;
        sent = true;
    }
    if (sent)
        conn_flush(c);
}

static void stop_issuing(struct bench *b)
{
    if (b->stopping)
        return;
    b->stopping = true;
    sample(b->o.daemon_pid, &b->d1);
    sample(b->o.node_pid, &b->n1);
    getrusage(RUSAGE_SELF, &b->ru1);
    struct timeval tv = {(time_t)(DRAIN_NS / 1000000000ull), 0};
    evtimer_del(b->phase);
    evtimer_add(b->phase, &tv); /* the drain deadline */
    if (b->tick)
        evtimer_del(b->tick);
    bench_check_done(b);
}

static void conn_after_reply(struct conn *c)
{
    struct bench *b = c->b;
    switch (b->o.mode) {
    case MODE_CLOSED:
        closed_fill(c);
        break;
    case MODE_CHURN:
    case MODE_ONCE:
        /* One call per connection; conn_read closes it once the callback has returned. */
        c->round_done = true;
        break;
    case MODE_IDLE:
        if (++c->calls_done < b->o.idle_calls) {
            send_request(c, now_ns(), true);
            conn_flush(c);
        } else if (!c->idle_done) {
            c->idle_done = true;
        }
        break;
    default:
        break;
    }
    bench_check_done(b);
}

/* Open loop: send every request that is due by now, spread round-robin. */
static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct bench *b = arg;
    uint64_t t = now_ns();
    double interval = 1e9 / b->o.rate;
    (void)fd;
    (void)what;
    for (;;) {
        uint64_t due = b->t_start + (uint64_t)((double)b->open_due * interval);
        if (due > t || !may_issue(b, due))
            break;
        if (b->outstanding >= OPEN_MAX_OUTSTANDING) {
            note_error(b, &b->err.overload, "open loop: %u requests outstanding",
                       OPEN_MAX_OUTSTANDING);
            stop_issuing(b);
            return;
        }
        struct conn *c = NULL;
        for (unsigned tries = 0; tries < b->nconns; tries++) {
            struct conn *x = &b->conns[b->rr++ % b->nconns];
            if (x->state == C_READY) {
                c = x;
                break;
            }
        }
        if (!c) {
            note_error(b, &b->err.closed, "open loop: no connection left");
            stop_issuing(b);
            return;
        }
        b->open_due++;
        if (send_request(c, due, due >= b->t_measure))
            b->issued += due >= b->t_measure;
        conn_flush(c);
    }
    /* Sleep until exactly the next request is due (timerfd precision, see main). */
    uint64_t next = b->t_start + (uint64_t)((double)b->open_due * interval);
    uint64_t now = now_ns();
    uint64_t wait = next > now ? next - now : 0;
    struct timeval tv = {(time_t)(wait / 1000000000ull), (long)(wait % 1000000000ull / 1000)};
    if (!b->stopping)
        evtimer_add(b->tick, &tv);
}

/* Timers of the run: the warm-up ends, then the duration ends, then the drain ends. */
static void phase_cb(evutil_socket_t fd, short what, void *arg)
{
    struct bench *b = arg;
    uint64_t t = now_ns();
    (void)fd;
    (void)what;
    if (b->stopping) {
        /* The drain deadline: whatever has not come back is lost. */
        if (b->outstanding)
            note_error(b, &b->err.timeout, "%" PRIu64 " replies never came", b->outstanding);
        bench_finish(b);
        return;
    }
    if (t < b->t_measure) {
        uint64_t left = b->t_measure - t;
        struct timeval tv = {(time_t)(left / 1000000000ull), (long)(left % 1000000000ull / 1000)};
        evtimer_add(b->phase, &tv);
        return;
    }
    if (!b->sampled0) {
        b->sampled0 = true;
        sample(b->o.daemon_pid, &b->d0);
        sample(b->o.node_pid, &b->n0);
        getrusage(RUSAGE_SELF, &b->ru0);
    }
    if (b->t_stop && t < b->t_stop) {
        uint64_t left = b->t_stop - t;
        struct timeval tv = {(time_t)(left / 1000000000ull), (long)(left % 1000000000ull / 1000)};
        evtimer_add(b->phase, &tv);
        return;
    }
    if (b->t_stop)
        stop_issuing(b);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct bench *b = arg;
    (void)fd;
    (void)what;
    note_error(b, &b->err.timeout, "--timeout reached with %" PRIu64 " requests outstanding",
               b->outstanding);
    if (!b->stopping)
        stop_issuing(b);
    bench_finish(b);
}

static void hold_done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct bench *b = arg;
    (void)fd;
    (void)what;
    stop_issuing(b);
    bench_finish(b);
}

/* Every client connected (or failed): start the load. */
static void bench_begin(struct bench *b)
{
    uint64_t t = now_ns();
    b->running = true;
    b->t_start = t;
    b->t_measure = t + sec_to_ns(b->o.warmup);
    b->t_stop = b->o.duration > 0 ? b->t_measure + sec_to_ns(b->o.duration) : 0;
    if (b->o.warmup <= 0) {
        b->sampled0 = true;
        sample(b->o.daemon_pid, &b->d0);
        sample(b->o.node_pid, &b->n0);
        getrusage(RUSAGE_SELF, &b->ru0);
    }
    struct timeval zero = {0, 0};
    evtimer_add(b->phase, &zero);
    if (b->o.mode == MODE_CLOSED) {
        for (unsigned i = 0; i < b->nconns; i++)
            closed_fill(&b->conns[i]);
    } else if (b->o.mode == MODE_OPEN) {
        struct timeval zero_tv = {0, 0};
        b->tick = evtimer_new(b->base, tick_cb, b);
        evtimer_add(b->tick, &zero_tv);
    }
    bench_check_done(b);
}

/* Start more connections while under the concurrency limit. */
static void pump_connects(struct bench *b)
{
    while (b->next_connect < b->nconns && b->connecting < b->o.connect_concurrency) {
        struct conn *c = &b->conns[b->next_connect++];
        b->connecting++;
        conn_start(c);
    }
}

static void on_ready(struct conn *c)
{
    struct bench *b = c->b;
    c->state = C_READY;
    if (b->connecting)
        b->connecting--;
    switch (b->o.mode) {
    case MODE_CHURN:
    case MODE_ONCE:
        /* The whole round trip, connect included, is the latency of this call. */
        send_request(c, c->t_connect, true);
        conn_flush(c);
        break;
    case MODE_IDLE:
        b->settled++;
        if (b->o.idle_calls) {
            send_request(c, c->t_connect, true);
            conn_flush(c);
        } else {
            c->idle_done = true;
        }
        pump_connects(b);
        break;
    default:
        b->settled++;
        conn_flush(c);
        pump_connects(b);
        break;
    }
    bench_check_done(b);
}

/* Decides, after anything changed, whether a phase is over. */
static void bench_check_done(struct bench *b)
{
    if (b->finished)
        return;
    switch (b->o.mode) {
    case MODE_CLOSED:
    case MODE_OPEN:
        if (!b->running && !b->stopping) {
            pump_connects(b);
            if (b->settled >= b->nconns)
                bench_begin(b);
            return;
        }
        if (b->running && !b->stopping && b->o.requests && b->issued >= b->o.requests &&
            b->outstanding == 0)
            stop_issuing(b);
        if (b->running && !b->stopping) {
            bool any = false;
            for (unsigned i = 0; i < b->nconns && !any; i++)
                any = b->conns[i].state == C_READY;
            if (!any)
                stop_issuing(b);
        }
        if (b->stopping && b->outstanding == 0)
            bench_finish(b);
        break;
    case MODE_CHURN:
    case MODE_ONCE: {
        if (!b->running)
            return;
        for (unsigned i = 0; i < b->nconns; i++) {
            const struct conn *c = &b->conns[i];
            if ((c->state != C_OFF && c->state != C_DEAD) || c->scheduled)
                return;
        }
        /* Every worker is between rounds and none will start another. */
        if (!b->stopping)
            stop_issuing(b);
        bench_finish(b);
        break;
    }
    case MODE_IDLE: {
        if (!b->running || b->t_idle_all)
            return;
        pump_connects(b);
        if (b->next_connect < b->nconns)
            return;
        for (unsigned i = 0; i < b->nconns; i++) {
            struct conn *c = &b->conns[i];
            if (c->state != C_DEAD && !(c->state == C_READY && c->idle_done))
                return;
        }
        b->t_idle_all = now_ns();
        struct timeval tv = {(time_t)b->o.hold, (long)((b->o.hold - floor(b->o.hold)) * 1e6)};
        event_assign(b->phase, b->base, -1, 0, hold_done_cb, b);
        evtimer_add(b->phase, &tv);
        break;
    }
    default:
        break;
    }
}

/* Churn and once: K workers, each starts its first round now. */
static void churn_begin(struct bench *b)
{
    uint64_t t = now_ns();
    b->running = true;
    b->t_start = b->t_measure = t;
    b->t_stop = b->o.duration > 0 ? t + sec_to_ns(b->o.duration) : 0;
    sample(b->o.daemon_pid, &b->d0);
    sample(b->o.node_pid, &b->n0);
    getrusage(RUSAGE_SELF, &b->ru0);
    if (b->t_stop) {
        struct timeval tv = {(time_t)b->o.duration,
                             (long)((b->o.duration - floor(b->o.duration)) * 1e6)};
        evtimer_add(b->phase, &tv);
    }
    for (unsigned i = 0; i < b->nconns; i++) {
        b->conns[i].scheduled = true;
        event_active(b->conns[i].timer, EV_TIMEOUT, 1);
    }
}

static void idle_begin(struct bench *b)
{
    b->running = true;
    b->t_start = b->t_measure = now_ns();
    b->d_rss_start = b->o.daemon_pid > 0 ? proc_rss_kib(b->o.daemon_pid) : -1;
    sample(b->o.daemon_pid, &b->d0);
    sample(b->o.node_pid, &b->n0);
    getrusage(RUSAGE_SELF, &b->ru0);
    pump_connects(b);
    bench_check_done(b);
}

/* Churn: ends a round whose reply came (a clean close), then starts the next if allowed. */
static void churn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    struct bench *b = c->b;
    (void)fd;
    (void)what;
    if (c->state == C_WAIT) {
        conn_start(c);
        return;
    }
    /* Still scheduled while closing: a worker between rounds must not look finished. */
    if (c->state == C_READY && c->round_done) {
        if (c->ws) {
            /* Say goodbye as a client should: a close frame, then the socket. */
            wslay_event_queue_close(c->ws, WSLAY_CODE_NORMAL_CLOSURE, NULL, 0);
            wslay_event_send(c->ws);
        }
        conn_close(c, C_OFF);
    }
    c->scheduled = false;
    if (c->state != C_OFF || !may_issue(b, now_ns())) {
        bench_check_done(b);
        return;
    }
    /* A round claims its place against --requests when it starts, so K workers never
     * overshoot. */
    b->issued++;
    b->connecting++;
    conn_start(c);
}

/* ---------------------------------------------------------------- spawn -- */

/* N separate `once` processes, K at a time: what short-lived scripts pay. */
static int run_spawn(struct bench *b, char *self)
{
    struct opts *o = &b->o;
    uint64_t n = o->requests ? o->requests : 100;
    unsigned k = o->clients ? o->clients : 1;
    char timeout[32];
    snprintf(timeout, sizeof(timeout), "%g", o->timeout > 0 ? o->timeout : 30.0);
    char *argv[] = {self,
                    "--mode",
                    "once",
                    "--quiet",
                    "--target",
                    (char *)o->target,
                    "--method",
                    (char *)o->method,
                    "--params",
                    (char *)o->params,
                    "--timeout",
                    timeout,
                    o->cafile ? "--cafile" : NULL,
                    (char *)o->cafile,
                    NULL};
    char **child = o->spawn_argv ? o->spawn_argv : argv;
    /* SIGCHLD is blocked here and awaited with a deadline, so a child that hangs cannot
     * hold the run past --timeout. Children start with nothing blocked and SIGPIPE at its
     * default, whatever this process does with them. */
    sigset_t chld, none, old, dfl;
    sigemptyset(&chld);
    sigemptyset(&none);
    sigemptyset(&dfl);
    sigaddset(&chld, SIGCHLD);
    sigaddset(&dfl, SIGPIPE);
    sigprocmask(SIG_BLOCK, &chld, &old);
    posix_spawnattr_t attr;
    if (posix_spawnattr_init(&attr) != 0 || posix_spawnattr_setsigmask(&attr, &none) != 0 ||
        posix_spawnattr_setsigdefault(&attr, &dfl) != 0 ||
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF) != 0)
        die("posix_spawnattr: out of memory");
    /* A child's output would corrupt the report on stdout; its stderr still shows. */
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa) != 0 ||
        posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0) != 0)
        die("posix_spawn_file_actions: out of memory");
    struct {
        pid_t pid;
        bool killed;
        uint64_t t0;
    } *run = calloc(k, sizeof(*run));
    if (!run)
        die("out of memory");
    uint64_t started = 0, t_begin = now_ns();
    uint64_t hard = t_begin + sec_to_ns(o->timeout), stop_starting = hard;
    if (o->duration > 0 && t_begin + sec_to_ns(o->duration) < hard)
        stop_starting = t_begin + sec_to_ns(o->duration);
    b->t_start = b->t_measure = t_begin;
    sample(o->daemon_pid, &b->d0);
    sample(o->node_pid, &b->n0);
    getrusage(RUSAGE_CHILDREN, &b->ru0);
    unsigned running = 0;
    bool killing = false;
    for (;;) {
        uint64_t t = now_ns();
        while (!killing && running < k && started < n && t < stop_starting) {
            unsigned slot = 0;
            while (run[slot].pid)
                slot++;
            run[slot].t0 = t;
            started++;
            int r = posix_spawnp(&run[slot].pid, child[0], &fa, &attr, child, environ);
            if (r != 0) {
                note_error(b, &b->err.connect, "posix_spawn %s: %s", child[0], strerror(r));
                run[slot].pid = 0;
            } else {
                running++;
            }
            t = now_ns();
        }
        if (!running)
            break;
        if (!killing && t >= hard) {
            killing = true;
            for (unsigned i = 0; i < k; i++) {
                if (run[i].pid) {
                    kill(run[i].pid, SIGKILL);
                    run[i].killed = true;
                }
            }
        }
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid == 0) {
            /* A second at most, then the deadline is looked at again. */
            uint64_t left = killing || hard - t > sec_to_ns(1) ? sec_to_ns(1) : hard - t;
            struct timespec ts = {(time_t)(left / 1000000000u), (long)(left % 1000000000u)};
            (void)sigtimedwait(&chld, NULL, &ts);
            continue;
        }
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        t = now_ns();
        for (unsigned i = 0; i < k; i++) {
            if (run[i].pid != pid)
                continue;
            run[i].pid = 0;
            running--;
            if (run[i].killed) {
                run[i].killed = false;
                note_error(b, &b->err.timeout, "%s still running at --timeout: killed", child[0]);
                break;
            }
            b->completed++;
            b->t_last = t;
            hist_record(&b->hist, t - run[i].t0);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                note_error(b, &b->err.rpc, "%s failed (status %d)", child[0], status);
            break;
        }
    }
    b->issued = started;
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    sigprocmask(SIG_SETMASK, &old, NULL);
    sample(o->daemon_pid, &b->d1);
    sample(o->node_pid, &b->n1);
    getrusage(RUSAGE_CHILDREN, &b->ru1);
    free(run);
    return 0;
}

/* ---------------------------------------------------------------- report -- */

static double tv_s(const struct timeval *tv)
{
    return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

static void print_proc(const char *name, long pid, const struct procsample *a,
                       const struct procsample *z, uint64_t requests)
{
    if (pid <= 0)
        return;
    printf(",\"%s\":{\"pid\":%ld", name, pid);
    if (a->ok && z->ok) {
        double cpu = z->cpu_s - a->cpu_s;
        printf(",\"cpu_s\":%.3f", cpu);
        if (requests)
            printf(",\"cpu_us_per_request\":%.3f", cpu * 1e6 / (double)requests);
    }
    long rss = proc_rss_kib(pid);
    if (rss >= 0)
        printf(",\"rss_kib\":%ld", rss);
    printf("}");
}

static void report(struct bench *b)
{
    const struct opts *o = &b->o;
    char esc[1024];
    uint64_t t_end = b->t_last > b->t_measure ? b->t_last : now_ns();
    double window = (double)(t_end - b->t_measure) / 1e9;
    uint64_t errs = errors_total(&b->err);
    unsigned connected = 0;
    for (unsigned i = 0; i < b->nconns; i++)
        connected += b->conns[i].state == C_READY || b->conns[i].state == C_OFF;

    printf("{\"mode\":\"%s\"", mode_names[o->mode]);
    json_escape(esc, sizeof(esc), o->target, strlen(o->target));
    printf(",\"target\":%s", esc);
    json_escape(esc, sizeof(esc), o->method, strlen(o->method));
    printf(",\"method\":%s,\"clients\":%u,\"depth\":%u", esc, o->clients, o->depth);
    if (o->mode == MODE_OPEN)
        printf(",\"rate\":%.1f", o->rate);
    printf(",\"warmup_s\":%.3f,\"elapsed_s\":%.6f", o->warmup, window);
    printf(",\"requests\":%" PRIu64 ",\"ok\":%" PRIu64, b->completed,
           b->completed > b->err.rpc ? b->completed - b->err.rpc : 0);
    printf(",\"errors\":%" PRIu64, errs);
    printf(",\"error_kinds\":{\"connect\":%" PRIu64 ",\"handshake\":%" PRIu64 ",\"closed\":%" PRIu64
           ",\"protocol\":%" PRIu64 ",\"rpc\":%" PRIu64 ",\"timeout\":%" PRIu64
           ",\"overload\":%" PRIu64 "}",
           b->err.connect, b->err.handshake, b->err.closed, b->err.protocol, b->err.rpc,
           b->err.timeout, b->err.overload);
    if (b->first_error[0]) {
        json_escape(esc, sizeof(esc), b->first_error, strlen(b->first_error));
        printf(",\"first_error\":%s", esc);
    }
    printf(",\"throughput_rps\":%.1f", window > 0 ? (double)b->completed / window : 0.0);
    printf(",\"bytes_in\":%" PRIu64 ",\"mb_per_s\":%.2f", b->bytes_in,
           window > 0 ? (double)b->bytes_in / window / 1e6 : 0.0);
    const struct hist *h = &b->hist;
    printf(",\"latency_us\":{\"n\":%" PRIu64
           ",\"min\":%.2f,\"mean\":%.2f,\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,"
           "\"p999\":%.2f,\"max\":%.2f}",
           h->n, h->n ? (double)h->min / 1e3 : 0.0, hist_mean(h) / 1e3,
           (double)hist_percentile(h, 50) / 1e3, (double)hist_percentile(h, 90) / 1e3,
           (double)hist_percentile(h, 99) / 1e3, (double)hist_percentile(h, 99.9) / 1e3,
           (double)h->max / 1e3);
    if (o->mode != MODE_SPAWN)
        printf(",\"connected\":%u,\"connect_retries\":%" PRIu64, connected, b->connect_retries);
    if (o->mode == MODE_IDLE && b->t_idle_all)
        printf(",\"settle_s\":%.3f", (double)(b->t_idle_all - b->t_start) / 1e9);
    double bench_cpu = tv_s(&b->ru1.ru_utime) + tv_s(&b->ru1.ru_stime) - tv_s(&b->ru0.ru_utime) -
                       tv_s(&b->ru0.ru_stime);
    printf(",\"%s\":%.3f", o->mode == MODE_SPAWN ? "children_cpu_s" : "bench_cpu_s", bench_cpu);
    print_proc("daemon", o->daemon_pid, &b->d0, &b->d1, b->completed);
    if (o->mode == MODE_IDLE && o->daemon_pid > 0 && b->d_rss_start >= 0 && b->d1.rss_kib >= 0) {
        long grow = b->d1.rss_kib - b->d_rss_start;
        printf(
            ",\"idle\":{\"rss_start_kib\":%ld,\"rss_end_kib\":%ld,\"rss_per_client_bytes\":%.1f}",
            b->d_rss_start, b->d1.rss_kib,
            connected ? (double)grow * 1024.0 / (double)connected : 0.0);
    }
    print_proc("node", o->node_pid, &b->n0, &b->n1, b->completed);
    printf("}\n");
    fflush(stdout);
}

/* ---------------------------------------------------------------- main -- */

static const char usage_text[] =
    "Usage: " PROG " --target TARGET [OPTION]... [-- PROGRAM [ARG]...]\n"
    "Load a JSON-RPC endpoint and print one JSON object of results.\n"
    "\n"
    "Targets (loopback only): unix:PATH (NDJSON, subpoold), ws://HOST:PORT[/PATH],\n"
    "wss://HOST:PORT[/PATH] (WebSocket; a node, a proxy, a daemon's TCP port).\n"
    "\n"
    "  --mode MODE            closed (default), open, churn, idle, once or spawn\n"
    "  --clients K            connections (churn/spawn: concurrent workers) (default 1)\n"
    "  --depth D              closed loop: requests outstanding per client (default 1)\n"
    "  --rate R               open loop: requests per second over all clients\n"
    "  --duration S           seconds to measure (default 5 unless --requests)\n"
    "  --requests N           stop after N measured requests (churn/spawn: rounds)\n"
    "  --warmup S             seconds of load before measuring (default 0)\n"
    "  --method M             JSON-RPC method (default system_chain)\n"
    "  --params JSON          params (default []); {seq} and {u16le} expand to the\n"
    "                         request's sequence number, decimal or u16 little-endian hex\n"
    "  --daemon-pid PID       report this process's CPU per request and RSS\n"
    "  --node-pid PID         the same for the node\n"
    "  --idle-calls N         idle: calls each client makes before idling (default 1)\n"
    "  --hold S               idle: seconds to stay connected once all are idle (default 1)\n"
    "  --connect-concurrency N  connections being set up at once (default 256)\n"
    "  --timeout S            hard stop whatever happens (default: run time + 60)\n"
    "  --max-message BYTES    largest reply accepted (default 67108864)\n"
    "  --cafile FILE          wss://: verify the server against these CAs (else unverified)\n"
    "  --print                print each result to stdout (before the report)\n"
    "  --quiet                once: no report, only the exit status\n"
    "  -- PROGRAM [ARG]...    spawn: run this instead of " PROG " --mode once; exit\n"
    "                         status 0 counts as a successful call; stdout is dropped;\n"
    "                         what still runs at --timeout is killed (a timeout error)\n"
    "  --help                 show this and exit\n"
    "\n"
    "Exit status: 0 when every request succeeded, 1 when anything failed, 2 on bad usage.\n";

static double parse_num(const char *opt, const char *s, double min, double max)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= min && v <= max))
        die("%s: \"%s\" is not a number in %g..%g", opt, s, min, max);
    return v;
}

/* Placeholders make params invalid JSON until expanded: validate a sample expansion. */
static bool params_ok(const char *params)
{
    size_t n = strlen(params);
    char *tmp = malloc(n + 1);
    if (!tmp)
        die("out of memory");
    char *o = tmp;
    for (const char *p = params; *p;) {
        if (strncmp(p, "{seq}", 5) == 0) {
            *o++ = '0';
            p += 5;
        } else if (strncmp(p, "{u16le}", 7) == 0) {
            memcpy(o, "0000", 4);
            o += 4;
            p += 7;
        } else {
            *o++ = *p++;
        }
    }
    struct json_span sp;
    bool ok = json_validate(tmp, (size_t)(o - tmp), &sp) == 0 &&
              (sp.type == JSON_ARRAY || sp.type == JSON_OBJECT);
    free(tmp);
    return ok;
}

static void parse_opts(int argc, char **argv, struct opts *o)
{
    enum {
        O_TARGET = 256,
        O_MODE,
        O_CLIENTS,
        O_DEPTH,
        O_RATE,
        O_DURATION,
        O_REQUESTS,
        O_WARMUP,
        O_METHOD,
        O_PARAMS,
        O_DPID,
        O_NPID,
        O_IDLE_CALLS,
        O_HOLD,
        O_CC,
        O_TIMEOUT,
        O_MAXMSG,
        O_CAFILE,
        O_PRINT,
        O_QUIET,
        O_HELP,
    };
    static const struct option lo[] = {
        {"target", required_argument, NULL, O_TARGET},
        {"mode", required_argument, NULL, O_MODE},
        {"clients", required_argument, NULL, O_CLIENTS},
        {"depth", required_argument, NULL, O_DEPTH},
        {"rate", required_argument, NULL, O_RATE},
        {"duration", required_argument, NULL, O_DURATION},
        {"requests", required_argument, NULL, O_REQUESTS},
        {"warmup", required_argument, NULL, O_WARMUP},
        {"method", required_argument, NULL, O_METHOD},
        {"params", required_argument, NULL, O_PARAMS},
        {"daemon-pid", required_argument, NULL, O_DPID},
        {"node-pid", required_argument, NULL, O_NPID},
        {"idle-calls", required_argument, NULL, O_IDLE_CALLS},
        {"hold", required_argument, NULL, O_HOLD},
        {"connect-concurrency", required_argument, NULL, O_CC},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"max-message", required_argument, NULL, O_MAXMSG},
        {"cafile", required_argument, NULL, O_CAFILE},
        {"print", no_argument, NULL, O_PRINT},
        {"quiet", no_argument, NULL, O_QUIET},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    *o = (struct opts){
        .mode = MODE_CLOSED,
        .clients = 1,
        .depth = 1,
        .hold = 1,
        .idle_calls = 1,
        .method = "system_chain",
        .params = "[]",
        .connect_concurrency = 256,
        .max_message = 64u << 20,
    };
    bool have_duration = false;
    int ch;
    /* "+": options end at the first other word, so a program's own options stay its own. */
    while ((ch = getopt_long(argc, argv, "+", lo, NULL)) != -1) {
        switch (ch) {
        case O_TARGET:
            o->target = optarg;
            break;
        case O_MODE: {
            unsigned i;
            for (i = 0; i < sizeof(mode_names) / sizeof(mode_names[0]); i++)
                if (strcmp(optarg, mode_names[i]) == 0)
                    break;
            if (i == sizeof(mode_names) / sizeof(mode_names[0]))
                die("--mode: \"%s\" is not closed, open, churn, idle, once or spawn", optarg);
            o->mode = (enum mode)i;
            break;
        }
        case O_CLIENTS:
            o->clients = (unsigned)parse_num("--clients", optarg, 1, 1000000);
            break;
        case O_DEPTH:
            o->depth = (unsigned)parse_num("--depth", optarg, 1, 1000000);
            break;
        case O_RATE:
            o->rate = parse_num("--rate", optarg, 0.001, 1e8);
            break;
        case O_DURATION:
            o->duration = parse_num("--duration", optarg, 0.001, 86400);
            have_duration = true;
            break;
        case O_REQUESTS:
            o->requests = (uint64_t)parse_num("--requests", optarg, 1, 1e12);
            break;
        case O_WARMUP:
            o->warmup = parse_num("--warmup", optarg, 0, 3600);
            break;
        case O_METHOD:
            o->method = optarg;
            break;
        case O_PARAMS:
            if (!params_ok(optarg))
                die("--params: not a JSON array or object (after expanding {seq} and {u16le} "
                    "to sample values): %s",
                    optarg);
            o->params = optarg;
            break;
        case O_DPID:
            o->daemon_pid = (long)parse_num("--daemon-pid", optarg, 1, 1 << 30);
            break;
        case O_NPID:
            o->node_pid = (long)parse_num("--node-pid", optarg, 1, 1 << 30);
            break;
        case O_IDLE_CALLS:
            o->idle_calls = (unsigned)parse_num("--idle-calls", optarg, 0, 1000000);
            break;
        case O_HOLD:
            o->hold = parse_num("--hold", optarg, 0, 3600);
            break;
        case O_CC:
            o->connect_concurrency = (unsigned)parse_num("--connect-concurrency", optarg, 1, 65536);
            break;
        case O_TIMEOUT:
            o->timeout = parse_num("--timeout", optarg, 0.1, 86400);
            break;
        case O_MAXMSG:
            o->max_message = (size_t)parse_num("--max-message", optarg, 1024, 1ull << 34);
            break;
        case O_CAFILE:
            o->cafile = optarg;
            break;
        case O_PRINT:
            o->print = true;
            break;
        case O_QUIET:
            o->quiet = true;
            break;
        case O_HELP:
            fputs(usage_text, stdout);
            exit(0);
        default:
            fprintf(stderr, "Try '" PROG " --help'.\n");
            exit(2);
        }
    }
    if (optind < argc && (o->mode != MODE_SPAWN || strcmp(argv[optind - 1], "--") != 0))
        die("unexpected argument \"%s\" (a program to run goes after --, with --mode spawn)",
            argv[optind]);
    if (optind < argc)
        o->spawn_argv = argv + optind;
    if (!o->target)
        die("--target is required (unix:PATH or ws://HOST:PORT)");
    if (o->mode == MODE_OPEN && o->rate <= 0)
        die("--mode open needs --rate");
    if (o->mode == MODE_ONCE) {
        o->clients = 1;
        o->requests = 1;
        o->duration = 0;
        have_duration = true;
    }
    if (!have_duration && !o->requests && o->mode != MODE_IDLE)
        o->duration = 5;
    if (o->timeout <= 0)
        o->timeout = o->warmup + (o->duration > 0 ? o->duration : 60) + o->hold + 60;
}

/* Each client is a descriptor: lift the soft limit as far as the hard one allows. */
static void raise_nofile(unsigned want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= (rlim_t)want + 64)
        return;
    rlim_t need = (rlim_t)want + 64;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need ? need : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < need)
        fprintf(stderr, PROG ": warning: open file limit %llu is below %u clients\n",
                (unsigned long long)rl.rlim_cur, want);
}

static void ssl_setup(struct bench *b)
{
    b->ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (!b->ssl_ctx)
        die("TLS: cannot create a context");
    SSL_CTX_set_mode(b->ssl_ctx,
                     SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Every connection does a full handshake, as a new process would: no session reuse. */
    SSL_CTX_set_session_cache_mode(b->ssl_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(b->ssl_ctx, SSL_OP_NO_TICKET);
    if (b->o.cafile) {
        if (SSL_CTX_load_verify_locations(b->ssl_ctx, b->o.cafile, NULL) != 1)
            die("--cafile %s: cannot load", b->o.cafile);
        SSL_CTX_set_verify(b->ssl_ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(b->ssl_ctx, SSL_VERIFY_NONE, NULL);
    }
}

static void bench_free(struct bench *b)
{
    b->finished = true; /* closing now is not an error */
    for (unsigned i = 0; i < b->nconns; i++) {
        struct conn *c = &b->conns[i];
        if (c->state != C_OFF && c->state != C_DEAD)
            conn_close(c, C_DEAD);
        buf_free(&c->in);
        buf_free(&c->out);
        buf_free(&c->msg);
        free(c->slots);
        event_free(c->ev);
        event_free(c->timer);
    }
    free(b->conns);
    if (b->tick)
        event_free(b->tick);
    if (b->phase)
        event_free(b->phase);
    if (b->deadline)
        event_free(b->deadline);
    if (b->base)
        event_base_free(b->base);
    if (b->ssl_ctx)
        SSL_CTX_free(b->ssl_ctx);
    free(b->tmpl);
    free(b->reqbuf);
}

int main(int argc, char **argv)
{
    static struct bench bench;
    struct bench *b = &bench;

    parse_opts(argc, argv, &b->o);
    target_parse(b->o.target, &b->t);
    signal(SIGPIPE, SIG_IGN);
    hist_init(&b->hist);
    request_template(b);
    if (b->t.tls)
        ssl_setup(b);

    if (b->o.mode == MODE_SPAWN) {
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n <= 0)
            die("cannot find my own executable: %s", strerror(errno));
        self[n] = '\0';
        run_spawn(b, self);
        report(b);
        int rc = errors_total(&b->err) || b->completed == 0 ? 1 : 0;
        bench_free(b);
        return rc;
    }

    raise_nofile(b->o.clients);
    /* Timers to the microsecond (timerfd), not epoll_wait's rounded-up milliseconds: the open
     * loop's schedule and its latencies depend on it. */
    struct event_config *ec = event_config_new();
    if (!ec)
        die("out of memory");
    event_config_set_flag(ec, EVENT_BASE_FLAG_PRECISE_TIMER);
    b->base = event_base_new_with_config(ec);
    event_config_free(ec);
    if (!b->base)
        die("libevent: no event base");
    b->nconns = b->o.clients;
    b->conns = calloc(b->nconns, sizeof(*b->conns));
    if (!b->conns)
        die("out of memory");
    bool churn = b->o.mode == MODE_CHURN || b->o.mode == MODE_ONCE;
    for (unsigned i = 0; i < b->nconns; i++) {
        struct conn *c = &b->conns[i];
        c->b = b;
        c->idx = i;
        c->fd = -1;
        c->free_head = UINT32_MAX;
        c->ev = event_new(b->base, -1, 0, conn_cb, c);
        c->timer = evtimer_new(b->base, churn ? churn_timer_cb : conn_timer_cb, c);
        if (!c->ev || !c->timer)
            die("out of memory");
    }
    b->phase = evtimer_new(b->base, phase_cb, b);
    b->deadline = evtimer_new(b->base, deadline_cb, b);
    struct timeval dl = {(time_t)b->o.timeout, (long)((b->o.timeout - floor(b->o.timeout)) * 1e6)};
    evtimer_add(b->deadline, &dl);

    switch (b->o.mode) {
    case MODE_CHURN:
    case MODE_ONCE:
        churn_begin(b);
        break;
    case MODE_IDLE:
        idle_begin(b);
        break;
    default:
        pump_connects(b);
        bench_check_done(b);
        break;
    }
    if (!b->finished)
        event_base_dispatch(b->base);
    if (!b->stopping)
        stop_issuing(b);
    if (!b->o.quiet || b->o.mode != MODE_ONCE)
        report(b);
    uint64_t errs = errors_total(&b->err);
    int rc = errs || b->completed == 0 ? 1 : 0;
    bench_free(b);
    return rc;
}
