/*
 * The node methods subpool treats specially, in one sorted table: which
 * open or close subscriptions (their replies and notifications are pinned
 * to one upstream), which change state (never retried after a lost link),
 * and the subpool_ prefix the daemon answers itself.
 */
#include "methods.h"

#include <string.h>

struct method_entry {
    const char *name;
    unsigned flags;
};

/*
 * Sorted by bytes (strcmp order) for the binary search below; the unit
 * tests look up every entry, so a misplaced one fails them. Writes include
 * the node-admin calls (keys, reserved peers, log filters, offchain storage)
 * and the chainHead-era transaction calls: replaying any of them on another
 * node after a lost link could act twice.
 */
static const struct method_entry method_table[] = {
    {"author_insertKey", METHOD_WRITE},
    {"author_removeExtrinsic", METHOD_WRITE},
    {"author_rotateKeys", METHOD_WRITE},
    {"author_submitAndWatchExtrinsic", METHOD_SUBSCRIBE | METHOD_WRITE},
    {"author_submitExtrinsic", METHOD_WRITE},
    {"author_unwatchExtrinsic", METHOD_UNSUBSCRIBE},
    {"beefy_subscribeJustifications", METHOD_SUBSCRIBE},
    {"beefy_unsubscribeJustifications", METHOD_UNSUBSCRIBE},
    {"chainHead_unstable_follow", METHOD_SUBSCRIBE},
    {"chainHead_unstable_unfollow", METHOD_UNSUBSCRIBE},
    {"chainHead_v1_follow", METHOD_SUBSCRIBE},
    {"chainHead_v1_unfollow", METHOD_UNSUBSCRIBE},
    {"chain_subscribeAllHeads", METHOD_SUBSCRIBE},
    {"chain_subscribeFinalisedHeads", METHOD_SUBSCRIBE},
    {"chain_subscribeFinalizedHeads", METHOD_SUBSCRIBE},
    {"chain_subscribeNewHead", METHOD_SUBSCRIBE},
    {"chain_subscribeNewHeads", METHOD_SUBSCRIBE},
    {"chain_subscribeRuntimeVersion", METHOD_SUBSCRIBE},
    {"chain_unsubscribeAllHeads", METHOD_UNSUBSCRIBE},
    {"chain_unsubscribeFinalisedHeads", METHOD_UNSUBSCRIBE},
    {"chain_unsubscribeFinalizedHeads", METHOD_UNSUBSCRIBE},
    {"chain_unsubscribeNewHead", METHOD_UNSUBSCRIBE},
    {"chain_unsubscribeNewHeads", METHOD_UNSUBSCRIBE},
    {"chain_unsubscribeRuntimeVersion", METHOD_UNSUBSCRIBE},
    {"grandpa_subscribeJustifications", METHOD_SUBSCRIBE},
    {"grandpa_unsubscribeJustifications", METHOD_UNSUBSCRIBE},
    {"offchain_localStorageClear", METHOD_WRITE},
    {"offchain_localStorageSet", METHOD_WRITE},
    {"state_subscribeRuntimeVersion", METHOD_SUBSCRIBE},
    {"state_subscribeStorage", METHOD_SUBSCRIBE},
    {"state_unsubscribeRuntimeVersion", METHOD_UNSUBSCRIBE},
    {"state_unsubscribeStorage", METHOD_UNSUBSCRIBE},
    {"subscribe_newHead", METHOD_SUBSCRIBE},
    {"system_addLogFilter", METHOD_WRITE},
    {"system_addReservedPeer", METHOD_WRITE},
    {"system_removeReservedPeer", METHOD_WRITE},
    {"system_resetLogFilter", METHOD_WRITE},
    {"transactionWatch_unstable_submitAndWatch", METHOD_SUBSCRIBE | METHOD_WRITE},
    {"transactionWatch_unstable_unwatch", METHOD_UNSUBSCRIBE},
    {"transactionWatch_v1_submitAndWatch", METHOD_SUBSCRIBE | METHOD_WRITE},
    {"transactionWatch_v1_unwatch", METHOD_UNSUBSCRIBE},
    {"transaction_unstable_broadcast", METHOD_WRITE},
    {"transaction_unstable_stop", METHOD_WRITE},
    {"transaction_v1_broadcast", METHOD_WRITE},
    {"transaction_v1_stop", METHOD_WRITE},
    {"unsubscribe_newHead", METHOD_UNSUBSCRIBE},
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

unsigned method_flags(const char *name, size_t len)
{
    size_t lo = 0, hi = sizeof(method_table) / sizeof(method_table[0]);

    if (len == 0)
        return 0;
    if (len >= sizeof(LOCAL_PREFIX) - 1 &&
        memcmp(name, LOCAL_PREFIX, sizeof(LOCAL_PREFIX) - 1) == 0)
        return METHOD_LOCAL;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = name_cmp(name, len, method_table[mid].name);

        if (c == 0)
            return method_table[mid].flags;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return 0;
}
