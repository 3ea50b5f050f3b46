/*
 * `subpool`: the command-line client of subpoold, built on libsubpool.
 * `call` prints one result, `subscribe` streams notification results one per
 * line, `status` renders subpool_status as a table. Outcomes map to distinct
 * exit codes so scripts can tell a JSON-RPC error from a daemon that is not
 * running or too slow.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"
#include "subpool.h"

enum exit_code {
    EXIT_OK = 0,
    EXIT_RPC = 1,     /* the daemon or the node answered with an error object */
    EXIT_USAGE = 2,   /* bad command line */
    EXIT_CONNECT = 3, /* no daemon on the socket */
    EXIT_TIMEOUT = 4, /* no reply in time */
    EXIT_OTHER = 5,   /* connection lost, bad reply, out of memory */
};

#define DEFAULT_TIMEOUT_S 65 /* a little over subpoold's default request_timeout (60 s) */

struct options {
    const char *socket;
    int timeout_ms; /* -1: no limit */
    unsigned long count;
    const char *unsub_method;
    bool json;
};

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: subpool [OPTION]... COMMAND [ARG]...\n"
            "Send JSON-RPC requests to a Subtensor node through subpoold, the local\n"
            "connection pool, over its Unix socket.\n"
            "\n"
            "Commands:\n"
            "  call METHOD [PARAMS]       send one request and print its result as JSON\n"
            "  subscribe METHOD [PARAMS]  subscribe and print the result of every notification,\n"
            "                             one per line, until interrupted (SIGINT, SIGTERM) or\n"
            "                             --count of them arrived; then unsubscribe\n"
            "  status                     show the daemon and each upstream as a table\n"
            "\n"
            "PARAMS is a JSON array or object, e.g. '[1]' or '[\"0x1234\"]'.\n"
            "\n"
            "Options:\n"
            "  -s, --socket PATH          subpoold's socket; default: $SUBPOOL_SOCKET, then\n"
            "                             " SUBPOOL_SOCKET_SYSTEM " if it exists,\n"
            "                             then $XDG_RUNTIME_DIR/" SUBPOOL_SOCKET_NAME "\n"
            "  -t, --timeout SECONDS      wait at most this long for a reply (default %d;\n"
            "                             0: no limit); subscribe: for the subscribe reply\n"
            "  -n, --count N              subscribe: stop after N notifications\n"
            "  -u, --unsubscribe METHOD   subscribe: the method that ends the subscription\n"
            "                             (default: METHOD with subscribe -> unsubscribe)\n"
            "  -j, --json                 status: print the raw status object instead\n"
            "  -h, --help                 show this help and exit\n"
            "  -V, --version              show the version and exit\n"
            "\n"
            "Exit status:\n"
            "  0  success\n"
            "  1  a JSON-RPC error reply (its code and message are printed on stderr)\n"
            "  2  usage error\n"
            "  3  cannot connect to subpoold\n"
            "  4  timed out waiting for a reply\n"
            "  5  any other failure: connection lost, unexpected reply, out of memory\n",
            DEFAULT_TIMEOUT_S);
}

static const struct option long_options[] = {
    {"socket", required_argument, NULL, 's'}, {"timeout", required_argument, NULL, 't'},
    {"count", required_argument, NULL, 'n'},  {"unsubscribe", required_argument, NULL, 'u'},
    {"json", no_argument, NULL, 'j'},         {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0},
};

static void fail_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void fail_usage(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "subpool: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'subpool --help'.\n");
    exit(EXIT_USAGE);
}

static int parse_timeout(const char *s)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < 0)
        fail_usage("--timeout takes a number of seconds, not \"%s\"", s);
    if (v == 0)
        return -1;
    v = ceil(v * 1000);
    return v >= INT_MAX ? INT_MAX : (int)v;
}

static unsigned long parse_count(const char *s)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v == 0 || *s == '-')
        fail_usage("--count takes a positive integer, not \"%s\"", s);
    return v;
}

