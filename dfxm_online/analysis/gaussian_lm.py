"""Levenberg-Marquardt fits of Gaussian peaks, one compiled call per block of pixels.

The model of one pixel's curve over N frames at reduced motor coordinates u (N, M):

    mu(u) = b + sum_k A_k exp(-0.5 (u - p_k)^T S_k^-1 (u - p_k)),  S_ij = r_ij s_i s_j

with M = 1..3 motors and K peaks; the parameters of a pixel are laid out as
[b, (A, p_1..p_M, s_1..s_M, r_12, r_13, r_23) per peak] (`n_params`). M = 2, K = 1 is the
darfix paper's bivariate Gaussian (eq. 1-3).

Why a hand-written LM and not scipy.optimize.least_squares per pixel: a 256^2 mesh has
~35k curves with signal; scipy's per-call overhead alone (~1 ms) is ~35 s, which is what
darfix pays. Here a block of pixels is one nogil call, run on the project's tile threads
(dfxm_online/online/tiles.py; no prange, so several daemon threads may call it at once).

Weights are Poisson-like, var_n = max(mu_n - b + noise_var, 1) (the peaks' Poisson
variance plus the background's own per-frame variance, `_update_weights`), recomputed from
the model at the start of each iteration and held fixed during it (iteratively reweighted
least squares): its fixed point solves the Poisson quasi-likelihood equations
sum (y - mu) / var * dmu/dtheta = 0, without the downward bias of weighting by the data
(Neyman chi^2) or the upward one of a model-weighted chi^2 minimised directly.

Each peak is evaluated on its support only (`TAIL`, `_frame_set`): the frames where its
Gaussian is above 1e-8 of its height, widened by half a standard deviation; chi^2 and the
background's terms still count every frame, from per-pixel sums of the data (`_weights`,
`_chi2`, `_background_row`).

Measured (one thread, the bench's 26 x 37 mesh, 962 frames, two motors, 7 parameters; VM
shared with other sessions, quiet moments): ~3 iterations per pixel from the moments' start.
Before the support (every frame): a trial evaluation 2.5-3.9 us, the Jacobian 1.3 us, J^T W J
in float32 3-5 us for a peak near the mesh's centre and 11-14 us for one 2.5 / 3.6 steps off
it (the far tails' products, ~1e-40, are float32 denormals), the final float64 J^T W J 6-11
us; 43-45 us per pixel. Over the support (605 frames of that off-centre pixel's set): the
frames' Q 0.4 us, the set gathered 1.7-2 us (once or twice per pixel), a two-motor
evaluation ~1 us, the Jacobian 0.7 us, J^T W J 1.8 us; 34.7 us per pixel (1.24x; 1.22x
on the AVX2 target), what remains spread over the reading of the curve, the start, ~3
iterations and the final covariance, none above a fifth (bench/RESULTS.md). Where the
support covers every frame (41 frames of +-3 widths) the set's bookkeeping makes it 0.94x.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numba.core import types
from numba.extending import intrinsic

#: the LM damping's bounds: above the upper one a pixel gives up (no step lowers chi^2)
LAMBDA_START = 1e-3
LAMBDA_MIN = 1e-12
LAMBDA_MAX = 1e12
#: reduced-unit bound that keeps a trial step valid: a width below a fifth of a step cannot
#: be told from a one-point spike (the neighbours get exp(-12.5) of it)
MIN_SIGMA = 0.2
#: an accepted step that lowers chi^2 by less than this fraction of it ends the fit
FTOL = 1e-10
#: after this many iterations a fit whose amplitude is below NO_PEAK_SIGMAS standard errors
#: stops, not converged: there is no peak, and the fit of noise drifts (a broad, tilted
#: Gaussian growing over the whole mesh) for all max_iterations steps, which made the
#: pixels of a pedestal the background left in the signal mask cost 10x a peak's (bench
#: mesh with --dark: 43 s; after 10 iterations 4.9 s, after 4 2.0 s). A real peak's
#: amplitude is many standard errors from the start (the moments' shape, A by least squares).
NO_PEAK_AFTER = 4
NO_PEAK_SIGMAS = 3.0
#: pixels whose curves `fit_block` copies pixel-major at once
GATHER = 64
#: beyond this Q = (u-p)^T S^-1 (u-p), exp(-Q/2) underflows: the peak's term is 0
Q_MAX = 1400.0
#: a peak's support: the frames where its Gaussian is above TAIL of its height. The fits
#: evaluate the peaks, the Jacobian and J^T W J on the support only and take the model as
#: b beyond it (a change of < TAIL x A, 2.5e-6 counts for a 250-count peak); chi^2, the
#: background's gradient and J^T W J still count every frame, from per-pixel sums
#: (`fit_block`). On the bench's 26 x 37 mesh, which spans +-7 sigma, ~40 % of the frames
#: lie beyond it.
TAIL = 1e-8
Q_CUT = -2.0 * math.log(TAIL)
#: the frames a pixel's fit evaluates are its support widened by this many standard
#: deviations (`_frame_set`), so that most steps stay inside it and the set is gathered
#: once or twice per pixel, not at every evaluation
SET_MARGIN = 0.5

# fastmath flags that let LLVM vectorise the sums over frames (reassociation) but keep the
# NaN / inf semantics the validity checks rely on
_FAST = {"reassoc", "contract", "arcp", "nsz"}


def n_peak_params(n_motors: int) -> int:
    """Parameters of one peak: amplitude, M positions, M widths, M(M-1)/2 correlations."""
    return 1 + 2 * n_motors + n_motors * (n_motors - 1) // 2


def n_params(n_motors: int, n_peaks: int) -> int:
    """Parameters of a pixel: the background and each peak's."""
    return 1 + n_peaks * n_peak_params(n_motors)


