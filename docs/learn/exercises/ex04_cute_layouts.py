#!/usr/bin/env python3
"""Exercise 4 (docs/learn/04-cute.md): CuTe's layouts, swizzles and the MMA fragments, in Python.

A tiny model of the three facts the SM80 kernel's shared memory and registers are built on:
  1. a Layout is a function from coordinates to offsets (shape:stride), and local_tile is
     nothing but an offset and a smaller layout;
  2. the XOR swizzle (Swizzle<3, 3, 3>) and the padded rows both make ldmatrix and the 16-byte
     cp.async writes bank-conflict free;
  3. the m16n8k16 accumulator of S, read differently, is the A operand of O += P V
     (acc_layout_as_a_operand in src/sm80/utils_sm80.cuh), and a row lives in one quad.
"""
import itertools


# ---- 1. Layouts -----------------------------------------------------------------------------
class Layout:
    def __init__(self, shape, stride):
        self.shape, self.stride = tuple(shape), tuple(stride)

    def __call__(self, *coord):
        if len(coord) == 1 and len(self.shape) > 1:   # a 1-D index: colexicographic (mode 0 fastest)
            coord = self.coord_of(coord[0])
        return sum(c * s for c, s in zip(coord, self.stride))

    def coord_of(self, idx):
        out = []
        for n in self.shape:
            out.append(idx % n)
            idx //= n
        return tuple(out)

    def size(self):
        n = 1
        for x in self.shape:
            n *= x
        return n

    def cosize(self):  # one past the largest offset: the memory the layout spans
        return self(*[n - 1 for n in self.shape]) + 1


row_major = Layout((4, 8), (8, 1))   # make_layout(Shape<_4,_8>{}, Stride<_8,_1>{}): "LayoutRight"
col_major = Layout((4, 8), (1, 4))   # CuTe's default (LayoutLeft)
assert row_major(1, 2) == 10 and col_major(1, 2) == 9
assert [col_major(i) for i in range(8)] == list(range(8))   # 1-D index = offset for LayoutLeft
assert row_major(5) == 8 * 1 + 1                             # index 5 is coordinate (1, 1)
assert row_major.cosize() == col_major.cosize() == 32

# gK in mainloop_fwd_sm80.cuh: mK is (n_block_max * kBlockN, kHeadDim) with row stride
# k_row_stride; local_tile(mK, (kBlockN, kHeadDim), (_, 0)) is a (kBlockN, kHeadDim, n) tensor
# whose block n starts n * kBlockN rows further. A tile is an offset plus the same strides.
k_row_stride, kBlockN, kHeadDim = 1024, 64, 128           # e.g. h_k = 8 heads of d = 128
mK = Layout((4 * kBlockN, kHeadDim), (k_row_stride, 1))
gK = Layout((kBlockN, kHeadDim, 4), (k_row_stride, 1, kBlockN * k_row_stride))
for n, r, c in [(0, 0, 0), (2, 5, 7), (3, 63, 127)]:
    assert gK(r, c, n) == mK(n * kBlockN + r, c)

# ---- 2. Swizzle and padding: no bank conflicts ----------------------------------------------
# Shared memory has 32 banks of 4 bytes: 128 bytes per "row" of banks. An 8x8 ldmatrix reads 8
# rows of 16 bytes (one column chunk of 8 consecutive tile rows); it is conflict free iff those
# 8 chunks fall into 8 different 16-byte bank groups.
ELEM = 2  # bytes of fp16 / bf16


def swizzle_333(offset):
    """CuTe Swizzle<3, 3, 3> on an element offset: bits [6, 9) XORed into bits [3, 6)."""
    return offset ^ ((offset >> 3) & 0b111000)


def bank_group(byte_offset):
    return (byte_offset // 16) % 8


# The swizzled atom: 8 rows of 64 elements (128 bytes), as SmemLayoutAtom in
# src/sm80/kernel_traits_sm80.cuh (kBlockKSmem = 64).
atom = Layout((8, 64), (64, 1))
for chunk in range(8):                     # ldmatrix: column chunk `chunk`, rows 0..7
    groups = {bank_group(ELEM * swizzle_333(atom(r, chunk * 8))) for r in range(8)}
    assert len(groups) == 8, groups
    plain = {bank_group(ELEM * atom(r, chunk * 8)) for r in range(8)}
    assert len(plain) == 1                 # unswizzled: all 8 rows hit the same banks (8-way)
# The swizzle only permutes 16-byte chunks inside a row: vectors stay contiguous.
for r, c in itertools.product(range(8), range(0, 64, 8)):
    base = swizzle_333(atom(r, c))
    assert all(swizzle_333(atom(r, c + e)) == base + e for e in range(8))
    assert base // 64 == r                 # and rows stay rows

# The padded alternative (kPaddedSmem): row pitch kHeadDim + 8 elements, i.e. 16 bytes more
# than a multiple of 128, so 8 consecutive rows start in 8 different bank groups.
for head_dim in (32, 64, 96, 128, 192, 256):
    pitch = head_dim + 8
    for chunk in range(head_dim // 8):
        groups = {bank_group(ELEM * (r * pitch + chunk * 8)) for r in range(8)}
        assert len(groups) == 8, (head_dim, chunk)

# ---- 3. The m16n8k16 fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16") ---------------
def c_fragment(lane, i):
    """(row, col) of accumulator value c_i (i = 0..3) of `lane` in an m16n8 fp32 tile."""
    group, tig = lane // 4, lane % 4
    return group + 8 * (i // 2), 2 * tig + i % 2


def a_fragment(lane, i):
    """(row, col) of A-operand value a_i (i = 0..7) of `lane` in an m16 x k16 16-bit tile."""
    group, tig = lane // 4, lane % 4
    row = group + 8 * ((i // 2) % 2)
    col = 2 * tig + i % 2 + 8 * (i // 4)
    return row, col


# Every element of the 16 x 8 accumulator is held by exactly one (lane, value).
owners = {c_fragment(lane, i) for lane in range(32) for i in range(4)}
assert len(owners) == 16 * 8

# acc_layout_as_a_operand: the accumulators of two adjacent n8 blocks (keys 0-7 and 8-15),
# values c0..c3 of each, ARE a0..a3 and a4..a7 of the A operand over those 16 keys. So P goes
# from the S = Q K^T accumulator into O += P V without leaving registers.
for lane in range(32):
    for i in range(8):
        tile, ci = divmod(i, 4)
        row, col = c_fragment(lane, ci)
        assert a_fragment(lane, i) == (row, col + 8 * tile)

# acc_layout_rowcol: a thread owns rows lane/4 and lane/4 + 8; the 4 lanes of a quad
# (lane ^ 1, lane ^ 2, lane ^ 3) own the rest of those rows. That is why quad_allreduce_max
# needs exactly two shuffles, xor 1 and xor 2.
for lane in range(32):
    rows = {c_fragment(lane, i)[0] for i in range(4)}
    assert rows == {lane // 4, lane // 4 + 8}
    sharers = {other for other in range(32)
               if {c_fragment(other, i)[0] for i in range(4)} == rows}
    assert sharers == {lane ^ x for x in (0, 1, 2, 3)}

print("ex04: layouts, swizzle, padding and MMA fragments check out")
