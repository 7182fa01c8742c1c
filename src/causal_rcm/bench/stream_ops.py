"""``causal-rcm bench stream --count-ops``: aten ops of one streamed forward, per layer, on any device.

Frame-wise streaming is launch-bound on a GPU (2765 kernel launches for a 48 ms forward of
Wan2.1-1.3B on an H200, ``benchmarks/results/README.md``), so the number of ops a streamed
forward dispatches is the quantity to cut. This counts them with ``torch.profiler`` (CPU
activities only), without a GPU: it builds the preset's architecture with random weights and
fewer layers (every block has the same ops, so the count is per layer), streams
``cached_frames`` frames into a KV cache, then profiles one denoising step of the next chunk
(``sample_chunk``, 1-step consistency, as ``bench stream``) and one cache refresh.

What is counted: the aten ops called from Python that touch data (``aten::linear``,
``aten::mul``, ``aten::to`` when it casts, ...), each once whatever it calls below (on a GPU,
``linear`` with its bias is one GEMM, ``layer_norm`` one kernel); not allocations, views or
no-op casts (``empty``, ``transpose``, ``to`` to the same dtype, ...). Each is attributed to the
innermost of: a block (``layer``), the rest of the model's forward (``model``), the sampler
around it (``sampler``).

Where the CPU count differs from GPU launches:

* a host-to-device copy (``tensor.to(device)`` of a CPU tensor, ``torch.tensor(python
  values, device=...)``) is a no-op on the CPU and a ``cudaMemcpyAsync`` on a GPU; a
  ``.item()`` / ``int(t)`` / ``float(t)`` of a device tensor synchronises there. They are found
  by reading the code, not here;
* a contiguous same-dtype ``copy_`` is a ``cudaMemcpyAsync`` (device to device), not a kernel;
* a few ops are one kernel on one device and several on the other (SDPA picks a different
  implementation; ``layer_norm`` on the CPU is ``native_layer_norm`` alone, on CUDA too).
"""

from __future__ import annotations

from collections import Counter

# Ops that allocate, alias or reshape without touching data (no kernel on a GPU).
_NO_KERNEL = {
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::as_strided", "aten::view", "aten::_unsafe_view",
    "aten::reshape", "aten::transpose", "aten::t", "aten::permute", "aten::unsqueeze", "aten::squeeze",
    "aten::expand", "aten::slice", "aten::select", "aten::unbind", "aten::split", "aten::split_with_sizes",
    "aten::chunk", "aten::narrow", "aten::unflatten", "aten::flatten", "aten::alias", "aten::detach",
    "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg", "aten::result_type", "aten::set_",
    "aten::resize_", "aten::to", "aten::contiguous", "aten::view_as", "aten::expand_as", "aten::item",
    "aten::_local_scalar_dense", "aten::is_nonzero", "aten::_has_compatible_shallow_copy_type",
    "aten::promote_types", "aten::view_as_real", "aten::view_as_complex", "aten::real", "aten::imag",
}
SCOPES = ("layer", "model", "sampler")


def _scope(event) -> str:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("layer "):
            return "layer"
        if parent.name == "model forward":
            return "model"
        parent = parent.cpu_parent
    return "sampler"


def _works(event) -> bool:
    """Does this aten op (or one below it) touch data? ``aten::to`` without a copy below it does not."""
    return event.name.startswith("aten::") and (
        event.name not in _NO_KERNEL or any(map(_works, event.cpu_children)))


def _top_level(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def _count(events) -> dict[str, Counter]:
    """Ops that do work, as called from Python (a composite op counts once), by scope and name."""
    counts = {scope: Counter() for scope in SCOPES}
    for event in events:
        if event.name.startswith("aten::") and _top_level(event) and _works(event):
            counts[_scope(event)][event.name] += 1
    return counts


def _labelled(model):
    """Forward hooks that open a profiler range around the model ('model forward') and each block ('layer i')."""
    import torch

    handles, ranges = [], []

    def enter(name):
        def hook(module, args):
            ranges.append(torch.profiler.record_function(name))
            ranges[-1].__enter__()
        return hook

    def leave(module, args, output):
        ranges.pop().__exit__(None, None, None)

    for name, module in [("model forward", model)] + [(f"layer {i}", b) for i, b in enumerate(model.blocks)]:
        handles += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave)]
    return handles


