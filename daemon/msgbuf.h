/*
 * A message from a node that client outputs may point into instead of
 * copying it. An upstream assembles each message in a msgbuf; while it is
 * being delivered (between msgbuf_lend and msgbuf_lend_end), msgbuf_add
 * queues large parts of it by reference, each holding the msgbuf until the
 * client has been sent that part. Everything else is copied as usual. A
 * multi-megabyte reply then crosses the daemon with no copy of its own and
 * no second buffer of its size.
 */
#ifndef SUBPOOL_MSGBUF_H
#define SUBPOOL_MSGBUF_H

#include <event2/buffer.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Parts smaller than this are copied: a reference costs an allocation too. */
#define MSGBUF_REF_MIN 16384
/* Buffers this large are kept a while for reuse once their message is done. */
#define MSGBUF_SPARE_MIN ((size_t)1 << 20)

struct msgbuf {
    unsigned refs;
    unsigned counted; /* of refs: references from outputs whose bytes the ledger has once */
    bool cached;      /* held by the reply cache, whose own budget counts it instead */
    size_t cap;       /* bytes that data holds */
    char data[];
};

struct event_base;

/* Called with +size when a msgbuf gets its first counted reference and with -size when its
 * last one ends: the ledger holds each such buffer once, however many outputs refer to it. */
typedef void msgbuf_hold_fn(void *arg, int64_t delta);

/* Lets finished large buffers be reused until none has been left for keep_ms.
 * Without it every buffer is freed at once. hold may be NULL. Returns 0, or -1 out of
 * memory. */
int msgbuf_init(struct event_base *base, unsigned keep_ms, msgbuf_hold_fn *hold, void *arg);
/* Frees the kept buffers; before the event base goes. */
void msgbuf_shutdown(void);
/* Bytes kept for reuse now. */
size_t msgbuf_spare_bytes(void);

/* mb (or a new msgbuf when mb is NULL) with room for cap bytes; NULL when out of
 * memory, mb untouched. Only for a msgbuf nobody else holds. */
struct msgbuf *msgbuf_reserve(struct msgbuf *mb, size_t cap);

/* A new msgbuf of exactly cap bytes, never a larger spare; NULL when out of memory. */
struct msgbuf *msgbuf_exact(size_t cap);

/* Drops one hold; the last frees it. NULL is ignored. */
void msgbuf_unref(struct msgbuf *mb);

/* Whether anyone but its owner still holds it. */
bool msgbuf_shared(const struct msgbuf *mb);

/* The first len bytes of mb are being delivered: msgbuf_add may reference them. */
void msgbuf_lend(struct msgbuf *mb, size_t len);
void msgbuf_lend_end(void);
/* The msgbuf being delivered (and its length), or NULL. */
struct msgbuf *msgbuf_lent(size_t *len);

/* The cache takes (on) or lets go of (off) mb: while it holds it, the ledger does not count
 * it for the outputs that refer to it, since the cache's budget does. */
void msgbuf_set_cached(struct msgbuf *mb, bool on);

/* Appends n bytes at p to out: by reference when they lie in the lent msgbuf and
 * are MSGBUF_REF_MIN or more, else as a copy. Returns as evbuffer_add. */
int msgbuf_add(struct evbuffer *out, const void *p, size_t n);

/*
 * Which bytes of one output are references, so that its owner can charge
 * them to its account without charging the ledger (account.c): the ranges
 * referenced, in order, as offsets in the stream of bytes ever added. An
 * output holding OUTREFS_MAX references gets copies until one is written.
 */
#define OUTREFS_MAX 8
struct outrefs {
    uint64_t added;   /* bytes ever added to the output */
    uint64_t drained; /* bytes ever taken out of it, from the front */
    size_t adding;    /* referenced bytes added since the output's callback last ran */
    unsigned head, n;
    struct {
        uint64_t end;
        size_t len;
    } ref[OUTREFS_MAX];
};

/* As msgbuf_add, with a reference recorded in o and counted once in the ledger. */
int msgbuf_add_counted(struct evbuffer *out, struct outrefs *o, const void *p, size_t n);
/* From out's callback: of n_added and n_deleted bytes, how many are references. */
void outrefs_moved(struct outrefs *o, size_t n_added, size_t n_deleted, size_t *ref_added,
                   size_t *ref_deleted);

#endif
