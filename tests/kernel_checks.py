"""Checks of the compiled kernels against numpy, run on one code path per process.

numba's target CPU is chosen once per process (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES), so
test_kernel_paths.py runs this module in a subprocess for each target the machine can
execute besides its own (`python -m tests.kernel_checks` prints a JSON report), and in the
test process for the host target. Each check raises AssertionError with what differs.

Only a few frame types are compiled here (each new target compiles its kernels once, then
numba's cache has them): 16-bit integers with float64 and float32 products, 32-bit integers
and float32 frames.
"""

from __future__ import annotations

import json
import sys

import numpy as np

#: (frame type, float32 products) cases of check_frame_pass
FRAME_PASS_CASES = ((np.uint16, False), (np.uint16, True), (np.int32, False), (np.float32, False))

#: code paths the test session exercised (named in the terminal summary, see conftest.py)
EXERCISED: list[str] = []


def check_frame_pass(backend: str = "numba") -> list[str]:
    """The pass over a batch against numpy: dense sums within the summation-order bound of
    sum |w x|, integer group sums, squares (16 bits) and maxima exact, float frames' group
    sums within the bound, pixels outside the range untouched. Returns what was checked."""
    from dfxm_online.online.framesums import frame_pass, sum_order_bound

    rng = np.random.default_rng(11)
    done = []
    for dtype, single in FRAME_PASS_CASES:
        n, p, r = 21, 3001, 15
        x = rng.uniform(-60 if np.dtype(dtype).kind in "if" else 0, 4000, size=(n, p)).astype(dtype)
        xf = x.astype(np.float64)
        w = rng.normal(size=(n, r))
        sums = rng.normal(size=(r, p)) * 1e3
        members = rng.random((3, n)) > 0.4
        gsums = np.zeros((3, p))
        gsumsq = np.zeros((3, p))
        maximum = np.full(p, -np.inf)
        before = sums.copy()
        lo, hi = 5, p - 3
        frame_pass(x, lo, hi, w, sums, members.astype(np.uint8), list(gsums), [gsumsq[0], None, gsumsq[2]],
                   maximum, single, backend=backend)
        part = xf[:, lo:hi]
        exact = before[:, lo:hi] + w.T @ part
        scale = np.abs(before[:, lo:hi]) + np.abs(w).T @ np.abs(part)
        error = np.abs(sums[:, lo:hi] - exact) / scale
        assert error.max() <= sum_order_bound(n, single), (dtype, single, error.max())
        assert np.array_equal(sums[:, :lo], before[:, :lo]) and np.array_equal(sums[:, hi:], before[:, hi:])
        m = members.astype(np.float64)
        expect_g, expect_q = m @ part, m @ (part * part)
        if np.dtype(dtype).kind in "iu":
            assert np.array_equal(gsums[:, lo:hi], expect_g), dtype  # whole numbers: exact
            if np.dtype(dtype).itemsize <= 2:
                assert np.array_equal(gsumsq[[0, 2], lo:hi], expect_q[[0, 2]]), dtype
        bound = sum_order_bound(n) * (m @ np.abs(part))
        assert np.all(np.abs(gsums[:, lo:hi] - expect_g) <= bound), dtype
        bound_q = sum_order_bound(n) * expect_q[[0, 2]]
        assert np.all(np.abs(gsumsq[[0, 2], lo:hi] - expect_q[[0, 2]]) <= bound_q), dtype
        assert not gsumsq[1].any()
        assert np.array_equal(maximum[lo:hi], part.max(axis=0)) and np.all(maximum[:lo] == -np.inf)
        done.append(f"frame_pass {np.dtype(dtype).name}{' float32 products' if single else ''}")
    done += check_register_block_edges(backend)
    done += check_groups_and_maximum_edges(backend)
    done += check_groups_in_dense_rows(backend)
    return done


