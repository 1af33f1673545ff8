#include <sstream>

#include "fixtures.hpp"

using namespace spade;

namespace {

// Plain-loop reference convolution in double.
Tensor<double> ref_conv2d(const Tensor<double>& x, const Parameter<double>& w, const Parameter<double>* b,
                          const Conv2dOptions& o) {
    const Index n = x.shape()[0], cin = x.shape()[1], h = x.shape()[2], wd = x.shape()[3];
    const Index cout = w.shape()[0], cin_g = w.shape()[1], kh = o.kernel.h, kw = o.kernel.w;
    const Index oh = (h + 2 * o.padding.h - o.dilation.h * (kh - 1) - 1) / o.stride.h + 1;
    const Index ow = (wd + 2 * o.padding.w - o.dilation.w * (kw - 1) - 1) / o.stride.w + 1;
    const Index cout_g = cout / o.groups;
    Tensor<double> y(Shape{n, cout, oh, ow});
    auto X = x.view<4>();
    auto Y = y.view<4>();
    TensorView<const double, 4> W(w.data(), {cout, cin_g, kh, kw});
    (void)cin;
    for (Index b0 = 0; b0 < n; ++b0)
        for (Index co = 0; co < cout; ++co)
            for (Index i = 0; i < oh; ++i)
                for (Index j = 0; j < ow; ++j) {
                    double s = b ? b->data()[co] : 0.0;
                    Index g = co / cout_g;
                    for (Index ci = 0; ci < cin_g; ++ci)
                        for (Index a = 0; a < kh; ++a)
                            for (Index c = 0; c < kw; ++c) {
                                Index ii = i * o.stride.h - o.padding.h + a * o.dilation.h;
                                Index jj = j * o.stride.w - o.padding.w + c * o.dilation.w;
                                if (ii < 0 || ii >= h || jj < 0 || jj >= wd) continue;
                                s += W(co, ci, a, c) * X(b0, g * cin_g + ci, ii, jj);
                            }
                    Y(b0, co, i, j) = s;
                }
    return y;
}

// start + one output (r, q) of a 3x3 depthwise conv of padding 1 in double: weights w9, the
// input plane h x w read through at(pixel index)
template <class W, class In>
double depthwise3x3_ref(const W* w9, double start, Index h, Index w, Index stride, Index r, Index q, In&& at) {
    for (Index i = 0; i < 3; ++i)
        for (Index j = 0; j < 3; ++j) {
            const Index ii = r * stride + i - 1, jj = q * stride + j - 1;
            if (ii >= 0 && ii < h && jj >= 0 && jj < w) start += double(w9[i * 3 + j]) * double(at(ii * w + jj));
        }
    return start;
}

// The geometry of a 3x3 conv of padding 1 and stride s on an h x w input
kernels::ConvGeometry same3x3(Index h, Index w, Index s) {
    kernels::ConvGeometry g{.in_h = h, .in_w = w, .kernel_h = 3, .kernel_w = 3, .stride_h = s, .stride_w = s, .pad_h = 1, .pad_w = 1};
    g.out_h = kernels::ConvGeometry::out_extent(h, 3, s, 1, 1);
    g.out_w = kernels::ConvGeometry::out_extent(w, 3, s, 1, 1);
    return g;
}

// Random operands of a 1x1 expansion of cin channels to cexp on an h x w input and of the
// depthwise 3x3 conv after it, a NaN in the input (a row's last pixel, in channel 0), and the
// expansion's weights packed for the direct tiles
template <class T>
struct ExpansionOperands {
    Index cin, cexp, n;
    Tensor<T> x, ew, eb, w, bias;
    std::vector<T> packed;
    ExpansionOperands(Index cin_, Index cexp_, Index h, Index width)
        : cin(cin_), cexp(cexp_), n(h * width),
          x(test::random_tensor<T>({cin, h, width}, 3 * h + width, -2.0, 2.0)),
          ew(test::random_tensor<T>({cexp, cin}, 5 + width)),
          eb(test::random_tensor<T>({cexp}, 6 + width)),
          w(test::random_tensor<T>({cexp, 3, 3}, 7 + width)),
          bias(test::random_tensor<T>({cexp}, 8 + width)),
          packed(static_cast<std::size_t>(kernels::direct_packed_size(cexp, cin, 1))) {
        x[(h / 2) * width + width - 1] = std::numeric_limits<T>::quiet_NaN();
        kernels::pack_direct_weights(ew.data(), cexp, cin, 1, packed.data());
    }
    // the expansion in double (with its bias and ReLU6 unless plain), NaN where the input pixel is
    std::vector<double> expanded(bool plain) const {
        std::vector<double> e(static_cast<std::size_t>(cexp * n));
        for (Index o = 0; o < cexp; ++o)
            for (Index p = 0; p < n; ++p) {
                double s = plain ? 0.0 : double(eb[o]);
                for (Index k = 0; k < cin; ++k) s += double(ew[o * cin + k]) * double(x[k * n + p]);
                e[o * n + p] = plain || std::isnan(s) ? s : std::clamp(s, 0.0, 6.0);
            }
        return e;
    }
};

// Checks y [cout, ho, wo] against a depthwise 3x3 of padding 1 and stride s (weights w, bias b)
// over e [cexp, h, w] in double, followed by a 1x1 projection (pw, pb) and the residual res,
// ReLU6 after the depthwise conv and ReLU after the projection unless plain (then without
// biases, residual and activations); NaN only where the reference has one. `what` names the case.
template <class T>
void check_dw_projected(const std::vector<double>& e, Index h, Index w, Index s, const Tensor<T>& dw, const Tensor<T>& b,
                        const Tensor<T>& pw, const Tensor<T>& pb, const Tensor<T>& res, bool plain, const Tensor<T>& y,
                        double tol, const std::string& what) {
    const Index cexp = dw.shape()[0], cout = y.shape()[0], ho = y.shape()[1], wo = y.shape()[2], n = h * w, n_out = ho * wo;
    std::vector<double> z(static_cast<std::size_t>(cexp * n_out));
    for (Index o = 0; o < cexp; ++o)
        for (Index r = 0; r < ho; ++r)
            for (Index q = 0; q < wo; ++q) {
                const double v = depthwise3x3_ref(dw.data() + o * 9, plain ? 0.0 : double(b[o]), h, w, s, r, q,
                                                  [&](Index k) { return e[o * n + k]; });
                z[o * n_out + r * wo + q] = plain || std::isnan(v) ? v : std::clamp(v, 0.0, 6.0);
            }
    for (Index o = 0; o < cout; ++o)
        for (Index p = 0; p < n_out; ++p) {
            double v = plain ? 0.0 : double(pb[o]) + double(res[o * n_out + p]);
            for (Index k = 0; k < cexp; ++k) v += double(pw[o * cexp + k]) * z[k * n_out + p];
            const double want = plain || std::isnan(v) ? v : std::max(v, 0.0);
            const double got = y[o * n_out + p];
            INFO((sizeof(T) == 4 ? "float " : "double ") << (plain ? "plain " : "fused ") << what << " output " << o << ", " << p);
            REQUIRE(std::isnan(got) == std::isnan(want));
            if (!std::isnan(want)) REQUIRE(std::abs(got - want) <= tol * std::max(1.0, std::abs(want)));
        }
}

}  // namespace

