"""Stop rules: when a suggestion is complete, and how its text is cleaned before it is shown.

Backend-independent (transformers and vLLM use it): pure functions on strings and token ids. Stopping early
is the cheapest energy saving there is: Solovyeva & Castor (arXiv 2602.05712) find code models "babble" far
past what is needed, and suppressing it saves 44–89% of the energy. The rules:

- **line** mode (text after the cursor on its line, or non-blank text before it): stop at the end of the line.
- **block** mode (the cursor line is empty after a block opener such as ``:`` or ``{``, or the cursor ends
  an opener line): stop at a line that dedents to or below the opener's indentation, at a repeated line, at
  a line that repeats what already follows the cursor, at two blank lines.
- always: end-of-text and chat tokens, code fences, the max-token and max-time budgets.

``clean_completion`` strips chat tokens and fences and removes text that duplicates what already follows the
cursor (suffix de-duplication).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Mode = Literal["line", "block"]
#: Why a stop rule ended a suggestion (``check_stop``).
StopRuleReason = Literal["stop_token", "fence", "newline", "blank_lines", "dedent", "suffix", "repeat"]
#: Which budget ended it (``budget_stop``).
BudgetReason = Literal["max_tokens", "max_time"]

#: End-of-text and chat-format strings of the families we support; any of them in the output ends it.
STOP_STRINGS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>",
    "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>",
    "<fim_pad>", "<file_sep>", "<filename>", "<reponame>", "<repo_name>", "<|EOT|>", "<｜end▁of▁sentence｜>",
    "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<EOT>", "</s>", "<|eot_id|>", "<|end_of_text|>",
)
BLOCK_OPENERS: tuple[str, ...] = (":", "{", "(", "[", "=>", "->", " do", " then", "\\")
CLOSERS = frozenset(")]}>'\"`;,")
FENCE = "```"


def stop_token_ids(vocab: Mapping[str, int], eos_ids: Iterable[int] = ()) -> set[int]:
    """Token ids that end generation: the model's EOS ids and every ``STOP_STRINGS`` token in ``vocab``."""
    ids = {int(i) for i in eos_ids}
    ids.update(vocab[s] for s in STOP_STRINGS if s in vocab)
    ids.update(vocab[s] for s in ("▁<EOT>", "▁<PRE>", "▁<SUF>", "▁<MID>") if s in vocab)
    return ids


def _indent(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


def _ends_with_opener(line: str) -> bool:
    stripped = line.rstrip()
    if not stripped:
        return False
    code = stripped.split(" #", 1)[0].rstrip() if " #" in stripped else stripped
    return code.endswith(BLOCK_OPENERS)


@dataclass(frozen=True)
class StopContext:
    """What the rules need to know about the cursor's surroundings (computed once per request)."""

    mode: Mode
    line_before: str  # text of the cursor line before the cursor
    line_after: str  # text of the cursor line after the cursor
    base_indent: int  # block mode: a line indented at or below this ends the block
    opener_is_cursor_line: bool
    suffix: str  # the text after the cursor (window), for de-duplication

    @property
    def next_suffix_lines(self) -> list[str]:
        """The non-empty lines after the cursor line, stripped (at most 5)."""
        rest = self.suffix.split("\n", 1)[1] if "\n" in self.suffix else ""
        return [ln.strip() for ln in rest.split("\n") if ln.strip()][:5]


def stop_context(prefix: str, suffix: str) -> StopContext:
    """Pick line or block mode from the text around the cursor (see the module docstring)."""
    nl = prefix.rfind("\n")
    line_before = prefix[nl + 1 :]
    line_after = suffix.split("\n", 1)[0]
    if line_after.strip():
        return StopContext("line", line_before, line_after, 0, False, suffix)
    if line_before.strip():
        if _ends_with_opener(line_before):
            return StopContext("block", line_before, line_after, _indent(line_before), True, suffix)
        return StopContext("line", line_before, line_after, 0, False, suffix)
    previous = ""
    for ln in reversed(prefix[: max(nl, 0)].split("\n")):
        if ln.strip():
            previous = ln
            break
    if previous and _ends_with_opener(previous):
        return StopContext("block", line_before, line_after, _indent(previous), False, suffix)
    return StopContext("line", line_before, line_after, 0, False, suffix)


@dataclass(frozen=True)
class StopDecision:
    """Generation should end; ``text`` is what to keep of it."""

    text: str
    reason: StopRuleReason


def _cut_at_stop_string(text: str) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in STOP_STRINGS) if i != -1), default=-1)
    return (text[:cut], True) if cut != -1 else (text, False)


def check_stop(text: str, ctx: StopContext) -> StopDecision | None:
    """Decide, after each token, whether ``text`` (everything generated so far, healing removed) is complete.

    Steps: a stop string or a fence at a line start ends any mode; nothing ends before the first newline; line
    mode ends there; block mode walks the complete lines (``_BlockWalk``).
    """
    text, hit = _cut_at_stop_string(text)
    if hit:
        return StopDecision(text, "stop_token")
    fence = _line_start_fence(text)
    if fence != -1:
        return StopDecision(text[:fence], "fence")
    if "\n" not in text:
        return None
    complete = text.split("\n")[:-1]  # the last element is the line still being generated
    if ctx.mode == "line":
        return StopDecision(complete[0], "newline")
    return _BlockWalk(ctx).stop(complete)


