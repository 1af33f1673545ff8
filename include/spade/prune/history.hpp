// PruningHistory: every surgery, step by step, as (group key, units removed).
// Saved as JSON next to the graph; replay() on a freshly built unpruned graph
// redoes the same surgeries and gives the pruned graph bit for bit.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "spade/core/error.hpp"
#include "spade/io/files.hpp"
#include "spade/tensor/shape.hpp"

namespace spade {

/// One group's cut: which group (Group::key()), its units then, the units removed (ascending).
struct CutRecord {
    std::string group;
    Index units = 0;
    std::vector<Index> removed;

    friend bool operator==(const CutRecord&, const CutRecord&) = default;
};

/// The surgeries applied to a graph, one entry per remove_channels call (a step),
/// each holding the cuts made together on the graph as it was then.
struct PruningHistory {
    std::vector<std::vector<CutRecord>> steps;

    friend bool operator==(const PruningHistory&, const PruningHistory&) = default;

    /// The history as JSON: {"format": "spade-pruning-history", "version": 1, "steps": [[{group, units, removed}]]}.
    nlohmann::json to_json() const {
        nlohmann::json steps_json = nlohmann::json::array();
        for (const auto& step : steps) {
            nlohmann::json s = nlohmann::json::array();
            for (const auto& c : step) s.push_back({{"group", c.group}, {"units", c.units}, {"removed", c.removed}});
            steps_json.push_back(std::move(s));
        }
        return {{"format", "spade-pruning-history"}, {"version", 1}, {"steps", std::move(steps_json)}};
    }

    /// Parses what to_json wrote; throws FormatError naming `source` and the bad entry.
    static PruningHistory from_json(const nlohmann::json& j, const std::string& source = "pruning history") {
        auto bad = [&](const std::string& what) { fail<FormatError>(source, ": ", what); };
        if (!j.is_object() || j.value("format", "") != "spade-pruning-history")
            bad("not a spade pruning history (missing \"format\": \"spade-pruning-history\")");
        if (!j.contains("version") || !j["version"].is_number_integer() || j["version"].get<int>() != 1)
            bad("unsupported version (this reader knows version 1)");
        if (!j.contains("steps") || !j["steps"].is_array()) bad("\"steps\" must be an array");
        PruningHistory h;
        for (std::size_t s = 0; s < j["steps"].size(); ++s) {
            const auto& step = j["steps"][s];
            if (!step.is_array()) bad("step " + std::to_string(s) + " is not an array");
            h.steps.emplace_back();
            for (std::size_t k = 0; k < step.size(); ++k) {
                const auto& c = step[k];
                const std::string where = "step " + std::to_string(s) + ", cut " + std::to_string(k);
                if (!c.is_object() || !c.contains("group") || !c["group"].is_string() || !c.contains("units") ||
                    !c["units"].is_number_integer() || !c.contains("removed") || !c["removed"].is_array())
                    bad(where + " needs \"group\" (string), \"units\" (integer) and \"removed\" (array)");
                CutRecord r{c["group"].get<std::string>(), c["units"].get<Index>(), {}};
                for (const auto& u : c["removed"]) {
                    if (!u.is_number_integer()) bad(where + ": \"removed\" holds a non-integer");
                    const Index v = u.get<Index>();
                    if (v < 0 || v >= r.units || (!r.removed.empty() && v <= r.removed.back()))
                        bad(where + ": removed unit " + std::to_string(v) + " is out of [0, " + std::to_string(r.units) +
                            ") or out of ascending order");
                    r.removed.push_back(v);
                }
                h.steps.back().push_back(std::move(r));
            }
        }
        return h;
    }

    /// Writes the history to `path` (all or nothing).
    void save(const std::filesystem::path& path) const {
        const std::string text = to_json().dump(1);
        detail::write_file_atomically(path, [&](std::ostream& os) { os << text << '\n'; });
    }
    /// Reads a history written by save(); throws FormatError naming the file.
    static PruningHistory load(const std::filesystem::path& path) {
        const auto bytes = detail::read_file_bytes(path);
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(bytes.begin(), bytes.end());
        } catch (const nlohmann::json::exception& e) {
            fail<FormatError>("'", path.string(), "' is not valid JSON: ", e.what());
        }
        return from_json(j, "'" + path.string() + "'");
    }
};

}  // namespace spade
