"""A score file seen as a fairseq indexed dataset: item i = scores of sequence i."""
import numpy as np
import torch
from fairseq.data import FairseqDataset


class ScoreDataset(FairseqDataset):
    def __init__(self, score_file, sizes):
        self.scores = score_file.scores
        self._sizes = np.asarray(sizes, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self._sizes)])

    def __getitem__(self, index):
        start, end = self.offsets[index], self.offsets[index + 1]
        return torch.from_numpy(np.array(self.scores[start:end], dtype=np.float32))

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
