/*
 * Unit tests for msgbuf: what is referenced and what is copied, that a
 * buffer lives exactly as long as its last holder (run under ASan in CI,
 * which would report a use after free or a leak), and which large buffers
 * are kept for reuse and until when.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "msgbuf.h"

#define BIG (MSGBUF_REF_MIN * 4)

static struct msgbuf *filled(size_t n)
{
    struct msgbuf *mb = msgbuf_reserve(NULL, n + 1);
    assert_non_null(mb);
    assert_int_equal(mb->refs, 1);
    assert_true(mb->cap >= n + 1);
    for (size_t i = 0; i < n; i++)
        mb->data[i] = (char)('a' + i % 26);
    return mb;
}

/* Whether the evbuffer's bytes are the msgbuf's own memory: a write to one shows in the other. */
static bool aliases(struct evbuffer *out, struct msgbuf *mb, size_t off)
{
    char was = mb->data[off];
    mb->data[off] = '#';
    bool same = evbuffer_pullup(out, 1)[0] == '#';
    mb->data[off] = was;
    return same;
}

static void test_reserve_grows_and_keeps(void **state)
{
    (void)state;
    struct msgbuf *mb = filled(100);
    assert_ptr_equal(msgbuf_reserve(mb, 50), mb); /* enough room: untouched */
    mb = msgbuf_reserve(mb, 1 << 20);
    assert_non_null(mb);
    assert_int_equal(mb->cap, 1 << 20);
    assert_int_equal(mb->refs, 1);
    assert_memory_equal(mb->data, "abcdefghijklmnopqrstuvwxyzabcd", 30);
    assert_false(msgbuf_shared(mb));
    assert_null(msgbuf_reserve(NULL, SIZE_MAX)); /* overflow refused, not wrapped */
    msgbuf_unref(mb);
    msgbuf_unref(NULL);
}

static void test_large_lent_part_is_referenced(void **state)
{
    (void)state;
    struct msgbuf *mb = filled(BIG);
    struct evbuffer *out = evbuffer_new();

    msgbuf_lend(mb, BIG);
    assert_int_equal(msgbuf_add(out, mb->data + 10, BIG - 20), 0);
    assert_int_equal(mb->refs, 2);
    assert_true(msgbuf_shared(mb));
    assert_int_equal(evbuffer_get_length(out), BIG - 20);
    assert_true(aliases(out, mb, 10));
    /* The whole lent range, exactly, too. */
    assert_int_equal(msgbuf_add(out, mb->data, BIG), 0);
    assert_int_equal(mb->refs, 3);
    msgbuf_lend_end();

    /* Partly sent: still held. All sent: released. */
    evbuffer_drain(out, 100);
    assert_int_equal(mb->refs, 3);
    evbuffer_drain(out, BIG - 20 - 100);
    assert_int_equal(mb->refs, 2);
    evbuffer_drain(out, BIG);
    assert_int_equal(mb->refs, 1);
    assert_false(msgbuf_shared(mb));
    evbuffer_free(out);
    msgbuf_unref(mb);
}

static void test_everything_else_is_copied(void **state)
{
    (void)state;
    struct msgbuf *mb = filled(BIG);
    struct msgbuf *other = filled(BIG);
    struct evbuffer *out = evbuffer_new();

    /* Not lent at all. */
    assert_int_equal(msgbuf_add(out, mb->data, BIG), 0);
    msgbuf_lend(mb, BIG - 100);
    /* Small; reaching past the lent length; another buffer; a string elsewhere. */
    assert_int_equal(msgbuf_add(out, mb->data, MSGBUF_REF_MIN - 1), 0);
    assert_int_equal(msgbuf_add(out, mb->data + 200, BIG - 200), 0);
    assert_int_equal(msgbuf_add(out, other->data, BIG), 0);
    assert_int_equal(msgbuf_add(out, "\n", 1), 0);
    msgbuf_lend_end();
    /* No longer lent. */
    assert_int_equal(msgbuf_add(out, mb->data, BIG), 0);
    assert_int_equal(mb->refs, 1);
    assert_int_equal(other->refs, 1);
    assert_false(aliases(out, mb, 0));
    assert_int_equal(evbuffer_get_length(out),
                     BIG + MSGBUF_REF_MIN - 1 + (BIG - 200) + BIG + 1 + BIG);
    evbuffer_free(out);
    msgbuf_unref(other);
    msgbuf_unref(mb);
}