/* Map a library error to an exit code, saying what went wrong. */
static int report(const char *what, int err)
{
    fprintf(stderr, "subpool: %s: %s\n", what, subpool_strerror(err));
    switch (err) {
    case SUBPOOL_E_TIMEOUT:
        return EXIT_TIMEOUT;
    case SUBPOOL_E_CONNECT:
        return EXIT_CONNECT;
    default:
        return EXIT_OTHER;
    }
}

/* An error reply: "subpool: error CODE: MESSAGE" and the data when there is some. */
static int report_rpc(const char *reply, size_t len)
{
    struct subpool_message m;
    char message[1024];

    if (subpool_message_parse(reply, len, &m) != SUBPOOL_E_RPC)
        return report("reading the reply", SUBPOOL_E_PROTOCOL);
    subpool_error_message(reply, len, NULL, message, sizeof(message));
    fprintf(stderr, "subpool: error %lld: %s\n", m.code, message);
    if (m.data.len)
        fprintf(stderr, "subpool: error data: %.*s\n", (int)m.data.len, reply + m.data.off);
    return EXIT_RPC;
}

static struct subpool_conn *connect_or_exit(const struct options *o)
{
    char path[SUBPOOL_PATH_MAX];
    struct subpool_conn *c;
    int err = subpool_socket_path(o->socket, path, sizeof(path));

    if (err)
        fail_usage("socket path too long: %s", o->socket ? o->socket : "(from the environment)");
    err = subpool_connect(path, &c);
    if (err == SUBPOOL_E_CONNECT) {
        fprintf(stderr, "subpool: cannot connect to %s: %s\n", path, strerror(errno));
        exit(EXIT_CONNECT);
    }
    if (err)
        exit(report("connecting", err));
    return c;
}

/* Call and keep the reply; on any failure report it and return the exit code (>0). */
static int call_reply(struct subpool_conn *c, const char *method, const char *params,
                      const struct options *o, char **ret_reply, size_t *ret_len)
{
    int err = subpool_call(c, method, params, o->timeout_ms, ret_reply, ret_len);

    if (err == SUBPOOL_E_RPC) {
        int rc = report_rpc(*ret_reply, *ret_len);
        free(*ret_reply);
        *ret_reply = NULL;
        return rc;
    }
    if (err == SUBPOOL_E_TIMEOUT) {
        fprintf(stderr, "subpool: no reply to %s within the timeout\n", method);
        return EXIT_TIMEOUT;
    }
    if (err)
        return report(method, err);
    return EXIT_OK;
}

static int cmd_call(const struct options *o, const char *method, const char *params)
{
    struct subpool_conn *c = connect_or_exit(o);
    struct subpool_message m;
    char *reply;
    size_t len;
    int rc = call_reply(c, method, params, o, &reply, &len);

    if (rc == EXIT_OK) {
        subpool_message_parse(reply, len, &m);
        printf("%.*s\n", (int)m.result.len, reply + m.result.off);
        free(reply);
    }
    subpool_close(c);
    return rc;
}

/* ---- subscribe -------------------------------------------------------------------- */

static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig)
{
    stop_signal = sig;
}

struct stream {
    unsigned long want, seen;
    bool subscribed, ended;
    int final;        /* the final status */
    int rc;           /* exit code decided by the final callback */
    bool unsubscribe; /* we asked for the end */
};

static void on_notification(struct subpool_conn *c, uint64_t sub, int status, const char *text,
                            size_t len, void *arg)
{
    struct stream *st = arg;
    struct subpool_message m;
    (void)c;
    (void)sub;

    if (status == SUBPOOL_SUBSCRIBED) {
        st->subscribed = true;
        return;
    }
    if (status == 0) {
        if (st->want && st->seen >= st->want)
            return; /* already enough; the unsubscribe is on its way */
        subpool_message_parse(text, len, &m);
        printf("%.*s\n", (int)m.result.len, text + m.result.off);
        fflush(stdout);
        st->seen++;
        return;
    }
    st->ended = true;
    st->final = status;
    if (status == SUBPOOL_E_CANCELED)
        st->rc = EXIT_OK;
    else if (status == SUBPOOL_E_RPC)
        st->rc = report_rpc(text, len);
    else if (status == SUBPOOL_E_TIMEOUT)
        st->rc = report("no reply to the subscribe request", status);
    else
        st->rc = report("subscription ended", status);
}

