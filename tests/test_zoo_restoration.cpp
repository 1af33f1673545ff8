#include "fixtures.hpp"

#include "spade/models/dncnn.hpp"
#include "spade/models/edsr.hpp"
#include "spade/models/unet.hpp"

using namespace spade;

namespace {

using Ten = Tensor<double>;

const double* data_of(const Graph<double>& g, const std::string& name) { return g.parameter(name).data(); }

// Plain-loop reference layers in double, NCHW, PyTorch semantics.

// Convolution, stride 1, "same"-style padding `pad`, kernel from the OIHW weight shape.
Ten ref_conv(const Ten& x, const Parameter<double>& w, const double* bias, Index pad) {
    const Index n = x.shape()[0], cin = x.shape()[1], h = x.shape()[2], wd = x.shape()[3];
    const Index cout = w.shape()[0], kh = w.shape()[2], kw = w.shape()[3];
    REQUIRE(w.shape()[1] == cin);
    const Index oh = h + 2 * pad - kh + 1, ow = wd + 2 * pad - kw + 1;
    Ten y(Shape{n, cout, oh, ow});
    auto X = x.view<4>();
    auto Y = y.view<4>();
    TensorView<const double, 4> W(w.data(), {cout, cin, kh, kw});
    for (Index b = 0; b < n; ++b)
        for (Index co = 0; co < cout; ++co)
            for (Index i = 0; i < oh; ++i)
                for (Index j = 0; j < ow; ++j) {
                    double s = bias ? bias[co] : 0.0;
                    for (Index ci = 0; ci < cin; ++ci)
                        for (Index a = 0; a < kh; ++a)
                            for (Index c = 0; c < kw; ++c) {
                                Index ii = i - pad + a, jj = j - pad + c;
                                if (ii >= 0 && ii < h && jj >= 0 && jj < wd) s += W(co, ci, a, c) * X(b, ci, ii, jj);
                            }
                    Y(b, co, i, j) = s;
                }
    return y;
}

// Conv named `name` of graph g (3x3 pad 1, or 1x1 pad 0), with its bias when it has one.
Ten ref_conv(const Ten& x, const Graph<double>& g, const std::string& name) {
    const auto& w = g.parameter(name + ".weight");
    const double* bias = g.has_parameter(name + ".bias") ? data_of(g, name + ".bias") : nullptr;
    return ref_conv(x, w, bias, w.shape()[2] / 2);
}

// Eval-mode batch norm named `name` (eps 1e-5).
Ten ref_bn(Ten x, const Graph<double>& g, const std::string& name) {
    const double *w = data_of(g, name + ".weight"), *b = data_of(g, name + ".bias");
    const double *mean = data_of(g, name + ".running_mean"), *var = data_of(g, name + ".running_var");
    auto X = x.view<4>();
    for (Index n = 0; n < X.extent(0); ++n)
        for (Index c = 0; c < X.extent(1); ++c)
            for (Index i = 0; i < X.extent(2); ++i)
                for (Index j = 0; j < X.extent(3); ++j)
                    X(n, c, i, j) = (X(n, c, i, j) - mean[c]) / std::sqrt(var[c] + 1e-5) * w[c] + b[c];
    return x;
}

// Instance norm without affine parameters: each (n, c) plane to zero mean, unit (biased) variance.
Ten ref_instance_norm(Ten x) {
    auto X = x.view<4>();
    const Index hw = X.extent(2) * X.extent(3);
    for (Index n = 0; n < X.extent(0); ++n)
        for (Index c = 0; c < X.extent(1); ++c) {
            double mean = 0, var = 0;
            for (Index i = 0; i < X.extent(2); ++i)
                for (Index j = 0; j < X.extent(3); ++j) mean += X(n, c, i, j);
            mean /= static_cast<double>(hw);
            for (Index i = 0; i < X.extent(2); ++i)
                for (Index j = 0; j < X.extent(3); ++j) var += (X(n, c, i, j) - mean) * (X(n, c, i, j) - mean);
            var /= static_cast<double>(hw);
            for (Index i = 0; i < X.extent(2); ++i)
                for (Index j = 0; j < X.extent(3); ++j) X(n, c, i, j) = (X(n, c, i, j) - mean) / std::sqrt(var + 1e-5);
        }
    return x;
}

Ten ref_relu(Ten x) {
    for (auto& v : x) v = std::max(v, 0.0);
    return x;
}

Ten ref_add(Ten a, const Ten& b, double scale_a = 1.0) {
    REQUIRE(a.shape() == b.shape());
    for (Index i = 0; i < a.numel(); ++i) a[i] = scale_a * a[i] + b[i];
    return a;
}

// PixelShuffle(r): out[c, h*r + i, w*r + j] = in[c*r*r + i*r + j, h, w].
Ten ref_pixel_shuffle(const Ten& x, Index r) {
    const Index n = x.shape()[0], c = x.shape()[1] / (r * r), h = x.shape()[2], w = x.shape()[3];
    Ten y(Shape{n, c, h * r, w * r});
    auto X = x.view<4>();
    auto Y = y.view<4>();
    for (Index b = 0; b < n; ++b)
        for (Index k = 0; k < c; ++k)
            for (Index i = 0; i < r; ++i)
                for (Index j = 0; j < r; ++j)
                    for (Index p = 0; p < h; ++p)
                        for (Index q = 0; q < w; ++q) Y(b, k, p * r + i, q * r + j) = X(b, k * r * r + i * r + j, p, q);
    return y;
}

Ten ref_max_pool2(const Ten& x) {
    const Index n = x.shape()[0], c = x.shape()[1], h = x.shape()[2] / 2, w = x.shape()[3] / 2;
    Ten y(Shape{n, c, h, w});
    auto X = x.view<4>();
    auto Y = y.view<4>();
    for (Index b = 0; b < n; ++b)
        for (Index k = 0; k < c; ++k)
            for (Index i = 0; i < h; ++i)
                for (Index j = 0; j < w; ++j)
                    Y(b, k, i, j) = std::max(std::max(X(b, k, 2 * i, 2 * j), X(b, k, 2 * i, 2 * j + 1)),
                                             std::max(X(b, k, 2 * i + 1, 2 * j), X(b, k, 2 * i + 1, 2 * j + 1)));
    return y;
}

// ConvTranspose2d(kernel 2, stride 2): each input pixel writes one 2x2 output block; weight IOHW.
Ten ref_up_conv(const Ten& x, const Graph<double>& g, const std::string& name) {
    const auto& w = g.parameter(name + ".weight");
    const double* bias = data_of(g, name + ".bias");
    const Index n = x.shape()[0], cin = x.shape()[1], h = x.shape()[2], wd = x.shape()[3], cout = w.shape()[1];
    Ten y(Shape{n, cout, 2 * h, 2 * wd});
    auto X = x.view<4>();
    auto Y = y.view<4>();
    TensorView<const double, 4> W(w.data(), {cin, cout, 2, 2});
    for (Index b = 0; b < n; ++b)
        for (Index co = 0; co < cout; ++co)
            for (Index i = 0; i < 2 * h; ++i)
                for (Index j = 0; j < 2 * wd; ++j) {
                    double s = bias[co];
                    for (Index ci = 0; ci < cin; ++ci) s += W(ci, co, i % 2, j % 2) * X(b, ci, i / 2, j / 2);
                    Y(b, co, i, j) = s;
                }
    return y;
}

Ten ref_concat(const Ten& a, const Ten& b) {
    const Index n = a.shape()[0], ca = a.shape()[1], cb = b.shape()[1], plane = a.shape()[2] * a.shape()[3];
    Ten y(Shape{n, ca + cb, a.shape()[2], a.shape()[3]});
    for (Index k = 0; k < n; ++k) {
        std::copy(a.data() + k * ca * plane, a.data() + (k + 1) * ca * plane, y.data() + k * (ca + cb) * plane);
        std::copy(b.data() + k * cb * plane, b.data() + (k + 1) * cb * plane, y.data() + (k * (ca + cb) + ca) * plane);
    }
    return y;
}

void zero(Graph<double>& g, const std::string& name) {
    for (auto& v : g.parameter(name)) v = 0.0;
}

void copy_param(const Graph<double>& from, const std::string& a, Graph<double>& to, const std::string& b) {
    REQUIRE(from.parameter(a).shape() == to.parameter(b).shape());
    std::copy(from.parameter(a).begin(), from.parameter(a).end(), to.parameter(b).begin());
}

Index buffer_count(const Graph<float>& g) {
    Index n = 0;
    for (std::size_t i = 0; i < g.num_parameters(); ++i)
        if (!g.parameter(static_cast<ParamId>(i)).learnable()) n += g.parameter(static_cast<ParamId>(i)).numel();
    return n;
}

}  // namespace

