// Tokenizer::FromHuggingFace: reads tokenizer.json, tokenizer_config.json and
// generation_config.json. Supported (what the Llama family uses):
//   model         BPE: vocab, merges ("a b" or [a, b]), unk_token, byte_fallback, fuse_unk,
//                 ignore_merges; no dropout, continuing_subword_prefix, end_of_word_suffix
//   normalizer    null, Prepend, Replace (String pattern), NFC, NFD, Sequence of those
//   pre_tokenizer null, ByteLevel (last), Split (Regex of GPT-2, Llama 3 or Qwen2; Isolated),
//                 Digits, Metaspace, Sequence of those
//   decoder       ByteLevel (with a ByteLevel pre_tokenizer); else Sequence of Replace
//                 (String), ByteFallback, Fuse, Strip(' ', start, 0) after Fuse
//   post_processor null, ByteLevel, TemplateProcessing with single [$A] or [BOS, $A], Sequence
//   added_tokens  special or not, matched whole; lstrip, rstrip, single_word refused
// Anything else throws FormatError naming the file and the component.
#include <algorithm>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "models/gguf.h"
#include "models/tokenizer.h"
#include "models/unicode.h"

namespace svdq::models {

using nlohmann::json;

// Fills a Tokenizer from the three files. `where_` names the component being read, so
// that a JSON type error deep inside still reports the file and component.
class HfTokenizerLoader {
 public:
  explicit HfTokenizerLoader(const std::string& dir) : dir_(dir), t_(new Tokenizer()) {}

  std::unique_ptr<Tokenizer> Load() {
    json tok = Read("tokenizer.json", true);
    file_ = dir_ + "/tokenizer.json";
    Guard([&] {
      if (!tok.is_object()) Fail("the top level is not an object");
      where_ = "model";
      LoadModel(Field(tok, "model"));
      where_ = "added_tokens";
      if (tok.contains("added_tokens") && !tok["added_tokens"].is_null()) LoadAddedTokens(tok["added_tokens"]);
      where_ = "normalizer";
      if (tok.contains("normalizer")) LoadNormalizer(tok["normalizer"]);
      where_ = "pre_tokenizer";
      t_->byte_level_ = false;
      if (tok.contains("pre_tokenizer")) LoadPreTokenizer(tok["pre_tokenizer"]);
      where_ = "decoder";
      LoadDecoder(tok.contains("decoder") ? tok["decoder"] : json());
      where_ = "post_processor";
      if (tok.contains("post_processor")) LoadPostProcessor(tok["post_processor"]);
    });
    t_->InitByteMap();
    LoadMerges();
    LoadConfigs();
    t_->Finish();
    return std::move(t_);
  }

 private:
  [[noreturn]] void Fail(const std::string& what) const {
    throw FormatError(file_ + ": " + (where_.empty() ? "" : where_ + ": ") + what);
  }

  // Runs `f`, turning JSON type and range errors into FormatError naming file_ and where_.
  template <typename F>
  void Guard(F f) {
    try {
      f();
    } catch (const json::exception& e) {
      Fail(std::string("malformed (") + e.what() + ")");
    }
  }

  // Parsed JSON of dir/name; null if absent and not required.
  json Read(const std::string& name, bool required) {
    std::string path = dir_ + "/" + name;
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      if (required) throw FormatError(path + ": cannot open (a Hugging Face tokenizer directory needs it)");
      return json();
    }
    std::stringstream ss;
    ss << in.rdbuf();
    try {
      return json::parse(ss.str());
    } catch (const json::exception& e) {
      throw FormatError(path + ": not valid JSON (" + e.what() + ")");
    }
  }

