/*
 * The pool keeps pool_size upstream websockets on the active endpoint and
 * picks the ready one with the fewest requests in flight. Endpoints come in
 * priority order: the members fill from the first healthy one, move to the
 * next when it fails, and move back once the better one is shown healthy
 * again. Every endpoint other than the active one has a watch link, an
 * upstream that carries no client request: its connection and its answers
 * to chain_getHeader are what "healthy" means, so a move back is checked,
 * never assumed. Each link's best block is polled the same way (the pool's
 * own chain_getHeader, taken off the link before the router sees it), and
 * a link or endpoint whose best block stays behind while another advances
 * is taken out of rotation.
 *
 * It turns upstream events into router calls and endpoint verdicts; every
 * decision that touches links (moving members, starting and retiring watch
 * links) runs from one deferred pass, never inside an upstream callback.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "clock.h"
#include "htab.h"
#include "log.h"
#include "networks.h"
#include "server.h"
#include "subs.h"
#include "upstream.h"

static void pool_schedule(struct pool *p);

/* How logs name an endpoint: its network name, else its URL. */
static const char *ep_name(const struct pool_endpoint *e)
{
    return e->name ? e->name : e->url;
}

static void upstream_opts_of(const struct pool *p, struct upstream_opts *ret)
{
    const struct config *cfg = p->srv->cfg;

    *ret = (struct upstream_opts){
        .max_message = cfg->max_message,
        .connect_timeout_ms = cfg->connect_timeout_ms,
        .ping_interval_ms = cfg->ping_interval_ms,
        .pong_timeout_ms = cfg->pong_timeout_ms,
        .backoff_min_ms = cfg->backoff_min_ms,
        .backoff_max_ms = cfg->backoff_max_ms,
        .close_timeout_ms = cfg->close_timeout_ms,
        .tls = p->tls,
    };
}

static bool link_ready(const struct pool_member *m)
{
    return m->u && upstream_state(m->u) == UPSTREAM_STATE_READY;
}

/*
 * Does another link to e (member or watch link) work right now: READY and
 * has delivered an answer? A link that merely connected does not count: a
 * node that accepts websockets and then never answers would otherwise keep
 * itself looking alive, one fresh link after another.
 */
static bool link_works(const struct pool_member *m)
{
    return m->u && upstream_healthy(m->u);
}

static bool ep_has_working_link(const struct pool *p, const struct pool_endpoint *e,
                                const struct pool_member *except)
{
    for (unsigned i = 0; i < p->n; i++) {
        const struct pool_member *m = &p->members[i];
        if (m != except && m->ep == e && link_works(m))
            return true;
    }
    return e->watch && e->watch != except && link_works(e->watch);
}

static void ep_set_status(struct pool *p, struct pool_endpoint *e, enum endpoint_status st,
                          const char *reason)
{
    if (reason)
        snprintf(e->last_error, sizeof(e->last_error), "%s", reason);
    if (e->status == st)
        return;
    e->status = st;
    e->status_since = clock_wall();
    if (st == ENDPOINT_UP)
        e->up_at_ms = clock_mono_ms();
    if (st == ENDPOINT_DOWN)
        log_warn("pool: endpoint %u (%s) is down: %s", e->index, ep_name(e),
                 reason ? reason : "no answer");
    else if (st == ENDPOINT_UP)
        log_info("pool: endpoint %u (%s) is up", e->index, ep_name(e));
    pool_schedule(p);
}

/* ---- best blocks ---- */

