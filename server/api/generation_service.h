// The svdq.v1.Generation gRPC service: validates requests, converts them for the
// engine, and relays the engine's events to the client's stream.
#pragma once

#include <string>

#include "proto/request_parsing.h"  // before the generated service: its request parsing
#include "server/api/admission.h"
#include "server/api/auth.h"
#include "svdq/v1/generation.grpc.pb.h"

namespace svdq::api {

// Tokenize and Abort run as callback handlers: gRPC's sync unary handlers parse every request
// through MessageLite's generic code, which answers invalid UTF-8 with an empty INTERNAL;
// the callback and server-streaming handlers parse through request_parsing.h.
using GenerationBase = svdq::v1::Generation::WithCallbackMethod_Tokenize<
    svdq::v1::Generation::WithCallbackMethod_Abort<svdq::v1::Generation::Service>>;

class GenerationService final : public GenerationBase {
 public:
  // `keys` with keys loaded: every method needs `authorization: Bearer <key>` metadata.
  GenerationService(Admission* admission, const ApiKeys* keys)
      : admission_(admission), engine_(admission->engine()), keys_(keys) {}

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

 private:
  grpc::Status DoGenerate(grpc::ServerContext* ctx, const svdq::v1::GenerateRequest* req,
                          grpc::ServerWriter<svdq::v1::GenerateResponse>* writer);
  grpc::Status DoTokenize(const svdq::v1::TokenizeRequest* req, svdq::v1::TokenizeResponse* out);
  grpc::Status DoAbort(const grpc::ServerContextBase& ctx, const svdq::v1::AbortRequest* req);
  // Checks the call's API key; *owner names the client (empty when keys are off).
  bool Authorized(const grpc::ServerContextBase& ctx, std::string* owner) const;
  // Counts a Generate call in the metrics by its status, and returns the status.
  grpc::Status Counted(grpc::Status st);

  Admission* admission_;
  engine::Engine* engine_;
  const ApiKeys* keys_;
};

}  // namespace svdq::api
