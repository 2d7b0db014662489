/* trackd's optional native block kernel: the per-line pure stage (match, prepare) in one call
 * per block of lines.
 *
 * The pure-Python path (agent/pipeline/blocks.py, prepare.py) is the reference; this module is
 * an accelerator for the common line, like PyYAML's libyaml or MarkupSafe's speedups. For each
 * line it either produces exactly the record the Python path would (a `Prepared`, or the plain
 * tuple of its fields in worker processes), produces nothing where the Python path would return
 * None without counting anything, or hands the line back ("deferred") for the Python path to do:
 * any line that is not printable ASCII without a backslash, that does not match, whose time does
 * not read, that is too old, opted out or carries a junk identifier. So every counter, sample and
 * error message stays the Python path's own.
 *
 * What it does natively: run the layout's regex as a small backtracking VM compiled from the same
 * pattern (agent/pipeline/kernel.py compiles it from `re`'s own parse tree, so the spans are the
 * regex's), SHA-256 of the line (the line hash), SHA-1 of the messageId, and the lookups of the
 * parts every hit repeats (cookie header, request, user agent, client address, referrer, time),
 * each keyed on the raw bytes. A lookup that misses calls back into Python, which computes the
 * part with the Python path's own functions: the kernel holds no rule of its own about what a
 * value means.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------- */
/* SHA-256 and SHA-1 (FIPS 180-4), for the line hash and UUIDv5 messageIds (SPEC §3.4).       */

typedef struct {
    uint32_t h[8];
    uint64_t len;
    unsigned char buf[64];
    size_t fill;
} sha256_ctx;

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define ROL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))

static inline uint32_t load_be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void sha256_block(uint32_t *h, const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++) w[i] = load_be32(p + 4 * i);
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

static void sha1_block(uint32_t *h, const unsigned char *p) {
    uint32_t w[80];
    for (int i = 0; i < 16; i++) w[i] = load_be32(p + 4 * i);
    for (int i = 16; i < 80; i++) w[i] = ROL(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) { f = (b & c) | (~b & d); k = 0x5a827999; }
        else if (i < 40) { f = b ^ c ^ d; k = 0x6ed9eba1; }
        else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8f1bbcdc; }
        else { f = b ^ c ^ d; k = 0xca62c1d6; }
        uint32_t t = ROL(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = ROL(b, 30);
        b = a;
        a = t;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
}

static void sha256_blocks_c(uint32_t *h, const unsigned char *p, size_t blocks) {
    for (; blocks; blocks--, p += 64) sha256_block(h, p);
}

static void sha1_blocks_c(uint32_t *h, const unsigned char *p, size_t blocks) {
    for (; blocks; blocks--, p += 64) sha1_block(h, p);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* The SHA extensions (Intel SHA-NI, on AMD since Zen): several times faster than the portable
 * code above, chosen at import when the CPU has them (cpuid), like OpenSSL does. */
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_SHA_NI 1

__attribute__((target("sha,sse4.1,ssse3"))) static void sha256_blocks_ni(
    uint32_t *state, const unsigned char *data, size_t blocks) {
    const __m128i MASK = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i tmp = _mm_loadu_si128((const __m128i *)&state[0]);
    __m128i state1 = _mm_loadu_si128((const __m128i *)&state[4]);
    tmp = _mm_shuffle_epi32(tmp, 0xB1);               /* CDAB */
    state1 = _mm_shuffle_epi32(state1, 0x1B);         /* EFGH */
    __m128i state0 = _mm_alignr_epi8(tmp, state1, 8); /* ABEF */
    state1 = _mm_blend_epi16(state1, tmp, 0xF0);      /* CDGH */
    for (; blocks; blocks--, data += 64) {
        __m128i abef = state0, cdgh = state1, w[4];
        for (int g = 0; g < 16; g++) {
            __m128i m;
            if (g < 4) {
                m = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16 * g)), MASK);
            } else {
                /* w[g & 3] holds group g-4, w[(g-1) & 3] group g-1, and so on */
                __m128i x = _mm_sha256msg1_epu32(w[g & 3], w[(g - 3) & 3]);
                x = _mm_add_epi32(x, _mm_alignr_epi8(w[(g - 1) & 3], w[(g - 2) & 3], 4));
                m = _mm_sha256msg2_epu32(x, w[(g - 1) & 3]);
            }
            w[g & 3] = m;
            __m128i k = _mm_add_epi32(m, _mm_loadu_si128((const __m128i *)&K256[4 * g]));
            state1 = _mm_sha256rnds2_epu32(state1, state0, k);
            state0 = _mm_sha256rnds2_epu32(state0, state1, _mm_shuffle_epi32(k, 0x0E));
        }
        state0 = _mm_add_epi32(state0, abef);
        state1 = _mm_add_epi32(state1, cdgh);
    }
    tmp = _mm_shuffle_epi32(state0, 0x1B);       /* FEBA */
    state1 = _mm_shuffle_epi32(state1, 0xB1);    /* DCHG */
    state0 = _mm_blend_epi16(tmp, state1, 0xF0); /* DCBA */
    state1 = _mm_alignr_epi8(state1, tmp, 8);    /* ABEF */
    _mm_storeu_si128((__m128i *)&state[0], state0);
    _mm_storeu_si128((__m128i *)&state[4], state1);
}

/* Four rounds of SHA-1 with round function F (an immediate: one macro use per function). */
#define SHA1_GROUP(F)                                                                         \
    do {                                                                                      \
        __m128i m;                                                                            \
        if (g < 4) {                                                                          \
            m = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16 * g)), MASK);   \
        } else {                                                                              \
            m = _mm_xor_si128(_mm_sha1msg1_epu32(w[g & 3], w[(g - 3) & 3]), w[(g - 2) & 3]); \
            m = _mm_sha1msg2_epu32(m, w[(g - 1) & 3]);                                        \
        }                                                                                     \
        w[g & 3] = m;                                                                         \
        __m128i e_in = g == 0 ? _mm_add_epi32(e, m) : _mm_sha1nexte_epu32(saved, m);          \
        saved = abcd;                                                                         \
        abcd = _mm_sha1rnds4_epu32(abcd, e_in, F);                                            \
    } while (0)

__attribute__((target("sha,sse4.1,ssse3"))) static void sha1_blocks_ni(
    uint32_t *state, const unsigned char *data, size_t blocks) {
    const __m128i MASK = _mm_set_epi64x(0x0001020304050607ULL, 0x08090a0b0c0d0e0fULL);
    __m128i abcd = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)state), 0x1B);
    __m128i e = _mm_set_epi32((int)state[4], 0, 0, 0);
    for (; blocks; blocks--, data += 64) {
        __m128i abcd_save = abcd, e_save = e, saved = abcd, w[4];
        int g = 0;
        for (; g < 5; g++) SHA1_GROUP(0);
        for (; g < 10; g++) SHA1_GROUP(1);
        for (; g < 15; g++) SHA1_GROUP(2);
        for (; g < 20; g++) SHA1_GROUP(3);
        e = _mm_sha1nexte_epu32(saved, e_save);
        abcd = _mm_add_epi32(abcd, abcd_save);
    }
    _mm_storeu_si128((__m128i *)state, _mm_shuffle_epi32(abcd, 0x1B));
    state[4] = (uint32_t)_mm_extract_epi32(e, 3);
}

static int cpu_has_sha_ni(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (!(c & (1u << 19)) || !(c & (1u << 9))) return 0; /* SSE4.1, SSSE3 */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b >> 29) & 1; /* SHA */
}
#endif

typedef void (*block_fn)(uint32_t *, const unsigned char *, size_t);
static block_fn sha256_blocks = sha256_blocks_c;
static block_fn sha1_blocks = sha1_blocks_c;
static int sha_ni = 0;

