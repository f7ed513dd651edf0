/* Every statistic of a tensor from one read of it: the one-pass statistics kernel.
 *
 * The tensors are cut into chunks (planned in one_pass.py); OpenMP threads take
 * whole chunks. A chunk is read BLOCK elements at a time, and each block, while
 * it sits in L1, gives its sum, sum of squares, extremes, zero and NaN counts,
 * its centred sum of squares (two passes over the cached block) and, for
 * gradients, its histogram of binades. Blocks and then chunks are merged in a
 * fixed order (Chan et al.'s pairwise update for the centred sums), so the
 * result does not depend on the thread count. All sums are taken in float64.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 1024
#define N_BINS 59     /* gradsweep.bins.N_HIST_BINS */
#define UNDERFLOW 1   /* gradsweep.bins.HIST_UNDERFLOW */
#define WINDOW 56     /* underflow, the 54 binades, overflow */

typedef struct {
    double n, sum, sumsq, mean, m2, min, max, zeros, nans, nonfinite;
} Moments;

static void merge(Moments *a, const Moments *b) {
    if (b->n == 0) return;
    if (a->n == 0) { *a = *b; return; }
    double n = a->n + b->n, delta = b->mean - a->mean;
    a->m2 += b->m2 + delta * delta * (a->n * b->n / n);
    a->mean += delta * (b->n / n);
    a->n = n;
    a->sum += b->sum;
    a->sumsq += b->sumsq;
    a->min = b->min < a->min ? b->min : a->min;
    a->max = b->max > a->max ? b->max : a->max;
    a->zeros += b->zeros;
    a->nans += b->nans;
    a->nonfinite += b->nonfinite;
}

/*
 * A block's histogram, counted into a chunk's LANES tables h[LANES][256]. An
 * element's bin is its exponent field clamped to the histogram's window. Where
 * the CPU has byte-wide vector compares (AVX-512BW, AVX2), the block's bins are
 * written as bytes first: a block of gradients spans few binades, so its counts
 * come from one compare pass over those bytes per bin present, matches summed in
 * byte lanes (at most BLOCK / 32 a lane) and then across them. A block spanning
 * SPAN_MAX bins or more, and every block on other CPUs, increments the tables in
 * turn, so that runs of equal bins do not wait on each other; on other CPUs a
 * float32 chunk of RAW_MIN elements or more counts the raw exponent field in
 * 256-entry tables (no clamp), and smaller ones the clamped window, so that short
 * segments zero a short table.
 */
#define RAW_MIN 4096
#define LANES 8
#define WINDOW_BIN(bits, abs_mask, shift, lo, hi)                                     \
    ({                                                                                \
        int32_t e_ = (int32_t)(((bits) & (abs_mask)) >> (shift));                    \
        (e_ < (lo) ? (lo) : (e_ > (hi) ? (hi) : e_)) - (lo);                          \
    })

/* Each element's BIN incremented in turn, in LANES interleaved tables. */
#define COUNT_INTO(h, bits, n, BIN, abs_mask, shift, lo, hi)                          \
    do {                                                                              \
        int64_t i_ = 0;                                                               \
        for (; i_ + LANES <= (n); i_ += LANES)                                        \
            for (int j_ = 0; j_ < LANES; j_++)                                        \
                h[j_][BIN((bits)[i_ + j_], abs_mask, shift, lo, hi)]++;               \
        for (; i_ < (n); i_++) h[0][BIN((bits)[i_], abs_mask, shift, lo, hi)]++;     \
    } while (0)
/* an element that is its bin already (a byte of the bins written first) */
#define BYTE_BIN(b, abs_mask, shift, lo, hi) (b)

#if defined(__AVX512BW__) || defined(__AVX2__)
#include <immintrin.h>
#define VECTOR_COUNTS 1
#define SPAN_MAX 32
#if defined(__AVX512BW__)
#define VBYTES 64
typedef __m512i vbytes;
#define V_SET1(b) _mm512_set1_epi8((char)(b))
#define V_ZERO() _mm512_setzero_si512()
#define V_MATCH(acc, p, t)                                                            \
    _mm512_mask_sub_epi8(acc, _mm512_cmpeq_epi8_mask(_mm512_loadu_si512(p), t), acc,  \
                         _mm512_set1_epi8(-1))