/* "0x1a2b" -> 0x1a2b; false for anything else. */
static bool parse_hex_u64(const char *p, size_t len, uint64_t *ret)
{
    uint64_t v = 0;

    if (len < 3 || len > 18 || p[0] != '0' || (p[1] != 'x' && p[1] != 'X'))
        return false;
    for (size_t i = 2; i < len; i++) {
        char c = p[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else
            return false;
        v = v << 4 | d;
    }
    *ret = v;
    return true;
}

/* The block number of a chain_getHeader result: {"number":"0x..",...}. */
static bool header_number(const char *buf, const struct json_span *result, uint64_t *ret)
{
    struct json_span key, value;
    size_t pos = 0;

    if (result->type != JSON_OBJECT)
        return false;
    while (json_object_next(buf, result, &pos, &key, &value) == 1) {
        if (json_string_eq(buf, &key, "number"))
            return value.type == JSON_STRING && value.len >= 2 &&
                   parse_hex_u64(buf + value.off + 1, value.len - 2, ret);
    }
    return false;
}

static void best_seen(struct pool *p, struct pool_member *l, uint64_t n)
{
    struct pool_endpoint *e = l->ep;
    uint64_t now = clock_mono_ms();
    bool first = !l->best_known;

    if (first) {
        /*
         * A new link to a node stuck at the block its endpoint already
         * reported must not look fresh: it takes over the endpoint's clock.
         * A link ahead of (or behind) what the endpoint showed starts now.
         */
        l->best_known = true;
        l->best = n;
        l->best_at_ms = e->best_known && n == e->best ? e->best_at_ms : now;
        p->srv->head_epoch++;
    } else if (n > l->best) {
        l->best = n;
        l->best_at_ms = now;
        p->srv->head_epoch++; /* a newer block: reads of "latest" are not shared across it */
    }
    if (!e->best_known || n > e->best) {
        e->best_known = true;
        e->best = n;
        e->best_at_ms = now;
    }
    if (e->status != ENDPOINT_UP)
        ep_set_status(p, e, ENDPOINT_UP, NULL);
    /* With several endpoints a new member serves only from its first answer (pool_pick). */
    if (first && !l->watch && p->n_endpoints > 1)
        router_dispatch(p->srv->router);
    pool_schedule(p);
}

/*
 * The pool's own chain_getHeader goes straight onto the link with a string
 * id the router never issues ("subpool-health-N"), and its answer is taken
 * off before the router sees the link's messages: client counters, the
 * in-flight cap, the wait queue and the shutdown drain never see it.
 */
#define HEALTH_ID_PREFIX "\"subpool-health-"
/* Headers are a few hundred bytes; anything longer is not our answer. */
#define HEALTH_REPLY_MAX 16384

/*
 * Asks l's node one of the pool's own questions (method and params), under
 * an id of prefix and a new sequence number, stored in *seq; false when it
 * is not the time (one pending already, the link not ready, closing) or the
 * send failed.
 */
static bool own_ask(struct pool *p, struct pool_member *l, uint64_t *seq, const char *prefix,
                    const char *method, const char *params)
{
    char buf[160];
    int n;

    if (*seq || !link_ready(l) || p->closing || p->srv->stopping)
        return false;
    *seq = ++p->health_next;
    n = snprintf(buf, sizeof(buf),
                 "{\"jsonrpc\":\"2.0\",\"id\":%s%llu\",\"method\":\"%s\",\"params\":%s}", prefix,
                 (unsigned long long)*seq, method, params);
    if (upstream_send(l->u, buf, (size_t)n) != 0) {
        *seq = 0;
        return false;
    }
    return true;
}

static void health_poll(struct pool *p, struct pool_member *l)
{
    if (own_ask(p, l, &l->health_seq, HEALTH_ID_PREFIX, "chain_getHeader", "[]"))
        l->health_sent_ms = clock_mono_ms();
}

enum own_reply { NOT_OURS, OURS_STALE, OURS };

/*
 * Whether msg answers one of the pool's own questions, whose ids are prefix
 * (a JSON string's opening, quote included) and a sequence number: OURS
 * when it answers seq (scanned into *jm), OURS_STALE when it answers one
 * given up on (dropped), NOT_OURS when it is the router's.
 */
static enum own_reply own_reply(const char *msg, size_t len, const char *prefix, uint64_t seq,
                                struct jsonrpc_msg *jm)
{
    size_t plen = strlen(prefix), want_len;
    char want[64];

    if (len > HEALTH_REPLY_MAX || jsonrpc_scan(msg, len, jm) != 0 ||
        jm->kind != JSONRPC_KIND_RESPONSE || jm->id.type != JSON_STRING || jm->id.len <= plen ||
        memcmp(msg + jm->id.off, prefix, plen) != 0)
        return NOT_OURS;
    want_len = (size_t)snprintf(want, sizeof(want), "%s%llu\"", prefix, (unsigned long long)seq);
    if (!seq || jm->id.len != want_len || memcmp(msg + jm->id.off, want, want_len) != 0)
        return OURS_STALE;
    return OURS;
}

/* True when msg answers one of the pool's polls (and was handled); false: it is the router's. */
static bool health_reply(struct pool *p, struct pool_member *l, const char *msg, size_t len)
{
    struct jsonrpc_msg jm;
    uint64_t n;
    enum own_reply r = own_reply(msg, len, HEALTH_ID_PREFIX, l->health_seq, &jm);

    if (r != OURS)
        return r == OURS_STALE; /* an answer to a poll given up on: ours, and dropped */
    l->health_seq = 0;
    if (jm.result.type == JSON_NONE || !header_number(msg, &jm.result, &n)) {
        log_warn("upstream %u (%s): chain_getHeader gave no block number", l->index,
                 ep_name(l->ep));
        return true;
    }
    best_seen(p, l, n);
    return true;
}

/*
 * The chain each endpoint serves: every link, once connected, asks for its
 * genesis hash (chain_getBlockHash [0]), with an id of the pool's own like
 * the health polls. The first endpoint in priority order that told one sets
 * the pool's chain; an endpoint whose genesis differs serves another chain:
 * marked wrong_chain, it carries no traffic and is never made active. With
 * several endpoints a link serves only once its genesis is known
 * (pool_pick); the cache keeps only replies from such links, and empties
 * when the chain changes.
 */
#define GENESIS_ID_PREFIX "\"subpool-genesis-"

static void genesis_poll(struct pool *p, struct pool_member *l)
{
    if (!l->genesis_checked &&
        own_ask(p, l, &l->genesis_seq, GENESIS_ID_PREFIX, "chain_getBlockHash", "[0]"))
        l->genesis_sent_ms = clock_mono_ms();
}

/* Marks each endpoint against the pool's chain: the first one's (in priority) that told it. */
static void chain_update(struct pool *p)
{
    struct pool_endpoint *ref = NULL;
    struct server *srv = p->srv;

    for (unsigned i = 0; i < p->n_endpoints && !ref; i++)
        if (p->endpoints[i].genesis[0])
            ref = &p->endpoints[i];
    if (!ref)
        return;
    for (unsigned i = 0; i < p->n_endpoints; i++) {
        struct pool_endpoint *e = &p->endpoints[i];
        bool wrong = e->genesis[0] && strcmp(e->genesis, ref->genesis) != 0;
        if (wrong == e->wrong_chain)
            continue;
        e->wrong_chain = wrong;
        if (wrong) {
            snprintf(e->last_error, sizeof(e->last_error),
                     "another chain: genesis %.18s..., the pool's is %.18s...", e->genesis,
                     ref->genesis);
            log_warn("pool: endpoint %u (%s) serves another chain (genesis %s; endpoint %u's is "
                     "%s): it carries no traffic",
                     e->index, ep_name(e), e->genesis, ref->index, ref->genesis);
        } else {
            log_info("pool: endpoint %u (%s) serves the pool's chain again", e->index, ep_name(e));
        }
    }
    memcpy(p->chain, ref->genesis, sizeof(p->chain));
    if (srv->pool == p)
        server_chain(srv, p->chain);
    pool_schedule(p);
}

/* True when msg answers the pool's genesis question on l (and was handled). */
static bool genesis_reply(struct pool *p, struct pool_member *l, const char *msg, size_t len)
{
    struct jsonrpc_msg jm;
    enum own_reply r = own_reply(msg, len, GENESIS_ID_PREFIX, l->genesis_seq, &jm);

    if (r != OURS)
        return r == OURS_STALE;
    l->genesis_seq = 0;
    if (jm.result.type != JSON_STRING || jm.result.len != GENESIS_LEN + 2) {
        log_warn("upstream %u (%s): chain_getBlockHash [0] gave no block hash", l->index,
                 ep_name(l->ep));
        return true;
    }
    l->genesis_checked = true;
    memcpy(l->genesis, msg + jm.result.off + 1, GENESIS_LEN);
    l->genesis[GENESIS_LEN] = '\0';
    if (memcmp(l->ep->genesis, msg + jm.result.off + 1, GENESIS_LEN) != 0) {
        memcpy(l->ep->genesis, msg + jm.result.off + 1, GENESIS_LEN);
        l->ep->genesis[GENESIS_LEN] = '\0';
        chain_update(p);
    }
    if (!l->watch)
        router_dispatch(p->srv->router);
    return true;
}

bool pool_member_on_chain(const struct pool_member *m)
{
    const char *chain = m->pool->srv->chain;

    /* Per link: a retiring pool's links, or a balancer's backends, may be on another chain. */
    return m->genesis_checked && chain[0] && strcmp(m->genesis, chain) == 0;
}

static void health_tick(struct pool *p, struct pool_member *l, uint64_t now)
{
    unsigned interval = p->srv->cfg->health_interval_ms;

    if (l->health_seq && link_ready(l) && now - l->health_sent_ms >= interval) {
        /* A link that stopped answering pings is replaced by the upstream itself. */
        log_debug("upstream %u (%s): no answer to chain_getHeader within %u ms", l->index,
                  ep_name(l->ep), interval);
        l->health_seq = 0;
    }
    if (l->genesis_seq && link_ready(l) && now - l->genesis_sent_ms >= interval)
        l->genesis_seq = 0; /* asked again: with several endpoints it serves only once told */
    health_poll(p, l);
    genesis_poll(p, l);
}

static void health_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pool *p = arg;
    uint64_t now = clock_mono_ms();
    (void)fd;
    (void)what;

    for (unsigned i = 0; i < p->n; i++)
        health_tick(p, &p->members[i], now);
    for (unsigned i = 0; i < p->n_endpoints; i++)
        if (p->endpoints[i].watch)
            health_tick(p, p->endpoints[i].watch, now);
    /*
     * Also moves draining members whose last request timed out rather than
     * was answered, and sends what waits for a member whose late pong put it
     * back in rotation (nothing else announces that).
     */
    pool_schedule(p);
    router_dispatch(p->srv->router);
}

