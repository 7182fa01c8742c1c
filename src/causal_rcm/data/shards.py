"""Recorded episodes in webdataset tar shards, and the manifest that says which shards are whole.

A collection folder (written by ``causal-rcm collect``, :mod:`causal_rcm.data.atari`) holds tar shards of
whole episodes and ``manifest.json``. Each sample of a shard is one episode, under the key ``ep%06d``:

* ``frames.npy``: uint8 ``[T, S, S, 3]``, the observations resized to ``S x S`` RGB;
* ``actions.npy``: int64 ``[T]``; ``actions[t]`` is the action that led from frame ``t - 1`` to frame ``t``
  (the shapes world's convention, so a model sees each frame with the key pressed for it); ``actions[0]``
  is 0 (NOOP), the reset frame having no cause;
* ``rewards.npy``: float32 ``[T]``, the reward of that same step (``rewards[0] = 0``);
* ``meta.json``: ``episode`` (its index in the collection), steps, return, and whether it ended by game over
  or a cap.

The manifest is the only record of which shards are whole: it is rewritten (atomically) after each shard,
so a shard on disk that it does not list was left by a killed run, and is rewritten, never read. Readers
check each shard's size and SHA-256 against it before use. Frames are stored uncompressed so that a reader
maps them straight from the tar (``numpy.memmap``) and reads a window without loading an episode.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from causal_rcm.errors import UserError
from causal_rcm.limits import field_problems
from causal_rcm.models.adapters import write_whole

try:
    import webdataset
except ImportError:  # the optional `atari` extra: only writing shards needs it
    webdataset = None

__all__ = ["MANIFEST", "EnvInfo", "Episode", "Manifest", "MappedTar", "ShardEntry", "ShardReader", "is_whole", "npy", "sha256",
           "write_shard", "write_tar"]

MANIFEST = "manifest.json"
T = TypeVar("T")
FORMAT = 1
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class EnvInfo:
    """The environment that made a collection, as a checkpoint trained on it records it.

    ``fps`` is the agent's rate (one recorded frame per action): the emulator's ``emulator_fps`` divided by
    ``frameskip``. ``repeat_action_probability`` is the emulator's own sticky actions (ALE v5: 0.25): with that
    probability a step repeats the previous action instead of the recorded one."""

    id: str
    num_actions: int
    action_meanings: tuple[str, ...]
    frameskip: int
    repeat_action_probability: float
    emulator_fps: float
    fps: float
    ale_py: str = ""
    gymnasium: str = ""

    @classmethod
    def from_dict(cls, data: Any, where: str) -> EnvInfo:
        """Parse the JSON object of a manifest or a checkpoint; UserError naming ``where`` when it does not fit."""
        if not isinstance(data, dict):
            raise UserError(f"{where}: the env section must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            info = cls(**{k: v for k, v in data.items() if k in names})
            info = dataclasses.replace(info, action_meanings=tuple(str(m) for m in info.action_meanings))
        except TypeError as exc:
            raise UserError(f"{where}: unreadable env section ({exc})") from None
        problems = field_problems(info, "env.")
        if problems:
            raise UserError(f"{where}: " + "; ".join(problems))
        if info.num_actions < 1 or len(info.action_meanings) != info.num_actions or info.fps <= 0 or info.frameskip < 1:
            raise UserError(f"{where}: the env section is inconsistent (actions, meanings, fps or frameskip)")
        return info


@dataclass
class Episode:
    """One recorded episode: ``frames`` uint8 ``[T, S, S, 3]``, ``actions`` int64 ``[T]``, ``rewards`` float32 ``[T]``."""

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    meta: dict[str, Any]


@dataclass(frozen=True)
class ShardEntry:
    """One whole shard in the manifest: ``episodes`` (their indices in the collection), the seed the emulator was
    reset with before the first of them, their frames, the file's size and SHA-256."""

    file: str
    split: str
    episodes: tuple[int, ...]
    emulator_seed: int
    frames: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """``manifest.json`` of a collection folder: the environment, how it was collected, and its whole shards."""

    env: EnvInfo
    frame_size: int
    collection: dict[str, Any]  # the arguments of `collect` (a rerun with other ones is refused)
    shards: list[ShardEntry] = field(default_factory=list)
    format: int = FORMAT

    def split(self, name: str) -> list[ShardEntry]:
        return [s for s in self.shards if s.split == name]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, folder: Path) -> None:
        """Replace ``folder/manifest.json`` whole (temp file, fsync, rename)."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        write_whole(folder / MANIFEST, lambda tmp: tmp.write_text(text))

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        """The manifest of ``folder``; one-line UserError when it is missing or unreadable."""

        def parse(data: dict, path: Path) -> Manifest:
            shards = [ShardEntry(**{**s, "episodes": tuple(s["episodes"])}) for s in data["shards"]]
            bad = [s.file for s in shards if s.split not in SPLITS]
            if bad:
                raise UserError(f"{path}: shard {bad[0]} has a split other than {' or '.join(SPLITS)}")
            return cls(EnvInfo.from_dict(data["env"], str(path)), int(data["frame_size"]), dict(data["collection"]), shards)

        return read_manifest(folder, parse, FORMAT, written_by="`causal-rcm collect --out {folder}`",
                             missing="it is not a folder written by `causal-rcm collect`, or its collection has not "
                                     "finished a shard yet", redo="collect again into a new folder")


def read_manifest(folder: str | Path, parse: Callable[[dict, Path], T], version: int, *, written_by: str, missing: str,
                  redo: str) -> T:
    """``folder/manifest.json`` of format ``version``, read by ``parse(data, path)``: one-line UserErrors when the
    folder does not exist (``written_by`` writes one; ``{folder}`` is filled in), has no manifest (``missing`` says
    why) or it is unreadable (``redo`` says what to do)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise UserError(f"shard folder {folder} does not exist (write one with {written_by.format(folder=folder)})")
    if not path.is_file():
        raise UserError(f"{folder} has no {MANIFEST}: {missing}")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != version:
            raise ValueError(f"format {data.get('format') if isinstance(data, dict) else None!r}, this version reads {version}")
        return parse(data, path)
    except UserError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path} is not a readable manifest ({exc}); {redo}") from None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_tar(path: Path, samples: list[dict[str, bytes]]) -> tuple[int, str]:
    """Write ``samples`` (each a ``__key__`` and its members' bytes) as one webdataset tar at ``path``, whole or not
    at all; its size and SHA-256. Members carry a fixed mtime, so the same samples give the same bytes (a resumed
    job equals an uninterrupted one)."""
    if webdataset is None:
        raise UserError("writing shards needs webdataset: pip install webdataset")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            sink = webdataset.TarWriter(f, encoder=False, mtime=0.0)
            for sample in samples:
                sink.write(sample)
            sink.close()

    write_whole(path, write)
    return path.stat().st_size, sha256(path)


