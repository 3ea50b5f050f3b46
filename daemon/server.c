/*
 * subpoold's entry point: options and config, the event loop, signals,
 * the reaper that frees closed sessions outside their callbacks, and the
 * graceful stop (stop accepting, let in-flight requests finish up to
 * shutdown_timeout, close the upstreams, exit 0), the SIGHUP reload (a new
 * config is built from the file and the stored options, checked, and
 * swapped in; a new pool connects before the old one drains), and what
 * systemd is told (READY, STATUS, WATCHDOG, RELOADING, STOPPING).
 */
#include <errno.h>
#include <event2/dns.h>
#include <getopt.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "failalloc.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "msgbuf.h"
#include "sd.h"
#include "server.h"
#include "subs.h"

/* How long large reply buffers are kept for reuse after the last one was done with. */
#define MSGBUF_KEEP_MS 5000

static void usage(FILE *out)
{
    fprintf(out, "Usage: subpoold [OPTION]...\n"
                 "Keep a small pool of websockets to Subtensor nodes and multiplex local\n"
                 "JSON-RPC clients over a Unix socket.\n"
                 "\n"
                 "  -c, --config FILE       read settings from FILE (INI; see subpoold.conf)\n"
                 "  -s, --socket PATH       Unix socket to listen on (key: socket)\n"
                 "  -u, --upstream URL      node endpoint: ws:// or wss:// URL, or a network name\n"
                 "                          (finney, test, archive, local, latent-lite); repeat\n"
                 "                          for fallbacks in priority order; replaces the\n"
                 "                          endpoints of the config file\n"
                 "  -n, --pool-size N       websockets to keep open (key: pool_size)\n"
                 "  -l, --log-level LEVEL   error, warn, info or debug (key: log_level)\n"
                 "  -o, --set KEY=VALUE     set any config key, after the file\n"
                 "  -t, --check-config      validate the configuration and exit\n"
                 "      --help-config       list every config key with its default\n"
                 "  -h, --help              show this help and exit\n"
                 "  -V, --version           show the version and exit\n"
                 "\n"
                 "Options are applied in order after the config file, and again after it\n"
                 "on each reload. Signals: SIGTERM and SIGINT stop gracefully; SIGHUP\n"
                 "reloads the config file (keys marked \"reload: restart\" keep their value).\n"
                 "Sockets passed by systemd (socket activation) replace socket and\n"
                 "tcp_listen.\n"
                 "Exit status: 0 after a clean stop, 1 on a runtime failure, 2 on a usage or\n"
                 "configuration error.\n");
}

