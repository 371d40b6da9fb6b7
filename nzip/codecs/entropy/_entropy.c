/*
 * nzip's compiled hot loops: byte-plane transforms, histograms, interleaved rANS and
 * block-parallel canonical Huffman (the DFloat11 layout). Everything here works on
 * caller-provided buffers and releases the GIL, so Python threads run it in parallel.
 *
 * Table construction, parameter checks and formats stay in Python; this file only moves
 * bits. Every decoder is bounds-checked: corrupt input gives an error code, never a read
 * outside the buffers it was handed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

/* ------------------------------------------------------------------------- helpers */

static int get_buffers(Py_buffer *bufs, int n) {
    for (int i = 0; i < n; i++) {
        if (!PyBuffer_IsContiguous(&bufs[i], 'C')) {
            PyErr_SetString(PyExc_ValueError, "nzip._entropy: buffers must be contiguous");
            return -1;
        }
    }
    return 0;
}

static void release(Py_buffer *bufs, int n) {
    for (int i = 0; i < n; i++) PyBuffer_Release(&bufs[i]);
}

static inline uint64_t load_be64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return __builtin_bswap64(v);
}

/* ------------------------------------------------------------------ byte planes
 * Multi-byte elements are split into planes, most significant byte first. For floats the
 * element is first rotated left by one bit, so that the sign bit lands at the bottom and
 * the top plane holds the exponent (exactly, for bf16 and fp32): the plane that
 * compresses.
 */

#define ROTL(bits, v, r) ((r) ? (((v) << 1) | ((v) >> ((bits) - 1))) : (v))
#define ROTR(bits, v, r) ((r) ? (((v) >> 1) | ((v) << ((bits) - 1))) : (v))

/* 16-bit split, specialised so the compiler vectorises it */
static void split16(const uint16_t *restrict src, uint8_t *restrict hi, uint8_t *restrict lo, Py_ssize_t n, int rotate) {
    if (rotate) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint16_t v = (uint16_t)((src[i] << 1) | (src[i] >> 15));
            hi[i] = (uint8_t)(v >> 8); lo[i] = (uint8_t)v;
        }
    } else {
        for (Py_ssize_t i = 0; i < n; i++) { hi[i] = (uint8_t)(src[i] >> 8); lo[i] = (uint8_t)src[i]; }
    }
}

static PyObject *planes_split(PyObject *self, PyObject *args) {
    Py_buffer b[2];
    int itemsize, rotate;
    if (!PyArg_ParseTuple(args, "y*w*ip", &b[0], &b[1], &itemsize, &rotate)) return NULL;
    if (get_buffers(b, 2) < 0 || b[0].len != b[1].len || b[0].len % itemsize) {
        release(b, 2);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "planes_split: bad sizes");
        return NULL;
    }
    Py_ssize_t n = b[0].len / itemsize;
    const uint8_t *src = b[0].buf;
    uint8_t *dst = b[1].buf;
    Py_BEGIN_ALLOW_THREADS
    if (itemsize == 2 && ((uintptr_t)src & 1) == 0) {
        split16((const uint16_t *)src, dst, dst + n, n, rotate);
    } else if (itemsize == 2) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint16_t v; memcpy(&v, src + 2 * i, 2);
            v = (uint16_t)ROTL(16, v, rotate);
            dst[i] = (uint8_t)(v >> 8); dst[n + i] = (uint8_t)v;
        }
    } else if (itemsize == 4) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t v; memcpy(&v, src + 4 * i, 4);
            v = ROTL(32, v, rotate);
            dst[i] = v >> 24; dst[n + i] = v >> 16; dst[2 * n + i] = v >> 8; dst[3 * n + i] = v;
        }
    } else if (itemsize == 8) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint64_t v; memcpy(&v, src + 8 * i, 8);
            v = ROTL(64, v, rotate);
            for (int k = 0; k < 8; k++) dst[k * n + i] = (uint8_t)(v >> (56 - 8 * k));
        }
    } else {
        for (Py_ssize_t i = 0; i < n; i++) dst[i] = src[i];
    }
    Py_END_ALLOW_THREADS
    release(b, 2);
    Py_RETURN_NONE;
}

/* 32-bit join, 16 elements a step: byte unpacking puts the four planes' bytes of an
 * element side by side (the compiler does not vectorise the scalar loop's byte gathers).
 * Returns the elements done; the scalar loop finishes. */
#ifdef __SSE2__
#include <emmintrin.h>
static Py_ssize_t join32_sse2(const uint8_t *src, Py_ssize_t stride, uint8_t *dst, Py_ssize_t n, int rotate) {
    Py_ssize_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i p0 = _mm_loadu_si128((const __m128i *)(src + i)), p1 = _mm_loadu_si128((const __m128i *)(src + stride + i));
        __m128i p2 = _mm_loadu_si128((const __m128i *)(src + 2 * stride + i));
        __m128i p3 = _mm_loadu_si128((const __m128i *)(src + 3 * stride + i));
        __m128i lo_a = _mm_unpacklo_epi8(p3, p2), lo_b = _mm_unpackhi_epi8(p3, p2); /* bytes 0, 1 */
        __m128i hi_a = _mm_unpacklo_epi8(p1, p0), hi_b = _mm_unpackhi_epi8(p1, p0); /* bytes 2, 3 */
        __m128i v[4] = {_mm_unpacklo_epi16(lo_a, hi_a), _mm_unpackhi_epi16(lo_a, hi_a),
                        _mm_unpacklo_epi16(lo_b, hi_b), _mm_unpackhi_epi16(lo_b, hi_b)};
        for (int k = 0; k < 4; k++) {
            if (rotate) v[k] = _mm_or_si128(_mm_srli_epi32(v[k], 1), _mm_slli_epi32(v[k], 31));
            _mm_storeu_si128((__m128i *)(dst + 4 * (i + 4 * k)), v[k]);
        }
    }
    return i;
}
#else
static Py_ssize_t join32_sse2(const uint8_t *src, Py_ssize_t stride, uint8_t *dst, Py_ssize_t n, int rotate) { return 0; }
#endif

/* planes_join(planes, dst, itemsize, rotate[, stride]): dst's elements from planes that
 * lie `stride` bytes apart (default: back to back, len(dst) / itemsize each), so that
 * threads join ranges of elements on their own, from planes[start:]. */
static PyObject *planes_join(PyObject *self, PyObject *args) {
    Py_buffer b[2];
    int itemsize, rotate;
    Py_ssize_t stride = -1;
    if (!PyArg_ParseTuple(args, "y*w*ip|n", &b[0], &b[1], &itemsize, &rotate, &stride)) return NULL;
    Py_ssize_t n = itemsize > 0 ? b[1].len / itemsize : 0;
    if (stride < 0) stride = n;
    if (get_buffers(b, 2) < 0 || itemsize < 1 || b[1].len % itemsize || stride < n ||
        (n > 0 && (stride > PY_SSIZE_T_MAX / itemsize || b[0].len < (itemsize - 1) * stride + n))) {
        release(b, 2);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "planes_join: bad sizes");
        return NULL;
    }
    const uint8_t *src = b[0].buf;
    uint8_t *dst = b[1].buf;
    Py_BEGIN_ALLOW_THREADS
    if (itemsize == 2) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint16_t v = (uint16_t)((src[i] << 8) | src[stride + i]);
            v = (uint16_t)ROTR(16, v, rotate);
            memcpy(dst + 2 * i, &v, 2);
        }
    } else if (itemsize == 4) {
        Py_ssize_t i = join32_sse2(src, stride, dst, n, rotate);
        for (; i < n; i++) {
            uint32_t v = ((uint32_t)src[i] << 24) | ((uint32_t)src[stride + i] << 16) |
                         ((uint32_t)src[2 * stride + i] << 8) | src[3 * stride + i];
            v = ROTR(32, v, rotate);
            memcpy(dst + 4 * i, &v, 4);
        }
    } else if (itemsize == 8) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint64_t v = 0;
            for (int k = 0; k < 8; k++) v = (v << 8) | src[k * stride + i];
            v = ROTR(64, v, rotate);
            memcpy(dst + 8 * i, &v, 8);
        }
    } else {
        for (Py_ssize_t i = 0; i < n; i++) dst[i] = src[i];
    }
    Py_END_ALLOW_THREADS
    release(b, 2);
    Py_RETURN_NONE;
}

/* histogram(src, counts_u64[256]): adds byte counts of src into counts. Four sub-tables
 * break the store-to-load dependency on runs of equal bytes. */
static PyObject *histogram(PyObject *self, PyObject *args) {
    Py_buffer b[2];
    if (!PyArg_ParseTuple(args, "y*w*", &b[0], &b[1])) return NULL;
    if (get_buffers(b, 2) < 0 || b[1].len != 256 * 8) {
        release(b, 2);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "histogram: counts must be 256 uint64");
        return NULL;
    }
    const uint8_t *src = b[0].buf;
    uint64_t *counts = b[1].buf;
    Py_ssize_t n = b[0].len;
    Py_BEGIN_ALLOW_THREADS
    uint32_t h[4][256];
    memset(h, 0, sizeof h);
    Py_ssize_t i = 0;
    while (i < n) {
        /* flush the 32-bit sub-counters before they could overflow */
        Py_ssize_t stop = n - i > ((Py_ssize_t)1 << 30) ? i + ((Py_ssize_t)1 << 30) : n;
        for (; i + 4 <= stop; i += 4) {
            h[0][src[i]]++; h[1][src[i + 1]]++; h[2][src[i + 2]]++; h[3][src[i + 3]]++;
        }
        for (; i < stop; i++) h[0][src[i]]++;
        for (int s = 0; s < 256; s++) {
            counts[s] += (uint64_t)h[0][s] + h[1][s] + h[2][s] + h[3][s];
            h[0][s] = h[1][s] = h[2][s] = h[3][s] = 0;
        }
    }
    Py_END_ALLOW_THREADS
    release(b, 2);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------- rANS
 * 32-bit states kept in [L, 2^31) with L = 2^15, 16-bit little-endian words, probability
 * precision P <= 12 bits, `lanes` interleaved states sharing one word stream: symbol i
 * belongs to lane i % lanes. Stream = lanes final states (u32 LE) then the words in the
 * order the decoder reads them.
 *
 * Context mode: symbol i is coded with table ctxmap[top[i]] of K+1 tables (top is
 * another, already known plane: the exponent, when coding the mantissa byte). Without
 * it, there is one table.
 *
 * The encoder divides through exact reciprocals (the state stays below 2^31, where they
 * are exact). The decoder's table packs symbol | (freq - 1) << 8 | (slot - start) << 20
 * into one u32 (P <= 12 makes it fit), so one load per symbol. Loops are specialised for
 * common lane counts so that states live in registers; AVX-512 versions run 16 lanes per
 * vector and produce and read the very same streams.
 */

#define RANS_L (1u << 15)
#define MAX_LANES 128
#define MAX_P 12
#define MAX_TABLES 64

typedef struct {
    uint32_t x_max, rcp_freq, bias;
    uint16_t cmpl_freq, rcp_shift;
} enc_sym;

/* Which table a symbol uses: offset[top[i]] (in table entries), or 0 without contexts. */
typedef struct {
    const uint8_t *top;
    uint32_t offset[256];
    uint8_t id[256]; /* table index of each top value (offset = id * table size) */
} ctx_t;

static void enc_sym_init(enc_sym *s, uint32_t start, uint32_t freq, int P) {
    s->x_max = ((RANS_L >> P) << 16) * freq;
    s->cmpl_freq = (uint16_t)((1u << P) - freq);
    if (freq < 2) {
        s->rcp_freq = ~0u;
        s->rcp_shift = 0;
        s->bias = start + (1u << P) - 1;
    } else {
        uint32_t shift = 0;
        while (freq > (1u << shift)) shift++;
        s->rcp_freq = (uint32_t)(((1ull << (shift + 31)) + freq - 1) / freq);
        s->rcp_shift = (uint16_t)(shift - 1);
        s->bias = start;
    }
}

static int check_freqs(const uint32_t *freq, int ntables, int P) {
    for (int t = 0; t < ntables; t++) {
        uint64_t total = 0;
        for (int s = 0; s < 256; s++) total += freq[256 * t + s];
        if (total != (1u << P)) return 0;
    }
    return 1;
}

static inline __attribute__((always_inline)) uint32_t enc_put(uint32_t v, const enc_sym *s, uint16_t **w) {
    /* branch-free renormalisation: the word is always stored, the pointer moves only if needed */
    uint32_t r = v >= s->x_max;
    (*w)[-1] = (uint16_t)v;
    *w -= r;
    v >>= r << 4;
    uint32_t q = (uint32_t)(((uint64_t)v * s->rcp_freq) >> 32) >> s->rcp_shift;
    return v + s->bias + q * s->cmpl_freq;
}

#define CTX_OFF(c, i) ((c)->top ? (c)->offset[(c)->top[i]] : 0)

/* Encoding runs backwards: first the last, partial group of lanes, then whole groups
 * down to symbol 0 (the SIMD path takes over the whole groups when it can). */
static uint16_t *enc_tail(const uint8_t *sym, Py_ssize_t n, const enc_sym *tab, const ctx_t *c,
                          uint16_t *w, uint32_t *x, int lanes) {
    for (Py_ssize_t i = n - 1; i >= n - n % lanes; i--)
        x[i % lanes] = enc_put(x[i % lanes], &tab[CTX_OFF(c, i) + sym[i]], &w);
    return w;
}

static inline __attribute__((always_inline)) uint16_t *enc_groups(const uint8_t *sym, Py_ssize_t groups_end,
                                                                 const enc_sym *tab, const ctx_t *c,
                                                                 uint16_t *w, uint32_t *x, const int lanes) {
    uint32_t st[MAX_LANES];
    for (int j = 0; j < lanes; j++) st[j] = x[j];
    for (Py_ssize_t i = groups_end; i > 0;) {
        i -= lanes;
        for (int j = lanes - 1; j >= 0; j--) st[j] = enc_put(st[j], &tab[CTX_OFF(c, i + j) + sym[i + j]], &w);
    }
    for (int j = 0; j < lanes; j++) x[j] = st[j];
    return w;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SIMD_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,popcnt")))

static inline __attribute__((always_inline)) SIMD_TARGET __m512i load16_u8(const uint8_t *p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
}

/* The context table of 16 symbols: a 256-entry byte lookup done by two 128-entry byte
 * permutes (VBMI) instead of a gather, shifted left by `shift` (log2 of a table's size). */
typedef struct { __m512i t0, t1, t2, t3; } ctx_lut;

static inline __attribute__((always_inline)) SIMD_TARGET ctx_lut ctx_lut_load(const uint8_t *id) {
    ctx_lut l = {_mm512_loadu_si512(id), _mm512_loadu_si512(id + 64), _mm512_loadu_si512(id + 128),
                 _mm512_loadu_si512(id + 192)};
    return l;
}

static inline __attribute__((always_inline)) SIMD_TARGET __m512i ctx_offsets(const ctx_lut *l, const uint8_t *top, __m128i shift) {
    __m512i idx = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)top));
    __m512i lo = _mm512_permutex2var_epi8(l->t0, idx, l->t1), hi = _mm512_permutex2var_epi8(l->t2, idx, l->t3);
    __m512i ids = _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi);
    return _mm512_sll_epi32(_mm512_cvtepu8_epi32(_mm512_castsi512_si128(ids)), shift);
}

