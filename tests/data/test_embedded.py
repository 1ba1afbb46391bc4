"""The embedded default dataset: current, well-formed, correct, and split-friendly."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

import sftkit.data.embedded as embedded
from sftkit.data.embedded import (
    EMBEDDED_DATA_FILE,
    RECORD_FIELDS,
    TASK_FAMILIES,
    generator,
    load_embedded_records,
)
from sftkit.data.embedded.generator import (
    MULTI_TURN_SIZES,
    build_records,
    render,
    turn_entries,
    verify,
    verify_record,
)
from sftkit.errors import SftkitError


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return load_embedded_records()


@pytest.fixture(scope="module")
def entries(records) -> list[dict[str, str]]:
    """Every assistant turn as the single-turn entry its verifier checks."""
    return [entry for record in records for entry in _turns(record)]


@pytest.fixture(scope="module")
def single_entries(records) -> list[dict[str, str]]:
    return [_turns(record)[0] for record in records if len(record["messages"]) == 2]


def _turns(record: dict[str, Any]) -> list[dict[str, str]]:
    entries = turn_entries(record)
    assert entries is not None, record
    return entries


def _is_multi_turn(record: dict[str, Any]) -> bool:
    return len(record["messages"]) > 2


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
    assert len(records) == 1870
    counts = Counter(record["task"] for record in records)
    assert set(counts) == set(TASK_FAMILIES)
    assert len(TASK_FAMILIES) >= 12
    assert min(counts.values()) >= 60
    assert EMBEDDED_DATA_FILE.stat().st_size < 1_000_000


def test_schema(records, entries):
    for index, record in enumerate(records):
        assert list(record) == list(RECORD_FIELDS), index
        roles = [message["role"] for message in record["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2), index
        assert 1 <= len(roles) // 2 <= 3, index
        for message in record["messages"]:
            assert list(message) == ["role", "content"], index
            assert message["content"].strip() == message["content"] != "", index
    for entry in entries:
        assert entry["output"][0].isupper() or entry["output"][0].isdigit(), entry
        assert entry["output"].endswith("."), entry


def test_single_turn_training_text_is_that_of_the_alpaca_entry(records):
    from sftkit.data.templates import TemplateStyle

    style = TemplateStyle("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>"
                          "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    singles = [record for record in records if not _is_multi_turn(record)]
    with_input = [record for record in singles if "\n\n" in record["messages"][0]["content"]]
    assert len(with_input) > 100
    for record in singles[:100] + with_input[:100]:
        entry = _turns(record)[0]
        assert generator.user_turn(entry) == record["messages"][0]["content"]
        assert style.format_example(entry) == style.render(record["messages"])


def test_both_input_forms_in_most_families(single_entries):
    forms = {(entry["task"], entry["input"] == "") for entry in single_entries}
    with_both = [family for family in TASK_FAMILIES
                 if (family, True) in forms and (family, False) in forms]
    assert len(with_both) >= 12


def test_every_answer_passes_its_verifier(records, entries):
    assert [index for index, record in enumerate(records) if not verify_record(record)] == []
    assert [entry for entry in entries if not verify(entry)] == []
    assert len(entries) == sum(len(record["messages"]) // 2 for record in records)


def test_no_duplicate_questions(records):
    questions = Counter(tuple(message["content"] for message in record["messages"][::2])
                        for record in records)
    assert [question for question, n in questions.items() if n > 1] == []


def test_multi_turn_share_and_families(records):
    multi = [record for record in records if _is_multi_turn(record)]
    assert 0.13 <= len(multi) / len(records) <= 0.17
    counts = Counter(record["task"] for record in multi)
    assert counts == MULTI_TURN_SIZES
    assert len(counts) >= 6
    turns = Counter(len(record["messages"]) // 2 for record in multi)
    assert set(turns) == {2, 3}
    for family in counts:  # every family has conversations of 2 and of 3 user turns
        assert {len(r["messages"]) // 2 for r in multi if r["task"] == family} == {2, 3}, family


# Hand-written conversations: each follow-up only makes sense with the turn before it.
CONVERSATIONS = [
    ("unit_conversion", ["Convert 3 km to meters.", "3 kilometers is 3000 meters."], False),
    ("unit_conversion", ["Convert 3 kilometers to meters.", "3 kilometers is 3000 meters.",
                         "And to centimeters?", "3 kilometers is 300000 centimeters."], True),
    ("unit_conversion", ["Convert 3 kilometers to meters.", "3 kilometers is 3000 meters.",
                         "And to centimeters?", "3 kilometers is 30000 centimeters."], False),
    ("unit_conversion", ["Convert 3 kilometers to meters.", "3 kilometers is 3000 meters.",
                         "And to centimeters?", "3000 meters is 300000 centimeters."], False),
    ("plural", ["What is the plural of 'mouse'?", "The plural form of 'mouse' is 'mice'.",
                "And of 'goose'?", "The plural form of 'goose' is 'geese'."], True),
    ("plural", ["What is the plural of 'mouse'?", "The plural form of 'mouse' is 'mice'.",
                "And of 'goose'?", "The plural form of 'goose' is 'gooses'."], False),
    ("plural", ["What is the singular form of 'mice'?", "The singular form of 'mice' is 'mouse'.",
                "And of 'geese'?", "The singular form of 'geese' is 'goose'."], True),
    ("plural", ["What is the singular form of 'mice'?", "The singular form of 'mice' is 'mouse'.",
                "And of 'geese'?", "The plural form of 'goose' is 'geese'."], False),
    ("arithmetic", ["What is 12 plus 7?", "12 plus 7 is 19.", "And that times 3?",
                    "19 multiplied by 3 is 57.", "Now subtract 50 from the result.",
                    "57 minus 50 is 7."], True),
    ("arithmetic", ["What is 12 plus 7?", "12 plus 7 is 19.", "And that times 3?",
                    "12 multiplied by 3 is 36."], False),
    ("sorting", ["Sort the following numbers from smallest to largest.\n\n5, 3, 9",
                 "From smallest to largest: 3, 5, 9.", "Now sort them in the opposite order.",
                 "From largest to smallest: 9, 5, 3.", "Add 4 to the list and sort it again.",
                 "From largest to smallest: 9, 5, 4, 3."], True),
    ("sorting", ["Sort the following numbers from smallest to largest.\n\n5, 3, 9",
                 "From smallest to largest: 3, 5, 9.", "Now sort them in the opposite order.",
                 "From smallest to largest: 3, 5, 9."], False),
    ("sorting", ["Sort the following words in alphabetical order.\n\npear, apple",
                 "In alphabetical order: apple, pear.", "Now sort them in the opposite order.",
                 "In alphabetical order: pear, apple."], False),
    ("counting", ["How many letters are in the word 'garden'?", "The word 'garden' has 6 letters.",
                  "And how many vowels does it have?", "The word 'garden' has 2 vowels."], True),
    ("counting", ["How many letters are in the word 'garden'?", "The word 'garden' has 6 letters.",
                  "And how many vowels does it have?", "The word 'carrot' has 2 vowels."], False),
    ("capital", ["What is the capital of France?", "The capital of France is Paris.",
                 "And of Germany?", "The capital of Germany is Berlin."], True),
    ("capital", ["Paris is the capital of which country?", "Paris is the capital of France.",
                 "And of Germany?", "The capital of Germany is Berlin."], False),
    ("parity", ["Is 4 even or odd?", "4 is an even number.", "And 5?", "5 is an odd number."],
     False),
]


@pytest.mark.parametrize(("task", "turns", "ok"), CONVERSATIONS)
def test_verify_record_on_hand_written_conversations(task, turns, ok):
    roles = ["user", "assistant"] * (len(turns) // 2)
    record = {"messages": [{"role": role, "content": text} for role, text in zip(roles, turns,
                                                                                 strict=True)],
              "task": task}
    assert verify_record(record) is ok


def test_verify_record_rejects_other_shapes():
    turn = [{"role": "user", "content": "Is 4 even or odd?"},
            {"role": "assistant", "content": "4 is an even number."}]
    assert verify_record({"messages": turn, "task": "parity"})
    assert not verify_record({"messages": turn[::-1], "task": "parity"})
    assert not verify_record({"messages": [{"role": "system", "content": "Hi."}, *turn],
                              "task": "parity"})
    assert not verify_record({"messages": turn[:1], "task": "parity"})


def test_every_family_has_its_share_of_every_split(records):
    total = len(records)
    train_end = int(total * 0.85)
    test_end = train_end + int(total * 0.10)
    assert (train_end, test_end - train_end, total - test_end) == (1589, 187, 94)
    splits = {
        "train": (records[:train_end], 0.85),
        "test": (records[train_end:test_end], 0.10),
        "validation": (records[test_end:], 0.05),
    }
    for multi_turn in (False, True):
        part_of = [record for record in records if _is_multi_turn(record) == multi_turn]
        family_sizes = Counter(record["task"] for record in part_of)
        for name, (part, share) in splits.items():
            counts = Counter(record["task"] for record in part
                             if _is_multi_turn(record) == multi_turn)
            for family, size in family_sizes.items():
                assert counts[family] >= 1, (name, family, multi_turn)
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
def test_verifier_rejects_another_questions_answer(single_entries, family):
    entries = [entry for entry in single_entries if entry["task"] == family]
    swapped = [
        {**entry, "output": other["output"]}
        for entry, other in zip(entries, entries[1:] + entries[:1], strict=True)
        if entry["output"] != other["output"]
    ]
    assert len(swapped) >= len(entries) // 2
    assert [entry for entry in swapped if verify(entry)] == []


@pytest.mark.parametrize("family", TASK_FAMILIES)
def test_verifier_rejects_a_corrupted_output(entries, family):
    entry = next(entry for entry in entries if entry["task"] == family)
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
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            "task": "parity"}
    bad = tmp_path / "instructions.json"
    monkeypatch.setattr(embedded, "EMBEDDED_DATA_FILE", bad)
    bad.write_text(json.dumps([good, {**good, "messages": [{"role": "user", "content": 3}]}]))
    with pytest.raises(SftkitError, match=r"record 1: .*content"):
        load_embedded_records()
    bad.write_text(json.dumps([good, {**good, "task": "poetry"}]))
    with pytest.raises(SftkitError, match=r"record 1: field 'task': 'poetry'"):
        load_embedded_records()
    bad.write_text(json.dumps([good, {**good, "source": "x"}]))
    with pytest.raises(SftkitError, match=r"record 1: expected the fields"):
        load_embedded_records()


def test_import_is_light():
    code = ("import sys, sftkit.data.embedded as e; e.load_embedded_records();"
            " print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
