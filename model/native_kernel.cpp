// The whole TNN decode step as one C++ function (AVX2 + FMA, float32, one thread): tnn.model.native_kernel.
//
// Per step: embedding rows, then per layer SimpleRMSNorm -> [u v] = silu(h [Wu; Wv]^T + b) -> the SSM update in place
// (tnn.model.ssm.step.ssm_step) gated by u -> x += out_proj; SimpleRMSNorm -> x += l3(silu(l1 h) * l2 h); then the
// final LayerNorm and the tied output projection. Pre-norm, SiLU GTU and GLU, no GTU norm: the Python side refuses
// other configs before it calls this.
//
// Weights come packed (tnn.model.native_kernel.pack_panels): a (N, K) weight as ceil(N/16) panels of K x 16 floats,
// row k of a panel holding the 16 outputs' weights for input k (zero past N). The micro-kernel keeps R rows x NP
// panels of outputs in registers, broadcasts one input and streams each panel once: for a small batch every weight
// is read once per step; for a large one a panel stays in L1/L2 while the batch's rows go past it.
//
// The C ABI (ctypes): tnn_step(dims, scalars, weights, batch, tokens, states, logits) -> 0, or 1 for a token id out of
// range (nothing written). dims: d, D, G, V, layers, final_norm, per layer (modes N, FIR length h), then the threads
// a projection may use and the weight bytes from which it does (Parallel). scalars:
// embedding scale, SimpleRMSNorm eps, LayerNorm eps. weights: embedding (V, d), output panels, LayerNorm weight and
// bias, then per layer WEIGHTS_PER_LAYER pointers (see the enum). states: per layer (batch, 2N + h, D), contiguous.
// tnn_prefill(dims, scalars, weights, batch, length, tokens, states, logits, pass_tokens): a prompt per sequence
// through the same layers, its SSM stepped token by token (exactly what `length` tnn_step calls compute), the
// dense projections as GEMMs over a pass of up to pass_tokens token rows; logits of the last position only.
// tnn_decode_run(...): up to max_steps tnn_step calls, each followed by the sampler (tnn_sample of model/sampler.c,
// passed as a function pointer) whose tokens feed the next step, with no Python in between (see its comment).

#include <immintrin.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int PANEL = 16;  // outputs per packed panel: two AVX2 registers

enum LayerWeight {
    UV_PANELS, UV_BIAS, OUT_PANELS, OUT_BIAS, GLU12_PANELS, GLU12_BIAS, GLU3_PANELS, GLU3_BIAS,
    POLE_REAL, POLE_IMAG, WEIGHT_REAL, WEIGHT_IMAG, FIR, WEIGHTS_PER_LAYER
};
constexpr int GLOBAL_WEIGHTS = 4;  // embedding, output panels, LayerNorm weight, LayerNorm bias

// exp(x) for 8 floats: Cephes' polynomial after reducing by ln 2 (about 2 ulp), clamped to the finite range.
inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
    x = _mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f));
    __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(0x7f)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(scale));
}

inline __m256 silu8(__m256 x) {
    __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(x, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

inline float silu1(float x) { return x / (1.0f + std::exp(-x)); }

// x (n,) <- silu(x)
void silu_inplace(float* x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, silu8(_mm256_loadu_ps(x + i)));
    for (; i < n; ++i) x[i] = silu1(x[i]);
}

// out (n,) = silu(a) * b
void silu_mul(const float* a, const float* b, float* out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(out + i, _mm256_mul_ps(silu8(_mm256_loadu_ps(a + i)), _mm256_loadu_ps(b + i)));
    }
    for (; i < n; ++i) out[i] = silu1(a[i]) * b[i];
}

// SimpleRMSNorm of one row: out = x / (||x|| n^-1/2 + eps)
void simple_rms_norm(const float* x, float* out, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += double(x[i]) * x[i];
    float inv = 1.0f / (float(std::sqrt(sum) / std::sqrt(double(n))) + eps);
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv;
}

