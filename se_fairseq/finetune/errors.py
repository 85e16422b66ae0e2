"""The one error the fine-tuning harness raises for bad input."""


class FinetuneError(Exception):
    """Bad input to the harness (task folder, checkpoint, tokenizer files, options):
    the message names the file or option and what is wrong."""
