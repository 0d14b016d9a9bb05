"""The strings of the tokenizer fixture (imported by tokenizer_fixture.py).

Varied on purpose: prose, code in several languages, scripts with and without spaces
(CJK, Arabic, Devanagari, Thai, Hebrew, Cyrillic, Greek), combining marks (composed and
decomposed), emoji with skin tones, flags and ZWJ sequences, whitespace runs of every
kind, numbers of every length, contractions, chat markup with special tokens, long words
and the empty string. Deterministic: no randomness, so reruns give the same list.
"""

BASE = [
    "",
    " ",
    "  ",
    "\n",
    "\t",
    "\r\n",
    "Hello",
    "Hello world",
    " Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX",
    "tHe QuIcK bRoWn",
    "I'm sure you'll see they've done what we'd said, isn't it? She's here.",
    "I'M SURE YOU'LL SEE THEY'VE DONE IT",
    "don't DON'T Don'T",
    "rock 'n' roll ''quoted'' 'single'",
    "Refusal in language models is mediated by a single direction.",
    "Mechanistic interpretability: sparse autoencoders, superposition, and circuits.",
    "AI safety via debate (Irving et al., 2018) [1]",
    "e-mail: someone@example.org, url: https://example.org/a/b?c=d&e=f#g",
    "C:\\Users\\name\\file.txt",
    "/usr/local/bin/python3 -m pip install --upgrade pip",
    # numbers
    "0",
    "7",
    "42",
    "123",
    "1234",
    "12345",
    "1234567890",
    "3.14159265358979",
    "-273.15",
    "1,000,000",
    "1e-10 6.022e23",
    "0x1F 0b1010 0o777",
    "2024-02-29T13:05:09Z",
    "Version 2.5.1-rc3",
    "In 1969, 600 million people watched.",
    "٠١٢٣٤٥٦٧٨٩ ०१२३ 一二三 ½ ² ⅷ",
    "ABC123def456",
    "v1.2.3",
    # whitespace
    "a  b   c    d",
    "     leading spaces",
    "trailing spaces     ",
    "tabs\tbetween\t\twords",
    "\t\t\tindent",
    "line1\nline2\n\nline4\n\n\n",
    "windows\r\nline\r\nendings\r\n",
    "mixed \t \n \r\n  \t\n",
    "\n\n\n\n\n\n\n\n",
    " " * 17,
    "\t" * 9,
    "x" + " " * 40 + "y",
    "nbsp\u00a0here\u2003em\u2009thin\u3000ideographic",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom",
    "\u2028line sep\u2029para sep\u0085nel\x0bvt\x0cff",
    # code
    "def f(x):\n    return x ** 2\n",
    "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "class Foo(Bar):\n\tdef __init__(self, *args, **kwargs):\n\t\tsuper().__init__(*args, **kwargs)\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
    "impl<'a, T: Clone + Send> Iterator for Foo<'a, T> where T: 'static {}",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * c[i]; }",
    "const add = (a, b) => a + b; // arrow function\nconsole.log(add(1, 2));",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name ORDER BY 2 DESC;",
    "<div class=\"container\"><p id='x'>Hello &amp; welcome</p></div>",
    "{\"key\": [1, 2, {\"nested\": true, \"n\": null}], \"s\": \"\\u00e9\"}",
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
    "#!/usr/bin/env bash\nset -euo pipefail\nfor f in *.txt; do echo \"$f\"; done\n",
    "x = [i for i in range(10) if i % 2 == 0]  # comprehension",
    "public static void main(String[] args) throws IOException {}",
    "a+=1;b-=2;c*=3;d/=4;e%=5;f**=6;g//=7;h<<=1;i>>=2;j&=k|l^m",
    "!= == === !== <= >= => -> :: ... ?? ?. || && ++ --",
    "$$\\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2}$$",
    "| col1 | col2 |\n|------|------|\n| a    | b    |",
    "- [ ] todo\n- [x] done\n* bullet\n1. numbered",
    "```python\nprint('hi')\n```",
    "@decorator\ndef g(): pass",
    "~!@#$%^&*()_+`-={}[]|\\:\";'<>?,./",
    "....!!!!????----____====",
    "''''\"\"\"\"''''",
    # unicode scripts
    "你好，世界！今天天气很好。",
    "我爱自然语言处理和机器学习",
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 텍스트입니다. 안녕하세요!",
    "مرحبا بالعالم! كيف حالك اليوم؟",
    "שלום עולם",
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "สวัสดีชาวโลก",
    "Xin chào thế giới, tiếng Việt có dấu",
    "Ça va? Où est l'hôtel? Naïve façade, coöperate, Zürich, Øresund, Łódź",
    "Straße ß ẞ ﬁ ﬂ ǅ ǈ",
    "e\u0301 a\u0300 o\u0308 n\u0303",
    "\u00e9 \u00e0 \u00f6 \u00f1",
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dalgo",
    "\u0915\u094d\u0937 \u0627\u0644\u0652\u0639\u064e\u0631\u064e\u0628\u0650\u064a\u0651\u064e\u0629",
    "mixed English 中文 العربية русский 日本語 한국어 together",
    "ſ 'ſ İstanbul ı K Å",
    "\U0001d400\U0001d401 \U0001d7d8 \U00010348 \U0002a6d6",
    "\u0000null\u0001ctrl\u001b[31mred\u001b[0m",
    "\ufffd replacement \ufffd",
    # emoji
    "😀",
    "😀😃😄😁",
    "I love 🍕 and 🍣!",
    "👍🏽 👋🏿 🧑🏻‍💻",
    "👨‍👩‍👧‍👦 family",
    "🏳️‍🌈 🏴‍☠️",
    "🇺🇸🇯🇵🇩🇪",
    "❤️ ♥ ☺️ ✔️ ✅ ❌",
    "1️⃣ #️⃣ *️⃣",
    "🤖💬🧠⚡",
    "emoji🙂inside🙃words",
    # chat markup and special tokens
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "text before<|im_end|>text after",
    "<|im_start|><|im_end|><|endoftext|>",
    "<|im_start|>assistant\n",
    " <|im_start|> spaced <|im_end|> ",
    "<|im_start",
    "im_start|>",
    "<|im_end|x",
    "<|IM_END|>",
    "<| im_end |>",
    "<|endoftext|><|endoftext|>",
    "<tool_call>\n{\"name\": \"f\"}\n</tool_call>",
    "<|fim_prefix|>def f(<|fim_suffix|>)\n<|fim_middle|>",
    "<repo_name>overseer<file_sep>src/main.rs",
    "<jupyter_code>print(1)<jupyter_output>1",
    "<s></s><unk><pad>[PAD151665]",
    "<|object_ref_start|>x<|object_ref_end|>",
    # long words and repetition
    "supercalifragilisticexpialidocious",
    "Donaudampfschifffahrtselektrizitätenhauptbetriebswerkbauunterbeamtengesellschaft",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "antidisestablishmentarianism " * 3,
    "a" * 64,
    "ab" * 50,
    "aaaa bbbb cccc dddd",
    "=" * 80,
    "-" * 33 + "\n" + "#" * 20,
    "hahahahahahahahahahahahaha",
    "🙂" * 20,
    "中" * 30,
    "the the the the the the the the",
    "lowercase UPPERCASE CamelCase snake_case kebab-case SCREAMING_SNAKE",
    "getHTTPResponseCode XMLHttpRequest iPhone eBay McDonald's",
]


def cases():
    """BASE plus systematic variants (leading space, newline context, numbers)."""
    out = list(BASE)
    for w in ["word", "123", "Hello", "中文", "😀", "<|im_end|>", "'s", "don't", "x=1"]:
        out += [" " + w, "  " + w, "\n" + w, w + "\n", "\t" + w, w + " ", w + w]
    for n in range(1, 13):
        out.append("".join(str((i * 7 + 3) % 10) for i in range(n)))
        out.append("x" + "9" * n + "y")
    for k in range(1, 9):
        out.append(" " * k + "a")
        out.append("a" + " " * k)
        out.append("a" + "\n" * k + "b")
        out.append(" " * k + "\n" + " " * k + "b")
    seen, uniq = set(), []
    for s in out:
        if s not in seen:
            seen.add(s)
            uniq.append(s)
    return uniq
