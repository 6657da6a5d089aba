"""Fixtures shared by the integration tests: built binaries, the default model, the
Hugging Face reference model, and a running svdq-server with Python gRPC stubs."""
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SVDQ_BUILD_DIR", ROOT / "build"))
MODEL = Path(os.environ.get("SVDQ_TEST_MODEL", ROOT / ".models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (run on the GPU host)")


def cuda_available():
    if os.environ.get("SVDQ_TEST_CUDA") in ("0", "1"):  # the GPU host's Python has no torch
        return os.environ["SVDQ_TEST_CUDA"] == "1"
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def model_path():
    if not MODEL.exists():
        pytest.fail(f"default model missing at {MODEL}: run deploy/fetch-model.sh (make test does)")
    return MODEL


@pytest.fixture(scope="session")
def probe(model_path):
    exe = BUILD / "tools" / "svdq-probe"

    def run(cmd, *args, stdin=None, model=None):
        out = subprocess.run([str(exe), cmd, str(model or model_path), *map(str, args)],
                             input=None if stdin is None else json.dumps(stdin),
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"svdq-probe {cmd} failed: {out.stderr}")
        return json.loads(out.stdout)
    return run


@pytest.fixture(scope="session")
def hf_model(model_path):
    """transformers' LlamaForCausalLM loading the same .gguf, dequantized to fp32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32)
    m.eval()
    return m


def hf_greedy(model, ids, n):
    """Greedy continuation by the reference, stopping at EOS like the server."""
    import torch
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, num_beams=1,
                             eos_token_id=model.config.eos_token_id, pad_token_id=model.config.eos_token_id)
    return out[0, len(ids):].tolist()


def generate_stubs():
    """Python modules generated from proto/svdq/v1/generation.proto (tests and bench/ scripts)."""
    from grpc_tools import protoc
    out = Path(tempfile.mkdtemp(prefix="svdq_stubs_"))
    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", f"--grpc_python_out={out}",
                      str(ROOT / "proto" / "svdq" / "v1" / "generation.proto")])
    if rc != 0:
        raise RuntimeError("protoc failed on generation.proto")
    sys.path.insert(0, str(out))
    from svdq.v1 import generation_pb2, generation_pb2_grpc
    return generation_pb2, generation_pb2_grpc


@pytest.fixture(scope="session")
def stubs():
    return generate_stubs()


_handed_out = set()


def free_port():
    """A free port below the kernel's ephemeral range. A port-0 bind hands out an ephemeral port,
    which an outgoing connection (a test's own client) can take before the server binds it; that
    made servers fail to start ("cannot listen") now and then. Ports below the range are only
    taken by listeners."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    if low > 12000:
        for _ in range(200):
            port = rng.randrange(10000, low)
            if port in _handed_out:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model_path, device, extra=()):
        self.port = free_port()
        self.metrics_port = free_port()
        self.http_port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="svdq_server_", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [str(BUILD / "server" / "svdq-server"), "--model", str(model_path), "--device", device,
             "--port", str(self.port), "--metrics-port", str(self.metrics_port), "--http-port", str(self.http_port),
             *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.addr = f"127.0.0.1:{self.port}"
        self.http_url = f"http://127.0.0.1:{self.http_port}"

    def wait_ready(self, timeout=120):
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        deadline = time.time() + timeout
        with grpc.insecure_channel(self.addr) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"svdq-server exited early: {Path(self.log.name).read_text()}")
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(service="svdq.v1.Generation"), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise RuntimeError("svdq-server did not become ready")

    def stop(self):
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def output(self):
        return Path(self.log.name).read_text()


def start_server(model_path, device):
    s = Server(model_path, device)
    s.wait_ready()
    return s


@pytest.fixture(scope="session")
def cpu_server(model_path):
    s = start_server(model_path, "cpu")
    yield s
    s.stop()
