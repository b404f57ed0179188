/* The draw of tnn.model.sampling in native code. tnn_draw: per row of probabilities, the floor that top-k,
 * top-p (on the renormalised top-k distribution) and min-p keep, then an exponential race among the kept tokens.
 * No sort: the floors come from a radix select on the floats' bits (a few passes per row; top-p first among the
 * tokens within 2^-10 of the top one); the race needs a logarithm only for the few tokens that could still win.
 * tnn_sample: the same from the logits, per row a finite check, then a greedy argmax or the tempered softmax
 * (torch's order of operations, its own vectorisable exp) before the draw: plain rows in one call.
 *
 * Semantics are those of the torch twin (tnn.model.sampling._draw_torch):
 *   top-k keeps a token when fewer than k tokens are more likely (ties at the boundary all kept);
 *   top-p keeps a token when the mass of the strictly more likely tokens (within the top-k) is below
 *     top_p times the top-k mass (the whole row's mass without top-k);
 *   min-p keeps a token at least min_p times as likely as the most likely one;
 *   the most likely token is always kept.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && !defined(TNN_SAMPLER_PORTABLE)
#define X86 1 /* AVX2 clones and intrinsics, chosen at run time by the CPU (-DTNN_SAMPLER_PORTABLE: none) */
#include <immintrin.h>
#else
#define X86 0
#endif

#define BUCKET_BITS 8
#define BUCKETS (1 << BUCKET_BITS)
#define FIRST_SHIFT 23  /* bits 23..30 of a non-negative float: its exponent */
#define SPLIT 4         /* interleaved histograms: consecutive values rarely wait on the same counter */
#define SMALL 64        /* at most this many candidates: sorted outright */

static inline uint32_t float_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static int descending(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* The smallest value v of vals[0, n) (non-negative; reordered) such that `ahead` plus the weight of the values
 * strictly greater than v is below `limit`; INFINITY when none is. `ahead` is the weight of the values above
 * all of vals; a value's weight is the value itself (top-p) or 1 (top-k, by_count). A radix select: the
 * values are bucketed by 8 bits of their float representation (monotonic for non-negative floats), every
 * bucket above the crossing one is kept whole, and only the crossing bucket is looked into, by its next 8
 * bits, and so on, then sorted once it is small. */
static float smallest_kept(float *vals, int64_t n, double limit, int by_count, double ahead, int shift) {
    if (n <= SMALL || shift < 0) {
        qsort(vals, (size_t)n, sizeof(float), descending);
        float best = INFINITY;
        for (int64_t i = 0; i < n;) {
            int64_t j = i;
            double group = 0.0;
            for (; j < n && vals[j] == vals[i]; j++) group += by_count ? 1.0 : vals[j];
            if (!(ahead < limit)) break;
            best = vals[i];
            ahead += group;
            i = j;
        }
        return best;
    }
    double split[SPLIT][BUCKETS] = {{0}};
    int64_t i = 0;
    for (; i + SPLIT <= n; i += SPLIT) {
        for (int h = 0; h < SPLIT; h++) {
            split[h][(float_bits(vals[i + h]) >> shift) & (BUCKETS - 1)] += by_count ? 1.0 : vals[i + h];
        }
    }
    for (; i < n; i++) split[0][(float_bits(vals[i]) >> shift) & (BUCKETS - 1)] += by_count ? 1.0 : vals[i];
    double weight[BUCKETS];
    for (int b = 0; b < BUCKETS; b++) weight[b] = split[0][b] + split[1][b] + split[2][b] + split[3][b];
    int64_t crossing = -1;
    double above = ahead; /* weight above the crossing bucket */
    for (int64_t b = BUCKETS - 1; b >= 0; b--) {
        if (weight[b] == 0.0) continue;
        if (!(ahead < limit)) break;
        crossing = b;
        above = ahead;
        ahead += weight[b];
    }
    if (crossing < 0) return INFINITY;
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) { /* branch-free compaction of the crossing bucket's values */
        vals[m] = vals[i];
        m += (int64_t)((float_bits(vals[i]) >> shift) & (BUCKETS - 1)) == crossing;
    }
    return smallest_kept(vals, m, limit, by_count, above, shift - BUCKET_BITS);
}

