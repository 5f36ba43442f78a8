"""RecGOAT as a composition of its parts: each part's contribution against a reference, each ablation without its
part and its loss term (on the published method, model=recgoat, and on the MGCN-view variant, model=recgoat_mgcn),
the model end to end on tiny data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recgoat.data import DataError, RecDataset
from recgoat.models import RecGOAT
from recgoat.nn import (
    AdaptiveFusion,
    AttentionPropagation,
    FeatureGates,
    GraphAttentionEncoder,
    MLPEncoder,
    Part,
    cmcl_loss,
    info_nce,
)
from recgoat.utils.config import ConfigError, build_model
from tests.helpers import QUIET, TINY_DATA, bpr, bpr_batches, bpr_reference, run_in_process

CONF = Path(__file__).resolve().parents[1] / "conf"
SMALL = ("model.embedding_dim=16", "model.modality_branches.knn_k=5", "model.modality_branches.encoder.heads=4",
         "model.side_view.knn_k=5")


USER = ("model.user_branch.knn_k=5", "model.user_branch.encoder.heads=4")


def small_recgoat(dataset, tmp_path, *overrides: str) -> RecGOAT:
    """``model=recgoat_mgcn`` from its real config with the user LM branch as ``+experiment=with_user_llm`` adds it
    (from weight 0; every part but fusion built), at d=16, 4 heads, k=5."""
    torch.manual_seed(0)
    return build_model(dataset, ["model=recgoat_mgcn", "model/user_branch=gat", "model.user_branch.init_weight=0.0",
                                 *USER, *SMALL, f"paths.cache_dir={tmp_path}", *overrides])


def small_published(dataset, tmp_path, *overrides: str) -> RecGOAT:
    """``model=recgoat`` (the published method: every part but the side view) at d=16, 4 heads, k=5."""
    torch.manual_seed(0)
    return build_model(dataset, ["model=recgoat", *USER, *SMALL[:3], f"paths.cache_dir={tmp_path}", *overrides])


def first_batch(dataset):
    return next(iter(bpr_batches(dataset, batch_size=64, seed=0, epoch_fn=lambda: 0)))


@pytest.mark.parametrize("ui", ["lightgcn", "attention"])
def test_gradients_reach_every_part(tiny_synthetic, tmp_path, ui):
    extra = ["+experiment=ui_attention", "ablate.id_encoder.heads=4"] if ui == "attention" else []
    # the user LM weight at 1: from the default 0 the user encoder's gradient is 0 until the weight has moved
    model = small_recgoat(tiny_synthetic, tmp_path, *extra, "model.user_branch.init_weight=1.0")
    out = model.loss(first_batch(tiny_synthetic), bpr())
    assert set(out) == {"loss", "bpr", "reg", "cmcl", "oat_w1", "view_cl"}
    assert set(model.logged_values()) == {"user_llm_w"}   # a learned scalar: logged, never a loss term
    assert all(isinstance(part, Part) for part in model.parts())
    out["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []
    parts = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert parts == {"user_emb", "item_emb", "modality_branches", "side_view", "user_branch", "alignment",
                     *(["id_encoder"] if ui == "attention" else [])}   # LightGCN has no parameters


@pytest.mark.parametrize("model_name", ["recgoat", "recgoat_mgcn"])
def test_the_loss_is_bpr_plus_what_each_part_reports_weighted(tiny_synthetic, tmp_path, model_name):
    build = small_published if model_name == "recgoat" else small_recgoat
    model = build(tiny_synthetic, tmp_path).eval()
    batch = first_batch(tiny_synthetic)
    with torch.no_grad():
        out, reps = model.loss(batch, bpr()), model.representations()
        u, p, n = reps["user"][batch["user"]], reps["item"][batch["pos"]], reps["item"][batch["neg"]]
        torch.testing.assert_close(out["bpr"], bpr_reference((u * p).sum(-1), (u * n).sum(-1)))
        b = torch.unique(batch["pos"])   # CMCL towards the scored item (the fused one where there is a fusion)
        torch.testing.assert_close(out["cmcl"], cmcl_loss({m: z[b] for m, z in reps["aligned"].items()},
                                                          reps["item"][b], 0.2))
        ego = (model.user_emb[batch["user"]].norm() + model.item_emb[batch["pos"]].norm()   # MMRec's EmbLoss
               + model.item_emb[batch["neg"]].norm()) / len(batch["user"])
        torch.testing.assert_close(out["reg"], ego)
        expected = out["bpr"] + 1e-4 * out["reg"] + 0.032 * out["cmcl"] + 0.05 * out["oat_w1"]
        if model_name == "recgoat_mgcn":     # the side view's term
            (ui_u, ui_i), (side_u, side_i) = reps["views"]["ui"], reps["views"]["side"]
            u, i = batch["user"], batch["pos"]
            view = info_nce(side_i[i], ui_i[i], 0.2) + info_nce(side_u[u], ui_u[u], 0.2)
            torch.testing.assert_close(out["view_cl"], view)
            expected = expected + 0.01 * out["view_cl"]
    assert set(out) == {"loss", "bpr", "reg", "cmcl", "oat_w1", *(["view_cl"] if model_name == "recgoat_mgcn" else [])}
    torch.testing.assert_close(out["loss"], expected)


def test_the_default_scores_the_id_branch_and_the_side_view_brings_the_aligned_modalities_in(tiny_synthetic, tmp_path):
    plain = small_recgoat(tiny_synthetic, tmp_path, "model.side_view=null", "model.alignment=null").eval()
    full = small_recgoat(tiny_synthetic, tmp_path, "model.alignment=null").eval()
    full.load_state_dict(plain.state_dict(), strict=False)  # the side view's parameters are the extra ones
    nu = plain.n_users
    with torch.no_grad():
        ref = plain.representations()                        # the user-item view alone: LightGCN
        ui = torch.cat([ref["user"], ref["item_id"]])
        reps = full.representations()
        side = full.side_view(full.item_emb, ui, ref["aligned"])
        torch.testing.assert_close(reps["item_id"], ref["item_id"] + side[nu:])
        torch.testing.assert_close(reps["user"], ref["user"] + side[:nu])
        torch.testing.assert_close(reps["item"], reps["item_id"])  # no fusion: the ID branch's item is scored
    for model, reached in ((plain, False), (full, True)):    # the modality branches reach BPR through the gates
        model.train()
        model.zero_grad()
        model.loss(first_batch(tiny_synthetic), bpr())["bpr"].backward()
        grads = [p.grad for p in model.modality_branches.parameters()]
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads) == reached


def test_mgcns_own_gates_make_the_side_view_read_the_raw_features(tiny_synthetic, tmp_path):
    model = small_recgoat(tiny_synthetic, tmp_path, "+experiment=ablation_raw_gates").eval()
    assert isinstance(model.side_view.gates, FeatureGates)
    with torch.no_grad():
        reps = model.representations()
        ui = torch.cat(reps["views"]["ui"])
        raw = model.side_view(model.item_emb, ui)             # gates of its own: no aligned modalities needed
        torch.testing.assert_close(torch.cat(reps["views"]["side"]), raw)
        x = model.side_view.gates.features["text"]
        g = model.side_view.gates.projections["text"](x)
        torch.testing.assert_close(model.side_view.gates()["text"], g)
    with pytest.raises(ValueError, match="without gates of its own must be given its gate inputs"):
        small_recgoat(tiny_synthetic, tmp_path).side_view(model.item_emb, ui)


@pytest.mark.parametrize("init", [0.0, 1.0])
def test_the_user_lm_branch_is_added_with_its_learned_weight_from_its_initial_value(tiny_synthetic, tmp_path, init):
    model = small_recgoat(tiny_synthetic, tmp_path, f"model.user_branch.init_weight={init}")
    no_branch = small_recgoat(tiny_synthetic, tmp_path, "model.user_branch=null").eval()
    assert model.user_branch.weight.item() == init
    model.eval()
    no_branch.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        branch = model.user_branch.weight * model.user_branch.encoder(model.user_branch.x, model.user_branch.graph)
        torch.testing.assert_close(model.user_branch(), branch)
        same = torch.allclose(model.representations()["user"], no_branch.representations()["user"])
    assert same == (init == 0.0)
    model.train()
    model.loss(first_batch(tiny_synthetic), bpr())["loss"].backward()
    assert float(model.user_branch.weight.grad.abs()) > 0  # learned from 0 too


@pytest.mark.parametrize("detach", [False, True])
def test_detached_alignment_moves_the_modality_branches_only(tiny_synthetic, tmp_path, detach):
    model = small_recgoat(tiny_synthetic, tmp_path, "model.side_view=null",
                          f"model.alignment.detach_targets={str(detach).lower()}")
    out = model.loss(first_batch(tiny_synthetic), bpr())
    (out["cmcl"] + out["oat_w1"]).backward()
    id_side = [model.item_emb, model.user_emb]
    id_grad = sum(float(p.grad.abs().sum()) for p in id_side if p.grad is not None)
    modality_grad = sum(float(p.grad.abs().sum()) for p in model.modality_branches.parameters() if p.grad is not None)
    assert modality_grad > 0
    assert (id_grad == 0.0) == detach


def test_the_oat_map_maps_each_modality_towards_the_user_item_views_items(tiny_synthetic, tmp_path):
    model = small_recgoat(tiny_synthetic, tmp_path, "model.alignment.oat_map.warm_iters=null").eval()
    with torch.no_grad():
        reps, modal = model.representations(), model.modality_branches()
        items = reps["views"]["ui"][1]                     # the user-item view's items
        for m, z in modal.items():                          # each modality solved alone: the batched solve's plan
            plan = model.alignment.transport.plan(z, items, key=m)
            j = model.alignment.modalities.index(m)
            torch.testing.assert_close(reps["aligned"][m], z @ (plan + model.alignment.oat_map.delta[j]),
                                       atol=1e-5, rtol=1e-5)


def test_the_published_methods_fusion_is_the_methods_and_its_weights_are_learned(tiny_synthetic, tmp_path):
    model = small_published(tiny_synthetic, tmp_path).eval()
    assert model.side_view is None and not model.alignment.detach_targets
    with torch.no_grad():
        reps = model.representations()
        torch.testing.assert_close(reps["item"], model.fusion({"id": reps["item_id"], **reps["aligned"]}))
        norms = reps["item"].norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
    model.train()
    out = model.loss(first_batch(tiny_synthetic), bpr())
    out["loss"].backward()
    assert float(model.fusion.weights.grad.abs().sum()) > 0
    logged = model.logged_values()   # the fusion's weights and the user branch's go to the logger, not the loss
    assert set(logged) == {"fusion_w_id", "fusion_w_text", "fusion_w_image", "user_llm_w"}
    assert not set(logged) & set(out)
    torch.testing.assert_close(logged["fusion_w_text"], model.fusion.weights[model.fusion.names.index("text")].detach())


def test_scoring_reads_the_oat_maps_warm_start_and_training_steps_carry_it(tiny_synthetic, tmp_path):
    model = small_published(tiny_synthetic, tmp_path)
    model.loss(first_batch(tiny_synthetic), bpr())["loss"].backward()          # a training step: potentials kept
    kept = [t.clone() for _, p, q in model.alignment.transport.get_extra_state() for t in (p, q)]
    model.eval()
    users = torch.arange(model.n_users)
    first, second = model.scorer().score(users), model.scorer().score(users)
    assert torch.equal(first, second)     # the same checkpoint scores the same, however often it is evaluated
    after = [t for _, p, q in model.alignment.transport.get_extra_state() for t in (p, q)]
    assert all(torch.equal(a, b) for a, b in zip(kept, after, strict=True))
    model.train()
    model.loss(first_batch(tiny_synthetic), bpr())
    moved = [t for _, p, q in model.alignment.transport.get_extra_state() for t in (p, q)]
    assert not all(torch.equal(a, b) for a, b in zip(kept, moved, strict=True))


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("layer_norm", [True, False])
def test_fusion_is_the_layer_normed_weighted_sum_unit_norm_only_when_asked(normalize, layer_norm):
    g = torch.Generator().manual_seed(3)
    parts = {"id": torch.randn(6, 8, generator=g), "text": 3 * torch.randn(6, 8, generator=g)}
    fusion = AdaptiveFusion(["id", "text"], 8, init={"id": 0.15, "text": 0.8}, default_init=0.5, dropout=0.1,
                            normalize=normalize, layer_norm=layer_norm).eval()
    mixed = 0.15 * parts["id"] + 0.8 * parts["text"]
    expected = mixed
    if layer_norm:
        centred = mixed - mixed.mean(-1, keepdim=True)
        expected = centred / (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()  # LayerNorm at its init
    if normalize:
        expected = expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(fusion(parts), expected)


def parts_of(model) -> dict[str, bool]:
    """Which parts a built RecGOAT has, and which of its loss terms exist."""
    return {"side_view": model.side_view is not None,
            "view_cl": model.side_view is not None and model.side_view.contrast is not None,
            "raw_gates": model.side_view is not None and model.side_view.gates is not None,
            "alignment": model.alignment is not None,
            "cmcl": model.alignment is not None and model.alignment.cmcl is not None,
            "oat_map": model.alignment is not None and model.alignment.oat_map is not None,
            "oat_w1": model.alignment is not None and model.alignment.oat_w1 is not None,
            "gat": all(isinstance(e, GraphAttentionEncoder) for e in model.modality_branches.encoders.values()),
            "mlp": all(isinstance(e, MLPEncoder) for e in model.modality_branches.encoders.values()),
            "user_branch": model.user_branch is not None,
            "user_graph": model.user_branch is not None and isinstance(model.user_branch.encoder,
                                                                       GraphAttentionEncoder),
            "ui_attention": isinstance(model.id_encoder, AttentionPropagation),
            "fusion": model.fusion is not None}


PARTS = {"recgoat": {"alignment", "cmcl", "oat_map", "oat_w1", "gat", "user_branch", "user_graph", "fusion"},
         "recgoat_mgcn": {"side_view", "view_cl", "alignment", "cmcl", "oat_map", "oat_w1", "gat"}}
ABLATIONS = {  # experiment -> (parts removed, parts added), the same on each model that has the part
    "recgoat": (set(), set()),
    "ablation_no_alignment": ({"alignment", "cmcl", "oat_map", "oat_w1"}, set()),
    "ablation_no_cmcl": ({"cmcl"}, set()),
    "ablation_no_oat": ({"oat_map", "oat_w1"}, set()),
    "ablation_no_gat": ({"gat"}, {"mlp"}),
    "ablation_no_view_cl": ({"view_cl"}, set()),
    "ablation_raw_gates": (set(), {"raw_gates"}),
    "with_user_llm": (set(), {"user_branch", "user_graph"}),
    "ablation_no_user_graph": ({"user_graph"}, set()),
    "ui_attention": (set(), {"ui_attention"}),
}
NOT_ON = {"recgoat": {"ablation_no_view_cl", "ablation_raw_gates"},   # parts of the variant only
          "recgoat_mgcn": {"ablation_no_user_graph"}}                  # the variant has no user LM branch
LOSS_TERMS = {"cmcl": "cmcl", "oat_w1": "oat_w1", "view_cl": "view_cl"}
CASES = [(m, e) for m in PARTS for e in sorted(ABLATIONS) if e not in NOT_ON[m] and (e != "recgoat" or m == "recgoat")]


def ablated(dataset, tmp_path, model: str, experiment: str):
    extra = ["ablate.id_encoder.heads=4"] if experiment == "ui_attention" else []
    if model == "recgoat" or experiment == "with_user_llm":
        extra += list(USER)
    small = SMALL if model == "recgoat_mgcn" else SMALL[:3]
    torch.manual_seed(0)
    model_choice = [] if experiment == "recgoat" else [f"model={model}"]   # +experiment=recgoat names its model
    return build_model(dataset, [*model_choice, f"+experiment={experiment}", *small, *extra,
                                 f"paths.cache_dir={tmp_path}"])


@pytest.mark.parametrize("model,experiment", CASES, ids=[f"{m}+{e}" for m, e in CASES])
def test_each_ablation_swaps_its_part_of_the_chosen_model_and_its_loss_term(tiny_synthetic, tmp_path, model,
                                                                           experiment):
    built = ablated(tiny_synthetic, tmp_path, model, experiment)
    removed, added = ABLATIONS[experiment]
    has = {part for part, present in parts_of(built).items() if present}
    assert has == (PARTS[model] - removed) | added
    out = built.loss(first_batch(tiny_synthetic), bpr())
    assert {t for part, t in LOSS_TERMS.items() if part in has} == set(out) & set(LOSS_TERMS.values())
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("model,experiment,part", [
    *[("recgoat", e, p) for e, p in (("ablation_no_view_cl", "side_view.contrast"),
                                     ("ablation_raw_gates", "side_view.gates"))],
    ("recgoat_mgcn", "ablation_no_user_graph", "user_branch.encoder"),
    ("lightgcn", "ablation_no_oat", "alignment.oat_map"),
    ("mgcn", "ablation_no_gat", "modality_branches.encoder")])
def test_ablating_a_part_the_model_does_not_have_fails_naming_the_part_and_the_model(tiny_synthetic, model,
                                                                                     experiment, part):
    with pytest.raises(ConfigError, match=rf"\+experiment={experiment} swaps model part '{part}', which "
                                          rf"model={model} does not have"):
        build_model(tiny_synthetic, [f"model={model}", f"+experiment={experiment}"])


@pytest.mark.parametrize("experiment,own", [("naive_fusion", "naive_fusion"), ("id_only", "lightgcn")])
def test_an_experiment_that_trains_its_own_model_refuses_another_model(tiny_synthetic, experiment, own):
    with pytest.raises(ConfigError, match=rf"\+experiment={experiment} trains model={own}, and model=recgoat_mgcn "
                                          r"was given with it"):
        build_model(tiny_synthetic, ["model=recgoat_mgcn", f"+experiment={experiment}"])
    assert type(build_model(tiny_synthetic, [f"model={own}", f"+experiment={experiment}"])).__name__ == \
        {"naive_fusion": "NaiveFusion", "lightgcn": "LightGCN"}[own]


def test_ablating_a_part_that_is_off_fails(tiny_synthetic):
    with pytest.raises(ConfigError, match=r"swaps model part 'alignment', which model=recgoat does not have \(it is "
                                          r"off\)"):
        build_model(tiny_synthetic, ["model=recgoat", "model.alignment=null", "+experiment=ablation_no_alignment"])


def test_the_variant_without_graph_attention_is_the_published_mlp_on_the_same_features(tiny_synthetic, tmp_path):
    model = ablated(tiny_synthetic, tmp_path, "recgoat", "ablation_no_gat").eval()
    enc = model.modality_branches.encoders["text"]
    x = model.modality_branches.x_text
    with torch.no_grad():   # one layer after the projection: W_1 ELU(W_0 x + b_0) + b_1, no graph read
        expected = enc.layers[0](torch.nn.functional.elu(enc.proj(x)))
        torch.testing.assert_close(model.modality_branches()["text"], expected)


@pytest.mark.parametrize("experiment", ["naive_fusion", "id_only"])
def test_the_rows_without_recgoat_are_their_baselines(tiny_synthetic, experiment):
    model = build_model(tiny_synthetic, [f"+experiment={experiment}"])
    assert type(model).__name__ == {"naive_fusion": "NaiveFusion", "id_only": "LightGCN"}[experiment]


def test_ranking_scores_equal_training_scores_in_eval_mode(tiny_synthetic, tmp_path):
    model = small_recgoat(tiny_synthetic, tmp_path).eval()
    batch = next(iter(bpr_batches(tiny_synthetic, batch_size=64, seed=0, epoch_fn=lambda: 0)))
    with torch.no_grad():
        out = model.loss(batch, bpr())
        pos, neg = model.score_pairs(batch["user"], batch["pos"]), model.score_pairs(batch["user"], batch["neg"])
    torch.testing.assert_close(out["bpr"], bpr_reference(pos, neg))


def test_dataset_without_item_features_is_a_clear_error(tiny_synthetic):
    d = RecDataset("bare", tiny_synthetic.train, tiny_synthetic.valid, tiny_synthetic.test)
    with pytest.raises(DataError, match="RecGOAT needs item modality features.*'bare' has none"):
        build_model(d, ["model=recgoat"])
    with pytest.raises(DataError, match="user LM branch needs user features.*model.user_branch=null"):
        build_model(RecDataset("nouser", d.train, d.valid, d.test, item_features=tiny_synthetic.item_features),
                    ["model=recgoat"])


def test_missing_modality_rows_error_or_documented_fallback(tiny_synthetic, tmp_path):
    feats = {k: v.copy() for k, v in tiny_synthetic.item_features.items()}
    feats["image"][[3, 7]] = 0.0
    d = RecDataset("gap", tiny_synthetic.train, tiny_synthetic.valid, tiny_synthetic.test, item_features=feats,
                   user_features=tiny_synthetic.user_features)
    missing = r"item feature 'image': 2 of 90 rows are all zeros \(missing\), first at row 3"
    with pytest.raises(DataError, match=missing):
        small_recgoat(d, tmp_path)
    model = small_recgoat(d, tmp_path, "model.missing_features=mean")
    filled = model.modality_branches.x_image[3]
    torch.testing.assert_close(filled, torch.from_numpy(np.delete(feats["image"], [3, 7], axis=0).mean(0)))


@pytest.mark.parametrize("experiment", ["recgoat", "ablation_no_alignment"])
def test_an_experiment_trains_end_to_end_and_records_its_name(tmp_path, experiment):
    overrides = [f"+experiment={experiment}", *TINY_DATA, *QUIET, "trainer.max_epochs=2",
                 f"paths.cache_dir={tmp_path / 'cache'}", "model.modality_branches.knn_k=5"]
    res = run_in_process(overrides, tmp_path)
    assert res["name"] == experiment and len(res["valid_history"]) == 2
    assert 0.0 < res["test"]["recall@20"] <= 1.0   # 20 of 100 items: a working ranking finds some
    # the run's config is what trained: the swap applied, and what was swapped kept beside it
    assert (res["config"]["model"]["alignment"] is None) == (experiment == "ablation_no_alignment")
    assert res["config"]["ablate"] == ({"alignment": None} if experiment == "ablation_no_alignment" else None)
    assert res["config"]["model"]["fusion"] is not None and res["config"]["model"]["side_view"] is None


def test_authors_preset_composes(tmp_path):
    from tests.helpers import compose_cfg
    cfg = compose_cfg(["+experiment=authors_baby"], tmp_path)
    assert cfg.model.embedding_dim == 800 and cfg.optimizer.lr == 8e-4 and cfg.datamodule.batch_size == 4096
    assert cfg.model._target_ == "recgoat.models.RecGOAT" and cfg.model.alignment.cmcl.weight == 0.032
    assert cfg.model.side_view is None and cfg.model.fusion is not None   # the published method at d=800
