/*
 * Network names as the Bittensor SDK knows them (finney, test, archive,
 * local, latent-lite) and the websocket URL each one stands for, so that
 * an upstream setting can take either a name or a URL.
 */
#pragma once

#include <stddef.h>

struct network {
    const char *name;
    const char *url;
};

/* The URL for a network name (exact, lower case), or NULL when it is not one. */
const char *network_url(const char *name);

/* The name whose URL is exactly `url`, or NULL. */
const char *network_name_of(const char *url);

/* The table, for listings: *ret_n entries. */
const struct network *network_list(size_t *ret_n);