/* the same for 16 values 0..255 held in 32-bit lanes: the byte permutes look up each
 * lane's low byte (its upper bytes, zero, look up entry 0 and are masked off) */
static inline __attribute__((always_inline)) SIMD_TARGET __m512i ctx_offsets_dw(const ctx_lut *l, __m512i top, __m128i shift) {
    __m512i lo = _mm512_permutex2var_epi8(l->t0, top, l->t1), hi = _mm512_permutex2var_epi8(l->t2, top, l->t3);
    __m512i ids = _mm512_mask_blend_epi32(_mm512_test_epi32_mask(top, _mm512_set1_epi32(0x80)), lo, hi);
    return _mm512_sll_epi32(_mm512_and_si512(ids, _mm512_set1_epi32(0xff)), shift);
}

/* AVX-512 encoder for 16 * nv lanes, the same arithmetic as enc_put: the quotient by the
 * frequency is mulhi(x, rcp_freq) >> rcp_shift. Two gathers per 16 symbols: a packed
 * freq | rcp_shift << 13 | bias << 17, and rcp_freq. Words of the lanes that renormalise
 * are compressed and stored below the stream in lane order, exactly where the scalar
 * encoder puts them. */
SIMD_TARGET static uint16_t *enc_groups_avx512(const uint8_t *sym, Py_ssize_t groups_end,
                                                const enc_sym *tab, int ntables, const ctx_t *c,
                                                int P, uint16_t *w, uint32_t *x, int nv) {
    uint32_t *packed = malloc(sizeof(uint32_t) * 512 * ntables);
    if (!packed) return NULL;
    uint32_t *rcp = packed + 256 * ntables;
    for (int i = 0; i < 256 * ntables; i++) {
        uint32_t freq = (1u << P) - tab[i].cmpl_freq;
        packed[i] = freq | ((uint32_t)tab[i].rcp_shift << 13) | (tab[i].bias << 17);
        rcp[i] = tab[i].rcp_freq;
    }
    __m512i X[8];
    for (int v = 0; v < nv; v++) X[v] = _mm512_loadu_si512(x + 16 * v);
    const __m512i m13 = _mm512_set1_epi32(0x1fff), m4 = _mm512_set1_epi32(0xf), M = _mm512_set1_epi32(1 << P);
    const __m128i sx = _mm_cvtsi32_si128(31 - P), s8 = _mm_cvtsi32_si128(8);
    const int lanes = 16 * nv;
    const ctx_lut lut = ctx_lut_load(c->id);
    for (Py_ssize_t i = groups_end; i > 0;) {
        i -= lanes;
        for (int v = nv - 1; v >= 0; v--) {
            Py_ssize_t o = i + 16 * v;
            __m512i s = load16_u8(sym + o);
            if (c->top) s = _mm512_add_epi32(s, ctx_offsets(&lut, c->top + o, s8));
            __m512i f = _mm512_i32gather_epi32(s, packed, 4);
            __m512i r = _mm512_i32gather_epi32(s, rcp, 4);
            __m512i fr = _mm512_and_si512(f, m13);
            __mmask16 k = _mm512_cmpge_epu32_mask(X[v], _mm512_sll_epi32(fr, sx));
            int cnt = __builtin_popcount(k);
            w -= cnt;
            _mm256_mask_storeu_epi16(w, (__mmask16)((1u << cnt) - 1),
                                     _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(k, X[v])));
            __m512i y = _mm512_mask_srli_epi32(X[v], k, X[v], 16);
            __m512i even = _mm512_srli_epi64(_mm512_mul_epu32(y, r), 32);
            __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(y, 32), _mm512_srli_epi64(r, 32));
            __m512i q = _mm512_srlv_epi32(_mm512_mask_blend_epi32(0xAAAA, even, odd),
                                          _mm512_and_si512(_mm512_srli_epi32(f, 13), m4));
            X[v] = _mm512_add_epi32(_mm512_add_epi32(y, _mm512_srli_epi32(f, 17)),
                                    _mm512_mullo_epi32(q, _mm512_sub_epi32(M, fr)));
        }
    }
    for (int v = 0; v < nv; v++) _mm512_storeu_si512(x + 16 * v, X[v]);
    free(packed);
    return w;
}

static int simd_enabled = -1; /* -1: not probed yet */

static int use_simd(void) {
    if (simd_enabled < 0) {
        const char *off = getenv("NZIP_NO_SIMD");
        __builtin_cpu_init();
        simd_enabled = !(off && *off && *off != '0') && __builtin_cpu_supports("avx512f") &&
                       __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                       __builtin_cpu_supports("avx512vbmi");
    }
    return simd_enabled;
}
#define HAVE_SIMD 1
#else
static int use_simd(void) { return 0; }
#define HAVE_SIMD 0
#endif

#define SIMD_LANES(l) ((l) % 16 == 0 && (l) <= 128)

/* Parse the optional context arguments: top (n bytes) and ctxmap (256 table indices). */
static int get_ctx(ctx_t *c, Py_buffer *top, Py_buffer *map, Py_ssize_t n, int ntables, uint32_t unit) {
    c->top = NULL;
    memset(c->id, 0, sizeof c->id);
    if (!top->buf) return ntables == 1;
    if (top->len != n || map->len != 256) return 0;
    const uint8_t *m = map->buf;
    for (int v = 0; v < 256; v++) {
        if (m[v] >= ntables) return 0;
        c->offset[v] = m[v] * unit;
        c->id[v] = m[v];
    }
    c->top = top->buf;
    return 1;
}

/* rans_encode(symbols u8, freq u32[ntables*256], P, lanes, dst[, top, ctxmap]) -> start
 * offset of the stream in dst; the stream fills dst[start:]. dst needs 2n + 4*lanes + 4
 * bytes. */
/* Encoder tables for ntables x 256 symbols (absent symbols get a dummy entry). */
static enc_sym *build_enc_table(const uint32_t *freq, int ntables, int P) {
    enc_sym *tab = malloc(sizeof(enc_sym) * 256 * ntables);
    for (int t = 0; tab && t < ntables; t++) {
        uint32_t start = 0;
        for (int s = 0; s < 256; s++) {
            uint32_t f = freq[256 * t + s];
            enc_sym_init(&tab[256 * t + s], start, f ? f : 1, P);
            start += f;
        }
    }
    return tab;
}

/* Encode n symbols backwards into the end of dst (dstlen >= 2n + 4 lanes + 4); returns
 * the offset where the stream starts. Every symbol must have a non-zero frequency in its
 * table (callers check). Runs without the GIL. */
static Py_ssize_t encode_stream(const uint8_t *sym, Py_ssize_t n, const enc_sym *tab, int ntables, const ctx_t *c,
                                int P, int lanes, uint8_t *dst, Py_ssize_t dstlen) {
    uint32_t x[MAX_LANES];
    for (int j = 0; j < lanes; j++) x[j] = RANS_L;
    uint16_t *w = (uint16_t *)(dst + (dstlen & ~(Py_ssize_t)1));
    w = enc_tail(sym, n, tab, c, w, x, lanes);
    Py_ssize_t groups_end = n - n % lanes;
    uint16_t *ws = NULL;
#if HAVE_SIMD
    if (SIMD_LANES(lanes) && use_simd()) ws = enc_groups_avx512(sym, groups_end, tab, ntables, c, P, w, x, lanes / 16);
#endif
    if (ws) w = ws;
    else switch (lanes) {
    case 8: w = enc_groups(sym, groups_end, tab, c, w, x, 8); break;
    case 16: w = enc_groups(sym, groups_end, tab, c, w, x, 16); break;
    case 32: w = enc_groups(sym, groups_end, tab, c, w, x, 32); break;
    default: w = enc_groups(sym, groups_end, tab, c, w, x, lanes); break;
    }
    uint8_t *ptr = (uint8_t *)w - 4 * lanes;
    for (int j = 0; j < lanes; j++) memcpy(ptr + 4 * j, &x[j], 4);
    return ptr - dst;
}

/* rans_encode(symbols u8, freq u32[ntables*256], P, lanes, dst[, top, ctxmap]) -> start
 * offset of the stream in dst; the stream fills dst[start:]. dst needs 2n + 4*lanes + 4
 * bytes. */
static PyObject *rans_encode(PyObject *self, PyObject *args) {
    Py_buffer b[5] = {{0}};
    int P, lanes;
    if (!PyArg_ParseTuple(args, "y*y*iiw*|y*y*", &b[0], &b[1], &P, &lanes, &b[2], &b[3], &b[4])) return NULL;
    Py_ssize_t n = b[0].len;
    int ntables = (int)(b[1].len / 1024);
    ctx_t c;
    if (get_buffers(b, b[3].buf ? 5 : 3) < 0 || b[1].len % 1024 || ntables < 1 || ntables > MAX_TABLES ||
        P < 1 || P > MAX_P || lanes < 1 || lanes > MAX_LANES || b[2].len < 2 * n + 4 * lanes + 4 ||
        !check_freqs(b[1].buf, ntables, P) || !get_ctx(&c, &b[3], &b[4], n, ntables, 256)) {
        release(b, b[3].buf ? 5 : 3);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "rans_encode: bad arguments");
        return NULL;
    }
    const uint8_t *sym = b[0].buf;
    const uint32_t *freq = b[1].buf;
    int bad = 0;
    Py_ssize_t start = 0;
    Py_BEGIN_ALLOW_THREADS
    enc_sym *tab = build_enc_table(freq, ntables, P);
    bad = tab == NULL;
    for (Py_ssize_t i = 0; i < n && !bad; i++) bad = freq[CTX_OFF(&c, i) + sym[i]] == 0;
    if (!bad) start = encode_stream(sym, n, tab, ntables, &c, P, lanes, b[2].buf, b[2].len);
    free(tab);
    Py_END_ALLOW_THREADS
    release(b, b[3].buf ? 5 : 3);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "rans_encode: symbol with zero frequency (or out of memory)");
        return NULL;
    }
    return PyLong_FromSsize_t(start);
}

/* Where decoded symbols go: plain bytes (out8), or 16-bit elements joined with another
 * plane `other`: the symbol is the high byte (sym_high) or the low byte, and the element is
 * rotated right by one bit for floats (the inverse of planes_split). */
typedef struct {
    uint8_t *out8;
    const uint8_t *other;
    uint16_t *out16;
    int sym_high, rotate;
} dec_sink;

static inline __attribute__((always_inline)) void sink_put(const dec_sink *k, Py_ssize_t i, uint32_t s, const int fused) {
    if (fused) {
        uint16_t v = k->sym_high ? (uint16_t)((s << 8) | k->other[i]) : (uint16_t)((k->other[i] << 8) | s);
        v = k->rotate ? (uint16_t)((v >> 1) | (v << 15)) : v;
        memcpy(k->out16 + i, &v, 2);
    } else {
        k->out8[i] = (uint8_t)s;
    }
}

/* returns the word pointer after decoding, or NULL if the stream ran out */
static inline __attribute__((always_inline)) const uint16_t *dec_loop(
        const uint32_t *tab, const ctx_t *c, int P, uint32_t *x, const uint16_t *w, const uint16_t *wend,
        Py_ssize_t i, Py_ssize_t n, const dec_sink *k, const int lanes, const int fused) {
    const uint32_t mask = (1u << P) - 1;
    uint32_t st[MAX_LANES];
    for (int j = 0; j < lanes; j++) st[j] = x[j];
    /* fast loop: branch-free renormalisation while a full group's words are surely there */
    while (i + lanes <= n && wend - w >= lanes) {
        for (int j = 0; j < lanes; j++) {
            uint32_t v = st[j], e = tab[CTX_OFF(c, i + j) + (v & mask)];
            sink_put(k, i + j, e & 0xff, fused);
            v = (((e >> 8) & 0xfff) + 1) * (v >> P) + (e >> 20);
            uint32_t r = v < RANS_L, m = 0u - r; /* arithmetic select: a branch here mispredicts */
            st[j] = (((v << 16) | *w) & m) | (v & ~m);
            w += r;
        }
        i += lanes;
    }
    for (; i < n; i++) {
        int j = (int)(i % lanes);
        uint32_t v = st[j], e = tab[CTX_OFF(c, i) + (v & mask)];
        sink_put(k, i, e & 0xff, fused);
        v = (((e >> 8) & 0xfff) + 1) * (v >> P) + (e >> 20);
        if (v < RANS_L) {
            if (w >= wend) return NULL;
            v = (v << 16) | *w++;
        }
        st[j] = v;
    }
    for (int j = 0; j < lanes; j++) x[j] = st[j];
    return w;
}

#if HAVE_SIMD
/* One rANS step for 16 lanes: the table entries e of their slots (already looked up), the
 * new states, and the words of the lanes that renormalise expanded into them in lane order. */
static inline __attribute__((always_inline)) SIMD_TARGET __m512i dec_step(__m512i X, __m512i e, __m128i sP,
                                                                         const uint16_t **w) {
    const __m512i m12 = _mm512_set1_epi32(0xfff), one = _mm512_set1_epi32(1), L = _mm512_set1_epi32(RANS_L);
    __m512i f = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(e, 8), m12), one);
    __m512i y = _mm512_add_epi32(_mm512_mullo_epi32(f, _mm512_srl_epi32(X, sP)), _mm512_srli_epi32(e, 20));
    __mmask16 km = _mm512_cmplt_epu32_mask(y, L);
    __m512i words = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)*w));
    *w += __builtin_popcount(km);
    return _mm512_mask_or_epi32(y, km, _mm512_slli_epi32(y, 16), _mm512_maskz_expand_epi32(km, words));
}