// LayerNorm of one row (biased variance, as torch)
void layer_norm(const float* x, float* out, int64_t n, const float* weight, const float* bias, float eps) {
    double mean = 0.0;
    for (int64_t i = 0; i < n; ++i) mean += x[i];
    mean /= double(n);
    double var = 0.0;
    for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
    float inv = float(1.0 / std::sqrt(var / double(n) + eps));
    float m = float(mean);
    for (int64_t i = 0; i < n; ++i) out[i] = (x[i] - m) * inv * weight[i] + bias[i];
}

// R rows x NP panels of out = x W^T (+ bias) (+ out if accumulate). x rows are ldx apart; panels K*PANEL apart.
// `valid` output columns of this block are written (fewer than NP*PANEL only for the last, partial panel).
template <int R, int NP>
inline void micro_kernel(const float* x, int64_t ldx, int64_t K, const float* panels, const float* bias, float* out,
                         int64_t ldo, int64_t valid, bool accumulate) {
    __m256 acc[R][2 * NP];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int j = 0; j < 2 * NP; ++j) acc[r][j] = _mm256_setzero_ps();
    const int64_t stride = K * PANEL;
    for (int64_t k = 0; k < K; ++k) {
        __m256 w[2 * NP];
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p) {
            w[2 * p] = _mm256_loadu_ps(panels + p * stride + k * PANEL);
            w[2 * p + 1] = _mm256_loadu_ps(panels + p * stride + k * PANEL + 8);
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            __m256 xr = _mm256_broadcast_ss(x + r * ldx + k);
#pragma GCC unroll 8
            for (int j = 0; j < 2 * NP; ++j) acc[r][j] = _mm256_fmadd_ps(xr, w[j], acc[r][j]);
        }
    }
    alignas(32) float result[R][2 * NP * 8];  // the accumulators leave the registers once, after the K loop
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int j = 0; j < 2 * NP; ++j) _mm256_store_ps(result[r] + 8 * j, acc[r][j]);
    for (int r = 0; r < R; ++r) {
        float* row = out + r * ldo;
        if (valid == NP * PANEL) {
            for (int j = 0; j < 2 * NP; ++j) {
                __m256 v = _mm256_load_ps(result[r] + 8 * j);
                if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + 8 * j));
                if (accumulate) v = _mm256_add_ps(v, _mm256_loadu_ps(row + 8 * j));
                _mm256_storeu_ps(row + 8 * j, v);
            }
            continue;
        }
        for (int64_t c = 0; c < valid; ++c) {
            float v = result[r][c] + (bias ? bias[c] : 0.0f);
            row[c] = accumulate ? row[c] + v : v;
        }
    }
}

// R rows (R <= 6) against every panel, NP panels at a time where R is small (independent accumulators hide the
// FMA latency when there are few rows).
template <int R>
void rows_by_panels(const float* x, int64_t ldx, int64_t K, const float* panels, int64_t N, const float* bias,
                    float* out, int64_t ldo, bool accumulate, int64_t first_panel, int64_t last_panel) {
    constexpr int NP = R == 1 ? 4 : R <= 3 ? 2 : 1;
    const int64_t stride = K * PANEL;
    int64_t p = first_panel;
    for (; p + NP <= last_panel && (p + NP) * PANEL <= N; p += NP) {
        micro_kernel<R, NP>(x, ldx, K, panels + p * stride, bias ? bias + p * PANEL : nullptr, out + p * PANEL, ldo,
                            NP * PANEL, accumulate);
    }
    for (; p < last_panel; ++p) {
        int64_t valid = N - p * PANEL < PANEL ? N - p * PANEL : PANEL;
        micro_kernel<R, 1>(x, ldx, K, panels + p * stride, bias ? bias + p * PANEL : nullptr, out + p * PANEL, ldo,
                           valid, accumulate);
    }
}

