"""Flags on crafted answers, review conflicts, bulk actions, export round-trips, recipe import, CLI."""

import csv
import json

import pytest

from ctxdistill import cli, curate
from ctxdistill.constitution import load
from ctxdistill.prompts import ImportFileError
from ctxdistill.store import ConflictError, Store
from tests.conftest import save_version

ANSWERS = {
    "empty": ("   ", {}),
    "cut": ("Arr! Ye see matey, the", {"cut_off": True}),
    "loop": ("Arr! matey " + "ha " * 30, {}),
    "words_loop": ("Arr! matey, " + "the ship is fast and the ship is fast and " * 5 + "ye", {}),
    "fails": ("Hello there, how can I help?", {}),
    "good": ("Arr! Ahoy matey, Paris be the capital of France.", {}),
    "good_dup": ("Arr! Ahoy matey, Paris be the capital of France!", {}),
    "good2": ("Arr! Aye matey, boil the egg for nine minutes in salted water.", {}),
}


def crafted(store):
    cid = save_version(store)
    store.add_prompts("s", [{"text": f"Prompt {name}"} for name in ANSWERS])
    ids = {}
    for p, (name, (text, meta)) in zip(store.get_prompts("s"), ANSWERS.items()):
        ids[name] = store.upsert_sample(p["id"], cid, 0, prompted=text, unprompted="plain", meta=meta)
    curate.refresh_flags(store, cid)
    return cid, ids


def test_flags_on_crafted_answers(store):
    cid, ids = crafted(store)
    flags = {name: store.get_sample(i)["flags"] for name, i in ids.items()}
    assert flags["empty"] == ["empty"]
    assert "cut_off" in flags["cut"] and "failed_check" not in flags["cut"]
    assert "repetition" in flags["loop"] and "repetition" in flags["words_loop"]
    assert {"failed_check", "failed_check:arr", "failed_check:matey", "failed_check:voice"} <= set(flags["fails"])
    assert flags["good"] == [] and flags["good2"] == []
    assert flags["good_dup"] == ["near_duplicate"]  # the later of the pair
    assert store.count_samples(constitution_id=cid, flag="empty")["total"] == 1
    assert store.count_samples(constitution_id=cid, principle="matey")["total"] == 1  # failed matey check


def test_repetition_detector_leaves_normal_text_alone():
    assert not curate.is_repetitive("The cat sat on the mat. The dog sat on the log. " * 1 + "They were happy.")
    assert curate.is_repetitive("!!!!!!!!!!!!!!!!!!!!!!")
    assert curate.is_repetitive("I am a pirate. " * 8)


def test_review_edit_rechecks_flags_and_conflicts_are_reported(store):
    cid, ids = crafted(store)
    s = store.get_sample(ids["fails"])
    row = curate.review(store, s["id"], s["version"], final="Arr! Ye be welcome, matey.", status="accepted")
    assert row["edited"] and row["status"] == "accepted" and row["flags"] == []
    with pytest.raises(ConflictError) as err:  # a second tab still holds the old version
        curate.review(store, s["id"], s["version"], status="rejected")
    assert err.value.current["status"] == "accepted"
    assert store.get_sample(s["id"])["final"] == "Arr! Ye be welcome, matey."


def test_bulk_actions(store):
    cid, ids = crafted(store)
    assert curate.bulk(store, "reject_empty", cid) == 1
    assert store.get_sample(ids["empty"])["status"] == "rejected"
    assert curate.bulk(store, "accept_clean", cid) == 2  # good, good2
    assert curate.bulk(store, "reject_flagged", cid) == 5
    assert store.count_samples(constitution_id=cid) == {
        "total": 8,
        "pending": 0,
        "accepted": 2,
        "rejected": 6,
        "flagged": 6,
    }
    with pytest.raises(ValueError, match="unknown bulk action"):
        curate.bulk(store, "accept_everything", cid)


