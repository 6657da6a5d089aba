// Llama forward on ATen ops. Matches Hugging Face's LlamaForCausalLM: RMSNorm in fp32,
// rotate-half RoPE with fp32 angles, SDPA attention with grouped KV heads.
#include "models/llama.h"

#include <algorithm>
#include <cmath>
#include <iostream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "models/dequant.h"
#include "models/gguf.h"
#include "models/safetensors.h"
#ifdef SVDQ_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>

#include "kernels/model/fused_ops.h"
#endif

namespace svdq::models {
namespace {

// GGUF stores Q and K rows permuted so that RoPE can rotate adjacent pairs; undo that to
// get Hugging Face's layout, where RoPE rotates the two halves of each head.
at::Tensor UnpermuteQK(const at::Tensor& w, int64_t n_head) {
  int64_t out = w.size(0), in = w.size(1);
  return w.reshape({n_head, out / n_head / 2, 2, in}).transpose(1, 2).reshape({out, in}).contiguous();
}

at::Tensor LoadTensor(const GgufFile& f, const std::string& name, std::vector<int64_t> shape) {
  const GgufTensorInfo* t = f.FindTensor(name);
  if (!t) throw FormatError(f.path() + ": missing tensor " + name);
  // GGUF dims are fastest-first; torch shapes are slowest-first.
  std::vector<int64_t> torch_shape(t->dims.rbegin(), t->dims.rend());
  if (torch_shape != shape) {
    std::string got, want;
    for (auto d : torch_shape) got += std::to_string(d) + " ";
    for (auto d : shape) want += std::to_string(d) + " ";
    throw FormatError(f.path() + ": tensor " + name + " has shape [" + got + "], expected [" + want + "]");
  }
  at::Tensor out = at::empty(shape, at::kFloat);
  Dequantize(t->type, f.TensorData(*t), out.data_ptr<float>(), t->numel());
  return out;
}

}  // namespace

std::unique_ptr<LlamaModel> LlamaModel::LoadGguf(const GgufFile& f, at::Device device, at::ScalarType dtype) {
  std::unique_ptr<LlamaModel> m(new LlamaModel());
  ModelConfig& c = m->cfg_;
  c.architecture = f.GetString("general.architecture", "");
  if (c.architecture != "llama" && c.architecture != "qwen2")
    throw FormatError(f.path() + ": architecture '" + c.architecture + "' is not supported (llama, qwen2)");
  // llama.cpp's converter permutes Llama's q/k rows for its interleaved RoPE and leaves Qwen2's
  // (rotate-half RoPE, as here) alone; Qwen2 adds biases to q, k and v.
  const bool permuted_qk = c.architecture == "llama";
  const std::string a = c.architecture + ".";
  c.name = f.GetString("general.name", "unnamed");
  c.n_layers = static_cast<int>(f.GetInt(a + "block_count", 0));
  c.hidden = static_cast<int>(f.GetInt(a + "embedding_length", 0));
  c.n_heads = static_cast<int>(f.GetInt(a + "attention.head_count", 0));
  c.n_kv_heads = static_cast<int>(f.GetInt(a + "attention.head_count_kv", c.n_heads));
  c.ffn_hidden = static_cast<int>(f.GetInt(a + "feed_forward_length", 0));
  c.max_context = static_cast<int>(f.GetInt(a + "context_length", 2048));
  c.rope_theta = f.GetFloat(a + "rope.freq_base", 10000.0);
  c.rms_eps = f.GetFloat(a + "attention.layer_norm_rms_epsilon", 1e-5);
  if (c.n_layers <= 0 || c.hidden <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 || c.ffn_hidden <= 0 ||
      c.hidden % c.n_heads != 0 || c.n_heads % c.n_kv_heads != 0)
    throw FormatError(f.path() + ": inconsistent model dimensions in metadata");
  c.head_dim = c.hidden / c.n_heads;
  if (f.GetInt(a + "rope.dimension_count", c.head_dim) != c.head_dim)
    throw FormatError(f.path() + ": partial RoPE (rope.dimension_count != head_dim) is not supported");
  const GgufTensorInfo* emb = f.FindTensor("token_embd.weight");
  if (!emb || emb->dims.size() != 2) throw FormatError(f.path() + ": missing tensor token_embd.weight");
  c.vocab_size = static_cast<int>(emb->dims[1]);
  c.tied_embeddings = f.FindTensor("output.weight") == nullptr;
  c.qkv_bias = f.FindTensor("blk.0.attn_q.bias") != nullptr;
  if (c.architecture == "qwen2" && !c.qkv_bias) throw FormatError(f.path() + ": qwen2 without blk.0.attn_q.bias");

  m->device_ = device;
  m->dtype_ = dtype;
  auto place = [&](at::Tensor t) {
    at::Tensor d = t.to(device, dtype).contiguous();
    m->weight_bytes_ += d.numel() * d.element_size();
    return d;
  };
  // Norm weights stay fp32: the norm runs in fp32 like the reference.
  auto place_f32 = [&](at::Tensor t) {
    at::Tensor d = t.to(device, at::kFloat).contiguous();
    m->weight_bytes_ += d.numel() * d.element_size();
    return d;
  };
  const int64_t H = c.hidden, D = c.head_dim, KV = static_cast<int64_t>(c.n_kv_heads) * D;
  m->tok_embd_ = place(LoadTensor(f, "token_embd.weight", {c.vocab_size, H}));
  m->output_norm_ = place_f32(LoadTensor(f, "output_norm.weight", {H}));
  m->output_ = c.tied_embeddings ? m->tok_embd_ : place(LoadTensor(f, "output.weight", {c.vocab_size, H}));
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights w;
    w.attn_norm = place_f32(LoadTensor(f, p + "attn_norm.weight", {H}));
    at::Tensor wq = LoadTensor(f, p + "attn_q.weight", {H, H}), wk = LoadTensor(f, p + "attn_k.weight", {KV, H});
    w.wq = place(permuted_qk ? UnpermuteQK(wq, c.n_heads) : wq);
    w.wk = place(permuted_qk ? UnpermuteQK(wk, c.n_kv_heads) : wk);
    w.wv = place(LoadTensor(f, p + "attn_v.weight", {KV, H}));
    if (c.qkv_bias) {
      w.bq = place(LoadTensor(f, p + "attn_q.bias", {H}));
      w.bk = place(LoadTensor(f, p + "attn_k.bias", {KV}));
      w.bv = place(LoadTensor(f, p + "attn_v.bias", {KV}));
    }
    w.wo = place(LoadTensor(f, p + "attn_output.weight", {H, H}));
    w.ffn_norm = place_f32(LoadTensor(f, p + "ffn_norm.weight", {H}));
    w.w_gate = place(LoadTensor(f, p + "ffn_gate.weight", {c.ffn_hidden, H}));
    w.w_up = place(LoadTensor(f, p + "ffn_up.weight", {c.ffn_hidden, H}));
    w.w_down = place(LoadTensor(f, p + "ffn_down.weight", {H, c.ffn_hidden}));
    m->layers_.push_back(std::move(w));
  }

