// GPU decoder for nzip's `dfloat11` layout (nzip/codecs/dfloat11.py), compiled by NVRTC at
// run time (nzip/kernels/cuda.py). One thread decodes one block of the exponent stream:
// the block bit lengths of the format give every block's start, so no thread waits on
// another. A CTA decodes consecutive blocks of one tensor; a launch covers a whole batch of
// tensors (a table of jobs), so a transformer block is one launch.
//
// Device image of one tensor (built by the host, nzip/kernels/dfloat11.py):
//   lut      u16[1 << maxlen]  code length << 8 | exponent, indexed by the next maxlen
//                              bits; 0 where no code starts with those bits
//   multi    u64[1 << kbits]   kbits = min(maxlen, 11 by default): the codes wholly inside the next
//                              kbits bits, up to four: their exponents in bytes 0-3, their
//                              count in bits 32-34, the length of the first k of them in
//                              bits 32 + 4k (k = 1..4); count 0 where the first code is
//                              longer (or there is none): then `lut` decides
//   offsets  u64[nblocks + 1]  bit offset of each block, then the stream's length in bits
//   stream   bytes, MSB-first, readable 8 bytes past its end, 4-byte aligned
//   sm       n bytes sign << 7 | mantissa, 8-byte aligned
// A job (12 x i64): lut, offsets, stream, sm, out, n, stream bytes, block, maxlen, first CTA,
// multi, kbits.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#ifndef THREADS
#define THREADS 128
#endif
#ifndef SHARED_LUT_BITS
#define SHARED_LUT_BITS 14  // dfloat11_decode_any: larger tables are read through the L1 cache
#endif
#define JOB_FIELDS 12

struct Job {
    const u16* lut;
    const u64* offsets;
    const u32* words;
    const u8* sm;
    u16* out;
    i64 n;
    u64 last_word;  // reads are clamped to the stream (the format pads 8 bytes)
    int block, maxlen, first_cta;
    const u32* multi;
    int kbits;
};

__device__ __forceinline__ Job job_of(const i64* __restrict__ jobs, const int* __restrict__ cta_job) {
    const i64* j = jobs + JOB_FIELDS * cta_job[blockIdx.x];
    Job job;
    job.lut = (const u16*)j[0];
    job.offsets = (const u64*)j[1];
    job.words = (const u32*)j[2];
    job.sm = (const u8*)j[3];
    job.out = (u16*)j[4];
    job.n = j[5];
    job.last_word = ((u64)j[6] + 3) / 4 + 1;
    job.block = (int)j[7];
    job.maxlen = (int)j[8];
    job.first_cta = (int)j[9];
    job.multi = (const u32*)j[10];
    job.kbits = (int)j[11];
    return job;
}

__device__ __forceinline__ u32 be_word(const u32* __restrict__ words, u64 i, u64 last) {
    // clamped so that a corrupt block can never read past the stream
    return __byte_perm(__ldg(words + (i < last ? i : last)), 0, 0x0123);
}

__device__ __forceinline__ u32 bf16_of(u32 exponent, u32 sm) {
    return ((sm & 0x80u) << 8) | (exponent << 7) | (sm & 0x7fu);
}

// Any layout (block sizes that are not a multiple of 32, unaligned buffers): each thread
// writes its own block directly, one code at a time.
extern "C" __global__ void __launch_bounds__(THREADS)
dfloat11_decode_any(const i64* __restrict__ jobs, const int* __restrict__ cta_job, int* __restrict__ status) {
    extern __shared__ u16 shared_lut[];
    const Job job = job_of(jobs, cta_job);
    const u16* lut = job.lut;
    const i64 b = (i64)(blockIdx.x - job.first_cta) * THREADS + threadIdx.x;

    if (job.maxlen <= SHARED_LUT_BITS) {
        for (int i = threadIdx.x; i < (1 << job.maxlen); i += THREADS) shared_lut[i] = lut[i];
        __syncthreads();
        lut = shared_lut;
    }
    const i64 o = b * job.block;
    if (o >= job.n) return;
    const int count = (int)min((i64)job.block, job.n - o);
    const u64 start = job.offsets[b], end = job.offsets[b + 1];
    u64 w = start >> 5;
    const int skip = (int)(start & 31);
    // buf holds `avail` valid bits at its top; refilled 32 bits at a time
    u64 buf = (((u64)be_word(job.words, w, job.last_word) << 32) | be_word(job.words, w + 1, job.last_word)) << skip;
    int avail = 64 - skip;
    w += 2;
    const int shift = 64 - job.maxlen;
    u32 bad = 0;
    u64 used = 0;
    for (int i = 0; i < count; i++) {
        if (avail < 32) {
            buf |= (u64)be_word(job.words, w++, job.last_word) << (32 - avail);
            avail += 32;
        }
        const u32 e = lut[buf >> shift];
        bad |= (e == 0);
        const int len = e >> 8;
        buf <<= len;
        avail -= len;
        used += len;
        job.out[o + i] = (u16)bf16_of(e & 0xff, job.sm[o + i]);
    }
    if (bad || start + used != end) atomicOr(status, 1);
}

