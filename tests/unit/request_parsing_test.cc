// Request parsing at the API's edge (proto/request_parsing.*), request ids
// (server/api/request_id.*) and request validation (server/api/request_validation.*): invalid
// UTF-8 anywhere in a request is named, malformed bytes are refused, valid requests parse;
// caller ids are bounded, server ids are random; a request that would leave the engine an
// empty prompt is refused. Arbitrary bytes through all three: fuzz/request_fuzz.cc.
#include <gtest/gtest.h>
#include <grpcpp/support/byte_buffer.h>

#include <array>
#include <regex>
#include <set>
#include <string>

#include "models/gguf.h"
#include "models/tokenizer.h"
#include "proto/request_parsing.h"
#include "server/api/request_id.h"
#include "server/api/request_validation.h"
#include "tests/common/byte_char.h"
#include "tests/unit/gguf_writer.h"

namespace {

grpc::ByteBuffer Buffer(const std::string& bytes) {
  grpc::Slice slice(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&slice, 1);
}

// A length-delimited field: tag (number << 3 | 2), length (< 128), bytes.
std::string Field(int number, const std::string& bytes) {
  return std::string(1, static_cast<char>(number << 3 | 2)) + static_cast<char>(bytes.size()) + bytes;
}

TEST(RequestParsing, NamesTheFieldWithInvalidUtf8) {
  const std::string bad = "\xff\xfe\xfd";
  // The probe's request: text = ff fe fd, max_tokens = 4.
  const std::string probe = Field(2, bad) + "\x28\x04";
  EXPECT_EQ(svdq::proto::FirstInvalidUtf8Field(svdq::v1::GenerateRequest::descriptor(), probe),
            "svdq.v1.GenerateRequest.text");
  // Nested: chat (7) -> messages (1) -> content (2).
  const std::string chat = Field(7, Field(1, Field(1, "user") + Field(2, "ok " + bad)));
  EXPECT_EQ(svdq::proto::FirstInvalidUtf8Field(svdq::v1::GenerateRequest::descriptor(), chat),
            "svdq.v1.ChatMessage.content");
  EXPECT_EQ(svdq::proto::FirstInvalidUtf8Field(svdq::v1::GenerateRequest::descriptor(), Field(8, bad)),
            "svdq.v1.GenerateRequest.stop");
  EXPECT_EQ(svdq::proto::FirstInvalidUtf8Field(svdq::v1::TokenizeRequest::descriptor(), Field(1, bad)),
            "svdq.v1.TokenizeRequest.text");
  EXPECT_EQ(svdq::proto::FirstInvalidUtf8Field(svdq::v1::AbortRequest::descriptor(), Field(1, bad)),
            "svdq.v1.AbortRequest.request_id");
  // Valid UTF-8 (multi-byte too) and unknown fields are not flagged.
  EXPECT_EQ(svdq::proto::FirstInvalidUtf8Field(svdq::v1::GenerateRequest::descriptor(),
                                               Field(2, "caf\xc3\xa9") + Field(15, bad)),
            "");
}

TEST(RequestParsing, ParseRequestMarksWhatItCannotRead) {
  svdq::v1::GenerateRequest req;
  grpc::ByteBuffer bad = Buffer(Field(2, "\xc3") + "\x28\x04");  // a truncated 2-byte sequence
  grpc::Status st = svdq::proto::ParseRequest(&bad, &req);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(svdq::proto::RequestError(req), "field svdq.v1.GenerateRequest.text is not valid UTF-8");
  EXPECT_EQ(req.max_tokens(), 0);  // nothing of it is kept

  grpc::ByteBuffer malformed = Buffer("\x12\x7f" "abc");  // length 127, 3 bytes present
  ASSERT_TRUE(svdq::proto::ParseRequest(&malformed, &req).ok());
  EXPECT_NE(svdq::proto::RequestError(req).find("not a well-formed svdq.v1.GenerateRequest"), std::string::npos);

  // A client cannot plant the marker: a valid request keeps no unknown fields.
  grpc::ByteBuffer planted = Buffer(Field(2, "hi") + std::string("\xfa\xff\xff\xff\x0f\x01x"));
  ASSERT_TRUE(svdq::proto::ParseRequest(&planted, &req).ok());
  EXPECT_EQ(svdq::proto::RequestError(req), "");
  EXPECT_EQ(req.text(), "hi");

  svdq::v1::GenerateRequest want;
  want.set_text("Hello, w\xc3\xb6rld");
  want.set_max_tokens(7);
  want.add_stop("\n");
  grpc::ByteBuffer good = Buffer(want.SerializeAsString());
  st = svdq::proto::ParseRequest(&good, &req);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(svdq::proto::RequestError(req), "");
  EXPECT_EQ(req.text(), want.text());
  EXPECT_EQ(req.max_tokens(), 7);
  ASSERT_EQ(req.stop_size(), 1);
}

// A byte-level tokenizer whose vocabulary has the ASCII bytes only, and an [INST] chat
// template with Llama 2's <<SYS>> block.
std::unique_ptr<svdq::models::Tokenizer> AsciiTokenizer() {
  std::vector<std::string> tokens = {"<|end|>"};
  for (unsigned b = 0; b < 128; ++b) tokens.push_back(svdq::testing::ByteChar(b));
  svdq::testing::GgufWriter w;
  w.KvString("tokenizer.ggml.model", "gpt2");
  w.KvStrings("tokenizer.ggml.tokens", tokens);
  w.KvStrings("tokenizer.ggml.merges", {});
  w.KvU32("tokenizer.ggml.eos_token_id", 0);
  w.KvString("tokenizer.chat_template",
             "<<SYS>>{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
             "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{% endif %}");
  const std::vector<uint8_t> bytes = w.Build();
  return svdq::models::Tokenizer::FromGguf(*svdq::models::GgufFile::FromBuffer(bytes.data(), bytes.size(), "tok.gguf"));
}

TEST(RequestValidation, RefusesRequestsThatLeaveNoPromptTokens) {
  auto tok = AsciiTokenizer();
  svdq::models::ModelConfig cfg;
  cfg.vocab_size = tok->vocab_size();
  cfg.max_context = 64;
  svdq::engine::Request out;
  svdq::v1::GenerateRequest req;
  req.set_text("hi!");
  ASSERT_TRUE(svdq::api::ToEngineRequest(req, cfg, *tok, &out).ok());
  EXPECT_EQ(out.prompt.size(), 3u);
  // Text whose bytes are all outside the vocabulary (and no unknown token) encodes to nothing.
  req.set_text("\xE6\x97\xA5\xE6\x9C\xAC");
  grpc::Status st = svdq::api::ToEngineRequest(req, cfg, *tok, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "the input encodes to no tokens");
  // Found by fuzz/request_fuzz.cc: a lone system message rendered to an empty prompt.
  auto* m = req.mutable_chat()->add_messages();
  m->set_role("system");
  m->set_content("Be brief.");
  st = svdq::api::ToEngineRequest(req, cfg, *tok, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("followed by a user message"), std::string::npos) << st.error_message();
  m = req.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Hi");
  ASSERT_TRUE(svdq::api::ToEngineRequest(req, cfg, *tok, &out).ok());
  EXPECT_EQ(tok->DecodeBytes(out.prompt, false), "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]");
}

TEST(RequestIds, CallerIdsAreBounded) {
  using svdq::api::ValidRequestId;
  EXPECT_TRUE(ValidRequestId("job-1"));
  EXPECT_TRUE(ValidRequestId(std::string(128, 'a')));
  EXPECT_FALSE(ValidRequestId(""));
  EXPECT_FALSE(ValidRequestId(std::string(129, 'a')));
  EXPECT_FALSE(ValidRequestId(std::string(1 << 20, 'a')));
  EXPECT_FALSE(ValidRequestId("has space"));
  EXPECT_FALSE(ValidRequestId("tab\there"));
  EXPECT_FALSE(ValidRequestId("caf\xc3\xa9"));
  EXPECT_FALSE(ValidRequestId(std::string("nul\0x", 5)));
}

TEST(RequestIds, ServerIdsAreRandom128Bit) {
  const std::regex form("req-[0-9a-f]{32}");
  std::set<std::string> seen;
  std::array<int, 16> first_digit{};
  for (int i = 0; i < 2000; ++i) {
    std::string id = svdq::api::NewRequestId();
    ASSERT_TRUE(std::regex_match(id, form)) << id;
    EXPECT_TRUE(svdq::api::ValidRequestId(id));
    seen.insert(id);
    ++first_digit[std::stoi(id.substr(4, 1), nullptr, 16)];
  }
  EXPECT_EQ(seen.size(), 2000u);  // no repeats, as a counter would also give...
  // ...but unlike a counter, the leading digit is spread over all 16 values (2000 draws:
  // each expected 125 times; 40 is more than 7 standard deviations below).
  for (int c : first_digit) EXPECT_GT(c, 40);
}

}  // namespace
