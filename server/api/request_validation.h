// Request validation at the API's edge: a GenerateRequest checked against the model's shape
// and tokenizer and turned into an engine request, and chat messages rendered into prompt
// text. No engine and no torch, so that fuzz/request_fuzz.cc runs it on arbitrary wire bytes.
#pragma once

#include <grpcpp/support/status.h>

#include <string>

#include "models/model_config.h"
#include "server/engine/request.h"
#include "svdq/v1/generation.pb.h"

namespace svdq::models {
class Tokenizer;
}

namespace svdq::api {

// Renders chat messages with the model's chat format (chosen from the tokenizer's chat
// template) into prompt text. INVALID_ARGUMENT when the model has no known format, a message
// is not valid UTF-8, or the format cannot express the conversation.
grpc::Status RenderChat(const svdq::v1::ChatMessages& chat, const models::Tokenizer& tok, std::string* prompt);

// Checks a request against the model and turns it into an engine request. On a bad
// input returns INVALID_ARGUMENT with a message that says what to change.
grpc::Status ToEngineRequest(const svdq::v1::GenerateRequest& in, const models::ModelConfig& cfg,
                             const models::Tokenizer& tok, engine::Request* out);

}  // namespace svdq::api
