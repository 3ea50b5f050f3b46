/*
 * The daemon's objects and how they reach each other. One event loop owns
 * everything; each object has one owner and one file:
 *   listener.c  accepts local connections          -> session
 *   session.c   NDJSON framing, envelopes, replies -> router
 *   router.c    upstream ids, timeouts, retries    -> pool
 *   pool.c      the upstream websockets, picking   -> upstream.c
 *   status.c    locally answered subpool_* methods
 * Objects are never freed inside their own callbacks: closing is a state,
 * the memory goes from a deferred pass.
 */
#pragma once

#include <event2/event.h>
#include <event2/event_struct.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/uio.h>
#include <time.h>

#include "account.h"
#include "cache.h"
#include "config.h"
#include "htab.h"
#include "jsonrpc.h"

struct session;
struct pool_member;
struct batch;
struct listener;
struct upstream;

TAILQ_HEAD(request_list, request);

/*
 * One owner's requests waiting for an upstream (a client's, or the daemon's
 * own), in order. Owners with waiting requests take turns (router.c).
 */
struct waitq {
    struct request_list reqs;
    bool on_ring;
    TAILQ_ENTRY(waitq) link; /* router->ring[pick] */
};
TAILQ_HEAD(waitq_ring, waitq);

/* Kinds of requests that may wait (REQUEST_PICK_TARGET ones never do). */
#define WAIT_KINDS 2

/*
 * A client's share of the queue: how many of its requests wait, and its
 * place in the router's heap of clients by that count, so that a full
 * queue makes room by refusing the newest request of the client with the
 * most waiting (router.c).
 */
struct qowner {
    unsigned n;  /* its requests waiting */
    unsigned at; /* 1 + its index in router->owners; 0 while not there */
};
TAILQ_HEAD(session_list, session);
TAILQ_HEAD(sub_list, sub);
TAILQ_HEAD(orphan_list, orphan);
TAILQ_HEAD(subscriber_list, subscriber);

/*
 * Internal requests (subscribe and unsubscribe upstream, made by subs.c)
 * have no session: their reply or failure goes to this callback. msg is
 * NULL on failure, with a subpool error code and text.
 */
typedef void request_done_fn(void *ctx, struct pool_member *m, const char *msg, size_t len,
                             const struct jsonrpc_msg *jm, int code, const char *message);

enum request_pick {
    REQUEST_PICK_LOAD = 0, /* the ready upstream with the fewest requests in flight */
    REQUEST_PICK_SUBS,     /* the ready upstream with the fewest subscriptions, under the cap */
    REQUEST_PICK_TARGET,   /* only r->target; fails if it is lost */
};

/* A client request forwarded to a node. Owned by the router. */
struct request {
    struct router *rt;
    uint64_t uid;            /* the id the node sees */
    struct session *session; /* NULL once the client has gone */
    struct batch *batch;     /* the batch it belongs to, or NULL */
    char *orig_id;           /* the client's id bytes, spliced back verbatim */
    size_t orig_id_len;
    char *wire; /* the request with uid in place of the id: kept for queueing and retry */
    size_t wire_len;
    size_t sent_len;            /* wire_len when it was last sent (kept after the client left) */
    unsigned flags;             /* METHOD_* */
    unsigned method_slot;       /* metrics */
    uint64_t start_ns;          /* arrival, for the latency histogram */
    bool retried;               /* a read gets one retry after an upstream loss */
    bool queued;                /* on the router's wait queue */
    struct pool_member *member; /* where it was sent; NULL while queued */
    struct waitq *wq;           /* while queued: the owner's wait list it is on */
    enum request_pick pick;
    struct pool_member *target; /* with REQUEST_PICK_TARGET */
    request_done_fn *done;      /* internal requests: who gets the reply */
    void *done_ctx;
    struct event timer; /* request_timeout */
    char *key;          /* a pure read's identity (readkey.h), or NULL: never shared */
    size_t key_len;
    bool latest;                   /* its answer moves with the head */
    unsigned traits;               /* enum read_trait */
    bool leading;                  /* in router->flights: identical reads may share its reply */
    uint64_t epoch;                /* leading: the head epoch it was first sent in */
    struct request *leader;        /* a follower: the request whose reply it gets */
    struct request_list followers; /* leading or not: the requests that get its reply */
    TAILQ_ENTRY(request) f_link;   /* leader->followers */
    struct hnode fnode;            /* router->flights */
    TAILQ_ENTRY(request) s_link;   /* session->requests */
    TAILQ_ENTRY(request) q_link;   /* member->sent or router queue */
    struct hnode hnode;            /* router->table, by uid, while sent */
};

