/*
 * Methods subpool answers itself: subpool_status (the pool, its upstreams
 * and the load) and subpool_ping. Unknown subpool_* names get -32601.
 */
#include <event2/buffer.h>
#include <string.h>
#include <unistd.h>

#include "server.h"
#include "upstream.h"

static void add_json_string(struct evbuffer *out, const char *s)
{
    char buf[1200];
    size_t n = json_escape(buf, sizeof(buf), s, strlen(s));
    evbuffer_add(out, buf, n);
}

static void status_build(struct server *srv, struct evbuffer *out)
{
    struct pool *p = srv->pool;
    size_t in_flight = 0;

    for (unsigned i = 0; i < p->n; i++)
        in_flight += p->members[i].in_flight;
    evbuffer_add_printf(
        out,
        "{\"version\":\"%s\",\"pid\":%ld,\"uptime\":%lld,\"clients\":%u,"
        "\"in_flight\":%zu,\"queued\":%zu,\"requests\":%llu,"
        "\"responses\":%llu,\"errors\":%llu,\"accepted\":%llu,"
        "\"pool_size\":%u,\"ready\":%u,\"upstreams\":[",
        SUBPOOL_VERSION, (long)getpid(), (long long)(time(NULL) - srv->started), srv->n_sessions,
        in_flight, srv->router->n_queued, (unsigned long long)srv->stats.requests,
        (unsigned long long)srv->stats.responses, (unsigned long long)srv->stats.errors,
        (unsigned long long)srv->stats.accepted, p->n, pool_ready(p));
    for (unsigned i = 0; i < p->n; i++) {
        struct pool_member *m = &p->members[i];
        const char *err = upstream_last_error(m->u);
        evbuffer_add_printf(out, "%s{\"id\":%u,\"endpoint\":", i ? "," : "", m->index);
        add_json_string(out, upstream_url(m->u));
        evbuffer_add_printf(out,
                            ",\"state\":\"%s\",\"since\":%.3f,\"reconnects\":%llu,"
                            "\"in_flight\":%u,\"requests\":%llu,\"last_error\":",
                            upstream_state_name(upstream_state(m->u)), upstream_state_since(m->u),
                            (unsigned long long)upstream_reconnects(m->u), m->in_flight,
                            (unsigned long long)m->requests);
        if (err)
            add_json_string(out, err);
        else
            evbuffer_add(out, "null", 4);
        evbuffer_add(out, "}", 1);
    }
    evbuffer_add(out, "]}", 2);
}

void status_handle(struct server *srv, struct session *s, struct batch *b, const char *buf,
                   const struct jsonrpc_msg *msg)
{
    const char *name = buf + msg->method.off + 1;
    size_t name_len = msg->method.len - 2;
    const char *id = buf + msg->id.off;
    static const char head[] = "{\"jsonrpc\":\"2.0\",\"result\":";
    struct evbuffer *out;

    out = evbuffer_new();
    if (!out) {
        session_error(s, b, id, msg->id.len, JSONRPC_INTERNAL_ERROR, "out of memory");
        return;
    }
    if (name_len == strlen("subpool_status") && memcmp(name, "subpool_status", name_len) == 0) {
        status_build(srv, out);
    } else if (name_len == strlen("subpool_ping") && memcmp(name, "subpool_ping", name_len) == 0) {
        evbuffer_add(out, "\"pong\"", 6);
    } else {
        evbuffer_free(out);
        srv->stats.errors++;
        session_error(s, b, id, msg->id.len, JSONRPC_METHOD_NOT_FOUND, "Method not found");
        return;
    }
    {
        size_t n = evbuffer_get_length(out);
        struct iovec parts[5] = {
            {(void *)head, sizeof(head) - 1},
            {evbuffer_pullup(out, (ev_ssize_t)n), n},
            {",\"id\":", 6},
            {(void *)id, msg->id.len},
            {"}", 1},
        };
        session_deliver(s, b, parts, 5);
    }
    evbuffer_free(out);
}
