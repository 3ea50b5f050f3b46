/*
 * subpool-client-check SCENARIO SOCKET: exercises libsubpool against a real
 * subpoold (backed by subpool-devnode) for tests/integration/test_client_c.py,
 * which starts the processes, runs this under valgrind when it can, and acts
 * on the lines it prints. Each scenario exits 0 when every check held, 1 with
 * a "FAIL file:line: what" line otherwise, and 77 when the daemon lacks a
 * feature the scenario needs (the test then skips).
 */
#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "subpool.h"

#define EXIT_SKIP 77

#define CHECK(cond, ...)                           \
    do {                                           \
        if (!(cond))                               \
            fail(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

static void fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));

static void fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;

    printf("FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    exit(1);
}

static void say(const char *what)
{
    printf("%s\n", what);
    fflush(stdout);
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The result of a reply as text. */
static void result_of(const char *reply, size_t len, char *buf, size_t cap)
{
    struct subpool_message m;

    CHECK(subpool_message_parse(reply, len, &m) == 0, "not a result reply: %s", reply);
    CHECK(m.result.len < cap, "result too long for the check: %zu", m.result.len);
    memcpy(buf, reply + m.result.off, m.result.len);
    buf[m.result.len] = '\0';
}

static void expect_result(struct subpool_conn *c, const char *method, const char *params,
                          const char *want)
{
    char *reply, got[4096];
    size_t len;
    int err = subpool_call(c, method, params, 10000, &reply, &len);

    CHECK(err == 0, "%s: %s", method, subpool_strerror(err));
    CHECK(strlen(reply) == len, "reply length %zu, strlen %zu", len, strlen(reply));
    result_of(reply, len, got, sizeof(got));
    CHECK(strcmp(got, want) == 0, "%s: result %s, want %s", method, got, want);
    free(reply);
}

static struct subpool_conn *connect_to(const char *path)
{
    struct subpool_conn *c;
    int err = subpool_connect(path, &c);

    CHECK(err == 0, "connect %s: %s", path, subpool_strerror(err));
    return c;
}

/* ---- call: results, errors, big replies, the reply limit -------------------------------- */

static int scenario_call(const char *path)
{
    struct subpool_conn *c = connect_to(path);
    struct subpool_message m;
    char *reply, msg[256];
    long long code;
    size_t len;
    int err;

    expect_result(c, "subpool_ping", NULL, "\"pong\"");
    expect_result(c, "devnode_echo", "[\"h\\u00e9llo \\n\"]", "\"h\\u00e9llo \\n\"");
    expect_result(c, "devnode_echo", "[{\"a\": [1,\n 2]}]", "{\"a\": [1,  2]}");

    err = subpool_call(c, "subpool_nope", "[]", 10000, &reply, &len);
    CHECK(err == SUBPOOL_E_RPC, "unknown subpool method: %s", subpool_strerror(err));
    CHECK(reply != NULL, "an error reply is handed over");
    CHECK(subpool_error_message(reply, len, &code, msg, sizeof(msg)) == 0, "error message");
    CHECK(code == -32601, "code %lld", code);
    CHECK(strcmp(msg, "Method not found") == 0, "message \"%s\"", msg);
    free(reply);

    /* Bad params never leave the process. */
    err = subpool_call(c, "devnode_echo", "[1", 1000, &reply, NULL);
    CHECK(err == SUBPOOL_E_INVAL && reply == NULL, "unbalanced params: %d", err);
    err = subpool_call(c, "devnode_echo", "\"x\"", 1000, &reply, NULL);
    CHECK(err == SUBPOOL_E_INVAL, "string params: %d", err);

    err = subpool_call(c, "subpool_status", NULL, 10000, &reply, &len);
    CHECK(err == 0, "status: %s", subpool_strerror(err));
    CHECK(subpool_message_parse(reply, len, &m) == 0 && reply[m.result.off] == '{',
          "status result is an object");
    CHECK(strstr(reply, "\"upstreams\":[") != NULL, "status has upstreams: %s", reply);
    free(reply);

    /* 3 MB in one reply, then over a lowered limit: TOOBIG, and the connection carries on. */
    err = subpool_call(c, "devnode_blob", "[3000000]", 20000, &reply, &len);
    CHECK(err == 0, "blob: %s", subpool_strerror(err));
    CHECK(subpool_message_parse(reply, len, &m) == 0 && m.result.len == 3000002, "blob length %zu",
          m.result.len);
    free(reply);
    subpool_set_max_reply(c, 100000);
    err = subpool_call(c, "devnode_blob", "[300000]", 20000, &reply, &len);
    CHECK(err == SUBPOOL_E_TOOBIG && reply == NULL, "over the limit: %s", subpool_strerror(err));
    expect_result(c, "devnode_echo", "[7]", "7");

    subpool_close(c);
    subpool_close(NULL);
    say("ok");
    return 0;
}

/* ---- timeout: the call returns on time, the late reply is dropped ---------------------- */

static void count_stray(struct subpool_conn *c, const char *text, size_t len, void *arg)
{
    (void)c;
    (void)text;
    (void)len;
    ++*(int *)arg;
}

static int scenario_timeout(const char *path)
{
    struct subpool_conn *c = connect_to(path);
    int strays = 0, err;
    char *reply;
    double t0 = now_s(), took;

    subpool_set_message_cb(c, count_stray, &strays);
    err = subpool_call(c, "devnode_sleep", "[1500]", 300, &reply, NULL);
    took = now_s() - t0;
    CHECK(err == SUBPOOL_E_TIMEOUT && reply == NULL, "sleep: %s", subpool_strerror(err));
    CHECK(took >= 0.29 && took < 1.2, "returned after %.3f s for a 300 ms timeout", took);
    /* The connection is still good; the late reply arrives and is not taken for this one. */
    expect_result(c, "devnode_echo", "[\"after\"]", "\"after\"");
    t0 = now_s();
    while (strays == 0 && now_s() - t0 < 10)
        CHECK(subpool_run(c, 100) == 0, "run");
    CHECK(strays == 1, "%d stray lines, want the one late reply", strays);
    subpool_close(c);
    say("ok");
    return 0;
}

/* ---- libevent: many requests in flight from a foreign event loop ------------------------ */

#define N_ECHO 200
#define BIG    (4u << 20)

struct loop {
    struct event_base *base;
    struct subpool_conn *c;
    struct event *io_read, *io_write, *timer;
    int echoes, big_ok, timeouts, errors, canceled, left, end;
};

static void loop_arm(struct loop *l)
{
    int t = subpool_timeout_ms(l->c);

    if (subpool_want_write(l->c)) {
        event_add(l->io_write, NULL);
    } else {
        event_del(l->io_write);
    }
    if (t >= 0) {
        struct timeval tv = {t / 1000, (t % 1000) * 1000};
        evtimer_add(l->timer, &tv);
    } else {
        evtimer_del(l->timer);
    }
}

static void loop_process(struct loop *l, unsigned events)
{
    int err = subpool_process(l->c, events);

    if (err) {
        l->end = err;
        event_base_loopbreak(l->base);
        return;
    }
    if (l->left == 0)
        event_base_loopbreak(l->base);
    else
        loop_arm(l);
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    loop_process(arg, (what & EV_READ ? SUBPOOL_READABLE : 0) |
                          (what & EV_WRITE ? SUBPOOL_WRITABLE : 0));
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    loop_process(arg, 0);
}

/* One echo request: its number must come back in its own reply. */
struct echo {
    struct loop *l;
    int n;
};

static void on_echo(struct subpool_conn *c, uint64_t id, int status, const char *text, size_t len,
                    void *arg)
{
    struct echo *e = arg;
    char want[32], got[64];
    (void)c;
    (void)id;

    CHECK(status == 0, "echo: %s", subpool_strerror(status));
    snprintf(want, sizeof(want), "\"e-%d\"", e->n);
    result_of(text, len, got, sizeof(got));
    CHECK(strcmp(got, want) == 0, "echo %s came back as %s", want, got);
    e->l->echoes++;
    e->l->left--;
}

static void on_big(struct subpool_conn *c, uint64_t id, int status, const char *text, size_t len,
                   void *arg)
{
    struct loop *l = arg;
    struct subpool_message m;
    (void)c;
    (void)id;

    CHECK(status == 0, "big echo: %s", subpool_strerror(status));
    CHECK(subpool_message_parse(text, len, &m) == 0 && m.result.len == BIG + 2, "big echo length");
    l->big_ok++;
    l->left--;
}

static void on_expect(struct subpool_conn *c, uint64_t id, int status, const char *text, size_t len,
                      void *arg)
{
    struct loop *l = arg;
    long long code = 0;
    (void)c;
    (void)id;

    if (status == SUBPOOL_E_TIMEOUT) {
        CHECK(text == NULL, "no text with a timeout");
        l->timeouts++;
    } else if (status == SUBPOOL_E_CANCELED) {
        l->canceled++;
    } else {
        CHECK(status == SUBPOOL_E_RPC, "expected an error reply: %s", subpool_strerror(status));
        subpool_error_message(text, len, &code, NULL, 0);
        CHECK(code == -32601, "code %lld", code);
        l->errors++;
    }
    l->left--;
}

static void on_never(struct subpool_conn *c, uint64_t id, int status, const char *text, size_t len,
                     void *arg)
{
    (void)c;
    (void)id;
    (void)status;
    (void)text;
    (void)len;
    (void)arg;
    fail(__FILE__, __LINE__, "a canceled request got its callback");
}

static int scenario_libevent(const char *path)
{
    struct loop l = {0};
    struct echo echoes[N_ECHO];
    char params[64], *big;
    int sndbuf = 4096;
    uint64_t id;

    l.c = connect_to(path);
    /* A small send buffer, so requests surely wait for writability in the loop. */
    CHECK(setsockopt(subpool_fd(l.c), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)) == 0,
          "SO_SNDBUF");
    l.base = event_base_new();
    CHECK(l.base, "event_base_new");
    l.io_read = event_new(l.base, subpool_fd(l.c), EV_READ | EV_PERSIST, on_io, &l);
    l.io_write = event_new(l.base, subpool_fd(l.c), EV_WRITE | EV_PERSIST, on_io, &l);
    l.timer = evtimer_new(l.base, on_timer, &l);
    event_add(l.io_read, NULL);

    for (int i = 0; i < N_ECHO; i++) {
        echoes[i].l = &l;
        echoes[i].n = i;
        snprintf(params, sizeof(params), "[\"e-%d\"]", i);
        CHECK(subpool_send(l.c, "devnode_echo", params, 10000, on_echo, &echoes[i], NULL) == 0,
              "send echo");
    }
    l.left = N_ECHO;
    /* 4 MiB: far more than the socket takes at once; the loop finishes writing it. */
    big = malloc(BIG + 5);
    CHECK(big, "malloc");
    big[0] = '[';
    big[1] = '"';
    memset(big + 2, 'x', BIG);
    memcpy(big + 2 + BIG, "\"]", 3);
    CHECK(subpool_send(l.c, "devnode_echo", big, 20000, on_big, &l, NULL) == 0, "send big");
    /*
     * Usually the socket takes only part of it and the loop must finish the
     * write; a daemon draining it on the other core can take it all at once,
     * which is fine too.
     */
    if (!subpool_want_write(l.c))
        say("note: the 4 MiB request went out in one go");
    free(big);
    l.left++;
    CHECK(subpool_send(l.c, "devnode_sleep", "[3000]", 200, on_expect, &l, NULL) == 0, "sleep");
    CHECK(subpool_send(l.c, "subpool_nope", NULL, 10000, on_expect, &l, NULL) == 0, "nope");
    CHECK(subpool_send(l.c, "devnode_echo", "[0]", 10000, on_never, NULL, &id) == 0, "to cancel");
    CHECK(subpool_cancel(l.c, id) == 0, "cancel");
    CHECK(subpool_cancel(l.c, id) == SUBPOOL_E_NOTFOUND, "cancel twice");
    l.left += 2;
    loop_arm(&l);
    event_base_dispatch(l.base);

    CHECK(l.end == 0, "connection ended: %s", subpool_strerror(l.end));
    CHECK(!subpool_want_write(l.c), "output left unwritten");
    CHECK(l.echoes == N_ECHO && l.big_ok == 1, "%d echoes, %d big", l.echoes, l.big_ok);
    CHECK(l.timeouts == 1 && l.errors == 1, "%d timeouts, %d errors", l.timeouts, l.errors);

    /* Closing with a request outstanding calls it back, canceled, before close returns. */
    CHECK(subpool_send(l.c, "devnode_sleep", "[2000]", -1, on_expect, &l, NULL) == 0, "last");
    l.left = 1;
    event_free(l.io_read);
    event_free(l.io_write);
    event_free(l.timer);
    subpool_close(l.c);
    CHECK(l.canceled == 1 && l.left == 0, "close canceled %d", l.canceled);
    event_base_free(l.base);
    say("ok");
    return 0;
}

