"""Synthetic Dolly-format data for the `small` and `tiny` scales: generated from one integer seed, no download.

    python -m benchmark data synthetic --scale small --family gpt2 --out data/prepared/small-gpt2
    # -> a prepared dir (manifest.json, tokenizer/, train/valid/test.jsonl, pt.npy) in a few seconds:
    #    small: 8000 / 500 / 500 records, 748 PT chunks of 128 tokens, vocabulary 1536

What it is for. The `small` scale trains four model sizes per family for a few thousand steps on a CPU; after SFT
the four models must be ordered by size in validation perplexity and greedy ROUGE-L. The first attempt
(`shared/research/small-scale-calibration.md`) failed because its hardest tasks were unlearnable in that budget
(upper-casing, sorting, long ordered lists) and its answers were templated sentences that gave every model free
ROUGE-L. This generator is designed for capacity-bound learning instead:

- a **world table** (`World`): ~160 fictional countries (small scale) x 4 relations (capital, language, currency,
  leader) plus 3 cities each. open_qa and brainstorming ask for these facts, so the only way to score is to have
  memorised them; memorisation capacity grows with model size. Every fact is asked in train (train cycles through
  all facts), and valid/test re-ask facts seen in train on purpose (a knowledge probe, as in Dolly's open_qa);
- **copy/extraction from a fresh context** (closed_qa, information_extraction, summarization, creative_writing):
  induction-style lookups keyed by a name or a day, which deeper/wider models learn faster;
- **learnable transformations** (general_qa): first/last item, count, reverse a 3-4 item list, the item after X,
  the larger of two numbers;
- **a memorised lexicon** (classification): 12 classes of ~16 real words; answers are the members, never the
  input list echoed back.

Two answer styles (`ANSWERS`, chosen by the scale): "short" answers are the content only ("Fatur", "Sobin Mehin",
"pear, plum"; 1-30 tokens, ~5 on average); "sentences" (the small scale) restate that answer as a sentence and
add the facts around it, as Dolly's answers do ("People in Lolzo speak Nirian. The currency of Lolzo is the gram.
Other cities of Lolzo are Gredrisres and Greze."; 10-50 tokens, ~24 on average), so that ROUGE-L grades several
clauses and a sampled answer has many tokens to go wrong on: what on-policy distillation corrects. Prompts (with
MiniLLM's template) are 40-110 tokens.

Dolly's 8 categories are kept (`CATEGORIES`) so per-category reports read like the paper's data. Knowledge
categories (open_qa, brainstorming, the "what kind of thing" classification) repeat train questions in valid/test by
design; context categories draw fresh random contexts, so exact repeats are rare.

Tokenizers: one byte-level BPE per family style, trained here on the train split and the PT text (`train_tokenizer`).
GPT-2 style has the single special `<|endoftext|>` (bos = eos = pad = unk, id 0); OPT style has `<s>` `<pad>` `</s>`
`<unk>` (ids 0-3) with bos = eos = `</s>` and a post-processor that prepends `</s>` when add_special_tokens=True, like
facebook/opt-*. The ids of every ordinary token therefore differ between the families.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from benchmark import data, scales

CATEGORIES = (
    "open_qa",
    "closed_qa",
    "information_extraction",
    "summarization",
    "classification",
    "brainstorming",
    "general_qa",
    "creative_writing",
)
# Share of each category in every split (percent). Knowledge (open_qa, brainstorming) is the largest share because it
# is where capacity shows; the copy tasks come next; creative_writing is mostly copying and weighs least.
WEIGHTS = {
    "open_qa": 26,
    "closed_qa": 14,
    "information_extraction": 12,
    "summarization": 8,
    "classification": 12,
    "brainstorming": 10,
    "general_qa": 12,
    "creative_writing": 6,
}
VOCAB_SIZE = 1536  # small on purpose: at these model sizes the LM head dominates the cost (calibration §2)
PT_SEQ_LEN = 128  # PT chunk length when a scale sets none (512 at paper scale, ref §4.2)

# --------------------------------------------------------------------------------------------------------------
# Embedded vocabulary. Real words for the lexicon; fictional names are built from syllables so that the BPE
# learns the syllables and a name costs 2-4 tokens.
# --------------------------------------------------------------------------------------------------------------

# One string of words per class, split: the order is part of the data (seeded draws index into it).
LEXICON: dict[str, tuple[str, ...]] = {
    "fruit": tuple(
        ("apple pear plum peach cherry grape lemon lime mango melon banana orange kiwi fig apricot papaya").split()
    ),
    "vegetable": tuple(
        (
            "carrot potato onion garlic cabbage lettuce pepper turnip radish celery spinach leek pea bean beet squash"
        ).split()
    ),
    "color": tuple(
        ("red blue green yellow purple pink brown black white gray violet cyan teal maroon beige amber").split()
    ),
    "tool": tuple(
        (
            "hammer saw drill wrench chisel pliers shovel rake axe ladder spanner trowel crowbar mallet screwdriver hoe"
        ).split()
    ),
    "instrument": tuple(
        (
            "piano violin guitar flute drum trumpet cello harp oboe clarinet banjo tuba organ viola bassoon ukulele"
        ).split()
    ),
    "sport": tuple(
        (
            "tennis soccer rugby golf hockey cricket boxing rowing cycling skiing surfing fencing archery "
            "judo karate baseball"
        ).split()
    ),
    "vehicle": tuple(
        (
            "car bus truck tram train bicycle scooter van taxi ferry canoe yacht tractor wagon motorcycle helicopter"
        ).split()
    ),
    "bird": tuple(
        ("eagle owl swan crow robin sparrow parrot pigeon duck goose heron falcon hawk raven finch stork").split()
    ),
    "drink": tuple(
        ("tea coffee milk juice water cocoa lemonade soda cider broth smoothie espresso latte kefir punch wine").split()
    ),
    "clothing": tuple(
        ("shirt coat jacket scarf glove sock boot hat dress skirt sweater vest tie belt shoe cap").split()
    ),
    "furniture": tuple(
        (
            "chair table sofa bed desk shelf stool bench cabinet dresser wardrobe couch armchair bookcase cupboard crib"
        ).split()
    ),
    "animal": tuple(("dog cat horse cow sheep goat pig lion tiger bear wolf fox rabbit deer mouse zebra").split()),
}
PLURAL = {
    "fruit": "fruits",
    "vegetable": "vegetables",
    "color": "colors",
    "tool": "tools",
    "instrument": "musical instruments",
    "sport": "sports",
    "vehicle": "vehicles",
    "bird": "birds",
    "drink": "drinks",
    "clothing": "clothes",
    "furniture": "pieces of furniture",
    "animal": "animals",
}
SOUND = dict(
    pair.split(":")
    for pair in (
        "dog:barks cat:purrs horse:neighs cow:moos sheep:bleats goat:bleats pig:grunts lion:roars "
        "tiger:growls bear:growls wolf:howls fox:yelps rabbit:thumps deer:bellows mouse:squeaks "
        "zebra:brays eagle:screams owl:hoots swan:hisses crow:caws robin:sings sparrow:chirps "
        "parrot:talks pigeon:coos duck:quacks goose:honks heron:croaks falcon:screeches hawk:screeches "
        "raven:croaks finch:sings stork:clatters"
    ).split()
)
JOBS = tuple(
    (
        "painter baker farmer teacher doctor sailor miner tailor potter weaver singer pilot nurse judge "
        "poet builder hunter fisher clerk driver"
    ).split()
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SEASONS = ("spring", "summer", "autumn", "winter")
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "tr", "st", "sh")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "r", "l", "s", "m")


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


class _Names:
    """Unique capitalised fictional names; every name in a world is distinct from every other one."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set(w for words in LEXICON.values() for w in words)

    def make(self, syllables: tuple[int, int], suffix: str = "") -> str:
        while True:
            n = self.rng.randint(*syllables)
            name = ("".join(_syllable(self.rng) for _ in range(n)) + suffix).capitalize()
            if name not in self.used and len(name) <= 12:
                self.used.add(name)
                return name


