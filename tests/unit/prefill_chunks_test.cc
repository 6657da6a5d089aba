// A prompt forwarded in chunks gives, at each chunk's last position, the logits of the same
// prefix forwarded at once. A later chunk's query i sits at position pos0 + i and attends to
// keys 0 .. pos0 + i: a causal mask aligned to the bottom right of its [T, L] scores. On CUDA in
// bf16 and fp16 such chunks take ATen's flash op (LlamaModel::PickAttentionBackends); on the
// CPU and in fp32 the memory-efficient or math kernel with an explicit mask. Each case also
// checks that the prefix changes the logits, so a mask that hid it would fail.
// PrefillChunksCpu: label cpu; PrefillChunksCuda: label gpu, skipped without a device.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "models/checkpoint.h"
#include "models/kv_view.h"

using namespace svdq;

namespace {

double RelErr(const at::Tensor& got, const at::Tensor& want) {
  return (got - want).norm().item<double>() / std::max(want.norm().item<double>(), 1e-30);
}

at::Tensor Logits(models::LlamaModel& m, const std::vector<int32_t>& ids, models::KvView* kv) {
  return m.Forward(ids, kv).to(at::kCPU, at::kFloat);
}

// Forwards `total` tokens of `name` in chunks of `sizes` (one sequence), comparing each chunk's
// last-position logits with the prefix forwarded at once.
void CheckChunks(const char* name, at::Device dev, at::ScalarType dtype, const std::vector<int>& sizes, double tol) {
  c10::InferenceMode guard;
  auto model = models::LoadModel(name, dev, dtype);
  const int vocab = static_cast<int>(model->config().vocab_size);
  std::vector<int32_t> ids;
  for (int n : sizes)
    for (int i = 0; i < n; ++i) ids.push_back(static_cast<int32_t>((ids.size() * 7919 + 13) % vocab));
  models::SequenceKv chunked;
  size_t at = 0;
  for (int n : sizes) {
    std::vector<int32_t> chunk(ids.begin() + at, ids.begin() + at + n);
    const at::Tensor got = Logits(*model, chunk, &chunked);
    at += n;
    models::SequenceKv whole, alone;
    const at::Tensor want = Logits(*model, std::vector<int32_t>(ids.begin(), ids.begin() + at), &whole);
    EXPECT_LE(RelErr(got, want), tol) << name << ": chunk of " << n << " ending at " << at;
    if (at > static_cast<size_t>(n)) {
      // The prefix matters: the chunk forwarded without it gives other logits.
      EXPECT_GT(RelErr(Logits(*model, chunk, &alone), want), 10 * tol) << name << ": chunk ending at " << at;
    }
  }
}

// Chunks of one token (the decode path), short ones, and ones longer than a flash tile (128
// queries) over a context of several key tiles.
const std::vector<int> kSizes = {40, 1, 200, 3, 300, 160};

TEST(PrefillChunksCpu, MatchTheWholePrefix) {
  CheckChunks("synthetic:tiny", at::kCPU, at::kFloat, kSizes, 1e-4);
}

class PrefillChunksCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(PrefillChunksCuda, MatchTheWholePrefixInBf16) {
  CheckChunks("synthetic:tiny", at::Device(at::kCUDA, 0), at::kBFloat16, kSizes, 2e-2);
}

TEST_F(PrefillChunksCuda, MatchTheWholePrefixInFp16) {
  CheckChunks("synthetic:tiny", at::Device(at::kCUDA, 0), at::kHalf, kSizes, 2e-2);
}

TEST_F(PrefillChunksCuda, MatchTheWholePrefixWithHeadDim64AndGroupsOf3) {
  // SmolLM2-135M's shape: 9 query heads over 3 KV heads.
  CheckChunks("synthetic:smollm2-135m", at::Device(at::kCUDA, 0), at::kBFloat16, {64, 500, 1, 700}, 2e-2);
}

TEST_F(PrefillChunksCuda, MatchTheWholePrefixInFp32) {
  CheckChunks("synthetic:tiny", at::Device(at::kCUDA, 0), at::kFloat, kSizes, 1e-3);
}

}  // namespace
