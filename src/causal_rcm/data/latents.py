"""Videos as latents and text context in webdataset shards: what ``causal-rcm synth`` (a teacher's samples) and
``causal-rcm data prepare`` (a folder of videos) write, and ``data.source=latents`` trains on.

A folder of latent shards holds:

* ``job.json``: the :class:`LatentHeader`, what every shard is made with (codec and text encoder, frame structure,
  the job's arguments); a rerun with another header is refused, so a folder never mixes two jobs;
* ``negative.npy``: float32 ``[L, D]``, the empty prompt's context, the unconditional branch of CFG (training
  never loads the text encoder);
* ``shard-%06d.tar``: items ``k * per_shard .. (k + 1) * per_shard - 1`` of the job, one sample each
  (skipped items, e.g. unreadable videos, have none);
* ``records/shard-%06d.json``: written, whole, after its shard: the samples and skipped items, size and SHA-256.
  A shard without a record, or whose size or SHA-256 differ from it, was left by a killed process and is
  written again, never read. Each shard has one writer (rank ``r`` of ``W`` writes shards ``r, r + W, ...``),
  so ranks never write the same file;
* ``manifest.json``: written once every shard is whole: the header, every shard's record, every skipped item.
  Readers read only folders with a manifest, and check each shard against it.

A sample (key ``s%09d``, the item's index in the job) has ``latents.npy`` ``[C, F, h, w]`` (normalised latents,
``header.dtype``), ``context.npy`` ``[n, D]`` (the prompt's n tokens of context: the rest of the text encoder's
``text_len`` rows are zeros, put back when read), ``meta.json`` (the caption and where it came from) and, from
``synth --ode-pairs K``, ``ode.npy`` ``[K, C, F, h, w]``: the teacher's ODE states at the flow times
``header.ode_times`` (the first is the noise at s = 1, the ODE's endpoint is ``latents``).
"""

from __future__ import annotations

import dataclasses
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from causal_rcm.data.shards import MappedTar, is_whole, npy, read_manifest, sha256, write_tar
from causal_rcm.errors import UserError
from causal_rcm.models.adapters import write_whole

__all__ = ["DTYPES", "LatentHeader", "LatentManifest", "LatentSample", "LatentShards", "Skipped", "write_latent_shards"]

FORMAT = 1
MANIFEST, JOB, NEGATIVE, RECORDS = "manifest.json", "job.json", "negative.npy", "records"
DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class LatentHeader:
    """What every shard of a folder is made with.

    ``world`` is the data source a checkpoint trained on the shards records (``shapes`` for a shapes-world
    teacher's samples, whose oracle then scores the students; else ``latents``); ``world_data`` the shapes world's
    data settings (rendering evaluation videos). ``codec`` / ``text`` are the components' spec objects
    (``data.components``) with absolute paths. ``num_frames`` counts latent frames; ``latent_shape`` is one
    sample's ``[C, F, h, w]``."""

    kind: str  # "synth" (a teacher's samples) or "videos" (data prepare)
    world: str
    codec: dict
    text: dict
    resolution: int
    width: int
    num_frames: int
    fps: float
    latent_shape: tuple[int, ...]
    text_len: int
    text_dim: int
    dtype: str
    items: int  # the job's items (prompts x videos per prompt, or video files)
    per_shard: int
    job: dict  # the job's own arguments
    ode_times: tuple[float, ...] = ()
    world_data: dict | None = None

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples as lists: what from_dict reads

    @classmethod
    def from_dict(cls, data: dict) -> LatentHeader:
        names = {f.name for f in dataclasses.fields(cls)}
        header = cls(**{k: v for k, v in data.items() if k in names})
        return dataclasses.replace(header, latent_shape=tuple(header.latent_shape), ode_times=tuple(header.ode_times))

    @property
    def shards(self) -> int:
        return -(-self.items // self.per_shard)


@dataclass
class LatentSample:
    """One sample: ``latents`` ``[C, F, h, w]``, ``context`` ``[n, D]`` (the prompt's tokens), ``ode`` ``[K, C, F, h, w]``
    or None, ``meta`` (its caption under ``"caption"``)."""

    index: int
    latents: np.ndarray
    context: np.ndarray
    meta: dict[str, Any]
    ode: np.ndarray | None = None


@dataclass(frozen=True)
class Skipped:
    """An item the job could not make a sample of, and why (e.g. a video too short)."""

    index: int
    name: str
    reason: str


@dataclass(frozen=True)
class ShardRecord:
    file: str
    samples: tuple[int, ...]
    skipped: tuple[Skipped, ...]
    bytes: int
    sha256: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ShardRecord:
        return cls(data["file"], tuple(data["samples"]), tuple(Skipped(**s) for s in data["skipped"]), int(data["bytes"]),
                   str(data["sha256"]))


@dataclass
class LatentManifest:
    """``manifest.json`` of a finished folder: the header and every shard's record."""

    header: LatentHeader
    shards: list[ShardRecord] = field(default_factory=list)
    format: int = FORMAT

    @property
    def skipped(self) -> list[Skipped]:
        return [s for record in self.shards for s in record.skipped]

    def write(self, folder: Path) -> None:
        data = {"format": self.format, "header": self.header.to_dict(), "shards": [r.to_dict() for r in self.shards]}
        _write_json(folder / MANIFEST, data)

    @classmethod
    def read(cls, folder: str | Path) -> LatentManifest:
        """The manifest of ``folder``; one-line UserError when it is missing, unfinished or unreadable."""
        folder = Path(folder)
        missing = ("its job has not finished; run the same command again to finish it" if (folder / JOB).is_file()
                   else "it is not a folder written by `causal-rcm synth` or `causal-rcm data prepare`")
        return read_manifest(
            folder, lambda data, _: cls(LatentHeader.from_dict(data["header"]), [ShardRecord.from_dict(r) for r in data["shards"]]),
            FORMAT, written_by="`causal-rcm synth` or `causal-rcm data prepare`", missing=missing, redo="write the folder again")


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2) + "\n"
    write_whole(path, lambda tmp: tmp.write_text(text))