  m->InitRope();
  m->PickAttentionBackends();
  m->FuseProjections();
  return m;
}

void LlamaModel::PickAttentionBackends() {
  // Prompt attention (AttendStored) goes to ATen's flash and memory-efficient kernels, not
  // cuDNN's: cuDNN builds an execution plan on the host for every new (query, key) shape, and
  // prompt chunks bring new shapes every step. Measured on the H200 (decode_step_bench
  // --profile-prefill, 2026-12-03): 970 ms of host time in cuDNN SDPA over three 2,048-token
  // steps of Llama-3-8B, 148 ms per step against 57 once its plans were cached.
  if (device_.is_cuda()) at::globalContext().setSDPUseCuDNN(false);
  // A later prompt chunk's queries see the keys up to their own positions: a causal mask
  // aligned to the bottom right of the [T, L] scores, which FlashAttention-2's causal flag
  // means (ATen's flash op; torch.nn.attention.bias.causal_lower_right calls it so). Without it
  // the chunk took the memory-efficient kernel with a materialised mask and the KV heads
  // repeated: 409 of 617 ms of GPU time in three 2,048-token steps of a 20k-token prompt
  // (H200, decode_step_bench --profile-prefill, 2026-12-05), ~134 TFLOP/s.
  flash_chunks_ = false;
#ifdef SVDQ_WITH_CUDA
  const int64_t D = cfg_.head_dim;
  if (device_.is_cuda() && (dtype_ == at::kBFloat16 || dtype_ == at::kHalf) && D % 8 == 0 && D <= 256)
    flash_chunks_ = at::cuda::getDeviceProperties(device_.has_index() ? device_.index() : at::cuda::current_device())->major >= 8;
#endif
}

