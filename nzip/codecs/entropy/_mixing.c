/*
 * Context-mixing coder: integers coded bit by bit (a binary tree over the alphabet, most
 * significant bit first), each bit's probability mixed from several context models.
 *
 * The frequency-table coder (adaptive, in _entropy.c) picks one table per value, so every
 * context it adds splits its samples: with 256-letter alphabets a table needs hundreds of
 * values to learn. Here each model is a small probability per (context, tree node) that
 * learns from the first bit it sees, and a logistic mixer weighs the models by how well
 * they have predicted so far (in the stretch domain, ln(p/(1-p))), so a sparse but sharp
 * context and a broad but dull one both count where they help.
 *
 * A model's context is a caller's integer (from data the decoder already has), optionally
 * joined with the symbol this same stream gave at an earlier position ref[i] < i (the
 * Gaussian before, a spatial neighbour), which only the sequential loop can know.
 *
 * Each (context, node) slot keeps two probabilities, one learnt as a running average of
 * all it saw (rate 1/(n + 1.5), down to 1/256) and one at a fixed 1/8, which follows local
 * runs (Gaussians sorted in space come in patches); the mixer weighs both. Its output is
 * then refined per tree node by an adaptive map on the stretch axis (33 points).
 *
 * Everything is integer arithmetic, so encoder and decoder agree on every machine.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MODELS 16
#define MAX_SLOTS (1 << 25) /* per call: 6 bytes each, 192 MiB at most */
#define NO_REF 255 /* a model's shift when it takes no earlier symbol */
#define COUNT_LIMIT 255
#define APM_RATE 6
#define FAST_RATE 3
#define WEIGHT_LIMIT (1 << 24) /* 256.0: no weight drifts out of int32, whatever the input */
#define INPUTS(models) (2 * (models) + 1) /* each model's two rates, and a bias */

/* squash(x) = 4096 / (1 + e^(-x/256)) at x = -2048, -1920, ..., 2048 */
static const int16_t SQUASH_AT[33] = {1, 2, 4, 6, 10, 17, 27, 45, 74, 120, 194, 311, 488, 747, 1102, 1546, 2048,
                                      2550, 2994, 3349, 3608, 3785, 3902, 3976, 4022, 4051, 4069, 4079, 4086, 4090,
                                      4092, 4094, 4095};
static int16_t stretch_table[4096];
static uint32_t recip[COUNT_LIMIT + 1];

static inline int squash(int x) {
    if (x > 2047) return 4095;
    if (x < -2047) return 1;
    int w = x & 127, i = (x >> 7) + 16;
    return (SQUASH_AT[i] * (128 - w) + SQUASH_AT[i + 1] * w + 64) >> 7;
}

static void init_tables(void) {
    int pi = 0;
    for (int x = -2047; x <= 2047; x++) { /* stretch = the inverse of squash */
        int v = squash(x);
        for (int j = pi; j <= v; j++) stretch_table[j] = (int16_t)x;
        pi = v + 1;
    }
    for (int j = pi; j < 4096; j++) stretch_table[j] = 2047;
    for (int c = 0; c <= COUNT_LIMIT; c++) recip[c] = (uint32_t)(131072 / (2 * c + 3)); /* 2/(2c+3) in 1/65536 */
}

/* One (context, tree node) of a model: P(bit = 1) in 1/65536 learnt two ways, and the bits
 * seen (capped), which set how fast p still learns. Kept together: one cache line a lookup. */
typedef struct {
    uint16_t p, fast;
    uint16_t count;
} slot;

typedef struct {
    Py_ssize_t n, K;
    int bits, models;
    const uint32_t *ctx;  /* models x n */
    const int32_t *ref;   /* models x n, -1: none */
    const uint8_t *shift; /* per model: NO_REF or how far the earlier symbol is shifted down */
    const uint32_t *mixctx;
    uint32_t rows[MAX_MODELS], width[MAX_MODELS]; /* rows of each model's table, earlier-symbol slots per context */
    size_t base[MAX_MODELS];
    int rate;
    slot *slots;
    int32_t *w;    /* mixer weights per (mixctx, depth), 1.0 = 65536 */
    uint16_t *sym; /* the symbols so far (encoder: given; decoder: written) */
    uint16_t *apm; /* per tree node, 33 points: the mixer's output refined by what followed it */
} mixer;

