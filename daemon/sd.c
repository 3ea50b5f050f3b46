/*
 * systemd glue (see sd.h): sd_notify, the watchdog interval and
 * sd_listen_fds through libsystemd when it is built in, stubs otherwise.
 * Nothing here logs: callers decide what a failure means.
 */
#include "sd.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>

bool sysd_available(void)
{
    return true;
}

void sysd_notify(const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    /* Cheap when not under systemd: no formatting, no socket. */
    if (!getenv("NOTIFY_SOCKET"))
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* Keep NOTIFY_SOCKET: reloads and the stop notify again. */
    (void)sd_notify(0, msg);
}

uint64_t sysd_watchdog_usec(void)
{
    uint64_t usec = 0;

    if (sd_watchdog_enabled(0, &usec) <= 0)
        return 0;
    return usec;
}

/* "unix", "tcp", or by the socket's family when the name says neither. */
static int classify(int fd, const char *name)
{
    if (name && strcmp(name, "unix") == 0)
        return AF_UNIX;
    if (name && strcmp(name, "tcp") == 0)
        return AF_INET;
    if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) > 0)
        return AF_UNIX;
    if (sd_is_socket_inet(fd, AF_UNSPEC, SOCK_STREAM, 1, 0) > 0)
        return AF_INET;
    return -1;
}

int sysd_listen_fds(int *ret_unix, int *ret_tcp, char *err, size_t errlen)
{
    char **names = NULL;
    int n = sd_listen_fds_with_names(1, &names);
    int ux = -1, tcp = -1, r = 0;

    if (n < 0) {
        snprintf(err, errlen, "socket activation: %s", strerror(-n));
        return n;
    }
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        const char *name = names ? names[i] : NULL;
        int family = classify(fd, name);
        int *slot = family == AF_UNIX ? &ux : family == AF_INET ? &tcp : NULL;

        if (r == 0 && !slot) {
            snprintf(err, errlen,
                     "socket activation: passed socket %d (name \"%s\") is neither a "
                     "listening Unix nor TCP stream socket",
                     fd, name ? name : "");
            r = -EINVAL;
        } else if (r == 0 && *slot >= 0) {
            snprintf(err, errlen, "socket activation: more than one %s socket passed",
                     family == AF_UNIX ? "Unix" : "TCP");
            r = -EINVAL;
        } else if (r == 0 && sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
            snprintf(err, errlen, "socket activation: socket \"%s\" is not a listening stream",
                     name ? name : "");
            r = -EINVAL;
        } else if (r == 0) {
            *slot = fd;
        }
    }
    for (int i = 0; names && i < n; i++)
        free(names[i]);
    free(names);
    if (r < 0) {
        for (int i = 0; i < n; i++)
            close(SD_LISTEN_FDS_START + i);
        return r;
    }
    *ret_unix = ux;
    *ret_tcp = tcp;
    return 0;
}

#else /* !HAVE_LIBSYSTEMD */

bool sysd_available(void)
{
    return false;
}

void sysd_notify(const char *fmt, ...)
{
    (void)fmt;
}

uint64_t sysd_watchdog_usec(void)
{
    return 0;
}

int sysd_listen_fds(int *ret_unix, int *ret_tcp, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    *ret_unix = -1;
    *ret_tcp = -1;
    return 0;
}

#endif