static int cmd_subscribe(const struct options *o, const char *method, const char *params)
{
    struct subpool_conn *c = connect_or_exit(o);
    struct stream st = {o->count, 0, false, false, 0, EXIT_OK, false};
    struct sigaction sa;
    uint64_t sub;
    int err;

    /* No SA_RESTART: the signal must interrupt the wait so the loop sees it. */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    err = subpool_subscribe(c, method, params, o->unsub_method, o->timeout_ms, on_notification, &st,
                            &sub);
    /* PARAMS was checked already: what is left to be invalid is the method name. */
    if (err == SUBPOOL_E_INVAL)
        fail_usage("no unsubscribe method can be derived from %s: give --unsubscribe", method);
    if (err) {
        subpool_close(c);
        return report("subscribe", err);
    }
    while (!st.ended) {
        bool enough = st.want && st.seen >= st.want;

        if ((stop_signal || enough) && !st.unsubscribe) {
            st.unsubscribe = true;
            err = subpool_unsubscribe(c, sub);
            if (err) {
                subpool_close(c);
                return report("unsubscribe", err);
            }
        }
        /* A bounded wait: a signal landing just before poll() is seen within 250 ms. */
        err = subpool_run(c, 250);
        if (err && !st.ended) {
            subpool_close(c);
            return report("subscription", err);
        }
    }
    subpool_close(c);
    return st.rc;
}

/* ---- status ------------------------------------------------------------------------ */

/* A member of a validated object, or a span of type JSON_NONE. */
static struct json_span member(const char *text, const struct json_span *obj, const char *name)
{
    struct json_span key, val, none = {0, 0, JSON_NONE};
    size_t pos = 0;

    while (json_object_next(text, obj, &pos, &key, &val) == 1)
        if (json_string_eq(text, &key, name))
            return val;
    return none;
}

/* A member as text for the table: strings decoded, null as "-", numbers as written. */
static const char *member_text(const char *text, const struct json_span *obj, const char *name,
                               char *buf, size_t cap)
{
    struct json_span v = member(text, obj, name);
    struct subpool_span s = {v.off, v.len};

    if (v.type == JSON_STRING) {
        if (subpool_string_decode(text, &s, buf, cap) < 0 && !buf[0])
            snprintf(buf, cap, "?");
    } else if (v.type == JSON_NONE || v.type == JSON_NULL) {
        snprintf(buf, cap, "-");
    } else {
        snprintf(buf, cap, "%.*s", (int)v.len, text + v.off);
    }
    return buf;
}

static unsigned long long member_u64(const char *text, const struct json_span *obj,
                                     const char *name)
{
    struct json_span v = member(text, obj, name);
    uint64_t n = 0;

    if (v.type == JSON_NUMBER)
        json_to_u64(text, &v, &n);
    return (unsigned long long)n;
}

static void format_duration(unsigned long long s, char *buf, size_t cap)
{
    if (s >= 86400)
        snprintf(buf, cap, "%llud%02lluh", s / 86400, s % 86400 / 3600);
    else if (s >= 3600)
        snprintf(buf, cap, "%lluh%02llum", s / 3600, s % 3600 / 60);
    else if (s >= 60)
        snprintf(buf, cap, "%llum%02llus", s / 60, s % 60);
    else
        snprintf(buf, cap, "%llus", s);
}

/* "since" is Unix time with milliseconds: local time and how long ago. */
static void format_since(const char *text, const struct json_span *up, char *buf, size_t cap)
{
    struct json_span v = member(text, up, "since");
    char num[40], ago[32];
    time_t t, now = time(NULL);
    struct tm tm;

    if (v.type != JSON_NUMBER || v.len >= sizeof(num)) {
        snprintf(buf, cap, "-");
        return;
    }
    memcpy(num, text + v.off, v.len);
    num[v.len] = '\0';
    t = (time_t)strtod(num, NULL);
    format_duration(now > t ? (unsigned long long)(now - t) : 0, ago, sizeof(ago));
    if (!localtime_r(&t, &tm) || !strftime(num, sizeof(num), "%Y-%m-%d %H:%M:%S", &tm)) {
        snprintf(buf, cap, "-");
        return;
    }
    snprintf(buf, cap, "%s (%s ago)", num, ago);
}

