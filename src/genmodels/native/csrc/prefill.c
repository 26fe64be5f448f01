/* Prefill of a decoder-only model: T new tokens of each of the B rows through every layer in one native
 * call, their keys and values written into the KV cache at slots [start, start + T), and the logits of
 * each row's last token. The same model struct as the decode step (decoder.h); the products over all
 * B·T rows are packed matrix products (gemm.c), attention runs per (row, head, block of queries):
 *
 *     S = Q Kᵀ · scale (+ ALiBi slope · (j − i))      keys j of the cache, slots [lo, start + t1)
 *     P = softmax over the keys query i may see:       j ≤ i (causal), i − j < window, key_mask[b, j] = 1
 *     O = P V
 *
 * A query that sees no key (a left pad) attends uniformly over every key of the call, as PyTorch's
 * finfo.min mask makes it (its slot is padding: nothing ever reads what it writes).
 * Not computed here (the caller refuses them: native/prefill.py): sparse MoE feed-forwards,
 * cross-attention, T5's relative bias. With bf16 != 0 (a build with AVX512-BF16 only: gemm_bf16.c) the
 * block linears' products and attention's Q Kᵀ and P V (heads of whole NR-wide tiles: P unnormalised, exp(S − max))
 * round both factors to bf16 and sum in fp32; the softmax's sums, norms and the head stay fp32.
 */
#include "decoder.h"
#include "prefill.h"
#include "quant.h"

#define PF_QB 64 /* queries per attention task */

/* Floats of the scratch for B·T = rows new tokens over n_keys = start + T keys. */
GM_API int64_t gm_prefill_scratch_floats(const gm_model *m, int64_t rows, int64_t n_keys) {
    const int64_t qkv = (m->n_heads + 2 * m->n_kv) * m->dh, ff = (m->gated ? 2 : 1) * m->d_ff;
    const int64_t per_thread = (PF_QB * n_keys + 15) / 16 * 16 + gemm_pack_floats(rows);
    return rows * (2 * m->d + qkv + m->n_heads * m->dh + ff + m->d_ff) + m->n_threads * per_thread + 16;
}

/* One attention task: row b, query head h, queries t0 ≤ t < t1 of the call (slots start + t). Q rows of
 * qkv (ld QKV), K/V from the layer's cache (slots [0, start + T) filled), out rows of att (ld H·dh). */
