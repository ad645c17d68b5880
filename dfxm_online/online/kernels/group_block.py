"""Register blocks of the frame groups' sums (and squares) and of the maximum, over the pass's
packed sub-tile (numba intrinsics, like `dense_block.py`).

Why: the pass used to add each member frame's row into integer scratch rows in memory (one
load, add and store per pixel, frame and group: bound by the L1 stores) and took the
maximum the same way. Here a block of NV vectors of running sums (and squares, or the
maximum) stays in registers while the group's member frames stream past from the packed,
converted sub-tile (float64, in L2), and the rows in memory are read and written once per
sub-tile. Single-thread, 64 frames of a 2048^2 uint16 batch with the compute core's groups
(a scan half; three edge bands with squares, 66 member frames) and the maximum: the groups
and maximum cost 64-70 ms on top of the dense rows' ~120 ms in the integer loops; see
bench/RESULTS.md for this version's figures.

Exactness: the packed values are the frames converted to float64 (exact for every frame
type the pass reads). A group's sum is a float64 chain in frame order from 0 (as the float
frames' scratch sums were); for integer frames every partial sum is an integer below 2^53
(at most MAX_PASS_FRAMES frames of 32 bits), so it is exact, as the integer scratch was.
Squares are a multiply and an add, not fused: a 16-bit frame's square is exact in float64
and so are their sums (below 2^42); 32-bit and float frames round each square as before.
The maximum keeps a NaN once seen, as numpy's does.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .dense_block import VECTOR, _data, _vector_at

#: vectors of pixels per group or maximum block: 6 sums, 6 squares and a frame vector at a
#: time fit 16 registers. The compute core on the AVX2 target (NUMBA_CPU_NAME=haswell):
#: 331-334 frames/s with 6, 307-311 with 4, 268-308 with 2 (the dense blocks' width); the
#: host's (zmm) and the generic target's were the same with 3, 6 or 8 (392-395, 151-157)
NV = 6
#: pixels one such block covers
GROUP_PIXELS = VECTOR * NV


def _make_group_block(nv: int, squares: bool):
    """The intrinsic for one group over `nv` vectors of pixels, with or without squares."""

    def block(typingctx, xs, members, g, count, row, sq_row, px, dest):
        """row[dest + j] += sum_k xs[members[g, k], px + j] for k < count, j < nv * VECTOR
        (and sq_row[...] += the squares, when `squares`); `row`, `sq_row`: uint64 addresses of
        float64 rows; xs (F, X) C-contiguous float64, members (G, F) C-contiguous int64."""
        if not (isinstance(xs, types.Array) and xs.ndim == 2 and xs.layout == "C" and xs.dtype == types.float64
                and isinstance(members, types.Array) and members.ndim == 2 and members.layout == "C"
                and members.dtype == types.int64):
            return None
        sig = types.void(xs, members, types.intp, types.intp, types.uint64, types.uint64, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            xs_v, m_v, g_v, count_v, row_v, sq_v, px_v, dest_v = args
            xs_p, ldx = _data(context, builder, signature.args[0], xs_v)
            m_p, ldm = _data(context, builder, signature.args[1], m_v)
            vt = ir.VectorType(ir.DoubleType(), VECTOR)
            zero = ir.Constant(vt, [0.0] * VECTOR)
            accs, sqs = [], []
            for _ in range(nv):
                accs.append(cgutils.alloca_once(builder, vt))
                builder.store(zero, accs[-1])
                if squares:
                    sqs.append(cgutils.alloca_once(builder, vt))
                    builder.store(zero, sqs[-1])
            m_row = builder.gep(m_p, [builder.mul(g_v, ldm)])
            with cgutils.for_range(builder, count_v) as loop:
                f = builder.load(builder.gep(m_row, [loop.index]))
                x_row = builder.add(builder.mul(f, ldx), px_v)
                for j in range(nv):
                    xv = builder.load(_vector_at(builder, xs_p, x_row, j), align=8)
                    builder.store(builder.fadd(builder.load(accs[j]), xv), accs[j])
                    if squares:
                        builder.store(builder.fadd(builder.load(sqs[j]), builder.fmul(xv, xv)), sqs[j])
            rows = [(builder.inttoptr(row_v, ir.DoubleType().as_pointer()), accs)]
            if squares:
                rows.append((builder.inttoptr(sq_v, ir.DoubleType().as_pointer()), sqs))
            for j in range(nv):
                for base, slots in rows:
                    ptr = _vector_at(builder, base, dest_v, j)
                    builder.store(builder.fadd(builder.load(ptr, align=8), builder.load(slots[j])), ptr, align=8)
            return context.get_dummy_value()

        return sig, codegen

    block.__name__ = block.__qualname__ = f"group_block_{nv}{'_sq' if squares else ''}"
    return intrinsic(block)


def _keep_max(builder, candidate, current, nans: bool):
    """max(current, candidate); with `nans`, a NaN in either stays NaN once in `current`
    (without: no value is NaN, as the values of integer frames, and one vmaxpd does)."""
    take = builder.fcmp_ordered(">", candidate, current)
    if nans:
        take = builder.or_(take, builder.fcmp_unordered("uno", candidate, candidate))
    return builder.select(take, candidate, current)


def _make_max_block(nv: int, nans: bool):
    """The intrinsic for the maximum over `nv` vectors of pixels (`nans`: of float frames)."""

    def block(typingctx, xs, n_frames, maximum, px, dest):
        """maximum[dest + j] = max(maximum[dest + j], xs[:n_frames, px + j]) for j < nv * VECTOR
        (n_frames >= 1; xs (F, X) C-contiguous float64, maximum (P,) float64)."""
        if not (isinstance(xs, types.Array) and xs.ndim == 2 and xs.layout == "C" and xs.dtype == types.float64
                and isinstance(maximum, types.Array) and maximum.ndim == 1 and maximum.dtype == types.float64):
            return None
        sig = types.void(xs, types.intp, maximum, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            xs_v, nf_v, max_v, px_v, dest_v = args
            xs_p, ldx = _data(context, builder, signature.args[0], xs_v)
            max_p = context.make_array(signature.args[2])(context, builder, max_v).data
            vt = ir.VectorType(ir.DoubleType(), VECTOR)
            i64 = ir.IntType(64)

            def x_vector(f, j):
                return builder.load(_vector_at(builder, xs_p, builder.add(builder.mul(f, ldx), px_v), j), align=8)

            tops = []
            for j in range(nv):
                tops.append(cgutils.alloca_once(builder, vt))
                builder.store(x_vector(ir.Constant(i64, 0), j), tops[j])
            with cgutils.for_range(builder, builder.sub(nf_v, ir.Constant(i64, 1))) as loop:
                f = builder.add(loop.index, ir.Constant(i64, 1))
                for j in range(nv):
                    builder.store(_keep_max(builder, x_vector(f, j), builder.load(tops[j]), nans), tops[j])
            for j in range(nv):
                ptr = _vector_at(builder, max_p, dest_v, j)
                builder.store(_keep_max(builder, builder.load(tops[j]), builder.load(ptr, align=8), nans), ptr, align=8)
            return context.get_dummy_value()

        return sig, codegen

    block.__name__ = block.__qualname__ = f"max_block_{nv}{'_nan' if nans else ''}"
    return intrinsic(block)


#: a group's sums over NV vectors / one vector, without and with squares; the maximum likewise
GROUP_NV, GROUP_NV_SQ = _make_group_block(NV, False), _make_group_block(NV, True)
GROUP_1, GROUP_1_SQ = _make_group_block(1, False), _make_group_block(1, True)
MAX_NV, MAX_1 = _make_max_block(NV, True), _make_max_block(1, True)
#: the maximum of integer frames (no NaN)
MAX_NV_INT, MAX_1_INT = _make_max_block(NV, False), _make_max_block(1, False)
