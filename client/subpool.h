/*
 * libsubpool: the C client of subpoold. It connects to the daemon's Unix
 * socket, sends JSON-RPC 2.0 requests as NDJSON lines and hands replies back
 * as raw JSON text, matched by the integer ids it generates itself. Use it
 * blocking (subpool_call) or from your own event loop (subpool_fd,
 * subpool_want_write, subpool_process), and subscribe to notifications.
 *
 * Socket path: the first of
 *   1. the path passed to subpool_connect() / subpool_socket_path(), if not NULL or "";
 *   2. $SUBPOOL_SOCKET, if set and not empty;
 *   3. the system daemon's SUBPOOL_SOCKET_SYSTEM (/run/subpoold/subpoold.sock), if it exists;
 *   4. the per-user $XDG_RUNTIME_DIR/subpoold.sock, if $XDG_RUNTIME_DIR is set;
 *   5. otherwise SUBPOOL_SOCKET_SYSTEM anyway, so the connect error names it.
 *
 * Return values: 0 on success or a negative enum subpool_err. When a reply is
 * a JSON-RPC error, calls return SUBPOOL_E_RPC and still hand over the reply
 * text: subpool_error_message() gives its code and message. After
 * SUBPOOL_E_CONNECT and SUBPOOL_E_IO, errno holds the system error.
 *
 * Threads: the library has no global state. A connection must not be used by
 * two threads at the same time; use one connection per thread, or your own
 * lock around every call. Callbacks run on the thread that called
 * subpool_process(), subpool_run() or subpool_call(), or subpool_close().
 *
 * The library never prints, never exits, never aborts and never raises
 * SIGPIPE. Out-parameters are named ret_*; destructors accept NULL.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SUBPOOL_SOCKET_SYSTEM "/run/subpoold/subpoold.sock"
#define SUBPOOL_SOCKET_NAME   "subpoold.sock" /* in $XDG_RUNTIME_DIR */
#define SUBPOOL_PATH_MAX      108             /* a Unix socket path, NUL included */

enum subpool_err {
    SUBPOOL_OK = 0,
    SUBPOOL_E_INVAL = -1,     /* bad argument: NULL, empty method, params not a JSON array/object */
    SUBPOOL_E_NOMEM = -2,     /* out of memory */
    SUBPOOL_E_CONNECT = -3,   /* cannot connect to the socket (errno says why) */
    SUBPOOL_E_TIMEOUT = -4,   /* no reply within the timeout */
    SUBPOOL_E_CLOSED = -5,    /* the daemon closed the connection (stopped or restarted) */
    SUBPOOL_E_IO = -6,        /* reading or writing the socket failed (errno says why) */
    SUBPOOL_E_PROTOCOL = -7,  /* the text is not the JSON-RPC message expected */
    SUBPOOL_E_TOOBIG = -8,    /* a reply was longer than the limit (subpool_set_max_reply) */
    SUBPOOL_E_RPC = -9,       /* the reply is a JSON-RPC error object */
    SUBPOOL_E_CANCELED = -10, /* canceled by the caller: unsubscribed, or connection closed */
    SUBPOOL_E_NOTFOUND = -11, /* no request or subscription with this handle */
    SUBPOOL_E_BUSY = -12,     /* a blocking call or subpool_process from inside a callback */
};

/* A constant English description of an enum subpool_err value. */
const char *subpool_strerror(int err);

/* The library's version, e.g. "0.1.0". */
const char *subpool_version(void);

/*
 * Resolve the socket path as described at the top into buf (cap bytes;
 * SUBPOOL_PATH_MAX is enough). Returns 0, or SUBPOOL_E_INVAL when the path
 * does not fit in buf or in a Unix socket address.
 */
int subpool_socket_path(const char *path, char *buf, size_t cap);

/* ---- Connections -------------------------------------------------------- */

struct subpool_conn;

/*
 * Connect to the daemon (path resolved as above). The connect itself blocks
 * briefly (a local socket); afterwards the descriptor is nonblocking.
 */
