"""A software prefetch for numba kernels: `prefetch(a, i, q)` asks the CPU to bring the cache
line of `a[i, q]` in, and returns at once (LLVM's `llvm.prefetch`; a hint, never a fault).

For kernels that know which rows they will read a little ahead (redy.sim.array_balance): a row
read at random from memory costs ~100 ns at 10^5 nodes, and asked for early it arrives while
the kernel works on the row before."""

from __future__ import annotations

from typing import Any

from llvmlite import binding as llvm  # type: ignore[import-untyped]
from llvmlite import ir
from numba.core import cgutils as _cgutils
from numba.core import types
from numba.extending import intrinsic

cgutils: Any = _cgutils  # untyped
# The intrinsic's name carries its pointer type: opaque `ptr` from LLVM 15, `i8*` before.
_NAME = "llvm.prefetch.p0" if llvm.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


def _typed(typingctx: Any, array: Any, row: Any, column: Any) -> Any:
    """Prefetch the line of `array[row, column]` (a 2-D array) for reading."""
    if not (isinstance(array, types.Array) and array.ndim == 2):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        kind = signature.args[0]
        data = context.make_array(kind)(context, builder, args[0])
        at = [
            context.cast(builder, args[1], signature.args[1], types.intp),
            context.cast(builder, args[2], signature.args[2], types.intp),
        ]
        pointer = cgutils.get_item_pointer2(
            context,
            builder,
            data.data,
            cgutils.unpack_tuple(builder, data.shape),
            cgutils.unpack_tuple(builder, data.strides),
            kind.layout,
            at,
        )
        bytes_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [bytes_pointer, i32, i32, i32]),
            _NAME,
        )
        # read (0), keep in all cache levels (3), data cache (1)
        builder.call(fn, [builder.bitcast(pointer, bytes_pointer), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, row, column), codegen


# In a kernel: prefetch(array, row, column).
prefetch: Any = intrinsic(_typed)
