/*
 * Unit tests for read keys: which methods are shared at all, alias
 * folding, the canonical params, and whether a read is pinned or latest.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "jsonrpc.h"
#include "readkey.h"

/* The key of one request given as JSON text, NUL-terminated in out; its length (0: none). */
static unsigned last_traits;

static size_t key_of(const char *text, char *out, size_t cap, enum read_at *at)
{
    struct jsonrpc_msg m;

    assert_int_equal(jsonrpc_scan(text, strlen(text), &m), 0);
    size_t n = read_key(text, &m.method, &m.params, out, cap - 1, at, &last_traits);
    out[n] = '\0';
    return n;
}

static void expect_key(const char *text, const char *key, enum read_at want)
{
    char out[512];
    enum read_at at;

    assert_true(key_of(text, out, sizeof(out), &at) > 0);
    assert_string_equal(out, key);
    assert_int_equal(at, want);
}

static void expect_none(const char *text)
{
    char out[512];
    enum read_at at = READ_PINNED;

    last_traits = READ_CACHE;
    assert_int_equal(key_of(text, out, sizeof(out), &at), 0);
    assert_int_equal(at, READ_NONE);
    assert_int_equal(last_traits, 0);
}

static void test_aliases_fold_and_params_are_canonical(void **state)
{
    (void)state;
    expect_key("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"state_getStorageAt\","
               "\"params\":[ \"0xAbCd\" , \"0x12EF\" ]}",
               "state_getStorage\n[\"0xabcd\",\"0x12ef\"]", READ_PINNED);
    expect_key("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"state_getStorage\","
               "\"params\":[\"0xabcd\",\"0x12ef\"]}",
               "state_getStorage\n[\"0xabcd\",\"0x12ef\"]", READ_PINNED);
    expect_key("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"chain_getRuntimeVersion\"}",
               "state_getRuntimeVersion\n[]", READ_LATEST);
    /* Not hex: left as it is, case and escapes included. */
    expect_key("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"state_call\","
               "\"params\":[\"Metadata_Get\",\"0xAB\",{\"a\": \"B\\\" c\"}]}",
               "state_call\n[\"Metadata_Get\",\"0xab\",{\"a\":\"B\\\" c\"}]", READ_PINNED);
    /* 0X is not a prefix a node takes: left as it is, so it never shares with 0x. */
    expect_key("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"state_getMetadata\","
               "\"params\":[\"0XAB\"]}",
               "state_getMetadata\n[\"0XAB\"]", READ_PINNED);
    /* Nested lists are canonical too (state_queryStorageAt's keys). */
    expect_key("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"state_queryStorageAt\","
               "\"params\":[[\"0xAA\", \"0xBb\"]]}",
               "state_queryStorageAt\n[[\"0xaa\",\"0xbb\"]]", READ_LATEST);
}

static void test_trailing_nulls_are_latest(void **state)
{
    (void)state;
    const char *same[] = {
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"state_getStorage\",\"params\":[\"0x01\"]}",
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"state_getStorage\","
        "\"params\":[\"0x01\",null]}",
        "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"state_getStorageAt\","
        "\"params\":[\"0x01\", null ]}",
    };
    for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++)
        expect_key(same[i], "state_getStorage\n[\"0x01\"]", READ_LATEST);
    /* A null start key before a hash stays: the hash pins it. */
    expect_key("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"state_getKeysPaged\","
               "\"params\":[\"0x01\",100,null,\"0xff\"]}",
               "state_getKeysPaged\n[\"0x01\",100,null,\"0xff\"]", READ_PINNED);
    expect_key("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"state_getKeysPaged\","
               "\"params\":[\"0x01\",100,null,null]}",
               "state_getKeysPaged\n[\"0x01\",100]", READ_LATEST);
    expect_key("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"chain_getBlockHash\",\"params\":[0]}",
               "chain_getBlockHash\n[0]", READ_LATEST);
    expect_key("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"system_chain\",\"params\":[]}",
               "system_chain\n[]", READ_PINNED);
}

static void test_only_pure_reads_have_keys(void **state)
{
    (void)state;
    const char *never[] = {
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"author_submitExtrinsic\","
        "\"params\":[\"0x00\"]}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"system_accountNextIndex\","
        "\"params\":[\"5F\"]}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"account_nextIndex\",\"params\":[\"5F\"]}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"chain_subscribeNewHeads\"}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"subpool_status\"}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"neuronInfo_getNeuronsLite\","
        "\"params\":[1]}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"state_getStorag\",\"params\":[\"0x01\"]}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"state_getStorageAtX\",\"params\":[\"0x01\"]}",
        /* Named params are not keyed. */
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"state_getStorage\","
        "\"params\":{\"key\":\"0x01\"}}",
    };
    for (size_t i = 0; i < sizeof(never) / sizeof(never[0]); i++)
        expect_none(never[i]);
}

static void test_a_small_buffer_gives_no_key(void **state)
{
    (void)state;
    const char *text = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"state_getStorage\","
                       "\"params\":[\"0x0102030405060708\"]}";
    char out[16];
    enum read_at at;
    assert_int_equal(key_of(text, out, sizeof(out), &at), 0);
    assert_int_equal(at, READ_NONE);
}

/* The table is sorted (the lookup is a binary search): every entry is found by its name. */
static void test_every_method_in_the_table_is_found(void **state)
{
    (void)state;
    const char *name, *prev = NULL;
    for (size_t i = 0; (name = read_method_name(i)); i++) {
        char text[256], out[512];
        enum read_at at;
        if (prev)
            assert_true(strcmp(prev, name) < 0);
        snprintf(text, sizeof(text), "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"%s\"}", name);
        assert_true(key_of(text, out, sizeof(out), &at) > 0);
        assert_true(at != READ_NONE);
        prev = name;
    }
    assert_non_null(prev);
}

static void expect_traits(const char *method, unsigned traits)
{
    char text[256], out[512];
    enum read_at at;
    snprintf(text, sizeof(text), "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"%s\"}", method);
    assert_true(key_of(text, out, sizeof(out), &at) > 0);
    assert_int_equal(last_traits, traits);
}

/* What may be kept: not blocks (justifications come later), nor what a node upgrade changes. */
static void test_what_may_be_kept(void **state)
{
    (void)state;
    expect_traits("state_getMetadata", READ_CACHE);
    expect_traits("state_getStorageAt", READ_CACHE | READ_NULL_OK);
    expect_traits("chain_getHeader", READ_CACHE);
    expect_traits("system_chain", READ_CACHE);
    expect_traits("chain_getBlock", 0);
    expect_traits("system_version", 0);
    expect_traits("rpc_methods", 0);
    expect_traits("chain_getHead", 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_aliases_fold_and_params_are_canonical),
        cmocka_unit_test(test_trailing_nulls_are_latest),
        cmocka_unit_test(test_only_pure_reads_have_keys),
        cmocka_unit_test(test_a_small_buffer_gives_no_key),
        cmocka_unit_test(test_every_method_in_the_table_is_found),
        cmocka_unit_test(test_what_may_be_kept),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