int subpool_connect(const char *path, struct subpool_conn **ret_conn);

/*
 * Close the connection and free it. Every outstanding request and
 * subscription gets its callback once more with SUBPOOL_E_CANCELED before
 * this returns, so their arguments can be freed there. May be called from
 * a callback of this connection: the memory is then released when the
 * outermost subpool_process(), subpool_run() or subpool_call() returns,
 * which returns SUBPOOL_E_CANCELED and must be the last use of the pointer.
 */
void subpool_close(struct subpool_conn *c);

/*
 * Longest reply line accepted (default 512 MiB). A longer reply fails its
 * request with SUBPOOL_E_TOOBIG and is skipped; the connection stays usable.
 */
void subpool_set_max_reply(struct subpool_conn *c, size_t bytes);

/* ---- Blocking use --------------------------------------------------------- */

/*
 * Send `method` with `params` (JSON text of an array or object, or NULL for
 * none) and wait up to timeout_ms (negative: no limit) for its reply.
 * Returns 0 with *ret_reply holding the whole reply as malloc'd,
 * NUL-terminated JSON text (free() it) and *ret_len its length (ret_len may
 * be NULL); SUBPOOL_E_RPC likewise, when the reply is an error object; any
 * other code with *ret_reply = NULL. Use subpool_message_parse() to find the
 * result in the reply. Callbacks of other requests on this connection may
 * run while it waits. On timeout the request is forgotten: a late reply is
 * dropped.
 */
int subpool_call(struct subpool_conn *c, const char *method, const char *params, int timeout_ms,
                 char **ret_reply, size_t *ret_len);

/* ---- Nonblocking use: drive the connection from your event loop ------------ */

/*
 * Called once per request: status 0 (a result) or SUBPOOL_E_RPC (an error
 * object) with the whole reply in text[0..len) (NUL-terminated, valid only
 * during the call), or a negative status with text NULL: SUBPOOL_E_TIMEOUT,
 * SUBPOOL_E_CLOSED, SUBPOOL_E_IO, SUBPOOL_E_TOOBIG, SUBPOOL_E_CANCELED.
 */
typedef void subpool_reply_fn(struct subpool_conn *c, uint64_t id, int status, const char *text,
                              size_t len, void *arg);

/* Poll for readability always, and for writability while subpool_want_write() is true. */
int subpool_fd(const struct subpool_conn *c);
bool subpool_want_write(const struct subpool_conn *c);

/* Milliseconds until the earliest request deadline (then call subpool_process); -1: none. */
int subpool_timeout_ms(const struct subpool_conn *c);

#define SUBPOOL_READABLE 1u
#define SUBPOOL_WRITABLE 2u

/*
 * Do the work the events allow: write queued requests, read and dispatch
 * replies and notifications (their callbacks run from here), expire
 * requests past their deadline. events may be 0 (deadlines only).
 * Returns 0, or the error that ended the connection (every request and
 * subscription has been told through its callback; close it).
 */
int subpool_process(struct subpool_conn *c, unsigned events);

/*
 * Block up to timeout_ms (negative: no limit) until the connection has
 * something to do, then subpool_process() it. Returns 0 (also on a timeout
 * or when a signal interrupted the wait) or the error that ended the
 * connection.
 */
int subpool_run(struct subpool_conn *c, int timeout_ms);

/*
 * Queue a request; its reply goes to cb(arg) from subpool_process(). The
 * request is written right away when the socket allows. *ret_id (may be
 * NULL) is the id the library chose for it. timeout_ms < 0: no limit.
 */
int subpool_send(struct subpool_conn *c, const char *method, const char *params, int timeout_ms,
                 subpool_reply_fn *cb, void *arg, uint64_t *ret_id);

/* Forget a request: its callback will not be called and a late reply is dropped. */
int subpool_cancel(struct subpool_conn *c, uint64_t id);

/*
 * Lines no request or subscription claims (a notification of no known
 * subscription, a reply with an unknown id) go here; without a callback
 * they are dropped. text is NUL-terminated and valid during the call only.
 */
