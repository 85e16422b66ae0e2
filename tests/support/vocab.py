"""A vocabulary for tests of the core, without fairseq: the layout of fairseq's Dictionary
(``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3 are special, each counted once) and what the
masker reads of it (se_fairseq.core.masking.Vocabulary)."""


class CountedVocabulary:
    nspecial = 4

    def __init__(self):
        self.symbols = ["<s>", "<pad>", "</s>", "<unk>"]
        self.count = [1, 1, 1, 1]

    def add_symbol(self, word, n=1):
        self.symbols.append(word)
        self.count.append(n)
        return len(self.symbols) - 1

    def __len__(self):
        return len(self.symbols)

    def bos(self):
        return 0

    def pad(self):
        return 1

    def eos(self):
        return 2