/* 16-bit elements held in 32-bit lanes rotated right by one bit (the inverse of planes_split) */
static inline __attribute__((always_inline)) SIMD_TARGET __m512i rotr1_16(__m512i v) {
    return _mm512_and_si512(_mm512_or_si512(_mm512_srli_epi32(v, 1), _mm512_slli_epi32(v, 15)), _mm512_set1_epi32(0xffff));
}

/* AVX-512 decoder for 16 * nv lanes: one gather per 16 symbols (two with contexts, the
 * first off the critical path), and the words of the lanes that renormalise are expanded
 * into them in lane order. Runs while a whole group's words are surely in the buffer;
 * returns the index reached (the scalar loop finishes). */
SIMD_TARGET static Py_ssize_t dec_avx512(const uint32_t *tab, const ctx_t *c, int P, uint32_t *x,
                                         const uint16_t **wp, const uint16_t *wend, Py_ssize_t n,
                                         const dec_sink *k, int nv, int fused) {
    const int lanes = 16 * nv;
    const uint16_t *w = *wp;
    __m512i X[8];
    for (int v = 0; v < nv; v++) X[v] = _mm512_loadu_si512(x + 16 * v);
    const __m512i mask = _mm512_set1_epi32((1 << P) - 1), ff = _mm512_set1_epi32(0xff);
    const __m128i sP = _mm_cvtsi32_si128(P);
    const ctx_lut lut = ctx_lut_load(c->id);
    Py_ssize_t i = 0;
    for (; i + lanes <= n && wend - w >= lanes; i += lanes) {
        for (int v = 0; v < nv; v++) {
            Py_ssize_t o = i + 16 * v;
            __m512i slot = _mm512_and_si512(X[v], mask);
            if (c->top) slot = _mm512_add_epi32(slot, ctx_offsets(&lut, c->top + o, sP));
            __m512i e = _mm512_i32gather_epi32(slot, tab, 4);
            X[v] = dec_step(X[v], e, sP, &w);
            if (fused) {
                __m512i sym = _mm512_and_si512(e, ff), other = load16_u8(k->other + o);
                __m512i val = k->sym_high ? _mm512_or_si512(_mm512_slli_epi32(sym, 8), other)
                                          : _mm512_or_si512(_mm512_slli_epi32(other, 8), sym);
                if (k->rotate) val = rotr1_16(val);
                _mm256_storeu_si256((__m256i *)(k->out16 + o), _mm512_cvtepi32_epi16(val));
            } else {
                _mm_storeu_si128((__m128i *)(k->out8 + o), _mm512_cvtepi32_epi8(e));
            }
        }
    }
    for (int v = 0; v < nv; v++) _mm512_storeu_si512(x + 16 * v, X[v]);
    *wp = w;
    return i;
}
#endif

/* Decode table: slot -> symbol | (freq - 1) << 8 | (slot - start) << 20, per table. */
static uint32_t *build_dec_table(const uint32_t *freq, int ntables, int P) {
    uint32_t *tab = malloc((sizeof(uint32_t) << P) * ntables);
    for (int t = 0; tab && t < ntables; t++) {
        uint32_t start = 0, *tt = tab + ((size_t)t << P);
        for (int s = 0; s < 256; s++) {
            uint32_t f = freq[256 * t + s];
            for (uint32_t q = 0; q < f; q++) tt[start + q] = (uint32_t)s | ((f - 1) << 8) | (q << 20);
            start += f;
        }
    }
    return tab;
}

/* A stream being decoded: its lane states and word cursor. */
typedef struct {
    uint32_t x[MAX_LANES];
    const uint16_t *w, *wend;
    const uint8_t *src;
} rans_dec;

static int rans_dec_init(rans_dec *d, const uint8_t *src, Py_ssize_t srclen, int lanes) {
    if (srclen < 4 * lanes) return -1;
    for (int j = 0; j < lanes; j++) {
        memcpy(&d->x[j], src + 4 * j, 4);
        if (d->x[j] < RANS_L || d->x[j] >= (1u << 31)) return -1;
    }
    d->src = src;
    d->w = (const uint16_t *)(src + 4 * lanes);
    d->wend = d->w + (srclen - 4 * lanes) / 2;
    return 0;
}

/* Symbols [i0, n) with the scalar loop (i0 a multiple of lanes); then the bytes consumed,
 * or -1 if the stream ran out or did not end in the encoder's initial states. */
static Py_ssize_t rans_dec_finish(rans_dec *d, const uint32_t *tab, int P, int lanes, const ctx_t *c,
                                  const dec_sink *k, Py_ssize_t i0, Py_ssize_t n) {
    const uint16_t *w;
    if (k->out16) {
        switch (lanes) {
        case 8: w = dec_loop(tab, c, P, d->x, d->w, d->wend, i0, n, k, 8, 1); break;
        case 16: w = dec_loop(tab, c, P, d->x, d->w, d->wend, i0, n, k, 16, 1); break;
        case 32: w = dec_loop(tab, c, P, d->x, d->w, d->wend, i0, n, k, 32, 1); break;
        default: w = dec_loop(tab, c, P, d->x, d->w, d->wend, i0, n, k, lanes, 1); break;
        }
    } else {
        switch (lanes) {
        case 8: w = dec_loop(tab, c, P, d->x, d->w, d->wend, i0, n, k, 8, 0); break;
        case 16: w = dec_loop(tab, c, P, d->x, d->w, d->wend, i0, n, k, 16, 0); break;
        case 32: w = dec_loop(tab, c, P, d->x, d->w, d->wend, i0, n, k, 32, 0); break;
        default: w = dec_loop(tab, c, P, d->x, d->w, d->wend, i0, n, k, lanes, 0); break;
        }
    }
    if (w == NULL) return -1;
    for (int j = 0; j < lanes; j++)
        if (d->x[j] != RANS_L) return -1;
    return (const uint8_t *)w - d->src;
}

/* Decode one stream of n symbols into the sink; returns bytes consumed or -1 (corrupt).
 * Runs without the GIL. */
static Py_ssize_t decode_stream(const uint8_t *src, Py_ssize_t srclen, const uint32_t *tab, int P, int lanes,
                                const ctx_t *c, const dec_sink *k, Py_ssize_t n) {
    rans_dec d;
    if (rans_dec_init(&d, src, srclen, lanes) < 0) return -1;
    Py_ssize_t i0 = 0;
#if HAVE_SIMD
    if (SIMD_LANES(lanes) && use_simd()) i0 = dec_avx512(tab, c, P, d.x, &d.w, d.wend, n, k, lanes / 16, k->out16 != NULL);
#endif
    return rans_dec_finish(&d, tab, P, lanes, c, k, i0, n);
}

#if HAVE_SIMD
/* One group of exponents (16 * nv lanes of stream a): states XA advanced, symbols in HI */
static inline __attribute__((always_inline)) SIMD_TARGET void dec2_exponents(__m512i *XA, __m512i *HI, const uint32_t *tab_a,
                                                                            __m512i mask, __m128i sP, const uint16_t **wa,
                                                                            const int nv) {
    for (int v = 0; v < nv; v++) {
        __m512i ea = _mm512_i32gather_epi32(_mm512_and_si512(XA[v], mask), tab_a, 4);
        XA[v] = dec_step(XA[v], ea, sP, wa);
        HI[v] = _mm512_and_si512(ea, _mm512_set1_epi32(0xff));
    }
}

/* Both planes of a 16-bit chunk in one pass, 16 * nv lanes each: the exponent a (high
 * byte) decoded from stream a, then the low byte from stream b with its table picked by
 * that exponent straight from the register (when cb->top is set), and the element written
 * once. Saves the second plane's pass over the exponents, which the two-pass decode writes
 * and reads back. Returns the index reached; the caller finishes each stream. */
static inline __attribute__((always_inline)) SIMD_TARGET Py_ssize_t dec2_avx512_nv(
        const uint32_t *tab_a, rans_dec *a, const uint32_t *tab_b, const ctx_t *cb, rans_dec *b, int P,
        Py_ssize_t n, uint16_t *out16, int rotate, const int nv) {
    const int lanes = 16 * nv;
    __m512i XA[8], XB[8];
    for (int v = 0; v < nv; v++) { XA[v] = _mm512_loadu_si512(a->x + 16 * v); XB[v] = _mm512_loadu_si512(b->x + 16 * v); }
    const __m512i mask = _mm512_set1_epi32((1 << P) - 1), ff = _mm512_set1_epi32(0xff);
    const __m128i sP = _mm_cvtsi32_si128(P);
    const ctx_lut lut = ctx_lut_load(cb->id);
    const uint16_t *wa = a->w, *wb = b->w;
    __m512i HI[8];
    Py_ssize_t i = 0;
#define ROOM(i) ((i) + lanes <= n && a->wend - wa >= lanes && b->wend - wb >= lanes)
    /* software-pipelined: the exponents of the next group decode while the low bytes of
     * this one (which wait on this group's exponents) do */
    if (ROOM(0)) {
        dec2_exponents(XA, HI, tab_a, mask, sP, &wa, nv);
        for (;;) {
            for (int v = 0; v < nv; v++) {
                __m512i slot = _mm512_and_si512(XB[v], mask);
                if (cb->top) slot = _mm512_add_epi32(slot, ctx_offsets_dw(&lut, HI[v], sP));
                __m512i eb = _mm512_i32gather_epi32(slot, tab_b, 4);
                XB[v] = dec_step(XB[v], eb, sP, &wb);
                __m512i val = _mm512_or_si512(_mm512_slli_epi32(HI[v], 8), _mm512_and_si512(eb, ff));
                if (rotate) val = rotr1_16(val);
                _mm256_storeu_si256((__m256i *)(out16 + i + 16 * v), _mm512_cvtepi32_epi16(val));
            }
            i += lanes;
            if (!ROOM(i)) break;
            dec2_exponents(XA, HI, tab_a, mask, sP, &wa, nv);
        }
    }
#undef ROOM
    for (int v = 0; v < nv; v++) { _mm512_storeu_si512(a->x + 16 * v, XA[v]); _mm512_storeu_si512(b->x + 16 * v, XB[v]); }
    a->w = wa;
    b->w = wb;
    return i;
}

SIMD_TARGET static Py_ssize_t dec2_avx512(const uint32_t *tab_a, rans_dec *a, const uint32_t *tab_b, const ctx_t *cb,
                                          rans_dec *b, int P, Py_ssize_t n, uint16_t *out16, int rotate, int nv) {
    switch (nv) { /* constant lane counts keep the states in registers */
    case 1: return dec2_avx512_nv(tab_a, a, tab_b, cb, b, P, n, out16, rotate, 1);
    case 2: return dec2_avx512_nv(tab_a, a, tab_b, cb, b, P, n, out16, rotate, 2);
    case 4: return dec2_avx512_nv(tab_a, a, tab_b, cb, b, P, n, out16, rotate, 4);
    default: return dec2_avx512_nv(tab_a, a, tab_b, cb, b, P, n, out16, rotate, nv);
    }
}
#endif

/* rans_decode(stream, freq u32[ntables*256], P, lanes, dst[, top, ctxmap[, other, sym_high,
 * rotate]]) -> bytes consumed, or -1 if the stream is corrupt (runs out, or the final
 * states are not the initial ones). dst is n bytes (plain), or 2n bytes when `other` is
 * given: then each decoded symbol is joined with other[i] into a 16-bit element. Pass
 * None for top and ctxmap to decode without contexts. */
static PyObject *rans_decode(PyObject *self, PyObject *args) {
    Py_buffer b[6] = {{0}};
    PyObject *top_obj = Py_None, *map_obj = Py_None;
    int P, lanes, sym_high = 1, rotate = 0;
    if (!PyArg_ParseTuple(args, "y*y*iiw*|OOy*pp", &b[0], &b[1], &P, &lanes, &b[2], &top_obj, &map_obj,
                          &b[5], &sym_high, &rotate))
        return NULL;
    int ok_args = 1;
    if (top_obj != Py_None && PyObject_GetBuffer(top_obj, &b[3], PyBUF_SIMPLE) < 0) ok_args = 0;
    if (ok_args && map_obj != Py_None && PyObject_GetBuffer(map_obj, &b[4], PyBUF_SIMPLE) < 0) ok_args = 0;
    int fused = b[5].buf != NULL;
    Py_ssize_t n = fused ? b[5].len : b[2].len;
    int ntables = (int)(b[1].len / 1024);
    ctx_t c;
    if (!ok_args || b[1].len % 1024 || ntables < 1 || ntables > MAX_TABLES || P < 1 || P > MAX_P ||
        lanes < 1 || lanes > MAX_LANES || !check_freqs(b[1].buf, ntables, P) ||
        (fused && b[2].len != 2 * n) || !get_ctx(&c, &b[3], &b[4], n, ntables, 1u << P)) {
        for (int i = 0; i < 6; i++) if (b[i].obj) PyBuffer_Release(&b[i]);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "rans_decode: bad arguments");
        return NULL;
    }
    dec_sink k = {fused ? NULL : b[2].buf, b[5].buf, fused ? b[2].buf : NULL, sym_high, rotate};
    Py_ssize_t consumed = -1;
    Py_BEGIN_ALLOW_THREADS
    uint32_t *tab = build_dec_table(b[1].buf, ntables, P);
    if (tab) consumed = decode_stream(b[0].buf, b[0].len, tab, P, lanes, &c, &k, n);
    free(tab);
    Py_END_ALLOW_THREADS
    for (int i = 0; i < 6; i++) if (b[i].obj) PyBuffer_Release(&b[i]);
    return PyLong_FromSsize_t(consumed);
}

/* ------------------------------------------------------------- parallel loops (pthreads)
 * The whole-payload functions below run without the GIL and split their chunks between
 * `threads` POSIX threads themselves, so a big tensor scales without Python in the loop. */
#include <pthread.h>
#include <sched.h>

typedef struct pfor {
    void (*fn)(void *arg, Py_ssize_t i);
    void *arg;
    Py_ssize_t n, next;
    Py_ssize_t ready; /* items below it may start (parallel_for_led's lead raises it) */
} pfor_t;

static void *pfor_worker(void *p) {
    pfor_t *t = p;
    for (;;) {
        Py_ssize_t i = __atomic_fetch_add(&t->next, 1, __ATOMIC_RELAXED);
        if (i >= t->n) return NULL;
        while (__atomic_load_n(&t->ready, __ATOMIC_ACQUIRE) <= i) sched_yield();
        t->fn(t->arg, i);
    }
}

