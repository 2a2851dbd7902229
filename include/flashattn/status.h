// flashattn: the result of every entry point.
//
// A Status is either ok() or carries a code and a message that names the offending argument and
// the rule it broke, e.g. "k_ptr: k row stride 100 must be a multiple of 8 (16-byte aligned rows)".
// Entry points validate everything they can before touching any output, so a non-ok Status
// means no output was written (the one exception, a CUDA error raised by a kernel launch, is
// reported as kCudaError).
#pragma once

#include <string>
#include <utility>

namespace flashattn {

enum class StatusCode {
  kSuccess = 0,
  kInvalidArgument,  // the call breaks a documented rule; the message names the argument
  kNotSupported,     // valid request, but no kernel for it is built or written yet
  kCudaError,        // the CUDA runtime reported an error
  kInternal,         // a bug in flashattn
};

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return Status(); }
  static Status invalid(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
  static Status not_supported(std::string m) { return {StatusCode::kNotSupported, std::move(m)}; }
  static Status cuda_error(std::string m) { return {StatusCode::kCudaError, std::move(m)}; }
  static Status internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

  bool ok() const { return code_ == StatusCode::kSuccess; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "InvalidArgument: <message>" or "OK".
  std::string to_string() const;

 private:
  StatusCode code_ = StatusCode::kSuccess;
  std::string message_;
};

const char* status_code_name(StatusCode code);

}  // namespace flashattn
