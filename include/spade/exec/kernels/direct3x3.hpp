// Direct 3x3 convolution, stride 1, padding 1, one conv group: no im2col matrix.
// The input is copied once into zero-bordered rows, the weights into panels of
// MR output channels; each step then multiplies 2 vectors of adjacent output
// pixels (one row) by MR broadcast weights, for every input channel and tap.
// Against im2col + GEMM it skips writing and re-reading a 9x larger column
// matrix, which is what limits layers with few output channels (pruned layers,
// 64-channel restoration priors). Rows narrower than about 3/4 of a tile waste
// lanes; the caller keeps those on im2col + GEMM (see `direct3x3_suits`).
#pragma once

#include <algorithm>
#include <cstring>

#include "spade/core/threading.hpp"
#include "spade/graph/ops/common.hpp"

namespace spade::kernels {

namespace detail {
template <class T>
struct Lanes;
template <>
struct Lanes<float> {
    typedef float type __attribute__((vector_size(64)));
    static constexpr int count = 16;
};
template <>
struct Lanes<double> {
    typedef double type __attribute__((vector_size(64)));
    static constexpr int count = 8;
};
}  // namespace detail

/// Output channels per weight panel of the direct kernel.
inline constexpr int direct_mr = 8;
/// Output pixels of one row a step computes (two vectors).
template <class T>
constexpr Index direct_nr() {
    return 2 * detail::Lanes<T>::count;
}

/// True where the direct kernel beats im2col + GEMM: rows of at least 3/4 of a tile.
template <class T>
bool direct3x3_suits(Index out_w) {
    return out_w >= direct_nr<T>() * 3 / 4;
}

/// Scratch elements conv3x3_direct needs for `cin` channels of h x w and `cout` outputs.
template <class T>
Index direct3x3_workspace(Index cin, Index h, Index w, Index cout) {
    const Index panels = (cout + direct_mr - 1) / direct_mr;
    return cin * (h + 2) * (w + 2 + direct_nr<T>()) + panels * cin * 9 * direct_mr;
}

/// y[o] = act(bias[o] + sum_c w[o, c] (*) x[c]) for one image: x [cin, h, w], w [cout, cin, 3, 3],
/// y [cout, h, w]; `bias` may be null. `work` holds direct3x3_workspace elements.
template <class T>
void conv3x3_direct(const T* x, Index cin, Index h, Index w, const T* weight, const T* bias, FusedActivation act,
                    Index cout, T* y, T* work) {
    using V = typename detail::Lanes<T>::type;
    constexpr int L = detail::Lanes<T>::count, MR = direct_mr;
    constexpr Index NR = direct_nr<T>();
    const Index wp = w + 2 + NR, hp = h + 2, panels = (cout + MR - 1) / MR;
    T* xp = work;  // zero-bordered copy; the slack after each row keeps a last tile's loads inside
    T* packed = work + cin * hp * wp;
    std::fill(xp, xp + cin * hp * wp, T(0));
    for (Index c = 0; c < cin; ++c)
        for (Index r = 0; r < h; ++r) std::memcpy(xp + (c * hp + r + 1) * wp + 1, x + (c * h + r) * w, sizeof(T) * w);
    std::fill(packed, packed + panels * cin * 9 * MR, T(0));  // rows past cout stay zero
    for (Index o = 0; o < cout; ++o)
        for (Index c = 0; c < cin; ++c)
            for (int t = 0; t < 9; ++t) packed[(((o / MR) * cin + c) * 9 + t) * MR + o % MR] = weight[(o * cin + c) * 9 + t];
    const Index tiles = (w + NR - 1) / NR;
    parallel_for(
        h * tiles,
        [&](long job) {
            const Index r0 = job / tiles, w0 = (job % tiles) * NR, width = std::min(NR, w - w0);
            for (Index p = 0; p < panels; ++p) {
                V acc[MR][2];
                for (int r = 0; r < MR; ++r) acc[r][0] = V{}, acc[r][1] = V{};
                const T* a = packed + p * cin * 9 * MR;
                for (Index c = 0; c < cin; ++c) {
                    const T* base = xp + (c * hp + r0) * wp + w0;
                    for (int i = 0; i < 3; ++i) {
                        const T* row = base + i * wp;
                        for (int j = 0; j < 3; ++j, a += MR) {
                            V b0, b1;
                            std::memcpy(&b0, row + j, sizeof(V));
                            std::memcpy(&b1, row + j + L, sizeof(V));
                            for (int r = 0; r < MR; ++r) {
                                acc[r][0] += a[r] * b0;
                                acc[r][1] += a[r] * b1;
                            }
                        }
                    }
                }
                const Index rows = std::min<Index>(MR, cout - p * MR);
                for (Index r = 0; r < rows; ++r) {
                    const Index o = p * MR + r;
                    T out[NR];
                    std::memcpy(out, &acc[r][0], sizeof(V));
                    std::memcpy(out + L, &acc[r][1], sizeof(V));
                    const T b = bias ? bias[o] : T(0);
                    for (Index k = 0; k < width; ++k) out[k] += b;
                    apply_fused(act, out, width);
                    std::memcpy(y + (o * h + r0) * w + w0, out, sizeof(T) * width);
                }
            }
        },
        cin * 9 * cout * NR);
}

}  // namespace spade::kernels