#define V_TOTAL(acc) ((uint32_t)_mm512_reduce_add_epi64(_mm512_sad_epu8(acc, V_ZERO())))
#else
#define VBYTES 32
typedef __m256i vbytes;
#define V_SET1(b) _mm256_set1_epi8((char)(b))
#define V_ZERO() _mm256_setzero_si256()
#define V_MATCH(acc, p, t) \
    _mm256_sub_epi8(acc, _mm256_cmpeq_epi8(_mm256_loadu_si256((const __m256i *)(p)), t))
static uint32_t v_total(__m256i acc) {
    __m256i s = _mm256_sad_epu8(acc, _mm256_setzero_si256());
    return (uint32_t)(_mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1) +
                      _mm256_extract_epi64(s, 2) + _mm256_extract_epi64(s, 3));
}
#define V_TOTAL(acc) v_total(acc)
#endif
static void count_bins(const uint8_t *bin, int64_t n, int lo, int hi, uint32_t h[LANES][256]) {
    if (hi - lo >= SPAN_MAX) {
        COUNT_INTO(h, bin, n, BYTE_BIN, 0, 0, 0, 0);
        return;
    }
    int64_t whole = n / VBYTES * VBYTES;
    for (int b = lo; b <= hi; b++) {
        vbytes target = V_SET1(b), acc = V_ZERO();
        for (int64_t i = 0; i < whole; i += VBYTES) acc = V_MATCH(acc, bin + i, target);
        h[0][b] += V_TOTAL(acc);
    }
    for (int64_t i = whole; i < n; i++) h[0][bin[i]]++;
}
#define BLOCK_HIST(h, bits, n, raw, abs_mask, shift, lo, hi)                          \
    do {                                                                              \
        uint8_t bin_[BLOCK];                                                          \
        int32_t first_ = WINDOW - 1, last_ = 0;                                       \
        for (int64_t i_ = 0; i_ < (n); i_++) {                                        \
            int32_t b_ = WINDOW_BIN((bits)[i_], abs_mask, shift, lo, hi);             \
            bin_[i_] = (uint8_t)b_;                                                   \
            first_ = b_ < first_ ? b_ : first_;                                       \
            last_ = b_ > last_ ? b_ : last_;                                          \
        }                                                                             \
        count_bins(bin_, n, first_, last_, h);                                        \
    } while (0)
#else
#define VECTOR_COUNTS 0
/* the exponent field itself, where it fits the tables (float32): no clamp per element */
#define RAW_BIN(bits, abs_mask, shift, lo, hi) ((int32_t)(((bits) & (abs_mask)) >> (shift)) & 255)
#define BLOCK_HIST(h, bits, n, raw, abs_mask, shift, lo, hi)                          \
    do {                                                                              \
        if (raw)                                                                      \
            COUNT_INTO(h, bits, n, RAW_BIN, abs_mask, shift, lo, hi);                 \
        else                                                                          \
            COUNT_INTO(h, bits, n, WINDOW_BIN, abs_mask, shift, lo, hi);              \
    } while (0)
#endif

/*
 * One chunk of a tensor of type T (bits in SINT, SHIFT mantissa bits, exponent BIAS).
 * Extremes are taken on the order-preserving integer key of each float (sign-magnitude
 * to two's complement), which vectorises where float compares with NaN do not; a NaN
 * anywhere makes both extremes NaN in the end, as torch's aminmax does.
 */