@dataclass(frozen=True)
class Country:
    name: str
    cities: tuple[str, str, str]  # cities[0] is the capital
    language: str
    currency: str
    leader: str

    @property
    def capital(self) -> str:
        return self.cities[0]


@dataclass(frozen=True)
class World:
    """Everything that stays fixed across the splits of one seed: the fact table and the name pools."""

    countries: tuple[Country, ...]
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]

    @property
    def cities(self) -> tuple[str, ...]:
        return tuple(c for k in self.countries for c in k.cities)

    @staticmethod
    def build(seed: int, n_countries: int) -> World:
        rng = random.Random(seed * 1_000_003 + 17)
        names = _Names(rng)
        first = tuple(names.make((2, 2)) for _ in range(48))
        last = tuple(names.make((2, 3)) for _ in range(48))
        languages = tuple(names.make((1, 2), suffix=s) for s in ("ish", "ese", "ian", "ic") for _ in range(5))
        countries = []
        for _ in range(n_countries):
            name = names.make((2, 3))
            cities = tuple(names.make((2, 3)) for _ in range(3))
            currency = names.make((1, 2)).lower()
            leader = f"{rng.choice(first)} {rng.choice(last)}"
            countries.append(Country(name, cities, rng.choice(languages), currency, leader))
        return World(tuple(countries), first, last)


