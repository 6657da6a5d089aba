#include "server/api/generation_service.h"

#include <algorithm>
#include <chrono>

#include "models/tokenizer.h"
#include "server/api/request_id.h"
#include "server/api/request_validation.h"

namespace svdq::api {
namespace {

grpc::Status Invalid(const std::string& msg) { return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, msg); }

grpc::Status Unavailable() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the model is still loading; retry shortly");
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

bool GenerationService::Authorized(const grpc::ServerContextBase& ctx, std::string* owner) const {
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  return keys_->Check(it == md.end() ? std::string_view() : std::string_view(it->second.data(), it->second.size()),
                      owner);
}

grpc::Status GenerationService::Counted(grpc::Status st) {
  admission_->CountCall("grpc", StatusCodeName(st.error_code()));
  return st;
}

namespace {
grpc::Status Unauthenticated() {
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      "missing or invalid API key: send metadata 'authorization: Bearer <key>'");
}
}  // namespace

grpc::Status GenerationService::Generate(grpc::ServerContext* ctx, const svdq::v1::GenerateRequest* req,
                                         grpc::ServerWriter<svdq::v1::GenerateResponse>* writer) {
  return Counted(DoGenerate(ctx, req, writer));
}

grpc::Status GenerationService::DoGenerate(grpc::ServerContext* ctx, const svdq::v1::GenerateRequest* req,
                                           grpc::ServerWriter<svdq::v1::GenerateResponse>* writer) {
  std::string owner;
  if (!Authorized(*ctx, &owner)) return Unauthenticated();
  if (const std::string e = proto::RequestError(*req); !e.empty()) return Invalid(e);
  std::unique_ptr<Admission::Ticket> ticket;
  grpc::Status st = admission_->Admit(*req, owner, &ticket);
  if (!st.ok()) return st;
  engine::RequestStream* stream = &ticket->stream();
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

grpc::ServerUnaryReactor* GenerationService::Abort(grpc::CallbackServerContext* ctx, const svdq::v1::AbortRequest* req,
                                                   svdq::v1::AbortResponse*) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(DoAbort(*ctx, req));
  return reactor;
}

grpc::Status GenerationService::DoAbort(const grpc::ServerContextBase& ctx, const svdq::v1::AbortRequest* req) {
  std::string owner;
  if (!Authorized(ctx, &owner)) return Unauthenticated();
  if (const std::string e = proto::RequestError(*req); !e.empty()) return Invalid(e);
  if (!ValidRequestId(req->request_id())) return Invalid(kRequestIdRule);
  return admission_->Abort(req->request_id(), owner);
}

grpc::ServerUnaryReactor* GenerationService::Tokenize(grpc::CallbackServerContext* ctx,
                                                      const svdq::v1::TokenizeRequest* req,
                                                      svdq::v1::TokenizeResponse* out) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  std::string owner;
  reactor->Finish(Authorized(*ctx, &owner) ? DoTokenize(req, out) : Unauthenticated());
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

grpc::Status GenerationService::Detokenize(grpc::ServerContext* ctx, const svdq::v1::DetokenizeRequest* req,
                                           svdq::v1::DetokenizeResponse* out) {
  std::string owner;
  if (!Authorized(*ctx, &owner)) return Unauthenticated();
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

grpc::Status GenerationService::GetServerInfo(grpc::ServerContext* ctx, const svdq::v1::GetServerInfoRequest*,
                                              svdq::v1::ServerInfo* out) {
  std::string owner;
  if (!Authorized(*ctx, &owner)) return Unauthenticated();
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
  out->set_sparse_budget(k.sparse_budget);
  out->set_sparse_landmark_rank(k.sparse_landmark_rank);
  out->set_sparse_landmark_subs(k.sparse_landmark_subs);
  out->set_sparse_landmark_basis_tokens(k.sparse_landmark_basis_tokens);
  out->set_sparse_dense_layers(k.sparse_dense_layers);
  out->set_attention_key_compression(k.attention_key_compression);
  return grpc::Status::OK;
}

grpc::Status GenerationService::GetModelInfo(grpc::ServerContext* ctx, const svdq::v1::GetModelInfoRequest*,
                                             svdq::v1::ModelInfo* out) {
  std::string owner;
  if (!Authorized(*ctx, &owner)) return Unauthenticated();
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