void LlamaModel::InitRope() {
  // fp32 like the reference: inv_freq = theta^(-2i/d), angle = pos * inv_freq.
  const int64_t D = cfg_.head_dim;
  at::Tensor inv = 1.0 / at::pow(cfg_.rope_theta, at::arange(0, D, 2, at::kFloat) / static_cast<double>(D));
  const RopeScaling& s = cfg_.rope_scaling;
  if (s.type == "llama3") {
    // Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a smooth ramp between.
    const double old_len = s.original_max_position;
    const double low_wavelen = old_len / s.low_freq_factor, high_wavelen = old_len / s.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv;
    at::Tensor scaled = at::where(wavelen > low_wavelen, inv / s.factor, inv);
    at::Tensor smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
    at::Tensor medium = wavelen.ge(high_wavelen).logical_and(wavelen.le(low_wavelen));
    inv = at::where(medium, smoothed, scaled);
  } else if (!s.type.empty()) {
    throw FormatError("RoPE scaling '" + s.type + "' is not supported (llama3)");
  }
  at::Tensor pos = at::arange(0, cfg_.max_context, at::kFloat);
  at::Tensor ang = at::outer(pos, inv);
  at::Tensor emb2 = at::cat({ang, ang}, -1);
  rope_cos_ = emb2.cos().to(device_);
  rope_sin_ = emb2.sin().to(device_);
  rope_inv_freq_ = inv.to(at::kFloat).contiguous().to(device_);
}

void LlamaModel::FillWeights(const WeightGetter& get, bool fresh) {
  const ModelConfig& c = cfg_;
  const int64_t H = c.hidden, D = c.head_dim, V = c.vocab_size, F = c.ffn_hidden;
  const int64_t Q = static_cast<int64_t>(c.n_heads) * D, KV = static_cast<int64_t>(c.n_kv_heads) * D;
  auto place_as = [&](const at::Tensor& t, at::ScalarType dt) {
    at::Tensor d = t.to(device_, dt, /*non_blocking=*/false, /*copy=*/!fresh).contiguous();
    weight_bytes_ += d.numel() * d.element_size();
    return d;
  };
  auto place = [&](const std::string& name, std::vector<int64_t> shape) { return place_as(get(name, shape), dtype_); };
  // Norm weights stay fp32: the norm runs in fp32 like the reference.
  auto place_f32 = [&](const std::string& name, std::vector<int64_t> shape) {
    return place_as(get(name, shape), at::kFloat);
  };
  tok_embd_ = place("model.embed_tokens.weight", {V, H});
  output_norm_ = place_f32("model.norm.weight", {H});
  output_ = c.tied_embeddings ? tok_embd_ : place("lm_head.weight", {V, H});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights w;
    w.attn_norm = place_f32(p + "input_layernorm.weight", {H});
    w.wq = place(p + "self_attn.q_proj.weight", {Q, H});
    w.wk = place(p + "self_attn.k_proj.weight", {KV, H});
    w.wv = place(p + "self_attn.v_proj.weight", {KV, H});
    if (c.qkv_bias) {
      w.bq = place(p + "self_attn.q_proj.bias", {Q});
      w.bk = place(p + "self_attn.k_proj.bias", {KV});
      w.bv = place(p + "self_attn.v_proj.bias", {KV});
    }
    w.wo = place(p + "self_attn.o_proj.weight", {H, Q});
    w.ffn_norm = place_f32(p + "post_attention_layernorm.weight", {H});
    w.w_gate = place(p + "mlp.gate_proj.weight", {F, H});
    w.w_up = place(p + "mlp.up_proj.weight", {F, H});
    w.w_down = place(p + "mlp.down_proj.weight", {H, F});
    layers_.push_back(std::move(w));
  }
}

