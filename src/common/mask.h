// The visibility rule (causal, sliding window, key length) as one small policy with two faces:
//  - element face: visible(i, j) for query row i and key column j of one sequence;
//  - block face:   the key range any row of a row block can see, and whether a whole
//                  (row block x key block) tile is visible, so kernels run the common tile with
//                  no per-element masking and apply visible() only on boundary tiles.
// Rule (docs/semantics.md): with off = s_k - s_q (bottom-right alignment),
//   j visible to i  iff  0 <= j < s_k  and  i + off - left <= j <= i + off + right,
// left/right = -1 meaning unbounded, causal meaning right = 0. Both limits grow with i, which is
// what makes the block face exact.
#pragma once

#include "common/host_device.h"

namespace flashattn {

struct VisibilityMask {
  int seqlen_q = 0;
  int seqlen_k = 0;
  int window_left = -1;   // -1: unbounded
  int window_right = -1;  // -1: unbounded (causal: 0)

  FA_HD static VisibilityMask make(int seqlen_q, int seqlen_k, bool is_causal, int left,
                                   int right) {
    VisibilityMask m;
    m.seqlen_q = seqlen_q;
    m.seqlen_k = seqlen_k;
    m.window_left = left;
    m.window_right = is_causal ? 0 : right;
    return m;
  }

  FA_HD int offset() const { return seqlen_k - seqlen_q; }
  // First visible key of row i (may exceed the last: the row is empty).
  FA_HD int col_begin(int i) const {
    if (window_left < 0) return 0;
    int c = i + offset() - window_left;
    return c > 0 ? c : 0;
  }
  // One past the last visible key of row i (may be <= col_begin: the row is empty).
  FA_HD int col_end(int i) const {
    if (window_right < 0) return seqlen_k;
    int c = i + offset() + window_right + 1;
    c = c < seqlen_k ? c : seqlen_k;
    return c > 0 ? c : 0;
  }
  FA_HD bool visible(int i, int j) const { return j >= col_begin(i) && j < col_end(i); }
  FA_HD bool row_empty(int i) const { return col_end(i) <= col_begin(i); }

  // Keys that any row in [m_begin, m_end) can see: [*n_begin, *n_end). Empty if n_end <= n_begin.
  FA_HD void key_range(int m_begin, int m_end, int* n_begin, int* n_end) const {
    *n_begin = col_begin(m_begin);
    *n_end = col_end(m_end - 1);
  }
  // True iff every (i, j) with i in [m_begin, m_end), j in [n_begin, n_end) is visible.
  FA_HD bool tile_fully_visible(int m_begin, int m_end, int n_begin, int n_end) const {
    return n_begin >= col_begin(m_end - 1) && n_end <= col_end(m_begin) && m_end <= seqlen_q;
  }
};

}  // namespace flashattn
