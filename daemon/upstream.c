/*
 * One websocket link to a chain node, kept alive for as long as the owner
 * wants it. A connection attempt resolves the name with evdns, opens TCP
 * (wrapped in TLS by an OpenSSL bufferevent for wss://, with the certificate
 * chain and the host name or IP address verified; once the handshake is
 * done, records go through memory BIOs and this file's own socket reads
 * and writes), sends the HTTP/1.1
 * upgrade and checks the 101 answer; from then on wslay
 * frames the traffic while this file assembles incoming messages itself (so
 * that one oversized reply is dropped and reported instead of killing the
 * link), pings an idle peer and notices when it stops answering. Any loss
 * tears the connection down from a deferred event (never from inside a
 * libevent or wslay callback that is still using it) and schedules the next
 * attempt after a capped, jittered exponential backoff.
 *
 * Backoff policy: every failed attempt and every lost link counts as one
 * consecutive failure; the delay before attempt n+1 is backoff_min_ms * 2^(n-1)
 * capped at backoff_max_ms, drawn uniformly from [d/2, d]. The count goes
 * back to zero once a link has proven healthy: it delivered a complete
 * message and stayed READY for SHORT_LIVED_MS, or it stayed READY for
 * STABLE_MS. A node that accepts upgrades, or answers once, and then drops
 * the link therefore keeps backing off, and its loss counts as the node
 * not answering (the pool may leave the endpoint). The
 * owner may cut a backoff short (upstream_reconnect), for instance after
 * pointing the upstream at another endpoint (upstream_set_url).
 */
#include "upstream.h"

#include "clock.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "msgbuf.h"
#include "sockio.h"
#include "url.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <wslay/wslay.h>

/* Stop handing frames to the socket above this much unsent output... */
#define OUT_HIGH ((size_t)4 << 20)
/* ...and resume when the kernel has taken it down to this. */
#define OUT_LOW ((size_t)1 << 20)
/* A receive buffer that grew past this is released after its message. */
#define RX_KEEP ((size_t)1 << 20)
/* A link READY for this long counts as healthy even if it was silent. */
#define STABLE_MS 30000u
/* A link lost sooner than this after READY says the node is not really serving. */
#define SHORT_LIVED_MS 1000u
/* Servers asking for more than this in Retry-After are not taken literally. */
#define RETRY_AFTER_MAX_MS 3600000u
/* Identical failures in a row: log the first, then every this many. */
#define FAIL_LOG_EVERY 10u

struct rx {
    struct msgbuf *mb; /* the message being assembled (NUL-terminated for convenience) */
    size_t len;
    uint64_t total;        /* bytes of the message so far, kept or not */
    bool frame_is_data;    /* the current frame belongs to a data message */
    bool frame_fin;        /* ...and ends it */
    bool oversize;         /* past max_message (or out of memory): skimming only */
    struct json_skim skim; /* valid while oversize */
};

/* Where the frame reader is in the node's byte stream. */
struct rxf {
    uint64_t left;       /* payload bytes of the current frame still to come */
    uint8_t opcode;      /* of the current frame */
    bool in_frame;       /* its head has been read */
    bool in_message;     /* a fragmented data message has begun and not ended */
    bool close_received; /* the node's close frame */
    uint16_t close_code; /* ...and its status code (1005: none given) */
    const char *error;   /* why the reader gave up on the stream */
    size_t ctrl_len;
    uint8_t ctrl[125]; /* a control frame's payload */
};

/* Frame masks come from the CSPRNG in batches: one RAND_bytes call per 256 frames. */
#define MASK_POOL 1024

struct upstream {
    struct event_base *base;
    struct evdns_base *dns;
    unsigned id;
    uint8_t masks[MASK_POOL];
    size_t masks_left; /* unused bytes at the end of masks */
    char *url_text;
    struct url url;
    char authority[URL_HOST_MAX + 16];
    char *next_url_text; /* upstream_set_url(): used from the next attempt on */
    struct url next_url;
    struct upstream_opts opts;
    struct upstream_ops ops;
    void *arg;

    enum upstream_state state;
    double state_since;
    uint64_t reconnects;
    char last_error[192];
    bool have_error;
    char lost_reason[192]; /* for ops->lost: last_error, or why a move closed the link */

    /* The current connection, if any. */
    struct bufferevent *bev;
    wslay_event_context_ptr ws;
    /*
     * Frames wslay produced in this loop pass, handed to the socket in one
     * write at its end (flush_cb): see ws_flush.
     */
    struct evbuffer *stage;
    struct event *flush;
    /*
     * What the node sent, not yet taken. A plain socket is read by rd (see
     * sockio.h); a TLS bufferevent's input is moved here as it arrives.
     */
    struct evbuffer *in;
    struct event *rd;
    /*
     * TLS after the handshake: OpenSSL works on memory BIOs and the records
     * are read by rd and written here, raw_out holding what the socket has
     * not taken yet, wr armed only while it holds something. A TLS
     * bufferevent would spend three more reads, two epoll_ctl calls and a
     * loop pass on every request.
     */
    struct evbuffer *raw_out;
    struct event *wr;
    bool tls_own;
    char key[WS_KEY_LEN + 1];
    struct rx rx;
    struct rxf rxf;
    bool flush_on_free; /* a close frame may still sit in the output: try once more */
    bool tls;           /* bev is an OpenSSL bufferevent */

    /*
     * One timer whose meaning follows the state: connect timeout
     * (CONNECTING, HANDSHAKE), keepalive (READY), reconnect delay (BACKOFF),
     * close timeout (CLOSING).
     */
    struct event *timer;
    uint64_t ready_at_ms; /* monotonic */
    uint64_t last_rx_ms;  /* monotonic time of the last frame received */
    uint64_t ping_at_ms;  /* a ping is outstanding since then; 0 if none */
    bool healthy;         /* this link delivered a message */
    bool pong_late;       /* this link was given up for want of a pong */

    /* Work done from the deferred event, outside every other callback. */
    struct event *defer;
    bool down_pending;      /* teardown of the connection requested */
    bool lost_pending;      /* ops->lost still to be called */
    bool backoff_pending;   /* schedule the reconnect after the teardown */
    bool closed_pending;    /* ops->closed still to be called */
    bool close_requested;   /* upstream_close() was called: never reconnect */
    bool failed_pending;    /* ops->failed still to be called */
    bool retry_now;         /* upstream_reconnect(): next attempt without waiting */
    bool moving;            /* CLOSING on behalf of upstream_reconnect(), not upstream_close() */
    bool lost_unresponsive; /* argument of the pending ops->lost */
    bool lost_too_big;      /* the node closed with 1009: something sent was too big for it */

    unsigned failures;       /* consecutive failed attempts or losses */
    unsigned retry_after_ms; /* the server asked to wait this long; 0 if not */
    unsigned fail_repeat;    /* times last_error repeated identically */
};

static void attempt(struct upstream *u);
static int tls_encrypt(struct upstream *u);
static void tls_take_records(struct upstream *u, SSL *ssl);

