#!/usr/bin/env python3
"""Long-context retrieval per KV cache mode, in the style of RULER, through the running server's
gRPC API (what users get): synthetic tasks generated here with fixed seeds, answered greedily,
scored by exact match.

Tasks (our own wording and generator; RULER's task kinds):
  passkey     one number hidden in filler text; answer it;
  multikey    four "special magic number for <word>" needles with different words; answer the
              number of one of them;
  multivalue  four numbers for the same word; answer all four;
  vartrack    a chain of four variable assignments (VAR A = 12345, VAR B = VAR A, ...) among
              filler; name every variable that holds the value.
Filler: sentences of Debian 12's license texts (copies in bench/data/filler/, so that every host
builds the same prompts; the H200 runs of 2026-12-04 read the host's /usr/share/common-licenses),
shuffled by the seed.
Each case is sized with the server's Tokenize to the target length (the whole chat prompt),
its needles placed at depths spread over the context. A case scores the fraction of expected
strings found in the answer (all of them for multivalue and vartrack); accuracy is the mean.

  .venv/bin/python bench/eval_quality.py --model .models/Qwen2.5-Coder-0.5B-Instruct.gguf \\
        [--device cpu] [--lengths 1024,2048] [--cases 10] [--tasks passkey,multikey,...]
        [--modes "bf16_bf16;svdq_bf16@8,4,2,1,1,0,0,0"] [--kv-cache-bytes 1G] [--concurrency 4]
        [--json bench/results/eval_quality_cpu.json]

A mode is keys_values, with @schedule for SVDq keys, then optionally | and more server flags for
that mode alone, e.g. "svdq_bf16@4,2,2,1,1,0,0,0|--sparse-budget 2048". One server per mode; the
same cases for every mode. The model's context bounds the lengths (Qwen2.5-Coder: 32k). The JSON
is rewritten after each mode, so a run cut short keeps the modes it finished."""
import argparse
from concurrent.futures import ThreadPoolExecutor
import datetime
import hashlib
import json
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

TASKS = ["passkey", "multikey", "multivalue", "vartrack"]
FILLER_TEXTS = ["Apache-2.0", "GPL-3", "MPL-2.0", "LGPL-3", "Artistic", "GFDL-1.3"]
WORDS = ["amber", "basalt", "cobalt", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper",
         "kestrel", "lagoon", "meadow", "nectar", "onyx", "pepper", "quartz", "raven", "saffron", "tundra",
         "umber", "violet", "willow", "xenon", "yarrow", "zephyr"]
DEFAULT_MODES = "bf16_bf16;svdq_bf16@4,2,2,2,2,2,1,1;svdq_bf16@8,4,2,1,1,0,0,0"


def filler_sentences(license_dir=ROOT / "bench" / "data" / "filler"):
    """Sentences of the license texts: whitespace collapsed, split after . ! ?, 20-400 chars."""
    out = []
    for name in FILLER_TEXTS:
        path = Path(license_dir) / name
        if not path.exists():
            continue
        text = " ".join(path.read_text(encoding="utf-8", errors="replace").split())
        out += [s for s in re.split(r"(?<=[.!?])\s+", text) if 20 <= len(s) <= 400]
    if len(out) < 100:
        raise SystemExit(f"too little filler text under {license_dir}")
    return out


def number(rng, digits=7):
    return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))


def var_name(rng):
    return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))


