// `ans` payloads of 16-bit types decoded on the GPU: one warp per chunk.
//
// A chunk of an `ans` payload has one rANS stream per byte plane, each with L interleaved
// states (lanes) that share one stream of 16-bit words, consumed in symbol order: symbol i
// belongs to state i % L, and a state that falls under RANS_L takes the next word. A warp
// decodes 32 consecutive symbols at a time (L a multiple of 32: thread t owns states t,
// t + 32, ...; L < 32: L threads work), and finds where each renormalising thread's word
// is with a ballot and a prefix popcount: the order of the CPU decoder, so the same bits.
//
// Pass 1 decodes the exponent plane (the high byte after the rotation) into the high byte
// of each output element; pass 2 decodes the low plane, in context of that byte when the
// payload says so, joins both and rotates the element back. Raw planes are read as they are.
//
// Job row (int64 each), one per chunk:
//   0 out (u16*)  1 n (elements in the chunk)  2 rotate
//   plane 0: 3 method  4 data (stream or raw bytes)  5 bytes  6 lanes  7 table (u32*)
//   plane 1: 8 method  9 data  10 bytes  11 lanes  12 tables (u32*, contexts one after another)
//   13 context ids (u8[256]: table index of each exponent value; null without contexts)
//   14 precision
// status[0] is set to 1 when a stream does not decode to exactly its bytes.

#define RANS_L (1u << 15)
#define JOB_FIELDS 15
#define WARPS 4

typedef unsigned long long u64;
typedef long long i64;

struct Plane {
    int method;
    const unsigned char *data;
    i64 bytes;
    int lanes;
    const unsigned *tab;
};

// Decode one plane of one chunk. pass 0 writes the symbol as the element's high byte;
// pass 1 joins it, as the low byte, with the high byte already there. Returns 0 or 1 (corrupt).
template <int PASS>
__device__ int decode_plane(const Plane &p, unsigned short *out, i64 n, int rotate, int P,
                            const unsigned char *ctx_id) {
    const int t = threadIdx.x & 31;
    const int L = p.lanes;
    const unsigned mask = (1u << P) - 1;
    if (L < 1 || L > 128 || (L > 32 && (L & 31)) || p.bytes < 4 * L) return 1;
    const int group = L < 32 ? L : 32;  // symbols per step
    const int per = L < 32 ? 1 : L / 32; // states per thread
    unsigned x[4];
    int bad = 0;
    for (int s = 0; s < per; s++) {
        int j = s * 32 + t;
        x[s] = RANS_L;
        if (j < L) {
            const unsigned char *q = p.data + 4 * j;
            x[s] = q[0] | (q[1] << 8) | (q[2] << 16) | ((unsigned)q[3] << 24);
            bad |= x[s] < RANS_L || x[s] >= (1u << 31);
        }
    }
    const unsigned char *w = p.data + 4 * L;  // 16-bit words, little-endian, at any alignment
    const i64 nwords = (p.bytes - 4 * L) / 2;
    i64 wpos = 0;
    unsigned char *bytes = (unsigned char *)out;
    for (i64 i0 = 0; i0 < n; i0 += group) {
        const int s = (int)((i0 % L) / 32);  // which of this thread's states (L >= 32)
        const i64 i = i0 + t;
        const bool live = t < group && i < n;
        unsigned v = x[L < 32 ? 0 : s];
        unsigned sym = 0, need = 0;
        if (live) {
            unsigned off = 0;
            if (PASS == 1 && ctx_id) off = (unsigned)ctx_id[bytes[2 * i + 1]] << P;
            unsigned e = __ldg(p.tab + off + (v & mask));
            sym = e & 0xff;
            v = (((e >> 8) & 0xfff) + 1) * (v >> P) + (e >> 20);
            need = v < RANS_L;
        }
        unsigned ballot = __ballot_sync(0xffffffffu, need);
        if (need) {
            i64 k = wpos + __popc(ballot & ((1u << t) - 1));
            if (k < nwords) v = (v << 16) | w[2 * k] | ((unsigned)w[2 * k + 1] << 8);
            else bad = 1;
        }
        wpos += __popc(ballot);
        if (live) {
            x[L < 32 ? 0 : s] = v;
            if (PASS == 0) {
                bytes[2 * i + 1] = (unsigned char)sym;
            } else {
                unsigned e16 = ((unsigned)bytes[2 * i + 1] << 8) | sym;
                if (rotate) e16 = ((e16 >> 1) | (e16 << 15)) & 0xffff;
                out[i] = (unsigned short)e16;
            }
        }
    }
    for (int s = 0; s < per; s++)
        if (s * 32 + t < L) bad |= x[s] != RANS_L;
    bad |= wpos != nwords || (p.bytes - 4 * L) % 2;
    return __any_sync(0xffffffffu, bad);
}

extern "C" __global__ void __launch_bounds__(32 * WARPS)
ans16_decode(const i64 *__restrict__ jobs, i64 njobs, int *__restrict__ status) {
    const i64 job = (i64)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (job >= njobs) return;
    const i64 *r = jobs + job * JOB_FIELDS;
    unsigned short *out = (unsigned short *)r[0];
    const i64 n = r[1];
    const int rotate = (int)r[2];
    const int P = (int)r[14];
    const Plane hi = {(int)r[3], (const unsigned char *)r[4], r[5], (int)r[6], (const unsigned *)r[7]};
    const Plane lo = {(int)r[8], (const unsigned char *)r[9], r[10], (int)r[11], (const unsigned *)r[12]};
    const unsigned char *ctx_id = (const unsigned char *)r[13];
    const int t = threadIdx.x & 31;
    unsigned char *bytes = (unsigned char *)out;
    int bad = 0;
    if (hi.method == 0) {
        for (i64 i = t; i < n; i += 32) bytes[2 * i + 1] = hi.data[i];
    } else {
        bad |= decode_plane<0>(hi, out, n, rotate, P, 0);
    }
    __syncwarp();
    if (lo.method == 0) {
        for (i64 i = t; i < n; i += 32) {
            unsigned e16 = ((unsigned)bytes[2 * i + 1] << 8) | lo.data[i];
            if (rotate) e16 = ((e16 >> 1) | (e16 << 15)) & 0xffff;
            out[i] = (unsigned short)e16;
        }
    } else {
        bad |= decode_plane<1>(lo, out, n, rotate, P, lo.method == 2 ? ctx_id : 0);
    }
    if (bad && t == 0) atomicExch(status, 1);
}
