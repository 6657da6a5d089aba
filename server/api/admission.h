// Admission, shared by the gRPC and HTTP fronts: a GenerateRequest checked, its id claimed,
// handed to the engine, and released however its call ends; Abort by id; the shutdown's
// drain. Both fronts go through here, so the same request gets the same answer on either.
#pragma once

#include <grpcpp/support/status.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "server/engine/engine.h"
#include "svdq/v1/generation.pb.h"

namespace svdq::metrics {
class Metrics;
}

namespace svdq::api {

class Admission {
 public:
  Admission(engine::Engine* engine, metrics::Metrics* metrics) : engine_(engine), metrics_(metrics) {}

  // A request the engine accepted: its event stream, and its id claimed until destruction.
  class Ticket {
   public:
    ~Ticket();
    engine::RequestStream& stream() { return *stream_; }
    const std::string& id() const { return id_; }

   private:
    friend class Admission;
    Admission* owner_ = nullptr;
    std::string id_;
    std::shared_ptr<engine::RequestStream> stream_;
  };

  // Validates `req` (ToEngineRequest), lets `adjust` change the engine request (a front's own
  // options), checks it can ever fit the KV cache, claims its id and submits it. `owner`
  // names the client (its API key's index; empty when keys are off): only the same owner
  // may Abort it. On failure returns the status to answer and leaves *out empty.
  template <typename Adjust>
  grpc::Status Admit(const svdq::v1::GenerateRequest& req, const std::string& owner, Adjust adjust,
                     std::unique_ptr<Ticket>* out) {
    engine::Request er;
    grpc::Status st = Prepare(req, &er);
    if (!st.ok()) return st;
    adjust(er);
    return Submit(std::move(er), owner, out);
  }
  grpc::Status Admit(const svdq::v1::GenerateRequest& req, const std::string& owner, std::unique_ptr<Ticket>* out) {
    return Admit(req, owner, [](engine::Request&) {}, out);
  }

  // Cancels the request `id` of `owner`; NOT_FOUND when there is none (or another owner's).
  grpc::Status Abort(const std::string& id, const std::string& owner);

  // Shutdown: from now on Admit answers UNAVAILABLE while the calls in flight go on.
  void StartDraining() { draining_ = true; }
  bool draining() const { return draining_; }
  bool ready() const { return !draining_ && engine_->ready(); }
  // Cancels every request in flight (the end of a shutdown's grace period).
  void CancelAll();
  // Requests in flight (claimed ids), for the shutdown to wait on.
  size_t InFlightCount();

  engine::Engine* engine() { return engine_; }
  // Counts a finished API call: front "grpc" or "http", code the gRPC status code's name
  // or the HTTP status.
  void CountCall(const std::string& front, const std::string& code);

 private:
  grpc::Status Prepare(const svdq::v1::GenerateRequest& req, engine::Request* er);
  grpc::Status Submit(engine::Request er, const std::string& owner, std::unique_ptr<Ticket>* out);
  void Release(const std::string& id);

  engine::Engine* engine_;
  metrics::Metrics* metrics_;
  struct InFlight {
    std::string owner;
    std::weak_ptr<engine::RequestStream> stream;  // empty between the claim and the engine's acceptance
    bool abort_requested = false;
  };
  std::mutex mu_;
  std::map<std::string, InFlight> in_flight_;
  std::atomic<bool> draining_{false};
};

// The name of a gRPC status code ("OK", "INVALID_ARGUMENT", ...), for metrics labels.
const char* StatusCodeName(grpc::StatusCode c);

}  // namespace svdq::api
