// The Llama-family forward pass on libtorch (RMSNorm, RoPE with optional llama3 scaling,
// grouped-query attention with optional q/k/v biases, SwiGLU MLP, tied or separate output
// embedding). Weights come from GGUF (dequantized at load), a Hugging Face safetensors
// directory, or a named synthetic shape (random weights), and stay resident on the device.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "models/kv_view.h"
#include "models/model_config.h"

namespace svdq::models {

class GgufFile;
class SafetensorsCheckpoint;


// Per-layer activations recorded during a forward, for study tools: pre-RoPE queries
// [T, heads, head_dim], pre-RoPE keys and values [T, kv_heads, head_dim], fp32 on the CPU.
struct ForwardCapture {
  std::vector<at::Tensor> q_pre_rope, k_pre_rope, v;
};

// The storage side of a fixed-shape decode step (capturable in a CUDA graph): stores row b's
// new key and value, and attends row b's query over its sequence. Neither may do host work
// that depends on the step's data or synchronize with the device.
struct StaticDecodeKv {
  // k_pre, k, v [B, kv_heads, D]: the new keys before and after RoPE, the values.
  std::function<void(int layer, const at::Tensor& k_pre, const at::Tensor& k, const at::Tensor& v)> write;
  std::function<at::Tensor(int layer, const at::Tensor& q)> attend;              // [B, heads, D] -> same, fp32
};

struct LayerWeights {
  at::Tensor attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down;
  at::Tensor bq, bk, bv;  // undefined unless the config has q/k/v biases (Qwen2)
  // The same weights concatenated (one GEMM each); wq, wk, wv, w_gate, w_up are views of them.
  at::Tensor wqkv, bqkv, w_gate_up;
};

class LlamaModel {
 public:
  // Loads weights from a GGUF file (Llama architecture). Throws FormatError naming the
  // file and tensor on anything missing or inconsistent.
  static std::unique_ptr<LlamaModel> LoadGguf(const GgufFile& f, at::Device device, at::ScalarType dtype);
  // Loads a Hugging Face checkpoint whose config.json was read into `c` (models/hf_config.h).
  // Each tensor is copied once from the file mapping to the device, in `dtype`.
  static std::unique_ptr<LlamaModel> LoadHuggingFace(const ModelConfig& c, const SafetensorsCheckpoint& ckpt,
                                                     at::Device device, at::ScalarType dtype);
  // Random weights (normal, std 0.02; norms 1) for the shape `c`, from `seed`, made on the device.
  static std::unique_ptr<LlamaModel> Synthetic(const ModelConfig& c, uint64_t seed, at::Device device,
                                               at::ScalarType dtype);

  const ModelConfig& config() const { return cfg_; }
  at::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }
  int64_t weight_bytes() const { return weight_bytes_; }

  // Runs `tokens` at positions kv->length ... and appends their keys/values to kv.
  // Returns fp32 logits of the last position, [vocab], on the model's device.
  at::Tensor Forward(const std::vector<int32_t>& tokens, KvView* kv);
  // Same forward, scoring the tokens themselves: log p(tokens[t + 1] | tokens <= t) for
  // t < T - 1, fp32 [T - 1] on the CPU, with the last position's logits [vocab] in
  // *last_logits. Logits are made kLogprobRows rows at a time, so memory stays bounded by
  // the hidden states [T, hidden] however long the prompt (not T x vocab, twice).
  static constexpr int64_t kLogprobRows = 256;
  // With top > 0, *top_ids and *top_logprobs get each scored position's `top` most likely
  // tokens ([T - 1, top], CPU), from the same log-softmax rows.
  at::Tensor ForwardLogprobs(const std::vector<int32_t>& tokens, KvView* kv, at::Tensor* last_logits, int64_t top = 0,
                             at::Tensor* top_ids = nullptr, at::Tensor* top_logprobs = nullptr);
  // Several sequences in one forward (continuous batching): tokens[i] runs at positions
  // kvs[i]->length() ... of sequence i (a decode token or a prefill chunk). The projections
  // and the MLP run once over all rows; attention runs per sequence over its own KV.
  // Returns fp32 logits of each sequence's last position, [B, vocab].
  at::Tensor ForwardBatch(const std::vector<std::vector<int32_t>>& tokens, const std::vector<KvView*>& kvs);
  // One decode token per row, every input on the device: ids and positions [B] int64. Shapes
  // depend on B only and nothing waits for the device, so it can be captured in a CUDA graph.
  // Returns fp32 logits [B, vocab].
  at::Tensor DecodeStatic(const at::Tensor& ids, const at::Tensor& pos, const StaticDecodeKv& kv);
  // Records activations of every following forward into `capture` (null stops recording).
  void set_capture(ForwardCapture* capture) { capture_ = capture; }
  // The RoPE tables, [max_context, head_dim] fp32 (rotate-half, halves duplicated).
  const at::Tensor& rope_cos() const { return rope_cos_; }
  const at::Tensor& rope_sin() const { return rope_sin_; }
  // The frequencies the tables are built from, [head_dim / 2] fp32 (after RoPE scaling).
  const at::Tensor& rope_inv_freq() const { return rope_inv_freq_; }