static void attend_queries(const gm_model *m, const gm_layer *ly, const float *qkv, const int64_t *key_mask,
                           int64_t b, int64_t h, int64_t start, int64_t T, int64_t t0, int64_t t1, float *S,
                           float *att, float *mine, int bf16) {
    const int64_t H = m->n_heads, HKV = m->n_kv, DH = m->dh, L = m->max_len, QKV = (H + 2 * HKV) * DH;
    const int64_t W = m->window, hi = start + t1, lo = W > 0 && start + t0 + 1 > W ? start + t0 + 1 - W : 0;
    const int64_t nk = hi - lo, nq = t1 - t0, ldo = H * DH;
    const float *Kc = ly->k_cache + ((b * HKV + h / (H / HKV)) * L) * DH, *Vc = ly->v_cache + ((b * HKV + h / (H / HKV)) * L) * DH;
    const float *Q = qkv + (b * T + t0) * QKV + h * DH;
    const int64_t *km = key_mask ? key_mask + b * m->mask_stride : 0;
    const float scale = (float)m->attn_scale, slope = m->pos_kind == POS_ALIBI ? m->alibi[h] : 0.0f;
    float *O = att + (b * T + t0) * ldo + h * DH, inv[PF_QB];
    int uniform[PF_QB];
    const int64_t nr = gemm_nn_width();
    gemm_panels(Q, QKV, nq, DH, Kc + lo * DH, GM_F32, 0, S, nk, nk, 0, 0, (nk + nr - 1) / nr, mine, bf16, 0, 0); /* S = Q Kᵀ */
    for (int64_t i = 0; i < nq; i++) {
        const int64_t q = start + t0 + i, a = W > 0 && q + 1 > W ? q + 1 - W : 0; /* keys [a, q] */
        const int64_t a0 = a > lo ? a : lo, q1 = q < hi - 1 ? q : hi - 1; /* the visible keys: [a0, q1] of [lo, hi) */
        float *s = S + i * nk - lo, mx = -INFINITY;                        /* s[j]: key j */
        for (int64_t j = lo; j < hi; j++)
            if (j < a0 || j > q1) s[j] = -INFINITY;
        int64_t j = a0;
#ifdef __AVX512F__
        if (!km) { /* 16 keys at a time: v = s · scale + slope · (j − q), the running max in a vector */
            const __m512 vs = _mm512_set1_ps(scale), vsl = _mm512_set1_ps(slope);
            const __m512 step = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            __m512 vmx = _mm512_set1_ps(-INFINITY);
            for (; j + 16 <= q1 + 1; j += 16) {
                const __m512 d = _mm512_add_ps(_mm512_set1_ps((float)(j - q)), step);
                const __m512 v = _mm512_fmadd_ps(vsl, d, _mm512_mul_ps(_mm512_loadu_ps(s + j), vs));
                _mm512_storeu_ps(s + j, v);
                vmx = _mm512_max_ps(vmx, v);
            }
            mx = _mm512_reduce_max_ps(vmx);
        }
#endif
        for (; j <= q1; j++) {
            const float v = !km || km[j] ? s[j] * scale + slope * (float)(j - q) : -INFINITY;
            s[j] = v;
            mx = v > mx ? v : mx;
        }
        s += lo;
        uniform[i] = mx == -INFINITY;
        inv[i] = uniform[i] ? 0.0f : 1.0f / exp_row(s, nk, mx);
    }
    if (DH % nr == 0) { /* O = P V, V read in place */
        (bf16 ? gemm_nn_bf16 : gemm_nn)(S, nk, nq, nk, Vc + lo * DH, DH, O, ldo, DH, mine);
    } else if (DH % 16 == 0) { /* by 16-wide panels of V */
        for (int64_t p = 0; p < DH; p += 16) panel_rows(S, nk, nq, nk, Vc + lo * DH + p, DH, O + p, ldo, 16, 0, 0);
    } else {
        for (int64_t i = 0; i < nq; i++) {
            float *o = O + i * ldo;
            for (int64_t c = 0; c < DH; c++) o[c] = 0.0f;
            for (int64_t j = 0; j < nk; j++) {
                const float pj = S[i * nk + j];
                if (pj != 0.0f)
                    for (int64_t c = 0; c < DH; c++) o[c] += pj * Vc[(lo + j) * DH + c];
            }
        }
    }
    for (int64_t i = 0; i < nq; i++) {
        float *o = O + i * ldo;
        if (uniform[i]) { /* no visible key: the mean of every value of the call */
            for (int64_t c = 0; c < DH; c++) o[c] = 0.0f;
            for (int64_t j = 0; j < start + T; j++)
                for (int64_t c = 0; c < DH; c++) o[c] += Vc[j * DH + c];
            for (int64_t c = 0; c < DH; c++) o[c] /= (float)(start + T);
        } else {
            for (int64_t c = 0; c < DH; c++) o[c] *= inv[i];
        }
    }
}

/* Whether layer ly's gated MLP takes the fused SiLU: bf16, its fc1 packed by gm_pack_bf16_gated (the 5th pointer),
 * SiLU, no fc1 bias, whole panels of hidden units; the products and SiLU are then those of the unfused path. */
static int fused_silu(const gm_model *m, const gm_layer *ly, int bf16, const uint32_t *const *pw) {
    return bf16 && pw && pw[4] && m->gated && m->act == ACT_SILU && !ly->fc1_b && ly->fc1_t == GM_F32 &&
           m->d_ff % (PF_NR / 2) == 0;
}

