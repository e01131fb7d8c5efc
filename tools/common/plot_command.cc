#include "tools/common/plot_command.h"

#include <spawn.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

extern char** environ;

namespace kvtier::tools {

std::string PlotPython() {
  const char* python = std::getenv("KVTIER_PYTHON");
  return python != nullptr && python[0] != '\0' ? python : "/usr/bin/python3";
}

absl::Status Plot(const PlotCommand& command, const std::string& data, const std::string& png) {
  const std::string advice =
      absl::StrCat("the data is at ", data,
                   "; to plot, install python3-matplotlib (Debian) or set "
                   "KVTIER_PYTHON to an interpreter that has matplotlib, then run: python3 ",
                   command.script, " ", data, " ", png);
  std::error_code ignored;
  std::filesystem::remove(png, ignored);  // so that a stale plot cannot pass for a new one
  std::vector<std::string> args = {command.python, command.script, data, png};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int spawned =
      posix_spawnp(&pid, command.python.c_str(), nullptr, nullptr, argv.data(), environ);
  if (spawned != 0) {
    return absl::FailedPreconditionError(absl::StrCat("plotting failed: cannot run ",
                                                      command.python, ": ", std::strerror(spawned),
                                                      "; ", advice));
  }
  int wstatus = 0;
  while (waitpid(pid, &wstatus, 0) < 0) {
    if (errno != EINTR) {
      return absl::FailedPreconditionError(absl::StrCat("plotting failed: waiting for ",
                                                        command.python, ": ", std::strerror(errno),
                                                        "; ", advice));
    }
  }
  if (WIFSIGNALED(wstatus)) {
    return absl::FailedPreconditionError(absl::StrCat("plotting failed: ", command.python,
                                                      " was killed by signal ", WTERMSIG(wstatus),
                                                      "; ", advice));
  }
  if (WEXITSTATUS(wstatus) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("plotting failed: ", command.python, " ",
                                                      command.script, " exited with status ",
                                                      WEXITSTATUS(wstatus), "; ", advice));
  }
  if (!std::filesystem::exists(png, ignored)) {
    return absl::FailedPreconditionError(
        absl::StrCat("plotting failed: ", command.script, " wrote no ", png, "; ", advice));
  }
  return absl::OkStatus();
}

}  // namespace kvtier::tools
