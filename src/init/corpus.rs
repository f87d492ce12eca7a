//! The built-in tokenizer training text, generated deterministically.
//!
//! It mixes plain English, multi-step arithmetic word problems with worked
//! answers and chat-like exchanges, so that the trained BPE compresses the
//! text the demo later trains on (arithmetic word problems in chat form).

use super::lexicon::{self, words};
use crate::rng::SplitMix64;
use std::fmt::Write;

/// Stop generating once the text is this long: big enough to fill a 4096-token
/// vocabulary with Qwen's one-digit numbers, small enough to train in under a second.
const TARGET_BYTES: usize = 300 * 1024;

/// Fixed, so that every build trains the same tokenizer.
const CORPUS_SEED: u64 = 0x4C32_445F_434F_5250;

/// A person and their pronouns.
struct Person {
    name: &'static str,
    subj: &'static str,
    obj: &'static str,
    poss: &'static str,
}

const fn person(name: &'static str, female: bool) -> Person {
    if female {
        Person {
            name,
            subj: "she",
            obj: "her",
            poss: "her",
        }
    } else {
        Person {
            name,
            subj: "he",
            obj: "him",
            poss: "his",
        }
    }
}

#[rustfmt::skip]
const PEOPLE: &[Person] = &[
    person("Tom", false), person("Anna", true), person("Liam", false), person("Maria", true),
    person("James", false), person("Sofia", true), person("Noah", false), person("Emma", true),
    person("Lucas", false), person("Olivia", true), person("Ben", false), person("Mia", true),
    person("Sam", false), person("Grace", true), person("David", false), person("Chloe", true),
    person("Omar", false), person("Leila", true), person("Kenji", false), person("Priya", true),
    person("Carlos", false), person("Zoe", true), person("Ethan", false), person("Lily", true),
];

const ITEMS: &[&str] = &[
    "apples", "pencils", "stickers", "marbles", "cookies", "books", "oranges", "stamps", "cards",
    "flowers", "eggs", "candies", "shells", "coins", "balloons", "toy cars",
];

const FOODS: &[&str] = &[
    "cupcakes", "muffins", "cookies", "pies", "rolls", "brownies", "tarts",
];

const GIFTS: &[&str] = &[
    "bike", "game", "jacket", "book", "watch", "backpack", "kite", "lamp",
];

const ADJECTIVES: &[&str] = &[
    "small", "quiet", "bright", "old", "happy", "tall", "busy", "warm", "cold", "green", "little",
    "friendly", "curious", "lazy", "clever", "brave", "gentle", "noisy",
];

const ANIMALS: &[&str] = &[
    "dog", "cat", "bird", "horse", "rabbit", "fox", "owl", "duck", "mouse", "goat", "bear",
];

const PLACES: &[&str] = &[
    "park", "garden", "river", "market", "library", "school", "kitchen", "forest", "beach",
    "station", "village", "farm", "museum", "shop", "hill", "lake",
];

const VERBS_PAST: &[&str] = &[
    "walked", "ran", "jumped", "looked", "waited", "played", "slept", "sat", "danced", "rested",
];

const ACTIVITIES: &[&str] = &[
    "read a book",
    "play chess",
    "go for a walk",
    "paint pictures",
    "bake bread",
    "ride a bike",
    "write letters",
    "sing songs",
    "plant seeds",
    "fly a kite",
    "swim",
];

const TIMES: &[&str] = &[
    "in the morning",
    "after lunch",
    "in the evening",
    "at night",
    "on Sunday",
    "every day",
    "last week",
    "before dinner",
    "in the summer",
    "in the winter",
];

const FACTS: &[&str] = &[
    "Water boils at 100 degrees Celsius at sea level.",
    "A week has 7 days, and a year has 12 months.",
    "There are 60 minutes in an hour and 24 hours in a day.",
    "The sun rises in the east and sets in the west.",
    "Plants need light, water and air to grow.",
    "A triangle has 3 sides, and a square has 4 equal sides.",
    "To add two numbers, count on from the first one.",
    "Multiplication is repeated addition: 4 * 3 means 4 + 4 + 4.",
    "Division splits a number into equal groups.",
    "An even number can be divided by 2 with nothing left over.",
    "The moon goes around the Earth about once a month.",
    "Bees make honey from the nectar of flowers.",
    "A dozen means twelve, and half a dozen means six.",
    "Reading every day helps you learn new words.",
];