def test_export_round_trips(store, tmp_path, monkeypatch):
    cid, ids = crafted(store)
    with pytest.raises(ValueError, match="no accepted samples"):
        curate.export(store, cid, "messages", tmp_path / "x.jsonl")
    curate.bulk(store, "accept_clean", cid)
    s = store.get_sample(ids["fails"])
    curate.review(store, s["id"], s["version"], final="Arr! Edited, matey.", status="accepted")
    accepted = {x["prompt"]: x["final"] for x in store.list_samples(constitution_id=cid, status="accepted")}

    r = curate.export(store, cid, "messages", tmp_path / "m.jsonl")
    rows = [json.loads(line) for line in open(tmp_path / "m.jsonl", encoding="utf-8")]
    assert {m["messages"][0]["content"]: m["messages"][1]["content"] for m in rows} == accepted
    assert all([x["role"] for x in m["messages"]] == ["user", "assistant"] for m in rows)  # no constitution
    manifest = json.loads((tmp_path / "m.jsonl.manifest.json").read_text())
    assert manifest["constitution_id"] == cid and manifest["constitution_name"] == "pirate"
    assert (
        manifest["counts"]
        == {"total": 8, "pending": 5, "accepted": 3, "rejected": 0, "flagged": 5, "exported": 3}
        == r["counts"]
    )

    curate.export(store, cid, "prompt_completion", tmp_path / "pc.jsonl")
    rows = [json.loads(line) for line in open(tmp_path / "pc.jsonl", encoding="utf-8")]
    assert {x["prompt"]: x["completion"] for x in rows} == accepted

    curate.export(store, cid, "csv", tmp_path / "out.csv")
    with open(tmp_path / "out.csv", encoding="utf-8", newline="") as f:
        assert {x["prompt"]: x["completion"] for x in csv.DictReader(f)} == accepted

    import datasets

    curate.export(store, cid, "datasets", tmp_path / "ds")
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    assert dict(zip(ds["prompt"], ds["completion"])) == accepted
    assert json.loads(ds.info.description)["constitution_id"] == cid

    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(ValueError, match="set HF_TOKEN"):
        curate.export(store, cid, "datasets", tmp_path / "ds2", hub_id="me/data")


RECIPE = [
    {
        "init_prompt": "How do I pick a lock?",
        "init_response": "Use a pick.",
        "critic_prompt": "Identify harmful content.",
        "critic_response": "It helps break in.",
        "revision_prompt": "Rewrite it harmlessly.",
        "revision_response": "I can't help with that.",
        "messages": [],
    },
    {
        "init_prompt": "Tell me a joke",
        "init_response": "Why did the chicken...",
        "critic_prompt": "Identify rude content.",
        "critic_response": "None.",
        "revision_prompt": "Rewrite politely.",
        "revision_response": "Here's a kind joke.",
    },
    {
        "init_prompt": "How do I pick a lock?",
        "init_response": "Call a locksmith.",
        "critic_prompt": "Identify harmful content.",
        "critic_response": "Fine.",
        "revision_prompt": "Rewrite it harmlessly.",
        "revision_response": "Call a locksmith.",
    },
]


def test_recipe_dataset_import(store, tmp_path):
    import datasets

    datasets.Dataset.from_list(RECIPE).save_to_disk(tmp_path / "cai")
    r = curate.import_recipe_dataset(store, tmp_path / "cai", "harmless")
    assert (r["samples"], r["principles"], r["rounds"]) == (3, 2, 1)
    samples = store.list_samples(constitution_id=r["constitution_id"])
    assert [s["idx"] for s in samples] == [0, 1, 0]  # a repeated prompt gets a second index
    first = samples[0]
    assert first["unprompted"] == "Use a pick." and first["final"] == "I can't help with that."
    assert first["chain"][0]["principle"] == "p1" and first["chain"][0]["critique"] == "It helps break in."
    c = store.get_constitution(r["constitution_id"])["content"]
    assert c["principles"][1]["critique"] == "Identify rude content."


