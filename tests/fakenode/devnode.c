/*
 * subpool-devnode: a deterministic stand-in for a Subtensor node, for the
 * integration tests, the benchmarks and the Quick start's dev chain. This
 * file holds main: options, the listener (plain or TLS), signals and the
 * block clock.
 */
#include "devnode.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/listener.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define PROG "subpool-devnode"

static const char usage[] =
    "Usage: " PROG " [OPTION]...\n"
    "A deterministic Subtensor node stand-in: JSON-RPC over ws:// for tests and development.\n"
    "\n"
    "  --listen HOST:PORT     address to listen on (default 127.0.0.1:9944; port 0 = any free)\n"
    "  --block-ms N           a new block every N ms (default 1000; 0 = only on request)\n"
    "  --latency-ms N         delay every reply by N ms (default 0)\n"
    "  --jitter-ms N          ... plus or minus up to N ms, uniform (default 0)\n"
    "  --metadata-size BYTES  length of the state_getMetadata hex string (default 600000)\n"
    "  --call-size BYTES      bytes returned by state_call (default 64)\n"
    "  --seed N               seed of every hash, value and jitter draw (default 0)\n"
    "  --fault KIND           start with this fault on every connection (see devnode_fault)\n"
    "  --max-message BYTES    largest websocket message accepted (default 67108864)\n"
    "  --oversize-reply       answer a larger message with an id-null error and keep the\n"
    "                         connection, as a Substrate node does (default: close, 1009)\n"
    "  --retry-after SECONDS  Retry-After of the 429 answers under refuse429 (default 1)\n"
    "  --tls-cert FILE        serve wss:// with this PEM certificate chain (needs --tls-key)\n"
    "  --tls-key FILE         the PEM private key of --tls-cert\n"
    "  --help                 show this and exit\n"
    "\n"
    "Prints 'listening on HOST:PORT' once ready. SIGTERM or SIGINT exits 0.\n"
    "\n"
    "Chain data: block N's hash is derived from (seed, N); finalized = best - 2.\n"
    "state_getStorage is null when the key is empty or its last byte is 0x00 (hex\n"
    "ending in \"00\"); a key whose last byte is 0x01 holds the block number as a\n"
    "SCALE u64 and so changes every block; any other key holds 4..96 bytes derived\n"
    "from the key, the same at every block. state_getKeysPaged: each prefix holds\n"
    "16..1024 keys, prefix + 8-byte big-endian index.\n"
    "\n"
    "Subscriptions: chain_subscribeNewHeads, chain_subscribeFinalizedHeads,\n"
    "state_subscribeRuntimeVersion, state_subscribeStorage [keys] (every key at\n"
    "once, then the changed ones each block), author_submitAndWatchExtrinsic [hex]\n"
    "(ready, inBlock at the next block, finalized two blocks later, then over).\n"
    "\n"
    "Test control methods: devnode_stats, devnode_sleep [ms], devnode_echo [any],\n"
    "devnode_blob [bytes], devnode_newBlock (or dev_newBlock),\n"
    "devnode_fault [kind, \"conn\"|\"all\"] with kind one of none, close, stall,\n"
    "garbage, garbage_binary, oversize, reorder, notify_first, one_reply, pretty,\n"
    "refuse429, freeze, hangup.\n"
    "Connections opened on the path /control are exempt from faults of scope \"all\".\n";

static const char *const fault_names[] = {
    [FAULT_NONE] = "none",
    [FAULT_CLOSE] = "close",
    [FAULT_STALL] = "stall",
    [FAULT_GARBAGE] = "garbage",
    [FAULT_GARBAGE_BINARY] = "garbage_binary",
    [FAULT_OVERSIZE] = "oversize",
    [FAULT_REORDER] = "reorder",
    [FAULT_REFUSE429] = "refuse429",
    [FAULT_FREEZE] = "freeze",
    [FAULT_HANGUP] = "hangup",
    [FAULT_NOTIFY_FIRST] = "notify_first",
    [FAULT_ONE_REPLY] = "one_reply",
    [FAULT_PRETTY] = "pretty",
};