TEST_CASE("Conv2d matches the reference on random shapes", "[conv]") {
    struct Case {
        Index n, cin, h, w;
        Conv2dOptions o;
    };
    std::vector<Case> cases{
        {1, 3, 9, 7, {.out_channels = 7, .kernel = 3, .padding = 1}},
        {2, 7, 10, 13, {.out_channels = 33, .kernel = 3, .stride = 2, .padding = 1, .bias = false}},
        {1, 6, 11, 8, {.out_channels = 9, .kernel = 3, .padding = 2, .dilation = 2, .groups = 3}},
        {2, 33, 5, 6, {.out_channels = 7, .kernel = 1}},
        {1, 8, 9, 9, {.out_channels = 8, .kernel = 3, .stride = 2, .padding = 1, .groups = 8}},   // depthwise
        {1, 4, 7, 10, {.out_channels = 12, .kernel = 3, .padding = 1, .groups = 4}},              // depthwise x3
        {1, 5, 12, 9, {.out_channels = 6, .kernel = {1, 5}, .stride = {2, 1}, .padding = {0, 2}}},
        {2, 3, 16, 14, {.out_channels = 8, .kernel = 7, .stride = 2, .padding = 3, .bias = false}},
        {1, 4, 8, 8, {.out_channels = 4, .kernel = 3, .stride = 2, .padding = 0, .dilation = 2, .groups = 4}},
        {1, 6, 7, 7, {.out_channels = 4, .kernel = 1, .stride = 2}},
        // 1x1 over a plane wide enough to be split into one band of pixels per thread
        {2, 7, 12, 11, {.out_channels = 5, .kernel = 1}},
        // 1x1 with at most 16 outputs or at most 32 inputs over 256 pixels or more: the direct tiles
        // in place (partial panels, a last step shifted back; whole panels and steps); 17 outputs
        // from 33 inputs stay on the GEMM
        {2, 7, 17, 17, {.out_channels = 7, .kernel = 1}},
        {1, 40, 16, 16, {.out_channels = 16, .kernel = 1, .bias = false}},
        {1, 32, 16, 17, {.out_channels = 21, .kernel = 1}},
        {1, 33, 16, 16, {.out_channels = 17, .kernel = 1}},
        // few pixels, many output channels: split into bands of weight rows per thread
        {1, 9, 5, 6, {.out_channels = 40, .kernel = 1}},
        {2, 5, 6, 7, {.out_channels = 36, .kernel = 3, .padding = 1}},
        // wide planes: split into pixel blocks that threads lay out and multiply on their own
        {1, 64, 40, 45, {.out_channels = 5, .kernel = 3, .padding = 1}},
        {2, 48, 37, 50, {.out_channels = 4, .kernel = 3, .stride = {2, 1}, .padding = 2, .dilation = 2, .groups = 2}},
        // the direct kernel (3x3 stride 1 or 2, 7x7 stride 2): odd channel counts, partial
        // panels and steps, rows narrower and wider than a step, any padding
        {2, 13, 9, 30, {.out_channels = 21, .kernel = 3, .padding = 1, .bias = false}},
        {1, 3, 5, 64, {.out_channels = 8, .kernel = 3, .padding = 1}},
        {1, 17, 4, 41, {.out_channels = 9, .kernel = 3, .padding = 1}},
        {1, 5, 7, 7, {.out_channels = 3, .kernel = 3}},
        {1, 4, 6, 5, {.out_channels = 17, .kernel = 3, .padding = {2, 1}}},
        {1, 2, 1, 1, {.out_channels = 5, .kernel = 3, .padding = 1}},
        {2, 6, 11, 13, {.out_channels = 10, .kernel = 3, .stride = 2, .padding = 1}},
        {1, 6, 10, 12, {.out_channels = 9, .kernel = 3, .stride = 2, .bias = false}},
        {1, 3, 2, 3, {.out_channels = 4, .kernel = 3, .stride = 2, .padding = 1}},
        {1, 3, 23, 19, {.out_channels = 13, .kernel = 7, .stride = 2, .padding = 3}},
        {1, 2, 9, 8, {.out_channels = 8, .kernel = 7, .stride = 2, .padding = {2, 3}}},
        // panels with 1, 2 or up to 4 rows in use (of 4, 6 or 8): several steps to a tile where a
        // thread's block of steps holds them (planes of 25 steps or more on two threads), then
        // single steps; AVX's panels with 3 or 4 rows in use take a 4-row tile of one step
        {1, 5, 20, 23, {.out_channels = 1, .kernel = 3, .padding = 1}},
        {1, 4, 60, 30, {.out_channels = 2, .kernel = 3, .stride = 2, .padding = 1}},
        {2, 3, 17, 26, {.out_channels = 11, .kernel = 3, .padding = 1}},
        {1, 3, 27, 25, {.out_channels = 6, .kernel = 3, .padding = 1}},
        {1, 3, 60, 31, {.out_channels = 10, .kernel = 7, .stride = 2, .padding = 3, .bias = false}},
        // stride-2 phase planes of every padding parity over odd and even widths
        {1, 3, 9, 11, {.out_channels = 5, .kernel = 3, .stride = 2}},
        {1, 3, 9, 11, {.out_channels = 5, .kernel = 3, .stride = 2, .padding = 2}},
        {1, 2, 6, 37, {.out_channels = 3, .kernel = 3, .stride = 2, .padding = 2}},
        {1, 2, 13, 19, {.out_channels = 5, .kernel = 7, .stride = 2, .padding = 2}},
        {1, 4, 9, 11, {.out_channels = 4, .kernel = 3, .stride = 2, .padding = 2, .groups = 4}},
        // stride 2 with 256 input channels: im2col + GEMM, the direct kernel with AVX
        {1, 256, 6, 5, {.out_channels = 3, .kernel = 3, .stride = 2, .padding = 1}},
        // depthwise 3x3 through phase planes: stride 1 and 2, multipliers, no padding, a 1x1 input
        {1, 6, 13, 9, {.out_channels = 6, .kernel = 3, .stride = 2, .padding = 1, .groups = 6}},
        {2, 3, 10, 12, {.out_channels = 6, .kernel = 3, .stride = 2, .groups = 3}},
        {1, 5, 9, 21, {.out_channels = 10, .kernel = 3, .groups = 5, .bias = false}},
        {1, 4, 1, 1, {.out_channels = 4, .kernel = 3, .stride = 2, .padding = 1, .groups = 4}},
        // depthwise rows of every width class (whole groups of 4, 2 and 1 vectors with a shifted
        // last group, narrower than a vector) in float's and double's lanes
        {1, 3, 5, 71, {.out_channels = 3, .kernel = 3, .padding = 1, .groups = 3}},
        {2, 2, 6, 37, {.out_channels = 4, .kernel = 3, .stride = 2, .padding = 1, .groups = 2}},
        {1, 2, 4, 23, {.out_channels = 2, .kernel = 3, .padding = 1, .groups = 2}},
        {1, 2, 3, 11, {.out_channels = 2, .kernel = 3, .padding = 1, .groups = 2}},
        {1, 3, 5, 6, {.out_channels = 3, .kernel = 3, .padding = 1, .groups = 3}},
    };
    std::uint64_t seed = 1;
    for (const auto& c : cases) {
        GraphBuilder<double> b(seed);
        auto x = b.input("x", {c.n, c.cin, c.h, c.w});
        b.output(nn::conv2d(x, "conv", c.o));
        auto g = std::move(b).build();
        auto in = test::random_tensor<double>({c.n, c.cin, c.h, c.w}, ++seed);
        auto y = test::run(g, in);
        const auto* bias = c.o.bias ? &g.parameter("conv.bias") : nullptr;
        auto ref = ref_conv2d(in, g.parameter("conv.weight"), bias, c.o);
        INFO("case cin=" << c.cin << " cout=" << c.o.out_channels << " groups=" << c.o.groups);
        CHECK(test::max_rel_err(y, ref) < 1e-12);
    }
}

