/* Encoder forward (BERT / MiniLM layouts) over packed rows: the real tokens of a batch, each
 * attending to the keys of its own sequence only, so padding costs nothing. Matrices are
 * multiplied by the packed-panel GEMM (linear.c), attention per (sequence, head) by attend_block. */
#include "common.h"

/* Field order mirrored by ctypes in genmodels/native/encoder.py. Matrices are packed (genmodels.native.encoder.packed). */
typedef struct {
    const float *norm1_w, *norm1_b, *qkv_wp, *qkv_b, *out_wp, *out_b;
    const float *norm2_w, *norm2_b, *fc1_wp, *fc1_b, *fc2_wp, *fc2_b;
} gm_enc_layer;

typedef struct {
    int64_t n_layers, d, n_heads, n_kv, dh, d_ff, norm, gated, act, post_norm, n_threads;
    double norm_eps, attn_scale, emb_scale;
    const float *embed, *type_table, *pos_table, *emb_norm_w, *emb_norm_b, *final_w, *final_b;
    gm_enc_layer *layers;
} gm_encoder;

GM_API int64_t gm_encoder_scratch_floats(const gm_encoder *m, int64_t n_tokens, int64_t max_keys) {
    const int64_t qkv = (m->n_heads + 2 * m->n_kv) * m->dh, ff = (m->gated ? 2 : 1) * m->d_ff;
    return n_tokens * (qkv + m->n_heads * m->dh + 2 * m->d + ff + m->d_ff) + m->n_threads * max_keys * max_keys;
}

/* Hidden states out (N, D) of N packed tokens: ids, token types (or NULL: type 0), positions, and
 * for each token the key range [key_lo, key_hi) of its sequence; the n_seqs sequences themselves
 * start at seq_lo and hold seq_len tokens (at most max_keys). */
GM_API int gm_encoder_forward(const gm_encoder *m, const int64_t *ids, const int64_t *types, const int64_t *positions,
                       const int64_t *key_lo, const int64_t *key_hi, const int64_t *seq_lo, const int64_t *seq_len,
                       int64_t n_seqs, int64_t N, int64_t max_keys, float *scratch, float *out) {
    const int64_t D = m->d, H = m->n_heads, HKV = m->n_kv, DH = m->dh, F = m->d_ff;
    const int64_t QKV = (H + 2 * HKV) * DH, FF = (m->gated ? 2 : 1) * F, group = H / HKV;
    const float eps = (float)m->norm_eps, scale = (float)m->attn_scale;
    float *x = out, *qkv = scratch, *att = qkv + N * QKV, *tmp = att + N * H * DH, *xn = tmp + N * D;
    float *ff = xn + N * D, *hid = ff + N * FF, *scores_all = hid + N * F;
#pragma omp parallel num_threads(m->n_threads)
    {
        float *scores = scores_all + thread_id() * max_keys * max_keys;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < N; t++) {
            const float *e = m->embed + ids[t] * D;
            const float *ty = m->type_table ? m->type_table + (types ? types[t] : 0) * D : 0;
            const float *p = m->pos_table ? m->pos_table + positions[t] * D : 0;
            float *xt = x + t * D;
            for (int64_t i = 0; i < D; i++) {
                float v = e[i] * (float)m->emb_scale;
                if (ty) v += ty[i];
                if (p) v += p[i];
                xt[i] = v;
            }
            if (m->emb_norm_w) norm_row(xt, xt, D, (int)m->norm, eps, m->emb_norm_w, m->emb_norm_b);
        }
        for (int64_t l = 0; l < m->n_layers; l++) {
            const gm_enc_layer *ly = &m->layers[l];
            const float *a_in = x;
            if (!m->post_norm) {
#pragma omp for schedule(static)
                for (int64_t t = 0; t < N; t++) norm_row(x + t * D, xn + t * D, D, (int)m->norm, eps, ly->norm1_w, ly->norm1_b);
                a_in = xn;
            }
            gemm_team(a_in, N, D, ly->qkv_wp, ly->qkv_b, qkv, QKV, 0);
            if (DH % 16 == 0) { /* per (sequence, head): small matrix products */
#pragma omp for schedule(dynamic, 1)
                for (int64_t sh = 0; sh < n_seqs * H; sh++) {
                    const int64_t s = sh / H, h = sh % H, lo = seq_lo[s], kvo = (h / group) * DH;
                    attend_block(qkv + lo * QKV + h * DH, qkv + lo * QKV + H * DH + kvo,
                                 qkv + lo * QKV + (H + HKV) * DH + kvo, QKV, seq_len[s], DH, scale, scores,
                                 att + lo * H * DH + h * DH, H * DH);
                }
            } else { /* per (token, head) */
#pragma omp for schedule(static)
                for (int64_t th = 0; th < N * H; th++) {
                    const int64_t t = th / H, h = th % H, lo = key_lo[t], kvo = (h / group) * DH;
                    attend(qkv + t * QKV + h * DH, qkv + lo * QKV + H * DH + kvo, qkv + lo * QKV + (H + HKV) * DH + kvo,
                           QKV, key_hi[t] - lo, DH, scale, 0, 0, 0.0f, 0, scores, att + (t * H + h) * DH);
                }
            }
            if (m->post_norm) { /* x = Norm1(x + Attn(x)) */
                gemm_team(att, N, H * DH, ly->out_wp, ly->out_b, tmp, D, 0);
#pragma omp for schedule(static)
                for (int64_t t = 0; t < N; t++) {
                    for (int64_t i = 0; i < D; i++) tmp[t * D + i] += x[t * D + i];
                    norm_row(tmp + t * D, x + t * D, D, (int)m->norm, eps, ly->norm1_w, ly->norm1_b);
                }
            } else { /* x += Attn(Norm1 x); FFN input Norm2(x) */
                gemm_team(att, N, H * DH, ly->out_wp, ly->out_b, x, D, 1);
#pragma omp for schedule(static)
                for (int64_t t = 0; t < N; t++) norm_row(x + t * D, xn + t * D, D, (int)m->norm, eps, ly->norm2_w, ly->norm2_b);
            }
            gemm_team(m->post_norm ? x : xn, N, D, ly->fc1_wp, ly->fc1_b, ff, FF, 0);
#pragma omp for schedule(static)
            for (int64_t t = 0; t < N; t++) activate(hid + t * F, ff + t * FF, m->gated ? ff + t * FF + F : 0, F, (int)m->act);
            if (m->post_norm) { /* x = Norm2(x + FFN(x)) */
                gemm_team(hid, N, F, ly->fc2_wp, ly->fc2_b, tmp, D, 0);
#pragma omp for schedule(static)
                for (int64_t t = 0; t < N; t++) {
                    for (int64_t i = 0; i < D; i++) tmp[t * D + i] += x[t * D + i];
                    norm_row(tmp + t * D, x + t * D, D, (int)m->norm, eps, ly->norm2_w, ly->norm2_b);
                }
            } else {
                gemm_team(hid, N, F, ly->fc2_wp, ly->fc2_b, x, D, 1);
            }
        }
        if (m->final_w) {
#pragma omp for schedule(static)
            for (int64_t t = 0; t < N; t++) norm_row(x + t * D, x + t * D, D, (int)m->norm, eps, m->final_w, m->final_b);
        }
    }
    return 0;
}
