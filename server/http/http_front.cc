#include "server/http/http_front.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <stdexcept>
#include <thread>
#include <vector>

#include "models/tokenizer.h"
#include "server/api/admission.h"
#include "server/api/auth.h"
#include "server/api/request_id.h"
#include "server/http/openai_protocol.h"

namespace svdq::http {
namespace {

constexpr const char* kJson = "application/json";

void Reply(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(ErrorBody(e), kJson);
}

std::string ReasonFor(int status) {
  switch (status) {
    case 404: return "no such endpoint; this server serves /v1/completions, /v1/chat/completions, /v1/models, /health and /ready";
    case 405: return "method not allowed";
    case 413: return "the request body is larger than this server accepts (--max-message-bytes)";
    case 414: return "the request URI is too long";
    default: return "the request could not be handled";
  }
}

// One generation request in flight: its choices' tickets and what they have produced.
struct Job {
  OpenAiRequest req;
  ResponseHead head;
  std::vector<std::unique_ptr<api::Admission::Ticket>> tickets;
  std::vector<std::vector<int32_t>> prompt_ids;
  std::vector<ChoiceOutput> out;
  std::vector<bool> done, echoed;
  std::vector<int64_t> offset;  // completions: characters sent so far per choice, for text_offset
  std::string error;            // the first engine error

  void CancelAll() {
    for (auto& t : tickets) t->stream().Cancel();
  }
  bool AllDone() const {
    for (bool d : done)
      if (!d) return false;
    return true;
  }
  // The part an engine event adds to choice i (score-only requests drop the generated token).
  ChoiceOutput Part(size_t i, const engine::Event& ev) {
    ChoiceOutput part;
    if (!req.score_only && !ev.final) {
      part.text = ev.text;
      part.ids = ev.ids;
      part.logprobs = ev.logprobs;
    }
    if (ev.final) {
      part.finish_reason = FinishReasonText(ev.reason);
      part.prompt_tokens = ev.prompt_tokens;
      part.completion_tokens = req.score_only ? 0 : ev.completion_tokens;
      if (ev.reason == engine::FinishReason::kError && error.empty()) error = ev.error;
    }
    return part;
  }
  void Accumulate(size_t i, const engine::Event& ev, const ChoiceOutput& part) {
    ChoiceOutput& o = out[i];
    o.text += part.text;
    o.ids.insert(o.ids.end(), part.ids.begin(), part.ids.end());
    o.logprobs.insert(o.logprobs.end(), part.logprobs.begin(), part.logprobs.end());
    if (!ev.prompt_logprobs.empty()) {
      o.prompt_logprobs = ev.prompt_logprobs;
      o.prompt_top = ev.prompt_top;
    }
    if (ev.final) {
      o.finish_reason = part.finish_reason;
      o.prompt_tokens = part.prompt_tokens;
      o.completion_tokens = part.completion_tokens;
      done[i] = true;
    }
  }
};

std::string SseEvent(const std::string& data) { return "data: " + data + "\n\n"; }

std::string AddressText(const sockaddr_storage& a, int* port) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (a.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&a);
    inet_ntop(AF_INET, &v4->sin_addr, buf, sizeof(buf));
    *port = ntohs(v4->sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&a);
    inet_ntop(AF_INET6, &v6->sin6_addr, buf, sizeof(buf));
    *port = ntohs(v6->sin6_port);
  }
  return buf;
}

// The socket a request arrived on (httplib does not hand it to handlers): the process's socket
// whose two ends are the request's addresses; -1 if none is found. The connection's thread
// owns it until the handler returns, so it cannot be closed and reused meanwhile.
int ConnectionFd(const httplib::Request& req) {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  int found = -1;
  while (dirent* e = readdir(dir)) {
    const int fd = std::atoi(e->d_name);
    struct stat st;
    if (fd <= 2 || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t ll = sizeof(local), pl = sizeof(peer);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0 ||
        getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0)
      continue;
    int lport = -1, pport = -1;
    AddressText(local, &lport);
    if (lport == req.local_port && AddressText(peer, &pport) == req.remote_addr && pport == req.remote_port) {
      found = fd;
      break;
    }
  }
  closedir(dir);
  return found;
}

// Whether the client closed its end: a read would return end of file. Pending bytes (a
// pipelined request, a TLS alert) leave it open.
bool PeerClosed(int fd) {
  char c;
  const ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

}  // namespace

struct HttpFront::Impl {
  api::Admission* admission;
  const api::ApiKeys* keys;
  HttpFrontOptions opt;
  std::unique_ptr<httplib::Server> server;
  std::thread thread;

  engine::Engine& engine() { return *admission->engine(); }
  std::string ModelName() { return opt.model_name.empty() ? engine().model_config().name : opt.model_name; }
  TokenText Texts() {
    const models::Tokenizer* tok = &engine().tokenizer();
    return [tok](int32_t id) { return tok->DecodeBytes({id}, false); };
  }

