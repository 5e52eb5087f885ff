/* SHA-256 (FIPS 180-4) in portable C99: the NDK has no OpenSSL, and the plan's checksums need it. */
#ifndef LMP_SHA256_H
#define LMP_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t state[8];
    uint64_t bytes;
    unsigned char block[64];
    size_t used;
} lmp_sha256_ctx;

void lmp_sha256_init(lmp_sha256_ctx *c);
void lmp_sha256_update(lmp_sha256_ctx *c, const void *data, size_t n);
void lmp_sha256_final(lmp_sha256_ctx *c, unsigned char digest[32]);
void lmp_hex(const unsigned char digest[32], char out[65]);

#endif
