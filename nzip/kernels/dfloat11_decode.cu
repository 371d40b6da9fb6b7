// GPU decoder for nzip's `dfloat11` layout (nzip/codecs/dfloat11.py), compiled by NVRTC at
// run time (nzip/kernels/cuda.py). One thread decodes one block of the exponent stream:
// the block bit lengths of the format give every block's start, so no thread waits on
// another. A CTA decodes consecutive blocks of one tensor; a launch covers a whole batch of
// tensors (a table of jobs), so a transformer block is one launch.
//
// Device image of one tensor (built by the host, nzip/kernels/dfloat11.py):
//   lut      u16[1 << maxlen]  code length << 8 | exponent, indexed by the next maxlen
//                              bits; 0 where no code starts with those bits
//   offsets  u64[nblocks + 1]  bit offset of each block, then the stream's length in bits
//   stream   bytes, MSB-first, readable 8 bytes past its end, 4-byte aligned
//   sm       n bytes sign << 7 | mantissa, 8-byte aligned
// A job (10 x i64): lut, offsets, stream, sm, out, n, stream bytes, block, maxlen, first CTA.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#ifndef THREADS
#define THREADS 128
#endif
#ifndef SHARED_LUT_BITS
#define SHARED_LUT_BITS 14  // larger tables are read through the L1 cache instead
#endif

__device__ __forceinline__ u32 be_word(const u32* __restrict__ words, u64 i, u64 last) {
    // clamped so that a corrupt block can never read past the stream
    return __byte_perm(__ldg(words + (i < last ? i : last)), 0, 0x0123);
}

__device__ __forceinline__ u32 bf16_of(u32 exponent, u32 sm) {
    return ((sm & 0x80u) << 8) | (exponent << 7) | (sm & 0x7fu);
}

// Any layout (block sizes that are not a multiple of 32, unaligned buffers): each thread
// writes its own block directly.
extern "C" __global__ void __launch_bounds__(THREADS)
dfloat11_decode_any(const i64* __restrict__ jobs, const int* __restrict__ cta_job, int* __restrict__ status) {
    extern __shared__ u16 shared_lut[];
    const i64* job = jobs + 10 * cta_job[blockIdx.x];
    const u16* lut = (const u16*)job[0];
    const u64* offsets = (const u64*)job[1];
    const u32* words = (const u32*)job[2];
    const u8* sm = (const u8*)job[3];
    u16* out = (u16*)job[4];
    const i64 n = job[5];
    const u64 last_word = ((u64)job[6] + 3) / 4 + 1;  // the format pads 8 bytes
    const int block = (int)job[7], maxlen = (int)job[8];
    const i64 b = (i64)(blockIdx.x - (int)job[9]) * THREADS + threadIdx.x;

    if (maxlen <= SHARED_LUT_BITS) {
        for (int i = threadIdx.x; i < (1 << maxlen); i += THREADS) shared_lut[i] = lut[i];
        __syncthreads();
        lut = shared_lut;
    }
    const i64 o = b * block;
    if (o >= n) return;
    const int count = (int)min((i64)block, n - o);
    const u64 start = offsets[b], end = offsets[b + 1];
    u64 w = start >> 5;
    const int skip = (int)(start & 31);
    // buf holds `avail` valid bits at its top; refilled 32 bits at a time
    u64 buf = (((u64)be_word(words, w, last_word) << 32) | be_word(words, w + 1, last_word)) << skip;
    int avail = 64 - skip;
    w += 2;
    const int shift = 64 - maxlen;
    u32 bad = 0;
    u64 used = 0;

#define REFILL()                                                             \
    if (avail < 32) {                                                        \
        buf |= (u64)be_word(words, w++, last_word) << (32 - avail);          \
        avail += 32;                                                         \
    }
#define SYMBOL(e)                                                            \
    {                                                                        \
        e = lut[buf >> shift];                                               \
        bad |= (e == 0);                                                     \
        const int len_ = e >> 8;                                             \
        buf <<= len_;                                                        \
        avail -= len_;                                                       \
        used += len_;                                                        \
    }

    int i = 0;
    // eight values per step as one 16-byte store when the layout is aligned (block % 8 == 0
    // and 16-byte aligned buffers, checked by the host); maxlen <= 16, so one refill feeds
    // two symbols
    if ((block & 7) == 0 && ((((u64)out) & 15) | (((u64)sm) & 7)) == 0) {
        for (; i + 8 <= count; i += 8) {
            const uint2 s8 = *(const uint2*)(sm + o + i);
            u32 r[4];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                u32 e0, e1;
                REFILL();
                SYMBOL(e0);
                SYMBOL(e1);
                const u32 s = k < 2 ? s8.x : s8.y;
                const int sh = (k & 1) * 16;
                r[k] = bf16_of(e0 & 0xff, (s >> sh) & 0xff) | (bf16_of(e1 & 0xff, (s >> (sh + 8)) & 0xff) << 16);
            }
            *(uint4*)(out + o + i) = make_uint4(r[0], r[1], r[2], r[3]);
        }
    }
    for (; i < count; i++) {
        u32 e;
        REFILL();
        SYMBOL(e);
        out[o + i] = (u16)bf16_of(e & 0xff, sm[o + i]);
    }
    if (bad || start + used != end) atomicOr(status, 1);
}

