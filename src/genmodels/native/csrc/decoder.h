/* The decoder's structs, shared by the decode step (decoder.c) and the prefill (prefill.c). */
#ifndef GM_DECODER_H
#define GM_DECODER_H
#include "common.h"
#include "moe.h"

/* Fused decode step of a decoder: decoder-only (GPT-2 / Llama / Mistral) or the decoder of an
 * encoder–decoder (T5, the original Transformer), whose blocks add cross-attention over the memory.
 * A layer's feed-forward is dense (fc1/fc2) or a sparse mixture of experts (moe.c).
 * The field order of these structs is mirrored by ctypes in genmodels/native/decoder.py.
 */
typedef struct {
    const float *norm1_w, *norm1_b, *qkv_w, *qkv_b, *out_w, *out_b;
    const float *norm2_w, *norm2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
    float *k_cache, *v_cache; /* (B, H_kv, L_max, dh) */
    /* cross-attention (NULL cross_q_w: none): q from Norm_x(x), k/v of the memory (B, H_kv, S, dh) */
    const float *normx_w, *normx_b, *cross_q_w, *cross_q_b, *cross_out_w, *cross_out_b, *mem_k, *mem_v;
    gm_moe moe; /* a sparse MoE feed-forward (moe.c) in place of fc1/fc2 when moe.router_w ≠ NULL */
    int64_t qkv_t, out_t, fc1_t, fc2_t; /* weight formats (quant.h: 0 fp32, else GGUF blocks read as such) */
} gm_layer;

enum { POS_NONE = 0, POS_TABLE = 1, POS_ROPE = 2, POS_ALIBI = 3 };

typedef struct {
    int64_t n_layers, batch, d, n_heads, n_kv, dh, d_ff, vocab, max_len;
    int64_t norm, final_norm, gated, act, pos_kind, rot_dim, rope_len, window, mask_stride, n_threads, mem_len;
    int64_t post_norm; /* 0: x += f(Norm x) (GPT-2, Llama, T5); 1: x = Norm(x + f(x)) (the original Transformer) */
    double norm_eps, attn_scale, emb_scale, out_scale;
    const float *embed, *pos_table, *rope_cos, *rope_sin, *inv_freq, *alibi, *final_w, *final_b, *head_w, *head_b;
    const float *dist_bias;  /* (H, L_max): self-attention score bias by distance query − key (T5), or NULL */
    const int64_t *mem_mask; /* (B, mem_len), 1 = real memory token, or NULL */
    gm_layer *layers;
    float *scratch; /* gm_scratch_floats() floats */
    int64_t head_t; /* the head weight's format (quant.h) */
} gm_model;

/* HF half-split RoPE of one head vector at position pos (decoder.c) */
void rope_head(float *v, const gm_model *m, int64_t pos);

#endif
