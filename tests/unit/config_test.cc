// Flag and environment parsing for svdq-server.
#include <gtest/gtest.h>

#include <cstdlib>

#include "server/config.h"

using svdq::server::ParseConfig;
using svdq::server::ServerConfig;

namespace {

bool Parse(std::vector<std::string> args, ServerConfig* c, std::string* err) {
  std::vector<char*> argv = {const_cast<char*>("svdq-server")};
  for (auto& a : args) argv.push_back(a.data());
  bool help;
  return ParseConfig(static_cast<int>(argv.size()), argv.data(), "/default.gguf", c, err, &help);
}

TEST(Config, DefaultsFlagsAndEnvironment) {
  ServerConfig c;
  std::string err;
  ASSERT_TRUE(Parse({}, &c, &err)) << err;
  EXPECT_EQ(c.model, "/default.gguf");
  EXPECT_EQ(c.port, 50051);
  // The SVDq schedule that keeps every latent group (bench/results/kv_fidelity_cpu_*_schedules*:
  // +1.5% perplexity on the 1.5B model where 8,4,2,1,1,0,0,0 cost +9.3%).
  EXPECT_EQ(c.svdq_schedule, "4,2,2,2,2,2,1,1");
  ASSERT_TRUE(Parse({"--port", "6000", "--metrics-port=0", "--device", "cpu"}, &c, &err)) << err;
  EXPECT_EQ(c.port, 6000);
  EXPECT_EQ(c.metrics_port, 0);
  EXPECT_EQ(c.device, "cpu");
  setenv("SVDQ_MAX_RUNNING", "3", 1);
  ServerConfig d;
  ASSERT_TRUE(Parse({}, &d, &err)) << err;
  EXPECT_EQ(d.max_running, 3);
  ASSERT_TRUE(Parse({"--max-running", "5"}, &d, &err));
  EXPECT_EQ(d.max_running, 5);  // the flag wins
  unsetenv("SVDQ_MAX_RUNNING");
}

TEST(Config, BadInputsAreRejectedWithAMessage) {
  ServerConfig c;
  std::string err;
  EXPECT_FALSE(Parse({"--port", "70000"}, &c, &err));
  EXPECT_NE(err.find("--port"), std::string::npos);
  EXPECT_FALSE(Parse({"--port", "12abc"}, &c, &err));
  EXPECT_FALSE(Parse({"--bogus", "1"}, &c, &err));
  EXPECT_NE(err.find("unknown flag"), std::string::npos);
  EXPECT_FALSE(Parse({"--port"}, &c, &err));
  EXPECT_FALSE(Parse({"stray"}, &c, &err));
  // Byte counts: no NaN, infinity or count past 2^62 (an out-of-range cast before).
  for (const char* bad : {"inf", "1e30", "nan", "-1", "1e18G", "5X"}) {
    EXPECT_FALSE(Parse({"--kv-cache-bytes", bad}, &c, &err)) << bad;
    EXPECT_NE(err.find("--kv-cache-bytes"), std::string::npos) << bad;
  }
  EXPECT_TRUE(Parse({"--kv-cache-bytes", "1.5G"}, &c, &err)) << err;
  EXPECT_EQ(c.kv_cache_bytes, 1610612736);
  // More running sequences than step tokens would let decodes starve admitted prompts.
  EXPECT_FALSE(Parse({"--max-running", "64", "--max-batch-tokens", "32"}, &c, &err));
  EXPECT_NE(err.find("--max-running"), std::string::npos);
  EXPECT_TRUE(Parse({"--max-running", "32", "--max-batch-tokens", "32"}, &c, &err)) << err;
  // Sparse attention's budget: tokens, 0 (dense) by default; no negative or non-numeric budget.
  EXPECT_EQ(c.sparse_budget, 0);
  EXPECT_TRUE(Parse({"--sparse-budget", "2048"}, &c, &err)) << err;
  EXPECT_EQ(c.sparse_budget, 2048);
  for (const char* bad : {"-1", "2k", ""}) {
    EXPECT_FALSE(Parse({"--sparse-budget", bad}, &c, &err)) << bad;
    EXPECT_NE(err.find("--sparse-budget"), std::string::npos) << bad;
  }
  EXPECT_EQ(c.sparse_landmark_rank, 0);
  EXPECT_TRUE(Parse({"--sparse-landmark-rank", "16"}, &c, &err)) << err;
  EXPECT_EQ(c.sparse_landmark_rank, 16);
  for (const char* bad : {"-1", "129", "x"}) {
    EXPECT_FALSE(Parse({"--sparse-landmark-rank", bad}, &c, &err)) << bad;
    EXPECT_NE(err.find("--sparse-landmark-rank"), std::string::npos) << bad;
  }
  EXPECT_EQ(c.sparse_landmark_subs, 1);
  EXPECT_TRUE(Parse({"--sparse-landmark-subs", "4"}, &c, &err)) << err;
  EXPECT_EQ(c.sparse_landmark_subs, 4);
  for (const char* bad : {"0", "9", "x"}) {
    EXPECT_FALSE(Parse({"--sparse-landmark-subs", bad}, &c, &err)) << bad;
    EXPECT_NE(err.find("--sparse-landmark-subs"), std::string::npos) << bad;
  }
  EXPECT_EQ(c.sparse_landmark_basis_tokens, 8192);
  EXPECT_TRUE(Parse({"--sparse-landmark-basis-tokens", "32768"}, &c, &err)) << err;
  EXPECT_EQ(c.sparse_landmark_basis_tokens, 32768);
  for (const char* bad : {"0", "-5", "many"}) {
    EXPECT_FALSE(Parse({"--sparse-landmark-basis-tokens", bad}, &c, &err)) << bad;
    EXPECT_NE(err.find("--sparse-landmark-basis-tokens"), std::string::npos) << bad;
  }
  EXPECT_EQ(c.sparse_dense_layers, 0);
  EXPECT_TRUE(Parse({"--sparse-dense-layers", "2"}, &c, &err)) << err;
  EXPECT_EQ(c.sparse_dense_layers, 2);
  for (const char* bad : {"-1", "two", ""}) {
    EXPECT_FALSE(Parse({"--sparse-dense-layers", bad}, &c, &err)) << bad;
    EXPECT_NE(err.find("--sparse-dense-layers"), std::string::npos) << bad;
  }
}

}  // namespace