std::unique_ptr<LlamaModel> LlamaModel::LoadHuggingFace(const ModelConfig& c, const SafetensorsCheckpoint& ckpt,
                                                        at::Device device, at::ScalarType dtype) {
  std::unique_ptr<LlamaModel> m(new LlamaModel());
  m->cfg_ = c;
  m->device_ = device;
  m->dtype_ = dtype;
  if (c.tied_embeddings && ckpt.Find("lm_head.weight") == nullptr) {
    // Tied: nothing to load.
  } else if (!c.tied_embeddings && ckpt.Find("lm_head.weight") == nullptr) {
    throw FormatError(ckpt.dir() + ": missing tensor lm_head.weight (the config does not tie embeddings)");
  }
  m->FillWeights(
      [&](const std::string& name, const std::vector<int64_t>& shape) {
        const StTensor& t = ckpt.Get(name, shape);
        const at::ScalarType st = t.dtype == StDtype::kF32 ? at::kFloat : t.dtype == StDtype::kF16 ? at::kHalf : at::kBFloat16;
        // A view of the mapping: FillWeights copies it (once) to the device.
        return at::from_blob(const_cast<uint8_t*>(t.data), shape, at::TensorOptions().dtype(st));
      },
      /*fresh=*/false);
  m->InitRope();
  m->PickAttentionBackends();
  m->FuseProjections();
  return m;
}

std::unique_ptr<LlamaModel> LlamaModel::Synthetic(const ModelConfig& c, uint64_t seed, at::Device device,
                                                  at::ScalarType dtype) {
  std::unique_ptr<LlamaModel> m(new LlamaModel());
  m->cfg_ = c;
  m->device_ = device;
  m->dtype_ = dtype;
  at::manual_seed(seed);
  m->FillWeights(
      [&](const std::string& name, const std::vector<int64_t>& shape) {
        auto o = at::TensorOptions().device(device).dtype(dtype);
        if (name.find("norm") != std::string::npos) return at::ones(shape, o.dtype(at::kFloat));
        return at::randn(shape, o) * 0.02;
      },
      /*fresh=*/true);
  m->InitRope();
  m->PickAttentionBackends();
  m->FuseProjections();
  return m;
}

void LlamaModel::FuseProjections() {
  const int64_t D = cfg_.head_dim, Q = cfg_.n_heads * D, KV = cfg_.n_kv_heads * D, F = cfg_.ffn_hidden;
  for (LayerWeights& w : layers_) {
    w.wqkv = at::cat({w.wq, w.wk, w.wv}, 0);
    w.wq = w.wqkv.narrow(0, 0, Q);
    w.wk = w.wqkv.narrow(0, Q, KV);
    w.wv = w.wqkv.narrow(0, Q + KV, KV);
    if (w.bq.defined()) {
      w.bqkv = at::cat({w.bq, w.bk, w.bv}, 0);
      w.bq = w.bqkv.narrow(0, 0, Q);
      w.bk = w.bqkv.narrow(0, Q, KV);
      w.bv = w.bqkv.narrow(0, Q + KV, KV);
    }
    w.w_gate_up = at::cat({w.w_gate, w.w_up}, 0);
    w.w_gate = w.w_gate_up.narrow(0, 0, F);
    w.w_up = w.w_gate_up.narrow(0, F, F);
  }
}

bool LlamaModel::Fused(const at::Tensor& x) const {
#ifdef SVDQ_WITH_CUDA
  return x.is_cuda() && x.scalar_type() == at::kBFloat16 && dtype_ == at::kBFloat16;
#else
  (void)x;
  return false;
#endif
}

