"""A register-blocked block of `sums += w.T @ x` for the pass over a batch (numba intrinsic).

Why: numba's loop vectorizer works on innermost loops only, so a pure-numba pass keeps its
running sums in memory and loads and stores them every few frames (the pass before this one:
8 frames x 3 rows per load and store, ~12-16 GFMA/s per core here). A GEMM kernel keeps a
block of MR rows x NV vectors of running sums in registers while *all* the frames of the
pass stream past, reads each converted frame vector once per MR rows and each weight once
per NV vectors, and touches the sums in memory once per pass. numba cannot say "vector
register" in Python, so the block is written in LLVM IR (an `@intrinsic`, inlined into the
numba kernel that calls it): explicit vectors of `VECTOR` doubles, one multiply-add chain
per running sum (`fmul`/`fadd` with the `contract` flag: fused where the CPU has FMA, a
multiply and an add where it has not, never a libm call).

The block is sized for the target numba compiles for (`kernels.numba_target`): the
vectors LLVM uses there (512-bit on AVX-512 hosts, see `kernels._allow_512_bit_vectors`;
256-bit on an AVX-512 target named in NUMBA_CPU_NAME, whose LLVM tuning prefers 256-bit
vectors, and on AVX2; 128-bit on SSE2) and its vector registers (32 with AVX-512, 16
otherwise): MR x NV running sums plus NV frame vectors and a broadcast weight must fit.

Rounding: each running sum is the FMA chain sum_f w[f, r] x[f, p] in frame order from 0,
then added to `sums` once: within `framesums.sum_order_bound` like any order.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import numba_target, wide_vectors


def _registers() -> int:
    """Vector registers of this process's numba target."""
    _, features = numba_target()
    return 32 if ("avx512f" in features or "neon" in features) else 16


def _block_shape() -> tuple[int, int, int]:
    """(VECTOR doubles per vector, MR rows, NV vectors) for this process's numba target."""
    _, features = numba_target()
    registers = _registers()
    if wide_vectors():
        # zmm: 24 running sums + 3 frame vectors + a weight, 28 of 32 registers. The
        # compute core (2048^2, 64 frames, 15 rows: blocks of 8 + 7) ran at 382-437 frames/s
        # against 336 for 5 x 4 zmm, 349-401 for 6 x 4, 371-425 for 5 x 5, and 326-356 for
        # this pass's ymm blocks of 5 x 4 (same machine, alternating, 2026-12-06)
        return 8, 8, 3
    if "avx512f" in features or "avx2" in features or "avx" in features:
        vector = 4  # ymm
    else:
        vector = 2  # xmm: SSE2, NEON
    if registers >= 32:
        # 24 running sums + 3 frame vectors + a weight (+ 3 maxima), as on zmm. AVX-512 on ymm
        # (NUMBA_CPU_NAME=rocketlake with the host's features): 406-410 frames/s against
        # 397-403 for 5 x 4 and 343-356 for 6 x 4 (alternating, 2026-12-06)
        return vector, 8, 3
    # 12 running sums + 3 frame vectors + a weight (+ a product without FMA; + 3 maxima with
    # it, MAX_IN_BLOCK): LLVM keeps the sums in registers and the rest close. Compute core,
    # alternating children (2026-12-06): AVX2 (haswell) 367-403 frames/s against 331-351 for
    # 5 x 2 and 356 for 3 x 4; generic SSE2 174 against 155 for 5 x 2, 161 for 6 x 2, 171
    # for 3 x 4, 128 for 7 x 1. (15 rows are then 4 + 4 + 4 + 3 blocks, whose spare row takes
    # a sum-only group.)
    return vector, 4, 3