int fault_parse(const char *s, size_t len, enum fault_kind *ret)
{
    for (size_t i = 0; i < sizeof(fault_names) / sizeof(fault_names[0]); i++) {
        if (strlen(fault_names[i]) == len && memcmp(fault_names[i], s, len) == 0) {
            *ret = (enum fault_kind)i;
            return 0;
        }
    }
    return -EINVAL;
}

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *ret)
{
    char *end;
    if (*s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -EINVAL;
    *ret = v;
    return 0;
}

/* HOST:PORT, with [v6]:PORT for IPv6 literals. */
static int parse_listen(const char *s, struct options *opt)
{
    const char *colon = strrchr(s, ':');
    uint64_t port;

    if (!colon || parse_u64(colon + 1, 0, 65535, &port) != 0)
        return -EINVAL;
    const char *host = s;
    size_t hlen = (size_t)(colon - s);
    if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
        host++;
        hlen -= 2;
    }
    if (hlen == 0 || hlen >= sizeof(opt->host))
        return -EINVAL;
    memcpy(opt->host, host, hlen);
    opt->host[hlen] = '\0';
    snprintf(opt->port, sizeof(opt->port), "%u", (unsigned)port);
    return 0;
}

/* 0 to run, 1 after --help, -EINVAL after a bad option (already reported). */
static int options_parse(int argc, char **argv, struct options *opt)
{
    enum {
        O_LISTEN = 256,
        O_BLOCK,
        O_LATENCY,
        O_JITTER,
        O_METADATA,
        O_CALL,
        O_SEED,
        O_FAULT,
        O_MAX,
        O_RETRY_AFTER,
        O_OVERSIZE_REPLY,
        O_TLS_CERT,
        O_TLS_KEY,
        O_HELP
    };
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, O_LISTEN},
        {"block-ms", required_argument, NULL, O_BLOCK},
        {"latency-ms", required_argument, NULL, O_LATENCY},
        {"jitter-ms", required_argument, NULL, O_JITTER},
        {"metadata-size", required_argument, NULL, O_METADATA},
        {"call-size", required_argument, NULL, O_CALL},
        {"seed", required_argument, NULL, O_SEED},
        {"fault", required_argument, NULL, O_FAULT},
        {"max-message", required_argument, NULL, O_MAX},
        {"retry-after", required_argument, NULL, O_RETRY_AFTER},
        {"oversize-reply", no_argument, NULL, O_OVERSIZE_REPLY},
        {"tls-cert", required_argument, NULL, O_TLS_CERT},
        {"tls-key", required_argument, NULL, O_TLS_KEY},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    uint64_t v = 0;
    int ch;

    *opt = (struct options){
        .host = "127.0.0.1",
        .port = "9944",
        .block_ms = 1000,
        .metadata_size = 600000,
        .call_size = 64,
        .max_message = 64u << 20,
        .retry_after_s = 1,
    };
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        const char *name = NULL;
        int r = 0;
        switch (ch) {
        case O_LISTEN:
            name = "--listen";
            r = parse_listen(optarg, opt);
            break;
        case O_BLOCK:
            name = "--block-ms";
            r = parse_u64(optarg, 0, 86400000, &v);
            opt->block_ms = (uint32_t)v;
            break;
        case O_LATENCY:
            name = "--latency-ms";
            r = parse_u64(optarg, 0, 3600000, &v);
            opt->latency_ms = (uint32_t)v;
            break;
        case O_JITTER:
            name = "--jitter-ms";
            r = parse_u64(optarg, 0, 3600000, &v);
            opt->jitter_ms = (uint32_t)v;
            break;
        case O_METADATA:
            /* At least "0x" + the "meta" magic and a version byte. */
            name = "--metadata-size";
            r = parse_u64(optarg, 12, 1u << 30, &v);
            opt->metadata_size = (size_t)v;
            break;
        case O_CALL:
            name = "--call-size";
            r = parse_u64(optarg, 0, 1u << 30, &v);
            opt->call_size = (size_t)v;
            break;
        case O_SEED:
            name = "--seed";
            r = parse_u64(optarg, 0, UINT64_MAX, &v);
            opt->seed = v;
            break;
        case O_FAULT:
            name = "--fault";
            r = fault_parse(optarg, strlen(optarg), &opt->fault);
            break;
        case O_MAX:
            name = "--max-message";
            r = parse_u64(optarg, 1024, (1u << 31) - 1, &v);
            opt->max_message = (size_t)v;
            break;
        case O_OVERSIZE_REPLY:
            opt->oversize_reply = true;
            break;
        case O_RETRY_AFTER:
            name = "--retry-after";
            r = parse_u64(optarg, 0, 86400, &v);
            opt->retry_after_s = (uint32_t)v;
            break;
        case O_TLS_CERT:
            opt->tls_cert = optarg;
            break;
        case O_TLS_KEY:
            opt->tls_key = optarg;
            break;
        case O_HELP:
            fputs(usage, stdout);
            return 1;
        default:
            /* getopt has printed the one line. */
            return -EINVAL;
        }
        if (r != 0) {
            fprintf(stderr, PROG ": invalid %s '%s'\n", name, optarg);
            return -EINVAL;
        }
    }
    if (optind < argc) {
        fprintf(stderr, PROG ": unexpected argument '%s'\n", argv[optind]);
        return -EINVAL;
    }
    if (!opt->tls_cert != !opt->tls_key) {
        fprintf(stderr, PROG ": --tls-cert and --tls-key go together\n");
        return -EINVAL;
    }
    return 0;
}

