#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "io_fixtures.hpp"

using namespace spade;
using test::TempDir;

namespace {

template <class T>
bool same_bits(const T* a, const T* b, Index n) {
    return std::memcmp(a, b, static_cast<std::size_t>(n) * sizeof(T)) == 0;
}

// Values a careless writer or reader would change: signed zero, subnormals, extremes, inf, NaN.
template <class T>
Tensor<T> awkward_tensor(const Shape& s, std::uint64_t seed) {
    auto t = test::random_tensor<T>(s, seed, -1e3, 1e3);
    using L = std::numeric_limits<T>;
    const T special[] = {T(-0.0), L::denorm_min(), -L::denorm_min(), L::min(), L::max(), L::lowest(),
                         L::infinity(), -L::infinity(), L::quiet_NaN(), T(0.1)};
    for (std::size_t i = 0; i < std::size(special) && static_cast<Index>(i) < t.numel(); ++i) t[static_cast<Index>(i)] = special[i];
    return t;
}

template <class T>
void check_round_trip() {
    TempDir dir;
    const auto path = dir / "round.safetensors";
    auto w = awkward_tensor<T>({7, 3, 3, 5}, 1);
    auto b = awkward_tensor<T>({7}, 2);
    auto scalar = Tensor<T>(Shape{}, T(3.25));
    auto empty = Tensor<T>(Shape{0, 4});
    // names deliberately not in alphabetical order: the file keeps the given order
    write_safetensors<T>(path, {{"z.weight", w.ref()}, {"a.bias", b.ref()}, {"empty", empty.ref()}, {"s", scalar.ref()}},
                         {{"format", "pt"}, {"note", "ünïcode"}});

    auto f = SafetensorsFile::open(path);
    CHECK(f.names() == std::vector<std::string>{"z.weight", "a.bias", "empty", "s"});
    CHECK(f.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"note", "ünïcode"}});
    CHECK(f.info("z.weight").dtype == std::string(dtype_name<T>()));
    CHECK(f.info("z.weight").shape == Shape{7, 3, 3, 5});
    CHECK(f.info("z.weight").begin == 0);
    CHECK(f.info("z.weight").end == 7 * 3 * 3 * 5 * sizeof(T));
    CHECK(f.info("a.bias").begin == f.info("z.weight").end);
    auto w2 = f.read<T>("z.weight");
    auto b2 = f.read<T>("a.bias");
    REQUIRE(w2.shape() == w.shape());
    CHECK(same_bits(w2.data(), w.data(), w.numel()));
    CHECK(same_bits(b2.data(), b.data(), b.numel()));
    CHECK(f.read<T>("s").shape() == Shape{});
    CHECK(f.read<T>("s")[0] == T(3.25));
    CHECK(f.read<T>("empty").shape() == Shape{0, 4});
    // no temporary file is left behind
    CHECK(std::distance(std::filesystem::directory_iterator(dir.path()), std::filesystem::directory_iterator()) == 1);
}

}  // namespace

TEST_CASE("safetensors round trip is bit-exact for float and double", "[io][safetensors]") {
    check_round_trip<float>();
    check_round_trip<double>();
}

TEST_CASE("safetensors writer lays out bytes as the format says", "[io][safetensors]") {
    TempDir dir;
    const auto path = dir / "layout.safetensors";
    Tensor<float> t(Shape{2}, std::vector<float>{1.0f, -2.5f});
    write_safetensors<float>(path, {{"t", t.ref()}});
    auto bytes = test::read_bytes(path);
    REQUIRE(bytes.size() >= 16);
    std::uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(bytes[static_cast<std::size_t>(i)]) << (8 * i);
    CHECK(n % 8 == 0);
    REQUIRE(bytes.size() == 8 + n + 8);
    std::string header(bytes.begin() + 8, bytes.begin() + 8 + static_cast<long>(n));
    CHECK(header.front() == '{');
    CHECK(header.find_last_not_of(' ') == header.find_last_of('}'));  // padding is spaces only
    auto j = nlohmann::json::parse(header);
    CHECK(j["t"]["dtype"] == "F32");
    CHECK(j["t"]["shape"] == nlohmann::json::array({2}));
    CHECK(j["t"]["data_offsets"] == nlohmann::json::array({0, 8}));
    CHECK(!j.contains("__metadata__"));
    const std::vector<unsigned char> data(bytes.begin() + 8 + static_cast<long>(n), bytes.end());
    CHECK(data == std::vector<unsigned char>{0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x20, 0xC0});

    Tensor<double> d(Shape{1}, std::vector<double>{0.1});
    write_safetensors<double>(path, {{"d", d.ref()}});
    bytes = test::read_bytes(path);
    CHECK(std::vector<unsigned char>(bytes.end() - 8, bytes.end()) ==
          std::vector<unsigned char>{0x9A, 0x99, 0x99, 0x99, 0x99, 0x99, 0xB9, 0x3F});
}

