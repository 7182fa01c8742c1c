"""Data: the procedural shapes world and its oracle, recorded Atari episodes, codecs and text encoders, video files.

* ``shapes``: ``ShapesConfig``, scenes, simulator (incl. agent), renderer, captions, ``ShapesDataset``.
* ``oracle``: ``ShapesOracle``, the analytic detector and metrics of shapes-world videos.
* ``codec``: the ``VideoCodec`` interface; ``PixelCodec``, pixels <-> latents by pixel-unshuffle.
* ``text``: the ``TextEncoder`` interface; ``ToyTokenizer``, ``ToyTextEncoder`` (UMT5-shaped outputs).
* ``wan_vae``: ``WanVAECodec``, Wan2.1's VAE (diffusers' ``AutoencoderKLWan``), and its streaming decoder.
* ``umt5``: ``UMT5TextEncoder``, Wan2.1's text encoder (transformers' ``UMT5EncoderModel``).
* ``components``: ``make_codec`` and ``make_text_encoder``, the one factory, from a checkpoint's specs.
* ``video``: float <-> uint8 conversions, mp4 / GIF writers, grids.
* ``source``: the training data sources, ``ShapesSource`` and ``AtariSource`` (``make_source``).
* ``shards``: recorded episodes in webdataset tar shards and their ``Manifest``.
* ``atari``: episodes from the Atari emulator (ale-py, the optional ``atari`` extra) and ``collect``.
"""

from causal_rcm.data.codec import PixelCodec
from causal_rcm.data.oracle import DriftReport, OracleReport, ShapesOracle, VideoEvaluation
from causal_rcm.data.shapes import ACTIONS, Scene, Shape, ShapesConfig, ShapesDataset, caption, collate, parse_caption, render
from causal_rcm.data.text import ToyTextEncoder, ToyTokenizer
from causal_rcm.data.video import from_uint8, grid, to_uint8, write_gif, write_mp4

__all__ = [
    "ACTIONS",
    "DriftReport",
    "OracleReport",
    "PixelCodec",
    "Scene",
    "Shape",
    "ShapesConfig",
    "ShapesDataset",
    "ShapesOracle",
    "ToyTextEncoder",
    "ToyTokenizer",
    "VideoEvaluation",
    "caption",
    "collate",
    "from_uint8",
    "grid",
    "parse_caption",
    "render",
    "to_uint8",
    "write_gif",
    "write_mp4",
]
