/* The daemon's intrusive hash table: lookups find what was inserted, cost O(1) probes as it
 * grows, and removal leaves the rest reachable. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "htab.h"

struct item {
    struct hnode node;
    char key[16];
};

#define N 20000

static struct item items[N];

static struct item *find(struct htab *t, const char *key)
{
    uint32_t h = htab_hash(key, strlen(key));

    for (struct hnode *e = htab_first(t, h); e; e = htab_next(e)) {
        struct item *it = htab_entry(e, struct item, node);
        if (strcmp(it->key, key) == 0)
            return it;
    }
    return NULL;
}

static void test_insert_find_remove(void **state)
{
    struct htab t = {0};
    (void)state;

    assert_null(find(&t, "absent"));
    for (int i = 0; i < N; i++) {
        snprintf(items[i].key, sizeof(items[i].key), "k%d", i);
        assert_int_equal(
            htab_insert(&t, &items[i].node, htab_hash(items[i].key, strlen(items[i].key))), 0);
    }
    assert_int_equal(t.n, N);
    uint64_t p0 = htab_probes;
    for (int i = 0; i < N; i++)
        assert_ptr_equal(find(&t, items[i].key), &items[i]);
    /* The table grew with its entries: a few probes per lookup, not N. */
    assert_true(htab_probes - p0 < (uint64_t)3 * N);
    for (int i = 0; i < N; i += 2)
        htab_remove(&t, &items[i].node);
    assert_int_equal(t.n, N / 2);
    for (int i = 0; i < N; i++)
        assert_ptr_equal(find(&t, items[i].key), i % 2 ? &items[i] : NULL);
    /* Removing what is not there changes nothing. */
    htab_remove(&t, &items[0].node);
    assert_int_equal(t.n, N / 2);
    htab_free(&t);
    assert_null(find(&t, items[1].key));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_insert_find_remove),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
