/*
 * Counters for GET /metrics that the stats struct does not hold: requests
 * and errors by method and the latency of routed requests. Method names
 * come from clients, so only known names (methods.h) get a label of their
 * own; every other name is counted as "(other)" and never stored.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct server;
struct metrics;

#define METRICS_METHOD_INVALID 0 /* a message that never named a valid method */

struct metrics *metrics_new(void);
struct metrics *metrics_free(struct metrics *m);
/* The slot counting this method name (bytes without quotes). */
unsigned metrics_method(struct metrics *m, const char *name, size_t len);
/* What is counted by method. */
enum metric_kind {
    METRIC_REQUESTS,
    METRIC_ERRORS,
    METRIC_COALESCED,       /* shared another's request to the node */
    METRIC_CACHE_HITS,      /* answered from the reply cache */
    METRIC_CACHE_MISSES,    /* cacheable, not in the cache */
    METRIC_CACHE_STORES,    /* replies kept */
    METRIC_CACHE_EVICTIONS, /* replies dropped for room */
    METRIC_KINDS,
};

void metrics_count(struct metrics *m, unsigned slot, enum metric_kind kind);
void metrics_count_request(struct metrics *m, unsigned slot);
void metrics_count_error(struct metrics *m, unsigned slot);
void metrics_observe(struct metrics *m, uint64_t ns);