TEST_CASE("Conv2d applies a fused activation after the bias on every kernel path", "[conv]") {
    struct Case {
        Index cin, h, w;
        Conv2dOptions o;
    };
    std::vector<Case> cases{
        {5, 6, 40, {.out_channels = 11, .kernel = 3, .padding = 1, .activation = FusedActivation::relu}},    // direct
        {5, 6, 9, {.out_channels = 11, .kernel = 3, .padding = 1, .activation = FusedActivation::relu6}},    // im2col
        {7, 12, 11, {.out_channels = 5, .kernel = 1, .activation = FusedActivation::relu}},                  // 1x1
        {9, 17, 17, {.out_channels = 6, .kernel = 1, .activation = FusedActivation::relu6}},                 // 1x1 direct
        {4, 7, 10, {.out_channels = 8, .kernel = 3, .padding = 1, .groups = 4, .activation = FusedActivation::relu6}},
        {64, 40, 45, {.out_channels = 5, .kernel = 3, .stride = 2, .padding = 1, .activation = FusedActivation::relu}},
        {3, 17, 15, {.out_channels = 6, .kernel = 7, .stride = 2, .padding = 3, .activation = FusedActivation::relu}},
        {300, 7, 9, {.out_channels = 5, .kernel = 3, .stride = 2, .padding = 1, .activation = FusedActivation::relu}},
        {6, 9, 11, {.out_channels = 6, .kernel = 3, .stride = 2, .padding = 1, .groups = 6, .activation = FusedActivation::relu6}},
        {3, 5, 70, {.out_channels = 3, .kernel = 3, .padding = 1, .groups = 3, .activation = FusedActivation::relu6}},
        {3, 5, 19, {.out_channels = 3, .kernel = 3, .padding = 1, .groups = 3, .activation = FusedActivation::relu}},
    };
    std::uint64_t seed = 50;
    for (const auto& c : cases) {
        GraphBuilder<double> b(seed);
        auto x = b.input("x", {1, c.cin, c.h, c.w});
        b.output(nn::conv2d(x, "conv", c.o));
        auto g = std::move(b).build();
        auto in = test::random_tensor<double>({1, c.cin, c.h, c.w}, ++seed, -4.0, 4.0);
        auto ref = ref_conv2d(in, g.parameter("conv.weight"), &g.parameter("conv.bias"), c.o);
        for (auto& v : ref) v = c.o.activation == FusedActivation::relu ? std::max(v, 0.0) : std::clamp(v, 0.0, 6.0);
        INFO("case cin=" << c.cin << " w=" << c.w);
        CHECK(test::max_rel_err(test::run(g, in), ref) < 1e-12);
    }
}

namespace {
// A NaN in row 2, column width - 4 of both channels: the outputs whose window holds it are NaN,
// the others finite, for a fused ReLU and ReLU6 on the direct, depthwise and 1x1 paths.
template <class T>
void check_fused_relu_keeps_nan(Index width) {
    const Index qn = width - 4;
    for (const auto act : {FusedActivation::relu, FusedActivation::relu6})
        for (const auto& [groups, k] : {std::pair<Index, Index>{1, 3}, {2, 3}, {1, 1}}) {  // direct, depthwise, 1x1
            GraphBuilder<T> b(5);
            auto x = b.input("x", {1, 2, 5, width});
            b.output(nn::conv2d(x, "conv", {.out_channels = 2, .kernel = k, .padding = k / 2, .groups = groups,
                                            .activation = act}));
            auto g = std::move(b).build();
            auto in = test::random_tensor<T>({1, 2, 5, width}, 9);
            for (Index c = 0; c < 2; ++c) in[(c * 5 + 2) * width + qn] = std::numeric_limits<T>::quiet_NaN();
            auto y = test::run(g, in);
            const Index reach = k / 2;
            for (Index c = 0; c < 2; ++c)
                for (Index r = 0; r < 5; ++r)
                    for (Index q = 0; q < width; ++q) {
                        INFO("activation " << fused_activation_name(act) << " groups " << groups << " kernel " << k
                                           << " width " << width << " channel " << c << " output " << r << ", " << q);
                        CHECK(std::isnan(y[(c * 5 + r) * width + q]) ==
                              (std::abs(r - 2) <= reach && std::abs(q - qn) <= reach));
                    }
        }
}
}  // namespace

TEST_CASE("A fused ReLU or ReLU6 keeps a NaN on every output path of a row, as ReLU does", "[conv]") {
    // width 70: whole vectors finished in registers, row tails through memory, the 1x1 direct
    // tiles (350 pixels); width 6: a depthwise plane narrower than a float vector (flat outputs)
    for (const Index width : {Index(70), Index(6)}) {
        check_fused_relu_keeps_nan<double>(width);
        check_fused_relu_keeps_nan<float>(width);
    }
}

TEST_CASE("1x1 convs take the direct tiles: pre-packed with AVX or AVX-512 over a step of pixels or more, else "
          "with few outputs or inputs",
          "[conv]") {
    // With AVX or AVX-512 and weights packed once per plan, every 1x1 conv over at least direct_nr
    // pixels (8 doubles with AVX, 16 with AVX-512) runs on the direct tiles; narrower vectors, or
    // weights not pre-packed, keep it to at least 256 pixels with at most 16 outputs or 32 inputs.
    // Both executors compute the product, also where a panel has up to 4 of 8 rows in use (17, 12
    // and 3 outputs: a tile of 4 rows).
    const bool wide = kernels::detail::vector_bytes >= 32;
    struct Case {
        Index cin, cout, h, w;
        bool direct;  // packed in panels of direct_mr outputs, else the GEMM (nothing packed)
    };
    for (const auto& c : {Case{32, 21, 16, 17, true}, Case{40, 16, 16, 16, true}, Case{33, 17, 16, 16, wide},
                          Case{8, 40, 15, 17, wide},  // 255 pixels
                          Case{24, 12, 15, 17, wide}, // 8 + 4 outputs: the 4-row tile, two steps at a time and then one
                          Case{9, 3, 7, 9, wide},     // 3 outputs, 63 pixels
                          Case{64, 72, 7, 7, wide},   // 49 pixels: more jobs than steps, panels split in groups
                          Case{64, 64, 4, 4, wide},   // 16 pixels
                          Case{64, 64, 3, 5, wide && kernels::direct_nr<double>() <= 15},  // 15
                          Case{64, 64, 1, 7, false}}) {  // 7 pixels: less than a step
        GraphBuilder<double> b(3);
        auto x = b.input("x", {1, c.cin, c.h, c.w});
        b.output(nn::conv2d(x, "p", {.out_channels = c.cout, .kernel = 1}));
        auto g = std::move(b).build();
        Executor<double> e(g), plain(g);
        e.set_prepack(true);
        const auto in = test::random_tensor<double>({1, c.cin, c.h, c.w}, 2);
        const auto y = e.forward(in), y_plain = plain.forward(in);
        const Index panels = (c.cout + kernels::direct_mr - 1) / kernels::direct_mr;
        INFO("cin " << c.cin << " cout " << c.cout << " pixels " << c.h * c.w);
        CHECK(e.plan().packed_bytes == (c.direct ? Index(panels * kernels::direct_mr * c.cin * sizeof(double)) : 0));
        // either way the product of the weights and the image, plus the bias
        const auto& w = g.parameter("p.weight");
        const auto& bias = g.parameter("p.bias");
        double worst = 0;
        for (Index o = 0; o < c.cout; ++o)
            for (Index q = 0; q < c.h * c.w; ++q) {
                double want = bias.data()[o];
                for (Index i = 0; i < c.cin; ++i) want += w.data()[o * c.cin + i] * in.data()[i * c.h * c.w + q];
                worst = std::max({worst, std::abs(want - y.data()[o * c.h * c.w + q]),
                                  std::abs(want - y_plain.data()[o * c.h * c.w + q])});
            }
        CHECK(worst < 1e-12);
    }
}

TEST_CASE("Conv2d rejects a wrong input shape naming the node", "[conv]") {
    GraphBuilder<float> b;
    auto x = b.input("x", {1, 3, 8, 8});
    b.output(nn::conv2d(x, "stem", {.out_channels = 4}));
    auto g = std::move(b).build();
    Executor<float> ex(g);
    Tensor<float> bad(Shape{1, 4, 8, 8});
    CHECK_THROWS_AS(ex.forward(bad), ShapeError);
    Tensor<float> tiny(Shape{1, 3, 2, 2});
    CHECK_THROWS_WITH(ex.forward(tiny), Catch::Contains("stem") && Catch::Contains("too small"));
    // a stride does not make a window fit: 2x2 under an unpadded 3x3 of stride 2 has none (as in PyTorch)
    GraphBuilder<float> b2;
    auto x2 = b2.input("x", {1, 3, 8, 8});
    b2.output(nn::conv2d(x2, "strided", {.out_channels = 4, .kernel = 3, .stride = 2}));
    auto g2 = std::move(b2).build();
    Executor<float> ex2(g2);
    CHECK_THROWS_WITH(ex2.forward(tiny), Catch::Contains("strided") && Catch::Contains("too small"));
}

