"""Rows and maps by address inside numba kernels.

Why addresses and not a `numba.typed.List` of rows: building a typed list compiles its
methods in every new process, uncached: ~0.7-1 s on a daemon's or `process`'s first batch.
The kernels that take rows which are not rows of one array (the frame pass's sums and
groups, the pooled edge baseline's seen groups) take their addresses as a uint64 array;
the caller checks each row (C-contiguous float64 of the right length) and keeps it alive
while the kernel runs. KAM reads its maps (float32 or float64) the same way (`pointer`).
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, types
from numba.extending import intrinsic


@intrinsic
def float64_pointer(typingctx, address):
    """A uint64 address as a float64 pointer (for `carray`)."""
    sig = types.CPointer(types.float64)(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@intrinsic
def pointer(typingctx, like, address):
    """A uint64 address as a pointer to elements of `like`'s dtype (an array of float32 or
    float64): a map read where it is, indexed as `ptr[i]`. Why: numba compiles an array
    argument once per dtype and writability (read-only maps would add variants), a tuple of
    maps once per count, and a stacked (M, H, W) array is a copy; a pointer is a plain value
    (no reference count)."""
    sig = types.CPointer(like.dtype)(like, types.uint64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[1], context.get_value_type(signature.return_type))

    return sig, codegen


def check_range(start: int, stop: int, n: int) -> None:
    """The range start..stop that a checked kernel entry point is given lies within 0..n
    (pixels or rows): ValueError otherwise, before any kernel reads an address."""
    if not 0 <= start <= stop <= n:
        raise ValueError(f"pixel range [{start}, {stop}) outside [0, {n})")


@njit(nogil=True, cache=True, inline="always")
def row(address, start, n):
    """Elements start..start + n of the float64 row at `address`, as a (n,) array."""
    return carray(float64_pointer(address + np.uint64(8 * start)), n)