at::Tensor LlamaModel::AddNorm(at::Tensor& x, const at::Tensor& residual, const at::Tensor& w) const {
#ifdef SVDQ_WITH_CUDA
  if (Fused(x) && x.is_contiguous() && (!residual.defined() || residual.is_contiguous())) {
    at::Tensor out = at::empty_like(x);
    const int64_t H = x.size(-1);
    auto bf = [](const at::Tensor& t) { return static_cast<uint16_t*>(t.data_ptr()); };
    const kernels::Status st =
        kernels::AddRmsNorm(bf(x), residual.defined() ? bf(residual) : nullptr, w.data_ptr<float>(),
                            static_cast<float>(cfg_.rms_eps), static_cast<int>(x.numel() / H), static_cast<int>(H),
                            bf(out), at::cuda::getCurrentCUDAStream());
    if (!st.ok()) throw std::runtime_error(st.message());
    return out;
  }
#endif
  if (residual.defined()) x.add_(residual);
  return RmsNorm(x, w);
}

std::pair<at::Tensor, at::Tensor> LlamaModel::RopeQk(const at::Tensor& qkv, const at::Tensor& pos,
                                                     const at::Tensor& cos_rows, const at::Tensor& sin_rows) const {
  const int64_t N = qkv.size(0), D = cfg_.head_dim, NH = cfg_.n_heads, NKV = cfg_.n_kv_heads;
#ifdef SVDQ_WITH_CUDA
  if (Fused(qkv) && qkv.stride(-1) == 1) {
    at::Tensor q = at::empty({N, NH, D}, qkv.options()), k = at::empty({N, NKV, D}, qkv.options());
    const kernels::Status st = kernels::RopeQk(
        static_cast<const uint16_t*>(qkv.data_ptr()), qkv.stride(0), static_cast<int>(N), static_cast<int>(NH),
        static_cast<int>(NKV), static_cast<int>(D), pos.data_ptr<int64_t>(), rope_cos_.data_ptr<float>(),
        rope_sin_.data_ptr<float>(), static_cast<uint16_t*>(q.data_ptr()), static_cast<uint16_t*>(k.data_ptr()),
        at::cuda::getCurrentCUDAStream());
    if (!st.ok()) throw std::runtime_error(st.message());
    return {q, k};
  }
#endif
  (void)pos;
  return {ApplyRotaryHalfRows(qkv.narrow(-1, 0, NH * D).view({N, NH, D}), cos_rows, sin_rows, dtype_),
          ApplyRotaryHalfRows(qkv.narrow(-1, NH * D, NKV * D).view({N, NKV, D}), cos_rows, sin_rows, dtype_)};
}

at::Tensor LlamaModel::Mlp(const LayerWeights& w, const at::Tensor& h) const {
  const int64_t F = cfg_.ffn_hidden;
  at::Tensor gu = at::linear(h, w.w_gate_up);
#ifdef SVDQ_WITH_CUDA
  if (Fused(gu) && gu.is_contiguous()) {
    at::Tensor act = at::empty({gu.size(0), F}, gu.options());
    const kernels::Status st = kernels::SiluMul(static_cast<const uint16_t*>(gu.data_ptr()), static_cast<int>(gu.size(0)),
                                                static_cast<int>(F), static_cast<uint16_t*>(act.data_ptr()),
                                                at::cuda::getCurrentCUDAStream());
    if (!st.ok()) throw std::runtime_error(st.message());
    return at::linear(act, w.w_down);
  }
#endif
  return at::linear(at::silu(gu.narrow(-1, 0, F)) * gu.narrow(-1, F, F), w.w_down);
}

at::Tensor LlamaModel::RmsNorm(const at::Tensor& x, const at::Tensor& w) const {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  return (w * (xf * at::rsqrt(var + cfg_.rms_eps)).to(dtype_).to(at::kFloat)).to(dtype_);
}