TEST_CASE("a pre-packing executor packs direct-kernel weights once per plan and computes the same", "[conv]") {
    GraphBuilder<double> b(7);
    auto x = b.input("x", {1, 5, 12, 10});
    auto y = nn::conv2d(x, "a", {.out_channels = 11, .kernel = 3, .padding = 1});          // direct 3x3
    y = nn::conv2d(y, "b", {.out_channels = 6, .kernel = 1});                             // direct with AVX or AVX-512, else GEMM
    y = nn::conv2d(y, "c", {.out_channels = 9, .kernel = 7, .stride = 2, .padding = 3});  // direct 7x7 stride 2
    b.output(y);
    auto g = std::move(b).build();
    auto in = test::random_tensor<double>({1, 5, 12, 10}, 3);
    Executor<double> plain(g), packed(g);
    packed.forward(in);
    packed.set_prepack(true);  // after a run: packs for the current plan at once, outputs stay readable
    CHECK(packed.prepack());
    CHECK(packed.plan().packed_bytes > 0);
    CHECK(packed.value(g.outputs()[0]).shape == Shape{1, 9, 6, 5});
    const auto want = plain.forward(in);
    CHECK(test::max_rel_err(packed.forward(in), want) == 0.0);
    // panels of direct_mr (8 with AVX-512, 6 with AVX, else 4) outputs: 11 and 9 rows round up to whole panels
    const auto whole = [](Index rows) { return (rows + kernels::direct_mr - 1) / kernels::direct_mr * kernels::direct_mr; };
    const Index b_packed = kernels::detail::vector_bytes >= 32 ? whole(6) * 11 : 0;  // the 1x1 conv over 120 pixels
    CHECK(packed.plan().packed_bytes == Index((whole(11) * 5 * 9 + b_packed + whole(9) * 6 * 49) * sizeof(double)));
    CHECK(plain.plan().packed_bytes == 0);
    // new weight values: packing again (as InferenceModel::refresh does) follows them
    auto& cw = g.parameter("c.weight");
    for (Index i = 0; i < cw.numel(); ++i) cw.data()[i] *= -0.5;
    packed.set_prepack(true);
    const auto changed = plain.forward(in);
    CHECK(test::max_rel_err(changed, want) > 0.1);
    CHECK(test::max_rel_err(packed.forward(in), changed) == 0.0);
    // a node added since the last run: set_prepack drops the stale plan, the next run plans and packs
    const NodeId d = g.add_node("d", std::make_unique<Conv2d<double>>(Conv2dOptions{.kernel = 3, .padding = 1, .bias = false}),
                                {g.outputs()[0]}, {g.add_parameter(Parameter<double>("d.weight", Shape{2, 9, 3, 3}))});
    g.add_output(g.node(d).outputs[0]);
    test::randomize(g, 8);
    packed.set_prepack(true);
    CHECK(packed.plan().value_shapes.empty());
    const auto grown = plain.forward({in.ref()});
    REQUIRE(grown.size() == 2);
    CHECK(grown[1].shape() == Shape{1, 2, 6, 5});
    CHECK(test::max_rel_err(packed.forward({in.ref()})[1], grown[1]) == 0.0);
    CHECK(packed.plan().packed_bytes ==
          Index((whole(11) * 5 * 9 + b_packed + whole(9) * 6 * 49 + whole(2) * 9 * 9) * sizeof(double)));
}

TEST_CASE("stride-2 phase planes split a row into its even and odd columns, in bounds", "[conv]") {
    // every length around the vector widths, float and double; sentinels past both outputs stay untouched
    auto check = []<class T>(T) {
        for (Index n = 0; n <= 41; ++n) {
            std::vector<T> src(static_cast<std::size_t>(n));
            for (Index i = 0; i < n; ++i) src[i] = T(i + 1);
            const Index ne = (n + 1) / 2, no = n / 2;
            std::vector<T> even(static_cast<std::size_t>(ne + 1), T(-7)), odd(static_cast<std::size_t>(no + 1), T(-7));
            kernels::detail::split_even_odd(src.data(), n, even.data(), odd.data());
            for (Index k = 0; k < ne; ++k) CHECK(even[k] == T(2 * k + 1));
            for (Index k = 0; k < no; ++k) CHECK(odd[k] == T(2 * k + 2));
            CHECK(even[ne] == T(-7));
            CHECK(odd[no] == T(-7));
            std::vector<T> only(static_cast<std::size_t>(ne + 1), T(-7));  // without odd outputs
            kernels::detail::split_even_odd(src.data(), n, only.data(), static_cast<T*>(nullptr));
            CHECK(std::equal(only.begin(), only.end(), even.begin()));
        }
    };
    check(0.0f);
    check(0.0);
}

TEST_CASE("wrap masks clear the first and last column of each row, one shared table per plane shape", "[conv]") {
    // 5 rows of 7: left(f) is zero at columns 0, right(f) at columns 6, all bits set elsewhere;
    // a second object of the same shape reads the same table, another shape its own; a table
    // past the shared budget (2^22 elements) is the object's own and still right
    using M = kernels::detail::WrapMasks<float>;
    auto check = [](const M& m, Index n, Index w) {
        const auto v = m.view();
        for (Index f = 0; f < n; ++f) {
            CHECK(v.keep_left[f] == (f % w == 0 ? 0 : ~M::Bits(0)));
            CHECK(v.keep_right[f] == (f % w == w - 1 ? 0 : ~M::Bits(0)));
        }
    };
    const M a(35, 7), b(35, 7), c(35, 5);
    check(a, 35, 7);
    check(c, 35, 5);
    CHECK(a.view().keep_left == b.view().keep_left);
    CHECK(a.view().keep_left != c.view().keep_left);
    const Index big = (Index(1) << 21) + 64;  // 2 big > 2^22: never shared
    const M d(big, 64), e(big, 64);
    CHECK(d.view().keep_left != e.view().keep_left);
    CHECK(d.view().keep_left[big - 64] == 0);
    CHECK(d.view().keep_right[big - 1] == 0);
    CHECK(d.view().keep_right[big - 2] == ~M::Bits(0));
}

TEST_CASE("a 1x1 conv on the direct tiles packs its weights once per plan and computes the same", "[conv]") {
    GraphBuilder<double> b(11);
    auto x = b.input("x", {2, 9, 17, 16});
    b.output(nn::conv2d(x, "p", {.out_channels = 7, .kernel = 1, .activation = FusedActivation::relu}));
    auto g = std::move(b).build();
    auto in = test::random_tensor<double>({2, 9, 17, 16}, 4);
    Executor<double> plain(g), packed(g);
    packed.set_prepack(true);
    const auto want = plain.forward(in);
    CHECK(test::max_rel_err(packed.forward(in), want) == 0.0);
    const Index panels = (7 + kernels::direct_mr - 1) / kernels::direct_mr;
    CHECK(packed.plan().packed_bytes == Index(panels * kernels::direct_mr * 9 * sizeof(double)));
}

TEST_CASE("a float 1x1 conv on the direct tiles matches a double reference", "[conv]") {
    // float's vectors hold twice double's lanes: other step and panel boundaries than the double tests
    for (Index cout : {Index(3), Index(16)}) {
        GraphBuilder<float> b(13);
        auto x = b.input("x", {1, 9, 17, 19});
        b.output(nn::conv2d(x, "p", {.out_channels = cout, .kernel = 1}));
        auto g = std::move(b).build();
        auto in = test::random_tensor<float>({1, 9, 17, 19}, 5);
        const auto y = test::run(g, in);
        const float* w = g.parameter("p.weight").data();
        const float* bias = g.parameter("p.bias").data();
        double worst = 0;
        for (Index o = 0; o < cout; ++o)
            for (Index p = 0; p < 17 * 19; ++p) {
                double want = bias[o];
                for (Index c = 0; c < 9; ++c) want += double(w[o * 9 + c]) * double(in.data()[c * 17 * 19 + p]);
                worst = std::max(worst, std::abs(double(y.data()[o * 17 * 19 + p]) - want));
            }
        CHECK(worst < 1e-5);
    }
}

