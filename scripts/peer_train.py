#!/usr/bin/env python3
"""Runs the PyTorch peer's trainer (../shared/peer/torch_wgan.py) unchanged and saves its trained
generator's state dict, which the peer itself does not keep.

  python3 scripts/peer_train.py OUT.pt [torch_wgan.py arguments...]
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "peer"))
import torch_wgan  # noqa: E402

out = sys.argv.pop(1)
made = []


class G(torch_wgan.G):
    """The peer's G, remembering each instance."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        made.append(self)


torch_wgan.G = G
torch_wgan.main()
torch.save(made[-1].state_dict(), out)