/* Choose the SHA extensions (when `on` and the CPU has them) or the portable code. */
static void use_sha_ni(int on) {
    sha_ni = 0;
    sha256_blocks = sha256_blocks_c;
    sha1_blocks = sha1_blocks_c;
#ifdef HAVE_SHA_NI
    if (on && cpu_has_sha_ni()) {
        sha_ni = 1;
        sha256_blocks = sha256_blocks_ni;
        sha1_blocks = sha1_blocks_ni;
    }
#else
    (void)on;
#endif
}

/* Hash `len` bytes of `data` after `done` bytes already folded into `h` (whole blocks), with
 * the Merkle-Damgard padding of both SHA-1 and SHA-256 (big-endian 64-bit bit length). */
static void md_finish(block_fn fn, uint32_t *h, uint64_t done, const unsigned char *data,
                      size_t len) {
    uint64_t total = done + len;
    if (len >= 64) {
        fn(h, data, len / 64);
        data += len & ~(size_t)63;
        len &= 63;
    }
    unsigned char tail[128];
    memcpy(tail, data, len);
    tail[len] = 0x80;
    size_t pad = (len < 56) ? 64 : 128;
    memset(tail + len + 1, 0, pad - len - 1);
    uint64_t bits = total * 8;
    for (int i = 0; i < 8; i++) tail[pad - 1 - i] = (unsigned char)(bits >> (8 * i));
    fn(h, tail, pad / 64);
}

static const uint32_t SHA256_IV[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
static const uint32_t SHA1_IV[5] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0};
static const char HEX[] = "0123456789abcdef";

/* hex(sha256(data)[:16]): 32 ASCII characters into `out`. */
static void line_hash(const unsigned char *data, size_t len, char *out) {
    uint32_t h[8];
    memcpy(h, SHA256_IV, sizeof h);
    md_finish(sha256_blocks, h, 0, data, len);
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 4; j++) {
            unsigned char byte = (unsigned char)(h[i] >> (24 - 8 * j));
            out[8 * i + 2 * j] = HEX[byte >> 4];
            out[8 * i + 2 * j + 1] = HEX[byte & 15];
        }
    }
}

/* The messageId prefix of one file: SHA-1 state after its whole 64-byte blocks, and the rest. */
typedef struct {
    PyObject *key; /* the prefix bytes this state was made from (a strong reference) */
    uint32_t h[5];
    uint64_t done;
    unsigned char rest[64];
    size_t rest_len;
} idprefix;

static void idprefix_set(idprefix *p, PyObject *prefix) {
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(prefix);
    size_t len = (size_t)PyBytes_GET_SIZE(prefix);
    Py_INCREF(prefix);
    Py_XSETREF(p->key, prefix);
    memcpy(p->h, SHA1_IV, sizeof p->h);
    p->done = 0;
    if (len >= 64) {
        sha1_blocks(p->h, data, len / 64);
        p->done = len & ~(size_t)63;
        data += p->done;
        len &= 63;
    }
    memcpy(p->rest, data, len);
    p->rest_len = len;
}

/* UUIDv5 text of prefix + "<offset>\n<lhash>\n<slot>" (msgid.MessageIdPrefix.__call__). */
static PyObject *message_id(idprefix *p, long long offset, const char *lhash, const char *slot,
                            size_t slot_len) {
    unsigned char msg[64 + 24 + 1 + 32 + 1 + 64];
    if (slot_len > 64) {
        PyErr_SetString(PyExc_ValueError, "slot too long");
        return NULL;
    }
    size_t n = p->rest_len;
    memcpy(msg, p->rest, n);
    n += (size_t)snprintf((char *)msg + n, 24, "%lld", offset);
    msg[n++] = '\n';
    memcpy(msg + n, lhash, 32);
    n += 32;
    msg[n++] = '\n';
    memcpy(msg + n, slot, slot_len);
    n += slot_len;
    uint32_t h[5];
    memcpy(h, p->h, sizeof h);
    md_finish(sha1_blocks, h, p->done, msg, n);
    char x[40];
    for (int i = 0; i < 5; i++) {
        for (int j = 0; j < 4; j++) {
            unsigned char byte = (unsigned char)(h[i] >> (24 - 8 * j));
            x[8 * i + 2 * j] = HEX[byte >> 4];
            x[8 * i + 2 * j + 1] = HEX[byte & 15];
        }
    }
    static const char VARIANT[] = "89ab";
    char u[36];
    memcpy(u, x, 8);
    u[8] = '-';
    memcpy(u + 9, x + 8, 4);
    u[13] = '-';
    u[14] = '5';
    memcpy(u + 15, x + 13, 3);
    u[18] = '-';
    int nib = (x[16] <= '9') ? x[16] - '0' : x[16] - 'a' + 10;
    u[19] = VARIANT[nib & 3];
    memcpy(u + 20, x + 17, 3);
    u[23] = '-';
    memcpy(u + 24, x + 20, 12);
    return PyUnicode_FromStringAndSize(u, 36);
}

/* ---------------------------------------------------------------------------------------- */
/* The layout VM: a backtracking matcher with `re`'s leftmost-first semantics for the subset
 * agent/pipeline/kernel.py compiles (literals, classes, single-character repeats greedy and
 * lazy, splits for alternation and general repeats, group saves, `^`, `$`, `\Z`).            */

enum {
    OP_CHAR = 1,  /* c */
    OP_ANY = 2,   /* */
    OP_CLASS = 3, /* set */
    OP_SPLIT = 4, /* x y: try x, then y */
    OP_JMP = 5,   /* x */
    OP_SAVE = 6,  /* slot */
    OP_REP = 7,   /* set min max greedy */
    OP_AT_END = 8,
    OP_AT_BEGIN = 9,
    OP_AT_END_STRING = 10,
    OP_MATCH = 11,
};
static const int OP_SIZE[] = {0, 2, 1, 2, 3, 2, 2, 5, 1, 1, 1, 1};

enum { BT_BRANCH, BT_RESTORE, BT_REP_GREEDY, BT_REP_LAZY };

typedef struct {
    int kind, pc, pos, aux;
} bt_entry;

typedef struct {
    PyObject_HEAD
    int *code;
    Py_ssize_t ncode;
    unsigned char *sets; /* 32 bytes (256 bits) per set */
    Py_ssize_t nsets;
    int nslots;
    bt_entry *stack;
    Py_ssize_t stack_cap;
} ProgramObject;

#define IN_SET(sets, k, ch) ((sets)[(k) * 32 + ((ch) >> 3)] & (1 << ((ch) & 7)))

/* 1: matched (spans in slots), 0: no match, -1: too much backtracking (the caller defers),
 * -2: out of memory (exception set). */