struct column {
    const char *title;
    bool right; /* numbers are right-aligned */
    int width;
};

enum {
    COL_ID,
    COL_ENDPOINT,
    COL_STATE,
    COL_SINCE,
    COL_RECONNECTS,
    COL_IN_FLIGHT,
    COL_REQUESTS,
    COL_LAST_ERROR,
    N_COLS
};

#define CELL 256

static void print_row(struct column *cols, char cells[N_COLS][CELL])
{
    char line[N_COLS * (CELL + 2)];
    size_t n = 0;

    for (int i = 0; i < N_COLS; i++) {
        int w = cols[i].right ? cols[i].width : -cols[i].width;
        n += (size_t)snprintf(line + n, sizeof(line) - n, "%*s  ", w, cells[i]);
    }
    /* Empty or left-aligned cells at the end would leave blanks. */
    while (n > 0 && line[n - 1] == ' ')
        n--;
    printf("%.*s\n", (int)n, line);
}

/* Fill one row of cells from an upstream object. */
static void upstream_cells(const char *text, const struct json_span *up, char cells[N_COLS][CELL])
{
    member_text(text, up, "id", cells[COL_ID], CELL);
    member_text(text, up, "endpoint", cells[COL_ENDPOINT], CELL);
    member_text(text, up, "state", cells[COL_STATE], CELL);
    format_since(text, up, cells[COL_SINCE], CELL);
    member_text(text, up, "reconnects", cells[COL_RECONNECTS], CELL);
    member_text(text, up, "in_flight", cells[COL_IN_FLIGHT], CELL);
    member_text(text, up, "requests", cells[COL_REQUESTS], CELL);
    member_text(text, up, "last_error", cells[COL_LAST_ERROR], CELL);
}

static void print_status(const char *text, const struct json_span *st)
{
    struct column cols[N_COLS] = {
        {"ID", true, 0},       {"ENDPOINT", false, 0},   {"STATE", false, 0},
        {"SINCE", false, 0},   {"RECONNECTS", true, 0},  {"IN FLIGHT", true, 0},
        {"REQUESTS", true, 0}, {"LAST ERROR", false, 0},
    };
    struct json_span ups = member(text, st, "upstreams"), up;
    char version[64], uptime[32], cells[N_COLS][CELL];
    unsigned long long reconnects = 0, in_flight = 0, requests = 0;
    size_t pos;

    member_text(text, st, "version", version, sizeof(version));
    format_duration(member_u64(text, st, "uptime"), uptime, sizeof(uptime));
    printf("subpoold %s, pid %llu, up %s, %llu clients, %llu of %llu upstreams ready\n", version,
           member_u64(text, st, "pid"), uptime, member_u64(text, st, "clients"),
           member_u64(text, st, "ready"), member_u64(text, st, "pool_size"));
    printf("requests %llu, responses %llu, errors %llu, in flight %llu, queued %llu, "
           "clients accepted %llu\n\n",
           member_u64(text, st, "requests"), member_u64(text, st, "responses"),
           member_u64(text, st, "errors"), member_u64(text, st, "in_flight"),
           member_u64(text, st, "queued"), member_u64(text, st, "accepted"));

    /* Two passes: widths first, then the rows. */
    for (int i = 0; i < N_COLS; i++)
        cols[i].width = (int)strlen(cols[i].title);
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            char titles[N_COLS][CELL];
            for (int i = 0; i < N_COLS; i++)
                snprintf(titles[i], CELL, "%s", cols[i].title);
            print_row(cols, titles);
        }
        pos = 0;
        while (ups.type == JSON_ARRAY && json_array_next(text, &ups, &pos, &up) == 1) {
            upstream_cells(text, &up, cells);
            if (pass == 0) {
                for (int i = 0; i < N_COLS; i++)
                    if ((int)strlen(cells[i]) > cols[i].width)
                        cols[i].width = (int)strlen(cells[i]);
                reconnects += member_u64(text, &up, "reconnects");
                in_flight += member_u64(text, &up, "in_flight");
                requests += member_u64(text, &up, "requests");
            } else {
                print_row(cols, cells);
            }
        }
    }
    memset(cells, 0, sizeof(cells));
    snprintf(cells[COL_ENDPOINT], CELL, "total");
    snprintf(cells[COL_RECONNECTS], CELL, "%llu", reconnects);
    snprintf(cells[COL_IN_FLIGHT], CELL, "%llu", in_flight);
    snprintf(cells[COL_REQUESTS], CELL, "%llu", requests);
    print_row(cols, cells);
}