/* Pre-norm x (N, d) into the input of the product that reads it (W in `type`, packed once as `pw` or NULL): that
 * product's bf16 slivers (prefill_norm_slivers; f then says so: returned) where norm_slivers — it splits rows, the
 * norm has no bias, d is even —, else xn in fp32 (norm_rows; NULL returned). Inside the team. The slivers fit in xn:
 * (N + MR · threads) rows of d/2 pairs, N ≥ MR · threads where rows split. In slivers mode each thread reads only
 * its own rows of x (prefill_thread_rows), so the row-split product before it may skip its barrier. */
static int norm_slivers(const gm_model *m, int64_t N, const float *b, int bf16, int64_t type, const uint32_t *pw) {
    return !m->post_norm && !b && m->d % 2 == 0 && prefill_rows_split(N, omp_threads(), bf16, type, pw); /* whole pairs */
}

static const gm_fuse *pre_norm(const gm_model *m, const float *x, float *xn, int64_t N, const float *w, const float *b,
                               int bf16, int64_t type, const uint32_t *pw, gm_fuse *f) {
    if (norm_slivers(m, N, b, bf16, type, pw)) {
        prefill_norm_slivers(x, N, m->d, (int)m->norm, (float)m->norm_eps, w, (uint32_t *)xn);
        *f = (gm_fuse){0, 0, (const uint32_t *)xn};
        return f;
    }
    norm_rows(x, xn, N, m->d, (int)m->norm, (float)m->norm_eps, w, b);
    return 0;
}

/* fc1's packed panels: the gated layout (5th pointer) where the SiLU is fused, else the plain one (3rd) */
static const uint32_t *fc1_packed(const gm_model *m, const gm_layer *ly, int bf16, const uint32_t *const *pw) {
    return pw ? pw[fused_silu(m, ly, bf16, pw) ? 4 : 2] : 0;
}

/* x += FFN(Norm x) of layer ly (post-norm: x = Norm(x + FFN(x))) over N rows; ff, hid: scratch (N, FF), (N, F). With a
 * fused SiLU (fused_silu) fc1's tiles write hid themselves — as fc2's bf16 slivers where both products split rows.
 * next_own: the next layer's pre-norm takes its rows' slivers (norm_slivers), so fc2 may skip its barrier. */
static void mlp(const gm_model *m, const gm_layer *ly, const uint32_t *const *pw, int bf16, float *x, float *xn,
                float *ff, float *hid, int64_t N, float *pack, int next_own) {
    const int64_t D = m->d, F = m->d_ff, FF = (m->gated ? 2 : 1) * F;
    const int post = (int)m->post_norm, fused = fused_silu(m, ly, bf16, pw);
    const uint32_t *fc1p = fc1_packed(m, ly, bf16, pw);
    gm_fuse f2;
    const gm_fuse *n2 = post ? 0 : pre_norm(m, x, xn, N, ly->norm2_w, ly->norm2_b, bf16, ly->fc1_t, fc1p, &f2);
    const int slivers = fused && pw[3] && ly->fc2_t == GM_F32 && prefill_rows_split(N, omp_threads(), bf16, GM_F32, fc1p);
    const gm_fuse to_hid = {slivers ? 0 : hid, slivers ? (uint32_t *)hid : 0, n2 ? n2->x_slivers : 0, slivers};
    /* fc2 without its barrier where the next layer's pre-norm reads only each thread's rows and this layer's xn was
     * slivers too (a thread's slivers may overlap another's fp32 rows of xn) */
    const gm_fuse from_hid = {0, 0, (const uint32_t *)hid, next_own && n2};
    if (fused) {
        prefill_gemm_team(post ? x : xn, D, N, D, ly->fc1_w, ly->fc1_t, 0, ff, FF, FF, 0, pack, bf16, fc1p, &to_hid);
    } else {
        prefill_gemm_team(post ? x : xn, D, N, D, ly->fc1_w, ly->fc1_t, ly->fc1_b, ff, FF, FF, 0, pack, bf16, fc1p, n2);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < N; r++) activate(hid + r * F, ff + r * FF, m->gated ? ff + r * FF + F : 0, F, (int)m->act);
    }
    prefill_gemm_team(hid, F, N, F, ly->fc2_w, ly->fc2_t, ly->fc2_b, x, D, D, 1, pack, bf16, pw ? pw[3] : 0,
                      slivers ? &from_hid : 0);
    if (post) norm_rows(x, x, N, D, (int)m->norm, (float)m->norm_eps, ly->norm2_w, ly->norm2_b);
}

