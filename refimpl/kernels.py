"""Batch-invariant numba kernels of the Llama forward pass.

Every kernel here computes each output element with plain IEEE float32
arithmetic in one fixed order, with no fast-math flags: no reassociation and
no fused multiply-add. The result of an element is therefore a function of its
inputs alone, not of how many rows are processed together, how the loops are
blocked or vectorised, or how many threads run. This is what makes the
reference an oracle: `y = x @ W.T` for a row equals, bit for bit, the float32
sum `((x0*w0 + x1*w1) + x2*w2) + ...` taken in increasing input index, the same
value numpy gets by accumulating column by column.

Speed comes from the weight layout and the blocking instead of from reordering
sums. A linear layer's weight W (out, in) is packed once into groups of TILE = 64
output columns, each stored as 4 strips of STRIP = 16 columns:
`P[g, s, i, j] = W[g*64 + s*16 + j, i]`. A group is streamed from memory once
per pass; the accumulators live in registers (small stack arrays, see
`stack_f32`), and each input value updates many independent accumulators, so
the compiler vectorises across outputs without touching any sum's order. One
row goes alone (64 accumulators); two or more go in blocks of eight rows by 32
columns (fewer than eight fill a block by repeating the last row), so that each
weight vector loaded feeds eight rows. (Blocks of four rows by 64 columns, tried
before, made 2-4 rows cost 1.2-1.4x one row and 5-7 rows 1.8x; blocks of eight
make them 1.0-1.4x: `benchmarks/bench_model.py`'s verification curve.) The
block that streams the group from memory also prefetches what follows
(`prefetch`), so the arithmetic of several rows overlaps the memory traffic;
the other blocks reuse the group from cache. A
last partial block reaches back to rows already done and recomputes them, to
the same bits. Threads split the groups; a reduction is never split across
threads.

Attention follows the same rule: a query's scores are dot products summed over
the head dimension in order (64 keys at a time, from a transposed key cache),
its permitted keys are visited in increasing position, masked ones skipped, and
softmax uses `exp_nonpositive`, our own float32 exp, not the platform's libm.
"""
from __future__ import annotations

import sys

import numpy as np
from llvmlite import binding as llvm, ir
from numba import njit, prange, types
from numba.core import cgutils, event
from numba.extending import intrinsic

COMPILE_NOTICE = "mirrorstream: compiling kernels, once (numba caches them for later runs)..."


class _CompileNotice(event.Listener):
    """Prints COMPILE_NOTICE on stderr, once per process, when a kernel of this module must
    be compiled (not loaded from numba's cache), and only if stderr is a terminal: a first
    run pauses for a while, and a person watching should know why; logs stay quiet."""

    def __init__(self):
        self.shown = False

    def on_start(self, ev):
        if self.shown or getattr(ev.data["dispatcher"].py_func, "__module__", None) != __name__:
            return
        self.shown = True
        if sys.stderr is not None and sys.stderr.isatty():
            print(COMPILE_NOTICE, file=sys.stderr, flush=True)

    def on_end(self, ev):
        pass


event.register("numba:compile", _CompileNotice())

TILE = 64    # output columns per packed group
STRIP = 16   # output columns per strip (one AVX-512 register)
PAIR = 32    # two strips: the columns of one eight-row block
ROW_BLOCK = 8  # rows per matmul block when a pass has two or more rows (`_eight_rows`)


@intrinsic
def stack_f32(typingctx, size):
    """A float32 array of compile-time constant size on the stack (not the heap),
    so LLVM can keep its elements in registers."""
    if not isinstance(size, types.IntegerLiteral):
        return None
    array_type = types.Array(types.float32, 1, "C")

    def codegen(context, builder, signature, args):
        n = signature.args[0].literal_value
        count = context.get_constant(types.intp, n)
        data = cgutils.alloca_once(builder, context.get_data_type(types.float32), size=count)
        array = context.make_array(array_type)(context, builder)
        itemsize = context.get_constant(types.intp, 4)
        context.populate_array(array, data=data, shape=cgutils.pack_array(builder, [count]),
                               strides=cgutils.pack_array(builder, [itemsize]), itemsize=itemsize, meminfo=None)
        return array._getvalue()

    return array_type(size), codegen


# LLVM's name for it: opaque pointers from LLVM 17 on, typed (i8*) before
PREFETCH_INTRINSIC = "llvm.prefetch.p0" if llvm.llvm_version_info[0] >= 17 else "llvm.prefetch.p0i8"