static const struct option long_options[] = {
    {"config", required_argument, NULL, 'c'},
    {"socket", required_argument, NULL, 's'},
    {"upstream", required_argument, NULL, 'u'},
    {"pool-size", required_argument, NULL, 'n'},
    {"log-level", required_argument, NULL, 'l'},
    {"set", required_argument, NULL, 'o'},
    {"check-config", no_argument, NULL, 't'},
    {"help-config", no_argument, NULL, 'K'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

static void fail_usage(struct config *cfg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

/* One line on stderr and exit 2; the config is freed first so leak checkers stay quiet. */
static void fail_usage(struct config *cfg, const char *fmt, ...)
{
    va_list ap;

    config_free(cfg);
    fprintf(stderr, "subpoold: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    exit(2);
}

/*
 * The file (if any), then every option of argv in order, then the cross-key
 * checks. Used at start and at each reload, so options keep winning over a
 * reloaded file. Returns NULL with "FILE:LINE: reason" or the option's
 * reason in err.
 */
static struct config *config_build(const char *path, int argc, char **argv, bool *ret_check,
                                   char *err, size_t errlen)
{
    struct config *cfg = config_new();
    int c;

    if (!cfg) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (path && config_load_file(cfg, path, err, errlen) < 0)
        return config_free(cfg);
    /* The first --upstream replaces the file's list. */
    cfg->upstreams_default = true;
    optind = 0; /* glibc: start over, argv may have been scanned before */
    while ((c = getopt_long(argc, argv, "c:s:u:n:l:o:thV", long_options, NULL)) != -1) {
        const char *key = NULL, *value = optarg;
        char kv[256];
        switch (c) {
        case 's':
            key = "socket";
            break;
        case 'u':
            key = "upstream";
            break;
        case 'n':
            key = "pool_size";
            break;
        case 'l':
            key = "log_level";
            break;
        case 'o': {
            const char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg || (size_t)(eq - optarg) >= sizeof(kv)) {
                snprintf(err, errlen, "--set takes KEY=VALUE, not \"%s\"", optarg);
                return config_free(cfg);
            }
            memcpy(kv, optarg, (size_t)(eq - optarg));
            kv[eq - optarg] = '\0';
            key = kv;
            value = eq + 1;
            break;
        }
        case 't':
            if (ret_check)
                *ret_check = true;
            break;
        default:
            break;
        }
        if (key && config_set(cfg, key, value, err, errlen) < 0)
            return config_free(cfg);
    }
    if (config_validate(cfg, err, errlen) < 0)
        return config_free(cfg);
    return cfg;
}

/* Returns the config, or exits 2 with one line on stderr. */
static struct config *load_config(int argc, char **argv, const char **ret_path, bool *ret_check)
{
    struct config *cfg;
    const char *path = NULL;
    char err[512];
    int c;

    /* First pass: what stops at once, and the file, so that options override it. */
    while ((c = getopt_long(argc, argv, "c:s:u:n:l:o:thV", long_options, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf("subpoold %s\n", SUBPOOL_VERSION);
            exit(0);
        case 'K':
            printf("Config keys (INI, in [subpoold] or before any section); \"reload: live\"\n"
                   "keys change on SIGHUP, \"reload: restart\" ones need a restart:\n");
            config_print_keys(stdout);
            exit(0);
        case '?':
            fprintf(stderr, "Try 'subpoold --help'.\n");
            exit(2);
        default:
            break;
        }
    }
    if (optind < argc)
        fail_usage(NULL, "unexpected argument \"%s\"", argv[optind]);
    cfg = config_build(path, argc, argv, ret_check, err, sizeof(err));
    if (!cfg)
        fail_usage(NULL, "%s", err);
    *ret_path = path;
    return cfg;
}

/* Every client is a descriptor: lift the soft limit toward the hard one when it is too low. */
static void raise_fd_limit(unsigned max_clients)
{
    struct rlimit rl;
    rlim_t want = (rlim_t)max_clients + 64;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= want)
        return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur < want)
        log_warn("open file limit is %llu, below max_clients (%u) + 64; raise LimitNOFILE",
                 (unsigned long long)rl.rlim_cur, max_clients);
}

/* Replaced pools whose every link has closed; freed here, outside their callbacks. */
static void retired_reap(struct server *srv)
{
    struct pool *p, *next;

    for (p = TAILQ_FIRST(&srv->retired); p; p = next) {
        next = TAILQ_NEXT(p, r_link);
        if (!pool_closed(p))
            continue;
        TAILQ_REMOVE(&srv->retired, p, r_link);
        log_info("reload: the replaced pool has drained and closed");
        pool_free(p);
    }
}

static void shed_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    session_shed(arg);
}

/* A reply dropped from the cache for room, counted by its method. */
static void cache_evicted(void *arg, unsigned slot)
{
    struct server *srv = arg;
    metrics_count(srv->metrics, slot, METRIC_CACHE_EVICTIONS);
}

/* A node's message lent to clients' outputs: the ledger holds it once (account.c). */
static void ledger_hold(void *arg, int64_t delta)
{
    account_hold(arg, delta);
}

static void reaper_cb(evutil_socket_t fd, short what, void *arg)
{
    struct server *srv = arg;
    (void)fd;
    (void)what;

    retired_reap(srv);
    session_reap(srv);
    server_maybe_finish(srv);
}

void server_maybe_finish(struct server *srv)
{
    struct pool *p;
    bool all_closed;

    /* A retired pool that just closed is freed from the reaper, not from inside its link. */
    TAILQ_FOREACH(p, &srv->retired, r_link)
    {
        if (pool_closed(p)) {
            event_active(srv->reaper, 0, 0);
            break;
        }
    }
    if (!srv->stopping || !TAILQ_EMPTY(&srv->sessions) || !TAILQ_EMPTY(&srv->closing))
        return;
    if (srv->router->table.n || srv->router->n_queued)
        return;
    if (!srv->pool_closing) {
        srv->pool_closing = true;
        log_info("all clients served; closing upstreams");
        pool_close(srv->pool);
        if (srv->pool_next)
            pool_close(srv->pool_next);
        TAILQ_FOREACH(p, &srv->retired, r_link)
        pool_close(p);
    }
    all_closed = pool_closed(srv->pool) && (!srv->pool_next || pool_closed(srv->pool_next));
    TAILQ_FOREACH(p, &srv->retired, r_link)
    all_closed = all_closed && pool_closed(p);
    if (all_closed)
        event_base_loopexit(srv->base, NULL);
}

void server_chain(struct server *srv, const char *chain)
{
    memcpy(srv->chain, chain, sizeof(srv->chain));
    if (!chain[0] || strcmp(srv->cache_chain, chain) == 0)
        return;
    if (srv->cache_chain[0]) {
        log_warn("the chain changed (genesis %s, was %s): reply cache emptied", chain,
                 srv->cache_chain);
        cache_clear(&srv->cache);
    }
    memcpy(srv->cache_chain, chain, sizeof(srv->cache_chain));
}

void server_pool_ready(struct server *srv, struct pool *p)
{
    struct pool *old = srv->pool;

    if (p != srv->pool_next)
        return;
    srv->pool_next = NULL;
    srv->pool = p;
    server_chain(srv, p->chain);
    TAILQ_INSERT_TAIL(&srv->retired, old, r_link);
    log_info("reload: the new pool serves (%u upstreams to %s); the old one drains", p->n,
             p->active->url);
    pool_retire(old);
    router_dispatch(srv->router);
}

/* ---- systemd ---- */

static void notify_status(struct server *srv, bool force)
{
    char st[sizeof(srv->notify_status)];

    snprintf(st, sizeof(st),
             "%u/%u upstreams ready%s, %u clients, %zu requests in flight, %zu queued, "
             "%u subscriptions",
             srv->pool ? pool_ready(srv->pool) : 0, srv->pool ? srv->pool->n : 0,
             srv->pool_next ? " (reload: new pool connecting)" : "", srv->n_sessions,
             srv->router ? srv->router->table.n : 0, srv->router ? srv->router->n_queued : 0,
             srv->n_subs);
    if (!force && strcmp(st, srv->notify_status) == 0)
        return;
    memcpy(srv->notify_status, st, sizeof(st));
    sysd_notify("STATUS=%s", st);
}

/* Every second: systemd's STATUS= when it changed, and memory given back after a burst. */
static void notify_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    notify_status(arg, false);
    account_trim(arg);
}

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    /* Sent from the loop itself: a stuck loop stops it, and systemd restarts us. */
    sysd_notify("WATCHDOG=1");
}