const CHAT_QA: &[(&str, &str)] = &[
    (
        "What color is the sky on a clear day?",
        "On a clear day the sky is blue.",
    ),
    ("How many legs does a spider have?", "A spider has 8 legs."),
    ("What do bees make?", "Bees make honey."),
    (
        "Can you help me with a math problem?",
        "Of course! Please tell me the problem and I will solve it step by step.",
    ),
    (
        "What is the capital of France?",
        "The capital of France is Paris.",
    ),
    (
        "How many days are in a week?",
        "There are 7 days in a week.",
    ),
    (
        "Give me a tip for studying.",
        "Study a little every day, and check your answers carefully.",
    ),
    (
        "What is a prime number?",
        "A prime number is a whole number greater than 1 whose only divisors are 1 and itself.",
    ),
    (
        "Thank you!",
        "You are welcome! Let me know if you have another question.",
    ),
];

/// Deterministic training text of about 300 KB (the same on every call).
pub fn builtin_corpus() -> String {
    let mut rng = SplitMix64::new(CORPUS_SEED);
    let lex = Lexicon::new();
    let mut out = String::with_capacity(TARGET_BYTES + 4096);
    let mut i = 0usize;
    while out.len() < TARGET_BYTES {
        match i % 6 {
            0 | 3 => prose(&mut rng, &lex, &mut out),
            1 | 4 => word_problem(&mut rng, &lex, &mut out),
            2 => chat(&mut rng, &mut out, i),
            _ => drill(&mut rng, &mut out),
        }
        out.push('\n');
        i += 1;
    }
    out
}

fn prose(rng: &mut SplitMix64, lex: &Lexicon, out: &mut String) {
    for _ in 0..rng.range(3, 6) {
        let s = if rng.range(0, 2) == 0 {
            sentence(rng)
        } else {
            lex_sentence(rng, lex)
        };
        out.push_str(&s);
        out.push(' ');
    }
    out.pop();
    out.push('\n');
}

fn sentence(rng: &mut SplitMix64) -> String {
    let p = rng.pick(PEOPLE);
    let (adj, animal, place) = (rng.pick(ADJECTIVES), rng.pick(ANIMALS), rng.pick(PLACES));
    match rng.range(0, 5) {
        0 => format!(
            "The {adj} {animal} {} to the {place} {}.",
            rng.pick(VERBS_PAST),
            rng.pick(TIMES)
        ),
        1 => format!(
            "{} likes to {} {}.",
            p.name,
            rng.pick(ACTIVITIES),
            rng.pick(TIMES)
        ),
        2 => format!(
            "Every day, {} goes to the {place} with {} {adj} {animal}.",
            p.name, p.poss
        ),
        3 => format!(
            "It was a {adj} day, so {} decided to {}.",
            p.name,
            rng.pick(ACTIVITIES)
        ),
        4 => {
            let (asker, teller) = two_people(rng);
            format!(
                "\"Where is the {place}?\" asked {}. \"It is near the {},\" said {}.",
                asker.name,
                rng.pick(PLACES),
                teller.name
            )
        }
        _ => rng.pick(FACTS).to_string(),
    }
}

/// Word lists split once, shared by all generators.
struct Lexicon {
    nouns: Vec<&'static str>,
    verbs: Vec<&'static str>,
    adjectives: Vec<&'static str>,
    adverbs: Vec<&'static str>,
    heads: Vec<&'static str>,
    tails: Vec<&'static str>,
}

impl Lexicon {
    fn new() -> Self {
        Self {
            nouns: words(lexicon::NOUNS),
            verbs: words(lexicon::VERBS),
            adjectives: words(lexicon::ADJECTIVES),
            adverbs: words(lexicon::ADVERBS),
            heads: words(lexicon::TOWN_HEADS),
            tails: words(lexicon::TOWN_TAILS),
        }
    }

