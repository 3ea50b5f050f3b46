#include "msgbuf.h"

#include <stdint.h>
#include <stdlib.h>

/* What is being delivered now; the daemon has one thread. */
static struct msgbuf *lent;
static size_t lent_len;

struct msgbuf *msgbuf_reserve(struct msgbuf *mb, size_t cap)
{
    struct msgbuf *nb;

    if (mb && mb->cap >= cap)
        return mb;
    if (cap > SIZE_MAX - sizeof(*nb))
        return NULL;
    nb = realloc(mb, sizeof(*nb) + cap);
    if (!nb)
        return NULL;
    if (!mb)
        nb->refs = 1;
    nb->cap = cap;
    return nb;
}

void msgbuf_unref(struct msgbuf *mb)
{
    if (mb && --mb->refs == 0)
        free(mb);
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

static void reference_done(const void *data, size_t len, void *arg)
{
    (void)data;
    (void)len;
    msgbuf_unref(arg);
}

int msgbuf_add(struct evbuffer *out, const void *p, size_t n)
{
    uintptr_t at = (uintptr_t)p;

    if (lent && n >= MSGBUF_REF_MIN && at >= (uintptr_t)lent->data && n <= lent_len &&
        at - (uintptr_t)lent->data <= lent_len - n &&
        evbuffer_add_reference(out, p, n, reference_done, lent) == 0) {
        lent->refs++;
        return 0;
    }
    return evbuffer_add(out, p, n);
}
