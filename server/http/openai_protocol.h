// The OpenAI HTTP API's JSON, with no HTTP and no engine: request bodies of /v1/completions and
// /v1/chat/completions parsed into the GenerateRequests the gRPC front takes (so both fronts
// share validation and admission), and the response objects, whole or as stream chunks, built
// from the engine's events. Pure functions, unit-tested and fuzzed on their own.
#pragma once

#include <grpcpp/support/status.h>

#include <functional>
#include <string>
#include <vector>

#include "server/engine/request.h"
#include "svdq/v1/generation.pb.h"

namespace svdq::http {

// An error as the OpenAI API returns it: HTTP status and {"error": {...}}.
struct ApiError {
  int status = 0;  // 0: no error
  std::string message;
  std::string type;   // invalid_request_error, authentication_error, not_found_error, ...
  std::string param;  // the offending field, or empty
  std::string code;   // a short machine-readable code, or empty
  bool ok() const { return status == 0; }
};
ApiError MakeError(int status, const std::string& message, const std::string& param = "",
                   const std::string& code = "");
// The JSON body of an error.
std::string ErrorBody(const ApiError& e);
// A gRPC status from validation or admission, as the HTTP front answers it.
ApiError FromStatus(const grpc::Status& st);

// One parsed request.
struct OpenAiRequest {
  bool chat = false;
  std::string model;                               // as sent ("" when absent)
  std::vector<svdq::v1::GenerateRequest> prompts;  // one per choice (chat: exactly one)
  std::vector<std::string> prompt_texts;           // completions: each prompt string ("" for token ids)
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool echo = false;           // completions: the prompt precedes the text (and its logprobs)
  int logprobs = -1;           // alternatives per token; -1: no logprobs
  bool score_only = false;     // max_tokens 0: the prompt is scored, nothing is returned generated
};

// Parses a body. Types and OpenAI-level rules here (n must be 1, suffix unsupported, ...);
// value ranges are checked by the gRPC front's ToEngineRequest on each GenerateRequest.
ApiError ParseOpenAiRequest(const std::string& body, bool chat, OpenAiRequest* out);

// The text of one token id (special tokens included), for logprobs.
using TokenText = std::function<std::string(int32_t)>;

// One choice's output as it is built up from the engine's events.
struct ChoiceOutput {
  std::string text;
  std::vector<int32_t> ids;
  std::vector<engine::TokenLogprob> logprobs;
  // echo: the prompt's ids and their scores (the first has none); top alternatives per score.
  std::vector<int32_t> prompt_ids;
  std::vector<float> prompt_logprobs;
  std::vector<std::vector<std::pair<int32_t, float>>> prompt_top;
  std::string finish_reason;  // "stop" or "length"
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

struct ResponseHead {
  std::string id;
  std::string model;
  int64_t created = 0;
};

// Characters (code points) in UTF-8 text, as OpenAI's text_offset counts them; a piece of a
// character counts its lead byte.
int64_t CharCount(const std::string& s);

// "stop" / "length" for a finished choice (a cancelled one reads "stop").
std::string FinishReasonText(engine::FinishReason r);

// The whole response of a non-streaming request.
std::string CompletionResponse(const ResponseHead& head, const OpenAiRequest& req,
                               const std::vector<ChoiceOutput>& choices, const TokenText& token_text);

// Stream chunks (each the JSON of one `data:` event). `part` holds only what this chunk adds:
// its text, ids and logprobs (and, for a completion's echo, the prompt's); `finish_reason`
// empty until the choice's last chunk. `text_offset` is where part's text starts in the choice,
// in characters.
std::string CompletionChunk(const ResponseHead& head, const OpenAiRequest& req, int index, const ChoiceOutput& part,
                            int64_t text_offset, const TokenText& token_text);
std::string ChatRoleChunk(const ResponseHead& head, const OpenAiRequest& req, int index);
std::string ChatChunk(const ResponseHead& head, const OpenAiRequest& req, int index, const ChoiceOutput& part,
                      const TokenText& token_text);
// The last chunk with stream_options.include_usage: no choices, the request's usage.
std::string UsageChunk(const ResponseHead& head, const OpenAiRequest& req, int prompt_tokens, int completion_tokens);

// Models list (GET /v1/models).
std::string ModelsResponse(const std::string& model, int64_t created, int64_t max_model_len);

}  // namespace svdq::http
