// `ans` payloads of 16-bit types decoded on the GPU: one warp per chunk.
//
// A chunk of an `ans` payload has one rANS stream per byte plane, each with L interleaved
// states (lanes) that share one stream of 16-bit words, consumed in symbol order: symbol i
// belongs to state i % L, and a state that falls under RANS_L takes the next word. A warp
// decodes 32 consecutive symbols of both planes per step (L < 32: L symbols): thread t
// owns states t, t + 32, ... of each plane, the exponent it decodes picks the context of
// the low byte it decodes next (no trip through memory), and the element is joined,
// rotated back and written once. Each thread holds the word `t` places ahead in each
// stream; a renormalising thread takes the word of its rank among the renormalising
// threads (ballot, prefix popcount, shuffle): the CPU decoder's order, so the same bits.
// Raw planes are read as they are.
//
// Job row (int64 each), one per chunk:
//   0 out (u16*)  1 n (elements in the chunk)  2 rotate
//   plane 0: 3 method  4 data (stream or raw bytes)  5 bytes  6 lanes  7 table (u32*)
//   plane 1: 8 method  9 data  10 bytes  11 lanes  12 tables (u32*, contexts one after another)
//   13 context ids (u8[256]: table index of each exponent value; null without contexts)
//   14 precision
// Both coded planes of a chunk have the same lane count (the host checks). status[0] is
// set to 1 when a stream does not decode to exactly its bytes.

#define RANS_L (1u << 15)
#define JOB_FIELDS 15
#define FULL 0xffffffffu
#ifndef WARPS
#define WARPS 4
#endif

typedef long long i64;

struct Stream {
    const unsigned char *w;  // the words (little-endian u16, any alignment)
    i64 nwords, pos;
    unsigned next;           // word pos + t, prefetched
};

__device__ __forceinline__ unsigned word_at(const Stream &s, i64 k) {
    return k < s.nwords ? (unsigned)s.w[2 * k] | ((unsigned)s.w[2 * k + 1] << 8) : 0u;
}

// One step of one plane: decode the symbol of state x (if live), renormalise from the
// shared word stream. Returns the symbol.
__device__ __forceinline__ unsigned step(unsigned &x, const unsigned *__restrict__ tab, unsigned off, int P,
                                         bool live, Stream &s, int t, int &bad) {
    const unsigned e = live ? __ldg(tab + off + (x & ((1u << P) - 1))) : 0u;
    unsigned v = (((e >> 8) & 0xfff) + 1) * (x >> P) + (e >> 20);
    const bool need = live && v < RANS_L;
    const unsigned ballot = __ballot_sync(FULL, need);
    const int rank = __popc(ballot & ((1u << t) - 1));
    const unsigned word = __shfl_sync(FULL, s.next, rank & 31);
    if (need) {
        bad |= s.pos + rank >= s.nwords;
        v = (v << 16) | word;
    }
    if (live) x = v;
    s.pos += __popc(ballot);
    s.next = word_at(s, s.pos + t);
    return e & 0xff;
}

struct Plane {
    int method;  // 0 raw, 1 rANS, 2 rANS with contexts
    const unsigned char *data;
    i64 bytes;
    const unsigned *tab;
};

// Start a coded plane's stream: states from its head, the first words prefetched.
template <int PER>
__device__ __forceinline__ void open(const Plane &p, int L, unsigned (&x)[PER], Stream &s, int t, int &bad) {
    #pragma unroll
    for (int k = 0; k < PER; k++) {
        const int j = k * 32 + t;
        x[k] = RANS_L;
        if (p.method && j < L) {
            const unsigned char *q = p.data + 4 * j;
            x[k] = q[0] | (q[1] << 8) | (q[2] << 16) | ((unsigned)q[3] << 24);
            bad |= x[k] < RANS_L || x[k] >= (1u << 31);
        }
    }
    s.w = p.data + 4 * L;
    s.nwords = p.method ? (p.bytes - 4 * L) / 2 : 0;
    s.pos = 0;
    s.next = word_at(s, t);
    if (p.method) bad |= p.bytes < 4 * L || (p.bytes - 4 * L) % 2;
}