    fn town(&self, rng: &mut SplitMix64) -> String {
        format!("{}{}", rng.pick(&self.heads), rng.pick(&self.tails))
    }

    /// Family names are built like the towns, as many English ones are.
    fn surname(&self, rng: &mut SplitMix64) -> String {
        self.town(rng)
    }
}

/// Simple but grammatical sentences over the wide word lists.
fn lex_sentence(rng: &mut SplitMix64, lex: &Lexicon) -> String {
    let (n1, n2) = (*rng.pick(&lex.nouns), *rng.pick(&lex.nouns));
    let (a1, a2) = (*rng.pick(&lex.adjectives), *rng.pick(&lex.adjectives));
    let (v1, v2, adv) = (
        *rng.pick(&lex.verbs),
        *rng.pick(&lex.verbs),
        *rng.pick(&lex.adverbs),
    );
    match rng.range(0, 11) {
        0 => format!("The {a1} {n1} can {v1} {adv}."),
        1 => format!(
            "{} wants to {v1} the {a1} {n1} {}.",
            rng.pick(PEOPLE).name,
            rng.pick(TIMES)
        ),
        2 => format!(
            "{} {n1} is {a1}, but {} {n2} is {a2}.",
            capitalize(article(n1)),
            article(n2)
        ),
        3 => format!("Why does the {n1} {v1}? Because it is {a1}."),
        4 => format!("They will {v1} the {n1} and {v2} the {n2} {adv}."),
        5 => format!(
            "{} is {} {a1} town near the {n1}, about {} miles from {}.",
            lex.town(rng),
            article(a1),
            rng.range(2, 300),
            lex.town(rng)
        ),
        6 => format!("{} the {a1} {n1} began to {v1}.", capitalize(adv)),
        7 => format!(
            "{} {n1} or {} {a2} {n2}: which one would you {v1}?",
            capitalize(a1),
            article(a2)
        ),
        8 => format!(
            "There are {} {a1} {} in the {n2}.",
            rng.range(2, 60),
            plural(n1)
        ),
        9 => {
            let (x, y) = (rng.range(2, 40), rng.range(2, 40));
            format!(
                "{} {} counted {x} {} and {y} {}, so {} things in all.",
                rng.pick(PEOPLE).name,
                lex.surname(rng),
                plural(n1),
                plural(n2),
                x + y
            )
        }
        10 => format!(
            "{} {v1} {adv}, and the {n2} {} too.",
            capitalize(&plural(n1)),
            third_person(v2)
        ),
        _ => format!(
            "{} {} the {a1} {n1} every {}.",
            rng.pick(PEOPLE).name,
            third_person(v1),
            rng.pick(&["day", "week", "morning", "evening", "summer", "year"])
        ),
    }
}

/// English plural, right for every noun in the lexicon that has one (and for
/// the regular "-s" forms of verbs).
fn plural(noun: &str) -> String {
    const IRREGULAR: &[(&str, &str)] = &[
        ("child", "children"),
        ("person", "people"),
        ("foot", "feet"),
        ("sheep", "sheep"),
        ("life", "lives"),
        ("shelf", "shelves"),
        ("scarf", "scarves"),
        ("potato", "potatoes"),
        ("tomato", "tomatoes"),
        ("volcano", "volcanoes"),
        ("fisherman", "fishermen"),
    ];
    if let Some((_, p)) = IRREGULAR.iter().find(|(s, _)| *s == noun) {
        return p.to_string();
    }
    let b = noun.as_bytes();
    let consonant_y = b.len() > 1 && b[b.len() - 1] == b'y' && !b"aeiou".contains(&b[b.len() - 2]);
    if consonant_y {
        format!("{}ies", &noun[..noun.len() - 1])
    } else if ["s", "x", "z", "ch", "sh"]
        .iter()
        .any(|e| noun.ends_with(e))
    {
        format!("{noun}es")
    } else {
        format!("{noun}s")
    }
}

