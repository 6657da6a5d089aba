// Chat formats: renders chat messages into the prompt text a model was trained on. The
// format is chosen from the model's chat template (GGUF tokenizer.chat_template).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace svdq::models {

struct ChatTurn {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

class ChatFormat {
 public:
  // Recognizes ChatML (<|im_start|>role ... <|im_end|>), with SmolLM2's default system
  // message when its template has one. Returns false for a template it does not know.
  static bool FromTemplate(const std::string& chat_template, ChatFormat* out);

  // The prompt for `turns` followed by the assistant's header. Returns false and sets
  // *error for an empty list or an unknown role.
  bool Render(const std::vector<ChatTurn>& turns, std::string* prompt, std::string* error) const;
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  std::string default_system_;  // used when the first message is not a system message
};

}  // namespace svdq::models
