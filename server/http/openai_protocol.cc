#include "server/http/openai_protocol.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>
#include <map>

#include "server/api/status_messages.h"

namespace svdq::http {
namespace {

using nlohmann::json;

constexpr size_t kMaxPrompts = 64;  // choices per completions request
constexpr int kMaxLogprobs = 20;

std::string Dump(const json& j) {
  // Token texts can be partial UTF-8 characters: replaced, never an exception.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string TypeOf(int status) {
  switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 409: return "conflict_error";
    case 413: return "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable_error";
    default: return "server_error";
  }
}

// Field readers: absent or null leaves *out unchanged; a wrong type or range is an error.
struct Reader {
  const json& obj;
  ApiError err;

  const json* Get(const char* name) const {
    auto it = obj.find(name);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }
  bool Fail(const char* name, const std::string& what) {
    if (err.ok()) err = MakeError(400, std::string("'") + name + "' " + what, name);
    return false;
  }
  bool Bool(const char* name, bool* out) {
    const json* v = Get(name);
    if (!v) return true;
    if (!v->is_boolean()) return Fail(name, "must be a boolean");
    *out = v->get<bool>();
    return true;
  }
  bool Int(const char* name, int64_t lo, int64_t hi, int64_t* out) {
    const json* v = Get(name);
    if (!v) return true;
    int64_t x;
    if (v->is_number_integer()) {
      if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi)) return Fail(name, "is too large");
      x = v->get<int64_t>();
    } else if (v->is_number_float() && std::isfinite(v->get<double>()) && v->get<double>() == std::floor(v->get<double>()) &&
               std::fabs(v->get<double>()) < 9e15) {
      x = static_cast<int64_t>(v->get<double>());  // 16.0 is 16
    } else {
      return Fail(name, "must be an integer");
    }
    if (x < lo || x > hi) return Fail(name, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    *out = x;
    return true;
  }
  bool Int32(const char* name, int64_t lo, int64_t hi, int32_t* out) {
    int64_t x = *out;
    if (!Int(name, lo, hi, &x)) return false;
    *out = static_cast<int32_t>(x);
    return true;
  }
  bool Float(const char* name, float* out) {
    const json* v = Get(name);
    if (!v) return true;
    if (!v->is_number()) return Fail(name, "must be a number");
    const double x = v->get<double>();
    if (!std::isfinite(x) || std::fabs(x) > std::numeric_limits<float>::max()) return Fail(name, "must be a finite number");
    *out = static_cast<float>(x);
    return true;
  }
  bool String(const char* name, std::string* out) {
    const json* v = Get(name);
    if (!v) return true;
    if (!v->is_string()) return Fail(name, "must be a string");
    *out = v->get<std::string>();
    return true;
  }
};

bool IsTokenList(const json& v) {
  if (!v.is_array() || v.empty()) return false;
  for (const auto& x : v)
    if (!x.is_number_integer()) return false;
  return true;
}

