/* ws:// and wss:// endpoint URLs: scheme, host (IPv6 literal in brackets), port, path. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define URL_HOST_MAX 256
#define URL_PATH_MAX 1024

struct url {
    bool tls;                /* wss:// */
    char host[URL_HOST_MAX]; /* without brackets */
    bool ipv6_literal;       /* was written as [addr] */
    unsigned short port;     /* defaults to 80 / 443 */
    char path[URL_PATH_MAX]; /* "/" when absent; includes any query */
};

/* Returns 0 or -EINVAL with *ret untouched; *ret_cause (may be NULL) names the problem. */
int url_parse(const char *s, struct url *ret, const char **ret_cause);

/* "host:port" or "[v6]:port" for Host headers and logs; returns snprintf's result. */
int url_authority(const struct url *u, char *out, size_t cap);
