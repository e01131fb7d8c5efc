// Status propagation macros with the project prefix. Debian's Abseil (2022-06-23) has
// absl::Status and absl::StatusOr but not the upstream RETURN_IF_ERROR / ASSIGN_OR_RETURN.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include <utility>

#define KVTIER_INTERNAL_CONCAT_IMPL(a, b) a##b
#define KVTIER_INTERNAL_CONCAT(a, b) KVTIER_INTERNAL_CONCAT_IMPL(a, b)

// Evaluates `expr` (an absl::Status) once; returns it from the enclosing function if not OK.
#define KVTIER_RETURN_IF_ERROR(expr)                                 \
  do {                                                               \
    ::absl::Status kvtier_internal_status = (expr);                  \
    if (!kvtier_internal_status.ok()) return kvtier_internal_status; \
  } while (false)

// `KVTIER_ASSIGN_OR_RETURN(auto x, MakeX());` evaluates the StatusOr once; on error returns
// its status from the enclosing function, otherwise moves the value into `lhs`.
#define KVTIER_ASSIGN_OR_RETURN(lhs, rexpr)                                                       \
  KVTIER_INTERNAL_ASSIGN_OR_RETURN(KVTIER_INTERNAL_CONCAT(kvtier_internal_or_, __COUNTER__), lhs, \
                                   rexpr)

#define KVTIER_INTERNAL_ASSIGN_OR_RETURN(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                                     \
  if (!tmp.ok()) return std::move(tmp).status();          \
  lhs = std::move(tmp).value()