/*
 * Stale: the best block has not gone up for stale_block_timeout while some
 * other link (or endpoint) is ahead and went up within that time. Off with
 * a single endpoint, where there is nothing to fall back to.
 */
static bool stale_vs(uint64_t best, uint64_t best_at, uint64_t other, uint64_t other_at,
                     uint64_t now, uint64_t t)
{
    return now - best_at >= t && other > best && now - other_at < t;
}

static void stale_update(struct pool *p)
{
    uint64_t t = p->srv->cfg->stale_block_timeout_ms;
    bool on = t > 0 && p->n_endpoints > 1;
    uint64_t now = clock_mono_ms();
    struct pool_member *links[64 + CONFIG_MAX_UPSTREAMS];
    unsigned n_links = 0;

    for (unsigned i = 0; i < p->n && n_links < 64; i++)
        links[n_links++] = &p->members[i];
    for (unsigned i = 0; i < p->n_endpoints; i++)
        if (p->endpoints[i].watch)
            links[n_links++] = p->endpoints[i].watch;

    for (unsigned i = 0; i < n_links; i++) {
        struct pool_member *l = links[i];
        bool stale = false;
        if (!on || !l->best_known || !link_ready(l)) {
            l->stale = false;
            continue;
        }
        /*
         * Against every other live link, and the other endpoints' record
         * (their links may be moving).
         */
        for (unsigned j = 0; j < n_links && !stale; j++) {
            const struct pool_member *o = links[j];
            stale = o != l && o->best_known && link_ready(o) &&
                    stale_vs(l->best, l->best_at_ms, o->best, o->best_at_ms, now, t);
        }
        for (unsigned j = 0; j < p->n_endpoints && !stale; j++) {
            const struct pool_endpoint *o = &p->endpoints[j];
            stale = o != l->ep && o->best_known &&
                    stale_vs(l->best, l->best_at_ms, o->best, o->best_at_ms, now, t);
        }
        if (stale != l->stale && !l->watch)
            log_info("upstream %u (%s): %s", l->index, ep_name(l->ep),
                     stale ? "best block stuck behind another upstream; out of rotation"
                           : "best block advancing again; back in rotation");
        l->stale = stale;
    }
    for (unsigned i = 0; i < p->n_endpoints; i++) {
        struct pool_endpoint *e = &p->endpoints[i];
        const struct pool_endpoint *ahead = NULL;
        for (unsigned j = 0; on && j < p->n_endpoints && !ahead && e->best_known; j++) {
            const struct pool_endpoint *o = &p->endpoints[j];
            if (o != e && o->best_known &&
                stale_vs(e->best, e->best_at_ms, o->best, o->best_at_ms, now, t))
                ahead = o;
        }
        if (!!ahead != e->stale) {
            if (ahead)
                log_warn("pool: endpoint %u (%s) is stale: best block %llu for %llu ms while "
                         "endpoint %u (%s) is at %llu",
                         e->index, ep_name(e), (unsigned long long)e->best,
                         (unsigned long long)(now - e->best_at_ms), ahead->index, ep_name(ahead),
                         (unsigned long long)ahead->best);
            else
                log_info("pool: endpoint %u (%s) is current again (best block %llu)", e->index,
                         ep_name(e), (unsigned long long)e->best);
            /* Back from stale counts as newly up: the hold-off before returning to it restarts. */
            if (!ahead)
                e->up_at_ms = now;
        }
        e->stale = ahead != NULL;
    }
}

