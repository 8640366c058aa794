/* The entry points of glassformer.nn.quantization's kernel: y = x W^T + b for a few rows of x (quantized.h
   states the formats and the arithmetic). */
#include "quantized.h"

/* y (M, N) = x (M, K) W^T + bias; bias may be NULL */
static void linear(const qmatrix *w, const float *x, i64 M, const float *bias, float *y, int threads) {
    const i64 K = w->K, N = w->N;
    int16_t *xq = malloc(sizeof(int16_t) * M * K);
    float *xd = malloc(sizeof(float) * M * (K / BLOCK)), *xsum = malloc(sizeof(float) * (K / BLOCK));
    float *gsum = malloc(sizeof(float) * M * (K / w->G));
    const qx q = quantize_rows(x, M, K, w->G, xq, xd, xsum, gsum);
#pragma omp parallel num_threads(threads)
    {
        i64 t = 0, T = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        T = omp_get_num_threads();
#endif
        qmatrix_rows(w, q, M, N * t / T, N * (t + 1) / T, bias, y, N, 0);
    }
    free(xq);
    free(xd);
    free(xsum);
    free(gsum);
}

void glassformer_int8_linear(const float *x, i64 M, i64 K, const int8_t *codes, const float *scales, i64 N, i64 G,
                             const float *bias, float *y, int threads) {
    const qmatrix w = {8, N, K, G, codes, scales, NULL};
    linear(&w, x, M, bias, y, threads);
}

void glassformer_int4_linear(const float *x, i64 M, i64 K, const uint8_t *codes, const float *scales,
                             const float *offsets, i64 N, i64 G, const float *bias, float *y, int threads) {
    const qmatrix w = {4, N, K, G, codes, scales, offsets};
    linear(&w, x, M, bias, y, threads);
}

/* 1 when built with AVX2, 0 for the plain C loops: reported by ``glassformer env`` */
int glassformer_quantized_uses_avx2(void) {
#ifdef __AVX2__
    return 1;
#else
    return 0;
#endif
}