TEST_CASE("half and bfloat16 decode to hand-computed values", "[io][safetensors]") {
    CHECK(half_to_float(0x3C00) == 1.0f);
    CHECK(half_to_float(0xC100) == -2.5f);
    CHECK(half_to_float(0x0001) == 0x1p-24f);               // smallest subnormal
    CHECK(half_to_float(0x03FF) == 1023.0f * 0x1p-24f);     // largest subnormal
    CHECK(half_to_float(0x0400) == 0x1p-14f);               // smallest normal
    CHECK(half_to_float(0x7BFF) == 65504.0f);               // largest finite
    CHECK(half_to_float(0x3555) == 0x1.554p-2f);            // nearest half to 1/3
    CHECK(half_to_float(0x7C00) == std::numeric_limits<float>::infinity());
    CHECK(half_to_float(0xFC00) == -std::numeric_limits<float>::infinity());
    CHECK(std::isnan(half_to_float(0x7E00)));
    CHECK(std::isnan(half_to_float(0xFE01)));
    CHECK(half_to_float(0x8000) == 0.0f);
    CHECK(std::signbit(half_to_float(0x8000)));
    CHECK(!std::signbit(half_to_float(0x0000)));

    CHECK(bfloat16_to_float(0x3F80) == 1.0f);
    CHECK(bfloat16_to_float(0xC020) == -2.5f);
    CHECK(bfloat16_to_float(0x0001) == 0x1p-133f);  // smallest subnormal: 2^-126 * 2^-7
    CHECK(bfloat16_to_float(0x7F80) == std::numeric_limits<float>::infinity());
    CHECK(bfloat16_to_float(0xFF80) == -std::numeric_limits<float>::infinity());
    CHECK(std::isnan(bfloat16_to_float(0x7FC0)));
    CHECK(bfloat16_to_float(0x7F7F) == 0x1.FEp127f);  // largest finite
}

