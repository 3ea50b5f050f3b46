/*
 * The router gives every forwarded request a fresh integer id, remembers
 * who asked, and sends the node's reply back with the client's own id
 * spliced in byte for byte. It owns timeouts, the wait queue in front of
 * the pool, and what happens to requests when an upstream is lost: reads
 * are retried once elsewhere, writes are never replayed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "methods.h"
#include "metrics.h"
#include "msgbuf.h"
#include "readkey.h"
#include "server.h"
#include "subs.h"
#include "upstream.h"

#define TABLE_MIN 1024
/* How long retries wait after an upstream loss, for the node's other links to report theirs. */
#define RETRY_DELAY_MS 50

/* uids are sequential: their low bits already spread evenly over the buckets. */
static uint32_t uid_hash(uint64_t uid)
{
    return (uint32_t)uid;
}

static void table_insert(struct router *rt, struct request *r)
{
    /* Reserved at start: never fails, and on a failed growth the chains just get longer. */
    (void)htab_insert(&rt->table, &r->hnode, uid_hash(r->uid));
}

static struct request *table_find(struct router *rt, uint64_t uid)
{
    for (struct hnode *e = htab_first(&rt->table, uid_hash(uid)); e; e = htab_next(e)) {
        struct request *r = htab_entry(e, struct request, hnode);
        if (r->uid == uid)
            return r;
    }
    return NULL;
}

static void table_remove(struct router *rt, struct request *r)
{
    htab_remove(&rt->table, &r->hnode);
}

/* The first sent request in bucket i, or NULL: for walks that free what they find. */
static struct request *table_head(struct router *rt, size_t i)
{
    struct hnode *e = rt->table.b[i];
    return e ? htab_entry(e, struct request, hnode) : NULL;
}

static void request_free(struct request *r)
{
    if (!r)
        return;
    if (event_initialized(&r->timer))
        evtimer_del(&r->timer);
    free(r->orig_id);
    free(r->wire);
    free(r->key);
    free(r);
}

/*
 * Clients with requests waiting, in a max-heap by how many: when the queue
 * is full, the one at the top gives up its newest request to a client with
 * fewer (router_submit). Each push or pop of a client's request moves it
 * O(log clients) places. Growth that fails leaves a client out of the heap,
 * which only means it is never the one asked to make room.
 */
static void owner_swap(struct router *rt, unsigned i, unsigned j)
{
    struct qowner *t = rt->owners[i];

    rt->owners[i] = rt->owners[j];
    rt->owners[j] = t;
    rt->owners[i]->at = i + 1;
    rt->owners[j]->at = j + 1;
}

