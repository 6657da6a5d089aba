// The OpenAI JSON of the HTTP front (server/http/openai_protocol.h) and the API keys both
// fronts check (server/api/auth.h): parsing into GenerateRequests, the errors, the shapes
// of responses and stream chunks.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>

#include "server/api/auth.h"
#include "server/api/status_messages.h"
#include "server/http/openai_protocol.h"

using nlohmann::json;
using svdq::http::ApiError;
using svdq::http::OpenAiRequest;
using svdq::http::ParseOpenAiRequest;

namespace {

OpenAiRequest Ok(const std::string& body, bool chat = false) {
  OpenAiRequest r;
  const ApiError e = ParseOpenAiRequest(body, chat, &r);
  EXPECT_TRUE(e.ok()) << body << " -> " << e.message;
  return r;
}

ApiError Bad(const std::string& body, bool chat = false) {
  OpenAiRequest r;
  return ParseOpenAiRequest(body, chat, &r);
}

std::string Text(int32_t id) { return "t" + std::to_string(id); }

}  // namespace

TEST(OpenAiProtocol, CompletionPromptsAndDefaults) {
  OpenAiRequest r = Ok(R"({"model": "m", "prompt": "hello"})");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.prompts[0].text(), "hello");
  EXPECT_EQ(r.prompts[0].max_tokens(), 16);  // OpenAI's default
  EXPECT_FLOAT_EQ(r.prompts[0].sampling().temperature(), 1.f);
  EXPECT_FALSE(r.prompts[0].has_logprobs());
  EXPECT_FALSE(r.stream);

  r = Ok(R"({"prompt": ["a", [1, 2, 3], "c"], "max_tokens": 5, "temperature": 0, "stop": "x", "seed": 7,
             "top_k": -1, "logprobs": 2, "echo": true})");
  ASSERT_EQ(r.prompts.size(), 3u);
  EXPECT_EQ(r.prompts[0].text(), "a");
  ASSERT_EQ(r.prompts[1].token_ids().ids_size(), 3);
  EXPECT_EQ(r.prompts[1].token_ids().ids(2), 3);
  EXPECT_EQ(r.prompt_texts[1], "");
  for (const auto& p : r.prompts) {
    EXPECT_EQ(p.max_tokens(), 5);
    EXPECT_EQ(p.stop(0), "x");
    EXPECT_EQ(p.sampling().seed(), 7u);
    EXPECT_EQ(p.sampling().top_k(), 0);
    EXPECT_EQ(p.logprobs(), 2);
    EXPECT_TRUE(p.prompt_logprobs());  // echo with logprobs scores the prompt
  }

  r = Ok(R"({"prompt": [5, 6], "max_tokens": 0, "echo": true, "logprobs": 1})");
  EXPECT_TRUE(r.score_only);
  EXPECT_EQ(r.prompts[0].max_tokens(), 1);  // one token computed, none returned

  r = Ok(R"({"prompt": "p", "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 16.0})");
  EXPECT_TRUE(r.stream && r.include_usage);
  EXPECT_EQ(r.prompts[0].max_tokens(), 16);
  // An id past int32 becomes one no vocabulary has, for validation to refuse.
  r = Ok(R"({"prompt": [1, 99999999999]})");
  EXPECT_EQ(r.prompts[0].token_ids().ids(1), -1);
}

TEST(OpenAiProtocol, ChatMessages) {
  OpenAiRequest r = Ok(R"({"messages": [{"role": "system", "content": "be brief"},
                                         {"role": "user", "content": [{"type": "text", "text": "hi "},
                                                                      {"type": "text", "text": "there"}]}],
                           "max_completion_tokens": 9, "logprobs": true, "top_logprobs": 3})", true);
  ASSERT_EQ(r.prompts.size(), 1u);
  const auto& m = r.prompts[0].chat().messages();
  ASSERT_EQ(m.size(), 2);
  EXPECT_EQ(m[1].role(), "user");
  EXPECT_EQ(m[1].content(), "hi there");
  EXPECT_EQ(r.prompts[0].max_tokens(), 9);
  EXPECT_EQ(r.logprobs, 3);
  EXPECT_EQ(r.prompts[0].logprobs(), 3);
  // Chat without max_tokens runs to the context limit (0 in the engine's terms), not 16.
  EXPECT_EQ(Ok(R"({"messages": [{"role": "user", "content": "x"}]})", true).prompts[0].max_tokens(), 0);
}

