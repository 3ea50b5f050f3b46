/*
 * Subscriptions: one struct sub per upstream subscription, one struct
 * subscriber per client subscription. A sub knows how to (re)create itself
 * upstream (method and normalised params), which upstream holds it, its
 * upstream id, and the last notification, so a late joiner gets the current
 * value at once and a re-created sub does not repeat it. Notifications are
 * copied to each subscriber with the subscriber's own id spliced in.
 * Notifications that overtake their subscribe reply wait as orphans on their
 * upstream until the reply names them.
 */
#include "subs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "session.h"
#include "upstream.h"

#define ORPHANS_MAX    256  /* per upstream */
#define ORPHAN_MAX_AGE 10   /* seconds */
#define HELD_MAX       4096 /* notifications held for a subscriber whose reply is in a batch */
#define RETRY_MS       1000 /* re-create a lost sub again after this when it failed */
#define SUB_ID_LEN     18   /* "0123456789abcdef" with quotes */

enum sub_state {
    SUB_SUBSCRIBING, /* an upstream subscribe is queued or in flight */
    SUB_ACTIVE,      /* member and up_id are set */
    SUB_RETRYING,    /* re-creating failed; the retry timer runs */
};

/* One key of a storage subscription and its latest value, both as JSON. */
struct storage_item {
    struct hnode node; /* sub->item_index, by key */
    char *key;
    size_t key_len;
    char *value;
    size_t value_len;
};

struct sub {
    struct server *srv;
    char *key;    /* share key + normalised params; NULL when not shared */
    char *method; /* the subscribe method sent upstream */
    char *unsub;  /* the unsubscribe method, or NULL */
    char *params; /* normalised params sent upstream */
    size_t params_len;
    bool write; /* a watched extrinsic: never replayed */
    enum sub_state state;
    struct pool_member *member;
    char *up_id; /* the upstream subscription id as JSON */
    size_t up_id_len;
    struct request *req; /* the subscribe in flight */
    struct event retry;
    struct hnode shared_node; /* srv->shared, by key */
    struct hnode id_node;     /* member->subs_by_id, by up_id, while active */
    struct subscriber_list subscribers;
    unsigned n_subscribers;
    char *notif_method; /* from the first notification */
    char *last;         /* the last notification's result, for late joiners and dedup */
    size_t last_len;
    /*
     * state_subscribeStorage sends only the keys that changed; a late joiner
     * needs every key, so the latest value of each is kept.
     */
    bool storage;
    struct storage_item **items; /* in the order first seen */
    size_t n_items, cap_items;
    struct htab item_index;
    /*
     * What it holds for its subscribers (the last value, the kept storage
     * values): charged to each of them, so each client's share is in its
     * account; the ledger over-counts a shared value, never under-counts.
     */
    int64_t state_bytes;
    int64_t items_bytes; /* the kept storage keys and values, with their records */
    uint64_t delivered;
    TAILQ_ENTRY(sub) link;   /* srv->subs */
    TAILQ_ENTRY(sub) m_link; /* member->subs */
};

struct subscriber {
    struct sub *sub;
    struct session *session;
    char id[SUB_ID_LEN + 1];
    char *req_id; /* while the subscribe reply is still owed */
    size_t req_id_len;
    struct batch *batch;   /* reply owed inside this batch, or written into it but not out */
    bool announced;        /* the client has its reply: notifications may flow */
    struct evbuffer *held; /* notifications that came before the batch reply went out */
    unsigned n_held;
    int64_t charged;                /* its record, request id and params, charged to the session */
    TAILQ_ENTRY(subscriber) s_link; /* session's list */
    TAILQ_ENTRY(subscriber) sub_link; /* sub->subscribers */
};

struct orphan {
    char *msg;
    size_t len;
    time_t when;
    TAILQ_ENTRY(orphan) link;
};

static void sub_start(struct sub *sub);

static bool json_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Compact JSON text: whitespace outside strings removed. out needs len bytes. */
static size_t compact(const char *p, size_t len, char *out)
{
    size_t n = 0;
    bool in_str = false, esc = false;

    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (json_ws(c)) {
            continue;
        }
        out[n++] = c;
    }
    return n;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * state_subscribeStorage([keys]): the same key set in any order or case is
 * the same subscription. Writes `[["k1","k2",...]]` sorted, lowercased and
 * without duplicates; returns -1 when params are not that shape.
 */
static int storage_params(const char *buf, const struct json_span *params, struct evbuffer *out)
{
    struct json_span keys, k;
    size_t pos = 0, n = 0, cap = 0;
    char **list = NULL;
    int r = -1;

    if (params->type != JSON_ARRAY || json_array_next(buf, params, &pos, &keys) <= 0 ||
        keys.type != JSON_ARRAY)
        return -1;
    pos = 0;
    while (json_array_next(buf, &keys, &pos, &k) > 0) {
        if (k.type != JSON_STRING)
            goto out;
        if (n == cap) {
            char **nl = realloc(list, (cap = cap ? cap * 2 : 8) * sizeof(*list));
            if (!nl)
                goto out;
            list = nl;
        }
        list[n] = malloc(k.len + 1);
        if (!list[n])
            goto out;
        for (size_t i = 0; i < k.len; i++) {
            char c = buf[k.off + i];
            list[n][i] = (c >= 'A' && c <= 'F') ? (char)(c - 'A' + 'a') : c;
        }
        list[n][k.len] = '\0';
        n++;
    }
    qsort(list, n, sizeof(*list), cmp_str);
    evbuffer_add(out, "[[", 2);
    for (size_t i = 0; i < n; i++) {
        if (i && strcmp(list[i], list[i - 1]) == 0)
            continue;
        if (i)
            evbuffer_add(out, ",", 1);
        evbuffer_add(out, list[i], strlen(list[i]));
    }
    evbuffer_add(out, "]]", 2);
    r = 0;
out:
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
    return r;
}

