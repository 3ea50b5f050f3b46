/*
 * subpool-floor: the least a local proxy can do per request, as a yardstick
 * for subpoold's CPU per request. It listens on a Unix socket, reads NDJSON
 * requests and answers each one at once from memory with the reply the
 * devnode gives to system_chain: one read and one write per request on the
 * client socket, no upstream, no parsing beyond finding the id. Plain epoll,
 * no libevent. What it costs per request is what the kernel charges a
 * process for the client side of one call on this machine; subpoold cannot
 * do less than that.
 *
 * Usage: subpool-floor PATH    (prints "listening on PATH" once ready)
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUF_SIZE 65536

struct client {
    int fd;
    size_t len;
    char in[BUF_SIZE];
    char out[BUF_SIZE * 2];
};

static void die(const char *what)
{
    fprintf(stderr, "subpool-floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* The request's id, as written: "id": up to the next ',' or '}'. */
static size_t find_id(const char *line, size_t n, const char **id)
{
    const char *p = memmem(line, n, "\"id\":", 5);
    if (!p)
        return 0;
    p += 5;
    const char *end = p;
    while (end < line + n && *end != ',' && *end != '}')
        end++;
    *id = p;
    return (size_t)(end - p);
}

/* Answers every complete line; returns -1 when the client is gone. */
static int serve(struct client *c)
{
    static const char head[] = "{\"jsonrpc\":\"2.0\",\"id\":";
    static const char tail[] = ",\"result\":\"Bittensor\"}\n";
    ssize_t r = read(c->fd, c->in + c->len, sizeof(c->in) - c->len);

    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
        return -1;
    if (r < 0)
        return 0;
    c->len += (size_t)r;
    size_t off = 0, out = 0;
    for (;;) {
        char *nl = memchr(c->in + off, '\n', c->len - off);
        if (!nl)
            break;
        const char *id = "null";
        size_t id_len = find_id(c->in + off, (size_t)(nl - (c->in + off)), &id);
        if (!id_len)
            id_len = 4;
        if (out + sizeof(head) + id_len + sizeof(tail) > sizeof(c->out))
            break;
        memcpy(c->out + out, head, sizeof(head) - 1);
        out += sizeof(head) - 1;
        memcpy(c->out + out, id, id_len);
        out += id_len;
        memcpy(c->out + out, tail, sizeof(tail) - 1);
        out += sizeof(tail) - 1;
        off = (size_t)(nl - c->in) + 1;
    }
    memmove(c->in, c->in + off, c->len - off);
    c->len -= off;
    if (c->len == sizeof(c->in))
        return -1; /* a line longer than the buffer: not a benchmark request */
    /* Closed-loop clients never fill the socket: a short write is a failure here. */
    if (out && write(c->fd, c->out, out) != (ssize_t)out)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};

    if (argc != 2 || strlen(argv[1]) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "usage: subpool-floor PATH\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    strcpy(sa.sun_path, argv[1]);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        die("socket");
    unlink(argv[1]);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 4096) != 0)
        die("bind");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) != 0)
        die("epoll");
    printf("listening on %s\n", argv[1]);
    fflush(stdout);
    for (;;) {
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct client *c = evs[i].data.ptr;
            if (!c) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0)
                    continue;
                c = calloc(1, sizeof(*c));
                if (!c)
                    die("calloc");
                c->fd = fd;
                struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) != 0)
                    die("epoll_ctl");
                continue;
            }
            if (serve(c) < 0) {
                close(c->fd);
                free(c);
            }
        }
    }
}
