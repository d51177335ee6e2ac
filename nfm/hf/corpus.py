r"""Real English text that is on every machine: the docstrings of Python's standard library.

Every CPython installation ships the source files of its standard library, and their module,
class and function docstrings are over a hundred thousand words of edited technical English.
:func:`stdlib_docstring_text` reads them from the ``.py`` files with :mod:`ast` (no module is
imported, and ``python -OO``, which strips docstrings from *compiled* code, does not matter) for a
fixed list of modules, in a fixed order. The text depends on the Python version only; its SHA-256
(:func:`text_digest`) goes into every report so that two runs can be compared.

:func:`token_windows` cuts the token stream into ``n`` windows of exactly ``length`` tokens,
special tokens included (``[CLS] ... [SEP]`` for BERT), spread evenly over the text and never
overlapping. There is no padding, so every position of every window is a real token and no
attention mask is needed.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nfm.exceptions import NFMInputError

__all__ = ["STDLIB_MODULES", "stdlib_docstring_text", "text_digest", "token_windows"]

#: The standard-library modules whose docstrings make the corpus, in this order (top-level
#: modules only, so that finding their source imports nothing).
STDLIB_MODULES: tuple[str, ...] = (
    "argparse",
    "asyncio",
    "bisect",
    "calendar",
    "collections",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "doctest",
    "email",
    "enum",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "heapq",
    "hmac",
    "http",
    "imaplib",
    "inspect",
    "ipaddress",
    "json",
    "locale",
    "logging",
    "mailbox",
    "optparse",
    "pathlib",
    "pickle",
    "pdb",
    "poplib",
    "pprint",
    "pydoc",
    "queue",
    "random",
    "shutil",
    "smtplib",
    "socket",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "typing",
    "unittest",
    "urllib",
    "uuid",
    "warnings",
    "zipfile",
)

_WHITESPACE = re.compile(r"[ \t]+")


def _source_files(module: str) -> list[Path]:
    """The ``.py`` files of a top-level stdlib module or package (sorted), without importing."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return []
    origin = Path(spec.origin)
    if origin.name == "__init__.py":  # a package: all its modules, in a fixed order
        return sorted(p for p in origin.parent.rglob("*.py") if "test" not in p.parts)
    return [origin]


def _docstrings(source: str) -> list[str]:
    """Module, class and function docstrings of ``source``, in source order, cleaned."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    nodes = [tree] + [
        node
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    ]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    texts = []
    for node in nodes:
        doc = ast.get_docstring(node, clean=True)
        if not doc:
            continue
        paragraphs = [
            _WHITESPACE.sub(" ", " ".join(line.strip() for line in block.splitlines())).strip()
            for block in doc.split("\n\n")
        ]
        texts.extend(p for p in paragraphs if len(p.split()) >= 4)  # prose, not a signature
    return texts


def stdlib_docstring_text(modules: Sequence[str] = STDLIB_MODULES) -> str:
    """The docstrings of ``modules`` (top-level standard-library names) as one text.

    Paragraphs of fewer than four words are left out; paragraphs are separated by blank lines.

    Raises
    ------
    NFMInputError
        ``modules`` is empty, names a dotted module, or none of them has Python source here.
    """
    modules = tuple(modules)
    if not modules:
        raise NFMInputError("modules must name at least one standard-library module")
    dotted = [m for m in modules if not isinstance(m, str) or "." in m]
    if dotted:
        raise NFMInputError(f"modules must be top-level module names; got {dotted}")
    return _read_docstrings(modules)


@functools.lru_cache(maxsize=4)
def _read_docstrings(modules: tuple[str, ...]) -> str:
    """The text of :func:`stdlib_docstring_text` (cached: the source files do not change)."""
    paragraphs: list[str] = []
    for module in modules:
        for path in _source_files(module):
            paragraphs.extend(_docstrings(path.read_text(encoding="utf-8", errors="replace")))
    if not paragraphs:
        raise NFMInputError(
            f"no Python source with docstrings found for the modules {list(modules[:5])}; this "
            "Python installation does not ship its standard library's .py files"
        )
    return "\n\n".join(paragraphs)


def text_digest(text: str) -> str:
    """SHA-256 of ``text`` (UTF-8), hex: the identity of the corpus a report was made on."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (``[CLS]``, ``[SEP]`` for BERT).

    Read from the tokenizer itself: a word tokenised with and without special tokens.
    """
    probe = "text"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise NFMInputError(
        "the tokenizer does not keep a text's tokens when it adds its special tokens; pass "
        "special_tokens=False"
    )


def token_windows(
    tokenizer: Any,
    text: str,
    *,
    n_windows: int,
    length: int,
    special_tokens: bool = True,
) -> torch.Tensor:
    r"""``n_windows`` windows of exactly ``length`` token ids from ``text``, without padding.

    The text's :math:`P` paragraphs (separated by blank lines) are read from :math:`n`
    evenly spaced starting paragraphs :math:`\lfloor i P / n \rfloor`, :math:`i = 0, \dots,
    n - 1`: from each, consecutive paragraphs are tokenised (no special tokens) until there
    are :math:`m` tokens (``length`` minus the tokenizer's special tokens), and the first
    :math:`m` make the window. The windows spread over the whole text and never overlap.
    With ``special_tokens`` each window gets the tokenizer's own special tokens (``[CLS]``
    and ``[SEP]`` for BERT; none for GPT-2 or SmolLM2's GGUF tokenizer).

    Parameters
    ----------
    tokenizer : transformers tokenizer
        Anything with ``__call__(text, add_special_tokens=...)`` returning ``input_ids``.
    text : str
    n_windows, length : int
        Number of windows and tokens per window (special tokens included).
    special_tokens : bool

    Returns
    -------
    torch.Tensor
        ``(n_windows, length)`` int64 token ids.

    Raises
    ------
    NFMInputError
        Non-positive sizes, a ``length`` that leaves no room for text, or a text too short for
        that many windows without overlap.
    """
    for label, value in (("n_windows", n_windows), ("length", length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise NFMInputError(f"{label} must be a positive int; got {value!r}")
    prefix, suffix = _special_tokens(tokenizer) if special_tokens else ([], [])
    n_special = len(prefix) + len(suffix)
    body = length - n_special
    if body < 1:
        raise NFMInputError(
            f"length={length} leaves no room for text next to the tokenizer's {n_special} "
            "special tokens"
        )
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    starts = [(i * len(paragraphs)) // n_windows for i in range(n_windows)]
    if len(set(starts)) < n_windows:
        raise NFMInputError(
            f"the text has {len(paragraphs)} paragraphs, fewer than n_windows={n_windows}"
        )
    windows = []
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < n_windows else len(paragraphs)
        ids: list[int] = []
        for paragraph in paragraphs[start:stop]:
            ids.extend(tokenizer(paragraph, add_special_tokens=False)["input_ids"])
            if len(ids) >= body:
                break
        if len(ids) < body:
            raise NFMInputError(
                f"window {i} of {n_windows} has only {len(ids)} tokens of text before the next "
                f"window starts (needs {body}); pass fewer windows or a smaller length"
            )
        windows.append(prefix + ids[:body] + suffix)
    return torch.tensor(windows, dtype=torch.int64)
