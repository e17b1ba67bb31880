#!/usr/bin/env python3
"""Runs the PyTorch peer's trainer (../shared/peer/torch_wgan.py) unchanged and saves its trained
generator's state dict, which the peer itself does not keep.

  python3 scripts/peer_train.py OUT.pt [torch_wgan.py arguments...]

With PEER_INIT=FILE.safetensors (keys "g.*" and "d.*", as `pytorch::generator_state` and
`critic_state` name them), the networks it holds start from those weights instead of the peer's own init;
the peer's RNG stream (batches, noise) is the same as without it. With PEER_RESTREAM=K, torch's
generator is reseeded with K once both networks are built: the same initial networks, other batches
and noise (whether an outcome belongs to the initial draw or to its pairing with the stream).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "peer"))
import torch_wgan  # noqa: E402

out = sys.argv.pop(1)
made = []
init = os.environ.get("PEER_INIT")
restream = os.environ.get("PEER_RESTREAM")


def load_init(module, prefix):
    """Replaces `module`'s state by the `prefix`ed tensors of PEER_INIT (strict); a network
    PEER_INIT has no tensors for keeps the peer's own init."""
    if init:
        from safetensors.torch import load_file

        state = {k[len(prefix):]: v for k, v in load_file(init).items() if k.startswith(prefix)}
        if state:
            module.load_state_dict(state, strict=True)


class G(torch_wgan.G):
    """The peer's G, remembering each instance."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        load_init(self, "g.")
        made.append(self)


class D(torch_wgan.D):
    """The peer's D, from PEER_INIT when given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        load_init(self, "d.")
        if restream is not None:  # D is built after G: the stream from here on is K's
            torch.manual_seed(int(restream))


torch_wgan.G = G
torch_wgan.D = D
torch_wgan.main()
torch.save(made[-1].state_dict(), out)