def check_groups_in_dense_rows(backend: str = "numba") -> list[str]:
    """Groups without squares beside dense rows (which the numba pass puts in the spare rows
    of the last register block, `framesums._Pass._dense_groups`), for row counts that leave
    0 to 7 spare rows on every block shape: integer frames' group sums exact whatever the
    members; float frames' sums the float64 chain in frame order, bit for bit, for a group of
    every frame, and a partial group untouched by a NaN in a frame outside it; the maximum
    of integer frames (taken by the first dense blocks) and of float frames (NaN kept)."""
    from dfxm_online.online.framesums import frame_pass

    rng = np.random.default_rng(16)
    for r in (1, 4, 7, 8, 13, 15, 16):
        n, p = 19, 1003
        x = rng.integers(0, 65536, size=(n, p)).astype(np.uint16)
        xf = x.astype(np.float64)
        w = rng.normal(size=(n, r))
        members = rng.random((4, n)) > 0.5
        members[3] = True
        gsums = rng.integers(0, 1000, size=(4, p)).astype(np.float64)
        before = gsums.copy()
        maximum = np.full(p, 30000.0)
        frame_pass(x, 0, p, w, np.zeros((r, p)), members.astype(np.uint8), list(gsums), None, maximum,
                   backend=backend)
        assert np.array_equal(gsums, before + members.astype(np.float64) @ xf), r
        assert np.array_equal(maximum, np.maximum(xf.max(axis=0), 30000.0)), r
        y = rng.uniform(-5, 5, size=(n, p)).astype(np.float32)
        partial = members[0].copy()
        partial[3], partial[4] = False, True
        y[3, 500] = np.nan
        gsums = np.zeros((2, p))
        maximum = np.full(p, -np.inf)
        frame_pass(y, 0, p, w, np.zeros((r, p)), np.array([partial, members[3]], np.uint8), list(gsums), None,
                   maximum, backend=backend)
        chain = np.zeros(p)
        for f in range(n):
            chain = chain + y[f].astype(np.float64)
        keep = np.arange(p) != 500
        # the numba blocks add in frame order; BLAS (the numpy floor) in an order of its own
        same = np.array_equal if backend == "numba" else lambda a, b: np.allclose(a, b, rtol=1e-12, atol=1e-9)
        assert same(gsums[1][keep], chain[keep]) and np.isnan(gsums[1][500]), r
        assert np.all(np.isfinite(gsums[0])), r
        expected = np.where(partial[:, None], y.astype(np.float64), 0.0).sum(axis=0)
        assert np.allclose(gsums[0], expected, rtol=1e-12, atol=1e-9), r
        assert np.isnan(maximum[500]) and np.array_equal(maximum[keep], y.max(axis=0)[keep].astype(np.float64)), r
    return ["frame_pass groups beside dense rows (spare block rows), maximum fused in the blocks"]


def check_groups_and_maximum_edges(backend: str = "numba") -> list[str]:
    """The groups' and maximum's register blocks where the values are extreme: 16-bit frames
    at full scale (squares and their sums exact), a group without members (its rows
    untouched), a NaN in float frames (the maximum keeps it, the other pixels exact)."""
    from dfxm_online.online.framesums import frame_pass

    rng = np.random.default_rng(15)
    n, p = 64, 1000
    x = rng.integers(60000, 65536, size=(n, p)).astype(np.uint16)
    xf = x.astype(np.float64)
    members = np.zeros((2, n), np.uint8)
    members[0] = 1
    gsums, gsumsq = np.zeros((2, p)), np.zeros((2, p))
    maximum = np.zeros(p)
    frame_pass(x, 0, p, None, None, members, list(gsums), list(gsumsq), maximum, backend=backend)
    assert np.array_equal(gsums[0], xf.sum(axis=0)) and np.array_equal(gsumsq[0], (xf * xf).sum(axis=0))
    assert not gsums[1].any() and not gsumsq[1].any()
    assert np.array_equal(maximum, xf.max(axis=0))
    y = rng.uniform(-5, 5, size=(n, p)).astype(np.float32)
    y[7, 333] = np.nan
    maximum = np.full(p, -np.inf)
    frame_pass(y, 0, p, None, None, None, [], None, maximum, backend=backend)
    assert np.isnan(maximum[333])
    keep = np.arange(p) != 333
    assert np.array_equal(maximum[keep], y.max(axis=0)[keep].astype(np.float64))
    return ["frame_pass groups and maximum (full-scale 16 bits, empty group, NaN)"]