@njit(cache=True, nogil=True)
def _correlation_inverse(theta, base, m, rinv):
    """Inverse of the peak's correlation matrix into `rinv` (M x M); False if the
    correlations do not make a positive-definite matrix (or a width is not > MIN_SIGMA)."""
    for i in range(m):
        s = theta[base + 1 + m + i]
        if not (s > MIN_SIGMA):
            return False
    if m == 1:
        rinv[0, 0] = 1.0
        return True
    r01 = theta[base + 1 + 2 * m]
    if m == 2:
        det = 1.0 - r01 * r01
        if not (det > 1e-10):
            return False
        rinv[0, 0] = 1.0 / det
        rinv[1, 1] = 1.0 / det
        rinv[0, 1] = -r01 / det
        rinv[1, 0] = -r01 / det
        return True
    r02 = theta[base + 2 + 2 * m]
    r12 = theta[base + 3 + 2 * m]
    if not (1.0 - r01 * r01 > 1e-10):
        return False
    det = 1.0 + 2.0 * r01 * r02 * r12 - r01 * r01 - r02 * r02 - r12 * r12
    if not (det > 1e-10):
        return False
    rinv[0, 0] = (1.0 - r12 * r12) / det
    rinv[1, 1] = (1.0 - r02 * r02) / det
    rinv[2, 2] = (1.0 - r01 * r01) / det
    rinv[0, 1] = (r02 * r12 - r01) / det
    rinv[1, 0] = rinv[0, 1]
    rinv[0, 2] = (r01 * r12 - r02) / det
    rinv[2, 0] = rinv[0, 2]
    rinv[1, 2] = (r01 * r02 - r12) / det
    rinv[2, 1] = rinv[1, 2]
    return True


# exp(x) for x in [-Q_MAX/2, 0] as one elementwise loop that LLVM vectorises (numba's exp is
# a scalar libm call per value: 3.6 us of a 441-point evaluation, most of it exp). Range
# reduction x = k ln2 + r, |r| <= ln2/2, exp(r) by its Taylor series to r^12, 2^k put in the
# exponent bits: k = floor(x log2(e) + 1/2), its bits read off the mantissa of k + 1.5*2^52
# (exact for an integer k), so no float -> int conversion (AVX2 has no vector instruction
# for it); the bits move by register bitcasts. Written to stay right under reassociation:
# callers are compiled with fastmath and LLVM applies it to what it inlines (the classic
# (x + 1.5*2^52) - 1.5*2^52 rounding was folded away there). Relative error < 1e-13
# (tests/test_fits.py).
_MAGIC = 6755399441055744.0  # 1.5 * 2**52
_MAGIC_BITS = int(np.float64(_MAGIC).view(np.int64))
_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238
_LN2_LO = 1.9082149292705877e-10


@intrinsic
def _float_bits(typingctx, value):
    """The IEEE-754 bits of a float64 as an int64 (a bitcast)."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.int64))

    return sig, codegen


@intrinsic
def _bits_float(typingctx, value):
    """The float64 whose IEEE-754 bits are an int64 (a bitcast)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return sig, codegen


@njit(cache=True, nogil=True, fastmath=_FAST)
def _exp_neg_half(qf, out, n):
    """out[:n] = exp(-qf / 2) for qf >= 0 (qf beyond Q_MAX taken as Q_MAX: ~1e-304)."""
    for i in range(n):
        x = -0.5 * min(qf[i], Q_MAX)
        kf = math.floor(x * _LOG2E + 0.5)
        scale = _bits_float((_float_bits(kf + _MAGIC) - _MAGIC_BITS + 1023) << 52)
        r = (x - kf * _LN2_HI) - kf * _LN2_LO
        p = 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        out[i] = p * scale


