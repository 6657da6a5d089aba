// Fuzzes the HTTP front's JSON (server/http/openai_protocol.cc): request bodies of
// /v1/completions and /v1/chat/completions as any client could send them.
// Input: one byte (low bit: chat or completions), then the body.
// Asserts: no ASan/UBSan report and no exception; a refused body gets a 4xx with a message
// whose error object is valid JSON; an accepted one has 1 to 64 prompts (chat: exactly 1),
// a prompt text per prompt, and a response built from it (whole and as chunks, with
// arbitrary token texts, including broken UTF-8) that parses back as JSON.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz/fuzz_common.h"
#include "server/http/openai_protocol.h"

using namespace svdq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool chat = data[0] & 1;
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  http::OpenAiRequest req;
  const http::ApiError e = http::ParseOpenAiRequest(body, chat, &req);
  if (!e.ok()) {
    FUZZ_CHECK(e.status >= 400 && e.status < 500 && !e.message.empty());
    FUZZ_CHECK(!nlohmann::json::parse(http::ErrorBody(e), nullptr, false).is_discarded());
    return 0;
  }
  FUZZ_CHECK(!req.prompts.empty() && req.prompts.size() <= 64);
  FUZZ_CHECK(!chat || req.prompts.size() == 1);
  FUZZ_CHECK(chat || req.prompt_texts.size() == req.prompts.size());
  // Token texts from the body's own bytes: arbitrary, often not UTF-8.
  auto text = [&](int32_t id) { return body.substr(static_cast<size_t>(id) % (body.size() + 1), 3); };
  http::ResponseHead head{"id", req.model, 1};
  std::vector<http::ChoiceOutput> outs(req.prompts.size());
  for (auto& o : outs) {
    o.text = body.substr(0, 8);
    o.ids = {1, 2};
    o.logprobs = {{1, -0.5f, {{1, -0.5f}, {7, -1.f}}}, {2, -2.f, {}}};
    o.prompt_ids = {3, 4, 5};
    o.prompt_logprobs = {-1.f, -2.f};
    o.prompt_top = {{{3, -1.f}}, {{4, -2.f}}};
    o.finish_reason = "stop";
  }
  auto parses = [](const std::string& s) { return !nlohmann::json::parse(s, nullptr, false).is_discarded(); };
  FUZZ_CHECK(parses(http::CompletionResponse(head, req, outs, text)));
  if (chat) {
    FUZZ_CHECK(parses(http::ChatRoleChunk(head, req, 0)));
    FUZZ_CHECK(parses(http::ChatChunk(head, req, 0, outs[0], text)));
  } else {
    FUZZ_CHECK(parses(http::CompletionChunk(head, req, 0, outs[0], 0, text)));
  }
  FUZZ_CHECK(parses(http::UsageChunk(head, req, 1, 2)));
  return 0;
}
