/*
 * The configuration table and everything driven by it: defaults, the INI
 * reader (via inih, counting lines so every error names FILE:LINE), "-o
 * key=value" overrides and the --help-config listing.
 */
#include "config.h"

#include <errno.h>
#include <ini.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "networks.h"
#include "url.h"

enum config_type {
    CONFIG_STRING,
    CONFIG_UPSTREAM, /* repeatable: each occurrence adds one endpoint */
    CONFIG_UINT,
    CONFIG_SIZE,     /* bytes, with optional K, M or G (powers of 1024) */
    CONFIG_DURATION, /* stored in ms; "250ms", "30s", "5m", bare numbers are seconds */
    CONFIG_MODE,     /* octal file mode */
    CONFIG_LOGLEVEL,
    CONFIG_OPTSTRING, /* may be empty: "" (written as "" in files) turns it off */
    CONFIG_BOOL,      /* true/false, yes/no, on/off, 1/0 */
};

struct config_key {
    const char *name;
    enum config_type type;
    size_t offset;
    uint64_t min, max; /* for numbers, in stored units */
    const char *def;
    const char *help;
    bool reload; /* LIVE: SIGHUP applies a new value; RESTART: it keeps the old one */
};

#define LIVE    true
#define RESTART false

#define OFF(f) offsetof(struct config, f)

