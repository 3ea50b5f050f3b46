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

/*
 * Every method name /metrics gives a label of its own (method_known): the
 * Substrate node's RPCs, the new JSON-RPC spec's, Subtensor's own and
 * subpool's. Others are counted together, so labels never grow with what
 * clients send. Sorted by bytes, like the table above.
 */
static const char *const known_names[] = {
    "account_nextIndex",
    "archive_unstable_body",
    "archive_unstable_call",
    "archive_unstable_finalizedHeight",
    "archive_unstable_genesisHash",
    "archive_unstable_hashByHeight",
    "archive_unstable_header",
    "archive_unstable_storage",
    "author_hasKey",
    "author_hasSessionKeys",
    "author_insertKey",
    "author_pendingExtrinsics",
    "author_removeExtrinsic",
    "author_rotateKeys",
    "author_submitAndWatchExtrinsic",
    "author_submitExtrinsic",
    "author_unwatchExtrinsic",
    "babe_epochAuthorship",
    "beefy_getFinalizedHead",
    "beefy_subscribeJustifications",
    "beefy_unsubscribeJustifications",
    "chainHead_unstable_body",
    "chainHead_unstable_call",
    "chainHead_unstable_continue",
    "chainHead_unstable_follow",
    "chainHead_unstable_genesisHash",
    "chainHead_unstable_header",
    "chainHead_unstable_stopOperation",
    "chainHead_unstable_storage",
    "chainHead_unstable_unfollow",
    "chainHead_unstable_unpin",
    "chainHead_v1_body",
    "chainHead_v1_call",
    "chainHead_v1_continue",
    "chainHead_v1_follow",
    "chainHead_v1_header",
    "chainHead_v1_stopOperation",
    "chainHead_v1_storage",
    "chainHead_v1_unfollow",
    "chainHead_v1_unpin",
    "chainSpec_unstable_chainName",
    "chainSpec_unstable_genesisHash",
    "chainSpec_unstable_properties",
    "chainSpec_v1_chainName",
    "chainSpec_v1_genesisHash",
    "chainSpec_v1_properties",
    "chain_getBlock",
    "chain_getBlockHash",
    "chain_getFinalisedHead",
    "chain_getFinalizedHead",
    "chain_getHead",
    "chain_getHeader",
    "chain_getRuntimeVersion",
    "chain_subscribeAllHeads",
    "chain_subscribeFinalisedHeads",
    "chain_subscribeFinalizedHeads",
    "chain_subscribeNewHead",
    "chain_subscribeNewHeads",
    "chain_subscribeRuntimeVersion",
    "chain_unsubscribeAllHeads",
    "chain_unsubscribeFinalisedHeads",
    "chain_unsubscribeFinalizedHeads",
    "chain_unsubscribeNewHead",
    "chain_unsubscribeNewHeads",
    "chain_unsubscribeRuntimeVersion",
    "childstate_getKeys",
    "childstate_getKeysPaged",
    "childstate_getKeysPagedAt",
    "childstate_getStorage",
    "childstate_getStorageEntries",
    "childstate_getStorageHash",
    "childstate_getStorageSize",
    "delegateInfo_getDelegate",
    "delegateInfo_getDelegated",
    "delegateInfo_getDelegates",
    "dev_getBlockStats",
    "grandpa_proveFinality",
    "grandpa_roundState",
    "grandpa_subscribeJustifications",
    "grandpa_unsubscribeJustifications",
    "mmr_generateProof",
    "mmr_root",
    "mmr_verifyProof",
    "mmr_verifyProofStateless",
    "neuronInfo_getNeuron",
    "neuronInfo_getNeuronLite",
    "neuronInfo_getNeurons",
    "neuronInfo_getNeuronsLite",
    "offchain_localStorageClear",
    "offchain_localStorageGet",
    "offchain_localStorageSet",
    "payment_queryFeeDetails",
    "payment_queryInfo",
    "rpc_methods",
    "stakeInfo_getStakeInfoForColdkey",
    "stakeInfo_getStakeInfoForColdkeys",
    "stakeInfo_getStakeInfoForHotkeyColdkeyNetuid",
    "state_call",
    "state_callAt",
    "state_getChildReadProof",
    "state_getKeys",
    "state_getKeysPaged",
    "state_getKeysPagedAt",
    "state_getMetadata",
    "state_getPairs",
    "state_getReadProof",
    "state_getRuntimeVersion",
    "state_getStorage",
    "state_getStorageAt",
    "state_getStorageHash",
    "state_getStorageHashAt",
    "state_getStorageSize",
    "state_getStorageSizeAt",
    "state_queryStorage",
    "state_queryStorageAt",
    "state_subscribeRuntimeVersion",
    "state_subscribeStorage",
    "state_traceBlock",
    "state_trieMigrationStatus",
    "state_unsubscribeRuntimeVersion",
    "state_unsubscribeStorage",
    "subnetInfo_getAllDynamicInfo",
    "subnetInfo_getAllMetagraphs",
    "subnetInfo_getDynamicInfo",
    "subnetInfo_getLockCost",
    "subnetInfo_getMetagraph",
    "subnetInfo_getSubnetHyperparams",
    "subnetInfo_getSubnetInfo",
    "subnetInfo_getSubnetInfo_v2",
    "subnetInfo_getSubnetState",
    "subnetInfo_getSubnetsInfo",
    "subpool_cacheClear",
    "subpool_ping",
    "subpool_status",
    "subscribe_newHead",
    "sync_state_genSyncSpec",
    "system_accountNextIndex",
    "system_addLogFilter",
    "system_addReservedPeer",
    "system_chain",
    "system_chainType",
    "system_dryRun",
    "system_dryRunAt",
    "system_health",
    "system_localListenAddresses",
    "system_localPeerId",
    "system_name",
    "system_nodeRoles",
    "system_peers",
    "system_properties",
    "system_removeReservedPeer",
    "system_reservedPeers",
    "system_resetLogFilter",
    "system_syncState",
    "system_unstable_networkState",
    "system_version",
    "transactionWatch_unstable_submitAndWatch",
    "transactionWatch_unstable_unwatch",
    "transactionWatch_v1_submitAndWatch",
    "transactionWatch_v1_unwatch",
    "transaction_unstable_broadcast",
    "transaction_unstable_stop",
    "transaction_v1_broadcast",
    "transaction_v1_stop",
    "unsubscribe_newHead",
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

/*
 * Binary search over a sorted array of n elements of size bytes, each
 * starting with its name: the index of name, or -1.
 */
static long find_name(const char *name, size_t len, const void *base, size_t n, size_t size)
{
    size_t lo = 0, hi = n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *entry = *(const char *const *)((const char *)base + mid * size);
        int c = name_cmp(name, len, entry);

        if (c == 0)
            return (long)mid;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return -1;
}

const struct method_info *method_lookup(const char *name, size_t len)
{
    long i = find_name(name, len, method_table, sizeof(method_table) / sizeof(method_table[0]),
                       sizeof(method_table[0]));
    return i < 0 ? NULL : &method_table[i];
}

int method_known(const char *name, size_t len)
{
    _Static_assert(sizeof(known_names) / sizeof(known_names[0]) == METHOD_KNOWN_COUNT,
                   "METHOD_KNOWN_COUNT is the number of known names");
    return (int)find_name(name, len, known_names, METHOD_KNOWN_COUNT, sizeof(known_names[0]));
}

const char *method_known_name(unsigned i)
{
    return i < METHOD_KNOWN_COUNT ? known_names[i] : NULL;
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