static void mixer_close(mixer *m) { free(m->slots); free(m->w); free(m->apm); }

static int mixer_open(mixer *m, Py_ssize_t nmix) {
    size_t slots = 0, nodes = (size_t)1 << m->bits;
    for (int j = 0; j < m->models; j++) {
        m->base[j] = slots;
        slots += (size_t)m->rows[j] * m->width[j] * nodes;
    }
    size_t sets = (size_t)nmix * m->bits * INPUTS(m->models);
    m->slots = malloc(slots * sizeof(slot));
    m->w = malloc(sets * sizeof(int32_t));
    m->apm = malloc(nodes * 33 * sizeof(uint16_t));
    if (!m->slots || !m->w || !m->apm) { mixer_close(m); return -1; }
    for (size_t k = 0; k < nodes * 33; k++) m->apm[k] = (uint16_t)(squash(((int)(k % 33) - 16) * 128) * 16);
    for (size_t s = 0; s < slots; s++) m->slots[s] = (slot){32768, 32768, 0};
    for (size_t s = 0; s < sets; s++) m->w[s] = (s % INPUTS(m->models) == (size_t)(2 * m->models)) ? 0 : 32768 / m->models;
    return 0;
}

/* The slots of every model for value i (their row; the tree node is added per bit). */
static inline void rows_of(const mixer *m, Py_ssize_t i, size_t *row) {
    size_t nodes = (size_t)1 << m->bits;
    for (int j = 0; j < m->models; j++) {
        size_t r = (size_t)m->ctx[(size_t)j * m->n + i] * m->width[j];
        if (m->shift[j] != NO_REF) {
            int32_t at = m->ref[(size_t)j * m->n + i];
            if (at >= 0) r += 1 + (m->sym[at] >> m->shift[j]);
        }
        row[j] = m->base[j] + r * nodes;
    }
}

/* P(bit = 1) in 1/4096 at tree node `node`; st gets the stretched inputs it mixed */
static inline int predict(const mixer *m, const size_t *row, size_t node, int32_t *w, int *st) {
    int64_t dot = 0;
    for (int j = 0; j < m->models; j++) {
        const slot *t = &m->slots[row[j] + node];
        int p12 = t->p >> 4, f12 = t->fast >> 4;
        st[2 * j] = stretch_table[p12 < 1 ? 1 : p12];
        st[2 * j + 1] = stretch_table[f12 < 1 ? 1 : f12];
        dot += (int64_t)w[2 * j] * st[2 * j] + (int64_t)w[2 * j + 1] * st[2 * j + 1];
    }
    st[2 * m->models] = 256;
    dot += (int64_t)w[2 * m->models] * 256;
    int p = squash((int)(dot >> 16));
    return p < 1 ? 1 : (p > 4095 ? 4095 : p);
}

/* The mixer's p refined per tree node: interpolated between the two nearest of 33 points
 * on the stretch axis; *at gets the lower point and its weight for the update. */
static inline int refine(const mixer *m, size_t node, int p, int *at) {
    int s = stretch_table[p] + 2048, lo = s >> 7, w = s & 127;
    const uint16_t *t = m->apm + node * 33 + lo;
    *at = (int)(node * 33 + lo) * 128 + w;
    int q = ((t[0] * (128 - w) + t[1] * w) >> 11);
    q = (p + 3 * q) >> 2;
    return q < 1 ? 1 : (q > 4095 ? 4095 : q);
}

static inline void refine_learn(mixer *m, int at, int bit) {
    uint16_t *t = m->apm + at / 128;
    int w = at % 128, target = bit ? 65535 : 0;
    t[0] += (int)(((int64_t)(target - t[0]) * (128 - w)) >> (7 + APM_RATE));
    t[1] += (int)(((int64_t)(target - t[1]) * w) >> (7 + APM_RATE));
}

