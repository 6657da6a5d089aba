// The OpenAI-compatible HTTP/1.1 front (cpp-httplib), in the server's process on its own
// port: /v1/completions, /v1/chat/completions (whole or as server-sent events), /v1/models,
// /health and /ready. Requests go through the same Admission as gRPC (validation, KV check,
// queue) and the same engine; JSON lives in openai_protocol.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace svdq::api {
class Admission;
class ApiKeys;
}  // namespace svdq::api

namespace svdq::http {

struct HttpFrontOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                // 0: any free port (main turns the front off for --http-port 0)
  std::string tls_cert, tls_key;  // both set: HTTPS
  int64_t max_body_bytes = 4 << 20;
  std::string model_name;         // the `model` id; empty: the model's own name
  int threads = 64;               // connections served at once (a stream holds one)
};

class HttpFront {
 public:
  HttpFront(api::Admission* admission, const api::ApiKeys* keys, HttpFrontOptions options);
  ~HttpFront();
  // Binds and starts serving on a thread of its own. Returns the bound port; throws
  // std::runtime_error when the certificate cannot be loaded or the port cannot be bound.
  int Start();
  // Stops accepting and ends the serving thread (streams in flight are cut).
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace svdq::http