TEST_CASE("a 1x1 conv reading a BatchNorm and ReLU map of its input matches a double reference", "[conv]") {
    // conv_pointwise with an InputNorm: y = act(b + W relu(a x + s)). Small planes, where the
    // panels split into groups and each job maps its block (7 x 7 and 14 x 14 with 40 outputs,
    // 5 panels), and larger ones in blocks, on one to three threads
    struct Case {
        Index cin, cout, n, threads;
    };
    for (const auto& c : {Case{24, 40, 49, 2}, Case{24, 40, 49, 3}, Case{7, 40, 196, 2}, Case{9, 12, 196, 1},
                          Case{33, 17, 3000, 2}, Case{5, 3, 64, 2}}) {
        const ThreadCountScope threads(int(c.threads));
        auto x = test::random_tensor<float>({c.cin, c.n}, 21);
        auto w = test::random_tensor<float>({c.cout, c.cin}, 22);
        auto bias = test::random_tensor<float>({c.cout}, 23);
        auto scale = test::random_tensor<float>({c.cin}, 24);
        auto shift = test::random_tensor<float>({c.cin}, 25);
        std::vector<float> packed(static_cast<std::size_t>(kernels::direct_packed_size(c.cout, c.cin, 1)));
        kernels::pack_direct_weights(w.data(), c.cout, c.cin, 1, packed.data());
        const kernels::InputNorm<float> norm{scale.data(), shift.data(), FusedActivation::relu};
        std::vector<float> y(static_cast<std::size_t>(c.cout * c.n), -7.f);
        kernels::conv_pointwise(x.data(), c.cin, c.n, c.cout, packed.data(), bias.data(), FusedActivation::relu6, y.data(),
                                static_cast<const float*>(nullptr), &norm);
        double worst = 0;
        for (Index o = 0; o < c.cout; ++o)
            for (Index p = 0; p < c.n; ++p) {
                double want = bias[o];
                for (Index k = 0; k < c.cin; ++k)
                    want += double(w[o * c.cin + k]) * std::max(0.0, double(scale[k]) * x[k * c.n + p] + double(shift[k]));
                want = std::clamp(want, 0.0, 6.0);
                worst = std::max(worst, std::abs(double(y[static_cast<std::size_t>(o * c.n + p)]) - want));
            }
        INFO(c.cin << " -> " << c.cout << " over " << c.n << " pixels on " << c.threads << " threads");
        CHECK(worst < 1e-5);
    }
}

TEST_CASE("which 3x3 convs of padding 1 run flat, per target", "[conv]") {
    using kernels::detail::flat3x3_fits;
    constexpr int vb = kernels::detail::vector_bytes;
    // h, w, outputs: pruned DenseNet's growth conv, a pruned ResNet's 56 x 56 and 14 x 14 layers, a
    // dense ResNet's 56 x 56 and 7 x 7 layers, DnCNN (channels 256 KiB apart), a plane of 4 KiB
    for (const auto& [h, w, cout, avx] : {std::tuple<Index, Index, Index, bool>{56, 56, 1, true},
                                          {56, 56, 16, true}, {14, 14, 64, true}, {56, 56, 64, false},
                                          {7, 7, 512, false}, {256, 256, 16, false}, {32, 32, 8, false}}) {
        INFO(h << " x " << w << ", " << cout << " outputs");
        CHECK(flat3x3_fits<float, 1>(h, w, cout) == (vb >= 64 || (vb == 32 && avx)));
        CHECK(flat3x3_fits<float, 2>(h, w, cout) == (vb >= 64));
    }
    if constexpr (vb == 32) CHECK(flat3x3_fits<double, 1>(32, 32, 8) == false);  // 8 KiB apart
    if constexpr (vb == 32) CHECK(flat3x3_fits<double, 1>(24, 24, 8) == true);
}

TEST_CASE("depthwise 3x3 with padding 1 matches the reference on flat and padded planes and in place, NaN kept to "
          "its window",
          "[conv]") {
    // Calls the kernels themselves, in float and double, with bias, a residual and ReLU6 and with none
    // of them: the one depthwise_conv2d picks, then the padded planes (depthwise_direct), the flat
    // ones (depthwise_flat, given a whole vector of outputs) and, with AVX-512, the row tiles read
    // in place (depthwise_rows) each. Planes from 1 to 65 wide, odd and even, stride 1 and 2,
    // multipliers 1 and 2; for the row tiles outputs of 1 to 3 rows (tiles of one row), 4, 5 (the
    // last tile shifted back over the one before), 9, and 57 and 60 (bands of rows on two and
    // three threads), narrower than a vector (one masked tile a row), one vector wide and more,
    // inputs of odd and even width and height at stride 2. A NaN
    // at the end of one input row and the start of another must reach exactly the outputs whose
    // window holds it, not the neighbouring row that a flat tap one column off wraps onto, nor the
    // other side of a row tile.
    auto check = []<class T>(T, double tol) {
        struct Case {
            Index h, w, stride, multiplier, threads = 0;  // 0: as set (and 3 channels, else 8: work for every thread)
        };
        for (const auto& c : {Case{60, 20, 1, 1, 2}, Case{113, 9, 2, 2, 3}, Case{7, 7, 1, 1}, Case{9, 9, 2, 1}, Case{14, 14, 2, 2}, Case{15, 15, 2, 1},
                              Case{14, 14, 1, 2}, Case{5, 32, 1, 1}, Case{6, 33, 1, 1}, Case{4, 63, 2, 1},
                              Case{4, 65, 2, 1}, Case{2, 2, 1, 1}, Case{3, 5, 2, 2}, Case{9, 1, 1, 1}, Case{1, 9, 2, 1},
                              Case{1, 17, 1, 1}, Case{3, 24, 1, 2}, Case{4, 16, 1, 1}, Case{5, 40, 1, 1}, Case{9, 49, 1, 1},
                              Case{9, 8, 1, 1}, Case{2, 32, 2, 1}, Case{9, 33, 2, 2}, Case{10, 40, 2, 1}, Case{7, 15, 2, 1},
                              Case{5, 33, 2, 1}, Case{7, 31, 2, 1}}) {
            const ThreadCountScope threads(int(c.threads));
            const Index ch = c.threads > 0 ? 8 : 3, cout = ch * c.multiplier;
            kernels::ConvGeometry g{.in_h = c.h, .in_w = c.w, .kernel_h = 3, .kernel_w = 3, .stride_h = c.stride,
                                    .stride_w = c.stride, .pad_h = 1, .pad_w = 1};
            g.out_h = kernels::ConvGeometry::out_extent(c.h, 3, c.stride, 1, 1);
            g.out_w = kernels::ConvGeometry::out_extent(c.w, 3, c.stride, 1, 1);
            const Index n = g.out_h * g.out_w;
            auto x = test::random_tensor<T>({ch, c.h, c.w}, 3 * c.h + c.w, -2.0, 4.0);
            auto w = test::random_tensor<T>({cout, 3, 3}, 7 + c.w);
            auto bias = test::random_tensor<T>({cout}, 8 + c.w);
            auto res = test::random_tensor<T>({cout, g.out_h, g.out_w}, 9 + c.w);
            const T nan = std::numeric_limits<T>::quiet_NaN();
            x[std::min<Index>(1, c.h - 1) * c.w + c.w - 1] = nan;                 // channel 0: a row's end,
            x[(2 * c.h + std::min<Index>(3, c.h - 1)) * c.w] = nan;               // channel 2: a row's start
            // kernel 0 is the one the rule picks (which differs per ISA), 1 the padded planes, 2 the flat
            // ones, 3 the row tiles; each with bias, residual and ReLU6, then plain
            for (int run = 0; run < 8; ++run) {
                const int kernel = run / 2;
                const bool plain = run % 2 == 1;
                if (kernel == 2 && n < kernels::detail::Lanes<T>::count) continue;  // flat needs a whole vector
#if !defined(__AVX512F__)
                if (kernel == 3) continue;  // the row tiles are AVX-512's
#endif
                Tensor<T> y(Shape{cout, g.out_h, g.out_w});
                const auto act = plain ? FusedActivation::none : FusedActivation::relu6;
                const T* with_bias = plain ? nullptr : bias.data();
                const T* with_res = plain ? nullptr : res.data();
                if (kernel == 0)
                    kernels::depthwise_conv2d(x.data(), cout, c.multiplier, g, w.data(), with_bias, y.data(), act, with_res);
                else if (kernel == 1 && c.stride == 1)
                    kernels::depthwise_direct<T, 3, 1>(x.data(), cout, c.multiplier, g, w.data(), with_bias, y.data(), act, with_res);
                else if (kernel == 1)
                    kernels::depthwise_direct<T, 3, 2>(x.data(), cout, c.multiplier, g, w.data(), with_bias, y.data(), act, with_res);
                else if (kernel == 2 && c.stride == 1)
                    kernels::depthwise_flat<T, 1>(x.data(), cout, c.multiplier, g, w.data(), with_bias, y.data(), act, with_res);
                else if (kernel == 2)
                    kernels::depthwise_flat<T, 2>(x.data(), cout, c.multiplier, g, w.data(), with_bias, y.data(), act, with_res);
#if defined(__AVX512F__)
                else if (c.stride == 1)
                    kernels::depthwise_rows<T, 1>(x.data(), cout, c.multiplier, g, w.data(), with_bias, y.data(), act, with_res);
                else
                    kernels::depthwise_rows<T, 2>(x.data(), cout, c.multiplier, g, w.data(), with_bias, y.data(), act, with_res);
#endif
                for (Index o = 0; o < cout; ++o)
                    for (Index r = 0; r < g.out_h; ++r)
                        for (Index q = 0; q < g.out_w; ++q) {
                            const T* plane = x.data() + (o / c.multiplier) * c.h * c.w;
                            const double s = depthwise3x3_ref(w.data() + o * 9, plain ? 0.0 : double(bias[o]), c.h, c.w,
                                                              c.stride, r, q, [&](Index k) { return plane[k]; });
                            const double want = plain ? s : std::clamp(s + double(res[o * n + r * g.out_w + q]), 0.0, 6.0);
                            const double got = y[o * n + r * g.out_w + q];
                            INFO((sizeof(T) == 4 ? "float" : "double")
                                 << (plain ? " plain" : " fused") << " kernel " << kernel << " plane " << c.h << " x "
                                 << c.w << " stride " << c.stride << " output " << o << ", " << r << ", " << q);
                            REQUIRE(std::isnan(got) == std::isnan(want));
                            if (!std::isnan(want)) REQUIRE(std::abs(got - want) <= tol * std::max(1.0, std::abs(want)));
                        }
            }
        }
    };
    check(0.0f, 1e-5);
    check(0.0, 1e-12);
}

