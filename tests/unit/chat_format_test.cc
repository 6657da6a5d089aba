// Chat formats: template recognition and exact rendering for ChatML, Llama 3 / 3.1 and the
// [INST] family (Llama 2, Mistral). Parity with transformers' apply_chat_template on the
// canonical templates is checked in tests/integration/test_tokenizer_json.py.
#include <gtest/gtest.h>

#include "models/chat_format.h"

using namespace svdq::models;

namespace {

std::string Render(const std::string& tpl, const std::vector<ChatTurn>& turns, std::string* name = nullptr) {
  ChatFormat f;
  EXPECT_TRUE(ChatFormat::FromTemplate(tpl, &f)) << tpl;
  if (name) *name = f.name();
  std::string out, error;
  EXPECT_TRUE(f.Render(turns, &out, &error)) << error;
  return out;
}

const std::vector<ChatTurn> kChat = {{"system", " Be brief. "}, {"user", " Hi \n"}, {"assistant", "Hello."}, {"user", "Bye"}};
const std::vector<ChatTurn> kNoSystem = {kChat[1], kChat[2], kChat[3]};

TEST(ChatFormat, ChatMlIsUnchanged) {
  std::string name;
  EXPECT_EQ(Render("{{'<|im_start|>' + message['role']}}", {{"user", "hi"}}, &name),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(name, "chatml");
}

TEST(ChatFormat, Llama3TrimsContentAndOpensWithBos) {
  std::string tpl = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}";
  std::string name;
  EXPECT_EQ(Render(tpl, kChat, &name),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(name, "llama3");
}

TEST(ChatFormat, Llama31AddsTheDatedSystemHeader) {
  std::string tpl = "<|start_header_id|> <|eot_id|> {{- \"Cutting Knowledge Date: December 2023\\n\" }} date_string = \"26 Jul 2024\"";
  const std::string head = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                           "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";
  EXPECT_EQ(Render(tpl, {{"user", "Hi"}}),
            head + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(Render(tpl, {{"system", " S "}, {"user", "Hi"}}),
            head + "S<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

const char* const kLlama2 =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
    "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
    "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' "
    "+ message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == "
    "'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

TEST(ChatFormat, Llama2PutsTheSystemMessageInTheFirstInst) {
  std::string name;
  EXPECT_EQ(Render(kLlama2, kChat, &name),
            "<s>[INST] <<SYS>>\n Be brief. \n<</SYS>>\n\n Hi [/INST] Hello. </s><s>[INST] Bye [/INST]");
  EXPECT_EQ(name, "llama2");
  EXPECT_EQ(Render(kLlama2, kNoSystem), "<s>[INST] Hi [/INST] Hello. </s><s>[INST] Bye [/INST]");
}

TEST(ChatFormat, MistralFollowsTheTemplateSpacingAndRefusesSystem) {
  const std::string v01 =
      "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
      "raise_exception('x') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
      "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('y') }}"
      "{% endif %}{% endfor %}";
  EXPECT_EQ(Render(v01, kNoSystem), "<s>[INST]  Hi \n [/INST]Hello.</s> [INST] Bye [/INST]");
  const std::string v03 =
      "{{bos_token}}{% for message in messages %}{% if message['role'] == 'user' %}{% if tools %}"
      "{{'[AVAILABLE_TOOLS]'+ tools|string + '[/AVAILABLE_TOOLS]'}}{% endif %}{{ '[INST]' + message['content'] + '[/INST]' }}"
      "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token}}{% endif %}{% endfor %}";
  EXPECT_EQ(Render(v03, kNoSystem), "<s>[INST] Hi \n[/INST] Hello. </s>[INST]Bye[/INST]");
  ChatFormat f;
  ASSERT_TRUE(ChatFormat::FromTemplate(v01, &f));
  std::string out, error;
  EXPECT_FALSE(f.Render(kChat, &out, &error));
  EXPECT_NE(error.find("system"), std::string::npos);
  EXPECT_FALSE(f.Render({{"assistant", "x"}}, &out, &error));
  EXPECT_NE(error.find("alternate"), std::string::npos);
}

// Found by fuzz/request_fuzz.cc: Llama 2's template renders a system message with no user
// message after it as nothing, which reached the engine as an empty prompt.
TEST(ChatFormat, InstRefusesALoneSystemMessage) {
  ChatFormat f;
  ASSERT_TRUE(ChatFormat::FromTemplate(kLlama2, &f));
  std::string out, error;
  EXPECT_FALSE(f.Render({{"system", "Be brief."}}, &out, &error));
  EXPECT_NE(error.find("followed by a user message"), std::string::npos) << error;
  EXPECT_EQ(Render(kLlama2, {{"system", "S"}, {"user", "Hi"}}), "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nHi [/INST]");
}

TEST(ChatFormat, UnknownTemplatesAndRolesAreRefused) {
  ChatFormat f;
  EXPECT_FALSE(ChatFormat::FromTemplate("{{ '<start_of_turn>' + role }}", &f));
  EXPECT_FALSE(ChatFormat::FromTemplate("{% if message['role'] == 'user' %}{{ '[INST]' + foo(bar) }}{% endif %}", &f));
  ASSERT_TRUE(ChatFormat::FromTemplate(kLlama2, &f));
  std::string out, error;
  EXPECT_FALSE(f.Render({}, &out, &error));
  EXPECT_FALSE(f.Render({{"tool", "x"}}, &out, &error));
  EXPECT_NE(error.find("unknown role 'tool'"), std::string::npos);
}

}  // namespace