// ---- DnCNN -------------------------------------------------------------------

TEST_CASE("DnCNN parameter counts match the hand formula", "[zoo][dncnn]") {
    // conv(C->F) 9CF + F, (depth-2) x [conv 9F^2 + BN 2F], conv(F->C) 9FC + C
    // C=1, F=64, depth 17: 640 + 15 * (36864 + 128) + 577 = 640 + 554880 + 577 = 556097
    auto g = models::dncnn<float>({.channels = 1, .features = 64, .depth = 17, .image_size = 8});
    CHECK(count_params(g) == 556097);
    CHECK(buffer_count(g) == 15 * 2 * 64);  // BN running mean and var
    CHECK(g.has_parameter("dncnn.0.bias"));
    CHECK(g.parameter("dncnn.2.weight").shape() == Shape{64, 64, 3, 3});
    CHECK_FALSE(g.has_parameter("dncnn.2.bias"));
    CHECK(g.parameter("dncnn.3.running_var").shape() == Shape{64});
    CHECK(g.parameter("dncnn.47.weight").shape() == Shape{1, 64, 3, 3});
    CHECK(g.has_parameter("dncnn.47.bias"));
    CHECK_FALSE(g.has_parameter("dncnn.50.weight"));

    // SaoYan's all-bias-free port: 576 + 554880 + 576 = 556032
    CHECK(count_params(models::dncnn<float>({.depth = 17, .bias = false, .image_size = 8})) == 556032);
    // DnCNN-B colour, depth 20: 1728 + 64 + 18 * 36992 + 1728 + 3 = 1792 + 665856 + 1731 = 669379
    CHECK(count_params(models::dncnn<float>({.channels = 3, .depth = 20, .image_size = 8})) == 669379);
}

