#include "decoder.h"
#include "quant.h"

/* Fused decode step of a decoder: decoder-only (GPT-2 / Llama / Mistral) or the decoder of an
 * encoder–decoder (T5, the original Transformer); the structs are in decoder.h. */

/* The dense part of the scratch (floats); the MoE layers' part follows it, at an even offset. */
static int64_t dense_scratch_floats(const gm_model *m) {
    int64_t B = m->batch, qkv = (m->n_heads + 2 * m->n_kv) * m->dh, ff = (m->gated ? 2 : 1) * m->d_ff;
    int64_t keys = m->max_len > m->mem_len ? m->max_len : m->mem_len;
    int64_t n = B * (2 * m->d + qkv + 2 * m->n_heads * m->dh + ff + m->d_ff) + m->n_threads * keys;
    return n + (n & 1); /* the MoE part starts with int64 picks */
}

GM_API int64_t gm_scratch_floats(const gm_model *m) {
    int64_t moe = 0;
    for (int64_t l = 0; l < m->n_layers; l++) {
        const gm_moe *e = &m->layers[l].moe;
        int64_t n = e->router_w ? moe_scratch_floats(m->batch, e->n_experts, e->top_k, e->d_ff) : 0;
        moe = n > moe ? n : moe;
    }
    return dense_scratch_floats(m) + moe;
}

/* HF half-split RoPE on the first rot_dim channels of one head vector: channel i pairs with
 * i + rot_dim/2; v ← v·cos + rotate_half(v)·sin. */
void rope_head(float *v, const gm_model *m, int64_t pos) {
    const int64_t half = m->rot_dim / 2;
    float cbuf[512], sbuf[512];
    const float *c, *s;
    if (pos < m->rope_len) {
        c = m->rope_cos + pos * m->rot_dim;
        s = m->rope_sin + pos * m->rot_dim;
    } else { /* beyond the table: the same fp32 angle pos · inv_freq */
        for (int64_t i = 0; i < half; i++) {
            float a = (float)pos * m->inv_freq[i];
            cbuf[i] = cbuf[i + half] = cosf(a);
            sbuf[i] = sbuf[i + half] = sinf(a);
        }
        c = cbuf, s = sbuf;
    }
    for (int64_t i = 0; i < half; i++) {
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c[i] - x2 * s[i];
        v[i + half] = x2 * c[i + half] + x1 * s[i + half];
    }
}

/* One decode step: token ids (B,), position ids (B,) and cache position `start` -> logits (B, V).
 * Writes this step's keys/values into the caches at `start`. key_mask (B, mask_stride) int64,
 * 1 = real token, may be NULL. Returns 0. */
