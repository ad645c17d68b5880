/* One pass over a pixel range of a batch, for one frame type T and product type C
 * (included by _framesums.c through _framesums_types.h).
 *
 *   sums[r][p]  += sum_f weights[f, r] * x[f, p]              (dense rows, e.g. monomials)
 *   gsums[g][p] += sum_{f: members[g, f]} x[f, p]             (frame groups, e.g. edge bands)
 *   gsumsq[g][p]+= sum_{f: members[g, f]} x[f, p]^2           (where gsumsq[g] != NULL)
 *   maximum[p]   = max(maximum[p], max_f x[f, p])             (NaN propagates, as numpy)
 *
 * Per tile of `tp` pixels (sized so the batch's converted tile stays in L2), every frame's
 * row is read once: converted to C into a thread-local buffer and, while it is in L1, added
 * to the groups it belongs to and to the maximum. For integer frames (GACC defined: an
 * integer type wide enough for a sum over a pass's frames) the maximum is taken in T and
 * the group sums in GACC (and, for values of at most 16 bits, INT_SQUARES, the squares in
 * uint64), exact, and folded into the double rows once per tile: integer operations per
 * value instead of conversions, compares and blends (measured at 2048^2 uint16, batches
 * of 64: 199 -> 238 frames/s for the pipeline's pass on one thread, bit-identical sums).
 * Squares of 32-bit values, and float frames (NaN propagates), stay in double.
 *
 * The dense rows are then register-blocked: RB rows x NV
 * vectors of running sums stay in registers while the batch's frames stream past, so each
 * converted value feeds RB fused multiply-adds and each dense sum is read and written once
 * per batch rather than once per frame. Groups cost work only for their member frames.
 *
 * Expects: T, TNAME, C, CNAME, VEC (vector of C, 64 bytes), LANES; GACC and INT_SQUARES
 * (0 or 1) for integer T.
 */
#define KCAT_(a, b, c) a##_##b##_##c
#define KCAT(a, b, c) KCAT_(a, b, c)
#define PASS_FN KCAT(pass, TNAME, CNAME)