static int vm_run(ProgramObject *prog, const unsigned char *s, int n, int *slots) {
    const int *code = prog->code;
    const unsigned char *sets = prog->sets;
    Py_ssize_t sp = 0;
    long budget = 20000 + 64L * n;
    int pc = 0, pos = 0;
    for (int i = 0; i < prog->nslots; i++) slots[i] = -1;

#define PUSH(K, P, Q, A)                                                                    \
    do {                                                                                    \
        if (sp == prog->stack_cap) {                                                        \
            Py_ssize_t cap = prog->stack_cap * 2;                                           \
            bt_entry *grown = PyMem_Realloc(prog->stack, (size_t)cap * sizeof(bt_entry));  \
            if (grown == NULL) {                                                            \
                PyErr_NoMemory();                                                           \
                return -2;                                                                  \
            }                                                                               \
            prog->stack = grown;                                                            \
            prog->stack_cap = cap;                                                          \
        }                                                                                   \
        prog->stack[sp].kind = (K);                                                         \
        prog->stack[sp].pc = (P);                                                           \
        prog->stack[sp].pos = (Q);                                                          \
        prog->stack[sp].aux = (A);                                                          \
        sp++;                                                                               \
    } while (0)

    for (;;) {
        if (--budget < 0) return -1;
        switch (code[pc]) {
            case OP_CHAR:
                if (pos < n && s[pos] == code[pc + 1]) {
                    pos++;
                    pc += 2;
                    continue;
                }
                goto fail;
            case OP_ANY:
                if (pos < n) {
                    pos++;
                    pc += 1;
                    continue;
                }
                goto fail;
            case OP_CLASS:
                if (pos < n && IN_SET(sets, code[pc + 1], s[pos])) {
                    pos++;
                    pc += 2;
                    continue;
                }
                goto fail;
            case OP_SPLIT:
                PUSH(BT_BRANCH, code[pc + 2], pos, 0);
                pc = code[pc + 1];
                continue;
            case OP_JMP:
                pc = code[pc + 1];
                continue;
            case OP_SAVE: {
                int slot = code[pc + 1];
                PUSH(BT_RESTORE, slot, slots[slot], 0);
                slots[slot] = pos;
                pc += 2;
                continue;
            }
            case OP_REP: {
                int set = code[pc + 1], min = code[pc + 2], max = code[pc + 3];
                int c = 0;
                if (code[pc + 4]) {
                    while (c < max && pos + c < n && IN_SET(sets, set, s[pos + c])) c++;
                    if (c < min) goto fail;
                    if (c > min) PUSH(BT_REP_GREEDY, pc, pos, c - 1);
                    pos += c;
                } else {
                    while (c < min) {
                        if (!(pos + c < n && IN_SET(sets, set, s[pos + c]))) goto fail;
                        c++;
                    }
                    if (min < max) PUSH(BT_REP_LAZY, pc, pos, min + 1);
                    pos += min;
                }
                pc += 5;
                continue;
            }
            case OP_AT_END:
                if (pos == n || (pos == n - 1 && s[pos] == '\n')) {
                    pc += 1;
                    continue;
                }
                goto fail;
            case OP_AT_BEGIN:
                if (pos == 0) {
                    pc += 1;
                    continue;
                }
                goto fail;
            case OP_AT_END_STRING:
                if (pos == n) {
                    pc += 1;
                    continue;
                }
                goto fail;
            case OP_MATCH:
                return 1;
            default:
                PyErr_SetString(PyExc_SystemError, "trackd kernel: bad program");
                return -2;
        }
    fail:
        for (;;) {
            if (sp == 0) return 0;
            bt_entry *e = &prog->stack[--sp];
            if (e->kind == BT_RESTORE) {
                slots[e->pc] = e->pos;
                continue;
            }
            if (e->kind == BT_BRANCH) {
                pc = e->pc;
                pos = e->pos;
                break;
            }
            int rpc = e->pc, start = e->pos, k = e->aux;
            int set = code[rpc + 1], min = code[rpc + 2], max = code[rpc + 3];
            if (e->kind == BT_REP_GREEDY) {
                if (k > min) {
                    e->aux = k - 1;
                    sp++; /* keep the entry, one shorter */
                }
                pos = start + k;
                pc = rpc + 5;
                break;
            }
            /* lazy: one more character, if it is there and in the set */
            if (k <= max && start + k - 1 < n && IN_SET(sets, set, s[start + k - 1])) {
                if (k < max) {
                    e->aux = k + 1;
                    sp++;
                }
                pos = start + k;
                pc = rpc + 5;
                break;
            }
        }
        if (--budget < 0) return -1;
    }
#undef PUSH
}

static void Program_dealloc(ProgramObject *self) {
    PyMem_Free(self->code);
    PyMem_Free(self->sets);
    PyMem_Free(self->stack);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Whether `code` is a program vm_run can run without checking anything: every opcode known,
 * operands in range, every jump onto the start of an instruction, and no way to run off the end
 * (the last instruction is MATCH or JMP, the only ones that do not fall through). */
static int program_ok(const int *code, Py_ssize_t n, Py_ssize_t nsets, int nslots) {
    unsigned char *starts = PyMem_Calloc((size_t)n, 1);
    if (starts == NULL) return -1;
    int ok = 1, last = 0;
    for (Py_ssize_t pc = 0; ok && pc < n; pc += OP_SIZE[last]) {
        last = code[pc];
        if (last < OP_CHAR || last > OP_MATCH || pc + OP_SIZE[last] > n) {
            ok = 0;
            break;
        }
        starts[pc] = 1;
        if ((last == OP_CLASS || last == OP_REP) && (code[pc + 1] < 0 || code[pc + 1] >= nsets))
            ok = 0;
        if (last == OP_SAVE && (code[pc + 1] < 0 || code[pc + 1] >= nslots)) ok = 0;
        if (last == OP_REP && (code[pc + 2] < 0 || code[pc + 3] < code[pc + 2])) ok = 0;
    }
    if (ok && last != OP_MATCH && last != OP_JMP) ok = 0;
    for (Py_ssize_t pc = 0; ok && pc < n; pc += OP_SIZE[code[pc]]) {
        if (code[pc] == OP_SPLIT || code[pc] == OP_JMP) {
            for (int j = 1; j < OP_SIZE[code[pc]]; j++) {
                int to = code[pc + j];
                if (to < 0 || to >= n || !starts[to]) ok = 0;
            }
        }
    }
    PyMem_Free(starts);
    return ok;
}

static int Program_init(ProgramObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"code", "sets", "groups", NULL};
    PyObject *code;
    Py_buffer sets;
    int groups;
    if (self->code != NULL) {
        PyErr_SetString(PyExc_TypeError, "trackd kernel: a Program is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!y*i", kwlist, &PyTuple_Type, &code, &sets,
                                     &groups))
        return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(code);
    int *prog = NULL;
    unsigned char *bits = NULL;
    if (sets.len % 32 != 0 || groups < 0 || groups > 1000 || n == 0 || n > (1 << 24)) {
        PyErr_SetString(PyExc_ValueError, "trackd kernel: bad program shape");
        goto fail;
    }
    prog = PyMem_Malloc((size_t)n * sizeof(int));
    bits = PyMem_Malloc((size_t)sets.len + 1);
    if (prog == NULL || bits == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(code, i));
        if (v == -1 && PyErr_Occurred()) goto fail;
        if (v < INT32_MIN || v > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "trackd kernel: program value out of range");
            goto fail;
        }
        prog[i] = (int)v;
    }
    memcpy(bits, sets.buf, (size_t)sets.len);
    int ok = program_ok(prog, n, sets.len / 32, 2 * groups);
    if (ok < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "trackd kernel: malformed program");
        goto fail;
    }
    self->stack_cap = 256;
    self->stack = PyMem_Malloc((size_t)self->stack_cap * sizeof(bt_entry));
    if (self->stack == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    self->code = prog;
    self->sets = bits;
    self->ncode = n;
    self->nsets = sets.len / 32;
    self->nslots = 2 * groups;
    PyBuffer_Release(&sets);
    return 0;
fail:
    PyMem_Free(prog);
    PyMem_Free(bits);
    PyBuffer_Release(&sets);
    return -1;
}

/* Program.match(line: bytes) -> tuple of (start, end) per group (-1, -1 when unset), None when
 * the line does not match, False when matching took too many steps. For tests. */
static PyObject *Program_match(ProgramObject *self, PyObject *arg) {
    if (self->code == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "trackd kernel: Program used before __init__");
        return NULL;
    }
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "match() takes bytes");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    if (n > INT32_MAX / 128) {
        PyErr_SetString(PyExc_ValueError, "line too long");
        return NULL;
    }
    int *slots = PyMem_Malloc(sizeof(int) * (size_t)(self->nslots + 1));
    if (slots == NULL) return PyErr_NoMemory();
    int r = vm_run(self, (const unsigned char *)PyBytes_AS_STRING(arg), (int)n, slots);
    PyObject *out = NULL;
    if (r == 1) {
        out = PyTuple_New(self->nslots / 2);
        for (int g = 0; out != NULL && g < self->nslots / 2; g++) {
            PyObject *span = Py_BuildValue("(ii)", slots[2 * g], slots[2 * g + 1]);
            if (span == NULL) {
                Py_CLEAR(out);
                break;
            }
            PyTuple_SET_ITEM(out, g, span);
        }
    } else if (r == 0) {
        out = Py_NewRef(Py_None);
    } else if (r == -1) {
        out = Py_NewRef(Py_False);
    }
    PyMem_Free(slots);
    return out;
}

