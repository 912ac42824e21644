"""The training loop's batches: as loaded, or (``prefetch_mode: cuda``) copied to the GPU on a side stream.

BasicSR's ``CUDAPrefetcher`` is not used: it loads one batch when it is built and throws it away at the first
``reset()``; it loads batch n + 1 before step n is queued, so with 0 loader workers the augmentation draws of a
batch not yet trained on are in every checkpoint's RNG states (a resumed run then crops and flips differently);
and it never records its batches on the stream that reads them, so the caching allocator may give a batch's
memory to the next copy while the GPU still reads it. Here a batch is loaded only when the loop asks for it
(after the previous step was queued, so loading still overlaps the GPU's work when the step has no host sync),
its copy runs on a side stream, and the stream that trains on it waits for that copy and owns the memory.
"""
import torch


class SideStreamCopy:
    """Copies a batch's tensors to a CUDA device on a stream of its own; the current stream waits for it."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)

    def __call__(self, batch):
        with torch.cuda.stream(self.stream):
            moved = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        consumer = torch.cuda.current_stream(self.device)
        consumer.wait_stream(self.stream)
        for value in moved.values():
            if torch.is_tensor(value):
                value.record_stream(consumer)  # freed memory waits for the consumer's work, not only the copy's
        return moved


def epoch_batches(loader, count, copy=None):
    """The first ``count`` batches of a new pass over ``loader``, each loaded when asked for (never one ahead,
    so nothing is loaded past ``count`` and a checkpoint's RNG states hold no draw of an untrained batch),
    passed through ``copy`` (a SideStreamCopy for ``prefetch_mode: cuda``) if given."""
    batches = iter(loader)
    for _ in range(count):
        batch = next(batches)
        yield batch if copy is None else copy(batch)