static uint64_t mono_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- reload ---- */

static void server_reload(struct server *srv)
{
    struct config *next, *old = srv->cfg;
    char err[512], kept[256];
    int n_kept;
    bool new_pool;

    if (srv->stopping)
        return;
    sysd_notify("RELOADING=1\nMONOTONIC_USEC=%llu", (unsigned long long)mono_usec());
    log_info("SIGHUP: reloading %s", srv->config_path ? srv->config_path : "the options");
    next = config_build(srv->config_path, srv->argc, srv->argv, NULL, err, sizeof(err));
    if (!next) {
        log_error("reload failed: %s; keeping the running configuration", err);
        goto done;
    }
    n_kept = config_keep_restart_keys(next, old, kept, sizeof(kept));
    if (n_kept < 0) {
        log_error("reload failed: out of memory; keeping the running configuration");
        config_free(next);
        goto done;
    }
    if (n_kept > 0)
        log_warn("reload: %s changed but need%s a restart; keeping the running value%s", kept,
                 n_kept == 1 ? "s" : "", n_kept == 1 ? "" : "s");
    new_pool = pool_config_differs(old, next);
    srv->cfg = next;
    if (new_pool) {
        struct pool *p = pool_new(srv, err, sizeof(err));
        if (!p) {
            srv->cfg = old;
            config_free(next);
            log_error("reload failed: %s; keeping the running configuration", err);
            goto done;
        }
        if (srv->pool_next) {
            /* A previous reload's pool never got to serve: it is simply closed. */
            TAILQ_INSERT_TAIL(&srv->retired, srv->pool_next, r_link);
            pool_close(srv->pool_next);
        }
        srv->pool_next = p;
    }
    log_current_level = next->log_level;
    srv->ledger.budget = account_budget(next->max_client_memory);
    if (srv->ledger.total > srv->ledger.budget)
        event_active(srv->ledger.shed, 0, 0);
    cache_resize(&srv->cache, next->cache ? next->cache_max_bytes : 0);
    router_reconfigure(srv->router);
    config_free(old);
    log_info("reload: configuration applied%s",
             new_pool ? "; a new pool connects and replaces the old one once it serves" : "");
    router_dispatch(srv->router);
done:
    sysd_notify("READY=1");
    notify_status(srv, true);
}