static PyMethodDef Program_methods[] = {
    {"match", (PyCFunction)Program_match, METH_O, "Spans of the groups, None, or False."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject ProgramType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "agent._kernel.Program",
    .tp_basicsize = sizeof(ProgramObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A layout regex compiled for the kernel's VM (see agent/pipeline/kernel.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Program_init,
    .tp_dealloc = (destructor)Program_dealloc,
    .tp_methods = Program_methods,
};

/* ---------------------------------------------------------------------------------------- */
/* The kernel: one source's program, which groups feed what, the Python half's callbacks for
 * cache misses, and the caches.                                                              */

enum { F_TIME, F_IP, F_REQUEST, F_STATUS, F_REFERRER, F_AGENT, F_COOKIE, F_XFF, F_NFIELDS };
enum { C_TIME, C_REQUEST, C_STATUS, C_REFERRER, C_AGENT, C_IP, C_COOKIE, C_RULES, C_NCACHES };
#define MAX_HOSTS 8
#define CACHE_MAX 50000
/* SPEC §1.2 R6: events before 2009-01-01 are too old (prepare.MIN_EVENT_TS). */
#define MIN_EVENT_TS 1230768000.0

typedef struct {
    PyObject_HEAD
    ProgramObject *program;
    int group[F_NFIELDS]; /* group number (1-based) per field, 0 when the layout has none */
    int hosts[MAX_HOSTS];
    int nhosts;
    int optional_groups; /* an unset group reads as "" (else the line is deferred) */
    int pageviews;       /* page views enabled */
    int derived;         /* cookieless: derived */
    int rules;           /* the source has rules: lines one may match are the Python path's */
    int ip_mode;         /* privacy.ip for a plain IPv4 done here: 0 full, 1 truncate, 2 drop; -1 off */
    int trusted;         /* trusted proxies configured (the X-Forwarded-For walk is Python's) */
    int dash_ip;         /* `-` in the address reads as "" (compiled layouts) */
    /* Cookie intake done here for plain values (agent/pipeline/kernel.py cookie_spec): the
     * extractor's names (longest first), which kind each is (0 device, 1 named, 2 session, 3
     * opt-out), the kinds' names in config order, and the junk words (lower case). */
    int cookie_fast;
    PyObject *cookie_names; /* tuple of bytes, longest first */
    int cookie_kind[64];
    PyObject *kind_names[3]; /* per kind: tuple of indexes into cookie_names, config order */
    PyObject *junk_words;    /* frozenset of str */
    PyObject *scratch[3];    /* this line's device, named, session (owned until the next) */
    PyObject *calls[C_NCACHES];
    PyObject *stamp_of, *derived_of;
    PyObject *caches[C_NCACHES];
    PyTypeObject *record_type; /* Prepared, or NULL for plain tuples */
    PyObject *empty_rules;
    PyObject *s_false, *s_true;
    idprefix prefix;
    double last_ts;
    PyObject *last_stamp;
    /* the previous line's time text and what it read as */
    char last_time[64];
    int last_time_len;
    double last_time_ts, last_time_prec;
    int *slots;
} KernelObject;

static void Kernel_dealloc(KernelObject *self) {
    Py_XDECREF(self->program);
    for (int i = 0; i < C_NCACHES; i++) {
        Py_XDECREF(self->calls[i]);
        Py_XDECREF(self->caches[i]);
    }
    Py_XDECREF(self->stamp_of);
    Py_XDECREF(self->derived_of);
    Py_XDECREF((PyObject *)self->record_type);
    Py_XDECREF(self->empty_rules);
    Py_XDECREF(self->prefix.key);
    Py_XDECREF(self->last_stamp);
    Py_XDECREF(self->cookie_names);
    Py_XDECREF(self->junk_words);
    for (int i = 0; i < 3; i++) {
        Py_XDECREF(self->kind_names[i]);
        Py_XDECREF(self->scratch[i]);
    }
    PyMem_Free(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int cookie_spec_set(KernelObject *self, PyObject *spec);

static int Kernel_init(KernelObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"program", "groups", "hosts", "optional_groups", "pageviews",
                             "derived", "calls", "stamp_of", "derived_of", "record_type", "rules",
                             "ip_mode", "trusted", "dash_ip", "cookies", NULL};
    PyObject *program, *groups, *hosts, *calls, *stamp_of, *derived_of, *record_type;
    int optional_groups, pageviews, derived, rules = 0, ip_mode = -1, trusted = 1, dash_ip = 1;
    PyObject *cookies = Py_None;
    if (self->program != NULL) {
        PyErr_SetString(PyExc_TypeError, "trackd kernel: a Kernel is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!pppO!OOO|pippO", kwlist, &ProgramType, &program,
                                     &PyTuple_Type, &groups, &PyTuple_Type, &hosts,
                                     &optional_groups, &pageviews, &derived, &PyTuple_Type, &calls,
                                     &stamp_of, &derived_of, &record_type, &rules, &ip_mode, &trusted,
                                     &dash_ip, &cookies))
        return -1;
    if (PyTuple_GET_SIZE(groups) != F_NFIELDS || PyTuple_GET_SIZE(calls) != C_NCACHES ||
        PyTuple_GET_SIZE(hosts) > MAX_HOSTS) {
        PyErr_SetString(PyExc_ValueError, "trackd kernel: wrong number of groups, hosts or calls");
        return -1;
    }
    ProgramObject *prog = (ProgramObject *)program;
    if (prog->code == NULL) {
        PyErr_SetString(PyExc_ValueError, "trackd kernel: the Program is not initialised");
        return -1;
    }
    for (int i = 0; i < F_NFIELDS; i++) {
        long g = PyLong_AsLong(PyTuple_GET_ITEM(groups, i));
        if (g < 0 || g > prog->nslots / 2) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "trackd kernel: bad group");
            return -1;
        }
        self->group[i] = (int)g;
    }
    self->nhosts = (int)PyTuple_GET_SIZE(hosts);
    for (int i = 0; i < self->nhosts; i++) {
        long g = PyLong_AsLong(PyTuple_GET_ITEM(hosts, i));
        if (g < 1 || g > prog->nslots / 2) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "trackd kernel: bad host group");
            return -1;
        }
        self->hosts[i] = (int)g;
    }
    if (self->group[F_TIME] == 0) {
        PyErr_SetString(PyExc_ValueError, "trackd kernel: the layout has no time group");
        return -1;
    }
    for (int i = 0; i < C_NCACHES; i++) {
        PyObject *c = PyTuple_GET_ITEM(calls, i);
        if (!PyCallable_Check(c)) {
            PyErr_SetString(PyExc_TypeError, "trackd kernel: calls must be callable");
            return -1;
        }
        Py_INCREF(c);
        Py_XSETREF(self->calls[i], c);
        Py_XSETREF(self->caches[i], PyDict_New());
        if (self->caches[i] == NULL) return -1;
    }
    if (record_type != Py_None && !PyType_Check(record_type)) {
        PyErr_SetString(PyExc_TypeError, "trackd kernel: record_type must be a type or None");
        return -1;
    }
    if (record_type != Py_None &&
        !PyType_IsSubtype((PyTypeObject *)record_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "trackd kernel: record_type must be a tuple type");
        return -1;
    }
    Py_INCREF(program);
    Py_XSETREF(self->program, prog);
    Py_INCREF(stamp_of);
    Py_XSETREF(self->stamp_of, stamp_of);
    Py_INCREF(derived_of);
    Py_XSETREF(self->derived_of, derived_of);
    if (record_type != Py_None) {
        Py_INCREF(record_type);
        Py_XSETREF(self->record_type, (PyTypeObject *)record_type);
    }
    Py_XSETREF(self->empty_rules, PyTuple_New(0));
    self->optional_groups = optional_groups;
    self->pageviews = pageviews;
    self->derived = derived;
    self->rules = rules;
    self->ip_mode = ip_mode < 0 || ip_mode > 2 ? -1 : ip_mode;
    self->trusted = trusted;
    self->dash_ip = dash_ip;
    if (cookies != Py_None && cookie_spec_set(self, cookies) < 0) return -1;
    self->last_ts = -1.0;
    self->last_time_len = -1;
    PyMem_Free(self->slots);
    self->slots = PyMem_Malloc(sizeof(int) * (size_t)(prog->nslots + 2));
    if (self->slots == NULL || self->empty_rules == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* The cached value for `key` (a new bytes object, stolen), computed by calls[which](*args) on a
 * miss. Returns a borrowed reference, or NULL with an exception. */
static PyObject *cached(KernelObject *self, int which, PyObject *key, PyObject *args) {
    PyObject *cache = self->caches[which];
    PyObject *hit = PyDict_GetItemWithError(cache, key);
    if (hit != NULL || PyErr_Occurred()) {
        Py_DECREF(key);
        Py_XDECREF(args);
        return hit;
    }
    PyObject *value = args != NULL ? PyObject_Call(self->calls[which], args, NULL)
                                   : PyObject_CallOneArg(self->calls[which], key);
    Py_XDECREF(args);
    if (value == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    if (PyDict_GET_SIZE(cache) >= CACHE_MAX) PyDict_Clear(cache);
    int rc = PyDict_SetItem(cache, key, value);
    Py_DECREF(key);
    Py_DECREF(value); /* the cache holds it */
    return rc < 0 ? NULL : value;
}

/* A group's span [a, b) in the line ((0, 0) for a group the layout lacks, or an unset one
 * when allowed). 0 ok, 1 defer (an unset group the layout says cannot be). */
static int group_span(KernelObject *self, int g, int *a, int *b) {
    if (g == 0) {
        *a = *b = 0;
        return 0;
    }
    *a = self->slots[2 * (g - 1)];
    *b = self->slots[2 * (g - 1) + 1];
    if (*a < 0 || *b < 0) {
        if (!self->optional_groups) return 1;
        *a = *b = 0;
    }
    return 0;
}

/* The span as a bytes object (a cache key). 0 ok, 1 defer, -1 error. */
static int span_bytes(KernelObject *self, const char *s, int g, PyObject **out) {
    int a, b;
    if (group_span(self, g, &a, &b)) return 1;
    *out = PyBytes_FromStringAndSize(s + a, b - a);
    return *out == NULL ? -1 : 0;
}

static PyObject *concat(PyObject *a, PyObject *b) {
    Py_ssize_t na = PyBytes_GET_SIZE(a), nb = PyBytes_GET_SIZE(b);
    PyObject *out = PyBytes_FromStringAndSize(NULL, na + nb);
    if (out != NULL) {
        memcpy(PyBytes_AS_STRING(out), PyBytes_AS_STRING(a), (size_t)na);
        memcpy(PyBytes_AS_STRING(out) + na, PyBytes_AS_STRING(b), (size_t)nb);
    }
    return out;
}

/* The context head of a fast-path address (`"ip":"…",` per privacy.ip, or nothing) followed by
 * the user agent's part: what context_head(for_context(ip), "") + agent part gives. */
static PyObject *ip_context(int mode, int fast_ip, const char *ip, int n, int last_dot,
                            PyObject *agent) {
    int shown = fast_ip == 1 && mode != 2;
    int len = mode == 1 ? last_dot + 2 : n;
    Py_ssize_t na = PyBytes_GET_SIZE(agent);
    Py_ssize_t total = (shown ? 6 + len + 2 : 0) + na;
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) return NULL;
    char *p = PyBytes_AS_STRING(out);
    if (shown) {
        memcpy(p, "\"ip\":\"", 6);
        p += 6;
        if (mode == 1) {
            memcpy(p, ip, (size_t)last_dot);
            memcpy(p + last_dot, ".0", 2);
        } else {
            memcpy(p, ip, (size_t)n);
        }
        p += len;
        memcpy(p, "\",", 2);
        p += 2;
    }
    memcpy(p, PyBytes_AS_STRING(agent), (size_t)na);
    return out;
}

#define DEFER 1
#define SKIP 2


/* cookies: (names: tuple[bytes] longest first, kinds: tuple[int], per-kind index tuples
 * (device, named, session), junk words frozenset). */
static int cookie_spec_set(KernelObject *self, PyObject *spec) {
    PyObject *names, *kinds, *per_kind, *junk;
    if (!PyArg_ParseTuple(spec, "O!O!O!O!", &PyTuple_Type, &names, &PyTuple_Type, &kinds,
                          &PyTuple_Type, &per_kind, &PyFrozenSet_Type, &junk))
        return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (n > 64 || PyTuple_GET_SIZE(kinds) != n || PyTuple_GET_SIZE(per_kind) != 3) {
        PyErr_SetString(PyExc_ValueError, "trackd kernel: bad cookie spec");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(kinds, i));
        if (!PyBytes_Check(name) || PyBytes_GET_SIZE(name) == 0 || kind < 0 || kind > 3) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "trackd kernel: bad cookie");
            return -1;
        }
        self->cookie_kind[i] = (int)kind;
    }
    for (int k = 0; k < 3; k++) {
        PyObject *idx = PyTuple_GET_ITEM(per_kind, k);
        if (!PyTuple_Check(idx)) {
            PyErr_SetString(PyExc_TypeError, "trackd kernel: bad cookie kinds");
            return -1;
        }
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(idx); j++) {
            long v = PyLong_AsLong(PyTuple_GET_ITEM(idx, j));
            if (v < 0 || v >= n || self->cookie_kind[v] != k) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "trackd kernel: bad index");
                return -1;
            }
        }
        Py_INCREF(idx);
        Py_XSETREF(self->kind_names[k], idx);
    }
    Py_INCREF(names);
    Py_XSETREF(self->cookie_names, names);
    Py_INCREF(junk);
    Py_XSETREF(self->junk_words, junk);
    self->cookie_fast = 1;
    return 0;
}