static void test_last_holder_frees(void **state)
{
    (void)state;
    struct msgbuf *mb = filled(BIG);
    struct evbuffer *out = evbuffer_new();
    char expect[64];

    memcpy(expect, mb->data + 1000, sizeof(expect));
    msgbuf_lend(mb, BIG);
    assert_int_equal(msgbuf_add(out, mb->data + 1000, BIG - 1000), 0);
    msgbuf_lend_end();
    /* The owner lets go first (a link lost, the next message): the output still reads it. */
    msgbuf_unref(mb);
    assert_memory_equal(evbuffer_pullup(out, sizeof(expect)), expect, sizeof(expect));
    evbuffer_free(out); /* frees the msgbuf; ASan reports a leak otherwise */
}

static void test_large_buffers_are_reused_then_released(void **state)
{
    (void)state;
    const size_t mib = (size_t)1 << 20;
    struct event_base *base = event_base_new();
    assert_non_null(base);
    assert_int_equal(msgbuf_init(base, 20, NULL, NULL), 0);

    struct msgbuf *a = msgbuf_reserve(NULL, 2 * mib);
    struct msgbuf *b = msgbuf_reserve(NULL, 4 * mib);
    assert_non_null(a);
    assert_non_null(b);
    msgbuf_unref(b);
    msgbuf_unref(a);
    assert_int_equal(msgbuf_spare_bytes(), 6 * mib);
    /* The smallest that fits is handed out again, held once. */
    struct msgbuf *c = msgbuf_reserve(NULL, 2 * mib - 100);
    assert_ptr_equal(c, a);
    assert_int_equal(c->refs, 1);
    assert_int_equal(msgbuf_spare_bytes(), 4 * mib);
    struct msgbuf *d = msgbuf_reserve(NULL, 3 * mib);
    assert_ptr_equal(d, b);
    assert_int_equal(msgbuf_spare_bytes(), 0);
    /* None fits: a new one. */
    struct msgbuf *e = msgbuf_reserve(NULL, 5 * mib);
    assert_non_null(e);
    assert_true(e != a && e != b);
    /* Small ones and ones past the byte bound are freed at once (ASan sees it if not). */
    msgbuf_unref(msgbuf_reserve(NULL, 100 * 1024));
    msgbuf_unref(msgbuf_reserve(NULL, 40 * mib));
    assert_int_equal(msgbuf_spare_bytes(), 0);
    msgbuf_unref(c);
    msgbuf_unref(d);
    msgbuf_unref(e);
    assert_int_equal(msgbuf_spare_bytes(), 11 * mib);
    /* Nothing else is pending: the loop runs until the release timer has fired. */
    assert_int_not_equal(event_base_dispatch(base), -1);
    assert_int_equal(msgbuf_spare_bytes(), 0);
    msgbuf_shutdown();
    event_base_free(base);
}

static int64_t held;

static void count_hold(void *arg, int64_t delta)
{
    (void)arg;
    held += delta;
}

/* What an output's callback would charge: all bytes to the account, copies to the ledger. */
struct charged {
    struct outrefs refs;
    int64_t account, ledger;
};

static void charge_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct charged *c = arg;
    size_t ra, rd;
    (void)buf;
    outrefs_moved(&c->refs, info->n_added, info->n_deleted, &ra, &rd);
    c->account += (int64_t)info->n_added - (int64_t)info->n_deleted;
    c->ledger += (int64_t)(info->n_added - ra) - (int64_t)(info->n_deleted - rd);
}