// Sampling, length and stop fields shared by both endpoints, into `base`.
bool ReadCommon(Reader& r, bool chat, svdq::v1::GenerateRequest* base, OpenAiRequest* out) {
  auto* s = base->mutable_sampling();
  float temperature = 1.f, top_p = 1.f, min_p = 0.f, presence = 0.f, frequency = 0.f, repetition = 1.f;
  int64_t top_k = 0, n = 1, best_of = 1, max_tokens = chat ? 0 : 16, min_tokens = 0;
  bool ignore_eos = false;
  if (!r.Float("temperature", &temperature) || !r.Float("top_p", &top_p) || !r.Float("min_p", &min_p) ||
      !r.Float("presence_penalty", &presence) || !r.Float("frequency_penalty", &frequency) ||
      !r.Float("repetition_penalty", &repetition) || !r.Int("top_k", -1, 1 << 30, &top_k) ||
      !r.Int("n", 1, 1 << 30, &n) || !r.Int("best_of", 1, 1 << 30, &best_of) ||
      !r.Int("min_tokens", 0, 1 << 30, &min_tokens) || !r.Bool("ignore_eos", &ignore_eos) ||
      !r.Bool("stream", &out->stream))
    return false;
  if (chat) {
    if (!r.Int("max_tokens", 0, 1 << 30, &max_tokens) || !r.Int("max_completion_tokens", 0, 1 << 30, &max_tokens))
      return false;
  } else if (!r.Int("max_tokens", 0, 1 << 30, &max_tokens)) {
    return false;
  }
  if (n != 1) return r.Fail("n", "must be 1 (one choice per prompt)");
  if (best_of != 1) return r.Fail("best_of", "must be 1");
  if (const json* v = r.Get("seed")) {
    if (!v->is_number_integer()) return r.Fail("seed", "must be an integer");
    s->set_seed(v->is_number_unsigned() ? v->get<uint64_t>() : static_cast<uint64_t>(v->get<int64_t>()));
  }
  if (temperature < 0) return r.Fail("temperature", "must be >= 0");
  s->set_temperature(temperature);
  s->set_top_p(top_p);
  s->set_top_k(top_k < 0 ? 0 : static_cast<int32_t>(top_k));  // -1 (vLLM's "off") is 0 here
  s->set_min_p(min_p);
  s->set_presence_penalty(presence);
  s->set_frequency_penalty(frequency);
  s->set_repetition_penalty(repetition);
  base->set_min_tokens(static_cast<int32_t>(min_tokens));
  base->set_ignore_eos(ignore_eos);
  // max_tokens 0 on completions scores the prompt (with echo): the engine generates one
  // token, which is not returned. On chat, absent means up to the context limit.
  if (!chat && max_tokens == 0) {
    out->score_only = true;
    max_tokens = 1;
  }
  base->set_max_tokens(static_cast<int32_t>(max_tokens));
  if (const json* v = r.Get("stop")) {
    if (v->is_string()) {
      base->add_stop(v->get<std::string>());
    } else if (v->is_array()) {
      for (const auto& x : *v) {
        if (!x.is_string()) return r.Fail("stop", "must be a string or a list of strings");
        base->add_stop(x.get<std::string>());
      }
    } else {
      return r.Fail("stop", "must be a string or a list of strings");
    }
  }
  if (const json* v = r.Get("stop_token_ids")) {
    if (!v->is_array()) return r.Fail("stop_token_ids", "must be a list of integers");
    for (const auto& x : *v) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > std::numeric_limits<int32_t>::max())
        return r.Fail("stop_token_ids", "must be a list of token ids");
      base->add_stop_token_ids(static_cast<int32_t>(x.get<int64_t>()));
    }
  }
  if (const json* v = r.Get("stream_options")) {
    if (!v->is_object()) return r.Fail("stream_options", "must be an object");
    Reader so{*v, {}};
    if (!so.Bool("include_usage", &out->include_usage)) {
      r.err = so.err;
      return false;
    }
    if (!out->stream) return r.Fail("stream_options", "is only allowed with stream: true");
  }
  if (const json* v = r.Get("logit_bias")) {
    if (!v->is_object()) return r.Fail("logit_bias", "must be an object");
    if (!v->empty()) return r.Fail("logit_bias", "is not supported by this server");
  }
  return true;
}

// Chat message content: a string, or a list of {"type": "text", "text": ...} parts.
bool ReadContent(Reader& r, const json& m, std::string* out) {
  auto it = m.find("content");
  if (it == m.end() || it->is_null()) return true;  // e.g. an assistant turn without text
  if (it->is_string()) {
    *out = it->get<std::string>();
    return true;
  }
  if (!it->is_array()) return r.Fail("messages", "content must be a string or a list of text parts");
  for (const auto& part : *it) {
    if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") || !part["text"].is_string())
      return r.Fail("messages", "content parts must be {\"type\": \"text\", \"text\": ...}; other kinds are not supported");
    *out += part["text"].get<std::string>();
  }
  return true;
}

json Usage(int prompt_tokens, int completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

json TopDict(const std::vector<std::pair<int32_t, float>>& top, const TokenText& text) {
  json d = json::object();
  for (const auto& [id, lp] : top) {
    const std::string t = text(id);
    if (!d.contains(t) || d[t].get<double>() < lp) d[t] = lp;  // two ids, one text: the likelier
  }
  return d;
}

// The legacy completions logprobs object for `part` (prompt scores first, on echo).
json LegacyLogprobs(const ChoiceOutput& part, int64_t text_offset, const TokenText& text) {
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(), offsets = json::array();
  int64_t off = text_offset;
  auto add = [&](int32_t id, json lp, json top) {
    const std::string t = text(id);
    tokens.push_back(t);
    token_logprobs.push_back(std::move(lp));
    top_logprobs.push_back(std::move(top));
    offsets.push_back(off);
    off += CharCount(t);
  };
  for (size_t i = 0; i < part.prompt_ids.size(); ++i) {
    if (i == 0) {
      add(part.prompt_ids[i], nullptr, nullptr);
      continue;
    }
    const size_t k = i - 1;
    add(part.prompt_ids[i], k < part.prompt_logprobs.size() ? json(part.prompt_logprobs[k]) : json(nullptr),
        k < part.prompt_top.size() ? TopDict(part.prompt_top[k], text) : json(nullptr));
  }
  for (const auto& lp : part.logprobs) add(lp.token_id, lp.logprob, TopDict(lp.top, text));
  return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top_logprobs}, {"text_offset", offsets}};
}