// The usual layout (block % 32 == 0, 16-byte aligned output, 8-byte aligned sign-mantissa
// bytes). Each step looks up the next kbits bits in `multi` (in shared memory) and takes up
// to four exponents at once (fewer where the block ends: the entry holds the length of each
// prefix, so no step branches); the exponents gather in a register (`pend`) and go to
// shared memory a word (four) at a time. Threads decode their blocks ROUND exponents at a
// time, then the CTA writes those rounds out together, so that loads and stores are whole
// 32-byte sectors (threads writing their own blocks directly hit 64 different sectors).
// LONG: codes longer than kbits exist (code_length_limit > 12), read from `lut` one by one.
#ifndef ROUND
#define ROUND 32
#endif
#define ROW_WORDS (ROUND / 4 + 1)  // padded so that threads store to distinct banks
#define PIECES (ROUND / 8)  // 8-value pieces a thread loads and stores per round
#ifndef MIN_CTAS
#define MIN_CTAS 1
#endif

// two bf16 from two exponents and two sign-mantissa bytes (each in bytes 0 and 2)
__device__ __forceinline__ u32 bf16_pair(u32 e, u32 s) {
    return ((s << 8) & 0x80008000u) | (e << 7) | (s & 0x007f007fu);
}

__device__ __forceinline__ uint4 bf16_eight(u32 w0, u32 w1, uint2 s8) {
    return make_uint4(bf16_pair(__byte_perm(w0, 0, 0x4140), __byte_perm(s8.x, 0, 0x4140)),
                      bf16_pair(__byte_perm(w0, 0, 0x4342), __byte_perm(s8.x, 0, 0x4342)),
                      bf16_pair(__byte_perm(w1, 0, 0x4140), __byte_perm(s8.y, 0, 0x4140)),
                      bf16_pair(__byte_perm(w1, 0, 0x4342), __byte_perm(s8.y, 0, 0x4342)));
}

