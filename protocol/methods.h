/*
 * What subpool knows about node methods: which open or close subscriptions,
 * which write to the chain (never replayed), which are answered locally.
 */
#pragma once

#include <stddef.h>

enum method_flag {
    METHOD_SUBSCRIBE = 1u << 0,   /* reply carries a subscription id, notifications follow */
    METHOD_UNSUBSCRIBE = 1u << 1, /* ends a subscription */
    METHOD_WRITE = 1u << 2,       /* changes chain state: never retried or replayed */
    METHOD_LOCAL = 1u << 3,       /* subpool_*: answered by the daemon */
};

struct method_info {
    const char *name;
    unsigned flags;
    /*
     * Subscribe methods: share is the key under which identical
     * subscriptions (aliases included) share one upstream subscription, NULL
     * when each client needs its own; unsubscribe is how to end it upstream.
     * Unsubscribe methods: unsubscribe is the canonical name of the method
     * itself, so aliases can be matched against the subscription's kind.
     */
    const char *share;
    const char *unsubscribe;
};

/* Flags for a method name (bytes without quotes). Unknown methods are plain reads: 0. */
unsigned method_flags(const char *name, size_t len);

/* The table entry of a method, or NULL for methods without one (subpool_* included). */
const struct method_info *method_lookup(const char *name, size_t len);

/*
 * Method names known by name, for labels that must not grow with client
 * input: the index of name among them, or -1.
 */
#define METHOD_KNOWN_COUNT 165
int method_known(const char *name, size_t len);
/* The name with that index, or NULL past the end. */
const char *method_known_name(unsigned i);