@njit(cache=True, nogil=True, fastmath=_FAST)
def _evaluate(theta, ut, m, k_peaks, q, vm, rinv, tt, zz, g, mu, qf, n, q_cut):
    """mu[:n] = the model at the first n frames of ut (M, >= n); per peak k: g[k] its unit
    Gaussian (0 at invalid frames, vm = 1.0 / 0.0, and beyond its support, Q >= q_cut),
    tt[k, i] = (u_i - p_i) / s_i and zz[k] = R^-1 tt[k] (what the Jacobian reuses). False
    if the parameters are not valid: an amplitude not > 0 (a diffraction peak; from a poor
    start a free amplitude went negative, a dip fitted to one edge of the curve), a width or
    a correlation out of bounds. Every loop runs over the frames, so it vectorises."""
    b = theta[0]
    for n_ in range(n):
        mu[n_] = b
    for k in range(k_peaks):
        base = 1 + k * q
        amp = theta[base]
        if not (amp > 0.0) or not _correlation_inverse(theta, base, m, rinv):
            return False
        if m == 2:  # one pass instead of nine (the two-motor mesh is the common case)
            p0 = theta[base + 1]
            p1 = theta[base + 2]
            i0 = 1.0 / theta[base + 3]
            i1 = 1.0 / theta[base + 4]
            r00, r01, r11 = rinv[0, 0], rinv[0, 1], rinv[1, 1]
            for n_ in range(n):
                t0 = (ut[0, n_] - p0) * i0
                t1 = (ut[1, n_] - p1) * i1
                z0 = r00 * t0 + r01 * t1
                z1 = r01 * t0 + r11 * t1
                tt[k, 0, n_] = t0
                tt[k, 1, n_] = t1
                zz[k, 0, n_] = z0
                zz[k, 1, n_] = z1
                qf[n_] = t0 * z0 + t1 * z1
            _exp_neg_half(qf, g[k], n)
            for n_ in range(n):
                gk = g[k, n_] * vm[n_] if qf[n_] < q_cut else 0.0
                g[k, n_] = gk
                mu[n_] += amp * gk
            continue
        for i in range(m):
            p = theta[base + 1 + i]
            inv_s = 1.0 / theta[base + 1 + m + i]
            for n_ in range(n):
                tt[k, i, n_] = (ut[i, n_] - p) * inv_s
        for n_ in range(n):
            qf[n_] = 0.0
        for i in range(m):
            for n_ in range(n):
                zz[k, i, n_] = rinv[i, 0] * tt[k, 0, n_]
            for j in range(1, m):
                c = rinv[i, j]
                for n_ in range(n):
                    zz[k, i, n_] += c * tt[k, j, n_]
            for n_ in range(n):
                qf[n_] += tt[k, i, n_] * zz[k, i, n_]
        _exp_neg_half(qf, g[k], n)
        for n_ in range(n):
            gk = g[k, n_] * vm[n_] if qf[n_] < q_cut else 0.0
            g[k, n_] = gk
            mu[n_] += amp * gk
    return True


@njit(cache=True, nogil=True, fastmath=_FAST)
def _jacobian(theta, m, k_peaks, q, vm, tt, zz, g, jac, ag, n):
    """d mu / d theta at the first n frames into jac (n_params, >= n), from `_evaluate`'s
    tt, zz, g."""
    for n_ in range(n):
        jac[0, n_] = vm[n_]
    for k in range(k_peaks):
        base = 1 + k * q
        amp = theta[base]
        for n_ in range(n):
            jac[base, n_] = g[k, n_]
            ag[n_] = amp * g[k, n_]
        for i in range(m):
            inv_s = 1.0 / theta[base + 1 + m + i]
            for n_ in range(n):
                d = ag[n_] * zz[k, i, n_] * inv_s
                jac[base + 1 + i, n_] = d  # position
                jac[base + 1 + m + i, n_] = d * tt[k, i, n_]  # width
        c = base + 1 + 2 * m
        for i in range(m):
            for j in range(i + 1, m):
                for n_ in range(n):
                    jac[c, n_] = ag[n_] * zz[k, i, n_] * zz[k, j, n_]  # correlation
                c += 1


@njit(cache=True, nogil=True, fastmath=_FAST)
def _normal_equations(jac, w, r, npar, hess, grad, jw, zero, n):
    """hess = J^T W J, grad = J^T W r. The sums over frames vectorise; hess's rows go two
    columns at a time so that each pass over a row of W J feeds two sums (the dominant
    cost of an iteration: 4.4 -> 2.5 us for 7 parameters and 441 frames, in one run).

    `jac`, `jw` and `zero` float32 during the iterations: hess's sums (the bulk of the
    work) then take twice the values per vector instruction, and the step only needs hess
    roughly (the gradient, summed in float64, is what fixes the solution); float64 for the
    covariance at the solution. Over the first n frames."""
    for a in range(npar):
        ja = jac[a]
        wa = jw[a]
        s = 0.0
        for i in range(n):
            v = ja[i] * w[i]
            wa[i] = v
            s += v * r[i]
        grad[a] = s
    for a in range(npar):
        wa = jw[a]
        b = 0
        while b + 1 <= a:
            j0 = jac[b]
            j1 = jac[b + 1]
            s0 = zero
            s1 = zero
            for i in range(n):
                x = wa[i]
                s0 += x * j0[i]
                s1 += x * j1[i]
            hess[a, b] = s0
            hess[b, a] = s0
            hess[a, b + 1] = s1
            hess[b + 1, a] = s1
            b += 2
        if b == a:
            j0 = jac[b]
            s0 = zero
            for i in range(n):
                s0 += wa[i] * j0[i]
            hess[a, a] = s0


