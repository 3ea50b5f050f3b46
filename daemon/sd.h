/*
 * The daemon's only contact with systemd: readiness and status
 * notifications, the watchdog interval, and sockets passed by socket
 * activation. Built without libsystemd, every call is a no-op (no
 * notifications, no passed sockets), so the rest of the daemon never
 * needs an #ifdef.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Whether the daemon was built with libsystemd. */
bool sysd_available(void);

/* Send one notification (printf-style, "KEY=VALUE\n..."); silent when nobody listens. */
void sysd_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The watchdog interval asked for by the service manager, in µs; 0 when none. */
uint64_t sysd_watchdog_usec(void);

/*
 * Sockets passed by systemd (LISTEN_FDS), taken once: the environment is
 * cleared so children do not see them. A stream socket named "unix" (or,
 * unnamed, of family AF_UNIX) becomes *ret_unix, one named "tcp" (or of
 * family AF_INET/AF_INET6) *ret_tcp; -1 for none. Returns 0, or -errno
 * with the reason in err (an unusable socket; nothing is kept then).
 */
int sysd_listen_fds(int *ret_unix, int *ret_tcp, char *err, size_t errlen);
