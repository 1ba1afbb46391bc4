"""Generate (and verify) the embedded default instruction dataset, `instructions.json`.

All word lists, sentences and templates below were written for sftkit. The generator is
deterministic: each task family draws from its own `random.Random` seeded with a fixed string,
so the output depends only on this file. Each family has a verifier that re-derives the
answer from the text of the question (recomputing sums and conversions from the numbers it
reads, looking words up in the tables, counting letters, ...), independently of how the
entry was built; the generator refuses to write an entry that its verifier rejects.

Records are OpenAI-messages conversations. A single-turn record's user message is the entry's
instruction, then its input after a blank line (the Alpaca prompt's user turn). A multi-turn
record's follow-ups ("And to centimeters?") are checked by resolving each, with the previous
answer, into the self-contained entry its family's verifier expects (`turn_entries`).

Regenerate or check the shipped file:

    python -m sftkit.data.embedded.generator            # rewrite the shipped JSON
    python -m sftkit.data.embedded.generator --check    # exit 1 if it differs from a fresh run
    python -m sftkit.data.embedded.generator --out /tmp/instructions.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

from sftkit.data.embedded import TASK_FAMILIES
from sftkit.io import write_text_atomic

Entry = dict[str, str]
T = TypeVar("T")
Template = tuple[str, str]  # (instruction, input), both str.format patterns

SEED = "sftkit-embedded-v1"
DEFAULT_OUT = Path(__file__).with_name("instructions.json")

# The pipeline's default split: first 85 % train, next 10 % test, the rest validation.
TRAIN_SHARE = Fraction(85, 100)
TEST_SHARE = Fraction(10, 100)

FAMILY_SIZES: dict[str, int] = {
    "unit_conversion": 110,
    "arithmetic": 120,
    "comparison": 85,
    "parity": 80,
    "spelling": 90,
    "synonym": 90,
    "antonym": 95,
    "plural": 85,
    "past_tense": 90,
    "active_voice": 95,
    "sentiment": 90,
    "extraction": 100,
    "counting": 100,
    "sorting": 90,
    "capital": 95,
    "categorization": 90,
    "odd_one_out": 85,
}

# --------------------------------------------------------------------------------------------
# Tables (hand-written and hand-checked)
# --------------------------------------------------------------------------------------------

SYNONYMS: dict[str, str] = {
    "big": "large", "small": "little", "fast": "quick", "happy": "cheerful",
    "sad": "unhappy", "begin": "start", "finish": "complete", "smart": "clever",
    "angry": "irate", "easy": "simple", "difficult": "hard", "rich": "wealthy",
    "brave": "courageous", "quiet": "silent", "shut": "close", "buy": "purchase",
    "help": "assist", "answer": "reply", "choose": "select", "gift": "present",
    "car": "automobile", "enough": "sufficient", "often": "frequently", "tired": "weary",
    "funny": "amusing", "strange": "odd", "correct": "right", "beautiful": "lovely",
    "mistake": "error", "shout": "yell", "afraid": "scared", "gather": "collect",
    "huge": "enormous", "tiny": "minuscule", "speak": "talk", "sick": "ill",
    "story": "tale", "vanish": "disappear", "honest": "truthful", "calm": "peaceful",
    "damp": "moist", "neat": "tidy", "friend": "companion", "idea": "notion",
    "silly": "foolish", "rapid": "swift", "below": "beneath", "maybe": "perhaps",
    "almost": "nearly", "unusual": "uncommon", "shy": "timid", "fix": "repair",
    "delicious": "tasty", "journey": "trip", "center": "middle", "permit": "allow",
    "cautious": "careful", "eager": "keen", "glad": "pleased", "inform": "tell",
    "obtain": "get", "reveal": "disclose", "sturdy": "robust", "brief": "short",
    "sleepy": "drowsy", "fragile": "delicate", "autumn": "fall", "baby": "infant",
    "hide": "conceal", "loud": "noisy", "cry": "weep", "jump": "leap",
}

ANTONYM_PAIRS: tuple[tuple[str, str], ...] = (
    ("hot", "cold"), ("tall", "short"), ("fast", "slow"), ("happy", "sad"),
    ("early", "late"), ("empty", "full"), ("strong", "weak"), ("rich", "poor"),
    ("young", "old"), ("wet", "dry"), ("hard", "soft"), ("heavy", "light"),
    ("thick", "thin"), ("wide", "narrow"), ("loud", "quiet"), ("clean", "dirty"),
    ("cheap", "expensive"), ("safe", "dangerous"), ("true", "false"), ("win", "lose"),
    ("push", "pull"), ("buy", "sell"), ("arrive", "depart"), ("accept", "reject"),
    ("always", "never"), ("above", "below"), ("inside", "outside"), ("first", "last"),
    ("ancient", "modern"), ("friend", "enemy"), ("increase", "decrease"),
    ("success", "failure"), ("remember", "forget"), ("borrow", "lend"), ("love", "hate"),
    ("day", "night"), ("north", "south"), ("east", "west"), ("entrance", "exit"),
    ("sharp", "dull"), ("smooth", "rough"), ("brave", "cowardly"), ("generous", "stingy"),
    ("polite", "rude"), ("visible", "invisible"), ("possible", "impossible"),
    ("include", "exclude"), ("maximum", "minimum"), ("victory", "defeat"),
    ("deep", "shallow"), ("top", "bottom"), ("asleep", "awake"), ("guilty", "innocent"),
    ("import", "export"), ("sunrise", "sunset"), ("major", "minor"),
    ("ascend", "descend"), ("float", "sink"), ("attack", "defend"), ("near", "far"),
    ("laugh", "cry"), ("create", "destroy"), ("before", "after"), ("private", "public"),
    ("temporary", "permanent"), ("open", "closed"), ("give", "receive"),
    ("question", "answer"), ("begin", "end"), ("come", "go"), ("up", "down"),
    ("left", "right"), ("rise", "fall"), ("better", "worse"), ("easy", "difficult"),
    ("male", "female"),
)

# Common misspellings (each within two edits of the word, and none a real word itself).
MISSPELLINGS: dict[str, str] = {
    "recieve": "receive", "beleive": "believe", "definately": "definitely",
    "seperate": "separate", "occured": "occurred", "untill": "until", "wierd": "weird",
    "tommorow": "tomorrow", "accomodate": "accommodate", "acheive": "achieve",
    "adress": "address", "arguement": "argument", "begining": "beginning",
    "buisness": "business", "cemetary": "cemetery", "collegue": "colleague",
    "comming": "coming", "commitee": "committee", "concious": "conscious",
    "curiousity": "curiosity", "enviroment": "environment", "existance": "existence",
    "familar": "familiar", "finaly": "finally", "foriegn": "foreign", "freind": "friend",
    "goverment": "government", "gaurd": "guard", "happend": "happened",
    "harrass": "harass", "humerous": "humorous", "independant": "independent",
    "knowlege": "knowledge", "libary": "library", "lisence": "license",
    "maintainance": "maintenance", "millenium": "millennium",
    "mischievious": "mischievous", "neccessary": "necessary", "noticable": "noticeable",
    "ocasion": "occasion", "persistant": "persistent", "posession": "possession",
    "prefered": "preferred", "probaly": "probably", "publically": "publicly",
    "realy": "really", "recomend": "recommend", "refered": "referred",
    "relevent": "relevant", "religous": "religious", "rythm": "rhythm", "sieze": "seize",
    "succesful": "successful", "suprise": "surprise", "truely": "truly",
    "tounge": "tongue", "vaccuum": "vacuum", "wich": "which", "writting": "writing",
    "yatch": "yacht", "thier": "their", "becuase": "because", "diffrent": "different",
    "intresting": "interesting", "importent": "important", "speach": "speech",
    "temperture": "temperature", "vegtable": "vegetable", "grammer": "grammar",
    "jewelery": "jewelry", "neice": "niece", "peice": "piece", "sentance": "sentence",
    "similiar": "similar", "strenght": "strength", "embarass": "embarrass",
    "excercise": "exercise", "medecine": "medicine", "mispell": "misspell",
    "occurence": "occurrence", "paralel": "parallel", "priviledge": "privilege",
    "scedule": "schedule", "secratary": "secretary", "tendancy": "tendency",
    "threshhold": "threshold",
}

PLURALS: dict[str, str] = {
    "child": "children", "mouse": "mice", "goose": "geese", "tooth": "teeth",
    "foot": "feet", "man": "men", "woman": "women", "person": "people", "ox": "oxen",
    "fungus": "fungi", "crisis": "crises", "analysis": "analyses", "thesis": "theses",
    "phenomenon": "phenomena", "criterion": "criteria", "sheep": "sheep", "deer": "deer",
    "fish": "fish", "knife": "knives", "leaf": "leaves", "wolf": "wolves",
    "half": "halves", "shelf": "shelves", "loaf": "loaves", "life": "lives",
    "wife": "wives", "thief": "thieves", "calf": "calves", "potato": "potatoes",
    "tomato": "tomatoes", "hero": "heroes", "echo": "echoes",
    "box": "boxes", "bus": "buses", "church": "churches", "brush": "brushes",
    "glass": "glasses", "fox": "foxes", "watch": "watches", "dish": "dishes",
    "city": "cities", "baby": "babies", "story": "stories", "party": "parties",
    "country": "countries", "lady": "ladies", "berry": "berries", "key": "keys",
    "day": "days", "toy": "toys", "boy": "boys", "monkey": "monkeys", "book": "books",
    "cat": "cats", "tree": "trees", "house": "houses", "car": "cars", "apple": "apples",
    "river": "rivers", "pencil": "pencils", "garden": "gardens", "chair": "chairs",
    "photo": "photos", "piano": "pianos", "radio": "radios", "zoo": "zoos",
    "roof": "roofs", "chief": "chiefs", "cliff": "cliffs", "belief": "beliefs",
    "kiss": "kisses", "wish": "wishes", "bench": "benches",
}
# Nouns whose plural does not follow the spelling rule in `_rule_plural`.
IRREGULAR_PLURALS: frozenset[str] = frozenset({
    "child", "mouse", "goose", "tooth", "foot", "man", "woman", "person", "ox", "fungus",
    "crisis", "analysis", "thesis", "phenomenon", "criterion", "sheep", "deer", "fish",
    "knife", "leaf", "wolf", "half", "shelf", "loaf", "life", "wife", "thief", "calf",
    "potato", "tomato", "hero", "echo",
})

IRREGULAR_PAST_TENSES: dict[str, str] = {
    "go": "went", "eat": "ate", "see": "saw", "run": "ran", "write": "wrote",
    "take": "took", "give": "gave", "buy": "bought", "bring": "brought",
    "think": "thought", "teach": "taught", "catch": "caught", "fly": "flew",
    "swim": "swam", "sing": "sang", "drink": "drank", "begin": "began", "speak": "spoke",
    "break": "broke", "choose": "chose", "drive": "drove", "ride": "rode", "rise": "rose",
    "freeze": "froze", "steal": "stole", "wake": "woke", "forget": "forgot", "get": "got",
    "sit": "sat", "stand": "stood", "understand": "understood", "feel": "felt",
    "keep": "kept", "sleep": "slept", "leave": "left", "meet": "met", "lose": "lost",
    "send": "sent", "spend": "spent", "build": "built", "hold": "held", "tell": "told",
    "sell": "sold", "find": "found", "make": "made", "pay": "paid", "say": "said",
    "know": "knew", "grow": "grew", "throw": "threw", "draw": "drew", "blow": "blew",
    "fall": "fell", "hear": "heard", "wear": "wore", "come": "came", "become": "became",
    "cut": "cut", "put": "put", "hit": "hit", "shut": "shut", "let": "let", "hurt": "hurt",
    "cost": "cost", "win": "won", "dig": "dug", "lead": "led", "feed": "fed",
    "bite": "bit", "hide": "hid", "shake": "shook", "forgive": "forgave", "fight": "fought",
    "seek": "sought", "sink": "sank", "spin": "spun", "stick": "stuck", "sting": "stung",
    "swing": "swung", "strike": "struck", "bleed": "bled", "flee": "fled",
}
REGULAR_PAST_TENSES: dict[str, str] = {
    "walk": "walked", "play": "played", "jump": "jumped", "talk": "talked",
    "cook": "cooked", "open": "opened", "clean": "cleaned", "help": "helped",
    "dance": "danced", "smile": "smiled", "live": "lived", "love": "loved",
    "close": "closed", "hope": "hoped", "carry": "carried", "study": "studied",
    "cry": "cried", "try": "tried", "worry": "worried", "hurry": "hurried",
    "copy": "copied", "reply": "replied", "stop": "stopped", "plan": "planned",
    "drop": "dropped", "admit": "admitted", "prefer": "preferred", "shop": "shopped",
    "hug": "hugged", "clap": "clapped", "enjoy": "enjoyed", "stay": "stayed",
    "obey": "obeyed", "watch": "watched", "wash": "washed", "fix": "fixed",
    "listen": "listened", "visit": "visited", "answer": "answered", "paint": "painted",
    "laugh": "laughed", "arrive": "arrived", "decide": "decided", "agree": "agreed",
    "share": "shared", "climb": "climbed", "push": "pushed", "pull": "pulled",
    "count": "counted", "explain": "explained", "follow": "followed", "wait": "waited",
}
PAST_TENSES: dict[str, str] = {**IRREGULAR_PAST_TENSES, **REGULAR_PAST_TENSES}
# Regular verbs that double their final consonant (stressed final syllable).
DOUBLING_VERBS: frozenset[str] = frozenset(
    {"stop", "plan", "drop", "admit", "prefer", "shop", "hug", "clap"}
)

# Verbs used in the passive-to-active rewrites: base -> (simple past, past participle).
VERB_FORMS: dict[str, tuple[str, str]] = {
    "cook": ("cooked", "cooked"), "write": ("wrote", "written"),
    "paint": ("painted", "painted"), "repair": ("repaired", "repaired"),
    "build": ("built", "built"), "clean": ("cleaned", "cleaned"),
    "bake": ("baked", "baked"), "plant": ("planted", "planted"),
    "teach": ("taught", "taught"), "deliver": ("delivered", "delivered"),
    "sing": ("sang", "sung"), "find": ("found", "found"),
    "design": ("designed", "designed"), "organize": ("organized", "organized"),
    "sign": ("signed", "signed"), "eat": ("ate", "eaten"), "drive": ("drove", "driven"),
    "break": ("broke", "broken"), "choose": ("chose", "chosen"), "take": ("took", "taken"),
    "wash": ("washed", "washed"), "feed": ("fed", "fed"), "open": ("opened", "opened"),
    "win": ("won", "won"),
}

# (verb, who can do it, what it can be done to): every agent fits every object.
VOICE_SCENES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("cook", ("the chef", "my grandmother", "Daniel"),
     ("the soup", "the dinner", "the rice", "the vegetables")),
    ("write", ("the journalist", "Aisha", "the students"),
     ("the report", "the letter", "the article", "the poems")),
    ("paint", ("the artist", "the volunteers", "my uncle"),
     ("the fence", "the portrait", "the walls", "the mural")),
    ("repair", ("the mechanic", "the technician", "my father"),
     ("the car", "the engine", "the bicycle", "the brakes")),
    ("build", ("the workers", "the engineers", "the company"),
     ("the bridge", "the school", "the new library", "the houses")),
    ("clean", ("the janitor", "the children", "the staff"),
     ("the classroom", "the kitchen", "the windows", "the floors")),
    ("bake", ("the baker", "my sister", "the students"),
     ("the bread", "the cake", "the cookies", "the pies")),
    ("plant", ("the gardener", "the villagers", "the children"),
     ("the trees", "the tomatoes", "the roses", "the seeds")),
    ("teach", ("the teacher", "Professor Chen", "the coach"),
     ("the lesson", "the seminar", "the course", "the workshops")),
    ("deliver", ("the courier", "the mail carrier", "the driver"),
     ("the package", "the letters", "the parcel", "the groceries")),
    ("sing", ("the choir", "the soloist", "the children"),
     ("the anthem", "the song", "the carols", "the lullaby")),
    ("find", ("the police", "the hikers", "the detective"),
     ("the missing wallet", "the lost dog", "the keys", "the stolen bikes")),
    ("design", ("the architect", "the engineers", "Leila"),
     ("the building", "the museum", "the stadium", "the gardens")),
    ("organize", ("the committee", "the teachers", "our neighbors"),
     ("the festival", "the meeting", "the concerts", "the charity sale")),
    ("sign", ("the president", "the manager", "both parties"),
     ("the agreement", "the contract", "the documents", "the treaty")),
    ("eat", ("the dog", "the children", "the guests"),
     ("the sandwich", "the cake", "the cookies", "the leftovers")),
    ("drive", ("my aunt", "the chauffeur", "the farmer"),
     ("the van", "the truck", "the car", "the tractor")),
    ("break", ("the toddler", "the storm", "the ball"),
     ("the window", "the vase", "the glasses", "the lamp")),
    ("choose", ("the jury", "the committee", "the judges"),
     ("the winner", "the best entry", "the finalists", "the new logo")),
    ("take", ("the photographer", "my cousin", "the tourists"),
     ("the photo", "the picture", "the photos", "the group portrait")),
    ("wash", ("the children", "my brother", "the staff"),
     ("the dishes", "the car", "the towels", "the windows")),
    ("feed", ("the zookeeper", "the farmer", "the children"),
     ("the animals", "the horses", "the ducks", "the goat")),
    ("open", ("the mayor", "the director", "the principal"),
     ("the new park", "the exhibition", "the museum", "the gates")),
    ("win", ("our team", "the young runner", "the local club"),
     ("the match", "the trophy", "the championship", "the medals")),
)

SENTIMENT_WORDS: dict[str, tuple[str, ...]] = {
    "positive": ("wonderful", "delightful", "excellent", "fantastic", "enjoyable", "superb",
                 "pleasant", "brilliant", "lovely", "amazing", "impressive", "charming"),
    "negative": ("terrible", "awful", "boring", "disappointing", "dreadful", "horrible",
                 "unpleasant", "dull", "miserable", "tedious", "frustrating", "mediocre"),
}
SENTIMENT_TOPICS: tuple[str, ...] = (
    "movie", "dinner", "concert", "hotel", "trip", "lecture", "novel", "party",
    "football match", "museum tour", "play", "restaurant", "train ride", "holiday", "workshop",
)
SENTIMENT_FRAMES: tuple[str, ...] = (
    "The {topic} was {word}.",
    "I thought the {topic} was {word}.",
    "What {a_word} {topic} that was!",
    "Honestly, the {topic} felt {word} from start to finish.",
    "Everyone agreed that the {topic} was {word}.",
    "The {topic} turned out to be {word}.",
    "My friends said the {topic} was {word}.",
)

COUNTRY_CAPITALS: dict[str, str] = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "the United Kingdom": "London", "Ireland": "Dublin",
    "Belgium": "Brussels", "Austria": "Vienna", "Switzerland": "Bern", "Poland": "Warsaw",
    "the Czech Republic": "Prague", "Hungary": "Budapest", "Greece": "Athens",
    "Sweden": "Stockholm", "Norway": "Oslo", "Denmark": "Copenhagen", "Finland": "Helsinki",
    "Iceland": "Reykjavik", "Russia": "Moscow", "Ukraine": "Kyiv", "Romania": "Bucharest",
    "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb", "Slovakia": "Bratislava",
    "Slovenia": "Ljubljana", "Estonia": "Tallinn", "Latvia": "Riga", "Lithuania": "Vilnius",
    "Turkey": "Ankara", "Egypt": "Cairo", "Morocco": "Rabat", "Algeria": "Algiers",
    "Tunisia": "Tunis", "Kenya": "Nairobi", "Ethiopia": "Addis Ababa", "Nigeria": "Abuja",
    "Ghana": "Accra", "Senegal": "Dakar", "Uganda": "Kampala", "Zimbabwe": "Harare",
    "Zambia": "Lusaka", "Angola": "Luanda", "Japan": "Tokyo", "China": "Beijing",
    "South Korea": "Seoul", "India": "New Delhi", "Pakistan": "Islamabad",
    "Bangladesh": "Dhaka", "Nepal": "Kathmandu", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "the Philippines": "Manila", "Malaysia": "Kuala Lumpur", "Cambodia": "Phnom Penh",
    "Mongolia": "Ulaanbaatar", "Afghanistan": "Kabul", "Iran": "Tehran", "Iraq": "Baghdad",
    "Saudi Arabia": "Riyadh", "Jordan": "Amman", "Lebanon": "Beirut", "Syria": "Damascus",
    "Qatar": "Doha", "Canada": "Ottawa", "Mexico": "Mexico City", "Cuba": "Havana",
    "Jamaica": "Kingston", "Argentina": "Buenos Aires", "Chile": "Santiago", "Peru": "Lima",
    "Colombia": "Bogotá", "Venezuela": "Caracas", "Ecuador": "Quito",
    "Uruguay": "Montevideo", "Paraguay": "Asunción", "Brazil": "Brasília",
    "Australia": "Canberra", "New Zealand": "Wellington",
}

# Category -> (singular with article, plural, members).
CATEGORIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "fruit": ("a fruit", "fruits", (
        "apple", "banana", "cherry", "mango", "pear", "peach", "plum", "grape", "lemon",
        "orange", "kiwi", "apricot", "pineapple", "strawberry", "watermelon")),
    "vegetable": ("a vegetable", "vegetables", (
        "carrot", "potato", "onion", "cabbage", "turnip", "cauliflower", "radish", "leek",
        "parsnip", "artichoke", "beet")),
    "animal": ("an animal", "animals", (
        "lion", "rabbit", "eagle", "dolphin", "elephant", "horse", "owl", "frog", "tiger",
        "giraffe", "wolf", "penguin", "camel", "squirrel")),
    "instrument": ("a musical instrument", "musical instruments", (
        "violin", "piano", "trumpet", "flute", "drum", "guitar", "cello", "harp",
        "clarinet", "saxophone")),
    "vehicle": ("a vehicle", "vehicles", (
        "bicycle", "truck", "bus", "tractor", "motorcycle", "van", "scooter", "ambulance")),
    "furniture": ("a piece of furniture", "pieces of furniture", (
        "chair", "sofa", "wardrobe", "desk", "bookshelf", "bed", "stool", "armchair")),
}

EXTRACTION_CITIES: tuple[str, ...] = (
    "Paris", "Tokyo", "Cairo", "Lima", "Toronto", "Sydney", "Mumbai", "Chicago",
    "Barcelona", "Istanbul", "Nairobi", "Seoul", "Dublin", "Vienna", "Oslo", "Lisbon",
    "Boston", "Melbourne", "Munich", "Osaka", "Vancouver", "Marseille", "Naples",
    "Edinburgh", "Montreal", "Havana", "Prague", "Athens", "Denver", "Bangkok",
)
EXTRACTION_NAMES: tuple[str, ...] = (
    "Amira", "Tomas", "Priya", "Kenji", "Sofia", "Lucas", "Fatima", "Oliver", "Mei",
    "Diego", "Hannah", "Kwame", "Elena", "Samuel", "Yusuf", "Ingrid", "Noah", "Leila",
    "Mateo", "Chloe",
)
MONTH_DAYS: dict[str, int] = {
    "January": 31, "February": 28, "March": 31, "April": 30, "May": 31, "June": 30,
    "July": 31, "August": 31, "September": 30, "October": 31, "November": 30,
    "December": 31,
}
# Kind -> sentences with one slot; the rest of each sentence holds no other candidate.
EXTRACTION_FRAMES: dict[str, tuple[str, ...]] = {
    "number": (
        "The library bought {value} new books last month.",
        "Our village has {value} houses.",
        "The recipe calls for {value} grams of sugar.",
        "A total of {value} runners finished the race.",
        "The museum welcomed {value} visitors on Sunday.",
        "She has saved {value} dollars for her trip.",
        "The farmer counted {value} sheep in the field.",
        "The bridge is {value} meters long.",
        "There were {value} people waiting at the station.",
        "He scored {value} points in the final game.",
    ),
    "city": (
        "My cousin moved to {value} last spring.",
        "The conference will take place in {value}.",
        "We spent a quiet weekend in {value}.",
        "Her flight to {value} was delayed by the storm.",
        "The orchestra is touring {value} this autumn.",
        "He grew up in {value} and still loves it.",
        "The new museum in {value} opens soon.",
    ),
    "date": (
        "The meeting is scheduled for {value}.",
        "Her birthday falls on {value}.",
        "The shop will reopen on {value}.",
        "The package should arrive by {value}.",
        "Registration closes on {value}.",
        "We are planning a picnic on {value}.",
    ),
    "name": (
        "Yesterday {value} repaired the old radio.",
        "The award was presented to {value}.",
        "Everyone cheered when {value} crossed the finish line.",
        "The letter was signed by {value}.",
        "{value} is learning to play the violin.",
        "Our new neighbor, {value}, brought us a cake.",
    ),
}

# Generator side of unit conversion: (from, to, factor). The verifier does not use this; it
# has its own table of every unit's size in a base unit (`_UNIT_SIZES`).
CONVERSIONS: tuple[tuple[str, str, Fraction], ...] = (
    ("kilometer", "meter", Fraction(1000)), ("meter", "centimeter", Fraction(100)),
    ("centimeter", "millimeter", Fraction(10)), ("meter", "millimeter", Fraction(1000)),
    ("kilogram", "gram", Fraction(1000)), ("gram", "milligram", Fraction(1000)),
    ("liter", "milliliter", Fraction(1000)), ("hour", "minute", Fraction(60)),
    ("minute", "second", Fraction(60)), ("day", "hour", Fraction(24)),
    ("week", "day", Fraction(7)), ("hour", "second", Fraction(3600)),
    ("foot", "inch", Fraction(12)), ("yard", "foot", Fraction(3)),
    ("pound", "ounce", Fraction(16)),
    ("meter", "kilometer", Fraction(1, 1000)), ("gram", "kilogram", Fraction(1, 1000)),
    ("minute", "hour", Fraction(1, 60)), ("second", "minute", Fraction(1, 60)),
    ("centimeter", "meter", Fraction(1, 100)), ("milliliter", "liter", Fraction(1, 1000)),
    ("day", "week", Fraction(1, 7)), ("inch", "foot", Fraction(1, 12)),
)
UNIT_KINDS: dict[str, str] = {
    "millimeter": "length", "centimeter": "length", "meter": "distance",
    "kilometer": "distance", "inch": "length", "foot": "length", "yard": "length",
    "milligram": "mass", "gram": "mass", "kilogram": "mass", "ounce": "weight",
    "pound": "weight", "milliliter": "volume", "liter": "volume", "second": "duration",
    "minute": "duration", "hour": "duration", "day": "duration", "week": "duration",
}

# --------------------------------------------------------------------------------------------
# Templates: (instruction, input). Most families mix an empty input with a separate one.
# --------------------------------------------------------------------------------------------

CONVERSION_TEMPLATES: tuple[Template, ...] = (
    ("Convert {quantity} to {target}.", ""),
    ("How many {target} are in {quantity}?", ""),
    ("Express {quantity} in {target}.", ""),
    ("What is {quantity} in {target}?", ""),
    ("Convert the following {kind} to {target}.", "{quantity}"),
    ("Change the given measurement into {target}.", "{quantity}"),
    ("How many {target} is the following {kind}?", "{quantity}"),
)
ARITHMETIC_TEMPLATES: dict[str, tuple[Template, ...]] = {
    "add": (("What is {a} plus {b}?", ""), ("Add {a} and {b}.", ""),
            ("Calculate {a} + {b}.", ""),
            ("Find the sum of the following numbers.", "{a} and {b}"),
            ("Add the two numbers below.", "{a}, {b}")),
    "subtract": (("What is {a} minus {b}?", ""), ("Subtract {b} from {a}.", ""),
                 ("Calculate {a} - {b}.", ""),
                 ("Subtract the second number from the first.", "{a}, {b}"),
                 ("Find the difference when the second number is taken from the first.",
                  "{a} and {b}")),
    "multiply": (("What is {a} times {b}?", ""), ("Multiply {a} by {b}.", ""),
                 ("Calculate {a} * {b}.", ""),
                 ("Find the product of the following numbers.", "{a} and {b}"),
                 ("Multiply the two numbers below.", "{a}, {b}")),
    "divide": (("What is {a} divided by {b}?", ""), ("Divide {a} by {b}.", ""),
               ("Calculate {a} / {b}.", ""),
               ("Divide the first number by the second.", "{a}, {b}")),
    "percent": (("What is {a}% of {b}?", ""), ("Calculate {a} percent of {b}.", ""),
                ("Find {a}% of the following number.", "{b}")),
}
ARITHMETIC_OUTPUTS: dict[str, str] = {
    "add": "{a} plus {b} is {c}.", "subtract": "{a} minus {b} is {c}.",
    "multiply": "{a} multiplied by {b} is {c}.", "divide": "{a} divided by {b} is {c}.",
    "percent": "{a}% of {b} is {c}.",
}
COMPARISON_TEMPLATES: dict[str, tuple[Template, ...]] = {
    "larger": (("Which number is larger, {x} or {y}?", ""), ("Which is greater: {x} or {y}?", ""),
               ("Of {x} and {y}, which is bigger?", ""),
               ("Identify the larger of the two numbers.", "{x}, {y}")),
    "smaller": (("Which number is smaller, {x} or {y}?", ""),
                ("Which is less: {x} or {y}?", ""),
                ("Identify the smaller of the two numbers.", "{x}, {y}")),
}
PARITY_TEMPLATES: tuple[Template, ...] = (
    ("Is {n} an even or an odd number?", ""), ("Is {n} even or odd?", ""),
    ("Tell whether the given number is even or odd.", "{n}"),
    ("Classify the following number as even or odd.", "{n}"),
)
SPELLING_TEMPLATES: tuple[Template, ...] = (
    ("Correct the spelling of the word '{word}'.", ""),
    ("How do you spell '{word}' correctly?", ""),
    ("The word '{word}' is misspelled. Write it correctly.", ""),
    ("Correct the spelling of the following word.", "{word}"),
    ("Fix the misspelled word below.", "{word}"),
)
SYNONYM_TEMPLATES: tuple[Template, ...] = (
    ("Provide a synonym for '{word}'.", ""), ("What is a synonym of '{word}'?", ""),
    ("Give a word that means the same as '{word}'.", ""),
    ("Suggest another word for '{word}'.", ""),
    ("Find a synonym for the given word.", "{word}"),
    ("Write a synonym of the following word.", "{word}"),
)
ANTONYM_TEMPLATES: tuple[Template, ...] = (
    ("What is the antonym of '{word}'?", ""), ("Give the opposite of '{word}'.", ""),
    ("Provide an antonym for '{word}'.", ""),
    ("What is the opposite of the word '{word}'?", ""),
    ("Write the antonym of the given word.", "{word}"),
    ("Find the opposite of the following word.", "{word}"),
)
PLURAL_TEMPLATES: tuple[Template, ...] = (
    ("What is the plural of '{word}'?", ""), ("Write the plural form of '{word}'.", ""),
    ("Give the plural form of the word '{word}'.", ""),
    ("Convert the given noun to its plural form.", "{word}"),
    ("What is the plural of the following noun?", "{word}"),
)
SINGULAR_TEMPLATES: tuple[Template, ...] = (
    ("What is the singular form of '{word}'?", ""),
    ("Give the singular of the following noun.", "{word}"),
)
PAST_TENSE_TEMPLATES: tuple[Template, ...] = (
    ("What is the past tense of '{word}'?", ""),
    ("Give the simple past form of the verb '{word}'.", ""),
    ("Write the past tense of '{word}'.", ""),
    ("Convert the given verb to the past tense.", "{word}"),
    ("What is the past tense of the following verb?", "{word}"),
)
ACTIVE_VOICE_TEMPLATES: tuple[Template, ...] = (
    ("Rewrite the following sentence in the active voice.", "{sentence}"),
    ("Edit the following sentence to remove the passive voice.", "{sentence}"),
    ("Change this sentence from passive to active voice.", "{sentence}"),
    ("Convert the passive sentence below into the active voice.", "{sentence}"),
    ("Rewrite the sentence '{sentence}' in the active voice.", ""),
)
SENTIMENT_TEMPLATES: tuple[Template, ...] = (
    ("Classify the sentiment of the following sentence as positive or negative.",
     "{sentence}"),
    ("Is the following review positive or negative?", "{sentence}"),
    ("Determine the sentiment of this sentence.", "{sentence}"),
    ("What is the sentiment of the sentence '{sentence}'?", ""),
    ("Is the sentence '{sentence}' positive or negative?", ""),
)
EXTRACTION_TEMPLATES: dict[str, tuple[Template, ...]] = {
    "number": (("Extract the number from the following sentence.", "{sentence}"),
               ("What number appears in this sentence?", "{sentence}"),
               ("Identify the number mentioned in the sentence '{sentence}'", "")),
    "city": (("Extract the city from the following sentence.", "{sentence}"),
             ("Which city is mentioned in this sentence?", "{sentence}"),
             ("Identify the city named in the sentence '{sentence}'", "")),
    "date": (("Extract the date from the following sentence.", "{sentence}"),
             ("What date is mentioned in this sentence?", "{sentence}"),
             ("Identify the date given in the sentence '{sentence}'", "")),
    "name": (("Extract the name of the person from the following sentence.", "{sentence}"),
             ("Which person's name is mentioned in this sentence?", "{sentence}"),
             ("Identify the name of the person in the sentence '{sentence}'", "")),
}
COUNTING_TEMPLATES: dict[str, tuple[Template, ...]] = {
    "letters": (("How many letters are in the word '{word}'?", ""),
                ("Count the letters in the following word.", "{word}"),
                ("How long is the word '{word}' in letters?", "")),
    "vowels": (("How many vowels (a, e, i, o, u) are in the word '{word}'?", ""),
               ("Count the vowels in the following word.", "{word}")),
    "letter": (("How many times does the letter '{letter}' appear in the word '{word}'?", ""),
               ("Count how many times the letter '{letter}' occurs in the following word.",
                "{word}")),
    "words": (("How many words are in the following sentence?", "{sentence}"),
              ("Count the words in this sentence.", "{sentence}"),
              ("How many words does the sentence '{sentence}' contain?", "")),
}
SORTING_TEMPLATES: dict[str, tuple[Template, ...]] = {
    "alphabetical": (("Sort the following words in alphabetical order.", "{items}"),
                     ("Arrange these words alphabetically: {items}.", ""),
                     ("Put the following list of words in alphabetical order.", "{items}"),
                     ("List these words in alphabetical order: {items}.", "")),
    "ascending": (("Sort the following numbers from smallest to largest.", "{items}"),
                  ("Arrange these numbers in ascending order: {items}.", "")),
    "descending": (("Sort the following numbers from largest to smallest.", "{items}"),
                   ("Arrange these numbers in descending order: {items}.", "")),
}
SORTING_OUTPUTS: dict[str, str] = {
    "alphabetical": "In alphabetical order: {items}.",
    "ascending": "From smallest to largest: {items}.",
    "descending": "From largest to smallest: {items}.",
}
CAPITAL_TEMPLATES: tuple[Template, ...] = (
    ("What is the capital of {country}?", ""), ("Name the capital city of {country}.", ""),
    ("Which city is the capital of {country}?", ""),
    ("Identify the capital of the given country.", "{bare_country}"),
    ("What is the capital city of the following country?", "{bare_country}"),
)
CAPITAL_REVERSE_TEMPLATES: tuple[Template, ...] = (
    ("{capital} is the capital of which country?", ""),
    ("Which country has {capital} as its capital?", ""),
)
CATEGORIZATION_TEMPLATES: tuple[Template, ...] = (
    ("Is {a_item} {options}?", ""),
    ("Classify the following item as {options}.", "{item}"),
    ("Which category does '{item}' belong to: {options}?", ""),
    ("Decide whether the given word names {options}.", "{item}"),
)
ODD_ONE_OUT_TEMPLATES: tuple[Template, ...] = (
    ("Which word does not belong in the following list?", "{items}"),
    ("Find the odd one out: {items}.", ""),
    ("Identify the item that does not fit with the others.", "{items}"),
)

# --------------------------------------------------------------------------------------------
# Small helpers shared by builders and verifiers
# --------------------------------------------------------------------------------------------

_NUMBER = r"\d+(?:\.\d+)?"


def _num(value: Fraction | int) -> str:
    """Format a terminating decimal without trailing zeros: 45, 2.5, 0.25."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return text.rstrip("0").rstrip(".")