# --------------------------------------------------------------------------------------------------------------
# One generator per category: (rng, world) -> (instruction, context, response). `facts` generators take the item to
# ask about, so that train can cycle through every fact exactly.
# --------------------------------------------------------------------------------------------------------------

RELATIONS = ("capital", "language", "currency", "leader")
_OPEN_QA = {
    "capital": ("What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital city of {c}."),
    "language": (
        "What language do people speak in {c}?",
        "Which language is spoken in {c}?",
        "What is the main language of {c}?",
    ),
    "currency": ("What is the currency of {c}?", "What money do people use in {c}?", "Which currency is used in {c}?"),
    "leader": ("Who is the leader of {c}?", "Who leads {c}?", "Who is the head of state of {c}?"),
}


def _open_qa(rng: random.Random, country: Country, relation: str) -> tuple[str, str, str]:
    answer = {
        "capital": country.capital,
        "language": country.language,
        "currency": country.currency,
        "leader": country.leader,
    }[relation]
    return rng.choice(_OPEN_QA[relation]).format(c=country.name), "", answer


def _brainstorm_cities(rng: random.Random, country: Country) -> tuple[str, str, str]:
    q = rng.choice(
        ("Name the three main cities of {c}.", "Suggest some cities to visit in {c}.", "List the cities of {c}.")
    )
    return q.format(c=country.name), "", ", ".join(country.cities)


def _brainstorm_lexicon(rng: random.Random) -> tuple[str, str, str]:
    cls = rng.choice(sorted(LEXICON))
    k = rng.randint(2, 4)
    q = rng.choice(("Name {k} {p}.", "List {k} {p}.", "Give me {k} examples of {p}."))
    # A fixed answer per (class, k): the first k words of the class in the embedded order.
    return q.format(k=("two", "three", "four")[k - 2], p=PLURAL[cls]), "", ", ".join(LEXICON[cls][:k])


def _person(rng: random.Random, world: World, exclude: str = "") -> tuple[str, str]:
    while True:
        first = rng.choice(world.first_names)
        if first != exclude:
            return first, rng.choice(world.last_names)


def _bio_facts(rng: random.Random, world: World) -> dict[str, str]:
    return {
        "town": rng.choice(world.cities),
        "job": rng.choice(JOBS),
        "pet": rng.choice(LEXICON["animal"]),
        "age": str(rng.randint(18, 90)),
        "color": rng.choice(LEXICON["color"]),
    }