json Bytes(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

json ChatLogprobs(const ChoiceOutput& part, const TokenText& text) {
  json content = json::array();
  for (const auto& lp : part.logprobs) {
    json top = json::array();
    for (const auto& [id, v] : lp.top) {
      const std::string t = text(id);
      top.push_back({{"token", t}, {"logprob", v}, {"bytes", Bytes(t)}});
    }
    const std::string t = text(lp.token_id);
    content.push_back({{"token", t}, {"logprob", lp.logprob}, {"bytes", Bytes(t)}, {"top_logprobs", top}});
  }
  return {{"content", content}};
}

json Head(const ResponseHead& head, const char* object) {
  return {{"id", head.id}, {"object", object}, {"created", head.created}, {"model", head.model}};
}

}  // namespace

ApiError MakeError(int status, const std::string& message, const std::string& param, const std::string& code) {
  ApiError e;
  e.status = status;
  e.message = message;
  e.type = TypeOf(status);
  e.param = param;
  e.code = code;
  return e;
}

std::string ErrorBody(const ApiError& e) {
  json err = {{"message", e.message},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}};
  return Dump(json{{"error", err}});
}

ApiError FromStatus(const grpc::Status& st) {
  switch (st.error_code()) {
    case grpc::StatusCode::OK: return {};
    case grpc::StatusCode::INVALID_ARGUMENT: return MakeError(400, st.error_message());
    case grpc::StatusCode::UNAUTHENTICATED: return MakeError(401, st.error_message(), "", "invalid_api_key");
    case grpc::StatusCode::NOT_FOUND: return MakeError(404, st.error_message());
    case grpc::StatusCode::ALREADY_EXISTS: return MakeError(409, st.error_message());
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      // The queue being full passes; a request larger than the whole cache never will.
      if (st.error_message() == api::kQueueFullMessage)
        return MakeError(429, st.error_message(), "", "queue_full");
      return MakeError(400, st.error_message(), "", "context_length_exceeded");
    case grpc::StatusCode::UNAVAILABLE: return MakeError(503, st.error_message());
    default: return MakeError(500, st.error_message());
  }
}

ApiError ParseOpenAiRequest(const std::string& body, bool chat, OpenAiRequest* out) {
  *out = OpenAiRequest{};
  out->chat = chat;
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return MakeError(400, "the body is not valid JSON");
  if (!j.is_object()) return MakeError(400, "the body must be a JSON object");
  Reader r{j, {}};
  if (!r.String("model", &out->model)) return r.err;
  svdq::v1::GenerateRequest base;
  if (!ReadCommon(r, chat, &base, out)) return r.err;
  if (chat) {
    bool logprobs = false;
    int64_t top = 0;
    if (!r.Bool("logprobs", &logprobs) || !r.Int("top_logprobs", 0, kMaxLogprobs, &top)) return r.err;
    if (r.Get("top_logprobs") && !logprobs) return MakeError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs");
    if (logprobs) out->logprobs = static_cast<int>(top);
    const json* msgs = r.Get("messages");
    if (!msgs) return MakeError(400, "'messages' is required", "messages");
    if (!msgs->is_array() || msgs->empty()) return MakeError(400, "'messages' must be a non-empty list", "messages");
    auto* chat_msgs = base.mutable_chat();
    for (const auto& m : *msgs) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
        return MakeError(400, "each message must be an object with a string 'role'", "messages");
      std::string content;
      if (!ReadContent(r, m, &content)) return r.err;
      auto* cm = chat_msgs->add_messages();
      cm->set_role(m["role"].get<std::string>());
      cm->set_content(content);
    }
    if (out->logprobs >= 0) base.set_logprobs(out->logprobs);
    out->prompts.push_back(base);
    return {};
  }
  int64_t logprobs = -1;
  std::string suffix;
  if (!r.Bool("echo", &out->echo) || !r.Int("logprobs", 0, kMaxLogprobs, &logprobs) || !r.String("suffix", &suffix))
    return r.err;
  if (!suffix.empty()) return MakeError(400, "'suffix' is not supported by this server", "suffix");
  out->logprobs = static_cast<int>(logprobs);
  if (out->logprobs >= 0) {
    base.set_logprobs(out->logprobs);
    if (out->echo) base.set_prompt_logprobs(true);
  }
  const json* p = r.Get("prompt");
  if (!p) return MakeError(400, "'prompt' is required", "prompt");
  auto add_text = [&](const std::string& s) {
    svdq::v1::GenerateRequest g = base;
    g.set_text(s);
    out->prompts.push_back(std::move(g));
    out->prompt_texts.push_back(s);
  };
  auto add_ids = [&](const json& ids) {
    svdq::v1::GenerateRequest g = base;
    for (const auto& x : ids) {
      const int64_t id = x.get<int64_t>();  // out of int32 range: an id no vocabulary has
      g.mutable_token_ids()->add_ids(id < 0 || id > std::numeric_limits<int32_t>::max() ? -1 : static_cast<int32_t>(id));
    }
    out->prompts.push_back(std::move(g));
    out->prompt_texts.emplace_back();
  };
  const char* kShape = "must be a string, a list of strings, a list of token ids or a list of such lists";
  if (p->is_string()) {
    add_text(p->get<std::string>());
  } else if (IsTokenList(*p)) {
    add_ids(*p);
  } else if (p->is_array() && !p->empty()) {
    if (p->size() > kMaxPrompts)
      return MakeError(400, "at most " + std::to_string(kMaxPrompts) + " prompts per request", "prompt");
    for (const auto& x : *p) {
      if (x.is_string()) add_text(x.get<std::string>());
      else if (IsTokenList(x)) add_ids(x);
      else return MakeError(400, std::string("'prompt' ") + kShape, "prompt");
    }
  } else {
    return MakeError(400, std::string("'prompt' ") + kShape, "prompt");
  }
  return {};
}

