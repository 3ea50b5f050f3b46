/*
 * The node methods subpool treats specially, in one sorted table: which
 * open or close subscriptions (their replies and notifications are pinned
 * to one upstream), which change state (never retried after a lost link),
 * and the subpool_ prefix the daemon answers itself.
 */
#include "methods.h"

#include <string.h>

/*
 * Sorted by bytes (strcmp order) for the binary search below; the unit
 * tests look up every entry, so a misplaced one fails them. Writes include
 * the node-admin calls (keys, reserved peers, log filters, offchain storage)
 * and the chainHead-era transaction calls: replaying any of them on another
 * node after a lost link could act twice.
 */
static const struct method_info method_table[] = {
    {"author_insertKey", METHOD_WRITE, NULL, NULL},
    {"author_removeExtrinsic", METHOD_WRITE, NULL, NULL},
    {"author_rotateKeys", METHOD_WRITE, NULL, NULL},
    {"author_submitAndWatchExtrinsic", METHOD_SUBSCRIBE | METHOD_WRITE, NULL,
     "author_unwatchExtrinsic"},
    {"author_submitExtrinsic", METHOD_WRITE, NULL, NULL},
    {"author_unwatchExtrinsic", METHOD_UNSUBSCRIBE, NULL, "author_unwatchExtrinsic"},
    {"beefy_subscribeJustifications", METHOD_SUBSCRIBE, NULL, "beefy_unsubscribeJustifications"},
    {"beefy_unsubscribeJustifications", METHOD_UNSUBSCRIBE, NULL,
     "beefy_unsubscribeJustifications"},
    {"chainHead_unstable_follow", METHOD_SUBSCRIBE, NULL, "chainHead_unstable_unfollow"},
    {"chainHead_unstable_unfollow", METHOD_UNSUBSCRIBE, NULL, "chainHead_unstable_unfollow"},
    {"chainHead_v1_follow", METHOD_SUBSCRIBE, NULL, "chainHead_v1_unfollow"},
    {"chainHead_v1_unfollow", METHOD_UNSUBSCRIBE, NULL, "chainHead_v1_unfollow"},
    {"chain_subscribeAllHeads", METHOD_SUBSCRIBE, "chain_subscribeAllHeads",
     "chain_unsubscribeAllHeads"},
    {"chain_subscribeFinalisedHeads", METHOD_SUBSCRIBE, "chain_subscribeFinalizedHeads",
     "chain_unsubscribeFinalizedHeads"},
    {"chain_subscribeFinalizedHeads", METHOD_SUBSCRIBE, "chain_subscribeFinalizedHeads",
     "chain_unsubscribeFinalizedHeads"},
    {"chain_subscribeNewHead", METHOD_SUBSCRIBE, "chain_subscribeNewHeads",
     "chain_unsubscribeNewHeads"},
    {"chain_subscribeNewHeads", METHOD_SUBSCRIBE, "chain_subscribeNewHeads",
     "chain_unsubscribeNewHeads"},
    {"chain_subscribeRuntimeVersion", METHOD_SUBSCRIBE, "state_subscribeRuntimeVersion",
     "state_unsubscribeRuntimeVersion"},
    {"chain_unsubscribeAllHeads", METHOD_UNSUBSCRIBE, NULL, "chain_unsubscribeAllHeads"},
    {"chain_unsubscribeFinalisedHeads", METHOD_UNSUBSCRIBE, NULL,
     "chain_unsubscribeFinalizedHeads"},
    {"chain_unsubscribeFinalizedHeads", METHOD_UNSUBSCRIBE, NULL,
     "chain_unsubscribeFinalizedHeads"},
    {"chain_unsubscribeNewHead", METHOD_UNSUBSCRIBE, NULL, "chain_unsubscribeNewHeads"},
    {"chain_unsubscribeNewHeads", METHOD_UNSUBSCRIBE, NULL, "chain_unsubscribeNewHeads"},
    {"chain_unsubscribeRuntimeVersion", METHOD_UNSUBSCRIBE, NULL,
     "state_unsubscribeRuntimeVersion"},
    {"grandpa_subscribeJustifications", METHOD_SUBSCRIBE, NULL,
     "grandpa_unsubscribeJustifications"},
    {"grandpa_unsubscribeJustifications", METHOD_UNSUBSCRIBE, NULL,
     "grandpa_unsubscribeJustifications"},
    {"offchain_localStorageClear", METHOD_WRITE, NULL, NULL},
    {"offchain_localStorageSet", METHOD_WRITE, NULL, NULL},
    {"state_subscribeRuntimeVersion", METHOD_SUBSCRIBE, "state_subscribeRuntimeVersion",
     "state_unsubscribeRuntimeVersion"},
    {"state_subscribeStorage", METHOD_SUBSCRIBE, "state_subscribeStorage",
     "state_unsubscribeStorage"},
    {"state_unsubscribeRuntimeVersion", METHOD_UNSUBSCRIBE, NULL,
     "state_unsubscribeRuntimeVersion"},
    {"state_unsubscribeStorage", METHOD_UNSUBSCRIBE, NULL, "state_unsubscribeStorage"},
    {"subscribe_newHead", METHOD_SUBSCRIBE, "chain_subscribeNewHeads", "chain_unsubscribeNewHeads"},
    {"system_addLogFilter", METHOD_WRITE, NULL, NULL},
    {"system_addReservedPeer", METHOD_WRITE, NULL, NULL},
    {"system_removeReservedPeer", METHOD_WRITE, NULL, NULL},
    {"system_resetLogFilter", METHOD_WRITE, NULL, NULL},
    {"transactionWatch_unstable_submitAndWatch", METHOD_SUBSCRIBE | METHOD_WRITE, NULL,
     "transactionWatch_unstable_unwatch"},
    {"transactionWatch_unstable_unwatch", METHOD_UNSUBSCRIBE, NULL,
     "transactionWatch_unstable_unwatch"},
    {"transactionWatch_v1_submitAndWatch", METHOD_SUBSCRIBE | METHOD_WRITE, NULL,
     "transactionWatch_v1_unwatch"},
    {"transactionWatch_v1_unwatch", METHOD_UNSUBSCRIBE, NULL, "transactionWatch_v1_unwatch"},
    {"transaction_unstable_broadcast", METHOD_WRITE, NULL, NULL},
    {"transaction_unstable_stop", METHOD_WRITE, NULL, NULL},
    {"transaction_v1_broadcast", METHOD_WRITE, NULL, NULL},
    {"transaction_v1_stop", METHOD_WRITE, NULL, NULL},
    {"unsubscribe_newHead", METHOD_UNSUBSCRIBE, NULL, "chain_unsubscribeNewHeads"},
};

#define LOCAL_PREFIX "subpool_"

static int name_cmp(const char *name, size_t len, const char *entry)
{
    size_t n = strlen(entry);
    int c = memcmp(name, entry, len < n ? len : n);

    if (c != 0)
        return c;
    return len < n ? -1 : len > n ? 1 : 0;
}

const struct method_info *method_lookup(const char *name, size_t len)
{
    size_t lo = 0, hi = sizeof(method_table) / sizeof(method_table[0]);

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = name_cmp(name, len, method_table[mid].name);

        if (c == 0)
            return &method_table[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

unsigned method_flags(const char *name, size_t len)
{
    const struct method_info *mi;

    if (len == 0)
        return 0;
    if (len >= sizeof(LOCAL_PREFIX) - 1 &&
        memcmp(name, LOCAL_PREFIX, sizeof(LOCAL_PREFIX) - 1) == 0)
        return METHOD_LOCAL;
    mi = method_lookup(name, len);
    return mi ? mi->flags : 0;
}