/* fn(arg, i) for every i in [0, n) on `threads` threads, the caller one of them, items
 * taken in order. lead(t, ctx), when given, runs on the caller before it joins in, while
 * the other threads start: items become available as it raises t->ready, which it must
 * leave at n. */
static void parallel_for_led(int threads, Py_ssize_t n, void (*fn)(void *, Py_ssize_t), void *arg,
                             void (*lead)(pfor_t *t, void *ctx), void *ctx) {
    pfor_t t = {fn, arg, n, 0, lead ? 0 : n};
    pthread_t ids[64];
    int spawned = 0;
    if (threads > 64) threads = 64;
    for (int k = 1; k < threads && k < n; k++)
        if (pthread_create(&ids[spawned], NULL, pfor_worker, &t) == 0) spawned++;
    if (lead) lead(&t, ctx);
    pfor_worker(&t);
    for (int k = 0; k < spawned; k++) pthread_join(ids[k], NULL);
}

static void parallel_for(int threads, Py_ssize_t n, void (*fn)(void *, Py_ssize_t), void *arg) {
    parallel_for_led(threads, n, fn, arg, NULL, NULL);
}

/* ------------------------------------------------- whole `ans` payloads of 16-bit types
 * The layout is documented in nzip/codecs/ans.py; this parser mirrors the Python one (which
 * stays the reference and handles the multi-threaded and non-16-bit cases) and decodes a
 * whole tensor in one call, so small tensors pay no Python overhead per plane or chunk. */

typedef struct {
    const uint8_t *p, *end;
} cursor;

static int take(cursor *r, Py_ssize_t len, const uint8_t **out) {
    if (len < 0 || r->end - r->p < len) return -1;
    *out = r->p;
    r->p += len;
    return 0;
}

static int read_u64(cursor *r, uint64_t *v) {
    const uint8_t *q;
    if (take(r, 8, &q) < 0) return -1;
    memcpy(v, q, 8);
    return 0;
}

/* rans.pack_table's layout: 32-byte MSB-first presence bitmap, u8 width, freq - 1 values */
static int read_table(cursor *r, int P, uint32_t *freq) {
    const uint8_t *bm, *wd, *vals;
    if (take(r, 32, &bm) < 0 || take(r, 1, &wd) < 0 || (*wd != 1 && *wd != 2)) return -1;
    int k = 0;
    for (int i = 0; i < 32; i++) k += __builtin_popcount(bm[i]);
    if (take(r, (Py_ssize_t)k * *wd, &vals) < 0) return -1;
    uint64_t total = 0;
    int j = 0;
    for (int s = 0; s < 256; s++) {
        uint32_t f = 0;
        if (bm[s >> 3] & (0x80 >> (s & 7))) {
            f = (*wd == 1 ? vals[j] : (uint32_t)(vals[2 * j] | (vals[2 * j + 1] << 8))) + 1u;
            j++;
        }
        freq[s] = f;
        total += f;
    }
    return total == (1u << P) ? 0 : -1;
}

typedef struct {
    int method, lanes, ntables;
    const uint8_t *raw;
    uint32_t *tab; /* decode tables */
    ctx_t ctx;
    uint8_t ctxmap[256];
    const uint8_t **streams;
    uint64_t *sizes;
} ans_section;

static int read_ans_section(const uint8_t *body, uint64_t len, int method, Py_ssize_t n, Py_ssize_t nchunks,
                            int P, ans_section *sec) {
    cursor r = {body, body + len};
    const uint8_t *q;
    sec->method = method;
    if (method == 0) {
        if ((Py_ssize_t)len != n) return -1;
        sec->raw = body;
        return 0;
    }
    if (method != 1 && method != 2) return -1;
    if (take(&r, 1, &q) < 0 || *q < 1 || *q > MAX_LANES) return -1;
    sec->lanes = *q;
    memset(sec->ctxmap, 0, 256);
    sec->ntables = 1;
    if (method == 2) {
        const uint8_t *vals;
        if (take(&r, 1, &q) < 0 || *q < 1 || *q > 63 || take(&r, *q, &vals) < 0) return -1;
        for (int i = 0; i < *q; i++) {
            if (sec->ctxmap[vals[i]]) return -1; /* listed twice */
            sec->ctxmap[vals[i]] = (uint8_t)(i + 1);
        }
        sec->ntables = *q + 1;
    }
    uint32_t freq[256 * 64];
    for (int t = 0; t < sec->ntables; t++)
        if (read_table(&r, P, freq + 256 * t) < 0) return -1;
    sec->sizes = malloc(sizeof(uint64_t) * nchunks);
    sec->streams = malloc(sizeof(uint8_t *) * nchunks);
    sec->tab = build_dec_table(freq, sec->ntables, P);
    if (!sec->sizes || !sec->streams || !sec->tab) return -2;
    for (Py_ssize_t i = 0; i < nchunks; i++)
        if (read_u64(&r, &sec->sizes[i]) < 0) return -1;
    for (Py_ssize_t i = 0; i < nchunks; i++)
        if (sec->sizes[i] > (uint64_t)(r.end - r.p) || take(&r, (Py_ssize_t)sec->sizes[i], &sec->streams[i]) < 0)
            return -1;
    return r.p == r.end ? 0 : -1;
}

/* Per-thread scratch kept between calls (slots: the encoder's planes and chunk work region,
 * the decoder's first planes), so that steady-state work touches no fresh memory; very
 * large requests are not kept. */
#define TLS_KEEP ((size_t)256 << 20)
static __thread uint8_t *tls_buf[3];
static __thread size_t tls_cap[3];

static uint8_t *tls_scratch(int slot, size_t need, uint8_t **temporary) {
    *temporary = NULL;
    if (need > TLS_KEEP) return *temporary = malloc(need);
    if (tls_cap[slot] < need) {
        free(tls_buf[slot]);
        tls_buf[slot] = malloc(need);
        tls_cap[slot] = tls_buf[slot] ? need : 0;
    }
    return tls_buf[slot];
}

/* One 16-bit tensor being decoded: its parsed sections, output and the buffer for the plane
 * decoded first. Chunks are independent (each plane's chunk c has its own stream), so a
 * chunk is a job of its own: both of its planes, no barrier between planes. */
typedef struct {
    ans_section sec[2];
    Py_ssize_t n, chunk;
    int P, rotate;
    uint8_t *out, *tmp;
    int failed;
    ctx_t ctx;
} t16;

/* Parse a payload; with tmp == NULL the first plane is decoded into the upper half of out:
 * a chunk's second pass reads element i of it before its writes reach it (element i's 16
 * bits land on bytes 2i and 2i+1, which hold plane entries 2i-n and 2i+1-n, already
 * consumed), so chunks decoded one after another in one thread need no scratch memory. */
static int t16_open(t16 *t, const uint8_t *buf, Py_ssize_t len, Py_ssize_t n, Py_ssize_t chunk, int P, int rotate,
                    uint8_t *out, uint8_t *tmp) {
    memset(t, 0, sizeof *t);
    t->n = n; t->chunk = chunk; t->P = P; t->rotate = rotate; t->out = out;
    t->tmp = tmp ? tmp : out + n;
    Py_ssize_t nchunks = (n + chunk - 1) / chunk;
    cursor r = {buf, buf + len};
    int rc = 0;
    for (int k = 0; k < 2 && rc == 0; k++) {
        const uint8_t *m, *body;
        uint64_t blen;
        if (take(&r, 1, &m) < 0 || read_u64(&r, &blen) < 0 || blen > (uint64_t)(r.end - r.p) ||
            take(&r, (Py_ssize_t)blen, &body) < 0 || (*m == 2 && k == 0))
            rc = -1;
        else
            rc = read_ans_section(body, blen, *m, n, nchunks, P, &t->sec[k]);
    }
    if (rc == 0 && r.p != r.end) rc = -1;
    if (t->sec[1].method == 2)
        for (int v = 0; v < 256; v++) { t->ctx.id[v] = t->sec[1].ctxmap[v]; t->ctx.offset[v] = (uint32_t)t->sec[1].ctxmap[v] << P; }
    return rc;
}

static void t16_close(t16 *t) {
    for (int k = 0; k < 2; k++) { free(t->sec[k].tab); free(t->sec[k].sizes); free(t->sec[k].streams); }
}

/* chunk i of one plane: raw copy, or its stream through the sink */
static int plane_chunk(const ans_section *sec, Py_ssize_t i, Py_ssize_t a, Py_ssize_t m, int P, const ctx_t *c,
                       const dec_sink *k) {
    if (sec->method == 0) {
        memcpy(k->out8, sec->raw + a, m);
        return 0;
    }
    return decode_stream(sec->streams[i], (Py_ssize_t)sec->sizes[i], sec->tab, P, sec->lanes, c, k, m) ==
                   (Py_ssize_t)sec->sizes[i] ? 0 : -1;
}

#if HAVE_SIMD
/* Both planes coded, with the same lanes: one pass (dec2_avx512), then each stream's last
 * partial group the two-pass way: the exponents into tmp, the low bytes joined with them. */
static int t16_chunk_fused(t16 *t, Py_ssize_t i, Py_ssize_t a, Py_ssize_t m) {
    const ans_section *s0 = &t->sec[0], *s1 = &t->sec[1];
    uint8_t *tmp = t->tmp + a;
    uint16_t *out16 = (uint16_t *)t->out + a;
    int lanes = s0->lanes;
    rans_dec da, db;
    if (rans_dec_init(&da, s0->streams[i], (Py_ssize_t)s0->sizes[i], lanes) < 0 ||
        rans_dec_init(&db, s1->streams[i], (Py_ssize_t)s1->sizes[i], lanes) < 0)
        return -1;
    ctx_t none, c;
    memset(&none, 0, sizeof none);
    c = s1->method == 2 ? t->ctx : none;
    c.top = s1->method == 2 ? tmp : NULL;
    Py_ssize_t i0 = dec2_avx512(s0->tab, &da, s1->tab, &c, &db, t->P, m, out16, t->rotate, lanes / 16);
    dec_sink first = {tmp, NULL, NULL, 1, 0}, second = {NULL, tmp, out16, 0, t->rotate};
    if (rans_dec_finish(&da, s0->tab, t->P, lanes, &none, &first, i0, m) != (Py_ssize_t)s0->sizes[i]) return -1;
    return rans_dec_finish(&db, s1->tab, t->P, lanes, &c, &second, i0, m) == (Py_ssize_t)s1->sizes[i] ? 0 : -1;
}
#endif

static int t16_chunk(t16 *t, Py_ssize_t i) {
    Py_ssize_t a = i * t->chunk, m = t->n - a < t->chunk ? t->n - a : t->chunk;
    const ans_section *s0 = &t->sec[0], *s1 = &t->sec[1];
#if HAVE_SIMD
    if (s0->method == 1 && s1->method != 0 && s0->lanes == s1->lanes && SIMD_LANES(s0->lanes) && use_simd())
        return t16_chunk_fused(t, i, a, m);
#endif
    uint8_t *tmp = t->tmp + a;
    uint16_t *out16 = (uint16_t *)t->out + a;
    ctx_t none;
    memset(&none, 0, sizeof none);
    dec_sink first = {tmp, NULL, NULL, 1, 0};
    if (s1->method == 2) { /* exponents first: they are the low plane's contexts */
        ctx_t c = t->ctx;
        c.top = tmp;
        dec_sink second = {NULL, tmp, out16, 0, t->rotate};
        if (plane_chunk(s0, i, a, m, t->P, &none, &first) < 0) return -1;
        return decode_stream(s1->streams[i], (Py_ssize_t)s1->sizes[i], s1->tab, t->P, s1->lanes, &c, &second, m) ==
                       (Py_ssize_t)s1->sizes[i] ? 0 : -1;
    }
    if (s0->method != 0) { /* low plane first, then exponents joined with it */
        dec_sink second = {NULL, tmp, out16, 1, t->rotate};
        if (plane_chunk(s1, i, a, m, t->P, &none, &first) < 0) return -1;
        return plane_chunk(s0, i, a, m, t->P, &none, &second);
    }
    for (Py_ssize_t q = 0; q < m; q++) {
        uint16_t v = (uint16_t)((s0->raw[a + q] << 8) | s1->raw[a + q]);
        v = t->rotate ? (uint16_t)((v >> 1) | (v << 15)) : v;
        memcpy(out16 + q, &v, 2);
    }
    return 0;
}

typedef struct {
    t16 *t;
    Py_ssize_t chunk;
} t16_job;

static Py_ssize_t job_len(const t16_job *j) {
    Py_ssize_t left = j->t->n - j->chunk * j->t->chunk;
    return left < j->t->chunk ? left : j->t->chunk;
}

/* biggest first; ties in tensor and chunk order, which one thread decoding a tensor in
 * place relies on (see t16_open) */
static int by_size_desc(const void *pa, const void *pb) {
    const t16_job *a = pa, *b = pb;
    Py_ssize_t x = job_len(a), y = job_len(b);
    if (x != y) return (x < y) - (x > y);
    if (a->t != b->t) return a->t < b->t ? -1 : 1;
    return (a->chunk > b->chunk) - (a->chunk < b->chunk);
}

static void t16_run(void *arg, Py_ssize_t i) {
    t16_job *j = (t16_job *)arg + i;
    if (t16_chunk(j->t, j->chunk) < 0) __atomic_store_n(&j->t->failed, 1, __ATOMIC_RELAXED);
}

/* ---- faulting in fresh output ahead of the decoders
 * A fresh output buffer's pages are zeroed by the kernel as they are first written. Inside
 * a decoder's loop that evicts its tables from the caches; faulted in up front it is a
 * serial pass the other threads wait for. Instead the calling thread faults in each job's
 * output (MADV_POPULATE_WRITE: page tables only, the contents are left alone), in the order
 * the jobs are taken, and releases the job to the decoders when its pages are in; then it
 * decodes too. The decoders wait only at the very start. */
#include <sys/mman.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* the bytes a job writes: its chunk of out, or all of out when it decodes in place */
static void job_range(const t16_job *j, uintptr_t *lo, uintptr_t *hi) {
    const t16 *t = j->t;
    int in_place = t->tmp == t->out + t->n;
    Py_ssize_t a = in_place ? 0 : j->chunk * t->chunk, m = in_place ? t->n : job_len(j);
    *lo = (uintptr_t)(t->out + 2 * a);
    *hi = *lo + 2 * (uintptr_t)m;
}

/* Fault in the job's pages; 0 when the kernel cannot (before Linux 5.14): then the caller
 * stops, and the decoders fault their pages in themselves. */