def check_register_block_edges(backend: str = "numba") -> list[str]:
    """The dense sums where the register blocks do not tile the work: row counts that are not
    a multiple of the block's (1, 4, 7, 35: 1 to 3 motors), one frame, pixel ranges that end
    inside a block, a vector or a sub-tile, and several sub-tiles (the prefetch of the next)."""
    from dfxm_online.online.framesums import frame_pass, sum_order_bound

    rng = np.random.default_rng(14)
    for n, r, p, lo, hi in ((21, 1, 3001, 5, 2998), (21, 4, 997, 0, 997), (1, 7, 130, 3, 129),
                            (64, 35, 1300, 17, 1283), (33, 15, 10000, 1, 9999)):
        x = rng.integers(0, 4000, size=(n, p)).astype(np.uint16)
        w = rng.normal(size=(n, r))
        sums = rng.normal(size=(r, p)) * 1e3
        before = sums.copy()
        frame_pass(x, lo, hi, w, sums, None, [], None, None, backend=backend)
        part = x[:, lo:hi].astype(np.float64)
        exact = before[:, lo:hi] + w.T @ part
        scale = np.abs(before[:, lo:hi]) + np.abs(w).T @ part
        error = np.abs(sums[:, lo:hi] - exact) / scale
        assert error.max() <= sum_order_bound(n), (n, r, p, error.max())
        assert np.array_equal(sums[:, :lo], before[:, :lo]) and np.array_equal(sums[:, hi:], before[:, hi:])
    return ["frame_pass register-block edges (1-35 rows, 1-64 frames, partial blocks)"]


def check_block_sums() -> list[str]:
    """Block sums (the binning step) equal numpy's strided-slice sums in the same order (each
    block row's columns, then the rows) bit for bit, for integer and float images."""
    from dfxm_online.online.preprocess import block_sums

    rng = np.random.default_rng(12)
    done = []
    for dtype, out in ((np.uint16, np.float32), (np.float64, np.float64)):
        images = (rng.normal(500, 200, size=(3, 37, 29))).astype(dtype)
        for by, bx, divisor in ((2, 2, 1), (3, 2, 6)):
            h, w = 37 // by, 29 // bx
            x = images[:, : h * by, : w * bx].astype(np.float64)
            total = None
            for i in range(by):
                row = x[:, i::by, 0::bx].copy()
                for j in range(1, bx):
                    row += x[:, i::by, j::bx]
                total = row if total is None else total + row
            expect = (total / divisor if divisor != 1 else total).astype(out)
            got = block_sums(images, by, bx, out, divisor)
            assert got.dtype == out and np.array_equal(got, expect), (dtype, by, bx)
        done.append(f"block_sums {np.dtype(dtype).name}")
    return done


def check_moment_maps_of_sums() -> list[str]:
    """The moment maps straight from the power sums (numba) equal the C moment maps of the C
    central moments bit for bit (float64, and float32 as those values rounded), 1-3 motors,
    with an offset, pixels without signal NaN."""
    from dfxm_online.acquisition.geometry import MotorAxis
    from dfxm_online.online.accumulators.moments import PowerSums
    from dfxm_online.online.maps import moment_maps, moment_maps_of_sums

    rng = np.random.default_rng(13)
    done = []
    for n_motors in (1, 2, 3):
        axes = [MotorAxis(name, -1.0, 1.0, 5) for name in ("mu", "chi", "phi")[:n_motors]]
        ps = PowerSums(axes, 37 * 23)
        frames = rng.uniform(0, 60, size=(30, 37 * 23))
        frames[:, :40] = 0  # no signal: NaN maps
        ps.update(frames, {a.name: rng.uniform(-1, 1, 30) for a in axes})
        offset = rng.uniform(0, 3, 37 * 23)
        names = [a.name for a in axes]
        whole = moment_maps(ps.snapshot(offset), names, (37, 23))
        for dtype in (np.float64, np.float32):
            direct = moment_maps_of_sums(ps, offset, names, (37, 23), dtype=dtype)
            assert list(direct) == list(whole)
            for name, values in whole.items():
                assert direct[name].dtype == dtype
                assert np.array_equal(direct[name], values.astype(dtype), equal_nan=True), (n_motors, name)
        done.append(f"moment_maps_of_sums {n_motors} motor(s)")
    return done