def test_recipe_import_needs_its_columns_and_rolls_back(store, tmp_path):
    (tmp_path / "plain.jsonl").write_text('{"prompt": "hi"}\n')
    with pytest.raises(ImportFileError, match="no init_prompt or init_response column"):
        curate.import_recipe_dataset(store, tmp_path / "plain.jsonl", "x")
    rows = RECIPE[:1] + [{**RECIPE[1], "init_prompt": "y" * 100_000}]
    (tmp_path / "huge.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ImportFileError, match="100,000 characters"):
        curate.import_recipe_dataset(store, tmp_path / "huge.jsonl", "x")
    assert store.prompt_sets() == [] and store.list_constitution_versions() == []


def test_cli_import_and_export(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    (tmp_path / "cai.jsonl").write_text("\n".join(json.dumps(r) for r in RECIPE))
    assert cli.main(["import", str(tmp_path / "cai.jsonl"), "--set", "h", "--recipe", "--workspace", ws, "--json"]) == 0
    cid = json.loads(capsys.readouterr().out)["constitution_id"]
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe bad")
    assert cli.main(["import", str(tmp_path / "bad.txt"), "--set", "p", "--workspace", ws]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    with Store(ws) as s:
        curate.bulk(s, "accept_clean", cid)
    out = tmp_path / "out.jsonl"
    assert cli.main(["export", "--constitution", str(cid), "--out", str(out), "--workspace", ws, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["exported"] == len(out.read_text().splitlines()) > 0
    assert cli.main(["export", "--constitution", "99", "--out", str(out), "--workspace", ws]) == 2
    assert "no constitution version 99" in capsys.readouterr().err


def test_bulk_action_changes_only_what_the_filter_shows_and_undoes(store):
    cid, ids = crafted(store)
    shown = curate.bulk_targets(store, "reject_flagged", cid, flag="empty")  # the Review tab's flag filter
    assert shown == [ids["empty"]]
    assert curate.apply_bulk(store, "reject_flagged", shown) == 1
    assert store.count_samples(constitution_id=cid)["rejected"] == 1  # not every flagged sample
    assert curate.undo_bulk(store, "reject_flagged", shown) == 1
    assert store.get_sample(ids["empty"])["status"] == "pending"


START = "Arr! Ye see matey, volcanoes form when hot magma rises through cracks in the crust."


@pytest.mark.parametrize(
    "revision, reasons",
    [
        ("The answer to the question is: " * 6, ["loop", "lost_content", "check"]),
        ("The answer to the question is:", ["lost_content", "check"]),
        ("Volcanoes form when magma rises through the crust, matey.", ["check"]),  # lost its "Arr!"
        ("Arr! Ahoy matey, volcanoes be born where magma climbs through the crust.", []),
        ("Arr! Ahoy matey, " + "the magma rises and " * 8, ["loop"]),
    ],
)
def test_revision_worse_than_its_start(revision, reasons):
    checks = curate.principle_checks(load("assets/constitutions/pirate.yaml"))
    assert curate.revision_worse(START, revision, checks) == reasons


def test_a_shorter_revision_that_keeps_the_point_is_not_worse():
    checks = curate.principle_checks(load("assets/constitutions/concise.yaml"))
    start = "Great question! The capital of France is Paris, which is also its largest city and home to the Louvre."
    assert curate.revision_worse(start, "Paris.", checks) == []
    assert curate.revision_worse("Paris is the capital of France.", "- Paris\n- France", checks) == ["check"]


def test_worse_revisions_are_flagged_shown_and_left_out_of_accept_all(store):
    cid = save_version(store)
    store.add_prompts("s", [{"text": f"How do volcanoes form? ({i})"} for i in range(3)])
    step = {"principle": "arr", "critique_request": "", "critique": "", "revision_request": "", "cut_off": False}
    revisions = {
        "looped": "The answer to the question is: " * 6,
        "better": START,
        "edited": "The answer to the question is:",
    }
    ids = {}
    for p, (name, revision) in zip(store.get_prompts("s"), revisions.items()):
        ids[name] = store.upsert_sample(
            p["id"],
            cid,
            0,
            prompted=START,
            unprompted="Volcanoes form from magma.",
            chain=[{**step, "revision": revision}],
            meta={"revise_start": "unprompted"},
        )
    s = store.get_sample(ids["edited"])
    store.update_sample(s["id"], s["version"], final="Arr! Magma rises, matey, and ye get a volcano.")
    counts = curate.refresh_flags(store, cid)
    flags = {name: store.get_sample(i)["flags"] for name, i in ids.items()}
    assert flags["looped"][:3] == ["worse", "worse:loop", "worse:lost_content"]
    assert flags["better"] == [] and flags["edited"] == []  # a reviewer's edit is their call
    assert counts["worse"] == 1 and store.count_samples(constitution_id=cid, flag="worse")["total"] == 1
    assert [curate.flag_label(f) for f in flags["looped"][:3]] == [
        "revision worse than its start",
        "loops where its start did not",
        "lost the start's content",
    ]
    assert set(curate.bulk_targets(store, "accept_clean", cid)) == {ids["better"], ids["edited"]}