static void shutdown_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct server *srv = arg;
    struct timeval grace = {2, 0};
    (void)fd;
    (void)what;

    if (srv->shutdown_forced) {
        log_warn("shutdown: clients or upstreams still open after the grace period; exiting");
        event_base_loopexit(srv->base, NULL);
        return;
    }
    srv->shutdown_forced = true;
    log_warn("shutdown: shutdown_timeout reached with %zu requests in flight and %zu queued; "
             "failing them",
             srv->router->table.n, srv->router->n_queued);
    router_fail_all(srv->router, SUBPOOL_ERR_SHUTDOWN, "subpoold is shutting down");
    evtimer_add(srv->shutdown_timer, &grace);
    server_maybe_finish(srv);
}

static void server_stop(struct server *srv, const char *why)
{
    struct timeval tv = {srv->cfg->shutdown_timeout_ms / 1000,
                         (srv->cfg->shutdown_timeout_ms % 1000) * 1000};

    if (srv->stopping)
        return;
    srv->stopping = true;
    sysd_notify("STOPPING=1");
    router_drop_orphans(srv->router);
    log_info("%s: stopping; %u clients, %zu requests in flight, %zu queued", why, srv->n_sessions,
             srv->router->table.n, srv->router->n_queued);
    srv->listener = listener_free(srv->listener);
    srv->tcp_listener = listener_free(srv->tcp_listener);
    evtimer_add(srv->shutdown_timer, &tv);
    session_stop_all(srv);
    server_maybe_finish(srv);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct server *srv = arg;
    (void)what;

    if (sig == SIGHUP) {
        server_reload(srv);
        return;
    }
    server_stop(srv, sig == SIGTERM ? "SIGTERM" : "SIGINT");
}

