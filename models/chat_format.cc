// ChatML, Llama 3 and [INST] renderers, and the template recognition that picks one.
#include "models/chat_format.h"

#include <algorithm>
#include <ctime>

#include "models/unicode.h"

namespace svdq::models {
namespace {

// SmolLM2's template inserts this system message when the conversation has none.
constexpr const char* kSmolSystem = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
constexpr const char* kBos = "<s>";
constexpr const char* kEos = "</s>";

// Python's str.strip(): Jinja's |trim and .strip() in the templates.
std::string Strip(const std::string& s) {
  std::u32string u;
  size_t bad;
  if (!DecodeUtf8(s, &u, &bad)) {
    size_t a = s.find_first_not_of(" \t\n\r\v\f"), b = s.find_last_not_of(" \t\n\r\v\f");
    return a == std::string::npos ? "" : s.substr(a, b - a + 1);
  }
  size_t a = 0, b = u.size();
  while (a < b && IsPythonSpace(u[a])) ++a;
  while (b > a && IsPythonSpace(u[b - 1])) --b;
  return ToUtf8(u.substr(a, b - a));
}

bool CheckRole(const ChatTurn& t, size_t i, std::string* error) {
  if (t.role == "system" || t.role == "user" || t.role == "assistant") return true;
  *error = "message " + std::to_string(i) + " has unknown role '" + t.role + "' (system, user, assistant)";
  return false;
}

std::string Trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\n\r"), b = s.find_last_not_of(" \t\n\r");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// A Jinja string literal's value ('...' or "..."), escapes resolved; false if `s` is not one.
bool ParseLiteral(const std::string& s, std::string* out) {
  if (s.size() < 2 || (s[0] != '\'' && s[0] != '"') || s.back() != s[0]) return false;
  out->clear();
  for (size_t i = 1; i + 1 < s.size(); ++i) {
    char c = s[i];
    if (c == s[0]) return false;  // two literals side by side: not one term
    if (c == '\\' && i + 2 < s.size()) {
      char e = s[++i];
      out->push_back(e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e);
    } else {
      out->push_back(c);
    }
  }
  return true;
}

// Splits the `+`-concatenation inside a {{ ... }} into terms; false on anything else.
bool ParseExpression(const std::string& expr, std::vector<ChatFormat::Term>* terms) {
  std::vector<std::string> parts;
  std::string cur;
  char quote = 0;
  for (size_t i = 0; i < expr.size(); ++i) {
    char c = expr[i];
    if (quote) {
      cur.push_back(c);
      if (c == '\\' && i + 1 < expr.size()) cur.push_back(expr[++i]);
      else if (c == quote) quote = 0;
    } else if (c == '\'' || c == '"') {
      quote = c;
      cur.push_back(c);
    } else if (c == '+') {
      parts.push_back(Trim(cur));
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  parts.push_back(Trim(cur));
  terms->clear();
  for (std::string p : parts) {
    ChatFormat::Term t;
    std::string compact;
    for (char c : p)
      if (c != ' ') compact.push_back(c);
    if (ParseLiteral(p, &t.text)) {
      t.kind = ChatFormat::Term::Kind::kLiteral;
    } else if (compact == "bos_token") {
      t.kind = ChatFormat::Term::Kind::kBos;
    } else if (compact == "eos_token") {
      t.kind = ChatFormat::Term::Kind::kEos;
    } else {
      t.kind = ChatFormat::Term::Kind::kContent;
      for (const char* suffix : {".strip()", "|trim"}) {
        size_t n = std::char_traits<char>::length(suffix);
        if (compact.size() > n && compact.compare(compact.size() - n, n, suffix) == 0) {
          compact.resize(compact.size() - n);
          t.strip = true;
        }
      }
      if (compact != "message['content']" && compact != "message[\"content\"]" && compact != "message.content" &&
          compact != "content")
        return false;
    }
    terms->push_back(std::move(t));
  }
  return true;
}

// The expression of the first {{ ... }} after the role test for `role`.
bool ExpressionAfterRole(const std::string& tpl, const std::string& role, std::vector<ChatFormat::Term>* terms) {
  size_t at = std::string::npos;
  for (const std::string& test : {"message['role'] == '" + role + "'", "message[\"role\"] == \"" + role + "\"",
                                  "message.role == '" + role + "'", "message.role == \"" + role + "\""}) {
    // The alternation check mentions "== 'user'" too; take the test that opens an if/elif.
    for (size_t p = tpl.find(test); p != std::string::npos; p = tpl.find(test, p + 1)) {
      size_t open = tpl.rfind("{%", p);
      std::string head = open == std::string::npos ? "" : Trim(tpl.substr(open + 2, p - open - 2));
      if (!head.empty() && head[0] == '-') head = Trim(head.substr(1));
      if (head == "if" || head == "elif") {
        at = std::min(at, p);
        break;
      }
    }
  }
  if (at == std::string::npos) return false;
  // The first expression of this branch that is a plain concatenation: branches for tools
  // or a system message folded into the turn come first in some Mistral templates.
  size_t end = tpl.find("elif", at);
  for (size_t open = tpl.find("{{", at); open < end && open != std::string::npos; open = tpl.find("{{", open + 2)) {
    size_t close = tpl.find("}}", open);
    if (close == std::string::npos) return false;
    std::string expr = tpl.substr(open + 2, close - open - 2);
    if (!expr.empty() && expr[0] == '-') expr.erase(0, 1);
    if (!expr.empty() && expr.back() == '-') expr.pop_back();
    if (ParseExpression(expr, terms)) return true;
  }
  return false;
}

std::string Evaluate(const std::vector<ChatFormat::Term>& terms, const std::string& content) {
  std::string out;
  for (const auto& t : terms) {
    switch (t.kind) {
      case ChatFormat::Term::Kind::kLiteral: out += t.text; break;
      case ChatFormat::Term::Kind::kBos: out += kBos; break;
      case ChatFormat::Term::Kind::kEos: out += kEos; break;
      case ChatFormat::Term::Kind::kContent: out += t.strip ? Strip(content) : content; break;
    }
  }
  return out;
}

}  // namespace

bool ChatFormat::FromTemplate(const std::string& chat_template, ChatFormat* out) {
  const std::string& tpl = chat_template;
  ChatFormat f;
  if (tpl.find("<|im_start|>") != std::string::npos) {
    f.kind_ = Kind::kChatMl;
    f.name_ = "chatml";
    if (tpl.find(kSmolSystem) != std::string::npos) f.default_system_ = kSmolSystem;
  } else if (tpl.find("<|start_header_id|>") != std::string::npos && tpl.find("<|eot_id|>") != std::string::npos) {
    f.kind_ = Kind::kLlama3;
    f.dated_system_ = tpl.find("Cutting Knowledge Date: December 2023") != std::string::npos;
    f.date_from_clock_ = f.dated_system_ && tpl.find("strftime_now") != std::string::npos;
    f.name_ = f.dated_system_ ? "llama3.1" : "llama3";
  } else if (tpl.find("[INST]") != std::string::npos) {
    f.kind_ = Kind::kInst;
    if (!ExpressionAfterRole(tpl, "user", &f.user_) || !ExpressionAfterRole(tpl, "assistant", &f.assistant_)) return false;
    f.sys_block_ = tpl.find("<<SYS>>") != std::string::npos;
    // bos_token outside the turn expressions is emitted once, before the first turn.
    bool bos_in_turn = false;
    for (const auto& t : f.user_) bos_in_turn |= t.kind == Term::Kind::kBos;
    f.bos_first_ = !bos_in_turn && tpl.find("bos_token") != std::string::npos;
    f.name_ = f.sys_block_ ? "llama2" : "mistral";
  } else {
    return false;
  }
  *out = f;
  return true;
}

bool ChatFormat::Render(const std::vector<ChatTurn>& turns, std::string* prompt, std::string* error) const {
  if (turns.empty()) {
    *error = "chat has no messages";
    return false;
  }
  for (size_t i = 0; i < turns.size(); ++i)
    if (!CheckRole(turns[i], i, error)) return false;
  if (kind_ == Kind::kLlama3) return RenderLlama3(turns, prompt, error);
  if (kind_ == Kind::kInst) return RenderInst(turns, prompt, error);
  std::string p;
  if (!default_system_.empty() && turns[0].role != "system")
    p += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
  for (const auto& t : turns) p += "<|im_start|>" + t.role + "\n" + t.content + "<|im_end|>\n";
  p += "<|im_start|>assistant\n";
  *prompt = std::move(p);
  return true;
}

bool ChatFormat::RenderLlama3(const std::vector<ChatTurn>& turns, std::string* prompt, std::string*) const {
  std::string p = "<|begin_of_text|>";
  size_t first = 0;
  if (dated_system_) {
    std::string date = "26 Jul 2024";
    if (date_from_clock_) {  // what transformers' strftime_now("%d %b %Y") gives
      char buf[32];
      std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      std::strftime(buf, sizeof(buf), "%d %b %Y", &tm);
      date = buf;
    }
    std::string system;
    if (turns[0].role == "system") {
      system = Strip(turns[0].content);
      first = 1;
    }
    p += "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: " + date +
         "\n\n" + system + "<|eot_id|>";
  }
  for (size_t i = first; i < turns.size(); ++i)
    p += "<|start_header_id|>" + turns[i].role + "<|end_header_id|>\n\n" + Strip(turns[i].content) + "<|eot_id|>";
  p += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  *prompt = std::move(p);
  return true;
}

bool ChatFormat::RenderInst(const std::vector<ChatTurn>& turns, std::string* prompt, std::string* error) const {
  size_t first = 0;
  std::string system;
  if (turns[0].role == "system") {
    if (!sys_block_) {
      *error = "this model's chat template (" + name_ + ") does not accept a system message";
      return false;
    }
    // The template would drop it and render nothing (or a lone BOS): no prompt to answer.
    if (turns.size() == 1) {
      *error = "a system message must be followed by a user message";
      return false;
    }
    system = turns[0].content;
    first = 1;
  }
  std::string p = bos_first_ ? kBos : "";
  for (size_t i = first; i < turns.size(); ++i) {
    bool user_turn = (i - first) % 2 == 0;
    if ((turns[i].role == "user") != user_turn || turns[i].role == "system") {
      *error = "message " + std::to_string(i) + " is '" + turns[i].role + "': roles must alternate user/assistant";
      return false;
    }
    std::string content = turns[i].content;
    if (i == first && first == 1) content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content;
    p += Evaluate(user_turn ? user_ : assistant_, content);
  }
  *prompt = std::move(p);
  return true;
}

}  // namespace svdq::models