static void up_log(enum log_level level, const struct upstream *u, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void up_log(enum log_level level, const struct upstream *u, const char *fmt, ...)
{
    char text[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    log_msg(level, "upstream %u (%s): %s", u->id, u->authority, text);
}

/* Like log_at: a disabled level does not format anything. */
#define ulog(level, u, ...)                    \
    do {                                       \
        if ((level) <= log_current_level)      \
            up_log((level), (u), __VA_ARGS__); \
    } while (0)

static void set_state(struct upstream *u, enum upstream_state s)
{
    if (u->state == s)
        return;
    ulog(LOG_LEVEL_DEBUG, u, "%s -> %s", upstream_state_name(u->state), upstream_state_name(s));
    u->state = s;
    u->state_since = clock_wall();
}

static void arm_timer(struct upstream *u, uint64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(u->timer, &tv);
}

/* Copy peer-supplied text for logs, replacing anything unprintable. */
static void copy_printable(char *out, size_t cap, const char *p, size_t len)
{
    size_t n = 0;

    for (size_t i = 0; i < len && n + 1 < cap; i++) {
        unsigned char c = (unsigned char)p[i];
        out[n++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[n] = '\0';
}

static void rx_reset(struct upstream *u, bool release)
{
    struct rx *rx = &u->rx;

    rx->len = 0;
    rx->total = 0;
    rx->frame_is_data = false;
    rx->frame_fin = false;
    rx->oversize = false;
    /*
     * One huge reply must not pin its buffer for the life of the link, and
     * a buffer that clients still send from is theirs to free.
     */
    if (release || (rx->mb && rx->mb->cap > RX_KEEP) || msgbuf_shared(rx->mb)) {
        msgbuf_unref(rx->mb);
        rx->mb = NULL;
    }
}

/* Frees the socket and the wslay context. Never call it from their callbacks. */
static void conn_free(struct upstream *u)
{
    if (u->flush_on_free && u->tls_own) {
        /* Whatever wslay holds, then close_notify, in one last non-blocking write. */
        SSL *ssl = bufferevent_openssl_get_ssl(u->bev);
        if (u->ws)
            (void)wslay_event_send(u->ws);
        if (tls_encrypt(u) == 0 && SSL_shutdown(ssl) >= 0)
            tls_take_records(u, ssl);
        (void)evbuffer_write(u->raw_out, event_get_fd(u->rd));
        ERR_clear_error();
    } else if (u->flush_on_free && u->tls && u->bev) {
        /*
         * Raw bytes cannot bypass TLS. When everything written has left,
         * one non-blocking close_notify spares the peer an "unexpected
         * eof"; whatever is still queued is dropped with the connection.
         */
        SSL *ssl = bufferevent_openssl_get_ssl(u->bev);
        if (ssl && evbuffer_get_length(bufferevent_get_output(u->bev)) == 0 &&
            evbuffer_get_length(u->stage) == 0 && SSL_is_init_finished(ssl))
            (void)SSL_shutdown(ssl);
        ERR_clear_error();
    } else if (u->flush_on_free && u->ws && u->bev) {
        /*
         * A close frame (ours, or the answer to the peer's) may still be
         * queued; one non-blocking write gives the peer a clean close
         * without keeping the socket around for it.
         */
        struct evbuffer *out = bufferevent_get_output(u->bev);
        evutil_socket_t fd = bufferevent_getfd(u->bev);
        (void)wslay_event_send(u->ws);
        evbuffer_add_buffer(out, u->stage);
        if (fd >= 0 && evbuffer_get_length(out) > 0) {
            /* A socket bufferevent keeps its output frozen to all other drains. */
            evbuffer_unfreeze(out, 1);
            (void)evbuffer_write(out, fd);
            evbuffer_freeze(out, 1);
        }
    }
    if (u->ws) {
        wslay_event_context_free(u->ws);
        u->ws = NULL;
    }
    evutil_socket_t own_fd = -1;
    if (u->tls_own) {
        /*
         * With memory BIOs libevent cannot find the socket to close: it
         * would ask the BIO for one. Detach them; the socket is closed here.
         */
        own_fd = event_get_fd(u->rd);
        SSL_set_bio(bufferevent_openssl_get_ssl(u->bev), NULL, NULL);
        u->tls_own = false;
    }
    if (u->wr) {
        event_free(u->wr);
        u->wr = NULL;
    }
    if (u->rd) { /* before the bufferevent closes the socket */
        event_free(u->rd);
        u->rd = NULL;
    }
    if (u->bev) {
        bufferevent_free(u->bev);
        u->bev = NULL;
    }
    if (own_fd >= 0)
        evutil_closesocket(own_fd);
    if (u->stage)
        evbuffer_drain(u->stage, evbuffer_get_length(u->stage));
    if (u->in)
        evbuffer_drain(u->in, evbuffer_get_length(u->in));
    if (u->raw_out)
        evbuffer_drain(u->raw_out, evbuffer_get_length(u->raw_out));
    u->tls = false;
    u->flush_on_free = false;
    u->ping_at_ms = 0;
    rx_reset(u, true);
    memset(&u->rxf, 0, sizeof(u->rxf));
}

/* Stops all I/O on the connection at once; the rest happens in defer_cb. */
static void quiesce(struct upstream *u)
{
    evtimer_del(u->timer);
    if (u->bev)
        bufferevent_disable(u->bev, EV_READ | EV_WRITE);
    if (u->rd)
        event_del(u->rd);
    if (u->wr)
        event_del(u->wr);
    u->down_pending = true;
    event_active(u->defer, 0, 0);
}

/*
 * The connection is over. Safe from any callback: it only records what to
 * do and leaves the freeing, ops->lost and the reconnect to defer_cb. The
 * first reason wins; later reports of the same loss are ignored.
 */
static void link_down(struct upstream *u, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void link_down(struct upstream *u, const char *fmt, ...)
{
    char reason[sizeof(u->last_error)];
    va_list ap;

    if (u->down_pending || u->state == UPSTREAM_STATE_CLOSED ||
        u->state == UPSTREAM_STATE_BACKOFF || u->state == UPSTREAM_STATE_IDLE)
        return;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);

    if (u->state == UPSTREAM_STATE_CLOSING && u->moving) {
        /* upstream_reconnect() on a READY link: the owner still hears of the loss. */
        ulog(LOG_LEVEL_INFO, u, "closed to reconnect (%s)", reason);
        snprintf(u->lost_reason, sizeof(u->lost_reason), "closed to reconnect (%.160s)", reason);
        u->moving = false;
        u->flush_on_free = true;
        quiesce(u);
        u->lost_pending = true;
        u->lost_unresponsive = false;
        set_state(u, UPSTREAM_STATE_BACKOFF);
        u->retry_now = true;
        u->backoff_pending = true;
        return;
    }
    if (u->state == UPSTREAM_STATE_CLOSING) {
        /* The end we asked for: not a failure, no reconnect. */
        ulog(LOG_LEVEL_INFO, u, "closed (%s)", reason);
        u->flush_on_free = true;
        quiesce(u);
        set_state(u, UPSTREAM_STATE_CLOSED);
        u->closed_pending = true;
        return;
    }

    bool was_ready = u->state == UPSTREAM_STATE_READY;
    bool repeat = u->have_error && !was_ready && strcmp(u->last_error, reason) == 0;
    memcpy(u->last_error, reason, sizeof(reason));
    u->have_error = true;
    uint64_t lived = was_ready ? clock_mono_ms() - u->ready_at_ms : 0;
    if (was_ready) {
        /*
         * A link that carried a message counts as proof only if it also lived
         * a moment: a node (or rate limiter) that answers once and hangs up
         * must keep backing off, not be hit at reconnect_min forever.
         */
        if (lived >= STABLE_MS || (u->healthy && lived >= SHORT_LIVED_MS))
            u->failures = 0;
        u->reconnects++;
        u->fail_repeat = 0;
        u->lost_pending = true;
        memcpy(u->lost_reason, reason, sizeof(reason));
        /* A pong timeout, or a link that never carried a message: the node may be the problem. */
        u->lost_unresponsive = !u->healthy || u->pong_late || lived < SHORT_LIVED_MS;
        ulog(LOG_LEVEL_INFO, u, "lost: %s", reason);
    } else {
        u->failed_pending = true;
        u->fail_repeat = repeat ? u->fail_repeat + 1 : 0;
        if (u->fail_repeat == 0)
            ulog(LOG_LEVEL_WARN, u, "attempt failed: %s", reason);
        else if (u->fail_repeat % FAIL_LOG_EVERY == 0)
            ulog(LOG_LEVEL_WARN, u, "attempt failed: %s (%u times in a row)", reason,
                 u->fail_repeat + 1);
        else
            ulog(LOG_LEVEL_DEBUG, u, "attempt failed: %s", reason);
    }
    if (u->failures < 64)
        u->failures++;
    /* A peer that answered the close handshake deserves to see ours go out. */
    u->flush_on_free = was_ready && u->ws && u->rxf.close_received;
    quiesce(u);
    set_state(u, UPSTREAM_STATE_BACKOFF);
    u->backoff_pending = true;
}

static uint32_t random_u32(void)
{
    uint32_t r = 0;

    /* Without randomness the delay just sits at the bottom of its range. */
    if (RAND_bytes((unsigned char *)&r, (int)sizeof(r)) != 1)
        r = 0;
    return r;
}

static void schedule_reconnect(struct upstream *u)
{
    uint64_t d = u->opts.backoff_min_ms;
    for (unsigned i = 1; i < u->failures && d < u->opts.backoff_max_ms; i++)
        d *= 2;
    if (d > u->opts.backoff_max_ms)
        d = u->opts.backoff_max_ms;
    /* Jitter in [d/2, d] keeps a fleet of daemons from reconnecting in lockstep. */
    uint64_t lo = d / 2;
    uint64_t delay = lo + random_u32() % (d - lo + 1);
    if (u->retry_after_ms > delay)
        delay = u->retry_after_ms;
    u->retry_after_ms = 0;

    /* Repeated identical failures are logged sparsely; so is their retry. */
    if (u->fail_repeat % FAIL_LOG_EVERY == 0)
        ulog(LOG_LEVEL_INFO, u, "reconnecting in %llu ms", (unsigned long long)delay);
    else
        ulog(LOG_LEVEL_DEBUG, u, "reconnecting in %llu ms", (unsigned long long)delay);
    arm_timer(u, delay);
}

static void defer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream *u = arg;
    (void)fd;
    (void)what;

    if (u->down_pending) {
        u->down_pending = false;
        conn_free(u);
    }
    if (u->lost_pending) {
        u->lost_pending = false;
        /* The owner may call upstream_close() from here; checked below. */
        if (!u->close_requested && u->ops.lost)
            u->ops.lost(u, u->lost_reason, u->lost_unresponsive, u->arg);
        u->lost_too_big = false;
    }
    if (u->failed_pending) {
        u->failed_pending = false;
        /* ...or upstream_set_url() and upstream_reconnect(). */
        if (!u->close_requested && u->ops.failed)
            u->ops.failed(u, u->last_error, u->retry_after_ms, u->arg);
    }
    if (u->close_requested) {
        u->backoff_pending = false;
        if (u->closed_pending) {
            u->closed_pending = false;
            /* Last touch: the owner may free the upstream once this returns. */
            if (u->ops.closed)
                u->ops.closed(u, u->arg);
        }
        return;
    }
    if (u->state != UPSTREAM_STATE_BACKOFF && u->state != UPSTREAM_STATE_IDLE)
        return;
    if (u->retry_now) {
        u->retry_now = false;
        u->backoff_pending = false;
        evtimer_del(u->timer);
        attempt(u);
    } else if (u->backoff_pending) {
        u->backoff_pending = false;
        schedule_reconnect(u);
    }
}

/* ---- websocket (wslay) ---- */

/* Bytes written by wslay and not yet taken by the kernel. */
static size_t out_queued(struct upstream *u)
{
    return evbuffer_get_length(u->stage) + evbuffer_get_length(u->raw_out) +
           evbuffer_get_length(bufferevent_get_output(u->bev));
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                          void *user_data)
{
    struct upstream *u = user_data;
    (void)flags;

    /* Bound the output buffer; the write callback resumes below OUT_LOW. */
    if (out_queued(u) >= OUT_HIGH) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (evbuffer_add(u->stage, data, len) != 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

/* len bytes of frame mask from the CSPRNG. Returns 0, or -1 when it fails. */
static int mask_take(struct upstream *u, uint8_t *buf, size_t len)
{
    if (len > MASK_POOL) /* masks are 4 bytes; anything else goes straight through */
        return RAND_bytes(buf, (int)len) == 1 ? 0 : -1;
    if (u->masks_left < len) {
        /* Each call costs a getpid() and a lock in OpenSSL: refill many masks at once. */
        if (RAND_bytes(u->masks, MASK_POOL) != 1)
            return -1;
        u->masks_left = MASK_POOL;
    }
    memcpy(buf, u->masks + MASK_POOL - u->masks_left, len);
    /* Used bytes are wiped so a mask never lingers in memory after use. */
    memset(u->masks + MASK_POOL - u->masks_left, 0, len);
    u->masks_left -= len;
    return 0;
}

static int ws_genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user_data)
{
    if (mask_take(user_data, buf, len) == 0)
        return 0;
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
}

static void rx_go_oversize(struct upstream *u)
{
    struct rx *rx = &u->rx;

    rx->oversize = true;
    json_skim_init(&rx->skim);
    /* The id may well sit in what was already stored. */
    if (rx->len > 0)
        json_skim_feed(&rx->skim, rx->mb->data, rx->len);
    rx->len = 0;
}

/*
 * Room for need bytes and the NUL. Growing by doubling (for data whose
 * length is not known) never overshoots the largest message kept.
 */
static int rx_reserve(struct upstream *u, size_t need, bool doubling)
{
    struct rx *rx = &u->rx;
    size_t cap = need + 1;

    if (rx->mb && rx->mb->cap >= cap)
        return 0;
    if (doubling) {
        cap = rx->mb ? rx->mb->cap : 4096;
        while (cap < need + 1)
            cap *= 2;
        if (cap - 1 > u->opts.max_message)
            cap = (size_t)u->opts.max_message + 1;
    }
    struct msgbuf *mb = msgbuf_reserve(rx->mb, cap);
    if (!mb)
        return -1;
    rx->mb = mb;
    return 0;
}

/* A data frame begins (its order was checked by the reader). */
static void data_frame_start(struct upstream *u, uint8_t opcode, bool fin, uint64_t payload_length)
{
    struct rx *rx = &u->rx;

    if (opcode != WSLAY_CONTINUATION_FRAME) {
        rx->len = 0;
        rx->total = 0;
        rx->oversize = false;
    }
    rx->frame_is_data = true;
    rx->frame_fin = fin;
    /*
     * The head says how much is coming: one allocation, not a doubling
     * series. Only for a message's first frame: sizing exactly for every
     * continuation would realloc (and maybe copy) once per fragment.
     */
    if (opcode != WSLAY_CONTINUATION_FRAME && !rx->oversize &&
        payload_length <= u->opts.max_message - rx->len)
        (void)rx_reserve(u, rx->len + payload_length, false);
}

static void data_frame_chunk(struct upstream *u, const char *p, size_t n)
{
    struct rx *rx = &u->rx;

    if (!rx->frame_is_data || n == 0)
        return;
    rx->total += n;
    if (!rx->oversize && rx->total > u->opts.max_message)
        rx_go_oversize(u);
    if (rx->oversize) {
        json_skim_feed(&rx->skim, p, n);
        return;
    }
    if (rx_reserve(u, rx->len + n, true) != 0) {
        /* Dropping this message beats dropping the link. */
        ulog(LOG_LEVEL_WARN, u, "out of memory for a %zu byte message; dropping it", rx->len + n);
        rx_go_oversize(u);
        json_skim_feed(&rx->skim, p, n);
        return;
    }
    memcpy(rx->mb->data + rx->len, p, n);
    rx->len += n;
}

/*
 * JSON lets a node put raw newlines between tokens, and nowhere else (inside
 * strings they must be escaped). A local NDJSON client ends its line at the
 * first one, so every message is made one line here; where the bytes are
 * not valid JSON the router drops the message anyway.
 */
static void newlines_to_spaces(char *p, size_t n)
{
    char *end = p + n;

    while ((p = memchr(p, '\n', (size_t)(end - p))))
        *p++ = ' ';
}

static void data_frame_end(struct upstream *u)
{
    struct rx *rx = &u->rx;

    if (!rx->frame_is_data || !rx->frame_fin)
        return;
    rx->frame_is_data = false;
    /* After upstream_close() (or a loss) nobody is waiting for replies. */
    if (u->state != UPSTREAM_STATE_READY || u->down_pending) {
        ulog(LOG_LEVEL_DEBUG, u, "dropping a %llu byte message received while %s",
             (unsigned long long)rx->total, upstream_state_name(u->state));
    } else if (rx->oversize) {
        uint64_t msg_id = 0;
        bool have_id = json_skim_id(&rx->skim, &msg_id) == 0;
        ulog(LOG_LEVEL_DEBUG, u, "dropped oversize message of %llu bytes (id %s%llu)",
             (unsigned long long)rx->total, have_id ? "" : "unknown ", (unsigned long long)msg_id);
        u->healthy = true;
        if (u->ops.oversize)
            u->ops.oversize(u, have_id, msg_id, rx->total, u->arg);
    } else {
        u->healthy = true;
        if (rx->mb) {
            rx->mb->data[rx->len] = '\0';
            newlines_to_spaces(rx->mb->data, rx->len);
        }
        /* Clients may send large parts of it straight from this buffer. */
        msgbuf_lend(rx->mb, rx->len);
        if (u->ops.message)
            u->ops.message(u, rx->mb ? rx->mb->data : "", rx->len, u->arg);
        msgbuf_lend_end();
    }
    rx_reset(u, false);
}

/* Called after every read and send: has the websocket ended? */
static void ws_check_end(struct upstream *u)
{
    if (u->down_pending || !u->ws)
        return;
    if (wslay_event_want_read(u->ws) || wslay_event_want_write(u->ws))
        return;
    if (u->rxf.error)
        link_down(u, "websocket protocol error: %s (sent close %u)", u->rxf.error,
                  (unsigned)wslay_event_get_status_code_sent(u->ws));
    else if (u->state == UPSTREAM_STATE_CLOSING)
        link_down(u, "peer answered the close");
    else if (u->rxf.close_received) {
        u->lost_too_big = u->rxf.close_code == 1009;
        link_down(u, "peer closed the websocket (code %u)", (unsigned)u->rxf.close_code);
    } else
        link_down(u, "websocket ended");
}

/*
 * Queued frames go out at the end of the loop pass (flush_cb), never from
 * here: every request routed in one pass then leaves in one write, and a
 * send made from inside wslay_event_recv does not nest.
 */
static void ws_flush(struct upstream *u)
{
    if (u->ws && !u->down_pending)
        event_active(u->flush, 0, 0);
}

/* ---- TLS records on memory BIOs (after the handshake) ---- */

/* OpenSSL's failure as a reason for link_down. */
static void tls_failed(struct upstream *u, const char *what)
{
    unsigned long e = ERR_get_error();
    const char *why = e ? ERR_reason_error_string(e) : NULL;

    ERR_clear_error();
    if (why)
        link_down(u, "TLS: %s: %s", what, why);
    else
        link_down(u, "TLS: %s failed (error %#lx)", what, e);
}

/* Records OpenSSL produced, moved from its write BIO to raw_out. */
static void tls_take_records(struct upstream *u, SSL *ssl)
{
    BIO *wb = SSL_get_wbio(ssl);
    char *p;
    long n = BIO_get_mem_data(wb, &p);

    if (n > 0) {
        evbuffer_add(u->raw_out, p, (size_t)n);
        (void)BIO_reset(wb);
    }
}

/* The staged plaintext, encrypted into raw_out. Returns 0, or -1 (see tls_failed). */
static int tls_encrypt(struct upstream *u)
{
    SSL *ssl = bufferevent_openssl_get_ssl(u->bev);
    struct evbuffer_iovec v;

    ERR_clear_error(); /* SSL_get_error and tls_failed read the queue */
    while (evbuffer_peek(u->stage, -1, NULL, &v, 1) > 0) {
        int n = SSL_write(ssl, v.iov_base, v.iov_len > INT_MAX ? INT_MAX : (int)v.iov_len);
        if (n <= 0)
            return -1;
        evbuffer_drain(u->stage, (size_t)n);
    }
    tls_take_records(u, ssl);
    return 0;
}

/* One write of raw_out. Returns 0, or -1 after link_down. */
static int raw_send(struct upstream *u, evutil_socket_t fd)
{
    if (evbuffer_write(u->raw_out, fd) < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
        errno != EINTR) {
        link_down(u, "socket: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* raw_out to the socket now if it was idle; wr takes the rest. */
static void raw_write(struct upstream *u)
{
    if (evbuffer_get_length(u->raw_out) == 0 || event_pending(u->wr, EV_WRITE, NULL))
        return;
    if (raw_send(u, event_get_fd(u->rd)) == 0 && evbuffer_get_length(u->raw_out) > 0)
        event_add(u->wr, NULL);
}

static void up_writable(evutil_socket_t fd, short what, void *arg)
{
    struct upstream *u = arg;
    (void)what;

    if (u->down_pending || raw_send(u, fd) != 0 || evbuffer_get_length(u->raw_out) > 0)
        return;
    event_del(u->wr);
    /* Frames held back by OUT_HIGH may go now. */
    if (out_queued(u) < OUT_LOW)
        ws_flush(u);
}

/*
 * Records that arrived, decrypted into u->in. Returns the plaintext bytes
 * gained, 0 when the peer closed (TCP or close_notify), -1 after link_down
 * or with errno set by read().
 */
static ssize_t tls_read(struct upstream *u, evutil_socket_t fd, bool *closed)
{
    static char buf[SOCK_READ_MAX];
    SSL *ssl = bufferevent_openssl_get_ssl(u->bev);
    ssize_t n = read(fd, buf, sizeof(buf)), got = 0;

    *closed = n == 0;
    if (n < 0)
        return -1;
    if (n > 0 && BIO_write(SSL_get_rbio(ssl), buf, (int)n) != (int)n) {
        link_down(u, "TLS: out of memory");
        errno = ENOMEM;
        return -1;
    }
    ERR_clear_error();
    for (;;) {
        int r = SSL_read(ssl, buf, (int)sizeof(buf));
        if (r > 0) {
            evbuffer_add(u->in, buf, (size_t)r);
            got += r;
            continue;
        }
        int e = SSL_get_error(ssl, r);
        if (e == SSL_ERROR_ZERO_RETURN) {
            *closed = true;
        } else if (e != SSL_ERROR_WANT_READ) {
            tls_failed(u, "read");
            errno = EPROTO;
            return -1;
        }
        break;
    }
    /* Alerts and key updates the peer asked for. */
    tls_take_records(u, ssl);
    raw_write(u);
    return got;
}

/*
 * On a plain socket with nothing queued, the frames are written here and
 * now. Handing them to the bufferevent instead would cost two epoll_ctl
 * calls and one more loop pass per request. What the socket does not take
 * (and a write error, which the bufferevent then reports) goes through it.
 */
static void stage_out(struct upstream *u)
{
    struct evbuffer *out = bufferevent_get_output(u->bev);

    if (evbuffer_get_length(u->stage) == 0)
        return;
    if (u->tls_own) {
        if (tls_encrypt(u) == 0)
            raw_write(u);
        else
            tls_failed(u, "write");
        return;
    }
    if (!u->tls && evbuffer_get_length(out) == 0)
        (void)evbuffer_write(u->stage, bufferevent_getfd(u->bev));
    evbuffer_add_buffer(out, u->stage);
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream *u = arg;
    (void)fd;
    (void)what;

    if (!u->ws || u->down_pending)
        return;
    if (out_queued(u) < OUT_HIGH) {
        int r = wslay_event_send(u->ws);
        if (r != 0) {
            link_down(u, "websocket send failed (wslay error %d)", r);
            return;
        }
    }
    /* Always: the output's low-water callback, not the stage, brings the next flush. */
    stage_out(u);
    ws_check_end(u);
}

/* ---- reading frames ---- */

/*
 * Frames from the node are read here rather than by wslay_event_recv, which
 * checks a text frame's UTF-8 one byte at a time: on large replies that was
 * most of the daemon's CPU. Nothing is lost by it: every message is
 * validated as JSON, its UTF-8 included, before any of it reaches a client,
 * and the rest is dropped. wslay still writes our frames and the close.
 */

/* The node broke the protocol: read no more, and answer with a close. */
static void ws_reject(struct upstream *u, uint16_t code, const char *why)
{
    u->rxf.error = why;
    wslay_event_shutdown_read(u->ws);
    (void)wslay_event_queue_close(u->ws, code, NULL, 0);
}

static bool close_code_valid(unsigned code)
{
    return (code >= 1000 && code <= 1011 && code != 1004 && code != 1005 && code != 1006) ||
           (code >= 3000 && code <= 4999);
}

static void control_frame_end(struct upstream *u)
{
    struct rxf *f = &u->rxf;

    if (f->opcode == WSLAY_PING) {
        struct wslay_event_msg pong = {
            .opcode = WSLAY_PONG, .msg = f->ctrl, .msg_length = f->ctrl_len};
        /* Refused only once a close is on its way: no pong is owed then. */
        (void)wslay_event_queue_msg(u->ws, &pong);
    } else if (f->opcode == WSLAY_CONNECTION_CLOSE) {
        unsigned code = f->ctrl_len >= 2 ? (unsigned)f->ctrl[0] << 8 | f->ctrl[1] : 1005;
        if (f->ctrl_len == 1 || (f->ctrl_len >= 2 && !close_code_valid(code))) {
            ws_reject(u, WSLAY_CODE_PROTOCOL_ERROR, "invalid close frame");
            return;
        }
        f->close_received = true;
        f->close_code = (uint16_t)code;
        wslay_event_shutdown_read(u->ws);
        /* Echo its code; after our own close (closing) this is refused, as it should be. */
        (void)wslay_event_queue_close(u->ws, code == 1005 ? 0 : (uint16_t)code, NULL, 0);
    }
    /* A pong needs nothing more: any frame counts as a sign of life. */
}

/* A frame head of up to WS_HEAD_MAX bytes at h. Returns its length, 0 if incomplete, -1 if bad. */
static int frame_head(struct upstream *u, const uint8_t *h, size_t n)
{
    struct rxf *f = &u->rxf;
    struct ws_frame fr;
    int used = ws_frame_parse(h, n, &fr);
    const char *bad = NULL;

    if (used == 0)
        return 0;
    if (used < 0)
        bad = "length not in its shortest form";
    else if (fr.rsv)
        bad = "reserved bits set";
    else if (fr.masked)
        bad = "a masked frame from the server";
    else if (wslay_is_ctrl_frame(fr.opcode)) {
        if (fr.opcode != WSLAY_CONNECTION_CLOSE && fr.opcode != WSLAY_PING &&
            fr.opcode != WSLAY_PONG)
            bad = "reserved opcode";
        else if (!fr.fin || fr.len > sizeof(f->ctrl))
            bad = "fragmented or long control frame";
    } else if (fr.opcode > WSLAY_BINARY_FRAME) {
        bad = "reserved opcode";
    } else if ((fr.opcode == WSLAY_CONTINUATION_FRAME) != f->in_message) {
        bad = "fragments out of order";
    }
    if (bad) {
        ws_reject(u, WSLAY_CODE_PROTOCOL_ERROR, bad);
        return -1;
    }
    if (wslay_is_ctrl_frame(fr.opcode)) {
        f->ctrl_len = 0;
    } else {
        f->in_message = !fr.fin;
        data_frame_start(u, (uint8_t)fr.opcode, fr.fin, fr.len);
    }
    f->opcode = (uint8_t)fr.opcode;
    f->left = fr.len;
    f->in_frame = true;
    return used;
}

static void frame_payload(struct upstream *u, const char *p, size_t n)
{
    struct rxf *f = &u->rxf;

    if (wslay_is_ctrl_frame(f->opcode)) {
        memcpy(f->ctrl + f->ctrl_len, p, n);
        f->ctrl_len += n;
    } else {
        data_frame_chunk(u, p, n);
    }
}

static void frame_end(struct upstream *u)
{
    struct rxf *f = &u->rxf;

    f->in_frame = false;
    if (wslay_is_ctrl_frame(f->opcode))
        control_frame_end(u);
    else
        data_frame_end(u);
}

/* Reads every whole frame, and the payload so far of a partial one, out of u->in. */
static void ws_read(struct upstream *u)
{
    struct rxf *f = &u->rxf;

    while (!u->down_pending && wslay_event_want_read(u->ws)) {
        size_t have = evbuffer_get_length(u->in);
        if (!f->in_frame) {
            uint8_t h[WS_HEAD_MAX];
            ev_ssize_t n = evbuffer_copyout(u->in, h, have < sizeof(h) ? have : sizeof(h));
            int used = frame_head(u, h, n > 0 ? (size_t)n : 0);
            if (used <= 0)
                return;
            evbuffer_drain(u->in, (size_t)used);
            /* Any frame, control or data, shows the peer is alive. */
            u->last_rx_ms = clock_mono_ms();
        }
        if (f->left > 0) {
            have = evbuffer_get_length(u->in);
            if (have == 0)
                return;
            size_t take = f->left < have ? (size_t)f->left : have;
            struct evbuffer_iovec v[8];
            int nv = evbuffer_peek(u->in, (ev_ssize_t)take, NULL, v, 8);
            size_t done = 0;
            for (int i = 0; i < nv && i < 8; i++) {
                size_t k = v[i].iov_len < take - done ? v[i].iov_len : take - done;
                frame_payload(u, v[i].iov_base, k);
                done += k;
            }
            evbuffer_drain(u->in, done);
            f->left -= done;
            /* A long frame still arriving is a live peer: its pong cannot overtake it. */
            u->last_rx_ms = clock_mono_ms();
            if (f->left > 0)
                continue;
        }
        frame_end(u);
    }
}

static void ws_pump(struct upstream *u)
{
    if (!u->ws || u->down_pending)
        return;
    ws_read(u);
    if (u->down_pending)
        return;
    /* Pongs, the answer to a close and sends made from owner callbacks. */
    ws_flush(u);
}

static int ws_create(struct upstream *u)
{
    static const struct wslay_event_callbacks cbs = {
        .send_callback = ws_send_cb,
        .genmask_callback = ws_genmask_cb,
    };

    if (wslay_event_context_client_init(&u->ws, &cbs, u) != 0) {
        u->ws = NULL;
        return -ENOMEM;
    }
    /* Frames are read by ws_read; wslay only writes. */
    return 0;
}

/* ---- keepalive ---- */

static void keepalive_arm(struct upstream *u)
{
    if (u->opts.ping_interval_ms > 0)
        arm_timer(u, u->opts.ping_interval_ms);
}

static void keepalive_tick(struct upstream *u)
{
    uint64_t now = clock_mono_ms();

    if (u->ping_at_ms) {
        if (u->last_rx_ms < u->ping_at_ms) {
            u->pong_late = true;
            link_down(u, "pong timeout (nothing received for %llu ms after a ping)",
                      (unsigned long long)(now - u->ping_at_ms));
            return;
        }
        u->ping_at_ms = 0;
    }
    uint64_t idle = now - u->last_rx_ms;
    if (idle < u->opts.ping_interval_ms) {
        arm_timer(u, u->opts.ping_interval_ms - idle);
        return;
    }
    struct wslay_event_msg ping = {.opcode = WSLAY_PING, .msg = NULL, .msg_length = 0};
    if (wslay_event_queue_msg(u->ws, &ping) != 0) {
        link_down(u, "cannot queue a ping");
        return;
    }
    ulog(LOG_LEVEL_DEBUG, u, "idle for %llu ms, ping", (unsigned long long)idle);
    u->ping_at_ms = now;
    arm_timer(u, u->opts.pong_timeout_ms);
    ws_flush(u);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream *u = arg;
    (void)fd;
    (void)what;

    switch (u->state) {
    case UPSTREAM_STATE_CONNECTING:
        link_down(u, "connect: timed out after %u ms", u->opts.connect_timeout_ms);
        break;
    case UPSTREAM_STATE_HANDSHAKE:
        link_down(u, "handshake: timed out after %u ms", u->opts.connect_timeout_ms);
        break;
    case UPSTREAM_STATE_READY:
        keepalive_tick(u);
        break;
    case UPSTREAM_STATE_BACKOFF:
        attempt(u);
        break;
    case UPSTREAM_STATE_CLOSING:
        link_down(u, "peer did not answer the close within %u ms", u->opts.close_timeout_ms);
        break;
    case UPSTREAM_STATE_IDLE:
    case UPSTREAM_STATE_CLOSED:
        break;
    }
}

/* ---- HTTP upgrade ---- */

static void send_upgrade(struct upstream *u)
{
    if (ws_make_key(u->key) != 0) {
        link_down(u, "handshake: no randomness for the key");
        return;
    }
    if (evbuffer_add_printf(u->stage,
                            "GET %s HTTP/1.1\r\n"
                            "Host: %s\r\n"
                            "Upgrade: websocket\r\n"
                            "Connection: Upgrade\r\n"
                            "Sec-WebSocket-Key: %s\r\n"
                            "Sec-WebSocket-Version: 13\r\n"
                            "User-Agent: subpool/" SUBPOOL_VERSION "\r\n"
                            "\r\n",
                            u->url.path, u->authority, u->key) < 0) {
        link_down(u, "handshake: out of memory");
        return;
    }
    set_state(u, UPSTREAM_STATE_HANDSHAKE);
    stage_out(u);
}

/* Retry-After in its delta-seconds form; the HTTP-date form is ignored. */
static void note_retry_after(struct upstream *u, const struct http_head *head)
{
    const struct http_str *v = http_header(head, "Retry-After");
    uint64_t secs = 0;

    if (!v || v->len == 0)
        return;
    for (size_t i = 0; i < v->len; i++) {
        if (v->p[i] < '0' || v->p[i] > '9')
            return;
        if (secs < RETRY_AFTER_MAX_MS / 1000 + 1)
            secs = secs * 10 + (uint64_t)(v->p[i] - '0');
    }
    uint64_t ms = secs * 1000;
    u->retry_after_ms = ms > RETRY_AFTER_MAX_MS ? RETRY_AFTER_MAX_MS : (unsigned)ms;
}

/* Returns 0 when the 101 answer is acceptable; otherwise reports the failure. */
static int check_upgrade(struct upstream *u, const struct http_head *head)
{
    char text[96];

    if (head->status != 101) {
        copy_printable(text, sizeof(text), head->reason.p, head->reason.len);
        if (head->status == 429 || head->status == 503)
            note_retry_after(u, head);
        link_down(u, "handshake: HTTP %d %s", head->status, text);
        return -1;
    }
    const struct http_str *upgrade = http_header(head, "Upgrade");
    if (!upgrade || !http_has_token(upgrade, "websocket")) {
        link_down(u, "handshake: no Upgrade: websocket in the answer");
        return -1;
    }
    const struct http_str *conn = http_header(head, "Connection");
    if (!conn || !http_has_token(conn, "upgrade")) {
        link_down(u, "handshake: no Connection: upgrade in the answer");
        return -1;
    }
    char expect[WS_ACCEPT_LEN + 1];
    const struct http_str *accept = http_header(head, "Sec-WebSocket-Accept");
    if (ws_accept(u->key, strlen(u->key), expect) != 0 || !accept || accept->len != WS_ACCEPT_LEN ||
        memcmp(accept->p, expect, WS_ACCEPT_LEN) != 0) {
        link_down(u, "handshake: bad Sec-WebSocket-Accept");
        return -1;
    }
    /* We offered no extension (no compression); frames with RSV bits would fail later. */
    if (http_header(head, "Sec-WebSocket-Extensions")) {
        link_down(u, "handshake: server chose an extension we did not offer");
        return -1;
    }
    return 0;
}

static void on_upgrade_answer(struct upstream *u)
{
    struct evbuffer *in = u->in;
    size_t have = evbuffer_get_length(in);
    size_t n = have < HTTP_MAX_HEAD ? have : HTTP_MAX_HEAD;
    struct http_head head;

    if (n == 0)
        return;
    const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
    if (!p) {
        link_down(u, "handshake: out of memory");
        return;
    }
    int r = http_parse_response(p, n, &head);
    if (r == 0 && n < HTTP_MAX_HEAD)
        return; /* wait for more */
    if (r <= 0) {
        link_down(u, "handshake: %s",
                  r == 0 ? "HTTP response head too long" : "malformed HTTP response");
        return;
    }
    if (check_upgrade(u, &head) != 0)
        return;
    if (ws_create(u) != 0) {
        link_down(u, "out of memory");
        return;
    }
    /* Whatever follows the head is already websocket traffic: keep it. */
    evbuffer_drain(in, head.head_len);

    evtimer_del(u->timer);
    set_state(u, UPSTREAM_STATE_READY);
    u->ready_at_ms = u->last_rx_ms = clock_mono_ms();
    u->ping_at_ms = 0;
    u->healthy = false;
    u->pong_late = false;
    u->fail_repeat = 0;
    keepalive_arm(u);
    ulog(LOG_LEVEL_INFO, u, "connected");
    if (u->ops.ready)
        u->ops.ready(u, u->arg);
    if (evbuffer_get_length(in) > 0)
        ws_pump(u);
}

/* ---- TLS ---- */

struct ssl_ctx_st *upstream_tls_new(const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    unsigned long e;

    if (!ctx)
        goto fail;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
        goto fail;
    /*
     * Nodes often hang up without close_notify. A truncated message cannot
     * pass for a whole one here (websocket frames carry their length), so
     * that is an ordinary EOF, not OpenSSL 3's "unexpected eof" error.
     */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            e = ERR_peek_last_error();
            snprintf(err, errlen, "tls_ca_file %s: cannot load certificates: %s", ca_file,
                     e ? ERR_reason_error_string(e) : "unknown error");
            ERR_clear_error();
            SSL_CTX_free(ctx);
            return NULL;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        goto fail;
    }
    return ctx;
fail:
    e = ERR_peek_last_error();
    snprintf(err, errlen, "TLS: cannot set up a client context: %s",
             e ? ERR_reason_error_string(e) : "out of memory");
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

/* A session for one attempt: SNI and the name (or address) the certificate must match. */
static SSL *tls_session(struct upstream *u)
{
    unsigned char addr[16];
    bool literal = u->url.ipv6_literal || inet_pton(AF_INET, u->url.host, addr) == 1;
    SSL *ssl = SSL_new(u->opts.tls);

    if (!ssl)
        return NULL;
    if (literal) {
        /* SNI carries host names only (RFC 6066); an address is checked against IP SANs. */
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), u->url.host) != 1)
            goto fail;
    } else {
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set_tlsext_host_name(ssl, u->url.host) != 1 || SSL_set1_host(ssl, u->url.host) != 1)
            goto fail;
    }
    return ssl;
fail:
    SSL_free(ssl);
    return NULL;
}

/*
 * Names a TLS failure: a certificate the verifier refused (with its reason),
 * or the first OpenSSL error of the connection. Returns false when there is
 * nothing TLS-specific to say, so the caller reports the socket error.
 */
static bool tls_link_down(struct upstream *u, struct bufferevent *bev)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    long verify = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    unsigned long e = 0, next;

    /* libevent also queues bare SSL_ERROR_* codes (no library): those mean "see errno". */
    while ((next = bufferevent_get_openssl_error(bev)) != 0)
        if (e == 0 && ERR_GET_LIB(next) != 0)
            e = next;
    ERR_clear_error();
    if (verify != X509_V_OK) {
        link_down(u, "TLS: certificate rejected: %s", X509_verify_cert_error_string(verify));
        return true;
    }
    if (e == 0)
        return false;
    const char *why = ERR_reason_error_string(e);
    if (why)
        link_down(u, "TLS: %s", why);
    else
        link_down(u, "TLS: error %#lx", e);
    return true;
}

/* ---- bufferevent callbacks ---- */

static void on_input(struct upstream *u)
{
    if (u->down_pending)
        return;
    switch (u->state) {
    case UPSTREAM_STATE_HANDSHAKE:
        on_upgrade_answer(u);
        break;
    case UPSTREAM_STATE_READY:
    case UPSTREAM_STATE_CLOSING:
        ws_pump(u);
        break;
    default:
        /* Nothing is expected before the upgrade request went out. */
        link_down(u, "unexpected data before the handshake");
        break;
    }
}

/* TLS: the bufferevent reads and decrypts. */
static void bev_read_cb(struct bufferevent *bev, void *arg)
{
    struct upstream *u = arg;

    evbuffer_add_buffer(u->in, bufferevent_get_input(bev));
    on_input(u);
}

static const char *phase_prefix(const struct upstream *u)
{
    return u->state == UPSTREAM_STATE_CONNECTING  ? "connect: "
           : u->state == UPSTREAM_STATE_HANDSHAKE ? "handshake: "
                                                  : "";
}

/* A plain socket: read here, the bufferevent only writes. */
static void up_readable(evutil_socket_t fd, short what, void *arg)
{
    struct upstream *u = arg;
    (void)what;

    if (u->down_pending)
        return;
    if (u->tls_own) {
        bool closed;
        ssize_t got = tls_read(u, fd, &closed);
        if (got < 0 &&
            (u->down_pending || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))) {
            if (!u->down_pending)
                link_down(u, "socket: %s", strerror(errno));
            return;
        }
        /* Replies that came before a close still count. */
        if (got > 0)
            on_input(u);
        if (closed)
            link_down(u, "%sconnection closed by the peer", phase_prefix(u));
        return;
    }
    ssize_t n = sock_read(u->in, fd);
    if (n > 0) {
        on_input(u);
        return;
    }
    if (n == 0)
        link_down(u, "%sconnection closed by the peer", phase_prefix(u));
    else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        link_down(u, "%s%s", phase_prefix(u)[0] ? phase_prefix(u) : "socket: ", strerror(errno));
}

static void bev_write_cb(struct bufferevent *bev, void *arg)
{
    struct upstream *u = arg;
    (void)bev;

    /* Output drained below OUT_LOW: resume frames held back by OUT_HIGH. */
    if (u->state == UPSTREAM_STATE_READY || u->state == UPSTREAM_STATE_CLOSING)
        ws_flush(u);
}

/* The handshake is done: from here on records go through memory BIOs (see raw_out). */
static int tls_take_over(struct upstream *u, evutil_socket_t fd)
{
    SSL *ssl = bufferevent_openssl_get_ssl(u->bev);
    BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());

    u->rd = event_new(u->base, fd, EV_READ | EV_PERSIST, up_readable, u);
    u->wr = event_new(u->base, fd, EV_WRITE | EV_PERSIST, up_writable, u);
    if (!ssl || !rb || !wb || !u->rd || !u->wr || event_add(u->rd, NULL) != 0) {
        BIO_free(rb);
        BIO_free(wb);
        link_down(u, "connect: out of memory");
        return -1;
    }
    bufferevent_disable(u->bev, EV_READ | EV_WRITE);
    evbuffer_add_buffer(u->in, bufferevent_get_input(u->bev));
    /* An empty read BIO means "nothing yet", not end of file. */
    BIO_set_mem_eof_return(rb, -1);
    SSL_set_bio(ssl, rb, wb);
    u->tls_own = true;
    return 0;
}

