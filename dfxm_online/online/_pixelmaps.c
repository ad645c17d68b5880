/* Per-pixel snapshot arithmetic: raw power sums -> central moments, the pooled edge
 * baseline, the named moment maps, the mosaicity colours and KAM (see
 * accumulators/moments.py, accumulators/background.py, maps.py and orientation.py for the
 * maths).
 *
 * Why C: at 2048^2 the moments and the edge baseline were ~30 numexpr passes over 32 MB
 * arrays, 1.07 s of a 1.8 s snapshot on 2 cores; one pass per pixel that keeps every
 * intermediate in registers does both in ~0.17 s (bench/RESULTS.md). Likewise, warm, at
 * 2048^2: the moment maps (maps.moment_maps 0.10 s against 0.23 s with numpy, 0.24 s with
 * numexpr), the mosaicity colours from the COM maps (0.05 s against 0.18 s with the
 * masking in numpy) and KAM (0.04 s against 0.20 s with numpy slices); numpy's temporaries
 * cost more on fresh memory. Functions work on a pixel (or row) range and release the GIL,
 * so the caller spreads ranges over its tile threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The vectorized loops are compiled for x86-64-v4 (AVX-512), AVX2 and a generic target, and
 * the loader picks the best for the CPU (GCC target_clones); -ffp-contract=off (setup.py)
 * keeps FMA out, so every target gives the same values bit for bit. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
#define TARGETS __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define TARGETS
#endif

#define MAX_ROWS 64
#define MAX_MOTORS 3
#define MAX_BUFS (2 * MAX_ROWS + 16)

#include "_buffers.h"

/* Element i of a float32 (f32) or float64 array, as a double (exact either way): the
 * passes that read the live snapshot's float32 maps without converted copies. */
#define AS_DOUBLE(x, f32, i) ((f32) ? (double)((const float *)(x))[i] : ((const double *)(x))[i])

/* 1 for a float32 buffer, 0 for float64, -1 for anything else (the passes that take both). */
static int float32_or_64(Py_buffer *v)
{
    const char *f = format_of(v);
    return strcmp(f, "f") == 0 ? 1 : (strcmp(f, "d") == 0 ? 0 : -1);
}

/* ---- pooled edge baseline ---------------------------------------------------------------- */

#define EDGE_BLOCK 256

/* Pixels start <= p < stop of pooled_edge_mean, a block of pixels at a time and one group at
 * a time, so that every loop is a plain loop over the block that GCC vectorizes. The
 * expressions are those of the pixel-by-pixel form (lowest group mean first on ties, its
 * variance, the k standard-error test, the pooled sums), hence the same values bit for
 * bit; 2048^2, 8 groups, 2 cores: 0.088 s that way, 0.017 s this way. */
TARGETS
static void pooled_edge_loop(const double *const *s, const double *const *q, const double *n, Py_ssize_t G,
                             double k, double *out, Py_ssize_t start, Py_ssize_t stop)
{
    for (Py_ssize_t p0 = start; p0 < stop; p0 += EDGE_BLOCK) {
        const Py_ssize_t nb = stop - p0 < EDGE_BLOCK ? stop - p0 : EDGE_BLOCK;
        double m_low[EDGE_BLOCK], var_low[EDGE_BLOCK], n_low[EDGE_BLOCK], num[EDGE_BLOCK], den[EDGE_BLOCK];
        {
            const double *restrict s0 = s[0] + p0, *restrict q0 = q[0] + p0, n0 = n[0];
            for (Py_ssize_t i = 0; i < nb; i++) {
                const double m = s0[i] / n0, v = q0[i] / n0 - m * m;
                m_low[i] = m;
                var_low[i] = v > 0 ? v : 0.0;
                n_low[i] = n0;
            }
        }
        for (Py_ssize_t g = 1; g < G; g++) {  /* the lowest group (first one on ties) */
            const double *restrict sg = s[g] + p0, *restrict qg = q[g] + p0, ng = n[g];
            for (Py_ssize_t i = 0; i < nb; i++) {
                const double mean = sg[i] / ng, v = qg[i] / ng - mean * mean;
                const int lower = mean < m_low[i];
                var_low[i] = lower ? (v > 0 ? v : 0.0) : var_low[i];
                m_low[i] = lower ? mean : m_low[i];
                n_low[i] = lower ? ng : n_low[i];
            }
        }
        for (Py_ssize_t i = 0; i < nb; i++) num[i] = den[i] = 0.0;
        for (Py_ssize_t g = 0; g < G; g++) {
            const double *restrict sg = s[g] + p0, ng = n[g];
            for (Py_ssize_t i = 0; i < nb; i++) {
                const int in = sg[i] / ng <= m_low[i] + k * sqrt(var_low[i] * (1.0 / n_low[i] + 1.0 / ng));
                num[i] += in ? sg[i] : 0.0;
                den[i] += in ? ng : 0.0;
            }
        }
        for (Py_ssize_t i = 0; i < nb; i++) out[p0 + i] = num[i] / den[i];
    }
}

PyDoc_STRVAR(pooled_edge_mean_doc,
"pooled_edge_mean(sums, sumsq, counts, k, out, start, stop)\n\n"
"For pixels start <= p < stop: out[p] = pooled mean of the groups whose mean is within k\n"
"standard errors of the pixel's lowest group mean (sums, sumsq: lists of G (P,) float64\n"
"rows, counts: G frame counts > 0; see background.pooled_edge_mean).");