static int fault_in(const t16_job *j) {
    uintptr_t lo, hi;
    job_range(j, &lo, &hi);
    if (hi <= lo) return 1;
    uintptr_t a = lo & ~(uintptr_t)4095, b = (hi + 4095) & ~(uintptr_t)4095;
    return madvise((void *)a, b - a, MADV_POPULATE_WRITE) == 0;
}

/* side(): other work of the caller's (checking checksums), run with the GIL on this thread
 * once the output is faulted in, while the others decode: a thread of its own would
 * compete with the decoders for the cores. Its errors are its own to record. */
static void run_side(PyObject *side) {
    if (!side) return;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *r = PyObject_CallNoArgs(side);
    if (r) Py_DECREF(r);
    else PyErr_WriteUnraisable(side);
    PyGILState_Release(g);
}

typedef struct {
    t16_job *jobs;
    PyObject *side;
} ahead_t;

/* parallel_for_led's lead: fault in the jobs' output in the order they are taken,
 * releasing each to the decoders, then run side */
static void fault_ahead(pfor_t *t, void *ctx) {
    ahead_t *a = ctx;
    int ok = 1;
    for (Py_ssize_t i = 0; i < t->n; i++) {
        if (ok) ok = fault_in(&a->jobs[i]);
        __atomic_store_n(&t->ready, ok ? i + 1 : t->n, __ATOMIC_RELEASE);
    }
    run_side(a->side);
}

/* Decode tensors[0..m) with their chunks spread over `threads` threads, biggest first. A
 * tensor of one chunk decodes in place; one of several chunks gets its own scratch unless
 * it already has one. fault: the outputs are fresh memory of nzip's own (see above); side:
 * NULL, or a callable run once on one of the threads (run_side).
 * Returns 0, or -2 when memory ran out (per-tensor failures are in t->failed). */
static int t16_decode_all(t16 *ts, Py_ssize_t m, int threads, int fault, PyObject *side) {
    Py_ssize_t njobs = 0;
    for (Py_ssize_t k = 0; k < m; k++) njobs += (ts[k].n + ts[k].chunk - 1) / ts[k].chunk;
    t16_job *jobs = malloc(sizeof(t16_job) * (njobs ? njobs : 1));
    if (!jobs) return -2;
    /* tensors whose chunks may run side by side cannot decode in place: carve them scratch */
    size_t need = 0;
    for (Py_ssize_t k = 0; k < m; k++)
        if (threads > 1 && ts[k].n > ts[k].chunk && ts[k].tmp == ts[k].out + ts[k].n) need += ts[k].n;
    uint8_t *temporary = NULL, *scratch = need ? tls_scratch(2, need, &temporary) : NULL;
    if (need && !scratch) { free(jobs); run_side(side); return -2; }
    Py_ssize_t q = 0;
    for (Py_ssize_t k = 0; k < m; k++) {
        Py_ssize_t nchunks = (ts[k].n + ts[k].chunk - 1) / ts[k].chunk;
        if (threads > 1 && nchunks > 1 && ts[k].tmp == ts[k].out + ts[k].n) {
            ts[k].tmp = scratch;
            scratch += ts[k].n;
        }
        for (Py_ssize_t c = 0; c < nchunks; c++) jobs[q++] = (t16_job){&ts[k], c};
    }
    /* biggest chunks first keeps the threads evenly busy to the end */
    qsort(jobs, njobs, sizeof(t16_job), by_size_desc);
    if (fault) {
        ahead_t a = {jobs, side};
        parallel_for_led(threads, njobs, t16_run, jobs, fault_ahead, &a);
    } else {
        run_side(side);
        parallel_for(threads, njobs, t16_run, jobs);
    }
    free(jobs);
    free(temporary);
    return 0;
}

/* ans_decode16(payload, chunk, P, rotate, out[2n], threads[, scratch[n]]) -> 0, -1 (corrupt),
 * -2 (memory); chunks are spread over `threads` threads (with one thread and no scratch,
 * the decode is in place) */
static PyObject *ans_decode16(PyObject *self, PyObject *args) {
    Py_buffer b[3] = {{0}};
    Py_ssize_t chunk;
    int P, rotate, threads;
    if (!PyArg_ParseTuple(args, "y*nipw*i|w*", &b[0], &chunk, &P, &rotate, &b[1], &threads, &b[2])) return NULL;
    Py_ssize_t n = b[1].len / 2;
    int nb = b[2].buf ? 3 : 2;
    if (get_buffers(b, nb) < 0 || b[1].len % 2 || (b[2].buf && b[2].len != n) || chunk < 1 || P < 1 || P > MAX_P) {
        release(b, nb);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "ans_decode16: bad arguments");
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    t16 t;
    rc = t16_open(&t, b[0].buf, b[0].len, n, chunk, P, rotate, b[1].buf, b[2].buf);
    if (rc == 0) rc = t16_decode_all(&t, 1, threads, 0, NULL);
    if (rc == 0 && t.failed) rc = -1;
    t16_close(&t);
    Py_END_ALLOW_THREADS
    release(b, nb);
    return PyLong_FromLong(rc);
}

typedef struct {
    t16 *ts;
    Py_buffer *bufs;
    Py_ssize_t *chunks;
    int *Ps, *rots, *rcs;
} t16_open_job;

static void t16_open_run(void *arg, Py_ssize_t k) {
    t16_open_job *j = arg;
    j->rcs[k] = t16_open(&j->ts[k], j->bufs[2 * k].buf, j->bufs[2 * k].len, j->bufs[2 * k + 1].len / 2, j->chunks[k],
                         j->Ps[k], j->rots[k], j->bufs[2 * k + 1].buf, NULL);
}

/* ans_decode16_batch([(payload, out, chunk, precision, rotate), ...], threads[, fault[, side]])
 * -> [rc, ...]: every chunk of every tensor in one pool of jobs; fault: the outs are fresh
 * memory, to be faulted in ahead of the decoders; side: a callable run once meanwhile
 * (see run_side), unless the arguments are refused */
static PyObject *ans_decode16_batch(PyObject *self, PyObject *args) {
    PyObject *list;
    PyObject *side = Py_None;
    int threads, fault = 0;
    if (!PyArg_ParseTuple(args, "O!i|pO", &PyList_Type, &list, &threads, &fault, &side)) return NULL;
    if (side == Py_None) side = NULL;
    else if (!PyCallable_Check(side)) return PyErr_Format(PyExc_TypeError, "ans_decode16_batch: side must be callable");
    Py_ssize_t m = PyList_GET_SIZE(list), got = 0;
    Py_buffer *bufs = calloc(2 * (m ? m : 1), sizeof(Py_buffer));
    t16 *ts = calloc(m ? m : 1, sizeof(t16));
    int *rcs = calloc(m ? m : 1, sizeof(int));
    Py_ssize_t *chunks = calloc(m ? m : 1, sizeof(Py_ssize_t));
    int *Ps = calloc(m ? m : 1, sizeof(int)), *rots = calloc(m ? m : 1, sizeof(int));
    if (!bufs || !ts || !rcs || !chunks || !Ps || !rots) {
        free(bufs); free(ts); free(rcs); free(chunks); free(Ps); free(rots);
        return PyErr_NoMemory();
    }
    int ok = 1;
    for (; got < m && ok; got++) {
        ok = PyArg_ParseTuple(PyList_GET_ITEM(list, got), "y*w*nip", &bufs[2 * got], &bufs[2 * got + 1], &chunks[got],
                              &Ps[got], &rots[got]);
        if (ok && (!PyBuffer_IsContiguous(&bufs[2 * got + 1], 'C') || bufs[2 * got + 1].len % 2 || chunks[got] < 1 ||
                   Ps[got] < 1 || Ps[got] > MAX_P)) {
            PyBuffer_Release(&bufs[2 * got]);
            PyBuffer_Release(&bufs[2 * got + 1]);
            PyErr_SetString(PyExc_ValueError, "ans_decode16_batch: bad job");
            ok = 0;
        }
    }
    if (!ok) got--; /* the failed job released (or never took) its buffers */
    PyObject *res = NULL;
    if (ok) {
        int all = 0;
        Py_BEGIN_ALLOW_THREADS
        /* parsing and table building are a fair share of a small model's time: threads too */
        t16_open_job open = {ts, bufs, chunks, Ps, rots, rcs};
        parallel_for(threads, m, t16_open_run, &open);
        Py_ssize_t live = 0;
        for (Py_ssize_t k = 0; k < m; k++) {
            if (rcs[k] == 0) ts[live++] = ts[k];
            else t16_close(&ts[k]);
        }
        all = t16_decode_all(ts, live, threads, fault, side);
        for (Py_ssize_t k = 0, q = 0; k < m; k++)
            if (rcs[k] == 0) { rcs[k] = all ? all : ts[q].failed ? -1 : 0; t16_close(&ts[q++]); }
        Py_END_ALLOW_THREADS
        res = PyList_New(m);
        for (Py_ssize_t i = 0; res && i < m; i++) PyList_SET_ITEM(res, i, PyLong_FromLong(rcs[i]));
    }
    for (Py_ssize_t i = 0; i < 2 * got; i++) PyBuffer_Release(&bufs[i]);
    free(bufs); free(ts); free(rcs); free(chunks); free(Ps); free(rots);
    return res;
}

/* Batched entry point: many (payload, out, size, param) jobs decoded in one call,
 * spread over `threads` threads, one GIL release for a whole model's worth of tensors. */
typedef struct {
    Py_buffer payload, out;
    Py_ssize_t size; /* dfloat11: block */
    int param, rc;   /* dfloat11: code length limit */
} batch_job;

static PyObject *run_batch(PyObject *args, void (*one)(void *, Py_ssize_t), int max_param, const char *name) {
    PyObject *list;
    int threads;
    if (!PyArg_ParseTuple(args, "O!i", &PyList_Type, &list, &threads)) return NULL;
    Py_ssize_t m = PyList_GET_SIZE(list), got = 0;
    batch_job *jobs = calloc(m ? m : 1, sizeof(batch_job));
    if (!jobs) return PyErr_NoMemory();
    int ok = 1;
    for (; got < m && ok; got++) {
        batch_job *j = &jobs[got];
        ok = PyArg_ParseTuple(PyList_GET_ITEM(list, got), "y*w*ni", &j->payload, &j->out, &j->size, &j->param);
        if (ok && (!PyBuffer_IsContiguous(&j->out, 'C') || j->out.len % 2 || j->size < 1 || j->param < 1 ||
                   j->param > max_param)) {
            PyBuffer_Release(&j->payload);
            PyBuffer_Release(&j->out);
            PyErr_Format(PyExc_ValueError, "%s: bad job", name);
            ok = 0;
        }
    }
    if (!ok) got--; /* the failed job released (or never took) its buffers */
    PyObject *res = NULL;
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        parallel_for(threads, m, one, jobs);
        Py_END_ALLOW_THREADS
        res = PyList_New(m);
        for (Py_ssize_t i = 0; res && i < m; i++) PyList_SET_ITEM(res, i, PyLong_FromLong(jobs[i].rc));
    }
    for (Py_ssize_t i = 0; i < got; i++) { PyBuffer_Release(&jobs[i].payload); PyBuffer_Release(&jobs[i].out); }
    free(jobs);
    return res;
}


/* ------------------------------------------------------- whole `ans` payloads: encoding
 * The planner decides, per plane, raw / one table / tables in context of the exponent,
 * from entropy estimates (as documented in nzip/codecs/ans.py); it is the only planner for
 * 16-bit types, whatever the thread count, so the output never depends on threads. */

#define CONTEXT_MIN (1 << 14)
#define MAX_CONTEXTS 63
#define CONTEXT_MIN_COUNT 2048 /* a context's table (~290 bytes) cannot pay off below this */

static double entropy_bytes_of(const int64_t *c) {
    double total = 0, acc = 0;
    for (int s = 0; s < 256; s++) total += (double)c[s];
    if (total <= 0) return 0;
    for (int s = 0; s < 256; s++)
        if (c[s] > 0) acc += (double)c[s] * log2(total / (double)c[s]);
    return acc / 8;
}

static double table_bytes_of(const int64_t *c, int P) {
    int64_t k = 0, mx = 0, sum = 0;
    for (int s = 0; s < 256; s++) {
        k += c[s] > 0;
        mx = c[s] > mx ? c[s] : mx;
        sum += c[s];
    }
    int narrow = (double)mx * (1 << P) < 256.0 * (double)(sum > 0 ? sum : 1);
    return 33.0 + (double)k * (narrow ? 1 : 2);
}

/* frequencies summing to 2^P, >= 1 for every symbol that occurs (rans.quantize's rule) */
static void quantize_counts(const int64_t *counts, int P, uint32_t *freq) {
    const int64_t M = (int64_t)1 << P;
    double total = 0;
    for (int s = 0; s < 256; s++) total += (double)counts[s];
    int64_t f[256], sum = 0;
    if (total <= 0) {
        memset(freq, 0, 256 * sizeof *freq);
        freq[0] = (uint32_t)M;
        return;
    }
    for (int s = 0; s < 256; s++) {
        f[s] = counts[s] > 0 ? (int64_t)fmax(1.0, rint((double)counts[s] * ((double)M / total))) : 0;
        sum += f[s];
    }
    int64_t diff = M - sum;
    while (diff != 0) { /* settle rounding on the most frequent symbols, where it costs least */
        int i = 0;
        for (int s = 1; s < 256; s++) if (f[s] > f[i]) i = s;
        int64_t step = diff > 0 ? diff : -(-diff < f[i] - 1 ? -diff : f[i] - 1);
        if (step == 0) break; /* impossible for P >= 8 */
        f[i] += step;
        diff -= step;
    }
    for (int s = 0; s < 256; s++) freq[s] = (uint32_t)f[s];
}

/* the same rule as rans.auto_lanes (which plans the other dtypes in Python) */
static int auto_lanes_for(Py_ssize_t n) {
    return n >= (1 << 16) ? 64 : n >= (1 << 14) ? 32 : n >= (1 << 12) ? 16 : 8;
}

typedef struct {
    int method, lanes, k;
    uint8_t ctx[MAX_CONTEXTS];
    uint32_t freq[256 * (MAX_CONTEXTS + 1)];
} plane_plan;

