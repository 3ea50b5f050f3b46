/*
 * Subscriptions. Identical subscriptions (same kind, same normalised
 * params) share one upstream subscription; each client gets subpool's own
 * subscription id, which never changes, even when the upstream one is
 * re-created on another websocket after a loss. Kinds that cannot be shared
 * (watched extrinsics, anything unknown) are pinned to their upstream and
 * end with an error notification if it is lost.
 */
#pragma once

#include <event2/buffer.h>

#include "methods.h"
#include "server.h"

void subs_subscribe(struct server *srv, struct session *s, struct batch *b, const char *buf,
                    const struct jsonrpc_msg *m, const struct method_info *mi);
void subs_unsubscribe(struct server *srv, struct session *s, struct batch *b, const char *buf,
                      const struct jsonrpc_msg *m);
/* The session is closing: drop its subscriptions. */
void subs_session_gone(struct server *srv, struct subscriber_list *list);
/* A batch reply was written: its subscribe replies are out, notifications may follow. */
void subs_batch_done(struct subscriber_list *list, struct batch *b);
void subs_on_notification(struct server *srv, struct pool_member *m, const char *msg, size_t len,
                          const struct jsonrpc_msg *jm);
void subs_on_lost(struct server *srv, struct pool_member *m);
/*
 * Reload: m's pool was replaced. Shared subscriptions are unsubscribed on m
 * and re-created on the new pool, as after a loss but while m still works:
 * clients keep their ids and see no repeat. Pinned ones stay on m.
 */
void subs_move(struct server *srv, struct pool_member *m);
void subs_status(struct server *srv, struct evbuffer *out);
/* At exit, after sessions are gone. */
void subs_free_all(struct server *srv);