def _shard_file(k: int) -> str:
    return f"shard-{k:06d}.tar"


def _tar_sample(sample: LatentSample, dtype: str) -> dict[str, bytes]:
    out = {
        "__key__": f"s{sample.index:09d}", "latents.npy": npy(sample.latents.astype(dtype)),
        "context.npy": npy(sample.context.astype(dtype)), "meta.json": json.dumps(sample.meta, sort_keys=True).encode(),
    }
    if sample.ode is not None:
        out["ode.npy"] = npy(sample.ode.astype(dtype))
    return out


def _start(out: Path, header: LatentHeader, negative: Callable[[], np.ndarray], is_main: bool, barrier: Callable[[], None]) -> None:
    """Refuse a folder of another job; on the main process, write ``job.json`` and ``negative.npy`` if new."""
    wanted = header.to_dict()
    if is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / RECORDS).mkdir(exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create --out {out}: {exc.strerror or exc}") from None
        if not (out / JOB).exists():
            if any(out.glob("*.tar")) or (out / MANIFEST).exists():
                raise UserError(f"{out} holds shards without {JOB}: write into a new folder")
            np.save(out / NEGATIVE, negative().astype(np.float32))  # before job.json: a job.json promises it
            _write_json(out / JOB, wanted)
    barrier()
    try:
        have = json.loads((out / JOB).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{out / JOB} is unreadable ({exc}): write into a new folder") from None
    flat = lambda d: {**{k: v for k, v in d.items() if k != "job"}, **{f"job.{k}": v for k, v in d.get("job", {}).items()}}  # noqa: E731
    have, wanted = flat(have), flat(wanted)
    differ = [f"{k}={have.get(k)!r} (now {v!r})" for k, v in wanted.items() if have.get(k) != v]
    if differ:
        raise UserError(f"{out} holds another job ({'; '.join(differ)[:400]}): rerun it with its arguments to finish it, "
                        "or write into a new folder")


def _record(out: Path, k: int) -> ShardRecord | None:
    """Shard ``k``'s record when the shard on disk is the one it describes, else None."""
    path = out / RECORDS / f"shard-{k:06d}.json"
    try:
        record = ShardRecord.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a record is written whole: one unreadable was not written by us; redo the shard
    return record if is_whole(out / record.file, record.bytes, record.sha256) else None


def write_latent_shards(
    out: Path, header: LatentHeader, negative: Callable[[], np.ndarray],
    make: Callable[[list[int], Callable[[int], None]], tuple[list[LatentSample], list[Skipped]]], *, rank: int = 0, world_size: int = 1,
    barrier: Callable[[], None] = lambda: None, progress: bool = True, say: Callable[[str], None] = print,
    desc: str = "shards", unit: str = "video",
) -> tuple[LatentManifest, int]:
    """Make the job's shards in ``out``, resuming a killed run (see the module): (the manifest, items made now).

    ``make(indices, done)`` returns the samples of those items and the items it skipped, calling ``done(n)`` as it
    finishes n items (the progress bar); ``negative()`` the empty prompt's context ``[L, D]``. Under ``torchrun`` every rank calls this with its ``rank``, the ``world_size`` and
    a ``barrier`` over the processes; rank ``r`` makes shards ``r, r + W, ...``, and the main one writes the
    manifest once every shard is whole."""
    from tqdm.auto import tqdm

    _start(out, header, negative, rank == 0, barrier)
    mine = list(range(rank, header.shards, world_size))
    todo = [k for k in mine if _record(out, k) is None]
    size = lambda k: min(header.per_shard, header.items - k * header.per_shard)  # noqa: E731
    bar = tqdm(total=sum(size(k) for k in mine), initial=sum(size(k) for k in mine if k not in todo), desc=desc, unit=unit,
               dynamic_ncols=True, disable=not progress or rank != 0)
    made = 0
    try:
        for k in todo:
            if (out / _shard_file(k)).exists():
                say(f"{_shard_file(k)} has no record of being finished (left by a killed run): writing it again")
            indices = list(range(k * header.per_shard, k * header.per_shard + size(k)))
            samples, skipped = make(indices, bar.update)
            try:
                nbytes, digest = write_tar(out / _shard_file(k), [_tar_sample(s, header.dtype) for s in samples])
                record = ShardRecord(_shard_file(k), tuple(s.index for s in samples), tuple(skipped), nbytes, digest)
                _write_json(out / RECORDS / f"shard-{k:06d}.json", record.to_dict())
            except OSError as exc:
                raise UserError(f"cannot write {out / _shard_file(k)}: {exc.strerror or exc}") from None
            made += len(indices)
    finally:
        bar.close()
    barrier()
    if rank == 0:
        records = [_record(out, k) for k in range(header.shards)]
        missing = [_shard_file(k) for k, r in enumerate(records) if r is None]
        if missing:
            raise UserError(f"{out}: {', '.join(missing[:3])} are not whole after every process finished; run the command again")
        LatentManifest(header, records).write(out)
    barrier()
    return LatentManifest.read(out), made


class LatentShards:
    """The samples of a finished folder, by their position ``0 .. len - 1``, read from the mapped shards.

    Shards are checked against the manifest (size, SHA-256) when first read, so opening a large folder is fast;
    ``item(i)`` returns numpy views of the mapped file (``latents``, ``context`` padded back to ``text_len`` rows,
    ``ode`` or None) and the sample's ``meta``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.manifest = LatentManifest.read(self.folder)
        self.header = self.manifest.header
        self.records = [r for r in self.manifest.shards if r.samples]
        self.ends = np.cumsum([len(r.samples) for r in self.records], dtype=np.int64)
        if not len(self.ends):
            raise UserError(f"{self.folder} holds no samples (every item was skipped)")
        try:
            self.negative = np.load(self.folder / NEGATIVE)
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.folder / NEGATIVE} is unreadable ({exc}): write the folder again") from None
        self._open: dict[int, MappedTar] = {}
        self.identity = sha256(self.folder / MANIFEST)[:16]  # which data a training run resumes on

    def __len__(self) -> int:
        return int(self.ends[-1])

    def _tar(self, s: int) -> MappedTar:
        if s not in self._open:
            record = self.records[s]
            rerun = "run the command that wrote the folder again"
            try:
                self._open[s] = MappedTar(self.folder / record.file, record.bytes, record.sha256, rerun)
            except (tarfile.TarError, EOFError) as exc:
                raise UserError(f"shard {self.folder / record.file} is not a readable tar ({exc})") from None
        return self._open[s]

    def item(self, i: int) -> dict[str, Any]:
        s = int(np.searchsorted(self.ends, i, side="right"))
        record = self.records[s]
        index = record.samples[i - (int(self.ends[s - 1]) if s else 0)]
        tar = self._tar(s)
        key = f"s{index:09d}"
        try:
            parts = tar.members[key]
            latents = tar.array(parts["latents.npy"])
            context = tar.array(parts["context.npy"])
            ode = tar.array(parts["ode.npy"]) if "ode.npy" in parts else None
            meta = json.loads(tar.bytes(parts["meta.json"]).tobytes())
        except (KeyError, ValueError) as exc:
            raise UserError(f"shard {tar.path} does not hold sample {key} as its record says ({exc})") from None
        h = self.header
        if tuple(latents.shape) != h.latent_shape or context.ndim != 2 or context.shape[0] > h.text_len or context.shape[1] != h.text_dim:
            raise UserError(f"shard {tar.path}: sample {key} has latents {list(latents.shape)} and context {list(context.shape)}, "
                            f"not the header's {list(h.latent_shape)} and at most [{h.text_len}, {h.text_dim}]")
        padded = np.zeros((h.text_len, h.text_dim), dtype=np.float32)
        padded[: len(context)] = context
        return {"latents": latents, "context": padded, "ode": ode, "meta": meta, "index": index}
