// Running a tool's plotting script (scripts/plot_*.py, on Debian's python3-matplotlib): the
// data file the tool wrote in, a PNG out.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace kvtier::tools {

// How the plot is drawn: `python` (an interpreter with matplotlib: a path, or a name looked
// up on PATH) runs `script` with arguments DATA and PNG.
struct PlotCommand {
  std::string python;
  std::string script;
};
// The interpreter: $KVTIER_PYTHON when set and not empty, else /usr/bin/python3 (Debian's,
// where python3-matplotlib installs; the first python3 on PATH may be another one).
std::string PlotPython();

// Runs the plot command and waits for it. OK when it exits 0 and `png` exists afterwards;
// otherwise FailedPrecondition saying what failed (the interpreter could not be started, it
// exited with a status or a signal, or wrote nothing) and what to do. The script's own
// messages go to this process's stderr.
absl::Status Plot(const PlotCommand& command, const std::string& data, const std::string& png);

}  // namespace kvtier::tools
