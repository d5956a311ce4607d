"""CPU threads for inference: a batch of independent items (windows, slices) split over the torch threads."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch


def split_across_threads(net: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """On a CPU with N > 1 torch threads, run a batch of windows or slices as up to N chunks of at least two items side
    by side, each on N // chunks threads, instead of every convolution split N ways: the generator's thin
    full-resolution layers are memory-bound and gain little from a second intra-op thread, whole windows in parallel
    do (and a busy core slows one chunk, not every layer's barrier). Chunks keep two items or more because PyTorch
    runs a batch of one 3D input with few channels on its slow im2col convolution instead of oneDNN's (RESULTS.md §2).
    Same arithmetic per item, so the output equals the plain call's up to
    float rounding. Written by hand: neither PyTorch nor MONAI's sliding_window_inference run a batch this way."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        chunks = min(threads, batch.shape[0] // 2)
        if batch.device.type != "cpu" or chunks < 2:
            return net(batch)

        def one(chunk: torch.Tensor) -> torch.Tensor:
            torch.set_num_threads(threads // chunks)  # this worker's share of the threads
            with torch.no_grad():
                return net(chunk)

        try:
            with ThreadPoolExecutor(chunks) as pool:
                return torch.cat(list(pool.map(one, batch.tensor_split(chunks))))
        finally:
            torch.set_num_threads(threads)

    return run