static PyObject *pooled_edge_mean(PyObject *self, PyObject *args)
{
    PyObject *so, *qo, *co, *oo;
    double k;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "OOOdOnn", &so, &qo, &co, &k, &oo, &start, &stop)) return NULL;
    Held h = {.n = 0};
    PyObject *result = NULL;
    double *s[MAX_ROWS], *q[MAX_ROWS], n[MAX_ROWS];
    Py_buffer *ov = get(&h, oo, 1, "d", 1, "out");
    if (!ov) goto done;
    const Py_ssize_t P = ov->shape[0];
    Py_ssize_t G = -1;
    if (get_rows(&h, so, s, &G, MAX_ROWS, P, 0, 0, "sums") < 0 || get_rows(&h, qo, q, &G, MAX_ROWS, P, 0, 0, "sumsq") < 0) goto done;
    Py_buffer *cv = get(&h, co, 1, "d", 0, "counts");
    if (!cv) goto done;
    if (cv->shape[0] != G || G == 0) {
        PyErr_SetString(PyExc_ValueError, "counts must have one positive entry per group");
        goto done;
    }
    for (Py_ssize_t g = 0; g < G; g++) {
        n[g] = ((double *)cv->buf)[g];
        if (!(n[g] > 0)) {
            PyErr_SetString(PyExc_ValueError, "counts must have one positive entry per group");
            goto done;
        }
    }
    if (check_range(start, stop, P) < 0) goto done;
    double *out = ov->buf;
    Py_BEGIN_ALLOW_THREADS
    pooled_edge_loop((const double *const *)s, (const double *const *)q, n, G, k, out, start, stop);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release_all(&h);
    return result;
}

/* ---- central moments ----------------------------------------------------------------------- */

/* Where one call's raw power sums are and how to convert them (see central_moments' doc). */
typedef struct {
    const double *S, *W, *off, *centre, *scale;
    Py_ssize_t P, M;
    int64_t i0;
    const int64_t *iu, *ip, *i3, *i4;
} SumsSource;

/* The sums, weights, offset (or None), index (float64 row numbers, parsed into `idx`),
 * centre and scale arguments of central_moments and moment_maps_of_sums, into `src`. */
static int sums_source(SumsSource *src, Held *h, PyObject *so, PyObject *wo, PyObject *oo, PyObject *io,
                       PyObject *co, PyObject *sco, int64_t *idx)
{
    Py_buffer *sv = get(h, so, 2, "d", 0, "sums"), *wv, *iv, *cv, *scv, *ofv = NULL;
    if (!sv || !(wv = get(h, wo, 1, "d", 0, "weights")) || !(iv = get(h, io, 1, "d", 0, "index")) ||
        !(cv = get(h, co, 1, "d", 0, "centre")) || !(scv = get(h, sco, 1, "d", 0, "scale")))
        return -1;
    if (oo != Py_None && !(ofv = get(h, oo, 1, "d", 0, "offset"))) return -1;
    const Py_ssize_t R = sv->shape[0], M = cv->shape[0];
    if (M < 1 || M > MAX_MOTORS || scv->shape[0] != M || wv->shape[0] != R ||
        iv->shape[0] != 1 + M + M * M + 2 * M || (ofv && ofv->shape[0] != sv->shape[1])) {
        PyErr_SetString(PyExc_ValueError, "inconsistent shapes of the moment arrays");
        return -1;
    }
    for (Py_ssize_t i = 0; i < iv->shape[0]; i++) {
        const double x = ((double *)iv->buf)[i];
        idx[i] = (int64_t)x;
        if (idx[i] < -1 || idx[i] >= R || (i < 1 + M + M * M && idx[i] < 0)) {
            PyErr_SetString(PyExc_ValueError, "index out of range (the mean and covariance are required)");
            return -1;
        }
    }
    *src = (SumsSource){
        .S = sv->buf, .W = wv->buf, .off = ofv ? ofv->buf : NULL, .centre = cv->buf, .scale = scv->buf,
        .P = sv->shape[1], .M = M, .i0 = idx[0], .iu = idx + 1, .ip = idx + 1 + M,
        .i3 = idx + 1 + M + M * M, .i4 = idx + 1 + M + M * M + M,
    };
    return 0;
}

PyDoc_STRVAR(central_moments_doc,
"central_moments(sums, weights, offset, index, centre, scale, intensity, mean, cov, m3, m4,\n"
"                start, stop)\n\n"
"Raw power sums (R, P) in step units, with a per-pixel offset (P,) (or None) subtracted from\n"
"every frame through the monomial weights (R,), to the intensity (P,), mean (M, P), cov\n"
"(M, M, P), m3 and m4 (M, P) in motor units (see PowerSums.snapshot). index (float64, as\n"
"row numbers) = [i0, i_unit[M], i_pair[M*M], i3[M], i4[M]], -1 where the order is too low.\n"
"The outputs may instead hold only the pixel range (their last dimension stop - start):\n"
"pixel p then goes to column p - start (a tile's moments, without full-size arrays).");

