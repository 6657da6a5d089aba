// The fused forward kernels (kernels/model/fused_ops.h) against the ATen chains they replace
// (models/llama.cc, models/kv_view.h), on random bf16 data on the GPU: RoPE and SiLU-multiply
// bit for bit, the RMSNorm within one bf16 rounding (its fp32 sum runs in another order), the
// residual add bit for bit. Odd row counts, a strided q|k|v row, head dims 64 and 128. Label gpu.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "kernels/model/fused_ops.h"
#include "models/kv_view.h"

using namespace svdq;

namespace {

uint16_t* Bf(const at::Tensor& t) { return static_cast<uint16_t*>(t.data_ptr()); }

class FusedOps : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  }
  c10::InferenceMode guard_;
  at::TensorOptions bf_ = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
};

TEST_F(FusedOps, AddRmsNormMatchesTheAtenChain) {
  for (int64_t H : {576, 4096, 5000}) {
    at::manual_seed(H);
    const int rows = 7;
    at::Tensor x = at::randn({rows, H}, bf_) * 3, r = at::randn({rows, H}, bf_);
    at::Tensor w = at::rand({H}, bf_.dtype(at::kFloat)) + 0.5;
    const double eps = 1e-5;
    at::Tensor sum = x + r;  // bf16, as the model's residual stream
    at::Tensor xf = sum.to(at::kFloat);
    at::Tensor ref = (w * (xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps)).to(at::kBFloat16).to(at::kFloat))
                         .to(at::kBFloat16);
    at::Tensor out = at::empty_like(x);
    ASSERT_TRUE(kernels::AddRmsNorm(Bf(x), Bf(r), w.data_ptr<float>(), static_cast<float>(eps), rows, static_cast<int>(H),
                                    Bf(out), at::cuda::getCurrentCUDAStream())
                    .ok());
    EXPECT_TRUE(at::equal(x, sum)) << "the residual add, hidden " << H;
    // One bf16 rounding apart at most (2^-8 relative), and almost everywhere equal.
    at::Tensor diff = (out.to(at::kFloat) - ref.to(at::kFloat)).abs();
    EXPECT_LE((diff / ref.to(at::kFloat).abs().clamp_min(1e-3)).max().item<float>(), 1.0f / 128) << "hidden " << H;
    EXPECT_LT((diff > 0).to(at::kFloat).mean().item<float>(), 0.02) << "hidden " << H;
    // Without a residual, x is left alone.
    at::Tensor before = x.clone();
    ASSERT_TRUE(kernels::AddRmsNorm(Bf(x), nullptr, w.data_ptr<float>(), static_cast<float>(eps), rows,
                                    static_cast<int>(H), Bf(out), at::cuda::getCurrentCUDAStream())
                    .ok());
    EXPECT_TRUE(at::equal(x, before));
  }
}

TEST_F(FusedOps, RopeQkMatchesApplyRotaryHalfRows) {
  for (int64_t D : {64, 128}) {
    at::manual_seed(D);
    const int64_t rows = 5, NH = 6, NKV = 2, stride = (NH + 2 * NKV) * D;
    at::Tensor inv = 1.0 / at::pow(500000.0, at::arange(0, D, 2, at::kFloat) / static_cast<double>(D));
    at::Tensor ang = at::outer(at::arange(0, 4096, at::kFloat), inv);
    at::Tensor cos = at::cat({ang, ang}, -1).cos().to(at::kCUDA), sin = at::cat({ang, ang}, -1).sin().to(at::kCUDA);
    at::Tensor qkv = at::randn({rows, stride}, bf_);
    at::Tensor pos = at::tensor(std::vector<int64_t>{0, 4095, 17, 1000, 17}, at::kLong).to(at::kCUDA);
    at::Tensor q = at::empty({rows, NH, D}, bf_), k = at::empty({rows, NKV, D}, bf_);
    ASSERT_TRUE(kernels::RopeQk(Bf(qkv), stride, rows, NH, NKV, D, pos.data_ptr<int64_t>(), cos.data_ptr<float>(),
                                sin.data_ptr<float>(), Bf(q), Bf(k), at::cuda::getCurrentCUDAStream())
                    .ok());
    at::Tensor c = cos.index_select(0, pos), s = sin.index_select(0, pos);
    at::Tensor qr = models::ApplyRotaryHalfRows(qkv.narrow(1, 0, NH * D).view({rows, NH, D}), c, s, at::kBFloat16);
    at::Tensor kr = models::ApplyRotaryHalfRows(qkv.narrow(1, NH * D, NKV * D).view({rows, NKV, D}), c, s, at::kBFloat16);
    EXPECT_TRUE(at::equal(q, qr)) << "q, head dim " << D << ", max diff " << (q - qr).abs().max().item<float>();
    EXPECT_TRUE(at::equal(k, kr)) << "k, head dim " << D << ", max diff " << (k - kr).abs().max().item<float>();
    // Rows of q heads alone (kv_heads 0: the SVDq tail pages' use).
    at::Tensor qa = at::empty({rows, NH, D}, bf_);
    ASSERT_TRUE(kernels::RopeQk(Bf(qkv), stride, rows, NH, 0, D, pos.data_ptr<int64_t>(), cos.data_ptr<float>(),
                                sin.data_ptr<float>(), Bf(qa), nullptr, at::cuda::getCurrentCUDAStream())
                    .ok());
    EXPECT_TRUE(at::equal(qa, qr)) << "heads alone, head dim " << D;
  }
}

TEST_F(FusedOps, SiluMulMatchesTheAtenChain) {
  at::manual_seed(3);
  const int64_t rows = 3, F = 1536;
  at::Tensor gu = at::randn({rows, 2 * F}, bf_) * 4;
  at::Tensor out = at::empty({rows, F}, bf_);
  ASSERT_TRUE(kernels::SiluMul(Bf(gu), rows, F, Bf(out), at::cuda::getCurrentCUDAStream()).ok());
  at::Tensor ref = at::silu(gu.narrow(1, 0, F)) * gu.narrow(1, F, F);
  EXPECT_TRUE(at::equal(out, ref)) << "max diff " << (out - ref).abs().max().item<float>();
}

TEST(FusedOpsShapes, RejectsBadShapes) {
  EXPECT_FALSE(kernels::AddRmsNorm(nullptr, nullptr, nullptr, 1e-5f, 1, 0, nullptr, nullptr).ok());
  EXPECT_FALSE(kernels::RopeQk(nullptr, 10, 1, 2, 1, 63, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr).ok());
  EXPECT_FALSE(kernels::RopeQk(nullptr, 10, 1, 2, 1, 64, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr).ok());
  EXPECT_FALSE(kernels::SiluMul(nullptr, 1, 0, nullptr, nullptr).ok());
}

}  // namespace