/// The he/she/it present form: the plural spelling rules, plus "has".
fn third_person(verb: &str) -> String {
    match verb {
        "have" => "has".to_string(),
        "go" | "do" => format!("{verb}es"),
        _ => plural(verb),
    }
}

/// "a" or "an" for `word`, by its first letter.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// A GSM8K-like problem: question, worked steps, final `#### answer` line.
fn word_problem(rng: &mut SplitMix64, lex: &Lexicon, out: &mut String) {
    let (question, steps, answer) = match rng.range(0, 5) {
        0 => change_problem(rng),
        1 => collect_problem(rng),
        2 => share_problem(rng),
        3 => travel_problem(rng, lex),
        4 => age_problem(rng),
        _ => savings_problem(rng),
    };
    let _ = write!(
        out,
        "Question: {question}\nAnswer: {}\n#### {answer}\n",
        steps.join("\n")
    );
}

type Problem = (String, Vec<String>, u64);

fn change_problem(rng: &mut SplitMix64) -> Problem {
    let p = rng.pick(PEOPLE);
    let (n, price, item) = (rng.range(2, 9), rng.range(2, 12), rng.pick(ITEMS));
    let cost = n * price;
    let bill = [20u64, 50, 100, 200]
        .into_iter()
        .find(|b| *b > cost)
        .unwrap_or(200);
    let q = format!("{} buys {n} {item} at ${price} each and pays with a ${bill} bill. How much change does {} get?", p.name, p.subj);
    let steps = vec![
        format!("The {item} cost {n} * {price} = ${cost}."),
        format!("The change is {bill} - {cost} = ${}.", bill - cost),
    ];
    (q, steps, bill - cost)
}

fn collect_problem(rng: &mut SplitMix64) -> Problem {
    let (p, friend) = two_people(rng);
    let (start, per_day, days, item) = (
        rng.range(3, 40),
        rng.range(2, 15),
        rng.range(2, 9),
        rng.pick(ITEMS),
    );
    let found = per_day * days;
    let total = start + found;
    let given = rng.range(1, total);
    let q = format!("{} has {start} {item}. {} finds {per_day} more each day for {days} days, then gives {given} to {}. How many {item} does {} have now?",
        p.name, capitalize(p.subj), friend.name, p.name);
    let steps = vec![
        format!(
            "{} finds {per_day} * {days} = {found} {item}.",
            capitalize(p.subj)
        ),
        format!("Then {} has {start} + {found} = {total} {item}.", p.subj),
        format!(
            "After giving some away, {} has {total} - {given} = {} {item}.",
            p.subj,
            total - given
        ),
    ];
    (q, steps, total - given)
}

fn share_problem(rng: &mut SplitMix64) -> Problem {
    let p = rng.pick(PEOPLE);
    let (friends, each, food) = (rng.range(2, 8), rng.range(2, 9), rng.pick(FOODS));
    let total = friends * each;
    let trays = [2u64, 3, 4, 6]
        .into_iter()
        .find(|t| total % t == 0)
        .unwrap_or(1);
    let per_tray = total / trays;
    let q = format!("{} bakes {trays} trays of {food} with {per_tray} {food} on each tray. {} shares them equally among {friends} friends. How many {food} does each friend get?",
        p.name, capitalize(p.subj));
    let steps = vec![
        format!("{} bakes {trays} * {per_tray} = {total} {food}.", p.name),
        format!("Each friend gets {total} / {friends} = {each} {food}."),
    ];
    (q, steps, each)
}

fn travel_problem(rng: &mut SplitMix64, lex: &Lexicon) -> Problem {
    let (v, h, w, g) = (
        rng.range(20, 90),
        rng.range(2, 6),
        rng.range(20, 90),
        rng.range(2, 6),
    );
    let (a, b) = (v * h, w * g);
    let vehicle = rng.pick(&["train", "bus", "car", "truck"]);
    let (from, to) = (lex.town(rng), lex.town(rng));
    let q = format!("A {vehicle} leaves {from} and travels at {v} miles per hour for {h} hours, then at {w} miles per hour for {g} hours to reach {to}. How far does it travel in total?");
    let steps = vec![
        format!("First it travels {v} * {h} = {a} miles."),
        format!("Then it travels {w} * {g} = {b} miles."),
        format!("In total it travels {a} + {b} = {} miles.", a + b),
    ];
    (q, steps, a + b)
}

