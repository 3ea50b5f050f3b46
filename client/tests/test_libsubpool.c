/*
 * Unit tests of libsubpool with no daemon: the pure helpers (errors, socket
 * path resolution, reply parsing, string decoding) and the connection
 * engine against a scripted peer on a private Unix socket, which reads the
 * exact request lines the library writes and answers with hand-written
 * lines: out of order, with unknown or null ids, oversized, cut off, and
 * the whole subscription life cycle the daemon does not support yet.
 */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "subpool.h"

/* ---- Pure helpers ------------------------------------------------------------------------ */

static void test_strerror(void **state)
{
    (void)state;
    for (int e = SUBPOOL_E_BUSY; e <= 0; e++)
        assert_string_not_equal(subpool_strerror(e), "unknown error");
    assert_string_equal(subpool_strerror(-1000), "unknown error");
    assert_string_equal(subpool_strerror(1), "unknown error");
    assert_non_null(subpool_version());
}

static void test_socket_path(void **state)
{
    char buf[SUBPOOL_PATH_MAX], longp[200];
    bool system_exists = access(SUBPOOL_SOCKET_SYSTEM, F_OK) == 0;
    (void)state;

    setenv("SUBPOOL_SOCKET", "/tmp/from-env.sock", 1);
    setenv("XDG_RUNTIME_DIR", "/run/user/1234", 1);
    assert_int_equal(subpool_socket_path("/x/explicit.sock", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "/x/explicit.sock");
    assert_int_equal(subpool_socket_path("", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "/tmp/from-env.sock");
    assert_int_equal(subpool_socket_path(NULL, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "/tmp/from-env.sock");

    setenv("SUBPOOL_SOCKET", "", 1);
    assert_int_equal(subpool_socket_path(NULL, buf, sizeof(buf)), 0);
    assert_string_equal(buf,
                        system_exists ? SUBPOOL_SOCKET_SYSTEM : "/run/user/1234/subpoold.sock");

    unsetenv("SUBPOOL_SOCKET");
    unsetenv("XDG_RUNTIME_DIR");
    assert_int_equal(subpool_socket_path(NULL, buf, sizeof(buf)), 0);
    assert_string_equal(buf, SUBPOOL_SOCKET_SYSTEM);

    memset(longp, 'a', sizeof(longp) - 1);
    longp[0] = '/';
    longp[sizeof(longp) - 1] = '\0';
    assert_int_equal(subpool_socket_path(longp, buf, sizeof(buf)), SUBPOOL_E_INVAL);
    assert_int_equal(subpool_socket_path("/a/b", buf, 4), SUBPOOL_E_INVAL);
}

static void test_message_parse(void **state)
{
    const char *ok = "{\"jsonrpc\":\"2.0\",\"result\":{\"a\":[1,2]},\"id\":7}";
    const char *err = "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32601,\"message\":\"Method "
                      "\\\"x\\\" not found\",\"data\":[1]},\"id\":\"s\"}";
    const char *note = "{\"jsonrpc\":\"2.0\",\"method\":\"chain_newHead\",\"params\":"
                       "{\"subscription\":\"ab\",\"result\":{\"number\":\"0x1\"}}}";
    struct subpool_message m;
    char msg[64];
    long long code;
    (void)state;

    assert_int_equal(subpool_message_parse(ok, strlen(ok), &m), 0);
    assert_memory_equal(ok + m.result.off, "{\"a\":[1,2]}", m.result.len);
    assert_memory_equal(ok + m.id.off, "7", m.id.len);
    assert_int_equal(m.error.len, 0);

    assert_int_equal(subpool_message_parse(err, strlen(err), &m), SUBPOOL_E_RPC);
    assert_int_equal(m.code, -32601);
    assert_memory_equal(err + m.data.off, "[1]", m.data.len);
    assert_int_equal(m.result.len, 0);
    assert_int_equal(subpool_error_message(err, strlen(err), &code, msg, sizeof(msg)), 0);
    assert_int_equal(code, -32601);
    assert_string_equal(msg, "Method \"x\" not found");
    assert_int_equal(subpool_error_message(ok, strlen(ok), &code, msg, sizeof(msg)),
                     SUBPOOL_E_PROTOCOL);

    assert_int_equal(subpool_message_parse(note, strlen(note), &m), 0);
    assert_memory_equal(note + m.subscription.off, "\"ab\"", m.subscription.len);
    assert_memory_equal(note + m.result.off, "{\"number\":\"0x1\"}", m.result.len);
    assert_memory_equal(note + m.method.off, "\"chain_newHead\"", m.method.len);

    assert_int_equal(subpool_message_parse("{\"a\":", 5, &m), SUBPOOL_E_PROTOCOL);
    assert_int_equal(subpool_message_parse("[1]", 3, &m), SUBPOOL_E_PROTOCOL);
    assert_int_equal(subpool_message_parse("{\"jsonrpc\":\"2.0\",\"id\":1}", 24, &m),
                     SUBPOOL_E_PROTOCOL);
}

static void test_string_decode(void **state)
{
    const char *t = "\"a\\u00e9\\ud83d\\ude00\\n\\/\"";
    struct subpool_span s = {0, strlen(t)};
    char buf[32], small[6];
    (void)state;

    assert_int_equal(subpool_string_decode(t, &s, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "a\xc3\xa9\xf0\x9f\x98\x80\n/");
    /* Cut at a character boundary: "a" + e-acute fit in 5 bytes, the emoji does not. */
    assert_int_equal(subpool_string_decode(t, &s, small, sizeof(small)), SUBPOOL_E_TOOBIG);
    assert_string_equal(small, "a\xc3\xa9");
    s.len = 1;
    assert_int_equal(subpool_string_decode(t, &s, buf, sizeof(buf)), SUBPOOL_E_INVAL);
}

/* ---- A scripted peer ------------------------------------------------------------------- */

struct peer {
    char path[SUBPOOL_PATH_MAX];
    int listen_fd, fd;
    char in[1 << 16]; /* what the library wrote, not yet taken */
    size_t in_len;
    struct subpool_conn *c;
};

static void peer_open(struct peer *p)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};

    memset(p, 0, sizeof(*p));
    snprintf(p->path, sizeof(p->path), "/tmp/subpool-unit-%ld.sock", (long)getpid());
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", p->path);
    unlink(p->path);
    p->listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(p->listen_fd >= 0);
    assert_int_equal(bind(p->listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(p->listen_fd, 4), 0);
    /* connect completes against the backlog, so one thread plays both sides. */
    assert_int_equal(subpool_connect(p->path, &p->c), 0);
    p->fd = accept(p->listen_fd, NULL, NULL);
    assert_true(p->fd >= 0);
}

static void peer_close(struct peer *p)
{
    subpool_close(p->c);
    if (p->fd >= 0)
        close(p->fd);
    close(p->listen_fd);
    unlink(p->path);
}

/* Next line the library wrote (without newline), after letting it flush. */
static void peer_expect(struct peer *p, const char *want)
{
    char *nl;

    for (int tries = 0; !(nl = memchr(p->in, '\n', p->in_len)); tries++) {
        struct pollfd pf = {p->fd, POLLIN, 0};
        ssize_t n;

        assert_true(tries < 100);
        assert_int_equal(subpool_process(p->c, SUBPOOL_WRITABLE), 0);
        if (poll(&pf, 1, 20) <= 0)
            continue;
        n = read(p->fd, p->in + p->in_len, sizeof(p->in) - p->in_len);
        assert_true(n > 0);
        p->in_len += (size_t)n;
    }
    *nl = '\0';
    assert_string_equal(p->in, want);
    p->in_len -= (size_t)(nl + 1 - p->in);
    memmove(p->in, nl + 1, p->in_len);
}

/* Write raw bytes to the library and let it process them. */
static void peer_write(struct peer *p, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(p->fd, data, len);
        assert_true(n > 0);
        data += n;
        len -= (size_t)n;
        assert_int_equal(subpool_process(p->c, SUBPOOL_READABLE), 0);
    }
}

static void peer_raw(struct peer *p, const char *data)
{
    peer_write(p, data, strlen(data));
}

static void peer_say(struct peer *p, const char *line)
{
    char buf[4096];
    int n = snprintf(buf, sizeof(buf), "%s\n", line);

    assert_true(n > 0 && (size_t)n < sizeof(buf));
    peer_write(p, buf, (size_t)n);
}

/* Every callback appends "id:status:text" to a log the tests compare. */
struct log {
    char text[8192];
};

static void log_add(struct log *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void log_add(struct log *l, const char *fmt, ...)
{
    size_t n = strlen(l->text);
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(l->text + n, sizeof(l->text) - n, fmt, ap);
    va_end(ap);
}

static void on_reply(struct subpool_conn *c, uint64_t id, int status, const char *text, size_t len,
                     void *arg)
{
    (void)c;
    if (text)
        assert_int_equal(strlen(text), len);
    log_add(arg, "[%llu %d %s]", (unsigned long long)id, status, text ? text : "-");
}

static void on_note(struct subpool_conn *c, uint64_t sub, int status, const char *text, size_t len,
                    void *arg)
{
    on_reply(c, sub, status, text, len, arg);
}

static void on_stray(struct subpool_conn *c, const char *text, size_t len, void *arg)
{
    (void)c;
    (void)len;
    log_add(arg, "[stray %s]", text);
}

/* ---- Connection engine ----------------------------------------------------------------- */

static void test_request_lines(void **state)
{
    struct peer p;
    struct log l = {""};
    uint64_t id;
    (void)state;

    peer_open(&p);
    assert_int_equal(subpool_send(p.c, "m", "[1,\n2]", -1, on_reply, &l, &id), 0);
    assert_int_equal(id, 1);
    peer_expect(&p, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\",\"params\":[1, 2]}");
    assert_int_equal(subpool_send(p.c, "a\"b", NULL, -1, on_reply, &l, &id), 0);
    peer_expect(&p, "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"a\\\"b\"}");
    assert_int_equal(subpool_send(p.c, "m", "7", -1, on_reply, &l, NULL), SUBPOOL_E_INVAL);
    assert_int_equal(subpool_send(p.c, "m", "[", -1, on_reply, &l, NULL), SUBPOOL_E_INVAL);
    assert_int_equal(subpool_send(p.c, "", NULL, -1, on_reply, &l, NULL), SUBPOOL_E_INVAL);
    assert_int_equal(subpool_send(p.c, "m", NULL, -1, NULL, &l, NULL), SUBPOOL_E_INVAL);
    /* Replies in any order, split anywhere, with \r\n; unknown ids go to the stray callback. */
    subpool_set_message_cb(p.c, on_stray, &l);
    peer_raw(&p, "{\"jsonrpc\":\"2.0\",\"result\":true,\"id\":2}\r\n{\"jsonrpc\":\"2.0\",");
    peer_say(&p, "\"result\":[1],\"id\":1}");
    peer_say(&p, "{\"jsonrpc\":\"2.0\",\"result\":0,\"id\":9}");
    peer_say(&p, "");
    assert_string_equal(l.text, "[2 0 {\"jsonrpc\":\"2.0\",\"result\":true,\"id\":2}]"
                                "[1 0 {\"jsonrpc\":\"2.0\",\"result\":[1],\"id\":1}]"
                                "[stray {\"jsonrpc\":\"2.0\",\"result\":0,\"id\":9}]");
    peer_close(&p);
}

static void test_errors_and_limits(void **state)
{
    struct peer p;
    struct log l = {""};
    char big[300];
    (void)state;

    peer_open(&p);
    /* A null-id error with one request outstanding is that request's. */
    assert_int_equal(subpool_send(p.c, "m", NULL, -1, on_reply, &l, NULL), 0);
    peer_expect(&p, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\"}");
    peer_say(&p, "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32053,\"message\":\"x\"},\"id\":null}");
    assert_string_equal(
        l.text,
        "[1 -9 {\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32053,\"message\":\"x\"},\"id\":null}]");

    /* Over the limit: that request fails TOOBIG (its id skimmed), the next one is fine. */
    l.text[0] = '\0';
    subpool_set_max_reply(p.c, 100);
    assert_int_equal(subpool_send(p.c, "m", NULL, -1, on_reply, &l, NULL), 0);
    assert_int_equal(subpool_send(p.c, "m", NULL, -1, on_reply, &l, NULL), 0);
    snprintf(big, sizeof(big), "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":\"%0200d\"}\n", 0);
    peer_raw(&p, big);
    peer_say(&p, "{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":1}");
    assert_string_equal(l.text, "[2 -8 -][3 0 {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":1}]");

    /* A timeout; the late reply is a stray. */
    l.text[0] = '\0';
    subpool_set_message_cb(p.c, on_stray, &l);
    assert_int_equal(subpool_send(p.c, "m", NULL, 0, on_reply, &l, NULL), 0);
    usleep(5000);
    assert_int_equal(subpool_timeout_ms(p.c), 0);
    assert_int_equal(subpool_process(p.c, 0), 0);
    assert_int_equal(subpool_timeout_ms(p.c), -1);
    peer_say(&p, "{\"jsonrpc\":\"2.0\",\"id\":4,\"result\":1}");
    assert_string_equal(l.text, "[4 -4 -][stray {\"jsonrpc\":\"2.0\",\"id\":4,\"result\":1}]");

    /* The peer goes away: outstanding requests hear CLOSED, later calls fail at once. */
    l.text[0] = '\0';
    assert_int_equal(subpool_send(p.c, "m", NULL, -1, on_reply, &l, NULL), 0);
    peer_raw(&p, "{\"jsonrpc\":\"2.0\",\"id\":5,");
    close(p.fd);
    p.fd = -1;
    assert_int_equal(subpool_process(p.c, SUBPOOL_READABLE), SUBPOOL_E_CLOSED);
    assert_string_equal(l.text, "[5 -5 -]");
    assert_int_equal(subpool_send(p.c, "m", NULL, -1, on_reply, &l, NULL), SUBPOOL_E_CLOSED);
    assert_int_equal(subpool_process(p.c, SUBPOOL_READABLE), SUBPOOL_E_CLOSED);
    assert_false(subpool_want_write(p.c));
    peer_close(&p);
}

static const char head_note[] = "{\"jsonrpc\":\"2.0\",\"method\":\"chain_newHead\",\"params\":"
                                "{\"subscription\":\"S1\",\"result\":{\"n\":%d}}}";

static void test_subscription(void **state)
{
    struct peer p;
    struct log l = {""};
    char line[256];
    uint64_t sub;
    (void)state;

    peer_open(&p);
    subpool_set_message_cb(p.c, on_stray, &l);
    assert_int_equal(
        subpool_subscribe(p.c, "chain_subscribeNewHeads", NULL, NULL, 5000, on_note, &l, &sub), 0);
    peer_expect(&p, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"chain_subscribeNewHeads\"}");
    assert_int_equal(subpool_cancel(p.c, sub), SUBPOOL_E_INVAL);
    peer_say(&p, "{\"jsonrpc\":\"2.0\",\"result\":\"S1\",\"id\":1}");
    snprintf(line, sizeof(line), head_note, 1);
    peer_say(&p, line);
    peer_say(&p, "{\"jsonrpc\":\"2.0\",\"method\":\"chain_newHead\",\"params\":{\"subscription\":"
                 "\"S2\",\"result\":2}}");
    assert_string_equal(l.text,
                        "[1 1 {\"jsonrpc\":\"2.0\",\"result\":\"S1\",\"id\":1}]"
                        "[1 0 {\"jsonrpc\":\"2.0\",\"method\":\"chain_newHead\",\"params\":"
                        "{\"subscription\":\"S1\",\"result\":{\"n\":1}}}]"
                        "[stray {\"jsonrpc\":\"2.0\",\"method\":\"chain_newHead\",\"params\":"
                        "{\"subscription\":\"S2\",\"result\":2}}]");

    /* Unsubscribe: no more notifications, the final callback after the reply. */
    l.text[0] = '\0';
    assert_int_equal(subpool_unsubscribe(p.c, sub), 0);
    assert_int_equal(subpool_unsubscribe(p.c, sub), 0);
    peer_expect(&p,
                "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"chain_unsubscribeNewHeads\",\"params\":"
                "[\"S1\"]}");
    snprintf(line, sizeof(line), head_note, 2);
    peer_say(&p, line);
    assert_string_equal(l.text, "");
    peer_say(&p, "{\"jsonrpc\":\"2.0\",\"result\":true,\"id\":2}");
    assert_string_equal(l.text, "[1 -10 -]");
    assert_int_equal(subpool_unsubscribe(p.c, sub), SUBPOOL_E_NOTFOUND);

    /* Refused: one final callback with the error reply. */
    l.text[0] = '\0';
    assert_int_equal(subpool_subscribe(p.c, "state_subscribeStorage", "[[\"0x01\"]]", NULL, 5000,
                                       on_note, &l, &sub),
                     0);
    peer_expect(&p, "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"state_subscribeStorage\","
                    "\"params\":[[\"0x01\"]]}");
    peer_say(&p, "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32054,\"message\":\"no\"},\"id\":3}");
    assert_string_equal(
        l.text,
        "[3 -9 {\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32054,\"message\":\"no\"},\"id\":3}]");

    /* Unsubscribed before the reply: the library unsubscribes once it learns the id. */
    l.text[0] = '\0';
    assert_int_equal(subpool_subscribe(p.c, "x_watch", NULL, "x_unwatch", 5000, on_note, &l, &sub),
                     0);
    assert_int_equal(subpool_unsubscribe(p.c, sub), 0);
    peer_expect(&p, "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"x_watch\"}");
    peer_say(&p, "{\"jsonrpc\":\"2.0\",\"result\":7,\"id\":4}");
    peer_expect(&p, "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"x_unwatch\",\"params\":[7]}");
    assert_string_equal(l.text, "");
    peer_say(&p, "{\"jsonrpc\":\"2.0\",\"result\":false,\"id\":5}");
    assert_string_equal(l.text, "[4 -10 -]");

    /* No rule to derive the unsubscribe method. */
    assert_int_equal(subpool_subscribe(p.c, "x_watch", NULL, NULL, 5000, on_note, &l, &sub),
                     SUBPOOL_E_INVAL);

    /* The connection ends: an active subscription hears it; one ending hears CANCELED. */
    l.text[0] = '\0';
    assert_int_equal(subpool_subscribe(p.c, "author_submitAndWatchExtrinsic", "[\"0x00\"]", NULL,
                                       5000, on_note, &l, &sub),
                     0);
    peer_expect(&p, "{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"author_submitAndWatchExtrinsic\","
                    "\"params\":[\"0x00\"]}");
    peer_say(&p, "{\"jsonrpc\":\"2.0\",\"result\":\"W\",\"id\":6}");
    assert_int_equal(
        subpool_subscribe(p.c, "chainHead_v1_follow", "[true]", NULL, 5000, on_note, &l, &sub), 0);
    peer_expect(&p, "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"chainHead_v1_follow\","
                    "\"params\":[true]}");
    peer_say(&p, "{\"jsonrpc\":\"2.0\",\"result\":\"F\",\"id\":7}");
    assert_int_equal(subpool_unsubscribe(p.c, sub), 0);
    peer_expect(&p, "{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"chainHead_v1_unfollow\","
                    "\"params\":[\"F\"]}");
    l.text[0] = '\0';
    close(p.fd);
    p.fd = -1;
    assert_int_equal(subpool_process(p.c, SUBPOOL_READABLE), SUBPOOL_E_CLOSED);
    assert_string_equal(l.text, "[7 -10 -][6 -5 -]");
    peer_close(&p);
}

/* Callbacks may not re-enter the loop, but may close the connection. */
struct reenter {
    int busy, calls;
    bool close_it;
};

static void on_reenter(struct subpool_conn *c, uint64_t id, int status, const char *text,
                       size_t len, void *arg)
{
    struct reenter *r = arg;
    char *reply;
    (void)id;
    (void)text;
    (void)len;

    r->calls++;
    if (status != 0)
        return;
    r->busy += subpool_process(c, 0) == SUBPOOL_E_BUSY;
    r->busy += subpool_run(c, 0) == SUBPOOL_E_BUSY;
    r->busy += subpool_call(c, "m", NULL, 10, &reply, NULL) == SUBPOOL_E_BUSY;
    if (r->close_it)
        subpool_close(c);
}

static void test_reentry_and_close(void **state)
{
    struct peer p;
    struct reenter r = {0, 0, false};
    struct log l = {""};
    (void)state;

    peer_open(&p);
    assert_int_equal(subpool_send(p.c, "m", NULL, -1, on_reenter, &r, NULL), 0);
    peer_say(&p, "{\"jsonrpc\":\"2.0\",\"result\":1,\"id\":1}");
    assert_int_equal(r.busy, 3);
    assert_int_equal(r.calls, 1);

    /* Closing inside a callback: others are canceled, the free waits for process to return. */
    r.close_it = true;
    assert_int_equal(subpool_send(p.c, "m", NULL, -1, on_reenter, &r, NULL), 0);
    assert_int_equal(subpool_send(p.c, "m", NULL, -1, on_reply, &l, NULL), 0);
    {
        static const char reply[] = "{\"jsonrpc\":\"2.0\",\"result\":1,\"id\":2}\n";
        assert_int_equal(write(p.fd, reply, sizeof(reply) - 1), sizeof(reply) - 1);
    }
    assert_int_equal(subpool_process(p.c, SUBPOOL_READABLE), SUBPOOL_E_CANCELED);
    assert_string_equal(l.text, "[3 -10 -]");
    p.c = NULL; /* freed by the library */
    peer_close(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strerror),      cmocka_unit_test(test_socket_path),
        cmocka_unit_test(test_message_parse), cmocka_unit_test(test_string_decode),
        cmocka_unit_test(test_request_lines), cmocka_unit_test(test_errors_and_limits),
        cmocka_unit_test(test_subscription),  cmocka_unit_test(test_reentry_and_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