/* The params to send upstream, normalised so equal subscriptions compare equal. */
static char *normalise_params(const char *buf, const struct json_span *params, const char *share,
                              size_t *ret_len)
{
    char *out;

    if (params->type == JSON_NONE || params->type == JSON_NULL) {
        *ret_len = 2;
        return strdup("[]");
    }
    if (share && strcmp(share, "state_subscribeStorage") == 0) {
        struct evbuffer *eb = evbuffer_new();
        size_t n;
        if (!eb)
            return NULL;
        if (storage_params(buf, params, eb) == 0) {
            n = evbuffer_get_length(eb);
            out = malloc(n + 1);
            if (out) {
                evbuffer_remove(eb, out, n);
                out[n] = '\0';
                *ret_len = n;
            }
            evbuffer_free(eb);
            return out;
        }
        evbuffer_free(eb);
    }
    out = malloc(params->len + 1);
    if (!out)
        return NULL;
    *ret_len = compact(buf + params->off, params->len, out);
    out[*ret_len] = '\0';
    return out;
}

static void sub_count(struct server *srv, int delta)
{
    srv->n_subs = (unsigned)((int)srv->n_subs + delta);
}

static void sub_detach_member(struct sub *sub)
{
    if (!sub->member)
        return;
    htab_remove(&sub->member->subs_by_id, &sub->id_node);
    TAILQ_REMOVE(&sub->member->subs, sub, m_link);
    sub->member->n_subs--;
    sub->member = NULL;
    free(sub->up_id);
    sub->up_id = NULL;
    sub->up_id_len = 0;
}

static void sub_free(struct sub *sub)
{
    sub_detach_member(sub);
    if (sub->req)
        router_cancel(sub->srv->router, sub->req);
    if (event_initialized(&sub->retry))
        evtimer_del(&sub->retry);
    TAILQ_REMOVE(&sub->srv->subs, sub, link);
    if (sub->key)
        htab_remove(&sub->srv->shared, &sub->shared_node);
    sub_count(sub->srv, -1);
    account_hold(sub->srv, -sub->state_bytes);
    free(sub->key);
    free(sub->method);
    free(sub->unsub);
    free(sub->params);
    free(sub->notif_method);
    free(sub->last);
    for (size_t i = 0; i < sub->n_items; i++) {
        free(sub->items[i]->key);
        free(sub->items[i]->value);
        free(sub->items[i]);
    }
    free(sub->items);
    htab_free(&sub->item_index);
    free(sub);
}

static char *memdup(const char *p, size_t n)
{
    char *c = malloc(n ? n : 1);
    if (c)
        memcpy(c, p, n);
    return c;
}

/* The kept item of a storage key, added (without a value) when new; NULL when out of memory. */
static struct storage_item *storage_item_get(struct sub *sub, const char *key, size_t len)
{
    uint32_t h = htab_hash(key, len);
    struct storage_item *it;

    for (struct hnode *e = htab_first(&sub->item_index, h); e; e = htab_next(e)) {
        it = htab_entry(e, struct storage_item, node);
        if (it->key_len == len && memcmp(it->key, key, len) == 0)
            return it;
    }
    if (sub->n_items >= sub->srv->cfg->max_subscription_keys)
        return NULL; /* a node sending keys nobody asked for: not kept */
    if (sub->n_items == sub->cap_items) {
        size_t cap = sub->cap_items ? sub->cap_items * 2 : 16;
        struct storage_item **ni = realloc(sub->items, cap * sizeof(*ni));
        if (!ni)
            return NULL;
        sub->items = ni;
        sub->cap_items = cap;
    }
    it = calloc(1, sizeof(*it));
    if (!it || !(it->key = memdup(key, len)) || htab_insert(&sub->item_index, &it->node, h) < 0) {
        if (it)
            free(it->key);
        free(it);
        return NULL;
    }
    it->key_len = len;
    sub->items[sub->n_items++] = it;
    sub->items_bytes += (int64_t)(sizeof(*it) + sizeof(it) + len);
    return it;
}

/* Fold one storage notification's changes into the kept values: O(1) per change. */
static void storage_merge(struct sub *sub, const char *res, size_t len)
{
    struct json_span whole = {0, len, JSON_OBJECT}, key, val, changes = {0}, pair, k, v;
    size_t pos = 0;

    if (json_validate(res, len, &whole) < 0 || whole.type != JSON_OBJECT)
        return;
    while (json_object_next(res, &whole, &pos, &key, &val) > 0)
        if (json_string_eq(res, &key, "changes") && val.type == JSON_ARRAY)
            changes = val;
    if (changes.type != JSON_ARRAY)
        return;
    pos = 0;
    while (json_array_next(res, &changes, &pos, &pair) > 0) {
        struct storage_item *item;
        size_t ppos = 0;
        if (pair.type != JSON_ARRAY || json_array_next(res, &pair, &ppos, &k) <= 0 ||
            json_array_next(res, &pair, &ppos, &v) <= 0)
            continue;
        item = storage_item_get(sub, res + k.off, k.len);
        if (!item)
            return;
        char *nv = memdup(res + v.off, v.len);
        if (!nv)
            return;
        sub->items_bytes += (int64_t)v.len - (int64_t)item->value_len;
        free(item->value);
        item->value = nv;
        item->value_len = v.len;
    }
}

