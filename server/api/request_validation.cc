#include "server/api/request_validation.h"

#include <cmath>
#include <vector>

#include "models/chat_format.h"
#include "models/tokenizer.h"
#include "server/api/request_id.h"

namespace svdq::api {
namespace {

grpc::Status Invalid(const std::string& msg) { return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, msg); }

constexpr int kMaxStops = 16;
constexpr size_t kMaxStopBytes = 256;

}  // namespace

grpc::Status RenderChat(const svdq::v1::ChatMessages& chat, const models::Tokenizer& tok, std::string* prompt) {
  models::ChatFormat fmt;
  if (!models::ChatFormat::FromTemplate(tok.chat_template(), &fmt))
    return Invalid("this model has no known chat format; send text or token_ids instead");
  std::vector<models::ChatTurn> turns;
  for (const auto& m : chat.messages()) {
    if (!models::IsValidUtf8(m.content())) return Invalid("a chat message is not valid UTF-8");
    turns.push_back({m.role(), m.content()});
  }
  std::string error;
  if (!fmt.Render(turns, prompt, &error)) return Invalid(error);
  return grpc::Status::OK;
}

grpc::Status ToEngineRequest(const svdq::v1::GenerateRequest& in, const models::ModelConfig& cfg,
                             const models::Tokenizer& tok, engine::Request* out) {
  if (!in.request_id().empty() && !ValidRequestId(in.request_id())) return Invalid(kRequestIdRule);
  out->id = in.request_id().empty() ? NewRequestId() : in.request_id();
  switch (in.input_case()) {
    case svdq::v1::GenerateRequest::kText:
      if (in.text().empty()) return Invalid("input text is empty");
      if (!models::IsValidUtf8(in.text())) return Invalid("input text is not valid UTF-8");
      out->prompt = tok.EncodePrompt(in.text());  // with BOS where the model's tokenizer adds one
      break;
    case svdq::v1::GenerateRequest::kTokenIds:
      if (in.token_ids().ids_size() == 0) return Invalid("token_ids is empty");
      for (int32_t id : in.token_ids().ids()) {
        if (id < 0 || id >= cfg.vocab_size)
          return Invalid("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                         std::to_string(cfg.vocab_size) + ")");
      }
      out->prompt.assign(in.token_ids().ids().begin(), in.token_ids().ids().end());
      break;
    case svdq::v1::GenerateRequest::kChat: {
      std::string prompt;
      grpc::Status st = RenderChat(in.chat(), tok, &prompt);
      if (!st.ok()) return st;
      out->prompt = tok.Encode(prompt);  // the chat format writes its own BOS text
      break;
    }
    default:
      return Invalid("the request has no input: set text, token_ids or chat");
  }
  // Text a tokenizer drops whole, or a chat that renders to nothing, leaves nothing to prefill.
  if (out->prompt.empty()) return Invalid("the input encodes to no tokens");
  const int64_t n = static_cast<int64_t>(out->prompt.size());
  if (n >= cfg.max_context)
    return Invalid("prompt is " + std::to_string(n) + " tokens; the model's context is " +
                   std::to_string(cfg.max_context) + " tokens, and at least one must be left to generate");
  if (in.max_tokens() < 0) return Invalid("max_tokens must be >= 0 (0 means up to the context limit)");
  if (in.max_tokens() > 0 && n + in.max_tokens() > cfg.max_context)
    return Invalid("prompt (" + std::to_string(n) + " tokens) plus max_tokens (" + std::to_string(in.max_tokens()) +
                   ") exceeds the model's context of " + std::to_string(cfg.max_context) + " tokens");
  const auto& s = in.sampling();
  if (!std::isfinite(s.temperature()) || s.temperature() < 0) return Invalid("temperature must be a finite number >= 0");
  if (!std::isfinite(s.min_p()) || s.min_p() < 0 || s.min_p() > 1) return Invalid("min_p must be in [0, 1]");
  if (!std::isfinite(s.repetition_penalty()) || s.repetition_penalty() < 0 || s.repetition_penalty() > 2)
    return Invalid("repetition_penalty must be in (0, 2] (0 or unset means off)");
  for (float pen : {s.presence_penalty(), s.frequency_penalty()})
    if (!std::isfinite(pen) || pen < -2 || pen > 2) return Invalid("presence_penalty and frequency_penalty must be in [-2, 2]");
  if (in.min_tokens() < 0) return Invalid("min_tokens must be >= 0");
  if (n + in.min_tokens() > cfg.max_context)
    return Invalid("prompt (" + std::to_string(n) + " tokens) plus min_tokens (" + std::to_string(in.min_tokens()) +
                   ") exceeds the model's context of " + std::to_string(cfg.max_context) + " tokens");
  if (in.max_tokens() > 0 && in.min_tokens() > in.max_tokens()) return Invalid("min_tokens must not exceed max_tokens");
  if (in.stop_size() > kMaxStops) return Invalid("at most " + std::to_string(kMaxStops) + " stop strings");
  for (const auto& st : in.stop()) {
    if (st.empty() || st.size() > kMaxStopBytes)
      return Invalid("each stop string must be 1 to " + std::to_string(kMaxStopBytes) + " bytes");
    if (!models::IsValidUtf8(st)) return Invalid("a stop string is not valid UTF-8");
  }
  for (int32_t id : in.stop_token_ids())
    if (id < 0 || id >= cfg.vocab_size) return Invalid("stop token id " + std::to_string(id) + " is outside the vocabulary");
  if (in.has_logprobs() && (in.logprobs() < 0 || in.logprobs() > 20)) return Invalid("logprobs must be in [0, 20]");
  if (s.top_k() < 0) return Invalid("top_k must be >= 0 (0 disables it)");
  if (!std::isfinite(s.top_p()) || s.top_p() < 0 || s.top_p() > 1)
    return Invalid("top_p must be in (0, 1] (0 or unset means 1)");
  out->sampling.temperature = s.temperature();
  out->sampling.top_k = s.top_k();
  out->sampling.top_p = s.top_p() == 0 ? 1.f : s.top_p();
  out->sampling.has_seed = s.has_seed();
  out->sampling.seed = s.seed();
  out->sampling.min_p = s.min_p();
  out->sampling.repetition_penalty = s.repetition_penalty() == 0 ? 1.f : s.repetition_penalty();
  out->sampling.presence_penalty = s.presence_penalty();
  out->sampling.frequency_penalty = s.frequency_penalty();
  out->max_tokens = in.max_tokens();
  out->min_tokens = in.min_tokens();
  out->ignore_eos = in.ignore_eos();
  out->stop.assign(in.stop().begin(), in.stop().end());
  out->stop_token_ids.assign(in.stop_token_ids().begin(), in.stop_token_ids().end());
  out->logprobs = in.has_logprobs() ? in.logprobs() : -1;
  out->prompt_logprobs = in.prompt_logprobs();
  if (in.prompt_logprobs_chunk() < 0) return Invalid("prompt_logprobs_chunk must be >= 0 (0: exact scoring)");
  if (in.prompt_logprobs_chunk() > 0 && !in.prompt_logprobs())
    return Invalid("prompt_logprobs_chunk is a setting of prompt_logprobs; set prompt_logprobs too");
  out->prompt_logprobs_chunk = in.prompt_logprobs_chunk();
  if (in.prompt_logprobs_first_chunk() < 0) return Invalid("prompt_logprobs_first_chunk must be >= 0 (0: the chunk)");
  if (in.prompt_logprobs_first_chunk() > 0 && in.prompt_logprobs_chunk() <= 0)
    return Invalid("prompt_logprobs_first_chunk is a setting of prompt_logprobs_chunk; set prompt_logprobs_chunk > 0 too");
  out->prompt_logprobs_first_chunk = in.prompt_logprobs_first_chunk();
  return grpc::Status::OK;
}

}  // namespace svdq::api