template <bool LONG>
__device__ __forceinline__ void staged(const i64* __restrict__ jobs, const int* __restrict__ cta_job,
                                       int* __restrict__ status) {
    extern __shared__ u64 multi[];
    __shared__ u32 exps[THREADS * ROW_WORDS];
    const Job job = job_of(jobs, cta_job);
    const i64 first_block = (i64)(blockIdx.x - job.first_cta) * THREADS;
    const i64 b = first_block + threadIdx.x;
    const int block = job.block;

    for (int i = threadIdx.x; i < (1 << job.kbits); i += THREADS) multi[i] = __ldg((const u64*)job.multi + i);
    __syncthreads();

    const i64 o = b * block;
    const int count = o < job.n ? (int)min((i64)block, job.n - o) : 0;
    u64 w = 0, buf = 0;
    int avail = 0;
    u32 ahead0 = 0, ahead1 = 0;  // the next two stream words, requested early
    if (count) {
        w = job.offsets[b] >> 5;
        const int skip = (int)(job.offsets[b] & 31);
        buf = (((u64)be_word(job.words, w, job.last_word) << 32) | be_word(job.words, w + 1, job.last_word)) << skip;
        avail = 64 - skip;
        ahead0 = be_word(job.words, w + 2, job.last_word);
        ahead1 = be_word(job.words, w + 3, job.last_word);
    }
    // the pieces of 8 values this thread loads and stores in each round: rows piece_row +
    // j * (THREADS / (ROUND / 8)) of the CTA, part piece_part of the round (block % ROUND == 0,
    // so a piece is whole wherever it lies before n)
    const int piece_row = threadIdx.x / (ROUND / 8), piece_part = threadIdx.x % (ROUND / 8);
    const i64 piece0 = (first_block + piece_row) * block + piece_part * 8;
    const i64 piece_stride = (i64)(THREADS / (ROUND / 8)) * block;
    w += 4;
    const int kshift = 32 - job.kbits;
    u32 bad = 0;
    u64 pend = 0;                // decoded exponents not yet stored, lowest byte first
    int npend = 0, left = count;  // exponents in pend; exponents of the block not yet decoded
    for (int r = 0; r < block; r += ROUND) {
        // this thread's pieces of the round: their sign-mantissa bytes are requested now and
        // arrive while the exponents decode
        uint2 sms[PIECES];
#pragma unroll
        for (int j = 0; j < PIECES; j++) {
            const i64 at = piece0 + r + j * piece_stride;
            sms[j] = at + 8 <= job.n ? __ldg((const uint2*)(job.sm + at)) : make_uint2(0, 0);
        }
        // decode this thread's next ROUND exponents (fewer at its block's end); a step and a
        // store share one loop so that lanes needing more steps than others diverge little
        for (int stored = 0; stored < ROUND / 4;) {
            if (npend < 4 && left > 0) {
                if (avail < 32) {
                    buf |= (u64)ahead0 << (32 - avail);
                    avail += 32;
                    ahead0 = ahead1;
                    ahead1 = be_word(job.words, w++, job.last_word);
                }
                // count in bits 32-34, the length of the first k codes in bits 32 + 4k
                const u64 m = multi[(u32)(buf >> 32) >> kshift];
                const int count_here = (int)(m >> 32) & 7;
                int got = min(count_here, left);
                u32 syms = (u32)m, len = (u32)(m >> (32 + 4 * got)) & 15;
                if (count_here == 0) {
                    if (LONG) {  // a code longer than kbits (or none)
                        const u32 e = __ldg(job.lut + (u32)(buf >> (64 - job.maxlen)));
                        bad |= (e == 0);
                        got = 1;
                        len = e >> 8;
                        syms = e & 0xff;
                    } else {  // every code fits kbits: no code starts here
                        bad = 1;
                        got = left;  // stop decoding this block
                    }
                }
                pend |= (u64)syms << (8 * npend);
                npend += got;
                left -= got;
                buf <<= len;
                avail -= len;
            }
            if (npend >= 4 || left <= 0) {
                exps[threadIdx.x * ROW_WORDS + stored] = (u32)pend;
                pend >>= 32;
                npend = max(npend - 4, 0);
                stored++;
            }
        }
        __syncthreads();
        // write: the CTA's rows of this round, 8 values (16 bytes) per store
#pragma unroll 1
        for (int j = 0; j < PIECES; j++) {
            const i64 at = piece0 + r + j * piece_stride;
            const int row = piece_row + j * (THREADS / (ROUND / 8));
            const u32 w0 = exps[row * ROW_WORDS + 2 * piece_part], w1 = exps[row * ROW_WORDS + 2 * piece_part + 1];
            if (at + 8 <= job.n) {
                *(uint4*)(job.out + at) = bf16_eight(w0, w1, sms[0]);
            } else {
                for (int k = 0; at + k < job.n; k++) {
                    const u32 e = ((k < 4 ? w0 : w1) >> (8 * (k & 3))) & 0xff;
                    job.out[at + k] = (u16)bf16_of(e, job.sm[at + k]);
                }
            }
#pragma unroll
            for (int k = 0; k + 1 < PIECES; k++) sms[k] = sms[k + 1];  // static indices: registers
        }
        __syncthreads();
    }
    // the block's bits: from its first word, those loaded into buf less those still unused
    if (count && (bad || 32 * (w - 2) - avail != job.offsets[b + 1])) atomicOr(status, 1);
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_CTAS)
dfloat11_decode(const i64* __restrict__ jobs, const int* __restrict__ cta_job, int* __restrict__ status) {
    staged<false>(jobs, cta_job, status);
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_CTAS)
dfloat11_decode_long(const i64* __restrict__ jobs, const int* __restrict__ cta_job, int* __restrict__ status) {
    staged<true>(jobs, cta_job, status);
}
