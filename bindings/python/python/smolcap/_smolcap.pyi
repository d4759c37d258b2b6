"""Type stubs of the smolcap extension module (re-exported by ``smolcap``)."""

import os
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union, overload

# A path (str or os.PathLike), encoded image bytes (JPEG, PNG, WebP, GIF, BMP, TIFF), a numpy
# uint8 array of shape (H, W) or (H, W, C) with C in 1..4, or a PIL image.
ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, Any]
# An adapter directory, or (directory, scale).
AdapterSpec = Union[str, os.PathLike, Tuple[Union[str, os.PathLike], float]]

__version__: str

class SmolcapError(Exception):
    """Base class of every smolcap error."""

class InvalidArgumentError(SmolcapError):
    """An argument is out of range or inconsistent (status 1)."""
    status: int

class IoError(SmolcapError):
    """A file or directory could not be read or written (status 3)."""
    status: int

class FormatError(SmolcapError):
    """A file is malformed: config, weights, tokenizer, adapter, dataset (status 4)."""
    status: int

class UnsupportedError(SmolcapError):
    """Valid input that this build does not support (status 5)."""
    status: int

class ImageError(SmolcapError):
    """An image could not be decoded or processed (status 6)."""
    status: int

class LimitError(SmolcapError):
    """A limit was exceeded: pixels, bytes, tokens, batch, cache (status 7)."""
    status: int

class DeviceError(SmolcapError):
    """The compute device (or the model hub) failed (status 8)."""
    status: int

class CancelledError(SmolcapError):
    """The operation was cancelled (status 9)."""
    status: int

class PanicError(SmolcapError):
    """smolcap panicked: a bug (status 11)."""
    status: int

class InternalError(SmolcapError):
    """A tensor operation failed (status 13)."""
    status: int

class NumericError(SmolcapError):
    """Training produced non-finite values too many steps in a row (status 14)."""
    status: int

class Caption:
    """One generated caption."""
    text: str
    """The decoded text, special tokens removed (``str(caption)`` strips whitespace)."""
    token_ids: List[int]
    """Generated token ids, a final stop token included."""
    prompt_tokens: int
    num_tiles: int
    preprocess_s: float
    vision_s: float
    prefill_s: float
    decode_s: float

class CaptionNll:
    """Negative log-likelihood of a caption."""
    total: float
    mean: float
    tokens: int

class CaptionStream(Iterator[Any]):
    """Streamed caption text: ``str`` pieces for one image, ``(index, piece)`` for a list."""
    def __iter__(self) -> "CaptionStream": ...
    def __next__(self) -> Any: ...
    def close(self) -> None:
        """Cancels the captioning if it is still running and waits for it."""
    @property
    def captions(self) -> Optional[List[Caption]]:
        """The finished captions once the iterator is exhausted, else None."""

