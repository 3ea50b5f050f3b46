/*
 * Logging for the daemon. Lines go to stderr with a timestamp, or with a
 * syslog priority prefix when journald reads them. A disabled level costs
 * one comparison: the arguments are not evaluated.
 * Callers put the object's identity first: "session 42: ...", "upstream 1: ...".
 */
#pragma once

#include <stdarg.h>

enum log_level {
    LOG_LEVEL_ERROR = 0,
    LOG_LEVEL_WARN = 1,
    LOG_LEVEL_INFO = 2,
    LOG_LEVEL_DEBUG = 3,
};

extern enum log_level log_current_level;

void log_init(void);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int log_level_parse(const char *s, enum log_level *ret);
const char *log_level_name(enum log_level level);

#define log_at(level, ...)                 \
    do {                                   \
        if ((level) <= log_current_level)  \
            log_msg((level), __VA_ARGS__); \
    } while (0)
#define log_error(...) log_at(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...)  log_at(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_info(...)  log_at(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_at(LOG_LEVEL_DEBUG, __VA_ARGS__)
