#include "server/api/admission.h"

#include <algorithm>

#include "server/api/request_id.h"
#include "server/api/request_validation.h"
#include "server/api/status_messages.h"
#include "server/metrics/metrics.h"

namespace svdq::api {
namespace {

grpc::Status Unavailable() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the model is still loading; retry shortly");
}

grpc::Status ShuttingDown() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                      "the server is shutting down; send the request to another replica");
}

}  // namespace

Admission::Ticket::~Ticket() {
  if (stream_) stream_->Cancel();  // a call that ends early leaves no sequence behind
  if (owner_) owner_->Release(id_);
}

grpc::Status Admission::Prepare(const svdq::v1::GenerateRequest& req, engine::Request* er) {
  if (draining_) return ShuttingDown();
  if (!engine_->ready()) return Unavailable();
  return ToEngineRequest(req, engine_->model_config(), engine_->tokenizer(), er);
}

grpc::Status Admission::Submit(engine::Request er, const std::string& owner, std::unique_ptr<Ticket>* out) {
  // A request whose tokens could never fit in the KV cache is refused now, not queued forever.
  const int64_t need = static_cast<int64_t>(er.prompt.size()) + std::max({1, er.max_tokens, er.min_tokens});
  if (need > engine_->kv_capacity_tokens())
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        "the request needs " + std::to_string(need) + " tokens of KV cache; the server holds at most " +
                            std::to_string(engine_->kv_capacity_tokens()) +
                            " (shorten the prompt, max_tokens or min_tokens)");
  // The id is claimed (check and insert under one lock) before the engine sees the request,
  // and released only by the ticket, however the call ends.
  const std::string id = er.id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (in_flight_.count(id))
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "request_id '" + id + "' is already in flight");
    in_flight_[id] = InFlight{owner, {}, false};
  }
  auto ticket = std::make_unique<Ticket>();
  ticket->owner_ = this;
  ticket->id_ = id;
  switch (engine_->Submit(std::move(er), &ticket->stream_)) {
    case engine::SubmitResult::kOk: break;
    case engine::SubmitResult::kQueueFull:
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, kQueueFullMessage);
    case engine::SubmitResult::kNotReady: return Unavailable();
    case engine::SubmitResult::kShuttingDown: return ShuttingDown();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    InFlight& f = in_flight_[id];
    f.stream = ticket->stream_;
    if (f.abort_requested) ticket->stream_->Cancel();  // Abort arrived before the engine had it
  }
  *out = std::move(ticket);
  return grpc::Status::OK;
}

void Admission::Release(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  in_flight_.erase(id);
}

grpc::Status Admission::Abort(const std::string& id, const std::string& owner) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = in_flight_.find(id);
  // Another client's request is answered as if it did not exist.
  if (it == in_flight_.end() || it->second.owner != owner)
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "no request '" + id + "' is in flight");
  if (auto stream = it->second.stream.lock()) stream->Cancel();
  else it->second.abort_requested = true;
  return grpc::Status::OK;
}

void Admission::CancelAll() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, f] : in_flight_) {
    if (auto stream = f.stream.lock()) stream->Cancel();
    else f.abort_requested = true;
  }
}

size_t Admission::InFlightCount() {
  std::lock_guard<std::mutex> lock(mu_);
  return in_flight_.size();
}

void Admission::CountCall(const std::string& front, const std::string& code) {
  if (metrics_) metrics_->ApiCall(front, code);
}

const char* StatusCodeName(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "OTHER";
  }
}

}  // namespace svdq::api