/* counts: the plane's 256 counts; joint: 256 x 256 (context value x symbol) or NULL */
static void plan_plane(const int64_t *counts, const int64_t *joint, Py_ssize_t n, Py_ssize_t chunk, int P,
                       int lanes, plane_plan *pl) {
    Py_ssize_t nchunks = (n + chunk - 1) / chunk;
    pl->lanes = lanes ? lanes : auto_lanes_for(n < chunk ? n : chunk);
    double state = (4.0 * pl->lanes + 10) * (double)nchunks;
    double plain = entropy_bytes_of(counts) + table_bytes_of(counts, P) + state;
    pl->k = 0;
    pl->method = plain < (double)n ? 1 : 0;
    if (joint) {
        int64_t rows[256];
        int order[256], m = 0;
        for (int v = 0; v < 256; v++) {
            rows[v] = 0;
            for (int s = 0; s < 256; s++) rows[v] += joint[256 * v + s];
            if (rows[v] >= CONTEXT_MIN_COUNT) order[m++] = v;
        }
        for (int i = 1; i < m; i++) /* stable insertion sort, most frequent first */
            for (int j = i; j > 0 && rows[order[j]] > rows[order[j - 1]]; j--) {
                int t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
            }
        if (m > MAX_CONTEXTS) m = MAX_CONTEXTS;
        int64_t rest[256];
        memcpy(rest, counts, sizeof rest);
        double own = 0, best = entropy_bytes_of(counts) + table_bytes_of(counts, P);
        int best_k = 0;
        for (int i = 0; i < m; i++) {
            const int64_t *row = joint + 256 * order[i];
            own += entropy_bytes_of(row) + table_bytes_of(row, P);
            int any = 0;
            for (int s = 0; s < 256; s++) { rest[s] -= row[s]; any |= rest[s] > 0; }
            double cost = own + 2 + (i + 1) + (any ? entropy_bytes_of(rest) + table_bytes_of(rest, P) : 35);
            if (cost < best) { best = cost; best_k = i + 1; }
        }
        if (best_k && best + state < plain && best + state < (double)n) {
            pl->method = 2;
            pl->k = best_k;
            memcpy(rest, counts, sizeof rest);
            for (int i = 0; i < best_k; i++) {
                pl->ctx[i] = (uint8_t)order[i];
                quantize_counts(joint + 256 * order[i], P, pl->freq + 256 * (i + 1));
                for (int s = 0; s < 256; s++) rest[s] -= joint[256 * order[i] + s];
            }
            quantize_counts(rest, P, pl->freq);
            return;
        }
    }
    if (pl->method == 1) quantize_counts(counts, P, pl->freq);
}

static Py_ssize_t pack_table_to(const uint32_t *freq, uint8_t *out) {
    int wide = 0, k = 0;
    memset(out, 0, 32);
    for (int s = 0; s < 256; s++)
        if (freq[s]) { out[s >> 3] |= (uint8_t)(0x80 >> (s & 7)); wide |= freq[s] - 1 > 255; k++; }
    out[32] = wide ? 2 : 1;
    Py_ssize_t o = 33;
    for (int s = 0; s < 256; s++) {
        if (!freq[s]) continue;
        out[o++] = (uint8_t)(freq[s] - 1);
        if (wide) out[o++] = (uint8_t)((freq[s] - 1) >> 8);
    }
    return o;
}

typedef struct {
    const uint8_t *plane, *top;
    Py_ssize_t n, chunk;
    int P, ntables;
    const plane_plan *pl;
    const enc_sym *tab;
    ctx_t ctx;
    uint8_t **bufs, *work;
    Py_ssize_t *starts, *lens;
} enc_job;

/* Chunk i encodes into its own slice of the work region: 2 bytes per symbol plus states. */
static Py_ssize_t chunk_region(Py_ssize_t i, Py_ssize_t chunk, int lanes) { return i * (2 * chunk + 4 * lanes + 8); }

static void enc_chunk(void *arg, Py_ssize_t i) {
    enc_job *j = arg;
    Py_ssize_t a = i * j->chunk, m = j->n - a < j->chunk ? j->n - a : j->chunk;
    Py_ssize_t cap = 2 * m + 4 * j->pl->lanes + 4;
    j->bufs[i] = j->work + chunk_region(i, j->chunk, j->pl->lanes);
    ctx_t c = j->ctx;
    if (c.top) c.top = j->top + a;
    j->starts[i] = encode_stream(j->plane + a, m, j->tab, j->ntables, &c, j->P, j->pl->lanes, j->bufs[i], cap);
    j->lens[i] = cap - j->starts[i];
}

/* A plane's section (method byte, u64 length, body) appended at out; returns bytes written
 * or -1. Falls back to plainer methods when the coded section would not be smaller. */
static Py_ssize_t write_plane(const uint8_t *plane, const uint8_t *top, Py_ssize_t n, Py_ssize_t chunk, int P,
                              plane_plan *pl, const int64_t *counts, int threads, uint8_t *work, uint8_t *out) {
    Py_ssize_t nchunks = (n + chunk - 1) / chunk;
    while (pl->method != 0) {
        int ntables = pl->method == 2 ? pl->k + 1 : 1;
        enc_job j = {plane, top, n, chunk, P, ntables, pl, build_enc_table(pl->freq, ntables, P)};
        memset(&j.ctx, 0, sizeof j.ctx);
        if (pl->method == 2) {
            j.ctx.top = top;
            for (int i = 0; i < pl->k; i++) { j.ctx.id[pl->ctx[i]] = (uint8_t)(i + 1); j.ctx.offset[pl->ctx[i]] = 256u * (i + 1); }
        }
        j.work = work;
        j.bufs = calloc(nchunks ? nchunks : 1, sizeof(uint8_t *));
        j.starts = calloc(nchunks ? nchunks : 1, sizeof(Py_ssize_t));
        j.lens = calloc(nchunks ? nchunks : 1, sizeof(Py_ssize_t));
        Py_ssize_t written = -1;
        if (j.tab && j.bufs && j.starts && j.lens) {
            parallel_for(threads, nchunks, enc_chunk, &j);
            Py_ssize_t body = 1 + (pl->method == 2 ? 1 + pl->k : 0) + 8 * nchunks, ok = 1;
            uint8_t tbl[33 + 512];
            for (int t = 0; t < ntables; t++) body += pack_table_to(pl->freq + 256 * t, tbl);
            for (Py_ssize_t i = 0; i < nchunks; i++) { ok &= j.lens[i] >= 0; body += j.lens[i]; }
            if (ok && body < n) {
                uint8_t *o = out;
                *o++ = (uint8_t)pl->method;
                uint64_t len = (uint64_t)body;
                memcpy(o, &len, 8); o += 8;
                *o++ = (uint8_t)pl->lanes;
                if (pl->method == 2) { *o++ = (uint8_t)pl->k; memcpy(o, pl->ctx, pl->k); o += pl->k; }
                for (int t = 0; t < ntables; t++) o += pack_table_to(pl->freq + 256 * t, o);
                for (Py_ssize_t i = 0; i < nchunks; i++) { uint64_t l = (uint64_t)j.lens[i]; memcpy(o, &l, 8); o += 8; }
                for (Py_ssize_t i = 0; i < nchunks; i++) { memcpy(o, j.bufs[i] + j.starts[i], j.lens[i]); o += j.lens[i]; }
                written = o - out;
            } else if (!ok) {
                written = -2;
            }
        }
        free(j.bufs); free(j.starts); free(j.lens); free((void *)j.tab);
        if (written == -2) return -1;
        if (written >= 0) return written;
        /* not smaller: one table instead of contexts, then raw */
        if (pl->method == 2) { pl->method = 1; quantize_counts(counts, P, pl->freq); }
        else pl->method = 0;
    }
    out[0] = 0;
    uint64_t len = (uint64_t)n;
    memcpy(out + 1, &len, 8);
    memcpy(out + 9, plane, n);
    return 9 + n;
}

typedef struct {
    const uint16_t *src;
    uint8_t *hi, *lo;
    Py_ssize_t n, chunk;
    int rotate, joint;
    int64_t *hist; /* per chunk: 65536 (joint) or 512 (two planes) counters */
} prep_job;

static void prep_chunk(void *arg, Py_ssize_t i) {
    prep_job *j = arg;
    Py_ssize_t a = i * j->chunk, m = j->n - a < j->chunk ? j->n - a : j->chunk;
    split16(j->src + a, j->hi + a, j->lo + a, m, j->rotate);
    int64_t *h = j->hist + i * (j->joint ? 65536 : 512);
    const uint8_t *hi = j->hi + a, *lo = j->lo + a;
    if (j->joint) {
        for (Py_ssize_t q = 0; q < m; q++) h[(hi[q] << 8) | lo[q]]++;
    } else {
        for (Py_ssize_t q = 0; q < m; q++) { h[hi[q]]++; h[256 + lo[q]]++; }
    }
}

/* ans_encode16(data (2n bytes, 2-aligned), rotate, P, lanes, chunk, contexts, threads)
 * -> the whole `ans` payload of a 16-bit tensor */
static PyObject *ans_encode16(PyObject *self, PyObject *args) {
    Py_buffer b;
    int rotate, P, lanes, contexts, threads;
    Py_ssize_t chunk;
    if (!PyArg_ParseTuple(args, "y*piinpi", &b, &rotate, &P, &lanes, &chunk, &contexts, &threads)) return NULL;
    Py_ssize_t n = b.len / 2;
    if (!PyBuffer_IsContiguous(&b, 'C') || b.len % 2 || ((uintptr_t)b.buf & 1) || P < 8 || P > MAX_P ||
        lanes < 0 || lanes > MAX_LANES || chunk < 1 || threads < 1) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "ans_encode16: bad arguments");
        return NULL;
    }
    Py_ssize_t nchunks = (n + chunk - 1) / chunk, total = -1;
    int use_joint = contexts && n >= CONTEXT_MIN;
    PyObject *res = PyBytes_FromStringAndSize(NULL, 2 * n + 64); /* shrunk to size at the end */
    if (!res) { PyBuffer_Release(&b); return NULL; }
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(res), *tmp_planes, *tmp_work;
    uint8_t *planes = tls_scratch(0, 2 * n + 1, &tmp_planes);
    uint8_t *work = tls_scratch(1, (size_t)chunk_region(nchunks, chunk, MAX_LANES) + 1, &tmp_work);
    int64_t *hist = calloc((nchunks ? nchunks : 1) * (use_joint ? 65536 : 512), sizeof(int64_t));
    plane_plan *pl = malloc(2 * sizeof(plane_plan));
    Py_BEGIN_ALLOW_THREADS
    if (planes && work && hist && pl) {
        prep_job pj = {b.buf, planes, planes + n, n, chunk, rotate, use_joint, hist};
        parallel_for(threads, nchunks, prep_chunk, &pj);
        int64_t *joint = NULL, top[256] = {0}, low[256] = {0};
        if (use_joint) {
            joint = hist;
            for (Py_ssize_t i = 1; i < nchunks; i++)
                for (int q = 0; q < 65536; q++) joint[q] += hist[i * 65536 + q];
            for (int v = 0; v < 256; v++)
                for (int s = 0; s < 256; s++) { top[v] += joint[256 * v + s]; low[s] += joint[256 * v + s]; }
        } else {
            for (Py_ssize_t i = 0; i < nchunks; i++)
                for (int s = 0; s < 256; s++) { top[s] += hist[i * 512 + s]; low[s] += hist[i * 512 + 256 + s]; }
        }
        plan_plane(top, NULL, n, chunk, P, lanes, &pl[0]);
        plan_plane(low, joint, n, chunk, P, lanes, &pl[1]);
        Py_ssize_t a = write_plane(planes, NULL, n, chunk, P, &pl[0], top, threads, work, out);
        Py_ssize_t c = a < 0 ? -1 : write_plane(planes + n, planes, n, chunk, P, &pl[1], low, threads, work, out + a);
        if (a >= 0 && c >= 0) total = a + c;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    free(tmp_planes); free(tmp_work); free(hist); free(pl);
    if (total < 0) {
        Py_DECREF(res);
        return PyErr_NoMemory();
    }
    if (_PyBytes_Resize(&res, total) < 0) return NULL;
    return res;
}

/* ---------------------------------------------------------- Huffman, DFloat11 layout
 * bf16 = sign | exponent(8) | mantissa(7). The exponent is Huffman coded, MSB-first into
 * one bit stream; the sign+mantissa byte ((v >> 8) & 0x80 | v & 0x7f) is stored raw.
 * The stream is cut into blocks of `block` elements; offsets[b] is the bit position
 * where block b starts, so blocks decode independently (on CPU threads or GPU threads).
 */

static PyObject *bf16_split(PyObject *self, PyObject *args) {
    Py_buffer b[3];
    if (!PyArg_ParseTuple(args, "y*w*w*", &b[0], &b[1], &b[2])) return NULL;
    Py_ssize_t n = b[0].len / 2;
    if (get_buffers(b, 3) < 0 || b[0].len % 2 || b[1].len != n || b[2].len != n) {
        release(b, 3);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bf16_split: bad sizes");
        return NULL;
    }
    const uint8_t *src = b[0].buf;
    uint8_t *exp = b[1].buf, *sm = b[2].buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        uint16_t v; memcpy(&v, src + 2 * i, 2);
        exp[i] = (uint8_t)(v >> 7);
        sm[i] = (uint8_t)(((v >> 8) & 0x80) | (v & 0x7f));
    }
    Py_END_ALLOW_THREADS
    release(b, 3);
    Py_RETURN_NONE;
}

/* huff_encode(exp u8, code u32[256], length u8[256], block, dst, offsets u64[nblocks])
 * -> number of bits written. dst needs n*max_len/8 + 16 bytes; offsets are relative to
 * dst. */
