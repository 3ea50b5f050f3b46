/*
 * An intrusive hash table: entries embed a struct hnode, the caller keeps
 * the key and compares it. Chains hold entries of any hash; walk one with
 * htab_first/htab_next, which skip entries of other hashes. The table
 * doubles as it fills, so a lookup costs O(1) whatever the number of
 * entries. htab_probes counts entries looked at, for tests of that claim.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct hnode {
    struct hnode *next;
    uint32_t hash;
};

struct htab {
    struct hnode **b;
    size_t size; /* buckets: 0 or a power of two */
    size_t n;
};

extern uint64_t htab_probes;

uint32_t htab_hash(const void *p, size_t len);
/* Room for n entries before the first growth (a power of two); 0 or -ENOMEM. */
int htab_reserve(struct htab *t, size_t n);
/* Adds e under hash; 0, or -ENOMEM when the table could not be created. */
int htab_insert(struct htab *t, struct hnode *e, uint32_t hash);
void htab_remove(struct htab *t, struct hnode *e);
/* The first entry with this hash, then the next ones; NULL at the end. */
struct hnode *htab_first(const struct htab *t, uint32_t hash);
struct hnode *htab_next(const struct hnode *e);
/* Frees the buckets, not the entries. */
void htab_free(struct htab *t);

#define htab_entry(node, type, member) ((type *)((char *)(node)-offsetof(type, member)))