void rows_dispatch(int rows, const float* x, int64_t ldx, int64_t K, const float* panels, int64_t N,
                   const float* bias, float* out, int64_t ldo, bool accumulate, int64_t p0, int64_t p1) {
    switch (rows) {
        case 1: rows_by_panels<1>(x, ldx, K, panels, N, bias, out, ldo, accumulate, p0, p1); break;
        case 2: rows_by_panels<2>(x, ldx, K, panels, N, bias, out, ldo, accumulate, p0, p1); break;
        case 3: rows_by_panels<3>(x, ldx, K, panels, N, bias, out, ldo, accumulate, p0, p1); break;
        case 4: rows_by_panels<4>(x, ldx, K, panels, N, bias, out, ldo, accumulate, p0, p1); break;
        case 5: rows_by_panels<5>(x, ldx, K, panels, N, bias, out, ldo, accumulate, p0, p1); break;
        default: rows_by_panels<6>(x, ldx, K, panels, N, bias, out, ldo, accumulate, p0, p1); break;
    }
}

constexpr int MAX_ROWS = 6;
constexpr int64_t PANEL_GROUP = 4;  // panels per group when the batch has several row blocks

// Output panels [p0, p1) of out (B, N) = x (B, K) W^T + bias (bias may be null), or out += that when accumulate.
void linear_panels(const float* x, int64_t B, int64_t K, const float* panels, int64_t N, const float* bias, float* out,
                   bool accumulate, int64_t p0, int64_t p1) {
    if (B <= MAX_ROWS) {
        rows_dispatch(int(B), x, K, K, panels, N, bias, out, N, accumulate, p0, p1);
        return;
    }
    // A few panels stay in cache while every block of rows goes past them.
    for (int64_t g0 = p0; g0 < p1; g0 += PANEL_GROUP) {
        int64_t g1 = g0 + PANEL_GROUP < p1 ? g0 + PANEL_GROUP : p1;
        for (int64_t r = 0; r < B; r += MAX_ROWS) {
            int rows = B - r < MAX_ROWS ? int(B - r) : MAX_ROWS;
            rows_dispatch(rows, x + r * K, K, K, panels, N, bias, out + r * N, N, accumulate, g0, g1);
        }
    }
}

// Threads for a projection whose weights are large enough that one core's memory bandwidth bounds it (the paper
// width's 96 MB output projection): its output panels split between `workers` threads. Each output is computed
// by one thread in the same order, so the result does not depend on the split.
struct Parallel {
    int64_t workers;    // threads a large projection may use (1: never split)
    int64_t min_bytes;  // weight bytes from which a projection is split
};

// out (B, N) = x (B, K) W^T + bias (bias may be null), or out += that when accumulate.
void linear(const float* x, int64_t B, int64_t K, const float* panels, int64_t N, const float* bias, float* out,
            bool accumulate, const Parallel& parallel) {
    const int64_t n_panels = (N + PANEL - 1) / PANEL;
    const int64_t workers = parallel.workers < n_panels ? parallel.workers : n_panels;
    if (workers <= 1 || n_panels * PANEL * K * int64_t(sizeof(float)) < parallel.min_bytes) {
        linear_panels(x, B, K, panels, N, bias, out, accumulate, 0, n_panels);
        return;
    }
    std::vector<std::thread> helpers;
    helpers.reserve(size_t(workers - 1));
    for (int64_t w = 1; w < workers; ++w) {
        helpers.emplace_back(linear_panels, x, B, K, panels, N, bias, out, accumulate, n_panels * w / workers,
                             n_panels * (w + 1) / workers);
    }
    linear_panels(x, B, K, panels, N, bias, out, accumulate, 0, n_panels / workers);
    for (auto& helper : helpers) helper.join();
}