#: doubles per vector, rows and vectors of running sums in one register block
VECTOR, MR, NV = _block_shape()
#: whether the pass takes the maximum of integer frames in its first dense blocks: NV more
#: registers, which the blocks have to spare where the CPU has FMA (no register for the
#: product). The compute core (2048^2, 64 frames): host 441 -> 505, AVX2 332 -> 365 frames/s
#: (with the groups in spare rows, `framesums._Pass._dense_groups`); the generic SSE2 target,
#: 16 registers and a product, 158 without against 154 with (5 x 2 blocks), 171-176 without
#: against 160-163 with (4 x 3 blocks; alternating, 2026-12-06)
MAX_IN_BLOCK = "fma" in numba_target()[1]
#: whether the first dense blocks read the frames and pack the sub-tile themselves (where the
#: packing loop would write it and the blocks read it back): with 32 registers, on Intel's
#: CPUs. The compute core (2048^2, 64 frames) on an Intel AVX-512 Xeon: host 501 -> 528,
#: AVX-512 on ymm 401 -> 408 frames/s; on the 16-register AVX2 and generic targets, with
#: their blocks of 5 x 2 then, 356 -> 322 and 158 -> 149 (same runs), and with AVX2's 4 x 3
#: blocks no gain: 381-398 against 374-399 (alternating; 2026-12-06). Not on AMD's Zen
#: targets (znver*), where it cost 5-25 %: on an EPYC Zen 4 (2026-12-07, alternating
#: children, 8 x 3 zmm blocks) host 328-353 frames/s with against 344-389 without, and on
#: ymm (NUMBA_CPU_NAME=znver4, 4 x 3 blocks) 264 against 340-344
PACK_IN_BLOCK = _registers() >= 32 and not numba_target()[0].startswith("znver")
#: pixels one register block covers
BLOCK_PIXELS = VECTOR * NV


def _data(context, builder, arrty, value):
    """(data pointer, leading dimension in elements) of a C-contiguous 2-D float64 array."""
    ary = context.make_array(arrty)(context, builder, value)
    shape = cgutils.unpack_tuple(builder, ary.shape, 2)
    return ary.data, shape[1]


def _vector_at(builder, base, offset, j: int = 0):
    """A pointer to the `j`-th vector of VECTOR doubles from element `offset` of the float64
    pointer `base` (the loads and stores of the register blocks here and in `group_block`)."""
    vpt = ir.VectorType(ir.DoubleType(), VECTOR).as_pointer()
    return builder.bitcast(builder.gep(base, [builder.add(offset, ir.Constant(ir.IntType(64), j * VECTOR))]), vpt)


def _emit_block(builder, xs_p, ldx, w_p, ldw, rows_p, row_v, px_v, sx_v, nf_v, mr: int, nv: int,
                max_p=None, source=None) -> None:
    """The IR of one block of `mr` rows x `nv` vectors (see `_make_block`); with `max_p` (a
    float64 pointer) also the maximum of the frame vectors, into max_p[0 : nv * VECTOR];
    with `source` (frames pointer, row length, frame type) the frame vectors are read from
    the frames at pixel sx, converted, and also stored into xs (the packing of the sub-tile)."""
    vt = ir.VectorType(ir.DoubleType(), VECTOR)
    zero = ir.Constant(vt, [0.0] * VECTOR)
    undef = ir.Constant(vt, ir.Undefined)
    splat = ir.Constant(ir.VectorType(ir.IntType(32), VECTOR), [0] * VECTOR)
    i64 = ir.IntType(64)
    accs = []
    for _ in range(mr * nv):
        slot = cgutils.alloca_once(builder, vt)
        builder.store(zero, slot)
        accs.append(slot)
    tops = []
    if max_p is not None:
        lowest = ir.Constant(vt, [float("-inf")] * VECTOR)
        for _ in range(nv):
            tops.append(cgutils.alloca_once(builder, vt))
            builder.store(lowest, tops[-1])
    with cgutils.for_range(builder, nf_v) as loop:
        f = loop.index
        x_row = builder.add(builder.mul(f, ldx), px_v)
        if source is None:
            xv = [builder.load(_vector_at(builder, xs_p, x_row, j), align=8) for j in range(nv)]
        else:
            xv = _converted(builder, source, builder.add(builder.mul(f, source[1]), sx_v), nv)
            for j in range(nv):
                builder.store(xv[j], _vector_at(builder, xs_p, x_row, j), align=8)
        for j, top in enumerate(tops):
            builder.store(_larger(builder, xv[j], builder.load(top)), top)
        w_row = builder.gep(w_p, [builder.add(builder.mul(f, ldw), row_v)])
        for r in range(mr):
            wr = builder.load(builder.gep(w_row, [ir.Constant(i64, r)]), align=8)
            wv = builder.shuffle_vector(builder.insert_element(undef, wr, ir.Constant(ir.IntType(32), 0)),
                                        undef, splat)
            for j in range(nv):
                slot = accs[r * nv + j]
                product = builder.fmul(wv, xv[j], flags=("contract",))
                builder.store(builder.fadd(builder.load(slot), product, flags=("contract",)), slot)
    for r in range(mr):
        address = builder.load(builder.gep(rows_p, [builder.add(row_v, ir.Constant(i64, r))]))
        s_row = builder.inttoptr(address, ir.DoubleType().as_pointer())
        for j in range(nv):
            ptr = _vector_at(builder, s_row, sx_v, j)
            builder.store(builder.fadd(builder.load(ptr, align=8), builder.load(accs[r * nv + j])), ptr, align=8)
    for j, top in enumerate(tops):
        ptr = _vector_at(builder, max_p, ir.Constant(i64, 0), j)
        builder.store(_larger(builder, builder.load(top), builder.load(ptr, align=8)), ptr, align=8)