static const struct config_key config_keys[] = {
    {"socket", CONFIG_STRING, OFF(socket_path), 0, 0, "/run/subpoold/subpoold.sock",
     "path of the local Unix socket clients connect to", RESTART},
    {"socket_mode", CONFIG_MODE, OFF(socket_mode), 0, 0777, "0660",
     "permissions of the socket file", RESTART},
    {"upstream", CONFIG_UPSTREAM, OFF(upstreams), 0, 0, "finney",
     "node endpoint: a ws:// or wss:// URL or a network name (finney, test, archive, local, "
     "latent-lite); repeat for fallbacks, in priority order",
     LIVE},
    {"pool_size", CONFIG_UINT, OFF(pool_size), 1, 64, "2",
     "websockets kept open to the nodes, spread over the endpoints", LIVE},
    {"max_in_flight", CONFIG_UINT, OFF(max_in_flight), 1, 65536, "256",
     "requests outstanding on one upstream; more wait in the queue", LIVE},
    {"queue_max", CONFIG_UINT, OFF(queue_max), 0, 10000000, "100000",
     "requests waiting for an upstream before new ones are refused; when full, the client with "
     "the most waiting gives up its newest to a client with fewer",
     LIVE},
    {"request_timeout", CONFIG_DURATION, OFF(request_timeout_ms), 100, 3600000, "60s",
     "a request not answered within this gets an error", LIVE},
    {"max_message", CONFIG_SIZE, OFF(max_message), 1024, (uint64_t)1 << 32, "64M",
     "largest message accepted from a node; larger replies become an error", LIVE},
    {"max_request", CONFIG_SIZE, OFF(max_request), 1024, (uint64_t)1 << 32, "15M",
     "largest request accepted from a client, and sent to a node once its id is replaced "
     "(Substrate's default limit is 15M)",
     LIVE},
    {"max_subs_per_upstream", CONFIG_UINT, OFF(max_subs_per_upstream), 1, 100000, "1024",
     "upstream subscriptions on one websocket (Substrate's default cap)", LIVE},
    {"client_max_subscriptions", CONFIG_UINT, OFF(client_max_subscriptions), 1, 1000000, "1024",
     "subscriptions one client may hold at once (-32053 beyond)", LIVE},
    {"max_subscription_keys", CONFIG_UINT, OFF(max_subscription_keys), 1, 1000000, "1024",
     "storage keys in one state_subscribeStorage (-32053 beyond)", LIVE},
    {"max_batch", CONFIG_UINT, OFF(max_batch), 1, 100000, "1000", "most calls in one batch request",
     LIVE},
    {"max_clients", CONFIG_UINT, OFF(max_clients), 1, 1000000, "16384",
     "local connections accepted at once", LIVE},
    {"max_clients_per_uid", CONFIG_UINT, OFF(max_clients_per_uid), 0, 1000000, "4096",
     "local connections one user (uid) may hold at once; TCP clients count as one user; "
     "0: no cap",
     LIVE},
    {"handshake_timeout", CONFIG_DURATION, OFF(handshake_timeout_ms), 100, 3600000, "10s",
     "a new connection must send its first request (NDJSON line, HTTP head or WebSocket "
     "upgrade) within this, and every HTTP request head must be complete within it",
     LIVE},
    {"client_idle_timeout", CONFIG_DURATION, OFF(client_idle_timeout_ms), 0, 604800000, "0",
     "close a client that sends nothing for this long while it has no request outstanding "
     "and no subscription; 0: never",
     LIVE},
    {"client_max_in_flight", CONFIG_UINT, OFF(client_max_in_flight), 1, 1000000, "1024",
     "outstanding requests per client before its socket is no longer read", LIVE},
    {"client_max_pending", CONFIG_SIZE, OFF(client_max_pending), 65536, (uint64_t)1 << 36, "64M",
     "request bytes a client may have outstanding before its socket is no longer read", LIVE},
    {"client_max_output", CONFIG_SIZE, OFF(client_max_output), 65536, (uint64_t)1 << 36, "256M",
     "unread reply bytes a client may hold before it is disconnected; from half of it on, "
     "the client is not read",
     LIVE},
    {"max_client_memory", CONFIG_SIZE, OFF(max_client_memory), 0, (uint64_t)1 << 40, "0",
     "bytes the daemon holds for all clients together (input, requests, replies, "
     "subscriptions); over it the largest are disconnected. 0: a quarter of the host's "
     "memory, between 256M and 4G; otherwise at least 1M",
     LIVE},
    {"connect_timeout", CONFIG_DURATION, OFF(connect_timeout_ms), 100, 600000, "10s",
     "bound on name resolution, TCP connect and websocket upgrade", LIVE},
    {"ping_interval", CONFIG_DURATION, OFF(ping_interval_ms), 0, 3600000, "30s",
     "ping an upstream after this much silence; 0 disables", LIVE},
    {"pong_timeout", CONFIG_DURATION, OFF(pong_timeout_ms), 100, 600000, "10s",
     "an upstream silent this long after a ping is replaced", LIVE},
    {"reconnect_min", CONFIG_DURATION, OFF(backoff_min_ms), 10, 600000, "250ms",
     "first delay before reconnecting a lost upstream", LIVE},
    {"reconnect_max", CONFIG_DURATION, OFF(backoff_max_ms), 10, 3600000, "30s",
     "cap of the doubling reconnect delay (jittered)", LIVE},
    {"close_timeout", CONFIG_DURATION, OFF(close_timeout_ms), 0, 60000, "2s",
     "how long a closing upstream waits for the node's close frame", LIVE},
    {"tls_ca_file", CONFIG_OPTSTRING, OFF(tls_ca_file), 0, 0, "\"\"",
     "PEM file of the CAs trusted for wss://; empty: the system's trust store", LIVE},
    {"health_interval", CONFIG_DURATION, OFF(health_interval_ms), 100, 3600000, "10s",
     "how often each upstream is asked for its best block (chain_getHeader)", LIVE},
    {"stale_block_timeout", CONFIG_DURATION, OFF(stale_block_timeout_ms), 0, 86400000, "60s",
     "an upstream whose best block stays behind this long while another advances is "
     "taken out of rotation; 0 disables (off with a single endpoint)",
     LIVE},
    {"cache", CONFIG_BOOL, OFF(cache), 0, 1, "true",
     "keep replies to reads at a block hash and chain constants, and answer identical ones "
     "from them; off empties the cache",
     LIVE},
    {"cache_max_bytes", CONFIG_SIZE, OFF(cache_max_bytes), 0, (uint64_t)1 << 40, "256M",
     "bytes the reply cache may hold, its own budget apart from max_client_memory; the least "
     "recently used go first",
     LIVE},
    {"coalesce", CONFIG_BOOL, OFF(coalesce), 0, 1, "true",
     "identical pure reads from any clients while one is in flight share its reply", LIVE},
    {"shutdown_timeout", CONFIG_DURATION, OFF(shutdown_timeout_ms), 0, 600000, "10s",
     "on SIGTERM, how long in-flight requests may take to finish", LIVE},
    {"log_level", CONFIG_LOGLEVEL, OFF(log_level), 0, 0, "info", "error, warn, info or debug",
     LIVE},
    {"tcp_listen", CONFIG_OPTSTRING, OFF(tcp_listen), 0, 0, "\"\"",
     "also serve on this TCP address (e.g. 127.0.0.1:9955); empty: Unix socket only", RESTART},
    {"tcp_allow_remote", CONFIG_BOOL, OFF(tcp_allow_remote), 0, 1, "false",
     "allow tcp_listen on a non-loopback address, and any Host header", RESTART},
    {"allowed_origins", CONFIG_OPTSTRING, OFF(allowed_origins), 0, 0, "\"\"",
     "browser origins allowed to connect (space separated, or *); empty: none", LIVE},
};

#define N_KEYS (sizeof(config_keys) / sizeof(config_keys[0]))

static const struct config_key *config_find(const char *name)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(config_keys[i].name, name) == 0)
            return &config_keys[i];
    return NULL;
}

/* Parse a whole decimal number followed by an optional unit; *ret_unit points at the unit. */
static int parse_number(const char *s, uint64_t *ret, const char **ret_unit)
{
    uint64_t v = 0;
    const char *p = s;

    if (*p < '0' || *p > '9')
        return -EINVAL;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - 9) / 10)
            return -ERANGE;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    *ret = v;
    *ret_unit = p;
    return 0;
}

static int scale(uint64_t v, uint64_t mul, uint64_t *ret)
{
    if (mul && v > UINT64_MAX / mul)
        return -ERANGE;
    *ret = v * mul;
    return 0;
}

static int parse_size(const char *s, uint64_t *ret)
{
    uint64_t v;
    const char *unit;
    int r = parse_number(s, &v, &unit);
    if (r < 0)
        return r;
    if (*unit == '\0')
        return scale(v, 1, ret);
    if (unit[1] != '\0' && strcmp(unit + 1, "iB") != 0 && strcmp(unit + 1, "B") != 0)
        return -EINVAL;
    switch (*unit) {
    case 'K':
    case 'k':
        return scale(v, 1024, ret);
    case 'M':
        return scale(v, 1024 * 1024, ret);
    case 'G':
        return scale(v, 1024 * 1024 * 1024, ret);
    default:
        return -EINVAL;
    }
}

static int parse_duration(const char *s, uint64_t *ret)
{
    uint64_t v;
    const char *unit;
    int r = parse_number(s, &v, &unit);
    if (r < 0)
        return r;
    if (*unit == '\0' || strcmp(unit, "s") == 0)
        return scale(v, 1000, ret);
    if (strcmp(unit, "ms") == 0)
        return scale(v, 1, ret);
    if (strcmp(unit, "m") == 0 || strcmp(unit, "min") == 0)
        return scale(v, 60000, ret);
    if (strcmp(unit, "h") == 0)
        return scale(v, 3600000, ret);
    return -EINVAL;
}

struct config *config_new(void)
{
    struct config *cfg = calloc(1, sizeof(*cfg));
    char err[256];

    if (!cfg)
        return NULL;
    for (size_t i = 0; i < N_KEYS; i++) {
        if (config_set(cfg, config_keys[i].name, config_keys[i].def, err, sizeof(err)) < 0) {
            /* A default that does not parse is a bug in the table. */
            fprintf(stderr, "subpoold: bad built-in default: %s\n", err);
            abort();
        }
    }
    /* The first upstream set by a file or option replaces the default list. */
    cfg->upstreams_default = true;
    return cfg;
}

struct config *config_free(struct config *cfg)
{
    if (!cfg)
        return NULL;
    free(cfg->socket_path);
    free(cfg->tcp_listen);
    free(cfg->allowed_origins);
    free(cfg->tls_ca_file);
    for (unsigned i = 0; i < cfg->n_upstreams; i++)
        free(cfg->upstreams[i]);
    free(cfg);
    return NULL;
}

static int set_upstream(struct config *cfg, const char *value, char *err, size_t errlen)
{
    struct url u;
    const char *cause = NULL;
    const char *url = network_url(value);
    char *copy;

    /* A network name stands for its URL; status and logs name it again (network_name_of). */
    if (!url && !strstr(value, "://")) {
        snprintf(err, errlen,
                 "upstream: \"%s\" is neither a ws:// or wss:// URL nor a network name "
                 "(finney, test, archive, local, latent-lite)",
                 value);
        return -1;
    }
    if (!url)
        url = value;
    if (url_parse(url, &u, &cause) < 0) {
        snprintf(err, errlen, "upstream: invalid URL \"%s\": %s", value, cause ? cause : "");
        return -1;
    }
    if (cfg->upstreams_default) {
        for (unsigned i = 0; i < cfg->n_upstreams; i++)
            free(cfg->upstreams[i]);
        cfg->n_upstreams = 0;
        cfg->upstreams_default = false;
    }
    if (cfg->n_upstreams == CONFIG_MAX_UPSTREAMS) {
        snprintf(err, errlen, "upstream: at most %d endpoints", CONFIG_MAX_UPSTREAMS);
        return -1;
    }
    for (unsigned i = 0; i < cfg->n_upstreams; i++) {
        if (strcmp(cfg->upstreams[i], url) == 0) {
            snprintf(err, errlen, "upstream: \"%s\" is listed twice", value);
            return -1;
        }
    }
    copy = strdup(url);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    cfg->upstreams[cfg->n_upstreams++] = copy;
    return 0;
}

int config_set(struct config *cfg, const char *key, const char *value, char *err, size_t errlen)
{
    const struct config_key *k = config_find(key);
    void *field;
    uint64_t v = 0;
    int r = 0;

    if (!k) {
        snprintf(err, errlen, "unknown key \"%s\"", key);
        return -1;
    }
    field = (char *)cfg + k->offset;
    switch (k->type) {
    case CONFIG_STRING: {
        char *copy;
        if (*value == '\0') {
            snprintf(err, errlen, "%s: must not be empty", key);
            return -1;
        }
        copy = strdup(value);
        if (!copy) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        free(*(char **)field);
        *(char **)field = copy;
        return 0;
    }
    case CONFIG_UPSTREAM:
        return set_upstream(cfg, value, err, errlen);
    case CONFIG_OPTSTRING: {
        char *copy = strdup(strcmp(value, "\"\"") == 0 ? "" : value);
        if (!copy) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        free(*(char **)field);
        *(char **)field = copy;
        return 0;
    }
    case CONFIG_BOOL: {
        static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no",
                                                                                    "off", "0"};
        for (size_t i = 0; i < 4; i++) {
            if (strcasecmp(value, yes[i]) == 0 || strcasecmp(value, no[i]) == 0) {
                *(bool *)field = strcasecmp(value, yes[i]) == 0;
                return 0;
            }
        }
        snprintf(err, errlen, "%s: \"%s\" is not true or false", key, value);
        return -1;
    }
    case CONFIG_LOGLEVEL:
        if (log_level_parse(value, field) < 0) {
            snprintf(err, errlen, "%s: \"%s\" is not one of error, warn, info, debug", key, value);
            return -1;
        }
        return 0;
    case CONFIG_MODE: {
        char *end;
        errno = 0;
        unsigned long m = strtoul(value, &end, 8);
        if (errno || end == value || *end || m > k->max) {
            snprintf(err, errlen, "%s: \"%s\" is not an octal mode like 0660", key, value);
            return -1;
        }
        *(unsigned *)field = (unsigned)m;
        return 0;
    }
    case CONFIG_UINT: {
        const char *unit;
        r = parse_number(value, &v, &unit);
        if (r == 0 && *unit)
            r = -EINVAL;
        break;
    }
    case CONFIG_SIZE:
        r = parse_size(value, &v);
        break;
    case CONFIG_DURATION:
        r = parse_duration(value, &v);
        break;
    }
    if (r < 0 || v < k->min || v > k->max) {
        const char *what = k->type == CONFIG_SIZE       ? " (bytes, K, M or G)"
                           : k->type == CONFIG_DURATION ? " (ms, s, m or h; bare = seconds)"
                                                        : "";
        snprintf(err, errlen, "%s: \"%s\" is not a number in %llu..%llu%s", key, value,
                 (unsigned long long)k->min, (unsigned long long)k->max, what);
        return -1;
    }
    if (k->type == CONFIG_SIZE)
        *(uint64_t *)field = v;
    else
        *(unsigned *)field = (unsigned)v;
    return 0;
}