static PyObject *central_moments(PyObject *self, PyObject *args)
{
    PyObject *so, *wo, *oo, *io, *co, *sco, *into, *mo, *cvo, *m3o, *m4o;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOnn", &so, &wo, &oo, &io, &co, &sco, &into, &mo, &cvo,
                          &m3o, &m4o, &start, &stop))
        return NULL;
    Held h = {.n = 0};
    PyObject *result = NULL;
    SumsSource src;
    int64_t idx[1 + MAX_MOTORS + MAX_MOTORS * MAX_MOTORS + 2 * MAX_MOTORS];
    if (sums_source(&src, &h, so, wo, oo, io, co, sco, idx) < 0) goto done;
    Py_buffer *inv, *mv, *covv, *m3v, *m4v;
    if (!(inv = get(&h, into, 1, "d", 1, "intensity")) || !(mv = get(&h, mo, 2, "d", 1, "mean")) ||
        !(covv = get(&h, cvo, 3, "d", 1, "cov")) || !(m3v = get(&h, m3o, 2, "d", 1, "m3")) ||
        !(m4v = get(&h, m4o, 2, "d", 1, "m4")))
        goto done;
    const Py_ssize_t P = src.P, M = src.M;
    if (check_range(start, stop, P) < 0) goto done;
    /* outputs over all P pixels, or over the range only (Q = stop - start columns) */
    const Py_ssize_t Q = inv->shape[0], base = Q == P ? 0 : start;
    if ((Q != P && Q != stop - start) || mv->shape[0] != M || mv->shape[1] != Q ||
        covv->shape[0] != M || covv->shape[1] != M || covv->shape[2] != Q || m3v->shape[0] != M ||
        m3v->shape[1] != Q || m4v->shape[0] != M || m4v->shape[1] != Q) {
        PyErr_SetString(PyExc_ValueError, "inconsistent shapes of the moment arrays");
        goto done;
    }
    const double *S = src.S, *W = src.W, *off = src.off, *centre = src.centre, *scale = src.scale;
    const int64_t i0 = src.i0, *iu = src.iu, *ip = src.ip, *i3 = src.i3, *i4 = src.i4;
    double *I = inv->buf, *mean = mv->buf, *cov = covv->buf, *m3 = m3v->buf, *m4 = m4v->buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t p = start; p < stop; p++) {
        const double o = off ? off[p] : 0.0;
        const Py_ssize_t q = p - base;  /* the output column */
#define RAW(row) (S[(row) * P + p] - W[row] * o)
        const double s0 = RAW(i0);
        I[q] = s0;
        const double inv_s0 = s0 > 0 ? 1.0 / s0 : NAN;
        double mu[MAX_MOTORS];
        for (Py_ssize_t a = 0; a < M; a++) mu[a] = RAW(iu[a]) * inv_s0;
        for (Py_ssize_t a = 0; a < M; a++) {
            for (Py_ssize_t b = a; b < M; b++) {
                const double c = (RAW(ip[a * M + b]) * inv_s0 - mu[a] * mu[b]) * scale[a] * scale[b];
                cov[(a * M + b) * Q + q] = c;
                cov[(b * M + a) * Q + q] = c;
            }
            /* Horner forms of the raw -> central conversion in step units, then scaled */
            const double x = mu[a], e2 = RAW(ip[a * M + a]) * inv_s0;
            const double sa = scale[a];
            double e3 = NAN;
            if (i3[a] >= 0) {
                e3 = RAW(i3[a]) * inv_s0;
                m3[a * Q + q] = (e3 - x * (3.0 * e2 - 2.0 * x * x)) * sa * sa * sa;
            } else {
                m3[a * Q + q] = NAN;
            }
            if (i4[a] >= 0) {
                const double e4 = RAW(i4[a]) * inv_s0;
                m4[a * Q + q] = (e4 - x * (4.0 * e3 - x * (6.0 * e2 - 3.0 * x * x))) * sa * sa * sa * sa;
            } else {
                m4[a * Q + q] = NAN;
            }
            mean[a * Q + q] = centre[a] + sa * x;
        }
#undef RAW
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release_all(&h);
    return result;
}

/* ---- named maps of the moments ----------------------------------------------------------- */

PyDoc_STRVAR(moment_maps_doc,
"moment_maps(mean, cov, m3, m4, valid, fwhm_per_sigma, out, start, stop)\n\n"
"For pixels start <= p < stop, the rows of out (list of (P,) float64): for each motor a, com =\n"
"mean[a], fwhm = fwhm_per_sigma * sqrt(var), skewness = m3[a] / (var * sqrt(var)), kurtosis =\n"
"m4[a] / (var * var) - 3 with var = cov[a, a]; then cov[a, b] for each a < b. NaN where valid[p]\n"
"(bool) is false, and fwhm, skewness and kurtosis also where var is not > 0 (see\n"
"maps.moment_maps). mean, m3, m4 (M, P), cov (M, M, P) float64.");

static PyObject *moment_maps(PyObject *self, PyObject *args)
{
    PyObject *mo, *co, *m3o, *m4o, *vo, *oo;
    double fwhm_per_sigma;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "OOOOOdOnn", &mo, &co, &m3o, &m4o, &vo, &fwhm_per_sigma, &oo, &start, &stop))
        return NULL;
    Held h = {.n = 0};
    PyObject *result = NULL;
    double *out[MAX_ROWS];
    Py_buffer *mv = get(&h, mo, 2, "d", 0, "mean"), *cv, *m3v, *m4v, *vv;
    if (!mv || !(cv = get(&h, co, 3, "d", 0, "cov")) || !(m3v = get(&h, m3o, 2, "d", 0, "m3")) ||
        !(m4v = get(&h, m4o, 2, "d", 0, "m4")) || !(vv = get(&h, vo, 1, "?", 0, "valid")))
        goto done;
    const Py_ssize_t M = mv->shape[0], P = mv->shape[1];
    if (M < 1 || M > MAX_MOTORS || cv->shape[0] != M || cv->shape[1] != M || cv->shape[2] != P ||
        m3v->shape[0] != M || m3v->shape[1] != P || m4v->shape[0] != M || m4v->shape[1] != P ||
        vv->shape[0] != P) {
        PyErr_SetString(PyExc_ValueError, "inconsistent shapes of the moment arrays");
        goto done;
    }
    Py_ssize_t n_out = 4 * M + M * (M - 1) / 2;
    if (get_rows(&h, oo, out, &n_out, MAX_ROWS, P, 1, 0, "out") < 0) goto done;
    if (check_range(start, stop, P) < 0) goto done;
    const double *mean = mv->buf, *cov = cv->buf, *m3 = m3v->buf, *m4 = m4v->buf;
    const unsigned char *valid = vv->buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t p = start; p < stop; p++) {
        const int ok = valid[p] != 0;
        for (Py_ssize_t a = 0; a < M; a++) {
            const double var = cov[(a * M + a) * P + p];
            const int positive = ok && var > 0;
            const double sd = sqrt(positive ? var : 0.0);  /* never < 0: sqrt stays inline */
            out[4 * a][p] = ok ? mean[a * P + p] : NAN;
            out[4 * a + 1][p] = positive ? fwhm_per_sigma * sd : NAN;
            out[4 * a + 2][p] = positive ? m3[a * P + p] / (var * sd) : NAN;
            out[4 * a + 3][p] = positive ? m4[a * P + p] / (var * var) - 3.0 : NAN;
        }
        Py_ssize_t r = 4 * M;
        for (Py_ssize_t a = 0; a < M; a++)
            for (Py_ssize_t b = a + 1; b < M; b++) out[r++][p] = ok ? cov[(a * M + b) * P + p] : NAN;
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release_all(&h);
    return result;
}