template <int PER>
__device__ __forceinline__ int finish(const Plane &p, int L, const unsigned (&x)[PER], const Stream &s, int t) {
    int bad = 0;
    if (!p.method) return 0;
    #pragma unroll
    for (int k = 0; k < PER; k++)
        if (k * 32 + t < L) bad |= x[k] != RANS_L;
    return bad | (s.pos != s.nwords);
}

// PER states per thread and plane: L = 32 * PER, or L < 32 with PER = 1 (G = L threads work).
template <int PER>
__device__ int decode_chunk(const Plane &hi, const Plane &lo, int L, unsigned short *__restrict__ out, i64 n,
                            int rotate, int P, const unsigned char *__restrict__ ctx_id) {
    const int t = threadIdx.x & 31;
    const int G = L < 32 ? L : 32;
    int bad = 0;
    unsigned x0[PER], x1[PER];
    Stream s0, s1;
    open<PER>(hi, L, x0, s0, t, bad);
    open<PER>(lo, L, x1, s1, t, bad);
    for (i64 i0 = 0; i0 < n; i0 += (i64)G * PER) {
        #pragma unroll
        for (int k = 0; k < PER; k++) {
            const i64 i = i0 + k * G + t;
            const bool live = t < G && i < n;
            unsigned h, l;
            if (hi.method) h = step(x0[k], hi.tab, 0, P, live, s0, t, bad);
            else h = live ? hi.data[i] : 0u;
            if (lo.method) l = step(x1[k], lo.tab, ctx_id ? (unsigned)__ldg(ctx_id + h) << P : 0u, P, live, s1, t, bad);
            else l = live ? lo.data[i] : 0u;
            if (live) {
                unsigned e16 = (h << 8) | l;
                if (rotate) e16 = ((e16 >> 1) | (e16 << 15)) & 0xffff;
                out[i] = (unsigned short)e16;
            }
        }
    }
    bad |= finish<PER>(hi, L, x0, s0, t) | finish<PER>(lo, L, x1, s1, t);
    return __any_sync(FULL, bad);
}

extern "C" __global__ void __launch_bounds__(32 * WARPS)
ans16_decode(const i64 *__restrict__ jobs, i64 njobs, int *__restrict__ status) {
    const i64 job = (i64)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (job >= njobs) return;
    const i64 *r = jobs + job * JOB_FIELDS;
    unsigned short *out = (unsigned short *)r[0];
    const i64 n = r[1];
    const int rotate = (int)r[2], P = (int)r[14];
    const Plane hi = {(int)r[3], (const unsigned char *)r[4], r[5], (const unsigned *)r[7]};
    const Plane lo = {(int)r[8], (const unsigned char *)r[9], r[10], (const unsigned *)r[12]};
    const int L = hi.method ? (int)r[6] : lo.method ? (int)r[11] : 32;
    const unsigned char *ctx_id = lo.method == 2 ? (const unsigned char *)r[13] : 0;
    int bad;
    if (L > 128 || L < 1 || (L > 32 && L % 32) || (hi.method && lo.method && r[6] != r[11])) bad = 1;
    else if (L <= 32) bad = decode_chunk<1>(hi, lo, L, out, n, rotate, P, ctx_id);
    else if (L == 64) bad = decode_chunk<2>(hi, lo, L, out, n, rotate, P, ctx_id);
    else if (L == 96) bad = decode_chunk<3>(hi, lo, L, out, n, rotate, P, ctx_id);
    else bad = decode_chunk<4>(hi, lo, L, out, n, rotate, P, ctx_id);
    if (bad && (threadIdx.x & 31) == 0) atomicExch(status, 1);
}
