"""LayerArrays: each layer's tensors land, unchanged, in row `index` of one host array per name."""

import numpy as np
import pytest
import torch

from sinkviz.engine.host_copy import LayerArrays

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_layers_land_in_their_rows_with_their_precision(device):
    gen = torch.Generator().manual_seed(0)
    layers = [{"received": torch.rand(3, 50, generator=gen), "entropy": torch.rand(3, generator=gen).double()}
              for _ in range(4)]
    host = LayerArrays(n_layers=4)
    for index, layer in enumerate(layers):
        host.add(index, {name: t.to(device) for name, t in layer.items()})
    arrays = host.result()
    assert arrays["received"].dtype == np.float32 and arrays["entropy"].dtype == np.float64
    np.testing.assert_array_equal(arrays["received"], torch.stack([x["received"] for x in layers]).numpy())
    np.testing.assert_array_equal(arrays["entropy"], torch.stack([x["entropy"] for x in layers]).numpy())


def test_bf16_is_widened_and_layers_past_the_count_are_dropped():
    host = LayerArrays(n_layers=1)
    host.add(0, {"maps": torch.tensor([0.5, 0.25], dtype=torch.bfloat16)})
    host.add(1, {"maps": torch.tensor([9.0, 9.0], dtype=torch.bfloat16)})
    np.testing.assert_array_equal(host.result()["maps"], np.array([[0.5, 0.25]], dtype=np.float32))


@pytest.mark.parametrize("device", DEVICES)
def test_a_failed_copy_is_raised_not_lost(device):
    host = LayerArrays(n_layers=2)
    host.add(0, {"received": torch.zeros(3, 5, device=device)})
    with pytest.raises(RuntimeError, match="size"):
        host.add(1, {"received": torch.zeros(3, 6, device=device)})
        host.result()