GM_API int gm_decoder_step(const gm_model *m, const int64_t *ids, const int64_t *positions, const int64_t *key_mask,
                    int64_t start, float *logits) {
    const int64_t B = m->batch, D = m->d, H = m->n_heads, HKV = m->n_kv, DH = m->dh, F = m->d_ff;
    const int64_t QKV = (H + 2 * HKV) * DH, FF = (m->gated ? 2 : 1) * F, L = m->max_len;
    float *x = m->scratch, *xn = x + B * D, *qkv = xn + B * D, *att = qkv + B * QKV, *ff = att + B * H * DH;
    float *hid = ff + B * FF, *q2 = hid + B * F, *scores_all = q2 + B * H * DH;
    float *moe_scratch = m->scratch + dense_scratch_floats(m);
    const int64_t n_scores = L > m->mem_len ? L : m->mem_len;
    const float eps = (float)m->norm_eps, scale = (float)m->attn_scale;
    const int64_t n_keys = start + 1, group = H / HKV;

#pragma omp parallel num_threads(m->n_threads)
    {
        float *scores = scores_all + thread_id() * n_scores;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            const float *e = m->embed + ids[b] * D;
            for (int64_t i = 0; i < D; i++) x[b * D + i] = e[i] * (float)m->emb_scale;
            if (m->pos_kind == POS_TABLE) {
                const float *p = m->pos_table + positions[b] * D;
                for (int64_t i = 0; i < D; i++) x[b * D + i] += p[i];
            }
        }
        const int post = (int)m->post_norm;
/* a sub-layer's input: Norm(x) (pre-norm) or x (post-norm) */
#define GM_SUBLAYER_IN(w, bias)                                                                          \
    (post ? x : (norm_rows(x, xn, B, D, (int)m->norm, eps, w, bias), xn))
/* after x += f(·): post-norm normalises x in place */
#define GM_SUBLAYER_OUT(w, bias)                                                                         \
    do {                                                                                                 \
        if (post) norm_rows(x, x, B, D, (int)m->norm, eps, w, bias);                                     \
    } while (0)
        for (int64_t l = 0; l < m->n_layers; l++) {
            const gm_layer *ly = &m->layers[l];
            any_linear_team(GM_SUBLAYER_IN(ly->norm1_w, ly->norm1_b), B, D, ly->qkv_w, ly->qkv_t, ly->qkv_b, qkv, QKV, 0);
            /* rotate q and k heads, append k and v to the cache */
#pragma omp for schedule(static)
            for (int64_t b = 0; b < B; b++) {
                float *row = qkv + b * QKV;
                if (m->pos_kind == POS_ROPE)
                    for (int64_t h = 0; h < H + HKV; h++) rope_head(row + h * DH, m, positions[b]);
                for (int64_t h = 0; h < HKV; h++) {
                    int64_t at = ((b * HKV + h) * L + start) * DH;
                    memcpy(ly->k_cache + at, row + (H + h) * DH, DH * sizeof(float));
                    memcpy(ly->v_cache + at, row + (H + HKV + h) * DH, DH * sizeof(float));
                }
            }
#pragma omp for schedule(static)
            for (int64_t bh = 0; bh < B * H; bh++) {
                int64_t b = bh / H, h = bh % H, kv = ((b * HKV + h / group) * L) * DH;
                int64_t lo = m->window > 0 && n_keys > m->window ? n_keys - m->window : 0;
                float slope = m->pos_kind == POS_ALIBI ? m->alibi[h] : 0.0f;
                attend(qkv + b * QKV + h * DH, ly->k_cache + kv, ly->v_cache + kv, DH, n_keys, DH, scale,
                       key_mask ? key_mask + b * m->mask_stride : 0, lo, slope, m->dist_bias ? m->dist_bias + h * L : 0,
                       scores, att + (b * H + h) * DH);
            }
            any_linear_team(att, B, H * DH, ly->out_w, ly->out_t, ly->out_b, x, D, 1); /* x += out(att) */
            GM_SUBLAYER_OUT(ly->norm1_w, ly->norm1_b);
            if (ly->cross_q_w) { /* x += Cross(Norm_x(x), memory) */
                const int64_t S = m->mem_len;
                linear_team(GM_SUBLAYER_IN(ly->normx_w, ly->normx_b), B, D, ly->cross_q_w, ly->cross_q_b, q2, H * DH, 0);
#pragma omp for schedule(static)
                for (int64_t bh = 0; bh < B * H; bh++) {
                    int64_t b = bh / H, h = bh % H, kv = ((b * HKV + h / group) * S) * DH;
                    attend(q2 + (b * H + h) * DH, ly->mem_k + kv, ly->mem_v + kv, DH, S, DH, scale,
                           m->mem_mask ? m->mem_mask + b * S : 0, 0, 0.0f, 0, scores, att + (b * H + h) * DH);
                }
                linear_team(att, B, H * DH, ly->cross_out_w, ly->cross_out_b, x, D, 1);
                GM_SUBLAYER_OUT(ly->normx_w, ly->normx_b);
            }
            const float *ffn_in = GM_SUBLAYER_IN(ly->norm2_w, ly->norm2_b);
            if (ly->moe.router_w) {
                moe_team(&ly->moe, ffn_in, B, D, x, moe_scratch); /* x += MoE(ffn_in) */
            } else {
                any_linear_team(ffn_in, B, D, ly->fc1_w, ly->fc1_t, ly->fc1_b, ff, FF, 0);
#pragma omp for schedule(static)
                for (int64_t b = 0; b < B; b++) {
                    const float *g = ff + b * FF;
                    activate(hid + b * F, g, m->gated ? g + F : 0, F, (int)m->act);
                }
                any_linear_team(hid, B, F, ly->fc2_w, ly->fc2_t, ly->fc2_b, x, D, 1); /* x += fc2(act) */
            }
            GM_SUBLAYER_OUT(ly->norm2_w, ly->norm2_b);
        }
#undef GM_SUBLAYER_IN
#undef GM_SUBLAYER_OUT
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            if (m->final_norm) norm_row(x + b * D, xn + b * D, D, (int)m->norm, eps, m->final_w, m->final_b);
            else memcpy(xn + b * D, x + b * D, D * sizeof(float));
            if (m->out_scale != 1.0)
                for (int64_t i = 0; i < D; i++) xn[b * D + i] *= (float)m->out_scale;
        }
        any_linear_team(xn, B, D, m->head_w, m->head_t, m->head_b, logits, m->vocab, 0);
    }
    return 0;
}
