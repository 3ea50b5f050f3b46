/*
 * Allocation-failure testing, in builds configured with -Dalloc_fail=true
 * (failalloc.c says how it works). Elsewhere these cost nothing.
 */
#pragma once

#ifdef SUBPOOL_ALLOC_FAIL
/* Routes libevent's and OpenSSL's allocations through the counter; first thing in main. */
void failalloc_init(void);
/* The daemon is ready: counting starts, and the chosen allocation will fail. */
void failalloc_arm(void);
#else
static inline void failalloc_init(void)
{
}
static inline void failalloc_arm(void)
{
}
#endif