def _unit_name(unit: str, value: Fraction) -> str:
    if value == 1:
        return unit
    return {"foot": "feet", "inch": "inches"}.get(unit, unit + "s")


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join_or(options: Sequence[str]) -> str:
    return ", ".join(options[:-1]) + " or " + options[-1]


def _entry(task: str, template: Template, output: str, **fields: str) -> Entry:
    instruction, input_text = template
    return {"instruction": instruction.format(**fields), "input": input_text.format(**fields),
            "output": output, "task": task}


def _cycler(rng: random.Random, items: Sequence[T]) -> Callable[[], T]:
    """Return a function yielding the items in a fresh shuffled order each round."""
    queue: list[T] = []

    def take() -> T:
        if not queue:
            queue.extend(rng.sample(list(items), len(items)))
        return queue.pop()

    return take


def _collect(rng: random.Random, count: int, make: Callable[[random.Random], Entry]) -> list[Entry]:
    """Call `make` until `count` entries with distinct (instruction, input) are collected."""
    entries: dict[tuple[str, str], Entry] = {}
    for _ in range(count * 50):
        entry = make(rng)
        entries.setdefault((entry["instruction"], entry["input"]), entry)
        if len(entries) == count:
            return list(entries.values())
    raise RuntimeError(f"could not make {count} distinct entries (got {len(entries)})")


