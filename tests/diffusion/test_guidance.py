import pytest
import torch

from causal_rcm.diffusion import cfg, guided_velocity


def test_cfg_formula():
    cond, uncond = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0])
    torch.testing.assert_close(cfg(cond, uncond, 1.0), cond)
    torch.testing.assert_close(cfg(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(cfg(cond, uncond, 5.0), torch.tensor([8.0, -9.0]))


def test_guidance_one_is_the_conditional_prediction_in_one_call(mock_model, contexts, video_shape):
    ctx, neg = contexts
    x = torch.randn(video_shape)
    t = torch.full(video_shape[:1] + video_shape[2:3], 700.0)
    v = guided_velocity(mock_model, x, t, ctx, guidance=1.0, neg_context=neg)
    assert len(mock_model.calls) == 1
    torch.testing.assert_close(v, mock_model(x, t, ctx))


def test_guided_velocity_combines_branches(mock_model, contexts, video_shape):
    ctx, neg = contexts
    x = torch.randn(video_shape)
    t = torch.full(video_shape[:1] + video_shape[2:3], 300.0)
    v = guided_velocity(mock_model, x, t, ctx, guidance=4.0, neg_context=neg)
    v_c, v_u = mock_model(x, t, ctx), mock_model(x, t, neg)
    assert not torch.allclose(v_c, v_u)
    torch.testing.assert_close(v, v_u + 4.0 * (v_c - v_u))
    with pytest.raises(ValueError, match="neg_context"):
        guided_velocity(mock_model, x, t, ctx, guidance=4.0)


def test_guided_velocity_routes_caches(mock_model, contexts, video_shape):
    ctx, neg = contexts
    caches = (mock_model.new_kv_cache(), mock_model.new_kv_cache())
    x, t = torch.randn(video_shape), torch.zeros(video_shape[0], video_shape[2])
    guided_velocity(mock_model, x, t, ctx, guidance=2.0, neg_context=neg, kv_caches=caches, update_cache=True)
    assert [c["kv_cache"] for c in mock_model.calls] == list(caches)
    assert mock_model.calls[0]["context"] is ctx and mock_model.calls[1]["context"] is neg
    with pytest.raises(ValueError, match="second cache"):
        guided_velocity(mock_model, x, t, ctx, guidance=2.0, neg_context=neg, kv_caches=(caches[0], None))