TEST_CASE("DnCNN matches a plain-loop reference", "[zoo][dncnn]") {
    for (bool residual : {true, false}) {
        const models::DnCNNOptions o{.channels = 2, .features = 5, .depth = 5, .residual = residual, .image_size = 8};
        auto g = models::dncnn<double>(o);
        test::randomize(g, 11);
        auto x = test::random_tensor<double>({2, 2, 7, 6}, 3);  // batch 2, non-square, not the example size
        Ten h = ref_relu(ref_conv(x, g, "dncnn.0"));
        Index m = 2;
        for (; m < 3 * o.depth - 4; m += 3)
            h = ref_relu(ref_bn(ref_conv(h, g, "dncnn." + std::to_string(m)), g, "dncnn." + std::to_string(m + 1)));
        Ten ref = ref_conv(h, g, "dncnn." + std::to_string(m));
        if (residual) ref = ref_add(ref, x, -1.0);  // x - net(x)
        INFO("residual " << residual);
        CHECK(test::max_rel_err(test::run(g, x), ref) < 1e-12);
    }
}

TEST_CASE("DnCNN with its last conv zeroed returns the input exactly", "[zoo][dncnn]") {
    auto g = models::dncnn<double>({.channels = 3, .features = 16, .depth = 17, .image_size = 32});
    test::randomize(g, 5);
    zero(g, "dncnn.47.weight");
    zero(g, "dncnn.47.bias");
    auto x = test::random_tensor<double>({1, 3, 32, 32}, 9);
    auto y = test::run(g, x);
    REQUIRE(y.shape() == x.shape());
    CHECK(std::equal(y.begin(), y.end(), x.begin()));
}

