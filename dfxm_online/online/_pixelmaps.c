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

#define MAX_ROWS 64
#define MAX_MOTORS 3
#define MAX_BUFS (2 * MAX_ROWS + 16)

#include "_buffers.h"

/* ---- pooled edge baseline ---------------------------------------------------------------- */

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
    for (Py_ssize_t p = start; p < stop; p++) {
        double m_low = s[0][p] / n[0];
        double v = q[0][p] / n[0] - m_low * m_low;
        double var_low = v > 0 ? v : 0.0, n_low = n[0];
        for (Py_ssize_t g = 1; g < G; g++) {  /* the lowest group (first one on ties) */
            const double mean = s[g][p] / n[g];
            if (mean < m_low) {
                v = q[g][p] / n[g] - mean * mean;
                var_low = v > 0 ? v : 0.0;
                m_low = mean;
                n_low = n[g];
            }
        }
        double num = 0.0, den = 0.0;
        for (Py_ssize_t g = 0; g < G; g++) {
            if (s[g][p] / n[g] <= m_low + k * sqrt(var_low * (1.0 / n_low + 1.0 / n[g]))) {
                num += s[g][p];
                den += n[g];
            }
        }
        out[p] = num / den;
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release_all(&h);
    return result;
}

/* ---- central moments ----------------------------------------------------------------------- */

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
    Py_buffer *sv = get(&h, so, 2, "d", 0, "sums"), *wv, *iv, *cv, *scv, *inv, *mv, *covv, *m3v, *m4v;
    Py_buffer *ofv = NULL;
    if (!sv || !(wv = get(&h, wo, 1, "d", 0, "weights")) || !(iv = get(&h, io, 1, "d", 0, "index")) ||
        !(cv = get(&h, co, 1, "d", 0, "centre")) || !(scv = get(&h, sco, 1, "d", 0, "scale")) ||
        !(inv = get(&h, into, 1, "d", 1, "intensity")) || !(mv = get(&h, mo, 2, "d", 1, "mean")) ||
        !(covv = get(&h, cvo, 3, "d", 1, "cov")) || !(m3v = get(&h, m3o, 2, "d", 1, "m3")) ||
        !(m4v = get(&h, m4o, 2, "d", 1, "m4")))
        goto done;
    if (oo != Py_None && !(ofv = get(&h, oo, 1, "d", 0, "offset"))) goto done;
    const Py_ssize_t R = sv->shape[0], P = sv->shape[1], M = cv->shape[0];
    if (check_range(start, stop, P) < 0) goto done;
    /* outputs over all P pixels, or over the range only (Q = stop - start columns) */
    const Py_ssize_t Q = inv->shape[0], base = Q == P ? 0 : start;
    if (M < 1 || M > MAX_MOTORS || scv->shape[0] != M || wv->shape[0] != R ||
        iv->shape[0] != 1 + M + M * M + 2 * M || (Q != P && Q != stop - start) ||
        mv->shape[0] != M || mv->shape[1] != Q || covv->shape[0] != M || covv->shape[1] != M ||
        covv->shape[2] != Q || m3v->shape[0] != M || m3v->shape[1] != Q || m4v->shape[0] != M ||
        m4v->shape[1] != Q || (ofv && ofv->shape[0] != P)) {
        PyErr_SetString(PyExc_ValueError, "inconsistent shapes of the moment arrays");
        goto done;
    }
    int64_t idx[1 + MAX_MOTORS + MAX_MOTORS * MAX_MOTORS + 2 * MAX_MOTORS];
    for (Py_ssize_t i = 0; i < iv->shape[0]; i++) {
        const double x = ((double *)iv->buf)[i];
        idx[i] = (int64_t)x;
        if (idx[i] < -1 || idx[i] >= R || (i < 1 + M + M * M && idx[i] < 0)) {
            PyErr_SetString(PyExc_ValueError, "index out of range (the mean and covariance are required)");
            goto done;
        }
    }
    const double *S = sv->buf, *W = wv->buf, *off = ofv ? ofv->buf : NULL;
    const double *centre = cv->buf, *scale = scv->buf;
    double *I = inv->buf, *mean = mv->buf, *cov = covv->buf, *m3 = m3v->buf, *m4 = m4v->buf;
    const int64_t i0 = idx[0], *iu = idx + 1, *ip = idx + 1 + M, *i3 = idx + 1 + M + M * M,
                  *i4 = idx + 1 + M + M * M + M;
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

