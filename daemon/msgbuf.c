#include "msgbuf.h"

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

/* What is being delivered now; the daemon has one thread. */
static struct msgbuf *lent;
static size_t lent_len;

/*
 * Large buffers that messages leave behind, kept for the next ones while
 * they keep coming: memory fresh from the kernel costs a page fault per
 * page on first touch, which was half the daemon's CPU on multi-megabyte
 * replies. Bounded in count and bytes, and all freed once none has been
 * left for spare_ms.
 */
#define SPARES      4
#define SPARE_BYTES ((size_t)32 << 20)
static struct msgbuf *spares[SPARES];
static size_t spare_bytes;
static struct event *spare_timer;
static unsigned spare_ms;

static msgbuf_hold_fn *hold_fn;
static void *hold_arg;

static void hold(const struct msgbuf *mb, int64_t sign)
{
    if (hold_fn && !mb->cached)
        hold_fn(hold_arg, sign * (int64_t)(sizeof(*mb) + mb->cap));
}

static void spares_free(void)
{
    for (int i = 0; i < SPARES; i++) {
        free(spares[i]);
        spares[i] = NULL;
    }
    spare_bytes = 0;
}

static void spare_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    spares_free();
}

int msgbuf_init(struct event_base *base, unsigned keep_ms, msgbuf_hold_fn *fn, void *arg)
{
    hold_fn = fn;
    hold_arg = arg;
    spare_timer = evtimer_new(base, spare_timer_cb, NULL);
    spare_ms = keep_ms;
    return spare_timer ? 0 : -1;
}

void msgbuf_shutdown(void)
{
    spares_free();
    if (spare_timer)
        event_free(spare_timer);
    spare_timer = NULL;
    hold_fn = NULL;
    hold_arg = NULL;
}

size_t msgbuf_spare_bytes(void)
{
    return spare_bytes;
}

/* The smallest spare that holds cap bytes, taken out of the cache; NULL if none does. */
static struct msgbuf *spare_take(size_t cap)
{
    int best = -1;

    for (int i = 0; i < SPARES; i++)
        if (spares[i] && spares[i]->cap >= cap && (best < 0 || spares[i]->cap < spares[best]->cap))
            best = i;
    if (best < 0)
        return NULL;
    struct msgbuf *mb = spares[best];
    spares[best] = NULL;
    spare_bytes -= mb->cap;
    mb->refs = 1;
    mb->counted = 0;
    mb->cached = false;
    return mb;
}

/* Keeps mb for later if it is large and there is room; frees it otherwise. */
static void spare_put(struct msgbuf *mb)
{
    if (spare_timer && mb->cap >= MSGBUF_SPARE_MIN && mb->cap <= SPARE_BYTES - spare_bytes) {
        for (int i = 0; i < SPARES; i++) {
            if (!spares[i]) {
                spares[i] = mb;
                spare_bytes += mb->cap;
                const struct timeval tv = {spare_ms / 1000, (spare_ms % 1000) * 1000};
                evtimer_add(spare_timer, &tv);
                return;
            }
        }
    }
    free(mb);
}

struct msgbuf *msgbuf_reserve(struct msgbuf *mb, size_t cap)
{
    struct msgbuf *nb;

    if (mb && mb->cap >= cap)
        return mb;
    if (cap > SIZE_MAX - sizeof(*nb))
        return NULL;
    if (!mb && cap >= MSGBUF_SPARE_MIN && (nb = spare_take(cap)))
        return nb;
    nb = realloc(mb, sizeof(*nb) + cap);
    if (!nb)
        return NULL;
    if (!mb) {
        nb->refs = 1;
        nb->counted = 0;
        nb->cached = false;
    }
    nb->cap = cap;
    return nb;
}

struct msgbuf *msgbuf_exact(size_t cap)
{
    struct msgbuf *mb;