@njit(cache=True, nogil=True, fastmath=_FAST)
def _q_min(theta, ut, m, k_peaks, q, rinv, qmin):
    """qmin (N) = the smallest Q = (u-p)^T S^-1 (u-p) over the peaks at every frame, in one
    pass of a few multiplies per frame (vectorised; no exp). False if the parameters are
    not valid (`_evaluate`'s test)."""
    n = ut.shape[1]
    for n_ in range(n):
        qmin[n_] = np.inf
    for k in range(k_peaks):
        base = 1 + k * q
        if not (theta[base] > 0.0) or not _correlation_inverse(theta, base, m, rinv):
            return False
        p0 = theta[base + 1]
        i0 = 1.0 / theta[base + 1 + m]
        if m == 1:
            for n_ in range(n):
                t0 = (ut[0, n_] - p0) * i0
                qmin[n_] = min(qmin[n_], t0 * t0)
        elif m == 2:
            p1 = theta[base + 2]
            i1 = 1.0 / theta[base + 2 + m]
            r00, r11, r01 = rinv[0, 0], rinv[1, 1], 2.0 * rinv[0, 1]
            for n_ in range(n):
                t0 = (ut[0, n_] - p0) * i0
                t1 = (ut[1, n_] - p1) * i1
                qmin[n_] = min(qmin[n_], r00 * t0 * t0 + r11 * t1 * t1 + r01 * t0 * t1)
        else:
            p1 = theta[base + 2]
            p2 = theta[base + 3]
            i1 = 1.0 / theta[base + 2 + m]
            i2 = 1.0 / theta[base + 3 + m]
            r00, r11, r22 = rinv[0, 0], rinv[1, 1], rinv[2, 2]
            r01, r02, r12 = 2.0 * rinv[0, 1], 2.0 * rinv[0, 2], 2.0 * rinv[1, 2]
            for n_ in range(n):
                t0 = (ut[0, n_] - p0) * i0
                t1 = (ut[1, n_] - p1) * i1
                t2 = (ut[2, n_] - p2) * i2
                qf = r00 * t0 * t0 + r11 * t1 * t1 + r22 * t2 * t2 + r01 * t0 * t1 + r02 * t0 * t2 + r12 * t1 * t2
                qmin[n_] = min(qmin[n_], qf)
    return True


@njit(cache=True, nogil=True, fastmath=_FAST)
def _escapes(qmin, inset, vm, q_cut):
    """Whether a valid frame outside the frames set (inset 0) lies in the support (qmin <
    q_cut): a vectorised count over every frame."""
    s = 0.0
    for n_ in range(qmin.shape[0]):
        s += vm[n_] * (1.0 - inset[n_]) if qmin[n_] < q_cut else 0.0
    return s > 0.0


@njit(cache=True, nogil=True)
def _frame_set(qa, qb, vm, q_set, ut, y, inset, idx, ns_old, ua, ya):
    """The frames the fit of a pixel evaluates: the valid ones where min(qa, qb) < q_set
    (the supports of the current and the trial parameters with a margin, so that the next
    steps stay inside), their indices into idx, inset 1.0 there (0.0 elsewhere; the old set,
    idx[:ns_old], cleared first), their coordinates ua (M, ns) and data ya gathered
    contiguous (the loops over them vectorise). Returns ns."""
    m = ut.shape[0]
    for j in range(ns_old):
        inset[idx[j]] = 0.0
    ns = 0
    for n_ in range(qa.shape[0]):
        idx[ns] = n_
        ns += np.int64((qa[n_] < q_set) | (qb[n_] < q_set)) & np.int64(vm[n_] > 0.0)
    for j in range(ns):
        inset[idx[j]] = 1.0
    for j in range(ns):
        ya[j] = y[idx[j]]
    for i in range(m):
        for j in range(ns):
            ua[i, j] = ut[i, idx[j]]
    return ns


@njit(cache=True, nogil=True, fastmath=_FAST)
def _chi2(b, mu, ya, w, ns, ybar, wsums):
    """sum over every valid frame of w (y - model)^2, the model being mu over the frame set
    (ns frames, compact, as w and ya) and b beyond it (the set holds the support), from
    the weighted sums of the data over every frame (wsums: sum w, sum w (y - ybar),
    sum w (y - ybar)^2; `_weights`) for sum w (y - b)^2, plus the set's w h (h - 2 (y - b)),
    h = mu - b: every frame's residual counts, in a pass over the set only."""
    d = b - ybar
    s = wsums[2] - 2.0 * d * wsums[1] + d * d * wsums[0]
    for j in range(ns):
        h = mu[j] - b
        s += w[j] * h * (h - 2.0 * (ya[j] - b))
    return s


@njit(cache=True, nogil=True)
def _cholesky(a, npar, low):
    """Lower Cholesky factor of a (npar x npar) into low; False if not positive definite."""
    for i in range(npar):
        for j in range(i + 1):
            s = a[i, j]
            for k in range(j):
                s -= low[i, k] * low[j, k]
            if i == j:
                if not (s > 0.0):
                    return False
                low[i, i] = math.sqrt(s)
            else:
                low[i, j] = s / low[j, j]
    return True


@njit(cache=True, nogil=True)
def _cholesky_solve(low, npar, rhs, out):
    for i in range(npar):
        s = rhs[i]
        for k in range(i):
            s -= low[i, k] * out[k]
        out[i] = s / low[i, i]
    for i in range(npar - 1, -1, -1):
        s = out[i]
        for k in range(i + 1, npar):
            s -= low[k, i] * out[k]
        out[i] = s / low[i, i]