/* ---- mosaicity colours ------------------------------------------------------------------- */

/* RGB of pixels start <= p < stop from `angle` = atan2(v, u) of those pixels (angle[0] is
 * pixel start's); `f32`: a and b are float32 (each value taken exactly as a double, so the
 * colours are those of the float64 maps). Branch-free, so that it vectorizes; inlined with a
 * constant `f32`. */
static inline __attribute__((always_inline)) void hsv_kernel(const void *av, const void *bv, const int f32,
                                                              double ca, double sa, double cb, double sb,
                                                              const double *angle, float *out,
                                                              Py_ssize_t start, Py_ssize_t stop)
{
    for (Py_ssize_t p = start; p < stop; p++) {
        const double a = AS_DOUBLE(av, f32, p), b = AS_DOUBLE(bv, f32, p);
        const int ok = isfinite(a) & isfinite(b);  /* else no signal: black, no orientation has it */
        const double u = (a - ca) / sa, v = (b - cb) / sb;
        double hue6 = angle[p - start] * (3.0 / M_PI);  /* sixths of a turn, in [-3, 3] */
        hue6 = hue6 < 0 ? hue6 + 6.0 : hue6;
        /* sqrt(u^2 + v^2), not hypot (which guards against overflow and does not vectorize):
         * within an ulp of it; overflow (inf) and underflow (0) land where the clip below
         * puts the exact value anyway, to within 1e-150 of a colour */
        double sat = sqrt(u * u + v * v);
        sat = sat < 1.0 ? sat : 1.0;
        /* closed form of HSV -> RGB at value 1: 1 - s * clip(min(k, 4 - k), 0, 1) with
         * k = (n + hue6) mod 6 for n = 5, 3, 1; n + hue6 is in [1, 11], where subtracting 6 is
         * exact, so equal to fmod (whose four calls per pixel cost 0.025 s of CPU at 2048^2) */
#define CHANNEL(c, n)                                                   \
        {                                                               \
            double k = n + hue6;                                        \
            k = k < 6.0 ? k : k - 6.0;                                  \
            double g = k < 4.0 - k ? k : 4.0 - k;                       \
            g = g < 0.0 ? 0.0 : (g > 1.0 ? 1.0 : g);                    \
            out[3 * p + c] = ok ? (float)(1.0 - sat * g) : 0.0f;        \
        }
        CHANNEL(0, 5.0)
        CHANNEL(1, 3.0)
        CHANNEL(2, 1.0)
#undef CHANNEL
    }
}

TARGETS
static void hsv_loop(const void *av, const void *bv, int f32, double ca, double sa, double cb, double sb,
                     const double *angle, float *out, Py_ssize_t start, Py_ssize_t stop)
{
    if (f32) hsv_kernel(av, bv, 1, ca, sa, cb, sb, angle, out, start, stop);
    else hsv_kernel(av, bv, 0, ca, sa, cb, sb, angle, out, start, stop);
}

PyDoc_STRVAR(hsv_colour_doc,
"hsv_colour(a, b, centre_a, scale_a, centre_b, scale_b, angle, out, start, stop)\n\n"
"out[p] = RGB (3 float32) of the orientation vector (u, v) = ((a[p] - centre_a) / scale_a,\n"
"(b[p] - centre_b) / scale_b), for start <= p < stop: hue = its direction in turns\n"
"counter-clockwise from +u, saturation = its length clipped to 1, value 1; black (0, 0, 0)\n"
"where a[p] or b[p] is not finite (see orientation.mosaicity_rgb). a, b (P,) both float64 or\n"
"both float32 (read as float64: the live float32 COM maps need no converted copies); angle\n"
"(stop - start,) float64 = arctan2(v, u) of those pixels (numpy's: see orientation._colour);\n"
"out (P, 3) float32.");

static PyObject *hsv_colour(PyObject *self, PyObject *args)
{
    PyObject *ao, *bo, *ango, *oo;
    double ca, sa, cb, sb;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "OOddddOOnn", &ao, &bo, &ca, &sa, &cb, &sb, &ango, &oo, &start, &stop))
        return NULL;
    Held h = {.n = 0};
    PyObject *result = NULL;
    Py_buffer *av = get(&h, ao, 1, NULL, 0, "a"), *bv, *angv, *ov;
    if (!av || !(bv = get(&h, bo, 1, NULL, 0, "b")) || !(angv = get(&h, ango, 1, "d", 0, "angle")) ||
        !(ov = get(&h, oo, 2, "f", 1, "out")))
        goto done;
    const int f32 = float32_or_64(av);
    if (f32 < 0 || float32_or_64(bv) != f32) {
        PyErr_SetString(PyExc_TypeError, "a and b must be both float64 or both float32");
        goto done;
    }
    const Py_ssize_t P = av->shape[0];
    if (bv->shape[0] != P || ov->shape[0] != P || ov->shape[1] != 3) {
        PyErr_SetString(PyExc_ValueError, "a, b must be (P,) and out (P, 3)");
        goto done;
    }
    if (check_range(start, stop, P) < 0) goto done;
    if (angv->shape[0] != stop - start) {
        PyErr_SetString(PyExc_ValueError, "angle must have one value per pixel of start..stop");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    hsv_loop(av->buf, bv->buf, f32, ca, sa, cb, sb, angv->buf, ov->buf, start, stop);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release_all(&h);
    return result;
}