#define LANES 16 /* independent accumulators: a serial chain of adds costs 4 cycles per element */
#define BLOCK 64  /* kept_sum adds blocks of this many values in float lanes */

/* The sum of the values of p[0, n) at or above floor (every value for floor 0): float lanes within blocks of
 * BLOCK values (vectorised), the blocks added in double. */
static double kept_sum(const float *p, int64_t n, float floor) {
    double sum = 0.0;
    for (int64_t start = 0; start < n; start += BLOCK) {
        int64_t stop = start + BLOCK < n ? start + BLOCK : n;
        float lane[LANES] = {0};
        int64_t v = start;
        for (; v + LANES <= stop; v += LANES) {
            for (int l = 0; l < LANES; l++) lane[l] += p[v + l] >= floor ? p[v + l] : 0.0f;
        }
        for (; v < stop; v++) sum += p[v] >= floor ? p[v] : 0.0f;
        for (int l = 0; l < LANES; l++) sum += lane[l];
    }
    return sum;
}

__attribute__((always_inline)) static inline float row_max(const float *p, int64_t n) {
    float lane[LANES];
    for (int l = 0; l < LANES; l++) lane[l] = p[0];
    int64_t v = 0;
    for (; v + LANES <= n; v += LANES) {
        for (int l = 0; l < LANES; l++) lane[l] = p[v + l] > lane[l] ? p[v + l] : lane[l];
    }
    float top = p[0];
    for (; v < n; v++) top = p[v] > top ? p[v] : top;
    for (int l = 0; l < LANES; l++) top = lane[l] > top ? lane[l] : top;
    return top;
}

/* out[0, count) = the indices v of p[0, n) with p[v] >= bound and p[v] > 0, in order; returns count. Blocks of
 * LANES values without one are passed over after one vectorised test; the others are compacted branch-free. */
static int64_t select_at_least_generic(const float *p, int64_t n, float bound, int32_t *out) {
    int64_t count = 0;
    for (int64_t start = 0; start < n; start += LANES) {
        int64_t stop = start + LANES < n ? start + LANES : n;
        if (stop - start == LANES) {
            int any = 0;
            for (int l = 0; l < LANES; l++) any |= (p[start + l] >= bound) & (p[start + l] > 0.0f);
            if (!any) continue;
        }
        for (int64_t v = start; v < stop; v++) {
            out[count] = (int32_t)v;
            count += (p[v] >= bound) & (p[v] > 0.0f);
        }
    }
    return count;
}

#if X86
static uint8_t set_bits[256][8]; /* set_bits[m]: the positions of the set bits of m, ascending, then zeros */

__attribute__((constructor)) static void fill_set_bits(void) {
    for (int m = 0; m < 256; m++) {
        int count = 0;
        for (int bit = 0; bit < 8; bit++) {
            if (m & (1 << bit)) set_bits[m][count++] = (uint8_t)bit;
        }
    }
}

/* select_at_least_generic with AVX2, branch-free: per 8 values one comparison, and the selected indices (the
 * block's start plus set_bits of the comparison's mask) stored 8 at a time, the count advanced by the mask's
 * population (out needs no room past n: a store at count <= v ends by v + 8 <= n). */
__attribute__((target("avx2,popcnt"))) static int64_t select_at_least_avx2(const float *p, int64_t n, float bound,
                                                                            int32_t *out) {
    __m256 floor8 = _mm256_set1_ps(bound), zero = _mm256_setzero_ps();
    int64_t count = 0, v = 0;
    for (; v + 8 <= n; v += 8) {
        __m256 x = _mm256_loadu_ps(p + v);
        __m256 keep = _mm256_and_ps(_mm256_cmp_ps(x, floor8, _CMP_GE_OQ), _mm256_cmp_ps(x, zero, _CMP_GT_OQ));
        int mask = _mm256_movemask_ps(keep);
        __m256i positions = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)set_bits[mask]));
        _mm256_storeu_si256((__m256i *)(out + count), _mm256_add_epi32(positions, _mm256_set1_epi32((int32_t)v)));
        count += __builtin_popcount((unsigned)mask);
    }
    for (; v < n; v++) {
        out[count] = (int32_t)v;
        count += (p[v] >= bound) & (p[v] > 0.0f);
    }
    return count;
}