class Model:
    """A loaded SmolVLM / Idefics3 model; thread-safe (several threads may caption at once)."""

    @staticmethod
    def load(
        path: Union[str, os.PathLike],
        *,
        device: str = "cpu",
        dtype: str = "f32",
        revision: Optional[str] = None,
        quantize: Optional[str] = None,
        mmproj: Optional[Union[str, os.PathLike]] = None,
        max_image_pixels: int = 64 * 1024 * 1024,
        max_image_bytes: int = 64 * 1024 * 1024,
    ) -> "Model":
        """Loads a model directory (HF layout), a GGUF pair or a hub repo id.

        A GGUF pair is llama.cpp's text model ``FILE.gguf`` with its vision projector
        (``mmproj``, or the one ``mmproj*.gguf`` beside it), or a directory holding both.

        device: "cpu", "cuda[:N]" or "metal" (when built with that feature); dtype: "f32",
        "bf16" or "f16". ``quantize``: weight storage quantised at load, e.g. "q8_0", "q4_0",
        "q4_k" or "q4_0,vision=q8_0" (docs/QUANTIZATION.md); None keeps the weights as stored.
        """
    @property
    def path(self) -> str: ...
    @overload
    def caption(self, images: Union[List[ImageLike], Tuple[ImageLike, ...]], prompt: Optional[str] = None, *,
                max_new_tokens: int = 48, min_new_tokens: int = 0, num_beams: int = 1,
                length_penalty: float = 1.0, early_stopping: bool = False,
                temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
                repetition_penalty: float = 1.0, adapters: Optional[Sequence[AdapterSpec]] = None,
                batch_size: int = 1, longest_edge: Optional[int] = None, raw_prompt: bool = False,
                max_prompt_tokens: int = 16384, max_kv_cache_bytes: int = 8 << 30,
                max_batch: int = 256) -> List[Caption]: ...
    @overload
    def caption(self, images: ImageLike, prompt: Optional[str] = None, **kwargs: Any) -> Caption:
        """Captions one image (returns a Caption) or a list/tuple of images (returns a list).

        The keywords are the CLI's ``smolcap caption`` flags. Images are captioned
        ``batch_size`` at a time; the result does not depend on the batch size.
        """
    def caption_stream(self, images: Union[ImageLike, List[ImageLike]], prompt: Optional[str] = None,
                       **kwargs: Any) -> CaptionStream:
        """Like ``caption`` but yields text as it is generated. Closing the stream cancels it."""
    def score_caption(self, image: ImageLike, caption: str, prompt: Optional[str] = None, *,
                      adapters: Optional[Sequence[AdapterSpec]] = None,
                      longest_edge: Optional[int] = None, raw_prompt: bool = False,
                      max_prompt_tokens: int = 16384) -> CaptionNll:
        """Negative log-likelihood of ``caption`` (then the stop token) given the image."""

class Trainer:
    """LoRA / QLoRA fine-tuning over a loaded model: one optimizer step per ``step`` call."""

    def __init__(self, model: Model, *, r: int = 16, alpha: float = 32.0, dropout: float = 0.05,
                 use_rslora: bool = False, targets: Optional[List[str]] = None,
                 train_vision: bool = False, train_connector: bool = False, lr: float = 1e-4,
                 weight_decay: float = 0.0, warmup_ratio: float = 0.0, total_steps: int = 1,
                 max_grad_norm: float = 1.0, micro_batch: int = 1, seed: int = 42,
                 qlora: bool = False, gradient_checkpointing: bool = False,
                 prompt: Optional[str] = None, longest_edge: Optional[int] = None,
                 max_seq_len: int = 2048,
                 init_adapter: Optional[Union[str, os.PathLike]] = None) -> None: ...
    def step(self, batch: Sequence[Tuple[ImageLike, str]]) -> dict:
        """One optimizer step over (image, caption) pairs; returns step, loss, grad_norm, lr,
        tokens, examples, rejected, truncated, skipped."""
    def evaluate(self, batch: Sequence[Tuple[ImageLike, str]]) -> Tuple[float, int]:
        """Token-mean loss and token count of the batch, without training."""
    def save_adapter(self, dir: Union[str, os.PathLike]) -> None:
        """Writes the trained factors as a PEFT adapter directory."""
    def save_checkpoint(self, dir: Union[str, os.PathLike], data_state: Any = None) -> None:
        """Writes a checkpoint (with any JSON-serialisable ``data_state``)."""
    @staticmethod
    def resume(model: Model, dir: Union[str, os.PathLike]) -> Tuple["Trainer", Any]:
        """Continues from a checkpoint; returns (trainer, data_state)."""
    @property
    def step_count(self) -> int: ...
    @property
    def trainable_parameters(self) -> int: ...

def score(refs: Sequence[Sequence[str]], cands: Sequence[str], suite: str = "seed") -> dict:
    """Corpus and per-image caption metrics: ``suite="seed"`` (the seed's eval script) or
    ``"coco"`` (pycocoevalcap). Returns {"suite", "images", "corpus", "per_image"}."""

def merge(base: Union[str, os.PathLike], adapters: Sequence[AdapterSpec],
          save_dir: Union[str, os.PathLike], *, max_shard_bytes: int = 5 << 30,
          overwrite: bool = False, revision: Optional[str] = None) -> dict:
    """Merges LoRA adapters into the base weights and writes a complete model directory."""

def shard_of(items: int, shard: str) -> Tuple[int, int]:
    """The (start, stop) range of ``items`` inputs that shard "I/N" takes (the CLI's split)."""