def check_moment_kernels() -> list[str]:
    """The snapshot's per-pixel kernels from the power sums equal the same expressions in
    numpy, element by element in the same order, bit for bit (no FMA contraction, no
    reassociation on any target): the central moments of the sums with an offset (1-3
    motors, a pixel range into range-sized outputs), the named maps of those moments, and
    the pooled edge baseline (ties between group means: the first lowest wins)."""
    from dfxm_online.acquisition.geometry import MotorAxis
    from dfxm_online.online.accumulators.background import pooled_edge_mean
    from dfxm_online.online.accumulators.moments import PowerSums
    from dfxm_online.online.kernels.pixelmaps import central_moments, moment_maps_rows

    from . import brute

    rng = np.random.default_rng(19)
    done = []
    p = 1031
    for n_motors in (1, 2, 3):
        axes = [MotorAxis(name, -1.0, 1.0, 5) for name in ("mu", "chi", "phi")[:n_motors]]
        ps = PowerSums(axes, p)
        frames = rng.uniform(0, 60, size=(30, p))
        frames[:, :40] = 0  # no signal: NaN moments
        ps.update(frames, {a.name: rng.uniform(-1, 1, 30) for a in axes})
        offset = rng.uniform(0, 3, p)
        table, centre, scale = ps.conversion()
        index = table.astype(np.int64)
        m = n_motors
        start, stop = 17, 1001
        width = stop - start
        got = [np.empty(width), np.empty((m, width)), np.empty((m, m, width)), np.empty((m, width)),
               np.empty((m, width))]
        central_moments(ps.sums, ps.weights, offset, table, centre, scale, *got, start, stop)

        def raw(row: int, ps=ps, offset=offset, start=start, stop=stop) -> np.ndarray:
            return ps.sums[row, start:stop] - ps.weights[row] * offset[start:stop]

        with np.errstate(all="ignore"):
            s0 = raw(index[0])
            inv = np.where(s0 > 0, 1.0 / s0, np.nan)
            mu = [raw(index[1 + a]) * inv for a in range(m)]
            expect_cov = np.empty((m, m, width))
            for a in range(m):
                for b in range(m):
                    expect_cov[a, b] = (raw(index[1 + m + a * m + b]) * inv - mu[a] * mu[b]) * scale[a] * scale[b]
            assert np.array_equal(got[0], s0) and np.array_equal(got[2], expect_cov, equal_nan=True), m
            for a in range(m):
                sa, x = scale[a], mu[a]
                e2 = raw(index[1 + m + a * m + a]) * inv
                e3 = raw(index[1 + m + m * m + a]) * inv
                e4 = raw(index[1 + 2 * m + m * m + a]) * inv
                m3 = (e3 - x * (3.0 * e2 - 2.0 * x * x)) * sa * sa * sa
                m4 = (e4 - x * (4.0 * e3 - x * (6.0 * e2 - 3.0 * x * x))) * sa * sa * sa * sa
                assert np.array_equal(got[1][a], centre[a] + sa * x, equal_nan=True), (m, a)
                assert np.array_equal(got[3][a], m3, equal_nan=True), (m, a)
                assert np.array_equal(got[4][a], m4, equal_nan=True), (m, a)
            valid = rng.uniform(size=width) > 0.1
            names = 4 * m + m * (m - 1) // 2
            out = np.full((names, width), 7.0)
            moment_maps_rows(got[1], got[2], got[3], got[4], valid, 2.5, out, 3, width)
            assert np.array_equal(out[:, :3], np.full((names, 3), 7.0)), m  # outside the range
            r = 4 * m
            for a in range(m):
                var = got[2][a, a]
                positive = valid & (var > 0)
                sd = np.sqrt(np.where(positive, var, 0.0))
                expect = (np.where(valid, got[1][a], np.nan), np.where(positive, 2.5 * sd, np.nan),
                          np.where(positive, got[3][a] / (var * sd), np.nan),
                          np.where(positive, got[4][a] / (var * var) - 3.0, np.nan))
                for k, values in enumerate(expect):
                    assert np.array_equal(out[4 * a + k, 3:], values[3:], equal_nan=True), (m, a, k)
                for b in range(a + 1, m):
                    assert np.array_equal(out[r, 3:], np.where(valid, got[2][a, b], np.nan)[3:], equal_nan=True)
                    r += 1
        done.append(f"central moments and moment maps {n_motors} motor(s)")
    for trial in range(6):
        groups, pixels = 1 + trial, 700 + 37 * trial
        n = rng.integers(1, 20, groups).astype(np.float64)
        frames = [rng.poisson(rng.uniform(5, 50), (int(c), pixels)).astype(np.float64) for c in n]
        if trial % 2:
            frames = [np.round(f / 10) for f in frames]  # equal group means
        s = np.array([f.sum(axis=0) for f in frames])
        q = np.array([(f * f).sum(axis=0) for f in frames])
        expected = brute.pooled_edge_mean(s, q, n, 3.0)
        assert np.array_equal(pooled_edge_mean(list(s), list(q), n, 3.0), expected), trial
    done.append("pooled edge baseline")
    return done