#endif

static int64_t select_at_least(const float *p, int64_t n, float bound, int32_t *out) {
#if X86
    if (__builtin_cpu_supports("avx2")) return select_at_least_avx2(p, n, bound, out);
#endif
    return select_at_least_generic(p, n, bound, out);
}

#define NUCLEUS_SPAN 0x1p-10f /* top-p looks first among the tokens at least this fraction of the top one */

/* The top-p floor of probs[0, vocab) (no top-k), whose largest value is top: smallest_kept over the row with
 * limit top_p times the row's mass. First among the candidates at least NUCLEUS_SPAN * top: a value among them
 * has all the larger values among them too, so smallest_kept decides it exactly; if some candidate is not kept,
 * no smaller value is either and that floor is the row's. Only a nucleus that keeps every candidate (a flat row)
 * takes the whole row. scratch: 2 * vocab floats. */
static float nucleus_floor(const float *probs, int64_t vocab, float top, float top_p, float *scratch) {
    double limit = (double)(top_p * (float)kept_sum(probs, vocab, 0.0f));
    float *values = scratch;
    int32_t *index = (int32_t *)(scratch + vocab);
    int64_t count = select_at_least(probs, vocab, top * NUCLEUS_SPAN, index);
    if (count < vocab) {
        float least = top;
        for (int64_t c = 0; c < count; c++) {
            values[c] = probs[index[c]];
            least = values[c] < least ? values[c] : least;
        }
        float floor = smallest_kept(values, count, limit, 0, 0.0, FIRST_SHIFT);
        if (floor > least) return floor;
    }
    memcpy(values, probs, (size_t)vocab * sizeof(float));
    return smallest_kept(values, vocab, limit, 0, 0.0, FIRST_SHIFT);
}

/* One row: the kept floor of probs[0, vocab), whose largest value is top. scratch holds 2 * vocab floats. */
static float keep_floor(const float *probs, int64_t vocab, float top, int64_t top_k, float top_p, float min_p,
                        float *scratch) {
    float floor = 0.0f;
    int limited = top_k > 0 && top_k < vocab;
    if (limited) {
        memcpy(scratch, probs, (size_t)vocab * sizeof(float));
        floor = smallest_kept(scratch, vocab, (double)top_k, 1, 0.0, FIRST_SHIFT);
        if (top_p < 1.0f) { /* top-p renormalises over the top-k (torch: the top-k mass) */
            double norm = kept_sum(probs, vocab, floor);
            int64_t count = 0;
            for (int64_t v = 0; v < vocab; v++) {
                if (probs[v] >= floor) scratch[count++] = probs[v];
            }
            float p_floor = smallest_kept(scratch, count, (double)(top_p * (float)norm), 0, 0.0, FIRST_SHIFT);
            floor = p_floor > floor ? p_floor : floor;
        }
    } else if (top_p < 1.0f) {
        floor = nucleus_floor(probs, vocab, top, top_p, scratch);
    }
    floor = floor < top ? floor : top; /* the most likely token always survives */
    if (min_p > 0.0f) {
        float m_floor = top * min_p;
        floor = m_floor > floor ? m_floor : floor;
    }
    return floor;
}

/* The exponential draws of the race: E_v = -log(u_v), u_v in (0, 1) from the v-th output of SplitMix64 seeded
 * with the row's key (a function of key and v alone: the same in any batch, and the same for a token whichever
 * other tokens truncation keeps). The torch twin computes the same u_v with numpy (tnn.model.sampling). */
static inline double race_uniform(uint64_t key, int64_t v) {
    uint64_t z = key + (uint64_t)(v + 1) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) * 0x1.0p-53;
}

