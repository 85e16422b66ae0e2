"""A tiny BertForMaskedLM over a test tokenizer (2 layers, width 32), built from its config:
no weights are downloaded."""

import torch


def tiny_bert(tokenizer, seed=0, dropout=0.1, vocab_size=None):
    """Random weights from ``seed``; ``dropout`` for hidden states and attention
    (BertConfig's default 0.1); ``vocab_size`` defaults to the tokenizer's."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BertForMaskedLM(config)