#define NEED_PY 3

static int is_plain_char(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '~' || c == '+' || c == '-';
}

/* The normalised value of a plain identifier (normalize.Normalizer._normalize's first branch):
 * 1 with *out (new ref) or *out NULL when junk; 0 when the value is not plain (NEED_PY). */
static int plain_identifier(KernelObject *self, const char *v, Py_ssize_t n, int named,
                            PyObject **out) {
    *out = NULL;
    if (n == 0) return 0;
    int zeros = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (!is_plain_char(c)) return 0;
        if (c != '0' && c != '-') zeros = 0;
    }
    if (n > 255 || (!named && n < 5) || zeros) return 1;
    char low[256];
    for (Py_ssize_t i = 0; i < n; i++) low[i] = (char)(v[i] >= 'A' && v[i] <= 'Z' ? v[i] + 32 : v[i]);
    PyObject *folded = PyUnicode_FromStringAndSize(low, n);
    if (folded == NULL) return -1;
    int junk = PySet_Contains(self->junk_words, folded);
    Py_DECREF(folded);
    if (junk < 0) return -1;
    if (junk) return 1;
    *out = PyUnicode_FromStringAndSize(v, n);
    return *out == NULL ? -1 : 1;
}

/* SPEC §1.1 intake of a Cookie header (prepare.Preparer._cookie_intake with
 * cookies.CookieExtractor) when every value it takes is plain: 0 with self->scratch set, DEFER
 * for an opt-out or a junk value (the Python path counts them), NEED_PY for anything else, -1. */
