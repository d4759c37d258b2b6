"""smolcap: caption, fine-tune (LoRA/QLoRA), merge and score SmolVLM (Idefics3) models.

The package wraps the smolcap Rust library (the same code as the ``smolcap`` CLI and the C
API). Every long call releases the GIL; Ctrl-C (``KeyboardInterrupt``) cancels a caption or a
training step cleanly. Errors raise one exception class per status, all subclasses of
``SmolcapError``.

Quick start::

    import smolcap
    model = smolcap.Model.load("HuggingFaceTB/SmolVLM-256M-Instruct")
    print(model.caption("photo.jpg").text)
"""

from ._smolcap import (
    Caption,
    CaptionNll,
    CaptionStream,
    CancelledError,
    DeviceError,
    FormatError,
    ImageError,
    InternalError,
    InvalidArgumentError,
    IoError,
    LimitError,
    Model,
    NumericError,
    PanicError,
    SmolcapError,
    Trainer,
    UnsupportedError,
    __version__,
    merge,
    score,
    shard_of,
)

__all__ = [
    "Caption",
    "CaptionNll",
    "CaptionStream",
    "CancelledError",
    "DeviceError",
    "FormatError",
    "ImageError",
    "InternalError",
    "InvalidArgumentError",
    "IoError",
    "LimitError",
    "Model",
    "NumericError",
    "PanicError",
    "SmolcapError",
    "Trainer",
    "UnsupportedError",
    "__version__",
    "merge",
    "score",
    "shard_of",
]
