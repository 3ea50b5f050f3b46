/*
 * subpoold's entry point: options and config, the event loop, signals,
 * the reaper that frees closed sessions outside their callbacks, and the
 * graceful stop (stop accepting, let in-flight requests finish up to
 * shutdown_timeout, close the upstreams, exit 0).
 */
#include <errno.h>
#include <event2/dns.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "log.h"
#include "metrics.h"
#include "server.h"
#include "subs.h"

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
                 "Options are applied in order after the config file. Signals: SIGTERM and\n"
                 "SIGINT stop gracefully.\n"
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

/* Returns the config, or exits 2 with one line on stderr. */
static struct config *load_config(int argc, char **argv, bool *ret_check)
{
    struct config *cfg = config_new();
    const char *path = NULL;
    char err[512];
    int c;

    if (!cfg)
        fail_usage(NULL, "%s", "out of memory");
    /* First pass: the file, so that options override it whatever their order. */
    while ((c = getopt_long(argc, argv, "c:s:u:n:l:o:thV", long_options, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case 'h':
            usage(stdout);
            config_free(cfg);
            exit(0);
        case 'V':
            printf("subpoold %s\n", SUBPOOL_VERSION);
            config_free(cfg);
            exit(0);
        case 'K':
            printf("Config keys (INI, in [subpoold] or before any section):\n");
            config_print_keys(stdout);
            config_free(cfg);
            exit(0);
        case '?':
            fprintf(stderr, "Try 'subpoold --help'.\n");
            config_free(cfg);
            exit(2);
        default:
            break;
        }
    }
    if (optind < argc)
        fail_usage(cfg, "unexpected argument \"%s\"", argv[optind]);
    if (path && config_load_file(cfg, path, err, sizeof(err)) < 0)
        fail_usage(cfg, "%s", err);
    /* The first --upstream replaces the file's list. */
    cfg->upstreams_default = true;
    optind = 1;
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
            if (!eq || eq == optarg || (size_t)(eq - optarg) >= sizeof(kv))
                fail_usage(cfg, "--set takes KEY=VALUE, not \"%s\"", optarg);
            memcpy(kv, optarg, (size_t)(eq - optarg));
            kv[eq - optarg] = '\0';
            key = kv;
            value = eq + 1;
            break;
        }
        case 't':
            *ret_check = true;
            break;
        default:
            break;
        }
        if (key && config_set(cfg, key, value, err, sizeof(err)) < 0)
            fail_usage(cfg, "%s", err);
    }
    if (config_validate(cfg, err, sizeof(err)) < 0)
        fail_usage(cfg, "%s", err);
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

static void reaper_cb(evutil_socket_t fd, short what, void *arg)
{
    struct server *srv = arg;
    (void)fd;
    (void)what;

    session_reap(srv);
    server_maybe_finish(srv);
}

void server_maybe_finish(struct server *srv)
{
    struct pool *p = srv->pool;

    if (!srv->stopping || !TAILQ_EMPTY(&srv->sessions) || !TAILQ_EMPTY(&srv->closing))
        return;
    if (srv->router->n_live || srv->router->n_queued)
        return;
    if (!srv->pool_closing) {
        srv->pool_closing = true;
        log_info("all clients served; closing upstreams");
        pool_close(p);
    }
    if (pool_closed(p))
        event_base_loopexit(srv->base, NULL);
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
             srv->router->n_live, srv->router->n_queued);
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
    router_drop_orphans(srv->router);
    log_info("%s: stopping; %u clients, %zu requests in flight, %zu queued", why, srv->n_sessions,
             srv->router->n_live, srv->router->n_queued);
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
        log_warn("SIGHUP: reloading the configuration is not supported yet; ignored");
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
    int rc = 1;

    log_init();
    srv.cfg = load_config(argc, argv, &check);
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
    srv.shutdown_timer = evtimer_new(srv.base, shutdown_timer_cb, &srv);
    srv.router = router_new(&srv);
    srv.metrics = metrics_new();
    if (!srv.dns || !srv.reaper || !srv.shutdown_timer || !srv.router || !srv.metrics) {
        log_error("out of memory at start-up");
        goto out;
    }
    for (int i = 0; i < 3; i++) {
        sigs[i] = evsignal_new(srv.base, signums[i], signal_cb, &srv);
        if (!sigs[i] || evsignal_add(sigs[i], NULL) < 0)
            goto out;
    }
    srv.listener = listener_new(&srv, srv.cfg->socket_path, srv.cfg->socket_mode, err, sizeof(err));
    if (!srv.listener) {
        log_error("%s", err);
        goto out;
    }
    if (*srv.cfg->tcp_listen) {
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
    log_info("subpoold %s ready: %u upstreams over %u endpoints", SUBPOOL_VERSION,
             srv.cfg->pool_size, srv.cfg->n_upstreams);
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
    if (srv.shutdown_timer)
        event_del(srv.shutdown_timer);
    srv.router = router_free(srv.router);
    srv.listener = listener_free(srv.listener);
    srv.tcp_listener = listener_free(srv.tcp_listener);
    srv.pool = pool_free(srv.pool);
    /* Let cancelled name lookups deliver their callbacks so their buffers are released. */
    if (srv.base)
        event_base_loop(srv.base, EVLOOP_NONBLOCK);
    for (int i = 0; i < 3; i++)
        if (sigs[i])
            event_free(sigs[i]);
    if (srv.reaper)
        event_free(srv.reaper);
    if (srv.shutdown_timer)
        event_free(srv.shutdown_timer);
    if (srv.dns)
        evdns_base_free(srv.dns, 0);
    if (srv.base)
        event_base_free(srv.base);
    metrics_free(srv.metrics);
    config_free(srv.cfg);
    return rc;
}