def _converted(builder, source, offset, nv: int) -> list:
    """`nv` vectors of VECTOR frame values from element `offset` of the frames, as float64
    (exact for every frame type the pass reads)."""
    frames_p, _, dtype = source
    lanes = ir.VectorType(frames_p.type.pointee, VECTOR)
    vt = ir.VectorType(ir.DoubleType(), VECTOR)
    out = []
    for j in range(nv):
        at = builder.gep(frames_p, [builder.add(offset, ir.Constant(ir.IntType(64), j * VECTOR))])
        v = builder.load(builder.bitcast(at, lanes.as_pointer()), align=dtype.bitwidth // 8)
        if isinstance(dtype, types.Float):
            out.append(v if dtype.bitwidth == 64 else builder.fpext(v, vt))
        elif dtype.signed:
            out.append(builder.sitofp(v, vt))
        else:
            out.append(builder.uitofp(v, vt))
    return out


def _larger(builder, candidate, current):
    """max(current, candidate) of values that are never NaN (integer frames': one vmaxpd)."""
    return builder.select(builder.fcmp_ordered(">", candidate, current), candidate, current)


#: the switch's case offset per mode of a block, above every row count: the mode is
#: 2 x (packs the sub-tile) + (takes the maximum)
_MODE = 64


def _make_block(nv: int):
    """The intrinsic for a block of 1..MR rows (a run-time argument) x `nv` vectors."""

    def block(typingctx, xs, w, rows, row, mr, px, sx, n_frames, top, frames, pack):
        """S_{row + r}[sx + j] += sum_{f < n_frames} w[f, row + r] * xs[f, px + j] for
        r < mr (1 <= mr <= MR), j < nv * VECTOR (xs (F, X), w (F, R): C-contiguous float64;
        rows (R,) uint64: the addresses of the float64 rows S_r of the sums, which may be
        rows of one array or not: a group's row takes a spare row of the last block).
        `top` (uint64): 0, or the address of nv * VECTOR float64 maxima to raise to those of
        the frame vectors (integer frames: no NaN), which the block has in registers anyway
        (the pass's maximum then reads no frame again).
        `pack` (bool): the frame vectors are frames[f, sx + j] (frames (F, P) C-contiguous,
        any integer or float type of the pass), converted to float64 and stored into
        xs[f, px + j] on the way: the first rows' blocks pack the sub-tile for the others
        (`PACK_IN_BLOCK`)."""
        if not (all(isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" and a.dtype == types.float64
                    for a in (xs, w))
                and isinstance(rows, types.Array) and rows.ndim == 1 and rows.dtype == types.uint64
                and isinstance(frames, types.Array) and frames.ndim == 2 and frames.layout == "C"
                and isinstance(frames.dtype, (types.Integer, types.Float))):
            return None  # the code below takes rows as shape[1] elements apart: C order only
        sig = types.void(xs, w, rows, types.intp, types.intp, types.intp, types.intp, types.intp, types.uint64,
                         frames, types.boolean)

        def codegen(context, builder, signature, args):
            xs_v, w_v, rows_v, row_v, mr_v, px_v, sx_v, nf_v, top_v, frames_v, pack_v = args
            xs_p, ldx = _data(context, builder, signature.args[0], xs_v)
            w_p, ldw = _data(context, builder, signature.args[1], w_v)
            rows_p = context.make_array(signature.args[2])(context, builder, rows_v).data
            frames_p, ldf = _data(context, builder, signature.args[9], frames_v)
            source = (frames_p, ldf, signature.args[9].dtype)
            # one block of code per number of rows, chosen by a switch: a block's running
            # sums must be named registers, so each row count is its own code
            # (and reading the packed sub-tile or packing it, with or without the maximum:
            # chosen by `pack` and `top`)
            done = builder.function.append_basic_block(f"dense{nv}.done")
            top_p = builder.inttoptr(top_v, ir.DoubleType().as_pointer())
            with_top = builder.zext(builder.icmp_unsigned("!=", top_v, ir.Constant(top_v.type, 0)), mr_v.type)
            mode = builder.add(builder.mul(builder.zext(pack_v, mr_v.type), ir.Constant(mr_v.type, 2)), with_top)
            switch = builder.switch(builder.add(builder.mul(mode, ir.Constant(mr_v.type, _MODE)), mr_v), done)
            for m, name in enumerate(("", ".max", ".pack", ".pack.max")):
                for mr in range(1, MR + 1):
                    case = builder.function.append_basic_block(f"dense{nv}.rows{mr}{name}")
                    switch.add_case(ir.Constant(mr_v.type, _MODE * m + mr), case)
                    builder.position_at_end(case)
                    _emit_block(builder, xs_p, ldx, w_p, ldw, rows_p, row_v, px_v, sx_v, nf_v, mr, nv,
                                top_p if m % 2 else None, source if m >= 2 else None)
                    builder.branch(done)
            builder.position_at_end(done)
            return context.get_dummy_value()

        return sig, codegen

    # a name of its own per shape: numba tells intrinsics apart by name (same-named ones
    # compiled to the first one's code)
    block.__name__ = block.__qualname__ = f"dense_block_{nv}"
    return intrinsic(block)


#: a block of 1..MR rows x NV vectors, and of 1..MR rows x one vector
BLOCK, VECTOR_BLOCK = _make_block(NV), _make_block(1)


@njit(nogil=True, cache=True)
def dense_block_rows(xs, w, rows, r, mr, sx, n_blocks, n_vec, n_frames, top, frames, pack):
    """S[r:r+mr, sx:sx+n_vec] += w[:n_frames, r:r+mr].T @ xs[:n_frames, :n_vec] (S: the rows
    at the addresses `rows`, see `BLOCK`; 1 <= mr <= MR; n_blocks <= n_vec multiples of
    BLOCK_PIXELS and VECTOR): full register blocks, then single vectors. `pack`: the frame vectors read from `frames` at pixel sx and packed
    into xs on the way; `top`: 0, or the address of the maximum's element for
    pixel `sx`, raised to the frames' maximum over these n_vec pixels (integer frames)."""
    for p in range(0, n_blocks, BLOCK_PIXELS):
        BLOCK(xs, w, rows, r, mr, p, sx + p, n_frames, top + np.uint64(8 * p) if top else top, frames, pack)
    for p in range(n_blocks, n_vec, VECTOR):
        VECTOR_BLOCK(xs, w, rows, r, mr, p, sx + p, n_frames, top + np.uint64(8 * p) if top else top, frames, pack)


@intrinsic
def prefetch(typingctx, array, row, column):
    """Ask the CPU to bring array[row, column]'s cache line towards L2/L1 (a hint, no fault):
    the pass reads ~64 frame rows at once, more streams than the hardware prefetcher follows."""
    sig = types.void(array, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        shape = cgutils.unpack_tuple(builder, ary.shape, 2)
        ptr = builder.gep(ary.data, [builder.add(builder.mul(args[1], shape[1]), args[2])])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen
