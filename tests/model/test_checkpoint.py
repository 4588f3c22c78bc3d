import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.encoding import FieldEncoder
from models.registry import Dims, build_net, net_config
from models.target import TargetTransform

HP = dict(emb_dim=8, dropout=0.0, n_experts=2, expert_hidden=[16, 8], tower_hidden=[8], kl_weight=1.0, pooling="sum",
          attention="field", treated_head="outcome", balanced=False, control="mean",
          treated_input="treated", detach_control=False, control_grad=1.0, offset_mean=0.0, experts="branch", offset_init="zero",
          offset_tower="response")


def test_checkpoint_loads_weights_only_and_predicts_the_same(tmp_path):
    import pandas as pd

    enc = FieldEncoder(["c"], ["x"], 4).fit(pd.DataFrame({"c": [1, 2, 3], "x": [0.1, 0.5, 3.0]}))
    conf = net_config("hum", Dims(2, enc.vocab_size, 2, 2), HP)
    torch.manual_seed(0)
    net = build_net("hum", conf)
    target = TargetTransform("log1p", (2.0, 3.0))
    v1 = save_checkpoint(tmp_path / "m.pt", "hum", conf, net, enc, {"target": target.state(), "seed": 1})
    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # no pickled code needed
    assert raw["meta"]["version"] == v1
    ck = load_checkpoint(tmp_path / "m.pt")
    x = torch.randint(0, enc.vocab_size, (16, 2))
    assert torch.equal(ck.net.predict_mu(x), net.eval().predict_mu(x))
    assert ck.target == target and ck.version == v1
    assert (ck.encoder.offsets_ == enc.offsets_).all()
    # Same weights, same version; other weights, another version.
    assert save_checkpoint(tmp_path / "b.pt", "hum", conf, net, enc, {"target": target.state()}) == v1
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    assert save_checkpoint(tmp_path / "c.pt", "hum", conf, net, enc, {"target": target.state()}) != v1