static int intake_fast(KernelObject *self, const char *s, Py_ssize_t n) {
    for (int k = 0; k < 3; k++) Py_CLEAR(self->scratch[k]);
    if (n == 0 || (n == 1 && s[0] == '-')) return 0; /* no cookies */
    Py_ssize_t count = PyTuple_GET_SIZE(self->cookie_names);
    const char *vals[64];
    Py_ssize_t lens[64];
    int found[64] = {0};
    /* The extractor's findall: a match starts the header or follows a `;`. */
    for (Py_ssize_t c = 0; c <= n; c++) {
        Py_ssize_t p;
        if (c == 0) {
            p = 0;
        } else if (s[c - 1] == ';') {
            p = c;
        } else {
            continue;
        }
        while (p < n && (s[p] == ' ' || s[p] == '\t')) p++;
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *name = PyTuple_GET_ITEM(self->cookie_names, i);
            Py_ssize_t len = PyBytes_GET_SIZE(name);
            if (p + len > n || memcmp(s + p, PyBytes_AS_STRING(name), (size_t)len) != 0) continue;
            Py_ssize_t q = p + len;
            while (q < n && (s[q] == ' ' || s[q] == '\t')) q++;
            if (q >= n || s[q] != '=') continue;
            Py_ssize_t a = q + 1, b = a;
            while (b < n && s[b] != ';') b++;
            if (!found[i]) {
                Py_ssize_t x = a, y = b;
                while (x < y && (s[x] == ' ' || s[x] == '\t')) x++;
                while (y > x && (s[y - 1] == ' ' || s[y - 1] == '\t')) y--;
                found[i] = 1;
                vals[i] = s + x;
                lens[i] = y - x;
            }
            break;
        }
    }
    for (Py_ssize_t i = 0; i < count; i++)
        if (found[i] && self->cookie_kind[i] == 3) return DEFER; /* opted out */
    for (int k = 0; k < 3; k++) {
        PyObject *idx = self->kind_names[k];
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(idx); j++) {
            Py_ssize_t i = PyLong_AsSsize_t(PyTuple_GET_ITEM(idx, j));
            if (!found[i]) continue;
            PyObject *value;
            int rc = plain_identifier(self, vals[i], lens[i], k == 1, &value);
            if (rc < 0) return -1;
            if (rc == 0) return NEED_PY;
            if (value == NULL) return DEFER; /* junk: counted by the Python path */
            self->scratch[k] = value;
            break;
        }
    }
    if (self->scratch[0] != NULL && self->scratch[1] != NULL &&
        PyUnicode_Compare(self->scratch[0], self->scratch[1]) == 0)
        Py_CLEAR(self->scratch[0]); /* a km_ai equal to km_ni is the named id */
    if (PyErr_Occurred()) return -1;
    return 0;
}

/* Whether s[0:n] is a plain dotted quad as identity/clientip.py's _IPV4 reads one (four decimal
 * octets 0-255, no leading zeros); *last_dot is the offset of its last dot. */
static int plain_ipv4(const char *s, int n, int *last_dot) {
    int octets = 0, i = 0;
    while (octets < 4) {
        int start = i, value = 0;
        while (i < n && i - start < 4 && s[i] >= '0' && s[i] <= '9') value = value * 10 + (s[i++] - '0');
        int len = i - start;
        if (len == 0 || len > 3 || (len > 1 && s[start] == '0') || value > 255) return 0;
        if (++octets == 4) break;
        if (i >= n || s[i] != '.') return 0;
        *last_dot = i++;
    }
    return i == n;
}

