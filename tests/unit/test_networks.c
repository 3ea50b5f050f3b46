/*
 * Unit tests for the network name table: each SDK name maps to its exact
 * URL, every URL parses (wss:// on 443 for the public ones), unknown or
 * differently cased names are not networks, and the reverse lookup agrees.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "networks.h"
#include "url.h"

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(network_url("finney"), "wss://entrypoint-finney.opentensor.ai:443");
    assert_string_equal(network_url("test"), "wss://test.finney.opentensor.ai:443");
    assert_string_equal(network_url("archive"), "wss://archive.chain.opentensor.ai:443");
    assert_string_equal(network_url("local"), "ws://127.0.0.1:9944");
    assert_string_equal(network_url("latent-lite"), "wss://lite.sub.latent.to:443");
}

static void test_not_names(void **state)
{
    (void)state;
    assert_null(network_url(NULL));
    assert_null(network_url(""));
    assert_null(network_url("Finney"));
    assert_null(network_url("finney "));
    assert_null(network_url("mainnet"));
    assert_null(network_url("ws://127.0.0.1:9944"));
}

static void test_urls_parse(void **state)
{
    size_t n = 0;
    const struct network *list = network_list(&n);
    (void)state;

    assert_int_equal(n, 5);
    for (size_t i = 0; i < n; i++) {
        struct url u;
        const char *cause = NULL;
        assert_int_equal(url_parse(list[i].url, &u, &cause), 0);
        if (strcmp(list[i].name, "local") == 0) {
            assert_false(u.tls);
            assert_int_equal(u.port, 9944);
        } else {
            assert_true(u.tls);
            assert_int_equal(u.port, 443);
        }
        assert_string_equal(network_name_of(list[i].url), list[i].name);
    }
    assert_null(network_name_of("wss://entrypoint-finney.opentensor.ai"));
    assert_null(network_name_of(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_not_names),
        cmocka_unit_test(test_urls_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