#define KEY(bits) ((bits) ^ (((bits) >> (sizeof(bits) * 8 - 1)) & key_mask))
#define DEFINE_CHUNK(NAME, T, SINT, UINT, SHIFT, BIAS)                                 \
    static T NAME##_value(SINT key) {                                                 \
        SINT bits = key ^ ((key >> (sizeof(SINT) * 8 - 1)) & ~((SINT)1 << (sizeof(SINT) * 8 - 1))); \
        T value;                                                                      \
        memcpy(&value, &bits, sizeof value);                                          \
        return value;                                                                 \
    }                                                                                 \
    static void NAME(const T *x, int64_t len, int extremes, int with_hist, Moments *out, \
                     int64_t *hist) {                                                 \
        const int32_t lo = (BIAS) - 41, hi = (BIAS) + 14, n_exp = 2 * (BIAS) + 2;     \
        const UINT abs_mask = ~((UINT)1 << (sizeof(UINT) * 8 - 1));                   \
        const SINT key_mask = (SINT)abs_mask;                                         \
        const UINT inf_bits = (UINT)(n_exp - 1) << (SHIFT);                           \
        const SINT inf_key = (SINT)inf_bits, neg_inf_key = KEY((SINT)(inf_bits | ~abs_mask)); \
        const int raw = !VECTOR_COUNTS && len >= RAW_MIN && n_exp <= 256;             \
        uint32_t h[LANES][256];                                                       \
        for (int j = 0; with_hist && j < LANES; j++)                                  \
            memset(h[j], 0, raw ? sizeof h[j] : WINDOW * sizeof h[j][0]);             \
        Moments acc = {0};                                                            \
        for (int64_t start = 0; start < len; start += BLOCK) {                        \
            const T *p = x + start;                                                   \
            const SINT *k = (const SINT *)p;                                          \
            int64_t n = len - start < BLOCK ? len - start : BLOCK;                    \
            double s = 0, q = 0;                                                      \
            SINT zeros = 0, nans = 0, nonfinite = 0; /* lane-wide: BLOCK fits */      \
            SINT kmin = KEY(k[0]), kmax = kmin;                                       \
            if (extremes) {                                                           \
                for (int64_t i = 0; i < n; i++) {                                     \
                    double d = (double)p[i];                                          \
                    SINT key = KEY(k[i]);                                             \
                    s += d;                                                           \
                    q += d * d;                                                       \
                    zeros += p[i] == 0;                                               \
                    kmin = key < kmin ? key : kmin;                                   \
                    kmax = key > kmax ? key : kmax;                                   \
                }                                                                     \
                /* Inf and NaN have the extreme keys: count them only where they are */ \
                if (kmax >= inf_key || kmin <= neg_inf_key)                           \
                    for (int64_t i = 0; i < n; i++) {                                 \
                        nans += p[i] != p[i];                                         \
                        nonfinite += (p[i] - p[i]) != 0;                              \
                    }                                                                 \
            } else {                                                                  \
                for (int64_t i = 0; i < n; i++) {                                     \
                    double d = (double)p[i];                                          \
                    s += d;                                                           \
                    q += d * d;                                                       \
                }                                                                     \
            }                                                                         \
            double mean = s / (double)n, m2 = 0;                                      \
            for (int64_t i = 0; i < n; i++) {                                         \
                double d = (double)p[i] - mean;                                       \
                m2 += d * d;                                                          \
            }                                                                         \
            if (with_hist)                                                            \
                BLOCK_HIST(h, (const UINT *)p, n, raw, abs_mask, SHIFT, lo, hi);      \
            Moments block = {(double)n, s, q, mean, m2, (double)NAME##_value(kmin),   \
                             (double)NAME##_value(kmax), (double)zeros, (double)nans, \
                             (double)nonfinite};                                      \
            merge(&acc, &block);                                                      \
        }                                                                             \
        *out = acc;                                                                   \
        if (!with_hist) return;                                                       \
        memset(hist, 0, N_BINS * sizeof *hist);                                       \
        if (raw)                                                                      \
            for (int64_t e = 0; e < n_exp; e++)                                       \
                for (int j = 0; j < LANES; j++)                                       \
                    hist[UNDERFLOW + (e < lo ? lo : (e > hi ? hi : e)) - lo] += h[j][e]; \
        else                                                                          \
            for (int j = 0; j < LANES; j++)                                           \
                for (int b = 0; b < WINDOW; b++) hist[UNDERFLOW + b] += h[j][b];      \
    }