/* One line: 0 with *out the record, SKIP (nothing to send, nothing counted), DEFER, -1 error. */
static int one_line(KernelObject *self, const char *s, Py_ssize_t n, long long lo, long long off,
                    PyObject *const *where, PyObject **out) {
    Py_ssize_t body = n;
    if (body > 0 && s[body - 1] == '\r') body--;
    for (Py_ssize_t i = 0; i < body; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c > 0x7e || c == '\\') return DEFER;
    }
    if (body > INT32_MAX / 128) return DEFER;
    int r = vm_run(self->program, (const unsigned char *)s, (int)body, self->slots);
    if (r == -2) return -1;
    if (r != 1) return DEFER;

    /* The time: the previous line's reading when its text repeats. */
    int a, b;
    if (group_span(self, self->group[F_TIME], &a, &b)) return DEFER;
    double ts, prec;
    if (b - a == self->last_time_len && memcmp(self->last_time, s + a, (size_t)(b - a)) == 0) {
        ts = self->last_time_ts;
        prec = self->last_time_prec;
    } else {
        PyObject *key = PyBytes_FromStringAndSize(s + a, b - a);
        if (key == NULL) return -1;
        PyObject *t = cached(self, C_TIME, key, NULL);
        if (t == NULL) return -1;
        if (t == Py_None) return DEFER;
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2) {
            PyErr_SetString(PyExc_TypeError, "trackd kernel: time_of must give (ts, precision)");
            return -1;
        }
        ts = PyFloat_AsDouble(PyTuple_GET_ITEM(t, 0));
        prec = PyFloat_AsDouble(PyTuple_GET_ITEM(t, 1));
        if (PyErr_Occurred()) return -1;
        if (b - a < (int)sizeof self->last_time) {
            memcpy(self->last_time, s + a, (size_t)(b - a));
            self->last_time_len = b - a;
            self->last_time_ts = ts;
            self->last_time_prec = prec;
        }
    }
    if (ts < MIN_EVENT_TS) return DEFER; /* counted as too old by the Python path */

    /* The request and host (the first host neither empty nor `-`). */
    int ra, rb;
    if (group_span(self, self->group[F_REQUEST], &ra, &rb)) return DEFER;
    int ha = 0, hb = 0;
    for (int i = 0; i < self->nhosts; i++) {
        int x, y;
        if (group_span(self, self->hosts[i], &x, &y)) return DEFER;
        if (y > x && !(y - x == 1 && s[x] == '-')) {
            ha = x;
            hb = y;
            break;
        }
    }
    PyObject *key;
    int rc;
    if (self->rules) {
        /* Whether one of the source's rules may match (they read only request, host and
         * status: agent/pipeline/kernel.py checks): such a line is the Python path's. */
        int sa, sb;
        if (group_span(self, self->group[F_STATUS], &sa, &sb)) return DEFER;
        key = PyBytes_FromStringAndSize(NULL, (rb - ra) + 1 + (hb - ha) + 1 + (sb - sa));
        if (key == NULL) return -1;
        char *k = PyBytes_AS_STRING(key);
        memcpy(k, s + ra, (size_t)(rb - ra));
        k += rb - ra;
        *k++ = '\n';
        memcpy(k, s + ha, (size_t)(hb - ha));
        k += hb - ha;
        *k++ = '\n';
        memcpy(k, s + sa, (size_t)(sb - sa));
        PyObject *may = cached(self, C_RULES, key, NULL);
        if (may == NULL) return -1;
        if (may != Py_False) return DEFER;
    }

    /* SPEC §1.1 intake from the Cookie header: junk and opt-outs are the Python path's. Plain
     * values are taken here; any other header is looked up (the Python path on a miss). */
    PyObject *device, *named, *session;
    int ca, cb;
    if (group_span(self, self->group[F_COOKIE], &ca, &cb)) return DEFER;
    rc = self->cookie_fast ? intake_fast(self, s + ca, cb - ca) : NEED_PY;
    if (rc < 0 || rc == DEFER) return rc;
    if (rc == 0) {
        device = self->scratch[0] ? self->scratch[0] : Py_None;
        named = self->scratch[1] ? self->scratch[1] : Py_None;
        session = self->scratch[2] ? self->scratch[2] : Py_None;
    } else {
        key = PyBytes_FromStringAndSize(s + ca, cb - ca);
        if (key == NULL) return -1;
        PyObject *intake = cached(self, C_COOKIE, key, NULL);
        if (intake == NULL) return -1;
        if (!PyTuple_Check(intake) || PyTuple_GET_SIZE(intake) != 5) {
            PyErr_SetString(PyExc_TypeError, "trackd kernel: intake_of must give a 5-tuple");
            return -1;
        }
        device = PyTuple_GET_ITEM(intake, 0);
        named = PyTuple_GET_ITEM(intake, 1);
        session = PyTuple_GET_ITEM(intake, 2);
        int optout = PyObject_IsTrue(PyTuple_GET_ITEM(intake, 3));
        if (optout < 0) return -1;
        Py_ssize_t junk = PyObject_Length(PyTuple_GET_ITEM(intake, 4));
        if (junk < 0) return -1;
        if (optout || junk) return DEFER;
    }

    /* The request (and host): whether its method and path may be a page view, page head. */
    if (hb > ha) {
        key = PyBytes_FromStringAndSize(NULL, (rb - ra) + 1 + (hb - ha));
        if (key == NULL) return -1;
        char *k = PyBytes_AS_STRING(key);
        memcpy(k, s + ra, (size_t)(rb - ra));
        k[rb - ra] = '\n'; /* cannot occur in a line: keys cannot collide */
        memcpy(k + (rb - ra) + 1, s + ha, (size_t)(hb - ha));
    } else {
        key = PyBytes_FromStringAndSize(s + ra, rb - ra);
        if (key == NULL) return -1;
    }
    PyObject *req = cached(self, C_REQUEST, key, NULL);
    if (req == NULL) return -1;
    if (!PyTuple_Check(req) || PyTuple_GET_SIZE(req) != 2) {
        PyErr_SetString(PyExc_TypeError, "trackd kernel: request_of must give a 2-tuple");
        return -1;
    }
    PyObject *agent;
    rc = span_bytes(self, s, self->group[F_AGENT], &key);
    if (rc) return rc;
    agent = cached(self, C_AGENT, key, NULL);
    if (agent == NULL) return -1;
    if (!PyTuple_Check(agent) || PyTuple_GET_SIZE(agent) != 3) {
        PyErr_SetString(PyExc_TypeError, "trackd kernel: agent_of must give a 3-tuple");
        return -1;
    }
    int is_page = 0;
    if (self->pageviews) {
        rc = span_bytes(self, s, self->group[F_STATUS], &key);
        if (rc) return rc;
        PyObject *status_ok = cached(self, C_STATUS, key, NULL);
        if (status_ok == NULL) return -1;
        is_page = PyTuple_GET_ITEM(req, 0) == Py_True && status_ok == Py_True &&
                  PyTuple_GET_ITEM(agent, 1) == Py_False;
    }
    if (!is_page && !(device != Py_None && (named != Py_None || session != Py_None)))
        return SKIP; /* nothing to send and no login to learn from (prepare._access) */

    /* The client address (X-Forwarded-For through trusted proxies): context head part. */
    int ia, ib, xa, xb;
    if (group_span(self, self->group[F_IP], &ia, &ib)) return DEFER;
    if (group_span(self, self->group[F_XFF], &xa, &xb)) return DEFER;
    /* A plain IPv4 (or `-`) that is the client itself — no trusted proxies, or no
     * X-Forwarded-For to walk — needs no Python: ClientIp.client() returns it, its context part
     * is it, its /24 or nothing (privacy.ip), and its normalised form is itself. */
    int fast_ip = 0, last_dot = 0;
    const char *ip_text = s + ia;
    int ip_len = ib - ia;
    int no_forwarded = xb <= xa || (xb - xa == 1 && s[xa] == '-');
    if (self->ip_mode >= 0 && (!self->trusted || no_forwarded)) {
        if (self->dash_ip && ip_len == 1 && ip_text[0] == '-')
            fast_ip = 2; /* "" : no context part, normalised "" */
        else if (plain_ipv4(ip_text, ip_len, &last_dot))
            fast_ip = 1;
    }
    PyObject *ip = NULL;
    PyObject *ip_args = NULL;
    if (fast_ip) {
        /* nothing to look up */
    } else if (xb > xa) {
        key = PyBytes_FromStringAndSize(NULL, (ib - ia) + 1 + (xb - xa));
        if (key == NULL) return -1;
        char *k = PyBytes_AS_STRING(key);
        memcpy(k, s + ia, (size_t)(ib - ia));
        k[ib - ia] = '\n';
        memcpy(k + (ib - ia) + 1, s + xa, (size_t)(xb - xa));
        ip_args = Py_BuildValue("(y#y#)", s + ia, (Py_ssize_t)(ib - ia), s + xa,
                                (Py_ssize_t)(xb - xa));
    } else {
        key = PyBytes_FromStringAndSize(s + ia, ib - ia);
        if (key == NULL) return -1;
        ip_args = Py_BuildValue("(y#y)", s + ia, (Py_ssize_t)(ib - ia), "");
    }
    if (!fast_ip) {
        if (ip_args == NULL) {
            Py_DECREF(key);
            return -1;
        }
        ip = cached(self, C_IP, key, ip_args);
        if (ip == NULL) return -1;
        if (!PyTuple_Check(ip) || PyTuple_GET_SIZE(ip) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(ip, 0))) {
            PyErr_SetString(PyExc_TypeError, "trackd kernel: ip_of must give (bytes, str)");
            return -1;
        }
    }
    rc = span_bytes(self, s, self->group[F_REFERRER], &key);
    if (rc) return rc;
    PyObject *tail = cached(self, C_REFERRER, key, NULL);
    if (tail == NULL) return -1;
    if (!PyBytes_Check(tail) || !PyBytes_Check(PyTuple_GET_ITEM(req, 1)) ||
        !PyBytes_Check(PyTuple_GET_ITEM(agent, 0))) {
        PyErr_SetString(PyExc_TypeError, "trackd kernel: encoded parts must be bytes");
        return -1;
    }

    PyObject *derived = Py_None;
    int own_derived = 0;
    if (device == Py_None && named == Py_None && self->derived) {
        PyObject *pts = PyFloat_FromDouble(ts);
        if (pts == NULL) return -1;
        PyObject *norm = fast_ip == 1 ? PyUnicode_FromStringAndSize(ip_text, ip_len)
                         : fast_ip == 2 ? PyUnicode_FromStringAndSize("", 0)
                                        : Py_NewRef(PyTuple_GET_ITEM(ip, 1));
        if (norm == NULL) {
            Py_DECREF(pts);
            return -1;
        }
        derived = PyObject_CallFunctionObjArgs(self->derived_of, norm, PyTuple_GET_ITEM(agent, 2),
                                               pts, NULL);
        Py_DECREF(norm);
        Py_DECREF(pts);
        if (derived == NULL) return -1;
        own_derived = 1;
    }
    if (ts != self->last_ts || self->last_stamp == NULL) {
        PyObject *pts = PyFloat_FromDouble(ts);
        if (pts == NULL) goto error_derived;
        PyObject *stamp = PyObject_CallOneArg(self->stamp_of, pts);
        Py_DECREF(pts);
        if (stamp == NULL) goto error_derived;
        Py_XSETREF(self->last_stamp, stamp);
        self->last_ts = ts;
    }

    char lhash[32];
    line_hash((const unsigned char *)s, (size_t)body, lhash);
    PyObject *page_id = Py_None;
    if (is_page) {
        if (self->prefix.key != where[4]) idprefix_set(&self->prefix, where[4]);
        page_id = message_id(&self->prefix, lo, lhash, "page", 4);
        if (page_id == NULL) goto error_derived;
    }
    /* Up to 64 bytes before the line's end: its last 63 and the newline (the offset marker). */
    Py_ssize_t nb = n < 63 ? n : 63;
    PyObject *rec = self->record_type != NULL ? self->record_type->tp_alloc(self->record_type, 21)
                                              : PyTuple_New(21);
    if (rec == NULL) goto error_page;
    PyObject *before = PyBytes_FromStringAndSize(NULL, nb + 1);
    if (before != NULL) {
        memcpy(PyBytes_AS_STRING(before), s + n - nb, (size_t)nb);
        PyBytes_AS_STRING(before)[nb] = '\n';
    }
    /* Every slot is set (a NULL one is an error reported below); the tuple owns them all. */
    PyTuple_SET_ITEM(rec, 0, PyFloat_FromDouble(ts + prec));
    PyTuple_SET_ITEM(rec, 1, Py_NewRef(where[0]));
    PyTuple_SET_ITEM(rec, 2, PyLong_FromLongLong(lo));
    PyTuple_SET_ITEM(rec, 3, Py_NewRef(where[1]));
    PyTuple_SET_ITEM(rec, 4, PyLong_FromLongLong(off));
    PyTuple_SET_ITEM(rec, 5, before);
    PyTuple_SET_ITEM(rec, 6, PyFloat_FromDouble(ts));
    PyTuple_SET_ITEM(rec, 7, Py_NewRef(Py_False));
    PyTuple_SET_ITEM(rec, 8, PyBytes_FromStringAndSize(lhash, 32));
    PyTuple_SET_ITEM(rec, 9, Py_NewRef(self->last_stamp));
    PyTuple_SET_ITEM(rec, 10, Py_NewRef(where[2]));
    PyTuple_SET_ITEM(rec, 11, Py_NewRef(where[3]));
    PyTuple_SET_ITEM(rec, 12, Py_NewRef(device));
    PyTuple_SET_ITEM(rec, 13, Py_NewRef(named));
    PyTuple_SET_ITEM(rec, 14, Py_NewRef(session));
    PyTuple_SET_ITEM(rec, 15, Py_NewRef(is_page ? Py_True : Py_False));
    PyTuple_SET_ITEM(rec, 16, concat(PyTuple_GET_ITEM(req, 1), tail));
    PyTuple_SET_ITEM(rec, 17, fast_ip ? ip_context(self->ip_mode, fast_ip, ip_text, ip_len, last_dot,
                                                   PyTuple_GET_ITEM(agent, 0))
                                      : concat(PyTuple_GET_ITEM(ip, 0), PyTuple_GET_ITEM(agent, 0)));
    PyTuple_SET_ITEM(rec, 18, own_derived ? derived : Py_NewRef(Py_None));
    PyTuple_SET_ITEM(rec, 19, page_id); /* the reference message_id gave, or None's */
    if (page_id == Py_None) Py_INCREF(Py_None);
    PyTuple_SET_ITEM(rec, 20, Py_NewRef(self->empty_rules));
    for (int i = 0; i < 21; i++) {
        if (PyTuple_GET_ITEM(rec, i) == NULL) {
            Py_DECREF(rec); /* tuple dealloc skips NULL slots */
            return -1;
        }
    }
    *out = rec;
    return 0;