/* The server side of wss://: the given chain and key, TLS 1.2 or later. */
static int devnode_tls_init(struct devnode *dn)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    const char *what = "cannot create a TLS context";

    if (!ctx)
        goto fail;
    what = "TLS 1.2 minimum";
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
        goto fail;
    /* Clients that vanish without close_notify are ordinary here. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    what = dn->opt.tls_cert;
    if (SSL_CTX_use_certificate_chain_file(ctx, dn->opt.tls_cert) != 1)
        goto fail;
    what = dn->opt.tls_key;
    if (SSL_CTX_use_PrivateKey_file(ctx, dn->opt.tls_key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1)
        goto fail;
    dn->tls = ctx;
    return 0;
fail : {
    unsigned long e = ERR_peek_last_error();
    fprintf(stderr, PROG ": TLS: %s: %s\n", what, e ? ERR_reason_error_string(e) : "failed");
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return -EINVAL;
}
}

void devnode_new_block(struct devnode *dn)
{
    uint64_t fin = chain_finalized(&dn->chain);
    char fin_json[CHAIN_HEADER_MAX];
    size_t fin_len = 0;

    dn->chain.best++;
    dn->head_len = chain_header_json(&dn->chain, dn->chain.best, dn->head_json);
    uint64_t now_fin = chain_finalized(&dn->chain);
    if (now_fin != fin)
        fin_len = chain_header_json(&dn->chain, now_fin, fin_json);
    conn_notify_block(dn, now_fin != fin ? fin_json : NULL, fin_len);
}

static void on_block(evutil_socket_t fd, short what, void *arg)
{
    struct devnode *dn = arg;

    /* Frozen: the clock runs on, the chain does not (a stalled node). */
    if (dn->fault == FAULT_FREEZE) {
        dn->missed_blocks++;
        return;
    }
    devnode_new_block(dn);
}

void devnode_fault_changed(struct devnode *dn, enum fault_kind was)
{
    if (was != FAULT_FREEZE || dn->fault == FAULT_FREEZE)
        return;
    /* Like a node that resynced: back at the height it would have reached. */
    fprintf(stderr, PROG ": unfrozen, catching up %" PRIu64 " blocks\n", dn->missed_blocks);
    for (; dn->missed_blocks > 0; dn->missed_blocks--)
        devnode_new_block(dn);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct devnode *dn = arg;
    event_base_loopbreak(dn->base);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    int r = conn_accept(arg, fd);
    if (r != 0)
        fprintf(stderr, PROG ": dropping a connection: %s\n", strerror(-r));
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    int e = EVUTIL_SOCKET_ERROR();
    /* Out of descriptors and the like: say so and keep accepting later ones. */
    fprintf(stderr, PROG ": accept: %s\n", evutil_socket_error_to_string(e));
}

/* state_getMetadata's result: "0x" + "meta" magic + v14 + deterministic bytes. */
static int devnode_build_metadata(struct devnode *dn)
{
    static const char magic[] = "0x6d6574610e";
    size_t digits = (dn->opt.metadata_size - 2) & ~(size_t)1;
    size_t len = digits + 4;
    char *m = malloc(len);

    if (!m)
        return -ENOMEM;
    m[0] = '"';
    memcpy(m + 1, magic, sizeof(magic) - 1);
    chain_fill_hex(chain_domain_key(&dn->chain, CHAIN_DOMAIN_METADATA), m + sizeof(magic),
                   (digits - (sizeof(magic) - 3)) / 2);
    m[len - 1] = '"';
    dn->metadata = m;
    dn->metadata_len = len;
    return 0;
}

