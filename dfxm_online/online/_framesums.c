/* Per-pixel sums over a batch of frames: the hot loops of the moment, edge-baseline and
 * projection accumulators (see dfxm_online/online/framesums.py for the Python side).
 *
 * Why C and not numpy/BLAS: at 2048^2 the numpy version (a uint16 -> float tile conversion,
 * an OpenBLAS product with 15 rows, then an add into the running sums) ran at 231 frames/s
 * for the moments alone and 76 frames/s for moments + edge baseline + projections on 2
 * cores; OpenBLAS picks its AVX2 kernels on this CPU and a 15-row product is a poor shape
 * for it. These loops convert each pixel once, keep the running sums of a pixel block in
 * registers for the whole batch and do only the work a frame's group membership needs.
 * Figures are in bench/RESULTS.md.
 *
 * Compiled once for x86-64-v4 (AVX-512), AVX2 and a generic target; the loader picks the
 * best one for the CPU it runs on (GCC target_clones). Every function releases the GIL, so
 * pixel ranges run in parallel on Python threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
#define TARGETS __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define TARGETS
#endif

#define RB 8     /* rows per register block */
#define NV 2     /* vectors per register block */
/* Pixels per tile: as many as keep a batch's converted tile (F x tp values of C) within
 * TILE_BYTES, a part of the 1 MB L2, between TP_MIN and TP_MAX. At 2048^2 uint16 in
 * batches of 64 (double products), tiles of 1024 pixels (512 kB converted) ran the
 * pipeline's pass at 376-379 frames/s (medians of 6) against 328 with a fixed 2048
 * (1 MB: the whole L2), and 512 did no better than 1024. */
#define TILE_BYTES (512 * 1024)
#define TP_MIN 256
#define TP_MAX 4096
/* Frames per pass at most (the caller splits bigger batches): the 16-bit types' group
 * sums are exact in int32 up to 32767 frames, and the converted tile stays small. */
#define MAX_PASS_FRAMES 1024

/* Grow-only thread-local scratch buffers (64-byte aligned); never freed: the tile
 * threads live as long as the process and the buffers are small (F x tp values). */
static _Thread_local void *scratch_buf[5];
static _Thread_local size_t scratch_size[5];

static void *scratch(int which, size_t size)
{
    if (size > scratch_size[which]) {
        free(scratch_buf[which]);
        size_t rounded = (size + 63) / 64 * 64;
        scratch_buf[which] = aligned_alloc(64, rounded);
        scratch_size[which] = scratch_buf[which] ? rounded : 0;
    }
    return scratch_buf[which];
}

typedef double vd __attribute__((vector_size(64)));
typedef float vf __attribute__((vector_size(64)));

#define MAX_GROUPS 64

/* Everything one pass needs; pointers stay valid while the caller holds the buffers. */
typedef struct {
    const void *frames;
    int64_t F, P;
    const double *weights; /* (F, R) */
    int64_t R;
    double *sums;          /* (R, P) */
    const uint8_t *members; /* (G, F) */
    int64_t G;
    double *gsums[MAX_GROUPS];
    double *gsumsq[MAX_GROUPS];
    double *maximum;       /* (P,) */
    int64_t tp;            /* pixels per tile */
    void *scratch_w, *scratch_x, *scratch_m, *scratch_g, *scratch_q;
} Pass;

#define GACC int32_t
#define INT_SQUARES 1
#define T uint8_t
#define TNAME u8
#include "_framesums_types.h"
#undef GACC
#undef INT_SQUARES
#define GACC int32_t
#define INT_SQUARES 1
#define T uint16_t
#define TNAME u16
#include "_framesums_types.h"
#undef GACC
#undef INT_SQUARES
#define GACC int32_t
#define INT_SQUARES 1
#define T int16_t
#define TNAME i16
#include "_framesums_types.h"
#undef GACC
#undef INT_SQUARES
#define GACC int64_t
#define INT_SQUARES 0
#define T uint32_t
#define TNAME u32
#include "_framesums_types.h"
#undef GACC
#undef INT_SQUARES
#define GACC int64_t
#define INT_SQUARES 0
#define T int32_t
#define TNAME i32
#include "_framesums_types.h"
#undef GACC
#undef INT_SQUARES
#define T float
#define TNAME f32
#include "_framesums_types.h"
#define T double
#define TNAME f64
#include "_framesums_types.h"

/* ---- Python side ------------------------------------------------------------------------ */

#define MAX_BUFS (5 + 2 * MAX_GROUPS)

#include "_buffers.h"

static char frame_code(Py_buffer *v)
{
    const char *f = format_of(v);
    if (f[0] && !f[1]) {
        switch (f[0]) {
        case 'B': case 'H': case 'h': case 'f': case 'd': return f[0];
        case 'I': case 'L': if (v->itemsize == 4) return 'I'; break;
        case 'i': case 'l': if (v->itemsize == 4) return 'i'; break;
        }
    }
    return 0;
}

PyDoc_STRVAR(frame_pass_doc,
"frame_pass(frames, start, stop, weights, sums, members, gsums, gsumsq, maximum, single)\n\n"
"One pass over pixels start <= p < stop of a batch `frames` (F <= MAX_PASS_FRAMES, P)\n"
"(uint8, uint16, int16, uint32, int32, float32 or float64):\n"
"  sums[r, p] += sum_f weights[f, r] * frames[f, p]      weights (F, R), sums (R, P) float64\n"
"  gsums[g][p] += sum of frames[f, p] with members[g, f]  members (G, F) uint8, gsums a list\n"
"  gsumsq[g][p] += the same with squares                  of G (P,) float64 rows; gsumsq a\n"
"                                                         list of G rows or None entries\n"
"  maximum[p] = max(maximum[p], frames[:, p])             maximum (P,) float64\n"
"weights/sums, members (with empty lists) and maximum may be None. single=True forms the\n"
"dense products in float32 (the sums stay float64). All arrays C-contiguous. The GIL is\n"
"released: disjoint pixel ranges may run on different threads.");