def _antonym_map() -> dict[str, str]:
    mapping: dict[str, str] = {}
    for left, right in ANTONYM_PAIRS:
        mapping[left] = right
        mapping[right] = left
    return mapping


def _word_pool() -> list[str]:
    """Plain lowercase words for the counting family, from the tables above."""
    words = set(SYNONYMS) | set(SYNONYMS.values()) | set(MISSPELLINGS.values())
    for _, _, members in CATEGORIES.values():
        words.update(members)
    return sorted(word for word in words if word.isalpha() and 4 <= len(word) <= 12)


def _category_of(item: str) -> str | None:
    for name, (_, _, members) in CATEGORIES.items():
        if item in members:
            return name
    return None


# --------------------------------------------------------------------------------------------
# Builders: one per family, each returns exactly FAMILY_SIZES[family] entries
# --------------------------------------------------------------------------------------------


def _build_unit_conversion(rng: random.Random, count: int) -> list[Entry]:
    def make(rng: random.Random) -> Entry:
        source, target, factor = rng.choice(CONVERSIONS)
        if factor >= 1:
            value = Fraction(rng.randint(2, 99))
            if rng.random() < 0.2:
                value += Fraction(1, 2)
            result = value * factor
        else:
            result = Fraction(rng.randint(2, 40))
            if rng.random() < 0.2:
                result -= Fraction(1, 2)
            value = result / factor
        quantity = f"{_num(value)} {_unit_name(source, value)}"
        output = f"{quantity} is {_num(result)} {_unit_name(target, result)}."
        return _entry("unit_conversion", rng.choice(CONVERSION_TEMPLATES), output,
                      quantity=quantity, target=_unit_name(target, Fraction(2)),
                      kind=UNIT_KINDS[source])

    return _collect(rng, count, make)