@njit(cache=True, nogil=True, fastmath=_FAST)
def _weights(mu, ya, b, ns, noise_var, n_valid, ybar, syc, syy, w, wsums):
    """w = 1 / var with var = the peaks' Poisson variance (mu - b) + the background's
    variance per frame (`noise_var` measured on frames without signal; where it is not
    known, the Poisson variance of b), at least 1 count. Not max(mu, 1) + noise_var: the
    measured variance already holds the Poisson noise of any pedestal that b fits, and
    counting it twice gave a reduced chi^2 of 0.58 on a 5-count pedestal.

    Beyond the frame set mu = b, so w is one value c there; w (compact) holds
    the set's ns frames' weights; wsums the weighted sums over every valid frame that
    `_chi2` and the background's row of J^T W J need, from the data's own sums
    syc = sum (y - ybar), syy = sum (y - ybar)^2."""
    background = noise_var if noise_var > 0.0 else max(b, 0.0)
    c = 1.0 / max(background, 1.0)
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    for j in range(ns):
        wj = 1.0 / max(max(mu[j] - b, 0.0) + background, 1.0)
        w[j] = wj
        dw = wj - c
        yc = ya[j] - ybar
        s0 += dw
        s1 += dw * yc
        s2 += dw * yc * yc
    wsums[0] = c * n_valid + s0
    wsums[1] = c * syc + s1
    wsums[2] = c * syy + s2


@njit(cache=True, nogil=True)
def _background_row(hess, grad, b, mu, w, na, ybar, wsums):
    """The background's diagonal term of J^T W J and its gradient over every frame (its
    Jacobian is 1 at each; the other rows vanish beyond the support): sum w and
    sum w (y - mu) = sum w (y - b) - sum_support w (mu - b)."""
    s = 0.0
    for j in range(na):
        s += w[j] * (mu[j] - b)
    hess[0, 0] = wsums[0]
    grad[0] = wsums[1] - (b - ybar) * wsums[0] - s


@njit(cache=True, nogil=True)
def _no_peak(theta, hess, npar, n_peaks, q, low, unit, col):
    """Whether a peak's amplitude is below NO_PEAK_SIGMAS of its standard error (from the
    inverse of J^T W J: the conditional one, 1 / sqrt(H_AA), misses that a Gaussian as broad
    as the mesh is b under another name, and kept such fits of noise going)."""
    if not _cholesky(hess, npar, low):
        return False
    for k in range(n_peaks):
        base = 1 + k * q
        unit[base] = 1.0
        _cholesky_solve(low, npar, unit, col)
        unit[base] = 0.0
        if col[base] > 0.0 and theta[base] < NO_PEAK_SIGMAS * math.sqrt(col[base]):
            return True
    return False


@njit(cache=True, nogil=True)
def _linear_amplitude(ya, g, na, n_valid, sy, top, theta, base):
    """Background and amplitude of one Gaussian shape g by linear least squares (the start:
    given the moments' position and width, these two are exact in one solve). g and ya over
    the shape's support (na frames; g = 0 beyond), sy the sum of the data over every valid
    frame, top their maximum."""
    s1 = float(n_valid)
    sg = sgg = sgy = 0.0
    for j in range(na):
        sg += g[j]
        sgg += g[j] * g[j]
        sgy += g[j] * ya[j]
    det = s1 * sgg - sg * sg
    if det > 1e-12 * max(s1 * sgg, 1e-300):
        theta[base] = (s1 * sgy - sg * sy) / det
        theta[0] = (sy - theta[base] * sg) / s1
    elif sgg > 0.0:
        theta[base] = sgy / sgg
        theta[0] = 0.0
    if not (theta[base] > 0.0):  # no peak where the start puts it: its height over b
        theta[base] = max(top - theta[0], 1.0)