/* ---- kernel average misorientation ------------------------------------------------------- */

/* Rows start <= y < stop of KAM, gathering every neighbour of each pixel (so that threads
 * on other row ranges never write here). `valid` holds rows y0.. of "finite in every map";
 * `total` and `count` are one row of scratch. Inlined with constant `f32` and `M`, so each
 * dtype and map count gets its own loop with the map loop unrolled. */
static inline __attribute__((always_inline)) void kam_kernel(
    const void *const *maps, const int f32, const Py_ssize_t M, const Py_ssize_t H, const Py_ssize_t W,
    const int64_t *off, const Py_ssize_t K, const double max_distance, double *out,
    const Py_ssize_t start, const Py_ssize_t stop, unsigned char *valid, const Py_ssize_t y0,
    const Py_ssize_t y1, double *total, int32_t *count)
{
#define AT(m, i) AS_DOUBLE(maps[m], f32, i)
    for (Py_ssize_t i = 0; i < (y1 - y0) * W; i++) {
        int ok = 1;
        for (Py_ssize_t m = 0; m < M; m++) ok &= isfinite(AT(m, y0 * W + i)) != 0;
        valid[i] = (unsigned char)ok;
    }
    for (Py_ssize_t y = start; y < stop; y++) {
        const unsigned char *vp = valid + (y - y0) * W;
        for (Py_ssize_t x = 0; x < W; x++) {
            total[x] = 0.0;
            count[x] = 0;
        }
        for (Py_ssize_t k = 0; k < K; k++) {
            const Py_ssize_t dy = off[2 * k], dx = off[2 * k + 1], qy = y + dy;
            if (qy < 0 || qy >= H || dx >= W || dx <= -W) continue;
            const Py_ssize_t x0 = dx < 0 ? -dx : 0, x1 = dx > 0 ? W - dx : W;
            const Py_ssize_t p0 = y * W, q0 = qy * W + dx;
            const unsigned char *vq = valid + (qy - y0) * W + dx;
            for (Py_ssize_t x = x0; x < x1; x++) {
                double s = 0.0;
                for (Py_ssize_t m = 0; m < M; m++) {
                    const double d = AT(m, p0 + x) - AT(m, q0 + x);
                    s += d * d;
                }
                const int both = vp[x] & vq[x];
                const double dist = sqrt(both ? s : 0.0);  /* never NaN: sqrt stays inline */
                const int ok = both & (dist <= max_distance);
                total[x] += ok ? dist : 0.0;
                count[x] += ok;
            }
        }
        for (Py_ssize_t x = 0; x < W; x++) out[y * W + x] = vp[x] && count[x] ? total[x] / count[x] : NAN;
    }
#undef AT
}

/* kam_kernel with the dtype and map count constants, one clone per target (the row loops
 * vectorize: at 2048^2, one COM map, 2 cores, 0.045 s for the generic build). */
TARGETS
static void kam_loop(const void *const *maps, int f32, Py_ssize_t M, Py_ssize_t H, Py_ssize_t W,
                     const int64_t *off, Py_ssize_t K, double max_distance, double *out, Py_ssize_t start,
                     Py_ssize_t stop, unsigned char *valid, Py_ssize_t y0, Py_ssize_t y1, double *total,
                     int32_t *count)
{
#define KAM(F32, NM) kam_kernel(maps, F32, NM, H, W, off, K, max_distance, out, start, stop, valid, y0, y1, total, count)
    if (f32) {
        switch (M) {
            case 1: KAM(1, 1); break;
            case 2: KAM(1, 2); break;
            case 3: KAM(1, 3); break;
            default: KAM(1, M);
        }
    } else {
        switch (M) {
            case 1: KAM(0, 1); break;
            case 2: KAM(0, 2); break;
            case 3: KAM(0, 3); break;
            default: KAM(0, M);
        }
    }
#undef KAM
}

PyDoc_STRVAR(kam_rows_doc,
"kam_rows(maps, offsets, max_distance, out, start, stop)\n\n"
"For rows start <= y < stop: out[y, x] = mean distance sqrt(sum_m (map_m[y, x] -\n"
"map_m[y + dy, x + dx])^2) to the neighbours (dy, dx) of offsets ((K, 2) int64) that are inside\n"
"the map, finite in every map and no farther than max_distance (inf: no limit); NaN where the\n"
"pixel is not finite in every map or has no such neighbour (see orientation.kam). maps: a\n"
"sequence of (H, W) arrays, all float64 or all float32; out (H, W) float64.");