TEST_CASE("a 1x1 expansion and the depthwise 3x3 after it, fused, match the two layers computed apart", "[conv]") {
    // expand_depthwise against a plain loop in double: y = clamp(dw(clamp(E x + e)) + b + r), on
    // planes from 14 to 60 rows (from 56 rows on, one band of rows per thread: one, two and three
    // threads), odd widths and heights at stride 2, expansions to a partial panel (13, 29) and to
    // fewer channels than a panel (3), one input channel and many; ReLU6 after both, or none, with
    // and without the biases and a residual. A NaN in the input reaches only the outputs whose
    // window holds a pixel it expanded into.
#if !defined(__AVX512F__)
    kernels::ConvGeometry small{.in_h = 14, .in_w = 14, .kernel_h = 3, .kernel_w = 3, .pad_h = 1, .pad_w = 1};
    CHECK_FALSE(kernels::expand_depthwise_fits(small));  // the fused kernel is AVX-512's
#else
    auto check = []<class T>(T, double tol) {
        struct Case {
            Index cin, cexp, h, w, stride, threads;
        };
        for (const auto& c : {Case{5, 13, 14, 14, 1, 2}, Case{1, 29, 15, 17, 2, 2}, Case{7, 3, 20, 33, 1, 1},
                              Case{16, 24, 56, 20, 1, 2}, Case{3, 16, 57, 19, 2, 3}, Case{4, 10, 60, 14, 1, 3},
                              Case{9, 17, 58, 15, 2, 1}, Case{2, 8, 14, 40, 2, 2}}) {
            const ThreadCountScope threads(int(c.threads));
            const auto g = same3x3(c.h, c.w, c.stride);
            REQUIRE(kernels::expand_depthwise_fits(g));
            const Index n = c.h * c.w, n_out = g.out_h * g.out_w;
            const ExpansionOperands<T> op(c.cin, c.cexp, c.h, c.w);
            const auto& [x, ew, eb, w, bias] = std::tie(op.x, op.ew, op.eb, op.w, op.bias);
            auto res = test::random_tensor<T>({c.cexp, g.out_h, g.out_w}, 9 + c.w);
            for (const bool plain : {false, true}) {
                const auto act = plain ? FusedActivation::none : FusedActivation::relu6;
                Tensor<T> y(Shape{c.cexp, g.out_h, g.out_w}, T(-7));
                if (c.stride == 1)
                    kernels::expand_depthwise<T, 1>(x.data(), c.cin, g, c.cexp, op.packed.data(), plain ? nullptr : eb.data(),
                                                    act, w.data(), plain ? nullptr : bias.data(), act, y.data(),
                                                    plain ? nullptr : res.data());
                else
                    kernels::expand_depthwise<T, 2>(x.data(), c.cin, g, c.cexp, op.packed.data(), plain ? nullptr : eb.data(),
                                                    act, w.data(), plain ? nullptr : bias.data(), act, y.data(),
                                                    plain ? nullptr : res.data());
                const auto e = op.expanded(plain);
                for (Index o = 0; o < c.cexp; ++o)
                    for (Index r = 0; r < g.out_h; ++r)
                        for (Index q = 0; q < g.out_w; ++q) {
                            const double s = depthwise3x3_ref(w.data() + o * 9, plain ? 0.0 : double(bias[o]), c.h, c.w,
                                                              c.stride, r, q, [&](Index k) { return e[o * n + k]; });
                            const double want = plain || std::isnan(s) ? s : std::clamp(s + double(res[o * n_out + r * g.out_w + q]), 0.0, 6.0);
                            const double got = y[o * n_out + r * g.out_w + q];
                            INFO((sizeof(T) == 4 ? "float" : "double") << (plain ? " plain" : " fused") << " " << c.cin << " -> "
                                 << c.cexp << " at " << c.h << " x " << c.w << " stride " << c.stride << " threads "
                                 << c.threads << " output " << o << ", " << r << ", " << q);
                            REQUIRE(std::isnan(got) == std::isnan(want));
                            if (!std::isnan(want)) REQUIRE(std::abs(got - want) <= tol * std::max(1.0, std::abs(want)));
                        }
            }
        }
    };
    check(0.0f, 1e-5);
    check(0.0, 1e-12);
#endif
}