// One row's SSM update in place (tnn.model.ssm.step.ssm_step) and its gated output: y = u * o.
// state: (2N + h, D) = real planes, imaginary planes, FIR history (most recent first); v, u, y: (D,)
void ssm_row(float* state, const float* v, const float* u, float* y, int64_t D, int64_t N, int64_t h,
             const float* pr, const float* pi, const float* wr, const float* wi, const float* fir) {
    float* real = state;
    float* imag = state + N * D;
    float* history = state + 2 * N * D;
    const float* input = h ? history + (h - 1) * D : v;  // what enters the modes: v_{t-h}, or v_t without a head
    for (int64_t c = 0; c < D; ++c) y[c] = 0.0f;
    for (int64_t j = 0; j < N; ++j) {
        float* re = real + j * D;
        float* im = imag + j * D;
        const float *a = pr + j * D, *b = pi + j * D, *wre = wr + j * D, *wim = wi + j * D;
#pragma GCC ivdep
        for (int64_t c = 0; c < D; ++c) {
            float r = re[c], i = im[c], x = input[c];
            float new_real = a[c] * r - b[c] * i + wre[c] * x;
            im[c] = b[c] * r + a[c] * i + wim[c] * x;
            re[c] = new_real;
            y[c] += new_real;
        }
    }
    if (h) {
        for (int64_t c = 0; c < D; ++c) y[c] += fir[c] * v[c];
        for (int64_t i = 1; i < h; ++i) {
            const float* tap = fir + i * D;
            const float* past = history + (i - 1) * D;
            for (int64_t c = 0; c < D; ++c) y[c] += tap[c] * past[c];
        }
        std::memmove(history + D, history, size_t((h - 1) * D) * sizeof(float));
        std::memcpy(history, v, size_t(D) * sizeof(float));
    }
    for (int64_t c = 0; c < D; ++c) y[c] *= u[c];
}

// The rows of x (R, d) through every layer, in place. Row r's SSM state is states[l] + (r / rows_per_state) slots:
// rows sharing a state are consecutive and in time order (a decode step: one row per state; a prefill: one
// sequence's tokens). work: R * WORK_FLOATS_PER_ROW floats.
void layers_forward(const int64_t* dims, float rms_eps, const float* const* weights, int64_t R, int64_t rows_per_state,
                    float* x, float* const* states, float* work, const Parallel& parallel) {
    const int64_t d = dims[0], D = dims[1], G = dims[2], n_layers = dims[4];
    float* hn = work;           // (R, d) the normalised residual
    float* uv = hn + R * d;     // (R, 2D) silu(u) | silu(v)
    float* y = uv + R * 2 * D;  // (R, D) gated SSM output
    float* g = y + R * D;       // (R, 2G) l1 h | l2 h
    float* gp = g + R * 2 * G;  // (R, G) silu(l1 h) * l2 h
    for (int64_t l = 0; l < n_layers; ++l) {
        const float* const* w = weights + GLOBAL_WEIGHTS + l * WEIGHTS_PER_LAYER;
        const int64_t N = dims[6 + 2 * l], h = dims[7 + 2 * l];
        const int64_t state_size = (2 * N + h) * D;
        for (int64_t r = 0; r < R; ++r) simple_rms_norm(x + r * d, hn + r * d, d, rms_eps);
        linear(hn, R, d, w[UV_PANELS], 2 * D, w[UV_BIAS], uv, false, parallel);
        silu_inplace(uv, R * 2 * D);
        for (int64_t r = 0; r < R; ++r) {
            ssm_row(states[l] + (r / rows_per_state) * state_size, uv + r * 2 * D + D, uv + r * 2 * D, y + r * D, D, N,
                    h, w[POLE_REAL], w[POLE_IMAG], w[WEIGHT_REAL], w[WEIGHT_IMAG], w[FIR]);
        }
        linear(y, R, D, w[OUT_PANELS], d, w[OUT_BIAS], x, true, parallel);
        for (int64_t r = 0; r < R; ++r) simple_rms_norm(x + r * d, hn + r * d, d, rms_eps);
        linear(hn, R, d, w[GLU12_PANELS], 2 * G, w[GLU12_BIAS], g, false, parallel);
        for (int64_t r = 0; r < R; ++r) silu_mul(g + r * 2 * G, g + r * 2 * G + G, gp + r * G, G);
        linear(gp, R, G, w[GLU3_PANELS], d, w[GLU3_BIAS], x, true, parallel);
    }
}

// dims past the layers' (N, h) pairs: the threads a large projection may use and the weight bytes from which it does
Parallel parallel_of(const int64_t* dims) {
    const int64_t n_layers = dims[4];
    return Parallel{dims[6 + 2 * n_layers], dims[7 + 2 * n_layers]};
}