int main(int argc, char **argv)
{
    struct server srv = {0};
    struct event *sigs[3] = {NULL};
    const int signums[3] = {SIGTERM, SIGINT, SIGHUP};
    bool check = false;
    char err[512];
    int rc = 1, unix_fd = -1, tcp_fd = -1;
    bool cache_ok = false;
    uint64_t watchdog_usec;

    failalloc_init();
    log_init();
    srv.cfg = load_config(argc, argv, &srv.config_path, &check);
    srv.argc = argc;
    srv.argv = argv;
    log_current_level = srv.cfg->log_level;
    if (check) {
        printf("configuration ok\n");
        config_free(srv.cfg);
        return 0;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit(srv.cfg->max_clients);
    TAILQ_INIT(&srv.sessions);
    TAILQ_INIT(&srv.closing);
    TAILQ_INIT(&srv.doomed);
    TAILQ_INIT(&srv.subs);
    TAILQ_INIT(&srv.retired);
    srv.started = time(NULL);
    srv.base = event_base_new();
    if (!srv.base)
        goto out;
    /* Resolution goes through evdns so a slow DNS server never blocks the loop. */
    srv.dns = evdns_base_new(srv.base,
                             EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (!srv.dns) {
        /* No resolv.conf: literals and /etc/hosts still work. */
        srv.dns = evdns_base_new(srv.base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (srv.dns)
            evdns_base_load_hosts(srv.dns, NULL);
    }
    srv.reaper = event_new(srv.base, -1, 0, reaper_cb, &srv);
    srv.ledger.shed = event_new(srv.base, -1, 0, shed_cb, &srv);
    srv.ledger.budget = account_budget(srv.cfg->max_client_memory);
    cache_ok = cache_init(&srv.cache, srv.cfg->cache ? srv.cfg->cache_max_bytes : 0) == 0;
    srv.cache.evicted = cache_evicted;
    srv.cache.evicted_arg = &srv;
    srv.shutdown_timer = evtimer_new(srv.base, shutdown_timer_cb, &srv);
    srv.notify_timer = event_new(srv.base, -1, EV_PERSIST, notify_timer_cb, &srv);
    srv.watchdog = event_new(srv.base, -1, EV_PERSIST, watchdog_cb, &srv);
    srv.router = router_new(&srv);
    srv.metrics = metrics_new();
    if (!srv.dns || !srv.reaper || !srv.ledger.shed || !srv.shutdown_timer || !srv.notify_timer ||
        !srv.watchdog || !srv.router || !srv.metrics || !cache_ok ||
        msgbuf_init(srv.base, MSGBUF_KEEP_MS, ledger_hold, &srv) != 0) {
        log_error("out of memory at start-up");
        goto out;
    }
    /*
     * OpenSSL sets up its random generator and SHA-1 on first use; do that now,
     * where a failure stops start-up. An allocation failure inside that set-up
     * later on leaves OpenSSL broken for good: its random calls crash, and
     * every WebSocket handshake's SHA-1 fails.
     */
    {
        unsigned char seed;
        char accept[WS_ACCEPT_LEN + 1];
        if (RAND_bytes(&seed, 1) != 1 || ws_accept("warm-up", 7, accept) != 0) {
            log_error("OpenSSL's random generator or SHA-1 could not be set up");
            goto out;
        }
    }
    for (int i = 0; i < 3; i++) {
        sigs[i] = evsignal_new(srv.base, signums[i], signal_cb, &srv);
        if (!sigs[i] || evsignal_add(sigs[i], NULL) < 0)
            goto out;
    }
    /* Sockets from systemd win over socket and tcp_listen: the unit decides where we listen. */
    if (sysd_listen_fds(&unix_fd, &tcp_fd, err, sizeof(err)) < 0) {
        log_error("%s", err);
        goto out;
    }
    if (unix_fd >= 0) {
        srv.listener = listener_new_fd(&srv, unix_fd, false, false, err, sizeof(err));
        unix_fd = -1;
    } else {
        srv.listener =
            listener_new(&srv, srv.cfg->socket_path, srv.cfg->socket_mode, err, sizeof(err));
    }
    if (!srv.listener) {
        log_error("%s", err);
        goto out;
    }
    if (tcp_fd >= 0) {
        srv.tcp_listener =
            listener_new_fd(&srv, tcp_fd, true, srv.cfg->tcp_allow_remote, err, sizeof(err));
        tcp_fd = -1;
        if (!srv.tcp_listener) {
            log_error("%s", err);
            goto out;
        }
    } else if (*srv.cfg->tcp_listen) {
        srv.tcp_listener = listener_new_tcp(&srv, srv.cfg->tcp_listen, srv.cfg->tcp_allow_remote,
                                            err, sizeof(err));
        if (!srv.tcp_listener) {
            log_error("%s", err);
            goto out;
        }
    }
    srv.pool = pool_new(&srv, err, sizeof(err));
    if (!srv.pool) {
        log_error("%s", err);
        goto out;
    }
    failalloc_arm();
    log_info("subpoold %s ready: %u upstreams over %u endpoints", SUBPOOL_VERSION,
             srv.cfg->pool_size, srv.cfg->n_upstreams);
    /* Listening and the pool exists: clients may come (requests wait for the first link). */
    sysd_notify("READY=1");
    notify_status(&srv, true);
    {
        struct timeval tv = {1, 0};
        evtimer_add(srv.notify_timer, &tv);
    }
    watchdog_usec = sysd_watchdog_usec();
    if (watchdog_usec) {
        /* Twice per interval, as sd_watchdog_enabled(3) advises. */
        struct timeval tv = {(time_t)(watchdog_usec / 2 / 1000000),
                             (suseconds_t)(watchdog_usec / 2 % 1000000)};
        evtimer_add(srv.watchdog, &tv);
        log_info("systemd watchdog: every %llu ms", (unsigned long long)(watchdog_usec / 2000));
    }
    if (event_base_dispatch(srv.base) < 0)
        goto out;
    rc = 0;
    log_info("stopped");
out:
    if (srv.router) {
        session_close_all(&srv);
        subs_free_all(&srv);
    }
    /* Nothing below may run these again once the objects they touch are gone. */
    if (srv.reaper)
        event_del(srv.reaper);
    if (srv.ledger.shed)
        event_del(srv.ledger.shed);
    if (srv.shutdown_timer)
        event_del(srv.shutdown_timer);
    if (srv.notify_timer)
        event_del(srv.notify_timer);
    if (srv.watchdog)
        event_del(srv.watchdog);
    srv.router = router_free(srv.router);
    cache_free(&srv.cache);
    srv.listener = listener_free(srv.listener);
    srv.tcp_listener = listener_free(srv.tcp_listener);
    srv.pool = pool_free(srv.pool);
    srv.pool_next = pool_free(srv.pool_next);
    while (!TAILQ_EMPTY(&srv.retired)) {
        struct pool *p = TAILQ_FIRST(&srv.retired);
        TAILQ_REMOVE(&srv.retired, p, r_link);
        pool_free(p);
    }
    /* Let cancelled name lookups deliver their callbacks so their buffers are released. */
    if (srv.base)
        event_base_loop(srv.base, EVLOOP_NONBLOCK);
    for (int i = 0; i < 3; i++)
        if (sigs[i])
            event_free(sigs[i]);
    if (srv.reaper)
        event_free(srv.reaper);
    if (srv.ledger.shed)
        event_free(srv.ledger.shed);
    if (srv.shutdown_timer)
        event_free(srv.shutdown_timer);
    if (srv.notify_timer)
        event_free(srv.notify_timer);
    if (srv.watchdog)
        event_free(srv.watchdog);
    msgbuf_shutdown();
    if (unix_fd >= 0)
        close(unix_fd);
    if (tcp_fd >= 0)
        close(tcp_fd);
    if (srv.dns)
        evdns_base_free(srv.dns, 0);
    if (srv.base)
        event_base_free(srv.base);
    metrics_free(srv.metrics);
    config_free(srv.cfg);
    return rc;
}
