"""SMORE and MENTOR: their parts and loss terms against brute-force (dense, float64) references of their equations."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recgoat.graphs import normalized_bipartite_adjacency, sym_normalize
from recgoat.models.mentor import MentorBranch, gaussian_gap
from recgoat.models.smore import SpectrumFusion, elementwise_max
from tests.helpers import bpr
from tests.test_baselines import MENTOR, SMORE, build, first_batch


def dense(m) -> torch.Tensor:
    return torch.from_numpy(sp.csr_matrix(m).toarray()).double()


def lin(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A linear layer in float64."""
    return F.linear(x, layer.weight.double(), None if layer.bias is None else layer.bias.double())


def knn_reference(x: np.ndarray, k: int, weighted: bool) -> torch.Tensor:
    """MMRec's item graph written out: each row's top-k by cosine (itself included), then D^-1/2 A D^-1/2."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    a = np.zeros_like(sim, dtype=np.float64)
    for i in range(len(x)):
        top = np.argsort(-sim[i], kind="stable")[:k]
        a[i, top] = sim[i, top] if weighted else 1.0
    deg = a.sum(1)
    return torch.from_numpy(a / np.sqrt(deg)[:, None] / np.sqrt(deg)[None, :])


def dft_filter(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``irfft(rfft(x) * w)`` (orthonormal) by the explicit DFT sums, the full Hermitian spectrum built by hand."""
    d = x.shape[1]
    n = torch.arange(d, dtype=torch.float64)
    basis = torch.exp(-2j * math.pi * n[:, None] * n[None, :] / d)           # [d (k), d (n)]
    spectrum = (x.to(torch.complex128) @ basis.T) / math.sqrt(d)              # [rows, d]
    half = d // 2 + 1
    full_w = torch.cat([w, w[1: d - half + 1].flip(0).conj()])                # w_{d-k} = conj(w_k)
    return ((spectrum * full_w) @ basis.conj()).real / math.sqrt(d)


def test_spectrum_fusion_filters_and_fuses_by_the_explicit_dft():
    torch.manual_seed(0)
    d = 10
    x = {"text": torch.randn(7, d, dtype=torch.float64), "image": torch.randn(7, d, dtype=torch.float64)}
    fusion = SpectrumFusion(["text", "image"], d).double()
    for p in [*fusion.filters.values(), fusion.fusion_filter]:   # real DC / Nyquist: what irfft keeps of them
        p.data[0, [0, -1], 1] = 0
    denoised, fused = fusion(x)
    for m in x:
        w = torch.view_as_complex(fusion.filters[m].data)[0]
        torch.testing.assert_close(denoised[m], dft_filter(x[m], w))
    # the product of two spectra is the circular convolution of the modalities (divided by sqrt(d), orthonormal)
    fusion.fusion_filter.data[..., 0], fusion.fusion_filter.data[..., 1] = 1.0, 0.0
    _, fused = fusion(x)
    a, b = x["text"], x["image"]
    conv = torch.stack([sum(a[:, k] * b[:, (j - k) % d] for k in range(d)) for j in range(d)], dim=1)
    torch.testing.assert_close(fused, conv / math.sqrt(d))


def test_the_fusion_graph_is_the_elementwise_max_over_the_union():
    rng = np.random.default_rng(1)
    graphs = [sp.random(30, 30, density=0.15, random_state=s, dtype=np.float32) for s in (1, 2, 3)]
    graphs[1].data -= 0.5                                          # some negative weights: kept where alone
    for g in graphs:
        g.data[rng.random(g.nnz) < 0.1] = 0.25
    stacked = np.stack([np.where(sp.csr_matrix(g).toarray() != 0, sp.csr_matrix(g).toarray(), -np.inf)
                        for g in graphs])
    expected = np.max(stacked, axis=0)
    expected[np.isinf(expected)] = 0
    out = elementwise_max(graphs)
    np.testing.assert_array_equal(out.toarray(), expected.astype(np.float32))
    union = sum(abs(sp.csr_matrix(g)) for g in graphs)
    assert out.nnz == union.nnz


