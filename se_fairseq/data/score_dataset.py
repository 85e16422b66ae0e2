"""A score file seen as a fairseq indexed dataset: item i = scores of sequence i.

Tokens the file records as unscored (blocks se-score skipped) come out as NaN,
so that they stay recognisable through blocking, cropping and collation; the
collater of SelfEvolutionMaskDataset turns them into "not eligible" before any
score reaches the selection operator (which refuses NaN).
"""

import numpy as np
import torch
from fairseq.data import FairseqDataset


class ScoreDataset(FairseqDataset):
    def __init__(self, score_file, sizes):
        self.scores = score_file.scores
        self._sizes = np.asarray(sizes, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self._sizes)])
        ranges = getattr(score_file, "unscored_ranges", np.zeros((0, 2), dtype=np.int64))
        order = np.argsort(ranges[:, 0], kind="stable")
        self._unscored_starts = ranges[order, 0]
        self._unscored_ends = ranges[order, 1]

    def __getitem__(self, index):
        start, end = self.offsets[index], self.offsets[index + 1]
        item = np.array(self.scores[start:end], dtype=np.float32)
        if len(self._unscored_starts):
            # the ranges (sorted, disjoint) that end after ``start`` and begin before ``end``
            first = np.searchsorted(self._unscored_ends, start, side="right")
            last = np.searchsorted(self._unscored_starts, end, side="left")
            for a, b in zip(self._unscored_starts[first:last], self._unscored_ends[first:last]):
                item[max(a, start) - start : min(b, end) - start] = np.nan
        return torch.from_numpy(item)

    def __len__(self):
        return len(self._sizes)

    @property
    def sizes(self):
        return self._sizes

    def num_tokens(self, index):
        return int(self._sizes[index])

    def size(self, index):
        return int(self._sizes[index])

    @property
    def supports_prefetch(self):
        return False