/* {"block":<the latest>,"changes":[[key,value],...every key...]} for a late joiner. */
static char *storage_current(const struct sub *sub, size_t *ret_len)
{
    struct evbuffer *eb = evbuffer_new();
    struct json_span whole = {0, sub->last_len, JSON_OBJECT}, key, val, block = {0};
    size_t pos = 0, n;
    char *out = NULL;
    bool first = true;

    if (!eb)
        return NULL;
    if (json_validate(sub->last, sub->last_len, &whole) == 0 && whole.type == JSON_OBJECT)
        while (json_object_next(sub->last, &whole, &pos, &key, &val) > 0)
            if (json_string_eq(sub->last, &key, "block"))
                block = val;
    evbuffer_add(eb, "{\"block\":", 9);
    if (block.type != JSON_NONE)
        evbuffer_add(eb, sub->last + block.off, block.len);
    else
        evbuffer_add(eb, "null", 4);
    evbuffer_add(eb, ",\"changes\":[", 12);
    for (size_t i = 0; i < sub->n_items; i++) {
        const struct storage_item *it = sub->items[i];
        if (!it->value)
            continue;
        evbuffer_add(eb, first ? "[" : ",[", first ? 1 : 2);
        evbuffer_add(eb, it->key, it->key_len);
        evbuffer_add(eb, ",", 1);
        evbuffer_add(eb, it->value, it->value_len);
        evbuffer_add(eb, "]", 1);
        first = false;
    }
    evbuffer_add(eb, "]}", 2);
    n = evbuffer_get_length(eb);
    out = malloc(n);
    if (out) {
        evbuffer_remove(eb, out, n);
        *ret_len = n;
    }
    evbuffer_free(eb);
    return out;
}

/* Ask the node holding sub to end it; its answer is not waited for. */
static void sub_unsubscribe_upstream(struct sub *sub)
{
    size_t n = sub->up_id_len + 2;
    char *params;

    if (!sub->unsub || !sub->member || !(params = malloc(n)))
        return;
    params[0] = '[';
    memcpy(params + 1, sub->up_id, sub->up_id_len);
    params[n - 1] = ']';
    router_internal(sub->srv->router, sub->unsub, params, n, 0, REQUEST_PICK_TARGET, sub->member,
                    NULL, NULL);
    free(params);
}

/* End the upstream side of a sub nobody wants any more. */
static void sub_release(struct sub *sub)
{
    if (sub->state == SUB_SUBSCRIBING && sub->req && sub->req->member) {
        /* Sent: the reply will create it upstream; sub_subscribed ends it then. */
        return;
    }
    if (sub->state == SUB_ACTIVE && sub->unsub && sub->member) {
        sub_unsubscribe_upstream(sub);
        log_debug("upstream %u: unsubscribed %s (no subscribers left)", sub->member->index,
                  sub->method);
    }
    sub_free(sub);
}

/* Its subscribe reply is out (or never will be): it no longer counts as in flight. */
static void subscriber_answered(struct subscriber *sb)
{
    if (!sb->req_id)
        return;
    free(sb->req_id);
    sb->req_id = NULL;
    sb->session->n_subs_pending--;
    session_maybe_resume(sb->session);
}

/* Notifications held for sb, and what they were charged. */
static void held_drop(struct subscriber *sb)
{
    if (!sb->held)
        return;
    account_charge(sb->session->srv, &sb->session->acct, CHARGE_SUBS,
                   -(int64_t)evbuffer_get_length(sb->held));
    evbuffer_free(sb->held);
    sb->held = NULL;
    sb->n_held = 0;
}

/* Take a subscriber off its sub and session and free it; the sub is left as it is. */
static void subscriber_unlink(struct subscriber *sb)
{
    struct session *s = sb->session;

    TAILQ_REMOVE(&sb->sub->subscribers, sb, sub_link);
    sb->sub->n_subscribers--;
    TAILQ_REMOVE(session_subscribers(s), sb, s_link);
    s->n_subscribers--;
    held_drop(sb);
    subscriber_answered(sb);
    account_charge(s->srv, &s->acct, CHARGE_SUBS, -sb->charged);
    account_charge_shared(s->srv, &s->acct, CHARGE_SUBS, -sb->sub->state_bytes);
    free(sb);
}

/* Free every subscriber, then the sub: its upstream side is already gone or ends itself. */
static void sub_drop(struct sub *sub)
{
    struct subscriber *sb;
    while ((sb = TAILQ_FIRST(&sub->subscribers)))
        subscriber_unlink(sb);
    sub_free(sub);
}

static void subscriber_free(struct subscriber *sb)
{
    struct sub *sub = sb->sub;

    subscriber_unlink(sb);
    if (sub->n_subscribers == 0)
        sub_release(sub);
}

