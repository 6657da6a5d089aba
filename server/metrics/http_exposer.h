// A minimal HTTP/1.1 server for GET /metrics, serializing a prometheus-cpp registry.
//
// Why not prometheus-cpp's civetweb Exposer: civetweb starts its threads with a fixed
// ~100 KB stack, and glibc refuses to create a thread whose stack cannot hold the
// process's static TLS. With libtorch and the CUDA libraries loaded the static TLS is
// larger than that, so the Exposer fails ("null context when constructing CivetServer")
// on every host that links torch. std::thread uses the default 8 MB stack.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

namespace prometheus {
class Registry;
}

namespace svdq::metrics {

class HttpExposer {
 public:
  // Binds host:port (0: any free port); throws std::runtime_error if it cannot.
  HttpExposer(const std::string& host, int port, std::shared_ptr<prometheus::Registry> registry);
  ~HttpExposer();
  int port() const { return port_; }

 private:
  void Serve();
  void Handle(int fd);
  std::shared_ptr<prometheus::Registry> registry_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace svdq::metrics
