/*
 * Plain HTTP/1.1 on the local sockets, answered like a node's HTTP endpoint:
 * POST / with a JSON-RPC body (Content-Length, keep-alive, one request at a
 * time so responses stay in order), GET /health for supervisors and GET
 * /metrics for Prometheus. It also recognises the WebSocket upgrade, and
 * applies the browser protection both share: a request carrying an Origin
 * that is not allowed, or a Host that is not a loopback name, is refused
 * before anything reaches the router.
 */
#include <ctype.h>
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "session.h"

static bool str_is(const struct http_str *s, const char *lit)
{
    size_t n = strlen(lit);
    return s->len == n && memcmp(s->p, lit, n) == 0;
}

static const char *status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 411:
        return "Length Required";
    case 413:
        return "Payload Too Large";
    case 431:
        return "Request Header Fields Too Large";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Error";
    }
}

void http_session_respond(struct session *s, int status, const char *content_type,
                          const struct iovec *body, int n, bool close_after)
{
    size_t len = 0;

    if (s->closing)
        return;
    for (int i = 0; i < n; i++)
        len += body[i].iov_len;
    if (close_after)
        s->http_keep = false;
    evbuffer_add_printf(bufferevent_get_output(s->bev),
                        "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s\r\n",
                        status, status_text(status), content_type, len,
                        s->http_keep ? "" : "Connection: close\r\n");
    for (int i = 0; i < n; i++)
        session_write(s, body[i].iov_base, body[i].iov_len);
    s->http_busy = false;
    s->http_replied = true;
    if (!s->http_keep) {
        /* Stop reading; the session closes once the response is flushed. */
        s->http_done = true;
        s->read_eof = true;
        session_read_stop(s);
    } else if (!session_pause_if_over(s)) {
        session_resume(s);
    }
}

/* An error answered with a short text body; most of them end the connection. */
static void respond_text(struct session *s, int status, const char *text, bool close_after)
{
    struct iovec body[2] = {{(void *)text, strlen(text)}, {"\n", 1}};
    http_session_respond(s, status, "text/plain; charset=utf-8", body, 2, close_after);
}

void http_session_emit(struct session *s, const struct iovec *parts, int n)
{
    if (!s->http_busy)
        return;
    http_session_respond(s, 200, "application/json; charset=utf-8", parts, n, false);
}

/* localhost, *.localhost, 127.0.0.0/8 and [::1], with or without a port. */
static bool host_is_loopback(const struct http_str *host)
{
    char name[256];
    size_t n = host->len;
    const char *colon;

    if (n == 0 || n >= sizeof(name))
        return false;
    memcpy(name, host->p, n);
    name[n] = '\0';
    for (size_t i = 0; i < n; i++)
        name[i] = (char)tolower((unsigned char)name[i]);
    if (name[0] == '[')
        return strncmp(name, "[::1]", 5) == 0 && (name[5] == '\0' || name[5] == ':');
    colon = strchr(name, ':');
    if (colon)
        name[colon - name] = '\0';
    n = strlen(name);
    if (strcmp(name, "localhost") == 0 || (n > 10 && strcmp(name + n - 10, ".localhost") == 0))
        return true;
    if (strncmp(name, "127.", 4) == 0) {
        for (const char *p = name + 4; *p; p++)
            if (!isdigit((unsigned char)*p) && *p != '.')
                return false;
        return true;
    }
    return false;
}

/* True when origin is listed in allowed_origins (separated by spaces or commas, or "*"). */
static bool origin_allowed(const char *list, const struct http_str *origin)
{
    const char *p = list;

    while (p && *p) {
        size_t n;
        while (*p == ' ' || *p == ',')
            p++;
        n = strcspn(p, " ,");
        if (n == 0)
            break;
        if ((n == 1 && *p == '*') || (n == origin->len && strncasecmp(p, origin->p, n) == 0))
            return true;
        p += n;
    }
    return false;
}

/*
 * Web pages must not reach the chain through subpool: browsers always send
 * Origin on WebSocket upgrades and cross-site POSTs, and a DNS-rebinding
 * page arrives with a foreign Host. Returns 0 or the HTTP status to refuse with.
 */
static int check_browser(struct session *s, const struct http_head *h, const char **ret_why)
{
    const struct http_str *origin = http_header(h, "Origin");
    const struct http_str *host = http_header(h, "Host");
    const struct config *cfg = s->srv->cfg;

    if (origin && !origin_allowed(cfg->allowed_origins, origin)) {
        *ret_why = "Origin not allowed (see allowed_origins)";
        return 403;
    }
    if (host && !cfg->tcp_allow_remote && !host_is_loopback(host)) {
        *ret_why = "Host is not a loopback name";
        return 403;
    }
    return 0;
}