/* A message for one subscriber: msg with the subscription value replaced by its id. */
static void subscriber_send(struct subscriber *sb, const char *msg, size_t before, size_t after_off,
                            size_t len)
{
    struct iovec parts[3] = {
        {(void *)msg, before},
        {sb->id, SUB_ID_LEN},
        {(void *)(msg + after_off), len - after_off},
    };

    if (sb->announced) {
        session_deliver(sb->session, NULL, parts, 3);
        return;
    }
    if (!sb->held && !(sb->held = evbuffer_new()))
        return;
    if (sb->n_held >= HELD_MAX)
        return; /* a batch this slow has bigger problems; the client is told by the gap */
    uint32_t n = (uint32_t)len - (uint32_t)(after_off - before) + SUB_ID_LEN;
    evbuffer_add(sb->held, &n, sizeof(n));
    for (int i = 0; i < 3; i++)
        evbuffer_add(sb->held, parts[i].iov_base, parts[i].iov_len);
    sb->n_held++;
    account_charge(sb->session->srv, &sb->session->acct, CHARGE_SUBS, (int64_t)(sizeof(n) + n));
}

/* A synthetic notification {"jsonrpc","method","params":{"subscription","result"|"error"}}. */
static void subscriber_notify(struct subscriber *sb, const char *method, const char *member,
                              const char *value, size_t value_len)
{
    struct evbuffer *eb = evbuffer_new();
    size_t before, n;
    const char *p;

    if (!eb)
        return;
    bool ok = evbuffer_add_printf(eb,
                                  "{\"jsonrpc\":\"2.0\",\"method\":\"%s\",\"params\":{"
                                  "\"subscription\":",
                                  method) > 0;
    before = evbuffer_get_length(eb);
    ok = ok && evbuffer_add(eb, sb->id, SUB_ID_LEN) == 0 &&
         evbuffer_add_printf(eb, ",\"%s\":", member) > 0 &&
         evbuffer_add(eb, value, value_len) == 0 && evbuffer_add(eb, "}}", 2) == 0;
    n = evbuffer_get_length(eb);
    p = ok ? (const char *)evbuffer_pullup(eb, (ev_ssize_t)n) : NULL;
    if (p)
        subscriber_send(sb, p, before, before + SUB_ID_LEN, n);
    else
        session_cut(sb->session, "out of memory for a notification");
    evbuffer_free(eb);
}

/* The reply owed to a new subscriber: its own id as the result. */
static void subscriber_reply(struct subscriber *sb)
{
    static const char head[] = "{\"jsonrpc\":\"2.0\",\"result\":";
    struct iovec parts[5] = {
        {(void *)head, sizeof(head) - 1},
        {sb->id, SUB_ID_LEN},
        {",\"id\":", 6},
        {sb->req_id, sb->req_id_len},
        {"}", 1},
    };
    struct batch *b = sb->batch;
    char *req_id = sb->req_id;

    /*
     * No longer owed before it is delivered: delivering may complete its
     * batch, which is when subs_batch_done releases held notifications.
     */
    sb->req_id = NULL;
    sb->session->n_subs_pending--;
    sb->announced = b == NULL;
    session_deliver(sb->session, b, parts, 5);
    free(req_id);
    session_maybe_resume(sb->session);
}

/* The current value to a subscriber that just got its reply. */
static void subscriber_catch_up(struct subscriber *sb)
{
    struct sub *sub = sb->sub;
    size_t len;
    char *cur;

    if (!sub->last || !sub->notif_method)
        return;
    if (sub->storage && (cur = storage_current(sub, &len))) {
        subscriber_notify(sb, sub->notif_method, "result", cur, len);
        free(cur);
        return;
    }
    subscriber_notify(sb, sub->notif_method, "result", sub->last, sub->last_len);
}

/* End every subscriber of sub with a final error notification, then the sub itself. */
static void sub_end(struct sub *sub, int code, const char *message)
{
    struct subscriber *sb;
    char err[400], text[300];
    int n;

    json_escape(text, sizeof(text), message, strlen(message));
    n = snprintf(err, sizeof(err), "{\"code\":%d,\"message\":%s}", code, text);
    log_info("subscription %s ended for %u clients: %s", sub->method, sub->n_subscribers, message);
    TAILQ_FOREACH(sb, &sub->subscribers, sub_link)
    {
        if (sb->req_id) {
            session_error(sb->session, sb->batch, sb->req_id, sb->req_id_len, code, message);
        } else {
            subscriber_notify(sb, sub->notif_method ? sub->notif_method : sub->method, "error", err,
                              (size_t)n);
        }
    }
    sub_drop(sub);
}

static void orphans_expire(struct pool_member *m, time_t now)
{
    struct orphan *o;
    while ((o = TAILQ_FIRST(&m->orphans)) && now - o->when > ORPHAN_MAX_AGE) {
        TAILQ_REMOVE(&m->orphans, o, link);
        m->n_orphans--;
        free(o->msg);
        free(o);
    }
}

static void orphans_free(struct pool_member *m)
{
    orphans_expire(m, (time_t)1 << 62);
}

static bool sub_deliver(struct sub *sub, const char *msg, size_t len, const struct jsonrpc_msg *jm);