def _arithmetic_operands(rng: random.Random, operation: str) -> tuple[int, int, int]:
    if operation == "add":
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        return a, b, a + b
    if operation == "subtract":
        a = rng.randint(10, 999)
        b = rng.randint(1, a - 1)
        return a, b, a - b
    if operation == "multiply":
        a, b = rng.randint(2, 99), rng.randint(2, 19)
        return a, b, a * b
    if operation == "divide":
        b, quotient = rng.randint(2, 12), rng.randint(2, 60)
        return b * quotient, b, quotient
    percent = rng.choice((5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 80, 90))
    base = 20 * rng.randint(1, 40)
    return percent, base, percent * base // 100


def _build_arithmetic(rng: random.Random, count: int) -> list[Entry]:
    operations = ("add", "add", "subtract", "subtract", "multiply", "multiply", "divide",
                  "percent")

    def make(rng: random.Random) -> Entry:
        operation = rng.choice(operations)
        a, b, c = _arithmetic_operands(rng, operation)
        output = ARITHMETIC_OUTPUTS[operation].format(a=a, b=b, c=c)
        return _entry("arithmetic", rng.choice(ARITHMETIC_TEMPLATES[operation]), output,
                      a=str(a), b=str(b))

    return _collect(rng, count, make)


def _comparison_pair(rng: random.Random) -> tuple[Fraction, Fraction]:
    if rng.random() < 0.6:
        x, y = rng.sample(range(1, 10000), 2)
        return Fraction(x), Fraction(y)
    # Decimals with the same whole part, e.g. 3.5 and 3.45, are the instructive cases.
    whole = rng.randint(0, 20)
    x, y = rng.sample(range(1, 100), 2)
    return whole + Fraction(x, 100), whole + Fraction(y, 100)


def _build_comparison(rng: random.Random, count: int) -> list[Entry]:
    def make(rng: random.Random) -> Entry:
        x, y = _comparison_pair(rng)
        relation = rng.choice(("larger", "larger", "smaller"))
        if relation == "larger":
            output = f"{_num(max(x, y))} is larger than {_num(min(x, y))}."
        else:
            output = f"{_num(min(x, y))} is smaller than {_num(max(x, y))}."
        return _entry("comparison", rng.choice(COMPARISON_TEMPLATES[relation]), output,
                      x=_num(x), y=_num(y))

    return _collect(rng, count, make)


def _build_parity(rng: random.Random, count: int) -> list[Entry]:
    def make(rng: random.Random) -> Entry:
        n = rng.randint(1, 9999)
        output = f"{n} is {'an even' if n % 2 == 0 else 'an odd'} number."
        return _entry("parity", rng.choice(PARITY_TEMPLATES), output, n=str(n))

    return _collect(rng, count, make)


def _build_lookup(
    rng: random.Random,
    count: int,
    task: str,
    table: dict[str, str],
    templates: Sequence[Template],
    output: str,
) -> list[Entry]:
    """Entries for a word -> word table: every key is used before any is used twice."""
    next_word = _cycler(rng, sorted(table))

    def make(rng: random.Random) -> Entry:
        word = next_word()
        return _entry(task, rng.choice(templates), output.format(word=word, answer=table[word]),
                      word=word)

    return _collect(rng, count, make)


def _build_spelling(rng: random.Random, count: int) -> list[Entry]:
    return _build_lookup(rng, count, "spelling", MISSPELLINGS, SPELLING_TEMPLATES,
                         "The correct spelling is '{answer}'.")


def _build_synonym(rng: random.Random, count: int) -> list[Entry]:
    return _build_lookup(rng, count, "synonym", SYNONYMS, SYNONYM_TEMPLATES,
                         "A synonym for '{word}' is '{answer}'.")


def _build_antonym(rng: random.Random, count: int) -> list[Entry]:
    return _build_lookup(rng, count, "antonym", _antonym_map(), ANTONYM_TEMPLATES,
                         "The antonym of '{word}' is '{answer}'.")


