import pytest
import torch

from causal_rcm.data.shapes import ShapesConfig, ShapesDataset
from causal_rcm.data.text import ToyTextEncoder, ToyTokenizer
from causal_rcm.errors import UserError


def test_tokenizer_words_and_ids():
    tok = ToyTokenizer()
    assert tok.words("A red circle moves left, a blue square moves up.") == [
        "a", "red", "circle", "moves", "left", ",", "a", "blue", "square", "moves", "up",
    ]
    ids, mask = tok(["a red circle moves left", ""], max_length=8)
    assert ids.shape == (2, 8) and mask.tolist()[1] == [True] + [False] * 7
    assert ids[0, 5].item() == tok.eos_id and ids[1, 0].item() == tok.eos_id and mask[0].sum() == 6


def test_every_dataset_caption_is_in_vocabulary():
    tok = ToyTokenizer()
    for cfg in (ShapesConfig(num_frames=2), ShapesConfig(num_frames=2, agent=True)):
        for text in ShapesDataset(cfg, seed=0).batch(40)["caption"]:
            assert len(tok.encode(text)) <= 32


def test_unknown_words_raise_user_error_naming_them():
    with pytest.raises(UserError, match=r"outside the shapes-world vocabulary: 'purple', 'hexagon' \(known: .*'circle'"):
        ToyTextEncoder()(["a purple hexagon moves left", "a red purple circle"])
    with pytest.raises(UserError, match="more than the text length 4"):
        ToyTextEncoder(text_len=4)(["a red circle moves left"])


def test_encoder_shapes_padding_determinism_and_order():
    enc = ToyTextEncoder(dim=48, text_len=24, seed=3)
    prompts = ["a red circle moves left, a blue square moves up", "a blue circle moves left, a red square moves up", ""]
    ctx, mask = enc(prompts)
    assert ctx.shape == (3, 24, 48) and ctx.dtype == torch.float32 and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [12, 12, 1]
    assert (ctx[~mask] == 0).all()  # zero padding, like Wan pads UMT5 outputs
    rms = ctx[mask].pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-4)
    # same bag of words, different binding -> different context, also at the swapped colour words
    assert (ctx[0, 1] - ctx[1, 1]).abs().max() > 0.1 and (ctx[0, 8] - ctx[1, 8]).abs().max() > 0.1
    # the context of a word depends on its neighbours: "circle" after red vs after blue
    assert (ctx[0, 2] - ctx[1, 2]).abs().max() > 0.05
    again, _ = ToyTextEncoder(dim=48, text_len=24, seed=3)(prompts)
    assert torch.equal(ctx, again)
    other, _ = ToyTextEncoder(dim=48, text_len=24, seed=4)(prompts)
    assert not torch.allclose(ctx, other)
    assert list(enc.parameters()) == [] and enc.state_dict() == {}