#define TIMED_OUT_KEEP 8

/* A block hash as a node writes it: "0x" and 64 hex digits. */
#define GENESIS_LEN 66

/* One upstream websocket and the requests it carries. Owned by the pool. */
struct pool_member {
    struct pool *pool;
    struct upstream *u;
    unsigned index;
    unsigned in_flight;
    unsigned n_subs;         /* upstream subscriptions it carries */
    unsigned n_subs_pending; /* subscribes sent on it, not yet answered */
    uint64_t requests;       /* sent, total */
    struct request_list sent;
    /* The largest requests that timed out here since the node last said "too big" for one. */
    size_t timed_out[TIMED_OUT_KEEP];
    struct sub_list subs;
    struct htab subs_by_id;     /* its active subs by upstream subscription id */
    struct orphan_list orphans; /* notifications that came before their subscribe reply */
    unsigned n_orphans;
    /* Endpoint and health, kept by pool.c. */
    struct pool_endpoint *ep; /* the endpoint its link goes to (or will, once reconnected) */
    bool watch;               /* a watch link (pool_endpoint.watch): never carries clients */
    bool moving;              /* on its way to the active endpoint, one member at a time */
    bool draining;            /* takes no new requests; reconnects once in_flight is 0 */
    bool stale;               /* its best block stays behind another upstream's */
    bool best_known;          /* best and best_at_ms are from the current link */
    bool closed;              /* a retired watch link, freed by the pool's deferred pass */
    uint64_t best;            /* highest best block number the current link reported */
    uint64_t best_at_ms;      /* monotonic time it last went up */
    uint64_t health_seq;      /* id of the pool's own chain_getHeader in flight; 0: none */
    uint64_t health_sent_ms;
    uint64_t genesis_seq; /* id of the pool's chain_getBlockHash [0] in flight; 0: none */
    uint64_t genesis_sent_ms;
    bool genesis_checked;            /* the current link told its genesis hash, */
    char genesis[GENESIS_LEN + 1];   /* this one */
    TAILQ_ENTRY(pool_member) w_link; /* watch links only: pool->watchers */
};

/*
 * One configured endpoint, in priority order (index 0 is the primary). The
 * pool's members all go to the active endpoint; every other endpoint has a
 * watch link that tells when it is healthy (up, answering, not stale).
 */
enum endpoint_status {
    ENDPOINT_UNKNOWN = 0, /* not tried yet */
    ENDPOINT_UP,          /* a link to it answered chain_getHeader */
    ENDPOINT_DOWN,        /* an attempt failed, or its last link stopped answering */
};

struct pool_endpoint {
    unsigned index;   /* priority: 0 first */
    const char *url;  /* the configured URL (names already resolved) */
    const char *name; /* network name for that URL, or NULL */
    enum endpoint_status status;
    bool stale; /* every link to it that reports a best block is stale */
    bool best_known;
    uint64_t best; /* highest best block seen on any link to it */
    uint64_t best_at_ms;
    double status_since;  /* wall clock */
    uint64_t up_at_ms;    /* monotonic time it last became ENDPOINT_UP */
    uint64_t retry_at_ms; /* its last Retry-After ends then: no new watch link before */
    char last_error[192];
    struct pool_member *watch;     /* NULL while it is the active endpoint */
    char genesis[GENESIS_LEN + 1]; /* "0x" and 64 hex digits, once a link told it */
    bool wrong_chain;              /* its genesis differs from the first endpoint's that told one */
};

struct pool {
    struct server *srv;
    char chain[GENESIS_LEN + 1]; /* its reference genesis, "" until one endpoint told it */
    unsigned n;
    unsigned n_closed; /* during shutdown */
    unsigned rotor;
    struct pool_member *members;
    unsigned n_endpoints;
    struct pool_endpoint *endpoints;
    struct pool_endpoint *active; /* where the members go */
    uint64_t active_at_ms;        /* monotonic time it became active */
    struct ssl_ctx_st *tls;       /* shared by every wss:// link; NULL without one */
    struct event *rebalance;      /* deferred: moves members, starts and retires watch links */
    struct event *health;         /* every health_interval: chain_getHeader on each link */
    uint64_t health_next;         /* sequence of those requests */
    TAILQ_HEAD(watch_list, pool_member) watchers; /* live and retiring watch links */
    bool closing;
    /* Reload: a replaced pool drains (no new requests) and closes each member once idle. */
    bool retiring;
    unsigned index_base;      /* upstream numbers stay unique across reloads */
    struct event *retire;     /* while retiring: a 1 s tick; ends pinned subscriptions late */
    uint64_t retire_deadline; /* monotonic ms */
    TAILQ_ENTRY(pool) r_link; /* server->retired */
};