static int cmd_status(const struct options *o)
{
    struct subpool_conn *c = connect_or_exit(o);
    struct subpool_message m;
    struct json_span st;
    char *reply;
    size_t len;
    int rc = call_reply(c, "subpool_status", NULL, o, &reply, &len);

    subpool_close(c);
    if (rc != EXIT_OK)
        return rc;
    subpool_message_parse(reply, len, &m);
    if (o->json) {
        printf("%.*s\n", (int)m.result.len, reply + m.result.off);
    } else if (json_scan_value(reply, m.result.off + m.result.len, m.result.off, &st) == 0 &&
               st.type == JSON_OBJECT) {
        print_status(reply, &st);
    } else {
        rc = report("subpool_status", SUBPOOL_E_PROTOCOL);
    }
    free(reply);
    return rc;
}

int main(int argc, char **argv)
{
    struct options o = {NULL, DEFAULT_TIMEOUT_S * 1000, 0, NULL, false};
    const char *cmd;
    int c, nargs;

    while ((c = getopt_long(argc, argv, "s:t:n:u:jhV", long_options, NULL)) != -1) {
        switch (c) {
        case 's':
            o.socket = optarg;
            break;
        case 't':
            o.timeout_ms = parse_timeout(optarg);
            break;
        case 'n':
            o.count = parse_count(optarg);
            break;
        case 'u':
            o.unsub_method = optarg;
            break;
        case 'j':
            o.json = true;
            break;
        case 'h':
            usage(stdout);
            return EXIT_OK;
        case 'V':
            printf("subpool %s (libsubpool %s)\n", SUBPOOL_VERSION, subpool_version());
            return EXIT_OK;
        default:
            fprintf(stderr, "Try 'subpool --help'.\n");
            return EXIT_USAGE;
        }
    }
    if (optind >= argc)
        fail_usage("no command given (call, subscribe or status)");
    cmd = argv[optind];
    nargs = argc - optind - 1;
    if ((o.count || o.unsub_method) && strcmp(cmd, "subscribe") != 0)
        fail_usage("--count and --unsubscribe go with subscribe only");
    if (o.json && strcmp(cmd, "status") != 0)
        fail_usage("--json goes with status only");
    if (strcmp(cmd, "call") == 0 || strcmp(cmd, "subscribe") == 0) {
        const char *method, *params;
        struct json_span p;

        if (nargs < 1 || nargs > 2)
            fail_usage("%s takes METHOD and optionally PARAMS", cmd);
        method = argv[optind + 1];
        params = nargs == 2 ? argv[optind + 2] : NULL;
        if (params && (json_validate(params, strlen(params), &p) != 0 ||
                       (p.type != JSON_ARRAY && p.type != JSON_OBJECT)))
            fail_usage("PARAMS must be a JSON array or object, not: %s", params);
        if (!*method)
            fail_usage("METHOD is empty");
        return cmd[0] == 'c' ? cmd_call(&o, method, params) : cmd_subscribe(&o, method, params);
    }
    if (strcmp(cmd, "status") == 0) {
        if (nargs != 0)
            fail_usage("status takes no arguments");
        return cmd_status(&o);
    }
    fail_usage("unknown command \"%s\"", cmd);
}