static PyObject *huff_encode(PyObject *self, PyObject *args) {
    Py_buffer b[5];
    Py_ssize_t block;
    if (!PyArg_ParseTuple(args, "y*y*y*nw*w*", &b[0], &b[1], &b[2], &block, &b[3], &b[4]))
        return NULL;
    Py_ssize_t n = b[0].len;
    Py_ssize_t nblocks = block > 0 ? (n + block - 1) / block : -1;
    const uint8_t *len = b[2].buf;
    int maxlen = 0;
    if (b[2].len == 256)
        for (int s = 0; s < 256; s++) maxlen = len[s] > maxlen ? len[s] : maxlen;
    if (get_buffers(b, 5) < 0 || b[1].len != 256 * 4 || b[2].len != 256 || block < 1 ||
        maxlen > 32 || b[4].len != nblocks * 8 || b[3].len < (n * maxlen + 7) / 8 + 16) {
        release(b, 5);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "huff_encode: bad arguments");
        return NULL;
    }
    const uint8_t *sym = b[0].buf;
    const uint32_t *code = b[1].buf;
    uint8_t *dst = b[3].buf;
    uint64_t *offsets = b[4].buf;
    int bad = 0;
    uint64_t total = 0;
    Py_BEGIN_ALLOW_THREADS
    uint64_t acc = 0; /* bits are kept left-aligned in acc */
    int nacc = 0;
    uint8_t *p = dst;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i % block == 0) offsets[i / block] = (uint64_t)(p - dst) * 8 + nacc;
        uint32_t l = len[sym[i]];
        if (!l) { bad = 1; break; }
        acc |= (uint64_t)code[sym[i]] << (64 - nacc - l);
        nacc += l;
        if (nacc >= 32) {
            uint32_t hi = __builtin_bswap32((uint32_t)(acc >> 32));
            memcpy(p, &hi, 4);
            p += 4; acc <<= 32; nacc -= 32;
        }
    }
    total = (uint64_t)(p - dst) * 8 + nacc;
    while (nacc > 0) { *p++ = (uint8_t)(acc >> 56); acc <<= 8; nacc -= 8; }
    Py_END_ALLOW_THREADS
    release(b, 5);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "huff_encode: symbol without a code");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(total);
}

/* The CPU decoder reads the next K = min(maxlen, MULTI_BITS) bits through a table that
 * gives up to MULTI_MAX whole codes at once (exponent codes average under 3 bits, so one
 * lookup usually yields four): exponents in bytes 0-5, their count in bits 56-58 and
 * their total length in bits 59-63. Count 0: the first code is longer than K bits
 * (only when maxlen > MULTI_BITS) or no code starts so; lut32 (2^maxlen entries of
 * length << 16 | exponent << 7, 0 for a prefix no code uses) then decides. */
#define MULTI_BITS 12
#define MULTI_MAX 6

static uint64_t *build_multi_lut(const uint32_t *lut32, int maxlen, int K) {
    uint64_t *m = malloc(sizeof(uint64_t) << K);
    for (uint32_t idx = 0; m && idx < (1u << K); idx++) {
        uint64_t entry = 0;
        uint32_t used = 0, cnt = 0;
        while (cnt < MULTI_MAX) {
            uint32_t rest = (idx << used) & ((1u << K) - 1); /* the bits after `used`, zero-padded */
            uint32_t e = lut32[(size_t)rest << (maxlen - K)], l = e >> 16;
            if (e == 0 || l > K - used) break; /* the code does not lie wholly inside the K bits */
            entry |= (uint64_t)((e >> 7) & 0xff) << (8 * cnt);
            used += l;
            cnt++;
        }
        m[idx] = entry | (uint64_t)cnt << 56 | (uint64_t)used << 59;
    }
    return m;
}

typedef struct {
    const uint8_t *stream;
    const uint32_t *lut32;
    const uint64_t *mlut;
    int maxlen, K;
} huff_dec;

/* The full table's entry for the code at bit `pos` (length << 16 | exponent << 7; 0: a
 * prefix no code uses). */
static inline uint32_t huff_one(const huff_dec *h, uint64_t pos) {
    return h->lut32[(load_be64(h->stream + (pos >> 3)) << (pos & 7)) >> (64 - h->maxlen)];
}

/* One lookup: up to MULTI_MAX exponents written at *o (8 bytes stored; the caller leaves
 * room), *o and *pos advanced; returns 1 on a prefix no code uses. */
static inline __attribute__((always_inline)) int huff_multi_step(const huff_dec *h, uint64_t *pos, uint8_t **o) {
    uint64_t m = h->mlut[(load_be64(h->stream + (*pos >> 3)) << (*pos & 7)) >> (64 - h->K)];
    int bad = 0;
    if (__builtin_expect(!(m & (7ull << 56)), 0)) {
        uint32_t e = huff_one(h, *pos);
        bad = e == 0;
        m = ((e >> 7) & 0xff) | 1ull << 56 | (uint64_t)(e >> 16) << 59;
    }
    memcpy(*o, &m, 8);
    *o += (m >> 56) & 7;
    *pos += m >> 59;
    return bad;
}

/* One lane to its end, each read checked against the stream's end (corrupt input may point
 * anywhere): several symbols a lookup while MULTI_MAX remain, then one at a time. */
static int huff_lane_checked(const huff_dec *h, uint64_t *pos, uint8_t *o, const uint8_t *end, uint64_t nbits) {
    int bad = 0;
    while (end - o >= MULTI_MAX && !bad) {
        if (*pos > nbits) return 1;
        bad = huff_multi_step(h, pos, &o);
    }
    while (o < end && !bad) {
        if (*pos > nbits) return 1;
        uint32_t e = huff_one(h, *pos);
        bad = e == 0;
        *o++ = (uint8_t)(e >> 7);
        *pos += e >> 16;
    }
    return bad;
}

/* bf16 elements from exponents and sign-mantissa bytes (vectorised by the compiler) */
static void join_bf16(const uint8_t *restrict exp, const uint8_t *restrict sm, uint8_t *restrict dst, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        uint16_t v = (uint16_t)(((sm[i] & 0x80) << 8) | (exp[i] << 7) | (sm[i] & 0x7f));
        memcpy(dst + 2 * i, &v, 2);
    }
}

/* Decode blocks [first, last) of a bf16 exponent stream; returns 1 if corrupt (or -2 when
 * memory ran out). The stream has 8 readable bytes past nbits. Eight blocks decode in
 * lockstep so that their dependency chains overlap, into a buffer of exponents that is
 * then joined with the sign-mantissa bytes. */
static int huff_blocks_bf16(const huff_dec *h, uint64_t nbits, const uint64_t *offsets, Py_ssize_t nblocks,
                            Py_ssize_t block, const uint8_t *sm, uint8_t *dst, Py_ssize_t n, Py_ssize_t first,
                            Py_ssize_t last) {
    int bad = 0;
    /* a block may only end where the next begins (or at nbits); a block of `block` symbols
     * reads at most block * maxlen bits past its start. */
    for (Py_ssize_t k = first; k < last && !bad; k++) {
        uint64_t end = k + 1 < nblocks ? offsets[k + 1] : nbits;
        if (offsets[k] > end || end > nbits) bad = 1;
    }
    const Py_ssize_t stride = block + 8; /* a lane's 8-byte stores stay inside its own room */
    uint8_t *exp = malloc((size_t)(8 * stride));
    if (!exp) return -2;
    for (Py_ssize_t k = first; k < last && !bad; k += 8) {
        int lanes = last - k < 8 ? (int)(last - k) : 8;
        uint64_t p[8];
        uint8_t *o[8], *end[8];
        int fast = lanes == 8;
        for (int j = 0; j < lanes; j++) {
            Py_ssize_t a = (k + j) * block, cnt = a + block <= n ? block : n - a;
            p[j] = offsets[k + j];
            o[j] = exp + j * stride;
            end[j] = o[j] + cnt;
            /* lockstep only while every read surely stays inside the stream */
            fast &= cnt == block && p[j] + (uint64_t)block * h->maxlen <= nbits;
        }
        if (fast) {
            for (;;) {
                Py_ssize_t rounds = block;
                for (int j = 0; j < 8; j++) rounds = end[j] - o[j] < rounds ? end[j] - o[j] : rounds;
                rounds /= MULTI_MAX; /* none of these lookups overruns a lane */
                if (rounds == 0 || bad) break;
                for (Py_ssize_t r = 0; r < rounds; r++)
                    for (int j = 0; j < 8; j++) bad |= huff_multi_step(h, &p[j], &o[j]);
            }
        }
        for (int j = 0; j < lanes && !bad; j++) {
            bad |= huff_lane_checked(h, &p[j], o[j], end[j], nbits);
            bad |= p[j] != (k + j + 1 < nblocks ? offsets[k + j + 1] : nbits);
        }
        if (bad) break;
        for (int j = 0; j < lanes; j++) {
            Py_ssize_t a = (k + j) * block;
            join_bf16(exp + j * stride, sm + a, dst + 2 * a, end[j] - (exp + j * stride));
        }
    }
    free(exp);
    return bad;
}

/* A whole `dfloat11` payload (layout in nzip/codecs/dfloat11.py), parsed and checked here. */
typedef struct {
    huff_dec h;
    const uint8_t *sm;
    uint64_t nbits;
    uint64_t *offsets;
    Py_ssize_t n, nblocks, block, per;
    uint8_t *dst;
    int bad; /* 1 corrupt, 2 out of memory */
} df11_job;

static void df11_range(void *arg, Py_ssize_t i) {
    df11_job *j = arg;
    Py_ssize_t first = i * j->per, last = first + j->per < j->nblocks ? first + j->per : j->nblocks;
    int rc = huff_blocks_bf16(&j->h, j->nbits, j->offsets, j->nblocks, j->block, j->sm, j->dst, j->n, first, last);
    if (rc) __atomic_store_n(&j->bad, rc < 0 ? 2 : 1, __ATOMIC_RELAXED);
}

static int df11_decode_core(const uint8_t *buf, Py_ssize_t len, Py_ssize_t n, Py_ssize_t block, int limit,
                            uint8_t *dst, int threads) {
    cursor r = {buf, buf + len};
    const uint8_t *bm, *lens, *bits, *stream, *sm;
    if (take(&r, 32, &bm) < 0) return -1;
    int k = 0, maxlen = 0;
    for (int i = 0; i < 32; i++) k += __builtin_popcount(bm[i]);
    if (take(&r, k, &lens) < 0) return -1;
    Py_ssize_t nblocks = (n + block - 1) / block;
    if (take(&r, 2 * nblocks, &bits) < 0) return -1;
    uint64_t nbits = 0;
    uint64_t *offsets = malloc(sizeof(uint64_t) * (nblocks ? nblocks : 1));
    if (!offsets) return -2;
    for (Py_ssize_t i = 0; i < nblocks; i++) {
        offsets[i] = nbits;
        nbits += (uint64_t)(bits[2 * i] | (bits[2 * i + 1] << 8));
    }
    if (take(&r, (Py_ssize_t)((nbits + 7) / 8 + 8), &stream) < 0 || take(&r, n, &sm) < 0 || r.p != r.end) {
        free(offsets);
        return -1;
    }
    if (n == 0) { free(offsets); return 0; }
    /* symbols present, in canonical order (length, symbol); lengths must form a prefix code */
    int syms[256], m = 0;
    uint8_t len_of[256];
    for (int s = 0; s < 256; s++)
        if (bm[s >> 3] & (0x80 >> (s & 7))) { len_of[s] = lens[m]; syms[m++] = s; }
    uint64_t kraft = 0;
    for (int i = 0; i < m; i++) {
        int l = len_of[syms[i]];
        if (l < 1 || l > limit) { free(offsets); return -1; }
        maxlen = l > maxlen ? l : maxlen;
    }
    if (m == 0) { free(offsets); return -1; }
    for (int i = 0; i < m; i++) kraft += (uint64_t)1 << (limit - len_of[syms[i]]);
    if (kraft > ((uint64_t)1 << limit)) { free(offsets); return -1; }
    for (int i = 1; i < m; i++) /* stable insertion sort by length */
        for (int j = i; j > 0 && len_of[syms[j]] < len_of[syms[j - 1]]; j--) { int t = syms[j]; syms[j] = syms[j - 1]; syms[j - 1] = t; }
    uint32_t *lut32 = calloc((size_t)1 << maxlen, sizeof(uint32_t));
    if (!lut32) { free(offsets); return -2; }
    size_t pos = 0;
    for (int i = 0; i < m; i++) {
        int l = len_of[syms[i]];
        uint32_t e = ((uint32_t)l << 16) | ((uint32_t)syms[i] << 7);
        for (size_t q = 0; q < ((size_t)1 << (maxlen - l)); q++) lut32[pos++] = e;
    }
    int K = maxlen < MULTI_BITS ? maxlen : MULTI_BITS;
    uint64_t *mlut = build_multi_lut(lut32, maxlen, K);
    if (!mlut) { free(lut32); free(offsets); return -2; }
    int t = threads < 1 ? 1 : threads;
    Py_ssize_t per = (nblocks + t - 1) / t;
    df11_job j = {{stream, lut32, mlut, maxlen, K}, sm, nbits, offsets, n, nblocks, block, per ? per : 1, dst, 0};
    parallel_for(t, (nblocks + j.per - 1) / j.per, df11_range, &j);
    free(mlut);
    free(lut32);
    free(offsets);
    return j.bad == 2 ? -2 : j.bad ? -1 : 0;
}

/* dfloat11_decode(payload, block, limit, out[2n], threads) -> 0, -1 (corrupt), -2 (memory) */
static PyObject *dfloat11_decode(PyObject *self, PyObject *args) {
    Py_buffer b[2];
    Py_ssize_t block;
    int limit, threads;
    if (!PyArg_ParseTuple(args, "y*niw*i", &b[0], &block, &limit, &b[1], &threads)) return NULL;
    if (get_buffers(b, 2) < 0 || b[1].len % 2 || block < 1 || limit < 1 || limit > 16) {
        release(b, 2);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "dfloat11_decode: bad arguments");
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = df11_decode_core(b[0].buf, b[0].len, b[1].len / 2, block, limit, b[1].buf, threads);
    Py_END_ALLOW_THREADS
    release(b, 2);
    return PyLong_FromLong(rc);
}

static void df11_batch_one(void *arg, Py_ssize_t i) {
    batch_job *j = (batch_job *)arg + i;
    j->rc = df11_decode_core(j->payload.buf, j->payload.len, j->out.len / 2, j->size, j->param, j->out.buf, 1);
}

/* dfloat11_decode_batch([(payload, out, block, limit), ...], threads) -> [rc, ...] */
static PyObject *dfloat11_decode_batch(PyObject *self, PyObject *args) {
    return run_batch(args, df11_batch_one, 16, "dfloat11_decode_batch");
}

/* ------------------------------------------------- the DFloat11 project's own layout */

/* Their exponent stream is one Huffman stream (MSB-first, any prefix code of at most 32
 * bits) decoded through byte-indexed tables: luts[0][next byte] is an exponent, or, when
 * >= 240, a pointer 256 - r to table r for the next byte; the last table holds each
 * exponent's code length. For parallel decoding the stream is cut into windows of
 * window_bytes (threads_per_block * bytes_per_thread): `starts[k]` is the first element
 * whose code starts in window k, and 5-bit `gaps` give, per thread of bytes_per_thread,
 * the offset of the first code starting in it. Here one CPU thread decodes a window. */
