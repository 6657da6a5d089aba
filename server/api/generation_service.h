// The svdq.v1.Generation gRPC service: validates requests, converts them for the
// engine, and relays the engine's events to the client's stream.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "proto/request_parsing.h"  // before the generated service: its request parsing
#include "server/engine/engine.h"
#include "svdq/v1/generation.grpc.pb.h"

namespace svdq::api {

// Tokenize and Abort run as callback handlers: gRPC's sync unary handlers parse every request
// through MessageLite's generic code, which answers invalid UTF-8 with an empty INTERNAL;
// the callback and server-streaming handlers parse through request_parsing.h.
using GenerationBase = svdq::v1::Generation::WithCallbackMethod_Tokenize<
    svdq::v1::Generation::WithCallbackMethod_Abort<svdq::v1::Generation::Service>>;

class GenerationService final : public GenerationBase {
 public:
  explicit GenerationService(engine::Engine* engine) : engine_(engine) {}

  grpc::Status Generate(grpc::ServerContext* ctx, const svdq::v1::GenerateRequest* req,
                        grpc::ServerWriter<svdq::v1::GenerateResponse>* writer) override;
  grpc::Status GetModelInfo(grpc::ServerContext* ctx, const svdq::v1::GetModelInfoRequest* req,
                            svdq::v1::ModelInfo* out) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* ctx, const svdq::v1::TokenizeRequest* req,
                                     svdq::v1::TokenizeResponse* out) override;
  grpc::Status Detokenize(grpc::ServerContext* ctx, const svdq::v1::DetokenizeRequest* req,
                          svdq::v1::DetokenizeResponse* out) override;
  grpc::Status GetServerInfo(grpc::ServerContext* ctx, const svdq::v1::GetServerInfoRequest* req,
                             svdq::v1::ServerInfo* out) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* ctx, const svdq::v1::AbortRequest* req,
                                  svdq::v1::AbortResponse* out) override;

  // Shutdown: from now on Generate answers UNAVAILABLE while the calls in flight go on.
  void StartDraining() { draining_ = true; }
  // Generate calls in flight (claimed ids), for the shutdown to wait on.
  size_t InFlightCount();

 private:
  grpc::Status DoTokenize(const svdq::v1::TokenizeRequest* req, svdq::v1::TokenizeResponse* out);
  grpc::Status DoAbort(const svdq::v1::AbortRequest* req);

  engine::Engine* engine_;
  // Generate calls in flight, by request id, for Abort (gRPC threads only). The stream is
  // empty between the id's claim and the engine's acceptance of the request.
  struct InFlight {
    std::weak_ptr<engine::RequestStream> stream;
    bool abort_requested = false;
  };
  std::mutex mu_;
  std::map<std::string, InFlight> in_flight_;
  std::atomic<bool> draining_{false};
};

}  // namespace svdq::api
