/* The sparse MoE feed-forward of the fused decode step (moe.c), called from decoder.c. */
#ifndef GM_MOE_H
#define GM_MOE_H
#include "common.h"

/* One layer's experts: router W_r (E, D); gate|up stacked (E, 2F, D), rows [0, F) gate, [F, 2F) up;
 * down stacked (E, D, F). PyTorch's tensors read in place (nn/moe.py: router.weight,
 * experts.gate_up_proj, experts.down_proj). */
typedef struct {
    const float *router_w, *gate_up, *down;
    int64_t n_experts, top_k, d_ff, renorm, act;
} gm_moe;

/* Floats of scratch moe_team needs for B rows (its int64 picks included). */
int64_t moe_scratch_floats(int64_t B, int64_t n_experts, int64_t top_k, int64_t d_ff);

/* Inside a parallel region: x[b] += Σ_{e ∈ TopK} g_e · E_e(in[b]) for b < B rows of D. */
void moe_team(const gm_moe *moe, const float *in, int64_t B, int64_t D, float *x, float *scratch);

#endif