fn age_problem(rng: &mut SplitMix64) -> Problem {
    let (p, friend) = two_people(rng);
    let (age, diff, years) = (rng.range(5, 40), rng.range(1, 15), rng.range(2, 10));
    let other = age + diff;
    let (a, b) = (age + years, other + years);
    let q = format!("{} is {age} years old. {} is {diff} years older than {}. In {years} years, what will be the sum of their ages?",
        p.name, friend.name, p.obj);
    let steps = vec![
        format!("{} is {age} + {diff} = {other} years old.", friend.name),
        format!("In {years} years, {} will be {age} + {years} = {a} and {} will be {other} + {years} = {b}.", p.name, friend.name),
        format!("The sum is {a} + {b} = {}.", a + b),
    ];
    (q, steps, a + b)
}

fn savings_problem(rng: &mut SplitMix64) -> Problem {
    let p = rng.pick(PEOPLE);
    let (weekly, weeks, gift) = (rng.range(3, 25), rng.range(3, 12), rng.pick(GIFTS));
    let saved = weekly * weeks;
    let price = rng.range(1, saved);
    let q = format!("{} saves ${weekly} every week. After {weeks} weeks, {} spends ${price} on a {gift}. How much money does {} have left?",
        p.name, p.subj, p.subj);
    let steps = vec![
        format!(
            "{} saves {weekly} * {weeks} = ${saved}.",
            capitalize(p.subj)
        ),
        format!(
            "After buying the {gift}, {} has {saved} - {price} = ${} left.",
            p.subj,
            saved - price
        ),
    ];
    (q, steps, saved - price)
}

/// Conversations in a neutral transcript form (special tokens are added later).
fn chat(rng: &mut SplitMix64, out: &mut String, i: usize) {
    let (a, b) = (rng.range(2, 99), rng.range(2, 99));
    let (q, ans) = match rng.range(0, 3) {
        0 => (
            format!("What is {a} + {b}?"),
            format!("{a} + {b} = {}. The answer is {}.", a + b, a + b),
        ),
        1 => (
            format!("What is {a} times {b}?"),
            format!("{a} * {b} = {}. The answer is {}.", a * b, a * b),
        ),
        2 => {
            let (hi, lo) = (a.max(b), a.min(b));
            (
                format!("What is {hi} minus {lo}?"),
                format!("{hi} - {lo} = {}. The answer is {}.", hi - lo, hi - lo),
            )
        }
        _ => {
            let (q, ans) = rng.pick(CHAT_QA);
            (q.to_string(), ans.to_string())
        }
    };
    if i % 4 == 2 {
        out.push_str(
            "system\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
        );
    } else {
        out.push_str("system\nYou are a helpful assistant.\n");
    }
    let _ = write!(out, "user\n{q}\nassistant\n{ans}\n");
}

/// Bare multi-step arithmetic with every intermediate result, up to four digits.
fn drill(rng: &mut SplitMix64, out: &mut String) {
    for _ in 0..rng.range(3, 6) {
        let (a, b, c) = (rng.range(1, 999), rng.range(1, 999), rng.range(2, 9));
        let _ = match rng.range(0, 2) {
            0 => writeln!(out, "({a} + {b}) * {c} = {} * {c} = {}", a + b, (a + b) * c),
            1 => writeln!(
                out,
                "{} - {b} = {a}, and {a} / {c} = {} remainder {}",
                a + b,
                a / c,
                a % c
            ),
            _ => writeln!(out, "{a} * {c} + {b} = {} + {b} = {}", a * c, a * c + b),
        };
    }
}

/// Two different people, so that "gives 5 to Tom" never means Tom himself.
fn two_people(rng: &mut SplitMix64) -> (&'static Person, &'static Person) {
    let first = rng.pick(PEOPLE);
    loop {
        let second = rng.pick(PEOPLE);
        if second.name != first.name {
            return (first, second);
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}
