#include "server/api/generation_service.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "models/chat_format.h"
#include "models/tokenizer.h"
#include "server/api/request_id.h"

namespace svdq::api {
namespace {

grpc::Status Invalid(const std::string& msg) { return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, msg); }

constexpr int kMaxStops = 16;
constexpr size_t kMaxStopBytes = 256;

grpc::Status Unavailable() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the model is still loading; retry shortly");
}

// Renders chat messages with the model's chat format into prompt text.
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
  return grpc::Status::OK;
}

grpc::Status GenerationService::Generate(grpc::ServerContext* ctx, const svdq::v1::GenerateRequest* req,
                                         grpc::ServerWriter<svdq::v1::GenerateResponse>* writer) {
  if (const std::string e = proto::RequestError(*req); !e.empty()) return Invalid(e);
  if (draining_)
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down; send the request to another replica");
  if (!engine_->ready()) return Unavailable();
  engine::Request er;
  grpc::Status st = ToEngineRequest(*req, *engine_, &er);
  if (!st.ok()) return st;
  // A request whose tokens could never fit in the KV cache is refused now, not queued forever.
  const int64_t need = static_cast<int64_t>(er.prompt.size()) + std::max({1, er.max_tokens, er.min_tokens});
  if (need > engine_->kv_capacity_tokens())
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        "the request needs " + std::to_string(need) + " tokens of KV cache; the server holds at most " +
                            std::to_string(engine_->kv_capacity_tokens()) +
                            " (shorten the prompt, max_tokens or min_tokens)");
  // The id is claimed (check and insert under one lock) before the engine sees the
  // request, and released only by the call that claimed it, however that call ends.
  const std::string id = er.id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (in_flight_.count(id))
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "request_id '" + id + "' is already in flight");
    in_flight_[id] = InFlight{};
  }
  struct Unregister {
    GenerationService* self;
    const std::string& id;
    ~Unregister() {
      std::lock_guard<std::mutex> lock(self->mu_);
      self->in_flight_.erase(id);
    }
  } unregister{this, id};
  std::shared_ptr<engine::RequestStream> stream;
  switch (engine_->Submit(std::move(er), &stream)) {
    case engine::SubmitResult::kOk: break;
    case engine::SubmitResult::kQueueFull:
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "the request queue is full; retry later");
    case engine::SubmitResult::kNotReady:
      return Unavailable();
    case engine::SubmitResult::kShuttingDown:
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    InFlight& f = in_flight_[id];
    f.stream = stream;
    if (f.abort_requested) stream->Cancel();  // Abort arrived before the engine had it
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
      for (const auto& lp : ev.logprobs) {
        auto* t = c->add_logprobs();
        t->set_token_id(lp.token_id);
        t->set_logprob(lp.logprob);
        for (const auto& [id, v] : lp.top) {
          auto* top = t->add_top();
          top->set_token_id(id);
          top->set_logprob(v);
        }
      }
      for (float v : ev.prompt_logprobs) c->add_prompt_logprobs(v);
      if (!writer->Write(resp)) stream->Cancel();
      continue;
    }
    auto* f = resp.mutable_final();
    f->set_finish_reason(ToProto(ev.reason));
    f->mutable_usage()->set_prompt_tokens(ev.prompt_tokens);
    f->mutable_usage()->set_completion_tokens(ev.completion_tokens);
    f->mutable_usage()->set_cached_tokens(ev.cached_tokens);
    f->mutable_usage()->set_kv_bytes_stored(ev.kv_bytes_stored);
    f->mutable_usage()->set_kv_bytes_full_precision(ev.kv_bytes_full);
    f->mutable_timings()->set_time_to_first_token_s(ev.ttft_s);
    f->mutable_timings()->set_total_s(ev.total_s);
    f->set_error(ev.error);
    f->set_stop_reason(ev.stop_reason);
    if (ev.reason == engine::FinishReason::kCancelled && ctx->IsCancelled())
      return grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled");
    writer->Write(resp);
    if (ev.reason == engine::FinishReason::kError)
      return grpc::Status(grpc::StatusCode::INTERNAL, "generation failed: " + ev.error);
    return grpc::Status::OK;
  }
}

size_t GenerationService::InFlightCount() {
  std::lock_guard<std::mutex> lock(mu_);
  return in_flight_.size();
}

grpc::ServerUnaryReactor* GenerationService::Abort(grpc::CallbackServerContext* ctx, const svdq::v1::AbortRequest* req,
                                                   svdq::v1::AbortResponse*) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(DoAbort(req));
  return reactor;
}