/* ---- upstream callbacks, shared by members and watch links ---- */

static void member_ready(struct upstream *u, void *arg)
{
    struct pool_member *m = arg;
    (void)u;

    m->moving = false;
    m->best_known = false;
    m->stale = false;
    m->health_seq = 0;
    m->genesis_seq = 0;
    m->genesis_checked = false;
    if (!m->watch)
        router_dispatch(m->pool->srv->router);
    /* The deferred pass asks for its best block at once. */
    pool_schedule(m->pool);
}

static void member_message(struct upstream *u, const char *msg, size_t len, void *arg)
{
    struct pool_member *m = arg;
    (void)u;
    if (m->health_seq && health_reply(m->pool, m, msg, len))
        return;
    if (m->genesis_seq && genesis_reply(m->pool, m, msg, len))
        return;
    /* A watch link carries nothing but the pool's polls: anything else is noise. */
    if (m->watch) {
        log_debug("upstream %u: dropped a %zu-byte message on a watch link", m->index, len);
        return;
    }
    router_on_message(m->pool->srv->router, m, msg, len);
    if (m->draining && m->in_flight == 0)
        pool_schedule(m->pool);
}

static void member_oversize(struct upstream *u, bool have_id, uint64_t id, uint64_t len, void *arg)
{
    struct pool_member *m = arg;
    (void)u;
    if (m->watch)
        return;
    router_on_oversize(m->pool->srv->router, m, have_id, id, len);
    if (m->draining && m->in_flight == 0)
        pool_schedule(m->pool);
}

static void member_lost(struct upstream *u, const char *reason, bool unresponsive, void *arg)
{
    struct pool_member *m = arg;
    struct pool *p = m->pool;

    m->best_known = false;
    m->stale = false;
    m->draining = false;
    m->health_seq = 0;
    if (!m->watch) {
        router_on_lost(p->srv->router, m, reason, upstream_lost_too_big(u));
        subs_on_lost(p->srv, m);
    }
    /* A node that stopped answering is down unless another link to it still works. */
    if (unresponsive && !ep_has_working_link(p, m->ep, m))
        ep_set_status(p, m->ep, ENDPOINT_DOWN, reason);
    pool_schedule(p);
}