static PyObject *kam_rows(PyObject *self, PyObject *args)
{
    PyObject *mo, *oo, *outo;
    double max_distance;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "OOdOnn", &mo, &oo, &max_distance, &outo, &start, &stop)) return NULL;
    Held h = {.n = 0};
    PyObject *result = NULL, *seq = NULL;
    unsigned char *scratch = NULL;
    const void *maps[MAX_ROWS];
    Py_buffer *ov = get(&h, oo, 2, NULL, 0, "offsets"), *outv;
    if (!ov || !(outv = get(&h, outo, 2, "d", 1, "out"))) goto done;
    const char *of = format_of(ov);
    if (ov->itemsize != 8 || (strcmp(of, "q") != 0 && strcmp(of, "l") != 0) || ov->shape[1] != 2) {
        PyErr_SetString(PyExc_ValueError, "offsets must be (K, 2) int64");
        goto done;
    }
    const Py_ssize_t H = outv->shape[0], W = outv->shape[1], K = ov->shape[0];
    if (!(seq = PySequence_Fast(mo, "maps must be a sequence of arrays"))) goto done;
    const Py_ssize_t M = PySequence_Fast_GET_SIZE(seq);
    if (M < 1 || M > MAX_ROWS) {
        PyErr_Format(PyExc_ValueError, "need 1 to %d maps, got %zd", MAX_ROWS, M);
        goto done;
    }
    int f32 = 0;
    for (Py_ssize_t m = 0; m < M; m++) {
        Py_buffer *v = get(&h, PySequence_Fast_GET_ITEM(seq, m), 2, NULL, 0, "maps");
        if (!v) goto done;
        const int kind = float32_or_64(v);
        if (m == 0) f32 = kind;
        if (kind < 0 || kind != f32 || v->shape[0] != H || v->shape[1] != W) {
            PyErr_SetString(PyExc_ValueError, "maps must be all float64 or all float32, of the shape of out");
            goto done;
        }
        maps[m] = v->buf;
    }
    if (check_range(start, stop, H) < 0) goto done;
    const int64_t *off = ov->buf;
    Py_ssize_t R = 0;  /* rows of halo */
    for (Py_ssize_t k = 0; k < K; k++) {
        const int64_t dy = off[2 * k] < 0 ? -off[2 * k] : off[2 * k];
        R = dy > R ? (dy < H ? (Py_ssize_t)dy : H) : R;
    }
    const Py_ssize_t y0 = start - R > 0 ? start - R : 0, y1 = stop + R < H ? stop + R : H;
    if (start == stop) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    /* one row of totals and counts, then the validity of rows y0..y1 */
    scratch = PyMem_RawMalloc(W * (sizeof(double) + sizeof(int32_t)) + (y1 - y0) * W);
    if (!scratch) {
        PyErr_NoMemory();
        goto done;
    }
    double *total = (double *)scratch;
    int32_t *count = (int32_t *)(total + W);
    unsigned char *valid = (unsigned char *)(count + W);
    double *out = outv->buf;
    Py_BEGIN_ALLOW_THREADS
    kam_loop(maps, f32, M, H, W, off, K, max_distance, out, start, stop, valid, y0, y1, total, count);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyMem_RawFree(scratch);
    Py_XDECREF(seq);
    release_all(&h);
    return result;
}

/* ---- exact order statistics of a filtered map --------------------------------------------- */

#define SELECT_BINS 65536

/* The value of rank k (0-based) of a[0..n): quickselect with a three-way partition, so that
 * runs of equal values (a map's many identical pixels) cost one pass, not quadratic time. */
static double select_rank(double *a, Py_ssize_t n, Py_ssize_t k)
{
    Py_ssize_t lo = 0, hi = n - 1;
    while (lo < hi) {
        const double x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi];
        const double pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        Py_ssize_t lt = lo, gt = hi, i = lo;
        while (i <= gt) {
            const double v = a[i];
            if (v < pivot) {
                a[i++] = a[lt];
                a[lt++] = v;
            } else if (v > pivot) {
                a[i] = a[gt];
                a[gt--] = v;
            } else {
                i++;
            }
        }
        if (k < lt) hi = lt - 1;
        else if (k > gt) lo = gt + 1;
        else return pivot;
    }
    return a[k];
}

#define SELECT_BLOCK 512 /* pixels per block of the passes */

/* One pass of order_statistics over the kept values (see its doc): what it reads, and what
 * each pass fills in. */
typedef struct {
    const void *v, *other; /* values, and the map that must be finite too (or NULL) */
    int vf32, of32;        /* float32 (else float64) */
    int positive;          /* keep only values > 0 */
    double centre;         /* NaN: the values; else |value - centre| */
    Py_ssize_t P;
    /* bounds pass: out */
    double vmin, vmax;
    Py_ssize_t n;
    /* histogram and gather passes: the bins, BIN(x) = min((x - vmin) * scale, BINS - 1) */
    double scale;
    uint32_t *hist;                  /* SELECT_BINS + 1 counts (the last: not kept) */
    const Py_ssize_t *bins;          /* gather: the bins whose values are wanted, */
    Py_ssize_t nbins, *fill;         /* the next free slot of each in pool */
    double *pool;
} SelectPass;

enum { PASS_BOUNDS, PASS_HISTOGRAM, PASS_GATHER };

/* A pass in blocks: each block's values (x, as float64) and kept flags first, then the pass's
 * work on them. Every loop but the histogram's increments and the gather's rare stores is a
 * plain loop over the block that GCC vectorizes (the filter had packed the kept values with
 * a store per pixel, which does not vectorize: 2048^2, one float32 map and its other, a
 * median took ~0.035 s that way, 0.0083 s this way). Inlined with the dtypes constant. The
 * bins are the same arithmetic in both passes that use them, so a value falls in the same
 * bin in each. */
