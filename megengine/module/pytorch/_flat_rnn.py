"""torch RNNs inside a PyTorchModule: flatten_parameters() keeps the memory megengine shares.

On a GPU, ``flatten_parameters()`` of torch's RNN, LSTM and GRU copies their weights into a new
flat buffer for cuDNN and points every weight at it (ATen's ``_cudnn_rnn_flatten_weight``
allocates one, copies, then ``set_``), on every call, also when they are such a buffer's views.
Real code calls it at the top of ``forward`` (a habit from ``nn.DataParallel``), and
``.to()``/``.cuda()`` call it too. A wrapper shares the weights' memory with megengine, so each
such call would end the sharing: megengine's optimizer would go on updating memory torch no
longer reads.

So the wrapper flattens its RNNs once, when it is built and before it mirrors their weights (a
no-op on the CPU, and after ``.to()`` had done it), and notes their addresses; from then on
``flatten_parameters()`` of an RNN whose weights still sit at those addresses has nothing to do
(its weights are that flat buffer's views already) and returns without a copy, in the wrapper's
forward, in a checkpoint's re-run in backward, or called from outside. An RNN whose weights were
moved or replaced since is flattened as torch would.
"""
import weakref

import torch

__all__ = ["flatten_once"]

# torch RNN -> the data pointers of its weights as a wrapper shares them
_shared_at = weakref.WeakKeyDictionary()
_torch_flatten = torch.nn.RNNBase.flatten_parameters


def _addresses(rnn):
    return tuple(w.data_ptr() if isinstance(w, torch.Tensor) else None
                 for w in rnn._flat_weights)


def _flatten_parameters(self):
    shared = _shared_at.get(self)
    if shared is not None and shared == _addresses(self):
        return  # already the flat buffer's views, shared with megengine
    _torch_flatten(self)


_flatten_parameters.__doc__ = _torch_flatten.__doc__


def flatten_once(torch_module, flatten=True):
    """Flatten the RNNs of ``torch_module``'s tree (unless ``flatten`` is False, for a module
    whose memory is shared already: one loaded by pickle) and keep their weights where they
    are from then on."""
    rnns = [m for m in torch_module.modules() if isinstance(m, torch.nn.RNNBase)]
    if not rnns:
        return
    if torch.nn.RNNBase.flatten_parameters is not _flatten_parameters:
        torch.nn.RNNBase.flatten_parameters = _flatten_parameters
    for rnn in rnns:
        if flatten and _shared_at.get(rnn) != _addresses(rnn):  # (another wrapper's: as it is)
            _torch_flatten(rnn)
        _shared_at[rnn] = _addresses(rnn)