/*
 * What RFC 9112 and RFC 6455 ask a server to refuse, answered: another major
 * version (505); HTTP/1.1 without Host, and Host, Sec-WebSocket-Key or
 * differing Content-Length given twice (400): a client and subpool must not
 * read different requests out of one head.
 */
static bool head_refused(struct session *s, const struct http_head *h)
{
    const struct http_str *v;
    const char *why = NULL;
    int status = 400;

    if (h->major_version != 1) {
        status = 505;
        why = "only HTTP/1.x is supported";
    } else if (http_header_once(h, "Host", false, &v) < 0) {
        why = "more than one Host header";
    } else if (!v && h->minor_version >= 1) {
        why = "HTTP/1.1 request without Host";
    } else if (http_header_once(h, "Content-Length", true, &v) < 0) {
        why = "conflicting Content-Length headers";
    } else if (http_header_once(h, "Sec-WebSocket-Key", false, &v) < 0) {
        why = "more than one Sec-WebSocket-Key header";
    } else {
        return false;
    }
    if (s->proto == SESSION_PROTO_DETECT)
        session_set_proto(s, SESSION_PROTO_HTTP);
    log_info("session %llu: refused an HTTP request: %s", (unsigned long long)s->id, why);
    respond_text(s, status, why, true);
    return true;
}

/* Peek at the head at the start of the input: 1 parsed, 0 incomplete, -1 refused (answered). */
static int parse_head(struct session *s, struct http_head *h)
{
    struct evbuffer *in = s->in;
    size_t len = evbuffer_get_length(in);
    size_t want = len < HTTP_MAX_HEAD + 1 ? len : HTTP_MAX_HEAD + 1;
    const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)want);
    int r;

    if (!p)
        return 0;
    r = http_parse_request(p, want, h);
    if (r == 0 && len > HTTP_MAX_HEAD)
        r = -2;
    if (r < 0) {
        if (s->proto == SESSION_PROTO_DETECT)
            session_set_proto(s, SESSION_PROTO_HTTP);
        log_info("session %llu: refused a malformed HTTP request head", (unsigned long long)s->id);
        /* At the size limit the head is refused for its size, not its form. */
        if (r == -2 || want >= HTTP_MAX_HEAD)
            respond_text(s, 431, "request head larger than 16 KiB", true);
        else
            respond_text(s, 400, "malformed request head", true);
        evbuffer_drain(in, len);
        return -1;
    }
    if (r == 0 && s->read_eof) {
        evbuffer_drain(in, len); /* a truncated head that will never complete */
        return -1;
    }
    if (r == 0) {
        session_head_due(s);
        return 0;
    }
    session_head_done(s);
    if (head_refused(s, h)) {
        evbuffer_drain(in, len);
        return -1;
    }
    return 1;
}

void http_session_detect(struct session *s)
{
    struct http_head h;
    const char *why = NULL;
    int status;

    if (parse_head(s, &h) <= 0)
        return;
    if (!str_is(&h.method, "GET") || !http_header(&h, "Upgrade") ||
        !http_has_token(http_header(&h, "Upgrade"), "websocket")) {
        session_set_proto(s, SESSION_PROTO_HTTP);
        return; /* http_session_input takes the same head from the buffer */
    }
    status = check_browser(s, &h, &why);
    if (status) {
        log_info("session %llu: refused a websocket upgrade: %s", (unsigned long long)s->id, why);
        session_set_proto(s, SESSION_PROTO_HTTP); /* the refusal is an HTTP response */
        respond_text(s, status, why, true);
        evbuffer_drain(s->in, h.head_len);
        return;
    }
    session_set_proto(s, SESSION_PROTO_WS);
    if (ws_session_upgrade(s, &h) < 0) {
        s->read_eof = true;
        session_read_stop(s);
    }
    evbuffer_drain(s->in, h.head_len);
}

/* Content-Length as a plain decimal; -1 when absent, -2 when malformed. */
static long long content_length(const struct http_head *h)
{
    const struct http_str *v = http_header(h, "Content-Length");
    long long n = 0;

    if (!v)
        return -1;
    if (v->len == 0 || v->len > 15)
        return -2;
    for (size_t i = 0; i < v->len; i++) {
        if (!isdigit((unsigned char)v->p[i]))
            return -2;
        n = n * 10 + (v->p[i] - '0');
    }
    return n;
}

static void serve_health(struct session *s)
{
    unsigned ready = pool_ready(s->srv->pool);
    char body[160];
    struct iovec iov = {body, 0};

    iov.iov_len =
        (size_t)snprintf(body, sizeof(body), "{\"status\":\"%s\",\"ready\":%u,\"pool_size\":%u}\n",
                         ready ? "ok" : "unavailable", ready, s->srv->pool->n);
    http_session_respond(s, ready ? 200 : 503, "application/json", &iov, 1, false);
}

