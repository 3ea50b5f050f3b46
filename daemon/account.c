/*
 * Accounting: every byte the daemon holds on a client's behalf is charged
 * to that client's account and to the daemon-wide ledger when it is taken,
 * and released when it is given back. Limits are read from the account,
 * never re-derived per path. The kinds (account.h) and who charges them:
 *
 *   conn     session.c   the session record and its buffers' fixed cost
 *   input    session.c   s->in, through an evbuffer callback: bytes read
 *                        and not yet parsed, in any framing;
 *            ws_server.c bytes wslay took for a message not yet complete
 *   output   session.c   the socket's output buffer, through a callback:
 *                        replies, HTTP answers, 100 Continue, and every
 *                        frame wslay hands over (pongs and closes too);
 *            ws_server.c what still waits in wslay's own queue
 *   pending  session.c   each outstanding request: its record, the wire
 *                        copy kept for queueing and retry, and the id kept
 *                        aside for splicing
 *   batch    session.c   a batch's replies collected so far
 *   subs     subs.c      subscriber records with their ids and params,
 *                        notifications held for a batch reply, and the
 *                        values a subscription keeps (shared, below)
 *
 * What a client may hold (session.c): while its pending requests reach
 * client_max_pending or client_max_in_flight, its input reaches what one
 * request may need (max_request plus a head and a read), or its unread
 * output reaches half of client_max_output, it is not read; a reply that
 * would take its unread output past client_max_output cuts it off. What the
 * daemon holds: when the ledger's total passes max_client_memory, the
 * largest accounts are cut, one at a time, until what is left fits; each cut
 * is one log line naming the client and the reason.
 *
 * Bytes held once for several clients are counted once in the ledger, and
 * in full in the account of each client that holds them (its limits are
 * about what it makes the daemon keep): a reply from a node that client
 * outputs point into (msgbuf.c charges the buffer to the ledger while any
 * output refers to it; session.c tracks which output bytes are references)
 * and the values a subscription keeps (subs.c charges them once per
 * subscription). The client's share of them is account.shared, which the
 * ledger never had from it. Cutting such a client frees them only with the
 * last holder, so the shedder may leave the ledger over budget until the
 * next charge runs it again: it under-cuts rather than over-cuts.
 */
#include "account.h"

#include <event2/event.h>
#include <malloc.h>
#include <unistd.h>

#include "server.h"

void account_hold(struct server *srv, int64_t delta)
{
    struct ledger *l = &srv->ledger;

    l->total += (uint64_t)delta;
    if (delta > 0) {
        if (l->total > l->trim_mark) {
            l->trim_mark = l->total;
            if (l->total > l->peak)
                l->peak = l->total;
        }
        if (l->total > l->budget && l->shed)
            event_active(l->shed, 0, 0);
    }
}

void account_charge(struct server *srv, struct account *a, enum charge kind, int64_t delta)
{
    a->by[kind] += (uint64_t)delta;
    a->total += (uint64_t)delta;
    account_hold(srv, delta);
}

void account_charge_shared(struct server *srv, struct account *a, enum charge kind, int64_t delta)
{
    (void)srv;
    a->by[kind] += (uint64_t)delta;
    a->total += (uint64_t)delta;
    a->shared += (uint64_t)delta;
}

void account_release(struct server *srv, struct account *a)
{
    srv->ledger.total -= a->total - a->shared;
    for (int k = 0; k < CHARGE_COUNT; k++)
        a->by[k] = 0;
    a->total = 0;
    a->shared = 0;
}

/* Freed since the last high mark, at least this much before memory is given back. */
#define TRIM_MIN ((uint64_t)16 << 20)

/*
 * glibc keeps what a burst freed in its heaps, so without this the process
 * stays at its peak: 64 clients left 128 MB of replies unread, then went;
 * three idle seconds later the daemon still held 146 MB, and 7 MB once
 * trimmed. malloc_trim walks the heaps, so it runs only once clients gave
 * back TRIM_MIN since the ledger's last high mark, from the one-second tick.
 */
void account_trim(struct server *srv)
{
    struct ledger *l = &srv->ledger;

    if (l->total + TRIM_MIN <= l->trim_mark) {
        malloc_trim(0);
        l->trims++;
        l->trim_mark = l->total;
    }
}

uint64_t account_budget(uint64_t configured)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t quarter, min = (uint64_t)256 << 20, max = (uint64_t)4 << 30;

    if (configured)
        return configured;
    if (pages <= 0 || page <= 0)
        return (uint64_t)1 << 30;
    /* A quarter of the host's memory, between 256 MiB and 4 GiB. */
    quarter = (uint64_t)pages * (uint64_t)page / 4;
    return quarter < min ? min : quarter > max ? max : quarter;
}