struct file_reader {
    FILE *f;
    struct config *cfg;
    unsigned line;
    unsigned err_line; /* first failing line; 0 while none */
    char msg[256];
};

/* inih reads through this so the handler always knows the current line number. */
/*
 * inih reads through this so the handler always knows the current line
 * number. Two inih habits are turned off here: an indented line would
 * continue the previous key's value, and a line longer than its buffer
 * would be cut and its tail read as a line of its own.
 */
static char *reader_gets(char *str, int num, void *stream)
{
    struct file_reader *fr = stream;
    char *r = fgets(str, num, fr->f);
    size_t n, skip = 0;

    if (!r || fr->err_line)
        return NULL;
    fr->line++;
    n = strlen(str);
    if (n == (size_t)num - 1 && str[n - 1] != '\n' && !feof(fr->f)) {
        fr->err_line = fr->line;
        snprintf(fr->msg, sizeof(fr->msg), "line longer than %d characters", num - 2);
        return NULL;
    }
    while (str[skip] == ' ' || str[skip] == '\t')
        skip++;
    memmove(str, str + skip, n - skip + 1);
    return r;
}

static int reader_handler(void *user, const char *section, const char *name, const char *value)
{
    struct file_reader *fr = user;
    char err[256];

    if (fr->err_line)
        return 1; /* report the first error only */
    if (*section && strcmp(section, "subpoold") != 0) {
        fr->err_line = fr->line;
        snprintf(fr->msg, sizeof(fr->msg), "unknown section [%s] (keys go in [subpoold])", section);
        return 0;
    }
    if (config_set(fr->cfg, name, value, err, sizeof(err)) < 0) {
        fr->err_line = fr->line;
        snprintf(fr->msg, sizeof(fr->msg), "%s", err);
        return 0;
    }
    return 1;
}

