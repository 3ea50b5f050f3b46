/*
 * Prometheus text exposition of what subpoold does: requests, errors and
 * latency by method, upstream state, clients by protocol, queue depth and
 * bytes. Rendering happens only when scraped; counting is a few additions.
 */
#include "metrics.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

#include "session.h"
#include "upstream.h"

#include "methods.h"

static const double bucket_le[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                   0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
#define N_BUCKETS (sizeof(bucket_le) / sizeof(bucket_le[0]))

/* Slots: 0 is "(invalid)", 1 "(other)", then one per known method name. */
#define SLOT_OTHER 1
#define SLOT_KNOWN 2
#define N_SLOTS    (SLOT_KNOWN + METHOD_KNOWN_COUNT)

struct method_stat {
    uint64_t n[METRIC_KINDS];
};

struct metrics {
    struct method_stat methods[N_SLOTS];
    uint64_t buckets[N_BUCKETS];
    uint64_t count;
    double sum;
};

struct metrics *metrics_new(void)
{
    return calloc(1, sizeof(struct metrics));
}

struct metrics *metrics_free(struct metrics *m)
{
    free(m);
    return NULL;
}

unsigned metrics_method(struct metrics *m, const char *name, size_t len)
{
    int k = method_known(name, len);
    (void)m;
    return k < 0 ? SLOT_OTHER : SLOT_KNOWN + (unsigned)k;
}

void metrics_count(struct metrics *m, unsigned slot, enum metric_kind kind)
{
    if (slot < N_SLOTS)
        m->methods[slot].n[kind]++;
}

void metrics_count_request(struct metrics *m, unsigned slot)
{
    metrics_count(m, slot, METRIC_REQUESTS);
}

void metrics_count_error(struct metrics *m, unsigned slot)
{
    metrics_count(m, slot, METRIC_ERRORS);
}

void metrics_observe(struct metrics *m, uint64_t ns)
{
    double s = (double)ns / 1e9;
    for (size_t i = 0; i < N_BUCKETS; i++)
        if (s <= bucket_le[i])
            m->buckets[i]++;
    m->count++;
    m->sum += s;
}

/* A label value: backslash, quote and newline escaped as the format requires. */
static void add_label(struct evbuffer *out, const char *p, size_t len)
{
    size_t from = 0;

    for (size_t i = 0; i < len; i++) {
        const char *esc = p[i] == '\\'   ? "\\\\"
                          : p[i] == '"'  ? "\\\""
                          : p[i] == '\n' ? "\\n"
                                         : NULL;
        if (!esc)
            continue;
        evbuffer_add(out, p + from, i - from);
        evbuffer_add(out, esc, 2);
        from = i + 1;
    }
    evbuffer_add(out, p + from, len - from);
}

static const char *method_name(unsigned k)
{
    return k == METRICS_METHOD_INVALID ? "(invalid)"
           : k == SLOT_OTHER           ? "(other)"
                                       : method_known_name(k - SLOT_KNOWN);
}

static void render_methods(const struct metrics *m, struct evbuffer *out, const char *metric,
                           const char *help, enum metric_kind kind)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s counter\n", metric, help, metric);
    for (unsigned k = 0; k < N_SLOTS; k++) {
        uint64_t v = m->methods[k].n[kind];
        if (v)
            evbuffer_add_printf(out, "%s{method=\"%s\"} %llu\n", metric, method_name(k),
                                (unsigned long long)v);
    }
}