def test_smore_scores_are_its_equations_written_densely(tiny_synthetic, tmp_path):
    ds = tiny_synthetic
    model = build(SMORE, ds, tmp_path, "model.n_ui_layers=2", "model.n_layers=2").eval()
    n_users, k = ds.n_users, 5
    with torch.no_grad():
        users, items = model()
        r = normalized_bipartite_adjacency(ds.train)
        adj, r_hat = dense(r), dense(r[:n_users, n_users:])
        graphs = {m: knn_reference(ds.item_features[m], k, weighted=True) for m in ("text", "image")}
        graphs["fusion"] = torch.maximum(graphs["text"], graphs["image"])      # positive weights here
        x = {m: lin(model.projections[m], torch.from_numpy(ds.item_features[m]).double()) for m in ("text", "image")}
        w = {m: torch.view_as_complex(model.spectrum.filters[m].data.double())[0] for m in x}
        filtered = {m: dft_filter(x[m], w[m]) for m in x}
        spectra = {m: torch.fft.rfft(x[m], dim=1, norm="ortho") for m in x}
        filtered["fusion"] = torch.fft.irfft(spectra["text"] * spectra["image"] * torch.view_as_complex(
            model.spectrum.fusion_filter.data.double())[0], n=x["text"].shape[1], dim=1, norm="ortho")
        e_u, e_i = model.user_emb.double(), model.item_emb.double()
        ego = torch.cat([e_u, e_i])
        content = (ego + adj @ ego + adj @ adj @ ego) / 3
        side = {}
        for v, f in filtered.items():
            h = e_i * torch.sigmoid(lin(model.purifiers[v][0], f))
            h = graphs[v] @ (graphs[v] @ h)
            side[v] = torch.cat([r_hat @ h, h])
        query = {m: lin(model.queries[m][2], torch.tanh(lin(model.queries[m][0], side["fusion"]))) for m in x}
        parts = [torch.sigmoid(lin(model.preferences[m][0], content)) * torch.softmax(query[m], -1) * side[m]
                 for m in ("text", "image")]
        parts.append(torch.sigmoid(lin(model.preferences["fusion"][0], content)) * side["fusion"])
        z = (content + sum(parts) / 3).float()
    torch.testing.assert_close(users, z[:n_users], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(items, z[n_users:], rtol=1e-4, atol=1e-5)


def test_smore_needs_a_knn_k_for_every_modality(tiny_synthetic, tmp_path):
    with pytest.raises(ValueError, match=r"model.knn_k has no entry for modality \['image'\].*model.knn_k.image=10"):
        build(SMORE, tiny_synthetic, tmp_path, "~model.knn_k.image")


def test_mentor_branch_is_normalised_input_plus_summed_propagations():
    torch.manual_seed(0)
    adj = sym_normalize(sp.random(9, 9, density=0.4, random_state=0) + sp.random(9, 9, density=0.4, random_state=0).T)
    branch = MentorBranch(n_users=4, in_dim=6, dim=3)
    items = torch.randn(5, 6)
    a = torch.from_numpy(adj.toarray()).float()
    out = branch(items, torch.from_numpy(adj.toarray()).to_sparse_csr(), n_layers=2, noise=0.0)
    x = torch.cat([branch.preference, branch.mlp[2](F.leaky_relu(branch.mlp[0](items), 0.01))])
    x = x / x.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out, x + a @ x + a @ a @ x)
    # the perturbation adds, after each propagation, a vector of norm `noise` with the sign pattern of the layer
    torch.manual_seed(1)
    noisy = branch(items, torch.from_numpy(adj.toarray()).to_sparse_csr(), n_layers=1, noise=0.1)
    delta = noisy - (x + a @ x)
    nonzero = (a @ x != 0).all(1)
    torch.testing.assert_close(delta[nonzero].norm(dim=1), torch.full((int(nonzero.sum()),), 0.1))
    assert (torch.sign(delta[nonzero]) == torch.sign((a @ x)[nonzero])).all()