static void owner_up(struct router *rt, unsigned i)
{
    while (i > 0 && rt->owners[(i - 1) / 2]->n < rt->owners[i]->n) {
        owner_swap(rt, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void owner_down(struct router *rt, unsigned i)
{
    for (;;) {
        unsigned l = 2 * i + 1, r = l + 1, big = i;
        if (l < rt->n_owners && rt->owners[l]->n > rt->owners[big]->n)
            big = l;
        if (r < rt->n_owners && rt->owners[r]->n > rt->owners[big]->n)
            big = r;
        if (big == i)
            return;
        owner_swap(rt, i, big);
        i = big;
    }
}

/* One more of qo's requests waits. */
static void owner_more(struct router *rt, struct qowner *qo)
{
    qo->n++;
    if (qo->at) {
        owner_up(rt, qo->at - 1);
        return;
    }
    if (rt->n_owners == rt->owners_cap) {
        unsigned cap = rt->owners_cap ? 2 * rt->owners_cap : 64;
        struct qowner **grown = realloc(rt->owners, cap * sizeof(*grown));
        if (!grown)
            return;
        rt->owners = grown;
        rt->owners_cap = cap;
    }
    rt->owners[rt->n_owners] = qo;
    qo->at = ++rt->n_owners;
    owner_up(rt, qo->at - 1);
}

/* One fewer of qo's requests waits. */
static void owner_less(struct router *rt, struct qowner *qo)
{
    unsigned i;

    qo->n--;
    if (!qo->at)
        return;
    i = qo->at - 1;
    if (qo->n > 0) {
        owner_down(rt, i);
        return;
    }
    qo->at = 0;
    if (i != --rt->n_owners) {
        rt->owners[i] = rt->owners[rt->n_owners];
        rt->owners[i]->at = i + 1;
        owner_down(rt, i);
        owner_up(rt, i);
    }
}

/*
 * Coalescing. A pure read (readkey.h) that is sent leads: until its reply,
 * an identical read from any client follows it instead of going upstream,
 * and gets the same reply with its own id. A read of "latest" follows only
 * a leader first sent in the current head epoch, so it never gets an answer
 * from before a block the daemon has seen. Errors reach every follower. A
 * leader whose client leaves goes on for its followers; one dropped
 * unanswered hands its followers to the first of them, which goes upstream
 * in its place.
 */
static struct request *flight_find(struct router *rt, const struct request *r)
{
    for (struct hnode *e = htab_first(&rt->flights, htab_hash(r->key, r->key_len)); e;
         e = htab_next(e)) {
        struct request *l = htab_entry(e, struct request, fnode);
        if (l->key_len == r->key_len && memcmp(l->key, r->key, r->key_len) == 0 &&
            (!r->latest || l->epoch == rt->srv->head_epoch))
            return l;
    }
    return NULL;
}

/* r follows an identical read in flight, if there is one. */
static bool flight_join(struct router *rt, struct request *r)
{
    struct request *l;

    if (!r->key || r->leading || !TAILQ_EMPTY(&r->followers) || !rt->srv->cfg->coalesce ||
        !(l = flight_find(rt, r)))
        return false;
    r->leader = l;
    TAILQ_INSERT_TAIL(&l->followers, r, f_link);
    rt->coalesced++;
    metrics_count(rt->srv->metrics, r->method_slot, METRIC_COALESCED);
    return true;
}

/* r has just been sent for the first time: identical reads may follow it. */
static void flight_lead(struct router *rt, struct request *r)
{
    if (!r->key || r->leading || !rt->srv->cfg->coalesce)
        return;
    r->leading = true;
    r->epoch = rt->srv->head_epoch;
    /* Reserved at start: never fails (chains get longer if growth does). */
    (void)htab_insert(&rt->flights, &r->fnode, htab_hash(r->key, r->key_len));
}

/* r's followers, taken from it into list (each without a leader now). */
static void flight_take(struct request *r, struct request_list *list)
{
    struct request *f;

    TAILQ_INIT(list);
    while ((f = TAILQ_FIRST(&r->followers))) {
        TAILQ_REMOVE(&r->followers, f, f_link);
        f->leader = NULL;
        TAILQ_INSERT_TAIL(list, f, f_link);
    }
}

/* r goes without an answer: its first follower takes the others over and is returned. */
static struct request *flight_hand_over(struct request *r)
{
    struct request_list list;
    struct request *heir, *f;

    flight_take(r, &list);
    if (!(heir = TAILQ_FIRST(&list)))
        return NULL;
    TAILQ_REMOVE(&list, heir, f_link);
    while ((f = TAILQ_FIRST(&list))) {
        TAILQ_REMOVE(&list, f, f_link);
        f->leader = heir;
        TAILQ_INSERT_TAIL(&heir->followers, f, f_link);
    }
    return heir;
}

/* The wait list r belongs on: its client's, or the router's own. */
static struct waitq *owner_waitq(struct router *rt, struct request *r)
{
    return r->session ? session_waitq(r->session, r->pick) : &rt->internal[r->pick];
}

/* Queue r behind its owner's other waiting requests (in front of them: a retry). */
static void queue_push(struct router *rt, struct request *r, bool front)
{
    struct waitq *wq = owner_waitq(rt, r);

    if (front)
        TAILQ_INSERT_HEAD(&wq->reqs, r, q_link);
    else
        TAILQ_INSERT_TAIL(&wq->reqs, r, q_link);
    if (!wq->on_ring) {
        if (front)
            TAILQ_INSERT_HEAD(&rt->ring[r->pick], wq, link);
        else
            TAILQ_INSERT_TAIL(&rt->ring[r->pick], wq, link);
        wq->on_ring = true;
    }
    r->wq = wq;
    r->queued = true;
    rt->n_queued++;
    rt->n_queued_pick[r->pick]++;
    if (r->session)
        owner_more(rt, session_qowner(r->session));
}

static void queue_remove(struct router *rt, struct request *r)
{
    struct waitq *wq = r->wq;

    TAILQ_REMOVE(&wq->reqs, r, q_link);
    if (TAILQ_EMPTY(&wq->reqs)) {
        TAILQ_REMOVE(&rt->ring[r->pick], wq, link);
        wq->on_ring = false;
    }
    r->wq = NULL;
    r->queued = false;
    rt->n_queued--;
    rt->n_queued_pick[r->pick]--;
    if (r->session)
        owner_less(rt, session_qowner(r->session));
}

/* Some waiting request, or NULL. */
static struct request *queue_any(struct router *rt)
{
    for (int k = 0; k < WAIT_KINDS; k++) {
        struct waitq *wq = TAILQ_FIRST(&rt->ring[k]);
        if (wq)
            return TAILQ_FIRST(&wq->reqs);
    }
    return NULL;
}

/* Take r out of whatever it sits on (the queue or an upstream) and out of its session. */
static void request_unlink(struct router *rt, struct request *r)
{
    if (r->leading) {
        htab_remove(&rt->flights, &r->fnode);
        r->leading = false;
    }
    if (r->leader) {
        TAILQ_REMOVE(&r->leader->followers, r, f_link);
        r->leader = NULL;
    }
    if (r->member) {
        TAILQ_REMOVE(&r->member->sent, r, q_link);
        r->member->in_flight--;
        if (r->pick == REQUEST_PICK_SUBS)
            r->member->n_subs_pending--;
        table_remove(rt, r);
        r->member = NULL;
    } else if (r->queued) {
        queue_remove(rt, r);
    }
    if (r->session)
        session_request_removed(r->session, r);
}

/* Answer r with an error of subpool's own and free it. */
static void request_fail(struct router *rt, struct request *r, int code, const char *message)
{
    struct session *s = r->session;
    struct batch *b = r->batch;
    struct request_list followers;
    struct request *f;

    flight_take(r, &followers);
    while ((f = TAILQ_FIRST(&followers))) {
        TAILQ_REMOVE(&followers, f, f_link);
        request_fail(rt, f, code, message);
    }
    request_unlink(rt, r);
    if (s) {
        rt->srv->stats.errors++;
        metrics_count_error(rt->srv->metrics, r->method_slot);
        session_error(s, b, r->orig_id, r->orig_id_len, code, message);
    } else if (r->done) {
        r->done(r->done_ctx, NULL, NULL, 0, NULL, code, message);
    }
    request_free(r);
}

/* Remembers a request of len bytes that timed out on m: the TIMED_OUT_KEEP largest stay. */
static void timed_out_add(struct pool_member *m, size_t len)
{
    unsigned small = 0;

    for (unsigned i = 1; i < TIMED_OUT_KEEP; i++)
        if (m->timed_out[i] < m->timed_out[small])
            small = i;
    if (len > m->timed_out[small])
        m->timed_out[small] = len;
}

/* The largest request that timed out on m, taken out of the list; 0 if none. */
static size_t timed_out_take(struct pool_member *m, size_t at_least)
{
    unsigned big = 0;

    for (unsigned i = 1; i < TIMED_OUT_KEEP; i++)
        if (m->timed_out[i] > m->timed_out[big])
            big = i;
    if (!m->timed_out[big] || m->timed_out[big] < at_least)
        return 0;
    size_t len = m->timed_out[big];
    m->timed_out[big] = 0;
    return len;
}

static void request_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct request *r = arg;
    struct router *rt = r->rt;
    char msg[160];
    unsigned ms = rt->srv->cfg->request_timeout_ms;

    if (r->leader) {
        /* Its read went upstream, with another's: as if it had itself. */
        snprintf(msg, sizeof(msg), "request timed out after %u ms", ms);
        request_fail(rt, r, SUBPOOL_ERR_TIMEOUT, msg);
    } else if (!r->member) {
        snprintf(msg, sizeof(msg), "no upstream available within %u ms", ms);
        request_fail(rt, r, SUBPOOL_ERR_UNAVAILABLE, msg);
    } else {
        log_info("upstream %u: request %llu timed out after %u ms", r->member->index,
                 (unsigned long long)r->uid, ms);
        /* The node may still refuse it for its size: that must not fall on another. */
        timed_out_add(r->member, r->sent_len);
        snprintf(msg, sizeof(msg), "request timed out after %u ms%s", ms,
                 (r->flags & METHOD_WRITE) ? "; the outcome is unknown" : "");
        request_fail(rt, r, SUBPOOL_ERR_TIMEOUT, msg);
        /* The node may still answer; that reply finds no entry and is dropped. A slot freed. */
        router_dispatch(rt);
    }
    server_maybe_finish(rt->srv);
}

static void dispatch_cb(evutil_socket_t fd, short what, void *arg)
{
    struct router *rt = arg;
    (void)fd;
    (void)what;
    router_dispatch(rt);
    server_maybe_finish(rt->srv);
}

struct router *router_new(struct server *srv)
{
    struct router *rt = calloc(1, sizeof(*rt));
    struct timeval tv;

    if (!rt)
        return NULL;
    rt->srv = srv;
    rt->dispatch = event_new(srv->base, -1, 0, dispatch_cb, rt);
    if (htab_reserve(&rt->table, TABLE_MIN) < 0 || htab_reserve(&rt->flights, TABLE_MIN) < 0 ||
        !rt->dispatch) {
        if (rt->dispatch)
            event_free(rt->dispatch);
        htab_free(&rt->table);
        htab_free(&rt->flights);
        free(rt);
        return NULL;
    }
    for (int k = 0; k < WAIT_KINDS; k++) {
        TAILQ_INIT(&rt->ring[k]);
        TAILQ_INIT(&rt->internal[k].reqs);
    }
    rt->next_uid = 1;
    tv.tv_sec = srv->cfg->request_timeout_ms / 1000;
    tv.tv_usec = (srv->cfg->request_timeout_ms % 1000) * 1000;
    /* Every request shares one duration: a common timeout keeps them in a list, not a heap. */
    rt->timeout_tv = event_base_init_common_timeout(srv->base, &tv);
    return rt;
}

void router_reconfigure(struct router *rt)
{
    const struct config *cfg = rt->srv->cfg;
    struct timeval tv = {cfg->request_timeout_ms / 1000, (cfg->request_timeout_ms % 1000) * 1000};

    /* libevent keeps every common timeout it was given; one per distinct value is cheap. */
    rt->timeout_tv = event_base_init_common_timeout(rt->srv->base, &tv);
}

struct router *router_free(struct router *rt)
{
    struct request *r;

    if (!rt)
        return NULL;
    while ((r = queue_any(rt))) {
        request_unlink(rt, r);
        request_free(r);
    }
    for (size_t i = 0; i < rt->table.size; i++) {
        while ((r = table_head(rt, i))) {
            request_unlink(rt, r);
            request_free(r);
        }
    }
    event_free(rt->dispatch);
    htab_free(&rt->table);
    htab_free(&rt->flights);
    free(rt->owners);
    free(rt);
    return NULL;
}

/* Put r on an upstream; false when none can take it. */
static bool request_send(struct router *rt, struct request *r)
{
    struct pool_member *m;

    switch (r->pick) {
    case REQUEST_PICK_SUBS:
        m = pool_pick_sub(rt->srv->pool);
        break;
    case REQUEST_PICK_TARGET:
        m = upstream_state(r->target->u) == UPSTREAM_STATE_READY ? r->target : NULL;
        break;
    default:
        m = pool_pick(rt->srv->pool);
        break;
    }

    if (!m)
        return false;
    if (upstream_send(m->u, r->wire, r->wire_len) < 0)
        return false;
    r->sent_len = r->wire_len;
    r->member = m;
    m->in_flight++;
    m->requests++;
    if (r->pick == REQUEST_PICK_SUBS)
        m->n_subs_pending++; /* counts against the cap until its reply */
    TAILQ_INSERT_TAIL(&m->sent, r, q_link);
    table_insert(rt, r);
    flight_lead(rt, r);
    return true;
}

/*
 * Requests wait per owner, and owners take turns: each one with requests
 * waiting sends one, then goes to the back of the ring, so one client's 50k
 * queued requests hold another's single call back by one turn, not 50k.
 * Subscriptions wait for a link under the subscription cap, plain requests
 * for one under the in-flight cap: two rings, so one kind that cannot be
 * placed never holds up the other. Each request placed costs O(1); the
 * first that cannot be placed ends its ring's pass.
 */
static void dispatch_kind(struct router *rt, enum request_pick pick)
{
    struct waitq *wq;

    while ((wq = TAILQ_FIRST(&rt->ring[pick]))) {
        struct request *r = TAILQ_FIRST(&wq->reqs);

        rt->dispatch_visits++;
        queue_remove(rt, r);
        if (flight_join(rt, r)) {
            /* Placed: with an identical read sent while it waited. */
        } else if (!request_send(rt, r)) {
            queue_push(rt, r, true); /* its owner keeps its turn */
            return;
        }
        if (wq->on_ring) {
            TAILQ_REMOVE(&rt->ring[pick], wq, link);
            TAILQ_INSERT_TAIL(&rt->ring[pick], wq, link);
        }
    }
}

void router_dispatch(struct router *rt)
{
    dispatch_kind(rt, REQUEST_PICK_LOAD);
    dispatch_kind(rt, REQUEST_PICK_SUBS);
}

/*
 * The queue is full and s has a request to add: the client with the most
 * waiting gives up its newest one, when it has at least two more than s.
 * So one client, or many connections of one, cannot keep another's first
 * request out; between clients with as many waiting, the newcomer is the
 * one refused. Returns whether there is room now.
 */
static bool queue_make_room(struct router *rt, struct session *s)
{
    struct qowner *top = rt->n_owners ? rt->owners[0] : NULL;
    struct request *victim;

    if (!top || top->n < session_qowner(s)->n + 2)
        return false;
    victim =
        TAILQ_LAST(&session_waitq(session_of_qowner(top), REQUEST_PICK_LOAD)->reqs, request_list);
    /* Not one that others' reads follow (a retry after a lost link): they would fail too. */
    if (!victim || !TAILQ_EMPTY(&victim->followers))
        return false;
    rt->evicted++;
    request_fail(rt, victim, SUBPOOL_ERR_UNAVAILABLE,
                 "request queue full: this client had the most requests waiting");
    return true;
}

/* Whether r's reply may come from the cache or go into it: not while the chain is unknown. */
static bool cacheable(const struct router *rt, const struct request *r)
{
    return r->key && !r->latest && (r->traits & READ_CACHE) && rt->srv->cfg->cache &&
           rt->srv->chain[0];
}

/* r answered from the cache, with the client's id, out of the kept message by reference. */
static bool cache_hit(struct router *rt, struct request *r, struct session *s, struct batch *b,
                      const char *id, size_t id_len)
{
    struct cache_hit hit;

    if (!cache_get(&rt->srv->cache, r->key, r->key_len, &hit)) {
        metrics_count(rt->srv->metrics, r->method_slot, METRIC_CACHE_MISSES);
        return false;
    }
    metrics_count(rt->srv->metrics, r->method_slot, METRIC_CACHE_HITS);
    struct iovec parts[3] = {
        {(void *)hit.head, hit.head_len},
        {(void *)id, id_len},
        {(void *)hit.tail, hit.tail_len},
    };
    rt->srv->stats.responses++;
    metrics_observe(rt->srv->metrics, clock_mono_ns() - r->start_ns);
    msgbuf_lend(hit.mb, hit.len);
    session_deliver(s, b, parts, 3);
    msgbuf_lend_end();
    request_free(r);
    return true;
}

void router_submit(struct router *rt, struct session *s, struct batch *b, const char *buf,
                   const struct jsonrpc_msg *msg, unsigned flags, unsigned method_slot)
{
    struct request *r;
    char uid[21];
    size_t uid_len, head, tail;
    const struct json_span *w = &msg->whole, *id = &msg->id;

    r = calloc(1, sizeof(*r));
    if (!r)
        goto fail;
    TAILQ_INIT(&r->followers);
    r->rt = rt;
    r->uid = rt->next_uid++;
    r->flags = flags;
    r->method_slot = method_slot;
    r->start_ns = clock_mono_ns();
    r->orig_id_len = id->len;
    r->orig_id = malloc(id->len);
    uid_len = jsonrpc_format_u64(uid, r->uid);
    head = id->off - w->off;
    tail = w->off + w->len - (id->off + id->len);
    r->wire_len = head + uid_len + tail;
    r->wire = malloc(r->wire_len);
    if (!r->orig_id || !r->wire)
        goto fail;
    memcpy(r->orig_id, buf + id->off, id->len);
    memcpy(r->wire, buf + w->off, head);
    memcpy(r->wire + head, uid, uid_len);
    memcpy(r->wire + head + uid_len, buf + id->off + id->len, tail);
    if (r->wire_len > rt->srv->cfg->max_request) {
        /* The id we put in its place is longer: still, what the node would refuse stays here. */
        char m[128];
        snprintf(m, sizeof(m),
                 "request of %zu bytes as sent to the node exceeds max_request (%llu)", r->wire_len,
                 (unsigned long long)rt->srv->cfg->max_request);
        request_free(r);
        rt->srv->stats.errors++;
        session_error(s, b, buf + id->off, id->len, SUBPOOL_ERR_LIMIT, m);
        return;
    }

    if ((rt->srv->cfg->coalesce || rt->srv->cfg->cache) && flags == 0) {
        enum read_at at;
        size_t cap = (msg->params.type == JSON_NONE ? 0 : msg->params.len) + READ_KEY_EXTRA;
        /* Out of memory here only means this read is not shared. */
        if ((r->key = malloc(cap)) && !(r->key_len = read_key(buf, &msg->method, &msg->params,
                                                              r->key, cap, &at, &r->traits))) {
            free(r->key);
            r->key = NULL;
        } else if (r->key) {
            /* Charged to the client with the request (session.c): exactly its size. */
            char *fit = realloc(r->key, r->key_len);
            if (fit) {
                r->key = fit;
            } else {
                free(r->key);
                r->key = NULL;
                r->key_len = 0;
            }
        }
        r->latest = r->key && at == READ_LATEST;
    }
    if (cacheable(rt, r) && cache_hit(rt, r, s, b, buf + id->off, id->len))
        return;
    r->session = s;
    r->batch = b;
    session_request_added(s, r);
    evtimer_assign(&r->timer, rt->srv->base, request_timeout_cb, r);
    evtimer_add(&r->timer, rt->timeout_tv);

    if (flight_join(rt, r))
        return;
    if (rt->n_queued_pick[REQUEST_PICK_LOAD] == 0 && request_send(rt, r))
        return;
    if (rt->n_queued >= rt->srv->cfg->queue_max && !queue_make_room(rt, s)) {
        char m[96];
        snprintf(m, sizeof(m), "request queue full (%u waiting for an upstream)",
                 rt->srv->cfg->queue_max);
        request_fail(rt, r, SUBPOOL_ERR_UNAVAILABLE, m);
        return;
    }
    queue_push(rt, r, false);
    return;
fail:
    request_free(r);
    rt->srv->stats.errors++;
    session_error(s, b, buf + id->off, id->len, JSONRPC_INTERNAL_ERROR, "out of memory");
}

void router_forget(struct router *rt, struct request *r)
{
    struct request *heir;

    /* A follower is nobody else's concern: it goes. */
    if (r->leader) {
        request_unlink(rt, r);
        request_free(r);
        return;
    }
    /* While stopping, nobody waits for the reply: drop it so shutdown need not wait. */
    if (r->queued || (r->member && rt->srv->stopping)) {
        heir = flight_hand_over(r);
        request_unlink(rt, r);
        request_free(r);
        if (heir) {
            /* Its followers still want the answer: the first asks in its place. */
            queue_push(rt, heir, false);
            event_active(rt->dispatch, 0, 0);
        }
        return;
    }
    /*
     * Sent: keep the entry so the reply is recognised and dropped, and the
     * slot counted. Neither sent nor queued: it is on a list being walked
     * (a retry after an upstream loss), whose owner frees it.
     */
    session_request_removed(r->session, r);
    r->session = NULL;
    r->batch = NULL;
    free(r->wire);
    r->wire = NULL;
    r->wire_len = 0;
    free(r->orig_id);
    r->orig_id = NULL;
}

/* Whether an error object's "code" is code, written as a plain integer. */
static bool error_code_is(const char *msg, const struct json_span *err, int code)
{
    struct json_span key, val;
    size_t pos = 0;
    char text[16];
    int n = snprintf(text, sizeof(text), "%d", code);

    if (err->type != JSON_OBJECT)
        return false;
    while (json_object_next(msg, err, &pos, &key, &val) > 0)
        if (json_string_eq(msg, &key, "code"))
            return val.type == JSON_NUMBER && val.len == (size_t)n &&
                   memcmp(msg + val.off, text, (size_t)n) == 0;
    return false;
}

/* The largest request in flight on m: the one a node's "too big" is charged to. */
static struct request *largest_sent(struct pool_member *m)
{
    struct request *r, *big = NULL;

    TAILQ_FOREACH(r, &m->sent, q_link)
    {
        if (!big || r->sent_len > big->sent_len)
            big = r;
    }
    return big;
}

static void fail_too_big(struct router *rt, struct request *r)
{
    char msg[160];

    log_warn("upstream %u: the node refused a %zu-byte request as too large", r->member->index,
             r->sent_len);
    snprintf(msg, sizeof(msg), "request too large for the node (%zu bytes); it was not retried",
             r->sent_len);
    request_fail(rt, r, SUBPOOL_ERR_LIMIT, msg);
}

/*
 * A node's "too big" on m: charged to the largest request in flight there,
 * unless one at least as large timed out on m since such answers began:
 * then that one was it, and no request in flight is blamed. Each timed-out
 * one explains one answer. (A large one that timed out while the node read
 * it and a smaller one that the node refused later would leave the smaller
 * to time out instead: rarer, and harmless to others.) Returns whether a
 * request failed.
 */
static bool charge_too_big(struct router *rt, struct pool_member *m)
{
    struct request *r = largest_sent(m);
    size_t gone = timed_out_take(m, r ? r->sent_len : 1);

    if (gone) {
        log_warn("upstream %u: the node refused a %zu-byte request as too large, after it "
                 "timed out here",
                 m->index, gone);
        return false;
    }
    if (!r)
        return false;
    fail_too_big(rt, r);
    return true;
}

/* The node's reply msg for r, to r's client with r's own id (if it is still there); r goes. */
static void reply_deliver(struct router *rt, struct request *r, const char *msg,
                          const struct jsonrpc_msg *jm)
{
    struct session *s = r->session;
    struct batch *b = r->batch;

    request_unlink(rt, r);
    if (s) {
        struct iovec parts[3] = {
            {(void *)(msg + jm->whole.off), jm->id.off - jm->whole.off},
            {r->orig_id, r->orig_id_len},
            {(void *)(msg + jm->id.off + jm->id.len),
             jm->whole.off + jm->whole.len - (jm->id.off + jm->id.len)},
        };
        rt->srv->stats.responses++;
        if (jm->error.type != JSON_NONE)
            metrics_count_error(rt->srv->metrics, r->method_slot);
        metrics_observe(rt->srv->metrics, clock_mono_ns() - r->start_ns);
        session_deliver(s, b, parts, 3);
    }
    request_free(r);
}

void router_on_message(struct router *rt, struct pool_member *m, const char *msg, size_t len)
{
    struct jsonrpc_msg jm;
    struct request *r;
    uint64_t uid;
    int err = jsonrpc_scan(msg, len, &jm);

    if (err < 0) {
        log_warn("upstream %u: dropped a message that is not JSON-RPC (%zu bytes, %s)", m->index,
                 len, err == JSONRPC_PARSE_ERROR ? "not JSON" : "invalid envelope");
        return;
    }
    if (jm.kind != JSONRPC_KIND_RESPONSE) {
        subs_on_notification(rt->srv, m, msg, len, &jm);
        return;
    }
    if (jm.id.type == JSON_NULL && error_code_is(msg, &jm.error, JSONRPC_NODE_TOO_BIG)) {
        /*
         * A node (jsonrpsee) that will not read a request for its size says so
         * with a null id: the largest one in flight is the one, even if its
         * client has left (sent_len is kept then).
         */
        charge_too_big(rt, m);
        router_dispatch(rt);
        server_maybe_finish(rt->srv);
        return;
    }
    if (jm.id.type != JSON_NUMBER || !json_to_u64(msg, &jm.id, &uid) ||
        !(r = table_find(rt, uid)) || r->member != m) {
        log_debug("upstream %u: reply for an unknown or expired id", m->index);
        return;
    }
    if (r->done) {
        request_done_fn *done = r->done;
        void *ctx = r->done_ctx;
        request_unlink(rt, r);
        request_free(r);
        done(ctx, m, msg, len, &jm, 0, NULL);
    } else {
        struct request_list followers;
        struct request *f;

        /* Kept when it is a definite answer at a block: never an error, null only for storage. */
        if (cacheable(rt, r) && pool_member_on_chain(m) && jm.error.type == JSON_NONE &&
            (jm.result.type != JSON_NULL || (r->traits & READ_NULL_OK)) &&
            cache_put(&rt->srv->cache, r->key, r->key_len, r->method_slot, msg, len, &jm))
            metrics_count(rt->srv->metrics, r->method_slot, METRIC_CACHE_STORES);
        /* The same reply, each with its own id: by reference into the node's message. */
        flight_take(r, &followers);
        reply_deliver(rt, r, msg, &jm);
        while ((f = TAILQ_FIRST(&followers))) {
            TAILQ_REMOVE(&followers, f, f_link);
            reply_deliver(rt, f, msg, &jm);
        }
    }
    router_dispatch(rt);
    server_maybe_finish(rt->srv);
}

void router_on_oversize(struct router *rt, struct pool_member *m, bool have_id, uint64_t id,
                        uint64_t len)
{
    struct request *r;
    char msg[160];

    if (!have_id || !(r = table_find(rt, id)) || r->member != m) {
        log_warn("upstream %u: dropped a %llu-byte message over max_message with no known id",
                 m->index, (unsigned long long)len);
        return;
    }
    log_warn("upstream %u: reply of %llu bytes to request %llu exceeds max_message", m->index,
             (unsigned long long)len, (unsigned long long)id);
    snprintf(msg, sizeof(msg), "response too large: %llu bytes, max_message is %llu",
             (unsigned long long)len, (unsigned long long)rt->srv->cfg->max_message);
    request_fail(rt, r, SUBPOOL_ERR_LIMIT, msg);
    router_dispatch(rt);
    server_maybe_finish(rt->srv);
}

void router_on_lost(struct router *rt, struct pool_member *m, const char *reason, bool too_big)
{
    struct request_list retry = TAILQ_HEAD_INITIALIZER(retry);
    struct request *r;
    unsigned n_retry = 0, n_failed = 0;

    /* A node that closes with 1009 cannot read what we sent: the largest is why. */
    if (too_big && charge_too_big(rt, m))
        n_failed++;
    /* A new link: what timed out here is forgotten by the node too. */
    memset(m->timed_out, 0, sizeof(m->timed_out));

    while ((r = TAILQ_FIRST(&m->sent))) {
        TAILQ_REMOVE(&m->sent, r, q_link);
        m->in_flight--;
        if (r->pick == REQUEST_PICK_SUBS)
            m->n_subs_pending--;
        table_remove(rt, r);
        r->member = NULL;
        if (!r->session && !r->done) {
            /* Its client left: a follower, if any, asks again in its place. */
            struct request *heir = flight_hand_over(r);
            request_unlink(rt, r);
            request_free(r);
            if (heir) {
                heir->retried = true;
                TAILQ_INSERT_TAIL(&retry, heir, q_link);
                n_retry++;
            }
        } else if (r->pick == REQUEST_PICK_TARGET) {
            request_fail(rt, r, SUBPOOL_ERR_UPSTREAM_LOST, "upstream connection lost");
            n_failed++;
        } else if (r->flags & METHOD_WRITE) {
            request_fail(rt, r, SUBPOOL_ERR_UNKNOWN_WRITE,
                         "upstream connection lost while this write was in flight; "
                         "the outcome is unknown and it was not resent");
            n_failed++;
        } else if (r->retried) {
            request_fail(rt, r, SUBPOOL_ERR_UPSTREAM_LOST,
                         "upstream connection lost twice while this request was in flight");
            n_failed++;
        } else {
            r->retried = true;
            TAILQ_INSERT_TAIL(&retry, r, q_link);
            n_retry++;
        }
    }
    /* Retries go first, in their original order. */
    while ((r = TAILQ_LAST(&retry, request_list))) {
        TAILQ_REMOVE(&retry, r, q_link);
        if (r->session || r->done) {
            queue_push(rt, r, true);
        } else {
            /* Its owner left while the others were failed. */
            struct request *heir = flight_hand_over(r);
            request_unlink(rt, r);
            request_free(r);
            if (heir) {
                heir->retried = true;
                queue_push(rt, heir, true);
            }
        }
    }
    log_info("upstream %u: lost (%s): %u requests to retry, %u failed", m->index, reason, n_retry,
             n_failed);
    subs_on_lost(rt->srv, m);
    /*
     * Resend a moment later, not now: when a node dies, the EOFs of its other
     * links may arrive a little after this one, and a retry sent at once
     * would land on a sibling that is already dead but not yet known to be,
     * using up the request's only retry.
     */
    if (!evtimer_pending(rt->dispatch, NULL)) {
        struct timeval tv = {0, RETRY_DELAY_MS * 1000};
        evtimer_add(rt->dispatch, &tv);
    }
}

struct request *router_internal(struct router *rt, const char *method, const char *params,
                                size_t params_len, unsigned flags, enum request_pick pick,
                                struct pool_member *target, request_done_fn *done, void *ctx)
{
    struct request *r = calloc(1, sizeof(*r));
    char uid[21];
    size_t uid_len, mlen = strlen(method);

    if (!r)
        return NULL;
    TAILQ_INIT(&r->followers);
    r->rt = rt;
    r->uid = rt->next_uid++;
    r->flags = flags;
    r->pick = pick;
    r->target = target;
    r->done = done;
    r->done_ctx = ctx;
    r->start_ns = clock_mono_ns();
    uid_len = jsonrpc_format_u64(uid, r->uid);
    r->wire = malloc(64 + uid_len + mlen + params_len);
    if (!r->wire) {
        free(r);
        return NULL;
    }
    r->wire_len = (size_t)sprintf(
        r->wire, "{\"jsonrpc\":\"2.0\",\"id\":%.*s,\"method\":\"%s\",\"params\":", (int)uid_len,
        uid, method);
    memcpy(r->wire + r->wire_len, params, params_len);
    r->wire_len += params_len;
    r->wire[r->wire_len++] = '}';
    evtimer_assign(&r->timer, rt->srv->base, request_timeout_cb, r);
    evtimer_add(&r->timer, rt->timeout_tv);
    if (pick == REQUEST_PICK_TARGET) {
        /*
         * Bound to one link (an unsubscribe): it skips the queue, and when the
         * link is not ready there is nothing left to do on it.
         */
        if (request_send(rt, r))
            return r;
        request_free(r);
        return NULL;
    }
    if (!(rt->n_queued_pick[pick] == 0 && request_send(rt, r)))
        queue_push(rt, r, false);
    return r;
}

void router_cancel(struct router *rt, struct request *r)
{
    if (r->queued) {
        request_unlink(rt, r);
        request_free(r);
        return;
    }
    /* Sent, or on a retry list being walked: the reply (or the walker) drops it. */
    r->done = NULL;
}

void router_drop_orphans(struct router *rt)
{
    for (size_t i = 0; i < rt->table.size; i++) {
        struct hnode *e = rt->table.b[i], *next;
        for (; e; e = next) {
            struct request *r = htab_entry(e, struct request, hnode);
            next = e->next;
            if (!r->session && !r->done) {
                request_unlink(rt, r);
                request_free(r);
            }
        }
    }
}

void router_fail_all(struct router *rt, int code, const char *message)
{
    struct request *r;

    while ((r = queue_any(rt)))
        request_fail(rt, r, code, message);
    for (size_t i = 0; i < rt->table.size; i++)
        while ((r = table_head(rt, i)))
            request_fail(rt, r, code, message);
}
