"""Shared text-test data: hard strings and a seeded fuzz corpus."""

import numpy as np

HARD_STRINGS = [
    "", "   ", "The food was NOT good!!!", "Crème brûlée, naïve café — déjà vu.",
    "東京の天気は晴れです。你好，世界！", "I ❤️ it 😀👍🏽 👨‍👩‍👧 🇫🇷", "wow?!?!... ---- ((()))",
    "x" * 150, "supercalifragilisticexpialidocious" * 3, "İstanbul STRASSE straße ﬁne Ｆｕｌｌ",
    "tab\there\nnew line\r\nzero\u200bwidth soft\u00adhyphen nbsp\u00a0space",
    "Ελληνικά Кириллица العربية עברית 한국어", "e\u0301 combining a\u0308",
    " ".join(["word"] * 200),
]

_POOL = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 4 + list(
    " \t\n\r\x0b\x0c!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ééñüßİıçÅøœæ"
    "\u0301\u0308\u00a0\u200b\u00ad\u200d\ufe0f\u3000中文字東京한국어ΑβΓдЖЯ"
    "ﬁＦｕ½²…—–«»¿¡😀👍🏽❤\U0001f1eb\u202e\u0000\u007f\u2028\uff01")


def fuzz_corpus(n: int, seed: int = 0) -> list[str]:
    """Seeded random strings over letters, punctuation, whitespace/control/format
    characters, accents, CJK, emoji (with ZWJ and variation selectors) and more."""
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(_POOL, size=int(rng.integers(0, 60)))) for _ in range(n)]