TEST_CASE("a safetensors file written byte by byte reads correctly", "[io][safetensors]") {
    TempDir dir;
    const auto path = dir / "hand.safetensors";
    // a: F32 [1, -2.5]; b: F16 [[1, -2.5], [2^-24, inf]]; c: BF16 [1, -2.5, nan];
    // d: F64 scalar 0.1; n: I64 scalar 7 (a PyTorch BatchNorm counter)
    const std::string header =
        R"({"__metadata__":{"format":"pt"},)"
        R"("n":{"dtype":"I64","shape":[],"data_offsets":[30,38]},)"
        R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
        R"("b":{"dtype":"F16","shape":[2,2],"data_offsets":[8,16]},)"
        R"("c":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},)"
        R"("d":{"dtype":"F64","shape":[],"data_offsets":[22,30]}}  )";
    const std::vector<unsigned char> data{
        0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x20, 0xC0,              // a
        0x00, 0x3C, 0x00, 0xC1, 0x01, 0x00, 0x00, 0x7C,              // b
        0x80, 0x3F, 0x20, 0xC0, 0xC0, 0x7F,                          // c
        0x9A, 0x99, 0x99, 0x99, 0x99, 0x99, 0xB9, 0x3F,              // d
        0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};             // n
    test::write_bytes(path, test::safetensors_bytes(header, data));

    auto f = SafetensorsFile::open(path);
    CHECK(f.names() == std::vector<std::string>{"a", "b", "c", "d", "n"});  // data order
    CHECK(f.metadata().at("format") == "pt");
    CHECK(f.contains("n"));
    CHECK(!f.contains("x"));
    CHECK(f.info("n").dtype == "I64");
    CHECK(f.info("c").begin == 16);
    CHECK(f.info("c").end == 22);

    auto a = f.read<float>("a");
    CHECK(a.shape() == Shape{2});
    CHECK(a[0] == 1.0f);
    CHECK(a[1] == -2.5f);
    auto b = f.read<double>("b");
    CHECK(b.shape() == Shape{2, 2});
    CHECK(b[0] == 1.0);
    CHECK(b[1] == -2.5);
    CHECK(b[2] == 0x1p-24);
    CHECK(b[3] == std::numeric_limits<double>::infinity());
    auto c = f.read<float>("c");
    CHECK(c[0] == 1.0f);
    CHECK(c[1] == -2.5f);
    CHECK(std::isnan(c[2]));
    CHECK(f.read<double>("d")[0] == 0.1);
    CHECK(f.read<float>("d")[0] == 0.1f);  // F64 -> float rounds to nearest
    CHECK(f.read<double>("a")[1] == -2.5);

    test::require_format_error([&] { (void)f.read<float>("n"); }, {"hand.safetensors", "'n'", "I64"});
    test::require_format_error([&] { (void)f.read<float>("x"); }, {"hand.safetensors", "'x'"});
    std::vector<float> small(1);
    test::require_format_error([&] { f.read_into<float>("a", small); }, {"hand.safetensors", "'a'"});
}