static inline __attribute__((always_inline)) void select_kernel(SelectPass *s, const int vf32, const int of32,
                                                                const int has_other, const int pass)
{
    double x[SELECT_BLOCK];
    int64_t keep[SELECT_BLOCK];
    int32_t bin[SELECT_BLOCK];
    /* bounds: per position in the block (element-wise updates vectorize; a running minimum
     * is a reduction, which GCC vectorizes only under -ffinite-math-only) */
    double block_min[SELECT_BLOCK], block_max[SELECT_BLOCK];
    int64_t block_n[SELECT_BLOCK];
    if (pass == PASS_BOUNDS) {
        for (Py_ssize_t i = 0; i < SELECT_BLOCK; i++) {
            block_min[i] = INFINITY;
            block_max[i] = -INFINITY;
            block_n[i] = 0;
        }
    }
    const int distance = !isnan(s->centre), positive = s->positive;
    const double centre = s->centre, vmin = s->vmin, scale = s->scale;
    const Py_ssize_t P = s->P;
    const int32_t not_kept = SELECT_BINS;
    Py_ssize_t first = 0, last = -1; /* gather: the range of wanted bins */
    if (pass == PASS_GATHER) {
        first = SELECT_BINS;
        for (Py_ssize_t k = 0; k < s->nbins; k++) {
            first = s->bins[k] < first ? s->bins[k] : first;
            last = s->bins[k] > last ? s->bins[k] : last;
        }
    }
    for (Py_ssize_t p0 = 0; p0 < P; p0 += SELECT_BLOCK) {
        const Py_ssize_t n = P - p0 < SELECT_BLOCK ? P - p0 : SELECT_BLOCK;
        for (Py_ssize_t i = 0; i < n; i++) {
            const double a = AS_DOUBLE(s->v, vf32, p0 + i);
            int64_t k = isfinite(a) != 0;
            if (has_other) k &= isfinite(AS_DOUBLE(s->other, of32, p0 + i)) != 0;
            if (positive) k &= a > 0;
            x[i] = distance ? fabs(a - centre) : a;
            keep[i] = k;
        }
        if (pass == PASS_BOUNDS) {
            for (Py_ssize_t i = 0; i < n; i++) {
                const double lo = keep[i] ? x[i] : INFINITY, hi = keep[i] ? x[i] : -INFINITY;
                block_min[i] = lo < block_min[i] ? lo : block_min[i];
                block_max[i] = hi > block_max[i] ? hi : block_max[i];
                block_n[i] += keep[i];
            }
            continue;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            const double t = keep[i] ? (x[i] - vmin) * scale : 0.0;
            bin[i] = keep[i] ? (int32_t)(t < SELECT_BINS - 1.0 ? t : SELECT_BINS - 1.0) : not_kept;
        }
        if (pass == PASS_HISTOGRAM) {
            for (Py_ssize_t i = 0; i < n; i++) s->hist[bin[i]]++;
            continue;
        }
        /* most blocks hold no value of the wanted bins: a vectorized test first. One
         * unsigned comparison for first <= b <= last (for a median, b < first is a coin
         * toss per pixel: as a branch, mispredicted, it cost 0.016 s at 2048^2). */
        const uint32_t span = (uint32_t)(last - first);
        int32_t any = 0;
        for (Py_ssize_t i = 0; i < n; i++) any |= (uint32_t)(bin[i] - (int32_t)first) <= span;
        if (!any) continue;
        for (Py_ssize_t i = 0; i < n; i++) {
            const Py_ssize_t b = bin[i];
            if ((uint32_t)(b - first) > span) continue;
            for (Py_ssize_t k = 0; k < s->nbins; k++)
                if (s->bins[k] == b) s->pool[s->fill[k]++] = x[i];
        }
    }
    if (pass == PASS_BOUNDS) {
        double vmn = INFINITY, vmx = -INFINITY;
        Py_ssize_t count = 0;
        for (Py_ssize_t i = 0; i < SELECT_BLOCK; i++) {
            vmn = block_min[i] < vmn ? block_min[i] : vmn;
            vmx = block_max[i] > vmx ? block_max[i] : vmx;
            count += block_n[i];
        }
        s->vmin = vmn;
        s->vmax = vmx;
        s->n = count;
    }
}

TARGETS
static void select_pass(SelectPass *s, int pass)
{
#define PASS(VF32, OF32, OTHER)                                                        \
    switch (pass) {                                                                    \
        case PASS_BOUNDS: select_kernel(s, VF32, OF32, OTHER, PASS_BOUNDS); break;     \
        case PASS_HISTOGRAM: select_kernel(s, VF32, OF32, OTHER, PASS_HISTOGRAM); break; \
        default: select_kernel(s, VF32, OF32, OTHER, PASS_GATHER);                     \
    }
    if (s->vf32) {
        if (!s->other) { PASS(1, 0, 0) }
        else if (s->of32) { PASS(1, 1, 1) }
        else { PASS(1, 0, 1) }
    } else {
        if (!s->other) { PASS(0, 0, 0) }
        else if (s->of32) { PASS(0, 1, 1) }
        else { PASS(0, 0, 1) }
    }
#undef PASS
}

PyDoc_STRVAR(order_statistics_doc,
"order_statistics(values, other, positive, centre, ranks_of, lo, hi) -> n\n\n"
"Exact order statistics of the values kept from `values` (P,) float64 or float32: finite ones,\n"
"where `other` (P,) float64 or float32 (or None) is also finite, and > 0 if `positive`; each\n"
"taken as a float64, and as |value - centre| unless centre is NaN. For each fraction f of\n"
"`ranks_of` (float64), with n the number kept and r = floor((n - 1) * f): lo[j] = the value\n"
"of rank r, hi[j] that of rank min(r + 1, n - 1) (0-based, ascending): what np.percentile /\n"
"np.median interpolate.\n"
"Outputs are NaN when n is 0. Three passes (bounds, a 65536-bin histogram, the values of\n"
"the bins that hold the ranks) and a selection within those bins; values are not copied.");

