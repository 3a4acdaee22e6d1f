"""Loading a converted state dict strictly, with one message naming every key that does not fit."""

import torch


def load_state_dict_strictly(
    module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str, problems: list[str] = ()
) -> None:
    """Load `state_dict` into `module` strictly, or raise one `ValueError` naming what does not fit.

    The message is `what` followed by the missing, unexpected and misshapen keys (the first 10 of each, with counts)
    and any `problems` the caller found itself, e.g. "The checkpoint does not fit the CAT-Seg config: missing from
    the checkpoint (1): ['catseg.layers.1.class_aggregation.norm2.bias']".
    """
    expected = module.state_dict()
    found = {
        "missing from the checkpoint": sorted(set(expected) - set(state_dict)),
        "unexpected in the checkpoint": sorted(set(state_dict) - set(expected)),
        "shape mismatches": [
            f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(tensor.shape)}"
            for key, tensor in sorted(expected.items())
            if key in state_dict and state_dict[key].shape != tensor.shape
        ],
    }
    listed = [
        f"{kind} ({len(keys)}): {keys[:10]}" + (" ..." if len(keys) > 10 else "")
        for kind, keys in found.items()
        if keys
    ]
    if listed or problems:
        raise ValueError(f"{what}: " + "; ".join([*listed, *problems]))
    module.load_state_dict(state_dict, strict=True)
