from kdl.models.rnn.rnn import greedy_decode, rnn, seq2seq

__all__ = ["greedy_decode", "rnn", "seq2seq"]