int64_t CharCount(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string FinishReasonText(engine::FinishReason r) {
  return r == engine::FinishReason::kLength ? "length" : "stop";
}

std::string CompletionResponse(const ResponseHead& head, const OpenAiRequest& req,
                               const std::vector<ChoiceOutput>& choices, const TokenText& token_text) {
  json out = Head(head, req.chat ? "chat.completion" : "text_completion");
  json list = json::array();
  int prompt_tokens = 0, completion_tokens = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceOutput& c = choices[i];
    prompt_tokens += c.prompt_tokens;
    completion_tokens += c.completion_tokens;
    json choice = {{"index", static_cast<int>(i)}, {"finish_reason", c.finish_reason}};
    if (req.chat) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
      choice["logprobs"] = req.logprobs >= 0 ? ChatLogprobs(c, token_text) : json(nullptr);
    } else {
      const std::string prefix = req.echo ? req.prompt_texts[i] : "";
      choice["text"] = prefix + c.text;
      choice["logprobs"] = req.logprobs >= 0 ? LegacyLogprobs(c, 0, token_text) : json(nullptr);
    }
    list.push_back(std::move(choice));
  }
  out["choices"] = std::move(list);
  out["usage"] = Usage(prompt_tokens, completion_tokens);
  return Dump(out);
}

std::string CompletionChunk(const ResponseHead& head, const OpenAiRequest& req, int index, const ChoiceOutput& part,
                            int64_t text_offset, const TokenText& token_text) {
  json out = Head(head, "text_completion");
  json choice = {{"index", index},
                 {"text", part.text},
                 {"logprobs", req.logprobs >= 0 ? LegacyLogprobs(part, text_offset, token_text) : json(nullptr)},
                 {"finish_reason", part.finish_reason.empty() ? json(nullptr) : json(part.finish_reason)}};
  out["choices"] = json::array({choice});
  if (req.include_usage) out["usage"] = nullptr;
  return Dump(out);
}

std::string ChatRoleChunk(const ResponseHead& head, const OpenAiRequest& req, int index) {
  json out = Head(head, "chat.completion.chunk");
  out["choices"] = json::array({{{"index", index},
                                 {"delta", {{"role", "assistant"}, {"content", ""}}},
                                 {"logprobs", nullptr},
                                 {"finish_reason", nullptr}}});
  if (req.include_usage) out["usage"] = nullptr;
  return Dump(out);
}

std::string ChatChunk(const ResponseHead& head, const OpenAiRequest& req, int index, const ChoiceOutput& part,
                      const TokenText& token_text) {
  json out = Head(head, "chat.completion.chunk");
  json delta = json::object();
  if (!part.text.empty() || part.finish_reason.empty()) delta["content"] = part.text;
  json choice = {{"index", index},
                 {"delta", delta},
                 {"logprobs", req.logprobs >= 0 && !part.logprobs.empty() ? ChatLogprobs(part, token_text) : json(nullptr)},
                 {"finish_reason", part.finish_reason.empty() ? json(nullptr) : json(part.finish_reason)}};
  out["choices"] = json::array({choice});
  if (req.include_usage) out["usage"] = nullptr;
  return Dump(out);
}

std::string UsageChunk(const ResponseHead& head, const OpenAiRequest& req, int prompt_tokens, int completion_tokens) {
  json out = Head(head, req.chat ? "chat.completion.chunk" : "text_completion");
  out["choices"] = json::array();
  out["usage"] = Usage(prompt_tokens, completion_tokens);
  return Dump(out);
}

std::string ModelsResponse(const std::string& model, int64_t created, int64_t max_model_len) {
  json m = {{"id", model}, {"object", "model"}, {"created", created}, {"owned_by", "svdq-serve"},
            {"max_model_len", max_model_len}};
  return Dump(json{{"object", "list"}, {"data", json::array({m})}});
}

}  // namespace svdq::http