grpc::Status GenerationService::DoAbort(const svdq::v1::AbortRequest* req) {
  if (const std::string e = proto::RequestError(*req); !e.empty()) return Invalid(e);
  if (!ValidRequestId(req->request_id())) return Invalid(kRequestIdRule);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = in_flight_.find(req->request_id());
  if (it == in_flight_.end())
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "no request '" + req->request_id() + "' is in flight");
  if (auto stream = it->second.stream.lock()) stream->Cancel();
  else it->second.abort_requested = true;
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* GenerationService::Tokenize(grpc::CallbackServerContext* ctx,
                                                      const svdq::v1::TokenizeRequest* req,
                                                      svdq::v1::TokenizeResponse* out) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(DoTokenize(req, out));
  return reactor;
}

grpc::Status GenerationService::DoTokenize(const svdq::v1::TokenizeRequest* req, svdq::v1::TokenizeResponse* out) {
  if (const std::string e = proto::RequestError(*req); !e.empty()) return Invalid(e);
  if (!engine_->ready()) return Unavailable();
  std::string text;
  if (req->input_case() == svdq::v1::TokenizeRequest::kChat) {
    grpc::Status st = RenderChat(req->chat(), engine_->tokenizer(), &text);
    if (!st.ok()) return st;
  } else if (req->input_case() == svdq::v1::TokenizeRequest::kText) {
    if (!models::IsValidUtf8(req->text())) return Invalid("text is not valid UTF-8");
    text = req->text();
  } else {
    return Invalid("the request has no input: set text or chat");
  }
  // The ids Generate would run: BOS added to plain text where the tokenizer adds one.
  const auto& tok = engine_->tokenizer();
  for (int32_t id : req->input_case() == svdq::v1::TokenizeRequest::kChat ? tok.Encode(text) : tok.EncodePrompt(text))
    out->add_ids(id);
  return grpc::Status::OK;
}

grpc::Status GenerationService::Detokenize(grpc::ServerContext*, const svdq::v1::DetokenizeRequest* req,
                                           svdq::v1::DetokenizeResponse* out) {
  if (!engine_->ready()) return Unavailable();
  const int32_t vocab = engine_->model_config().vocab_size;
  std::vector<int32_t> ids(req->ids().begin(), req->ids().end());
  for (int32_t id : ids)
    if (id < 0 || id >= vocab) return Invalid("token id " + std::to_string(id) + " is outside the vocabulary");
  std::string bytes = engine_->tokenizer().DecodeBytes(ids, !req->keep_special_tokens());
  // Ids may end inside a UTF-8 character; the reply is a proto string, so it must be valid.
  models::IncrementalDetokenizer d(engine_->tokenizer());
  if (!models::IsValidUtf8(bytes)) {
    std::string text;
    for (int32_t id : ids) text += d.Push(id);
    bytes = text + d.Flush();
  }
  out->set_text(bytes);
  return grpc::Status::OK;
}

grpc::Status GenerationService::GetServerInfo(grpc::ServerContext*, const svdq::v1::GetServerInfoRequest*,
                                              svdq::v1::ServerInfo* out) {
  if (!engine_->ready()) return Unavailable();
  engine::KvConfigInfo k = engine_->kv_config();
  out->set_device(engine_->device_name());
  out->set_dtype(engine_->dtype_name());
  out->set_kv_cache_mode(k.mode);
  out->set_kv_block_size(k.block_size);
  out->set_kv_blocks_total(k.blocks_total);
  out->set_kv_capacity_tokens(engine_->kv_capacity_tokens());
  out->set_kv_bytes_per_token(k.bytes_per_token);
  out->set_prefix_caching(k.prefix_caching);
  out->set_max_running(static_cast<int32_t>(engine_->options().max_running));
  out->set_max_waiting(static_cast<int32_t>(engine_->options().max_waiting));
  out->set_key_mode(k.key_mode);
  out->set_value_mode(k.value_mode);
  out->set_svdq_schedule(k.svdq_schedule);
  out->set_svdq_basis(k.svdq_basis);
  out->set_svdq_scope(k.svdq_scope);
  out->set_key_bytes_per_token(k.key_bytes_per_token);
  out->set_value_bytes_per_token(k.value_bytes_per_token);
  out->set_key_compression_ratio(k.key_compression_ratio);
  out->set_kv_bytes_per_running_sequence(k.bytes_per_running_sequence);
  return grpc::Status::OK;
}

grpc::Status GenerationService::GetModelInfo(grpc::ServerContext*, const svdq::v1::GetModelInfoRequest*,
                                             svdq::v1::ModelInfo* out) {
  if (!engine_->ready()) return Unavailable();
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
  for (int32_t id : engine_->tokenizer().eos_ids()) out->add_eos_token_ids(id);
  out->set_synthetic(c.synthetic);
  out->set_source(engine_->model_source());
  return grpc::Status::OK;
}

}  // namespace svdq::api