def _build_plural(rng: random.Random, count: int) -> list[Entry]:
    singular_count = count // 5
    plural_entries = _build_lookup(rng, count - singular_count, "plural", PLURALS,
                                   PLURAL_TEMPLATES, "The plural form of '{word}' is '{answer}'.")
    singulars = {plural: word for word, plural in PLURALS.items() if plural != word}
    singular_entries = _build_lookup(rng, singular_count, "plural", singulars,
                                     SINGULAR_TEMPLATES,
                                     "The singular form of '{word}' is '{answer}'.")
    return plural_entries + singular_entries


def _build_past_tense(rng: random.Random, count: int) -> list[Entry]:
    return _build_lookup(rng, count, "past_tense", PAST_TENSES, PAST_TENSE_TEMPLATES,
                         "The past tense of '{word}' is '{answer}'.")


def _build_active_voice(rng: random.Random, count: int) -> list[Entry]:
    def make(rng: random.Random) -> Entry:
        verb, agents, objects = rng.choice(VOICE_SCENES)
        agent, thing = rng.choice(agents), rng.choice(objects)
        past, participle = VERB_FORMS[verb]
        if rng.random() < 0.7:
            auxiliary = "were" if thing.endswith("s") else "was"
            active_verb = past
        else:
            auxiliary, active_verb = "will be", f"will {verb}"
        passive = f"{thing[0].upper()}{thing[1:]} {auxiliary} {participle} by {agent}."
        active = f"{agent[0].upper()}{agent[1:]} {active_verb} {thing}."
        return _entry("active_voice", rng.choice(ACTIVE_VOICE_TEMPLATES), active,
                      sentence=passive)

    return _collect(rng, count, make)


