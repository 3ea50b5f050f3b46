/*
 * Socket reads without the FIONREAD that a bufferevent asks before each
 * read: on a daemon that does one read per small request, that ioctl is a
 * third of the system calls.
 */
#ifndef SUBPOOL_SOCKIO_H
#define SUBPOOL_SOCKIO_H

#include <event2/buffer.h>
#include <event2/util.h>
#include <sys/types.h>

/* What one read takes at most. */
#define SOCK_READ_MAX 65536

/* Appends what the socket holds, up to SOCK_READ_MAX bytes, to buf. Returns as read(2). */
ssize_t sock_read(struct evbuffer *buf, evutil_socket_t fd);

#endif
