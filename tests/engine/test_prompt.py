"""Prompt assembly: FIM formats per family, the token budget and its line cuts, bad input, token healing."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from greentrack.engine.prompt import (
    FIM_FORMATS,
    Healer,
    PromptBuilder,
    assemble_fim_text,
    detect_fim,
    heal_split,
)
from greentrack.errors import BadInput

FAMILY_TOKENS = {
    "qwen2.5-coder": ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    "starcoder": ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    "deepseek-coder": ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    "codellama": ("▁<PRE>", "▁<SUF>", "▁<MID>"),
}
SMOL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<file_sep>", "<filename>"]


class CharTokenizer:
    """One token per character (id = code point + 1000); counts every character it is asked to encode."""

    def __init__(self) -> None:
        self.encoded_chars = 0

    def encode(self, text: str) -> list[int]:
        self.encoded_chars += len(text)
        return [ord(c) + 1000 for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i - 1000) for i in ids)


def vocab_for(family: str | None) -> dict[str, int]:
    names = [*SMOL_SPECIALS, *(FAMILY_TOKENS[family] if family else ())]
    return {n: i for i, n in enumerate(names)}


@pytest.mark.parametrize("family", list(FAMILY_TOKENS))
def test_detect_fim_per_family(family: str) -> None:
    fmt = detect_fim(vocab_for(family))
    assert fmt is not None and fmt.family == family
    assert (fmt.prefix, fmt.suffix, fmt.middle) == FAMILY_TOKENS[family]


def test_embedded_like_vocabulary_has_no_fim() -> None:
    assert detect_fim(vocab_for(None)) is None
    assert detect_fim(["<fim_prefix>", "<fim_suffix>"]) is None  # all three are needed


def test_fim_text_layouts() -> None:
    by = {f.family: f for f in FIM_FORMATS}
    assert assemble_fim_text(by["qwen2.5-coder"], "a = ", "\nb") == "<|fim_prefix|>a = <|fim_suffix|>\nb<|fim_middle|>"
    assert assemble_fim_text(by["starcoder"], "p", "s") == "<fim_prefix>p<fim_suffix>s<fim_middle>"
    assert assemble_fim_text(by["deepseek-coder"], "p", "s") == "<｜fim▁begin｜>p<｜fim▁hole｜>s<｜fim▁end｜>"
    assert assemble_fim_text(by["codellama"], "p", "s") == "<PRE> p <SUF>s <MID>"


@pytest.mark.parametrize("family", list(FAMILY_TOKENS))
def test_fim_prompt_ids_in_psm_order(family: str) -> None:
    vocab = vocab_for(family)
    b = PromptBuilder(CharTokenizer(), vocab, healing=False)
    doc = "def f(x):\n    return x\n"
    p = b.build(doc, doc.index("return"), 64)
    pre, suf, mid = (vocab[t] for t in FAMILY_TOKENS[family])
    tok = CharTokenizer()
    assert p.ids == [pre, *tok.encode("def f(x):\n    "), suf, *tok.encode("return x\n"), mid]
    assert p.fim is not None and p.fim.family == family


def test_prefix_only_prompt_without_fim() -> None:
    b = PromptBuilder(CharTokenizer(), vocab_for(None), healing=False)
    doc = "import os\nprint(os.getcwd())\n"
    p = b.build(doc, 10, 64)
    assert p.fim is None and p.ids == CharTokenizer().encode("import os\n")
    assert p.window.suffix == ""  # no suffix budget without FIM


def test_budget_split_and_line_cuts() -> None:
    lines = [f"line{i:03d} = {i}\n" for i in range(200)]  # 14 chars per line
    doc = "".join(lines)
    cursor = doc.index("line100")
    b = PromptBuilder(CharTokenizer(), vocab_for("qwen2.5-coder"), healing=False, headroom=0)
    p = b.build(doc, cursor, 200)
    w = p.window
    assert w.prefix_tokens + w.suffix_tokens <= 200
    assert w.suffix_tokens <= 50 and w.suffix_tokens > 30  # ~25% of the budget
    assert w.prefix.startswith("line") and w.prefix.endswith("\n")  # whole lines only
    assert w.suffix.endswith("\n") and doc[w.prefix_start : cursor] == w.prefix
    assert w.prefix_tokens > 140  # the rest of the budget


def test_suffix_leftover_goes_to_prefix() -> None:
    doc = "x = 1\n" * 100
    b = PromptBuilder(CharTokenizer(), vocab_for("starcoder"), healing=False, headroom=0)
    p = b.build(doc, len(doc), 120)
    assert p.window.suffix_tokens == 0 and p.window.prefix_tokens > 100


def test_huge_document_only_window_tokenized() -> None:
    doc = "value = compute(value) + 1\n" * 200_000  # 5.4 MB
    tok = CharTokenizer()
    b = PromptBuilder(tok, vocab_for("qwen2.5-coder"), healing=False)
    p = b.build(doc, len(doc) // 2, 1024)
    assert len(p.ids) <= 1024 + 3
    assert tok.encoded_chars < 200_000  # never the whole file


def test_huge_single_line_is_cut_by_characters() -> None:
    doc = "a" * 3_000_000
    b = PromptBuilder(CharTokenizer(), vocab_for(None), healing=False)
    p = b.build(doc, 2_000_000, 256)
    assert 0 < len(p.ids) <= 256


@pytest.mark.parametrize(
    ("doc", "offset", "message"),
    [
        ("abc", 4, "outside"),
        ("abc", -1, "outside"),
        ("ab\x00cd", 2, "binary"),
        ("", 0, "empty"),
        ("   \n  ", 6, "empty"),
        ("x = '\udcff'\n", 5, "undecodable"),
    ],
)
def test_bad_input(doc: str, offset: int, message: str) -> None:
    b = PromptBuilder(CharTokenizer(), vocab_for(None))
    with pytest.raises(BadInput, match=message):
        b.build(doc, offset, 64)


class WordTokenizer:
    """Tokens: runs of spaces, words, single other characters (like BPE on code)."""

    def __init__(self) -> None:
        self.pieces: list[str] = []

    def _id(self, piece: str) -> int:
        if piece not in self.pieces:
            self.pieces.append(piece)
        return self.pieces.index(piece)

    def encode(self, text: str) -> list[int]:
        import re

        return [self._id(m) for m in re.findall(r" ?\w+| +|\n|.", text)]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.pieces[i] for i in ids)


def test_heal_split_backs_off_partial_word_and_indentation() -> None:
    tok = WordTokenizer()
    ids = tok.encode("def f():\n    retu")
    assert tok.decode(ids[-heal_split(ids, tok.decode, "def f():\n    retu") :]) == "retu"  # the partial word
    ids = tok.encode("x = self.va")
    assert tok.decode(ids[-heal_split(ids, tok.decode, "x = self.va") :]) == "va"
    ids = tok.encode("def f():\n    ")
    k = heal_split(ids, tok.decode, "def f():\n    ")
    assert k >= 1 and tok.decode(ids[-k:]).endswith("    ")
    assert heal_split(tok.encode("x = 1\n"), tok.decode, "x = 1\n") == 0  # a line end: nothing to heal


def test_prompt_records_heal_text_and_drops_it_from_ids() -> None:
    tok = WordTokenizer()
    b = PromptBuilder(tok, vocab_for(None))
    p = b.build("import os\nos.getc", len("import os\nos.getc"), 64)
    assert p.heal_text == "getc" and tok.decode(p.ids) == "import os\nos."


def test_healer_allows_only_tokens_that_respell_the_removed_text() -> None:
    pieces = [" ret", " return", " retu", "urn", " r", "x", " returned", "<|endoftext|>"]
    h = Healer(pieces, excluded={7})
    allowed = {pieces[i] for i in h.allowed(" retu")}
    assert allowed == {" return", " retu", " returned", " r", " ret"}
    assert Healer.advance(" retu", " ret") == "u"
    assert Healer.advance(" retu", " return") == ""


def test_window_start_stays_put_while_typing() -> None:
    doc = "".join(f"line{i:03d} = {i}\n" for i in range(100))  # 1400 chars
    b = PromptBuilder(CharTokenizer(), vocab_for(None), healing=False)
    first = b.build(doc, len(doc), 400)
    assert first.window.prefix_tokens <= 400 * 0.8 + 14  # re-cut leaves headroom for typing
    typed = doc + "line100 = "
    again = b.build(typed, len(typed), 400, prefer_start=first.window.prefix_start)
    assert again.window.prefix_start == first.window.prefix_start  # same first tokens: KV reuse keeps working
    assert again.ids[: len(first.ids)] == first.ids
    without_hint = b.build(typed, len(typed), 400)
    assert without_hint.window.prefix_start > first.window.prefix_start  # a plain cut slides with the cursor