at::Tensor LlamaModel::AttendStored(int layer, const at::Tensor& q, int64_t pos0, KvView* kv) {
  const int64_t T = q.size(0), D = cfg_.head_dim, NH = cfg_.n_heads, NKV = cfg_.n_kv_heads;
  if (T == 1) {
    at::Tensor o = kv->Attend(layer, q);  // [1, NH, D] where the storage attends itself
    if (o.defined()) return o.reshape({1, NH * D}).to(dtype_);
  }
  const int64_t L = pos0 + T;
  auto [k_all, v_all] = kv->Read(layer, L);  // [NKV, L, D]
  // Four-dimensional [1, heads, tokens, D]: ATen's fused kernels (flash, memory-efficient) take
  // nothing else, and the math fallback materialises [heads, T, L] scores.
  at::Tensor qh = q.transpose(0, 1).unsqueeze(0);  // [1, NH, T, D]
  at::Tensor keys = k_all.unsqueeze(0), vals = v_all.unsqueeze(0);
  at::Tensor out;
  if (T == 1 || pos0 == 0) {
    // Flash attention reads the KV heads of a group once (enable_gqa); no repeat.
    out = at::scaled_dot_product_attention(qh, keys, vals, {}, 0.0, /*is_causal=*/T > 1, {}, /*enable_gqa=*/true);
  } else if (flash_chunks_) {
    // A later prompt chunk: query i sits at position pos0 + i and may see keys 0 .. pos0 + i,
    // flash's bottom-right causal mask (PickAttentionBackends); the KV heads are read per group.
    if (keys.stride(-1) != 1) keys = keys.contiguous();
    if (vals.stride(-1) != 1) vals = vals.contiguous();
    try {
      out = std::get<0>(at::_scaled_dot_product_flash_attention(qh, keys, vals, 0.0, /*is_causal=*/true));
    } catch (const c10::Error& e) {
      // A libtorch without flash kernels for this device refuses the call before any work: the
      // masked path below, from now on.
      flash_chunks_ = false;
      std::cerr << "svdq-server: flash attention refused a prompt chunk, so later chunks take the masked kernel: "
                << e.what_without_backtrace() << "\n";
    }
  }
  if (!out.defined()) {
    // The same where flash does not run (CPU, fp32): the memory-efficient or math kernel takes
    // the mask, with the KV heads repeated per group.
    at::Tensor qpos = at::arange(pos0, L, at::TensorOptions().device(device_).dtype(at::kLong)).unsqueeze(1);
    at::Tensor kpos = at::arange(0, L, at::TensorOptions().device(device_).dtype(at::kLong)).unsqueeze(0);
    out = at::scaled_dot_product_attention(qh, keys.repeat_interleave(NH / NKV, 1), vals.repeat_interleave(NH / NKV, 1),
                                           kpos <= qpos);
  }
  return out.squeeze(0).transpose(0, 1).reshape({T, NH * D});
}

at::Tensor LlamaModel::Forward(const std::vector<int32_t>& tokens, KvView* kv) {
  return ForwardBatch({tokens}, {kv})[0];
}

at::Tensor LlamaModel::ForwardBatch(const std::vector<std::vector<int32_t>>& tokens, const std::vector<KvView*>& kvs) {
  return at::linear(Rows(tokens, kvs, /*all_rows=*/false), output_).to(at::kFloat);
}

