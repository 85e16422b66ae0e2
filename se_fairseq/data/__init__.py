"""Datasets and files of the SE data path.

Kept import-light: importing ``se_fairseq.data`` does not import fairseq.
"""
