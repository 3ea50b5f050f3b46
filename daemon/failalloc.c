/*
 * Allocation-failure testing. In a build configured with -Dalloc_fail=true
 * the daemon's own calls to malloc, calloc, realloc, strdup and strndup are
 * wrapped at link time (ld --wrap), and libevent's and OpenSSL's
 * allocations reach the same counter through their allocator hooks (wslay
 * has none). With SUBPOOL_FAIL_ALLOC=N in the environment, the Nth
 * allocation counted from "ready" on returns NULL, once. At exit the count
 * is logged, so a script can try every N a session reaches. With
 * SUBPOOL_FAIL_ALLOC_MIN=BYTES only allocations of at least that size are
 * counted: a test aims at the few large ones (a reply's copy) that way.
 */
#include "failalloc.h"

#include <event2/event.h>
#include <openssl/crypto.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);

static bool armed;
static uint64_t counted, fail_at;
static size_t counted_min;

static void report(void)
{
    if (armed)
        log_info("alloc-fail: %llu allocations counted since ready", (unsigned long long)counted);
}

/* True when this allocation, of size bytes, is the one to fail. */
static bool fail_now(size_t size)
{
    if (!armed || size < counted_min)
        return false;
    return ++counted == fail_at;
}

void *__wrap_malloc(size_t n)
{
    return fail_now(n) ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
    return fail_now(size && n > SIZE_MAX / size ? SIZE_MAX : n * size) ? NULL
                                                                       : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
    return fail_now(n) ? NULL : __real_realloc(p, n);
}

char *__wrap_strdup(const char *s)
{
    return fail_now(strlen(s) + 1) ? NULL : __real_strdup(s);
}

char *__wrap_strndup(const char *s, size_t n)
{
    return fail_now(strnlen(s, n) + 1) ? NULL : __real_strndup(s, n);
}

static void *crypto_malloc(size_t n, const char *file, int line)
{
    (void)file;
    (void)line;
    return __wrap_malloc(n);
}

static void *crypto_realloc(void *p, size_t n, const char *file, int line)
{
    (void)file;
    (void)line;
    return __wrap_realloc(p, n);
}

static void crypto_free(void *p, const char *file, int line)
{
    (void)file;
    (void)line;
    free(p);
}

void failalloc_init(void)
{
    const char *at = getenv("SUBPOOL_FAIL_ALLOC"), *min = getenv("SUBPOOL_FAIL_ALLOC_MIN");

    event_set_mem_functions(__wrap_malloc, __wrap_realloc, free);
    CRYPTO_set_mem_functions(crypto_malloc, crypto_realloc, crypto_free);
    fail_at = at ? strtoull(at, NULL, 10) : 0;
    counted_min = min ? (size_t)strtoull(min, NULL, 10) : 0;
    atexit(report);
}

void failalloc_arm(void)
{
    armed = true;
    counted = 0;
    log_info("alloc-fail: counting allocations from now on; number %llu fails (0: none)",
             (unsigned long long)fail_at);
}