struct router {
    struct server *srv;
    struct htab table;                  /* requests sent, by uid; table.n of them */
    struct waitq_ring ring[WAIT_KINDS]; /* owners with requests waiting, by pick, in turn */
    struct waitq internal[WAIT_KINDS];  /* the daemon's own (subscribes, health polls) */
    size_t n_queued;
    size_t n_queued_pick[WAIT_KINDS];
    struct qowner **owners; /* clients with requests waiting: a max-heap by count */
    unsigned n_owners, owners_cap;
    uint64_t evicted;         /* waiting requests refused to make room for a client with fewer */
    struct htab flights;      /* reads in flight that identical ones may share, by key */
    uint64_t coalesced;       /* requests that shared another's reply instead of going upstream */
    uint64_t dispatch_visits; /* requests looked at by dispatch: a debug counter for tests */
    uint64_t next_uid;
    const struct timeval *timeout_tv; /* a libevent common timeout */
    struct event *dispatch;           /* deferred dispatch after an upstream loss */
};

/* Who is at the other end of a local connection, read once at accept. */
struct peer {
    bool known; /* SO_PEERCRED answered (Unix sockets) */
    int pid;
    unsigned uid, gid;
};

/* TCP clients (whose uid the socket does not tell) count as this one user. */
#define PEER_UID_TCP ((unsigned)-1)
#define UID_BUCKETS  64

/* Clients per user, for max_clients_per_uid. */
struct uid_count {
    unsigned uid;
    unsigned n;
    struct uid_count *next;
};

struct stats {
    uint64_t requests;            /* client calls accepted (batch elements counted one by one) */
    uint64_t errors;              /* error replies subpool produced itself */
    uint64_t responses;           /* node replies delivered */
    uint64_t accepted;            /* connections */
    uint64_t bytes_in;            /* read from clients */
    uint64_t bytes_out;           /* written to clients */
    unsigned clients_by_proto[4]; /* current clients by enum session_proto */
};

struct server {
    uint64_t head_epoch; /* moves on every sign of a new block: reads of "latest" key on it */
    struct cache cache;  /* replies to pinned reads (cache.c) */
    char chain[GENESIS_LEN + 1];       /* the serving pool's chain; "" until it knows it */
    char cache_chain[GENESIS_LEN + 1]; /* the chain the cache's replies are from */
    struct event_base *base;
    struct evdns_base *dns;
    struct config *cfg;
    struct listener *listener;
    struct listener *tcp_listener;
    struct metrics *metrics;
    struct pool *pool;
    struct router *router;
    struct session_list sessions;
    struct session_list closing; /* freed by the reaper */
    struct session_list doomed;  /* to be closed by the reaper */
    struct event *reaper;
    struct event *shutdown_timer;
    unsigned n_sessions;
    uint64_t next_session_id;
    struct uid_count *uids[UID_BUCKETS];
    struct sub_list subs; /* every upstream subscription */
    struct htab shared;   /* shared subs by key */
    unsigned n_subs;
    uint64_t next_sub_id;
    /* Reload: the new pool connects as pool_next, then replaces pool, which retires. */
    struct pool *pool_next;
    TAILQ_HEAD(pool_list, pool) retired;
    unsigned next_upstream_index;
    int argc; /* options re-applied on top of the file at each reload */
    char **argv;
    const char *config_path;
    struct event *notify_timer; /* STATUS= for systemd, sent when it changed */
    struct event *watchdog;     /* WATCHDOG=1 */
    char notify_status[256];
    bool stopping;
    bool pool_closing;
    bool shutdown_forced;
    time_t started;
    struct stats stats;
    struct ledger ledger; /* bytes held for clients (account.c) */
};

/* server.c */
void server_maybe_finish(struct server *srv);
/* The pool connecting after a reload (srv->pool_next) can serve: it replaces srv->pool. */
void server_pool_ready(struct server *srv, struct pool *p);

/* listener.c */
struct listener *listener_new(struct server *srv, const char *path, unsigned mode, char *err,
                              size_t errlen);
struct listener *listener_new_tcp(struct server *srv, const char *addr, bool allow_remote,
                                  char *err, size_t errlen);
/* A listening socket passed by systemd: used as it is (never unlinked or chmod-ed). */
struct listener *listener_new_fd(struct server *srv, int fd, bool tcp, bool allow_remote, char *err,
                                 size_t errlen);
struct listener *listener_free(struct listener *l);