typedef struct {
    const uint8_t *luts, *codes, *sm, *gaps;
    const uint32_t *starts;
    Py_ssize_t n_luts, n_bytes, n, nwin, window_bytes, gap_index_step;
    uint8_t *dst;
    int bad;
} df11ref_job;

static inline uint64_t df11ref_peek(const uint8_t *codes, Py_ssize_t n_bytes, uint64_t bit) {
    /* the 64 bits from `bit` on, MSB-first; zeros past the end */
    Py_ssize_t at = (Py_ssize_t)(bit >> 3);
    unsigned skip = (unsigned)(bit & 7);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | (uint64_t)(at + i < n_bytes ? codes[at + i] : 0);
    if (skip) v = (v << skip) | ((uint64_t)(at + 8 < n_bytes ? codes[at + 8] : 0) >> (8 - skip));
    return v;
}

static void df11ref_window(void *arg, Py_ssize_t k) {
    df11ref_job *j = arg;
    const uint32_t first = j->starts[k], last = j->starts[k + 1];
    if (first > last || last > (uint64_t)j->n) { j->bad = 1; return; }
    Py_ssize_t g = k * j->gap_index_step; /* the window's first thread */
    uint64_t gbit = (uint64_t)g * 5;
    unsigned gap = (unsigned)((((unsigned)j->gaps[gbit >> 3] << 8) | j->gaps[(gbit >> 3) + 1]) >> (11 - (gbit & 7))) & 31;
    uint64_t bit = (uint64_t)k * j->window_bytes * 8 + gap, end = (uint64_t)(k + 1) * j->window_bytes * 8;
    const uint8_t *lens = j->luts + 256 * (j->n_luts - 1);
    for (uint32_t e = first; e < last; e++) {
        if (bit >= end) { j->bad = 1; return; } /* every code counted here starts in the window */
        uint64_t v64 = df11ref_peek(j->codes, j->n_bytes, bit);
        unsigned v = j->luts[v64 >> 56];
        for (int level = 1; v >= 240; level++) {
            Py_ssize_t row = 256 - v;
            if (level > 3 || row >= j->n_luts - 1) { j->bad = 1; return; }
            v = j->luts[256 * row + ((v64 >> (56 - 8 * level)) & 0xff)];
        }
        unsigned len = lens[v];
        if (len == 0) { j->bad = 1; return; }
        uint8_t s = j->sm[e];
        uint16_t out = (uint16_t)(((s & 0x80) << 8) | (v << 7) | (s & 0x7f));
        memcpy(j->dst + 2 * (Py_ssize_t)e, &out, 2);
        bit += len;
    }
}

/* dfloat11_project_decode(luts, codes, sign_mantissa, starts_u32, gaps, threads_per_block,
 *                         bytes_per_thread, out[2n], threads) -> 0 / -1 (corrupt) */
static PyObject *dfloat11_project_decode(PyObject *self, PyObject *args) {
    Py_buffer b[6];
    Py_ssize_t tpb, bpt;
    int threads;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*nnw*i", &b[0], &b[1], &b[2], &b[3], &b[4], &tpb, &bpt, &b[5], &threads))
        return NULL;
    if (get_buffers(b, 6) < 0 || b[0].len % 256 || b[0].len < 512 || b[3].len % 4 || b[3].len < 4 || tpb < 1 ||
        bpt < 1 || b[5].len % 2 || b[2].len * 2 != b[5].len) {
        release(b, 6);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "dfloat11_project_decode: bad arguments");
        return NULL;
    }
    df11ref_job j = {b[0].buf, b[1].buf, b[2].buf, b[4].buf, b[3].buf, b[0].len / 256, b[1].len, b[2].len,
                     b[3].len / 4 - 1, tpb * bpt, tpb, b[5].buf, 0};
    /* every window's first gap must lie inside the gaps array */
    if ((uint64_t)(j.nwin ? j.nwin - 1 : 0) * tpb * 5 / 8 + 2 > (uint64_t)b[4].len ||
        (uint64_t)j.nwin * j.window_bytes < (uint64_t)j.n_bytes || (j.nwin && j.starts[j.nwin] != (uint32_t)j.n))
        j.bad = 1;
    if (!j.bad) {
        Py_BEGIN_ALLOW_THREADS
        parallel_for(threads < 1 ? 1 : threads, j.nwin, df11ref_window, &j);
        Py_END_ALLOW_THREADS
    }
    release(b, 6);
    return PyLong_FromLong(j.bad ? -1 : 0);
}

/* set_simd(flag) -> whether SIMD is now in use (tests run both paths) */
static PyObject *set_simd(PyObject *self, PyObject *args) {
    int on;
    if (!PyArg_ParseTuple(args, "p", &on)) return NULL;
#if HAVE_SIMD
    simd_enabled = -1;
    if (on) { use_simd(); } else { simd_enabled = 0; }
#endif
    return PyBool_FromLong(use_simd());
}


/* ------------------------------------------------------------ adaptive context coder
 * A range coder (LZMA's carry scheme) over symbols 0..K-1, each coded with the frequency
 * table of its context, and every table learning as it goes: encoder and decoder update
 * alike, so no table is stored. The caller computes the contexts from what the decoder
 * will already know (other fields, earlier streams), which keeps this loop generic.
 * Tables start flat (1 each), grow by ADAPT_INC per symbol and halve past ADAPT_LIMIT,
 * which follows drifting statistics and keeps total <= 2^16 (range >= 2^24: >= 2^8 a unit).
 */

#define ADAPT_INC 24
#define ADAPT_LIMIT (1u << 16)

static int adapt_tables(uint16_t **freq, uint32_t **total, Py_ssize_t nctx, Py_ssize_t K) {
    *freq = malloc((size_t)nctx * (size_t)K * sizeof(uint16_t));
    *total = malloc((size_t)nctx * sizeof(uint32_t));
    if (!*freq || !*total) { free(*freq); free(*total); return -1; }
    for (Py_ssize_t i = 0; i < nctx * K; i++) (*freq)[i] = 1;
    for (Py_ssize_t c = 0; c < nctx; c++) (*total)[c] = (uint32_t)K;
    return 0;
}

static inline void adapt_update(uint16_t *f, uint32_t *total, Py_ssize_t K, Py_ssize_t s) {
    f[s] += ADAPT_INC;
    *total += ADAPT_INC;
    if (*total > ADAPT_LIMIT - ADAPT_INC) {
        uint32_t t = 0;
        for (Py_ssize_t k = 0; k < K; k++) { f[k] = (uint16_t)((f[k] + 1) >> 1); t += f[k]; }
        *total = t;
    }
}

typedef struct { uint64_t low; uint32_t range; uint8_t cache; uint64_t pending; uint8_t *dst; Py_ssize_t at, cap; } rc_enc;

static inline void rc_shift(rc_enc *e) {
    if ((uint32_t)e->low < 0xFF000000u || (e->low >> 32)) {
        uint8_t carry = (uint8_t)(e->low >> 32), b = e->cache;
        do {
            if (e->at < e->cap) e->dst[e->at] = (uint8_t)(b + carry);
            e->at++;
            b = 0xFF;
        } while (--e->pending);
        e->cache = (uint8_t)(e->low >> 24);
    }
    e->pending++;
    e->low = (e->low & 0x00FFFFFFu) << 8;
}

/* Both directions take (bytes or symbols, ctx u32[n], nctx, K, symbols or bytes): parses
 * them into b[3], checks the sizes and that every context (and, given, symbol) is in range;
 * returns n, the symbols' count (the u16 buffer is b[sym_at]), or -1 with the error set. */
static Py_ssize_t adaptive_args(PyObject *args, Py_buffer *b, Py_ssize_t *nctx, Py_ssize_t *K, int sym_at,
                                const char *name) {
    if (!PyArg_ParseTuple(args, "y*y*nnw*", &b[0], &b[1], nctx, K, &b[2])) return -1;
    if (get_buffers(b, 3) < 0) { release(b, 3); return -1; }
    Py_ssize_t n = b[sym_at].len / 2;
    if (b[1].len != n * 4 || *K < 1 || *K > 4096 || *nctx < 1 || *nctx * *K > (1 << 26)) {
        release(b, 3);
        PyErr_Format(PyExc_ValueError, "%s: bad sizes", name);
        return -1;
    }
    const uint16_t *sym = sym_at == 0 ? b[0].buf : NULL;  /* the decoder's are still to come */
    const uint32_t *ctx = b[1].buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (ctx[i] >= *nctx || (sym && sym[i] >= *K)) {
            release(b, 3);
            PyErr_Format(PyExc_ValueError, "%s: symbol or context out of range", name);
            return -1;
        }
    }
    return n;
}

/* adaptive_encode(sym u16[n], ctx u32[n], nctx, K, dst) -> bytes written (> len(dst): too small) */
static PyObject *adaptive_encode(PyObject *self, PyObject *args) {
    Py_buffer b[3];
    Py_ssize_t nctx, K;
    Py_ssize_t n = adaptive_args(args, b, &nctx, &K, 0, "adaptive_encode");
    if (n < 0) return NULL;
    const uint16_t *sym = b[0].buf;
    const uint32_t *ctx = b[1].buf;
    uint16_t *freq; uint32_t *total;
    if (adapt_tables(&freq, &total, nctx, K) < 0) { release(b, 3); return PyErr_NoMemory(); }
    rc_enc e = {0, 0xFFFFFFFFu, 0, 1, b[2].buf, 0, b[2].len};
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        uint16_t *f = freq + (size_t)ctx[i] * K;
        uint32_t cum = 0;
        for (Py_ssize_t k = 0; k < sym[i]; k++) cum += f[k];
        uint32_t r = e.range / total[ctx[i]];
        e.low += (uint64_t)r * cum;
        e.range = r * f[sym[i]];
        while (e.range < (1u << 24)) { e.range <<= 8; rc_shift(&e); }
        adapt_update(f, &total[ctx[i]], K, sym[i]);
    }
    for (int i = 0; i < 5; i++) rc_shift(&e);
    Py_END_ALLOW_THREADS
    free(freq); free(total);
    release(b, 3);
    return PyLong_FromSsize_t(e.at);
}

/* adaptive_decode(src, ctx u32[n], nctx, K, out u16[n]) -> bytes consumed (> len(src): truncated) */
static PyObject *adaptive_decode(PyObject *self, PyObject *args) {
    Py_buffer b[3];
    Py_ssize_t nctx, K;
    Py_ssize_t n = adaptive_args(args, b, &nctx, &K, 2, "adaptive_decode");
    if (n < 0) return NULL;
    const uint8_t *src = b[0].buf;
    const uint32_t *ctx = b[1].buf;
    uint16_t *out = b[2].buf;
    Py_ssize_t len = b[0].len, at = 0;
    uint16_t *freq; uint32_t *total;
    if (adapt_tables(&freq, &total, nctx, K) < 0) { release(b, 3); return PyErr_NoMemory(); }
    Py_BEGIN_ALLOW_THREADS
#define NEXT_BYTE() (at < len ? src[at++] : (at++, 0))
    uint32_t range = 0xFFFFFFFFu, code = 0;
    for (int i = 0; i < 5; i++) code = (code << 8) | NEXT_BYTE();
    for (Py_ssize_t i = 0; i < n; i++) {
        uint16_t *f = freq + (size_t)ctx[i] * K;
        uint32_t r = range / total[ctx[i]];
        uint32_t v = code / r;
        if (v >= total[ctx[i]]) v = total[ctx[i]] - 1;  /* only corrupt input gets here */
        uint32_t cum = 0;
        Py_ssize_t s = 0;
        while (s < K - 1 && cum + f[s] <= v) cum += f[s++];
        code -= r * cum;
        range = r * f[s];
        while (range < (1u << 24)) { range <<= 8; code = (code << 8) | NEXT_BYTE(); }
        out[i] = (uint16_t)s;
        adapt_update(f, &total[ctx[i]], K, s);
    }
#undef NEXT_BYTE
    Py_END_ALLOW_THREADS
    free(freq); free(total);
    release(b, 3);
    return PyLong_FromSsize_t(at);
}

/* ------------------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"planes_split", planes_split, METH_VARARGS, "planes_split(src, dst, itemsize, rotate)"},
    {"planes_join", planes_join, METH_VARARGS, "planes_join(src, dst, itemsize, rotate)"},
    {"set_simd", set_simd, METH_VARARGS, "set_simd(on) -> bool: use AVX-512 where the CPU has it"},
    {"histogram", histogram, METH_VARARGS, "histogram(src, counts_u64_256)"},
    {"rans_encode", rans_encode, METH_VARARGS, "rans_encode(sym, freq, P, lanes, dst[, top, ctxmap]) -> start"},
    {"rans_decode", rans_decode, METH_VARARGS, "rans_decode(src, freq, P, lanes, dst[, top, ctxmap[, other, sym_high, rotate]]) -> consumed"},
    {"ans_decode16", ans_decode16, METH_VARARGS, "ans_decode16(payload, chunk, P, rotate, out, threads[, scratch]) -> 0/-1/-2"},
    {"ans_decode16_batch", ans_decode16_batch, METH_VARARGS, "ans_decode16_batch(jobs, threads[, fault[, side]]) -> [rc]"},
    {"ans_encode16", ans_encode16, METH_VARARGS, "ans_encode16(data, rotate, P, lanes, chunk, contexts, threads) -> payload"},
    {"bf16_split", bf16_split, METH_VARARGS, "bf16_split(src, exp, sign_mantissa)"},
    {"huff_encode", huff_encode, METH_VARARGS, "huff_encode(exp, code, length, block, dst, offsets) -> nbits"},
    {"dfloat11_decode", dfloat11_decode, METH_VARARGS, "dfloat11_decode(payload, block, limit, out, threads) -> 0/-1/-2"},
    {"dfloat11_project_decode", dfloat11_project_decode, METH_VARARGS,
     "dfloat11_project_decode(luts, codes, sign_mantissa, starts, gaps, threads_per_block, bytes_per_thread, out, threads) -> 0/-1"},
    {"adaptive_encode", adaptive_encode, METH_VARARGS, "adaptive_encode(sym_u16, ctx_u32, nctx, K, dst) -> written"},
    {"adaptive_decode", adaptive_decode, METH_VARARGS, "adaptive_decode(src, ctx_u32, nctx, K, out_u16) -> consumed"},
    {"dfloat11_decode_batch", dfloat11_decode_batch, METH_VARARGS, "dfloat11_decode_batch(jobs, threads) -> [rc]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_entropy", "nzip's compiled entropy coders", -1, methods};

PyMODINIT_FUNC PyInit__entropy(void) { return PyModule_Create(&module); }
