/*
 * The local listeners. The Unix socket is created with the configured mode,
 * replacing a stale file but never a live daemon's socket. The optional TCP
 * port is loopback unless explicitly allowed otherwise. Accepted connections
 * become sessions, one per wake-up as nginx does by default: with several
 * waiting, the listener is simply ready again on the next loop pass, and a
 * lone connection costs no second accept() that can only fail with EAGAIN.
 * When the process runs out of descriptors, accepting pauses for a moment
 * instead of spinning on the error. Sockets passed by
 * systemd are used as they are: their file, mode and group belong to the
 * socket unit, so they are never unlinked or chmod-ed here.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/util.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "server.h"

#define LISTEN_BACKLOG 1024

struct listener {
    struct server *srv;
    int fd;               /* the listening socket; -1 before it is ours */
    struct event *ev;     /* readable: a connection is waiting */
    struct event *resume; /* re-enables accept after EMFILE */
    char *path;           /* Unix socket path, or the TCP address as given */
    bool tcp;
    bool activated; /* passed by systemd: not ours to unlink */
    int lock_fd;    /* flock on PATH.lock for the daemon's life; -1 for TCP */
    dev_t dev;      /* to unlink only our own file at exit */
    ino_t ino;
    uint64_t refusal_logged_ms; /* monotonic: refusals are logged at most once a second */
    unsigned refusals_quiet;    /* refused since, without a line of their own */
};

/*
 * Whether a refusal gets its log line: one a second at most, so a local
 * loop of connect() cannot flood the journal. The next line says how many
 * went unlogged (*ret_quiet).
 */
static bool refusal_log_due(struct listener *l, unsigned *ret_quiet)
{
    uint64_t now = clock_mono_ms();

    if (l->refusal_logged_ms && now - l->refusal_logged_ms < 1000) {
        l->refusals_quiet++;
        return false;
    }
    *ret_quiet = l->refusals_quiet;
    l->refusals_quiet = 0;
    l->refusal_logged_ms = now;
    return true;
}

/* A refusal line for a client over a client cap, best effort: the socket is new and empty. */
static void refuse(int fd, const char *why)
{
    char line[160];
    size_t n = jsonrpc_error_null(line, sizeof(line) - 1, SUBPOOL_ERR_LIMIT, why);
    line[n++] = '\n';
    (void)!write(fd, line, n);
    close(fd);
}

/* The pid, uid and gid of a Unix-socket peer; left unknown when the kernel does not say. */
static void read_peer(int fd, struct peer *ret)
{
    struct ucred uc;
    socklen_t n = sizeof(uc);

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &n) < 0 || n != sizeof(uc))
        return;
    ret->known = true;
    ret->pid = uc.pid;
    ret->uid = uc.uid;
    ret->gid = uc.gid;
}

/* Errors that concern one connection, not the listener: try again on the next wake-up. */
static bool accept_retriable(int err)
{
    return err == EAGAIN || err == EWOULDBLOCK || err == EINTR || err == ECONNABORTED ||
           err == EPROTO;
}

static void accept_ready(evutil_socket_t lfd, short what, void *arg)
{
    struct listener *l = arg;
    struct server *srv = l->srv;
    struct timeval tv = {1, 0};
    struct peer peer = {0};
    unsigned uid, quiet = 0;
    int fd;
    (void)what;

    fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        if (accept_retriable(errno))
            return;
        /* EMFILE, ENFILE, ENOBUFS: the socket stays ready, so waiting is the only way out. */
        log_error("listener: accept failed: %s; pausing accept for 1 s", strerror(errno));
        event_del(l->ev);
        evtimer_add(l->resume, &tv);
        return;
    }
    srv->stats.accepted++;
    if (srv->n_sessions >= srv->cfg->max_clients) {
        if (refusal_log_due(l, &quiet))
            log_warn("listener: refused a client: max_clients (%u) reached (%u more refused "
                     "without a line in the last second)",
                     srv->cfg->max_clients, quiet);
        refuse(fd, "too many clients (max_clients reached)");
        return;
    }
    if (l->tcp) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    } else {
        read_peer(fd, &peer);
    }
    uid = peer.known ? peer.uid : PEER_UID_TCP;
    if (srv->cfg->max_clients_per_uid &&
        session_uid_clients(srv, uid) >= srv->cfg->max_clients_per_uid) {
        char comm[64];
        if (!refusal_log_due(l, &quiet)) {
            /* counted for the next line */
        } else if (peer.known) {
            proc_comm(peer.pid, comm, sizeof(comm));
            log_warn("listener: refused a client (pid %d uid %u %s): max_clients_per_uid (%u) "
                     "reached (%u more refused without a line in the last second)",
                     peer.pid, peer.uid, comm, srv->cfg->max_clients_per_uid, quiet);
        } else {
            log_warn("listener: refused a TCP client: max_clients_per_uid (%u) reached by TCP "
                     "clients (%u more refused without a line in the last second)",
                     srv->cfg->max_clients_per_uid, quiet);
        }
        refuse(fd, "too many clients for this user (max_clients_per_uid reached)");
        return;
    }
    if (!session_new(srv, fd, l->tcp, &peer)) {
        log_error("listener: out of memory for a new session");
        close(fd);
    }
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct listener *l = arg;
    (void)fd;
    (void)what;
    event_add(l->ev, NULL);
}

