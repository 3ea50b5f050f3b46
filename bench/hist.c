/*
 * The log-bucketed histogram of hist.h. Index layout: values below 256 get
 * one bucket each; above, a value keeps its top 8 bits (128..255) and the
 * number of bits shifted away picks the group, so the relative error stays
 * under 1/128 (two decimal digits) from nanoseconds to hours.
 */
#include "hist.h"

#include <string.h>

#define SUB_COUNT (1u << HIST_SUB_BITS) /* 128 */

static unsigned hist_index(uint64_t v)
{
    if (v < 2 * SUB_COUNT)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - HIST_SUB_BITS;
    return shift * SUB_COUNT + (unsigned)(v >> shift);
}

/* The largest value that lands in bucket i. */
static uint64_t hist_upper(unsigned i)
{
    if (i < 2 * SUB_COUNT)
        return i;
    unsigned shift = i / SUB_COUNT - 1;
    uint64_t m = i - shift * SUB_COUNT;
    return ((m + 1) << shift) - 1;
}

void hist_init(struct hist *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

void hist_record(struct hist *h, uint64_t v)
{
    h->counts[hist_index(v)]++;
    h->n++;
    h->sum += (double)v;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

uint64_t hist_percentile(const struct hist *h, double pct)
{
    if (h->n == 0)
        return 0;
    /* The rank of the sample, 1-based, rounded up as HdrHistogram does. */
    double want = pct / 100.0 * (double)h->n;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++;
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = hist_upper(i);
            /* Never report beyond what was actually seen. */
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}

double hist_mean(const struct hist *h)
{
    return h->n ? h->sum / (double)h->n : 0.0;
}
