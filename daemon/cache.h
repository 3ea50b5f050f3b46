/*
 * The reply cache: replies to pinned reads (readkey.h: a block hash named,
 * or a chain constant), kept for ever within a byte budget and served to
 * any client with its own id, out of the node's own message by reference.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "htab.h"
#include "jsonrpc.h"

struct msgbuf;
struct centry;

TAILQ_HEAD(centry_list, centry);

struct cache {
    struct htab tab;        /* entries by key */
    struct htab blobs;      /* the replies' bytes, shared by identical ones, by content */
    struct centry_list lru; /* most recently used first */
    uint64_t bytes;         /* what the entries hold, against max */
    uint64_t max;           /* cache_max_bytes; 0: keep nothing */
    uint64_t entries;
    uint64_t shared; /* entries whose bytes another entry already held */
    uint64_t hits, misses, stores, evictions;
    void (*evicted)(void *arg, unsigned tag); /* told of each entry dropped for room */
    void *evicted_arg;
};

/* Entries larger than this are not kept, whatever the budget. */
#define CACHE_ENTRY_MAX ((size_t)16 << 20)

/* Empty; 0 or -1 out of memory. */
int cache_init(struct cache *c, uint64_t max);
/* Drops every entry (a buffer still being written to clients lives until written). */
void cache_clear(struct cache *c);
void cache_free(struct cache *c);
/* A new budget: entries are dropped, least recently used first, until it holds. */
void cache_resize(struct cache *c, uint64_t max);

/* A hit: the stored reply, as the parts around the id to splice in. */
struct cache_hit {
    struct msgbuf *mb; /* lend it while the parts are delivered */
    size_t len;        /* the message's length in mb */
    const char *head, *tail;
    size_t head_len, tail_len;
};

/* Looks key up; on a hit fills *hit, makes the entry most recent and returns true. */
bool cache_get(struct cache *c, const char *key, size_t key_len, struct cache_hit *hit);

/*
 * Keeps the node's reply msg (len bytes, jm its scan; the id is the part
 * replaced per client) under key, with a tag the eviction callback gets: by
 * reference into the msgbuf being delivered when msg lies in it and fills
 * most of it, else as a copy. Returns false, keeping nothing, when the
 * reply is too large, the budget is 0, or memory is short.
 */
bool cache_put(struct cache *c, const char *key, size_t key_len, unsigned tag, const char *msg,
               size_t len, const struct jsonrpc_msg *jm);
