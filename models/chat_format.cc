#include "models/chat_format.h"

namespace svdq::models {
namespace {

// SmolLM2's template inserts this system message when the conversation has none.
constexpr const char* kSmolSystem = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

}  // namespace

bool ChatFormat::FromTemplate(const std::string& chat_template, ChatFormat* out) {
  if (chat_template.find("<|im_start|>") == std::string::npos) return false;
  ChatFormat f;
  f.name_ = "chatml";
  if (chat_template.find(kSmolSystem) != std::string::npos) f.default_system_ = kSmolSystem;
  *out = f;
  return true;
}

bool ChatFormat::Render(const std::vector<ChatTurn>& turns, std::string* prompt, std::string* error) const {
  if (turns.empty()) {
    *error = "chat has no messages";
    return false;
  }
  std::string p;
  if (!default_system_.empty() && turns[0].role != "system")
    p += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
  for (size_t i = 0; i < turns.size(); ++i) {
    const std::string& r = turns[i].role;
    if (r != "system" && r != "user" && r != "assistant") {
      *error = "message " + std::to_string(i) + " has unknown role '" + r + "' (system, user, assistant)";
      return false;
    }
    p += "<|im_start|>" + r + "\n" + turns[i].content + "<|im_end|>\n";
  }
  p += "<|im_start|>assistant\n";
  *prompt = std::move(p);
  return true;
}

}  // namespace svdq::models