def make_case(task, seed):
    """Needles, question and expected answers of one case (no filler yet)."""
    rng = random.Random(f"{task}-{seed}")
    if task == "passkey":
        n = number(rng, 5)
        needles = [f"The pass key is {n}. Remember it. {n} is the pass key."]
        question = "What is the pass key? Answer with the number only."
        expect = [n]
    elif task == "multikey":
        words = rng.sample(WORDS, 4)
        values = [number(rng) for _ in words]
        needles = [f"One of the special magic numbers for {w} is: {v}." for w, v in zip(words, values)]
        k = rng.randrange(len(words))
        question = f"What is the special magic number for {words[k]} mentioned in the text? Answer with the number only."
        expect = [values[k]]
    elif task == "multivalue":
        word = rng.choice(WORDS)
        values = [number(rng) for _ in range(4)]
        needles = [f"One of the special magic numbers for {word} is: {v}." for v in values]
        question = (f"What are all the special magic numbers for {word} mentioned in the text? "
                    "Answer with the numbers only, separated by commas.")
        expect = values
    elif task == "vartrack":
        names = []
        while len(names) < 4:
            v = var_name(rng)
            if v not in names:
                names.append(v)
        value = number(rng, 5)
        needles = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, 4)]
        question = (f"Find all variables that are assigned the value {value} in the text above, directly or "
                    "through other variables. Answer with the variable names only, separated by commas.")
        expect = names
    else:
        raise ValueError(task)
    return dict(task=task, seed=seed, needles=needles, question=question, expect=expect)


def assemble(case, sentences, n_filler):
    """The user message: n_filler shuffled filler sentences with the needles at spread depths."""
    rng = random.Random(f"filler-{case['task']}-{case['seed']}")
    body = [sentences[rng.randrange(len(sentences))] for _ in range(n_filler)]
    k = len(case["needles"])
    # Depths: the needles in order (a variable chain reads forwards), spread over 10%-90%.
    depths = sorted(rng.uniform(0.1, 0.9) for _ in range(k))
    for i, (d, needle) in enumerate(zip(depths, case["needles"])):
        body.insert(min(len(body), int(d * len(body)) + i), needle)
    context = " ".join(body)
    return (f"Below is a long text. Some facts are hidden in it; read it and answer the question after it.\n\n"
            f"{context}\n\n{case['question']}")


def score(case, answer):
    """Fraction of the expected strings found in the answer (RULER's string-match-all)."""
    found = sum(1 for e in case["expect"] if re.search(r"(?<![0-9A-Za-z])" + re.escape(e) + r"(?![0-9A-Za-z])", answer))
    return found / len(case["expect"])


def build_prompt(tokenize, case, sentences, target_tokens):
    """The case's user message sized to target_tokens (chat template included), by bisection on
    the filler count with the server's tokenizer. Returns (message, tokens)."""
    _, msg, n = size_case(tokenize, case, sentences, target_tokens)
    return msg, n


