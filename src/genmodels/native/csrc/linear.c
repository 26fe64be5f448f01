/* Matrix products: small-M dot tiles on PyTorch's own row-major weights (decode), and the
 * packed-panel GEMM (encoder). */
#include "common.h"

int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int omp_threads(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* Columns [n0, n1) of y (M, N) = x (M, K) · W (N, K)ᵀ + bias, rows of x, W, y ldx, ldw, ldy apart.
 * Each block of weight rows is read from memory once and used for every input row while in L1. */
void linear_rows_ld(const float *x, int64_t ldx, int64_t M, int64_t K, const float *W, int64_t ldw,
                           const float *bias, float *y, int64_t ldy, int64_t n0, int64_t n1, int accumulate) {
    int64_t n = n0;
    if (M == 1) {
        const int64_t m = 0;
        for (; n + 4 <= n1; n += 4) TILE(1, 4);
        for (; n < n1; n++) TILE(1, 1);
        return;
    }
#ifdef __AVX512F__
    for (; n + 4 <= n1; n += 4) { /* 32 vector registers: a 4 x 4 tile's 16 accumulators fit */
        int64_t m = 0;
        for (; m + 4 <= M; m += 4) TILE(4, 4);
        for (; m < M; m++) TILE(1, 4);
    }
#endif
    for (; n + 3 <= n1; n += 3) { /* 16 registers: 4 x 3 (12 accumulators, 3 weight vectors, 1 input) */
        int64_t m = 0;
        for (; m + 4 <= M; m += 4) TILE(4, 3);
        for (; m < M; m++) TILE(1, 3);
    }
    /* the last one or two weight rows of a block (linear_team's 8 = 3 + 3 + 2): still four input rows a
     * tile — one row a tile is one FMA chain a weight row, ~8x the time (a quarter of every step at M = 8) */
    if (n < n1) {
        const int64_t r = n1 - n;
        int64_t m = 0;
        for (; m + 4 <= M; m += 4) {
            if (r == 2) TILE(4, 2);
            else TILE(4, 1);
        }
        for (; m < M; m++) {
            if (r == 2) TILE(1, 2);
            else TILE(1, 1);
        }
    }
}

static void linear_rows(const float *x, int64_t M, int64_t K, const float *W, const float *bias, float *y,
                        int64_t N, int64_t n0, int64_t n1, int accumulate) {
    linear_rows_ld(x, K, M, K, W, K, bias, y, N, n0, n1, accumulate);
}

/* Inside a parallel region: split the N output rows over the team in blocks of 8 (static, so each
 * thread streams one contiguous slab of W). Ends with the team's barrier. */
void linear_team(const float *x, int64_t M, int64_t K, const float *W, const float *bias, float *y,
                        int64_t N, int accumulate) {
    if (rows_gemm_takes(M)) { /* many rows: outer-product tiles, the same sums (rows_gemm.c) */
        rows_gemm_team(x, M, K, W, bias, y, N, accumulate);
        return;
    }
    const int64_t nb = (N + 7) / 8;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int64_t n0 = b * 8, n1 = n0 + 8 < N ? n0 + 8 : N;
        linear_rows(x, M, K, W, bias, y, N, n0, n1, accumulate);
    }
}

/* y (M, N) = x (M, K) · W (N, K)ᵀ + bias, on n_threads threads. */
GM_API void gm_linear(const float *x, int64_t M, int64_t K, const float *W, const float *bias, float *y, int64_t N,
               int n_threads) {
    if (n_threads <= 1 || (int64_t)N * K < 32768) {
        if (rows_gemm_takes(M)) rows_gemm(x, M, K, W, bias, y, N, 0);
        else linear_rows(x, M, K, W, bias, y, N, 0, N, 0);
        return;
    }
#pragma omp parallel num_threads(n_threads)
    linear_team(x, M, K, W, bias, y, N, 0);
}

/* Rows [0, M) of one 16-wide output panel, six at a time. */
void panel_rows(const float *x, int64_t ldx, int64_t M, int64_t K, const float *wp, int64_t ldw, float *y,
                int64_t ldy, int64_t nv, const float *b, int accumulate) {
    int64_t m = 0;
    for (; m + 6 <= M; m += 6) panel_kernel(x + m * ldx, ldx, K, wp, ldw, y + m * ldy, ldy, nv, b, accumulate, 6);
    switch (M - m) {
    case 5: panel_kernel(x + m * ldx, ldx, K, wp, ldw, y + m * ldy, ldy, nv, b, accumulate, 5); break;
    case 4: panel_kernel(x + m * ldx, ldx, K, wp, ldw, y + m * ldy, ldy, nv, b, accumulate, 4); break;
    case 3: panel_kernel(x + m * ldx, ldx, K, wp, ldw, y + m * ldy, ldy, nv, b, accumulate, 3); break;
    case 2: panel_kernel(x + m * ldx, ldx, K, wp, ldw, y + m * ldy, ldy, nv, b, accumulate, 2); break;
    case 1: panel_kernel(x + m * ldx, ldx, K, wp, ldw, y + m * ldy, ldy, nv, b, accumulate, 1); break;
    }
}


/* Inside a parallel region: y (M, N) (+)= x (M, K) · Wᵀ + bias with W packed. Rows go in chunks
 * that stay in L2 while every panel passes over them; (chunk, panel) pairs are split statically. */
void gemm_team(const float *x, int64_t M, int64_t K, const float *Wp, const float *bias, float *y, int64_t N,
                      int accumulate) {
    const int64_t P = (N + 15) / 16;
    int64_t mc = (49152 / (K > 0 ? K : 1)) / 6 * 6;
    if (mc < 6) mc = 6;
    const int64_t C = (M + mc - 1) / mc;
#pragma omp for schedule(static) collapse(2)
    for (int64_t c = 0; c < C; c++)
        for (int64_t p = 0; p < P; p++) {
            const int64_t m1 = (c + 1) * mc < M ? (c + 1) * mc : M, nv = N - p * 16 < 16 ? N - p * 16 : 16;
            const float *wp = Wp + p * K * 16, *b = bias ? bias + p * 16 : 0;
            int64_t m = c * mc;
            panel_rows(x + m * K, K, m1 - m, K, wp, 16, y + m * N + p * 16, N, nv, b, accumulate);
        }
}

GM_API void gm_gemm_packed(const float *x, int64_t M, int64_t K, const float *Wp, const float *bias, float *y, int64_t N,
                    int n_threads) {
#pragma omp parallel num_threads(n_threads)
    gemm_team(x, M, K, Wp, bias, y, N, 0);
}