static void on_connected(struct upstream *u)
{
    int one = 1;
    evutil_socket_t fd = bufferevent_getfd(u->bev);

    /* Small JSON-RPC messages: latency matters more than packet count. */
    if (fd >= 0)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (!u->tls) {
        /* Reads move to rd; the bufferevent keeps the writes and reports their errors. */
        u->rd = event_new(u->base, fd, EV_READ | EV_PERSIST, up_readable, u);
        if (!u->rd || event_add(u->rd, NULL) != 0) {
            link_down(u, "connect: out of memory");
            return;
        }
        bufferevent_disable(u->bev, EV_READ);
        evbuffer_add_buffer(u->in, bufferevent_get_input(u->bev));
    }
    if (u->tls && tls_take_over(u, fd) != 0)
        return;
    if (u->tls) {
        /* Libevent reports the connection once the TLS handshake (and verification) is done. */
        SSL *ssl = bufferevent_openssl_get_ssl(u->bev);
        ulog(LOG_LEVEL_DEBUG, u, "%s %s, certificate verified for %s, sending the upgrade",
             ssl ? SSL_get_version(ssl) : "TLS", ssl ? SSL_get_cipher_name(ssl) : "", u->url.host);
    } else {
        ulog(LOG_LEVEL_DEBUG, u, "TCP connected, sending the upgrade");
    }
    send_upgrade(u);
}

