// STUB: replaced by the CPU backend work (AVX2+FMA micro-kernels).