def count_stream_ops(
    size: str = "wan2.1-1.3b", *, num_layers: int = 2, height: int = 64, width: int = 64, cached_frames: int = 20,
    frames_per_chunk: int = 1, sink_frames: int = 0, dtype: str = "float32", device_name: str = "cpu",
) -> dict:
    """Launch-like aten ops of one denoising forward and one cache refresh of a stream, per scope and per layer.

    The model is ``size``'s architecture with ``num_layers`` blocks; ``per_forward`` extrapolates
    to the preset's number of layers (outside-layer ops + layers x ops per layer).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    from causal_rcm.diffusion.samplers import flow_time_grid, make_kv_caches, refresh_kv_caches, sample_chunk
    from causal_rcm.models.wan import CausalWanConfig, CausalWanModel

    device = torch.device(device_name)
    preset = CausalWanConfig.preset(size)
    torch.manual_seed(0)
    model = CausalWanModel(CausalWanConfig.preset(size, num_layers=num_layers), attn_backend="sdpa")
    model = model.to(device, getattr(torch, dtype)).eval().requires_grad_(False)
    model.time_embedding.float()  # as bench stream: the time embedding and projection in fp32
    model.time_projection.float()
    cfg = model.config
    h, w = height // 8, width // 8
    context = torch.randn(1, cfg.text_len, cfg.text_dim, device=device, dtype=model.patch_embedding.weight.dtype)
    generator = torch.Generator(device).manual_seed(0)

    def chunk():
        return torch.randn((1, cfg.in_dim, frames_per_chunk, h, w), generator=generator, device=device)

    caches = make_kv_caches(model, sink_frames=sink_frames, window_frames=cached_frames + frames_per_chunk)
    result = {"size": size, "layers_counted": num_layers, "layers": preset.num_layers, "dtype": dtype,
              "device": device.type, "frames_per_chunk": frames_per_chunk, "cached_frames": cached_frames,
              "sink_frames": sink_frames, "tokens_per_frame": (h // 2) * (w // 2), "passes": {}}
    with torch.inference_mode():
        x = chunk().to(context.dtype)
        for _ in range(cached_frames // frames_per_chunk):
            refresh_kv_caches(model, chunk().to(context.dtype), context, caches)

        def denoise():
            sample_chunk(model, x, context, caches, steps=flow_time_grid(1, 3.0), solver="consistency", refresh=False)

        def refresh():
            refresh_kv_caches(model, x, context, caches)

        denoise()  # warm-up
        handles = _labelled(model)
        try:
            for name, step in (("denoising forward", denoise), ("cache refresh", refresh)):
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    step()
                counts = _count(prof.events())
                per_layer = {k: v / num_layers for k, v in counts["layer"].items()}
                total_layer = sum(counts["layer"].values()) / num_layers
                outside = sum(counts["model"].values()) + sum(counts["sampler"].values())
                every = Counter({k: counts["model"][k] + counts["sampler"][k] + per_layer.get(k, 0) * preset.num_layers
                                 for k in set(per_layer) | set(counts["model"]) | set(counts["sampler"])})
                result["passes"][name] = {
                    "per_layer": total_layer,
                    "model_outside_layers": sum(counts["model"].values()),
                    "sampler": sum(counts["sampler"].values()),
                    "per_forward": outside + total_layer * preset.num_layers,
                    "top_per_layer": dict(Counter(per_layer).most_common(12)),
                    "top_outside_layers": dict((counts["model"] + counts["sampler"]).most_common(12)),
                    "top_per_forward": {k: round(v, 1) for k, v in every.most_common(12)},
                }
        finally:
            for handle in handles:
                handle.remove()
    return result


def format_counts(result: dict) -> str:
    """A readable report of :func:`count_stream_ops`."""
    lines = [f"{result['size']} ({result['layers']} layers; {result['layers_counted']} counted), {result['dtype']} on "
             f"{result['device']}: {result['frames_per_chunk']} frame(s) a chunk on {result['cached_frames']} cached "
             f"frames ({result['sink_frames']} sink), {result['tokens_per_frame']} tokens a frame"]
    for name, p in result["passes"].items():
        lines.append(f"  {name}: {p['per_forward']:.0f} ops per forward = {p['per_layer']:.0f} per layer x "
                     f"{result['layers']} + {p['model_outside_layers']} in the model outside the layers + "
                     f"{p['sampler']} in the sampler")
        for key in ("top_per_layer", "top_outside_layers", "top_per_forward"):
            lines.append(f"    {key.replace('_', ' ')}: " + ", ".join(
                f"{k.removeprefix('aten::')} {v:g}" for k, v in p[key].items()))
    return "\n".join(lines)