TEST_CASE("DnCNN MACs at 1x1x32x32 match the hand count", "[zoo][dncnn]") {
    // per pixel (HW = 1024): conv0 (9+1)*64 + relu 64; 15 x [conv 9*64*64 + BN 2*64 + relu 64];
    // last conv (9*64+1)*1; residual sub 1.  1024 * (704 + 15*37056 + 578) = 1024 * 557122
    auto g = models::dncnn<float>({.image_size = 32});
    const auto c = count(g);
    CHECK(c.macs == 570492928);
    CHECK(c.params == 556097);
}

TEST_CASE("DnCNN as a prior shared by two unrolled iterations", "[zoo][dncnn][mbdl]") {
    const models::DnCNNOptions o{.channels = 2, .features = 6, .depth = 4, .image_size = 8, .seed = 21};
    GraphBuilder<double> b(o.seed);
    Var<double> x = b.input("x", {1, 2, 8, 8});
    for (int k = 0; k < 2; ++k) {
        auto it = b.scope("iter" + std::to_string(k));
        auto prior = b.param_scope("prior");
        x = models::dncnn(x, o);
    }
    b.output(x);
    auto shared = std::move(b).build();
    auto single = models::dncnn<double>(o);
    CHECK(count_params(shared) == count_params(single));
    CHECK(shared.has_parameter("prior.dncnn.8.weight"));
    test::randomize(single, 4);
    for (std::size_t i = 0; i < single.num_parameters(); ++i) {
        const auto& p = single.parameter(static_cast<ParamId>(i));
        copy_param(single, p.name(), shared, "prior." + p.name());
    }
    auto in = test::random_tensor<double>({1, 2, 9, 5}, 8);
    auto twice = test::run(single, test::run(single, in));
    CHECK(test::max_rel_err(test::run(shared, in), twice) < 1e-12);
}

TEST_CASE("DnCNN rejects bad options naming the numbers", "[zoo][dncnn]") {
    CHECK_THROWS_WITH(models::dncnn<float>({.depth = 2}), Catch::Contains("dncnn") && Catch::Contains("depth must be >= 3, got 2"));
    CHECK_THROWS_AS(models::dncnn<float>({.features = 0}), ShapeError);
    GraphBuilder<float> b;
    auto x = b.input("x", {1, 3, 8, 8});
    CHECK_THROWS_WITH(models::dncnn(x, {.channels = 1}), Catch::Contains("3 channels") && Catch::Contains("channels is 1"));
}

// ---- EDSR --------------------------------------------------------------------

