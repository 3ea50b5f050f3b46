/*
 * The server side of one devnode connection: TLS when the node has a
 * certificate (an OpenSSL bufferevent), the HTTP upgrade, the websocket
 * session driven through wslay from a bufferevent, reply delivery with the
 * configured latency, subscriptions and the injected faults.
 *
 * Replies normally skip wslay's send queue: when wslay has nothing half
 * written, the frame header and the reply's evbuffer chains go straight onto
 * the output buffer, so a 600 KB metadata reply or a 20 MB blob is never
 * copied and always leaves as one frame. Otherwise the reply is queued in
 * wslay behind what it already holds, which keeps the byte stream ordered.
 */
#include "devnode.h"
#include "http.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* Above OUT_HIGH unsent bytes requests wait (and wslay's writes too) until the
 * peer has read the output down to OUT_LOW. */
#define OUT_HIGH (8u << 20)
#define OUT_LOW  (1u << 20)

#define HANDSHAKE_TIMEOUT_S 30
#define CLOSE_TIMEOUT_S     5
#define REORDER_FLUSH_MS    250
/* Frames up to this size (a TLS record's most) are written as one piece: one record, one write. */
#define FRAME_ONE_PIECE (16u << 10)

/* A reply waiting out its latency. */
struct pending {
    struct conn *conn;
    struct pending *prev;
    struct pending *next;
    struct event timer;
    struct evbuffer *buf;
    uint64_t token;
};

static void conn_process(struct conn *c);
static void conn_send_text(struct conn *c, struct evbuffer *buf);

static void sub_free(struct sub *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n_keys; i++)
        free(s->keys[i]);
    free(s->keys);
    free(s);
}

static void conn_uncount(struct conn *c)
{
    if (c->counted) {
        c->counted = false;
        c->dn->n_conns--;
    }
}

static void pending_free(struct pending *p)
{
    if (!p)
        return;
    event_del(&p->timer);
    if (p->buf)
        evbuffer_free(p->buf);
    free(p);
}

/* Forget every reply not yet sent. */
static void conn_drop_replies(struct conn *c)
{
    while (c->pending) {
        struct pending *p = c->pending;
        c->pending = p->next;
        pending_free(p);
    }
    if (c->held) {
        evbuffer_free(c->held);
        c->held = NULL;
    }
    event_del(&c->reorder_ev);
}

/* Forget the replies and the subscriptions. */
static void conn_drop_work(struct conn *c)
{
    conn_drop_replies(c);
    while (c->subs) {
        struct sub *s = c->subs;
        c->subs = s->next;
        sub_free(s);
        c->dn->n_subs--;
    }
}

void conn_free(struct conn *c)
{
    if (!c)
        return;
    conn_uncount(c);
    conn_drop_work(c);
    event_del(&c->kill_ev);
    if (c->prev)
        c->prev->next = c->next;
    else if (c->dn->conns == c)
        c->dn->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->ws)
        wslay_event_context_free(c->ws);
    if (c->bev)
        bufferevent_free(c->bev);
    free(c);
}

static void conn_on_kill(evutil_socket_t fd, short what, void *arg)
{
    conn_free(arg);
}

/* Tear down now; the memory goes from kill_ev, never from inside a callback of ours. */
static void conn_kill(struct conn *c)
{
    if (c->state == CONN_DEAD)
        return;
    c->state = CONN_DEAD;
    conn_uncount(c);
    conn_drop_work(c);
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    event_active(&c->kill_ev, EV_TIMEOUT, 1);
}

/* Let what is already written reach the peer, then close TCP (no close frame). */
static void conn_close_after_flush(struct conn *c)
{
    if (c->state == CONN_DEAD || c->state == CONN_CLOSING)
        return;
    c->state = CONN_CLOSING;
    conn_uncount(c);
    conn_drop_work(c);
    bufferevent_disable(c->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        conn_kill(c);
        return;
    }
    struct timeval tv = {CLOSE_TIMEOUT_S, 0};
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    bufferevent_set_timeouts(c->bev, NULL, &tv);
}

static void conn_flush(struct conn *c)
{
    if (c->state != CONN_WS || c->in_recv || c->stalled || !wslay_event_want_write(c->ws))
        return;
    if (wslay_event_send(c->ws) != 0)
        conn_kill(c);
}

/*
 * After a 1009 the peer may still be sending the message that was too big:
 * closing with its bytes unread would reset the connection, and the reset
 * can overtake the close frame. Like a real server, read and drop what
 * comes until the peer hangs up (or CLOSE_TIMEOUT), so it reads our code.
 */
static void conn_close_draining(struct conn *c)
{
    struct timeval tv = {CLOSE_TIMEOUT_S, 0};

    c->state = CONN_CLOSING;
    c->draining = true;
    conn_uncount(c);
    conn_drop_work(c);
    bufferevent_set_timeouts(c->bev, &tv, &tv);
    bufferevent_enable(c->bev, EV_READ);
}

/* After a close handshake (or a protocol error) wslay wants nothing more. */
static void conn_check_done(struct conn *c)
{
    if (c->state != CONN_WS || wslay_event_want_read(c->ws) || wslay_event_want_write(c->ws))
        return;
    if (wslay_event_get_status_code_sent(c->ws) == WSLAY_CODE_MESSAGE_TOO_BIG)
        conn_close_draining(c);
    else
        conn_close_after_flush(c);
}

static void conn_check_output(struct conn *c)
{
    if (!c->read_paused && evbuffer_get_length(bufferevent_get_output(c->bev)) > OUT_HIGH) {
        c->read_paused = true;
        bufferevent_disable(c->bev, EV_READ);
    }
}

/* --- wslay callbacks --- */

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                          void *arg)
{
    struct conn *c = arg;
    int n = -1;

    if (c->state == CONN_WS && !c->stalled && !c->read_paused)
        n = evbuffer_remove(bufferevent_get_input(c->bev), buf, len);
    if (n <= 0) {
        /* Returning 0 would make wslay spin on an empty buffer. */
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    return n;
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                          void *arg)
{
    struct conn *c = arg;
    struct evbuffer *out = bufferevent_get_output(c->bev);

    if (c->state != CONN_WS) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    if (evbuffer_get_length(out) > OUT_HIGH) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (evbuffer_add(out, data, len) != 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static void ws_on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                      void *user)
{
    struct conn *c = user;

    if (c->state != CONN_WS || c->stalled)
        return;
    if (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME)
        return;
    if (arg->msg_length > c->dn->opt.max_message) {
        /* Only with --oversize-reply (else wslay closed with 1009): jsonrpsee's answer. */
        struct evbuffer *eb = evbuffer_new();
        static const char too_big[] = "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32007,"
                                      "\"message\":\"Request is too big\"},\"id\":null}";
        if (eb && evbuffer_add(eb, too_big, sizeof(too_big) - 1) == 0)
            conn_reply(c, eb, &(struct reply_opts){0}); /* with --latency-ms, like any reply */
        else if (eb)
            evbuffer_free(eb);
        return;
    }
    /* arg->msg dies with this callback: rpc_handle copies what it keeps. */
    rpc_handle(c, (const char *)arg->msg, arg->msg_length);
}

static const struct wslay_event_callbacks ws_callbacks = {
    .recv_callback = ws_recv_cb,
    .send_callback = ws_send_cb,
    .on_msg_recv_callback = ws_on_msg,
};

/* --- sending --- */

/* One complete text message; takes ownership of buf. */
static void conn_send_text(struct conn *c, struct evbuffer *buf)
{
    if (c->state != CONN_WS || c->stalled)
        goto out;

    if (c->pretty && evbuffer_get_length(buf) > 0) {
        /* "\n{\n  ...\n": newlines around the value and inside the first object. */
        struct evbuffer *p = evbuffer_new();
        if (p) {
            evbuffer_add(p, "\n", 1);
            evbuffer_remove_buffer(buf, p, 1);
            evbuffer_add(p, "\n  ", 3);
            evbuffer_add_buffer(p, buf);
            evbuffer_add(p, "\n", 1);
            evbuffer_free(buf);
            buf = p;
        }
    }
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t len = evbuffer_get_length(buf);
    c->dn->n_sent_bytes += len;
    if (!wslay_event_want_write(c->ws) && wslay_event_get_write_enabled(c->ws)) {
        uint8_t head[WS_HEAD_MAX];
        size_t hlen = ws_frame_head(head, WSLAY_TEXT_FRAME, len, NULL);
        struct evbuffer_iovec v;
        /* An OpenSSL bufferevent makes a record of every buffer chain, and writes each
         * alone: a head chain before the payload's chains would cost two records and
         * two writes per reply, where a node's own writer sends one. */
        if (hlen + len <= FRAME_ONE_PIECE && evbuffer_reserve_space(out, hlen + len, &v, 1) == 1) {
            memcpy(v.iov_base, head, hlen);
            evbuffer_copyout(buf, (char *)v.iov_base + hlen, len);
            v.iov_len = hlen + len;
            evbuffer_commit_space(out, &v, 1);
        } else {
            evbuffer_add(out, head, hlen);
            evbuffer_add_buffer(out, buf);
        }
    } else {
        struct wslay_event_msg m = {
            .opcode = WSLAY_TEXT_FRAME,
            .msg = evbuffer_pullup(buf, -1),
            .msg_length = len,
        };
        /* Fails only once a close frame is queued: the reply has no one to go to. */
        if (wslay_event_queue_msg(c->ws, &m) == 0)
            conn_flush(c);
    }
    conn_check_output(c);
out:
    evbuffer_free(buf);
}

/* A notification's envelope up to its result; NULL when out of memory. */
static struct evbuffer *notification_begin(const struct sub *s)
{
    static const char *const methods[] = {
        [SUB_NEW_HEADS] = "chain_newHead",
        [SUB_FINALIZED_HEADS] = "chain_finalizedHead",
        [SUB_RUNTIME_VERSION] = "state_runtimeVersion",
        [SUB_STORAGE] = "state_storage",
        [SUB_EXTRINSIC] = "author_extrinsicUpdate",
    };
    struct evbuffer *buf = evbuffer_new();
    if (!buf)
        return NULL;
    evbuffer_add_printf(
        buf,
        "{\"jsonrpc\":\"2.0\",\"method\":\"%s\",\"params\":{\"subscription\":\"%s\","
        "\"result\":",
        methods[s->kind], s->id);
    return buf;
}

static void notification_end(struct conn *c, struct evbuffer *buf)
{
    evbuffer_add(buf, "}}", 2);
    conn_send_text(c, buf);
}

static void conn_send_notification(struct conn *c, const struct sub *s, const char *result,
                                   size_t len)
{
    struct evbuffer *buf = notification_begin(s);
    if (!buf)
        return;
    evbuffer_add(buf, result, len);
    notification_end(c, buf);
}

/*
 * state_storage at the best block: every key (all) or only those whose value
 * changed since the block before (the dynamic ones). Nothing is sent when no
 * key changed, as on a node.
 */
static void conn_send_storage(struct conn *c, const struct sub *s, bool all)
{
    struct devnode *dn = c->dn;
    const struct chain *ch = &dn->chain;
    char hash[72], value[CHAIN_VALUE_JSON_MAX];
    size_t n_out = 0;

    struct evbuffer *buf = notification_begin(s);
    if (!buf)
        return;
    evbuffer_add(buf, "{\"block\":", 9);
    evbuffer_add(buf, hash, chain_block_hash_json(ch, ch->best, hash));
    evbuffer_add(buf, ",\"changes\":[", 12);
    for (size_t i = 0; i < s->n_keys; i++) {
        /* Keys are stored as JSON strings: the hex is inside the quotes. */
        const char *key = s->keys[i] + 1;
        size_t klen = strlen(s->keys[i]) - 2;
        if (!all && !chain_storage_dynamic(key, klen))
            continue;
        size_t vlen = chain_storage_json(ch, key, klen, ch->best, value);
        if (n_out++ > 0)
            evbuffer_add(buf, ",", 1);
        evbuffer_add(buf, "[", 1);
        evbuffer_add(buf, s->keys[i], klen + 2);
        evbuffer_add(buf, ",", 1);
        if (vlen)
            evbuffer_add(buf, value, vlen);
        else
            evbuffer_add(buf, "null", 4);
        evbuffer_add(buf, "]", 1);
    }
    if (!all && n_out == 0) {
        evbuffer_free(buf);
        return;
    }
    evbuffer_add(buf, "]}", 2);
    notification_end(c, buf);
}

/* author_extrinsicUpdate {"inBlock": ...} or {"finalized": ...} naming block n. */
static void conn_send_extrinsic(struct conn *c, const struct sub *s, const char *status, uint64_t n)
{
    char hash[72];
    struct evbuffer *buf = notification_begin(s);
    if (!buf)
        return;
    evbuffer_add_printf(buf, "{\"%s\":", status);
    evbuffer_add(buf, hash, chain_block_hash_json(&c->dn->chain, n, hash));
    evbuffer_add(buf, "}", 1);
    notification_end(c, buf);
}

/* The first notification of a subscription, sent right after the reply with its id. */
static void sub_send_initial(struct conn *c, struct sub *s)
{
    struct devnode *dn = c->dn;
    char fin[CHAIN_HEADER_MAX];

    switch (s->kind) {
    case SUB_NEW_HEADS:
        conn_send_notification(c, s, dn->head_json, dn->head_len);
        break;
    case SUB_FINALIZED_HEADS: {
        size_t n = chain_header_json(&dn->chain, chain_finalized(&dn->chain), fin);
        conn_send_notification(c, s, fin, n);
        break;
    }
    case SUB_RUNTIME_VERSION:
        conn_send_notification(c, s, CHAIN_RUNTIME_VERSION, sizeof(CHAIN_RUNTIME_VERSION) - 1);
        break;
    case SUB_STORAGE:
        conn_send_storage(c, s, true);
        break;
    case SUB_EXTRINSIC:
        conn_send_notification(c, s, "\"ready\"", 7);
        break;
    }
}

/* Send the first notification of every subscription the message `token` created. */
static void conn_start_subs(struct conn *c, uint64_t token)
{
    /* A send can kill the connection, which frees the list: check before moving on. */
    struct sub *s = c->subs;
    while (s && c->state == CONN_WS) {
        struct sub *next = s->next;
        if (s->token == token) {
            s->token = 0;
            sub_send_initial(c, s);
        }
        s = c->state == CONN_WS ? next : NULL;
    }
}

/* Write a reply now and start the subscriptions it announced: after it, or before it under
 * FAULT_NOTIFY_FIRST (as some nodes and emulators do). */
static void conn_send_reply(struct conn *c, struct evbuffer *buf, uint64_t token)
{
    if (c->notify_first) {
        conn_start_subs(c, token);
        conn_send_text(c, buf);
        return;
    }
    conn_send_text(c, buf);
    conn_start_subs(c, token);
    if (c->one_reply)
        conn_close_after_flush(c);
}

/* The moment a reply is due: FAULT_REORDER may hold it for its partner. */
static void conn_deliver(struct conn *c, struct evbuffer *buf, uint64_t token)
{
    if (!c->reorder) {
        conn_send_reply(c, buf, token);
        return;
    }
    if (!c->held) {
        struct timeval tv = {0, REORDER_FLUSH_MS * 1000};
        c->held = buf;
        c->held_token = token;
        evtimer_add(&c->reorder_ev, &tv);
        return;
    }
    struct evbuffer *first = c->held;
    uint64_t first_token = c->held_token;
    c->held = NULL;
    event_del(&c->reorder_ev);
    conn_send_reply(c, buf, token);
    conn_send_reply(c, first, first_token);
}

static void conn_flush_held(struct conn *c)
{
    struct evbuffer *buf = c->held;
    if (!buf)
        return;
    c->held = NULL;
    event_del(&c->reorder_ev);
    conn_send_reply(c, buf, c->held_token);
}

static void conn_on_reorder(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    conn_flush_held(c);
    conn_flush(c);
}

static void pending_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct pending *p = arg;
    struct conn *c = p->conn;
    struct evbuffer *buf = p->buf;

    if (p->prev)
        p->prev->next = p->next;
    else
        c->pending = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->buf = NULL;
    uint64_t token = p->token;
    free(p);
    conn_deliver(c, buf, token);
    conn_flush(c);
}

static uint32_t latency_draw(struct devnode *dn)
{
    uint32_t ms = dn->opt.latency_ms;
    uint32_t j = dn->opt.jitter_ms;

    if (ms == 0 || j == 0)
        return ms;
    /* xorshift64*: cheap and the same sequence for the same seed. */
    dn->rng ^= dn->rng >> 12;
    dn->rng ^= dn->rng << 25;
    dn->rng ^= dn->rng >> 27;
    uint64_t r = (dn->rng * 0x2545f4914f6cdd1dull) >> 11;
    int64_t d = (int64_t)ms + (int64_t)(r % (2 * (uint64_t)j + 1)) - (int64_t)j;
    return d > 0 ? (uint32_t)d : 0;
}

static void conn_fault_all(struct devnode *dn, enum fault_kind kind);
static void conn_apply_fault(struct conn *c, enum fault_kind kind);

void conn_reply(struct conn *c, struct evbuffer *buf, const struct reply_opts *opts)
{
    if (c->state != CONN_WS || c->stalled) {
        evbuffer_free(buf);
        return;
    }
    if (opts->immediate) {
        conn_send_reply(c, buf, opts->token);
        if (opts->has_fault) {
            if (opts->fault_all)
                conn_fault_all(c->dn, opts->fault);
            else
                conn_apply_fault(c, opts->fault);
        }
        conn_flush(c);
        return;
    }

    uint32_t ms = latency_draw(c->dn) + opts->extra_ms;
    if (ms == 0) {
        conn_deliver(c, buf, opts->token);
        conn_flush(c);
        return;
    }
    struct pending *p = calloc(1, sizeof(*p));
    if (!p) {
        evbuffer_free(buf);
        return;
    }
    p->conn = c;
    p->buf = buf;
    p->token = opts->token;
    evtimer_assign(&p->timer, c->dn->base, pending_on_timer, p);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (ms == c->dn->opt.latency_ms && c->dn->latency_tv)
        evtimer_add(&p->timer, c->dn->latency_tv);
    else
        evtimer_add(&p->timer, &tv);
    p->next = c->pending;
    if (c->pending)
        c->pending->prev = p;
    c->pending = p;
}

/* --- faults --- */

static void conn_apply_fault(struct conn *c, enum fault_kind kind)
{
    if (c->state != CONN_WS)
        return;
    if (c->stalled && kind != FAULT_CLOSE)
        return;

    switch (kind) {
    case FAULT_NONE:
        c->oversize = false;
        c->reorder = false;
        c->notify_first = false;
        c->one_reply = false;
        c->pretty = false;
        conn_flush_held(c);
        break;
    case FAULT_CLOSE:
        conn_close_after_flush(c);
        break;
    case FAULT_STALL:
        /* Subscriptions stay open and counted (silent): the peer never closed them. */
        conn_drop_replies(c);
        c->stalled = true;
        break;
    case FAULT_GARBAGE: {
        struct evbuffer *buf = evbuffer_new();
        if (buf) {
            evbuffer_add_printf(buf, "devnode garbage: this is not JSON {[");
            conn_send_text(c, buf);
        }
        break;
    }
    case FAULT_GARBAGE_BINARY: {
        /* FIN with all three RSV bits and reserved opcode 0x3: no client may accept it. */
        static const uint8_t junk[] = {0xf3, 0x04, 'j', 'u', 'n', 'k'};
        evbuffer_add(bufferevent_get_output(c->bev), junk, sizeof(junk));
        break;
    }
    case FAULT_OVERSIZE:
        c->oversize = true;
        break;
    case FAULT_REORDER:
        c->reorder = true;
        break;
    case FAULT_NOTIFY_FIRST:
        c->notify_first = true;
        break;
    case FAULT_ONE_REPLY:
        c->one_reply = true;
        break;
    case FAULT_PRETTY:
        c->pretty = true;
        break;
    case FAULT_REFUSE429:
    case FAULT_FREEZE:
    case FAULT_HANGUP:
        /* Node-wide: new handshakes, the block clock. */
        break;
    }
}

static void conn_fault_all(struct devnode *dn, enum fault_kind kind)
{
    enum fault_kind was = dn->fault;

    dn->fault = kind;
    devnode_fault_changed(dn, was);
    /* conn_apply_fault never unlinks a connection, so the walk is safe. */
    for (struct conn *c = dn->conns; c; c = c->next)
        if (!c->control)
            conn_apply_fault(c, kind);
}

/* --- subscriptions --- */

struct sub *conn_sub_add(struct conn *c, enum sub_kind kind, uint64_t token, char **keys,
                         size_t n_keys)
{
    static const char alphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    struct devnode *dn = c->dn;
    struct sub *s = calloc(1, sizeof(*s));
    if (!s) {
        for (size_t i = 0; i < n_keys; i++)
            free(keys[i]);
        free(keys);
        return NULL;
    }
    s->keys = keys;
    s->n_keys = n_keys;

    /* Random-looking like jsonrpsee's ids, but the same in every run. */
    uint64_t w =
        chain_mix(chain_domain_key(&dn->chain, CHAIN_DOMAIN_SUBSCRIPTION) ^ ++dn->next_sub_id);
    for (int i = 0; i < SUB_ID_LEN; i++) {
        if (i == 8)
            w = chain_mix(w);
        s->id[i] = alphabet[(w >> (8 * (i % 8))) % 62];
    }
    s->kind = kind;
    s->token = token;
    s->next = c->subs;
    c->subs = s;
    dn->n_subs++;
    return s;
}

bool conn_sub_remove(struct conn *c, enum sub_kind kind, const char *id, size_t len)
{
    for (struct sub **pp = &c->subs; *pp; pp = &(*pp)->next) {
        struct sub *s = *pp;
        if (s->kind == kind && len == SUB_ID_LEN && memcmp(s->id, id, len) == 0) {
            *pp = s->next;
            sub_free(s);
            c->dn->n_subs--;
            return true;
        }
    }
    return false;
}

/* What a new best block means for one started subscription; true when it has ended. */
static bool sub_on_block(struct conn *c, struct sub *s, const char *fin_json, size_t fin_len)
{
    struct devnode *dn = c->dn;

    switch (s->kind) {
    case SUB_NEW_HEADS:
        conn_send_notification(c, s, dn->head_json, dn->head_len);
        break;
    case SUB_FINALIZED_HEADS:
        if (fin_json)
            conn_send_notification(c, s, fin_json, fin_len);
        break;
    case SUB_RUNTIME_VERSION:
        break;
    case SUB_STORAGE:
        conn_send_storage(c, s, false);
        break;
    case SUB_EXTRINSIC:
        /* ready -> inBlock at the next block -> finalized once that block is, then over. */
        if (s->in_block == 0) {
            s->in_block = dn->chain.best;
            conn_send_extrinsic(c, s, "inBlock", s->in_block);
        } else if (chain_finalized(&dn->chain) >= s->in_block) {
            conn_send_extrinsic(c, s, "finalized", s->in_block);
            return true;
        }
        break;
    }
    return false;
}

void conn_notify_block(struct devnode *dn, const char *fin_json, size_t fin_len)
{
    for (struct conn *c = dn->conns; c; c = c->next) {
        if (c->state != CONN_WS || c->stalled)
            continue;
        /* A send can kill the connection, which frees the list: check before moving on. */
        struct sub **pp = &c->subs;
        while (*pp && c->state == CONN_WS) {
            struct sub *s = *pp;
            bool ended = s->token == 0 && sub_on_block(c, s, fin_json, fin_len);
            if (c->state != CONN_WS)
                break;
            if (ended) {
                *pp = s->next;
                sub_free(s);
                dn->n_subs--;
            } else {
                pp = &s->next;
            }
        }
        conn_flush(c);
    }
}

/* --- handshake --- */

static void conn_http_error(struct conn *c, const char *status, const char *extra)
{
    evbuffer_add_printf(bufferevent_get_output(c->bev),
                        "HTTP/1.1 %s\r\n%sContent-Length: 0\r\nConnection: close\r\n\r\n", status,
                        extra);
    conn_close_after_flush(c);
}

static bool str_is(const struct http_str *s, const char *lit)
{
    size_t n = strlen(lit);
    return s && s->len == n && memcmp(s->p, lit, n) == 0;
}

static void conn_handshake(struct conn *c)
{
    struct devnode *dn = c->dn;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len = evbuffer_get_length(in);
    size_t n = len < HTTP_MAX_HEAD ? len : HTTP_MAX_HEAD;
    const char *p = (const char *)evbuffer_pullup(in, (ssize_t)n);
    struct http_head h;

    int r = http_parse_request(p, n, &h);
    if (r == 0 && len < HTTP_MAX_HEAD)
        return;
    if (r <= 0) {
        conn_http_error(c, "400 Bad Request", "");
        return;
    }
    if (!str_is(&h.method, "GET")) {
        conn_http_error(c, "405 Method Not Allowed", "Allow: GET\r\n");
        return;
    }
    const struct http_str *upgrade = http_header(&h, "Upgrade");
    const struct http_str *connection = http_header(&h, "Connection");
    const struct http_str *version = http_header(&h, "Sec-WebSocket-Version");
    const struct http_str *key = http_header(&h, "Sec-WebSocket-Key");
    char accept[WS_ACCEPT_LEN + 1];
    if (h.minor_version < 1 || !upgrade || !http_has_token(upgrade, "websocket") || !connection ||
        !http_has_token(connection, "upgrade") || !key) {
        conn_http_error(c, "400 Bad Request", "");
        return;
    }
    if (!str_is(version, "13")) {
        conn_http_error(c, "426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n");
        return;
    }
    if (ws_accept(key->p, key->len, accept) != 0) {
        conn_http_error(c, "400 Bad Request", "");
        return;
    }
    c->control = str_is(&h.target, "/control") ||
                 (h.target.len > 9 && memcmp(h.target.p, "/control?", 9) == 0);
    if (!c->control && dn->fault == FAULT_HANGUP) {
        /* A node going away mid-handshake: the request was read, nothing comes back. */
        dn->n_hangups++;
        conn_kill(c);
        return;
    }
    if (!c->control && dn->fault == FAULT_REFUSE429) {
        char extra[48];
        snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", (unsigned)dn->opt.retry_after_s);
        dn->n_refused++;
        conn_http_error(c, "429 Too Many Requests", extra);
        return;
    }
    if (wslay_event_context_server_init(&c->ws, &ws_callbacks, c) != 0) {
        c->ws = NULL;
        conn_kill(c);
        return;
    }
    wslay_event_config_set_max_recv_msg_length(c->ws, dn->opt.oversize_reply ? (size_t)1 << 31
                                                                             : dn->opt.max_message);

    /* Extensions (permessage-deflate) and subprotocols are never accepted. */
    evbuffer_drain(in, h.head_len);
    evbuffer_add_printf(bufferevent_get_output(c->bev),
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                        accept);
    bufferevent_set_timeouts(c->bev, NULL, NULL);
    c->state = CONN_WS;
    c->counted = true;
    dn->n_conns++;
    dn->n_handshakes++;
    if (!c->control)
        conn_apply_fault(c, dn->fault);
}

/* --- bufferevent callbacks --- */

static void conn_process(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);

    if (c->stalled) {
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    if (c->read_paused)
        return;
    c->in_recv = true;
    int r = wslay_event_recv(c->ws);
    c->in_recv = false;
    if (r != 0) {
        conn_kill(c);
        return;
    }
    conn_flush(c);
    conn_check_done(c);
}

static void conn_on_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;

    if (c->draining) {
        evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
        return;
    }
    if (c->state == CONN_HTTP)
        conn_handshake(c);
    if (c->state == CONN_WS)
        conn_process(c);
}

static void conn_on_write(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *out = bufferevent_get_output(bev);

    if (c->state == CONN_CLOSING) {
        if (evbuffer_get_length(out) == 0 && !c->draining)
            conn_kill(c);
        return;
    }
    if (c->state != CONN_WS)
        return;
    conn_flush(c);
    if (c->read_paused && c->state == CONN_WS && evbuffer_get_length(out) <= OUT_LOW) {
        c->read_paused = false;
        bufferevent_enable(bev, EV_READ);
        conn_process(c);
    }
    conn_check_done(c);
}

static void conn_on_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;

    if (what & BEV_EVENT_CONNECTED) {
        /* TLS: the handshake is done; the HTTP upgrade comes next. */
        c->tls_up = true;
        return;
    }
    if (c->dn->tls && !c->tls_up) {
        /* The client refused our certificate, or spoke something else than TLS. */
        c->dn->n_tls_failures++;
        while (bufferevent_get_openssl_error(bev) != 0)
            ;
        ERR_clear_error();
    }

    /* A peer that only shut down its side still gets what is already written. */
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && !c->draining &&
        (c->state == CONN_WS || c->state == CONN_HTTP))
        conn_close_after_flush(c);
    else
        conn_kill(c);
}

int conn_accept(struct devnode *dn, evutil_socket_t fd)
{
    struct conn *c = calloc(1, sizeof(*c));
    int one = 1;

    if (!c) {
        evutil_closesocket(fd);
        return -ENOMEM;
    }
    /* Replies are small and latency is what the benchmarks measure. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (dn->tls) {
        SSL *ssl = SSL_new(dn->tls);
        /* The bufferevent owns the session (and the socket) from here, also on failure. */
        c->bev = ssl ? bufferevent_openssl_socket_new(dn->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                      BEV_OPT_CLOSE_ON_FREE)
                     : NULL;
        if (c->bev)
            bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
        else if (ssl)
            SSL_free(ssl);
    } else {
        c->bev = bufferevent_socket_new(dn->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    if (!c->bev) {
        evutil_closesocket(fd);
        free(c);
        return -ENOMEM;
    }
    c->dn = dn;
    c->id = ++dn->next_conn_id;
    event_assign(&c->kill_ev, dn->base, -1, 0, conn_on_kill, c);
    evtimer_assign(&c->reorder_ev, dn->base, conn_on_reorder, c);
    c->next = dn->conns;
    if (dn->conns)
        dn->conns->prev = c;
    dn->conns = c;

    struct timeval tv = {HANDSHAKE_TIMEOUT_S, 0};
    bufferevent_setcb(c->bev, conn_on_read, conn_on_write, conn_on_event, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW, 0);
    bufferevent_set_timeouts(c->bev, &tv, NULL);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    return 0;
}