TEST(Config, HttpFrontTlsAndKeys) {
  ServerConfig c;
  std::string err;
  ASSERT_TRUE(Parse({"--host", "0.0.0.0"}, &c, &err)) << err;
  EXPECT_EQ(c.http_port, 8000);
  EXPECT_EQ(c.http_host, "0.0.0.0");  // the gRPC host unless set
  ASSERT_TRUE(Parse({"--http-port", "0", "--http-host", "::1", "--tls-cert", "c.pem", "--tls-key", "k.pem",
                     "--tls-client-ca", "ca.pem", "--api-key-file", "keys"}, &c, &err)) << err;
  EXPECT_EQ(c.http_port, 0);
  EXPECT_EQ(c.http_host, "::1");
  EXPECT_EQ(c.tls_client_ca, "ca.pem");
  ServerConfig d;
  EXPECT_FALSE(Parse({"--tls-cert", "c.pem"}, &d, &err));
  EXPECT_NE(err.find("--tls-key"), std::string::npos);
  ServerConfig e;
  EXPECT_FALSE(Parse({"--tls-client-ca", "ca.pem"}, &e, &err));
  ServerConfig f;
  EXPECT_FALSE(Parse({"--http-port", "70000"}, &f, &err));
  ServerConfig g;
  EXPECT_FALSE(Parse({"--api-key", ""}, &g, &err));
}