TEST_CASE("EDSR parameter counts match the official code", "[zoo][edsr]") {
    // C=3, F=64, 16 blocks: head 9*3*64+64 = 1792; blocks 16 * 2 * (36864+64) = 1181696;
    // body conv 36928; tail conv 9*64*3+3 = 1731.  x1 total 1222147.
    // x2 adds conv(64 -> 256) 147456+256 = 147712 (EDSR baseline x2: 1369859);
    // x4 adds it twice (1517571); x3 adds conv(64 -> 576) 331776+576 = 332352 (1554499).
    const std::vector<std::pair<Index, Index>> expected{{1, 1222147}, {2, 1369859}, {3, 1554499}, {4, 1517571}};
    for (auto [scale, params] : expected) {
        INFO("scale " << scale);
        auto g = models::edsr<float>({.scale = scale, .image_size = 8});
        CHECK(count_params(g) == params);
        CHECK(buffer_count(g) == 0);
    }
    auto g = models::edsr<float>({.scale = 4, .image_size = 8});
    CHECK(g.parameter("head.0.weight").shape() == Shape{64, 3, 3, 3});
    CHECK(g.parameter("body.0.body.2.weight").shape() == Shape{64, 64, 3, 3});
    CHECK(g.parameter("body.16.weight").shape() == Shape{64, 64, 3, 3});
    CHECK(g.parameter("tail.0.0.weight").shape() == Shape{256, 64, 3, 3});
    CHECK(g.parameter("tail.0.2.weight").shape() == Shape{256, 64, 3, 3});
    CHECK(g.parameter("tail.1.weight").shape() == Shape{3, 64, 3, 3});
    CHECK_FALSE(g.has_parameter("body.0.res_scale.weight"));
    // res_scale != 1 is a learnable per-tensor Scale: one more parameter per block
    auto scaled = models::edsr<float>({.res_scale = 0.1, .image_size = 8});
    CHECK(count_params(scaled) == 1222147 + 16);
    CHECK(scaled.parameter("body.15.res_scale.weight").data()[0] == Approx(0.1));
}

TEST_CASE("EDSR matches a plain-loop reference", "[zoo][edsr]") {
    for (Index scale : {1, 2, 3, 4}) {
        const models::EDSROptions o{.channels = 3, .features = 4, .blocks = 2, .scale = scale, .res_scale = 0.5, .image_size = 8};
        auto g = models::edsr<double>(o);
        test::randomize(g, 17);
        auto x = test::random_tensor<double>({2, 3, 5, 6}, 2);
        Ten head = ref_conv(x, g, "head.0");
        Ten h = head;
        for (Index i = 0; i < o.blocks; ++i) {
            const std::string p = "body." + std::to_string(i);
            Ten r = ref_conv(ref_relu(ref_conv(h, g, p + ".body.0")), g, p + ".body.2");
            h = ref_add(r, h, g.parameter(p + ".res_scale.weight").data()[0]);
        }
        h = ref_add(ref_conv(h, g, "body." + std::to_string(o.blocks)), head);
        const std::vector<Index> stages = scale == 3 ? std::vector<Index>{3} : std::vector<Index>(scale == 4 ? 2 : scale / 2, 2);
        for (std::size_t k = 0; k < stages.size(); ++k)
            h = ref_pixel_shuffle(ref_conv(h, g, "tail.0." + std::to_string(2 * k)), stages[k]);
        Ten ref = ref_conv(h, g, "tail.1");
        auto y = test::run(g, x);
        INFO("scale " << scale);
        REQUIRE(y.shape() == Shape{2, 3, 5 * scale, 6 * scale});
        CHECK(test::max_rel_err(y, ref) < 1e-12);
    }
}

TEST_CASE("EDSR with every block's second conv zeroed equals EDSR without blocks", "[zoo][edsr]") {
    // a block whose last conv is zero adds nothing to its skip, so only head, body conv,
    // global skip and tail remain: exactly the blocks = 0 network with the same weights
    auto g = models::edsr<double>({.channels = 3, .features = 8, .blocks = 3, .scale = 2, .image_size = 8});
    auto bare = models::edsr<double>({.channels = 3, .features = 8, .blocks = 0, .scale = 2, .image_size = 8});
    test::randomize(g, 23);
    for (int i = 0; i < 3; ++i) {
        zero(g, "body." + std::to_string(i) + ".body.2.weight");
        zero(g, "body." + std::to_string(i) + ".body.2.bias");
    }
    for (std::string p : {"head.0.weight", "head.0.bias", "tail.0.0.weight", "tail.0.0.bias", "tail.1.weight", "tail.1.bias"})
        copy_param(g, p, bare, p);
    copy_param(g, "body.3.weight", bare, "body.0.weight");
    copy_param(g, "body.3.bias", bare, "body.0.bias");
    auto x = test::random_tensor<double>({1, 3, 6, 7}, 4);
    auto y = test::run(g, x);
    CHECK(y.shape() == Shape{1, 3, 12, 14});
    CHECK(test::max_rel_err(y, test::run(bare, x)) < 1e-13);
}

