// svdq-server: flags -> config -> start gRPC (health NOT_SERVING) and metrics -> load
// the model -> SERVING -> run until SIGINT/SIGTERM -> drain and exit.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <thread>

#include "server/api/admission.h"
#include "server/api/auth.h"
#include "server/api/generation_service.h"
#include "server/config.h"
#include "server/engine/engine.h"
#include "server/http/http_front.h"
#include "server/metrics/metrics.h"

namespace {
constexpr const char* kServiceName = "svdq.v1.Generation";

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

// gRPC's credentials: TLS from PEM files when configured (mutual with a client CA).
std::shared_ptr<grpc::ServerCredentials> GrpcCredentials(const svdq::server::ServerConfig& cfg, std::string* error) {
  if (cfg.tls_cert.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  if (!ReadFile(cfg.tls_key, &pair.private_key) || !ReadFile(cfg.tls_cert, &pair.cert_chain)) {
    *error = "cannot read --tls-cert " + cfg.tls_cert + " or --tls-key " + cfg.tls_key;
    return nullptr;
  }
  grpc::SslServerCredentialsOptions opts(cfg.tls_client_ca.empty()
                                             ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                             : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  if (!cfg.tls_client_ca.empty() && !ReadFile(cfg.tls_client_ca, &opts.pem_root_certs)) {
    *error = "cannot read --tls-client-ca " + cfg.tls_client_ca;
    return nullptr;
  }
  opts.pem_key_cert_pairs.push_back(pair);
  return grpc::SslServerCredentials(opts);
}
// The model id the HTTP front answers to by default: the file or folder name, without .gguf.
std::string DefaultModelName(std::string model) {
  if (model.rfind("synthetic:", 0) == 0) return model;
  while (model.size() > 1 && model.back() == '/') model.pop_back();
  const size_t slash = model.find_last_of('/');
  if (slash != std::string::npos) model = model.substr(slash + 1);
  const std::string ext = ".gguf";
  if (model.size() > ext.size() && model.compare(model.size() - ext.size(), ext.size(), ext) == 0)
    model.resize(model.size() - ext.size());
  return model;
}
}  // namespace

int main(int argc, char** argv) {
  using svdq::server::ServerConfig;
  ServerConfig cfg;
  std::string error;
  bool help = false;
  if (!svdq::server::ParseConfig(argc, argv, SVDQ_DEFAULT_MODEL, &cfg, &error, &help)) {
    std::cerr << "svdq-server: " << error << "\n" << svdq::server::ConfigUsage();
    return 2;
  }
  if (help) {
    std::cout << svdq::server::ConfigUsage();
    return 0;
  }

  // Signals are taken synchronously by sigwait below, so every thread blocks them.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  // A client that goes away mid-response must not kill the server: writes fail instead.
  std::signal(SIGPIPE, SIG_IGN);

  svdq::api::ApiKeys keys;
  if (!svdq::api::ApiKeys::Load(cfg.api_key, cfg.api_key_file, &keys, &error)) {
    std::cerr << "svdq-server: " << error << "\n";
    return 2;
  }
  std::shared_ptr<grpc::ServerCredentials> creds = GrpcCredentials(cfg, &error);
  if (!creds) {
    std::cerr << "svdq-server: " << error << "\n";
    return 2;
  }

  svdq::metrics::Metrics metrics;
  int metrics_port;
  try {
    metrics_port = metrics.Serve(cfg.metrics_host, cfg.metrics_port);
  } catch (const std::exception& e) {
    std::cerr << "svdq-server: " << e.what() << "\n";
    return 1;
  }

  svdq::engine::EngineOptions eo;
  eo.model_path = cfg.model;
  eo.device = cfg.device;
  eo.dtype = cfg.dtype;
  eo.max_running = static_cast<size_t>(cfg.max_running);
  eo.max_waiting = static_cast<size_t>(cfg.max_waiting);
  eo.max_batch_tokens = cfg.max_batch_tokens;
  eo.kv_cache_bytes = cfg.kv_cache_bytes;
  eo.block_size = cfg.block_size;
  eo.prefix_caching = cfg.prefix_caching;
  eo.key_mode = cfg.key_mode;
  eo.value_mode = cfg.value_mode;
  eo.svdq_schedule = cfg.svdq_schedule;
  eo.svdq_basis = cfg.svdq_basis;
  eo.svdq_scope = cfg.svdq_scope;
  eo.svdq_basis_tokens = cfg.svdq_basis_tokens;
  eo.cuda_graphs = cfg.cuda_graphs;
  eo.overlap_steps = cfg.overlap_steps;
  eo.sparse_budget = cfg.sparse_budget;
  eo.sparse_landmark_rank = cfg.sparse_landmark_rank;
  eo.sparse_landmark_subs = cfg.sparse_landmark_subs;
  eo.sparse_landmark_basis_tokens = cfg.sparse_landmark_basis_tokens;
  eo.sparse_dense_layers = cfg.sparse_dense_layers;
  eo.svdq_basis_file = cfg.svdq_basis_file;
  svdq::engine::Engine engine(eo, &metrics);
  svdq::api::Admission admission(&engine, &metrics);
  svdq::api::GenerationService service(&admission, &keys);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(cfg.host + ":" + std::to_string(cfg.port), creds, &bound_port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(static_cast<int>(cfg.max_message_bytes));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || bound_port == 0) {
    std::cerr << "svdq-server: cannot listen on " << cfg.host << ":" << cfg.port << "\n";
    return 1;
  }
  auto* health = server->GetHealthCheckService();
  health->SetServingStatus(kServiceName, false);  // liveness ("") is SERVING; readiness waits for the model
  std::unique_ptr<svdq::http::HttpFront> http;
  int http_port = 0;
  if (cfg.http_port != 0) {
    svdq::http::HttpFrontOptions ho;
    ho.host = cfg.http_host;
    ho.port = cfg.http_port;
    ho.tls_cert = cfg.tls_cert;
    ho.tls_key = cfg.tls_key;
    ho.max_body_bytes = cfg.max_message_bytes;
    ho.model_name = cfg.served_model_name.empty() ? DefaultModelName(cfg.model) : cfg.served_model_name;
    ho.threads = cfg.http_threads;
    http = std::make_unique<svdq::http::HttpFront>(&admission, &keys, ho);
    try {
      http_port = http->Start();
    } catch (const std::exception& e) {
      std::cerr << "svdq-server: " << e.what() << "\n";
      server->Shutdown();
      return 1;
    }
  }
  const char* scheme = cfg.tls_cert.empty() ? "http" : "https";
  std::cout << "svdq-server: gRPC on " << cfg.host << ":" << bound_port << (cfg.tls_cert.empty() ? "" : " (TLS)");
  if (http) std::cout << ", OpenAI HTTP on " << scheme << "://" << cfg.http_host << ":" << http_port << "/v1";
  std::cout << ", metrics on http://" << cfg.metrics_host << ":" << metrics_port << "/metrics"
            << (keys.enabled() ? "; API keys required (" + std::to_string(keys.size()) + " loaded)" : "") << std::endl;

  try {
    auto t0 = std::chrono::steady_clock::now();
    engine.Load();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto& mc = engine.model_config();
    if (mc.synthetic)
      std::cout << "svdq-server: SYNTHETIC MODEL: random weights in the shape of " << cfg.model
                << "; for throughput and memory measurements only, its text is meaningless" << std::endl;
    std::cout << "svdq-server: loaded " << mc.name << " (" << mc.architecture << ", " << mc.n_layers << " layers, "
              << mc.n_heads << "/" << mc.n_kv_heads << " heads, context " << mc.max_context << ") from " << cfg.model
              << " on " << engine.device_name() << " as " << engine.dtype_name() << " in " << s << " s; KV cache "
              << engine.kv_capacity_tokens() << " tokens in blocks of " << cfg.block_size << std::endl;
    const auto k = engine.kv_config();
    std::cout << "svdq-server: KV cache " << k.mode << "; " << k.key_bytes_per_token << " key + "
              << k.value_bytes_per_token << " value bytes per token (key compression " << k.key_compression_ratio
              << "x against bf16), " << k.bytes_per_running_sequence << " bytes per running sequence, "
              << "prefix caching " << (k.prefix_caching ? "on" : "off") << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "svdq-server: cannot load the model: " << e.what() << "\n";
    if (http) http->Stop();
    server->Shutdown();
    return 1;
  }
  engine.Start();
  health->SetServingStatus(kServiceName, true);
  std::cout << "svdq-server: ready" << std::endl;

  int sig = 0;
  sigwait(&sigs, &sig);
  std::cout << "svdq-server: signal " << sig << ", not accepting new requests; in-flight ones have "
            << cfg.shutdown_grace_seconds << " s to finish" << std::endl;
  // Draining: the listener stays open so that load balancers read readiness NOT_SERVING
  // while the calls in flight finish; new Generate calls get UNAVAILABLE. When they are all
  // done, or the grace period ends, or a second signal comes, gRPC shuts down (cancelling
  // what is left; each handler then cancels its sequence). The engine keeps stepping meanwhile.
  health->SetServingStatus(kServiceName, false);
  admission.StartDraining();
  const auto grace_end = std::chrono::steady_clock::now() + std::chrono::seconds(cfg.shutdown_grace_seconds);
  timespec tick{0, 100 * 1000 * 1000};
  while (admission.InFlightCount() > 0 && std::chrono::steady_clock::now() < grace_end) {
    if (sigtimedwait(&sigs, nullptr, &tick) > 0) {
      std::cout << "svdq-server: second signal, cancelling in-flight requests" << std::endl;
      engine.Stop();
      break;
    }
  }
  std::atomic<bool> drained{false};
  std::thread drain([&] {
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    admission.CancelAll();  // HTTP streams still running end with the next step
    if (http) http->Stop();
    drained = true;
  });
  while (!drained) {
    if (sigtimedwait(&sigs, nullptr, &tick) > 0) engine.Stop();
  }
  drain.join();
  engine.Stop();
  std::cout << "svdq-server: stopped" << std::endl;
  return 0;
}
