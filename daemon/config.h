/*
 * Daemon configuration: one table of keys (type, bounds, default, whether a
 * reload may change it) drives the INI parser, command-line overrides,
 * validation and the key listing printed by --help-config.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "log.h"

#define CONFIG_MAX_UPSTREAMS 16

struct config {
    char *socket_path;
    unsigned socket_mode;
    char *upstreams[CONFIG_MAX_UPSTREAMS];
    unsigned n_upstreams;
    bool upstreams_default; /* the next upstream set replaces the list */
    unsigned pool_size;
    unsigned max_in_flight;
    unsigned queue_max;
    unsigned request_timeout_ms;
    uint64_t max_message;
    uint64_t max_request;
    unsigned max_batch;
    unsigned max_subs_per_upstream;
    unsigned client_max_subscriptions;
    unsigned max_subscription_keys;
    unsigned max_clients;
    unsigned max_clients_per_uid; /* 0: off */
    unsigned handshake_timeout_ms;
    unsigned client_idle_timeout_ms; /* 0: off */
    unsigned client_max_in_flight;
    uint64_t client_max_output;
    uint64_t client_max_pending;
    uint64_t max_client_memory; /* 0: sized from the host (account_budget) */
    unsigned connect_timeout_ms;
    unsigned ping_interval_ms;
    unsigned pong_timeout_ms;
    unsigned backoff_min_ms;
    unsigned backoff_max_ms;
    unsigned close_timeout_ms;
    char *tls_ca_file; /* "" for the system store */
    unsigned health_interval_ms;
    unsigned stale_block_timeout_ms; /* 0: off */
    unsigned shutdown_timeout_ms;
    enum log_level log_level;
    char *tcp_listen; /* "" when off */
    bool tcp_allow_remote;
    bool coalesce;
    bool cache;
    uint64_t cache_max_bytes;
    char *allowed_origins; /* "" when none */
};

/* A config holding every default. NULL on allocation failure. */
struct config *config_new(void);
struct config *config_free(struct config *cfg);

/*
 * Read an INI file into cfg. Keys may sit before any section or in
 * [subpoold]. Returns 0, or -1 with "FILE:LINE: reason" (or "FILE: reason")
 * in err.
 */
int config_load_file(struct config *cfg, const char *path, char *err, size_t errlen);

/* Set one key from text, as the file would. Returns 0 or -1 with the reason in err. */
int config_set(struct config *cfg, const char *key, const char *value, char *err, size_t errlen);

/* Cross-key checks after everything is loaded. Returns 0 or -1 with the reason. */
int config_validate(const struct config *cfg, char *err, size_t errlen);

/* Every key with its default, bounds, whether a reload changes it, and one line of help. */
void config_print_keys(FILE *out);

/*
 * Reload: keys that need a restart (socket, socket_mode, tcp_listen,
 * tcp_allow_remote) and differ in next get cur's value back. Returns how
 * many did, naming them comma-separated in ret_names, or -ENOMEM.
 */
int config_keep_restart_keys(struct config *next, const struct config *cur, char *ret_names,
                             size_t len);