_BIO_SENTENCE = {
    "town": "{f} was born in {v}.",
    "job": "{f} works as a {v}.",
    "pet": "{f} has a pet {v}.",
    "age": "{f} is {v} years old.",
    "color": "The favourite color of {f} is {v}.",
}
_BIO_QUESTION = {
    "town": ("Where was {f} born?", "In which town was {f} born?"),
    "job": ("What is the job of {f}?", "What does {f} do for a living?"),
    "pet": ("What pet does {f} have?", "Which animal does {f} keep as a pet?"),
    "age": ("How old is {f}?", "What is the age of {f}?"),
    "color": ("What is the favourite color of {f}?", "Which color does {f} like best?"),
}


def _closed_qa(rng: random.Random, world: World) -> tuple[str, str, str]:
    # Two people in one context: the answer must be looked up by name (binding), not just copied from the only
    # candidate. Sentences are shuffled so position does not give the answer away.
    a, _ = _person(rng, world)
    b, _ = _person(rng, world, exclude=a)
    keys = rng.sample(sorted(_BIO_SENTENCE), 3)
    fa, fb = _bio_facts(rng, world), _bio_facts(rng, world)
    sentences = [_BIO_SENTENCE[k].format(f=a, v=fa[k]) for k in keys] + [
        _BIO_SENTENCE[k].format(f=b, v=fb[k]) for k in keys
    ]
    rng.shuffle(sentences)
    who, facts = rng.choice(((a, fa), (b, fb)))
    key = rng.choice(keys)
    return rng.choice(_BIO_QUESTION[key]).format(f=who), " ".join(sentences), facts[key]


def _bio(rng: random.Random, world: World) -> tuple[str, str, dict[str, str], str]:
    first, last = _person(rng, world)
    facts = _bio_facts(rng, world)
    keys = ["town", "job", *rng.sample(["pet", "age", "color"], 2)]
    rng.shuffle(keys)
    sentences = [_BIO_SENTENCE[k].format(f=first, v=facts[k]) for k in keys]
    return first, last, facts, " ".join(sentences)


def _trip(rng: random.Random, world: World) -> tuple[str, list[str], list[str], str]:
    first, _ = _person(rng, world)
    n = rng.randint(3, 5)
    start = rng.randint(0, 7 - n)
    days = list(DAYS[start : start + n])
    towns = rng.sample(world.cities, n)
    verbs = ("went to", "visited", "travelled to", "stopped in")
    text = " ".join(f"On {d}, {first} {rng.choice(verbs)} {t}." for d, t in zip(days, towns))
    return first, days, towns, text


def _information_extraction(rng: random.Random, world: World) -> tuple[str, str, str]:
    first, days, towns, text = _trip(rng, world)
    kind = rng.random()
    if kind < 0.4:
        q = rng.choice(("List the towns {f} visited, in order.", "Extract the places {f} went to, in order."))
        return q.format(f=first), text, ", ".join(towns)
    i = rng.randrange(len(days))
    if kind < 0.7:
        return f"Where was {first} on {days[i]}?", text, towns[i]
    return f"On which day did {first} visit {towns[i]}?", text, days[i]


def _summarization(rng: random.Random, world: World) -> tuple[str, str, str]:
    if rng.random() < 0.6:
        first, last, facts, text = _bio(rng, world)
        # The text names only the first name; the summary also copies the last name from the instruction.
        q = rng.choice(("Summarize this text about {f} {l} in a few words.", "Give a short summary of {f} {l}."))
        return q.format(f=first, l=last), text, f"{first} {last}, {facts['job']} from {facts['town']}"
    first, days, towns, text = _trip(rng, world)
    q = rng.choice(("Summarize the trip of {f} in a few words.", "Give a short summary of the journey of {f}."))
    return q.format(f=first), text, f"{len(towns)} towns, from {towns[0]} to {towns[-1]}"


def _classification(rng: random.Random) -> tuple[str, str, str]:
    classes = sorted(LEXICON)
    if rng.random() < 0.6:
        target, other = rng.sample(classes, 2)
        k = rng.randint(1, 3)
        items = rng.sample(LEXICON[target], k) + rng.sample(LEXICON[other], rng.randint(5 - k, 6 - k))
        rng.shuffle(items)
        q = rng.choice(("Which of the following are {p}?", "Pick out the {p} from this list."))
        return q.format(p=PLURAL[target]), ", ".join(items), ", ".join(w for w in items if w in LEXICON[target])
    cls = rng.choice(classes)
    word = rng.choice(LEXICON[cls])
    q = rng.choice(("What kind of thing is a {w}?", "Classify the word {w}.", "Which category does {w} belong to?"))
    return q.format(w=word), "", cls