static void bev_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct upstream *u = arg;
    int err = EVUTIL_SOCKET_ERROR();

    if (u->down_pending)
        return;
    if (what & BEV_EVENT_CONNECTED) {
        on_connected(u);
        return;
    }
    const char *phase = phase_prefix(u);
    if (what & BEV_EVENT_EOF) {
        link_down(u, "%sconnection closed by the peer", phase);
    } else if (what & BEV_EVENT_ERROR) {
        int dns_err = bufferevent_socket_get_dns_error(bev);
        if (dns_err)
            link_down(u, "resolve %s: %s", u->url.host, evutil_gai_strerror(dns_err));
        else if (!u->tls || !tls_link_down(u, bev))
            link_down(u, "%s%s", phase[0] ? phase : "socket: ", evutil_socket_error_to_string(err));
    }
}

/* ---- attempts ---- */

static void attempt(struct upstream *u)
{
    if (u->next_url_text) {
        free(u->url_text);
        u->url_text = u->next_url_text;
        u->next_url_text = NULL;
        u->url = u->next_url;
        url_authority(&u->url, u->authority, sizeof(u->authority));
    }
    set_state(u, UPSTREAM_STATE_CONNECTING);
    if (u->opts.connect_timeout_ms > 0)
        arm_timer(u, u->opts.connect_timeout_ms);
    if (u->url.tls) {
        SSL *ssl = tls_session(u);
        if (!ssl) {
            ERR_clear_error();
            link_down(u, "TLS: cannot set up a session for %s", u->url.host);
            return;
        }
        /*
         * The bufferevent owns the session from here on, also when it cannot be
         * created: with BEV_OPT_CLOSE_ON_FREE libevent frees it on that path.
         */
        u->bev = bufferevent_openssl_socket_new(u->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                BEV_OPT_CLOSE_ON_FREE);
        if (u->bev)
            u->tls = true;
    } else {
        u->bev = bufferevent_socket_new(u->base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    if (!u->bev) {
        link_down(u, "connect: cannot create a socket buffer");
        return;
    }
    bufferevent_setcb(u->bev, bev_read_cb, bev_write_cb, bev_event_cb, u);
    bufferevent_setwatermark(u->bev, EV_WRITE, OUT_LOW, 0);
    bufferevent_enable(u->bev, EV_READ | EV_WRITE);
    ulog(LOG_LEVEL_DEBUG, u, "connecting to %s port %u", u->url.host, (unsigned)u->url.port);
    /* The event callback may already have run (and reported) when this fails. */
    if (bufferevent_socket_connect_hostname(u->bev, u->dns, AF_UNSPEC, u->url.host,
                                            (int)u->url.port) != 0)
        link_down(u, "connect: %s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

/* ---- public interface ---- */

struct upstream *upstream_new(struct event_base *base, struct evdns_base *dns, unsigned id,
                              const char *url, const struct upstream_opts *opts,
                              const struct upstream_ops *ops, void *arg, const char **ret_cause)
{
    const char *cause_dummy;
    if (!ret_cause)
        ret_cause = &cause_dummy;
    *ret_cause = NULL;

    if (!base || !url || !opts) {
        *ret_cause = "missing argument";
        errno = EINVAL;
        return NULL;
    }
    struct upstream *u = calloc(1, sizeof(*u));
    if (!u) {
        *ret_cause = "out of memory";
        errno = ENOMEM;
        return NULL;
    }
    const char *cause = NULL;
    if (url_parse(url, &u->url, &cause) != 0) {
        *ret_cause = cause ? cause : "bad URL";
        free(u);
        errno = EINVAL;
        return NULL;
    }
    if (u->url.tls && !opts->tls) {
        *ret_cause = "wss:// without a TLS context";
        free(u);
        errno = EPROTONOSUPPORT;
        return NULL;
    }
    u->base = base;
    u->dns = dns;
    u->id = id;
    u->opts = *opts;
    if (ops)
        u->ops = *ops;
    u->arg = arg;
    /* A zero minimum would retry in a tight loop. */
    if (u->opts.backoff_min_ms == 0)
        u->opts.backoff_min_ms = 1;
    if (u->opts.backoff_max_ms < u->opts.backoff_min_ms)
        u->opts.backoff_max_ms = u->opts.backoff_min_ms;
    if (u->opts.pong_timeout_ms == 0)
        u->opts.pong_timeout_ms = u->opts.ping_interval_ms;
    url_authority(&u->url, u->authority, sizeof(u->authority));
    u->state = UPSTREAM_STATE_IDLE;
    u->state_since = clock_wall();
    u->url_text = strdup(url);
    u->timer = evtimer_new(base, timer_cb, u);
    u->defer = event_new(base, -1, 0, defer_cb, u);
    u->flush = event_new(base, -1, 0, flush_cb, u);
    u->stage = evbuffer_new();
    u->in = evbuffer_new();
    u->raw_out = evbuffer_new();
    if (!u->url_text || !u->timer || !u->defer || !u->flush || !u->stage || !u->in || !u->raw_out) {
        *ret_cause = "out of memory";
        upstream_free(u);
        errno = ENOMEM;
        return NULL;
    }
    return u;
}

void upstream_start(struct upstream *u)
{
    if (u->state != UPSTREAM_STATE_IDLE)
        return;
    attempt(u);
}

/*
 * A text frame written straight into the stage, when wslay has nothing of
 * its own waiting to go out (so frames keep their order) and the output has
 * room. That spares the three allocations and two copies of wslay's queue
 * on every request. Returns false when wslay must queue the message.
 */
static bool frame_direct(struct upstream *u, const char *msg, size_t len)
{
    struct evbuffer_iovec v;
    uint8_t mask[4];

    if (wslay_event_want_write(u->ws) || wslay_event_get_close_sent(u->ws) ||
        out_queued(u) + len >= OUT_HIGH || mask_take(u, mask, sizeof(mask)) != 0)
        return false;
    if (evbuffer_reserve_space(u->stage, (ev_ssize_t)(WS_HEAD_MAX + len), &v, 1) != 1)
        return false;
    size_t head = ws_frame_head(v.iov_base, WSLAY_TEXT_FRAME, len, mask);
    ws_mask_copy((uint8_t *)v.iov_base + head, (const uint8_t *)msg, len, mask);
    v.iov_len = head + len;
    if (evbuffer_commit_space(u->stage, &v, 1) != 0)
        return false;
    ws_flush(u);
    return true;
}

int upstream_send(struct upstream *u, const char *msg, size_t len)
{
    if (u->state != UPSTREAM_STATE_READY || u->down_pending || !u->ws)
        return -ENOTCONN;
    if (frame_direct(u, msg, len))
        return 0;
    struct wslay_event_msg m = {
        .opcode = WSLAY_TEXT_FRAME, .msg = (const uint8_t *)msg, .msg_length = len};
    int r = wslay_event_queue_msg(u->ws, &m);
    if (r == WSLAY_ERR_NOMEM)
        return -ENOMEM;
    if (r != 0)
        return -ENOTCONN;
    /* A failure here is reported through ops->lost, later; the message was taken. */
    ws_flush(u);
    return 0;
}

int upstream_set_url(struct upstream *u, const char *url, const char **ret_cause)
{
    struct url parsed;
    char *copy;

    if (url_parse(url, &parsed, ret_cause) != 0)
        return -EINVAL;
    if (parsed.tls && !u->opts.tls) {
        if (ret_cause)
            *ret_cause = "wss:// without a TLS context";
        return -EINVAL;
    }
    copy = strdup(url);
    if (!copy) {
        if (ret_cause)
            *ret_cause = "out of memory";
        return -ENOMEM;
    }
    free(u->next_url_text);
    u->next_url_text = copy;
    u->next_url = parsed;
    /* Retry-After was about the old endpoint. */
    if (strcmp(url, u->url_text) != 0)
        u->retry_after_ms = 0;
    return 0;
}

/*
 * Send a close frame (1001) and wait up to close_timeout for the peer's;
 * link_down() ends it either way. Only for a READY link with a websocket.
 */
static void close_gracefully(struct upstream *u, const char *reason, const char *what)
{
    evtimer_del(u->timer);
    set_state(u, UPSTREAM_STATE_CLOSING);
    ulog(LOG_LEVEL_INFO, u, "%s", what);
    if (wslay_event_queue_close(u->ws, WSLAY_CODE_GOING_AWAY, (const uint8_t *)reason,
                                strlen(reason)) != 0) {
        link_down(u, "could not queue a close frame");
        return;
    }
    if (u->opts.close_timeout_ms > 0)
        arm_timer(u, u->opts.close_timeout_ms);
    ws_flush(u);
    /* Not waiting: conn_free still pushes the close frame out once. */
    if (u->opts.close_timeout_ms == 0)
        link_down(u, "not waiting for the peer's close");
}

void upstream_reconnect(struct upstream *u)
{
    static const char reason[] = "reconnecting";

    if (u->close_requested || u->state == UPSTREAM_STATE_CLOSED ||
        u->state == UPSTREAM_STATE_CLOSING)
        return;
    u->failures = 0;
    u->retry_after_ms = 0;
    u->fail_repeat = 0;
    switch (u->state) {
    case UPSTREAM_STATE_READY:
        if (u->down_pending || !u->ws)
            break;
        /* A graceful close first; link_down() then reports the loss and retries at once. */
        u->moving = true;
        close_gracefully(u, reason, "closing to reconnect");
        return;
    case UPSTREAM_STATE_CONNECTING:
    case UPSTREAM_STATE_HANDSHAKE:
        /* Abandon the attempt without counting it as a failure. */
        ulog(LOG_LEVEL_DEBUG, u, "abandoning the attempt to reconnect");
        quiesce(u);
        set_state(u, UPSTREAM_STATE_BACKOFF);
        break;
    case UPSTREAM_STATE_BACKOFF:
    case UPSTREAM_STATE_IDLE:
        evtimer_del(u->timer);
        break;
    case UPSTREAM_STATE_CLOSING:
    case UPSTREAM_STATE_CLOSED:
        return;
    }
    u->retry_now = true;
    event_active(u->defer, 0, 0);
}

void upstream_close(struct upstream *u)
{
    if (u->close_requested)
        return;
    u->close_requested = true;
    if (u->state == UPSTREAM_STATE_READY && !u->down_pending && u->ws) {
        close_gracefully(u, "going away", "closing");
        return;
    }
    /* Not connected (or a teardown is already under way): done at once. */
    ulog(LOG_LEVEL_INFO, u, "closed");
    evtimer_del(u->timer);
    if (u->bev || u->ws)
        quiesce(u);
    set_state(u, UPSTREAM_STATE_CLOSED);
    u->closed_pending = true;
    event_active(u->defer, 0, 0);
}

struct upstream *upstream_free(struct upstream *u)
{
    if (!u)
        return NULL;
    conn_free(u);
    if (u->timer)
        event_free(u->timer);
    if (u->defer)
        event_free(u->defer);
    if (u->flush)
        event_free(u->flush);
    if (u->stage)
        evbuffer_free(u->stage);
    if (u->in)
        evbuffer_free(u->in);
    if (u->raw_out)
        evbuffer_free(u->raw_out);
    free(u->url_text);
    free(u->next_url_text);
    free(u);
    return NULL;
}

enum upstream_state upstream_state(const struct upstream *u)
{
    return u->state;
}

const char *upstream_state_name(enum upstream_state s)
{
    switch (s) {
    case UPSTREAM_STATE_IDLE:
        return "idle";
    case UPSTREAM_STATE_CONNECTING:
        return "connecting";
    case UPSTREAM_STATE_HANDSHAKE:
        return "handshake";
    case UPSTREAM_STATE_READY:
        return "ready";
    case UPSTREAM_STATE_BACKOFF:
        return "backoff";
    case UPSTREAM_STATE_CLOSING:
        return "closing";
    case UPSTREAM_STATE_CLOSED:
        return "closed";
    }
    return "unknown";
}

unsigned upstream_id(const struct upstream *u)
{
    return u->id;
}

const char *upstream_url(const struct upstream *u)
{
    return u->url_text;
}

bool upstream_lost_too_big(const struct upstream *u)
{
    return u->lost_too_big;
}

uint64_t upstream_reconnects(const struct upstream *u)
{
    return u->reconnects;
}

double upstream_state_since(const struct upstream *u)
{
    return u->state_since;
}

const char *upstream_last_error(const struct upstream *u)
{
    return u->have_error ? u->last_error : NULL;
}

bool upstream_healthy(const struct upstream *u)
{
    return u->state == UPSTREAM_STATE_READY && !u->down_pending && u->healthy;
}

bool upstream_pong_overdue(const struct upstream *u)
{
    return u->state == UPSTREAM_STATE_READY && u->ping_at_ms != 0 &&
           u->last_rx_ms < u->ping_at_ms &&
           clock_mono_ms() - u->ping_at_ms > u->opts.pong_timeout_ms / 2;
}