/* The index of the first value of p[0, n) equal to top (which is there): blocks of LANES values tested at once,
 * then the block that holds it value by value. */
static int64_t first_index_of(const float *p, int64_t n, float top) {
    int64_t start = 0;
    for (; start + LANES <= n; start += LANES) {
        int hit = 0;
        for (int l = 0; l < LANES; l++) hit |= p[start + l] == top;
        if (hit) break;
    }
    while (start < n - 1 && p[start] != top) start++;
    return start;
}

/* The index of the first largest value of p[0, n) (NaN-free): torch's argmax. */
static int64_t first_argmax(const float *p, int64_t n) {
    return first_index_of(p, n, row_max(p, n));
}

/* The exponential race of one row: argmax over the kept tokens (at or above floor) of p_v / E_v, the first on
 * ties: a draw from the kept tokens' distribution. A token can only beat the best ratio r so far if E_v < p_v / r,
 * i.e. u_v > exp(-p_v / r) >= 1 - p_v / r; tokens with u_v <= 1 - 2 p_v / r (a margin for rounding, which also
 * covers the rounding of 2 / r as a product) are passed over without a logarithm, which leaves only a few
 * logarithms per row. */
typedef struct {
    double ratio;   /* the best p_v / E_v so far */
    double reach;   /* 2 / ratio */
    int64_t winner; /* its token */
    int64_t best;   /* the most likely token (the race's first entrant) */
} Race;

/* Enter kept token v (probs[v] >= floor, > 0) into the race. */
static inline void race_token(const float *probs, int64_t v, uint64_t key, Race *race) {
    float p = probs[v];
    double u = race_uniform(key, v);
    if (u <= 1.0 - (double)p * race->reach || v == race->best) return; /* E_v >= p_v / ratio: it cannot win */
    double r = (double)p / -log(u);
    if (r > race->ratio || (r == race->ratio && v < race->winner)) {
        race->ratio = r;
        race->reach = 2.0 / r;
        race->winner = v;
    }
}

#if X86
/* a * b mod 2^64 per 64-bit lane; b_high: b >> 32 in every lane */
__attribute__((target("avx2"))) static inline __m256i mul64(__m256i a, __m256i b, __m256i b_high) {
    __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), b), _mm256_mul_epu32(a, b_high));
    return _mm256_add_epi64(_mm256_mul_epu32(a, b), _mm256_slli_epi64(cross, 32));
}

/* race_token for every kept token of probs[0, vocab), four at a time: SplitMix64 in 64-bit lanes and a screen
 * that passes over a token when (z >> 32) + 1 <= (1 - p_v * reach) 2^32, which makes u_v < 1 - p_v * reach (u_v is
 * below ((z >> 32) + 1) 2^-32): race_token would pass over it too. The tokens left go through race_token. */