@njit(cache=True, nogil=True)
def fit_block(data, offset, noise_var, u, theta0, n_motors, n_peaks, linear_start, max_iter, xtol, q_cut,
              theta_out, err_out, chi2_out, conv_out, iter_out, start, stop):
    """Fit pixels [start, stop) of `data` (N frames, P pixels; any numeric type).

    offset (P,) is subtracted from every frame of a pixel (the pipeline's background);
    noise_var (P,) is the background's per-frame variance; u (N, M) the reduced motor
    coordinates; theta0 (n_params, P) the start (pixels whose first peak position is NaN
    are skipped: NaN out, 0 iterations). With `linear_start`, b and A (one peak) are
    first solved for by linear least squares at the start's shape. q_cut bounds each
    peak's support (`Q_CUT`; inf: every frame, the full evaluation): the peaks, the
    Jacobian and J^T W J are evaluated over the support only, the model is b beyond it, and
    chi^2 and the background's terms still count every frame (`_chi2`, `_background_row`).

    Out (all (.., P)): theta_out parameters, err_out their standard errors (the inverse of
    J^T W J at the solution, times the reduced chi^2 when that exceeds 1), chi2_out the
    reduced chi^2, conv_out 1 where the fit converged (a step below `xtol` conditional
    standard errors, or no step that lowers chi^2 with the gradient that small), a finite
    covariance, every amplitude clear of its bound 0 (> 1e-3 of its standard error: a flat
    curve ends there) and every peak inside the scanned range of u; iter_out
    the iterations. Frames whose value is not finite are left out of that pixel's fit.
    Fits that went far out of the range (`diverged`) are NaN.
    """
    n = data.shape[0]
    m = n_motors
    q = 1 + 2 * m + m * (m - 1) // 2
    npar = 1 + n_peaks * q
    ut = np.ascontiguousarray(u.T)
    y = np.empty(n)
    vm = np.empty(n)
    ones = np.ones(n)
    w = np.empty(n)
    r = np.empty(n)
    qf = np.empty(n)
    qa = np.empty(n)
    qb = np.empty(n)
    ag = np.empty(n)
    wsums = np.empty(3)
    # the frame set (`_frame_set`): indices, membership, coordinates and data, compact
    idx = np.empty(n, dtype=np.int64)
    inset = np.zeros(n)
    ns = 0
    ua = np.empty((m, n))
    ya = np.empty(n)
    q_set = (math.sqrt(q_cut) + SET_MARGIN) ** 2
    # over the frame set, [cur]: the accepted parameters' model, [1 - cur]: the trial's
    mu = np.empty((2, n))
    g = np.empty((2, n_peaks, n))
    tt = np.empty((2, n_peaks, m, n))
    zz = np.empty((2, n_peaks, m, n))
    jac = np.empty((npar, n), dtype=np.float32)
    jw = np.empty((npar, n), dtype=np.float32)
    jac64 = np.empty((npar, n))
    jw64 = np.empty((npar, n))
    f32 = np.float32(0.0)
    hess = np.empty((npar, npar))
    damped = np.empty((npar, npar))
    low = np.empty((npar, npar))
    grad = np.empty(npar)
    delta = np.empty(npar)
    theta = np.empty(npar)
    trial = np.empty(npar)
    rinv = np.empty((3, 3))
    unit = np.zeros(npar)
    cov_col = np.empty(npar)
    u_low = np.empty(m)
    u_high = np.empty(m)
    for i in range(m):
        u_low[i] = ut[i].min()
        u_high[i] = ut[i].max()
    # the curves of GATHER pixels at a time, copied pixel-major: read one by one, a pixel's
    # frames are N cache lines on N pages (a 2048^2 band: 1.1 MB apart), a TLB miss each
    block = np.empty((GATHER, n))
    block_start = -GATHER
    for pix in range(start, stop):
        for a in range(npar):
            theta_out[a, pix] = np.nan
            err_out[a, pix] = np.nan
        chi2_out[pix] = np.nan
        conv_out[pix] = 0
        iter_out[pix] = 0
        if not np.isfinite(theta0[2, pix]):
            continue
        if pix >= block_start + GATHER:
            block_start = pix
            width = min(GATHER, stop - pix)
            for n_ in range(n):
                for j in range(width):
                    block[j, n_] = float(data[n_, pix + j])
        curve = block[pix - block_start]
        nv = noise_var[pix] if np.isfinite(noise_var[pix]) and noise_var[pix] > 0 else 0.0
        off = offset[pix]
        n_valid = 0
        sy = 0.0
        top = -np.inf
        for n_ in range(n):
            v = curve[n_] - off
            if np.isfinite(v):
                y[n_] = v
                vm[n_] = 1.0
                n_valid += 1
                sy += v
                top = max(top, v)
            else:
                y[n_] = 0.0
                vm[n_] = 0.0
        if n_valid <= npar:
            continue
        # the data's own sums over every valid frame, about their mean (`_weights`)
        ybar = sy / n_valid
        syc = 0.0
        syy = 0.0
        for n_ in range(n):
            d = (y[n_] - ybar) * vm[n_]
            syc += d
            syy += d * d
        for a in range(npar):
            theta[a] = theta0[a, pix]
        cur = 0
        if not _q_min(theta, ut, m, n_peaks, q, rinv, qa):
            continue
        ns = _frame_set(qa, qa, vm, q_set, ut, y, inset, idx, ns, ua, ya)
        if not _evaluate(theta, ua, m, n_peaks, q, ones, rinv, tt[cur], zz[cur], g[cur], mu[cur], qf, ns, q_cut):
            continue
        if linear_start and n_peaks == 1:
            _linear_amplitude(ya, g[cur, 0], ns, n_valid, sy, top, theta, 1)
            for j in range(ns):  # the shape is the same: no second evaluation
                mu[cur, j] = theta[0] + theta[1] * g[cur, 0, j]
        lam = LAMBDA_START
        converged = False
        iters = 0
        for it in range(max_iter):
            iters = it + 1
            _weights(mu[cur], ya, theta[0], ns, nv, n_valid, ybar, syc, syy, w, wsums)
            chi2 = _chi2(theta[0], mu[cur], ya, w, ns, ybar, wsums)
            for j in range(ns):
                r[j] = ya[j] - mu[cur, j]
            _jacobian(theta, m, n_peaks, q, ones, tt[cur], zz[cur], g[cur], jac, ag, ns)
            _normal_equations(jac, w, r, npar, hess, grad, jw, f32, ns)
            _background_row(hess, grad, theta[0], mu[cur], w, ns, ybar, wsums)
            if it >= NO_PEAK_AFTER and _no_peak(theta, hess, npar, n_peaks, q, low, unit, cov_col):
                break
            accepted = False
            nxt = 1 - cur
            while lam <= LAMBDA_MAX:
                for a in range(npar):
                    for b in range(npar):
                        damped[a, b] = hess[a, b]
                    damped[a, a] = hess[a, a] * (1.0 + lam) + lam * 1e-12
                if not _cholesky(damped, npar, low):
                    lam *= 10.0
                    continue
                _cholesky_solve(low, npar, grad, delta)
                for a in range(npar):
                    trial[a] = theta[a] + delta[a]
                if not _q_min(trial, ut, m, n_peaks, q, rinv, qb):
                    lam *= 10.0
                    continue
                if _escapes(qb, inset, vm, q_cut):
                    # the trial's support leaves the frame set: a new set around both, the
                    # current model and its weights over it (the same values frame by frame:
                    # the model is b beyond the support whatever the set)
                    _q_min(theta, ut, m, n_peaks, q, rinv, qa)
                    ns = _frame_set(qa, qb, vm, q_set, ut, y, inset, idx, ns, ua, ya)
                    _evaluate(theta, ua, m, n_peaks, q, ones, rinv, tt[cur], zz[cur], g[cur], mu[cur], qf, ns, q_cut)
                    _weights(mu[cur], ya, theta[0], ns, nv, n_valid, ybar, syc, syy, w, wsums)
                    chi2 = _chi2(theta[0], mu[cur], ya, w, ns, ybar, wsums)
                if not _evaluate(trial, ua, m, n_peaks, q, ones, rinv, tt[nxt], zz[nxt], g[nxt], mu[nxt], qf, ns,
                                 q_cut):
                    lam *= 10.0
                    continue
                chi2_trial = _chi2(trial[0], mu[nxt], ya, w, ns, ybar, wsums)
                if chi2_trial <= chi2:
                    accepted = True
                    lam = max(lam * 0.1, LAMBDA_MIN)
                    break
                lam *= 10.0
            if not accepted:
                # no step lowers chi^2: at the minimum if the Newton step is negligible
                small = True
                for a in range(npar):
                    if hess[a, a] > 0.0 and abs(grad[a]) > xtol * math.sqrt(hess[a, a]):
                        small = False
                converged = small
                break
            # a step below xtol standard errors, or one that lowers chi^2 by less than FTOL
            # of it (a parameter the data do not pin down drifting along a flat valley, e.g.
            # the position of a peak whose amplitude went to 0: such pixels took all
            # max_iterations steps, 43 s of a 256^2 mesh with a pedestal left in the mask)
            small = chi2 - chi2_trial <= FTOL * chi2
            if not small:
                small = True
                for a in range(npar):
                    if abs(delta[a]) * math.sqrt(max(hess[a, a], 0.0)) > xtol:
                        small = False
            for a in range(npar):
                theta[a] = trial[a]
            cur = nxt
            if small:
                converged = True
                break
        # the covariance at the solution, with its own weights
        _weights(mu[cur], ya, theta[0], ns, nv, n_valid, ybar, syc, syy, w, wsums)
        chi2 = _chi2(theta[0], mu[cur], ya, w, ns, ybar, wsums)
        for j in range(ns):
            r[j] = ya[j] - mu[cur, j]
        _jacobian(theta, m, n_peaks, q, ones, tt[cur], zz[cur], g[cur], jac64, ag, ns)
        _normal_equations(jac64, w, r, npar, hess, grad, jw64, 0.0, ns)
        _background_row(hess, grad, theta[0], mu[cur], w, ns, ybar, wsums)
        red = chi2 / (n_valid - npar)
        ok = _cholesky(hess, npar, low)
        scale = max(red, 1.0)
        for a in range(npar):
            theta_out[a, pix] = theta[a]
            if ok:
                unit[a] = 1.0
                _cholesky_solve(low, npar, unit, cov_col)
                unit[a] = 0.0
                err_out[a, pix] = math.sqrt(cov_col[a] * scale) if cov_col[a] > 0 else np.nan
        chi2_out[pix] = red
        inside = ok
        for k in range(n_peaks):
            base = 1 + k * q
            if not (theta[base] > 1e-3 * err_out[base, pix]):  # pinned at its bound, 0
                inside = False
            for i in range(m):
                if not (u_low[i] <= theta[base + 1 + i] <= u_high[i]):
                    inside = False
        conv_out[pix] = 1 if (converged and inside) else 0
        iter_out[pix] = iters
        if diverged(theta, m, n_peaks, q, u_low, u_high):
            for a in range(npar):
                theta_out[a, pix] = np.nan
                err_out[a, pix] = np.nan