@intrinsic
def prefetch(typingctx, array, offset):
    """Hint the CPU to bring the cache line of array's element at flat (C-order) index
    offset into cache. Only a hint: it never faults, even past the array's end."""
    if not isinstance(array, types.Array) or not isinstance(offset, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]),
                                            PREFETCH_INTRINSIC)
        # read, keep in all cache levels, data cache
        builder.call(fn, [builder.bitcast(builder.gep(data, [args[1]]), byte_ptr), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, types.intp), codegen


def pack_linear(weight: np.ndarray) -> np.ndarray:
    """Pack a (out, in) weight into (ceil(out/64), 4, in, 16) strips, zero-padded."""
    n_out, n_in = weight.shape
    n_groups = -(-n_out // TILE)
    padded = np.zeros((n_groups * TILE, n_in), dtype=np.float32)
    padded[:n_out] = weight
    strips = padded.reshape(n_groups, TILE // STRIP, STRIP, n_in).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(strips)


def padded_width(n_out: int) -> int:
    """Width of a matmul output buffer for n_out outputs (a whole number of groups)."""
    return -(-n_out // TILE) * TILE


@njit(cache=True, nogil=True)
def _eight_rows(x, r, last, packed, g, s0, ahead, out):
    """Rows r..r+7 of group g, strips s0 and s0+1 (8 x 32 accumulators, 16 AVX-512
    registers): each weight vector loaded feeds eight rows. Rows past `last` repeat it
    (computed again, to the same bits), so that fewer than eight rows fill a block.
    Prefetches `ahead` floats on."""
    n_in = x.shape[1]
    group = packed[g]
    r0 = min(r, last)
    r1 = min(r + 1, last)
    r2 = min(r + 2, last)
    r3 = min(r + 3, last)
    r4 = min(r + 4, last)
    r5 = min(r + 5, last)
    r6 = min(r + 6, last)
    r7 = min(r + 7, last)
    a0 = stack_f32(PAIR)
    a1 = stack_f32(PAIR)
    a2 = stack_f32(PAIR)
    a3 = stack_f32(PAIR)
    a4 = stack_f32(PAIR)
    a5 = stack_f32(PAIR)
    a6 = stack_f32(PAIR)
    a7 = stack_f32(PAIR)
    for j in range(PAIR):
        a0[j] = 0.0
        a1[j] = 0.0
        a2[j] = 0.0
        a3[j] = 0.0
        a4[j] = 0.0
        a5[j] = 0.0
        a6[j] = 0.0
        a7[j] = 0.0
    for i in range(n_in):
        for s in range(2):
            prefetch(packed, ((g * (TILE // STRIP) + s0 + s) * n_in + i) * STRIP + ahead)
        x0 = x[r0, i]
        x1 = x[r1, i]
        x2 = x[r2, i]
        x3 = x[r3, i]
        x4 = x[r4, i]
        x5 = x[r5, i]
        x6 = x[r6, i]
        x7 = x[r7, i]
        for s in range(2):
            for j in range(STRIP):
                w = group[s0 + s, i, j]
                a0[s * STRIP + j] += x0 * w
                a1[s * STRIP + j] += x1 * w
                a2[s * STRIP + j] += x2 * w
                a3[s * STRIP + j] += x3 * w
                a4[s * STRIP + j] += x4 * w
                a5[s * STRIP + j] += x5 * w
                a6[s * STRIP + j] += x6 * w
                a7[s * STRIP + j] += x7 * w
    c = g * TILE + s0 * STRIP
    for j in range(PAIR):
        out[r7, c + j] = a7[j]
        out[r6, c + j] = a6[j]
        out[r5, c + j] = a5[j]
        out[r4, c + j] = a4[j]
        out[r3, c + j] = a3[j]
        out[r2, c + j] = a2[j]
        out[r1, c + j] = a1[j]
        out[r0, c + j] = a0[j]


@njit(cache=True, nogil=True)
def _one_row(x, r, group, out, col0):
    """Row r of one group, all four strips at once (64 accumulators)."""
    n_in = x.shape[1]
    a = stack_f32(TILE)
    for j in range(TILE):
        a[j] = 0.0
    for i in range(n_in):
        xi = x[r, i]
        for j in range(STRIP):
            a[j] += xi * group[0, i, j]
            a[STRIP + j] += xi * group[1, i, j]
            a[2 * STRIP + j] += xi * group[2, i, j]
            a[3 * STRIP + j] += xi * group[3, i, j]
    for j in range(TILE):
        out[r, col0 + j] = a[j]


@njit(cache=True, nogil=True)
def _matmul_group(x, packed, g, out):
    """Columns g*64..g*64+63 of out = x @ W.T for every row: the group's work unit.

    One row: 64 accumulators, the group streamed once. Two or more: blocks of eight
    rows by 32 columns (fewer than eight rows fill a block by repeating the last). The
    first block streams the group from memory and prefetches what follows; the others
    reuse it from cache. A last partial block reaches back to rows already done and
    recomputes them: every element's sum is the same whichever block computes it, so
    the bits are."""
    n_rows = x.shape[0]
    if n_rows == 1:
        _one_row(x, 0, packed[g], out, g * TILE)
        return
    ahead = 2 * packed.shape[2] * packed.shape[3]  # two strips on
    last = n_rows - 1
    r = 0
    while r < n_rows:
        start = max(min(r, n_rows - ROW_BLOCK), 0)
        _eight_rows(x, start, last, packed, g, 0, ahead if r == 0 else 0, out)
        _eight_rows(x, start, last, packed, g, 2, ahead if r == 0 else 0, out)
        r = start + ROW_BLOCK


@njit(parallel=True, cache=True, nogil=True)
def matmul(x, packed, out):
    """out (n, padded_width) = x (n, in) @ W.T for a weight packed by pack_linear."""
    for g in prange(packed.shape[0]):
        _matmul_group(x, packed, g, out)


@njit(cache=True, nogil=True)
def rmsnorm(x, weight, eps, out):
    """out[r] = weight * x[r] / sqrt(mean(x[r]^2) + eps), the sum taken in order."""
    n_rows, dim = x.shape
    for r in range(n_rows):
        ss = np.float32(0.0)
        for i in range(dim):
            ss += x[r, i] * x[r, i]
        scale = np.float32(1.0) / np.sqrt(ss / np.float32(dim) + eps)
        for i in range(dim):
            out[r, i] = weight[i] * (scale * x[r, i])


def rope_tables(max_positions: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables (position, head_dim/2) for interleaved-pair RoPE, float32."""
    pair = np.arange(0, head_dim, 2, dtype=np.float64)
    freq = 1.0 / theta ** (pair / head_dim)
    angle = np.arange(max_positions, dtype=np.float64)[:, None] * freq[None, :]
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


@njit(cache=True, nogil=True)
def apply_rope(x, n_heads, head_dim, positions, cos, sin):
    """Rotate each (even, odd) pair of every head of x (n, n_heads*head_dim) in place."""
    for r in range(x.shape[0]):
        p = positions[r]
        for h in range(n_heads):
            base = h * head_dim
            for k in range(head_dim // 2):
                c = cos[p, k]
                s = sin[p, k]
                v0 = x[r, base + 2 * k]
                v1 = x[r, base + 2 * k + 1]
                x[r, base + 2 * k] = v0 * c - v1 * s
                x[r, base + 2 * k + 1] = v0 * s + v1 * c


LANES = 16  # keys scored together: 16 floats (two AVX registers), four such groups when it can


@njit(cache=True, nogil=True)
def _key_scores(q, r, qo, k_t, ko, head_dim, n_slots, s):
    """s[slot] = q[r, head] . k[slot, head] for slots 0..n_slots-1, each summed over d in order.

    Keys are stored transposed (k_t[feature, slot]), so consecutive keys are
    scored with vector loads: 64 independent sums in flight, then 16, then one.
    Every slot is scored, masked ones too: a score never depends on the mask.
    """
    slot = 0
    while slot + 4 * LANES <= n_slots:
        a0 = stack_f32(LANES)
        a1 = stack_f32(LANES)
        a2 = stack_f32(LANES)
        a3 = stack_f32(LANES)
        for j in range(LANES):
            a0[j] = 0.0
            a1[j] = 0.0
            a2[j] = 0.0
            a3[j] = 0.0
        for d in range(head_dim):
            qd = q[r, qo + d]
            keys = k_t[ko + d, slot:slot + 4 * LANES]
            for j in range(LANES):
                a0[j] += qd * keys[j]
                a1[j] += qd * keys[LANES + j]
                a2[j] += qd * keys[2 * LANES + j]
                a3[j] += qd * keys[3 * LANES + j]
        for j in range(LANES):
            s[slot + j] = a0[j]
            s[slot + LANES + j] = a1[j]
            s[slot + 2 * LANES + j] = a2[j]
            s[slot + 3 * LANES + j] = a3[j]
        slot += 4 * LANES
    while slot + LANES <= n_slots:
        a = stack_f32(LANES)
        for j in range(LANES):
            a[j] = 0.0
        for d in range(head_dim):
            qd = q[r, qo + d]
            keys = k_t[ko + d, slot:slot + LANES]
            for j in range(LANES):
                a[j] += qd * keys[j]
        for j in range(LANES):
            s[slot + j] = a[j]
        slot += LANES
    while slot < n_slots:
        dot = np.float32(0.0)
        for d in range(head_dim):
            dot += q[r, qo + d] * k_t[ko + d, slot]
        s[slot] = dot
        slot += 1


MAX_HEAD_DIM = 256  # the stack accumulator of one head's output (ModelConfig.validate enforces it)


@njit(cache=True, nogil=True)
def _weighted_values(p, base, mask, r, v_cache, ko, head_dim, out_row, qo):
    """out_row[qo + d] = sum over the visible slots, in slot order, of p[slot] * v[slot, ko + d]."""
    acc = stack_f32(MAX_HEAD_DIM)
    for d in range(head_dim):
        acc[d] = 0.0
    for slot in range(base + mask.shape[1]):
        if slot < base or mask[r, slot - base]:
            ps = p[slot]
            values = v_cache[slot, ko:ko + head_dim]
            for d in range(head_dim):
                acc[d] += ps * values[d]
    for d in range(head_dim):
        out_row[qo + d] = acc[d]


@njit(cache=True, nogil=True, inline="always")
def exp_nonpositive(x):
    """e^x for x <= 0 in float32 with our own fixed arithmetic (range reduction by ln 2,
    a degree-6 polynomial, a power-of-two table), so softmax weights do not depend on
    the platform's libm and the loop vectorises. Relative error under 1e-7; arguments
    below -87 count as -87 (e^-87 is 1.6e-38, negligible beside the maximum's 1)."""
    x = min(max(x, np.float32(-87.0)), np.float32(0.0))
    n = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * (r * r) + r + np.float32(1.0)
    return p * POW2_NEGATIVE[-int(n)]


POW2_NEGATIVE = np.array([2.0 ** -k for k in range(127)], dtype=np.float32)


@njit(cache=True, nogil=True)
def _attend(q, k_t, v_cache, base, mask, n_heads, n_kv_heads, head_dim, task, scores, out):
    """One (row, head) task of `attention`: scores, softmax and weighted values."""
    n_rows = q.shape[0]
    n_slots = base + n_rows
    r = task // n_heads
    h = task % n_heads
    qo = h * head_dim
    ko = (h // (n_heads // n_kv_heads)) * head_dim
    scale = np.float32(1.0) / np.sqrt(np.float32(head_dim))
    s = scores[task]
    _key_scores(q, r, qo, k_t, ko, head_dim, n_slots, s)
    m = np.float32(-np.inf)
    for slot in range(n_slots):
        s[slot] = s[slot] * scale
    for slot in range(base):
        m = max(m, s[slot])
    for i in range(n_rows):
        if mask[r, i]:
            m = max(m, s[base + i])
    for slot in range(n_slots):
        s[slot] = exp_nonpositive(s[slot] - m)
    total = np.float32(0.0)
    for slot in range(base):
        total += s[slot]
    for i in range(n_rows):
        if mask[r, i]:
            total += s[base + i]
    for slot in range(n_slots):
        s[slot] = s[slot] / total
    _weighted_values(s, base, mask, r, v_cache, ko, head_dim, out[r], qo)


@njit(parallel=True, cache=True, nogil=True)
def attention(q, k_t, v_cache, base, mask, n_heads, n_kv_heads, head_dim, scores, out):
    """Multi-head (grouped-query) attention of n new rows over the cache.

    Row r sees every committed slot 0..base-1 and the new slots base+j with
    mask[r, j] true, visited in increasing slot order; masked slots are skipped
    (their scores and exponentials are computed, so the loops vectorise, but
    never enter the max, the sum or the output).
    k_t: (kv_dim, slots) and v_cache: (slots, kv_dim) of one layer, new rows
    already written. scores: scratch (n*n_heads, base+n). out: (n, n_heads*head_dim).
    """
    for task in prange(q.shape[0] * n_heads):
        _attend(q, k_t, v_cache, base, mask, n_heads, n_kv_heads, head_dim, task, scores, out)


@njit(cache=True, nogil=True)
def swiglu(gate, up, out):
    """out = silu(gate) * up, elementwise."""
    for r in range(out.shape[0]):
        for i in range(out.shape[1]):
            g = gate[r, i]
            out[r, i] = g * (np.float32(1.0) / (np.float32(1.0) + np.exp(-g))) * up[r, i]


@njit(cache=True, nogil=True)
def add_into(x, y):
    """x += y, elementwise."""
    for r in range(x.shape[0]):
        for i in range(x.shape[1]):
            x[r, i] += y[r, i]


@njit(cache=True, nogil=True)
def add_bias(x, bias):
    """x[r] += bias, elementwise (Qwen2's q/k/v biases, added after the matmul's sum)."""
    for r in range(x.shape[0]):
        for i in range(bias.shape[0]):
            x[r, i] += bias[i]


@njit(cache=True, nogil=True)
def head_rmsnorm(x, n_heads, head_dim, weight, eps):
    """RMSNorm of every head of x (n, n_heads*head_dim) in place, over the head's dimensions
    in order (Qwen3's q/k norm); the same arithmetic as rmsnorm."""
    for r in range(x.shape[0]):
        for h in range(n_heads):
            base = h * head_dim
            ss = np.float32(0.0)
            for i in range(head_dim):
                ss += x[r, base + i] * x[r, base + i]
            scale = np.float32(1.0) / np.sqrt(ss / np.float32(head_dim) + eps)
            for i in range(head_dim):
                x[r, base + i] = weight[i] * (scale * x[r, base + i])


@njit(parallel=True, cache=True, nogil=True)
def transformer_layer(h, positions, base, mask, cos, sin, eps, n_heads, n_kv_heads, head_dim,
                      attn_norm, wqkv, bqkv, q_norm, k_norm, wo, ffn_norm, w13, w2, k_t, v_cache):
    """One pre-norm Llama block on the residual stream h (n, dim), in place.

    Writes the new rows' keys and values into this layer's cache (k_t is
    (kv_dim, slots), v_cache (slots, kv_dim)) at slots base..base+n-1, then attends.
    Queries are n_heads*head_dim wide (head_dim need not be dim/n_heads). Optional
    parts, off when their array is empty: bqkv, a bias added to q|k|v after the
    matmul (Qwen2); q_norm/k_norm (head_dim,), an RMSNorm of each q and k head
    before RoPE (Qwen3).

    Its parallel loops are its own, never calls to the parallel kernels above: numba
    (0.68, issue 8578) records "start the thread pool on load" in a parallel function's
    own cache entry only, not in that of a caller linking a callee loaded from the cache;
    such a caller, cached in one process, jumps to a null pointer in the next (SIGSEGV)
    unless something else started the pool (tests/refimpl/test_compile_cache.py).
    """
    n, dim = h.shape
    q_dim = n_heads * head_dim
    kv_dim = n_kv_heads * head_dim
    hidden = w2.shape[2]  # packed (groups, strips, in, STRIP)
    x = np.empty((n, dim), np.float32)
    rmsnorm(h, attn_norm, eps, x)
    qkv = np.empty((n, wqkv.shape[0] * TILE), np.float32)
    for g in prange(wqkv.shape[0]):
        _matmul_group(x, wqkv, g, qkv)
    if bqkv.shape[0] > 0:
        add_bias(qkv, bqkv)
    q = qkv[:, :q_dim]
    k = qkv[:, q_dim:q_dim + kv_dim]
    if q_norm.shape[0] > 0:
        head_rmsnorm(q, n_heads, head_dim, q_norm, eps)
        head_rmsnorm(k, n_kv_heads, head_dim, k_norm, eps)
    apply_rope(q, n_heads, head_dim, positions, cos, sin)
    apply_rope(k, n_kv_heads, head_dim, positions, cos, sin)
    for r in range(n):
        for i in range(kv_dim):
            k_t[i, base + r] = k[r, i]
            v_cache[base + r, i] = qkv[r, q_dim + kv_dim + i]
    att = np.empty((n, q_dim), np.float32)
    scores = np.empty((n * n_heads, base + n), np.float32)
    for task in prange(n * n_heads):
        _attend(q, k_t, v_cache, base, mask, n_heads, n_kv_heads, head_dim, task, scores, att)
    o = np.empty((n, wo.shape[0] * TILE), np.float32)
    for g in prange(wo.shape[0]):
        _matmul_group(att, wo, g, o)
    add_into(h, o[:, :dim])
    rmsnorm(h, ffn_norm, eps, x)
    gate_up = np.empty((n, w13.shape[0] * TILE), np.float32)
    for g in prange(w13.shape[0]):
        _matmul_group(x, w13, g, gate_up)
    act = np.empty((n, hidden), np.float32)
    swiglu(gate_up[:, :hidden], gate_up[:, hidden:2 * hidden], act)
    for g in prange(w2.shape[0]):
        _matmul_group(act, w2, g, o)
    add_into(h, o[:, :dim])


@njit(cache=True, nogil=True)
def layernorm(x, weight, bias, eps, out):
    """out[r] = (x[r] - mean) / sqrt(variance + eps) * weight + bias (GPT-2); mean and
    variance are sums taken in order."""
    n_rows, dim = x.shape
    for r in range(n_rows):
        total = np.float32(0.0)
        for i in range(dim):
            total += x[r, i]
        mean = total / np.float32(dim)
        ss = np.float32(0.0)
        for i in range(dim):
            d = x[r, i] - mean
            ss += d * d
        scale = np.float32(1.0) / np.sqrt(ss / np.float32(dim) + eps)
        for i in range(dim):
            out[r, i] = (x[r, i] - mean) * scale * weight[i] + bias[i]


@njit(cache=True, nogil=True)
def gelu_tanh(x, out):
    """out = GELU with the tanh approximation (GPT-2's gelu_new), elementwise."""
    c = np.float32(0.7978845608028654)  # sqrt(2 / pi)
    for r in range(out.shape[0]):
        for i in range(out.shape[1]):
            v = x[r, i]
            out[r, i] = np.float32(0.5) * v * (np.float32(1.0) + np.tanh(c * (v + np.float32(0.044715) * (v * v * v))))


@njit(parallel=True, cache=True, nogil=True)
def gpt2_layer(h, base, mask, eps, n_heads, ln1_w, ln1_b, wqkv, bqkv, wo, bo, ln2_w, ln2_b, wfc, bfc,
               wproj, bproj, k_t, v_cache):
    """One GPT-2 block on the residual stream h (n, dim), in place: LayerNorm, attention
    with biased projections and no RoPE (positions were added to the embedding), LayerNorm,
    GELU MLP with biases. Same cache layout and attention as transformer_layer; its
    parallel loops are its own for the same reason (see there)."""
    n, dim = h.shape
    head_dim = dim // n_heads
    hidden = wproj.shape[2]
    x = np.empty((n, dim), np.float32)
    layernorm(h, ln1_w, ln1_b, eps, x)
    qkv = np.empty((n, wqkv.shape[0] * TILE), np.float32)
    for g in prange(wqkv.shape[0]):
        _matmul_group(x, wqkv, g, qkv)
    add_bias(qkv, bqkv)
    for r in range(n):
        for i in range(dim):
            k_t[i, base + r] = qkv[r, dim + i]
            v_cache[base + r, i] = qkv[r, 2 * dim + i]
    q = qkv[:, :dim]
    att = np.empty((n, dim), np.float32)
    scores = np.empty((n * n_heads, base + n), np.float32)
    for task in prange(n * n_heads):
        _attend(q, k_t, v_cache, base, mask, n_heads, n_heads, head_dim, task, scores, att)
    o = np.empty((n, wo.shape[0] * TILE), np.float32)
    for g in prange(wo.shape[0]):
        _matmul_group(att, wo, g, o)
    add_bias(o, bo)
    add_into(h, o[:, :dim])
    layernorm(h, ln2_w, ln2_b, eps, x)
    up = np.empty((n, wfc.shape[0] * TILE), np.float32)
    for g in prange(wfc.shape[0]):
        _matmul_group(x, wfc, g, up)
    add_bias(up, bfc)
    act = np.empty((n, hidden), np.float32)
    gelu_tanh(up[:, :hidden], act)
    for g in prange(wproj.shape[0]):
        _matmul_group(act, wproj, g, o)
    add_bias(o, bproj)
    add_into(h, o[:, :dim])
