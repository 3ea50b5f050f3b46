/*
 * The server side of RFC 6455 for local clients, so that unmodified
 * Substrate clients (the Bittensor SDK, polkadot.js) can use subpoold as if
 * it were a node. The upgrade head is checked here; frames, masking, ping
 * and close are wslay's. Text and binary messages are JSON-RPC; replies go
 * out as text. permessage-deflate is declined by not answering it.
 */
#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "session.h"

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                          void *user_data)
{
    struct session *s = user_data;
    int n;
    (void)flags;

    /*
     * A client over its limits is read no further, here too: wslay answers
     * pings as it reads them, so a flood from a client that never reads
     * would otherwise queue pongs without bound.
     */
    n = session_over_budget(s) ? 0 : evbuffer_remove(s->in, buf, len);
    if (n > 0) {
        /* Now in wslay's buffer, not s->in: still held for this client until the message ends. */
        s->ws_partial += (size_t)n;
        account_charge(s->srv, &s->acct, CHARGE_INPUT, n);
    }
    if (n <= 0) {
        /* Returning 0 would stall wslay: "nothing now" must be WOULDBLOCK. */
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    return n;
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                          void *user_data)
{
    struct session *s = user_data;
    (void)flags;

    if (evbuffer_add(bufferevent_get_output(s->bev), data, len) < 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static void ws_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                      void *user_data)
{
    struct session *s = user_data;
    bool data = arg->opcode == WSLAY_TEXT_FRAME || arg->opcode == WSLAY_BINARY_FRAME;
    /* A control frame ends only itself (its payload and a masked head of 6 bytes). */
    size_t done = data ? s->ws_partial : arg->msg_length + 6;
    (void)ctx;

    if (done > s->ws_partial)
        done = s->ws_partial;
    s->ws_partial -= done;
    account_charge(s->srv, &s->acct, CHARGE_INPUT, -(int64_t)done);
    if (data)
        session_handle_text(s, (const char *)arg->msg, arg->msg_length);
}

static const struct wslay_event_callbacks ws_callbacks = {
    .recv_callback = ws_recv_cb,
    .send_callback = ws_send_cb,
    .on_msg_recv_callback = ws_msg_cb,
};

/* Push queued frames into the output buffer and notice the end of the conversation. */
static void ws_flush(struct session *s)
{
    if (!s->ws)
        return;
    if (!s->ws_finished && !s->ws_in_recv &&
        (wslay_event_send(s->ws) != 0 ||
         (!wslay_event_want_read(s->ws) && !wslay_event_want_write(s->ws)))) {
        s->ws_finished = true;
        session_read_stop(s);
    }
    ws_session_account(s);
}

int ws_session_upgrade(struct session *s, const struct http_head *h)
{
    const struct http_str *key = http_header(h, "Sec-WebSocket-Key");
    const struct http_str *version = http_header(h, "Sec-WebSocket-Version");
    char accept[WS_ACCEPT_LEN + 1];
    struct evbuffer *out = bufferevent_get_output(s->bev);

    if (!version || version->len != 2 || memcmp(version->p, "13", 2) != 0) {
        static const char msg[] = "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"
                                  "Content-Length: 0\r\nConnection: close\r\n\r\n";
        evbuffer_add(out, msg, sizeof(msg) - 1);
        return -1;
    }
    if (!key || ws_accept(key->p, key->len, accept) < 0) {
        static const char msg[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                  "Connection: close\r\n\r\n";
        evbuffer_add(out, msg, sizeof(msg) - 1);
        return -1;
    }
    if (wslay_event_context_server_init(&s->ws, &ws_callbacks, s) != 0) {
        static const char msg[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                  "Connection: close\r\n\r\n";
        evbuffer_add(out, msg, sizeof(msg) - 1);
        s->ws = NULL;
        return -1;
    }
    wslay_event_config_set_max_recv_msg_length(s->ws, s->srv->cfg->max_request);
    evbuffer_add_printf(out,
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                        accept);
    log_debug("session %llu: websocket", (unsigned long long)s->id);
    return 0;
}

void ws_session_input(struct session *s)
{
    if (!s->ws || s->ws_finished)
        return;
    if (session_pause_if_over(s))
        return;
    /* Replies produced while wslay is reading are queued and sent by ws_flush below. */
    s->ws_in_recv = true;
    int r = wslay_event_recv(s->ws);
    s->ws_in_recv = false;
    if (r != 0) {
        log_debug("session %llu: websocket protocol error", (unsigned long long)s->id);
        /* wslay has queued a close frame with the reason; send it, then hang up. */
        wslay_event_send(s->ws);
        ws_session_account(s);
        s->ws_finished = true;
        session_read_stop(s);
        return;
    }
    if (evbuffer_get_length(s->in) && session_pause_if_over(s)) {
        /* Stopped for its limits with input left: flush, and read on once it drains. */
        ws_flush(s);
        return;
    }
    if (s->read_eof && evbuffer_get_length(s->in) == 0) {
        /* TCP EOF without a close frame: nothing more will come, nor be read. */
        s->ws_finished = true;
        return;
    }
    ws_flush(s);
}

void ws_session_emit(struct session *s, const struct iovec *parts, int n)
{
    struct wslay_event_msg msg = {.opcode = WSLAY_TEXT_FRAME};
    size_t len = 0, off = 0;
    uint8_t *buf;

    if (!s->ws || s->ws_finished)
        return;
    for (int i = 0; i < n; i++)
        len += parts[i].iov_len;
    /*
     * With nothing of wslay's waiting to go out, the frame is written
     * directly, head and parts in one writev: no copy, no allocation.
     */
    if (n < SESSION_IOV_MAX && !wslay_event_want_write(s->ws) &&
        !wslay_event_get_close_sent(s->ws)) {
        uint8_t head[WS_HEAD_MAX];
        struct iovec iov[SESSION_IOV_MAX];
        iov[0].iov_base = head;
        iov[0].iov_len = ws_frame_head(head, WSLAY_TEXT_FRAME, len, NULL);
        memcpy(iov + 1, parts, (size_t)n * sizeof(*iov));
        session_send(s, iov, n + 1);
        return;
    }
    buf = malloc(len ? len : 1);
    if (!buf) {
        /* Not closed here: the caller may be delivering to a list this session is on. */
        session_cut(s, "out of memory for a reply");
        return;
    }
    for (int i = 0; i < n; i++) {
        memcpy(buf + off, parts[i].iov_base, parts[i].iov_len);
        off += parts[i].iov_len;
    }
    msg.msg = buf;
    msg.msg_length = len;
    /* wslay copies the message; after close frames it refuses, which is fine. */
    if (wslay_event_queue_msg(s->ws, &msg) != 0)
        log_debug("session %llu: websocket reply dropped after close", (unsigned long long)s->id);
    free(buf);
    ws_flush(s);
}

size_t ws_session_queued(const struct session *s)
{
    return s->ws ? wslay_event_get_queued_msg_length(s->ws) : 0;
}

void ws_session_account(struct session *s)
{
    size_t q = ws_session_queued(s);

    account_charge(s->srv, &s->acct, CHARGE_OUTPUT, (int64_t)q - (int64_t)s->ws_charged);
    s->ws_charged = q;
}

void ws_session_free(struct session *s)
{
    if (s->ws)
        wslay_event_context_free(s->ws);
    s->ws = NULL;
    if (s->ws_charged)
        account_charge(s->srv, &s->acct, CHARGE_OUTPUT, -(int64_t)s->ws_charged);
    s->ws_charged = 0;
}