  bool Authorized(const httplib::Request& req, std::string* owner) {
    return keys->Check(req.get_header_value("Authorization"), owner);
  }

  void Routes() {
    httplib::Server& s = *server;
    s.Get("/health", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"status":"ok"})", kJson);
    });
    s.Get("/ready", [this](const httplib::Request&, httplib::Response& res) {
      if (admission->ready()) return res.set_content(R"({"status":"ready"})", kJson);
      Reply(res, NotReady());
    });
    s.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
      std::string owner;
      if (!Authorized(req, &owner)) return Reply(res, Unauthorized());
      if (!admission->ready()) return Reply(res, NotReady());
      res.set_content(ModelsResponse(ModelName(), std::time(nullptr), engine().model_config().max_context), kJson);
    });
    s.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) { Generate(req, res, false); });
    s.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { Generate(req, res, true); });
    // Errors without a body (no route, body over the limit, ...) get an OpenAI error object.
    s.set_error_handler([](const httplib::Request&, httplib::Response& res) {
      if (res.body.empty()) Reply(res, MakeError(res.status, ReasonFor(res.status)));
    });
    s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      Reply(res, MakeError(500, what));
    });
  }

  ApiError NotReady() {
    return MakeError(503, admission->draining() ? "the server is shutting down; send the request to another replica"
                                                : "the model is still loading; retry shortly");
  }

  static ApiError Unauthorized() {
    return MakeError(401, "missing or invalid API key: send the header 'Authorization: Bearer <key>'", "",
                     "invalid_api_key");
  }

  void Generate(const httplib::Request& hreq, httplib::Response& res, bool chat) {
    Answer(hreq, res, chat);
    // A handler that set no status answers 200 once it returns (httplib's -1 until then).
    admission->CountCall("http", std::to_string(res.status == -1 ? 200 : res.status));
  }

  void Answer(const httplib::Request& hreq, httplib::Response& res, bool chat) {
    std::string owner;
    if (!Authorized(hreq, &owner)) return Reply(res, Unauthorized());
    auto job = std::make_shared<Job>();
    if (ApiError e = ParseOpenAiRequest(hreq.body, chat, &job->req); !e.ok()) return Reply(res, e);
    if (!admission->ready()) return Reply(res, NotReady());
    const std::string name = ModelName();
    if (!job->req.model.empty() && job->req.model != name)
      return Reply(res, MakeError(404, "the model '" + job->req.model + "' does not exist; this server serves '" + name + "'",
                                  "model", "model_not_found"));
    OpenAiRequest& rq = job->req;
    const size_t n = rq.prompts.size();
    for (size_t i = 0; i < n; ++i) {
      std::unique_ptr<api::Admission::Ticket> ticket;
      std::vector<int32_t> ids;
      grpc::Status st = admission->Admit(rq.prompts[i], owner, [&](engine::Request& er) {
        if (rq.echo && rq.logprobs > 0) er.prompt_logprobs_top = rq.logprobs;
        ids = er.prompt;
      }, &ticket);
      if (!st.ok()) return Reply(res, FromStatus(st));  // the tickets admitted so far cancel as they go
      job->tickets.push_back(std::move(ticket));
      if (rq.echo && rq.prompt_texts[i].empty()) rq.prompt_texts[i] = engine().tokenizer().DecodeBytes(ids, false);
      job->prompt_ids.push_back(std::move(ids));
    }
    job->out.resize(n);
    job->done.assign(n, false);
    job->echoed.assign(n, false);
    job->offset.assign(n, 0);
    if (rq.echo && rq.logprobs >= 0)
      for (size_t i = 0; i < n; ++i) job->out[i].prompt_ids = job->prompt_ids[i];
    job->head.id = (chat ? "chatcmpl-" : "cmpl-") + api::NewRequestId().substr(4);
    job->head.model = name;
    job->head.created = std::time(nullptr);
    if (rq.stream) return Stream(job, res);
    // Whole response: wait for every choice (they run side by side in the engine). A client
    // that goes away meanwhile (a timeout, then an SDK's retry) cancels them within a step.
    // The connection is checked every 100 ms whether or not tokens arrive: a sequence that
    // yields a token every few milliseconds must not keep the check from running.
    const int fd = ConnectionFd(hreq);
    constexpr auto kCheckEvery = std::chrono::milliseconds(100);
    auto next_check = std::chrono::steady_clock::now() + kCheckEvery;
    engine::Event ev;
    for (size_t i = 0; i < n; ++i) {
      while (!job->done[i]) {
        if (job->tickets[i]->stream().Pop(&ev, kCheckEvery)) job->Accumulate(i, ev, job->Part(i, ev));
        if (fd >= 0 && std::chrono::steady_clock::now() >= next_check) {
          next_check = std::chrono::steady_clock::now() + kCheckEvery;
          if (PeerClosed(fd)) job->CancelAll();
        }
      }
    }
    if (!job->error.empty()) return Reply(res, MakeError(500, "generation failed: " + job->error));
    res.set_content(CompletionResponse(job->head, rq, job->out, Texts()), kJson);
  }

  void Stream(const std::shared_ptr<Job>& job, httplib::Response& res) {
    TokenText texts = Texts();
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [job, texts](size_t, httplib::DataSink& sink) {
          const OpenAiRequest& rq = job->req;
          const size_t n = job->tickets.size();
          // A write that fails means the client went away: its sequences end within a step.
          auto send = [&](const std::string& data) {
            const std::string e = SseEvent(data);
            return sink.write(e.data(), e.size());
          };
          if (rq.chat)
            for (size_t i = 0; i < n; ++i)
              if (!send(ChatRoleChunk(job->head, rq, static_cast<int>(i)))) return job->CancelAll(), false;
          int prompt_tokens = 0, completion_tokens = 0;
          const auto wait = std::chrono::milliseconds(n == 1 ? 50 : 5);
          engine::Event ev;
          while (!job->AllDone()) {
            bool any = false;
            for (size_t i = 0; i < n; ++i) {
              if (job->done[i] || !job->tickets[i]->stream().Pop(&ev, wait)) continue;
              any = true;
              ChoiceOutput part = job->Part(i, ev);
              job->Accumulate(i, ev, part);
              if (!rq.chat && rq.echo && !job->echoed[i]) {  // the prompt first, with its scores
                ChoiceOutput echo;
                echo.text = rq.prompt_texts[i];
                if (rq.logprobs >= 0) {
                  echo.prompt_ids = job->prompt_ids[i];
                  echo.prompt_logprobs = job->out[i].prompt_logprobs;
                  echo.prompt_top = job->out[i].prompt_top;
                }
                job->echoed[i] = true;
                if (!send(CompletionChunk(job->head, rq, static_cast<int>(i), echo, 0, texts)))
                  return job->CancelAll(), false;
                job->offset[i] = CharCount(echo.text);
              }
              if (ev.final) {
                prompt_tokens += part.prompt_tokens;
                completion_tokens += part.completion_tokens;
                if (ev.reason == engine::FinishReason::kError &&
                    !send(ErrorBody(MakeError(500, "generation failed: " + ev.error))))
                  return job->CancelAll(), false;
              } else if (part.text.empty() && part.ids.empty()) {
                continue;  // nothing to send (a score-only request's token)
              }
              const std::string chunk = rq.chat ? ChatChunk(job->head, rq, static_cast<int>(i), part, texts)
                                                : CompletionChunk(job->head, rq, static_cast<int>(i), part,
                                                                  job->offset[i], texts);
              job->offset[i] += CharCount(part.text);
              if (!send(chunk)) return job->CancelAll(), false;
            }
            if (!any && !sink.is_writable()) return job->CancelAll(), false;
          }
          if (rq.include_usage && !send(UsageChunk(job->head, rq, prompt_tokens, completion_tokens))) return false;
          if (!send("[DONE]")) return false;
          sink.done();
          return true;
        },
        [job](bool success) {
          if (!success) job->CancelAll();
        });
  }
};

