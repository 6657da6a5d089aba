// Chat formats: renders chat messages into the prompt text a model was trained on. The
// format is chosen from the model's chat template (GGUF tokenizer.chat_template or
// tokenizer_config.json's chat_template) by markers; the rendered text includes the BOS
// text where the format has it, so it is tokenized with specials matched and no extra BOS.
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
  // Recognizes
  //   chatml  <|im_start|>role ... <|im_end|>, with SmolLM2's default system message when
  //           its template has one;
  //   llama3  <|start_header_id|>role<|end_header_id|>\n\n ... <|eot_id|>; with Llama 3.1's
  //           "Cutting Knowledge Date" system header when the template has it (date
  //           "26 Jul 2024", or today's when the template asks strftime_now, as 3.2's does);
  //   inst    [INST] ... [/INST] (Llama 2, Mistral, Mixtral): the template's own user and
  //           assistant expressions (concatenations of literals, bos_token, eos_token and
  //           the content, optionally stripped) give the spacing; a system message is
  //           accepted only by Llama 2's <<SYS>> form.
  // Returns false for a template it does not know.
  static bool FromTemplate(const std::string& chat_template, ChatFormat* out);

  // The prompt for `turns` followed by the assistant's header (where the format has one).
  // Returns false and sets *error for an empty list, an unknown role, or a conversation
  // the format cannot express (inst: roles not alternating user/assistant, a system message
  // alone).
  bool Render(const std::vector<ChatTurn>& turns, std::string* prompt, std::string* error) const;
  const std::string& name() const { return name_; }

  // One term of an [INST] template's user or assistant expression.
  struct Term {
    enum class Kind { kLiteral, kBos, kEos, kContent };
    Kind kind = Kind::kLiteral;
    std::string text;    // kLiteral
    bool strip = false;  // kContent: .strip() or |trim
  };

 private:
  enum class Kind { kChatMl, kLlama3, kInst };
  bool RenderLlama3(const std::vector<ChatTurn>& turns, std::string* prompt, std::string* error) const;
  bool RenderInst(const std::vector<ChatTurn>& turns, std::string* prompt, std::string* error) const;

  Kind kind_ = Kind::kChatMl;
  std::string name_;
  std::string default_system_;  // chatml: used when the first message is not a system message
  bool dated_system_ = false;   // llama3: the 3.1 system header
  bool date_from_clock_ = false;
  bool bos_first_ = false;      // inst: the template emits bos_token once before the loop
  bool sys_block_ = false;      // inst: Llama 2's <<SYS>> block in the first user message
  std::vector<Term> user_, assistant_;
};

}  // namespace svdq::models