static inline void learn(mixer *m, const size_t *row, size_t node, int32_t *w, const int *st, int p, int bit) {
    int err = ((bit << 12) - p) * m->rate;
    for (int j = 0; j <= 2 * m->models; j++) {
        int64_t v = w[j] + (((int64_t)st[j] * err) >> 14);
        w[j] = (int32_t)(v > WEIGHT_LIMIT ? WEIGHT_LIMIT : (v < -WEIGHT_LIMIT ? -WEIGHT_LIMIT : v));
    }
    for (int j = 0; j < m->models; j++) {
        int target = bit ? 65535 : 0;
        slot *t = &m->slots[row[j] + node];
        t->p = (uint16_t)(t->p + (((int64_t)(target - t->p) * recip[t->count]) >> 16));
        t->fast = (uint16_t)(t->fast + ((target - t->fast) >> FAST_RATE));
        if (t->count < COUNT_LIMIT) t->count++;
    }
}

static void release7(Py_buffer *b) {
    for (int i = 0; i < 7; i++) PyBuffer_Release(&b[i]);
}

/* Parses (stream, K, ctx, rows, ref, shift, mixctx, nmix, rate, symbols) and checks every
 * index; fills m and returns nmix, or -1 with the error set. */
static Py_ssize_t mixer_args(PyObject *args, Py_buffer *b, mixer *m, int decoding, const char *name) {
    Py_ssize_t nmix;
    int rate;
    /* b: 0 symbols (encode) or bytes (decode), 1 ctx, 2 rows, 3 ref, 4 shift, 5 mixctx, 6 dst/out */
    if (!PyArg_ParseTuple(args, "y*ny*y*y*y*y*niw*", &b[0], &m->K, &b[1], &b[2], &b[3], &b[4], &b[5], &nmix, &rate,
                          &b[6]))
        return -1;
    int ok = 1;
    m->models = (int)b[4].len;
    Py_ssize_t n = decoding ? b[6].len / 2 : b[0].len / 2;
    m->n = n;
    if (m->K < 1 || m->K > 65536 || m->models < 1 || m->models > MAX_MODELS || b[2].len != 4 * m->models ||
        b[1].len != 4 * n * m->models || b[3].len != 4 * n * m->models || b[5].len != 4 * n || nmix < 1 ||
        nmix > 65536 || rate < 0 || rate > 255)
        ok = 0;
    if (ok) {
        m->bits = 1;
        while (((Py_ssize_t)1 << m->bits) < m->K) m->bits++;
        m->ctx = b[1].buf; m->ref = b[3].buf; m->shift = b[4].buf; m->mixctx = b[5].buf; m->rate = rate;
        const uint32_t *rows = b[2].buf;
        size_t slots = 0;
        for (int j = 0; j < m->models && ok; j++) {
            m->rows[j] = rows[j];
            m->width[j] = m->shift[j] == NO_REF ? 1 : (uint32_t)(((m->K - 1) >> (m->shift[j] > 15 ? 15 : m->shift[j])) + 2);
            if (m->shift[j] != NO_REF && m->shift[j] > 15) ok = 0;
            slots += (size_t)rows[j] * m->width[j] << m->bits;
            if (rows[j] < 1 || slots > MAX_SLOTS) ok = 0;
        }
        if ((size_t)nmix * m->bits * INPUTS(m->models) > MAX_SLOTS) ok = 0;
        for (int j = 0; j < m->models && ok; j++)
            for (Py_ssize_t i = 0; i < n; i++) {
                int32_t at = m->ref[(size_t)j * n + i];
                if (m->ctx[(size_t)j * n + i] >= m->rows[j] || at >= i || at < -1) { ok = 0; break; }
            }
        for (Py_ssize_t i = 0; i < n && ok; i++)
            if (m->mixctx[i] >= (uint32_t)nmix || (!decoding && ((const uint16_t *)b[0].buf)[i] >= m->K)) ok = 0;
    }
    if (!ok) {
        release7(b);
        PyErr_Format(PyExc_ValueError, "%s: bad sizes, contexts or symbols", name);
        return -1;
    }
    return nmix;
}

/* The coding loop, both ways. Encoding (decoding == 0) reads m->sym and writes up to cap
 * bytes to buf, returning how many it needed; decoding reads len bytes from buf (zeros past
 * the end), writes m->sym and returns the bytes it consumed (> len: truncated) or -1 where a
 * symbol fell outside the alphabet (corrupt). */