  const json& Field(const json& obj, const char* key) const {
    if (!obj.is_object() || !obj.contains(key)) Fail(std::string("missing '") + key + "'");
    return obj.at(key);
  }
  // An integer JSON number (a float, even a whole one, is refused: nlohmann's get<int64_t>()
  // of one beyond int64's range is undefined behaviour).
  int64_t Int(const json& v, const char* what) const {
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t{INT64_MAX}))
      Fail(std::string(what) + " " + v.dump() + " is not an integer");
    return v.get<int64_t>();
  }
  int64_t IntField(const json& obj, const char* key, int64_t fallback) const {
    return obj.is_object() && obj.contains(key) ? Int(obj.at(key), key) : fallback;
  }
  static bool Flag(const json& obj, const char* key, bool fallback) {
    return obj.contains(key) && !obj[key].is_null() ? obj[key].get<bool>() : fallback;
  }
  static std::string TypeOf(const json& obj) {
    return obj.is_object() && obj.contains("type") ? obj["type"].get<std::string>() : "";
  }
  std::u32string U32(const std::string& s) const {
    std::u32string out;
    size_t bad;
    if (!DecodeUtf8(s, &out, &bad)) Fail("text '" + s + "' is not valid UTF-8");
    return out;
  }
  // The literal of a {"String": "..."} pattern; refuses {"Regex": ...}.
  std::string StringPattern(const json& p) const {
    if (p.is_object() && p.contains("String")) return p["String"].get<std::string>();
    Fail("only String patterns are supported here, not " + p.dump());
  }

  void SetToken(int64_t id, const std::string& text) {
    if (id < 0 || id >= (int64_t{1} << 24)) Fail("token id " + std::to_string(id) + " is out of range");
    if (static_cast<size_t>(id) >= t_->tokens_.size()) {
      t_->tokens_.resize(id + 1);
      t_->special_.resize(id + 1, false);
    }
    t_->tokens_[id] = text;
  }

  void LoadModel(const json& m) {
    std::string type = TypeOf(m);
    if (type.empty() && m.is_object() && m.contains("merges")) type = "BPE";
    if (type != "BPE") Fail("type '" + type + "' is not supported (BPE)");
    if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0) Fail("dropout is not supported");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (m.contains(k) && !m[k].is_null() && !m[k].get<std::string>().empty()) Fail(std::string(k) + " is not supported");
    const json& vocab = Field(m, "vocab");
    if (!vocab.is_object() || vocab.empty()) Fail("vocab is not a non-empty object");
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      int64_t id = Int(it.value(), "vocab id");
      if (id >= 0 && static_cast<size_t>(id) < t_->tokens_.size() && !t_->tokens_[id].empty())
        Fail("vocab id " + std::to_string(id) + " is used twice");
      SetToken(id, it.key());
      t_->token_to_id_[it.key()] = static_cast<int32_t>(id);
    }
    merges_ = Field(m, "merges");
    if (!merges_.is_array()) Fail("merges is not an array");
    t_->byte_fallback_ = Flag(m, "byte_fallback", false);
    t_->fuse_unk_ = Flag(m, "fuse_unk", false);
    t_->ignore_merges_ = Flag(m, "ignore_merges", false);
    if (m.contains("unk_token") && !m["unk_token"].is_null()) {
      std::string unk = m["unk_token"].get<std::string>();
      auto it = t_->token_to_id_.find(unk);
      if (it == t_->token_to_id_.end()) Fail("unk_token '" + unk + "' is not in the vocabulary");
      t_->unk_id_ = it->second;
    }
  }

  void LoadMerges() {
    where_ = "model.merges";
    Guard([&] {
      for (size_t k = 0; k < merges_.size(); ++k) {
        const json& m = merges_[k];
        std::string a, b;
        if (m.is_string()) {
          std::string s = m.get<std::string>();
          size_t sp = s.find(' ');
          if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
            Fail("merge " + std::to_string(k) + " ('" + s + "') is not two tokens separated by one space");
          a = s.substr(0, sp);
          b = s.substr(sp + 1);
        } else if (m.is_array() && m.size() == 2) {
          a = m[0].get<std::string>();
          b = m[1].get<std::string>();
        } else {
          Fail("merge " + std::to_string(k) + " is neither \"a b\" nor [a, b]");
        }
        // `tokenizers` refuses such merges too (MergeTokenOutOfVocabulary); a later
        // duplicate of a pair replaces the earlier, as its hash map does.
        if (!t_->AddMerge(a, b, static_cast<int32_t>(k), true))
          Fail("merge " + std::to_string(k) + " ('" + a + "', '" + b + "') names a token not in the vocabulary");
      }
    });
  }

  void LoadAddedTokens(const json& added) {
    if (!added.is_array()) Fail("not an array");
    for (const auto& a : added) {
      std::string content = Field(a, "content").get<std::string>();
      if (content.empty()) Fail("an added token has empty content");
      for (const char* k : {"lstrip", "rstrip", "single_word"})
        if (Flag(a, k, false)) Fail("added token '" + content + "': " + k + " is not supported");
      int64_t id = Int(Field(a, "id"), "added token id");
      SetToken(id, content);
      t_->special_[id] = Flag(a, "special", false);
      t_->added_tokens_.emplace_back(U32(content), static_cast<int32_t>(id));
      added_by_text_[content] = static_cast<int32_t>(id);
    }
  }

  void LoadNormalizer(const json& n) {
    if (n.is_null()) return;
    std::string type = TypeOf(n);
    if (type == "Sequence") {
      for (const auto& s : Field(n, "normalizers")) LoadNormalizer(s);
    } else if (type == "Prepend") {
      t_->normalizer_.push_back({NormalizeStep::Kind::kPrepend, {}, U32(Field(n, "prepend").get<std::string>())});
    } else if (type == "Replace") {
      t_->normalizer_.push_back(
          {NormalizeStep::Kind::kReplace, U32(StringPattern(Field(n, "pattern"))), U32(Field(n, "content").get<std::string>())});
    } else if (type == "NFC" || type == "NFD") {
      t_->normalizer_.push_back({type == "NFC" ? NormalizeStep::Kind::kNfc : NormalizeStep::Kind::kNfd, {}, {}});
    } else {
      Fail("type '" + type + "' is not supported (Prepend, Replace, NFC, NFD, Sequence)");
    }
  }

  void LoadPreTokenizer(const json& p) {
    if (p.is_null()) return;
    std::string type = TypeOf(p);
    if (t_->byte_level_) Fail("'" + type + "' after ByteLevel is not supported (ByteLevel must come last)");
    PreTokenizeStep s;
    if (type == "Sequence") {
      for (const auto& q : Field(p, "pretokenizers")) LoadPreTokenizer(q);
      return;
    } else if (type == "ByteLevel") {
      s.kind = PreTokenizeStep::Kind::kByteLevel;
      s.add_prefix_space = Flag(p, "add_prefix_space", false);
      s.use_regex = Flag(p, "use_regex", true);
      t_->byte_level_ = true;
    } else if (type == "Split") {
      s.kind = PreTokenizeStep::Kind::kSplit;
      const json& pat = Field(p, "pattern");
      if (!pat.is_object() || !pat.contains("Regex")) Fail("Split: only Regex patterns are supported, not " + pat.dump());
      std::string re = pat["Regex"].get<std::string>();
      if (!SplitPatternFromRegex(re, &s.pattern))
        Fail("Split: regex '" + re + "' is not one of the known patterns (GPT-2, Llama 3, Qwen2)");
      std::string behavior = p.value("behavior", "Isolated");
      if (behavior != "Isolated") Fail("Split: behavior '" + behavior + "' is not supported (Isolated)");
      if (Flag(p, "invert", false)) Fail("Split: invert is not supported");
    } else if (type == "Digits") {
      s.kind = PreTokenizeStep::Kind::kDigits;
      s.individual_digits = Flag(p, "individual_digits", false);
    } else if (type == "Metaspace") {
      s.kind = PreTokenizeStep::Kind::kMetaspace;
      std::u32string r = U32(p.value("replacement", std::string("\u2581")));
      if (r.size() != 1) Fail("Metaspace: replacement must be one character");
      s.replacement = r[0];
      std::string scheme = p.contains("prepend_scheme") ? p["prepend_scheme"].get<std::string>()
                           : Flag(p, "add_prefix_space", true) ? "always" : "never";
      if (scheme == "first") s.prepend = PreTokenizeStep::Prepend::kFirst;
      else if (scheme == "always") s.prepend = PreTokenizeStep::Prepend::kAlways;
      else if (scheme == "never") s.prepend = PreTokenizeStep::Prepend::kNever;
      else Fail("Metaspace: prepend_scheme '" + scheme + "' is not supported (first, always, never)");
      s.split = Flag(p, "split", true);
    } else {
      Fail("type '" + type + "' is not supported (ByteLevel, Split, Digits, Metaspace, Sequence)");
    }
    t_->pre_tokenizer_.push_back(s);
  }

  void LoadDecoder(const json& d) {
    std::string type = d.is_null() ? "null" : TypeOf(d);
    if (t_->byte_level_) {
      if (type != "ByteLevel") Fail("type '" + type + "' is not supported with a ByteLevel pre_tokenizer (ByteLevel)");
      return;
    }
    if (type == "ByteLevel") Fail("ByteLevel needs a ByteLevel pre_tokenizer");
    if (type != "Sequence")
      Fail("type '" + type + "' is not supported without a ByteLevel pre_tokenizer (Sequence of Replace, ByteFallback, Fuse, Strip)");
    bool fused = false;
    for (const auto& s : Field(d, "decoders")) {
      std::string st = TypeOf(s);
      if (t_->strip_leading_spaces_ > 0) Fail("'" + st + "' after Strip is not supported (Strip must come last)");
      if (st == "Replace") {
        t_->decode_replace_.emplace_back(StringPattern(Field(s, "pattern")), Field(s, "content").get<std::string>());
      } else if (st == "ByteFallback") {
        t_->decode_byte_fallback_ = true;
      } else if (st == "Fuse") {
        fused = true;
      } else if (st == "Strip") {
        const int64_t start = IntField(s, "start", 0);
        if (Field(s, "content").get<std::string>() != " " || IntField(s, "stop", 0) != 0 || !fused || start < 0 ||
            start > INT32_MAX)
          Fail("Strip is supported only as Strip(' ', start, 0) after Fuse");
        t_->strip_leading_spaces_ = static_cast<int>(start);
      } else {
        Fail("Sequence: type '" + st + "' is not supported (Replace, ByteFallback, Fuse, Strip)");
      }
    }
  }

  void LoadPostProcessor(const json& p) {
    if (p.is_null()) return;
    std::string type = TypeOf(p);
    if (type == "Sequence") {
      for (const auto& q : Field(p, "processors")) LoadPostProcessor(q);
    } else if (type == "TemplateProcessing") {
      const json& single = Field(p, "single");
      auto is_a = [](const json& item) { return item.contains("Sequence") && item["Sequence"].value("id", "") == "A"; };
      if (single.size() == 1 && is_a(single[0])) {
        template_bos_.clear();
      } else if (single.size() == 2 && single[0].contains("SpecialToken") && is_a(single[1])) {
        template_bos_ = Field(single[0]["SpecialToken"], "id").get<std::string>();
        has_template_ = true;
      } else {
        Fail("TemplateProcessing: single template " + single.dump() + " is not supported ([$A] or [BOS, $A])");
      }
    } else if (type != "ByteLevel") {
      Fail("type '" + type + "' is not supported (ByteLevel, TemplateProcessing, Sequence)");
    }
  }

  // Id of a token named in a config file: added tokens first, then the vocabulary.
  int32_t IdOf(const std::string& text, const char* what) const {
    auto a = added_by_text_.find(text);
    if (a != added_by_text_.end()) return a->second;
    auto v = t_->token_to_id_.find(text);
    if (v != t_->token_to_id_.end()) return v->second;
    Fail(std::string(what) + " '" + text + "' is not in the vocabulary");
  }
  // bos_token / eos_token: a string, {"content": ...} or null ("" when absent).
  static std::string TokenField(const json& cfg, const char* key) {
    if (!cfg.is_object() || !cfg.contains(key) || cfg[key].is_null()) return "";
    const json& v = cfg[key];
    return v.is_object() ? v.at("content").get<std::string>() : v.get<std::string>();
  }

  void LoadConfigs() {
    json cfg = Read("tokenizer_config.json", false);
    json gen = Read("generation_config.json", false);
    int32_t n = t_->vocab_size();
    file_ = dir_ + "/tokenizer_config.json";
    where_.clear();
    Guard([&] {
      if (!cfg.is_null() && !cfg.is_object()) Fail("the top level is not an object");
      std::string bos = TokenField(cfg, "bos_token"), eos = TokenField(cfg, "eos_token");
      if (!bos.empty()) t_->bos_id_ = IdOf(bos, "bos_token");
      if (!eos.empty()) t_->eos_id_ = IdOf(eos, "eos_token");
      if (cfg.is_object() && cfg.contains("add_bos_token") && !cfg["add_bos_token"].is_null()) {
        t_->add_bos_ = cfg["add_bos_token"].get<bool>();
        if (t_->add_bos_ && t_->bos_id_ < 0) Fail("add_bos_token is true but there is no bos_token");
      } else if (has_template_) {
        file_ = dir_ + "/tokenizer.json";
        where_ = "post_processor";
        t_->add_bos_ = true;
        if (t_->bos_id_ < 0) t_->bos_id_ = IdOf(template_bos_, "template token");
        file_ = dir_ + "/tokenizer_config.json";
        where_.clear();
      }
      if (cfg.is_object() && cfg.contains("chat_template") && !cfg["chat_template"].is_null()) {
        const json& ct = cfg["chat_template"];
        if (ct.is_string()) {
          t_->chat_template_ = ct.get<std::string>();
        } else if (ct.is_array() && !ct.empty()) {  // named templates: "default", else the first
          t_->chat_template_ = ct[0].at("template").get<std::string>();
          for (const auto& e : ct)
            if (e.value("name", "") == "default") t_->chat_template_ = e.at("template").get<std::string>();
        } else {
          Fail("chat_template is neither a string nor a list of {name, template}");
        }
      }
    });
    if (t_->chat_template_.empty()) {
      std::ifstream jinja(dir_ + "/chat_template.jinja", std::ios::binary);
      if (jinja) {
        std::stringstream ss;
        ss << jinja.rdbuf();
        t_->chat_template_ = ss.str();
      }
    }
    file_ = dir_ + "/generation_config.json";
    std::vector<int32_t> gen_eos;
    Guard([&] {
      if (gen.is_null()) return;
      if (!gen.is_object()) Fail("the top level is not an object");
      std::vector<int64_t> ids;
      if (gen.contains("eos_token_id") && !gen["eos_token_id"].is_null()) {
        const json& e = gen["eos_token_id"];
        if (e.is_array()) {
          for (const json& id : e) ids.push_back(Int(id, "eos_token_id"));
        } else {
          ids.push_back(Int(e, "eos_token_id"));
        }
      }
      if (t_->bos_id_ < 0 && gen.contains("bos_token_id") && !gen["bos_token_id"].is_null()) {
        int64_t b = Int(gen["bos_token_id"], "bos_token_id");
        if (b < 0 || b >= n) Fail("bos_token_id " + std::to_string(b) + " is outside the vocabulary");
        t_->bos_id_ = static_cast<int32_t>(b);
      }
      for (int64_t id : ids) {
        if (id < 0 || id >= n) Fail("eos_token_id " + std::to_string(id) + " is outside the vocabulary");
        if (t_->eos_id_ < 0) t_->eos_id_ = static_cast<int32_t>(id);
        gen_eos.push_back(static_cast<int32_t>(id));
      }
    });
    if (t_->eos_id_ < 0)
      throw FormatError(dir_ + ": no eos token (tokenizer_config.json has no eos_token, generation_config.json no eos_token_id)");
    t_->eos_ids_ = {t_->eos_id_};
    for (int32_t id : gen_eos)
      if (!t_->IsEos(id)) t_->eos_ids_.push_back(id);
  }

  std::string dir_, file_, where_;
  std::unique_ptr<Tokenizer> t_;
  json merges_;
  std::unordered_map<std::string, int32_t> added_by_text_;
  std::string template_bos_;
  bool has_template_ = false;
};

std::unique_ptr<Tokenizer> Tokenizer::FromHuggingFace(const std::string& dir) {
  return HfTokenizerLoader(dir).Load();
}

}  // namespace svdq::models