static int devnode_listen(struct devnode *dn)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_PASSIVE | AI_NUMERICSERV,
    };
    struct addrinfo *ai;
    int r = getaddrinfo(dn->opt.host, dn->opt.port, &hints, &ai);

    if (r != 0) {
        fprintf(stderr, PROG ": cannot resolve %s: %s\n", dn->opt.host, gai_strerror(r));
        return -EINVAL;
    }
    /* Only the first address: with port 0 every address would get another port. */
    dn->listener = evconnlistener_new_bind(
        dn->base, on_accept, dn, LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
        1024, ai->ai_addr, (int)ai->ai_addrlen);
    freeaddrinfo(ai);
    if (!dn->listener) {
        r = errno;
        fprintf(stderr, PROG ": cannot listen on %s:%s: %s\n", dn->opt.host, dn->opt.port,
                strerror(r));
        return -r;
    }
    evconnlistener_set_error_cb(dn->listener, on_accept_error);

    union {
        struct sockaddr sa;
        struct sockaddr_in s4;
        struct sockaddr_in6 s6;
        struct sockaddr_storage ss;
    } a;
    socklen_t sl = sizeof(a);
    char host[INET6_ADDRSTRLEN] = "";
    memset(&a, 0, sizeof(a));
    if (getsockname(evconnlistener_get_fd(dn->listener), &a.sa, &sl) != 0)
        return -errno;
    if (a.sa.sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &a.s6.sin6_addr, host, sizeof(host));
        printf("listening on [%s]:%u\n", host, (unsigned)ntohs(a.s6.sin6_port));
    } else {
        inet_ntop(AF_INET, &a.s4.sin_addr, host, sizeof(host));
        printf("listening on %s:%u\n", host, (unsigned)ntohs(a.s4.sin_port));
    }
    fflush(stdout);
    return 0;
}

static int devnode_start(struct devnode *dn)
{
    dn->chain.seed = dn->opt.seed;
    dn->fault = dn->opt.fault;
    dn->rng = chain_domain_key(&dn->chain, CHAIN_DOMAIN_LATENCY) | 1;
    dn->head_len = chain_header_json(&dn->chain, 0, dn->head_json);
    rpc_init();

    int r = devnode_build_metadata(dn);
    if (r != 0)
        return r;
    dn->base = event_base_new();
    if (!dn->base)
        return -ENOMEM;
    dn->ev_term = evsignal_new(dn->base, SIGTERM, on_signal, dn);
    dn->ev_int = evsignal_new(dn->base, SIGINT, on_signal, dn);
    if (!dn->ev_term || !dn->ev_int || evsignal_add(dn->ev_term, NULL) != 0 ||
        evsignal_add(dn->ev_int, NULL) != 0)
        return -ENOMEM;
    if (dn->opt.latency_ms > 0) {
        struct timeval tv = {dn->opt.latency_ms / 1000, (dn->opt.latency_ms % 1000) * 1000};
        dn->latency_tv = event_base_init_common_timeout(dn->base, &tv);
        if (!dn->latency_tv)
            return -ENOMEM;
    }
    if (dn->opt.block_ms > 0) {
        struct timeval tv = {dn->opt.block_ms / 1000, (dn->opt.block_ms % 1000) * 1000};
        dn->ev_block = event_new(dn->base, -1, EV_PERSIST, on_block, dn);
        if (!dn->ev_block || event_add(dn->ev_block, &tv) != 0)
            return -ENOMEM;
    }
    return devnode_listen(dn);
}

static void devnode_stop(struct devnode *dn)
{
    if (dn->listener)
        evconnlistener_free(dn->listener);
    while (dn->conns)
        conn_free(dn->conns);
    if (dn->ev_block)
        event_free(dn->ev_block);
    if (dn->ev_term)
        event_free(dn->ev_term);
    if (dn->ev_int)
        event_free(dn->ev_int);
    if (dn->base)
        event_base_free(dn->base);
    /* After the connections: their sessions hold references to it. */
    if (dn->tls)
        SSL_CTX_free(dn->tls);
    /* Last: replies still queued may have pointed at it. */
    free(dn->metadata);
    libevent_global_shutdown();
}

int main(int argc, char **argv)
{
    static struct devnode dn;

    int r = options_parse(argc, argv, &dn.opt);
    if (r != 0)
        return r > 0 ? 0 : 2;
    /* An unusable certificate or key is a usage error, like a bad option. */
    if (dn.opt.tls_cert && devnode_tls_init(&dn) != 0)
        return 2;
    /* A peer that vanishes must not kill us on the next write. */
    signal(SIGPIPE, SIG_IGN);

    r = devnode_start(&dn);
    if (r == 0) {
        fprintf(stderr, PROG ": seed %" PRIu64 ", block every %u ms, latency %u+-%u ms\n",
                dn.opt.seed, dn.opt.block_ms, dn.opt.latency_ms, dn.opt.jitter_ms);
        event_base_dispatch(dn.base);
    } else if (r == -ENOMEM) {
        fprintf(stderr, PROG ": out of memory\n");
    }
    devnode_stop(&dn);
    return r == 0 ? 0 : 1;
}
