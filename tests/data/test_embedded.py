"""The embedded default dataset: current, well-formed, correct, and split-friendly."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter

import pytest

import sftkit.data.embedded as embedded
from sftkit.data.embedded import (
    EMBEDDED_DATA_FILE,
    RECORD_FIELDS,
    TASK_FAMILIES,
    generator,
    load_embedded_records,
)
from sftkit.data.embedded.generator import build_records, render, verify
from sftkit.errors import SftkitError


@pytest.fixture(scope="module")
def records() -> list[dict[str, str]]:
    return load_embedded_records()


def test_shipped_file_equals_a_fresh_generation():
    assert EMBEDDED_DATA_FILE.read_text(encoding="utf-8") == render(build_records())


def test_generation_ignores_global_random_state():
    random.seed(1)
    first = build_records()
    random.seed(2)
    assert build_records() == first


def test_check_flag_passes_on_shipped_file_and_fails_on_a_stale_one(tmp_path, capsys):
    assert generator.main(["--check"]) == 0
    out = tmp_path / "instructions.json"
    assert generator.main(["--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == EMBEDDED_DATA_FILE.read_text(encoding="utf-8")
    assert generator.main(["--check", "--out", str(out)]) == 0
    stale = json.loads(out.read_text(encoding="utf-8"))[:-1]
    out.write_text(json.dumps(stale, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    assert generator.main(["--check", "--out", str(out)]) == 1
    assert generator.main(["--check", "--out", str(tmp_path / "missing.json")]) == 1
    assert "out of date" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["instructions.json"]  # no temp left


def test_size_and_families(records):
    assert len(records) >= 1100
    counts = Counter(record["task"] for record in records)
    assert set(counts) == set(TASK_FAMILIES)
    assert len(TASK_FAMILIES) >= 12
    assert min(counts.values()) >= 60
    assert EMBEDDED_DATA_FILE.stat().st_size < 1_000_000


def test_schema(records):
    for index, record in enumerate(records):
        assert list(record) == list(RECORD_FIELDS), index
        assert all(isinstance(record[field], str) for field in RECORD_FIELDS), index
        assert record["instruction"].strip() == record["instruction"] != "", index
        assert record["input"].strip() == record["input"], index
        assert record["output"][0].isupper() or record["output"][0].isdigit(), index
        assert record["output"].endswith("."), index


def test_both_input_forms_in_most_families(records):
    forms = {(record["task"], record["input"] == "") for record in records}
    with_both = [family for family in TASK_FAMILIES
                 if (family, True) in forms and (family, False) in forms]
    assert len(with_both) >= 12


def test_every_entry_passes_its_verifier(records):
    failures = [index for index, record in enumerate(records) if not verify(record)]
    assert failures == []


def test_no_duplicate_questions(records):
    questions = Counter((record["instruction"], record["input"]) for record in records)
    assert [question for question, n in questions.items() if n > 1] == []


def test_every_family_has_its_share_of_every_split(records):
    total = len(records)
    train_end = int(total * 0.85)
    test_end = train_end + int(total * 0.10)
    family_sizes = Counter(record["task"] for record in records)
    splits = {
        "train": (records[:train_end], 0.85),
        "test": (records[train_end:test_end], 0.10),
        "validation": (records[test_end:], 0.05),
    }
    for name, (part, share) in splits.items():
        counts = Counter(record["task"] for record in part)
        for family, size in family_sizes.items():
            assert abs(counts[family] - size * share) <= 2, (name, family, counts[family])
    tail = Counter(record["task"] for record in records[int(total * 0.95):])
    middle = Counter(record["task"] for record in records[int(total * 0.85):int(total * 0.95)])
    for family in TASK_FAMILIES:
        assert tail[family] >= 3, family
        assert middle[family] >= 3, family


def test_families_are_interleaved(records):
    longest = run = 1
    for previous, current in zip(records, records[1:], strict=False):
        run = run + 1 if previous["task"] == current["task"] else 1
        longest = max(longest, run)
    assert longest <= 4


# Hand-written cases, independent of the generator: (task, instruction, input, output, ok).
CASES = [
    ("unit_conversion", "Convert 45 kilometers to meters.", "", "45 kilometers is 45000 meters.",
     True),
    ("unit_conversion", "Convert 45 kilometers to meters.", "", "45 kilometers is 4500 meters.",
     False),
    ("unit_conversion", "How many inches are in 3 feet?", "", "3 feet is 36 inches.", True),
    ("unit_conversion", "Convert the following duration to hours.", "150 minutes",
     "150 minutes is 2.5 hours.", True),
    ("unit_conversion", "Convert 3 kilograms to meters.", "", "3 kilograms is 3000 meters.",
     False),
    ("arithmetic", "What is 12 times 7?", "", "12 multiplied by 7 is 84.", True),
    ("arithmetic", "What is 12 times 7?", "", "12 multiplied by 7 is 85.", False),
    ("arithmetic", "Subtract 7 from 12.", "", "12 minus 7 is 5.", True),
    ("arithmetic", "Subtract 7 from 12.", "", "7 minus 12 is 5.", False),
    ("arithmetic", "What is 12 plus 7?", "", "12 multiplied by 7 is 84.", False),
    ("arithmetic", "What is 25% of 80?", "", "25% of 80 is 20.", True),
    ("comparison", "Which is greater: 3.5 or 3.45?", "", "3.5 is larger than 3.45.", True),
    ("comparison", "Which is greater: 3.5 or 3.45?", "", "3.45 is larger than 3.5.", False),
    ("parity", "Is 17 even or odd?", "", "17 is an even number.", False),
    ("spelling", "Correct the spelling of the word 'recieve'.", "",
     "The correct spelling is 'receive'.", True),
    ("spelling", "Correct the spelling of the word 'recieve'.", "",
     "The correct spelling is 'recieve'.", False),
    ("synonym", "Provide a synonym for 'big'.", "", "A synonym for 'big' is 'large'.", True),
    ("synonym", "Provide a synonym for 'big'.", "", "A synonym for 'big' is 'small'.", False),
    ("antonym", "What is the antonym of 'cold'?", "", "The antonym of 'cold' is 'hot'.", True),
    ("antonym", "What is the antonym of 'cold'?", "", "The antonym of 'cold' is 'chilly'.",
     False),
    ("plural", "What is the plural of 'mouse'?", "", "The plural form of 'mouse' is 'mouses'.",
     False),
    ("past_tense", "What is the past tense of 'go'?", "", "The past tense of 'go' is 'goed'.",
     False),
    ("past_tense", "What is the past tense of 'stop'?", "",
     "The past tense of 'stop' is 'stopped'.", True),
    ("active_voice", "Rewrite the following sentence in the active voice.",
     "The cake was baked by my sister.", "My sister baked the cake.", True),
    ("active_voice", "Rewrite the following sentence in the active voice.",
     "The cake was baked by my sister.", "My sister bakes the cake.", False),
    ("sentiment", "Determine the sentiment of this sentence.", "The movie was dreadful.",
     "The sentiment of the sentence is positive.", False),
    ("extraction", "Extract the city from the following sentence.",
     "We spent a quiet weekend in Oslo.", "The city mentioned is Oslo.", True),
    ("extraction", "Extract the date from the following sentence.",
     "Registration closes on February 30.", "The date mentioned is February 30.", False),
    ("counting", "How many letters are in the word 'garden'?", "",
     "The word 'garden' has 6 letters.", True),
    ("counting", "How many times does the letter 's' appear in the word 'possession'?", "",
     "The letter 's' appears 3 times in the word 'possession'.", False),
    ("sorting", "Sort the following words in alphabetical order.", "pear, apple, mango",
     "In alphabetical order: apple, mango, pear.", True),
    ("sorting", "Sort the following words in alphabetical order.", "pear, apple, mango",
     "In alphabetical order: apple, pear, mango.", False),
    ("capital", "What is the capital of Australia?", "", "The capital of Australia is Sydney.",
     False),
    ("capital", "Canberra is the capital of which country?", "",
     "Canberra is the capital of Australia.", True),
    ("categorization", "Is a carrot a fruit or a vegetable?", "", "A carrot is a vegetable.",
     True),
    ("categorization", "Is a carrot a fruit or a vegetable?", "", "A carrot is a fruit.", False),
    ("odd_one_out", "Find the odd one out: apple, pear, carrot, plum.", "",
     "The odd one out is 'carrot', because it is a vegetable while the others are fruits.",
     True),
    ("odd_one_out", "Find the odd one out: apple, pear, carrot, plum.", "",
     "The odd one out is 'pear', because it is a fruit while the others are vegetables.",
     False),
    ("no_such_family", "Say hello.", "", "Hello.", False),
]


@pytest.mark.parametrize(("task", "instruction", "input_text", "output", "ok"), CASES)
def test_verifier_on_hand_written_cases(task, instruction, input_text, output, ok):
    entry = {"instruction": instruction, "input": input_text, "output": output, "task": task}
    assert verify(entry) is ok


@pytest.mark.parametrize("family", TASK_FAMILIES)
def test_verifier_rejects_another_questions_answer(records, family):
    entries = [record for record in records if record["task"] == family]
    swapped = [
        {**entry, "output": other["output"]}
        for entry, other in zip(entries, entries[1:] + entries[:1], strict=True)
        if entry["output"] != other["output"]
    ]
    assert len(swapped) >= len(entries) // 2
    assert [entry for entry in swapped if verify(entry)] == []


@pytest.mark.parametrize("family", TASK_FAMILIES)
def test_verifier_rejects_a_corrupted_output(records, family):
    entry = next(record for record in records if record["task"] == family)
    digits = [char for char in entry["output"] if char.isdigit()]
    if digits:
        wrong = str((int(digits[-1]) + 1) % 10)
        index = entry["output"].rindex(digits[-1])
        corrupted = entry["output"][:index] + wrong + entry["output"][index + 1:]
    else:  # change the last letter of the answer: same shape, wrong word
        index = max(i for i, char in enumerate(entry["output"]) if char.isalpha())
        wrong = "q" if entry["output"][index] != "q" else "z"
        corrupted = entry["output"][:index] + wrong + entry["output"][index + 1:]
    assert verify(entry)
    assert not verify({**entry, "output": corrupted})


def test_tables_are_consistent():
    assert all(word != synonym for word, synonym in generator.SYNONYMS.items())
    words = [word for pair in generator.ANTONYM_PAIRS for word in pair]
    assert len(words) == len(set(words))  # each word has one antonym
    assert all(wrong != right for wrong, right in generator.MISSPELLINGS.items())
    assert not set(generator.MISSPELLINGS) & set(generator.MISSPELLINGS.values())
    plurals = list(generator.PLURALS.values())
    assert len(plurals) == len(set(plurals))  # singular questions have one answer
    participles = [forms[1] for forms in generator.VERB_FORMS.values()]
    assert len(participles) == len(set(participles))
    items = [item for _, _, members in generator.CATEGORIES.values() for item in members]
    assert len(items) == len(set(items))


def test_loader_names_the_record_and_field_at_fault(tmp_path, monkeypatch):
    bad = tmp_path / "instructions.json"
    bad.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b", "task": "t"},
                               {"instruction": "a", "input": 3, "output": "b", "task": "t"}]))
    monkeypatch.setattr(embedded, "EMBEDDED_DATA_FILE", bad)
    with pytest.raises(SftkitError, match=r"record 1: field 'input'"):
        load_embedded_records()


def test_import_is_light():
    code = ("import sys, sftkit.data.embedded as e; e.load_embedded_records();"
            " print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