static Py_ssize_t run(mixer *m, int decoding, uint8_t *buf, Py_ssize_t len) {
    Py_ssize_t at = 0;
    int corrupt = 0;
    uint32_t x1 = 0, x2 = 0xFFFFFFFFu, x = 0;
    if (decoding)
        for (int k = 0; k < 4; k++) x = (x << 8) | (at < len ? buf[at] : 0), at++;
    size_t row[MAX_MODELS];
    int st[2 * MAX_MODELS + 1];
    for (Py_ssize_t i = 0; i < m->n; i++) {
        rows_of(m, i, row);
        size_t node = 1;
        for (int d = 0; d < m->bits; d++) {
            int32_t *w = m->w + ((size_t)m->mixctx[i] * m->bits + d) * INPUTS(m->models);
            int p = predict(m, row, node, w, st), point;
            int q = refine(m, node, p, &point);
            uint32_t mid = x1 + (uint32_t)(((uint64_t)(x2 - x1) * (uint32_t)q) >> 12);
            int bit = decoding ? x <= mid : (m->sym[i] >> (m->bits - 1 - d)) & 1;
            if (bit) x2 = mid; else x1 = mid + 1;
            while (((x1 ^ x2) & 0xFF000000u) == 0) {
                if (decoding) x = (x << 8) | (at < len ? buf[at] : 0);
                else if (at < len) buf[at] = (uint8_t)(x2 >> 24);
                at++;
                x1 <<= 8;
                x2 = (x2 << 8) | 255;
            }
            learn(m, row, node, w, st, p, bit);
            refine_learn(m, point, bit);
            node = node * 2 + bit;
        }
        if (decoding) {
            Py_ssize_t s = (Py_ssize_t)node - ((Py_ssize_t)1 << m->bits);
            if (s >= m->K) { corrupt = 1; s = m->K - 1; } /* later contexts must stay inside the tables */
            m->sym[i] = (uint16_t)s;
        }
    }
    if (!decoding)
        for (int k = 0; k < 4; k++, at++, x1 <<= 8) if (at < len) buf[at] = (uint8_t)(x1 >> 24);
    return (corrupt && at <= len) ? -1 : at; /* running out of bytes is the likelier cause */
}

/* mix_encode(sym u16[n], K, ctx u32[models*n], rows u32[models], ref i32[models*n],
 *            shift u8[models], mixctx u32[n], nmix, rate, dst) -> bytes written (> len(dst): too small)
 * mix_decode(src, K, ctx, rows, ref, shift, mixctx, nmix, rate, out u16[n]) -> bytes consumed
 * (> len(src): truncated), or -1 where a decoded symbol falls outside the alphabet (corrupt). */
static PyObject *mix_code(PyObject *args, int decoding) {
    Py_buffer b[7];
    mixer m;
    memset(&m, 0, sizeof m);
    Py_ssize_t nmix = mixer_args(args, b, &m, decoding, decoding ? "mix_decode" : "mix_encode");
    if (nmix < 0) return NULL;
    m.sym = decoding ? b[6].buf : b[0].buf;
    if (mixer_open(&m, nmix) < 0) { release7(b); return PyErr_NoMemory(); }
    Py_buffer *bytes = decoding ? &b[0] : &b[6];
    Py_ssize_t result;
    Py_BEGIN_ALLOW_THREADS
    result = run(&m, decoding, bytes->buf, bytes->len);
    Py_END_ALLOW_THREADS
    mixer_close(&m);
    release7(b);
    return PyLong_FromSsize_t(result);
}

static PyObject *mix_encode(PyObject *self, PyObject *args) { return mix_code(args, 0); }

static PyObject *mix_decode(PyObject *self, PyObject *args) { return mix_code(args, 1); }

static PyMethodDef methods[] = {
    {"mix_encode", mix_encode, METH_VARARGS,
     "mix_encode(sym_u16, K, ctx_u32, rows_u32, ref_i32, shift_u8, mixctx_u32, nmix, rate, dst) -> written"},
    {"mix_decode", mix_decode, METH_VARARGS,
     "mix_decode(src, K, ctx_u32, rows_u32, ref_i32, shift_u8, mixctx_u32, nmix, rate, out_u16) -> consumed or -1"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_mixing", "nzip's context-mixing coder", -1, methods};

PyMODINIT_FUNC PyInit__mixing(void) {
    init_tables();
    return PyModule_Create(&module);
}