def _line_start_fence(text: str) -> int:
    """Index of the first code fence if it starts a line, else -1."""
    fence = text.find(FENCE)
    if fence != -1 and (fence == 0 or text[fence - 1] == "\n"):
        return fence
    return -1


class _BlockWalk:
    """Block mode over the complete lines of a suggestion: the lines kept so far, and the first rule that ends it."""

    def __init__(self, ctx: StopContext) -> None:
        self.ctx = ctx
        self.kept: list[str] = []
        self.seen: list[str] = []
        self.suffix_lines = ctx.next_suffix_lines
        self.blank_run = 0

    def stop(self, complete: list[str]) -> StopDecision | None:
        """The decision at the first line that ends the block, keeping the lines before it; None if none does."""
        for i, line in enumerate(complete):
            full = (self.ctx.line_before + line) if i == 0 else line
            stripped = line.strip()
            reason = self._blank_line(line) if not stripped else self._code_line(i, line, full, stripped)
            if reason is not None:
                return StopDecision("\n".join(self.kept).rstrip("\n"), reason)
        return None

    def _blank_line(self, line: str) -> StopRuleReason | None:
        """The second blank line in a row ends the block (once something is kept)."""
        self.blank_run += 1
        if self.blank_run >= 2 and self.kept:
            return "blank_lines"
        self.kept.append(line)
        return None

    def _code_line(self, i: int, line: str, full: str, stripped: str) -> StopRuleReason | None:
        """A non-blank line ends the block by dedenting, by repeating the suffix's next line, or by repeating."""
        self.blank_run = 0
        if self._dedents(i, full):
            if self._closes_block(stripped):
                self.kept.append(line)  # a closing bracket of the block itself
            return "dedent"
        if self.suffix_lines and stripped == self.suffix_lines[0] and len(stripped) > 1:
            return "suffix"
        if self.seen and (full == self.seen[-1] or (len(stripped) > 10 and full in self.seen)):
            return "repeat"
        self.seen.append(full)
        self.kept.append(line)
        return None

    def _dedents(self, i: int, full: str) -> bool:
        """The line is indented at or below the opener (the opener's own cursor line excepted)."""
        return not (i == 0 and self.ctx.opener_is_cursor_line) and _indent(full) <= self.ctx.base_indent

    def _closes_block(self, stripped: str) -> bool:
        """Only closers, and not the closer the text after the cursor already has."""
        return (set(stripped) <= CLOSERS) and (not self.suffix_lines or self.suffix_lines[0] != stripped)


def budget_stop(tokens: int, elapsed_s: float, max_tokens: int, max_time_s: float) -> BudgetReason | None:
    """``max_tokens`` / ``max_time`` when a budget is spent, else None."""
    if tokens >= max_tokens:
        return "max_tokens"
    if max_time_s > 0 and elapsed_s >= max_time_s:
        return "max_time"
    return None


def strip_partial_stop(text: str) -> str:
    """Remove a trailing incomplete stop string (``<|im_e``) left by a budget stop."""
    lt = text.rfind("<")
    if lt != -1 and any(s.startswith(text[lt:]) for s in STOP_STRINGS):
        return text[:lt]
    return text


def _dedup_line(text: str, line_after: str) -> str:
    rest = line_after.strip()
    if not rest:
        return text
    body = text.rstrip()
    if body.endswith(rest):
        return body[: len(body) - len(rest)]
    head = line_after.lstrip()
    for k in range(len(head), 0, -1):
        overlap = head[:k]
        if body.endswith(overlap) and (k >= 3 or set(overlap) <= CLOSERS):
            return body[: len(body) - k]
    return text


def clean_completion(text: str, ctx: StopContext) -> str:
    """Final text to insert: chat tokens and fences removed, trailing blanks dropped, suffix duplicates removed."""
    text, _ = _cut_at_stop_string(text)
    text = strip_partial_stop(text)
    if text.lstrip().startswith(FENCE):  # a fenced answer: keep its body
        body = text.lstrip()[len(FENCE) :]
        text = body.split("\n", 1)[1] if "\n" in body else ""
    fence = text.find(FENCE)
    if fence != -1:
        text = text[:fence]
    if ctx.mode == "line":
        text = text.split("\n", 1)[0] if text.strip() else ""
        text = _dedup_line(text, ctx.line_after).rstrip()
        return text
    lines = text.rstrip().split("\n")
    suffix_lines = ctx.next_suffix_lines
    # drop trailing generated lines that the text after the cursor already has, in order
    while lines and suffix_lines:
        tail = [ln.strip() for ln in lines if ln.strip()]
        matched = 0
        for n in range(min(len(tail), len(suffix_lines)), 0, -1):
            if tail[-n:] == suffix_lines[:n]:
                matched = n
                break
        if not matched:
            break
        drop = 0
        while matched:
            if lines[-1 - drop].strip():
                matched -= 1
            drop += 1
        lines = lines[: len(lines) - drop]
        break
    return "\n".join(lines).rstrip()