// The usual layout (block % 32 == 0, 16-byte aligned output, 8-byte aligned sign-mantissa
// bytes): threads decode their blocks ROUND exponents at a time into shared memory, then the
// CTA writes those rounds out together, so that loads and stores are whole 32-byte sectors
// (threads writing their own blocks directly hit 64 different sectors per instruction).
#ifndef ROUND
#define ROUND 32
#endif
#define ROW_WORDS (ROUND / 4 + 1)  // padded so that threads store to distinct banks

#define STAGED_SYMBOL(e)                                                     \
    {                                                                        \
        const u32 at_ = (u32)(buf >> shift);                                 \
        e = SHARED ? shared_lut[at_] : __ldg(lut + at_);                     \
        bad |= (e == 0);                                                     \
        const int len_ = e >> 8;                                             \
        buf <<= len_;                                                        \
        avail -= len_;                                                       \
        used += len_;                                                        \
    }

// SHARED: the lookup table is copied to shared memory (read with LDS), else read through
// the L1 cache (LDG); one template so that neither path pays for generic loads.
template <bool SHARED>
__device__ __forceinline__ void staged(const i64* __restrict__ job, int* __restrict__ status, u16* shared_lut,
                                       u32* exps) {
    const u16* __restrict__ lut = (const u16*)job[0];
    const u64* offsets = (const u64*)job[1];
    const u32* words = (const u32*)job[2];
    const u8* sm = (const u8*)job[3];
    u16* out = (u16*)job[4];
    const i64 n = job[5];
    const u64 last_word = ((u64)job[6] + 3) / 4 + 1;
    const int block = (int)job[7], maxlen = (int)job[8];
    const i64 first_block = (i64)(blockIdx.x - (int)job[9]) * THREADS;
    const i64 b = first_block + threadIdx.x;

    if (SHARED) {
        for (int i = threadIdx.x; i < (1 << maxlen); i += THREADS) shared_lut[i] = lut[i];
        __syncthreads();
    }
    const i64 o = b * block;
    const int count = o < n ? (int)min((i64)block, n - o) : 0;
    u64 start = 0, end = 0, w = 0, buf = 0;
    int avail = 0;
    u32 ahead = 0;  // the next stream word, loaded one refill early so that its latency hides
    if (count) {
        start = offsets[b];
        end = offsets[b + 1];
        w = start >> 5;
        const int skip = (int)(start & 31);
        buf = (((u64)be_word(words, w, last_word) << 32) | be_word(words, w + 1, last_word)) << skip;
        avail = 64 - skip;
        ahead = be_word(words, w + 2, last_word);
        w += 3;
    }
    const int shift = 64 - maxlen;
    u32 bad = 0;
    u64 used = 0;
    for (int r = 0; r < block; r += ROUND) {
        // this thread's pieces of the round: their sign-mantissa bytes are requested now and
        // arrive while the exponents decode
        uint2 sms[ROUND / 8];
#pragma unroll
        for (int j = 0; j < ROUND / 8; j++) {
            const int piece = threadIdx.x + j * THREADS, row = piece / (ROUND / 8), part = piece % (ROUND / 8);
            const i64 at = (first_block + row) * block + r + part * 8;
            const i64 row_end = min((first_block + row + 1) * block, n);
            sms[j] = at + 8 <= row_end ? __ldg((const uint2*)(sm + at)) : make_uint2(0, 0);
        }
        // decode: this thread's next ROUND exponents (fewer at its block's end)
        const int todo = min(ROUND, count - r);
#pragma unroll
        for (int k = 0; k < ROUND / 4; k++) {
            u32 packed = 0;
            if (4 * k < todo) {
#pragma unroll
                for (int q = 0; q < 4; q += 2) {
                    u32 e0, e1 = 0;
                    if (avail < 32) {
                        buf |= (u64)ahead << (32 - avail);
                        avail += 32;
                        ahead = be_word(words, w++, last_word);
                    }
                    STAGED_SYMBOL(e0);
                    if (4 * k + q + 1 < todo) STAGED_SYMBOL(e1);
                    packed |= ((e0 & 0xff) | ((e1 & 0xff) << 8)) << (8 * q);
                    if (4 * k + q + 2 >= todo) break;
                }
            }
            exps[threadIdx.x * ROW_WORDS + k] = packed;
        }
        __syncthreads();
        // write: the CTA's rows of this round, 8 values (16 bytes) per store
#pragma unroll
        for (int j = 0; j < ROUND / 8; j++) {
            const int piece = threadIdx.x + j * THREADS, row = piece / (ROUND / 8), part = piece % (ROUND / 8);
            const i64 at = (first_block + row) * block + r + part * 8;
            const i64 row_end = min((first_block + row + 1) * block, n);
            if (at >= row_end) continue;
            const u32 w0 = exps[row * ROW_WORDS + 2 * part], w1 = exps[row * ROW_WORDS + 2 * part + 1];
            if (at + 8 <= row_end) {
                const uint2 s8 = sms[j];
                uint4 v;
                v.x = bf16_of(w0 & 0xff, s8.x & 0xff) | (bf16_of((w0 >> 8) & 0xff, (s8.x >> 8) & 0xff) << 16);
                v.y = bf16_of((w0 >> 16) & 0xff, (s8.x >> 16) & 0xff) | (bf16_of(w0 >> 24, s8.x >> 24) << 16);
                v.z = bf16_of(w1 & 0xff, s8.y & 0xff) | (bf16_of((w1 >> 8) & 0xff, (s8.y >> 8) & 0xff) << 16);
                v.w = bf16_of((w1 >> 16) & 0xff, (s8.y >> 16) & 0xff) | (bf16_of(w1 >> 24, s8.y >> 24) << 16);
                *(uint4*)(out + at) = v;
            } else {
                for (int j = 0; at + j < row_end; j++) {
                    const u32 e = ((j < 4 ? w0 : w1) >> (8 * (j & 3))) & 0xff;
                    out[at + j] = (u16)bf16_of(e, sm[at + j]);
                }
            }
        }
        __syncthreads();
    }
    if (count && (bad || start + used != end)) atomicOr(status, 1);
}

extern "C" __global__ void __launch_bounds__(THREADS)
dfloat11_decode(const i64* __restrict__ jobs, const int* __restrict__ cta_job, int* __restrict__ status) {
    extern __shared__ u16 shared_lut[];
    __shared__ u32 exps[THREADS * ROW_WORDS];
    const i64* job = jobs + 10 * cta_job[blockIdx.x];
    if ((int)job[8] <= SHARED_LUT_BITS)
        staged<true>(job, status, shared_lut, exps);
    else
        staged<false>(job, status, shared_lut, exps);
}
