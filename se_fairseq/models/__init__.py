"""fairseq models the plugin registers (``--arch hf_bert_base``, ``--arch hf_bert_large``)."""
