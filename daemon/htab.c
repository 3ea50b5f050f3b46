#include "htab.h"

#include <errno.h>
#include <stdlib.h>

uint64_t htab_probes;

uint32_t htab_hash(const void *p, size_t len)
{
    const unsigned char *s = p;
    uint32_t h = 2166136261u; /* FNV-1a */

    for (size_t i = 0; i < len; i++)
        h = (h ^ s[i]) * 16777619u;
    return h ^ (h >> 16);
}

static void rehash(struct htab *t, size_t size)
{
    struct hnode **b = calloc(size, sizeof(*b));

    if (!b)
        return; /* chains just get longer */
    for (size_t i = 0; i < t->size; i++) {
        struct hnode *e = t->b[i], *next;
        for (; e; e = next) {
            next = e->next;
            e->next = b[e->hash & (size - 1)];
            b[e->hash & (size - 1)] = e;
        }
    }
    free(t->b);
    t->b = b;
    t->size = size;
}

int htab_reserve(struct htab *t, size_t n)
{
    if (n > t->size)
        rehash(t, n);
    return t->size >= n ? 0 : -ENOMEM;
}

int htab_insert(struct htab *t, struct hnode *e, uint32_t hash)
{
    if (t->size == 0) {
        rehash(t, 16);
        if (t->size == 0)
            return -ENOMEM;
    } else if (t->n >= t->size) {
        rehash(t, t->size * 2);
    }
    e->hash = hash;
    e->next = t->b[hash & (t->size - 1)];
    t->b[hash & (t->size - 1)] = e;
    t->n++;
    return 0;
}

void htab_remove(struct htab *t, struct hnode *e)
{
    struct hnode **pp;

    if (t->size == 0)
        return;
    for (pp = &t->b[e->hash & (t->size - 1)]; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            e->next = NULL;
            t->n--;
            return;
        }
    }
}

static struct hnode *from(struct hnode *e, uint32_t hash)
{
    for (; e; e = e->next) {
        htab_probes++;
        if (e->hash == hash)
            return e;
    }
    return NULL;
}

struct hnode *htab_first(const struct htab *t, uint32_t hash)
{
    return t->size ? from(t->b[hash & (t->size - 1)], hash) : NULL;
}

struct hnode *htab_next(const struct hnode *e)
{
    return from(e->next, e->hash);
}

void htab_free(struct htab *t)
{
    free(t->b);
    t->b = NULL;
    t->size = 0;
    t->n = 0;
}