PyDoc_STRVAR(hsv_colour_doc,
"hsv_colour(a, b, centre_a, scale_a, centre_b, scale_b, out, start, stop)\n\n"
"out[p] = RGB (3 float32) of the orientation vector (u, v) = ((a[p] - centre_a) / scale_a,\n"
"(b[p] - centre_b) / scale_b): hue = its direction in turns counter-clockwise from +u,\n"
"saturation = its length clipped to 1, value 1; black (0, 0, 0) where a[p] or b[p] is not\n"
"finite (see orientation.mosaicity_rgb). a, b (P,) float64, out (P, 3) float32.");

static PyObject *hsv_colour(PyObject *self, PyObject *args)
{
    PyObject *ao, *bo, *oo;
    double ca, sa, cb, sb;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "OOddddOnn", &ao, &bo, &ca, &sa, &cb, &sb, &oo, &start, &stop)) return NULL;
    Held h = {.n = 0};
    PyObject *result = NULL;
    Py_buffer *av = get(&h, ao, 1, "d", 0, "a"), *bv, *ov;
    if (!av || !(bv = get(&h, bo, 1, "d", 0, "b")) || !(ov = get(&h, oo, 2, "f", 1, "out"))) goto done;
    const Py_ssize_t P = av->shape[0];
    if (bv->shape[0] != P || ov->shape[0] != P || ov->shape[1] != 3) {
        PyErr_SetString(PyExc_ValueError, "a, b must be (P,) and out (P, 3)");
        goto done;
    }
    if (check_range(start, stop, P) < 0) goto done;
    const double *a = av->buf, *b = bv->buf;
    float *out = ov->buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t p = start; p < stop; p++) {
        if (!isfinite(a[p]) || !isfinite(b[p])) {  /* no signal: black, no orientation has it */
            out[3 * p] = out[3 * p + 1] = out[3 * p + 2] = 0.0f;
            continue;
        }
        const double u = (a[p] - ca) / sa, v = (b[p] - cb) / sb;
        double hue6 = atan2(v, u) * (3.0 / M_PI);  /* sixths of a turn, in [-3, 3] */
        if (hue6 < 0) hue6 += 6.0;
        double sat = hypot(u, v);
        sat = sat < 1.0 ? sat : 1.0;
        static const double channel[3] = {5.0, 3.0, 1.0};
        for (int c = 0; c < 3; c++) {
            /* closed form of HSV -> RGB at value 1: 1 - s * clip(min(k, 4 - k), 0, 1) with
             * k = (n + hue6) mod 6; n + hue6 is in [1, 11], where subtracting 6 is exact, so
             * equal to fmod (whose four calls per pixel cost 0.025 s of CPU at 2048^2) */
            double k = channel[c] + hue6;
            k = k < 6.0 ? k : k - 6.0;
            double g = k < 4.0 - k ? k : 4.0 - k;
            g = g < 0.0 ? 0.0 : (g > 1.0 ? 1.0 : g);
            out[3 * p + c] = (float)(1.0 - sat * g);
        }
    }
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
#define AT(m, i) (f32 ? (double)((const float *)maps[m])[i] : ((const double *)maps[m])[i])
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
        const char *f = format_of(v);
        if (m == 0) f32 = strcmp(f, "f") == 0;
        if (strcmp(f, f32 ? "f" : "d") != 0 || v->shape[0] != H || v->shape[1] != W) {
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
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyMem_RawFree(scratch);
    Py_XDECREF(seq);
    release_all(&h);
    return result;
}

static PyMethodDef methods[] = {
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