static void member_failed(struct upstream *u, const char *reason, unsigned retry_after_ms,
                          void *arg)
{
    struct pool_member *m = arg;
    struct pool *p = m->pool;
    (void)u;

    m->moving = false;
    if (retry_after_ms) {
        log_info("upstream %u (%s): the node asks to retry after %u ms", m->index, ep_name(m->ep),
                 retry_after_ms);
        m->ep->retry_at_ms = clock_mono_ms() + retry_after_ms;
    }
    if (!ep_has_working_link(p, m->ep, m))
        ep_set_status(p, m->ep, ENDPOINT_DOWN, reason);
    pool_schedule(p);
}

static void member_closed(struct upstream *u, void *arg)
{
    struct pool_member *m = arg;
    struct pool *p = m->pool;
    (void)u;

    if (m->watch) {
        /* Freed from the deferred pass: the upstream is still inside its own callback. */
        m->closed = true;
        event_active(p->rebalance, 0, 0);
        return;
    }
    p->n_closed++;
    server_maybe_finish(p->srv);
}

static const struct upstream_ops member_ops = {
    .ready = member_ready,
    .message = member_message,
    .oversize = member_oversize,
    .lost = member_lost,
    .failed = member_failed,
    .closed = member_closed,
};

/* ---- watch links ---- */

static void member_init(struct pool *p, struct pool_member *m, unsigned index,
                        struct pool_endpoint *e)
{
    m->pool = p;
    m->index = index;
    m->ep = e;
    TAILQ_INIT(&m->sent);
    TAILQ_INIT(&m->subs);
    TAILQ_INIT(&m->orphans);
}

static void watch_start(struct pool *p, struct pool_endpoint *e)
{
    struct upstream_opts opts;
    struct pool_member *w = calloc(1, sizeof(*w));
    const char *cause = "out of memory";

    upstream_opts_of(p, &opts);
    if (w) {
        member_init(p, w, p->index_base + p->n + e->index, e);
        w->watch = true;
        w->u = upstream_new(p->srv->base, p->srv->dns, w->index, e->url, &opts, &member_ops, w,
                            &cause);
    }
    if (!w || !w->u) {
        /* The next pass tries again; meanwhile the endpoint just cannot be judged. */
        log_error("pool: cannot start a watch link to endpoint %u (%s): %s", e->index, ep_name(e),
                  cause);
        free(w);
        return;
    }
    log_debug("pool: watching endpoint %u (%s)", e->index, ep_name(e));
    TAILQ_INSERT_TAIL(&p->watchers, w, w_link);
    e->watch = w;
    upstream_start(w->u);
}

/* The endpoint became active: its members will show its health; close the watch link. */
static void watch_retire(struct pool *p, struct pool_endpoint *e)
{
    struct pool_member *w = e->watch;

    e->watch = NULL;
    /* Nothing but the pool's own polls ever went on it: the router and subs hold nothing of it. */
    w->health_seq = 0;
    upstream_close(w->u);
}

static void watch_reap(struct pool *p)
{
    struct pool_member *w, *next;

    for (w = TAILQ_FIRST(&p->watchers); w; w = next) {
        next = TAILQ_NEXT(w, w_link);
        if (!w->closed)
            continue;
        TAILQ_REMOVE(&p->watchers, w, w_link);
        upstream_free(w->u);
        free(w);
    }
}

/* ---- moving members ---- */

/* Point m at e and reconnect now (gracefully when READY). */
static void member_retarget(struct pool *p, struct pool_member *m, struct pool_endpoint *e)
{
    const char *cause = NULL;

    if (upstream_set_url(m->u, e->url, &cause) != 0) {
        log_error("upstream %u: cannot move to %s: %s", m->index, e->url, cause ? cause : "");
        return;
    }
    if (m->ep != e)
        log_info("upstream %u: moving from endpoint %u (%s) to endpoint %u (%s)", m->index,
                 m->ep->index, ep_name(m->ep), e->index, ep_name(e));
    m->ep = e;
    m->draining = false;
    m->best_known = false;
    m->stale = false;
    m->moving = true;
    (void)p;
    upstream_reconnect(m->u);
}

/*
 * The first endpoint in priority order fit to carry the pool. The current
 * one stays until it is shown bad; another must be shown good. Leaving a
 * bad endpoint happens at once, but going back to a better one waits until
 * it has stayed up for a health_interval, so that a node that answers once
 * and falls over again does not drag the pool back and forth.
 */
static struct pool_endpoint *choose_active(struct pool *p)
{
    struct pool_endpoint *cur = p->active;
    bool cur_ok = cur->status != ENDPOINT_DOWN && !cur->stale;
    uint64_t now = clock_mono_ms();