/* Row r of qkv: its q and k heads rotated (RoPE), its k, v written into the cache at slot start + r % T. */
static void rope_row(const gm_model *m, const gm_layer *ly, float *qkv, const int64_t *positions, int64_t start,
                     int64_t T, int64_t r) {
    const int64_t H = m->n_heads, HKV = m->n_kv, DH = m->dh, L = m->max_len, QKV = (H + 2 * HKV) * DH;
    const int64_t b = r / T, slot = start + r % T;
    float *row = qkv + r * QKV;
    if (m->pos_kind == POS_ROPE)
        for (int64_t h = 0; h < H + HKV; h++) rope_head(row + h * DH, m, positions[r]);
    for (int64_t h = 0; h < HKV; h++) {
        const int64_t at = ((b * HKV + h) * L + slot) * DH;
        memcpy(ly->k_cache + at, row + (H + h) * DH, DH * sizeof(float));
        memcpy(ly->v_cache + at, row + (H + HKV + h) * DH, DH * sizeof(float));
    }
}

/* rope_row of rows [0, N), then the team's barrier; own: only this thread's rows of qkv are written yet (a row-split
 * product without its barrier, gm_fuse's no_barrier): each thread takes those (prefill_thread_rows). */
static void rope_and_cache(const gm_model *m, const gm_layer *ly, float *qkv, const int64_t *positions,
                           int64_t start, int64_t T, int own) {
    if (own) {
        int64_t r0, r1;
        prefill_thread_rows(m->batch * T, &r0, &r1);
        for (int64_t r = r0; r < r1; r++) rope_row(m, ly, qkv, positions, start, T, r);
#pragma omp barrier
        return;
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < m->batch * T; r++) rope_row(m, ly, qkv, positions, start, T, r);
}

/* x (N, D) = embed[ids] · emb_scale (+ pos_table[positions]) */
static void embed_rows(const gm_model *m, const int64_t *ids, const int64_t *positions, int64_t N, float *x) {
    const int64_t D = m->d;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N; r++) {
        const float *e = m->embed + ids[r] * D, *p = m->pos_kind == POS_TABLE ? m->pos_table + positions[r] * D : 0;
        for (int64_t i = 0; i < D; i++) x[r * D + i] = e[i] * (float)m->emb_scale + (p ? p[i] : 0.0f);
    }
}

/* The prefill (see the top): ids, positions (B, T) int64; key_mask (B, mask_stride) over the cache's
 * slots, 1 = real token (NULL: none padded); scratch: gm_prefill_scratch_floats(m, B·T, start + T)
 * floats; logits (B, V) of each row's last token; bf16: the linears, Q Kᵀ and P V in bf16; packed: NULL, or
 * PF_PACKED per layer (qkv, out, fc1, fc2: NULL or gm_pack_bf16 of that fp32 weight, read with bf16 instead of
 * converting W at every call; then fc1 gated: NULL or gm_pack_bf16_gated of a SiLU-gated MLP's fc1, whose product
 * then writes SiLU(gate) · up itself — fused_silu). Returns 0, -1 for a part it does not compute, -3 for bf16 in a build without it. */