TEST_CASE("malformed safetensors files give FormatError naming the file and tensor", "[io][safetensors]") {
    TempDir dir;
    using Bytes = std::vector<unsigned char>;
    const Bytes eight(8, 0);
    auto entry = [](const std::string& name, const std::string& body) { return "\"" + name + "\":{" + body + "}"; };
    const std::string good_w = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";
    struct Case {
        std::string label;
        Bytes bytes;
        std::vector<std::string> parts;  // besides the file name
    };
    std::uint64_t huge = 1ull << 62;
    Bytes huge_len(8);
    for (int i = 0; i < 8; ++i) huge_len[static_cast<std::size_t>(i)] = static_cast<unsigned char>(huge >> (8 * i));
    Bytes past_end = test::safetensors_bytes("{}", {});
    past_end[0] = 40;  // header claims 40 bytes, file has 2 after the length
    Bytes bad_utf8 = test::safetensors_bytes("{\"w\xff\":{}}", {});

    std::vector<Case> cases{
        {"short", Bytes{1, 2, 3}, {"3 byte"}},
        {"huge_header", huge_len, {"header length", std::to_string(huge)}},
        {"past_end", past_end, {"header length 40", "past the end"}},
        {"not_json", test::safetensors_bytes("{\"w\": ", {}), {"not valid JSON"}},
        {"bad_utf8", bad_utf8, {"not valid JSON"}},
        {"not_object", test::safetensors_bytes("[1, 2]", {}), {"not a JSON object"}},
        {"entry_not_object", test::safetensors_bytes(R"({"w": 3})", {}), {"'w'", "object"}},
        {"no_dtype", test::safetensors_bytes("{" + entry("w", R"("shape":[2],"data_offsets":[0,8])") + "}", eight),
         {"'w'", "dtype"}},
        {"no_shape", test::safetensors_bytes("{" + entry("w", R"("dtype":"F32","data_offsets":[0,8])") + "}", eight),
         {"'w'", "shape"}},
        {"no_offsets", test::safetensors_bytes("{" + entry("w", R"("dtype":"F32","shape":[2])") + "}", eight),
         {"'w'", "data_offsets"}},
        {"dtype_number", test::safetensors_bytes("{" + entry("w", R"("dtype":4,"shape":[2],"data_offsets":[0,8])") + "}", eight),
         {"'w'", "dtype"}},
        {"unknown_dtype", test::safetensors_bytes("{" + entry("w", R"("dtype":"F17","shape":[2],"data_offsets":[0,8])") + "}", eight),
         {"'w'", "F17"}},
        {"shape_not_array", test::safetensors_bytes("{" + entry("w", R"("dtype":"F32","shape":2,"data_offsets":[0,8])") + "}", eight),
         {"'w'", "shape"}},
        {"negative_extent", test::safetensors_bytes("{" + entry("w", R"("dtype":"F32","shape":[-2],"data_offsets":[0,8])") + "}", eight),
         {"'w'", "shape[0]", "-2"}},
        {"fractional_extent", test::safetensors_bytes("{" + entry("w", R"("dtype":"F32","shape":[2.5],"data_offsets":[0,8])") + "}", eight),
         {"'w'", "shape[0]", "2.5"}},
        {"float_extent", test::safetensors_bytes("{" + entry("w", R"("dtype":"F32","shape":[2.0],"data_offsets":[0,8])") + "}", eight),
         {"'w'", "shape[0]"}},
        {"string_extent", test::safetensors_bytes("{" + entry("w", R"("dtype":"F32","shape":["2"],"data_offsets":[0,8])") + "}", eight),
         {"'w'", "shape[0]"}},
        {"three_offsets", test::safetensors_bytes("{" + entry("w", R"("dtype":"F32","shape":[2],"data_offsets":[0,8,8])") + "}", eight),
         {"'w'", "data_offsets"}},
        {"decreasing_offsets", test::safetensors_bytes("{" + entry("w", R"("dtype":"F32","shape":[0],"data_offsets":[8,0])") + "}", eight),
         {"'w'", "[8, 0]", "decreasing"}},
        {"negative_offset", test::safetensors_bytes("{" + entry("w", R"("dtype":"F32","shape":[2],"data_offsets":[-1,7])") + "}", eight),
         {"'w'", "data_offsets[0]"}},
        {"fractional_offset", test::safetensors_bytes("{" + entry("w", R"("dtype":"F32","shape":[2],"data_offsets":[0,8.5])") + "}", eight),
         {"'w'", "data_offsets[1]"}},
        {"out_of_range", test::safetensors_bytes("{" + entry("w", R"("dtype":"F32","shape":[4],"data_offsets":[0,16])") + "}", eight),
         {"'w'", "[0, 16]", "8 byte"}},
        {"size_mismatch", test::safetensors_bytes("{" + entry("w", R"("dtype":"F32","shape":[3],"data_offsets":[0,8])") + "}", eight),
         {"'w'", "[3]", "12 bytes", "hold 8"}},
        {"numel_overflow",
         test::safetensors_bytes("{" + entry("w", R"("dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8])") + "}", eight),
         {"'w'", "64 bits"}},
        {"bytes_overflow",
         test::safetensors_bytes("{" + entry("w", R"("dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8])") + "}", eight),
         {"'w'", "64 bits"}},
        {"overlap",
         test::safetensors_bytes("{" + entry("w", good_w) + "," + entry("v", R"("dtype":"F32","shape":[2],"data_offsets":[4,12])") + "}",
                                 Bytes(12, 0)),
         {"'w'", "'v'", "overlap"}},
        {"hole",
         test::safetensors_bytes("{" + entry("w", good_w) + "," + entry("v", R"("dtype":"F32","shape":[1],"data_offsets":[12,16])") + "}",
                                 Bytes(16, 0)),
         {"'v'", "[8, 12)", "no tensor"}},
        {"hole_at_start",
         test::safetensors_bytes("{" + entry("w", R"("dtype":"F32","shape":[1],"data_offsets":[4,8])") + "}", eight),
         {"'w'", "[0, 4)"}},
        {"trailing_bytes", test::safetensors_bytes("{" + entry("w", good_w) + "}", Bytes(11, 0)), {"'w'", "[8, 11)", "no tensor"}},
        {"bytes_without_tensors", test::safetensors_bytes("{}", Bytes(3, 0)), {"[0, 3)"}},
        {"duplicate_name", test::safetensors_bytes("{" + entry("w", good_w) + "," + entry("w", good_w) + "}", eight),
         {"'w'", "more than once"}},
        {"metadata_not_object", test::safetensors_bytes(R"({"__metadata__": [1]})", {}), {"__metadata__"}},
        {"metadata_not_string", test::safetensors_bytes(R"({"__metadata__": {"epoch": 3}})", {}), {"__metadata__", "epoch"}},
    };
    for (const auto& c : cases) {
        INFO("case " << c.label);
        const std::string file = c.label + ".safetensors";
        test::write_bytes(dir / file, c.bytes);
        auto parts = c.parts;
        parts.push_back(file);
        test::require_format_error([&] { (void)SafetensorsFile::open(dir / file); }, parts);
    }
    test::require_format_error([&] { (void)SafetensorsFile::open(dir / "absent.safetensors"); }, {"absent.safetensors"});
    test::require_format_error([&] { (void)SafetensorsFile::open(dir.path()); }, {dir.path().string()});
}

