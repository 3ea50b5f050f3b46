#include "sockio.h"

#include <errno.h>
#include <unistd.h>

/*
 * Through one scratch buffer, then copied: reserving room in the evbuffer
 * instead would allocate a chunk of the full read size for every small
 * request, and large allocations are what glibc's malloc does slowly.
 */
ssize_t sock_read(struct evbuffer *buf, evutil_socket_t fd)
{
    static char scratch[SOCK_READ_MAX];
    ssize_t r = read(fd, scratch, sizeof(scratch));

    if (r > 0 && evbuffer_add(buf, scratch, (size_t)r) != 0) {
        errno = ENOMEM;
        return -1;
    }
    return r;
}