/* ---- restart: the daemon goes away mid-call; a clear error, then a new connection works -- */

static void on_restart_reply(struct subpool_conn *c, uint64_t id, int status, const char *text,
                             size_t len, void *arg)
{
    int *got = arg;
    (void)c;
    (void)id;

    /* A graceful stop may still answer: -32055, or the sleep's result if it had time. */
    if (status == SUBPOOL_E_RPC) {
        long long code = 0;
        subpool_error_message(text, len, &code, NULL, 0);
        printf("rpc error %lld\n", code);
    }
    *got = status;
}

static int scenario_restart(const char *path)
{
    struct subpool_conn *c = connect_to(path);
    int status = 1, err = 0;
    double t0;
    char *reply;

    CHECK(subpool_send(c, "devnode_sleep", "[4000]", 30000, on_restart_reply, &status, NULL) == 0,
          "send");
    while (subpool_want_write(c))
        CHECK(subpool_run(c, 1000) == 0, "flush");
    say("sent");
    t0 = now_s();
    while (status == 1 && (err = subpool_run(c, 1000)) == 0)
        ;
    printf("status %s after %.3f s\n", subpool_strerror(status), now_s() - t0);
    CHECK(status == SUBPOOL_E_CLOSED || status == SUBPOOL_E_RPC, "unexpected end: %s",
          subpool_strerror(status));
    CHECK(status == SUBPOOL_E_RPC || err == SUBPOOL_E_CLOSED, "subpool_run returned %s",
          subpool_strerror(err));
    /* Everything on a dead connection fails at once, without blocking. */
    CHECK(subpool_call(c, "subpool_ping", NULL, 5000, &reply, NULL) == SUBPOOL_E_CLOSED,
          "call on a dead connection");
    subpool_close(c);
    say("lost");
    fflush(stdout);

    /* Until the new daemon listens, connecting fails cleanly. */
    t0 = now_s();
    for (;;) {
        err = subpool_connect(path, &c);
        if (err == 0) {
            err = subpool_call(c, "subpool_ping", NULL, 5000, &reply, NULL);
            free(reply);
            subpool_close(c);
            if (err == 0)
                break;
        }
        CHECK(err == SUBPOOL_E_CONNECT || err == SUBPOOL_E_CLOSED, "reconnect: %s",
              subpool_strerror(err));
        CHECK(now_s() - t0 < 30, "no daemon came back: %s", subpool_strerror(err));
        usleep(50000);
    }
    say("reconnected");
    return 0;
}