def _general_qa(rng: random.Random) -> tuple[str, str, str]:
    pool = [w for words in LEXICON.values() for w in words]
    kind = rng.randrange(6)
    if kind == 5:
        a, b = rng.sample(range(10, 100), 2)
        return f"Which number is larger, {a} or {b}?", "", str(max(a, b))
    items = rng.sample(pool, rng.randint(3, 4) if kind == 3 else rng.randint(3, 6))
    context = ", ".join(items)
    if kind == 0:
        return "What is the first item in this list?", context, items[0]
    if kind == 1:
        return "What is the last item in this list?", context, items[-1]
    if kind == 2:
        return "How many items are in this list?", context, str(len(items))
    if kind == 3:
        return "Write this list in reverse order.", context, ", ".join(reversed(items))
    i = rng.randrange(len(items) - 1)
    return f"Which item comes right after {items[i]} in this list?", context, items[i + 1]


def _creative_writing(rng: random.Random, world: World) -> tuple[str, str, str]:
    if rng.random() < 0.5:
        animal = rng.choice(sorted(SOUND))
        color, city, season = rng.choice(LEXICON["color"]), rng.choice(world.cities), rng.choice(SEASONS)
        q = f"Write a one-line poem about a {color} {animal} in {city} in {season}."
        # The verb is the animal's sound from the lexicon: memorised, not copied.
        return q, "", f"{season} in {city}, the {color} {animal} {SOUND[animal]}"
    first, last = _person(rng, world)
    job, town = rng.choice(JOBS), rng.choice(world.cities)
    q = f"Write a title for a story about {first} {last}, a {job} from {town}."
    return q, "", f"The {job.capitalize()} of {town}"


# --------------------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------------------

_SPLIT_OFFSET = {"train": 1, "valid": 2, "test": 3, "pt": 4}