void metrics_render(struct server *srv, struct evbuffer *out)
{
    const struct metrics *m = srv->metrics;
    static const char *const proto_names[] = {"detecting", "ndjson", "websocket", "http"};
    struct pool *p = srv->pool;
    uint64_t cum = 0;

    render_methods(m, out, "subpool_requests_total", "Client requests by method.", METRIC_REQUESTS);
    render_methods(m, out, "subpool_request_errors_total",
                   "Error replies by method, from the node or from subpool.", METRIC_ERRORS);
    render_methods(m, out, "subpool_coalesced_total",
                   "Reads that shared an identical read's request to the node, by method.",
                   METRIC_COALESCED);
    render_methods(m, out, "subpool_cache_hits_total",
                   "Reads answered from the reply cache, by method.", METRIC_CACHE_HITS);
    render_methods(m, out, "subpool_cache_misses_total",
                   "Cacheable reads not found in the reply cache, by method.", METRIC_CACHE_MISSES);
    render_methods(m, out, "subpool_cache_stores_total",
                   "Replies kept in the reply cache, by method.", METRIC_CACHE_STORES);
    render_methods(m, out, "subpool_cache_evictions_total",
                   "Replies dropped from the reply cache for room, by method.",
                   METRIC_CACHE_EVICTIONS);
    evbuffer_add_printf(out, "# HELP subpool_request_duration_seconds Time from a request's "
                             "arrival to its reply, for requests sent to a node.\n"
                             "# TYPE subpool_request_duration_seconds histogram\n");
    for (size_t i = 0; i < N_BUCKETS; i++) {
        cum = m->buckets[i];
        evbuffer_add_printf(out, "subpool_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
                            bucket_le[i], (unsigned long long)cum);
    }
    evbuffer_add_printf(out,
                        "subpool_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
                        "subpool_request_duration_seconds_sum %.9f\n"
                        "subpool_request_duration_seconds_count %llu\n",
                        (unsigned long long)m->count, m->sum, (unsigned long long)m->count);

    evbuffer_add_printf(out, "# HELP subpool_upstream_up Whether the upstream websocket is "
                             "ready (1) or not (0).\n# TYPE subpool_upstream_up gauge\n");
    for (unsigned i = 0; i < p->n; i++) {
        const char *url = upstream_url(p->members[i].u);
        evbuffer_add_printf(out, "subpool_upstream_up{upstream=\"%u\",endpoint=\"", i);
        add_label(out, url, strlen(url));
        evbuffer_add_printf(out, "\"} %d\n",
                            upstream_state(p->members[i].u) == UPSTREAM_STATE_READY);
    }
    evbuffer_add_printf(out, "# HELP subpool_upstream_reconnects_total Times the upstream was "
                             "lost after being ready.\n"
                             "# TYPE subpool_upstream_reconnects_total counter\n");
    for (unsigned i = 0; i < p->n; i++)
        evbuffer_add_printf(out, "subpool_upstream_reconnects_total{upstream=\"%u\"} %llu\n", i,
                            (unsigned long long)upstream_reconnects(p->members[i].u));
    evbuffer_add_printf(out, "# HELP subpool_upstream_in_flight Requests sent on the upstream "
                             "and not yet answered.\n# TYPE subpool_upstream_in_flight gauge\n");
    for (unsigned i = 0; i < p->n; i++)
        evbuffer_add_printf(out, "subpool_upstream_in_flight{upstream=\"%u\"} %u\n", i,
                            p->members[i].in_flight);

    evbuffer_add_printf(out, "# HELP subpool_clients Local connections by protocol.\n"
                             "# TYPE subpool_clients gauge\n");
    for (int i = 0; i < SESSION_PROTO_COUNT; i++)
        evbuffer_add_printf(out, "subpool_clients{protocol=\"%s\"} %u\n", proto_names[i],
                            srv->stats.clients_by_proto[i]);
    evbuffer_add_printf(
        out,
        "# HELP subpool_subscriptions Upstream subscriptions held for clients.\n"
        "# TYPE subpool_subscriptions gauge\nsubpool_subscriptions %u\n"
        "# HELP subpool_queue_depth Requests waiting for an upstream.\n"
        "# TYPE subpool_queue_depth gauge\nsubpool_queue_depth %zu\n"
        "# HELP subpool_client_received_bytes_total Bytes read from local clients.\n"
        "# TYPE subpool_client_received_bytes_total counter\n"
        "subpool_client_received_bytes_total %llu\n"
        "# HELP subpool_client_sent_bytes_total Bytes written to local clients.\n"
        "# TYPE subpool_client_sent_bytes_total counter\nsubpool_client_sent_bytes_total %llu\n"
        "# HELP subpool_connections_accepted_total Local connections accepted.\n"
        "# TYPE subpool_connections_accepted_total counter\n"
        "subpool_connections_accepted_total %llu\n"
        "# HELP subpool_queue_evicted_total Waiting requests refused to make room for a client "
        "with fewer waiting.\n"
        "# TYPE subpool_queue_evicted_total counter\nsubpool_queue_evicted_total %llu\n"
        "# HELP subpool_cache_bytes Bytes the reply cache holds.\n"
        "# TYPE subpool_cache_bytes gauge\nsubpool_cache_bytes %llu\n"
        "# HELP subpool_cache_entries Replies the reply cache holds.\n"
        "# TYPE subpool_cache_entries gauge\nsubpool_cache_entries %llu\n",
        srv->n_subs, srv->router->n_queued, (unsigned long long)srv->stats.bytes_in,
        (unsigned long long)srv->stats.bytes_out, (unsigned long long)srv->stats.accepted,
        (unsigned long long)srv->router->evicted, (unsigned long long)srv->cache.bytes,
        (unsigned long long)srv->cache.entries);
}