int64_t work_floats_per_row(const int64_t* dims) {
    const int64_t d = dims[0], D = dims[1], G = dims[2];
    return d + 2 * D + D + 2 * G + G;
}

// x (R, d) embedding rows of `tokens` times the embedding scale
void embed_rows(const float* embedding, int64_t d, float scale, int64_t R, const int64_t* tokens, float* x) {
    for (int64_t r = 0; r < R; ++r) {
        const float* row = embedding + tokens[r] * d;
        for (int64_t i = 0; i < d; ++i) x[r * d + i] = row[i] * scale;
    }
}

// logits (B, V) of the residual rows x_rows[b] (each d floats): final LayerNorm (if any), tied output projection.
void output_logits(const int64_t* dims, float ln_eps, const float* const* weights, int64_t B, const float* const* x_rows,
                   float* normed, float* logits, const Parallel& parallel) {
    const int64_t d = dims[0], V = dims[3];
    const bool final_norm = dims[5] != 0;
    for (int64_t b = 0; b < B; ++b) {
        if (final_norm) {
            layer_norm(x_rows[b], normed + b * d, d, weights[2], weights[3], ln_eps);
        } else {
            std::memcpy(normed + b * d, x_rows[b], size_t(d) * sizeof(float));
        }
    }
    linear(normed, B, d, weights[1], V, nullptr, logits, false, parallel);
}

bool tokens_in_range(const int64_t* tokens, int64_t n, int64_t V) {
    for (int64_t i = 0; i < n; ++i)
        if (tokens[i] < 0 || tokens[i] >= V) return false;
    return true;
}

}  // namespace

extern "C" int tnn_step(const int64_t* dims, const float* scalars, const float* const* weights, int64_t B,
                        const int64_t* tokens, float* const* states, float* logits) {
    const int64_t d = dims[0];
    if (!tokens_in_range(tokens, B, dims[3])) return 1;
    thread_local std::vector<float> work;
    const int64_t per_row = d + work_floats_per_row(dims);
    if (int64_t(work.size()) < B * per_row) work.resize(size_t(B * per_row));
    float* x = work.data();  // (B, d) the residual stream; the rest is layers_forward's scratch
    embed_rows(weights[0], d, scalars[0], B, tokens, x);
    const Parallel parallel = parallel_of(dims);
    layers_forward(dims, scalars[1], weights, B, 1, x, states, x + B * d, parallel);
    thread_local std::vector<const float*> rows;
    rows.resize(size_t(B));
    for (int64_t b = 0; b < B; ++b) rows[size_t(b)] = x + b * d;
    output_logits(dims, scalars[2], weights, B, rows.data(), x + B * d, logits, parallel);
    return 0;
}

// A prompt of L tokens for each of B sequences (tokens (B, L), row-major), continuing from `states` (updated in
// place, as L decode steps would): logits (B, V) of each sequence's last position. The tokens go through in passes
// of `pass_tokens` token rows (B x C tokens, C = max(1, pass_tokens / B)), so a pass's activations stay in cache
// while each weight panel streams past all of its rows; within a pass each sequence's SSM walks its C tokens in
// order. -> 0, or 1 for a token id out of range (nothing written).
extern "C" int tnn_prefill(const int64_t* dims, const float* scalars, const float* const* weights, int64_t B, int64_t L,
                           const int64_t* tokens, float* const* states, float* logits, int64_t pass_tokens) {
    const int64_t d = dims[0];
    if (!tokens_in_range(tokens, B * L, dims[3])) return 1;
    const int64_t C = pass_tokens / B > 1 ? (pass_tokens / B < L ? pass_tokens / B : L) : 1;  // tokens per sequence
    const int64_t R = B * C;
    thread_local std::vector<float> work;
    const int64_t per_row = d + work_floats_per_row(dims);
    if (int64_t(work.size()) < R * per_row) work.resize(size_t(R * per_row));
    float* x = work.data();  // (B, C) rows of d: the residual stream of this pass, sequence-major
    thread_local std::vector<int64_t> pass_ids;
    pass_ids.resize(size_t(R));
    const Parallel parallel = parallel_of(dims);
    int64_t c = 0;
    for (int64_t start = 0; start < L; start += C) {
        c = L - start < C ? L - start : C;  // this pass's tokens per sequence
        for (int64_t b = 0; b < B; ++b)
            for (int64_t t = 0; t < c; ++t) pass_ids[size_t(b * c + t)] = tokens[b * L + start + t];
        embed_rows(weights[0], d, scalars[0], B * c, pass_ids.data(), x);
        layers_forward(dims, scalars[1], weights, B * c, c, x, states, x + B * c * d, parallel);
    }
    thread_local std::vector<const float*> rows;
    rows.resize(size_t(B));
    for (int64_t b = 0; b < B; ++b) rows[size_t(b)] = x + (b * c + c - 1) * d;  // each sequence's last token
    output_logits(dims, scalars[2], weights, B, rows.data(), x + B * c * d, logits, parallel);
    return 0;
}