static void test_counted_references_are_held_once(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    assert_non_null(base);
    assert_int_equal(msgbuf_init(base, 20, count_hold, NULL), 0);
    struct msgbuf *mb = filled(BIG);
    const int64_t size = (int64_t)(sizeof(*mb) + mb->cap);
    struct evbuffer *out[3];
    struct charged c[3];

    memset(c, 0, sizeof(c));
    msgbuf_lend(mb, BIG);
    for (int i = 0; i < 3; i++) {
        out[i] = evbuffer_new();
        assert_non_null(out[i]);
        evbuffer_add_cb(out[i], charge_cb, &c[i]);
        /* A copied head, the message by reference, a copied tail: as a reply is spliced. */
        assert_int_equal(msgbuf_add_counted(out[i], &c[i].refs, "{", 1), 0);
        assert_int_equal(msgbuf_add_counted(out[i], &c[i].refs, mb->data, BIG), 0);
        assert_int_equal(msgbuf_add_counted(out[i], &c[i].refs, "}", 1), 0);
        assert_int_equal(c[i].account, BIG + 2);
        assert_int_equal(c[i].ledger, 2);
    }
    msgbuf_lend_end();
    assert_int_equal(held, size); /* three outputs, one buffer */
    assert_int_equal(mb->counted, 3);

    /* Written in pieces that cut across the reference: each piece is told apart. */
    evbuffer_drain(out[0], 1 + 100);
    assert_int_equal(c[0].ledger, 1);
    assert_int_equal(c[0].account, BIG + 2 - 101);
    evbuffer_drain(out[0], BIG - 100);
    assert_int_equal(c[0].ledger, 1);
    assert_int_equal(c[0].account, 1);
    assert_int_equal(c[0].refs.n, 0);
    evbuffer_drain(out[0], 1);
    assert_int_equal(c[0].ledger, 0);
    assert_int_equal(held, size); /* the others still refer to it */

    evbuffer_free(out[1]);
    assert_int_equal(held, size);
    msgbuf_unref(mb); /* the owner lets go: the last output holds it */
    evbuffer_drain(out[2], BIG + 2);
    assert_int_equal(c[2].ledger, 0);
    assert_int_equal(held, 0);
    evbuffer_free(out[0]);
    evbuffer_free(out[2]);
    msgbuf_shutdown();
    event_base_free(base);
}

static void test_an_output_full_of_references_gets_copies(void **state)
{
    (void)state;
    struct msgbuf *mb = filled(BIG);
    struct evbuffer *out = evbuffer_new();
    struct charged c;

    memset(&c, 0, sizeof(c));
    evbuffer_add_cb(out, charge_cb, &c);
    msgbuf_lend(mb, BIG);
    for (int i = 0; i < OUTREFS_MAX + 2; i++)
        assert_int_equal(msgbuf_add_counted(out, &c.refs, mb->data, BIG), 0);
    msgbuf_lend_end();
    assert_int_equal(c.refs.n, OUTREFS_MAX);
    assert_int_equal(mb->counted, OUTREFS_MAX);
    assert_int_equal(c.ledger, 2 * BIG); /* the two copies */
    evbuffer_drain(out, (size_t)BIG * OUTREFS_MAX + BIG / 2);
    assert_int_equal(c.ledger, 2 * BIG - BIG / 2);
    assert_int_equal(c.refs.n, 0);
    assert_int_equal(mb->counted, 0);
    evbuffer_free(out);
    msgbuf_unref(mb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reserve_grows_and_keeps),
        cmocka_unit_test(test_large_lent_part_is_referenced),
        cmocka_unit_test(test_everything_else_is_copied),
        cmocka_unit_test(test_last_holder_frees),
        cmocka_unit_test(test_counted_references_are_held_once),
        cmocka_unit_test(test_an_output_full_of_references_gets_copies),
        cmocka_unit_test(test_large_buffers_are_reused_then_released),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
