/* Sparse mixture-of-experts feed-forward for the fused decode step (Shazeer 2017; Switch, Fedus 2021;
 * Mixtral, Jiang 2024), the same function as genmodels/nn/moe.py's SparseMoE (dropless):
 *
 *     z = W_r x (fp32)    p = softmax(z)    S = TopK(p, k), best first, exact ties to the lowest index
 *     g_e = p_e / Σ_{j∈S} p_j (renorm) or p_e        y = Σ_{e∈S} g_e · W_down,e (act(W_gate,e x) ⊙ W_up,e x)
 *
 * Each row has its own experts; an expert's weights are its slice of the stacked tensors, read in
 * place (pointer offset e·2F·D / e·D·F). Three team loops per layer, each over (row, pick, block of
 * 8 output rows), so the barriers do not grow with B or k: all gate|up GEMVs (every read of `in`
 * happens before x is written, so post-norm blocks, where in == x, stay correct), the gated
 * activations scaled by g, then the down GEMVs accumulated into x, one (row, block) per item.
 */
#include "moe.h"

int64_t moe_scratch_floats(int64_t B, int64_t E, int64_t K, int64_t F) {
    return 2 * B * K + B * (E + K + 3 * K * F); /* picks (int64), probabilities, gates, gate|up, hidden */
}

/* p = softmax(z) in place over E values; picks[0..K) the K largest, best first (strict '>', so an
 * exact tie goes to the lower index; a NaN row still picks K distinct in-range experts); gates[j] =
 * p of picks[j], renormalised to sum 1 when renorm. */
static void route_row(float *p, int64_t E, int64_t K, int renorm, int64_t *picks, float *gates) {
    float mx = p[0], sum = 0.0f;
    for (int64_t e = 1; e < E; e++) mx = p[e] > mx ? p[e] : mx;
    for (int64_t e = 0; e < E; e++) sum += p[e] = expf(p[e] - mx);
    for (int64_t e = 0; e < E; e++) p[e] /= sum;
    float total = 0.0f;
    for (int64_t j = 0; j < K; j++) {
        int64_t best = -1;
        for (int64_t e = 0; e < E; e++) {
            int taken = 0;
            for (int64_t i = 0; i < j; i++) taken |= picks[i] == e;
            if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        picks[j] = best;
        total += gates[j] = p[best];
    }
    if (renorm)
        for (int64_t j = 0; j < K; j++) gates[j] /= total;
}

void moe_team(const gm_moe *moe, const float *in, int64_t B, int64_t D, float *x, float *scratch) {
    const int64_t E = moe->n_experts, K = moe->top_k, F = moe->d_ff, F2 = 2 * F;
    int64_t *picks = (int64_t *)scratch; /* (B, K) */
    float *probs = scratch + 2 * B * K, *gates = probs + B * E, *gu = gates + B * K, *hid = gu + B * K * F2;
    linear_team(in, B, D, moe->router_w, 0, probs, E, 0); /* z (B, E) */
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; b++) route_row(probs + b * E, E, K, (int)moe->renorm, picks + b * K, gates + b * K);
    const int64_t nb_up = (F2 + 7) / 8, nb_down = (D + 7) / 8;
#pragma omp for schedule(static)
    for (int64_t it = 0; it < B * K * nb_up; it++) { /* gu[b, j] = W_gate|up,e in[b] */
        const int64_t bj = it / nb_up, n0 = it % nb_up * 8, n1 = n0 + 8 < F2 ? n0 + 8 : F2;
        const float *w = moe->gate_up + picks[bj] * F2 * D;
        linear_rows_ld(in + bj / K * D, D, 1, D, w, D, 0, gu + bj * F2, F2, n0, n1, 0);
    }
#pragma omp for schedule(static)
    for (int64_t bj = 0; bj < B * K; bj++) { /* hid[b, j] = g · act(gate) ⊙ up */
        float *h = hid + bj * F;
        activate(h, gu + bj * F2, gu + bj * F2 + F, F, (int)moe->act);
        for (int64_t i = 0; i < F; i++) h[i] *= gates[bj];
    }
#pragma omp for schedule(static)
    for (int64_t it = 0; it < B * nb_down; it++) { /* x[b] += Σ_j W_down,e hid[b, j] */
        const int64_t b = it / nb_down, n0 = it % nb_down * 8, n1 = n0 + 8 < D ? n0 + 8 : D;
        for (int64_t j = 0; j < K; j++) {
            const float *w = moe->down + picks[b * K + j] * D * F;
            linear_rows_ld(hid + (b * K + j) * F, F, 1, F, w, F, 0, x + b * D, D, n0, n1, 1);
        }
    }
}