TEST_CASE("EDSR MACs at 1x3x16x16, x2, match the hand count", "[zoo][edsr]") {
    // HW = 256, F = 64: head (27+1)*64*HW; 16 x [2 convs (576+1)*64*HW + relu 64*HW + add 64*HW];
    // body conv 577*64*HW; global add 64*HW; upsampler conv 577*256*HW; shuffle 0;
    // tail conv 577*3*(4*HW)
    auto g = models::edsr<float>({.scale = 2, .image_size = 16});
    CHECK(count(g).macs == 352553984);
}

TEST_CASE("EDSR rejects bad options", "[zoo][edsr]") {
    CHECK_THROWS_WITH(models::edsr<float>({.scale = 5, .image_size = 8}), Catch::Contains("scale") && Catch::Contains("5"));
    CHECK_THROWS_AS(models::edsr<float>({.scale = 0, .image_size = 8}), ShapeError);
    CHECK_THROWS_WITH(models::edsr<float>({.blocks = -1, .image_size = 8}), Catch::Contains("blocks must be >= 0, got -1"));
}

// ---- U-Net -------------------------------------------------------------------

TEST_CASE("U-Net parameter counts match the hand formula", "[zoo][unet]") {
    // c_l = 32 * 2^l. Double conv a -> b with BN: 9ab + 2b + 9b^2 + 2b (convs bias-free).
    // down.0 1->32: 288 + 9216 + 128 = 9632        down.1 32->64: 18432 + 36864 + 256 = 55552
    // down.2 64->128: 73728 + 147456 + 512 = 221696 down.3 128->256: 294912 + 589824 + 1024 = 885760
    // bottleneck 256->512: 1179648 + 2359296 + 2048 = 3540992
    // up.3: upconv 4*512*256+256 = 524544, conv 512->256: 1179648 + 589824 + 1024 = 1770496
    // up.2: upconv 131200, conv 256->128: 442880   up.1: 32832 + 110848   up.0: 8224 + 27776
    // out: 32 + 1.  Total 7762465.
    auto g = models::unet<double>({.base = 32, .depth = 4, .image_size = 16});
    CHECK(count_params(g) == 7762465);
    CHECK(g.parameter("down.0.conv.0.weight").shape() == Shape{32, 1, 3, 3});
    CHECK(g.parameter("down.2.conv.4.running_var").shape() == Shape{128});
    CHECK(g.parameter("bottleneck.conv.3.weight").shape() == Shape{512, 512, 3, 3});
    CHECK(g.parameter("up.3.upconv.weight").shape() == Shape{512, 256, 2, 2});
    CHECK(g.parameter("up.0.conv.0.weight").shape() == Shape{32, 64, 3, 3});
    CHECK(g.parameter("out.weight").shape() == Shape{1, 32, 1, 1});
    CHECK_FALSE(g.has_parameter("down.0.conv.0.bias"));
    // without norm a double conv has 2b conv biases instead of 4b BN weights:
    // 7762465 - 2*(32+64+128+256) - 2*512 - 2*(256+128+64+32) = 7762465 - 2944 = 7759521
    CHECK(count_params(models::unet<double>({.base = 32, .depth = 4, .norm = models::UNetNorm::none, .image_size = 16})) ==
          7759521);
    // instance norm has no parameters; C=2, base 16, depth 3 (c = 16, 32, 64, 128):
    // down 9*(2*16 + 256) + 9*(16*32 + 1024) + 9*(32*64 + 4096) = 2592 + 13824 + 55296
    // bottleneck 9*(64*128 + 16384) = 221184
    // up.2 32768+64 + 9*(128*64+4096) = 32832 + 110592; up.1 8192+32 + 27648; up.0 2048+16 + 6912; out 32+2
    CHECK(count_params(models::unet<double>({.in_channels = 2, .out_channels = 2, .base = 16, .depth = 3,
                                            .norm = models::UNetNorm::instance, .image_size = 16})) == 481202);
}