 private:
  LlamaModel() = default;
  // The forward of ForwardBatch up to the output norm: the final hidden states of every row
  // ([N, hidden], all_rows) or of each sequence's last row ([B, hidden]).
  at::Tensor Rows(const std::vector<std::vector<int32_t>>& tokens, const std::vector<KvView*>& kvs, bool all_rows);
  // Attention of one sequence's rows q [T, heads, D] (post-RoPE), after kv->Write of them;
  // returns [T, heads * D].
  at::Tensor AttendStored(int layer, const at::Tensor& q, int64_t pos0, KvView* kv);
  at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w) const;
  // The hot path's pieces, fused into one kernel each on CUDA in bf16 (kernels/model), the ATen
  // chain elsewhere: x += residual (if defined) then RMSNorm; RoPE of the q and k columns of a
  // fused projection [N, (heads + 2 kv_heads) D] at positions pos (cos_rows, sin_rows: the
  // tables' rows at pos, for the ATen chain) -> q [N, heads, D], k [N, kv_heads, D]; the MLP.
  at::Tensor AddNorm(at::Tensor& x, const at::Tensor& residual, const at::Tensor& w) const;
  std::pair<at::Tensor, at::Tensor> RopeQk(const at::Tensor& qkv, const at::Tensor& pos, const at::Tensor& cos_rows,
                                           const at::Tensor& sin_rows) const;
  at::Tensor Mlp(const LayerWeights& w, const at::Tensor& h) const;
  bool Fused(const at::Tensor& x) const;  // whether the fused kernels take x
  void FuseProjections();  // builds wqkv, bqkv, w_gate_up; the separate weights become views
  void InitRope();  // the tables from cfg_ (theta, llama3 scaling)
  void PickAttentionBackends();  // which of ATen's fused attention kernels prompt chunks use
  // Fills every weight of cfg_'s shape from `get(name, shape)` (Hugging Face tensor names).
  // `fresh`: get returns tensors nothing else holds (no copy is needed on the device).
  using WeightGetter = std::function<at::Tensor(const std::string&, const std::vector<int64_t>&)>;
  void FillWeights(const WeightGetter& get, bool fresh);

  ModelConfig cfg_;
  at::Device device_{at::kCPU};
  at::ScalarType dtype_ = at::kFloat;
  at::Tensor tok_embd_, output_norm_, output_;
  std::vector<LayerWeights> layers_;
  at::Tensor rope_cos_, rope_sin_;  // [max_context, head_dim], fp32
  at::Tensor rope_inv_freq_;        // [head_dim / 2], fp32
  int64_t weight_bytes_ = 0;
  bool flash_chunks_ = false;  // later prompt chunks attend through ATen's flash op (PickAttentionBackends)
  ForwardCapture* capture_ = nullptr;
};

}  // namespace svdq::models