def test_mentor_loss_terms_are_its_equations_written_densely(tiny_synthetic, tmp_path):
    ds = tiny_synthetic
    model = build(MENTOR, ds, tmp_path, "model.noise=0", "model.dropout=0", "model.reg_weight=0.3",
                  "model.align_weight=0.2", "model.mask_weight_g=0.05", "model.mask_weight_f=1.5").train()
    batch = first_batch(ds)
    n_users = ds.n_users
    with torch.no_grad():
        out = model.loss(batch, bpr())
        adj = dense(normalized_bipartite_adjacency(ds.train))
        s = 0.1 * knn_reference(ds.item_features["image"], 5, weighted=False) \
            + 0.9 * knn_reference(ds.item_features["text"], 5, weighted=False)

        def branch(b, items):
            x = torch.cat([b.preference.double(), lin(b.mlp[2], F.leaky_relu(lin(b.mlp[0], items), 0.01))])
            x = x / x.norm(dim=1, keepdim=True)
            return x + adj @ x + adj @ adj @ x

        feats = {m: torch.from_numpy(ds.item_features[m]).double() for m in model.modalities}

        def table(users, items):
            return torch.cat([users, items + s @ items])

        def final(branches):
            reps = [branch(branches[m], feats[m]) for m in model.modalities]
            weights = model.user_weights.double()
            return table(torch.cat([weights[:, j] * r[:n_users] for j, r in enumerate(reps)], 1),
                         torch.cat([r[n_users:] for r in reps], 1)), reps

        z, reps = final(model.branches)
        wide = [r.repeat(1, 2) for r in [branch(model.guide, model.item_id.double()), *reps]]
        tables = [z, *(table(t[:n_users], t[n_users:]) for t in wide)]
        u, p, n = z[batch["user"]], z[batch["pos"] + n_users], z[batch["neg"] + n_users]
        bpr2 = -torch.log2(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()     # the authors' base-2 BPR
        reg = sum((model.branches[m].preference[batch["user"]].double() ** 2).mean() for m in model.modalities) \
            + (model.user_weights.double() ** 2).mean()
        align = sum((a.var() - b.var()).abs() + (a.mean() - b.mean()).abs()
                    for a, b in itertools.combinations(tables, 2))

        def info_nce(a, b, tau):
            a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
            return -torch.log(torch.exp((a * b).sum(1) / tau) / torch.exp(a @ b.T / tau).sum(1)).mean()

        n1, n2 = final(model.noisy[0])[0], final(model.noisy[1])[0]
        perturbation = info_nce(n1[:n_users], n2[:n_users], 0.2) + info_nce(n1[n_users:], n2[n_users:], 0.2)
        mz = lin(model.masking, z)
        masking = 2 - F.cosine_similarity(z[:n_users], mz[:n_users]).mean() \
            - F.cosine_similarity(z[n_users:], mz[n_users:]).mean()
    for key, expected in {"bpr": bpr2 * math.log(2), "reg": reg, "align": align, "perturbation": perturbation,
                          "masking": masking}.items():
        torch.testing.assert_close(out[key], expected.float(), rtol=1e-4, atol=1e-6, msg=key)
    torch.testing.assert_close(out["loss"], (bpr2 + 0.3 * reg + 0.2 * align + 0.05 * perturbation + 1.5 * masking)
                               .float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gaussian_gap(tables[0], tables[1]), (tables[0].var() - tables[1].var()).abs()
                               + (tables[0].mean() - tables[1].mean()).abs())


def test_mentor_masking_term_trains_nothing_and_the_rest_reaches_every_parameter(tiny_synthetic, tmp_path):
    model = build(MENTOR, tiny_synthetic, tmp_path).train()
    out = model.loss(first_batch(tiny_synthetic), bpr())
    assert not out["masking"].requires_grad and not any(p.requires_grad for p in model.masking.parameters())
    grads = torch.autograd.grad(out["perturbation"], list(model.noisy.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)
