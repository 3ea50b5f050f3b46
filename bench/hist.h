/*
 * A log-bucketed latency histogram in the spirit of HdrHistogram: values
 * (nanoseconds) are kept with two significant decimal digits (every bucket
 * is at most 1/128 of its value wide), in a fixed array, so recording is a
 * few instructions and never allocates, and percentiles are exact to that
 * precision however many samples arrive.
 */
#pragma once

#include <stdint.h>

/* 256 unit buckets, then 128 sub-buckets for each further power of two up to 2^63. */
#define HIST_SUB_BITS 7
#define HIST_BUCKETS  ((64 - HIST_SUB_BITS + 1) << HIST_SUB_BITS)

struct hist {
    uint64_t counts[HIST_BUCKETS];
    uint64_t n;
    uint64_t min;
    uint64_t max;
    double sum;
};

void hist_init(struct hist *h);
void hist_record(struct hist *h, uint64_t v);
/* The highest value equivalent to the sample at percentile pct (0..100); 0 when empty. */
uint64_t hist_percentile(const struct hist *h, double pct);
double hist_mean(const struct hist *h);