TEST_CASE("write_safetensors rejects duplicate and reserved names", "[io][safetensors]") {
    TempDir dir;
    Tensor<float> t(Shape{2}, 1.0f);
    test::require_format_error([&] { write_safetensors<float>(dir / "dup.safetensors", {{"w", t.ref()}, {"w", t.ref()}}); },
                               {"dup.safetensors", "'w'", "twice"});
    test::require_format_error([&] { write_safetensors<float>(dir / "meta.safetensors", {{"__metadata__", t.ref()}}); },
                               {"meta.safetensors", "__metadata__"});
    test::require_format_error([&] { write_safetensors<float>(dir / "utf.safetensors", {{"w\xff", t.ref()}}); },
                               {"utf.safetensors", "UTF-8"});
    CHECK(std::filesystem::is_empty(dir.path()));  // nothing half-written is left
    // a failed write keeps the previous good file
    write_safetensors<float>(dir / "keep.safetensors", {{"w", t.ref()}});
    CHECK_THROWS_AS(write_safetensors<float>(dir / "keep.safetensors", {{"w", t.ref()}, {"w", t.ref()}}), FormatError);
    CHECK(SafetensorsFile::open(dir / "keep.safetensors").names() == std::vector<std::string>{"w"});
}

TEST_CASE("corrupted safetensors bytes never escape as anything but FormatError", "[io][safetensors]") {
    // flip, overwrite and truncate bytes of a valid file: every outcome must be a clean
    // FormatError or a file whose tensors read with the sizes their headers state
    Tensor<float> a(Shape{3, 2}, 1.5f), b(Shape{5}, -2.0f);
    TempDir dir;
    write_safetensors<float>(dir / "ok.safetensors", {{"a", a.ref()}, {"bias", b.ref()}}, {{"k", "v"}});
    const auto good = test::read_bytes(dir / "ok.safetensors");
    std::mt19937_64 rng(17);
    int rejected = 0, accepted = 0;
    for (int trial = 0; trial < 3000; ++trial) {
        auto bytes = good;
        const int edits = 1 + static_cast<int>(rng() % 3);
        for (int e = 0; e < edits; ++e) {
            const std::size_t pos = rng() % bytes.size();
            switch (rng() % 4) {
                case 0: bytes[pos] ^= static_cast<unsigned char>(1u << (rng() % 8)); break;
                case 1: bytes[pos] = static_cast<unsigned char>("0123456789-.,:[]{}\" e"[rng() % 21]); break;
                case 2: bytes.resize(pos); break;
                default: bytes.insert(bytes.begin() + static_cast<long>(pos), static_cast<unsigned char>(rng())); break;
            }
            if (bytes.empty()) break;
        }
        try {
            auto f = SafetensorsFile::from_bytes(bytes, "mutant");
            for (const auto& name : f.names())
                if (safetensors_readable_dtype(f.info(name).dtype)) REQUIRE(f.read<double>(name).numel() == f.info(name).shape.numel());
            ++accepted;
        } catch (const FormatError& e) {
            REQUIRE(std::string(e.what()).find("mutant") != std::string::npos);
            ++rejected;
        }
    }
    CHECK(rejected > 2000);  // most corruptions must be caught, not silently accepted
    CHECK(accepted + rejected == 3000);
}
