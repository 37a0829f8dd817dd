"""The functional BERT on a tiny random configuration: shapes, masks, attention paths, differentiability."""

import pytest
import torch

from ddattn.errors import UserError
from ddattn.files import load_pretrained, read_bert_config, write_bert_config
from ddattn.method.attention import AttentionBackward, RecomputedAttention
from ddattn.method.bert import bert_forward, param_shapes
from ddattn.method.unroll import attention_kl
from tests.helpers import TINY, tiny_inputs, tiny_theta


def test_shapes_and_attention_rows():
    theta = tiny_theta()
    ids, types, mask = tiny_inputs()
    out = bert_forward(theta, TINY, ids, token_type_ids=types, attention_mask=mask, attention_type="all")
    B, S, L, H = 3, 8, TINY.num_layers, TINY.num_heads
    assert out.logits.shape == (B, 2) and out.pooled.shape == (B, TINY.hidden_size)
    assert out.cls_scores.shape == (B, L, H, S) and out.scores.shape == (B, L, H, S, S)
    torch.testing.assert_close(out.cls_attention.sum(-1), torch.ones(B, L, H, dtype=torch.float64))
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(B, L, H, S, dtype=torch.float64))
    padded = (mask == 0)[:, None, None, :].expand(B, L, H, S)
    assert torch.all(out.cls_attention[padded] == 0)  # exactly zero, not tiny
    assert torch.all(out.attention[padded[:, :, :, None, :].expand(B, L, H, S, S)] == 0)
    torch.testing.assert_close(out.attention[:, :, :, 0], out.cls_attention)


def test_padding_does_not_change_real_tokens():
    theta = tiny_theta()
    ids, types, mask = tiny_inputs()
    short = bert_forward(theta, TINY, ids[2:, :3], token_type_ids=types[2:, :3])
    padded = bert_forward(theta, TINY, ids[2:], token_type_ids=types[2:], attention_mask=mask[2:])
    torch.testing.assert_close(padded.logits, short.logits)
    torch.testing.assert_close(padded.cls_attention[..., :3], short.cls_attention)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_paths_agree(masked):
    """Fused SDPA, the recomputing Function and the plain ops give the same outputs and gradients."""
    theta = {k: v.requires_grad_() for k, v in tiny_theta().items()}
    ids, types, mask = tiny_inputs()
    mask = mask if masked else None
    runs = [
        bert_forward(theta, TINY, ids, token_type_ids=types, attention_mask=mask, attention_type=a, fused=f)
        for a, f in [("cls", True), ("cls", False), ("all", False)]
    ]
    for out in runs[1:]:
        torch.testing.assert_close(out.logits, runs[0].logits)
        torch.testing.assert_close(out.cls_scores, runs[0].cls_scores)
    grads = [
        torch.autograd.grad((out.logits**2).sum() + out.cls_attention.sum(), theta["layers.0.attention.qkv.weight"])
        for out in runs
    ]
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0])


def test_inputs_embeds_replace_the_word_lookup():
    theta = tiny_theta()
    ids, types, _ = tiny_inputs()
    by_ids = bert_forward(theta, TINY, ids, token_type_ids=types)
    by_embeds = bert_forward(theta, TINY, inputs_embeds=theta["embeddings.word"][ids], token_type_ids=types)
    torch.testing.assert_close(by_embeds.logits, by_ids.logits)


def test_recomputed_attention_gradgradcheck():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    attention = lambda q, k, v: RecomputedAttention.apply(q, k, v, "cpu")  # noqa: E731
    assert torch.autograd.gradcheck(attention, (q, k, v))
    assert torch.autograd.gradgradcheck(attention, (q, k, v))


def test_attention_double_backward_gradcheck():
    """AttentionBackward's hand-written backward (attention's double backward) against finite differences,
    and its own derivative (third order) too."""
    g = torch.Generator().manual_seed(2)
    q, k, v, grad_context = (
        torch.randn(2, 2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4)
    )
    backward = lambda *tensors: AttentionBackward.apply(*tensors, "cpu")  # noqa: E731
    assert torch.autograd.gradcheck(backward, (q, k, v, grad_context))
    assert torch.autograd.gradgradcheck(backward, (q, k, v, grad_context))


def test_attention_kl_gradgradcheck():
    g = torch.Generator().manual_seed(1)
    labels, scores = (torch.randn(2, 3, 6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(attention_kl, (labels, scores))
    assert torch.autograd.gradgradcheck(attention_kl, (labels, scores))


def test_too_long_input_is_refused():
    theta = tiny_theta()
    with pytest.raises(ValueError, match="exceeds"):
        bert_forward(theta, TINY, torch.ones(1, TINY.max_positions + 1, dtype=torch.long))


def test_load_pretrained_reports_every_problem(tmp_path):
    from safetensors.torch import save_file

    theta = tiny_theta(dtype=torch.float32)
    tensors = {k: v for k, v in theta.items() if not k.startswith("classifier")}
    del tensors["pooler.bias"]
    tensors["layers.0.ffn.up.weight"] = torch.zeros(3, 3)
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, tmp_path / "model.safetensors")
    write_bert_config(TINY, tmp_path / "config.json")
    with pytest.raises(UserError) as e:
        load_pretrained(tmp_path)
    message = str(e.value)
    assert "missing pooler.bias" in message and "unexpected extra.weight" in message
    assert "layers.0.ffn.up.weight has shape (3, 3)" in message and "\n" not in message


def test_config_round_trip(tmp_path):
    write_bert_config(TINY, tmp_path / "config.json")
    assert read_bert_config(tmp_path / "config.json") == TINY
    (tmp_path / "bad.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(UserError, match="not a ddattn BERT config"):
        read_bert_config(tmp_path / "bad.json")
    assert len(param_shapes(TINY)) == 5 + 12 * TINY.num_layers + 2
