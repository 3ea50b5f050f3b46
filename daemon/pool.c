/*
 * The pool keeps pool_size upstream websockets, spread round-robin over the
 * configured endpoints, and picks the ready one with the fewest requests in
 * flight. It turns upstream events into router calls.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "server.h"
#include "upstream.h"

static void member_ready(struct upstream *u, void *arg)
{
    struct pool_member *m = arg;
    (void)u;
    router_dispatch(m->pool->srv->router);
}

static void member_message(struct upstream *u, const char *msg, size_t len, void *arg)
{
    struct pool_member *m = arg;
    (void)u;
    router_on_message(m->pool->srv->router, m, msg, len);
}

static void member_oversize(struct upstream *u, bool have_id, uint64_t id, uint64_t len, void *arg)
{
    struct pool_member *m = arg;
    (void)u;
    router_on_oversize(m->pool->srv->router, m, have_id, id, len);
}

static void member_lost(struct upstream *u, const char *reason, void *arg)
{
    struct pool_member *m = arg;
    (void)u;
    router_on_lost(m->pool->srv->router, m, reason);
}

static void member_closed(struct upstream *u, void *arg)
{
    struct pool_member *m = arg;
    (void)u;
    m->pool->n_closed++;
    server_maybe_finish(m->pool->srv);
}

static const struct upstream_ops member_ops = {
    .ready = member_ready,
    .message = member_message,
    .oversize = member_oversize,
    .lost = member_lost,
    .closed = member_closed,
};

struct pool *pool_new(struct server *srv, char *err, size_t errlen)
{
    const struct config *cfg = srv->cfg;
    struct pool *p = calloc(1, sizeof(*p));
    struct upstream_opts opts = {
        .max_message = cfg->max_message,
        .connect_timeout_ms = cfg->connect_timeout_ms,
        .ping_interval_ms = cfg->ping_interval_ms,
        .pong_timeout_ms = cfg->pong_timeout_ms,
        .backoff_min_ms = cfg->backoff_min_ms,
        .backoff_max_ms = cfg->backoff_max_ms,
        .close_timeout_ms = 2000,
    };

    if (!p)
        goto nomem;
    p->srv = srv;
    p->n = cfg->pool_size;
    p->members = calloc(p->n, sizeof(*p->members));
    if (!p->members)
        goto nomem;
    for (unsigned i = 0; i < p->n; i++) {
        struct pool_member *m = &p->members[i];
        const char *url = cfg->upstreams[i % cfg->n_upstreams];
        const char *cause = "out of memory";
        m->pool = p;
        m->index = i;
        TAILQ_INIT(&m->sent);
        m->u = upstream_new(srv->base, srv->dns, i, url, &opts, &member_ops, m, &cause);
        if (!m->u) {
            snprintf(err, errlen, "upstream %s: %s", url, cause);
            return pool_free(p);
        }
    }
    for (unsigned i = 0; i < p->n; i++)
        upstream_start(p->members[i].u);
    return p;
nomem:
    snprintf(err, errlen, "out of memory");
    return pool_free(p);
}

struct pool *pool_free(struct pool *p)
{
    if (!p)
        return NULL;
    for (unsigned i = 0; p->members && i < p->n; i++)
        upstream_free(p->members[i].u);
    free(p->members);
    free(p);
    return NULL;
}

struct pool_member *pool_pick(struct pool *p)
{
    struct pool_member *best = NULL;
    unsigned cap = p->srv->cfg->max_in_flight;

    /* Start from a rotating index so ties do not all land on the first member. */
    p->rotor++;
    for (unsigned k = 0; k < p->n; k++) {
        struct pool_member *m = &p->members[(p->rotor + k) % p->n];
        if (upstream_state(m->u) != UPSTREAM_STATE_READY || m->in_flight >= cap)
            continue;
        if (!best || m->in_flight < best->in_flight)
            best = m;
    }
    return best;
}

unsigned pool_ready(const struct pool *p)
{
    unsigned n = 0;
    for (unsigned i = 0; i < p->n; i++)
        n += upstream_state(p->members[i].u) == UPSTREAM_STATE_READY;
    return n;
}

void pool_close(struct pool *p)
{
    for (unsigned i = 0; i < p->n; i++)
        upstream_close(p->members[i].u);
}
