// GPU decoder for the DFloat11 project's own layout (nzip/formats/dfloat11_checkpoint.py
// describes it), compiled by NVRTC at run time. Two launches: every thread counts the codes
// that start in its window of bytes_per_thread stream bytes (its 5-bit gap says where the
// first starts); a prefix sum on the host side of the launch (torch.cumsum, on the GPU)
// turns counts into output positions; then every thread decodes its window again and
// writes its elements. Used when DFloat11 checkpoints are loaded, not on a hot path.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

__device__ __forceinline__ u64 peek64(const u8* __restrict__ codes, i64 n_bytes, u64 bit) {
    const i64 at = (i64)(bit >> 3);
    const unsigned skip = (unsigned)(bit & 7);
    u64 v = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) v = (v << 8) | (u64)(at + i < n_bytes ? __ldg(codes + at + i) : 0);
    if (skip) v = (v << skip) | ((u64)(at + 8 < n_bytes ? __ldg(codes + at + 8) : 0) >> (8 - skip));
    return v;
}

// decodes the codes starting in [bit, end); writes up to `room` of them from out_at on
// when out != 0; returns how many there were (-1: corrupt tables)
__device__ i64 window(const u8* __restrict__ luts, i64 n_luts, const u8* __restrict__ codes, i64 n_bytes,
                      u64 bit, u64 end, const u8* __restrict__ sm, u16* __restrict__ out, i64 out_at, i64 room) {
    const u8* lens = luts + 256 * (n_luts - 1);
    i64 count = 0;
    while (bit < end) {
        const u64 v64 = peek64(codes, n_bytes, bit);
        unsigned v = __ldg(luts + (v64 >> 56));
        for (int level = 1; v >= 240; level++) {
            const i64 row = 256 - v;
            if (level > 3 || row >= n_luts - 1) return -1;
            v = __ldg(luts + 256 * row + ((v64 >> (56 - 8 * level)) & 0xff));
        }
        const unsigned len = __ldg(lens + v);
        if (len == 0) return -1;
        if (out && count < room) {
            const unsigned s = __ldg(sm + out_at + count);
            out[out_at + count] = (u16)(((s & 0x80u) << 8) | (v << 7) | (s & 0x7fu));
        }
        count++;
        bit += len;
    }
    return count;
}

__device__ __forceinline__ unsigned gap_of(const u8* __restrict__ gaps, i64 n_gap_bytes, i64 t) {
    const u64 g = (u64)t * 5;
    const i64 at = (i64)(g >> 3);
    const unsigned hi = at < n_gap_bytes ? gaps[at] : 0, lo = at + 1 < n_gap_bytes ? gaps[at + 1] : 0;
    return (((hi << 8) | lo) >> (11 - (g & 7))) & 31;
}

extern "C" __global__ void dfloat11_project_count(const u8* luts, i64 n_luts, const u8* codes, i64 n_bytes,
                                                  const u8* gaps, i64 n_gap_bytes, i64 bytes_per_thread,
                                                  i64 n_threads, i64* counts, int* status) {
    const i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_threads) return;
    const u64 bit = (u64)t * bytes_per_thread * 8;
    const i64 c = (i64)bit < n_bytes * 8
        ? window(luts, n_luts, codes, n_bytes, bit + gap_of(gaps, n_gap_bytes, t), bit + bytes_per_thread * 8, 0, 0, 0, 0)
        : 0;
    if (c < 0) atomicOr(status, 1);
    counts[t] = c < 0 ? 0 : c;
}

extern "C" __global__ void dfloat11_project_decode(const u8* luts, i64 n_luts, const u8* codes, i64 n_bytes,
                                                   const u8* gaps, i64 n_gap_bytes, i64 bytes_per_thread,
                                                   i64 n_threads, const i64* starts, const i64* ends,
                                                   const u8* sm, u16* out) {
    const i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_threads) return;
    const u64 bit = (u64)t * bytes_per_thread * 8;
    const i64 at = starts[t];
    if ((i64)bit >= n_bytes * 8 || at >= ends[t]) return;
    window(luts, n_luts, codes, n_bytes, bit + gap_of(gaps, n_gap_bytes, t), bit + bytes_per_thread * 8, sm, out, at,
           ends[t] - at);
}