def npy(array: np.ndarray) -> bytes:
    """The ``.npy`` bytes of ``array`` (C order, no pickles): what :meth:`MappedTar.array` maps back."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def is_whole(path: Path, size: int, digest: str) -> bool:
    """Whether ``path`` is the file a record says was written: its size, then its SHA-256."""
    return path.is_file() and path.stat().st_size == size and sha256(path) == digest


def write_shard(path: Path, episodes: list[tuple[int, Episode]], split: str, emulator_seed: int) -> ShardEntry:
    """Write ``(index, episode)`` pairs as one webdataset tar at ``path``, whole or not at all; its manifest entry."""
    size, digest = write_tar(path, [{
        "__key__": f"ep{index:06d}", "frames.npy": npy(ep.frames), "actions.npy": npy(ep.actions.astype(np.int64)),
        "rewards.npy": npy(ep.rewards.astype(np.float32)), "meta.json": json.dumps(ep.meta, sort_keys=True).encode(),
    } for index, ep in episodes])
    return ShardEntry(
        file=path.name, split=split, episodes=tuple(i for i, _ in episodes), emulator_seed=emulator_seed,
        frames=sum(len(ep.frames) for _, ep in episodes), bytes=size, sha256=digest,
    )


class MappedTar:
    """The members of a whole tar shard, mapped from disk (``numpy.memmap``), never loaded whole.

    Checked first against the size and SHA-256 its record gives; ``rerun`` ends the error for a missing or changed
    file (the command that rewrites it). ``members[key][ext]`` is the ``tarfile.TarInfo`` of member ``key.ext``;
    :meth:`array` views an ``.npy`` member without a copy, :meth:`bytes` any member."""

    def __init__(self, path: Path, size: int, digest: str, rerun: str) -> None:
        self.path = path
        if not path.is_file():
            raise UserError(f"shard {path} is listed in the manifest but missing: {rerun}")
        if not is_whole(path, size, digest):
            raise UserError(f"shard {path} is truncated or changed since it was written (size or SHA-256 differ from "
                            f"the manifest): {rerun} to rewrite it")
        self._map = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        self.members: dict[str, dict[str, tarfile.TarInfo]] = {}
        with tarfile.open(path, "r:") as tar:  # tarfile.TarError, EOFError: the caller names the shard
            for info in tar:
                key, _, ext = info.name.partition(".")
                self.members.setdefault(key, {})[ext] = info

    def bytes(self, info: tarfile.TarInfo) -> np.ndarray:
        if info.offset_data + info.size > len(self._map):
            raise ValueError(f"{info.name} runs past the end of the file")
        return self._map[info.offset_data : info.offset_data + info.size]

    def array(self, info: tarfile.TarInfo) -> np.ndarray:
        """The ``.npy`` member ``info`` as a read-only view of the mapped file (no copy)."""
        raw = self.bytes(info)
        header = io.BytesIO(raw[:1024].tobytes())
        version = np.lib.format.read_magic(header)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(header)
        if fortran or dtype.hasobject:
            raise ValueError(f"{info.name}: not a plain C-ordered array")
        body = raw[header.tell() :]
        count = int(np.prod(shape)) * dtype.itemsize
        if len(body) != count:
            raise ValueError(f"{info.name}: {len(body)} bytes for an array of {count}")
        return body.view(dtype).reshape(shape)


class ShardReader:
    """The episodes of one whole shard, checked against its manifest entry; frames mapped from the file, not loaded.

    ``episodes[i]`` is an :class:`Episode` whose ``frames`` is a read-only ``numpy.memmap`` view; a window
    ``frames[s : s + F]`` reads only its own bytes.
    """

    def __init__(self, folder: Path, entry: ShardEntry, manifest: Manifest) -> None:
        self.path = folder / entry.file
        try:
            self._tar = MappedTar(self.path, entry.bytes, entry.sha256, "run the same `causal-rcm collect` again")
            episodes = [self._episode(key, parts, manifest) for key, parts in self._tar.members.items()]
        except (tarfile.TarError, ValueError, KeyError, EOFError) as exc:
            raise UserError(f"shard {self.path} is not a readable episode shard ({exc})") from None
        if not episodes:
            raise UserError(f"shard {self.path} holds no episodes")
        self.episodes = episodes
        if [ep.meta.get("episode") for ep in self.episodes] != list(entry.episodes):
            raise UserError(f"shard {self.path} does not hold the episodes its manifest entry lists")

    def _episode(self, key: str, parts: dict[str, tarfile.TarInfo], manifest: Manifest) -> Episode:
        tar = self._tar
        frames = tar.array(parts["frames.npy"])
        actions = np.array(tar.array(parts["actions.npy"]))
        rewards = np.array(tar.array(parts["rewards.npy"]))
        meta = json.loads(tar.bytes(parts["meta.json"]).tobytes())
        S = manifest.frame_size
        if frames.dtype != np.uint8 or frames.shape[1:] != (S, S, 3) or actions.shape != frames.shape[:1] or rewards.shape != actions.shape:
            raise ValueError(f"{key}: frames {frames.dtype} {list(frames.shape)}, {len(actions)} actions, {len(rewards)} rewards")
        if len(actions) and not 0 <= actions.min() <= actions.max() < manifest.env.num_actions:
            raise ValueError(f"{key}: actions outside 0..{manifest.env.num_actions - 1}")
        return Episode(frames, actions, rewards, meta)