static void serve_metrics(struct session *s)
{
    struct evbuffer *out = evbuffer_new();
    size_t n;

    if (!out) {
        respond_text(s, 503, "out of memory", true);
        return;
    }
    metrics_render(s->srv, out);
    n = evbuffer_get_length(out);
    struct iovec iov = {evbuffer_pullup(out, (ev_ssize_t)n), n};
    if (iov.iov_base)
        http_session_respond(s, 200, "text/plain; version=0.0.4; charset=utf-8", &iov, 1, false);
    else
        respond_text(s, 503, "out of memory", true);
    evbuffer_free(out);
}

/* Serve one request whose head is complete; false when it must wait for more bytes. */
static bool serve_one(struct session *s, const struct http_head *h)
{
    struct evbuffer *in = s->in;
    const struct http_str *conn = http_header(h, "Connection");
    long long cl = content_length(h);
    struct http_str path = h->target;
    const char *why = NULL;
    int status = check_browser(s, h, &why);

    if (status) {
        log_info("session %llu: refused an HTTP request: %s", (unsigned long long)s->id, why);
        respond_text(s, status, why, true);
        return true;
    }
    if (h->minor_version >= 1)
        s->http_keep = !(conn && http_has_token(conn, "close"));
    else
        s->http_keep = conn && http_has_token(conn, "keep-alive");
    for (size_t i = 0; i < path.len; i++)
        if (path.p[i] == '?')
            path.len = i;
    if (http_header(h, "Transfer-Encoding")) {
        respond_text(s, 501, "chunked bodies are not supported; send Content-Length", true);
        return true;
    }
    if (cl == -2) {
        respond_text(s, 400, "malformed Content-Length", true);
        return true;
    }
    if (str_is(&h->method, "POST") && str_is(&path, "/")) {
        char *body;
        if (cl < 0) {
            respond_text(s, 411, "a JSON-RPC POST needs Content-Length", true);
            return true;
        }
        if ((unsigned long long)cl > s->srv->cfg->max_request) {
            respond_text(s, 413, "body exceeds max_request", true);
            return true;
        }
        if (evbuffer_get_length(in) < h->head_len + (size_t)cl) {
            const struct http_str *expect = http_header(h, "Expect");
            /* curl and others wait for this before sending a large body. */
            if (expect && http_has_token(expect, "100-continue") && !s->http_continued) {
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                session_write(s, cont, sizeof(cont) - 1);
                s->http_continued = true;
            }
            return false;
        }
        s->http_continued = false;
        body = malloc((size_t)cl + 1);
        if (!body) {
            respond_text(s, 503, "out of memory", true);
            return true;
        }
        evbuffer_drain(in, h->head_len);
        evbuffer_remove(in, body, (size_t)cl);
        s->http_only = true;
        s->http_busy = true;
        s->http_replied = false;
        session_handle_text(s, body, (size_t)cl);
        free(body);
        /* Only notifications (or nothing): no JSON-RPC reply will come, but HTTP needs one. */
        if (s->http_busy && !s->http_replied && !s->n_requests && TAILQ_EMPTY(&s->batches))
            http_session_respond(s, 200, "application/json", NULL, 0, false);
        return true;
    }
    /* No body is expected from here on; skip one if sent, if it is not too large to wait for. */
    if ((unsigned long long)cl > s->srv->cfg->max_request && cl > 0) {
        respond_text(s, 413, "body exceeds max_request", true);
        return true;
    }
    if (cl > 0 && evbuffer_get_length(in) < h->head_len + (size_t)cl)
        return false;
    /* Route before draining: the head's strings point into the input buffer. */
    bool get = str_is(&h->method, "GET");
    bool health = str_is(&path, "/health"), metrics = str_is(&path, "/metrics");
    bool known = health || metrics || str_is(&path, "/");
    evbuffer_drain(in, h->head_len + (size_t)(cl > 0 ? cl : 0));
    if (get && health)
        serve_health(s);
    else if (get && metrics)
        serve_metrics(s);
    else if (known)
        respond_text(s, 405, "use POST / for JSON-RPC, GET /health or GET /metrics", false);
    else
        respond_text(s, 404, "not found", false);
    return true;
}

void http_session_input(struct session *s)
{
    while (!s->closing && !s->http_busy && !s->http_done) {
        struct http_head h;
        if (evbuffer_get_length(s->in) == 0)
            break;
        /* Pipelined requests wait while this client leaves answers unread. */
        if (session_pause_if_over(s))
            break;
        if (parse_head(s, &h) <= 0 || !serve_one(s, &h))
            break;
    }
    if (s->read_eof && !s->http_busy && evbuffer_get_length(s->in)) {
        /* The client stopped sending in the middle of a request: it will never complete. */
        evbuffer_drain(s->in, evbuffer_get_length(s->in));
    }
}
