"""Pretrained Hugging Face transformers: per-block feature matrices on real text, offline.

Needs the optional ``hf`` extra (``transformers``, ``gguf``, ``accelerate``); nothing here imports
``transformers`` before a model is loaded, and the core of nfm never imports this package.

==========================  =====================================================================
``nfm.hf.loaders``          load ``minilm``, ``smollm2``, a ``save_pretrained`` folder or a
                            ``.gguf`` file from local files only
``nfm.hf.corpus``           the offline text (standard-library docstrings) and fixed-length token
                            windows without padding
``nfm.hf.outputs``          :class:`~nfm.hf.outputs.SelectedOutput`: one field of a
                            ``ModelOutput`` at chosen positions, as a ``(batch, ...)`` tensor
``nfm.hf.taps``             the AGOP of an input shared by several projections (q, k, v)
``nfm.hf.blocks``           where each block's attention and MLP projections are, by family
``nfm.hf.analysis``         :func:`~nfm.hf.analysis.analyze_blocks`: per-block AGOP, NFM, NFA
                            correlation and spectra, against null models
``nfm.hf.plots``            the figures of a per-block analysis
``nfm.hf.job``              ``nfm analyze --hf``: the report
==========================  =====================================================================
"""
