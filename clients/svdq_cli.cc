// svdq-cli: a small client for svdq-server. Streams generated text to the terminal.
//   svdq-cli [--addr host:port] generate "prompt" [--chat] [--max-tokens N] [--min-tokens N]
//            [--temperature T] [--top-k K] [--top-p P] [--min-p P] [--seed S]
//            [--repetition-penalty R] [--presence-penalty P] [--frequency-penalty F]
//            [--stop S]... [--stop-token-id ID]... [--ignore-eos]
//   svdq-cli [--addr host:port] tokenize "text" [--chat]
//   svdq-cli [--addr host:port] info | server-info | health
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "svdq/v1/generation.grpc.pb.h"
#include "svdq/v1/health_client.grpc.pb.h"

namespace {

int Usage() {
  std::cerr << "usage: svdq-cli [--addr host:port] generate \"prompt\" [--chat] [--max-tokens N] [--min-tokens N]\n"
               "                [--temperature T] [--top-k K] [--top-p P] [--min-p P] [--seed S]\n"
               "                [--repetition-penalty R] [--presence-penalty P] [--frequency-penalty F]\n"
               "                [--stop S]... [--stop-token-id ID]... [--ignore-eos]\n"
               "       svdq-cli [--addr host:port] tokenize \"text\" [--chat]\n"
               "       svdq-cli [--addr host:port] info | server-info | health\n"
               "  --chat sends the prompt as one user message in the model's chat format.\n";
  return 2;
}

const char* ReasonName(svdq::v1::FinishReason r) {
  switch (r) {
    case svdq::v1::FINISH_REASON_STOP: return "stop";
    case svdq::v1::FINISH_REASON_LENGTH: return "length";
    case svdq::v1::FINISH_REASON_CANCELLED: return "cancelled";
    case svdq::v1::FINISH_REASON_ERROR: return "error";
    default: return "unspecified";
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string addr = "127.0.0.1:50051";
  if (const char* env = std::getenv("SVDQ_ADDR")) addr = env;
  std::vector<std::string> args(argv + 1, argv + argc);
  std::vector<std::string> pos;
  svdq::v1::GenerateRequest req;
  req.set_max_tokens(128);
  bool chat = false;
  try {
    for (size_t i = 0; i < args.size(); ++i) {
      const std::string& a = args[i];
      auto next = [&]() -> std::string {
        if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
        return args[++i];
      };
      if (a == "--addr") addr = next();
      else if (a == "--max-tokens") req.set_max_tokens(std::stoi(next()));
      else if (a == "--temperature") req.mutable_sampling()->set_temperature(std::stof(next()));
      else if (a == "--top-k") req.mutable_sampling()->set_top_k(std::stoi(next()));
      else if (a == "--top-p") req.mutable_sampling()->set_top_p(std::stof(next()));
      else if (a == "--seed") req.mutable_sampling()->set_seed(std::stoull(next()));
      else if (a == "--ignore-eos") req.set_ignore_eos(true);
      else if (a == "--chat") chat = true;
      else if (a == "--min-tokens") req.set_min_tokens(std::stoi(next()));
      else if (a == "--min-p") req.mutable_sampling()->set_min_p(std::stof(next()));
      else if (a == "--repetition-penalty") req.mutable_sampling()->set_repetition_penalty(std::stof(next()));
      else if (a == "--presence-penalty") req.mutable_sampling()->set_presence_penalty(std::stof(next()));
      else if (a == "--frequency-penalty") req.mutable_sampling()->set_frequency_penalty(std::stof(next()));
      else if (a == "--stop") req.add_stop(next());
      else if (a == "--stop-token-id") req.add_stop_token_ids(std::stoi(next()));
      else if (a.rfind("--", 0) == 0) throw std::invalid_argument("unknown option " + a);
      else pos.push_back(a);
    }
  } catch (const std::exception& e) {
    std::cerr << "svdq-cli: " << e.what() << "\n";
    return Usage();
  }
  if (pos.empty()) return Usage();
  auto channel = grpc::CreateChannel(addr, grpc::InsecureChannelCredentials());
  auto stub = svdq::v1::Generation::NewStub(channel);

  if (pos[0] == "info") {
    grpc::ClientContext ctx;
    svdq::v1::ModelInfo info;
    grpc::Status st = stub->GetModelInfo(&ctx, {}, &info);
    if (!st.ok()) {
      std::cerr << "svdq-cli: " << st.error_message() << "\n";
      return 1;
    }
    std::cout << info.DebugString();
    return 0;
  }
  auto fail = [](const grpc::Status& st) {
    std::cerr << "svdq-cli: " << st.error_message() << " (" << st.error_code() << ")\n";
    return 1;
  };
  auto as_chat = [](const std::string& text) {
    svdq::v1::ChatMessages m;
    auto* msg = m.add_messages();
    msg->set_role("user");
    msg->set_content(text);
    return m;
  };
  if (pos[0] == "health") {
    // Liveness ("") and readiness (the Generation service); exit 0 only when both serve.
    auto health = grpc::health::v1::Health::NewStub(channel);
    int rc = 0;
    for (const char* service : {"", "svdq.v1.Generation"}) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      grpc::health::v1::HealthCheckRequest hr;
      hr.set_service(service);
      grpc::health::v1::HealthCheckResponse out;
      grpc::Status st = health->Check(&ctx, hr, &out);
      std::string status = st.ok() ? grpc::health::v1::HealthCheckResponse_ServingStatus_Name(out.status())
                                   : "error: " + st.error_message();
      std::cout << (*service ? service : "(liveness)") << ": " << status << "\n";
      if (!st.ok() || out.status() != grpc::health::v1::HealthCheckResponse::SERVING) rc = 1;
    }
    return rc;
  }
  if (pos[0] == "server-info") {
    grpc::ClientContext ctx;
    svdq::v1::ServerInfo info;
    grpc::Status st = stub->GetServerInfo(&ctx, {}, &info);
    if (!st.ok()) return fail(st);
    std::cout << info.DebugString();
    return 0;
  }
  if (pos[0] == "tokenize" && pos.size() == 2) {
    grpc::ClientContext ctx;
    svdq::v1::TokenizeRequest tr;
    if (chat) *tr.mutable_chat() = as_chat(pos[1]);
    else tr.set_text(pos[1]);
    svdq::v1::TokenizeResponse out;
    grpc::Status st = stub->Tokenize(&ctx, tr, &out);
    if (!st.ok()) return fail(st);
    for (int i = 0; i < out.ids_size(); ++i) std::cout << (i ? " " : "") << out.ids(i);
    std::cout << "\n";
    return 0;
  }
  if (pos[0] != "generate" || pos.size() != 2) return Usage();
  if (chat) *req.mutable_chat() = as_chat(pos[1]);
  else req.set_text(pos[1]);
  grpc::ClientContext ctx;
  auto reader = stub->Generate(&ctx, req);
  svdq::v1::GenerateResponse resp;
  svdq::v1::GenerateFinal fin;
  bool have_final = false;
  while (reader->Read(&resp)) {
    if (resp.has_chunk()) {
      std::cout << resp.chunk().text() << std::flush;
    } else if (resp.has_final()) {
      fin = resp.final();
      have_final = true;
    }
  }
  grpc::Status st = reader->Finish();
  std::cout << "\n";
  if (!st.ok()) {
    std::cerr << "svdq-cli: " << st.error_message() << " (" << st.error_code() << ")\n";
    return 1;
  }
  if (have_final) {
    std::cerr << "[finish=" << ReasonName(fin.finish_reason())
              << (fin.stop_reason().empty() ? "" : " stop_reason=" + fin.stop_reason())
              << " prompt_tokens=" << fin.usage().prompt_tokens()
              << " completion_tokens=" << fin.usage().completion_tokens()
              << " ttft=" << fin.timings().time_to_first_token_s() << "s total=" << fin.timings().total_s() << "s]\n";
  }
  return 0;
}
