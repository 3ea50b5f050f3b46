/*
 * The reply cache (cache.h). An entry holds the node's message itself: a
 * reference to the msgbuf it arrived in when the message fills most of it,
 * otherwise a copy of exactly its size. A hit lends that buffer while the
 * reply is written, so clients' outputs point into it rather than copy it,
 * and msgbuf_set_cached tells the ledger that the cache's budget, not the
 * clients', counts it. Entries whose replies are the same but for the id
 * share those bytes (struct cblob). What entries and their bytes cost is
 * counted against cache_max_bytes; the least recently used go first.
 */
#include "cache.h"

#include <stdlib.h>
#include <string.h>

#include "msgbuf.h"

/*
 * A reply's bytes: the node's message, around an id that each client's own
 * replaces. Entries whose replies are the same outside the id (metadata at
 * several blocks of one runtime) share one, counted once.
 */
struct cblob {
    struct hnode node; /* cache->blobs, by the bytes around the id */
    struct msgbuf *mb;
    size_t len;            /* the message, at the start of mb->data */
    size_t id_off, id_len; /* the node's id in it */
    size_t cost;           /* counted against the budget */
    unsigned users;
};

struct centry {
    struct hnode node;
    TAILQ_ENTRY(centry) link;
    struct cblob *blob;
    size_t cost;  /* counted against the budget: the record and key */
    unsigned tag; /* the caller's, for the eviction callback */
    size_t key_len;
    char key[];
};

int cache_init(struct cache *c, uint64_t max)
{
    memset(c, 0, sizeof(*c));
    TAILQ_INIT(&c->lru);
    c->max = max;
    return htab_reserve(&c->tab, 1024) < 0 || htab_reserve(&c->blobs, 1024) < 0 ? -1 : 0;
}

static void blob_release(struct cache *c, struct cblob *b)
{
    if (--b->users)
        return;
    htab_remove(&c->blobs, &b->node);
    c->bytes -= b->cost;
    msgbuf_set_cached(b->mb, false);
    msgbuf_unref(b->mb);
    free(b);
}

static void entry_drop(struct cache *c, struct centry *e)
{
    htab_remove(&c->tab, &e->node);
    TAILQ_REMOVE(&c->lru, e, link);
    c->bytes -= e->cost;
    c->entries--;
    blob_release(c, e->blob);
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
    htab_free(&c->blobs);
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
    hit->mb = e->blob->mb;
    hit->len = e->blob->len;
    hit->head = e->blob->mb->data;
    hit->head_len = e->blob->id_off;
    hit->tail = e->blob->mb->data + e->blob->id_off + e->blob->id_len;
    hit->tail_len = e->blob->len - e->blob->id_off - e->blob->id_len;
    return true;
}

/* The blob holding a reply with these bytes around its id, or NULL. */
static struct cblob *blob_find(struct cache *c, uint32_t h, const char *head, size_t head_len,
                               const char *tail, size_t tail_len)
{
    for (struct hnode *n = htab_first(&c->blobs, h); n; n = htab_next(n)) {
        struct cblob *b = htab_entry(n, struct cblob, node);
        if (b->id_off == head_len && b->len - b->id_off - b->id_len == tail_len &&
            memcmp(b->mb->data, head, head_len) == 0 &&
            memcmp(b->mb->data + b->id_off + b->id_len, tail, tail_len) == 0)
            return b;
    }
    return NULL;
}

/* A new blob for the whole message: the msgbuf it came in, or an exact copy. */
static struct cblob *blob_new(const char *whole, size_t n, size_t id_off, size_t id_len)
{
    size_t lent_len;
    struct msgbuf *lent = msgbuf_lent(&lent_len), *mb;
    struct cblob *b = malloc(sizeof(*b));

    if (!b)
        return NULL;
    /* Its own buffer when the message is the whole of the one it came in, else a copy. */
    if (lent && whole == lent->data && n == lent_len && lent->cap <= 2 * n + 4096) {
        mb = lent;
        mb->refs++;
    } else if ((mb = msgbuf_exact(n))) {
        memcpy(mb->data, whole, n);
    } else {
        free(b);
        return NULL;
    }
    b->mb = mb;
    b->len = n;
    b->id_off = id_off;
    b->id_len = id_len;
    b->cost = sizeof(*b) + sizeof(*mb) + mb->cap;
    b->users = 0;
    return b;
}

bool cache_put(struct cache *c, const char *key, size_t key_len, unsigned tag, const char *msg,
               size_t len, const struct jsonrpc_msg *jm)
{
    const char *whole = msg + jm->whole.off;
    size_t n = jm->whole.len, id_off = jm->id.off - jm->whole.off, id_len = jm->id.len;
    uint32_t h = htab_hash(key, key_len), bh;
    struct cblob *b;
    struct centry *e;
    size_t cost, need;
    (void)len;

    if (n > CACHE_ENTRY_MAX || jm->id.type == JSON_NONE || entry_find(c, key, key_len, h))
        return false;
    bh = htab_hash(whole, id_off) * 31u + htab_hash(whole + id_off + id_len, n - id_off - id_len);
    b = blob_find(c, bh, whole, id_off, whole + id_off + id_len, n - id_off - id_len);
    if (b)
        b->users++; /* held while room is made, which must not free it */
    else if (!(b = blob_new(whole, n, id_off, id_len)))
        return false;
    cost = sizeof(*e) + key_len;
    need = cost + (b->users ? 0 : b->cost);
    if (need > c->max || !(e = malloc(sizeof(*e) + key_len))) {
        if (b->users) {
            blob_release(c, b);
        } else {
            msgbuf_unref(b->mb);
            free(b);
        }
        return false;
    }
    make_room(c, need, true);
    if (b->users) {
        c->shared++;
    } else {
        b->users = 1;
        msgbuf_set_cached(b->mb, true);
        (void)htab_insert(&c->blobs, &b->node, bh);
        c->bytes += b->cost;
    }
    e->blob = b;
    e->cost = cost;
    e->tag = tag;
    e->key_len = key_len;
    memcpy(e->key, key, key_len);
    (void)htab_insert(&c->tab, &e->node, h);
    TAILQ_INSERT_HEAD(&c->lru, e, link);
    c->bytes += cost;
    c->entries++;
    c->stores++;
    return true;
}
