/*
 * The ledger of bytes held on clients' behalf; account.c says how it works.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct server;

enum charge {
    CHARGE_CONN,    /* the connection's own records */
    CHARGE_INPUT,   /* read from the socket, not yet taken */
    CHARGE_OUTPUT,  /* replies, HTTP answers, pongs and close frames not yet written */
    CHARGE_PENDING, /* outstanding requests: their records, wire copies and ids */
    CHARGE_BATCH,   /* replies of a batch still being collected */
    CHARGE_SUBS,    /* subscription records, their keys and notifications held for them */
    CHARGE_COUNT,
};

/* What one client holds. */
struct account {
    uint64_t by[CHARGE_COUNT];
    uint64_t total;
    uint64_t shared; /* of total: bytes others hold too, counted once in the ledger elsewhere */
};

/* What every client holds together, against max_client_memory. */
struct ledger {
    uint64_t total;
    uint64_t peak;
    uint64_t budget;    /* max_client_memory, resolved */
    uint64_t cuts;      /* clients cut because the daemon budget was exceeded */
    uint64_t trim_mark; /* highest total since memory was last given back (<= peak) */
    uint64_t trims;     /* times it was */
    struct event *shed; /* deferred: cuts the largest clients until under budget */
};

/* Charge (delta > 0) or release (delta < 0) bytes of one kind to a client. */
void account_charge(struct server *srv, struct account *a, enum charge kind, int64_t delta);
/* The same for bytes held once for several clients (a reply lent to their outputs, what a
 * subscription keeps): each client's account counts them, the ledger does not; the holder
 * charges the ledger once with account_hold. */
void account_charge_shared(struct server *srv, struct account *a, enum charge kind, int64_t delta);
/* Charges (delta > 0) or releases bytes held once for several clients to the ledger alone. */
void account_hold(struct server *srv, int64_t delta);
/* Releases everything the account still holds (the client is being freed). */
void account_release(struct server *srv, struct account *a);
/* Once a second: give freed memory back to the system after a burst. */
void account_trim(struct server *srv);
/* max_client_memory, with 0 resolved from the host's memory. */
uint64_t account_budget(uint64_t configured);