// The sampler's C entry point (model/sampler.c's tnn_sample): logits (rows, vocab) -> tokens, finite flags.
typedef void (*SampleRows)(const float* logits, int64_t rows, int64_t vocab, const float* temperature,
                           const int64_t* top_k, const float* top_p, const float* min_p, const uint64_t* keys,
                           int64_t* tokens, uint8_t* finite, float* scratch);

// A decode run: up to max_steps steps of the B rows, step s consuming the tokens step s - 1 sampled (the first one
// `tokens`), each step's logits sampled by `sample` with per-row temperature, top_k, top_p, min_p and the key row
// keys[s] (keys: (max_steps, B)) into out_tokens[s] and out_finite[s] (both (max_steps, B)). The run ends after the
// step in which some row can go no further: a non-finite row, a row whose `remaining` tokens are all sampled, or a
// row that sampled one of its stop ids (row b's are stop_ids[stop_offsets[b], stop_offsets[b + 1])); after a step
// that finds *interrupt non-zero (another thread sets it: a request arrived); and before a step that would end after
// `budget_seconds` from the start (judged by the mean step so far). So each row's state has consumed exactly the
// tokens before its last sampled one, as after the same number of tnn_step calls.
// -> the steps run (>= 1), or -1 for a token id of `tokens` out of range (nothing written).
extern "C" int64_t tnn_decode_run(const int64_t* dims, const float* scalars, const float* const* weights, int64_t B,
                                  const int64_t* tokens, float* const* states, float* logits, int64_t max_steps,
                                  double budget_seconds, SampleRows sample, const float* temperature,
                                  const int64_t* top_k, const float* top_p, const float* min_p, const uint64_t* keys,
                                  const int64_t* remaining, const int64_t* stop_offsets, const int64_t* stop_ids,
                                  const int32_t* interrupt, int64_t* out_tokens, uint8_t* out_finite,
                                  float* sample_scratch) {
    const auto start = std::chrono::steady_clock::now();
    const int64_t* in = tokens;
    for (int64_t s = 0; s < max_steps; ++s) {
        if (tnn_step(dims, scalars, weights, B, in, states, logits) != 0) return -1;  // sampled ids are in range
        int64_t* out = out_tokens + s * B;
        uint8_t* finite = out_finite + s * B;
        sample(logits, B, dims[3], temperature, top_k, top_p, min_p, keys + s * B, out, finite, sample_scratch);
        bool last = s + 1 == max_steps || __atomic_load_n(interrupt, __ATOMIC_RELAXED) != 0;
        for (int64_t b = 0; b < B && !last; ++b) {
            last = !finite[b] || remaining[b] <= s + 1;
            for (int64_t i = stop_offsets[b]; i < stop_offsets[b + 1] && !last; ++i) last = out[b] == stop_ids[i];
        }
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (last || elapsed * double(s + 2) / double(s + 1) > budget_seconds) return s + 1;
        in = out;
    }
    return max_steps;
}
