"""Checkpoint layouts: ours, original Wan2.1, and diffusers' ``WanTransformer3DModel``.

* ``causal-rcm``: a folder with ``config.json`` (``"_class_name": "CausalWanModel"`` + our
  config) and ``model.safetensors``. Parameter names are Wan's.
* ``wan``: Wan2.1's own names; a ``.pth`` / ``.safetensors`` file (the config is inferred from
  tensor shapes, heads of 128 channels and text_len 512 as in every Wan2.1 model, unless a
  .safetensors file we wrote carries it in its metadata) or a folder with
  ``config.json`` (``"_class_name": "WanModel"``) and ``diffusion_pytorch_model*.safetensors``.
* ``diffusers``: a folder with ``config.json`` (``"_class_name": "WanTransformer3DModel"``) and
  ``diffusion_pytorch_model*.safetensors`` (sharded or not), diffusers' names. Its config has
  no text length: loading assumes Wan's 512. A diffusers Wan pipeline folder (``model_index.json``,
  as released) stands for its ``transformer/``; ``models.release`` finds its other components.

Conversions only rename tensors, so round trips are exact. Every problem a user can hit
(missing file, truncated file, keys or shapes that do not match the config) raises a
:class:`~causal_rcm.errors.CheckpointError` with one line naming it. A checkpoint is saved whole
or not at all, and read whole (see "whole or absent" below).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

from causal_rcm.errors import CheckpointError
from causal_rcm.models.wan import CausalWanConfig, CausalWanModel

__all__ = ["LAYOUTS", "checkpoint_name", "detect_layout", "load_checkpoint", "read_tensors", "save_checkpoint", "wan_to_diffusers", "diffusers_to_wan"]

LAYOUTS = ("causal-rcm", "wan", "diffusers")
OURS_WEIGHTS = "model.safetensors"
FOREIGN_WEIGHTS = "diffusion_pytorch_model.safetensors"

# Our (= Wan's) names -> diffusers' names. Keys are module paths (a parameter's key minus its
# ".weight"/".bias") or whole parameter keys (the modulation tables).
_BLOCK_RENAMES = {  # inside "blocks.<i>."
    **{f"self_attn.{n}": f"attn1.to_{n}" for n in "qkv"},
    **{f"cross_attn.{n}": f"attn2.to_{n}" for n in "qkv"},
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.o": "attn2.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    # Wan's cross-attention norm is norm3 (its FFN norm, norm2, has no parameters); diffusers calls it norm2.
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    "modulation": "scale_shift_table",
}
_GLOBAL_RENAMES = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
}
_BLOCK_KEY = re.compile(r"(blocks\.\d+\.)(.+)")


def _rename(state_dict: dict, block_map: dict[str, str], global_map: dict[str, str], target: str) -> dict:
    out = {}
    for key, value in state_dict.items():
        match = _BLOCK_KEY.fullmatch(key)
        prefix, rest = (match.group(1), match.group(2)) if match else ("", key)
        table = block_map if match else global_map
        module, _, leaf = rest.rpartition(".")
        if rest in table:
            new = prefix + table[rest]
        elif module in table:
            new = f"{prefix}{table[module]}.{leaf}"
        else:
            raise CheckpointError(f"tensor {key!r} has no equivalent in the {target} layout")
        out[new] = value
    return out


def wan_to_diffusers(state_dict: dict) -> dict:
    """Rename Wan (= our) keys to diffusers' ``WanTransformer3DModel`` keys."""
    return _rename(state_dict, _BLOCK_RENAMES, _GLOBAL_RENAMES, "diffusers")


def diffusers_to_wan(state_dict: dict) -> dict:
    """Rename diffusers' keys to Wan (= our) keys."""
    invert = lambda table: {v: k for k, v in table.items()}  # noqa: E731
    return _rename(state_dict, invert(_BLOCK_RENAMES), invert(_GLOBAL_RENAMES), "Wan")