static PyObject *frame_pass(PyObject *self, PyObject *args)
{
    PyObject *fo, *wo, *so, *mo, *glist, *qlist, *xo;
    Py_ssize_t start, stop;
    int single = 0;
    if (!PyArg_ParseTuple(args, "OnnOOOOOOp", &fo, &start, &stop, &wo, &so, &mo, &glist, &qlist,
                          &xo, &single))
        return NULL;
    Held h = {.n = 0};
    PyObject *result = NULL;
    Pass job;
    memset(&job, 0, sizeof job);
    Py_buffer *fv = get(&h, fo, 2, NULL, 0, "frames");
    if (!fv) goto done;
    const char code = frame_code(fv);
    if (!code) {
        PyErr_Format(PyExc_TypeError, "unsupported frame format '%s'", format_of(fv));
        goto done;
    }
    job.frames = fv->buf;
    job.F = fv->shape[0];
    job.P = fv->shape[1];
    if (check_range(start, stop, job.P) < 0) goto done;
    if (job.F > MAX_PASS_FRAMES) {
        PyErr_Format(PyExc_ValueError, "at most %d frames per pass, got %zd", MAX_PASS_FRAMES,
                     (Py_ssize_t)job.F);
        goto done;
    }
    if ((wo == Py_None) != (so == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "weights and sums go together");
        goto done;
    }
    if (wo != Py_None) {
        Py_buffer *wv = get(&h, wo, 2, "d", 0, "weights"), *sv;
        if (!wv || !(sv = get(&h, so, 2, "d", 1, "sums"))) goto done;
        if (wv->shape[0] != job.F || sv->shape[0] != wv->shape[1] || sv->shape[1] != job.P) {
            PyErr_SetString(PyExc_ValueError, "shapes must be frames (F, P), weights (F, R), sums (R, P)");
            goto done;
        }
        job.weights = wv->buf;
        job.sums = sv->buf;
        job.R = wv->shape[1];
    }
    if (mo != Py_None) {
        Py_buffer *mv = get(&h, mo, 2, "B", 0, "members");
        if (!mv) goto done;
        job.G = mv->shape[0];
        if (mv->shape[1] != job.F || job.G > MAX_GROUPS) {
            PyErr_Format(PyExc_ValueError, "members must be (G <= %d, F)", MAX_GROUPS);
            goto done;
        }
        job.members = mv->buf;
        Py_ssize_t G = job.G;
        if (get_rows(&h, glist, job.gsums, &G, MAX_GROUPS, job.P, 1, 0, "gsums") < 0 ||
            get_rows(&h, qlist, job.gsumsq, &G, MAX_GROUPS, job.P, 1, 1, "gsumsq") < 0)
            goto done;
    }
    if (xo != Py_None) {
        Py_buffer *xv = get(&h, xo, 1, "d", 1, "maximum");
        if (!xv) goto done;
        if (xv->shape[0] != job.P) {
            PyErr_SetString(PyExc_ValueError, "maximum must have P pixels");
            goto done;
        }
        job.maximum = xv->buf;
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    const int64_t rpad = (job.R + RB - 1) / RB * RB;
    job.scratch_w = scratch(0, (size_t)(job.F * rpad + 1) * sizeof(double));
    const size_t csize = single ? sizeof(float) : sizeof(double);
    int64_t tp = job.F > 0 ? (int64_t)(TILE_BYTES / ((size_t)job.F * csize)) : TP_MAX;
    tp = tp < TP_MIN ? TP_MIN : tp > TP_MAX ? TP_MAX : tp / 64 * 64;
    job.tp = tp;
    job.scratch_x = scratch(1, (size_t)(job.F * tp + 1) * sizeof(double));
    job.scratch_m = scratch(2, (size_t)tp * sizeof(int64_t));
    job.scratch_g = scratch(3, (size_t)(job.G + 1) * tp * sizeof(int64_t));
    job.scratch_q = scratch(4, (size_t)(job.G + 1) * tp * sizeof(uint64_t));
    if (!job.scratch_w || !job.scratch_x || !job.scratch_m || !job.scratch_g || !job.scratch_q) {
        failed = 1;
    } else if (job.F > 0 && stop > start) {
#define PASS_CASE(CODE, TN)                                                                   \
        case CODE:                                                                            \
            if (single) pass_##TN##_f32(&job, start, stop);                                   \
            else pass_##TN##_f64(&job, start, stop);                                          \
            break;
        switch (code) {
        PASS_CASE('B', u8) PASS_CASE('H', u16) PASS_CASE('h', i16) PASS_CASE('I', u32)
        PASS_CASE('i', i32) PASS_CASE('f', f32) PASS_CASE('d', f64)
        }
#undef PASS_CASE
    }
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    release_all(&h);
    return result;
}

static PyMethodDef methods[] = {
    {"frame_pass", frame_pass, METH_VARARGS, frame_pass_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_framesums",
    "Per-pixel sums over a batch of frames (C loops; see framesums.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__framesums(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "MAX_PASS_FRAMES", MAX_PASS_FRAMES) < 0) Py_CLEAR(m);
    return m;
}