/* Notifications for sub that arrived before its subscribe reply, in arrival order. */
static void orphans_adopt(struct sub *sub)
{
    struct pool_member *m = sub->member;
    struct orphan *o, *next;

    for (o = TAILQ_FIRST(&m->orphans); o; o = next) {
        struct jsonrpc_msg jm;
        next = TAILQ_NEXT(o, link);
        if (jsonrpc_scan(o->msg, o->len, &jm) < 0 || jm.sub.len != sub->up_id_len ||
            memcmp(o->msg + jm.sub.off, sub->up_id, sub->up_id_len) != 0)
            continue;
        TAILQ_REMOVE(&m->orphans, o, link);
        m->n_orphans--;
        bool alive = sub_deliver(sub, o->msg, o->len, &jm);
        free(o->msg);
        free(o);
        if (!alive)
            break;
    }
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sub_start(arg);
}

static void sub_subscribed(void *ctx, struct pool_member *m, const char *msg, size_t len,
                           const struct jsonrpc_msg *jm, int code, const char *message)
{
    struct sub *sub = ctx;
    struct subscriber *sb, *next;
    (void)len;

    sub->req = NULL;
    if (!msg) {
        bool announced = false;
        TAILQ_FOREACH(sb, &sub->subscribers, sub_link)
        announced |= sb->req_id == NULL;
        if (announced && !sub->write) {
            /* Clients already hold ids: keep trying, they only see a pause. */
            struct timeval tv = {RETRY_MS / 1000, (RETRY_MS % 1000) * 1000};
            log_warn("subscription %s: re-creating failed (%s); retrying", sub->method, message);
            sub->state = SUB_RETRYING;
            evtimer_add(&sub->retry, &tv);
            /* Those still waiting for their reply get the error now. */
            for (sb = TAILQ_FIRST(&sub->subscribers); sb; sb = next) {
                next = TAILQ_NEXT(sb, sub_link);
                if (sb->req_id) {
                    session_error(sb->session, sb->batch, sb->req_id, sb->req_id_len, code,
                                  message);
                    subscriber_free(sb);
                }
            }
            return;
        }
        sub_end(sub, code, message);
        return;
    }
    if (jm->error.type != JSON_NONE) {
        char *err = strndup(msg + jm->error.off, jm->error.len);
        /* The node refused: pending subscribers get its error, the others a final one. */
        for (sb = TAILQ_FIRST(&sub->subscribers); sb; sb = next) {
            next = TAILQ_NEXT(sb, sub_link);
            if (sb->req_id) {
                static const char head[] = "{\"jsonrpc\":\"2.0\",\"error\":";
                struct iovec parts[5] = {
                    {(void *)head, sizeof(head) - 1},
                    {(void *)(msg + jm->error.off), jm->error.len},
                    {",\"id\":", 6},
                    {sb->req_id, sb->req_id_len},
                    {"}", 1},
                };
                session_deliver(sb->session, sb->batch, parts, 5);
                subscriber_answered(sb);
            } else if (err) {
                subscriber_notify(sb, sub->notif_method ? sub->notif_method : sub->method, "error",
                                  err, strlen(err));
            }
        }
        free(err);
        sub_drop(sub);
        return;
    }
    sub->up_id = malloc(jm->result.len);
    if (!sub->up_id) {
        sub_end(sub, JSONRPC_INTERNAL_ERROR, "out of memory");
        return;
    }
    memcpy(sub->up_id, msg + jm->result.off, jm->result.len);
    sub->up_id_len = jm->result.len;
    if (htab_insert(&m->subs_by_id, &sub->id_node, htab_hash(sub->up_id, sub->up_id_len)) < 0) {
        free(sub->up_id);
        sub->up_id = NULL;
        sub_end(sub, JSONRPC_INTERNAL_ERROR, "out of memory");
        return;
    }
    sub->member = m;
    m->n_subs++;
    TAILQ_INSERT_TAIL(&m->subs, sub, m_link);
    sub->state = SUB_ACTIVE;
    log_debug("upstream %u: subscribed %s for %u clients", m->index, sub->method,
              sub->n_subscribers);
    if (sub->n_subscribers == 0) {
        sub_release(sub);
        return;
    }
    for (sb = TAILQ_FIRST(&sub->subscribers); sb; sb = next) {
        next = TAILQ_NEXT(sb, sub_link);
        if (sb->req_id)
            subscriber_reply(sb);
    }
    orphans_adopt(sub);
}

static void sub_start(struct sub *sub)
{
    unsigned flags = sub->write ? METHOD_WRITE : 0;

    sub->state = SUB_SUBSCRIBING;
    sub->req = router_internal(sub->srv->router, sub->method, sub->params, sub->params_len, flags,
                               REQUEST_PICK_SUBS, NULL, sub_subscribed, sub);
    if (!sub->req)
        sub_end(sub, JSONRPC_INTERNAL_ERROR, "out of memory");
}

static struct sub *sub_find(struct server *srv, const char *key)
{
    uint32_t h = htab_hash(key, strlen(key));

    for (struct hnode *e = htab_first(&srv->shared, h); e; e = htab_next(e)) {
        struct sub *sub = htab_entry(e, struct sub, shared_node);
        if (strcmp(sub->key, key) == 0)
            return sub;
    }
    return NULL;
}

static void format_sub_id(struct server *srv, char out[SUB_ID_LEN + 1])
{
    /* Multiplying by an odd constant is a bijection: unique, not guessable at a glance. */
    uint64_t v = ++srv->next_sub_id * 0x9e3779b97f4a7c15ull;
    snprintf(out, SUB_ID_LEN + 1, "\"%016llx\"", (unsigned long long)v);
}

