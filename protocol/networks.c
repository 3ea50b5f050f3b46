/*
 * The network names of the Bittensor SDK (bittensor/core/settings.py) and
 * their endpoints. Pure data and lookups; no I/O.
 */
#include "networks.h"

#include <string.h>

static const struct network networks[] = {
    {"finney", "wss://entrypoint-finney.opentensor.ai:443"},
    {"test", "wss://test.finney.opentensor.ai:443"},
    {"archive", "wss://archive.chain.opentensor.ai:443"},
    {"local", "ws://127.0.0.1:9944"},
    {"latent-lite", "wss://lite.sub.latent.to:443"},
};

#define N_NETWORKS (sizeof(networks) / sizeof(networks[0]))

const char *network_url(const char *name)
{
    for (size_t i = 0; name && i < N_NETWORKS; i++)
        if (strcmp(networks[i].name, name) == 0)
            return networks[i].url;
    return NULL;
}

const char *network_name_of(const char *url)
{
    for (size_t i = 0; url && i < N_NETWORKS; i++)
        if (strcmp(networks[i].url, url) == 0)
            return networks[i].name;
    return NULL;
}

const struct network *network_list(size_t *ret_n)
{
    *ret_n = N_NETWORKS;
    return networks;
}
