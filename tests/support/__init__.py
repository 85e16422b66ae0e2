"""Test support shared by the tests and the benchmarks (never imported by se_fairseq):
corpora and tiny checkpoints (``fairseq_data``), the option-rule table (``option_rules``),
tiny Hugging Face tokenizers (``hf_tokenizers``), the devices a test runs on
(``devices``) and frozen reference algorithms (``frozen``)."""