@njit(cache=True, nogil=True)
def diverged(theta, m, n_peaks, q, u_low, u_high):
    """Whether a peak went more than half the scanned range beyond it, or grew wider than
    twice the range: a fit of no peak (a flat curve, a pedestal the background missed)
    wanders off to values that say nothing (peaks at +-1e4 steps) and would swamp a map's
    colour scale; those pixels are NaN, not converged, with their iterations."""
    for k in range(n_peaks):
        base = 1 + k * q
        for i in range(m):
            span = u_high[i] - u_low[i]
            if abs(theta[base + 1 + i] - 0.5 * (u_low[i] + u_high[i])) > span:
                return True
            if theta[base + 1 + m + i] > 2.0 * span:
                return True
    return False


@njit(cache=True, nogil=True)
def model_block(theta, u, n_motors, n_peaks, out, start, stop):
    """The model mu (N, P) of the parameters of pixels [start, stop) into out (NaN where
    the parameters are NaN or not valid)."""
    n = u.shape[0]
    m = n_motors
    q = 1 + 2 * m + m * (m - 1) // 2
    npar = 1 + n_peaks * q
    ut = np.ascontiguousarray(u.T)
    vm = np.ones(n)
    g = np.empty((n_peaks, n))
    tt = np.empty((n_peaks, m, n))
    zz = np.empty((n_peaks, m, n))
    mu = np.empty(n)
    qf = np.empty(n)
    rinv = np.empty((3, 3))
    th = np.empty(npar)
    for pix in range(start, stop):
        for a in range(npar):
            th[a] = theta[a, pix]
        if not np.isfinite(th[2]) or not _evaluate(th, ut, m, n_peaks, q, vm, rinv, tt, zz, g, mu, qf, n, np.inf):
            for n_ in range(n):
                out[n_, pix] = np.nan
            continue
        for n_ in range(n):
            out[n_, pix] = mu[n_]