def size_case(tokenize, case, sentences, target_tokens):
    """build_prompt's bisection; returns (filler count, message, tokens)."""
    lo, hi = 0, max(8, target_tokens // 8)
    while tokenize(assemble(case, sentences, hi)) < target_tokens:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tokenize(assemble(case, sentences, mid)) <= target_tokens:
            lo = mid
        else:
            hi = mid
    msg = assemble(case, sentences, lo)
    return lo, msg, tokenize(msg)


def filler_digest(sentences):
    """What a cached filler count depends on besides the tokenizer: the filler sentences."""
    return hashlib.sha256("\n".join(sentences).encode()).hexdigest()[:16]


def sized_prompts(tokenize, cases, sentences, sizes_path=None, model=""):
    """(message, tokens) per (task, length, case). With sizes_path, each case's filler count is
    looked up there (one tokenize to confirm it still fits, instead of a bisection of ~17), and the
    file is written back with every count; it is used only for the same model file name and the same
    filler text (on another host the license texts may differ)."""
    digest = filler_digest(sentences)
    known = {}
    if sizes_path and Path(sizes_path).exists():
        data = json.loads(Path(sizes_path).read_text())
        if data.get("model") == model and data.get("filler") == digest:
            known = data["fillers"]
        else:
            print(f"{sizes_path}: another model or filler text; sizing again", file=sys.stderr)
    out, fillers = [], {}
    for task, L, case in cases:
        key = f"{task}/{L}/{case['seed']}"
        msg = None
        if key in known:
            msg = assemble(case, sentences, known[key])
            n = tokenize(msg)
            if n > L:
                msg = None
        if msg is None:
            fillers[key], msg, n = size_case(tokenize, case, sentences, L)
        else:
            fillers[key] = known[key]
        out.append((msg, n))
    if sizes_path:
        Path(sizes_path).write_text(json.dumps(dict(model=model, filler=digest, fillers=fillers), indent=0))
    return out


def parse_mode(mode):
    """Server flags of a mode: keys_values[@schedule][|more flags]."""
    mode, _, more = mode.partition("|")
    keys_values, _, schedule = mode.partition("@")
    key, _, value = keys_values.partition("_")
    if not key or not value:
        raise SystemExit(f"bad mode {mode!r}: keys_values[@schedule][|flags]")
    flags = ["--key-mode", key, "--value-mode", value]
    if schedule:
        flags += ["--svdq-schedule", schedule]
    return flags + more.split()


def server_flags(mode, a):
    """Every flag of one mode's server: the shared ones first, the mode's own last, so that a
    mode's flag wins where both set it (the server takes a repeated flag's last value)."""
    return ["--kv-cache-bytes", a.kv_cache_bytes, "--max-running", str(a.concurrency), *a.server_flags.split(),
            *parse_mode(mode)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--cases", type=int, default=10, help="cases per task and length")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--modes", default=DEFAULT_MODES,
                    help="modes separated by ';' (schedules contain commas)")
    ap.add_argument("--kv-cache-bytes", default="1G")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight (the server's --max-running)")
    ap.add_argument("--server-flags", default="", help="more flags for every server, space separated")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "eval_quality_cpu.json"))
    ap.add_argument("--sizes", default=None,
                    help="JSON of each case's filler count: read where it matches, written back (saves the sizing "
                         "bisection, minutes of a GPU host's time at 32k)")
    ap.add_argument("--filler-dir", default=str(ROOT / "bench" / "data" / "filler"),
                    help="the filler texts (default: the copies of Debian 12's license texts in the repository, "
                         "so that every host builds the same prompts)")
    ap.add_argument("--size-only", action="store_true", help="size the prompts into --sizes with the first mode's server, then stop")
    a = ap.parse_args()
    if a.size_only and not a.sizes:
        raise SystemExit("--size-only needs --sizes")
    import conftest
    from conftest import Server
    import grpc
    pb, pb_grpc = conftest.generate_stubs()

    lengths = [int(x) for x in a.lengths.split(",")]
    tasks = a.tasks.split(",")
    for t in tasks:
        if t not in TASKS:
            raise SystemExit(f"unknown task {t}; tasks: {', '.join(TASKS)}")
    sentences = filler_sentences(a.filler_dir)
    cases = [(t, L, make_case(t, 1000 * L + i)) for t in tasks for L in lengths for i in range(a.cases)]

    def chat(msg):
        return pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=msg)])

    meta = dict(date=datetime.date.today().isoformat(), host=platform.node(), device=a.device, model=Path(a.model).name,
                lengths=lengths, cases_per_task_and_length=a.cases, tasks=tasks, max_tokens=a.max_tokens,
                command=" ".join(sys.argv))
    if a.device != "cpu":
        meta["gpu"] = gpu_name()
    rows, prompts, refused = [], None, {}
    for mode in a.modes.split(";"):
        s = Server(Path(a.model), a.device, extra=server_flags(mode, a))
        try:
            try:
                s.wait_ready(timeout=900)
            except RuntimeError as e:
                if s.proc.poll() is None:  # still running but never ready: not a refusal
                    raise
                # The server exited at start (it refused this mode's flags, or could not load):
                # its own last message says why (a flag error is followed by the usage text).
                said = [l for l in s.output().splitlines() if l.startswith("svdq-server:")]
                refused[mode] = said[-1] if said else str(e).splitlines()[-1]
                print(f"mode {mode} refused: {refused[mode]}", file=sys.stderr, flush=True)
                meta["refused"] = refused
                continue
            with grpc.insecure_channel(s.addr, options=[("grpc.max_receive_message_length", 64 << 20),
                                                        ("grpc.max_send_message_length", 64 << 20)]) as ch:
                stub = pb_grpc.GenerationStub(ch)
                info = stub.GetServerInfo(pb.GetServerInfoRequest())
                if prompts is None:  # the same prompts for every mode, sized once
                    def tokenize(msg):
                        return len(stub.Tokenize(pb.TokenizeRequest(chat=chat(msg)), timeout=120).ids)
                    prompts = sized_prompts(tokenize, cases, sentences, a.sizes, Path(a.model).name)
                    if a.size_only:
                        print(f"sized {len(prompts)} prompts into {a.sizes}")
                        return
                def answer(msg):
                    text = ""
                    for r in stub.Generate(pb.GenerateRequest(chat=chat(msg), max_tokens=a.max_tokens), timeout=3600):
                        if r.HasField("chunk"):
                            text += r.chunk.text
                    return text
                started = time.time()
                with ThreadPoolExecutor(max_workers=a.concurrency) as pool:
                    answers = list(pool.map(answer, [msg for msg, _ in prompts]))
                seconds = time.time() - started
                results = {}
                for (task, L, case), (msg, ntok), text in zip(cases, prompts, answers):
                    results.setdefault((task, L), []).append((score(case, text), ntok, text))
        finally:
            s.stop()
        for (task, L), res in sorted(results.items()):
            row = dict(mode=mode, key_mode=info.key_mode, value_mode=info.value_mode,
                       key_compression=info.key_compression_ratio, sparse_budget=info.sparse_budget,
                       attention_key_compression=info.attention_key_compression, mode_seconds=round(seconds, 1),
                       task=task, length=L, cases=len(res),
                       accuracy=sum(r[0] for r in res) / len(res), mean_prompt_tokens=sum(r[1] for r in res) / len(res),
                       scores=[r[0] for r in res],  # per case, in case order: paired comparisons across modes
                       answers=[r[2] for r in res[:3]])
            rows.append(row)
            print({k: v for k, v in row.items() if k != "answers"}, file=sys.stderr, flush=True)
        Path(a.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    Path(a.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"{Path(a.model).name}, {a.cases} cases per task and length, device {a.device}"
          f"{' (' + meta['gpu'] + ')' if meta.get('gpu') else ''}\n")
    for mode, why in refused.items():
        print(f"refused at start, not measured: {mode}: {why}\n")
    if not rows:
        raise SystemExit("no mode was measured")
    print("| mode | key compression | attention key compression | task | " + " | ".join(f"{L} tokens" for L in lengths) + " |")
    print("|---|---:|---:|---|" + "---:|" * len(lengths))
    for mode in a.modes.split(";"):
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        shown = mode.replace("|", "\\|")  # a mode's own flags follow a |, which would split the Markdown cell
        head = f"| {shown} | {mine[0]['key_compression']:.2f}x | {mine[0]['attention_key_compression']:.1f}x"
        for task in tasks:
            rs = {r["length"]: r for r in mine if r["task"] == task}
            cells = " | ".join(f"{100 * rs[L]['accuracy']:.0f}%" if L in rs else "-" for L in lengths)
            print(f"{head} | {task} | {cells} |")
        cells = []
        for L in lengths:  # every task's cases at L: mean and the 95% interval of the case count
            rs = [r for r in mine if r["length"] == L]
            n = sum(r["cases"] for r in rs)
            acc = sum(r["accuracy"] * r["cases"] for r in rs) / n if n else float("nan")
            lo, hi = wilson(acc, n)
            cells.append(f"{100 * acc:.1f}% [{100 * lo:.0f}-{100 * hi:.0f}]" if n else "-")
        print(f"{head} | all (95% interval) | {' | '.join(cells)} |")


def gpu_name():
    """The first GPU's name as nvidia-smi reports it, or None where it cannot be asked."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def wilson(p, n, z=1.96):
    """The 95% Wilson score interval of a proportion p over n cases (partial scores count as
    fractions of a case)."""
    if n == 0:
        return float("nan"), float("nan")
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / d
    return max(0.0, c - h), min(1.0, c + h)

if __name__ == "__main__":
    main()
