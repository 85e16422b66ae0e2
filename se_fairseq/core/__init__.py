"""The framework-neutral core of se-fairseq: torch and numpy only, no fairseq, no transformers.

- ``masking``: scores -> selected positions -> masked input and target (the masker);
- ``options``: the masking and TLS options, their choices and the one validator of their
  rules (each adapter only spells the names its users type);
- ``scores``: the self-questioning formulas (correctness, confidence) over logits in chunks;
- ``tls``: Token-specific Label Smoothing;
- ``online``: the online step (reference forward, scores, selection, p_ref);
- ``job``: the chunked, resumable, sharded scoring job;
- ``files``: atomic writes, sha256;
- ``constants``: the names both adapters share.

The selection operator itself is ``se_fairseq.ops``. The fairseq adapter (``tasks/``,
``criterions/``, ``data/``, ``models/``, ``scoring_job``...) and the transformers adapter
(``hf/``) build on these; neither reaches into the other.
"""