TEST_CASE("U-Net matches a plain-loop reference for every norm", "[zoo][unet]") {
    for (auto norm : {models::UNetNorm::none, models::UNetNorm::batch, models::UNetNorm::instance}) {
        const models::UNetOptions o{.in_channels = 2, .out_channels = 3, .base = 3, .depth = 2, .norm = norm, .image_size = 8};
        auto g = models::unet<double>(o);
        test::randomize(g, 31);
        auto x = test::random_tensor<double>({2, 2, 8, 12}, 6);
        auto double_conv = [&](Ten h, const std::string& p) {
            for (int m : {0, 3}) {
                h = ref_conv(h, g, p + "." + std::to_string(m));
                const std::string nm = p + "." + std::to_string(m + 1);
                if (norm == models::UNetNorm::batch) h = ref_bn(h, g, nm);
                if (norm == models::UNetNorm::instance) h = ref_instance_norm(h);
                h = ref_relu(h);
            }
            return h;
        };
        std::vector<Ten> skips;
        Ten h = x;
        for (int l = 0; l < 2; ++l) {
            h = double_conv(h, "down." + std::to_string(l) + ".conv");
            skips.push_back(h);
            h = ref_max_pool2(h);
        }
        h = double_conv(h, "bottleneck.conv");
        for (int l = 1; l >= 0; --l) {
            const std::string p = "up." + std::to_string(l);
            h = double_conv(ref_concat(skips[l], ref_up_conv(h, g, p + ".upconv")), p + ".conv");
        }
        Ten ref = ref_conv(h, g, "out");
        auto y = test::run(g, x);
        INFO("norm " << static_cast<int>(norm));
        REQUIRE(y.shape() == Shape{2, 3, 8, 12});
        CHECK(test::max_rel_err(y, ref) < 1e-12);
    }
}

TEST_CASE("Residual U-Net with its final conv zeroed returns the input exactly", "[zoo][unet]") {
    auto g = models::unet<double>({.in_channels = 2, .out_channels = 2, .base = 4, .depth = 3, .residual = true, .image_size = 16});
    test::randomize(g, 12);
    zero(g, "out.weight");
    zero(g, "out.bias");
    auto x = test::random_tensor<double>({2, 2, 16, 24}, 13);
    auto y = test::run(g, x);
    REQUIRE(y.shape() == x.shape());
    CHECK(std::equal(y.begin(), y.end(), x.begin()));
}

TEST_CASE("U-Net rejects bad options naming the numbers", "[zoo][unet]") {
    CHECK_THROWS_WITH(models::unet<double>({.depth = 4, .image_size = 30}),
                      Catch::Contains("30x30") && Catch::Contains("2^depth = 16"));
    CHECK_THROWS_AS(models::unet<double>({.depth = 0, .image_size = 16}), ShapeError);
    CHECK_THROWS_WITH(models::unet<double>({.in_channels = 1, .out_channels = 2, .residual = true, .image_size = 16}),
                      Catch::Contains("in_channels == out_channels") && Catch::Contains("1 and 2"));
    GraphBuilder<double> b;
    auto x = b.input("x", {1, 1, 16, 20});
    CHECK_THROWS_WITH(models::unet(x, {.depth = 3}), Catch::Contains("16x20") && Catch::Contains("8"));
}