    if (cap > SIZE_MAX - sizeof(*mb) || !(mb = malloc(sizeof(*mb) + cap)))
        return NULL;
    mb->refs = 1;
    mb->counted = 0;
    mb->cached = false;
    mb->cap = cap;
    return mb;
}

void msgbuf_unref(struct msgbuf *mb)
{
    if (mb && --mb->refs == 0)
        spare_put(mb);
}

bool msgbuf_shared(const struct msgbuf *mb)
{
    return mb && mb->refs > 1;
}

void msgbuf_lend(struct msgbuf *mb, size_t len)
{
    lent = mb;
    lent_len = len;
}

void msgbuf_lend_end(void)
{
    lent = NULL;
    lent_len = 0;
}

struct msgbuf *msgbuf_lent(size_t *len)
{
    *len = lent_len;
    return lent;
}

void msgbuf_set_cached(struct msgbuf *mb, bool on)
{
    if (mb->cached == on)
        return;
    /* Outputs refer to it now: the ledger gives it to the cache's budget, or takes it back. */
    if (on && mb->counted)
        hold(mb, -1);
    mb->cached = on;
    if (!on && mb->counted)
        hold(mb, 1);
}

static void reference_done(const void *data, size_t len, void *arg)
{
    (void)data;
    (void)len;
    msgbuf_unref(arg);
}

/* Whether the n bytes at p lie in the lent msgbuf and are worth a reference. */
static bool lendable(const void *p, size_t n)
{
    uintptr_t at = (uintptr_t)p;

    return lent && n >= MSGBUF_REF_MIN && at >= (uintptr_t)lent->data && n <= lent_len &&
           at - (uintptr_t)lent->data <= lent_len - n;
}

int msgbuf_add(struct evbuffer *out, const void *p, size_t n)
{
    if (lendable(p, n)) {
        /* Held before the call: the evbuffer's callbacks may drain it at once. */
        lent->refs++;
        if (evbuffer_add_reference(out, p, n, reference_done, lent) == 0)
            return 0;
        lent->refs--;
    }
    return evbuffer_add(out, p, n);
}

static void counted_done(const void *data, size_t len, void *arg)
{
    struct msgbuf *mb = arg;
    (void)data;
    (void)len;

    if (--mb->counted == 0)
        hold(mb, -1);
    msgbuf_unref(mb);
}

int msgbuf_add_counted(struct evbuffer *out, struct outrefs *o, const void *p, size_t n)
{
    if (o->n < OUTREFS_MAX && lendable(p, n)) {
        struct msgbuf *mb = lent;
        unsigned slot = (o->head + o->n) % OUTREFS_MAX;

        /* Recorded first: the output's callback runs inside evbuffer_add_reference. */
        o->ref[slot].end = o->added + n;
        o->ref[slot].len = n;
        o->n++;
        o->adding += n;
        mb->refs++;
        if (mb->counted++ == 0)
            hold(mb, 1);
        if (evbuffer_add_reference(out, p, n, counted_done, mb) == 0)
            return 0;
        if (--mb->counted == 0)
            hold(mb, -1);
        mb->refs--;
        o->adding -= n;
        o->n--;
    }
    return evbuffer_add(out, p, n);
}

void outrefs_moved(struct outrefs *o, size_t n_added, size_t n_deleted, size_t *ref_added,
                   size_t *ref_deleted)
{
    uint64_t from = o->drained, to = from + n_deleted;
    size_t gone = 0;

    *ref_added = o->adding < n_added ? o->adding : n_added;
    o->adding -= *ref_added;
    o->added += n_added;
    /* Drained from the front: the oldest ranges first. */
    while (o->n) {
        uint64_t end = o->ref[o->head].end, start = end - o->ref[o->head].len;
        if (start >= to)
            break;
        gone += (size_t)((end < to ? end : to) - (start > from ? start : from));
        if (end > to)
            break;
        o->head = (o->head + 1) % OUTREFS_MAX;
        o->n--;
    }
    o->drained = to;
    *ref_deleted = gone;
}
