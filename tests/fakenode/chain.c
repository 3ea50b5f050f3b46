/*
 * Deterministic chain data. A block hash is three mixed words followed by the
 * block number masked with a mix of those words: lookups by hash recover the
 * number and check it by recomputing, so nothing is kept per block.
 */
#include "chain.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define GOLDEN 0x9e3779b97f4a7c15ull

static const char hex_digits[] = "0123456789abcdef";

uint64_t chain_mix(uint64_t x)
{
    x += GOLDEN;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t chain_domain_key(const struct chain *c, enum chain_domain domain)
{
    return chain_mix(c->seed ^ chain_mix((uint64_t)domain));
}

uint64_t chain_finalized(const struct chain *c)
{
    return c->best > 2 ? c->best - 2 : 0;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t rotl(uint64_t v, int n)
{
    return (v << n) | (v >> (64 - n));
}

static void block_words(const struct chain *c, enum chain_domain domain, uint64_t n, uint64_t w[4])
{
    uint64_t key = chain_domain_key(c, domain);
    for (uint64_t i = 0; i < 3; i++)
        w[i] = chain_mix(key ^ chain_mix(n * 4 + i));
    /* The last word hides n behind a mask that the other words determine. */
    w[3] = n ^ chain_mix(w[0] ^ rotl(w[1], 21) ^ rotl(w[2], 42) ^ key);
}

void chain_block_hash(const struct chain *c, uint64_t n, uint8_t out[CHAIN_HASH_LEN])
{
    uint64_t w[4];
    block_words(c, CHAIN_DOMAIN_BLOCK, n, w);
    for (int i = 0; i < 4; i++)
        put_be64(out + 8 * i, w[i]);
}

int chain_block_number(const struct chain *c, const uint8_t hash[CHAIN_HASH_LEN], uint64_t *ret)
{
    uint64_t w[4];
    for (int i = 0; i < 4; i++)
        w[i] = get_be64(hash + 8 * i);
    uint64_t key = chain_domain_key(c, CHAIN_DOMAIN_BLOCK);
    uint64_t n = w[3] ^ chain_mix(w[0] ^ rotl(w[1], 21) ^ rotl(w[2], 42) ^ key);
    if (n > c->best)
        return -ENOENT;
    uint8_t again[CHAIN_HASH_LEN];
    chain_block_hash(c, n, again);
    if (memcmp(again, hash, CHAIN_HASH_LEN) != 0)
        return -ENOENT;
    *ret = n;
    return 0;
}

static size_t hash_json(const uint8_t h[CHAIN_HASH_LEN], char *out)
{
    size_t k = 0;
    out[k++] = '"';
    out[k++] = '0';
    out[k++] = 'x';
    for (size_t i = 0; i < CHAIN_HASH_LEN; i++) {
        out[k++] = hex_digits[h[i] >> 4];
        out[k++] = hex_digits[h[i] & 15];
    }
    out[k++] = '"';
    return k;
}

size_t chain_block_hash_json(const struct chain *c, uint64_t n, char out[72])
{
    uint8_t h[CHAIN_HASH_LEN];
    chain_block_hash(c, n, h);
    return hash_json(h, out);
}

static size_t root_json(const struct chain *c, enum chain_domain domain, uint64_t n, char *out)
{
    uint64_t w[4];
    uint8_t h[CHAIN_HASH_LEN];
    block_words(c, domain, n, w);
    for (int i = 0; i < 4; i++)
        put_be64(h + 8 * i, w[i]);
    return hash_json(h, out);
}

size_t chain_header_json(const struct chain *c, uint64_t n, char out[CHAIN_HEADER_MAX])
{
    size_t k = 0;
    uint8_t zero[CHAIN_HASH_LEN] = {0};

#define ADD(lit)                               \
    do {                                       \
        memcpy(out + k, lit, sizeof(lit) - 1); \
        k += sizeof(lit) - 1;                  \
    } while (0)
    ADD("{\"parentHash\":");
    k += n > 0 ? chain_block_hash_json(c, n - 1, out + k) : hash_json(zero, out + k);
    /* Substrate prints the number as minimal hex: "0x0", "0x1a". */
    k += (size_t)snprintf(out + k, CHAIN_HEADER_MAX - k, ",\"number\":\"0x%llx\"",
                          (unsigned long long)n);
    ADD(",\"stateRoot\":");
    k += root_json(c, CHAIN_DOMAIN_STATE_ROOT, n, out + k);
    ADD(",\"extrinsicsRoot\":");
    k += root_json(c, CHAIN_DOMAIN_EXTRINSICS_ROOT, n, out + k);
    ADD(",\"digest\":{\"logs\":[]}}");
#undef ADD
    return k;
}

static int hex_nibble(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Two digits already checked by hex_valid. */
static uint8_t hex_byte(const char *p)
{
    return (uint8_t)((unsigned)hex_nibble(p[0]) << 4 | (unsigned)hex_nibble(p[1]));
}

bool hex_valid(const char *s, size_t len)
{
    if (len < 2 || s[0] != '0' || s[1] != 'x' || len % 2 != 0)
        return false;
    for (size_t i = 2; i < len; i++)
        if (hex_nibble(s[i]) < 0)
            return false;
    return true;
}

int hex_decode_hash(const char *s, size_t len, uint8_t out[CHAIN_HASH_LEN])
{
    if (len != 2 + 2 * CHAIN_HASH_LEN || !hex_valid(s, len))
        return -EINVAL;
    for (size_t i = 0; i < CHAIN_HASH_LEN; i++)
        out[i] = hex_byte(s + 2 + 2 * i);
    return 0;
}

/* Little hasher over a byte stream: 8-byte words through chain_mix. */
struct hasher {
    uint64_t h;
    uint64_t word;
    size_t n;
};

static void hasher_byte(struct hasher *hs, uint8_t b)
{
    hs->word |= (uint64_t)b << (8 * (hs->n % 8));
    if (++hs->n % 8 == 0) {
        hs->h = chain_mix(hs->h ^ hs->word);
        hs->word = 0;
    }
}

static uint64_t hasher_end(struct hasher *hs)
{
    return chain_mix(hs->h ^ hs->word ^ ((uint64_t)hs->n * GOLDEN));
}

uint64_t chain_hash_hex(uint64_t key, const char *s, size_t len)
{
    struct hasher hs = {.h = key};
    for (size_t i = 2; i + 1 < len; i += 2)
        hasher_byte(&hs, hex_byte(s + i));
    return hasher_end(&hs);
}

uint64_t chain_hash_bytes(uint64_t key, const void *p, size_t len)
{
    struct hasher hs = {.h = key};
    for (size_t i = 0; i < len; i++)
        hasher_byte(&hs, ((const uint8_t *)p)[i]);
    return hasher_end(&hs);
}

void chain_fill_hex(uint64_t h, char *out, size_t nbytes)
{
    uint64_t i = 0;
    while (nbytes > 0) {
        uint64_t w = chain_mix(h + ++i * GOLDEN);
        size_t take = nbytes < 8 ? nbytes : 8;
        for (size_t j = 0; j < take; j++) {
            uint8_t b = (uint8_t)(w >> (56 - 8 * j));
            *out++ = hex_digits[b >> 4];
            *out++ = hex_digits[b & 15];
        }
        nbytes -= take;
    }
}

int chain_storage(const struct chain *c, const char *key, size_t len, uint64_t *ret_h,
                  size_t *ret_len)
{
    if (len <= 2 || (key[len - 2] == '0' && key[len - 1] == '0'))
        return -ENOENT;
    uint64_t h = chain_hash_hex(chain_domain_key(c, CHAIN_DOMAIN_STORAGE), key, len);
    *ret_h = h;
    *ret_len = 4 + (size_t)((h >> 32) % 93);
    return 0;
}

bool chain_storage_dynamic(const char *key, size_t len)
{
    return len > 2 && key[len - 2] == '0' && key[len - 1] == '1';
}

size_t chain_storage_json(const struct chain *c, const char *key, size_t len, uint64_t n,
                          char out[CHAIN_VALUE_JSON_MAX])
{
    uint64_t h;
    size_t nbytes;
    char *p = out;

    *p++ = '"';
    *p++ = '0';
    *p++ = 'x';
    if (chain_storage_dynamic(key, len)) {
        for (int i = 0; i < 8; i++) {
            *p++ = hex_digits[(n >> (8 * i + 4)) & 15];
            *p++ = hex_digits[(n >> (8 * i)) & 15];
        }
    } else {
        if (chain_storage(c, key, len, &h, &nbytes) != 0)
            return 0;
        chain_fill_hex(h, p, nbytes);
        p += 2 * nbytes;
    }
    *p++ = '"';
    return (size_t)(p - out);
}

uint64_t chain_keys_total(const struct chain *c, const char *prefix, size_t len)
{
    return 16 + chain_hash_hex(chain_domain_key(c, CHAIN_DOMAIN_KEYS), prefix, len) % 1009;
}
