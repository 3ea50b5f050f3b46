/*
 * ws:// and wss:// endpoint URLs from the configuration. Only what a
 * WebSocket client needs is accepted; anything that would be silently
 * ignored (userinfo, a fragment) or could smuggle bytes into the request
 * line (spaces, control bytes in the path) is an error instead.
 */
#include "url.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

static bool prefix_case(const char *s, const char *lit)
{
    for (; *lit; s++, lit++) {
        char c = *s;

        if (c >= 'A' && c <= 'Z')
            c = (char)(c + 32);
        if (c != *lit)
            return false;
    }
    return true;
}

static bool is_host_byte(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
}

static int fail(const char **ret_cause, const char *cause)
{
    if (ret_cause)
        *ret_cause = cause;
    return -EINVAL;
}

int url_parse(const char *s, struct url *ret, const char **ret_cause)
{
    struct url u;
    const char *p, *auth_end, *host, *host_end;
    size_t host_len, path_len;

    memset(&u, 0, sizeof(u));
    if (s == NULL)
        return fail(ret_cause, "no URL");
    if (prefix_case(s, "ws://")) {
        p = s + 5;
    } else if (prefix_case(s, "wss://")) {
        u.tls = true;
        p = s + 6;
    } else {
        return fail(ret_cause, "scheme must be ws:// or wss://");
    }
    if (strchr(p, '#'))
        return fail(ret_cause, "fragment not allowed");

    auth_end = p + strcspn(p, "/?");
    if (memchr(p, '@', (size_t)(auth_end - p)))
        return fail(ret_cause, "userinfo not allowed");

    if (*p == '[') {
        char tmp[URL_HOST_MAX];
        unsigned char addr[16];

        host = p + 1;
        host_end = memchr(host, ']', (size_t)(auth_end - host));
        if (host_end == NULL)
            return fail(ret_cause, "unterminated IPv6 literal");
        host_len = (size_t)(host_end - host);
        if (host_len == 0)
            return fail(ret_cause, "empty host");
        if (host_len >= sizeof(tmp))
            return fail(ret_cause, "host too long");
        memcpy(tmp, host, host_len);
        tmp[host_len] = '\0';
        if (inet_pton(AF_INET6, tmp, addr) != 1)
            return fail(ret_cause, "bad IPv6 literal");
        u.ipv6_literal = true;
        p = host_end + 1;
        if (p < auth_end && *p != ':')
            return fail(ret_cause, "junk after IPv6 literal");
    } else {
        host = p;
        while (p < auth_end && *p != ':')
            p++;
        host_end = p;
        host_len = (size_t)(host_end - host);
        if (host_len == 0)
            return fail(ret_cause, "empty host");
        if (host_len >= URL_HOST_MAX)
            return fail(ret_cause, "host too long");
        for (const char *h = host; h < host_end; h++)
            if (!is_host_byte(*h))
                return fail(ret_cause, "bad character in host");
    }
    memcpy(u.host, host, host_len);
    u.host[host_len] = '\0';

    if (p < auth_end) { /* *p == ':' */
        unsigned long v = 0;

        p++;
        if (p == auth_end)
            return fail(ret_cause, "empty port");
        if (auth_end - p > 5)
            return fail(ret_cause, "bad port");
        for (; p < auth_end; p++) {
            if (*p < '0' || *p > '9')
                return fail(ret_cause, "bad port");
            v = v * 10 + (unsigned long)(*p - '0');
        }
        if (v == 0 || v > 65535)
            return fail(ret_cause, "port out of range");
        u.port = (unsigned short)v;
    } else {
        u.port = u.tls ? 443 : 80;
    }

    /* The path goes into the request line verbatim: printable ASCII only. */
    path_len = strlen(auth_end);
    for (size_t k = 0; k < path_len; k++) {
        unsigned char c = (unsigned char)auth_end[k];

        if (c <= 0x20 || c >= 0x7f)
            return fail(ret_cause, "bad character in path");
    }
    if (*auth_end == '\0') {
        strcpy(u.path, "/");
    } else if (*auth_end == '?') {
        if (path_len + 1 >= URL_PATH_MAX)
            return fail(ret_cause, "path too long");
        u.path[0] = '/';
        memcpy(u.path + 1, auth_end, path_len + 1);
    } else {
        if (path_len >= URL_PATH_MAX)
            return fail(ret_cause, "path too long");
        memcpy(u.path, auth_end, path_len + 1);
    }
    *ret = u;
    return 0;
}

int url_authority(const struct url *u, char *out, size_t cap)
{
    if (u->ipv6_literal)
        return snprintf(out, cap, "[%s]:%u", u->host, (unsigned)u->port);
    return snprintf(out, cap, "%s:%u", u->host, (unsigned)u->port);
}