TEST(OpenAiProtocol, BadBodiesAreFourHundredsNamingTheField) {
  struct Case {
    const char* body;
    bool chat;
    const char* param;
  };
  const Case cases[] = {
      {R"({"prompt": "x", "max_tokens": "abc"})", false, "max_tokens"},
      {R"({"prompt": "x", "temperature": "x"})", false, "temperature"},
      {R"({"prompt": "x", "temperature": -1})", false, "temperature"},
      {R"({"prompt": "x", "n": 2})", false, "n"},
      {R"({"prompt": "x", "logprobs": 50})", false, "logprobs"},
      {R"({"prompt": "x", "max_tokens": -3})", false, "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 1e300})", false, "max_tokens"},
      {R"({"prompt": "x", "stop": 5})", false, "stop"},
      {R"({"prompt": "x", "stop": ["a", 1]})", false, "stop"},
      {R"({"prompt": "x", "stream": "yes"})", false, "stream"},
      {R"({"prompt": "x", "stream_options": {"include_usage": true}})", false, "stream_options"},
      {R"({"prompt": "x", "suffix": "y"})", false, "suffix"},
      {R"({"prompt": "x", "logit_bias": {"5": 10}})", false, "logit_bias"},
      {R"({"prompt": "x", "seed": 1.5})", false, "seed"},
      {R"({"prompt": 5})", false, "prompt"},
      {R"({"prompt": []})", false, "prompt"},
      {R"({"prompt": [[]]})", false, "prompt"},
      {R"({"prompt": [1, "a"]})", false, "prompt"},
      {R"({"max_tokens": 3})", false, "prompt"},
      {R"({"prompt": "x", "model": 3})", false, "model"},
      {R"({"messages": "hi"})", true, "messages"},
      {R"({"messages": []})", true, "messages"},
      {R"({"messages": [{"content": "no role"}]})", true, "messages"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", true, "messages"},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", true, "top_logprobs"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})", true, "top_logprobs"},
  };
  for (const auto& c : cases) {
    const ApiError e = Bad(c.body, c.chat);
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << " -> " << e.message;
    EXPECT_FALSE(e.message.empty());
  }
  std::string many = R"({"prompt": [)";
  for (int i = 0; i < 65; ++i) many += std::string(i ? "," : "") + "\"p\"";
  EXPECT_EQ(Bad(many + "]}").status, 400);
  for (const char* body : {"{bad", "", "[1, 2]", "\"text\"", "null"}) {
    const ApiError e = Bad(body);
    EXPECT_EQ(e.status, 400) << body;
    const json j = json::parse(svdq::http::ErrorBody(e));
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    EXPECT_TRUE(j["error"]["param"].is_null());
  }
}

TEST(OpenAiProtocol, StatusesMapToHttp) {
  using grpc::Status;
  using grpc::StatusCode;
  EXPECT_EQ(svdq::http::FromStatus(Status(StatusCode::INVALID_ARGUMENT, "x")).status, 400);
  EXPECT_EQ(svdq::http::FromStatus(Status(StatusCode::RESOURCE_EXHAUSTED, svdq::api::kQueueFullMessage)).status,
            429);
  EXPECT_EQ(svdq::http::FromStatus(Status(StatusCode::RESOURCE_EXHAUSTED, "the request needs 9 tokens of KV cache")).status,
            400);
  EXPECT_EQ(svdq::http::FromStatus(Status(StatusCode::UNAVAILABLE, "loading")).status, 503);
  EXPECT_EQ(svdq::http::FromStatus(Status(StatusCode::ALREADY_EXISTS, "dup")).status, 409);
  EXPECT_EQ(svdq::http::FromStatus(Status(StatusCode::INTERNAL, "boom")).status, 500);
  EXPECT_TRUE(svdq::http::FromStatus(Status::OK).ok());
}

