"""Post-training Memory Caching (paper §4.3): a plain model read through an unlearned average of
cached memories (layers.with_caching and the "mean" gate)."""
import torch

from minimc.caching import gate, memory_caching
from minimc.layers import MemoryLayer, tiny_lm, with_caching


def _model():
    torch.manual_seed(0)
    return tiny_lm("linear", vocab_size=32).double().eval()


def test_mean_gate_is_a_uniform_average_of_the_memories_a_token_may_read():
    scores, online = torch.randn(2, 5, 3), torch.randn(2, 5)
    valid = torch.tensor([[False] * 3, [True, False, False], [True, True, False], [True] * 3,
                          [True] * 3])
    g, selected = gate(scores, online, valid, "mean", top_k=2)
    assert selected is None
    n = valid.sum(-1).double() + 1                                    # cached ones + the online one
    torch.testing.assert_close(g[..., -1], (1 / n).expand(2, 5).to(g.dtype))
    torch.testing.assert_close(g[..., :3], (valid / n[:, None]).expand(2, 5, 3).to(g.dtype))


def test_one_segment_is_the_trained_model():
    model, ids = _model(), torch.randint(32, (2, 40))
    cached = with_caching(model, segment_len=64)
    torch.testing.assert_close(cached(ids), model(ids))
    assert model.blocks[0].mixer.caching is None, "the trained model is left alone"


def test_independent_mean_of_a_linear_memory_is_the_plain_memory_rescaled():
    """The sum of independent segment states is the whole-prefix state (Eq. 12-13), so their mean is
    the plain readout / (n + 1): the per-head RMSNorm undoes the scale."""
    q, k, v = (torch.rand(1, 24, 2, 4, dtype=torch.float64) for _ in range(3))
    o = memory_caching(q, k, v, variant="mean", segment_len=5, mode="independent", memory="linear")
    plain = memory_caching(q, k, v, variant="grm", segment_len=100, memory="linear")
    n = torch.arange(24) // 5 + 1
    torch.testing.assert_close(o * n[None, :, None, None], plain)
    model, ids = _model(), torch.randint(32, (2, 40))
    torch.testing.assert_close(with_caching(model, segment_len=8, mode="independent")(ids),
                               model(ids), atol=1e-4, rtol=1e-4)        # only RMSNorm's eps differs


def test_checkpoint_mean_changes_the_readout_and_streams():
    model, ids = _model(), torch.randint(32, (1, 20))
    cached = with_caching(model, segment_len=4)
    assert not torch.allclose(cached(ids), model(ids))
    layer = cached.blocks[0].mixer
    assert isinstance(layer, MemoryLayer) and layer.caching["variant"] == "mean"
    x = cached.embed(ids)
    x = cached.blocks[0].norm1(x)
    s = layer.stream()
    steps = torch.cat([s.step(x[:, t:t + 1]) for t in range(20)], 1)
    torch.testing.assert_close(steps, layer(x))