def check_orientation_and_selection() -> list[str]:
    """KAM, the mosaicity colours and the snapshot's order statistics against numpy, bit for
    bit: KAM as the same sums in numpy (neighbours in the offsets' order, maps in order;
    1-3 maps and 4 (the loop for any count), float32 maps read as their float64 values), the
    colours as the closed form in numpy, percentiles and medians of filtered maps equal to
    np.percentile / np.median of the kept values."""
    from dfxm_online.online import orientation, selection

    rng = np.random.default_rng(23)
    done = []
    h, w = 29, 37
    for n_maps in (1, 2, 3, 4):
        for dtype in (np.float64, np.float32):
            maps = [rng.normal(size=(h, w)).astype(dtype) for _ in range(n_maps)]
            maps[0][rng.random((h, w)) < 0.15] = np.nan
            maps[-1][5, :] = np.inf
            limit = 2.0 if n_maps == 2 else None
            got = orientation.kam(maps, radius=2 if n_maps == 3 else 1, max_distance=limit)
            stack = np.stack([m.astype(np.float64) for m in maps])
            valid = np.isfinite(stack).all(axis=0)
            total, count = np.zeros((h, w)), np.zeros((h, w), np.int64)
            for dy, dx in orientation._offsets(2 if n_maps == 3 else 1, "eight"):
                shifted = np.full_like(stack, np.nan)
                ys, xs = slice(max(-dy, 0), h - max(dy, 0)), slice(max(-dx, 0), w - max(dx, 0))
                shifted[:, ys, xs] = stack[:, ys.start + dy:ys.stop + dy, xs.start + dx:xs.stop + dx]
                both = valid & np.isfinite(shifted).all(axis=0)
                with np.errstate(invalid="ignore"):
                    d = stack - shifted
                    sq = np.zeros((h, w))
                    for m in range(n_maps):
                        sq = sq + d[m] * d[m]
                    dist = np.sqrt(np.where(both, sq, 0.0))
                ok = both & (dist <= (np.inf if limit is None else limit))
                total += np.where(ok, dist, 0.0)
                count += ok
            with np.errstate(invalid="ignore", divide="ignore"):
                expect = np.where(valid & (count > 0), total / count, np.nan)
            assert np.array_equal(got, expect, equal_nan=True), (n_maps, np.dtype(dtype).name)
        done.append(f"KAM {n_maps} map(s)")
    for dtype in (np.float64, np.float32):
        a = rng.normal(size=(41, 43)).astype(dtype)
        b = rng.normal(size=(41, 43)).astype(dtype)
        a[3, :] = np.nan
        b[:, 5] = -np.inf
        got = orientation._colour(a, b, (0.1, -0.2), (0.7, 1.3))
        with np.errstate(all="ignore"):
            u = (a.astype(np.float64) - 0.1) / 0.7
            v = (b.astype(np.float64) + 0.2) / 1.3
            hue6 = np.arctan2(v, u) * (3.0 / np.pi)
            hue6 = np.where(hue6 < 0, hue6 + 6.0, hue6)
            sat = np.minimum(np.sqrt(u * u + v * v), 1.0)
        ok = np.isfinite(a) & np.isfinite(b)
        for c, n in enumerate((5.0, 3.0, 1.0)):
            k = n + hue6
            k = np.where(k < 6.0, k, k - 6.0)
            g = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
            expect = np.where(ok, (1.0 - sat * g).astype(np.float32), np.float32(0.0))
            assert np.array_equal(got[..., c], expect), (np.dtype(dtype).name, c)
        done.append(f"mosaicity colours {np.dtype(dtype).name}")
        values = rng.normal(10, 3, 5003).astype(dtype)
        values[::7] = np.round(values[::7])  # ties
        values[::11] = np.nan
        other = rng.normal(size=5003).astype(dtype)
        other[::13] = np.inf
        kept = values[np.isfinite(values) & np.isfinite(other)].astype(np.float64)
        assert selection.median(values, finite_with=other) == np.median(kept)
        assert selection.percentile(values, 99.5, positive=True) == np.percentile(
            values[np.isfinite(values) & (values > 0)].astype(np.float64), 99.5)
        assert selection.percentile(values, 99.0, finite_with=other, distance_to=10.0) == np.percentile(
            np.abs(kept - 10.0), 99.0)
        done.append(f"order statistics {np.dtype(dtype).name}")
    return done