__attribute__((target("avx2"))) static void race_scan_avx2(const float *probs, int64_t vocab, float floor,
                                                           uint64_t key, Race *race) {
    const uint64_t golden = 0x9E3779B97F4A7C15ULL, mix1 = 0xBF58476D1CE4E5B9ULL, mix2 = 0x94D049BB133111EBULL;
    const __m256i m1 = _mm256_set1_epi64x((int64_t)mix1), m1_high = _mm256_set1_epi64x((int64_t)(mix1 >> 32));
    const __m256i m2 = _mm256_set1_epi64x((int64_t)mix2), m2_high = _mm256_set1_epi64x((int64_t)(mix2 >> 32));
    const __m256i step = _mm256_set1_epi64x((int64_t)(4 * golden)), exponent = _mm256_set1_epi64x(0x4330000000000000);
    const __m256d two52 = _mm256_set1_pd(0x1p52), scale = _mm256_set1_pd(0x1p32), one = _mm256_set1_pd(1.0);
    const __m256d floor4 = _mm256_set1_pd((double)floor), zero = _mm256_setzero_pd();
    __m256i next = _mm256_set_epi64x((int64_t)(key + 4 * golden), (int64_t)(key + 3 * golden),
                                     (int64_t)(key + 2 * golden), (int64_t)(key + golden)); /* tokens v .. v+3 */
    int64_t v = 0;
    for (; v + 4 <= vocab; v += 4) {
        __m256i z = next;
        next = _mm256_add_epi64(next, step);
        z = mul64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), m1, m1_high);
        z = mul64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), m2, m2_high);
        z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
        __m256d high = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(_mm256_srli_epi64(z, 32), exponent)), two52);
        __m256d p = _mm256_cvtps_pd(_mm_loadu_ps(probs + v));
        __m256d needed = _mm256_mul_pd(_mm256_sub_pd(one, _mm256_mul_pd(p, _mm256_set1_pd(race->reach))), scale);
        __m256d kept = _mm256_and_pd(_mm256_cmp_pd(p, floor4, _CMP_GE_OQ), _mm256_cmp_pd(p, zero, _CMP_GT_OQ));
        __m256d open = _mm256_and_pd(_mm256_cmp_pd(_mm256_add_pd(high, one), needed, _CMP_GT_OQ), kept);
        for (int mask = _mm256_movemask_pd(open); mask != 0; mask &= mask - 1) {
            race_token(probs, v + __builtin_ctz((unsigned)mask), key, race);
        }
    }
    for (; v < vocab; v++) {
        if (probs[v] >= floor && probs[v] > 0.0f) race_token(probs, v, key, race);
    }
}
#endif

/* One row's race. top: the row's largest value; candidates: room for vocab indices. The kept tokens one by one
 * when they are few, else (with AVX2) the whole row four tokens at a time. */
static int64_t race(const float *probs, int64_t vocab, float top, float floor, uint64_t key, int32_t *candidates) {
    int64_t best = first_index_of(probs, vocab, top);
    double ratio = (double)top / -log(race_uniform(key, best)); /* the most likely token is always kept */
    Race state = {ratio, 2.0 / ratio, best, best};
    int64_t count = select_at_least(probs, vocab, floor, candidates);
#if X86
    if (4 * count > vocab && __builtin_cpu_supports("avx2")) {
        race_scan_avx2(probs, vocab, floor, key, &state);
        return state.winner;
    }
#endif
    for (int64_t c = 0; c < count; c++) race_token(probs, candidates[c], key, &state);
    return state.winner;
}

/* One row of probabilities whose largest value is top: its floor, then the race. scratch: 2 * vocab floats. */
static inline int64_t draw_row(const float *probs, int64_t vocab, float top, int64_t top_k, float top_p,
                               float min_p, uint64_t key, float *scratch) {
    int truncated = (top_k > 0 && top_k < vocab) || top_p < 1.0f || min_p > 0.0f;
    float floor = truncated ? keep_floor(probs, vocab, top, top_k, top_p, min_p, scratch) : 0.0f;
    return race(probs, vocab, top, floor, key, (int32_t *)scratch);
}

/* probs (rows, vocab) float32 row-major; per row top_k (0: off), top_p, min_p and the race's key; tokens (rows,)
 * out. scratch: 2 * vocab floats (the floor's work, then the race's candidate indices). */
void tnn_draw(const float *probs, int64_t rows, int64_t vocab, const int64_t *top_k, const float *top_p,
              const float *min_p, const uint64_t *keys, int64_t *tokens, float *scratch) {
    for (int64_t r = 0; r < rows; r++) {
        const float *row = probs + r * vocab;
        tokens[r] = draw_row(row, vocab, row_max(row, vocab), top_k[r], top_p[r], min_p[r], keys[r], scratch);
    }
}

/* exp(x) for x <= 0 (x = -inf included; 0 below ln of the smallest normal float): Cephes' expf, a reduction to
 * 2^n e^r with |r| <= ln(2)/2 and a degree-6 polynomial, within 2 ulp of expf. Branch-free and in plain IEEE
 * float arithmetic (no libm call, no contraction under -std=c11), so loops over it vectorise and every clone of
 * `tempered_softmax` rounds alike. */