typedef void subpool_message_fn(struct subpool_conn *c, const char *text, size_t len, void *arg);
void subpool_set_message_cb(struct subpool_conn *c, subpool_message_fn *cb, void *arg);

/* ---- Subscriptions ---------------------------------------------------------- */

#define SUBPOOL_SUBSCRIBED 1 /* status of the first callback: text is the subscribe reply */

/*
 * Called with status SUBPOOL_SUBSCRIBED once the node accepted the
 * subscription, then with 0 for each notification (text is the whole
 * notification: subpool_message_parse() finds params.result in it), and
 * finally exactly once with a negative status: SUBPOOL_E_CANCELED after
 * subpool_unsubscribe() or subpool_close(), SUBPOOL_E_RPC when the
 * subscribe request was refused (text is the error reply), or the error
 * that ended the connection (text NULL).
 */
typedef void subpool_notify_fn(struct subpool_conn *c, uint64_t sub, int status, const char *text,
                               size_t len, void *arg);

/*
 * Send a subscribe request, e.g. "chain_subscribeNewHeads". unsub_method
 * names the method that ends it; NULL derives it from `method`
 * (subscribe -> unsubscribe, follow -> unfollow, submitAndWatch -> unwatch)
 * and fails with SUBPOOL_E_INVAL when none of those appears. timeout_ms
 * bounds the subscribe and unsubscribe replies. *ret_sub is the handle.
 * Notifications are matched to it by the subscription id in the reply, so
 * the daemon must write the reply before the first notification.
 */
int subpool_subscribe(struct subpool_conn *c, const char *method, const char *params,
                      const char *unsub_method, int timeout_ms, subpool_notify_fn *cb, void *arg,
                      uint64_t *ret_sub);

/*
 * Stop delivering notifications of `sub` and send the unsubscribe request
 * (once the subscription id is known). The final SUBPOOL_E_CANCELED
 * callback comes from subpool_process() when the daemon has answered, or
 * from subpool_close(). Returns SUBPOOL_E_NOTFOUND for an unknown or ended
 * handle, 0 when it was already being unsubscribed.
 */
int subpool_unsubscribe(struct subpool_conn *c, uint64_t sub);

/* ---- Reading replies ---------------------------------------------------------- */

/* text[off .. off + len); len 0: absent. */
struct subpool_span {
    size_t off;
    size_t len;
};

struct subpool_message {
    struct subpool_span id;
    struct subpool_span method;       /* notifications: the method name string, quotes included */
    struct subpool_span result;       /* replies: result; notifications: params.result */
    struct subpool_span error;        /* error replies: the error object */
    long long code;                   /* error.code (0 when absent or not an integer) */
    struct subpool_span message;      /* error.message, a JSON string with its quotes */
    struct subpool_span data;         /* error.data */
    struct subpool_span subscription; /* notifications: params.subscription */
};

/*
 * Locate the parts of a reply or notification in text[0..len) (the JSON
 * scanner validates it; nothing is copied). Returns 0 for a result reply or
 * a notification, SUBPOOL_E_RPC for an error reply, SUBPOOL_E_PROTOCOL for
 * anything else.
 */
int subpool_message_parse(const char *text, size_t len, struct subpool_message *ret);

/*
 * For an error reply: its code, and its message decoded into buf (cap
 * bytes, always NUL-terminated, cut at a character boundary when long).
 * ret_code and buf may be NULL. Returns 0, or SUBPOOL_E_PROTOCOL when text
 * is not an error reply.
 */
int subpool_error_message(const char *text, size_t len, long long *ret_code, char *buf, size_t cap);

/*
 * Decode the JSON string at span s of text (quotes included, as in struct
 * subpool_message) into buf as UTF-8, NUL-terminated. Returns 0,
 * SUBPOOL_E_TOOBIG when it had to be cut to fit (buf still holds the
 * start), or SUBPOOL_E_INVAL when the span is not a string.
 */
int subpool_string_decode(const char *text, const struct subpool_span *s, char *buf, size_t cap);

#ifdef __cplusplus
}
#endif