HttpFront::HttpFront(api::Admission* admission, const api::ApiKeys* keys, HttpFrontOptions options)
    : impl_(std::make_unique<Impl>()) {
  impl_->admission = admission;
  impl_->keys = keys;
  impl_->opt = std::move(options);
}

HttpFront::~HttpFront() { Stop(); }

int HttpFront::Start() {
  Impl& m = *impl_;
  if (!m.opt.tls_cert.empty()) {
    auto ssl = std::make_unique<httplib::SSLServer>(m.opt.tls_cert.c_str(), m.opt.tls_key.c_str());
    if (!ssl->is_valid())
      throw std::runtime_error("cannot load the TLS certificate " + m.opt.tls_cert + " and key " + m.opt.tls_key);
    m.server = std::move(ssl);
  } else {
    m.server = std::make_unique<httplib::Server>();
  }
  const int threads = m.opt.threads;
  m.server->new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  m.server->set_payload_max_length(static_cast<size_t>(m.opt.max_body_bytes));
  m.Routes();
  int port = m.opt.port;
  if (port == 0) port = m.server->bind_to_any_port(m.opt.host);
  else if (!m.server->bind_to_port(m.opt.host, port)) port = -1;
  if (port <= 0) throw std::runtime_error("cannot listen for HTTP on " + m.opt.host + ":" + std::to_string(m.opt.port));
  m.thread = std::thread([&m] { m.server->listen_after_bind(); });
  // httplib's stop() does nothing before the listening loop has started, and the loop would then
  // run forever: a Stop() right after Start() (the model failed to load) hung the process when
  // the thread started late. Return once the loop runs (it starts at once unless it failed).
  for (int i = 0; i < 5000 && !m.server->is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return port;
}

void HttpFront::Stop() {
  if (!impl_->server) return;
  impl_->server->stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace svdq::http