static PyObject *order_statistics(PyObject *self, PyObject *args)
{
    PyObject *vo, *oo, *fo, *loo, *hio;
    int positive;
    double centre;
    if (!PyArg_ParseTuple(args, "OOpdOOO", &vo, &oo, &positive, &centre, &fo, &loo, &hio)) return NULL;
    Held h = {.n = 0};
    PyObject *result = NULL;
    uint32_t *hist = NULL;
    double *pool = NULL;
    Py_buffer *vv = get(&h, vo, 1, NULL, 0, "values"), *ov = NULL, *fv, *lov, *hiv;
    if (!vv || !(fv = get(&h, fo, 1, "d", 0, "ranks_of")) || !(lov = get(&h, loo, 1, "d", 1, "lo")) ||
        !(hiv = get(&h, hio, 1, "d", 1, "hi")))
        goto done;
    if (oo != Py_None && !(ov = get(&h, oo, 1, NULL, 0, "other"))) goto done;
    const int vf32 = float32_or_64(vv), of32 = ov ? float32_or_64(ov) : 0;
    if (vf32 < 0 || of32 < 0) {
        PyErr_SetString(PyExc_TypeError, "values and other must be float64 or float32");
        goto done;
    }
    const Py_ssize_t P = vv->shape[0], J = fv->shape[0];
    if ((ov && ov->shape[0] != P) || lov->shape[0] != J || hiv->shape[0] != J || J > 8) {
        PyErr_SetString(PyExc_ValueError, "other must match values, lo and hi ranks_of (at most 8)");
        goto done;
    }
    const void *v = vv->buf, *other = ov ? ov->buf : NULL;
    const double *frac = fv->buf;
    for (Py_ssize_t j = 0; j < J; j++) {
        if (!(frac[j] >= 0 && frac[j] <= 1)) {
            PyErr_SetString(PyExc_ValueError, "ranks_of must be fractions in [0, 1]");
            goto done;
        }
    }
    double *lo = lov->buf, *hi = hiv->buf;
    hist = PyMem_RawCalloc(SELECT_BINS + 1, sizeof(uint32_t));
    if (!hist) {
        PyErr_NoMemory();
        goto done;
    }
    SelectPass sp = {.v = v, .other = other, .vf32 = vf32, .of32 = of32, .positive = positive,
                     .centre = centre, .P = P, .hist = hist};
    Py_ssize_t n = 0;
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    select_pass(&sp, PASS_BOUNDS);
    n = sp.n;
    const double vmin = sp.vmin, vmax = sp.vmax;
    if (n == 0) {
        for (Py_ssize_t j = 0; j < J; j++) lo[j] = hi[j] = NAN;
    } else if (vmin == vmax) {
        for (Py_ssize_t j = 0; j < J; j++) lo[j] = hi[j] = vmin;
    } else {
        /* bins of equal width over [vmin, vmax]: (x - vmin) * scale is monotonic in x, so the
         * bins are ordered and a rank's value is in the bin where the counts reach it */
        double scale = SELECT_BINS / (vmax - vmin);
        if (!isfinite(scale)) scale = 0.0;  /* a range too wide for a double: one bin */
        sp.scale = scale;
        select_pass(&sp, PASS_HISTOGRAM);
        Py_ssize_t rank[16], bin_of[16], below[16];  /* per needed rank: its bin, the count below */
        Py_ssize_t R = 0;
        for (Py_ssize_t j = 0; j < J; j++) {
            const Py_ssize_t r = (Py_ssize_t)floor((double)(n - 1) * frac[j]);
            rank[R++] = r;
            rank[R++] = r + 1 < n ? r + 1 : n - 1;
        }
        for (Py_ssize_t i = 0; i < R; i++) {
            Py_ssize_t cum = 0, b = 0;
            while (cum + (Py_ssize_t)hist[b] <= rank[i]) cum += hist[b++];
            bin_of[i] = b;
            below[i] = cum;
        }
        /* the kept values of the needed bins, bin after bin (distinct bins only) */
        Py_ssize_t bins[16], start[16], nbins = 0, total = 0;
        for (Py_ssize_t i = 0; i < R; i++) {
            Py_ssize_t seen = 0;
            for (Py_ssize_t k = 0; k < nbins; k++) seen |= bins[k] == bin_of[i];
            if (!seen) {
                bins[nbins] = bin_of[i];
                start[nbins++] = total;
                total += hist[bin_of[i]];
            }
        }
        pool = malloc(total * sizeof(double));
        if (!pool) {
            failed = 1;
        } else {
            Py_ssize_t fill[16];
            for (Py_ssize_t k = 0; k < nbins; k++) fill[k] = start[k];
            sp.bins = bins;
            sp.nbins = nbins;
            sp.fill = fill;
            sp.pool = pool;
            select_pass(&sp, PASS_GATHER);
            for (Py_ssize_t i = 0; i < R; i++) {
                Py_ssize_t k = 0;
                while (bins[k] != bin_of[i]) k++;
                const double value = select_rank(pool + start[k], hist[bins[k]], rank[i] - below[i]);
                if (i % 2 == 0) lo[i / 2] = value;
                else hi[i / 2] = value;
            }
        }
    }
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyLong_FromSsize_t(n);
done:
    free(pool);
    PyMem_RawFree(hist);
    release_all(&h);
    return result;
}

static PyMethodDef methods[] = {
    {"order_statistics", order_statistics, METH_VARARGS, order_statistics_doc},
    {"pooled_edge_mean", pooled_edge_mean, METH_VARARGS, pooled_edge_mean_doc},
    {"central_moments", central_moments, METH_VARARGS, central_moments_doc},
    {"moment_maps", moment_maps, METH_VARARGS, moment_maps_doc},
    {"hsv_colour", hsv_colour, METH_VARARGS, hsv_colour_doc},
    {"kam_rows", kam_rows, METH_VARARGS, kam_rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pixelmaps",
    "Per-pixel snapshot arithmetic (C loops; see accumulators/moments.py, background.py, maps.py,\n"
    "orientation.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__pixelmaps(void) { return PyModule_Create(&module); }
