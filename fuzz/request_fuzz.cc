// Fuzzes request handling at the API's edge, up to the engine: the wire-format parsing with its
// UTF-8 check (proto/request_parsing.cc, as gRPC calls it for Generate, Tokenize and Abort),
// request ids (server/api/request_id.cc) and the validation of a GenerateRequest against a
// model (server/api/request_validation.cc: chat rendering, tokenization, every field's range).
// Input: one byte choosing the message type (low two bits: Generate, Tokenize, Abort,
// Generate) and the chat template (the rest, of fuzz_common.h's ChatTemplates), then the
// serialized request.
// Asserts: no ASan/UBSan report and no exception; ParseRequest marks exactly the bytes that
// protobuf's typed parser refuses, and leaves such a message empty; a request it accepts keeps
// no unknown fields (a client cannot plant the error marker); ToEngineRequest either returns
// INVALID_ARGUMENT with a message, or an engine request whose prompt is non-empty, inside the
// vocabulary and the context, whose limits and stop strings are in range, and whose text or
// chat prompt decodes back to the text (the BOS aside) or the rendered chat.
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/support/byte_buffer.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fuzz/fuzz_common.h"
#include "proto/request_parsing.h"
#include "server/api/request_id.h"
#include "server/api/request_validation.h"

using namespace svdq;

namespace {

constexpr int kMaxContext = 96;  // small, so that prompts run into it

// Parses `bytes` as gRPC does before a handler runs, and checks the outcome against
// protobuf's own parser; returns whether the request was accepted.
bool Parse(const std::string& bytes, google::protobuf::Message* msg) {
  grpc::Slice slice(bytes.data(), bytes.size());
  grpc::ByteBuffer buffer(&slice, 1);
  FUZZ_CHECK(proto::ParseRequest(&buffer, msg).ok());
  const std::string error = proto::RequestError(*msg);
  std::unique_ptr<google::protobuf::Message> typed(msg->New());
  FUZZ_CHECK(error.empty() == typed->ParseFromString(bytes));
  if (!error.empty()) {
    std::unique_ptr<google::protobuf::Message> copy(msg->New());
    copy->CopyFrom(*msg);
    copy->GetReflection()->MutableUnknownFields(copy.get())->Clear();
    FUZZ_CHECK(copy->ByteSizeLong() == 0);  // nothing of a refused request is kept
    return false;
  }
  FUZZ_CHECK(msg->GetReflection()->GetUnknownFields(*msg).empty());
  return true;
}

void CheckGenerate(const v1::GenerateRequest& in, const models::Tokenizer& tok) {
  models::ModelConfig cfg;
  cfg.vocab_size = tok.vocab_size();
  cfg.max_context = kMaxContext;
  engine::Request out;
  const grpc::Status st = api::ToEngineRequest(in, cfg, tok, &out);
  if (!st.ok()) {
    FUZZ_CHECK(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT && !st.error_message().empty());
    return;
  }
  FUZZ_CHECK(api::ValidRequestId(out.id));
  FUZZ_CHECK(!out.prompt.empty() && static_cast<int64_t>(out.prompt.size()) < kMaxContext);
  for (int32_t id : out.prompt) FUZZ_CHECK(id >= 0 && id < cfg.vocab_size);
  FUZZ_CHECK(out.max_tokens >= 0 && out.min_tokens >= 0);
  FUZZ_CHECK(static_cast<int64_t>(out.prompt.size()) + out.max_tokens <= kMaxContext);
  FUZZ_CHECK(static_cast<int64_t>(out.prompt.size()) + out.min_tokens <= kMaxContext);
  FUZZ_CHECK(out.max_tokens == 0 || out.min_tokens <= out.max_tokens);
  for (const std::string& s : out.stop) FUZZ_CHECK(!s.empty() && models::IsValidUtf8(s));
  for (int32_t id : out.stop_token_ids) FUZZ_CHECK(id >= 0 && id < cfg.vocab_size);
  FUZZ_CHECK(out.logprobs >= -1 && out.logprobs <= 20);
  FUZZ_CHECK(out.prompt_logprobs_chunk >= 0);
  FUZZ_CHECK(out.prompt_logprobs_first_chunk >= 0);
  FUZZ_CHECK(out.prompt_logprobs_first_chunk == 0 || out.prompt_logprobs_chunk > 0);
  const engine::SamplingParams& s = out.sampling;
  FUZZ_CHECK(s.temperature >= 0 && s.top_k >= 0 && s.top_p > 0 && s.top_p <= 1 && s.min_p >= 0 && s.min_p <= 1);
  FUZZ_CHECK(s.repetition_penalty > 0 && s.repetition_penalty <= 2);
  FUZZ_CHECK(s.presence_penalty >= -2 && s.presence_penalty <= 2 && s.frequency_penalty >= -2 && s.frequency_penalty <= 2);
  const std::string decoded = tok.DecodeBytes(out.prompt, /*skip_special=*/false);
  if (in.input_case() == v1::GenerateRequest::kText) {
    FUZZ_CHECK(decoded == tok.TokenBytes(tok.bos_id()) + in.text());
  } else if (in.input_case() == v1::GenerateRequest::kChat) {
    std::string prompt;
    FUZZ_CHECK(api::RenderChat(in.chat(), tok, &prompt).ok());
    FUZZ_CHECK(decoded == prompt);
  }
}

// What the Tokenize handler does with a request before encoding it.
void CheckTokenize(const v1::TokenizeRequest& in, const models::Tokenizer& tok) {
  std::string text;
  if (in.input_case() == v1::TokenizeRequest::kChat) {
    const grpc::Status st = api::RenderChat(in.chat(), tok, &text);
    if (!st.ok()) {
      FUZZ_CHECK(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT && !st.error_message().empty());
      return;
    }
  } else if (in.input_case() == v1::TokenizeRequest::kText) {
    text = in.text();
  }
  FUZZ_CHECK(models::IsValidUtf8(text));  // protobuf's parser guarantees it for string fields
  for (int32_t id : tok.Encode(text)) FUZZ_CHECK(id >= 0 && id < tok.vocab_size());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Protobuf logs each refused string field to stderr; at fuzzing rates that is most of the time.
  google::protobuf::SetLogHandler([](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<std::unique_ptr<models::Tokenizer>> toks = [] {
    std::vector<std::unique_ptr<models::Tokenizer>> v;
    for (const std::string& t : fuzz::ChatTemplates()) v.push_back(fuzz::ByteLevelTokenizer(t));
    return v;
  }();
  if (size == 0) return 0;
  const models::Tokenizer& tok = *toks[(data[0] >> 2) % toks.size()];
  const std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] & 3) {
    case 1: {
      v1::TokenizeRequest req;
      if (Parse(bytes, &req)) CheckTokenize(req, tok);
      break;
    }
    case 2: {
      v1::AbortRequest req;
      if (Parse(bytes, &req) && api::ValidRequestId(req.request_id()))
        FUZZ_CHECK(req.request_id().size() <= api::kMaxRequestIdBytes);
      break;
    }
    default: {
      v1::GenerateRequest req;
      if (Parse(bytes, &req)) CheckGenerate(req, tok);
      break;
    }
  }
  return 0;
}