TEST(OpenAiProtocol, ResponsesAndChunks) {
  svdq::http::ResponseHead head{"cmpl-1", "m", 123};
  OpenAiRequest req = Ok(R"({"prompt": "ab", "echo": true, "logprobs": 1})");
  svdq::http::ChoiceOutput c;
  c.prompt_ids = {1, 2};
  c.prompt_logprobs = {-0.5f};
  c.prompt_top = {{{7, -0.25f}}};
  c.text = "t3";
  c.ids = {3};
  c.logprobs = {{3, -1.f, {{3, -1.f}, {4, -2.f}}}};
  c.finish_reason = "length";
  c.prompt_tokens = 2;
  c.completion_tokens = 1;
  json j = json::parse(svdq::http::CompletionResponse(head, req, {c}, Text));
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], "abt3");  // echo: the prompt as sent, then the text
  const json& lp = j["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"], json({"t1", "t2", "t3"}));
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_DOUBLE_EQ(lp["token_logprobs"][1].get<double>(), -0.5);
  EXPECT_DOUBLE_EQ(lp["top_logprobs"][1]["t7"].get<double>(), -0.25);
  EXPECT_DOUBLE_EQ(lp["top_logprobs"][2]["t4"].get<double>(), -2.0);
  EXPECT_EQ(lp["text_offset"], json({0, 2, 4}));
  EXPECT_EQ(svdq::http::CharCount("Caf\xC3\xA9 \xE2\x80\x94"), 6);  // characters, not bytes
  EXPECT_EQ(j["usage"], json({{"prompt_tokens", 2}, {"completion_tokens", 1}, {"total_tokens", 3}}));

  OpenAiRequest chat = Ok(R"({"messages": [{"role": "user", "content": "x"}], "stream": true,
                               "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 1})", true);
  j = json::parse(svdq::http::ChatRoleChunk(head, chat, 0));
  EXPECT_EQ(j["object"], "chat.completion.chunk");
  EXPECT_EQ(j["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_TRUE(j.contains("usage") && j["usage"].is_null());
  svdq::http::ChoiceOutput part;
  part.text = "t3";
  part.logprobs = {{3, -1.f, {{3, -1.f}}}};
  j = json::parse(svdq::http::ChatChunk(head, chat, 0, part, Text));
  EXPECT_EQ(j["choices"][0]["delta"]["content"], "t3");
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"][0]["token"], "t3");
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"][0]["bytes"], json({116, 51}));
  EXPECT_TRUE(j["choices"][0]["finish_reason"].is_null());
  svdq::http::ChoiceOutput last;
  last.finish_reason = "stop";
  j = json::parse(svdq::http::ChatChunk(head, chat, 0, last, Text));
  EXPECT_EQ(j["choices"][0]["delta"], json::object());
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  j = json::parse(svdq::http::UsageChunk(head, chat, 4, 2));
  EXPECT_EQ(j["choices"], json::array());
  EXPECT_EQ(j["usage"]["total_tokens"], 6);
  // Token texts that are not valid UTF-8 (a piece of a character) never break the JSON.
  auto partial = [](int32_t) { return std::string("\xE2\x82"); };
  EXPECT_NO_THROW(json::parse(svdq::http::ChatChunk(head, chat, 0, part, partial)));
}

TEST(ApiKeys, FileBearerAndOwners) {
  const std::string path = ::testing::TempDir() + "/svdq_keys.txt";
  {
    std::ofstream f(path);
    f << "# team keys\n\n  alpha-key  \nbeta-key\n";
  }
  svdq::api::ApiKeys keys;
  std::string error, owner;
  ASSERT_TRUE(svdq::api::ApiKeys::Load("cli-key", path, &keys, &error)) << error;
  EXPECT_EQ(keys.size(), 3u);
  EXPECT_TRUE(keys.Check("Bearer cli-key", &owner));
  EXPECT_EQ(owner, "key-1");
  EXPECT_TRUE(keys.Check("Bearer alpha-key", &owner));  // trimmed in the file
  EXPECT_EQ(owner, "key-2");
  EXPECT_TRUE(keys.Check("Bearer beta-key", &owner));
  EXPECT_EQ(owner, "key-3");
  EXPECT_TRUE(keys.Check("bearer beta-key", &owner));  // the scheme's case does not matter
  for (const char* bad : {"", "Bearer ", "beta-key", "Bearer beta-ke", "Bearer beta-keyy", "Bearer BETA-KEY",
                          "Basic beta-key", "Bearer # team keys"})
    EXPECT_FALSE(keys.Check(bad, &owner)) << bad;

  svdq::api::ApiKeys off;
  ASSERT_TRUE(svdq::api::ApiKeys::Load("", "", &off, &error));
  EXPECT_FALSE(off.enabled());
  EXPECT_TRUE(off.Check("", &owner));
  EXPECT_EQ(owner, "");

  {
    std::ofstream f(path);
    f << "# nothing\n\n";
  }
  EXPECT_FALSE(svdq::api::ApiKeys::Load("", path, &keys, &error));
  EXPECT_NE(error.find("holds no key"), std::string::npos);
  EXPECT_FALSE(svdq::api::ApiKeys::Load("", path + ".missing", &keys, &error));
  std::remove(path.c_str());
}