    /*
     * An endpoint that has not answered a health poll within a
     * health_interval of becoming active is not shown good: while another
     * one is up, it must not keep the pool (a node that accepts websockets
     * but answers no calls would hold it forever).
     */
    if (cur->status != ENDPOINT_UP && now - p->active_at_ms >= p->srv->cfg->health_interval_ms)
        for (unsigned i = 0; i < p->n_endpoints; i++)
            if (&p->endpoints[i] != cur && p->endpoints[i].status == ENDPOINT_UP &&
                !p->endpoints[i].stale && !p->endpoints[i].wrong_chain)
                cur_ok = false;

    if (cur->wrong_chain)
        cur_ok = false;
    for (unsigned i = 0; i < p->n_endpoints; i++) {
        struct pool_endpoint *e = &p->endpoints[i];
        if (e->stale || e->wrong_chain)
            continue;
        if (e == cur) {
            if (cur_ok)
                return e;
            continue;
        }
        if (e->status != ENDPOINT_UP)
            continue;
        if (cur_ok && e->index < cur->index && now - e->up_at_ms < p->srv->cfg->health_interval_ms)
            continue; /* the health tick looks again */
        return e;
    }
    return cur;
}

static void rebalance(struct pool *p)
{
    struct pool_endpoint *prev = p->active;
    unsigned moving = 0;

    stale_update(p);
    p->active = choose_active(p);
    if (p->active != prev)
        p->active_at_ms = clock_mono_ms();
    if (p->active != prev)
        log_info("pool: endpoint %u (%s) is now active (endpoint %u (%s) is %s)", p->active->index,
                 ep_name(p->active), prev->index, ep_name(prev),
                 prev->stale                      ? "stale"
                 : prev->status == ENDPOINT_DOWN  ? "down"
                 : prev->index > p->active->index ? "a fallback"
                                                  : "not preferred");

    for (unsigned i = 0; i < p->n_endpoints; i++) {
        struct pool_endpoint *e = &p->endpoints[i];
        bool want = p->n_endpoints > 1 && e != p->active;
        /* A node that just asked a member to wait is not asked again by a new watch link. */
        if (want && !e->watch && clock_mono_ms() >= e->retry_at_ms)
            watch_start(p, e);
        else if (!want && e->watch)
            watch_retire(p, e);
    }

    for (unsigned i = 0; i < p->n; i++)
        moving += p->members[i].moving;
    for (unsigned i = 0; i < p->n; i++) {
        struct pool_member *m = &p->members[i];
        enum upstream_state st = upstream_state(m->u);

        if (st == UPSTREAM_STATE_CLOSING || st == UPSTREAM_STATE_CLOSED)
            continue;
        if (m->ep == p->active && !(m->stale && !p->active->stale && st == UPSTREAM_STATE_READY)) {
            /* Where it should be (a drain under way is called off; READY means it arrived). */
            m->draining = false;
            if (st == UPSTREAM_STATE_READY)
                m->moving = false;
            continue;
        }
        if (st != UPSTREAM_STATE_READY) {
            /* Not serving anyway: straight to the active endpoint. */
            member_retarget(p, m, p->active);
            continue;
        }
        /*
         * A working member leaves its endpoint for the active one only once
         * idle, and one at a time so the pool keeps serving meanwhile. One
         * that is stale, or whose endpoint is, leaves at once. A stale member
         * of a current endpoint reconnects to it: behind a load balancer the
         * next connection may reach a node that is not stuck.
         */
        bool urgent = m->stale || m->ep->stale || m->ep->status == ENDPOINT_DOWN;
        if (!m->draining && (urgent || moving == 0)) {
            m->draining = true;
            if (!m->moving) {
                m->moving = true;
                moving++;
            }
        }
        if (m->draining && m->in_flight == 0)
            member_retarget(p, m, p->active);
    }

    /*
     * New links report their best block at once when there are endpoints to
     * choose between; a lone endpoint is only sampled every health_interval.
     */
    for (unsigned i = 0; i < p->n && p->n_endpoints > 1; i++)
        if (!p->members[i].best_known)
            health_poll(p, &p->members[i]);
    for (unsigned i = 0; i < p->n_endpoints; i++)
        if (p->endpoints[i].watch && !p->endpoints[i].watch->best_known)
            health_poll(p, p->endpoints[i].watch);
    /* And every new link tells its chain at once. */
    for (unsigned i = 0; i < p->n; i++)
        genesis_poll(p, &p->members[i]);
    for (unsigned i = 0; i < p->n_endpoints; i++)
        if (p->endpoints[i].watch)
            genesis_poll(p, p->endpoints[i].watch);
}

/* ---- retiring after a reload ---- */

/*
 * Each member closes once it carries nothing: no request in flight (they
 * finish here) and no pinned subscription. One that is not connected has
 * nothing (a loss already retried its requests elsewhere) and must not
 * reconnect. Past the deadline, pinned subscriptions end as on a loss.
 */