TEST_CASE("an inverted residual block in one pass matches its three layers computed apart", "[conv]") {
    // inverted_residual against a plain loop in double: y = act_p(P act(dw(act_e(E x + e)) + b) + p + r)
    // at stride 1 and 2. Outputs of 14 to 56 rows in one band (one thread: the two-step path)
    // and in bands of rows on two, three and four threads (and four bands on eight); 6 x 6 to
    // 9 x 9 outputs, and 3 x 16 (no second band of a step of pixels), split by the expanded
    // channels: in one share (one thread, one panel), two, three and five, the partial sums
    // added after. Expansions and projections to partial panels (13, 29, 9, 20, 33) and to
    // fewer channels than a panel (3, 7); ReLU6 after the expansion and the depthwise conv and ReLU after the projection,
    // or none, with and without the biases and a residual. A NaN in the input (at the end of a
    // row: flat order wraps its right neighbour onto the next row) reaches only the outputs
    // whose depthwise window holds a pixel it expanded into, in every projected channel.
    kernels::ConvGeometry small{.in_h = 10, .in_w = 10, .out_h = 5, .out_w = 5, .kernel_h = 3, .kernel_w = 3, .stride_h = 2,
                                .stride_w = 2, .pad_h = 1, .pad_w = 1};
    CHECK_FALSE(kernels::inverted_residual_fits(small));  // 25 outputs: under a step of pixels
#if defined(__AVX512F__)
    auto check = []<class T>(T, double tol) {
        struct Case {
            Index cin, cexp, cout, h, w, stride, threads;
        };
        for (const auto& c : {Case{5, 13, 7, 14, 14, 1, 2}, Case{1, 29, 3, 29, 31, 2, 2}, Case{16, 24, 16, 28, 28, 1, 3},
                              Case{3, 40, 9, 56, 20, 1, 4}, Case{8, 17, 12, 20, 14, 1, 1}, Case{6, 8, 20, 57, 29, 2, 2},
                              Case{4, 3, 5, 15, 17, 1, 2}, Case{6, 40, 9, 7, 7, 1, 2}, Case{3, 29, 13, 7, 7, 1, 3},
                              Case{8, 24, 8, 7, 7, 1, 1}, Case{5, 20, 7, 14, 14, 2, 2}, Case{3, 16, 4, 13, 13, 2, 2},
                              Case{4, 3, 5, 9, 9, 1, 2}, Case{8, 48, 6, 6, 6, 1, 2}, Case{7, 33, 10, 14, 14, 1, 8},
                              Case{8, 40, 5, 3, 16, 1, 2}, Case{4, 20, 6, 5, 32, 2, 2}}) {
            const ThreadCountScope threads(int(c.threads));
            const auto g = same3x3(c.h, c.w, c.stride);
            REQUIRE(kernels::inverted_residual_fits(g));
            const ExpansionOperands<T> op(c.cin, c.cexp, c.h, c.w);
            const auto& [x, eb, w, bias] = std::tie(op.x, op.eb, op.w, op.bias);
            auto pw = test::random_tensor<T>({c.cout, c.cexp}, 10 + c.w);
            auto pb = test::random_tensor<T>({c.cout}, 11 + c.w);
            auto res = test::random_tensor<T>({c.cout, g.out_h, g.out_w}, 9 + c.w);
            std::vector<T> packed_p(static_cast<std::size_t>(kernels::direct_packed_size(c.cout, c.cexp, 1)));
            kernels::pack_direct_weights(pw.data(), c.cout, c.cexp, 1, packed_p.data());
            for (const bool plain : {false, true}) {
                const auto act = plain ? FusedActivation::none : FusedActivation::relu6;
                const auto act_p = plain ? FusedActivation::none : FusedActivation::relu;
                Tensor<T> y(Shape{c.cout, g.out_h, g.out_w}, T(-7));
                auto run = [&]<int S>() {
                    kernels::inverted_residual<T, S>(x.data(), c.cin, g, c.cexp, op.packed.data(), plain ? nullptr : eb.data(),
                                                     act, w.data(), plain ? nullptr : bias.data(), act, c.cout,
                                                     packed_p.data(), plain ? nullptr : pb.data(), act_p, y.data(),
                                                     plain ? nullptr : res.data());
                };
                if (c.stride == 1)
                    run.template operator()<1>();
                else
                    run.template operator()<2>();
                // the three layers in double (NaN where the input pixel is)
                std::ostringstream what;
                what << c.cin << " -> " << c.cexp << " -> " << c.cout << " at " << c.h << " x " << c.w << " stride "
                     << c.stride << " threads " << c.threads;
                check_dw_projected(op.expanded(plain), c.h, c.w, c.stride, w, bias, pw, pb, res, plain, y, tol, what.str());
            }
        }
    };
    check(0.0f, 2e-5);
    check(0.0, 1e-12);
#endif
}

TEST_CASE("a stem, the depthwise 3x3 and the 1x1 projection after it in one pass match the three layers apart", "[conv]") {
    // stem_block against a plain loop in double: y = act_p(P act(dw(act_s(S x + s)) + b) + p + r)
    // with S a 3x3 conv of stride 2 and padding 1. MobileNet-v2's 224 x 224 pruned by three
    // quarters (3 -> 8 -> 4); odd heights and widths; one input channel and four; stems to a
    // partial panel (13, 11) and to fewer channels than a panel (3, 5); rows 224 and 225 wide,
    // taken in chunks of 6 to 9 rows (5 chunks on one thread, 2 or 3 per band on two); a 6 x 6
    // output (one band of a step of pixels in float, two bands in double); one, two and three
    // threads. ReLU6 after the
    // stem and the depthwise conv and ReLU after the projection, or none, with and without the
    // biases and a residual. A NaN in the image (at a row's end) reaches only the outputs whose
    // windows hold it, in every projected channel.
    const auto small = same3x3(12, 12, 2), dw6 = same3x3(6, 6, 1);
    CHECK_FALSE(kernels::stem_block_fits(5, small, dw6));                // 5 inputs
    CHECK_FALSE(kernels::stem_block_fits(3, same3x3(12, 12, 1), dw6));   // a stem of stride 1
    CHECK_FALSE(kernels::stem_block_fits(3, small, same3x3(6, 6, 2)));   // a depthwise conv of stride 2
    CHECK_FALSE(kernels::stem_block_fits(3, same3x3(10, 10, 2), same3x3(5, 5, 1)));  // 25 outputs: under a step
#if !defined(__AVX512F__)
    CHECK_FALSE(kernels::stem_block_fits(3, small, dw6));  // the fused kernel is AVX-512's
#else
    auto check = []<class T>(T, double tol) {
        struct Case {
            Index cin, cexp, cout, h, w, threads;
        };
        for (const auto& c : {Case{3, 8, 4, 224, 224, 2}, Case{3, 13, 7, 57, 63, 2}, Case{1, 3, 5, 30, 40, 3},
                              Case{4, 16, 9, 64, 448, 1}, Case{3, 11, 6, 70, 450, 2}, Case{2, 5, 3, 12, 12, 2},
                              Case{3, 16, 9, 64, 448, 2}}) {
            const ThreadCountScope threads(int(c.threads));
            const auto sg = kernels::direct_geometry<T, 3, 3, 2>(c.cin, c.h, c.w, 1, 1, c.cexp);
            const Index ho = sg.out_h, wo = sg.out_w, n = ho * wo;
            REQUIRE(kernels::stem_block_fits(c.cin, same3x3(c.h, c.w, 2), same3x3(ho, wo, 1)));
            auto x = test::random_tensor<T>({c.cin, c.h, c.w}, 3 * c.h + c.w, -2.0, 2.0);
            x[(c.h / 2) * c.w + c.w - 1] = std::numeric_limits<T>::quiet_NaN();
            const auto sw = test::random_tensor<T>({c.cexp, c.cin, 3, 3}, 5 + c.w);
            const auto sb = test::random_tensor<T>({c.cexp}, 6 + c.w);
            const auto w = test::random_tensor<T>({c.cexp, 3, 3}, 7 + c.w);
            const auto bias = test::random_tensor<T>({c.cexp}, 8 + c.w);
            const auto pw = test::random_tensor<T>({c.cout, c.cexp}, 10 + c.w);
            const auto pb = test::random_tensor<T>({c.cout}, 11 + c.w);
            const auto res = test::random_tensor<T>({c.cout, ho, wo}, 9 + c.w);
            std::vector<T> packed_s(static_cast<std::size_t>(kernels::direct_packed_size(c.cexp, c.cin, 9))),
                packed_p(static_cast<std::size_t>(kernels::direct_packed_size(c.cout, c.cexp, 1)));
            kernels::pack_direct_weights(sw.data(), c.cexp, c.cin, 9, packed_s.data());
            kernels::pack_direct_weights(pw.data(), c.cout, c.cexp, 1, packed_p.data());
            for (const bool plain : {false, true}) {
                const auto act = plain ? FusedActivation::none : FusedActivation::relu6;
                const auto act_p = plain ? FusedActivation::none : FusedActivation::relu;
                Tensor<T> y(Shape{c.cout, ho, wo}, T(-7));
                kernels::stem_block<T>(x.data(), sg, packed_s.data(), plain ? nullptr : sb.data(), act, w.data(),
                                       plain ? nullptr : bias.data(), act, c.cout, packed_p.data(), plain ? nullptr : pb.data(),
                                       act_p, y.data(), plain ? nullptr : res.data());
                // the three layers in double (NaN where the image's NaN reaches)
                std::vector<double> e(static_cast<std::size_t>(c.cexp * n));
                for (Index o = 0; o < c.cexp; ++o)
                    for (Index r = 0; r < ho; ++r)
                        for (Index q = 0; q < wo; ++q) {
                            double v = plain ? 0.0 : double(sb[o]);
                            for (Index k = 0; k < c.cin; ++k)
                                v = depthwise3x3_ref(sw.data() + (o * c.cin + k) * 9, v, c.h, c.w, 2, r, q,
                                                     [&](Index i) { return x[k * c.h * c.w + i]; });
                            e[o * n + r * wo + q] = plain || std::isnan(v) ? v : std::clamp(v, 0.0, 6.0);
                        }
                std::ostringstream what;
                what << c.cin << " -> " << c.cexp << " -> " << c.cout << " at " << c.h << " x " << c.w << " threads "
                     << c.threads;
                check_dw_projected(e, ho, wo, 1, w, bias, pw, pb, res, plain, y, tol, what.str());
            }
        }
    };
    check(0.0f, 2e-5);
    check(0.0, 1e-12);
#endif
}