/*
 * Storage keys a state_subscribeStorage asks for (elements of its first
 * param); -1 when it names no list, which a node takes for every key of the
 * chain (no params, [] or [null]). Other shapes are the node's to refuse: 0.
 */
static long storage_key_count(const char *buf, const struct json_span *params)
{
    struct json_span keys, k;
    size_t pos = 0;
    long n = 0;

    if (params->type == JSON_NONE || params->type == JSON_NULL)
        return -1;
    if (params->type != JSON_ARRAY)
        return 0;
    if (json_array_next(buf, params, &pos, &keys) <= 0 || keys.type == JSON_NULL)
        return -1;
    if (keys.type != JSON_ARRAY)
        return 0;
    pos = 0;
    while (json_array_next(buf, &keys, &pos, &k) > 0)
        n++;
    return n;
}

/* A client's subscribe over one of its limits or the queue's: refused with an error, true. */
static bool subscribe_refused(struct server *srv, struct session *s, struct batch *b,
                              const char *buf, const struct jsonrpc_msg *m,
                              const struct method_info *mi)
{
    const struct config *cfg = srv->cfg;
    char msg[160];
    int code = SUBPOOL_ERR_LIMIT;
    long n;

    if (s->n_subscribers >= cfg->client_max_subscriptions) {
        snprintf(msg, sizeof(msg), "this client holds %u subscriptions (client_max_subscriptions)",
                 s->n_subscribers);
    } else if (mi->share && strcmp(mi->share, "state_subscribeStorage") == 0 &&
               ((n = storage_key_count(buf, &m->params)) < 0 ||
                n > (long)cfg->max_subscription_keys)) {
        /* No key list follows every key of the chain: values without bound. */
        if (n < 0)
            snprintf(msg, sizeof(msg),
                     "state_subscribeStorage needs a list of keys (at most %u); every key of the "
                     "chain is not followed",
                     cfg->max_subscription_keys);
        else
            snprintf(msg, sizeof(msg), "%ld storage keys exceed max_subscription_keys (%u)", n,
                     cfg->max_subscription_keys);
    } else if (srv->router->n_queued >= cfg->queue_max) {
        code = SUBPOOL_ERR_UNAVAILABLE;
        snprintf(msg, sizeof(msg), "request queue full (%u waiting for an upstream)",
                 cfg->queue_max);
    } else {
        return false;
    }
    srv->stats.errors++;
    session_error(s, b, buf + m->id.off, m->id.len, code, msg);
    return true;
}

void subs_subscribe(struct server *srv, struct session *s, struct batch *b, const char *buf,
                    const struct jsonrpc_msg *m, const struct method_info *mi)
{
    struct subscriber *sb = NULL;
    struct sub *sub = NULL;
    char *params = NULL, *key = NULL;
    size_t params_len = 0;
    bool created = false;

    if (subscribe_refused(srv, s, b, buf, m, mi))
        return;
    params = normalise_params(buf, &m->params, mi->share, &params_len);
    if (!params)
        goto nomem;
    if (mi->share) {
        key = malloc(strlen(mi->share) + 1 + params_len + 1);
        if (!key)
            goto nomem;
        sprintf(key, "%s %s", mi->share, params);
        sub = sub_find(srv, key);
    }
    if (!sub) {
        sub = calloc(1, sizeof(*sub));
        if (!sub)
            goto nomem;
        created = true;
        sub->srv = srv;
        sub->key = key;
        key = NULL;
        sub->method =
            mi->share ? strdup(mi->share) : strndup(buf + m->method.off + 1, m->method.len - 2);
        sub->unsub = mi->unsubscribe ? strdup(mi->unsubscribe) : NULL;
        sub->params = params;
        sub->params_len = params_len;
        params = NULL;
        sub->write = (mi->flags & METHOD_WRITE) != 0;
        sub->storage = mi->share && strcmp(mi->share, "state_subscribeStorage") == 0;
        TAILQ_INIT(&sub->subscribers);
        evtimer_assign(&sub->retry, srv->base, retry_cb, sub);
        TAILQ_INSERT_TAIL(&srv->subs, sub, link);
        sub_count(srv, 1);
        if (sub->key && htab_insert(&srv->shared, &sub->shared_node,
                                    htab_hash(sub->key, strlen(sub->key))) < 0) {
            free(sub->key); /* not in the table: sub_free must not look for it there */
            sub->key = NULL;
            sub_free(sub);
            goto nomem;
        }
        if (!sub->method || (mi->unsubscribe && !sub->unsub)) {
            sub_free(sub);
            goto nomem;
        }
    }
    free(params);
    free(key);
    sb = calloc(1, sizeof(*sb));
    if (!sb || !(sb->req_id = malloc(m->id.len))) {
        free(sb);
        if (created)
            sub_free(sub);
        goto nomem_noparams;
    }
    memcpy(sb->req_id, buf + m->id.off, m->id.len);
    sb->req_id_len = m->id.len;
    sb->sub = sub;
    sb->session = s;
    sb->batch = b;
    format_sub_id(srv, sb->id);
    TAILQ_INSERT_TAIL(&sub->subscribers, sb, sub_link);
    sub->n_subscribers++;
    TAILQ_INSERT_TAIL(session_subscribers(s), sb, s_link);
    s->n_subscribers++;
    s->n_subs_pending++; /* in flight, for client_max_in_flight, until its reply */
    /* What it holds: its record, its request id, and the params it asked the node for. */
    sb->charged = (int64_t)(sizeof(*sb) + sb->req_id_len + sub->params_len);
    account_charge(srv, &s->acct, CHARGE_SUBS, sb->charged);
    account_charge_shared(srv, &s->acct, CHARGE_SUBS, sub->state_bytes);
    if (created) {
        sub_start(sub);
    } else if (sub->state == SUB_ACTIVE) {
        subscriber_reply(sb);
        subscriber_catch_up(sb);
    }
    /* Otherwise the reply comes with the upstream's (sub_subscribed). */
    return;
nomem:
    free(params);
    free(key);
nomem_noparams:
    session_error(s, b, buf + m->id.off, m->id.len, JSONRPC_INTERNAL_ERROR, "out of memory");
}

