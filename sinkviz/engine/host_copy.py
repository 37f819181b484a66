"""Each layer's statistics go to host memory while the forward pass runs on.

Each layer's CUDA tensors are copied, as soon as the layer's kernels are done, on a side stream
of their own GPU into row ``index`` of one page-locked buffer per name [n_layers, ...]; the
copies are queued from the thread that runs the forward, so nothing waits for the GPU or for
another thread until ``result()``, which waits once and copies the buffers into the final
arrays. (A worker thread that waited for each layer cost 2-3 ms a layer on the H100 machine,
more than the forward of a short prompt: it fought the forward's thread for the GIL.)
CPU tensors are copied inline.
"""

import numpy as np
import torch


class LayerArrays:
    """Host arrays [n_layers, ...] by name, filled one layer at a time; float32 (float64 for
    float64 tensors). Layers past n_layers are dropped: the caller checks the count."""

    def __init__(self, n_layers: int):
        self.n_layers = n_layers
        self.arrays: dict[str, np.ndarray] = {}
        self._pinned: dict[str, torch.Tensor] = {}                   # [n_layers, ...] page-locked
        self._streams: dict[torch.device, torch.cuda.Stream] = {}    # one side stream per GPU

    def add(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        """Copy one layer's tensors into row ``index``; CUDA ones once the current stream gets there."""
        if index >= self.n_layers:
            return
        device = next(iter(tensors.values())).device
        if device.type != "cuda":
            for name, tensor in tensors.items():
                torch.from_numpy(self._array(name, tensor)[index]).copy_(tensor)
            return
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):   # a copy runs on its source GPU's current stream
            for name, tensor in tensors.items():
                buffer = self._buffer(name, tensor)
                if tensor.dtype != buffer.dtype:
                    tensor = tensor.to(buffer.dtype)
                buffer[index].copy_(tensor, non_blocking=True)
                tensor.record_stream(stream)   # its memory is not reused before the copy ran

    def _buffer(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The page-locked [n_layers, ...] buffer for ``name``, made on first use."""
        if name not in self._pinned:
            dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
            self._pinned[name] = torch.empty((self.n_layers, *tensor.shape), dtype=dtype, pin_memory=True)
        return self._pinned[name]

    def _array(self, name: str, tensor: torch.Tensor) -> np.ndarray:
        """The host array for ``name`` (CPU tensors), made on first use."""
        if name not in self.arrays:
            dtype = np.float64 if tensor.dtype == torch.float64 else np.float32
            self.arrays[name] = np.empty((self.n_layers, *tensor.shape), dtype=dtype)
        return self.arrays[name]

    def result(self) -> dict[str, np.ndarray]:
        """Wait for every copy and return the arrays (the page-locked buffers go back to torch)."""
        self.close()
        for name, buffer in self._pinned.items():
            self.arrays[name] = buffer.numpy().copy()
        self._pinned.clear()
        return self.arrays

    def close(self) -> None:
        """Wait for the copies in flight; safe to call twice."""
        for stream in self._streams.values():
            stream.synchronize()