error_page:
    if (page_id != Py_None) Py_DECREF(page_id);
error_derived:
    if (own_derived) Py_DECREF(derived);
    return -1;
}

/* Kernel.run(block, start, end, max_line, where) -> list: per line of `block` (complete lines
 * joined by "\n", without the last one's; the first starts at byte `start`, `end` is just past
 * the last), in order, its record, or (line, line start, line end) for a line the Python path
 * must do; lines that produce nothing are left out. `where`: (source, file id, path, fp,
 * messageId prefix bytes). */
static int kernel_ready(KernelObject *self) {
    if (self->program == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "trackd kernel: Kernel used before __init__");
        return 0;
    }
    return 1;
}

static PyObject *Kernel_run(KernelObject *self, PyObject *args) {
    PyObject *block, *where;
    long long start, end;
    Py_ssize_t max_line;
    if (!kernel_ready(self)) return NULL;
    if (!PyArg_ParseTuple(args, "SLLnO!", &block, &start, &end, &max_line, &PyTuple_Type, &where))
        return NULL;
    if (PyTuple_GET_SIZE(where) != 5 || !PyBytes_Check(PyTuple_GET_ITEM(where, 4))) {
        PyErr_SetString(PyExc_TypeError, "where: (source, file id, path, fp, prefix bytes)");
        return NULL;
    }
    PyObject *const *w = &PyTuple_GET_ITEM(where, 0);
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    const char *data = PyBytes_AS_STRING(block);
    const char *stop = data + PyBytes_GET_SIZE(block);
    long long off = start;
    for (const char *p = data;; ) {
        const char *nl = memchr(p, '\n', (size_t)(stop - p));
        Py_ssize_t n = (nl != NULL ? nl : stop) - p;
        long long lo = off;
        off = lo + n + 1;
        if (off > end) off = end;
        PyObject *rec = NULL;
        int rc = n > max_line ? DEFER : one_line(self, p, n, lo, off, w, &rec);
        if (rc < 0) goto error;
        if (rc == DEFER) {
            rec = Py_BuildValue("(y#LL)", p, n, lo, off);
            if (rec == NULL) goto error;
        }
        if (rc != SKIP) {
            int appended = PyList_Append(out, rec);
            Py_DECREF(rec);
            if (appended < 0) goto error;
        }
        if (nl == NULL) break;
        p = nl + 1;
    }
    return out;
error:
    Py_DECREF(out);
    return NULL;
}

static PyObject *Kernel_clear(KernelObject *self, PyObject *Py_UNUSED(ignored)) {
    if (!kernel_ready(self)) return NULL;
    for (int i = 0; i < C_NCACHES; i++) PyDict_Clear(self->caches[i]);
    self->last_time_len = -1;
    self->last_ts = -1.0;
    Py_CLEAR(self->last_stamp);
    Py_RETURN_NONE;
}

static PyMethodDef Kernel_methods[] = {
    {"run", (PyCFunction)Kernel_run, METH_VARARGS,
     "run(block, start, end, max_line, where) -> records and deferred (line, start, end)"},
    {"clear", (PyCFunction)Kernel_clear, METH_NOARGS, "Forget every cached part."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject KernelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "agent._kernel.Kernel",
    .tp_basicsize = sizeof(KernelObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One source's block kernel (see agent/pipeline/kernel.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Kernel_init,
    .tp_dealloc = (destructor)Kernel_dealloc,
    .tp_methods = Kernel_methods,
};

/* ---------------------------------------------------------------------------------------- */

static PyObject *py_line_hash(PyObject *Py_UNUSED(mod), PyObject *arg) {
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0) return NULL;
    char out[32];
    line_hash(buf.buf, (size_t)buf.len, out);
    PyBuffer_Release(&buf);
    return PyBytes_FromStringAndSize(out, 32);
}

static PyObject *py_message_id(PyObject *Py_UNUSED(mod), PyObject *args) {
    PyObject *prefix;
    long long offset;
    const char *lhash, *slot;
    Py_ssize_t lhash_len, slot_len;
    if (!PyArg_ParseTuple(args, "SLy#y#", &prefix, &offset, &lhash, &lhash_len, &slot, &slot_len))
        return NULL;
    if (lhash_len != 32) {
        PyErr_SetString(PyExc_ValueError, "lhash must be 32 hex characters");
        return NULL;
    }
    idprefix p = {0};
    idprefix_set(&p, prefix);
    PyObject *out = message_id(&p, offset, lhash, slot, (size_t)slot_len);
    Py_DECREF(p.key);
    return out;
}

static PyObject *py_use_sha_ni(PyObject *Py_UNUSED(mod), PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    use_sha_ni(on);
    return PyBool_FromLong(sha_ni);
}

static PyMethodDef module_methods[] = {
    {"use_sha_ni", py_use_sha_ni, METH_O,
     "use_sha_ni(on) -> whether the SHA extensions are used now (tests run both paths)."},
    {"line_hash", py_line_hash, METH_O, "hex(sha256(data)[:16]) as bytes (msgid.line_hash)."},
    {"message_id", py_message_id, METH_VARARGS,
     "message_id(prefix, offset, lhash, slot): the UUIDv5 text of MessageIdPrefix."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef kernel_module = {
    PyModuleDef_HEAD_INIT, "agent._kernel",
    "trackd's optional native block kernel (see agent/pipeline/kernel.py).", -1, module_methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernel(void) {
    if (PyType_Ready(&ProgramType) < 0 || PyType_Ready(&KernelType) < 0) return NULL;
    use_sha_ni(1);
    PyObject *m = PyModule_Create(&kernel_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Program", (PyObject *)&ProgramType) < 0 ||
        PyModule_AddObjectRef(m, "Kernel", (PyObject *)&KernelType) < 0 ||
        PyModule_AddIntConstant(m, "VERSION", 1) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