static void retire_pass(struct pool *p)
{
    bool late = clock_mono_ms() >= p->retire_deadline;

    for (unsigned i = 0; i < p->n; i++) {
        struct pool_member *m = &p->members[i];
        enum upstream_state st = upstream_state(m->u);

        if (st == UPSTREAM_STATE_CLOSING || st == UPSTREAM_STATE_CLOSED)
            continue;
        if (late && m->n_subs) {
            log_warn("upstream %u: retired pool: %u pinned subscriptions outlived "
                     "request_timeout; ending them",
                     m->index, m->n_subs);
            subs_on_lost(p->srv, m);
        }
        if (st != UPSTREAM_STATE_READY || (m->in_flight == 0 && m->n_subs == 0))
            upstream_close(m->u);
    }
}

static void retire_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pool *p = arg;
    (void)fd;
    (void)what;
    retire_pass(p);
}

static void rebalance_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pool *p = arg;
    (void)fd;
    (void)what;

    watch_reap(p);
    if (p->closing) {
        server_maybe_finish(p->srv);
    } else if (p->retiring) {
        retire_pass(p);
    } else {
        rebalance(p);
        if (p == p->srv->pool_next && pool_can_serve(p))
            server_pool_ready(p->srv, p);
    }
}

static void pool_schedule(struct pool *p)
{
    if (!p->closing)
        event_active(p->rebalance, 0, 0);
}

/* ---- public interface ---- */

struct pool *pool_new(struct server *srv, char *err, size_t errlen)
{
    const struct config *cfg = srv->cfg;
    struct pool *p = calloc(1, sizeof(*p));
    struct upstream_opts opts;
    bool any_tls = false;

    if (!p)
        goto nomem;
    p->srv = srv;
    TAILQ_INIT(&p->watchers);
    p->n_endpoints = cfg->n_upstreams;
    p->endpoints = calloc(p->n_endpoints, sizeof(*p->endpoints));
    p->n = cfg->pool_size;
    p->members = calloc(p->n, sizeof(*p->members));
    p->rebalance = event_new(srv->base, -1, 0, rebalance_cb, p);
    p->health = event_new(srv->base, -1, EV_PERSIST, health_cb, p);
    p->retire = event_new(srv->base, -1, EV_PERSIST, retire_cb, p);
    if (!p->endpoints || !p->members || !p->rebalance || !p->health || !p->retire)
        goto nomem;
    /* Numbers of a replaced pool's links are not reused: logs and status stay unambiguous. */
    p->index_base = srv->next_upstream_index;
    srv->next_upstream_index += p->n + p->n_endpoints;
    for (unsigned i = 0; i < p->n_endpoints; i++) {
        struct pool_endpoint *e = &p->endpoints[i];
        e->index = i;
        /* A copy: the config that named it is freed by the next reload. */
        e->url = strdup(cfg->upstreams[i]);
        if (!e->url)
            goto nomem;
        e->name = network_name_of(e->url);
        e->status_since = clock_wall();
        any_tls |= strncmp(e->url, "wss://", 6) == 0;
    }
    p->active = &p->endpoints[0];
    p->active_at_ms = clock_mono_ms();
    if (any_tls) {
        /* One context for every link: the trust store is read once. */
        p->tls = upstream_tls_new(cfg->tls_ca_file[0] ? cfg->tls_ca_file : NULL, err, errlen);
        if (!p->tls)
            return pool_free(p);
    }
    upstream_opts_of(p, &opts);
    for (unsigned i = 0; i < p->n; i++) {
        struct pool_member *m = &p->members[i];
        const char *cause = "out of memory";
        member_init(p, m, p->index_base + i, p->active);
        m->u = upstream_new(srv->base, srv->dns, m->index, p->active->url, &opts, &member_ops, m,
                            &cause);
        if (!m->u) {
            snprintf(err, errlen, "upstream %s: %s", p->active->url, cause);
            return pool_free(p);
        }
    }
    for (unsigned i = 0; i < p->n; i++)
        upstream_start(p->members[i].u);
    {
        struct timeval tv = {cfg->health_interval_ms / 1000,
                             (suseconds_t)(cfg->health_interval_ms % 1000) * 1000};
        evtimer_add(p->health, &tv);
    }
    /* Watch links for the fallbacks start from the first pass. */
    pool_schedule(p);
    return p;
nomem:
    snprintf(err, errlen, "out of memory");
    return pool_free(p);
}

struct pool *pool_free(struct pool *p)
{
    struct pool_member *w;

    if (!p)
        return NULL;
    for (unsigned i = 0; p->members && i < p->n; i++) {
        /* Only notifications held for a subscribe reply can be left by now. */
        if (p->members[i].pool)
            subs_on_lost(p->srv, &p->members[i]);
        upstream_free(p->members[i].u);
    }
    while ((w = TAILQ_FIRST(&p->watchers))) {
        TAILQ_REMOVE(&p->watchers, w, w_link);
        upstream_free(w->u);
        free(w);
    }
    if (p->rebalance)
        event_free(p->rebalance);
    if (p->health)
        event_free(p->health);
    if (p->retire)
        event_free(p->retire);
    for (unsigned i = 0; p->endpoints && i < p->n_endpoints; i++)
        free((char *)p->endpoints[i].url);
    /* After every upstream: their sessions hold references to it. */
    if (p->tls)
        SSL_CTX_free(p->tls);
    for (unsigned i = 0; p->members && i < p->n; i++)
        htab_free(&p->members[i].subs_by_id);
    free(p->members);
    free(p->endpoints);
    free(p);
    return NULL;
}