@njit(cache=True, nogil=True)
def _half_max_peak(ys, us, out):
    """The highest point of ys (at sorted coordinates us) and its width from the half-maximum
    crossings on either side (interpolated; one side doubled when the other leaves the
    range): out = [height, position, sigma]."""
    n = ys.shape[0]
    top = 0
    for n_ in range(1, n):
        if ys[n_] > ys[top]:
            top = n_
    height = ys[top]
    half = 0.5 * height
    left = np.nan
    for n_ in range(top - 1, -1, -1):
        if ys[n_] <= half:
            f = (ys[n_ + 1] - half) / (ys[n_ + 1] - ys[n_])
            left = us[n_ + 1] - f * (us[n_ + 1] - us[n_])
            break
    right = np.nan
    for n_ in range(top + 1, n):
        if ys[n_] <= half:
            f = (ys[n_ - 1] - half) / (ys[n_ - 1] - ys[n_])
            right = us[n_ - 1] + f * (us[n_] - us[n_ - 1])
            break
    if np.isfinite(left) and np.isfinite(right):
        width = right - left
    elif np.isfinite(left):
        width = 2.0 * (us[top] - left)
    elif np.isfinite(right):
        width = 2.0 * (right - us[top])
    else:
        width = us[n - 1] - us[0]
    out[0] = height
    out[1] = us[top]
    out[2] = max(width / 2.3548200450309493, 0.5)


@njit(cache=True, nogil=True)
def two_peak_start(data, offset, u, order, skip, out, start, stop):
    """Start of a two-peak fit (one motor) per pixel of [start, stop) into out (7, P): the
    curve's highest point with its half-maximum width, then the highest point of what
    remains once that Gaussian is taken off, with its own, over the curve's lower decile
    (the background's start). `order` sorts the frames by u; pixels whose `skip` (P,) is
    not finite (the one-peak fit's b: not fitted) are skipped, NaN out. Why not
    the one-peak fit and its largest residual: over two separated peaks that fit is one wide
    Gaussian in the middle, and a second peak started beside it drifted to a negative
    amplitude (1 in 5 two-peak curves in tests/test_fits.py)."""
    n = u.shape[0]
    ys = np.empty(n)
    us = np.empty(n)
    peak = np.empty(3)
    for n_ in range(n):
        us[n_] = u[order[n_], 0]
    for pix in range(start, stop):
        for a in range(7):
            out[a, pix] = np.nan
        if not np.isfinite(skip[pix]):
            continue
        for n_ in range(n):
            v = float(data[order[n_], pix]) - offset[pix]
            ys[n_] = v if np.isfinite(v) else 0.0
        b = np.sort(ys)[n // 10]
        for n_ in range(n):
            ys[n_] -= b
        _half_max_peak(ys, us, peak)
        out[0, pix] = b
        out[1, pix] = max(peak[0], 1.0)
        out[2, pix] = peak[1]
        out[3, pix] = peak[2]
        for n_ in range(n):
            d = (us[n_] - peak[1]) / peak[2]
            ys[n_] -= peak[0] * math.exp(-0.5 * d * d)
        _half_max_peak(ys, us, peak)
        out[4, pix] = max(peak[0], 1.0)
        out[5, pix] = peak[1]
        out[6, pix] = peak[2]


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels for float32 and uint16 frames."""
    u = np.linspace(-2.0, 2.0, 8).reshape(-1, 1)
    for dtype in (np.float32, np.uint16):
        data = (10 * np.exp(-0.5 * u**2) + 2).astype(dtype)
        theta0 = np.array([[0.0], [1.0], [0.1], [1.2]])
        outs = (np.empty((4, 1)), np.empty((4, 1)), np.empty(1), np.empty(1, np.uint8), np.empty(1, np.int32))
        fit_block(data, np.zeros(1), np.zeros(1), u, theta0, 1, 1, True, 5, 1e-4, Q_CUT, *outs, 0, 1)
        two_peak_start(data, np.zeros(1), u, np.arange(8), np.zeros(1), np.empty((7, 1)), 0, 1)
