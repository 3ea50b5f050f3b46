/*
 * Methods subpool answers itself: subpool_status (the pool, its upstreams
 * and the load) and subpool_ping. Unknown subpool_* names get -32601.
 */
#include <event2/buffer.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "server.h"
#include "subs.h"
#include "upstream.h"

static void add_json_string(struct evbuffer *out, const char *s)
{
    char buf[1200];
    size_t n = json_escape(buf, sizeof(buf), s, strlen(s));
    evbuffer_add(out, buf, n);
}

static void add_opt_string(struct evbuffer *out, const char *s)
{
    if (s)
        add_json_string(out, s);
    else
        evbuffer_add(out, "null", 4);
}

static void add_best(struct evbuffer *out, bool known, uint64_t best)
{
    if (known)
        evbuffer_add_printf(out, "%llu", (unsigned long long)best);
    else
        evbuffer_add(out, "null", 4);
}

/* One pool member or watch link: where it goes, how it is, what it carries. */
static void add_upstream(struct evbuffer *out, const struct pool_member *m, bool first)
{
    evbuffer_add_printf(out, "%s{\"id\":%u,\"role\":\"%s\",\"endpoint\":", first ? "" : ",",
                        m->index, m->watch ? "watch" : "pool");
    add_json_string(out, m->ep->url);
    evbuffer_add(out, ",\"name\":", 8);
    add_opt_string(out, m->ep->name);
    evbuffer_add_printf(out,
                        ",\"priority\":%u,\"state\":\"%s\",\"since\":%.3f,\"reconnects\":%llu,"
                        "\"in_flight\":%u,\"requests\":%llu,\"best\":",
                        m->ep->index, upstream_state_name(upstream_state(m->u)),
                        upstream_state_since(m->u), (unsigned long long)upstream_reconnects(m->u),
                        m->in_flight, (unsigned long long)m->requests);
    add_best(out, m->best_known, m->best);
    evbuffer_add_printf(out, ",\"stale\":%s,\"draining\":%s,\"chain_checked\":%s,\"last_error\":",
                        m->stale ? "true" : "false", m->draining ? "true" : "false",
                        m->genesis_checked ? "true" : "false");
    add_opt_string(out, upstream_last_error(m->u));
    evbuffer_add(out, "}", 1);
}

static void add_endpoints(struct evbuffer *out, const struct pool *p)
{
    static const char *const status_names[] = {"unknown", "up", "down"};

    evbuffer_add_printf(out, ",\"active_endpoint\":%u,\"watchers\":[", p->active->index);
    for (unsigned i = 0, n = 0; i < p->n_endpoints; i++)
        if (p->endpoints[i].watch)
            add_upstream(out, p->endpoints[i].watch, n++ == 0);
    evbuffer_add(out, "],\"endpoints\":[", 15);
    for (unsigned i = 0; i < p->n_endpoints; i++) {
        const struct pool_endpoint *e = &p->endpoints[i];
        evbuffer_add_printf(out, "%s{\"priority\":%u,\"url\":", i ? "," : "", e->index);
        add_json_string(out, e->url);
        evbuffer_add(out, ",\"name\":", 8);
        add_opt_string(out, e->name);
        evbuffer_add_printf(out,
                            ",\"status\":\"%s\",\"since\":%.3f,\"active\":%s,\"stale\":%s,"
                            "\"best\":",
                            status_names[e->status], e->status_since,
                            e == p->active ? "true" : "false", e->stale ? "true" : "false");
        add_best(out, e->best_known, e->best);
        evbuffer_add(out, ",\"genesis\":", 11);
        add_opt_string(out, e->genesis[0] ? e->genesis : NULL);
        evbuffer_add_printf(out, ",\"wrong_chain\":%s", e->wrong_chain ? "true" : "false");
        evbuffer_add(out, ",\"last_error\":", 14);
        add_opt_string(out, e->last_error[0] ? e->last_error : NULL);
        evbuffer_add(out, "}", 1);
    }
    evbuffer_add(out, "]", 1);
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
        "\"in_flight\":%zu,\"queued\":%zu,\"queue_evicted\":%llu,\"coalesced\":%llu,"
        "\"requests\":%llu,"
        "\"responses\":%llu,\"errors\":%llu,\"accepted\":%llu,"
        "\"pool_size\":%u,\"ready\":%u,\"upstreams\":[",
        SUBPOOL_VERSION, (long)getpid(), (long long)(time(NULL) - srv->started), srv->n_sessions,
        in_flight, srv->router->n_queued, (unsigned long long)srv->router->evicted,
        (unsigned long long)srv->router->coalesced, (unsigned long long)srv->stats.requests,
        (unsigned long long)srv->stats.responses, (unsigned long long)srv->stats.errors,
        (unsigned long long)srv->stats.accepted, p->n, pool_ready(p));
    for (unsigned i = 0; i < p->n; i++)
        add_upstream(out, &p->members[i], i == 0);
    evbuffer_add(out, "]", 1);
    add_endpoints(out, p);
    evbuffer_add_printf(out, ",\"upstream_subscriptions\":%u,\"subscriptions\":", srv->n_subs);
    subs_status(srv, out);
    evbuffer_add_printf(
        out,
        ",\"cache\":{\"enabled\":%s,\"bytes\":%llu,\"max_bytes\":%llu,\"entries\":%llu,"
        "\"shared\":%llu,"
        "\"hits\":%llu,\"misses\":%llu,\"stores\":%llu,\"evictions\":%llu}"
        ",\"client_memory\":{\"held\":%llu,\"peak\":%llu,\"budget\":%llu,"
        "\"cuts\":%llu,\"trims\":%llu},\"work\":{\"dispatch_visits\":%llu,\"hash_probes\":%llu}}",
        srv->cfg->cache ? "true" : "false", (unsigned long long)srv->cache.bytes,
        (unsigned long long)srv->cache.max, (unsigned long long)srv->cache.entries,
        (unsigned long long)srv->cache.shared, (unsigned long long)srv->cache.hits,
        (unsigned long long)srv->cache.misses, (unsigned long long)srv->cache.stores,
        (unsigned long long)srv->cache.evictions, (unsigned long long)srv->ledger.total,
        (unsigned long long)srv->ledger.peak, (unsigned long long)srv->ledger.budget,
        (unsigned long long)srv->ledger.cuts, (unsigned long long)srv->ledger.trims,
        (unsigned long long)srv->router->dispatch_visits, (unsigned long long)htab_probes);
}

void status_handle(struct server *srv, struct session *s, struct batch *b, const char *buf,
                   const struct jsonrpc_msg *msg, unsigned slot)
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
    } else if (name_len == strlen("subpool_cacheClear") &&
               memcmp(name, "subpool_cacheClear", name_len) == 0) {
        uint64_t n = srv->cache.entries;
        cache_clear(&srv->cache);
        log_info("reply cache emptied on request: %llu entries", (unsigned long long)n);
        evbuffer_add_printf(out, "%llu", (unsigned long long)n);
    } else {
        evbuffer_free(out);
        srv->stats.errors++;
        metrics_count_error(srv->metrics, slot);
        session_error(s, b, id, msg->id.len, JSONRPC_METHOD_NOT_FOUND, "Method not found");
        return;
    }
    if (evbuffer_get_length(out) && !evbuffer_pullup(out, -1)) {
        session_error(s, b, id, msg->id.len, JSONRPC_INTERNAL_ERROR, "out of memory");
    } else {
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