DEFINE_CHUNK(chunk_f32, float, int32_t, uint32_t, 23, 127)
DEFINE_CHUNK(chunk_f64, double, int64_t, uint64_t, 52, 1023)

/* Columns of gradsweep.probe.layout.STAT_COLUMNS */
enum { G_SUM, G_SUMSQ, G_M2, G_MIN, G_MAX, G_ZERO, G_NAN, G_INF, P_SUM, P_SUMSQ, P_M2, N_STATS };

/*
 * bases[i]: data of input i (the gradients in spec order, then the parameters).
 * Chunk c reads chunk_len[c] elements of input chunk_input[c] from chunk_offset[c]
 * and belongs to segment chunk_segment[c]; a segment's chunks are consecutive.
 * Segment s writes stats row segment_row[s] (the param columns when segment_param[s]),
 * and, when with_hist and segment_hist[s] >= 0, histogram row segment_hist[s].
 * Threads take tasks: task t is chunks task_start[t] to task_start[t + 1] - 1.
 * Moments (n_chunks) and hist_work (n_chunks * N_BINS) are scratch.
 * stats (rows * N_STATS) and hist (hist rows * N_BINS) receive the packed result, in
 * the form gradsweep.probe.layout.PackedLayout.unpack reads: zeros and subnormals in
 * the underflow bin, NaN and Inf in the overflow bin.
 */
void gs_one_pass(int itemsize, const void *const *bases, int64_t n_chunks,
                 const int64_t *chunk_input, const int64_t *chunk_offset,
                 const int64_t *chunk_len, const int64_t *chunk_segment,
                 const int64_t *segment_row, const int64_t *segment_param,
                 const int64_t *segment_hist, int64_t n_tasks, const int64_t *task_start,
                 int with_hist, int threads, Moments *work, int64_t *hist_work, double *stats,
                 double *hist) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (n_tasks > 1)
    for (int64_t task = 0; task < n_tasks; task++)
        for (int64_t c = task_start[task]; c < task_start[task + 1]; c++) {
            int extremes = !segment_param[chunk_segment[c]];
            int seg_hist = with_hist && segment_hist[chunk_segment[c]] >= 0;
            const char *base = (const char *)bases[chunk_input[c]];
            const void *x = base + chunk_offset[c] * itemsize;
            if (itemsize == 4)
                chunk_f32((const float *)x, chunk_len[c], extremes, seg_hist, &work[c],
                          hist_work + c * N_BINS);
            else
                chunk_f64((const double *)x, chunk_len[c], extremes, seg_hist, &work[c],
                          hist_work + c * N_BINS);
        }
    int64_t c = 0;
    while (c < n_chunks) {
        int64_t s = chunk_segment[c], first = c;
        Moments m = work[c];
        int keep_hist = with_hist && segment_hist[s] >= 0;
        double *out = keep_hist ? hist + segment_hist[s] * N_BINS : NULL;
        if (keep_hist) memset(out, 0, N_BINS * sizeof *out);
        for (; c < n_chunks && chunk_segment[c] == s; c++) {
            if (c > first) merge(&m, &work[c]);
            if (keep_hist)
                for (int b = 0; b < N_BINS; b++) out[b] += (double)hist_work[c * N_BINS + b];
        }
        double *row = stats + segment_row[s] * N_STATS;
        if (segment_param[s]) {
            row[P_SUM] = m.sum;
            row[P_SUMSQ] = m.sumsq;
            row[P_M2] = m.m2;
            continue;
        }
        row[G_SUM] = m.sum;
        row[G_SUMSQ] = m.sumsq;
        row[G_M2] = m.m2;
        row[G_MIN] = m.nans > 0 ? NAN : m.min;
        row[G_MAX] = m.nans > 0 ? NAN : m.max;
        row[G_ZERO] = m.zeros;
        row[G_NAN] = m.nans;
        row[G_INF] = m.nonfinite - m.nans;
    }
}