/* session.c */
struct session *session_new(struct server *srv, int fd, bool tcp, const struct peer *peer);
/* Clients that user (or PEER_UID_TCP) has now. */
unsigned session_uid_clients(struct server *srv, unsigned uid);
/* The name of process pid from /proc ("" when unknown), for log lines. */
void proc_comm(int pid, char *buf, size_t len);
void session_close(struct session *s, const char *why);
void session_free(struct session *s);
uint64_t session_id(const struct session *s);
struct subscriber_list *session_subscribers(struct session *s);
/* One reply, the concatenation of parts, for a request of s (in batch b or alone). */
void session_deliver(struct session *s, struct batch *b, const struct iovec *parts, int n);
/* An error reply echoing id (NULL = null). */
void session_error(struct session *s, struct batch *b, const char *id, size_t id_len, int code,
                   const char *message);
/* The wait list of s's requests of this kind (REQUEST_PICK_LOAD or _SUBS). */
struct waitq *session_waitq(struct session *s, enum request_pick pick);
struct qowner *session_qowner(struct session *s);
struct session *session_of_qowner(struct qowner *qo);
/* The router attached or detached one of s's requests. */
void session_request_added(struct session *s, struct request *r);
void session_request_removed(struct session *s, struct request *r);
/* Server-wide: free closed sessions; at stop, close the idle ones; at exit, close all. */
void session_reap(struct server *srv);
/* The ledger is over max_client_memory: cut the largest clients until it fits. */
void session_shed(struct server *srv);
void session_stop_all(struct server *srv);
void session_close_all(struct server *srv);

/* router.c */
struct router *router_new(struct server *srv);
struct router *router_free(struct router *rt);
/* Forward msg (a request inside buf) for session s. */
void router_submit(struct router *rt, struct session *s, struct batch *b, const char *buf,
                   const struct jsonrpc_msg *msg, unsigned flags, unsigned method_slot);
/* The client of r has gone: drop r if it waits, or let its reply be discarded. */
void router_forget(struct router *rt, struct request *r);
void router_dispatch(struct router *rt);
/* Reload: request_timeout may have changed (requests already waiting keep theirs). */
void router_reconfigure(struct router *rt);
void router_on_message(struct router *rt, struct pool_member *m, const char *msg, size_t len);
void router_on_oversize(struct router *rt, struct pool_member *m, bool have_id, uint64_t id,
                        uint64_t len);
/* too_big: the node ended the link for a message too large for it. */
void router_on_lost(struct router *rt, struct pool_member *m, const char *reason, bool too_big);
void router_fail_all(struct router *rt, int code, const char *message);
/* Forget requests whose client has gone (at shutdown, so it need not wait for them). */
void router_drop_orphans(struct router *rt);
/*
 * Send {"method": method, "params": params} on behalf of the daemon itself.
 * Returns the request (to cancel it), or NULL when out of memory or when a
 * REQUEST_PICK_TARGET link is not ready (such requests never wait).
 */
struct request *router_internal(struct router *rt, const char *method, const char *params,
                                size_t params_len, unsigned flags, enum request_pick pick,
                                struct pool_member *target, request_done_fn *done, void *ctx);
/* The owner of an internal request has gone: its reply will be dropped. */
void router_cancel(struct router *rt, struct request *r);

/* pool.c */
struct pool *pool_new(struct server *srv, char *err, size_t errlen);
struct pool *pool_free(struct pool *p);
struct pool_member *pool_pick(struct pool *p);
struct pool_member *pool_pick_sub(struct pool *p);
void pool_close(struct pool *p);
/* After pool_close(): every link has finished closing. */
bool pool_closed(const struct pool *p);
unsigned pool_ready(const struct pool *p);
/* Whether m's link told its genesis, and it is the serving chain: its replies may be kept. */
bool pool_member_on_chain(const struct pool_member *m);
/* The serving pool's chain is now chain ("" while it does not know it): the reply cache
 * serves only while it is known, and empties when it changes. */
void server_chain(struct server *srv, const char *chain);
/* Some member would take a request now. */
bool pool_can_serve(struct pool *p);
/* Reload: the pool was replaced; it takes nothing new, moves shared subscriptions, drains. */
void pool_retire(struct pool *p);
/* A reload from a to b needs new upstream links (endpoints, size, TLS or link settings). */
bool pool_config_differs(const struct config *a, const struct config *b);

/* status.c: answer a subpool_* method; returns false when the method is unknown. */
void status_handle(struct server *srv, struct session *s, struct batch *b, const char *buf,
                   const struct jsonrpc_msg *msg, unsigned slot);