/* ---- subscribe: heads stream, then unsubscribe (needs a daemon that routes them) -------- */

struct heads {
    int subscribed, notes, final;
    bool ended;
};

static void on_head(struct subpool_conn *c, uint64_t sub, int status, const char *text, size_t len,
                    void *arg)
{
    struct heads *h = arg;
    struct subpool_message m;
    (void)c;
    (void)sub;

    if (status == SUBPOOL_SUBSCRIBED) {
        h->subscribed++;
    } else if (status == 0) {
        CHECK(subpool_message_parse(text, len, &m) == 0 && m.result.len > 0, "a head: %s", text);
        CHECK(strstr(text + m.result.off, "\"parentHash\"") != NULL, "not a header: %s", text);
        h->notes++;
    } else {
        h->ended = true;
        h->final = status;
    }
}

static int scenario_subscribe(const char *path)
{
    struct subpool_conn *c = connect_to(path);
    struct heads h = {0};
    uint64_t sub;
    double t0 = now_s();

    CHECK(subpool_subscribe(c, "chain_subscribeNewHeads", NULL, NULL, 10000, on_head, &h, &sub) ==
              0,
          "subscribe");
    while (h.notes < 3 && !h.ended && now_s() - t0 < 20)
        CHECK(subpool_run(c, 100) == 0, "run");
    CHECK(!h.ended, "ended early: %s", subpool_strerror(h.final));
    CHECK(h.subscribed == 1 && h.notes >= 3, "%d subscribed, %d notifications", h.subscribed,
          h.notes);
    CHECK(subpool_unsubscribe(c, sub) == 0, "unsubscribe");
    while (!h.ended && now_s() - t0 < 30)
        CHECK(subpool_run(c, 100) == 0, "run");
    CHECK(h.ended && h.final == SUBPOOL_E_CANCELED, "final status %s", subpool_strerror(h.final));
    CHECK(subpool_unsubscribe(c, sub) == SUBPOOL_E_NOTFOUND, "ended handle");
    expect_result(c, "devnode_echo", "[1]", "1");
    subpool_close(c);
    say("ok");
    return 0;
}

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*run)(const char *path);
    } scenarios[] = {
        {"call", scenario_call},           {"timeout", scenario_timeout},
        {"libevent", scenario_libevent},   {"restart", scenario_restart},
        {"subscribe", scenario_subscribe},
    };

    if (argc == 3)
        for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++)
            if (strcmp(argv[1], scenarios[i].name) == 0)
                return scenarios[i].run(argv[2]);
    fprintf(stderr, "usage: subpool-client-check call|timeout|libevent|restart|subscribe SOCKET\n");
    return 2;
}