def _sentiment_sentence(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(("positive", "negative"))
    word = rng.choice(SENTIMENT_WORDS[label])
    frame = rng.choice(SENTIMENT_FRAMES)
    return frame.format(topic=rng.choice(SENTIMENT_TOPICS), word=word, a_word=_article(word)), label


def _build_sentiment(rng: random.Random, count: int) -> list[Entry]:
    def make(rng: random.Random) -> Entry:
        sentence, label = _sentiment_sentence(rng)
        return _entry("sentiment", rng.choice(SENTIMENT_TEMPLATES),
                      f"The sentiment of the sentence is {label}.", sentence=sentence)

    return _collect(rng, count, make)


def _extraction_value(rng: random.Random, kind: str) -> str:
    if kind == "number":
        return str(rng.randint(3, 5000))
    if kind == "city":
        return rng.choice(EXTRACTION_CITIES)
    if kind == "name":
        return rng.choice(EXTRACTION_NAMES)
    month = rng.choice(list(MONTH_DAYS))
    return f"{month} {rng.randint(1, MONTH_DAYS[month])}"


def _extraction_sentence(rng: random.Random, kind: str) -> tuple[str, str]:
    value = _extraction_value(rng, kind)
    return rng.choice(EXTRACTION_FRAMES[kind]).format(value=value), value


def _build_extraction(rng: random.Random, count: int) -> list[Entry]:
    def make(rng: random.Random) -> Entry:
        kind = rng.choice(list(EXTRACTION_FRAMES))
        sentence, value = _extraction_sentence(rng, kind)
        return _entry("extraction", rng.choice(EXTRACTION_TEMPLATES[kind]),
                      f"The {kind} mentioned is {value}.", sentence=sentence)

    return _collect(rng, count, make)


def _build_counting(rng: random.Random, count: int) -> list[Entry]:
    words = _word_pool()
    vowel_words = [word for word in words if "y" not in word
                   and sum(char in "aeiou" for char in word) >= 2]
    repeat_words = [word for word in words if len(set(word)) < len(word)]

    def make(rng: random.Random) -> Entry:
        kind = rng.choice(("letters", "vowels", "letter", "words"))
        templates = COUNTING_TEMPLATES[kind]
        if kind == "letters":
            word = rng.choice(words)
            return _entry("counting", rng.choice(templates),
                          f"The word '{word}' has {len(word)} letters.", word=word)
        if kind == "vowels":
            word = rng.choice(vowel_words)
            vowels = sum(char in "aeiou" for char in word)
            return _entry("counting", rng.choice(templates),
                          f"The word '{word}' has {vowels} vowels.", word=word)
        if kind == "letter":
            word = rng.choice(repeat_words)
            letter = rng.choice(sorted({char for char in word if word.count(char) >= 2}))
            return _entry("counting", rng.choice(templates),
                          f"The letter '{letter}' appears {word.count(letter)} times in the word"
                          f" '{word}'.", word=word, letter=letter)
        if rng.random() < 0.5:
            sentence, _ = _sentiment_sentence(rng)
        else:
            sentence, _ = _extraction_sentence(rng, rng.choice(list(EXTRACTION_FRAMES)))
        return _entry("counting", rng.choice(templates),
                      f"The sentence has {len(sentence.split())} words.", sentence=sentence)

    return _collect(rng, count, make)


def _build_sorting(rng: random.Random, count: int) -> list[Entry]:
    words = sorted({word for _, _, members in CATEGORIES.values() for word in members}
                   | set(SYNONYMS))

    def make(rng: random.Random) -> Entry:
        order = rng.choice(("alphabetical", "alphabetical", "ascending", "descending"))
        size = rng.randint(3, 6)
        if order == "alphabetical":
            items = rng.sample(words, size)
            ordered = sorted(items)
        else:
            numbers = rng.sample(range(1, 200), size)
            ordered = [str(n) for n in sorted(numbers, reverse=order == "descending")]
            items = [str(n) for n in numbers]
        if items == ordered:
            items = items[1:] + items[:1]
        output = SORTING_OUTPUTS[order].format(items=", ".join(ordered))
        return _entry("sorting", rng.choice(SORTING_TEMPLATES[order]), output,
                      items=", ".join(items))

    return _collect(rng, count, make)


def _build_capital(rng: random.Random, count: int) -> list[Entry]:
    next_country = _cycler(rng, sorted(COUNTRY_CAPITALS))

    def make(rng: random.Random) -> Entry:
        country = next_country()
        capital = COUNTRY_CAPITALS[country]
        bare = country.removeprefix("the ")
        if rng.random() < 0.25:
            return _entry("capital", rng.choice(CAPITAL_REVERSE_TEMPLATES),
                          f"{capital} is the capital of {country}.", capital=capital)
        return _entry("capital", rng.choice(CAPITAL_TEMPLATES),
                      f"The capital of {country} is {capital}.",
                      country=country, bare_country=bare)

    return _collect(rng, count, make)


def _build_categorization(rng: random.Random, count: int) -> list[Entry]:
    names = sorted(CATEGORIES)

    def make(rng: random.Random) -> Entry:
        category = rng.choice(names)
        item = rng.choice(CATEGORIES[category][2])
        others = rng.sample([name for name in names if name != category], rng.randint(1, 2))
        options = [CATEGORIES[name][0] for name in rng.sample([category, *others],
                                                               len(others) + 1)]
        a_item = _article(item)
        output = f"{a_item[0].upper()}{a_item[1:]} is {CATEGORIES[category][0]}."
        return _entry("categorization", rng.choice(CATEGORIZATION_TEMPLATES), output,
                      item=item, a_item=a_item, options=_join_or(options))

    return _collect(rng, count, make)


def _build_odd_one_out(rng: random.Random, count: int) -> list[Entry]:
    names = sorted(CATEGORIES)

    def make(rng: random.Random) -> Entry:
        common, odd = rng.sample(names, 2)
        odd_item = rng.choice(CATEGORIES[odd][2])
        items = [*rng.sample(CATEGORIES[common][2], 3), odd_item]
        rng.shuffle(items)
        output = (f"The odd one out is '{odd_item}', because it is {CATEGORIES[odd][0]} while"
                  f" the others are {CATEGORIES[common][1]}.")
        return _entry("odd_one_out", rng.choice(ODD_ONE_OUT_TEMPLATES), output,
                      items=", ".join(items))

    return _collect(rng, count, make)


BUILDERS: dict[str, Callable[[random.Random, int], list[Entry]]] = {
    "unit_conversion": _build_unit_conversion,
    "arithmetic": _build_arithmetic,
    "comparison": _build_comparison,
    "parity": _build_parity,
    "spelling": _build_spelling,
    "synonym": _build_synonym,
    "antonym": _build_antonym,
    "plural": _build_plural,
    "past_tense": _build_past_tense,
    "active_voice": _build_active_voice,
    "sentiment": _build_sentiment,
    "extraction": _build_extraction,
    "counting": _build_counting,
    "sorting": _build_sorting,
    "capital": _build_capital,
    "categorization": _build_categorization,
    "odd_one_out": _build_odd_one_out,
}

# --------------------------------------------------------------------------------------------
# Verifiers: re-derive each answer from the question text alone
# --------------------------------------------------------------------------------------------

# Every unit's size in one base unit per dimension (millimeters, milligrams, milliliters,
# seconds): deliberately a different table from CONVERSIONS.
_UNIT_SIZES: dict[str, tuple[str, Fraction]] = {
    "millimeter": ("length", Fraction(1)), "centimeter": ("length", Fraction(10)),
    "meter": ("length", Fraction(1000)), "kilometer": ("length", Fraction(1000000)),
    "inch": ("length", Fraction("25.4")), "foot": ("length", Fraction("304.8")),
    "yard": ("length", Fraction("914.4")),
    "milligram": ("mass", Fraction(1)), "gram": ("mass", Fraction(1000)),
    "kilogram": ("mass", Fraction(1000000)), "ounce": ("mass", Fraction("28349.523125")),
    "pound": ("mass", Fraction("453592.37")),
    "milliliter": ("volume", Fraction(1)), "liter": ("volume", Fraction(1000)),
    "second": ("time", Fraction(1)), "minute": ("time", Fraction(60)),
    "hour": ("time", Fraction(3600)), "day": ("time", Fraction(86400)),
    "week": ("time", Fraction(604800)),
}
_UNIT_PLURAL_FORMS = {"feet": "foot", "inches": "inch"}


def _question(entry: Entry) -> str:
    return f"{entry['instruction']}\n{entry['input']}"


def _subject(entry: Entry) -> str:
    """The text the question is about: the input, else the quoted part of the instruction."""
    if entry["input"]:
        return entry["input"]
    match = re.search(r"'(.+)'", entry["instruction"])
    return match.group(1) if match else ""


def _quoted_word(entry: Entry) -> str:
    """The single word asked about: the input, else the first quoted word."""
    if entry["input"]:
        return entry["input"]
    match = re.search(r"'([^']+)'", entry["instruction"])
    return match.group(1) if match else ""


def _numbers_in(text: str) -> list[Fraction]:
    return [Fraction(token) for token in re.findall(_NUMBER, text)]


def _parse_unit(name: str, value: Fraction) -> str | None:
    """The singular unit name, or None if unknown or not in agreement with `value`."""
    singular = _UNIT_PLURAL_FORMS.get(name) or (name[:-1] if name.endswith("s") else name)
    if singular not in _UNIT_SIZES:
        return None
    return singular if (name == singular) == (value == 1) else None


def _verify_unit_conversion(entry: Entry) -> bool:
    match = re.fullmatch(rf"({_NUMBER}) ([a-z]+) is ({_NUMBER}) ([a-z]+)\.", entry["output"])
    if not match:
        return False
    value, result = Fraction(match[1]), Fraction(match[3])
    source, target = _parse_unit(match[2], value), _parse_unit(match[4], result)
    if source is None or target is None:
        return False
    (source_dim, source_size), (target_dim, target_size) = _UNIT_SIZES[source], _UNIT_SIZES[target]
    question = _question(entry)
    target_plural = _unit_name(target, Fraction(2))
    return (source_dim == target_dim and value * source_size == result * target_size
            and f"{match[1]} {match[2]}" in question
            and re.search(rf"\b{target_plural}\b", entry["instruction"]) is not None
            and _numbers_in(question) == [value])


_OPERATION_WORDS: dict[str, tuple[str, ...]] = {
    "plus": ("plus", "add", "sum", "+"),
    "minus": ("minus", "subtract", "difference", " - "),
    "multiplied by": ("times", "multiply", "product", "*"),
    "divided by": ("divided", "divide", "/"),
    "of": ("%", "percent"),
}


def _verify_arithmetic(entry: Entry) -> bool:
    match = re.fullmatch(r"(\d+)(?: (plus|minus|multiplied by|divided by)|% (of)) (\d+) is"
                         r" (\d+)\.", entry["output"])
    if not match:
        return False
    a, b, c = int(match[1]), int(match[4]), int(match[5])
    operation = match[2] or match[3]
    question = _question(entry).lower()
    asked = {op for op, words in _OPERATION_WORDS.items() if any(w in question for w in words)}
    if asked != {operation}:
        return False
    operands = [int(token) for token in re.findall(r"\d+", question)]
    reversed_order = re.search(r"subtract \d+ from \d+", question) is not None
    if operands != ([b, a] if reversed_order else [a, b]):
        return False
    expected = {
        "plus": lambda: a + b == c,
        "minus": lambda: a - b == c,
        "multiplied by": lambda: a * b == c,
        "divided by": lambda: b != 0 and c * b == a,
        "of": lambda: Fraction(a * b, 100) == c,
    }
    return expected[operation]()


def _verify_comparison(entry: Entry) -> bool:
    match = re.fullmatch(rf"({_NUMBER}) is (larger|smaller) than ({_NUMBER})\.", entry["output"])
    if not match:
        return False
    first, relation, second = Fraction(match[1]), match[2], Fraction(match[3])
    question = _question(entry).lower()
    wants_larger = any(word in question for word in ("larger", "greater", "bigger"))
    wants_smaller = any(word in question for word in ("smaller", "less"))
    if wants_larger == wants_smaller or wants_larger != (relation == "larger"):
        return False
    if sorted(_numbers_in(question)) != sorted([first, second]):
        return False
    return first > second if relation == "larger" else first < second


def _verify_parity(entry: Entry) -> bool:
    match = re.fullmatch(r"(\d+) is an (even|odd) number\.", entry["output"])
    if not match or "even or" not in _question(entry):
        return False
    n = int(match[1])
    return _numbers_in(_question(entry)) == [n] and (n % 2 == 0) == (match[2] == "even")


def _edit_distance(left: str, right: str) -> int:
    """Edit distance counting insertions, deletions, substitutions and adjacent swaps."""
    rows = [[i + j if i * j == 0 else 0 for j in range(len(right) + 1)]
            for i in range(len(left) + 1)]
    for i in range(1, len(left) + 1):
        for j in range(1, len(right) + 1):
            cost = left[i - 1] != right[j - 1]
            rows[i][j] = min(rows[i - 1][j] + 1, rows[i][j - 1] + 1, rows[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and left[i - 1] == right[j - 2] and left[i - 2] == right[j - 1]:
                rows[i][j] = min(rows[i][j], rows[i - 2][j - 2] + 1)
    return rows[-1][-1]


def _verify_spelling(entry: Entry) -> bool:
    match = re.fullmatch(r"The correct spelling is '([a-z]+)'\.", entry["output"])
    wrong = _quoted_word(entry)
    return (match is not None and MISSPELLINGS.get(wrong) == match[1]
            and 0 < _edit_distance(wrong, match[1]) <= 2)


def _verify_synonym(entry: Entry) -> bool:
    match = re.fullmatch(r"A synonym for '([a-z]+)' is '([a-z]+)'\.", entry["output"])
    asks = any(phrase in entry["instruction"]
               for phrase in ("synonym", "means the same", "another word"))
    return (asks and match is not None and match[1] == _quoted_word(entry)
            and SYNONYMS.get(match[1]) == match[2])


def _verify_antonym(entry: Entry) -> bool:
    match = re.fullmatch(r"The antonym of '([a-z]+)' is '([a-z]+)'\.", entry["output"])
    asks = any(word in entry["instruction"] for word in ("antonym", "opposite"))
    return (asks and match is not None and match[1] == _quoted_word(entry)
            and ((match[1], match[2]) in ANTONYM_PAIRS or (match[2], match[1]) in ANTONYM_PAIRS))


def _rule_plural(noun: str) -> str:
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _verify_plural(entry: Entry) -> bool:
    match = re.fullmatch(r"The (plural|singular) form of '([a-z]+)' is '([a-z]+)'\.",
                         entry["output"])
    if not match or match[2] != _quoted_word(entry) or match[1] not in entry["instruction"]:
        return False
    singular, plural = (match[2], match[3]) if match[1] == "plural" else (match[3], match[2])
    if PLURALS.get(singular) != plural:
        return False
    # Regular nouns must follow the spelling rule; nouns listed as irregular must not.
    return (singular in IRREGULAR_PLURALS) == (_rule_plural(singular) != plural)


def _rule_past(verb: str) -> str:
    if verb in DOUBLING_VERBS:
        return verb + verb[-1] + "ed"
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    return verb + "ed"


def _verify_past_tense(entry: Entry) -> bool:
    match = re.fullmatch(r"The past tense of '([a-z]+)' is '([a-z]+)'\.", entry["output"])
    if not match or match[1] != _quoted_word(entry) or "past" not in entry["instruction"]:
        return False
    verb, past = match[1], match[2]
    if verb in REGULAR_PAST_TENSES:
        return REGULAR_PAST_TENSES[verb] == past == _rule_past(verb)
    # An irregular verb's listed form must be one the spelling rule would not produce.
    return IRREGULAR_PAST_TENSES.get(verb) == past != _rule_past(verb)


def _verify_active_voice(entry: Entry) -> bool:
    passive = re.fullmatch(r"([A-Z][a-z]*(?: [a-z]+)*) (was|were|will be) ([a-z]+) by"
                           r" ([A-Za-z]+(?: [A-Za-z]+)*)\.", _subject(entry))
    if not passive or "voice" not in entry["instruction"]:
        return False
    thing, auxiliary, participle, agent = passive.groups()
    bases = [base for base, (_, pp) in VERB_FORMS.items() if pp == participle]
    if len(bases) != 1 or (auxiliary == "were") != (thing.endswith("s") and auxiliary != "will be"):
        return False
    base = bases[0]
    verb = f"will {base}" if auxiliary == "will be" else VERB_FORMS[base][0]
    expected = f"{agent[0].upper()}{agent[1:]} {verb} {thing[0].lower()}{thing[1:]}."
    return entry["output"] == expected


def _verify_sentiment(entry: Entry) -> bool:
    match = re.fullmatch(r"The sentiment of the sentence is (positive|negative)\.",
                         entry["output"])
    if not match or not any(word in entry["instruction"] for word in ("sentiment", "positive")):
        return False
    words = re.findall(r"[a-z]+", _subject(entry).lower())
    found = {label for label, lexicon in SENTIMENT_WORDS.items() for w in words if w in lexicon}
    hits = sum(w in lexicon for lexicon in SENTIMENT_WORDS.values() for w in words)
    return found == {match[1]} and hits == 1


def _is_date(text: str) -> bool:
    match = re.fullmatch(r"([A-Z][a-z]+) (\d{1,2})", text)
    return match is not None and 1 <= int(match[2]) <= MONTH_DAYS.get(match[1], 0)


def _verify_extraction(entry: Entry) -> bool:
    match = re.fullmatch(r"The (number|city|date|name) mentioned is (.+)\.", entry["output"])
    if not match or match[1] not in entry["instruction"]:
        return False
    kind, value, sentence = match[1], match[2], _subject(entry)
    if re.search(rf"\b{re.escape(value)}\b", sentence) is None:
        return False
    if kind == "number":
        return re.findall(r"\d+", sentence) == [value]
    if kind == "city":
        return [city for city in EXTRACTION_CITIES if city in sentence] == [value]
    if kind == "name":
        return [name for name in EXTRACTION_NAMES if name in sentence] == [value]
    dates = re.findall(r"[A-Z][a-z]+ \d{1,2}", sentence)
    return dates == [value] and _is_date(value)


def _verify_counting(entry: Entry) -> bool:
    output, instruction = entry["output"], entry["instruction"]
    word = _quoted_word(entry)
    match = re.fullmatch(r"The word '([a-z]+)' has (\d+) (letters|vowels)\.", output)
    if match:
        if match[1] != word or match[3] not in instruction:
            return False
        if match[3] == "letters":
            return len(word) == int(match[2]) >= 2
        return "y" not in word and sum(c in "aeiou" for c in word) == int(match[2]) >= 2
    match = re.fullmatch(r"The letter '([a-z])' appears (\d+) times in the word '([a-z]+)'\.",
                         output)
    if match:
        asked_word = entry["input"] or re.findall(r"'([^']+)'", instruction)[-1]
        return (match[3] == asked_word and f"letter '{match[1]}'" in instruction
                and asked_word.count(match[1]) == int(match[2]) >= 2)
    match = re.fullmatch(r"The sentence has (\d+) words\.", output)
    return (match is not None and "words" in instruction
            and len(_subject(entry).split()) == int(match[1]))


def _verify_sorting(entry: Entry) -> bool:
    question = entry["instruction"].lower()
    if "alphabetical" in question:
        order = "alphabetical"
    elif "smallest to largest" in question or "ascending" in question:
        order = "ascending"
    elif "largest to smallest" in question or "descending" in question:
        order = "descending"
    else:
        return False
    if entry["input"]:
        listed = entry["input"]
    else:
        found = re.search(r": (.+)\.$", entry["instruction"])
        listed = found.group(1) if found else ""
    items = listed.split(", ")
    prefix = SORTING_OUTPUTS[order].split("{")[0]
    if not entry["output"].startswith(prefix) or not entry["output"].endswith("."):
        return False
    answer = entry["output"][len(prefix):-1].split(", ")
    if len(set(items)) != len(items) or len(items) < 2:
        return False
    if order == "alphabetical":
        return all(item.isalpha() for item in items) and answer == sorted(items)
    if not all(item.isdigit() for item in items):
        return False
    ranked = sorted(items, key=int, reverse=order == "descending")
    return answer == ranked


def _verify_capital(entry: Entry) -> bool:
    question = _question(entry)
    forward = re.fullmatch(r"The capital of (.+) is (.+)\.", entry["output"])
    if forward:
        country, capital = forward.groups()
        return (COUNTRY_CAPITALS.get(country) == capital
                and country.removeprefix("the ") in question)
    backward = re.fullmatch(r"(.+) is the capital of (.+)\.", entry["output"])
    if backward:
        capital, country = backward.groups()
        return COUNTRY_CAPITALS.get(country) == capital and capital in question
    return False


def _verify_categorization(entry: Entry) -> bool:
    match = re.fullmatch(r"(A|An) ([a-z]+) is (.+)\.", entry["output"])
    if not match:
        return False
    item, claimed = match[2], match[3]
    category = _category_of(item)
    if category is None or CATEGORIES[category][0] != claimed:
        return False
    article_ok = (match[1] == "An") == (item[0] in "aeiou")
    question = _question(entry)
    offered = sum(CATEGORIES[name][0] in question for name in CATEGORIES)
    return article_ok and re.search(rf"\b{item}\b", question) is not None and offered >= 2


def _verify_odd_one_out(entry: Entry) -> bool:
    match = re.fullmatch(r"The odd one out is '([a-z]+)', because it is (.+) while the others"
                         r" are (.+)\.", entry["output"])
    if not match:
        return False
    listed = entry["input"] or (re.search(r": (.+)\.$", entry["instruction"]) or ["", ""])[1]
    items = listed.split(", ")
    categories = [category for item in items if (category := _category_of(item)) is not None]
    if len(categories) != len(items) or len(items) != 4 or match[1] not in items:
        return False
    odd = categories[items.index(match[1])]
    rest = {category for item, category in zip(items, categories, strict=True) if item != match[1]}
    if rest == {odd} or len(rest) != 1:
        return False
    common = rest.pop()
    return CATEGORIES[odd][0] == match[2] and CATEGORIES[common][1] == match[3]


VERIFIERS: dict[str, Callable[[Entry], bool]] = {
    "unit_conversion": _verify_unit_conversion,
    "arithmetic": _verify_arithmetic,
    "comparison": _verify_comparison,
    "parity": _verify_parity,
    "spelling": _verify_spelling,
    "synonym": _verify_synonym,
    "antonym": _verify_antonym,
    "plural": _verify_plural,
    "past_tense": _verify_past_tense,
    "active_voice": _verify_active_voice,
    "sentiment": _verify_sentiment,
    "extraction": _verify_extraction,
    "counting": _verify_counting,
    "sorting": _verify_sorting,
    "capital": _verify_capital,
    "categorization": _verify_categorization,
    "odd_one_out": _verify_odd_one_out,
}


def verify(entry: Entry) -> bool:
    """True if `entry`'s output is the right answer to its instruction and input.

    Example:
        >>> verify({"instruction": "Convert 45 kilometers to meters.", "input": "",
        ...         "output": "45 kilometers is 45000 meters.", "task": "unit_conversion"})
        True
    """
    checker = VERIFIERS.get(entry.get("task", ""))
    if checker is None:
        return False
    try:
        return bool(checker(entry))
    except (KeyError, IndexError, ValueError, ZeroDivisionError):
        return False


# --------------------------------------------------------------------------------------------
# Conversations: single-turn records, and multi-turn ones whose follow-ups lean on the turn
# before ("And to centimeters?"). A follow-up is checked by resolving it, with what the
# previous answer says, into the self-contained question the family's verifier expects.
# --------------------------------------------------------------------------------------------

Message = dict[str, str]
Conversation = dict[str, Any]  # {"messages": [Message, ...], "task": family}
FollowUp = tuple[str, Template]  # (what the user says, the question it stands for)

#: How many multi-turn conversations each family gets (every other family has none).
MULTI_TURN_SIZES: dict[str, int] = {
    "unit_conversion": 35, "arithmetic": 35, "plural": 35, "antonym": 35, "past_tense": 35,
    "counting": 35, "sorting": 35, "capital": 35,
}

#: What a follow-up takes from the previous answer: named groups of a full match.
CARRIED: dict[str, str] = {
    "unit_conversion": r"(?P<quantity>.+?) is .+\.",
    "arithmetic": r".* is (?P<a>\d+)\.",
    "plural": r"The (?P<form>plural|singular) form of .+\.",
    "antonym": r"The antonym of .+\.",
    "past_tense": r"The past tense of .+\.",
    "capital": r"The capital of .+\.",
    "counting": r".*[Tt]he word '(?P<word>[a-z]+)'.*\.",
    "sorting": r"(?P<order>In alphabetical order|From smallest to largest|From largest to"
               r" smallest): (?P<items>.+)\.",
}
#: The sorting questions a follow-up stands for, by the previous answer's order.
SORT_AGAIN: dict[str, dict[str, str]] = {
    "In alphabetical order": {"sort": "Sort the following words in alphabetical order."},
    "From smallest to largest": {"sort": "Sort the following numbers from smallest to largest.",
                                 "reverse": "Sort the following numbers from largest to"
                                            " smallest."},
    "From largest to smallest": {"sort": "Sort the following numbers from largest to smallest.",
                                 "reverse": "Sort the following numbers from smallest to"
                                            " largest."},
}
FOLLOW_UPS: dict[str, tuple[FollowUp, ...]] = {
    "unit_conversion": (("And to {target}?", ("Convert {quantity} to {target}.", "")),
                        ("What is that in {target}?", ("Convert {quantity} to {target}.", ""))),
    "arithmetic": (("Now add {b} to that.", ("What is {a} plus {b}?", "")),
                   ("And that times {b}?", ("What is {a} times {b}?", "")),
                   ("Now subtract {b} from the result.", ("Subtract {b} from {a}.", ""))),
    "plural": (("And of '{word}'?", ("What is the {form} form of '{word}'?", "")),),
    "antonym": (("And of '{word}'?", ("What is the antonym of '{word}'?", "")),),
    "past_tense": (("And of '{word}'?", ("What is the past tense of '{word}'?", "")),),
    "capital": (("And of {country}?", ("What is the capital of {country}?", "")),),
    "counting": (("And how many letters does it have?",
                  ("How many letters are in the word '{word}'?", "")),
                 ("And how many vowels does it have?",
                  ("How many vowels (a, e, i, o, u) are in the word '{word}'?", "")),
                 ("How many times does the letter '{letter}' appear in it?",
                  ("How many times does the letter '{letter}' appear in the word '{word}'?", ""))),
    "sorting": (("Now sort them in the opposite order.", ("{reverse}", "{items}")),
                ("Add {item} to the list and sort it again.", ("{sort}", "{items}, {item}"))),
}


def user_turn(entry: Entry) -> str:
    """A single-turn entry's user message, built as TemplateStyle.format_prompt builds it."""
    return entry["instruction"] + (f"\n\n{entry['input']}" if entry["input"] else "")


def _said_pattern(said: str) -> str:
    """A follow-up's text as a regex, each `{field}` a named group."""
    return re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>.+?)", re.escape(said))


def resolve_follow_up(task: str, previous: Entry, said: str) -> Entry | None:
    """The self-contained question `said` stands for after `previous` (answered), or None.

    Example:
        >>> resolve_follow_up("unit_conversion", {"instruction": "Convert 3 kilometers to"
        ...     " meters.", "input": "", "output": "3 kilometers is 3000 meters.",
        ...     "task": "unit_conversion"}, "And to centimeters?")["instruction"]
        'Convert 3 kilometers to centimeters.'
    """
    carried = re.fullmatch(CARRIED.get(task, "(?!)"), previous["output"])
    if carried is None:
        return None
    fields = {**carried.groupdict(), **SORT_AGAIN.get(carried.groupdict().get("order", ""), {})}
    for pattern, (instruction, input_text) in FOLLOW_UPS[task]:
        match = re.fullmatch(_said_pattern(pattern), said)
        if match:
            values = {**fields, **match.groupdict()}
            try:
                return {"instruction": instruction.format(**values),
                        "input": input_text.format(**values), "output": "", "task": task}
            except KeyError:
                return None
    return None


def turn_entries(record: Conversation) -> list[Entry] | None:
    """Each assistant turn of `record` as the entry its verifier expects, or None if the
    record is not user/assistant turns or a follow-up cannot be resolved."""
    messages, task = record["messages"], record["task"]
    roles = [message["role"] for message in messages]
    if not messages or roles != ["user", "assistant"] * (len(messages) // 2):
        return None
    said, answers = [m["content"] for m in messages[::2]], [m["content"] for m in messages[1::2]]
    instruction, _, input_text = said[0].partition("\n\n")
    entries = [{"instruction": instruction, "input": input_text, "output": answers[0],
                "task": task}]
    for text, answer in zip(said[1:], answers[1:], strict=True):
        resolved = resolve_follow_up(task, entries[-1], text)
        if resolved is None:
            return None
        entries.append({**resolved, "output": answer})
    return entries


def verify_record(record: Conversation) -> bool:
    """True if every assistant answer of a conversation record is right (see `verify`).

    Example:
        >>> verify_record({"task": "plural", "messages": [
        ...     {"role": "user", "content": "What is the plural of 'mouse'?"},
        ...     {"role": "assistant", "content": "The plural form of 'mouse' is 'mice'."},
        ...     {"role": "user", "content": "And of 'goose'?"},
        ...     {"role": "assistant", "content": "The plural form of 'goose' is 'geese'."}]})
        True
    """
    entries = turn_entries(record)
    return entries is not None and all(verify(entry) for entry in entries)


def single_turn(entry: Entry) -> Conversation:
    return {"messages": [{"role": "user", "content": user_turn(entry)},
                         {"role": "assistant", "content": entry["output"]}],
            "task": entry["task"]}


def _conversion_factors() -> dict[tuple[str, str], Fraction]:
    """CONVERSIONS, plus every conversion made of two of them (kilometer -> centimeter)."""
    factors = {(source, target): factor for source, target, factor in CONVERSIONS}
    for (source, middle), first in list(factors.items()):
        for (start, target), second in list(factors.items()):
            if start == middle and target != source:
                factors.setdefault((source, target), first * second)
    return factors


def _next_unit_conversion(rng: random.Random, previous: Entry, used: str) -> tuple[str, str] | None:
    quantity = previous["output"].split(" is ")[0]
    value_text, unit_text = quantity.split(" ", 1)
    value = Fraction(value_text)
    source = _parse_unit(unit_text, value)
    options = [(target, value * factor) for (start, target), factor in _conversion_factors().items()
               if start == source and (value * factor * 100).denominator == 1
               and value * factor < 10**7 and f" {_unit_name(target, Fraction(2))}" not in used]
    if not options:
        return None
    target, result = rng.choice(options)
    said, _ = rng.choice(FOLLOW_UPS["unit_conversion"])
    return (said.format(target=_unit_name(target, Fraction(2))),
            f"{quantity} is {_num(result)} {_unit_name(target, result)}.")


def _next_arithmetic(rng: random.Random, previous: Entry, used: str) -> tuple[str, str] | None:
    a = int(re.findall(r"\d+", previous["output"])[-1])
    add, times, subtract = (said for said, _ in FOLLOW_UPS["arithmetic"])
    choices = [(add, "plus", rng.randint(2, 99))]
    if a <= 200:
        choices.append((times, "multiplied by", rng.randint(2, 9)))
    if a > 2:
        choices.append((subtract, "minus", rng.randint(1, a - 1)))
    said, word, b = rng.choice(choices)
    result = {"plus": a + b, "multiplied by": a * b, "minus": a - b}[word]
    return said.format(b=b), f"{a} {word} {b} is {result}."


def _lookup_follow_up(table: Callable[[Entry], dict[str, str]], answer: str
                      ) -> Callable[[random.Random, Entry, str], tuple[str, str] | None]:
    """A follow-up maker asking the same question (`table` of the previous turn) of a new
    word; `answer` is the output pattern."""
    def make(rng: random.Random, previous: Entry, used: str) -> tuple[str, str] | None:
        lookup = table(previous)
        words = [word for word in sorted(lookup) if f"'{word}'" not in used]
        if not words:
            return None
        word = rng.choice(words)
        form = "singular" if "singular" in previous["output"] else "plural"
        return f"And of '{word}'?", answer.format(word=word, answer=lookup[word], form=form)

    return make


def _plural_table(previous: Entry) -> dict[str, str]:
    if "singular" in previous["output"]:
        return {plural: word for word, plural in PLURALS.items() if plural != word}
    return PLURALS


def _next_capital(rng: random.Random, previous: Entry, used: str) -> tuple[str, str] | None:
    if not previous["output"].startswith("The capital of"):
        return None
    country = rng.choice([name for name in sorted(COUNTRY_CAPITALS) if name not in used])
    return f"And of {country}?", f"The capital of {country} is {COUNTRY_CAPITALS[country]}."


def _next_counting(rng: random.Random, previous: Entry, used: str) -> tuple[str, str] | None:
    found = re.search(r"[Tt]he word '([a-z]+)'", previous["output"])
    if found is None:
        return None
    word = found[1]
    letters, vowels, letter = FOLLOW_UPS["counting"]
    choices: list[tuple[str, str]] = []
    if "letters" not in used:
        choices.append((letters[0], f"The word '{word}' has {len(word)} letters."))
    vowel_count = sum(char in "aeiou" for char in word)
    if "vowels" not in used and "y" not in word and vowel_count >= 2:
        choices.append((vowels[0], f"The word '{word}' has {vowel_count} vowels."))
    repeated = sorted({char for char in word if word.count(char) >= 2})
    if repeated and "letter '" not in used:
        char = rng.choice(repeated)
        choices.append((letter[0].format(letter=char),
                        f"The letter '{char}' appears {word.count(char)} times in the word"
                        f" '{word}'."))
    return rng.choice(choices) if choices else None


def _next_sorting(rng: random.Random, previous: Entry, used: str) -> tuple[str, str] | None:
    order, _, listed = previous["output"][:-1].partition(": ")
    items = listed.split(", ")
    opposite, add = FOLLOW_UPS["sorting"]
    if order == "In alphabetical order":
        pool = sorted(set(SYNONYMS) - set(items))
        item = rng.choice(pool)
        return add[0].format(item=item), f"{order}: {', '.join(sorted([*items, item]))}."
    descending = order == "From largest to smallest"
    if rng.random() < 0.5:
        number = str(rng.choice([n for n in range(1, 200) if str(n) not in items]))
        ranked = sorted([*items, number], key=int, reverse=descending)
        return add[0].format(item=number), f"{order}: {', '.join(ranked)}."
    other = "From smallest to largest" if descending else "From largest to smallest"
    return opposite[0], f"{other}: {', '.join(reversed(items))}."


FOLLOW_UP_MAKERS: dict[str, Callable[[random.Random, Entry, str], tuple[str, str] | None]] = {
    "unit_conversion": _next_unit_conversion,
    "arithmetic": _next_arithmetic,
    "plural": _lookup_follow_up(_plural_table, "The {form} form of '{word}' is '{answer}'."),
    "antonym": _lookup_follow_up(lambda _: _antonym_map(),
                                 "The antonym of '{word}' is '{answer}'."),
    "past_tense": _lookup_follow_up(lambda _: PAST_TENSES,
                                    "The past tense of '{word}' is '{answer}'."),
    "capital": _next_capital,
    "counting": _next_counting,
    "sorting": _next_sorting,
}


def _conversation(rng: random.Random, first: Entry) -> Conversation | None:
    """`first` and one or two follow-ups on it, or None if `first` allows none."""
    record = single_turn(first)
    previous = first
    for _ in range(rng.choice((1, 2))):
        used = " ".join(message["content"] for message in record["messages"])
        made = FOLLOW_UP_MAKERS[first["task"]](rng, previous, used)
        if made is None:
            break
        said, answer = made
        record["messages"] += [{"role": "user", "content": said},
                               {"role": "assistant", "content": answer}]
        resolved = resolve_follow_up(first["task"], previous, said)
        if resolved is None:
            raise RuntimeError(f"follow-up {said!r} does not resolve after {previous}")
        previous = {**resolved, "output": answer}
    return record if len(record["messages"]) > 2 else None


def build_conversations(family: str, count: int) -> list[Conversation]:
    """`count` distinct multi-turn conversations of `family`, first turns from its builder."""
    rng = random.Random(f"{SEED}:{family}:multi-turn")
    firsts = BUILDERS[family](rng, FAMILY_SIZES[family])
    conversations: dict[tuple[str, ...], Conversation] = {}
    for first in firsts:
        record = _conversation(rng, first)
        if record is not None:
            key = tuple(message["content"] for message in record["messages"][::2])
            conversations.setdefault(key, record)
        if len(conversations) == count:
            return list(conversations.values())
    raise RuntimeError(f"{family}: could not make {count} conversations (got {len(conversations)})")


# --------------------------------------------------------------------------------------------
# Assembly: build, check, order for the default split, write
# --------------------------------------------------------------------------------------------


def _split_quotas(counts: dict[str, int], split_sizes: Sequence[int]) -> dict[str, list[int]]:
    """How many of each family's entries go to each split, proportional to its size.

    Splits after the first get their exact total by the largest-remainder method; the first
    split (train) takes what is left of every family.
    """
    total = sum(counts.values())
    quotas = {family: [0] * len(split_sizes) for family in counts}
    for index in range(1, len(split_sizes)):
        exact = {family: Fraction(n * split_sizes[index], total) for family, n in counts.items()}
        floors = {family: int(share) for family, share in exact.items()}
        leftover = split_sizes[index] - sum(floors.values())
        by_remainder = sorted(counts, key=lambda family: (floors[family] - exact[family], family))
        for family in by_remainder[:leftover]:
            floors[family] += 1
        for family in counts:
            quotas[family][index] = floors[family]
    for family, n in counts.items():
        quotas[family][0] = n - sum(quotas[family][1:])
    return quotas


def _interleave(groups: dict[str, list[Conversation]], rng: random.Random
                ) -> list[Conversation]:
    """Order entries so each split (85/10/5) holds every family in proportion, spread evenly.

    Within a split, a family's k entries get positions (i + jitter) / k, and the split is
    sorted by position: the families are interleaved with no long runs of one family.
    """
    total = sum(len(entries) for entries in groups.values())
    train, test = int(total * TRAIN_SHARE), int(total * TEST_SHARE)
    split_sizes = (train, test, total - train - test)
    quotas = _split_quotas({family: len(entries) for family, entries in groups.items()},
                           split_sizes)
    splits: list[list[tuple[float, int, int, Conversation]]] = [[] for _ in split_sizes]
    for family_index, (family, entries) in enumerate(groups.items()):
        start = 0
        for split, quota in zip(splits, quotas[family], strict=True):
            for i, entry in enumerate(entries[start:start + quota]):
                split.append(((i + rng.random()) / quota, family_index, i, entry))
            start += quota
    ordered: list[Conversation] = []
    for split in splits:
        split.sort(key=lambda item: item[:3])
        ordered.extend(item[3] for item in split)
    return ordered


def build_records() -> list[Conversation]:
    """Generate the whole dataset, verified and in its shipped order.

    Each family's single-turn records and its multi-turn conversations are spread over the
    splits separately, so every split has both.
    """
    if (tuple(BUILDERS) != TASK_FAMILIES or tuple(FAMILY_SIZES) != TASK_FAMILIES
            or not set(MULTI_TURN_SIZES) <= set(TASK_FAMILIES)):
        raise RuntimeError("BUILDERS, FAMILY_SIZES, MULTI_TURN_SIZES and TASK_FAMILIES disagree")
    groups: dict[str, list[Conversation]] = {}
    for family in TASK_FAMILIES:
        rng = random.Random(f"{SEED}:{family}")
        entries = BUILDERS[family](rng, FAMILY_SIZES[family])
        rng.shuffle(entries)
        groups[family] = [single_turn(entry) for entry in entries]
    for family, count in MULTI_TURN_SIZES.items():
        groups[f"{family} multi-turn"] = build_conversations(family, count)
    records = _interleave(groups, random.Random(f"{SEED}:order"))
    seen: set[tuple[str, ...]] = set()
    for index, record in enumerate(records):
        key = tuple(message["content"] for message in record["messages"][::2])
        if key in seen:
            raise RuntimeError(f"record {index}: duplicate user turns {key!r}")
        seen.add(key)
        if not verify_record(record):
            raise RuntimeError(f"record {index}: fails its {record['task']} verifier: {record}")
    return records


def render(records: Sequence[Conversation]) -> str:
    """The exact text of the shipped file."""
    return json.dumps(list(records), indent=1, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dataset to `--out` (default: the shipped file), or compare with `--check`."""
    parser = argparse.ArgumentParser(
        prog="python -m sftkit.data.embedded.generator",
        description="Generate the embedded default instruction dataset.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"where to write the JSON (default: {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the file at --out differs from a fresh"
                             " generation")
    args = parser.parse_args(argv)
    text = render(build_records())
    if args.check:
        try:
            current = args.out.read_text(encoding="utf-8")
        except OSError as error:
            print(f"{args.out}: cannot read: {error}", file=sys.stderr)
            return 1
        if current != text:
            print(f"{args.out}: out of date; regenerate with"
                  " `python -m sftkit.data.embedded.generator`", file=sys.stderr)
            return 1
        print(f"{args.out}: up to date")
        return 0
    write_text_atomic(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