/* A socket file answering connect() belongs to a live daemon; one refusing it is stale. */
static int check_stale(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    int fd, r;

    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : (snprintf(err, errlen, "%s: %s", path, strerror(errno)), -1);
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s exists and is not a socket; refusing to replace it", path);
        return -1;
    }
    /* Non-blocking: a live daemon with a full backlog answers EAGAIN instead of hanging us. */
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    if (r < 0 && errno == EAGAIN)
        r = 0;
    close(fd);
    if (r == 0) {
        snprintf(err, errlen, "%s: another subpoold is listening there", path);
        return -1;
    }
    if (errno != ECONNREFUSED) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    log_info("listener: replacing stale socket %s", path);
    if (unlink(path) < 0 && errno != ENOENT) {
        snprintf(err, errlen, "%s: cannot remove stale socket: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Takes fd (closed on failure): listens on it unless BACKLOG is 0, and watches it. */
static int listener_start(struct listener *l, int fd, int backlog, char *err, size_t errlen)
{
    l->fd = fd;
    if (backlog > 0 && listen(fd, backlog) < 0) {
        snprintf(err, errlen, "%s: listen: %s", l->path, strerror(errno));
        return -1;
    }
    l->ev = event_new(l->srv->base, fd, EV_READ | EV_PERSIST, accept_ready, l);
    l->resume = evtimer_new(l->srv->base, resume_cb, l);
    if (!l->ev || !l->resume || event_add(l->ev, NULL) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

/* Frees a listener that is not serving yet or any more; the Unix socket file is the caller's. */
static void listener_release(struct listener *l)
{
    if (l->ev)
        event_free(l->ev);
    if (l->resume)
        event_free(l->resume);
    if (l->fd >= 0)
        close(l->fd);
    if (l->lock_fd >= 0)
        close(l->lock_fd); /* the lock file stays: removing it would race the next daemon */
    free(l->path);
    free(l);
}

/* A zeroed listener owning nothing yet. */
static struct listener *listener_alloc(struct server *srv, bool tcp)
{
    struct listener *l = calloc(1, sizeof(*l));

    if (l) {
        l->srv = srv;
        l->tcp = tcp;
        l->fd = -1;
        l->lock_fd = -1;
    }
    return l;
}

struct listener *listener_new(struct server *srv, const char *path, unsigned mode, char *err,
                              size_t errlen)
{
    struct listener *l = listener_alloc(srv, false);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    mode_t old_mask;
    char lock_path[sizeof(sa.sun_path) + 8];

    if (!l || !(l->path = strdup(path))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "%s: path too long for a Unix socket", path);
        goto fail;
    }
    /*
     * Checking for a stale file and binding are two steps: two daemons
     * starting together could each replace the other's socket. A lock held
     * for the daemon's life makes the pair atomic.
     */
    if (snprintf(lock_path, sizeof(lock_path), "%s.lock", path) >= (int)sizeof(lock_path)) {
        snprintf(err, errlen, "%s: path too long", path);
        goto fail;
    }
    /* Never through a symlink: a dangling one would create a file where it points. */
    l->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (l->lock_fd < 0) {
        snprintf(err, errlen, "%s: %s", lock_path, strerror(errno));
        goto fail;
    }
    if (flock(l->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        snprintf(err, errlen, "%s: another subpoold is listening there (it holds %s)", path,
                 lock_path);
        goto fail;
    }
    if (check_stale(path, err, errlen) < 0)
        goto fail;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l->fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        goto fail;
    }
    /* Create the file with the final mode so there is no window with wider permissions. */
    old_mask = umask(~mode & 0777);
    if (bind(l->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        umask(old_mask);
        snprintf(err, errlen, "%s: bind: %s", path, strerror(errno));
        goto fail;
    }
    umask(old_mask);
    if (chmod(path, mode) < 0 || stat(path, &st) < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto fail_unlink;
    }
    l->dev = st.st_dev;
    l->ino = st.st_ino;
    if (listener_start(l, l->fd, LISTEN_BACKLOG, err, errlen) < 0)
        goto fail_unlink;
    log_info("listener: accepting clients on %s (mode %04o)", path, mode);
    return l;
fail_unlink:
    unlink(path);
fail:
    if (l)
        listener_release(l);
    return NULL;
}

static bool is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
    }
    return false;
}

/* A non-loopback address needs tcp_allow_remote, and is warned about. Returns 0 or -1 (err). */
static int remote_allowed(const struct sockaddr_storage *ss, const char *what, const char *name,
                          bool allow_remote, char *err, size_t errlen)
{
    if (is_loopback(ss))
        return 0;
    if (!allow_remote) {
        snprintf(err, errlen,
                 "%s: %s is not a loopback address; set tcp_allow_remote = true to serve other "
                 "hosts",
                 what, name);
        return -1;
    }
    log_warn("listener: serving JSON-RPC on non-loopback %s: anyone who can reach it can use the "
             "pool",
             name);
    return 0;
}

struct listener *listener_new_tcp(struct server *srv, const char *addr, bool allow_remote,
                                  char *err, size_t errlen)
{
    struct listener *l = listener_alloc(srv, true);
    struct sockaddr_storage ss;
    int sslen = sizeof(ss), one = 1;

    if (!l || !(l->path = strdup(addr))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &sslen) < 0 ||
        !strchr(addr, ':')) {
        snprintf(err, errlen,
                 "tcp_listen: \"%s\" is not HOST:PORT with a numeric address "
                 "(e.g. 127.0.0.1:9955 or [::1]:9955)",
                 addr);
        goto fail;
    }
    if (remote_allowed(&ss, "tcp_listen", addr, allow_remote, err, errlen) < 0)
        goto fail;
    /* SO_REUSEADDR: a restart must not wait out the old daemon's TIME_WAIT connections. */
    l->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l->fd < 0 || setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(l->fd, (struct sockaddr *)&ss, (socklen_t)sslen) < 0) {
        snprintf(err, errlen, "tcp_listen: %s: %s", addr, strerror(errno));
        goto fail;
    }
    if (listener_start(l, l->fd, LISTEN_BACKLOG, err, errlen) < 0)
        goto fail;
    log_info("listener: accepting clients on tcp %s", addr);
    return l;
fail:
    if (l)
        listener_release(l);
    return NULL;
}

