"""Carry ``set_epoch`` into persistent DataLoader workers.

fairseq 0.12 keeps one DataLoader with persistent workers across epochs when a
dataset says its batches can be reused (``can_reuse_epoch_itr_across_epochs``,
true for fairseq's own ``MaskTokensDataset``). Each worker holds a copy of the
dataset made when it started, so ``set_epoch`` in the main process never
reaches it: every epoch after the first is masked (and randomly cropped) like
the first. This wrapper keeps the epoch in shared memory; a worker that finds
it changed replays ``set_epoch`` on its own copy before building an item, so
whatever lies beneath sees the epoch fairseq set, whatever the worker count.
"""

import torch
from fairseq.data import BaseWrapperDataset


class EpochSyncDataset(BaseWrapperDataset):
    def __init__(self, dataset):
        super().__init__(dataset)
        self._shared_epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._applied_epoch = 0

    @property
    def epoch(self):
        return int(self._shared_epoch[0])

    def set_epoch(self, epoch):
        self._shared_epoch[0] = epoch
        self._sync()

    def _sync(self):
        epoch = int(self._shared_epoch[0])
        if epoch != self._applied_epoch:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            self._applied_epoch = epoch

    def __getitem__(self, index):
        self._sync()
        return self.dataset[index]

    def collater(self, samples):
        self._sync()
        return self.dataset.collater(samples)