GM_API int gm_decoder_prefill(const gm_model *m, const int64_t *ids, const int64_t *positions,
                              const int64_t *key_mask, int64_t start, int64_t T, float *scratch, float *logits,
                              int bf16, const uint32_t *const *packed) {
    const int64_t B = m->batch, N = B * T, D = m->d, H = m->n_heads, HKV = m->n_kv, DH = m->dh, F = m->d_ff;
    const int64_t QKV = (H + 2 * HKV) * DH, FF = (m->gated ? 2 : 1) * F, nb = (T + PF_QB - 1) / PF_QB;
    if (m->dist_bias || T < 1 || start + T > m->max_len) return -1;
    if (bf16 && !gemm_bf16_built()) return -3;
    for (int64_t l = 0; l < m->n_layers; l++)
        if (m->layers[l].moe.router_w || m->layers[l].cross_q_w) return -1;
    float *x = scratch, *xn = x + N * D, *qkv = xn + N * D, *att = qkv + N * QKV, *ff = att + N * H * DH;
    float *hid = ff + N * FF, *per = hid + N * F;
    per += (16 - ((uintptr_t)per / 4) % 16) % 16; /* 64-byte aligned */
    const int64_t s_floats = (PF_QB * (start + T) + 15) / 16 * 16; /* each thread's S, then the packing buffers */
    float *pack = per + m->n_threads * s_floats;
    const float eps = (float)m->norm_eps;
    const int post = (int)m->post_norm;
#pragma omp parallel num_threads(m->n_threads)
    {
        float *S = per + thread_id() * s_floats;
        embed_rows(m, ids, positions, N, x);
        for (int64_t l = 0; l < m->n_layers; l++) {
            const gm_layer *ly = &m->layers[l];
            const uint32_t *const *pw = packed ? packed + PF_PACKED * l : 0; /* qkv, out, fc1, fc2, fc1 gated */
            gm_fuse f1 = {0};
            if (!post) pre_norm(m, x, xn, N, ly->norm1_w, ly->norm1_b, bf16, ly->qkv_t, pw ? pw[0] : 0, &f1);
            f1.no_barrier = 1; /* rope_and_cache takes each thread's own rows where the product splits them */
            const int own = prefill_gemm_team(post ? x : xn, D, N, D, ly->qkv_w, ly->qkv_t, ly->qkv_b, qkv, QKV, QKV,
                                              0, pack, bf16, pw ? pw[0] : 0, &f1);
            rope_and_cache(m, ly, qkv, positions, start, T, own);
#pragma omp for schedule(dynamic, 1)
            for (int64_t task = 0; task < B * H * nb; task++) {
                /* each head's blocks of queries latest first (the most keys): the team's last tasks are small ones */
                const int64_t b = task / (H * nb), h = task / nb % H, t0 = (nb - 1 - task % nb) * PF_QB;
                attend_queries(m, ly, qkv, key_mask, b, h, start, T, t0, t0 + PF_QB < T ? t0 + PF_QB : T, S, att,
                               pack + thread_id() * gemm_pack_floats(N), bf16);
            }
            /* the out product without its barrier where the MLP's pre-norm reads only each thread's rows */
            const gm_fuse fo = {0, 0, 0, norm_slivers(m, N, ly->norm2_b, bf16, ly->fc1_t, fc1_packed(m, ly, bf16, pw))};
            prefill_gemm_team(att, H * DH, N, H * DH, ly->out_w, ly->out_t, ly->out_b, x, D, D, 1, pack, bf16,
                              pw ? pw[1] : 0, &fo);
            if (post) norm_rows(x, x, N, D, (int)m->norm, eps, ly->norm1_w, ly->norm1_b);
            const gm_layer *next = l + 1 < m->n_layers ? ly + 1 : 0;
            const uint32_t *const *npw = next && packed ? pw + PF_PACKED : 0;
            mlp(m, ly, pw, bf16, x, xn, ff, hid, N, pack,
                next && norm_slivers(m, N, next->norm1_b, bf16, next->qkv_t, npw ? npw[0] : 0));
        }
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) { /* each row's last token -> final norm (× output scale) */
            const float *xr = x + (b * T + T - 1) * D;
            if (m->final_norm) norm_row(xr, xn + b * D, D, (int)m->norm, eps, m->final_w, m->final_b);
            else memcpy(xn + b * D, xr, D * sizeof(float));
            if (m->out_scale != 1.0)
                for (int64_t i = 0; i < D; i++) xn[b * D + i] *= (float)m->out_scale;
        }
        any_linear_team(xn, B, D, m->head_w, m->head_t, m->head_b, logits, m->vocab, 0);
    }
    return 0;
}
