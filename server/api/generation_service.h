// The svdq.v1.Generation gRPC service: validates requests, converts them for the
// engine, and relays the engine's events to the client's stream.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "server/engine/engine.h"
#include "svdq/v1/generation.grpc.pb.h"

namespace svdq::api {

class GenerationService final : public svdq::v1::Generation::Service {
 public:
  explicit GenerationService(engine::Engine* engine) : engine_(engine) {}

  grpc::Status Generate(grpc::ServerContext* ctx, const svdq::v1::GenerateRequest* req,
                        grpc::ServerWriter<svdq::v1::GenerateResponse>* writer) override;
  grpc::Status GetModelInfo(grpc::ServerContext* ctx, const svdq::v1::GetModelInfoRequest* req,
                            svdq::v1::ModelInfo* out) override;
  grpc::Status Tokenize(grpc::ServerContext* ctx, const svdq::v1::TokenizeRequest* req,
                        svdq::v1::TokenizeResponse* out) override;
  grpc::Status Detokenize(grpc::ServerContext* ctx, const svdq::v1::DetokenizeRequest* req,
                          svdq::v1::DetokenizeResponse* out) override;
  grpc::Status GetServerInfo(grpc::ServerContext* ctx, const svdq::v1::GetServerInfoRequest* req,
                             svdq::v1::ServerInfo* out) override;
  grpc::Status Abort(grpc::ServerContext* ctx, const svdq::v1::AbortRequest* req,
                     svdq::v1::AbortResponse* out) override;

 private:
  engine::Engine* engine_;
  // Generate calls in flight, by request id, for Abort (gRPC threads only). The stream is
  // empty between the id's claim and the engine's acceptance of the request.
  struct InFlight {
    std::weak_ptr<engine::RequestStream> stream;
    bool abort_requested = false;
  };
  std::mutex mu_;
  std::map<std::string, InFlight> in_flight_;
};

// Checks a request against the model and turns it into an engine request. On a bad
// input returns INVALID_ARGUMENT with a message that says what to change.
grpc::Status ToEngineRequest(const svdq::v1::GenerateRequest& in, const engine::Engine& engine, engine::Request* out);

}  // namespace svdq::api
