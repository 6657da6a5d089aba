#include "server/api/generation_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>

#include "models/tokenizer.h"

namespace svdq::api {
namespace {

std::atomic<uint64_t> g_request_counter{0};

grpc::Status Invalid(const std::string& msg) { return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, msg); }

svdq::v1::FinishReason ToProto(engine::FinishReason r) {
  switch (r) {
    case engine::FinishReason::kStop: return svdq::v1::FINISH_REASON_STOP;
    case engine::FinishReason::kLength: return svdq::v1::FINISH_REASON_LENGTH;
    case engine::FinishReason::kCancelled: return svdq::v1::FINISH_REASON_CANCELLED;
    case engine::FinishReason::kError: return svdq::v1::FINISH_REASON_ERROR;
    default: return svdq::v1::FINISH_REASON_UNSPECIFIED;
  }
}

}  // namespace

grpc::Status ToEngineRequest(const svdq::v1::GenerateRequest& in, const engine::Engine& engine, engine::Request* out) {
  const auto& cfg = engine.model_config();
  const auto& tok = engine.tokenizer();
  out->id = in.request_id().empty() ? "req-" + std::to_string(++g_request_counter) : in.request_id();
  switch (in.input_case()) {
    case svdq::v1::GenerateRequest::kText:
      if (in.text().empty()) return Invalid("input text is empty");
      if (!models::IsValidUtf8(in.text())) return Invalid("input text is not valid UTF-8");
      out->prompt = tok.Encode(in.text());
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
    default:
      return Invalid("the request has no input: set text or token_ids");
  }
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
  if (s.top_k() < 0) return Invalid("top_k must be >= 0 (0 disables it)");
  if (!std::isfinite(s.top_p()) || s.top_p() < 0 || s.top_p() > 1)
    return Invalid("top_p must be in (0, 1] (0 or unset means 1)");
  out->sampling.temperature = s.temperature();
  out->sampling.top_k = s.top_k();
  out->sampling.top_p = s.top_p() == 0 ? 1.f : s.top_p();
  out->sampling.has_seed = s.has_seed();
  out->sampling.seed = s.seed();
  out->max_tokens = in.max_tokens();
  out->ignore_eos = in.ignore_eos();
  return grpc::Status::OK;
}

grpc::Status GenerationService::Generate(grpc::ServerContext* ctx, const svdq::v1::GenerateRequest* req,
                                         grpc::ServerWriter<svdq::v1::GenerateResponse>* writer) {
  if (!engine_->ready()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the model is still loading; retry shortly");
  engine::Request er;
  grpc::Status st = ToEngineRequest(*req, *engine_, &er);
  if (!st.ok()) return st;
  // A request whose tokens could never fit in the KV cache is refused now, not queued forever.
  const int64_t need = static_cast<int64_t>(er.prompt.size()) + std::max(1, er.max_tokens);
  if (need > engine_->kv_capacity_tokens())
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        "the request needs " + std::to_string(need) + " tokens of KV cache; the server holds at most " +
                            std::to_string(engine_->kv_capacity_tokens()) + " (shorten the prompt or max_tokens)");
  std::shared_ptr<engine::RequestStream> stream;
  switch (engine_->Submit(std::move(er), &stream)) {
    case engine::SubmitResult::kOk: break;
    case engine::SubmitResult::kQueueFull:
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "the request queue is full; retry later");
    case engine::SubmitResult::kNotReady:
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the model is still loading; retry shortly");
    case engine::SubmitResult::kShuttingDown:
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
  }
  engine::Event ev;
  while (true) {
    if (!stream->Pop(&ev, std::chrono::milliseconds(50))) {
      if (ctx->IsCancelled()) stream->Cancel();  // the engine ends it within a step
      continue;
    }
    svdq::v1::GenerateResponse resp;
    if (!ev.final) {
      auto* c = resp.mutable_chunk();
      for (int32_t id : ev.ids) c->add_token_ids(id);
      c->set_text(ev.text);
      if (!writer->Write(resp)) stream->Cancel();
      continue;
    }
    auto* f = resp.mutable_final();
    f->set_finish_reason(ToProto(ev.reason));
    f->mutable_usage()->set_prompt_tokens(ev.prompt_tokens);
    f->mutable_usage()->set_completion_tokens(ev.completion_tokens);
    f->mutable_timings()->set_time_to_first_token_s(ev.ttft_s);
    f->mutable_timings()->set_total_s(ev.total_s);
    f->set_error(ev.error);
    if (ev.reason == engine::FinishReason::kCancelled && ctx->IsCancelled())
      return grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled");
    writer->Write(resp);
    if (ev.reason == engine::FinishReason::kError)
      return grpc::Status(grpc::StatusCode::INTERNAL, "generation failed: " + ev.error);
    return grpc::Status::OK;
  }
}

grpc::Status GenerationService::GetModelInfo(grpc::ServerContext*, const svdq::v1::GetModelInfoRequest*,
                                             svdq::v1::ModelInfo* out) {
  if (!engine_->ready()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the model is still loading; retry shortly");
  const auto& c = engine_->model_config();
  out->set_name(c.name);
  out->set_architecture(c.architecture);
  out->set_path(engine_->options().model_path);
  out->set_vocab_size(c.vocab_size);
  out->set_max_context(c.max_context);
  out->set_num_layers(c.n_layers);
  out->set_num_heads(c.n_heads);
  out->set_num_kv_heads(c.n_kv_heads);
  out->set_head_dim(c.head_dim);
  out->set_device(engine_->device_name());
  out->set_dtype(engine_->dtype_name());
  out->set_eos_token_id(engine_->tokenizer().eos_id());
  return grpc::Status::OK;
}

}  // namespace svdq::api