def n_countries(n_train: int) -> int:
    """World size for a train split: ~200 train records per country (8000 -> 40 countries, 160 facts + lists),
    so that each fact is seen often enough in the CPU budget for memorisation capacity, not exposure, to decide."""
    return max(10, min(400, n_train // 200))


def _allocate(n: int) -> list[str]:
    """Category of each of `n` records: proportional to WEIGHTS, largest remainder, in category order."""
    total = sum(WEIGHTS.values())
    exact = {c: n * WEIGHTS[c] / total for c in CATEGORIES}
    counts = {c: int(exact[c]) for c in CATEGORIES}
    for c in sorted(CATEGORIES, key=lambda c: (counts[c] - exact[c], CATEGORIES.index(c)))[: n - sum(counts.values())]:
        counts[c] += 1
    return [c for c in CATEGORIES for _ in range(counts[c])]


def _sentences(cat: str, ins: str, ctx: str, resp: str, extra) -> str:
    """The Dolly-like answer to a record whose short answer is `resp`: that answer as a sentence, then the facts
    around it (the asked country's next fact and other cities, the asked person's other facts, the whole bio or
    trip), 10-50 tokens where the short answer has ~5, so that a sampled answer has many tokens to go wrong on and
    ROUGE-L grades each clause. `extra` is what the category generator looked up: (country, relation) for
    open_qa, the country (None for a lexicon list) for brainstorming, the asked person's first name for closed_qa.
    Uses no randomness, so both answer styles share every other field of every record."""
    if cat == "open_qa":
        k, r = extra
        facts = {
            "capital": f"The capital of {k.name} is {k.capital}.",
            "language": f"People in {k.name} speak {k.language}.",
            "currency": f"The currency of {k.name} is the {k.currency}.",
            "leader": f"{k.leader} is the leader of {k.name}.",
        }
        nxt = RELATIONS[(RELATIONS.index(r) + 1) % len(RELATIONS)]
        return f"{facts[r]} {facts[nxt]} Other cities of {k.name} are {k.cities[1]} and {k.cities[2]}."
    if cat == "brainstorming":
        if extra is not None:
            a, b, c = extra.cities
            return f"The main cities of {extra.name} are {a}, {b} and {c}, and {extra.capital} is the capital."
        return f"Here are some examples: {resp}. They are all {ins.split()[-1].rstrip('.')}."
    if cat == "closed_qa":  # the asked fact first, then the person's other facts in the context
        mine = [x.rstrip(".") for x in ctx.split(". ") if x.split()[0] == extra or f"of {extra}" in x]
        return ". ".join([x for x in mine if resp in x] + [x for x in mine if resp not in x]) + "."
    if cat == "information_extraction":
        sents = [x.rstrip(".") for x in ctx.split(". ")]
        if "," in resp:  # the list of towns, then the trip it comes from
            return f"{resp}. " + ". ".join(sents) + "."
        return f"The answer is {resp}. " + next(f"{x}." for x in sents if resp in x)
    if cat == "summarization":
        return f"{resp}. {ctx}"
    if cat == "classification":
        if ctx:
            plural = next(p for p in PLURAL.values() if p in ins)
            return f"The {plural} in the list are {resp}, and the others are not."
        word = ins.split()[-3] if ins.startswith("Which category") else ins.split()[-1].rstrip("?.")
        others = ", ".join(w for w in LEXICON[resp][:3] if w != word)
        return f"A {word} is a kind of {resp}. Other kinds of {resp} are {others}."
    if cat == "general_qa":
        if ctx:
            return f"The answer is {resp}. The list was: {ctx}."
        return f"The answer is {resp}, because {resp} is more."
    return f"{resp}. " + ins.replace("Write a", "This is a", 1)


def _split_records(split: str, n: int, seed: int, world: World, answers: str = "short") -> list[dict]:
    rng = random.Random(seed * 1_000_003 + _SPLIT_OFFSET[split] * 7_919)
    cats = _allocate(n)
    rng.shuffle(cats)
    facts = [(k, r) for k in world.countries for r in RELATIONS]
    countries = list(world.countries)
    if split == "train":
        # Cycle through every fact (and every city list) in a shuffled order, so that each one is seen in train
        # ceil/floor(n_open_qa / n_facts) times; valid/test sample uniformly and thus only ask seen facts.
        fact_order = rng.sample(facts, len(facts))
        country_order = rng.sample(countries, len(countries))
    n_open = n_brain = 0
    out = []
    for cat in cats:
        if cat == "open_qa":
            k, r = fact_order[n_open % len(facts)] if split == "train" else rng.choice(facts)
            n_open += 1
            ins, ctx, resp = _open_qa(rng, k, r)
            extra = (k, r)
        elif cat == "brainstorming":
            if rng.random() < 0.75:
                k = country_order[n_brain % len(countries)] if split == "train" else rng.choice(countries)
                n_brain += 1
                ins, ctx, resp = _brainstorm_cities(rng, k)
                extra = k
            else:
                ins, ctx, resp = _brainstorm_lexicon(rng)
                extra = None
        elif cat == "closed_qa":
            ins, ctx, resp = _closed_qa(rng, world)
            extra = next(w.rstrip("?") for w in ins.split() if w.rstrip("?") in world.first_names)
        elif cat == "information_extraction":
            ins, ctx, resp = _information_extraction(rng, world)
        elif cat == "summarization":
            ins, ctx, resp = _summarization(rng, world)
        elif cat == "classification":
            ins, ctx, resp = _classification(rng)
        elif cat == "general_qa":
            ins, ctx, resp = _general_qa(rng)
        else:
            ins, ctx, resp = _creative_writing(rng, world)
        if answers == "sentences":
            resp = _sentences(cat, ins, ctx, resp, extra if cat in ("open_qa", "brainstorming", "closed_qa") else None)
        # Dolly's own field names (databricks-dolly-15k); benchmark.data maps context -> input, response -> output.
        out.append({"instruction": ins, "context": ctx, "response": resp, "category": cat})
    return out


def _pt_documents(n: int, seed: int, world: World) -> list[str]:
    """Encyclopedia-like text over the same world: the analogue of OpenWebText for the PT loss (ref §4.2).

    Country articles state the facts that open_qa asks, in prose and in a random order; bios, trips and
    lexicon paragraphs cover the other categories' vocabulary.
    """
    rng = random.Random(seed * 1_000_003 + _SPLIT_OFFSET["pt"] * 7_919)
    docs = []
    for i in range(n):
        kind = i % 4
        if kind in (0, 1):
            k = world.countries[(i // 2) % len(world.countries)] if kind == 0 else rng.choice(world.countries)
            sents = [
                f"The capital of {k.name} is {k.capital}.",
                f"People in {k.name} speak {k.language}.",
                f"The currency of {k.name} is the {k.currency}.",
                f"{k.leader} is the leader of {k.name}.",
                f"Other cities of {k.name} are {k.cities[1]} and {k.cities[2]}.",
            ]
            rng.shuffle(sents)
            docs.append(f"{k.name} is a country.\n" + " ".join(sents))
        elif kind == 2:
            if rng.random() < 0.5:
                docs.append(_bio(rng, world)[3])
            else:
                docs.append(_trip(rng, world)[3])
        else:
            cls = rng.choice(sorted(LEXICON))
            words = rng.sample(LEXICON[cls], 5)
            docs.append(f"Some {PLURAL[cls]}: {', '.join(words)}. A {words[0]} is a kind of {cls}.")
    return docs


ANSWERS = ("short", "sentences")  # the short answers only, or Dolly-like sentences around them (`_sentences`)


def generate_records(seed: int, counts: dict[str, int], answers: str = "short") -> dict[str, list]:
    """Deterministic Dolly-format records for every split in `counts` (train/valid/test; `pt` = PT documents).

    >>> recs = generate_records(0, {"train": 400, "valid": 40, "test": 40, "pt": 100})
    >>> sorted(recs), recs["train"][0].keys()  # doctest: +SKIP
    (['pt', 'test', 'train', 'valid'], dict_keys(['instruction', 'context', 'response', 'category']))

    Record splits are lists of dicts with Dolly's field names; `pt` is a list of strings (one document each).
    """
    if answers not in ANSWERS:
        raise ValueError(f"unknown answer style {answers!r}; expected one of {', '.join(ANSWERS)}")
    world = World.build(seed, n_countries(counts.get("train", 0)))
    out: dict[str, list] = {}
    for split, n in counts.items():
        if split not in _SPLIT_OFFSET:
            raise ValueError(f"unknown split {split!r}; expected some of {', '.join(_SPLIT_OFFSET)}")
        out[split] = _pt_documents(n, seed, world) if split == "pt" else _split_records(split, n, seed, world, answers)
    return out


# --------------------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------------------

SPECIALS = {"gpt2": ("<|endoftext|>",), "opt": ("<s>", "<pad>", "</s>", "<unk>")}


def train_tokenizer(texts, family: str, out_dir, vocab_size: int = VOCAB_SIZE, model_max_length: int = 1024) -> None:
    """Train a byte-level BPE on `texts` and save it in Hugging Face format to `out_dir`.

    `AutoTokenizer.from_pretrained(out_dir)` then loads it offline (tokenizer.json + tokenizer_config.json).
    GPT-2 style: `<|endoftext|>` is bos/eos/pad/unk. OPT style: bos = eos = `</s>`, pad = `<pad>`, unk = `<unk>`,
    and `</s>` is prepended when add_special_tokens=True (facebook/opt-* behaviour; MiniLLM never asks for it,
    ref §4.1 "no BOS for any family").
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if family not in SPECIALS:
        raise ValueError(f"unknown family {family!r}; expected gpt2 or opt")
    tok = Tokenizer(models.BPE())
    # Every line starts with a space, so a word has one spelling wherever it stands: "Benkar" right after
    # "### Response:\n" is the same tokens as " Benkar" inside the context. Models trained from scratch on a CPU
    # budget cannot learn two spellings of every name (pretrained GPT-2/OPT can), and copying from the context is
    # half of the tasks. Decoded responses gain one leading space, which postprocessing strips.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=True)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIALS[family]),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    if family == "gpt2":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        special = dict(
            bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>"
        )
    else:
        eos = tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(
            single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", eos)]
        )
        special = dict(bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    # transformers 5 saves padding_side / model_max_length only when they are constructor arguments.
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, padding_side="left", model_max_length=model_max_length, **special
    )
    fast.save_pretrained(str(out_dir))


# --------------------------------------------------------------------------------------------------------------
# One call: generate, train the tokenizer, prepare through the Dolly code path, add PT chunks.
# --------------------------------------------------------------------------------------------------------------


def write_sources(records: dict[str, list], src_dir: Path) -> dict[str, Path]:
    """Write generated records in MiniLLM/dolly's layout: raw.jsonl = valid then train, valid.jsonl = test,
    pt.txt = one document per line (newlines as MiniLLM's `<@x(x!>` marker, ref §4.2)."""
    src_dir.mkdir(parents=True, exist_ok=True)

    def dump(path: Path, rows: list[dict]) -> Path:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return path

    paths = {
        "raw": dump(src_dir / "raw.jsonl", records["valid"] + records["train"]),
        "test": dump(src_dir / "valid.jsonl", records["test"]),
    }
    if "pt" in records:
        paths["pt"] = src_dir / "pt.txt"
        paths["pt"].write_text(
            "".join(d.replace("\n", data.NEWLINE_MARKER) + "\n" for d in records["pt"]), encoding="utf-8"
        )
    return paths


def prepare_synthetic(
    scale_name: str,
    family: str,
    out_dir,
    seed: int = 0,
    pt_seq_len: int | None = None,
    vocab_size: int = VOCAB_SIZE,
    max_prompt_length: int | None = None,
):
    """Generate the `scale_name` records, train the family's tokenizer, and prepare `out_dir` (with pt.npy).

        python -m benchmark data synthetic --scale tiny --family opt --out /tmp/tiny-opt   # < 2 s

    Validation is the first `valid` raw records exactly as Dolly's first 1000 (ref §4.1), so the same code path
    prepares both. Same seed -> byte-identical files (equal sha256 in the manifest). Returns the PreparedData.
    `pt_seq_len` and `max_prompt_length` default to the scale's MiniLLM `pt_seq_length` and SFT
    `max_prompt_length` overrides (registry), so the data matches what the trainer reads.
    """
    sc = scales.scale(scale_name)
    if not sc.synthetic_records:
        raise data.DataError(f"scale {scale_name!r} does not use synthetic data; use `python -m benchmark data dolly`")
    pt_seq_len = pt_seq_len or sc.minillm.get("pt_seq_length", PT_SEQ_LEN)
    max_prompt_length = max_prompt_length or sc.sft.get("max_prompt_length", data.MAX_PROMPT_LENGTH)
    counts = dict(sc.synthetic_records)
    records = generate_records(seed, counts, sc.synthetic_answers)
    with data.staging_dir(out_dir) as stage:
        src = write_sources(records, stage / "source")
        tok_dir = stage / "tokenizer"
        texts = [data.dolly_prompt(r["instruction"], r["context"]) + r["response"] for r in records["train"]]
        train_tokenizer(texts + records.get("pt", []), family, tok_dir, vocab_size=vocab_size)
        description = {
            "kind": "synthetic",
            "scale": scale_name,
            "seed": seed,
            "generator": "benchmark.synthetic",
            "command": f"python -m benchmark data synthetic --scale {scale_name} --family {family} --seed {seed}",
        }
        data.write_dolly(
            stage,
            family,
            tok_dir,
            src["raw"],
            src["test"],
            description,
            max_prompt_length=max_prompt_length,
            dev_num=counts["valid"],
            tokenizer_name="tokenizer/",
        )
        if "pt" in src:
            data.write_pt(
                stage,
                src["pt"],
                seq_len=pt_seq_len,
                max_chunks=None,
                description={"kind": "synthetic", "file": "source/pt.txt"},
            )
    return data.load_prepared(out_dir, family)