at::Tensor LlamaModel::Rows(const std::vector<std::vector<int32_t>>& tokens, const std::vector<KvView*>& kvs,
                            bool all_rows) {
  const size_t B = tokens.size();
  if (B == 0 || kvs.size() != B) throw std::invalid_argument("a forward needs one KV view per sequence");
  const int64_t D = cfg_.head_dim, NH = cfg_.n_heads, NKV = cfg_.n_kv_heads;
  std::vector<int32_t> all;
  std::vector<int64_t> pos0(B), len(B), positions, last(B);
  for (size_t i = 0; i < B; ++i) {
    pos0[i] = kvs[i]->length();
    len[i] = static_cast<int64_t>(tokens[i].size());
    if (len[i] == 0) throw std::invalid_argument("forward called with no tokens");
    if (pos0[i] + len[i] > cfg_.max_context)
      throw std::out_of_range("sequence of " + std::to_string(pos0[i] + len[i]) + " tokens exceeds the model context of " +
                              std::to_string(cfg_.max_context));
    for (int32_t id : tokens[i])
      if (id < 0 || id >= cfg_.vocab_size) throw std::out_of_range("token id " + std::to_string(id) + " outside the vocabulary");
    kvs[i]->Reserve(pos0[i] + len[i]);
    all.insert(all.end(), tokens[i].begin(), tokens[i].end());
    for (int64_t t = 0; t < len[i]; ++t) positions.push_back(pos0[i] + t);
    last[i] = static_cast<int64_t>(positions.size()) - 1;
  }
  const int64_t N = static_cast<int64_t>(all.size());
  // Sequences with one new token (decodes) can attend in one launch where the storage allows.
  std::vector<size_t> decodes;
  std::vector<int64_t> decode_rows, first_row(B);
  std::vector<KvView*> decode_views;
  for (size_t i = 0, row = 0; i < B; row += len[i], ++i) {
    first_row[i] = static_cast<int64_t>(row);
    if (len[i] != 1) continue;
    decodes.push_back(i);
    decode_rows.push_back(static_cast<int64_t>(row));
    decode_views.push_back(kvs[i]);
  }
  auto on_device = [&](const std::vector<int64_t>& v) { return IndexToDevice(v, device_); };
  at::Tensor ids = on_device(std::vector<int64_t>(all.begin(), all.end()));
  at::Tensor pos = on_device(positions);
  // RoPE of every row at its own position, in one go.
  const bool fused = Fused(tok_embd_);  // the fused RoPE kernel reads pos itself
  at::Tensor cos = fused ? at::Tensor() : rope_cos_.index_select(0, pos);
  at::Tensor sin = fused ? at::Tensor() : rope_sin_.index_select(0, pos);
  at::Tensor decode_index = decodes.size() >= 2 ? on_device(decode_rows) : at::Tensor();
  at::Tensor x = tok_embd_.index_select(0, ids), pending;  // pending: the MLP output not yet added to x
  for (int l = 0; l < cfg_.n_layers; ++l) {
    const LayerWeights& w = layers_[l];
    at::Tensor h = AddNorm(x, pending, w.attn_norm);
    at::Tensor qkv = at::linear(h, w.wqkv, w.bqkv);
    at::Tensor k_pre = qkv.narrow(-1, NH * D, NKV * D).view({N, NKV, D});
    at::Tensor v = qkv.narrow(-1, (NH + NKV) * D, NKV * D).view({N, NKV, D});
    if (capture_) {
      capture_->q_pre_rope.push_back(qkv.narrow(-1, 0, NH * D).view({N, NH, D}).to(at::kCPU, at::kFloat));
      capture_->k_pre_rope.push_back(k_pre.to(at::kCPU, at::kFloat));
      capture_->v.push_back(v.to(at::kCPU, at::kFloat));
    }
    auto [q, k] = RopeQk(qkv, pos, cos, sin);
    std::vector<at::Tensor> outs(B);
    const bool decodes_written =
        decode_index.defined() &&
        decode_views[0]->WriteMany(l, k_pre.index_select(0, decode_index), k.index_select(0, decode_index),
                                   v.index_select(0, decode_index), decode_views);
    for (size_t i = 0; i < B; ++i)
      if (!decodes_written || len[i] != 1)
        kvs[i]->Write(l, pos0[i], k_pre.narrow(0, first_row[i], len[i]), k.narrow(0, first_row[i], len[i]),
                    v.narrow(0, first_row[i], len[i]));
    if (decode_index.defined()) {
      at::Tensor o = decode_views[0]->AttendMany(l, q.index_select(0, decode_index), decode_views);
      if (o.defined())
        for (size_t j = 0; j < decodes.size(); ++j) outs[decodes[j]] = o[j].reshape({1, NH * D}).to(dtype_);
    }
    for (size_t i = 0; i < B; ++i)
      if (!outs[i].defined()) outs[i] = AttendStored(l, q.narrow(0, first_row[i], len[i]), pos0[i], kvs[i]);
    at::Tensor h2 = AddNorm(x, at::linear(at::cat(outs, 0), w.wo), w.ffn_norm);
    pending = Mlp(w, h2);
  }
  for (size_t i = 0; i < B; ++i) kvs[i]->SetLength(pos0[i] + len[i]);
  if (all_rows) return AddNorm(x, pending, output_norm_);
  at::Tensor rows = on_device(last);
  at::Tensor xl = x.index_select(0, rows);
  return AddNorm(xl, pending.index_select(0, rows), output_norm_);
}

