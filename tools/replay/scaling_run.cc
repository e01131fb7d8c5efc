#include "tools/replay/scaling_run.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "kernels/base/status.h"
#include "tools/common/json_text.h"
#include "tools/common/tool_flags.h"
#include "tools/replay/machine_rates.h"

namespace kvtier::replay {
namespace {

constexpr ScalingSystem kSystems[] = {
    {"page_bounds", "page_bounds", "", 0, "kvtier, page-bounds index"},
    {"wave", "wave", "", 0, "kvtier, wave index without an estimate"},
    {"wave_rest", "wave", "", 1, "kvtier, wave index, every page not retrieved estimated"},
    {"page_bounds_nocache", "page_bounds", "off", 0,
     "kvtier, page-bounds index, page cache off (every selected page loaded every step)"},
};

const ScalingSystem* FindSystem(const std::string& name) {
  for (const ScalingSystem& s : kSystems) {
    if (name == s.name) return &s;
  }
  return nullptr;
}

// The replay flags of one point.
ReplayFlags PointFlags(const ScalingPlan& plan, int64_t context, const ScalingSystem& system,
                       int batch) {
  ReplayFlags f = plan.base;
  f.context = context;
  f.batch = batch;
  f.index = system.index;
  if (system.policy[0] != '\0') f.policy = system.policy;
  f.estimate_pages = 0;
  f.estimate_fraction = system.estimate_fraction;
  return f;
}

// The point's columns, in PrintScalingJson's order.
struct Column {
  const char* name;
  std::string value;  // a JSON number or string literal
};
std::vector<Column> Columns(const ScalingPoint& p) {
  const ReplaySummary& s = p.summary;
  const auto num = [](const char* name, double v) { return Column{name, tools::JsonNumber(v)}; };
  return {{"context", absl::StrCat(p.context)},
          {"system", tools::JsonString(p.system)},
          {"batch", absl::StrCat(p.batch)},
          num("tokens_per_second", s.tokens_per_second),
          num("mean_step_ms", s.mean_step_ms),
          num("bound_step_ms", s.bound_step_ms),
          num("hit_rate", s.hit_rate),
          num("pcie_bytes_per_step", s.pcie_bytes_per_step),
          num("mean_output_error", s.mean_output_error),
          num("mean_mass_captured", s.mean_mass_captured),
          num("plan_ms", s.plan_ms),
          num("select_ms", s.select_ms),
          num("resolve_ms", s.resolve_ms),
          num("load_ms", s.load_ms),
          num("attend_ms", s.attend_ms),
          num("phase_step_ms", s.phase_step_ms),
          {"host_store_bytes", absl::StrCat(p.host_store_bytes)},
          {"gpu_bytes_reserved", absl::StrCat(p.gpu_bytes_reserved)}};
}

}  // namespace

absl::Span<const ScalingSystem> ScalingSystems() { return kSystems; }

std::string ScalingSystemNames() {
  std::vector<std::string> names;
  for (const ScalingSystem& s : kSystems) names.push_back(s.name);
  return absl::StrJoin(names, ", ");
}

absl::Status ValidateScalingPlan(const ScalingPlan& plan) {
  std::vector<std::string> problems;
  if (plan.contexts.empty()) problems.push_back("no contexts");
  for (int64_t c : plan.contexts) {
    if (c < 1) problems.push_back(absl::StrCat("context ", c, ": must be >= 1"));
  }
  if (plan.batches.empty()) problems.push_back("no batch sizes");
  for (size_t i = 0; i < plan.batches.size(); ++i) {
    if (plan.batches[i] < 1) {
      problems.push_back(absl::StrCat("batch ", plan.batches[i], ": must be >= 1"));
    } else if (i > 0 && plan.batches[i] <= plan.batches[i - 1]) {
      problems.push_back(absl::StrCat("batch sizes must ascend (", plan.batches[i - 1], " then ",
                                      plan.batches[i], ")"));
    }
  }
  if (plan.systems.empty()) problems.push_back("no systems");
  for (const std::string& name : plan.systems) {
    if (FindSystem(name) == nullptr) {
      problems.push_back(absl::StrCat("system '", name, "': allowed ", ScalingSystemNames()));
    }
  }
  if (plan.host_memory_bytes <= 0) {
    problems.push_back(absl::StrCat("host memory limit ", plan.host_memory_bytes, ": must be > 0"));
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(problems, "; "));
}

absl::StatusOr<ScalingResult> RunScaling(const ScalingPlan& plan, const ProgressFn& progress) {
  KVTIER_RETURN_IF_ERROR(ValidateScalingPlan(plan));
  ScalingResult result;
  result.plan = plan;
  const tools::DeviceFacts facts = tools::QueryDeviceFacts(plan.base.device);
  const int64_t total =
      static_cast<int64_t>(plan.contexts.size() * plan.systems.size() * plan.batches.size());
  int64_t sweeps = 0;  // (context, system) sweeps finished
  const int64_t batches = static_cast<int64_t>(plan.batches.size());
  for (const int64_t context : plan.contexts) {
    for (const std::string& name : plan.systems) {
      const ScalingSystem& system = *FindSystem(name);
      ScalingLimit limit{context, name, 0, ""};
      for (size_t b = 0; b < plan.batches.size(); ++b) {
        const int batch = plan.batches[b];
        const ReplayFlags flags = PointFlags(plan, context, system, batch);
        absl::StatusOr<ReplayConfig> config = MakeReplayConfig(flags, facts);
        if (!config.ok()) {
          return absl::Status(config.status().code(),
                              absl::StrCat("context ", context, ", system ", name, ", batch ",
                                           batch, ": ", config.status().message()));
        }
        if (result.rates_source.empty()) {
          result.rates_source =
              tools::DescribeRateSources(config->hbm_rate_source, config->pcie_rate_source);
        }
        const int64_t host_bytes = HostStoreBytes(*config);
        if (host_bytes > plan.host_memory_bytes) {
          limit.reason =
              absl::StrCat("batch ", batch, " needs a host store of ",
                           FormatBytes(static_cast<double>(host_bytes)), ", above the limit of ",
                           FormatBytes(static_cast<double>(plan.host_memory_bytes)));
          break;
        }
        absl::StatusOr<ReplayResult> run = RunReplay(*config);
        if (!run.ok() && absl::IsResourceExhausted(run.status())) {
          limit.reason = absl::StrCat("batch ", batch, ": ", run.status().message());
          break;
        }
        if (!run.ok()) {
          return absl::Status(run.status().code(),
                              absl::StrCat("context ", context, ", system ", name, ", batch ",
                                           batch, ": ", run.status().message()));
        }
        if (result.device.empty()) result.device = run->device;
        ScalingPoint point;
        point.context = context;
        point.system = name;
        point.batch = batch;
        point.host_store_bytes = host_bytes;
        point.gpu_bytes_reserved = run->gpu_bytes_reserved;
        point.summary = Summarize(*run);
        result.points.push_back(std::move(point));
        limit.largest_batch = batch;
        if (progress) progress("sweep", sweeps * batches + static_cast<int64_t>(b) + 1, total);
      }
      result.limits.push_back(limit);
      ++sweeps;
      if (progress) progress("sweep", sweeps * batches, total);  // batches past the limit
    }
  }
  return result;
}

void PrintScalingJson(const ScalingResult& r, std::ostream& out) {
  out << "{\n";
  out << "  \"device\": " << tools::JsonString(r.device) << ",\n";
  out << "  \"rates_source\": " << tools::JsonString(r.rates_source) << ",\n";
  out << "  \"host_memory_bytes\": " << r.plan.host_memory_bytes << ",\n";
  out << "  \"points\": [";
  for (size_t i = 0; i < r.points.size(); ++i) {
    out << (i == 0 ? "\n" : ",\n") << "    {";
    const std::vector<Column> columns = Columns(r.points[i]);
    for (size_t c = 0; c < columns.size(); ++c) {
      out << (c == 0 ? "" : ", ") << "\"" << columns[c].name << "\": " << columns[c].value;
    }
    out << "}";
  }
  out << (r.points.empty() ? "],\n" : "\n  ],\n");
  out << "  \"limits\": [";
  for (size_t i = 0; i < r.limits.size(); ++i) {
    const ScalingLimit& l = r.limits[i];
    out << (i == 0 ? "\n" : ",\n") << "    {\"context\": " << l.context
        << ", \"system\": " << tools::JsonString(l.system)
        << ", \"largest_batch\": " << l.largest_batch
        << ", \"reason\": " << tools::JsonString(l.reason) << "}";
  }
  out << (r.limits.empty() ? "]\n" : "\n  ]\n");
  out << "}\n";
}

void PrintScalingCsv(const ScalingResult& r, std::ostream& out) {
  const std::vector<Column> header = Columns(ScalingPoint{});
  for (size_t c = 0; c < header.size(); ++c) out << (c == 0 ? "" : ",") << header[c].name;
  out << "\n";
  for (const ScalingPoint& p : r.points) {
    const std::vector<Column> columns = Columns(p);
    for (size_t c = 0; c < columns.size(); ++c) {
      // JSON's null (NaN) is an empty CSV field; the system names need no quoting.
      std::string value = columns[c].value;
      if (value == "null") value.clear();
      if (!value.empty() && value.front() == '"') value = value.substr(1, value.size() - 2);
      out << (c == 0 ? "" : ",") << value;
    }
    out << "\n";
  }
}

void PrintScalingTable(const ScalingResult& r, std::ostream& out) {
  out << "kvtier-scaling on " << (r.device.empty() ? "(nothing ran)" : r.device)
      << "; bound's rates from " << r.rates_source << "\n";
  for (const std::string& name : r.plan.systems) {
    if (const ScalingSystem* system = FindSystem(name); system != nullptr) {
      out << "  " << name << ": " << system->what << "\n";
    }
  }
  for (const int64_t context : r.plan.contexts) {
    out << "\ncontext " << context << "\n";
    out << absl::StrFormat("  %-20s %6s %12s %10s %10s %7s %8s %9s\n", "system", "batch",
                           "tokens/s", "step ms", "bound ms", "hits", "error", "host");
    for (const ScalingPoint& p : r.points) {
      if (p.context != context) continue;
      const ReplaySummary& s = p.summary;
      out << absl::StrFormat("  %-20s %6d %12.1f %10.3f %10.3f %6.1f%% %7.2f%% %9s\n", p.system,
                             p.batch, s.tokens_per_second, s.mean_step_ms, s.bound_step_ms,
                             100 * s.hit_rate, 100 * s.mean_output_error,
                             FormatBytes(static_cast<double>(p.host_store_bytes)));
    }
    for (const ScalingLimit& l : r.limits) {
      if (l.context != context) continue;
      out << "  " << l.system << ": largest batch " << l.largest_batch
          << (l.reason.empty() ? " (every batch listed ran)" : absl::StrCat("; ", l.reason))
          << "\n";
    }
  }
}

}  // namespace kvtier::replay