void subs_unsubscribe(struct server *srv, struct session *s, struct batch *b, const char *buf,
                      const struct jsonrpc_msg *m)
{
    static const char head[] = "{\"jsonrpc\":\"2.0\",\"result\":";
    struct json_span id = {0};
    struct subscriber *sb;
    size_t pos = 0;
    bool found = false;
    (void)srv;

    const struct method_info *mi = method_lookup(buf + m->method.off + 1, m->method.len - 2);

    if (m->params.type == JSON_ARRAY)
        json_array_next(buf, &m->params, &pos, &id);
    TAILQ_FOREACH(sb, session_subscribers(s), s_link)
    {
        /* Like a node: the id must be the caller's, and of the kind this method ends. */
        if (id.len == SUB_ID_LEN && memcmp(buf + id.off, sb->id, SUB_ID_LEN) == 0 && !sb->req_id &&
            mi && mi->unsubscribe && sb->sub->unsub &&
            strcmp(mi->unsubscribe, sb->sub->unsub) == 0) {
            found = true;
            break;
        }
    }
    if (found)
        subscriber_free(sb);
    struct iovec parts[5] = {
        {(void *)head, sizeof(head) - 1},
        {found ? "true" : "false", found ? 4 : 5},
        {",\"id\":", 6},
        {(void *)(buf + m->id.off), m->id.len},
        {"}", 1},
    };
    session_deliver(s, b, parts, 5);
}

void subs_session_gone(struct server *srv, struct subscriber_list *list)
{
    struct subscriber *sb;
    (void)srv;
    while ((sb = TAILQ_FIRST(list))) {
        sb->batch = NULL;
        subscriber_free(sb);
    }
}

void subs_batch_done(struct subscriber_list *list, struct batch *b)
{
    struct subscriber *sb;

    TAILQ_FOREACH(sb, list, s_link)
    {
        if (sb->batch != b || sb->req_id)
            continue;
        sb->batch = NULL;
        sb->announced = true;
        while (sb->held && evbuffer_get_length(sb->held) >= sizeof(uint32_t)) {
            uint32_t n;
            evbuffer_remove(sb->held, &n, sizeof(n));
            struct iovec part = {evbuffer_pullup(sb->held, n), n};
            if (!part.iov_base) {
                session_cut(sb->session, "out of memory for a held notification");
                break;
            }
            session_deliver(sb->session, NULL, &part, 1);
            evbuffer_drain(sb->held, n);
            account_charge(sb->session->srv, &sb->session->acct, CHARGE_SUBS,
                           -(int64_t)(sizeof(n) + n));
        }
        sb->n_held = 0;
    }
}

/* A watched extrinsic's last status: the node ends the subscription itself. */
static bool extrinsic_final(const char *res, size_t len)
{
    static const char *const finals[] = {"\"dropped\"", "\"invalid\"", "{\"finalized\"",
                                         "{\"usurped\"", "{\"finalityTimeout\""};
    for (size_t i = 0; i < sizeof(finals) / sizeof(finals[0]); i++) {
        size_t n = strlen(finals[i]);
        if (len >= n && memcmp(res, finals[i], n) == 0)
            return true;
    }
    return false;
}

/* What sub holds now for its subscribers: each is charged the change, the ledger once. */
static void sub_state_charge(struct sub *sub)
{
    int64_t now = (int64_t)sub->last_len + sub->items_bytes, delta = now - sub->state_bytes;
    struct subscriber *sb;

    if (delta == 0)
        return;
    TAILQ_FOREACH(sb, &sub->subscribers, sub_link)
    account_charge_shared(sub->srv, &sb->session->acct, CHARGE_SUBS, delta);
    account_hold(sub->srv, delta);
    sub->state_bytes = now;
}

/* Returns false when the sub ended with this notification (and is freed). */
static bool sub_deliver(struct sub *sub, const char *msg, size_t len, const struct jsonrpc_msg *jm)
{
    struct subscriber *sb, *next;
    const char *res = msg + jm->sub_result.off;
    size_t res_len = jm->sub_result.len;

    if (jm->sub_result.type != JSON_NONE) {
        /* After a re-subscribe the node repeats the current value: clients have it already. */
        if (sub->key && sub->last && sub->last_len == res_len &&
            memcmp(sub->last, res, res_len) == 0)
            return true;
        char *copy = memdup(res, res_len);
        if (copy) {
            free(sub->last);
            sub->last = copy;
            sub->last_len = res_len;
        }
        if (sub->storage)
            storage_merge(sub, res, res_len);
        sub_state_charge(sub);
    }
    if (!sub->notif_method)
        sub->notif_method = strndup(msg + jm->method.off + 1, jm->method.len - 2);
    sub->delivered++;
    for (sb = TAILQ_FIRST(&sub->subscribers); sb; sb = next) {
        next = TAILQ_NEXT(sb, sub_link);
        if (!sb->req_id)
            subscriber_send(sb, msg, jm->sub.off, jm->sub.off + jm->sub.len, len);
    }
    if (sub->write && jm->sub_result.type != JSON_NONE && extrinsic_final(res, res_len)) {
        sub_drop(sub);
        return false;
    }
    return true;
}