def check_windowed_pass(backend: str = "numba") -> list[str]:
    """`MomentWindow.add_to` (the window's step fused into the frame pass; on the numpy floor
    the step then the sums) against numpy: the points inside each pixel's window (its
    quadratic form summed in the kernel's order, so the same points) minus the offset, the
    power sums of those values in float64 within the summation-order bound (the floor's
    values rounded to float32: within the float32 bound); pixels without a window unchanged;
    1-3 motors, 16-bit and float32 frames."""
    from dfxm_online.acquisition.geometry import MotorAxis
    from dfxm_online.gaussian import FWHM_PER_SIGMA
    from dfxm_online.online import kernels
    from dfxm_online.online.accumulators.moments import PowerSums
    from dfxm_online.online.framesums import sum_order_bound
    from dfxm_online.online.moment_window import MomentWindow

    rng = np.random.default_rng(17)
    done = []
    n, p, rho = 23, 3001, 2.5
    for n_motors, dtype in ((1, np.float32), (2, np.uint16), (2, np.float32), (3, np.uint16)):
        names = ("mu", "chi", "phi")[:n_motors]
        axes = [MotorAxis(name, -1.0, 1.0, 21) for name in names]
        maps = {f"com_{a}": rng.uniform(-0.5, 0.5, p) for a in names}
        maps |= {f"fwhm_{a}": FWHM_PER_SIGMA * rng.uniform(0.1, 0.6, p) for a in names}
        maps |= {f"cov_{a}_{b}": rng.uniform(-0.02, 0.02, p) for i, a in enumerate(names) for b in names[i + 1:]}
        maps[f"com_{names[0]}"][:7] = np.nan  # no window: the sums stay as they are
        window = MomentWindow.from_maps(maps, axes, rho)
        positions = {a: rng.uniform(-1, 1, n) for a in names}
        frames = rng.uniform(0, 4000, (n, p)).astype(dtype)
        offset = rng.uniform(0, 90, p)
        sums = PowerSums(axes, p)
        sums.sums[:] = rng.normal(size=sums.sums.shape) * 1e3
        before = sums.sums.copy()
        with kernels.use_backend(backend):
            window.add_to(sums, frames, positions, offset)
        mono, coef = window.monomials(positions), window.coefficients
        q = np.broadcast_to(coef[-1], (n, p)).copy()
        for k in range(coef.shape[0] - 1):
            q += coef[k] * mono[:, k : k + 1]
        inside = q <= rho * rho
        assert inside.any() and not inside.all(), n_motors
        values = np.where(inside, frames.astype(np.float64) - offset, 0.0)
        w = sums.monomials(np.stack([(positions[a.name] - a.centre) / a.scale for a in axes], axis=1))
        exact = before + w.T @ values
        scale = np.abs(before) + np.abs(w).T @ np.abs(values)
        bound = sum_order_bound(n) if backend == "numba" else sum_order_bound(n, True)
        error = np.abs(sums.sums - exact) / scale
        assert error.max() <= bound, (n_motors, np.dtype(dtype).name, backend, error.max() / bound)
        assert np.array_equal(sums.sums[:, :7], before[:, :7]) and sums.count == n
        done.append(f"windowed pass {n_motors} motor(s) {np.dtype(dtype).name}")
    return done


def run_all() -> dict:
    """Every check on this process's code path; the path and what was checked."""
    from dfxm_online.online import kernels

    checked = (check_frame_pass("numba") + check_windowed_pass("numba") + check_block_sums()
               + check_moment_maps_of_sums() + check_moment_kernels() + check_orientation_and_selection())
    return {"code_path": kernels.code_path(), "instruction_set": kernels.instruction_set(),
            "target": kernels.numba_target()[0], "wide_vectors": kernels.wide_vectors(), "checked": checked}


if __name__ == "__main__":
    json.dump(run_all(), sys.stdout)