int config_load_file(struct config *cfg, const char *path, char *err, size_t errlen)
{
    struct file_reader fr = {.cfg = cfg};
    int r;

    fr.f = fopen(path, "re");
    if (!fr.f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    r = ini_parse_stream(reader_gets, &fr, reader_handler, &fr);
    fclose(fr.f);
    if (fr.err_line) {
        snprintf(err, errlen, "%s:%u: %s", path, fr.err_line, fr.msg);
        return -1;
    }
    if (r != 0) {
        /* inih's own syntax errors (no '=', unterminated section) carry the line. */
        snprintf(err, errlen, "%s:%d: syntax error (expected key = value or [section])", path, r);
        return -1;
    }
    return 0;
}

int config_validate(const struct config *cfg, char *err, size_t errlen)
{
    if (cfg->socket_path[0] != '/') {
        snprintf(err, errlen, "socket: \"%s\" must be an absolute path", cfg->socket_path);
        return -1;
    }
    if (cfg->n_upstreams == 0) {
        snprintf(err, errlen, "upstream: at least one endpoint is needed");
        return -1;
    }
    /* A unit left out ("max_client_memory = 512") would cut every client as it connects. */
    if (cfg->max_client_memory && cfg->max_client_memory < ((uint64_t)1 << 20)) {
        snprintf(err, errlen,
                 "max_client_memory: %llu bytes is below 1M (0 sizes it from the host)",
                 (unsigned long long)cfg->max_client_memory);
        return -1;
    }
    if (cfg->backoff_min_ms > cfg->backoff_max_ms) {
        snprintf(err, errlen, "reconnect_min (%ums) is above reconnect_max (%ums)",
                 cfg->backoff_min_ms, cfg->backoff_max_ms);
        return -1;
    }
    if (strlen(cfg->socket_path) >= 108) {
        snprintf(err, errlen, "socket: path longer than a Unix socket allows (107 bytes)");
        return -1;
    }
    if (cfg->tls_ca_file[0] && access(cfg->tls_ca_file, R_OK) != 0) {
        snprintf(err, errlen, "tls_ca_file: %s: %s", cfg->tls_ca_file, strerror(errno));
        return -1;
    }
    /* Best blocks are only seen every health_interval: a shorter window would misjudge. */
    if (cfg->n_upstreams > 1 && cfg->stale_block_timeout_ms &&
        cfg->stale_block_timeout_ms < 2 * (uint64_t)cfg->health_interval_ms) {
        snprintf(err, errlen,
                 "stale_block_timeout (%ums) must be 0 or at least twice health_interval (%ums)",
                 cfg->stale_block_timeout_ms, cfg->health_interval_ms);
        return -1;
    }
    return 0;
}

void config_print_keys(FILE *out)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct config_key *k = &config_keys[i];
        fprintf(out, "  %-22s default %s", k->name, k->def);
        if (k->type == CONFIG_UINT)
            fprintf(out, " (%llu..%llu)", (unsigned long long)k->min, (unsigned long long)k->max);
        fprintf(out, "\n  %-22s %s (reload: %s)\n", "", k->help, k->reload ? "live" : "restart");
    }
}

static bool key_equal(const struct config_key *k, const struct config *a, const struct config *b)
{
    const void *fa = (const char *)a + k->offset, *fb = (const char *)b + k->offset;

    switch (k->type) {
    case CONFIG_STRING:
    case CONFIG_OPTSTRING:
        return strcmp(*(char *const *)fa, *(char *const *)fb) == 0;
    case CONFIG_UPSTREAM:
        if (a->n_upstreams != b->n_upstreams)
            return false;
        for (unsigned i = 0; i < a->n_upstreams; i++)
            if (strcmp(a->upstreams[i], b->upstreams[i]) != 0)
                return false;
        return true;
    case CONFIG_BOOL:
        return *(const bool *)fa == *(const bool *)fb;
    case CONFIG_SIZE:
        return *(const uint64_t *)fa == *(const uint64_t *)fb;
    case CONFIG_LOGLEVEL:
        return *(const enum log_level *)fa == *(const enum log_level *)fb;
    default:
        return *(const unsigned *)fa == *(const unsigned *)fb;
    }
}

int config_keep_restart_keys(struct config *next, const struct config *cur, char *ret_names,
                             size_t len)
{
    size_t used = 0;
    int n = 0;

    if (len)
        ret_names[0] = '\0';
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct config_key *k = &config_keys[i];
        void *fn = (char *)next + k->offset;
        const void *fc = (const char *)cur + k->offset;

        if (k->reload || key_equal(k, next, cur))
            continue;
        switch (k->type) {
        case CONFIG_STRING:
        case CONFIG_OPTSTRING: {
            char *copy = strdup(*(char *const *)fc);
            if (!copy)
                return -ENOMEM;
            free(*(char **)fn);
            *(char **)fn = copy;
            break;
        }
        case CONFIG_BOOL:
            *(bool *)fn = *(const bool *)fc;
            break;
        case CONFIG_MODE:
        case CONFIG_UINT:
        case CONFIG_DURATION:
            *(unsigned *)fn = *(const unsigned *)fc;
            break;
        default:
            /* Every RESTART key is of a type above. */
            abort();
        }
        if (used < len)
            used += (size_t)snprintf(ret_names + used, len - used, "%s%s", n ? ", " : "", k->name);
        n++;
    }
    return n;
}