void subs_on_notification(struct server *srv, struct pool_member *m, const char *msg, size_t len,
                          const struct jsonrpc_msg *jm)
{
    struct sub *sub;
    struct orphan *o;
    time_t now;
    (void)srv;

    /* Any notification may tell of a block (a head, new storage, an extrinsic in a block):
     * reads of "latest" sent before it are not shared after it. */
    srv->head_epoch++;
    if (jm->sub.type == JSON_NONE) {
        log_debug("upstream %u: dropped a notification without a subscription", m->index);
        return;
    }
    for (struct hnode *e = htab_first(&m->subs_by_id, htab_hash(msg + jm->sub.off, jm->sub.len)); e;
         e = htab_next(e)) {
        sub = htab_entry(e, struct sub, id_node);
        if (sub->up_id_len == jm->sub.len &&
            memcmp(sub->up_id, msg + jm->sub.off, jm->sub.len) == 0) {
            sub_deliver(sub, msg, len, jm);
            return;
        }
    }
    /* Possibly ahead of the reply that names it: keep it a little while. */
    now = time(NULL);
    orphans_expire(m, now);
    if (m->n_orphans >= ORPHANS_MAX) {
        o = TAILQ_FIRST(&m->orphans);
        TAILQ_REMOVE(&m->orphans, o, link);
        free(o->msg);
        free(o);
        m->n_orphans--;
    }
    o = calloc(1, sizeof(*o));
    if (!o || !(o->msg = malloc(len))) {
        free(o);
        return;
    }
    memcpy(o->msg, msg, len);
    o->len = len;
    o->when = now;
    TAILQ_INSERT_TAIL(&m->orphans, o, link);
    m->n_orphans++;
}

void subs_on_lost(struct server *srv, struct pool_member *m)
{
    struct sub *sub;
    unsigned n_moved = 0, n_ended = 0;
    (void)srv;

    orphans_free(m);
    while ((sub = TAILQ_FIRST(&m->subs))) {
        sub_detach_member(sub);
        if (sub->key) {
            /* Shared: re-create elsewhere; clients keep their ids. */
            n_moved++;
            sub_start(sub);
        } else {
            n_ended++;
            sub_end(sub, sub->write ? SUBPOOL_ERR_UNKNOWN_WRITE : SUBPOOL_ERR_UPSTREAM_LOST,
                    sub->write ? "upstream connection lost while watching this extrinsic; "
                                 "its outcome is unknown"
                               : "upstream connection lost; this subscription cannot be "
                                 "moved and has ended");
        }
    }
    if (n_moved || n_ended)
        log_info("upstream %u: %u subscriptions moved, %u ended", m->index, n_moved, n_ended);
}

void subs_move(struct server *srv, struct pool_member *m)
{
    struct sub *sub, *next;
    unsigned n_moved = 0;
    (void)srv;

    for (sub = TAILQ_FIRST(&m->subs); sub; sub = next) {
        next = TAILQ_NEXT(sub, m_link);
        if (!sub->key || sub->state != SUB_ACTIVE)
            continue;
        /* Best effort: the link closes once idle anyway, but the node may free it now. */
        sub_unsubscribe_upstream(sub);
        sub_detach_member(sub);
        sub_start(sub);
        n_moved++;
    }
    if (n_moved)
        log_info("upstream %u: %u subscriptions moved to the new pool", m->index, n_moved);
}

void subs_status(struct server *srv, struct evbuffer *out)
{
    static const char *const states[] = {"subscribing", "active", "retrying"};
    struct sub *sub;
    bool first = true;

    evbuffer_add(out, "[", 1);
    TAILQ_FOREACH(sub, &srv->subs, link)
    {
        char kind[300];
        json_escape(kind, sizeof(kind), sub->method, strlen(sub->method));
        evbuffer_add_printf(out, "%s{\"kind\":%s,\"params\":", first ? "" : ",", kind);
        evbuffer_add(out, sub->params, sub->params_len);
        evbuffer_add_printf(out, ",\"shared\":%s,\"state\":\"%s\",\"subscribers\":%u,",
                            sub->key ? "true" : "false", states[sub->state], sub->n_subscribers);
        if (sub->member)
            evbuffer_add_printf(out, "\"upstream\":%u,", sub->member->index);
        else
            evbuffer_add(out, "\"upstream\":null,", 16);
        evbuffer_add_printf(out, "\"delivered\":%llu}", (unsigned long long)sub->delivered);
        first = false;
    }
    evbuffer_add(out, "]", 1);
}

void subs_free_all(struct server *srv)
{
    struct sub *sub;
    while ((sub = TAILQ_FIRST(&srv->subs)))
        sub_free(sub);
    htab_free(&srv->shared);
    for (unsigned i = 0; srv->pool && i < srv->pool->n; i++)
        orphans_free(&srv->pool->members[i]);
}