TARGETS
static void PASS_FN(const Pass *restrict job, int64_t start, int64_t stop)
{
    const T *restrict frames = (const T *)job->frames;
    const int64_t F = job->F, P = job->P, R = job->R, G = job->G;
    const int64_t rpad = (R + RB - 1) / RB * RB;
    const uint8_t *restrict members = job->members;
    double *restrict maximum = job->maximum;
    C *w = (C *)job->scratch_w;
    C *xb = (C *)job->scratch_x;
    for (int64_t f = 0; f < F; f++)
        for (int64_t r = 0; r < rpad; r++)
            w[f * rpad + r] = r < R ? (C)job->weights[f * R + r] : (C)0;

    const int64_t tp = job->tp;
#ifdef GACC
    T *restrict tmax = (T *)job->scratch_m;
    GACC *restrict gacc = (GACC *)job->scratch_g;
#if INT_SQUARES
    uint64_t *restrict gsq = (uint64_t *)job->scratch_q;
#endif
    uint8_t gseen[MAX_GROUPS];
#endif
    for (int64_t t0 = start; t0 < stop; t0 += tp) {
        const int64_t n = stop - t0 < tp ? stop - t0 : tp;
#ifdef GACC
        memset(gseen, 0, sizeof gseen);
#endif
        for (int64_t f = 0; f < F; f++) {
            const T *src = frames + f * P + t0;
            if (t0 + tp < stop) {  /* the same row of the next tile, while this one works */
                const char *next = (const char *)(src + tp);
                for (int64_t b = 0; b < (int64_t)(tp * sizeof(T)); b += 64) __builtin_prefetch(next + b, 0, 3);
            }
            if (R > 0) {  /* packed by pixel block: xb[block][f][LANES * NV] */
                C *dst = xb + f * LANES * NV;
                int64_t i = 0;
                for (; i + LANES * NV <= n; i += LANES * NV) {
                    C *d = dst + (i / (LANES * NV)) * F * LANES * NV;
                    for (int v = 0; v < LANES * NV; v++) d[v] = (C)src[i + v];
                }
                if (i < n) {
                    C *d = dst + (i / (LANES * NV)) * F * LANES * NV;
                    for (int v = 0; v < LANES * NV; v++) d[v] = i + v < n ? (C)src[i + v] : (C)0;
                }
            }
#ifdef GACC
            if (maximum) {
                if (f == 0) memcpy(tmax, src, (size_t)n * sizeof(T));
                else for (int64_t i = 0; i < n; i++) tmax[i] = src[i] > tmax[i] ? src[i] : tmax[i];
            }
            for (int64_t g = 0; g < G; g++) {
                if (!members[g * F + f] || (job->gsumsq[g] && !INT_SQUARES)) continue;
                GACC *acc = gacc + g * tp;
                const int first = !gseen[g];
                gseen[g] = 1;
                if (first) for (int64_t i = 0; i < n; i++) acc[i] = (GACC)src[i];
                else for (int64_t i = 0; i < n; i++) acc[i] += (GACC)src[i];
#if INT_SQUARES
                if (job->gsumsq[g]) {
                    /* the square of a value of at most 16 bits is exact in uint32 (mod 2^32
                     * arithmetic gives it for negative int16 too) */
                    uint64_t *sq = gsq + g * tp;
                    if (first) for (int64_t i = 0; i < n; i++) sq[i] = (uint32_t)src[i] * (uint32_t)src[i];
                    else for (int64_t i = 0; i < n; i++) sq[i] += (uint32_t)src[i] * (uint32_t)src[i];
                }
#endif
            }
#else
            if (maximum) {
                double *mx = maximum + t0;
                for (int64_t i = 0; i < n; i++) {
                    /* a NaN maximum stays NaN (v > NaN is false); a NaN value replaces it */
                    const double m = mx[i], v = (double)src[i];
                    mx[i] = (v > m || v != v) ? v : m;
                }
            }
#endif
            for (int64_t g = 0; g < G; g++) {
                if (!members[g * F + f]) continue;
#ifdef GACC
                if (!job->gsumsq[g] || INT_SQUARES) continue;  /* summed in integers above */
#endif
                double *s = job->gsums[g] + t0;
                for (int64_t i = 0; i < n; i++) s[i] += (double)src[i];
                if (job->gsumsq[g]) {
                    double *q = job->gsumsq[g] + t0;
                    for (int64_t i = 0; i < n; i++) {
                        const double v = (double)src[i];
                        q[i] += v * v;
                    }
                }
            }
        }
#ifdef GACC
        if (maximum) {
            double *mx = maximum + t0;
            for (int64_t i = 0; i < n; i++) {
                const double m = mx[i], v = (double)tmax[i];
                mx[i] = v > m ? v : m;  /* a NaN maximum stays NaN */
            }
        }
        for (int64_t g = 0; g < G; g++) {
            if (!gseen[g]) continue;
            double *s = job->gsums[g] + t0;
            const GACC *acc = gacc + g * tp;
            for (int64_t i = 0; i < n; i++) s[i] += (double)acc[i];
#if INT_SQUARES
            if (job->gsumsq[g]) {
                double *q = job->gsumsq[g] + t0;
                const uint64_t *sq = gsq + g * tp;
                for (int64_t i = 0; i < n; i++) q[i] += (double)sq[i];
            }
#endif
        }
#endif
        for (int64_t r = 0; r < R; r++) {  /* this tile's running sums, before they are used */
            const char *row = (const char *)(job->sums + r * P + t0);
            for (int64_t b = 0; b < (int64_t)(n * sizeof(double)); b += 64) __builtin_prefetch(row + b, 1, 3);
        }
        for (int64_t r0 = 0; r0 < R; r0 += RB) {
            const int64_t nr = R - r0 < RB ? R - r0 : RB;
            for (int64_t p = 0; p < n; p += LANES * NV) {
                VEC a[RB][NV];
                for (int r = 0; r < RB; r++)
                    for (int v = 0; v < NV; v++) a[r][v] = (VEC){0};
                for (int64_t f = 0; f < F; f++) {
                    VEC x[NV];
                    const C *xp = xb + (p / (LANES * NV)) * F * LANES * NV + f * LANES * NV;
                    for (int v = 0; v < NV; v++) memcpy(&x[v], xp + LANES * v, sizeof(VEC));
                    const C *wf = w + f * rpad + r0;
                    for (int r = 0; r < RB; r++) {
                        const C c = wf[r];
                        for (int v = 0; v < NV; v++) a[r][v] += c * x[v];
                    }
                }
                const int64_t m = n - p < LANES * NV ? n - p : LANES * NV;
                for (int r = 0; r < nr; r++) {
                    C tmp[LANES * NV];
                    memcpy(tmp, a[r], sizeof tmp);
                    double *out = job->sums + (r0 + r) * P + t0 + p;
                    if (m == LANES * NV) {  /* constant trip count: fully vectorized */
                        for (int i = 0; i < LANES * NV; i++) out[i] += (double)tmp[i];
                    } else {
                        for (int64_t i = 0; i < m; i++) out[i] += (double)tmp[i];
                    }
                }
            }
        }
    }
}
#undef PASS_FN
#undef KCAT
#undef KCAT_