# --------------------------------------------------------------------------- whole or absent
# A save writes its checkpoint beside ``path`` under a name that says who is writing it,
# ".<name>.tmp-<host>-<pid>-<nonce>", and moves it in with one rename. A folder cannot be renamed
# over a folder, so the previous one is first renamed aside to ".<name>.old-<host>-<pid>-<nonce>"
# and deleted once the new one is in. Crash points: before the first rename, ``path`` holds the old
# checkpoint; between the two, only the aside does (readers use it, and once its writer is dead,
# the next reader or writer renames it back); after the second, ``path`` holds the new one.
# Whatever a dead writer left is removed by the next save into the same folder.
_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}")
_CHECKPOINT_FILE = re.compile(r"config\.json|model\.safetensors|diffusion_pytorch_model.*")


def _temp_path(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}")


def _writer_alive(temp: re.Match) -> bool:
    """Whether the process named in a temporary's name may still be writing it."""
    if temp["host"] != socket.gethostname() or os.name != "posix":  # another machine's, or no signal 0 (Windows)
        return True
    try:
        os.kill(int(temp["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def _recover(path: Path) -> Path:
    """Where the checkpoint at ``path`` is: ``path``, or while a save swaps it, the previous one set aside.

    An aside whose writer died is renamed back to ``path`` (by whoever gets there first).
    """
    path = path.resolve() if path.is_symlink() else path
    if path.exists() or not path.parent.is_dir():
        return path
    for aside in path.parent.iterdir():
        temp = _TEMP.fullmatch(aside.name)
        if temp is None or temp["kind"] != "old" or temp["name"] != path.name:
            continue
        if not _writer_alive(temp):
            try:
                os.replace(aside, path)
            except OSError:  # restored by someone else meanwhile, or a read-only folder
                pass
        if path.exists():
            return path
        if aside.exists():
            return aside
    return path


def current_path(path: Path) -> Path:
    """Where the checkpoint written whole at ``path`` (:func:`write_whole`) is now: ``path``, or while a save swaps
    a folder in, the previous one set aside."""
    return _recover(Path(path))


def _remove_dead_temporaries(folder: Path) -> None:
    """Remove what saves into ``folder`` by dead processes left, renaming back an aside still needed."""
    for entry in folder.iterdir():
        temp = _TEMP.fullmatch(entry.name)
        if temp is None or _writer_alive(temp):
            continue
        checkpoint = folder / temp["name"]
        if temp["kind"] == "old" and (_recover(checkpoint) != checkpoint or not checkpoint.exists()):
            continue  # it could not be put back: it may be the only copy
        _remove(entry)


def _fsync(path: Path) -> None:
    if os.name != "posix" and path.is_dir():  # Windows cannot open a folder
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_whole(path: Path, write: Callable[[Path], None]) -> None:
    """Create ``path``, a file or a folder, with ``write(tmp)``, whole or not at all (see the comment above).

    ``write`` makes a file or a folder at the path it is given. Removes first what dead processes'
    saves left beside ``path``; the files are on disk (fsync) before the rename that publishes them.
    """
    path = path.resolve() if path.is_symlink() else path
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(path.parent)
    tmp, aside = _temp_path(path, "tmp"), None
    try:
        write(tmp)
        for file in tmp.iterdir() if tmp.is_dir() else ():
            _fsync(file)
        _fsync(tmp)
        if tmp.is_dir() and path.exists():
            aside = _temp_path(path, "old")
            os.replace(path, aside)
        os.replace(tmp, path)
    except BaseException:
        if aside is not None and not path.exists():
            os.replace(aside, path)
        _remove(tmp)
        raise
    _fsync(path.parent)  # the renames themselves on disk
    if aside is not None:
        _remove(aside)


# --------------------------------------------------------------------------- reading
def read_tensors(path: Path, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or .pth file (a ``state_dict`` entry of a .pth, if any); CheckpointError if
    the file is missing, truncated or holds anything else. ``mmap``: a .pth's tensors stay on disk until read
    (for their shapes: a config inferred from a large file)."""
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except CheckpointError:
        raise
    except Exception as exc:  # truncated / corrupt files raise many different types
        raise CheckpointError(f"cannot read {path} (truncated or not a checkpoint): {str(exc).splitlines()[0]}") from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors")
    return data


def _read_folder_weights(folder: Path, stem: str) -> dict[str, torch.Tensor]:
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.exists():
        return read_tensors(single)
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"unreadable shard index {index}: {exc}") from None
        state = {}
        for shard in shards:
            state.update(read_tensors(folder / shard))
        return state
    pth = sorted(folder.glob("*.pth"))
    if len(pth) == 1:
        return read_tensors(pth[0])
    raise CheckpointError(f"no weights in {folder}: expected {stem}.safetensors (or a shard index)")


def read_component_config(path: Path, *, field: str, value: str, what: str, infer: Callable[[dict, Path], dict]) -> dict:
    """The config of a release component (a VAE, a text encoder) at ``path``: a folder's ``config.json`` whose
    ``field`` names ``value``, or, for a single original file, ``infer(its tensors, path)`` (memory-mapped, not
    loaded); CheckpointError names a missing component, an unreadable config or one of another class."""
    path = Path(path)
    if path.is_dir():
        data = _read_json(path / "config.json")
        if data.get(field) != value:
            raise CheckpointError(f"{path / 'config.json'} describes {data.get(field)!r}, not a {what} ({field} {value!r})")
        return data
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")
    return infer(read_tensors(path, mmap=True), path)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"unreadable config {path}: {str(exc) or 'nested too deeply'}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"unreadable config {path}: a JSON object is needed, not a {type(data).__name__}")
    return data


def checkpoint_name(path: str | Path) -> str:
    """A checkpoint's name in tables and file names: its folder, or the run folder above a train output's ``model/``."""
    path = Path(path)
    return path.parent.name if path.name == "model" else path.name


def transformer_of(path: Path) -> Path:
    """The ``transformer/`` folder of a diffusers Wan pipeline folder (``model_index.json``), else ``path`` itself."""
    index = path / "model_index.json"
    if not path.is_dir() or not index.exists():
        return path
    data = _read_json(index)
    if data.get("_class_name") != "WanPipeline":
        raise CheckpointError(f"{index} describes a {data.get('_class_name')!r}; only Wan text-to-video pipelines (WanPipeline) are supported")
    second = data.get("transformer_2")
    if isinstance(second, list) and second and second[0]:
        raise CheckpointError(f"{path} has two transformers (a Wan2.2 mixture of experts), which this version cannot load")
    folder = path / "transformer"
    if not (folder / "config.json").exists():
        raise CheckpointError(f"{path} is a diffusers Wan pipeline without its transformer (transformer/config.json is missing)")
    return folder


def detect_layout(path: str | Path) -> str:
    """'causal-rcm', 'wan' or 'diffusers' for a checkpoint file or folder (a diffusers Wan pipeline folder: its
    transformer's)."""
    path = transformer_of(_recover(Path(path)))
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_file():
        if path.suffix not in (".pth", ".pt", ".safetensors"):
            raise CheckpointError(f"unsupported checkpoint file {path}: expected .pth, .pt or .safetensors")
        keys = _peek_keys(path)
        return "diffusers" if any(k.startswith("condition_embedder.") for k in keys) else "wan"
    config = path / "config.json"
    if not config.exists():
        raise CheckpointError(f"{path} has no config.json: not a causal-rcm, Wan or diffusers checkpoint folder")
    name = _read_json(config).get("_class_name")
    layouts = {"CausalWanModel": "causal-rcm", "WanModel": "wan", "WanTransformer3DModel": "diffusers"}
    if name not in layouts:
        raise CheckpointError(f"{config} describes {name!r}; expected one of {', '.join(layouts)}")
    return layouts[name]


def _peek_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        except Exception as exc:
            raise CheckpointError(f"cannot read {path} (truncated or not a checkpoint): {str(exc).splitlines()[0]}") from None
    return list(read_tensors(path, mmap=True))


def _safetensors_metadata_config(path: Path) -> dict:
    """The Wan config a single .safetensors file carries in its metadata (written by us), or {}."""
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get("config")
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def _infer_wan_config(state: dict[str, torch.Tensor], overrides: dict) -> CausalWanConfig:
    """Wan2.1 config from tensor shapes (head dim 128, as in every released Wan2.1 model)."""
    try:
        patch = state["patch_embedding.weight"]  # (dim, in_dim, pt, ph, pw)
        dim = patch.shape[0]
        num_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        fields = dict(
            in_dim=patch.shape[1],
            dim=dim,
            patch_size=tuple(patch.shape[2:]),
            out_dim=state["head.head.weight"].shape[0] // (patch.shape[2] * patch.shape[3] * patch.shape[4]),
            ffn_dim=state["blocks.0.ffn.0.weight"].shape[0],
            freq_dim=state["time_embedding.0.weight"].shape[1],
            text_dim=state["text_embedding.0.weight"].shape[1],
            num_layers=num_layers,
            num_heads=max(dim // 128, 1),
            qk_norm="blocks.0.self_attn.norm_q.weight" in state,
            cross_attn_norm="blocks.0.norm3.weight" in state,
        )
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"not a Wan2.1 text-to-video state dict (missing {exc})") from None
    if "action_embedding.weight" in state:
        fields["num_actions"] = state["action_embedding.weight"].shape[0]
    elif "action_embedding.0.weight" in state:
        fields["action_dim"] = state["action_embedding.0.weight"].shape[1]
    fields.update(overrides)
    return CausalWanConfig(**fields)


def _config_from_wan_json(data: dict) -> dict:
    mapping = {k: k for k in ("dim", "ffn_dim", "freq_dim", "in_dim", "out_dim", "text_len", "num_heads", "num_layers", "eps", "qk_norm", "cross_attn_norm")}
    if "patch_size" in data:
        mapping["patch_size"] = "patch_size"
    if data.get("model_type", "t2v") != "t2v":
        raise CheckpointError(f"only Wan2.1 text-to-video checkpoints are supported, got model_type={data['model_type']!r}")
    return {ours: data[theirs] for theirs, ours in mapping.items() if theirs in data}


def _config_from_diffusers_json(data: dict) -> CausalWanConfig:
    if data.get("image_dim") or data.get("added_kv_proj_dim"):
        raise CheckpointError("image-conditioned (I2V) Wan checkpoints are not supported")
    try:
        return CausalWanConfig(
            in_dim=data["in_channels"],
            out_dim=data.get("out_channels") or data["in_channels"],
            dim=data["num_attention_heads"] * data["attention_head_dim"],
            ffn_dim=data["ffn_dim"],
            freq_dim=data["freq_dim"],
            text_dim=data["text_dim"],
            num_heads=data["num_attention_heads"],
            num_layers=data["num_layers"],
            patch_size=tuple(data.get("patch_size", (1, 2, 2))),
            eps=data.get("eps", 1e-6),
            qk_norm=bool(data.get("qk_norm", "rms_norm_across_heads")),
            cross_attn_norm=data.get("cross_attn_norm", True),
            max_frames=data.get("rope_max_seq_len", 1024),
        )
    except KeyError as exc:
        raise CheckpointError(f"diffusers config lacks {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"bad diffusers config: {exc}") from None


def _expected_shapes(config: CausalWanConfig) -> dict[str, tuple]:
    with torch.device("meta"):
        model = CausalWanModel(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def validate_state_dict(state: dict[str, torch.Tensor], config: CausalWanConfig, source: str) -> None:
    """Raise a one-line CheckpointError naming missing/unexpected keys or wrong shapes."""
    expected = _expected_shapes(config)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected if k in state and tuple(state[k].shape) != expected[k]]

    def few(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches: {few(wrong)}")
    if problems:
        raise CheckpointError(f"{source} does not match its config: " + "; ".join(problems))


def load_checkpoint(path: str | Path, **config_overrides) -> tuple[CausalWanConfig, dict[str, torch.Tensor], str]:
    """Read any supported layout -> (config, state dict with our names, layout). A diffusers Wan pipeline folder
    (``model_index.json``) reads its ``transformer/``; an original Wan2.1 release folder is a ``WanModel`` folder.

    Reads one checkpoint whole: if a save replaced it meanwhile (it is another file or folder now),
    it reads again, so config and weights never come from two different saves.
    """
    path = transformer_of(Path(path))
    while True:
        source = _recover(path)
        with _held(source) as before:
            try:
                loaded = _load_checkpoint(source, config_overrides)
            except CheckpointError:
                if _where(path) == before:
                    raise
                continue
            if _where(path) == before:
                return loaded


def _inode(path_or_fd: Path | int) -> tuple:
    try:
        stat = os.stat(path_or_fd)
    except OSError:
        return ()
    return stat.st_dev, stat.st_ino


def _where(path: Path) -> tuple:
    """Where the checkpoint at ``path`` is now and which file or folder it is: a save changes either."""
    source = _recover(path)
    return source, *_inode(source)


@contextmanager
def _held(source: Path) -> Iterator[tuple]:
    """``_where`` of ``source``, held open meanwhile so that no new save can take its inode number."""
    try:
        fd = os.open(source, os.O_RDONLY)
    except OSError:  # missing (the read says so), or a folder on Windows
        fd = None
    try:
        yield (source, *_inode(source if fd is None else fd))
    finally:
        if fd is not None:
            os.close(fd)


def _load_checkpoint(path: Path, config_overrides: dict) -> tuple[CausalWanConfig, dict[str, torch.Tensor], str]:
    layout = detect_layout(path)
    if layout == "causal-rcm":
        data = _read_json(path / "config.json")
        try:
            config = CausalWanConfig.from_dict({**data.get("model", {}), **config_overrides})
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"bad model config in {path / 'config.json'}: {exc}") from None
        state = read_tensors(path / OURS_WEIGHTS)
    elif layout == "wan":
        if path.is_dir():
            state = _read_folder_weights(path, "diffusion_pytorch_model")
            overrides = {**_config_from_wan_json(_read_json(path / "config.json")), **config_overrides}
        else:
            state = read_tensors(path)
            overrides = {**_config_from_wan_json(_safetensors_metadata_config(path)), **config_overrides}
        try:
            config = _infer_wan_config(state, overrides)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"bad Wan config for {path}: {exc}") from None
    else:
        if path.is_dir():
            config = _config_from_diffusers_json(_read_json(path / "config.json"))
            state = _read_folder_weights(path, "diffusion_pytorch_model")
        else:
            state = read_tensors(path)
            config = _infer_wan_config(diffusers_to_wan(state), config_overrides)
        state = diffusers_to_wan(state)
    validate_state_dict(state, config, str(path))
    return config, state, layout


# --------------------------------------------------------------------------- writing
def _save_safetensors(tensors: dict[str, torch.Tensor], file: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(file), metadata=metadata)


def _write_folder(folder: Path, weights: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    folder.mkdir()
    _save_safetensors(tensors, folder / weights)
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def _wan_json(config: CausalWanConfig) -> dict:
    return {
        "_class_name": "WanModel",
        "model_type": "t2v",
        "patch_size": list(config.patch_size),
        "dim": config.dim,
        "ffn_dim": config.ffn_dim,
        "freq_dim": config.freq_dim,
        "in_dim": config.in_dim,
        "out_dim": config.out_dim,
        "text_len": config.text_len,
        "num_heads": config.num_heads,
        "num_layers": config.num_layers,
        "eps": config.eps,
        "qk_norm": config.qk_norm,
        "cross_attn_norm": config.cross_attn_norm,
    }


def _diffusers_json(config: CausalWanConfig) -> dict:
    return {
        "_class_name": "WanTransformer3DModel",
        "patch_size": list(config.patch_size),
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.head_dim,
        "in_channels": config.in_dim,
        "out_channels": config.out_dim,
        "text_dim": config.text_dim,
        "freq_dim": config.freq_dim,
        "ffn_dim": config.ffn_dim,
        "num_layers": config.num_layers,
        "cross_attn_norm": config.cross_attn_norm,
        "qk_norm": "rms_norm_across_heads" if config.qk_norm else None,
        "eps": config.eps,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": config.max_frames,
    }


def read_pipeline_config(path: str | Path) -> dict:
    """The ``pipeline`` section of our checkpoint config (codec, text encoder, sampler defaults), or {}."""
    path = _recover(Path(path))
    if path.is_dir() and detect_layout(path) == "causal-rcm":
        return _read_json(path / "config.json").get("pipeline", {})
    return {}


def save_checkpoint(
    config: CausalWanConfig,
    state: dict[str, torch.Tensor],
    path: str | Path,
    layout: str = "causal-rcm",
    pipeline: dict | None = None,
) -> Path:
    """Write ``state`` (our names) in ``layout``. For 'wan', a path ending in .safetensors/.pth is one file.

    ``pipeline`` (our layout only) records how to use the model: codec, text encoder, frame
    structure and sampler defaults; ``StreamingPipeline.from_pretrained`` reads it.

    The checkpoint, file or folder, is written whole or not at all (:func:`write_whole`): a crash or
    kill at any moment leaves ``path`` holding the previous checkpoint or the new one, never one
    model's weights under another's config. A folder is replaced whole, so one holding anything but
    checkpoint files is refused.
    """
    path = Path(path)
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if layout != "causal-rcm" and (config.num_actions or config.action_dim):
        raise CheckpointError(f"this model has action-conditioning weights, which the {layout} layout cannot hold")
    if layout != "causal-rcm" and config.interval_embedding:
        raise CheckpointError(f"this model has MeanFlow interval-embedding weights, which the {layout} layout cannot hold")
    if layout != "causal-rcm" and config.rope_theta != 10000.0:
        raise CheckpointError(f"the {layout} layout assumes rope_theta=10000, this model uses {config.rope_theta}")
    if layout == "wan" and path.suffix == ".safetensors":
        write = partial(_save_safetensors, state, metadata={"config": json.dumps(_wan_json(config))})
    elif layout == "wan" and path.suffix in (".pth", ".pt"):
        write = partial(torch.save, {k: v.detach().cpu() for k, v in state.items()})
    else:
        if path.is_file():
            raise CheckpointError(f"{path} is a file; the {layout} layout is a folder")
        others = sorted(p.name for p in path.iterdir() if not _CHECKPOINT_FILE.fullmatch(p.name)) if path.is_dir() else []
        if others:
            raise CheckpointError(f"{path} holds more than a checkpoint ({', '.join(others[:3])}); a save replaces the "
                                  "whole folder: save into a folder of its own")
        if layout == "causal-rcm":
            meta = {"_class_name": "CausalWanModel", "model": config.to_dict(), **({"pipeline": pipeline} if pipeline else {})}
            write = partial(_write_folder, weights=OURS_WEIGHTS, tensors=state, meta=meta)
        elif layout == "wan":
            write = partial(_write_folder, weights=FOREIGN_WEIGHTS, tensors=state, meta=_wan_json(config))
        else:
            write = partial(_write_folder, weights=FOREIGN_WEIGHTS, tensors=wan_to_diffusers(state), meta=_diffusers_json(config))
    write_whole(path, write)
    return path


def load_model(path: str | Path, *, dtype: torch.dtype | None = None, device=None, attn_backend: str = "sdpa") -> CausalWanModel:
    """A :class:`CausalWanModel` from ours, original Wan2.1 (.pth/.safetensors/folder) or diffusers' folder (detected)."""
    config, state_dict, _ = load_checkpoint(path)
    with torch.device("meta"):
        model = CausalWanModel(config, attn_backend=attn_backend)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.to(device=device, dtype=dtype)


def save_model(model: CausalWanModel, path: str | Path, layout: str = "causal-rcm", pipeline: dict | None = None) -> Path:
    """Write ``model``'s weights in ``layout`` (causal-rcm, wan or diffusers); returns the path written."""
    return save_checkpoint(model.config, model.state_dict(), path, layout, pipeline)
