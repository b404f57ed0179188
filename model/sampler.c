/* The truncated draw of tnn.model.sampling in native code: per row of probabilities, the floor that top-k,
 * top-p (on the renormalised top-k distribution) and min-p keep, then an exponential race among the kept tokens.
 * No sort: the floors come from a radix select on the floats' bits (a few passes per row); the race needs a
 * logarithm only for the few tokens that could still win.
 *
 * Semantics are those of the torch twin (tnn.model.sampling._draw_torch):
 *   top-k keeps a token when fewer than k tokens are more likely (ties at the boundary all kept);
 *   top-p keeps a token when the mass of the strictly more likely tokens (within the top-k) is below
 *     top_p times the top-k mass (the whole row's mass without top-k);
 *   min-p keeps a token at least min_p times as likely as the most likely one;
 *   the most likely token is always kept.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

static float row_max(const float *p, int64_t n) {
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

/* One row: the kept floor of probs[0, vocab). scratch holds vocab floats. */
static float keep_floor(const float *probs, int64_t vocab, int64_t top_k, float top_p, float min_p, float *scratch) {
    float top = row_max(probs, vocab);
    float floor = 0.0f;
    int limited = top_k > 0 && top_k < vocab;
    if (limited || top_p < 1.0f) {
        const float *candidates = probs;
        int64_t count = vocab;
        float k_floor = 0.0f;
        if (limited) {
            memcpy(scratch, probs, (size_t)vocab * sizeof(float));
            k_floor = smallest_kept(scratch, vocab, (double)top_k, 1, 0.0, FIRST_SHIFT);
        }
        floor = k_floor;
        if (top_p < 1.0f) {
            /* top-p renormalises over the top-k (torch: the top-k mass), else over the whole row */
            double norm = kept_sum(probs, vocab, k_floor);
            if (limited) {
                count = 0;
                for (int64_t v = 0; v < vocab; v++) {
                    if (probs[v] >= k_floor) scratch[count++] = probs[v];
                }
            } else {
                memcpy(scratch, candidates, (size_t)count * sizeof(float));
            }
            float p_floor = smallest_kept(scratch, count, (double)(top_p * (float)norm), 0, 0.0, FIRST_SHIFT);
            floor = p_floor > floor ? p_floor : floor;
        }
        floor = floor < top ? floor : top; /* the most likely token always survives */
    }
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

/* One row: argmax over the kept tokens (at or above floor) of p_v / E_v, the first on ties: a draw from the kept
 * tokens' distribution (an exponential race). A token can only beat the best ratio r so far if E_v < p_v / r,
 * i.e. u_v > exp(-p_v / r) >= 1 - p_v / r; tokens with u_v <= 1 - 2 p_v / r (a margin for rounding) are passed
 * over without a logarithm, which leaves only a few logarithms per row. */
static int64_t race(const float *probs, int64_t vocab, float floor, uint64_t key) {
    int64_t best = 0;
    float top = -1.0f;
    for (int64_t v = 0; v < vocab; v++) {
        if (probs[v] > top) {
            top = probs[v];
            best = v;
        }
    }
    double ratio = (double)top / -log(race_uniform(key, best)); /* the most likely token is always kept */
    int64_t winner = best;
    for (int64_t v = 0; v < vocab; v++) {
        float p = probs[v];
        if (p < floor || p == 0.0f || v == best) continue;
        double u = race_uniform(key, v);
        if (u <= 1.0 - 2.0 * (double)p / ratio) continue; /* E_v >= p_v / ratio: it cannot win */
        double r = (double)p / -log(u);
        if (r > ratio || (r == ratio && v < winner)) {
            ratio = r;
            winner = v;
        }
    }
    return winner;
}

/* probs (rows, vocab) float32 row-major; per row top_k (0: off), top_p, min_p and the race's key; tokens (rows,)
 * out. scratch: vocab floats. */
void tnn_draw(const float *probs, int64_t rows, int64_t vocab, const int64_t *top_k, const float *top_p,
              const float *min_p, const uint64_t *keys, int64_t *tokens, float *scratch) {
    for (int64_t r = 0; r < rows; r++) {
        const float *row = probs + r * vocab;
        int truncated = (top_k[r] > 0 && top_k[r] < vocab) || top_p[r] < 1.0f || min_p[r] > 0.0f;
        float floor = truncated ? keep_floor(row, vocab, top_k[r], top_p[r], min_p[r], scratch) : 0.0f;
        tokens[r] = race(row, vocab, floor, keys[r]);
    }
}