TEMPLATE_TEST_CASE("the direct 3x3 kernel, flat and through padded phase planes, matches a plain loop at stride 1 and 2, "
                   "NaN kept to its window",
                   "[conv]", float, double) {
    using T = TestType;
    // Planes narrower than a vector (several rows per vector), a little wider, wide, one row, one
    // column, one pixel; 1, 2, 10 and 11 outputs (the tiles of one row over several steps, of two
    // rows, a whole panel and a thin one: 10 leaves AVX's 6-row panels 4 rows, the tile of up to 4
    // rows). Every plane runs flat (in place at stride 1 with AVX or AVX-512, over unpadded phase
    // planes at stride 2 with AVX-512) and through padded phase planes. A NaN at the end of one
    // input row and one at the start of another must reach exactly the outputs whose window holds
    // them, not the row that a tap one column off wraps onto in flat order.
    // Two threads, so that the jobs (and with them the tiles of several steps) are the same on
    // every machine: 14 x 14 and 30 x 5 have steps inside the plane with several rows per vector,
    // 33 x 31 tiles of four steps (one or two outputs) whose last one ends past the plane.
    // 3 and 5 inputs: at stride 2 the 3 take the banded path (a band of output rows per thread, its
    // planes filled where it is computed; on planes of 4 and more output rows), the 5 fill their
    // planes in 2 bands of rows first. The workspace starts as NaN, so that a margin or slack left
    // unwritten shows.
    const ThreadCountScope two(2);
    auto check = [&]<int S>() {
        for (const auto& [h, w] : {std::pair<Index, Index>{7, 7}, {5, 3}, {9, 23}, {6, 37}, {1, 20}, {20, 1}, {1, 1},
                                   {2, 2}, {14, 14}, {30, 5}, {33, 31}})
            for (const auto& channels : {std::pair<Index, Index>{5, 1}, {5, 2}, {5, 10}, {5, 11}, {3, 2}, {3, 11}}) {
                const Index cin = channels.first, cout = channels.second, ho = (h - 1) / S + 1, wo = (w - 1) / S + 1;
                std::vector<T> x(static_cast<std::size_t>(cin * h * w)), wt(static_cast<std::size_t>(cout * cin * 9)),
                    bias(static_cast<std::size_t>(cout)), res(static_cast<std::size_t>(cout * ho * wo));
                std::mt19937 rng(static_cast<unsigned>(h * 100 + w));
                std::uniform_real_distribution<double> u(-2.0, 2.0);
                for (auto* v : {&x, &wt, &bias, &res})
                    for (auto& e : *v) e = static_cast<T>(u(rng));
                x[static_cast<std::size_t>(std::min<Index>(1, h - 1) * w + w - 1)] = std::numeric_limits<T>::quiet_NaN();
                x[static_cast<std::size_t>((2 * h + h / 2) * w)] = std::numeric_limits<T>::quiet_NaN();
                std::vector<T> packed(static_cast<std::size_t>(kernels::direct_packed_size(cout, cin, 9)));
                kernels::pack_direct_weights(wt.data(), cout, cin, 9, packed.data());
                auto flat = kernels::direct_geometry<T, 3, 3, S>(cin, h, w, 1, 1, cout), planes = flat;
                planes.same = false;
                constexpr int vb = kernels::detail::vector_bytes;
                CHECK(flat.same == (vb >= 64 || (vb == 32 && S == 1)));  // else both runs take the planes
                for (const auto& g : {flat, planes}) {
                    std::vector<T> work(static_cast<std::size_t>(g.workspace(S)), std::numeric_limits<T>::quiet_NaN()),
                        y(static_cast<std::size_t>(cout * ho * wo + 40), T(-99));  // 40 sentinels past the end
                    kernels::conv_direct<T, 3, 3, S>(x.data(), g, packed.data(), bias.data(), FusedActivation::relu6,
                                                     y.data(), work.data(), res.data());
                    double worst = 0;
                    for (Index o = 0; o < cout; ++o)
                        for (Index i = 0; i < ho; ++i)
                            for (Index j = 0; j < wo; ++j) {
                                double s = bias[o] + res[(o * ho + i) * wo + j];
                                for (Index c = 0; c < cin; ++c)
                                    for (Index a = 0; a < 3; ++a)
                                        for (Index b = 0; b < 3; ++b) {
                                            const Index ii = i * S + a - 1, jj = j * S + b - 1;
                                            if (ii >= 0 && ii < h && jj >= 0 && jj < w)
                                                s += double(wt[((o * cin + c) * 3 + a) * 3 + b]) *
                                                     double(x[(c * h + ii) * w + jj]);
                                        }
                                const double got = y[(o * ho + i) * wo + j];
                                INFO(h << "x" << w << " stride " << S << ", " << cout << " outputs, "
                                       << (g.same ? "flat" : "phase planes") << ", output " << o << ", " << i << ", " << j);
                                REQUIRE(std::isnan(got) == std::isnan(s));
                                if (!std::isnan(s)) worst = std::max(worst, std::abs(std::clamp(s, 0.0, 6.0) - got));
                            }
                    INFO(h << "x" << w << " stride " << S << ", " << cout << " outputs, " << (g.same ? "flat" : "phase planes"));
                    CHECK(worst < (sizeof(T) == 4 ? 1e-4 : 1e-12));
                    CHECK(std::all_of(y.end() - 40, y.end(), [](T v) { return v == T(-99); }));
                }
            }
    };
    check.template operator()<1>();
    check.template operator()<2>();
}

TEMPLATE_TEST_CASE("a stem's stride-2 3x3 conv in bands of output rows matches a plain loop when the bands take "
                   "several rounds of the threads",
                   "[conv]", float, double) {
    // 3 inputs at 180 x 600: 512 KiB of phase planes hold 36 output rows of 300 (float) or 18
    // (double), so the 90 output rows split into 4 or 6 bands on two threads, 3 or 6 on three;
    // 8 outputs (a whole panel) and 3 (a thin one)
    using T = TestType;
    const Index cin = 3, h = 180, w = 600, ho = 90, wo = 300;
    for (const int threads : {2, 3})
        for (const Index cout : {8, 3}) {
            const ThreadCountScope scope(threads);
            const auto x = test::random_tensor<T>({cin, h, w}, 31, -2.0, 2.0);
            const auto wt = test::random_tensor<T>({cout, cin, 3, 3}, 32);
            const auto bias = test::random_tensor<T>({cout}, 33);
            std::vector<T> packed(static_cast<std::size_t>(kernels::direct_packed_size(cout, cin, 9)));
            kernels::pack_direct_weights(wt.data(), cout, cin, 9, packed.data());
            const auto g = kernels::direct_geometry<T, 3, 3, 2>(cin, h, w, 1, 1, cout);
            CHECK(g.same == (kernels::detail::vector_bytes >= 64));  // else the padded planes, not the bands
            std::vector<T> work(static_cast<std::size_t>(g.workspace(2)), std::numeric_limits<T>::quiet_NaN());
            std::vector<T> y(static_cast<std::size_t>(cout * ho * wo));
            kernels::conv_direct<T, 3, 3, 2>(x.data(), g, packed.data(), bias.data(), FusedActivation::none, y.data(),
                                             work.data());
            double worst = 0;
            for (Index o = 0; o < cout; ++o)
                for (Index i = 0; i < ho; ++i)
                    for (Index j = 0; j < wo; ++j) {
                        double s = bias[o];
                        for (Index c = 0; c < cin; ++c)
                            for (Index a = 0; a < 3; ++a)
                                for (Index b = 0; b < 3; ++b) {
                                    const Index ii = 2 * i + a - 1, jj = 2 * j + b - 1;
                                    if (ii >= 0 && ii < h && jj >= 0 && jj < w)
                                        s += double(wt[((o * cin + c) * 3 + a) * 3 + b]) * double(x[(c * h + ii) * w + jj]);
                                }
                        worst = std::max(worst, std::abs(s - double(y[(o * ho + i) * wo + j])));
                    }
            INFO(threads << " threads, " << cout << " outputs");
            CHECK(worst < (sizeof(T) == 4 ? 1e-4 : 1e-12));
        }
}