static inline float exp_nonpositive(float x) {
    float clamped = x < -88.0f ? -88.0f : x;
    float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest: 1.5 * 2^23 */
    float r = clamped - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * (r * r) + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23; /* 2^n: n in [-127, 0] */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -87.33654475f ? 0.0f : y * scale;
}

/* Whether every value of x[0, n) is finite: x - x is 0 for a finite x and NaN for an infinity or a NaN. */
static int row_finite(const float *x, int64_t n) {
    float lane[LANES] = {0};
    int64_t v = 0;
    for (; v + LANES <= n; v += LANES) {
        for (int l = 0; l < LANES; l++) lane[l] += x[v + l] - x[v + l];
    }
    float any = 0.0f;
    for (; v < n; v++) any += x[v] - x[v];
    for (int l = 0; l < LANES; l++) any += lane[l];
    return any == 0.0f;
}

/* probs[0, n) = softmax(min(logits / temperature, FLT_MAX)) of one finite row, as torch's CPU softmax computes
 * it: the row's max, exp(x - max), their float sum, then a product with 1 / sum. Returns the largest
 * probability, 1 / sum (exp_nonpositive(0) is 1, and no exp_nonpositive(x) exceeds it). */
static inline float tempered_softmax(const float *logits, int64_t n, float temperature, float *probs) {
    for (int64_t v = 0; v < n; v++) {
        float x = logits[v] / temperature;
        probs[v] = x > FLT_MAX ? FLT_MAX : x; /* a positive logit over a tiny temperature: its limit */
    }
    float top = row_max(probs, n);
    float lane[LANES] = {0};
    int64_t v = 0;
    for (; v + LANES <= n; v += LANES) {
        for (int l = 0; l < LANES; l++) {
            probs[v + l] = exp_nonpositive(probs[v + l] - top);
            lane[l] += probs[v + l];
        }
    }
    float sum = 0.0f;
    for (; v < n; v++) {
        probs[v] = exp_nonpositive(probs[v] - top);
        sum += probs[v];
    }
    for (int l = 0; l < LANES; l++) sum += lane[l];
    float inverse = 1.0f / sum;
    for (int64_t v = 0; v < n; v++) probs[v] *= inverse;
    return inverse;
}

/* One row of logits: its finiteness into *finite (the token is then 0, meaningless), then the greedy argmax or
 * the tempered softmax and draw_row. Cloned for AVX2: the passes over the row vectorise 8 wide there, and both
 * clones round alike (the same IEEE operations in the same order). scratch: 3 * vocab floats. */
#if X86
__attribute__((target_clones("avx2", "default")))
#endif
static int64_t sample_row(const float *logits, int64_t vocab, float temperature, int64_t top_k, float top_p,
                          float min_p, uint64_t key, uint8_t *finite, float *scratch) {
    *finite = (uint8_t)row_finite(logits, vocab);
    if (!*finite) return 0;
    if (!(temperature > 0.0f)) return first_argmax(logits, vocab);
    float top = tempered_softmax(logits, vocab, temperature, scratch);
    return draw_row(scratch, vocab, top, top_k, top_p, min_p, key, scratch + vocab);
}

/* The whole draw from logits (rows, vocab) float32 row-major: per row its temperature (0: greedy, the first most
 * likely token), top_k (0: off), top_p, min_p and race key; tokens (rows,) and finite (rows,): 0 where the row
 * holds an infinity or a NaN (its token is then 0, meaningless), else 1. Rows are independent: a row draws the
 * same token in any batch. scratch: 3 * vocab floats. */
void tnn_sample(const float *logits, int64_t rows, int64_t vocab, const float *temperature, const int64_t *top_k,
                const float *top_p, const float *min_p, const uint64_t *keys, int64_t *tokens, uint8_t *finite,
                float *scratch) {
    for (int64_t r = 0; r < rows; r++) {
        tokens[r] = sample_row(logits + r * vocab, vocab, temperature[r], top_k[r], top_p[r], min_p[r], keys[r],
                               finite + r, scratch);
    }
}
