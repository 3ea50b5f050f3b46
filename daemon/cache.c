/*
 * The reply cache (cache.h). An entry holds the node's message itself: a
 * reference to the msgbuf it arrived in when the message fills most of it,
 * otherwise a copy of exactly its size. A hit lends that buffer while the
 * reply is written, so clients' outputs point into it rather than copy it,
 * and msgbuf_set_cached tells the ledger that the cache's budget, not the
 * clients', counts it. What an entry costs (its record, key and buffer) is
 * counted against cache_max_bytes; the least recently used go first.
 */
#include "cache.h"

#include <stdlib.h>
#include <string.h>

#include "msgbuf.h"

struct centry {
    struct hnode node;
    TAILQ_ENTRY(centry) link;
    struct msgbuf *mb;
    size_t len;            /* the message, at the start of mb->data */
    size_t id_off, id_len; /* the node's id in it, replaced for each client */
    size_t cost;           /* counted against the budget */
    unsigned tag;          /* the caller's, for the eviction callback */
    size_t key_len;
    char key[];
};

int cache_init(struct cache *c, uint64_t max)
{
    memset(c, 0, sizeof(*c));
    TAILQ_INIT(&c->lru);
    c->max = max;
    return htab_reserve(&c->tab, 1024) < 0 ? -1 : 0;
}

static void entry_drop(struct cache *c, struct centry *e)
{
    htab_remove(&c->tab, &e->node);
    TAILQ_REMOVE(&c->lru, e, link);
    c->bytes -= e->cost;
    c->entries--;
    msgbuf_set_cached(e->mb, false);
    msgbuf_unref(e->mb);
    free(e);
}

/* Drops the least recently used entries until need more bytes fit; evictions when for room. */
static void make_room(struct cache *c, uint64_t need, bool evicting)
{
    struct centry *e;

    while (c->bytes + need > c->max && (e = TAILQ_LAST(&c->lru, centry_list))) {
        if (evicting) {
            if (c->evicted)
                c->evicted(c->evicted_arg, e->tag);
            c->evictions++;
        }
        entry_drop(c, e);
    }
}

void cache_clear(struct cache *c)
{
    struct centry *e;

    while ((e = TAILQ_FIRST(&c->lru)))
        entry_drop(c, e);
}

void cache_free(struct cache *c)
{
    cache_clear(c);
    htab_free(&c->tab);
}

void cache_resize(struct cache *c, uint64_t max)
{
    c->max = max;
    make_room(c, 0, false); /* a smaller budget, or none: dropped, not evicted for room */
}

static struct centry *entry_find(struct cache *c, const char *key, size_t key_len, uint32_t h)
{
    for (struct hnode *n = htab_first(&c->tab, h); n; n = htab_next(n)) {
        struct centry *e = htab_entry(n, struct centry, node);
        if (e->key_len == key_len && memcmp(e->key, key, key_len) == 0)
            return e;
    }
    return NULL;
}

bool cache_get(struct cache *c, const char *key, size_t key_len, struct cache_hit *hit)
{
    struct centry *e = entry_find(c, key, key_len, htab_hash(key, key_len));

    if (!e) {
        c->misses++;
        return false;
    }
    c->hits++;
    TAILQ_REMOVE(&c->lru, e, link);
    TAILQ_INSERT_HEAD(&c->lru, e, link);
    hit->mb = e->mb;
    hit->len = e->len;
    hit->head = e->mb->data;
    hit->head_len = e->id_off;
    hit->tail = e->mb->data + e->id_off + e->id_len;
    hit->tail_len = e->len - e->id_off - e->id_len;
    return true;
}

bool cache_put(struct cache *c, const char *key, size_t key_len, unsigned tag, const char *msg,
               size_t len, const struct jsonrpc_msg *jm)
{
    const char *whole = msg + jm->whole.off;
    size_t n = jm->whole.len, lent_len;
    struct msgbuf *lent = msgbuf_lent(&lent_len), *mb;
    uint32_t h = htab_hash(key, key_len);
    struct centry *e;
    (void)len;

    if (n > CACHE_ENTRY_MAX || jm->id.type == JSON_NONE || entry_find(c, key, key_len, h))
        return false;
    /* Its own buffer when the message is the whole of the one it came in, else a copy. */
    if (lent && whole == lent->data && n == lent_len && lent->cap <= 2 * n + 4096) {
        mb = lent;
        mb->refs++;
    } else {
        if (!(mb = msgbuf_exact(n)))
            return false;
        memcpy(mb->data, whole, n);
    }
    size_t cost = sizeof(*e) + key_len + sizeof(*mb) + mb->cap;
    if (cost > c->max || !(e = malloc(sizeof(*e) + key_len))) {
        msgbuf_unref(mb);
        return false;
    }
    make_room(c, cost, true);
    e->mb = mb;
    e->len = n;
    e->id_off = jm->id.off - jm->whole.off;
    e->id_len = jm->id.len;
    e->cost = cost;
    e->tag = tag;
    e->key_len = key_len;
    memcpy(e->key, key, key_len);
    msgbuf_set_cached(mb, true);
    (void)htab_insert(&c->tab, &e->node, h);
    TAILQ_INSERT_HEAD(&c->lru, e, link);
    c->bytes += cost;
    c->entries++;
    c->stores++;
    return true;
}
