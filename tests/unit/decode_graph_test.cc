// Decode steps replayed from CUDA graphs (server/engine/decode_graphs.h) on a synthetic model
// over the paged cache in every kind of KV mode the kernels serve: bf16 keys and values, SVDq
// keys (prefill basis; 16-token pages, so the steps cross a page that is encoded inside the
// graph), and on SmolLM2-135M's shape (head dim 64) fp8 keys with int4 values, SVDq keys with int8
// values, bf16 keys with fp8 values, int4 keys with fp8 values: a replay gives exactly the logits
// of the same fixed-shape step run eagerly (same kernels, same inputs), and matches the
// engine's eager batched forward within bf16 tolerance (relative L2 <= 2e-2: its GEMMs see 3
// rows, the graph's 4), step after step, with a padding row writing only to the scratch block
// and lane; a step whose ids are read on the device (overlapped steps) gives the same logits.
// Label gpu: skipped without CUDA.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "models/checkpoint.h"
#include "server/engine/decode_graphs.h"
#include "kernels/svdq/schedule.h"
#include "server/kv/paged_storage.h"

using namespace svdq;

namespace {

double RelErr(const at::Tensor& got, const at::Tensor& want) {
  return (got - want).norm().item<double>() / std::max(want.norm().item<double>(), 1e-30);
}

void RunModes(const char* key_mode, const char* value_mode = "bf16", const char* model_name = "synthetic:tiny") {
  c10::InferenceMode guard;
  const at::Device dev(at::kCUDA, 0);
  auto model = models::LoadModel(model_name, dev, at::kBFloat16);
  const auto& c = model->config();
  kv::StorageSpec spec;
  ASSERT_TRUE(kv::ParseKeyMode(key_mode, &spec.modes.key));
  ASSERT_TRUE(kv::ParseValueMode(value_mode, &spec.modes.value));
  ASSERT_TRUE(kernels::ParseSchedule("8,4,2,1,1,0,0,0", &spec.modes.schedule).ok());
  spec.shape = {c.n_layers, c.n_kv_heads, c.head_dim, 16, 2};
  constexpr int kBlocks = 32;
  spec.num_blocks = kBlocks + 1;  // the last one is the graphs' scratch block
  spec.lanes = 4;  // three sequences and the graphs' scratch lane
  spec.device = dev;
  spec.dtype = at::kBFloat16;
  spec.rope_cos = model->rope_cos();
  spec.rope_sin = model->rope_sin();
  spec.rope_inv_freq = model->rope_inv_freq();
  kv::PagedKvStorage storage(spec);
  ASSERT_TRUE(storage.StaticDecodeCapable());
  std::string why;
  auto graphs = engine::DecodeGraphs::Create(model.get(), &storage, kBlocks, /*scratch_lane=*/3, 4, &why);
  ASSERT_TRUE(graphs) << why;
  EXPECT_EQ(graphs->sizes(), "1, 2, 4");

  // Three sequences in scattered blocks, prefilled eagerly.
  std::vector<std::vector<kv::BlockId>> blocks = {{3, 9, 1}, {30, 2, 17, 5}, {11, 0, 20}};
  std::vector<std::vector<int32_t>> prompts = {{5, 9, 11, 2, 7}, {}, {}};
  for (int i = 0; i < 17; ++i) prompts[1].push_back((i * 37 + 3) % c.vocab_size);
  for (int i = 0; i < 30; ++i) prompts[2].push_back((i * 91 + 17) % c.vocab_size);
  std::vector<int64_t> length(3);
  {
    std::vector<std::unique_ptr<kv::PagedSeqView>> views;
    std::vector<models::KvView*> kvs;
    for (int i = 0; i < 3; ++i) {
      views.push_back(std::make_unique<kv::PagedSeqView>(&storage, blocks[i], 0, i));
      kvs.push_back(views.back().get());
      length[i] = static_cast<int64_t>(prompts[i].size());
    }
    model->ForwardBatch(prompts, kvs);
  }
  std::vector<int32_t> next = {1, 2, 3};
  for (int step = 0; step < 8; ++step) {  // sequence 2 fills its second page at step 1 (position 31)
    // The engine's eager path first (it writes the step's keys and values) ...
    std::vector<std::unique_ptr<kv::PagedSeqView>> views;
    std::vector<models::KvView*> kvs;
    std::vector<std::vector<int32_t>> tokens;
    std::vector<engine::DecodeRow> rows;
    for (int i = 0; i < 3; ++i) {
      views.push_back(std::make_unique<kv::PagedSeqView>(&storage, blocks[i], length[i], i));
      kvs.push_back(views.back().get());
      tokens.push_back({next[i]});
      rows.push_back({next[i], length[i], &blocks[i], i});
    }
    at::Tensor forward = model->ForwardBatch(tokens, kvs).to(at::kCPU);
    // ... then the fixed-shape step eagerly and replayed: they rewrite the same slots.
    at::Tensor eager = graphs->RunEager(rows).to(at::kCPU);
    at::Tensor replay = graphs->Run(rows).to(at::kCPU);
    EXPECT_TRUE(at::equal(eager, replay)) << key_mode << " step " << step << ": max diff " << (eager - replay).abs().max().item<float>();
    EXPECT_LT(RelErr(replay, forward), 2e-2) << key_mode << " step " << step;
    // The ids read on the device instead (an overlapped step launched from the step before's
    // sampled ids, rows picked by `from`): the same logits exactly.
    std::vector<engine::DecodeRow> blind = rows;
    for (auto& r : blind) r.token = 0;
    at::Tensor ids = at::tensor(std::vector<int64_t>{-1, next[2], next[1], next[0]}, at::kLong).to(dev);
    at::Tensor from_ids = graphs->Run(blind, ids, {3, 2, 1}).to(at::kCPU);
    EXPECT_TRUE(at::equal(from_ids, replay)) << key_mode << " step " << step;
    // A negative id (a row that could not sample; its step is discarded) reads as token 0.
    at::Tensor negative = graphs->Run({blind[1]}, ids, {0}).to(at::kCPU);
    at::Tensor zero = graphs->Run({blind[1]}).to(at::kCPU);
    EXPECT_TRUE(at::equal(negative, zero)) << key_mode << " step " << step;
    // One row alone (the batch-1 graph) agrees with its row in the batch of three.
    at::Tensor single = graphs->Run({rows[1]}).to(at::kCPU);
    EXPECT_LT(RelErr(single[0], replay[1]), 2e-2) << key_mode << " step " << step;
    for (int i = 0; i < 3; ++i) {
      next[i] = static_cast<int32_t>(replay[i].argmax().item<int64_t>());
      ++length[i];
    }
  }
}

TEST(DecodeGraphs, ReplayEqualsEagerStepAndForwardBf16Keys) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  RunModes("bf16");
}

TEST(DecodeGraphs, ReplayEqualsEagerStepAndForwardSvdqKeys) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  RunModes("svdq");
}

TEST(DecodeGraphs, ReplayEqualsEagerStepAndForwardSvdqKeysHeadDim64) {
  // SmolLM2's shape: SVDq keys with bf16 values go to the warp-stream kernel at head dim 64.
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  RunModes("svdq", "bf16", "synthetic:smollm2-135m");
}

TEST(DecodeGraphs, ReplayEqualsEagerStepAndForwardQuantizedModes) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  // Quantized pages need head dim 64 or 128: SmolLM2-135M's shape (64), random weights.
  RunModes("fp8", "int4", "synthetic:smollm2-135m");
  RunModes("svdq", "int8", "synthetic:smollm2-135m");
  RunModes("bf16", "fp8", "synthetic:smollm2-135m");
  RunModes("int4", "fp8", "synthetic:smollm2-135m");
}

}  // namespace