/*
 * In rotation: ready, under the cap, not leaving, and not long silent
 * after a ping (when one link of a node stops answering its siblings often
 * have too: a read retried there would be lost twice; better to wait for
 * the verdict in the queue). With several endpoints, a new link also waits
 * for its first answer to chain_getHeader: a node that accepts websockets
 * but answers nothing gets no client request to lose. Stale members only
 * when nothing else is ready.
 */
struct pool_member *pool_pick(struct pool *p)
{
    struct pool_member *best = NULL, *stale = NULL;
    unsigned cap = p->srv->cfg->max_in_flight;

    /* Start from a rotating index so ties do not all land on the first member. */
    p->rotor++;
    for (unsigned k = 0; k < p->n; k++) {
        struct pool_member *m = &p->members[(p->rotor + k) % p->n];
        if (upstream_state(m->u) != UPSTREAM_STATE_READY || m->in_flight >= cap || m->draining ||
            upstream_pong_overdue(m->u) || m->ep->wrong_chain ||
            (p->n_endpoints > 1 && !(m->best_known && m->genesis_checked)))
            continue;
        if (m->stale) {
            if (!stale || m->in_flight < stale->in_flight)
                stale = m;
            continue;
        }
        if (!best || m->in_flight < best->in_flight)
            best = m;
    }
    return best ? best : stale;
}

struct pool_member *pool_pick_sub(struct pool *p)
{
    struct pool_member *best = NULL;
    unsigned cap = p->srv->cfg->max_subs_per_upstream;

    for (unsigned i = 0; i < p->n; i++) {
        struct pool_member *m = &p->members[i];
        if (upstream_state(m->u) != UPSTREAM_STATE_READY || m->n_subs + m->n_subs_pending >= cap ||
            m->draining || m->stale || m->ep->wrong_chain ||
            (p->n_endpoints > 1 && !(m->best_known && m->genesis_checked)))
            continue;
        if (!best || m->n_subs + m->n_subs_pending < best->n_subs + best->n_subs_pending)
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
    struct pool_member *w;

    p->closing = true;
    evtimer_del(p->health);
    evtimer_del(p->retire);
    for (unsigned i = 0; i < p->n; i++)
        upstream_close(p->members[i].u);
    TAILQ_FOREACH(w, &p->watchers, w_link)
    {
        if (w->ep->watch == w)
            w->ep->watch = NULL;
        upstream_close(w->u);
    }
}

bool pool_closed(const struct pool *p)
{
    return p->n_closed == p->n && TAILQ_EMPTY(&p->watchers);
}

bool pool_can_serve(struct pool *p)
{
    unsigned rotor = p->rotor;
    bool r = pool_pick(p) != NULL;

    p->rotor = rotor;
    return r;
}

void pool_retire(struct pool *p)
{
    struct pool_member *w;
    struct timeval tick = {1, 0};

    p->retiring = true;
    p->retire_deadline = clock_mono_ms() + p->srv->cfg->request_timeout_ms;
    evtimer_del(p->health);
    TAILQ_FOREACH(w, &p->watchers, w_link)
    {
        if (w->ep->watch == w)
            w->ep->watch = NULL;
        upstream_close(w->u);
    }
    for (unsigned i = 0; i < p->n; i++) {
        struct pool_member *m = &p->members[i];
        /* Takes no new requests; the router's requests on it finish here. */
        m->draining = true;
        if (link_ready(m))
            subs_move(p->srv, m);
    }
    evtimer_add(p->retire, &tick);
    event_active(p->rebalance, 0, 0);
}

bool pool_config_differs(const struct config *a, const struct config *b)
{
    if (a->n_upstreams != b->n_upstreams || a->pool_size != b->pool_size ||
        strcmp(a->tls_ca_file, b->tls_ca_file) != 0 || a->max_message != b->max_message ||
        a->connect_timeout_ms != b->connect_timeout_ms ||
        a->ping_interval_ms != b->ping_interval_ms || a->pong_timeout_ms != b->pong_timeout_ms ||
        a->backoff_min_ms != b->backoff_min_ms || a->backoff_max_ms != b->backoff_max_ms ||
        a->close_timeout_ms != b->close_timeout_ms ||
        a->health_interval_ms != b->health_interval_ms)
        return true;
    for (unsigned i = 0; i < a->n_upstreams; i++)
        if (strcmp(a->upstreams[i], b->upstreams[i]) != 0)
            return true;
    return false;
}
