/* One quantized product y = x W^T by the path of csrc/quantized.h that this file's compiler flags select, for
   tests/backends/test_kernel_paths.py, which builds it once per path (plain C, AVX2, AVX512-VNNI, and NEON for
   aarch64, run under qemu-user) and compares y with the float reference.

       kernel_paths IN OUT      IN: int64 kind (8 or 4), N, K, G, M; float32 x (M, K); codes (int8 (N, K) or uint8
                                    (N, K / 2)); float16 scales (N, K / G); float16 offsets (N, K / G) for int4
                                OUT: float32 y (M, N); the path's name on stdout */
#include <stdio.h>

#include <vector>

#include "quantized.h"

template <typename T>
static bool read(FILE *f, std::vector<T> &v, size_t n) {
    v.resize(n);
    return fread(v.data(), sizeof(T), n, f) == n;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    FILE *in = fopen(argv[1], "rb");
    std::vector<int64_t> head;
    if (!in || !read(in, head, 5)) return 3;
    const i64 kind = head[0], N = head[1], K = head[2], G = head[3], M = head[4];
    std::vector<float> x;
    std::vector<uint16_t> scales, offsets;
    std::vector<uint8_t> codes;
    if (!read(in, x, M * K) || !read(in, codes, kind == 8 ? N * K : N * K / 2) || !read(in, scales, N * (K / G)))
        return 3;
    if (kind == 4 && !read(in, offsets, N * (K / G))) return 3;
    fclose(in);
    const qmatrix w = {kind, N, K, G, codes.data(), scales.data(), kind == 4 ? offsets.data() : nullptr};
    xspace space(M, K);
    for (i64 m = 0; m < M; m++) quantize_row(x.data() + m * K, m, K, G, space);
    const qx q = x_view(space, K);
    std::vector<float> y(M * N);
    qmatrix_rows(&w, q, M, 0, N, nullptr, y.data(), N, 0);
    FILE *out = fopen(argv[2], "wb");
    if (!out || fwrite(y.data(), sizeof(float), y.size(), out) != y.size()) return 4;
    fclose(out);
    printf("%s\n", simd_path());
    return 0;
}
