"""Names both adapters share: batch keys and dataset columns."""

# a dataset column: one float score per input id (NaN = unscored, never selected)
SCORES_COLUMN = "se_scores"
# a dataset column: the example's index in its dataset (a mask is a function of it)
INDEX_COLUMN = "se_index"
# the label of a position that is not predicted (transformers' and PyTorch's convention)
IGNORE_INDEX = -100
# An online batch arrives unmasked with one int64 row seed per row under this key; the
# online step scores and masks it, and drops the key.
ONLINE_SEEDS = "se_online_seeds"
# p_ref at the selected positions (rows in row-major order of the mask), fp32, left in the
# batch by the online step so that the loss does not run the same forward twice.
REF_PROBS = "tls_ref_probs"