at::Tensor LlamaModel::DecodeStatic(const at::Tensor& ids, const at::Tensor& pos, const StaticDecodeKv& kv) {
  const int64_t B = ids.size(0), D = cfg_.head_dim, NH = cfg_.n_heads, NKV = cfg_.n_kv_heads;
  const bool fused = Fused(tok_embd_);
  // The ATen chain's RoPE reads the tables' rows at pos; the fused kernel reads pos itself.
  at::Tensor cos = fused ? at::Tensor() : rope_cos_.index_select(0, pos);
  at::Tensor sin = fused ? at::Tensor() : rope_sin_.index_select(0, pos);
  at::Tensor x = tok_embd_.index_select(0, ids), pending;  // pending: the MLP output not yet added to x
  for (int l = 0; l < cfg_.n_layers; ++l) {
    const LayerWeights& w = layers_[l];
    at::Tensor h = AddNorm(x, pending, w.attn_norm);
    at::Tensor qkv = at::linear(h, w.wqkv, w.bqkv);
    at::Tensor k_pre = qkv.narrow(-1, NH * D, NKV * D).view({B, NKV, D});
    at::Tensor v = qkv.narrow(-1, (NH + NKV) * D, NKV * D).view({B, NKV, D});
    auto [q, k] = RopeQk(qkv, pos, cos, sin);
    kv.write(l, k_pre, k, v);
    at::Tensor h2 = AddNorm(x, at::linear(kv.attend(l, q).reshape({B, NH * D}).to(dtype_), w.wo), w.ffn_norm);
    pending = Mlp(w, h2);
  }
  return at::linear(AddNorm(x, pending, output_norm_), output_).to(at::kFloat);
}

at::Tensor LlamaModel::ForwardLogprobs(const std::vector<int32_t>& tokens, KvView* kv, at::Tensor* last_logits,
                                       int64_t top, at::Tensor* top_ids, at::Tensor* top_logprobs) {
  at::Tensor h = Rows({tokens}, {kv}, /*all_rows=*/true);  // [T, hidden]
  const int64_t T = h.size(0);
  *last_logits = at::linear(h.narrow(0, T - 1, 1), output_).to(at::kFloat)[0];
  if (top > 0) {
    *top_ids = at::empty({std::max<int64_t>(T - 1, 0), top}, at::kLong);
    *top_logprobs = at::empty({std::max<int64_t>(T - 1, 0), top}, at::kFloat);
  }
  if (T < 2) return at::empty({0}, at::kFloat);
  at::Tensor next = at::tensor(std::vector<int64_t>(tokens.begin() + 1, tokens.end()), at::kLong).to(h.device());
  std::vector<at::Tensor> parts, ids, vals;
  for (int64_t r0 = 0; r0 < T - 1; r0 += kLogprobRows) {
    const int64_t n = std::min(kLogprobRows, T - 1 - r0);
    at::Tensor lp = at::log_softmax(at::linear(h.narrow(0, r0, n), output_).to(at::kFloat), -1);
    parts.push_back(lp.gather(1, next.narrow(0, r0, n).unsqueeze(1)).squeeze(1));
    if (top > 0) {
      auto [v, i] = lp.topk(std::min(top, lp.size(1)), 1);
      vals.push_back(v);
      ids.push_back(i);
    }
  }
  if (top > 0) {
    *top_ids = at::cat(ids).to(at::kCPU).contiguous();
    *top_logprobs = at::cat(vals).to(at::kCPU).contiguous();
  }
  return at::cat(parts).to(at::kCPU).contiguous();
}

}  // namespace svdq::models
