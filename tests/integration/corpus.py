"""A few hundred varied strings for tokenizer parity: ASCII prose, digits, whitespace
runs, accents, CJK, emoji, code, contractions, chat markup, and seeded random Unicode."""
import random

BASE = [
    "Hello, world!", "The quick brown fox jumps over the lazy dog.", "  leading spaces", "trailing spaces   ",
    "multiple   spaces   inside", "tabs\tand\nnewlines\r\n", "\n\n\nthree newlines", "   \n  \t mixed",
    "1234567890", "3.14159 and 2.71828", "Call 555-0199 at 10:30pm", "v1.2.3-rc4", "0x7FFF_FFFF", "½ ¾ ² ³ ٣ ४",
    "café naïve résumé façade", "Ærøskøbing Åland", "Straße groß", "ﬁ ligature", "İstanbul ılık",
    "日本語のテキストです。", "中文分词测试，标点符号！", "한국어 문장입니다", "Привет, мир", "مرحبا بالعالم", "שלום עולם",
    "emoji 🤖🚀🔥 and flags 🇫🇷🇯🇵", "family 👨‍👩‍👧‍👦 zwj", "skin 👍🏽", "math ∑∫√∞ ≠ ≤ ≥",
    "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "<div class=\"x\">&amp;</div>", "SELECT * FROM t WHERE id = 42;", "{\"key\": [1, 2, 3], \"ok\": true}",
    "it's they're we've I'm you'll he'd", "IT'S SHOUTING", "''quoted'' and \"double\"", "don't'll",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>tail",
    "a<|im_end|>b<|im_start|>c", "!!!???...,,,;;;", "-- — – ‐", "$100 €200 £300 ¥400", "@user #tag https://x.y/z?q=1",
    "", " ", "a", "\u00a0non-breaking\u00a0space", "zero\u200bwidth", "\u3000ideographic space",
]


def corpus(n_random=250, seed=7):
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " \t\n  ", ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
        "éèêëàâäôöûüçñÉÀßøåæœ", "日本語中文한국어テキスト漢字", "🤖🚀🔥👍🏽🇫🇷✨", "αβγδεζηθ", "абвгдежз", "٠١٢٣٤٥",
    ]
    out = list(BASE)
    for _ in range(n_random):
        k = rng.randint(1, 40)
        s = "".join(rng.choice(rng.choice(pools)) for _ in range(k))
        if rng.random() < 0.3:
            s = rng.choice(BASE) + s
        out.append(s)
    return out