struct listener *listener_new_fd(struct server *srv, int fd, bool tcp, bool allow_remote, char *err,
                                 size_t errlen)
{
    struct listener *l = listener_alloc(srv, tcp);
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof(ss);
    char name[sizeof(((struct sockaddr_un *)0)->sun_path) + 8] = "";

    if (!l) {
        snprintf(err, errlen, "out of memory");
        close(fd);
        return NULL;
    }
    l->activated = true;
    l->fd = fd;
    if (getsockname(fd, (struct sockaddr *)&ss, &sslen) < 0) {
        snprintf(err, errlen, "socket activation: getsockname: %s", strerror(errno));
        goto fail;
    }
    if (tcp) {
        char host[INET6_ADDRSTRLEN] = "?";
        unsigned port = 0;
        if (ss.ss_family == AF_INET) {
            const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
            port = ntohs(in->sin_port);
            snprintf(name, sizeof(name), "%s:%u", host, port);
        } else if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
            port = ntohs(in6->sin6_port);
            snprintf(name, sizeof(name), "[%s]:%u", host, port);
        } else {
            snprintf(err, errlen, "socket activation: the tcp socket is not AF_INET or AF_INET6");
            goto fail;
        }
        /* The same rule as tcp_listen: the unit cannot open the pool to other hosts by itself. */
        if (remote_allowed(&ss, "socket activation", name, allow_remote, err, errlen) < 0)
            goto fail;
    } else {
        const struct sockaddr_un *sun = (const struct sockaddr_un *)&ss;
        if (ss.ss_family != AF_UNIX) {
            snprintf(err, errlen, "socket activation: the unix socket is not AF_UNIX");
            goto fail;
        }
        if (sslen > offsetof(struct sockaddr_un, sun_path) && sun->sun_path[0])
            snprintf(name, sizeof(name), "%.*s",
                     (int)(sslen - offsetof(struct sockaddr_un, sun_path)), sun->sun_path);
        else
            snprintf(name, sizeof(name), "(abstract or unnamed)");
    }
    if (!(l->path = strdup(name))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* accept() must not block: systemd passes sockets blocking unless asked. */
    if (evutil_make_socket_nonblocking(fd) < 0 || evutil_make_socket_closeonexec(fd) < 0) {
        snprintf(err, errlen, "socket activation: %s: %s", name, strerror(errno));
        goto fail;
    }
    /* systemd has called listen() with the unit's backlog. */
    if (listener_start(l, fd, 0, err, errlen) < 0)
        goto fail;
    log_info("listener: accepting clients on %s%s (socket from systemd)", tcp ? "tcp " : "",
             l->path);
    return l;
fail:
    listener_release(l);
    return NULL;
}

struct listener *listener_free(struct listener *l)
{
    struct stat st;

    if (!l)
        return NULL;
    /* Remove the file only if it is still ours (a new daemon may have replaced it). */
    if (!l->tcp && !l->activated && stat(l->path, &st) == 0 && st.st_dev == l->dev &&
        st.st_ino == l->ino)
        unlink(l->path);
    listener_release(l);
    return NULL;
}
